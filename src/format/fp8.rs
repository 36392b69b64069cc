//! The two 8-bit float formats safetensors stores: `F8_E4M3` (torch's `float8_e4m3fn`: 4
//! exponent bits, bias 7, no infinities, `0x7f`/`0xff` are NaN, largest 448) and `F8_E5M2`
//! (torch's `float8_e5m2`: 5 exponent bits, bias 15, IEEE-like infinities and NaNs, largest
//! 57344).
//!
//! - [`Fp8::to_f32`] is exact: every fp8 value is an f32.
//! - [`Fp8::round_nearest`] is torch's cast (`tensor.to(torch.float8_e4m3fn)`, which is what
//!   loading a wider weight into an fp8 parameter does): round to nearest, ties to even; too
//!   large becomes NaN in e4m3fn (it has no infinity) and infinity in e5m2.
//! - [`Fp8::encode_exact`] writes a value that is already an fp8 value (what ComfyUI's
//!   stochastic rounding produces).

use super::DType;

/// An 8-bit float format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fp8 {
    E4M3,
    E5M2,
}

impl Fp8 {
    /// The fp8 format of a dtype, if it is one.
    pub fn of(dtype: DType) -> Option<Fp8> {
        match dtype {
            DType::F8E4M3 => Some(Fp8::E4M3),
            DType::F8E5M2 => Some(Fp8::E5M2),
            _ => None,
        }
    }

    pub fn dtype(self) -> DType {
        match self {
            Fp8::E4M3 => DType::F8E4M3,
            Fp8::E5M2 => DType::F8E5M2,
        }
    }

    /// Exponent bits, mantissa bits, exponent bias.
    pub const fn layout(self) -> (i32, i32, i32) {
        match self {
            Fp8::E4M3 => (4, 3, 7),
            Fp8::E5M2 => (5, 2, 15),
        }
    }

    /// The largest finite value (torch's `finfo(dtype).max`).
    pub const fn max(self) -> f32 {
        match self {
            Fp8::E4M3 => 448.0,
            Fp8::E5M2 => 57344.0,
        }
    }

    /// The value of a byte, exactly.
    pub fn to_f32(self, byte: u8) -> f32 {
        let (e_bits, m_bits, bias) = self.layout();
        let sign = if byte & 0x80 != 0 { -1.0 } else { 1.0 };
        let e = i32::from((byte >> m_bits) & ((1 << e_bits) - 1) as u8);
        let m = i32::from(byte & ((1 << m_bits) - 1) as u8);
        let top = (1 << e_bits) - 1;
        let magnitude = match self {
            Fp8::E4M3 if e == top && m == (1 << m_bits) - 1 => return f32::NAN,
            Fp8::E5M2 if e == top => {
                return if m == 0 {
                    sign * f32::INFINITY
                } else {
                    f32::NAN
                };
            }
            _ if e == 0 => m as f32 * pow2(1 - bias - m_bits),
            _ => (1.0 + m as f32 / (1 << m_bits) as f32) * pow2(e - bias),
        };
        sign * magnitude
    }

    /// [`Fp8::to_f32`] of every byte, built once per format: converting many values is a
    /// lookup each.
    pub fn values(self) -> &'static [f32; 256] {
        static E4M3: std::sync::OnceLock<[f32; 256]> = std::sync::OnceLock::new();
        static E5M2: std::sync::OnceLock<[f32; 256]> = std::sync::OnceLock::new();
        let cell = match self {
            Fp8::E4M3 => &E4M3,
            Fp8::E5M2 => &E5M2,
        };
        cell.get_or_init(|| std::array::from_fn(|b| self.to_f32(b as u8)))
    }

    /// The byte of the fp8 value nearest to `x` (ties to even), as torch's cast gives it. Bit
    /// arithmetic as c10's converters do it: a normal result rounds by adding half a unit (plus
    /// the kept bit's oddness) to the f32 bits; a subnormal one by letting an f32 addition of a
    /// large power of two do the rounding.
    pub fn round_nearest(self, x: f32) -> u8 {
        let sign = ((x.to_bits() >> 24) & 0x80) as u8;
        let bits = x.to_bits() & 0x7fff_ffff;
        let (_, m_bits, bias) = self.layout();
        let (overflow, too_big) = match self {
            Fp8::E4M3 => (480f32.to_bits(), 0x7f),
            Fp8::E5M2 => (65536f32.to_bits(), 0x7c),
        };
        if bits > 0x7f80_0000 {
            return sign | 0x7f;
        }
        if bits >= overflow {
            return sign | too_big;
        }
        let shift = 23 - m_bits as u32;
        let min_normal = ((127 + 1 - bias) as u32) << 23;
        if bits < min_normal {
            // 2^(shift + 1 - bias): adding it leaves the subnormal's units in the low bits.
            let magic = ((127 - bias + shift as i32 + 1) as u32) << 23;
            let sum = f32::from_bits(bits) + f32::from_bits(magic);
            return sign | (sum.to_bits() - magic) as u8;
        }
        let odd = (bits >> shift) & 1;
        let rebias = ((bias - 127) as u32) << 23;
        let rounded = bits
            .wrapping_add(rebias)
            .wrapping_add((1 << (shift - 1)) - 1 + odd);
        sign | (rounded >> shift) as u8
    }

    /// The byte of `x`, which must be an fp8 value (or NaN); the result of rounding elsewhere.
    pub fn encode_exact(self, x: f32) -> u8 {
        let sign = if x.is_sign_negative() { 0x80 } else { 0 };
        if x.is_nan() {
            return sign | 0x7f;
        }
        sign | self.encode_magnitude(x.abs())
    }

    /// Bits of a non-negative value on the fp8 grid (one binade past the largest included, which
    /// encodes as e4m3fn's NaN or e5m2's infinity, as torch's cast writes them).
    fn encode_magnitude(self, a: f32) -> u8 {
        let (e_bits, m_bits, bias) = self.layout();
        if a == 0.0 {
            return 0;
        }
        if a.is_infinite() {
            return ((1 << e_bits) - 1) << m_bits;
        }
        let e = (a.to_bits() >> 23) as i32 - 127;
        if e < 1 - bias {
            return (a / pow2(1 - bias - m_bits)) as u8;
        }
        let m = ((a / pow2(e) - 1.0) * (1 << m_bits) as f32) as u8;
        (((e + bias) as u8) << m_bits) | m
    }
}

/// 2^k as f32 (exact for the exponents used here).
fn pow2(k: i32) -> f32 {
    f32::from_bits(((k + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_decodes_and_encodes_back() {
        for kind in [Fp8::E4M3, Fp8::E5M2] {
            for b in 0..=255u8 {
                let v = kind.to_f32(b);
                if v.is_nan() {
                    continue;
                }
                assert_eq!(kind.encode_exact(v), b, "{kind:?} {b:#x} = {v}");
                assert_eq!(kind.round_nearest(v), b, "{kind:?} {b:#x} = {v}");
            }
        }
        assert_eq!(Fp8::E4M3.to_f32(0x7e), 448.0);
        assert!(Fp8::E4M3.to_f32(0x7f).is_nan());
        assert_eq!(Fp8::E4M3.to_f32(0x01), 2f32.powi(-9));
        assert_eq!(Fp8::E5M2.to_f32(0x7b), 57344.0);
        assert_eq!(Fp8::E5M2.to_f32(0x7c), f32::INFINITY);
        assert_eq!(Fp8::E5M2.to_f32(0x01), 2f32.powi(-16));
    }

    /// The bit arithmetic against the plain definition (nearest of the grid, ties to even), on
    /// every f16 value and on values between them.
    #[test]
    fn nearest_by_bits_is_nearest_by_value() {
        fn by_value(kind: Fp8, x: f32) -> u8 {
            let sign = if x.is_sign_negative() { 0x80 } else { 0 };
            let (_, m_bits, bias) = kind.layout();
            let a = x.abs();
            let e = if a == 0.0 {
                0
            } else {
                ((a.to_bits() >> 23) as i32 - 127).max(1 - bias)
            };
            let quantum = f64::from(pow2(e - m_bits));
            let q = (f64::from(a) / quantum).round_ties_even();
            sign | kind.encode_magnitude((q * quantum) as f32)
        }
        for kind in [Fp8::E4M3, Fp8::E5M2] {
            for b in 0..0x7c00u16 {
                for x in [
                    half::f16::from_bits(b).to_f32(),
                    half::f16::from_bits(b).to_f32() * 1.000_01,
                ] {
                    if x >= 464.0 && kind == Fp8::E4M3 || x >= 61440.0 {
                        continue; // the overflow rules are tested below
                    }
                    for v in [x, -x] {
                        assert_eq!(kind.round_nearest(v), by_value(kind, v), "{kind:?} {v}");
                    }
                }
            }
        }
    }

    #[test]
    fn rounding_is_to_nearest_even_and_overflow_is_torchs() {
        // 1 + 1/16 lies halfway between 1 and 1.125: the even mantissa (1.0) wins.
        assert_eq!(Fp8::E4M3.round_nearest(1.0625), 0x38);
        assert_eq!(Fp8::E4M3.round_nearest(1.0626), 0x39);
        assert_eq!(Fp8::E4M3.round_nearest(464.0), 0x7e, "a tie goes to 448");
        assert_eq!(Fp8::E4M3.round_nearest(470.0), 0x7f, "past the tie: NaN");
        assert_eq!(Fp8::E4M3.round_nearest(-1e6), 0xff);
        assert_eq!(Fp8::E5M2.round_nearest(1e6), 0x7c);
        assert_eq!(Fp8::E4M3.round_nearest(-0.0), 0x80);
    }
}
