//! Small sample checkpoints, so a new user (and the tests) can merge without downloading.
//!
//! Each sample has the full key layout of its family at reduced width (see [`super::layouts`]),
//! seeded data, fp16 like real releases, and a few megabytes of size. Existing files are never
//! overwritten.

use std::path::{Path, PathBuf};

use crate::format::safetensors::{PendingFile, WriteError};

use super::layouts::{Layout, Scale, fill_tensor};

/// One sample checkpoint: file name, layout and seed.
pub struct Sample {
    pub file_name: &'static str,
    pub layout: Layout,
    pub seed: u64,
}

/// The samples `amalgam samples` writes.
pub fn sample_checkpoints() -> Vec<Sample> {
    vec![
        Sample {
            file_name: "sample-sd15-a.safetensors",
            layout: Layout::sd15(Scale::Sample),
            seed: 1,
        },
        Sample {
            file_name: "sample-sd15-b.safetensors",
            layout: Layout::sd15(Scale::Sample),
            seed: 2,
        },
        Sample {
            file_name: "sample-sdxl-a.safetensors",
            layout: Layout::sdxl(Scale::Sample),
            seed: 3,
        },
        Sample {
            file_name: "sample-sdxl-b.safetensors",
            layout: Layout::sdxl(Scale::Sample),
            seed: 4,
        },
    ]
}

/// What happened to each sample.
#[derive(Debug, PartialEq, Eq)]
pub enum SampleOutcome {
    Written { path: PathBuf, bytes: u64 },
    KeptExisting { path: PathBuf },
}

/// Writes a checkpoint of `layout` with data from `seed` to `path`, streaming tensor by tensor.
/// Refuses to replace an existing file.
pub fn write_checkpoint(path: &Path, layout: &Layout, seed: u64) -> Result<u64, WriteError> {
    let specs = layout.tensors();
    let mut file = PendingFile::create(path, &specs, &Vec::new())?;
    let mut buf = Vec::new();
    for spec in &specs {
        buf.clear();
        fill_tensor(seed, spec, &mut buf);
        file.write(&buf)?;
    }
    file.finish()
}

/// Writes every sample into `dir` (created if needed), keeping files that already exist.
pub fn write_samples(dir: &Path) -> Result<Vec<SampleOutcome>, WriteError> {
    std::fs::create_dir_all(dir).map_err(|source| WriteError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let mut out = Vec::new();
    for s in sample_checkpoints() {
        let path = dir.join(s.file_name);
        if path.exists() {
            out.push(SampleOutcome::KeptExisting { path });
            continue;
        }
        let bytes = write_checkpoint(&path, &s.layout, s.seed)?;
        out.push(SampleOutcome::Written { path, bytes });
    }
    Ok(out)
}
