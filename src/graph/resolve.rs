//! Document → prompt, as ComfyUI's frontend (`graphToPrompt`) builds it (reference §4.2–4.4,
//! and `../shared/reference/subgraphs.md` §1.9 for subgraphs).
//!
//! - Muted nodes (mode 2) are left out and links from them are dropped; bypassed nodes (mode 4)
//!   are left out and each consumer is rewired to the bypassed node's matching input, through
//!   chains of bypasses; `Reroute` passes its input through; a `PrimitiveNode` writes its value
//!   into the widget input it feeds; `Note` / `MarkdownNote` vanish.
//! - Widget values map to inputs by position (`widgets_values[i]` is the i-th widget in schema
//!   order, `control_after_generate` taking an extra slot); link inputs resolve by the serialised
//!   input's name and overwrite a widget of the same name.
//! - Subgraph instances are flattened: each active instance's inner nodes join the prompt with
//!   execution ids `12:5` (`12:7:3` when nested), in definition order after the root node that
//!   holds them. A link from the input box (−10) climbs to the instance's input: its outer link
//!   if it has one, else the instance's promoted value (G2 `proxyWidgets`, or G1/G3 positional
//!   `widgets_values`), else the inner widget keeps its own value. A G2 proxy with no link
//!   behind it (a seed, say) also takes the instance's value when it has one: G2 frontends
//!   wrote such values through to the inner widget (so on their files both agree), and a
//!   current frontend migrates each proxy into a promoted input holding the instance's value;
//!   this is what makes a value edited on the instance in Amalgam run. An instance's output follows
//!   the inner link into the output box (−20). A muted or bypassed instance is not expanded; a
//!   bypassed one passes its inputs through by position, as any bypassed node.
//! - Deliberate divergence: a muted or bypassed *nested* instance is not expanded either (the
//!   frontend still runs what is inside, which would save files the user switched off); a
//!   warning says so.
//! - Execution ids come from the file; a 2026 frontend may remint colliding inner ids on load
//!   (§1.8), so its `prompt` can name the same inner node differently. The merged tensors are
//!   the same; only the ids in the saved metadata differ.
//! - What the frontend refuses to queue is an error here: recursive definitions, links to
//!   nothing inside a definition, an input box wired straight to the output box.
//! - Unknown node types are kept in the prompt with their link inputs, so that validation can say
//!   precisely which output needs them; nothing unknown is ever executed.
//! - Legacy group nodes are refused with the fix: a current frontend converts them to subgraphs.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use crate::nodes::{Operation, Registry, types_compatible};

use super::NodeError;
use super::document::{Document, DocumentIndex, Mode, Node, NodeId};
use super::prompt::{Prompt, PromptInput, PromptNode};
use super::subgraph::{Definition, Definitions, SUBGRAPH_INPUT_ID, is_group_node, proxy_widgets};

/// Why a node of the document is not in the prompt, or not run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SkipReason {
    Muted,
    Bypassed,
    Unknown,
    Unreachable,
}

/// A document node that does not run.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Skipped {
    /// Its execution id (`"12"`, or `"12:5"` inside a subgraph).
    pub node: String,
    #[serde(rename = "type")]
    pub class_type: String,
    pub reason: SkipReason,
}

/// The prompt built from a document, with what was left out and why.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resolved {
    pub prompt: Prompt,
    /// Muted and bypassed nodes (unknown and unreachable ones are added by validation).
    pub skipped: Vec<Skipped>,
    /// Nodes that cannot be turned into prompt nodes (group nodes, broken subgraphs).
    pub errors: Vec<NodeError>,
    /// Links that were dropped while resolving (bypass with no matching input, cycles), and
    /// subgraph divergences worth knowing.
    pub warnings: Vec<String>,
}

/// What a link resolves to after looking through reroutes, bypasses, primitives and subgraph
/// boundaries.
enum Origin {
    /// An output of a node in the prompt (execution id, slot).
    Node(String, usize),
    Literal(Value),
    /// Nothing: the input keeps its widget value, if any. A non-empty reason is a warning.
    Dropped(String),
    /// What the frontend refuses to queue.
    Invalid(String),
}

/// Most reroute/bypass/boundary hops followed before a chain is declared a cycle.
const MAX_HOPS: usize = 10_000;
/// Deepest nesting of subgraph instances expanded.
const MAX_NESTING: usize = 64;
/// Most nodes subgraphs may expand into: nesting multiplies (ten instances of a subgraph that
/// holds ten instances of another… is exponential), so a hostile file is refused here rather
/// than expanded into millions of nodes.
const MAX_EXPANDED_NODES: usize = 100_000;

fn is_virtual(registry: &Registry, type_: &str) -> bool {
    registry
        .get(type_)
        .is_some_and(|s| s.operation == Operation::Virtual)
}

/// Builds the prompt for a document.
pub fn resolve(doc: &Document, registry: &Registry) -> Resolved {
    let defs = Definitions::of(doc);
    let mut flat = Flattener {
        registry,
        defs: &defs,
        scopes: vec![Scope {
            ix: doc.index(),
            def: None,
            instance: None,
            parent: None,
            path: Vec::new(),
            proxies: None,
        }],
        inside: HashMap::new(),
        out: Resolved::default(),
        too_many: false,
    };
    let mut nodes: Vec<&Node> = doc.nodes.iter().collect();
    nodes.sort_by_key(|n| n.id);
    let mut order = Vec::new();
    for node in nodes {
        flat.visit(0, node, &mut order);
    }
    let mut included = HashSet::new();
    let mut pending: Vec<(String, PromptNode)> = Vec::new();
    for (scope, node) in order {
        if let Some((id, prompt_node)) = flat.emit(scope, node) {
            included.insert(id.clone());
            pending.push((id, prompt_node));
        }
    }
    // Inputs that point at nodes not in the prompt (muted, refused) are deleted, as the frontend
    // does; a required one then fails validation as missing.
    for (_, node) in &mut pending {
        node.inputs.retain(|(_, v)| match v {
            PromptInput::Link { node, .. } => included.contains(node),
            PromptInput::Value(_) => true,
        });
    }
    flat.out.prompt.nodes = pending;
    flat.out
}

/// One graph being flattened: the root, or the inside of one instance.
struct Scope<'a> {
    ix: DocumentIndex<'a>,
    /// The definition this scope is an instance of (`None` for the root).
    def: Option<&'a Definition>,
    /// The instance node, in the parent scope.
    instance: Option<&'a Node>,
    parent: Option<usize>,
    /// Instance ids from the root down to this scope.
    path: Vec<NodeId>,
    /// The instance's G2 `proxyWidgets`, parsed once for all its inner nodes and links.
    proxies: Option<Vec<(String, String)>>,
}

struct Flattener<'a> {
    registry: &'a Registry,
    defs: &'a Definitions,
    scopes: Vec<Scope<'a>>,
    /// (scope, instance id) → the scope of that instance's inside.
    inside: HashMap<(usize, NodeId), usize>,
    out: Resolved,
    /// Set once the instance limit was reached (reported once).
    too_many: bool,
}

impl<'a> Flattener<'a> {
    fn execution_id(&self, scope: usize, node: NodeId) -> String {
        let mut id = String::new();
        for p in &self.scopes[scope].path {
            id.push_str(&p.to_string());
            id.push(':');
        }
        id.push_str(&node.to_string());
        id
    }

    fn error(&mut self, id: &str, message: String, details: &str) {
        self.out
            .errors
            .push(NodeError::new(Some(id), "invalid_prompt", message, details));
    }

    /// Records a muted or bypassed node as skipped; returns why, or `None` if it runs.
    fn skip(&mut self, id: &str, node: &Node) -> Option<SkipReason> {
        let reason = match node.mode {
            Mode::Never => SkipReason::Muted,
            Mode::Bypass => SkipReason::Bypassed,
            _ => return None,
        };
        self.out.skipped.push(Skipped {
            node: id.to_owned(),
            class_type: node.type_.clone(),
            reason,
        });
        Some(reason)
    }

    /// Step 1 of the frontend: lists the nodes to emit, expanding active instances in place.
    fn visit(&mut self, scope: usize, node: &'a Node, order: &mut Vec<(usize, &'a Node)>) {
        let id = self.execution_id(scope, node.id);
        if is_group_node(&node.type_) {
            self.error(
                &id,
                format!(
                    "Node #{id} ({}) is a legacy group node, which Amalgam does not run",
                    node.display_title()
                ),
                "open and re-save the workflow in a current ComfyUI, which converts group nodes to subgraphs (or right-click it ▸ Convert to Subgraph), then load it again",
            );
            return;
        }
        if let Some(why) = self.defs.broken(&node.type_) {
            self.error(
                &id,
                format!(
                    "Node #{id} ({}) is a subgraph whose definition cannot be read: {why}",
                    node.display_title()
                ),
                "re-save the workflow in ComfyUI, or replace the subgraph",
            );
            return;
        }
        let Some(def) = self.defs.of_node(node) else {
            order.push((scope, node));
            return;
        };
        if let Some(reason) = self.skip(&id, node) {
            if scope != 0 {
                self.out.warnings.push(format!(
                    "subgraph #{id} ({}) is {} inside another subgraph: Amalgam runs nothing inside it; ComfyUI's frontend would still run its inner nodes",
                    def.name,
                    if reason == SkipReason::Muted { "muted" } else { "bypassed" },
                ));
            }
            return;
        }
        let mut chain = Some(scope);
        while let Some(s) = chain {
            if self.scopes[s].def.is_some_and(|d| d.id == def.id) {
                self.error(
                    &id,
                    format!(
                        "Subgraph #{id} ({}) contains itself (RecursionError in ComfyUI's frontend)",
                        def.name
                    ),
                    "a subgraph cannot hold an instance of itself, directly or through another subgraph",
                );
                return;
            }
            chain = self.scopes[s].parent;
        }
        if order.len() + self.scopes.len() + def.graph.nodes.len() > MAX_EXPANDED_NODES {
            if !std::mem::replace(&mut self.too_many, true) {
                self.error(
                    &id,
                    format!(
                        "The workflow's subgraphs expand to more than {MAX_EXPANDED_NODES} nodes"
                    ),
                    "nested subgraphs multiply; Amalgam does not expand this many",
                );
            }
            return;
        }
        if self.scopes[scope].path.len() >= MAX_NESTING {
            self.error(
                &id,
                format!("Subgraph #{id} is nested more than {MAX_NESTING} deep"),
                "",
            );
            return;
        }
        let mut path = self.scopes[scope].path.clone();
        path.push(node.id);
        let inner = self.scopes.len();
        self.scopes.push(Scope {
            ix: def.graph.index(),
            def: Some(def),
            instance: Some(node),
            parent: Some(scope),
            path,
            proxies: proxy_widgets(node),
        });
        self.inside.insert((scope, node.id), inner);
        for m in &def.graph.nodes {
            self.visit(inner, m, order);
        }
    }

    /// Steps 2–4 of the frontend: the prompt node of one real node, or `None` if it is left out.
    fn emit(&mut self, scope: usize, node: &'a Node) -> Option<(String, PromptNode)> {
        if is_virtual(self.registry, &node.type_) {
            return None;
        }
        let id = self.execution_id(scope, node.id);
        if self.skip(&id, node).is_some() {
            return None;
        }
        let mut inputs: Vec<(String, PromptInput)> = Vec::new();
        if let Some(schema) = self.registry.get(&node.type_) {
            let values = node.widget_values();
            for (pos, spec) in schema.widget_slots() {
                let value = values
                    .get(pos)
                    .cloned()
                    .or_else(|| spec.kind.default_value())
                    .unwrap_or(Value::Null);
                inputs.push((spec.name.clone(), PromptInput::Value(value)));
            }
        }
        // G2 proxies of this node's widgets: the instance's value, where it has one.
        for (name, value) in self.proxied_values(scope, node) {
            set_input(&mut inputs, &name, PromptInput::Value(value));
        }
        for (slot_index, slot) in node.inputs.iter().enumerate() {
            if slot.link.is_none() {
                continue;
            }
            let name = slot.widget_name().unwrap_or(&slot.name).to_owned();
            let mut hops = 0;
            match self.input_origin(scope, node, slot_index, slot.type_name(), &mut hops) {
                Origin::Node(origin, origin_slot) => set_input(
                    &mut inputs,
                    &name,
                    PromptInput::Link {
                        node: origin,
                        slot: origin_slot,
                    },
                ),
                Origin::Literal(v) => set_input(&mut inputs, &name, PromptInput::Value(v)),
                Origin::Dropped(why) => {
                    if !why.is_empty() {
                        self.out
                            .warnings
                            .push(format!("node #{id} input {name:?}: {why}"));
                    }
                }
                Origin::Invalid(why) => {
                    self.error(
                        &id,
                        format!("Node #{id} input {name:?}: {why}"),
                        "ComfyUI's frontend refuses to queue this workflow too",
                    );
                    return None;
                }
            }
        }
        Some((
            id,
            PromptNode {
                class_type: node.type_.clone(),
                inputs,
                title: node.title.clone(),
            },
        ))
    }

    /// The values the instance around `scope` gives `node`'s widgets through G2 `proxyWidgets`
    /// entries that name the node (non-null host values only; a hole keeps the inner value).
    fn proxied_values(&self, scope: usize, node: &Node) -> Vec<(String, Value)> {
        let sc = &self.scopes[scope];
        let (Some(instance), Some(proxies)) = (sc.instance, &sc.proxies) else {
            return Vec::new();
        };
        let values = instance.widget_values();
        let id = node.id.to_string();
        proxies
            .iter()
            .enumerate()
            .filter(|(_, (n, w))| *n == id && w != "control_after_generate")
            .filter_map(|(i, (_, w))| {
                let v = values.get(i).filter(|v| !v.is_null())?;
                Some((w.clone(), v.clone()))
            })
            .collect()
    }

    /// Where input `slot` of `node` (in `scope`) gets its value: the frontend's `resolveInput`.
    fn input_origin(
        &self,
        scope: usize,
        node: &'a Node,
        slot: usize,
        consumer_type: &str,
        hops: &mut usize,
    ) -> Origin {
        *hops += 1;
        if *hops > MAX_HOPS {
            return Origin::Dropped(
                "reroute or bypass chain loops back on itself; link ignored".into(),
            );
        }
        let sc = &self.scopes[scope];
        let Some(link_id) = node.inputs.get(slot).and_then(|s| s.link) else {
            return Origin::Dropped(String::new());
        };
        let Some(link) = sc.ix.link(link_id).filter(|l| l.target_id == node.id) else {
            return match sc.def {
                // At the root the loader has already reported the dangling link.
                None => Origin::Dropped(String::new()),
                Some(def) => Origin::Invalid(format!(
                    "inside subgraph {:?} node #{} names link {link_id}, which does not exist (InvalidLinkError)",
                    def.name, node.id
                )),
            };
        };
        if link.origin_id == SUBGRAPH_INPUT_ID {
            let (Some(def), Some(instance), Some(parent)) = (sc.def, sc.instance, sc.parent) else {
                return Origin::Dropped("link from a subgraph input outside any subgraph".into());
            };
            let Some(boundary) = def.inputs.get(link.origin_slot) else {
                return Origin::Invalid(format!(
                    "subgraph {:?} has no input {} (SlotIndexError)",
                    def.name, link.origin_slot
                ));
            };
            if let Some(outer) = instance
                .inputs
                .iter()
                .position(|i| i.name == boundary.name && i.link.is_some())
            {
                return self.input_origin(parent, instance, outer, consumer_type, hops);
            }
            return match self.promoted_value(scope, link.origin_slot, node, slot) {
                Some(v) => Origin::Literal(v),
                None => Origin::Dropped(String::new()),
            };
        }
        let Some(origin) = sc.ix.node(link.origin_id) else {
            return match sc.def {
                None => Origin::Dropped(String::new()),
                Some(def) => Origin::Invalid(format!(
                    "inside subgraph {:?} link {} starts at node #{}, which does not exist (No inner node DTO found)",
                    def.name, link.id, link.origin_id
                )),
            };
        };
        self.output_origin(scope, origin, link.origin_slot, consumer_type, hops)
    }

    /// What output `slot` of `origin` stands for: the frontend's `resolveOutput`.
    fn output_origin(
        &self,
        scope: usize,
        origin: &'a Node,
        slot: usize,
        consumer_type: &str,
        hops: &mut usize,
    ) -> Origin {
        match origin.type_.as_str() {
            "Reroute" => return self.input_origin(scope, origin, 0, consumer_type, hops),
            "PrimitiveNode" => {
                return match origin.widget_values().first() {
                    Some(v) => Origin::Literal(v.clone()),
                    None => Origin::Dropped("primitive node has no value".into()),
                };
            }
            _ => {}
        }
        let def = self.defs.of_node(origin);
        match origin.mode {
            Mode::Never => return Origin::Dropped(String::new()),
            Mode::Bypass => {
                let output_type = origin.outputs.get(slot).map_or("*", |o| o.type_name());
                // An instance's slots are its definition's (its serialised inputs are a
                // compressed subset), so its bypass matches by the definition's positions.
                let (types, names): (Vec<&str>, Vec<&str>) = match def {
                    Some(d) => d
                        .inputs
                        .iter()
                        .map(|i| (i.type_.as_str(), i.name.as_str()))
                        .unzip(),
                    None => origin
                        .inputs
                        .iter()
                        .map(|i| (i.type_name(), i.name.as_str()))
                        .unzip(),
                };
                let Some(i) = bypass_input(&types, slot, output_type, consumer_type) else {
                    return Origin::Dropped(format!(
                        "bypassed node #{} has no input of type {consumer_type} to pass through; link dropped",
                        self.execution_id(scope, origin.id)
                    ));
                };
                let serialised = match def {
                    Some(_) => origin.inputs.iter().position(|s| s.name == names[i]),
                    None => Some(i),
                };
                return match serialised {
                    Some(s) => self.input_origin(scope, origin, s, consumer_type, hops),
                    None => Origin::Dropped(String::new()),
                };
            }
            _ => {}
        }
        if let Some(def) = def {
            let Some(&inner) = self.inside.get(&(scope, origin.id)) else {
                // Not expanded (refused, already reported).
                return Origin::Dropped(String::new());
            };
            let Some(link) = def.output_link(slot) else {
                return Origin::Dropped(format!(
                    "output {slot} of subgraph #{} ({}) is not connected inside it",
                    self.execution_id(scope, origin.id),
                    def.name
                ));
            };
            if link.origin_id == SUBGRAPH_INPUT_ID {
                return Origin::Invalid(format!(
                    "subgraph {:?} wires an input straight to its output {slot} (No output node found)",
                    def.name
                ));
            }
            let Some(inner_node) = self.scopes[inner].ix.node(link.origin_id) else {
                return Origin::Invalid(format!(
                    "output {slot} of subgraph {:?} comes from node #{}, which does not exist (No inner node DTO found)",
                    def.name, link.origin_id
                ));
            };
            *hops += 1;
            if *hops > MAX_HOPS {
                return Origin::Dropped("subgraph outputs loop back on themselves".into());
            }
            return self.output_origin(inner, inner_node, link.origin_slot, consumer_type, hops);
        }
        Origin::Node(self.execution_id(scope, origin.id), slot)
    }

    /// The value instance `scope` gives its (unlinked) input `k`, for `consumer`'s input `slot`:
    /// G2 through `proxyWidgets`, G1/G3 by the input's rank among widget inputs. `None` (absent
    /// or `null`) leaves the inner widget's own value.
    fn promoted_value(
        &self,
        scope: usize,
        k: usize,
        consumer: &Node,
        slot: usize,
    ) -> Option<Value> {
        let sc = &self.scopes[scope];
        let (def, instance) = (sc.def?, sc.instance?);
        let values = instance.widget_values();
        let index = match &sc.proxies {
            Some(proxies) => {
                let input = consumer.inputs.get(slot)?;
                let widget = input.widget_name().unwrap_or(&input.name);
                let inner_id = consumer.id.to_string();
                let boundary = &def.inputs.get(k)?.name;
                proxies.iter().position(|(node, name)| {
                    (*node == inner_id && name == widget) || (node == "-1" && name == boundary)
                })?
            }
            None => def.widget_rank(k)?,
        };
        values.get(index).filter(|v| !v.is_null()).cloned()
    }
}

fn set_input(inputs: &mut Vec<(String, PromptInput)>, name: &str, value: PromptInput) {
    match inputs.iter_mut().find(|(n, _)| n == name) {
        Some(slot) => slot.1 = value,
        None => inputs.push((name.to_owned(), value)),
    }
}

/// Which input of a bypassed node stands in for its output `slot` (ComfyUI frontend's
/// `_getBypassSlotIndex`), given the types of its inputs in slot order.
fn bypass_input(
    inputs: &[&str],
    slot: usize,
    output_type: &str,
    consumer_type: &str,
) -> Option<usize> {
    if output_type == "*" {
        return if slot < inputs.len() {
            Some(slot)
        } else if !inputs.is_empty() {
            Some(0)
        } else {
            None
        };
    }
    let compatible =
        |t: &str| types_compatible(t, output_type) && types_compatible(t, consumer_type);
    if let Some(t) = inputs.get(slot)
        && compatible(t)
    {
        return Some(slot);
    }
    if let Some(i) = inputs.iter().position(|t| *t == consumer_type) {
        return Some(i);
    }
    inputs.iter().position(|t| compatible(t))
}
