//! The KL-f8 autoencoder (`comfy/ldm/modules/diffusionmodules/model.py`, generation.md §7.1) in
//! its LDM key names (`encoder.down.N.block.M.…`, `decoder.up.N.…`, `quant_conv`, …): GroupNorm
//! with 32 groups and eps 1e-6, swish, single-head attention in the middle blocks, a
//! zero-padded `(0, 1, 0, 1)` stride-2 downsample, nearest ×2 upsampling.
//!
//! Encoding returns the distribution's *mean* (the first half of the moments), as ComfyUI's
//! `mode()`; decoding returns raw values in about [−1, 1] — the pixel conversion is the caller's.

use candle_core::Tensor;

use super::ops::{Conv2d, GroupNorm, Linear, attention};
use super::{NnError, Result, WeightMap, count_indexed};

#[derive(Clone, Debug)]
struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    fn load(w: &WeightMap, p: &str) -> Result<ResnetBlock> {
        Ok(ResnetBlock {
            norm1: GroupNorm::load(w, &format!("{p}norm1"), 32, 1e-6)?,
            conv1: Conv2d::load3(w, &format!("{p}conv1"))?,
            norm2: GroupNorm::load(w, &format!("{p}norm2"), 32, 1e-6)?,
            conv2: Conv2d::load3(w, &format!("{p}conv2"))?,
            shortcut: if w.contains(&format!("{p}nin_shortcut.weight")) {
                Some(Conv2d::load(w, &format!("{p}nin_shortcut"), 0, 1)?)
            } else {
                None
            },
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // Each intermediate is dropped as soon as the next exists (a shadowed `let` would keep
        // it to the end of the function): at 1024² each is 512 MB.
        let h1 = self.conv1.forward(&self.norm1.forward_silu(x)?)?;
        let n2 = self.norm2.forward_silu(&h1)?;
        drop(h1);
        let h = self.conv2.forward(&n2)?;
        drop(n2);
        let skip = match &self.shortcut {
            Some(s) => s.forward(x)?,
            None => x.clone(),
        };
        Ok((skip + h)?)
    }
}

#[derive(Clone, Debug)]
struct AttnBlock {
    norm: GroupNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    proj_out: Linear,
}

impl AttnBlock {
    fn load(w: &WeightMap, p: &str) -> Result<AttnBlock> {
        Ok(AttnBlock {
            norm: GroupNorm::load(w, &format!("{p}norm"), 32, 1e-6)?,
            q: Linear::load_pointwise(w, &format!("{p}q"))?,
            k: Linear::load_pointwise(w, &format!("{p}k"))?,
            v: Linear::load_pointwise(w, &format!("{p}v"))?,
            proj_out: Linear::load_pointwise(w, &format!("{p}proj_out"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let t = self
            .norm
            .forward(x)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?
            .contiguous()?;
        let a = attention(
            &self.q.forward(&t)?,
            &self.k.forward(&t)?,
            &self.v.forward(&t)?,
            1,
            None,
        )?;
        let out = self
            .proj_out
            .forward(&a)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, c, h, w))?;
        Ok((x + out)?)
    }
}

#[derive(Clone, Debug)]
struct Mid {
    block_1: ResnetBlock,
    attn_1: AttnBlock,
    block_2: ResnetBlock,
}

impl Mid {
    fn load(w: &WeightMap, p: &str) -> Result<Mid> {
        Ok(Mid {
            block_1: ResnetBlock::load(w, &format!("{p}mid.block_1."))?,
            attn_1: AttnBlock::load(w, &format!("{p}mid.attn_1."))?,
            block_2: ResnetBlock::load(w, &format!("{p}mid.block_2."))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.block_2
            .forward(&self.attn_1.forward(&self.block_1.forward(x)?)?)
    }
}

#[derive(Clone, Debug)]
struct Level {
    blocks: Vec<ResnetBlock>,
    /// The down- or upsampling convolution after the blocks.
    resample: Option<Conv2d>,
}

/// The decoder half.
#[derive(Clone, Debug)]
pub struct Decoder {
    post_quant_conv: Option<Conv2d>,
    conv_in: Conv2d,
    mid: Mid,
    /// Deepest level first, as they run.
    up: Vec<Level>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    /// Reads `decoder.*` and `post_quant_conv.*` (component-local VAE keys).
    pub fn load(w: &WeightMap) -> Result<Decoder> {
        let levels = count_indexed(w, "decoder.up.", ".block.0.norm1.weight");
        if levels == 0 {
            return Err(NnError::Missing {
                key: "decoder.up.0.block.0.norm1.weight".into(),
            });
        }
        let mut up = Vec::new();
        for i in (0..levels).rev() {
            let p = format!("decoder.up.{i}.");
            let n = count_indexed(w, &format!("{p}block."), ".norm1.weight");
            up.push(Level {
                blocks: (0..n)
                    .map(|j| ResnetBlock::load(w, &format!("{p}block.{j}.")))
                    .collect::<Result<_>>()?,
                resample: if w.contains(&format!("{p}upsample.conv.weight")) {
                    Some(Conv2d::load3(w, &format!("{p}upsample.conv"))?)
                } else {
                    None
                },
            });
        }
        Ok(Decoder {
            post_quant_conv: if w.contains("post_quant_conv.weight") {
                Some(Conv2d::load(w, "post_quant_conv", 0, 1)?)
            } else {
                None
            },
            conv_in: Conv2d::load3(w, "decoder.conv_in")?,
            mid: Mid::load(w, "decoder.")?,
            up,
            norm_out: GroupNorm::load(w, "decoder.norm_out", 32, 1e-6)?,
            conv_out: Conv2d::load3(w, "decoder.conv_out")?,
        })
    }

    /// The latent channels it takes.
    pub fn latent_channels(&self) -> usize {
        match &self.post_quant_conv {
            Some(c) => c.in_channels(),
            None => self.conv_in.in_channels(),
        }
    }

    /// `[B, 4, h, w]` (VAE space, i.e. already divided by the scale factor) to
    /// `[B, 3, 8h, 8w]` in about [−1, 1].
    pub fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let z = match &self.post_quant_conv {
            Some(c) => c.forward(z)?,
            None => z.clone(),
        };
        let mut h = self.mid.forward(&self.conv_in.forward(&z)?)?;
        for level in &self.up {
            for b in &level.blocks {
                h = b.forward(&h)?;
            }
            if let Some(conv) = &level.resample {
                h = conv.forward_upsampled2(&h)?;
            }
        }
        self.conv_out.forward(&self.norm_out.forward_silu(&h)?)
    }
}

/// The encoder half.
#[derive(Clone, Debug)]
pub struct Encoder {
    conv_in: Conv2d,
    down: Vec<Level>,
    mid: Mid,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    quant_conv: Option<Conv2d>,
}

impl Encoder {
    /// Reads `encoder.*` and `quant_conv.*`.
    pub fn load(w: &WeightMap) -> Result<Encoder> {
        let levels = count_indexed(w, "encoder.down.", ".block.0.norm1.weight");
        if levels == 0 {
            return Err(NnError::Missing {
                key: "encoder.down.0.block.0.norm1.weight".into(),
            });
        }
        let down = (0..levels)
            .map(|i| {
                let p = format!("encoder.down.{i}.");
                let n = count_indexed(w, &format!("{p}block."), ".norm1.weight");
                Ok(Level {
                    blocks: (0..n)
                        .map(|j| ResnetBlock::load(w, &format!("{p}block.{j}.")))
                        .collect::<Result<_>>()?,
                    resample: if w.contains(&format!("{p}downsample.conv.weight")) {
                        Some(Conv2d::load(w, &format!("{p}downsample.conv"), 0, 2)?)
                    } else {
                        None
                    },
                })
            })
            .collect::<Result<_>>()?;
        Ok(Encoder {
            conv_in: Conv2d::load3(w, "encoder.conv_in")?,
            down,
            mid: Mid::load(w, "encoder.")?,
            norm_out: GroupNorm::load(w, "encoder.norm_out", 32, 1e-6)?,
            conv_out: Conv2d::load3(w, "encoder.conv_out")?,
            quant_conv: if w.contains("quant_conv.weight") {
                Some(Conv2d::load(w, "quant_conv", 0, 1)?)
            } else {
                None
            },
        })
    }

    /// `[B, 3, H, W]` pixels in [−1, 1] (H, W multiples of 8) to the latent mean `[B, 4, H/8, W/8]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for level in &self.down {
            for b in &level.blocks {
                h = b.forward(&h)?;
            }
            if let Some(conv) = &level.resample {
                // Pad right and bottom by one, then a 3×3 stride-2 convolution without padding.
                h = conv.forward(&h.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?)?;
            }
        }
        h = self.mid.forward(&h)?;
        h = self.conv_out.forward(&self.norm_out.forward_silu(&h)?)?;
        if let Some(q) = &self.quant_conv {
            h = q.forward(&h)?;
        }
        let half = h.dim(1)? / 2;
        Ok(h.narrow(1, 0, half)?.contiguous()?)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use candle_core::Device;

    use super::super::testing::put;
    use super::*;

    /// A KL-f8 VAE with base width `ch` (the real one has 128) and `levels` levels.
    pub(crate) fn tiny_vae(ch: usize, mult: &[usize]) -> WeightMap {
        let mut w = WeightMap::new();
        let conv = |w: &mut WeightMap, p: &str, o: usize, i: usize, k: usize| {
            put(w, &format!("{p}.weight"), &[o, i, k, k]);
            put(w, &format!("{p}.bias"), &[o]);
        };
        let norm = |w: &mut WeightMap, p: &str, c: usize| {
            put(w, &format!("{p}.weight"), &[c]);
            put(w, &format!("{p}.bias"), &[c]);
        };
        let res = |w: &mut WeightMap, p: &str, i: usize, o: usize| {
            norm(w, &format!("{p}norm1"), i);
            conv(w, &format!("{p}conv1"), o, i, 3);
            norm(w, &format!("{p}norm2"), o);
            conv(w, &format!("{p}conv2"), o, o, 3);
            if i != o {
                conv(w, &format!("{p}nin_shortcut"), o, i, 1);
            }
        };
        let mid = |w: &mut WeightMap, p: &str, c: usize| {
            res(w, &format!("{p}mid.block_1."), c, c);
            norm(w, &format!("{p}mid.attn_1.norm"), c);
            for n in ["q", "k", "v", "proj_out"] {
                conv(w, &format!("{p}mid.attn_1.{n}"), c, c, 1);
            }
            res(w, &format!("{p}mid.block_2."), c, c);
        };
        conv(&mut w, "encoder.conv_in", ch, 3, 3);
        let mut c = ch;
        for (i, m) in mult.iter().enumerate() {
            for j in 0..2 {
                res(&mut w, &format!("encoder.down.{i}.block.{j}."), c, ch * m);
                c = ch * m;
            }
            if i + 1 < mult.len() {
                conv(
                    &mut w,
                    &format!("encoder.down.{i}.downsample.conv"),
                    c,
                    c,
                    3,
                );
            }
        }
        mid(&mut w, "encoder.", c);
        norm(&mut w, "encoder.norm_out", c);
        conv(&mut w, "encoder.conv_out", 8, c, 3);
        conv(&mut w, "quant_conv", 8, 8, 1);
        conv(&mut w, "post_quant_conv", 4, 4, 1);
        let top = ch * mult[mult.len() - 1];
        conv(&mut w, "decoder.conv_in", top, 4, 3);
        mid(&mut w, "decoder.", top);
        let mut c = top;
        for (i, m) in mult.iter().enumerate().rev() {
            for j in 0..3 {
                res(&mut w, &format!("decoder.up.{i}.block.{j}."), c, ch * m);
                c = ch * m;
            }
            if i > 0 {
                conv(&mut w, &format!("decoder.up.{i}.upsample.conv"), c, c, 3);
            }
        }
        norm(&mut w, "decoder.norm_out", c);
        conv(&mut w, "decoder.conv_out", 3, c, 3);
        w
    }

    #[test]
    fn encode_and_decode_shapes() {
        let w = tiny_vae(32, &[1, 2, 2, 2]);
        let dec = Decoder::load(&w).expect("decoder");
        let enc = Encoder::load(&w).expect("encoder");
        assert_eq!(dec.latent_channels(), 4);
        let z: Vec<f32> = (0..2 * 4 * 3 * 5).map(|i| (i as f32 * 0.3).sin()).collect();
        let z = Tensor::from_vec(z, (2, 4, 3, 5), &Device::Cpu).expect("z");
        let img = dec.forward(&z).expect("decode");
        assert_eq!(img.dims(), [2, 3, 24, 40]);
        let back = enc.forward(&img.tanh().expect("tanh")).expect("encode");
        assert_eq!(back.dims(), [2, 4, 3, 5]);
    }

    #[test]
    fn missing_decoder_is_named() {
        let w = WeightMap::new();
        let err = Decoder::load(&w).expect_err("empty");
        assert!(err.to_string().contains("decoder.up.0"), "{err}");
    }
}
