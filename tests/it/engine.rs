//! The merge engine end to end: real checkpoints in, real files out, every tensor compared bit
//! for bit with a reference computed here from ComfyUI's formulas (reference §1.2, §9): merges,
//! block merges, precision, caching, cancel, progress, chunking, prediction markers, NaN reports.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use amalgam::engine::cache::RunCache;
use amalgam::engine::worker::{Job, run_job};
use amalgam::engine::{Event, Precision, SavedFile, Warning, run_blocking};
use amalgam::format::DType;
use amalgam::format::pyjson;
use amalgam::graph::Prompt;
use amalgam::model::layouts::{Layout, Scale};
use serde_json::{Value, json};

use crate::util::*;

#[test]
fn simple_merge_of_model_and_clip_matches_the_formula_bit_for_bit() {
    let base = ModelTree::new();
    let a = base.checkpoint("a.safetensors", &Layout::sd15(Scale::Sample), 11);
    let b = base.checkpoint("b.safetensors", &Layout::sd15(Scale::Sample), 12);
    let r = 0.3;
    let prompt = json!({
        "1": loader("a.safetensors"),
        "2": loader("b.safetensors"),
        "3": {"class_type": "ModelMergeSimple", "inputs": {"ratio": r, "model1": ["1", 0], "model2": ["2", 0]}},
        "4": {"class_type": "CLIPMergeSimple", "inputs": {"ratio": r, "clip1": ["1", 1], "clip2": ["2", 1]}},
        "5": save(("3", 0), ("4", 0), ("1", 2), "checkpoints/ComfyUI"),
    });
    let (files, warnings, validated) =
        run_api(&base, &prompt, Precision::Keep, &mut RunCache::default());
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(files.len(), 1);
    assert_eq!(
        files[0].path,
        base.path()
            .join("output/checkpoints/ComfyUI_00001_.safetensors")
    );
    let (out, meta) = read_reference(&files[0].path);
    let (ta, tb) = (base.read(&a), base.read(&b));

    assert_eq!(
        out.len(),
        686 + 196 + 248,
        "SD1 save layout: position_ids dropped"
    );
    let mut checked = 0;
    for (name, t) in &ta {
        if name.ends_with("position_ids") {
            assert!(!out.contains_key(name), "{name} must be dropped");
            continue;
        }
        let got = out.get(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(
            (got.dtype.as_str(), &got.shape),
            (t.dtype.as_str(), &t.shape),
            "{name}"
        );
        let expected = if name.starts_with("first_stage_model.") {
            t.bytes.clone()
        } else {
            // w = f32(w1); w = w * f32(ratio); w = w + f32(1 - ratio) * f32(w2); round once.
            let mut w = f32s(t);
            patch(&mut w, r, 1.0 - r, Some(&f32s(&tb[name])));
            to_bytes(&w, &t.dtype)
        };
        assert!(got.bytes == expected, "{name} differs from the reference");
        checked += 1;
    }
    assert_eq!(checked, out.len());
    // Metadata exactly as ComfyUI writes it for an SD1 merge from an API prompt.
    let mut keys: Vec<&str> = meta.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["modelspec.predict_key", "prompt"]);
    assert_eq!(meta["modelspec.predict_key"], "epsilon");
    assert_eq!(meta["prompt"], pyjson::dumps(&validated.to_json()));
    assert!(
        meta["prompt"].contains("\"ratio\": 0.3, \"model1\": [\"1\", 0]"),
        "{}",
        meta["prompt"]
    );
}

#[test]
fn subtract_add_and_blocks_merges_follow_comfyui() {
    let base = ModelTree::new();
    let layout = Layout::sd15(Scale::Sample);
    let paths: Vec<PathBuf> = (0..3)
        .map(|i| base.checkpoint(&format!("m{i}.safetensors"), &layout, 20 + i))
        .collect();
    let t: Vec<HashMap<String, RefTensor>> = paths.iter().map(|p| base.read(p)).collect();
    let m = 0.7;
    let blocks = [("input", 0.25), ("middle", 0.5), ("out", 0.75)];
    let prompt = json!({
        "1": loader("m0.safetensors"), "2": loader("m1.safetensors"), "3": loader("m2.safetensors"),
        "4": {"class_type": "ModelMergeSubtract", "inputs": {"multiplier": m, "model1": ["1", 0], "model2": ["2", 0]}},
        "5": {"class_type": "ModelMergeAdd", "inputs": {"model1": ["4", 0], "model2": ["3", 0]}},
        "6": {"class_type": "ModelMergeBlocks", "inputs": {"input": 0.25, "middle": 0.5, "out": 0.75, "model1": ["5", 0], "model2": ["2", 0]}},
        "7": {"class_type": "CLIPMergeSubtract", "inputs": {"multiplier": m, "clip1": ["1", 1], "clip2": ["2", 1]}},
        "8": {"class_type": "CLIPMergeAdd", "inputs": {"clip1": ["7", 0], "clip2": ["3", 1]}},
        "9": save(("6", 0), ("8", 0), ("3", 2), "merges/chain"),
    });
    let (files, _, _) = run_api(&base, &prompt, Precision::Keep, &mut RunCache::default());
    let out = base.read(&files[0].path);
    for (name, got) in &out {
        let f = |i: usize| f32s(&t[i][name]);
        let expected = if let Some(key) = name.strip_prefix("model.diffusion_model.") {
            // ((m0 - m1)·m + m2) then a blocks merge with m1: one f32 chain, one rounding.
            let mut w = f(0);
            patch(&mut w, m, -m, Some(&f(1)));
            patch(&mut w, 1.0, 1.0, Some(&f(2)));
            let r = blocks
                .iter()
                .filter(|(p, _)| key.starts_with(p))
                .max_by_key(|(p, _)| p.len())
                .map_or(blocks[0].1, |b| b.1);
            patch(&mut w, r, 1.0 - r, Some(&f(1)));
            to_bytes(&w, &got.dtype)
        } else if name.starts_with("cond_stage_model.") {
            let mut w = f(0);
            patch(&mut w, m, -m, Some(&f(1)));
            patch(&mut w, 1.0, 1.0, Some(&f(2)));
            to_bytes(&w, &got.dtype)
        } else {
            t[2][name].bytes.clone()
        };
        assert!(got.bytes == expected, "{name}");
    }
    // `out` also matches `output_blocks.*`; `time_embed` takes the first ratio (input), not 1.0.
    let time = "model.diffusion_model.time_embed.0.weight";
    assert_ne!(out[time].bytes, t[0][time].bytes);
}

/// A model-specific block merge of two checkpoints keeping model1 (ratio 1.0) everywhere but
/// `block`, which takes model2 (ratio 0.0), saved with `prefix`.
fn one_block_from_model2(class_type: &str, block: &str, a: &str, b: &str, prefix: &str) -> Value {
    let mut inputs = serde_json::Map::new();
    for n in amalgam::nodes::block_prefixes(class_type).expect("block node") {
        let ratio = if n == block { 0.0 } else { 1.0 };
        inputs.insert(n, json!(ratio));
    }
    inputs.insert("model1".into(), json!(["1", 0]));
    inputs.insert("model2".into(), json!(["2", 0]));
    json!({
        "1": loader(a), "2": loader(b),
        "3": {"class_type": class_type, "inputs": inputs},
        "4": save(("3", 0), ("1", 1), ("1", 2), prefix),
    })
}

/// Writes two `layout` checkpoints (seeds `seed`, `seed + 1`), runs [`one_block_from_model2`]
/// on them saving with `prefix`, and returns the saved file and the two inputs' paths.
fn run_one_block(
    base: &ModelTree,
    class_type: &str,
    block: &str,
    layout: &Layout,
    seed: u64,
    prefix: &str,
) -> (PathBuf, PathBuf, PathBuf) {
    let names = [
        format!("{class_type}-a.safetensors"),
        format!("{class_type}-b.safetensors"),
    ];
    let a = base.checkpoint(&names[0], layout, seed);
    let b = base.checkpoint(&names[1], layout, seed + 1);
    let prompt = one_block_from_model2(class_type, block, &names[0], &names[1], prefix);
    let (files, _, _) = run_api(base, &prompt, Precision::Keep, &mut RunCache::default());
    (files[0].path.clone(), a, b)
}

#[test]
fn model_specific_block_nodes_respect_trailing_dots() {
    let base = ModelTree::new();
    // ModelMergeSD1: every ratio 1.0 (keep model1) except input_blocks.1. = 0.0 (take model2).
    let sd = Layout::sd15(Scale::Sample);
    let (saved, a, b) = run_one_block(
        &base,
        "ModelMergeSD1",
        "input_blocks.1.",
        &sd,
        1,
        "checkpoints/sd1blocks",
    );
    let (out, ta, tb) = (base.read(&saved), base.read(&a), base.read(&b));
    let k1 = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight";
    let k10 = "model.diffusion_model.input_blocks.10.0.in_layers.2.weight";
    // ratio 0: w1·0 + 1·w2 = w2 exactly.
    assert_eq!(out[k1].bytes, tb[k1].bytes, "input_blocks.1. takes model2");
    assert_eq!(
        out[k10].bytes, ta[k10].bytes,
        "input_blocks.10. must not match input_blocks.1."
    );

    // SDXL names have no trailing dot; ModelMergeSDXL on SDXL samples.
    let xl = Layout::sdxl(Scale::Sample);
    let (saved, _, xb) = run_one_block(
        &base,
        "ModelMergeSDXL",
        "output_blocks.2",
        &xl,
        3,
        "checkpoints/xl",
    );
    let (out, meta) = read_reference(&saved);
    let txb = base.read(&xb);
    let k = "model.diffusion_model.output_blocks.2.1.transformer_blocks.0.attn1.to_q.weight";
    assert_eq!(out[k].bytes, txb[k].bytes);
    // SDXL save: modelspec set with the title, clip_l position_ids re-created as int64 arange(77).
    assert_eq!(
        meta["modelspec.architecture"],
        "stable-diffusion-xl-v1-base"
    );
    assert_eq!(meta["modelspec.sai_model_spec"], "1.0.0");
    assert_eq!(meta["modelspec.implementation"], "sgm");
    assert_eq!(meta["modelspec.title"], "xl 1");
    let pos = &out["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"];
    assert_eq!(
        (pos.dtype.as_str(), pos.shape.as_slice()),
        ("I64", &[1usize, 77][..])
    );
    let ids: Vec<i64> = pos
        .bytes
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8")))
        .collect();
    assert_eq!(ids, (0..77).collect::<Vec<i64>>());
    assert_eq!(out.len(), 1680 + 587 + 248);
}

#[test]
fn clip_merges_skip_position_ids_and_logit_scale() {
    let base = ModelTree::new();
    let xl = Layout::sdxl(Scale::Sample);
    let a = base.checkpoint("a.safetensors", &xl, 5);
    let b = base.checkpoint("b.safetensors", &xl, 6);
    let prompt = json!({
        "1": loader("a.safetensors"), "2": loader("b.safetensors"),
        "3": {"class_type": "CLIPMergeSimple", "inputs": {"ratio": 0.5, "clip1": ["1", 1], "clip2": ["2", 1]}},
        "4": {"class_type": "CLIPSave", "inputs": {"filename_prefix": "clip/ComfyUI", "clip": ["3", 0]}},
        "5": save(("1", 0), ("3", 0), ("1", 2), "checkpoints/ComfyUI"),
    });
    let (files, warnings, _) = run_api(&base, &prompt, Precision::Keep, &mut RunCache::default());
    let (ta, tb) = (base.read(&a), base.read(&b));
    let ckpt = files.iter().find(|f| f.node == "5").expect("checkpoint");
    let out = base.read(&ckpt.path);
    let logit = "conditioner.embedders.1.model.logit_scale";
    assert_eq!(out[logit].bytes, ta[logit].bytes, "logit_scale is clip1's");
    let w = "conditioner.embedders.1.model.ln_final.weight";
    let mut expect = f32s(&ta[w]);
    patch(&mut expect, 0.5, 0.5, Some(&f32s(&tb[w])));
    assert_eq!(out[w].bytes, to_bytes(&expect, "F16"));
    // The MODEL is untouched (no MODEL merge): byte copies of model1.
    let u = "model.diffusion_model.out.2.weight";
    assert_eq!(out[u].bytes, ta[u].bytes);

    // CLIPSave: one file per encoder, ComfyUI's names; the OpenCLIP layout is flagged.
    let clip_files: Vec<&SavedFile> = files.iter().filter(|f| f.node == "4").collect();
    let names: Vec<String> = clip_files
        .iter()
        .map(|f| {
            f.path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        names,
        [
            "ComfyUI_clip_l_00001_.safetensors",
            "ComfyUI_clip_g_00001_.safetensors"
        ]
    );
    let (l, meta) = read_reference(&clip_files[0].path);
    assert!(l.contains_key("text_model.final_layer_norm.weight"));
    assert!(!l.keys().any(|k| k.ends_with("position_ids")));
    assert_eq!(meta["format"], "pt");
    assert!(warnings.iter().any(|w| w.message.contains("OpenCLIP")));
}

#[test]
fn inpaint_add_difference_keeps_the_nine_channel_conv_and_reports_it() {
    let base = ModelTree::new();
    let sd = Layout::sd15(Scale::Sample);
    let mut inpaint = sd.clone();
    inpaint.unet.in_channels = 9;
    let ip = base.checkpoint("sd-v1-5-inpainting.ckpt", &inpaint, 30);
    base.checkpoint("v1-5-pruned-emaonly.ckpt", &sd, 31);
    let other = base.checkpoint("other.safetensors", &sd, 32);
    let conv = "model.diffusion_model.input_blocks.0.0.weight";
    for multiplier in [1.0, 0.5] {
        let prompt = json!({
            "1": loader("sd-v1-5-inpainting.ckpt"), "2": loader("v1-5-pruned-emaonly.ckpt"), "3": loader("other.safetensors"),
            "4": {"class_type": "ModelMergeSubtract", "inputs": {"multiplier": multiplier, "model1": ["1", 0], "model2": ["2", 0]}},
            "5": {"class_type": "ModelMergeAdd", "inputs": {"model1": ["4", 0], "model2": ["3", 0]}},
            "6": save(("5", 0), ("3", 1), ("1", 2), "checkpoints/inpaint"),
        });
        let (files, warnings, _) =
            run_api(&base, &prompt, Precision::Keep, &mut RunCache::default());
        let out = base.read(&files.last().expect("file").path);
        let tip = base.read(&ip);
        assert_eq!(out[conv].shape, vec![16, 9, 3, 3]);
        // Subtract: mismatch, but w1 was already scaled by the multiplier. Add: mismatch again.
        let mut w = f32s(&tip[conv]);
        patch(&mut w, multiplier, 0.0, None);
        assert_eq!(
            out[conv].bytes,
            to_bytes(&w, "F16"),
            "multiplier {multiplier}"
        );
        if multiplier == 1.0 {
            assert_eq!(
                out[conv].bytes, tip[conv].bytes,
                "multiplier 1 leaves the inpaint conv unchanged"
            );
        }
        let mismatches: Vec<&Warning> = warnings
            .iter()
            .filter(|w| w.message.contains("SHAPE MISMATCH"))
            .collect();
        assert_eq!(mismatches.len(), 2, "{warnings:?}");
        assert!(
            mismatches
                .iter()
                .all(|w| w.key.as_deref() == Some("input_blocks.0.0.weight"))
        );
        // Every other key is the plain add-difference.
        let to = base.read(&other);
        let k = "model.diffusion_model.out.2.weight";
        let mut e = f32s(&tip[k]);
        let t2 = base.read(
            &base
                .path()
                .join("models/checkpoints/v1-5-pruned-emaonly.ckpt"),
        );
        patch(&mut e, multiplier, -multiplier, Some(&f32s(&t2[k])));
        patch(&mut e, 1.0, 1.0, Some(&f32s(&to[k])));
        assert_eq!(out[k].bytes, to_bytes(&e, "F16"));
    }
}

#[test]
fn vae_loader_model_save_and_vae_save() {
    let base = ModelTree::new();
    let sd = Layout::sd15(Scale::Sample);
    let a = base.checkpoint("a.safetensors", &sd, 40);
    // A standalone VAE as released (bare keys, plus training leftovers ComfyUI ignores), in fp32.
    let mut specs = Vec::new();
    amalgam::model::layouts::vae(&mut specs, "", 8, DType::F32);
    specs.push(spec("loss.logvar", DType::F32, &[]));
    let vae_dir = base.models("vae");
    let vae_path = vae_dir.join("kl-f8-anime2.safetensors");
    write_safetensors(&vae_path, &specs, 41, &HashMap::new(), &[]);
    let prompt = json!({
        "1": loader("a.safetensors"),
        "2": {"class_type": "VAELoader", "inputs": {"vae_name": "kl-f8-anime2.safetensors"}},
        "3": save(("1", 0), ("1", 1), ("2", 0), "checkpoints/withvae"),
        "4": {"class_type": "ModelSave", "inputs": {"filename_prefix": "diffusion_models/ComfyUI", "model": ["1", 0]}},
        "5": {"class_type": "VAESave", "inputs": {"filename_prefix": "vae/ComfyUI_vae", "vae": ["2", 0]}},
    });
    let (files, _, _) = run_api(&base, &prompt, Precision::Keep, &mut RunCache::default());
    let rel: Vec<String> = files
        .iter()
        .map(|f| {
            f.path
                .strip_prefix(base.path())
                .expect("inside")
                .display()
                .to_string()
        })
        .collect();
    assert_eq!(
        rel,
        [
            "output/checkpoints/withvae_00001_.safetensors",
            "output/diffusion_models/ComfyUI_00001_.safetensors",
            "output/vae/ComfyUI_vae_00001_.safetensors",
        ]
    );
    let tv = base.read(&vae_path);
    let ck = base.read(&files[0].path);
    assert_eq!(
        ck.keys()
            .filter(|k| k.starts_with("first_stage_model."))
            .count(),
        248
    );
    assert!(!ck.keys().any(|k| k.contains("loss")));
    let k = "decoder.conv_out.weight";
    assert_eq!(
        ck[&format!("first_stage_model.{k}")].bytes,
        tv[k].bytes,
        "standalone VAE, as stored (fp32)"
    );
    let (model_only, meta) = read_reference(&files[1].path);
    assert_eq!(model_only.len(), 686);
    assert!(
        model_only
            .keys()
            .all(|k| k.starts_with("model.diffusion_model."))
    );
    assert_eq!(meta["modelspec.predict_key"], "epsilon");
    let (vae_only, meta) = read_reference(&files[2].path);
    assert_eq!(vae_only.len(), 248);
    assert_eq!(vae_only[k].bytes, tv[k].bytes);
    assert!(!meta.contains_key("modelspec.predict_key"));
    assert!(!meta.contains_key("format"));
    let ta = base.read(&a);
    let u = "model.diffusion_model.middle_block.1.proj_in.weight";
    assert_eq!(model_only[u].bytes, ta[u].bytes);
}

#[test]
fn precision_settings_round_inputs_then_output_once() {
    let base = ModelTree::new();
    // fp32 inputs show the difference between rounding inputs first (ComfyUI's load dtype) and not.
    let mut sd = Layout::sd15(Scale::Sample);
    sd.dtype = DType::F32;
    let a = base.checkpoint("a.safetensors", &sd, 50);
    let b = base.checkpoint("b.safetensors", &sd, 51);
    let (ta, tb) = (base.read(&a), base.read(&b));
    let prompt = json!({
        "1": loader("a.safetensors"), "2": loader("b.safetensors"),
        "3": {"class_type": "ModelMergeSimple", "inputs": {"ratio": 0.4, "model1": ["1", 0], "model2": ["2", 0]}},
        "4": save(("3", 0), ("1", 1), ("1", 2), "checkpoints/p"),
    });
    let k = "model.diffusion_model.input_blocks.4.1.proj_in.weight";
    let vk = "first_stage_model.decoder.conv_in.weight";
    for (precision, dtype) in [
        (Precision::Keep, "F32"),
        (Precision::Fp32, "F32"),
        (Precision::Fp16, "F16"),
        (Precision::Bf16, "BF16"),
    ] {
        let (files, _, _) = run_api(&base, &prompt, precision, &mut RunCache::default());
        let out = base.read(&files[0].path);
        let round = |v: Vec<f32>| -> Vec<f32> {
            match dtype {
                "F16" => v.iter().map(|x| half::f16::from_f32(*x).to_f32()).collect(),
                "BF16" => v
                    .iter()
                    .map(|x| half::bf16::from_f32(*x).to_f32())
                    .collect(),
                _ => v,
            }
        };
        let mut w = round(f32s(&ta[k]));
        patch(&mut w, 0.4, 1.0 - 0.4, Some(&round(f32s(&tb[k]))));
        assert_eq!(out[k].dtype, dtype, "{precision:?}");
        assert_eq!(out[k].bytes, to_bytes(&w, dtype), "{precision:?}");
        // Unmerged float tensors (the VAE) follow the precision too; integers never change.
        assert_eq!(out[vk].dtype, dtype, "{precision:?}");
        assert_eq!(
            out[vk].bytes,
            to_bytes(&f32s(&ta[vk]), dtype),
            "{precision:?}"
        );
    }
}

#[test]
fn requeue_is_cached_until_something_changes() {
    let base = ModelTree::new();
    let sd = Layout::sd15(Scale::Sample);
    let a = base.checkpoint("a.safetensors", &sd, 60);
    base.checkpoint("b.safetensors", &sd, 61);
    let prompt = |r: f64| {
        json!({
            "1": loader("a.safetensors"), "2": loader("b.safetensors"),
            "3": {"class_type": "ModelMergeSimple", "inputs": {"ratio": r, "model1": ["1", 0], "model2": ["2", 0]}},
            "4": save(("3", 0), ("1", 1), ("1", 2), "checkpoints/ComfyUI"),
        })
    };
    let mut cache = RunCache::default();
    let out_dir = base.path().join("output/checkpoints");
    let count = || std::fs::read_dir(&out_dir).map_or(0, Iterator::count);
    let (f1, _, _) = run_api(&base, &prompt(0.5), Precision::Keep, &mut cache);
    assert!(!f1[0].cached);
    let (f2, _, _) = run_api(&base, &prompt(0.5), Precision::Keep, &mut cache);
    assert!(f2[0].cached, "identical re-queue is cached");
    assert_eq!(f2[0].path, f1[0].path);
    assert_eq!(count(), 1, "no duplicate file");
    // Another precision, another ratio: new files.
    let (f3, _, _) = run_api(&base, &prompt(0.5), Precision::Fp32, &mut cache);
    assert!(!f3[0].cached);
    let (f4, _, _) = run_api(&base, &prompt(0.25), Precision::Keep, &mut cache);
    assert!(!f4[0].cached);
    assert_eq!(count(), 3);
    // The earlier output deleted: written again.
    std::fs::remove_file(&f1[0].path).expect("rm");
    let (f5, _, _) = run_api(&base, &prompt(0.5), Precision::Keep, &mut cache);
    assert!(!f5[0].cached);
    assert!(f5[0].path.is_file());
    // An input replaced under the same name: runs again.
    let (f6, _, _) = run_api(&base, &prompt(0.5), Precision::Keep, &mut cache);
    assert!(f6[0].cached);
    std::fs::remove_file(&a).expect("rm");
    write_layout(
        &a,
        &sd,
        99,
        &[spec("model.diffusion_model.extra", DType::F16, &[1])],
    );
    let (f7, _, _) = run_api(&base, &prompt(0.5), Precision::Keep, &mut cache);
    assert!(!f7[0].cached);
}

#[test]
fn cancel_leaves_no_file_and_no_temp() {
    let base = ModelTree::new();
    let xl = Layout::sdxl(Scale::Sample);
    base.checkpoint("a.safetensors", &xl, 70);
    base.checkpoint("b.safetensors", &xl, 71);
    let prompt = Prompt::from_json(&json!({
        "1": loader("a.safetensors"), "2": loader("b.safetensors"),
        "3": {"class_type": "ModelMergeSimple", "inputs": {"ratio": 0.5, "model1": ["1", 0], "model2": ["2", 0]}},
        "4": save(("3", 0), ("1", 1), ("1", 2), "checkpoints/ComfyUI"),
    }))
    .expect("prompt");
    let job = unvalidated_job(&base, prompt, "4");
    let cancel = AtomicBool::new(false);
    let mut events = Vec::new();
    run_job(&job, &cancel, &mut RunCache::default(), &mut |e| {
        // Cancel as soon as the merge is under way.
        if let Event::Progress(p) = &e
            && p.tensors_done == 10
        {
            cancel.store(true, Ordering::Relaxed);
        }
        events.push(e);
    });
    assert!(
        matches!(events.last(), Some(Event::Cancelled)),
        "{:?}",
        events.last()
    );
    assert!(matches!(events.first(), Some(Event::Started { .. })));
    let out = base.path().join("output/checkpoints");
    let left: Vec<_> = std::fs::read_dir(&out)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn progress_is_reported_per_tensor_in_header_order() {
    let base = ModelTree::new();
    let sd = Layout::sd15(Scale::Sample);
    base.checkpoint("a.safetensors", &sd, 80);
    let prompt = Prompt::from_json(
        &json!({"1": loader("a.safetensors"), "2": save(("1", 0), ("1", 1), ("1", 2), "x")}),
    )
    .expect("p");
    let job = unvalidated_job(&base, prompt, "2");
    let mut progress = Vec::new();
    let mut kinds = Vec::new();
    run_job(
        &job,
        &AtomicBool::new(false),
        &mut RunCache::default(),
        &mut |e| {
            kinds.push(std::mem::discriminant(&e));
            if let Event::Progress(p) = e {
                progress.push(p);
            }
        },
    );
    assert_eq!(progress.len(), 1130);
    assert!(
        progress
            .windows(2)
            .all(|w| w[0].tensors_done + 1 == w[1].tensors_done
                && w[0].bytes_done <= w[1].bytes_done)
    );
    let last = progress.last().expect("progress");
    assert_eq!(
        (last.tensors_done, last.bytes_done),
        (last.tensors_total, last.bytes_total)
    );
    // The header order is safetensors' (dtype descending, then name).
    let (out, _) = read_reference(&base.path().join("output/x_00001_.safetensors"));
    assert_eq!(out.len(), 1130);
    let names: Vec<&str> = progress.iter().map(|p| p.current_key.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted, "all F16, so plain name order");
}

#[test]
fn missing_models_and_hostile_prefixes_fail_with_clear_errors_and_no_file() {
    let base = ModelTree::new();
    base.checkpoint("a.safetensors", &Layout::sd15(Scale::Sample), 90);
    for (prefix, expect) in [
        ("../outside", "outside the output folder"),
        ("/tmp/abs", "outside the output folder"),
    ] {
        let prompt = Prompt::from_json(
            &json!({"1": loader("a.safetensors"), "2": save(("1", 0), ("1", 1), ("1", 2), prefix)}),
        )
        .expect("p");
        let msg = run_unvalidated(&base, prompt).expect("must fail");
        assert!(msg.contains(expect) && msg.contains("node #2"), "{msg}");
    }
    assert!(!base.path().join("outside_00001_.safetensors").exists());
    // A loader whose file vanished between validation and the run.
    let prompt = Prompt::from_json(
        &json!({"1": loader("gone.safetensors"), "2": save(("1", 0), ("1", 1), ("1", 2), "x")}),
    )
    .expect("p");
    assert_eq!(
        run_unvalidated(&base, prompt).as_deref(),
        Some(
            "node #1 (CheckpointLoaderSimple): Model in folder 'checkpoints' with filename 'gone.safetensors' not found."
        )
    );
}

/// A job running output `node` of `prompt` as it is (no validation), with the tree's folders.
fn unvalidated_job(base: &ModelTree, prompt: Prompt, node: &str) -> Job {
    Job {
        prompt,
        outputs: vec![node.into()],
        workflow: None,
        folders: base.folders(),
        precision: Precision::Keep,
        first_image_only: false,
        metadata: Default::default(),
    }
}

/// Runs `prompt` (output node "2") without validation, as a job whose inputs changed after it was
/// validated; returns the failure message, if the run failed.
fn run_unvalidated(base: &ModelTree, prompt: Prompt) -> Option<String> {
    let job = unvalidated_job(base, prompt, "2");
    let report = run_blocking(
        &job,
        &AtomicBool::new(false),
        &mut RunCache::default(),
        &mut |_| {},
    );
    report.into_result().err().map(|e| e.to_string())
}

#[test]
fn shared_basic_png_runs_end_to_end_through_the_cli() {
    let base = ModelTree::new();
    // Models wide enough for the image half to run on them.
    let sd = Layout::sd15(Scale::Small);
    let ck = base.models("checkpoints");
    write_ckpt(&ck.join("v1-5-pruned-emaonly.ckpt"), &sd.tensors(), 100);
    let cardos = base.checkpoint("cardosAnime_v10.safetensors", &sd, 101);
    let vae_dir = base.models("vae");
    let mut vae_specs = Vec::new();
    amalgam::model::layouts::vae(&mut vae_specs, "", 32, DType::F32);
    write_ckpt(&vae_dir.join("kl-f8-anime2.ckpt"), &vae_specs, 102);

    let png =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/workflows/model_merging_basic.png");
    let mut doc = amalgam::graph::load::load_file(&png).expect("png").document;
    doc.node_mut(14).expect("save").mode = amalgam::graph::Mode::Always;
    shrink_image_half(&mut doc, 2);
    let wf = base.path().join("basic-unmuted.json");
    let j = run_json(base.path(), "run", "basic-unmuted.json", &doc.to_json());
    let path = PathBuf::from(j["outputs"][0]["path"].as_str().expect("path"));
    assert_eq!(
        path,
        base.path()
            .join("output/checkpoints/ComfyUI_00001_.safetensors")
    );
    assert_eq!(j["outputs"][0]["node"], "14");
    assert_eq!(
        j["outputs"][0]["bytes"],
        std::fs::metadata(&path).expect("meta").len()
    );

    let (got, meta) = read_reference(&path);
    let v15 =
        amalgam::format::TensorFile::open(&ck.join("v1-5-pruned-emaonly.ckpt")).expect("ckpt");
    let tc = base.read(&cardos);
    let vae = amalgam::format::TensorFile::open(&vae_dir.join("kl-f8-anime2.ckpt")).expect("vae");
    let r = 0.49999999999999956;
    for (name, t) in &got {
        let expected = if name.starts_with("model.diffusion_model.") {
            let rec = v15.get(name).expect("in v1-5");
            let mut w: Vec<f32> = v15.read_f32(rec).expect("f16");
            patch(&mut w, r, 1.0 - r, Some(&f32s(&tc[name])));
            to_bytes(&w, "F16")
        } else if let Some(k) = name.strip_prefix("first_stage_model.") {
            // CheckpointSave's VAE is the standalone one (fp32, as stored).
            vae.bytes(vae.get(k).expect("vae key")).to_vec()
        } else {
            // CLIP comes straight from loader 4 (v1-5), unmerged.
            v15.bytes(v15.get(name).expect("clip key")).to_vec()
        };
        assert!(t.bytes == expected, "{name}");
    }
    // Every tensor of the layout but CLIP-L's position_ids, which ComfyUI's save drops for SD1.
    assert_eq!(got.len(), sd.tensors().len() - 1);
    // The file carries the workflow (unmuted) and the prompt; it re-opens as a workflow.
    let embedded: Value = serde_json::from_str(&meta["workflow"]).expect("workflow json");
    assert_eq!(embedded, doc.to_json());
    assert!(
        meta["prompt"].contains("\"ratio\": 0.49999999999999956"),
        "{}",
        meta["prompt"]
    );
    let reopened = amalgam::graph::load::load_file(&path).expect("reopen");
    assert_eq!(reopened.document.nodes.len(), 11);

    // The image half ran too: SaveImage (#9) wrote the batch of 4 as ComfyUI names them, each
    // with the prompt and the workflow, and each PNG re-opens as the workflow.
    let images: Vec<&Value> = j["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .filter(|o| o["node"] == "9")
        .collect();
    assert_eq!(images.len(), 4, "{j}");
    for (i, o) in images.iter().enumerate() {
        let p = PathBuf::from(o["path"].as_str().expect("path"));
        assert_eq!(
            p,
            base.path()
                .join(format!("output/ComfyUI_{:05}_.png", i + 1))
        );
        let (w, h, texts) = png_info(&p);
        assert_eq!((w, h), (64, 64));
        let keys: Vec<&str> = texts.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["prompt", "workflow"]);
        let workflow: Value = serde_json::from_str(&texts[1].1).expect("workflow json");
        assert_eq!(workflow, doc.to_json());
        let from_png = amalgam::graph::load::load_file(&p).expect("png reopens");
        assert_eq!(from_png.document.to_json(), doc.to_json());
    }

    // Running it again in a new process writes the next file (the cache lives in one process).
    let again = run(&["--base-dir", path_str(base.path()), "run", path_str(&wf)]);
    assert!(again.status.success());
    let listed = stdout(&again);
    let lines: Vec<String> = listed.lines().map(str::to_owned).collect();
    let shown = |rel: &str| base.path().join(rel).display().to_string();
    assert_eq!(
        lines.first(),
        Some(&shown("output/checkpoints/ComfyUI_00002_.safetensors"))
    );
    assert_eq!(
        lines.get(1),
        Some(&shown("output/ComfyUI_00005_.png")),
        "{listed}"
    );
}

/// The benchmark's quick mode runs every scenario end to end and prints its table; figures are
/// not checked (a benchmark, not a timed test).
#[test]
fn bench_quick_runs_every_scenario() {
    let dir = tempdir();
    let out = run(&[
        "bench",
        "--quick",
        "--runs",
        "1",
        "--dir",
        path_str(dir.path()),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    for row in [
        "SD1.5 simple merge |",
        "1 thread",
        "fp32 output",
        "4-model chain",
        "add difference",
    ] {
        assert!(table.contains(row), "{row} missing from:\n{table}");
    }
    assert!(
        table.contains("QUICK"),
        "quick runs say they are not measurements"
    );
    assert_eq!(
        table.lines().filter(|l| l.starts_with("| SD1.5")).count(),
        5
    );
    // Nothing is left behind but the generated inputs (reused by the next run).
    let left: Vec<_> = std::fs::read_dir(dir.path().join("output/bench"))
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(left.is_empty());
    assert!(!dir.path().join("limit.safetensors").exists());
}

/// Tensors larger than one evaluation chunk (and not a multiple of the tile size) are computed
/// exactly across every chunk and tile boundary, through a nested chain.
#[test]
fn large_tensors_span_chunks_and_tiles_exactly() {
    let base = ModelTree::new();
    let dir = base.models("checkpoints");
    let n = 2_500_003; // > 2 chunks of 1 Mi elements, not a multiple of 4096
    let specs = |dtype| {
        vec![
            spec(
                "model.diffusion_model.input_blocks.0.0.weight",
                DType::F16,
                &[16, 4, 3, 3],
            ),
            spec("model.diffusion_model.big.weight", dtype, &[n]),
        ]
    };
    for (name, seed) in [
        ("a.safetensors", 1),
        ("b.safetensors", 2),
        ("c.safetensors", 3),
    ] {
        write_safetensors(
            &dir.join(name),
            &specs(DType::F16),
            seed,
            &HashMap::new(),
            &[],
        );
    }
    write_safetensors(
        &dir.join("d32.safetensors"),
        &specs(DType::F32),
        4,
        &HashMap::new(),
        &[],
    );
    let prompt = json!({
        "1": loader("a.safetensors"), "2": loader("b.safetensors"), "3": loader("c.safetensors"), "4": loader("d32.safetensors"),
        "5": {"class_type": "ModelMergeSubtract", "inputs": {"multiplier": 0.9, "model1": ["2", 0], "model2": ["3", 0]}},
        "6": {"class_type": "ModelMergeSimple", "inputs": {"ratio": 0.35, "model1": ["1", 0], "model2": ["5", 0]}},
        "7": {"class_type": "ModelMergeAdd", "inputs": {"model1": ["6", 0], "model2": ["4", 0]}},
        "8": {"class_type": "ModelSave", "inputs": {"filename_prefix": "big", "model": ["7", 0]}},
    });
    let (files, _, _) = run_api(&base, &prompt, Precision::Keep, &mut RunCache::default());
    let out = base.read(&files[0].path);
    let t: Vec<HashMap<String, RefTensor>> = ["a", "b", "c", "d32"]
        .iter()
        .map(|n| base.read(&dir.join(format!("{n}.safetensors"))))
        .collect();
    let k = "model.diffusion_model.big.weight";
    let f = |i: usize| f32s(&t[i][k]);
    // model2 of the Simple merge is itself (b - c)·0.9, evaluated in f32 before it is added.
    let mut sub = f(1);
    patch(&mut sub, 0.9, -0.9, Some(&f(2)));
    let mut w = f(0);
    patch(&mut w, 0.35, 1.0 - 0.35, Some(&sub));
    patch(&mut w, 1.0, 1.0, Some(&f(3)));
    assert_eq!(out[k].bytes.len(), n * 2);
    assert!(
        out[k].bytes == to_bytes(&w, "F16"),
        "differs from the reference"
    );
}

/// ComfyUI's CosXL example graph: Subtract → Add → ModelMergeSDXL → ModelSamplingContinuousEDM
/// → CheckpointSave writes the EDM markers (and, as ComfyUI, no predict_key for an EDM base);
/// `amalgam inspect` then reports EDM v-prediction. ModelSamplingDiscrete decides `ztsnr`.
#[test]
fn sampling_nodes_write_comfyuis_prediction_markers() {
    let base = ModelTree::new();
    let xl = Layout::sdxl(Scale::Sample);
    let dir = base.models("checkpoints");
    let scalar = |n: &str| spec(n, DType::F32, &[]);
    write_layout(
        &dir.join("cosxl.safetensors"),
        &xl,
        130,
        &[scalar("edm_vpred.sigma_max"), scalar("edm_vpred.sigma_min")],
    );
    base.checkpoint("sd_xl_base_1.0.safetensors", &xl, 131);
    base.checkpoint("albedobaseXL_v21.safetensors", &xl, 132);
    let mut sdxl_inputs = serde_json::Map::new();
    for n in amalgam::nodes::block_prefixes("ModelMergeSDXL").expect("sdxl") {
        let r = if [
            "output_blocks.0",
            "output_blocks.1",
            "output_blocks.2",
            "output_blocks.3",
            "output_blocks.4",
        ]
        .contains(&n.as_str())
        {
            0.5
        } else {
            1.0
        };
        sdxl_inputs.insert(n, json!(r));
    }
    sdxl_inputs.insert("model1".into(), json!(["5", 0]));
    sdxl_inputs.insert("model2".into(), json!(["3", 0]));
    let prompt = json!({
        "1": loader("cosxl.safetensors"), "2": loader("sd_xl_base_1.0.safetensors"), "3": loader("albedobaseXL_v21.safetensors"),
        "4": {"class_type": "ModelMergeSubtract", "inputs": {"multiplier": 1.0, "model1": ["1", 0], "model2": ["2", 0]}},
        "5": {"class_type": "ModelMergeAdd", "inputs": {"model1": ["4", 0], "model2": ["3", 0]}},
        "6": {"class_type": "ModelMergeSDXL", "inputs": sdxl_inputs},
        "7": {"class_type": "ModelSamplingContinuousEDM", "inputs": {"sampling": "v_prediction", "sigma_max": 120.0, "sigma_min": 0.002, "model": ["6", 0]}},
        "8": {"class_type": "CLIPMergeSubtract", "inputs": {"multiplier": 1.0, "clip1": ["1", 1], "clip2": ["2", 1]}},
        "9": {"class_type": "CLIPMergeAdd", "inputs": {"clip1": ["8", 0], "clip2": ["3", 1]}},
        "10": save(("7", 0), ("9", 0), ("1", 2), "checkpoints/cosxl_merge"),
    });
    let (files, _, _) = run_api(&base, &prompt, Precision::Keep, &mut RunCache::default());
    let (out, meta) = read_reference(&files[0].path);
    let value = |k: &str| f32::from_le_bytes(out[k].bytes[..4].try_into().expect("4 bytes"));
    assert_eq!(out["edm_vpred.sigma_max"].shape, Vec::<usize>::new());
    assert_eq!(value("edm_vpred.sigma_max"), (120f64.ln() as f32).exp());
    assert_eq!(value("edm_vpred.sigma_min"), (0.002f64.ln() as f32).exp());
    assert!((value("edm_vpred.sigma_max") - 120.0).abs() < 1e-4);
    assert!(
        !out.contains_key("v_pred") && !meta.contains_key("modelspec.predict_key"),
        "an EDM base has no predict_key"
    );
    assert_eq!(
        meta["modelspec.architecture"],
        "stable-diffusion-xl-v1-base"
    );
    let j = inspect_json(&files[0].path);
    assert_eq!(
        (j["architecture"].as_str(), j["prediction"].as_str()),
        (Some("sdxl"), Some("edm_v"))
    );

    // A v-prediction base through ModelSamplingDiscrete(zsnr): v_pred + ztsnr, predict_key "v".
    write_layout(
        &dir.join("vpred.safetensors"),
        &xl,
        133,
        &[spec("v_pred", DType::F32, &[0])],
    );
    for (zsnr, file) in [(true, "z"), (false, "noz")] {
        let prompt = json!({
            "1": loader("vpred.safetensors"),
            "2": {"class_type": "ModelSamplingDiscrete", "inputs": {"sampling": "v_prediction", "zsnr": zsnr, "model": ["1", 0]}},
            "3": save(("2", 0), ("1", 1), ("1", 2), &format!("checkpoints/{file}")),
        });
        let (files, _, _) = run_api(&base, &prompt, Precision::Keep, &mut RunCache::default());
        let (out, meta) = read_reference(&files[0].path);
        assert_eq!(meta["modelspec.predict_key"], "v");
        assert!(out.contains_key("v_pred"));
        assert_eq!(out.contains_key("ztsnr"), zsnr, "zsnr {zsnr}");
        let j = inspect_json(&files[0].path);
        assert_eq!(
            (j["prediction"].as_str(), j["zsnr"].as_bool()),
            (Some("v"), Some(zsnr))
        );
    }
}

#[test]
fn nan_and_infinity_in_inputs_are_reported_by_file_and_key() {
    let base = ModelTree::new();
    let layout = Layout::sd15(Scale::Sample);
    let specs = layout.tensors();
    let ck = base.models("checkpoints");
    let unet_key = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight";
    let vae_key = "first_stage_model.decoder.conv_out.bias";
    let spec_of = |k: &str| {
        specs
            .iter()
            .find(|s| s.name == k)
            .expect("key in layout")
            .clone()
    };
    // b: one NaN in the middle of a merged UNet weight; a: +inf in a VAE bias that is copied
    // unchanged.
    let mut nan_weight = Vec::new();
    amalgam::model::layouts::fill_tensor(2, &spec_of(unet_key), &mut nan_weight);
    let at = nan_weight.len() / 2 / 2 * 2 + 2;
    nan_weight[at..at + 2].copy_from_slice(&half::f16::NAN.to_le_bytes());
    write_safetensors(
        &ck.join("b.safetensors"),
        &specs,
        2,
        &HashMap::from([(unet_key.to_owned(), nan_weight)]),
        &[],
    );
    let mut inf_bias = Vec::new();
    amalgam::model::layouts::fill_tensor(1, &spec_of(vae_key), &mut inf_bias);
    inf_bias[..2].copy_from_slice(&half::f16::INFINITY.to_le_bytes());
    write_safetensors(
        &ck.join("a.safetensors"),
        &specs,
        1,
        &HashMap::from([(vae_key.to_owned(), inf_bias)]),
        &[],
    );
    let prompt = json!({
        "1": loader("a.safetensors"),
        "2": loader("b.safetensors"),
        "3": {"class_type": "ModelMergeSimple", "inputs": {"ratio": 0.5, "model1": ["1", 0], "model2": ["2", 0]}},
        "5": save(("3", 0), ("1", 1), ("1", 2), "checkpoints/nan"),
    });
    let (files, warnings, _) = run_api(&base, &prompt, Precision::Keep, &mut RunCache::default());
    let messages: Vec<String> = warnings.iter().map(|w| w.message.clone()).collect();
    assert_eq!(warnings.len(), 2, "{messages:?}");
    let about = |file: &str, key: &str| {
        warnings.iter().any(|w| {
            w.message.contains(file)
                && w.message.contains("NaN or infinite values in 1 tensor(s)")
                && w.key.as_deref() == Some(key)
        })
    };
    assert!(about("b.safetensors", unet_key), "{messages:?}");
    assert!(about("a.safetensors", vae_key), "{messages:?}");
    // The values pass through as ComfyUI's arithmetic passes them.
    let out = base.read(&files[0].path);
    let merged = out[unet_key].f32s();
    assert!(merged[at / 2].is_nan());
    assert_eq!(merged.iter().filter(|v| !v.is_finite()).count(), 1);
    assert_eq!(out[vae_key].f32s()[0], f32::INFINITY);
}
