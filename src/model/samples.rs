//! Small sample checkpoints, so a new user (and the tests) can merge without downloading.
//!
//! Besides two SD1.5 and two SDXL checkpoints there is a small LoRA for the SD1.5 samples and a
//! standalone VAE, so LoRA baking and VAELoader can be tried too.
//!
//! Each sample has the full key layout of its family at reduced width (see [`super::layouts`]),
//! seeded data, fp16 like real releases, and a few megabytes of size. Existing files are never
//! overwritten.

use std::path::{Path, PathBuf};

use crate::format::DType;
use crate::format::safetensors::{PendingFile, TensorSpec, WriteError};

use super::layouts::{Layout, Scale, fill_tensor};

/// One sample checkpoint: file name, layout and seed.
pub struct Sample {
    pub file_name: &'static str,
    pub layout: Layout,
    pub seed: u64,
}

/// The samples `amalgam samples` writes: two SD1.5 and two SDXL checkpoints, and two SD1.5
/// checkpoints wide enough for the image nodes to run ([`Scale::Small`], ~90 MB each), so the
/// text-to-image example works before any real model is downloaded. At full scale they are
/// named `full-…` so they never shadow the small ones (and the runnable pair is not written).
pub fn sample_checkpoints(scale: Scale) -> Vec<Sample> {
    let full = scale == Scale::Full;
    let sample = |small: &'static str, large: &'static str, layout: Layout, seed| Sample {
        file_name: if full { large } else { small },
        layout,
        seed,
    };
    let mut samples = vec![
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
    ];
    if !full {
        for (file_name, seed) in [(RUNNABLE_SAMPLES[0], 5), (RUNNABLE_SAMPLES[1], 6)] {
            samples.push(Sample {
                file_name,
                layout: Layout::sd15(Scale::Small),
                seed,
            });
        }
    }
    samples
}

/// The two samples the image nodes can run on (the text-to-image example uses them).
pub const RUNNABLE_SAMPLES: [&str; 2] = [
    "sample-sd15-small-a.safetensors",
    "sample-sd15-small-b.safetensors",
];

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
/// needed), keeping files that already exist. Without `runnable`, the two runnable samples
/// (the largest, 117 MB each) are left out: merge tests do not need them.
pub fn write_samples(
    dir: &Path,
    scale: Scale,
    family: Option<&str>,
    runnable: bool,
) -> Result<Vec<SampleOutcome>, WriteError> {
    std::fs::create_dir_all(dir).map_err(|error| WriteError::Io {
        path: dir.to_owned(),
        error,
    })?;
    let mut out = Vec::new();
    for s in sample_checkpoints(scale) {
        if family.is_some_and(|f| !s.file_name.contains(&format!("-{f}-")))
            || (!runnable && RUNNABLE_SAMPLES.contains(&s.file_name))
        {
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

/// A LoRA for the SD1.5 samples, in kohya naming: rank 4 (alpha 2) on every attention
/// projection of the UNet and of the text encoder.
pub fn sample_lora() -> Vec<TensorSpec> {
    let layout = Layout::sd15(Scale::Sample);
    let mut specs = Vec::new();
    let rank = 4;
    for t in layout.tensors() {
        let name = t.name.as_str();
        let kohya = if let Some(k) = name.strip_prefix(super::arch::UNET_PREFIX) {
            let is_proj = [
                ".to_q.weight",
                ".to_k.weight",
                ".to_v.weight",
                ".to_out.0.weight",
            ]
            .iter()
            .any(|s| k.ends_with(s));
            if !is_proj {
                continue;
            }
            let Some(d) = super::lora::unet_to_diffusers(k, 4) else {
                continue;
            };
            format!(
                "lora_unet_{}",
                d.trim_end_matches(".weight").replace('.', "_")
            )
        } else if let Some(k) = name.strip_prefix("cond_stage_model.transformer.") {
            let is_proj = [
                "q_proj.weight",
                "k_proj.weight",
                "v_proj.weight",
                "out_proj.weight",
            ]
            .iter()
            .any(|s| k.ends_with(s));
            if !is_proj {
                continue;
            }
            format!(
                "lora_te_{}",
                k.trim_end_matches(".weight").replace('.', "_")
            )
        } else {
            continue;
        };
        let (out, inner) = (t.shape[0], t.shape[1]);
        specs.push(TensorSpec::new(
            format!("{kohya}.lora_up.weight"),
            DType::F16,
            &[out, rank],
        ));
        specs.push(TensorSpec::new(
            format!("{kohya}.lora_down.weight"),
            DType::F16,
            &[rank, inner],
        ));
        specs.push(TensorSpec::new(format!("{kohya}.alpha"), DType::F32, &[]));
    }
    specs
}

/// Writes the sample LoRA and a standalone sample VAE into their folders (created if needed),
/// keeping files that already exist.
pub fn write_sample_extras(loras: &Path, vae: &Path) -> Result<Vec<SampleOutcome>, WriteError> {
    let mut out = Vec::new();
    let mut vae_specs = Vec::new();
    super::layouts::vae(&mut vae_specs, "", 8, DType::F16);
    for (dir, file, specs, seed) in [
        (loras, "sample-lora-sd15.safetensors", sample_lora(), 5),
        (vae, "sample-vae.safetensors", vae_specs, 6),
    ] {
        std::fs::create_dir_all(dir).map_err(|error| WriteError::Io {
            path: dir.to_owned(),
            error,
        })?;
        let path = dir.join(file);
        if path.exists() {
            out.push(SampleOutcome::KeptExisting { path });
            continue;
        }
        let mut pending = PendingFile::create(&path, &specs, &Vec::new())?;
        let mut buf = Vec::new();
        for s in &specs {
            buf.clear();
            if s.name.ends_with(".alpha") {
                buf.extend_from_slice(&2.0f32.to_le_bytes());
            } else {
                fill_tensor(seed, s, &mut buf);
            }
            pending.write(&buf)?;
        }
        let bytes = pending.finish()?;
        out.push(SampleOutcome::Written { path, bytes });
    }
    Ok(out)
}
