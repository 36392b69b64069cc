//! Save nodes: they write `.safetensors` files below the output folder.

use super::types::{CLIP, CLIP_VISION, MODEL, VAE};
use super::{InputKind, InputSpec, NodeSchema, Operation, link};

fn prefix(default: &'static str) -> InputSpec {
    InputSpec {
        name: "filename_prefix".into(),
        kind: InputKind::String {
            default,
            multiline: false,
        },
        required: true,
    }
}

fn save(
    class_type: &'static str,
    display_name: &'static str,
    mut inputs: Vec<InputSpec>,
    default_prefix: &'static str,
    operation: Operation,
    description: &'static str,
) -> NodeSchema {
    inputs.push(prefix(default_prefix));
    NodeSchema {
        class_type,
        display_name,
        category: "advanced/model_merging",
        description,
        inputs,
        outputs: vec![],
        output_node: true,
        operation,
    }
}

pub(super) fn schemas() -> Vec<NodeSchema> {
    vec![
        save(
            "CheckpointSave",
            "Save Checkpoint",
            vec![link("model", MODEL), link("clip", CLIP), link("vae", VAE)],
            "checkpoints/ComfyUI",
            Operation::SaveCheckpoint,
            "Writes MODEL, CLIP and VAE as one checkpoint, with the workflow in its metadata.",
        ),
        save(
            "CLIPSave",
            "CLIPSave",
            vec![link("clip", CLIP)],
            "clip/ComfyUI",
            Operation::SaveClip,
            "Writes each text encoder to its own file.",
        ),
        save(
            "VAESave",
            "VAESave",
            vec![link("vae", VAE)],
            "vae/ComfyUI_vae",
            Operation::SaveVae,
            "Writes the VAE.",
        ),
        save(
            "ModelSave",
            "ModelSave",
            vec![link("model", MODEL)],
            "diffusion_models/ComfyUI",
            Operation::SaveModel,
            "Writes the diffusion model only.",
        ),
        save(
            "ImageOnlyCheckpointSave",
            "ImageOnlyCheckpointSave",
            vec![
                link("model", MODEL),
                link("clip_vision", CLIP_VISION),
                link("vae", VAE),
            ],
            "checkpoints/ComfyUI",
            Operation::Unsupported("CLIP_VISION models (SVD) cannot be loaded by Amalgam yet"),
            "Writes an image-only (SVD) checkpoint.",
        ),
    ]
}
