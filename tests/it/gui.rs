//! The real app, driven frame by frame on an `egui::Context` with synthetic input (no window):
//! files dropped, buttons found by their label in the AccessKit tree and clicked, keys pressed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::util::*;
use amalgam::graph::Mode;
use amalgam::ui::app::{AmalgamApp, SideTab};
use amalgam::ui::files::{DialogRequest, Dialogs};
use amalgam::ui::jobs::JobState;
use amalgam::ui::settings::Settings;
use egui::{Event, Key, Modifiers, PointerButton, Pos2, RawInput, Rect, Vec2};

/// Dialog answers fixed by the test.
pub(crate) struct FixedDialogs(Option<PathBuf>);

impl Dialogs for FixedDialogs {
    fn ask(&self, _: &DialogRequest) -> crossbeam_channel::Receiver<Option<PathBuf>> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let _ = tx.send(self.0.clone());
        rx
    }
}

pub(crate) struct Harness {
    pub(crate) ctx: egui::Context,
    pub(crate) app: AmalgamApp,
    time: f64,
    pub(crate) tree: Vec<(String, Option<Rect>)>,
    pub(crate) base: tempfile::TempDir,
}

const SCREEN: Vec2 = Vec2::new(1400.0, 900.0);
const CTRL: Modifiers = Modifiers {
    alt: false,
    ctrl: true,
    shift: false,
    mac_cmd: false,
    command: true,
};

impl Harness {
    pub(crate) fn new(with_samples: bool, dialog_answer: Option<PathBuf>) -> Harness {
        Harness::prepared(with_samples, dialog_answer, |_| {})
    }

    /// Like `new`, with `prepare` run on the base folder before the app starts.
    pub(crate) fn prepared(
        with_samples: bool,
        dialog_answer: Option<PathBuf>,
        prepare: impl FnOnce(&Path),
    ) -> Harness {
        let base = tempdir();
        if with_samples {
            let out = run(&[
                "--base-dir",
                path_str(base.path()),
                "samples",
                "--no-runnable",
            ]);
            assert!(out.status.success(), "{}", stderr(&out));
        }
        prepare(base.path());
        let settings = Settings::new(base.path().to_owned());
        let app = AmalgamApp::new(settings, None, Box::new(FixedDialogs(dialog_answer)), || {})
            .expect("app starts");
        let ctx = egui::Context::default();
        ctx.enable_accesskit();
        let mut h = Harness {
            ctx,
            app,
            time: 0.0,
            tree: Vec::new(),
            base,
        };
        h.frames(3);
        h
    }

    pub(crate) fn frame_with(&mut self, events: Vec<Event>, dropped: Vec<egui::DroppedFile>) {
        self.time += 1.0 / 60.0;
        let input = RawInput {
            screen_rect: Some(Rect::from_min_size(Pos2::ZERO, SCREEN)),
            time: Some(self.time),
            events,
            dropped_files: dropped,
            focused: true,
            ..Default::default()
        };
        let app = &mut self.app;
        let out = self.ctx.run(input, |ctx| app.ui(ctx));
        if let Some(update) = out.platform_output.accesskit_update {
            self.tree = update
                .nodes
                .iter()
                .filter_map(|(_, n)| {
                    // Buttons and labels carry a name; combo boxes and text fields a value.
                    let name = n.name().or_else(|| n.value())?.to_owned();
                    let r = n.bounds().map(|b| {
                        Rect::from_min_max(
                            Pos2::new(b.x0 as f32, b.y0 as f32),
                            Pos2::new(b.x1 as f32, b.y1 as f32),
                        )
                    });
                    Some((name, r))
                })
                .collect();
        }
    }

    pub(crate) fn frames(&mut self, n: usize) {
        for _ in 0..n {
            self.frame_with(Vec::new(), Vec::new());
        }
    }

    /// Runs frames until `done` holds (background threads need real time), or fails.
    pub(crate) fn wait_for(&mut self, what: &str, mut done: impl FnMut(&AmalgamApp) -> bool) {
        let start = Instant::now();
        while !done(&self.app) {
            if start.elapsed() > Duration::from_secs(30) {
                let log: Vec<&str> = self.app.log.iter().map(|e| e.text.as_str()).collect();
                panic!("timed out waiting for {what}; app log: {log:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
            self.frames(1);
        }
        self.frames(2);
    }

    pub(crate) fn has_label(&self, text: &str) -> bool {
        self.tree.iter().any(|(n, _)| n.contains(text))
    }

    pub(crate) fn find(&self, label: &str) -> Rect {
        self.tree
            .iter()
            .find(|(n, r)| n == label && r.is_some())
            .and_then(|(_, r)| *r)
            .unwrap_or_else(|| {
                panic!(
                    "no widget labelled {label:?}; have: {:?}",
                    self.tree.iter().map(|t| &t.0).collect::<Vec<_>>()
                )
            })
    }

    pub(crate) fn click_at(&mut self, pos: Pos2) {
        self.frame_with(vec![Event::PointerMoved(pos)], Vec::new());
        let button = |pressed| Event::PointerButton {
            pos,
            button: PointerButton::Primary,
            pressed,
            modifiers: Modifiers::NONE,
        };
        self.frame_with(vec![button(true)], Vec::new());
        self.frame_with(vec![button(false)], Vec::new());
        self.frames(1);
    }

    pub(crate) fn click(&mut self, label: &str) {
        let r = self.find(label);
        self.click_at(r.center());
    }

    pub(crate) fn key(&mut self, key: Key, modifiers: Modifiers) {
        let ev = |pressed| Event::Key {
            key,
            physical_key: None,
            pressed,
            repeat: false,
            modifiers,
        };
        self.frame_with(vec![ev(true)], Vec::new());
        self.frame_with(vec![ev(false)], Vec::new());
    }

    pub(crate) fn drop_file(&mut self, path: &Path) {
        let file = egui::DroppedFile {
            path: Some(path.to_owned()),
            ..Default::default()
        };
        self.frame_with(Vec::new(), vec![file]);
    }

    pub(crate) fn output(&self, rel: &str) -> PathBuf {
        self.base.path().join("output").join(rel)
    }
}

fn shared_png() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/workflows/model_merging_basic.png")
}

#[test]
fn dropping_the_shared_png_shows_its_graph_and_undo_brings_the_old_one_back() {
    let mut h = Harness::new(true, None);
    assert_eq!(h.app.document.doc.nodes.len(), 5, "the default merge graph");
    h.drop_file(&shared_png());
    h.wait_for("the PNG to load", |a| a.document.doc.nodes.len() == 11);
    assert_eq!(h.app.document.doc.links.len(), 14);
    // Drawing a workflow never changes it: the loaded JSON is still exactly the file's.
    h.frames(10);
    let original = amalgam::graph::load::load_file(&shared_png())
        .expect("png")
        .document
        .to_json();
    assert_eq!(h.app.document.doc.to_json(), original);
    assert_eq!(
        h.app.canvas.editor.graph.nodes.len(),
        11,
        "every node is on the canvas, unknown ones too"
    );
    assert_eq!(h.app.canvas.editor.graph.iter_connections().count(), 14);
    // Values are shown: the merge ratio and the loader's file. Every node of the example is
    // registered now (the image half runs), so none is drawn as "kept, not run".
    assert!(
        !h.has_label("kept, not run"),
        "no unknown node in the example"
    );
    // egui does not expose a combo box's shown text to AccessKit: check the bound value.
    let loader = h.app.canvas.editor_id(4).expect("loader on the canvas");
    let shown = h.app.canvas.editor.graph[loader]
        .inputs
        .iter()
        .find(|(n, _)| n == "ckpt_name")
        .map(|(_, id)| h.app.canvas.editor.graph[*id].value.value.clone());
    assert_eq!(shown, Some(serde_json::json!("v1-5-pruned-emaonly.ckpt")));
    assert!(h.has_label("muted"), "the muted Save Checkpoint says so");
    h.key(Key::Z, CTRL);
    h.frames(2);
    assert_eq!(
        h.app.document.doc.nodes.len(),
        5,
        "undo restores the previous graph"
    );
    h.key(Key::Y, CTRL);
    h.frames(2);
    assert_eq!(h.app.document.doc.nodes.len(), 11, "redo");
}

#[test]
fn queue_button_runs_the_merge_and_the_panels_show_it() {
    let mut h = Harness::new(true, None);
    h.wait_for("the first folder scan", |a| {
        !a.canvas.state.models.is_empty()
    });
    h.click("Queue");
    h.wait_for("the job to finish", |a| {
        a.jobs
            .first()
            .is_some_and(|j| !matches!(j.state, JobState::Queued | JobState::Running))
    });
    assert_eq!(
        h.app.jobs[0].state,
        JobState::Done,
        "{:?}",
        h.app.jobs[0].state
    );
    let file = h.output("checkpoints/ComfyUI_00001_.safetensors");
    assert!(file.is_file());
    assert!(h.has_label("done"), "the queue panel shows the job done");
    assert!(h.has_label("1130/1130 tensors"));
    // The output browser lists the new file with its workflow.
    h.click("Outputs");
    assert_eq!(h.app.side_tab, SideTab::Outputs);
    h.wait_for("the output scan", |a| !a.outputs.is_empty());
    assert!(
        h.has_label("checkpoints/ComfyUI_00001_.safetensors"),
        "{:?}",
        h.tree
    );
    assert!(h.has_label("workflow embedded"));
    let (_, meta) = read_reference(&file);
    let embedded: serde_json::Value = serde_json::from_str(&meta["workflow"]).expect("workflow");
    assert_eq!(
        embedded,
        h.app.document.doc.to_json(),
        "the saved file carries the canvas's workflow"
    );
    // Queue again with nothing changed: no second file, the earlier one is reported.
    h.key(Key::Enter, CTRL);
    h.wait_for("the second job", |a| {
        a.jobs.len() == 2 && a.jobs[1].state == JobState::Done
    });
    assert!(h.app.jobs[1].outputs[0].cached);
    assert!(!h.output("checkpoints/ComfyUI_00002_.safetensors").exists());
    // Deleting from the output browser asks first, then removes the file and its entry.
    h.click("Outputs");
    h.click("Delete");
    assert!(h.has_label("This cannot be undone"), "{:?}", h.tree);
    assert!(file.is_file(), "nothing is deleted before the confirmation");
    let cancel = h.find("Cancel");
    let confirm = h
        .tree
        .iter()
        .filter_map(|(n, r)| {
            r.filter(|r| n == "Delete" && (r.center().y - cancel.center().y).abs() < 1.0)
        })
        .next()
        .expect("the dialog's Delete button");
    h.click_at(confirm.center());
    h.wait_for("the deleted file to leave the list", |a| {
        a.outputs.is_empty()
    });
    assert!(!file.exists());
    assert!(h.app.log.iter().any(|e| e.text.starts_with("deleted ")));
}

#[test]
fn an_invalid_graph_shows_the_error_on_its_node_and_queues_nothing() {
    let mut h = Harness::new(true, None);
    let loader = h
        .app
        .document
        .doc
        .nodes
        .iter()
        .find(|n| n.type_ == "CheckpointLoaderSimple")
        .map(|n| n.id)
        .expect("loader");
    h.app
        .document
        .doc
        .node_mut(loader)
        .expect("loader")
        .set_widget_value(0, serde_json::json!("missing.safetensors"));
    h.app.replace_document(h.app.document.doc.clone(), None);
    h.frames(2);
    h.click("Queue");
    h.frames(2);
    assert!(h.app.jobs.is_empty(), "nothing queued");
    let errors = h
        .app
        .canvas
        .state
        .errors
        .get(&loader)
        .expect("error on the loader node");
    assert!(errors[0].contains("Value not in list"), "{errors:?}");
    assert!(
        h.has_label("Value not in list: ckpt_name: 'missing.safetensors'"),
        "drawn on the node"
    );
    assert!(!h.output("checkpoints").exists());
}

/// Whether every node of the app's document has `mode`.
fn all_in_mode(h: &Harness, mode: Mode) -> bool {
    h.app.document.doc.nodes.iter().all(|n| n.mode == mode)
}

#[test]
fn mute_and_bypass_shortcuts_change_the_selected_nodes() {
    let mut h = Harness::new(true, None);
    h.key(Key::A, CTRL);
    h.key(Key::M, CTRL);
    assert!(all_in_mode(&h, Mode::Never), "Ctrl+M mutes the selection");
    h.key(Key::M, CTRL);
    assert!(all_in_mode(&h, Mode::Always), "and again unmutes");
    h.key(Key::B, CTRL);
    assert!(all_in_mode(&h, Mode::Bypass));
    h.key(Key::Z, CTRL);
    assert!(all_in_mode(&h, Mode::Always), "undo covers modes");
    h.key(Key::Delete, Modifiers::NONE);
    assert!(
        h.app.document.doc.nodes.is_empty(),
        "Delete removes the selection"
    );
    assert!(h.app.document.doc.links.is_empty());
}

#[test]
fn an_empty_models_folder_offers_samples_that_make_a_runnable_graph() {
    let mut h = Harness::new(false, None);
    h.wait_for("the first folder scan", |a| {
        a.canvas.state.models.contains_key("checkpoints")
    });
    h.click("Create sample checkpoints");
    h.wait_for("the samples", |a| {
        a.canvas
            .state
            .models
            .get("checkpoints")
            .is_some_and(|m| m.len() == 6)
    });
    assert!(
        !h.has_label("Create sample checkpoints"),
        "the banner goes away"
    );
    // The default graph now points at the samples and runs.
    h.click("Queue");
    h.wait_for("the job", |a| {
        a.jobs.first().is_some_and(|j| j.state == JobState::Done)
    });
    assert!(h.output("checkpoints/ComfyUI_00001_.safetensors").is_file());
}

#[test]
fn open_and_save_go_through_the_dialogs() {
    let dir = tempdir();
    let target = dir.path().join("saved.json");
    let mut h = Harness::new(true, Some(target.clone()));
    h.click("File");
    h.click("Save As…");
    h.frames(3);
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&target).expect("saved")).expect("json");
    assert_eq!(saved, h.app.document.doc.to_json());
    assert_eq!(h.app.document.path.as_deref(), Some(target.as_path()));
    // Re-opening the saved file gives the same graph.
    let before = h.app.document.doc.to_json();
    h.app
        .replace_document(amalgam::graph::Document::new(), None);
    h.key(Key::O, CTRL);
    h.wait_for("the reopened workflow", |a| a.document.doc.nodes.len() == 5);
    assert_eq!(h.app.document.doc.to_json(), before);
}

#[test]
fn the_app_removes_what_a_killed_save_left_when_it_starts() {
    // A killed save leaves its unlocked temporary file; a running save holds a lock on its own.
    let leftover = std::cell::RefCell::new(PathBuf::new());
    let h = Harness::prepared(true, None, |base| {
        let dir = base.join("output/checkpoints");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let p = dir.join(".amalgam-partial-killed.tmp");
        let f = std::fs::File::create(&p).expect("create");
        std::io::Write::write_all(&mut &f, b"half a checkpoint").expect("write");
        f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(60))
            .expect("backdate");
        *leftover.borrow_mut() = p;
    });
    assert!(!leftover.borrow().exists(), "the leftover is still there");
    assert!(
        h.has_label("removed 1 unfinished temporary file(s) left by an earlier crash"),
        "no notice"
    );
}

#[test]
fn a_dead_worker_fails_its_jobs_and_a_new_one_runs_the_next() {
    let mut h = Harness::new(true, None);
    h.wait_for("the first folder scan", |a| {
        !a.canvas.state.models.is_empty()
    });
    // The crash and the job are sent in the same frame (the Queue button's own command), so the
    // job is always behind the crash in the worker's queue: with a click, taking frames, a
    // loaded machine sometimes restarted the worker first and the job ran.
    h.app.worker().crash();
    h.app.run_cmd(amalgam::ui::command::Command::Queue);
    h.wait_for("the job to end", |a| {
        a.jobs.first().is_some_and(|j| !j.state.is_active())
    });
    assert!(
        matches!(&h.app.jobs[0].state, JobState::Failed(m) if m.contains("worker thread stopped")),
        "{:?}",
        h.app.jobs[0].state
    );
    assert!(
        h.app
            .log
            .iter()
            .any(|e| e.error && e.text.contains("a new worker was started")),
        "the user is told"
    );
    h.frames(2);
    assert!(h.has_label("failed"), "the queue panel shows it");
    // The replacement worker runs the next job, with an id of its own.
    h.click("Queue");
    h.wait_for("the second job", |a| {
        a.jobs.get(1).is_some_and(|j| !j.state.is_active())
    });
    assert_eq!(h.app.jobs[1].state, JobState::Done);
    assert_ne!(h.app.jobs[0].id, h.app.jobs[1].id);
}

#[test]
fn a_dropped_checkpoint_from_elsewhere_is_copied_in_off_the_ui_thread() {
    let mut h = Harness::new(true, None);
    let elsewhere = tempdir();
    let file = elsewhere.path().join("elsewhere.safetensors");
    write_layout(
        &file,
        &amalgam::model::layouts::Layout::sd15(amalgam::model::layouts::Scale::Sample),
        9,
        &[],
    );
    h.drop_file(&file);
    h.wait_for("the import offer", |a| a.modals.import_offer.is_some());
    h.frames(2);
    assert!(h.has_label("Copy into models folder"), "{:?}", h.tree);
    h.click("Copy into models folder");
    h.wait_for("the new loader", |a| {
        a.document.doc.nodes.iter().any(|n| {
            n.type_ == "CheckpointLoaderSimple"
                && n.widget_values().first() == Some(&serde_json::json!("elsewhere.safetensors"))
        })
    });
    assert!(
        h.app.modals.importing.is_none(),
        "the progress window closed"
    );
    let checkpoints = h.base.path().join("models/checkpoints");
    assert_eq!(
        std::fs::read(checkpoints.join("elsewhere.safetensors")).ok(),
        std::fs::read(&file).ok()
    );
    assert!(
        files_under(&checkpoints)
            .iter()
            .all(|n| !n.contains("amalgam-import")),
        "no temporary file is left"
    );
}

#[test]
fn two_selected_checkpoints_open_the_compare_heat_map() {
    let mut h = Harness::new(true, None);
    h.wait_for("the first folder scan", |a| {
        !a.canvas.state.models.is_empty()
    });
    // The default graph loads sample-sd15-a and -b: select everything (two loaders among it).
    h.key(Key::A, CTRL);
    assert_eq!(
        h.app.canvas.selected().len(),
        5,
        "Ctrl+A selects the whole default graph"
    );
    h.click("Compare checkpoints");
    assert_eq!(h.app.jobs.len(), 1, "a comparison job is queued");
    h.wait_for("the comparison", |a| a.compare.is_some());
    assert!(h.has_label("Difference heat-map"), "{:?}", h.tree);
    for cell in [
        "IN00",
        "IN11",
        "M00",
        "OUT11",
        "L00",
        "decoder.up.3",
        "model (all)",
    ] {
        assert!(
            h.tree.iter().any(|(n, r)| n == cell && r.is_some()),
            "no heat-map cell {cell}"
        );
    }
    let report = h
        .app
        .compare
        .as_ref()
        .expect("compare view")
        .comparison
        .report
        .clone();
    assert!(!report.identical());
    let mut want: Vec<&str> = report
        .keys
        .iter()
        .filter(|k| k.block == "IN04")
        .map(|k| k.key.as_str())
        .collect();
    want.sort_unstable();
    assert!(!want.is_empty());
    // Clicking a cell lists its keys.
    h.click("IN04");
    assert!(h.has_label("model IN04: keys"), "{:?}", h.tree);
    let listed: std::collections::BTreeSet<&str> = h
        .tree
        .iter()
        .filter(|(n, _)| n.starts_with("model.diffusion_model.input_blocks.4."))
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(listed.into_iter().collect::<Vec<_>>(), want);
    assert!(
        h.app
            .log
            .iter()
            .any(|e| e.text.contains("shared keys differ"))
    );
}

#[test]
fn two_picked_outputs_compare_as_identical() {
    let mut h = Harness::prepared(true, None, |base| {
        let out = base.join("output/checkpoints");
        std::fs::create_dir_all(&out).expect("output folder");
        let sample = base.join("models/checkpoints/sample-sd15-a.safetensors");
        for name in ["one.safetensors", "two.safetensors"] {
            std::fs::copy(&sample, out.join(name)).expect("copy");
        }
    });
    h.click("Outputs");
    h.wait_for("the output scan", |a| a.outputs.len() == 2);
    assert!(h.has_label("Tick \"compare\" on two files"));
    let boxes: Vec<Rect> = h
        .tree
        .iter()
        .filter(|(n, _)| n == "compare")
        .filter_map(|(_, r)| *r)
        .collect();
    assert_eq!(boxes.len(), 2, "{:?}", h.tree);
    for b in boxes {
        h.click_at(b.center());
    }
    assert_eq!(h.app.compare_pick.len(), 2);
    h.click("Compare the two picked files");
    h.wait_for("the comparison", |a| a.compare.is_some());
    assert!(h.has_label("identical:"), "{:?}", h.tree);
}

#[test]
fn merge_nodes_say_what_they_will_ignore_before_queue() {
    // The second sample has one key the first lacks, one reshaped key and one stored in F32.
    let mut h = Harness::prepared(true, None, |base| {
        let b = base.join("models/checkpoints/sample-sd15-b.safetensors");
        let mut specs =
            amalgam::model::layouts::Layout::sd15(amalgam::model::layouts::Scale::Sample).tensors();
        for s in &mut specs {
            if s.name == "model.diffusion_model.out.2.bias" {
                s.shape[0] += 1;
            }
            if s.name == "model.diffusion_model.out.2.weight" {
                s.dtype = amalgam::format::DType::F32;
            }
        }
        specs.push(spec(
            "model.diffusion_model.extra.weight",
            amalgam::format::DType::F16,
            &[4],
        ));
        std::fs::remove_file(&b).expect("replace the sample");
        write_safetensors(&b, &specs, 2, &std::collections::HashMap::new(), &[]);
    });
    h.wait_for("the merge node's notes", |a| {
        a.canvas.state.notes.values().flatten().count() >= 3
    });
    for text in [
        "1 model key(s) of the second input are not in the first and are ignored",
        "SHAPE MISMATCH out.2.bias WEIGHT NOT MERGED [5] != [4]",
        "1 model key(s) are F32 in the second input and F16 in the first",
    ] {
        assert!(h.has_label(text), "no note {text:?}: {:?}", h.tree);
    }
    assert!(h.app.jobs.is_empty(), "nothing was queued to find this out");
}

#[test]
fn a_zoomed_out_canvas_draws_shapes_without_anti_aliasing() {
    let mut h = Harness::new(false, None);
    h.frames(1);
    assert!(
        h.ctx.tessellation_options(|o| o.feathering),
        "full detail at 100 %"
    );
    h.app.canvas.editor.pan_zoom.zoom = 0.3;
    h.frames(1);
    assert!(
        !h.ctx.tessellation_options(|o| o.feathering),
        "low detail below {}",
        amalgam::ui::app::LOW_DETAIL_ZOOM
    );
    h.app.canvas.editor.pan_zoom.zoom = 1.0;
    h.frames(1);
    assert!(h.ctx.tessellation_options(|o| o.feathering));
}
