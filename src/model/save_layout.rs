//! ComfyUI's save layout in one place: how text-encoder keys are named inside ComfyUI and in a
//! saved checkpoint, where the VAE goes, which input keys a save drops and which it adds, the
//! `modelspec.architecture` of each family, and CLIPSave's text-encoder groups
//! (reference §2.2–2.3).

use super::arch::{Architecture, Detection, Variant};
use super::components::{Component, component_of};

/// ComfyUI's internal text-encoder name for a checkpoint key (reference §3.2 step 6).
pub fn clip_internal(arch: Architecture, key: &str) -> String {
    let swap = |from: &str, to: &str| key.strip_prefix(from).map(|rest| format!("{to}{rest}"));
    let mapped = match arch {
        Architecture::Sd1 => key.strip_prefix("cond_stage_model.").map(|rest| {
            match rest.strip_prefix("transformer.") {
                // Old checkpoints lack the `text_model.` level; ComfyUI adds it.
                Some(t) if !t.starts_with("text_model.") && !t.starts_with("text_projection") => {
                    format!("clip_l.transformer.text_model.{t}")
                }
                _ => format!("clip_l.{rest}"),
            }
        }),
        Architecture::Sd2 => swap("cond_stage_model.model.", "clip_h.")
            .or_else(|| swap("conditioner.embedders.0.model.", "clip_h.")),
        Architecture::Sdxl => swap(
            "conditioner.embedders.0.transformer.",
            "clip_l.transformer.",
        )
        .or_else(|| swap("conditioner.embedders.1.model.", "clip_g.")),
        Architecture::SdxlRefiner => swap("conditioner.embedders.0.model.", "clip_g."),
        _ => key.strip_prefix("text_encoders.").map(str::to_owned),
    };
    mapped.unwrap_or_else(|| key.to_owned())
}

/// The checkpoint key ComfyUI's CheckpointSave writes for an internal CLIP name, for a model of
/// `arch` (reference §2.3); `None` when the architecture has no place for it.
pub fn clip_save_key(arch: Architecture, internal: &str) -> Option<String> {
    let swap = |from: &str, to: &str| {
        internal
            .strip_prefix(from)
            .map(|rest| format!("{to}{rest}"))
    };
    match arch {
        Architecture::Sd1 => swap("clip_l.", "cond_stage_model."),
        Architecture::Sd2 => swap("clip_h.", "cond_stage_model.model."),
        Architecture::Sdxl => swap(
            "clip_l.transformer.",
            "conditioner.embedders.0.transformer.",
        )
        .or_else(|| swap("clip_g.", "conditioner.embedders.1.model.")),
        Architecture::SdxlRefiner => swap("clip_g.", "conditioner.embedders.0.model."),
        _ => Some(format!("text_encoders.{internal}")),
    }
}

/// The VAE key prefix in a checkpoint of `arch`.
pub fn vae_save_prefix(arch: Architecture) -> &'static str {
    match arch {
        Architecture::Flux | Architecture::Unknown => "vae.",
        _ => "first_stage_model.",
    }
}

/// What ComfyUI's CheckpointSave does with a key of the input checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveFate {
    Keep,
    /// Not in ComfyUI's output (ignored at load time, or re-created on save).
    Drop,
}

/// Whether ComfyUI's save would write `key` of a checkpoint of `arch` (reference §2.3).
pub fn save_fate(arch: Architecture, key: &str, unet_prefix: &str) -> SaveFate {
    match component_of(key, unet_prefix) {
        Component::Other => return SaveFate::Drop,
        Component::Model | Component::Vae => return SaveFate::Keep,
        Component::Clip => {}
    }
    let dropped: &[&str] = match arch {
        Architecture::Sd1 => &[
            "cond_stage_model.transformer.text_model.embeddings.position_ids",
            "cond_stage_model.transformer.embeddings.position_ids",
            "cond_stage_model.transformer.text_projection.weight",
            "cond_stage_model.logit_scale",
        ],
        // SDXL's clip_l position_ids are re-created as int64 arange(77); its projection and
        // logit scale are not saved.
        Architecture::Sdxl => &[
            "conditioner.embedders.0.transformer.text_model.embeddings.position_ids",
            "conditioner.embedders.0.transformer.text_projection.weight",
            "conditioner.embedders.0.logit_scale",
        ],
        Architecture::SdxlRefiner => &["conditioner.embedders.0.model.position_ids"],
        _ => &[],
    };
    if dropped.contains(&key) {
        SaveFate::Drop
    } else {
        SaveFate::Keep
    }
}

/// A key ComfyUI's save writes although the input may not have it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddedKey {
    pub name: &'static str,
    /// int64 values of the tensor, shape `[1, len]`.
    pub arange_len: usize,
}

/// Keys added on save for `arch` (SDXL: clip_l `position_ids` as int64 `arange(77)`).
pub fn keys_added_on_save(arch: Architecture) -> Vec<AddedKey> {
    match arch {
        Architecture::Sdxl => vec![AddedKey {
            name: "conditioner.embedders.0.transformer.text_model.embeddings.position_ids",
            arange_len: 77,
        }],
        _ => Vec::new(),
    }
}

/// The `modelspec.architecture` ComfyUI writes for a model (SDXL family and SD3 only).
pub fn modelspec_architecture(detection: &Detection) -> Option<&'static str> {
    Some(match detection.architecture {
        Architecture::Sdxl if detection.variant == Some(Variant::InstructPix2Pix) => {
            "stable-diffusion-xl-v1-edit"
        }
        Architecture::Sdxl => "stable-diffusion-xl-v1-base",
        Architecture::SdxlRefiner => "stable-diffusion-xl-v1-refiner",
        Architecture::Sd3 => "stable-diffusion-v3-medium",
        _ => return None,
    })
}

/// CLIPSave's text encoders: each is saved to its own file (`<prefix>_<name>`), keys without
/// this prefix and `transformer.`; the files come in this order.
pub const CLIP_SAVE_GROUPS: [&str; 11] = [
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_names_map_both_ways() {
        let cases = [
            (
                Architecture::Sd1,
                "cond_stage_model.transformer.text_model.final_layer_norm.weight",
                "clip_l.transformer.text_model.final_layer_norm.weight",
            ),
            (
                Architecture::Sdxl,
                "conditioner.embedders.0.transformer.text_model.embeddings.position_ids",
                "clip_l.transformer.text_model.embeddings.position_ids",
            ),
            (
                Architecture::Sdxl,
                "conditioner.embedders.1.model.ln_final.weight",
                "clip_g.ln_final.weight",
            ),
            (
                Architecture::Sd2,
                "cond_stage_model.model.logit_scale",
                "clip_h.logit_scale",
            ),
            (
                Architecture::SdxlRefiner,
                "conditioner.embedders.0.model.text_projection",
                "clip_g.text_projection",
            ),
            (
                Architecture::Flux,
                "text_encoders.t5xxl.transformer.shared.weight",
                "t5xxl.transformer.shared.weight",
            ),
        ];
        for (arch, file, internal) in cases {
            assert_eq!(clip_internal(arch, file), internal);
            assert_eq!(clip_save_key(arch, internal).as_deref(), Some(file));
        }
        // Old SD1 layout gains `text_model.` and saves in the new form.
        let old = "cond_stage_model.transformer.encoder.layers.0.mlp.fc1.weight";
        let internal = clip_internal(Architecture::Sd1, old);
        assert_eq!(
            internal,
            "clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.weight"
        );
        assert_eq!(
            clip_save_key(Architecture::Sd1, &internal).as_deref(),
            Some("cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight")
        );
    }

    #[test]
    fn save_fate_follows_comfyui_layout() {
        let p = "model.diffusion_model.";
        let sd1_pos = "cond_stage_model.transformer.text_model.embeddings.position_ids";
        assert_eq!(save_fate(Architecture::Sd1, sd1_pos, p), SaveFate::Drop);
        assert_eq!(
            save_fate(Architecture::Sd2, "cond_stage_model.model.logit_scale", p),
            SaveFate::Keep
        );
        assert_eq!(save_fate(Architecture::Sd1, "betas", p), SaveFate::Drop);
        assert_eq!(
            save_fate(Architecture::Sd1, "model_ema.num_updates", p),
            SaveFate::Drop
        );
        assert_eq!(
            save_fate(
                Architecture::Sd1,
                "cond_stage_model.transformer.text_model.final_layer_norm.weight",
                p
            ),
            SaveFate::Keep
        );
        assert_eq!(keys_added_on_save(Architecture::Sdxl).len(), 1);
        assert!(keys_added_on_save(Architecture::Sd1).is_empty());
    }
}
