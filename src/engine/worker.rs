//! The background worker: one named thread that runs queued jobs in order and reports events.
//!
//! A caller (the GUI, the CLI) submits [`Job`]s — owned data: the validated prompt, the output
//! nodes, the workflow to embed, the folders and the precision — and drains `(JobId, Event)`
//! pairs from a bounded channel. Progress events are dropped when the channel is full (the next
//! one supersedes them); every other event is delivered. Each job has its own cancel flag. The
//! optional `wake` callback runs after every event (the GUI passes `request_repaint`).
//! Dropping the [`Worker`] cancels everything and joins the thread.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded, unbounded};
use serde_json::Value;

use crate::graph::Prompt;
use crate::model::ModelFolders;

use super::cache::{RunCache, signature};
use super::compare::{CompareJob, run_compare};
use super::execute::execute;
use super::images::run_images;
use super::plan::build;
use super::{EngineError, Event, Precision, SavedFile};

/// Identifies a submitted job.
pub type JobId = u64;

/// Everything a job needs, owned.
#[derive(Clone, Debug)]
pub struct Job {
    /// The validated (coerced) prompt.
    pub prompt: Prompt,
    /// Output nodes to run (the valid ones from validation).
    pub outputs: Vec<String>,
    /// UI workflow to store in the files' metadata, when the job came from one.
    pub workflow: Option<Value>,
    pub folders: ModelFolders,
    pub precision: Precision,
    /// Sample only the first image of each latent batch (the same image 0 as a whole batch).
    pub first_image_only: bool,
    /// `--disable-metadata`, and the modelspec title, author and description.
    pub metadata: super::SaveMetadata,
}

type Wake = Box<dyn Fn() + Send>;

/// What the worker thread is sent.
enum Message {
    Run(JobId, Box<Job>, Arc<AtomicBool>),
    Compare(JobId, CompareJob, Arc<AtomicBool>),
    /// Makes the thread panic, so tests can check what a caller does when the worker dies.
    #[cfg(any(test, feature = "testing"))]
    Crash,
}

/// Handle to the worker thread.
pub struct Worker {
    jobs: Option<Sender<Message>>,
    events: Receiver<(JobId, Event)>,
    cancels: HashMap<JobId, Arc<AtomicBool>>,
    next_id: JobId,
    thread: Option<JoinHandle<()>>,
}

/// Capacity of the event channel.
const EVENT_CAPACITY: usize = 1024;

impl Worker {
    /// Starts the worker thread.
    pub fn spawn(wake: Option<Wake>) -> std::io::Result<Worker> {
        Self::spawn_from(wake, 1)
    }

    /// Starts a worker whose first job gets id `first` (a replacement for a worker that died
    /// keeps numbering where the old one stopped, so ids stay unique to the caller).
    pub fn spawn_from(wake: Option<Wake>, first: JobId) -> std::io::Result<Worker> {
        // Jobs are few and small (a prompt each); events are bounded.
        let (job_tx, job_rx) = unbounded::<Message>();
        let (event_tx, event_rx) = bounded(EVENT_CAPACITY);
        let thread = std::thread::Builder::new()
            .name("amalgam-worker".into())
            .spawn(move || {
                let mut cache = RunCache::default();
                for message in job_rx {
                    let (id, job, cancel) = match message {
                        Message::Run(id, job, cancel) => (id, Ok(job), cancel),
                        Message::Compare(id, job, cancel) => (id, Err(job), cancel),
                        #[cfg(any(test, feature = "testing"))]
                        Message::Crash => panic!("the worker was asked to crash (a test)"),
                    };
                    let mut emit = |event: Event| {
                        let sent = match event {
                            Event::Progress(_) => match event_tx.try_send((id, event)) {
                                Ok(()) => true,
                                Err(TrySendError::Full(_)) => false,
                                Err(TrySendError::Disconnected(_)) => false,
                            },
                            other => event_tx.send((id, other)).is_ok(),
                        };
                        if sent && let Some(w) = &wake {
                            w();
                        }
                    };
                    match job {
                        Ok(job) => run_job(&job, &cancel, &mut cache, &mut emit),
                        Err(compare) => run_compare(&compare, &cancel, &mut emit),
                    }
                }
            })?;
        Ok(Worker {
            jobs: Some(job_tx),
            events: event_rx,
            cancels: HashMap::new(),
            next_id: first,
            thread: Some(thread),
        })
    }

    /// Queues a job; it runs after the ones before it.
    pub fn submit(&mut self, job: Job) -> JobId {
        self.enqueue(|id, cancel| Message::Run(id, Box::new(job), cancel))
    }

    /// Queues a comparison of two checkpoint files; it ends with [`Event::Compared`].
    pub fn submit_compare(&mut self, job: CompareJob) -> JobId {
        self.enqueue(|id, cancel| Message::Compare(id, job, cancel))
    }

    /// Numbers a job, gives it a cancel flag and sends it to the thread.
    fn enqueue(&mut self, message: impl FnOnce(JobId, Arc<AtomicBool>) -> Message) -> JobId {
        let id = self.next_id;
        self.next_id += 1;
        let cancel = Arc::new(AtomicBool::new(false));
        self.cancels.insert(id, Arc::clone(&cancel));
        // A dead worker drops the job; its caller learns of the death from `events()`, which
        // is then disconnected, and fails the job there.
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(message(id, cancel));
        }
        id
    }

    /// The id the next submitted job will get.
    pub fn next_id(&self) -> JobId {
        self.next_id
    }

    /// Makes the worker thread panic (for tests of what callers do when it dies).
    #[cfg(any(test, feature = "testing"))]
    pub fn crash(&self) {
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(Message::Crash);
        }
    }

    /// Asks a job to stop (queued jobs are skipped, a running one stops between chunks).
    pub fn cancel(&self, id: JobId) {
        if let Some(c) = self.cancels.get(&id) {
            c.store(true, Ordering::Relaxed);
        }
    }

    /// The cancel flag of a job, for callers that cancel from elsewhere (a Ctrl+C handler).
    pub fn cancel_flag(&self, id: JobId) -> Option<Arc<AtomicBool>> {
        self.cancels.get(&id).cloned()
    }

    /// Events of all jobs, in order per job. Disconnected (once drained) when the worker thread
    /// has died; a caller then fails its unfinished jobs and may start a new worker.
    pub fn events(&self) -> &Receiver<(JobId, Event)> {
        &self.events
    }

    /// Forgets a finished job's cancel flag.
    pub fn forget(&mut self, id: JobId) {
        self.cancels.remove(&id);
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        for c in self.cancels.values() {
            c.store(true, Ordering::Relaxed);
        }
        self.jobs = None;
        // Drain so a worker blocked on a full event channel can finish.
        while let Some(t) = &self.thread {
            if t.is_finished() {
                break;
            }
            let _ = self
                .events
                .recv_timeout(std::time::Duration::from_millis(20));
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs one job on the current thread, reporting through `emit`. Used by the worker, and
/// directly by tests.
pub fn run_job(job: &Job, cancel: &AtomicBool, cache: &mut RunCache, emit: &mut dyn FnMut(Event)) {
    let started = Instant::now();
    if cancel.load(Ordering::Relaxed) {
        emit(Event::Cancelled);
        return;
    }
    // Outputs an identical earlier run already wrote (and that still exist) are not redone.
    let mut cached: Vec<SavedFile> = Vec::new();
    let mut to_run = Vec::new();
    let mut signatures = Vec::new();
    for id in &job.outputs {
        let sig = signature(
            &job.prompt,
            id,
            &job.folders,
            job.precision,
            job.first_image_only,
            &job.metadata,
        );
        match cache.lookup(sig) {
            Some(files) => cached.extend(files),
            None => {
                to_run.push(id.clone());
                signatures.push((id.clone(), sig));
            }
        }
    }
    let plan = match build(
        &job.prompt,
        &to_run,
        job.workflow.as_ref(),
        &job.folders,
        job.precision,
        &job.metadata,
    ) {
        Ok(p) => p,
        Err(e) => {
            emit(Event::Failed(e));
            return;
        }
    };
    emit(Event::Started {
        tensors_total: plan.tensors_total(),
        bytes_total: plan.bytes_total(),
        files: plan.files.len(),
    });
    for w in &plan.warnings {
        emit(Event::Warning(w.clone()));
    }
    let result = execute(&plan, cancel, emit).and_then(|mut saved| {
        saved.extend(run_images(
            &plan,
            job.first_image_only,
            &mut cache.networks,
            cancel,
            emit,
        )?);
        Ok(saved)
    });
    match result {
        Ok(saved) => {
            for (id, sig) in signatures {
                let files: Vec<SavedFile> =
                    saved.iter().filter(|s| s.node == id).cloned().collect();
                cache.insert(sig, files);
            }
            let mut outputs = cached;
            outputs.extend(saved);
            emit(Event::Finished {
                outputs,
                seconds: started.elapsed().as_secs_f64(),
            });
        }
        Err(EngineError::Cancelled) => emit(Event::Cancelled),
        Err(e) => emit(Event::Failed(e)),
    }
}
