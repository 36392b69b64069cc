//! The node registry: one place per node type for its schema and its meaning.
//!
//! Each [`NodeSchema`] holds what ComfyUI's `INPUT_TYPES` / `RETURN_TYPES` say — class name,
//! display name, category, inputs in ComfyUI's order with types, defaults, ranges and widget
//! kinds, outputs, the output-node flag — and an [`Operation`] saying what the node does, in plain
//! data the engine interprets. The canvas, the CLI, validation and the engine all read this one
//! registry. Node families live in submodules: merges, model-specific block merges, loaders,
//! savers, sampling, and the frontend-only nodes.
//!
//! Any type not registered here (KSampler, SaveImage, …) is an *unknown node*: kept in the
//! document with its slots and values, never executed.

mod blocks;
mod frontend;
mod image;
mod loaders;
mod merge;
mod sampling;
mod save;

use std::collections::HashMap;
use std::sync::OnceLock;

pub use blocks::block_prefixes;
pub use image::{
    CONDITIONING, IMAGE, LATENT, MASK, MAX_RESOLUTION, SAMPLER_NAMES, SCHEDULER_NAMES,
};

/// Value types that flow along links (ComfyUI's type names).
pub mod types {
    pub const MODEL: &str = "MODEL";
    pub const CLIP: &str = "CLIP";
    pub const VAE: &str = "VAE";
    pub const CLIP_VISION: &str = "CLIP_VISION";
    /// Matches every type (Reroute, PrimitiveNode).
    pub const ANY: &str = "*";
}

/// Where a COMBO's choices come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Choices {
    /// Fixed strings.
    Fixed(Vec<&'static str>),
    /// Files of a model folder kind (`checkpoints`, `vae`, `loras`).
    ModelFolder(&'static str),
}

/// What kind of input, and the widget that edits it.
#[derive(Clone, Debug, PartialEq)]
pub enum InputKind {
    /// A link of the given type; no widget.
    Link(&'static str),
    Float {
        default: f64,
        min: f64,
        max: f64,
        step: f64,
    },
    Int {
        default: i64,
        min: i64,
        max: i64,
        step: i64,
        /// Adds ComfyUI's extra `control_after_generate` widget (one more widgets_values slot).
        control_after_generate: bool,
    },
    String {
        default: &'static str,
        multiline: bool,
    },
    Boolean {
        default: bool,
    },
    Combo(Choices),
}

impl InputKind {
    /// Whether this input has a widget (and so a widgets_values slot).
    pub fn is_widget(&self) -> bool {
        !matches!(self, InputKind::Link(_))
    }

    /// The ComfyUI type name (`MODEL`, `FLOAT`, `COMBO`, …).
    pub fn type_name(&self) -> &'static str {
        match self {
            InputKind::Link(t) => t,
            InputKind::Float { .. } => "FLOAT",
            InputKind::Int { .. } => "INT",
            InputKind::String { .. } => "STRING",
            InputKind::Boolean { .. } => "BOOLEAN",
            InputKind::Combo(_) => "COMBO",
        }
    }

    /// The widget's default value as JSON.
    pub fn default_value(&self) -> Option<serde_json::Value> {
        Some(match self {
            InputKind::Link(_) => return None,
            InputKind::Float { default, .. } => serde_json::json!(default),
            InputKind::Int { default, .. } => serde_json::json!(default),
            InputKind::String { default, .. } => serde_json::json!(default),
            InputKind::Boolean { default } => serde_json::json!(default),
            InputKind::Combo(Choices::Fixed(c)) => {
                serde_json::json!(c.first().copied().unwrap_or(""))
            }
            InputKind::Combo(Choices::ModelFolder(_)) => serde_json::json!(""),
        })
    }
}

/// One declared input.
#[derive(Clone, Debug, PartialEq)]
pub struct InputSpec {
    pub name: String,
    pub kind: InputKind,
    pub required: bool,
}

/// One declared output.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputSpec {
    pub name: &'static str,
    pub type_name: &'static str,
}

/// Which value a merge node combines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergeTarget {
    Model,
    Clip,
}

/// How a merge weighs its two inputs (ComfyUI's `(strength_patch, strength_model)` per key).
#[derive(Clone, Debug, PartialEq)]
pub enum MergeRule {
    /// `(1 - ratio, ratio)` with the node's `ratio` input.
    Simple,
    /// `(-multiplier, multiplier)`.
    Subtract,
    /// `(1, 1)`.
    Add,
    /// `(1 - r(k), r(k))`: the ratio of the longest matching block-name input, the first ratio
    /// input otherwise.
    Blocks,
}

/// What a node does, for the engine. Plain data; the engine owns the arithmetic.
#[derive(Clone, Debug, PartialEq)]
pub enum Operation {
    LoadCheckpoint,
    LoadVae,
    LoadLora {
        clip: bool,
    },
    Merge {
        target: MergeTarget,
        rule: MergeRule,
    },
    ModelSamplingDiscrete,
    ModelSamplingContinuousEdm,
    SaveCheckpoint,
    SaveModel,
    SaveClip,
    SaveVae,
    /// CLIPTextEncode.
    TextEncode,
    /// CLIPSetLastLayer.
    SetClipLayer,
    EmptyLatent,
    RepeatLatent,
    /// KSampler, or KSamplerAdvanced with its noise and step controls.
    Sample {
        advanced: bool,
    },
    VaeDecode,
    VaeEncode,
    /// VAEEncodeForInpaint.
    VaeEncodeInpaint,
    /// SetLatentNoiseMask.
    SetNoiseMask,
    /// LoadImage (from ComfyUI's `input/` folder).
    LoadImage,
    /// SaveImage (`output/`), or PreviewImage (`temp/`).
    SaveImage {
        temp: bool,
    },
    /// Registered for completeness, but it needs inputs Amalgam cannot produce.
    Unsupported(&'static str),
    /// Frontend-only: never in a prompt (Note, MarkdownNote, Reroute, PrimitiveNode).
    Virtual,
}

/// Everything about one node type.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSchema {
    pub class_type: &'static str,
    pub display_name: &'static str,
    pub category: &'static str,
    pub description: &'static str,
    pub inputs: Vec<InputSpec>,
    pub outputs: Vec<OutputSpec>,
    pub output_node: bool,
    pub operation: Operation,
}

impl NodeSchema {
    pub fn input(&self, name: &str) -> Option<&InputSpec> {
        self.inputs.iter().find(|i| i.name == name)
    }

    /// Frontend-only nodes never reach a prompt.
    pub fn is_virtual(&self) -> bool {
        self.operation == Operation::Virtual
    }

    /// The widgets in creation order, each with its position in `widgets_values`. An INT with
    /// `control_after_generate` takes one extra position right after it.
    pub fn widget_slots(&self) -> Vec<(usize, &InputSpec)> {
        let mut out = Vec::new();
        let mut pos = 0;
        for input in self.inputs.iter().filter(|i| i.kind.is_widget()) {
            out.push((pos, input));
            pos += 1;
            if matches!(
                input.kind,
                InputKind::Int {
                    control_after_generate: true,
                    ..
                }
            ) {
                pos += 1;
            }
        }
        out
    }
}

/// Shorthand constructors used by the family modules.
pub(crate) fn link(name: &str, type_name: &'static str) -> InputSpec {
    InputSpec {
        name: name.to_owned(),
        kind: InputKind::Link(type_name),
        required: true,
    }
}

pub(crate) fn float(name: &str, default: f64, min: f64, max: f64, step: f64) -> InputSpec {
    InputSpec {
        name: name.to_owned(),
        kind: InputKind::Float {
            default,
            min,
            max,
            step,
        },
        required: true,
    }
}

pub(crate) fn output(name: &'static str, type_name: &'static str) -> OutputSpec {
    OutputSpec { name, type_name }
}

/// All registered node types.
pub struct Registry {
    by_class: HashMap<&'static str, NodeSchema>,
    order: Vec<&'static str>,
}

impl Registry {
    /// The built-in registry (built once).
    pub fn builtin() -> &'static Registry {
        static REGISTRY: OnceLock<Registry> = OnceLock::new();
        REGISTRY.get_or_init(|| {
            let mut all = Vec::new();
            all.extend(loaders::schemas());
            all.extend(merge::schemas());
            all.extend(blocks::schemas());
            all.extend(sampling::schemas());
            all.extend(save::schemas());
            all.extend(image::schemas());
            all.extend(frontend::schemas());
            let order = all.iter().map(|s| s.class_type).collect();
            let by_class = all.into_iter().map(|s| (s.class_type, s)).collect();
            Registry { by_class, order }
        })
    }

    pub fn get(&self, class_type: &str) -> Option<&NodeSchema> {
        self.by_class.get(class_type)
    }

    /// Every schema, in registration order (loaders, merges, blocks, sampling, savers, frontend).
    pub fn all(&self) -> impl Iterator<Item = &NodeSchema> {
        self.order.iter().filter_map(|c| self.by_class.get(c))
    }
}

/// Whether a value of type `received` may feed an input of type `expected` (ComfyUI's non-strict
/// rule: comma-separated sets that intersect; `*` matches everything).
pub fn types_compatible(received: &str, expected: &str) -> bool {
    if received == types::ANY || expected == types::ANY {
        return true;
    }
    received
        .split(',')
        .any(|r| expected.split(',').any(|e| r.trim() == e.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_required_node_is_registered() {
        let r = Registry::builtin();
        for class in [
            "ModelMergeSimple",
            "ModelMergeBlocks",
            "ModelMergeSubtract",
            "ModelMergeAdd",
            "CLIPMergeSimple",
            "CLIPMergeSubtract",
            "CLIPMergeAdd",
            "CheckpointSave",
            "CLIPSave",
            "VAESave",
            "ModelSave",
            "ImageOnlyCheckpointSave",
            "ModelMergeSD1",
            "ModelMergeSD2",
            "ModelMergeSDXL",
            "ModelMergeSD3_2B",
            "ModelMergeSD35_Large",
            "ModelMergeAuraflow",
            "ModelMergeFlux1",
            "ModelMergeMochiPreview",
            "ModelMergeLTXV",
            "ModelMergeCosmos7B",
            "ModelMergeCosmos14B",
            "ModelMergeWAN2_1",
            "ModelMergeCosmosPredict2_2B",
            "ModelMergeCosmosPredict2_14B",
            "ModelMergeQwenImage",
            "CheckpointLoaderSimple",
            "VAELoader",
            "LoraLoader",
            "LoraLoaderModelOnly",
            "ModelSamplingDiscrete",
            "ModelSamplingContinuousEDM",
            "Note",
            "MarkdownNote",
            "Reroute",
            "PrimitiveNode",
        ] {
            assert!(r.get(class).is_some(), "{class}");
        }
        assert!(r.get("ImageScale").is_none());
        assert_eq!(r.all().count(), 50);
    }

    #[test]
    fn block_nodes_have_comfyuis_input_counts() {
        let r = Registry::builtin();
        for (class, ratios) in [
            ("ModelMergeSD1", 30),
            ("ModelMergeSD2", 30),
            ("ModelMergeSDXL", 24),
            ("ModelMergeSD3_2B", 30),
            ("ModelMergeSD35_Large", 44),
            ("ModelMergeAuraflow", 43),
            ("ModelMergeFlux1", 63),
            ("ModelMergeMochiPreview", 53),
            ("ModelMergeLTXV", 33),
            ("ModelMergeCosmos7B", 34),
            ("ModelMergeCosmos14B", 42),
            ("ModelMergeWAN2_1", 46),
            ("ModelMergeCosmosPredict2_2B", 33),
            ("ModelMergeCosmosPredict2_14B", 41),
            ("ModelMergeQwenImage", 66),
        ] {
            let s = r.get(class).expect(class);
            assert_eq!(s.inputs[0].name, "model1");
            assert_eq!(s.inputs[1].name, "model2");
            assert_eq!(s.inputs.len() - 2, ratios, "{class}");
            assert_eq!(s.widget_slots().len(), ratios, "{class}");
            assert_eq!(s.category, "advanced/model_merging/model_specific");
        }
        let sd1 = r.get("ModelMergeSD1").expect("sd1");
        let names: Vec<&str> = sd1.inputs.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            &names[2..6],
            [
                "time_embed.",
                "label_emb.",
                "input_blocks.0.",
                "input_blocks.1."
            ]
        );
        assert_eq!(names.last(), Some(&"out."));
        let sdxl = r.get("ModelMergeSDXL").expect("sdxl");
        assert_eq!(sdxl.inputs[4].name, "input_blocks.0");
        let cosmos = r.get("ModelMergeCosmos7B").expect("cosmos");
        assert!(cosmos.input("affline_norm.").is_some());
        assert!(cosmos.input("blocks.block27.").is_some());
    }

    #[test]
    fn control_after_generate_takes_an_extra_widget_slot() {
        // KSampler: seed (INT + control), steps, cfg, sampler, scheduler, denoise.
        let schema = Registry::builtin().get("KSampler").expect("KSampler");
        let slots: Vec<(usize, &str)> = schema
            .widget_slots()
            .into_iter()
            .map(|(p, i)| (p, i.name.as_str()))
            .collect();
        assert_eq!(
            slots,
            [
                (0, "seed"),
                (2, "steps"),
                (3, "cfg"),
                (4, "sampler_name"),
                (5, "scheduler"),
                (6, "denoise")
            ]
        );
    }

    #[test]
    fn schemas_match_comfyui() {
        let r = Registry::builtin();
        let save = r.get("CheckpointSave").expect("save");
        assert_eq!(save.display_name, "Save Checkpoint");
        assert!(save.output_node);
        assert_eq!(
            save.input("filename_prefix")
                .and_then(|i| i.kind.default_value()),
            Some(serde_json::json!("checkpoints/ComfyUI"))
        );
        let sub = r.get("ModelMergeSubtract").expect("sub");
        assert_eq!(
            sub.input("multiplier").map(|i| i.kind.clone()),
            Some(InputKind::Float {
                default: 1.0,
                min: -10.0,
                max: 10.0,
                step: 0.01
            })
        );
        let lora = r.get("LoraLoader").expect("lora");
        let names: Vec<&str> = lora.inputs.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "model",
                "clip",
                "lora_name",
                "strength_model",
                "strength_clip"
            ]
        );
        assert_eq!(lora.outputs.len(), 2);
        let loader = r.get("CheckpointLoaderSimple").expect("loader");
        assert_eq!(loader.display_name, "Load Checkpoint");
        let outs: Vec<&str> = loader.outputs.iter().map(|o| o.type_name).collect();
        assert_eq!(outs, ["MODEL", "CLIP", "VAE"]);
        assert_eq!(r.get("ModelMergeAdd").expect("add").widget_slots().len(), 0);
        assert!(types_compatible("MODEL", "MODEL"));
        assert!(types_compatible("*", "CLIP"));
        assert!(types_compatible("IMAGE,MASK", "MASK"));
        assert!(!types_compatible("CLIP", "MODEL"));
    }
}
