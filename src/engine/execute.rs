//! Running a plan: every file's header is fixed first, then its tensors are produced in header
//! order by a small pool of threads and streamed into the file.
//!
//! Memory is bounded by the window of chunks in flight (a few × 4 MiB), whatever the model size
//! or graph depth: nothing holds a whole model or a whole output. Chunks may finish out of order;
//! the writer keeps the few that arrive early and writes strictly in order. Cancellation is
//! checked between chunks; a cancelled or failed file is never renamed into place, and its
//! temporary file is deleted.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossbeam_channel::bounded;

use crate::format::safetensors::{PendingFile, WriteError};

use super::kernel::{CHUNK_ELEMENTS, KernelError, LeafBytes, Scratch, prepare, produce};
use super::naming::{check_inside_output, next_output_name};
use super::plan::{Plan, PlannedFile, Recipe};
use super::{EngineError, Event, Progress, SavedFile, Warning};

/// Worker threads for evaluation: `AMALGAM_THREADS`, else the machine's cores (at most 8).
pub fn thread_count() -> usize {
    std::env::var("AMALGAM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get().min(8)))
}

/// Counts shared across the files of a job.
struct Tally {
    tensors_done: usize,
    bytes_done: u64,
    tensors_total: usize,
    bytes_total: u64,
}

/// Writes every file of the plan; stops at the first error or on cancel.
pub fn execute(
    plan: &Plan,
    cancel: &AtomicBool,
    emit: &mut dyn FnMut(Event),
) -> Result<Vec<SavedFile>, EngineError> {
    let mut tally = Tally {
        tensors_done: 0,
        bytes_done: 0,
        tensors_total: plan.tensors_total(),
        bytes_total: plan.bytes_total(),
    };
    let inputs: Vec<std::path::PathBuf> = plan
        .sources
        .iter()
        .map(|s| s.path.canonicalize().unwrap_or_else(|_| s.path.clone()))
        .collect();
    let mut saved = Vec::new();
    for (i, file) in plan.files.iter().enumerate() {
        if cancel.load(Ordering::Relaxed) {
            return Err(EngineError::Cancelled);
        }
        // A CLIPSave writes several files: one start and one finish per node.
        if i == 0 || plan.files[i - 1].node != file.node {
            emit(Event::NodeStarted {
                node: file.node.clone(),
                class_type: file.class_type.clone(),
            });
        }
        saved.push(write_one(plan, file, &inputs, cancel, &mut tally, emit)?);
        if plan
            .files
            .get(i + 1)
            .is_none_or(|next| next.node != file.node)
        {
            emit(Event::NodeFinished {
                node: file.node.clone(),
            });
        }
    }
    Ok(saved)
}

fn write_one(
    plan: &Plan,
    file: &PlannedFile,
    inputs: &[std::path::PathBuf],
    cancel: &AtomicBool,
    tally: &mut Tally,
    emit: &mut dyn FnMut(Event),
) -> Result<SavedFile, EngineError> {
    let node = file.node.clone();
    let specs: Vec<_> = file.tensors.iter().map(|t| t.spec.clone()).collect();
    // Name the file now (not at queue time) so jobs queued together count up correctly; retry
    // if another writer takes the name first.
    let mut attempt = 0;
    let mut pending = loop {
        let name = next_output_name(&file.prefix, &plan.output_dir).map_err(|error| {
            EngineError::Naming {
                node: node.clone(),
                error,
            }
        })?;
        let inside = |folder: &Path| {
            check_inside_output(folder, &plan.output_dir).map_err(|error| EngineError::Naming {
                node: node.clone(),
                error,
            })
        };
        // Before creating anything (a symlinked subfolder would create folders elsewhere) and
        // after (in case one appeared meanwhile).
        inside(&name.folder)?;
        std::fs::create_dir_all(&name.folder).map_err(|e| EngineError::Write {
            node: node.clone(),
            error: WriteError::Io {
                path: name.folder.clone(),
                error: e,
            },
        })?;
        inside(&name.folder)?;
        let path = name.path();
        let canonical_dir = name.folder.canonicalize().unwrap_or(name.folder.clone());
        if inputs
            .iter()
            .any(|i| *i == canonical_dir.join(name.file_name()))
        {
            return Err(EngineError::OutputIsInput { node, path });
        }
        let mut metadata = file.metadata.clone();
        if file.modelspec_title {
            let at = metadata
                .iter()
                .position(|(k, _)| k == "modelspec.implementation")
                .map_or(metadata.len(), |i| i + 1);
            metadata.insert(
                at,
                (
                    "modelspec.title".into(),
                    format!("{} {}", name.filename, name.counter),
                ),
            );
        }
        match PendingFile::create(&path, &specs, &metadata) {
            Ok(p) => break p,
            Err(WriteError::Exists { .. }) if attempt < 100 => attempt += 1,
            Err(error) => {
                return Err(EngineError::Write { node, error });
            }
        }
    };
    // Input files whose values that went into this save hold NaN or infinity, with the keys.
    let mut non_finite: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    write_tensors(
        file,
        &plan.sources,
        &mut pending,
        cancel,
        &mut |index, flagged| {
            let t = &file.tensors[index];
            for &source in flagged {
                non_finite
                    .entry(source)
                    .or_default()
                    .push(t.spec.name.clone());
            }
            tally.tensors_done += 1;
            tally.bytes_done += t.spec.byte_len().unwrap_or(0);
            emit(Event::Progress(Progress {
                tensors_done: tally.tensors_done,
                tensors_total: tally.tensors_total,
                bytes_done: tally.bytes_done,
                bytes_total: tally.bytes_total,
                current_key: t.spec.name.clone(),
            }));
        },
    )?;
    let path = pending.final_path().to_owned();
    let bytes = pending.finish().map_err(|error| EngineError::Write {
        node: node.clone(),
        error,
    })?;
    // ComfyUI merges NaN and infinity silently; they reach the output, so say where they are.
    for (source, keys) in non_finite {
        let shown: Vec<&str> = keys.iter().take(5).map(String::as_str).collect();
        emit(Event::Warning(Warning {
            node: Some(node.clone()),
            key: keys.first().cloned(),
            message: format!(
                "{}: NaN or infinite values in {} tensor(s) used for {}: {}{} (they are in the saved file too)",
                plan.sources[source].path.display(),
                keys.len(),
                path.file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                shown.join(", "),
                if keys.len() > shown.len() {
                    ", …"
                } else {
                    ""
                }
            ),
        }));
    }
    Ok(SavedFile {
        node,
        path,
        bytes,
        cached: false,
    })
}

/// One unit of work: a chunk of one tensor.
#[derive(Clone, Copy)]
struct Task {
    tensor: usize,
    start: usize,
    len: usize,
    last_of_tensor: bool,
}

fn tasks_for(file: &PlannedFile) -> Vec<Task> {
    let mut tasks = Vec::new();
    for (i, t) in file.tensors.iter().enumerate() {
        let numel = match &t.recipe {
            Recipe::Bytes(_) => 0,
            _ => t.spec.shape.iter().product(),
        };
        if numel == 0 {
            tasks.push(Task {
                tensor: i,
                start: 0,
                len: 0,
                last_of_tensor: true,
            });
            continue;
        }
        let mut start = 0;
        while start < numel {
            let len = CHUNK_ELEMENTS.min(numel - start);
            tasks.push(Task {
                tensor: i,
                start,
                len,
                last_of_tensor: start + len == numel,
            });
            start += len;
        }
    }
    tasks
}

fn write_tensors(
    file: &PlannedFile,
    sources: &dyn LeafBytes,
    pending: &mut PendingFile,
    cancel: &AtomicBool,
    on_tensor: &mut dyn FnMut(usize, &[usize]),
) -> Result<(), EngineError> {
    let tasks = tasks_for(file);
    let threads = thread_count();
    // Chunks in flight at most: enough to keep every thread busy while the writer works.
    let window = 3 * threads + 1;
    let node = file.node.clone();
    std::thread::scope(|scope| -> Result<(), EngineError> {
        // A task is a chunk's index, with the tensor's prepared recipe when it has one (DoRA
        // needs whole-tensor norms before any chunk is evaluated).
        let (task_tx, task_rx) = bounded::<(usize, Option<Arc<Recipe>>)>(window);
        type Produced = Result<(Vec<u8>, Vec<usize>), KernelError>;
        let (result_tx, result_rx) = bounded::<(usize, Produced)>(window);
        let (pool_tx, pool_rx) = bounded::<Vec<u8>>(window);
        for i in 0..threads {
            let (task_rx, result_tx, pool_rx) =
                (task_rx.clone(), result_tx.clone(), pool_rx.clone());
            let tasks = &tasks;
            std::thread::Builder::new()
                .name(format!("amalgam-eval-{i}"))
                .spawn_scoped(scope, move || {
                    let mut scratch = Scratch::default();
                    for (seq, prepared) in task_rx {
                        let t = tasks[seq];
                        let mut buf = pool_rx.try_recv().unwrap_or_default();
                        buf.clear();
                        let r = produce(
                            prepared
                                .as_deref()
                                .unwrap_or(&file.tensors[t.tensor].recipe),
                            t.start,
                            t.len,
                            sources,
                            &mut scratch,
                            &mut buf,
                        )
                        .map(|flagged| (buf, flagged));
                        if result_tx.send((seq, r)).is_err() {
                            break;
                        }
                    }
                })
                .map_err(EngineError::Threads)?;
        }
        drop(result_tx);
        // Prepared on this thread when a tensor's first chunk is sent, then shared by its chunks.
        let mut prepared: Option<(usize, Arc<Recipe>)> = None;
        let mut send = |seq: usize| -> Result<(), EngineError> {
            let t = tasks[seq];
            let tensor = &file.tensors[t.tensor];
            if t.start == 0 {
                let numel = tensor.spec.shape.iter().product();
                prepared = prepare(&tensor.recipe, numel, sources)
                    .map_err(|e| EngineError::Compute {
                        node: file.node.clone(),
                        key: tensor.spec.name.clone(),
                        message: e.to_string(),
                    })?
                    .map(|r| (t.tensor, Arc::new(r)));
            }
            let recipe = prepared
                .as_ref()
                .filter(|(i, _)| *i == t.tensor)
                .map(|(_, r)| Arc::clone(r));
            let _ = task_tx.send((seq, recipe));
            Ok(())
        };
        let mut next_send = 0;
        while next_send < tasks.len().min(window) {
            send(next_send)?;
            next_send += 1;
        }
        let mut early: BTreeMap<usize, (Vec<u8>, Vec<usize>)> = BTreeMap::new();
        let mut next_write = 0;
        // Sources flagged by the chunks of the tensor being written.
        let mut flagged: Vec<usize> = Vec::new();
        while next_write < tasks.len() {
            if cancel.load(Ordering::Relaxed) {
                return Err(EngineError::Cancelled);
            }
            let (seq, result) = match result_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(r) => r,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    return Err(EngineError::Compute {
                        node,
                        key: String::new(),
                        message: "evaluation threads stopped".into(),
                    });
                }
            };
            let produced = result.map_err(|e| EngineError::Compute {
                node: node.clone(),
                key: file.tensors[tasks[seq].tensor].spec.name.clone(),
                message: e.to_string(),
            })?;
            early.insert(seq, produced);
            while let Some((buf, sources)) = early.remove(&next_write) {
                for s in sources {
                    if !flagged.contains(&s) {
                        flagged.push(s);
                    }
                }
                pending.write(&buf).map_err(|error| EngineError::Write {
                    node: node.clone(),
                    error,
                })?;
                let _ = pool_tx.try_send(buf);
                let t = tasks[next_write];
                if t.last_of_tensor {
                    on_tensor(t.tensor, &flagged);
                    flagged.clear();
                }
                next_write += 1;
                if next_send < tasks.len() {
                    send(next_send)?;
                    next_send += 1;
                }
            }
        }
        Ok(())
    })
}

/// How long a temporary file must have been left untouched before it counts as stray when its
/// lock cannot be checked (a filesystem without locks): a save in progress writes continuously.
pub const STRAY_AFTER: Duration = Duration::from_secs(600);

/// A temporary file younger than this is never removed: it may belong to a save that has just
/// created it and not yet taken its lock.
const JUST_CREATED: Duration = Duration::from_secs(2);

/// Removes temporary files left by a crash (a normal cancel or error leaves none) below `dir`.
///
/// A save holds an exclusive lock on its temporary file until it ends; the operating system
/// drops the lock when the process dies, even by SIGKILL or power loss. So a temporary file whose
/// lock can be taken belongs to no running save and is removed at once; where locks are not
/// supported, only files untouched for [`STRAY_AFTER`] are removed.
pub fn clean_stray_temp_files(dir: &Path) -> usize {
    let now = std::time::SystemTime::now();
    let mut removed = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
                continue;
            }
            let is_temp = e
                .file_name()
                .to_string_lossy()
                .starts_with(crate::format::safetensors::TEMP_PREFIX);
            let age = e
                .metadata()
                .and_then(|m| m.modified())
                .map(|m| now.duration_since(m).unwrap_or_default());
            let Ok(age) = age else { continue };
            if !is_temp || age < JUST_CREATED || p.is_symlink() {
                continue;
            }
            let stray = match std::fs::File::open(&p).map(|f| f.try_lock()) {
                Ok(Ok(())) => true,
                Ok(Err(std::fs::TryLockError::WouldBlock)) => false,
                Ok(Err(std::fs::TryLockError::Error(_))) | Err(_) => age >= STRAY_AFTER,
            };
            if stray && std::fs::remove_file(&p).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}
