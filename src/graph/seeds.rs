//! `control_after_generate`, as ComfyUI's frontend applies it after each queue: the companion
//! widget right after a seed says `fixed` (leave it), `increment` / `decrement` (± 1, kept
//! inside the widget's range) or `randomize` (a new value from `min` up to
//! `min(max, 2^50)`, the frontend's largest random range). The queued job keeps the value it
//! was queued with; the document — and so the saved workflow — gets the next one.

use serde_json::json;

use crate::nodes::{InputKind, Registry};

use super::Document;

/// The frontend's largest random range (`MAX_RANDOM_RANGE`, 2^50).
pub const MAX_RANDOM_RANGE: i64 = 1 << 50;

/// Applies every `control_after_generate` of the document's active nodes — and of seeds that
/// subgraph instances promote, whose value lives on the instance — ; `random` gives uniformly
/// distributed 64-bit numbers. Returns how many values changed.
pub fn after_queue(doc: &mut Document, mut random: impl FnMut() -> u64) -> usize {
    let registry = Registry::builtin();
    let mut changed = 0;
    for node in &mut doc.nodes {
        if node.mode == super::Mode::Never {
            continue;
        }
        let Some(schema) = registry.get(&node.type_) else {
            continue;
        };
        for (pos, spec) in schema.widget_slots() {
            let values = node.widget_values();
            let (Some(value), Some(control)) = (values.get(pos), values.get(pos + 1)) else {
                continue;
            };
            if let Some(next) = next_value(&spec.kind, value, control, &mut random) {
                super::edit::set_widget(node, pos, json!(next));
                changed += 1;
            }
        }
    }
    // Promoted seeds: the instance holds the value the inner seed gets.
    let defs = super::subgraph::Definitions::of(doc);
    let mut promoted = Vec::new();
    for node in doc.nodes.iter().filter(|n| n.mode != super::Mode::Never) {
        for p in defs.promoted_widgets(node, registry) {
            let (Some((class_type, widget)), Some(control)) = (&p.inner, &p.control) else {
                continue;
            };
            let Some(spec) = registry
                .get(class_type)
                .and_then(|s| s.inputs.iter().find(|i| i.name == *widget))
            else {
                continue;
            };
            if let Some(next) = next_value(&spec.kind, &p.value, control, &mut random) {
                promoted.push((node.id, p.index, next));
            }
        }
    }
    for (id, index, next) in promoted {
        if let Some(node) = doc.node_mut(id) {
            super::edit::set_widget(node, index, json!(next));
            changed += 1;
        }
    }
    changed
}

/// The value after a queue for a seed widget of `kind` at `value` with `control`, if it changes.
fn next_value(
    kind: &InputKind,
    value: &serde_json::Value,
    control: &serde_json::Value,
    random: &mut impl FnMut() -> u64,
) -> Option<i64> {
    let InputKind::Int {
        min,
        max,
        control_after_generate: true,
        ..
    } = *kind
    else {
        return None;
    };
    let current = value.as_i64().or_else(|| value.as_u64().map(|_| max))?;
    let next = match control.as_str() {
        Some("increment") => current.saturating_add(1).clamp(min, max),
        Some("decrement") => current.saturating_sub(1).clamp(min, max),
        Some("randomize") => {
            let top = max.min(MAX_RANDOM_RANGE);
            let range = (top - min).max(1) as u64;
            min + (random() % range) as i64
        }
        _ => return None,
    };
    (value.as_i64() != Some(next)).then_some(next)
}

/// Random numbers for [`after_queue`] from the standard library's per-process random keys
/// (no generator crate: seeds need no cryptographic quality, only to differ).
pub fn system_random() -> impl FnMut() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let state = std::collections::hash_map::RandomState::new();
    let mut counter = 0u64;
    move || {
        counter += 1;
        let mut h = state.build_hasher();
        h.write_u64(counter);
        h.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc_with(control: &str, seed: i64) -> Document {
        let mut doc = crate::graph::examples::text_to_image("a.safetensors", "b.safetensors");
        let k = sampler(&doc);
        let k = doc.node_mut(k).expect("sampler");
        k.set_widget_value(0, json!(seed));
        k.set_widget_value(1, json!(control));
        doc
    }

    fn sampler(doc: &Document) -> crate::graph::NodeId {
        doc.first_of_type("KSampler").expect("sampler")
    }

    fn widgets(doc: &Document) -> Vec<serde_json::Value> {
        doc.node(sampler(doc))
            .expect("sampler")
            .widget_values()
            .to_vec()
    }

    fn seed(doc: &Document) -> serde_json::Value {
        widgets(doc)[0].clone()
    }

    #[test]
    fn each_control_moves_the_seed_as_the_frontend_does() {
        let mut d = doc_with("fixed", 42);
        assert_eq!(after_queue(&mut d, || 7), 0);
        assert_eq!(seed(&d), json!(42));
        let mut d = doc_with("increment", 42);
        assert_eq!(after_queue(&mut d, || 7), 1);
        assert_eq!(seed(&d), json!(43));
        let mut d = doc_with("decrement", 0);
        assert_eq!(after_queue(&mut d, || 7), 0, "kept at the minimum");
        let mut d = doc_with("decrement", 42);
        after_queue(&mut d, || 7);
        assert_eq!(seed(&d), json!(41));
        let mut d = doc_with("randomize", 42);
        after_queue(&mut d, || (1 << 50) + 5);
        assert_eq!(seed(&d), json!(5), "drawn below 2^50");
        // A name map written by a 2026 frontend moves with the value.
        let mut d = doc_with("increment", 42);
        let k = sampler(&d);
        d.node_mut(k).expect("k").fields.insert(
            "widgets_values_named".into(),
            json!({"seed": 42, "control_after_generate": "increment"}),
        );
        after_queue(&mut d, || 7);
        assert_eq!(
            d.node(k).expect("k").fields["widgets_values_named"]["seed"],
            json!(43)
        );
        let mut d = doc_with("randomize", 42);
        after_queue(&mut d, || (1 << 50) + 5);
        // The other widgets are untouched.
        assert_eq!(widgets(&d)[1..], widgets(&doc_with("randomize", 5))[1..]);
    }

    #[test]
    fn muted_samplers_keep_their_seed_and_random_numbers_differ() {
        let mut d = doc_with("increment", 42);
        for n in &mut d.nodes {
            n.mode = crate::graph::Mode::Never;
        }
        assert_eq!(after_queue(&mut d, || 7), 0);
        let mut r = system_random();
        let draws: std::collections::HashSet<u64> = (0..100).map(|_| r()).collect();
        assert_eq!(draws.len(), 100);
    }
}
