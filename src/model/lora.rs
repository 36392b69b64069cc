//! LoRA key names and arithmetic (ComfyUI's `lora.py`, reference §3.5 and §9).
//!
//! A LoRA names the weights it changes in one of several conventions: kohya
//! (`lora_unet_down_blocks_0_attentions_0_…`, `lora_te_text_model_…`, `lora_te1_`/`lora_te2_`
//! for SDXL), diffusers / PEFT (`unet.down_blocks.0.attentions.0.….to_q`, `text_encoder.…`), or
//! the checkpoint's own LDM names (`lora_unet_input_blocks_1_1_…`, `diffusion_model.…`).
//! [`key_map`] builds, for one checkpoint, the table from every such name to the checkpoint's
//! own key, through ComfyUI's LDM ↔ diffusers UNet block mapping.
//!
//! [`lora_delta`] computes `up @ down` the way ComfyUI does on a CPU: a sequential f32 sum over
//! the rank index (k = 0, 1, …). A blocked or pairwise matrix product differs in about 10 % of
//! f32 values, so exactness rules out a BLAS-style kernel here.

use std::collections::HashMap;

/// Diffusers name of an LDM UNet key (without the `model.diffusion_model.` prefix), for the
/// SD1/SD2/SDXL UNet layout with `levels` resolution levels (4 for SD1/SD2, 3 for SDXL).
pub fn unet_to_diffusers(ldm: &str, levels: usize) -> Option<String> {
    let mut parts = ldm.splitn(4, '.');
    let head = parts.next()?;
    match head {
        "time_embed" => {
            let idx = parts.next()?;
            let rest = ldm.splitn(3, '.').nth(2)?;
            let layer = match idx {
                "0" => "linear_1",
                "2" => "linear_2",
                _ => return None,
            };
            Some(format!("time_embedding.{layer}.{rest}"))
        }
        "label_emb" => {
            // label_emb.0.{0,2}.weight → add_embedding.linear_{1,2}.weight
            let _zero = parts.next()?;
            let idx = parts.next()?;
            let rest = parts.next()?;
            let layer = match idx {
                "0" => "linear_1",
                "2" => "linear_2",
                _ => return None,
            };
            Some(format!("add_embedding.{layer}.{rest}"))
        }
        "out" => {
            let idx = parts.next()?;
            let rest = ldm.splitn(3, '.').nth(2)?;
            let layer = match idx {
                "0" => "conv_norm_out",
                "2" => "conv_out",
                _ => return None,
            };
            Some(format!("{layer}.{rest}"))
        }
        "input_blocks" => {
            let n: usize = parts.next()?.parse().ok()?;
            let k: usize = parts.next()?.parse().ok()?;
            let rest = parts.next()?;
            if n == 0 {
                return (k == 0).then(|| format!("conv_in.{rest}"));
            }
            let (level, j) = ((n - 1) / 3, (n - 1) % 3);
            if j == 2 {
                // The downsampler of `level`: `input_blocks.N.0.op.weight`.
                let rest = rest.strip_prefix("op.")?;
                return Some(format!("down_blocks.{level}.downsamplers.0.conv.{rest}"));
            }
            match k {
                0 => Some(format!("down_blocks.{level}.resnets.{j}.{}", resnet(rest)?)),
                1 => Some(format!("down_blocks.{level}.attentions.{j}.{rest}")),
                _ => None,
            }
        }
        "middle_block" => {
            let k: usize = parts.next()?.parse().ok()?;
            let rest = ldm.splitn(3, '.').nth(2)?;
            match k {
                0 | 2 => Some(format!("mid_block.resnets.{}.{}", k / 2, resnet(rest)?)),
                1 => Some(format!("mid_block.attentions.0.{rest}")),
                _ => None,
            }
        }
        "output_blocks" => {
            let n: usize = parts.next()?.parse().ok()?;
            let k: usize = parts.next()?.parse().ok()?;
            let rest = parts.next()?;
            let (level, j) = (n / 3, n % 3);
            if level >= levels {
                return None;
            }
            if let Some(conv) = rest.strip_prefix("conv.") {
                // The upsampler sits after the resnet (and the attention, if the level has one).
                return (j == 2).then(|| format!("up_blocks.{level}.upsamplers.0.conv.{conv}"));
            }
            match k {
                0 => Some(format!("up_blocks.{level}.resnets.{j}.{}", resnet(rest)?)),
                1 => Some(format!("up_blocks.{level}.attentions.{j}.{rest}")),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Diffusers names of a resnet's layers.
fn resnet(rest: &str) -> Option<String> {
    const MAP: [(&str, &str); 6] = [
        ("in_layers.0.", "norm1."),
        ("in_layers.2.", "conv1."),
        ("emb_layers.1.", "time_emb_proj."),
        ("out_layers.0.", "norm2."),
        ("out_layers.3.", "conv2."),
        ("skip_connection.", "conv_shortcut."),
    ];
    MAP.iter()
        .find_map(|(ldm, diff)| rest.strip_prefix(ldm).map(|tail| format!("{diff}{tail}")))
}

/// The kohya form of a dotted name: `lora_unet_` + the name with `.` replaced by `_`.
fn kohya(prefix: &str, dotted: &str) -> String {
    format!("{prefix}{}", dotted.replace('.', "_"))
}

/// LoRA name (without the `.lora_up.weight`-style suffix) → the checkpoint key it patches.
///
/// `unet_keys` are the checkpoint's diffusion-model keys without prefix (`input_blocks.1.1.…`);
/// `clip_keys` are ComfyUI's internal text-encoder names (`clip_l.transformer.text_model.…`).
/// Only `.weight` keys are LoRA targets; bias deltas (`diff_b`) use the same names.
pub fn key_map(
    unet_keys: &[String],
    clip_keys: &[String],
    levels: usize,
) -> HashMap<String, String> {
    let mut map = HashMap::new();
    for k in unet_keys {
        let Some(base) = k.strip_suffix(".weight") else {
            continue;
        };
        let full = format!("diffusion_model.{k}");
        map.insert(kohya("lora_unet_", base), full.clone());
        map.insert(format!("diffusion_model.{base}"), full.clone());
        if let Some(d) = unet_to_diffusers(k, levels)
            && let Some(dbase) = d.strip_suffix(".weight")
        {
            map.insert(kohya("lora_unet_", dbase), full.clone());
            map.insert(kohya("lycoris_", dbase), full.clone());
            map.insert(format!("unet.{dbase}"), full.clone());
            map.insert(dbase.to_owned(), full.clone());
            // The old diffusers attention-processor form.
            for proj in ["to_q", "to_k", "to_v", "to_out.0"] {
                if let Some(stem) = dbase.strip_suffix(&format!(".{proj}")) {
                    let p = proj.trim_end_matches(".0");
                    map.insert(format!("unet.{stem}.processor.{p}_lora"), full.clone());
                    map.insert(format!("{stem}.processor.{p}_lora"), full.clone());
                }
            }
        }
    }
    // Text encoders: kohya `lora_te_`/`lora_te1_` (CLIP-L, or CLIP-H for SD2), `lora_te2_`
    // (SDXL's CLIP-G when a CLIP-L is present), and diffusers `text_encoder(_2).`.
    let has_clip_l = clip_keys.iter().any(|k| k.starts_with("clip_l."));
    for k in clip_keys {
        let Some(base) = k.strip_suffix(".weight") else {
            continue;
        };
        let full = k.clone();
        map.insert(format!("text_encoders.{base}"), full.clone());
        let Some((enc, rest)) = base.split_once('.') else {
            continue;
        };
        let Some(tail) = rest.strip_prefix("transformer.") else {
            continue;
        };
        let (kohya_prefixes, diffusers): (&[&str], &str) = match enc {
            "clip_l" | "clip_h" => (&["lora_te_", "lora_te1_"], "text_encoder."),
            "clip_g" if has_clip_l => (&["lora_te2_"], "text_encoder_2."),
            "clip_g" => (&["lora_te_", "lora_te1_"], "text_encoder."),
            _ => continue,
        };
        for p in kohya_prefixes {
            map.insert(kohya(p, tail), full.clone());
        }
        map.insert(format!("{diffusers}{tail}"), full.clone());
    }
    map
}

/// The part of a weight a LoRA name patches when it is not simply the whole weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// A block of rows of a fused weight (Flux's diffusers `to_q`, `to_k`, `to_v` are row blocks
    /// of one `qkv` weight): the first row, and how many.
    Rows { start: usize, rows: usize },
    /// The whole weight, with the delta's two row halves swapped first: diffusers orders the
    /// final modulation as (scale, shift), the LDM weight as (shift, scale).
    SwappedHalves,
}

/// Flux LoRA names in diffusers form (`transformer.single_transformer_blocks.0.attn.to_q`, and
/// the same under `lycoris_`, `lora_transformer_` or no prefix) → the checkpoint key and, for a
/// part of a fused weight, the [`Slice`] — the table ComfyUI's `flux_to_diffusers` defines. Only
/// names whose key is among `unet_keys` (no prefix) are kept; `hidden` is the model width.
pub fn flux_diffusers_map(
    unet_keys: &[String],
    hidden: usize,
) -> HashMap<String, (String, Option<Part>)> {
    let rows = |start: usize, rows: usize| Some(Part::Rows { start, rows });
    // (diffusers name without `.weight`, LDM key, part)
    let mut entries: Vec<(String, String, Option<Part>)> = Vec::new();
    for i in block_numbers(unet_keys, "double_blocks.") {
        let (d, l) = (
            format!("transformer_blocks.{i}"),
            format!("double_blocks.{i}"),
        );
        let qkv = |stream: &str| format!("{l}.{stream}_attn.qkv.weight");
        push_qkv(
            &mut entries,
            &format!("{d}.attn."),
            QKV,
            &qkv("img"),
            hidden,
        );
        push_qkv(
            &mut entries,
            &format!("{d}.attn."),
            ADDED_QKV,
            &qkv("txt"),
            hidden,
        );
        push_whole(
            &mut entries,
            &format!("{d}."),
            &format!("{l}."),
            &[
                ("attn.to_out.0", "img_attn.proj"),
                ("norm1.linear", "img_mod.lin"),
                ("norm1_context.linear", "txt_mod.lin"),
                ("attn.to_add_out", "txt_attn.proj"),
                ("ff.net.0.proj", "img_mlp.0"),
                ("ff.net.2", "img_mlp.2"),
                ("ff_context.net.0.proj", "txt_mlp.0"),
                ("ff_context.net.2", "txt_mlp.2"),
                // LyCORIS LoKr names for the same layers.
                ("ff.linear_in", "img_mlp.0"),
                ("ff.linear_out", "img_mlp.2"),
                ("ff_context.linear_in", "txt_mlp.0"),
                ("ff_context.linear_out", "txt_mlp.2"),
            ],
        );
    }
    for i in block_numbers(unet_keys, "single_blocks.") {
        let (d, l) = (
            format!("single_transformer_blocks.{i}"),
            format!("single_blocks.{i}"),
        );
        let linear1 = format!("{l}.linear1.weight");
        push_qkv(&mut entries, &format!("{d}.attn."), QKV, &linear1, hidden);
        // The MLP input follows q, k and v in the same weight, four times as wide.
        entries.push((
            format!("{d}.proj_mlp"),
            linear1.clone(),
            rows(3 * hidden, 4 * hidden),
        ));
        push_whole(
            &mut entries,
            &format!("{d}."),
            &format!("{l}."),
            &[
                ("norm.linear", "modulation.lin"),
                ("proj_out", "linear2"),
                ("attn.to_qkv_mlp_proj", "linear1"),
                ("attn.to_out", "linear2"),
            ],
        );
    }
    push_whole(
        &mut entries,
        "",
        "",
        &[
            ("proj_out", "final_layer.linear"),
            ("x_embedder", "img_in"),
            (
                "time_text_embed.timestep_embedder.linear_1",
                "time_in.in_layer",
            ),
            (
                "time_text_embed.timestep_embedder.linear_2",
                "time_in.out_layer",
            ),
            ("context_embedder", "txt_in"),
            (
                "time_text_embed.text_embedder.linear_1",
                "vector_in.in_layer",
            ),
            (
                "time_text_embed.text_embedder.linear_2",
                "vector_in.out_layer",
            ),
            (
                "time_text_embed.guidance_embedder.linear_1",
                "guidance_in.in_layer",
            ),
            (
                "time_text_embed.guidance_embedder.linear_2",
                "guidance_in.out_layer",
            ),
            ("controlnet_x_embedder", "pos_embed_input"),
        ],
    );
    entries.push((
        "norm_out.linear".to_owned(),
        "final_layer.adaLN_modulation.1.weight".to_owned(),
        Some(Part::SwappedHalves),
    ));
    // Every diffusers name is accepted bare and under three trainers' prefixes.
    let mut map = with_prefixes(
        entries,
        unet_keys,
        &["", "transformer."],
        &["lycoris_", "lora_transformer_"],
    );
    // `single_blocks.N.linear1_qkv`: q, k and v of linear1 as one block of rows.
    for k in unet_keys {
        if let Some(stem) = k.strip_suffix(".linear1.weight") {
            map.insert(
                format!("diffusion_model.{stem}.linear1_qkv"),
                (k.clone(), rows(0, 3 * hidden)),
            );
        }
    }
    map
}

/// Diffusers names of the image stream's and the text stream's query, key and value.
const QKV: [&str; 3] = ["to_q", "to_k", "to_v"];
const ADDED_QKV: [&str; 3] = ["add_q_proj", "add_k_proj", "add_v_proj"];

/// Adds q, k and v (`names` under `prefix`) as the first three `hidden`-row blocks of the fused
/// weight `key`.
fn push_qkv(
    entries: &mut Vec<(String, String, Option<Part>)>,
    prefix: &str,
    names: [&str; 3],
    key: &str,
    hidden: usize,
) {
    for (j, name) in names.into_iter().enumerate() {
        let part = Part::Rows {
            start: j * hidden,
            rows: hidden,
        };
        entries.push((format!("{prefix}{name}"), key.to_owned(), Some(part)));
    }
}

/// Block numbers present under `prefix` (`double_blocks.` → 0, 1, …), in order.
fn block_numbers(unet_keys: &[String], prefix: &str) -> Vec<usize> {
    let mut n: Vec<usize> = unet_keys
        .iter()
        .filter_map(|k| k.strip_prefix(prefix)?.split('.').next()?.parse().ok())
        .collect();
    n.sort_unstable();
    n.dedup();
    n
}

/// Adds `(diffusers, ldm)` name pairs of whole weights, each under its prefix.
fn push_whole(
    entries: &mut Vec<(String, String, Option<Part>)>,
    diffusers_prefix: &str,
    ldm_prefix: &str,
    table: &[(&str, &str)],
) {
    for (from, to) in table {
        entries.push((
            format!("{diffusers_prefix}{from}"),
            format!("{ldm_prefix}{to}.weight"),
            None,
        ));
    }
}

/// The names of `entries` (diffusers name, key, part) whose key the model has, under each
/// dotted prefix and each kohya-style (`.` → `_`) prefix.
fn with_prefixes(
    entries: Vec<(String, String, Option<Part>)>,
    unet_keys: &[String],
    dotted: &[&str],
    underscored: &[&str],
) -> HashMap<String, (String, Option<Part>)> {
    let present: std::collections::HashSet<&str> = unet_keys.iter().map(String::as_str).collect();
    let mut map = HashMap::new();
    // Later entries win, as in ComfyUI's table (SD3's last-block override).
    for (name, key, part) in entries {
        if !present.contains(key.as_str()) {
            continue;
        }
        for p in dotted {
            map.insert(format!("{p}{name}"), (key.clone(), part));
        }
        for p in underscored {
            map.insert(kohya(p, &name), (key.clone(), part));
        }
    }
    map
}

/// SD3 LoRA names in diffusers form (`transformer.transformer_blocks.0.attn.to_q`, and under
/// `base_model.model.`, `lora_transformer_` or `lycoris_`) → the checkpoint key and part, the
/// table of ComfyUI's `mmdit_to_diffusers`: q, k and v are row blocks of each joint block's
/// fused `qkv` weights; the final modulation and the last block's context modulation have their
/// halves swapped. `hidden` is the model width (64 × depth).
pub fn sd3_diffusers_map(
    unet_keys: &[String],
    hidden: usize,
) -> HashMap<String, (String, Option<Part>)> {
    let mut entries: Vec<(String, String, Option<Part>)> = Vec::new();
    for i in block_numbers(unet_keys, "joint_blocks.") {
        let (d, l) = (
            format!("transformer_blocks.{i}"),
            format!("joint_blocks.{i}"),
        );
        let qkv = |stream: &str| format!("{l}.{stream}.attn.qkv.weight");
        push_qkv(
            &mut entries,
            &format!("{d}.attn."),
            QKV,
            &qkv("x_block"),
            hidden,
        );
        push_qkv(
            &mut entries,
            &format!("{d}.attn."),
            ADDED_QKV,
            &qkv("context_block"),
            hidden,
        );
        push_whole(
            &mut entries,
            &format!("{d}."),
            &format!("{l}."),
            &[
                ("norm1_context.linear", "context_block.adaLN_modulation.1"),
                ("attn.to_add_out", "context_block.attn.proj"),
                ("ff_context.net.0.proj", "context_block.mlp.fc1"),
                ("ff_context.net.2", "context_block.mlp.fc2"),
                ("norm1.linear", "x_block.adaLN_modulation.1"),
                ("attn.to_out.0", "x_block.attn.proj"),
                ("ff.net.0.proj", "x_block.mlp.fc1"),
                ("ff.net.2", "x_block.mlp.fc2"),
            ],
        );
    }
    push_whole(
        &mut entries,
        "",
        "",
        &[
            ("context_embedder", "context_embedder"),
            (
                "time_text_embed.timestep_embedder.linear_1",
                "t_embedder.mlp.0",
            ),
            (
                "time_text_embed.timestep_embedder.linear_2",
                "t_embedder.mlp.2",
            ),
            ("pos_embed.proj", "x_embedder.proj"),
            ("time_text_embed.text_embedder.linear_1", "y_embedder.mlp.0"),
            ("time_text_embed.text_embedder.linear_2", "y_embedder.mlp.2"),
            ("proj_out", "final_layer.linear"),
        ],
    );
    entries.push((
        "norm_out.linear".to_owned(),
        "final_layer.adaLN_modulation.1.weight".to_owned(),
        Some(Part::SwappedHalves),
    ));
    // The last block (by depth) has only the context modulation, stored shift-first too.
    if let Some(last) = (hidden / 64).checked_sub(1) {
        entries.push((
            format!("transformer_blocks.{last}.norm1_context.linear"),
            format!("joint_blocks.{last}.context_block.adaLN_modulation.1.weight"),
            Some(Part::SwappedHalves),
        ));
    }
    with_prefixes(
        entries,
        unet_keys,
        &["transformer.", "base_model.model."],
        &["lora_transformer_", "lycoris_"],
    )
}

/// `up @ down` for `up: [out, rank]` and `down: [rank, inner]` (row-major f32), summing over the
/// rank index sequentially in f32 — ComfyUI's CPU result, bit for bit. Writes rows
/// `rows.start .. rows.end` of the `[out, inner]` product into `out`.
pub fn lora_delta(
    up: &[f32],
    down: &[f32],
    rank: usize,
    inner: usize,
    rows: std::ops::Range<usize>,
    out: &mut [f32],
) {
    debug_assert_eq!(out.len(), rows.len() * inner);
    for (o_row, r) in out.chunks_exact_mut(inner).zip(rows) {
        o_row.fill(0.0);
        let u = &up[r * rank..(r + 1) * rank];
        for (k, &uk) in u.iter().enumerate() {
            let d = &down[k * inner..(k + 1) * inner];
            for (o, &dk) in o_row.iter_mut().zip(d) {
                *o += uk * dk;
            }
        }
    }
}

/// ComfyUI's LoRA scale: `alpha / rank` when the file has an alpha, else 1.
pub fn lora_scale(alpha: Option<f64>, rank: usize) -> f64 {
    alpha.map_or(1.0, |a| a / rank as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::components::{Component, component_of};
    use crate::model::layouts::{Layout, Scale};

    /// Flux's diffusers names reach the checkpoint's keys under all four prefixes, with the row
    /// blocks of the fused weights; names of weights the model lacks are left out.
    #[test]
    fn flux_diffusers_names_map_to_row_blocks_of_fused_weights() {
        let keys: Vec<String> = [
            "double_blocks.0.img_attn.qkv.weight",
            "double_blocks.0.img_attn.proj.weight",
            "single_blocks.3.linear1.weight",
            "final_layer.adaLN_modulation.1.weight",
        ]
        .map(String::from)
        .to_vec();
        let m = flux_diffusers_map(&keys, 3072);
        let rows = |start, rows| Some(Part::Rows { start, rows });
        let qkv = "double_blocks.0.img_attn.qkv.weight".to_owned();
        for name in [
            "transformer.transformer_blocks.0.attn.to_k",
            "lycoris_transformer_blocks_0_attn_to_k",
            "lora_transformer_transformer_blocks_0_attn_to_k",
            "transformer_blocks.0.attn.to_k",
        ] {
            assert_eq!(
                m.get(name),
                Some(&(qkv.clone(), rows(3072, 3072))),
                "{name}"
            );
        }
        let linear1 = "single_blocks.3.linear1.weight".to_owned();
        assert_eq!(
            m.get("transformer.single_transformer_blocks.3.proj_mlp"),
            Some(&(linear1.clone(), rows(3 * 3072, 4 * 3072)))
        );
        assert_eq!(
            m.get("diffusion_model.single_blocks.3.linear1_qkv"),
            Some(&(linear1, rows(0, 3 * 3072)))
        );
        assert_eq!(
            m.get("transformer.norm_out.linear"),
            Some(&(
                "final_layer.adaLN_modulation.1.weight".to_owned(),
                Some(Part::SwappedHalves)
            ))
        );
        assert_eq!(
            m.get("transformer.transformer_blocks.0.attn.to_out.0"),
            Some(&("double_blocks.0.img_attn.proj.weight".to_owned(), None))
        );
        // The model has no txt_attn weights and no block 1.
        assert!(!m.contains_key("transformer.transformer_blocks.0.attn.add_q_proj"));
        assert!(!m.contains_key("transformer.transformer_blocks.1.attn.to_q"));
    }

    fn unet_keys(l: &Layout) -> Vec<String> {
        l.tensors()
            .into_iter()
            .filter(|t| component_of(&t.name, "model.diffusion_model.") == Component::Model)
            .map(|t| {
                t.name
                    .trim_start_matches("model.diffusion_model.")
                    .to_owned()
            })
            .collect()
    }

    #[test]
    fn ldm_keys_map_to_diffusers_names() {
        for (ldm, diffusers) in [
            ("input_blocks.0.0.weight", "conv_in.weight"),
            (
                "input_blocks.1.0.in_layers.2.weight",
                "down_blocks.0.resnets.0.conv1.weight",
            ),
            (
                "input_blocks.2.1.transformer_blocks.0.attn1.to_q.weight",
                "down_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q.weight",
            ),
            (
                "input_blocks.3.0.op.weight",
                "down_blocks.0.downsamplers.0.conv.weight",
            ),
            (
                "input_blocks.4.0.skip_connection.weight",
                "down_blocks.1.resnets.0.conv_shortcut.weight",
            ),
            (
                "input_blocks.11.0.emb_layers.1.bias",
                "down_blocks.3.resnets.1.time_emb_proj.bias",
            ),
            (
                "middle_block.0.out_layers.3.weight",
                "mid_block.resnets.0.conv2.weight",
            ),
            (
                "middle_block.1.proj_in.weight",
                "mid_block.attentions.0.proj_in.weight",
            ),
            (
                "middle_block.2.in_layers.0.weight",
                "mid_block.resnets.1.norm1.weight",
            ),
            (
                "output_blocks.2.1.conv.weight",
                "up_blocks.0.upsamplers.0.conv.weight",
            ),
            (
                "output_blocks.5.2.conv.weight",
                "up_blocks.1.upsamplers.0.conv.weight",
            ),
            (
                "output_blocks.5.1.proj_out.weight",
                "up_blocks.1.attentions.2.proj_out.weight",
            ),
            (
                "output_blocks.11.0.out_layers.0.weight",
                "up_blocks.3.resnets.2.norm2.weight",
            ),
            ("time_embed.2.weight", "time_embedding.linear_2.weight"),
            ("label_emb.0.0.weight", "add_embedding.linear_1.weight"),
            ("out.2.bias", "conv_out.bias"),
        ] {
            assert_eq!(
                unet_to_diffusers(ldm, 4).as_deref(),
                Some(diffusers),
                "{ldm}"
            );
        }
    }

    #[test]
    fn every_unet_key_of_real_layouts_has_a_unique_diffusers_name() {
        for (layout, levels) in [
            (Layout::sd15(Scale::Sample), 4),
            (Layout::sdxl(Scale::Sample), 3),
        ] {
            let keys = unet_keys(&layout);
            let mut seen = std::collections::HashSet::new();
            for k in &keys {
                let d = unet_to_diffusers(k, levels)
                    .unwrap_or_else(|| panic!("no diffusers name for {k}"));
                assert!(seen.insert(d.clone()), "{d} used twice");
            }
            assert_eq!(seen.len(), keys.len());
        }
    }

    #[test]
    fn kohya_diffusers_and_ldm_names_reach_the_same_keys() {
        let keys = unet_keys(&Layout::sd15(Scale::Sample));
        let clip = vec![
            "clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight".to_owned(),
            "clip_l.logit_scale".to_owned(),
        ];
        let m = key_map(&keys, &clip, 4);
        let target = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight";
        for name in [
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k",
            "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k",
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
            "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
            "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k",
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora",
        ] {
            assert_eq!(m.get(name).map(String::as_str), Some(target), "{name}");
        }
        let te = "clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight";
        for name in [
            "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
            "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
        ] {
            assert_eq!(m.get(name).map(String::as_str), Some(te), "{name}");
        }
    }

    #[test]
    fn delta_is_a_sequential_f32_sum_over_the_rank() {
        // Values chosen so that summation order changes the f32 result.
        let (out, rank, inner) = (2, 3, 2);
        let up = [1.0e8f32, 1.0, -1.0e8, 3.0, 0.5, 0.25];
        let down = [1.0f32, 0.1, 1.0, 0.2, 1.0, 0.3];
        let mut got = vec![0.0f32; out * inner];
        lora_delta(&up, &down, rank, inner, 0..out, &mut got);
        for r in 0..out {
            for c in 0..inner {
                let mut acc = 0.0f32;
                for k in 0..rank {
                    acc += up[r * rank + k] * down[k * inner + c];
                }
                assert_eq!(got[r * inner + c].to_bits(), acc.to_bits(), "({r},{c})");
            }
        }
        // (1e8·1 + 1·1) − 1e8·1 = 0 in sequential f32 (1e8 + 1 rounds to 1e8); pairwise would give 1.
        assert_eq!(got[0], 0.0);
        // Row ranges give the same rows as the whole product.
        let mut row1 = vec![0.0f32; inner];
        lora_delta(&up, &down, rank, inner, 1..2, &mut row1);
        assert_eq!(row1, got[inner..]);
        assert_eq!(lora_scale(Some(8.0), 16), 0.5);
        assert_eq!(lora_scale(None, 16), 1.0);
    }
}
