//! The LDM UNet (`comfy/ldm/modules/diffusionmodules/openaimodel.py`) in its checkpoint key
//! names (`input_blocks.N.M.…`, `middle_block.…`, `output_blocks.…`, `time_embed.…`,
//! `label_emb.…`, `out.…`), for SD1.x, SD2.x, SDXL and the 9-channel inpainting UNets
//! (generation.md §6.8).
//!
//! The structure is read from the keys: which input and output blocks hold a ResBlock, a
//! SpatialTransformer (and how many transformer blocks), a Downsample or an Upsample; channel
//! counts come from the weight shapes. Only the head rule is given by the caller (SD1: 8 heads;
//! SD2/SDXL: 64-wide heads), as ComfyUI takes it from the model config, not the weights.

use candle_core::Tensor;

use super::ops::{
    Conv2d, GroupNorm, LayerNorm, Linear, attention, timestep_embedding, upsample_nearest,
};
use super::{NnError, Result, WeightMap, count_indexed};

/// How the attention heads of a UNet are sized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heads {
    /// A fixed number of heads (SD1.x: 8).
    Count(usize),
    /// Heads of a fixed width (SD2.x, SDXL: 64).
    Width(usize),
}

impl Heads {
    fn for_channels(self, channels: usize) -> usize {
        match self {
            Heads::Count(n) => n,
            Heads::Width(w) => (channels / w).max(1),
        }
    }
}

#[derive(Clone, Debug)]
struct ResBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    emb: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    skip: Option<Conv2d>,
}

impl ResBlock {
    fn load(w: &WeightMap, p: &str) -> Result<ResBlock> {
        let skip_key = format!("{p}skip_connection.weight");
        Ok(ResBlock {
            norm1: GroupNorm::load(w, &format!("{p}in_layers.0"), 32, 1e-5)?,
            conv1: Conv2d::load3(w, &format!("{p}in_layers.2"))?,
            emb: Linear::load(w, &format!("{p}emb_layers.1"), true)?,
            norm2: GroupNorm::load(w, &format!("{p}out_layers.0"), 32, 1e-5)?,
            conv2: Conv2d::load3(w, &format!("{p}out_layers.3"))?,
            skip: if w.contains(&skip_key) {
                Some(Conv2d::load(w, &format!("{p}skip_connection"), 0, 1)?)
            } else {
                None
            },
        })
    }

    fn forward(&self, x: &Tensor, emb_silu: &Tensor) -> Result<Tensor> {
        // Intermediates dropped as soon as the next exists (see the VAE's resnet block).
        let h1 = self.conv1.forward(&self.norm1.forward_silu(x)?)?;
        let e = self.emb.forward(emb_silu)?.unsqueeze(2)?.unsqueeze(3)?;
        let h2 = h1.broadcast_add(&e)?;
        drop(h1);
        let n2 = self.norm2.forward_silu(&h2)?;
        drop(h2);
        let h = self.conv2.forward(&n2)?;
        drop(n2);
        let skip = match &self.skip {
            Some(s) => s.forward(x)?,
            None => x.clone(),
        };
        Ok((skip + h)?)
    }
}

#[derive(Clone, Debug)]
struct CrossAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
}

impl CrossAttention {
    fn load(w: &WeightMap, p: &str, heads: usize) -> Result<CrossAttention> {
        Ok(CrossAttention {
            q: Linear::load(w, &format!("{p}to_q"), false)?,
            k: Linear::load(w, &format!("{p}to_k"), false)?,
            v: Linear::load(w, &format!("{p}to_v"), false)?,
            out: Linear::load(w, &format!("{p}to_out.0"), true)?,
            heads,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let a = attention(
            &self.q.forward(x)?,
            &self.k.forward(context)?,
            &self.v.forward(context)?,
            self.heads,
            None,
        )?;
        self.out.forward(&a)
    }
}

#[derive(Clone, Debug)]
struct TransformerBlock {
    norm1: LayerNorm,
    attn1: CrossAttention,
    norm2: LayerNorm,
    attn2: CrossAttention,
    norm3: LayerNorm,
    ff_in: Linear,
    ff_out: Linear,
}

impl TransformerBlock {
    fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let h = self.norm1.forward(x)?;
        let x = (x + self.attn1.forward(&h, &h)?)?;
        let x = (&x + self.attn2.forward(&self.norm2.forward(&x)?, context)?)?;
        // GEGLU: `a · gelu(g)` with the projection's two halves, erf-GELU as ComfyUI.
        let h = self.ff_in.forward(&self.norm3.forward(&x)?)?;
        let half = h.dim(2)? / 2;
        let gated = (h.narrow(2, 0, half)? * h.narrow(2, half, half)?.gelu_erf()?)?;
        Ok((&x + self.ff_out.forward(&gated)?)?)
    }
}

#[derive(Clone, Debug)]
enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

#[derive(Clone, Debug)]
struct SpatialTransformer {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<TransformerBlock>,
    proj_out: Projection,
}

impl SpatialTransformer {
    fn load(w: &WeightMap, p: &str, heads: Heads) -> Result<SpatialTransformer> {
        let proj = |name: &str| -> Result<Projection> {
            let key = format!("{p}{name}.weight");
            Ok(if w.get(&key)?.rank() == 4 {
                Projection::Conv(Conv2d::load(w, &format!("{p}{name}"), 0, 1)?)
            } else {
                Projection::Linear(Linear::load(w, &format!("{p}{name}"), true)?)
            })
        };
        let n = count_indexed(w, &format!("{p}transformer_blocks."), ".norm1.weight");
        let inner = w
            .get_rank(&format!("{p}transformer_blocks.0.attn1.to_q.weight"), 2)?
            .dim(0)?;
        let h = heads.for_channels(inner);
        let blocks = (0..n)
            .map(|i| {
                let b = format!("{p}transformer_blocks.{i}.");
                Ok(TransformerBlock {
                    norm1: LayerNorm::load(w, &format!("{b}norm1"), 1e-5)?,
                    attn1: CrossAttention::load(w, &format!("{b}attn1."), h)?,
                    norm2: LayerNorm::load(w, &format!("{b}norm2"), 1e-5)?,
                    attn2: CrossAttention::load(w, &format!("{b}attn2."), h)?,
                    norm3: LayerNorm::load(w, &format!("{b}norm3"), 1e-5)?,
                    ff_in: Linear::load(w, &format!("{b}ff.net.0.proj"), true)?,
                    ff_out: Linear::load(w, &format!("{b}ff.net.2"), true)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(SpatialTransformer {
            norm: GroupNorm::load(w, &format!("{p}norm"), 32, 1e-6)?,
            proj_in: proj("proj_in")?,
            blocks,
            proj_out: proj("proj_out")?,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let to_tokens = |t: &Tensor| -> Result<Tensor> {
            let ch = t.dim(1)?;
            Ok(t.reshape((b, ch, h * w))?.transpose(1, 2)?.contiguous()?)
        };
        let normed = self.norm.forward(x)?;
        let mut t = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(&conv.forward(&normed)?)?,
            Projection::Linear(lin) => lin.forward(&to_tokens(&normed)?)?,
        };
        for block in &self.blocks {
            t = block.forward(&t, context)?;
        }
        let from_tokens = |t: &Tensor| -> Result<Tensor> {
            let ch = t.dim(2)?;
            Ok(t.transpose(1, 2)?.contiguous()?.reshape((b, ch, h, w))?)
        };
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(&from_tokens(&t)?)?,
            Projection::Linear(lin) => from_tokens(&lin.forward(&t)?)?,
        };
        if out.dim(1)? != c {
            return Err(NnError::Invalid(format!(
                "a transformer's output has {} channels, its input {c}",
                out.dim(1)?
            )));
        }
        Ok((out + x)?)
    }
}

#[derive(Clone, Debug)]
enum Layer {
    Conv(Conv2d),
    Res(ResBlock),
    Transformer(SpatialTransformer),
    Down(Conv2d),
    Up(Conv2d),
}

/// The network.
#[derive(Clone, Debug)]
pub struct Unet {
    time_embed: (Linear, Linear),
    label_emb: Option<(Linear, Linear)>,
    input_blocks: Vec<Vec<Layer>>,
    middle_block: Vec<Layer>,
    output_blocks: Vec<Vec<Layer>>,
    out_norm: GroupNorm,
    out_conv: Conv2d,
    model_channels: usize,
}

/// What one UNet call conditions on.
pub struct UnetInput<'a> {
    /// `[B, C, h, w]`, already scaled by `c_in` (and with the inpainting channels appended).
    pub x: &'a Tensor,
    /// One timestep per batch item.
    pub timesteps: &'a [f32],
    /// Cross-attention context `[B, tokens, context_dim]`.
    pub context: &'a Tensor,
    /// SDXL's `y` (`[B, adm_in_channels]`).
    pub y: Option<&'a Tensor>,
    /// Checked before each block: a cancel takes effect within a step, not after it.
    pub stop: Option<&'a std::sync::atomic::AtomicBool>,
}

impl Unet {
    /// Reads a UNet whose keys are component-local (`input_blocks.0.0.weight`, …).
    pub fn load(w: &WeightMap, heads: Heads) -> Result<Unet> {
        let block = |p: &str| -> Result<Vec<Layer>> { block_layers(w, p, heads) };
        let n_in = (0..)
            .take_while(|i| w.keys_under(&format!("input_blocks.{i}.")).next().is_some())
            .count();
        let n_out = (0..)
            .take_while(|i| {
                w.keys_under(&format!("output_blocks.{i}."))
                    .next()
                    .is_some()
            })
            .count();
        if n_in == 0 || n_out == 0 {
            return Err(NnError::Invalid(
                "no input_blocks/output_blocks keys: not an LDM UNet".into(),
            ));
        }
        let mut input_blocks = vec![vec![Layer::Conv(Conv2d::load3(w, "input_blocks.0.0")?)]];
        for i in 1..n_in {
            input_blocks.push(block(&format!("input_blocks.{i}."))?);
        }
        let output_blocks = (0..n_out)
            .map(|i| block(&format!("output_blocks.{i}.")))
            .collect::<Result<Vec<_>>>()?;
        let label_emb = if w.contains("label_emb.0.0.weight") {
            Some((
                Linear::load(w, "label_emb.0.0", true)?,
                Linear::load(w, "label_emb.0.2", true)?,
            ))
        } else {
            None
        };
        let time_in = w.get_rank("time_embed.0.weight", 2)?.dim(1)?;
        Ok(Unet {
            time_embed: (
                Linear::load(w, "time_embed.0", true)?,
                Linear::load(w, "time_embed.2", true)?,
            ),
            label_emb,
            input_blocks,
            middle_block: block("middle_block.")?,
            output_blocks,
            out_norm: GroupNorm::load(w, "out.0", 32, 1e-5)?,
            out_conv: Conv2d::load3(w, "out.2")?,
            model_channels: time_in,
        })
    }

    /// Input channels (4, or 9 for inpainting models).
    pub fn in_channels(&self) -> usize {
        match self.input_blocks.first().and_then(|b| b.first()) {
            Some(Layer::Conv(c)) => c.in_channels(),
            _ => 0,
        }
    }

    /// SDXL's `y` width, when the model has a label embedding.
    pub fn adm_channels(&self) -> Option<usize> {
        self.label_emb.as_ref().map(|(l, _)| l.in_features())
    }

    /// The network's output (`[B, out_channels, h, w]`).
    pub fn forward(&self, input: &UnetInput) -> Result<Tensor> {
        let x = input.x;
        let b = x.dim(0)?;
        let device = x.device();
        if input.timesteps.len() != b {
            return Err(NnError::Invalid(format!(
                "{} timesteps for a batch of {b}",
                input.timesteps.len()
            )));
        }
        let t_emb = Tensor::from_vec(
            timestep_embedding(input.timesteps, self.model_channels),
            (b, self.model_channels),
            device,
        )?;
        let mut emb = self
            .time_embed
            .1
            .forward(&self.time_embed.0.forward(&t_emb)?.silu()?)?;
        match (&self.label_emb, input.y) {
            (Some((l0, l2)), Some(y)) => {
                emb = (emb + l2.forward(&l0.forward(y)?.silu()?)?)?;
            }
            (Some(_), None) => {
                return Err(NnError::Invalid(
                    "this UNet needs SDXL's pooled/size conditioning (y)".into(),
                ));
            }
            (None, _) => {}
        }
        let emb_silu = emb.silu()?;
        let mut skips = Vec::with_capacity(self.input_blocks.len());
        let mut h = x.clone();
        let stopped = || {
            input
                .stop
                .is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed))
        };
        for block in &self.input_blocks {
            if stopped() {
                return Err(NnError::Cancelled);
            }
            h = run_block(block, &h, &emb_silu, input.context, None)?;
            skips.push(h.clone());
        }
        h = run_block(&self.middle_block, &h, &emb_silu, input.context, None)?;
        for block in &self.output_blocks {
            if stopped() {
                return Err(NnError::Cancelled);
            }
            let skip = skips
                .pop()
                .ok_or_else(|| NnError::Invalid("more output blocks than input blocks".into()))?;
            h = Tensor::cat(&[&h, &skip], 1)?;
            let target = skips.last().map(|s| (s.dim(2), s.dim(3)));
            let target = match target {
                Some((Ok(th), Ok(tw))) => Some((th, tw)),
                _ => None,
            };
            h = run_block(block, &h, &emb_silu, input.context, target)?;
        }
        self.out_conv.forward(&self.out_norm.forward_silu(&h)?)
    }
}

fn run_block(
    layers: &[Layer],
    x: &Tensor,
    emb_silu: &Tensor,
    context: &Tensor,
    up_to: Option<(usize, usize)>,
) -> Result<Tensor> {
    let mut h = x.clone();
    for layer in layers {
        h = match layer {
            Layer::Conv(c) | Layer::Down(c) => c.forward(&h)?,
            Layer::Res(r) => r.forward(&h, emb_silu)?,
            Layer::Transformer(t) => t.forward(&h, context)?,
            Layer::Up(c) => {
                let (_, _, hh, ww) = h.dims4()?;
                let (th, tw) = up_to.unwrap_or((hh * 2, ww * 2));
                if (th, tw) == (hh * 2, ww * 2) {
                    c.forward_upsampled2(&h)?
                } else {
                    c.forward(&upsample_nearest(&h, th, tw)?)?
                }
            }
        };
    }
    Ok(h)
}

/// The layers of one `input_blocks.N.` / `middle_block.` / `output_blocks.N.`, by their keys.
fn block_layers(w: &WeightMap, p: &str, heads: Heads) -> Result<Vec<Layer>> {
    let mut layers = Vec::new();
    for m in 0.. {
        let l = format!("{p}{m}.");
        if w.contains(&format!("{l}in_layers.0.weight")) {
            layers.push(Layer::Res(ResBlock::load(w, &l)?));
        } else if w.contains(&format!("{l}norm.weight")) {
            layers.push(Layer::Transformer(SpatialTransformer::load(w, &l, heads)?));
        } else if w.contains(&format!("{l}op.weight")) {
            layers.push(Layer::Down(Conv2d::load(w, &format!("{l}op"), 1, 2)?));
        } else if w.contains(&format!("{l}conv.weight")) {
            layers.push(Layer::Up(Conv2d::load3(w, &format!("{l}conv"))?));
        } else if w.keys_under(&l).next().is_some() {
            return Err(NnError::Invalid(format!(
                "{l}* is neither a ResBlock, a transformer, a downsample nor an upsample"
            )));
        } else {
            break;
        }
    }
    if layers.is_empty() {
        return Err(NnError::Missing {
            key: format!("{p}0.*"),
        });
    }
    Ok(layers)
}

#[cfg(test)]
pub(crate) mod tests {
    use candle_core::Device;

    use super::super::testing::put;
    use super::*;

    /// A UNet in the SD1 structure (or SDXL's with `adm`) at width `ch`, levels `mult`, with
    /// attention at the levels where `attn` is true.
    pub(crate) fn tiny_unet(
        ch: usize,
        mult: &[usize],
        attn: &[bool],
        context: usize,
        adm: Option<usize>,
        linear_proj: bool,
    ) -> WeightMap {
        let mut w = WeightMap::new();
        let emb = ch * 4;
        put(&mut w, "time_embed.0.weight", &[emb, ch]);
        put(&mut w, "time_embed.0.bias", &[emb]);
        put(&mut w, "time_embed.2.weight", &[emb, emb]);
        put(&mut w, "time_embed.2.bias", &[emb]);
        if let Some(a) = adm {
            put(&mut w, "label_emb.0.0.weight", &[emb, a]);
            put(&mut w, "label_emb.0.0.bias", &[emb]);
            put(&mut w, "label_emb.0.2.weight", &[emb, emb]);
            put(&mut w, "label_emb.0.2.bias", &[emb]);
        }
        let conv = |w: &mut WeightMap, p: &str, o: usize, i: usize, k: usize| {
            put(w, &format!("{p}.weight"), &[o, i, k, k]);
            put(w, &format!("{p}.bias"), &[o]);
        };
        let res = |w: &mut WeightMap, p: &str, i: usize, o: usize| {
            put(w, &format!("{p}in_layers.0.weight"), &[i]);
            put(w, &format!("{p}in_layers.0.bias"), &[i]);
            conv(w, &format!("{p}in_layers.2"), o, i, 3);
            put(w, &format!("{p}emb_layers.1.weight"), &[o, emb]);
            put(w, &format!("{p}emb_layers.1.bias"), &[o]);
            put(w, &format!("{p}out_layers.0.weight"), &[o]);
            put(w, &format!("{p}out_layers.0.bias"), &[o]);
            conv(w, &format!("{p}out_layers.3"), o, o, 3);
            if i != o {
                conv(w, &format!("{p}skip_connection"), o, i, 1);
            }
        };
        let transformer = |w: &mut WeightMap, p: &str, c: usize| {
            put(w, &format!("{p}norm.weight"), &[c]);
            put(w, &format!("{p}norm.bias"), &[c]);
            for n in ["proj_in", "proj_out"] {
                if linear_proj {
                    put(w, &format!("{p}{n}.weight"), &[c, c]);
                } else {
                    put(w, &format!("{p}{n}.weight"), &[c, c, 1, 1]);
                }
                put(w, &format!("{p}{n}.bias"), &[c]);
            }
            let b = format!("{p}transformer_blocks.0.");
            for n in ["norm1", "norm2", "norm3"] {
                put(w, &format!("{b}{n}.weight"), &[c]);
                put(w, &format!("{b}{n}.bias"), &[c]);
            }
            for (a, kv) in [("attn1", c), ("attn2", context)] {
                put(w, &format!("{b}{a}.to_q.weight"), &[c, c]);
                put(w, &format!("{b}{a}.to_k.weight"), &[c, kv]);
                put(w, &format!("{b}{a}.to_v.weight"), &[c, kv]);
                put(w, &format!("{b}{a}.to_out.0.weight"), &[c, c]);
                put(w, &format!("{b}{a}.to_out.0.bias"), &[c]);
            }
            put(w, &format!("{b}ff.net.0.proj.weight"), &[8 * c, c]);
            put(w, &format!("{b}ff.net.0.proj.bias"), &[8 * c]);
            put(w, &format!("{b}ff.net.2.weight"), &[c, 4 * c]);
            put(w, &format!("{b}ff.net.2.bias"), &[c]);
        };
        conv(&mut w, "input_blocks.0.0", ch, 4, 3);
        let mut chans = vec![ch];
        let mut c = ch;
        let mut i = 1;
        for (level, &m) in mult.iter().enumerate() {
            for _ in 0..2 {
                res(&mut w, &format!("input_blocks.{i}.0."), c, ch * m);
                c = ch * m;
                if attn[level] {
                    transformer(&mut w, &format!("input_blocks.{i}.1."), c);
                }
                chans.push(c);
                i += 1;
            }
            if level + 1 < mult.len() {
                conv(&mut w, &format!("input_blocks.{i}.0.op"), c, c, 3);
                chans.push(c);
                i += 1;
            }
        }
        res(&mut w, "middle_block.0.", c, c);
        transformer(&mut w, "middle_block.1.", c);
        res(&mut w, "middle_block.2.", c, c);
        let mut o = 0;
        for (level, &m) in mult.iter().enumerate().rev() {
            for j in 0..3 {
                let skip = chans.pop().expect("skip");
                res(&mut w, &format!("output_blocks.{o}.0."), c + skip, ch * m);
                c = ch * m;
                let mut next = 1;
                if attn[level] {
                    transformer(&mut w, &format!("output_blocks.{o}.1."), c);
                    next = 2;
                }
                if level > 0 && j == 2 {
                    conv(&mut w, &format!("output_blocks.{o}.{next}.conv"), c, c, 3);
                }
                o += 1;
            }
        }
        put(&mut w, "out.0.weight", &[c]);
        put(&mut w, "out.0.bias", &[c]);
        conv(&mut w, "out.2", 4, c, 3);
        w
    }

    fn latent(b: usize, h: usize, w: usize) -> Tensor {
        let n = b * 4 * h * w;
        let v: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.731).sin()).collect();
        Tensor::from_vec(v, (b, 4, h, w), &Device::Cpu).expect("latent")
    }

    fn context(b: usize, dim: usize) -> Tensor {
        let v: Vec<f32> = (0..b * 77 * dim)
            .map(|i| ((i as f32) * 0.113).cos())
            .collect();
        Tensor::from_vec(v, (b, 77, dim), &Device::Cpu).expect("context")
    }

    /// The SD1 structure runs at odd latent sizes (upsampling to the skip's size), keeps the
    /// latent's shape, and evaluates each batch item independently.
    #[test]
    fn sd1_structure_runs_per_item() {
        let w = tiny_unet(32, &[1, 2, 2], &[true, true, false], 24, None, false);
        let unet = Unet::load(&w, Heads::Count(8)).expect("load");
        assert_eq!(unet.in_channels(), 4);
        let x = latent(2, 5, 7);
        let ctx = context(2, 24);
        let out = unet
            .forward(&UnetInput {
                x: &x,
                timesteps: &[999.0, 10.0],
                context: &ctx,
                y: None,
                stop: None,
            })
            .expect("forward");
        assert_eq!(out.dims(), [2, 4, 5, 7]);
        let stop = std::sync::atomic::AtomicBool::new(true);
        let err = unet
            .forward(&UnetInput {
                x: &x,
                timesteps: &[999.0, 10.0],
                context: &ctx,
                y: None,
                stop: Some(&stop),
            })
            .expect_err("stopped");
        assert!(matches!(err, NnError::Cancelled), "{err}");
        let one = unet
            .forward(&UnetInput {
                x: &x.narrow(0, 1, 1).expect("x1"),
                timesteps: &[10.0],
                context: &ctx.narrow(0, 1, 1).expect("c1"),
                y: None,
                stop: None,
            })
            .expect("forward one");
        let a: Vec<f32> = out
            .get(1)
            .and_then(|t| t.flatten_all()?.to_vec1())
            .expect("a");
        let b: Vec<f32> = one.flatten_all().and_then(|t| t.to_vec1()).expect("b");
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-4 * x.abs().max(1.0), "{x} vs {y}");
        }
    }

    /// SDXL's structure needs `y` and uses it.
    #[test]
    fn adm_conditioning_is_required_and_used() {
        let w = tiny_unet(32, &[1, 2], &[false, true], 16, Some(12), true);
        let unet = Unet::load(&w, Heads::Width(64)).expect("load");
        assert_eq!(unet.adm_channels(), Some(12));
        let x = latent(1, 4, 4);
        let ctx = context(1, 16);
        let err = unet
            .forward(&UnetInput {
                x: &x,
                timesteps: &[500.0],
                context: &ctx,
                y: None,
                stop: None,
            })
            .expect_err("y is required");
        assert!(err.to_string().contains("(y)"), "{err}");
        let run = |k: f32| {
            let y = Tensor::from_vec(vec![k; 12], (1, 12), &Device::Cpu).expect("y");
            unet.forward(&UnetInput {
                x: &x,
                timesteps: &[500.0],
                context: &ctx,
                y: Some(&y),
                stop: None,
            })
            .and_then(|t| Ok(t.flatten_all()?.to_vec1::<f32>()?))
            .expect("forward")
        };
        assert_ne!(run(0.0), run(1.0));
    }
}
