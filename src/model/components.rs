//! Key groups: which component of a checkpoint each tensor belongs to, and what ComfyUI's save
//! keeps, drops and adds.
//!
//! ComfyUI splits a checkpoint into MODEL (diffusion-model keys), CLIP (text encoders) and VAE by
//! key prefix, and drops whatever is left (EMA weights, noise-schedule buffers) when it saves
//! (reference §2.3, §3.2). Amalgam keeps each file's own key layout, with no conversion round
//! trips, and uses [`save_fate`] / [`keys_added_on_save`] to reproduce what ComfyUI's output holds.

use super::arch::Architecture;

/// The component a key belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    Model,
    Clip,
    Vae,
    /// Neither: EMA copies, `alphas_cumprod`, markers and other leftovers.
    Other,
}

impl Component {
    pub const ALL: [Component; 4] = [
        Component::Model,
        Component::Clip,
        Component::Vae,
        Component::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Component::Model => "model",
            Component::Clip => "clip",
            Component::Vae => "vae",
            Component::Other => "other",
        }
    }
}

/// Prefixes of text-encoder keys in full checkpoints.
pub const CLIP_PREFIXES: [&str; 3] = [
    "cond_stage_model.",
    "conditioner.embedders.",
    "text_encoders.",
];
/// Prefixes of VAE keys in full checkpoints.
pub const VAE_PREFIXES: [&str; 2] = ["first_stage_model.", "vae."];

/// Classifies a key. `unet_prefix` is the detected diffusion-model prefix; `""` means a bare
/// diffusion-model file, where every key is MODEL.
pub fn component_of(key: &str, unet_prefix: &str) -> Component {
    if unet_prefix.is_empty() {
        return Component::Model;
    }
    if key.starts_with(unet_prefix) {
        Component::Model
    } else if CLIP_PREFIXES.iter().any(|p| key.starts_with(p)) {
        Component::Clip
    } else if VAE_PREFIXES.iter().any(|p| key.starts_with(p)) {
        Component::Vae
    } else {
        Component::Other
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_by_prefix() {
        let p = "model.diffusion_model.";
        assert_eq!(
            component_of("model.diffusion_model.out.2.weight", p),
            Component::Model
        );
        assert_eq!(
            component_of("cond_stage_model.transformer.x", p),
            Component::Clip
        );
        assert_eq!(
            component_of("conditioner.embedders.1.model.ln_final.weight", p),
            Component::Clip
        );
        assert_eq!(
            component_of("text_encoders.t5xxl.transformer.x", p),
            Component::Clip
        );
        assert_eq!(
            component_of("first_stage_model.decoder.conv_in.weight", p),
            Component::Vae
        );
        assert_eq!(
            component_of("vae.decoder.conv_in.weight", p),
            Component::Vae
        );
        assert_eq!(component_of("model_ema.decay", p), Component::Other);
        assert_eq!(component_of("alphas_cumprod", p), Component::Other);
        assert_eq!(
            component_of("input_blocks.0.0.weight", ""),
            Component::Model
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
