//! The `amalgam` binary: parses the command line and runs a subcommand; with no subcommand it
//! opens the desktop app.

use std::process::ExitCode;

use clap::Parser;

use amalgam::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(command) => cli::run(&cli, command),
        None => {
            let f = &cli.folders;
            amalgam::ui::run(
                f.base_dir.clone(),
                f.models_dir.clone(),
                f.output_dir.clone(),
                f.extra_model_paths.first().cloned(),
            )
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
