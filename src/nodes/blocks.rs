//! The model-specific block-merge nodes (`advanced/model_merging/model_specific`): each is
//! ModelMergeBlocks with one ratio per block, named by key prefix, trailing dots exactly as
//! ComfyUI lists them (reference §1.4).

use super::types::MODEL;
use super::{MergeRule, MergeTarget, NodeSchema, Operation, float, link, output};

/// Expands the block list of a node: `(fixed names before, (pattern, count), fixed names after)`
/// where the pattern's `{}` becomes 0..count.
fn expand(before: &[&str], repeated: &[(&str, usize)], after: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = before.iter().map(|s| (*s).to_owned()).collect();
    for (pattern, count) in repeated {
        out.extend((0..*count).map(|i| pattern.replace("{}", &i.to_string())));
    }
    out.extend(after.iter().map(|s| (*s).to_owned()));
    out
}

/// The ratio input names (block prefixes) of each model-specific node, in widget order.
pub fn block_prefixes(class_type: &str) -> Option<Vec<String>> {
    Some(match class_type {
        "ModelMergeSD1" | "ModelMergeSD2" => expand(
            &["time_embed.", "label_emb."],
            &[
                ("input_blocks.{}.", 12),
                ("middle_block.{}.", 3),
                ("output_blocks.{}.", 12),
            ],
            &["out."],
        ),
        "ModelMergeSDXL" => expand(
            &["time_embed.", "label_emb."],
            &[
                ("input_blocks.{}", 9),
                ("middle_block.{}", 3),
                ("output_blocks.{}", 9),
            ],
            &["out."],
        ),
        "ModelMergeSD3_2B" | "ModelMergeSD35_Large" => expand(
            &[
                "pos_embed.",
                "x_embedder.",
                "context_embedder.",
                "y_embedder.",
                "t_embedder.",
            ],
            &[(
                "joint_blocks.{}.",
                if class_type == "ModelMergeSD3_2B" {
                    24
                } else {
                    38
                },
            )],
            &["final_layer."],
        ),
        "ModelMergeAuraflow" => expand(
            &[
                "init_x_linear.",
                "positional_encoding",
                "cond_seq_linear.",
                "register_tokens",
                "t_embedder.",
            ],
            &[("double_layers.{}.", 4), ("single_layers.{}.", 32)],
            &["modF.", "final_linear."],
        ),
        "ModelMergeFlux1" => expand(
            &[
                "img_in.",
                "time_in.",
                "guidance_in",
                "vector_in.",
                "txt_in.",
            ],
            &[("double_blocks.{}.", 19), ("single_blocks.{}.", 38)],
            &["final_layer."],
        ),
        "ModelMergeMochiPreview" => expand(
            &[
                "pos_frequencies.",
                "t_embedder.",
                "t5_y_embedder.",
                "t5_yproj.",
            ],
            &[("blocks.{}.", 48)],
            &["final_layer."],
        ),
        "ModelMergeLTXV" => expand(
            &["patchify_proj.", "adaln_single.", "caption_projection."],
            &[("transformer_blocks.{}.", 28)],
            &["scale_shift_table", "proj_out."],
        ),
        "ModelMergeCosmos7B" | "ModelMergeCosmos14B" => expand(
            &[
                "pos_embedder.",
                "extra_pos_embedder.",
                "x_embedder.",
                "t_embedder.",
                "affline_norm.",
            ],
            &[(
                "blocks.block{}.",
                if class_type == "ModelMergeCosmos7B" {
                    28
                } else {
                    36
                },
            )],
            &["final_layer."],
        ),
        "ModelMergeWAN2_1" => expand(
            &[
                "patch_embedding.",
                "time_embedding.",
                "time_projection.",
                "text_embedding.",
                "img_emb.",
            ],
            &[("blocks.{}.", 40)],
            &["head."],
        ),
        "ModelMergeCosmosPredict2_2B" | "ModelMergeCosmosPredict2_14B" => expand(
            &[
                "pos_embedder.",
                "x_embedder.",
                "t_embedder.",
                "t_embedding_norm.",
            ],
            &[(
                "blocks.{}.",
                if class_type == "ModelMergeCosmosPredict2_2B" {
                    28
                } else {
                    36
                },
            )],
            &["final_layer."],
        ),
        "ModelMergeQwenImage" => expand(
            &[
                "pos_embeds.",
                "img_in.",
                "txt_norm.",
                "txt_in.",
                "time_text_embed.",
            ],
            &[("transformer_blocks.{}.", 60)],
            &["proj_out."],
        ),
        _ => return None,
    })
}

const CLASSES: [(&str, &str); 15] = [
    ("ModelMergeSD1", "SD1 and SD2 have the same blocks."),
    ("ModelMergeSD2", "SD1 and SD2 have the same blocks."),
    ("ModelMergeSDXL", "Per-block ratios for SDXL."),
    ("ModelMergeSD3_2B", "Per-block ratios for SD3 medium."),
    ("ModelMergeSD35_Large", "Per-block ratios for SD3.5 large."),
    ("ModelMergeAuraflow", "Per-block ratios for AuraFlow."),
    ("ModelMergeFlux1", "Per-block ratios for Flux.1."),
    ("ModelMergeMochiPreview", "Per-block ratios for Mochi."),
    ("ModelMergeLTXV", "Per-block ratios for LTX-Video."),
    ("ModelMergeCosmos7B", "Per-block ratios for Cosmos 7B."),
    ("ModelMergeCosmos14B", "Per-block ratios for Cosmos 14B."),
    (
        "ModelMergeWAN2_1",
        "1.3B model has 30 blocks, 14B model has 40 blocks. Image to video model has the extra img_emb.",
    ),
    (
        "ModelMergeCosmosPredict2_2B",
        "Per-block ratios for Cosmos Predict2 2B.",
    ),
    (
        "ModelMergeCosmosPredict2_14B",
        "Per-block ratios for Cosmos Predict2 14B.",
    ),
    ("ModelMergeQwenImage", "Per-block ratios for Qwen-Image."),
];

pub(super) fn schemas() -> Vec<NodeSchema> {
    CLASSES
        .iter()
        .map(|&(class_type, description)| {
            let mut inputs = vec![link("model1", MODEL), link("model2", MODEL)];
            inputs.extend(
                block_prefixes(class_type)
                    .unwrap_or_default()
                    .iter()
                    .map(|name| float(name, 1.0, 0.0, 1.0, 0.01)),
            );
            NodeSchema {
                class_type,
                display_name: class_type,
                category: "advanced/model_merging/model_specific",
                description,
                inputs,
                outputs: vec![output(MODEL, MODEL)],
                output_node: false,
                operation: Operation::Merge {
                    target: MergeTarget::Model,
                    rule: MergeRule::Blocks,
                },
            }
        })
        .collect()
}
