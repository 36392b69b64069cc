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

/// The samples `amalgam samples` writes: two SD1.5 and two SDXL checkpoints. At full scale they
/// are named `full-…` so they never shadow the small ones.
pub fn sample_checkpoints(scale: Scale) -> Vec<Sample> {
    let full = scale == Scale::Full;
    let sample = |small: &'static str, large: &'static str, layout: Layout, seed| Sample {
        file_name: if full { large } else { small },
        layout,
        seed,
    };
    vec![
        sample(
            "sample-sd15-a.safetensors",
            "full-sd15-a.safetensors",
            Layout::sd15(scale),
            1,
        ),
        sample(
            "sample-sd15-b.safetensors",
            "full-sd15-b.safetensors",
            Layout::sd15(scale),
            2,
        ),
        sample(
            "sample-sdxl-a.safetensors",
            "full-sdxl-a.safetensors",
            Layout::sdxl(scale),
            3,
        ),
        sample(
            "sample-sdxl-b.safetensors",
            "full-sdxl-b.safetensors",
            Layout::sdxl(scale),
            4,
        ),
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

/// Writes every sample (or only those of `family`, `sd15` / `sdxl`) into `dir` (created if
/// needed), keeping files that already exist.
pub fn write_samples(
    dir: &Path,
    scale: Scale,
    family: Option<&str>,
) -> Result<Vec<SampleOutcome>, WriteError> {
    std::fs::create_dir_all(dir).map_err(|source| WriteError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let mut out = Vec::new();
    for s in sample_checkpoints(scale) {
        if family.is_some_and(|f| !s.file_name.contains(&format!("-{f}-"))) {
            continue;
        }
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
