//! The menu bar, the status bar, keyboard shortcuts and the precision picker. Each takes the
//! data it shows (or edits, for view toggles and settings) and returns what the user asked for.

use std::path::{Path, PathBuf};

use egui::{Key, KeyboardShortcut, Modifiers, RichText};

use crate::engine::Precision;
use crate::graph::Mode;

use super::command::Command;

/// What the menus show besides the settings they edit.
pub struct MenuState<'a> {
    pub can_undo: bool,
    pub can_redo: bool,
    pub recent: &'a [PathBuf],
    /// Names of the examples, in `graph::examples::all()` order.
    pub examples: &'a [&'static str],
    /// With exactly two Load Checkpoint nodes selected: their node ids and checkpoint names, or
    /// why they cannot be compared.
    pub compare: Option<Result<[(crate::graph::NodeId, String); 2], String>>,
    /// The graph's sampling time at the last sampler's pace, once one has run.
    pub estimate: Option<f64>,
}

/// Toggles the menus edit in place.
pub struct ViewToggles<'a> {
    pub show_log: &'a mut bool,
    pub dark: &'a mut bool,
    pub precision: &'a mut Precision,
    pub first_image_only: &'a mut bool,
}

pub fn menu_bar_ui(ui: &mut egui::Ui, state: &MenuState, view: &mut ViewToggles) -> Vec<Command> {
    let mut chosen = Vec::new();
    // A menu entry: its command when clicked (which also closes the menu).
    let item = |ui: &mut egui::Ui, enabled: bool, label: &str, cmd: Command| {
        let clicked = ui.add_enabled(enabled, egui::Button::new(label)).clicked();
        if clicked {
            ui.close_menu();
        }
        clicked.then_some(cmd)
    };
    egui::menu::bar(ui, |ui| {
        ui.menu_button("File", |ui| {
            chosen.extend(item(ui, true, "New", Command::New));
            chosen.extend(item(ui, true, "Open…", Command::AskOpen));
            chosen.extend(item(ui, true, "Save", Command::Save));
            chosen.extend(item(ui, true, "Save As…", Command::SaveAs));
            chosen.extend(item(ui, true, "Export API prompt…", Command::ExportPrompt));
            ui.menu_button("Recent", |ui| {
                if state.recent.is_empty() {
                    ui.label("(none)");
                }
                for p in state.recent {
                    chosen.extend(item(
                        ui,
                        true,
                        &p.display().to_string(),
                        Command::Open(p.clone()),
                    ));
                }
            });
            ui.menu_button("Examples", |ui| {
                for (i, name) in state.examples.iter().enumerate() {
                    chosen.extend(item(ui, true, name, Command::Example(i)));
                }
            });
            ui.separator();
            chosen.extend(item(ui, true, "Settings…", Command::ShowSettings));
        });
        ui.menu_button("Edit", |ui| {
            chosen.extend(item(ui, state.can_undo, "Undo", Command::Undo));
            chosen.extend(item(ui, state.can_redo, "Redo", Command::Redo));
            ui.separator();
            chosen.extend(item(ui, true, "Select all", Command::SelectAll));
            chosen.extend(item(
                ui,
                true,
                "Mute selected (Ctrl+M)",
                Command::ToggleMode(Mode::Never),
            ));
            chosen.extend(item(
                ui,
                true,
                "Bypass selected (Ctrl+B)",
                Command::ToggleMode(Mode::Bypass),
            ));
            chosen.extend(item(ui, true, "Delete selected", Command::DeleteSelected));
        });
        ui.menu_button("View", |ui| {
            ui.checkbox(view.show_log, "Log");
            ui.checkbox(view.dark, "Dark theme");
        });
        ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
            if ui
                .button(RichText::new("Queue").strong())
                .on_hover_text("Validate and run (Ctrl+Enter)")
                .clicked()
            {
                chosen.push(Command::Queue);
            }
            if let Some(seconds) = state.estimate {
                ui.label(format!("≈ {}", crate::graph::estimate::duration_text(seconds)))
                    .on_hover_text(
                        "Sampling time of this graph at the pace of the last sampler that ran \
                         (scaled by latent size, steps and images; loading and merging not counted)",
                    );
            }
            ui.checkbox(view.first_image_only, "first image only")
                .on_hover_text(
                    "Sample only image 0 of each batch: the same image as a full batch gives, \
                     in a fraction of the time on a CPU",
                );
            egui::ComboBox::from_id_salt("precision")
                .selected_text(format!("precision: {}", view.precision.as_str()))
                .show_ui(ui, |ui| precision_ui(ui, view.precision));
            // The names are taken now, while drawing: the canvas clears its selection on any
            // click outside it, in this same frame, before commands run.
            if let Some(Ok(pair)) = &state.compare
                && ui
                    .button("Compare checkpoints")
                    .on_hover_text("Compare the two selected Load Checkpoint nodes' files")
                    .clicked()
            {
                chosen.push(Command::CompareCheckpoints(pair.clone()));
            }
            if let Some(Err(why)) = &state.compare {
                ui.add_enabled(false, egui::Button::new("Compare checkpoints"))
                    .on_disabled_hover_text(why.as_str());
            }
        });
    });
    chosen
}

/// The output precision choices, as selectable values.
pub fn precision_ui(ui: &mut egui::Ui, precision: &mut Precision) {
    for p in Precision::ALL {
        ui.selectable_value(precision, p, p.as_str());
    }
}

/// What the status bar shows.
pub struct Status<'a> {
    pub path: Option<&'a Path>,
    pub nodes: usize,
    pub output_dir: &'a Path,
    pub frame_ms: f32,
    pub egui_frame_ms: Option<f32>,
}

pub fn status_bar_ui(ui: &mut egui::Ui, status: &Status) {
    ui.horizontal(|ui| {
        let name = status.path.map_or_else(
            || "unsaved workflow".to_owned(),
            |p| p.display().to_string(),
        );
        ui.label(name);
        ui.separator();
        ui.label(format!("{} nodes", status.nodes));
        ui.separator();
        ui.label(format!("output: {}", status.output_dir.display()));
        ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
            match status.egui_frame_ms {
                Some(ms) => ui.label(format!("frame {ms:.1} ms (app {:.1} ms)", status.frame_ms)),
                None => ui.label(format!("frame {:.1} ms", status.frame_ms)),
            };
        });
    });
}

/// The keyboard shortcuts pressed this frame. Editing shortcuts are left to a focused text
/// field (Ctrl+Z in a text box undoes the typing, not the graph).
pub fn shortcuts(ctx: &egui::Context) -> Vec<Command> {
    let sc = |m: Modifiers, k: Key| KeyboardShortcut::new(m, k);
    let typing = ctx.wants_keyboard_input();
    let pressed = |s: KeyboardShortcut| ctx.input_mut(|i| i.consume_shortcut(&s));
    let mut commands = Vec::new();
    let global = [
        (sc(Modifiers::COMMAND, Key::Enter), Command::Queue),
        (sc(Modifiers::COMMAND, Key::O), Command::AskOpen),
        (sc(Modifiers::COMMAND, Key::S), Command::Save),
    ];
    for (s, cmd) in global {
        if pressed(s) {
            commands.push(cmd);
        }
    }
    if typing {
        return commands;
    }
    if pressed(sc(Modifiers::COMMAND | Modifiers::SHIFT, Key::Z))
        || pressed(sc(Modifiers::COMMAND, Key::Y))
    {
        commands.push(Command::Redo);
    }
    let editing = [
        (sc(Modifiers::COMMAND, Key::Z), Command::Undo),
        (
            sc(Modifiers::COMMAND, Key::M),
            Command::ToggleMode(Mode::Never),
        ),
        (
            sc(Modifiers::COMMAND, Key::B),
            Command::ToggleMode(Mode::Bypass),
        ),
        (sc(Modifiers::COMMAND, Key::A), Command::SelectAll),
        (sc(Modifiers::NONE, Key::Delete), Command::DeleteSelected),
    ];
    for (s, cmd) in editing {
        if pressed(s) {
            commands.push(cmd);
        }
    }
    commands
}
