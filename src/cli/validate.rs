//! `amalgam validate WORKFLOW [--json]`: load a workflow from any supported file, resolve it into
//! a prompt and validate it like ComfyUI would, naming every problem by node.

use std::path::PathBuf;

use serde_json::json;

use amalgam::graph::load::load_file;
use amalgam::graph::resolve::resolve;
use amalgam::graph::validate::{Validation, validate};
use amalgam::nodes::Registry;

use super::FolderArgs;

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// A ComfyUI workflow: PNG, workflow JSON, API prompt JSON, or a .safetensors with one embedded.
    pub workflow: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs validation; the process fails when nothing can run.
pub fn run(folders: &FolderArgs, args: &ValidateArgs) -> anyhow::Result<()> {
    let folders = folders.resolve()?;
    let loaded = load_file(&args.workflow)?;
    let registry = Registry::builtin();
    let resolved = resolve(&loaded.document, registry);
    let mut v = validate(resolved, registry, &folders);
    v.warnings
        .extend(loaded.report.issues.iter().map(|i| i.message.clone()));
    if args.json {
        let mut j = v.to_json();
        j["source"] = json!(loaded.source.as_str());
        super::emit(&(serde_json::to_string_pretty(&j)? + "\n"))?;
    } else {
        super::emit(&text_report(&v))?;
    }
    if v.ok() {
        Ok(())
    } else {
        Err(anyhow::anyhow!(
            "nothing can run in {}: {} error(s)",
            args.workflow.display(),
            v.errors.len()
        ))
    }
}

fn text_report(v: &Validation) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "prompt nodes:");
    for (id, n) in &v.prompt.nodes {
        let _ = writeln!(s, "  #{id:<5} {}", n.class_type);
    }
    if !v.skipped.is_empty() {
        let _ = writeln!(s, "skipped:");
        for k in &v.skipped {
            let reason = serde_json::to_value(k.reason).unwrap_or_default();
            let _ = writeln!(
                s,
                "  #{:<5} {} ({})",
                k.node,
                k.class_type,
                reason.as_str().unwrap_or("")
            );
        }
    }
    for w in &v.warnings {
        let _ = writeln!(s, "warning: {w}");
    }
    for e in &v.errors {
        let _ = writeln!(s, "error: {e}");
    }
    if v.ok() {
        let ids: Vec<String> = v.outputs.iter().map(|o| format!("#{o}")).collect();
        let _ = writeln!(s, "ready: output node(s) {}", ids.join(", "));
    }
    s
}
