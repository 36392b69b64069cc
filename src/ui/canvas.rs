//! The node canvas: egui_node_graph2 driven by thin adapter types over the node registry and the
//! workflow document.
//!
//! The [`Document`] stays the source of truth: the editor state is rebuilt from it whenever it
//! changes as a whole (load, undo, mute), and every edit made on the canvas — connect,
//! disconnect, delete, move, widget value, new node — is applied back to the document as an
//! [`Edit`], which is what gets saved, undone and executed.
//!
//! egui_node_graph2 zooms by rescaling stored node positions about the canvas centre. The canvas
//! tracks that affine map (`screen-space position = zoom · document position + shift`) so
//! document positions only ever change when the user moves a node, never when they zoom.

mod instance;
pub mod results;
mod widgets;

use std::borrow::Cow;
use std::collections::HashMap;

use egui::{Color32, Pos2, Vec2};
use egui_node_graph2 as eng;
use serde_json::{Value, json};

use crate::graph::document::Mode;
use crate::graph::edit::{Given, node_from_schema};
use crate::graph::subgraph::Definitions;
use crate::graph::{Document, Edit, NodeId};
use crate::nodes::{Choices, InputKind, NodeSchema, Operation, Registry};

/// A link type; `*` (reroutes) connects to anything.
#[derive(Clone, Debug, Eq, serde::Serialize, serde::Deserialize)]
pub struct SlotType(pub String);

impl PartialEq for SlotType {
    // egui_node_graph2 decides which ports may connect with `==`; ComfyUI's `*` matches all types.
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0 || self.0 == "*" || other.0 == "*"
    }
}

/// ComfyUI's slot colours.
pub fn type_color(t: &str) -> Color32 {
    match t {
        "MODEL" => Color32::from_rgb(0xb3, 0x9d, 0xdb),
        "CLIP" => Color32::from_rgb(0xff, 0xd5, 0x00),
        "VAE" => Color32::from_rgb(0xff, 0x6e, 0x6e),
        "LATENT" => Color32::from_rgb(0xff, 0x9c, 0xf9),
        "IMAGE" => Color32::from_rgb(0x64, 0xb5, 0xf6),
        "CONDITIONING" => Color32::from_rgb(0xff, 0xa9, 0x31),
        "MASK" => Color32::from_rgb(0x81, 0xc7, 0x84),
        "CLIP_VISION" => Color32::from_rgb(0xa8, 0xda, 0xdc),
        "FLOAT" | "INT" => Color32::from_rgb(0xaa, 0xee, 0x88),
        _ => Color32::from_gray(0xa0),
    }
}

/// What the canvas needs to draw nodes: model lists for combos, per-node state.
#[derive(Default)]
pub struct CanvasState {
    /// Files per model folder kind, for COMBO widgets.
    pub models: HashMap<&'static str, Vec<String>>,
    /// Validation errors per document node.
    pub errors: HashMap<NodeId, Vec<String>>,
    /// What a node will do with its inputs, from headers, before Queue (a merge's ignored keys,
    /// unmerged shapes, converted dtypes).
    pub notes: HashMap<NodeId, Vec<String>>,
    /// The node the running job is at.
    pub running: Option<NodeId>,
    /// The workflow's groups, drawn behind the nodes (shown, not edited).
    pub groups: Vec<GroupView>,
    /// Images and live previews on nodes, and what nodes asked of the app.
    pub results: results::NodeResults,
}

/// A ComfyUI group box in document coordinates.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupView {
    pub title: String,
    /// x, y, width, height.
    pub bounding: [f32; 4],
    pub color: Color32,
    pub font_size: f32,
}

impl GroupView {
    /// The groups of a document (malformed entries are skipped).
    pub fn from_document(doc: &Document) -> Vec<GroupView> {
        let Some(groups) = doc.fields.get("groups").and_then(Value::as_array) else {
            return Vec::new();
        };
        groups
            .iter()
            .filter_map(|g| {
                let b = g.get("bounding")?.as_array()?;
                let n = |i: usize| {
                    b.get(i)
                        .and_then(Value::as_f64)
                        .filter(|v| v.is_finite())
                        .map(|v| v as f32)
                };
                let color = g
                    .get("color")
                    .and_then(Value::as_str)
                    .and_then(|c| Color32::from_hex(c).ok())
                    .unwrap_or(Color32::from_rgb(0x33, 0x55, 0x77));
                Some(GroupView {
                    title: g
                        .get("title")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    bounding: [n(0)?, n(1)?, n(2)?.max(0.0), n(3)?.max(0.0)],
                    color,
                    font_size: g
                        .get("font_size")
                        .and_then(Value::as_f64)
                        .map_or(24.0, |f| f as f32)
                        .clamp(6.0, 96.0),
                })
            })
            .collect()
    }
}

/// An editable widget value, bound to its document node and `widgets_values` position.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct WidgetValue {
    pub node: NodeId,
    pub index: usize,
    pub value: Value,
    #[serde(skip)]
    pub kind: Option<InputKind>,
}

/// Node data: which document node this editor node shows.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CanvasNode {
    pub doc_id: NodeId,
    pub class_type: String,
    pub known: bool,
    pub mode: i64,
    /// Unknown nodes: their values, shown read-only.
    pub values: Vec<String>,
    /// A subgraph instance: how many nodes its definition holds.
    #[serde(default)]
    pub subgraph: Option<usize>,
}

/// Edits the canvas asks of the document.
#[derive(Clone, Debug, PartialEq)]
pub enum CanvasResponse {
    SetWidget {
        node: NodeId,
        index: usize,
        value: Value,
    },
    /// Show the inside of a subgraph instance.
    OpenSubgraph(NodeId),
}

impl eng::UserResponseTrait for CanvasResponse {}

/// A registry node type, as offered by the node finder.
#[derive(Clone, Copy, Debug)]
pub struct Template(pub &'static NodeSchema);

/// All node types for the finder.
pub struct AllTemplates;

impl eng::NodeTemplateIter for AllTemplates {
    type Item = Template;
    fn all_kinds(&self) -> Vec<Template> {
        Registry::builtin().all().map(Template).collect()
    }
}

pub type EditorState =
    eng::GraphEditorState<CanvasNode, SlotType, WidgetValue, Template, CanvasState>;
type Graph = eng::Graph<CanvasNode, SlotType, WidgetValue>;

impl eng::DataTypeTrait<CanvasState> for SlotType {
    fn data_type_color(&self, _: &mut CanvasState) -> Color32 {
        type_color(&self.0)
    }
    fn name(&self) -> Cow<'_, str> {
        Cow::Borrowed(&self.0)
    }
}

impl eng::NodeTemplateTrait for Template {
    type NodeData = CanvasNode;
    type DataType = SlotType;
    type ValueType = WidgetValue;
    type UserState = CanvasState;
    type CategoryType = &'static str;

    fn node_finder_label(&self, _: &mut CanvasState) -> Cow<'_, str> {
        Cow::Borrowed(self.0.display_name)
    }
    fn node_finder_categories(&self, _: &mut CanvasState) -> Vec<&'static str> {
        vec![self.0.category]
    }
    fn node_graph_label(&self, _: &mut CanvasState) -> String {
        self.0.display_name.to_owned()
    }
    fn user_data(&self, _: &mut CanvasState) -> CanvasNode {
        // The document id is assigned when the canvas applies the CreatedNode response.
        CanvasNode {
            doc_id: 0,
            class_type: self.0.class_type.to_owned(),
            known: true,
            mode: 0,
            values: Vec::new(),
            subgraph: None,
        }
    }
    fn build_node(&self, graph: &mut Graph, _: &mut CanvasState, node_id: eng::NodeId) {
        let node = node_from_schema(self.0, 0, [0.0, 0.0], |_| Given::Default);
        add_params(graph, node_id, &node, Some(self.0));
    }
}

impl eng::NodeDataTrait for CanvasNode {
    type Response = CanvasResponse;
    type UserState = CanvasState;
    type DataType = SlotType;
    type ValueType = WidgetValue;

    fn bottom_ui(
        &self,
        ui: &mut egui::Ui,
        node_id: eng::NodeId,
        graph: &Graph,
        state: &mut CanvasState,
    ) -> Vec<eng::NodeResponse<CanvasResponse, CanvasNode>> {
        let mut responses = Vec::new();
        if let Some(inner) = self.subgraph {
            ui.horizontal(|ui| {
                ui.colored_label(Color32::GRAY, format!("subgraph · {inner} nodes"));
                if ui
                    .small_button("Open ▸")
                    .on_hover_text("Show the nodes inside this subgraph")
                    .clicked()
                {
                    responses.push(eng::NodeResponse::User(CanvasResponse::OpenSubgraph(
                        self.doc_id,
                    )));
                }
            });
        }
        if !self.known {
            ui.colored_label(Color32::GRAY, "kept, not run");
            for v in &self.values {
                ui.colored_label(Color32::GRAY, v);
            }
        }
        match Mode::from_i64(self.mode) {
            Mode::Never => {
                ui.colored_label(Color32::GRAY, "muted");
            }
            Mode::Bypass => {
                ui.colored_label(Color32::from_rgb(0xd0, 0x9c, 0xff), "bypassed");
            }
            _ => {}
        }
        // Which side a ratio favours: ComfyUI's ratio 1.0 keeps the first input.
        if let Some(ratio) = graph[node_id]
            .inputs
            .iter()
            .find(|(n, _)| n == "ratio")
            .and_then(|(_, id)| graph[*id].value.value.as_f64())
        {
            let (a, b) = if self.class_type.starts_with("CLIP") {
                ("clip1", "clip2")
            } else {
                ("model1", "model2")
            };
            ui.label(format!("{a} ◀ {ratio:.2} ▶ {b}"));
            let (rect, _) = ui.allocate_exact_size(Vec2::new(150.0, 6.0), egui::Sense::hover());
            ui.painter().rect_filled(rect, 2.0, Color32::from_gray(60));
            let mut left = rect;
            left.set_width(rect.width() * ratio.clamp(0.0, 1.0) as f32);
            ui.painter().rect_filled(
                left,
                2.0,
                type_color(if a == "clip1" { "CLIP" } else { "MODEL" }),
            );
        }
        if let Some(errors) = state.errors.get(&self.doc_id) {
            for e in errors {
                ui.colored_label(Color32::from_rgb(0xff, 0x80, 0x80), e);
            }
        }
        state.results.show(ui, self.doc_id);
        if let Some(notes) = state.notes.get(&self.doc_id) {
            for n in notes {
                ui.add(
                    egui::Label::new(
                        egui::RichText::new(n)
                            .small()
                            .color(Color32::from_rgb(0xe6, 0xc0, 0x60)),
                    )
                    .wrap(),
                );
            }
        }
        responses
    }

    fn titlebar_color(
        &self,
        _: &egui::Ui,
        _: eng::NodeId,
        _: &Graph,
        state: &mut CanvasState,
    ) -> Option<Color32> {
        if state.errors.contains_key(&self.doc_id) {
            return Some(Color32::from_rgb(0x8b, 0x1e, 0x1e));
        }
        if state.running == Some(self.doc_id) {
            return Some(Color32::from_rgb(0x2e, 0x7d, 0x32));
        }
        match Mode::from_i64(self.mode) {
            Mode::Never => Some(Color32::from_gray(0x30)),
            Mode::Bypass => Some(Color32::from_rgb(0x6a, 0x2c, 0x91)),
            _ if !self.known => Some(Color32::from_gray(0x50)),
            _ => None,
        }
    }
}

/// Adds the editor parameters of a document node: link inputs as ports, widgets inline (a
/// widget converted to an input in the document gets a port too), outputs as ports.
fn add_params(
    graph: &mut Graph,
    id: eng::NodeId,
    node: &crate::graph::Node,
    schema: Option<&NodeSchema>,
) {
    let doc_id = node.id;
    match schema {
        Some(schema) if !schema.is_virtual() || schema.class_type == "Reroute" => {
            let values = node.widget_values();
            let slots = schema.widget_slots();
            for spec in &schema.inputs {
                if spec.kind.is_widget() {
                    let (pos, _) = slots
                        .iter()
                        .find(|(_, s)| s.name == spec.name)
                        .copied()
                        .unwrap_or((0, spec));
                    let value = values
                        .get(pos)
                        .cloned()
                        .or_else(|| spec.kind.default_value())
                        .unwrap_or(Value::Null);
                    let converted = node
                        .inputs
                        .iter()
                        .any(|i| i.widget_name() == Some(&spec.name));
                    let kind = if converted {
                        eng::InputParamKind::ConnectionOrConstant
                    } else {
                        eng::InputParamKind::ConstantOnly
                    };
                    graph.add_input_param(
                        id,
                        spec.name.clone(),
                        SlotType(spec.kind.type_name().to_owned()),
                        WidgetValue {
                            node: doc_id,
                            index: pos,
                            value,
                            kind: Some(spec.kind.clone()),
                        },
                        kind,
                        true,
                    );
                    if matches!(
                        spec.kind,
                        InputKind::Int {
                            control_after_generate: true,
                            ..
                        }
                    ) {
                        // The companion widget ComfyUI adds after a seed (applied after Queue).
                        let control = values.get(pos + 1).cloned().unwrap_or(json!("fixed"));
                        graph.add_input_param(
                            id,
                            "control_after_generate".to_owned(),
                            SlotType("COMBO".to_owned()),
                            WidgetValue {
                                node: doc_id,
                                index: pos + 1,
                                value: control,
                                kind: Some(InputKind::Combo(Choices::Fixed(vec![
                                    "fixed",
                                    "increment",
                                    "decrement",
                                    "randomize",
                                ]))),
                            },
                            eng::InputParamKind::ConstantOnly,
                            true,
                        );
                    }
                } else {
                    let type_name = node
                        .inputs
                        .iter()
                        .find(|i| i.name == spec.name)
                        .map_or(spec.kind.type_name(), |i| i.type_name())
                        .to_owned();
                    graph.add_input_param(
                        id,
                        spec.name.clone(),
                        SlotType(type_name),
                        WidgetValue::default(),
                        eng::InputParamKind::ConnectionOnly,
                        true,
                    );
                }
            }
        }
        _ => {
            // Unknown (and frontend-only) nodes: every document input is a port.
            for i in &node.inputs {
                graph.add_input_param(
                    id,
                    i.name.clone(),
                    SlotType(i.type_name().to_owned()),
                    WidgetValue::default(),
                    eng::InputParamKind::ConnectionOnly,
                    true,
                );
            }
        }
    }
    for o in &node.outputs {
        graph.add_output_param(id, o.name.clone(), SlotType(o.type_name().to_owned()));
    }
    if schema.is_some_and(|s| s.class_type == "Reroute") && node.outputs.is_empty() {
        graph.add_output_param(id, String::new(), SlotType("*".into()));
    }
}

/// Maps editor ids to document ids and tracks the zoom transform.
pub struct Canvas {
    pub editor: EditorState,
    pub state: CanvasState,
    to_doc: HashMap<eng::NodeId, NodeId>,
    to_editor: HashMap<NodeId, eng::NodeId>,
    /// Editor position = zoom · document position + shift.
    shift: Vec2,
    last_zoom: f32,
    /// Fit the whole graph into view on the next frame (after a workflow is opened).
    fit_pending: bool,
}

impl Default for Canvas {
    fn default() -> Self {
        let mut editor = EditorState::new(1.0);
        // Leave a margin so the first nodes do not touch the panel edges.
        editor.pan_zoom.pan = Vec2::new(40.0, 40.0);
        Canvas {
            editor,
            state: CanvasState::default(),
            to_doc: HashMap::new(),
            to_editor: HashMap::new(),
            shift: Vec2::ZERO,
            last_zoom: 1.0,
            fit_pending: false,
        }
    }
}

/// What the user did on the canvas: an edit of the document, or a node created from the node
/// finder (which the app adds to the document and binds to its editor node).
#[derive(Clone, Debug, PartialEq)]
pub enum CanvasEdit {
    Document(Edit),
    /// Show the inside of this subgraph instance (the app keeps the view).
    OpenSubgraph(NodeId),
    Create {
        class_type: &'static str,
        editor_id: eng::NodeId,
        pos: [f64; 2],
    },
}

impl Canvas {
    /// Rebuilds the editor from the document, keeping the view (pan, zoom) and the selection.
    pub fn rebuild(&mut self, doc: &Document) {
        let selected: Vec<NodeId> = self
            .editor
            .selected_nodes
            .iter()
            .filter_map(|e| self.to_doc.get(e).copied())
            .collect();
        let pan_zoom = self.editor.pan_zoom.clone();
        self.editor = EditorState::default();
        self.editor.pan_zoom = pan_zoom;
        self.to_doc.clear();
        self.to_editor.clear();
        let registry = Registry::builtin();
        let defs = Definitions::of(doc);
        for node in &doc.nodes {
            if let Some(def) = defs.of_node(node) {
                let promoted = defs.promoted_widgets(node, registry);
                let data = CanvasNode {
                    doc_id: node.id,
                    class_type: node.type_.clone(),
                    known: true,
                    mode: node.mode.as_i64(),
                    values: Vec::new(),
                    subgraph: Some(def.graph.nodes.len()),
                };
                let label = node.title.clone().unwrap_or_else(|| def.name.clone());
                let id = self.editor.graph.add_node(label, data, |g, id| {
                    instance::add_instance_params(g, id, node, def, &promoted);
                });
                self.place(id, node);
                continue;
            }
            let schema = registry.get(&node.type_);
            let known = schema
                .is_some_and(|s| s.operation != Operation::Virtual || s.class_type == "Reroute");
            let values = if known {
                Vec::new()
            } else {
                node.widget_values()
                    .iter()
                    .map(crate::format::pyjson::py_str)
                    .collect()
            };
            let data = CanvasNode {
                doc_id: node.id,
                class_type: node.type_.clone(),
                known,
                mode: node.mode.as_i64(),
                values,
                subgraph: None,
            };
            let label = node.title.clone().unwrap_or_else(|| {
                schema.map_or(node.type_.clone(), |s| s.display_name.to_owned())
            });
            let id = self
                .editor
                .graph
                .add_node(label, data, |g, id| add_params(g, id, node, schema));
            self.place(id, node);
        }
        for link in &doc.links {
            let (Some(&o), Some(&t)) = (
                self.to_editor.get(&link.origin_id),
                self.to_editor.get(&link.target_id),
            ) else {
                continue;
            };
            let Some(input_name) = doc
                .node(link.target_id)
                .and_then(|n| n.inputs.get(link.target_slot))
                .map(|i| i.widget_name().unwrap_or(&i.name).to_owned())
            else {
                continue;
            };
            let (Some(out), Some(inp)) = (
                self.editor.graph[o]
                    .outputs
                    .get(link.origin_slot)
                    .map(|(_, id)| *id),
                self.editor.graph[t]
                    .inputs
                    .iter()
                    .find(|(n, _)| *n == input_name)
                    .map(|(_, id)| *id),
            ) else {
                continue;
            };
            self.editor.graph.add_connection(out, inp, 0);
        }
        self.editor.selected_nodes = selected
            .iter()
            .filter_map(|d| self.to_editor.get(d).copied())
            .collect();
        self.last_zoom = self.editor.pan_zoom.zoom;
        self.state.groups = GroupView::from_document(doc);
    }

    /// Puts a new editor node where its document node is, and binds the two.
    fn place(&mut self, id: eng::NodeId, node: &crate::graph::Node) {
        let [x, y] = node.pos.get().unwrap_or([0.0, 0.0]);
        let p = Pos2::new(x as f32, y as f32).to_vec2() * self.editor.pan_zoom.zoom + self.shift;
        self.editor.node_positions.insert(id, p.to_pos2());
        self.editor.node_order.push(id);
        self.to_doc.insert(id, node.id);
        self.to_editor.insert(node.id, id);
    }

    /// Document position of an editor position.
    fn to_doc_pos(&self, p: Pos2) -> [f64; 2] {
        let z = self.editor.pan_zoom.zoom;
        let w = (p.to_vec2() - self.shift) / z;
        [f64::from(w.x.round()), f64::from(w.y.round())]
    }

    /// The document ids of the selected nodes.
    pub fn selected(&self) -> Vec<NodeId> {
        self.editor
            .selected_nodes
            .iter()
            .filter_map(|e| self.to_doc.get(e).copied())
            .collect()
    }

    /// Selects every node.
    pub fn select_all(&mut self) {
        self.editor.selected_nodes = self.editor.graph.iter_nodes().collect();
    }

    pub fn editor_id(&self, doc_id: NodeId) -> Option<eng::NodeId> {
        self.to_editor.get(&doc_id).copied()
    }

    /// Fits the whole graph into view on the next frame.
    pub fn request_fit(&mut self) {
        self.fit_pending = true;
    }

    /// Zooms (between 0.4 and 1) and pans so every node is visible, with a margin.
    fn fit_view(&mut self, ui: &egui::Ui) {
        let positions: Vec<Pos2> = self.editor.node_positions.values().copied().collect();
        if positions.is_empty() {
            return;
        }
        let z = self.editor.pan_zoom.zoom;
        // Node sizes are known only once drawn; estimate them from their parameter counts.
        let mut min = Pos2::new(f32::MAX, f32::MAX);
        let mut max = Pos2::new(f32::MIN, f32::MIN);
        for (id, p) in self.editor.node_positions.iter() {
            let params = self.editor.graph[id].inputs.len() + self.editor.graph[id].outputs.len();
            let size = Vec2::new(220.0, 50.0 + 20.0 * params as f32) * z;
            min = min.min(*p);
            max = max.max(*p + size);
        }
        // Group boxes count too (editor position = zoom · document position + shift).
        for g in &self.state.groups {
            let [x, y, w, h] = g.bounding;
            let p = (Vec2::new(x, y) * z + self.shift).to_pos2();
            min = min.min(p);
            max = max.max(p + Vec2::new(w, h) * z);
        }
        let avail = ui.available_rect_before_wrap().size() - Vec2::splat(80.0);
        let extent = (max - min).max(Vec2::splat(1.0));
        let want = (avail.x / extent.x * z)
            .min(avail.y / extent.y * z)
            .clamp(0.4, 1.0);
        if (want - z).abs() > 1e-3 {
            self.editor.zoom(ui, want / z);
            let dz = self.editor.pan_zoom.zoom / z;
            let centre = self.editor.pan_zoom.clip_rect.size() / 2.0 - self.editor.pan_zoom.pan;
            self.shift = (self.shift - centre) * dz + centre;
            self.last_zoom = self.editor.pan_zoom.zoom;
        }
        // The same bounds after any zoom, to place the top-left corner at the margin.
        let z = self.editor.pan_zoom.zoom;
        let mut min = self
            .editor
            .node_positions
            .values()
            .fold(Pos2::new(f32::MAX, f32::MAX), |m, p| m.min(*p));
        for g in &self.state.groups {
            min = min.min((Vec2::new(g.bounding[0], g.bounding[1]) * z + self.shift).to_pos2());
        }
        self.editor.pan_zoom.pan = Vec2::splat(40.0) - min.to_vec2();
    }

    /// Draws the canvas and returns the document edits it made.
    pub fn show(&mut self, ui: &mut egui::Ui) -> Vec<CanvasEdit> {
        if std::mem::take(&mut self.fit_pending) {
            self.fit_view(ui);
        }
        // Groups go behind the nodes; their shapes are filled in after the editor has drawn,
        // when this frame's zoom is known.
        let groups_slot = ui.painter().add(egui::Shape::Noop);
        let response = self
            .editor
            .draw_graph_editor(ui, AllTemplates, &mut self.state, Vec::new());
        if std::mem::take(&mut self.state.results.menu_opened) {
            // The right-click opened a widget's menu, not the node finder.
            self.editor.node_finder = None;
        }
        self.state.results.menu_ui(ui.ctx());
        // Follow the library's zoom: it rescales positions about the canvas centre.
        let zoom = self.editor.pan_zoom.zoom;
        if (zoom - self.last_zoom).abs() > f32::EPSILON {
            let dz = zoom / self.last_zoom;
            let centre = self.editor.pan_zoom.clip_rect.size() / 2.0 - self.editor.pan_zoom.pan;
            self.shift = (self.shift - centre) * dz + centre;
            self.last_zoom = zoom;
        }
        let shapes = self.group_shapes(ui, ui.max_rect());
        ui.painter().set(groups_slot, egui::Shape::Vec(shapes));
        let mut edits = Vec::new();
        let mut moved = Vec::new();
        for r in response.node_responses {
            match r {
                eng::NodeResponse::ConnectEventEnded { output, input, .. } => {
                    let out_node = self.editor.graph[output].node;
                    let in_node = self.editor.graph[input].node;
                    let slot = self.editor.graph[out_node]
                        .outputs
                        .iter()
                        .position(|(_, id)| *id == output);
                    let name = self.editor.graph[in_node]
                        .inputs
                        .iter()
                        .find(|(_, id)| *id == input)
                        .map(|(n, _)| n.clone());
                    if let (Some(&origin), Some(&target), Some(slot), Some(name)) = (
                        self.to_doc.get(&out_node),
                        self.to_doc.get(&in_node),
                        slot,
                        name,
                    ) {
                        edits.push(CanvasEdit::Document(Edit::Connect {
                            origin,
                            slot,
                            target,
                            input: name,
                        }));
                    }
                }
                eng::NodeResponse::DisconnectEvent { input, .. } => {
                    let in_node = self.editor.graph[input].node;
                    let name = self.editor.graph[in_node]
                        .inputs
                        .iter()
                        .find(|(_, id)| *id == input)
                        .map(|(n, _)| n.clone());
                    if let (Some(&target), Some(input)) = (self.to_doc.get(&in_node), name) {
                        edits.push(CanvasEdit::Document(Edit::Disconnect { target, input }));
                    }
                }
                eng::NodeResponse::DeleteNodeFull { node_id, .. } => {
                    if let Some(doc_id) = self.to_doc.remove(&node_id) {
                        self.to_editor.remove(&doc_id);
                        edits.push(CanvasEdit::Document(Edit::Delete(doc_id)));
                    }
                }
                eng::NodeResponse::MoveNode { node, .. } => {
                    moved.push(node);
                    if self.editor.selected_nodes.contains(&node) {
                        moved.extend(self.editor.selected_nodes.iter().copied());
                    }
                }
                eng::NodeResponse::CreatedNode(id) => {
                    let class = self.editor.graph[id].user_data.class_type.clone();
                    if let Some(schema) = Registry::builtin().get(&class) {
                        let pos = self.to_doc_pos(self.editor.node_positions[id]);
                        edits.push(CanvasEdit::Create {
                            class_type: schema.class_type,
                            editor_id: id,
                            pos,
                        });
                    }
                }
                eng::NodeResponse::User(CanvasResponse::SetWidget { node, index, value }) => {
                    edits.push(CanvasEdit::Document(Edit::Widget { node, index, value }));
                }
                eng::NodeResponse::User(CanvasResponse::OpenSubgraph(node)) => {
                    edits.push(CanvasEdit::OpenSubgraph(node));
                }
                _ => {}
            }
        }
        moved.sort_unstable();
        moved.dedup();
        for id in moved {
            if let (Some(&doc_id), Some(&p)) =
                (self.to_doc.get(&id), self.editor.node_positions.get(id))
            {
                edits.push(CanvasEdit::Document(Edit::Move {
                    node: doc_id,
                    pos: self.to_doc_pos(p),
                }));
            }
        }
        edits
    }

    /// The shapes of the document's groups for this frame.
    fn group_shapes(&self, ui: &egui::Ui, editor_rect: egui::Rect) -> Vec<egui::Shape> {
        let z = self.editor.pan_zoom.zoom;
        let origin = self.shift + self.editor.pan_zoom.pan + editor_rect.min.to_vec2();
        let mut shapes = Vec::new();
        for g in &self.state.groups {
            let [x, y, w, h] = g.bounding;
            let min = (Vec2::new(x, y) * z + origin).to_pos2();
            let rect = egui::Rect::from_min_size(min, Vec2::new(w, h) * z);
            shapes.push(egui::Shape::rect_filled(
                rect,
                4.0 * z,
                g.color.gamma_multiply(0.3),
            ));
            shapes.push(egui::Shape::rect_stroke(
                rect,
                4.0 * z,
                egui::Stroke::new(1.0_f32, g.color),
            ));
            let font = egui::FontId::proportional(g.font_size * z * 0.75);
            let galley = ui
                .painter()
                .layout_no_wrap(g.title.clone(), font, Color32::WHITE);
            shapes.push(egui::Shape::galley(
                min + Vec2::new(8.0, 4.0) * z,
                galley,
                Color32::WHITE,
            ));
        }
        shapes
    }

    /// Binds a node the user created from the finder to its new document node.
    pub fn bind_created(&mut self, editor_id: eng::NodeId, doc_id: NodeId) {
        if let Some(n) = self.editor.graph.nodes.get_mut(editor_id) {
            n.user_data.doc_id = doc_id;
            let inputs: Vec<eng::InputId> = n.inputs.iter().map(|(_, id)| *id).collect();
            for i in inputs {
                self.editor.graph.inputs[i].value.node = doc_id;
            }
        }
        self.to_doc.insert(editor_id, doc_id);
        self.to_editor.insert(doc_id, editor_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_read_from_the_document_and_malformed_ones_skipped() {
        let doc = Document::from_json(json!({
            "nodes": [], "links": [],
            "groups": [
                {"title": "Inputs", "bounding": [-10, -40, 340, 320], "color": "#3f789e", "font_size": 24},
                {"title": "No colour", "bounding": [0, 0, 10, 10]},
                {"title": "Broken", "bounding": [0, "x", 10, 10]},
                {"title": "Missing"},
                "not a group"
            ]
        }))
        .expect("doc")
        .0;
        let groups = GroupView::from_document(&doc);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].title, "Inputs");
        assert_eq!(groups[0].bounding, [-10.0, -40.0, 340.0, 320.0]);
        assert_eq!(groups[0].color, Color32::from_rgb(0x3f, 0x78, 0x9e));
        assert_eq!(groups[1].font_size, 24.0);
    }
}
