//! Amalgam: merge Stable-Diffusion-family checkpoints through a node graph, exactly as ComfyUI
//! does, streaming tensor by tensor.
//!
//! # Layers
//! Each layer only uses the ones above it in this list (a unit test reads every module's
//! `use crate::…` lines and fails on an upward import):
//! - [`format`]: bytes on disk — the strict safetensors reader and streaming writer, the
//!   non-executing PyTorch pickle reader, PNG text chunks, Python-compatible JSON.
//! - [`model`]: what a checkpoint is — architecture detection, component key groups, ComfyUI's save
//!   layout, model folders, reference layouts and samples.
//! - [`nodes`]: the node registry — every node's schema (inputs, widgets, defaults, ranges,
//!   outputs) and its [`nodes::Operation`], the plain-data meaning the engine interprets.
//! - [`graph`]: the workflow document (ComfyUI's UI JSON, kept losslessly), editing it, loading
//!   it from PNGs, JSON and checkpoints, resolving it into an API prompt (mute, bypass, reroute,
//!   primitive) and validating that prompt against the registry with ComfyUI's error types.
//! - [`generate`]: the image half of a workflow as ComfyUI computes it on a CPU (so far: torch's
//!   noise, bit for bit, and the noise schedules).
//! - [`engine`]: planning, exact f32 evaluation, streaming crash-safe writes, the background
//!   worker and its events, and [`engine::run_blocking`] for callers without a worker. Knows
//!   nothing of any UI.
//! - [`ui`] (feature `gui`): the desktop app (eframe + egui_node_graph2): canvas, queue, output
//!   browser. It drives the engine through its worker and never touches tensors.
//!
//! The command line (clap, progress bars, Ctrl-C) lives in the binary (`src/main.rs`, `src/cli/`),
//! not in this library, as ripgrep keeps its flags out of its libraries.
//!
//! # Failures
//! Library errors are `thiserror` enums that carry the file (and key or node) they concern; the
//! binary adds context with `anyhow` and prints them once. Nothing a file or a user supplies is
//! unwrapped.

/// `From<cause>` for an error enum, wrapping the cause in one variant: what thiserror's `#[from]`
/// does, without also exposing the cause as `source()`. Amalgam's messages print their cause, and
/// a cause is either printed or exposed, never both (so `{:#}` shows it once).
macro_rules! from_printed_cause {
    ($($error:ident :: $variant:ident ($cause:ty)),+ $(,)?) => {
        $(impl From<$cause> for $error {
            fn from(cause: $cause) -> Self {
                $error::$variant(cause)
            }
        })+
    };
}

pub mod engine;
pub mod format;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod generate;
pub mod graph;
pub mod model;
pub mod nodes;
#[cfg(feature = "gui")]
pub mod ui;

/// Version string with the git revision and build date embedded by `build.rs`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("AMALGAM_GIT_REV"),
    ", built ",
    env!("AMALGAM_BUILD_DATE"),
    ")"
);

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// The layers of the module docs, lowest first.
    const LAYERS: [&str; 7] = [
        "format", "model", "nodes", "graph", "generate", "engine", "ui",
    ];

    fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// Errors print their cause and do not expose it again as `source()`, so the binary's `{:#}`
    /// shows each cause once (the rule `from_printed_cause!` keeps for converted causes).
    #[test]
    fn errors_print_their_cause_and_do_not_expose_it() {
        use std::error::Error;
        let io = || std::io::Error::other("disk on fire");
        let read = crate::format::ReadError {
            path: "a.safetensors".into(),
            kind: io().into(),
        };
        let write = crate::engine::EngineError::Write {
            node: "4".into(),
            error: crate::format::safetensors::WriteError::Io {
                path: "out/x.safetensors".into(),
                error: io(),
            },
        };
        let load: crate::graph::load::LoadErrorKind = io().into();
        let errors: [&dyn Error; 3] = [&read, &write, &load];
        for e in errors {
            assert!(e.to_string().contains("disk on fire"), "{e}");
            assert!(e.source().is_none(), "{e} also exposes its cause");
        }
    }

    /// No module uses a layer above its own (`crate::<layer>` anywhere in its code, imports and
    /// inline paths alike), and below the UI nothing names egui.
    #[test]
    fn layers_only_use_the_layers_below_them() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut upward = Vec::new();
        for (rank, layer) in LAYERS.iter().enumerate() {
            let mut files = Vec::new();
            rust_files(&src.join(layer), &mut files);
            assert!(!files.is_empty(), "no files in src/{layer}");
            for file in files {
                let text = std::fs::read_to_string(&file).expect("read");
                for (n, line) in text.lines().enumerate() {
                    let code = line.split("//").next().unwrap_or("");
                    for name in LAYERS.iter().skip(rank + 1) {
                        if code.contains(&format!("crate::{name}")) {
                            upward.push(format!(
                                "{}:{}: {layer} uses {name}",
                                file.display(),
                                n + 1
                            ));
                        }
                    }
                    if *layer != "ui" && (code.contains("egui") || code.contains("eframe")) {
                        upward.push(format!("{}:{}: {layer} names egui", file.display(), n + 1));
                    }
                }
            }
        }
        assert!(upward.is_empty(), "upward imports:\n{}", upward.join("\n"));
    }
}
