//! Input files as the engine sees them: an opened checkpoint (or standalone VAE) with its keys
//! grouped by component and named the way ComfyUI names them internally.
//!
//! Key spaces decide which tensors of two checkpoints meet in a merge:
//! - MODEL: the diffusion-model key without the file's prefix (`input_blocks.0.0.weight`), which
//!   is also what block-merge prefixes match against.
//! - CLIP: ComfyUI's text-encoder names (`clip_l.transformer.text_model.…`, `clip_g.…`,
//!   `clip_h.…`, `t5xxl.…`), so an SD1 and an SDXL CLIP-L meet as in ComfyUI. OpenCLIP towers
//!   keep their own sub-names (a merge is element-wise, so the split/concat ComfyUI does on load
//!   and save changes no value).
//! - VAE: the autoencoder's own names (`encoder.…`, `decoder.…`, `quant_conv.…`).
//!
//! Tensor bytes are read with positioned reads into the caller's buffers rather than through
//! the memory map: touched pages of a mapping count as resident memory (13 GiB for an SDXL
//! merge), reads into reused buffers do not.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::format::{ReadError, TensorFile, TensorRecord};
use crate::model::arch::{Architecture, Detection, detect};
use crate::model::components::{Component, component_of};

/// Key prefixes of the VAE module that ComfyUI keeps (others, like a training `loss.*`, are
/// dropped on load).
const VAE_MODULES: [&str; 4] = ["encoder.", "decoder.", "quant_conv.", "post_quant_conv."];

/// An opened input file.
#[derive(Debug)]
pub struct Source {
    pub path: PathBuf,
    pub file: TensorFile,
    reader: File,
    pub detection: Detection,
    model: HashMap<String, usize>,
    clip: HashMap<String, usize>,
    vae: HashMap<String, usize>,
    /// Internal names in file order, per component.
    model_order: Vec<String>,
    clip_order: Vec<String>,
    vae_order: Vec<String>,
}

impl Source {
    /// Opens a full checkpoint (MODEL, CLIP and VAE keys).
    pub fn open_checkpoint(path: &Path) -> Result<Source, ReadError> {
        Self::open(path, false)
    }

    /// Opens a standalone VAE file (bare `encoder.*` keys, or a checkpoint's VAE part).
    pub fn open_vae(path: &Path) -> Result<Source, ReadError> {
        Self::open(path, true)
    }

    fn open(path: &Path, vae_only: bool) -> Result<Source, ReadError> {
        let file = TensorFile::open(path)?;
        let reader = File::open(path).map_err(|e| ReadError {
            path: path.to_owned(),
            kind: e.into(),
        })?;
        let detection = detect(&file);
        let mut s = Source {
            path: path.to_owned(),
            reader,
            detection,
            model: HashMap::new(),
            clip: HashMap::new(),
            vae: HashMap::new(),
            model_order: Vec::new(),
            clip_order: Vec::new(),
            vae_order: Vec::new(),
            file,
        };
        let arch = s.detection.architecture;
        let prefix = s.detection.unet_prefix.clone();
        for (i, t) in s.file.tensors().iter().enumerate() {
            let name = t.name.as_str();
            // In a standalone VAE file every key is a VAE key (bare or prefixed).
            let component = if vae_only {
                Component::Vae
            } else {
                component_of(name, &prefix)
            };
            match component {
                Component::Model => {
                    let rel = name
                        .strip_prefix(prefix.as_str())
                        .unwrap_or(name)
                        .to_owned();
                    s.model.insert(rel.clone(), i);
                    s.model_order.push(rel);
                }
                Component::Clip => {
                    let internal = clip_internal(arch, name);
                    s.clip.insert(internal.clone(), i);
                    s.clip_order.push(internal);
                }
                Component::Vae => {
                    if let Some(bare) = vae_module_key(name) {
                        s.vae.insert(bare.to_owned(), i);
                        s.vae_order.push(bare.to_owned());
                    }
                }
                Component::Other => {}
            }
        }
        Ok(s)
    }

    pub fn architecture(&self) -> Architecture {
        self.detection.architecture
    }

    /// The tensor of `component` with internal name `key`.
    pub fn get(&self, component: Component, key: &str) -> Option<&TensorRecord> {
        let map = match component {
            Component::Model => &self.model,
            Component::Clip => &self.clip,
            Component::Vae => &self.vae,
            Component::Other => return None,
        };
        map.get(key).map(|&i| &self.file.tensors()[i])
    }

    /// Internal names of a component, in file order.
    pub fn keys(&self, component: Component) -> &[String] {
        match component {
            Component::Model => &self.model_order,
            Component::Clip => &self.clip_order,
            Component::Vae => &self.vae_order,
            Component::Other => &[],
        }
    }

    /// Reads `buf.len()` bytes at `offset` of the file.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        #[cfg(unix)]
        {
            std::os::unix::fs::FileExt::read_exact_at(&self.reader, buf, offset)
        }
        #[cfg(windows)]
        {
            let mut done = 0;
            while done < buf.len() {
                let n = std::os::windows::fs::FileExt::seek_read(
                    &self.reader,
                    &mut buf[done..],
                    offset + done as u64,
                )?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                done += n;
            }
            Ok(())
        }
    }
}

/// The VAE module's own name for a key (`first_stage_model.`/`vae.` prefix removed), or `None`
/// for keys ComfyUI's VAE ignores.
fn vae_module_key(name: &str) -> Option<&str> {
    let bare = name
        .strip_prefix("first_stage_model.")
        .or_else(|| name.strip_prefix("vae."))
        .unwrap_or(name);
    VAE_MODULES
        .iter()
        .any(|m| bare.starts_with(m))
        .then_some(bare)
}

/// ComfyUI's internal text-encoder name for a checkpoint key (reference §3.2 step 6).
pub fn clip_internal(arch: Architecture, key: &str) -> String {
    let swap = |from: &str, to: &str| key.strip_prefix(from).map(|rest| format!("{to}{rest}"));
    let mapped = match arch {
        Architecture::Sd1 => key.strip_prefix("cond_stage_model.").map(|rest| {
            match rest.strip_prefix("transformer.") {
                // Old checkpoints lack the `text_model.` level; ComfyUI adds it.
                Some(t) if !t.starts_with("text_model.") && !t.starts_with("text_projection") => {
                    format!("clip_l.transformer.text_model.{t}")
                }
                _ => format!("clip_l.{rest}"),
            }
        }),
        Architecture::Sd2 => swap("cond_stage_model.model.", "clip_h.")
            .or_else(|| swap("conditioner.embedders.0.model.", "clip_h.")),
        Architecture::Sdxl => swap(
            "conditioner.embedders.0.transformer.",
            "clip_l.transformer.",
        )
        .or_else(|| swap("conditioner.embedders.1.model.", "clip_g.")),
        Architecture::SdxlRefiner => swap("conditioner.embedders.0.model.", "clip_g."),
        _ => key.strip_prefix("text_encoders.").map(str::to_owned),
    };
    mapped.unwrap_or_else(|| key.to_owned())
}

/// The checkpoint key ComfyUI's CheckpointSave writes for an internal CLIP name, for a model of
/// `arch` (reference §2.3); `None` when the architecture has no place for it.
pub fn clip_save_key(arch: Architecture, internal: &str) -> Option<String> {
    let swap = |from: &str, to: &str| {
        internal
            .strip_prefix(from)
            .map(|rest| format!("{to}{rest}"))
    };
    match arch {
        Architecture::Sd1 => swap("clip_l.", "cond_stage_model."),
        Architecture::Sd2 => swap("clip_h.", "cond_stage_model.model."),
        Architecture::Sdxl => swap(
            "clip_l.transformer.",
            "conditioner.embedders.0.transformer.",
        )
        .or_else(|| swap("clip_g.", "conditioner.embedders.1.model.")),
        Architecture::SdxlRefiner => swap("clip_g.", "conditioner.embedders.0.model."),
        _ => Some(format!("text_encoders.{internal}")),
    }
}

/// The VAE key prefix in a checkpoint of `arch`.
pub fn vae_save_prefix(arch: Architecture) -> &'static str {
    match arch {
        Architecture::Flux | Architecture::Unknown => "vae.",
        _ => "first_stage_model.",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_names_map_both_ways() {
        let cases = [
            (
                Architecture::Sd1,
                "cond_stage_model.transformer.text_model.final_layer_norm.weight",
                "clip_l.transformer.text_model.final_layer_norm.weight",
            ),
            (
                Architecture::Sdxl,
                "conditioner.embedders.0.transformer.text_model.embeddings.position_ids",
                "clip_l.transformer.text_model.embeddings.position_ids",
            ),
            (
                Architecture::Sdxl,
                "conditioner.embedders.1.model.ln_final.weight",
                "clip_g.ln_final.weight",
            ),
            (
                Architecture::Sd2,
                "cond_stage_model.model.logit_scale",
                "clip_h.logit_scale",
            ),
            (
                Architecture::SdxlRefiner,
                "conditioner.embedders.0.model.text_projection",
                "clip_g.text_projection",
            ),
            (
                Architecture::Flux,
                "text_encoders.t5xxl.transformer.shared.weight",
                "t5xxl.transformer.shared.weight",
            ),
        ];
        for (arch, file, internal) in cases {
            assert_eq!(clip_internal(arch, file), internal);
            assert_eq!(clip_save_key(arch, internal).as_deref(), Some(file));
        }
        // Old SD1 layout gains `text_model.` and saves in the new form.
        let old = "cond_stage_model.transformer.encoder.layers.0.mlp.fc1.weight";
        let internal = clip_internal(Architecture::Sd1, old);
        assert_eq!(
            internal,
            "clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.weight"
        );
        assert_eq!(
            clip_save_key(Architecture::Sd1, &internal).as_deref(),
            Some("cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight")
        );
    }
}
