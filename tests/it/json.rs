//! Workflow JSON as people's tools write it: any indentation (one space, as Python's
//! `json.dump(..., indent=1)`), Python's `NaN` / `Infinity` literals, and 2026 frontends'
//! `widgets_values_named` beside a positional list that no longer matches the node.

use serde_json::{Value, json};

use amalgam::model::layouts::{Layout, Scale};

use crate::util::*;

fn merge_prompt() -> Value {
    json!({
        "1": loader("a.safetensors"),
        "2": loader("b.safetensors"),
        "3": {"class_type": "ModelMergeSimple", "inputs": {"model1": ["1", 0], "model2": ["2", 0], "ratio": 0.25}},
        "4": save(("3", 0), ("1", 1), ("1", 2), "merged"),
    })
}

fn tree() -> ModelTree {
    let tree = ModelTree::new();
    tree.checkpoint("a.safetensors", &Layout::sd15(Scale::Sample), 1);
    tree.checkpoint("b.safetensors", &Layout::sd15(Scale::Sample), 2);
    tree
}

/// Python's `json.dumps(value, indent=indent)` layout, written by hand (no Python in CI).
fn python_indented(value: &Value, indent: usize) -> String {
    let mut buf = Vec::new();
    let pad = " ".repeat(indent);
    let fmt = serde_json::ser::PrettyFormatter::with_indent(pad.as_bytes());
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    serde::Serialize::serialize(value, &mut ser).expect("json");
    String::from_utf8(buf).expect("utf8")
}

#[test]
fn a_prompt_indented_by_one_space_runs_and_is_never_taken_for_a_checkpoint() {
    let tree = tree();
    let text = python_indented(&merge_prompt(), 1);
    assert_eq!(&text.as_bytes()[..2], b"{\n");
    assert_eq!(
        text.as_bytes()[8],
        b'{',
        "the byte safetensors marks its header with"
    );
    let file = tree.path().join("indent1.json");
    std::fs::write(&file, &text).expect("write");
    let base = ["--base-dir", path_str(tree.path())];
    let out = run(&[&base[..], &["run", path_str(&file)]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(tree.output().join("merged_00001_.safetensors").is_file());
    // A checkpoint command names it as JSON instead of a broken safetensors header.
    let out = run(&[&base[..], &["inspect", path_str(&file)]].concat());
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("a JSON file") && err.contains("indent1.json"),
        "{err}"
    );
    assert!(!err.contains("header length"), "{err}");
}

#[test]
fn python_nan_and_infinity_literals_are_read_and_a_nan_ratio_is_refused_by_name() {
    let tree = tree();
    // Harmless where ComfyUI ignores them (an unknown extra field), fatal for a ratio.
    let text = serde_json::to_string(&merge_prompt())
        .expect("json")
        .replace(
            r#""ratio":0.25"#,
            r#""ratio":0.25,"note":[NaN,Infinity,-Infinity]"#,
        );
    let file = tree.path().join("python.json");
    std::fs::write(&file, &text).expect("write");
    let base = ["--base-dir", path_str(tree.path())];
    let out = run(&[&base[..], &["run", path_str(&file)]].concat());
    assert!(out.status.success(), "{}", stderr(&out));

    let nan = serde_json::to_string(&merge_prompt())
        .expect("json")
        .replace(r#""ratio":0.25"#, r#""ratio":NaN"#);
    std::fs::write(&file, &nan).expect("write");
    let out = run(&[&base[..], &["run", path_str(&file)]].concat());
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("node #3") && err.contains("ratio") && err.contains("not a finite number"),
        "{err}"
    );
    assert!(!err.contains("not valid JSON"), "{err}");
    // A PNG's embedded prompt written by Python is read the same way.
    let png = amalgam::format::png::write_png_with_text(
        4,
        4,
        &[(amalgam::format::png::TextKind::TEXt, "prompt", &text)],
    )
    .expect("png");
    let png_file = tree.path().join("python.png");
    std::fs::write(&png_file, png).expect("write");
    let out = run(&[&base[..], &["validate", path_str(&png_file)]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn widgets_values_named_repairs_a_positional_list_of_another_length() {
    let tree = tree();
    let mut doc = amalgam::graph::examples::default_merge("a.safetensors", "b.safetensors");
    let merge = doc.first_of_type("ModelMergeSimple").expect("merge");
    let mut wf = doc.to_json();
    for n in wf["nodes"].as_array_mut().expect("nodes") {
        if n["id"] == json!(merge) {
            // An older node version wrote two positional values; the names say which is ratio.
            n["widgets_values"] = json!(["legacy", 0.8]);
            n["widgets_values_named"] = json!({"ratio": 0.8});
        }
    }
    let file = tree.path().join("named.json");
    std::fs::write(&file, serde_json::to_vec(&wf).expect("json")).expect("write");
    let loaded = amalgam::graph::load::load_file(&file).expect("loads");
    assert!(
        loaded
            .report
            .issues
            .iter()
            .any(|i| i.message.contains("repaired from widgets_values_named")),
        "{:?}",
        loaded.report.issues
    );
    let node = loaded.document.node(merge).expect("merge");
    assert_eq!(node.widget_values()[0], json!(0.8), "ratio from its name");
    // Both are kept for ComfyUI.
    assert_eq!(node.fields["widgets_values_named"], json!({"ratio": 0.8}));
    let out = run(&[
        "--base-dir",
        path_str(tree.path()),
        "run",
        "--json",
        path_str(&file),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (_, meta) = read_reference(&tree.output().join("checkpoints/ComfyUI_00001_.safetensors"));
    let prompt: Value = serde_json::from_str(&meta["prompt"]).expect("prompt");
    assert_eq!(prompt[merge.to_string()]["inputs"]["ratio"], json!(0.8));
    // Without the names the mismatch is not guessed at: the first value is taken, as ComfyUI does.
    doc.node_mut(merge).expect("merge").widgets_values = Some(json!(["legacy", 0.8]));
    let plain = tree.path().join("plain.json");
    std::fs::write(&plain, serde_json::to_vec(&doc.to_json()).expect("json")).expect("write");
    let out = run(&[
        "--base-dir",
        path_str(tree.path()),
        "validate",
        path_str(&plain),
    ]);
    assert!(!out.status.success(), "\"legacy\" is no ratio");
}
