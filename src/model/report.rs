//! Human and JSON reports of what a checkpoint is (`amalgam inspect`, the output browser).

use serde_json::{Map, Value, json};

use super::{Checkpoint, Component};

/// The machine's memory in bytes (`MemTotal` of `/proc/meminfo`), when it can be read.
pub fn machine_memory() -> Option<u64> {
    kib_field(&std::fs::read_to_string("/proc/meminfo").ok()?, "MemTotal:")
}

/// A `key:  N kB` line of a `/proc` file (`meminfo`, a process's `status`), in bytes.
pub fn kib_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Formats a byte count for people (`2.13 GB`).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.2} {}", UNITS[unit])
    }
}

/// Metadata keys whose (long JSON) values are shown by length only.
const ELIDED_KEYS: [&str; 2] = ["workflow", "prompt"];

/// The `--json` report.
pub fn report(ckpt: &Checkpoint) -> Value {
    let d = &ckpt.detection;
    let components: Map<String, Value> = ckpt
        .component_stats()
        .into_iter()
        .map(|(c, s)| {
            (
                c.as_str().to_owned(),
                json!({"tensors": s.tensors, "bytes": s.bytes}),
            )
        })
        .collect();
    let dtypes: Map<String, Value> = ckpt
        .dtype_counts()
        .into_iter()
        .map(|(d, n)| (d.as_str().to_owned(), json!(n)))
        .collect();
    let metadata: Map<String, Value> = ckpt
        .file
        .metadata()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), Value::String(shown_value(k, v))))
        .collect();
    json!({
        "path": ckpt.file.path().display().to_string(),
        "container": ckpt.file.container().as_str(),
        "file_bytes": ckpt.file.file_len(),
        "tensors": ckpt.file.tensors().len(),
        "architecture": d.architecture.as_str(),
        "variant": d.variant.map(super::Variant::as_str),
        "prediction": d.prediction.as_str(),
        "zsnr": d.zsnr,
        "unet_prefix": d.unet_prefix,
        "in_channels": d.in_channels,
        "model_channels": d.model_channels,
        "context_dim": d.context_dim,
        "components": components,
        "dtypes": dtypes,
        "metadata": metadata,
        "has_workflow": ckpt.has_workflow(),
    })
}

fn shown_value(key: &str, value: &str) -> String {
    if ELIDED_KEYS.contains(&key) {
        format!("({} characters)", value.chars().count())
    } else {
        value.to_owned()
    }
}

/// The human-readable report.
pub fn text_report(ckpt: &Checkpoint) -> String {
    use std::fmt::Write;
    let d = &ckpt.detection;
    let mut s = String::new();
    let _ = writeln!(s, "file          {}", ckpt.file.path().display());
    let _ = writeln!(
        s,
        "container     {} ({}, {} tensors)",
        ckpt.file.container().as_str(),
        human_bytes(ckpt.file.file_len()),
        ckpt.file.tensors().len()
    );
    let variant = d
        .variant
        .map(|v| format!(" ({})", v.as_str()))
        .unwrap_or_default();
    let _ = writeln!(s, "architecture  {}{variant}", d.architecture.as_str());
    let zsnr = if d.zsnr { ", zero terminal SNR" } else { "" };
    let _ = writeln!(s, "prediction    {}{zsnr}", d.prediction.as_str());
    let stats = ckpt.component_stats();
    for c in Component::ALL {
        let st = stats.get(&c).copied().unwrap_or_default();
        let _ = writeln!(
            s,
            "{:<13} {:>5} tensors  {:>10}",
            c.as_str(),
            st.tensors,
            human_bytes(st.bytes)
        );
    }
    let dtypes: Vec<String> = ckpt
        .dtype_counts()
        .into_iter()
        .map(|(d, n)| format!("{d} ×{n}"))
        .collect();
    let _ = writeln!(s, "dtypes        {}", dtypes.join(", "));
    match ckpt.file.metadata() {
        Some(meta) if !meta.is_empty() => {
            let _ = writeln!(s, "metadata");
            for (k, v) in meta {
                let mut shown = shown_value(k, v);
                if shown.chars().count() > 100 {
                    shown = shown.chars().take(97).collect::<String>() + "...";
                }
                let _ = writeln!(s, "  {k} = {shown}");
            }
        }
        _ => {
            let _ = writeln!(s, "metadata      none");
        }
    }
    let _ = writeln!(
        s,
        "workflow      {}",
        if ckpt.has_workflow() {
            "embedded"
        } else {
            "none"
        }
    );
    s
}
