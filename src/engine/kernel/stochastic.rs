//! ComfyUI's stochastic rounding to fp8 (`comfy/float.py`, `manual_stochastic_round_to_float8`),
//! bit for bit: how a patched weight is written back when the model keeps its weights in fp8.
//!
//! - The generator is torch's CPU MT19937 seeded with the CRC-32 of the weight's key in the
//!   model patcher (`diffusion_model.…`, `string_to_seed`). One `torch.rand` draw in half
//!   precision per value, in row-major order, is `(word & 0x7ff) / 2048`; the frontend's
//!   slicing into 4096²-element blocks shares one generator, so one pass is the same stream.
//! - The arithmetic is torch's in half precision: the value is first rounded to f16, its
//!   exponent is `floor(log2(|x|))` of a log2 **rounded to f16** (so a value just below a power of
//!   two can take the next exponent, with a negative mantissa), the mantissa plus the draw is
//!   rounded to f16 before `floor`, and the result is clamped to the format's largest value (an
//!   infinity becomes ±max).
//! - Each operation is done in f32 and rounded to f16, as torch's CPU kernels do for half
//!   tensors; where the f32 result is exact (most steps) that rounding is the identity.

use half::f16;

use std::sync::Arc;

use crate::engine::plan::{ChunkStarts, Stochastic};
use crate::format::DType;
use crate::format::fp8::Fp8;

use crate::generate::sampling::rng::Mt19937;

use super::CHUNK_ELEMENTS;

/// ComfyUI's `string_to_seed`: the CRC-32 (zlib's) of the key.
pub fn string_to_seed(key: &str) -> u32 {
    crc32fast::hash(key.as_bytes())
}

/// Rounds one tensor's values to fp8, in order, as ComfyUI's `stochastic_rounding` does.
#[derive(Clone)]
pub struct StochasticRounder {
    kind: Fp8,
    generator: Mt19937,
}

/// The stochastic rounder positioned at element `start` of an fp8 output (`None` otherwise):
/// from the prepared chunk starts when there are, else from the seed.
pub(super) fn rounder_at(
    out: DType,
    stochastic: Option<&Stochastic>,
    start: usize,
) -> Option<StochasticRounder> {
    let kind = Fp8::of(out)?;
    let s = stochastic?;
    let chunk = start / CHUNK_ELEMENTS;
    let (mut r, from) = match s.chunk_starts.0.get(chunk) {
        Some(r) => (r.clone(), chunk * CHUNK_ELEMENTS),
        None => (StochasticRounder::new(kind, s.seed), 0),
    };
    r.skip(start - from);
    Some(r)
}

/// The generator at the first element of every chunk of a tensor: one pass over its stream
/// (whole blocks are skipped without tempering, so this costs a fraction of the rounding).
pub(super) fn chunk_starts(kind: Fp8, seed: u32, numel: usize) -> ChunkStarts {
    let mut r = StochasticRounder::new(kind, seed);
    let mut starts = Vec::with_capacity(numel.div_ceil(CHUNK_ELEMENTS));
    let mut at = 0;
    while at < numel {
        starts.push(r.clone());
        let len = CHUNK_ELEMENTS.min(numel - at);
        r.skip(len);
        at += len;
    }
    ChunkStarts(Arc::new(starts))
}

/// Rounds an f32 to f16 and back: one half-precision operation's result.
fn h(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

impl StochasticRounder {
    pub fn new(kind: Fp8, seed: u32) -> StochasticRounder {
        StochasticRounder {
            kind,
            generator: Mt19937::new(seed),
        }
    }

    /// Skips the draws of `n` values (to start a chunk in the middle of a tensor).
    pub fn skip(&mut self, n: usize) {
        self.generator.discard(n);
    }

    /// The fp8 byte of the next value.
    pub fn round(&mut self, x: f32) -> u8 {
        let draw = (self.generator.next_u32() & 0x7ff) as f32 / 2048.0;
        let (e_bits, m_bits, bias) = self.kind.layout();
        let (bias, scale) = (bias as f32, (1u32 << m_bits) as f32);
        let x = f16::from_f32(x);
        if x.is_nan() {
            // A NaN made by x86 arithmetic (torch's `sign` and products) is the negative
            // "default NaN": the byte has its sign bit set whatever the input's was.
            return self.kind.encode_exact(-f32::NAN);
        }
        let a = f16::from_bits(x.to_bits() & 0x7fff);
        let sign = if a.to_bits() == 0 {
            0.0
        } else if x.is_sign_negative() {
            -1.0
        } else {
            1.0
        };
        let exponent = (floor_log2_half(a) + bias).clamp(0.0, ((1 << e_bits) - 1) as f32);
        let a = a.to_f32();
        // The steps below are exact in f32 (scaling by powers of two, subtracting 1 from a
        // value in [1, 2), products of short mantissas), so their f16 rounding is the identity,
        // with two exceptions done as torch does them: the mantissa plus the draw is rounded to
        // f16, and 2^16 (e5m2's exponent 31) is infinite in f16 — which makes the mantissa -1
        // and the result inf · 0, a NaN.
        let normal = exponent != 0.0;
        let power = h(pow2(exponent - bias));
        let mantissa = if normal {
            (a / power - 1.0) * scale
        } else {
            a / pow2(1.0 - bias - m_bits as f32)
        };
        let mantissa = floor(h(mantissa + draw)) / scale;
        let magnitude = if normal {
            power * (1.0 + mantissa)
        } else {
            pow2(1.0 - bias) * mantissa
        };
        if magnitude.is_nan() {
            return self.kind.encode_exact(-f32::NAN);
        }
        let max = self.kind.max();
        self.kind.encode_exact((sign * magnitude).clamp(-max, max))
    }
}

/// 2^k for an integral k in f32's normal range (no libm call).
fn pow2(k: f32) -> f32 {
    f32::from_bits(((k as i32 + 127) as u32) << 23)
}

/// `floor` of a value far inside i32's range, without libm (no SSE4.1 `roundss` in a baseline
/// x86-64 build); infinities and NaN pass through.
fn floor(v: f32) -> f32 {
    if !v.is_finite() {
        return v;
    }
    let t = v as i32 as f32;
    if t > v { t - 1.0 } else { t }
}

/// `floor(torch.log2(a))` of a non-negative half, where the log2 is rounded to f16 first:
/// looked up (every finite half has its entry; ±infinity for 0 and infinity).
fn floor_log2_half(a: f16) -> f32 {
    static TABLE: std::sync::OnceLock<Vec<i8>> = std::sync::OnceLock::new();
    let bits = a.to_bits();
    if bits == 0 {
        return f32::NEG_INFINITY;
    }
    if bits >= 0x7c00 {
        return f32::INFINITY;
    }
    let table = TABLE.get_or_init(|| {
        (0..0x7c00u16)
            .map(|b| {
                let l = log2_half(f16::from_bits(b).to_f32()).floor();
                if l.is_finite() { l as i8 } else { i8::MIN }
            })
            .collect()
    });
    f32::from(table[usize::from(bits)])
}

/// `torch.log2` of a half value: the log2, rounded to f16.
fn log2_half(a: f32) -> f32 {
    if a == 0.0 {
        return f32::NEG_INFINITY;
    }
    f16::from_f64(f64::from(a).log2()).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference vectors from real ComfyUI (a125cd84, torch 2.8 on the CPU):
    /// `comfy.float.stochastic_rounding` of ~2,100 values (specials, values just below powers of
    /// two, random magnitudes from 1e-9 to 1.6e3) for two weight keys and both formats, a 2-D
    /// tensor, torch's plain casts, and every half whose `floor(log2)` torch rounds up.
    #[test]
    fn comfyui_stochastic_rounding_bit_for_bit() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/comfyui/fp8.json");
        let data: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("reference vectors"))
                .expect("json");
        let values: Vec<f32> = data["values_f32_hex"]
            .as_array()
            .expect("values")
            .iter()
            .map(|v| f32::from_bits(v.as_u64().expect("bits") as u32))
            .collect();
        let bytes = |v: &serde_json::Value| -> Vec<u8> {
            v.as_array()
                .expect("bytes")
                .iter()
                .map(|b| b.as_u64().expect("byte") as u8)
                .collect()
        };
        for entry in data["keys"].as_array().expect("keys") {
            let key = entry["key"].as_str().expect("key");
            let seed = string_to_seed(key);
            assert_eq!(
                u64::from(seed),
                entry["seed"].as_u64().expect("seed"),
                "{key}"
            );
            for (name, kind) in [("e4m3fn", Fp8::E4M3), ("e5m2", Fp8::E5M2)] {
                let mut r = StochasticRounder::new(kind, seed);
                let ours: Vec<u8> = values.iter().map(|&v| r.round(v)).collect();
                let theirs = bytes(&entry[name]);
                let wrong: Vec<(f32, u8, u8)> = values
                    .iter()
                    .zip(ours.iter().zip(&theirs))
                    .filter(|(_, (a, b))| a != b)
                    .map(|(v, (a, b))| (*v, *a, *b))
                    .take(10)
                    .collect();
                assert!(
                    wrong.is_empty(),
                    "{key} {name}: (value, ours, ComfyUI) {wrong:?}"
                );
            }
        }
        // A matrix: the row slices share one generator.
        let theirs = bytes(&data["matrix_e4m3fn_seed12345"]);
        let mut r = StochasticRounder::new(Fp8::E4M3, 12345);
        let ours: Vec<u8> = values[..theirs.len()].iter().map(|&v| r.round(v)).collect();
        assert_eq!(ours, theirs);
        // Starting mid-tensor after skipping gives the rest of the same stream, across the
        // generator's 624-word blocks.
        for at in [1, 623, 624, 625, 1000, 1248, 1999] {
            let mut r = StochasticRounder::new(Fp8::E4M3, 12345);
            r.skip(at);
            assert_eq!(r.round(values[at]), theirs[at], "after skipping {at}");
        }
        // Torch's plain casts.
        for (name, kind) in [("cast_e4m3fn", Fp8::E4M3), ("cast_e5m2", Fp8::E5M2)] {
            let theirs = bytes(&data[name]);
            for (v, t) in values.iter().zip(&theirs) {
                let ours = kind.round_nearest(*v);
                let same = ours == *t || (kind.to_f32(ours).is_nan() && kind.to_f32(*t).is_nan());
                assert!(same, "{name}({v}) = {ours:#x}, torch {t:#x}");
            }
        }
        // Every positive finite half whose log2, rounded to f16, floors one higher than exact.
        let bumped: Vec<u16> = data["log2_bumped_half_bits"]
            .as_array()
            .expect("list")
            .iter()
            .map(|b| b.as_u64().expect("bits") as u16)
            .collect();
        let ours: Vec<u16> = (1..0x7c00u16)
            .filter(|&b| {
                let a = f16::from_bits(b).to_f32();
                log2_half(a).floor() != f64::from(a).log2().floor() as f32
            })
            .collect();
        assert_eq!(ours, bumped);
    }
}
