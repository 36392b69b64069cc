//! Queueing: the document (or a sweep cell's copy) validated and handed to the worker,
//! `control_after_generate` applied after, and the worker's events followed into the job views
//! (a dead worker is replaced). Split from `app.rs`; the same [`AmalgamApp`].

use std::time::Instant;

use crossbeam_channel::TryRecvError;

use crate::engine::worker::{Job, JobId, Worker};
use crate::graph::Document;
use crate::graph::resolve::resolve;
use crate::graph::subgraph::root_node_of;
use crate::graph::validate::validate;
use crate::nodes::Registry;
use crate::ui::compare::CompareView;
use crate::ui::jobs::{JobNews, JobView, worker_died};

use super::{AmalgamApp, EVENT_BUDGET, Results, SideTab, boxed};

impl AmalgamApp {
    /// Validates the document; queues a job when something can run, else marks the errors.
    /// Then applies `control_after_generate` (the job keeps the values it was queued with).
    pub fn queue(&mut self) -> Option<JobId> {
        let label = self
            .document
            .path
            .as_ref()
            .and_then(|p| p.file_name())
            .map_or_else(
                || "workflow".to_owned(),
                |f| f.to_string_lossy().into_owned(),
            );
        let doc = self.document.doc.clone();
        let id = self.submit_document(&doc, label)?;
        self.after_queue();
        self.side_tab = SideTab::Queue;
        Some(id)
    }

    /// Moves the seeds whose `control_after_generate` says so (one undo step).
    pub(super) fn after_queue(&mut self) {
        let mut next = self.document.doc.clone();
        if crate::graph::seeds::after_queue(&mut next, crate::graph::seeds::system_random()) > 0 {
            self.document.before_change("control after generate");
            self.document.doc = next;
            self.rebuild = true;
        }
    }

    /// Validates `doc` and queues it; on errors, marks them on the nodes and in the log.
    pub(super) fn submit_document(&mut self, doc: &Document, label: String) -> Option<JobId> {
        let registry = Registry::builtin();
        let v = validate(resolve(doc, registry), registry, &self.folders);
        self.canvas.state.errors.clear();
        for e in &v.errors {
            if let Some(id) = e.node.as_deref().and_then(root_node_of) {
                self.canvas
                    .state
                    .errors
                    .entry(id)
                    .or_default()
                    .push(format!("{}: {}", e.message, e.details));
            }
        }
        let lines: Vec<String> = v.errors.iter().map(ToString::to_string).collect();
        for l in lines {
            self.notify(true, l);
        }
        if !v.ok() {
            self.notify(
                true,
                "nothing was queued: fix the errors shown on the nodes",
            );
            self.show_log = true;
            return None;
        }
        let work = Results::sampler_work(&v.prompt, self.settings.first_image_only);
        let id = self.worker.submit(Job {
            prompt: v.prompt,
            outputs: v.outputs,
            workflow: Some(doc.to_json()),
            folders: self.folders.clone(),
            precision: self.settings.precision,
            first_image_only: self.settings.first_image_only,
            metadata: self.settings.metadata.clone(),
        });
        self.results.job_queued(id, work);
        self.jobs.push(JobView::new(id, label));
        Some(id)
    }

    pub(super) fn drain_events(&mut self) {
        let until = Instant::now() + EVENT_BUDGET;
        while Instant::now() < until {
            let (id, event) = match self.worker.events().try_recv() {
                Ok(e) => e,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.restart_worker();
                    break;
                }
            };
            let Some(job) = self.jobs.iter_mut().find(|j| j.id == id) else {
                continue;
            };
            match job.apply(event) {
                None => {}
                Some(JobNews::NodeStarted(node)) => {
                    self.canvas.state.running = crate::graph::subgraph::root_node_of(&node);
                }
                Some(JobNews::Ended) => {
                    let lines = job.summary();
                    let (outputs, failed) = (job.outputs.clone(), job.failure());
                    self.results.job_ended(id, &outputs, failed.as_deref());
                    if let Some(c) = job.comparison.take() {
                        self.compare = Some(CompareView::new(c));
                    }
                    self.worker.forget(id);
                    self.canvas.state.running = None;
                    for (error, line) in lines {
                        self.notify(error, line);
                    }
                    self.scans.last = None; // rescan outputs now
                }
            }
        }
    }

    /// The worker thread died (its event channel is closed): fail what it left unfinished and
    /// start a new one, numbering jobs on from the old one.
    pub(super) fn restart_worker(&mut self) {
        let failed = worker_died(&mut self.jobs);
        self.canvas.state.running = None;
        match Worker::spawn_from(Some(boxed(&self.wake)), self.worker.next_id()) {
            Ok(worker) => {
                self.worker = worker;
                self.notify(
                    true,
                    format!(
                        "the worker thread stopped unexpectedly; {failed} unfinished job(s) failed; a new worker was started"
                    ),
                );
            }
            Err(e) => self.notify(
                true,
                format!("the worker thread stopped and a new one cannot start: {e}"),
            ),
        }
    }
}
