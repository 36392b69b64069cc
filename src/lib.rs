//! Amalgam: merge Stable-Diffusion-family checkpoints through a node graph, exactly as ComfyUI
//! does, streaming tensor by tensor.
//!
//! # Layers
//! Each layer only uses the ones above it in this list:
//! - [`format`]: bytes on disk — the strict safetensors reader and streaming writer, the
//!   non-executing PyTorch pickle reader, PNG text chunks.
//! - [`model`]: what a checkpoint is — architecture detection, component key groups, ComfyUI's save
//!   layout, model folders, reference layouts and samples.
//! - [`graph`]: the workflow document (ComfyUI's UI JSON, kept losslessly), loading it from PNGs,
//!   JSON and checkpoints, and resolving it into an API prompt (mute, bypass, reroute, primitive).
//! - [`nodes`]: the node registry — every node's schema and meaning in one place — and
//!   validation of a prompt against it, with ComfyUI's error types.
//! - [`engine`]: planning, exact f32 evaluation, streaming crash-safe writes, the background
//!   worker and its events. Knows nothing of any UI.
//! - [`ui`]: the desktop app (eframe + egui_node_graph2): canvas, queue, output browser. It
//!   drives the engine through its worker and never touches tensors.
//! - [`cli`]: the command-line subcommands, thin glue over the layers.
//!
//! # Failures
//! Library errors are `thiserror` enums that carry the file (and key or node) they concern; the
//! binary adds context with `anyhow` and prints them once. Nothing a file or a user supplies is
//! unwrapped.

pub mod cli;
pub mod engine;
pub mod format;
#[doc(hidden)]
pub mod fuzzing;
pub mod graph;
pub mod model;
pub mod nodes;
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
