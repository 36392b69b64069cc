//! Ratio sweeps: one FLOAT widget (a merge ratio, a LoRA strength, cfg) — or two, for a 2-D grid
//! — set to evenly spaced values, one queued job per value, and a grid of the first image of
//! each job, filling in as jobs finish. The grid can be saved as one labelled PNG; a cell opens
//! the workflow its job ran.
//!
//! [`Sweep`] and [`compose_grid`] are plain data (unit-tested without egui); [`setup_ui`] and
//! [`sweeps_ui`] draw them and return [`Command`]s. The jobs are ordinary worker jobs: checkpoint
//! reads and networks are shared through the worker's cache like any re-queue.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::engine::worker::JobId;
use crate::format::raster::Raster;
use crate::graph::{Document, NodeId};

use super::command::Command;
use super::pictures::{Pictures, Size, fit};

/// Most values along one axis (a 2-D sweep has at most this squared cells).
pub const MAX_COUNT: usize = 12;

/// One swept widget.
#[derive(Clone, Debug, PartialEq)]
pub struct Axis {
    pub node: NodeId,
    /// Position in the node's `widgets_values`.
    pub index: usize,
    /// The widget's name, for labels (`ratio`).
    pub name: String,
    pub from: f64,
    pub to: f64,
    pub count: usize,
    /// The widget's range, which every value is kept inside.
    pub min: f64,
    pub max: f64,
}

impl Axis {
    /// An axis over a widget's current value: its whole range when the range is narrow (a ratio,
    /// a strength), the value ± 3 otherwise (cfg), in three steps.
    pub fn around(node: NodeId, index: usize, name: &str, value: f64, min: f64, max: f64) -> Axis {
        let (from, to) = if max - min <= 2.0 {
            (min, max)
        } else {
            ((value - 3.0).max(min), (value + 3.0).min(max))
        };
        Axis {
            node,
            index,
            name: name.to_owned(),
            from,
            to,
            count: 3,
            min,
            max,
        }
    }

    /// The evenly spaced values from `from` to `to` (both included), clamped to the widget's
    /// range and rounded to 6 decimals so that labels and saved workflows read `0.3`, not
    /// `0.30000000000000004`.
    pub fn values(&self) -> Vec<f64> {
        let n = self.count.clamp(1, MAX_COUNT);
        (0..n)
            .map(|i| {
                let t = if n == 1 {
                    0.0
                } else {
                    i as f64 / (n - 1) as f64
                };
                let v = self.from + (self.to - self.from) * t;
                ((v * 1e6).round() / 1e6).clamp(self.min, self.max)
            })
            .collect()
    }
}

/// An axis from `NODE.WIDGET=FROM:TO:COUNT` (the `--sweep` launch option) over `doc`: the
/// node must have a FLOAT widget of that name, whose range the values are kept in.
pub fn axis_from_spec(doc: &Document, spec: &str) -> Result<Axis, String> {
    let bad = || format!("{spec:?} is not NODE.WIDGET=FROM:TO:COUNT (e.g. 3.ratio=0:1:5)");
    let (target, range) = spec.split_once('=').ok_or_else(bad)?;
    let (node, widget) = target.split_once('.').ok_or_else(bad)?;
    let node: NodeId = node.trim().parse().map_err(|_| bad())?;
    let parts: Vec<&str> = range.split(':').collect();
    let [from, to, count] = parts[..] else {
        return Err(bad());
    };
    let (from, to): (f64, f64) = (
        from.trim().parse().map_err(|_| bad())?,
        to.trim().parse().map_err(|_| bad())?,
    );
    let count: usize = count.trim().parse().map_err(|_| bad())?;
    let n = doc
        .node(node)
        .ok_or_else(|| format!("the workflow has no node {node}"))?;
    let schema = crate::nodes::Registry::builtin()
        .get(&n.type_)
        .ok_or_else(|| format!("node {node} ({}) is not one Amalgam runs", n.type_))?;
    let (index, min, max) = schema
        .widget_slots()
        .into_iter()
        .find_map(|(pos, w)| match w.kind {
            crate::nodes::InputKind::Float { min, max, .. } if w.name == widget.trim() => {
                Some((pos, min, max))
            }
            _ => None,
        })
        .ok_or_else(|| format!("node {node} ({}) has no FLOAT widget {widget:?}", n.type_))?;
    Ok(Axis {
        node,
        index,
        name: widget.trim().to_owned(),
        from,
        to,
        count: count.clamp(1, MAX_COUNT),
        min,
        max,
    })
}

/// What a cell is waiting for.
#[derive(Clone, Debug, PartialEq)]
pub enum CellState {
    Queued,
    Done,
    Failed(String),
}

/// One value (or pair of values) and its job.
#[derive(Clone, Debug)]
pub struct Cell {
    pub values: Vec<f64>,
    pub doc: Document,
    pub job: Option<JobId>,
    pub state: CellState,
    /// The job's first saved image.
    pub image: Option<PathBuf>,
}

/// A sweep: its axes and one cell per combination of values, row by row (the first axis
/// across, the second down).
#[derive(Clone, Debug)]
pub struct Sweep {
    pub axes: Vec<Axis>,
    pub cells: Vec<Cell>,
    pub open: bool,
}

impl Sweep {
    /// The cells' documents: `doc` with the swept widgets set to each combination of values.
    pub fn new(doc: &Document, axes: Vec<Axis>) -> Sweep {
        let across = axes.first().map(Axis::values).unwrap_or_default();
        let down = axes.get(1).map_or_else(|| vec![f64::NAN], Axis::values);
        let mut cells = Vec::new();
        for y in &down {
            for x in &across {
                let values: Vec<f64> = std::iter::once(*x)
                    .chain((!y.is_nan()).then_some(*y))
                    .collect();
                let mut d = doc.clone();
                for (axis, v) in axes.iter().zip(&values) {
                    if let Some(node) = d.node_mut(axis.node) {
                        crate::graph::edit::set_widget(node, axis.index, json!(v));
                    }
                }
                cells.push(Cell {
                    values,
                    doc: d,
                    job: None,
                    state: CellState::Queued,
                    image: None,
                });
            }
        }
        Sweep {
            axes,
            cells,
            open: true,
        }
    }

    pub fn columns(&self) -> usize {
        self.axes.first().map_or(1, |a| a.values().len()).max(1)
    }

    /// A cell's label: `ratio = 0.25`, or `ratio = 0.25 · cfg = 7` in a 2-D sweep.
    pub fn label(&self, cell: &Cell) -> String {
        self.axes
            .iter()
            .zip(&cell.values)
            .map(|(a, v)| format!("{} = {v}", a.name))
            .collect::<Vec<_>>()
            .join(" · ")
    }

    /// Follows the end of job `id`: its first PNG, or why it failed. Returns whether the job
    /// was one of this sweep's.
    pub fn job_ended(&mut self, id: JobId, outputs: &[PathBuf], failed: Option<&str>) -> bool {
        let Some(cell) = self.cells.iter_mut().find(|c| c.job == Some(id)) else {
            return false;
        };
        cell.image = outputs.iter().find(|p| super::is_png_path(p)).cloned();
        cell.state = match (failed, &cell.image) {
            (Some(why), _) => CellState::Failed(why.to_owned()),
            (None, None) => CellState::Failed("the job saved no image".into()),
            (None, Some(_)) => CellState::Done,
        };
        true
    }

    pub fn finished(&self) -> usize {
        self.cells
            .iter()
            .filter(|c| c.state != CellState::Queued)
            .count()
    }

    /// The grid as a picture to save: every cell's image (if any) and label.
    pub fn grid_picture(&self) -> GridPicture {
        GridPicture {
            columns: self.columns(),
            cells: self
                .cells
                .iter()
                .map(|c| (c.image.clone(), self.label(c)))
                .collect(),
        }
    }
}

/// What a saved grid shows: images (a missing one is left grey) and their labels, row by row.
#[derive(Clone, Debug, PartialEq)]
pub struct GridPicture {
    pub columns: usize,
    pub cells: Vec<(Option<PathBuf>, String)>,
}

/// Height of the label strip under each cell, in pixels.
const LABEL_HEIGHT: u32 = 24;
/// Space between cells.
const GAP: u32 = 4;

/// The grid as one picture: cells as large as the largest image, each with its label under it.
pub fn compose_grid(grid: &GridPicture) -> Result<Raster, String> {
    let mut images = Vec::new();
    for (path, _) in &grid.cells {
        images.push(match path {
            Some(p) => {
                let bytes =
                    std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
                Some(Raster::decode_png(&bytes).map_err(|e| format!("{}: {e}", p.display()))?)
            }
            None => None,
        });
    }
    let cell_w = images.iter().flatten().map(|r| r.width).max().unwrap_or(64);
    let cell_h = images
        .iter()
        .flatten()
        .map(|r| r.height)
        .max()
        .unwrap_or(64);
    let columns = grid.columns.max(1) as u32;
    let rows = (grid.cells.len() as u32).div_ceil(columns).max(1);
    let width = columns * cell_w + (columns + 1) * GAP;
    let height = rows * (cell_h + LABEL_HEIGHT) + (rows + 1) * GAP;
    let mut out = Raster::filled(width, height, [24, 24, 24, 255]);
    let font = ab_glyph::FontRef::try_from_slice(epaint_default_fonts::UBUNTU_LIGHT)
        .map_err(|e| format!("the label font: {e}"))?;
    for (i, ((_, label), image)) in grid.cells.iter().zip(&images).enumerate() {
        let (col, row) = (i as u32 % columns, i as u32 / columns);
        let x = GAP + col * (cell_w + GAP);
        let y = GAP + row * (cell_h + LABEL_HEIGHT + GAP);
        match image {
            Some(r) => out.paste(r, x, y),
            None => out.paste(&Raster::filled(cell_w, cell_h, [80, 80, 80, 255]), x, y),
        }
        draw_text(
            &mut out,
            &font,
            label,
            x + 2,
            y + cell_h + 4,
            cell_w.saturating_sub(4),
        );
    }
    Ok(out)
}

/// Draws `text` in white at (`x`, `y`) (top of the line), cut at `max_width` pixels.
fn draw_text(out: &mut Raster, font: &ab_glyph::FontRef, text: &str, x: u32, y: u32, max_w: u32) {
    use ab_glyph::{Font, ScaleFont};
    let scale = ab_glyph::PxScale::from(15.0);
    let scaled = font.as_scaled(scale);
    let mut caret = 0.0f32;
    let mut prev = None;
    for ch in text.chars() {
        let id = font.glyph_id(ch);
        if let Some(p) = prev {
            caret += scaled.kern(p, id);
        }
        let advance = scaled.h_advance(id);
        if caret + advance > max_w as f32 {
            break;
        }
        let glyph = id.with_scale_and_position(
            scale,
            ab_glyph::point(x as f32 + caret, y as f32 + scaled.ascent()),
        );
        if let Some(outline) = font.outline_glyph(glyph) {
            let b = outline.px_bounds();
            outline.draw(|gx, gy, coverage| {
                let (px, py) = (
                    b.min.x as i64 + i64::from(gx),
                    b.min.y as i64 + i64::from(gy),
                );
                if px < 0 || py < 0 || px >= i64::from(out.width) || py >= i64::from(out.height) {
                    return;
                }
                let i = (py as usize * out.width as usize + px as usize) * 4;
                for c in &mut out.rgba[i..i + 3] {
                    let v = f32::from(*c) * (1.0 - coverage) + 255.0 * coverage;
                    *c = v.round().clamp(0.0, 255.0) as u8;
                }
            });
        }
        caret += advance;
        prev = Some(id);
    }
}

/// Composes the grid and writes it as `<output>/sweeps/<prefix>_NNNNN_.png` (a new name, never
/// over a file, through a temporary file), with the labels in a `parameters` text chunk.
pub fn save_grid(grid: &GridPicture, output_dir: &Path, prefix: &str) -> Result<PathBuf, String> {
    let raster = compose_grid(grid)?;
    let name = crate::engine::naming::next_image_name(
        &format!("sweeps/{prefix}"),
        output_dir,
        raster.width as usize,
        raster.height as usize,
    )
    .map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&name.folder)
        .map_err(|e| format!("cannot create {}: {e}", name.folder.display()))?;
    let labels: Vec<&str> = grid.cells.iter().map(|(_, l)| l.as_str()).collect();
    let texts = vec![("parameters".to_owned(), labels.join("\n"))];
    let png = crate::format::png::encode_rgb8(
        raster.width,
        raster.height,
        &raster.to_rgb8(),
        &texts,
        false,
    )
    .map_err(|e| format!("cannot encode the grid: {e}"))?;
    let path = name.folder.join(name.image_file_name(0));
    let write = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let mut file = tempfile::Builder::new()
        .prefix(".amalgam-")
        .suffix(".png.partial")
        .tempfile_in(&name.folder)
        .map_err(write)?;
    std::io::Write::write_all(&mut file, &png).map_err(write)?;
    file.persist_noclobber(&path).map_err(|e| write(e.error))?;
    Ok(path)
}

/// The sweep being set up, before its jobs are queued.
#[derive(Clone, Debug, PartialEq)]
pub struct Setup {
    pub axes: Vec<Axis>,
}

/// The set-up window: each axis's from / to / count, and Queue.
pub fn setup_ui(ctx: &egui::Context, setup: &mut Option<Setup>) -> Option<Command> {
    let mut command = None;
    let mut close = false;
    if let Some(s) = setup {
        egui::Window::new("Sweep")
            .collapsible(false)
            .resizable(false)
            .show(ctx, |ui| {
                for (i, a) in s.axes.iter_mut().enumerate() {
                    ui.label(egui::RichText::new(format!("#{} {}", a.node, a.name)).strong());
                    egui::Grid::new(("sweep-axis", i)).show(ui, |ui| {
                        ui.label("from");
                        ui.add(
                            egui::DragValue::new(&mut a.from)
                                .range(a.min..=a.max)
                                .speed(0.01),
                        );
                        ui.label("to");
                        ui.add(
                            egui::DragValue::new(&mut a.to)
                                .range(a.min..=a.max)
                                .speed(0.01),
                        );
                        ui.label("count");
                        ui.add(egui::DragValue::new(&mut a.count).range(1..=MAX_COUNT));
                        ui.end_row();
                    });
                    let values: Vec<String> = a.values().iter().map(f64::to_string).collect();
                    ui.small(values.join(", "));
                }
                if s.axes.len() == 1 {
                    ui.small(
                        "Right-click a second FLOAT widget ▸ \"Sweep as rows\" for a 2-D grid.",
                    );
                }
                let jobs: usize = s.axes.iter().map(|a| a.values().len()).product();
                ui.horizontal(|ui| {
                    if ui.button(format!("Queue {jobs} jobs")).clicked() {
                        command = Some(Command::QueueSweep(s.axes.clone()));
                        close = true;
                    }
                    if ui.button("Cancel").clicked() {
                        close = true;
                    }
                });
            });
    }
    if close {
        *setup = None;
    }
    command
}

/// Cell size on screen, in points.
const CELL: f32 = 150.0;

/// The sweep grids, one window each, filling in as their jobs finish.
pub fn sweeps_ui(
    ctx: &egui::Context,
    sweeps: &mut [Sweep],
    pictures: &mut Pictures,
) -> Vec<Command> {
    let mut commands = Vec::new();
    for (n, sweep) in sweeps.iter_mut().enumerate().filter(|(_, s)| s.open) {
        let mut open = true;
        let title = format!(
            "Sweep {} — {}/{} done",
            n + 1,
            sweep.finished(),
            sweep.cells.len()
        );
        egui::Window::new(title)
            .id(egui::Id::new(("sweep", n)))
            .open(&mut open)
            .default_pos([120.0 + 30.0 * n as f32, 120.0])
            .show(ctx, |ui| {
                ui.horizontal(|ui| {
                    if ui
                        .add_enabled(
                            sweep.finished() == sweep.cells.len(),
                            egui::Button::new("Save grid as PNG"),
                        )
                        .clicked()
                    {
                        commands.push(Command::SaveSweepGrid(n));
                    }
                    ui.small("Click a cell to open its workflow.");
                });
                egui::Grid::new(("sweep-grid", n)).show(ui, |ui| {
                    for (i, cell) in sweep.cells.iter().enumerate() {
                        let label = sweep.label(cell);
                        ui.vertical(|ui| {
                            let texture = cell
                                .image
                                .as_deref()
                                .and_then(|p| pictures.texture(p, Size::Thumb));
                            let clicked = match (&cell.state, texture) {
                                (_, Some(t)) => {
                                    let size = fit(&t, egui::Vec2::splat(CELL), 4.0);
                                    ui.add(egui::ImageButton::new((t.id(), size)))
                                        .on_hover_text(&label)
                                        .clicked()
                                }
                                (CellState::Failed(why), None) => {
                                    ui.add_sized(
                                        [CELL, CELL],
                                        egui::Label::new(
                                            egui::RichText::new(why)
                                                .color(egui::Color32::LIGHT_RED),
                                        )
                                        .wrap(),
                                    );
                                    false
                                }
                                _ => {
                                    ui.add_sized([CELL, CELL], egui::Spinner::new());
                                    false
                                }
                            };
                            ui.label(label);
                            if clicked {
                                commands.push(Command::OpenSweepCell { sweep: n, cell: i });
                            }
                        });
                        if (i + 1) % sweep.columns() == 0 {
                            ui.end_row();
                        }
                    }
                });
            });
        sweep.open = open;
    }
    commands
}

#[cfg(test)]
mod tests {
    use super::*;

    fn axis(name: &str, from: f64, to: f64, count: usize) -> Axis {
        Axis {
            node: 3,
            index: 0,
            name: name.into(),
            from,
            to,
            count,
            min: 0.0,
            max: 1.0,
        }
    }

    #[test]
    fn values_are_evenly_spaced_rounded_and_inside_the_range() {
        assert_eq!(axis("ratio", 0.0, 1.0, 3).values(), [0.0, 0.5, 1.0]);
        assert_eq!(
            axis("ratio", 0.1, 0.3, 3).values(),
            [0.1, 0.2, 0.3],
            "no 0.30000000000000004"
        );
        assert_eq!(axis("ratio", 0.4, 0.9, 1).values(), [0.4]);
        assert_eq!(
            axis("ratio", 1.0, 0.0, 2).values(),
            [1.0, 0.0],
            "descending"
        );
        assert_eq!(axis("ratio", -1.0, 2.0, 2).values(), [0.0, 1.0], "clamped");
        assert_eq!(axis("ratio", 0.0, 1.0, 99).values().len(), MAX_COUNT);
        let cfg = Axis::around(5, 3, "cfg", 7.0, 0.0, 100.0);
        assert_eq!(cfg.values(), [4.0, 7.0, 10.0]);
        let strength = Axis::around(5, 1, "strength_model", 0.8, -20.0, 20.0);
        assert_eq!((strength.from, strength.to), (-2.2, 3.8));
    }

    #[test]
    fn cells_carry_the_document_with_their_values() {
        let doc = crate::graph::examples::text_to_image("a.safetensors", "b.safetensors");
        let merge = doc.first_of_type("ModelMergeSimple").expect("merge");
        let sampler = doc.first_of_type("KSampler").expect("sampler");
        let mut ratio = axis("ratio", 0.0, 1.0, 3);
        ratio.node = merge;
        let cfg = Axis {
            node: sampler,
            index: 3,
            name: "cfg".into(),
            from: 5.0,
            to: 8.0,
            count: 2,
            min: 0.0,
            max: 100.0,
        };
        let sweep = Sweep::new(&doc, vec![ratio, cfg]);
        assert_eq!((sweep.cells.len(), sweep.columns()), (6, 3));
        let c = &sweep.cells[4];
        assert_eq!(c.values, [0.5, 8.0]);
        assert_eq!(sweep.label(c), "ratio = 0.5 · cfg = 8");
        let node = |id| c.doc.node(id).expect("node").widget_values().to_vec();
        assert_eq!(node(merge)[0], json!(0.5));
        assert_eq!(node(sampler)[3], json!(8.0));
        assert_eq!(node(sampler)[2], json!(8), "steps untouched");
    }

    #[test]
    fn launch_specs_name_a_float_widget() {
        let doc = crate::graph::examples::text_to_image("a.safetensors", "b.safetensors");
        let a = axis_from_spec(&doc, "3.ratio=0:1:5").expect("ratio");
        assert_eq!((a.node, a.index, a.count), (3, 0, 5));
        assert_eq!(a.values(), [0.0, 0.25, 0.5, 0.75, 1.0]);
        let cfg = axis_from_spec(&doc, "7.cfg=4:8:2").expect("cfg");
        assert_eq!(
            (cfg.index, cfg.max),
            (3, 100.0),
            "after seed and its control"
        );
        for (spec, why) in [
            ("3.ratio=0:1", "NODE.WIDGET"),
            ("99.ratio=0:1:2", "no node 99"),
            ("7.steps=1:2:2", "no FLOAT widget \"steps\""),
            ("x.ratio=0:1:2", "NODE.WIDGET"),
        ] {
            let e = axis_from_spec(&doc, spec).expect_err(spec);
            assert!(e.contains(why), "{spec}: {e}");
        }
    }

    #[test]
    fn a_cell_takes_its_jobs_first_image_or_failure() {
        let doc = crate::graph::examples::text_to_image("a.safetensors", "b.safetensors");
        let mut sweep = Sweep::new(&doc, vec![axis("ratio", 0.0, 1.0, 2)]);
        sweep.cells[0].job = Some(7);
        sweep.cells[1].job = Some(8);
        assert!(!sweep.job_ended(9, &[], None));
        let outs = [
            PathBuf::from("o/m.safetensors"),
            PathBuf::from("o/x_00001_.png"),
        ];
        assert!(sweep.job_ended(7, &outs, None));
        assert_eq!(
            sweep.cells[0].image.as_deref(),
            Some(Path::new("o/x_00001_.png"))
        );
        assert!(sweep.job_ended(8, &[], Some("boom")));
        assert_eq!(sweep.cells[1].state, CellState::Failed("boom".into()));
        assert_eq!(sweep.finished(), 2);
    }

    #[test]
    fn a_saved_grid_has_every_cell_and_a_label_strip() {
        let dir = tempfile::tempdir().expect("tmp");
        let img = |name: &str, shade: u8| {
            let p = dir.path().join(name);
            let r = Raster::filled(20, 10, [shade, 0, 0, 255]);
            let png =
                crate::format::png::encode_rgb8(20, 10, &r.to_rgb8(), &[], true).expect("png");
            std::fs::write(&p, png).expect("write");
            p
        };
        let grid = GridPicture {
            columns: 2,
            cells: vec![
                (Some(img("a.png", 200)), "ratio = 0".into()),
                (Some(img("b.png", 100)), "ratio = 1".into()),
                (None, "ratio = 2".into()),
            ],
        };
        let out = dir.path().join("output");
        let path = save_grid(&grid, &out, "sweep").expect("saved");
        assert!(path.starts_with(out.join("sweeps")));
        let r = Raster::decode_png(&std::fs::read(&path).expect("read")).expect("png");
        assert_eq!(
            (r.width, r.height),
            (2 * 20 + 3 * GAP, 2 * (10 + LABEL_HEIGHT) + 3 * GAP)
        );
        let at = |x: u32, y: u32| {
            let i = ((y * r.width + x) * 4) as usize;
            [r.rgba[i], r.rgba[i + 1], r.rgba[i + 2]]
        };
        assert_eq!(at(GAP + 1, GAP + 1), [200, 0, 0]);
        assert_eq!(at(2 * GAP + 21, GAP + 1), [100, 0, 0]);
        let missing_y = 2 * GAP + 10 + LABEL_HEIGHT + 1;
        assert_eq!(at(GAP + 1, missing_y), [80, 80, 80], "missing image grey");
        // Some label pixels are lit under the first cell.
        let lit = (GAP + 10..GAP + 10 + LABEL_HEIGHT)
            .flat_map(|y| (GAP..GAP + 20).map(move |x| (x, y)))
            .filter(|&(x, y)| at(x, y)[1] > 120)
            .count();
        assert!(lit > 5, "label drawn ({lit} lit pixels)");
        let second = save_grid(&grid, &out, "sweep").expect("saved again");
        assert_ne!(second, path, "never over an earlier grid");
    }
}
