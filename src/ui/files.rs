//! File work for the app, off the UI thread: loading dropped or opened workflows, scanning the
//! model and output folders, writing samples. One named thread takes [`Request`]s and answers
//! with [`Reply`]s; the UI polls the replies each frame and is woken when one arrives.
//!
//! Native file dialogs block, so they run on their own short-lived threads behind the
//! [`Dialogs`] trait; tests swap in fixed answers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};

use crate::graph::load::{LoadError, Loaded, load_file};
use crate::model::report::text_report;
use crate::model::samples::{SampleOutcome, write_sample_extras, write_samples};
use crate::model::{Checkpoint, ModelFolders};

/// Work for the file thread.
pub enum Request {
    Load(PathBuf),
    Scan(ModelFolders),
    /// Sample checkpoints, LoRA and VAE, into these folders.
    WriteSamples {
        checkpoints: PathBuf,
        loras: PathBuf,
        vae: PathBuf,
    },
    /// Delete a saved output the user confirmed; kept off the UI thread because a delete on a
    /// network or sleeping drive can block for seconds.
    Delete(PathBuf),
}

/// A saved file, as the output browser lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputEntry {
    pub path: PathBuf,
    /// Path below the output folder, `/`-separated.
    pub name: String,
    pub bytes: u64,
    pub modified: Option<SystemTime>,
    pub architecture: String,
    pub has_workflow: bool,
    /// The `inspect` report, or the reason the file could not be read.
    pub report: String,
}

/// Answers from the file thread.
pub enum Reply {
    Loaded(PathBuf, Box<Result<Loaded, LoadError>>),
    Scanned {
        models: HashMap<&'static str, Vec<String>>,
        outputs: Vec<OutputEntry>,
    },
    Samples(Result<Vec<SampleOutcome>, String>),
    Deleted(PathBuf, Result<(), String>),
}

/// Model folder kinds the canvas offers in COMBO widgets.
pub const MODEL_KINDS: [&str; 3] = ["checkpoints", "vae", "loras"];

/// Handle to the file thread.
pub struct FileThread {
    requests: Sender<Request>,
    pub replies: Receiver<Reply>,
}

impl FileThread {
    pub fn spawn(wake: impl Fn() + Send + 'static) -> std::io::Result<FileThread> {
        let (req_tx, req_rx) = unbounded::<Request>();
        let (rep_tx, rep_rx) = bounded::<Reply>(64);
        std::thread::Builder::new()
            .name("amalgam-files".into())
            .spawn(move || {
                // Headers of output files already read, by (path, size, mtime).
                let mut known: HashMap<PathBuf, (u64, Option<SystemTime>, OutputEntry)> =
                    HashMap::new();
                for req in req_rx {
                    let reply = match req {
                        Request::Load(path) => {
                            let r = load_file(&path);
                            Reply::Loaded(path, Box::new(r))
                        }
                        Request::Scan(folders) => {
                            let models =
                                MODEL_KINDS.iter().map(|k| (*k, folders.list(k))).collect();
                            let outputs = scan_outputs(folders.output_dir(), &mut known);
                            Reply::Scanned { models, outputs }
                        }
                        Request::WriteSamples {
                            checkpoints,
                            loras,
                            vae,
                        } => {
                            let r = write_samples(
                                &checkpoints,
                                crate::model::layouts::Scale::Sample,
                                None,
                            )
                            .and_then(|mut v| {
                                v.extend(write_sample_extras(&loras, &vae)?);
                                Ok(v)
                            })
                            .map_err(|e| e.to_string());
                            Reply::Samples(r)
                        }
                        Request::Delete(path) => {
                            let r = std::fs::remove_file(&path).map_err(|e| e.to_string());
                            Reply::Deleted(path, r)
                        }
                    };
                    if rep_tx.send(reply).is_err() {
                        break;
                    }
                    wake();
                }
            })?;
        Ok(FileThread {
            requests: req_tx,
            replies: rep_rx,
        })
    }

    pub fn send(&self, r: Request) {
        let _ = self.requests.send(r);
    }
}

fn scan_outputs(
    dir: &Path,
    known: &mut HashMap<PathBuf, (u64, Option<SystemTime>, OutputEntry)>,
) -> Vec<OutputEntry> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    let mut seen = std::collections::HashSet::new();
    while let Some(d) = stack.pop() {
        let Ok(canonical) = d.canonicalize() else {
            continue;
        };
        if !seen.insert(canonical) {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if !name.ends_with(".safetensors") || name.starts_with('.') {
                continue;
            }
            let Ok(meta) = e.metadata() else { continue };
            let (bytes, modified) = (meta.len(), meta.modified().ok());
            if let Some((b, m, entry)) = known.get(&path)
                && *b == bytes
                && *m == modified
            {
                out.push(entry.clone());
                continue;
            }
            let rel = path
                .strip_prefix(dir)
                .unwrap_or(&path)
                .to_string_lossy()
                .replace('\\', "/");
            let entry = match Checkpoint::open(&path) {
                Ok(c) => OutputEntry {
                    path: path.clone(),
                    name: rel,
                    bytes,
                    modified,
                    architecture: c.detection.architecture.as_str().to_owned(),
                    has_workflow: c.has_workflow(),
                    report: text_report(&c),
                },
                Err(err) => OutputEntry {
                    path: path.clone(),
                    name: rel,
                    bytes,
                    modified,
                    architecture: "?".into(),
                    has_workflow: false,
                    report: err.to_string(),
                },
            };
            known.insert(path, (bytes, modified, entry.clone()));
            out.push(entry);
        }
    }
    // Newest first.
    out.sort_by(|a, b| {
        b.modified
            .cmp(&a.modified)
            .then_with(|| a.name.cmp(&b.name))
    });
    out
}

/// What a dialog is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DialogRequest {
    OpenWorkflow,
    SaveWorkflow { suggested: String },
    ExportPrompt { suggested: String },
    PickFolder { purpose: FolderPurpose },
    OpenExtraPaths,
}

/// Which setting a folder dialog fills.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FolderPurpose {
    Base,
    Models,
    Output,
}

/// Native dialogs, or fixed answers in tests. Each answer arrives on the returned channel.
pub trait Dialogs {
    fn ask(&self, request: &DialogRequest) -> Receiver<Option<PathBuf>>;
}

/// Real dialogs via `rfd`, each on its own thread.
pub struct NativeDialogs;

impl Dialogs for NativeDialogs {
    fn ask(&self, request: &DialogRequest) -> Receiver<Option<PathBuf>> {
        let (tx, rx) = bounded(1);
        let request = request.clone();
        let spawned = std::thread::Builder::new()
            .name("amalgam-dialog".into())
            .spawn(move || {
                let workflow_filter = |d: rfd::FileDialog| {
                    d.add_filter("ComfyUI workflow", &["json", "png", "safetensors"])
                };
                let answer = match request {
                    DialogRequest::OpenWorkflow => {
                        workflow_filter(rfd::FileDialog::new()).pick_file()
                    }
                    DialogRequest::SaveWorkflow { suggested }
                    | DialogRequest::ExportPrompt { suggested } => rfd::FileDialog::new()
                        .add_filter("JSON", &["json"])
                        .set_file_name(suggested)
                        .save_file(),
                    DialogRequest::PickFolder { .. } => rfd::FileDialog::new().pick_folder(),
                    DialogRequest::OpenExtraPaths => rfd::FileDialog::new()
                        .add_filter("YAML", &["yaml", "yml"])
                        .pick_file(),
                };
                let _ = tx.send(answer);
            });
        if spawned.is_err() {
            let (tx, rx) = bounded(1);
            let _ = tx.send(None);
            return rx;
        }
        rx
    }
}
