//! The Compare window: a finished comparison of two checkpoints as a heat-map of blocks (one
//! row per component, each block a cell coloured by its relative difference; hover for the
//! numbers, click for its keys), the lists of keys only one file has, shape and dtype
//! mismatches, and "identical" when there is nothing to show.
//!
//! The numbers come from the engine's comparison job ([`crate::engine::compare`]); this module
//! only draws them.

use egui::{Color32, RichText};

use super::file_name;
use crate::engine::compare::Comparison;
use crate::model::diff::{BlockDiff, DiffReport, ratio_text};

/// A comparison on screen and the block whose keys are listed.
#[derive(Debug)]
pub struct CompareView {
    pub comparison: Box<Comparison>,
    /// `(component, block)` of the clicked cell.
    pub selected: Option<(String, String)>,
}

impl CompareView {
    pub fn new(comparison: Box<Comparison>) -> CompareView {
        CompareView {
            comparison,
            selected: None,
        }
    }
}

/// A cell's colour: grey for identical, then green → yellow → red as the relative difference
/// goes from 1e-4 to 1 on a log scale (fine-tunes sit around 1e-3–1e-1, unrelated models ≥ 1).
pub fn heat_colour(relative: Option<f64>) -> Color32 {
    let Some(r) = relative else {
        return Color32::from_rgb(120, 60, 160); // undefined: a zero tensor in A
    };
    if r == 0.0 {
        return Color32::from_gray(90);
    }
    let t = ((r.log10() + 4.0) / 4.0).clamp(0.0, 1.0) as f32;
    let (lo, mid, hi) = (
        [40.0, 150.0, 70.0],
        [220.0, 200.0, 50.0],
        [210.0, 40.0, 40.0],
    );
    let (a, b, u) = if t < 0.5 {
        (lo, mid, t * 2.0)
    } else {
        (mid, hi, t * 2.0 - 1.0)
    };
    let c = |i: usize| (a[i] + (b[i] - a[i]) * u).round() as u8;
    Color32::from_rgb(c(0), c(1), c(2))
}

/// Draws the window while `view` is set; closing it clears `view`.
pub fn compare_ui(ctx: &egui::Context, view: &mut Option<CompareView>) {
    let Some(v) = view else { return };
    let mut open = true;
    egui::Window::new("Compare checkpoints")
        .open(&mut open)
        .default_size([720.0, 520.0])
        .vscroll(true)
        .show(ctx, |ui| body_ui(ui, v));
    if !open {
        *view = None;
    }
}

fn body_ui(ui: &mut egui::Ui, v: &mut CompareView) {
    let c = &v.comparison;
    let r: &DiffReport = &c.report;
    ui.label(format!("A: {}", c.a.display()));
    ui.label(format!("B: {}", c.b.display()));
    if r.identical() {
        ui.label(
            RichText::new(format!(
                "identical: {} keys, same shapes, dtypes and values",
                r.keys.len()
            ))
            .strong(),
        );
        return;
    }
    let changed = r.changed_keys().count();
    ui.label(format!(
        "{changed} of {} shared keys differ · {} only in {} · {} only in {} · {} shape mismatches · {} dtype differences · {:.1} s",
        r.keys.len(),
        r.only_in_a.len(),
        file_name(&c.a),
        r.only_in_b.len(),
        file_name(&c.b),
        r.shape_mismatch.len(),
        r.dtype_mismatch.len(),
        c.seconds
    ));
    ui.separator();
    ui.label(RichText::new("Difference heat-map").strong())
        .on_hover_text("relative difference ‖A−B‖/‖A‖ per block, log scale: green 1e-4, yellow 1e-2, red ≥ 1; grey: identical");
    heat_map_ui(ui, r, &mut v.selected);
    if let Some((component, block)) = &v.selected {
        ui.separator();
        ui.label(RichText::new(format!("{component} {block}: keys")).strong());
        egui::Grid::new("compare-keys")
            .striped(true)
            .show(ui, |ui| {
                ui.label("relative");
                ui.label("cosine");
                ui.label("key");
                ui.end_row();
                for k in r
                    .keys
                    .iter()
                    .filter(|k| k.component.as_str() == component && &k.block == block)
                {
                    ui.monospace(ratio_text(k.relative));
                    ui.monospace(ratio_text(k.cosine));
                    ui.label(&k.key);
                    ui.end_row();
                }
            });
    }
    let list = |ui: &mut egui::Ui, title: String, lines: Vec<String>| {
        if lines.is_empty() {
            return;
        }
        egui::CollapsingHeader::new(title).show(ui, |ui| {
            for l in lines {
                ui.label(l);
            }
        });
    };
    ui.separator();
    list(
        ui,
        format!("Only in {} ({})", file_name(&c.a), r.only_in_a.len()),
        r.only_in_a.clone(),
    );
    list(
        ui,
        format!("Only in {} ({})", file_name(&c.b), r.only_in_b.len()),
        r.only_in_b.clone(),
    );
    list(
        ui,
        format!("Shape mismatches ({})", r.shape_mismatch.len()),
        r.shape_mismatch
            .iter()
            .map(|m| format!("{}: {:?} vs {:?}", m.key, m.a, m.b))
            .collect(),
    );
    list(
        ui,
        format!("Dtype differences ({})", r.dtype_mismatch.len()),
        r.dtype_mismatch
            .iter()
            .map(|m| format!("{}: {} vs {}", m.key, m.a, m.b))
            .collect(),
    );
}

/// One row of cells per component, in model order; the component's overall figure first.
fn heat_map_ui(ui: &mut egui::Ui, r: &DiffReport, selected: &mut Option<(String, String)>) {
    let mut components: Vec<&'static str> = Vec::new();
    for b in &r.blocks {
        if !components.contains(&b.component) {
            components.push(b.component);
        }
    }
    for component in components {
        let rows: Vec<&BlockDiff> = r
            .blocks
            .iter()
            .filter(|b| b.component == component)
            .collect();
        ui.horizontal_wrapped(|ui| {
            ui.spacing_mut().item_spacing = egui::vec2(2.0, 2.0);
            ui.add_sized(
                [48.0, 22.0],
                egui::Label::new(RichText::new(component).strong()),
            );
            for b in rows {
                let text_colour = Color32::WHITE;
                let name = if b.block == "all" {
                    format!("{component} (all)")
                } else {
                    b.block.clone()
                };
                let cell = egui::Button::new(RichText::new(&name).small().color(text_colour))
                    .fill(heat_colour(b.relative))
                    .selected(
                        selected
                            .as_ref()
                            .is_some_and(|(c, n)| c == component && n == &b.block),
                    )
                    .min_size(egui::vec2(40.0, 22.0));
                let response = ui.add(cell).on_hover_text(format!(
                    "{component} {}\nrelative {}\ncosine {}\n{} keys",
                    b.block,
                    ratio_text(b.relative),
                    ratio_text(b.cosine),
                    b.keys
                ));
                if response.clicked() {
                    *selected = Some((component.to_owned(), b.block.clone()));
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_run_from_grey_through_green_to_red() {
        assert_eq!(heat_colour(Some(0.0)), Color32::from_gray(90));
        let green = heat_colour(Some(1e-4));
        let red = heat_colour(Some(1.0));
        assert!(green.g() > green.r(), "{green:?}");
        assert!(red.r() > red.g(), "{red:?}");
        assert_eq!(heat_colour(Some(10.0)), red, "clamped above 1");
        assert_ne!(heat_colour(None), red);
    }
}
