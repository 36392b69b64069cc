//! The image half of a workflow: text encoding, latents, sampling, the VAE and image outputs —
//! ComfyUI's names, input order, defaults and ranges (`nodes.py`). Samplers and schedulers are
//! the ones Amalgam runs; any other name is a "Value not in list" error that lists them.

use super::types::{CLIP, MODEL, VAE};
use super::{Choices, InputKind, InputSpec, NodeSchema, Operation, float, link, output};

pub const CONDITIONING: &str = "CONDITIONING";
pub const LATENT: &str = "LATENT";
pub const IMAGE: &str = "IMAGE";
pub const MASK: &str = "MASK";

/// ComfyUI's `MAX_RESOLUTION`.
pub const MAX_RESOLUTION: i64 = 16384;

/// The samplers Amalgam runs: the one list, which the generator's `Sampler::from_name` parses
/// (a test there checks every name).
pub const SAMPLER_NAMES: [&str; 7] = [
    "euler",
    "euler_ancestral",
    "heun",
    "dpm_2",
    "dpmpp_2m",
    "ddim",
    "lms",
];

/// The schedulers Amalgam runs (parsed by the generator's `Scheduler::from_name`, in its order).
pub const SCHEDULER_NAMES: [&str; 6] = [
    "normal",
    "karras",
    "exponential",
    "simple",
    "sgm_uniform",
    "ddim_uniform",
];

fn int(name: &str, default: i64, min: i64, max: i64, step: i64) -> InputSpec {
    InputSpec {
        name: name.to_owned(),
        kind: InputKind::Int {
            default,
            min,
            max,
            step,
            control_after_generate: false,
        },
        required: true,
    }
}

fn combo(name: &str, choices: &[&'static str]) -> InputSpec {
    InputSpec {
        name: name.to_owned(),
        kind: InputKind::Combo(Choices::Fixed(choices.to_vec())),
        required: true,
    }
}

fn seed(name: &str) -> InputSpec {
    InputSpec {
        name: name.to_owned(),
        kind: InputKind::Int {
            default: 0,
            min: 0,
            max: i64::MAX,
            step: 1,
            control_after_generate: true,
        },
        required: true,
    }
}

fn text(name: &str, default: &'static str, multiline: bool) -> InputSpec {
    InputSpec {
        name: name.to_owned(),
        kind: InputKind::String { default, multiline },
        required: true,
    }
}

#[allow(clippy::too_many_arguments)]
fn node(
    class_type: &'static str,
    display_name: &'static str,
    category: &'static str,
    description: &'static str,
    inputs: Vec<InputSpec>,
    outputs: Vec<super::OutputSpec>,
    output_node: bool,
    operation: Operation,
) -> NodeSchema {
    NodeSchema {
        class_type,
        display_name,
        category,
        description,
        inputs,
        outputs,
        output_node,
        operation,
    }
}

pub(super) fn schemas() -> Vec<NodeSchema> {
    let sampler_core = || {
        vec![
            int("steps", 20, 1, 10_000, 1),
            float("cfg", 8.0, 0.0, 100.0, 0.1),
            combo("sampler_name", &SAMPLER_NAMES),
            combo("scheduler", &SCHEDULER_NAMES),
            link("positive", CONDITIONING),
            link("negative", CONDITIONING),
            link("latent_image", LATENT),
        ]
    };
    let mut ksampler = vec![link("model", MODEL), seed("seed")];
    ksampler.extend(sampler_core());
    ksampler.push(float("denoise", 1.0, 0.0, 1.0, 0.01));
    let mut advanced = vec![
        link("model", MODEL),
        combo("add_noise", &["enable", "disable"]),
        seed("noise_seed"),
    ];
    advanced.extend(sampler_core());
    advanced.extend([
        int("start_at_step", 0, 0, 10_000, 1),
        int("end_at_step", 10_000, 0, 10_000, 1),
        combo("return_with_leftover_noise", &["disable", "enable"]),
    ]);
    vec![
        node(
            "CLIPTextEncode",
            "CLIP Text Encode (Prompt)",
            "conditioning",
            "Encodes a prompt with the text encoder into the conditioning the sampler follows.",
            vec![text("text", "", true), link("clip", CLIP)],
            vec![output(CONDITIONING, CONDITIONING)],
            false,
            Operation::TextEncode,
        ),
        node(
            "CLIPSetLastLayer",
            "CLIP Set Last Layer",
            "conditioning",
            "Uses an earlier layer of the text encoder (\"CLIP skip\").",
            vec![
                link("clip", CLIP),
                int("stop_at_clip_layer", -1, -24, -1, 1),
            ],
            vec![output(CLIP, CLIP)],
            false,
            Operation::SetClipLayer,
        ),
        node(
            "EmptyLatentImage",
            "Empty Latent Image",
            "latent",
            "A batch of empty latents to sample from.",
            vec![
                int("width", 512, 16, MAX_RESOLUTION, 8),
                int("height", 512, 16, MAX_RESOLUTION, 8),
                int("batch_size", 1, 1, 4096, 1),
            ],
            vec![output(LATENT, LATENT)],
            false,
            Operation::EmptyLatent,
        ),
        node(
            "RepeatLatentBatch",
            "Repeat Latent Batch",
            "latent/batch",
            "Repeats a batch of latents.",
            vec![link("samples", LATENT), int("amount", 1, 1, 64, 1)],
            vec![output(LATENT, LATENT)],
            false,
            Operation::RepeatLatent,
        ),
        node(
            "KSampler",
            "KSampler",
            "sampling",
            "Denoises the latent with the model, guided by the positive and negative conditioning.",
            ksampler,
            vec![output(LATENT, LATENT)],
            false,
            Operation::Sample { advanced: false },
        ),
        node(
            "KSamplerAdvanced",
            "KSampler (Advanced)",
            "sampling",
            "KSampler with control over noise and the steps that run.",
            advanced,
            vec![output(LATENT, LATENT)],
            false,
            Operation::Sample { advanced: true },
        ),
        node(
            "VAEDecode",
            "VAE Decode",
            "latent",
            "Decodes latents into images.",
            vec![link("samples", LATENT), link("vae", VAE)],
            vec![output(IMAGE, IMAGE)],
            false,
            Operation::VaeDecode,
        ),
        node(
            "VAEEncode",
            "VAE Encode",
            "latent",
            "Encodes images into latents.",
            vec![link("pixels", IMAGE), link("vae", VAE)],
            vec![output(LATENT, LATENT)],
            false,
            Operation::VaeEncode,
        ),
        node(
            "LoadImage",
            "Load Image",
            "image",
            "Loads an image from the input folder; its alpha channel becomes the mask.",
            vec![InputSpec {
                name: "image".into(),
                kind: InputKind::Combo(Choices::ModelFolder("input")),
                required: true,
            }],
            vec![output(IMAGE, IMAGE), output(MASK, MASK)],
            false,
            Operation::LoadImage,
        ),
        node(
            "VAEEncodeForInpaint",
            "VAE Encode (for Inpainting)",
            "latent/inpaint",
            "Encodes the image with the masked part greyed out, and sets the grown mask as the latent's noise mask.",
            vec![
                link("pixels", IMAGE),
                link("vae", VAE),
                link("mask", MASK),
                int("grow_mask_by", 6, 0, 64, 1),
            ],
            vec![output(LATENT, LATENT)],
            false,
            Operation::VaeEncodeInpaint,
        ),
        node(
            "SetLatentNoiseMask",
            "Set Latent Noise Mask",
            "latent/inpaint",
            "Limits sampling to the masked part of the latent.",
            vec![link("samples", LATENT), link("mask", MASK)],
            vec![output(LATENT, LATENT)],
            false,
            Operation::SetNoiseMask,
        ),
        node(
            "SaveImage",
            "Save Image",
            "image",
            "Saves the images as PNG files in the output folder, with the workflow in them.",
            vec![
                link("images", IMAGE),
                text("filename_prefix", "ComfyUI", false),
            ],
            vec![],
            true,
            Operation::SaveImage { temp: false },
        ),
        node(
            "PreviewImage",
            "Preview Image",
            "image",
            "Shows the images; they are written to the temporary folder only.",
            vec![link("images", IMAGE)],
            vec![],
            true,
            Operation::SaveImage { temp: true },
        ),
    ]
}
