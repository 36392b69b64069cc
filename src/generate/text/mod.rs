//! Prompt text to CLIP tokens: the tokenizer ([`tokenizer`]) and ComfyUI's weight syntax and
//! 77-token batching ([`prompt`]).

pub mod prompt;
pub mod tokenizer;
