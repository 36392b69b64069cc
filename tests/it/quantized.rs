//! Scaled and quantised checkpoints (ComfyUI's scaled fp8: weights stored as fp8 beside a
//! per-tensor scale): refused by file and key, never merged or run as raw values.

use amalgam::format::DType;
use amalgam::model::layouts::{Layout, Scale};
use serde_json::json;

use crate::util::*;

#[test]
fn a_scaled_fp8_checkpoint_is_refused_by_key_and_nothing_is_written() {
    for marker in [
        spec("model.diffusion_model.scaled_fp8", DType::F8E4M3, &[0]),
        spec("model.diffusion_model.out.2.scale_weight", DType::F32, &[]),
        spec("model.diffusion_model.out.2.weight_scale", DType::F32, &[]),
        spec("model.diffusion_model.out.2.comfy_quant", DType::U8, &[8]),
    ] {
        let tree = ModelTree::new();
        tree.checkpoint("plain.safetensors", &Layout::sd15(Scale::Sample), 1);
        let scaled = tree.models("checkpoints").join("scaled.safetensors");
        write_layout(
            &scaled,
            &Layout::sd15(Scale::Sample),
            2,
            std::slice::from_ref(&marker),
        );
        let prompt = json!({
            "1": loader("plain.safetensors"),
            "2": loader("scaled.safetensors"),
            "3": {"class_type": "ModelMergeSimple", "inputs": {"model1": ["1", 0], "model2": ["2", 0], "ratio": 0.5}},
            "4": save(("3", 0), ("1", 1), ("1", 2), "merged"),
        });
        let file = tree.path().join("p.json");
        std::fs::write(&file, serde_json::to_vec(&prompt).expect("json")).expect("write");
        let out = run(&["--base-dir", path_str(tree.path()), "run", path_str(&file)]);
        assert!(!out.status.success(), "{}: merged", marker.name);
        let err = stderr(&out);
        assert!(
            err.contains("node #2")
                && err.contains("scaled.safetensors")
                && err.contains(&marker.name)
                && err.contains("does not dequantise"),
            "{err}"
        );
        assert!(files_under(&tree.output()).is_empty(), "nothing written");
    }
}
