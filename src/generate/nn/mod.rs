//! The networks of the image half — CLIP text encoders, the LDM UNet, the KL-f8 VAE — written
//! on candle-core tensors in ComfyUI's own key names, with ComfyUI's CPU arithmetic
//! (generation.md §3–§7): f32 compute, erf-GELU where ComfyUI uses it, two-pass norms, the
//! timestep embedding in f32, attention in query chunks so memory stays bounded.
//!
//! Weights come in as a [`WeightMap`] — component-local key to f32 tensor — built by the engine
//! from its exact expressions (a merged or patched model never has to be saved first). Each
//! network reads its shape (widths, depths, which blocks have attention) from the weights, so
//! full-size and reduced test models run through the same code.
//!
//! Why not candle-transformers' stable-diffusion modules: tanh-GELU, no SDXL pooled or size
//! input, CLIP fails for batch > 1 and the VAE cannot take the mean (generation.md §2).

pub mod clip;
pub mod conv;
pub mod norm;
pub mod ops;
pub mod unet;
pub mod vae;

use std::collections::HashMap;

use candle_core::Tensor;

/// The f32 values of a contiguous CPU tensor, as a custom op receives it.
pub(crate) fn contiguous_f32<'a>(
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("{op} needs contiguous tensors");
    };
    let candle_core::CpuStorage::F32(v) = s else {
        candle_core::bail!("{op} computes in f32 only");
    };
    Ok(&v[start..end])
}

/// A network could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    #[error("weight {key:?} is missing")]
    Missing { key: String },
    #[error("weight {key:?} has shape {found:?}, expected {expected}")]
    Shape {
        key: String,
        found: Vec<usize>,
        expected: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("tensor computation failed: {0}")]
    Compute(String),
    /// The caller's stop flag was set during a network call.
    #[error("cancelled")]
    Cancelled,
}

impl From<candle_core::Error> for NnError {
    fn from(e: candle_core::Error) -> Self {
        NnError::Compute(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, NnError>;

/// Component-local weights by key (`input_blocks.1.0.in_layers.0.weight`,
/// `decoder.conv_in.weight`, …), each f32 on the compute device.
#[derive(Clone, Debug, Default)]
pub struct WeightMap {
    tensors: HashMap<String, Tensor>,
}

impl WeightMap {
    pub fn new() -> WeightMap {
        WeightMap::default()
    }

    pub fn insert(&mut self, key: impl Into<String>, tensor: Tensor) {
        self.tensors.insert(key.into(), tensor);
    }

    pub fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The tensor of `key`, or an error naming it.
    pub fn get(&self, key: &str) -> Result<Tensor> {
        self.tensors
            .get(key)
            .cloned()
            .ok_or_else(|| NnError::Missing {
                key: key.to_owned(),
            })
    }

    /// The tensor of `key`, checked to have `rank` dimensions.
    pub fn get_rank(&self, key: &str, rank: usize) -> Result<Tensor> {
        let t = self.get(key)?;
        if t.rank() != rank {
            return Err(NnError::Shape {
                key: key.to_owned(),
                found: t.dims().to_vec(),
                expected: format!("{rank} dimensions"),
            });
        }
        Ok(t)
    }

    /// Every key that starts with `prefix`.
    pub fn keys_under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.tensors
            .keys()
            .filter(move |k| k.starts_with(prefix))
            .map(String::as_str)
    }
}

/// Counts `prefix{i}{suffix}` keys for i = 0, 1, … until one is missing.
pub(crate) fn count_indexed(w: &WeightMap, prefix: &str, suffix: &str) -> usize {
    (0..)
        .take_while(|i| w.contains(&format!("{prefix}{i}{suffix}")))
        .count()
}

#[cfg(test)]
pub(crate) mod testing {
    //! Random weights for the networks' unit tests.
    use candle_core::{Device, Tensor};

    use super::WeightMap;
    use crate::model::layouts::SplitMix64;

    /// Adds `key` with `shape`, filled from a per-key stream: norms near 1, others small.
    pub fn put(w: &mut WeightMap, key: &str, shape: &[usize]) {
        let n: usize = shape.iter().product();
        let mut rng = SplitMix64::for_tensor(7, key);
        let norm = key.contains("norm") && key.ends_with("weight");
        let values: Vec<f32> = (0..n)
            .map(|_| {
                let r = rng.next_signed();
                if norm { 1.0 + 0.1 * r } else { 0.2 * r }
            })
            .collect();
        let t = Tensor::from_vec(values, shape, &Device::Cpu).expect("tensor");
        w.insert(key, t);
    }
}
