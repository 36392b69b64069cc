//! Frontend-only nodes: they shape the graph but never reach a prompt.

use super::types::ANY;
use super::{InputKind, InputSpec, NodeSchema, Operation, link, output};

fn text() -> InputSpec {
    InputSpec {
        name: "text".into(),
        kind: InputKind::String {
            default: "",
            multiline: true,
        },
        required: true,
    }
}

pub(super) fn schemas() -> Vec<NodeSchema> {
    let virtual_node = |class_type, inputs, outputs, description| NodeSchema {
        class_type,
        display_name: class_type,
        category: "utils",
        description,
        inputs,
        outputs,
        output_node: false,
        operation: Operation::Virtual,
    };
    vec![
        virtual_node("Note", vec![text()], vec![], "A text note."),
        virtual_node("MarkdownNote", vec![text()], vec![], "A Markdown note."),
        virtual_node(
            "Reroute",
            vec![InputSpec {
                required: false,
                ..link("", ANY)
            }],
            vec![output("", ANY)],
            "Passes a link through, to tidy wiring.",
        ),
        virtual_node(
            "PrimitiveNode",
            vec![],
            vec![output("connect to widget input", ANY)],
            "Holds one widget value and writes it into every widget input it is linked to.",
        ),
    ]
}
