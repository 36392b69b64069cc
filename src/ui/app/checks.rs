//! What the app works out about the graph besides running it: comparisons of two checkpoints
//! (from two selected Load Checkpoint nodes or two picked outputs), and the header-only preview
//! of what each node will do, asked of the file thread after each edit.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::engine::Precision;
use crate::engine::compare::CompareJob;
use crate::engine::worker::JobId;
use crate::graph::{Document, NodeId};

use super::super::files::Request;
use super::super::jobs::JobView;
use super::{AmalgamApp, SideTab};

/// The header-only preview of what nodes will do: one request in flight at most, asked again
/// when the document (or the precision) differs from the one last asked about.
#[derive(Default)]
pub(super) struct Preview {
    pub(super) asked: Option<(Document, Precision)>,
    pub(super) in_flight: bool,
    pub(super) last: Option<Instant>,
}

/// At most this often, the header-only preview of an edited graph is asked for again.
const PREVIEW_EVERY: Duration = Duration::from_millis(300);

impl AmalgamApp {
    /// Queues a comparison of two checkpoint files.
    pub fn compare_files(&mut self, a: PathBuf, b: PathBuf) -> JobId {
        let name = super::super::file_name;
        let label = format!("compare {} ↔ {}", name(&a), name(&b));
        let id = self.worker.submit_compare(CompareJob { a, b });
        self.jobs.push(JobView::new(id, label));
        self.side_tab = SideTab::Queue;
        id
    }

    /// The Load Checkpoint nodes among the selection (exactly two), as files.
    pub(super) fn selected_checkpoint_nodes(&self) -> Vec<&crate::graph::document::Node> {
        let selected = self.canvas.selected();
        self.document
            .doc
            .nodes
            .iter()
            .filter(|n| selected.contains(&n.id) && n.type_ == "CheckpointLoaderSimple")
            .collect()
    }

    /// The checkpoint names of the two selected Load Checkpoint nodes (with their node ids), or
    /// why they cannot be compared. No file is touched: this runs every frame.
    pub(super) fn selected_checkpoints(&self) -> Result<[(NodeId, String); 2], String> {
        let nodes = self.selected_checkpoint_nodes();
        let [a, b] = nodes.as_slice() else {
            return Err(format!(
                "select exactly two Load Checkpoint nodes to compare ({} selected)",
                nodes.len()
            ));
        };
        let name = |n: &crate::graph::document::Node| {
            n.widgets_values
                .as_ref()
                .and_then(|v| v.get(0))
                .and_then(serde_json::Value::as_str)
                .map(|name| (n.id, name.to_owned()))
                .ok_or_else(|| format!("node #{}: no checkpoint chosen", n.id))
        };
        Ok([name(a)?, name(b)?])
    }

    /// Compares the checkpoints two Load Checkpoint nodes name, once their files are found.
    pub(super) fn compare_checkpoints(&mut self, [a, b]: [(NodeId, String); 2]) {
        let file = |(node, name): &(NodeId, String)| {
            self.folders.resolve("checkpoints", name).ok_or_else(|| {
                format!("node #{node}: checkpoint {name:?} not found in the models folders")
            })
        };
        match (file(&a), file(&b)) {
            (Ok(a), Ok(b)) => {
                self.compare_files(a, b);
            }
            (Err(why), _) | (_, Err(why)) => self.notify(true, why),
        }
    }

    /// Asks the file thread for the preview of the document when it changed since the last ask
    /// (at most every [`PREVIEW_EVERY`], one request in flight).
    pub(super) fn ask_preview(&mut self, now: Instant) {
        let changed = self.preview.asked.as_ref().is_none_or(|(doc, precision)| {
            *doc != self.document.doc || *precision != self.settings.precision
        });
        let rested = self
            .preview
            .last
            .is_none_or(|t| now.duration_since(t) >= PREVIEW_EVERY);
        if changed && rested && !self.preview.in_flight {
            self.files.send(Request::Preview {
                doc: Box::new(self.document.doc.clone()),
                folders: self.folders.clone(),
                precision: self.settings.precision,
            });
            self.preview.asked = Some((self.document.doc.clone(), self.settings.precision));
            self.preview.in_flight = true;
            self.preview.last = Some(now);
        }
    }
}
