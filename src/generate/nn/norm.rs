//! GroupNorm, optionally followed by SiLU, as one CPU pass per group: the statistics read the
//! group twice (mean, then the variance of the centred values — torch's two-pass arithmetic,
//! summed in f64), and the output is written once.
//!
//! Why a custom op: as a chain of tensor operations GroupNorm + SiLU allocated six tensors the
//! size of its input (centred, squared, normalised, scaled, shifted, activated). In the VAE
//! decoder at 1024² each is 512 MB, and their peak decided whether SDXL fits in 16 GiB.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

/// `groupnorm(x)·weight + bias`, then `x·sigmoid(x)` when `silu`. `x` is `[B, C, …]`, `weight`
/// and `bias` `[C]`; `C` a multiple of `groups`.
pub fn group_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    groups: usize,
    eps: f64,
    silu: bool,
) -> candle_core::Result<Tensor> {
    let x = x.contiguous()?;
    x.apply_op3_no_bwd(
        &weight.contiguous()?,
        &bias.contiguous()?,
        &FusedGroupNorm { groups, eps, silu },
    )
}

struct FusedGroupNorm {
    groups: usize,
    eps: f64,
    silu: bool,
}

impl CustomOp3 for FusedGroupNorm {
    fn name(&self) -> &'static str {
        "amalgam-group-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = super::contiguous_f32(s1, l1, self.name())?;
        let w = super::contiguous_f32(s2, l2, self.name())?;
        let b = super::contiguous_f32(s3, l3, self.name())?;
        let dims = l1.dims();
        if dims.len() < 2 {
            candle_core::bail!("amalgam-group-norm: input {dims:?} has no channel dimension");
        }
        let channels = dims[1];
        let spatial: usize = dims[2..].iter().product();
        let groups = self.groups.max(1);
        if !channels.is_multiple_of(groups) || w.len() != channels || b.len() != channels {
            candle_core::bail!(
                "amalgam-group-norm: {channels} channels, {groups} groups, weight {} and bias {}",
                w.len(),
                b.len()
            );
        }
        let per_group = channels / groups * spatial;
        let mut out = vec![0f32; x.len()];
        let (eps, silu) = (self.eps, self.silu);
        out.par_chunks_mut(per_group.max(1))
            .zip(x.par_chunks(per_group.max(1)))
            .enumerate()
            .for_each(|(i, (dst, src))| {
                let g = i % groups;
                let n = src.len() as f64;
                let mean = (src.iter().map(|&v| f64::from(v)).sum::<f64>() / n) as f32;
                let var = src
                    .iter()
                    .map(|&v| {
                        let c = f64::from(v - mean);
                        c * c
                    })
                    .sum::<f64>()
                    / n;
                let denom = (var as f32 + eps as f32).sqrt();
                let first_channel = g * (channels / groups);
                for (c, (d, s)) in dst
                    .chunks_mut(spatial.max(1))
                    .zip(src.chunks(spatial.max(1)))
                    .enumerate()
                {
                    let (scale, shift) = (w[first_channel + c], b[first_channel + c]);
                    for (o, &v) in d.iter_mut().zip(s) {
                        let y = (v - mean) / denom * scale + shift;
                        *o = if silu { y / (1.0 + (-y).exp()) } else { y };
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{D, Device};

    /// The same definition as a chain of tensor operations.
    fn reference(x: &Tensor, w: &Tensor, b: &Tensor, groups: usize, eps: f64) -> Tensor {
        let dims = x.dims().to_vec();
        let c = dims[1];
        let g = x.reshape((dims[0], groups, ())).expect("grouped");
        let mean = g.mean_keepdim(D::Minus1).expect("mean");
        let centred = g.broadcast_sub(&mean).expect("centred");
        let var = centred
            .sqr()
            .and_then(|s| s.mean_keepdim(D::Minus1))
            .expect("var");
        let normed = centred
            .broadcast_div(&(var + eps).and_then(|v| v.sqrt()).expect("denom"))
            .expect("normed");
        normed
            .reshape((dims[0], c, ()))
            .and_then(|t| t.broadcast_mul(&w.reshape((1, c, 1))?))
            .and_then(|t| t.broadcast_add(&b.reshape((1, c, 1))?))
            .and_then(|t| t.reshape(dims))
            .expect("affine")
    }

    #[test]
    fn matches_the_operation_chain_with_and_without_silu() {
        let dev = Device::Cpu;
        let (batch, c, h, w) = (2, 8, 5, 7);
        let xs: Vec<f32> = (0..batch * c * h * w)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 13.0 + (i / 70) as f32)
            .collect();
        let x = Tensor::from_vec(xs, (batch, c, h, w), &dev).expect("x");
        let weight = Tensor::from_vec((0..c).map(|i| 0.5 + i as f32 / 8.0).collect(), c, &dev)
            .expect("weight");
        let bias = Tensor::from_vec((0..c).map(|i| i as f32 / 4.0 - 1.0).collect(), c, &dev)
            .expect("bias");
        let want = reference(&x, &weight, &bias, 4, 1e-6);
        for silu in [false, true] {
            let got = group_norm(&x, &weight, &bias, 4, 1e-6, silu).expect("fused");
            let want = if silu {
                want.silu().expect("silu")
            } else {
                want.clone()
            };
            let diff = (got - want)
                .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
                .expect("diff");
            assert!(diff < 2e-6, "silu {silu}: max difference {diff}");
        }
    }
}
