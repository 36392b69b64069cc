//! `amalgam diff` and the engine's comparison job: real checkpoints written, compared, and the
//! numbers checked against an independent f64 computation over the files read with the
//! `safetensors` crate.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;

use amalgam::engine::Event;
use amalgam::engine::compare::{CompareJob, run_compare};
use amalgam::engine::worker::Worker;
use amalgam::format::DType;
use amalgam::model::layouts::{Layout, Scale};
use serde_json::Value;

use crate::util::{
    path_str, read_reference, run, spec, stderr, stdout, tempdir, write_layout, write_safetensors,
};

fn diff_json(a: &std::path::Path, b: &std::path::Path) -> Value {
    let out = run(&["diff", path_str(a), path_str(b), "--json"]);
    assert!(out.status.success(), "diff failed: {}", stderr(&out));
    serde_json::from_str(&stdout(&out)).expect("diff --json prints one JSON object")
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().expect("key").to_owned())
        .collect()
}

#[test]
fn a_file_with_itself_is_identical() {
    let dir = tempdir();
    let a = dir.path().join("a.safetensors");
    write_layout(&a, &Layout::sd15(Scale::Sample), 1, &[]);
    let j = diff_json(&a, &a);
    for list in ["only_in_a", "only_in_b", "shape_mismatch", "dtype_mismatch"] {
        assert_eq!(j[list], serde_json::json!([]), "{list}");
    }
    let keys = j["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), Layout::sd15(Scale::Sample).tensors().len());
    for k in keys.iter().chain(j["blocks"].as_array().expect("blocks")) {
        assert_eq!(k["relative"], 0.0, "{k}");
        assert_eq!(k["cosine"], 1.0, "{k}");
    }
    let blocks: Vec<&str> = j["blocks"]
        .as_array()
        .expect("blocks")
        .iter()
        .filter(|b| b["component"] == "model")
        .map(|b| b["block"].as_str().expect("name"))
        .collect();
    let mut want = vec!["time_embed".to_owned()];
    want.extend((0..12).map(|i| format!("IN{i:02}")));
    want.push("M00".into());
    want.extend((0..12).map(|i| format!("OUT{i:02}")));
    want.extend(["out".into(), "all".into()]);
    assert_eq!(blocks, want);

    let text = stdout(&run(&["diff", path_str(&a), path_str(&a)]));
    assert!(text.contains("identical"), "{text}");
}

/// ‖A‖², ‖B‖², A·B, ‖A−B‖² in f64 over the keys `select` picks, from the reference reader.
fn sums(
    a: &HashMap<String, crate::util::RefTensor>,
    b: &HashMap<String, crate::util::RefTensor>,
    select: impl Fn(&str) -> bool,
) -> (f64, f64) {
    let (mut a2, mut b2, mut ab, mut d2) = (0f64, 0f64, 0f64, 0f64);
    for (k, ta) in a {
        let Some(tb) = b.get(k) else { continue };
        if !select(k) || ta.shape != tb.shape {
            continue;
        }
        for (x, y) in ta.f32s().iter().zip(tb.f32s()) {
            let (x, y) = (f64::from(*x), f64::from(y));
            a2 += x * x;
            b2 += y * y;
            ab += x * y;
            d2 += (x - y) * (x - y);
        }
    }
    ((d2 / a2).sqrt(), ab / (a2.sqrt() * b2.sqrt()))
}

fn close(got: &Value, want: f64, what: &str) {
    let got = got
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: {got} is not a number"));
    assert!(
        (got - want).abs() <= 1e-6 * want.abs().max(1e-12),
        "{what}: {got} vs independent {want}"
    );
}

#[test]
fn differences_match_an_independent_computation() {
    let dir = tempdir();
    let (a, b) = (
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
    );
    let specs_a = Layout::sd15(Scale::Sample).tensors();
    write_safetensors(&a, &specs_a, 1, &HashMap::new(), &[]);
    // B: other values everywhere, one key dropped, one added, one reshaped, one stored in
    // another dtype, one copied bit for bit from A.
    let (dropped, reshaped, retyped, copied) = (
        "model.diffusion_model.out.2.bias",
        "first_stage_model.quant_conv.bias",
        "model.diffusion_model.input_blocks.1.0.in_layers.0.weight",
        "model.diffusion_model.input_blocks.4.0.emb_layers.1.bias",
    );
    let mut specs_b = Vec::new();
    for s in &specs_a {
        match s.name.as_str() {
            n if n == dropped => {}
            n if n == reshaped => {
                let mut shape = s.shape.clone();
                shape[0] += 1;
                specs_b.push(spec(n, s.dtype, &shape));
            }
            n if n == retyped => specs_b.push(spec(n, DType::F32, &s.shape)),
            _ => specs_b.push(s.clone()),
        }
    }
    specs_b.push(spec("model.diffusion_model.extra.weight", DType::F16, &[3]));
    let (ref_a, _) = read_reference(&a);
    let overrides = HashMap::from([(copied.to_owned(), ref_a[copied].bytes.clone())]);
    write_safetensors(&b, &specs_b, 2, &overrides, &[]);
    let (ref_b, _) = read_reference(&b);

    let j = diff_json(&a, &b);
    assert_eq!(names(&j["only_in_a"]), [dropped]);
    assert_eq!(
        names(&j["only_in_b"]),
        ["model.diffusion_model.extra.weight"]
    );
    assert_eq!(j["shape_mismatch"][0]["key"], reshaped);
    assert_eq!(
        j["shape_mismatch"][0]["b"][0].as_u64(),
        Some(ref_b[reshaped].shape[0] as u64)
    );
    assert_eq!(
        j["dtype_mismatch"],
        serde_json::json!([{"key": retyped, "a": "F16", "b": "F32"}])
    );

    let keys: HashMap<&str, &Value> = j["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| (k["key"].as_str().expect("key"), k))
        .collect();
    assert_eq!(
        keys.len(),
        specs_a.len() - 2,
        "shared keys with equal shapes"
    );
    assert_eq!(keys[copied]["relative"], 0.0);
    assert_eq!(keys[copied]["cosine"], 1.0);
    for key in [
        retyped,
        "model.diffusion_model.middle_block.1.proj_in.weight",
        "cond_stage_model.transformer.text_model.encoder.layers.3.mlp.fc2.weight",
        "first_stage_model.decoder.conv_out.weight",
    ] {
        let (rel, cos) = sums(&ref_a, &ref_b, |k| k == key);
        close(&keys[key]["relative"], rel, key);
        close(&keys[key]["cosine"], cos, key);
    }

    let blocks: HashMap<(String, String), &Value> = j["blocks"]
        .as_array()
        .expect("blocks")
        .iter()
        .map(|b| {
            let s = |f: &str| b[f].as_str().expect("string").to_owned();
            ((s("component"), s("block")), b)
        })
        .collect();
    type Select<'a> = &'a dyn Fn(&str) -> bool;
    let checks: [(&str, &str, Select); 5] = [
        ("model", "IN04", &|k| {
            k.starts_with("model.diffusion_model.input_blocks.4.")
        }),
        ("model", "M00", &|k| {
            k.starts_with("model.diffusion_model.middle_block.")
        }),
        ("model", "all", &|k| k.starts_with("model.diffusion_model.")),
        ("clip", "L05", &|k| {
            k.starts_with("cond_stage_model.transformer.text_model.encoder.layers.5.")
        }),
        ("vae", "decoder.up.1", &|k| {
            k.starts_with("first_stage_model.decoder.up.1.")
        }),
    ];
    for (component, block, select) in checks {
        let row = blocks[&(component.to_owned(), block.to_owned())];
        let (rel, cos) = sums(&ref_a, &ref_b, select);
        close(&row["relative"], rel, block);
        close(&row["cosine"], cos, block);
    }

    let text = stdout(&run(&["diff", path_str(&a), path_str(&b)]));
    for needle in [dropped, reshaped, "IN04", "most different keys"] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
}

#[test]
fn an_unreadable_input_is_named() {
    let dir = tempdir();
    let a = dir.path().join("a.safetensors");
    write_layout(&a, &Layout::sd15(Scale::Sample), 1, &[]);
    let missing = dir.path().join("missing.safetensors");
    let out = run(&["diff", path_str(&a), path_str(&missing)]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("missing.safetensors"),
        "{}",
        stderr(&out)
    );
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"not a checkpoint at all").expect("write");
    let out = run(&["diff", path_str(&junk), path_str(&a)]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("junk.safetensors"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_worker_compares_with_progress_and_cancel() {
    let dir = tempdir();
    let (a, b) = (
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
    );
    write_layout(&a, &Layout::sd15(Scale::Sample), 1, &[]);
    write_layout(&b, &Layout::sd15(Scale::Sample), 2, &[]);
    let mut worker = Worker::spawn(None).expect("worker");
    let id = worker.submit_compare(CompareJob {
        a: a.clone(),
        b: b.clone(),
    });
    let mut events = Vec::new();
    loop {
        let (job, event) = worker
            .events()
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("an event");
        assert_eq!(job, id);
        let end = event.is_terminal();
        events.push(event);
        if end {
            break;
        }
    }
    assert!(
        matches!(events[0], Event::Started { files: 2, .. }),
        "{:?}",
        events[0]
    );
    let Some(Event::Progress(last)) = events
        .iter()
        .rev()
        .find(|e| matches!(e, Event::Progress(_)))
    else {
        panic!("no progress: {events:?}")
    };
    assert_eq!(last.tensors_done, last.tensors_total);
    let Some(Event::Compared(c)) = events.last() else {
        panic!("no result: {:?}", events.last())
    };
    assert!(!c.report.identical());
    // Seeded weights differ everywhere; the integer position ids (0..77) are the same.
    for k in &c.report.keys {
        let same = k.key.ends_with("position_ids");
        assert_eq!(k.relative == Some(0.0), same, "{}: {:?}", k.key, k.relative);
    }

    // Cancelled before it starts: nothing but `Cancelled`.
    let cancel = AtomicBool::new(true);
    let mut seen = Vec::new();
    run_compare(&CompareJob { a, b }, &cancel, &mut |e| seen.push(e));
    assert!(matches!(seen.as_slice(), [Event::Cancelled]), "{seen:?}");
}
