//! `amalgam samples [--dir DIR]`: write small sample checkpoints for a first merge.

use std::path::PathBuf;

use anyhow::Context;

use amalgam::model::layouts::Scale;
use amalgam::model::samples::{SampleOutcome, write_sample_extras, write_samples};

use super::{FolderArgs, human_bytes};

#[derive(Debug, clap::Args)]
pub struct SamplesArgs {
    /// Folder to write into (default: the first checkpoints folder, <base>/models/checkpoints).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Write full-size (2.1 GB / 6.9 GB) synthetic checkpoints instead, for benchmarks.
    #[arg(long, hide = true)]
    pub full_size: bool,
    /// Only this family (`sd15` or `sdxl`).
    #[arg(long, hide = true)]
    pub family: Option<String>,
    /// Leave out the two runnable SD1.5 samples (117 MB each; merge tests do not need them).
    #[arg(long, hide = true)]
    pub no_runnable: bool,
}

pub fn run(folders: &FolderArgs, args: &SamplesArgs) -> anyhow::Result<()> {
    let resolved = folders.resolve()?;
    let folder = |kind: &str| -> anyhow::Result<PathBuf> {
        match &args.dir {
            // With --dir, everything goes into that one folder.
            Some(d) => Ok(d.clone()),
            None => Ok(resolved
                .primary(kind)
                .with_context(|| format!("no {kind} folder is configured"))?
                .to_owned()),
        }
    };
    let scale = if args.full_size {
        Scale::Full
    } else {
        Scale::Sample
    };
    let mut outcomes = write_samples(
        &folder("checkpoints")?,
        scale,
        args.family.as_deref(),
        !args.no_runnable,
    )
    .context("cannot write the sample checkpoints")?;
    // The LoRA and VAE samples go with the small checkpoints only.
    if !args.full_size && args.family.is_none() {
        outcomes.extend(
            write_sample_extras(&folder("loras")?, &folder("vae")?)
                .context("cannot write the sample LoRA and VAE")?,
        );
    }
    for o in outcomes {
        match o {
            SampleOutcome::Written { path, bytes } => {
                super::emit(&format!(
                    "wrote {} ({})\n",
                    path.display(),
                    human_bytes(bytes)
                ))?;
            }
            SampleOutcome::KeptExisting { path } => {
                super::emit(&format!("kept  {} (already exists)\n", path.display()))?;
            }
        }
    }
    Ok(())
}
