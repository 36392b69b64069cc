//! What a checkpoint is: architecture and prediction type, detected from keys and shapes.
//!
//! Follows ComfyUI's `model_detection` (reference §3.2–3.3): the diffusion-model prefix is the
//! one most keys share; MMDiT (SD3) and Flux are recognised by signature keys; the UNet family is
//! told apart by the cross-attention context dim and the ADM (label embedding) input width. The
//! model width (`model_channels`) is reported but never required, so fine-tunes and small test
//! models with the right structure are recognised. Prediction markers (`v_pred`, `ztsnr`,
//! `edm_vpred.*`, `edm_mean`/`edm_std`) are honoured for every architecture.
//!
//! Only SD2 needs tensor data: like ComfyUI, it tells v-prediction from eps by the spread of one
//! small bias (`output_blocks.11.1.transformer_blocks.0.norm1.bias`, ~1–2 KiB).

use crate::format::TensorFile;

/// Checkpoint family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    Sd1,
    Sd2,
    Sdxl,
    SdxlRefiner,
    Sd3,
    Flux,
    /// No known family: treated as a bare diffusion model.
    Unknown,
}

impl Architecture {
    /// The stable name used in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Architecture::Sd1 => "sd1",
            Architecture::Sd2 => "sd2",
            Architecture::Sdxl => "sdxl",
            Architecture::SdxlRefiner => "sdxl_refiner",
            Architecture::Sd3 => "sd3",
            Architecture::Flux => "flux",
            Architecture::Unknown => "unknown",
        }
    }
}

/// A sub-kind within a family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// 9 input channels (SD1/SD2/SDXL inpainting).
    Inpaint,
    /// 8 input channels (InstructPix2Pix / SDXL edit).
    InstructPix2Pix,
    /// SD2 unCLIP (ADM input 1536 or 2048).
    Unclip,
    /// Flux with guidance embedding.
    FluxDev,
    /// Flux without guidance embedding.
    FluxSchnell,
    /// Flux Fill (96 input features).
    FluxFill,
}

impl Variant {
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Inpaint => "inpaint",
            Variant::InstructPix2Pix => "instructpix2pix",
            Variant::Unclip => "unclip",
            Variant::FluxDev => "dev",
            Variant::FluxSchnell => "schnell",
            Variant::FluxFill => "fill",
        }
    }
}

/// What the model predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prediction {
    Eps,
    V,
    /// EDM (Playground 2.5 style, `edm_mean`/`edm_std`).
    Edm,
    /// V-prediction with EDM sampling (CosXL, `edm_vpred.sigma_*`).
    EdmV,
    /// Rectified flow (SD3, Flux).
    Flow,
    Unknown,
}

impl Prediction {
    pub fn as_str(self) -> &'static str {
        match self {
            Prediction::Eps => "eps",
            Prediction::V => "v",
            Prediction::Edm => "edm",
            Prediction::EdmV => "edm_v",
            Prediction::Flow => "flow",
            Prediction::Unknown => "unknown",
        }
    }
}

/// Everything detection found out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detection {
    pub architecture: Architecture,
    pub variant: Option<Variant>,
    pub prediction: Prediction,
    /// Zero terminal SNR (`ztsnr` marker with `v_pred`).
    pub zsnr: bool,
    /// Prefix of diffusion-model keys in this file (`"model.diffusion_model."`, or `""` for a bare
    /// diffusion-model file).
    pub unet_prefix: String,
    pub in_channels: Option<usize>,
    pub model_channels: Option<usize>,
    pub context_dim: Option<usize>,
    pub adm_in_channels: Option<usize>,
}

/// The prefix ComfyUI uses for diffusion-model keys in a full checkpoint.
pub const UNET_PREFIX: &str = "model.diffusion_model.";

/// Detects the architecture of an open checkpoint.
pub fn detect(file: &TensorFile) -> Detection {
    let prefix = unet_prefix(file);
    let p = |k: &str| format!("{prefix}{k}");
    let has = |k: &str| file.get(&p(k)).is_some();
    let dim = |k: &str, i: usize| file.get(&p(k)).and_then(|t| t.shape.get(i).copied());

    let mut d = Detection {
        architecture: Architecture::Unknown,
        variant: None,
        prediction: Prediction::Unknown,
        zsnr: false,
        unet_prefix: prefix.clone(),
        in_channels: None,
        model_channels: None,
        context_dim: None,
        adm_in_channels: None,
    };

    if has("joint_blocks.0.context_block.attn.qkv.weight") {
        d.architecture = Architecture::Sd3;
        d.in_channels = dim("x_embedder.proj.weight", 1);
        d.prediction = Prediction::Flow;
    } else if has("double_blocks.0.img_attn.norm.key_norm.scale") && has("img_in.weight") {
        d.architecture = Architecture::Flux;
        d.in_channels = dim("img_in.weight", 1).map(|c| c / 4);
        d.variant = Some(if d.in_channels == Some(96) {
            Variant::FluxFill
        } else if has("guidance_in.in_layer.weight") {
            Variant::FluxDev
        } else {
            Variant::FluxSchnell
        });
        d.prediction = Prediction::Flow;
    } else if has("input_blocks.0.0.weight") {
        d.in_channels = dim("input_blocks.0.0.weight", 1);
        d.model_channels = dim("input_blocks.0.0.weight", 0);
        d.adm_in_channels = dim("label_emb.0.0.weight", 1);
        let attn2_k = ".transformer_blocks.0.attn2.to_k.weight";
        d.context_dim = file
            .tensors()
            .iter()
            .find(|t| t.name.starts_with(prefix.as_str()) && t.name.ends_with(attn2_k))
            .and_then(|t| t.shape.get(1).copied());
        d.architecture = match (d.context_dim, d.adm_in_channels) {
            (Some(768), None) => Architecture::Sd1,
            (Some(1024), None) => Architecture::Sd2,
            (Some(1024), Some(1536 | 2048)) => {
                d.variant = Some(Variant::Unclip);
                Architecture::Sd2
            }
            (Some(1280), Some(2560)) => Architecture::SdxlRefiner,
            (Some(2048), Some(2816)) => Architecture::Sdxl,
            _ => Architecture::Unknown,
        };
        if d.architecture != Architecture::Unknown && d.variant.is_none() {
            d.variant = match d.in_channels {
                Some(9) => Some(Variant::Inpaint),
                Some(8) => Some(Variant::InstructPix2Pix),
                _ => None,
            };
        }
    }

    // Markers written by ComfyUI's save (§2.2) decide the prediction type first.
    let marker = |k: &str| file.get(k).is_some();
    if marker("edm_vpred.sigma_max") {
        d.prediction = Prediction::EdmV;
    } else if marker("edm_mean") && marker("edm_std") {
        d.prediction = Prediction::Edm;
    } else if marker("v_pred") {
        d.prediction = Prediction::V;
        d.zsnr = marker("ztsnr");
    } else if d.prediction == Prediction::Unknown {
        d.prediction = match d.architecture {
            Architecture::Sd2 if d.in_channels == Some(4) && d.variant.is_none() => {
                sd2_prediction(file, &prefix)
            }
            Architecture::Unknown => Prediction::Unknown,
            _ => Prediction::Eps,
        };
    }
    d
}

/// ComfyUI's rule: the most common of the known diffusion-model prefixes if it has more than 5
/// keys; a bare diffusion-model file (keys at the root) has prefix `""`.
fn unet_prefix(file: &TensorFile) -> String {
    let candidates = [UNET_PREFIX, "model.model.", "net."];
    let best = candidates
        .iter()
        .map(|c| {
            (
                file.tensors()
                    .iter()
                    .filter(|t| t.name.starts_with(c))
                    .count(),
                *c,
            )
        })
        .max_by_key(|&(n, _)| n);
    if let Some((n, c)) = best
        && n > 5
    {
        return c.to_owned();
    }
    let bare_signatures = [
        "input_blocks.0.0.weight",
        "joint_blocks.0.context_block.attn.qkv.weight",
        "double_blocks.0.img_attn.norm.key_norm.scale",
    ];
    if bare_signatures.iter().any(|k| file.get(k).is_some()) {
        return String::new();
    }
    UNET_PREFIX.to_owned()
}

/// SD2.x v-prediction check from ComfyUI's `SD20.model_type`.
fn sd2_prediction(file: &TensorFile, prefix: &str) -> Prediction {
    let key = format!("{prefix}output_blocks.11.1.transformer_blocks.0.norm1.bias");
    let Some(values) = file.get(&key).and_then(|t| file.read_f32(t)) else {
        return Prediction::Eps;
    };
    if values.len() < 2 {
        return Prediction::Eps;
    }
    // torch.std is the unbiased (n - 1) estimate.
    let n = values.len() as f64;
    let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = values
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / (n - 1.0);
    if var.sqrt() > 0.09 {
        Prediction::V
    } else {
        Prediction::Eps
    }
}
