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

use crate::format::{ReadError, TensorRecord};
use crate::model::Checkpoint;
use crate::model::arch::Architecture;
use crate::model::components::{Component, component_of};
use crate::model::save_layout::clip_internal;

/// Key prefixes of the VAE module that ComfyUI keeps (others, like a training `loss.*`, are
/// dropped on load).
const VAE_MODULES: [&str; 4] = ["encoder.", "decoder.", "quant_conv.", "post_quant_conv."];

/// An opened input file: the checkpoint (its tensor table and detection) with its keys
/// indexed by component in ComfyUI's internal names, and a handle for positioned reads.
#[derive(Debug)]
pub struct Source {
    pub path: PathBuf,
    pub checkpoint: Checkpoint,
    reader: File,
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
        let checkpoint = Checkpoint::open(path)?;
        let reader = File::open(path).map_err(|e| ReadError {
            path: path.to_owned(),
            kind: e.into(),
        })?;
        let mut s = Source {
            path: path.to_owned(),
            reader,
            model: HashMap::new(),
            clip: HashMap::new(),
            vae: HashMap::new(),
            model_order: Vec::new(),
            clip_order: Vec::new(),
            vae_order: Vec::new(),
            checkpoint,
        };
        let arch = s.checkpoint.detection.architecture;
        let prefix = s.checkpoint.detection.unet_prefix.clone();
        for (i, t) in s.checkpoint.file.tensors().iter().enumerate() {
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
        self.checkpoint.detection.architecture
    }

    /// The tensor of `component` with internal name `key`.
    pub fn get(&self, component: Component, key: &str) -> Option<&TensorRecord> {
        let map = match component {
            Component::Model => &self.model,
            Component::Clip => &self.clip,
            Component::Vae => &self.vae,
            Component::Other => return None,
        };
        map.get(key).map(|&i| &self.checkpoint.file.tensors()[i])
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
        crate::format::read_exact_at(&self.reader, offset, buf)
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
