//! What runs produced, as the app shows it: the latest images on the SaveImage / PreviewImage
//! nodes, the running sampler's live preview, the image viewer, and sweeps (set-up, queueing one
//! job per value, their grids). Split from `app.rs`; the same [`AmalgamApp`], the same one
//! place where commands are applied.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::engine::SavedFile;
use crate::engine::worker::JobId;
use crate::format::raster::Raster;
use crate::graph::subgraph::root_node_of;
use crate::graph::{NodeId, estimate};
use crate::ui::canvas::results::{CanvasAsk, LiveStep, NodeImages};
use crate::ui::command::Command;
use crate::ui::jobs::JobState;
use crate::ui::pictures::{self, Pictures, Size};
use crate::ui::sweep::{self, CellState, Setup, Sweep};
use crate::ui::viewer::{Viewer, viewer_ui};

use super::AmalgamApp;

/// Pictures and what shows them.
pub struct Results {
    pub pictures: Pictures,
    pub viewer: Option<Viewer>,
    pub sweeps: Vec<Sweep>,
    pub sweep_setup: Option<Setup>,
    /// The latest images of each node, from the last graph job that saved any there.
    pub node_images: HashMap<NodeId, Vec<PathBuf>>,
    /// The (job, node, step) whose preview is on its node.
    shown_step: Option<(JobId, String, usize)>,
    /// Which files the output browser lists.
    pub shown: crate::ui::panels::Shown,
    /// Sweep specs from the command line, queued when the opened workflow has loaded.
    pub pending_sweep: Vec<String>,
    /// Seconds per latent pixel-step of the last sampler seen running (its step time over its
    /// latent's pixels times the images it samples).
    pub pace: Option<f64>,
    /// Per queued job, latent pixels × images per step of each sampler node.
    job_work: HashMap<JobId, HashMap<String, u64>>,
    /// The document and setting the estimate was made for, and its pixel-steps.
    estimated: Option<(crate::graph::Document, bool, u64)>,
}

impl Results {
    pub fn new(wake: Box<dyn Fn() + Send>) -> std::io::Result<Results> {
        Ok(Results {
            pictures: Pictures::spawn(wake)?,
            viewer: None,
            sweeps: Vec::new(),
            sweep_setup: None,
            node_images: HashMap::new(),
            shown_step: None,
            shown: Default::default(),
            pending_sweep: Vec::new(),
            pace: None,
            job_work: HashMap::new(),
            estimated: None,
        })
    }

    /// What each sampler of a prompt samples per step (latent pixels × images), by node.
    pub fn sampler_work(
        prompt: &crate::graph::Prompt,
        first_image_only: bool,
    ) -> HashMap<String, u64> {
        estimate::sampler_work(prompt, first_image_only)
            .into_iter()
            .map(|w| (w.node, w.latent_pixels * w.images))
            .collect()
    }

    /// Remembers a queued job's [`Results::sampler_work`], to learn the pace from its steps.
    pub fn job_queued(&mut self, id: JobId, work: HashMap<String, u64>) {
        self.job_work.insert(id, work);
    }

    /// The sampling time of `doc`, at the last pace seen: `None` until a sampler has run, or
    /// when the graph samples nothing of known size.
    pub fn estimate(
        &mut self,
        doc: &crate::graph::Document,
        first_image_only: bool,
    ) -> Option<f64> {
        let fresh = self
            .estimated
            .as_ref()
            .is_some_and(|(d, f, _)| *f == first_image_only && d == doc);
        if !fresh {
            let registry = crate::nodes::Registry::builtin();
            let prompt = crate::graph::resolve::resolve(doc, registry).prompt;
            let total = estimate::sampler_work(&prompt, first_image_only)
                .iter()
                .map(estimate::SamplerWork::pixel_steps)
                .sum();
            self.estimated = Some((doc.clone(), first_image_only, total));
        }
        let total = self.estimated.as_ref().map_or(0, |e| e.2);
        (total > 0).then_some(self.pace? * total as f64)
    }

    /// Follows the end of job `id`: a sweep's cell, or the images on the graph's nodes.
    pub fn job_ended(&mut self, id: JobId, outputs: &[SavedFile], failed: Option<&str>) {
        self.job_work.remove(&id);
        let paths: Vec<PathBuf> = outputs.iter().map(|o| o.path.clone()).collect();
        if self
            .sweeps
            .iter_mut()
            .any(|s| s.job_ended(id, &paths, failed))
        {
            return;
        }
        let mut by_node: HashMap<NodeId, Vec<PathBuf>> = HashMap::new();
        for o in outputs.iter().filter(|o| crate::ui::is_png_path(&o.path)) {
            if let Some(node) = root_node_of(&o.node) {
                by_node.entry(node).or_default().push(o.path.clone());
            }
        }
        self.node_images.extend(by_node);
    }
}

impl AmalgamApp {
    /// Once per frame, after the job events: decoded pictures in, the live preview and node
    /// images onto the canvas, what the canvas's nodes asked for (last frame) applied.
    pub(super) fn follow_results(&mut self, ctx: &egui::Context) {
        let r = &mut self.results;
        r.pictures.poll(ctx);
        let live = &mut self.canvas.state.results.live;
        let running = self
            .jobs
            .iter()
            .find(|j| j.state == JobState::Running && j.step.is_some());
        match running.and_then(|j| j.step.as_ref().map(|s| (j.id, s))) {
            Some((id, step)) => {
                let key = (id, step.node.clone(), step.step);
                if r.shown_step.as_ref() != Some(&key) {
                    let per_step = r.job_work.get(&id).and_then(|w| w.get(&step.node));
                    if let Some(&pixels) = per_step.filter(|p| **p > 0)
                        && step.seconds_per_step > 0.0
                    {
                        r.pace = Some(step.seconds_per_step / pixels as f64);
                    }
                    if let (Some(p), Some(node)) = (&step.preview, root_node_of(&step.node)) {
                        let raster = Raster::from_rgb8(p.width as u32, p.height as u32, &p.rgb);
                        let texture =
                            pictures::texture(ctx, Path::new("live-preview"), Size::Full, &raster);
                        live.clear();
                        let caption = format!(
                            "step {}/{} · {:.1} s/step",
                            step.step, step.total, step.seconds_per_step
                        );
                        live.insert(node, LiveStep { texture, caption });
                    }
                    r.shown_step = Some(key);
                }
            }
            None => {
                live.clear();
                r.shown_step = None;
            }
        }
        let mut images = HashMap::new();
        for (node, paths) in &r.node_images {
            let texture = paths
                .first()
                .and_then(|p| r.pictures.texture(p, Size::Thumb));
            images.insert(
                *node,
                NodeImages {
                    texture,
                    paths: paths.clone(),
                },
            );
        }
        self.canvas.state.results.images = images;
        self.canvas.state.results.sweep_open =
            r.sweep_setup.as_ref().is_some_and(|s| s.axes.len() == 1);
        for ask in std::mem::take(&mut self.canvas.state.results.asks) {
            match ask {
                CanvasAsk::OpenImage(p) => r.viewer = Some(Viewer::one(p)),
                CanvasAsk::Sweep(axis) => r.sweep_setup = Some(Setup { axes: vec![axis] }),
                CanvasAsk::SweepRows(axis) => {
                    if let Some(s) = &mut r.sweep_setup
                        && s.axes.len() == 1
                        && (s.axes[0].node, s.axes[0].index) != (axis.node, axis.index)
                    {
                        s.axes.push(axis);
                    }
                }
            }
        }
        let saved = std::mem::take(&mut r.pictures.grids_saved);
        for result in saved {
            match result {
                Ok(path) => {
                    self.notify(false, format!("saved sweep grid {}", path.display()));
                    self.rescan_outputs();
                }
                Err(e) => self.notify(true, format!("cannot save the sweep grid: {e}")),
            }
        }
    }

    /// The viewer, the sweep set-up and the sweep grids.
    pub(super) fn results_ui(&mut self, ctx: &egui::Context) -> Vec<Command> {
        let r = &mut self.results;
        let mut commands: Vec<Command> = sweep::setup_ui(ctx, &mut r.sweep_setup)
            .into_iter()
            .collect();
        commands.extend(sweep::sweeps_ui(ctx, &mut r.sweeps, &mut r.pictures));
        commands.extend(viewer_ui(ctx, &mut r.viewer, &mut r.pictures));
        commands
    }

    pub(super) fn run_results_cmd(&mut self, command: Command) {
        match command {
            Command::OpenImage(path) => self.results.viewer = Some(Viewer::one(path)),
            Command::QueueSweep(axes) => self.queue_sweep(axes),
            Command::SaveSweepGrid(n) => {
                if let Some(s) = self.results.sweeps.get(n) {
                    let grid = s.grid_picture();
                    let out = self.folders.output_dir().to_path_buf();
                    self.results.pictures.save_grid(grid, out, "sweep".into());
                }
            }
            Command::OpenSweepCell { sweep, cell } => {
                let Some(s) = self.results.sweeps.get(sweep) else {
                    return;
                };
                let Some(c) = s.cells.get(cell) else { return };
                let (doc, label) = (c.doc.clone(), s.label(c));
                self.replace_document(doc, None);
                self.notify(false, format!("opened the workflow of {label}"));
            }
            _ => {}
        }
    }

    /// Queues the command line's sweep over the workflow just opened (once).
    pub(super) fn queue_pending_sweep(&mut self) {
        let specs = std::mem::take(&mut self.results.pending_sweep);
        if specs.is_empty() {
            return;
        }
        let axes: Result<Vec<_>, String> = specs
            .iter()
            .map(|s| sweep::axis_from_spec(&self.document.doc, s))
            .collect();
        match axes {
            Ok(axes) => self.queue_sweep(axes),
            Err(e) => self.notify(true, format!("--sweep: {e}")),
        }
    }

    /// Queues one job per cell of a new sweep over the document, then applies
    /// `control_after_generate` once (every cell shares the seeds it was queued with).
    fn queue_sweep(&mut self, axes: Vec<sweep::Axis>) {
        let mut sweep = Sweep::new(&self.document.doc, axes);
        let mut refused = false;
        for i in 0..sweep.cells.len() {
            if refused {
                sweep.cells[i].state = CellState::Failed("not queued".into());
                continue;
            }
            let label = format!("sweep {}", sweep.label(&sweep.cells[i]));
            let doc = sweep.cells[i].doc.clone();
            match self.submit_document(&doc, label) {
                Some(id) => sweep.cells[i].job = Some(id),
                None => {
                    refused = true;
                    sweep.cells[i].state = CellState::Failed("not queued: see the log".into());
                }
            }
        }
        let queued = sweep.cells.iter().filter(|c| c.job.is_some()).count();
        self.notify(
            false,
            format!(
                "queued a sweep of {queued} job(s) over {}",
                axes_names(&sweep)
            ),
        );
        self.results.sweeps.push(sweep);
        if queued > 0 {
            self.after_queue();
            self.side_tab = super::SideTab::Queue;
        }
    }
}

fn axes_names(s: &Sweep) -> String {
    s.axes
        .iter()
        .map(|a| format!("#{} {}", a.node, a.name))
        .collect::<Vec<_>>()
        .join(" × ")
}
