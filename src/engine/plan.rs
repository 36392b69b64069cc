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

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;

use crate::format::DType;
use crate::format::pyjson;
use crate::format::safetensors::TensorSpec;
use crate::graph::{Prompt, PromptInput};
use crate::model::ModelFolders;
use crate::model::arch::{Architecture, Prediction, Variant};
use crate::model::components::{Component, SaveFate, keys_added_on_save, save_fate};
use crate::model::lora::Part;
use crate::nodes::{MergeRule, MergeTarget, Operation, Registry};

use super::source::{Source, clip_save_key, vae_save_prefix};
use super::{EngineError, Precision, Warning};

/// A tensor of an input file: where its bytes are and how they are stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Leaf {
    /// Index into [`Plan::sources`].
    pub source: usize,
    pub offset: u64,
    pub dtype: DType,
    pub numel: usize,
}

/// One patch applied to a running f32 weight: `w *= mm` (when `mm ≠ 1`), then `w += s * sub`.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// `strength_model`, applied when it is not 1.
    pub mm: Option<f32>,
    /// `strength_patch` and what is added: another model's value, or a LoRA delta.
    pub add: Option<(f32, Term)>,
    /// A DoRA LoRA: `w + s * sub` (`s` is then the LoRA's own `alpha / rank`) is rescaled per
    /// channel and blended in at the LoRA's strength, as ComfyUI's `weight_decompose`.
    pub dora: Option<Dora>,
    /// The elements the step applies to, when it patches part of the weight; the others are
    /// left untouched (not even `+ 0`, which would turn `-0.0` into `0.0`).
    pub window: Option<Window>,
}

/// A contiguous range of a flattened weight that a step patches (a block of rows), the term
/// being indexed from its start; with `swap_halves`, the term's two halves are exchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: usize,
    pub len: usize,
    pub swap_halves: bool,
}

impl Window {
    /// The parts of elements `first .. first + n` inside the window: one, or two when the
    /// swapped halves meet inside the range.
    pub fn pieces(&self, first: usize, n: usize) -> [Option<Piece>; 2] {
        let (lo, hi) = (
            first.max(self.start),
            (first + n).min(self.start + self.len),
        );
        let half = self.len / 2;
        let split = if self.swap_halves {
            self.start + half
        } else {
            hi
        };
        let piece = |l: usize, h: usize| {
            (l < h).then(|| {
                let local = l - self.start;
                let term = match (self.swap_halves, local < half) {
                    (false, _) => local,
                    (true, true) => local + half,
                    (true, false) => local - half,
                };
                Piece {
                    offset: l - first,
                    term,
                    local,
                    len: h - l,
                }
            })
        };
        [piece(lo, hi.min(split)), piece(lo.max(split), hi)]
    }
}

/// A run of elements a step applies to: `len` elements from `offset` (relative to the range
/// being evaluated), which are the term's elements from `term` and the patched part's from
/// `local`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub offset: usize,
    pub term: usize,
    pub local: usize,
    pub len: usize,
}

impl Step {
    /// The runs of elements `first .. first + n` this step applies to.
    pub fn pieces(&self, first: usize, n: usize) -> [Option<Piece>; 2] {
        match &self.window {
            Some(w) => w.pieces(first, n),
            None => [
                Some(Piece {
                    offset: 0,
                    term: first,
                    local: first,
                    len: n,
                }),
                None,
            ],
        }
    }
}

/// The weight decomposition of a DoRA LoRA (ComfyUI's `weight_decompose`), for a weight of `out`
/// rows of `inner = in_channels · khw` elements. With `wc = w + alpha · delta`:
/// `wc' = wc · f32(dora_scale[c]) / (‖·‖[c] + ε)` per channel `c`, then `w' = wc'` at strength 1
/// or `w' = w + strength · (wc' − w)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Dora {
    /// `dora_scale`: one value per channel, or one for all.
    pub scale: Leaf,
    /// Which channels, and so whose norm: see [`DoraAxis`].
    pub axis: DoraAxis,
    /// The LoRA's strength, or `None` when it is exactly 1 (ComfyUI then takes `wc'` as is).
    pub strength: Option<f32>,
    pub inner: usize,
    pub in_channels: usize,
    /// Per channel, `f32(dora_scale[c]) / (norm[c] + ε)`: whole-tensor values, computed by
    /// [`super::kernel::prepare`] before any chunk of the tensor is evaluated.
    pub factors: Option<Arc<[f32]>>,
}

/// The axis a DoRA's `dora_scale` runs along, which ComfyUI decides by `dora_scale.shape[0]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DoraAxis {
    /// Per output row, normalised by the row norms of the weight *before* the LoRA.
    Output,
    /// Per input channel, normalised by the norms of `wc` over rows (and kernel positions).
    Input,
}

impl Dora {
    /// How many channels the axis has, for a weight of `out` rows.
    pub fn channels(&self, out: usize) -> usize {
        match self.axis {
            DoraAxis::Output => out,
            DoraAxis::Input => self.in_channels,
        }
    }

    /// The channel of element `e` of the flattened weight.
    pub fn channel(&self, e: usize) -> usize {
        match self.axis {
            DoraAxis::Output => e / self.inner,
            DoraAxis::Input => (e % self.inner) / (self.inner / self.in_channels),
        }
    }
}

/// What a step adds.
#[derive(Clone, Debug, PartialEq)]
pub enum Term {
    /// Another model's (lazily evaluated) weight.
    Weights(Expr),
    /// A LoRA's `up @ down`, flattened to the weight's shape.
    Lora(LoraTerm),
    /// A LoKr's `kron(w1, w2)`.
    Kron(KronTerm),
}

/// A factor matrix of a LoKr: stored whole, or as the product of two stored factors, or (the
/// second factor of a conv LoKr) as a Tucker product `Σ_i a[i, c] · Σ_j t[i, j, x] · b[j, d]`
/// with `a: [rank, c]`, `b: [rank, d]`, `t: [rank, rank, kh, kw]`.
#[derive(Clone, Debug, PartialEq)]
pub enum Factor {
    Full(Leaf),
    Product {
        a: Leaf,
        b: Leaf,
        rank: usize,
    },
    Tucker {
        a: Leaf,
        b: Leaf,
        t: Leaf,
        rank: usize,
        khw: usize,
    },
}

/// `kron(w1, w2)` for `w1: [a, b]` and `w2: [c, d]` or `[c, d, h, w]`; the weight is
/// `[a·c, b·d(, h, w)]`.
#[derive(Clone, Debug, PartialEq)]
pub struct KronTerm {
    pub w1: Factor,
    pub w2: Factor,
    /// `[a, b]` and `[c, d, h·w]`.
    pub w1_shape: [usize; 2],
    pub w2_shape: [usize; 3],
}

/// The factors of one LoRA delta: `up` is `[out, rank]`, `down` is `[rank, inner]` (any
/// trailing dimensions flattened), and `out · inner` equals the weight's element count. A LoHa
/// has a second pair, and its delta is the element-wise product of the two matrix products.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraTerm {
    pub up: Leaf,
    pub down: Leaf,
    pub out: usize,
    pub rank: usize,
    pub inner: usize,
    /// LoHa's `hada_w2_a`, `hada_w2_b` and their rank.
    pub hadamard: Option<(Leaf, Leaf, usize)>,
    /// LoCon's Tucker core `lora_mid` `[rank, rank, kh, kw]` (or a Tucker LoHa's `hada_t1`), with
    /// the down factor's input channels and `kh·kw`: the down factor becomes `[rank, in, kh, kw]`
    /// first.
    pub mid: Option<(Leaf, usize, usize)>,
    /// A Tucker LoHa's second core `hada_t2`, applied to the second pair's down factor alike.
    pub mid2: Option<Leaf>,
    /// The up factors are stored `[rank, out]` (a Tucker LoHa's `hada_w1_a`, `hada_w2_a`).
    pub up_transposed: bool,
}

/// A lazily evaluated weight: a base tensor and the steps applied to it, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub leaf: Leaf,
    pub steps: Vec<Step>,
}

impl Expr {
    /// Depth of nested expressions (scratch buffers needed to evaluate).
    pub fn depth(&self) -> usize {
        1 + self
            .steps
            .iter()
            .filter_map(|s| {
                s.add.as_ref().map(|(_, t)| match t {
                    Term::Weights(e) => e.depth(),
                    Term::Lora(_) | Term::Kron(_) => 1,
                })
            })
            .max()
            .unwrap_or(0)
    }
}

/// How one output tensor's bytes are produced.
#[derive(Clone, Debug, PartialEq)]
pub enum Recipe {
    /// The input bytes unchanged.
    Copy(Leaf),
    /// Evaluate in f32, then round once to `out`. `round_inputs` rounds every input value to
    /// that dtype first (ComfyUI's load dtype).
    Compute {
        expr: Expr,
        out: DType,
        round_inputs: Option<DType>,
    },
    /// Fixed bytes (markers, re-created `position_ids`).
    Bytes(Arc<[u8]>),
}

/// One tensor of an output file.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedTensor {
    pub spec: TensorSpec,
    pub recipe: Recipe,
}

/// What kind of save made a file (decides metadata).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveKind {
    Checkpoint,
    Model,
    Clip,
    Vae,
}

/// One file to write.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedFile {
    /// Prompt id of the save node.
    pub node: String,
    pub class_type: String,
    pub kind: SaveKind,
    /// `filename_prefix` as given (substituted and numbered at write time).
    pub prefix: String,
    /// Tensors in write order (safetensors' order: dtype descending, then name).
    pub tensors: Vec<PlannedTensor>,
    /// Metadata except the `modelspec.title`, which needs the final name.
    pub metadata: Vec<(String, String)>,
    /// Whether to add `modelspec.title = "<name> <counter>"`.
    pub modelspec_title: bool,
}

impl PlannedFile {
    pub fn data_bytes(&self) -> u64 {
        self.tensors.iter().filter_map(|t| t.spec.byte_len()).sum()
    }
}

/// Everything a job will write.
#[derive(Debug)]
pub struct Plan {
    pub sources: Vec<Arc<Source>>,
    pub files: Vec<PlannedFile>,
    pub warnings: Vec<Warning>,
    pub output_dir: PathBuf,
}

impl Plan {
    pub fn tensors_total(&self) -> usize {
        self.files.iter().map(|f| f.tensors.len()).sum()
    }
    pub fn bytes_total(&self) -> u64 {
        self.files.iter().map(PlannedFile::data_bytes).sum()
    }
}

/// Per-key `(strength_patch, strength_model)` of a merge.
#[derive(Clone, Debug, PartialEq)]
enum Rule {
    Fixed {
        s: f64,
        mm: f64,
    },
    /// Ratios by block-name prefix, in the prompt's input order; the first is the default.
    Blocks(Vec<(String, f64)>),
}

impl Rule {
    fn strengths(&self, key: &str) -> (f64, f64) {
        match self {
            Rule::Fixed { s, mm } => (*s, *mm),
            Rule::Blocks(ratios) => {
                let mut ratio = ratios.first().map_or(1.0, |r| r.1);
                let mut longest = 0;
                for (prefix, r) in ratios {
                    if key.starts_with(prefix.as_str()) && prefix.len() > longest {
                        ratio = *r;
                        longest = prefix.len();
                    }
                }
                (1.0 - ratio, ratio)
            }
        }
    }
}

#[derive(Clone, Debug)]
struct Patch {
    node: String,
    kind: PatchKind,
}

#[derive(Clone, Debug)]
enum PatchKind {
    /// ComfyUI's merge patch: the other model's value, weighed by the node's rule.
    Merge { other: Weights, rule: Rule },
    /// A LoRA's deltas for the keys it matched, at `strength` (strength_model is 1).
    Lora { set: Arc<LoraSet>, strength: f64 },
}

/// The matched deltas of one LoRA file, by key of the patched component.
#[derive(Debug, Default)]
struct LoraSet {
    /// Several entries for one key when a file patches several parts of a fused weight.
    per_key: HashMap<String, Vec<LoraEntry>>,
}

/// What a LoRA file adds to one key.
#[derive(Debug)]
struct LoraEntry {
    delta: LoraDelta,
    /// `alpha / rank`, or 1 for a full difference.
    scale: f64,
    /// DoRA's `dora_scale` and its shape, when the file has one for this key.
    dora: Option<(Leaf, Vec<usize>)>,
    /// The part of the weight patched, when not all of it.
    part: Option<Part>,
}

/// LoRA names → the key they patch: whole weights, and (for Flux's diffusers names) parts.
struct LoraTargets {
    whole: HashMap<String, String>,
    parts: HashMap<String, (String, Option<Part>)>,
}

impl LoraTargets {
    fn get(&self, name: &str) -> Option<(&str, Option<Part>)> {
        self.whole
            .get(name)
            .map(|k| (k.as_str(), None))
            .or_else(|| self.parts.get(name).map(|(k, p)| (k.as_str(), *p)))
    }
}

/// One key's delta in a LoRA file.
#[derive(Clone, Debug)]
enum LoraDelta {
    /// A low-rank (LoRA, LoHa) product.
    Factors(LoraTerm),
    /// A full weight-shaped difference (`diff`, `diff_b`), and its shape.
    Full(Leaf, Vec<usize>),
    /// A LoKr, and the number of elements it produces.
    Kron(KronTerm, usize),
}

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
}

#[derive(Clone, Debug)]
enum NodeValue {
    Weights(Weights),
    Vae(usize),
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
}

/// Builds the plan for the given output nodes of a validated prompt. `workflow` is the UI
/// workflow to embed (when the job came from one).
pub fn build(
    prompt: &Prompt,
    outputs: &[String],
    workflow: Option<&Value>,
    folders: &ModelFolders,
    precision: Precision,
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
    };
    let mut files = Vec::new();
    for id in outputs {
        files.extend(p.save_node(id)?);
    }
    Ok(Plan {
        sources: p.sources,
        files,
        warnings: p.warnings,
        output_dir: folders.output_dir().to_owned(),
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
            NodeValue::Vae(_) => Err(node_err(
                id,
                "",
                format!("input {name:?} is a VAE, not a MODEL or CLIP"),
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
            source: e,
        })?;
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
            Operation::SaveCheckpoint
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

    /// LoraLoader / LoraLoaderModelOnly: one LoRA patch on the MODEL and one on the CLIP.
    fn load_lora(
        &mut self,
        id: &str,
        class_type: &str,
        with_clip: bool,
    ) -> Result<Vec<NodeValue>, EngineError> {
        let mut model = self.weights(id, "model")?;
        let mut clip = if with_clip {
            Some(self.weights(id, "clip")?)
        } else {
            None
        };
        let strength_model = self.number(id, "strength_model")?;
        let strength_clip = if with_clip {
            self.number(id, "strength_clip")?
        } else {
            0.0
        };
        let outputs = |model: Weights, clip: Option<Weights>| {
            let mut v = vec![NodeValue::Weights(model)];
            v.extend(clip.map(NodeValue::Weights));
            v
        };
        // As in ComfyUI: both strengths 0 returns the inputs unchanged.
        if strength_model == 0.0 && strength_clip == 0.0 {
            return Ok(outputs(model, clip));
        }
        let name = self.string(id, "lora_name")?;
        let lora = self.open(id, class_type, "loras", &name, false)?;
        let arch = self.sources[model.source].architecture();
        let levels = if arch == Architecture::Sdxl { 3 } else { 4 };
        let unet_keys = self.sources[model.source].keys(Component::Model).to_vec();
        let clip_keys = clip
            .as_ref()
            .map(|c| self.sources[c.source].keys(Component::Clip).to_vec())
            .unwrap_or_default();
        // Transformer models' diffusers names, some of them parts of fused weights; the model
        // width is the rows of the image input projection.
        let rows_of = |key: &str| {
            self.sources[model.source]
                .get(Component::Model, key)
                .and_then(|r| r.shape.first().copied())
                .unwrap_or(0)
        };
        let parts = match arch {
            Architecture::Flux => {
                crate::model::lora::flux_diffusers_map(&unet_keys, rows_of("img_in.weight"))
            }
            Architecture::Sd3 => {
                crate::model::lora::sd3_diffusers_map(&unet_keys, rows_of("x_embedder.proj.weight"))
            }
            _ => HashMap::new(),
        }
        .into_iter()
        .map(|(name, (key, part))| (name, (format!("diffusion_model.{key}"), part)))
        .collect();
        let map = LoraTargets {
            whole: crate::model::lora::key_map(&unet_keys, &clip_keys, levels),
            parts,
        };
        let (model_set, clip_set, unmatched) = self.lora_sets(id, lora, &map);
        if !unmatched.is_empty() {
            let shown: Vec<&str> = unmatched.iter().take(5).map(String::as_str).collect();
            self.warn(id, unmatched.first().cloned(), format!(
                    "lora key not loaded: {} of {name}'s keys match nothing in this model (e.g. {})",
                    unmatched.len(),
                    shown.join(", ")
                ));
        }
        self.warn(
            id,
            None,
            format!(
                "{name}: {} MODEL and {} CLIP keys patched",
                model_set.per_key.len(),
                clip_set.per_key.len()
            ),
        );
        if strength_model != 0.0 && !model_set.per_key.is_empty() {
            model.patches.push(Arc::new(Patch {
                node: id.to_owned(),
                kind: PatchKind::Lora {
                    set: Arc::new(model_set),
                    strength: strength_model,
                },
            }));
        }
        if let Some(c) = &mut clip
            && strength_clip != 0.0
            && !clip_set.per_key.is_empty()
        {
            c.patches.push(Arc::new(Patch {
                node: id.to_owned(),
                kind: PatchKind::Lora {
                    set: Arc::new(clip_set),
                    strength: strength_clip,
                },
            }));
        }
        Ok(outputs(model, clip))
    }

    /// Groups a LoRA file's tensors into deltas for the MODEL and the CLIP: LoRA up/down pairs
    /// (with `alpha`), LoHa (`hada_w1_a/b`, `hada_w2_a/b`), and full differences (`diff` for a
    /// weight, `diff_b` for its bias). Returns the names that matched nothing.
    fn lora_sets(
        &mut self,
        id: &str,
        lora: usize,
        map: &LoraTargets,
    ) -> (LoraSet, LoraSet, Vec<String>) {
        const PAIRS: [(&str, &str); 6] = [
            (".lora_up.weight", ".lora_down.weight"),
            ("_lora.up.weight", "_lora.down.weight"),
            (".lora_B.weight", ".lora_A.weight"),
            (".lora.up.weight", ".lora.down.weight"),
            (
                ".lora_linear_layer.up.weight",
                ".lora_linear_layer.down.weight",
            ),
            (".lora_B.default.weight", ".lora_A.default.weight"),
        ];
        let src = Arc::clone(&self.sources[lora]);
        let file = &src.file;
        let leaf = |r: &crate::format::TensorRecord| Leaf {
            source: lora,
            offset: r.offset,
            dtype: r.dtype,
            numel: r.numel(),
        };
        let float = |r: &crate::format::TensorRecord| r.dtype.is_mergeable();
        let alpha_of = |base: &str| {
            file.get(&format!("{base}.alpha"))
                .and_then(|a| file.read_f32(a))
                .and_then(|v| v.first().copied())
                .map(f64::from)
        };
        let (mut model, mut clip) = (LoraSet::default(), LoraSet::default());
        let mut used = std::collections::HashSet::new();
        // DoRA's magnitude vector, for any low-rank kind (LoRA, LoHa, LoKr), as ComfyUI loads it.
        let dora_of = |base: &str| {
            file.get(&format!("{base}.dora_scale"))
                .filter(|d| float(d))
                .map(|d| (leaf(d), d.shape.clone()))
        };
        let mut insert = |(target, part): (&str, Option<Part>),
                          delta: LoraDelta,
                          scale: f64,
                          base: Option<&str>| {
            let entry = LoraEntry {
                delta,
                scale,
                dora: base.and_then(dora_of),
                part,
            };
            let entries = match target.strip_prefix("diffusion_model.") {
                Some(k) => model.per_key.entry(k.to_owned()).or_default(),
                None => clip.per_key.entry(target.to_owned()).or_default(),
            };
            // As in ComfyUI, a later name for the same key and part replaces an earlier one.
            entries.retain(|e| e.part != part);
            entries.push(entry);
        };
        for t in file.tensors() {
            let name = t.name.as_str();
            // A low-rank pair: up [out, rank(, 1, 1)], down [rank, inner…].
            if let Some((base, down_suffix)) = PAIRS
                .iter()
                .find_map(|(u, d)| name.strip_suffix(u).map(|b| (b, *d)))
                && let Some(target) = map.get(base)
                && let Some(down) = file.get(&format!("{base}{down_suffix}"))
                && float(t)
                && float(down)
                && t.shape.len() >= 2
                && !down.shape.is_empty()
            {
                let (out, rank) = (t.shape[0], down.shape[0]);
                let mut inner = down.shape[1..].iter().product::<usize>();
                if t.shape[1..].iter().product::<usize>() != rank {
                    self.warn(id, Some(base.to_owned()), format!("ERROR lora {base}: up {:?} and down {:?} do not share a rank; not applied", t.shape, down.shape));
                    continue;
                }
                // LoCon with a Tucker core: up [out, rank, 1, 1], down [rank, in, 1, 1],
                // mid [rank, rank, kh, kw]; the delta is [out, in, kh, kw].
                let mid_name = format!("{base}.lora_mid.weight");
                let mid = match file.get(&mid_name) {
                    None => None,
                    Some(m)
                        if float(m)
                            && m.shape.len() == 4
                            && m.shape[0] == rank
                            && m.shape[1] == rank
                            && down.shape.len() >= 2
                            && down.shape.iter().skip(2).all(|&d| d == 1) =>
                    {
                        let khw = m.shape[2] * m.shape[3];
                        let in_channels = inner;
                        inner = in_channels * khw;
                        Some((leaf(m), in_channels, khw))
                    }
                    Some(m) => {
                        self.warn(id, Some(base.to_owned()), format!(
                                "ERROR lora {base}: lora_mid {:?} does not fit down {:?}; not applied",
                                m.shape, down.shape
                            ));
                        used.extend([name.to_owned(), format!("{base}{down_suffix}"), mid_name]);
                        continue;
                    }
                };
                let term = LoraTerm {
                    up: leaf(t),
                    down: leaf(down),
                    out,
                    rank,
                    inner,
                    hadamard: None,
                    mid,
                    mid2: None,
                    up_transposed: false,
                };
                insert(
                    target,
                    LoraDelta::Factors(term),
                    crate::model::lora::lora_scale(alpha_of(base), rank),
                    Some(base),
                );
                used.extend([
                    name.to_owned(),
                    format!("{base}{down_suffix}"),
                    format!("{base}.alpha"),
                    format!("{base}.dora_scale"),
                    mid_name,
                ]);
                continue;
            }
            // LoHa: (w1a @ w1b) ⊙ (w2a @ w2b), scale alpha / w1b.shape[0].
            if let Some(base) = name.strip_suffix(".hada_w1_a")
                && let Some(target) = map.get(base)
            {
                let part = |s: &str| file.get(&format!("{base}.{s}"));
                let (Some(w1b), Some(w2a), Some(w2b)) =
                    (part("hada_w1_b"), part("hada_w2_a"), part("hada_w2_b"))
                else {
                    continue;
                };
                let floats = [t, w1b, w2a, w2b].iter().all(|r| float(r));
                let term = match (part("hada_t1"), part("hada_t2")) {
                    (None, None) => {
                        let (out, rank, inner) = (
                            t.shape.first().copied().unwrap_or(0),
                            w1b.shape.first().copied().unwrap_or(0),
                            w1b.shape.iter().skip(1).product::<usize>(),
                        );
                        let rank2 = w2b.shape.first().copied().unwrap_or(0);
                        let consistent = floats
                            && t.numel() == out * rank
                            && w2a.numel() == out * rank2
                            && w2b.numel() == rank2 * inner;
                        consistent.then(|| LoraTerm {
                            up: leaf(t),
                            down: leaf(w1b),
                            out,
                            rank,
                            inner,
                            hadamard: Some((leaf(w2a), leaf(w2b), rank2)),
                            mid: None,
                            mid2: None,
                            up_transposed: false,
                        })
                    }
                    // CP/Tucker form: w1a [rank, out], w1b [rank, in], t1 [rank, rank, kh, kw],
                    // and m1 = einsum("ijkl,jr,ip->prkl", t1, w1b, w1a); the same for m2.
                    (Some(t1), Some(t2)) => {
                        let dims =
                            |a: &crate::format::TensorRecord,
                             b: &crate::format::TensorRecord,
                             c: &crate::format::TensorRecord| {
                                match (&a.shape[..], &b.shape[..], &c.shape[..]) {
                                    ([r, out], [r2, inn], [r3, r4, kh, kw])
                                        if r == r2 && r == r3 && r == r4 =>
                                    {
                                        Some((*r, *out, *inn, kh * kw, [*kh, *kw]))
                                    }
                                    _ => None,
                                }
                            };
                        match (dims(t, w1b, t1), dims(w2a, w2b, t2)) {
                            (Some((rank, out, inn, khw, k1)), Some((rank2, out2, in2, _, k2)))
                                if floats
                                    && float(t1)
                                    && float(t2)
                                    && (out, inn, k1) == (out2, in2, k2) =>
                            {
                                Some(LoraTerm {
                                    up: leaf(t),
                                    down: leaf(w1b),
                                    out,
                                    rank,
                                    inner: inn * khw,
                                    hadamard: Some((leaf(w2a), leaf(w2b), rank2)),
                                    mid: Some((leaf(t1), inn, khw)),
                                    mid2: Some(leaf(t2)),
                                    up_transposed: true,
                                })
                            }
                            _ => None,
                        }
                    }
                    _ => None,
                };
                let Some(term) = term else {
                    self.warn(
                        id,
                        Some(base.to_owned()),
                        format!("ERROR lora {base}: LoHa factor shapes do not agree; not applied"),
                    );
                    continue;
                };
                let rank = term.rank;
                insert(
                    target,
                    LoraDelta::Factors(term),
                    crate::model::lora::lora_scale(alpha_of(base), rank),
                    Some(base),
                );
                for s in [
                    "hada_w1_a",
                    "hada_w1_b",
                    "hada_w2_a",
                    "hada_w2_b",
                    "hada_t1",
                    "hada_t2",
                    "alpha",
                    "dora_scale",
                ] {
                    used.insert(format!("{base}.{s}"));
                }
                continue;
            }
            // LoKr: kron(w1, w2), each factor whole or a product; scale alpha / the factored rank.
            if let Some(base) = name
                .strip_suffix(".lokr_w1")
                .or_else(|| name.strip_suffix(".lokr_w1_a"))
                && let Some(target) = map.get(base)
            {
                let part = |s: &str| file.get(&format!("{base}.{s}"));
                let mut dim = None;
                let mut factor =
                    |whole: &str, fa: &str, fb: &str| -> Option<(Factor, Vec<usize>)> {
                        if let Some(w) = part(whole) {
                            return float(w).then(|| (Factor::Full(leaf(w)), w.shape.clone()));
                        }
                        let (a, b) = (part(fa)?, part(fb)?);
                        let rank = *b.shape.first()?;
                        // The second factor in Tucker form: a [rank, c], b [rank, d],
                        // t2 [rank, rank, kh, kw] make w2 [c, d, kh, kw].
                        if let (true, Some(t)) = (fb == "lokr_w2_b", part("lokr_t2")) {
                            let ([ra, c], [_, d], [ti, tj, kh, kw]) =
                                (&a.shape[..], &b.shape[..], &t.shape[..])
                            else {
                                return None;
                            };
                            if !(float(a) && float(b) && float(t))
                                || *ra != rank
                                || *ti != rank
                                || *tj != rank
                            {
                                return None;
                            }
                            dim = Some(rank);
                            return Some((
                                Factor::Tucker {
                                    a: leaf(a),
                                    b: leaf(b),
                                    t: leaf(t),
                                    rank,
                                    khw: kh * kw,
                                },
                                vec![*c, *d, *kh, *kw],
                            ));
                        }
                        if !float(a)
                            || !float(b)
                            || a.shape.len() != 2
                            || a.shape[1] != rank
                            || b.shape.len() != 2
                        {
                            return None;
                        }
                        dim = Some(rank);
                        Some((
                            Factor::Product {
                                a: leaf(a),
                                b: leaf(b),
                                rank,
                            },
                            vec![a.shape[0], b.shape[1]],
                        ))
                    };
                let w1 = factor("lokr_w1", "lokr_w1_a", "lokr_w1_b");
                let w2 = factor("lokr_w2", "lokr_w2_a", "lokr_w2_b");
                let parsed = match (w1, w2) {
                    (Some((w1, s1)), Some((w2, s2)))
                        if s1.len() == 2 && (s2.len() == 2 || s2.len() == 4) =>
                    {
                        Ok((w1, s1, w2, s2))
                    }
                    _ => Err("LoKr factors are missing, malformed or of an unsupported shape"),
                };
                let (w1, s1, w2, s2) = match parsed {
                    Ok(p) => p,
                    Err(why) => {
                        self.warn(
                            id,
                            Some(base.to_owned()),
                            format!("lora {base}: {why}; not applied"),
                        );
                        continue;
                    }
                };
                let hw = s2.iter().skip(2).product::<usize>();
                let term = KronTerm {
                    w1,
                    w2,
                    w1_shape: [s1[0], s1[1]],
                    w2_shape: [s2[0], s2[1], hw],
                };
                let n = s1[0] * s1[1] * s2[0] * s2[1] * hw;
                let scale = match (alpha_of(base), dim) {
                    (Some(al), Some(d)) => al / d as f64,
                    _ => 1.0,
                };
                insert(target, LoraDelta::Kron(term, n), scale, Some(base));
                for s in [
                    "dora_scale",
                    "lokr_t2",
                    "lokr_w1",
                    "lokr_w1_a",
                    "lokr_w1_b",
                    "lokr_w2",
                    "lokr_w2_a",
                    "lokr_w2_b",
                    "alpha",
                ] {
                    used.insert(format!("{base}.{s}"));
                }
                continue;
            }
            // Full differences, added at the strength as they are.
            let full = name
                .strip_suffix(".diff_b")
                .and_then(|b| {
                    map.whole
                        .get(b)
                        .map(|w| w.strip_suffix(".weight").map(|s| format!("{s}.bias")))
                })
                .flatten()
                .or_else(|| {
                    name.strip_suffix(".diff")
                        .and_then(|b| map.whole.get(b).cloned())
                });
            if let Some(target) = full
                && float(t)
            {
                insert(
                    (&target, None),
                    LoraDelta::Full(leaf(t), t.shape.clone()),
                    1.0,
                    None,
                );
                used.insert(name.to_owned());
            }
        }
        let unmatched = file
            .tensors()
            .iter()
            .map(|t| t.name.clone())
            .filter(|n| !used.contains(n))
            .collect();
        (model, clip, unmatched)
    }

    /// Keys of model2 that model1 lacks are ignored, as in ComfyUI; say how many.
    fn report_unmatched(&mut self, id: &str, class_type: &str, base: &Weights, other: &Weights) {
        let a = &self.sources[base.source];
        let b = &self.sources[other.source];
        let unmatched = b
            .keys(other.component)
            .iter()
            .filter(|k| a.get(base.component, k).is_none())
            .count();
        if unmatched > 0 {
            self.warn(id, None, format!(
                    "{class_type}: {unmatched} {} key(s) of the second input are not in the first and are ignored",
                    base.component.as_str()
                ));
        }
    }

    fn leaf(&self, source: usize, component: Component, key: &str) -> Option<(Leaf, Vec<usize>)> {
        let t = self.sources[source].get(component, key)?;
        Some((
            Leaf {
                source,
                offset: t.offset,
                dtype: t.dtype,
                numel: t.numel(),
            },
            t.shape.clone(),
        ))
    }

    /// The lazy expression of `key` in `w`, with the mismatch warnings it implies.
    fn expr(&mut self, w: &Weights, key: &str) -> Option<(Expr, Vec<usize>)> {
        let (leaf, shape) = self.leaf(w.source, w.component, key)?;
        let mut steps = Vec::new();
        for p in &w.patches {
            let (other, rule) = match &p.kind {
                PatchKind::Merge { other, rule } => (other, rule),
                PatchKind::Lora { set, strength } => {
                    for entry in set.per_key.get(key).into_iter().flatten() {
                        match lora_step(entry, &shape, *strength) {
                            Ok(step) => steps.push(step),
                            Err(why) => self.warn(
                                &p.node,
                                Some(key.to_owned()),
                                format!("ERROR lora {key}: {why}; not applied"),
                            ),
                        }
                    }
                    continue;
                }
            };
            if w.component == Component::Clip
                && (key.ends_with(".position_ids") || key.ends_with(".logit_scale"))
            {
                continue;
            }
            if self.sources[other.source]
                .get(other.component, key)
                .is_none()
            {
                continue;
            }
            let (s, mm) = rule.strengths(key);
            let mm = (mm != 1.0).then_some(mm as f32);
            let mut add = None;
            if s != 0.0 {
                let Some((sub, sub_shape)) = self.expr(other, key) else {
                    continue;
                };
                if sub_shape == shape {
                    add = Some((s as f32, Term::Weights(sub)));
                } else {
                    self.warn(
                        &p.node,
                        Some(key.to_owned()),
                        format!(
                            "SHAPE MISMATCH {key} WEIGHT NOT MERGED {sub_shape:?} != {shape:?}{}",
                            if mm.is_some() {
                                " (the first input is still scaled)"
                            } else {
                                ""
                            }
                        ),
                    );
                }
            }
            if mm.is_some() || add.is_some() {
                steps.push(Step {
                    mm,
                    add,
                    dora: None,
                    window: None,
                });
            }
        }
        Some((Expr { leaf, steps }, shape))
    }

    /// The recipe for a weight under the precision setting.
    fn recipe(
        &mut self,
        node: &str,
        w: &Weights,
        key: &str,
    ) -> Option<(Recipe, DType, Vec<usize>)> {
        let (expr, shape) = self.expr(w, key)?;
        let stored = expr.leaf.dtype;
        if !stored.is_mergeable() {
            if !expr.steps.is_empty() {
                self.warn(node, Some(key.to_owned()), format!("{key} is {stored}, which Amalgam does not merge; the first input's value is kept"));
            }
            return Some((Recipe::Copy(expr.leaf), stored, shape));
        }
        Some(self.float_recipe(expr, shape))
    }

    fn float_recipe(&self, expr: Expr, shape: Vec<usize>) -> (Recipe, DType, Vec<usize>) {
        let stored = expr.leaf.dtype;
        let (out, round_inputs) = match self.precision {
            Precision::Keep => (stored, None),
            Precision::Fp32 => (DType::F32, None),
            Precision::Fp16 => (DType::F16, Some(DType::F16)),
            Precision::Bf16 => (DType::BF16, Some(DType::BF16)),
        };
        let inputs_unchanged = round_inputs.is_none_or(|r| r == stored);
        if expr.steps.is_empty() && out == stored && inputs_unchanged {
            return (Recipe::Copy(expr.leaf), out, shape);
        }
        (
            Recipe::Compute {
                expr,
                out,
                round_inputs,
            },
            out,
            shape,
        )
    }

    fn save_node(&mut self, id: &str) -> Result<Vec<PlannedFile>, EngineError> {
        let (n, schema) = self.node(id)?;
        let class_type = n.class_type.clone();
        let op = schema.operation.clone();
        let prefix = self.string(id, "filename_prefix")?;
        let mut metadata = Vec::new();
        let mut tensors: Vec<PlannedTensor> = Vec::new();
        let mut modelspec_title = false;
        let kind = match op {
            Operation::SaveCheckpoint | Operation::SaveModel => {
                let model = self.weights(id, "model")?;
                let arch = self.sources[model.source].architecture();
                self.model_tensors(id, &model, &mut tensors);
                if op == Operation::SaveCheckpoint {
                    let clip = self.weights(id, "clip")?;
                    self.clip_tensors(id, &clip, arch, &mut tensors);
                    let NodeValue::Vae(vae) = self.input(id, "vae")? else {
                        return Err(node_err(id, &class_type, "input \"vae\" is not a VAE"));
                    };
                    self.vae_tensors(vae, vae_save_prefix(arch), &mut tensors);
                }
                modelspec_title = self.model_metadata(&model, &mut metadata, &mut tensors);
                if op == Operation::SaveCheckpoint {
                    SaveKind::Checkpoint
                } else {
                    SaveKind::Model
                }
            }
            Operation::SaveVae => {
                let NodeValue::Vae(vae) = self.input(id, "vae")? else {
                    return Err(node_err(id, &class_type, "input \"vae\" is not a VAE"));
                };
                self.vae_tensors(vae, "", &mut tensors);
                SaveKind::Vae
            }
            Operation::SaveClip => {
                let clip = self.weights(id, "clip")?;
                return self.clip_files(id, &clip, &prefix);
            }
            _ => return Err(node_err(id, &class_type, "not a save node")),
        };
        self.prompt_metadata(kind, &mut metadata);
        sort_for_writing(&mut tensors);
        Ok(vec![PlannedFile {
            node: id.to_owned(),
            class_type,
            kind,
            prefix,
            tensors,
            metadata,
            modelspec_title,
        }])
    }

    fn model_tensors(&mut self, id: &str, model: &Weights, out: &mut Vec<PlannedTensor>) {
        let keys = self.sources[model.source].keys(Component::Model).to_vec();
        for key in keys {
            if let Some((recipe, dtype, shape)) = self.recipe(id, model, &key) {
                out.push(PlannedTensor {
                    spec: TensorSpec::new(format!("model.diffusion_model.{key}"), dtype, &shape),
                    recipe,
                });
            }
        }
    }

    fn clip_tensors(
        &mut self,
        id: &str,
        clip: &Weights,
        arch: Architecture,
        out: &mut Vec<PlannedTensor>,
    ) {
        let keys = self.sources[clip.source].keys(Component::Clip).to_vec();
        let mut unplaced = 0;
        for key in keys {
            let Some(name) = clip_save_key(arch, &key) else {
                unplaced += 1;
                continue;
            };
            if save_fate(arch, &name, "model.diffusion_model.") == SaveFate::Drop {
                continue;
            }
            if let Some((recipe, dtype, shape)) = self.recipe(id, clip, &key) {
                out.push(PlannedTensor {
                    spec: TensorSpec::new(name, dtype, &shape),
                    recipe,
                });
            }
        }
        if unplaced > 0 {
            self.warn(
                id,
                None,
                format!(
                    "{unplaced} CLIP key(s) have no place in a {} checkpoint and are not saved",
                    arch.as_str()
                ),
            );
        }
        for added in keys_added_on_save(arch) {
            if out.iter().any(|t| t.spec.name == added.name) {
                continue;
            }
            let bytes: Vec<u8> = (0..added.arange_len as i64)
                .flat_map(i64::to_le_bytes)
                .collect();
            out.push(PlannedTensor {
                spec: TensorSpec::new(added.name, DType::I64, &[1, added.arange_len]),
                recipe: Recipe::Bytes(bytes.into()),
            });
        }
    }

    fn vae_tensors(&mut self, vae: usize, prefix: &str, out: &mut Vec<PlannedTensor>) {
        let keys = self.sources[vae].keys(Component::Vae).to_vec();
        for key in keys {
            let Some((leaf, shape)) = self.leaf(vae, Component::Vae, &key) else {
                continue;
            };
            let (recipe, dtype, shape) = if leaf.dtype.is_mergeable() {
                self.float_recipe(
                    Expr {
                        leaf,
                        steps: Vec::new(),
                    },
                    shape,
                )
            } else {
                let d = leaf.dtype;
                (Recipe::Copy(leaf), d, shape)
            };
            out.push(PlannedTensor {
                spec: TensorSpec::new(format!("{prefix}{key}"), dtype, &shape),
                recipe,
            });
        }
    }

    /// `modelspec.*` and prediction markers (reference §2.2). Returns whether a title is due.
    fn model_metadata(
        &mut self,
        model: &Weights,
        meta: &mut Vec<(String, String)>,
        out: &mut Vec<PlannedTensor>,
    ) -> bool {
        let src = Arc::clone(&self.sources[model.source]);
        let d = &src.detection;
        let spec = match d.architecture {
            Architecture::Sdxl if d.variant == Some(Variant::InstructPix2Pix) => {
                Some("stable-diffusion-xl-v1-edit")
            }
            Architecture::Sdxl => Some("stable-diffusion-xl-v1-base"),
            Architecture::SdxlRefiner => Some("stable-diffusion-xl-v1-refiner"),
            Architecture::Sd3 => Some("stable-diffusion-v3-medium"),
            _ => None,
        };
        if let Some(a) = spec {
            meta.push(("modelspec.architecture".into(), a.into()));
            meta.push(("modelspec.sai_model_spec".into(), "1.0.0".into()));
            meta.push(("modelspec.implementation".into(), "sgm".into()));
        }
        let marker = |name: &str| PlannedTensor {
            spec: TensorSpec::new(name, DType::F32, &[0]),
            recipe: Recipe::Bytes(Arc::from(Vec::new())),
        };
        let scalar = |name: &str, v: f32| PlannedTensor {
            spec: TensorSpec::new(name, DType::F32, &[]),
            recipe: Recipe::Bytes(Arc::from(v.to_le_bytes().to_vec())),
        };
        // EDM v-prediction: from a ModelSamplingContinuousEDM node, or kept from the input.
        match &model.sampling {
            Some(SamplingOverride::ContinuousEdm {
                sampling,
                sigma_max,
                sigma_min,
            }) if sampling == "v_prediction" => {
                // ComfyUI stores sigmas[-1] / sigmas[0] of `linspace(log σmin, log σmax).exp()` in
                // f32: the end points are exp of the f32 logarithms.
                let sigma = |s: f64| (s.ln() as f32).exp();
                out.push(scalar("edm_vpred.sigma_max", sigma(*sigma_max)));
                out.push(scalar("edm_vpred.sigma_min", sigma(*sigma_min)));
            }
            Some(SamplingOverride::ContinuousEdm { .. }) => {}
            _ if d.prediction == Prediction::EdmV => {
                for name in ["edm_vpred.sigma_max", "edm_vpred.sigma_min"] {
                    if let Some(t) = src.file.get(name) {
                        out.push(PlannedTensor {
                            spec: TensorSpec::new(name, t.dtype, &t.shape),
                            recipe: Recipe::Copy(Leaf {
                                source: model.source,
                                offset: t.offset,
                                dtype: t.dtype,
                                numel: t.numel(),
                            }),
                        });
                    }
                }
            }
            _ => {}
        }
        match d.prediction {
            Prediction::Eps => meta.push(("modelspec.predict_key".into(), "epsilon".into())),
            Prediction::V => {
                meta.push(("modelspec.predict_key".into(), "v".into()));
                out.push(marker("v_pred"));
                // `getattr(model_sampling, "zsnr", False)`: a Discrete override says, an EDM one
                // has no such attribute, the loaded model keeps its own.
                let zsnr = match &model.sampling {
                    Some(SamplingOverride::Discrete { zsnr, .. }) => *zsnr,
                    Some(SamplingOverride::ContinuousEdm { .. }) => false,
                    None => d.zsnr,
                };
                if zsnr {
                    out.push(marker("ztsnr"));
                }
            }
            _ => {}
        }
        spec.is_some()
    }

    /// `prompt` and `workflow` as ComfyUI's json.dumps writes them.
    fn prompt_metadata(&self, kind: SaveKind, meta: &mut Vec<(String, String)>) {
        if kind == SaveKind::Clip {
            meta.push(("format".into(), "pt".into()));
        }
        meta.push(("prompt".into(), pyjson::dumps(&self.prompt.to_json())));
        if let Some(w) = self.workflow {
            meta.push(("workflow".into(), pyjson::dumps(w)));
        }
    }

    /// CLIPSave: one file per text encoder, keys without the encoder prefix and `transformer.`.
    fn clip_files(
        &mut self,
        id: &str,
        clip: &Weights,
        prefix: &str,
    ) -> Result<Vec<PlannedFile>, EngineError> {
        const GROUPS: [&str; 11] = [
            "clip_l.",
            "clip_g.",
            "clip_h.",
            "t5xxl.",
            "pile_t5xl.",
            "mt5xl.",
            "umt5xxl.",
            "t5base.",
            "gemma2_2b.",
            "llama.",
            "hydit_clip.",
        ];
        let keys = self.sources[clip.source].keys(Component::Clip).to_vec();
        let mut groups: Vec<(String, Vec<PlannedTensor>)> = Vec::new();
        for key in keys {
            let group = GROUPS
                .iter()
                .find(|g| key.starts_with(*g))
                .copied()
                .unwrap_or("");
            let rest = &key[group.len()..];
            let name = rest.strip_prefix("transformer.").unwrap_or(rest).to_owned();
            if name.ends_with("position_ids") {
                continue;
            }
            let Some((recipe, dtype, shape)) = self.recipe(id, clip, &key) else {
                continue;
            };
            let label = group.trim_end_matches('.').to_owned();
            let t = PlannedTensor {
                spec: TensorSpec::new(name, dtype, &shape),
                recipe,
            };
            match groups.iter_mut().find(|(g, _)| *g == label) {
                Some((_, v)) => v.push(t),
                None => groups.push((label, vec![t])),
            }
        }
        if groups.iter().any(|(g, _)| g == "clip_g" || g == "clip_h") {
            self.warn(id, None, "CLIPSave writes OpenCLIP text encoders (clip_g/clip_h) in their checkpoint layout; ComfyUI converts them to Hugging Face names".into());
        }
        let order = |g: &str| {
            GROUPS
                .iter()
                .position(|x| x.trim_end_matches('.') == g)
                .unwrap_or(GROUPS.len())
        };
        groups.sort_by_key(|(g, _)| order(g));
        let mut metadata = Vec::new();
        self.prompt_metadata(SaveKind::Clip, &mut metadata);
        Ok(groups
            .into_iter()
            .map(|(g, mut tensors)| {
                sort_for_writing(&mut tensors);
                PlannedFile {
                    node: id.to_owned(),
                    class_type: "CLIPSave".into(),
                    kind: SaveKind::Clip,
                    prefix: if g.is_empty() {
                        prefix.to_owned()
                    } else {
                        format!("{prefix}_{g}")
                    },
                    tensors,
                    metadata: metadata.clone(),
                    modelspec_title: false,
                }
            })
            .collect())
    }
}

/// safetensors' serialisation order: dtype descending (in its enum order), then name.
pub fn sort_for_writing(tensors: &mut [PlannedTensor]) {
    tensors.sort_by(|a, b| {
        b.spec
            .dtype
            .cmp(&a.spec.dtype)
            .then_with(|| a.spec.name.cmp(&b.spec.name))
    });
}

/// The step that adds one LoRA entry to a weight of `shape` at `strength`: `W += f32(strength ·
/// scale) · delta` over the entry's part of the weight; with DoRA, `W + f32(scale) · delta` is
/// decomposed, then blended in at the strength. `Err` says why the entry does not fit.
fn lora_step(entry: &LoraEntry, shape: &[usize], strength: f64) -> Result<Step, String> {
    let numel: usize = shape.iter().product();
    let row: usize = shape.iter().skip(1).product();
    // The part patched, and its own shape (what ComfyUI's `narrow` gives the adapter).
    let (window, part_shape) = match entry.part {
        None => (None, shape.to_vec()),
        Some(Part::Rows { start, rows }) => {
            if shape.is_empty() || start + rows > shape[0] || rows == 0 {
                return Err(format!(
                    "rows {start}..{} are not inside the weight {shape:?}",
                    start + rows
                ));
            }
            let mut part = shape.to_vec();
            part[0] = rows;
            let window = Window {
                start: start * row,
                len: rows * row,
                swap_halves: false,
            };
            (Some(window), part)
        }
        Some(Part::SwappedHalves) => {
            if shape.first().is_none_or(|r| r % 2 != 0) {
                return Err(format!("the weight {shape:?} has no two halves to swap"));
            }
            let window = Window {
                start: 0,
                len: numel,
                swap_halves: true,
            };
            (Some(window), shape.to_vec())
        }
    };
    let part_numel: usize = part_shape.iter().product();
    let dora = match &entry.dora {
        None => None,
        Some((ds, ds_shape)) => Some(dora_for(ds, ds_shape, &part_shape, strength)?),
    };
    let s = if dora.is_some() {
        entry.scale as f32
    } else {
        (strength * entry.scale) as f32
    };
    let term = match &entry.delta {
        LoraDelta::Factors(t) if t.out * t.inner == part_numel => Term::Lora(t.clone()),
        LoraDelta::Full(d, dshape) if *dshape == shape && dora.is_none() && window.is_none() => {
            Term::Weights(Expr {
                leaf: d.clone(),
                steps: Vec::new(),
            })
        }
        LoraDelta::Kron(k, n) if *n == part_numel => Term::Kron(k.clone()),
        _ => {
            return Err(format!("its delta does not fit the weight {part_shape:?}"));
        }
    };
    Ok(Step {
        mm: None,
        add: Some((s, term)),
        dora,
        window,
    })
}

/// The DoRA decomposition for a weight of `shape` and a `dora_scale` of `ds_shape`, or why it
/// cannot apply. As in ComfyUI, the axis is the output one when `dora_scale.shape[0]` is the
/// weight's row count; the scale must then be one value per channel (or one), which is what
/// torch's broadcasting of `dora_scale / norm` into the weight needs. (When a 1-D scale happens
/// to broadcast into a square weight another way, torch would scale by a matrix; that is refused.)
fn dora_for(ds: &Leaf, ds_shape: &[usize], shape: &[usize], strength: f64) -> Result<Dora, String> {
    let (Some(&first), [out, in_channels, ..]) = (ds_shape.first(), shape) else {
        return Err(format!(
            "dora_scale {ds_shape:?} does not fit the weight {shape:?}"
        ));
    };
    if *out == 0 || *in_channels == 0 {
        return Err(format!("the weight {shape:?} is empty"));
    }
    let axis = if first == *out {
        DoraAxis::Output
    } else {
        DoraAxis::Input
    };
    // The norm's shape: [out, 1, …] or [1, in, 1, …], as many dimensions as the weight.
    let mut norm = vec![1; shape.len()];
    let channels = match axis {
        DoraAxis::Output => *out,
        DoraAxis::Input => *in_channels,
    };
    norm[usize::from(axis == DoraAxis::Input)] = channels;
    // Right-aligned broadcasting of dora_scale against the norm must give the norm's shape.
    let fits = ds_shape.len() <= norm.len()
        && ds_shape
            .iter()
            .rev()
            .zip(norm.iter().rev())
            .all(|(&d, &n)| d == n || d == 1);
    if !fits || !(ds.numel == 1 || ds.numel == channels) {
        return Err(format!(
            "dora_scale {ds_shape:?} does not fit the weight {shape:?}"
        ));
    }
    Ok(Dora {
        scale: ds.clone(),
        axis,
        strength: (strength != 1.0).then_some(strength as f32),
        inner: shape[1..].iter().product(),
        in_channels: *in_channels,
        factors: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Window pieces, for every range a tile can cover, agree with the element-by-element
    /// definition: element `e` of the weight is patched iff it is inside the window, by term
    /// element `e - start` (its halves exchanged when swapped).
    #[test]
    fn window_pieces_match_the_per_element_definition() {
        for swap_halves in [false, true] {
            let w = Window {
                start: 6,
                len: 10,
                swap_halves,
            };
            for first in 0..20 {
                for n in 0..12 {
                    let mut got = vec![None; n];
                    for p in w.pieces(first, n).iter().flatten() {
                        for i in 0..p.len {
                            assert!(got[p.offset + i].is_none(), "overlap");
                            got[p.offset + i] = Some((p.term + i, p.local + i));
                        }
                    }
                    let want: Vec<_> = (first..first + n)
                        .map(|e| {
                            (w.start..w.start + w.len).contains(&e).then(|| {
                                let local = e - w.start;
                                let term = if swap_halves {
                                    (local + w.len / 2) % w.len
                                } else {
                                    local
                                };
                                (term, local)
                            })
                        })
                        .collect();
                    assert_eq!(got, want, "first {first}, n {n}, swap {swap_halves}");
                }
            }
        }
    }

    #[test]
    fn blocks_rule_takes_the_longest_prefix_and_the_first_as_default() {
        let r = Rule::Blocks(vec![
            ("time_embed.".into(), 0.1),
            ("input_blocks.1.".into(), 0.2),
            ("input_blocks.10.".into(), 0.3),
            ("out".into(), 0.4),
            ("output_blocks.".into(), 0.5),
        ]);
        assert_eq!(r.strengths("input_blocks.1.0.weight"), (1.0 - 0.2, 0.2));
        assert_eq!(r.strengths("input_blocks.10.0.weight"), (1.0 - 0.3, 0.3));
        assert_eq!(r.strengths("output_blocks.3.0.weight"), (1.0 - 0.5, 0.5));
        assert_eq!(r.strengths("out.2.weight"), (1.0 - 0.4, 0.4));
        // No match: the first ratio, not 1.0.
        assert_eq!(r.strengths("label_emb.0.0.weight"), (1.0 - 0.1, 0.1));
    }
}
