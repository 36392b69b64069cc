//! Workflows end to end: the shared ComfyUI PNGs, synthetic workflows with every kind of node,
//! API prompts, checkpoints with embedded workflows, validation, and broken input.

use std::path::{Path, PathBuf};

use crate::util::*;
use amalgam::format::png::{TextKind, find_text, text_chunks, write_png_with_text};
use amalgam::graph::document::Document;
use amalgam::graph::load::{SourceKind, load_bytes, load_file};
use amalgam::graph::resolve::{SkipReason, resolve};
use amalgam::graph::validate::{Validation, validate};
use amalgam::graph::{Mode, PromptInput};
use amalgam::model::ModelFolders;
use amalgam::model::layouts::SplitMix64;
use amalgam::nodes::Registry;
use serde_json::{Value, json};

fn shared(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/workflows")
        .join(name);
    assert!(p.is_file(), "shared workflow missing: {}", p.display());
    p
}

fn embedded(name: &str, key: &str) -> Value {
    let bytes = std::fs::read(shared(name)).expect("read png");
    let chunks = text_chunks(&bytes).expect("chunks");
    serde_json::from_str(find_text(&chunks, key).expect("chunk present")).expect("json")
}

fn check(doc: &Document, folders: &ModelFolders) -> Validation {
    let reg = Registry::builtin();
    validate(resolve(doc, reg), reg, folders)
}

/// A base folder holding the two checkpoints `rich_workflow` loads (`a.safetensors`, and
/// `sub/b.safetensors`, which the workflow names with a Windows separator).
fn rich_workflow_models() -> (tempfile::TempDir, ModelFolders) {
    let base = tempdir();
    let ck = base.path().join("models/checkpoints");
    std::fs::create_dir_all(ck.join("sub")).expect("mkdir");
    for f in ["a.safetensors", "sub/b.safetensors"] {
        std::fs::write(ck.join(f), b"x").expect("write");
    }
    let folders = ModelFolders::new(base.path(), None, None);
    (base, folders)
}

fn error_types(v: &Validation) -> Vec<&str> {
    v.errors.iter().map(|e| e.kind.as_str()).collect()
}

#[test]
fn shared_pngs_load_losslessly_with_their_nodes_links_and_values() {
    for (file, nodes, links) in [
        ("model_merging_basic.png", 11, 14),
        ("model_merging_lora.png", 12, 0),
    ] {
        let original = embedded(file, "workflow");
        let loaded = load_file(&shared(file)).expect("loads");
        assert_eq!(loaded.source, SourceKind::Png);
        assert!(!loaded.from_prompt, "workflow chunk wins over prompt");
        assert!(loaded.report.issues.is_empty(), "{:?}", loaded.report);
        let doc = &loaded.document;
        assert_eq!(doc.nodes.len(), nodes, "{file}");
        if links > 0 {
            assert_eq!(doc.links.len(), links, "{file}");
        }
        // Node types, links and widget values match the embedded JSON.
        for raw in original["nodes"].as_array().expect("nodes") {
            let n = doc
                .node(raw["id"].as_i64().expect("id"))
                .expect("node kept");
            assert_eq!(n.type_, raw["type"].as_str().expect("type"));
            assert_eq!(n.widgets_values.as_ref(), raw.get("widgets_values"));
        }
        // Lossless: writing the document back gives the same JSON, and again after a re-read.
        let written = doc.to_json();
        assert_eq!(written, original, "{file}: parse → write changed the JSON");
        let (again, _) = Document::from_json(written.clone()).expect("re-read");
        assert_eq!(again.to_json(), written);
    }
    let doc = load_file(&shared("model_merging_basic.png"))
        .expect("loads")
        .document;
    let merge = doc.node(17).expect("merge node");
    assert_eq!(merge.type_, "ModelMergeSimple");
    assert_eq!(merge.widget_values(), &[json!(0.49999999999999956)]);
    assert_eq!(doc.node(14).expect("save").mode, Mode::Never);
    assert_eq!(doc.node(14).expect("save").pos.get(), Some([888.0, -121.0]));
}

#[test]
fn shared_pngs_validate_their_image_half_and_the_save_once_unmuted() {
    for file in ["model_merging_basic.png", "model_merging_lora.png"] {
        let base = tempdir();
        let folders = ModelFolders::new(base.path(), None, None);
        let mut doc = load_file(&shared(file)).expect("loads").document;
        // The save is muted; SaveImage runs, and the models it needs are missing.
        let v = check(&doc, &folders);
        assert!(!v.ok());
        assert!(
            error_types(&v).iter().all(|t| *t == "value_not_in_list"),
            "{file}: {:?}",
            v.errors
        );
        assert!(
            v.skipped
                .iter()
                .any(|s| s.class_type == "CheckpointSave" && s.reason == SkipReason::Muted)
        );
        assert!(
            !v.skipped.iter().any(|s| s.reason == SkipReason::Unknown),
            "every node of the example is registered: {:?}",
            v.skipped
        );

        // Unmute the save: now the missing model files are the only problem.
        let save = doc
            .nodes
            .iter_mut()
            .find(|n| n.type_ == "CheckpointSave")
            .expect("save");
        save.mode = Mode::Always;
        let save_id = save.id.to_string();
        let v = check(&doc, &folders);
        assert!(!v.ok());
        assert!(
            error_types(&v).iter().all(|t| *t == "value_not_in_list"),
            "{:?}",
            v.errors
        );
        assert!(
            v.errors
                .iter()
                .any(|e| e.details.contains("v1-5-pruned-emaonly.ckpt"))
        );

        // With files of those names in the model folders, it validates cleanly.
        for (kind, name) in [
            ("checkpoints", "v1-5-pruned-emaonly.ckpt"),
            ("checkpoints", "cardosAnime_v10.safetensors"),
            ("vae", "kl-f8-anime2.ckpt"),
            ("loras", "theovercomer8sContrastFix_sd15.safetensors"),
        ] {
            let dir = base.path().join("models").join(kind);
            std::fs::create_dir_all(&dir).expect("mkdir");
            std::fs::write(dir.join(name), b"x").expect("write");
        }
        let v = check(&doc, &folders);
        assert!(v.errors.is_empty(), "{file}: {:?}", v.errors);
        assert!(v.outputs.contains(&save_id), "{:?}", v.outputs);
        let image = doc
            .nodes
            .iter()
            .find(|n| n.type_ == "SaveImage")
            .expect("SaveImage")
            .id
            .to_string();
        assert!(v.outputs.contains(&image), "{:?}", v.outputs);
        let save_node = v.prompt.get(&save_id).expect("save in prompt");
        assert_eq!(
            save_node.input("filename_prefix"),
            Some(&PromptInput::Value(json!("checkpoints/ComfyUI")))
        );
    }
}

#[test]
fn cli_validate_reports_json_and_exit_codes() {
    let base = tempdir();
    let png = shared("model_merging_basic.png");
    let out = run(&[
        "--base-dir",
        path_str(base.path()),
        "validate",
        "--json",
        path_str(&png),
    ]);
    assert!(!out.status.success(), "nothing can run: exit non-zero");
    let j: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(j["ok"], false);
    // The image half runs now; its models are missing.
    assert_eq!(j["errors"][0]["type"], "value_not_in_list");
    assert_eq!(j["errors"][0]["node"], "4");
    let skipped: Vec<(&str, &str)> = j["skipped"]
        .as_array()
        .expect("skipped")
        .iter()
        .map(|s| {
            (
                s["node"].as_str().unwrap_or(""),
                s["reason"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(skipped, [("14", "muted")]);

    // Unmute, point the loaders at existing files, save as JSON: valid, exit 0.
    let mut doc = load_file(&png).expect("load").document;
    doc.node_mut(14).expect("save").mode = Mode::Always;
    let ck = base.path().join("models/checkpoints");
    std::fs::create_dir_all(&ck).expect("mkdir");
    std::fs::create_dir_all(base.path().join("models/vae")).expect("mkdir");
    for f in ["v1-5-pruned-emaonly.ckpt", "cardosAnime_v10.safetensors"] {
        std::fs::write(ck.join(f), b"x").expect("write");
    }
    std::fs::write(base.path().join("models/vae/kl-f8-anime2.ckpt"), b"x").expect("write");
    let json_path = base.path().join("unmuted.json");
    std::fs::write(
        &json_path,
        serde_json::to_vec(&doc.to_json()).expect("json"),
    )
    .expect("write");
    let out = run(&[
        "--base-dir",
        path_str(base.path()),
        "validate",
        "--json",
        path_str(&json_path),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let j: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(j["ok"], true);
    assert_eq!(j["outputs"], json!(["9", "14"]));
    assert_eq!(j["errors"], json!([]));
    assert_eq!(j["source"], "workflow-json");
    let text = stdout(&run(&[
        "--base-dir",
        path_str(base.path()),
        "validate",
        path_str(&json_path),
    ]));
    assert!(text.contains("ready: output node(s) #9, #14"), "{text}");
}

/// A workflow with everything a real one can hold: unknown nodes, groups, notes, reroutes, a
/// primitive, a bypassed node, object-form positions, custom fields, schema-1 object links.
fn rich_workflow(object_links: bool) -> Value {
    let link = |id: i64, o: i64, os: i64, t: i64, ts: i64, ty: &str| {
        if object_links {
            json!({"id": id, "origin_id": o, "origin_slot": os, "target_id": t, "target_slot": ts, "type": ty, "parentId": 3})
        } else {
            json!([id, o, os, t, ts, ty])
        }
    };
    json!({
        "id": "4b1c9f1e-0000-4000-8000-000000000000",
        "revision": 0,
        "last_node_id": 9,
        "last_link_id": 9,
        "nodes": [
            {"id": 1, "type": "CheckpointLoaderSimple", "pos": [0, 0], "size": {"0": 315, "1": 98}, "flags": {}, "order": 0, "mode": 0,
             "outputs": [{"name": "MODEL", "type": "MODEL", "links": [1], "slot_index": 0},
                         {"name": "CLIP", "type": "CLIP", "links": [5], "slot_index": 1},
                         {"name": "VAE", "type": "VAE", "links": [6], "slot_index": 2}],
             "properties": {"Node name for S&R": "CheckpointLoaderSimple", "cnr_id": "comfy-core", "ver": "0.3.64"},
             "widgets_values": ["a.safetensors"], "color": "#322", "bgcolor": "#533"},
            {"id": 2, "type": "CheckpointLoaderSimple", "pos": [0, 200], "size": [315, 98], "flags": {"collapsed": true}, "order": 1, "mode": 0,
             "outputs": [{"name": "MODEL", "type": "MODEL", "links": [2]}, {"name": "CLIP", "type": "CLIP", "links": null}, {"name": "VAE", "type": "VAE", "links": null}],
             "properties": {}, "widgets_values": ["sub\\b.safetensors"]},
            {"id": 3, "type": "ModelMergeSimple", "title": "Blend", "pos": [400, 0], "size": [315, 78], "flags": {}, "order": 3, "mode": 0,
             "inputs": [{"name": "model1", "type": "MODEL", "link": 1}, {"name": "model2", "type": "MODEL", "link": 2},
                        {"name": "ratio", "type": "FLOAT", "link": 7, "widget": {"name": "ratio"}}],
             "outputs": [{"name": "MODEL", "type": "MODEL", "links": [3]}], "properties": {}, "widgets_values": [0.3]},
            {"id": 4, "type": "Reroute", "pos": [750, 0], "size": [75, 26], "flags": {}, "order": 4, "mode": 0,
             "inputs": [{"name": "", "type": "*", "link": 3}], "outputs": [{"name": "", "type": "MODEL", "links": [4]}],
             "properties": {"showOutputText": false, "horizontal": false}},
            {"id": 5, "type": "LoraLoader", "pos": [850, 0], "size": [315, 126], "flags": {}, "order": 5, "mode": 4,
             "inputs": [{"name": "model", "type": "MODEL", "link": 4}, {"name": "clip", "type": "CLIP", "link": 5}],
             "outputs": [{"name": "MODEL", "type": "MODEL", "links": [8]}, {"name": "CLIP", "type": "CLIP", "links": [9]}],
             "properties": {}, "widgets_values": ["l.safetensors", 1, 1]},
            {"id": 6, "type": "CheckpointSave", "pos": [1200, 0], "size": [315, 98], "flags": {}, "order": 6, "mode": 0,
             "inputs": [{"name": "model", "type": "MODEL", "link": 8}, {"name": "clip", "type": "CLIP", "link": 9}, {"name": "vae", "type": "VAE", "link": 6}],
             "properties": {}, "widgets_values": ["merges/test"]},
            {"id": 7, "type": "PrimitiveNode", "pos": [0, 400], "size": [210, 82], "flags": {}, "order": 2, "mode": 0,
             "outputs": [{"name": "FLOAT", "type": "FLOAT", "links": [7], "widget": {"name": "ratio"}}],
             "properties": {"Run widget replace on values": false}, "widgets_values": [0.25, "fixed"]},
            {"id": 8, "type": "Note", "pos": [0, 600], "size": [300, 100], "flags": {}, "order": 7, "mode": 0,
             "properties": {"text": ""}, "widgets_values": ["merge notes: keep ratio low"], "color": "#432"},
            {"id": 9, "type": "SomeCustomNode", "pos": [400, 600], "size": [300, 100], "flags": {}, "order": 8, "mode": 0,
             "inputs": [{"name": "image", "type": "IMAGE", "link": null}], "outputs": [],
             "properties": {"aux_id": "someone/custom"}, "widgets_values": {"mode": "fancy", "amount": 3}}
        ],
        "links": [link(1, 1, 0, 3, 0, "MODEL"), link(2, 2, 0, 3, 1, "MODEL"), link(3, 3, 0, 4, 0, "MODEL"),
                  link(4, 4, 0, 5, 0, "MODEL"), link(5, 1, 1, 5, 1, "CLIP"), link(6, 1, 2, 6, 2, "VAE"),
                  link(7, 7, 0, 3, 2, "FLOAT"), link(8, 5, 0, 6, 0, "MODEL"), link(9, 5, 1, 6, 1, "CLIP")],
        "groups": [{"id": 1, "title": "Inputs", "bounding": [-10, -40, 340, 320], "color": "#3f789e", "font_size": 24, "flags": {}}],
        "config": {},
        "extra": {"ds": {"scale": 0.8, "offset": [120.5, -40]}, "frontendVersion": "1.28.7", "reroutes": [], "someFutureField": {"x": 1}},
        "version": 0.4,
        "models": [{"name": "a.safetensors", "url": "https://example.invalid/a", "directory": "checkpoints"}]
    })
}

#[test]
fn synthetic_workflows_round_trip_and_resolve_like_the_frontend() {
    for object_links in [false, true] {
        let src = rich_workflow(object_links);
        let (doc, report) = Document::from_json(src.clone()).expect("parse");
        assert!(report.issues.is_empty(), "{report:?}");
        assert_eq!(
            doc.to_json(),
            src,
            "lossless (object links: {object_links})"
        );

        let (_base, folders) = rich_workflow_models();
        let v = check(&doc, &folders);
        assert!(v.errors.is_empty(), "{:?}", v.errors);
        assert_eq!(v.outputs, ["6"]);
        let p = &v.prompt;
        // Primitive value lands in the converted widget; the reroute and the bypassed LoRA are
        // looked through; the Note and the primitive never appear.
        let merge = p.get("3").expect("merge");
        assert_eq!(merge.input("ratio"), Some(&PromptInput::Value(json!(0.25))));
        assert_eq!(merge.inputs[0].0, "ratio", "widgets first");
        let save = p.get("6").expect("save");
        assert_eq!(
            save.input("model"),
            Some(&PromptInput::Link {
                node: "3".into(),
                slot: 0
            })
        );
        assert_eq!(
            save.input("clip"),
            Some(&PromptInput::Link {
                node: "1".into(),
                slot: 1
            })
        );
        assert_eq!(
            save.input("vae"),
            Some(&PromptInput::Link {
                node: "1".into(),
                slot: 2
            })
        );
        assert!(
            p.get("4").is_none()
                && p.get("5").is_none()
                && p.get("7").is_none()
                && p.get("8").is_none()
        );
        // Windows separators in model names are normalised.
        let loader = p.get("2").expect("loader");
        assert_eq!(
            loader.input("ckpt_name"),
            Some(&PromptInput::Value(json!("sub/b.safetensors")))
        );
        assert!(
            v.skipped
                .iter()
                .any(|s| s.node == "5" && s.reason == SkipReason::Bypassed)
        );
        assert!(
            v.skipped
                .iter()
                .any(|s| s.node == "9" && s.reason == SkipReason::Unknown)
        );
        // The titled node carries its title into the prompt's _meta.
        assert_eq!(merge.title.as_deref(), Some("Blend"));
    }
}

#[test]
fn muting_and_bypassing_change_what_runs() {
    let (_base, folders) = rich_workflow_models();
    let (mut doc, _) = Document::from_json(rich_workflow(false)).expect("parse");

    // Bypassing the merge passes model1 (node 1) straight through.
    doc.node_mut(3).expect("merge").mode = Mode::Bypass;
    let v = check(&doc, &folders);
    assert!(v.ok(), "{:?}", v.errors);
    let save = v.prompt.get("6").expect("save");
    assert_eq!(
        save.input("model"),
        Some(&PromptInput::Link {
            node: "1".into(),
            slot: 0
        })
    );

    // Muting the loader that feeds the save's VAE drops the link: required input missing.
    doc.node_mut(3).expect("merge").mode = Mode::Always;
    doc.node_mut(1).expect("loader").mode = Mode::Never;
    let v = check(&doc, &folders);
    assert!(!v.ok());
    let missing: Vec<(&str, &str)> = v
        .errors
        .iter()
        .filter(|e| e.kind == "required_input_missing")
        .map(|e| (e.node.as_deref().unwrap_or(""), e.details.as_str()))
        .collect();
    assert!(missing.contains(&("3", "model1")), "{missing:?}");
}

fn node_with(doc: &mut Document, id: i64, f: impl FnOnce(&mut amalgam::graph::Node)) {
    f(doc.node_mut(id).expect("node"));
}

#[test]
fn every_validation_error_type_is_reported_on_its_node() {
    let (_base, folders) = rich_workflow_models();
    let fresh = || Document::from_json(rich_workflow(false)).expect("parse").0;
    let first_error = |doc: &Document| {
        let v = check(doc, &folders);
        assert!(!v.ok(), "expected failure");
        v.errors.into_iter().next().expect("an error")
    };

    let mut doc = fresh();
    node_with(&mut doc, 7, |n| {
        n.widgets_values = Some(json!([1.5, "fixed"]));
    });
    let e = first_error(&doc);
    assert_eq!(
        (e.kind.as_str(), e.node.as_deref()),
        ("value_bigger_than_max", Some("3"))
    );
    assert_eq!(e.message, "Value 1.5 bigger than max of 1.0");
    assert_eq!(e.details, "ratio");

    let mut doc = fresh();
    node_with(&mut doc, 7, |n| {
        n.widgets_values = Some(json!([-0.5, "fixed"]));
    });
    let e = first_error(&doc);
    assert_eq!(e.kind, "value_smaller_than_min");
    assert_eq!(e.message, "Value -0.5 smaller than min of 0.0");

    let mut doc = fresh();
    node_with(&mut doc, 7, |n| {
        n.widgets_values = Some(json!(["lots", "fixed"]));
    });
    let e = first_error(&doc);
    assert_eq!(e.kind, "invalid_input_type");
    assert_eq!(
        e.message,
        "Failed to convert an input value to a FLOAT value"
    );
    assert!(e.details.starts_with("ratio, lots"), "{}", e.details);

    let mut doc = fresh();
    node_with(&mut doc, 7, |n| {
        n.widgets_values = Some(json!(["NaN", "fixed"]));
    });
    assert_eq!(
        first_error(&doc).kind,
        "invalid_input_type",
        "NaN is refused"
    );

    let mut doc = fresh();
    node_with(&mut doc, 1, |n| {
        n.widgets_values = Some(json!(["missing.safetensors"]));
    });
    let e = first_error(&doc);
    assert_eq!(
        (e.kind.as_str(), e.node.as_deref()),
        ("value_not_in_list", Some("1"))
    );
    assert_eq!(
        e.details,
        "ckpt_name: 'missing.safetensors' not in ['a.safetensors', 'sub/b.safetensors']"
    );

    // A CLIP wired into a MODEL input.
    let mut doc = fresh();
    doc.connect(1, 1, 3, "model2").expect("connect");
    let e = first_error(&doc);
    assert_eq!(e.kind, "return_type_mismatch");
    assert_eq!(
        e.details,
        "model2, received_type(CLIP) mismatch input_type(MODEL)"
    );

    // A required input with no link.
    let mut doc = fresh();
    let link = doc.node(6).expect("save").inputs[2].link.expect("vae link");
    doc.remove_link(link);
    let e = first_error(&doc);
    assert_eq!(
        (e.kind.as_str(), e.details.as_str()),
        ("required_input_missing", "vae")
    );

    // An unknown node that the output depends on.
    let mut doc = fresh();
    node_with(&mut doc, 2, |n| n.type_ = "SomeCustomLoader".into());
    let e = first_error(&doc);
    assert_eq!(
        (e.kind.as_str(), e.node.as_deref()),
        ("invalid_prompt", Some("2"))
    );
    assert!(e.message.contains("SomeCustomLoader"), "{}", e.message);

    // A dependency cycle: the merge feeds itself.
    let mut doc = fresh();
    doc.connect(3, 0, 3, "model2").expect("connect");
    let v = check(&doc, &folders);
    assert!(
        v.errors.iter().any(|e| e.kind == "dependency_cycle"),
        "{:?}",
        v.errors
    );
    assert!(!v.ok());

    // No output at all.
    let mut doc = fresh();
    node_with(&mut doc, 6, |n| n.mode = Mode::Never);
    let e = first_error(&doc);
    assert_eq!((e.kind.as_str(), e.node), ("prompt_no_outputs", None));

    // An instance of a subgraph whose definition cannot be read (no nodes) is refused, named.
    let mut doc = fresh();
    doc.fields.insert(
        "definitions".into(),
        json!({"subgraphs": [{"id": "0a0b0c0d-1111-4222-8333-444455556666", "name": "inner"}]}),
    );
    node_with(&mut doc, 3, |n| {
        n.type_ = "0a0b0c0d-1111-4222-8333-444455556666".into();
    });
    let v = check(&doc, &folders);
    let e = v
        .errors
        .iter()
        .find(|e| e.node.as_deref() == Some("3"))
        .expect("error on the subgraph node");
    assert!(
        e.message
            .contains("subgraph whose definition cannot be read"),
        "{}",
        e.message
    );
}

#[test]
fn api_prompts_load_as_laid_out_documents_and_resolve_back() {
    let prompt = embedded("model_merging_basic.png", "prompt");
    let dir = tempdir();
    let path = dir.path().join("api.json");
    std::fs::write(&path, serde_json::to_vec(&prompt).expect("json")).expect("write");
    let loaded = load_file(&path).expect("load");
    assert_eq!(loaded.source, SourceKind::ApiJson);
    assert!(loaded.from_prompt);
    let doc = &loaded.document;
    assert_eq!(doc.nodes.len(), 10);
    // Laid out left to right: each node sits right of everything it depends on.
    for l in &doc.links {
        let (o, t) = (
            doc.node(l.origin_id).expect("o"),
            doc.node(l.target_id).expect("t"),
        );
        assert!(o.pos.get().expect("pos")[0] < t.pos.get().expect("pos")[0]);
    }
    let positions: std::collections::HashSet<String> = doc
        .nodes
        .iter()
        .map(|n| format!("{:?}", n.pos.get()))
        .collect();
    assert_eq!(positions.len(), 10, "no two nodes on top of each other");
    // Resolving the laid-out document gives the registered nodes' inputs back.
    let resolved = resolve(doc, Registry::builtin());
    let merge = resolved.prompt.get("17").expect("merge");
    assert_eq!(
        merge.input("ratio"),
        Some(&PromptInput::Value(json!(0.49999999999999956)))
    );
    assert_eq!(
        merge.input("model1"),
        Some(&PromptInput::Link {
            node: "4".into(),
            slot: 0
        })
    );
    assert_eq!(
        merge.input("model2"),
        Some(&PromptInput::Link {
            node: "11".into(),
            slot: 0
        })
    );
    let ks = resolved.prompt.get("3").expect("ksampler kept");
    assert_eq!(
        ks.input("model"),
        Some(&PromptInput::Link {
            node: "17".into(),
            slot: 0
        })
    );
}

#[test]
fn checkpoints_and_pngs_of_every_text_kind_carry_workflows() {
    let dir = tempdir();
    let workflow = serde_json::to_string(&rich_workflow(false)).expect("json");
    let prompt =
        serde_json::to_string(&embedded("model_merging_basic.png", "prompt")).expect("json");
    let specs = [spec(
        "model.diffusion_model.x",
        amalgam::format::DType::F16,
        &[2],
    )];
    let st = dir.path().join("merged.safetensors");
    write_safetensors(
        &st,
        &specs,
        1,
        &Default::default(),
        &[("prompt", &prompt), ("workflow", &workflow)],
    );
    let l = load_file(&st).expect("safetensors");
    assert_eq!((l.source, l.from_prompt), (SourceKind::Safetensors, false));
    assert_eq!(l.document.nodes.len(), 9);

    let only_prompt = dir.path().join("prompt-only.safetensors");
    write_safetensors(
        &only_prompt,
        &specs,
        1,
        &Default::default(),
        &[("prompt", &prompt)],
    );
    let l = load_file(&only_prompt).expect("prompt only");
    assert!(l.from_prompt);

    let none = dir.path().join("plain.safetensors");
    write_safetensors(&none, &specs, 1, &Default::default(), &[]);
    let err = load_file(&none).expect_err("no workflow").to_string();
    assert!(
        err.contains("no ComfyUI workflow") && err.contains("plain.safetensors"),
        "{err}"
    );

    for kind in [TextKind::TEXt, TextKind::ZTXt, TextKind::ITXt] {
        let png = write_png_with_text(
            8,
            8,
            &[
                (TextKind::TEXt, "prompt", &prompt),
                (kind, "workflow", &workflow),
            ],
        )
        .expect("png");
        let l = load_bytes(&png).expect("png");
        assert!(!l.from_prompt, "{kind:?}");
        assert_eq!(l.document.nodes.len(), 9);
    }
    // Later duplicate keyword wins.
    let png = write_png_with_text(
        4,
        4,
        &[
            (TextKind::TEXt, "workflow", "{\"nodes\": [], \"links\": []}"),
            (TextKind::ITXt, "workflow", &workflow),
        ],
    )
    .expect("png");
    assert_eq!(load_bytes(&png).expect("png").document.nodes.len(), 9);
    let png =
        write_png_with_text(4, 4, &[(TextKind::TEXt, "parameters", "a1111 text")]).expect("png");
    let err = load_bytes(&png).expect_err("no workflow").to_string();
    assert!(err.contains("no ComfyUI workflow"), "{err}");
}

#[test]
fn partially_broken_workflows_load_what_they_can_and_say_what_they_skipped() {
    let mut w = rich_workflow(false);
    let nodes = w["nodes"].as_array_mut().expect("nodes");
    nodes.push(json!({"id": 3, "type": "Duplicate", "pos": [0, 0]}));
    nodes.push(json!({"id": "x", "type": "BadId", "pos": [0, 0]}));
    nodes.push(json!({"id": 20, "type": "NoPos"}));
    nodes.push(json!({"id": 21, "type": "StringPos", "pos": ["a", "b"]}));
    nodes.push(json!({"id": 22, "type": "HugePos", "pos": [1e308, -1e308], "size": "big"}));
    nodes.push(json!(42));
    let links = w["links"].as_array_mut().expect("links");
    links.push(json!([50, 99, 0, 3, 0, "MODEL"]));
    links.push(json!([51, 1, 7, 6, 0, "MODEL"]));
    links.push(json!(["bad"]));
    let (doc, report) = Document::from_json(w).expect("loads");
    assert_eq!(
        doc.nodes.len(),
        10,
        "9 good nodes + the one with absurd but finite numbers"
    );
    let text: Vec<&str> = report.issues.iter().map(|i| i.message.as_str()).collect();
    assert!(
        text.iter()
            .any(|m| m.contains("#3") && m.contains("earlier node")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|m| m.contains("id is missing or not an integer")),
        "{text:?}"
    );
    assert!(
        text.iter().any(|m| m.contains("no valid position")),
        "{text:?}"
    );
    assert!(
        text.iter().any(|m| m.contains("missing node #99")),
        "{text:?}"
    );
    assert!(
        text.iter().any(|m| m.contains("missing output slot 7")),
        "{text:?}"
    );
    assert!(text.iter().any(|m| m.contains("link skipped")), "{text:?}");
    // Dangling links are ignored by resolution, never followed.
    let resolved = resolve(&doc, Registry::builtin());
    assert!(resolved.prompt.get("3").is_some());

    for bad in [json!([1, 2]), json!({"links": []}), json!("text")] {
        assert!(Document::from_json(bad).is_err());
    }
}

/// Random bytes and mutations of real PNG and JSON never panic the readers.
#[test]
fn fuzzed_inputs_never_panic() {
    let png = std::fs::read(shared("model_merging_basic.png")).expect("png");
    let json_text = serde_json::to_vec(&rich_workflow(true)).expect("json");
    let prompt_text =
        serde_json::to_vec(&embedded("model_merging_lora.png", "prompt")).expect("json");
    let base = tempdir();
    let folders = ModelFolders::new(base.path(), None, None);
    let mut rng = SplitMix64(0xfeed);
    let mut reached_resolver = 0;
    let mut exercise = |bytes: &[u8]| {
        if let Ok(l) = load_bytes(bytes) {
            let _ = l.document.to_json();
            let reg = Registry::builtin();
            let _ = validate(resolve(&l.document, reg), reg, &folders);
            reached_resolver += 1;
        }
    };
    for _ in 0..300 {
        let len = (rng.next_u64() % 512) as usize;
        let noise: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        exercise(&noise);
    }
    // PNG: flipped bytes in the header and text chunks (CRC errors), and truncations.
    let text_end = png.windows(4).position(|w| w == b"IDAT").expect("idat") + 64;
    for _ in 0..300 {
        let mut m = png[..text_end].to_vec();
        for _ in 0..1 + rng.next_u64() % 4 {
            let at = (rng.next_u64() as usize) % m.len();
            m[at] ^= 1 << (rng.next_u64() % 8);
        }
        let cut = (rng.next_u64() as usize) % m.len();
        exercise(&m);
        exercise(&m[..cut]);
    }
    // JSON: structural mutations that stay parseable often enough to reach the resolver.
    let tokens: [&[u8]; 10] = [
        b"null",
        b"-1",
        b"1e999",
        b"\"x\"",
        b"[]",
        b"{}",
        b"0.5",
        b"true",
        b"99999999999999999999",
        b"[1,2]",
    ];
    for src in [&json_text, &prompt_text] {
        for _ in 0..1500 {
            let mut m = src.clone();
            for _ in 0..1 + rng.next_u64() % 3 {
                // Replace a number or string token with another value.
                let at = (rng.next_u64() as usize) % m.len();
                let Some(start) = m[at..]
                    .iter()
                    .position(|b| b.is_ascii_digit() || *b == b'"')
                    .map(|p| p + at)
                else {
                    continue;
                };
                let end = if m[start] == b'"' {
                    m[start + 1..]
                        .iter()
                        .position(|b| *b == b'"')
                        .map_or(m.len(), |p| start + p + 2)
                } else {
                    m[start..]
                        .iter()
                        .position(|b| {
                            !(b.is_ascii_digit() || *b == b'.' || *b == b'e' || *b == b'-')
                        })
                        .map_or(m.len(), |p| start + p)
                };
                let tok = tokens[(rng.next_u64() as usize) % tokens.len()];
                m.splice(start..end, tok.iter().copied());
            }
            exercise(&m);
        }
    }
    // The mutations must mostly stay loadable, or the resolver and validator were not exercised.
    assert!(
        reached_resolver > 400,
        "only {reached_resolver} inputs reached the resolver"
    );
}

#[test]
fn api_prompts_are_laid_out_in_linear_time_and_bounded_space() {
    // A link's slot number does not size a node of unknown type (found by cargo fuzz: a link to
    // output 691 made 692 slots; 100000000 would have made that many).
    let text = json!({
        "1": {"class_type": "SomeCustomNode", "inputs": {}},
        "2": {"class_type": "OtherCustomNode", "inputs": {"x": ["1", 100_000_000], "y": ["1", 2]}}
    })
    .to_string();
    let loaded = load_bytes(text.as_bytes()).expect("loads");
    let node = loaded.document.node(1).expect("node 1");
    assert_eq!(node.outputs.len(), 3);
    assert!(
        loaded
            .report
            .issues
            .iter()
            .any(|i| i.message.contains("missing output 100000000")),
        "{:?}",
        loaded.report.issues
    );
    // A long chain listed backwards (the worst order for layering by relaxation) is laid out
    // with each node one column right of its input.
    let n = 3000;
    let mut prompt = serde_json::Map::new();
    for i in (1..=n).rev() {
        let inputs = if i == 1 {
            json!({})
        } else {
            json!({"x": [(i - 1).to_string(), 0]})
        };
        prompt.insert(
            i.to_string(),
            json!({"class_type": "Custom", "inputs": inputs}),
        );
    }
    let loaded = load_bytes(Value::Object(prompt).to_string().as_bytes()).expect("loads");
    let x = |id| {
        loaded
            .document
            .node(id)
            .expect("node")
            .pos
            .get()
            .expect("pos")[0]
    };
    assert_eq!(x(n) - x(1), (n - 1) as f64 * 380.0);
}
