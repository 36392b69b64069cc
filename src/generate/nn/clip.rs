//! The CLIP text transformer as ComfyUI runs it (`comfy/clip_model.py`, generation.md §4.4):
//! pre-LN layers (`x += attn(ln1(x)); x += mlp(ln2(x))`, eps 1e-5), a causal mask of
//! `−f32::MAX` above the diagonal and no padding mask, every layer run, the chosen layer's
//! hidden state (optionally through the final LayerNorm) as the conditioning, and the pooled
//! output taken from the final-LN'd last layer at the first end token.
//!
//! Two key layouts are read as they sit in a checkpoint: Hugging Face's (CLIP-L, under
//! `…text_model.`, activation quick-GELU) and OpenCLIP's (ViT-H and ViT-bigG, `resblocks` with a
//! fused `in_proj`, activation erf-GELU). The fused q/k/v projection is used as is: each output
//! element is the same dot product as with three separate ones. Heads are 64 wide.

use candle_core::{DType, Device, Tensor};

use super::ops::{LayerNorm, Linear, attention, quick_gelu};
use super::{NnError, Result, WeightMap, count_indexed};

/// CLIP's end-of-text token.
pub const END_TOKEN: u32 = 49407;
/// Tokens per sequence.
pub const SEQUENCE: usize = 77;

/// Which hidden state becomes the conditioning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerChoice {
    /// The last layer through the final LayerNorm.
    Last,
    /// The output of layer `index` (0-based), through the final LayerNorm when `final_norm`.
    Hidden { index: usize, final_norm: bool },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Activation {
    QuickGelu,
    Gelu,
}

#[derive(Clone, Debug)]
struct Layer {
    ln1: LayerNorm,
    qkv: QkvProjection,
    out_proj: Linear,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

#[derive(Clone, Debug)]
enum QkvProjection {
    Separate(Linear, Linear, Linear),
    Fused(Linear),
}

/// One text encoder.
#[derive(Clone, Debug)]
pub struct ClipText {
    token_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<Layer>,
    final_norm: LayerNorm,
    /// `pooled @ projection` gives the projected pooled output.
    projection: Option<Tensor>,
    activation: Activation,
    heads: usize,
    width: usize,
}

impl ClipText {
    /// Reads an encoder whose keys start with `prefix`: `clip_l.transformer.` (Hugging Face
    /// layout, `text_model.` below it) or `clip_h.` / `clip_g.` (OpenCLIP layout).
    pub fn load(w: &WeightMap, prefix: &str) -> Result<ClipText> {
        if w.contains(&format!(
            "{prefix}text_model.embeddings.token_embedding.weight"
        )) {
            ClipText::load_hf(w, prefix)
        } else if w.contains(&format!("{prefix}token_embedding.weight")) {
            ClipText::load_open_clip(w, prefix)
        } else {
            Err(NnError::Invalid(format!(
                "no text encoder under {prefix:?} (neither Hugging Face nor OpenCLIP keys)"
            )))
        }
    }

    fn load_hf(w: &WeightMap, prefix: &str) -> Result<ClipText> {
        let p = format!("{prefix}text_model.");
        let token_embedding = w.get_rank(&format!("{p}embeddings.token_embedding.weight"), 2)?;
        let width = token_embedding.dim(1)?;
        let count = count_indexed(w, &format!("{p}encoder.layers."), ".layer_norm1.weight");
        let layers = (0..count)
            .map(|i| {
                let l = format!("{p}encoder.layers.{i}.");
                Ok(Layer {
                    ln1: LayerNorm::load(w, &format!("{l}layer_norm1"), 1e-5)?,
                    qkv: QkvProjection::Separate(
                        Linear::load(w, &format!("{l}self_attn.q_proj"), true)?,
                        Linear::load(w, &format!("{l}self_attn.k_proj"), true)?,
                        Linear::load(w, &format!("{l}self_attn.v_proj"), true)?,
                    ),
                    out_proj: Linear::load(w, &format!("{l}self_attn.out_proj"), true)?,
                    ln2: LayerNorm::load(w, &format!("{l}layer_norm2"), 1e-5)?,
                    fc1: Linear::load(w, &format!("{l}mlp.fc1"), true)?,
                    fc2: Linear::load(w, &format!("{l}mlp.fc2"), true)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let projection_key = format!("{prefix}text_projection.weight");
        let projection = if w.contains(&projection_key) {
            Some(
                w.get_rank(&projection_key, 2)?
                    .t()?
                    .contiguous()?
                    .to_dtype(DType::F32)?,
            )
        } else {
            None
        };
        ClipText::finish(ClipText {
            token_embedding,
            position_embedding: w
                .get_rank(&format!("{p}embeddings.position_embedding.weight"), 2)?
                .to_dtype(DType::F32)?,
            layers,
            final_norm: LayerNorm::load(w, &format!("{p}final_layer_norm"), 1e-5)?,
            projection,
            activation: Activation::QuickGelu,
            heads: (width / 64).max(1),
            width,
        })
    }

    fn load_open_clip(w: &WeightMap, prefix: &str) -> Result<ClipText> {
        let token_embedding = w.get_rank(&format!("{prefix}token_embedding.weight"), 2)?;
        let width = token_embedding.dim(1)?;
        let count = count_indexed(
            w,
            &format!("{prefix}transformer.resblocks."),
            ".ln_1.weight",
        );
        let layers = (0..count)
            .map(|i| {
                let l = format!("{prefix}transformer.resblocks.{i}.");
                let in_proj = w.get_rank(&format!("{l}attn.in_proj_weight"), 2)?;
                let in_bias = w.get_rank(&format!("{l}attn.in_proj_bias"), 1)?;
                Ok(Layer {
                    ln1: LayerNorm::load(w, &format!("{l}ln_1"), 1e-5)?,
                    qkv: QkvProjection::Fused(Linear::new(&in_proj, Some(in_bias))?),
                    out_proj: Linear::load(w, &format!("{l}attn.out_proj"), true)?,
                    ln2: LayerNorm::load(w, &format!("{l}ln_2"), 1e-5)?,
                    fc1: Linear::load(w, &format!("{l}mlp.c_fc"), true)?,
                    fc2: Linear::load(w, &format!("{l}mlp.c_proj"), true)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let projection_key = format!("{prefix}text_projection");
        let projection = if w.contains(&projection_key) {
            Some(w.get_rank(&projection_key, 2)?.to_dtype(DType::F32)?)
        } else if w.contains(&format!("{projection_key}.weight")) {
            Some(
                w.get_rank(&format!("{projection_key}.weight"), 2)?
                    .t()?
                    .contiguous()?,
            )
        } else {
            None
        };
        ClipText::finish(ClipText {
            token_embedding,
            position_embedding: w
                .get_rank(&format!("{prefix}positional_embedding"), 2)?
                .to_dtype(DType::F32)?,
            layers,
            final_norm: LayerNorm::load(w, &format!("{prefix}ln_final"), 1e-5)?,
            projection,
            activation: Activation::Gelu,
            heads: (width / 64).max(1),
            width,
        })
    }

    fn finish(c: ClipText) -> Result<ClipText> {
        if c.layers.is_empty() {
            return Err(NnError::Invalid("the text encoder has no layers".into()));
        }
        if c.position_embedding.dims() != [SEQUENCE, c.width] {
            return Err(NnError::Invalid(format!(
                "the text encoder's position embedding is {:?}, expected [{SEQUENCE}, {}]",
                c.position_embedding.dims(),
                c.width
            )));
        }
        Ok(c)
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn width(&self) -> usize {
        self.width
    }

    /// The hidden state chosen by `layer` for each 77-token sequence (`[B, 77, width]`) and the
    /// pooled output (`[B, width]`, projected when `project` and the encoder has a projection).
    pub fn encode(
        &self,
        sequences: &[Vec<u32>],
        layer: LayerChoice,
        project: bool,
    ) -> Result<(Tensor, Tensor)> {
        let device = self.token_embedding.device().clone();
        let vocab = self.token_embedding.dim(0)?;
        let b = sequences.len();
        let mut ids = Vec::with_capacity(b * SEQUENCE);
        for seq in sequences {
            if seq.len() != SEQUENCE {
                return Err(NnError::Invalid(format!(
                    "a token sequence has {} tokens, expected {SEQUENCE}",
                    seq.len()
                )));
            }
            if let Some(bad) = seq.iter().find(|&&t| t as usize >= vocab) {
                return Err(NnError::Invalid(format!(
                    "token id {bad} is outside this text encoder's vocabulary of {vocab}"
                )));
            }
            ids.extend(seq.iter().copied());
        }
        let ids = Tensor::from_vec(ids, b * SEQUENCE, &device)?;
        let x = self
            .token_embedding
            .embedding(&ids)?
            // Kept as f16 (see the engine's weights); the rows widen exactly.
            .to_dtype(DType::F32)?
            .reshape((b, SEQUENCE, self.width))?
            .broadcast_add(&self.position_embedding)?;
        let mask = causal_mask(&device)?;
        let mut x = x;
        let mut hidden = None;
        for (i, l) in self.layers.iter().enumerate() {
            x = self.layer(l, &x, &mask)?;
            if let LayerChoice::Hidden { index, .. } = layer
                && index == i
            {
                hidden = Some(x.clone());
            }
        }
        let last = self.final_norm.forward(&x)?;
        let chosen = match (layer, hidden) {
            (LayerChoice::Last, _) => last.clone(),
            (LayerChoice::Hidden { final_norm, .. }, Some(h)) => {
                if final_norm {
                    self.final_norm.forward(&h)?
                } else {
                    h
                }
            }
            (LayerChoice::Hidden { index, .. }, None) => {
                return Err(NnError::Invalid(format!(
                    "layer {index} does not exist (the encoder has {} layers)",
                    self.layers.len()
                )));
            }
        };
        let mut pooled = Vec::with_capacity(b);
        for (i, seq) in sequences.iter().enumerate() {
            let at = seq
                .iter()
                .position(|&t| t == END_TOKEN)
                .unwrap_or(SEQUENCE - 1);
            pooled.push(last.get(i)?.get(at)?);
        }
        let mut pooled = Tensor::stack(&pooled, 0)?;
        if project && let Some(p) = &self.projection {
            pooled = pooled.matmul(p)?;
        }
        Ok((chosen, pooled))
    }

    fn layer(&self, l: &Layer, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let h = l.ln1.forward(x)?;
        let (q, k, v) = match &l.qkv {
            QkvProjection::Separate(q, k, v) => (q.forward(&h)?, k.forward(&h)?, v.forward(&h)?),
            QkvProjection::Fused(p) => {
                let qkv = p.forward(&h)?;
                let w = self.width;
                (
                    qkv.narrow(2, 0, w)?.contiguous()?,
                    qkv.narrow(2, w, w)?.contiguous()?,
                    qkv.narrow(2, 2 * w, w)?.contiguous()?,
                )
            }
        };
        let a = attention(&q, &k, &v, self.heads, Some(mask))?;
        let x = (x + l.out_proj.forward(&a)?)?;
        let h = l.fc1.forward(&l.ln2.forward(&x)?)?;
        let h = match self.activation {
            Activation::QuickGelu => quick_gelu(&h)?,
            Activation::Gelu => h.gelu_erf()?,
        };
        Ok((&x + l.fc2.forward(&h)?)?)
    }
}

/// `−f32::MAX` above the diagonal, 0 elsewhere.
fn causal_mask(device: &Device) -> Result<Tensor> {
    let values: Vec<f32> = (0..SEQUENCE * SEQUENCE)
        .map(|i| {
            if i % SEQUENCE > i / SEQUENCE {
                -f32::MAX
            } else {
                0.0
            }
        })
        .collect();
    Ok(Tensor::from_vec(values, (SEQUENCE, SEQUENCE), device)?)
}

#[cfg(test)]
mod tests {
    use super::super::testing::put;
    use super::*;

    fn tiny_hf(width: usize, layers: usize, vocab: usize) -> WeightMap {
        let mut w = WeightMap::new();
        let p = "clip_l.transformer.text_model.";
        put(
            &mut w,
            &format!("{p}embeddings.token_embedding.weight"),
            &[vocab, width],
        );
        put(
            &mut w,
            &format!("{p}embeddings.position_embedding.weight"),
            &[SEQUENCE, width],
        );
        for i in 0..layers {
            let l = format!("{p}encoder.layers.{i}.");
            for n in ["layer_norm1", "layer_norm2"] {
                put(&mut w, &format!("{l}{n}.weight"), &[width]);
                put(&mut w, &format!("{l}{n}.bias"), &[width]);
            }
            for n in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                put(&mut w, &format!("{l}self_attn.{n}.weight"), &[width, width]);
                put(&mut w, &format!("{l}self_attn.{n}.bias"), &[width]);
            }
            put(&mut w, &format!("{l}mlp.fc1.weight"), &[4 * width, width]);
            put(&mut w, &format!("{l}mlp.fc1.bias"), &[4 * width]);
            put(&mut w, &format!("{l}mlp.fc2.weight"), &[width, 4 * width]);
            put(&mut w, &format!("{l}mlp.fc2.bias"), &[width]);
        }
        put(&mut w, &format!("{p}final_layer_norm.weight"), &[width]);
        put(&mut w, &format!("{p}final_layer_norm.bias"), &[width]);
        w
    }

    fn seq(tokens: &[u32]) -> Vec<u32> {
        let mut s = vec![49406];
        s.extend_from_slice(tokens);
        s.push(END_TOKEN);
        s.resize(SEQUENCE, END_TOKEN);
        s
    }

    fn rows(t: &Tensor) -> Vec<f32> {
        t.flatten_all().and_then(|t| t.to_vec1()).expect("values")
    }

    /// Causality: a token's hidden state depends only on the tokens before it, so two prompts
    /// that share a prefix share those positions' outputs; batching changes nothing.
    #[test]
    fn causal_and_batch_independent() {
        let w = tiny_hf(64, 3, 49408);
        let clip = ClipText::load(&w, "clip_l.transformer.").expect("load");
        assert_eq!(clip.num_layers(), 3);
        let a = seq(&[320, 1125, 539]);
        let b = seq(&[320, 1125, 3101, 4123]);
        let (both, pooled) = clip
            .encode(&[a.clone(), b.clone()], LayerChoice::Last, false)
            .expect("encode");
        assert_eq!(both.dims(), [2, SEQUENCE, 64]);
        assert_eq!(pooled.dims(), [2, 64]);
        let (alone, _) = clip.encode(&[a], LayerChoice::Last, false).expect("encode");
        let (ra, rb, r1) = (
            rows(&both.get(0).expect("0")),
            rows(&both.get(1).expect("1")),
            rows(&alone.get(0).expect("0")),
        );
        for (x, y) in ra.iter().zip(&r1) {
            assert!((x - y).abs() < 1e-5);
        }
        // Positions 0..3 (start + two shared words) agree, position 3 differs.
        assert_eq!(&ra[..3 * 64], &rb[..3 * 64]);
        assert_ne!(&ra[3 * 64..4 * 64], &rb[3 * 64..4 * 64]);
        // The pooled output is the last layer's row at the first end token (index 4 for a).
        let last_a = rows(&both.get(0).and_then(|t| t.get(4)).expect("row"));
        assert_eq!(rows(&pooled.get(0).expect("pooled")), last_a);
    }

    /// The hidden layer with the final norm equals the last layer when it is the last one.
    #[test]
    fn layer_choice() {
        let w = tiny_hf(64, 2, 49408);
        let clip = ClipText::load(&w, "clip_l.transformer.").expect("load");
        let s = [seq(&[320])];
        let (last, _) = clip.encode(&s, LayerChoice::Last, false).expect("last");
        let (same, _) = clip
            .encode(
                &s,
                LayerChoice::Hidden {
                    index: 1,
                    final_norm: true,
                },
                false,
            )
            .expect("hidden");
        assert_eq!(rows(&last), rows(&same));
        let (raw, _) = clip
            .encode(
                &s,
                LayerChoice::Hidden {
                    index: 1,
                    final_norm: false,
                },
                false,
            )
            .expect("raw");
        assert_ne!(rows(&last), rows(&raw));
        let err = clip
            .encode(
                &s,
                LayerChoice::Hidden {
                    index: 5,
                    final_norm: false,
                },
                false,
            )
            .expect_err("no layer 5");
        assert!(err.to_string().contains("layer 5"), "{err}");
    }

    #[test]
    fn bad_tokens_and_missing_weights_are_named() {
        let w = tiny_hf(64, 1, 100);
        let clip = ClipText::load(&w, "clip_l.transformer.").expect("load");
        let err = clip
            .encode(&[seq(&[320])], LayerChoice::Last, false)
            .expect_err("vocab");
        assert!(err.to_string().contains("49406"), "{err}");
        let mut w = tiny_hf(64, 1, 100);
        w = {
            let mut keep = WeightMap::new();
            for k in w.keys_under("").map(str::to_owned).collect::<Vec<_>>() {
                if !k.ends_with("layers.0.mlp.fc2.bias") {
                    keep.insert(k.clone(), w.get(&k).expect("k"));
                }
            }
            keep
        };
        let err = ClipText::load(&w, "clip_l.transformer.").expect_err("missing");
        assert!(err.to_string().contains("mlp.fc2.bias"), "{err}");
    }
}
