//! The merge engine: plan, evaluate, write — streaming, exact, cancellable.
//!
//! - [`plan`]: a validated prompt becomes lazy per-key expressions and, for every output file,
//!   its full list of tensors and metadata, before any tensor is computed.
//! - [`kernel`]: f32 evaluation of one chunk of one tensor, ComfyUI's exact operation order, one
//!   final rounding.
//! - [`execute`]: tensors are produced in header order on a small pool of threads, with a bounded
//!   number of chunks in flight, and streamed into a temporary file that is synced and renamed
//!   into place (never over an existing file).
//! - [`naming`]: ComfyUI's output names and counters; nothing is written outside the output folder.
//! - [`cache`]: an identical re-queue on unchanged inputs reports the earlier file instead of
//!   writing a duplicate, as long as that file still exists.
//! - [`compare`]: two checkpoints compared key by key (a diff job), streamed like a merge.
//! - [`memory`]: the allocator tuned for the image steps' big short-lived tensors.
//! - [`worker`]: the background thread (`amalgam-worker`) that runs jobs one after another and
//!   reports [`Event`]s over a channel; the one shared object per job is its cancel flag.
//!
//! The engine knows nothing of egui; the GUI and the CLI are both clients of [`worker::Worker`].

pub mod cache;
pub mod compare;
pub mod execute;
pub mod images;
pub mod kernel;
pub mod memory;
pub mod naming;
pub mod plan;
pub mod source;
pub mod worker;

pub use run::{JobReport, Outcome, run_blocking};

mod run;

use std::path::PathBuf;

/// What saved files carry besides their data: ComfyUI's `--disable-metadata` (no `prompt` or
/// `workflow` in checkpoints and PNGs), and an optional title, author and description written as
/// `modelspec.*` keys of saved models — settings of the run, never node inputs, so workflows stay
/// ComfyUI's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SaveMetadata {
    /// No `prompt` / `workflow` entries (ComfyUI's `--disable-metadata`).
    pub disabled: bool,
    /// `modelspec.title`, instead of ComfyUI's `"{filename} {counter}"` (SDXL family only).
    pub title: Option<String>,
    pub author: Option<String>,
    pub description: Option<String>,
}

impl SaveMetadata {
    /// The user's `modelspec.*` entries, in the modelspec order (title, author, description);
    /// empty texts count as unset.
    pub fn modelspec(&self) -> Vec<(String, String)> {
        [
            ("modelspec.title", &self.title),
            ("modelspec.author", &self.author),
            ("modelspec.description", &self.description),
        ]
        .into_iter()
        .filter_map(|(k, v)| {
            v.as_deref()
                .filter(|t| !t.is_empty())
                .map(|t| (k.to_owned(), t.to_owned()))
        })
        .collect()
    }

    /// Whether a user title replaces ComfyUI's.
    pub fn has_title(&self) -> bool {
        self.title.as_deref().is_some_and(|t| !t.is_empty())
    }
}

/// Output precision of float tensors.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Each tensor keeps the stored dtype of the first input's tensor; inputs are used as stored.
    /// An fp8 diffusion-model weight that was changed is written back in fp8 as ComfyUI does
    /// when it keeps a model in fp8 (seeded stochastic rounding); a changed fp8 text encoder
    /// weight becomes fp16, ComfyUI's text encoder dtype.
    #[default]
    Keep,
    /// Inputs are rounded to fp16 first (ComfyUI's usual load dtype on a GPU), results are fp16.
    Fp16,
    /// Inputs are rounded to bf16 first, results are bf16.
    Bf16,
    /// Inputs as stored, results in fp32 (ComfyUI's `--force-fp32` for the UNet).
    Fp32,
    /// ComfyUI's `--fp8_e4m3fn-unet`: the diffusion model's inputs are cast to fp8 e4m3fn first
    /// (torch's nearest cast) and its results written back with ComfyUI's seeded stochastic
    /// rounding; text encoder and VAE tensors as with `Keep`.
    #[serde(rename = "fp8_e4m3fn")]
    Fp8E4M3,
}

impl Precision {
    /// Every setting, in the order menus list them.
    pub const ALL: [Precision; 5] = [
        Precision::Keep,
        Precision::Fp16,
        Precision::Bf16,
        Precision::Fp32,
        Precision::Fp8E4M3,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Keep => "keep",
            Precision::Fp16 => "fp16",
            Precision::Bf16 => "bf16",
            Precision::Fp32 => "fp32",
            Precision::Fp8E4M3 => "fp8_e4m3fn",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    /// The setting named as [`Precision::as_str`] writes it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Precision::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                format!("unknown precision {s:?} (keep, fp16, bf16, fp32 or fp8_e4m3fn)")
            })
    }
}

/// Something the user should know about a run that did not stop it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Warning {
    pub node: Option<String>,
    pub key: Option<String>,
    pub message: String,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(n) = &self.node {
            write!(f, "node #{n}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Why a job failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("node #{node} ({class_type}): {message}")]
    Node {
        node: String,
        class_type: String,
        message: String,
    },
    #[error("node #{node}: {error}")]
    Read {
        node: String,
        error: crate::format::ReadError,
    },
    #[error("node #{node}: {error}")]
    Naming {
        node: String,
        error: naming::NamingError,
    },
    #[error("node #{node}: {error}")]
    Write {
        node: String,
        error: crate::format::safetensors::WriteError,
    },
    #[error("node #{node}: tensor {key:?}: {message}")]
    Compute {
        node: String,
        key: String,
        message: String,
    },
    #[error("node #{node}: refusing to write {}: it is one of this job's input files", path.display())]
    OutputIsInput { node: String, path: PathBuf },
    /// A file given by path (a comparison's input) cannot be read; the error names it.
    #[error("{0}")]
    Open(crate::format::ReadError),
    #[error("{0}")]
    Diff(crate::model::diff::DiffError),
    #[error("cannot start worker threads: {0}")]
    Threads(std::io::Error),
    #[error("cancelled")]
    Cancelled,
}

/// A file a job produced (or found already produced).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SavedFile {
    pub node: String,
    pub path: PathBuf,
    pub bytes: u64,
    /// True when an identical earlier run's file was reported instead of writing a new one.
    pub cached: bool,
}

/// Progress of a running job.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    pub tensors_done: usize,
    pub tensors_total: usize,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub current_key: String,
}

/// What a job reports, in order: `Started`, then node/progress/warning events, then exactly one
/// of `Finished`, `Failed` or `Cancelled`.
#[derive(Debug)]
pub enum Event {
    Started {
        tensors_total: usize,
        bytes_total: u64,
        files: usize,
    },
    NodeStarted {
        node: String,
        class_type: String,
    },
    NodeFinished {
        node: String,
    },
    Progress(Progress),
    /// A sampler step finished.
    Step(images::StepProgress),
    Warning(Warning),
    Finished {
        outputs: Vec<SavedFile>,
        seconds: f64,
    },
    Failed(EngineError),
    Cancelled,
    /// A comparison job's result (its last event).
    Compared(Box<compare::Comparison>),
}

impl Event {
    /// Whether this is the last event of its job.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Event::Finished { .. } | Event::Failed(_) | Event::Cancelled | Event::Compared(_)
        )
    }
}
