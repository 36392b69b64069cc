//! The app's image views, driven frame by frame like `gui`: a queued text-to-image graph's
//! image on its SaveImage node and in the gallery, the viewer, `control_after_generate`, a ratio
//! sweep and its grid, and cancelling in the middle of a step.

use std::path::{Path, PathBuf};

use amalgam::format::raster::Raster;
use amalgam::graph::examples::text_to_image;
use amalgam::model::samples::RUNNABLE_SAMPLES;
use amalgam::ui::jobs::JobState;
use amalgam::ui::sweep::CellState;
use egui::{Event, Modifiers, PointerButton};
use serde_json::json;

use crate::gui::Harness;
use crate::util::*;

/// The app on a base folder with the sample checkpoints (the runnable pair too) and `doc` open.
fn harness_with(doc: &amalgam::graph::Document) -> Harness {
    let mut h = Harness::prepared(false, None, |base| {
        let out = run(&["--base-dir", path_str(base), "samples"]);
        assert!(out.status.success(), "{}", stderr(&out));
    });
    let wf = h.base.path().join("t2i.json");
    std::fs::write(&wf, serde_json::to_vec(&doc.to_json()).expect("json")).expect("write");
    h.drop_file(&wf);
    let n = doc.nodes.len();
    h.wait_for("the workflow and the model lists", |a| {
        a.document.doc.nodes.len() == n && !a.canvas.state.models.is_empty()
    });
    h
}

fn sample_doc() -> amalgam::graph::Document {
    text_to_image(RUNNABLE_SAMPLES[0], RUNNABLE_SAMPLES[1])
}

fn node_of(doc: &amalgam::graph::Document, class: &str) -> i64 {
    doc.first_of_type(class)
        .unwrap_or_else(|| panic!("a {class} node"))
}

/// Every PNG (and leftover temporary file) below `dir`.
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn job_ended(a: &amalgam::ui::app::AmalgamApp) -> bool {
    a.jobs.last().is_some_and(|j| !j.state.is_active())
}

#[test]
fn a_queued_image_shows_on_its_node_in_the_gallery_and_in_the_viewer() {
    let mut doc = sample_doc();
    let sampler = node_of(&doc, "KSampler");
    let save = node_of(&doc, "SaveImage");
    // Seeds move after Queue, as in ComfyUI: the job keeps 42, the document gets 43.
    doc.node_mut(sampler)
        .expect("sampler")
        .set_widget_value(1, json!("increment"));
    let mut h = harness_with(&doc);
    h.click("Queue");
    let mut live = 0;
    h.wait_for("the image job", |a| {
        if a.canvas.state.results.live.contains_key(&sampler) {
            live += 1;
        }
        job_ended(a)
    });
    assert_eq!(h.app.jobs[0].state, JobState::Done, "{:?}", h.app.log);
    assert!(
        live > 0,
        "the sampler node showed a live preview while it ran"
    );
    assert!(
        h.app.canvas.state.results.live.is_empty(),
        "and not after the job"
    );
    // The pace of those steps gives the graph's estimate next to Queue, in proportion to steps.
    h.frames(2);
    assert!(
        h.tree.iter().any(|(n, _)| n.starts_with("≈ ")),
        "estimate shown"
    );
    let doc_now = h.app.document.doc.clone();
    let once = h.app.results.estimate(&doc_now, true).expect("an estimate");
    let mut longer = doc_now.clone();
    longer
        .node_mut(sampler)
        .expect("k")
        .set_widget_value(2, json!(16));
    let twice = h.app.results.estimate(&longer, true).expect("estimate");
    assert!(
        once > 0.0 && (twice / once - 2.0).abs() < 1e-9,
        "{once} {twice}"
    );
    let seed = |a: &amalgam::ui::app::AmalgamApp| {
        a.document.doc.node(sampler).expect("k").widget_values()[0].clone()
    };
    assert_eq!(seed(&h.app), json!(43), "incremented after Queue");

    // The image is on the SaveImage node once decoded.
    h.wait_for("the node's image", |a| {
        a.canvas
            .state
            .results
            .images
            .get(&save)
            .is_some_and(|i| i.texture.is_some())
    });
    let path = h.app.canvas.state.results.images[&save].paths[0].clone();
    assert_eq!(path, h.output("merge_00001_.png"));
    let png = std::fs::read(&path).expect("saved png");
    let r = Raster::decode_png(&png).expect("decodes");
    assert_eq!((r.width, r.height), (64, 64));
    let prompt = amalgam::format::png::text_chunks(&png).expect("text");
    let prompt: serde_json::Value = serde_json::from_str(
        amalgam::format::png::find_text(&prompt, "prompt").expect("prompt chunk"),
    )
    .expect("json");
    assert_eq!(
        prompt[sampler.to_string()]["inputs"]["seed"],
        json!(42),
        "queued with 42"
    );
    h.frames(2);
    assert!(h.has_label("merge_00001_.png"), "named under the image");

    // The gallery lists it with its size, and its thumbnail opens the viewer.
    h.click("Outputs");
    h.wait_for("the gallery's entry and thumbnail", |a| {
        a.outputs.iter().any(|e| e.path == path) && !a.results.pictures.loading()
    });
    assert!(h.has_label("64 × 64"), "size shown");
    h.click("Images");
    h.click("View");
    assert_eq!(
        h.app.results.viewer.as_ref().map(|v| v.images.clone()),
        Some(vec![path.clone()])
    );
    h.wait_for("the full picture", |a| !a.results.pictures.loading());
    h.click("100 %");
    assert_eq!(
        h.app.results.viewer.as_ref().and_then(|v| v.zoom),
        Some(1.0)
    );
    // The image's own workflow comes back from its PNG (the seed it was queued with).
    h.click("Open its workflow");
    h.wait_for("the image's workflow", |a| seed(a) == json!(42));
    assert_eq!(h.app.document.doc.nodes.len(), doc.nodes.len());
    // Deleted from the gallery: the file, its entry and the pictures held of it are gone.
    h.app.results.viewer = None;
    let entry = h.find("Delete");
    h.click_at(entry.center());
    assert_eq!(
        h.app.modals.confirm_delete,
        Some(path.clone()),
        "asks first"
    );
    let confirm = h
        .tree
        .iter()
        .filter(|(n, r)| n == "Delete" && r.is_some_and(|r| r != entry))
        .filter_map(|(_, r)| *r)
        .next()
        .expect("the confirmation's Delete");
    h.click_at(confirm.center());
    h.wait_for("the delete", |a| {
        !path.exists() && !a.results.pictures.knows(&path)
    });
    h.wait_for("the rescan", |a| a.outputs.iter().all(|e| e.path != path));
}

#[test]
fn a_sweep_over_the_merge_ratio_fills_a_labelled_grid_that_saves_as_one_png() {
    let doc = sample_doc();
    let merge = node_of(&doc, "ModelMergeSimple");
    let mut h = harness_with(&doc);
    h.frames(2);
    // Right-click the ratio slider (right of its label) ▸ Sweep….
    let label = h.find("ratio");
    let at = label.right_center() + egui::vec2(40.0, 0.0);
    h.frame_with(vec![Event::PointerMoved(at)], Vec::new());
    let button = |pressed| Event::PointerButton {
        pos: at,
        button: PointerButton::Secondary,
        pressed,
        modifiers: Modifiers::NONE,
    };
    h.frame_with(vec![button(true)], Vec::new());
    h.frame_with(vec![button(false)], Vec::new());
    h.frames(1);
    assert!(
        h.app.canvas.editor.node_finder.is_none(),
        "the widget's menu, not the node finder"
    );
    let ratio = |h: &Harness| {
        h.app
            .document
            .doc
            .node(merge)
            .expect("merge")
            .widget_values()[0]
            .clone()
    };
    assert_eq!(
        ratio(&h),
        json!(0.5),
        "a right-click does not move the slider"
    );
    h.click("Sweep…");
    h.frames(1);
    let setup = h.app.results.sweep_setup.clone().expect("the sweep set-up");
    assert_eq!(
        (setup.axes[0].node, setup.axes[0].name.as_str()),
        (merge, "ratio")
    );
    assert_eq!(setup.axes[0].values(), [0.0, 0.5, 1.0]);
    h.click("Queue 3 jobs");
    assert_eq!(h.app.jobs.len(), 3);
    h.wait_for("the three cells", |a| {
        a.results.sweeps[0]
            .cells
            .iter()
            .all(|c| c.state != CellState::Queued)
            && !a.results.pictures.loading()
    });
    let sweep = h.app.results.sweeps[0].clone();
    assert!(
        sweep.cells.iter().all(|c| c.state == CellState::Done),
        "{:?}",
        sweep.cells.iter().map(|c| &c.state).collect::<Vec<_>>()
    );
    h.frames(2);
    for l in ["ratio = 0", "ratio = 0.5", "ratio = 1"] {
        assert!(h.tree.iter().any(|(n, _)| n == l), "cell labelled {l}");
    }
    // Different ratios, different pictures.
    let pixels: Vec<Vec<u8>> = sweep
        .cells
        .iter()
        .map(|c| {
            Raster::decode_png(&std::fs::read(c.image.as_ref().expect("image")).expect("read"))
                .expect("png")
                .rgba
        })
        .collect();
    assert_ne!(pixels[0], pixels[2]);

    h.click("Save grid as PNG");
    h.wait_for("the grid file", |a| {
        a.log.iter().any(|e| e.text.starts_with("saved sweep grid"))
    });
    let grid = files_below(&h.output("sweeps"));
    assert_eq!(grid.len(), 1, "{grid:?}");
    let r = Raster::decode_png(&std::fs::read(&grid[0]).expect("read")).expect("png");
    assert!(
        r.width > 3 * 64 && r.height > 64,
        "{} × {}",
        r.width,
        r.height
    );

    // Two of the images compared in the viewer: under a slider, then side by side.
    h.click("Outputs");
    h.wait_for("the gallery", |a| {
        a.outputs.iter().filter(|e| e.image.is_some()).count() >= 4
    });
    h.click("Images");
    let ticks: Vec<egui::Rect> = h
        .tree
        .iter()
        .filter(|(n, r)| n == "compare" && r.is_some())
        .filter_map(|(_, r)| *r)
        .take(2)
        .collect();
    assert_eq!(ticks.len(), 2, "a compare tick per image");
    for r in ticks {
        h.click_at(r.center());
    }
    h.click("Compare the two picked files");
    // The window settles its size once both pictures are decoded.
    h.wait_for("both pictures", |a| !a.results.pictures.loading());
    h.frames(3);
    let viewer = h.app.results.viewer.clone().expect("the viewer");
    assert_eq!(viewer.images.len(), 2);
    assert_eq!(viewer.layout, amalgam::ui::viewer::Layout::Slider);
    h.click("Side by side");
    assert_eq!(
        h.app.results.viewer.as_ref().map(|v| v.layout),
        Some(amalgam::ui::viewer::Layout::SideBySide)
    );
    h.app.results.viewer = None;
    h.click("Queue panel");

    // A cell opens its value's workflow.
    let rect = h
        .tree
        .iter()
        .filter(|(n, r)| n == "ratio = 1" && r.is_some())
        .filter_map(|(_, r)| *r)
        .next()
        .expect("the last cell's label");
    h.click_at(rect.center() - egui::vec2(0.0, 60.0));
    h.frames(2);
    assert_eq!(ratio(&h), json!(1.0), "the cell's workflow is open");
}

#[test]
fn cancelling_in_the_middle_of_a_step_leaves_no_file_and_the_app_usable() {
    let mut doc = sample_doc();
    let sampler = node_of(&doc, "KSampler");
    doc.node_mut(sampler)
        .expect("sampler")
        .set_widget_value(2, json!(1000));
    let mut h = harness_with(&doc);
    h.click("Queue");
    h.wait_for("the first steps", |a| {
        a.jobs[0].step.as_ref().is_some_and(|s| s.step >= 2)
    });
    h.click("Cancel");
    h.wait_for("the cancel", job_ended);
    assert_eq!(h.app.jobs[0].state, JobState::Cancelled);
    let left = files_below(&h.base.path().join("output"));
    assert!(left.is_empty(), "nothing written: {left:?}");
    // Still usable: the normal graph runs to its image.
    let wf = h.base.path().join("again.json");
    std::fs::write(
        &wf,
        serde_json::to_vec(&sample_doc().to_json()).expect("json"),
    )
    .expect("write");
    h.drop_file(&wf);
    h.wait_for("the graph", |a| {
        a.document
            .doc
            .node(sampler)
            .is_some_and(|n| n.widget_values()[2] == json!(8))
    });
    h.click("Queue");
    h.wait_for("the second job", job_ended);
    assert_eq!(h.app.jobs[1].state, JobState::Done);
    assert!(h.output("merge_00001_.png").is_file());
}
