//! Unit tests of the kernel on in-memory sources: every step kind, windows, DoRA's first pass,
//! NaN reporting and chunk/tile boundaries. Each expected value is computed here with plain
//! scalar f32 operations in ComfyUI's order, independently of the kernel's tiled loops.

use std::sync::Arc;

use half::{bf16, f16};

use super::*;
use crate::engine::plan::Window;

/// In-memory sources built up one tensor at a time; each tensor is its own source.
#[derive(Default)]
struct Mem {
    sources: Vec<Vec<u8>>,
}

impl Mem {
    fn push(&mut self, bytes: Vec<u8>, dtype: DType, numel: usize) -> Leaf {
        self.sources.push(bytes);
        Leaf {
            source: self.sources.len() - 1,
            offset: 0,
            dtype,
            numel,
        }
    }
    fn f32(&mut self, v: &[f32]) -> Leaf {
        self.push(bytemuck::cast_slice(v).to_vec(), DType::F32, v.len())
    }
    fn f16(&mut self, v: &[f32]) -> Leaf {
        let h: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
        self.push(bytemuck::cast_slice(&h).to_vec(), DType::F16, v.len())
    }
    fn bf16(&mut self, v: &[f32]) -> Leaf {
        let h: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
        self.push(bytemuck::cast_slice(&h).to_vec(), DType::BF16, v.len())
    }
}

/// Deterministic, varied values (a small LCG), with sign changes and several magnitudes.
fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            ((x >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 3.0
        })
        .collect()
}

fn compute(expr: Expr, out: DType) -> Recipe {
    Recipe::Compute {
        expr,
        out,
        round_inputs: None,
        stochastic: None,
    }
}

fn expr(leaf: Leaf, steps: Vec<Step>) -> Expr {
    Expr { leaf, steps }
}

fn plain(leaf: Leaf) -> Expr {
    Expr {
        leaf,
        steps: Vec::new(),
    }
}

fn step(mm: Option<f32>, add: Option<(f32, Term)>) -> Step {
    Step {
        mm,
        add,
        dora: None,
        window: None,
    }
}

/// Produces elements `start .. start + len`, returning the bytes and the flagged sources.
fn run(recipe: &Recipe, mem: &Mem, start: usize, len: usize) -> (Vec<u8>, Vec<usize>) {
    let mut out = Vec::new();
    let flagged = produce(
        recipe,
        start,
        len,
        &mem.sources,
        &mut Scratch::default(),
        &mut out,
    )
    .expect("produce");
    (out, flagged)
}

/// The error producing the first `len` elements of `recipe` ends in.
fn refused(recipe: &Recipe, mem: &Mem, len: usize) -> KernelError {
    let mut out = Vec::new();
    produce(
        recipe,
        0,
        len,
        &mem.sources,
        &mut Scratch::default(),
        &mut out,
    )
    .expect_err("the kernel refuses this recipe")
}

fn as_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn copy_returns_the_stored_bytes() {
    let mut mem = Mem::default();
    let leaf = mem.f16(&values(10, 1));
    let (out, flagged) = run(&Recipe::Copy(leaf.clone()), &mem, 3, 5);
    assert_eq!(out, mem.sources[leaf.source][6..16]);
    assert!(flagged.is_empty());
}

#[test]
fn fixed_bytes_are_appended_as_they_are() {
    let mem = Mem::default();
    let (out, _) = run(&Recipe::Bytes(Arc::from(vec![1u8, 2, 3])), &mem, 0, 0);
    assert_eq!(out, [1, 2, 3]);
}

#[test]
fn f16_widens_to_f32_exactly() {
    let mut mem = Mem::default();
    let v = values(9, 2);
    let leaf = mem.f16(&v);
    let (out, _) = run(&compute(plain(leaf), DType::F32), &mem, 0, 9);
    let want: Vec<f32> = v.iter().map(|&x| f16::from_f32(x).to_f32()).collect();
    assert_eq!(bits(&as_f32(&out)), bits(&want));
}

#[test]
fn the_output_is_rounded_once_to_nearest_even() {
    let mut mem = Mem::default();
    // 1 + 2^-11 lies exactly between two f16 values: ties go to the even one (1.0);
    // 1 + 3·2^-11 goes up to 1 + 2^-9.
    let v = [1.0 + 2f32.powi(-11), 1.0 + 3.0 * 2f32.powi(-11), -2.5e-8];
    let leaf = mem.f32(&v);
    let (out, _) = run(&compute(plain(leaf), DType::F16), &mem, 0, 3);
    let got: Vec<f16> = bytemuck::pod_collect_to_vec(&out);
    assert_eq!(got[0], f16::from_f32(1.0));
    assert_eq!(got[1], f16::from_f32(1.0 + 2f32.powi(-9)));
    assert_eq!(got[2], f16::from_f32(-2.5e-8));
}

#[test]
fn a_multiply_step_scales_every_element() {
    let mut mem = Mem::default();
    let v = values(7, 3);
    let leaf = mem.f32(&v);
    let expr = expr(leaf, vec![step(Some(0.3), None)]);
    let (out, _) = run(&compute(expr, DType::F32), &mem, 0, 7);
    let want: Vec<f32> = v.iter().map(|&x| x * 0.3).collect();
    assert_eq!(bits(&as_f32(&out)), bits(&want));
}

#[test]
fn multiply_then_add_rounds_the_product_before_the_sum() {
    let mut mem = Mem::default();
    let (a, b) = (values(64, 4), values(64, 5));
    let (la, lb) = (mem.f32(&a), mem.f32(&b));
    let expr = expr(
        la,
        vec![step(Some(0.7), Some((0.3, Term::Weights(plain(lb)))))],
    );
    let (out, _) = run(&compute(expr, DType::F32), &mem, 0, 64);
    let want: Vec<f32> = a
        .iter()
        .zip(&b)
        .map(|(&x, &y)| {
            let scaled = x * 0.7;
            let product = 0.3f32 * y;
            scaled + product
        })
        .collect();
    assert_eq!(bits(&as_f32(&out)), bits(&want));
    // The fused form differs somewhere in these values, so the test can tell them apart.
    let fused: Vec<f32> = a
        .iter()
        .zip(&b)
        .map(|(&x, &y)| 0.3f32.mul_add(y, x * 0.7))
        .collect();
    assert_ne!(bits(&fused), bits(&want));
}

#[test]
fn nested_merges_evaluate_inner_expressions_first() {
    let mut mem = Mem::default();
    let (a, b, c) = (values(20, 6), values(20, 7), values(20, 8));
    let (la, lb, lc) = (mem.f16(&a), mem.f32(&b), mem.bf16(&c));
    let inner = expr(lb, vec![step(None, Some((-1.0, Term::Weights(plain(lc)))))]);
    let expr = expr(la, vec![step(None, Some((0.5, Term::Weights(inner))))]);
    let (out, _) = run(&compute(expr, DType::F32), &mem, 0, 20);
    let want: Vec<f32> = (0..20)
        .map(|i| {
            let x = f16::from_f32(a[i]).to_f32();
            let z = bf16::from_f32(c[i]).to_f32();
            // The step's `s · z` with s = -1 is exactly -z.
            let inner = b[i] + -z;
            x + 0.5f32 * inner
        })
        .collect();
    assert_eq!(bits(&as_f32(&out)), bits(&want));
}

#[test]
fn round_inputs_rounds_each_input_to_the_load_dtype_first() {
    let mut mem = Mem::default();
    let (a, b) = (values(16, 9), values(16, 10));
    let (la, lb) = (mem.f32(&a), mem.f32(&b));
    let recipe = Recipe::Compute {
        expr: expr(la, vec![step(None, Some((0.25, Term::Weights(plain(lb)))))]),
        out: DType::F16,
        round_inputs: Some(DType::F16),
        stochastic: None,
    };
    let (out, _) = run(&recipe, &mem, 0, 16);
    let got: Vec<f16> = bytemuck::pod_collect_to_vec(&out);
    let r = |x: f32| f16::from_f32(x).to_f32();
    let want: Vec<f16> = (0..16)
        .map(|i| f16::from_f32(r(a[i]) + 0.25f32 * r(b[i])))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn bf16_in_and_out_and_f64_inputs_are_supported() {
    let mut mem = Mem::default();
    let v = values(12, 11);
    let wide: Vec<u8> = v
        .iter()
        .flat_map(|&x| (f64::from(x) * 1.5).to_le_bytes())
        .collect();
    let l64 = mem.push(wide, DType::F64, 12);
    let lb = mem.bf16(&v);
    let expr = expr(lb, vec![step(None, Some((2.0, Term::Weights(plain(l64)))))]);
    let (out, _) = run(&compute(expr, DType::BF16), &mem, 0, 12);
    let got: Vec<bf16> = bytemuck::pod_collect_to_vec(&out);
    let want: Vec<bf16> = v
        .iter()
        .map(|&x| {
            let w = bf16::from_f32(x).to_f32();
            let y = (f64::from(x) * 1.5) as f32;
            bf16::from_f32(w + 2.0f32 * y)
        })
        .collect();
    assert_eq!(got, want);
}

/// `up @ down` with a sequential f32 sum over the rank, element `e` at row `e / inner`.
fn lora_reference(up: &[f32], down: &[f32], rank: usize, inner: usize, e: usize) -> f32 {
    let (row, col) = (e / inner, e % inner);
    let mut acc = 0.0f32;
    for k in 0..rank {
        acc += up[row * rank + k] * down[k * inner + col];
    }
    acc
}

fn lora_term(mem: &mut Mem, up: &[f32], down: &[f32], out: usize, rank: usize) -> LoraTerm {
    LoraTerm {
        up: mem.f16(up),
        down: mem.f16(down),
        out,
        rank,
        inner: down.len() / rank,
        hadamard: None,
        mid: None,
        mid2: None,
        up_transposed: false,
    }
}

fn halves(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| f16::from_f32(x).to_f32()).collect()
}

#[test]
fn a_lora_step_adds_the_scaled_low_rank_product() {
    let mut mem = Mem::default();
    let (out_rows, rank, inner) = (6, 3, 5);
    let w = values(out_rows * inner, 12);
    let (up, down) = (values(out_rows * rank, 13), values(rank * inner, 14));
    let lw = mem.f32(&w);
    let term = lora_term(&mut mem, &up, &down, out_rows, rank);
    let expr = expr(lw, vec![step(None, Some((0.8, Term::Lora(term))))]);
    let (out, _) = run(&compute(expr, DType::F32), &mem, 0, w.len());
    let (up, down) = (halves(&up), halves(&down));
    let want: Vec<f32> = (0..w.len())
        .map(|e| w[e] + 0.8f32 * lora_reference(&up, &down, rank, inner, e))
        .collect();
    assert_eq!(bits(&as_f32(&out)), bits(&want));
}

#[test]
fn a_loha_step_multiplies_two_products_element_wise() {
    let mut mem = Mem::default();
    let (rows, inner, r1, r2) = (4, 6, 2, 3);
    let w = values(rows * inner, 15);
    let (a1, b1) = (values(rows * r1, 16), values(r1 * inner, 17));
    let (a2, b2) = (values(rows * r2, 18), values(r2 * inner, 19));
    let lw = mem.f32(&w);
    let mut term = lora_term(&mut mem, &a1, &b1, rows, r1);
    term.hadamard = Some((mem.f16(&a2), mem.f16(&b2), r2));
    let expr = expr(lw, vec![step(None, Some((0.5, Term::Lora(term))))]);
    let (out, _) = run(&compute(expr, DType::F32), &mem, 0, w.len());
    let want: Vec<f32> = (0..w.len())
        .map(|e| {
            let m1 = lora_reference(&halves(&a1), &halves(&b1), r1, inner, e);
            let m2 = lora_reference(&halves(&a2), &halves(&b2), r2, inner, e);
            w[e] + 0.5f32 * (m1 * m2)
        })
        .collect();
    assert_eq!(bits(&as_f32(&out)), bits(&want));
}

#[test]
fn a_locon_tucker_core_is_contracted_into_the_down_factor_first() {
    let mut mem = Mem::default();
    // up [out, rank], down [rank, in], mid [rank, rank, kh·kw]: delta [out, in, kh·kw].
    let (rows, rank, inch, khw) = (3, 2, 4, 3);
    let w = values(rows * inch * khw, 20);
    let (up, down, mid) = (
        values(rows * rank, 21),
        values(rank * inch, 22),
        values(rank * rank * khw, 23),
    );
    let lw = mem.f32(&w);
    let mut term = lora_term(&mut mem, &up, &down, rows, rank);
    term.inner = inch * khw;
    term.mid = Some((mem.f16(&mid), inch, khw));
    let expr = expr(lw, vec![step(None, Some((1.0, Term::Lora(term))))]);
    let (out, _) = run(&compute(expr, DType::F32), &mem, 0, w.len());
    let (up, down, mid) = (halves(&up), halves(&down), halves(&mid));
    // down' [rank, in, khw] = Σ_b down[b, i] · mid[a, b, x] (summed over b in order), then
    // up @ down'.
    let element = |a: usize, i: usize, x: usize| {
        (0..rank).fold(0.0f32, |acc, b| {
            acc + down[b * inch + i] * mid[(a * rank + b) * khw + x]
        })
    };
    let core: Vec<f32> = (0..rank * inch * khw)
        .map(|j| element(j / (inch * khw), (j / khw) % inch, j % khw))
        .collect();
    let want: Vec<f32> = (0..w.len())
        .map(|e| w[e] + 1.0f32 * lora_reference(&up, &core, rank, inch * khw, e))
        .collect();
    assert_eq!(bits(&as_f32(&out)), bits(&want));
}

#[test]
fn a_lokr_step_adds_the_kronecker_product() {
    let mut mem = Mem::default();
    let ([a, b], [c, d]) = ([2, 3], [3, 2]);
    let (w1, w2) = (values(a * b, 24), values(c * d, 25));
    let w = values(a * c * b * d, 26);
    let lw = mem.f32(&w);
    let term = KronTerm {
        w1: Factor::Full(mem.f32(&w1)),
        w2: Factor::Full(mem.f32(&w2)),
        w1_shape: [a, b],
        w2_shape: [c, d, 1],
    };
    let expr = expr(lw, vec![step(None, Some((0.25, Term::Kron(term))))]);
    let (out, _) = run(&compute(expr, DType::F32), &mem, 0, w.len());
    let cols = b * d;
    let want: Vec<f32> = (0..w.len())
        .map(|e| {
            let (r, j) = (e / cols, e % cols);
            let k = w1[(r / c) * b + j / d] * w2[(r % c) * d + j % d];
            w[e] + 0.25f32 * k
        })
        .collect();
    assert_eq!(bits(&as_f32(&out)), bits(&want));
}

#[test]
fn a_window_patches_only_its_rows_and_keeps_negative_zero() {
    let mut mem = Mem::default();
    let (rows, inner, rank) = (6, 4, 2);
    let mut w = values(rows * inner, 27);
    w[0] = -0.0;
    w[23] = -0.0;
    let lw = mem.f32(&w);
    // Rows 2..4 of the weight: the term is [2, inner].
    let (up, down) = (values(2 * rank, 28), values(rank * inner, 29));
    let term = lora_term(&mut mem, &up, &down, 2, rank);
    let mut s = step(None, Some((1.5, Term::Lora(term))));
    s.window = Some(Window {
        start: 2 * inner,
        len: 2 * inner,
        swap_halves: false,
    });
    let expr = expr(lw, vec![s]);
    let (out, _) = run(&compute(expr, DType::F32), &mem, 0, w.len());
    let (up, down) = (halves(&up), halves(&down));
    let want: Vec<f32> = (0..w.len())
        .map(|e| {
            if (2 * inner..4 * inner).contains(&e) {
                w[e] + 1.5f32 * lora_reference(&up, &down, rank, inner, e - 2 * inner)
            } else {
                w[e]
            }
        })
        .collect();
    let got = as_f32(&out);
    assert_eq!(bits(&got), bits(&want));
    assert_eq!(got[0].to_bits(), (-0.0f32).to_bits());
}

#[test]
fn a_swapped_window_exchanges_the_terms_halves() {
    let mut mem = Mem::default();
    let n = 8;
    let w = values(n, 30);
    let d = values(n, 31);
    let lw = mem.f32(&w);
    // A full difference as a rank-n LoRA with an identity up factor would do; a Kron of
    // [1,1] ⊗ [n,1] is simpler: the term is d itself.
    let term = KronTerm {
        w1: Factor::Full(mem.f32(&[1.0])),
        w2: Factor::Full(mem.f32(&d)),
        w1_shape: [1, 1],
        w2_shape: [n, 1, 1],
    };
    let mut s = step(None, Some((1.0, Term::Kron(term))));
    s.window = Some(Window {
        start: 0,
        len: n,
        swap_halves: true,
    });
    let expr = expr(lw, vec![s]);
    let (out, _) = run(&compute(expr, DType::F32), &mem, 0, n);
    let want: Vec<f32> = (0..n)
        .map(|e| w[e] + 1.0f32 * (1.0f32 * d[(e + n / 2) % n]))
        .collect();
    assert_eq!(bits(&as_f32(&out)), bits(&want));
}

#[test]
fn chunks_and_tiles_give_the_same_bits_as_one_pass() {
    let mut mem = Mem::default();
    // Spans several tiles, with a ragged last one.
    let n = 3 * TILE + 123;
    let (a, b) = (values(n, 32), values(n, 33));
    let (la, lb) = (mem.f16(&a), mem.bf16(&b));
    let recipe = compute(
        expr(
            la,
            vec![step(Some(0.6), Some((0.4, Term::Weights(plain(lb)))))],
        ),
        DType::F16,
    );
    let (whole, _) = run(&recipe, &mem, 0, n);
    let mut pieces = Vec::new();
    for (start, len) in [(0, 1000), (1000, TILE), (1000 + TILE, n - 1000 - TILE)] {
        pieces.extend(run(&recipe, &mem, start, len).0);
    }
    assert_eq!(whole, pieces);
    let want: Vec<f16> = (0..n)
        .map(|i| {
            let x = f16::from_f32(a[i]).to_f32() * 0.6;
            f16::from_f32(x + 0.4f32 * bf16::from_f32(b[i]).to_f32())
        })
        .collect();
    assert_eq!(bytemuck::pod_collect_to_vec::<u8, f16>(&whole), want);
}

#[test]
fn non_finite_inputs_are_reported_by_source() {
    let mut mem = Mem::default();
    let mut a = values(TILE + 10, 34);
    let b = values(TILE + 10, 35);
    a[TILE + 3] = f32::NAN;
    let (la, lb) = (mem.f32(&a), mem.f32(&b));
    let recipe = compute(
        expr(
            la.clone(),
            vec![step(None, Some((0.5, Term::Weights(plain(lb)))))],
        ),
        DType::F32,
    );
    // The chunk holding the NaN flags source 0; a chunk before it flags nothing.
    assert_eq!(run(&recipe, &mem, 0, TILE).1, Vec::<usize>::new());
    assert_eq!(run(&recipe, &mem, TILE, 10).1, vec![la.source]);
    // Copies are checked on their stored bytes (f16 infinity here).
    let inf = mem.f16(&[1.0, f32::INFINITY]);
    assert_eq!(
        run(&Recipe::Copy(inf.clone()), &mem, 0, 2).1,
        vec![inf.source]
    );
}

#[test]
fn reading_past_a_source_is_an_error_not_a_panic() {
    let mut mem = Mem::default();
    let mut leaf = mem.f32(&[1.0, 2.0]);
    leaf.numel = 4;
    let e = refused(&compute(plain(leaf), DType::F32), &mem, 4);
    assert!(matches!(e, KernelError::Read { .. }), "{e}");
}

#[test]
fn integer_leaves_cannot_be_computed() {
    let mut mem = Mem::default();
    let leaf = mem.push(vec![0; 16], DType::I64, 2);
    let e = refused(&compute(plain(leaf), DType::F32), &mem, 2);
    assert!(matches!(e, KernelError::Unsupported(DType::I64)), "{e}");
}

fn dora_step(mem: &mut Mem, scale: &[f32], axis: DoraAxis, rows: usize, inch: usize) -> Step {
    let (rank, inner) = (2, inch);
    let (up, down) = (values(rows * rank, 40), values(rank * inner, 41));
    let term = lora_term(mem, &up, &down, rows, rank);
    Step {
        mm: None,
        add: Some((0.5, Term::Lora(term))),
        dora: Some(Dora {
            scale: mem.f32(scale),
            axis,
            strength: Some(0.75),
            inner,
            in_channels: inch,
            factors: None,
        }),
        window: None,
    }
}

#[test]
fn an_unprepared_dora_is_refused_and_others_need_no_preparing() {
    let mut mem = Mem::default();
    let w = values(12, 42);
    let lw = mem.f32(&w);
    let plain_recipe = compute(plain(lw.clone()), DType::F32);
    assert!(
        prepare(&plain_recipe, 12, &mem.sources)
            .expect("prepare")
            .is_none()
    );
    let s = dora_step(&mut mem, &[1.0; 3], DoraAxis::Output, 3, 4);
    let recipe = compute(expr(lw, vec![s]), DType::F32);
    let e = refused(&recipe, &mem, 12);
    assert!(matches!(e, KernelError::Unprepared), "{e}");
}

/// ComfyUI's `weight_decompose` on whole tensors, with norms summed in f64 and rounded once.
fn dora_reference(
    w: &[f32],
    delta: &[f32],
    alpha: f32,
    scale: &[f32],
    axis: DoraAxis,
    inch: usize,
    strength: f32,
) -> Vec<f32> {
    let rows = w.len() / inch;
    let wc: Vec<f32> = w.iter().zip(delta).map(|(&x, &d)| x + alpha * d).collect();
    let (basis, channels) = match axis {
        DoraAxis::Output => (w, rows),
        DoraAxis::Input => (&wc[..], inch),
    };
    let channel = |e: usize| match axis {
        DoraAxis::Output => e / inch,
        DoraAxis::Input => e % inch,
    };
    let mut sums = vec![0.0f64; channels];
    for (e, &v) in basis.iter().enumerate() {
        sums[channel(e)] += f64::from(v) * f64::from(v);
    }
    (0..w.len())
        .map(|e| {
            let c = channel(e);
            let norm = sums[c].sqrt() as f32 + f32::EPSILON;
            let s = if scale.len() == 1 { scale[0] } else { scale[c] };
            let decomposed = wc[e] * (s / norm);
            w[e] + strength * (decomposed - w[e])
        })
        .collect()
}

#[test]
fn dora_norms_are_taken_in_a_first_pass_on_either_axis() {
    for (axis, scale) in [
        (DoraAxis::Output, vec![0.9, 1.1, 1.3]),
        (DoraAxis::Input, vec![0.5, 0.7, 1.9, 1.2]),
    ] {
        let mut mem = Mem::default();
        let (rows, inch) = (3, 4);
        let w = values(rows * inch, 43);
        let lw = mem.f32(&w);
        let s = dora_step(&mut mem, &scale, axis, rows, inch);
        let Some((_, Term::Lora(t))) = &s.add else {
            unreachable!()
        };
        let up = as_f32_of_f16(&mem.sources[t.up.source]);
        let down = as_f32_of_f16(&mem.sources[t.down.source]);
        let delta: Vec<f32> = (0..w.len())
            .map(|e| lora_reference(&up, &down, 2, inch, e))
            .collect();
        let recipe = compute(expr(lw, vec![s]), DType::F32);
        let prepared = prepare(&recipe, w.len(), &mem.sources)
            .expect("prepare")
            .expect("a DoRA needs preparing");
        let (out, _) = run(&prepared, &mem, 0, w.len());
        let want = dora_reference(&w, &delta, 0.5, &scale, axis, inch, 0.75);
        assert_eq!(bits(&as_f32(&out)), bits(&want), "{axis:?}");
    }
}

fn as_f32_of_f16(bytes: &[u8]) -> Vec<f32> {
    bytemuck::pod_collect_to_vec::<u8, f16>(bytes)
        .iter()
        .map(|h| h.to_f32())
        .collect()
}

#[test]
fn a_dora_scale_of_the_wrong_length_is_refused() {
    let mut mem = Mem::default();
    let w = values(12, 44);
    let lw = mem.f32(&w);
    let s = dora_step(&mut mem, &[1.0, 2.0], DoraAxis::Output, 3, 4);
    let recipe = compute(expr(lw, vec![s]), DType::F32);
    let e = prepare(&recipe, 12, &mem.sources).expect_err("refused");
    assert!(
        matches!(
            e,
            KernelError::DoraScale {
                values: 2,
                channels: 3
            }
        ),
        "{e}"
    );
}

#[test]
fn non_finite_detection_matches_the_definition() {
    let cases = [0.0f32, -0.0, 1.0, f32::MAX, f32::MIN_POSITIVE, 1e-45];
    assert!(!any_non_finite(&cases));
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut v = cases.to_vec();
        v.push(bad);
        assert!(any_non_finite(&v));
        let h: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
        assert!(bytes_non_finite(bytemuck::cast_slice(&h), DType::F16));
    }
    // f16's own extremes (f32::MAX would round to an f16 infinity).
    let h: Vec<f16> = [0.0f32, -0.0, 1.0, 65504.0, -65504.0, 6e-8]
        .iter()
        .map(|&x| f16::from_f32(x))
        .collect();
    assert!(!bytes_non_finite(bytemuck::cast_slice(&h), DType::F16));
    let b: Vec<bf16> = [0.0f32, -0.0, 1.0, 3.0e38, 1e-38]
        .iter()
        .map(|&x| bf16::from_f32(x))
        .collect();
    assert!(!bytes_non_finite(bytemuck::cast_slice(&b), DType::BF16));
    assert!(!bytes_non_finite(bytemuck::cast_slice(&cases), DType::F32));
    assert!(bytes_non_finite(
        bytemuck::cast_slice(&[1.0f32, f32::NAN]),
        DType::F32
    ));
}

/// fp8 in and out: fp8 inputs are read exactly; an fp8 result is ComfyUI's stochastic rounding
/// with one stream per tensor, so chunks computed in any order, prepared or not, give the bytes
/// of one sequential pass; `round_inputs` to fp8 is torch's nearest cast of each input first.
#[test]
fn fp8_tensors_read_exactly_and_round_stochastically_in_any_chunk_order() {
    use crate::engine::kernel::stochastic::StochasticRounder;
    use crate::engine::plan::Stochastic;
    use crate::format::fp8::Fp8;
    let n = 2 * CHUNK_ELEMENTS + 4099;
    let mut mem = Mem::default();
    let a = values(n, 21);
    let fp8_bytes: Vec<u8> = values(n, 22)
        .iter()
        .map(|&v| Fp8::E4M3.round_nearest(v))
        .collect();
    let b: Vec<f32> = fp8_bytes.iter().map(|&x| Fp8::E4M3.to_f32(x)).collect();
    let la = mem.f32(&a);
    let lb = mem.push(fp8_bytes, DType::F8E4M3, n);
    let key = "diffusion_model.middle_block.1.proj_in.weight";
    let recipe = |round_inputs| Recipe::Compute {
        expr: expr(
            la.clone(),
            vec![step(
                Some(0.5),
                Some((0.5, Term::Weights(plain(lb.clone())))),
            )],
        ),
        out: DType::F8E4M3,
        round_inputs,
        stochastic: Some(Stochastic::new(key)),
    };
    let cast = |x: f32| Fp8::E4M3.to_f32(Fp8::E4M3.round_nearest(x));
    for round_inputs in [None, Some(DType::F8E4M3)] {
        let plain_recipe = recipe(round_inputs);
        let mut rounder = StochasticRounder::new(
            Fp8::E4M3,
            crate::engine::kernel::stochastic::string_to_seed(key),
        );
        let expected: Vec<u8> = a
            .iter()
            .zip(&b)
            .map(|(&x, &y)| {
                let x = if round_inputs.is_some() { cast(x) } else { x };
                rounder.round(x * 0.5 + 0.5 * y)
            })
            .collect();
        let prepared = prepare(&plain_recipe, n, &mem.sources)
            .expect("prepare")
            .expect("fp8 output is prepared");
        for r in [&plain_recipe, &prepared] {
            let mut chunks: Vec<(usize, Vec<u8>)> = (0..n)
                .step_by(CHUNK_ELEMENTS)
                .rev()
                .map(|start| {
                    let len = CHUNK_ELEMENTS.min(n - start);
                    (start, run(r, &mem, start, len).0)
                })
                .collect();
            chunks.sort_by_key(|c| c.0);
            let got: Vec<u8> = chunks.into_iter().flat_map(|c| c.1).collect();
            assert!(got == expected, "round_inputs {round_inputs:?}");
        }
    }
}
