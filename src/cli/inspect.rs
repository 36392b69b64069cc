//! `amalgam inspect FILE [--json]`: what a checkpoint is, without reading its tensor data.

use std::path::PathBuf;

use amalgam::model::Checkpoint;
use amalgam::model::report::{report, text_report};

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Checkpoint file (.safetensors, .sft, .ckpt, .pt, .pth, .bin).
    pub file: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &InspectArgs) -> anyhow::Result<()> {
    let ckpt = Checkpoint::open(&args.file)?;
    if args.json {
        super::emit(&(serde_json::to_string_pretty(&report(&ckpt))? + "\n"))?;
    } else {
        super::emit(&text_report(&ckpt))?;
    }
    Ok(())
}
