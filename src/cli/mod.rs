//! The command line: argument definitions (clap) and each subcommand's glue and output.
//!
//! Subcommands print results on stdout (human text, or one JSON object with `--json`) and return
//! errors to `main`, which prints them once with their context and exits non-zero.

pub mod bench;
mod bench_generate;
pub mod diff;
pub mod inspect;
pub mod run;
pub mod samples;
pub mod validate;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use amalgam::engine::Precision;
use amalgam::model::ModelFolders;

/// Merge Stable Diffusion checkpoints through a node graph, exactly like ComfyUI.
#[derive(Debug, Parser)]
#[command(name = "amalgam", version = amalgam::VERSION, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub folders: FolderArgs,
    /// Workflow to open in the window (PNG, JSON or .safetensors); without a subcommand only.
    #[arg(value_name = "WORKFLOW")]
    pub open: Option<PathBuf>,
    /// Open the window on the comparison of two checkpoints (its Compare view).
    #[arg(long, num_args = 2, value_names = ["A", "B"])]
    pub compare: Option<Vec<PathBuf>>,
    /// With WORKFLOW: queue a sweep of a FLOAT widget once it is open, as its right-click menu
    /// would — `NODE.WIDGET=FROM:TO:COUNT`, e.g. `3.ratio=0:1:5`; given twice, a 2-D grid.
    #[arg(long, value_name = "SPEC", requires = "open", action = clap::ArgAction::Append)]
    pub sweep: Vec<String>,
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
    /// Builds the folder configuration with [`ModelFolders::from_config`] (the app's function
    /// and order); any extra paths file that cannot be read is an error here.
    pub fn resolve(&self) -> anyhow::Result<ModelFolders> {
        use anyhow::Context;
        let base = match &self.base_dir {
            Some(b) => b.clone(),
            None => std::env::current_dir().context("cannot determine the current directory")?,
        };
        let (folders, problems) = ModelFolders::from_config(
            &base,
            self.models_dir.as_deref(),
            self.output_dir.as_deref(),
            &self.extra_model_paths,
        );
        match problems.into_iter().next() {
            Some(e) => Err(e.into()),
            None => Ok(folders),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what a checkpoint is: architecture, prediction, components, dtypes, metadata.
    Inspect(inspect::InspectArgs),
    /// Compare two checkpoints: keys, shapes, dtypes, and how different each block is.
    Diff(diff::DiffArgs),
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
        Command::Diff(args) => diff::run(args),
        Command::Samples(args) => samples::run(&cli.folders, args),
        Command::Validate(args) => validate::run(&cli.folders, args),
        Command::Run(args) => run::run(&cli.folders, args),
        Command::Bench(args) => bench::run(args),
    }
}

/// A cancel flag that Ctrl+C sets. Only the first handler of a process can be installed; a
/// second run in the same process (tests) simply has no Ctrl+C handling.
pub fn ctrl_c_flag() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&cancel);
    let _ = ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed));
    cancel
}

/// A progress bar over bytes on a terminal's stderr (`None` when stderr is not a terminal),
/// with the job's message after it.
pub fn byte_bar() -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    })
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

pub use amalgam::model::report::human_bytes;

/// `--precision`: the engine's names, listed in `--help` and checked by clap.
pub fn precision_parser() -> impl clap::builder::TypedValueParser<Value = Precision> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(Precision::ALL.map(Precision::as_str))
        .try_map(|s| s.parse::<Precision>())
}
