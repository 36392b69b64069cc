//! Evaluating an expression over a range of elements, in f32, exactly as ComfyUI's
//! `calculate_weight` does it: `w = f32(w1)`; per step `w = w * mm` (when `mm ≠ 1`), then
//! `w = w + s * sub` as a separate multiply and add (Rust never fuses them into an FMA without
//! being asked); one final round-to-nearest-even to the output dtype.
//!
//! Tensors are processed in chunks (one positioned read per input per chunk, into reused,
//! properly aligned buffers, so no alignment is ever assumed of the file), and each chunk is
//! evaluated in small tiles whose f32 values stay in the L1 cache: converting, scaling, adding
//! and rounding a tile happen back to back instead of as passes over megabytes.
//!
//! Leaf bytes come through [`LeafBytes`]: the plan's opened files in a job, in-memory buffers in
//! the unit tests (`tests.rs`), so every step kind is tested without files.

use std::path::PathBuf;
use std::sync::Arc;

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use crate::format::DType;
use crate::format::fp8::Fp8;

use super::plan::{
    Dora, DoraAxis, Expr, Factor, KronTerm, Leaf, LoraTerm, Recipe, Step, Stochastic, Term,
};
use super::source::Source;
use stochastic::StochasticRounder;

/// Why the kernel could not produce a tensor's bytes.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// Reading a leaf's bytes failed (the file changed or vanished under the job).
    #[error("cannot read {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A leaf is stored in a dtype the kernel does not compute with.
    #[error("cannot compute with {0} tensors")]
    Unsupported(DType),
    /// A DoRA step reached evaluation without its per-channel factors.
    #[error("a DoRA weight was evaluated before its norms (internal error)")]
    Unprepared,
    #[error("dora_scale has {values} values for {channels} channels")]
    DoraScale { values: usize, channels: usize },
}

/// Where the kernel reads leaf bytes from: [`Leaf::source`] indexes into it. The plan's opened
/// files in a job; in-memory buffers in unit tests, so the arithmetic is tested without files.
pub trait LeafBytes: Sync {
    /// Fills `buf` with the bytes of source `source` starting at `offset`.
    fn read_at(&self, source: usize, offset: u64, buf: &mut [u8]) -> Result<(), KernelError>;
}

impl LeafBytes for Vec<Arc<Source>> {
    fn read_at(&self, source: usize, offset: u64, buf: &mut [u8]) -> Result<(), KernelError> {
        let src = &self[source];
        src.read_at(offset, buf).map_err(|error| KernelError::Read {
            path: src.path.clone(),
            error,
        })
    }
}

/// In-memory sources, one byte buffer each (the kernel's unit tests).
impl LeafBytes for Vec<Vec<u8>> {
    fn read_at(&self, source: usize, offset: u64, buf: &mut [u8]) -> Result<(), KernelError> {
        let bytes = usize::try_from(offset)
            .ok()
            .and_then(|at| self.get(source)?.get(at..at.checked_add(buf.len())?));
        match bytes {
            Some(b) => {
                buf.copy_from_slice(b);
                Ok(())
            }
            None => Err(KernelError::Read {
                path: PathBuf::from(format!("<memory source {source}>")),
                error: std::io::ErrorKind::UnexpectedEof.into(),
            }),
        }
    }
}

/// Elements per chunk: 1 Mi elements is 4 MiB of f32 per nesting level.
pub const CHUNK_ELEMENTS: usize = 1 << 20;

/// Elements per tile: the f32 working set of a tile (a few KiB per nesting level) stays in L1.
const TILE: usize = 4096;

/// Raw input bytes of one leaf for the current chunk, read once, converted tile by tile.
enum Raw {
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    F32(Vec<f32>),
    /// F64 is rare; it is widened to f32 when read.
    Wide(Vec<f32>),
    /// fp8 bytes, decoded exactly tile by tile.
    Fp8(Vec<u8>, Fp8),
}

impl Default for Raw {
    fn default() -> Self {
        Raw::F32(Vec::new())
    }
}

/// Reusable buffers of one worker thread.
#[derive(Default)]
pub struct Scratch {
    /// One raw buffer per leaf of the expression, in depth-first order.
    raws: Vec<Raw>,
    /// One f32 tile per nesting level.
    tiles: Vec<Vec<f32>>,
    /// The factors (as f32) of each LoRA term, in visiting order: up, down, and for a LoHa the
    /// second pair.
    loras: Vec<[Vec<f32>; 4]>,
    half: Vec<f16>,
    bhalf: Vec<bf16>,
}

/// Leaves of an expression in depth-first order (the order evaluation visits them).
fn leaves<'a>(expr: &'a Expr, out: &mut Vec<&'a Leaf>) {
    out.push(&expr.leaf);
    for step in &expr.steps {
        if let Some((_, Term::Weights(sub))) = &step.add {
            leaves(sub, out);
        }
    }
}

/// A low-rank term of an expression (LoRA/LoHa or LoKr).
enum Factored<'a> {
    Lora(&'a LoraTerm),
    Kron(&'a KronTerm),
}

/// Low-rank terms of an expression in the order evaluation visits them.
fn lora_terms<'a>(expr: &'a Expr, out: &mut Vec<Factored<'a>>) {
    for step in &expr.steps {
        match &step.add {
            Some((_, Term::Weights(sub))) => lora_terms(sub, out),
            Some((_, Term::Lora(t))) => out.push(Factored::Lora(t)),
            Some((_, Term::Kron(k))) => out.push(Factored::Kron(k)),
            None => {}
        }
    }
}

/// Reads a whole (small) tensor as f32.
fn read_whole(
    leaf: &Leaf,
    sources: &dyn LeafBytes,
    raw: &mut Raw,
    dst: &mut Vec<f32>,
    non_finite: &mut Vec<usize>,
) -> Result<(), KernelError> {
    read_leaf(leaf, 0, leaf.numel, sources, raw)?;
    dst.resize(leaf.numel, 0.0);
    load_tile(raw, 0..leaf.numel, dst, None);
    if any_non_finite(dst) {
        note(non_finite, leaf.source);
    }
    Ok(())
}

/// Whether any value is NaN or infinite (exponent bits all set). Written as an OR of per-value
/// compare results, which compiles to a plain SSE2 vector loop (and, compare, or): the check
/// costs a pass over data already in L1, not a branch per value.
fn any_non_finite(values: &[f32]) -> bool {
    const EXP: u32 = 0x7f80_0000;
    values
        .iter()
        .fold(0u32, |acc, v| acc | u32::from(v.to_bits() & EXP == EXP))
        != 0
}

/// Whether stored bytes of a float dtype hold a NaN or infinity (all exponent bits set).
fn bytes_non_finite(bytes: &[u8], dtype: DType) -> bool {
    let exp16 = |mask: u16| {
        bytes.chunks_exact(2).fold(0u16, |acc, c| {
            acc | u16::from(u16::from_le_bytes([c[0], c[1]]) & mask == mask)
        }) != 0
    };
    match dtype {
        DType::F16 => exp16(0x7c00),
        DType::BF16 => exp16(0x7f80),
        DType::F32 => {
            const EXP: u32 = 0x7f80_0000;
            bytes.chunks_exact(4).fold(0u32, |acc, c| {
                acc | u32::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & EXP == EXP)
            }) != 0
        }
        DType::F64 => bytes.chunks_exact(8).any(|c| {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            !f64::from_le_bytes(a).is_finite()
        }),
        _ => false,
    }
}

fn note(found: &mut Vec<usize>, source: usize) {
    if !found.contains(&source) {
        found.push(source);
    }
}

/// A LoKr factor as an f32 matrix: read whole, or `a @ b` with the sequential f32 sum.
fn materialize(
    f: &Factor,
    sources: &dyn LeafBytes,
    raw: &mut Raw,
    dst: &mut Vec<f32>,
    non_finite: &mut Vec<usize>,
) -> Result<(), KernelError> {
    match f {
        Factor::Full(leaf) => read_whole(leaf, sources, raw, dst, non_finite),
        Factor::Product { a, b, rank } => {
            let (mut av, mut bv) = (Vec::new(), Vec::new());
            read_whole(a, sources, raw, &mut av, non_finite)?;
            read_whole(b, sources, raw, &mut bv, non_finite)?;
            let (rows, cols) = (a.numel / rank, b.numel / rank);
            dst.clear();
            dst.resize(rows * cols, 0.0);
            crate::model::lora::lora_delta(&av, &bv, *rank, cols, 0..rows, dst);
            Ok(())
        }
        Factor::Tucker { a, b, t, rank, khw } => {
            // torch's einsum contracts left to right: t with b over j, then with a over i.
            let (mut av, mut bv, mut tv) = (Vec::new(), Vec::new(), Vec::new());
            read_whole(a, sources, raw, &mut av, non_finite)?;
            read_whole(b, sources, raw, &mut bv, non_finite)?;
            read_whole(t, sources, raw, &mut tv, non_finite)?;
            let (c, d) = (a.numel / rank, b.numel / rank);
            let core = tucker_down(&bv, &tv, *rank, d, *khw);
            let up = transpose(&av, *rank, c);
            dst.clear();
            dst.resize(c * d * khw, 0.0);
            crate::model::lora::lora_delta(&up, &core, *rank, d * khw, 0..c, dst);
            Ok(())
        }
    }
}

/// A row-major `[rows, cols]` matrix as `[cols, rows]`.
fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; m.len()];
    for (r, row) in m.chunks_exact(cols).enumerate().take(rows) {
        for (c, &v) in row.iter().enumerate() {
            out[c * rows + r] = v;
        }
    }
    out
}

/// Reads elements `start .. start + n` of a leaf into `raw` with one positioned read.
fn read_leaf(
    leaf: &Leaf,
    start: usize,
    n: usize,
    sources: &dyn LeafBytes,
    raw: &mut Raw,
) -> Result<(), KernelError> {
    let es = leaf.dtype.size_bytes();
    let offset = leaf.offset + (start * es) as u64;
    match leaf.dtype {
        DType::F16 => {
            let mut v = match std::mem::take(raw) {
                Raw::F16(v) => v,
                _ => Vec::new(),
            };
            v.resize(n, f16::ZERO);
            sources.read_at(leaf.source, offset, bytemuck::cast_slice_mut(&mut v[..]))?;
            *raw = Raw::F16(v);
        }
        DType::BF16 => {
            let mut v = match std::mem::take(raw) {
                Raw::BF16(v) => v,
                _ => Vec::new(),
            };
            v.resize(n, bf16::ZERO);
            sources.read_at(leaf.source, offset, bytemuck::cast_slice_mut(&mut v[..]))?;
            *raw = Raw::BF16(v);
        }
        DType::F32 => {
            let mut v = match std::mem::take(raw) {
                Raw::F32(v) => v,
                _ => Vec::new(),
            };
            v.resize(n, 0.0);
            sources.read_at(leaf.source, offset, bytemuck::cast_slice_mut(&mut v[..]))?;
            *raw = Raw::F32(v);
        }
        DType::F64 => {
            let mut bytes = vec![0u8; n * 8];
            sources.read_at(leaf.source, offset, &mut bytes)?;
            let v = bytes
                .chunks_exact(8)
                .map(|c| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(c);
                    f64::from_le_bytes(b) as f32
                })
                .collect();
            *raw = Raw::Wide(v);
        }
        DType::F8E4M3 | DType::F8E5M2 => {
            let kind = Fp8::of(leaf.dtype).ok_or(KernelError::Unsupported(leaf.dtype))?;
            let mut v = match std::mem::take(raw) {
                Raw::Fp8(v, _) => v,
                _ => Vec::new(),
            };
            v.resize(n, 0);
            sources.read_at(leaf.source, offset, &mut v)?;
            *raw = Raw::Fp8(v, kind);
        }
        other => return Err(KernelError::Unsupported(other)),
    }
    Ok(())
}

/// Converts `range` of a raw buffer to f32 into `out`, rounding through ComfyUI's load dtype
/// first when `round` asks for it.
fn load_tile(raw: &Raw, range: std::ops::Range<usize>, out: &mut [f32], round: Option<DType>) {
    let stored = match raw {
        Raw::F16(v) => {
            v[range].convert_to_f32_slice(out);
            DType::F16
        }
        Raw::BF16(v) => {
            v[range].convert_to_f32_slice(out);
            DType::BF16
        }
        Raw::F32(v) | Raw::Wide(v) => {
            out.copy_from_slice(&v[range]);
            DType::F32
        }
        Raw::Fp8(v, kind) => {
            let table = kind.values();
            for (o, b) in out.iter_mut().zip(&v[range]) {
                *o = table[usize::from(*b)];
            }
            kind.dtype()
        }
    };
    match round {
        Some(DType::F16) if stored != DType::F16 => {
            for v in out.iter_mut() {
                *v = f16::from_f32(*v).to_f32();
            }
        }
        Some(DType::BF16) if stored != DType::BF16 => {
            for v in out.iter_mut() {
                *v = bf16::from_f32(*v).to_f32();
            }
        }
        Some(d @ (DType::F8E4M3 | DType::F8E5M2)) if stored != d => {
            if let Some(kind) = Fp8::of(d) {
                let table = kind.values();
                for v in out.iter_mut() {
                    *v = table[usize::from(kind.round_nearest(*v))];
                }
            }
        }
        _ => {}
    }
}

/// What a tile evaluation reads: the chunk's raw inputs and LoRA factors, with cursors that
/// walk them in the order they were collected.
struct TileInputs<'a> {
    raws: &'a [Raw],
    loras: &'a [[Vec<f32>; 4]],
    next_leaf: usize,
    next_lora: usize,
    /// Element index of the chunk's first element within the tensor.
    chunk_start: usize,
    round: Option<DType>,
    /// Bit `i` set: leaf `i` (in visiting order; 63 and beyond share the last bit) held a NaN or
    /// infinity in this chunk.
    non_finite: u64,
}

/// Evaluates one tile of `expr` into `out`: `w = f32(w1)`; per step `w = w * mm` when
/// `mm ≠ 1`, then `w = w + s * term` as a separate multiply and add.
fn eval_tile(
    expr: &Expr,
    inputs: &mut TileInputs,
    range: std::ops::Range<usize>,
    out: &mut [f32],
    deeper: &mut [Vec<f32>],
) {
    load_tile(
        &inputs.raws[inputs.next_leaf],
        range.clone(),
        out,
        inputs.round,
    );
    // Checked while the tile is in L1: NaN and infinity pass through merges silently.
    if any_non_finite(out) {
        inputs.non_finite |= 1 << inputs.next_leaf.min(63);
    }
    inputs.next_leaf += 1;
    let first = inputs.chunk_start + range.start;
    for step in &expr.steps {
        // Where the step applies: the whole tile, or the part of it inside the step's window.
        let pieces = step.pieces(first, out.len());
        let pieces = pieces.iter().flatten();
        if let Some(mm) = step.mm {
            for p in pieces.clone() {
                for v in &mut out[p.offset..p.offset + p.len] {
                    *v *= mm;
                }
            }
        }
        let Some((s, term)) = &step.add else { continue };
        let Some((tmp, rest)) = deeper.split_first_mut() else {
            return;
        };
        let tmp = &mut tmp[..out.len()];
        match term {
            // Another model's weights are never windowed: term and weight elements coincide.
            Term::Weights(sub) => eval_tile(sub, inputs, range.clone(), tmp, rest),
            Term::Lora(t) => {
                let f = &inputs.loras[inputs.next_lora];
                inputs.next_lora += 1;
                for p in pieces.clone() {
                    lora_tile(t, f, p.term, &mut tmp[p.offset..p.offset + p.len]);
                }
            }
            Term::Kron(k) => {
                let f = &inputs.loras[inputs.next_lora];
                inputs.next_lora += 1;
                for p in pieces.clone() {
                    kron_tile(
                        k,
                        &f[0],
                        &f[1],
                        p.term,
                        &mut tmp[p.offset..p.offset + p.len],
                    );
                }
            }
        }
        let s = *s;
        for p in pieces {
            let span = p.offset..p.offset + p.len;
            let (out, tmp) = (&mut out[span.clone()], &tmp[span]);
            match &step.dora {
                None => {
                    for (w, &b) in out.iter_mut().zip(tmp) {
                        // Product first, then the add: two roundings, as in ComfyUI.
                        let product = s * b;
                        *w += product;
                    }
                }
                Some(dora) => {
                    // An unprepared decomposition cannot be evaluated; `produce` refuses it first.
                    let Some(factors) = dora.factors.as_deref() else {
                        return;
                    };
                    for (i, (w, &b)) in out.iter_mut().zip(tmp).enumerate() {
                        let product = s * b;
                        let decomposed = (*w + product) * factors[dora.channel(p.local + i)];
                        *w = match dora.strength {
                            None => decomposed,
                            Some(strength) => {
                                let change = strength * (decomposed - *w);
                                *w + change
                            }
                        };
                    }
                }
            }
        }
    }
}

/// Elements `first .. first + out.len()` of the flattened delta: `up @ down`, or for a LoHa
/// `(up @ down) ⊙ (w2a @ w2b)`; each product a sequential f32 sum over its rank, which is what
/// ComfyUI computes on a CPU.
fn lora_tile(t: &LoraTerm, f: &[Vec<f32>; 4], first: usize, out: &mut [f32]) {
    let product = |a: &[f32], b: &[f32], rank: usize, row: usize, col: usize| {
        let mut acc = 0.0f32;
        for (k, &ak) in a[row * rank..(row + 1) * rank].iter().enumerate() {
            acc += ak * b[k * t.inner + col];
        }
        acc
    };
    for (i, o) in out.iter_mut().enumerate() {
        let e = first + i;
        let (row, col) = (e / t.inner, e % t.inner);
        let m1 = product(&f[0], &f[1], t.rank, row, col);
        *o = match t.hadamard {
            Some((_, _, rank2)) => m1 * product(&f[2], &f[3], rank2, row, col),
            None => m1,
        };
    }
}

/// A Tucker down factor, as ComfyUI forms it before the up product (LoCon's `lora_mid`, and the
/// first contraction of a Tucker LoHa's or LoKr's einsum, which torch does left to right):
/// `d'[a, i, x] = Σ_b down[b, i] · mid[a, b, x]` (`down` is `[rank, in]`, `mid` is
/// `[rank, rank, kh·kw]`), each sum sequential in f32 over `b`.
fn tucker_down(down: &[f32], mid: &[f32], rank: usize, in_channels: usize, khw: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; rank * in_channels * khw];
    for a in 0..rank {
        for i in 0..in_channels {
            for x in 0..khw {
                let mut acc = 0.0f32;
                for b in 0..rank {
                    acc += down[b * in_channels + i] * mid[(a * rank + b) * khw + x];
                }
                out[(a * in_channels + i) * khw + x] = acc;
            }
        }
    }
    out
}

/// Elements `first .. first + out.len()` of `kron(w1, w2)` flattened as the weight
/// `[a·c, b·d, h·w]`.
fn kron_tile(k: &KronTerm, w1: &[f32], w2: &[f32], first: usize, out: &mut [f32]) {
    let [_, b] = k.w1_shape;
    let [c, d, hw] = k.w2_shape;
    let cols = b * d;
    for (i, o) in out.iter_mut().enumerate() {
        let e = first + i;
        let x = e % hw;
        let j = (e / hw) % cols;
        let r = e / (hw * cols);
        *o = w1[(r / c) * b + j / d] * w2[((r % c) * d + j % d) * hw + x];
    }
}

/// Produces the bytes of `recipe` for elements `start .. start + len`, appending to `out`.
/// Returns the sources (indices) whose values in this chunk include a NaN or an infinity.
pub fn produce(
    recipe: &Recipe,
    start: usize,
    len: usize,
    sources: &dyn LeafBytes,
    scratch: &mut Scratch,
    out: &mut Vec<u8>,
) -> Result<Vec<usize>, KernelError> {
    let mut non_finite = Vec::new();
    match recipe {
        Recipe::Bytes(b) => out.extend_from_slice(b),
        Recipe::Copy(leaf) => {
            let es = leaf.dtype.size_bytes();
            let at = out.len();
            out.resize(at + len * es, 0);
            sources.read_at(
                leaf.source,
                leaf.offset + (start * es) as u64,
                &mut out[at..],
            )?;
            if bytes_non_finite(&out[at..], leaf.dtype) {
                note(&mut non_finite, leaf.source);
            }
        }
        Recipe::Compute {
            expr,
            out: dtype,
            round_inputs,
            stochastic,
        } => {
            if needs_preparing(expr) {
                return Err(KernelError::Unprepared);
            }
            let mut rounder = stochastic::rounder_at(*dtype, stochastic.as_ref(), start);
            let Scratch {
                raws,
                tiles,
                loras,
                half,
                bhalf,
            } = scratch;
            // Every input of the chunk is read once, with one positioned read each.
            let mut ls = Vec::new();
            leaves(expr, &mut ls);
            if raws.len() < ls.len() {
                raws.resize_with(ls.len(), Raw::default);
            }
            for (leaf, raw) in ls.iter().zip(raws.iter_mut()) {
                read_leaf(leaf, start, len, sources, raw)?;
            }
            // LoRA factors are small: read whole, as f32.
            let mut ts = Vec::new();
            lora_terms(expr, &mut ts);
            if loras.len() < ts.len() {
                loras.resize_with(ts.len(), Default::default);
            }
            let mut raw = Raw::default();
            for (t, bufs) in ts.iter().zip(loras.iter_mut()) {
                match t {
                    Factored::Lora(t) => {
                        let mut leaves = vec![&t.up, &t.down];
                        if let Some((w2a, w2b, _)) = &t.hadamard {
                            leaves.extend([w2a, w2b]);
                        }
                        for (leaf, dst) in leaves.into_iter().zip(bufs.iter_mut()) {
                            read_whole(leaf, sources, &mut raw, dst, &mut non_finite)?;
                        }
                        if let Some((mid, in_channels, khw)) = &t.mid {
                            let mut m = Vec::new();
                            read_whole(mid, sources, &mut raw, &mut m, &mut non_finite)?;
                            bufs[1] = tucker_down(&bufs[1], &m, t.rank, *in_channels, *khw);
                            if let (Some(mid2), Some((_, _, rank2))) = (&t.mid2, &t.hadamard) {
                                read_whole(mid2, sources, &mut raw, &mut m, &mut non_finite)?;
                                bufs[3] = tucker_down(&bufs[3], &m, *rank2, *in_channels, *khw);
                            }
                        }
                        // A Tucker LoHa stores its up factors [rank, out].
                        if t.up_transposed {
                            bufs[0] = transpose(&bufs[0], t.rank, t.out);
                            if let Some((_, _, rank2)) = &t.hadamard {
                                bufs[2] = transpose(&bufs[2], *rank2, t.out);
                            }
                        }
                    }
                    Factored::Kron(k) => {
                        let [b0, b1, ..] = bufs;
                        materialize(&k.w1, sources, &mut raw, b0, &mut non_finite)?;
                        materialize(&k.w2, sources, &mut raw, b1, &mut non_finite)?;
                    }
                }
            }
            // At least one level: the expression's own tile.
            let depth = expr.depth().max(1);
            if tiles.len() < depth {
                tiles.resize_with(depth, || vec![0.0; TILE]);
            }
            out.reserve(len * dtype.size_bytes());
            let [first, rest @ ..] = &mut tiles[..] else {
                unreachable!("tiles were resized to at least one level")
            };
            let mut t = 0;
            let mut flagged = 0u64;
            while t < len {
                let n = TILE.min(len - t);
                let tile = &mut first[..n];
                let mut inputs = TileInputs {
                    raws,
                    loras,
                    next_leaf: 0,
                    next_lora: 0,
                    chunk_start: start,
                    round: *round_inputs,
                    non_finite: 0,
                };
                eval_tile(expr, &mut inputs, t..t + n, tile, rest);
                flagged |= inputs.non_finite;
                store(tile, *dtype, out, half, bhalf, rounder.as_mut());
                t += n;
            }
            for (i, leaf) in ls.iter().enumerate() {
                if flagged & (1 << i.min(63)) != 0 {
                    note(&mut non_finite, leaf.source);
                }
            }
        }
    }
    Ok(non_finite)
}

/// Fills in what a recipe needs from its whole tensor before any chunk of it can be evaluated:
/// the per-channel factors of each DoRA step. Returns `None` when the recipe needs nothing.
///
/// Each DoRA's norms are taken over the tensor as it stands at that step — the weight before the
/// LoRA (output axis) or `w + alpha · delta` (input axis) — by evaluating the expression up to
/// there, chunk by chunk, so memory stays one chunk whatever the tensor's size. The sums of
/// squares run in f64 and the square root is rounded once to f32: that is the correctly
/// rounded norm. ComfyUI takes it with an f32 torch reduction whose summation order depends on
/// the machine (SIMD width on a CPU, the kernel on a GPU), so the last bit of its norm — and
/// through it, of a DoRA-baked weight — is not the same everywhere; everything after the norm
/// follows ComfyUI's f32 operations in order.
pub fn prepare(
    recipe: &Recipe,
    numel: usize,
    sources: &dyn LeafBytes,
) -> Result<Option<Recipe>, KernelError> {
    let Recipe::Compute {
        expr,
        out,
        round_inputs,
        stochastic,
    } = recipe
    else {
        return Ok(None);
    };
    let starts_due = stochastic
        .as_ref()
        .is_some_and(|s| s.chunk_starts.0.is_empty() && Fp8::of(*out).is_some());
    let dora_due = needs_preparing(expr);
    if !dora_due && !starts_due {
        return Ok(None);
    }
    let expr = if dora_due {
        let mut scratch = Scratch::default();
        prepare_expr(expr, numel, *round_inputs, sources, &mut scratch)?
    } else {
        expr.clone()
    };
    let stochastic = match (stochastic, Fp8::of(*out)) {
        (Some(s), Some(kind)) if starts_due => Some(Stochastic {
            seed: s.seed,
            chunk_starts: stochastic::chunk_starts(kind, s.seed, numel),
        }),
        (s, _) => s.clone(),
    };
    Ok(Some(Recipe::Compute {
        expr,
        out: *out,
        round_inputs: *round_inputs,
        stochastic,
    }))
}

/// Whether an expression holds a DoRA step whose factors are not computed yet.
fn needs_preparing(expr: &Expr) -> bool {
    expr.steps.iter().any(|s| {
        s.dora.as_ref().is_some_and(|d| d.factors.is_none())
            || matches!(&s.add, Some((_, Term::Weights(sub))) if needs_preparing(sub))
    })
}

fn prepare_expr(
    expr: &Expr,
    numel: usize,
    round: Option<DType>,
    sources: &dyn LeafBytes,
    scratch: &mut Scratch,
) -> Result<Expr, KernelError> {
    let mut done = Expr {
        leaf: expr.leaf.clone(),
        steps: Vec::with_capacity(expr.steps.len()),
    };
    for step in &expr.steps {
        let mut step = step.clone();
        if let Some((_, Term::Weights(sub))) = &mut step.add
            && needs_preparing(sub)
        {
            *sub = prepare_expr(sub, numel, round, sources, scratch)?;
        }
        if let Some(dora) = &step.dora
            && dora.factors.is_none()
        {
            let mut probe = done.clone();
            probe.steps.push(Step {
                mm: step.mm,
                add: match dora.axis {
                    DoraAxis::Output => None,
                    DoraAxis::Input => step.add.clone(),
                },
                dora: None,
                window: step.window,
            });
            let factors = dora_factors(dora, &step, probe, numel, round, sources, scratch)?;
            step.dora = Some(Dora {
                factors: Some(factors),
                ..dora.clone()
            });
        }
        done.steps.push(step);
    }
    Ok(done)
}

/// `f32(dora_scale[c]) / (norm[c] + ε)` per channel, the norms taken of `probe`'s values over
/// the part of the weight `step` patches.
fn dora_factors(
    dora: &Dora,
    step: &Step,
    probe: Expr,
    numel: usize,
    round: Option<DType>,
    sources: &dyn LeafBytes,
    scratch: &mut Scratch,
) -> Result<Arc<[f32]>, KernelError> {
    let part = step.window.map_or(numel, |w| w.len);
    let channels = dora.channels(part / dora.inner.max(1));
    let mut sums = vec![0.0f64; channels];
    let probe = Recipe::Compute {
        expr: probe,
        out: DType::F32,
        round_inputs: round,
        stochastic: None,
    };
    let mut bytes = Vec::new();
    let mut start = 0;
    while start < numel {
        let len = CHUNK_ELEMENTS.min(numel - start);
        bytes.clear();
        produce(&probe, start, len, sources, scratch, &mut bytes)?;
        for p in step.pieces(start, len).iter().flatten() {
            let values = bytes[p.offset * 4..(p.offset + p.len) * 4].chunks_exact(4);
            for (i, b) in values.enumerate() {
                let v = f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                sums[dora.channel(p.local + i)] += v * v;
            }
        }
        start += len;
    }
    let mut scale = Vec::new();
    read_whole(
        &dora.scale,
        sources,
        &mut Raw::default(),
        &mut scale,
        &mut Vec::new(),
    )?;
    if scale.len() != 1 && scale.len() != channels {
        return Err(KernelError::DoraScale {
            values: scale.len(),
            channels,
        });
    }
    Ok(sums
        .iter()
        .enumerate()
        .map(|(c, sum)| {
            let norm = sum.sqrt() as f32 + f32::EPSILON;
            let s = if scale.len() == 1 { scale[0] } else { scale[c] };
            s / norm
        })
        .collect())
}

/// Rounds f32 values once to `dtype` and appends their bytes: round-to-nearest-even, or for fp8
/// ComfyUI's stochastic rounding when `rounder` is given (torch's nearest cast otherwise).
fn store(
    values: &[f32],
    dtype: DType,
    out: &mut Vec<u8>,
    half: &mut Vec<f16>,
    bhalf: &mut Vec<bf16>,
    rounder: Option<&mut StochasticRounder>,
) {
    if let Some(kind) = Fp8::of(dtype) {
        match rounder {
            Some(r) => out.extend(values.iter().map(|&v| r.round(v))),
            None => out.extend(values.iter().map(|&v| kind.round_nearest(v))),
        }
        return;
    }
    match dtype {
        DType::F16 => {
            half.resize(values.len(), f16::ZERO);
            half.convert_from_f32_slice(values);
            out.extend_from_slice(bytemuck::cast_slice(&half[..]));
        }
        DType::BF16 => {
            bhalf.resize(values.len(), bf16::ZERO);
            bhalf.convert_from_f32_slice(values);
            out.extend_from_slice(bytemuck::cast_slice(&bhalf[..]));
        }
        DType::F64 => {
            for v in values {
                out.extend_from_slice(&f64::from(*v).to_le_bytes());
            }
        }
        _ => out.extend_from_slice(bytemuck::cast_slice(values)),
    }
}

#[cfg(test)]
mod tests;

pub mod stochastic;
