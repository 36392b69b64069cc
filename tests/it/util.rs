//! Fixtures for end-to-end tests: one model tree ([`ModelTree`]) with real checkpoint files
//! written into it, the real `amalgam` binary run on them, and prompts run in-process through
//! the library's own [`run_blocking`]. The `crash` and `gui_x11` binaries include this file too.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use amalgam::format::DType;
use amalgam::format::safetensors::{TensorSpec, write_file};
use amalgam::model::ModelFolders;
use amalgam::model::layouts::{Layout, fill_tensor};

/// The built `amalgam` binary.
pub fn amalgam() -> Command {
    Command::new(env!("CARGO_BIN_EXE_amalgam"))
}

/// Runs the binary with `args`; panics only on failure to start it.
pub fn run(args: &[&str]) -> Output {
    amalgam().args(args).output().expect("amalgam runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `amalgam inspect --json FILE`, parsed; panics with stderr if it failed.
pub fn inspect_json(path: &Path) -> serde_json::Value {
    let path = path.to_str().expect("utf-8 path");
    let out = run(&["inspect", "--json", path]);
    assert!(out.status.success(), "inspect failed: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("inspect prints JSON")
}

/// Writes a safetensors file with generated data; `overrides` replaces given tensors' bytes.
pub fn write_safetensors(
    path: &Path,
    specs: &[TensorSpec],
    seed: u64,
    overrides: &HashMap<String, Vec<u8>>,
    metadata: &[(&str, &str)],
) {
    let data: Vec<Vec<u8>> = specs
        .iter()
        .map(|s| {
            overrides.get(&s.name).cloned().unwrap_or_else(|| {
                let mut b = Vec::new();
                fill_tensor(seed, s, &mut b);
                b
            })
        })
        .collect();
    let meta: Vec<(String, String)> = metadata
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    write_file(path, specs, &meta, data.iter().map(Vec::as_slice)).expect("write fixture");
}

/// Writes a checkpoint of `layout` plus `extra` tensors.
pub fn write_layout(path: &Path, layout: &Layout, seed: u64, extra: &[TensorSpec]) {
    let mut specs = layout.tensors();
    specs.extend_from_slice(extra);
    write_safetensors(path, &specs, seed, &HashMap::new(), &[]);
}

/// A spec shortcut.
pub fn spec(name: &str, dtype: DType, shape: &[usize]) -> TensorSpec {
    TensorSpec::new(name, dtype, shape)
}

/// A fresh temp dir.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// The one model tree of the tests: a temporary root holding a ComfyUI base folder at
/// `<root>/base` (`models/checkpoints`, `models/loras`, `output`). The root itself stays empty
/// unless a test writes there, so hostile-path tests can check that nothing left the base.
pub struct ModelTree {
    root: tempfile::TempDir,
    base: PathBuf,
}

impl Default for ModelTree {
    fn default() -> Self {
        Self::new()
    }
}

impl ModelTree {
    pub fn new() -> ModelTree {
        let root = tempdir();
        let base = root.path().join("base");
        for sub in ["models/checkpoints", "models/loras", "output"] {
            std::fs::create_dir_all(base.join(sub)).expect("mkdir");
        }
        ModelTree { root, base }
    }

    /// The base folder.
    pub fn path(&self) -> &Path {
        &self.base
    }

    /// The folder around the base (must stay untouched by runs).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    pub fn folders(&self) -> ModelFolders {
        ModelFolders::new(&self.base, None, None)
    }

    /// `models/<kind>`, created.
    pub fn models(&self, kind: &str) -> PathBuf {
        let dir = self.base.join("models").join(kind);
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    }

    pub fn output(&self) -> PathBuf {
        self.base.join("output")
    }

    /// Writes `models/checkpoints/<name>` from `layout` with data from `seed`.
    pub fn checkpoint(&self, name: &str, layout: &Layout, seed: u64) -> PathBuf {
        let p = self.models("checkpoints").join(name);
        write_layout(&p, layout, seed, &[]);
        p
    }

    /// A saved file's tensors, read back with the `safetensors` crate.
    pub fn read(&self, p: &Path) -> HashMap<String, RefTensor> {
        read_reference(p).0
    }
}

/// Every file below `dir` (symlinked folders not followed), relative to it, sorted.
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            } else if let Ok(rel) = p.strip_prefix(dir) {
                out.push(rel.display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// Raw safetensors bytes from a header JSON and a data length (for malformed-file tests).
pub fn raw_safetensors(json: &str, data_len: usize) -> Vec<u8> {
    let mut v = (json.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(json.as_bytes());
    v.extend(std::iter::repeat_n(0u8, data_len));
    v
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A tensor as the independent `safetensors` crate reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct RefTensor {
    pub dtype: String,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl RefTensor {
    /// Float values widened to f32 (F16, BF16, F32).
    pub fn f32s(&self) -> Vec<f32> {
        match self.dtype.as_str() {
            "F16" => self
                .bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            "BF16" => self
                .bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            "F32" => self
                .bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            other => panic!("not a float tensor: {other}"),
        }
    }
}

/// Every tensor and the metadata of a safetensors file, read with the `safetensors` crate (not
/// Amalgam's reader), so tests check outputs independently.
pub fn read_reference(path: &Path) -> (HashMap<String, RefTensor>, HashMap<String, String>) {
    let bytes = std::fs::read(path).expect("read output");
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).expect("metadata");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let dtype = serde_json::to_value(view.dtype())
                .expect("dtype")
                .as_str()
                .expect("str")
                .to_owned();
            (
                name,
                RefTensor {
                    dtype,
                    shape: view.shape().to_vec(),
                    bytes: view.data().to_vec(),
                },
            )
        })
        .collect();
    (tensors, meta.metadata().clone().unwrap_or_default())
}

/// Rounds f32 values to a dtype's bytes (round-to-nearest-even), for expected results.
pub fn to_bytes(values: &[f32], dtype: &str) -> Vec<u8> {
    match dtype {
        "F16" => values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        "BF16" => values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
        "F32" => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        other => panic!("not a float dtype: {other}"),
    }
}

/// ComfyUI's patch step on f32 values: `w = w * mm` when mm ≠ 1, then `w = w + s * b` when
/// s ≠ 0 — separate multiply and add.
pub fn patch(w: &mut [f32], mm: f64, s: f64, b: Option<&[f32]>) {
    if mm != 1.0 {
        let m = mm as f32;
        for v in w.iter_mut() {
            *v *= m;
        }
    }
    if s != 0.0
        && let Some(b) = b
    {
        let s = s as f32;
        for (v, x) in w.iter_mut().zip(b) {
            let p = s * *x;
            *v += p;
        }
    }
}

/// `a @ b` for row-major `a: [rows, rank]` and `b: [rank, cols]`, each element a sequential f32
/// sum over the rank (ComfyUI's CPU result), as an independent reference for LoRA tests.
pub fn seq_matmul(a: &[f32], b: &[f32], rows: usize, rank: usize, cols: usize) -> Vec<f32> {
    let mut o = vec![0.0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            let mut acc = 0.0f32;
            for k in 0..rank {
                acc += a[r * rank + k] * b[k * cols + c];
            }
            o[r * cols + c] = acc;
        }
    }
    o
}

/// Validates an API prompt against `folders` and runs it in-process like the app's worker does.
/// `Err` carries validation errors (debug-printed) or the job's failure message.
pub fn run_prompt(
    folders: &ModelFolders,
    prompt: &serde_json::Value,
) -> Result<Vec<amalgam::engine::SavedFile>, String> {
    let prompt = amalgam::graph::prompt::Prompt::from_json(prompt).expect("test prompt");
    let v = amalgam::graph::validate::validate_prompt(prompt, folders);
    if !v.errors.is_empty() || v.outputs.is_empty() {
        return Err(format!("{:?}", v.errors));
    }
    let job = amalgam::engine::worker::Job {
        prompt: v.prompt,
        outputs: v.outputs,
        workflow: None,
        folders: folders.clone(),
        precision: amalgam::engine::Precision::Keep,
        first_image_only: false,
        metadata: Default::default(),
    };
    amalgam::engine::run_blocking(
        &job,
        &std::sync::atomic::AtomicBool::new(false),
        &mut amalgam::engine::cache::RunCache::default(),
        &mut |_| {},
    )
    .into_result()
    .map_err(|e| e.to_string())
}

/// Writes `specs` with generated data as PyTorch files: a zip (`torch.save`, state dict wrapped
/// under `state_dict`) at `zip`, and/or the legacy format at `legacy`.
pub fn write_torch(specs: &[TensorSpec], seed: u64, zip: Option<&Path>, legacy: Option<&Path>) {
    use amalgam::format::torch::{TorchTensor, write_legacy, write_zip};
    let data: Vec<Vec<u8>> = specs
        .iter()
        .map(|s| {
            let mut b = Vec::new();
            fill_tensor(seed, s, &mut b);
            b
        })
        .collect();
    let tensors: Vec<TorchTensor> = specs
        .iter()
        .zip(&data)
        .map(|(s, d)| TorchTensor {
            name: &s.name,
            dtype: s.dtype,
            shape: &s.shape,
            data: d,
        })
        .collect();
    if let Some(p) = zip {
        write_zip(p, &tensors, true).expect("write torch zip");
    }
    if let Some(p) = legacy {
        write_legacy(p, &tensors).expect("write legacy torch");
    }
}

/// Validates an API prompt against `tree` and runs it through the engine with `precision` and
/// `cache`; returns the files, the warnings and the validated prompt. Panics if validation or
/// the job fails.
pub fn run_api(
    tree: &ModelTree,
    prompt: &serde_json::Value,
    precision: amalgam::engine::Precision,
    cache: &mut amalgam::engine::cache::RunCache,
) -> (
    Vec<amalgam::engine::SavedFile>,
    Vec<amalgam::engine::Warning>,
    amalgam::graph::Prompt,
) {
    let prompt = amalgam::graph::Prompt::from_json(prompt).expect("prompt");
    let v = amalgam::graph::validate::validate_prompt(prompt, &tree.folders());
    assert!(v.errors.is_empty(), "validation: {:?}", v.errors);
    let job = amalgam::engine::worker::Job {
        prompt: v.prompt.clone(),
        outputs: v.outputs.clone(),
        workflow: None,
        folders: tree.folders(),
        precision,
        first_image_only: false,
        metadata: Default::default(),
    };
    let report = amalgam::engine::run_blocking(
        &job,
        &std::sync::atomic::AtomicBool::new(false),
        cache,
        &mut |_| {},
    );
    match report.outcome {
        amalgam::engine::Outcome::Finished { .. } => (report.outputs, report.warnings, v.prompt),
        outcome => panic!("job failed: {outcome:?}"),
    }
}

/// A CheckpointLoaderSimple prompt node.
pub fn loader(name: &str) -> serde_json::Value {
    serde_json::json!({"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": name}})
}

/// A CheckpointSave fed by `(node, slot)` links.
pub fn save(
    model: (&str, u8),
    clip: (&str, u8),
    vae: (&str, u8),
    prefix: &str,
) -> serde_json::Value {
    let (model, clip, vae) = (
        serde_json::json!([model.0, model.1]),
        serde_json::json!([clip.0, clip.1]),
        serde_json::json!([vae.0, vae.1]),
    );
    serde_json::json!({"class_type": "CheckpointSave", "inputs": {"filename_prefix": prefix, "model": model, "clip": clip, "vae": vae}})
}

/// A reference tensor's values as f32.
pub fn f32s(t: &RefTensor) -> Vec<f32> {
    t.f32s()
}

/// Writes a torch-zip checkpoint of `layout` (as `torch.save` of a training checkpoint would).
pub fn write_ckpt(path: &Path, specs: &[amalgam::format::safetensors::TensorSpec], seed: u64) {
    write_torch(specs, seed, Some(path), None);
}

/// Writes `workflow` (any JSON: a UI workflow or an API prompt) to `<base>/<name>` and runs
/// `amalgam --base-dir <base> <command> --json` on it; returns its JSON, panicking with its
/// stderr if it failed.
pub fn run_json(
    base: &Path,
    command: &str,
    name: &str,
    workflow: &serde_json::Value,
) -> serde_json::Value {
    let file = base.join(name);
    std::fs::write(&file, serde_json::to_vec(workflow).expect("json")).expect("write workflow");
    let out = run(&[
        "--base-dir",
        path_str(base),
        command,
        "--json",
        path_str(&file),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("json")
}

/// Shrinks the image half of an example workflow so a test runs it in seconds: the empty latent
/// becomes 64×64 (batch kept) and each KSampler takes `steps` steps. Nothing else changes.
pub fn shrink_image_half(doc: &mut amalgam::graph::Document, steps: i64) {
    for node in &mut doc.nodes {
        let Some(serde_json::Value::Array(values)) = node.widgets_values.as_mut() else {
            continue;
        };
        match node.type_.as_str() {
            "EmptyLatentImage" => {
                values[0] = serde_json::json!(64);
                values[1] = serde_json::json!(64);
            }
            // seed, control_after_generate, steps, …
            "KSampler" => values[2] = serde_json::json!(steps),
            _ => {}
        }
    }
}

/// Width, height and text chunks of a PNG file.
pub fn png_info(path: &Path) -> (u32, u32, Vec<(String, String)>) {
    let bytes = std::fs::read(path).expect("read png");
    let decoder = png::Decoder::new(std::io::Cursor::new(&bytes));
    let reader = decoder.read_info().expect("png header");
    let info = reader.info();
    let (w, h) = (info.width, info.height);
    let texts = amalgam::format::png::text_chunks(&bytes).expect("text chunks");
    (w, h, texts)
}
