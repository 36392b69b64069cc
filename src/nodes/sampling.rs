//! Sampling nodes: they change what prediction type a checkpoint declares when saved.

use super::types::MODEL;
use super::{Choices, InputKind, InputSpec, NodeSchema, Operation, float, link, output};

pub(super) fn schemas() -> Vec<NodeSchema> {
    let combo = |name: &str, choices: Vec<&'static str>| InputSpec {
        name: name.to_owned(),
        kind: InputKind::Combo(Choices::Fixed(choices)),
        required: true,
    };
    vec![
        NodeSchema {
            class_type: "ModelSamplingDiscrete",
            display_name: "ModelSamplingDiscrete",
            category: "advanced/model",
            description: "Sets the discrete prediction type (eps, v-prediction, …) and zero terminal SNR.",
            inputs: vec![
                link("model", MODEL),
                combo(
                    "sampling",
                    vec!["eps", "v_prediction", "lcm", "x0", "img_to_img"],
                ),
                InputSpec {
                    name: "zsnr".into(),
                    kind: InputKind::Boolean { default: false },
                    required: true,
                },
            ],
            outputs: vec![output(MODEL, MODEL)],
            output_node: false,
            operation: Operation::ModelSamplingDiscrete,
        },
        NodeSchema {
            class_type: "ModelSamplingContinuousEDM",
            display_name: "ModelSamplingContinuousEDM",
            category: "advanced/model",
            description: "Sets continuous EDM sampling (CosXL-style v-prediction, Playground 2.5, …).",
            inputs: vec![
                link("model", MODEL),
                combo(
                    "sampling",
                    vec![
                        "v_prediction",
                        "edm",
                        "edm_playground_v2.5",
                        "eps",
                        "cosmos_rflow",
                    ],
                ),
                float("sigma_max", 120.0, 0.0, 1000.0, 0.001),
                float("sigma_min", 0.002, 0.0, 1000.0, 0.001),
            ],
            outputs: vec![output(MODEL, MODEL)],
            output_node: false,
            operation: Operation::ModelSamplingContinuousEdm,
        },
    ]
}
