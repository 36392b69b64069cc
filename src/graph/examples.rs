//! Example workflows: the default merge graph (File ▸ New) and the Examples menu.
//!
//! Built from the registry, so they always match the nodes Amalgam knows; the same documents
//! are bundled as ComfyUI workflow JSON under `assets/examples/` (a test keeps them in sync).

use serde_json::json;

use crate::graph::Document;
use crate::nodes::Registry;

use super::edit::{Given, node_from_schema};

struct Builder {
    doc: Document,
}

impl Builder {
    fn new() -> Builder {
        Builder {
            doc: Document::new(),
        }
    }

    fn node(&mut self, class_type: &str, pos: [f64; 2], widgets: &[serde_json::Value]) -> i64 {
        let id = self.doc.next_node_id();
        let schema = Registry::builtin()
            .get(class_type)
            .unwrap_or_else(|| panic!("{class_type} is registered"));
        let mut node = node_from_schema(schema, id, pos, |_| Given::Default);
        for (i, w) in widgets.iter().enumerate() {
            node.set_widget_value(i, w.clone());
        }
        self.doc.add_node(node);
        id
    }

    fn link(&mut self, origin: i64, slot: usize, target: i64, input: &str) {
        let linked = self.doc.connect(origin, slot, target, input);
        debug_assert!(
            linked.is_some(),
            "example link {origin}:{slot} → {target}.{input}"
        );
    }
}

/// Two Load Checkpoint → ModelMergeSimple + CLIPMergeSimple → Save Checkpoint.
pub fn default_merge(first: &str, second: &str) -> Document {
    let mut b = Builder::new();
    let a = b.node("CheckpointLoaderSimple", [0.0, 0.0], &[json!(first)]);
    let c = b.node("CheckpointLoaderSimple", [0.0, 220.0], &[json!(second)]);
    let m = b.node("ModelMergeSimple", [420.0, 0.0], &[json!(0.5)]);
    let t = b.node("CLIPMergeSimple", [420.0, 200.0], &[json!(0.5)]);
    let s = b.node(
        "CheckpointSave",
        [820.0, 80.0],
        &[json!("checkpoints/ComfyUI")],
    );
    b.link(a, 0, m, "model1");
    b.link(c, 0, m, "model2");
    b.link(a, 1, t, "clip1");
    b.link(c, 1, t, "clip2");
    b.link(m, 0, s, "model");
    b.link(t, 0, s, "clip");
    b.link(a, 2, s, "vae");
    b.doc
}

/// Per-block ratios with ModelMergeBlocks.
pub fn block_merge(first: &str, second: &str) -> Document {
    let mut b = Builder::new();
    let a = b.node("CheckpointLoaderSimple", [0.0, 0.0], &[json!(first)]);
    let c = b.node("CheckpointLoaderSimple", [0.0, 220.0], &[json!(second)]);
    let m = b.node(
        "ModelMergeBlocks",
        [420.0, 0.0],
        &[json!(1.0), json!(0.7), json!(0.4)],
    );
    let s = b.node(
        "CheckpointSave",
        [820.0, 80.0],
        &[json!("checkpoints/blocks")],
    );
    b.link(a, 0, m, "model1");
    b.link(c, 0, m, "model2");
    b.link(m, 0, s, "model");
    b.link(a, 1, s, "clip");
    b.link(a, 2, s, "vae");
    b.doc
}

/// Add difference: (A − B) + C, the recipe for moving a fine-tune onto an inpainting model.
pub fn add_difference(a_name: &str, b_name: &str, c_name: &str) -> Document {
    let mut b = Builder::new();
    let a = b.node("CheckpointLoaderSimple", [0.0, 0.0], &[json!(a_name)]);
    let o = b.node("CheckpointLoaderSimple", [0.0, 200.0], &[json!(b_name)]);
    let c = b.node("CheckpointLoaderSimple", [0.0, 400.0], &[json!(c_name)]);
    let sub = b.node("ModelMergeSubtract", [420.0, 60.0], &[json!(1.0)]);
    let add = b.node("ModelMergeAdd", [760.0, 160.0], &[]);
    let s = b.node(
        "CheckpointSave",
        [1100.0, 160.0],
        &[json!("checkpoints/add_difference")],
    );
    b.link(a, 0, sub, "model1");
    b.link(o, 0, sub, "model2");
    b.link(sub, 0, add, "model1");
    b.link(c, 0, add, "model2");
    b.link(add, 0, s, "model");
    b.link(c, 1, s, "clip");
    b.link(a, 2, s, "vae");
    b.doc
}

/// See what a merge does: two checkpoints merged (ModelMergeSimple, unsaved) and a picture made
/// with the merge — the graph a ratio sweep is made on. Small (64 × 64, 8 steps) so it runs in
/// seconds on the runnable samples on a CPU; a real model wants 512 × 512 and 20 steps.
pub fn text_to_image(first: &str, second: &str) -> Document {
    let mut b = Builder::new();
    let a = b.node("CheckpointLoaderSimple", [0.0, 0.0], &[json!(first)]);
    let c = b.node("CheckpointLoaderSimple", [0.0, 220.0], &[json!(second)]);
    let m = b.node("ModelMergeSimple", [420.0, 0.0], &[json!(0.5)]);
    let pos = b.node(
        "CLIPTextEncode",
        [420.0, 180.0],
        &[json!("a red fox in the snow, photo")],
    );
    let neg = b.node("CLIPTextEncode", [420.0, 400.0], &[json!("blurry")]);
    let latent = b.node(
        "EmptyLatentImage",
        [420.0, 620.0],
        &[json!(64), json!(64), json!(1)],
    );
    let k = b.node(
        "KSampler",
        [820.0, 80.0],
        &[
            json!(42),
            json!("fixed"),
            json!(8),
            json!(7.0),
            json!("euler"),
            json!("normal"),
            json!(1.0),
        ],
    );
    let d = b.node("VAEDecode", [1180.0, 80.0], &[]);
    let s = b.node("SaveImage", [1420.0, 80.0], &[json!("merge")]);
    b.link(a, 0, m, "model1");
    b.link(c, 0, m, "model2");
    b.link(a, 1, pos, "clip");
    b.link(a, 1, neg, "clip");
    b.link(m, 0, k, "model");
    b.link(pos, 0, k, "positive");
    b.link(neg, 0, k, "negative");
    b.link(latent, 0, k, "latent_image");
    b.link(k, 0, d, "samples");
    b.link(a, 2, d, "vae");
    b.link(d, 0, s, "images");
    b.doc
}

/// The Examples menu: name, file name under `assets/examples/`, document.
pub fn all() -> Vec<(&'static str, &'static str, Document)> {
    vec![
        (
            "Simple merge",
            "simple_merge.json",
            default_merge("sample-sd15-a.safetensors", "sample-sd15-b.safetensors"),
        ),
        (
            "Block merge",
            "block_merge.json",
            block_merge("sample-sd15-a.safetensors", "sample-sd15-b.safetensors"),
        ),
        (
            "Add difference",
            "add_difference.json",
            add_difference(
                "sample-sd15-a.safetensors",
                "sample-sd15-b.safetensors",
                "sample-sd15-b.safetensors",
            ),
        ),
        (
            "Text to image (merge, then look)",
            "text_to_image.json",
            text_to_image(
                crate::model::samples::RUNNABLE_SAMPLES[0],
                crate::model::samples::RUNNABLE_SAMPLES[1],
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bundled JSON files are these documents; `UPDATE_ASSETS=1 cargo test` rewrites them.
    #[test]
    fn bundled_examples_are_up_to_date() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/examples");
        for (_, file, doc) in all() {
            let text = serde_json::to_string_pretty(&doc.to_json()).expect("json") + "\n";
            let path = dir.join(file);
            if std::env::var_os("UPDATE_ASSETS").is_some() {
                std::fs::create_dir_all(&dir).expect("mkdir");
                std::fs::write(&path, &text).expect("write");
            }
            let bundled = std::fs::read_to_string(&path).unwrap_or_default();
            assert_eq!(
                bundled, text,
                "{file} is stale: run UPDATE_ASSETS=1 cargo test bundled_examples"
            );
        }
    }

    #[test]
    fn examples_validate_against_the_registry_with_their_models() {
        let base = tempfile::tempdir().expect("tmp");
        let ck = base.path().join("models/checkpoints");
        std::fs::create_dir_all(&ck).expect("mkdir");
        let runnable = crate::model::samples::RUNNABLE_SAMPLES;
        for f in ["sample-sd15-a.safetensors", "sample-sd15-b.safetensors"]
            .into_iter()
            .chain(runnable)
        {
            std::fs::write(ck.join(f), b"x").expect("write");
        }
        let folders = crate::model::ModelFolders::new(base.path(), None, None);
        let reg = Registry::builtin();
        for (name, _, doc) in all() {
            let v = crate::graph::validate::validate(
                crate::graph::resolve::resolve(&doc, reg),
                reg,
                &folders,
            );
            assert!(v.errors.is_empty(), "{name}: {:?}", v.errors);
            assert_eq!(v.outputs.len(), 1, "{name}");
        }
    }
}
