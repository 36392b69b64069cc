//! Editing the document: a node made from its registry schema, and the edits a user makes
//! (connect, disconnect, delete, move, widget value) applied as ComfyUI's frontend applies them.
//! The canvas and the API-prompt loader both build nodes here, so a node added by hand and one
//! laid out from a prompt have the same slots, widgets and size.

use serde_json::{Value, json};

use crate::nodes::{InputKind, NodeSchema};

use super::document::{Document, InputSlot, Node, NodeId, OutputSlot};

/// A change to the document.
#[derive(Clone, Debug, PartialEq)]
pub enum Edit {
    /// Link output `slot` of `origin` to the input (or converted widget) `input` of `target`.
    Connect {
        origin: NodeId,
        slot: usize,
        target: NodeId,
        input: String,
    },
    Disconnect {
        target: NodeId,
        input: String,
    },
    /// Remove a node and every link to or from it.
    Delete(NodeId),
    Move {
        node: NodeId,
        pos: [f64; 2],
    },
    /// Set widget value `index` (in `widgets_values` order) of a node.
    Widget {
        node: NodeId,
        index: usize,
        value: Value,
    },
}

/// What builds an input of a new node: nothing (a node added by hand gets defaults), or an API
/// prompt's value or link.
#[derive(Clone, Copy, Debug)]
pub enum Given<'a> {
    Default,
    Value(&'a Value),
    Linked,
}

/// The size ComfyUI's frontend gives a node of `inputs` inputs (only a starting size: the
/// frontend recomputes it when drawing).
pub fn default_size(inputs: usize) -> [f64; 2] {
    [315.0, 60.0 + 26.0 * inputs as f64]
}

/// A new document node of a registered type: link inputs as slots, widget values from `given`
/// (defaults otherwise; a seed's `control_after_generate` starts as `"fixed"`), a widget whose
/// input is linked as a converted-widget slot, and the schema's outputs.
pub fn node_from_schema<'a>(
    schema: &NodeSchema,
    id: NodeId,
    pos: [f64; 2],
    given: impl Fn(&str) -> Given<'a>,
) -> Node {
    let mut node = Node::new(
        id,
        schema.class_type,
        pos,
        default_size(schema.inputs.len()),
    );
    let mut widgets = Vec::new();
    for spec in &schema.inputs {
        let given = given(&spec.name);
        let widget = spec.kind.is_widget();
        if !widget || matches!(given, Given::Linked) {
            let mut fields = serde_json::Map::new();
            if widget {
                fields.insert("widget".into(), json!({"name": spec.name}));
            }
            fields.insert("link".into(), Value::Null);
            node.inputs.push(InputSlot {
                name: spec.name.clone(),
                type_: json!(spec.kind.type_name()),
                link: None,
                fields,
            });
        }
        if widget {
            widgets.push(match given {
                Given::Value(v) => v.clone(),
                Given::Default | Given::Linked => spec.kind.default_value().unwrap_or(Value::Null),
            });
            if matches!(
                spec.kind,
                InputKind::Int {
                    control_after_generate: true,
                    ..
                }
            ) {
                widgets.push(json!("fixed"));
            }
        }
    }
    for o in &schema.outputs {
        node.outputs.push(OutputSlot {
            name: o.name.to_owned(),
            type_: json!(o.type_name),
            links: Some(Vec::new()),
            fields: serde_json::Map::new(),
        });
    }
    if !widgets.is_empty() {
        node.widgets_values = Some(Value::Array(widgets));
    }
    node
}

impl Document {
    /// The input of `node` named `input`, or the converted widget of that name.
    fn input_slot(&self, node: NodeId, input: &str) -> Option<&InputSlot> {
        self.node(node)?
            .inputs
            .iter()
            .find(|i| i.name == input || i.widget_name() == Some(input))
    }

    /// Applies an edit. Returns false when it no longer applies (the node or input is gone).
    pub fn apply(&mut self, edit: &Edit) -> bool {
        match edit {
            Edit::Connect {
                origin,
                slot,
                target,
                input,
            } => {
                // A converted widget input, or a subgraph input the instance's compressed list
                // left out, that the document does not list yet gets its slot now.
                let missing = self.node(*target).is_some_and(|n| {
                    !n.inputs
                        .iter()
                        .any(|i| i.name == *input || i.widget_name() == Some(input))
                });
                if missing {
                    let slot = instance_slot(self, *target, input).unwrap_or_else(|| InputSlot {
                        name: input.clone(),
                        type_: json!("*"),
                        link: None,
                        fields: serde_json::Map::from_iter([(
                            "widget".to_owned(),
                            json!({"name": input}),
                        )]),
                    });
                    if let Some(n) = self.node_mut(*target) {
                        n.inputs.push(slot);
                    }
                }
                let name = self.input_slot(*target, input).map(|i| i.name.clone());
                name.is_some_and(|name| self.connect(*origin, *slot, *target, &name).is_some())
            }
            Edit::Disconnect { target, input } => {
                let link = self.input_slot(*target, input).and_then(|i| i.link);
                if let Some(l) = link {
                    self.remove_link(l);
                }
                link.is_some()
            }
            Edit::Delete(id) => {
                let links: Vec<i64> = self
                    .links
                    .iter()
                    .filter(|l| l.origin_id == *id || l.target_id == *id)
                    .map(|l| l.id)
                    .collect();
                for l in links {
                    self.remove_link(l);
                }
                let before = self.nodes.len();
                self.nodes.retain(|n| n.id != *id);
                self.nodes.len() != before
            }
            Edit::Move { node, pos } => self.node_mut(*node).map(|n| n.pos.set(*pos)).is_some(),
            Edit::Widget { node, index, value } => self
                .node_mut(*node)
                .map(|n| set_widget(n, *index, value.clone()))
                .is_some(),
        }
    }
}

/// The serialised input slot of a subgraph instance for definition input `input`: its type,
/// and `widget` when the input carries a promoted widget (as the frontend writes it).
fn instance_slot(doc: &Document, target: NodeId, input: &str) -> Option<InputSlot> {
    let defs = crate::graph::subgraph::Definitions::of(doc);
    let def = defs.of_node(doc.node(target)?)?;
    let k = def.input_index(input)?;
    let mut fields = serde_json::Map::new();
    if def.input_is_widget(k) {
        fields.insert("widget".into(), json!({"name": input}));
    }
    Some(InputSlot {
        name: input.to_owned(),
        type_: json!(def.inputs[k].type_),
        link: None,
        fields,
    })
}

/// Sets widget value `index` of a node as every change of a value must: the positional list,
/// and `widgets_values_named` when the node has one (2026 frontends write it beside the list),
/// so a ComfyUI that restores by name reads the new value, not the old one. Used by edits,
/// `control_after_generate` and sweeps alike.
pub fn set_widget(node: &mut Node, index: usize, value: Value) {
    update_named_value(node, index, &value);
    node.set_widget_value(index, value);
}

fn update_named_value(node: &mut Node, index: usize, value: &Value) {
    let Some(Value::Object(named)) = node.fields.get_mut("widgets_values_named") else {
        return;
    };
    let Some(schema) = crate::nodes::Registry::builtin().get(&node.type_) else {
        return;
    };
    let name = schema.widget_slots().into_iter().find_map(|(pos, spec)| {
        let control = matches!(
            spec.kind,
            InputKind::Int {
                control_after_generate: true,
                ..
            }
        );
        if pos == index {
            Some(spec.name.as_str())
        } else if control && pos + 1 == index {
            Some("control_after_generate")
        } else {
            None
        }
    });
    if let Some(name) = name
        && named.contains_key(name)
    {
        named.insert(name.to_owned(), value.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nodes::Registry;

    fn merge_doc() -> Document {
        let registry = Registry::builtin();
        let mut doc = Document::new();
        for (id, class) in [(1, "CheckpointLoaderSimple"), (2, "ModelMergeSimple")] {
            let schema = registry.get(class).expect("registered");
            doc.add_node(node_from_schema(schema, id, [0.0, 0.0], |_| Given::Default));
        }
        doc
    }

    #[test]
    fn a_new_node_has_its_schemas_slots_and_defaults() {
        let doc = merge_doc();
        let merge = doc.node(2).expect("merge");
        let inputs: Vec<&str> = merge.inputs.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(inputs, ["model1", "model2"]);
        assert_eq!(merge.widget_values(), [json!(1.0)]);
        assert_eq!(merge.outputs.len(), 1);
        assert_eq!(merge.size.get(), Some(default_size(3)));
    }

    #[test]
    fn a_linked_widget_becomes_a_converted_input_and_seeds_start_fixed() {
        let registry = Registry::builtin();
        let schema = registry.get("ModelMergeSimple").expect("registered");
        let node = node_from_schema(schema, 7, [0.0, 0.0], |name| {
            if name == "ratio" {
                Given::Linked
            } else {
                Given::Default
            }
        });
        let ratio = node
            .inputs
            .iter()
            .find(|i| i.name == "ratio")
            .expect("slot");
        assert_eq!(ratio.widget_name(), Some("ratio"));
        // KSampler's seed is followed by the `control_after_generate` widget, "fixed", and a
        // given seed is kept.
        let seeded = Registry::builtin().get("KSampler").expect("KSampler");
        let node = node_from_schema(seeded, 8, [0.0, 0.0], |_| Given::Default);
        assert_eq!(&node.widget_values()[..2], [json!(0), json!("fixed")]);
        let given = json!(156680208700286_u64);
        let node = node_from_schema(seeded, 9, [0.0, 0.0], |_| Given::Value(&given));
        assert_eq!(&node.widget_values()[..2], [given.clone(), json!("fixed")]);
    }

    #[test]
    fn an_edit_keeps_widgets_values_named_in_step() {
        let mut doc = crate::graph::examples::text_to_image("a.safetensors", "b.safetensors");
        let merge = doc.first_of_type("ModelMergeSimple").expect("merge");
        let sampler = doc.first_of_type("KSampler").expect("sampler");
        for (n, named) in [
            (merge, json!({"ratio": 0.5})),
            (
                sampler,
                json!({"seed": 42, "control_after_generate": "fixed", "steps": 8}),
            ),
        ] {
            doc.node_mut(n)
                .expect("node")
                .fields
                .insert("widgets_values_named".into(), named);
        }
        let edit = |doc: &mut Document, node, index, value: Value| {
            assert!(doc.apply(&Edit::Widget { node, index, value }));
        };
        edit(&mut doc, merge, 0, json!(0.7));
        edit(&mut doc, sampler, 1, json!("randomize"));
        edit(&mut doc, sampler, 3, json!(5.0));
        let named =
            |doc: &Document, n| doc.node(n).expect("node").fields["widgets_values_named"].clone();
        assert_eq!(named(&doc, merge), json!({"ratio": 0.7}));
        assert_eq!(
            named(&doc, sampler),
            json!({"seed": 42, "control_after_generate": "randomize", "steps": 8}),
            "cfg was not named, so it is not added"
        );
    }

    #[test]
    fn connect_disconnect_and_delete_keep_links_consistent() {
        let mut doc = merge_doc();
        let connect = |input: &str| Edit::Connect {
            origin: 1,
            slot: 0,
            target: 2,
            input: input.into(),
        };
        assert!(doc.apply(&connect("model1")));
        assert!(doc.apply(&connect("model2")));
        assert_eq!(doc.links.len(), 2);
        // Connecting a widget converts it to an input.
        assert!(doc.apply(&Edit::Connect {
            origin: 1,
            slot: 0,
            target: 2,
            input: "ratio".into(),
        }));
        assert!(
            doc.node(2)
                .expect("merge")
                .inputs
                .iter()
                .any(|i| i.widget_name() == Some("ratio"))
        );
        assert!(doc.apply(&Edit::Disconnect {
            target: 2,
            input: "model2".into(),
        }));
        assert_eq!(doc.links.len(), 2);
        assert!(!doc.apply(&Edit::Disconnect {
            target: 2,
            input: "model2".into(),
        }));
        assert!(doc.apply(&Edit::Delete(1)));
        assert!(doc.links.is_empty(), "links of a deleted node go with it");
        assert!(!doc.apply(&Edit::Delete(1)));
        assert!(!doc.apply(&Edit::Move {
            node: 1,
            pos: [1.0, 2.0],
        }));
        assert!(doc.apply(&Edit::Widget {
            node: 2,
            index: 0,
            value: json!(0.25),
        }));
        assert_eq!(doc.node(2).expect("merge").widget_values(), [json!(0.25)]);
    }
}
