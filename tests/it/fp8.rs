//! fp8 checkpoints end to end: F8_E4M3 diffusion models merged (inputs read exactly, f32
//! arithmetic), written back in fp8 with ComfyUI's per-key stochastic rounding under `keep`,
//! the `fp8_e4m3fn` precision (ComfyUI's `--fp8_e4m3fn-unet`) on fp16 inputs, and `fp32`.
//! The rounding itself is checked bit for bit against real ComfyUI in the kernel's unit tests
//! (`tests/data/comfyui/fp8.json`); here, that every tensor gets its own key's stream, in
//! order, and the right dtype.

use std::collections::HashMap;
use std::path::Path;

use serde_json::json;

use amalgam::engine::kernel::stochastic::{StochasticRounder, string_to_seed};
use amalgam::format::DType;
use amalgam::format::fp8::Fp8;
use amalgam::model::layouts::{Layout, Scale};

use crate::util::*;

const UNET: &str = "model.diffusion_model.";
const RATIO: f64 = 0.3;

/// An SD1.5 sample whose diffusion model is stored in fp8 e4m3fn (text encoder and VAE fp16).
fn fp8_checkpoint(tree: &ModelTree, name: &str, seed: u64) {
    let specs: Vec<_> = Layout::sd15(Scale::Sample)
        .tensors()
        .into_iter()
        .map(|mut s| {
            if s.name.starts_with(UNET) && s.dtype == DType::F16 {
                s.dtype = DType::F8E4M3;
            }
            s
        })
        .collect();
    let path = tree.models("checkpoints").join(name);
    write_safetensors(&path, &specs, seed, &HashMap::new(), &[]);
}

fn merge(
    tree: &ModelTree,
    a: &str,
    b: &str,
    prefix: &str,
    precision: &str,
) -> HashMap<String, RefTensor> {
    let prompt = json!({
        "1": loader(a),
        "2": loader(b),
        "3": {"class_type": "ModelMergeSimple", "inputs": {"model1": ["1", 0], "model2": ["2", 0], "ratio": RATIO}},
        "4": save(("3", 0), ("1", 1), ("1", 2), prefix),
    });
    let file = tree.path().join(format!("{prefix}.json"));
    std::fs::write(&file, serde_json::to_vec(&prompt).expect("json")).expect("write");
    let out = run(&[
        "--base-dir",
        path_str(tree.path()),
        "run",
        "--precision",
        precision,
        path_str(&file),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    tree.read(&tree.output().join(format!("{prefix}_00001_.safetensors")))
}

fn values(t: &RefTensor) -> Vec<f32> {
    match Fp8::of(DType::from_safetensors_name(&t.dtype).expect("dtype")) {
        Some(kind) => t.bytes.iter().map(|&b| kind.to_f32(b)).collect(),
        None => t.f32s(),
    }
}

/// ComfyUI's Simple merge in f32: `w1 * ratio + (1 - ratio) * w2`, each product rounded.
fn simple(w1: &[f32], w2: &[f32]) -> Vec<f32> {
    let (mm, s) = (RATIO as f32, (1.0 - RATIO) as f32);
    w1.iter().zip(w2).map(|(a, b)| a * mm + s * b).collect()
}

fn stochastic(key: &str, merged: &[f32]) -> Vec<u8> {
    let patcher_key = key.strip_prefix("model.").expect("a model key");
    let mut r = StochasticRounder::new(Fp8::E4M3, string_to_seed(patcher_key));
    merged.iter().map(|&v| r.round(v)).collect()
}

fn read(tree: &ModelTree, name: &str) -> HashMap<String, RefTensor> {
    tree.read(&tree.models("checkpoints").join(name))
}

#[test]
fn fp8_models_merge_and_keep_fp8_with_comfyuis_rounding() {
    let tree = ModelTree::new();
    fp8_checkpoint(&tree, "a8.safetensors", 1);
    fp8_checkpoint(&tree, "b8.safetensors", 2);
    let (a, b) = (read(&tree, "a8.safetensors"), read(&tree, "b8.safetensors"));
    let saved = merge(&tree, "a8.safetensors", "b8.safetensors", "keep", "keep");
    let mut checked = 0;
    for (key, t) in &saved {
        if !key.starts_with(UNET) || t.dtype == "F32" {
            continue; // markers and buffers
        }
        assert_eq!(t.dtype, "F8_E4M3", "{key}");
        let merged = simple(&values(&a[key]), &values(&b[key]));
        assert!(
            t.bytes == stochastic(key, &merged),
            "{key}: not ComfyUI's rounding"
        );
        checked += 1;
    }
    assert!(checked > 100, "{checked} diffusion-model tensors");
    // Not merged: the text encoder stays as stored.
    let clip = saved
        .keys()
        .find(|k| k.starts_with("cond_stage_model."))
        .expect("clip");
    assert_eq!(saved[clip], a[clip]);

    // fp32: the same sums, unrounded.
    let wide = merge(&tree, "a8.safetensors", "b8.safetensors", "wide", "fp32");
    let key = "model.diffusion_model.out.2.weight";
    assert_eq!(wide[key].dtype, "F32");
    assert_eq!(wide[key].f32s(), simple(&values(&a[key]), &values(&b[key])));

    // An fp16 first model keeps fp16; the fp8 second one is read exactly.
    tree.checkpoint("a16.safetensors", &Layout::sd15(Scale::Sample), 3);
    let a16 = read(&tree, "a16.safetensors");
    let mixed = merge(&tree, "a16.safetensors", "b8.safetensors", "mixed", "keep");
    let expected: Vec<f32> = simple(&a16[key].f32s(), &values(&b[key]))
        .into_iter()
        .map(|v| half::f16::from_f32(v).to_f32())
        .collect();
    assert_eq!(mixed[key].dtype, "F16");
    assert_eq!(mixed[key].f32s(), expected);
}

#[test]
fn the_fp8_e4m3fn_precision_is_comfyuis_fp8_unet_flag() {
    let tree = ModelTree::new();
    tree.checkpoint("a.safetensors", &Layout::sd15(Scale::Sample), 1);
    tree.checkpoint("b.safetensors", &Layout::sd15(Scale::Sample), 2);
    let (a, b) = (read(&tree, "a.safetensors"), read(&tree, "b.safetensors"));
    let saved = merge(&tree, "a.safetensors", "b.safetensors", "fp8", "fp8_e4m3fn");
    // Loading casts each input to fp8 (nearest) before the merge.
    let cast = |t: &RefTensor| -> Vec<f32> {
        t.f32s()
            .iter()
            .map(|&v| Fp8::E4M3.to_f32(Fp8::E4M3.round_nearest(v)))
            .collect()
    };
    let mut checked = 0;
    for (key, t) in &saved {
        if key.starts_with(UNET) && t.dtype != "F32" {
            assert_eq!(t.dtype, "F8_E4M3", "{key}");
            let merged = simple(&cast(&a[key]), &cast(&b[key]));
            assert!(t.bytes == stochastic(key, &merged), "{key}");
            checked += 1;
        } else if key.starts_with("cond_stage_model.") || key.starts_with("first_stage_model.") {
            assert_eq!(t, &a[key], "{key}: text encoder and VAE as stored");
        }
    }
    assert!(checked > 100);
    // About half the size of the fp16 merge's diffusion model.
    let size = |p: &Path| std::fs::metadata(p).expect("size").len();
    let fp16 = merge(&tree, "a.safetensors", "b.safetensors", "half", "keep");
    assert!(fp16.values().any(|t| t.dtype == "F16"));
    assert!(
        size(&tree.output().join("fp8_00001_.safetensors"))
            < size(&tree.output().join("half_00001_.safetensors"))
    );
}
