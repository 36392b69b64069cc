//! CLIPTextEncode: prompt text to the conditioning a UNet attends to, per model family as
//! ComfyUI computes it (generation.md §4.3–§4.6).
//!
//! | family | encoders | pad | default layer | final LN on a hidden layer | pooled |
//! |---|---|---|---|---|---|
//! | SD1 | CLIP-L (`clip_l.`) | end | last | yes | unused |
//! | SD2 | OpenCLIP-H (`clip_h.`) | 0 | −2 | yes | unused |
//! | SDXL | CLIP-L + OpenCLIP-bigG (`clip_g.`) | end / 0 | −2 | no | bigG's, projected |
//!
//! CLIPSetLastLayer's `stop_at_clip_layer` (negative) picks layer `n + idx`, or the last layer
//! when `|idx| > n`. Token weights other than 1 are applied against the empty prompt's hidden
//! state at the same position: `z = (z − z_empty)·w + z_empty`.

use candle_core::Tensor;

use super::GenError;
use super::nn::WeightMap;
use super::nn::clip::{ClipText, LayerChoice};
use super::text::prompt::{Weighted, tokenize_with_weights};
use super::text::tokenizer::{END, START};

/// Which text encoders a CLIP value holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextFamily {
    Sd1,
    Sd2,
    Sdxl,
}

/// One encoder with ComfyUI's settings for it.
#[derive(Clone, Debug)]
struct Encoder {
    clip: ClipText,
    pad: u32,
    default_hidden: bool,
    norm_hidden: bool,
    pooled: bool,
}

/// The text encoders of a CLIP value.
#[derive(Clone, Debug)]
pub struct TextEncoders {
    family: TextFamily,
    encoders: Vec<Encoder>,
}

/// What CLIPTextEncode outputs: `cond` `[1, 77·chunks, D]` and, for SDXL, the pooled `[1, 1280]`.
#[derive(Clone, Debug)]
pub struct Conditioning {
    pub cond: Tensor,
    pub pooled: Option<Tensor>,
}

impl TextEncoders {
    /// Reads the encoders from CLIP weights in ComfyUI's internal names (`clip_l.transformer.…`,
    /// `clip_h.…`, `clip_g.…`).
    pub fn load(w: &WeightMap) -> Result<TextEncoders, GenError> {
        let has = |p: &str| w.keys_under(p).next().is_some();
        let enc = |prefix: &str, pad: u32, default_hidden, norm_hidden, pooled| {
            Ok::<_, GenError>(Encoder {
                clip: ClipText::load(w, prefix)?,
                pad,
                default_hidden,
                norm_hidden,
                pooled,
            })
        };
        let (family, encoders) = if has("clip_g.") {
            if !has("clip_l.") {
                return Err(GenError::Model(
                    "an SDXL text encoder without its CLIP-L half (clip_g only: a refiner) cannot encode prompts yet".into(),
                ));
            }
            (
                TextFamily::Sdxl,
                vec![
                    enc("clip_l.transformer.", END, true, false, false)?,
                    enc("clip_g.", 0, true, false, true)?,
                ],
            )
        } else if has("clip_h.") {
            (TextFamily::Sd2, vec![enc("clip_h.", 0, true, true, false)?])
        } else if has("clip_l.") {
            (
                TextFamily::Sd1,
                vec![enc("clip_l.transformer.", END, false, true, false)?],
            )
        } else {
            return Err(GenError::Model(
                "the CLIP input has no text encoder Amalgam can run (CLIP-L, OpenCLIP-H or SDXL's pair)".into(),
            ));
        };
        Ok(TextEncoders { family, encoders })
    }

    pub fn family(&self) -> TextFamily {
        self.family
    }

    /// Encodes `text`; `stop_at_clip_layer` is CLIPSetLastLayer's value when one was applied.
    pub fn encode(
        &self,
        text: &str,
        stop_at_clip_layer: Option<i64>,
    ) -> Result<Conditioning, GenError> {
        let mut conds = Vec::new();
        let mut pooled = None;
        for e in &self.encoders {
            let n = e.clip.num_layers();
            let layer = match stop_at_clip_layer {
                Some(idx) if idx.unsigned_abs() as usize > n || idx >= 0 => LayerChoice::Last,
                Some(idx) => LayerChoice::Hidden {
                    index: (n as i64 + idx) as usize,
                    final_norm: e.norm_hidden,
                },
                None if e.default_hidden => LayerChoice::Hidden {
                    index: n.saturating_sub(2),
                    final_norm: e.norm_hidden,
                },
                None => LayerChoice::Last,
            };
            let chunks = tokenize_with_weights(text, e.pad)?;
            let (cond, p) = encode_weighted(&e.clip, &chunks, e.pad, layer)?;
            if e.pooled {
                pooled = Some(p);
            }
            conds.push(cond);
        }
        let cond = if conds.len() == 1 {
            conds.remove(0)
        } else {
            let cut = conds
                .iter()
                .map(|c| c.dim(1))
                .collect::<Result<Vec<_>, _>>()?;
            let cut = cut.into_iter().min().unwrap_or(0);
            let parts = conds
                .iter()
                .map(|c| c.narrow(1, 0, cut))
                .collect::<Result<Vec<_>, _>>()?;
            Tensor::cat(&parts, 2)?
        };
        Ok(Conditioning { cond, pooled })
    }
}

/// `encode_token_weights` for one encoder: every chunk in one batch (plus the empty prompt when
/// a weight is not 1), weights applied, chunks concatenated; the first chunk's pooled output.
fn encode_weighted(
    clip: &ClipText,
    chunks: &[Vec<Weighted>],
    pad: u32,
    layer: LayerChoice,
) -> Result<(Tensor, Tensor), GenError> {
    let weighted = chunks.iter().flatten().any(|&(_, w)| w != 1.0) || chunks.is_empty();
    let mut sequences: Vec<Vec<u32>> = chunks
        .iter()
        .map(|c| c.iter().map(|&(t, _)| t).collect())
        .collect();
    if weighted {
        let mut empty = vec![START, END];
        empty.resize(sequences.first().map_or(77, Vec::len), pad);
        sequences.push(empty);
    }
    let (hidden, pooled) = clip.encode(&sequences, layer, true)?;
    let mut out = Vec::with_capacity(chunks.len());
    let empty = if weighted {
        Some(hidden.get(sequences.len() - 1)?)
    } else {
        None
    };
    for (k, chunk) in chunks.iter().enumerate() {
        let mut z = hidden.get(k)?;
        if let Some(empty) = &empty
            && chunk.iter().any(|&(_, w)| w != 1.0)
        {
            // Per position: `(z − z_empty)·f32(w) + z_empty`, rows of weight 1 untouched.
            let rows = chunk
                .iter()
                .enumerate()
                .map(|(j, &(_, w))| {
                    let zj = z.get(j)?;
                    if w == 1.0 {
                        Ok(zj)
                    } else {
                        let ej = empty.get(j)?;
                        ((zj - &ej)? * f64::from(w as f32))? + ej
                    }
                })
                .collect::<Result<Vec<_>, candle_core::Error>>()?;
            z = Tensor::stack(&rows, 0)?;
        }
        out.push(z);
    }
    let cond = Tensor::cat(&out, 0)?.unsqueeze(0)?;
    Ok((cond, pooled.get(0)?.unsqueeze(0)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::nn::testing::put;

    fn clip_l(w: &mut WeightMap, prefix: &str, width: usize, layers: usize) {
        put(
            w,
            &format!("{prefix}embeddings.token_embedding.weight"),
            &[49408, width],
        );
        put(
            w,
            &format!("{prefix}embeddings.position_embedding.weight"),
            &[77, width],
        );
        for i in 0..layers {
            let l = format!("{prefix}encoder.layers.{i}.");
            for n in ["layer_norm1", "layer_norm2"] {
                put(w, &format!("{l}{n}.weight"), &[width]);
                put(w, &format!("{l}{n}.bias"), &[width]);
            }
            for n in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                put(w, &format!("{l}self_attn.{n}.weight"), &[width, width]);
                put(w, &format!("{l}self_attn.{n}.bias"), &[width]);
            }
            put(w, &format!("{l}mlp.fc1.weight"), &[2 * width, width]);
            put(w, &format!("{l}mlp.fc1.bias"), &[2 * width]);
            put(w, &format!("{l}mlp.fc2.weight"), &[width, 2 * width]);
            put(w, &format!("{l}mlp.fc2.bias"), &[width]);
        }
        put(w, &format!("{prefix}final_layer_norm.weight"), &[width]);
        put(w, &format!("{prefix}final_layer_norm.bias"), &[width]);
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().and_then(|t| t.to_vec1()).expect("values")
    }

    /// A weight of 1 changes nothing; `(word:w)` moves only that word's positions, by
    /// `(z − z_empty)·w + z_empty`; a long prompt gives 77-token chunks side by side.
    #[test]
    fn weights_and_chunks() {
        let mut w = WeightMap::new();
        clip_l(&mut w, "clip_l.transformer.text_model.", 32, 2);
        let enc = TextEncoders::load(&w).expect("load");
        assert_eq!(enc.family(), TextFamily::Sd1);
        let plain = enc.encode("a red cat", None).expect("plain");
        let one = enc.encode("a (red:1.0) cat", None).expect("weight 1");
        assert_eq!(values(&plain.cond), values(&one.cond));
        assert_eq!(plain.cond.dims(), [1, 77, 32]);
        assert!(plain.pooled.is_none());
        let heavy = enc.encode("a (red:1.5) cat", None).expect("weighted");
        let empty = enc.encode("", None).expect("empty");
        let (p, h, e) = (
            values(&plain.cond),
            values(&heavy.cond),
            values(&empty.cond),
        );
        // Token 2 ("red") moves, the others stay.
        for pos in 0..77 {
            let r = pos * 32..(pos + 1) * 32;
            if pos == 2 {
                for i in r {
                    let want = (p[i] - e[i]) * 1.5 + e[i];
                    assert!((h[i] - want).abs() < 1e-5, "{} vs {want}", h[i]);
                }
            } else {
                assert_eq!(&h[r.clone()], &p[r]);
            }
        }
        let long = enc.encode(&"word ".repeat(100), None).expect("long");
        assert_eq!(long.cond.dims(), [1, 154, 32]);
    }

    /// CLIPSetLastLayer −1 on SD1 is the default (last layer), −2 differs, −100 is the last.
    #[test]
    fn clip_skip() {
        let mut w = WeightMap::new();
        clip_l(&mut w, "clip_l.transformer.text_model.", 32, 3);
        let enc = TextEncoders::load(&w).expect("load");
        let base = values(&enc.encode("cat", None).expect("default").cond);
        assert_eq!(values(&enc.encode("cat", Some(-1)).expect("-1").cond), base);
        assert_eq!(
            values(&enc.encode("cat", Some(-100)).expect("-100").cond),
            base
        );
        assert_ne!(values(&enc.encode("cat", Some(-2)).expect("-2").cond), base);
    }

    #[test]
    fn no_encoder_is_an_error() {
        let err = TextEncoders::load(&WeightMap::new()).expect_err("empty");
        assert!(err.to_string().contains("no text encoder"), "{err}");
    }
}
