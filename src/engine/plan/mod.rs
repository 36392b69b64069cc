//! From a validated prompt to a plan: every output file's tensors (names, dtypes, shapes, in
//! write order) and, per tensor, the recipe that produces its bytes — before any tensor is
//! computed.
//!
//! MODEL and CLIP values are lazy, as in ComfyUI (`add_patches`): a base checkpoint plus an
//! ordered list of patches, each holding the other model's value (itself lazy) and the
//! `(strength_patch, strength_model)` rule of the node that made it. Planning a key walks that
//! chain once and records, per patch, whether it multiplies (`mm ≠ 1`) and whether it adds
//! (`s ≠ 0` and the shapes match — a mismatch is reported and only the multiply applies, the
//! quirk the inpaint add-difference recipe relies on). Evaluation then needs no decisions.
//!
//! One job per file: `ir` is the kernel's contract; this file interprets nodes; `patch`
//! turns patch chains into expressions; `lora` and `adapters` read LoRA files; `save` lays out
//! what each save node writes.

mod adapters;
mod images;
mod ir;
mod lora;
mod patch;
mod save;

pub use ir::*;
pub use save::sort_for_writing;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;

use crate::format::pyjson;
use crate::graph::{Prompt, PromptInput};
use crate::model::ModelFolders;
use crate::model::components::Component;
use crate::nodes::{MergeRule, MergeTarget, Operation, Registry};

use super::source::Source;
use super::{EngineError, Precision, Warning};
use patch::{Patch, PatchKind, Rule};

/// Model sampling set by a ModelSampling node.
#[derive(Clone, Debug, PartialEq)]
pub enum SamplingOverride {
    Discrete {
        sampling: String,
        zsnr: bool,
    },
    ContinuousEdm {
        sampling: String,
        sigma_max: f64,
        sigma_min: f64,
    },
}

/// A MODEL or CLIP value.
#[derive(Clone, Debug)]
struct Weights {
    source: usize,
    component: Component,
    patches: Vec<Arc<Patch>>,
    sampling: Option<SamplingOverride>,
    /// CLIPSetLastLayer's `stop_at_clip_layer`, for a CLIP value.
    clip_layer: Option<i64>,
}

#[derive(Clone, Debug)]
enum NodeValue {
    Weights(Weights),
    Vae(usize),
    /// The output of an image step (CONDITIONING, LATENT or IMAGE).
    Step(usize),
}

struct Planner<'a> {
    prompt: &'a Prompt,
    registry: &'a Registry,
    folders: &'a ModelFolders,
    precision: Precision,
    sources: Vec<Arc<Source>>,
    by_path: HashMap<(PathBuf, bool), usize>,
    values: HashMap<String, Vec<NodeValue>>,
    warnings: Vec<Warning>,
    workflow: Option<&'a Value>,
    metadata: &'a super::SaveMetadata,
    weights: Vec<PlannedWeights>,
    weights_index: HashMap<images::WeightsKey, usize>,
    image_steps: Vec<ImageStep>,
}

/// Builds the plan for the given output nodes of a validated prompt. `workflow` is the UI
/// workflow to embed (when the job came from one), unless `metadata` disables it.
pub fn build(
    prompt: &Prompt,
    outputs: &[String],
    workflow: Option<&Value>,
    folders: &ModelFolders,
    precision: Precision,
    metadata: &super::SaveMetadata,
) -> Result<Plan, EngineError> {
    let mut p = Planner {
        prompt,
        registry: Registry::builtin(),
        folders,
        precision,
        sources: Vec::new(),
        by_path: HashMap::new(),
        values: HashMap::new(),
        warnings: Vec::new(),
        workflow,
        metadata,
        weights: Vec::new(),
        weights_index: HashMap::new(),
        image_steps: Vec::new(),
    };
    let mut files = Vec::new();
    for id in outputs {
        let (_, schema) = p.node(id)?;
        match schema.operation {
            Operation::SaveImage { temp } => p.image_output(id, temp)?,
            _ => files.extend(p.save_node(id)?),
        }
    }
    let mut image_metadata = Vec::new();
    if !p.image_steps.is_empty() && !metadata.disabled {
        image_metadata.push(("prompt".to_owned(), pyjson::dumps(&prompt.to_json())));
        if let Some(w) = workflow {
            image_metadata.push(("workflow".to_owned(), pyjson::dumps(w)));
        }
    }
    Ok(Plan {
        sources: p.sources,
        files,
        weights: p.weights,
        image_steps: p.image_steps,
        image_metadata,
        warnings: p.warnings,
        output_dir: folders.output_dir().to_owned(),
        temp_dir: folders.temp_dir(),
    })
}

fn node_err(node: &str, class_type: &str, message: impl Into<String>) -> EngineError {
    EngineError::Node {
        node: node.to_owned(),
        class_type: class_type.to_owned(),
        message: message.into(),
    }
}

impl Planner<'_> {
    fn node(
        &self,
        id: &str,
    ) -> Result<(&crate::graph::PromptNode, &crate::nodes::NodeSchema), EngineError> {
        let n = self
            .prompt
            .get(id)
            .ok_or_else(|| node_err(id, "?", "node is not in the prompt"))?;
        let s = self
            .registry
            .get(&n.class_type)
            .ok_or_else(|| node_err(id, &n.class_type, "node type is not supported"))?;
        Ok((n, s))
    }

    /// Records a warning about `node` (and `key`) for the job's report.
    fn warn(&mut self, node: &str, key: Option<String>, message: String) {
        self.warnings.push(Warning {
            node: Some(node.to_owned()),
            key,
            message,
        });
    }

    fn literal(&self, id: &str, name: &str) -> Result<Value, EngineError> {
        let (n, _) = self.node(id)?;
        match n.input(name) {
            Some(PromptInput::Value(v)) => Ok(v.clone()),
            _ => Err(node_err(
                id,
                &n.class_type,
                format!("input {name:?} has no value"),
            )),
        }
    }

    fn number(&self, id: &str, name: &str) -> Result<f64, EngineError> {
        let v = self.literal(id, name)?;
        v.as_f64()
            .ok_or_else(|| node_err(id, "", format!("input {name:?} is not a number")))
    }

    fn string(&self, id: &str, name: &str) -> Result<String, EngineError> {
        Ok(pyjson::py_str(&self.literal(id, name)?))
    }

    /// The value an input is linked to.
    fn input(&mut self, id: &str, name: &str) -> Result<NodeValue, EngineError> {
        let (n, _) = self.node(id)?;
        let class_type = n.class_type.clone();
        let Some(PromptInput::Link { node, slot }) = n.input(name).cloned() else {
            return Err(node_err(
                id,
                &class_type,
                format!("input {name:?} is not connected"),
            ));
        };
        let outs = self.evaluate(&node)?;
        outs.get(slot).cloned().ok_or_else(|| {
            node_err(
                id,
                &class_type,
                format!("input {name:?}: node #{node} has no output {slot}"),
            )
        })
    }

    fn weights(&mut self, id: &str, name: &str) -> Result<Weights, EngineError> {
        match self.input(id, name)? {
            NodeValue::Weights(w) => Ok(w),
            NodeValue::Vae(_) | NodeValue::Step(_) => Err(node_err(
                id,
                "",
                format!("input {name:?} is not a MODEL or CLIP"),
            )),
        }
    }

    fn open(
        &mut self,
        id: &str,
        class_type: &str,
        kind: &'static str,
        name: &str,
        vae_only: bool,
    ) -> Result<usize, EngineError> {
        let path = self.folders.resolve(kind, name).ok_or_else(|| {
            node_err(
                id,
                class_type,
                format!("Model in folder '{kind}' with filename '{name}' not found."),
            )
        })?;
        let canonical = path.canonicalize().unwrap_or(path.clone());
        if let Some(&i) = self.by_path.get(&(canonical.clone(), vae_only)) {
            return Ok(i);
        }
        let source = if vae_only {
            Source::open_vae(&path)
        } else {
            Source::open_checkpoint(&path)
        }
        .map_err(|e| EngineError::Read {
            node: id.to_owned(),
            error: e,
        })?;
        if let Some(key) = source.checkpoint.quantization_key() {
            return Err(node_err(
                id,
                class_type,
                format!(
                    "{}: key {key:?} marks scaled or quantised weights (stored value × scale), which Amalgam does not dequantise yet; it refuses rather than merge or run the raw values — use an fp16/bf16/fp32 release of this model",
                    path.display()
                ),
            ));
        }
        self.sources.push(Arc::new(source));
        let i = self.sources.len() - 1;
        self.by_path.insert((canonical, vae_only), i);
        Ok(i)
    }

    /// Evaluates a (non-save) node into its output values, once.
    fn evaluate(&mut self, id: &str) -> Result<Vec<NodeValue>, EngineError> {
        if let Some(v) = self.values.get(id) {
            return Ok(v.clone());
        }
        let (n, schema) = self.node(id)?;
        let class_type = n.class_type.clone();
        let op = schema.operation.clone();
        let out = match op {
            Operation::LoadCheckpoint => {
                let name = self.string(id, "ckpt_name")?;
                let s = self.open(id, &class_type, "checkpoints", &name, false)?;
                if self.sources[s].keys(Component::Model).is_empty() {
                    return Err(node_err(
                        id,
                        &class_type,
                        format!(
                            "ERROR: Could not detect model type of: {}",
                            self.sources[s].path.display()
                        ),
                    ));
                }
                let w = |component| {
                    NodeValue::Weights(Weights {
                        source: s,
                        component,
                        patches: Vec::new(),
                        sampling: None,
                        clip_layer: None,
                    })
                };
                vec![w(Component::Model), w(Component::Clip), NodeValue::Vae(s)]
            }
            Operation::LoadVae => {
                let name = self.string(id, "vae_name")?;
                let s = self.open(id, &class_type, "vae", &name, true)?;
                if self.sources[s].keys(Component::Vae).is_empty() {
                    return Err(node_err(
                        id,
                        &class_type,
                        format!(
                            "{} has no VAE weights (encoder.*/decoder.* keys)",
                            self.sources[s].path.display()
                        ),
                    ));
                }
                vec![NodeValue::Vae(s)]
            }
            Operation::Merge { target, rule } => {
                let (a, b) = match target {
                    MergeTarget::Model => ("model1", "model2"),
                    MergeTarget::Clip => ("clip1", "clip2"),
                };
                let mut base = self.weights(id, a)?;
                let other = self.weights(id, b)?;
                let rule = match rule {
                    MergeRule::Simple => {
                        let ratio = self.number(id, "ratio")?;
                        Rule::Fixed {
                            s: 1.0 - ratio,
                            mm: ratio,
                        }
                    }
                    MergeRule::Subtract => {
                        let m = self.number(id, "multiplier")?;
                        Rule::Fixed { s: -m, mm: m }
                    }
                    MergeRule::Add => Rule::Fixed { s: 1.0, mm: 1.0 },
                    MergeRule::Blocks => {
                        // kwargs order: the prompt's input order, links excluded.
                        let (n, _) = self.node(id)?;
                        let ratios = n
                            .inputs
                            .iter()
                            .filter_map(|(k, v)| match v {
                                PromptInput::Value(v) => v.as_f64().map(|r| (k.clone(), r)),
                                PromptInput::Link { .. } => None,
                            })
                            .collect();
                        Rule::Blocks(ratios)
                    }
                };
                self.report_unmatched(id, &class_type, &base, &other);
                base.patches.push(Arc::new(Patch {
                    node: id.to_owned(),
                    kind: PatchKind::Merge { other, rule },
                }));
                vec![NodeValue::Weights(base)]
            }
            Operation::ModelSamplingDiscrete => {
                let mut m = self.weights(id, "model")?;
                let sampling = self.string(id, "sampling")?;
                let zsnr = self.literal(id, "zsnr")?.as_bool().unwrap_or(false);
                m.sampling = Some(SamplingOverride::Discrete { sampling, zsnr });
                vec![NodeValue::Weights(m)]
            }
            Operation::ModelSamplingContinuousEdm => {
                let mut m = self.weights(id, "model")?;
                m.sampling = Some(SamplingOverride::ContinuousEdm {
                    sampling: self.string(id, "sampling")?,
                    sigma_max: self.number(id, "sigma_max")?,
                    sigma_min: self.number(id, "sigma_min")?,
                });
                vec![NodeValue::Weights(m)]
            }
            Operation::LoadLora { clip: with_clip } => {
                self.load_lora(id, &class_type, with_clip)?
            }
            Operation::TextEncode
            | Operation::SetClipLayer
            | Operation::EmptyLatent
            | Operation::RepeatLatent
            | Operation::Sample { .. }
            | Operation::VaeDecode
            | Operation::VaeEncode
            | Operation::VaeEncodeInpaint
            | Operation::SetNoiseMask
            | Operation::LoadImage => self.image_node(id, &class_type, &op)?,
            Operation::SaveCheckpoint
            | Operation::SaveImage { .. }
            | Operation::SaveModel
            | Operation::SaveClip
            | Operation::SaveVae
            | Operation::Unsupported(_)
            | Operation::Virtual => {
                return Err(node_err(
                    id,
                    &class_type,
                    "this node has no outputs to link from",
                ));
            }
        };
        self.values.insert(id.to_owned(), out.clone());
        Ok(out)
    }
}
