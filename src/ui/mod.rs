//! The desktop app (egui only; no tensor code).
//!
//! - [`app`]: the application state and its frame.
//! - [`canvas`]: egui_node_graph2 adapters over the node registry and the workflow document.
//! - [`panels`]: the queue panel and the output browser.
//! - [`files`]: file reads, folder scans and native dialogs, off the UI thread.
//! - [`examples`]: the default graph and the bundled example workflows.
//!
//! Threads: the UI thread draws and applies intents; the engine's `amalgam-worker` runs merges;
//! `amalgam-files` reads and scans; each wakes the UI with `request_repaint` when it has news.

pub mod app;
pub mod canvas;
pub mod examples;
pub mod files;
pub mod panels;

use std::path::PathBuf;

use app::{AmalgamApp, Persisted, Settings};

/// Key under which eframe stores the app's state.
const STORAGE_KEY: &str = "amalgam";

struct EframeApp {
    app: AmalgamApp,
    /// When the process started, until the first frame has been reported.
    started: Option<std::time::Instant>,
}

impl eframe::App for EframeApp {
    fn update(&mut self, ctx: &egui::Context, frame: &mut eframe::Frame) {
        // egui's own measure of the previous frame (layout, tessellation, our code).
        self.app.egui_frame_ms = frame.info().cpu_usage.map(|s| s * 1000.0);
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
    /// When the process started (for the start-up time report).
    pub started: Option<std::time::Instant>,
}

/// Opens the window.
pub fn run(launch: Launch) -> anyhow::Result<()> {
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
            let saved: Option<Persisted> = cc.storage.and_then(|s| eframe::get_value(s, STORAGE_KEY));
            let cwd = std::env::current_dir().unwrap_or_default();
            let mut settings = saved.as_ref().map_or_else(|| Settings::new(cwd.clone()), |p| p.settings.clone());
            if let Some(b) = launch.base_dir {
                settings.base_dir = b;
            }
            if launch.models_dir.is_some() {
                settings.models_dir = launch.models_dir;
            }
            if launch.output_dir.is_some() {
                settings.output_dir = launch.output_dir;
            }
            if launch.extra_model_paths.is_some() {
                settings.extra_model_paths = launch.extra_model_paths;
            }
            let restored = saved.and_then(|p| {
                let value = serde_json::from_str(&p.workflow).ok()?;
                let (doc, _) = crate::graph::Document::from_json(value).ok()?;
                Some((doc, p.workflow_path))
            });
            let ctx = cc.egui_ctx.clone();
            let mut app = AmalgamApp::new(settings, restored, Box::new(files::NativeDialogs), move || ctx.request_repaint())?;
            if let Some(path) = launch.open {
                app.open_path(path);
            }
            Ok(Box::new(EframeApp { app, started: launch.started }))
        }),
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "cannot open the window ({e}); without a display, use a subcommand such as `amalgam run WORKFLOW`"
        )
    })
}
