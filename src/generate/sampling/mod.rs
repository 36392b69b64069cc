//! Sampling: PyTorch-compatible noise ([`rng`]), ComfyUI's noise schedules ([`schedule`]) and its
//! k-diffusion samplers ([`samplers`]).

pub mod rng;
pub mod samplers;
pub mod schedule;
