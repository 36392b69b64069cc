//! Validation of a resolved prompt against the registry, as ComfyUI's `validate_prompt` does
//! (reference §6.1–6.2), with its error types and messages.
//!
//! Only output nodes (registered save nodes) and their ancestors are validated; other nodes are
//! reported as skipped (`unknown` for unregistered types, `unreachable` otherwise). Each output
//! is validated through its linked ancestors; an output whose ancestors fail is dropped, and the
//! prompt can run when at least one output is valid. Literal values are coerced as Python would
//! (`float()`, `int()`, `str()`, `bool()`) and written back into the prompt, so what runs — and
//! what is stored in the saved file's metadata — is the coerced prompt, as in ComfyUI. Unlike
//! ComfyUI, NaN and infinite numbers are refused.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::resolve::{Resolved, SkipReason, Skipped};
use super::subgraph::execution_order_key;
use super::{NodeError, Prompt, PromptInput};
use crate::format::pyjson::{float_repr, py_str};
use crate::model::ModelFolders;

use crate::nodes::{Choices, InputKind, InputSpec, Operation, Registry, types_compatible};

/// The outcome of validating a prompt.
#[derive(Clone, Debug)]
pub struct Validation {
    /// The prompt with literal values coerced (what runs, and what is saved as metadata).
    pub prompt: Prompt,
    /// Output nodes that can run, in id order.
    pub outputs: Vec<String>,
    pub errors: Vec<NodeError>,
    pub skipped: Vec<Skipped>,
    pub warnings: Vec<String>,
}

impl Validation {
    /// Whether anything can run.
    pub fn ok(&self) -> bool {
        !self.outputs.is_empty()
    }

    /// The `--json` form of `amalgam validate`.
    pub fn to_json(&self) -> Value {
        json!({
            "ok": self.ok(),
            "outputs": self.outputs,
            "errors": self.errors,
            "skipped": self.skipped,
            "warnings": self.warnings,
            // What would run (ComfyUI's "Export (API)"): subgraphs flattened, values coerced.
            "prompt": self.prompt.to_json(),
        })
    }
}

/// Deepest chain of linked nodes validated (deeper is refused rather than risking the stack).
const MAX_DEPTH: usize = 2_000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Visiting,
    Valid,
    Invalid,
}

struct Validator<'a> {
    registry: &'a Registry,
    folders: &'a ModelFolders,
    prompt: Prompt,
    index: HashMap<String, usize>,
    state: HashMap<String, State>,
    errors: Vec<NodeError>,
    lists: HashMap<&'static str, Vec<String>>,
}

/// Validates a resolved document (or API prompt) against the registry and the model folders.
/// Validates an API prompt (nothing muted or bypassed) against the built-in registry: what the
/// CLI, the tests and the fuzz targets run a prompt file through.
pub fn validate_prompt(prompt: Prompt, folders: &ModelFolders) -> Validation {
    let resolved = Resolved {
        prompt,
        ..Resolved::default()
    };
    validate(resolved, Registry::builtin(), folders)
}

pub fn validate(resolved: Resolved, registry: &Registry, folders: &ModelFolders) -> Validation {
    let Resolved {
        prompt,
        mut skipped,
        errors: resolve_errors,
        warnings,
    } = resolved;
    let index = prompt
        .nodes
        .iter()
        .enumerate()
        .map(|(i, (id, _))| (id.clone(), i))
        .collect();
    let mut v = Validator {
        registry,
        folders,
        prompt,
        index,
        state: HashMap::new(),
        errors: resolve_errors,
        lists: HashMap::new(),
    };

    let mut outputs: Vec<String> = v
        .prompt
        .nodes
        .iter()
        .filter(|(_, n)| registry.get(&n.class_type).is_some_and(|s| s.output_node))
        .map(|(id, _)| id.clone())
        .collect();
    outputs.sort_by_key(|id| execution_order_key(id));
    if outputs.is_empty() {
        v.errors.push(NodeError::new(
            None,
            "prompt_no_outputs",
            "Prompt has no outputs",
            "",
        ));
    }
    let mut good = Vec::new();
    for id in &outputs {
        if v.node(id, 0) {
            good.push(id.clone());
        }
    }

    // Everything not visited is not needed by any output.
    for (id, n) in &v.prompt.nodes {
        if !v.state.contains_key(id) {
            let reason = if registry.get(&n.class_type).is_some() {
                SkipReason::Unreachable
            } else {
                SkipReason::Unknown
            };
            skipped.push(Skipped {
                node: id.clone(),
                class_type: n.class_type.clone(),
                reason,
            });
        }
    }
    skipped.sort_by_key(|s| execution_order_key(&s.node));
    Validation {
        prompt: v.prompt,
        outputs: good,
        errors: v.errors,
        skipped,
        warnings,
    }
}

impl Validator<'_> {
    fn err(
        &mut self,
        node: &str,
        kind: &str,
        message: impl Into<String>,
        details: impl Into<String>,
    ) {
        self.errors
            .push(NodeError::new(Some(node), kind, message, details));
    }

    /// Validates one node and its ancestors; true when all are valid.
    fn node(&mut self, id: &str, depth: usize) -> bool {
        match self.state.get(id) {
            Some(State::Valid) => return true,
            Some(State::Invalid) => return false,
            Some(State::Visiting) => {
                self.err(
                    id,
                    "dependency_cycle",
                    "Dependency cycle detected",
                    format!("node #{id} depends on itself"),
                );
                return false;
            }
            None => {}
        }
        if depth > MAX_DEPTH {
            self.err(
                id,
                "invalid_prompt",
                "Graph is too deep",
                format!("more than {MAX_DEPTH} linked nodes in a chain"),
            );
            return false;
        }
        self.state.insert(id.to_owned(), State::Visiting);
        let ok = self.check(id, depth);
        // A cycle found below may already have marked this node invalid.
        let ok = ok && self.state.get(id) != Some(&State::Invalid);
        self.state.insert(
            id.to_owned(),
            if ok { State::Valid } else { State::Invalid },
        );
        ok
    }

    fn check(&mut self, id: &str, depth: usize) -> bool {
        let Some(&i) = self.index.get(id) else {
            return false;
        };
        let class_type = self.prompt.nodes[i].1.class_type.clone();
        let Some(schema) = self.registry.get(&class_type) else {
            self.err(
                id,
                "invalid_prompt",
                format!("Cannot execute because node {class_type} is not supported by Amalgam (it is kept in the workflow but not run)."),
                format!("Node ID '#{id}'"),
            );
            return false;
        };
        if let Operation::Unsupported(why) = &schema.operation {
            self.err(
                id,
                "invalid_prompt",
                format!("Cannot execute node {class_type}: {why}."),
                format!("Node ID '#{id}'"),
            );
            return false;
        }
        let mut valid = true;
        for spec in &schema.inputs {
            let given = self.prompt.nodes[i].1.input(&spec.name).cloned();
            match given {
                None => {
                    if spec.required {
                        self.err(
                            id,
                            "required_input_missing",
                            "Required input is missing",
                            spec.name.clone(),
                        );
                        valid = false;
                    }
                }
                Some(PromptInput::Link { node, slot }) => {
                    valid &= self.link(id, spec, &node, slot, depth);
                }
                Some(PromptInput::Value(value)) => match self.literal(id, spec, &value) {
                    Some(coerced) => {
                        if coerced != value {
                            self.prompt.nodes[i]
                                .1
                                .set_input(&spec.name, PromptInput::Value(coerced));
                        }
                    }
                    None => valid = false,
                },
            }
        }
        valid
    }

    fn link(&mut self, id: &str, spec: &InputSpec, from: &str, slot: usize, depth: usize) -> bool {
        let expected = spec.kind.type_name();
        let Some(&j) = self.index.get(from) else {
            self.err(
                id,
                "required_input_missing",
                "Required input is missing",
                format!("{} (linked node #{from} is not in the prompt)", spec.name),
            );
            return false;
        };
        let from_class = self.prompt.nodes[j].1.class_type.clone();
        if let Some(from_schema) = self.registry.get(&from_class) {
            let received = from_schema.outputs.get(slot).map(|o| o.type_name);
            match received {
                Some(t) if types_compatible(t, expected) => {}
                Some(t) => {
                    self.err(
                        id,
                        "return_type_mismatch",
                        "Return type mismatch between linked nodes",
                        format!(
                            "{}, received_type({t}) mismatch input_type({expected})",
                            spec.name
                        ),
                    );
                    return false;
                }
                None => {
                    self.err(
                        id,
                        "return_type_mismatch",
                        "Return type mismatch between linked nodes",
                        format!(
                            "{}, node #{from} ({from_class}) has no output {slot}",
                            spec.name
                        ),
                    );
                    return false;
                }
            }
        }
        self.node(from, depth + 1)
    }

    /// Coerces a literal as ComfyUI does and checks its range or list; `None` if invalid (the
    /// error is recorded).
    fn literal(&mut self, id: &str, spec: &InputSpec, value: &Value) -> Option<Value> {
        let name = spec.name.as_str();
        let type_name = spec.kind.type_name();
        let bad_type = |this: &mut Self, error: &str| {
            this.err(
                id,
                "invalid_input_type",
                format!("Failed to convert an input value to a {type_name} value"),
                format!("{name}, {}, {error}", py_str(value)),
            );
            None
        };
        match &spec.kind {
            InputKind::Link(_) => Some(value.clone()),
            InputKind::Float { min, max, .. } => {
                let Some(f) = py_float(value) else {
                    return bad_type(self, "could not convert to float");
                };
                if !f.is_finite() {
                    return bad_type(self, "not a finite number");
                }
                self.range(id, name, f, *min, *max, float_repr)?;
                Some(json!(f))
            }
            InputKind::Int { min, max, .. } => {
                let Some(n) = py_int(value) else {
                    return bad_type(self, "invalid literal for int()");
                };
                self.range(id, name, n as f64, *min as f64, *max as f64, |v| {
                    format!("{}", v as i64)
                })?;
                Some(json!(n))
            }
            InputKind::String { .. } => Some(Value::String(py_str(value))),
            InputKind::Boolean { .. } => Some(Value::Bool(py_truthy(value))),
            InputKind::Combo(choices) => {
                let given = py_str(value);
                let (list, normalised) = match choices {
                    Choices::Fixed(c) => (
                        c.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
                        given.clone(),
                    ),
                    // Workflows saved on Windows use `\` in model names.
                    Choices::ModelFolder(kind) => {
                        (self.model_list(kind).to_vec(), given.replace('\\', "/"))
                    }
                };
                if list.contains(&normalised) {
                    Some(Value::String(normalised))
                } else {
                    let shown = if list.len() > 20 {
                        format!("(list of length {})", list.len())
                    } else {
                        format!(
                            "[{}]",
                            list.iter()
                                .map(|s| format!("'{s}'"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    };
                    self.err(
                        id,
                        "value_not_in_list",
                        "Value not in list",
                        format!("{name}: '{given}' not in {shown}"),
                    );
                    None
                }
            }
        }
    }

    fn range(
        &mut self,
        id: &str,
        name: &str,
        v: f64,
        min: f64,
        max: f64,
        show: impl Fn(f64) -> String,
    ) -> Option<()> {
        if v < min {
            self.err(
                id,
                "value_smaller_than_min",
                format!("Value {} smaller than min of {}", show(v), show(min)),
                name,
            );
            return None;
        }
        if v > max {
            self.err(
                id,
                "value_bigger_than_max",
                format!("Value {} bigger than max of {}", show(v), show(max)),
                name,
            );
            return None;
        }
        Some(())
    }

    fn model_list(&mut self, kind: &'static str) -> &[String] {
        let folders = self.folders;
        self.lists.entry(kind).or_insert_with(|| folders.list(kind))
    }
}

/// Python's `float(x)` for JSON values.
fn py_float(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        Value::String(s) => {
            let t = s.trim();
            match t.to_ascii_lowercase().as_str() {
                "nan" | "+nan" | "-nan" => Some(f64::NAN),
                "inf" | "+inf" | "infinity" | "+infinity" => Some(f64::INFINITY),
                "-inf" | "-infinity" => Some(f64::NEG_INFINITY),
                _ => t.replace('_', "").parse().ok(),
            }
        }
        _ => None,
    }
}

/// Python's `int(x)` for JSON values (floats truncate; strings must be integers).
fn py_int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            let f = n.as_f64()?;
            (f.is_finite() && f.abs() < 9.2e18).then(|| f.trunc() as i64)
        }),
        Value::Bool(b) => Some(i64::from(*b)),
        Value::String(s) => s.trim().replace('_', "").parse().ok(),
        _ => None,
    }
}

/// Python's `bool(x)`: `"false"` is true, as in ComfyUI.
fn py_truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}
