//! The inside of a subgraph instance, shown in place of the workflow's canvas with a path back
//! ("Workflow ▸ Text to Image ▸ …"), as ComfyUI shows it when a subgraph is opened.
//!
//! It is a view: moving or wiring nodes inside is not kept (the canvas is rebuilt from the
//! definition after any such edit), because a definition is shared by every instance of it
//! and Amalgam edits subgraphs only through the values an instance promotes. Nested instances
//! open further in.

use crate::graph::subgraph::inside;
use crate::graph::{Document, NodeId};
use crate::ui::canvas::{Canvas, CanvasEdit};

use super::AmalgamApp;

/// An opened subgraph.
pub struct SubgraphView {
    /// Instance ids from the root down to the one shown.
    pub path: Vec<NodeId>,
    /// The definitions' names along the path.
    pub names: Vec<String>,
    pub canvas: Canvas,
}

impl SubgraphView {
    /// The view of the instance at `path`, if it leads to one.
    fn open(doc: &Document, path: Vec<NodeId>, models: &Canvas) -> Option<SubgraphView> {
        let (graph, names) = inside(doc, &path)?;
        let mut canvas = Canvas::default();
        canvas.state.models = models.state.models.clone();
        canvas.rebuild(&graph);
        canvas.request_fit();
        Some(SubgraphView {
            path,
            names,
            canvas,
        })
    }

    /// Rebuilds from the document; false when the instance is gone.
    fn refresh(&mut self, doc: &Document) -> bool {
        match inside(doc, &self.path) {
            Some((graph, names)) => {
                self.names = names;
                self.canvas.rebuild(&graph);
                true
            }
            None => false,
        }
    }
}

impl AmalgamApp {
    /// Opens instance `node`: of the workflow, or inside the subgraph already shown.
    pub(super) fn open_subgraph(&mut self, node: NodeId) {
        let mut path = self
            .inside
            .as_ref()
            .map(|v| v.path.clone())
            .unwrap_or_default();
        path.push(node);
        match SubgraphView::open(&self.document.doc, path, &self.canvas) {
            Some(view) => self.inside = Some(view),
            None => self.notify(true, format!("node #{node} is not a subgraph")),
        }
    }

    /// After the document changed: the view follows, or closes if its instance is gone.
    pub(super) fn refresh_inside(&mut self) {
        if let Some(view) = &mut self.inside
            && !view.refresh(&self.document.doc)
        {
            self.inside = None;
        }
    }

    /// The path bar and the inner canvas.
    pub(super) fn inside_ui(&mut self, ui: &mut egui::Ui) {
        let Some(view) = &mut self.inside else {
            return;
        };
        let mut go_to: Option<usize> = None;
        ui.horizontal(|ui| {
            if ui.button("◀ Workflow").clicked() {
                go_to = Some(0);
            }
            let last = view.names.len();
            for (i, name) in view.names.iter().enumerate() {
                ui.label("▸");
                if i + 1 == last {
                    ui.strong(name);
                } else if ui.link(name).clicked() {
                    go_to = Some(i + 1);
                }
            }
            ui.separator();
            ui.weak("inside a subgraph: change its values on the instance");
        });
        let rect = ui.available_rect_before_wrap();
        let edits = ui
            .allocate_new_ui(egui::UiBuilder::new().max_rect(rect), |ui| {
                view.canvas.show(ui)
            })
            .inner;
        let mut open = None;
        let mut changed = false;
        for edit in edits {
            match edit {
                CanvasEdit::OpenSubgraph(node) => open = Some(node),
                // Moves and wires inside a shared definition are not kept (module docs).
                CanvasEdit::Document(crate::graph::Edit::Move { .. }) => {}
                _ => changed = true,
            }
        }
        if changed && !view.refresh(&self.document.doc) {
            self.inside = None;
        }
        match go_to {
            Some(0) => self.inside = None,
            Some(depth) => {
                let path = view_path(self.inside.as_ref(), depth);
                self.inside = SubgraphView::open(&self.document.doc, path, &self.canvas);
            }
            None => {}
        }
        if let Some(node) = open {
            self.open_subgraph(node);
        }
    }
}

fn view_path(view: Option<&SubgraphView>, depth: usize) -> Vec<NodeId> {
    view.map(|v| v.path[..depth.min(v.path.len())].to_vec())
        .unwrap_or_default()
}
