//! Patch chains, ComfyUI's `add_patches`: a MODEL or CLIP is a base checkpoint plus patches;
//! planning one key walks that chain and records what each patch does to it.

use std::sync::Arc;

use crate::format::DType;
use crate::model::components::Component;

use super::ir::{Expr, Leaf, Recipe, Step, Stochastic, Term};
use super::lora::{LoraSet, lora_step};
use super::{Planner, Precision, Weights};

/// Per-key `(strength_patch, strength_model)` of a merge.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Rule {
    Fixed {
        s: f64,
        mm: f64,
    },
    /// Ratios by block-name prefix, in the prompt's input order; the first is the default.
    Blocks(Vec<(String, f64)>),
}

impl Rule {
    pub(super) fn strengths(&self, key: &str) -> (f64, f64) {
        match self {
            Rule::Fixed { s, mm } => (*s, *mm),
            Rule::Blocks(ratios) => {
                let mut ratio = ratios.first().map_or(1.0, |r| r.1);
                let mut longest = 0;
                for (prefix, r) in ratios {
                    if key.starts_with(prefix.as_str()) && prefix.len() > longest {
                        ratio = *r;
                        longest = prefix.len();
                    }
                }
                (1.0 - ratio, ratio)
            }
        }
    }
}

#[derive(Clone, Debug)]
pub(super) struct Patch {
    pub(super) node: String,
    pub(super) kind: PatchKind,
}

#[derive(Clone, Debug)]
pub(super) enum PatchKind {
    /// ComfyUI's merge patch: the other model's value, weighed by the node's rule.
    Merge { other: Weights, rule: Rule },
    /// A LoRA's deltas for the keys it matched, at `strength` (strength_model is 1).
    Lora { set: Arc<LoraSet>, strength: f64 },
}

impl Planner<'_> {
    /// Keys of model2 that model1 lacks are ignored, as in ComfyUI; say how many. Shared keys
    /// stored in different dtypes are said too: the second input's values are then computed
    /// with in f32 and stored in the output's dtype, not in their own.
    pub(super) fn report_unmatched(
        &mut self,
        id: &str,
        class_type: &str,
        base: &Weights,
        other: &Weights,
    ) {
        let a = &self.sources[base.source];
        let b = &self.sources[other.source];
        let unmatched = b
            .keys(other.component)
            .iter()
            .filter(|k| a.get(base.component, k).is_none())
            .count();
        // Dtype pairs (first, second) of shared keys that differ, most frequent first.
        let mut pairs: Vec<((DType, DType), usize)> = Vec::new();
        for k in a.keys(base.component) {
            let (Some(ta), Some(tb)) = (a.get(base.component, k), b.get(other.component, k)) else {
                continue;
            };
            if ta.dtype != tb.dtype {
                match pairs.iter_mut().find(|(p, _)| *p == (ta.dtype, tb.dtype)) {
                    Some((_, n)) => *n += 1,
                    None => pairs.push(((ta.dtype, tb.dtype), 1)),
                }
            }
        }
        if unmatched > 0 {
            self.warn(id, None, format!(
                    "{class_type}: {unmatched} {} key(s) of the second input are not in the first and are ignored",
                    base.component.as_str()
                ));
        }
        pairs.sort_by_key(|p| std::cmp::Reverse(p.1));
        if let Some(((first, second), n)) = pairs.first().copied() {
            let others: usize = pairs.iter().skip(1).map(|p| p.1).sum();
            self.warn(id, None, format!(
                "{class_type}: {n} {} key(s) are {second} in the second input and {first} in the first{}; merged in f32 and stored in the output's dtype",
                base.component.as_str(),
                if others > 0 { format!(" (and {others} with other dtype pairs)") } else { String::new() }
            ));
        }
    }

    pub(super) fn leaf(
        &self,
        source: usize,
        component: Component,
        key: &str,
    ) -> Option<(Leaf, Vec<usize>)> {
        let t = self.sources[source].get(component, key)?;
        Some((
            Leaf {
                source,
                offset: t.offset,
                dtype: t.dtype,
                numel: t.numel(),
            },
            t.shape.clone(),
        ))
    }

    /// The lazy expression of `key` in `w`, with the mismatch warnings it implies.
    pub(super) fn expr(&mut self, w: &Weights, key: &str) -> Option<(Expr, Vec<usize>)> {
        let (leaf, shape) = self.leaf(w.source, w.component, key)?;
        let mut steps = Vec::new();
        for p in &w.patches {
            let (other, rule) = match &p.kind {
                PatchKind::Merge { other, rule } => (other, rule),
                PatchKind::Lora { set, strength } => {
                    for entry in set.per_key.get(key).into_iter().flatten() {
                        match lora_step(entry, &shape, *strength) {
                            Ok(step) => steps.push(step),
                            Err(why) => self.warn(
                                &p.node,
                                Some(key.to_owned()),
                                format!("ERROR lora {key}: {why}; not applied"),
                            ),
                        }
                    }
                    continue;
                }
            };
            if w.component == Component::Clip
                && (key.ends_with(".position_ids") || key.ends_with(".logit_scale"))
            {
                continue;
            }
            if self.sources[other.source]
                .get(other.component, key)
                .is_none()
            {
                continue;
            }
            let (s, mm) = rule.strengths(key);
            let mm = (mm != 1.0).then_some(mm as f32);
            let mut add = None;
            if s != 0.0 {
                let Some((sub, sub_shape)) = self.expr(other, key) else {
                    continue;
                };
                if sub_shape == shape {
                    add = Some((s as f32, Term::Weights(sub)));
                } else {
                    self.warn(
                        &p.node,
                        Some(key.to_owned()),
                        format!(
                            "SHAPE MISMATCH {key} WEIGHT NOT MERGED {sub_shape:?} != {shape:?}{}",
                            if mm.is_some() {
                                " (the first input is still scaled)"
                            } else {
                                ""
                            }
                        ),
                    );
                }
            }
            if mm.is_some() || add.is_some() {
                steps.push(Step {
                    mm,
                    add,
                    dora: None,
                    window: None,
                });
            }
        }
        Some((Expr { leaf, steps }, shape))
    }

    /// The recipe for a weight under the precision setting.
    pub(super) fn recipe(
        &mut self,
        node: &str,
        w: &Weights,
        key: &str,
    ) -> Option<(Recipe, DType, Vec<usize>)> {
        let (expr, shape) = self.expr(w, key)?;
        let stored = expr.leaf.dtype;
        if !stored.is_mergeable() {
            if !expr.steps.is_empty() {
                self.warn(node, Some(key.to_owned()), format!("{key} is {stored}, which Amalgam does not merge; the first input's value is kept"));
            }
            return Some((Recipe::Copy(expr.leaf), stored, shape));
        }
        // ComfyUI's model patcher names diffusion-model weights `diffusion_model.<key>`: the
        // string its fp8 rounding is seeded with.
        let patcher_key =
            (w.component == Component::Model).then(|| format!("diffusion_model.{key}"));
        Some(self.float_recipe(expr, shape, patcher_key.as_deref()))
    }

    /// `patcher_key` is set for diffusion-model weights (the only ones ComfyUI keeps in fp8).
    pub(super) fn float_recipe(
        &self,
        expr: Expr,
        shape: Vec<usize>,
        patcher_key: Option<&str>,
    ) -> (Recipe, DType, Vec<usize>) {
        let stored = expr.leaf.dtype;
        let fp8_stored = matches!(stored, DType::F8E4M3 | DType::F8E5M2);
        let (out, round_inputs) = match self.precision {
            Precision::Keep if fp8_stored && patcher_key.is_none() && !expr.steps.is_empty() => {
                (DType::F16, None)
            }
            Precision::Keep => (stored, None),
            Precision::Fp32 => (DType::F32, None),
            Precision::Fp16 => (DType::F16, Some(DType::F16)),
            Precision::Bf16 => (DType::BF16, Some(DType::BF16)),
            Precision::Fp8E4M3 if patcher_key.is_some() => (DType::F8E4M3, Some(DType::F8E4M3)),
            Precision::Fp8E4M3 if fp8_stored && !expr.steps.is_empty() => (DType::F16, None),
            Precision::Fp8E4M3 => (stored, None),
        };
        let inputs_unchanged = round_inputs.is_none_or(|r| r == stored);
        if expr.steps.is_empty() && out == stored && inputs_unchanged {
            return (Recipe::Copy(expr.leaf), out, shape);
        }
        let stochastic = match (out, patcher_key) {
            (DType::F8E4M3 | DType::F8E5M2, Some(key)) => Some(Stochastic::new(key)),
            _ => None,
        };
        (
            Recipe::Compute {
                expr,
                out,
                round_inputs,
                stochastic,
            },
            out,
            shape,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_rule_takes_the_longest_prefix_and_the_first_as_default() {
        let r = Rule::Blocks(vec![
            ("time_embed.".into(), 0.1),
            ("input_blocks.1.".into(), 0.2),
            ("input_blocks.10.".into(), 0.3),
            ("out".into(), 0.4),
            ("output_blocks.".into(), 0.5),
        ]);
        assert_eq!(r.strengths("input_blocks.1.0.weight"), (1.0 - 0.2, 0.2));
        assert_eq!(r.strengths("input_blocks.10.0.weight"), (1.0 - 0.3, 0.3));
        assert_eq!(r.strengths("output_blocks.3.0.weight"), (1.0 - 0.5, 0.5));
        assert_eq!(r.strengths("out.2.weight"), (1.0 - 0.4, 0.4));
        // No match: the first ratio, not 1.0.
        assert_eq!(r.strengths("label_emb.0.0.weight"), (1.0 - 0.1, 0.1));
    }
}
