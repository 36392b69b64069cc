//! The workflow document: ComfyUI's UI workflow (litegraph schema 0.4 or 1), kept losslessly.
//!
//! This one type is the single source of truth for the canvas, the CLI and the engine. The fields
//! Amalgam works with are typed (node id, type, title, mode, position, size, slots, widget
//! values; links); everything else — `flags`, `properties`, colours, `groups`, `extra` (with the
//! `ds` view), `config`, subgraph `definitions`, fields a future frontend adds — is kept as the
//! JSON it was, so writing a document back gives the same JSON (compared as JSON values).
//!
//! Reading is tolerant: a malformed node or link is skipped and reported in [`LoadReport`], the
//! rest loads. Writing never fails.

use serde_json::{Map, Value, json};

use crate::format::safetensors::json_kind;

/// A node id as the workflow stores it (an integer in schema 0.4 and 1).
mod json;

use json::{link_to_json, node_to_json, parse_link, parse_node};

pub type NodeId = i64;
/// A link id.
pub type LinkId = i64;

/// LiteGraph node modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 0: runs.
    Always,
    /// 1: runs (on event).
    OnEvent,
    /// 2: muted (Ctrl+M): absent from the prompt, links from it dropped.
    Never,
    /// 3: runs (on trigger).
    OnTrigger,
    /// 4: bypassed (Ctrl+B): absent, consumers rewired to a same-type input.
    Bypass,
    /// Any other number, kept as is.
    Other(i64),
}

impl Mode {
    pub fn from_i64(v: i64) -> Mode {
        match v {
            0 => Mode::Always,
            1 => Mode::OnEvent,
            2 => Mode::Never,
            3 => Mode::OnTrigger,
            4 => Mode::Bypass,
            other => Mode::Other(other),
        }
    }
    pub fn as_i64(self) -> i64 {
        match self {
            Mode::Always => 0,
            Mode::OnEvent => 1,
            Mode::Never => 2,
            Mode::OnTrigger => 3,
            Mode::Bypass => 4,
            Mode::Other(v) => v,
        }
    }
}

/// A 2-D value stored either as `[x, y]` or as `{"0": x, "1": y}` (old Float32Array form).
/// The original JSON is kept until the value is changed, so unchanged values write back exactly.
#[derive(Clone, Debug, PartialEq)]
pub struct Pair {
    raw: Value,
}

impl Pair {
    pub fn new(x: f64, y: f64) -> Pair {
        Pair { raw: json!([x, y]) }
    }
    fn from_raw(raw: Value) -> Option<Pair> {
        let p = Pair { raw };
        p.get().map(|_| p)
    }
    /// The two numbers, if both are finite numbers.
    pub fn get(&self) -> Option<[f64; 2]> {
        let (x, y) = match &self.raw {
            Value::Array(a) if a.len() >= 2 => (a[0].as_f64()?, a[1].as_f64()?),
            Value::Object(o) => (o.get("0")?.as_f64()?, o.get("1")?.as_f64()?),
            _ => return None,
        };
        (x.is_finite() && y.is_finite()).then_some([x, y])
    }
    /// Sets new values, keeping the stored form.
    pub fn set(&mut self, v: [f64; 2]) {
        if self.get() == Some(v) {
            return;
        }
        self.raw = match &self.raw {
            Value::Object(_) => json!({"0": v[0], "1": v[1]}),
            _ => json!([v[0], v[1]]),
        };
    }
    pub fn raw(&self) -> &Value {
        &self.raw
    }
}

/// An input slot of a node.
#[derive(Clone, Debug, PartialEq)]
pub struct InputSlot {
    pub name: String,
    /// Type as stored (usually a string such as `"MODEL"`).
    pub type_: Value,
    pub link: Option<LinkId>,
    /// Other fields (`widget`, `label`, `shape`, `slot_index`, `localized_name`, …).
    pub fields: Map<String, Value>,
}

impl InputSlot {
    /// The widget this slot stands for (`widget: {name}`), if it is a converted widget.
    pub fn widget_name(&self) -> Option<&str> {
        self.fields.get("widget")?.get("name")?.as_str()
    }
    pub fn type_name(&self) -> &str {
        self.type_.as_str().unwrap_or("*")
    }
}

/// An output slot of a node.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputSlot {
    pub name: String,
    pub type_: Value,
    /// `links` as stored: `None` for `null` or absent.
    pub links: Option<Vec<LinkId>>,
    pub fields: Map<String, Value>,
}

impl OutputSlot {
    pub fn type_name(&self) -> &str {
        self.type_.as_str().unwrap_or("*")
    }
}

/// One node of the graph.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub id: NodeId,
    /// The class type (`"ModelMergeSimple"`, `"KSampler"`, a subgraph uuid, …).
    pub type_: String,
    /// Only present when the user renamed the node.
    pub title: Option<String>,
    pub pos: Pair,
    pub size: Pair,
    pub mode: Mode,
    pub inputs: Vec<InputSlot>,
    pub outputs: Vec<OutputSlot>,
    /// `widgets_values` as stored: an array for every ComfyUI node, an object for some custom ones.
    pub widgets_values: Option<Value>,
    /// Every other field (`flags`, `order`, `properties`, `color`, `bgcolor`, …).
    pub fields: Map<String, Value>,
    /// Which fields were absent on read (written back absent): mode, inputs, outputs.
    had_mode: bool,
    had_inputs: bool,
    had_outputs: bool,
}

impl Node {
    /// A new node with no slots.
    pub fn new(id: NodeId, type_: &str, pos: [f64; 2], size: [f64; 2]) -> Node {
        let mut fields = Map::new();
        fields.insert("flags".into(), json!({}));
        fields.insert("order".into(), json!(0));
        fields.insert("properties".into(), json!({"Node name for S&R": type_}));
        Node {
            id,
            type_: type_.to_owned(),
            title: None,
            pos: Pair::new(pos[0], pos[1]),
            size: Pair::new(size[0], size[1]),
            mode: Mode::Always,
            inputs: Vec::new(),
            outputs: Vec::new(),
            widgets_values: None,
            fields,
            had_mode: true,
            had_inputs: true,
            had_outputs: true,
        }
    }

    /// `widgets_values` as an array (empty if absent or an object).
    pub fn widget_values(&self) -> &[Value] {
        match &self.widgets_values {
            Some(Value::Array(a)) => a,
            _ => &[],
        }
    }

    /// Sets `widgets_values[index]`, growing the array with nulls if needed.
    pub fn set_widget_value(&mut self, index: usize, value: Value) {
        let arr = match &mut self.widgets_values {
            Some(Value::Array(a)) => a,
            _ => {
                self.widgets_values = Some(Value::Array(Vec::new()));
                match &mut self.widgets_values {
                    Some(Value::Array(a)) => a,
                    _ => return,
                }
            }
        };
        if arr.len() <= index {
            arr.resize(index + 1, Value::Null);
        }
        arr[index] = value;
    }

    /// The name shown for the node: its title, else the class type.
    pub fn display_title(&self) -> &str {
        self.title.as_deref().unwrap_or(&self.type_)
    }
}

/// A link: `[id, origin_id, origin_slot, target_id, target_slot, type]` in schema 0.4, an object
/// in schema 1.
#[derive(Clone, Debug, PartialEq)]
pub struct Link {
    pub id: LinkId,
    pub origin_id: NodeId,
    pub origin_slot: usize,
    pub target_id: NodeId,
    /// Index into the target's *serialised* `inputs` array.
    pub target_slot: usize,
    pub type_: Value,
    /// Extra fields of the object form (`parentId`, …); empty for the array form.
    pub fields: Map<String, Value>,
}

/// How links are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkForm {
    Arrays,
    Objects,
}

/// Something skipped or suspicious while reading a workflow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadIssue {
    pub node: Option<NodeId>,
    pub message: String,
}

/// What reading a workflow skipped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    pub issues: Vec<LoadIssue>,
}

impl LoadReport {
    fn skip(&mut self, node: Option<NodeId>, message: String) {
        self.issues.push(LoadIssue { node, message });
    }
}

/// Why a JSON value is not a workflow at all.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DocumentError {
    #[error("workflow JSON must be an object, found {0}")]
    NotAnObject(&'static str),
    #[error("workflow has no \"nodes\" list")]
    NoNodes,
}

/// A ComfyUI UI workflow.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    pub nodes: Vec<Node>,
    pub links: Vec<Link>,
    pub link_form: LinkForm,
    /// Every other top-level field (`last_node_id`, `groups`, `config`, `extra`, `version`,
    /// `state`, `definitions`, …), as read.
    pub fields: Map<String, Value>,
}

impl Default for Document {
    fn default() -> Self {
        Document::new()
    }
}

/// An id that may be stored as a number or a numeric string.
fn as_id(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn as_index(v: &Value) -> Option<usize> {
    v.as_u64().and_then(|n| usize::try_from(n).ok())
}

impl Document {
    /// An empty schema-0.4 workflow.
    pub fn new() -> Document {
        let mut fields = Map::new();
        fields.insert("last_node_id".into(), json!(0));
        fields.insert("last_link_id".into(), json!(0));
        fields.insert("groups".into(), json!([]));
        fields.insert("config".into(), json!({}));
        fields.insert("extra".into(), json!({}));
        fields.insert("version".into(), json!(0.4));
        Document {
            nodes: Vec::new(),
            links: Vec::new(),
            link_form: LinkForm::Arrays,
            fields,
        }
    }

    /// Reads a UI workflow from parsed JSON. Malformed nodes and links are skipped and reported.
    pub fn from_json(value: Value) -> Result<(Document, LoadReport), DocumentError> {
        let Value::Object(mut top) = value else {
            return Err(DocumentError::NotAnObject(json_kind(&value)));
        };
        let Some(Value::Array(raw_nodes)) = top.remove("nodes") else {
            return Err(DocumentError::NoNodes);
        };
        let raw_links = top.remove("links");
        let mut report = LoadReport::default();
        let mut nodes: Vec<Node> = Vec::with_capacity(raw_nodes.len());
        let mut seen = std::collections::HashSet::new();
        for (i, raw) in raw_nodes.into_iter().enumerate() {
            match parse_node(raw) {
                Ok(node) => {
                    if seen.insert(node.id) {
                        nodes.push(node);
                    } else {
                        report.skip(
                            Some(node.id),
                            format!(
                                "node #{} ({}) skipped: its id is used by an earlier node",
                                node.id, node.type_
                            ),
                        );
                    }
                }
                Err(problem) => {
                    report.skip(None, format!("node at position {i} skipped: {problem}"));
                }
            }
        }
        let mut links = Vec::new();
        let mut link_form = LinkForm::Arrays;
        match raw_links {
            None | Some(Value::Null) => {}
            Some(Value::Array(raw_links)) => {
                for raw in raw_links {
                    if raw.is_object() {
                        link_form = LinkForm::Objects;
                    }
                    match parse_link(raw) {
                        Ok(l) => links.push(l),
                        Err(problem) => report.skip(None, format!("link skipped: {problem}")),
                    }
                }
            }
            Some(other) => report.skip(
                None,
                format!(
                    "links ignored: expected an array, found {}",
                    json_kind(&other)
                ),
            ),
        }
        let doc = Document {
            nodes,
            links,
            link_form,
            fields: top,
        };
        doc.check_links(&mut report);
        Ok((doc, report))
    }

    /// Reports links whose ends do not exist (they stay in the document, and resolution ignores
    /// them).
    fn check_links(&self, report: &mut LoadReport) {
        for l in &self.links {
            // Inside a subgraph definition, −10 and −20 are the virtual boundary boxes.
            if l.origin_id == crate::graph::subgraph::SUBGRAPH_INPUT_ID
                || l.target_id == crate::graph::subgraph::SUBGRAPH_OUTPUT_ID
            {
                continue;
            }
            let origin = self.node(l.origin_id);
            let target = self.node(l.target_id);
            let problem = match (origin, target) {
                (None, _) => Some(format!(
                    "link {} starts at missing node #{}",
                    l.id, l.origin_id
                )),
                (_, None) => Some(format!(
                    "link {} ends at missing node #{}",
                    l.id, l.target_id
                )),
                (Some(o), Some(t)) => {
                    if l.origin_slot >= o.outputs.len() && !is_virtual_type(&o.type_) {
                        Some(format!(
                            "link {} starts at missing output slot {} of node #{}",
                            l.id, l.origin_slot, o.id
                        ))
                    } else if l.target_slot >= t.inputs.len() {
                        Some(format!(
                            "link {} ends at missing input slot {} of node #{}",
                            l.id, l.target_slot, t.id
                        ))
                    } else {
                        None
                    }
                }
            };
            if let Some(p) = problem {
                report.skip(Some(l.target_id), format!("{p}; it is ignored"));
            }
        }
    }

    /// Writes the document as UI workflow JSON.
    pub fn to_json(&self) -> Value {
        let mut top = Map::new();
        for (k, v) in &self.fields {
            top.insert(k.clone(), v.clone());
        }
        top.insert(
            "nodes".into(),
            Value::Array(self.nodes.iter().map(node_to_json).collect()),
        );
        top.insert(
            "links".into(),
            Value::Array(
                self.links
                    .iter()
                    .map(|l| link_to_json(l, self.link_form))
                    .collect(),
            ),
        );
        Value::Object(top)
    }

    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }
    pub fn node_mut(&mut self, id: NodeId) -> Option<&mut Node> {
        self.nodes.iter_mut().find(|n| n.id == id)
    }
    /// The id of the first node of a class type (`"KSampler"`), in document order.
    pub fn first_of_type(&self, class_type: &str) -> Option<NodeId> {
        self.nodes
            .iter()
            .find(|n| n.type_ == class_type)
            .map(|n| n.id)
    }
    pub fn link(&self, id: LinkId) -> Option<&Link> {
        self.links.iter().find(|l| l.id == id)
    }

    /// A fresh node id (one more than any in use or recorded).
    pub fn next_node_id(&self) -> NodeId {
        self.next_id("last_node_id", self.nodes.iter().map(|n| n.id))
    }

    /// A fresh link id (one more than any in use or recorded).
    pub fn next_link_id(&self) -> LinkId {
        self.next_id("last_link_id", self.links.iter().map(|l| l.id))
    }

    /// One more than the largest of `ids` and the document's `recorded` field.
    fn next_id(&self, recorded: &str, ids: impl Iterator<Item = i64>) -> i64 {
        let recorded = self.fields.get(recorded).and_then(as_id).unwrap_or(0);
        ids.chain([recorded]).max().unwrap_or(0) + 1
    }

    /// Adds a node and records its id as the last one used.
    pub fn add_node(&mut self, node: Node) {
        let id = node.id;
        self.nodes.push(node);
        if self.fields.get("last_node_id").and_then(as_id).unwrap_or(0) < id {
            self.fields.insert("last_node_id".into(), json!(id));
        }
    }

    /// Connects `origin`'s output slot to the `target` input named `input`, replacing any link
    /// that input had. Returns the new link's id, or `None` if a slot is missing.
    pub fn connect(
        &mut self,
        origin: NodeId,
        origin_slot: usize,
        target: NodeId,
        input: &str,
    ) -> Option<LinkId> {
        self.connect_all(&[(origin, origin_slot, target, input)])
            .pop()
            .flatten()
    }

    /// [`Document::connect`] for many links, in order, in linear time (one pass over the nodes
    /// for an index, then constant work per link): connecting an API prompt's links one call at a
    /// time was quadratic and made opening a 20,000-node prompt take seconds.
    pub fn connect_all(&mut self, wanted: &[(NodeId, usize, NodeId, &str)]) -> Vec<Option<LinkId>> {
        // The first node with an id wins, as in `node()`.
        let mut pos: std::collections::HashMap<NodeId, usize> = Default::default();
        for (i, n) in self.nodes.iter().enumerate() {
            pos.entry(n.id).or_insert(i);
        }
        let mut next = self.next_link_id();
        let mut made = Vec::with_capacity(wanted.len());
        for &(origin, origin_slot, target, input) in wanted {
            let slots = pos.get(&origin).zip(pos.get(&target)).and_then(|(&o, &t)| {
                let type_ = self.nodes[o].outputs.get(origin_slot)?.type_.clone();
                let target_slot = self.nodes[t].inputs.iter().position(|i| i.name == input)?;
                Some((o, t, target_slot, type_))
            });
            let Some((o, t, target_slot, type_)) = slots else {
                made.push(None);
                continue;
            };
            if let Some(old) = self.nodes[t].inputs[target_slot].link {
                self.remove_link(old);
            }
            let id = next;
            next += 1;
            self.links.push(Link {
                id,
                origin_id: origin,
                origin_slot,
                target_id: target,
                target_slot,
                type_,
                fields: Map::new(),
            });
            self.nodes[o].outputs[origin_slot]
                .links
                .get_or_insert_with(Vec::new)
                .push(id);
            self.nodes[t].inputs[target_slot].link = Some(id);
            self.fields.insert("last_link_id".into(), json!(id));
            made.push(Some(id));
        }
        made
    }

    /// Removes a link and its references from both slots.
    pub fn remove_link(&mut self, id: LinkId) {
        self.links.retain(|l| l.id != id);
        for n in &mut self.nodes {
            for i in &mut n.inputs {
                if i.link == Some(id) {
                    i.link = None;
                }
            }
            for o in &mut n.outputs {
                if let Some(links) = &mut o.links {
                    links.retain(|&l| l != id);
                }
            }
        }
    }

    /// The link feeding input `slot` of node `id`, if it exists and both ends are present.
    pub fn input_link(&self, id: NodeId, slot: usize) -> Option<&Link> {
        let link_id = self.node(id)?.inputs.get(slot)?.link?;
        let l = self.link(link_id)?;
        (l.target_id == id && self.node(l.origin_id).is_some()).then_some(l)
    }

    /// Hash lookups of nodes and links by id, for passes over a whole document (the methods
    /// above search linearly, which makes such a pass quadratic in a large workflow).
    pub fn index(&self) -> DocumentIndex<'_> {
        DocumentIndex {
            // Reversed, so that the first of repeated ids is the one kept.
            nodes: self.nodes.iter().rev().map(|n| (n.id, n)).collect(),
            links: self.links.iter().rev().map(|l| (l.id, l)).collect(),
        }
    }
}

/// A read-only view of a [`Document`] with nodes and links looked up by id. When ids repeat
/// (a malformed file), the first one wins, as with [`Document::node`].
pub struct DocumentIndex<'a> {
    nodes: std::collections::HashMap<NodeId, &'a Node>,
    links: std::collections::HashMap<LinkId, &'a Link>,
}

impl<'a> DocumentIndex<'a> {
    pub fn node(&self, id: NodeId) -> Option<&'a Node> {
        self.nodes.get(&id).copied()
    }
    pub fn link(&self, id: LinkId) -> Option<&'a Link> {
        self.links.get(&id).copied()
    }
    /// As [`Document::input_link`].
    pub fn input_link(&self, id: NodeId, slot: usize) -> Option<&'a Link> {
        let link_id = self.node(id)?.inputs.get(slot)?.link?;
        let l = self.link(link_id)?;
        (l.target_id == id && self.node(l.origin_id).is_some()).then_some(l)
    }
}

/// Frontend-only types whose slots are created at run time in the frontend.
fn is_virtual_type(t: &str) -> bool {
    matches!(t, "Reroute" | "PrimitiveNode")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::prompt::Prompt;
    use crate::nodes::Registry;

    /// `connect_all` leaves the document exactly as one `connect` per link would: same ids,
    /// slots, `last_link_id`, a replaced link on an input given twice, and `None` for a missing
    /// output or node.
    #[test]
    fn connect_all_gives_what_one_connect_per_link_gives() {
        let prompt = Prompt::from_json(&json!({
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
            "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "b.safetensors"}},
            "3": {"class_type": "ModelMergeSimple", "inputs": {"model1": ["1", 0], "model2": ["2", 0], "ratio": 0.5}},
            "4": {"class_type": "CheckpointSave", "inputs": {"model": ["3", 0], "clip": ["1", 1], "vae": ["2", 2], "filename_prefix": "x"}},
        }))
        .expect("prompt");
        let (doc, _) = crate::graph::load::document_from_prompt(&prompt, Registry::builtin());
        let mut wanted: Vec<(NodeId, usize, NodeId, String)> = doc
            .links
            .iter()
            .map(|l| {
                let input = doc.node(l.target_id).expect("target").inputs[l.target_slot]
                    .name
                    .clone();
                (l.origin_id, l.origin_slot, l.target_id, input)
            })
            .collect();
        let (save, merge) = (wanted[wanted.len() - 1].2, wanted[0].2);
        wanted.push((wanted[0].0, 0, save, "model".into())); // replaces the save's model link
        wanted.push((wanted[0].0, 7, merge, "model1".into())); // no output 7
        wanted.push((99, 0, merge, "model1".into())); // no node 99
        let mut bare = doc.clone();
        for id in doc.links.iter().map(|l| l.id).collect::<Vec<_>>() {
            bare.remove_link(id);
        }
        let (mut one_by_one, mut at_once) = (bare.clone(), bare);
        let expected: Vec<Option<LinkId>> = wanted
            .iter()
            .map(|(o, s, t, i)| one_by_one.connect(*o, *s, *t, i))
            .collect();
        let refs: Vec<(NodeId, usize, NodeId, &str)> = wanted
            .iter()
            .map(|(o, s, t, i)| (*o, *s, *t, i.as_str()))
            .collect();
        assert_eq!(at_once.connect_all(&refs), expected);
        assert_eq!(expected.iter().filter(|m| m.is_none()).count(), 2);
        assert_eq!(at_once.to_json(), one_by_one.to_json());
    }
}
