//! The generic merge nodes of `advanced/model_merging`.

use super::types::{CLIP, MODEL};
use super::{MergeRule, MergeTarget, NodeSchema, Operation, float, link, output};

const CATEGORY: &str = "advanced/model_merging";

fn merge(
    class_type: &'static str,
    target: MergeTarget,
    rule: MergeRule,
    widgets: Vec<super::InputSpec>,
    description: &'static str,
) -> NodeSchema {
    let (a, b, t) = match target {
        MergeTarget::Model => ("model1", "model2", MODEL),
        MergeTarget::Clip => ("clip1", "clip2", CLIP),
    };
    let mut inputs = vec![link(a, t), link(b, t)];
    inputs.extend(widgets);
    NodeSchema {
        class_type,
        display_name: class_type,
        category: CATEGORY,
        description,
        inputs,
        outputs: vec![output(t, t)],
        output_node: false,
        operation: Operation::Merge { target, rule },
    }
}

pub(super) fn schemas() -> Vec<NodeSchema> {
    use MergeRule::{Add, Blocks, Simple, Subtract};
    use MergeTarget::{Clip, Model};
    let ratio = || vec![float("ratio", 1.0, 0.0, 1.0, 0.01)];
    let multiplier = || vec![float("multiplier", 1.0, -10.0, 10.0, 0.01)];
    vec![
        merge(
            "ModelMergeSimple",
            Model,
            Simple,
            ratio(),
            "ratio × model1 + (1 − ratio) × model2; ratio 1.0 keeps model1.",
        ),
        merge(
            "ModelMergeBlocks",
            Model,
            Blocks,
            vec![
                float("input", 1.0, 0.0, 1.0, 0.01),
                float("middle", 1.0, 0.0, 1.0, 0.01),
                float("out", 1.0, 0.0, 1.0, 0.01),
            ],
            "Per-block ratios: the longest matching block name wins, the first ratio is the default.",
        ),
        merge(
            "ModelMergeSubtract",
            Model,
            Subtract,
            multiplier(),
            "multiplier × (model1 − model2).",
        ),
        merge("ModelMergeAdd", Model, Add, vec![], "model1 + model2."),
        merge(
            "CLIPMergeSimple",
            Clip,
            Simple,
            ratio(),
            "ratio × clip1 + (1 − ratio) × clip2; position_ids and logit_scale stay clip1's.",
        ),
        merge(
            "CLIPMergeSubtract",
            Clip,
            Subtract,
            multiplier(),
            "multiplier × (clip1 − clip2).",
        ),
        merge("CLIPMergeAdd", Clip, Add, vec![], "clip1 + clip2."),
    ]
}
