//! The `amalgam` binary: parses the command line and runs a subcommand.
//! With no subcommand it will open the desktop app; until then it prints help.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use amalgam::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(command) = &cli.command else {
        let _ = Cli::command().print_help();
        return ExitCode::SUCCESS;
    };
    match cli::run(&cli, command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
