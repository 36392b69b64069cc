//! Key groups: which component of a checkpoint each tensor belongs to.
//!
//! ComfyUI splits a checkpoint into MODEL (diffusion-model keys), CLIP (text encoders) and VAE by
//! key prefix, and drops whatever is left (EMA weights, noise-schedule buffers) when it saves
//! (reference §2.3, §3.2). Amalgam keeps each file's own key layout, with no conversion round
//! trips; what a save keeps, drops and adds is in [`super::save_layout`].

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
}
