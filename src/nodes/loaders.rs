//! Loader nodes: checkpoints, VAEs and LoRAs from the model folders.

use super::types::{CLIP, MODEL, VAE};
use super::{Choices, InputKind, InputSpec, NodeSchema, Operation, float, link, output};

fn model_combo(name: &str, folder: &'static str) -> InputSpec {
    InputSpec {
        name: name.to_owned(),
        kind: InputKind::Combo(Choices::ModelFolder(folder)),
        required: true,
    }
}

pub(super) fn schemas() -> Vec<NodeSchema> {
    let strength = |name| float(name, 1.0, -100.0, 100.0, 0.01);
    vec![
        NodeSchema {
            class_type: "CheckpointLoaderSimple",
            display_name: "Load Checkpoint",
            category: "loaders",
            description: "Loads a diffusion model checkpoint: its MODEL, CLIP and VAE.",
            inputs: vec![model_combo("ckpt_name", "checkpoints")],
            outputs: vec![output(MODEL, MODEL), output(CLIP, CLIP), output(VAE, VAE)],
            output_node: false,
            operation: Operation::LoadCheckpoint,
        },
        NodeSchema {
            class_type: "VAELoader",
            display_name: "Load VAE",
            category: "loaders",
            description: "Loads a standalone VAE.",
            inputs: vec![model_combo("vae_name", "vae")],
            outputs: vec![output(VAE, VAE)],
            output_node: false,
            operation: Operation::LoadVae,
        },
        NodeSchema {
            class_type: "LoraLoader",
            display_name: "Load LoRA",
            category: "loaders",
            description: "Applies a LoRA to the MODEL and CLIP.",
            inputs: vec![
                link("model", MODEL),
                link("clip", CLIP),
                model_combo("lora_name", "loras"),
                strength("strength_model"),
                strength("strength_clip"),
            ],
            outputs: vec![output(MODEL, MODEL), output(CLIP, CLIP)],
            output_node: false,
            operation: Operation::LoadLora { clip: true },
        },
        NodeSchema {
            class_type: "LoraLoaderModelOnly",
            display_name: "LoraLoaderModelOnly",
            category: "loaders",
            description: "Applies a LoRA to the MODEL only.",
            inputs: vec![
                link("model", MODEL),
                model_combo("lora_name", "loras"),
                strength("strength_model"),
            ],
            outputs: vec![output(MODEL, MODEL)],
            output_node: false,
            operation: Operation::LoadLora { clip: false },
        },
    ]
}
