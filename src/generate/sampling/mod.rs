//! Sampling: PyTorch-compatible noise ([`rng`]) and ComfyUI's noise schedules ([`schedule`]).

pub mod rng;
pub mod schedule;
