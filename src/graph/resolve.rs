//! Document → prompt, as ComfyUI's frontend (`graphToPrompt`) builds it (reference §4.2–4.4).
//!
//! - Muted nodes (mode 2) are left out and links from them are dropped; bypassed nodes (mode 4)
//!   are left out and each consumer is rewired to the bypassed node's matching input, through
//!   chains of bypasses; `Reroute` passes its input through; a `PrimitiveNode` writes its value
//!   into the widget input it feeds; `Note` / `MarkdownNote` vanish.
//! - Widget values map to inputs by position (`widgets_values[i]` is the i-th widget in schema
//!   order, `control_after_generate` taking an extra slot); link inputs resolve by the serialised
//!   input's name and overwrite a widget of the same name.
//! - Unknown node types are kept in the prompt with their link inputs, so that validation can say
//!   precisely which output needs them; nothing unknown is ever executed.
//! - Subgraph instances and legacy group nodes are refused with a clear error (they would need
//!   expanding, which Amalgam does not do yet).

use std::collections::HashSet;

use serde_json::Value;

use crate::nodes::{Operation, Registry, types_compatible};

use super::NodeError;
use super::document::{Document, DocumentIndex, Link, Mode, Node, NodeId};
use super::prompt::{Prompt, PromptInput, PromptNode};

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
    /// Nodes that cannot be turned into prompt nodes (subgraphs, group nodes).
    pub errors: Vec<NodeError>,
    /// Links that were dropped while resolving (bypass with no matching input, cycles).
    pub warnings: Vec<String>,
}

/// What a link resolves to after looking through reroutes, bypasses and primitives.
enum Origin {
    Node(NodeId, usize),
    Literal(Value),
    Dropped(String),
}

/// Most reroute/bypass hops followed before a chain is declared a cycle.
const MAX_HOPS: usize = 10_000;

fn is_virtual(registry: &Registry, type_: &str) -> bool {
    registry
        .get(type_)
        .is_some_and(|s| s.operation == Operation::Virtual)
}

fn is_subgraph_or_group(doc: &Document, type_: &str) -> bool {
    if type_.starts_with("workflow>") || type_.starts_with("workflow/") {
        return true;
    }
    doc.fields
        .get("definitions")
        .and_then(|d| d.get("subgraphs"))
        .and_then(Value::as_array)
        .is_some_and(|subs| {
            subs.iter()
                .any(|s| s.get("id").and_then(Value::as_str) == Some(type_))
        })
}

/// Builds the prompt for a document.
pub fn resolve(doc: &Document, registry: &Registry) -> Resolved {
    let mut out = Resolved::default();
    let ix = doc.index();
    let mut nodes: Vec<&Node> = doc.nodes.iter().collect();
    nodes.sort_by_key(|n| n.id);
    let mut included = HashSet::new();
    let mut pending: Vec<(NodeId, PromptNode)> = Vec::new();

    for node in nodes {
        if is_virtual(registry, &node.type_) {
            continue;
        }
        match node.mode {
            Mode::Never => {
                out.skipped.push(skipped(node, SkipReason::Muted));
                continue;
            }
            Mode::Bypass => {
                out.skipped.push(skipped(node, SkipReason::Bypassed));
                continue;
            }
            _ => {}
        }
        let id = node.id.to_string();
        if is_subgraph_or_group(doc, &node.type_) {
            out.errors.push(NodeError::new(
                Some(&id),
                "invalid_prompt",
                format!(
                    "Node #{} ({}) is a subgraph or group node, which Amalgam cannot run yet",
                    node.id,
                    node.display_title()
                ),
                "convert it back to plain nodes in ComfyUI (Unpack Subgraph) and load the workflow again",
            ));
            continue;
        }
        let mut inputs: Vec<(String, PromptInput)> = Vec::new();
        if let Some(schema) = registry.get(&node.type_) {
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
        for (slot_index, slot) in node.inputs.iter().enumerate() {
            let Some(link) = ix.input_link(node.id, slot_index) else {
                continue;
            };
            let name = slot.widget_name().unwrap_or(&slot.name).to_owned();
            match origin_of(&ix, link, slot.type_name(), &mut HashSet::new()) {
                Origin::Node(origin, origin_slot) => set_input(
                    &mut inputs,
                    &name,
                    PromptInput::Link {
                        node: origin.to_string(),
                        slot: origin_slot,
                    },
                ),
                Origin::Literal(v) => set_input(&mut inputs, &name, PromptInput::Value(v)),
                Origin::Dropped(why) => {
                    if !why.is_empty() {
                        out.warnings
                            .push(format!("node #{} input {name:?}: {why}", node.id));
                    }
                }
            }
        }
        included.insert(node.id);
        pending.push((
            node.id,
            PromptNode {
                class_type: node.type_.clone(),
                inputs,
                title: node.title.clone(),
            },
        ));
    }

    // Inputs that point at nodes not in the prompt (muted, refused) are deleted, as the frontend
    // does; a required one then fails validation as missing.
    for (_, node) in &mut pending {
        node.inputs.retain(|(_, v)| match v {
            PromptInput::Link { node, .. } => node
                .parse::<NodeId>()
                .is_ok_and(|id| included.contains(&id)),
            PromptInput::Value(_) => true,
        });
    }
    out.prompt.nodes = pending
        .into_iter()
        .map(|(id, n)| (id.to_string(), n))
        .collect();
    out
}

fn skipped(node: &Node, reason: SkipReason) -> Skipped {
    Skipped {
        node: node.id.to_string(),
        class_type: node.type_.clone(),
        reason,
    }
}

fn set_input(inputs: &mut Vec<(String, PromptInput)>, name: &str, value: PromptInput) {
    match inputs.iter_mut().find(|(n, _)| n == name) {
        Some(slot) => slot.1 = value,
        None => inputs.push((name.to_owned(), value)),
    }
}

/// Follows a link back through reroutes, bypassed nodes and primitives to the node (or value)
/// that really feeds it. `consumer_type` is the type the consuming input expects.
fn origin_of(
    doc: &DocumentIndex,
    link: &Link,
    consumer_type: &str,
    seen: &mut HashSet<i64>,
) -> Origin {
    if !seen.insert(link.id) || seen.len() > MAX_HOPS {
        return Origin::Dropped(
            "reroute or bypass chain loops back on itself; link ignored".into(),
        );
    }
    let Some(origin) = doc.node(link.origin_id) else {
        return Origin::Dropped(String::new());
    };
    match origin.type_.as_str() {
        "Reroute" => {
            return match doc.input_link(origin.id, 0) {
                Some(l) => origin_of(doc, l, consumer_type, seen),
                None => Origin::Dropped(String::new()),
            };
        }
        "PrimitiveNode" => {
            return match origin.widget_values().first() {
                Some(v) => Origin::Literal(v.clone()),
                None => Origin::Dropped("primitive node has no value".into()),
            };
        }
        _ => {}
    }
    match origin.mode {
        Mode::Never => Origin::Dropped(String::new()),
        Mode::Bypass => {
            let output_type = origin
                .outputs
                .get(link.origin_slot)
                .map_or("*", |o| o.type_name());
            match bypass_input(origin, link.origin_slot, output_type, consumer_type) {
                Some(i) => match doc.input_link(origin.id, i) {
                    Some(l) => origin_of(doc, l, consumer_type, seen),
                    None => Origin::Dropped(String::new()),
                },
                None => Origin::Dropped(format!(
                    "bypassed node #{} has no input of type {consumer_type} to pass through; link dropped",
                    origin.id
                )),
            }
        }
        _ => Origin::Node(origin.id, link.origin_slot),
    }
}

/// Which input of a bypassed node stands in for its output `slot` (ComfyUI frontend's order).
fn bypass_input(node: &Node, slot: usize, output_type: &str, consumer_type: &str) -> Option<usize> {
    let inputs = &node.inputs;
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
    if let Some(i) = inputs.get(slot)
        && compatible(i.type_name())
    {
        return Some(slot);
    }
    if let Some(i) = inputs.iter().position(|i| i.type_name() == consumer_type) {
        return Some(i);
    }
    inputs.iter().position(|i| compatible(i.type_name()))
}
