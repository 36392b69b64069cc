//! Grouping a LoRA file's tensors into deltas per patched key — a pure function over tensor
//! records, so every adapter kind (LoRA pairs, LoCon's Tucker core, LoHa and its CP form, LoKr,
//! DoRA scales, full differences) is unit-tested on in-memory records without files.

use std::collections::{HashMap, HashSet};

use crate::format::TensorRecord;
use crate::model::lora::Part;

use super::ir::{Factor, KronTerm, Leaf, LoraTerm};
use super::lora::{LoraDelta, LoraEntry, LoraSet, LoraTargets};

/// A LoRA file's tensors, grouped.
#[derive(Debug, Default)]
pub(super) struct Grouped {
    /// Deltas for the diffusion model, by key without `diffusion_model.`.
    pub(super) model: LoraSet,
    /// Deltas for the text encoders, by ComfyUI's CLIP key.
    pub(super) clip: LoraSet,
    /// Tensor names that matched nothing, in file order.
    pub(super) unmatched: Vec<String>,
    /// `(name, message)` for entries that matched a key but cannot be applied, in file order.
    pub(super) problems: Vec<(String, String)>,
}

/// Groups the tensors of the LoRA file `source` into deltas for the MODEL and the CLIP: LoRA
/// up/down pairs (with `alpha`), LoHa (`hada_w1_a/b`, `hada_w2_a/b`), LoKr, and full
/// differences (`diff` for a weight, `diff_b` for its bias). `alpha_of` gives the value of
/// `<base>.alpha` when the file has one.
pub(super) fn group(
    records: &[TensorRecord],
    source: usize,
    map: &LoraTargets,
    alpha_of: impl Fn(&str) -> Option<f64>,
) -> Grouped {
    const PAIRS: [(&str, &str); 6] = [
        (".lora_up.weight", ".lora_down.weight"),
        ("_lora.up.weight", "_lora.down.weight"),
        (".lora_B.weight", ".lora_A.weight"),
        (".lora.up.weight", ".lora.down.weight"),
        (
            ".lora_linear_layer.up.weight",
            ".lora_linear_layer.down.weight",
        ),
        (".lora_B.default.weight", ".lora_A.default.weight"),
    ];
    let index: HashMap<&str, &TensorRecord> =
        records.iter().map(|r| (r.name.as_str(), r)).collect();
    let get = |name: &str| index.get(name).copied();
    let leaf = |r: &TensorRecord| Leaf {
        source,
        offset: r.offset,
        dtype: r.dtype,
        numel: r.numel(),
    };
    let float = |r: &TensorRecord| r.dtype.is_mergeable();
    let mut problems: Vec<(String, String)> = Vec::new();
    let (mut model, mut clip) = (LoraSet::default(), LoraSet::default());
    let mut used = HashSet::new();
    // DoRA's magnitude vector, for any low-rank kind (LoRA, LoHa, LoKr), as ComfyUI loads it.
    let dora_of = |base: &str| {
        get(&format!("{base}.dora_scale"))
            .filter(|d| float(d))
            .map(|d| (leaf(d), d.shape.clone()))
    };
    let mut insert =
        |(target, part): (&str, Option<Part>), delta: LoraDelta, scale: f64, base: Option<&str>| {
            let entry = LoraEntry {
                delta,
                scale,
                dora: base.and_then(dora_of),
                part,
            };
            let entries = match target.strip_prefix("diffusion_model.") {
                Some(k) => model.per_key.entry(k.to_owned()).or_default(),
                None => clip.per_key.entry(target.to_owned()).or_default(),
            };
            // As in ComfyUI, a later name for the same key and part replaces an earlier one.
            entries.retain(|e| e.part != part);
            entries.push(entry);
        };
    for t in records {
        let name = t.name.as_str();
        // A low-rank pair: up [out, rank(, 1, 1)], down [rank, inner…].
        if let Some((base, down_suffix)) = PAIRS
            .iter()
            .find_map(|(u, d)| name.strip_suffix(u).map(|b| (b, *d)))
            && let Some(target) = map.get(base)
            && let Some(down) = get(&format!("{base}{down_suffix}"))
            && float(t)
            && float(down)
            && t.shape.len() >= 2
            && !down.shape.is_empty()
        {
            let (out, rank) = (t.shape[0], down.shape[0]);
            let mut inner = down.shape[1..].iter().product::<usize>();
            if t.shape[1..].iter().product::<usize>() != rank {
                problems.push((
                    base.to_owned(),
                    format!(
                        "ERROR lora {base}: up {:?} and down {:?} do not share a rank; not applied",
                        t.shape, down.shape
                    ),
                ));
                continue;
            }
            // LoCon with a Tucker core: up [out, rank, 1, 1], down [rank, in, 1, 1],
            // mid [rank, rank, kh, kw]; the delta is [out, in, kh, kw].
            let mid_name = format!("{base}.lora_mid.weight");
            let mid =
                match get(&mid_name) {
                    None => None,
                    Some(m)
                        if float(m)
                            && m.shape.len() == 4
                            && m.shape[0] == rank
                            && m.shape[1] == rank
                            && down.shape.len() >= 2
                            && down.shape.iter().skip(2).all(|&d| d == 1) =>
                    {
                        let khw = m.shape[2] * m.shape[3];
                        let in_channels = inner;
                        inner = in_channels * khw;
                        Some((leaf(m), in_channels, khw))
                    }
                    Some(m) => {
                        problems.push((base.to_owned(), format!(
                            "ERROR lora {base}: lora_mid {:?} does not fit down {:?}; not applied",
                            m.shape, down.shape
                        )));
                        used.extend([name.to_owned(), format!("{base}{down_suffix}"), mid_name]);
                        continue;
                    }
                };
            let term = LoraTerm {
                up: leaf(t),
                down: leaf(down),
                out,
                rank,
                inner,
                hadamard: None,
                mid,
                mid2: None,
                up_transposed: false,
            };
            insert(
                target,
                LoraDelta::Factors(term),
                crate::model::lora::lora_scale(alpha_of(base), rank),
                Some(base),
            );
            used.extend([
                name.to_owned(),
                format!("{base}{down_suffix}"),
                format!("{base}.alpha"),
                format!("{base}.dora_scale"),
                mid_name,
            ]);
            continue;
        }
        // LoHa: (w1a @ w1b) ⊙ (w2a @ w2b), scale alpha / w1b.shape[0].
        if let Some(base) = name.strip_suffix(".hada_w1_a")
            && let Some(target) = map.get(base)
        {
            let part = |s: &str| get(&format!("{base}.{s}"));
            let (Some(w1b), Some(w2a), Some(w2b)) =
                (part("hada_w1_b"), part("hada_w2_a"), part("hada_w2_b"))
            else {
                continue;
            };
            let floats = [t, w1b, w2a, w2b].iter().all(|r| float(r));
            let term = match (part("hada_t1"), part("hada_t2")) {
                (None, None) => {
                    let (out, rank, inner) = (
                        t.shape.first().copied().unwrap_or(0),
                        w1b.shape.first().copied().unwrap_or(0),
                        w1b.shape.iter().skip(1).product::<usize>(),
                    );
                    let rank2 = w2b.shape.first().copied().unwrap_or(0);
                    let consistent = floats
                        && t.numel() == out * rank
                        && w2a.numel() == out * rank2
                        && w2b.numel() == rank2 * inner;
                    consistent.then(|| LoraTerm {
                        up: leaf(t),
                        down: leaf(w1b),
                        out,
                        rank,
                        inner,
                        hadamard: Some((leaf(w2a), leaf(w2b), rank2)),
                        mid: None,
                        mid2: None,
                        up_transposed: false,
                    })
                }
                // CP/Tucker form: w1a [rank, out], w1b [rank, in], t1 [rank, rank, kh, kw],
                // and m1 = einsum("ijkl,jr,ip->prkl", t1, w1b, w1a); the same for m2.
                (Some(t1), Some(t2)) => {
                    let dims = |a: &TensorRecord, b: &TensorRecord, c: &TensorRecord| match (
                        &a.shape[..],
                        &b.shape[..],
                        &c.shape[..],
                    ) {
                        ([r, out], [r2, inn], [r3, r4, kh, kw])
                            if r == r2 && r == r3 && r == r4 =>
                        {
                            Some((*r, *out, *inn, kh * kw, [*kh, *kw]))
                        }
                        _ => None,
                    };
                    match (dims(t, w1b, t1), dims(w2a, w2b, t2)) {
                        (Some((rank, out, inn, khw, k1)), Some((rank2, out2, in2, _, k2)))
                            if floats
                                && float(t1)
                                && float(t2)
                                && (out, inn, k1) == (out2, in2, k2) =>
                        {
                            Some(LoraTerm {
                                up: leaf(t),
                                down: leaf(w1b),
                                out,
                                rank,
                                inner: inn * khw,
                                hadamard: Some((leaf(w2a), leaf(w2b), rank2)),
                                mid: Some((leaf(t1), inn, khw)),
                                mid2: Some(leaf(t2)),
                                up_transposed: true,
                            })
                        }
                        _ => None,
                    }
                }
                _ => None,
            };
            let Some(term) = term else {
                problems.push((
                    base.to_owned(),
                    format!("ERROR lora {base}: LoHa factor shapes do not agree; not applied"),
                ));
                continue;
            };
            let rank = term.rank;
            insert(
                target,
                LoraDelta::Factors(term),
                crate::model::lora::lora_scale(alpha_of(base), rank),
                Some(base),
            );
            for s in [
                "hada_w1_a",
                "hada_w1_b",
                "hada_w2_a",
                "hada_w2_b",
                "hada_t1",
                "hada_t2",
                "alpha",
                "dora_scale",
            ] {
                used.insert(format!("{base}.{s}"));
            }
            continue;
        }
        // LoKr: kron(w1, w2), each factor whole or a product; scale alpha / the factored rank.
        if let Some(base) = name
            .strip_suffix(".lokr_w1")
            .or_else(|| name.strip_suffix(".lokr_w1_a"))
            && let Some(target) = map.get(base)
        {
            let part = |s: &str| get(&format!("{base}.{s}"));
            let mut dim = None;
            let mut factor = |whole: &str, fa: &str, fb: &str| -> Option<(Factor, Vec<usize>)> {
                if let Some(w) = part(whole) {
                    return float(w).then(|| (Factor::Full(leaf(w)), w.shape.clone()));
                }
                let (a, b) = (part(fa)?, part(fb)?);
                let rank = *b.shape.first()?;
                // The second factor in Tucker form: a [rank, c], b [rank, d],
                // t2 [rank, rank, kh, kw] make w2 [c, d, kh, kw].
                if let (true, Some(t)) = (fb == "lokr_w2_b", part("lokr_t2")) {
                    let ([ra, c], [_, d], [ti, tj, kh, kw]) =
                        (&a.shape[..], &b.shape[..], &t.shape[..])
                    else {
                        return None;
                    };
                    if !(float(a) && float(b) && float(t))
                        || *ra != rank
                        || *ti != rank
                        || *tj != rank
                    {
                        return None;
                    }
                    dim = Some(rank);
                    return Some((
                        Factor::Tucker {
                            a: leaf(a),
                            b: leaf(b),
                            t: leaf(t),
                            rank,
                            khw: kh * kw,
                        },
                        vec![*c, *d, *kh, *kw],
                    ));
                }
                if !float(a)
                    || !float(b)
                    || a.shape.len() != 2
                    || a.shape[1] != rank
                    || b.shape.len() != 2
                {
                    return None;
                }
                dim = Some(rank);
                Some((
                    Factor::Product {
                        a: leaf(a),
                        b: leaf(b),
                        rank,
                    },
                    vec![a.shape[0], b.shape[1]],
                ))
            };
            let w1 = factor("lokr_w1", "lokr_w1_a", "lokr_w1_b");
            let w2 = factor("lokr_w2", "lokr_w2_a", "lokr_w2_b");
            let parsed = match (w1, w2) {
                (Some((w1, s1)), Some((w2, s2)))
                    if s1.len() == 2 && (s2.len() == 2 || s2.len() == 4) =>
                {
                    Ok((w1, s1, w2, s2))
                }
                _ => Err("LoKr factors are missing, malformed or of an unsupported shape"),
            };
            let (w1, s1, w2, s2) = match parsed {
                Ok(p) => p,
                Err(why) => {
                    problems.push((base.to_owned(), format!("lora {base}: {why}; not applied")));
                    continue;
                }
            };
            let hw = s2.iter().skip(2).product::<usize>();
            let term = KronTerm {
                w1,
                w2,
                w1_shape: [s1[0], s1[1]],
                w2_shape: [s2[0], s2[1], hw],
            };
            let n = s1[0] * s1[1] * s2[0] * s2[1] * hw;
            let scale = match (alpha_of(base), dim) {
                (Some(al), Some(d)) => al / d as f64,
                _ => 1.0,
            };
            insert(target, LoraDelta::Kron(term, n), scale, Some(base));
            for s in [
                "dora_scale",
                "lokr_t2",
                "lokr_w1",
                "lokr_w1_a",
                "lokr_w1_b",
                "lokr_w2",
                "lokr_w2_a",
                "lokr_w2_b",
                "alpha",
            ] {
                used.insert(format!("{base}.{s}"));
            }
            continue;
        }
        // Full differences, added at the strength as they are.
        let full = name
            .strip_suffix(".diff_b")
            .and_then(|b| {
                map.whole
                    .get(b)
                    .map(|w| w.strip_suffix(".weight").map(|s| format!("{s}.bias")))
            })
            .flatten()
            .or_else(|| {
                name.strip_suffix(".diff")
                    .and_then(|b| map.whole.get(b).cloned())
            });
        if let Some(target) = full
            && float(t)
        {
            insert(
                (&target, None),
                LoraDelta::Full(leaf(t), t.shape.clone()),
                1.0,
                None,
            );
            used.insert(name.to_owned());
        }
    }
    let unmatched = records
        .iter()
        .map(|t| t.name.clone())
        .filter(|n| !used.contains(n))
        .collect();
    Grouped {
        model,
        clip,
        unmatched,
        problems,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::format::DType;

    /// Records laid out back to back from offset 0, in the given order.
    fn records(tensors: &[(&str, DType, &[usize])]) -> Vec<TensorRecord> {
        let mut offset = 0;
        tensors
            .iter()
            .map(|(name, dtype, shape)| {
                let len = (shape.iter().product::<usize>() * dtype.size_bytes()) as u64;
                let r = TensorRecord {
                    name: (*name).to_owned(),
                    dtype: *dtype,
                    shape: shape.to_vec(),
                    offset,
                    len,
                };
                offset += len;
                r
            })
            .collect()
    }

    /// `lora_unet_a` patches `diffusion_model.a.weight`; `lora_te_b` the CLIP key `b.weight`;
    /// `fused` is rows 4..8 of `diffusion_model.qkv.weight`.
    fn targets() -> LoraTargets {
        LoraTargets {
            whole: HashMap::from([
                (
                    "lora_unet_a".to_owned(),
                    "diffusion_model.a.weight".to_owned(),
                ),
                ("lora_te_b".to_owned(), "b.weight".to_owned()),
            ]),
            parts: HashMap::from([(
                "fused".to_owned(),
                (
                    "diffusion_model.qkv.weight".to_owned(),
                    Some(Part::Rows { start: 4, rows: 4 }),
                ),
            )]),
        }
    }

    /// Groups `tensors` as LoRA file 7; an `<base>.alpha` tensor has the value 1.
    fn group_of(tensors: &[(&str, DType, &[usize])]) -> Grouped {
        let has_alpha = |base: &str| {
            let name = format!("{base}.alpha");
            tensors.iter().any(|(n, ..)| *n == name)
        };
        group(&records(tensors), 7, &targets(), |base| {
            has_alpha(base).then_some(1.0)
        })
    }

    /// The files every leaf of an entry's delta comes from.
    fn sources(e: &LoraEntry) -> Vec<usize> {
        let factor = |f: &Factor| match f {
            Factor::Full(l) => vec![l.source],
            Factor::Product { a, b, .. } => vec![a.source, b.source],
            Factor::Tucker { a, b, t, .. } => vec![a.source, b.source, t.source],
        };
        match &e.delta {
            LoraDelta::Factors(t) => vec![t.up.source, t.down.source],
            LoraDelta::Full(l, _) => vec![l.source],
            LoraDelta::Kron(k, _) => [factor(&k.w1), factor(&k.w2)].concat(),
        }
    }

    const F16: DType = DType::F16;

    /// One row per adapter form: the tensors of a file, and what each matched key gets.
    #[test]
    fn each_adapter_form_groups_into_its_delta() {
        type Tensors = Vec<(&'static str, DType, &'static [usize])>;
        type Check = fn(&LoraEntry) -> bool;
        let cases: [(&str, Tensors, &str, Check); 7] = [
            (
                "kohya LoRA with alpha",
                vec![
                    ("lora_unet_a.lora_up.weight", F16, &[8, 2]),
                    ("lora_unet_a.lora_down.weight", F16, &[2, 3]),
                    ("lora_unet_a.alpha", F16, &[]),
                ],
                "a.weight",
                |e| {
                    matches!(&e.delta, LoraDelta::Factors(t) if t.out == 8 && t.rank == 2 && t.inner == 3 && t.hadamard.is_none())
                        && e.scale == 0.5
                },
            ),
            (
                "PEFT names, no alpha: scale 1",
                vec![
                    ("lora_unet_a.lora_B.weight", F16, &[8, 2]),
                    ("lora_unet_a.lora_A.weight", F16, &[2, 3]),
                ],
                "a.weight",
                |e| e.scale == 1.0,
            ),
            (
                "LoCon with a Tucker core",
                vec![
                    ("lora_unet_a.lora_up.weight", F16, &[8, 2, 1, 1]),
                    ("lora_unet_a.lora_down.weight", F16, &[2, 3, 1, 1]),
                    ("lora_unet_a.lora_mid.weight", F16, &[2, 2, 3, 3]),
                ],
                "a.weight",
                |e| matches!(&e.delta, LoraDelta::Factors(t) if t.inner == 27 && t.mid.as_ref().is_some_and(|m| m.1 == 3 && m.2 == 9)),
            ),
            (
                "LoHa",
                vec![
                    ("lora_unet_a.hada_w1_a", F16, &[8, 2]),
                    ("lora_unet_a.hada_w1_b", F16, &[2, 3]),
                    ("lora_unet_a.hada_w2_a", F16, &[8, 4]),
                    ("lora_unet_a.hada_w2_b", F16, &[4, 3]),
                    ("lora_unet_a.alpha", F16, &[]),
                ],
                "a.weight",
                |e| {
                    matches!(&e.delta, LoraDelta::Factors(t) if t.hadamard.as_ref().is_some_and(|h| h.2 == 4))
                        && e.scale == 0.5
                },
            ),
            (
                "LoKr with a factored second matrix and DoRA",
                vec![
                    ("lora_unet_a.lokr_w1", F16, &[2, 3]),
                    ("lora_unet_a.lokr_w2_a", F16, &[4, 2]),
                    ("lora_unet_a.lokr_w2_b", F16, &[2, 5]),
                    ("lora_unet_a.alpha", F16, &[]),
                    ("lora_unet_a.dora_scale", F16, &[8, 1]),
                ],
                "a.weight",
                |e| {
                    matches!(&e.delta, LoraDelta::Kron(k, n) if k.w1_shape == [2, 3] && k.w2_shape == [4, 5, 1] && *n == 120)
                        && e.scale == 0.5
                        && e.dora.as_ref().is_some_and(|d| d.1 == [8, 1])
                },
            ),
            (
                "a full difference and its bias",
                vec![
                    ("lora_unet_a.diff", F16, &[8, 3]),
                    ("lora_unet_a.diff_b", F16, &[8]),
                ],
                "a.bias",
                |e| matches!(&e.delta, LoraDelta::Full(_, s) if *s == [8]) && e.scale == 1.0,
            ),
            (
                "rows of a fused weight",
                vec![
                    ("fused.lora_up.weight", F16, &[4, 2]),
                    ("fused.lora_down.weight", F16, &[2, 3]),
                ],
                "qkv.weight",
                |e| e.part == Some(Part::Rows { start: 4, rows: 4 }),
            ),
        ];
        for (label, tensors, key, check) in cases {
            let g = group_of(&tensors);
            assert!(
                g.unmatched.is_empty(),
                "{label}: unmatched {:?}",
                g.unmatched
            );
            assert!(g.problems.is_empty(), "{label}: {:?}", g.problems);
            let entries = g.model.per_key.get(key);
            let entry = entries.and_then(|e| e.last()).unwrap_or_else(|| {
                panic!("{label}: nothing for {key}: {:?}", g.model.per_key.keys())
            });
            assert!(check(entry), "{label}: {entry:?}");
            assert!(
                sources(entry).iter().all(|&s| s == 7),
                "{label}: leaves name the LoRA file"
            );
        }
    }

    #[test]
    fn text_encoder_keys_go_to_the_clip_and_strangers_are_unmatched() {
        let g = group_of(&[
            ("lora_te_b.lora_up.weight", F16, &[4, 1]),
            ("lora_te_b.lora_down.weight", F16, &[1, 4]),
            ("lora_unet_nowhere.lora_up.weight", F16, &[4, 1]),
            ("lora_unet_nowhere.lora_down.weight", F16, &[1, 4]),
            ("lora_unet_a.lora_up.weight", DType::I64, &[4, 1]),
            ("lora_unet_a.lora_down.weight", F16, &[1, 4]),
        ]);
        assert!(g.clip.per_key.contains_key("b.weight"));
        assert!(g.model.per_key.is_empty(), "integer factors are not a LoRA");
        assert_eq!(
            g.unmatched,
            [
                "lora_unet_nowhere.lora_up.weight",
                "lora_unet_nowhere.lora_down.weight",
                "lora_unet_a.lora_up.weight",
                "lora_unet_a.lora_down.weight",
            ]
        );
    }

    #[test]
    fn malformed_entries_are_problems_named_by_their_base() {
        let g = group_of(&[
            // up and down disagree on the rank.
            ("lora_unet_a.lora_up.weight", F16, &[8, 2]),
            ("lora_unet_a.lora_down.weight", F16, &[3, 3]),
            // a LoHa whose second pair does not fit.
            ("lora_te_b.hada_w1_a", F16, &[4, 2]),
            ("lora_te_b.hada_w1_b", F16, &[2, 3]),
            ("lora_te_b.hada_w2_a", F16, &[5, 2]),
            ("lora_te_b.hada_w2_b", F16, &[2, 3]),
        ]);
        let named: Vec<&str> = g.problems.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(named, ["lora_unet_a", "lora_te_b"]);
        assert!(
            g.problems[0].1.contains("do not share a rank"),
            "{:?}",
            g.problems
        );
        assert!(
            g.problems[1].1.contains("LoHa factor shapes"),
            "{:?}",
            g.problems
        );
        assert!(g.model.per_key.is_empty() && g.clip.per_key.is_empty());
    }

    #[test]
    fn a_later_name_for_the_same_key_replaces_the_earlier() {
        let g = group_of(&[
            ("lora_unet_a.lora_up.weight", F16, &[8, 2]),
            ("lora_unet_a.lora_down.weight", F16, &[2, 3]),
            ("lora_unet_a.lora_B.weight", F16, &[8, 1]),
            ("lora_unet_a.lora_A.weight", F16, &[1, 3]),
        ]);
        let entries = &g.model.per_key["a.weight"];
        assert_eq!(entries.len(), 1);
        assert!(matches!(&entries[0].delta, LoraDelta::Factors(t) if t.rank == 1));
    }
}
