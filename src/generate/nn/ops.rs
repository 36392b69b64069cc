//! The layers the networks share, each as ComfyUI computes it on a CPU: Linear, Conv2d,
//! GroupNorm and LayerNorm (two-pass variance, as torch — candle-nn's fused LayerNorm uses
//! `E[x²] − E[x]²`), erf-GELU, the sinusoidal timestep embedding in f32, and softmax attention
//! evaluated in query chunks, which is mathematically the same (softmax is per row) and keeps the
//! score matrix under [`ATTENTION_CHUNK_BYTES`].

use candle_core::{D, Tensor};

use super::{Result, WeightMap};

/// The largest attention score block computed at once (per batch item, all heads).
pub const ATTENTION_CHUNK_BYTES: usize = 256 << 20;

/// `y = x Wᵀ + b` over the last dimension. The weight is kept as stored and multiplied through a
/// transposed view (the matmul reads it with swapped strides), so a model's weights are never
/// held twice.
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// `{prefix}.weight` `[out, in]` and, when `bias`, `{prefix}.bias`.
    pub fn load(w: &WeightMap, prefix: &str, bias: bool) -> Result<Linear> {
        let weight = w.get_rank(&format!("{prefix}.weight"), 2)?;
        Linear::new(
            &weight,
            if bias {
                Some(w.get_rank(&format!("{prefix}.bias"), 1)?)
            } else {
                None
            },
        )
    }

    /// `{prefix}.weight` as a Linear, whether it is stored `[out, in]` or as a 1×1 conv
    /// `[out, in, 1, 1]` (the VAE's attention), with its bias.
    pub fn load_pointwise(w: &WeightMap, prefix: &str) -> Result<Linear> {
        let weight = w.get(&format!("{prefix}.weight"))?;
        let out = weight.dim(0)?;
        let weight = weight.reshape((out, weight.elem_count() / out.max(1)))?;
        Linear::new(&weight, Some(w.get_rank(&format!("{prefix}.bias"), 1)?))
    }

    pub fn new(weight: &Tensor, bias: Option<Tensor>) -> Result<Linear> {
        Ok(Linear {
            weight: weight.contiguous()?,
            bias,
        })
    }

    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }

    pub fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let inner = dims[dims.len() - 1];
        let rows = x.elem_count() / inner.max(1);
        // A text encoder's weights are kept as f16 and widened (exactly) for each use.
        let widened;
        let weight = if self.weight.dtype() == x.dtype() {
            &self.weight
        } else {
            widened = self.weight.to_dtype(x.dtype())?;
            &widened
        };
        let y = x.reshape((rows, inner))?.matmul(&weight.t()?)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out = dims;
        let last = out.len() - 1;
        out[last] = self.out_features();
        Ok(y.reshape(out)?)
    }
}

/// A 2-D convolution with bias (weight `[out, in, kh, kw]`, bias `[out]`), computed by
/// [`super::conv`].
#[derive(Clone, Debug)]
pub struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    padding: usize,
    stride: usize,
}

impl Conv2d {
    pub fn load(w: &WeightMap, prefix: &str, padding: usize, stride: usize) -> Result<Conv2d> {
        let weight = w.get_rank(&format!("{prefix}.weight"), 4)?;
        let bias = w.get_rank(&format!("{prefix}.bias"), 1)?;
        Ok(Conv2d {
            weight,
            bias,
            padding,
            stride,
        })
    }

    /// A 3×3 convolution with "same" padding.
    pub fn load3(w: &WeightMap, prefix: &str) -> Result<Conv2d> {
        Conv2d::load(w, prefix, 1, 1)
    }

    pub fn out_channels(&self) -> usize {
        self.weight.dims()[0]
    }

    pub fn in_channels(&self) -> usize {
        self.weight.dims()[1]
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(super::conv::conv2d(
            x,
            &self.weight,
            &self.bias,
            self.padding,
            self.stride,
            false,
        )?)
    }

    /// The convolution of `x` upsampled ×2 by nearest neighbour, without making that tensor.
    pub fn forward_upsampled2(&self, x: &Tensor) -> Result<Tensor> {
        Ok(super::conv::conv2d(
            x,
            &self.weight,
            &self.bias,
            self.padding,
            self.stride,
            true,
        )?)
    }
}

/// GroupNorm over `[B, C, …]` with `groups` groups and an affine weight and bias.
#[derive(Clone, Debug)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    pub fn load(w: &WeightMap, prefix: &str, groups: usize, eps: f64) -> Result<GroupNorm> {
        let weight = w.get_rank(&format!("{prefix}.weight"), 1)?;
        let channels = weight.dim(0)?;
        if channels % groups != 0 {
            return Err(super::NnError::Shape {
                key: format!("{prefix}.weight"),
                found: vec![channels],
                expected: format!(
                    "a multiple of {groups} channels (GroupNorm with {groups} groups)"
                ),
            });
        }
        let bias = w.get_rank(&format!("{prefix}.bias"), 1)?;
        Ok(GroupNorm {
            weight,
            bias,
            groups,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, false)
    }

    /// GroupNorm then SiLU, without the intermediate tensor (see [`super::norm`]).
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, true)
    }

    fn run(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        if x.device().is_cpu() {
            return Ok(super::norm::group_norm(
                x,
                &self.weight,
                &self.bias,
                self.groups,
                self.eps,
                silu,
            )?);
        }
        // Other devices: the same definition as tensor operations.
        let dims = x.dims().to_vec();
        let (b, c) = (dims[0], dims[1]);
        let grouped = x.reshape((b, self.groups, ()))?;
        let normed = normalize_last(&grouped, self.eps)?;
        let y = normed
            .reshape((b, c, ()))?
            .broadcast_mul(&self.weight.reshape((1, c, 1))?)?
            .broadcast_add(&self.bias.reshape((1, c, 1))?)?
            .reshape(dims)?;
        Ok(if silu { y.silu()? } else { y })
    }
}

/// `(x − mean) / √(var + eps)` over the last dimension, the variance from the centred values.
fn normalize_last(x: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let denom = (var + eps)?.sqrt()?;
    Ok(centred.broadcast_div(&denom)?)
}

/// LayerNorm over the last dimension.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn load(w: &WeightMap, prefix: &str, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: w.get_rank(&format!("{prefix}.weight"), 1)?,
            bias: w.get_rank(&format!("{prefix}.bias"), 1)?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(normalize_last(x, self.eps)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)?)
    }
}

/// `x · sigmoid(1.702 x)`: CLIP-L's activation.
pub fn quick_gelu(x: &Tensor) -> Result<Tensor> {
    let s = candle_core::Tensor::exp(&(x * -1.702)?)?;
    Ok(x.broadcast_div(&(s + 1.0)?)?)
}

/// Softmax over the last dimension (max subtracted first, as torch): candle-nn's fused CPU
/// kernel, one pass per row in parallel instead of five whole-tensor passes — the attention
/// scores are the largest tensors of a UNet call.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::softmax_last_dim(&x.contiguous()?)?)
}

/// Multi-head attention `softmax(q kᵀ · d^-½) v` for `q: [B, N, H·d]`, `k, v: [B, M, H·d]`,
/// with an optional additive mask `[N, M]`; returns `[B, N, H·d]`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, n, inner) = q.dims3()?;
    let m = k.dim(1)?;
    let d = inner / heads;
    let split = |t: &Tensor, len: usize| -> Result<Tensor> {
        Ok(t.reshape((b, len, heads, d))?
            .transpose(1, 2)?
            .contiguous()?)
    };
    let (q, k, v) = (split(q, n)?, split(k, m)?, split(v, m)?);
    let kt = k.transpose(2, 3)?.contiguous()?;
    let scale = (d as f64).powf(-0.5);
    // Rows per chunk so that one chunk's scores (all heads) stay under the budget.
    let per_row = heads * m * 4;
    let rows = (ATTENTION_CHUNK_BYTES / per_row.max(1)).clamp(1, n.max(1));
    let mut out = Vec::new();
    for bi in 0..b {
        let (qb, ktb, vb) = (q.get(bi)?, kt.get(bi)?, v.get(bi)?);
        let mut parts = Vec::new();
        let mut start = 0;
        while start < n {
            let len = rows.min(n - start);
            let qc = qb.narrow(1, start, len)?;
            let mut scores = (qc.matmul(&ktb)? * scale)?;
            if let Some(mask) = mask {
                scores = scores.broadcast_add(&mask.narrow(0, start, len)?)?;
            }
            parts.push(softmax_last(&scores)?.matmul(&vb)?);
            start += len;
        }
        out.push(Tensor::cat(&parts, 1)?);
    }
    let out = Tensor::stack(&out, 0)?; // [B, H, N, d]
    Ok(out.transpose(1, 2)?.contiguous()?.reshape((b, n, inner))?)
}

/// ComfyUI's `timestep_embedding(t, dim)` in f32: `[cos(t·f), sin(t·f)]` with
/// `f_i = exp(−ln(10000)·i / half)`, each operation rounded to f32 as torch does.
pub fn timestep_embedding(timesteps: &[f32], dim: usize) -> Vec<f32> {
    let half = dim / 2;
    let scale = -(10000f64.ln()) as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|i| ((scale * i as f32) / half as f32).exp())
        .collect();
    let mut out = Vec::with_capacity(timesteps.len() * dim);
    for &t in timesteps {
        let args: Vec<f32> = freqs.iter().map(|f| t * f).collect();
        out.extend(args.iter().map(|a| a.cos()));
        out.extend(args.iter().map(|a| a.sin()));
        if dim % 2 == 1 {
            out.push(0.0);
        }
    }
    out
}

/// Nearest-neighbour upsampling of `[B, C, H, W]` to `[B, C, h, w]`.
pub fn upsample_nearest(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    Ok(x.upsample_nearest2d(h, w)?)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    fn t(values: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_vec(values.to_vec(), shape, &Device::Cpu).expect("tensor")
    }

    /// Chunked attention equals attention written out element by element.
    #[test]
    fn attention_matches_the_definition() {
        let (b, n, m, heads, d) = (2, 5, 3, 2, 4);
        let gen_ = |len: usize, k: f32| -> Vec<f32> {
            (0..len).map(|i| (i as f32 * 0.37 + k).sin()).collect()
        };
        let qv = gen_(b * n * heads * d, 0.1);
        let kv = gen_(b * m * heads * d, 0.7);
        let vv = gen_(b * m * heads * d, 1.3);
        let got = attention(
            &t(&qv, &[b, n, heads * d]),
            &t(&kv, &[b, m, heads * d]),
            &t(&vv, &[b, m, heads * d]),
            heads,
            None,
        )
        .and_then(|x| Ok(x.flatten_all()?.to_vec1::<f32>()?))
        .expect("attention");
        let idx = |bi: usize, row: usize, h: usize, len: usize, j: usize| {
            ((bi * len + row) * heads + h) * d + j
        };
        for bi in 0..b {
            for h in 0..heads {
                for i in 0..n {
                    let scores: Vec<f64> = (0..m)
                        .map(|r| {
                            (0..d)
                                .map(|j| {
                                    f64::from(qv[idx(bi, i, h, n, j)])
                                        * f64::from(kv[idx(bi, r, h, m, j)])
                                })
                                .sum::<f64>()
                                / (d as f64).sqrt()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for j in 0..d {
                        let want: f64 = (0..m)
                            .map(|r| e[r] / sum * f64::from(vv[idx(bi, r, h, m, j)]))
                            .sum();
                        let g = f64::from(got[idx(bi, i, h, n, j)]);
                        assert!((g - want).abs() < 1e-5, "{g} vs {want}");
                    }
                }
            }
        }
    }

    /// GroupNorm normalises each group to mean 0 and variance 1 before the affine part.
    #[test]
    fn group_norm_normalises_each_group() {
        let mut w = WeightMap::new();
        w.insert("n.weight", t(&[1.0; 4], &[4]));
        w.insert("n.bias", t(&[0.0; 4], &[4]));
        let gn = GroupNorm::load(&w, "n", 2, 1e-6).expect("gn");
        let x: Vec<f32> = (0..16).map(|i| (i * i) as f32 * 0.5 + 100.0).collect();
        let y = gn
            .forward(&t(&x, &[1, 4, 2, 2]))
            .and_then(|y| Ok(y.flatten_all()?.to_vec1::<f32>()?))
            .expect("forward");
        for group in y.chunks(8) {
            let mean: f64 = group.iter().map(|v| f64::from(*v)).sum::<f64>() / 8.0;
            let var: f64 = group
                .iter()
                .map(|v| (f64::from(*v) - mean).powi(2))
                .sum::<f64>()
                / 8.0;
            assert!(mean.abs() < 1e-5, "{mean}");
            assert!((var - 1.0).abs() < 1e-4, "{var}");
        }
        w.insert("odd.weight", t(&[1.0; 3], &[3]));
        w.insert("odd.bias", t(&[0.0; 3], &[3]));
        let err = GroupNorm::load(&w, "odd", 2, 1e-6).expect_err("3 channels in 2 groups");
        assert!(err.to_string().contains("odd.weight"), "{err}");
    }

    /// The SD timestep embedding at t = 0 is all cosines 1 and sines 0; at t = 999 the first
    /// frequency is 1 (so cos(999), sin(999)).
    #[test]
    fn timestep_embedding_layout() {
        let e = timestep_embedding(&[0.0, 999.0], 8);
        assert_eq!(&e[..8], &[1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(e[8], 999f32.cos());
        assert_eq!(e[12], 999f32.sin());
        // f_1 = exp(−ln(10000)/4) = 0.1
        assert!((e[9] - (99.9f32).cos()).abs() < 1e-4);
    }
}
