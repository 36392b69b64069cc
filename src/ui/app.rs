//! The application state and its frame. [`AmalgamApp::ui`] draws one frame on any
//! `egui::Context`: the `*_ui` functions of the other modules draw what they are given and
//! return [`Command`]s, which [`AmalgamApp::run_cmd`] applies in one place. Tests drive the real
//! app frame by frame without a window.
//!
//! Nothing here touches tensors or blocks on files: validation is in-memory, merges run on the
//! engine's worker (restarted, with its unfinished jobs failed, if it ever dies), file reads,
//! scans and imports on the files thread.

mod checks;
mod inside;
mod queue;
mod results;

use checks::Preview;
pub use results::Results;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::engine::worker::Worker;
use crate::graph::edit::{Given, node_from_schema};
use crate::graph::examples;
use crate::graph::load::LoadErrorKind;
use crate::graph::resolve::resolve;
use crate::graph::validate::validate;
use crate::graph::{Document, Mode};
use crate::model::ModelFolders;
use crate::nodes::Registry;

use super::canvas::{Canvas, CanvasEdit};
use super::command::Command;
use super::compare::{CompareView, compare_ui};
use super::document::DocumentState;
use super::files::{
    DialogRequest, DialogSlot, Dialogs, FileThread, FolderPurpose, ImportError, OutputEntry, Reply,
    Request,
};
use super::jobs::JobView;
use super::menu::{MenuState, Status, ViewToggles, menu_bar_ui, shortcuts, status_bar_ui};
use super::panels::{outputs_ui, queue_ui};
use super::settings::{Persisted, Settings};
use super::windows::{
    ImportProgress, LogEntry, Modals, drop_overlay_ui, log_ui, modals_ui, sample_banner_ui,
    toasts_ui,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SideTab {
    Queue,
    Outputs,
}

/// Folder scans: when the last one was asked for, and whether it is still running.
#[derive(Debug, Default)]
struct Scans {
    last: Option<Instant>,
    in_flight: bool,
    /// Whether any scan has answered yet (the no-models banner waits for one).
    answered: bool,
}

impl Scans {
    /// Whether to ask for a scan now: none is running, and the last was asked for `every` ago
    /// or was invalidated (`last` cleared after a save or delete).
    fn due(&self, now: Instant, every: Duration) -> bool {
        !self.in_flight && self.last.is_none_or(|t| now.duration_since(t) >= every)
    }

    fn asked(&mut self, now: Instant) {
        self.last = Some(now);
        self.in_flight = true;
    }
}

type Wake = Arc<dyn Fn() + Send + Sync>;

/// The whole app.
pub struct AmalgamApp {
    pub document: DocumentState,
    pub canvas: Canvas,
    pub settings: Settings,
    pub folders: ModelFolders,
    worker: Worker,
    wake: Wake,
    pub jobs: Vec<JobView>,
    files: FileThread,
    pub outputs: Vec<OutputEntry>,
    pub log: Vec<LogEntry>,
    dialogs: DialogSlot,
    scans: Scans,
    pub side_tab: SideTab,
    show_log: bool,
    pub modals: Modals,
    /// The cancel flag of the import under way.
    import_cancel: Option<Arc<AtomicBool>>,
    example_names: Vec<&'static str>,
    /// Time spent in [`AmalgamApp::ui`], smoothed.
    pub frame_ms: f32,
    /// egui's own frame time (eframe's `cpu_usage`), when running in a window.
    pub egui_frame_ms: Option<f32>,
    rebuild: bool,
    /// The Compare window, when a comparison has finished.
    pub compare: Option<CompareView>,
    /// Saved files ticked for comparison in the output browser (at most two).
    pub compare_pick: Vec<PathBuf>,
    preview: Preview,
    /// Pictures, the image viewer, sweeps, and images on nodes.
    pub results: Results,
    /// The subgraph opened from an instance, shown instead of the workflow's canvas.
    pub inside: Option<inside::SubgraphView>,
}

/// Below this canvas zoom, shapes are drawn without anti-aliasing (ComfyUI's low-quality
/// threshold).
pub const LOW_DETAIL_ZOOM: f32 = 0.6;
/// How often the folders are rescanned for new models and outputs.
const SCAN_EVERY: Duration = Duration::from_secs(2);
/// How long one frame may spend draining worker events.
const EVENT_BUDGET: Duration = Duration::from_millis(3);
/// Log lines kept.
const LOG_LINES: usize = 500;

impl AmalgamApp {
    /// A new app. `wake` is called from background threads when they have news
    /// (`Context::request_repaint`).
    pub fn new(
        settings: Settings,
        restored: Option<(Document, Option<PathBuf>)>,
        dialogs: Box<dyn Dialogs>,
        wake: impl Fn() + Send + Sync + Clone + 'static,
    ) -> std::io::Result<AmalgamApp> {
        let (folders, problem) = settings.folders();
        let wake: Wake = Arc::new(wake);
        let worker = Worker::spawn(Some(boxed(&wake)))?;
        let files = FileThread::spawn(boxed(&wake))?;
        let results = Results::new(boxed(&wake))?;
        let cleaned = crate::engine::execute::clean_stray_temp_files(folders.output_dir());
        let (doc, doc_path) = match restored {
            Some(r) => r,
            None => (Self::default_graph(&folders), None),
        };
        let mut app = AmalgamApp {
            document: DocumentState::new(doc, doc_path),
            canvas: Canvas::default(),
            settings,
            folders,
            worker,
            wake,
            jobs: Vec::new(),
            files,
            outputs: Vec::new(),
            log: Vec::new(),
            dialogs: DialogSlot::new(dialogs),
            scans: Scans::default(),
            side_tab: SideTab::Queue,
            show_log: false,
            modals: Modals::default(),
            import_cancel: None,
            example_names: examples::all().into_iter().map(|(name, ..)| name).collect(),
            frame_ms: 0.0,
            egui_frame_ms: None,
            rebuild: true,
            compare: None,
            compare_pick: Vec::new(),
            preview: Preview::default(),
            results,
            inside: None,
        };
        app.canvas.request_fit();
        if let Some(p) = problem {
            app.notify(true, p);
        }
        if cleaned > 0 {
            app.notify(
                false,
                format!("removed {cleaned} unfinished temporary file(s) left by an earlier crash"),
            );
        }
        Ok(app)
    }

    /// The default graph, wired to the first two checkpoints found (if any).
    fn default_graph(folders: &ModelFolders) -> Document {
        let models = folders.list("checkpoints");
        let first = models.first().cloned().unwrap_or_default();
        let second = models.get(1).cloned().unwrap_or_else(|| first.clone());
        examples::default_merge(&first, &second)
    }

    pub fn persisted(&self) -> Persisted {
        Persisted {
            settings: self.settings.clone(),
            workflow: serde_json::to_string(&self.document.doc.to_json()).unwrap_or_default(),
            workflow_path: self.document.path.clone(),
        }
    }

    pub fn notify(&mut self, error: bool, text: impl Into<String>) {
        self.log.push(LogEntry {
            at: Instant::now(),
            error,
            text: text.into(),
        });
        if self.log.len() > LOG_LINES {
            self.log.remove(0);
        }
    }

    /// The worker, for tests that need to make it die.
    #[cfg(feature = "testing")]
    pub fn worker(&self) -> &Worker {
        &self.worker
    }

    // ------------------------------------------------------------------ commands

    /// Applies what the user asked for. Every click, menu item and shortcut ends here.
    pub fn run_cmd(&mut self, command: Command) {
        match command {
            Command::Queue => {
                self.queue();
            }
            Command::Cancel(id) => self.worker.cancel(id),
            Command::ClearFinished => self.jobs.retain(|j| j.state.is_active()),
            Command::New => {
                let doc = Self::default_graph(&self.folders);
                self.replace_document(doc, None);
            }
            Command::AskOpen => self.ask(DialogRequest::OpenWorkflow),
            Command::Open(path) => self.open_path(path),
            Command::Save => match self.document.path.clone() {
                Some(p) => self.save_to(p),
                None => self.run_cmd(Command::SaveAs),
            },
            Command::SaveAs => self.ask(DialogRequest::SaveWorkflow {
                suggested: "workflow.json".into(),
            }),
            Command::ExportPrompt => self.ask(DialogRequest::ExportPrompt {
                suggested: "workflow_api.json".into(),
            }),
            Command::Example(i) => {
                if let Some((_, _, doc)) = examples::all().into_iter().nth(i) {
                    self.replace_document(doc, None);
                }
            }
            Command::Undo => self.rebuild |= self.document.undo(),
            Command::Redo => self.rebuild |= self.document.redo(),
            Command::SelectAll if self.inside.is_none() => self.canvas.select_all(),
            Command::SelectAll => {}
            Command::ToggleMode(mode) => self.toggle_mode(mode),
            Command::DeleteSelected => self.delete_selected(),
            Command::Compare { a, b } if super::is_png_path(&a) && super::is_png_path(&b) => {
                self.results.viewer = Some(super::viewer::Viewer::two(a, b));
            }
            Command::Compare { a, b } => {
                self.compare_files(a, b);
            }
            Command::CompareCheckpoints(pair) => self.compare_checkpoints(pair),
            Command::PickForCompare(path) => {
                if let Some(i) = self.compare_pick.iter().position(|p| p == &path) {
                    self.compare_pick.remove(i);
                } else {
                    if self.compare_pick.len() == 2 {
                        self.compare_pick.remove(0);
                    }
                    self.compare_pick.push(path);
                }
            }
            Command::Inspect { title, report } => self.modals.inspect = Some((title, report)),
            Command::AskDelete(path) => self.modals.confirm_delete = Some(path),
            Command::Delete(path) => self.files.send(Request::Delete(path)),
            Command::Import { path, link } => self.import(path, link),
            Command::CancelImport => {
                if let Some(c) = &self.import_cancel {
                    c.store(true, Ordering::Relaxed);
                }
            }
            Command::WriteSamples => self.write_samples(),
            Command::OpenModelsFolder => {
                if let Some(dir) = self.folders.primary("checkpoints").map(Path::to_path_buf) {
                    let _ = std::fs::create_dir_all(&dir);
                    if let Err(e) = opener::open(&dir) {
                        self.notify(true, format!("cannot open {}: {e}", dir.display()));
                    }
                }
            }
            Command::Reveal(path) => {
                if let Err(e) = opener::reveal(&path) {
                    self.notify(true, format!("cannot reveal {}: {e}", path.display()));
                }
            }
            Command::PickFolder(purpose) => self.ask(DialogRequest::PickFolder { purpose }),
            Command::PickExtraPaths => self.ask(DialogRequest::OpenExtraPaths),
            Command::ShowSettings => self.modals.show_settings = true,
            Command::FoldersChanged => self.apply_settings(),
            Command::OpenImage(_)
            | Command::QueueSweep(_)
            | Command::SaveSweepGrid(_)
            | Command::OpenSweepCell { .. } => self.run_results_cmd(command),
        }
    }

    // ------------------------------------------------------------------ document changes

    /// Replaces the whole document (open, drop, new, example); the old one goes to undo.
    pub fn replace_document(&mut self, doc: Document, path: Option<PathBuf>) {
        self.document.replace(doc, path);
        self.canvas.state.errors.clear();
        // Node ids of another document: its images are not these nodes'.
        self.results.node_images.clear();
        self.inside = None;
        self.rebuild = true;
        self.canvas.request_fit();
    }

    fn apply_edits(&mut self, edits: Vec<CanvasEdit>) {
        for edit in edits {
            let edit = match edit {
                CanvasEdit::Create {
                    class_type,
                    editor_id,
                    pos,
                } => {
                    // Every new node is its own undo step.
                    self.document.before_change("create");
                    let id = self.document.doc.next_node_id();
                    if let Some(schema) = Registry::builtin().get(class_type) {
                        let node = node_from_schema(schema, id, pos, |_| Given::Default);
                        self.document.doc.add_node(node);
                        self.canvas.bind_created(editor_id, id);
                    }
                    continue;
                }
                CanvasEdit::OpenSubgraph(node) => {
                    self.open_subgraph(node);
                    continue;
                }
                CanvasEdit::Document(edit) => edit,
            };
            if !self.document.apply(&edit) {
                // The canvas and the document disagree: show the document's truth.
                self.rebuild = true;
            }
            if matches!(
                edit,
                crate::graph::Edit::Connect { .. } | crate::graph::Edit::Delete(_)
            ) {
                // A replaced link or a removed node changes other slots too.
                self.rebuild = true;
            }
        }
    }

    /// The selected workflow nodes that commands act on: none while a subgraph's inside is
    /// shown, where the workflow's own selection is out of sight (Delete must not remove what
    /// the user cannot see).
    fn acted_on(&self) -> Vec<crate::graph::NodeId> {
        if self.inside.is_some() {
            return Vec::new();
        }
        self.canvas.selected()
    }

    /// Sets the mode of the selected nodes (toggling back to "always" when all already have it).
    pub fn toggle_mode(&mut self, mode: Mode) {
        let selected = self.acted_on();
        if !selected.is_empty() {
            self.document.toggle_mode(&selected, mode);
            self.rebuild = true;
        }
    }

    pub fn delete_selected(&mut self) {
        let selected = self.acted_on();
        if !selected.is_empty() {
            self.document.delete(&selected);
            self.canvas.editor.selected_nodes.clear();
            self.rebuild = true;
        }
    }

    // ------------------------------------------------------------------ files

    fn poll_files(&mut self) {
        while let Ok(reply) = self.files.replies.try_recv() {
            match reply {
                Reply::Loaded(path, result) => self.loaded(path, *result),
                Reply::Scanned { models, outputs } => {
                    if models != self.canvas.state.models {
                        // Other files under the same names: preview again.
                        self.preview.asked = None;
                    }
                    self.canvas.state.models = models;
                    self.outputs = outputs;
                    self.scans.answered = true;
                    self.scans.in_flight = false;
                }
                Reply::Deleted(path, r) => {
                    let (failed, message) = match r {
                        Ok(()) => {
                            // Off the list now (not at the next scan), and a later file under
                            // the same name is decoded afresh.
                            self.outputs.retain(|e| e.path != path);
                            self.results.pictures.forget(&path);
                            self.results
                                .node_images
                                .retain(|_, paths| !paths.contains(&path));
                            (false, format!("deleted {}", path.display()))
                        }
                        Err(e) => (true, format!("cannot delete {}: {e}", path.display())),
                    };
                    self.notify(failed, message);
                    self.scans.last = None;
                }
                Reply::Samples(r) => self.samples_written(r.map(|o| o.len())),
                Reply::ImportProgress { done, total } => {
                    if let Some(p) = &mut self.modals.importing {
                        (p.done, p.total) = (done, total);
                    }
                }
                Reply::Preview { doc, notes } => {
                    self.preview.in_flight = false;
                    // Notes for an older document are dropped; the next request follows.
                    if *doc == self.document.doc {
                        self.canvas.state.notes = notes;
                    }
                }
                Reply::Imported { path, result } => {
                    self.modals.importing = None;
                    self.import_cancel = None;
                    match result {
                        Ok(name) => {
                            self.scans.last = None;
                            self.add_loader(&name);
                        }
                        Err(ImportError::Cancelled) => self.notify(
                            false,
                            format!("import of {} {}", path.display(), ImportError::Cancelled),
                        ),
                        Err(e) => {
                            self.notify(true, format!("cannot import {}: {e}", path.display()));
                        }
                    }
                }
            }
        }
        // One scan in flight at most: a slow drive must not build a backlog of scans.
        let now = Instant::now();
        if self.scans.due(now, SCAN_EVERY) {
            self.files.send(Request::Scan(self.folders.clone()));
            self.scans.asked(now);
        }
        self.ask_preview(now);
    }

    fn samples_written(&mut self, written: Result<usize, String>) {
        match written {
            Ok(n) => {
                self.notify(false, format!("wrote {n} sample checkpoint(s)"));
                self.scans.last = None;
                let no_model_chosen = self
                    .document
                    .doc
                    .nodes
                    .iter()
                    .filter(|n| n.type_ == "CheckpointLoaderSimple")
                    .all(|n| {
                        n.widget_values()
                            .first()
                            .and_then(|v| v.as_str())
                            .is_none_or(str::is_empty)
                    });
                if no_model_chosen {
                    let doc = examples::default_merge(
                        "sample-sd15-a.safetensors",
                        "sample-sd15-b.safetensors",
                    );
                    self.replace_document(doc, None);
                }
            }
            Err(e) => self.notify(true, format!("cannot write samples: {e}")),
        }
    }

    fn write_samples(&mut self) {
        let Some(dir) = self.folders.primary("checkpoints").map(Path::to_path_buf) else {
            return;
        };
        self.notify(
            false,
            format!("writing sample checkpoints into {}…", dir.display()),
        );
        let kind_dir = |k: &str| {
            self.folders
                .primary(k)
                .map_or_else(|| dir.clone(), Path::to_path_buf)
        };
        let (loras, vae) = (kind_dir("loras"), kind_dir("vae"));
        self.files.send(Request::WriteSamples {
            checkpoints: dir,
            loras,
            vae,
        });
    }

    fn loaded(
        &mut self,
        path: PathBuf,
        result: Result<crate::graph::load::Loaded, crate::graph::load::LoadError>,
    ) {
        match result {
            Ok(l) => {
                for issue in &l.report.issues {
                    self.notify(true, format!("{}: {}", path.display(), issue.message));
                }
                let is_json = path
                    .extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("json"));
                self.replace_document(l.document, is_json.then(|| path.clone()));
                self.remember_recent(path);
                self.queue_pending_sweep();
            }
            Err(e) if matches!(e.kind, LoadErrorKind::NoWorkflowInCheckpoint) => {
                self.dropped_checkpoint(path);
            }
            Err(e) => self.notify(true, e.to_string()),
        }
    }

    /// A checkpoint without a workflow: add a Load Checkpoint node for it, after importing it
    /// when it is outside the model folders.
    fn dropped_checkpoint(&mut self, path: PathBuf) {
        let name = self.folders.folders("checkpoints").iter().find_map(|dir| {
            let rel = path
                .canonicalize()
                .ok()?
                .strip_prefix(dir.canonicalize().ok()?)
                .ok()?
                .to_string_lossy()
                .replace('\\', "/");
            Some(rel)
        });
        match name {
            Some(name) => self.add_loader(&name),
            None => self.modals.import_offer = Some(path),
        }
    }

    fn add_loader(&mut self, name: &str) {
        self.document.before_change("add loader");
        let doc = &mut self.document.doc;
        let id = doc.next_node_id();
        let y = doc
            .nodes
            .iter()
            .filter_map(|n| n.pos.get())
            .map(|p| p[1])
            .fold(0.0, f64::max)
            + 200.0;
        if let Some(schema) = Registry::builtin().get("CheckpointLoaderSimple") {
            let mut node = node_from_schema(schema, id, [0.0, y], |_| Given::Default);
            node.set_widget_value(0, serde_json::json!(name));
            doc.add_node(node);
        }
        self.rebuild = true;
        self.notify(false, format!("added Load Checkpoint for {name}"));
    }

    /// Links or copies a dropped checkpoint into the checkpoints folder on the file thread.
    fn import(&mut self, path: PathBuf, link: bool) {
        let Some(folder) = self.folders.primary("checkpoints").map(Path::to_path_buf) else {
            self.notify(true, "there is no checkpoints folder to import into");
            return;
        };
        let cancel = Arc::new(AtomicBool::new(false));
        self.import_cancel = Some(Arc::clone(&cancel));
        self.modals.importing = Some(ImportProgress {
            path: path.clone(),
            done: 0,
            total: 0,
        });
        self.files.send(Request::Import {
            path,
            folder,
            link,
            cancel,
        });
    }

    fn remember_recent(&mut self, path: PathBuf) {
        self.settings.recent.retain(|p| *p != path);
        self.settings.recent.insert(0, path);
        self.settings.recent.truncate(10);
    }

    pub fn open_path(&mut self, path: PathBuf) {
        self.files.send(Request::Load(path));
    }

    fn save_to(&mut self, path: PathBuf) {
        let text = serde_json::to_string_pretty(&self.document.doc.to_json()).unwrap_or_default();
        match std::fs::write(&path, text) {
            Ok(()) => {
                self.notify(false, format!("saved workflow {}", path.display()));
                self.document.path = Some(path.clone());
                self.remember_recent(path);
            }
            Err(e) => self.notify(true, format!("cannot save {}: {e}", path.display())),
        }
    }

    fn export_prompt(&mut self, path: &Path) {
        let registry = Registry::builtin();
        let v = validate(
            resolve(&self.document.doc, registry),
            registry,
            &self.folders,
        );
        let text = serde_json::to_string_pretty(&v.prompt.to_json()).unwrap_or_default();
        match std::fs::write(path, text) {
            Ok(()) => self.notify(false, format!("exported API prompt {}", path.display())),
            Err(e) => self.notify(true, format!("cannot write {}: {e}", path.display())),
        }
    }

    fn ask(&mut self, request: DialogRequest) {
        self.dialogs.ask(request);
    }

    fn poll_dialog(&mut self) {
        let Some((request, path)) = self.dialogs.poll() else {
            return;
        };
        match request {
            DialogRequest::OpenWorkflow => self.open_path(path),
            DialogRequest::SaveWorkflow { .. } => self.save_to(path),
            DialogRequest::ExportPrompt { .. } => self.export_prompt(&path),
            DialogRequest::PickFolder { purpose } => {
                match purpose {
                    FolderPurpose::Base => self.settings.base_dir = path,
                    FolderPurpose::Models => self.settings.models_dir = Some(path),
                    FolderPurpose::Output => self.settings.output_dir = Some(path),
                }
                self.apply_settings();
            }
            DialogRequest::OpenExtraPaths => {
                self.settings.extra_model_paths = Some(path);
                self.apply_settings();
            }
        }
    }

    /// Rescans the output folder on the next frame (something was saved or deleted).
    fn rescan_outputs(&mut self) {
        self.scans.last = None;
    }

    fn apply_settings(&mut self) {
        let (folders, problem) = self.settings.folders();
        self.folders = folders;
        if let Some(p) = problem {
            self.notify(true, p);
        }
        self.scans.last = None;
    }

    // ------------------------------------------------------------------ the frame

    /// Draws one frame.
    pub fn ui(&mut self, ctx: &egui::Context) {
        let started = Instant::now();
        // Low detail when zoomed out, as ComfyUI's canvas below 60 %: shapes without egui's
        // anti-aliasing feathering. On a software renderer (Mesa llvmpipe, 83 % of a frame with
        // 200 nodes in view) this halves the frame time; text stays smooth (glyph textures).
        let low_detail = self.canvas.editor.pan_zoom.zoom < LOW_DETAIL_ZOOM;
        ctx.tessellation_options_mut(|o| o.feathering = !low_detail);
        ctx.set_visuals(if self.settings.dark {
            egui::Visuals::dark()
        } else {
            egui::Visuals::light()
        });
        self.drain_events();
        self.follow_results(ctx);
        self.poll_files();
        self.poll_dialog();
        for f in ctx.input(|i| i.raw.dropped_files.clone()) {
            match f.path {
                Some(p) => self.open_path(p),
                None => self.notify(true, format!("cannot open dropped {}: no path", f.name)),
            }
        }
        for command in shortcuts(ctx) {
            self.run_cmd(command);
        }
        if self.rebuild {
            self.canvas.rebuild(&self.document.doc);
            self.refresh_inside();
            self.rebuild = false;
        }

        let mut commands: Vec<Command> = Vec::new();
        egui::TopBottomPanel::top("menu").show(ctx, |ui| {
            let state = MenuState {
                can_undo: self.document.can_undo(),
                can_redo: self.document.can_redo(),
                recent: &self.settings.recent,
                examples: &self.example_names,
                compare: (self.selected_checkpoint_nodes().len() == 2)
                    .then(|| self.selected_checkpoints()),
                estimate: self
                    .results
                    .estimate(&self.document.doc, self.settings.first_image_only),
            };
            let mut view = ViewToggles {
                show_log: &mut self.show_log,
                dark: &mut self.settings.dark,
                precision: &mut self.settings.precision,
                first_image_only: &mut self.settings.first_image_only,
            };
            commands.extend(menu_bar_ui(ui, &state, &mut view));
        });
        egui::TopBottomPanel::bottom("status").show(ctx, |ui| {
            let status = Status {
                path: self.document.path.as_deref(),
                nodes: self.document.doc.nodes.len(),
                output_dir: self.folders.output_dir(),
                frame_ms: self.frame_ms,
                egui_frame_ms: self.egui_frame_ms,
            };
            status_bar_ui(ui, &status);
        });
        if self.show_log {
            egui::TopBottomPanel::bottom("log")
                .resizable(true)
                .default_height(140.0)
                .show(ctx, |ui| log_ui(ui, &self.log));
        }
        egui::SidePanel::right("side")
            .resizable(true)
            .default_width(330.0)
            .show(ctx, |ui| {
                ui.horizontal(|ui| {
                    ui.selectable_value(&mut self.side_tab, SideTab::Queue, "Queue panel");
                    ui.selectable_value(&mut self.side_tab, SideTab::Outputs, "Outputs");
                });
                ui.separator();
                commands.extend(match self.side_tab {
                    SideTab::Queue => queue_ui(ui, &self.jobs),
                    SideTab::Outputs => outputs_ui(
                        ui,
                        self.folders.output_dir(),
                        &self.outputs,
                        &self.compare_pick,
                        &mut self.results.shown,
                        &mut self.results.pictures,
                    ),
                });
            });
        egui::CentralPanel::default()
            .frame(egui::Frame::none().fill(ctx.style().visuals.extreme_bg_color))
            .show(ctx, |ui| {
                let no_models = self.scans.answered
                    && self
                        .canvas
                        .state
                        .models
                        .get("checkpoints")
                        .is_none_or(Vec::is_empty);
                if no_models {
                    commands.extend(sample_banner_ui(ui, self.folders.primary("checkpoints")));
                }
                if self.inside.is_some() {
                    self.inside_ui(ui);
                    return;
                }
                // The editor claims its whole rect for panning and box selection: give it only
                // the space below the banner, or the banner's buttons could not be clicked.
                let rect = ui.available_rect_before_wrap();
                let edits = ui
                    .allocate_new_ui(egui::UiBuilder::new().max_rect(rect), |ui| {
                        self.canvas.show(ui)
                    })
                    .inner;
                if !edits.is_empty() {
                    self.apply_edits(edits);
                }
            });
        // What the panels asked for runs before the windows are drawn, so a window a click
        // opens (a confirmation, an inspect report) is there in the same frame.
        for command in commands {
            self.run_cmd(command);
        }
        if let Some(command) = modals_ui(ctx, &mut self.modals, &mut self.settings) {
            self.run_cmd(command);
        }
        compare_ui(ctx, &mut self.compare);
        for command in self.results_ui(ctx) {
            self.run_cmd(command);
        }
        toasts_ui(ctx, &self.log);
        drop_overlay_ui(ctx);
        let ms = started.elapsed().as_secs_f32() * 1000.0;
        self.frame_ms = if self.frame_ms == 0.0 {
            ms
        } else {
            self.frame_ms * 0.9 + ms * 0.1
        };
    }
}

/// A wake callback for one more background thread.
fn boxed(wake: &Wake) -> Box<dyn Fn() + Send> {
    let wake = Arc::clone(wake);
    Box::new(move || wake())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_scan_at_most_is_in_flight() {
        let every = Duration::from_secs(2);
        let start = Instant::now();
        let mut scans = Scans::default();
        assert!(scans.due(start, every), "the first scan starts at once");
        scans.asked(start);
        let later = start + Duration::from_secs(60);
        assert!(!scans.due(later, every), "a slow scan is not asked again");
        scans.last = None;
        assert!(!scans.due(later, every), "not even when invalidated");
        scans.in_flight = false;
        assert!(
            scans.due(later, every),
            "an invalidated scan runs once the last returned"
        );
        scans.asked(later);
        scans.in_flight = false;
        assert!(!scans.due(later + Duration::from_secs(1), every));
        assert!(scans.due(later + every, every));
    }
}
