//! `amalgam samples` and `amalgam inspect` on real files: every architecture the detector knows,
//! every container, and every kind of broken input.

use std::collections::HashMap;

use crate::util::*;
use amalgam::format::DType;
use amalgam::model::layouts::{Layout, Scale, TextEncoder, UnetConfig};

const P: &str = "model.diffusion_model.";

#[test]
fn samples_then_inspect_report_the_right_architecture() {
    let base = tempdir();
    let out = run(&["--base-dir", path_str(base.path()), "samples"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let dir = base.path().join("models/checkpoints");
    for (file, arch, model, clip, vae) in [
        ("sample-sd15-a.safetensors", "sd1", 686, 197, 248),
        ("sample-sd15-b.safetensors", "sd1", 686, 197, 248),
        ("sample-sdxl-a.safetensors", "sdxl", 1680, 587, 248),
        ("sample-sdxl-b.safetensors", "sdxl", 1680, 587, 248),
        // Wide enough for the image nodes (a 2-layer CLIP): the text-to-image example's pair.
        ("sample-sd15-small-a.safetensors", "sd1", 686, 37, 248),
        ("sample-sd15-small-b.safetensors", "sd1", 686, 37, 248),
    ] {
        let path = dir.join(file);
        let size = std::fs::metadata(&path).expect("sample written").len();
        let limit = if file.contains("small") {
            130_000_000
        } else {
            40_000_000
        };
        assert!(size < limit, "{file} is {size} bytes");
        let j = inspect_json(&path);
        assert_eq!(j["architecture"], arch, "{file}");
        assert_eq!(j["prediction"], "eps", "{file}");
        assert_eq!(j["components"]["model"]["tensors"], model, "{file}");
        assert_eq!(j["components"]["clip"]["tensors"], clip, "{file}");
        assert_eq!(j["components"]["vae"]["tensors"], vae, "{file}");
        assert_eq!(j["components"]["other"]["tensors"], 0, "{file}");
        // clip_l's position_ids are int64 in both families, everything else fp16.
        assert_eq!(j["dtypes"]["I64"], 1, "{file}");
        assert_eq!(j["dtypes"]["F16"], model + clip + vae - 1, "{file}");
        assert_eq!(j["has_workflow"], false);
    }
    // The two SD1.5 samples differ (different seeds) but have identical layouts.
    let a = std::fs::read(dir.join("sample-sd15-a.safetensors")).expect("a");
    let b = std::fs::read(dir.join("sample-sd15-b.safetensors")).expect("b");
    assert_eq!(a.len(), b.len());
    assert_ne!(a, b);

    // Running again keeps every existing file untouched.
    std::fs::write(dir.join("sample-sd15-a.safetensors"), b"user data").expect("write");
    let again = run(&["--base-dir", path_str(base.path()), "samples"]);
    assert!(again.status.success());
    assert!(stdout(&again).contains("already exists"));
    assert_eq!(
        std::fs::read(dir.join("sample-sd15-a.safetensors")).expect("read"),
        b"user data"
    );
}

fn unet(context_dim: usize, adm: Option<usize>, in_channels: usize, linear: bool) -> UnetConfig {
    UnetConfig {
        model_channels: 8,
        channel_mult: vec![1, 2, 4, 4],
        num_res_blocks: 2,
        transformer_depth: vec![1, 1, 1, 0],
        middle_depth: 1,
        context_dim,
        adm_in_channels: adm,
        linear_proj: linear,
        in_channels,
    }
}

fn open_clip(prefix: &str) -> TextEncoder {
    TextEncoder::OpenClip {
        prefix: prefix.into(),
        width: 16,
        layers: 2,
        mlp: 64,
        vocab: 32,
    }
}

fn layout(arch_unet: UnetConfig, text: Vec<TextEncoder>) -> Layout {
    let mut l = Layout::sd15(Scale::Sample);
    l.unet = arch_unet;
    l.text = text;
    l
}

#[test]
fn detects_every_unet_family_and_variant() {
    let dir = tempdir();
    let sd2_text = vec![open_clip("cond_stage_model.model.")];
    let cases: Vec<(&str, Layout, &str, Option<&str>)> = vec![
        ("sd1.safetensors", Layout::sd15(Scale::Sample), "sd1", None),
        (
            "sd1-inpaint.safetensors",
            layout(unet(768, None, 9, false), vec![]),
            "sd1",
            Some("inpaint"),
        ),
        (
            "sd1-p2p.safetensors",
            layout(unet(768, None, 8, false), vec![]),
            "sd1",
            Some("instructpix2pix"),
        ),
        (
            "sd2.safetensors",
            layout(unet(1024, None, 4, true), sd2_text.clone()),
            "sd2",
            None,
        ),
        (
            "sd2-unclip.safetensors",
            layout(unet(1024, Some(1536), 4, true), sd2_text),
            "sd2",
            Some("unclip"),
        ),
        (
            "sdxl.safetensors",
            Layout::sdxl(Scale::Sample),
            "sdxl",
            None,
        ),
        (
            "refiner.safetensors",
            layout(
                UnetConfig {
                    transformer_depth: vec![0, 4, 4, 0],
                    middle_depth: 4,
                    ..unet(1280, Some(2560), 4, true)
                },
                vec![open_clip("conditioner.embedders.0.model.")],
            ),
            "sdxl_refiner",
            None,
        ),
        (
            "odd-unet.safetensors",
            layout(unet(512, None, 4, false), vec![]),
            "unknown",
            None,
        ),
    ];
    for (file, l, arch, variant) in cases {
        let path = dir.path().join(file);
        write_layout(&path, &l, 7, &[]);
        let j = inspect_json(&path);
        assert_eq!(j["architecture"], arch, "{file}");
        assert_eq!(j["variant"].as_str(), variant, "{file}");
    }
}

#[test]
fn sd2_prediction_follows_comfyuis_bias_spread_rule() {
    let dir = tempdir();
    let l = layout(unet(1024, None, 4, true), vec![]);
    let key = format!("{P}output_blocks.11.1.transformer_blocks.0.norm1.bias");
    let specs = l.tensors();
    let n = specs
        .iter()
        .find(|s| s.name == key)
        .expect("bias exists")
        .shape[0];
    // Alternating ±0.2: standard deviation 0.2 > 0.09, so ComfyUI calls it v-prediction.
    let wide: Vec<u8> = (0..n)
        .flat_map(|i| half::f16::from_f32(if i % 2 == 0 { 0.2 } else { -0.2 }).to_le_bytes())
        .collect();
    let v = dir.path().join("sd2-v.safetensors");
    write_safetensors(&v, &specs, 1, &HashMap::from([(key, wide)]), &[]);
    assert_eq!(inspect_json(&v)["prediction"], "v");
    let eps = dir.path().join("sd2-eps.safetensors");
    write_safetensors(&eps, &specs, 1, &HashMap::new(), &[]);
    assert_eq!(inspect_json(&eps)["prediction"], "eps");
}

#[test]
fn detects_sd3_and_flux_from_signature_keys() {
    let dir = tempdir();
    let f16 = DType::F16;
    let sd3 = [
        spec(
            &format!("{P}joint_blocks.0.context_block.attn.qkv.weight"),
            f16,
            &[48, 16],
        ),
        spec(&format!("{P}x_embedder.proj.weight"), f16, &[16, 16, 2, 2]),
        spec(
            "text_encoders.clip_l.transformer.text_model.final_layer_norm.weight",
            f16,
            &[8],
        ),
    ];
    let path = dir.path().join("sd3.safetensors");
    write_safetensors(&path, &sd3, 1, &HashMap::new(), &[]);
    let j = inspect_json(&path);
    assert_eq!(
        (j["architecture"].as_str(), j["prediction"].as_str()),
        (Some("sd3"), Some("flow"))
    );
    assert_eq!(j["in_channels"], 16);
    assert_eq!(j["components"]["clip"]["tensors"], 1);

    let flux = |img_in: usize, guidance: bool| {
        let mut v = vec![
            spec(
                &format!("{P}double_blocks.0.img_attn.norm.key_norm.scale"),
                f16,
                &[8],
            ),
            spec(&format!("{P}img_in.weight"), f16, &[16, img_in]),
            spec("vae.decoder.conv_in.weight", f16, &[8, 16, 3, 3]),
        ];
        if guidance {
            v.push(spec(
                &format!("{P}guidance_in.in_layer.weight"),
                f16,
                &[16, 8],
            ));
        }
        v
    };
    for (file, specs, variant) in [
        ("flux-dev.safetensors", flux(64, true), "dev"),
        ("flux-schnell.safetensors", flux(64, false), "schnell"),
        ("flux-fill.safetensors", flux(384, true), "fill"),
    ] {
        let path = dir.path().join(file);
        write_safetensors(&path, &specs, 1, &HashMap::new(), &[]);
        let j = inspect_json(&path);
        assert_eq!(j["architecture"], "flux", "{file}");
        assert_eq!(j["variant"], variant, "{file}");
        assert_eq!(j["components"]["vae"]["tensors"], 1, "{file}");
    }

    // A bare diffusion model (no prefix) is recognised and every key counts as MODEL.
    let bare = [
        spec("double_blocks.0.img_attn.norm.key_norm.scale", f16, &[8]),
        spec("img_in.weight", f16, &[16, 64]),
        spec("final_layer.linear.weight", f16, &[4, 16]),
    ];
    let path = dir.path().join("flux-unet-only.safetensors");
    write_safetensors(&path, &bare, 1, &HashMap::new(), &[]);
    let j = inspect_json(&path);
    assert_eq!(j["architecture"], "flux");
    assert_eq!(j["unet_prefix"], "");
    assert_eq!(j["components"]["model"]["tensors"], 3);
}

#[test]
fn prediction_markers_and_metadata_are_reported() {
    let dir = tempdir();
    let base = Layout::sdxl(Scale::Sample);
    let marker = |n: &str| spec(n, DType::F32, &[0]);
    let scalar = |n: &str| spec(n, DType::F32, &[]);
    for (file, extra, prediction, zsnr) in [
        ("v.safetensors", vec![marker("v_pred")], "v", false),
        (
            "vz.safetensors",
            vec![marker("v_pred"), marker("ztsnr")],
            "v",
            true,
        ),
        (
            "cosxl.safetensors",
            vec![scalar("edm_vpred.sigma_max"), scalar("edm_vpred.sigma_min")],
            "edm_v",
            false,
        ),
        (
            "pg.safetensors",
            vec![
                spec("edm_mean", DType::F32, &[1, 4, 1, 1]),
                spec("edm_std", DType::F32, &[1, 4, 1, 1]),
            ],
            "edm",
            false,
        ),
    ] {
        let path = dir.path().join(file);
        write_layout(&path, &base, 1, &extra);
        let j = inspect_json(&path);
        assert_eq!(j["prediction"], prediction, "{file}");
        assert_eq!(j["zsnr"], zsnr, "{file}");
        assert_eq!(j["components"]["other"]["tensors"], extra.len(), "{file}");
    }

    let mut specs = Layout::sd15(Scale::Sample).tensors();
    specs.push(spec("alphas_cumprod", DType::F32, &[1000]));
    let path = dir.path().join("with-meta.safetensors");
    let workflow = r#"{"nodes": [], "links": []}"#;
    write_safetensors(
        &path,
        &specs,
        1,
        &HashMap::new(),
        &[
            ("modelspec.predict_key", "epsilon"),
            ("workflow", workflow),
            ("prompt", "{}"),
        ],
    );
    let j = inspect_json(&path);
    assert_eq!(j["has_workflow"], true);
    assert_eq!(j["metadata"]["modelspec.predict_key"], "epsilon");
    assert_eq!(
        j["metadata"]["workflow"],
        format!("({} characters)", workflow.len())
    );
    assert_eq!(j["components"]["other"]["tensors"], 1);
    assert_eq!(j["dtypes"]["F32"], 1);
    // The text report says the same.
    let text = stdout(&run(&["inspect", path_str(&path)]));
    assert!(text.contains("architecture  sd1"), "{text}");
    assert!(text.contains("workflow      embedded"), "{text}");
}

#[test]
fn pytorch_checkpoints_are_read_and_detected() {
    let dir = tempdir();
    let l = Layout::sd15(Scale::Sample);
    let specs = l.tensors();
    let zip = dir.path().join("v1-5-pruned-emaonly.ckpt");
    let legacy = dir.path().join("old.pth");
    write_torch(&specs, 5, Some(&zip), Some(&legacy));
    let st = dir.path().join("same.safetensors");
    write_safetensors(&st, &specs, 5, &HashMap::new(), &[]);
    for (path, container) in [
        (&zip, "pytorch-zip"),
        (&legacy, "pytorch-legacy"),
        (&st, "safetensors"),
    ] {
        let j = inspect_json(path);
        assert_eq!(j["container"], container);
        assert_eq!(j["architecture"], "sd1");
        assert_eq!(j["tensors"], 1131);
        assert_eq!(j["components"]["model"]["tensors"], 686);
    }
    // Same tensors, same bytes, whatever the container.
    let a = amalgam::format::TensorFile::open(&zip).expect("zip");
    let b = amalgam::format::TensorFile::open(&st).expect("st");
    for t in a.tensors() {
        let u = b.get(&t.name).expect("same keys");
        assert_eq!((t.dtype, &t.shape), (u.dtype, &u.shape));
        assert_eq!(a.bytes(t), b.bytes(u), "{}", t.name);
    }
}

/// Each broken file: one clear error naming the file, non-zero exit, no panic.
#[test]
fn bad_input_gets_one_clear_error_naming_the_file() {
    let dir = tempdir();
    let d = dir.path();
    let good = raw_safetensors(
        r#"{"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}"#,
        4,
    );
    let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.safetensors", vec![], "empty"),
        (
            "truncated.safetensors",
            good[..good.len() - 2].to_vec(),
            "data",
        ),
        ("short.safetensors", vec![5, 0, 0], "too short"),
        (
            "past-eof.safetensors",
            {
                let mut v = 500u64.to_le_bytes().to_vec();
                v.extend_from_slice(b"{}");
                v
            },
            "past the end",
        ),
        (
            "huge-header.safetensors",
            {
                let mut v = (1u64 << 39).to_le_bytes().to_vec();
                v.extend_from_slice(b"{}");
                v
            },
            "limit",
        ),
        (
            "not-json.safetensors",
            raw_safetensors("{this is not json}", 0),
            "not valid JSON",
        ),
        (
            "overlap.safetensors",
            raw_safetensors(
                r#"{"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"b":{"dtype":"F16","shape":[2],"data_offsets":[2,6]}}"#,
                6,
            ),
            "gap or overlap",
        ),
        (
            "gap.safetensors",
            raw_safetensors(
                r#"{"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"b":{"dtype":"F16","shape":[2],"data_offsets":[6,10]}}"#,
                10,
            ),
            "gap or overlap",
        ),
        (
            "shape-size.safetensors",
            raw_safetensors(
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#,
                4,
            ),
            "needs 8 bytes",
        ),
        (
            "duplicate.safetensors",
            raw_safetensors(
                r#"{"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"a":{"dtype":"F16","shape":[2],"data_offsets":[4,8]}}"#,
                8,
            ),
            "more than once",
        ),
        (
            "random.ckpt",
            (0..200u8).map(|i| i.wrapping_mul(97)).collect(),
            "",
        ),
        (
            "text.safetensors",
            b"hello, I am not a model at all".to_vec(),
            "",
        ),
    ];
    let evil_pkl = b"\x80\x02cbuiltins\neval\nX\x04\x00\x00\x001+1\x85R.".to_vec();
    cases.push(("pickle.pt", evil_pkl, "builtins.eval"));
    for (name, bytes, expect) in &cases {
        let path = d.join(name);
        std::fs::write(&path, bytes).expect("write");
        let out = run(&["inspect", path_str(&path)]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{name} was accepted");
        assert!(!err.contains("panicked"), "{name}: {err}");
        assert!(
            err.contains(name),
            "{name}: error does not name the file: {err}"
        );
        assert!(err.contains(expect), "{name}: expected {expect:?} in {err}");
        assert_eq!(err.trim().lines().count(), 1, "{name}: one line: {err}");
    }

    // A directory, a missing file, and a file that cannot be read (a socket: even root cannot
    // open it for reading).
    let sub = d.join("a-folder.safetensors");
    std::fs::create_dir(&sub).expect("mkdir");
    let sock = d.join("socket.safetensors");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    for (path, expect) in [
        (sub, "directory"),
        (d.join("missing.safetensors"), "no such file"),
        (sock, "cannot read"),
    ] {
        let out = run(&["inspect", path_str(&path)]);
        let err = stderr(&out);
        assert!(!out.status.success());
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            err.contains(path_str(&path)) && err.contains(expect),
            "{err}"
        );
    }
}

#[test]
fn version_names_the_revision_and_date() {
    let out = run(&["--version"]);
    let v = stdout(&out);
    assert!(out.status.success());
    assert!(
        v.starts_with(&format!("amalgam {}", env!("CARGO_PKG_VERSION"))),
        "{v}"
    );
    assert!(v.contains("built 20"), "{v}");
    // Help lists every subcommand (without one, the binary opens the window: see tests/gui.rs).
    let out = run(&["--help"]);
    assert!(out.status.success());
    for cmd in ["inspect", "validate", "run", "samples"] {
        assert!(stdout(&out).contains(cmd), "{cmd} missing from --help");
    }
}
