//! The image half of a workflow (CLIPTextEncode, KSampler, VAEDecode, …), computed as ComfyUI
//! computes it on a CPU (`shared/reference/generation.md`). Built up in tested pieces; so far:
//!
//! - [`sampling`]: the noise ComfyUI draws (torch's CPU generator, bit for bit), the noise
//!   schedules of its model samplings and schedulers, and its samplers.
//! - [`text`]: prompt text to weighted CLIP tokens in 77-token batches.
//!
//! Sits beside the engine, below the UI and the command line; knows nothing of egui.

pub mod sampling;
pub mod text;
