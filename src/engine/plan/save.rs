//! What each save node writes: its tensors (in safetensors' write order), their recipes and
//! the file's metadata.

use std::sync::Arc;

use crate::format::DType;
use crate::format::pyjson;
use crate::format::safetensors::TensorSpec;
use crate::model::arch::{Architecture, Prediction};
use crate::model::components::Component;
use crate::model::save_layout::{
    CLIP_SAVE_GROUPS, SaveFate, clip_save_key, keys_added_on_save, modelspec_architecture,
    save_fate, vae_save_prefix,
};
use crate::nodes::Operation;

use super::ir::{Expr, Leaf, PlannedFile, PlannedTensor, Recipe, SaveKind};
use super::{EngineError, NodeValue, Planner, SamplingOverride, Weights, node_err};

impl Planner<'_> {
    pub(super) fn save_node(&mut self, id: &str) -> Result<Vec<PlannedFile>, EngineError> {
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
                modelspec_title = self.model_metadata(&model, &mut metadata, &mut tensors)
                    && !self.metadata.has_title();
                metadata.extend(self.metadata.modelspec());
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
                    None,
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
        let d = &src.checkpoint.detection;
        let spec = modelspec_architecture(d);
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
                    if let Some(t) = src.checkpoint.file.get(name) {
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
        if self.metadata.disabled {
            return;
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
        let keys = self.sources[clip.source].keys(Component::Clip).to_vec();
        let mut groups: Vec<(String, Vec<PlannedTensor>)> = Vec::new();
        for key in keys {
            let group = CLIP_SAVE_GROUPS
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
            CLIP_SAVE_GROUPS
                .iter()
                .position(|x| x.trim_end_matches('.') == g)
                .unwrap_or(CLIP_SAVE_GROUPS.len())
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
