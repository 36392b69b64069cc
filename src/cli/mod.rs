//! The command line: argument definitions (clap) and each subcommand's glue and output.
//!
//! Subcommands print results on stdout (human text, or one JSON object with `--json`) and return
//! errors to `main`, which prints them once with their context and exits non-zero.

pub mod bench;
pub mod inspect;
pub mod run;
pub mod samples;
pub mod validate;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::model::ModelFolders;

/// Merge Stable Diffusion checkpoints through a node graph, exactly like ComfyUI.
#[derive(Debug, Parser)]
#[command(name = "amalgam", version = crate::VERSION, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub folders: FolderArgs,
    /// Workflow to open in the window (PNG, JSON or .safetensors); without a subcommand only.
    #[arg(value_name = "WORKFLOW")]
    pub open: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Where models and outputs live (as in ComfyUI: `<base>/models/…` and `<base>/output`).
#[derive(Debug, clap::Args)]
pub struct FolderArgs {
    /// Base directory holding `models/` and `output/`.
    #[arg(long, global = true, env = "AMALGAM_BASE_DIR", value_name = "DIR")]
    pub base_dir: Option<PathBuf>,
    /// Models directory (default: <base>/models).
    #[arg(long, global = true, value_name = "DIR")]
    pub models_dir: Option<PathBuf>,
    /// Output directory (default: <base>/output).
    #[arg(long, global = true, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// A ComfyUI `extra_model_paths.yaml` to add model folders from (an existing ComfyUI or
    /// A1111 install). `<base>/extra_model_paths.yaml` is read automatically when present.
    #[arg(long, global = true, value_name = "FILE")]
    pub extra_model_paths: Vec<PathBuf>,
}

impl FolderArgs {
    /// Builds the folder configuration, reading any extra paths files.
    pub fn resolve(&self) -> anyhow::Result<ModelFolders> {
        use anyhow::Context;
        let base = match &self.base_dir {
            Some(b) => b.clone(),
            None => std::env::current_dir().context("cannot determine the current directory")?,
        };
        let mut folders = ModelFolders::new(
            &base,
            self.models_dir.as_deref(),
            self.output_dir.as_deref(),
        );
        let default_yaml = base.join("extra_model_paths.yaml");
        if default_yaml.is_file() {
            folders.add_extra_paths_file(&default_yaml)?;
        }
        for yaml in &self.extra_model_paths {
            folders.add_extra_paths_file(yaml)?;
        }
        Ok(folders)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what a checkpoint is: architecture, prediction, components, dtypes, metadata.
    Inspect(inspect::InspectArgs),
    /// Write small sample checkpoints (SD1.5 and SDXL layout) into the checkpoints folder.
    Samples(samples::SamplesArgs),
    /// Check a workflow (PNG, JSON, API prompt, .safetensors) the way ComfyUI validates a prompt.
    Validate(validate::ValidateArgs),
    /// Run a workflow's save nodes and write the merged files.
    Run(run::RunArgs),
    /// Measure merge speed and memory against this machine's read/write limit.
    Bench(bench::BenchArgs),
}

/// Runs a parsed command line. `None` (no subcommand) is handled by `main`.
pub fn run(cli: &Cli, command: &Command) -> anyhow::Result<()> {
    match command {
        Command::Inspect(args) => inspect::run(args),
        Command::Samples(args) => samples::run(&cli.folders, args),
        Command::Validate(args) => validate::run(&cli.folders, args),
        Command::Run(args) => run::run(&cli.folders, args),
        Command::Bench(args) => bench::run(args),
    }
}

/// Writes command output to stdout. A closed pipe (`amalgam … | head`) ends output quietly
/// instead of panicking as `println!` would.
pub fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

pub use crate::model::report::human_bytes;

/// An error and its causes on one line, `outer: inner: …`, leaving out a cause whose text the
/// message before it already contains (library errors name their source themselves, so anyhow's
/// `{:#}` would print it two or three times).
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_chain_prints_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::StorageFull, "No space left on device");
        let write = crate::format::safetensors::WriteError::Io {
            path: "out/x.safetensors".into(),
            source: io,
        };
        let e = anyhow::Error::new(write).context("running merge.json");
        assert_eq!(
            super::error_chain(&e),
            "running merge.json: cannot write out/x.safetensors: No space left on device"
        );
    }
}
