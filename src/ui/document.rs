//! The open document with its file path and undo history. Plain data, unit-tested without egui:
//! the canvas and menus only say what to change, this decides what an undo step is.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::graph::{Document, Edit, Mode, NodeId};

/// Undo steps kept.
const UNDO_DEPTH: usize = 200;
/// Repeats of one kind of edit within this time share an undo step (a slider drag, a node drag).
const MERGE_WINDOW: Duration = Duration::from_secs(1);

/// The document being edited.
pub struct DocumentState {
    pub doc: Document,
    /// The workflow file it was opened from or saved to.
    pub path: Option<PathBuf>,
    undo: Vec<Document>,
    redo: Vec<Document>,
    last_edit: Option<(String, Instant)>,
}

impl DocumentState {
    pub fn new(doc: Document, path: Option<PathBuf>) -> DocumentState {
        DocumentState {
            doc,
            path,
            undo: Vec::new(),
            redo: Vec::new(),
            last_edit: None,
        }
    }

    /// Records the document before an edit of kind `key`, unless the previous edit was of the
    /// same kind less than a second ago (then both are one undo step).
    pub fn before_edit(&mut self, key: &str) {
        self.before_edit_at(key, Instant::now());
    }

    fn before_edit_at(&mut self, key: &str, now: Instant) {
        if let Some((k, at)) = &self.last_edit
            && k == key
            && now.duration_since(*at) < MERGE_WINDOW
        {
            self.last_edit = Some((key.to_owned(), now));
            return;
        }
        self.undo.push(self.doc.clone());
        if self.undo.len() > UNDO_DEPTH {
            self.undo.remove(0);
        }
        self.redo.clear();
        self.last_edit = Some((key.to_owned(), now));
    }

    /// Records the document before a change that is always its own undo step.
    pub fn before_change(&mut self, key: &str) {
        self.before_edit(key);
        self.last_edit = None;
    }

    /// Replaces the whole document (open, drop, new, example); the old one goes to undo.
    pub fn replace(&mut self, doc: Document, path: Option<PathBuf>) {
        self.before_change("replace");
        self.doc = doc;
        self.path = path;
    }

    /// Applies an edit as one undo step (merged with a run of the same edit). Returns false when
    /// it no longer applies.
    pub fn apply(&mut self, edit: &Edit) -> bool {
        let key = match edit {
            Edit::Move { node, .. } => format!("move {node}"),
            Edit::Widget { node, index, .. } => format!("widget {node} {index}"),
            other => format!("{other:?}"),
        };
        self.before_edit(&key);
        self.doc.apply(edit)
    }

    /// Sets the mode of `nodes` (back to "always" when all already have it), as one step.
    pub fn toggle_mode(&mut self, nodes: &[NodeId], mode: Mode) {
        if nodes.is_empty() {
            return;
        }
        self.before_change("mode");
        let all = nodes
            .iter()
            .all(|id| self.doc.node(*id).is_some_and(|n| n.mode == mode));
        for id in nodes {
            if let Some(n) = self.doc.node_mut(*id) {
                n.mode = if all { Mode::Always } else { mode };
            }
        }
    }

    /// Deletes `nodes` and their links, as one step.
    pub fn delete(&mut self, nodes: &[NodeId]) {
        if nodes.is_empty() {
            return;
        }
        self.before_change("delete");
        for id in nodes {
            self.doc.apply(&Edit::Delete(*id));
        }
    }

    pub fn can_undo(&self) -> bool {
        !self.undo.is_empty()
    }

    pub fn can_redo(&self) -> bool {
        !self.redo.is_empty()
    }

    /// Goes back one step. Returns whether there was one.
    pub fn undo(&mut self) -> bool {
        self.last_edit = None;
        step(&mut self.undo, &mut self.redo, &mut self.doc)
    }

    /// Goes forward one undone step. Returns whether there was one.
    pub fn redo(&mut self) -> bool {
        self.last_edit = None;
        step(&mut self.redo, &mut self.undo, &mut self.doc)
    }
}

/// Moves the document one step along a history: the top of `from` becomes the document, and
/// the document goes onto `to`.
fn step(from: &mut Vec<Document>, to: &mut Vec<Document>, doc: &mut Document) -> bool {
    let Some(next) = from.pop() else {
        return false;
    };
    to.push(std::mem::replace(doc, next));
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::examples::default_merge;

    fn state() -> DocumentState {
        DocumentState::new(default_merge("a.safetensors", "b.safetensors"), None)
    }

    fn ratio(s: &DocumentState) -> serde_json::Value {
        let merge = s
            .doc
            .nodes
            .iter()
            .find(|n| n.type_ == "ModelMergeSimple")
            .expect("merge node");
        merge.widget_values()[0].clone()
    }

    fn merge_id(s: &DocumentState) -> NodeId {
        s.doc
            .nodes
            .iter()
            .find(|n| n.type_ == "ModelMergeSimple")
            .map(|n| n.id)
            .expect("merge node")
    }

    #[test]
    fn a_drag_of_one_widget_is_one_undo_step() {
        let mut s = state();
        let node = merge_id(&s);
        let start = Instant::now();
        for (i, v) in [0.1, 0.2, 0.3].into_iter().enumerate() {
            let at = start + Duration::from_millis(100 * i as u64);
            s.before_edit_at(&format!("widget {node} 0"), at);
            s.doc.apply(&Edit::Widget {
                node,
                index: 0,
                value: serde_json::json!(v),
            });
        }
        assert_eq!(ratio(&s), serde_json::json!(0.3));
        assert!(s.undo());
        assert_eq!(
            ratio(&s),
            serde_json::json!(0.5),
            "one step back is the start"
        );
        assert!(!s.undo());
        assert!(s.redo());
        assert_eq!(ratio(&s), serde_json::json!(0.3));
    }

    #[test]
    fn edits_a_second_apart_or_of_another_kind_are_separate_steps() {
        let mut s = state();
        let node = merge_id(&s);
        let start = Instant::now();
        s.before_edit_at("widget", start);
        s.before_edit_at("widget", start + Duration::from_secs(2));
        s.before_edit_at("move", start + Duration::from_secs(2));
        assert_eq!(s.undo.len(), 3);
        // A new edit after an undo drops the redo history.
        assert!(s.undo());
        assert!(s.can_redo());
        s.apply(&Edit::Move {
            node,
            pos: [1.0, 1.0],
        });
        assert!(!s.can_redo());
    }

    #[test]
    fn mode_toggles_back_and_delete_is_undoable() {
        let mut s = state();
        let ids: Vec<NodeId> = s.doc.nodes.iter().map(|n| n.id).collect();
        s.toggle_mode(&ids, Mode::Never);
        assert!(s.doc.nodes.iter().all(|n| n.mode == Mode::Never));
        s.toggle_mode(&ids, Mode::Never);
        assert!(s.doc.nodes.iter().all(|n| n.mode == Mode::Always));
        let links = s.doc.links.len();
        s.delete(&ids[..1]);
        assert!(s.doc.links.len() < links);
        assert!(s.undo());
        assert_eq!(s.doc.links.len(), links);
        s.replace(crate::graph::Document::new(), Some("w.json".into()));
        assert!(s.doc.nodes.is_empty());
        assert!(s.undo());
        assert_eq!(s.doc.nodes.len(), ids.len());
    }
}
