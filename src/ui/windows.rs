//! Windows over the canvas — inspect report, delete confirmation, import offer and progress,
//! settings — plus the log panel, the toasts, the no-models banner and the drop overlay. Each
//! takes the data it shows and returns what the user asked for.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use egui::{Align2, Color32, RichText};

use crate::model::report::human_bytes;

use super::command::Command;
use super::files::FolderPurpose;
use super::menu::precision_ui;
use super::settings::Settings;

/// A log line (also shown briefly as a toast).
#[derive(Clone, Debug)]
pub struct LogEntry {
    pub at: Instant,
    pub error: bool,
    pub text: String,
}

/// An import the file thread is running: bytes copied so far of the whole file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportProgress {
    pub path: PathBuf,
    pub done: u64,
    pub total: u64,
}

/// The open windows and what they show.
#[derive(Debug, Default)]
pub struct Modals {
    /// Title and text of an `inspect` report.
    pub inspect: Option<(String, String)>,
    pub confirm_delete: Option<PathBuf>,
    /// A dropped checkpoint outside the model folders, offered for import.
    pub import_offer: Option<PathBuf>,
    /// An import under way.
    pub importing: Option<ImportProgress>,
    pub show_settings: bool,
}

/// Draws the open windows; closing one updates `modals`, a choice becomes a command.
pub fn modals_ui(
    ctx: &egui::Context,
    modals: &mut Modals,
    settings: &mut Settings,
) -> Option<Command> {
    let mut command = None;
    if let Some((title, text)) = &modals.inspect {
        let mut open = true;
        egui::Window::new(format!("Inspect {title}"))
            .open(&mut open)
            .show(ctx, |ui| {
                egui::ScrollArea::vertical().show(ui, |ui| ui.monospace(text.as_str()));
            });
        if !open {
            modals.inspect = None;
        }
    }
    if let Some(path) = modals.confirm_delete.clone() {
        let text = format!("Delete {}? This cannot be undone.", path.display());
        let buttons = vec![("Delete", Some(Command::Delete(path))), ("Cancel", None)];
        if let Some(chosen) = question_ui(ctx, "Delete file?", text, buttons) {
            command = chosen;
            modals.confirm_delete = None;
        }
    }
    if let Some(path) = modals.import_offer.clone() {
        let text = format!("{} is not in a models folder.", path.display());
        let import = |link| {
            Some(Command::Import {
                path: path.clone(),
                link,
            })
        };
        let buttons = vec![
            ("Link into models folder", import(true)),
            ("Copy into models folder", import(false)),
            ("Cancel", None),
        ];
        if let Some(chosen) = question_ui(ctx, "Use this checkpoint?", text, buttons) {
            command = chosen;
            modals.import_offer = None;
        }
    }
    if let Some(p) = &modals.importing {
        egui::Window::new("Importing checkpoint")
            .collapsible(false)
            .anchor(Align2::CENTER_CENTER, [0.0, 0.0])
            .show(ctx, |ui| {
                ui.label(format!("Copying {}", p.path.display()));
                let fraction = if p.total > 0 {
                    p.done as f32 / p.total as f32
                } else {
                    0.0
                };
                ui.add(egui::ProgressBar::new(fraction).text(format!(
                    "{} of {}",
                    human_bytes(p.done),
                    human_bytes(p.total)
                )));
                if ui.button("Cancel import").clicked() {
                    command = Some(Command::CancelImport);
                }
            });
    }
    if modals.show_settings {
        let mut open = true;
        egui::Window::new("Settings")
            .open(&mut open)
            .show(ctx, |ui| {
                if let Some(c) = settings_ui(ui, settings) {
                    command = Some(c);
                }
            });
        modals.show_settings = open;
    }
    command
}

/// A centred question with a row of buttons. Returns the clicked button's command (`Some(None)`
/// for a button that only closes the question), or `None` while it is unanswered.
fn question_ui(
    ctx: &egui::Context,
    title: &str,
    text: String,
    buttons: Vec<(&str, Option<Command>)>,
) -> Option<Option<Command>> {
    let mut chosen = None;
    egui::Window::new(title)
        .collapsible(false)
        .anchor(Align2::CENTER_CENTER, [0.0, 0.0])
        .show(ctx, |ui| {
            ui.label(text);
            ui.horizontal(|ui| {
                for (label, command) in buttons {
                    if ui.button(label).clicked() {
                        chosen = Some(command);
                    }
                }
            });
        });
    chosen
}

/// The settings window's contents: folders (chosen through dialogs), precision, theme, and what
/// saved files carry (metadata on or off, modelspec title, author and description).
pub fn settings_ui(ui: &mut egui::Ui, settings: &mut Settings) -> Option<Command> {
    let mut command = None;
    egui::Grid::new("settings").num_columns(3).show(ui, |ui| {
        let shown = |p: &Option<PathBuf>, default: &str| {
            p.as_ref()
                .map_or_else(|| default.to_owned(), |p| p.display().to_string())
        };
        let rows: [(&str, String, FolderPurpose); 3] = [
            (
                "Base folder",
                settings.base_dir.display().to_string(),
                FolderPurpose::Base,
            ),
            (
                "Models folder",
                shown(&settings.models_dir, "<base>/models"),
                FolderPurpose::Models,
            ),
            (
                "Output folder",
                shown(&settings.output_dir, "<base>/output"),
                FolderPurpose::Output,
            ),
        ];
        for (label, value, purpose) in rows {
            ui.label(label);
            ui.label(value);
            if ui.button("Choose…").clicked() {
                command = Some(Command::PickFolder(purpose));
            }
            ui.end_row();
        }
        ui.label("extra_model_paths.yaml");
        ui.label(shown(&settings.extra_model_paths, "(none)"));
        if ui.button("Choose…").clicked() {
            command = Some(Command::PickExtraPaths);
        }
        ui.end_row();
    });
    ui.horizontal(|ui| {
        ui.label("Output precision");
        precision_ui(ui, &mut settings.precision);
    });
    ui.checkbox(&mut settings.dark, "Dark theme");
    ui.separator();
    let m = &mut settings.metadata;
    ui.checkbox(&mut m.disabled, "Disable metadata")
        .on_hover_text(
            "No prompt or workflow in saved checkpoints and images (ComfyUI's --disable-metadata)",
        );
    egui::Grid::new("modelspec").num_columns(2).show(ui, |ui| {
        for (label, value) in [
            ("Model title", &mut m.title),
            ("Author", &mut m.author),
            ("Description", &mut m.description),
        ] {
            ui.label(label);
            let mut text = value.clone().unwrap_or_default();
            if ui.text_edit_singleline(&mut text).changed() {
                *value = (!text.is_empty()).then_some(text);
            }
            ui.end_row();
        }
    });
    ui.small("Written as modelspec.title / .author / .description of saved models.");
    command
}

pub fn log_ui(ui: &mut egui::Ui, log: &[LogEntry]) {
    egui::ScrollArea::vertical()
        .stick_to_bottom(true)
        .show(ui, |ui| {
            for e in log {
                let color = if e.error {
                    Color32::from_rgb(0xff, 0x80, 0x80)
                } else {
                    ui.visuals().text_color()
                };
                ui.colored_label(color, &e.text);
            }
        });
}

/// The latest log lines, briefly, in the bottom-left corner.
pub fn toasts_ui(ctx: &egui::Context, log: &[LogEntry]) {
    let recent: Vec<&LogEntry> = log
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

/// "No checkpoints yet": where to put them, or sample checkpoints to start with.
pub fn sample_banner_ui(ui: &mut egui::Ui, checkpoints_dir: Option<&Path>) -> Option<Command> {
    let mut command = None;
    egui::Frame::group(ui.style())
        .fill(Color32::from_rgb(0x2b, 0x3a, 0x55))
        .show(ui, |ui| {
            ui.horizontal(|ui| {
                ui.label(RichText::new("No checkpoints yet.").strong());
                ui.label(format!(
                    "Put .safetensors or .ckpt files in {}, or:",
                    checkpoints_dir.map_or_else(String::new, |p| p.display().to_string())
                ));
                if ui.button("Create sample checkpoints").clicked() {
                    command = Some(Command::WriteSamples);
                }
                if ui.button("Open models folder").clicked() {
                    command = Some(Command::OpenModelsFolder);
                }
            });
        });
    command
}

/// Darkens the window while files are dragged over it.
pub fn drop_overlay_ui(ctx: &egui::Context) {
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
