//! The image viewer: one picture, or two compared side by side or under a slider, fitted or at
//! 100 %, zoomed with the wheel about the pointer and panned by dragging. Both pictures of a
//! comparison share one zoom and pan, so the same pixels sit side by side. "Open workflow"
//! loads the workflow a PNG carries, as dropping it on the window would.

use std::path::PathBuf;

use egui::{Color32, Pos2, Rect, Vec2};

use super::command::Command;
use super::pictures::{Pictures, Size};

/// How two pictures are shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    SideBySide,
    /// The first picture left of a movable split, the second right of it.
    Slider,
}

/// The viewer window's state.
#[derive(Clone, Debug, PartialEq)]
pub struct Viewer {
    /// One or two pictures.
    pub images: Vec<PathBuf>,
    pub layout: Layout,
    /// Screen points per image pixel; `None` fits the picture into the window.
    pub zoom: Option<f32>,
    /// Offset of the picture's centre from the view's centre, in points.
    pub pan: Vec2,
    /// Where the slider splits the view (0 = all second picture, 1 = all first).
    pub split: f32,
}

impl Viewer {
    pub fn one(path: PathBuf) -> Viewer {
        Viewer {
            images: vec![path],
            layout: Layout::SideBySide,
            zoom: None,
            pan: Vec2::ZERO,
            split: 0.5,
        }
    }

    pub fn two(a: PathBuf, b: PathBuf) -> Viewer {
        Viewer {
            images: vec![a, b],
            layout: Layout::Slider,
            ..Viewer::one(PathBuf::new())
        }
    }

    /// The scale for a picture of `size` in a view of `view`: the zoom, or the fitting scale.
    pub fn scale(&self, size: Vec2, view: Vec2) -> f32 {
        self.zoom
            .unwrap_or_else(|| (view.x / size.x).min(view.y / size.y).max(1e-3))
    }

    /// Zooms by `factor` keeping the image point under `pointer` (relative to the view's
    /// centre) where it is.
    pub fn zoom_about(&mut self, current: f32, factor: f32, pointer: Vec2) {
        let new = (current * factor).clamp(0.02, 64.0);
        let f = new / current;
        self.pan = pointer - (pointer - self.pan) * f;
        self.zoom = Some(new);
    }
}

/// Draws the viewer (when open); returns what the user asked for.
pub fn viewer_ui(
    ctx: &egui::Context,
    viewer: &mut Option<Viewer>,
    pictures: &mut Pictures,
) -> Option<Command> {
    let v = viewer.as_mut()?;
    let mut command = None;
    let mut open = true;
    let title = v
        .images
        .iter()
        .map(|p| super::file_name(p))
        .collect::<Vec<_>>()
        .join(" ⟷ ");
    egui::Window::new(title)
        .id(egui::Id::new("image-viewer"))
        .open(&mut open)
        .default_size([720.0, 620.0])
        .resizable(true)
        .show(ctx, |ui| {
            let textures: Vec<_> = v
                .images
                .iter()
                .map(|p| pictures.texture(p, Size::Full))
                .collect();
            ui.horizontal(|ui| {
                if ui.selectable_label(v.zoom.is_none(), "Fit").clicked() {
                    v.zoom = None;
                    v.pan = Vec2::ZERO;
                }
                if ui.selectable_label(v.zoom == Some(1.0), "100 %").clicked() {
                    v.zoom = Some(1.0);
                    v.pan = Vec2::ZERO;
                }
                if let Some(z) = v.zoom {
                    ui.label(format!("{:.0} %", z * 100.0));
                }
                if v.images.len() == 2 {
                    ui.separator();
                    ui.selectable_value(&mut v.layout, Layout::Slider, "Slider");
                    ui.selectable_value(&mut v.layout, Layout::SideBySide, "Side by side");
                    if v.layout == Layout::Slider {
                        ui.add(egui::Slider::new(&mut v.split, 0.0..=1.0).show_value(false));
                    }
                }
                ui.separator();
                for (i, p) in v.images.iter().enumerate() {
                    let label = if v.images.len() == 2 {
                        format!("Open workflow {}", ["A", "B"][i])
                    } else {
                        "Open its workflow".to_owned()
                    };
                    if ui
                        .button(label)
                        .on_hover_text(p.display().to_string())
                        .clicked()
                    {
                        command = Some(Command::Open(p.clone()));
                    }
                }
            });
            if let Some(size) = textures
                .iter()
                .flatten()
                .next()
                .map(egui::TextureHandle::size_vec2)
            {
                let sizes: Vec<String> = textures
                    .iter()
                    .flatten()
                    .map(|t| format!("{} × {}", t.size()[0], t.size()[1]))
                    .collect();
                ui.small(sizes.join(" · "));
                let (rect, response) =
                    ui.allocate_exact_size(ui.available_size(), egui::Sense::drag());
                let halves = v.images.len() == 2 && v.layout == Layout::SideBySide;
                let view = if halves {
                    Vec2::new(rect.width() / 2.0, rect.height())
                } else {
                    rect.size()
                };
                let scale = v.scale(size, view);
                if response.dragged() {
                    v.pan += response.drag_delta();
                    v.zoom.get_or_insert(scale);
                }
                if let Some(pointer) = response.hover_pos() {
                    let scroll = ui.input(|i| i.smooth_scroll_delta.y);
                    if scroll != 0.0 {
                        let centre = if halves && pointer.x > rect.center().x {
                            rect.center() + Vec2::new(rect.width() / 4.0, 0.0)
                        } else if halves {
                            rect.center() - Vec2::new(rect.width() / 4.0, 0.0)
                        } else {
                            rect.center()
                        };
                        v.zoom_about(scale, (scroll * 0.003).exp(), pointer - centre);
                    }
                }
                let painter = ui.painter_at(rect);
                painter.rect_filled(rect, 0.0, Color32::from_gray(20));
                // A picture centred at `centre` (plus the pan), drawn only inside `clip`.
                let draw = |clip: Rect, centre: Pos2, t: &egui::TextureHandle| {
                    let at = Rect::from_center_size(centre + v.pan, t.size_vec2() * scale);
                    let uv = Rect::from_min_max(Pos2::ZERO, Pos2::new(1.0, 1.0));
                    ui.painter_at(clip).image(t.id(), at, uv, Color32::WHITE);
                };
                match (&textures[..], halves) {
                    ([Some(a), Some(b)], true) => {
                        let (left, right) = rect.split_left_right_at_fraction(0.5);
                        draw(left, left.center(), a);
                        draw(right, right.center(), b);
                    }
                    ([Some(a), Some(b)], false) => {
                        let x = rect.left() + rect.width() * v.split;
                        draw(
                            Rect::from_min_max(rect.min, Pos2::new(x, rect.bottom())),
                            rect.center(),
                            a,
                        );
                        draw(
                            Rect::from_min_max(Pos2::new(x, rect.top()), rect.max),
                            rect.center(),
                            b,
                        );
                        painter.vline(x, rect.y_range(), egui::Stroke::new(2.0, Color32::WHITE));
                    }
                    ([Some(a)], _) => draw(rect, rect.center(), a),
                    _ => {
                        ui.spinner();
                    }
                }
            } else {
                ui.spinner();
            }
        });
    if !open {
        *viewer = None;
    }
    command
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_then_zoom_keeps_the_pointed_pixel() {
        let mut v = Viewer::one(PathBuf::from("a.png"));
        let (size, view) = (Vec2::new(512.0, 256.0), Vec2::new(256.0, 256.0));
        assert_eq!(v.scale(size, view), 0.5, "fits the wider side");
        // The image point under the pointer before and after a zoom is the same.
        let pointer = Vec2::new(40.0, -20.0);
        let under = |v: &Viewer, s: f32| (pointer - v.pan) / s;
        let before = under(&v, 0.5);
        v.zoom_about(0.5, 2.0, pointer);
        assert_eq!(v.zoom, Some(1.0));
        assert_eq!(under(&v, 1.0), before);
        v.zoom_about(1.0, 1e6, pointer);
        assert_eq!(v.zoom, Some(64.0), "clamped");
    }
}
