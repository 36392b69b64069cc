//! Reference key layouts of real checkpoint families, at any width.
//!
//! These reproduce the exact key names, order of blocks and shape structure of Stable Diffusion
//! 1.x and SDXL checkpoints (UNet from the LDM code, CLIP-L in Hugging Face form, OpenCLIP ViT-bigG
//! for SDXL, the KL-f8 VAE), with the widths as parameters. At full width they are the real thing:
//! SD1.5 has 686 UNet + 197 CLIP + 248 VAE = 1,131 tensors (2.13 GB in fp16), SDXL 1,680 + 587 +
//! 248 = 2,515 (6.94 GB). Reduced widths keep every key and the cross-attention context dim, so
//! detection, block-merge prefixes and key mapping behave exactly as on real files while the data
//! stays a few megabytes. [`Scale::Small`] is the smallest the image nodes run on: UNet and VAE
//! widths that are multiples of GroupNorm's 32 groups, and text encoders as wide as the UNet's
//! context with CLIP's whole vocabulary, but only 2 layers with a narrow MLP (~86 MB for SD1.5). Used by `amalgam samples`, the tests and the benchmark.
//!
//! [`fill_tensor`] produces each tensor's bytes from a seed and the tensor name alone, so any one
//! tensor of a generated checkpoint can be recomputed independently, and a multi-gigabyte file
//! can be written as a stream.

use crate::format::DType;
use crate::format::safetensors::TensorSpec;

use super::arch::Architecture;

/// Widths of a UNet in the LDM layout.
#[derive(Clone, Debug)]
pub struct UnetConfig {
    pub model_channels: usize,
    pub channel_mult: Vec<usize>,
    pub num_res_blocks: usize,
    /// Transformer depth per level (0 = no attention at that level).
    pub transformer_depth: Vec<usize>,
    pub middle_depth: usize,
    pub context_dim: usize,
    pub adm_in_channels: Option<usize>,
    /// Linear (SDXL) or 1×1-conv (SD1) `proj_in`/`proj_out`.
    pub linear_proj: bool,
    pub in_channels: usize,
}

/// Text encoders as they appear in a checkpoint.
#[derive(Clone, Debug)]
pub enum TextEncoder {
    /// CLIP-L in Hugging Face layout under `prefix` (…`text_model.`).
    HfClip {
        prefix: String,
        width: usize,
        layers: usize,
        /// The MLP's hidden width (4 × width in real encoders).
        mlp: usize,
        vocab: usize,
        position_ids: bool,
    },
    /// OpenCLIP text tower under `prefix` (…`model.`).
    OpenClip {
        prefix: String,
        width: usize,
        layers: usize,
        /// The MLP's hidden width (4 × width in real encoders).
        mlp: usize,
        vocab: usize,
    },
}

/// A whole checkpoint layout.
#[derive(Clone, Debug)]
pub struct Layout {
    pub architecture: Architecture,
    pub unet: UnetConfig,
    pub text: Vec<TextEncoder>,
    /// Base channel count of the KL-f8 VAE (128 in the real one).
    pub vae_channels: usize,
    pub dtype: DType,
}

/// Full size or the reduced widths used for samples and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    Full,
    /// Runnable by the image nodes: 32-wide UNet and VAE, the whole CLIP vocabulary.
    Small,
    /// The smallest structure-true widths (merge tests): too narrow to run.
    Sample,
}

impl Scale {
    fn pick(self, full: usize, small: usize, sample: usize) -> usize {
        match self {
            Scale::Full => full,
            Scale::Small => small,
            Scale::Sample => sample,
        }
    }
}

impl Layout {
    /// Stable Diffusion 1.5.
    pub fn sd15(scale: Scale) -> Layout {
        Layout {
            architecture: Architecture::Sd1,
            unet: UnetConfig {
                model_channels: scale.pick(320, 32, 16),
                channel_mult: vec![1, 2, 4, 4],
                num_res_blocks: 2,
                transformer_depth: vec![1, 1, 1, 0],
                middle_depth: 1,
                context_dim: 768,
                adm_in_channels: None,
                linear_proj: false,
                in_channels: 4,
            },
            text: vec![TextEncoder::HfClip {
                prefix: "cond_stage_model.transformer.text_model.".into(),
                width: scale.pick(768, 768, 32),
                layers: scale.pick(12, 2, 12),
                mlp: scale.pick(3072, 64, 128),
                vocab: scale.pick(49408, 49408, 256),
                position_ids: true,
            }],
            vae_channels: scale.pick(128, 32, 8),
            dtype: DType::F16,
        }
    }

    /// Stable Diffusion 2.x (512-base / 768-v share the layout; the prediction type comes from
    /// the weights): linear transformer projections, a 1024-wide context from OpenCLIP ViT-H.
    pub fn sd2(scale: Scale) -> Layout {
        let mut l = Layout::sd15(scale);
        l.architecture = Architecture::Sd2;
        l.unet.context_dim = 1024;
        l.unet.linear_proj = true;
        l.text = vec![TextEncoder::OpenClip {
            prefix: "cond_stage_model.model.".into(),
            width: scale.pick(1024, 1024, 32),
            layers: scale.pick(24, 2, 24),
            mlp: scale.pick(4096, 64, 128),
            vocab: scale.pick(49408, 49408, 256),
        }];
        l
    }

    /// Stable Diffusion XL 1.0 base.
    pub fn sdxl(scale: Scale) -> Layout {
        Layout {
            architecture: Architecture::Sdxl,
            unet: UnetConfig {
                model_channels: scale.pick(320, 32, 8),
                channel_mult: vec![1, 2, 4],
                num_res_blocks: 2,
                transformer_depth: vec![0, 2, 10],
                middle_depth: 10,
                context_dim: 2048,
                adm_in_channels: Some(2816),
                linear_proj: true,
                in_channels: 4,
            },
            text: vec![
                TextEncoder::HfClip {
                    prefix: "conditioner.embedders.0.transformer.text_model.".into(),
                    width: scale.pick(768, 768, 32),
                    layers: scale.pick(12, 2, 12),
                    mlp: scale.pick(3072, 64, 128),
                    vocab: scale.pick(49408, 49408, 256),
                    position_ids: true,
                },
                TextEncoder::OpenClip {
                    prefix: "conditioner.embedders.1.model.".into(),
                    width: scale.pick(1280, 1280, 32),
                    layers: scale.pick(32, 2, 32),
                    mlp: scale.pick(5120, 64, 128),
                    vocab: scale.pick(49408, 49408, 256),
                },
            ],
            vae_channels: scale.pick(128, 32, 8),
            dtype: DType::F16,
        }
    }

    /// Every tensor, sorted by name as safetensors writers do.
    pub fn tensors(&self) -> Vec<TensorSpec> {
        let mut out = Vec::new();
        unet(&mut out, &self.unet, self.dtype);
        for te in &self.text {
            text_encoder(&mut out, te, self.dtype);
        }
        vae(
            &mut out,
            "first_stage_model.",
            self.vae_channels,
            self.dtype,
        );
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

struct Sink<'a> {
    out: &'a mut Vec<TensorSpec>,
    dtype: DType,
}

impl Sink<'_> {
    fn t(&mut self, name: String, shape: &[usize]) {
        self.out.push(TensorSpec::new(name, self.dtype, shape));
    }
    /// `weight` and `bias` of a layer.
    fn wb(&mut self, p: &str, w: &[usize]) {
        self.t(format!("{p}.weight"), w);
        self.t(format!("{p}.bias"), &w[..1]);
    }
}

fn unet(out: &mut Vec<TensorSpec>, c: &UnetConfig, dtype: DType) {
    let mut s = Sink { out, dtype };
    let p = super::arch::UNET_PREFIX;
    let mc = c.model_channels;
    let emb = 4 * mc;
    s.wb(&format!("{p}time_embed.0"), &[emb, mc]);
    s.wb(&format!("{p}time_embed.2"), &[emb, emb]);
    if let Some(adm) = c.adm_in_channels {
        s.wb(&format!("{p}label_emb.0.0"), &[emb, adm]);
        s.wb(&format!("{p}label_emb.0.2"), &[emb, emb]);
    }
    s.wb(&format!("{p}input_blocks.0.0"), &[mc, c.in_channels, 3, 3]);
    let mut skips = vec![mc];
    let mut ch = mc;
    let mut block = 1;
    let levels = c.channel_mult.len();
    for (level, &mult) in c.channel_mult.iter().enumerate() {
        for _ in 0..c.num_res_blocks {
            let b = format!("{p}input_blocks.{block}");
            res_block(&mut s, &format!("{b}.0"), ch, mult * mc, emb);
            ch = mult * mc;
            if c.transformer_depth[level] > 0 {
                transformer(&mut s, &format!("{b}.1"), ch, c.transformer_depth[level], c);
            }
            skips.push(ch);
            block += 1;
        }
        if level + 1 < levels {
            s.wb(&format!("{p}input_blocks.{block}.0.op"), &[ch, ch, 3, 3]);
            skips.push(ch);
            block += 1;
        }
    }
    res_block(&mut s, &format!("{p}middle_block.0"), ch, ch, emb);
    transformer(&mut s, &format!("{p}middle_block.1"), ch, c.middle_depth, c);
    res_block(&mut s, &format!("{p}middle_block.2"), ch, ch, emb);
    let mut block = 0;
    for (level, &mult) in c.channel_mult.iter().enumerate().rev() {
        for i in 0..=c.num_res_blocks {
            let skip = skips.pop().unwrap_or(mc);
            let b = format!("{p}output_blocks.{block}");
            res_block(&mut s, &format!("{b}.0"), ch + skip, mult * mc, emb);
            ch = mult * mc;
            let mut idx = 1;
            if c.transformer_depth[level] > 0 {
                transformer(&mut s, &format!("{b}.1"), ch, c.transformer_depth[level], c);
                idx = 2;
            }
            if level > 0 && i == c.num_res_blocks {
                s.wb(&format!("{b}.{idx}.conv"), &[ch, ch, 3, 3]);
            }
            block += 1;
        }
    }
    s.wb(&format!("{p}out.0"), &[mc]);
    s.wb(&format!("{p}out.2"), &[4, mc, 3, 3]);
}

fn res_block(s: &mut Sink, p: &str, cin: usize, cout: usize, emb: usize) {
    s.wb(&format!("{p}.in_layers.0"), &[cin]);
    s.wb(&format!("{p}.in_layers.2"), &[cout, cin, 3, 3]);
    s.wb(&format!("{p}.emb_layers.1"), &[cout, emb]);
    s.wb(&format!("{p}.out_layers.0"), &[cout]);
    s.wb(&format!("{p}.out_layers.3"), &[cout, cout, 3, 3]);
    if cin != cout {
        s.wb(&format!("{p}.skip_connection"), &[cout, cin, 1, 1]);
    }
}

fn transformer(s: &mut Sink, p: &str, c: usize, depth: usize, cfg: &UnetConfig) {
    let proj: &[usize] = if cfg.linear_proj {
        &[c, c]
    } else {
        &[c, c, 1, 1]
    };
    s.wb(&format!("{p}.norm"), &[c]);
    s.wb(&format!("{p}.proj_in"), proj);
    for d in 0..depth {
        let b = format!("{p}.transformer_blocks.{d}");
        for attn in ["attn1", "attn2"] {
            let ctx = if attn == "attn1" { c } else { cfg.context_dim };
            s.t(format!("{b}.{attn}.to_q.weight"), &[c, c]);
            s.t(format!("{b}.{attn}.to_k.weight"), &[c, ctx]);
            s.t(format!("{b}.{attn}.to_v.weight"), &[c, ctx]);
            s.wb(&format!("{b}.{attn}.to_out.0"), &[c, c]);
        }
        s.wb(&format!("{b}.ff.net.0.proj"), &[8 * c, c]);
        s.wb(&format!("{b}.ff.net.2"), &[c, 4 * c]);
        for n in ["norm1", "norm2", "norm3"] {
            s.wb(&format!("{b}.{n}"), &[c]);
        }
    }
    s.wb(&format!("{p}.proj_out"), proj);
}

fn text_encoder(out: &mut Vec<TensorSpec>, te: &TextEncoder, dtype: DType) {
    let mut s = Sink { out, dtype };
    match te {
        TextEncoder::HfClip {
            prefix: p,
            width: w,
            layers,
            mlp,
            vocab,
            position_ids,
        } => {
            let w = *w;
            s.t(
                format!("{p}embeddings.token_embedding.weight"),
                &[*vocab, w],
            );
            s.t(format!("{p}embeddings.position_embedding.weight"), &[77, w]);
            if *position_ids {
                s.out.push(TensorSpec::new(
                    format!("{p}embeddings.position_ids"),
                    DType::I64,
                    &[1, 77],
                ));
            }
            for l in 0..*layers {
                let b = format!("{p}encoder.layers.{l}");
                for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                    s.wb(&format!("{b}.self_attn.{proj}"), &[w, w]);
                }
                s.wb(&format!("{b}.layer_norm1"), &[w]);
                s.wb(&format!("{b}.mlp.fc1"), &[*mlp, w]);
                s.wb(&format!("{b}.mlp.fc2"), &[w, *mlp]);
                s.wb(&format!("{b}.layer_norm2"), &[w]);
            }
            s.wb(&format!("{p}final_layer_norm"), &[w]);
        }
        TextEncoder::OpenClip {
            prefix: p,
            width: w,
            layers,
            mlp,
            vocab,
        } => {
            let w = *w;
            s.t(format!("{p}positional_embedding"), &[77, w]);
            s.t(format!("{p}token_embedding.weight"), &[*vocab, w]);
            for l in 0..*layers {
                let b = format!("{p}transformer.resblocks.{l}");
                s.wb(&format!("{b}.ln_1"), &[w]);
                s.t(format!("{b}.attn.in_proj_weight"), &[3 * w, w]);
                s.t(format!("{b}.attn.in_proj_bias"), &[3 * w]);
                s.wb(&format!("{b}.attn.out_proj"), &[w, w]);
                s.wb(&format!("{b}.ln_2"), &[w]);
                s.wb(&format!("{b}.mlp.c_fc"), &[*mlp, w]);
                s.wb(&format!("{b}.mlp.c_proj"), &[w, *mlp]);
            }
            s.wb(&format!("{p}ln_final"), &[w]);
            s.t(format!("{p}text_projection"), &[w, w]);
            s.t(format!("{p}logit_scale"), &[]);
        }
    }
}

/// The KL-f8 autoencoder (`encoder.*`, `decoder.*`, `quant_conv`, `post_quant_conv`).
pub fn vae(out: &mut Vec<TensorSpec>, p: &str, ch: usize, dtype: DType) {
    let mut s = Sink { out, dtype };
    let mult = [1, 2, 4, 4];
    let z = 4;
    let resnet = |s: &mut Sink, b: &str, cin: usize, cout: usize| {
        s.wb(&format!("{b}.norm1"), &[cin]);
        s.wb(&format!("{b}.conv1"), &[cout, cin, 3, 3]);
        s.wb(&format!("{b}.norm2"), &[cout]);
        s.wb(&format!("{b}.conv2"), &[cout, cout, 3, 3]);
        if cin != cout {
            s.wb(&format!("{b}.nin_shortcut"), &[cout, cin, 1, 1]);
        }
    };
    let mid = |s: &mut Sink, m: &str, c: usize| {
        resnet(s, &format!("{m}.block_1"), c, c);
        s.wb(&format!("{m}.attn_1.norm"), &[c]);
        for n in ["q", "k", "v", "proj_out"] {
            s.wb(&format!("{m}.attn_1.{n}"), &[c, c, 1, 1]);
        }
        resnet(s, &format!("{m}.block_2"), c, c);
    };
    s.wb(&format!("{p}encoder.conv_in"), &[ch, 3, 3, 3]);
    let mut cin = ch;
    for (l, &m) in mult.iter().enumerate() {
        for b in 0..2 {
            resnet(
                &mut s,
                &format!("{p}encoder.down.{l}.block.{b}"),
                cin,
                ch * m,
            );
            cin = ch * m;
        }
        if l + 1 < mult.len() {
            s.wb(
                &format!("{p}encoder.down.{l}.downsample.conv"),
                &[cin, cin, 3, 3],
            );
        }
    }
    mid(&mut s, &format!("{p}encoder.mid"), cin);
    s.wb(&format!("{p}encoder.norm_out"), &[cin]);
    s.wb(&format!("{p}encoder.conv_out"), &[2 * z, cin, 3, 3]);
    s.wb(&format!("{p}quant_conv"), &[2 * z, 2 * z, 1, 1]);
    s.wb(&format!("{p}post_quant_conv"), &[z, z, 1, 1]);
    let top = ch * mult[mult.len() - 1];
    s.wb(&format!("{p}decoder.conv_in"), &[top, z, 3, 3]);
    mid(&mut s, &format!("{p}decoder.mid"), top);
    let mut cin = top;
    for (l, &m) in mult.iter().enumerate().rev() {
        for b in 0..3 {
            resnet(&mut s, &format!("{p}decoder.up.{l}.block.{b}"), cin, ch * m);
            cin = ch * m;
        }
        if l > 0 {
            s.wb(
                &format!("{p}decoder.up.{l}.upsample.conv"),
                &[cin, cin, 3, 3],
            );
        }
    }
    s.wb(&format!("{p}decoder.norm_out"), &[ch]);
    s.wb(&format!("{p}decoder.conv_out"), &[3, ch, 3, 3]);
}

/// SplitMix64: a tiny, well-known generator whose output never changes between versions, which
/// is what generated test data needs (a crate's RNG may change its stream on upgrade).
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn next_signed(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }
    /// Seeds a stream from a checkpoint seed and a tensor name (FNV-1a of the name).
    pub fn for_tensor(seed: u64, name: &str) -> SplitMix64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        SplitMix64(h ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }
}

/// The bytes of one generated tensor, appended to `out`. Norm weights sit around 1, biases near
/// 0, other weights spread like trained ones; integer tensors (`position_ids`) count up.
pub fn fill_tensor(seed: u64, spec: &TensorSpec, out: &mut Vec<u8>) {
    let n: usize = spec.shape.iter().product();
    let name = spec.name.as_str();
    let mut rng = SplitMix64::for_tensor(seed, name);
    let (center, spread) = if name.ends_with("logit_scale") {
        (4.6052, 0.0)
    } else if name.ends_with(".bias") || name.ends_with("_bias") {
        (0.0, 0.02)
    } else if is_norm_weight(name) {
        (1.0, 0.05)
    } else {
        (0.0, 0.08)
    };
    out.reserve(n * spec.dtype.size_bytes());
    match spec.dtype {
        DType::I64 => (0..n as i64).for_each(|i| out.extend_from_slice(&i.to_le_bytes())),
        DType::F32 => (0..n).for_each(|_| {
            let v = center + spread * rng.next_signed();
            out.extend_from_slice(&v.to_le_bytes());
        }),
        DType::BF16 => (0..n).for_each(|_| {
            let v = half::bf16::from_f32(center + spread * rng.next_signed());
            out.extend_from_slice(&v.to_le_bytes());
        }),
        DType::F16 => (0..n).for_each(|_| {
            let v = half::f16::from_f32(center + spread * rng.next_signed());
            out.extend_from_slice(&v.to_le_bytes());
        }),
        DType::F8E4M3 | DType::F8E5M2 => {
            let kind = crate::format::fp8::Fp8::of(spec.dtype).expect("an fp8 dtype");
            (0..n).for_each(|_| out.push(kind.round_nearest(center + spread * rng.next_signed())));
        }
        other => (0..n * other.size_bytes()).for_each(|_| out.push(rng.next_u64() as u8)),
    }
}

fn is_norm_weight(name: &str) -> bool {
    let Some(layer) = name.strip_suffix(".weight") else {
        return false;
    };
    let last = layer.rsplit('.').next().unwrap_or_default();
    last.starts_with("norm")
        || last.starts_with("ln_")
        || last.starts_with("layer_norm")
        || last == "final_layer_norm"
        || last == "ln_final"
        || name.ends_with("in_layers.0.weight")
        || name.ends_with("out_layers.0.weight")
        || name.ends_with("out.0.weight")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::components::{Component, component_of};

    fn counts(l: &Layout) -> [usize; 4] {
        let mut c = [0; 4];
        for t in l.tensors() {
            let i = Component::ALL
                .iter()
                .position(|&x| x == component_of(&t.name, super::super::arch::UNET_PREFIX))
                .unwrap_or(3);
            c[i] += 1;
        }
        c
    }

    #[test]
    fn full_layouts_have_the_real_key_counts_and_sizes() {
        let sd15 = Layout::sd15(Scale::Full);
        assert_eq!(counts(&sd15), [686, 197, 248, 0]);
        let bytes: u64 = sd15.tensors().iter().filter_map(TensorSpec::byte_len).sum();
        assert!((2_125_000_000..2_140_000_000).contains(&bytes), "{bytes}");
        let sdxl = Layout::sdxl(Scale::Full);
        assert_eq!(counts(&sdxl), [1680, 197 + 390, 248, 0]);
        let bytes: u64 = sdxl.tensors().iter().filter_map(TensorSpec::byte_len).sum();
        assert!((6_930_000_000..6_950_000_000).contains(&bytes), "{bytes}");
    }

    #[test]
    fn known_real_shapes_at_full_width() {
        let t = Layout::sd15(Scale::Full).tensors();
        let shape = |n: &str| t.iter().find(|s| s.name == n).map(|s| s.shape.clone());
        assert_eq!(
            shape("model.diffusion_model.output_blocks.3.0.in_layers.2.weight"),
            Some(vec![1280, 2560, 3, 3])
        );
        assert_eq!(
            shape("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"),
            Some(vec![320, 768])
        );
        assert_eq!(
            shape("model.diffusion_model.output_blocks.8.2.conv.weight"),
            Some(vec![640, 640, 3, 3])
        );
        assert_eq!(
            shape("first_stage_model.decoder.up.0.block.0.nin_shortcut.weight"),
            Some(vec![128, 256, 1, 1])
        );
        let x = Layout::sdxl(Scale::Full).tensors();
        let shape = |n: &str| x.iter().find(|s| s.name == n).map(|s| s.shape.clone());
        assert_eq!(
            shape("model.diffusion_model.label_emb.0.0.weight"),
            Some(vec![1280, 2816])
        );
        assert_eq!(
            shape("model.diffusion_model.middle_block.1.transformer_blocks.9.attn2.to_k.weight"),
            Some(vec![1280, 2048])
        );
        assert_eq!(
            shape("model.diffusion_model.output_blocks.2.2.conv.weight"),
            Some(vec![1280, 1280, 3, 3])
        );
        assert_eq!(
            shape("first_stage_model.decoder.up.1.block.0.nin_shortcut.weight"),
            Some(vec![256, 512, 1, 1])
        );
    }

    /// SD2: SD1's UNet with linear projections and a 1024-wide context, OpenCLIP ViT-H (24
    /// layers of 12 tensors, the embeddings, the final norm, the projection and logit scale).
    /// ComfyUI reads the full layout as SD2 (it ran it for the oracle comparison).
    #[test]
    fn sd2_layout_has_the_real_shapes() {
        let sd2 = Layout::sd2(Scale::Full);
        assert_eq!(counts(&sd2), [686, 2 + 24 * 12 + 4, 248, 0]);
        let t = sd2.tensors();
        let shape = |n: &str| t.iter().find(|s| s.name == n).map(|s| s.shape.clone());
        assert_eq!(
            shape("model.diffusion_model.input_blocks.1.1.proj_in.weight"),
            Some(vec![320, 320])
        );
        assert_eq!(
            shape("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"),
            Some(vec![320, 1024])
        );
        assert_eq!(
            shape("cond_stage_model.model.transformer.resblocks.23.attn.in_proj_weight"),
            Some(vec![3072, 1024])
        );
        assert_eq!(
            shape("cond_stage_model.model.text_projection"),
            Some(vec![1024, 1024])
        );
    }

    #[test]
    fn generated_data_is_deterministic_per_seed_and_name() {
        let spec = TensorSpec::new("a.weight", DType::F16, &[64]);
        let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
        fill_tensor(1, &spec, &mut a);
        fill_tensor(1, &spec, &mut b);
        fill_tensor(2, &spec, &mut c);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 128);
    }
}
