//! Sampling: PyTorch-compatible noise ([`rng`]), ComfyUI's noise schedules ([`schedule`]) and its
//! k-diffusion samplers ([`samplers`]), with the model wrapper and CFG between them and the
//! network ([`guider`]).

pub mod guider;
pub mod rng;
pub mod samplers;
pub mod schedule;
