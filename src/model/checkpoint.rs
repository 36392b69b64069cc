//! A checkpoint: an open tensor file plus what it is (architecture, components).

use std::collections::BTreeMap;
use std::path::Path;

use crate::format::{DType, ReadError, TensorFile, TensorRecord};

use super::arch::{Detection, detect};
use super::components::{Component, component_of};

/// An open checkpoint with its detected architecture.
#[derive(Debug)]
pub struct Checkpoint {
    pub file: TensorFile,
    pub detection: Detection,
}

/// Tensor count and bytes of one component.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ComponentStats {
    pub tensors: usize,
    pub bytes: u64,
}

impl Checkpoint {
    /// Opens, validates and detects a checkpoint. Reads no tensor data (except the one small
    /// bias SD2 detection needs).
    pub fn open(path: &Path) -> Result<Checkpoint, ReadError> {
        let file = TensorFile::open(path)?;
        let detection = detect(&file);
        Ok(Checkpoint { file, detection })
    }

    pub fn component_of(&self, t: &TensorRecord) -> Component {
        component_of(&t.name, &self.detection.unet_prefix)
    }

    /// Tensors and bytes per component, for every component (zero where absent).
    pub fn component_stats(&self) -> BTreeMap<Component, ComponentStats> {
        let mut out: BTreeMap<Component, ComponentStats> = Component::ALL
            .into_iter()
            .map(|c| (c, ComponentStats::default()))
            .collect();
        for t in self.file.tensors() {
            let s = out.entry(self.component_of(t)).or_default();
            s.tensors += 1;
            s.bytes += t.len;
        }
        out
    }

    /// Number of tensors per dtype.
    pub fn dtype_counts(&self) -> BTreeMap<DType, usize> {
        let mut out = BTreeMap::new();
        for t in self.file.tensors() {
            *out.entry(t.dtype).or_default() += 1;
        }
        out
    }

    /// The metadata value of `key`, if the file has one.
    pub fn metadata_value(&self, key: &str) -> Option<&str> {
        self.file
            .metadata()?
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether a ComfyUI workflow (or at least an API prompt) is embedded in the metadata.
    /// The first key that marks scaled or quantised weights — ComfyUI's scaled-fp8 marker
    /// (`scaled_fp8`), per-tensor scales (`….scale_weight`, `….weight_scale`, `….scale_input`,
    /// `….input_scale`) or `comfy_quant` layouts. Their stored values are not the weights (the
    /// weight is the stored value times the scale), so they must not be merged or run as stored.
    pub fn quantization_key(&self) -> Option<&str> {
        const SUFFIXES: [&str; 4] = [
            ".scale_weight",
            ".weight_scale",
            ".scale_input",
            ".input_scale",
        ];
        self.file
            .tensors()
            .iter()
            .map(|t| t.name.as_str())
            .find(|k| {
                let last = k.rsplit('.').next().unwrap_or(k);
                last == "scaled_fp8"
                    || last == "comfy_quant"
                    || k.contains(".comfy_quant")
                    || SUFFIXES.iter().any(|s| k.ends_with(s))
            })
    }

    pub fn has_workflow(&self) -> bool {
        self.metadata_value("workflow")
            .is_some_and(|w| !w.is_empty())
            || self.metadata_value("prompt").is_some_and(|p| !p.is_empty())
    }
}
