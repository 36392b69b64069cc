//! A subgraph instance on the canvas: one node with the definition's inputs as ports (the
//! instance's serialised list is a compressed subset), its promoted widgets inline and editable
//! (a change writes the instance's own `widgets_values`, which is what runs and what ComfyUI
//! reads back), and the definition's outputs.

use egui_node_graph2 as eng;

use crate::graph::Node;
use crate::graph::subgraph::{Definition, Promoted};
use crate::nodes::{InputKind, Registry};

use super::{Graph, SlotType, WidgetValue};

/// Adds the ports and widgets of instance `node` of `def` to editor node `id`.
pub(super) fn add_instance_params(
    graph: &mut Graph,
    id: eng::NodeId,
    node: &Node,
    def: &Definition,
    promoted: &[Promoted],
) {
    for (k, slot) in def.inputs.iter().enumerate() {
        let linked = node.inputs.iter().any(|i| {
            i.link.is_some() && (i.name == slot.name || i.widget_name() == Some(&slot.name))
        });
        // A promoted widget is edited inline unless a link feeds it; every other input is a port.
        if def.input_is_widget(k) && !linked && promoted.iter().any(|p| p.name == slot.name) {
            continue;
        }
        graph.add_input_param(
            id,
            slot.name.clone(),
            SlotType(slot.type_.clone()),
            WidgetValue::default(),
            eng::InputParamKind::ConnectionOnly,
            true,
        );
    }
    let registry = Registry::builtin();
    for p in promoted {
        let kind = p
            .inner
            .as_ref()
            .and_then(|(class_type, widget)| {
                let schema = registry.get(class_type)?;
                let spec = schema.inputs.iter().find(|s| s.name == *widget)?;
                Some(spec.kind.clone())
            })
            .or_else(|| kind_from_value(&p.value));
        graph.add_input_param(
            id,
            p.name.clone(),
            SlotType(kind.as_ref().map_or("*", InputKind::type_name).to_owned()),
            WidgetValue {
                node: node.id,
                index: p.index,
                value: p.value.clone(),
                kind,
            },
            eng::InputParamKind::ConstantOnly,
            true,
        );
    }
    for o in &def.outputs {
        graph.add_output_param(id, o.name.clone(), SlotType(o.type_.clone()));
    }
}

/// A widget for a promoted value whose inner node Amalgam does not know: text and booleans are
/// edited as such, integers without a range; anything else (a float with no known range, a
/// combo with no known list) is shown read-only.
fn kind_from_value(value: &serde_json::Value) -> Option<InputKind> {
    match value {
        serde_json::Value::String(_) => Some(InputKind::String {
            default: "",
            multiline: true,
        }),
        serde_json::Value::Bool(_) => Some(InputKind::Boolean { default: false }),
        serde_json::Value::Number(n) if n.is_i64() => Some(InputKind::Int {
            default: 0,
            min: i64::MIN,
            max: i64::MAX,
            step: 1,
            control_after_generate: false,
        }),
        _ => None,
    }
}
