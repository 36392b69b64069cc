//! The API prompt: what ComfyUI's backend executes (`{id: {class_type, inputs, _meta}}`).
//!
//! Inputs keep their order (widgets first, then links, as the frontend builds them), because
//! ModelMergeBlocks takes its default ratio from the first one. A link is `[node_id, slot]`; a
//! literal list is wrapped as `{"__value__": [...]}` so it is never mistaken for a link.

use serde_json::{Map, Value, json};

/// One input value of a prompt node.
#[derive(Clone, Debug, PartialEq)]
pub enum PromptInput {
    Value(Value),
    Link { node: String, slot: usize },
}

/// One node of a prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptNode {
    pub class_type: String,
    pub inputs: Vec<(String, PromptInput)>,
    /// `_meta.title`, when the prompt had one.
    pub title: Option<String>,
}

impl PromptNode {
    pub fn input(&self, name: &str) -> Option<&PromptInput> {
        self.inputs.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
    /// Sets an input, keeping its position if it exists, appending otherwise.
    pub fn set_input(&mut self, name: &str, value: PromptInput) {
        match self.inputs.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => self.inputs.push((name.to_owned(), value)),
        }
    }
}

/// A whole prompt, in node order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Prompt {
    pub nodes: Vec<(String, PromptNode)>,
}

/// Why JSON is not an API prompt.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PromptError {
    #[error("an API prompt must be an object of nodes")]
    NotAnObject,
    #[error("prompt node {id:?} is missing the class_type property")]
    MissingClassType { id: String },
    #[error("prompt node {id:?}: {problem}")]
    BadNode { id: String, problem: String },
}

impl Prompt {
    pub fn get(&self, id: &str) -> Option<&PromptNode> {
        self.nodes.iter().find(|(i, _)| i == id).map(|(_, n)| n)
    }
    pub fn get_mut(&mut self, id: &str) -> Option<&mut PromptNode> {
        self.nodes.iter_mut().find(|(i, _)| i == id).map(|(_, n)| n)
    }

    /// Whether a JSON value looks like an API prompt: a non-empty object whose every value is an
    /// object with `class_type` (the frontend's rule on drop).
    pub fn looks_like(value: &Value) -> bool {
        match value {
            Value::Object(m) => !m.is_empty() && m.values().all(|v| v.get("class_type").is_some()),
            _ => false,
        }
    }

    pub fn from_json(value: &Value) -> Result<Prompt, PromptError> {
        let Value::Object(top) = value else {
            return Err(PromptError::NotAnObject);
        };
        let mut nodes = Vec::with_capacity(top.len());
        for (id, node) in top {
            let bad = |problem: &str| PromptError::BadNode {
                id: id.clone(),
                problem: problem.to_owned(),
            };
            let Value::Object(node) = node else {
                return Err(bad("not an object"));
            };
            let class_type = match node.get("class_type") {
                Some(Value::String(s)) => s.clone(),
                Some(_) => return Err(bad("class_type is not a string")),
                None => return Err(PromptError::MissingClassType { id: id.clone() }),
            };
            let inputs = match node.get("inputs") {
                None => Vec::new(),
                Some(Value::Object(m)) => m
                    .iter()
                    .map(|(k, v)| (k.clone(), input_from_json(v)))
                    .collect(),
                Some(_) => return Err(bad("inputs is not an object")),
            };
            let title = node
                .get("_meta")
                .and_then(|m| m.get("title"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            nodes.push((
                id.clone(),
                PromptNode {
                    class_type,
                    inputs,
                    title,
                },
            ));
        }
        Ok(Prompt { nodes })
    }

    /// The prompt as the frontend sends it: `inputs`, `class_type`, then `_meta` when titled.
    pub fn to_json(&self) -> Value {
        let mut top = Map::new();
        for (id, node) in &self.nodes {
            let inputs: Map<String, Value> = node
                .inputs
                .iter()
                .map(|(k, v)| (k.clone(), input_to_json(v)))
                .collect();
            let mut m = Map::new();
            m.insert("inputs".into(), Value::Object(inputs));
            m.insert("class_type".into(), json!(node.class_type));
            if let Some(t) = &node.title {
                m.insert("_meta".into(), json!({"title": t}));
            }
            top.insert(id.clone(), Value::Object(m));
        }
        Value::Object(top)
    }
}

fn input_from_json(v: &Value) -> PromptInput {
    match v {
        Value::Array(a) if a.len() == 2 => {
            let node = match &a[0] {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            };
            match (node, a[1].as_u64().and_then(|s| usize::try_from(s).ok())) {
                (Some(node), Some(slot)) => PromptInput::Link { node, slot },
                _ => PromptInput::Value(v.clone()),
            }
        }
        Value::Object(m) if m.len() == 1 && m.contains_key("__value__") => {
            PromptInput::Value(m["__value__"].clone())
        }
        other => PromptInput::Value(other.clone()),
    }
}

fn input_to_json(v: &PromptInput) -> Value {
    match v {
        PromptInput::Link { node, slot } => json!([node, slot]),
        PromptInput::Value(Value::Array(a)) => json!({"__value__": a}),
        PromptInput::Value(v) => v.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_links_values_and_wrapped_lists() {
        let src = json!({
            "10": {"inputs": {"input": 1.0, "middle": 0.71, "out": 0.72, "model1": ["4", 0], "model2": ["11", 0], "list": {"__value__": [1, 2]}}, "class_type": "ModelMergeBlocks", "_meta": {"title": "Blocks"}},
            "4": {"inputs": {"ckpt_name": "a.safetensors"}, "class_type": "CheckpointLoaderSimple"}
        });
        assert!(Prompt::looks_like(&src));
        let p = Prompt::from_json(&src).expect("parse");
        let n = p.get("10").expect("node");
        assert_eq!(n.inputs[0].0, "input", "order kept");
        assert_eq!(
            n.input("model1"),
            Some(&PromptInput::Link {
                node: "4".into(),
                slot: 0
            })
        );
        assert_eq!(n.input("list"), Some(&PromptInput::Value(json!([1, 2]))));
        assert_eq!(n.title.as_deref(), Some("Blocks"));
        assert_eq!(p.to_json(), src);
        assert!(!Prompt::looks_like(&json!({"nodes": [], "links": []})));
        assert!(matches!(
            Prompt::from_json(&json!({"1": {"inputs": {}}})),
            Err(PromptError::MissingClassType { .. })
        ));
    }
}
