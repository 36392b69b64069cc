//! The desktop app (egui only; no tensor code).
//!
//! - [`app`]: the application state, its frame, and the one place commands are applied.
//! - [`command`]: what a click, menu item or shortcut asks for, as data.
//! - [`document`]: the open document and its undo history (no egui).
//! - [`jobs`]: jobs as the queue shows them, following the engine's events (no egui).
//! - [`compare`]: the Compare window (a heat-map of two checkpoints' differences).
//! - [`canvas`]: egui_node_graph2 adapters over the node registry and the workflow document;
//!   [`canvas::results`] draws what runs leave on nodes (images, live sampler previews).
//! - [`pictures`]: decoded images as textures (nodes, gallery, viewer, sweeps).
//! - [`viewer`]: the image viewer (fit / 100 %, zoom, pan, two images side by side or slider).
//! - [`sweep`]: ratio sweeps — one job per value of a FLOAT widget, and their grid.
//! - [`menu`], [`panels`], [`windows`]: `*_ui` functions that draw what they are given and
//!   return [`command::Command`]s.
//! - [`files`]: file reads, folder scans, imports and native dialogs, off the UI thread.
//! - [`settings`]: what persists between runs.
//!
//! Threads: the UI thread draws and applies commands; the engine's `amalgam-worker` runs merges;
//! `amalgam-files` reads, scans and imports; `amalgam-pictures` decodes images and saves sweep
//! grids; each wakes the UI with `request_repaint` when it has
//! news.

pub mod app;
pub mod canvas;
pub mod command;
pub mod compare;
pub mod document;
pub mod files;
pub mod jobs;
pub mod menu;
pub mod panels;
pub mod pictures;
pub mod settings;
pub mod sweep;
pub mod viewer;
pub mod windows;

use std::path::PathBuf;

use app::AmalgamApp;
use settings::{Persisted, Settings};

/// Key under which eframe stores the app's state.
const STORAGE_KEY: &str = "amalgam";

struct EframeApp {
    app: AmalgamApp,
    /// When the process started, until the first frame has been reported.
    started: Option<std::time::Instant>,
    /// With `AMALGAM_FRAME_STATS` set: frame times of the current second.
    stats: Option<FrameStats>,
}

/// Frame-time statistics printed once a second (`AMALGAM_FRAME_STATS=1`), for profiling. Frames
/// are counted as they happen: the app repaints on input and on worker news, at most at 60 Hz.
struct FrameStats {
    since: std::time::Instant,
    cpu_ms: Vec<f32>,
}

impl FrameStats {
    fn record(&mut self, cpu_ms: Option<f32>) {
        if let Some(ms) = cpu_ms {
            self.cpu_ms.push(ms);
        }
        if self.since.elapsed() >= std::time::Duration::from_secs(1) && !self.cpu_ms.is_empty() {
            let n = self.cpu_ms.len();
            let avg = self.cpu_ms.iter().sum::<f32>() / n as f32;
            let max = self.cpu_ms.iter().copied().fold(0.0, f32::max);
            eprintln!(
                "amalgam: {n} frames in the last second, egui frame time avg {avg:.2} ms, max {max:.2} ms"
            );
            self.cpu_ms.clear();
            self.since = std::time::Instant::now();
        }
    }
}

impl eframe::App for EframeApp {
    fn update(&mut self, ctx: &egui::Context, frame: &mut eframe::Frame) {
        // egui's own measure of the previous frame (layout, tessellation, our code).
        self.app.egui_frame_ms = frame.info().cpu_usage.map(|s| s * 1000.0);
        if let Some(stats) = &mut self.stats {
            stats.record(self.app.egui_frame_ms);
        }
        self.app.ui(ctx);
        if let Some(t) = self.started.take() {
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            eprintln!("amalgam: first frame {ms:.0} ms after start");
            self.app.notify(false, format!("ready in {ms:.0} ms"));
        }
    }
    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, STORAGE_KEY, &self.app.persisted());
    }
}

/// Command-line choices for the window; given folders win over saved settings.
#[derive(Debug, Default)]
pub struct Launch {
    pub base_dir: Option<PathBuf>,
    pub models_dir: Option<PathBuf>,
    pub output_dir: Option<PathBuf>,
    pub extra_model_paths: Option<PathBuf>,
    /// A workflow to open at start-up.
    pub open: Option<PathBuf>,
    /// Two checkpoints to compare at start-up (the Compare window opens when it is done).
    pub compare: Option<(PathBuf, PathBuf)>,
    /// Sweeps to queue once the opened workflow is loaded (`NODE.WIDGET=FROM:TO:COUNT`).
    pub sweep: Vec<String>,
    /// When the process started (for the start-up time report).
    pub started: Option<std::time::Instant>,
}

/// A path's file name for labels (the whole path when it has none).
pub(crate) fn file_name(p: &std::path::Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Whether a path names a PNG, by extension (saved images, the output browser's own files).
pub(crate) fn is_png_path(p: &std::path::Path) -> bool {
    p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"))
}

/// The settings and workflow to start with: the saved ones (defaults on a first run), with the
/// folders given on the command line winning.
pub fn startup_state(
    saved: Option<Persisted>,
    launch: &Launch,
    cwd: PathBuf,
) -> (Settings, Option<(crate::graph::Document, Option<PathBuf>)>) {
    let mut settings = saved
        .as_ref()
        .map_or_else(|| Settings::new(cwd), |p| p.settings.clone());
    if let Some(b) = &launch.base_dir {
        settings.base_dir.clone_from(b);
    }
    if launch.models_dir.is_some() {
        settings.models_dir.clone_from(&launch.models_dir);
    }
    if launch.output_dir.is_some() {
        settings.output_dir.clone_from(&launch.output_dir);
    }
    if launch.extra_model_paths.is_some() {
        settings
            .extra_model_paths
            .clone_from(&launch.extra_model_paths);
    }
    let restored = saved.and_then(|p| {
        let value = serde_json::from_str(&p.workflow).ok()?;
        let (doc, _) = crate::graph::Document::from_json(value).ok()?;
        Some((doc, p.workflow_path))
    });
    (settings, restored)
}

/// Why the window could not be opened (no display, no GL): says what to do instead.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot open the window ({0}); without a display, use a subcommand such as `amalgam run WORKFLOW`"
)]
pub struct WindowError(String);

/// Opens the window.
pub fn run(launch: Launch) -> Result<(), WindowError> {
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("Amalgam")
            .with_inner_size([1400.0, 850.0])
            .with_drag_and_drop(true),
        persist_window: true,
        ..Default::default()
    };
    eframe::run_native(
        "Amalgam",
        options,
        Box::new(move |cc| {
            let saved: Option<Persisted> =
                cc.storage.and_then(|s| eframe::get_value(s, STORAGE_KEY));
            let cwd = std::env::current_dir().unwrap_or_default();
            let (settings, restored) = startup_state(saved, &launch, cwd);
            let ctx = cc.egui_ctx.clone();
            // Background threads report often (a merge sends hundreds of progress events a
            // second); repainting at most 60 times a second leaves the CPU to the merge.
            let wake = move || ctx.request_repaint_after(std::time::Duration::from_millis(16));
            let mut app =
                AmalgamApp::new(settings, restored, Box::new(files::NativeDialogs), wake)?;
            if let Some(path) = launch.open.clone() {
                app.results.pending_sweep.clone_from(&launch.sweep);
                app.open_path(path);
            }
            if let Some((a, b)) = launch.compare.clone() {
                app.compare_files(a, b);
            }
            let stats = std::env::var_os("AMALGAM_FRAME_STATS").map(|_| FrameStats {
                since: std::time::Instant::now(),
                cpu_ms: Vec::new(),
            });
            Ok(Box::new(EframeApp {
                app,
                started: launch.started,
                stats,
            }))
        }),
    )
    .map_err(|e| WindowError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_workflow_and_settings_come_back_and_the_command_line_wins() {
        let doc = crate::graph::examples::block_merge("a.safetensors", "b.safetensors");
        let mut settings = Settings::new(PathBuf::from("/saved/base"));
        settings.precision = crate::engine::Precision::Fp16;
        settings.output_dir = Some(PathBuf::from("/saved/out"));
        let saved = Persisted {
            settings,
            workflow: serde_json::to_string(&doc.to_json()).expect("json"),
            workflow_path: Some(PathBuf::from("/w/blocks.json")),
        };
        // Through serde, as eframe stores it (in RON; JSON here, same derive).
        let stored = serde_json::to_string(&saved).expect("serialise");
        let saved: Persisted = serde_json::from_str(&stored).expect("deserialise");
        let launch = Launch {
            base_dir: Some(PathBuf::from("/cli/base")),
            ..Launch::default()
        };
        let (s, restored) = startup_state(Some(saved), &launch, PathBuf::from("/cwd"));
        assert_eq!(s.base_dir, PathBuf::from("/cli/base"), "command line wins");
        assert_eq!(
            s.output_dir,
            Some(PathBuf::from("/saved/out")),
            "saved folders kept"
        );
        assert_eq!(s.precision, crate::engine::Precision::Fp16);
        let (restored, path) = restored.expect("workflow restored");
        assert_eq!(restored.to_json(), doc.to_json());
        assert_eq!(path, Some(PathBuf::from("/w/blocks.json")));
        // First run: defaults, the current directory as base, no workflow.
        let (s, restored) = startup_state(None, &Launch::default(), PathBuf::from("/cwd"));
        assert_eq!(s, Settings::new(PathBuf::from("/cwd")));
        assert!(restored.is_none());
    }
}
