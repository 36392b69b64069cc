//! LoRA patches: LoraLoader's targets per architecture, and the [`Step`] each matched entry
//! becomes (windows of fused weights, DoRA).

use std::collections::HashMap;
use std::sync::Arc;

use crate::model::arch::Architecture;
use crate::model::components::Component;
use crate::model::lora::Part;

use super::adapters::{Grouped, group};
use super::ir::{Dora, DoraAxis, Expr, KronTerm, Leaf, LoraTerm, Step, Term, Window};
use super::patch::{Patch, PatchKind};
use super::{EngineError, NodeValue, Planner, Weights};

/// The matched deltas of one LoRA file, by key of the patched component.
#[derive(Debug, Default)]
pub(super) struct LoraSet {
    /// Several entries for one key when a file patches several parts of a fused weight.
    pub(super) per_key: HashMap<String, Vec<LoraEntry>>,
}

/// What a LoRA file adds to one key.
#[derive(Debug)]
pub(super) struct LoraEntry {
    pub(super) delta: LoraDelta,
    /// `alpha / rank`, or 1 for a full difference.
    pub(super) scale: f64,
    /// DoRA's `dora_scale` and its shape, when the file has one for this key.
    pub(super) dora: Option<(Leaf, Vec<usize>)>,
    /// The part of the weight patched, when not all of it.
    pub(super) part: Option<Part>,
}

/// LoRA names → the key they patch: whole weights, and (for Flux's diffusers names) parts.
pub(super) struct LoraTargets {
    pub(super) whole: HashMap<String, String>,
    pub(super) parts: HashMap<String, (String, Option<Part>)>,
}

impl LoraTargets {
    pub(super) fn get(&self, name: &str) -> Option<(&str, Option<Part>)> {
        self.whole
            .get(name)
            .map(|k| (k.as_str(), None))
            .or_else(|| self.parts.get(name).map(|(k, p)| (k.as_str(), *p)))
    }
}

/// One key's delta in a LoRA file.
#[derive(Clone, Debug)]
pub(super) enum LoraDelta {
    /// A low-rank (LoRA, LoHa) product.
    Factors(LoraTerm),
    /// A full weight-shaped difference (`diff`, `diff_b`), and its shape.
    Full(Leaf, Vec<usize>),
    /// A LoKr, and the number of elements it produces.
    Kron(KronTerm, usize),
}

impl Planner<'_> {
    /// LoraLoader / LoraLoaderModelOnly: one LoRA patch on the MODEL and one on the CLIP.
    pub(super) fn load_lora(
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
        let file = &self.sources[lora].checkpoint.file;
        let alpha_of = |base: &str| {
            file.get(&format!("{base}.alpha"))
                .and_then(|a| file.read_f32(a))
                .and_then(|v| v.first().copied())
                .map(f64::from)
        };
        let Grouped {
            model: model_set,
            clip: clip_set,
            unmatched,
            problems,
        } = group(file.tensors(), lora, &map, alpha_of);
        for (base, message) in problems {
            self.warn(id, Some(base), message);
        }
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
}

/// The step that adds one LoRA entry to a weight of `shape` at `strength`: `W += f32(strength ·
/// scale) · delta` over the entry's part of the weight; with DoRA, `W + f32(scale) · delta` is
/// decomposed, then blended in at the strength. `Err` says why the entry does not fit.
pub(super) fn lora_step(entry: &LoraEntry, shape: &[usize], strength: f64) -> Result<Step, String> {
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
