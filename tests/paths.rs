//! Hostile paths: names and prefixes that try to leave their folder are refused with a clear
//! error, and nothing is written outside the output folder, even through a symlink.

mod common;

use std::path::{Path, PathBuf};

use amalgam::model::folders::ModelFolders;
use amalgam::model::layouts::{Layout, Scale};
use common::{run_prompt, tempdir, write_layout};
use serde_json::{Value, json};

/// `<root>/base` holds models and output; `<root>` itself must stay untouched.
struct Tree {
    root: tempfile::TempDir,
}

impl Tree {
    fn new() -> Tree {
        let t = Tree { root: tempdir() };
        let ck = t.base().join("models/checkpoints");
        std::fs::create_dir_all(&ck).expect("mkdir");
        std::fs::create_dir_all(t.base().join("models/loras")).expect("mkdir");
        write_layout(
            &ck.join("a.safetensors"),
            &Layout::sd15(Scale::Sample),
            1,
            &[],
        );
        t
    }
    fn base(&self) -> PathBuf {
        self.root.path().join("base")
    }
    fn folders(&self) -> ModelFolders {
        ModelFolders::new(&self.base(), None, None)
    }
    /// Every file under the root, relative to it.
    fn files(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![self.root.path().to_owned()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() && !p.is_symlink() {
                    stack.push(p);
                } else if let Ok(rel) = p.strip_prefix(self.root.path()) {
                    out.push(rel.display().to_string());
                }
            }
        }
        out.sort();
        out
    }
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
    let t = Tree::new();
    let before = t.files();
    // A file just outside the models folder, which `..` names would reach.
    std::fs::copy(
        t.base().join("models/checkpoints/a.safetensors"),
        t.base().join("models/outside.safetensors"),
    )
    .expect("copy");
    let before_with_outside = t.files();
    assert_eq!(before_with_outside.len(), before.len() + 1);

    let abs = t.root.path().join("escaped").display().to_string();
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
        assert_eq!(t.files(), before_with_outside, "{prefix:?} wrote something");
    }
    assert!(!Path::new("/tmp/amalgam-escaped_00001_.safetensors").exists());

    let outside = t
        .base()
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
        assert_eq!(t.files(), before_with_outside, "{name:?} wrote something");
    }
}

#[cfg(unix)]
#[test]
fn a_symlinked_output_subfolder_that_leads_outside_is_refused() {
    let t = Tree::new();
    let elsewhere = tempdir();
    let output = t.base().join("output");
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
    let t = Tree::new();
    run_prompt(&t.folders(), &save_prompt("a.safetensors", "checkpoints/m")).expect("first save");
    let first = t.base().join("output/checkpoints/m_00001_.safetensors");
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
