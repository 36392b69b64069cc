//! LoRA and LyCORIS baking end to end (LoRA, LoCon, LoHa, LoKr, Tucker forms, DoRA, full
//! differences; kohya, PEFT, diffusers, Flux and SD3 names), each compared bit for bit with a
//! reference re-derived here from ComfyUI's arithmetic, deliberately without the product's kernels.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use amalgam::engine::cache::RunCache;
use amalgam::engine::{Precision, SavedFile, Warning};
use amalgam::format::DType;
use amalgam::format::safetensors::TensorSpec;
use amalgam::model::layouts::{Layout, Scale};
use serde_json::json;

use crate::util::*;

/// A LoRA in kohya and PEFT naming, baked after a merge: each patched key equals the merge
/// plus `f32(strength · alpha / rank) · (up @ down)` (a sequential f32 sum over the rank),
/// rounded once; keys that match nothing are reported.
#[test]
fn lora_after_a_merge_is_exact_and_unmatched_keys_are_reported() {
    let base = ModelTree::new();
    let sd = Layout::sd15(Scale::Sample);
    let a = base.checkpoint("a.safetensors", &sd, 110);
    let b = base.checkpoint("b.safetensors", &sd, 111);
    let f16 = DType::F16;
    // (LoRA base name, up suffix, down suffix, up shape, down shape, alpha, patched checkpoint key)
    let q = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight";
    let conv = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight";
    let k2 = "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight";
    let te = "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight";
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        Vec<usize>,
        Vec<usize>,
        Option<f32>,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
            ".lora_up.weight",
            ".lora_down.weight",
            vec![16, 4],
            vec![4, 16],
            Some(2.0),
            q,
        ),
        (
            "lora_unet_down_blocks_0_resnets_0_conv1",
            ".lora_up.weight",
            ".lora_down.weight",
            vec![16, 4, 1, 1],
            vec![4, 16, 3, 3],
            Some(4.0),
            conv,
        ),
        (
            "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k",
            ".lora_B.weight",
            ".lora_A.weight",
            vec![32, 2],
            vec![2, 768],
            None,
            k2,
        ),
        (
            "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
            ".lora_up.weight",
            ".lora_down.weight",
            vec![32, 2],
            vec![2, 32],
            Some(1.0),
            te,
        ),
        (
            "lora_unet_no_such_layer",
            ".lora_up.weight",
            ".lora_down.weight",
            vec![4, 2],
            vec![2, 4],
            None,
            "",
        ),
    ];
    let mut specs = Vec::new();
    for (name, up, down, us, ds, alpha, _) in &cases {
        specs.push(spec(&format!("{name}{up}"), f16, us));
        specs.push(spec(&format!("{name}{down}"), f16, ds));
        if alpha.is_some() {
            specs.push(spec(&format!("{name}.alpha"), DType::F32, &[]));
        }
    }
    let mut overrides = HashMap::new();
    for (name, _, _, _, _, alpha, _) in &cases {
        if let Some(al) = alpha {
            overrides.insert(format!("{name}.alpha"), al.to_le_bytes().to_vec());
        }
    }
    let lora_dir = base.models("loras");
    let lora_path = lora_dir.join("style.safetensors");
    write_safetensors(&lora_path, &specs, 112, &overrides, &[]);

    let (sm, sc, r) = (0.8, 0.6, 0.4);
    let prompt = json!({
        "1": loader("a.safetensors"), "2": loader("b.safetensors"),
        "3": {"class_type": "ModelMergeSimple", "inputs": {"ratio": r, "model1": ["1", 0], "model2": ["2", 0]}},
        "4": {"class_type": "LoraLoader", "inputs": {"lora_name": "style.safetensors", "strength_model": sm, "strength_clip": sc, "model": ["3", 0], "clip": ["1", 1]}},
        "5": save(("4", 0), ("4", 1), ("1", 2), "checkpoints/baked"),
    });
    let (files, warnings, _) = run_api(&base, &prompt, Precision::Keep, &mut RunCache::default());
    let out = base.read(&files[0].path);
    let (ta, tb, tl) = (base.read(&a), base.read(&b), base.read(&lora_path));
    for (name, up, down, us, ds, alpha, key) in &cases {
        if key.is_empty() {
            continue;
        }
        let (u, d) = (
            f32s(&tl[&format!("{name}{up}")]),
            f32s(&tl[&format!("{name}{down}")]),
        );
        let (rows, rank, inner) = (us[0], ds[0], ds[1..].iter().product::<usize>());
        let delta = seq_matmul(&u, &d, rows, rank, inner);
        let scale = alpha.map_or(1.0, |al| f64::from(al) / rank as f64);
        let is_clip = key.starts_with("cond_stage_model.");
        let mut w = f32s(&ta[*key]);
        if !is_clip {
            patch(&mut w, r, 1.0 - r, Some(&f32s(&tb[*key])));
        }
        let strength = if is_clip { sc } else { sm };
        patch(&mut w, 1.0, strength * scale, Some(&delta));
        assert!(
            out[*key].bytes == to_bytes(&w, "F16"),
            "{key} differs from the reference"
        );
    }
    // An untouched key is the plain merge.
    let k = "model.diffusion_model.out.2.weight";
    let mut w = f32s(&ta[k]);
    patch(&mut w, r, 1.0 - r, Some(&f32s(&tb[k])));
    assert_eq!(out[k].bytes, to_bytes(&w, "F16"));
    let messages: Vec<&str> = warnings.iter().map(|w| w.message.as_str()).collect();
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("lora key not loaded: 2 of")
                && m.contains("lora_unet_no_such_layer")),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("3 MODEL and 1 CLIP keys patched")),
        "{messages:?}"
    );
}

/// The shared `model_merging_lora.png` (merge, then bake a LoRA) runs end to end once its save
/// node is unmuted, with checkpoints and a LoRA named as it expects.
#[test]
fn shared_lora_png_runs_end_to_end() {
    let base = ModelTree::new();
    let sd = Layout::sd15(Scale::Small);
    let ck = base.models("checkpoints");
    write_ckpt(&ck.join("v1-5-pruned-emaonly.ckpt"), &sd.tensors(), 120);
    base.checkpoint("cardosAnime_v10.safetensors", &sd, 121);
    let loras = base.models("loras");
    let name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";
    let specs = [
        spec(&format!("{name}.lora_up.weight"), DType::F16, &[32, 4]),
        spec(&format!("{name}.lora_down.weight"), DType::F16, &[4, 32]),
    ];
    write_safetensors(
        &loras.join("theovercomer8sContrastFix_sd15.safetensors"),
        &specs,
        122,
        &HashMap::new(),
        &[],
    );
    let vae_dir = base.models("vae");
    let mut vae_specs = Vec::new();
    amalgam::model::layouts::vae(&mut vae_specs, "", 32, DType::F32);
    write_ckpt(&vae_dir.join("kl-f8-anime2.ckpt"), &vae_specs, 123);

    let png =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/workflows/model_merging_lora.png");
    let mut doc = amalgam::graph::load::load_file(&png).expect("png").document;
    let save_node = doc
        .nodes
        .iter_mut()
        .find(|n| n.type_ == "CheckpointSave")
        .expect("save");
    save_node.mode = amalgam::graph::Mode::Always;
    shrink_image_half(&mut doc, 1);
    let j = run_json(base.path(), "run", "lora.json", &doc.to_json());
    let path = PathBuf::from(j["outputs"][0]["path"].as_str().expect("path"));
    assert_eq!(read_reference(&path).0.len(), sd.tensors().len() - 1);
    let warnings = j["warnings"].to_string();
    assert!(
        warnings.contains("1 MODEL and 0 CLIP keys patched"),
        "{warnings}"
    );
}

/// `amalgam samples` also writes a LoRA for the SD1.5 samples and a standalone VAE; the LoRA
/// matches every key it names (no "lora key not loaded"), baked through the CLI.
#[test]
fn sample_lora_and_vae_bake_into_a_sample_checkpoint() {
    let base = ModelTree::new();
    let out = run(&[
        "--base-dir",
        path_str(base.path()),
        "samples",
        "--no-runnable",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listing = stdout(&out);
    assert!(
        listing.contains("models/loras/sample-lora-sd15.safetensors"),
        "{listing}"
    );
    assert!(
        listing.contains("models/vae/sample-vae.safetensors"),
        "{listing}"
    );
    let prompt = json!({
        "1": loader("sample-sd15-a.safetensors"),
        "2": {"class_type": "LoraLoader", "inputs": {"lora_name": "sample-lora-sd15.safetensors", "strength_model": 1.0, "strength_clip": 1.0, "model": ["1", 0], "clip": ["1", 1]}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": "sample-vae.safetensors"}},
        "4": save(("2", 0), ("2", 1), ("3", 0), "checkpoints/with_lora"),
    });
    let j = run_json(base.path(), "run", "lora.json", &prompt);
    let warnings = j["warnings"].to_string();
    assert!(
        warnings.contains("128 MODEL and 48 CLIP keys patched"),
        "{warnings}"
    );
    assert!(!warnings.contains("not loaded"), "{warnings}");
    let (tensors, _) = read_reference(Path::new(j["outputs"][0]["path"].as_str().expect("path")));
    assert_eq!(tensors.len(), 1130);
}

/// The four factors of a plain LoHa named `name`, for a weight of `out` rows of `inner` elements:
/// `hada_w1_a [out, r1]`, `hada_w1_b [r1, inner]`, `hada_w2_a [out, r2]`, `hada_w2_b [r2, inner]`.
fn loha_specs(
    name: &str,
    dtype: DType,
    out: usize,
    (r1, r2): (usize, usize),
    inner: usize,
) -> Vec<TensorSpec> {
    vec![
        spec(&format!("{name}.hada_w1_a"), dtype, &[out, r1]),
        spec(&format!("{name}.hada_w1_b"), dtype, &[r1, inner]),
        spec(&format!("{name}.hada_w2_a"), dtype, &[out, r2]),
        spec(&format!("{name}.hada_w2_b"), dtype, &[r2, inner]),
    ]
}

/// The reference LoHa delta `(w1a @ w1b) ⊙ (w2a @ w2b)` of [`loha_specs`]' factors, read with `f`.
fn loha_delta(
    f: impl Fn(&str) -> Vec<f32>,
    name: &str,
    out: usize,
    (r1, r2): (usize, usize),
    inner: usize,
) -> Vec<f32> {
    let g = |s: &str| f(&format!("{name}.{s}"));
    let m1 = seq_matmul(&g("hada_w1_a"), &g("hada_w1_b"), out, r1, inner);
    let m2 = seq_matmul(&g("hada_w2_a"), &g("hada_w2_b"), out, r2, inner);
    m1.iter().zip(&m2).map(|(x, y)| x * y).collect()
}

/// LoHa (`(w1a @ w1b) ⊙ (w2a @ w2b)`, scale alpha / rank), full differences (`diff` on a
/// weight, `diff_b` on its bias) and LoCon's Tucker core are baked exactly; a LoHa with half a
/// Tucker pair is refused by key.
#[test]
fn loha_and_full_differences_are_exact() {
    let base = ModelTree::new();
    let sd = Layout::sd15(Scale::Sample);
    let a = base.checkpoint("a.safetensors", &sd, 140);
    let f16 = DType::F16;
    let q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";
    let k = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k";
    let conv = "lora_unet_down_blocks_0_resnets_0_conv1";
    let mid = "lora_unet_down_blocks_1_resnets_0_conv1";
    let mut specs = loha_specs(q, f16, 16, (4, 2), 16);
    specs.extend(loha_specs(k, f16, 16, (2, 2), 16));
    specs.extend([
        spec(&format!("{q}.alpha"), DType::F32, &[]),
        spec(&format!("{k}.hada_t1"), f16, &[2, 2]),
        spec(&format!("{conv}.diff"), f16, &[16, 16, 3, 3]),
        spec(&format!("{mid}.lora_up.weight"), f16, &[32, 4, 1, 1]),
        spec(&format!("{mid}.lora_down.weight"), f16, &[4, 16, 1, 1]),
        spec(&format!("{mid}.lora_mid.weight"), f16, &[4, 4, 3, 3]),
        spec(&format!("{conv}.diff_b"), f16, &[16]),
    ]);
    let strength = 0.7;
    let alpha = (format!("{q}.alpha"), 2.0f32);
    let (path, files, warnings) = bake_model_only_lora(&base, "loha", &specs, 141, alpha, strength);
    let out = base.read(&files[0].path);
    let (ta, tl) = (base.read(&a), base.read(&path));
    let f = |n: &str| f32s(&tl[n]);
    // LoHa on to_q.
    let delta = loha_delta(f, q, 16, (4, 2), 16);
    let key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight";
    let mut w = f32s(&ta[key]);
    patch(&mut w, 1.0, strength * (2.0 / 4.0), Some(&delta));
    assert!(out[key].bytes == to_bytes(&w, "F16"), "LoHa differs");
    // diff and diff_b on the conv and its bias.
    for (suffix, key) in [
        (
            ".diff",
            "model.diffusion_model.input_blocks.1.0.in_layers.2.weight",
        ),
        (
            ".diff_b",
            "model.diffusion_model.input_blocks.1.0.in_layers.2.bias",
        ),
    ] {
        let mut w = f32s(&ta[key]);
        patch(&mut w, 1.0, strength, Some(&f(&format!("{conv}{suffix}"))));
        assert!(out[key].bytes == to_bytes(&w, "F16"), "{suffix} differs");
    }
    // LoCon with a Tucker core on a 3×3 conv: down' [a, i, x] = Σ_b down[b, i] · mid[a, b, x]
    // (sequential in f32), then up @ down'; no alpha, so scale 1.
    let (rank, out_channels, channels, khw) = (4, 32, 16, 9);
    let (down, midw) = (
        f(&format!("{mid}.lora_down.weight")),
        f(&format!("{mid}.lora_mid.weight")),
    );
    let tucker = tucker_core(&midw, &down, rank, channels, khw);
    let delta = seq_matmul(
        &f(&format!("{mid}.lora_up.weight")),
        &tucker,
        out_channels,
        rank,
        channels * khw,
    );
    let key = "model.diffusion_model.input_blocks.4.0.in_layers.2.weight";
    assert_eq!(ta[key].shape, [out_channels, channels, 3, 3]);
    let mut w = f32s(&ta[key]);
    patch(&mut w, 1.0, strength, Some(&delta));
    assert!(
        out[key].bytes == to_bytes(&w, "F16"),
        "LoCon with lora_mid differs"
    );
    // A LoHa with only one of its two Tucker cores is refused, and its key left as it was.
    let tk = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_k.weight";
    assert_eq!(out[tk].bytes, ta[tk].bytes);
    assert!(
        warnings
            .iter()
            .any(|w| w.message.contains("ERROR lora") && w.message.contains("attn1_to_k")),
        "{warnings:?}"
    );
}

/// The reference DoRA of one weight, computed here independently from ComfyUI's
/// `weight_decompose`: `wc = w + f32(alpha) · delta`; per channel (rows when `dora_scale.shape[0]`
/// is the row count, else input channels) a norm — of `w` for rows, of `wc` for input channels —
/// taken as the correctly rounded f32 of the exact value (f64 sums), plus f32 ε; `wc` times
/// `f32(dora_scale[c]) / norm`; at strength ≠ 1, `w + strength · (wc' − w)`.
fn dora_reference(
    w: &[f32],
    delta: &[f32],
    alpha: f64,
    dora_scale: &[f32],
    shape: &[usize],
    output_axis: bool,
    strength: f64,
) -> Vec<f32> {
    let (out, inner) = (shape[0], shape[1..].iter().product::<usize>());
    let khw = inner / shape[1];
    let alpha = alpha as f32;
    let wc: Vec<f32> = w
        .iter()
        .zip(delta)
        .map(|(&w, &d)| {
            let p = alpha * d;
            w + p
        })
        .collect();
    let channel = |e: usize| {
        if output_axis {
            e / inner
        } else {
            (e % inner) / khw
        }
    };
    let channels = if output_axis { out } else { shape[1] };
    let mut sums = vec![0.0f64; channels];
    let normed = if output_axis { w } else { &wc[..] };
    for (e, &v) in normed.iter().enumerate() {
        sums[channel(e)] += f64::from(v) * f64::from(v);
    }
    let factor: Vec<f32> = sums
        .iter()
        .enumerate()
        .map(|(c, s)| {
            let ds = if dora_scale.len() == 1 {
                dora_scale[0]
            } else {
                dora_scale[c]
            };
            ds / (s.sqrt() as f32 + f32::EPSILON)
        })
        .collect();
    (0..w.len())
        .map(|e| {
            let v = wc[e] * factor[channel(e)];
            if strength == 1.0 {
                v
            } else {
                let change = strength as f32 * (v - w[e]);
                w[e] + change
            }
        })
        .collect()
}

/// DoRA (`dora_scale`) on LoRA and LoHa deltas, along the output axis (linear and conv) and the
/// input axis (a conv whose row and channel counts differ, and a linear layer), after a merge at
/// strength 0.7 and alone at strength 1, matches an independent reference bit for bit; a
/// `dora_scale` that fits no axis is refused by key and leaves the weight as it was.
#[test]
fn dora_decomposes_as_comfyui_after_a_merge_and_alone() {
    let base = ModelTree::new();
    let sd = Layout::sd15(Scale::Sample);
    let a = base.checkpoint("a.safetensors", &sd, 170);
    let b = base.checkpoint("b.safetensors", &sd, 171);
    let (f16, bf16) = (DType::F16, DType::BF16);
    let v = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_v";
    let q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";
    let k = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k";
    let conv_in = "lora_unet_down_blocks_1_resnets_0_conv1";
    let conv_out = "lora_unet_down_blocks_0_resnets_0_conv1";
    let mut specs = loha_specs(q, f16, 16, (2, 2), 16);
    specs.extend([
        spec(&format!("{v}.lora_up.weight"), f16, &[16, 4]),
        spec(&format!("{v}.lora_down.weight"), f16, &[4, 16]),
        spec(&format!("{v}.dora_scale"), f16, &[16, 1]),
        spec(&format!("{q}.dora_scale"), bf16, &[1, 16]),
        spec(&format!("{k}.lora_up.weight"), f16, &[16, 2]),
        spec(&format!("{k}.lora_down.weight"), f16, &[2, 16]),
        spec(&format!("{k}.dora_scale"), f16, &[3]),
        spec(&format!("{conv_in}.lora_up.weight"), f16, &[32, 4, 1, 1]),
        spec(&format!("{conv_in}.lora_down.weight"), f16, &[4, 16, 3, 3]),
        spec(&format!("{conv_in}.dora_scale"), DType::F32, &[1, 16, 1, 1]),
        spec(&format!("{conv_in}.alpha"), DType::F32, &[]),
        spec(&format!("{conv_out}.lora_up.weight"), f16, &[16, 4, 1, 1]),
        spec(&format!("{conv_out}.lora_down.weight"), f16, &[4, 16, 3, 3]),
        spec(&format!("{conv_out}.dora_scale"), f16, &[16, 1, 1, 1]),
    ]);
    let loras = base.models("loras");
    let path = loras.join("dora.safetensors");
    let alpha = 3.0f32;
    write_safetensors(
        &path,
        &specs,
        172,
        &HashMap::from([(format!("{conv_in}.alpha"), alpha.to_le_bytes().to_vec())]),
        &[],
    );
    let tl = base.read(&path);
    let f = |n: &str| f32s(&tl[n]);
    let (ta, tb) = (base.read(&a), base.read(&b));
    let ratio = 0.4;
    for (merged, strength) in [(true, 0.7), (false, 1.0)] {
        let prefix = if merged { "dora_merged" } else { "dora_alone" };
        let model = if merged { "5" } else { "1" };
        let prompt = json!({
            "1": loader("a.safetensors"),
            "4": loader("b.safetensors"),
            "5": {"class_type": "ModelMergeSimple", "inputs": {"model1": ["1", 0], "model2": ["4", 0], "ratio": ratio}},
            "2": {"class_type": "LoraLoaderModelOnly", "inputs": {"lora_name": "dora.safetensors", "strength_model": strength, "model": [model, 0]}},
            "3": {"class_type": "ModelSave", "inputs": {"filename_prefix": prefix, "model": ["2", 0]}},
        });
        let (files, warnings, _) =
            run_api(&base, &prompt, Precision::Keep, &mut RunCache::default());
        let out = base.read(&files[0].path);
        // The running weight the LoRA patches: a's, or the merge's (w1·ratio + (1−ratio)·w2).
        let weight = |key: &str| {
            let mut w = f32s(&ta[key]);
            if merged {
                patch(&mut w, ratio, 1.0 - ratio, Some(&f32s(&tb[key])));
            }
            w
        };
        let check = |key: &str, delta: &[f32], alpha: f64, ds: &str, output_axis: bool| {
            let shape = &ta[key].shape;
            let expected = dora_reference(
                &weight(key),
                delta,
                alpha,
                &f(ds),
                shape,
                output_axis,
                strength,
            );
            assert!(
                out[key].bytes == to_bytes(&expected, "F16"),
                "{prefix}: DoRA on {key} differs"
            );
            assert_ne!(out[key].bytes, ta[key].bytes, "{key} was patched");
        };
        let mm = |base: &str, rows, rank, cols| {
            seq_matmul(
                &f(&format!("{base}.lora_up.weight")),
                &f(&format!("{base}.lora_down.weight")),
                rows,
                rank,
                cols,
            )
        };
        let attn = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1";
        check(
            &format!("{attn}.to_v.weight"),
            &mm(v, 16, 4, 16),
            1.0,
            &format!("{v}.dora_scale"),
            true,
        );
        let loha = loha_delta(f, q, 16, (2, 2), 16);
        check(
            &format!("{attn}.to_q.weight"),
            &loha,
            1.0,
            &format!("{q}.dora_scale"),
            false,
        );
        let conv_in_key = "model.diffusion_model.input_blocks.4.0.in_layers.2.weight";
        assert_eq!(ta[conv_in_key].shape, [32, 16, 3, 3]);
        check(
            conv_in_key,
            &mm(conv_in, 32, 4, 16 * 9),
            f64::from(alpha) / 4.0,
            &format!("{conv_in}.dora_scale"),
            false,
        );
        check(
            "model.diffusion_model.input_blocks.1.0.in_layers.2.weight",
            &mm(conv_out, 16, 4, 16 * 9),
            1.0,
            &format!("{conv_out}.dora_scale"),
            true,
        );
        // A dora_scale of three values fits neither axis of a 16×16 weight: refused by key.
        let to_k = format!("{attn}.to_k.weight");
        let expected = weight(&to_k);
        assert!(
            out[&to_k].bytes == to_bytes(&expected, "F16"),
            "{prefix}: the refused key keeps the running weight"
        );
        assert!(
            warnings.iter().any(|w| w.message.contains("ERROR lora")
                && w.message.contains("to_k")
                && w.message.contains("dora_scale [3]")),
            "{warnings:?}"
        );
        assert!(
            !warnings.iter().any(|w| w.message.contains("not loaded")),
            "every DoRA tensor is used: {warnings:?}"
        );
    }
}

/// DoRA on weights larger than a chunk: the norms are summed over every chunk and the channel of
/// each element is found across chunk and tile boundaries, for a row axis and the input-channel
/// axis of a 3×3 conv.
#[test]
fn dora_norms_span_chunks() {
    let base = ModelTree::new();
    let dir = base.models("checkpoints");
    let (rows, cols) = (1100, 1000); // 1.1 Mi elements
    let (co, ci) = (700, 500); // 3.15 Mi elements
    let linear = "model.diffusion_model.input_blocks.1.1.proj_in.weight";
    let conv = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight";
    write_safetensors(
        &dir.join("a.safetensors"),
        &[
            spec(
                "model.diffusion_model.input_blocks.0.0.weight",
                DType::F16,
                &[16, 4, 3, 3],
            ),
            spec(linear, DType::BF16, &[rows, cols]),
            spec(conv, DType::F16, &[co, ci, 3, 3]),
        ],
        180,
        &HashMap::new(),
        &[],
    );
    let l = "lora_unet_input_blocks_1_1_proj_in";
    let c = "lora_unet_input_blocks_1_0_in_layers_2";
    let f16 = DType::F16;
    let specs = vec![
        spec(&format!("{l}.lora_up.weight"), f16, &[rows, 4]),
        spec(&format!("{l}.lora_down.weight"), f16, &[4, cols]),
        spec(&format!("{l}.dora_scale"), f16, &[rows, 1]),
        spec(&format!("{l}.alpha"), DType::F32, &[]),
        spec(&format!("{c}.lora_up.weight"), f16, &[co, 4, 1, 1]),
        spec(&format!("{c}.lora_down.weight"), f16, &[4, ci, 3, 3]),
        spec(&format!("{c}.dora_scale"), f16, &[1, ci, 1, 1]),
    ];
    let strength = 0.8;
    let (path, files, warnings) = bake_model_only_lora(
        &base,
        "bigdora",
        &specs,
        181,
        (format!("{l}.alpha"), 2.0),
        strength,
    );
    assert!(
        !warnings.iter().any(|w| w.message.contains("ERROR")),
        "{warnings:?}"
    );
    let out = base.read(&files[0].path);
    let (ta, tl) = (base.read(&dir.join("a.safetensors")), base.read(&path));
    let f = |n: &str| f32s(&tl[n]);
    for (key, lora, (o, inner), alpha, output_axis, dtype) in [
        (linear, l, (rows, cols), 2.0 / 4.0, true, "BF16"),
        (conv, c, (co, ci * 9), 1.0, false, "F16"),
    ] {
        let delta = seq_matmul(
            &f(&format!("{lora}.lora_up.weight")),
            &f(&format!("{lora}.lora_down.weight")),
            o,
            4,
            inner,
        );
        let expected = dora_reference(
            &f32s(&ta[key]),
            &delta,
            alpha,
            &f(&format!("{lora}.dora_scale")),
            &ta[key].shape,
            output_axis,
            strength,
        );
        assert!(
            out[key].bytes == to_bytes(&expected, dtype),
            "DoRA on {key} differs"
        );
    }
}

/// kron of w1 `[p, q]` and w2 `[r, s, hw]` into `[p·r, q·s, hw]`, by nested loops.
fn kron_ref(
    w1: &[f32],
    (p, q): (usize, usize),
    w2: &[f32],
    (r, s, hw): (usize, usize, usize),
) -> Vec<f32> {
    let mut o = vec![0.0f32; p * q * r * s * hw];
    for i1 in 0..p {
        for j1 in 0..q {
            for i2 in 0..r {
                for j2 in 0..s {
                    for x in 0..hw {
                        o[((i1 * r + i2) * (q * s) + (j1 * s + j2)) * hw + x] =
                            w1[i1 * q + j1] * w2[(i2 * s + j2) * hw + x];
                    }
                }
            }
        }
    }
    o
}

/// The first contraction of a Tucker product, `Σ_j t[i, j, x] · b[j, r]` as `[rank, cols, hw]`
/// for `t: [rank, rank, hw]` and `b: [rank, cols]`, each sum sequential in f32 (LoCon's
/// `lora_mid` with its down factor, and the first step of a Tucker LoHa's or LoKr's einsum).
fn tucker_core(t: &[f32], b: &[f32], rank: usize, cols: usize, hw: usize) -> Vec<f32> {
    let mut core = vec![0.0f32; rank * cols * hw];
    for i in 0..rank {
        for r in 0..cols {
            for x in 0..hw {
                let mut acc = 0.0f32;
                for j in 0..rank {
                    acc += t[(i * rank + j) * hw + x] * b[j * cols + r];
                }
                core[(i * cols + r) * hw + x] = acc;
            }
        }
    }
    core
}

/// `einsum("i j x, j r, i p -> p r x", t, b, a)` for `t: [rank, rank, hw]`, `b: [rank, cols]`,
/// `a: [rank, rows]`, contracted as torch does without opt_einsum — left to right, `j` first,
/// then `i` — each sum sequential in f32.
fn tucker_einsum(
    t: &[f32],
    b: &[f32],
    a: &[f32],
    rank: usize,
    rows: usize,
    cols: usize,
    hw: usize,
) -> Vec<f32> {
    let core = tucker_core(t, b, rank, cols, hw);
    let mut o = vec![0.0f32; rows * cols * hw];
    for p in 0..rows {
        for rx in 0..cols * hw {
            let mut acc = 0.0f32;
            for i in 0..rank {
                acc += core[i * cols * hw + rx] * a[i * rows + p];
            }
            o[p * cols * hw + rx] = acc;
        }
    }
    o
}

/// Tucker (CP) LoHa and LoKr on 3×3 convs — `hada_t1`/`hada_t2` and `lokr_t2` cores with their up
/// factors stored `[rank, out]` — bake as ComfyUI's einsums, contracted left to right.
#[test]
fn tucker_loha_and_lokr_are_exact() {
    let base = ModelTree::new();
    let sd = Layout::sd15(Scale::Sample);
    let a = base.checkpoint("a.safetensors", &sd, 190);
    let f16 = DType::F16;
    let loha = "lora_unet_down_blocks_1_resnets_0_conv1";
    let lokr = "lora_unet_down_blocks_0_resnets_0_conv1";
    // f32 factors and ranks of 5–6, so that the order of the sums shows in the bits.
    let f32t = DType::F32;
    let specs = vec![
        spec(&format!("{loha}.hada_w1_a"), f32t, &[6, 32]),
        spec(&format!("{loha}.hada_w1_b"), f32t, &[6, 16]),
        spec(&format!("{loha}.hada_t1"), f32t, &[6, 6, 3, 3]),
        spec(&format!("{loha}.hada_w2_a"), f16, &[5, 32]),
        spec(&format!("{loha}.hada_w2_b"), f32t, &[5, 16]),
        spec(&format!("{loha}.hada_t2"), f32t, &[5, 5, 3, 3]),
        spec(&format!("{loha}.alpha"), DType::F32, &[]),
        spec(&format!("{lokr}.lokr_w1"), f16, &[4, 4]),
        spec(&format!("{lokr}.lokr_w2_a"), f32t, &[5, 4]),
        spec(&format!("{lokr}.lokr_w2_b"), f32t, &[5, 4]),
        spec(&format!("{lokr}.lokr_t2"), f32t, &[5, 5, 3, 3]),
    ];
    let strength = 0.6;
    let alpha = (format!("{loha}.alpha"), 1.5f32);
    // Written as f32, so that the last bits of the delta show.
    let (path, files, warnings) = bake_model_only_lora_at(
        &base,
        "tucker",
        &specs,
        191,
        alpha,
        strength,
        Precision::Fp32,
    );
    assert!(
        !warnings
            .iter()
            .any(|w| w.message.contains("not loaded") || w.message.contains("not applied")),
        "{warnings:?}"
    );
    let out = base.read(&files[0].path);
    let (ta, tl) = (base.read(&a), base.read(&path));
    let f = |n: &str| f32s(&tl[n]);
    // Each Tucker product from its core, down and up factor names under `base`.
    let m = |base: &str, [t, b, a]: [&str; 3], rank, rows, cols| {
        let g = |s: &str| f(&format!("{base}.{s}"));
        tucker_einsum(&g(t), &g(b), &g(a), rank, rows, cols, 9)
    };
    let m1 = m(loha, ["hada_t1", "hada_w1_b", "hada_w1_a"], 6, 32, 16);
    let m2 = m(loha, ["hada_t2", "hada_w2_b", "hada_w2_a"], 5, 32, 16);
    let loha_delta: Vec<f32> = m1.iter().zip(&m2).map(|(x, y)| x * y).collect();
    let w2 = m(lokr, ["lokr_t2", "lokr_w2_b", "lokr_w2_a"], 5, 4, 4);
    let lokr_delta = kron_ref(&f(&format!("{lokr}.lokr_w1")), (4, 4), &w2, (4, 4, 9));
    for (key, delta, scale) in [
        (
            "model.diffusion_model.input_blocks.4.0.in_layers.2.weight",
            loha_delta,
            1.5 / 6.0,
        ),
        // No alpha on the LoKr: scale 1.
        (
            "model.diffusion_model.input_blocks.1.0.in_layers.2.weight",
            lokr_delta,
            1.0,
        ),
    ] {
        let mut w = f32s(&ta[key]);
        patch(&mut w, 1.0, strength * scale, Some(&delta));
        assert!(out[key].bytes == to_bytes(&w, "F32"), "{key} differs");
    }
}

/// LoKr deltas `kron(w1, w2)` — whole or factored factors, 2-D and 3×3-conv weights, scale
/// alpha / factored rank — are baked exactly.
#[test]
fn lokr_is_exact() {
    let base = ModelTree::new();
    let sd = Layout::sd15(Scale::Sample);
    let a = base.checkpoint("a.safetensors", &sd, 150);
    let f16 = DType::F16;
    let v = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_v";
    let conv = "lora_unet_down_blocks_0_resnets_0_conv1";
    let specs = vec![
        spec(&format!("{v}.lokr_w1"), f16, &[4, 2]),
        spec(&format!("{v}.lokr_w2_a"), f16, &[4, 2]),
        spec(&format!("{v}.lokr_w2_b"), f16, &[2, 8]),
        spec(&format!("{v}.alpha"), DType::F32, &[]),
        spec(&format!("{conv}.lokr_w1_a"), f16, &[4, 1]),
        spec(&format!("{conv}.lokr_w1_b"), f16, &[1, 4]),
        spec(&format!("{conv}.lokr_w2"), f16, &[4, 4, 3, 3]),
    ];
    let strength = 0.9;
    let alpha = (format!("{v}.alpha"), 4.0f32);
    let (path, files, warnings) = bake_model_only_lora(&base, "lokr", &specs, 151, alpha, strength);
    assert!(
        !warnings
            .iter()
            .any(|w| w.message.contains("not loaded") || w.message.contains("not applied")),
        "{warnings:?}"
    );
    let out = base.read(&files[0].path);
    let (ta, tl) = (base.read(&a), base.read(&path));
    let f = |n: &str| f32s(&tl[n]);
    let kron = kron_ref;
    let cases = [
        (
            "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_v.weight",
            kron(
                &f(&format!("{v}.lokr_w1")),
                (4, 2),
                &seq_matmul(
                    &f(&format!("{v}.lokr_w2_a")),
                    &f(&format!("{v}.lokr_w2_b")),
                    4,
                    2,
                    8,
                ),
                (4, 8, 1),
            ),
            4.0 / 2.0,
        ),
        (
            "model.diffusion_model.input_blocks.1.0.in_layers.2.weight",
            kron(
                &seq_matmul(
                    &f(&format!("{conv}.lokr_w1_a")),
                    &f(&format!("{conv}.lokr_w1_b")),
                    4,
                    1,
                    4,
                ),
                (4, 4),
                &f(&format!("{conv}.lokr_w2")),
                (4, 4, 9),
            ),
            1.0,
        ),
    ];
    for (key, delta, scale) in cases {
        let mut w = f32s(&ta[key]);
        patch(&mut w, 1.0, strength * scale, Some(&delta));
        assert!(out[key].bytes == to_bytes(&w, "F16"), "{key} differs");
    }
}

/// Writes `specs` (seeded) as `models/loras/<name>.safetensors` with one f32 alpha tensor, bakes it
/// into `a.safetensors` through LoraLoaderModelOnly at `strength`, and saves with prefix `<name>`.
fn bake_model_only_lora(
    base: &ModelTree,
    name: &str,
    specs: &[TensorSpec],
    seed: u64,
    alpha: (String, f32),
    strength: f64,
) -> (PathBuf, Vec<SavedFile>, Vec<Warning>) {
    bake_model_only_lora_at(base, name, specs, seed, alpha, strength, Precision::Keep)
}

/// [`bake_model_only_lora`] with an output precision.
fn bake_model_only_lora_at(
    base: &ModelTree,
    name: &str,
    specs: &[TensorSpec],
    seed: u64,
    (alpha_key, alpha): (String, f32),
    strength: f64,
    precision: Precision,
) -> (PathBuf, Vec<SavedFile>, Vec<Warning>) {
    let loras = base.models("loras");
    let path = loras.join(format!("{name}.safetensors"));
    write_safetensors(
        &path,
        specs,
        seed,
        &HashMap::from([(alpha_key, alpha.to_le_bytes().to_vec())]),
        &[],
    );
    let file = format!("{name}.safetensors");
    let prompt = json!({
        "1": loader("a.safetensors"),
        "2": {"class_type": "LoraLoaderModelOnly", "inputs": {"lora_name": file, "strength_model": strength, "model": ["1", 0]}},
        "3": {"class_type": "ModelSave", "inputs": {"filename_prefix": name, "model": ["2", 0]}},
    });
    let (files, warnings, _) = run_api(base, &prompt, precision, &mut RunCache::default());
    (path, files, warnings)
}

/// (LoRA name, up/down suffixes, rank, patched key, first row, rows, halves swapped)
type PartCase<'a> = (
    &'a str,
    (&'a str, &'a str),
    usize,
    &'a str,
    usize,
    usize,
    bool,
);

const KOHYA: (&str, &str) = (".lora_up.weight", ".lora_down.weight");
const PEFT: (&str, &str) = (".lora_B.weight", ".lora_A.weight");

/// Writes a checkpoint of `weights` (plus `extra` tensors, for detection) detected as `arch`, and
/// a LoRA with one `[rows, rank] @ [rank, inner]` pair per case (the first with alpha 1, a DoRA
/// `dora_scale` on `dora`'s rows, and a pair under the name `unknown`); bakes it at strength 0.8
/// and checks every weight against the reference: each case adds `f32(0.8 · scale) · delta` to its
/// rows only (the delta's halves exchanged when swapped), and only `unknown` is reported.
fn check_part_loras(
    arch: &str,
    weights: &[(&str, Vec<usize>)],
    extra: &[(&str, Vec<usize>)],
    cases: &[PartCase],
    dora: Option<&str>,
    unknown: &str,
) -> (
    ModelTree,
    HashMap<String, RefTensor>,
    HashMap<String, RefTensor>,
) {
    let base = ModelTree::new();
    let ck = base.models("checkpoints");
    let f16 = DType::F16;
    let p = "model.diffusion_model.";
    let specs: Vec<TensorSpec> = weights
        .iter()
        .chain(extra)
        .map(|(k, shape)| spec(&format!("{p}{k}"), f16, shape))
        .collect();
    let a = ck.join("a.safetensors");
    write_safetensors(&a, &specs, 160, &HashMap::new(), &[]);
    assert_eq!(inspect_json(&a)["architecture"], arch);
    let inner_of = |key: &str| {
        let (_, shape) = weights.iter().find(|(k, _)| *k == key).expect("case key");
        shape[1..].iter().product::<usize>()
    };
    let mut lora_specs = Vec::new();
    for (name, (up, down), rank, key, _, rows, _) in cases {
        lora_specs.push(spec(&format!("{name}{up}"), f16, &[*rows, *rank]));
        lora_specs.push(spec(&format!("{name}{down}"), f16, &[*rank, inner_of(key)]));
    }
    if let Some(d) = dora {
        let rows = cases.iter().find(|c| c.0 == d).expect("dora case").5;
        lora_specs.push(spec(&format!("{d}.dora_scale"), f16, &[rows, 1]));
    }
    lora_specs.push(spec(&format!("{unknown}.lora_A.weight"), f16, &[2, 8]));
    lora_specs.push(spec(&format!("{unknown}.lora_B.weight"), f16, &[8, 2]));
    lora_specs.push(spec(&format!("{}.alpha", cases[0].0), DType::F32, &[]));
    let strength = 0.8;
    let alpha = (format!("{}.alpha", cases[0].0), 1.0f32);
    let (path, files, warnings) =
        bake_model_only_lora(&base, "parts", &lora_specs, 161, alpha, strength);
    let out = base.read(&files[0].path);
    let (ta, tl) = (base.read(&a), base.read(&path));
    let f = |n: &str| f32s(&tl[n]);
    let mut expected: HashMap<&str, Vec<f32>> = weights
        .iter()
        .map(|(k, _)| (*k, f32s(&ta[&format!("{p}{k}")])))
        .collect();
    for (name, (up, down), rank, key, start, rows, swapped) in cases {
        let inner = inner_of(key);
        let delta = seq_matmul(
            &f(&format!("{name}{up}")),
            &f(&format!("{name}{down}")),
            *rows,
            *rank,
            inner,
        );
        // The delta's rows in the weight's order: swapped halves put the second half first.
        let delta: Vec<f32> = if *swapped {
            let half = rows / 2 * inner;
            delta[half..]
                .iter()
                .chain(&delta[..half])
                .copied()
                .collect()
        } else {
            delta
        };
        let scale = if *name == cases[0].0 {
            1.0 / *rank as f64
        } else {
            1.0
        };
        let w = expected.get_mut(key).expect("weight");
        let part = &mut w[start * inner..(start + rows) * inner];
        if Some(*name) == dora {
            let shape = [*rows, inner];
            let ds = f(&format!("{name}.dora_scale"));
            let decomposed = dora_reference(part, &delta, scale, &ds, &shape, true, strength);
            part.copy_from_slice(&decomposed);
        } else {
            patch(part, 1.0, strength * scale, Some(&delta));
        }
    }
    for (key, w) in &expected {
        let out_key = out
            .keys()
            .find(|k| k.ends_with(key))
            .unwrap_or_else(|| panic!("{key} not saved"));
        assert!(out[out_key].bytes == to_bytes(w, "F16"), "{key} differs");
    }
    let not_loaded: Vec<&Warning> = warnings
        .iter()
        .filter(|w| w.message.contains("lora key not loaded"))
        .collect();
    assert_eq!(not_loaded.len(), 1, "{warnings:?}");
    assert!(not_loaded[0].message.contains("2 of"), "{warnings:?}");
    assert!(not_loaded[0].message.contains(unknown), "{warnings:?}");
    (base, ta, out)
}

/// Flux LoRAs bake exactly in every naming ComfyUI maps: kohya on the checkpoint's own keys
/// (`lora_unet_double_blocks_0_img_attn_qkv`), and diffusers names under `transformer.`,
/// `lora_transformer_` or none, including the parts of fused weights — `to_q`/`to_k`/`to_v`
/// and `proj_mlp` as row blocks of `qkv` and `linear1` (rows outside a block keep their bytes),
/// `linear1_qkv`, the final modulation with its halves swapped, and a DoRA on a row block.
/// A name for a block the model does not have is reported.
#[test]
fn flux_loras_bake_in_kohya_and_diffusers_names() {
    let h = 8; // hidden size of this tiny Flux
    let weights: Vec<(&str, Vec<usize>)> = vec![
        ("img_in.weight", vec![h, 16]),
        ("double_blocks.0.img_attn.qkv.weight", vec![3 * h, h]),
        ("double_blocks.0.txt_attn.qkv.weight", vec![3 * h, h]),
        ("double_blocks.0.img_attn.proj.weight", vec![h, h]),
        ("single_blocks.0.linear1.weight", vec![7 * h, h]),
        ("single_blocks.1.linear1.weight", vec![7 * h, h]),
        ("single_blocks.2.linear1.weight", vec![7 * h, h]),
        ("final_layer.adaLN_modulation.1.weight", vec![2 * h, h]),
    ];
    let extra = [("double_blocks.0.img_attn.norm.key_norm.scale", vec![h])];
    let cases: Vec<PartCase> = vec![
        (
            "lora_unet_double_blocks_0_img_attn_qkv",
            KOHYA,
            2,
            "double_blocks.0.img_attn.qkv.weight",
            0,
            3 * h,
            false,
        ),
        (
            "transformer.transformer_blocks.0.attn.add_k_proj",
            PEFT,
            2,
            "double_blocks.0.txt_attn.qkv.weight",
            h,
            h,
            false,
        ),
        (
            "transformer.transformer_blocks.0.attn.to_out.0",
            PEFT,
            3,
            "double_blocks.0.img_attn.proj.weight",
            0,
            h,
            false,
        ),
        (
            "transformer.single_transformer_blocks.0.attn.to_q",
            PEFT,
            2,
            "single_blocks.0.linear1.weight",
            0,
            h,
            false,
        ),
        (
            "transformer.single_transformer_blocks.0.attn.to_v",
            PEFT,
            2,
            "single_blocks.0.linear1.weight",
            2 * h,
            h,
            false,
        ),
        (
            "transformer.single_transformer_blocks.0.proj_mlp",
            PEFT,
            4,
            "single_blocks.0.linear1.weight",
            3 * h,
            4 * h,
            false,
        ),
        (
            "lora_transformer_single_transformer_blocks_1_attn_to_k",
            KOHYA,
            2,
            "single_blocks.1.linear1.weight",
            h,
            h,
            false,
        ),
        (
            "diffusion_model.single_blocks.2.linear1_qkv",
            KOHYA,
            2,
            "single_blocks.2.linear1.weight",
            0,
            3 * h,
            false,
        ),
        (
            "norm_out.linear",
            PEFT,
            2,
            "final_layer.adaLN_modulation.1.weight",
            0,
            2 * h,
            true,
        ),
    ];
    let (_base, ta, out) = check_part_loras(
        "flux",
        &weights,
        &extra,
        &cases,
        Some("lora_transformer_single_transformer_blocks_1_attn_to_k"),
        "transformer.transformer_blocks.5.attn.to_q",
    );
    // The rows no LoRA names keep their stored bytes: to_k of single block 0 (rows h..2h).
    let key = "single_blocks.0.linear1.weight";
    let l0 = out.keys().find(|k| k.ends_with(key)).expect("linear1");
    let stored = &ta[&format!("model.diffusion_model.{key}")];
    assert_eq!(
        out[l0].bytes[h * h * 2..2 * h * h * 2],
        stored.bytes[h * h * 2..2 * h * h * 2]
    );
}

/// SD3 LoRAs in diffusers form, under `transformer.`, `base_model.model.`, `lora_transformer_`
/// and `lycoris_`: q/k/v of the image and context streams as row blocks of each joint block's
/// fused qkv, whole projections, and the final and last-block context modulations with their
/// halves swapped, as ComfyUI's `mmdit_to_diffusers` maps them.
#[test]
fn sd3_loras_bake_in_diffusers_names() {
    let h = 64; // SD3's width is 64 × depth; one block here
    let weights: Vec<(&str, Vec<usize>)> = vec![
        ("joint_blocks.0.x_block.attn.qkv.weight", vec![3 * h, h]),
        (
            "joint_blocks.0.context_block.attn.qkv.weight",
            vec![3 * h, h],
        ),
        ("joint_blocks.0.x_block.attn.proj.weight", vec![h, h]),
        (
            "joint_blocks.0.context_block.adaLN_modulation.1.weight",
            vec![2 * h, h],
        ),
        ("final_layer.adaLN_modulation.1.weight", vec![2 * h, h]),
    ];
    let extra = [("x_embedder.proj.weight", vec![h, 16, 2, 2])];
    let cases: Vec<PartCase> = vec![
        (
            "transformer.transformer_blocks.0.attn.to_v",
            PEFT,
            2,
            "joint_blocks.0.x_block.attn.qkv.weight",
            2 * h,
            h,
            false,
        ),
        (
            "base_model.model.transformer_blocks.0.attn.add_q_proj",
            PEFT,
            2,
            "joint_blocks.0.context_block.attn.qkv.weight",
            0,
            h,
            false,
        ),
        (
            "lora_transformer_transformer_blocks_0_attn_to_out_0",
            KOHYA,
            3,
            "joint_blocks.0.x_block.attn.proj.weight",
            0,
            h,
            false,
        ),
        (
            "lycoris_transformer_blocks_0_norm1_context_linear",
            KOHYA,
            2,
            "joint_blocks.0.context_block.adaLN_modulation.1.weight",
            0,
            2 * h,
            true,
        ),
        (
            "transformer.norm_out.linear",
            PEFT,
            2,
            "final_layer.adaLN_modulation.1.weight",
            0,
            2 * h,
            true,
        ),
    ];
    check_part_loras(
        "sd3",
        &weights,
        &extra,
        &cases,
        None,
        "transformer.single_transformer_blocks.0.attn.to_q",
    );
}
