//! `amalgam samples [--dir DIR]`: write small sample checkpoints for a first merge.

use std::path::PathBuf;

use anyhow::Context;

use crate::model::samples::{SampleOutcome, write_samples};

use super::{FolderArgs, human_bytes};

#[derive(Debug, clap::Args)]
pub struct SamplesArgs {
    /// Folder to write into (default: the first checkpoints folder, <base>/models/checkpoints).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

pub fn run(folders: &FolderArgs, args: &SamplesArgs) -> anyhow::Result<()> {
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => folders
            .resolve()?
            .primary("checkpoints")
            .context("no checkpoints folder is configured")?
            .to_owned(),
    };
    let outcomes = write_samples(&dir).context("cannot write the sample checkpoints")?;
    for o in outcomes {
        match o {
            SampleOutcome::Written { path, bytes } => {
                println!("wrote {} ({})", path.display(), human_bytes(bytes));
            }
            SampleOutcome::KeptExisting { path } => {
                println!("kept  {} (already exists)", path.display());
            }
        }
    }
    Ok(())
}
