//! The application state and its frame: menus, shortcuts, the canvas, the queue and output
//! panels, the log, and the glue that turns clicks into document edits and jobs.
//!
//! [`AmalgamApp::ui`] draws one frame on any `egui::Context`, so tests drive the real app frame
//! by frame without a window. Nothing here touches tensors or blocks on files: validation is
//! in-memory, merges run on the engine's worker, file reads on the files thread.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use egui::{Align2, Color32, Key, KeyboardShortcut, Modifiers, RichText};
use serde::{Deserialize, Serialize};

use crate::engine::worker::{Job, JobId, Worker};
use crate::engine::{Event, Precision, Progress, SavedFile};
use crate::graph::load::LoadErrorKind;
use crate::graph::resolve::resolve;
use crate::graph::{Document, Mode, NodeId};
use crate::model::ModelFolders;
use crate::model::report::human_bytes;
use crate::nodes::Registry;
use crate::nodes::validate::validate;

use super::canvas::{Canvas, Edit, apply, new_document_node};
use super::examples;
use super::files::{
    DialogRequest, Dialogs, FileThread, FolderPurpose, OutputEntry, Reply, Request,
};

/// Settings that persist between runs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Settings {
    pub base_dir: PathBuf,
    pub models_dir: Option<PathBuf>,
    pub output_dir: Option<PathBuf>,
    pub extra_model_paths: Option<PathBuf>,
    pub precision: Precision,
    pub dark: bool,
    pub recent: Vec<PathBuf>,
}

impl Settings {
    pub fn new(base_dir: PathBuf) -> Settings {
        Settings {
            base_dir,
            models_dir: None,
            output_dir: None,
            extra_model_paths: None,
            precision: Precision::Keep,
            dark: true,
            recent: Vec::new(),
        }
    }

    /// The model folders these settings describe.
    pub fn folders(&self) -> (ModelFolders, Option<String>) {
        let mut f = ModelFolders::new(
            &self.base_dir,
            self.models_dir.as_deref(),
            self.output_dir.as_deref(),
        );
        let mut problem = None;
        let default_yaml = self.base_dir.join("extra_model_paths.yaml");
        for yaml in self
            .extra_model_paths
            .iter()
            .chain(default_yaml.is_file().then_some(&default_yaml))
        {
            if let Err(e) = f.add_extra_paths_file(yaml) {
                problem = Some(e.to_string());
            }
        }
        (f, problem)
    }
}

/// What is saved between runs (eframe persistence).
#[derive(Serialize, Deserialize)]
pub struct Persisted {
    pub settings: Settings,
    /// The workflow on the canvas, as ComfyUI workflow JSON.
    pub workflow: String,
    pub workflow_path: Option<PathBuf>,
}

/// A job as the queue panel shows it.
#[derive(Debug)]
pub struct JobView {
    pub id: JobId,
    pub label: String,
    pub state: JobState,
    pub current_node: Option<String>,
    pub progress: Option<Progress>,
    pub queued_at: Instant,
    pub started: Option<Instant>,
    pub seconds: Option<f64>,
    pub warnings: Vec<String>,
    pub outputs: Vec<SavedFile>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed(String),
    Cancelled,
}

impl JobState {
    pub fn label(&self) -> &str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed(_) => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

/// A log line (also shown briefly as a toast).
#[derive(Clone, Debug)]
pub struct LogEntry {
    pub at: Instant,
    pub error: bool,
    pub text: String,
}

/// A dropped checkpoint that lives outside the model folders.
#[derive(Clone, Debug)]
pub struct ImportOffer {
    pub path: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SideTab {
    Queue,
    Outputs,
}

/// The whole app.
pub struct AmalgamApp {
    pub doc: Document,
    pub doc_path: Option<PathBuf>,
    pub canvas: Canvas,
    undo: Vec<Document>,
    redo: Vec<Document>,
    last_edit: Option<(String, Instant)>,
    pub settings: Settings,
    pub folders: ModelFolders,
    worker: Worker,
    pub jobs: Vec<JobView>,
    files: FileThread,
    pub outputs: Vec<OutputEntry>,
    pub log: Vec<LogEntry>,
    dialogs: Box<dyn Dialogs>,
    pending_dialog: Option<(DialogRequest, crossbeam_channel::Receiver<Option<PathBuf>>)>,
    last_scan: Option<Instant>,
    scanned_once: bool,
    pub side_tab: SideTab,
    show_log: bool,
    show_settings: bool,
    inspect: Option<(String, String)>,
    confirm_delete: Option<PathBuf>,
    import_offer: Option<ImportOffer>,
    /// Time spent in [`AmalgamApp::ui`], smoothed.
    pub frame_ms: f32,
    /// egui's own frame time (eframe's `cpu_usage`), when running in a window.
    pub egui_frame_ms: Option<f32>,
    rebuild: bool,
}

/// How often the folders are rescanned for new models and outputs.
const SCAN_EVERY: Duration = Duration::from_secs(2);
/// How long one frame may spend draining worker events.
const EVENT_BUDGET: Duration = Duration::from_millis(3);

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
        let w = wake.clone();
        let worker = Worker::spawn(Some(Box::new(w)))?;
        let files = FileThread::spawn(wake)?;
        let cleaned = crate::engine::execute::clean_stray_temp_files(folders.output_dir());
        let (doc, doc_path) = match restored {
            Some(r) => r,
            None => (Self::default_graph(&folders), None),
        };
        let mut app = AmalgamApp {
            doc,
            doc_path,
            canvas: Canvas::default(),
            undo: Vec::new(),
            redo: Vec::new(),
            last_edit: None,
            settings,
            folders,
            worker,
            jobs: Vec::new(),
            files,
            outputs: Vec::new(),
            log: Vec::new(),
            dialogs,
            pending_dialog: None,
            last_scan: None,
            scanned_once: false,
            side_tab: SideTab::Queue,
            show_log: false,
            show_settings: false,
            inspect: None,
            confirm_delete: None,
            import_offer: None,
            frame_ms: 0.0,
            egui_frame_ms: None,
            rebuild: true,
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
            workflow: serde_json::to_string(&self.doc.to_json()).unwrap_or_default(),
            workflow_path: self.doc_path.clone(),
        }
    }

    pub fn notify(&mut self, error: bool, text: impl Into<String>) {
        self.log.push(LogEntry {
            at: Instant::now(),
            error,
            text: text.into(),
        });
        if self.log.len() > 500 {
            self.log.remove(0);
        }
    }

    // ------------------------------------------------------------------ document changes

    /// Records the document before an edit. Repeats of the same kind of edit within a second
    /// (a slider drag, a node drag) share one undo step.
    fn before_edit(&mut self, key: &str) {
        let now = Instant::now();
        if let Some((k, at)) = &self.last_edit
            && k == key
            && now.duration_since(*at) < Duration::from_secs(1)
        {
            self.last_edit = Some((key.to_owned(), now));
            return;
        }
        self.undo.push(self.doc.clone());
        if self.undo.len() > 200 {
            self.undo.remove(0);
        }
        self.redo.clear();
        self.last_edit = Some((key.to_owned(), now));
    }

    /// Replaces the whole document (open, drop, new, example); the old one goes to undo.
    pub fn replace_document(&mut self, doc: Document, path: Option<PathBuf>) {
        self.before_edit("replace");
        self.last_edit = None;
        self.doc = doc;
        self.doc_path = path;
        self.canvas.state.errors.clear();
        self.rebuild = true;
        self.canvas.request_fit();
    }

    pub fn undo(&mut self) {
        if let Some(prev) = self.undo.pop() {
            self.redo.push(std::mem::replace(&mut self.doc, prev));
            self.last_edit = None;
            self.rebuild = true;
        }
    }

    pub fn redo(&mut self) {
        if let Some(next) = self.redo.pop() {
            self.undo.push(std::mem::replace(&mut self.doc, next));
            self.last_edit = None;
            self.rebuild = true;
        }
    }

    fn apply_edits(&mut self, edits: Vec<Edit>) {
        for edit in edits {
            let key = match &edit {
                Edit::Move { node, .. } => format!("move {node}"),
                Edit::Widget { node, index, .. } => format!("widget {node} {index}"),
                other => format!("{other:?}"),
            };
            self.before_edit(&key);
            if let Edit::Create {
                class_type,
                editor_id,
                pos,
            } = &edit
            {
                let id = self.doc.next_node_id();
                if let Some(schema) = Registry::builtin().get(class_type) {
                    self.doc.add_node(new_document_node(schema, id, *pos));
                    self.canvas.bind_created(*editor_id, id);
                }
                continue;
            }
            if !apply(&mut self.doc, &edit) {
                // The canvas and the document disagree: show the document's truth.
                self.rebuild = true;
            }
            if matches!(edit, Edit::Connect { .. } | Edit::Delete(_)) {
                // A replaced link or a removed node changes other slots too.
                self.rebuild = true;
            }
        }
    }

    /// Sets the mode of the selected nodes (toggling back to 0 when all already have it).
    pub fn toggle_mode(&mut self, mode: Mode) {
        let selected = self.canvas.selected();
        if selected.is_empty() {
            return;
        }
        self.before_edit("mode");
        self.last_edit = None;
        let all = selected
            .iter()
            .all(|id| self.doc.node(*id).is_some_and(|n| n.mode == mode));
        for id in selected {
            if let Some(n) = self.doc.node_mut(id) {
                n.mode = if all { Mode::Always } else { mode };
            }
        }
        self.rebuild = true;
    }

    pub fn delete_selected(&mut self) {
        let selected = self.canvas.selected();
        if selected.is_empty() {
            return;
        }
        self.before_edit("delete");
        self.last_edit = None;
        for id in selected {
            apply(&mut self.doc, &Edit::Delete(id));
        }
        self.canvas.editor.selected_nodes.clear();
        self.rebuild = true;
    }

    // ------------------------------------------------------------------ queue

    /// Validates the document; queues a job when something can run, else marks the errors.
    pub fn queue(&mut self) -> Option<JobId> {
        let registry = Registry::builtin();
        let v = validate(resolve(&self.doc, registry), registry, &self.folders);
        self.canvas.state.errors.clear();
        for e in &v.errors {
            if let Some(id) = e.node.as_deref().and_then(|n| n.parse::<NodeId>().ok()) {
                self.canvas
                    .state
                    .errors
                    .entry(id)
                    .or_default()
                    .push(format!("{}: {}", e.message, e.details));
            }
        }
        let lines: Vec<String> = v.errors.iter().map(ToString::to_string).collect();
        for l in lines {
            self.notify(true, l);
        }
        if !v.ok() {
            self.notify(
                true,
                "nothing was queued: fix the errors shown on the nodes",
            );
            self.show_log = true;
            return None;
        }
        let label = self
            .doc_path
            .as_ref()
            .and_then(|p| p.file_name())
            .map_or_else(
                || "workflow".to_owned(),
                |f| f.to_string_lossy().into_owned(),
            );
        let id = self.worker.submit(Job {
            prompt: v.prompt,
            outputs: v.outputs,
            workflow: Some(self.doc.to_json()),
            folders: self.folders.clone(),
            precision: self.settings.precision,
        });
        self.jobs.push(JobView {
            id,
            label,
            state: JobState::Queued,
            current_node: None,
            progress: None,
            queued_at: Instant::now(),
            started: None,
            seconds: None,
            warnings: Vec::new(),
            outputs: Vec::new(),
        });
        self.side_tab = SideTab::Queue;
        Some(id)
    }

    pub fn cancel_job(&mut self, id: JobId) {
        self.worker.cancel(id);
    }

    fn drain_events(&mut self) {
        let until = Instant::now() + EVENT_BUDGET;
        while Instant::now() < until {
            let Ok((id, event)) = self.worker.events().try_recv() else {
                break;
            };
            let Some(job) = self.jobs.iter_mut().find(|j| j.id == id) else {
                continue;
            };
            let mut finished = false;
            match event {
                Event::Started { .. } => {
                    job.state = JobState::Running;
                    job.started = Some(Instant::now());
                }
                Event::NodeStarted { node, class_type } => {
                    job.current_node = Some(format!("#{node} {class_type}"));
                    self.canvas.state.running = node.parse().ok();
                }
                Event::NodeFinished { .. } => {}
                Event::Progress(p) => job.progress = Some(p),
                Event::Warning(w) => job.warnings.push(w.to_string()),
                Event::Finished { outputs, seconds } => {
                    job.state = JobState::Done;
                    job.seconds = Some(seconds);
                    job.outputs = outputs;
                    finished = true;
                }
                Event::Failed(e) => {
                    job.state = JobState::Failed(e.to_string());
                    finished = true;
                }
                Event::Cancelled => {
                    job.state = JobState::Cancelled;
                    finished = true;
                }
            }
            if finished {
                let (state, outputs) = (job.state.clone(), job.outputs.clone());
                self.worker.forget(id);
                self.canvas.state.running = None;
                match state {
                    JobState::Failed(msg) => self.notify(true, format!("job {id} failed: {msg}")),
                    JobState::Done => {
                        for o in outputs {
                            let note = if o.cached {
                                " (unchanged: earlier file)"
                            } else {
                                ""
                            };
                            self.notify(false, format!("saved {}{note}", o.path.display()));
                        }
                    }
                    _ => self.notify(false, format!("job {id} cancelled; nothing was written")),
                }
                self.last_scan = None; // rescan outputs now
            }
        }
    }

    // ------------------------------------------------------------------ files

    fn poll_files(&mut self) {
        while let Ok(reply) = self.files.replies.try_recv() {
            match reply {
                Reply::Loaded(path, result) => self.loaded(path, *result),
                Reply::Scanned { models, outputs } => {
                    self.canvas.state.models = models;
                    self.outputs = outputs;
                    self.scanned_once = true;
                }
                Reply::Deleted(path, r) => {
                    let (failed, message) = match r {
                        Ok(()) => (false, format!("deleted {}", path.display())),
                        Err(e) => (true, format!("cannot delete {}: {e}", path.display())),
                    };
                    self.notify(failed, message);
                    self.last_scan = None;
                }
                Reply::Samples(r) => match r {
                    Ok(outcomes) => {
                        self.notify(
                            false,
                            format!("wrote {} sample checkpoint(s)", outcomes.len()),
                        );
                        self.last_scan = None;
                        if self
                            .doc
                            .nodes
                            .iter()
                            .filter(|n| n.type_ == "CheckpointLoaderSimple")
                            .all(|n| {
                                n.widget_values()
                                    .first()
                                    .and_then(|v| v.as_str())
                                    .is_none_or(str::is_empty)
                            })
                        {
                            let doc = examples::default_merge(
                                "sample-sd15-a.safetensors",
                                "sample-sd15-b.safetensors",
                            );
                            self.replace_document(doc, None);
                        }
                    }
                    Err(e) => self.notify(true, format!("cannot write samples: {e}")),
                },
            }
        }
        if self.last_scan.is_none_or(|t| t.elapsed() >= SCAN_EVERY) {
            self.files.send(Request::Scan(self.folders.clone()));
            self.last_scan = Some(Instant::now());
        }
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
            }
            Err(e) if matches!(e.kind, LoadErrorKind::NoWorkflowInCheckpoint) => {
                self.dropped_checkpoint(path);
            }
            Err(e) => self.notify(true, e.to_string()),
        }
    }

    /// A checkpoint without a workflow: add a Load Checkpoint node for it.
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
            None => self.import_offer = Some(ImportOffer { path }),
        }
    }

    fn add_loader(&mut self, name: &str) {
        self.before_edit("add loader");
        self.last_edit = None;
        let id = self.doc.next_node_id();
        let y = self
            .doc
            .nodes
            .iter()
            .filter_map(|n| n.pos.get())
            .map(|p| p[1])
            .fold(0.0, f64::max)
            + 200.0;
        if let Some(schema) = Registry::builtin().get("CheckpointLoaderSimple") {
            let mut node = new_document_node(schema, id, [0.0, y]);
            node.set_widget_value(0, serde_json::json!(name));
            self.doc.add_node(node);
        }
        self.rebuild = true;
        self.notify(false, format!("added Load Checkpoint for {name}"));
    }

    fn import(&mut self, offer: &ImportOffer, link: bool) {
        let Some(dir) = self
            .folders
            .primary("checkpoints")
            .map(std::path::Path::to_path_buf)
        else {
            return;
        };
        let Some(file_name) = offer.path.file_name() else {
            return;
        };
        let target = dir.join(file_name);
        let result = std::fs::create_dir_all(&dir).and_then(|()| {
            if target.exists() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("{} already exists", target.display()),
                ));
            }
            if link {
                #[cfg(unix)]
                return std::os::unix::fs::symlink(&offer.path, &target);
                #[cfg(not(unix))]
                return std::fs::hard_link(&offer.path, &target);
            }
            // Copying gigabytes takes a while; this dialog is the user's explicit request.
            std::fs::copy(&offer.path, &target).map(|_| ())
        });
        match result {
            Ok(()) => {
                self.last_scan = None;
                self.add_loader(&file_name.to_string_lossy());
            }
            Err(e) => self.notify(true, format!("cannot import {}: {e}", offer.path.display())),
        }
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
        let text = serde_json::to_string_pretty(&self.doc.to_json()).unwrap_or_default();
        match std::fs::write(&path, text) {
            Ok(()) => {
                self.notify(false, format!("saved workflow {}", path.display()));
                self.doc_path = Some(path.clone());
                self.remember_recent(path);
            }
            Err(e) => self.notify(true, format!("cannot save {}: {e}", path.display())),
        }
    }

    fn export_prompt(&mut self, path: &std::path::Path) {
        let registry = Registry::builtin();
        let v = validate(resolve(&self.doc, registry), registry, &self.folders);
        let text = serde_json::to_string_pretty(&v.prompt.to_json()).unwrap_or_default();
        match std::fs::write(path, text) {
            Ok(()) => self.notify(false, format!("exported API prompt {}", path.display())),
            Err(e) => self.notify(true, format!("cannot write {}: {e}", path.display())),
        }
    }

    fn ask(&mut self, request: DialogRequest) {
        if self.pending_dialog.is_none() {
            let rx = self.dialogs.ask(&request);
            self.pending_dialog = Some((request, rx));
        }
    }

    fn poll_dialog(&mut self) {
        let Some((request, rx)) = &self.pending_dialog else {
            return;
        };
        let Ok(answer) = rx.try_recv() else { return };
        let request = request.clone();
        self.pending_dialog = None;
        let Some(path) = answer else { return };
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

    fn apply_settings(&mut self) {
        let (folders, problem) = self.settings.folders();
        self.folders = folders;
        if let Some(p) = problem {
            self.notify(true, p);
        }
        self.last_scan = None;
    }

    // ------------------------------------------------------------------ the frame

    /// Draws one frame.
    pub fn ui(&mut self, ctx: &egui::Context) {
        let started = Instant::now();
        ctx.set_visuals(if self.settings.dark {
            egui::Visuals::dark()
        } else {
            egui::Visuals::light()
        });
        self.drain_events();
        self.poll_files();
        self.poll_dialog();
        self.handle_drops(ctx);
        self.shortcuts(ctx);
        if self.rebuild {
            self.canvas.rebuild(&self.doc);
            self.rebuild = false;
        }

        egui::TopBottomPanel::top("menu").show(ctx, |ui| self.menu_bar(ui));
        egui::TopBottomPanel::bottom("status").show(ctx, |ui| self.status_bar(ui));
        if self.show_log {
            egui::TopBottomPanel::bottom("log")
                .resizable(true)
                .default_height(140.0)
                .show(ctx, |ui| self.log_panel(ui));
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
                match self.side_tab {
                    SideTab::Queue => super::panels::queue_panel(self, ui),
                    SideTab::Outputs => super::panels::output_browser(self, ui),
                }
            });
        egui::CentralPanel::default()
            .frame(egui::Frame::none().fill(ctx.style().visuals.extreme_bg_color))
            .show(ctx, |ui| {
                if self.scanned_once
                    && self
                        .canvas
                        .state
                        .models
                        .get("checkpoints")
                        .is_none_or(Vec::is_empty)
                {
                    self.sample_banner(ui);
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
        self.windows(ctx);
        self.toasts(ctx);
        self.drop_overlay(ctx);
        let ms = started.elapsed().as_secs_f32() * 1000.0;
        self.frame_ms = if self.frame_ms == 0.0 {
            ms
        } else {
            self.frame_ms * 0.9 + ms * 0.1
        };
    }

    fn handle_drops(&mut self, ctx: &egui::Context) {
        let dropped = ctx.input(|i| i.raw.dropped_files.clone());
        for f in dropped {
            match f.path {
                Some(p) => self.open_path(p),
                None => self.notify(true, format!("cannot open dropped {}: no path", f.name)),
            }
        }
    }

    fn drop_overlay(&self, ctx: &egui::Context) {
        let hovering = ctx.input(|i| !i.raw.hovered_files.is_empty());
        if !hovering {
            return;
        }
        let screen = ctx.screen_rect();
        let painter = ctx.layer_painter(egui::LayerId::new(
            egui::Order::Foreground,
            egui::Id::new("drop"),
        ));
        painter.rect_filled(screen, 0.0, Color32::from_black_alpha(170));
        painter.text(
            screen.center(),
            Align2::CENTER_CENTER,
            "Drop a ComfyUI workflow (PNG, JSON) or a checkpoint",
            egui::FontId::proportional(22.0),
            Color32::WHITE,
        );
    }

    fn shortcuts(&mut self, ctx: &egui::Context) {
        let sc = |m: Modifiers, k: Key| KeyboardShortcut::new(m, k);
        let typing = ctx.wants_keyboard_input();
        let pressed = |s: KeyboardShortcut| ctx.input_mut(|i| i.consume_shortcut(&s));
        if pressed(sc(Modifiers::COMMAND, Key::Enter)) {
            self.queue();
        }
        if pressed(sc(Modifiers::COMMAND, Key::O)) {
            self.ask(DialogRequest::OpenWorkflow);
        }
        if pressed(sc(Modifiers::COMMAND, Key::S)) {
            match self.doc_path.clone() {
                Some(p) => self.save_to(p),
                None => self.ask(DialogRequest::SaveWorkflow {
                    suggested: "workflow.json".into(),
                }),
            }
        }
        if typing {
            return;
        }
        if pressed(sc(Modifiers::COMMAND | Modifiers::SHIFT, Key::Z))
            || pressed(sc(Modifiers::COMMAND, Key::Y))
        {
            self.redo();
        }
        if pressed(sc(Modifiers::COMMAND, Key::Z)) {
            self.undo();
        }
        if pressed(sc(Modifiers::COMMAND, Key::M)) {
            self.toggle_mode(Mode::Never);
        }
        if pressed(sc(Modifiers::COMMAND, Key::B)) {
            self.toggle_mode(Mode::Bypass);
        }
        if pressed(sc(Modifiers::COMMAND, Key::A)) {
            self.canvas.select_all();
        }
        if pressed(sc(Modifiers::NONE, Key::Delete)) {
            self.delete_selected();
        }
    }

    fn menu_bar(&mut self, ui: &mut egui::Ui) {
        egui::menu::bar(ui, |ui| {
            ui.menu_button("File", |ui| {
                if ui.button("New").clicked() {
                    let doc = Self::default_graph(&self.folders);
                    self.replace_document(doc, None);
                    ui.close_menu();
                }
                if ui.button("Open…").clicked() {
                    self.ask(DialogRequest::OpenWorkflow);
                    ui.close_menu();
                }
                if ui.button("Save").clicked() {
                    match self.doc_path.clone() {
                        Some(p) => self.save_to(p),
                        None => self.ask(DialogRequest::SaveWorkflow {
                            suggested: "workflow.json".into(),
                        }),
                    }
                    ui.close_menu();
                }
                if ui.button("Save As…").clicked() {
                    self.ask(DialogRequest::SaveWorkflow {
                        suggested: "workflow.json".into(),
                    });
                    ui.close_menu();
                }
                if ui.button("Export API prompt…").clicked() {
                    self.ask(DialogRequest::ExportPrompt {
                        suggested: "workflow_api.json".into(),
                    });
                    ui.close_menu();
                }
                ui.menu_button("Recent", |ui| {
                    if self.settings.recent.is_empty() {
                        ui.label("(none)");
                    }
                    for p in self.settings.recent.clone() {
                        if ui.button(p.display().to_string()).clicked() {
                            self.open_path(p);
                            ui.close_menu();
                        }
                    }
                });
                ui.menu_button("Examples", |ui| {
                    for (name, _, doc) in examples::all() {
                        if ui.button(name).clicked() {
                            self.replace_document(doc, None);
                            ui.close_menu();
                        }
                    }
                });
                ui.separator();
                if ui.button("Settings…").clicked() {
                    self.show_settings = true;
                    ui.close_menu();
                }
            });
            ui.menu_button("Edit", |ui| {
                if ui
                    .add_enabled(!self.undo.is_empty(), egui::Button::new("Undo"))
                    .clicked()
                {
                    self.undo();
                    ui.close_menu();
                }
                if ui
                    .add_enabled(!self.redo.is_empty(), egui::Button::new("Redo"))
                    .clicked()
                {
                    self.redo();
                    ui.close_menu();
                }
                ui.separator();
                if ui.button("Select all").clicked() {
                    self.canvas.select_all();
                    ui.close_menu();
                }
                if ui.button("Mute selected (Ctrl+M)").clicked() {
                    self.toggle_mode(Mode::Never);
                    ui.close_menu();
                }
                if ui.button("Bypass selected (Ctrl+B)").clicked() {
                    self.toggle_mode(Mode::Bypass);
                    ui.close_menu();
                }
                if ui.button("Delete selected").clicked() {
                    self.delete_selected();
                    ui.close_menu();
                }
            });
            ui.menu_button("View", |ui| {
                ui.checkbox(&mut self.show_log, "Log");
                ui.checkbox(&mut self.settings.dark, "Dark theme");
            });
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                if ui
                    .button(RichText::new("Queue").strong())
                    .on_hover_text("Validate and run (Ctrl+Enter)")
                    .clicked()
                {
                    self.queue();
                }
                egui::ComboBox::from_id_salt("precision")
                    .selected_text(format!("precision: {}", self.settings.precision.as_str()))
                    .show_ui(ui, |ui| {
                        for p in [
                            Precision::Keep,
                            Precision::Fp16,
                            Precision::Bf16,
                            Precision::Fp32,
                        ] {
                            ui.selectable_value(&mut self.settings.precision, p, p.as_str());
                        }
                    });
            });
        });
    }

    fn status_bar(&self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            let name = self.doc_path.as_ref().map_or_else(
                || "unsaved workflow".to_owned(),
                |p| p.display().to_string(),
            );
            ui.label(name);
            ui.separator();
            ui.label(format!("{} nodes", self.doc.nodes.len()));
            ui.separator();
            ui.label(format!("output: {}", self.folders.output_dir().display()));
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                match self.egui_frame_ms {
                    Some(ms) => ui.label(format!("frame {ms:.1} ms (app {:.1} ms)", self.frame_ms)),
                    None => ui.label(format!("frame {:.1} ms", self.frame_ms)),
                };
            });
        });
    }

    fn log_panel(&self, ui: &mut egui::Ui) {
        egui::ScrollArea::vertical()
            .stick_to_bottom(true)
            .show(ui, |ui| {
                for e in &self.log {
                    let color = if e.error {
                        Color32::from_rgb(0xff, 0x80, 0x80)
                    } else {
                        ui.visuals().text_color()
                    };
                    ui.colored_label(color, &e.text);
                }
            });
    }

    fn sample_banner(&mut self, ui: &mut egui::Ui) {
        egui::Frame::group(ui.style())
            .fill(Color32::from_rgb(0x2b, 0x3a, 0x55))
            .show(ui, |ui| {
                ui.horizontal(|ui| {
                    ui.label(RichText::new("No checkpoints yet.").strong());
                    ui.label(format!(
                        "Put .safetensors or .ckpt files in {}, or:",
                        self.folders
                            .primary("checkpoints")
                            .map_or_else(String::new, |p| p.display().to_string())
                    ));
                    if ui.button("Create sample checkpoints").clicked()
                        && let Some(dir) =
                            self.folders.primary("checkpoints").map(Path::to_path_buf)
                    {
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
                    if ui.button("Open models folder").clicked()
                        && let Some(dir) = self.folders.primary("checkpoints")
                    {
                        let _ = std::fs::create_dir_all(dir);
                        if let Err(e) = opener::open(dir) {
                            self.notify(true, format!("cannot open {}: {e}", dir.display()));
                        }
                    }
                });
            });
    }

    fn windows(&mut self, ctx: &egui::Context) {
        if let Some((title, text)) = self.inspect.clone() {
            let mut open = true;
            egui::Window::new(format!("Inspect {title}"))
                .open(&mut open)
                .show(ctx, |ui| {
                    egui::ScrollArea::vertical().show(ui, |ui| ui.monospace(text));
                });
            if !open {
                self.inspect = None;
            }
        }
        if let Some(path) = self.confirm_delete.clone() {
            egui::Window::new("Delete file?")
                .collapsible(false)
                .anchor(Align2::CENTER_CENTER, [0.0, 0.0])
                .show(ctx, |ui| {
                    ui.label(format!("Delete {}? This cannot be undone.", path.display()));
                    ui.horizontal(|ui| {
                        if ui.button("Delete").clicked() {
                            self.files.send(Request::Delete(path.clone()));
                            self.confirm_delete = None;
                        }
                        if ui.button("Cancel").clicked() {
                            self.confirm_delete = None;
                        }
                    });
                });
        }
        if let Some(offer) = self.import_offer.clone() {
            egui::Window::new("Use this checkpoint?")
                .collapsible(false)
                .anchor(Align2::CENTER_CENTER, [0.0, 0.0])
                .show(ctx, |ui| {
                    ui.label(format!(
                        "{} is not in a models folder.",
                        offer.path.display()
                    ));
                    ui.horizontal(|ui| {
                        if ui.button("Link into models folder").clicked() {
                            self.import(&offer, true);
                            self.import_offer = None;
                        }
                        if ui.button("Copy into models folder").clicked() {
                            self.import(&offer, false);
                            self.import_offer = None;
                        }
                        if ui.button("Cancel").clicked() {
                            self.import_offer = None;
                        }
                    });
                });
        }
        if self.show_settings {
            let mut open = true;
            egui::Window::new("Settings")
                .open(&mut open)
                .show(ctx, |ui| self.settings_ui(ui));
            self.show_settings = open;
        }
    }

    fn settings_ui(&mut self, ui: &mut egui::Ui) {
        egui::Grid::new("settings").num_columns(3).show(ui, |ui| {
            let rows: [(&str, String, FolderPurpose); 3] = [
                (
                    "Base folder",
                    self.settings.base_dir.display().to_string(),
                    FolderPurpose::Base,
                ),
                (
                    "Models folder",
                    self.settings
                        .models_dir
                        .as_ref()
                        .map_or_else(|| "<base>/models".into(), |p| p.display().to_string()),
                    FolderPurpose::Models,
                ),
                (
                    "Output folder",
                    self.settings
                        .output_dir
                        .as_ref()
                        .map_or_else(|| "<base>/output".into(), |p| p.display().to_string()),
                    FolderPurpose::Output,
                ),
            ];
            for (label, value, purpose) in rows {
                ui.label(label);
                ui.label(value);
                if ui.button("Choose…").clicked() {
                    self.ask(DialogRequest::PickFolder { purpose });
                }
                ui.end_row();
            }
            ui.label("extra_model_paths.yaml");
            ui.label(
                self.settings
                    .extra_model_paths
                    .as_ref()
                    .map_or_else(|| "(none)".into(), |p| p.display().to_string()),
            );
            if ui.button("Choose…").clicked() {
                self.ask(DialogRequest::OpenExtraPaths);
            }
            ui.end_row();
        });
        ui.horizontal(|ui| {
            ui.label("Output precision");
            for p in [
                Precision::Keep,
                Precision::Fp16,
                Precision::Bf16,
                Precision::Fp32,
            ] {
                ui.selectable_value(&mut self.settings.precision, p, p.as_str());
            }
        });
        ui.checkbox(&mut self.settings.dark, "Dark theme");
    }

    fn toasts(&self, ctx: &egui::Context) {
        let recent: Vec<&LogEntry> = self
            .log
            .iter()
            .rev()
            .take_while(|e| e.at.elapsed() < Duration::from_secs(6))
            .take(4)
            .collect();
        if recent.is_empty() {
            return;
        }
        egui::Area::new(egui::Id::new("toasts"))
            .anchor(Align2::LEFT_BOTTOM, [12.0, -40.0])
            .order(egui::Order::Foreground)
            .show(ctx, |ui| {
                for e in recent.into_iter().rev() {
                    let fill = if e.error {
                        Color32::from_rgb(0x6b, 0x1d, 0x1d)
                    } else {
                        Color32::from_rgb(0x24, 0x4b, 0x2f)
                    };
                    egui::Frame::popup(ui.style()).fill(fill).show(ui, |ui| {
                        ui.label(RichText::new(&e.text).color(Color32::WHITE));
                    });
                }
            });
        ctx.request_repaint_after(Duration::from_millis(500));
    }

    // ------------------------------------------------------------------ used by the panels

    pub fn request_inspect(&mut self, entry: &OutputEntry) {
        self.inspect = Some((entry.name.clone(), entry.report.clone()));
    }
    pub fn request_delete(&mut self, path: PathBuf) {
        self.confirm_delete = Some(path);
    }
    pub fn notify_error(&mut self, text: String) {
        self.notify(true, text);
    }
    pub fn size_label(bytes: u64) -> String {
        human_bytes(bytes)
    }
}
