//! Subgraphs: the official templates of late 2026 load, flatten and write back with their
//! definitions; merges inside (nested) subgraphs save the same tensors as the same merge without
//! them, with the frontend's execution ids in `prompt`; muted and bypassed instances.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::util::*;
use amalgam::graph::PromptInput;
use amalgam::graph::document::Document;
use amalgam::graph::load::load_file;
use amalgam::graph::resolve::{Resolved, SkipReason, resolve};
use amalgam::graph::validate::validate;
use amalgam::model::ModelFolders;
use amalgam::model::layouts::{Layout, Scale};
use amalgam::nodes::Registry;

fn template(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/workflows/subgraphs")
        .join(name);
    assert!(p.is_file(), "template missing: {}", p.display());
    p
}

fn template_json(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(template(name)).expect("read")).expect("json")
}

fn flatten(doc: &Value) -> Resolved {
    let (doc, _) = Document::from_json(doc.clone()).expect("document");
    resolve(&doc, Registry::builtin())
}

fn literal<'a>(r: &'a Resolved, node: &str, input: &str) -> &'a Value {
    match r.prompt.get(node).and_then(|n| n.input(input)) {
        Some(PromptInput::Value(v)) => v,
        other => panic!("{node}.{input}: {other:?}"),
    }
}

fn link(r: &Resolved, node: &str, input: &str) -> (String, usize) {
    match r.prompt.get(node).and_then(|n| n.input(input)) {
        Some(PromptInput::Link { node, slot }) => (node.clone(), *slot),
        other => panic!("{node}.{input}: {other:?}"),
    }
}

const TEMPLATES: [&str; 6] = [
    "flux1_dev_uso_reference_image_gen.json",
    "flux_depth_lora_example.json",
    "flux_dev_checkpoint_example.json",
    "image_flux.1_fill_dev_OneReward.json",
    "template_qwen_image_illustration_lora.json",
    "utility_image_segment_sam3.json",
];

/// Every official template loads without a skipped node, flattens without an error, says which
/// node types Amalgam does not run (by their execution ids inside the subgraphs), and writes
/// back with its definitions exactly as they were.
#[test]
fn official_templates_load_flatten_validate_and_keep_their_definitions() {
    let folders = ModelFolders::new(tempdir().path(), None, None);
    for name in TEMPLATES {
        let original = template_json(name);
        let loaded = load_file(&template(name)).expect(name);
        let resolved = resolve(&loaded.document, Registry::builtin());
        assert!(resolved.errors.is_empty(), "{name}: {:?}", resolved.errors);
        assert!(
            resolved.prompt.nodes.iter().any(|(id, _)| id.contains(':')),
            "{name}: nothing came out of a subgraph"
        );
        let v = validate(resolved, Registry::builtin(), &folders);
        let unknown: Vec<&str> = v
            .skipped
            .iter()
            .filter(|s| s.reason == SkipReason::Unknown)
            .map(|s| s.node.as_str())
            .chain(
                v.errors
                    .iter()
                    .filter(|e| e.message.contains("not supported by Amalgam"))
                    .filter_map(|e| e.node.as_deref()),
            )
            .collect();
        assert!(
            !unknown.is_empty(),
            "{name}: Flux/Qwen/SAM nodes are not run"
        );
        assert!(
            unknown.iter().any(|id| id.contains(':')),
            "{name}: unknown inner nodes named by execution id: {unknown:?}"
        );
        let written = loaded.document.to_json();
        assert_eq!(written["definitions"], original["definitions"], "{name}");
        assert_eq!(written["nodes"], original["nodes"], "{name}");
    }
}

/// The three generations of promoted widget values, on the templates that carry them: a value
/// set on the instance reaches the inner node; holes keep the inner value; a linked instance
/// input wins over both.
#[test]
fn promoted_widget_values_reach_the_inner_nodes() {
    // G3 (frontend 1.57): one positional value per widget-promoted input, in input order.
    let mut sam = template_json("utility_image_segment_sam3.json");
    let r = flatten(&sam);
    assert_eq!(literal(&r, "99:78", "text"), "guitar");
    assert_eq!(
        literal(&r, "99:77", "ckpt_name"),
        "sam3.1_multiplex_fp16.safetensors"
    );
    let instance = sam["nodes"]
        .as_array_mut()
        .expect("nodes")
        .iter_mut()
        .find(|n| n["id"] == 99)
        .expect("instance 99");
    instance["widgets_values"][0] = json!("violin");
    instance["widgets_values"][4] = json!("other.safetensors");
    let r = flatten(&sam);
    assert_eq!(literal(&r, "99:78", "text"), "violin");
    assert_eq!(literal(&r, "99:77", "ckpt_name"), "other.safetensors");

    // G2 (proxyWidgets) with every host value a hole: the inner values.
    let mut qwen = template_json("template_qwen_image_illustration_lora.json");
    let r = flatten(&qwen);
    assert_eq!(literal(&r, "76:73", "strength_model"), 1);
    assert_eq!(literal(&r, "76:3", "steps"), 45);
    let instance = qwen["nodes"]
        .as_array_mut()
        .expect("nodes")
        .iter_mut()
        .find(|n| n["id"] == 76)
        .expect("instance 76");
    // proxyWidgets[9] is ["73", "strength_model"], [3] is ["3", "steps"]; null is a hole.
    instance["widgets_values"] = json!([null, null, null, 12, null, null, null, null, null, 0.7]);
    let r = flatten(&qwen);
    assert_eq!(literal(&r, "76:73", "strength_model"), 0.7);
    assert_eq!(literal(&r, "76:3", "steps"), 12);
    assert_eq!(
        literal(&r, "76:3", "cfg"),
        3.5,
        "a hole keeps the inner value"
    );

    // What the canvas shows on the instances: G2 proxies by inner widget name (holes show the
    // inner values; the frontend-only `$$` entry is left out), G3 by subgraph input.
    let shown = |doc: &Value, id: i64| -> Vec<(String, usize, Value)> {
        let (doc, _) = Document::from_json(doc.clone()).expect("doc");
        let defs = amalgam::graph::subgraph::Definitions::of(&doc);
        defs.promoted_widgets(doc.node(id).expect("instance"), Registry::builtin())
            .into_iter()
            .map(|p| (p.name, p.index, p.value))
            .collect()
    };
    let flux = shown(&template_json("flux_dev_checkpoint_example.json"), 56);
    assert_eq!(flux.len(), 9, "{flux:?}");
    assert_eq!(flux[6], ("vae_name".into(), 6, json!("ae.safetensors")));
    assert_eq!(flux[7], ("seed".into(), 7, json!(53943644181156_i64)));
    assert_eq!(
        flux[8],
        ("control_after_generate".into(), 8, json!("randomize"))
    );
    let depth = shown(&template_json("flux_depth_lora_example.json"), 150);
    assert!(
        depth.iter().all(|(n, _, _)| !n.starts_with("$$")),
        "{depth:?}"
    );
    let sam = shown(&sam, 99);
    let names: Vec<&str> = sam.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "text",
            "threshold",
            "refine_iterations",
            "individual_masks",
            "ckpt_name"
        ]
    );
    assert_eq!(sam[0].2, json!("violin"));

    // A linked instance input feeds the inner node from outside (the LoadImage at the root).
    let r = flatten(&template_json("flux_depth_lora_example.json"));
    assert_eq!(link(&r, "150:107", "image"), ("17".to_owned(), 0));
    // ... and through a nested instance: the depth subgraph (41) inside 150 gets the scaled image.
    assert_eq!(link(&r, "150:41:97", "pixels"), ("150:107".to_owned(), 0));
}

/// Nesting, two instances of one definition, and mute/bypass of instances on the USO template:
/// a bypassed root instance is not expanded, its consumers are rewired through its inputs by
/// position; a bypassed nested instance runs nothing and is reported.
#[test]
fn nested_instances_expand_and_bypassed_ones_do_not() {
    let r = flatten(&template_json("flux1_dev_uso_reference_image_gen.json"));
    let ids: Vec<&str> = r.prompt.nodes.iter().map(|(id, _)| id.as_str()).collect();
    assert!(ids.contains(&"112:57:44"), "nested: {ids:?}");
    assert!(ids.iter().all(|id| !id.starts_with("113:")), "{ids:?}");
    assert!(ids.iter().all(|id| !id.starts_with("112:55:")), "{ids:?}");
    let skipped: Vec<(&str, SkipReason)> = r
        .skipped
        .iter()
        .map(|s| (s.node.as_str(), s.reason))
        .collect();
    assert!(
        skipped.contains(&("113", SkipReason::Bypassed)),
        "{skipped:?}"
    );
    assert!(
        skipped.contains(&("112:55", SkipReason::Bypassed)),
        "{skipped:?}"
    );
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("#112:55") && w.contains("ComfyUI's frontend would still run")),
        "{:?}",
        r.warnings
    );
    // The instance's own values (G3: text, width, height, seed, …) reach the inner nodes.
    assert_eq!(literal(&r, "112:110", "width"), 1024);
    assert_eq!(literal(&r, "112:31", "seed"), 1058487910949722_i64);
    // The nested instance 57 takes its `guidance` from its own promoted value.
    assert_eq!(literal(&r, "112:57:35", "guidance"), 3.5);
}

/// Root-level bypass of an instance matches slots by position: the OneReward outpainting
/// instance (mode 4) hands its IMAGE input to whatever consumed its IMAGE output.
#[test]
fn a_bypassed_root_instance_passes_its_input_through() {
    let mut doc = template_json("image_flux.1_fill_dev_OneReward.json");
    // The instance's only consumer, SaveImage 62, is bypassed in the template: turn it on.
    let save = doc["nodes"]
        .as_array_mut()
        .expect("nodes")
        .iter_mut()
        .find(|n| n["id"] == 62)
        .expect("save 62");
    save["mode"] = json!(0);
    let r = flatten(&doc);
    assert!(r.prompt.nodes.iter().all(|(id, _)| !id.starts_with("110:")));
    // 17 (LoadImage) → 110 (bypassed, input 0 IMAGE) → 62: the image goes straight through.
    assert_eq!(link(&r, "62", "images"), ("17".to_owned(), 0));
}

// ---- merges inside subgraphs --------------------------------------------------------------

fn input(name: &str, type_: &str, link: Option<i64>) -> Value {
    json!({"name": name, "type": type_, "link": link})
}

fn widget_input(name: &str, type_: &str, link: Option<i64>) -> Value {
    json!({"name": name, "type": type_, "link": link, "widget": {"name": name}})
}

fn ui_node(id: i64, type_: &str, inputs: Vec<Value>, outputs: Vec<Value>, values: Value) -> Value {
    // Apart, so that no node covers another's widgets on the canvas.
    let mut node = json!({"id": id, "type": type_, "pos": [(id % 5) * 300, (id / 5) * 300], "size": [200, 100],
           "flags": {}, "order": 0, "mode": 0, "properties": {}});
    node["inputs"] = Value::Array(inputs);
    node["outputs"] = Value::Array(outputs);
    node["widgets_values"] = values;
    node
}

fn model_out(links: &[i64]) -> Value {
    json!({"name": "MODEL", "type": "MODEL", "links": links})
}

fn loader_node(id: i64, file: &str, model: &[i64], clip: &[i64], vae: &[i64]) -> Value {
    ui_node(
        id,
        "CheckpointLoaderSimple",
        vec![],
        vec![
            model_out(model),
            json!({"name": "CLIP", "type": "CLIP", "links": clip}),
            json!({"name": "VAE", "type": "VAE", "links": vae}),
        ],
        json!([file]),
    )
}

fn save_node(id: i64, links: [i64; 3], prefix: &str) -> Value {
    ui_node(
        id,
        "CheckpointSave",
        vec![
            input("model", "MODEL", Some(links[0])),
            input("clip", "CLIP", Some(links[1])),
            input("vae", "VAE", Some(links[2])),
        ],
        vec![],
        json!([prefix]),
    )
}

fn link_array(id: i64, from: (i64, usize), to: (i64, usize), type_: &str) -> Value {
    json!([id, from.0, from.1, to.0, to.1, type_])
}

fn link_object(id: i64, from: (i64, usize), to: (i64, usize), type_: &str) -> Value {
    json!({"id": id, "origin_id": from.0, "origin_slot": from.1, "target_id": to.0,
           "target_slot": to.1, "type": type_})
}

/// Loader a (1) and b (2) → `middle` (node `id`, two MODEL inputs, a MODEL output) →
/// CheckpointSave (4) with `prefix`: the flat and the wrapped merge share all but the middle.
fn merge_workflow(middle: Value, id: i64, prefix: &str) -> Value {
    let mut workflow = json!({
        "version": 0.4, "last_node_id": 11, "last_link_id": 6,
        "links": [
            link_array(1, (1, 0), (id, 0), "MODEL"), link_array(2, (2, 0), (id, 1), "MODEL"),
            link_array(3, (id, 0), (4, 0), "MODEL"), link_array(4, (1, 1), (4, 1), "CLIP"),
            link_array(5, (2, 2), (4, 2), "VAE"),
        ],
        "groups": [], "config": {}, "extra": {},
    });
    workflow["nodes"] = Value::Array(vec![
        loader_node(1, "a.safetensors", &[1], &[4], &[]),
        loader_node(2, "b.safetensors", &[2], &[], &[5]),
        middle,
        save_node(4, [3, 4, 5], prefix),
    ]);
    workflow
}

/// The merge at `ratio` with no subgraph.
fn flat_merge(ratio: f64) -> Value {
    let merge = ui_node(
        3,
        "ModelMergeSimple",
        vec![
            input("model1", "MODEL", Some(1)),
            input("model2", "MODEL", Some(2)),
        ],
        vec![model_out(&[3])],
        json!([ratio]),
    );
    merge_workflow(merge, 3, "flat")
}

fn boundary(name: &str, type_: &str, links: &[i64]) -> Value {
    json!({"id": format!("slot-{name}"), "name": name, "type": type_, "linkIds": links})
}

/// The same merge, the ModelMergeSimple two subgraphs deep: root instance 10 (definition
/// "outer") holds instance 11 (definition "inner") holding the merge (node 3, whose own ratio is
/// a decoy 0.9). The ratio is promoted through both and given on the root instance — as a G3
/// positional value, or (`proxy`) as a G2 `proxyWidgets` entry.
fn nested_merge(ratio: f64, proxy: bool, root_mode: i64) -> Value {
    let merge_inputs = || {
        vec![
            boundary("model_a", "MODEL", &[1]),
            boundary("model_b", "MODEL", &[2]),
            boundary("ratio", "FLOAT", &[3]),
        ]
    };
    // One merge-shaped definition: inputs model_a, model_b, ratio → node `inner_id` → output.
    let definition = |id: &str, name: &str, inner: Value| {
        let inner_id = inner["id"].as_i64().expect("inner id");
        let mut def = json!({
            "id": id, "version": 1, "name": name,
            "state": {"lastGroupId": 0, "lastNodeId": 11, "lastLinkId": 6, "lastRerouteId": 0},
            "inputNode": {"id": -10, "bounding": [0, 0, 120, 80]},
            "outputNode": {"id": -20, "bounding": [400, 0, 120, 60]},
            "outputs": [boundary("MODEL", "MODEL", &[4])],
            "widgets": [],
            "links": [
                link_object(1, (-10, 0), (inner_id, 0), "MODEL"),
                link_object(2, (-10, 1), (inner_id, 1), "MODEL"),
                link_object(3, (-10, 2), (inner_id, 2), "FLOAT"),
                link_object(4, (inner_id, 0), (-20, 0), "MODEL"),
            ],
            "groups": [], "config": {}, "extra": {},
        });
        def["inputs"] = Value::Array(merge_inputs());
        def["nodes"] = Value::Array(vec![inner]);
        def
    };
    let inner = definition(
        "inner-0000",
        "Merge two",
        ui_node(
            3,
            "ModelMergeSimple",
            vec![
                input("model1", "MODEL", Some(1)),
                input("model2", "MODEL", Some(2)),
                widget_input("ratio", "FLOAT", Some(3)),
            ],
            vec![model_out(&[4])],
            json!([0.9]),
        ),
    );
    let outer = definition(
        "outer-0000",
        "Merge (wrapped)",
        ui_node(
            11,
            "inner-0000",
            vec![
                input("model_a", "MODEL", Some(1)),
                input("model_b", "MODEL", Some(2)),
                widget_input("ratio", "FLOAT", Some(3)),
            ],
            vec![model_out(&[4])],
            json!([0.8]),
        ),
    );
    let mut instance = ui_node(
        10,
        "outer-0000",
        // Compressed as the frontend saves it: the unlinked widget input is left out.
        vec![
            input("model_a", "MODEL", Some(1)),
            input("model_b", "MODEL", Some(2)),
        ],
        vec![model_out(&[3])],
        json!([ratio]),
    );
    instance["mode"] = json!(root_mode);
    if proxy {
        instance["properties"] = json!({"proxyWidgets": [["-1", "ratio"]]});
    }
    let mut workflow = merge_workflow(instance, 10, "nested");
    workflow["definitions"] = json!({"subgraphs": [outer, inner]});
    workflow
}

fn run_workflow(tree: &ModelTree, name: &str, workflow: &Value) -> std::process::Output {
    let file = tree.path().join(name);
    std::fs::write(&file, serde_json::to_vec(workflow).expect("json")).expect("write");
    run(&["--base-dir", path_str(tree.path()), "run", path_str(&file)])
}

fn tensor_bytes(path: &Path) -> Vec<(String, String, Vec<usize>, Vec<u8>)> {
    let (tensors, _) = read_reference(path);
    let mut out: Vec<_> = tensors
        .into_iter()
        .map(|(k, t)| (k, t.dtype, t.shape, t.bytes))
        .collect();
    out.sort();
    out
}

#[test]
fn a_merge_two_subgraphs_deep_saves_the_bits_of_the_flat_merge() {
    let tree = ModelTree::new();
    tree.checkpoint("a.safetensors", &Layout::sd15(Scale::Sample), 1);
    tree.checkpoint("b.safetensors", &Layout::sd15(Scale::Sample), 2);
    let out = run_workflow(&tree, "flat.json", &flat_merge(0.3));
    assert!(out.status.success(), "{}", stderr(&out));
    let flat = tensor_bytes(&tree.output().join("flat_00001_.safetensors"));
    let decoy = {
        let out = run_workflow(&tree, "decoy.json", &flat_merge(0.9));
        assert!(out.status.success(), "{}", stderr(&out));
        tensor_bytes(&tree.output().join("flat_00002_.safetensors"))
    };
    assert_ne!(flat, decoy, "the ratio matters");

    for (n, proxy) in [(1, false), (2, true)] {
        let workflow = nested_merge(0.3, proxy, 0);
        let out = run_workflow(&tree, "nested.json", &workflow);
        assert!(out.status.success(), "{}", stderr(&out));
        let saved = tree.output().join(format!("nested_0000{n}_.safetensors"));
        assert!(
            tensor_bytes(&saved) == flat,
            "G{}: not the flat merge's bits",
            if proxy { 2 } else { 3 }
        );
        let (_, meta) = read_reference(&saved);
        let prompt: Value = serde_json::from_str(&meta["prompt"]).expect("prompt");
        assert_eq!(prompt["10:11:3"]["class_type"], "ModelMergeSimple");
        assert_eq!(prompt["10:11:3"]["inputs"]["ratio"], 0.3);
        assert_eq!(prompt["10:11:3"]["inputs"]["model1"], json!(["1", 0]));
        assert_eq!(prompt["4"]["inputs"]["model"], json!(["10:11:3", 0]));
        assert!(prompt.get("10").is_none(), "instances are not prompt nodes");
        // The workflow is embedded with its definitions, so ComfyUI reads the file back.
        let embedded: Value = serde_json::from_str(&meta["workflow"]).expect("workflow");
        assert_eq!(embedded["definitions"], workflow["definitions"]);
    }
}

#[test]
fn muted_and_bypassed_instances_run_nothing_inside() {
    let tree = ModelTree::new();
    tree.checkpoint("a.safetensors", &Layout::sd15(Scale::Sample), 1);
    tree.checkpoint("b.safetensors", &Layout::sd15(Scale::Sample), 2);

    // Muted: the save loses its model input; nothing runs and nothing is written.
    let out = run_workflow(&tree, "muted.json", &nested_merge(0.3, false, 2));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("model"), "{}", stderr(&out));
    assert!(
        files_under(&tree.output()).is_empty(),
        "{:?}",
        files_under(&tree.output())
    );

    // Bypassed: model_a passes through (slot 0 to slot 0), so the save holds a's UNet.
    let out = run_workflow(&tree, "bypassed.json", &nested_merge(0.3, false, 4));
    assert!(out.status.success(), "{}", stderr(&out));
    let saved = tree.read(&tree.output().join("nested_00001_.safetensors"));
    let a = tree.read(&tree.models("checkpoints").join("a.safetensors"));
    let unet = "model.diffusion_model.input_blocks.0.0.weight";
    assert_eq!(saved[unet].bytes, a[unet].bytes);
}

#[test]
fn subgraphs_the_frontend_refuses_are_errors_naming_the_node() {
    let reg = Registry::builtin();
    // A definition holding an instance of itself.
    let mut recursive = nested_merge(0.3, false, 0);
    recursive["definitions"]["subgraphs"][1]["nodes"][0]["type"] = json!("outer-0000");
    let r = flatten(&recursive);
    assert!(
        r.errors
            .iter()
            .any(|e| e.node.as_deref() == Some("10:11:3") && e.message.contains("RecursionError")),
        "{:?}",
        r.errors
    );

    // An input wired straight to the output box.
    let mut through = nested_merge(0.3, false, 0);
    through["definitions"]["subgraphs"][1]["links"][3] =
        link_object(4, (-10, 0), (-20, 0), "MODEL");
    let r = flatten(&through);
    assert!(
        r.errors
            .iter()
            .any(|e| e.node.as_deref() == Some("4") && e.message.contains("straight to its output")),
        "{:?}",
        r.errors
    );

    // Legacy group nodes: refused with the fix.
    let mut group = flat_merge(0.3);
    group["nodes"][2]["type"] = json!("workflow>My merge");
    let (doc, _) = Document::from_json(group).expect("doc");
    let r = resolve(&doc, reg);
    assert!(
        r.errors
            .iter()
            .any(|e| e.node.as_deref() == Some("3") && e.details.contains("Convert to Subgraph")),
        "{:?}",
        r.errors
    );
}

// ---- in the app --------------------------------------------------------------------------

/// The real app, in process: the wrapped merge opens as one node with its promoted ratio; the
/// ratio is edited on the instance (not inside the shared definition); "Open ▸" shows the inside
/// two levels deep and "◀ Workflow" comes back; Queue saves the merge with the edited ratio
/// under its execution id.
#[test]
fn the_app_shows_an_instance_as_one_node_and_opens_its_inside() {
    use crate::gui::Harness;
    let mut h = Harness::prepared(false, None, |base| {
        let ck = base.join("models/checkpoints");
        std::fs::create_dir_all(&ck).expect("mkdir");
        write_layout(
            &ck.join("a.safetensors"),
            &Layout::sd15(Scale::Sample),
            1,
            &[],
        );
        write_layout(
            &ck.join("b.safetensors"),
            &Layout::sd15(Scale::Sample),
            2,
            &[],
        );
    });
    let workflow = nested_merge(0.3, false, 0);
    let file = h.base.path().join("nested.json");
    std::fs::write(&file, serde_json::to_vec(&workflow).expect("json")).expect("write");
    h.drop_file(&file);
    h.wait_for("the workflow and the model lists", |a| {
        a.document.doc.nodes.len() == 4 && !a.canvas.state.models.is_empty()
    });
    h.frames(2);
    assert!(
        h.has_label("Merge (wrapped)"),
        "the definition's name is the title"
    );
    assert!(h.has_label("subgraph · 1 nodes"));
    assert!(!h.has_label("kept, not run"));

    // Click the promoted ratio's slider: the instance's value changes, the definition not.
    let label = h.find("ratio");
    h.click_at(label.right_center() + egui::vec2(60.0, 0.0));
    let instance_ratio = |h: &Harness| {
        h.app
            .document
            .doc
            .node(10)
            .expect("instance")
            .widget_values()[0]
            .as_f64()
    };
    let ratio = instance_ratio(&h).expect("a number");
    assert!(
        (ratio - 0.3).abs() > 1e-6 && (0.0..=1.0).contains(&ratio),
        "{ratio}"
    );
    let saved_defs = h.app.document.doc.to_json()["definitions"].clone();
    assert_eq!(saved_defs, workflow["definitions"], "definitions untouched");

    // Inside, two levels deep, and back. The workflow's selection is out of sight there, so
    // Delete must not remove it.
    h.app.canvas.select_all();
    h.click("Open ▸");
    h.frames(2);
    assert_eq!(
        h.app.inside.as_ref().map(|v| v.path.clone()),
        Some(vec![10])
    );
    assert!(h.has_label("Merge two"), "the nested instance");
    h.click("Open ▸");
    h.frames(2);
    assert_eq!(
        h.app.inside.as_ref().map(|v| v.path.clone()),
        Some(vec![10, 11])
    );
    assert!(h.has_label("Model Merge Simple") || h.has_label("ModelMergeSimple"));
    assert!(
        h.has_label("Merge (wrapped)"),
        "the path shows where we are"
    );
    h.key(egui::Key::Delete, egui::Modifiers::NONE);
    h.frames(2);
    assert_eq!(
        h.app.document.doc.nodes.len(),
        4,
        "nothing out of sight deleted"
    );
    h.click("◀ Workflow");
    h.frames(2);
    assert!(h.app.inside.is_none());
    assert!(h.has_label("subgraph · 1 nodes"));

    h.click("Queue");
    let saved = h.output("nested_00001_.safetensors");
    h.wait_for("the saved merge", |_| saved.is_file());
    let (_, meta) = read_reference(&saved);
    let prompt: Value = serde_json::from_str(&meta["prompt"]).expect("prompt");
    assert_eq!(prompt["10:11:3"]["inputs"]["ratio"].as_f64(), Some(ratio));
}

/// `control_after_generate` reaches promoted seeds: after a queue the instance's value moves on
/// (G2 through the inner KSampler's own "randomize", G3 likewise), the shared definition stays
/// as it was, and the next prompt takes the new seed.
#[test]
fn promoted_seeds_follow_control_after_generate() {
    use amalgam::graph::seeds::after_queue;
    for (name, instance, sampler, index) in [
        ("flux_dev_checkpoint_example.json", 56, "56:52", 7),
        ("flux1_dev_uso_reference_image_gen.json", 112, "112:31", 3),
    ] {
        let (mut doc, _) = Document::from_json(template_json(name)).expect("doc");
        let before = resolve(&doc, Registry::builtin());
        let seed = literal(&before, sampler, "seed").clone();
        let definitions = doc.fields["definitions"].clone();
        let mut draws = 0u64;
        let changed = after_queue(&mut doc, || {
            draws += 1;
            12_345 + draws
        });
        assert!(changed >= 1, "{name}");
        let value = doc.node(instance).expect("instance").widget_values()[index].clone();
        assert_ne!(value, seed, "{name}: randomized");
        assert_eq!(
            doc.fields["definitions"], definitions,
            "{name}: definition untouched"
        );
        let after = resolve(&doc, Registry::builtin());
        assert_eq!(
            literal(&after, sampler, "seed"),
            &value,
            "{name}: the next prompt"
        );
    }
}

/// Nesting multiplies: a root instance of a subgraph holding 30 instances of one holding 30 of
/// one holding 30… would be 810,000 nodes. It is refused once, quickly, by node.
#[test]
fn exponentially_nested_subgraphs_are_refused_not_expanded() {
    let level = |id: usize, inner: Option<&str>| {
        let nodes: Vec<Value> = (0..30)
            .map(|n| match inner {
                Some(t) => ui_node(n + 1, t, vec![], vec![], json!([])),
                None => ui_node(n + 1, "ModelMergeSimple", vec![], vec![], json!([0.5])),
            })
            .collect();
        json!({"id": format!("d{id}"), "version": 1, "name": format!("level {id}"),
               "inputs": [], "outputs": [], "nodes": nodes, "links": []})
    };
    let mut workflow = flat_merge(0.5);
    workflow["nodes"][2]["type"] = json!("d0");
    workflow["definitions"] = json!({"subgraphs": [
        level(0, Some("d1")), level(1, Some("d2")), level(2, Some("d3")), level(3, None),
    ]});
    let started = std::time::Instant::now();
    let r = flatten(&workflow);
    let refusals: Vec<_> = r
        .errors
        .iter()
        .filter(|e| e.message.contains("expand to more than"))
        .collect();
    assert_eq!(refusals.len(), 1, "{:?}", r.errors);
    assert!(r.prompt.nodes.len() <= 100_004, "{}", r.prompt.nodes.len());
    assert!(started.elapsed().as_secs() < 20, "{:?}", started.elapsed());
}
