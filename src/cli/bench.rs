//! `amalgam bench`: merge speed and memory, measured against the machine's own limit in the
//! same run, on the same files.
//!
//! 1. Seeded checkpoints with the real SD1.5 and SDXL layouts are generated into a scratch
//!    folder (kept for later runs).
//! 2. The limit: read both inputs sequentially and write one output-sized file through the same
//!    write path as a merge (temporary file, fsync, rename).
//! 3. The merge: `amalgam run` in a child process, exactly as a user runs it. Its peak resident
//!    memory (`VmHWM`, which counts touched pages of memory-mapped files too) and its peak
//!    anonymous memory (`RssAnon`, the heap) are sampled from `/proc`.
//! 4. Limit and merge alternate, several times; the median is reported, with the ratio.
//!
//! A benchmark, not a test: nothing here fails on time.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use amalgam::format::DType;
use amalgam::format::safetensors::{PendingFile, TensorSpec};
use amalgam::model::layouts::{Layout, Scale};
use amalgam::model::report::{human_bytes, kib_field};
use amalgam::model::samples::write_checkpoint;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Scratch folder for generated checkpoints and outputs (reused between runs).
    #[arg(long, value_name = "DIR", default_value = "bench-data")]
    pub dir: PathBuf,
    /// Small checkpoints (a few MB): a smoke run for CI, not a measurement.
    #[arg(long)]
    pub quick: bool,
    /// Runs of each measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Skip the SDXL-size scenario (2 × 6.9 GB inputs).
    #[arg(long)]
    pub no_sdxl: bool,
    /// Also measure with the page cache dropped before each run (needs root on Linux).
    #[arg(long)]
    pub cold: bool,
    /// Measure image generation (seconds per sampler step) instead of merges.
    #[arg(long)]
    pub generate: bool,
    /// With --generate: a ComfyUI runner to measure side by side, e.g.
    /// "python shared/oracle/comfy_run.py --comfy /path/to/ComfyUI".
    #[arg(long, value_name = "COMMAND")]
    pub comfyui: Option<String>,
}

/// One scenario: a workflow over generated inputs.
struct Scenario {
    name: &'static str,
    prompt: serde_json::Value,
    inputs: Vec<&'static str>,
    threads: Option<usize>,
    precision: &'static str,
}

/// Measured figures of one scenario.
struct Row {
    name: &'static str,
    input_bytes: u64,
    output_bytes: u64,
    /// Median, min and max of the runs.
    merge_secs: (f64, f64, f64),
    limit_secs: (f64, f64, f64),
    peak_rss: Option<u64>,
    peak_anon: Option<u64>,
    cold: Option<(f64, f64)>,
}

fn loader(name: &str) -> serde_json::Value {
    json!({"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": name}})
}

/// A CheckpointSave of `model` (slot 0), `clip` (node and slot) and the VAE of loader `vae`.
fn save(model: &str, clip: (&str, u8), vae: &str) -> serde_json::Value {
    json!({"class_type": "CheckpointSave", "inputs": {"filename_prefix": "bench/out", "model": [model, 0], "clip": [clip.0, clip.1], "vae": [vae, 2]}})
}

fn simple(a: &str, b: &str) -> serde_json::Value {
    json!({
        "1": loader(a), "2": loader(b),
        "3": {"class_type": "ModelMergeSimple", "inputs": {"ratio": 0.3, "model1": ["1", 0], "model2": ["2", 0]}},
        "4": {"class_type": "CLIPMergeSimple", "inputs": {"ratio": 0.3, "clip1": ["1", 1], "clip2": ["2", 1]}},
        "5": save("3", ("4", 0), "1"),
    })
}

fn scenarios(no_sdxl: bool) -> Vec<Scenario> {
    let mut v = vec![
        Scenario {
            name: "SD1.5 simple merge",
            prompt: simple("sd15-a.safetensors", "sd15-b.safetensors"),
            inputs: vec!["sd15-a", "sd15-b"],
            threads: None,
            precision: "keep",
        },
        Scenario {
            name: "SD1.5 simple merge, 1 thread",
            prompt: simple("sd15-a.safetensors", "sd15-b.safetensors"),
            inputs: vec!["sd15-a", "sd15-b"],
            threads: Some(1),
            precision: "keep",
        },
        Scenario {
            name: "SD1.5 simple merge, fp32 output",
            prompt: simple("sd15-a.safetensors", "sd15-b.safetensors"),
            inputs: vec!["sd15-a", "sd15-b"],
            threads: None,
            precision: "fp32",
        },
        Scenario {
            name: "SD1.5 4-model chain (Simple → Simple → Blocks)",
            prompt: json!({
                "1": loader("sd15-a.safetensors"), "2": loader("sd15-b.safetensors"), "3": loader("sd15-c.safetensors"), "4": loader("sd15-d.safetensors"),
                "5": {"class_type": "ModelMergeSimple", "inputs": {"ratio": 0.5, "model1": ["1", 0], "model2": ["2", 0]}},
                "6": {"class_type": "ModelMergeSimple", "inputs": {"ratio": 0.7, "model1": ["5", 0], "model2": ["3", 0]}},
                "7": {"class_type": "ModelMergeBlocks", "inputs": {"input": 1.0, "middle": 0.6, "out": 0.3, "model1": ["6", 0], "model2": ["4", 0]}},
                "8": {"class_type": "CLIPMergeSimple", "inputs": {"ratio": 0.5, "clip1": ["1", 1], "clip2": ["2", 1]}},
                "9": save("7", ("8", 0), "1"),
            }),
            inputs: vec!["sd15-a", "sd15-b", "sd15-c", "sd15-d"],
            threads: None,
            precision: "keep",
        },
        Scenario {
            name: "SD1.5 add difference (Subtract → Add)",
            prompt: json!({
                "1": loader("sd15-a.safetensors"), "2": loader("sd15-b.safetensors"), "3": loader("sd15-c.safetensors"),
                "4": {"class_type": "ModelMergeSubtract", "inputs": {"multiplier": 1.0, "model1": ["1", 0], "model2": ["2", 0]}},
                "5": {"class_type": "ModelMergeAdd", "inputs": {"model1": ["4", 0], "model2": ["3", 0]}},
                "6": save("5", ("1", 1), "1"),
            }),
            inputs: vec!["sd15-a", "sd15-b", "sd15-c"],
            threads: None,
            precision: "keep",
        },
    ];
    if !no_sdxl {
        v.push(Scenario {
            name: "SDXL simple merge",
            prompt: simple("sdxl-a.safetensors", "sdxl-b.safetensors"),
            inputs: vec!["sdxl-a", "sdxl-b"],
            threads: None,
            precision: "keep",
        });
    }
    v
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if args.generate {
        return super::bench_generate::run(args);
    }
    let scale = if args.quick {
        Scale::Sample
    } else {
        Scale::Full
    };
    let models = args.dir.join("models/checkpoints");
    std::fs::create_dir_all(&models)
        .with_context(|| format!("cannot create {}", models.display()))?;
    let scenarios = scenarios(args.no_sdxl || args.quick);
    // Generate what the scenarios need (kept for the next run).
    let mut needed: Vec<&str> = scenarios
        .iter()
        .flat_map(|s| s.inputs.iter().copied())
        .collect();
    needed.sort_unstable();
    needed.dedup();
    for (seed, name) in needed.iter().enumerate() {
        let path = models.join(format!("{name}.safetensors"));
        if path.is_file() {
            continue;
        }
        let layout = if name.starts_with("sdxl") {
            Layout::sdxl(scale)
        } else {
            Layout::sd15(scale)
        };
        eprintln!("generating {}…", path.display());
        write_checkpoint(&path, &layout, 1000 + seed as u64)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let exe = std::env::current_exe().context("cannot find the amalgam executable")?;
    let mut rows = Vec::new();
    for s in &scenarios {
        eprintln!("measuring: {}", s.name);
        rows.push(measure(&exe, args, s, &models)?);
    }
    super::emit(&table(&rows, args))
}

fn measure(exe: &Path, args: &BenchArgs, s: &Scenario, models: &Path) -> anyhow::Result<Row> {
    let inputs: Vec<PathBuf> = s
        .inputs
        .iter()
        .map(|n| models.join(format!("{n}.safetensors")))
        .collect();
    let input_bytes: u64 = inputs
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum();
    let wf = args.dir.join("bench-workflow.json");
    std::fs::write(&wf, serde_json::to_vec(&s.prompt)?)?;
    let out_dir = args.dir.join("output/bench");
    let mut merges = Vec::new();
    let mut limits = Vec::new();
    let (mut peak_rss, mut peak_anon) = (None::<u64>, None::<u64>);
    let mut output_bytes = 0;
    // Warm the page cache once so the first run is not the odd one out.
    read_all(&inputs)?;
    for _ in 0..args.runs.max(1) {
        let _ = std::fs::remove_dir_all(&out_dir);
        let (secs, rss, anon, bytes) = run_merge(exe, args, s, &wf)?;
        merges.push(secs);
        output_bytes = bytes;
        peak_rss = peak_rss.max(rss);
        peak_anon = peak_anon.max(anon);
        limits.push(limit(&inputs, bytes, &args.dir)?);
    }
    let cold = if args.cold && drop_caches() {
        let _ = std::fs::remove_dir_all(&out_dir);
        drop_caches();
        let (m, ..) = run_merge(exe, args, s, &wf)?;
        drop_caches();
        let l = limit(&inputs, output_bytes, &args.dir)?;
        Some((m, l))
    } else {
        None
    };
    let _ = std::fs::remove_dir_all(&out_dir);
    Ok(Row {
        name: s.name,
        input_bytes,
        output_bytes,
        merge_secs: spread(&mut merges),
        limit_secs: spread(&mut limits),
        peak_rss,
        peak_anon,
        cold,
    })
}

/// Runs `amalgam run` as a child; returns wall seconds, peak RSS, peak anonymous memory (bytes)
/// and the output size.
fn run_merge(
    exe: &Path,
    args: &BenchArgs,
    s: &Scenario,
    wf: &Path,
) -> anyhow::Result<(f64, Option<u64>, Option<u64>, u64)> {
    let mut cmd = Command::new(exe);
    cmd.arg("--base-dir")
        .arg(&args.dir)
        .args(["run", "--json", "--precision", s.precision])
        .arg(wf);
    if let Some(t) = s.threads {
        cmd.env("AMALGAM_THREADS", t.to_string());
    }
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start amalgam run")?;
    let status_path = PathBuf::from(format!("/proc/{}/status", child.id()));
    let (mut hwm, mut anon) = (None, None);
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if let Ok(text) = std::fs::read_to_string(&status_path) {
            hwm = hwm.max(kib_field(&text, "VmHWM:"));
            anon = anon.max(kib_field(&text, "RssAnon:"));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let secs = start.elapsed().as_secs_f64();
    let mut stdout = String::new();
    if let Some(mut o) = child.stdout.take() {
        o.read_to_string(&mut stdout)?;
    }
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            e.read_to_string(&mut err)?;
        }
        anyhow::bail!("the merge failed: {err}");
    }
    let j: serde_json::Value =
        serde_json::from_str(&stdout).context("amalgam run --json printed no JSON")?;
    let bytes = j["outputs"][0]["bytes"].as_u64().unwrap_or(0);
    Ok((secs, hwm, anon, bytes))
}

/// Reads every input once, sequentially, into one reused buffer.
fn read_all(inputs: &[PathBuf]) -> anyhow::Result<u64> {
    let mut buf = vec![0u8; 4 << 20];
    let mut total = 0;
    for p in inputs {
        let mut f = std::fs::File::open(p)?;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
    }
    Ok(total)
}

/// The limit: read all inputs, then write `output_bytes` through the merge's write path.
fn limit(inputs: &[PathBuf], output_bytes: u64, dir: &Path) -> anyhow::Result<f64> {
    let start = Instant::now();
    read_all(inputs)?;
    let data = output_bytes.saturating_sub(1024);
    let path = dir.join("limit.safetensors");
    let _ = std::fs::remove_file(&path);
    let spec = TensorSpec::new(
        "x",
        DType::U8,
        &[usize::try_from(data).unwrap_or(usize::MAX)],
    );
    let mut file = PendingFile::create(&path, &[spec], &Vec::new())?;
    let block = vec![0x3cu8; 4 << 20];
    let mut left = data;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        file.write(&block[..n])?;
        left -= n as u64;
    }
    file.finish()?;
    let secs = start.elapsed().as_secs_f64();
    std::fs::remove_file(&path)?;
    Ok(secs)
}

/// Drops the page cache (Linux, root); false when not permitted.
fn drop_caches() -> bool {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// Median, min and max.
fn spread(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |i: usize| v.get(i).copied().unwrap_or(0.0);
    (at(v.len() / 2), at(0), at(v.len().saturating_sub(1)))
}

fn table(rows: &[Row], args: &BenchArgs) -> String {
    use std::fmt::Write;
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let ram = amalgam::model::report::machine_memory().map_or_else(
        || "?".into(),
        |b| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
    );
    let date = chrono::Local::now().format("%Y-%m-%d");
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Amalgam {} · {cores} cores · {ram} RAM · {date} · warm page cache, median of {} runs{}",
        amalgam::VERSION,
        args.runs.max(1),
        if args.quick {
            " · QUICK (smoke run, not a measurement)"
        } else {
            ""
        }
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "The limit reads every input, then writes an output-sized file through the same writer (temporary file, fsync, rename); a merge overlaps its reads, arithmetic and writes, so it can beat it."
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| scenario | inputs → output | merge (min–max) | limit (min–max) | × limit | input read | peak RSS | peak heap |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    let mib = |b: Option<u64>| {
        b.map_or_else(
            || "n/a".into(),
            |b| format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64),
        )
    };
    for r in rows {
        let gbps = r.input_bytes as f64 / r.merge_secs.0 / 1e9;
        let t = |(m, lo, hi): (f64, f64, f64)| format!("{m:.2} s ({lo:.2}–{hi:.2})");
        let _ = writeln!(
            s,
            "| {} | {} → {} | {} | {} | {:.2} | {gbps:.2} GB/s | {} | {} |",
            r.name,
            human_bytes(r.input_bytes),
            human_bytes(r.output_bytes),
            t(r.merge_secs),
            t(r.limit_secs),
            r.merge_secs.0 / r.limit_secs.0,
            mib(r.peak_rss),
            mib(r.peak_anon),
        );
    }
    let cold: Vec<&Row> = rows.iter().filter(|r| r.cold.is_some()).collect();
    if !cold.is_empty() {
        let _ = writeln!(
            s,
            "\nCold page cache (dropped before each run):\n\n| scenario | merge | limit | × limit |\n|---|---|---|---|"
        );
        for r in cold {
            if let Some((m, l)) = r.cold {
                let _ = writeln!(s, "| {} | {m:.2} s | {l:.2} s | {:.2} |", r.name, m / l);
            }
        }
    }
    s
}
