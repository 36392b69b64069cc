//! `amalgam bench --generate`: seconds per sampler step of a text-to-image graph on a seeded
//! SD1.5 checkpoint (full size; `--quick`: the small runnable layout), at a small size and at
//! 512², one image, euler, cfg 8 — with, when `--comfyui` names a ComfyUI runner
//! (`python comfy_run.py --comfy DIR`, see `shared/oracle`), ComfyUI's own seconds per step on
//! the same file and prompt, measured in the same run, and the ratio.
//!
//! A benchmark, not a test: nothing here fails on time.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::Context;
use serde_json::json;

use amalgam::engine::cache::RunCache;
use amalgam::engine::worker::Job;
use amalgam::engine::{Event, Outcome, Precision, run_blocking};
use amalgam::graph::Prompt;
use amalgam::graph::validate::validate_prompt;
use amalgam::model::ModelFolders;
use amalgam::model::layouts::{Layout, Scale};
use amalgam::model::samples::write_checkpoint;

use super::bench::BenchArgs;

/// One measured size.
struct Row {
    size: u32,
    steps: usize,
    first_step_secs: f64,
    step_secs: f64,
    total_secs: f64,
    comfy_step_secs: Option<f64>,
}

fn prompt(ckpt: &str, size: u32, steps: usize) -> serde_json::Value {
    json!({
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "beautiful scenery nature glass bottle landscape, , purple galaxy bottle,", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"seed": 156680208700286u64, "steps": steps, "cfg": 8.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0, "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0]}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"filename_prefix": "bench/gen", "images": ["6", 0]}},
    })
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let (scale, name) = if args.quick {
        (Scale::Small, "gen-sd15-small.safetensors")
    } else {
        (Scale::Full, "gen-sd15.safetensors")
    };
    let models = args.dir.join("models/checkpoints");
    std::fs::create_dir_all(&models)
        .with_context(|| format!("cannot create {}", models.display()))?;
    let ckpt = models.join(name);
    if !ckpt.is_file() {
        eprintln!("generating {}…", ckpt.display());
        write_checkpoint(&ckpt, &Layout::sd15(scale), 1)
            .with_context(|| format!("cannot write {}", ckpt.display()))?;
    }
    let folders = ModelFolders::new(&args.dir, None, None);
    let sizes: &[(u32, usize)] = if args.quick {
        &[(64, 2)]
    } else {
        &[(64, 4), (512, 2)]
    };
    let mut rows = Vec::new();
    let mut requeue = None;
    for &(size, steps) in sizes {
        eprintln!("measuring {size}×{size}, {steps} steps…");
        let p = prompt(name, size, steps);
        // A fresh cache per size: each row's time to first step includes reading the file and
        // building the networks, as a first Queue does.
        let mut cache = RunCache::default();
        let mut row = measure(&p, &folders, size, steps, &mut cache)?;
        if requeue.is_none() {
            // The app's re-queue after a seed change: same cache, networks kept.
            let mut again = p.clone();
            again["5"]["inputs"]["seed"] = json!(1);
            let r = measure(&again, &folders, size, steps, &mut cache)?;
            requeue = Some((size, row.first_step_secs, r.first_step_secs));
        }
        if let Some(cmd) = &args.comfyui {
            row.comfy_step_secs = comfyui_step_secs(cmd, &p, &args.dir)?;
        }
        rows.push(row);
    }
    let mut text = table(&rows, args);
    if let Some((size, first, again)) = requeue {
        text.push_str(&format!(
            "\nRe-queue at {size}×{size} with only the seed changed (the app's worker cache: networks kept): \
             {again:.2} s to the first step, against {first:.2} s for the first Queue.\n"
        ));
    }
    super::emit(&text)
}

fn measure(
    p: &serde_json::Value,
    folders: &ModelFolders,
    size: u32,
    steps: usize,
    cache: &mut RunCache,
) -> anyhow::Result<Row> {
    let v = validate_prompt(Prompt::from_json(p)?, folders);
    anyhow::ensure!(
        v.errors.is_empty(),
        "the benchmark graph does not validate: {:?}",
        v.errors
    );
    let job = Job {
        prompt: v.prompt,
        outputs: v.outputs,
        workflow: None,
        folders: folders.clone(),
        precision: Precision::Keep,
        first_image_only: true,
        metadata: Default::default(),
    };
    let start = Instant::now();
    let mut first_step = None;
    let mut step_times = Vec::new();
    let mut last = None::<Instant>;
    let report = run_blocking(&job, &AtomicBool::new(false), cache, &mut |e| {
        if let Event::Step(_) = e {
            let now = Instant::now();
            match last {
                None => first_step = Some(now.duration_since(start).as_secs_f64()),
                Some(l) => step_times.push(now.duration_since(l).as_secs_f64()),
            }
            last = Some(now);
        }
    });
    if let Outcome::Failed(e) = report.outcome {
        return Err(anyhow::Error::new(e).context("the benchmark graph failed"));
    }
    step_times.sort_by(f64::total_cmp);
    Ok(Row {
        size,
        steps,
        first_step_secs: first_step.unwrap_or(0.0),
        step_secs: step_times.get(step_times.len() / 2).copied().unwrap_or(0.0),
        total_secs: start.elapsed().as_secs_f64(),
        comfy_step_secs: None,
    })
}

/// Runs the prompt through ComfyUI (`cmd` + `--base-dir DIR --output-dir … prompt.json`) and
/// reads its sampler's seconds per step from the progress bar it prints.
fn comfyui_step_secs(cmd: &str, p: &serde_json::Value, dir: &Path) -> anyhow::Result<Option<f64>> {
    let file = dir.join("comfyui-prompt.json");
    std::fs::write(&file, serde_json::to_vec(p)?)?;
    let mut parts = cmd.split_whitespace();
    let program = parts.next().context("--comfyui is empty")?;
    let out = Command::new(program)
        .args(parts)
        .arg("--base-dir")
        .arg(dir)
        .arg("--output-dir")
        .arg(dir.join("output/comfyui"))
        .arg(&file)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    let text = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(out.status.success(), "ComfyUI failed: {text}");
    // tqdm prints "…, 16.41s/it]" (or "1.50it/s]" when faster than a second per step).
    let last = text
        .split(']')
        .filter_map(|chunk| chunk.rsplit(", ").next())
        .filter_map(|rate| {
            if let Some(s) = rate.strip_suffix("s/it") {
                s.trim().parse::<f64>().ok()
            } else {
                rate.strip_suffix("it/s")
                    .and_then(|r| r.trim().parse::<f64>().ok())
                    .map(|r| 1.0 / r)
            }
        })
        .next_back();
    Ok(last)
}

fn table(rows: &[Row], args: &BenchArgs) -> String {
    use std::fmt::Write;
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Amalgam {} · {cores} cores · image generation, SD1.5 layout{} · one image, euler, cfg 8\n",
        amalgam::VERSION,
        if args.quick {
            " (small runnable widths: QUICK, a smoke run, not a measurement)"
        } else {
            " (full size, seeded random weights)"
        }
    );
    let _ = writeln!(
        s,
        "| size | steps | to first step | per step | total | ComfyUI per step | × ComfyUI |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for r in rows {
        let (comfy, ratio) = match r.comfy_step_secs {
            Some(c) => (format!("{c:.2} s"), format!("{:.2}", r.step_secs / c)),
            None => ("not run".into(), "–".into()),
        };
        let _ = writeln!(
            s,
            "| {0}×{0} | {1} | {2:.2} s | {3:.2} s | {4:.2} s | {comfy} | {ratio} |",
            r.size, r.steps, r.first_step_secs, r.step_secs, r.total_secs
        );
    }
    if rows.iter().all(|r| r.comfy_step_secs.is_none()) {
        let _ = writeln!(
            s,
            "\nComfyUI was not measured: pass --comfyui \"PYTHON shared/oracle/comfy_run.py --comfy COMFY_DIR\" to run the same prompt through it."
        );
    }
    s
}
