//! The merge engine end to end: real checkpoints in, real files out, every tensor compared bit
//! for bit with a reference computed here from ComfyUI's formulas (reference §1.2, §9).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use amalgam::engine::cache::RunCache;
use amalgam::engine::worker::{Job, run_job};
use amalgam::engine::{Event, Precision, SavedFile, Warning};
use amalgam::format::DType;
use amalgam::format::pyjson;
use amalgam::format::safetensors::TensorSpec;
use amalgam::graph::Prompt;
use amalgam::graph::resolve::Resolved;
use amalgam::model::ModelFolders;
use amalgam::model::layouts::{Layout, Scale};
use amalgam::nodes::Registry;
use amalgam::nodes::validate::validate;
use common::*;
use serde_json::{Value, json};

/// A base folder with checkpoints written from layouts and seeds.
struct Base {
    dir: tempfile::TempDir,
}

impl Base {
    fn new() -> Base {
        Base { dir: tempdir() }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn folders(&self) -> ModelFolders {
        ModelFolders::new(self.path(), None, None)
    }
    fn checkpoint(&self, name: &str, layout: &Layout, seed: u64) -> PathBuf {
        let dir = self.path().join("models/checkpoints");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let p = dir.join(name);
        write_layout(&p, layout, seed, &[]);
        p
    }
    fn read(&self, p: &Path) -> HashMap<String, RefTensor> {
        read_reference(p).0
    }
}

/// Validates an API prompt and runs it through the engine; returns files, warnings and the
/// validated prompt.
fn run_api(
    base: &Base,
    prompt: &Value,
    precision: Precision,
    cache: &mut RunCache,
) -> (Vec<SavedFile>, Vec<Warning>, Prompt) {
    let prompt = Prompt::from_json(prompt).expect("prompt");
    let reg = Registry::builtin();
    let v = validate(
        Resolved {
            prompt,
            ..Resolved::default()
        },
        reg,
        &base.folders(),
    );
    assert!(v.errors.is_empty(), "validation: {:?}", v.errors);
    let job = Job {
        prompt: v.prompt.clone(),
        outputs: v.outputs.clone(),
        workflow: None,
        folders: base.folders(),
        precision,
    };
    let (files, warnings) = run_events(&job, cache, &AtomicBool::new(false));
    (files.expect("job finished"), warnings, v.prompt)
}

fn run_events(
    job: &Job,
    cache: &mut RunCache,
    cancel: &AtomicBool,
) -> (Option<Vec<SavedFile>>, Vec<Warning>) {
    let mut files = None;
    let mut warnings = Vec::new();
    let mut failed = None;
    run_job(job, cancel, cache, &mut |e| match e {
        Event::Finished { outputs, .. } => files = Some(outputs),
        Event::Warning(w) => warnings.push(w),
        Event::Failed(e) => failed = Some(e.to_string()),
        _ => {}
    });
    if let Some(f) = failed {
        panic!("job failed: {f}");
    }
    (files, warnings)
}

fn loader(name: &str) -> Value {
    json!({"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": name}})
}

/// A CheckpointSave fed by `(node, slot)` links.
fn save(model: (&str, u8), clip: (&str, u8), vae: (&str, u8), prefix: &str) -> Value {
    let (model, clip, vae) = (
        json!([model.0, model.1]),
        json!([clip.0, clip.1]),
        json!([vae.0, vae.1]),
    );
    json!({"class_type": "CheckpointSave", "inputs": {"filename_prefix": prefix, "model": model, "clip": clip, "vae": vae}})
}

fn f32s(t: &RefTensor) -> Vec<f32> {
    t.f32s()
}

#[test]
fn simple_merge_of_model_and_clip_matches_the_formula_bit_for_bit() {
    let base = Base::new();
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
    let base = Base::new();
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

#[test]
fn model_specific_block_nodes_respect_trailing_dots() {
    let base = Base::new();
    let sd = Layout::sd15(Scale::Sample);
    let a = base.checkpoint("a.safetensors", &sd, 1);
    let b = base.checkpoint("b.safetensors", &sd, 2);
    // ModelMergeSD1: every ratio 1.0 (keep model1) except input_blocks.1. = 0.0 (take model2).
    let prompt = one_block_from_model2(
        "ModelMergeSD1",
        "input_blocks.1.",
        "a.safetensors",
        "b.safetensors",
        "checkpoints/sd1blocks",
    );
    let (files, _, _) = run_api(&base, &prompt, Precision::Keep, &mut RunCache::default());
    let (out, ta, tb) = (base.read(&files[0].path), base.read(&a), base.read(&b));
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
    base.checkpoint("xa.safetensors", &xl, 3);
    let xb = base.checkpoint("xb.safetensors", &xl, 4);
    let prompt = one_block_from_model2(
        "ModelMergeSDXL",
        "output_blocks.2",
        "xa.safetensors",
        "xb.safetensors",
        "checkpoints/xl",
    );
    let (files, _, _) = run_api(&base, &prompt, Precision::Keep, &mut RunCache::default());
    let (out, meta) = read_reference(&files[0].path);
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
    let base = Base::new();
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
    let base = Base::new();
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
    let base = Base::new();
    let sd = Layout::sd15(Scale::Sample);
    let a = base.checkpoint("a.safetensors", &sd, 40);
    // A standalone VAE as released (bare keys, plus training leftovers ComfyUI ignores), in fp32.
    let mut specs = Vec::new();
    amalgam::model::layouts::vae(&mut specs, "", 8, DType::F32);
    specs.push(spec("loss.logvar", DType::F32, &[]));
    let vae_dir = base.path().join("models/vae");
    std::fs::create_dir_all(&vae_dir).expect("mkdir");
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
    let base = Base::new();
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
    let base = Base::new();
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
    let base = Base::new();
    let xl = Layout::sdxl(Scale::Sample);
    base.checkpoint("a.safetensors", &xl, 70);
    base.checkpoint("b.safetensors", &xl, 71);
    let prompt = Prompt::from_json(&json!({
        "1": loader("a.safetensors"), "2": loader("b.safetensors"),
        "3": {"class_type": "ModelMergeSimple", "inputs": {"ratio": 0.5, "model1": ["1", 0], "model2": ["2", 0]}},
        "4": save(("3", 0), ("1", 1), ("1", 2), "checkpoints/ComfyUI"),
    }))
    .expect("prompt");
    let job = Job {
        prompt,
        outputs: vec!["4".into()],
        workflow: None,
        folders: base.folders(),
        precision: Precision::Keep,
    };
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
    let base = Base::new();
    let sd = Layout::sd15(Scale::Sample);
    base.checkpoint("a.safetensors", &sd, 80);
    let prompt = Prompt::from_json(
        &json!({"1": loader("a.safetensors"), "2": save(("1", 0), ("1", 1), ("1", 2), "x")}),
    )
    .expect("p");
    let job = Job {
        prompt,
        outputs: vec!["2".into()],
        workflow: None,
        folders: base.folders(),
        precision: Precision::Keep,
    };
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
    let base = Base::new();
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

/// Runs `prompt` (output node "2") without validation, as a job whose inputs changed after it was
/// validated; returns the failure message, if the run failed.
fn run_unvalidated(base: &Base, prompt: Prompt) -> Option<String> {
    let job = Job {
        prompt,
        outputs: vec!["2".into()],
        workflow: None,
        folders: base.folders(),
        precision: Precision::Keep,
    };
    let mut failed = None;
    run_job(
        &job,
        &AtomicBool::new(false),
        &mut RunCache::default(),
        &mut |e| {
            if let Event::Failed(e) = e {
                failed = Some(e.to_string());
            }
        },
    );
    failed
}

/// Writes a torch-zip checkpoint of `layout` (as `torch.save` of a training checkpoint would).
fn write_ckpt(path: &Path, specs: &[amalgam::format::safetensors::TensorSpec], seed: u64) {
    write_torch(specs, seed, Some(path), None);
}

#[test]
fn shared_basic_png_runs_end_to_end_through_the_cli() {
    let base = Base::new();
    let sd = Layout::sd15(Scale::Sample);
    let ck = base.path().join("models/checkpoints");
    std::fs::create_dir_all(&ck).expect("mkdir");
    write_ckpt(&ck.join("v1-5-pruned-emaonly.ckpt"), &sd.tensors(), 100);
    let cardos = base.checkpoint("cardosAnime_v10.safetensors", &sd, 101);
    let vae_dir = base.path().join("models/vae");
    std::fs::create_dir_all(&vae_dir).expect("mkdir");
    let mut vae_specs = Vec::new();
    amalgam::model::layouts::vae(&mut vae_specs, "", 8, DType::F32);
    write_ckpt(&vae_dir.join("kl-f8-anime2.ckpt"), &vae_specs, 102);

    let png =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/workflows/model_merging_basic.png");
    let mut doc = amalgam::graph::load::load_file(&png).expect("png").document;
    doc.node_mut(14).expect("save").mode = amalgam::graph::Mode::Always;
    let wf = base.path().join("basic-unmuted.json");
    std::fs::write(&wf, serde_json::to_vec(&doc.to_json()).expect("json")).expect("write");

    let out = run(&[
        "--base-dir",
        path_str(base.path()),
        "run",
        "--json",
        path_str(&wf),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let j: Value = serde_json::from_slice(&out.stdout).expect("json");
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
    assert_eq!(got.len(), 1130);
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

    // Running it again in a new process writes the next file (the cache lives in one process).
    let again = run(&["--base-dir", path_str(base.path()), "run", path_str(&wf)]);
    assert!(again.status.success());
    assert_eq!(
        stdout(&again).trim(),
        base.path()
            .join("output/checkpoints/ComfyUI_00002_.safetensors")
            .display()
            .to_string()
    );

    // The still-muted PNG itself: nothing to run, a clear error, exit non-zero, no file.
    let muted = run(&["--base-dir", path_str(base.path()), "run", path_str(&png)]);
    assert!(!muted.status.success());
    assert!(
        stderr(&muted).contains("Prompt has no outputs [prompt_no_outputs]"),
        "{}",
        stderr(&muted)
    );
    assert!(
        !base
            .path()
            .join("output/checkpoints/ComfyUI_00003_.safetensors")
            .exists()
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
    let base = Base::new();
    let dir = base.path().join("models/checkpoints");
    std::fs::create_dir_all(&dir).expect("mkdir");
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

/// A LoRA in kohya and PEFT naming, baked after a merge: each patched key equals the merge
/// plus `f32(strength · alpha / rank) · (up @ down)` (a sequential f32 sum over the rank),
/// rounded once; keys that match nothing are reported.
#[test]
fn lora_after_a_merge_is_exact_and_unmatched_keys_are_reported() {
    let base = Base::new();
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
    let lora_dir = base.path().join("models/loras");
    std::fs::create_dir_all(&lora_dir).expect("mkdir");
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
    let base = Base::new();
    let sd = Layout::sd15(Scale::Sample);
    let ck = base.path().join("models/checkpoints");
    std::fs::create_dir_all(&ck).expect("mkdir");
    write_ckpt(&ck.join("v1-5-pruned-emaonly.ckpt"), &sd.tensors(), 120);
    base.checkpoint("cardosAnime_v10.safetensors", &sd, 121);
    let loras = base.path().join("models/loras");
    std::fs::create_dir_all(&loras).expect("mkdir");
    let name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";
    let specs = [
        spec(&format!("{name}.lora_up.weight"), DType::F16, &[16, 4]),
        spec(&format!("{name}.lora_down.weight"), DType::F16, &[4, 16]),
    ];
    write_safetensors(
        &loras.join("theovercomer8sContrastFix_sd15.safetensors"),
        &specs,
        122,
        &HashMap::new(),
        &[],
    );
    let vae_dir = base.path().join("models/vae");
    std::fs::create_dir_all(&vae_dir).expect("mkdir");
    let mut vae_specs = Vec::new();
    amalgam::model::layouts::vae(&mut vae_specs, "", 8, DType::F32);
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
    let wf = base.path().join("lora.json");
    std::fs::write(&wf, serde_json::to_vec(&doc.to_json()).expect("json")).expect("write");
    let out = run(&[
        "--base-dir",
        path_str(base.path()),
        "run",
        "--json",
        path_str(&wf),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let j: Value = serde_json::from_slice(&out.stdout).expect("json");
    let path = PathBuf::from(j["outputs"][0]["path"].as_str().expect("path"));
    assert_eq!(read_reference(&path).0.len(), 1130);
    let warnings = j["warnings"].to_string();
    assert!(
        warnings.contains("1 MODEL and 0 CLIP keys patched"),
        "{warnings}"
    );
}

/// ComfyUI's CosXL example graph: Subtract → Add → ModelMergeSDXL → ModelSamplingContinuousEDM
/// → CheckpointSave writes the EDM markers (and, as ComfyUI, no predict_key for an EDM base);
/// `amalgam inspect` then reports EDM v-prediction. ModelSamplingDiscrete decides `ztsnr`.
#[test]
fn sampling_nodes_write_comfyuis_prediction_markers() {
    let base = Base::new();
    let xl = Layout::sdxl(Scale::Sample);
    let dir = base.path().join("models/checkpoints");
    std::fs::create_dir_all(&dir).expect("mkdir");
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

/// `amalgam samples` also writes a LoRA for the SD1.5 samples and a standalone VAE; the LoRA
/// matches every key it names (no "lora key not loaded"), baked through the CLI.
#[test]
fn sample_lora_and_vae_bake_into_a_sample_checkpoint() {
    let base = Base::new();
    let out = run(&["--base-dir", path_str(base.path()), "samples"]);
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
    let wf = base.path().join("lora.json");
    std::fs::write(&wf, serde_json::to_vec(&prompt).expect("json")).expect("write");
    let out = run(&[
        "--base-dir",
        path_str(base.path()),
        "run",
        "--json",
        path_str(&wf),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let j: Value = serde_json::from_slice(&out.stdout).expect("json");
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
    let base = Base::new();
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
    let base = Base::new();
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
    let loras = base.path().join("models/loras");
    std::fs::create_dir_all(&loras).expect("mkdir");
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
    let base = Base::new();
    let dir = base.path().join("models/checkpoints");
    std::fs::create_dir_all(&dir).expect("mkdir");
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
    let base = Base::new();
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
    let base = Base::new();
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
    base: &Base,
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
    base: &Base,
    name: &str,
    specs: &[TensorSpec],
    seed: u64,
    (alpha_key, alpha): (String, f32),
    strength: f64,
    precision: Precision,
) -> (PathBuf, Vec<SavedFile>, Vec<Warning>) {
    let loras = base.path().join("models/loras");
    std::fs::create_dir_all(&loras).expect("mkdir");
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

#[test]
fn nan_and_infinity_in_inputs_are_reported_by_file_and_key() {
    let base = Base::new();
    let layout = Layout::sd15(Scale::Sample);
    let specs = layout.tensors();
    let ck = base.path().join("models/checkpoints");
    std::fs::create_dir_all(&ck).expect("mkdir");
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
) -> (Base, HashMap<String, RefTensor>, HashMap<String, RefTensor>) {
    let base = Base::new();
    let ck = base.path().join("models/checkpoints");
    std::fs::create_dir_all(&ck).expect("mkdir");
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
