//! Jobs as the queue panel shows them: each [`JobView`] follows its job's events in order
//! ([`JobView::apply`]), and [`worker_died`] fails what a dead worker can no longer finish.
//! Plain data, unit-tested without egui.

use std::time::Instant;

use crate::engine::compare::Comparison;
use crate::engine::images::StepProgress;
use crate::engine::worker::JobId;
use crate::engine::{Event, Progress, SavedFile};

/// A job as the queue panel shows it.
#[derive(Debug)]
pub struct JobView {
    pub id: JobId,
    pub label: String,
    pub state: JobState,
    pub current_node: Option<String>,
    pub progress: Option<Progress>,
    /// The latest sampler step (with its preview), while a sampler runs.
    pub step: Option<StepProgress>,
    pub queued_at: Instant,
    pub started: Option<Instant>,
    pub seconds: Option<f64>,
    pub warnings: Vec<String>,
    pub outputs: Vec<SavedFile>,
    /// A comparison job's result, until the app takes it into its Compare view.
    pub comparison: Option<Box<Comparison>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed(String),
    Cancelled,
}

impl JobState {
    pub fn label(&self) -> &str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed(_) => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Whether the job may still change (and can be cancelled).
    pub fn is_active(&self) -> bool {
        matches!(self, JobState::Queued | JobState::Running)
    }
}

/// One line saying what a comparison found.
pub fn comparison_line(c: &Comparison) -> String {
    let name = super::file_name;
    let r = &c.report;
    let what = if r.identical() {
        "identical".to_owned()
    } else {
        let changed = r.changed_keys().count();
        format!(
            "{changed} of {} shared keys differ, {} only in the first, {} only in the second, {} shape mismatches",
            r.keys.len(),
            r.only_in_a.len(),
            r.only_in_b.len(),
            r.shape_mismatch.len()
        )
    };
    format!("compared {} with {}: {what}", name(&c.a), name(&c.b))
}

/// What the app does when a job changes, beyond updating its view.
#[derive(Clone, Debug, PartialEq)]
pub enum JobNews {
    /// The job started running node `node` (a prompt id).
    NodeStarted(String),
    /// The job ended; its view holds the final state.
    Ended,
}

impl JobView {
    pub fn new(id: JobId, label: String) -> JobView {
        JobView {
            id,
            label,
            state: JobState::Queued,
            current_node: None,
            progress: None,
            step: None,
            queued_at: Instant::now(),
            started: None,
            seconds: None,
            warnings: Vec::new(),
            outputs: Vec::new(),
            comparison: None,
        }
    }

    /// Follows one event of this job.
    pub fn apply(&mut self, event: Event) -> Option<JobNews> {
        match event {
            Event::Started { .. } => {
                self.state = JobState::Running;
                self.started = Some(Instant::now());
                None
            }
            Event::NodeStarted { node, class_type } => {
                self.current_node = Some(format!("#{node} {class_type}"));
                Some(JobNews::NodeStarted(node))
            }
            Event::NodeFinished { .. } => None,
            Event::Progress(p) => {
                self.progress = Some(p);
                None
            }
            Event::Step(s) => {
                self.step = Some(s);
                None
            }
            Event::Warning(w) => {
                self.warnings.push(w.to_string());
                None
            }
            Event::Finished { outputs, seconds } => {
                self.state = JobState::Done;
                self.seconds = Some(seconds);
                self.outputs = outputs;
                Some(JobNews::Ended)
            }
            Event::Failed(e) => {
                self.state = JobState::Failed(e.to_string());
                Some(JobNews::Ended)
            }
            Event::Cancelled => {
                self.state = JobState::Cancelled;
                Some(JobNews::Ended)
            }
            Event::Compared(c) => {
                self.state = JobState::Done;
                self.seconds = Some(c.seconds);
                self.comparison = Some(c);
                Some(JobNews::Ended)
            }
        }
    }

    /// Why an ended job produced nothing: its error, or that it was cancelled.
    pub fn failure(&self) -> Option<String> {
        match &self.state {
            JobState::Failed(msg) => Some(msg.clone()),
            JobState::Cancelled => Some("cancelled".into()),
            _ => None,
        }
    }

    /// The log line for an ended job.
    pub fn summary(&self) -> Vec<(bool, String)> {
        match &self.state {
            JobState::Failed(msg) => vec![(true, format!("job {} failed: {msg}", self.id))],
            JobState::Done if self.comparison.is_some() => self
                .comparison
                .iter()
                .map(|c| (false, comparison_line(c)))
                .collect(),
            JobState::Done => self
                .outputs
                .iter()
                .map(|o| {
                    let note = if o.cached {
                        " (unchanged: earlier file)"
                    } else {
                        ""
                    };
                    (false, format!("saved {}{note}", o.path.display()))
                })
                .collect(),
            _ => vec![(
                false,
                format!("job {} cancelled; nothing was written", self.id),
            )],
        }
    }
}

/// Marks every job that a dead worker left queued or running as failed, saying why. Returns
/// how many there were.
pub fn worker_died(jobs: &mut [JobView]) -> usize {
    let mut n = 0;
    for job in jobs.iter_mut().filter(|j| j.state.is_active()) {
        job.state = JobState::Failed(
            "the worker thread stopped unexpectedly; the job did not finish (a new worker was started: queue it again)"
                .into(),
        );
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{EngineError, Warning};

    #[test]
    fn a_job_follows_its_events_to_the_end() {
        let mut job = JobView::new(3, "merge.json".into());
        assert!(job.state.is_active());
        assert_eq!(
            job.apply(Event::Started {
                tensors_total: 2,
                bytes_total: 8,
                files: 1,
            }),
            None
        );
        assert_eq!(job.state, JobState::Running);
        assert_eq!(
            job.apply(Event::NodeStarted {
                node: "4".into(),
                class_type: "CheckpointSave".into(),
            }),
            Some(JobNews::NodeStarted("4".into()))
        );
        assert_eq!(job.current_node.as_deref(), Some("#4 CheckpointSave"));
        job.apply(Event::Warning(Warning {
            node: Some("4".into()),
            key: None,
            message: "careful".into(),
        }));
        assert_eq!(job.warnings, ["node #4: careful"]);
        let saved = SavedFile {
            node: "4".into(),
            path: "out/a_00001_.safetensors".into(),
            bytes: 8,
            cached: true,
        };
        assert_eq!(
            job.apply(Event::Finished {
                outputs: vec![saved],
                seconds: 1.5,
            }),
            Some(JobNews::Ended)
        );
        assert_eq!(job.state, JobState::Done);
        assert_eq!(
            job.summary(),
            [(
                false,
                "saved out/a_00001_.safetensors (unchanged: earlier file)".to_owned()
            )]
        );
    }

    #[test]
    fn failures_and_cancels_end_a_job_with_their_reason() {
        let mut job = JobView::new(1, "w".into());
        job.apply(Event::Failed(EngineError::Cancelled));
        assert_eq!(job.state, JobState::Failed("cancelled".into()));
        assert_eq!(
            job.summary(),
            [(true, "job 1 failed: cancelled".to_owned())]
        );
        let mut job = JobView::new(2, "w".into());
        assert_eq!(job.apply(Event::Cancelled), Some(JobNews::Ended));
        assert!(!job.state.is_active());
    }

    #[test]
    fn a_dead_worker_fails_only_the_unfinished_jobs() {
        let mut jobs = vec![
            JobView::new(1, "a".into()),
            JobView::new(2, "b".into()),
            JobView::new(3, "c".into()),
        ];
        jobs[0].apply(Event::Cancelled);
        jobs[1].apply(Event::Started {
            tensors_total: 0,
            bytes_total: 0,
            files: 0,
        });
        assert_eq!(worker_died(&mut jobs), 2);
        assert_eq!(jobs[0].state, JobState::Cancelled);
        assert!(
            matches!(&jobs[1].state, JobState::Failed(m) if m.contains("worker thread stopped"))
        );
        assert!(matches!(&jobs[2].state, JobState::Failed(_)));
    }
}
