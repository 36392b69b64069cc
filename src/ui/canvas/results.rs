//! What runs leave on the nodes, as ComfyUI shows it: a SaveImage / PreviewImage node shows its
//! latest image (click to enlarge), a running sampler its live latent preview and "step 7/20".
//! And what a node's widgets ask of the app beyond editing their value: a FLOAT widget's
//! right-click menu starts a sweep over it.
//!
//! The app fills [`NodeResults`] from the job events and the pictures thread; the canvas draws
//! them and queues [`CanvasAsk`]s, which the app takes after the frame.

use std::collections::HashMap;
use std::path::PathBuf;

use egui::Color32;

use crate::graph::NodeId;
use crate::ui::sweep::Axis;

/// A node's latest images: the first one's texture (once decoded) and all their files.
#[derive(Clone)]
pub struct NodeImages {
    pub texture: Option<egui::TextureHandle>,
    pub paths: Vec<PathBuf>,
}

/// A sampler's latest step: its preview and `step 7/20 · 1.2 s/step`.
#[derive(Clone)]
pub struct LiveStep {
    pub texture: egui::TextureHandle,
    pub caption: String,
}

/// What a node asked for.
#[derive(Clone, Debug, PartialEq)]
pub enum CanvasAsk {
    OpenImage(PathBuf),
    /// Start setting up a sweep over this widget.
    Sweep(Axis),
    /// Add this widget to the sweep being set up, as its rows.
    SweepRows(Axis),
}

/// Run results and asks, per document node.
#[derive(Default)]
pub struct NodeResults {
    pub images: HashMap<NodeId, NodeImages>,
    pub live: HashMap<NodeId, LiveStep>,
    pub asks: Vec<CanvasAsk>,
    /// A sweep with one axis is being set up (a second FLOAT widget can add its rows).
    pub sweep_open: bool,
    /// The open widget menu: the widget's axis and where it was right-clicked.
    pub menu: Option<(Axis, egui::Pos2)>,
    /// A widget's context menu opened this frame: the editor's node finder (which opens on any
    /// right-click in the editor) must not open too.
    pub menu_opened: bool,
}

/// Widest a picture is drawn on a node.
const ON_NODE: f32 = 160.0;

impl NodeResults {
    /// Draws node `id`'s live step and latest images, in its body.
    pub fn show(&mut self, ui: &mut egui::Ui, id: NodeId) {
        if let Some(live) = self.live.get(&id) {
            let size = super::super::pictures::fit(&live.texture, egui::Vec2::splat(ON_NODE), 32.0);
            ui.image((live.texture.id(), size));
            ui.colored_label(Color32::from_rgb(0x90, 0xd0, 0x90), &live.caption);
        }
        if let Some(images) = self.images.get(&id) {
            match &images.texture {
                Some(t) => {
                    let size = super::super::pictures::fit(t, egui::Vec2::splat(ON_NODE), 4.0);
                    let clicked = ui
                        .add(egui::ImageButton::new((t.id(), size)))
                        .on_hover_text("Click to enlarge")
                        .clicked();
                    if clicked && let Some(p) = images.paths.first() {
                        self.asks.push(CanvasAsk::OpenImage(p.clone()));
                    }
                }
                None => {
                    ui.spinner();
                }
            }
            if let Some(first) = images.paths.first() {
                let more = images.paths.len() - 1;
                let name = crate::ui::file_name(first);
                ui.small(if more > 0 {
                    format!("{name} (+{more})")
                } else {
                    name
                });
            }
        }
    }

    /// A FLOAT widget's right-click opens its menu (sweep it). The menu is the canvas's own: the
    /// node under a widget takes the widget's clicks in egui's hit test, so egui's
    /// `context_menu` on a slider never opens there.
    pub fn float_menu(&mut self, response: &egui::Response, axis: Axis) {
        let right_click = response.ctx.input(|i| {
            i.pointer
                .button_clicked(egui::PointerButton::Secondary)
                .then(|| i.pointer.interact_pos())
                .flatten()
        });
        if let Some(pos) = right_click
            && response.rect.contains(pos)
        {
            self.menu = Some((axis, pos));
            self.menu_opened = true;
        }
    }

    /// Draws the open widget menu; a click elsewhere or Escape closes it.
    pub fn menu_ui(&mut self, ctx: &egui::Context) {
        let Some((axis, pos)) = self.menu.clone() else {
            return;
        };
        let area = egui::Area::new(egui::Id::new("widget-menu"))
            .order(egui::Order::Foreground)
            .fixed_pos(pos)
            .show(ctx, |ui| {
                egui::Frame::popup(ui.style()).show(ui, |ui| {
                    if ui.button("Sweep…").clicked() {
                        self.asks.push(CanvasAsk::Sweep(axis.clone()));
                        self.menu = None;
                    }
                    if self.sweep_open && ui.button("Sweep as rows").clicked() {
                        self.asks.push(CanvasAsk::SweepRows(axis.clone()));
                        self.menu = None;
                    }
                });
            });
        let elsewhere = ctx.input(|i| {
            i.key_pressed(egui::Key::Escape)
                || (i.pointer.any_pressed()
                    && i.pointer
                        .interact_pos()
                        .is_some_and(|p| !area.response.rect.contains(p) && p != pos))
        });
        if elsewhere {
            self.menu = None;
        }
    }
}
