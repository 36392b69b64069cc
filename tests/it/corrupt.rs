//! The corrupted-file corpus: hundreds of broken variants of real files — a sample SD1.5
//! checkpoint as safetensors, torch zip and legacy torch, a LoRA, workflow PNGs and JSON,
//! `extra_model_paths.yaml`, and model folders with symlink loops — each fed to Amalgam the way a
//! user would. For every one: a clear error that names the file, no panic, and nothing written to
//! the output folder.

use std::io::{Read, Write};
use std::path::Path;

use crate::util::{ModelTree, files_under};
use amalgam::format::png::{TextKind, write_png_with_text};
use amalgam::model::layouts::{Layout, Scale};
use serde_json::{Value, json};

/// A deterministic stream of numbers for choosing positions and flips.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One broken file: a label for failure messages, the file name it is saved under, its bytes.
struct Variant {
    label: String,
    file: String,
    bytes: Vec<u8>,
}

fn variant(label: impl Into<String>, file: &str, bytes: Vec<u8>) -> Variant {
    Variant {
        label: label.into(),
        file: file.to_owned(),
        bytes,
    }
}

/// A model tree with one good checkpoint, `good.safetensors`; broken files are dropped beside it.
fn tree() -> ModelTree {
    let t = ModelTree::new();
    t.checkpoint("good.safetensors", &Layout::sd15(Scale::Sample), 1);
    t
}

fn good_bytes(t: &ModelTree) -> Vec<u8> {
    std::fs::read(t.path().join("models/checkpoints/good.safetensors")).expect("read good")
}

/// Every file below the output folder (there must never be any).
fn output_files(t: &ModelTree) -> Vec<String> {
    files_under(&t.output())
}

/// Validates and runs `prompt`; returns the error (validation's or the engine's), panicking if
/// the prompt ran to completion.
fn fail(t: &ModelTree, prompt: &Value, label: &str) -> String {
    match crate::util::run_prompt(&t.folders(), prompt) {
        Ok(saved) => panic!("{label}: the broken file was merged and saved: {saved:?}"),
        Err(e) => e,
    }
}

fn merge_prompt(broken: &str) -> Value {
    json!({
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "good.safetensors"}},
        "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": broken}},
        "3": {"class_type": "ModelMergeSimple", "inputs": {"model1": ["1", 0], "model2": ["2", 0], "ratio": 0.5}},
        "4": {"class_type": "CLIPMergeSimple", "inputs": {"clip1": ["1", 1], "clip2": ["2", 1], "ratio": 0.5}},
        "5": {"class_type": "CheckpointSave", "inputs": {
            "model": ["3", 0], "clip": ["4", 0], "vae": ["2", 2], "filename_prefix": "checkpoints/out"}}
    })
}

fn lora_prompt(broken: &str) -> Value {
    json!({
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "good.safetensors"}},
        "2": {"class_type": "LoraLoader", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "lora_name": broken,
            "strength_model": 1.0, "strength_clip": 1.0}},
        "5": {"class_type": "CheckpointSave", "inputs": {
            "model": ["2", 0], "clip": ["2", 1], "vae": ["1", 2], "filename_prefix": "checkpoints/out"}}
    })
}

// ---- safetensors ------------------------------------------------------------------------------

/// Splits a safetensors file into its header JSON (as parsed) and data.
fn split(bytes: &[u8]) -> (serde_json::Map<String, Value>, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + n]).expect("good header");
    (header, bytes[8 + n..].to_vec())
}

fn assemble(header_text: &str, data: &[u8]) -> Vec<u8> {
    let mut v = (header_text.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header_text.as_bytes());
    v.extend_from_slice(data);
    v
}

/// Tensors of the header ordered by data offset: (name, begin, end).
fn tensor_ranges(header: &serde_json::Map<String, Value>) -> Vec<(String, usize, usize)> {
    let mut out: Vec<_> = header
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            let o = &v["data_offsets"];
            let b = o[0].as_u64().expect("offset") as usize;
            let e = o[1].as_u64().expect("offset") as usize;
            (k.clone(), b, e)
        })
        .collect();
    out.sort_by_key(|t| t.1);
    out
}

fn safetensors_variants(good: &[u8], rng: &mut Lcg) -> Vec<Variant> {
    const F: &str = "broken.safetensors";
    let mut out = Vec::new();
    let n = u64::from_le_bytes(good[..8].try_into().expect("8 bytes")) as usize;
    let data_start = 8 + n;
    let (header, data) = split(good);
    let ranges = tensor_ranges(&header);

    // Truncation at every structural boundary: inside the length, the header, at each of the
    // first tensors' starts and ends, and just before the end.
    let mut cuts = vec![
        0,
        1,
        4,
        7,
        8,
        9,
        10,
        n / 2,
        data_start - 2,
        data_start - 1,
        data_start,
    ];
    for (_, b, e) in ranges.iter().take(25) {
        cuts.extend([data_start + b + 1, data_start + e - 1]);
    }
    cuts.push(good.len() - 1);
    cuts.sort_unstable();
    cuts.dedup();
    for c in cuts {
        out.push(variant(
            format!("safetensors cut at {c}"),
            F,
            good[..c].to_vec(),
        ));
    }
    // One byte too many.
    let mut long = good.to_vec();
    long.push(0);
    out.push(variant("safetensors with a trailing byte", F, long));

    // Lying header lengths.
    for (what, claim) in [
        ("0", 0u64),
        ("n-1", n as u64 - 1),
        ("n+1", n as u64 + 1),
        ("n+8", n as u64 + 8),
        ("file length", good.len() as u64),
        ("u64::MAX", u64::MAX),
        ("2^40", 1 << 40),
    ] {
        let mut v = good.to_vec();
        v[..8].copy_from_slice(&claim.to_le_bytes());
        out.push(variant(format!("header length claims {what}"), F, v));
    }

    // Flipped bytes in structural places of the header: offsets and shape digits, brackets,
    // colons, commas, quotes (a flip inside a tensor name would give a valid, renamed file).
    let text = std::str::from_utf8(&good[8..data_start]).expect("utf-8 header");
    let mut candidates = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        for marker in ["\"data_offsets\":[", "\"shape\":["] {
            if text[i..].starts_with(marker) {
                let start = i + marker.len();
                let end = start + text[start..].find(']').expect("closing bracket");
                candidates.extend(start - 1..=end);
                i = end;
                break;
            }
        }
        if matches!(bytes[i], b'{' | b'}' | b':') {
            candidates.push(i);
        }
        i += 1;
    }
    for round in 0..60 {
        let pos = candidates[rng.below(candidates.len())];
        let was = bytes[pos];
        // Half the flips keep a digit a digit, so the JSON stays valid and the numbers lie.
        let now = if round % 2 == 0 && was.is_ascii_digit() {
            b'0' + ((was - b'0') + 1 + rng.below(9) as u8) % 10
        } else {
            was ^ (rng.below(255) + 1) as u8
        };
        let mut v = good.to_vec();
        v[8 + pos] = now;
        out.push(variant(
            format!("header byte {pos} {:?} → {now:#04x}", was as char),
            F,
            v,
        ));
    }

    // Rewritten headers: wrong offsets, wrong dtypes for the shapes, unknown dtypes, duplicate
    // keys, NaN/Inf, bad shapes.
    let first = &ranges[0].0;
    let picks: Vec<&String> = (0..6).map(|_| &ranges[rng.below(ranges.len())].0).collect();
    let rewrite = |f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut h = header.clone();
        f(&mut h);
        assemble(&Value::Object(h).to_string(), &data)
    };
    for name in &picks {
        out.push(variant(
            format!("{name}: offsets shifted by 2"),
            F,
            rewrite(&|h| {
                let o = &mut h[name.as_str()]["data_offsets"];
                o[0] = json!(o[0].as_u64().unwrap_or(0) + 2);
                o[1] = json!(o[1].as_u64().unwrap_or(0) + 2);
            }),
        ));
        out.push(variant(
            format!("{name}: end offset past the data"),
            F,
            rewrite(&|h| h[name.as_str()]["data_offsets"][1] = json!(data.len() + 64)),
        ));
        out.push(variant(
            format!("{name}: F64 for its shape"),
            F,
            rewrite(&|h| h[name.as_str()]["dtype"] = json!("F64")),
        ));
        out.push(variant(
            format!("{name}: unknown dtype"),
            F,
            rewrite(&|h| h[name.as_str()]["dtype"] = json!("Q4_K")),
        ));
        out.push(variant(
            format!("{name}: shape one element larger"),
            F,
            rewrite(&|h| {
                let s = &mut h[name.as_str()]["shape"];
                if let Some(a) = s.as_array_mut() {
                    a.push(json!(2));
                }
            }),
        ));
        out.push(variant(
            format!("{name}: negative dimension"),
            F,
            rewrite(&|h| h[name.as_str()]["shape"] = json!([-1, 4])),
        ));
    }
    out.push(variant(
        "a shape whose element count overflows",
        F,
        rewrite(&|h| h[first.as_str()]["shape"] = json!([u64::MAX, u64::MAX, 16])),
    ));
    out.push(variant(
        "a tensor entry without offsets",
        F,
        rewrite(&|h| {
            if let Some(o) = h[first.as_str()].as_object_mut() {
                o.remove("data_offsets");
            }
        }),
    ));
    // Duplicate keys and non-JSON numbers need the text itself.
    let entry = format!("\"{first}\":{}", header[first.as_str()]);
    let dup = text.replacen(&entry, &format!("{entry},{entry}"), 1);
    out.push(variant("a tensor listed twice", F, assemble(&dup, &data)));
    let dup_other = text.replacen(
        &entry,
        &format!("{entry},\"{first}\":{{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}"),
        1,
    );
    out.push(variant(
        "a name listed twice with another dtype",
        F,
        assemble(&dup_other, &data),
    ));
    for (what, lit) in [("NaN", "NaN"), ("Infinity", "Infinity"), ("1e999", "1e999")] {
        let t = text.replacen("\"shape\":[", &format!("\"shape\":[{lit},"), 1);
        out.push(variant(
            format!("{what} in a shape"),
            F,
            assemble(&t, &data),
        ));
        let t = text.replacen('{', &format!("{{\"__metadata__\":{{\"x\":{lit}}},"), 1);
        out.push(variant(
            format!("{what} in the metadata"),
            F,
            assemble(&t, &data),
        ));
    }
    out.push(variant(
        "metadata that is not a string map",
        F,
        assemble(
            &text.replacen('{', "{\"__metadata__\":{\"x\":[1]},", 1),
            &data,
        ),
    ));
    out.push(variant(
        "a header that is a JSON list",
        F,
        assemble(&format!("[{}]", &text[1..text.len() - 1]), &data),
    ));
    out.push(variant("a header that is not UTF-8", F, {
        let mut v = good.to_vec();
        v[9] = 0xff;
        v
    }));
    out
}

// ---- PyTorch checkpoints ----------------------------------------------------------------------

fn good_torch(tree: &ModelTree) -> (Vec<u8>, Vec<u8>) {
    let zip = tree.path().join("good-zip.tmp");
    let legacy = tree.path().join("good-legacy.tmp");
    let specs = Layout::sd15(Scale::Sample).tensors();
    crate::util::write_torch(&specs, 1, Some(&zip), Some(&legacy));
    let out = (
        std::fs::read(&zip).expect("read"),
        std::fs::read(&legacy).expect("read"),
    );
    let _ = std::fs::remove_file(zip);
    let _ = std::fs::remove_file(legacy);
    out
}

/// The members of a zip, in order.
fn members(zip: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut a = zip::ZipArchive::new(std::io::Cursor::new(zip)).expect("zip");
    (0..a.len())
        .map(|i| {
            let mut m = a.by_index(i).expect("member");
            let name = m.name().expect("member name").into_owned();
            let mut d = Vec::new();
            m.read_to_end(&mut d).expect("read member");
            (name, d)
        })
        .collect()
}

fn rezip(members: &[(String, Vec<u8>)], method: zip::CompressionMethod) -> Vec<u8> {
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data) in members {
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(method)
            .large_file(true);
        out.start_file(name.as_str(), opts).expect("start");
        out.write_all(data).expect("write");
    }
    out.finish().expect("finish").into_inner()
}

/// A pickle that calls `module.name(arg)` when unpickled by Python.
fn calling_pickle(module: &str, name: &str, arg: &str) -> Vec<u8> {
    let mut p = vec![0x80, 0x02, b'c'];
    p.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    p.push(b'X');
    p.extend_from_slice(&(arg.len() as u32).to_le_bytes());
    p.extend_from_slice(arg.as_bytes());
    p.extend_from_slice(b"\x85R.");
    p
}

fn torch_variants(zip: &[u8], legacy: &[u8], rng: &mut Lcg) -> Vec<Variant> {
    const F: &str = "broken.ckpt";
    let mut out = Vec::new();
    let ms = members(zip);
    let pkl_index = ms
        .iter()
        .position(|(n, _)| n.ends_with("data.pkl"))
        .expect("data.pkl");
    let pkl = ms[pkl_index].1.clone();

    // Truncations: the local header, inside data.pkl, inside tensor storage, the central
    // directory, the end record.
    let eocd = zip.len() - 22;
    let mut cuts = vec![
        2,
        4,
        29,
        30,
        31,
        30 + pkl.len() / 2,
        zip.len() / 3,
        zip.len() / 2,
    ];
    cuts.extend([eocd - 1, eocd, eocd + 10, zip.len() - 1]);
    for _ in 0..10 {
        cuts.push(rng.below(zip.len()));
    }
    for c in cuts {
        out.push(variant(
            format!("torch zip cut at {c}"),
            F,
            zip[..c].to_vec(),
        ));
    }
    // Lying fields of the end record and the central directory. A flip elsewhere there can be
    // harmless (timestamps, attributes, and the directory's size, which the reader does not
    // need: entries are found from its offset), so those files still read correctly.
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    let cd_offset = u32_at(zip, eocd + 16) as usize;
    for (what, pos) in [
        ("end record signature", eocd),
        ("entry count", eocd + 10),
        ("central directory offset", eocd + 16),
        ("central directory signature", cd_offset),
    ] {
        let mut v = zip.to_vec();
        v[pos] ^= 0x21;
        out.push(variant(format!("torch zip {what} flipped"), F, v));
    }
    let entries: Vec<usize> = (cd_offset..eocd)
        .filter(|&i| zip[i..].starts_with(b"PK\x01\x02"))
        .collect();
    for _ in 0..12 {
        let entry = entries[rng.below(entries.len())];
        let mut v = zip.to_vec();
        // The entry's local header offset, moved by a few bytes.
        v[entry + 42] ^= (rng.below(7) + 1) as u8;
        out.push(variant(
            format!("torch zip member at {entry} points to a wrong local header"),
            F,
            v,
        ));
    }
    // Pickles with forbidden globals, as data.pkl.
    for (module, name) in [
        ("os", "system"),
        ("posix", "system"),
        ("nt", "system"),
        ("builtins", "eval"),
        ("builtins", "exec"),
        ("__builtin__", "getattr"),
        ("subprocess", "Popen"),
        ("webbrowser", "open"),
        ("torch", "load"),
        ("numpy", "load"),
    ] {
        let mut m = ms.clone();
        m[pkl_index].1 = calling_pickle(module, name, "echo pwned");
        out.push(variant(
            format!("data.pkl calling {module}.{name}"),
            F,
            rezip(&m, zip::CompressionMethod::Stored),
        ));
    }
    // data.pkl truncated and bit-flipped inside a valid archive.
    for c in [0, 1, 2, pkl.len() / 3, pkl.len() / 2, pkl.len() - 1] {
        let mut m = ms.clone();
        m[pkl_index].1.truncate(c);
        out.push(variant(
            format!("data.pkl cut at {c}"),
            F,
            rezip(&m, zip::CompressionMethod::Stored),
        ));
    }
    // Storage missing, storage shorter than its tensor, storage compressed.
    let storage = ms
        .iter()
        .position(|(n, _)| n.contains("/data/"))
        .expect("storage");
    let mut m = ms.clone();
    m.remove(storage);
    out.push(variant(
        "a storage member missing",
        F,
        rezip(&m, zip::CompressionMethod::Stored),
    ));
    let mut m = ms.clone();
    let half = m[storage].1.len() / 2;
    m[storage].1.truncate(half);
    out.push(variant(
        "a storage member too short",
        F,
        rezip(&m, zip::CompressionMethod::Stored),
    ));
    out.push(variant(
        "storages compressed",
        F,
        rezip(&ms, zip::CompressionMethod::Deflated),
    ));
    let mut m = ms.clone();
    m.remove(pkl_index);
    out.push(variant(
        "no data.pkl",
        F,
        rezip(&m, zip::CompressionMethod::Stored),
    ));
    // Zip bombs: a data.pkl of zeros that expands past the cap; many members.
    let mut m = vec![("archive/data.pkl".to_owned(), vec![0u8; 300 << 20])];
    out.push(variant(
        "a zip bomb data.pkl (300 MiB of zeros)",
        F,
        rezip(&m, zip::CompressionMethod::Deflated),
    ));
    m.clear();
    m.push(("archive/data.pkl".to_owned(), pkl.clone()));
    for i in 0..70_000 {
        m.push((format!("archive/x/{i}"), Vec::new()));
    }
    out.push(variant(
        "70,000 empty members beside data.pkl, no storages",
        F,
        rezip(&m, zip::CompressionMethod::Stored),
    ));

    // Legacy (pre-zip) torch files: cut at the magic, each pickle, the storages.
    let mut cuts = vec![
        1,
        5,
        9,
        10,
        11,
        16,
        30,
        100,
        1000,
        legacy.len() / 2,
        legacy.len() - 1,
    ];
    for _ in 0..6 {
        cuts.push(rng.below(legacy.len()));
    }
    for c in cuts {
        out.push(variant(
            format!("legacy torch cut at {c}"),
            F,
            legacy[..c].to_vec(),
        ));
    }
    let mut v = legacy.to_vec();
    let tail = calling_pickle("os", "system", "echo pwned");
    v.truncate(15); // the magic-number pickle
    v.extend_from_slice(&tail);
    out.push(variant(
        "legacy torch whose first pickle calls os.system",
        F,
        v,
    ));
    out
}

// ---- LoRA -------------------------------------------------------------------------------------

fn lora_variants(good_lora: &[u8], rng: &mut Lcg) -> Vec<Variant> {
    const F: &str = "broken-lora.safetensors";
    let mut out = Vec::new();
    let n = u64::from_le_bytes(good_lora[..8].try_into().expect("8 bytes")) as usize;
    for c in [0, 5, 8, 20, n, n + 8, n + 9, good_lora.len() - 1] {
        out.push(variant(
            format!("lora cut at {c}"),
            F,
            good_lora[..c].to_vec(),
        ));
    }
    for _ in 0..6 {
        let c = 8 + n + rng.below(good_lora.len() - 8 - n);
        out.push(variant(
            format!("lora cut at {c}"),
            F,
            good_lora[..c].to_vec(),
        ));
    }
    let mut v = good_lora.to_vec();
    v[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    out.push(variant("lora header length u64::MAX", F, v));
    out
}

// ---- workflows --------------------------------------------------------------------------------

fn workflow_variants(rng: &mut Lcg) -> Vec<Variant> {
    let mut out = Vec::new();
    let shared =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/workflows/model_merging_basic.png");
    let doc = amalgam::graph::examples::all()
        .remove(0)
        .2
        .to_json()
        .to_string();
    let png = std::fs::read(&shared).unwrap_or_else(|_| {
        write_png_with_text(64, 64, &[(TextKind::TEXt, "workflow", &doc)]).expect("png")
    });
    // Where the workflow's text chunk is.
    let at = png
        .windows(4)
        .position(|w| w == b"tEXt" || w == b"iTXt" || w == b"zTXt")
        .expect("a text chunk")
        - 4;
    let len = u32::from_be_bytes(png[at..at + 4].try_into().expect("4 bytes")) as usize;
    for c in [
        0,
        4,
        8,
        12,
        16,
        33,
        at,
        at + 4,
        at + 8,
        at + 12,
        at + 8 + len / 2,
        at + 8 + len,
    ] {
        out.push(variant(
            format!("PNG cut at {c}"),
            "broken.png",
            png[..c].to_vec(),
        ));
    }
    for (what, pos) in [
        ("chunk CRC", at + 8 + len),
        ("chunk type", at + 5),
        ("chunk length", at + 1),
        ("signature", 1),
    ] {
        let mut v = png.clone();
        v[pos] ^= 0x5a;
        out.push(variant(format!("PNG {what} flipped"), "broken.png", v));
    }
    for (what, lie) in [
        ("2 GiB", 0x7fff_fff0u32),
        ("past the end", (png.len() as u32) * 2),
    ] {
        let mut v = png.clone();
        v[at..at + 4].copy_from_slice(&lie.to_be_bytes());
        out.push(variant(
            format!("PNG chunk length lies: {what}"),
            "broken.png",
            v,
        ));
    }
    // The workflow text broken inside a valid PNG.
    for (what, text) in [
        ("truncated JSON", doc[..doc.len() / 2].to_owned()),
        ("NaN in JSON", doc.replacen("[", "[NaN,", 1)),
        ("Infinity in JSON", doc.replacen(':', ":Infinity,\"x\":", 1)),
        (
            "nodes is a number",
            json!({"nodes": 5, "links": []}).to_string(),
        ),
        ("a JSON string", "\"workflow\"".to_owned()),
    ] {
        let v = write_png_with_text(8, 8, &[(TextKind::TEXt, "workflow", &text)]).expect("png");
        out.push(variant(format!("PNG with {what}"), "broken.png", v));
    }
    let bomb = "{".repeat(16 << 20);
    let v = write_png_with_text(8, 8, &[(TextKind::ZTXt, "workflow", &bomb)]).expect("png");
    out.push(variant(
        "PNG with a zTXt bomb (16 MiB from ~16 KiB)",
        "broken.png",
        v,
    ));
    let v = write_png_with_text(8, 8, &[(TextKind::TEXt, "parameters", "a photo")]).expect("png");
    out.push(variant("PNG without a workflow", "broken.png", v));
    // JSON files.
    for c in [0, 1, doc.len() / 4, doc.len() / 2, doc.len() - 1] {
        out.push(variant(
            format!("workflow JSON cut at {c}"),
            "broken.json",
            doc.as_bytes()[..c].to_vec(),
        ));
    }
    for _ in 0..6 {
        let pos = rng.below(doc.len());
        let mut v = doc.clone().into_bytes();
        v[pos] = 0xff; // never valid UTF-8 on its own
        out.push(variant(
            format!("workflow JSON byte {pos} is 0xff"),
            "broken.json",
            v,
        ));
    }
    for (what, text) in [
        ("NaN", doc.replacen("[", "[NaN,", 1)),
        ("-Infinity", doc.replacen("[", "[-Infinity,", 1)),
        (
            "a links entry that is a string",
            doc.replacen("\"links\":[", "\"links\":[\"x\",", 1),
        ),
        (
            "an API prompt whose node is a list",
            "{\"1\": [1, 2]}".to_owned(),
        ),
        (
            "an API prompt with a link to nowhere",
            json!({"1": {"class_type": "CheckpointSave", "inputs": {"model": ["9", 0]}}, "2": 3})
                .to_string(),
        ),
        ("deep nesting", "[".repeat(100_000)),
    ] {
        out.push(variant(
            format!("workflow JSON with {what}"),
            "broken.json",
            text.into_bytes(),
        ));
    }
    out
}

// ---- the test ---------------------------------------------------------------------------------

#[test]
fn every_broken_file_gets_a_clear_error_naming_it_and_writes_nothing() {
    let tree = tree();
    let mut rng = Lcg(0x5eed);
    let good = good_bytes(&tree);
    let (zip, legacy) = good_torch(&tree);
    let sample_lora = {
        let specs = amalgam::model::samples::sample_lora();
        let p = tree.path().join("lora.tmp");
        crate::util::write_safetensors(&p, &specs, 7, &Default::default(), &[]);
        let b = std::fs::read(&p).expect("read lora");
        let _ = std::fs::remove_file(p);
        b
    };

    let mut checked = 0;
    let mut check = |label: &str, file: &str, error: &str| {
        assert!(
            error.contains(file),
            "{label}: the error does not name {file}: {error}"
        );
        if std::env::var_os("AMALGAM_SHOW_ERRORS").is_some() {
            eprintln!("{label}\n    {error}");
        }
        let written = output_files(&tree);
        assert!(written.is_empty(), "{label}: wrote {written:?}");
        checked += 1;
    };

    let ck_dir = tree.path().join("models/checkpoints");
    for v in safetensors_variants(&good, &mut rng)
        .into_iter()
        .chain(torch_variants(&zip, &legacy, &mut rng))
    {
        let path = ck_dir.join(&v.file);
        std::fs::write(&path, &v.bytes).expect("write variant");
        let error = fail(&tree, &merge_prompt(&v.file), &v.label);
        check(&v.label, &v.file, &error);
        // Opening it for a look (the output browser, `inspect`) fails the same clear way.
        let open = amalgam::format::TensorFile::open(&path);
        assert!(open.is_err(), "{}: opened", v.label);
        let _ = std::fs::remove_file(&path);
    }
    let lora_dir = tree.path().join("models/loras");
    for v in lora_variants(&sample_lora, &mut rng) {
        std::fs::write(lora_dir.join(&v.file), &v.bytes).expect("write variant");
        let error = fail(&tree, &lora_prompt(&v.file), &v.label);
        check(&v.label, &v.file, &error);
        let _ = std::fs::remove_file(lora_dir.join(&v.file));
    }
    let wf_dir = tree.path().join("workflows");
    std::fs::create_dir_all(&wf_dir).expect("mkdir");
    for v in workflow_variants(&mut rng) {
        let path = wf_dir.join(&v.file);
        std::fs::write(&path, &v.bytes).expect("write variant");
        let error = match amalgam::graph::load::load_file(&path) {
            Err(e) => e.to_string(),
            Ok(loaded) => {
                // A workflow with one bad part loads what it can (as ComfyUI does) and says
                // what it skipped; that report is shown with the file's name when it opens.
                let issues: Vec<&str> = loaded
                    .report
                    .issues
                    .iter()
                    .map(|i| i.message.as_str())
                    .collect();
                assert!(!issues.is_empty(), "{}: loaded without a word", v.label);
                eprintln!("{}: loaded, reporting {issues:?}", v.label);
                format!("{}: {}", v.file, issues.join("; "))
            }
        };
        check(&v.label, &v.file, &error);
    }

    // extra_model_paths.yaml.
    for (label, text) in [
        ("not YAML", "comfyui: [\n  base_path: x"),
        ("a list at the top", "- a\n- b\n"),
        ("a section that is a number", "comfyui: 3\n"),
        (
            "a kind that is a map",
            "comfyui:\n  checkpoints:\n    a: b\n",
        ),
        ("tabs", "comfyui:\n\tcheckpoints: x\n"),
        ("not UTF-8", "comfyui:\n  checkpoints: \u{fffd}"),
    ] {
        let path = tree.path().join("extra_model_paths.yaml");
        let mut bytes = text.as_bytes().to_vec();
        if label == "not UTF-8" {
            bytes.push(0xff);
        }
        std::fs::write(&path, bytes).expect("write yaml");
        let mut folders = tree.folders();
        let error = folders
            .add_extra_paths_file(&path)
            .expect_err(label)
            .to_string();
        check(label, "extra_model_paths.yaml", &error);
    }

    // Symlinks in the model folder: a loop back up the tree, one to itself, one dangling, one to
    // a directory with a checkpoint's name. Listing terminates; none is offered or opened.
    #[cfg(unix)]
    {
        use std::os::unix::fs::symlink;
        symlink(&ck_dir, ck_dir.join("loop")).expect("symlink");
        symlink(tree.path(), ck_dir.join("up")).expect("symlink");
        symlink("self.safetensors", ck_dir.join("self.safetensors")).expect("symlink");
        symlink(
            "/nonexistent/x.safetensors",
            ck_dir.join("dangling.safetensors"),
        )
        .expect("symlink");
        symlink(tree.path().join("output"), ck_dir.join("dir.safetensors")).expect("symlink");
        let listed = tree.folders().list("checkpoints");
        assert!(
            listed.len() < 50,
            "listing did not stop at the loops: {}",
            listed.len()
        );
        for name in [
            "self.safetensors",
            "dangling.safetensors",
            "dir.safetensors",
        ] {
            assert!(!listed.iter().any(|l| l.ends_with(name)), "{name} listed");
            let error = fail(&tree, &merge_prompt(name), name);
            check(name, name, &error);
        }
    }

    eprintln!(
        "{checked} broken files: each refused with an error naming it, or (a workflow with one bad part) loaded with its problems listed"
    );
    assert!(checked >= 200, "only {checked} variants");
}
