//! Subgraph definitions: the `definitions.subgraphs` of a workflow, read into documents that
//! [`super::resolve`] flattens into the prompt as ComfyUI's frontend does
//! (`../shared/reference/subgraphs.md`).
//!
//! - A definition is a version-1 graph (object links) plus its ordered boundary slots. Links from
//!   the virtual input box have `origin_id` −10 (`origin_slot` = definition input k); links into
//!   the output box have `target_id` −20 (`target_slot` = definition output k).
//! - Definitions nested inside a definition's own `definitions` are read as if written flat at
//!   the root (what the frontend's `flattenSubgraphDefinitions` does); when ids repeat, the first
//!   wins.
//! - An instance is a node whose `type` is a definition id. Its serialised `inputs` are a
//!   compressed subset of the definition's inputs, matched by name, never by position.
//! - The definitions stay in the document's `fields` untouched, so writing the workflow back
//!   keeps them exactly; this module only reads them.
//! - Legacy group nodes (`workflow>Name`) are not subgraphs: they are refused by the resolver
//!   with the frontend's own fix (a current frontend converts them to subgraphs on load).

use std::collections::HashMap;

use serde_json::Value;

use super::document::{Document, LinkId, Node, NodeId};
use crate::nodes::Registry;

/// The id of a definition's virtual input box: links from it carry values into the subgraph.
pub const SUBGRAPH_INPUT_ID: NodeId = -10;
/// The id of a definition's virtual output box.
pub const SUBGRAPH_OUTPUT_ID: NodeId = -20;

/// Deepest nesting of definitions read from `definitions` inside definitions.
const MAX_NESTED_DEFINITIONS: usize = 64;

/// One input or output of a definition's boundary.
#[derive(Clone, Debug, PartialEq)]
pub struct BoundarySlot {
    /// The slot's stable identity (`label` is only what the frontend shows).
    pub name: String,
    pub type_: String,
    /// Inner links leaving this input, or the (single) inner link arriving at this output.
    pub link_ids: Vec<LinkId>,
}

/// A subgraph definition.
#[derive(Clone, Debug)]
pub struct Definition {
    /// The uuid an instance's `type` names.
    pub id: String,
    /// The title instances show (not unique).
    pub name: String,
    /// The inner nodes and links.
    pub graph: Document,
    pub inputs: Vec<BoundarySlot>,
    pub outputs: Vec<BoundarySlot>,
}

impl Definition {
    /// The inner link that feeds output `slot` (the frontend takes the first).
    pub fn output_link(&self, slot: usize) -> Option<&super::Link> {
        let listed = self.outputs.get(slot)?.link_ids.iter().find_map(|&id| {
            self.graph
                .link(id)
                .filter(|l| l.target_id == SUBGRAPH_OUTPUT_ID && l.target_slot == slot)
        });
        listed.or_else(|| {
            self.graph
                .links
                .iter()
                .find(|l| l.target_id == SUBGRAPH_OUTPUT_ID && l.target_slot == slot)
        })
    }

    /// Whether input `k` carries a promoted widget: its first inner link lands on an input that
    /// stands for a widget (`widget: {name}`), on an inner node or on a nested instance.
    pub fn input_is_widget(&self, k: usize) -> bool {
        let Some(slot) = self.inputs.get(k) else {
            return false;
        };
        let first = slot
            .link_ids
            .iter()
            .find_map(|&id| self.graph.link(id))
            .or_else(|| {
                self.graph
                    .links
                    .iter()
                    .find(|l| l.origin_id == SUBGRAPH_INPUT_ID && l.origin_slot == k)
            });
        first
            .and_then(|l| {
                let target = self.graph.node(l.target_id)?;
                target.inputs.get(l.target_slot)
            })
            .is_some_and(|input| input.widget_name().is_some())
    }

    /// The rank of input `k` among the inputs with a promoted widget: the index of its value in
    /// an instance's positional `widgets_values` (frontend generations G1 and G3).
    pub fn widget_rank(&self, k: usize) -> Option<usize> {
        self.input_is_widget(k)
            .then(|| (0..k).filter(|&i| self.input_is_widget(i)).count())
    }

    /// The definition input an instance's serialised input stands for, by name.
    pub fn input_index(&self, name: &str) -> Option<usize> {
        self.inputs.iter().position(|s| s.name == name)
    }
}

/// A workflow's subgraph definitions, by id.
#[derive(Clone, Debug, Default)]
pub struct Definitions {
    by_id: HashMap<String, Definition>,
    /// Definition ids in file order (nested ones after their parent).
    order: Vec<String>,
    /// Definitions that could not be read: id → why. Their instances are refused.
    broken: HashMap<String, String>,
}

impl Definitions {
    /// Reads `definitions.subgraphs` of a document (nothing if it has none).
    pub fn of(doc: &Document) -> Definitions {
        let mut defs = Definitions::default();
        if let Some(list) = subgraph_list(doc.fields.get("definitions")) {
            defs.read_list(list, 0);
        }
        defs
    }

    fn read_list(&mut self, list: &[Value], depth: usize) {
        if depth > MAX_NESTED_DEFINITIONS {
            for raw in list {
                if let Some(id) = raw.get("id").and_then(Value::as_str) {
                    self.broken.entry(id.to_owned()).or_insert_with(|| {
                        format!("definitions are nested more than {MAX_NESTED_DEFINITIONS} deep")
                    });
                }
            }
            return;
        }
        for raw in list {
            let id = raw.get("id").and_then(Value::as_str).unwrap_or_default();
            match read_definition(raw) {
                Ok(def) => {
                    if !self.by_id.contains_key(&def.id) {
                        self.order.push(def.id.clone());
                        self.by_id.insert(def.id.clone(), def);
                    }
                }
                Err(why) => {
                    self.broken.entry(id.to_owned()).or_insert(why);
                }
            }
            if let Some(nested) = subgraph_list(raw.get("definitions")) {
                self.read_list(nested, depth + 1);
            }
        }
    }

    /// The definition an instance's type names, if the node is an instance.
    pub fn get(&self, type_: &str) -> Option<&Definition> {
        self.by_id.get(type_)
    }

    /// Why the definition a type names could not be read, if it is such a type.
    pub fn broken(&self, type_: &str) -> Option<&str> {
        if self.by_id.contains_key(type_) {
            return None;
        }
        self.broken.get(type_).map(String::as_str)
    }

    /// The definition behind a node, if it is a subgraph instance.
    pub fn of_node(&self, node: &Node) -> Option<&Definition> {
        self.get(&node.type_)
    }

    /// Every definition, in file order.
    pub fn iter(&self) -> impl Iterator<Item = &Definition> {
        self.order.iter().filter_map(|id| self.by_id.get(id))
    }
}

fn subgraph_list(definitions: Option<&Value>) -> Option<&[Value]> {
    definitions?.get("subgraphs")?.as_array().map(Vec::as_slice)
}

fn read_definition(raw: &Value) -> Result<Definition, String> {
    let id = raw
        .get("id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or("it has no id")?
        .to_owned();
    let name = raw
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("Subgraph")
        .to_owned();
    let inputs = boundary(raw.get("inputs")).map_err(|e| format!("inputs: {e}"))?;
    let outputs = boundary(raw.get("outputs")).map_err(|e| format!("outputs: {e}"))?;
    // Only the graph part is read as a document: the rest stays in the root's fields as it was.
    let mut graph_json = serde_json::Map::new();
    for key in ["nodes", "links"] {
        if let Some(v) = raw.get(key) {
            graph_json.insert(key.into(), v.clone());
        }
    }
    let (graph, report) =
        Document::from_json(Value::Object(graph_json)).map_err(|e| e.to_string())?;
    if let Some(issue) = report.issues.first() {
        // A definition with a malformed node would flatten into a different prompt than the
        // frontend's; say so rather than run part of it.
        return Err(issue.message.clone());
    }
    Ok(Definition {
        id,
        name,
        graph,
        inputs,
        outputs,
    })
}

fn boundary(raw: Option<&Value>) -> Result<Vec<BoundarySlot>, String> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    let list = raw.as_array().ok_or("not a list")?;
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            let name = s
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("slot {i} has no name"))?
                .to_owned();
            let type_ = s
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("*")
                .to_owned();
            let link_ids = s
                .get("linkIds")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_i64).collect())
                .unwrap_or_default();
            Ok(BoundarySlot {
                name,
                type_,
                link_ids,
            })
        })
        .collect()
}

/// One widget an instance shows: a value promoted from inside its subgraph.
#[derive(Clone, Debug, PartialEq)]
pub struct Promoted {
    /// The name shown (the subgraph input's, or the inner widget's for G2 proxies).
    pub name: String,
    /// Where the instance keeps the value: its `widgets_values[index]`.
    pub index: usize,
    /// The instance's value, or the inner widget's when the instance has none (a hole).
    pub value: Value,
    /// The inner node's class type and widget name, when found (for the widget's kind).
    pub inner: Option<(String, String)>,
    /// For a seed: its `control_after_generate` (the instance's G2 proxy of it, else the inner
    /// node's own), which the frontend applies to the promoted value after each queue.
    pub control: Option<Value>,
}

/// The real node behind a promoted widget.
struct InnerWidget {
    class_type: String,
    widget: String,
    /// Its own value (a nested instance's promoted value winning, as when running).
    value: Option<Value>,
    /// Its `control_after_generate` value, when the widget is a seed.
    control: Option<Value>,
}

/// Deepest chain of nested instances followed to find a promoted widget's inner node.
const MAX_PROMOTION_DEPTH: usize = 16;

impl Definitions {
    /// The widgets an instance shows, in the order its `widgets_values` keeps them: G2
    /// `proxyWidgets` entries (frontend-only `$$` entries left out), else one per
    /// widget-promoted definition input (G1/G3). Inputs linked on the instance are ports, not
    /// widgets, and are left out.
    pub fn promoted_widgets(&self, instance: &Node, registry: &Registry) -> Vec<Promoted> {
        let Some(def) = self.of_node(instance) else {
            return Vec::new();
        };
        let values = instance.widget_values();
        let linked = |name: &str| {
            instance
                .inputs
                .iter()
                .any(|i| i.link.is_some() && (i.name == name || i.widget_name() == Some(name)))
        };
        let host = |index: usize| values.get(index).filter(|v| !v.is_null()).cloned();
        let mut out = Vec::new();
        if let Some(proxies) = proxy_widgets(instance) {
            for (index, (node, widget)) in proxies.iter().enumerate() {
                if widget.starts_with("$$") {
                    continue;
                }
                let inner = if node == "-1" {
                    if linked(widget) {
                        continue;
                    }
                    def.input_index(widget)
                        .and_then(|k| self.inner_widget(def, k, registry, 0))
                } else {
                    let bound = node.parse::<NodeId>().ok().and_then(|id| {
                        let n = def.graph.node(id)?;
                        let slot = n.inputs.iter().position(|i| {
                            i.widget_name() == Some(widget.as_str()) || i.name == *widget
                        });
                        // A proxy whose inner widget is fed by a linked instance input is a port.
                        let from = slot.and_then(|s| n.inputs[s].link).and_then(|l| {
                            def.graph
                                .link(l)
                                .filter(|l| l.origin_id == SUBGRAPH_INPUT_ID)
                        });
                        Some((n, from.map(|l| l.origin_slot)))
                    });
                    match bound {
                        Some((_, Some(k)))
                            if def.inputs.get(k).is_some_and(|b| linked(&b.name)) =>
                        {
                            continue;
                        }
                        Some((n, _)) => Some(InnerWidget {
                            class_type: n.type_.clone(),
                            widget: widget.clone(),
                            value: widget_value(n, widget, registry),
                            control: widget_value(n, "control_after_generate", registry)
                                .filter(|_| is_seed(n, widget, registry)),
                        }),
                        None => None,
                    }
                };
                // A proxied control of the same node holds the instance's own choice.
                let proxied_control =
                    inner
                        .as_ref()
                        .and_then(|i| i.control.as_ref())
                        .and_then(|_| {
                            let at = proxies
                                .iter()
                                .position(|(n, w)| n == node && w == "control_after_generate")?;
                            host(at)
                        });
                out.push(promoted(
                    widget.clone(),
                    index,
                    host(index),
                    inner,
                    proxied_control,
                ));
            }
            return out;
        }
        for (k, slot) in def.inputs.iter().enumerate() {
            let Some(index) = def.widget_rank(k) else {
                continue;
            };
            if linked(&slot.name) {
                continue;
            }
            let inner = self.inner_widget(def, k, registry, 0);
            out.push(promoted(slot.name.clone(), index, host(index), inner, None));
        }
        out
    }

    /// The real inner node's type, widget name and own value behind definition input `k`,
    /// through nested instances (whose own promoted value wins, as when running).
    fn inner_widget(
        &self,
        def: &Definition,
        k: usize,
        registry: &Registry,
        depth: usize,
    ) -> Option<InnerWidget> {
        if depth > MAX_PROMOTION_DEPTH {
            return None;
        }
        let link = def
            .inputs
            .get(k)?
            .link_ids
            .iter()
            .find_map(|&id| def.graph.link(id))?;
        let target = def.graph.node(link.target_id)?;
        let input = target.inputs.get(link.target_slot)?;
        let widget = input.widget_name()?.to_owned();
        match self.of_node(target) {
            Some(nested) => {
                let k2 = nested.input_index(&widget)?;
                let mut deeper = self.inner_widget(nested, k2, registry, depth + 1)?;
                let own = nested
                    .widget_rank(k2)
                    .and_then(|r| target.widget_values().get(r))
                    .filter(|v| !v.is_null())
                    .cloned();
                deeper.value = own.or(deeper.value);
                Some(deeper)
            }
            None => Some(InnerWidget {
                class_type: target.type_.clone(),
                value: widget_value(target, &widget, registry),
                control: widget_value(target, "control_after_generate", registry)
                    .filter(|_| is_seed(target, &widget, registry)),
                widget,
            }),
        }
    }
}

/// A promoted widget from the instance's value (`host`) and what is behind it.
fn promoted(
    name: String,
    index: usize,
    host: Option<Value>,
    inner: Option<InnerWidget>,
    proxied_control: Option<Value>,
) -> Promoted {
    let (fallback, control, inner) = match inner {
        Some(i) => (i.value, i.control, Some((i.class_type, i.widget))),
        None => (None, None, None),
    };
    Promoted {
        name,
        index,
        value: host.or(fallback).unwrap_or(Value::Null),
        inner,
        control: proxied_control.or(control),
    }
}

/// Whether `widget` of `node` is an INT with a `control_after_generate` companion (a seed).
fn is_seed(node: &Node, widget: &str, registry: &Registry) -> bool {
    registry.get(&node.type_).is_some_and(|schema| {
        schema.inputs.iter().any(|s| {
            s.name == widget
                && matches!(
                    s.kind,
                    crate::nodes::InputKind::Int {
                        control_after_generate: true,
                        ..
                    }
                )
        })
    })
}

/// A node's own value of a widget, by the registry's widget positions.
fn widget_value(node: &Node, widget: &str, registry: &Registry) -> Option<Value> {
    let Some(schema) = registry.get(&node.type_) else {
        // A node Amalgam does not know: only a 2026 frontend's named values tell which is which.
        return node
            .fields
            .get("widgets_values_named")?
            .get(widget)
            .cloned();
    };
    let slots = schema.widget_slots();
    let pos = match slots.iter().find(|(_, spec)| spec.name == widget) {
        Some((pos, _)) => *pos,
        // The seed's companion sits right after it.
        None if widget == "control_after_generate" => slots.iter().find_map(|(pos, spec)| {
            matches!(
                spec.kind,
                crate::nodes::InputKind::Int {
                    control_after_generate: true,
                    ..
                }
            )
            .then_some(pos + 1)
        })?,
        None => return None,
    };
    node.widget_values().get(pos).cloned()
}

/// `properties.proxyWidgets` of an instance (frontend generation G2): `(inner node id, widget
/// name)` pairs, `"-1"` meaning "the widget of the subgraph input named so". The first builds
/// stored the list as a JSON string.
pub fn proxy_widgets(instance: &Node) -> Option<Vec<(String, String)>> {
    let raw = instance.fields.get("properties")?.get("proxyWidgets")?;
    let parsed;
    let list = match raw {
        Value::Array(a) => a,
        Value::String(s) => {
            parsed = serde_json::from_str::<Value>(s).ok()?;
            parsed.as_array()?
        }
        _ => return None,
    };
    Some(
        list.iter()
            .filter_map(|e| {
                let e = e.as_array()?;
                let node = match e.first()? {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => return None,
                };
                Some((node, e.get(1)?.as_str()?.to_owned()))
            })
            .collect(),
    )
}

/// The inside of the instance at `path` (instance ids from the root down), as a document the
/// canvas can show — with the root's definitions, so nested instances inside are instances
/// too — and the names of the definitions along the way. `None` when the path no longer leads
/// to an instance (it was deleted, or the document changed).
pub fn inside(doc: &Document, path: &[NodeId]) -> Option<(Document, Vec<String>)> {
    let defs = Definitions::of(doc);
    let mut graph = doc;
    let mut names = Vec::new();
    for id in path {
        let def = defs.of_node(graph.node(*id)?)?;
        names.push(def.name.clone());
        graph = &def.graph;
    }
    let mut view = graph.clone();
    if let Some(d) = doc.fields.get("definitions") {
        view.fields.insert("definitions".into(), d.clone());
    }
    Some((view, names))
}

/// The root node an execution id (`"12"`, `"12:5"`, `"12:7:3"`) belongs to: what the canvas
/// marks for an error or a result inside a subgraph.
pub fn root_node_of(execution_id: &str) -> Option<NodeId> {
    execution_id.split(':').next()?.parse().ok()
}

/// A sort key for execution ids: numerically by each `:`-separated part.
pub fn execution_order_key(execution_id: &str) -> (Vec<i64>, String) {
    let parts = execution_id
        .split(':')
        .map(|p| p.parse().unwrap_or(i64::MAX))
        .collect();
    (parts, execution_id.to_owned())
}

/// Whether a type names a legacy group node (`workflow>Name`, older `workflow/Name`).
pub fn is_group_node(type_: &str) -> bool {
    type_.starts_with("workflow>") || type_.starts_with("workflow/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn definition(id: &str, nested: Value) -> Value {
        let mut def = json!({
            "id": id, "version": 1, "name": "Merge",
            "inputs": [
                {"id": "a", "name": "model", "type": "MODEL", "linkIds": [1]},
                {"id": "b", "name": "ratio", "type": "FLOAT", "linkIds": [2]},
            ],
            "outputs": [{"id": "c", "name": "MODEL", "type": "MODEL", "linkIds": [3]}],
            "nodes": [{
                "id": 5, "type": "ModelMergeSimple", "pos": [0, 0], "mode": 0,
                "inputs": [
                    {"name": "model1", "type": "MODEL", "link": 1},
                    {"name": "model2", "type": "MODEL", "link": null},
                    {"name": "ratio", "type": "FLOAT", "widget": {"name": "ratio"}, "link": 2},
                ],
                "outputs": [{"name": "MODEL", "type": "MODEL", "links": [3]}],
                "widgets_values": [0.25],
            }],
            "links": [
                {"id": 1, "origin_id": -10, "origin_slot": 0, "target_id": 5, "target_slot": 0, "type": "MODEL"},
                {"id": 2, "origin_id": -10, "origin_slot": 1, "target_id": 5, "target_slot": 2, "type": "FLOAT"},
                {"id": 3, "origin_id": 5, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "MODEL"},
            ],
        });
        def["definitions"] = nested;
        def
    }

    #[test]
    fn definitions_are_read_with_nested_ones_flat_and_the_first_id_winning() {
        let mut doc = Document::new();
        let nested = json!({"subgraphs": [definition("inner", json!(null)), definition("outer", json!(null))]});
        let mut renamed = definition("outer", json!(null));
        renamed["name"] = json!("Second");
        doc.fields.insert(
            "definitions".into(),
            json!({"subgraphs": [definition("outer", nested), renamed, {"name": "no id"}]}),
        );
        let defs = Definitions::of(&doc);
        let ids: Vec<&str> = defs.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["outer", "inner"]);
        assert_eq!(defs.get("outer").map(|d| d.name.as_str()), Some("Merge"));
        assert_eq!(defs.broken("").map(|w| w.contains("no id")), Some(true));
        assert_eq!(defs.broken("outer"), None, "read, not broken");
    }

    #[test]
    fn boundary_slots_know_their_links_and_widget_ranks() {
        let mut doc = Document::new();
        doc.fields.insert(
            "definitions".into(),
            json!({"subgraphs": [definition("d", json!(null))]}),
        );
        let defs = Definitions::of(&doc);
        let def = defs.get("d").expect("definition");
        assert!(!def.input_is_widget(0));
        assert!(def.input_is_widget(1));
        assert_eq!(def.widget_rank(0), None);
        assert_eq!(def.widget_rank(1), Some(0));
        assert_eq!(def.output_link(0).map(|l| l.origin_id), Some(5));
        assert!(def.output_link(1).is_none());
        assert_eq!(def.input_index("ratio"), Some(1));
    }

    #[test]
    fn proxy_widgets_read_from_a_list_or_a_json_string() {
        let mut node = Node::new(1, "d", [0.0, 0.0], [1.0, 1.0]);
        node.fields.insert(
            "properties".into(),
            json!({"proxyWidgets": [["5", "ratio"], [-1, "seed"], ["7"]]}),
        );
        let want = vec![
            ("5".to_owned(), "ratio".to_owned()),
            ("-1".into(), "seed".into()),
        ];
        assert_eq!(proxy_widgets(&node), Some(want.clone()));
        node.fields.insert(
            "properties".into(),
            json!({"proxyWidgets": "[[\"5\",\"ratio\"],[\"-1\",\"seed\"]]"}),
        );
        assert_eq!(proxy_widgets(&node), Some(want));
    }

    #[test]
    fn execution_ids_map_to_their_root_node_and_sort_numerically() {
        assert_eq!(root_node_of("12:7:3"), Some(12));
        assert_eq!(root_node_of("4"), Some(4));
        assert_eq!(root_node_of("x"), None);
        let mut ids = vec!["12:10", "12:7:3", "9", "12", "12:7"];
        ids.sort_by_key(|id| execution_order_key(id));
        assert_eq!(ids, ["9", "12", "12:7", "12:7:3", "12:10"]);
    }
}
