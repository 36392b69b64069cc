//! File work for the app, off the UI thread: loading dropped or opened workflows, scanning the
//! model and output folders, writing samples, deleting outputs, importing a dropped checkpoint.
//! One named thread takes [`Request`]s and answers with [`Reply`]s; the UI polls the replies
//! each frame and is woken when one arrives. The app keeps at most one scan in flight, so a
//! slow drive never builds a backlog of scans.
//!
//! Native file dialogs block, so they run on their own short-lived threads behind the
//! [`Dialogs`] trait; tests swap in fixed answers.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};

use crate::engine::Precision;
use crate::graph::load::{LoadError, Loaded, load_file};
use crate::graph::resolve::resolve;
use crate::graph::subgraph::root_node_of;
use crate::graph::validate::validate;
use crate::graph::{Document, NodeId};
use crate::model::report::text_report;
use crate::model::samples::{SampleOutcome, write_sample_extras, write_samples};
use crate::model::{Checkpoint, ModelFolders};
use crate::nodes::Registry;

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
    /// Bring a checkpoint into `folder`: a symbolic link (`link`), or a copy — gigabytes, so it
    /// reports progress and stops when `cancel` is set, leaving no partial file.
    Import {
        path: PathBuf,
        folder: PathBuf,
        link: bool,
        cancel: Arc<AtomicBool>,
    },
    /// What the graph's nodes will do with their inputs, from the checkpoints' headers only:
    /// validate, plan (no tensor is computed), and return the plan's notes per node.
    Preview {
        doc: Box<Document>,
        folders: ModelFolders,
        precision: Precision,
    },
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
    /// A PNG's width and height (`None` for checkpoints).
    pub image: Option<(u32, u32)>,
}

impl OutputEntry {
    /// A file the browser lists but cannot read: `?` as its architecture, `why` as its report.
    fn unreadable(
        path: &Path,
        name: String,
        bytes: u64,
        modified: Option<SystemTime>,
        why: String,
    ) -> OutputEntry {
        OutputEntry {
            path: path.to_owned(),
            name,
            bytes,
            modified,
            architecture: "?".into(),
            has_workflow: false,
            report: why,
            image: None,
        }
    }
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
    /// Bytes of an import copied so far.
    ImportProgress {
        done: u64,
        total: u64,
    },
    /// An import ended: the new file's name in the folder, or why not (`Cancelled`).
    Imported {
        path: PathBuf,
        result: Result<String, ImportError>,
    },
    /// The notes of a [`Request::Preview`], for the document it was asked for.
    Preview {
        doc: Box<Document>,
        notes: HashMap<NodeId, Vec<String>>,
    },
}

/// Why an import did not happen.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    #[error("cancelled; nothing was left in the models folder")]
    Cancelled,
    #[error("{0}")]
    Failed(String),
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
                                true,
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
                        Request::Import {
                            path,
                            folder,
                            link,
                            cancel,
                        } => {
                            let mut progress = |done, total| {
                                let _ = rep_tx.try_send(Reply::ImportProgress { done, total });
                                wake();
                            };
                            let result = import(&path, &folder, link, &cancel, &mut progress);
                            Reply::Imported { path, result }
                        }
                        Request::Preview {
                            doc,
                            folders,
                            precision,
                        } => {
                            let notes = preview_notes(&doc, &folders, precision);
                            Reply::Preview { doc, notes }
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

/// Bytes per read while copying an import; progress is reported at most ten times a second.
const COPY_CHUNK: usize = 8 << 20;

/// Links or copies `path` into `folder` under its own name. A copy goes to a hidden temporary
/// name first and is renamed when complete, so the folder never lists a half-copied checkpoint.
fn import(
    path: &Path,
    folder: &Path,
    link: bool,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<String, ImportError> {
    let failed = |what: &str, p: &Path, e: std::io::Error| {
        ImportError::Failed(format!("cannot {what} {}: {e}", p.display()))
    };
    let name = path
        .file_name()
        .ok_or_else(|| ImportError::Failed(format!("{} names no file", path.display())))?;
    let target = folder.join(name);
    std::fs::create_dir_all(folder).map_err(|e| failed("create", folder, e))?;
    if target.exists() {
        return Err(ImportError::Failed(format!(
            "{} already exists",
            target.display()
        )));
    }
    if link {
        #[cfg(unix)]
        std::os::unix::fs::symlink(path, &target).map_err(|e| failed("link", &target, e))?;
        #[cfg(not(unix))]
        std::fs::hard_link(path, &target).map_err(|e| failed("link", &target, e))?;
        return Ok(name.to_string_lossy().into_owned());
    }
    let mut from = std::fs::File::open(path).map_err(|e| failed("read", path, e))?;
    let total = from.metadata().map_err(|e| failed("read", path, e))?.len();
    let mut partial = tempfile::Builder::new()
        .prefix(".amalgam-import-")
        .suffix(".tmp")
        .tempfile_in(folder)
        .map_err(|e| failed("write into", folder, e))?;
    let mut buf = vec![0u8; COPY_CHUNK];
    // Reported after the first chunk, then at most ten times a second.
    let (mut done, mut reported) = (0u64, None::<Instant>);
    loop {
        if cancel.load(Ordering::Relaxed) {
            // Dropping the temporary file removes it.
            return Err(ImportError::Cancelled);
        }
        let n = from.read(&mut buf).map_err(|e| failed("read", path, e))?;
        if n == 0 {
            break;
        }
        partial
            .write_all(&buf[..n])
            .map_err(|e| failed("write", &target, e))?;
        done += n as u64;
        if reported.is_none_or(|t| t.elapsed() >= Duration::from_millis(100)) {
            progress(done, total);
            reported = Some(Instant::now());
        }
    }
    progress(done, total);
    partial
        .as_file()
        .sync_all()
        .map_err(|e| failed("write", &target, e))?;
    // Never replaces a file that appeared meanwhile.
    partial
        .persist_noclobber(&target)
        .map_err(|e| failed("write", &target, e.error))?;
    Ok(name.to_string_lossy().into_owned())
}

/// Notes shown on a node before Queue: what the plan of a valid graph warns about (keys of a
/// merge's second input it ignores, shapes it leaves unmerged, dtypes it converts), at most
/// [`NOTES_PER_NODE`] per node with a count of the rest. An invalid graph has none: its errors
/// are what Queue shows.
pub fn preview_notes(
    doc: &Document,
    folders: &ModelFolders,
    precision: Precision,
) -> HashMap<NodeId, Vec<String>> {
    let registry = Registry::builtin();
    let v = validate(resolve(doc, registry), registry, folders);
    let mut notes: HashMap<NodeId, Vec<String>> = HashMap::new();
    if !v.ok() {
        return notes;
    }
    let Ok(plan) = crate::engine::plan::build(
        &v.prompt,
        &v.outputs,
        None,
        folders,
        precision,
        &crate::engine::SaveMetadata::default(),
    ) else {
        return notes;
    };
    let mut extra: HashMap<NodeId, usize> = HashMap::new();
    for w in plan.warnings {
        // Prompt ids of top-level nodes are the document's ids; `12:5` is inside instance 12.
        let Some(id) = w.node.as_deref().and_then(root_node_of) else {
            continue;
        };
        let list = notes.entry(id).or_default();
        if list.len() < NOTES_PER_NODE {
            list.push(w.message);
        } else {
            *extra.entry(id).or_default() += 1;
        }
    }
    for (id, n) in extra {
        if let Some(list) = notes.get_mut(&id) {
            list.push(format!("… and {n} more (the queue log lists all)"));
        }
    }
    notes
}

/// Notes shown per node before the rest are counted.
pub const NOTES_PER_NODE: usize = 3;

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
            let is_png = super::is_png_path(&path);
            if !(name.ends_with(".safetensors") || is_png) || name.starts_with('.') {
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
            let entry = if is_png {
                image_entry(&path, rel, bytes, modified)
            } else {
                checkpoint_entry(&path, rel, bytes, modified)
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

fn checkpoint_entry(
    path: &Path,
    rel: String,
    bytes: u64,
    modified: Option<SystemTime>,
) -> OutputEntry {
    match Checkpoint::open(path) {
        Ok(c) => OutputEntry {
            path: path.to_owned(),
            name: rel,
            bytes,
            modified,
            architecture: c.detection.architecture.as_str().to_owned(),
            has_workflow: c.has_workflow(),
            report: text_report(&c),
            image: None,
        },
        Err(err) => OutputEntry::unreadable(path, rel, bytes, modified, err.to_string()),
    }
}

/// A saved image: its size from the PNG header, its workflow and prompt from its text chunks.
fn image_entry(path: &Path, rel: String, bytes: u64, modified: Option<SystemTime>) -> OutputEntry {
    let read = std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|b| {
            let texts = crate::format::png::text_chunks(&b).map_err(|e| e.to_string())?;
            // IHDR is the first chunk: width and height right after its type.
            let size = b.get(16..24).map(|d| {
                (
                    u32::from_be_bytes([d[0], d[1], d[2], d[3]]),
                    u32::from_be_bytes([d[4], d[5], d[6], d[7]]),
                )
            });
            Ok((size, texts))
        });
    match read {
        Ok((size, texts)) => {
            let keys: Vec<&str> = texts.iter().map(|(k, _)| k.as_str()).collect();
            let (w, h) = size.unwrap_or_default();
            OutputEntry {
                path: path.to_owned(),
                name: rel,
                bytes,
                modified,
                architecture: "image".into(),
                has_workflow: crate::format::png::find_text(&texts, "workflow").is_some(),
                report: format!("PNG {w} × {h}\ntext chunks: {}", keys.join(", ")),
                image: size,
            }
        }
        Err(e) => OutputEntry::unreadable(
            path,
            rel,
            bytes,
            modified,
            format!("cannot read {}: {e}", path.display()),
        ),
    }
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

/// Dialogs one at a time: a question asked while another is open is dropped (a second Ctrl+O
/// while the file chooser is up), and an answer is taken once.
pub struct DialogSlot {
    dialogs: Box<dyn Dialogs>,
    open: Option<(DialogRequest, Receiver<Option<PathBuf>>)>,
}

impl DialogSlot {
    pub fn new(dialogs: Box<dyn Dialogs>) -> DialogSlot {
        DialogSlot {
            dialogs,
            open: None,
        }
    }

    /// Opens a dialog for `request` unless one is open.
    pub fn ask(&mut self, request: DialogRequest) {
        if self.open.is_none() {
            let answer = self.dialogs.ask(&request);
            self.open = Some((request, answer));
        }
    }

    /// The open dialog's request and the path chosen, once answered; a cancelled dialog (or
    /// one whose thread died) closes without an answer.
    pub fn poll(&mut self) -> Option<(DialogRequest, PathBuf)> {
        let (_, answer) = self.open.as_ref()?;
        let answer = match answer.try_recv() {
            Ok(answer) => answer,
            Err(crossbeam_channel::TryRecvError::Empty) => return None,
            Err(crossbeam_channel::TryRecvError::Disconnected) => None,
        };
        let (request, _) = self.open.take()?;
        answer.map(|path| (request, path))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("big.safetensors");
        // Three copy chunks and a bit, so progress is reported along the way.
        let bytes: Vec<u8> = (0..3 * COPY_CHUNK + 17).map(|i| (i % 251) as u8).collect();
        std::fs::write(&file, &bytes).expect("write");
        let folder = dir.path().join("models/checkpoints");
        (dir, file, folder)
    }

    /// An import nobody cancels or watches.
    fn import_quietly(file: &Path, folder: &Path, link: bool) -> Result<String, ImportError> {
        import(file, folder, link, &AtomicBool::new(false), &mut |_, _| {})
    }

    fn listing(folder: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(folder)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    #[test]
    fn an_import_copies_whole_with_progress_and_never_replaces() {
        let (_dir, file, folder) = setup();
        let mut seen = Vec::new();
        let name = import(
            &file,
            &folder,
            false,
            &AtomicBool::new(false),
            &mut |d, t| {
                seen.push((d, t));
            },
        )
        .expect("import");
        assert_eq!(name, "big.safetensors");
        assert_eq!(
            std::fs::read(folder.join(&name)).ok(),
            std::fs::read(&file).ok()
        );
        let total = std::fs::metadata(&file).expect("meta").len();
        assert_eq!(seen.last(), Some(&(total, total)));
        assert_eq!(
            listing(&folder),
            ["big.safetensors"],
            "no temporary file left"
        );
        let again = import_quietly(&file, &folder, false);
        assert!(
            matches!(&again, Err(ImportError::Failed(m)) if m.contains("already exists")),
            "{again:?}"
        );
    }

    #[test]
    fn a_cancelled_import_leaves_nothing() {
        let (_dir, file, folder) = setup();
        let cancel = AtomicBool::new(false);
        let result = import(&file, &folder, false, &cancel, &mut |_, _| {
            // Cancelled from "another thread" once the copy is under way.
            cancel.store(true, Ordering::Relaxed);
        });
        assert_eq!(result, Err(ImportError::Cancelled));
        assert!(listing(&folder).is_empty(), "{:?}", listing(&folder));
    }

    /// Answers every question with the next of `answers` (None: cancelled), on time.
    struct Scripted(std::cell::RefCell<Vec<Option<PathBuf>>>);

    impl Dialogs for Scripted {
        fn ask(&self, _: &DialogRequest) -> Receiver<Option<PathBuf>> {
            let (tx, rx) = bounded(1);
            let _ = tx.send(self.0.borrow_mut().remove(0));
            rx
        }
    }

    #[test]
    fn one_dialog_at_a_time_and_each_answer_once() {
        let answers = vec![Some(PathBuf::from("a.json")), None];
        let mut slot = DialogSlot::new(Box::new(Scripted(std::cell::RefCell::new(answers))));
        slot.ask(DialogRequest::OpenWorkflow);
        // Asked again while open: dropped (the script would otherwise be consumed).
        slot.ask(DialogRequest::OpenExtraPaths);
        assert_eq!(
            slot.poll(),
            Some((DialogRequest::OpenWorkflow, PathBuf::from("a.json")))
        );
        assert_eq!(slot.poll(), None, "taken once");
        slot.ask(DialogRequest::OpenExtraPaths);
        assert_eq!(slot.poll(), None, "cancelled");
        assert!(slot.open.is_none(), "a cancelled dialog closes");
    }

    #[test]
    fn the_output_scan_lists_newest_first_and_reads_each_file_once() {
        use crate::format::DType;
        use crate::format::safetensors::{TensorSpec, write_file};
        let dir = tempfile::tempdir().expect("tmp");
        let sub = dir.path().join("checkpoints");
        std::fs::create_dir_all(&sub).expect("mkdir");
        let spec = [TensorSpec::new("x", DType::F32, &[1])];
        let write = |path: &Path, meta: Vec<(String, String)>| {
            write_file(path, &spec, &meta, [&[0u8; 4][..]]).expect("write");
        };
        let old = sub.join("old.safetensors");
        write(&old, vec![("workflow".into(), "{}".into())]);
        let past = SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&old)
            .and_then(|f| f.set_modified(past))
            .expect("backdate");
        write(&dir.path().join("new.safetensors"), Vec::new());
        std::fs::write(dir.path().join("broken.safetensors"), b"not a checkpoint").expect("write");
        std::fs::write(dir.path().join(".hidden.safetensors"), b"x").expect("write");
        std::fs::write(dir.path().join("notes.txt"), b"x").expect("write");
        let mut known = HashMap::new();
        let first = scan_outputs(dir.path(), &mut known);
        let names: Vec<&str> = first.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names.last(),
            Some(&"checkpoints/old.safetensors"),
            "{names:?}"
        );
        assert_eq!(names.len(), 3, "{names:?}");
        let old_entry = first.last().expect("old");
        assert!(old_entry.has_workflow);
        let broken = first
            .iter()
            .find(|e| e.name == "broken.safetensors")
            .expect("listed");
        assert_eq!(broken.architecture, "?");
        assert!(
            broken.report.contains("broken.safetensors"),
            "{}",
            broken.report
        );
        // The cache is keyed on (size, mtime): a file rewritten with other bytes of the same size
        // and its old time is not read again (its workflow is still reported)…
        let len = std::fs::metadata(&old).expect("meta").len() as usize;
        let rewrite = |bytes: &[u8], time| {
            std::fs::write(&old, bytes).expect("rewrite");
            std::fs::File::options()
                .write(true)
                .open(&old)
                .and_then(|f| f.set_modified(time))
                .expect("backdate");
        };
        rewrite(&vec![b'x'; len], past);
        assert_eq!(scan_outputs(dir.path(), &mut known), first);
        // …and one whose size changed is read again.
        rewrite(b"short", past);
        let again = scan_outputs(dir.path(), &mut known);
        let old_again = again
            .iter()
            .find(|e| e.name == "checkpoints/old.safetensors")
            .expect("still listed");
        assert!(!old_again.has_workflow && old_again.architecture == "?");
    }

    #[cfg(unix)]
    #[test]
    fn a_linked_import_points_at_the_original() {
        let (_dir, file, folder) = setup();
        let name = import_quietly(&file, &folder, true).expect("link");
        let link = folder.join(name);
        assert_eq!(std::fs::read_link(&link).ok(), Some(file));
    }
}
