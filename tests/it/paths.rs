//! Hostile paths: names and prefixes that try to leave their folder are refused with a clear
//! error, and nothing is written outside the output folder, even through a symlink.

use std::path::Path;

use crate::util::{ModelTree, files_under, run_prompt, tempdir};
use amalgam::model::layouts::{Layout, Scale};
use serde_json::{Value, json};

/// A model tree with one checkpoint, `a.safetensors`; the folder around the base must stay
/// untouched by every run.
fn tree() -> ModelTree {
    let t = ModelTree::new();
    t.checkpoint("a.safetensors", &Layout::sd15(Scale::Sample), 1);
    t
}

/// Every file under the tree's root, relative to it.
fn files(t: &ModelTree) -> Vec<String> {
    files_under(t.root())
}

fn save_prompt(ckpt: &str, prefix: &str) -> Value {
    json!({
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CheckpointSave", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "filename_prefix": prefix}}
    })
}

fn lora_prompt(lora: &str) -> Value {
    json!({
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
        "2": {"class_type": "LoraLoaderModelOnly", "inputs": {
            "model": ["1", 0], "lora_name": lora, "strength_model": 1.0}},
        "3": {"class_type": "CheckpointSave", "inputs": {
            "model": ["2", 0], "clip": ["1", 1], "vae": ["1", 2], "filename_prefix": "x"}}
    })
}

#[test]
fn prefixes_and_model_names_that_leave_their_folder_are_refused() {
    let t = tree();
    let before = files(&t);
    // A file just outside the models folder, which `..` names would reach.
    std::fs::copy(
        t.path().join("models/checkpoints/a.safetensors"),
        t.path().join("models/outside.safetensors"),
    )
    .expect("copy");
    let before_with_outside = files(&t);
    assert_eq!(before_with_outside.len(), before.len() + 1);

    let abs = t.root().join("escaped").display().to_string();
    for prefix in [
        "../escaped",
        "checkpoints/../../escaped",
        "..\\escaped",
        "a/b/../../../escaped",
        abs.as_str(),
        "/tmp/amalgam-escaped",
        "C:\\escaped",
        "C:escaped",
        "c:/escaped",
        "x\0y",
    ] {
        let err =
            run_prompt(&t.folders(), &save_prompt("a.safetensors", prefix)).expect_err(prefix);
        assert!(
            err.contains("outside the output folder") || err.contains("NUL"),
            "{prefix:?}: {err}"
        );
        assert_eq!(files(&t), before_with_outside, "{prefix:?} wrote something");
    }
    assert!(!Path::new("/tmp/amalgam-escaped_00001_.safetensors").exists());

    let outside = t
        .path()
        .join("models/outside.safetensors")
        .display()
        .to_string();
    for name in [
        "../outside.safetensors",
        "sub/../../outside.safetensors",
        "..\\outside.safetensors",
        outside.as_str(),
        "C:\\outside.safetensors",
        "a\0.safetensors",
    ] {
        let err = run_prompt(&t.folders(), &save_prompt(name, "ok")).expect_err(name);
        assert!(
            err.contains("value_not_in_list") && err.contains("ckpt_name"),
            "{name:?}: {err}"
        );
        let err = run_prompt(&t.folders(), &lora_prompt(name)).expect_err(name);
        assert!(
            err.contains("value_not_in_list") && err.contains("lora_name"),
            "{name:?}: {err}"
        );
        assert_eq!(files(&t), before_with_outside, "{name:?} wrote something");
    }
}

#[cfg(unix)]
#[test]
fn a_symlinked_output_subfolder_that_leads_outside_is_refused() {
    let t = tree();
    let elsewhere = tempdir();
    let output = t.path().join("output");
    std::fs::create_dir_all(&output).expect("mkdir");
    std::os::unix::fs::symlink(elsewhere.path(), output.join("checkpoints")).expect("link");
    let err = run_prompt(
        &t.folders(),
        &save_prompt("a.safetensors", "checkpoints/sub/merged"),
    )
    .expect_err("refused");
    assert!(err.contains("outside the output folder"), "{err}");
    let left: Vec<_> = std::fs::read_dir(elsewhere.path())
        .expect("read")
        .flatten()
        .collect();
    assert!(left.is_empty(), "written through the symlink: {left:?}");

    // A symlink that stays inside the output folder is followed.
    std::fs::remove_file(output.join("checkpoints")).expect("unlink");
    std::fs::create_dir_all(output.join("real")).expect("mkdir");
    std::os::unix::fs::symlink(output.join("real"), output.join("checkpoints")).expect("link");
    let saved = run_prompt(
        &t.folders(),
        &save_prompt("a.safetensors", "checkpoints/merged"),
    )
    .expect("saved");
    assert!(
        output.join("real/merged_00001_.safetensors").is_file(),
        "{saved:?}"
    );
}

#[test]
fn re_merging_a_saved_output_never_touches_it() {
    // ComfyUI (and Amalgam) list output/checkpoints among the checkpoints, so a result can be
    // merged again under the same prefix: the new file gets the next counter and the input,
    // memory-mapped while the new one is written, is left exactly as it was.
    let t = tree();
    run_prompt(&t.folders(), &save_prompt("a.safetensors", "checkpoints/m")).expect("first save");
    let first = t.path().join("output/checkpoints/m_00001_.safetensors");
    let bytes = std::fs::read(&first).expect("read");
    assert!(
        t.folders()
            .list("checkpoints")
            .contains(&"m_00001_.safetensors".to_owned())
    );
    let saved = run_prompt(
        &t.folders(),
        &save_prompt("m_00001_.safetensors", "checkpoints/m"),
    )
    .expect("second save");
    assert!(saved[0].path.ends_with("m_00002_.safetensors"), "{saved:?}");
    assert_eq!(std::fs::read(&first).expect("read"), bytes);
}
