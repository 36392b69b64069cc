//! What saved files carry besides their data: ComfyUI's `--disable-metadata` (no prompt or
//! workflow, in checkpoints and PNGs), the modelspec title, author and description, and the
//! app's settings of the same.

use std::sync::atomic::AtomicBool;

use serde_json::json;

use amalgam::engine::cache::RunCache;
use amalgam::engine::worker::Job;
use amalgam::engine::{Outcome, Precision, SaveMetadata, run_blocking};
use amalgam::model::layouts::{Layout, Scale};

use crate::util::*;

/// A merge of two SDXL samples saved as `merged`: SDXL is the family ComfyUI titles.
fn sdxl_merge(tree: &ModelTree) -> serde_json::Value {
    tree.checkpoint("a.safetensors", &Layout::sdxl(Scale::Sample), 1);
    tree.checkpoint("b.safetensors", &Layout::sdxl(Scale::Sample), 2);
    json!({
        "1": loader("a.safetensors"),
        "2": loader("b.safetensors"),
        "3": {"class_type": "ModelMergeSimple", "inputs": {"model1": ["1", 0], "model2": ["2", 0], "ratio": 0.3}},
        "4": save(("3", 0), ("1", 1), ("1", 2), "merged"),
    })
}

fn run_prompt(tree: &ModelTree, prompt: &serde_json::Value, extra: &[&str]) -> std::path::PathBuf {
    let file = tree.path().join("prompt.json");
    std::fs::write(&file, serde_json::to_vec(prompt).expect("json")).expect("write");
    let mut args = vec!["--base-dir", path_str(tree.path()), "run", path_str(&file)];
    args.extend(extra);
    let out = run(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    file
}

#[test]
fn disable_metadata_leaves_prompt_and_workflow_out_of_checkpoints() {
    let tree = ModelTree::new();
    let prompt = sdxl_merge(&tree);
    run_prompt(&tree, &prompt, &[]);
    let (_, with) = read_reference(&tree.output().join("merged_00001_.safetensors"));
    assert!(with.contains_key("prompt"), "{with:?}");
    run_prompt(&tree, &prompt, &["--disable-metadata"]);
    let (tensors, without) = read_reference(&tree.output().join("merged_00002_.safetensors"));
    assert!(!without.contains_key("prompt") && !without.contains_key("workflow"));
    // The modelspec entries stay: they describe the model, not the run.
    assert_eq!(
        without["modelspec.architecture"],
        "stable-diffusion-xl-v1-base"
    );
    assert_eq!(without["modelspec.title"], "merged 2");
    let mut expect = with.clone();
    expect.remove("prompt");
    expect.insert("modelspec.title".into(), "merged 2".into());
    assert_eq!(without, expect, "nothing else changes");
    assert!(!tensors.is_empty());
}

#[test]
fn title_author_and_description_are_modelspec_keys() {
    let tree = ModelTree::new();
    let prompt = sdxl_merge(&tree);
    run_prompt(
        &tree,
        &prompt,
        &[
            "--title",
            "Dreamy Mix v2",
            "--author",
            "Ada",
            "--description",
            "0.3 of b into a",
        ],
    );
    let (_, meta) = read_reference(&tree.output().join("merged_00001_.safetensors"));
    assert_eq!(
        meta["modelspec.title"], "Dreamy Mix v2",
        "the user's title wins"
    );
    assert_eq!(meta["modelspec.author"], "Ada");
    assert_eq!(meta["modelspec.description"], "0.3 of b into a");
    assert!(meta.contains_key("prompt"));
    // SD1.5 gets no modelspec block from ComfyUI, but the user's keys are written.
    tree.checkpoint("c.safetensors", &Layout::sd15(Scale::Sample), 3);
    let sd15 = json!({
        "1": loader("c.safetensors"),
        "2": save(("1", 0), ("1", 1), ("1", 2), "plain"),
    });
    run_prompt(&tree, &sd15, &["--author", "Ada"]);
    let (_, meta) = read_reference(&tree.output().join("plain_00001_.safetensors"));
    assert_eq!(meta["modelspec.author"], "Ada");
    assert!(!meta.contains_key("modelspec.title"));
    assert!(!meta.contains_key("modelspec.architecture"));
}

#[test]
fn disabled_metadata_pngs_carry_no_text_and_the_cache_tells_the_choices_apart() {
    let tree = ModelTree::new();
    tree.checkpoint("small.safetensors", &Layout::sd15(Scale::Small), 5);
    let prompt = json!({
        "1": loader("small.safetensors"),
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a fox", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 1, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0, "model": ["1", 0], "positive": ["2", 0], "negative": ["2", 0], "latent_image": ["4", 0]}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"filename_prefix": "img", "images": ["6", 0]}},
    });
    let p = amalgam::graph::Prompt::from_json(&prompt).expect("prompt");
    let v = amalgam::graph::validate::validate_prompt(p, &tree.folders());
    assert!(v.errors.is_empty(), "{:?}", v.errors);
    let job = |metadata: SaveMetadata| Job {
        prompt: v.prompt.clone(),
        outputs: v.outputs.clone(),
        workflow: Some(json!({"nodes": []})),
        folders: tree.folders(),
        precision: Precision::Keep,
        first_image_only: true,
        metadata,
    };
    // One worker cache across both jobs, as in the app: a choice that changes the file is not
    // answered with the earlier file.
    let mut cache = RunCache::default();
    for metadata in [
        SaveMetadata::default(),
        SaveMetadata {
            disabled: true,
            ..SaveMetadata::default()
        },
    ] {
        let report = run_blocking(
            &job(metadata),
            &AtomicBool::new(false),
            &mut cache,
            &mut |_| {},
        );
        assert!(
            matches!(report.outcome, Outcome::Finished { .. }),
            "{:?}",
            report.outcome
        );
    }
    let (_, _, texts) = png_info(&tree.output().join("img_00001_.png"));
    let keys: Vec<&str> = texts.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["prompt", "workflow"]);
    let (w, _, texts) = png_info(&tree.output().join("img_00002_.png"));
    assert!(texts.is_empty(), "{texts:?}");
    assert_eq!(w, 32);
}

#[test]
fn the_apps_settings_reach_the_saved_file() {
    let mut h = crate::gui::Harness::new(true, None);
    h.wait_for("the first folder scan", |a| {
        !a.canvas.state.models.is_empty()
    });
    h.app.settings.metadata = SaveMetadata {
        disabled: true,
        title: None,
        author: Some("Ada".into()),
        description: None,
    };
    h.click("Queue");
    h.wait_for("the merge", |a| {
        a.jobs.first().is_some_and(|j| !j.state.is_active())
    });
    let (_, meta) = read_reference(&h.output("checkpoints/ComfyUI_00001_.safetensors"));
    assert!(!meta.contains_key("workflow") && !meta.contains_key("prompt"));
    assert_eq!(meta["modelspec.author"], "Ada");
}
