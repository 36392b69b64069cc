//! Fixtures for end-to-end tests: real checkpoint files written into temp dirs, and the real
//! `amalgam` binary run on them.
#![allow(dead_code)] // each test binary uses a different part

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use amalgam::format::DType;
use amalgam::format::safetensors::{TensorSpec, write_file};
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

pub fn join(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}
