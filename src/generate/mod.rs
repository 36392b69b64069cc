//! The image half of a workflow (CLIPTextEncode, KSampler, VAEDecode, …), computed as ComfyUI
//! computes it on a CPU (`shared/reference/generation.md`):
//!
//! - [`sampling`]: the noise ComfyUI draws (torch's CPU generator, bit for bit), the noise
//!   schedules of its model samplings and schedulers, its samplers, the model wrapper and CFG.
//! - [`text`]: prompt text to weighted CLIP tokens in 77-token batches.
//! - [`nn`]: the networks (CLIP, UNet, VAE) on candle tensors, in ComfyUI's key names.
//! - [`conditioning`]: CLIPTextEncode per model family.
//! - [`ksampler`]: KSampler — noise, schedule, guidance and a sampler around a UNet.
//! - [`image`]: latents to pixels and back (VAEDecode, VAEEncode), 8-bit conversion, the live
//!   latent preview.
//!
//! Weights arrive as [`nn::WeightMap`]s; where they come from (a file, a merge) is the engine's
//! business. Sits beside the engine, below the UI and the command line; knows nothing of egui.

pub mod conditioning;
pub mod image;
pub mod ksampler;
pub mod nn;
pub mod sampling;
pub mod text;

/// Why an image node could not run.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error("{0}")]
    Network(nn::NnError),
    #[error("{0}")]
    Prompt(text::prompt::PromptError),
    /// The model does not fit the node (wrong family, missing part).
    #[error("{0}")]
    Model(String),
    /// An input value is out of range or inconsistent.
    #[error("{0}")]
    Input(String),
}

from_printed_cause!(
    GenError::Network(nn::NnError),
    GenError::Prompt(text::prompt::PromptError),
);

impl From<candle_core::Error> for GenError {
    fn from(e: candle_core::Error) -> Self {
        GenError::Network(nn::NnError::from(e))
    }
}
