//! The image nodes of a prompt as [`ImageStep`]s, and the models they use as
//! [`PlannedWeights`]: every tensor's recipe under its component-local key, with the dtype
//! ComfyUI computes in on a CPU (generation.md §3.5) — UNet and VAE in f32 (a merge is not
//! rounded), CLIP stored as f16 (inputs rounded to f16, the merge computed in f32 and rounded
//! once to f16). A merged or LoRA-patched model is used straight from these expressions.

use std::sync::Arc;

use crate::format::DType;
use crate::model::arch::{Architecture, Prediction};
use crate::model::components::Component;
use crate::nodes::Operation;

use super::ir::{Expr, ImageOp, ImageStep, Network, PlannedWeights, Recipe, SamplingKind, StepRef};
use super::{EngineError, NodeValue, Planner, SamplingOverride, Weights, node_err};

/// What identifies planned weights within one plan.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum WeightsKey {
    Vae(usize),
    Weights {
        source: usize,
        /// The patch objects' addresses.
        patches: Vec<usize>,
        network: Network,
    },
}

/// Bytes an image batch needs at its peak, roughly: decoding holds ~3 activations of 128
/// channels at full resolution for one image (the VAE runs image by image), and the decoded
/// batch is kept as f32 RGB.
fn image_bytes(width: usize, height: usize, batch: usize) -> u128 {
    let pixels = width as u128 * height as u128;
    (pixels * 128 * 4 * 3).max(pixels * 3 * 4 * batch as u128)
}

/// The machine's memory, or 16 GiB when it cannot be read.
fn memory_bytes() -> u128 {
    crate::model::report::machine_memory().map_or(16 << 30, u128::from)
}

impl Planner<'_> {
    /// A SaveImage / PreviewImage node: its image steps, inputs first.
    pub(super) fn image_output(&mut self, id: &str, temp: bool) -> Result<(), EngineError> {
        let images = self.step_input(id, "images")?;
        let prefix = if temp {
            "ComfyUI".to_owned()
        } else {
            self.string(id, "filename_prefix")?
        };
        self.push_step(
            id,
            ImageOp::Save {
                images,
                prefix,
                temp,
            },
        );
        Ok(())
    }

    pub(super) fn push_step(&mut self, id: &str, op: ImageOp) -> StepRef {
        let class_type = self
            .prompt
            .get(id)
            .map(|n| n.class_type.clone())
            .unwrap_or_default();
        self.image_steps.push(ImageStep {
            node: id.to_owned(),
            class_type,
            op,
        });
        self.image_steps.len() - 1
    }

    /// The step an input is linked to.
    fn step_input(&mut self, id: &str, name: &str) -> Result<StepRef, EngineError> {
        match self.input(id, name)? {
            NodeValue::Step(s) => Ok(s),
            _ => Err(node_err(
                id,
                "",
                format!("input {name:?} is a model, not a CONDITIONING, LATENT or IMAGE"),
            )),
        }
    }

    fn int(&self, id: &str, name: &str) -> Result<i64, EngineError> {
        let v = self.literal(id, name)?;
        v.as_i64()
            .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
            .ok_or_else(|| node_err(id, "", format!("input {name:?} is not an integer")))
    }

    /// Evaluates an image node (not an output) into its value.
    pub(super) fn image_node(
        &mut self,
        id: &str,
        class_type: &str,
        op: &Operation,
    ) -> Result<Vec<NodeValue>, EngineError> {
        let step = match op {
            Operation::SetClipLayer => {
                let mut clip = self.weights(id, "clip")?;
                clip.clip_layer = Some(self.int(id, "stop_at_clip_layer")?);
                return Ok(vec![NodeValue::Weights(clip)]);
            }
            Operation::TextEncode => {
                let clip = self.weights(id, "clip")?;
                let stop_at_clip_layer = clip.clip_layer;
                let clip = self.planned_weights(id, &clip, Network::Clip)?;
                ImageOp::TextEncode {
                    clip,
                    text: self.string(id, "text")?,
                    stop_at_clip_layer,
                }
            }
            Operation::EmptyLatent => {
                let (width, height, batch) = (
                    self.int(id, "width")?,
                    self.int(id, "height")?,
                    self.int(id, "batch_size")?,
                );
                let size = |v: i64| usize::try_from(v).ok().filter(|&v| v >= 8);
                let (Some(width), Some(height), Some(batch)) = (
                    size(width),
                    size(height),
                    usize::try_from(batch).ok().filter(|&b| b >= 1),
                ) else {
                    return Err(node_err(
                        id,
                        class_type,
                        format!("a {width}×{height} latent of batch {batch} is not a valid size"),
                    ));
                };
                // Refused before anything is allocated: decoding it could not fit in memory.
                let (need, have) = (image_bytes(width, height, batch), memory_bytes());
                if need > have {
                    return Err(node_err(
                        id,
                        class_type,
                        format!(
                            "a {width}×{height} latent of batch {batch} is too large: decoding it needs about {} GiB, this machine has {} GiB",
                            need >> 30,
                            have >> 30
                        ),
                    ));
                }
                ImageOp::EmptyLatent {
                    width,
                    height,
                    batch,
                }
            }
            Operation::RepeatLatent => ImageOp::RepeatLatent {
                samples: self.step_input(id, "samples")?,
                amount: usize::try_from(self.int(id, "amount")?)
                    .ok()
                    .filter(|&a| a >= 1)
                    .ok_or_else(|| node_err(id, class_type, "amount must be at least 1"))?,
            },
            Operation::Sample { advanced } => {
                let model = self.weights(id, "model")?;
                let sampling = self.sampling_kind(&model);
                let model = self.planned_weights(id, &model, Network::Unet)?;
                let seed_name = if *advanced { "noise_seed" } else { "seed" };
                let seed = self.literal(id, seed_name)?;
                let seed = seed
                    .as_u64()
                    .or_else(|| {
                        seed.as_f64()
                            .filter(|f| *f >= 0.0 && f.fract() == 0.0)
                            .map(|f| f as u64)
                    })
                    .ok_or_else(|| {
                        node_err(
                            id,
                            class_type,
                            format!("{seed_name} is not a non-negative integer"),
                        )
                    })?;
                let step_input = |p: &Self, name: &str| -> Result<usize, EngineError> {
                    usize::try_from(p.int(id, name)?).map_err(|_| {
                        node_err(id, class_type, format!("{name} must not be negative"))
                    })
                };
                let (add_noise, start_at_step, end_at_step, force_full_denoise, denoise) =
                    if *advanced {
                        (
                            self.string(id, "add_noise")? != "disable",
                            Some(step_input(self, "start_at_step")?),
                            Some(step_input(self, "end_at_step")?),
                            self.string(id, "return_with_leftover_noise")? != "enable",
                            1.0,
                        )
                    } else {
                        (true, None, None, false, self.number(id, "denoise")?)
                    };
                ImageOp::Sample {
                    model,
                    sampling,
                    positive: self.step_input(id, "positive")?,
                    negative: self.step_input(id, "negative")?,
                    latent: self.step_input(id, "latent_image")?,
                    seed,
                    steps: usize::try_from(self.int(id, "steps")?)
                        .ok()
                        .filter(|&s| s >= 1)
                        .ok_or_else(|| node_err(id, class_type, "steps must be at least 1"))?,
                    cfg: self.number(id, "cfg")?,
                    sampler: self.string(id, "sampler_name")?,
                    scheduler: self.string(id, "scheduler")?,
                    denoise,
                    add_noise,
                    start_at_step,
                    end_at_step,
                    force_full_denoise,
                }
            }
            Operation::VaeDecode => ImageOp::Decode {
                samples: self.step_input(id, "samples")?,
                vae: self.planned_vae(id)?,
            },
            Operation::VaeEncode => ImageOp::Encode {
                pixels: self.step_input(id, "pixels")?,
                vae: self.planned_vae(id)?,
            },
            Operation::VaeEncodeInpaint => ImageOp::EncodeInpaint {
                pixels: self.step_input(id, "pixels")?,
                vae: self.planned_vae(id)?,
                mask: self.step_input(id, "mask")?,
                grow: usize::try_from(self.int(id, "grow_mask_by")?)
                    .map_err(|_| node_err(id, class_type, "grow_mask_by must not be negative"))?,
            },
            Operation::SetNoiseMask => ImageOp::SetNoiseMask {
                samples: self.step_input(id, "samples")?,
                mask: self.step_input(id, "mask")?,
            },
            Operation::LoadImage => {
                let name = self.string(id, "image")?;
                let path = self
                    .folders
                    .resolve(crate::model::folders::INPUT_KIND, &name)
                    .ok_or_else(|| {
                        node_err(id, class_type, format!("Invalid image file: {name}"))
                    })?;
                let step = self.push_step(id, ImageOp::LoadImage { path });
                return Ok(vec![NodeValue::Step(step), NodeValue::Step(step)]);
            }
            _ => return Err(node_err(id, class_type, "not an image node")),
        };
        let s = self.push_step(id, step);
        Ok(vec![NodeValue::Step(s)])
    }

    fn planned_vae(&mut self, id: &str) -> Result<usize, EngineError> {
        let NodeValue::Vae(source) = self.input(id, "vae")? else {
            return Err(node_err(id, "", "input \"vae\" is not a VAE"));
        };
        let key = WeightsKey::Vae(source);
        if let Some(&i) = self.weights_index.get(&key) {
            return Ok(i);
        }
        let keys = self.sources[source].keys(Component::Vae).to_vec();
        let mut tensors = Vec::new();
        for key in keys {
            let Some((leaf, shape)) = self.leaf(source, Component::Vae, &key) else {
                continue;
            };
            if !leaf.dtype.is_mergeable() {
                continue;
            }
            let recipe = compute(
                Expr {
                    leaf,
                    steps: Vec::new(),
                },
                DType::F32,
                None,
            );
            tensors.push((key, recipe, shape));
        }
        Ok(self.add_weights(
            key,
            PlannedWeights {
                network: Network::Vae,
                architecture: self.sources[source].architecture(),
                tensors,
            },
        ))
    }

    fn add_weights(&mut self, key: WeightsKey, w: PlannedWeights) -> usize {
        self.weights.push(w);
        let i = self.weights.len() - 1;
        self.weights_index.insert(key, i);
        i
    }

    /// The weights of a MODEL or CLIP value, planned once per value.
    fn planned_weights(
        &mut self,
        id: &str,
        w: &Weights,
        network: Network,
    ) -> Result<usize, EngineError> {
        let expected = match network {
            Network::Unet => Component::Model,
            Network::Clip => Component::Clip,
            Network::Vae => Component::Vae,
        };
        if w.component != expected {
            return Err(node_err(
                id,
                "",
                format!("expected a {} input", expected.as_str()),
            ));
        }
        // Values are planned once per node, so the same patch objects mean the same weights.
        let key = WeightsKey::Weights {
            source: w.source,
            patches: w.patches.iter().map(|p| Arc::as_ptr(p) as usize).collect(),
            network,
        };
        if let Some(&i) = self.weights_index.get(&key) {
            return Ok(i);
        }
        let architecture = self.sources[w.source].architecture();
        if !matches!(
            architecture,
            Architecture::Sd1 | Architecture::Sd2 | Architecture::Sdxl
        ) {
            return Err(node_err(
                id,
                "",
                format!(
                    "image generation supports SD1.x, SD2.x and SDXL models; this one is {}",
                    architecture.as_str()
                ),
            ));
        }
        let (out, round_inputs) = match network {
            Network::Clip => (DType::F16, Some(DType::F16)),
            _ => (DType::F32, None),
        };
        let keys = self.sources[w.source].keys(w.component).to_vec();
        let mut tensors = Vec::new();
        for key in keys {
            if key.ends_with(".position_ids") || key.ends_with("logit_scale") {
                continue;
            }
            let Some((expr, shape)) = self.expr(w, &key) else {
                continue;
            };
            if !expr.leaf.dtype.is_mergeable() {
                continue;
            }
            tensors.push((key, compute(expr, out, round_inputs), shape));
        }
        Ok(self.add_weights(
            key,
            PlannedWeights {
                network,
                architecture,
                tensors,
            },
        ))
    }

    /// The model's sampling: a ModelSampling node's, or the checkpoint's own markers.
    fn sampling_kind(&self, w: &Weights) -> SamplingKind {
        let d = &self.sources[w.source].checkpoint.detection;
        let prediction = |name: &str| match name {
            "v_prediction" => Prediction::V,
            "edm" | "edm_playground_v2.5" => Prediction::Edm,
            _ => Prediction::Eps,
        };
        match &w.sampling {
            Some(SamplingOverride::Discrete { sampling, zsnr }) => SamplingKind::Discrete {
                prediction: prediction(sampling),
                zsnr: *zsnr,
            },
            Some(SamplingOverride::ContinuousEdm {
                sampling,
                sigma_max,
                sigma_min,
            }) => SamplingKind::ContinuousEdm {
                prediction: prediction(sampling),
                sigma_min: *sigma_min,
                sigma_max: *sigma_max,
            },
            None => match d.prediction {
                Prediction::EdmV => {
                    let scalar = |name: &str| self.scalar(w.source, name);
                    SamplingKind::ContinuousEdm {
                        prediction: Prediction::V,
                        sigma_min: scalar("edm_vpred.sigma_min").unwrap_or(0.002),
                        sigma_max: scalar("edm_vpred.sigma_max").unwrap_or(120.0),
                    }
                }
                p => SamplingKind::Discrete {
                    prediction: p,
                    zsnr: d.zsnr,
                },
            },
        }
    }

    /// A scalar f32 tensor of the file (the EDM sigma markers).
    fn scalar(&self, source: usize, name: &str) -> Option<f64> {
        let src = &self.sources[source];
        let t = src.checkpoint.file.get(name)?;
        if t.dtype != DType::F32 || t.numel() != 1 {
            return None;
        }
        let mut b = [0u8; 4];
        src.read_at(t.offset, &mut b).ok()?;
        Some(f64::from(f32::from_le_bytes(b)))
    }
}

/// A recipe evaluated in f32 and rounded once to `out` (a copy when nothing changes).
fn compute(expr: Expr, out: DType, round_inputs: Option<DType>) -> Recipe {
    if expr.steps.is_empty() && expr.leaf.dtype == out {
        return Recipe::Copy(expr.leaf);
    }
    Recipe::Compute {
        expr,
        out,
        round_inputs,
        stochastic: None,
    }
}
