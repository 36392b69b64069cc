//! Running one job to completion on the calling thread, for callers without a [`Worker`] (the
//! command line, tests, fuzzing): the same [`run_job`] the worker runs, with its events collected
//! into a [`JobReport`].
//!
//! [`Worker`]: super::worker::Worker
//! [`run_job`]: super::worker::run_job

use std::sync::atomic::AtomicBool;

use super::cache::RunCache;
use super::worker::{Job, run_job};
use super::{EngineError, Event, SavedFile, Warning};

/// How a job ended.
#[derive(Debug)]
pub enum Outcome {
    Finished { seconds: f64 },
    Failed(EngineError),
    Cancelled,
}

/// What a job did: its files, its warnings in order, and how it ended.
#[derive(Debug)]
pub struct JobReport {
    pub outputs: Vec<SavedFile>,
    pub warnings: Vec<Warning>,
    pub outcome: Outcome,
}

impl JobReport {
    /// The files, or why there are none (`Cancelled` when the job was cancelled).
    pub fn into_result(self) -> Result<Vec<SavedFile>, EngineError> {
        match self.outcome {
            Outcome::Finished { .. } => Ok(self.outputs),
            Outcome::Failed(e) => Err(e),
            Outcome::Cancelled => Err(EngineError::Cancelled),
        }
    }
}

/// Runs `job` on this thread until it finishes, fails or sees `cancel`. `observe` is shown every
/// event as it happens (a progress bar); `cache` remembers outputs for identical later runs.
pub fn run_blocking(
    job: &Job,
    cancel: &AtomicBool,
    cache: &mut RunCache,
    observe: &mut dyn FnMut(&Event),
) -> JobReport {
    let mut report = JobReport {
        outputs: Vec::new(),
        warnings: Vec::new(),
        outcome: Outcome::Cancelled,
    };
    run_job(job, cancel, cache, &mut |event| {
        observe(&event);
        match event {
            Event::Warning(w) => report.warnings.push(w),
            Event::Finished { outputs, seconds } => {
                report.outputs = outputs;
                report.outcome = Outcome::Finished { seconds };
            }
            Event::Failed(e) => report.outcome = Outcome::Failed(e),
            Event::Cancelled => report.outcome = Outcome::Cancelled,
            Event::Started { .. }
            | Event::NodeStarted { .. }
            | Event::NodeFinished { .. }
            | Event::Progress(_)
            | Event::Step(_)
            | Event::Compared(_) => {}
        }
    });
    report
}
