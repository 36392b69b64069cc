//! How a node's widget values are drawn and edited on the canvas: sliders that keep exact values,
//! integer fields, checkboxes, text, searchable model lists, and a FLOAT widget's right-click
//! menu (sweep it). Each edit becomes a [`CanvasResponse::SetWidget`] for the document.

use egui::Color32;
use egui_node_graph2 as eng;
use serde_json::json;

use crate::nodes::{Choices, InputKind};

use super::{CanvasNode, CanvasResponse, CanvasState, WidgetValue};

impl eng::WidgetValueTrait for WidgetValue {
    type Response = CanvasResponse;
    type UserState = CanvasState;
    type NodeData = CanvasNode;

    fn value_widget(
        &mut self,
        name: &str,
        _: eng::NodeId,
        ui: &mut egui::Ui,
        state: &mut CanvasState,
        _: &CanvasNode,
    ) -> Vec<CanvasResponse> {
        let before = self.value.clone();
        ui.horizontal(|ui| {
            ui.label(name);
            match &self.kind {
                Some(InputKind::Float { min, max, step, .. }) => {
                    let mut v = self.value.as_f64().unwrap_or(0.0);
                    let slider = egui::Slider::new(&mut v, *min..=*max)
                        .step_by(*step)
                        .max_decimals(17);
                    let response = ui.add(slider);
                    // A right-click (the sweep menu) moves an egui slider to the pointer too:
                    // only primary-button changes are the user's.
                    let secondary = ui.input(|i| {
                        i.pointer.button_down(egui::PointerButton::Secondary)
                            || i.pointer.button_released(egui::PointerButton::Secondary)
                    });
                    // egui snaps a value to the step when it draws it; only a user's change may
                    // reach the document (0.49999999999999956 must stay exactly that).
                    if user_changed(&response) && !secondary {
                        self.value = json!(v);
                    }
                    let axis = crate::ui::sweep::Axis::around(
                        self.node,
                        self.index,
                        name,
                        self.value.as_f64().unwrap_or(0.0),
                        *min,
                        *max,
                    );
                    state.results.float_menu(&response, axis);
                }
                Some(InputKind::Int { min, max, .. }) => {
                    let mut v = self.value.as_i64().unwrap_or(0);
                    if user_changed(&ui.add(egui::DragValue::new(&mut v).range(*min..=*max))) {
                        self.value = json!(v);
                    }
                }
                Some(InputKind::Boolean { .. }) => {
                    let mut v = self.value.as_bool().unwrap_or(false);
                    if ui.checkbox(&mut v, "").changed() {
                        self.value = json!(v);
                    }
                }
                Some(InputKind::String { .. }) => {
                    let mut s = self.value.as_str().unwrap_or_default().to_owned();
                    if ui
                        .add(egui::TextEdit::singleline(&mut s).desired_width(120.0))
                        .changed()
                    {
                        self.value = json!(s);
                    }
                }
                Some(InputKind::Combo(choices)) => {
                    let options: Vec<String> = match choices {
                        Choices::Fixed(c) => c.iter().map(|s| (*s).to_owned()).collect(),
                        Choices::ModelFolder(kind) => {
                            state.models.get(kind).cloned().unwrap_or_default()
                        }
                    };
                    let current = self.value.as_str().unwrap_or_default().to_owned();
                    let shown = if current.is_empty() {
                        "(none)".to_owned()
                    } else {
                        current.clone()
                    };
                    egui::ComboBox::from_id_salt((self.node, self.index))
                        .selected_text(shown)
                        .width(120.0)
                        .show_ui(ui, |ui| {
                            // A searchable list: long model folders are common.
                            let search_id = egui::Id::new(("combo-search", self.node, self.index));
                            let mut query: String =
                                ui.data(|d| d.get_temp(search_id)).unwrap_or_default();
                            ui.text_edit_singleline(&mut query);
                            let q = query.to_lowercase();
                            for o in options.iter().filter(|o| o.to_lowercase().contains(&q)) {
                                if ui.selectable_label(*o == current, o).clicked() {
                                    self.value = json!(o);
                                }
                            }
                            if !current.is_empty() && !options.contains(&current) {
                                ui.colored_label(
                                    Color32::LIGHT_RED,
                                    format!("{current} (missing)"),
                                );
                            }
                            ui.data_mut(|d| d.insert_temp(search_id, query));
                        });
                }
                Some(InputKind::Link(_)) | None => {
                    ui.label(crate::format::pyjson::py_str(&self.value));
                }
            }
        });
        if self.value == before {
            Vec::new()
        } else {
            vec![CanvasResponse::SetWidget {
                node: self.node,
                index: self.index,
                value: self.value.clone(),
            }]
        }
    }
}

/// Whether a widget's value changed because the user acted on it (not because egui clamped or
/// snapped it while drawing).
fn user_changed(r: &egui::Response) -> bool {
    r.changed()
        && (r.dragged() || r.drag_stopped() || r.clicked() || r.has_focus() || r.lost_focus())
}
