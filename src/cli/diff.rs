//! `amalgam diff A B [--json]`: how two checkpoints differ — keys only one has, shape and dtype
//! mismatches, and per key, block and component the relative difference ‖A−B‖/‖A‖ and the
//! cosine similarity (see `amalgam::model::diff`). Runs on the engine's comparison job, with a
//! progress bar on a terminal and Ctrl+C to stop.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;

use amalgam::engine::Event;
use amalgam::engine::compare::{CompareJob, Comparison, run_compare};
use amalgam::model::diff::{DiffReport, ratio_text};

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The reference checkpoint (relative differences are measured against it).
    pub a: PathBuf,
    /// The checkpoint to compare with it.
    pub b: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Text output: how many of the most different keys to list.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
}

pub fn run(args: &DiffArgs) -> anyhow::Result<()> {
    let cancel = super::ctrl_c_flag();
    let bar = super::byte_bar();
    let job = CompareJob {
        a: args.a.clone(),
        b: args.b.clone(),
    };
    let mut outcome: Option<anyhow::Result<Box<Comparison>>> = None;
    run_compare(&job, &cancel, &mut |event| match event {
        Event::Started { bytes_total, .. } => {
            if let Some(b) = &bar {
                b.set_length(bytes_total);
            }
        }
        Event::Progress(p) => {
            if let Some(b) = &bar {
                b.set_position(p.bytes_done);
            }
        }
        Event::Compared(c) => outcome = Some(Ok(c)),
        Event::Failed(e) => outcome = Some(Err(e.into())),
        Event::Cancelled => outcome = Some(Err(anyhow::anyhow!("cancelled"))),
        _ => {}
    });
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let comparison = outcome
        .context("the comparison ended without a result")?
        .with_context(|| {
            format!(
                "cannot compare {} with {}",
                args.a.display(),
                args.b.display()
            )
        })?;
    if args.json {
        super::emit(&(serde_json::to_string_pretty(&comparison.report)? + "\n"))
    } else {
        super::emit(&text(&comparison, args.top))
    }
}

/// The human summary: verdict, mismatches, components, blocks, the most different keys.
fn text(c: &Comparison, top: usize) -> String {
    let r: &DiffReport = &c.report;
    let mut out = String::new();
    let _ = writeln!(out, "A: {}\nB: {}", c.a.display(), c.b.display());
    if r.identical() {
        let _ = writeln!(
            out,
            "identical: {} keys, same shapes, dtypes and values ({:.1} s)",
            r.keys.len(),
            c.seconds
        );
        return out;
    }
    let changed = r.changed_keys().count();
    let _ = writeln!(
        out,
        "{} shared keys compared, {changed} differ; {} only in A, {} only in B, {} shape mismatches, {} dtype differences ({:.1} s)",
        r.keys.len(),
        r.only_in_a.len(),
        r.only_in_b.len(),
        r.shape_mismatch.len(),
        r.dtype_mismatch.len(),
        c.seconds
    );
    let list = |out: &mut String, title: &str, keys: &[String]| {
        if keys.is_empty() {
            return;
        }
        let _ = writeln!(out, "\n{title} ({}):", keys.len());
        for k in keys.iter().take(20) {
            let _ = writeln!(out, "  {k}");
        }
        if keys.len() > 20 {
            let _ = writeln!(out, "  … and {} more (--json lists all)", keys.len() - 20);
        }
    };
    list(&mut out, "only in A", &r.only_in_a);
    list(&mut out, "only in B", &r.only_in_b);
    if !r.shape_mismatch.is_empty() {
        let _ = writeln!(out, "\nshape mismatches ({}):", r.shape_mismatch.len());
        for m in &r.shape_mismatch {
            let _ = writeln!(out, "  {}: {:?} vs {:?}", m.key, m.a, m.b);
        }
    }
    if !r.dtype_mismatch.is_empty() {
        let _ = writeln!(
            out,
            "\ndtype differences ({}, compared as values):",
            r.dtype_mismatch.len()
        );
        for m in r.dtype_mismatch.iter().take(20) {
            let _ = writeln!(out, "  {}: {} vs {}", m.key, m.a, m.b);
        }
    }
    let _ = writeln!(
        out,
        "\n{:<10} {:<14} {:>12} {:>12} {:>6}",
        "component", "block", "relative", "cosine", "keys"
    );
    for b in &r.blocks {
        let _ = writeln!(
            out,
            "{:<10} {:<14} {:>12} {:>12} {:>6}",
            b.component,
            b.block,
            ratio_text(b.relative),
            ratio_text(b.cosine),
            b.keys
        );
    }
    let mut keys: Vec<_> = r.changed_keys().collect();
    keys.sort_by(|x, y| {
        let v = |k: &&amalgam::model::diff::KeyDiff| k.relative.unwrap_or(f64::INFINITY);
        v(y).total_cmp(&v(x))
    });
    if top > 0 && !keys.is_empty() {
        let _ = writeln!(out, "\nmost different keys:");
        for k in keys.iter().take(top) {
            let _ = writeln!(
                out,
                "  {:>12} {:>12}  {}",
                ratio_text(k.relative),
                ratio_text(k.cosine),
                k.key
            );
        }
    }
    out
}
