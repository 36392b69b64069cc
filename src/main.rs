//! The `amalgam` binary: parses the command line and runs a subcommand; with no subcommand it
//! opens the desktop app (when built with the `gui` feature).

mod cli;

use std::process::ExitCode;

use clap::Parser;

use cli::Cli;

fn main() -> ExitCode {
    let started = std::time::Instant::now();
    amalgam::engine::memory::tune_allocator();
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(command) => cli::run(&cli, command),
        None => open_app(&cli, started),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Library errors print their cause themselves and do not expose it again as a
            // `source()`, so `{:#}` shows each cause once (as ripgrep prints its errors).
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(feature = "gui")]
fn open_app(cli: &Cli, started: std::time::Instant) -> anyhow::Result<()> {
    let f = &cli.folders;
    amalgam::ui::run(amalgam::ui::Launch {
        base_dir: f.base_dir.clone(),
        models_dir: f.models_dir.clone(),
        output_dir: f.output_dir.clone(),
        extra_model_paths: f.extra_model_paths.first().cloned(),
        open: cli.open.clone(),
        compare: match cli.compare.as_deref() {
            Some([a, b]) => Some((a.clone(), b.clone())),
            _ => None,
        },
        sweep: cli.sweep.clone(),
        started: Some(started),
    })?;
    Ok(())
}

#[cfg(not(feature = "gui"))]
fn open_app(_: &Cli, _: std::time::Instant) -> anyhow::Result<()> {
    anyhow::bail!(
        "this amalgam was built without the desktop app (feature `gui`); run `amalgam --help` for the commands"
    )
}
