//! The image half of a workflow, end to end: text encoding, sampling, decoding and SaveImage
//! on real checkpoint files — against reference vectors from real ComfyUI on a full-size model,
//! and on small models for the properties (first image only, merges used unsaved, errors,
//! cancel, previews).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Value, json};

use amalgam::engine::cache::RunCache;
use amalgam::engine::plan::Network;
use amalgam::engine::worker::Job;
use amalgam::engine::{Event, Outcome, Precision, run_blocking};
use amalgam::generate::conditioning::TextEncoders;
use amalgam::model::layouts::{Layout, Scale};

use crate::util::*;

/// A text-to-image prompt: loader "1", prompts "2"/"3", latent "4", KSampler "5", decode "6",
/// SaveImage "7".
fn txt2img(ckpt: &str, size: (u32, u32, u32), sampler: &str, steps: u32, seed: u64) -> Value {
    json!({
        "1": loader(ckpt),
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a (red:1.3) fox in the snow", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size.0, "height": size.1, "batch_size": size.2}},
        "5": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": steps, "cfg": 7.5, "sampler_name": sampler, "scheduler": "karras", "denoise": 1.0, "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0]}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"filename_prefix": "gen/img", "images": ["6", 0]}},
    })
}

/// The job of a validated `prompt` (panics if it does not validate).
fn job(tree: &ModelTree, prompt: &Value, first_image_only: bool) -> Job {
    let prompt = amalgam::graph::Prompt::from_json(prompt).expect("prompt");
    let v = amalgam::graph::validate::validate_prompt(prompt, &tree.folders());
    assert!(v.errors.is_empty(), "validation: {:?}", v.errors);
    Job {
        prompt: v.prompt,
        outputs: v.outputs,
        workflow: None,
        folders: tree.folders(),
        precision: Precision::Keep,
        first_image_only,
        metadata: Default::default(),
    }
}

/// Validates and runs `prompt` with `first_image_only`; returns the report and every step.
fn run_images(
    tree: &ModelTree,
    prompt: &Value,
    first_image_only: bool,
    cancel_at_step: Option<usize>,
) -> (amalgam::engine::JobReport, Vec<String>) {
    let job = job(tree, prompt, first_image_only);
    let cancel = AtomicBool::new(false);
    let mut seen = Vec::new();
    let report = run_blocking(&job, &cancel, &mut RunCache::default(), &mut |e| {
        if let Event::Step(s) = e {
            seen.push(format!("step {}/{}", s.step, s.total));
            let preview = s.preview.as_ref().expect("a preview per step");
            assert_eq!(preview.rgb.len(), preview.width * preview.height * 3);
            if cancel_at_step == Some(s.step) {
                cancel.store(true, Ordering::Relaxed);
            }
        }
    });
    (report, seen)
}

fn rgb(path: &Path) -> Vec<u8> {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(path).expect("open png"),
    ));
    let mut reader = decoder.read_info().expect("png");
    let mut buf = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut buf).expect("frame");
    buf.truncate(info.buffer_size());
    buf
}

fn images(report: &amalgam::engine::JobReport) -> Vec<PathBuf> {
    report
        .outputs
        .iter()
        .filter(|o| o.path.extension().is_some_and(|e| e == "png"))
        .map(|o| o.path.clone())
        .collect()
}

/// Real ComfyUI (the oracle, torch 2.8 on the CPU) ran `tests/data/comfyui/sd15-euler/prompt.json`
/// on the full-size random-weight SD1.5 that `amalgam samples --full-size` writes (seed 1). The
/// same prompt here gives its conditioning to 1e-4 and its first image within ±1 per value.
#[test]
fn full_size_sd15_matches_comfyui() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/comfyui/sd15-euler");
    let reference: Value =
        serde_json::from_slice(&std::fs::read(data.join("reference.json")).expect("reference"))
            .expect("json");
    let prompt: Value =
        serde_json::from_slice(&std::fs::read(data.join("prompt.json")).expect("prompt"))
            .expect("json");
    let tree = ModelTree::new();
    tree.checkpoint("full-sd15-a.safetensors", &Layout::sd15(Scale::Full), 1);

    // Conditioning: the CLIP stage alone, from the plan's own weights.
    let p = amalgam::graph::Prompt::from_json(&prompt).expect("prompt");
    let v = amalgam::graph::validate::validate_prompt(p, &tree.folders());
    assert!(v.errors.is_empty(), "{:?}", v.errors);
    let plan = amalgam::engine::plan::build(
        &v.prompt,
        &v.outputs,
        None,
        &tree.folders(),
        Precision::Keep,
        &Default::default(),
    )
    .expect("plan");
    let clip = plan
        .weights
        .iter()
        .position(|w| w.network == Network::Clip)
        .expect("clip weights");
    let weights = amalgam::engine::images::load_weights(&plan, clip).expect("weights");
    let encoders = TextEncoders::load(&weights).expect("encoders");
    for node in ["6", "7"] {
        let text = prompt[node]["inputs"]["text"].as_str().expect("text");
        let cond = encoders.encode(text, None).expect("encode").cond;
        let got: Vec<Vec<f32>> = cond.squeeze(0).and_then(|c| c.to_vec2()).expect("values");
        let want = &reference[format!("cond_{node}")];
        assert_eq!(cond.dims(), [1, 77, 768]);
        let close = |a: f64, b: f64, scale: f64| (a - b).abs() <= 1e-4 * scale.max(1.0);
        for (row, sum) in want["row_sums"]
            .as_array()
            .expect("sums")
            .iter()
            .enumerate()
        {
            let s: f64 = got[row].iter().map(|v| f64::from(*v)).sum();
            let abs: f64 = got[row].iter().map(|v| f64::from(v.abs())).sum();
            assert!(
                close(s, sum.as_f64().expect("f64"), abs),
                "#{node} row {row}: {s} vs {sum}"
            );
        }
        for (key, row) in [("first_row", 0), ("row_5", 5)] {
            for (i, w) in want[key].as_array().expect("row").iter().enumerate() {
                let w = w.as_f64().expect("f64");
                assert!(
                    close(f64::from(got[row][i]), w, w.abs()),
                    "#{node} [{row}][{i}]"
                );
            }
        }
    }
    drop(weights);
    drop(plan);

    // The whole prompt, first image only: ComfyUI's image 0.
    let (report, steps) = run_images(&tree, &prompt, true, None);
    assert!(
        matches!(report.outcome, Outcome::Finished { .. }),
        "{:?}",
        report.outcome
    );
    assert_eq!(steps, ["step 1/3", "step 2/3", "step 3/3"]);
    let ours = rgb(&images(&report)[0]);
    let theirs = rgb(&data.join("ComfyUI_00001_.png"));
    assert_eq!(ours.len(), theirs.len());
    let diffs: Vec<u8> = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| a.abs_diff(*b))
        .collect();
    let within_one = diffs.iter().filter(|d| **d <= 1).count();
    assert!(
        within_one * 100 >= diffs.len() * 99,
        "{within_one} of {} within ±1",
        diffs.len()
    );
    assert!(
        diffs.iter().all(|d| *d <= 8),
        "max {:?}",
        diffs.iter().max()
    );
}

/// "First image only" gives image 0 of the whole batch exactly, for an ancestral sampler too
/// (its per-step noise is cut from the whole batch's); the same seed gives the same images.
#[test]
fn first_image_only_is_image_zero_of_the_batch() {
    let tree = ModelTree::new();
    tree.checkpoint("small.safetensors", &Layout::sd15(Scale::Small), 5);
    for sampler in ["euler_ancestral", "heun"] {
        let prompt = txt2img("small.safetensors", (48, 40, 3), sampler, 3, 1234);
        let (all, _) = run_images(&tree, &prompt, false, None);
        let (first, _) = run_images(&tree, &prompt, true, None);
        let (all, first) = (images(&all), images(&first));
        assert_eq!(all.len(), 3, "{sampler}");
        assert_eq!(first.len(), 1, "{sampler}");
        let (a, b) = (rgb(&first[0]), rgb(&all[0]));
        let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        let max = a.iter().zip(&b).map(|(x, y)| x.abs_diff(*y)).max();
        assert_eq!(
            differ, 0,
            "{sampler}: {differ} values differ, by up to {max:?}"
        );
        assert!(
            rgb(&all[0]) != rgb(&all[1]),
            "{sampler}: batch images differ"
        );
        let (w, h, texts) = png_info(&all[0]);
        assert_eq!((w, h), (48, 40));
        assert_eq!(
            texts.len(),
            1,
            "prompt only: the job came from an API prompt"
        );
        assert_eq!(texts[0].0, "prompt");
    }
}

/// A merge feeds the sampler straight from the engine's expressions: ratio 1 of model B is
/// model B's image, bit for bit; ratio 0.5 is neither.
#[test]
fn a_merge_is_sampled_without_being_saved() {
    let tree = ModelTree::new();
    tree.checkpoint("a.safetensors", &Layout::sd15(Scale::Small), 21);
    tree.checkpoint("b.safetensors", &Layout::sd15(Scale::Small), 22);
    let merged = |ratio: f64| {
        let mut p = txt2img("a.safetensors", (32, 32, 1), "euler", 2, 9);
        p["8"] = loader("b.safetensors");
        p["9"] = json!({"class_type": "ModelMergeSimple", "inputs": {"model1": ["8", 0], "model2": ["1", 0], "ratio": ratio}});
        p["5"]["inputs"]["model"] = json!(["9", 0]);
        let (report, _) = run_images(&tree, &p, true, None);
        rgb(&images(&report)[0])
    };
    let plain = |ckpt: &str| {
        let mut p = txt2img("a.safetensors", (32, 32, 1), "euler", 2, 9);
        p["8"] = loader(ckpt);
        p["5"]["inputs"]["model"] = json!(["8", 0]);
        let (report, _) = run_images(&tree, &p, true, None);
        rgb(&images(&report)[0])
    };
    let (a, b) = (plain("a.safetensors"), plain("b.safetensors"));
    // ComfyUI's ModelMergeSimple: ratio·model1 + (1 − ratio)·model2.
    assert_eq!(merged(1.0), b, "ratio 1 is model1 (b) unchanged");
    assert_eq!(merged(0.0), a, "ratio 0 is model2 (a): 0·b + 1·a");
    let half = merged(0.5);
    assert_ne!(half, a);
    assert_ne!(half, b);
}

/// KSamplerAdvanced: 4 steps split 0→2 (leftover noise kept) and 2→end (no new noise) give
/// KSampler's 4-step image, up to the latent's round trip through the scale factor between
/// the two nodes; starting past the end returns the latent untouched.
#[test]
fn ksampler_advanced_splits_and_skips() {
    let tree = ModelTree::new();
    tree.checkpoint("small.safetensors", &Layout::sd15(Scale::Small), 5);
    let whole = txt2img("small.safetensors", (32, 32, 1), "euler", 4, 77);
    let mut split = whole.clone();
    let advanced = |noise: &str, start: u32, end: u32, leftover: &str, latent: &str| json!({"class_type": "KSamplerAdvanced", "inputs": {"model": ["1", 0], "add_noise": noise, "noise_seed": 77, "steps": 4, "cfg": 7.5, "sampler_name": "euler", "scheduler": "karras", "positive": ["2", 0], "negative": ["3", 0], "latent_image": [latent, 0], "start_at_step": start, "end_at_step": end, "return_with_leftover_noise": leftover}});
    split["5"] = advanced("enable", 0, 2, "enable", "4");
    split["8"] = advanced("disable", 2, 10_000, "disable", "5");
    split["6"]["inputs"]["samples"] = json!(["8", 0]);
    let (a, steps) = run_images(&tree, &whole, true, None);
    assert_eq!(steps.len(), 4);
    let (b, steps) = run_images(&tree, &split, true, None);
    assert_eq!(steps, ["step 1/2", "step 2/2", "step 1/2", "step 2/2"]);
    let (a, b) = (rgb(&images(&a)[0]), rgb(&images(&b)[0]));
    let max = a.iter().zip(&b).map(|(x, y)| x.abs_diff(*y)).max();
    assert!(max <= Some(2), "split differs by up to {max:?}");

    let mut skipped = whole.clone();
    skipped["5"] = advanced("enable", 10, 10_000, "disable", "4");
    let mut decoded = whole;
    decoded["6"]["inputs"]["samples"] = json!(["4", 0]);
    let (s, steps) = run_images(&tree, &skipped, true, None);
    assert!(steps.is_empty());
    let (d, _) = run_images(&tree, &decoded, true, None);
    assert_eq!(rgb(&images(&s)[0]), rgb(&images(&d)[0]));
}

/// The worker keeps the networks of the last job: a new seed reuses all three (CLIP, UNet, VAE),
/// a changed merge ratio rebuilds only the UNet, and each job gives the image it would alone.
#[test]
fn networks_are_kept_for_the_next_job() {
    let tree = ModelTree::new();
    tree.checkpoint("a.safetensors", &Layout::sd15(Scale::Small), 31);
    tree.checkpoint("b.safetensors", &Layout::sd15(Scale::Small), 32);
    let prompt = |seed: u64, ratio: f64| {
        let mut p = txt2img("a.safetensors", (32, 32, 1), "euler", 2, seed);
        p["8"] = loader("b.safetensors");
        p["9"] = json!({"class_type": "ModelMergeSimple", "inputs": {"model1": ["1", 0], "model2": ["8", 0], "ratio": ratio}});
        p["5"]["inputs"]["model"] = json!(["9", 0]);
        p
    };
    let run = |cache: &mut RunCache, p: &Value| {
        let report = run_blocking(
            &job(&tree, p, true),
            &AtomicBool::new(false),
            cache,
            &mut |_| {},
        );
        assert!(
            matches!(report.outcome, Outcome::Finished { .. }),
            "{:?}",
            report.outcome
        );
        rgb(&images(&report)[0])
    };
    let mut cache = RunCache::default();
    run(&mut cache, &prompt(1, 0.5));
    assert_eq!(cache.networks.reused_by_last_job(), 0);
    assert_eq!(cache.networks.len(), 3);
    let reseeded = run(&mut cache, &prompt(2, 0.5));
    assert_eq!(cache.networks.reused_by_last_job(), 3);
    let remerged = run(&mut cache, &prompt(2, 0.25));
    assert_eq!(cache.networks.reused_by_last_job(), 2, "CLIP and VAE kept");
    assert_eq!(cache.networks.len(), 3, "the old UNet is dropped");
    // A merge-only job releases them.
    let merge_only = json!({"1": loader("a.safetensors"), "2": save(("1", 0), ("1", 1), ("1", 2), "checkpoints/m")});
    let report = run_blocking(
        &job(&tree, &merge_only, true),
        &AtomicBool::new(false),
        &mut cache,
        &mut |_| {},
    );
    assert!(
        matches!(report.outcome, Outcome::Finished { .. }),
        "{:?}",
        report.outcome
    );
    assert!(cache.networks.is_empty());
    // Each image is what a fresh worker gives.
    assert_eq!(reseeded, run(&mut RunCache::default(), &prompt(2, 0.5)));
    assert_eq!(remerged, run(&mut RunCache::default(), &prompt(2, 0.25)));
}

/// `amalgam bench --generate --quick` runs the text-to-image graph on a small runnable model
/// and prints seconds per step (a benchmark: figures are not checked).
#[test]
fn bench_generate_quick_prints_its_table() {
    let dir = crate::util::tempdir();
    let out = run(&[
        "bench",
        "--generate",
        "--quick",
        "--dir",
        path_str(dir.path()),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(table.contains("| 64×64 | 2 |"), "{table}");
    assert!(table.contains("QUICK"), "{table}");
    assert!(table.contains("ComfyUI was not measured"), "{table}");
    assert!(
        table.contains("Re-queue at 64×64 with only the seed changed"),
        "{table}"
    );
    // The first Queue's image and the re-queue's (another seed: not the cached file).
    assert_eq!(files_under(&dir.path().join("output/bench")).len(), 2);
}

/// Writes `input/<name>`: a 75×64 gradient, with `alpha` a transparent hole and a
/// half-transparent patch (as a user's inpainting source), else opaque RGB.
fn write_input_png(tree: &ModelTree, name: &str, alpha: bool) -> PathBuf {
    let dir = tree.path().join("input");
    std::fs::create_dir_all(&dir).expect("mkdir input");
    let (w, h) = (75u32, 64u32);
    let mut data = Vec::new();
    for y in 0..h {
        for x in 0..w {
            data.extend([
                (x * 3 % 256) as u8,
                (y * 4 % 256) as u8,
                ((x + y) * 2 % 256) as u8,
            ]);
            if alpha {
                let hole = (20..44).contains(&y) && (25..50).contains(&x);
                let half = (10..14).contains(&y) && (60..70).contains(&x);
                data.push(if hole {
                    0
                } else if half {
                    128
                } else {
                    255
                });
            }
        }
    }
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, w, h);
        enc.set_color(if alpha {
            png::ColorType::Rgba
        } else {
            png::ColorType::Rgb
        });
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header().expect("header");
        wr.write_image_data(&data).expect("data");
    }
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write png");
    path
}

/// The inpaint example's shape: LoadImage (alpha → mask) → VAEEncodeForInpaint (grow 6) →
/// RepeatLatentBatch → a 9-channel inpainting UNet. (Checked against real ComfyUI on a
/// full-size random inpainting SD1.5: every value within 1.) A missing image is a validation
/// error; a corrupt one names the file.
#[test]
fn inpainting_runs_from_an_input_image() {
    let tree = ModelTree::new();
    let mut layout = Layout::sd15(Scale::Small);
    layout.unet.in_channels = 9;
    tree.checkpoint("inpaint.safetensors", &layout, 9);
    write_input_png(&tree, "hole.png", true);
    let mut p = txt2img("inpaint.safetensors", (32, 32, 1), "euler", 2, 5);
    p["20"] = json!({"class_type": "LoadImage", "inputs": {"image": "hole.png"}});
    p["21"] = json!({"class_type": "VAEEncodeForInpaint", "inputs": {"pixels": ["20", 0], "vae": ["1", 2], "mask": ["20", 1], "grow_mask_by": 6}});
    p["22"] =
        json!({"class_type": "RepeatLatentBatch", "inputs": {"samples": ["21", 0], "amount": 2}});
    p["5"]["inputs"]["latent_image"] = json!(["22", 0]);
    let (report, steps) = run_images(&tree, &p, false, None);
    assert!(
        matches!(report.outcome, Outcome::Finished { .. }),
        "{:?}",
        report.outcome
    );
    assert_eq!(
        steps,
        ["step 1/2", "step 2/2"],
        "the batch of 2 is sampled together"
    );
    let out = images(&report);
    assert_eq!(out.len(), 2);
    let (w, h, _) = png_info(&out[0]);
    assert_eq!(
        (w, h),
        (72, 64),
        "cropped to multiples of 8 about the centre"
    );
    let folders = tree.folders();
    let mut missing = p.clone();
    missing["20"]["inputs"]["image"] = json!("nope.png");
    let v = amalgam::graph::validate::validate_prompt(
        amalgam::graph::Prompt::from_json(&missing).expect("prompt"),
        &folders,
    );
    assert!(
        v.errors
            .iter()
            .any(|e| e.node.as_deref() == Some("20") && e.details.contains("nope.png")),
        "{:?}",
        v.errors
    );
    std::fs::write(
        tree.path().join("input/broken.png"),
        b"\x89PNG\r\n\x1a\nnot really",
    )
    .expect("write");
    let mut broken = p;
    broken["20"]["inputs"]["image"] = json!("broken.png");
    let (report, _) = run_images(&tree, &broken, true, None);
    let Outcome::Failed(e) = report.outcome else {
        panic!("{:?}", report.outcome)
    };
    let msg = e.to_string();
    assert!(
        msg.contains("node #20 (LoadImage)") && msg.contains("broken.png"),
        "{msg}"
    );
}

/// SetLatentNoiseMask on an ordinary model: only the masked part is sampled. With an opaque
/// image (a mask of zeros) nothing is, and the result decodes to the VAE round trip of the input
/// (up to the sampler's last f32 step); with the hole's mask it does not.
#[test]
fn set_latent_noise_mask_samples_only_the_mask() {
    let tree = ModelTree::new();
    tree.checkpoint("small.safetensors", &Layout::sd15(Scale::Small), 5);
    write_input_png(&tree, "hole.png", true);
    write_input_png(&tree, "opaque.png", false);
    let graph = |image: &str, masked: bool| {
        let mut p = txt2img("small.safetensors", (32, 32, 1), "euler", 2, 5);
        p["20"] = json!({"class_type": "LoadImage", "inputs": {"image": image}});
        p["21"] =
            json!({"class_type": "VAEEncode", "inputs": {"pixels": ["20", 0], "vae": ["1", 2]}});
        p["22"] = json!({"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["21", 0], "mask": ["20", 1]}});
        p["5"]["inputs"]["latent_image"] = json!(["22", 0]);
        if !masked {
            p["6"]["inputs"]["samples"] = json!(["21", 0]);
        }
        let (report, _) = run_images(&tree, &p, true, None);
        rgb(&images(&report)[0])
    };
    let (kept, round_trip) = (graph("opaque.png", true), graph("opaque.png", false));
    let max = kept
        .iter()
        .zip(&round_trip)
        .map(|(a, b)| a.abs_diff(*b))
        .max();
    assert!(
        max <= Some(2),
        "a zero mask keeps the image: off by {max:?}"
    );
    assert_ne!(
        graph("hole.png", true),
        graph("hole.png", false),
        "the hole is sampled"
    );
}

/// Cancel during sampling: the job ends cancelled, no PNG (or partial file) is left.
#[test]
fn cancel_mid_sampling_writes_nothing() {
    let tree = ModelTree::new();
    tree.checkpoint("small.safetensors", &Layout::sd15(Scale::Small), 5);
    let prompt = txt2img("small.safetensors", (32, 32, 1), "euler", 5, 1);
    let (report, steps) = run_images(&tree, &prompt, false, Some(2));
    assert!(
        matches!(report.outcome, Outcome::Cancelled),
        "{:?}",
        report.outcome
    );
    assert_eq!(steps, ["step 1/5", "step 2/5"]);
    assert_eq!(files_under(&tree.output()), Vec::<String>::new());

    // Cancelled as the sampler starts: the UNet stops inside the first step (no step ends).
    let cancel = AtomicBool::new(false);
    let mut step_events = 0;
    let report = run_blocking(
        &job(&tree, &prompt, false),
        &cancel,
        &mut RunCache::default(),
        &mut |e| match e {
            Event::NodeStarted { node, .. } if node == "5" => cancel.store(true, Ordering::Relaxed),
            Event::Step(_) => step_events += 1,
            _ => {}
        },
    );
    assert!(
        matches!(report.outcome, Outcome::Cancelled),
        "{:?}",
        report.outcome
    );
    assert_eq!(step_events, 0);
    assert_eq!(files_under(&tree.output()), Vec::<String>::new());
}

/// PreviewImage writes to ComfyUI's temp folder, without metadata; `run --json` lists images
/// with their node.
#[test]
fn preview_goes_to_temp_and_the_cli_lists_images() {
    let tree = ModelTree::new();
    tree.checkpoint("small.safetensors", &Layout::sd15(Scale::Small), 5);
    let mut prompt = txt2img("small.safetensors", (32, 32, 1), "dpmpp_2m", 2, 3);
    prompt["8"] = json!({"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}});
    let j = run_json(tree.path(), "run", "t2i.json", &prompt);
    let outputs = j["outputs"].as_array().expect("outputs");
    let by_node = |n: &str| -> Vec<String> {
        outputs
            .iter()
            .filter(|o| o["node"] == n)
            .map(|o| o["path"].as_str().expect("path").to_owned())
            .collect()
    };
    assert_eq!(
        by_node("7"),
        [tree
            .output()
            .join("gen/img_00001_.png")
            .display()
            .to_string()]
    );
    let preview = by_node("8");
    assert_eq!(preview.len(), 1);
    let preview = PathBuf::from(&preview[0]);
    assert_eq!(preview.parent(), Some(tree.path().join("temp").as_path()));
    let name = preview.file_name().and_then(|n| n.to_str()).expect("name");
    assert!(
        name.starts_with("ComfyUI_temp_") && name.ends_with("_00001_.png"),
        "{name}"
    );
    let (_, _, texts) = png_info(&preview);
    assert!(texts.is_empty(), "previews carry no metadata");
    assert_eq!(
        rgb(&preview),
        rgb(&tree.output().join("gen/img_00001_.png"))
    );
}

/// Bad image inputs: an unknown sampler is a validation error listing the supported ones, an
/// absurd latent is refused before anything is allocated, a model Amalgam cannot sample is
/// named.
#[test]
fn bad_image_inputs_are_clear_errors() {
    let tree = ModelTree::new();
    tree.checkpoint("small.safetensors", &Layout::sd15(Scale::Small), 5);
    let folders = tree.folders();
    let validate = |p: &Value| {
        let prompt = amalgam::graph::Prompt::from_json(p).expect("prompt");
        amalgam::graph::validate::validate_prompt(prompt, &folders)
    };
    let mut p = txt2img("small.safetensors", (32, 32, 1), "uni_pc", 2, 3);
    let v = validate(&p);
    let e = v.errors.first().expect("error");
    assert_eq!(e.node.as_deref(), Some("5"));
    assert!(
        e.details.contains("uni_pc") && e.details.contains("dpmpp_2m"),
        "{e:?}"
    );

    p = txt2img("small.safetensors", (16384, 16384, 4096), "euler", 2, 3);
    let v = validate(&p);
    assert!(v.errors.is_empty(), "in ComfyUI's ranges: {:?}", v.errors);
    let err = amalgam::engine::plan::build(
        &v.prompt,
        &v.outputs,
        None,
        &folders,
        Precision::Keep,
        &Default::default(),
    )
    .expect_err("too large");
    let msg = err.to_string();
    assert!(
        msg.contains("node #4") && msg.contains("too large"),
        "{msg}"
    );
    // One 8192² image: its decoder's activations alone need ~100 GiB.
    p = txt2img("small.safetensors", (8192, 8192, 1), "euler", 2, 3);
    let v = validate(&p);
    let err = amalgam::engine::plan::build(
        &v.prompt,
        &v.outputs,
        None,
        &folders,
        Precision::Keep,
        &Default::default(),
    )
    .expect_err("too large for this machine");
    assert!(err.to_string().contains("GiB"), "{err}");
    assert_eq!(files_under(&tree.output()), Vec::<String>::new());

    // A merge-test layout's text encoder has a 256-token vocabulary: the error names the node
    // and the token.
    tree.checkpoint("narrow.safetensors", &Layout::sd15(Scale::Sample), 5);
    let p = txt2img("narrow.safetensors", (32, 32, 1), "euler", 2, 3);
    let (report, _) = run_images(&tree, &p, true, None);
    assert!(images(&report).is_empty());
    let Outcome::Failed(e) = report.outcome else {
        panic!("{:?}", report.outcome)
    };
    let msg = e.to_string();
    assert!(msg.contains("node #2 (CLIPTextEncode)"), "{msg}");
    assert!(
        msg.contains("token id 49406") && msg.contains("vocabulary of 256"),
        "{msg}"
    );
}

#[test]
fn nan_in_a_latent_is_a_warning_naming_the_node_and_step() {
    let tree = ModelTree::new();
    // The UNet's last bias is NaN (f16 0x7e00): every prediction, and so the latent, is NaN.
    let specs = Layout::sd15(Scale::Small).tensors();
    let bias = specs
        .iter()
        .find(|s| s.name == "model.diffusion_model.out.2.bias")
        .expect("the UNet's output bias");
    let nan: Vec<u8> = (0..bias.shape.iter().product::<usize>())
        .flat_map(|_| half::f16::NAN.to_le_bytes())
        .collect();
    let overrides = std::collections::HashMap::from([(bias.name.clone(), nan)]);
    write_safetensors(
        &tree.models("checkpoints").join("nan.safetensors"),
        &specs,
        5,
        &overrides,
        &[],
    );
    let (report, steps) = run_images(
        &tree,
        &txt2img("nan.safetensors", (32, 32, 1), "euler", 2, 3),
        true,
        None,
    );
    assert_eq!(steps, ["step 1/2", "step 2/2"], "the run goes on");
    let nan_warnings: Vec<_> = report
        .warnings
        .iter()
        .filter(|w| w.message.contains("NaN"))
        .collect();
    assert_eq!(nan_warnings.len(), 1, "said once: {:?}", report.warnings);
    assert_eq!(nan_warnings[0].node.as_deref(), Some("5"));
    assert!(
        nan_warnings[0].message.contains("at step 1"),
        "{}",
        nan_warnings[0].message
    );
}
