//! Comparing two checkpoints: which keys only one has, where shapes or dtypes differ, and how far
//! apart the shared tensors are — per key, per block and per component.
//!
//! For a key present in both with the same shape, both tensors are streamed in chunks by
//! positioned reads (never held whole, never mapped: memory is a few chunk buffers whatever the
//! model size) and four sums are kept in
//! f64: ‖A‖², ‖B‖², A·B and ‖A−B‖². A key's `relative` is ‖A−B‖/‖A‖ and its `cosine`
//! A·B/(‖A‖‖B‖); a block's and a component's are the same quantities over all their keys
//! together (the sums are added, not the ratios averaged). Every dtype is compared by value:
//! stored values convert to f64 exactly (floats of every width, fp8 included, and integers such
//! as `position_ids`), so a key stored in another dtype with the same values is identical.
//!
//! Blocks follow the way people talk about a model: SD1/SD2 `IN00`–`IN11`, `M00`, `OUT00`–
//! `OUT11` (SDXL: `IN00`–`IN08`, `M00`, `OUT00`–`OUT08`), plus `time_embed`, `label_emb` and
//! `out`; text encoders per layer (`L00`…, with the encoder's index first when a checkpoint has
//! several: `0.L00`, `1.L31`), their embeddings as `embeddings` and the rest as `final`; the VAE
//! and anything else by top-level module.
//!
//! Keys are matched by name. Undefined ratios (a zero tensor in A) are `None`, which JSON
//! prints as `null`; two all-zero tensors are identical (`relative` 0, `cosine` 1).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;
use serde::Serialize;

use std::fs::File;

use crate::format::fp8::Fp8;
use crate::format::{DType, TensorFile, TensorRecord, read_exact_at};

use super::Checkpoint;
use super::arch::Architecture;
use super::components::{CLIP_PREFIXES, Component, VAE_PREFIXES};

/// Elements converted per chunk (4 MB of f32 per side).
const CHUNK: usize = 1 << 20;

/// Why a comparison stopped.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("{key}: cannot read {dtype} values of {file}")]
    Unreadable {
        key: String,
        dtype: &'static str,
        file: String,
    },
    #[error("cannot read {file}: {message}")]
    Open { file: String, message: String },
    #[error("cancelled")]
    Cancelled,
}

/// The four sums a difference is computed from.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sums {
    pub a2: f64,
    pub b2: f64,
    pub ab: f64,
    pub d2: f64,
}

impl Sums {
    fn add(&mut self, o: &Sums) {
        self.a2 += o.a2;
        self.b2 += o.b2;
        self.ab += o.ab;
        self.d2 += o.d2;
    }

    /// ‖A−B‖/‖A‖; 0 when both are zero, `None` when only A is.
    pub fn relative(&self) -> Option<f64> {
        if self.d2 == 0.0 {
            Some(0.0)
        } else if self.a2 == 0.0 {
            None
        } else {
            Some((self.d2 / self.a2).sqrt())
        }
    }

    /// A·B/(‖A‖‖B‖); 1 for two identical tensors (zero ones included), `None` when exactly one
    /// is zero.
    pub fn cosine(&self) -> Option<f64> {
        if self.d2 == 0.0 {
            Some(1.0)
        } else if self.a2 == 0.0 || self.b2 == 0.0 {
            None
        } else {
            Some((self.ab / (self.a2.sqrt() * self.b2.sqrt())).clamp(-1.0, 1.0))
        }
    }
}

/// A key whose shapes differ.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ShapeMismatch {
    pub key: String,
    pub a: Vec<usize>,
    pub b: Vec<usize>,
}

/// A key stored in different dtypes (compared all the same, in f32 values).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DtypeMismatch {
    pub key: String,
    pub a: &'static str,
    pub b: &'static str,
}

/// One compared key.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KeyDiff {
    pub key: String,
    pub relative: Option<f64>,
    pub cosine: Option<f64>,
    #[serde(skip)]
    pub component: Component,
    #[serde(skip)]
    pub block: String,
    #[serde(skip)]
    pub sums: Sums,
}

/// One block (or a whole component, with `block` = `"all"`), over all its compared keys.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BlockDiff {
    pub component: &'static str,
    pub block: String,
    pub relative: Option<f64>,
    pub cosine: Option<f64>,
    /// Compared keys in the block.
    pub keys: usize,
}

/// Everything `amalgam diff` reports.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DiffReport {
    pub only_in_a: Vec<String>,
    pub only_in_b: Vec<String>,
    pub shape_mismatch: Vec<ShapeMismatch>,
    pub dtype_mismatch: Vec<DtypeMismatch>,
    /// Compared keys, in A's order.
    pub keys: Vec<KeyDiff>,
    /// Blocks in model order, then one `"all"` row per component.
    pub blocks: Vec<BlockDiff>,
}

impl DiffReport {
    /// No key, shape or dtype difference and every compared tensor bit-for-bit equal in value.
    pub fn identical(&self) -> bool {
        self.only_in_a.is_empty()
            && self.only_in_b.is_empty()
            && self.shape_mismatch.is_empty()
            && self.dtype_mismatch.is_empty()
            && self.changed_keys().next().is_none()
    }

    /// Compared keys whose values differ.
    pub fn changed_keys(&self) -> impl Iterator<Item = &KeyDiff> {
        self.keys.iter().filter(|k| k.sums.d2 != 0.0)
    }

    /// The per-component rows (`block == "all"`).
    pub fn components(&self) -> impl Iterator<Item = &BlockDiff> {
        self.blocks.iter().filter(|b| b.block == "all")
    }
}

/// A ratio as reports print it: six decimals, or "undefined".
pub fn ratio_text(v: Option<f64>) -> String {
    v.map_or_else(|| "undefined".to_owned(), |v| format!("{v:.6}"))
}

/// What the comparison has done so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiffProgress {
    pub keys_done: usize,
    pub keys_total: usize,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

/// The work list: shared keys with equal shapes, in A's order.
struct Pair<'a> {
    a: &'a TensorRecord,
    b: &'a TensorRecord,
}

/// Compares two checkpoints. `on_progress` is called from the calling thread after each batch
/// of keys; `cancel` is checked between chunks.
pub fn compare(
    a: &Checkpoint,
    b: &Checkpoint,
    cancel: &AtomicBool,
    on_progress: &mut dyn FnMut(DiffProgress),
) -> Result<DiffReport, DiffError> {
    let mut report = DiffReport::default();
    let mut pairs = Vec::new();
    for ta in a.file.tensors() {
        let Some(tb) = b.file.get(&ta.name) else {
            report.only_in_a.push(ta.name.clone());
            continue;
        };
        if ta.shape != tb.shape {
            report.shape_mismatch.push(ShapeMismatch {
                key: ta.name.clone(),
                a: ta.shape.clone(),
                b: tb.shape.clone(),
            });
            continue;
        }
        if ta.dtype != tb.dtype {
            report.dtype_mismatch.push(DtypeMismatch {
                key: ta.name.clone(),
                a: ta.dtype.as_str(),
                b: tb.dtype.as_str(),
            });
        }
        pairs.push(Pair { a: ta, b: tb });
    }
    report.only_in_b = b
        .file
        .tensors()
        .iter()
        .filter(|t| a.file.get(&t.name).is_none())
        .map(|t| t.name.clone())
        .collect();

    let open = |f: &TensorFile| {
        File::open(f.path()).map_err(|e| DiffError::Open {
            file: f.path().display().to_string(),
            message: e.to_string(),
        })
    };
    let (file_a, file_b) = (open(&a.file)?, open(&b.file)?);
    let bytes_total: u64 = pairs.iter().map(|p| p.a.len + p.b.len).sum();
    let mut progress = DiffProgress {
        keys_done: 0,
        keys_total: pairs.len(),
        bytes_done: 0,
        bytes_total,
    };
    on_progress(progress);
    // Keys in batches of about 64 MB: each batch's keys run in parallel (one key per thread,
    // its sums in order, so the result does not depend on the thread count), progress between.
    let mut start = 0;
    while start < pairs.len() {
        let mut end = start;
        let mut batch_bytes = 0u64;
        while end < pairs.len() && (end == start || batch_bytes < 64 << 20) {
            batch_bytes += pairs[end].a.len + pairs[end].b.len;
            end += 1;
        }
        let sums: Vec<Result<Sums, DiffError>> = pairs[start..end]
            .par_iter()
            .map(|p| key_sums((&a.file, &file_a), p.a, (&b.file, &file_b), p.b, cancel))
            .collect();
        for (p, s) in pairs[start..end].iter().zip(sums) {
            let sums = s?;
            let component = a.component_of(p.a);
            report.keys.push(KeyDiff {
                key: p.a.name.clone(),
                relative: sums.relative(),
                cosine: sums.cosine(),
                component,
                block: block_of(
                    &p.a.name,
                    component,
                    &a.detection.unet_prefix,
                    a.detection.architecture,
                ),
                sums,
            });
        }
        progress.keys_done = end;
        progress.bytes_done += batch_bytes;
        on_progress(progress);
        start = end;
    }
    report.blocks = aggregate(&report.keys);
    Ok(report)
}

/// The four sums of one key. Both tensors are read in chunks by positioned reads (not through
/// the files' memory maps, whose touched pages would count as the process's memory until the
/// end), widened to f32 (f16/bf16 by `half`'s F16C path) or, for other dtypes, to f64, and summed
/// in eight f64 lanes per sum (which vectorises; the lanes are added at the end).
fn key_sums(
    (fa, file_a): (&TensorFile, &File),
    ta: &TensorRecord,
    (fb, file_b): (&TensorFile, &File),
    tb: &TensorRecord,
    cancel: &AtomicBool,
) -> Result<Sums, DiffError> {
    let n = ta.numel();
    let unreadable = |f: &TensorFile, t: &TensorRecord| DiffError::Unreadable {
        key: t.name.clone(),
        dtype: t.dtype.as_str(),
        file: f.path().display().to_string(),
    };
    let (sa, sb) = (ta.dtype.size_bytes(), tb.dtype.size_bytes());
    if ta.len != (n * sa) as u64 {
        return Err(unreadable(fa, ta));
    }
    if tb.len != (n * sb) as u64 {
        return Err(unreadable(fb, tb));
    }
    let mut lanes = Lanes::default();
    let (mut raw_a, mut raw_b) = (vec![0u8; CHUNK.min(n) * sa], vec![0u8; CHUNK.min(n) * sb]);
    let (mut va, mut vb) = (Values::default(), Values::default());
    let mut first = 0;
    while first < n {
        if cancel.load(Ordering::Relaxed) {
            return Err(DiffError::Cancelled);
        }
        let len = CHUNK.min(n - first);
        let (ra, rb) = (&mut raw_a[..len * sa], &mut raw_b[..len * sb]);
        read_exact_at(file_a, ta.offset + (first * sa) as u64, ra)
            .map_err(|_| unreadable(fa, ta))?;
        read_exact_at(file_b, tb.offset + (first * sb) as u64, rb)
            .map_err(|_| unreadable(fb, tb))?;
        va.decode(ra, ta.dtype, len);
        vb.decode(rb, tb.dtype, len);
        match (&va, &vb) {
            (Values { f32: Some(x), .. }, Values { f32: Some(y), .. }) => {
                lanes.add_f32(&x[..len], &y[..len]);
            }
            _ => {
                let (x, y) = (va.as_f64(len), vb.as_f64(len));
                lanes.add(&x, &y, |v| *v);
            }
        }
        first += len;
    }
    Ok(lanes.sums())
}

/// One chunk's values: f32 for the float dtypes that widen exactly to it, f64 otherwise.
#[derive(Default)]
struct Values {
    f32: Option<Vec<f32>>,
    f64: Vec<f64>,
}

impl Values {
    fn decode(&mut self, raw: &[u8], dtype: DType, len: usize) {
        fn f32_buf(slot: &mut Option<Vec<f32>>, len: usize) -> &mut [f32] {
            let v = slot.get_or_insert_with(Vec::new);
            v.resize(len, 0.0);
            &mut v[..len]
        }
        use half::slice::HalfFloatSliceExt;
        match dtype {
            DType::F16 => {
                // Little-endian hosts read the bytes in place when aligned (they are: Vec<u8>
                // buffers come from malloc), otherwise they are copied first.
                let out = f32_buf(&mut self.f32, len);
                match bytemuck::try_cast_slice::<u8, half::f16>(raw) {
                    Ok(src) if cfg!(target_endian = "little") => src.convert_to_f32_slice(out),
                    _ => {
                        let src: Vec<half::f16> = raw
                            .chunks_exact(2)
                            .map(|c| half::f16::from_le_bytes([c[0], c[1]]))
                            .collect();
                        src.convert_to_f32_slice(out);
                    }
                }
            }
            DType::BF16 => {
                let src: Vec<half::bf16> = raw
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]))
                    .collect();
                src.convert_to_f32_slice(f32_buf(&mut self.f32, len));
            }
            DType::F32 => {
                for (o, c) in f32_buf(&mut self.f32, len)
                    .iter_mut()
                    .zip(raw.chunks_exact(4))
                {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            other => {
                self.f32 = None;
                self.f64.resize(len, 0.0);
                decode(raw, other, 0, &mut self.f64[..len]);
            }
        }
    }

    fn as_f64(&self, len: usize) -> Vec<f64> {
        match &self.f32 {
            Some(v) => v[..len].iter().map(|x| f64::from(*x)).collect(),
            None => self.f64[..len].to_vec(),
        }
    }
}

/// Eight f64 lanes for each of the four sums.
#[derive(Default)]
struct Lanes {
    a2: [f64; 8],
    b2: [f64; 8],
    ab: [f64; 8],
    d2: [f64; 8],
}

impl Lanes {
    /// [`Lanes::add`] for f32 values, compiled for AVX2 + FMA too and used where the CPU has
    /// them (the sums are the same; only the instructions differ).
    fn add_f32(&mut self, x: &[f32], y: &[f32]) {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            #[allow(unsafe_code)]
            // SAFETY: the CPU was just checked to have the features the function is compiled for.
            unsafe {
                self.add_f32_avx2(x, y);
            }
            return;
        }
        self.add(x, y, |v| f64::from(*v));
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn add_f32_avx2(&mut self, x: &[f32], y: &[f32]) {
        self.add(x, y, |v| f64::from(*v));
    }

    #[inline(always)]
    fn add<T>(&mut self, x: &[T], y: &[T], widen: impl Fn(&T) -> f64) {
        let (xs, ys) = (x.chunks_exact(8), y.chunks_exact(8));
        let (xr, yr) = (xs.remainder(), ys.remainder());
        for (cx, cy) in xs.zip(ys) {
            for i in 0..8 {
                let (a, b) = (widen(&cx[i]), widen(&cy[i]));
                let d = a - b;
                self.a2[i] += a * a;
                self.b2[i] += b * b;
                self.ab[i] += a * b;
                self.d2[i] += d * d;
            }
        }
        for (i, (a, b)) in xr.iter().zip(yr).enumerate() {
            let (a, b) = (widen(a), widen(b));
            let d = a - b;
            self.a2[i] += a * a;
            self.b2[i] += b * b;
            self.ab[i] += a * b;
            self.d2[i] += d * d;
        }
    }

    fn sums(&self) -> Sums {
        let total = |l: &[f64; 8]| l.iter().sum::<f64>();
        Sums {
            a2: total(&self.a2),
            b2: total(&self.b2),
            ab: total(&self.ab),
            d2: total(&self.d2),
        }
    }
}

/// Converts elements `first..first + out.len()` of a tensor's little-endian bytes to f64
/// (exactly: every stored value is representable).
fn decode(bytes: &[u8], dtype: DType, first: usize, out: &mut [f64]) {
    let size = dtype.size_bytes();
    let raw = &bytes[first * size..(first + out.len()) * size];
    let mut each = |f: &dyn Fn(&[u8]) -> f64| {
        for (o, c) in out.iter_mut().zip(raw.chunks_exact(size)) {
            *o = f(c);
        }
    };
    match dtype {
        DType::Bool | DType::U8 => each(&|c| f64::from(c[0])),
        DType::I8 => each(&|c| f64::from(c[0] as i8)),
        DType::F8E4M3 | DType::F8E5M2 => {
            let table = Fp8::of(dtype).map_or(&[0.0; 256], Fp8::values);
            each(&|c| f64::from(table[usize::from(c[0])]));
        }
        DType::I16 => each(&|c| f64::from(i16::from_le_bytes([c[0], c[1]]))),
        DType::U16 => each(&|c| f64::from(u16::from_le_bytes([c[0], c[1]]))),
        DType::F16 => each(&|c| f64::from(half::f16::from_le_bytes([c[0], c[1]]))),
        DType::BF16 => each(&|c| f64::from(half::bf16::from_le_bytes([c[0], c[1]]))),
        DType::I32 => each(&|c| f64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        DType::U32 => each(&|c| f64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        DType::F32 => each(&|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        DType::F64 => each(&|c| f64::from_le_bytes(eight(c))),
        // Integers beyond 2⁵³ round; no checkpoint stores such values in a weight.
        DType::I64 => each(&|c| i64::from_le_bytes(eight(c)) as f64),
        DType::U64 => each(&|c| u64::from_le_bytes(eight(c)) as f64),
    }
}

fn eight(c: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(&c[..8]);
    a
}

/// The block a key belongs to (see the module documentation).
pub fn block_of(key: &str, component: Component, unet_prefix: &str, arch: Architecture) -> String {
    match component {
        Component::Model => {
            let rest = key.strip_prefix(unet_prefix).unwrap_or(key);
            let unet = matches!(
                arch,
                Architecture::Sd1
                    | Architecture::Sd2
                    | Architecture::Sdxl
                    | Architecture::SdxlRefiner
                    | Architecture::Unknown
            );
            if unet {
                if let Some(n) = indexed(rest, "input_blocks.") {
                    return format!("IN{n:02}");
                }
                if rest.starts_with("middle_block.") {
                    // One block of three layers, as the merge-block tools count it.
                    return "M00".to_owned();
                }
                if let Some(n) = indexed(rest, "output_blocks.") {
                    return format!("OUT{n:02}");
                }
            }
            top_module(rest)
        }
        Component::Clip => {
            let rest = CLIP_PREFIXES
                .iter()
                .find_map(|p| key.strip_prefix(p))
                .unwrap_or(key);
            // `conditioner.embedders.N.` (SDXL) and `text_encoders.NAME.` name the encoder.
            let (encoder, rest) =
                if key.starts_with("conditioner.embedders.") || key.starts_with("text_encoders.") {
                    match rest.split_once('.') {
                        Some((e, r)) => (Some(e), r),
                        None => (None, rest),
                    }
                } else {
                    (None, rest)
                };
            let layer = find_indexed(rest, ".layers.")
                .or_else(|| find_indexed(rest, ".resblocks."))
                .or_else(|| find_indexed(rest, ".block."));
            let block = match layer {
                Some(n) => format!("L{n:02}"),
                None if rest.contains("embed") => "embeddings".to_owned(),
                None => "final".to_owned(),
            };
            match encoder {
                Some(e) => format!("{e}.{block}"),
                None => block,
            }
        }
        Component::Vae => {
            let rest = VAE_PREFIXES
                .iter()
                .find_map(|p| key.strip_prefix(p))
                .unwrap_or(key);
            // `encoder.down.2…` → `encoder.down.2`; `decoder.mid…` → `decoder.mid`.
            let parts: Vec<&str> = rest.split('.').collect();
            match parts.as_slice() {
                [half, stage, n, _, ..]
                    if (*half == "encoder" || *half == "decoder")
                        && (*stage == "down" || *stage == "up")
                        && n.parse::<usize>().is_ok() =>
                {
                    format!("{half}.{stage}.{n}")
                }
                [half, stage, _, ..] if *half == "encoder" || *half == "decoder" => {
                    format!("{half}.{stage}")
                }
                _ => top_module(rest),
            }
        }
        Component::Other => top_module(key),
    }
}

/// `n` when `s` starts with `prefix` followed by a number and a dot.
fn indexed(s: &str, prefix: &str) -> Option<usize> {
    let rest = s.strip_prefix(prefix)?;
    let (n, _) = rest.split_once('.')?;
    n.parse().ok()
}

/// `n` for the first `…{marker}n.` inside `s`.
fn find_indexed(s: &str, marker: &str) -> Option<usize> {
    let at = s.find(marker)?;
    indexed(&s[at + 1..], &marker[1..])
}

/// The first path segment of a key (`out.2.weight` → `out`).
fn top_module(s: &str) -> String {
    s.split('.').next().unwrap_or(s).to_owned()
}

/// Per-block and per-component rows, blocks in a natural order within each component.
fn aggregate(keys: &[KeyDiff]) -> Vec<BlockDiff> {
    let mut blocks: BTreeMap<(Component, BlockOrder), (Sums, usize)> = BTreeMap::new();
    let mut components: BTreeMap<Component, (Sums, usize)> = BTreeMap::new();
    for k in keys {
        let e = blocks
            .entry((k.component, BlockOrder::of(&k.block)))
            .or_default();
        e.0.add(&k.sums);
        e.1 += 1;
        let c = components.entry(k.component).or_default();
        c.0.add(&k.sums);
        c.1 += 1;
    }
    let row = |component: Component, block: String, (sums, keys): (Sums, usize)| BlockDiff {
        component: component.as_str(),
        block,
        relative: sums.relative(),
        cosine: sums.cosine(),
        keys,
    };
    let mut out: Vec<BlockDiff> = blocks
        .into_iter()
        .map(|((c, order), v)| row(c, order.name, v))
        .collect();
    out.extend(
        components
            .into_iter()
            .map(|(c, v)| row(c, "all".to_owned(), v)),
    );
    out
}

/// Orders block names with their numbers as numbers (`IN2` before `IN10`) and the UNet's
/// input blocks, middle and output blocks in the order data flows through them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct BlockOrder {
    key: Vec<(u8, String, usize)>,
    name: String,
}

impl BlockOrder {
    fn of(name: &str) -> BlockOrder {
        let rank = |word: &str| match word {
            "time_embed" | "label_emb" => 0,
            "IN" => 1,
            "M" => 2,
            "OUT" => 3,
            "out" => 4,
            _ => 5,
        };
        let mut key = Vec::new();
        for part in name.split('.') {
            let digits = part.trim_start_matches(|c: char| !c.is_ascii_digit());
            let word = &part[..part.len() - digits.len()];
            let n = digits.parse().unwrap_or(usize::MAX);
            key.push((rank(word), word.to_owned(), n));
        }
        BlockOrder {
            key,
            name: name.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_named_as_people_name_them() {
        let p = "model.diffusion_model.";
        let m = |k: &str, arch| block_of(k, Component::Model, p, arch);
        assert_eq!(
            m(
                "model.diffusion_model.input_blocks.4.1.proj_in.weight",
                Architecture::Sd1
            ),
            "IN04"
        );
        assert_eq!(
            m(
                "model.diffusion_model.middle_block.2.in_layers.0.weight",
                Architecture::Sd1
            ),
            "M00"
        );
        assert_eq!(
            m(
                "model.diffusion_model.output_blocks.11.0.skip_connection.bias",
                Architecture::Sdxl
            ),
            "OUT11"
        );
        assert_eq!(
            m("model.diffusion_model.out.2.weight", Architecture::Sd1),
            "out"
        );
        assert_eq!(
            m(
                "model.diffusion_model.time_embed.0.weight",
                Architecture::Sd1
            ),
            "time_embed"
        );
        assert_eq!(
            m(
                "model.diffusion_model.joint_blocks.3.x_block.attn.qkv.weight",
                Architecture::Sd3
            ),
            "joint_blocks"
        );
        let c = |k: &str| block_of(k, Component::Clip, p, Architecture::Sd1);
        assert_eq!(
            c("cond_stage_model.transformer.text_model.encoder.layers.7.mlp.fc1.weight"),
            "L07"
        );
        assert_eq!(
            c("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"),
            "embeddings"
        );
        assert_eq!(
            c("cond_stage_model.transformer.text_model.final_layer_norm.bias"),
            "final"
        );
        assert_eq!(
            c("conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight"),
            "1.L31"
        );
        assert_eq!(
            c("conditioner.embedders.1.model.text_projection"),
            "1.final"
        );
        let v = |k: &str| block_of(k, Component::Vae, p, Architecture::Sd1);
        assert_eq!(
            v("first_stage_model.decoder.up.3.block.0.conv1.weight"),
            "decoder.up.3"
        );
        assert_eq!(
            v("first_stage_model.encoder.mid.attn_1.q.weight"),
            "encoder.mid"
        );
        assert_eq!(v("first_stage_model.quant_conv.weight"), "quant_conv");
        assert_eq!(
            block_of("model_ema.decay", Component::Other, p, Architecture::Sd1),
            "model_ema"
        );
    }

    #[test]
    fn fp8_bytes_decode_to_their_exact_values() {
        let bytes = [0x38, 0x7e, 0x01, 0xb8, 0x3c];
        let mut out = [0.0; 4];
        decode(&bytes, DType::F8E4M3, 0, &mut out);
        assert_eq!(out, [1.0, 448.0, 2f64.powi(-9), -1.0]);
        let mut out = [0.0; 1];
        decode(&bytes, DType::F8E5M2, 4, &mut out);
        assert_eq!(out, [1.0]);
    }

    #[test]
    fn blocks_sort_in_the_order_data_flows() {
        let mut names = vec!["OUT10", "out", "IN10", "M00", "IN02", "time_embed", "OUT00"];
        names.sort_by_key(|n| BlockOrder::of(n));
        assert_eq!(
            names,
            ["time_embed", "IN02", "IN10", "M00", "OUT00", "OUT10", "out"]
        );
    }

    #[test]
    fn ratios_are_defined_for_zero_tensors() {
        let zero = Sums::default();
        assert_eq!(zero.relative(), Some(0.0));
        assert_eq!(zero.cosine(), Some(1.0));
        let only_b = Sums {
            a2: 0.0,
            b2: 4.0,
            ab: 0.0,
            d2: 4.0,
        };
        assert_eq!(only_b.relative(), None);
        assert_eq!(only_b.cosine(), None);
        let opposite = Sums {
            a2: 1.0,
            b2: 1.0,
            ab: -1.0,
            d2: 4.0,
        };
        assert_eq!(opposite.relative(), Some(2.0));
        assert_eq!(opposite.cosine(), Some(-1.0));
    }
}
