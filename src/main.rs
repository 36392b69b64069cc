//! The `amalgam` binary: parses the command line and runs a subcommand; with no subcommand it
//! opens the desktop app.

use std::process::ExitCode;

use clap::Parser;

use amalgam::cli::{self, Cli};

fn main() -> ExitCode {
    let started = std::time::Instant::now();
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(command) => cli::run(&cli, command),
        None => {
            let f = &cli.folders;
            amalgam::ui::run(amalgam::ui::Launch {
                base_dir: f.base_dir.clone(),
                models_dir: f.models_dir.clone(),
                output_dir: f.output_dir.clone(),
                extra_model_paths: f.extra_model_paths.first().cloned(),
                open: cli.open.clone(),
                started: Some(started),
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", amalgam::cli::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
