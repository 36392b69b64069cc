//! Entry points for the fuzz targets in `fuzz/`, shared with the regression test that replays
//! their corpora (`tests/it/fuzz_regressions.rs`) so every input a fuzzer ever found keeps being
//! checked by a plain `cargo test`, without nightly Rust.
//!
//! Each function takes arbitrary bytes, runs one parser the way the application does, and
//! checks what the parser promises about its result. A parser may refuse any input with an
//! error; what it must never do is panic, hang, allocate far beyond the input's size, or accept
//! something that breaks its own invariants. Those checks are `assert!`s on purpose: a failed
//! one is a finding, which the fuzzer reports like a crash.

use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::AtomicBool;

use crate::engine::cache::RunCache;
use crate::engine::worker::Job;
use crate::engine::{Outcome, Precision, run_blocking};
use crate::format::safetensors::{TensorSpec, write_file};
use crate::format::{DType, TensorRecord};
use crate::graph::load::load_bytes;
use crate::graph::prompt::Prompt;
use crate::graph::resolve::resolve;
use crate::graph::validate::{validate, validate_prompt};
use crate::model::folders::ModelFolders;
use crate::nodes::Registry;

/// The fuzz targets, by name (the file names under `fuzz/fuzz_targets/`).
pub const TARGETS: [&str; 7] = [
    "safetensors_header",
    "checkpoint",
    "pickle",
    "png_text",
    "workflow",
    "extra_model_paths",
    "lora",
];

/// Runs the named target on one input; `false` for an unknown name.
pub fn run(target: &str, data: &[u8]) -> bool {
    match target {
        "safetensors_header" => safetensors_header(data),
        "checkpoint" => checkpoint(data),
        "pickle" => pickle(data),
        "png_text" => png_text(data),
        "workflow" => workflow(data),
        "extra_model_paths" => extra_model_paths(data),
        "lora" => lora(data),
        _ => return false,
    }
    true
}

fn check_records(records: &[TensorRecord], file_len: usize) {
    for r in records {
        let end = r.offset.checked_add(r.len);
        assert!(
            end.is_some_and(|e| e <= file_len as u64),
            "{}: range past the end",
            r.name
        );
        if let Some(expected) = crate::format::safetensors::byte_len(r.dtype, &r.shape) {
            assert_eq!(
                expected, r.len,
                "{}: length does not match its shape",
                r.name
            );
        }
    }
}

/// The safetensors header reader: an accepted header tiles the data exactly.
pub fn safetensors_header(data: &[u8]) {
    if let Ok(h) = crate::format::safetensors::parse_header(data) {
        let mut covered = 0u64;
        for t in &h.tensors {
            assert!(t.begin <= t.end);
            covered += t.end - t.begin;
        }
        assert_eq!(h.data_start + covered, data.len() as u64, "data not tiled");
    }
}

/// Whole checkpoint files of any container (safetensors, torch zip, legacy torch pickle).
pub fn checkpoint(data: &[u8]) {
    if let Ok((_, records, _)) = crate::format::read_table_bytes(data) {
        check_records(&records, data.len());
    }
}

/// The non-executing pickle machine on its own (as in `data.pkl`).
pub fn pickle(data: &[u8]) {
    if let Ok((_, used)) = crate::format::pickle::load(data) {
        assert!(used <= data.len());
    }
}

/// PNG text chunks and the workflow found in them.
pub fn png_text(data: &[u8]) {
    if let Ok(chunks) = crate::format::png::text_chunks(data) {
        let text: usize = chunks.iter().map(|(k, v)| k.len() + v.len()).sum();
        // Each compressed chunk may expand to 1 MiB + MAX_EXPANSION × its size, no more; Latin-1
        // text read as UTF-8 may double.
        let cap = 2 * (chunks.len() * (1 << 20) + crate::format::png::MAX_EXPANSION * data.len());
        assert!(text <= cap, "text {text} from {}", data.len());
    }
    workflow(data);
}

/// A workflow file (PNG, UI JSON or API JSON) through everything opening it in the app does:
/// document, write-back, re-read, prompt and validation.
pub fn workflow(data: &[u8]) {
    let Ok(loaded) = load_bytes(data) else {
        return;
    };
    let registry = Registry::builtin();
    let written = loaded.document.to_json();
    // What Amalgam writes, it reads back to the same document.
    let reread = crate::graph::document::Document::from_json(written.clone())
        .expect("a written document reads back");
    assert_eq!(reread.0.to_json(), written, "write → read is not stable");
    let resolved = resolve(&loaded.document, registry);
    let folders = ModelFolders::new(Path::new("/nonexistent-amalgam-fuzz"), None, None);
    let validation = validate(resolved, registry, &folders);
    let prompt_json = validation.prompt.to_json();
    let again = Prompt::from_json(&prompt_json).expect("a written prompt reads back");
    assert_eq!(
        again.to_json(),
        prompt_json,
        "prompt write → read is not stable"
    );
}

/// `extra_model_paths.yaml`.
pub fn extra_model_paths(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::model::folders::parse_extra_paths(text, Path::new("/models"));
    }
}

/// A tiny checkpoint whose keys the LoRA target aims at: SD1.5 names, small shapes.
const LORA_TARGETS: [(&str, &[usize]); 6] = [
    (
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
        &[8, 8],
    ),
    (
        "model.diffusion_model.input_blocks.1.1.proj_in.weight",
        &[8, 8, 1, 1],
    ),
    ("model.diffusion_model.input_blocks.1.1.proj_in.bias", &[8]),
    (
        "model.diffusion_model.input_blocks.1.0.in_layers.2.weight",
        &[8, 4, 3, 3],
    ),
    ("model.diffusion_model.out.2.weight", &[4, 8, 3, 3]),
    (
        "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight",
        &[8, 8],
    ),
];

/// A tiny Flux (width 4) the LoRA target also bakes into, for the row blocks of fused weights.
const LORA_FLUX_TARGETS: [(&str, &[usize]); 5] = [
    ("model.diffusion_model.img_in.weight", &[4, 8]),
    (
        "model.diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale",
        &[4],
    ),
    (
        "model.diffusion_model.double_blocks.0.img_attn.qkv.weight",
        &[12, 4],
    ),
    (
        "model.diffusion_model.single_blocks.0.linear1.weight",
        &[28, 4],
    ),
    (
        "model.diffusion_model.final_layer.adaLN_modulation.1.weight",
        &[8, 4],
    ),
];

/// LoRA names (and junk) the LoRA target builds its files from.
const LORA_BASES: [&str; 13] = [
    "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q",
    "lora_unet_down_blocks_0_attentions_0_proj_in",
    "lora_unet_input_blocks_1_0_in_layers_2",
    "lora_unet_out_2",
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "diffusion_model.input_blocks.1.1.proj_in",
    "text_encoders.clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj",
    "lora_unet_nothing",
    "transformer.transformer_blocks.0.attn.to_k",
    "transformer.single_transformer_blocks.0.proj_mlp",
    "norm_out.linear",
    "diffusion_model.single_blocks.0.linear1_qkv",
];

const LORA_SUFFIXES: [&str; 24] = [
    ".lora_up.weight",
    ".lora_down.weight",
    ".alpha",
    ".lora_B.weight",
    ".lora_A.weight",
    ".lora_B.default.weight",
    ".lora_A.default.weight",
    ".lora_mid.weight",
    ".dora_scale",
    ".hada_w1_a",
    ".hada_w1_b",
    ".hada_w2_a",
    ".hada_w2_b",
    ".hada_t1",
    ".lokr_w1",
    ".lokr_w2",
    ".lokr_w1_a",
    ".lokr_w1_b",
    ".lokr_w2_a",
    ".lokr_w2_b",
    ".diff",
    ".diff_b",
    ".hada_t2",
    ".lokr_t2",
];

/// Deterministic bytes for each tensor: every byte in 0x00..0x3f, which gives modest finite
/// values in any float dtype when read little-endian.
fn small_values(specs: &[TensorSpec], step: usize) -> Vec<Vec<u8>> {
    specs
        .iter()
        .map(|s| {
            let n = s.byte_len().unwrap_or(0) as usize;
            (0..n).map(|i| (i * step % 64) as u8).collect()
        })
        .collect()
}

/// Scratch folders of the LoRA target: a model tree with the tiny checkpoint, reused per input.
fn lora_base() -> &'static Path {
    static BASE: OnceLock<std::path::PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        // Kept for the process's life (the target reuses it per input); `$TMPDIR` picks the disk.
        let dir = tempfile::Builder::new()
            .prefix("amalgam-fuzz-lora-")
            .tempdir()
            .expect("fuzz scratch folder")
            .keep();
        let ck = dir.join("models/checkpoints");
        std::fs::create_dir_all(&ck).expect("fuzz scratch folder");
        std::fs::create_dir_all(dir.join("models/loras")).expect("fuzz scratch folder");
        for (file, targets) in [
            ("tiny.safetensors", &LORA_TARGETS[..]),
            ("flux.safetensors", &LORA_FLUX_TARGETS[..]),
        ] {
            let specs: Vec<TensorSpec> = targets
                .iter()
                .map(|(name, shape)| TensorSpec::new(*name, DType::F16, shape))
                .collect();
            let data = small_values(&specs, 7);
            let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
            write_file(&ck.join(file), &specs, &Default::default(), refs).expect("fuzz checkpoint");
        }
        dir
    })
}

/// Removes the LoRA target's scratch folder (for the regression test; a fuzzer leaves it).
pub fn remove_scratch() {
    let _ = std::fs::remove_dir_all(lora_base());
}

/// Reads `data` as a little recipe for a LoRA file: per tensor, a base name, a suffix, a dtype
/// and a shape, each from one byte; then strengths. The file is written as safetensors and baked
/// into the tiny checkpoint through LoraLoader → CheckpointSave, so the key mapping, the
/// grouping of factors, their shape checks and the kernel all see it.
pub fn lora(data: &[u8]) {
    lora_run(data);
}

/// [`lora`], returning how many files were saved and the job's messages.
fn lora_run(data: &[u8]) -> (usize, Vec<String>) {
    let mut bytes = data.iter().copied();
    let mut next = || bytes.next().unwrap_or(0);
    let count = (next() % 12) as usize;
    let mut specs: Vec<TensorSpec> = Vec::new();
    for _ in 0..count {
        let name = format!(
            "{}{}",
            LORA_BASES[next() as usize % LORA_BASES.len()],
            LORA_SUFFIXES[next() as usize % LORA_SUFFIXES.len()]
        );
        let dtype = [DType::F32, DType::F16, DType::BF16, DType::I64][next() as usize % 4];
        let rank = (next() % 5) as usize;
        let shape: Vec<usize> = (0..rank).map(|_| (next() % 10) as usize).collect();
        if specs.iter().any(|s| s.name == name) {
            continue;
        }
        specs.push(TensorSpec::new(name, dtype, &shape));
    }
    let strength_model = f64::from(next() as i8) / 16.0;
    let strength_clip = f64::from(next() as i8) / 16.0;
    let values = small_values(&specs, 13);
    let base = lora_base();
    let lora_path = base.join("models/loras/f.safetensors");
    let _ = std::fs::remove_file(&lora_path);
    let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
    if write_file(&lora_path, &specs, &Default::default(), refs).is_err() {
        return (0, Vec::new());
    }
    // The last byte picks the model: the SD-like checkpoint with its CLIP, or the tiny Flux.
    let prompt = if next() % 2 == 0 {
        serde_json::json!({
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
            "2": {"class_type": "LoraLoader", "inputs": {
                "model": ["1", 0], "clip": ["1", 1], "lora_name": "f.safetensors",
                "strength_model": strength_model, "strength_clip": strength_clip}},
            "3": {"class_type": "CheckpointSave", "inputs": {
                "model": ["2", 0], "clip": ["2", 1], "vae": ["1", 2], "filename_prefix": "f"}}
        })
    } else {
        serde_json::json!({
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "flux.safetensors"}},
            "2": {"class_type": "LoraLoaderModelOnly", "inputs": {
                "model": ["1", 0], "lora_name": "f.safetensors", "strength_model": strength_model}},
            "3": {"class_type": "ModelSave", "inputs": {"model": ["2", 0], "filename_prefix": "f"}}
        })
    };
    let prompt = Prompt::from_json(&prompt).expect("the LoRA target's prompt is well formed");
    let folders = ModelFolders::new(base, None, None);
    let v = validate_prompt(prompt, &folders);
    let job = Job {
        prompt: v.prompt,
        outputs: v.outputs,
        workflow: None,
        folders: folders.clone(),
        precision: Precision::Keep,
        first_image_only: true,
        metadata: Default::default(),
    };
    let mut messages: Vec<String> = v.errors.iter().map(|e| format!("{e:?}")).collect();
    let report = run_blocking(
        &job,
        &AtomicBool::new(false),
        &mut RunCache::default(),
        &mut |_| {},
    );
    messages.extend(report.warnings.into_iter().map(|w| w.message));
    let saved = match report.outcome {
        Outcome::Failed(e) => {
            messages.push(e.to_string());
            Vec::new()
        }
        _ => report.outputs,
    };
    let count = saved.len();
    for s in saved {
        let _ = std::fs::remove_file(s.path);
    }
    (count, messages)
}

/// Starting inputs for a target: small real files of each kind Amalgam reads, made by its own
/// writers (and, for PNGs and workflows, the ComfyUI workflows found in `shared_workflows`, their
/// text re-embedded in a small image so the fuzzer does not spend its time in pixel data).
pub fn seeds(target: &str, shared_workflows: Option<&Path>) -> Vec<Vec<u8>> {
    use crate::format::png::{TextKind, text_chunks, write_png_with_text};
    let scratch = tempfile::tempdir().expect("scratch folder for seeds");
    let read = |p: &Path| std::fs::read(p).expect("seed file written just now");
    let specs = vec![
        TensorSpec::new(
            "model.diffusion_model.out.2.weight",
            DType::F16,
            &[4, 2, 3, 3],
        ),
        TensorSpec::new("model.diffusion_model.out.2.bias", DType::F32, &[4]),
        TensorSpec::new(
            "cond_stage_model.transformer.text_model.embeddings.position_ids",
            DType::I64,
            &[1, 3],
        ),
        TensorSpec::new("first_stage_model.decoder.conv_out.bias", DType::BF16, &[3]),
    ];
    let data = small_values(&specs, 29);
    let safetensors_seed = || {
        let meta: crate::format::Metadata = vec![(
            "modelspec.architecture".into(),
            "stable-diffusion-v1".into(),
        )];
        let p = scratch.path().join("a.safetensors");
        write_file(&p, &specs, &meta, data.iter().map(Vec::as_slice)).expect("seed safetensors");
        read(&p)
    };
    let torch: Vec<crate::format::torch::TorchTensor> = specs
        .iter()
        .zip(&data)
        .map(|(s, b)| crate::format::torch::TorchTensor {
            name: &s.name,
            dtype: s.dtype,
            shape: &s.shape,
            data: b,
        })
        .collect();
    let zip_seed = |wrap: bool| {
        let p = scratch.path().join("a.ckpt");
        crate::format::torch::write_zip(&p, &torch, wrap).expect("seed zip checkpoint");
        read(&p)
    };
    let legacy_seed = || {
        let p = scratch.path().join("legacy.ckpt");
        crate::format::torch::write_legacy(&p, &torch).expect("seed legacy checkpoint");
        read(&p)
    };
    // Workflows: the app's examples (UI JSON), their API prompts, and the shared ComfyUI ones.
    let mut workflows: Vec<String> = Vec::new();
    for (_, _, doc) in crate::graph::examples::all() {
        workflows.push(doc.to_json().to_string());
        let resolved = resolve(&doc, Registry::builtin());
        workflows.push(resolved.prompt.to_json().to_string());
    }
    let mut shared_pngs: Vec<Vec<(String, String)>> = Vec::new();
    if let Some(dir) = shared_workflows
        && let Ok(entries) = std::fs::read_dir(dir)
    {
        let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            if let Ok(chunks) = std::fs::read(&p).map(|b| text_chunks(&b)) {
                let chunks = chunks.unwrap_or_default();
                workflows.extend(chunks.iter().map(|(_, v)| v.clone()));
                shared_pngs.push(chunks);
            }
        }
    }
    match target {
        "safetensors_header" => vec![safetensors_seed()],
        "checkpoint" => vec![safetensors_seed(), zip_seed(false), zip_seed(true), legacy_seed()],
        "pickle" => {
            let zip = zip_seed(true);
            let mut archive =
                zip::ZipArchive::new(std::io::Cursor::new(zip)).expect("seed zip reads back");
            let mut pkl = Vec::new();
            std::io::Read::read_to_end(
                &mut archive.by_name("archive/data.pkl").expect("data.pkl"),
                &mut pkl,
            )
            .expect("data.pkl reads");
            vec![pkl, legacy_seed()[10..].to_vec()]
        }
        "png_text" => {
            let mut out: Vec<Vec<u8>> = shared_pngs
                .iter()
                .map(|chunks| {
                    let texts: Vec<(TextKind, &str, &str)> = chunks
                        .iter()
                        .map(|(k, v)| (TextKind::TEXt, k.as_str(), v.as_str()))
                        .collect();
                    write_png_with_text(4, 4, &texts).expect("seed png")
                })
                .collect();
            let w = &workflows[0];
            for kind in [TextKind::TEXt, TextKind::ZTXt, TextKind::ITXt] {
                out.push(write_png_with_text(4, 4, &[(kind, "workflow", w)]).expect("seed png"));
            }
            out
        }
        "workflow" => workflows.into_iter().map(String::into_bytes).collect(),
        "extra_model_paths" => vec![
            b"comfyui:\n  base_path: ~/ComfyUI/\n  is_default: true\n  checkpoints: models/checkpoints/\n  loras: |\n    models/loras\n    ${HOME}/more\n"
                .to_vec(),
            b"a111:\n  base_path: /sd\n  checkpoints: models/Stable-diffusion\n  vae: models/VAE\n  unet: u\n  clip: c\n"
                .to_vec(),
        ],
        "lora" => vec![
            vec![2, 0, 0, 1, 2, 8, 8, 0, 1, 1, 2, 8, 8, 16, 16],
            vec![3, 3, 9, 0, 2, 8, 4, 3, 10, 0, 2, 2, 2, 3, 11, 0, 2, 2, 8, 16, 0],
            vec![2, 7, 14, 0, 2, 2, 4, 7, 15, 0, 2, 4, 2, 16, 16],
            vec![1, 4, 20, 0, 2, 8, 8, 16, 16],
            // A diffusers-named Flux LoRA on the k rows of the fused qkv weight.
            vec![2, 9, 3, 1, 2, 4, 2, 9, 4, 1, 2, 2, 4, 16, 16, 1],
        ],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_seeds_reach_the_merge() {
        let seeds = seeds("lora", None);
        let baked_one_key = |seed: &[u8]| {
            let (saved, messages) = lora_run(seed);
            assert_eq!(saved, 1, "{messages:?}");
            assert!(
                messages
                    .iter()
                    .any(|m| m.contains("1 MODEL and 0 CLIP keys patched")),
                "{messages:?}"
            );
        };
        // An up/down pair on the attention weight: baked and saved.
        baked_one_key(&seeds[0]);
        // LoHa with factors that do not fit the conv weight: refused by name, still saved.
        let (_, messages) = lora_run(&seeds[1]);
        assert!(
            messages.iter().any(|m| m.contains("lora_unet_")),
            "{messages:?}"
        );
        // The Flux seed: a row block of the fused qkv, baked into the tiny Flux.
        baked_one_key(&seeds[4]);
        remove_scratch();
    }
}
