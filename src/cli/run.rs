//! `amalgam run WORKFLOW`: validate a workflow like ComfyUI, then run its save nodes on this
//! thread ([`run_blocking`]), with a progress bar on a terminal and Ctrl+C cancelling cleanly.

use std::path::PathBuf;

use serde_json::json;

use amalgam::engine::cache::RunCache;
use amalgam::engine::execute::clean_stray_temp_files;
use amalgam::engine::worker::Job;
use amalgam::engine::{
    Event, JobReport, Outcome, Precision, SaveMetadata, SavedFile, Warning, run_blocking,
};
use amalgam::graph::load::load_file;
use amalgam::graph::resolve::resolve;
use amalgam::graph::validate::validate;
use amalgam::nodes::Registry;

use super::FolderArgs;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// A ComfyUI workflow: PNG, workflow JSON, API prompt JSON, or a .safetensors with one embedded.
    pub workflow: PathBuf,
    /// Output precision of float tensors.
    #[arg(long, default_value = "keep", value_parser = super::precision_parser())]
    pub precision: Precision,
    /// Sample only the first image of each latent batch (the same image 0 as the whole batch,
    /// in a fraction of the time).
    #[arg(long)]
    pub first_image_only: bool,
    /// Print one JSON object instead of the saved paths.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub metadata: MetadataArgs,
}

/// What saved files carry besides their data.
#[derive(Debug, Default, clap::Args)]
pub struct MetadataArgs {
    /// No `prompt` or `workflow` in saved checkpoints and images (ComfyUI's flag of the name).
    #[arg(long)]
    pub disable_metadata: bool,
    /// `modelspec.title` of saved models (instead of ComfyUI's "{filename} {counter}").
    #[arg(long, value_name = "TEXT")]
    pub title: Option<String>,
    /// `modelspec.author` of saved models.
    #[arg(long, value_name = "TEXT")]
    pub author: Option<String>,
    /// `modelspec.description` of saved models.
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
}

impl MetadataArgs {
    pub fn choice(&self) -> SaveMetadata {
        SaveMetadata {
            disabled: self.disable_metadata,
            title: self.title.clone(),
            author: self.author.clone(),
            description: self.description.clone(),
        }
    }
}

pub fn run(folders: &FolderArgs, args: &RunArgs) -> anyhow::Result<()> {
    let folders = folders.resolve()?;
    let loaded = load_file(&args.workflow)?;
    let registry = Registry::builtin();
    let validation = validate(resolve(&loaded.document, registry), registry, &folders);
    for e in &validation.errors {
        eprintln!("error: {e}");
    }
    for w in loaded
        .report
        .issues
        .iter()
        .map(|i| &i.message)
        .chain(&validation.warnings)
    {
        eprintln!("warning: {w}");
    }
    if !validation.ok() {
        anyhow::bail!("nothing can run in {}", args.workflow.display());
    }
    let cleaned = clean_stray_temp_files(folders.output_dir());
    if cleaned > 0 {
        eprintln!("removed {cleaned} temporary file(s) left by an interrupted save");
    }

    let job = Job {
        prompt: validation.prompt.clone(),
        outputs: validation.outputs.clone(),
        workflow: (!loaded.from_prompt).then(|| loaded.document.to_json()),
        folders: folders.clone(),
        precision: args.precision,
        first_image_only: args.first_image_only,
        metadata: args.metadata.choice(),
    };
    let cancel = super::ctrl_c_flag();
    let bar = super::byte_bar();
    let job_report = run_blocking(
        &job,
        &cancel,
        &mut RunCache::default(),
        &mut |event| match event {
            Event::Started { bytes_total, .. } => {
                if let Some(b) = &bar {
                    b.set_length(*bytes_total);
                }
            }
            Event::NodeStarted { node, class_type } => {
                if let Some(b) = &bar {
                    b.set_message(format!("#{node} {class_type}"));
                }
            }
            Event::Progress(p) => {
                if let Some(b) = &bar {
                    b.set_position(p.bytes_done);
                }
            }
            Event::Warning(w) => {
                let line = format!("warning: {w}");
                match &bar {
                    Some(b) => b.println(line),
                    None => eprintln!("{line}"),
                }
            }
            Event::Failed(_) | Event::Cancelled => {
                if let Some(b) = &bar {
                    b.abandon();
                }
            }
            Event::Finished { .. } | Event::Compared(_) => {
                if let Some(b) = &bar {
                    b.finish_and_clear();
                }
            }
            Event::Step(s) => {
                let line = s.summary();
                match &bar {
                    Some(b) => b.set_message(line),
                    None => eprintln!("{line}"),
                }
            }
            Event::NodeFinished { .. } => {}
        },
    );
    let JobReport {
        outputs,
        warnings,
        outcome,
    } = job_report;
    let seconds = match outcome {
        Outcome::Finished { seconds } => seconds,
        Outcome::Failed(e) => {
            return Err(
                anyhow::Error::new(e).context(format!("running {}", args.workflow.display()))
            );
        }
        Outcome::Cancelled => anyhow::bail!("cancelled; no partial file was left behind"),
    };
    report(&outputs, &warnings, &validation.errors, seconds, args.json)?;
    if validation.errors.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "{} node(s) failed validation and did not run",
            validation.errors.len()
        )
    }
}

fn report(
    outputs: &[SavedFile],
    warnings: &[Warning],
    errors: &[amalgam::graph::NodeError],
    seconds: f64,
    as_json: bool,
) -> anyhow::Result<()> {
    if as_json {
        let j = json!({
            "outputs": outputs.iter().map(|o| json!({"node": o.node, "path": o.path, "bytes": o.bytes, "cached": o.cached})).collect::<Vec<_>>(),
            "warnings": warnings,
            "errors": errors,
            "seconds": seconds,
        });
        return super::emit(&(serde_json::to_string_pretty(&j)? + "\n"));
    }
    let mut text = String::new();
    for o in outputs {
        if o.cached {
            eprintln!(
                "note: node #{} unchanged since an earlier run; reporting its file",
                o.node
            );
        }
        text.push_str(&format!("{}\n", o.path.display()));
    }
    super::emit(&text)
}
