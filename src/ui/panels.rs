//! The side panels: the job queue (state, current node, progress with ETA and throughput,
//! warnings, cancel) and the output browser (saved images and checkpoints, newest first, with
//! their actions).
//! Each takes the data it shows and returns what the user asked for.

use std::path::{Path, PathBuf};

use egui::{Color32, ProgressBar, RichText};

use crate::model::report::human_bytes;

use super::command::Command;
use super::files::OutputEntry;
use super::jobs::{JobState, JobView};
use super::pictures::{Pictures, Size, Slot, fit};

/// The queue panel: one card per job, newest first.
pub fn queue_ui(ui: &mut egui::Ui, jobs: &[JobView]) -> Option<Command> {
    if jobs.is_empty() {
        ui.label("Nothing queued yet. Press Queue (Ctrl+Enter) to run the graph.");
        return None;
    }
    let mut command = None;
    egui::ScrollArea::vertical().show(ui, |ui| {
        for job in jobs.iter().rev() {
            egui::Frame::group(ui.style()).show(ui, |ui| {
                ui.horizontal(|ui| {
                    let color = match job.state {
                        JobState::Done => Color32::from_rgb(0x66, 0xbb, 0x6a),
                        JobState::Failed(_) => Color32::from_rgb(0xef, 0x53, 0x50),
                        JobState::Running => Color32::from_rgb(0x42, 0xa5, 0xf5),
                        _ => Color32::GRAY,
                    };
                    ui.label(RichText::new(format!("#{} {}", job.id, job.label)).strong());
                    ui.colored_label(color, job.state.label());
                    if job.state.is_active() && ui.button("Cancel").clicked() {
                        command = Some(Command::Cancel(job.id));
                    }
                });
                if let Some(n) = &job.current_node
                    && job.state == JobState::Running
                {
                    ui.label(format!("at {n}"));
                }
                if let Some(p) = &job.progress {
                    let fraction = if p.bytes_total > 0 {
                        p.bytes_done as f32 / p.bytes_total as f32
                    } else {
                        1.0
                    };
                    // A finished job's rate is over its run, not over the time since.
                    let elapsed = job
                        .seconds
                        .unwrap_or_else(|| job.started.map_or(0.0, |s| s.elapsed().as_secs_f64()))
                        .max(1e-3);
                    let rate = p.bytes_done as f64 / elapsed;
                    let eta = if rate > 0.0 {
                        (p.bytes_total - p.bytes_done) as f64 / rate
                    } else {
                        0.0
                    };
                    let text = format!(
                        "{}/{} tensors · {}/s · ETA {eta:.0} s",
                        p.tensors_done,
                        p.tensors_total,
                        human_bytes(rate as u64)
                    );
                    ui.add(ProgressBar::new(fraction).text(text));
                    if job.state == JobState::Running {
                        ui.small(p.current_key.as_str());
                    }
                }
                if let Some(s) = &job.step
                    && job.state == JobState::Running
                {
                    let fraction = s.step as f32 / s.total.max(1) as f32;
                    ui.add(ProgressBar::new(fraction).text(s.summary()));
                }
                match (&job.state, job.seconds) {
                    (JobState::Done, Some(s)) => {
                        ui.label(format!("finished in {s:.2} s"));
                    }
                    (JobState::Failed(msg), _) => {
                        ui.colored_label(Color32::from_rgb(0xff, 0x80, 0x80), msg);
                    }
                    (JobState::Running, _) => {
                        let secs = job.started.map_or(0.0, |s| s.elapsed().as_secs_f64());
                        ui.label(format!("elapsed {secs:.1} s"));
                        ui.ctx()
                            .request_repaint_after(std::time::Duration::from_millis(250));
                    }
                    (JobState::Queued, _) => {
                        ui.label(format!(
                            "waiting {:.0} s",
                            job.queued_at.elapsed().as_secs_f64()
                        ));
                    }
                    _ => {}
                }
                for o in &job.outputs {
                    let note = if o.cached {
                        " (unchanged since an earlier run)"
                    } else {
                        ""
                    };
                    ui.small(format!("{}{note}", o.path.display()));
                }
                if !job.warnings.is_empty() {
                    ui.collapsing(format!("{} warning(s)", job.warnings.len()), |ui| {
                        for w in &job.warnings {
                            ui.small(w);
                        }
                    });
                }
            });
        }
        if ui.button("Clear finished").clicked() {
            command = Some(Command::ClearFinished);
        }
    });
    command
}

/// Which saved files the output browser lists.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Shown {
    #[default]
    All,
    Checkpoints,
    Images,
}

/// Thumbnail size in the output browser, in points.
const THUMB: f32 = 72.0;

/// The output browser (gallery): the files under the output folder, newest first — images with
/// thumbnails (click to view), checkpoints with their architecture — and their actions.
pub fn outputs_ui(
    ui: &mut egui::Ui,
    output_dir: &Path,
    entries: &[OutputEntry],
    picked: &[PathBuf],
    shown: &mut Shown,
    pictures: &mut Pictures,
) -> Option<Command> {
    ui.label(format!("{}", output_dir.display()));
    ui.horizontal(|ui| {
        ui.selectable_value(shown, Shown::All, "All");
        ui.selectable_value(shown, Shown::Checkpoints, "Checkpoints");
        ui.selectable_value(shown, Shown::Images, "Images");
    });
    if entries.is_empty() {
        ui.label("No saved files yet.");
        return None;
    }
    let mut command = None;
    if let [a, b] = picked {
        let images = [a, b].iter().filter(|p| super::is_png_path(p)).count();
        if images == 1 {
            ui.small("Pick two images or two checkpoints to compare.");
        } else if ui.button("Compare the two picked files").clicked() {
            command = Some(Command::Compare {
                a: a.clone(),
                b: b.clone(),
            });
        }
    } else {
        ui.small("Tick \"compare\" on two files to compare them.");
    }
    let wanted = |e: &&OutputEntry| match shown {
        Shown::All => true,
        Shown::Checkpoints => e.image.is_none(),
        Shown::Images => e.image.is_some(),
    };
    egui::ScrollArea::vertical().show(ui, |ui| {
        for e in entries.iter().filter(wanted) {
            egui::Frame::group(ui.style()).show(ui, |ui| {
                ui.horizontal(|ui| {
                    if e.image.is_some() {
                        match pictures.get(&e.path, Size::Thumb) {
                            Slot::Ready(t) => {
                                let size = fit(&t, egui::Vec2::splat(THUMB), 4.0);
                                if ui
                                    .add(egui::ImageButton::new((t.id(), size)))
                                    .on_hover_text("View")
                                    .clicked()
                                {
                                    command = Some(Command::OpenImage(e.path.clone()));
                                }
                            }
                            Slot::Loading => {
                                ui.add_sized([THUMB, THUMB], egui::Spinner::new());
                            }
                            Slot::Failed(why) => {
                                ui.colored_label(Color32::LIGHT_RED, "⚠").on_hover_text(why);
                            }
                        }
                    }
                    ui.vertical(|ui| entry_ui(ui, e, picked, &mut command));
                });
            });
        }
    });
    command
}

/// One saved file's name, facts and actions.
fn entry_ui(ui: &mut egui::Ui, e: &OutputEntry, picked: &[PathBuf], command: &mut Option<Command>) {
    ui.label(RichText::new(&e.name).strong());
    let when = e.modified.map_or_else(String::new, |m| {
        let t: chrono::DateTime<chrono::Local> = m.into();
        t.format("%Y-%m-%d %H:%M:%S").to_string()
    });
    let wf = if e.has_workflow {
        "workflow embedded"
    } else {
        "no workflow"
    };
    let what = match e.image {
        Some((w, h)) => format!("{w} × {h}"),
        None => e.architecture.clone(),
    };
    ui.small(format!("{} · {when} · {what} · {wf}", human_bytes(e.bytes)));
    ui.horizontal_wrapped(|ui| {
        if ui
            .add_enabled(e.has_workflow, egui::Button::new("Open workflow"))
            .clicked()
        {
            *command = Some(Command::Open(e.path.clone()));
        }
        if e.image.is_some() && ui.button("View").clicked() {
            *command = Some(Command::OpenImage(e.path.clone()));
        }
        if ui.button("Reveal").clicked() {
            *command = Some(Command::Reveal(e.path.clone()));
        }
        if ui.button("Copy path").clicked() {
            ui.ctx().copy_text(e.path.display().to_string());
        }
        if ui.button("Inspect").clicked() {
            *command = Some(Command::Inspect {
                title: e.name.clone(),
                report: e.report.clone(),
            });
        }
        if ui.button("Delete").clicked() {
            *command = Some(Command::AskDelete(e.path.clone()));
        }
        let mut ticked = picked.contains(&e.path);
        if e.architecture != "?" && ui.checkbox(&mut ticked, "compare").changed() {
            *command = Some(Command::PickForCompare(e.path.clone()));
        }
    });
}
