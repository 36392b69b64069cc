//! Comparing two checkpoints as a worker job (`amalgam diff`, the app's Compare view): the
//! files are opened by path, compared by [`crate::model::diff::compare`] with progress and
//! cancel, and the report comes back as one owned [`Event::Compared`].
//!
//! Events, in order: `Started` (keys and bytes to compare, 2 files), `Progress` (keys done),
//! then exactly one of `Compared`, `Failed` (a file that cannot be read, named) or `Cancelled`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::model::Checkpoint;
use crate::model::diff::{DiffError, DiffReport, compare};

use super::{EngineError, Event, Progress};

/// Two checkpoint files to compare; `a` is the reference (`relative` is measured against it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompareJob {
    pub a: PathBuf,
    pub b: PathBuf,
}

/// A finished comparison.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    pub a: PathBuf,
    pub b: PathBuf,
    pub report: DiffReport,
    pub seconds: f64,
}

/// Runs one comparison on the current thread, reporting through `emit`.
pub fn run_compare(job: &CompareJob, cancel: &AtomicBool, emit: &mut dyn FnMut(Event)) {
    let started = Instant::now();
    if cancel.load(Ordering::Relaxed) {
        emit(Event::Cancelled);
        return;
    }
    let open = |path: &PathBuf| Checkpoint::open(path).map_err(EngineError::Open);
    let (a, b) = match (open(&job.a), open(&job.b)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            emit(Event::Failed(e));
            return;
        }
    };
    let mut started_sent = false;
    let result = compare(&a, &b, cancel, &mut |p| {
        if !started_sent {
            started_sent = true;
            emit(Event::Started {
                tensors_total: p.keys_total,
                bytes_total: p.bytes_total,
                files: 2,
            });
        }
        emit(Event::Progress(Progress {
            tensors_done: p.keys_done,
            tensors_total: p.keys_total,
            bytes_done: p.bytes_done,
            bytes_total: p.bytes_total,
            current_key: String::new(),
        }));
    });
    match result {
        Ok(report) => emit(Event::Compared(Box::new(Comparison {
            a: job.a.clone(),
            b: job.b.clone(),
            report,
            seconds: started.elapsed().as_secs_f64(),
        }))),
        Err(DiffError::Cancelled) => emit(Event::Cancelled),
        Err(e) => emit(Event::Failed(EngineError::Diff(e))),
    }
}
