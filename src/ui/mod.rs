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

struct EframeApp(AmalgamApp);

impl eframe::App for EframeApp {
    fn update(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.0.ui(ctx);
    }
    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, STORAGE_KEY, &self.0.persisted());
    }
}

/// Opens the window. `base_dir` etc. come from the command line and win over saved settings.
pub fn run(
    base_dir: Option<PathBuf>,
    models_dir: Option<PathBuf>,
    output_dir: Option<PathBuf>,
    extra: Option<PathBuf>,
) -> anyhow::Result<()> {
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
            let mut settings = saved
                .as_ref()
                .map_or_else(|| Settings::new(cwd.clone()), |p| p.settings.clone());
            if let Some(b) = base_dir {
                settings.base_dir = b;
            }
            if models_dir.is_some() {
                settings.models_dir = models_dir;
            }
            if output_dir.is_some() {
                settings.output_dir = output_dir;
            }
            if extra.is_some() {
                settings.extra_model_paths = extra;
            }
            let restored = saved.and_then(|p| {
                let value = serde_json::from_str(&p.workflow).ok()?;
                let (doc, _) = crate::graph::Document::from_json(value).ok()?;
                Some((doc, p.workflow_path))
            });
            let ctx = cc.egui_ctx.clone();
            let app = AmalgamApp::new(
                settings,
                restored,
                Box::new(files::NativeDialogs),
                move || ctx.request_repaint(),
            )?;
            Ok(Box::new(EframeApp(app)))
        }),
    )
    .map_err(|e| anyhow::anyhow!("cannot open the window: {e}"))
}
