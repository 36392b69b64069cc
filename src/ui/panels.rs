//! The side panels: the job queue (state, current node, progress with ETA and throughput,
//! warnings, cancel) and the output browser (saved files, newest first, with their actions).

use egui::{Color32, ProgressBar, RichText};

use super::app::{AmalgamApp, JobState};

pub fn queue_panel(app: &mut AmalgamApp, ui: &mut egui::Ui) {
    if app.jobs.is_empty() {
        ui.label("Nothing queued yet. Press Queue (Ctrl+Enter) to run the graph.");
        return;
    }
    let mut cancel = None;
    let mut clear_done = false;
    egui::ScrollArea::vertical().show(ui, |ui| {
        for job in app.jobs.iter().rev() {
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
                    if matches!(job.state, JobState::Queued | JobState::Running)
                        && ui.button("Cancel").clicked()
                    {
                        cancel = Some(job.id);
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
                        AmalgamApp::size_label(rate as u64)
                    );
                    ui.add(ProgressBar::new(fraction).text(text));
                    if job.state == JobState::Running {
                        ui.small(p.current_key.as_str());
                    }
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
            clear_done = true;
        }
    });
    if let Some(id) = cancel {
        app.cancel_job(id);
    }
    if clear_done {
        app.jobs
            .retain(|j| matches!(j.state, JobState::Queued | JobState::Running));
    }
}

pub fn output_browser(app: &mut AmalgamApp, ui: &mut egui::Ui) {
    ui.label(format!("{}", app.folders.output_dir().display()));
    if app.outputs.is_empty() {
        ui.label("No saved files yet.");
        return;
    }
    let entries = app.outputs.clone();
    egui::ScrollArea::vertical().show(ui, |ui| {
        for e in &entries {
            egui::Frame::group(ui.style()).show(ui, |ui| {
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
                ui.small(format!(
                    "{} · {when} · {} · {wf}",
                    AmalgamApp::size_label(e.bytes),
                    e.architecture
                ));
                ui.horizontal_wrapped(|ui| {
                    if ui
                        .add_enabled(e.has_workflow, egui::Button::new("Open workflow"))
                        .clicked()
                    {
                        app.open_path(e.path.clone());
                    }
                    if ui.button("Reveal").clicked()
                        && let Err(err) = opener::reveal(&e.path)
                    {
                        app.notify_error(format!("cannot reveal {}: {err}", e.path.display()));
                    }
                    if ui.button("Copy path").clicked() {
                        ui.ctx().copy_text(e.path.display().to_string());
                    }
                    if ui.button("Inspect").clicked() {
                        app.request_inspect(e);
                    }
                    if ui.button("Delete").clicked() {
                        app.request_delete(e.path.clone());
                    }
                });
            });
        }
    });
}
