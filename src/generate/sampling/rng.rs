//! PyTorch's CPU generator, bit for bit: what `torch.manual_seed(seed); torch.randn(shape)` gives
//! for a float32 tensor, and so the noise ComfyUI's `prepare_noise` and its ancestral samplers'
//! `default_noise_sampler` draw (`shared/reference/torch-randn.md`).
//!
//! - Seeding: MT19937 seeded with the **low 32 bits** of the 64-bit seed (`init_genrand`); a
//!   first draw twists.
//! - Tensors of 16 or more elements (every latent): all `n` uniforms are drawn first as the low
//!   24 bits of each word times 2^-24; each full chunk of 16 is turned into normals by a
//!   Box–Muller that pairs lane `j` (radius, from `1 - u`) with lane `j + 8` (angle), with the
//!   float32 Cephes polynomials of torch's AVX2 kernel (`avx_mathfun.h`) and **exactly** the
//!   fused multiply-adds GCC put in the shipped binary — every `mul_add` below is one of them,
//!   every other operation is rounded on its own. A tail (`n % 16 != 0`) draws 16 fresh uniforms
//!   and overwrites the last 16 outputs.
//! - Fewer than 16 elements: float64 Box–Muller (`log1p`, `sin`, `cos`) with a cached second
//!   value that lives in the generator until it is re-seeded.
//!
//! This is torch's kernel on every x86-64 CPU with AVX2 (AVX-512 ones included: torch registers
//! no AVX-512 kernel for it). Torch on a CPU without AVX2, or on ARM, uses libm and differs in
//! about 38 % of values by up to 2e-6; that flavour is not reproduced.

/// MT19937 as torch's `mt19937` (the reference generator). Also the generator behind
/// ComfyUI's stochastic rounding to fp8 (`torch.rand` in half precision draws one word per value).
#[derive(Clone)]
pub(crate) struct Mt19937 {
    state: [u32; 624],
    next: usize,
}

impl Mt19937 {
    pub(crate) fn new(seed: u32) -> Mt19937 {
        let mut state = [0u32; 624];
        state[0] = seed;
        for j in 1..624 {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(j as u32);
        }
        // The first draw twists the whole state.
        Mt19937 { state, next: 624 }
    }

    fn twist(&mut self) {
        for i in 0..624 {
            let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % 624] & 0x7fff_ffff);
            let mut v = self.state[(i + 397) % 624] ^ (y >> 1);
            if y & 1 != 0 {
                v ^= 0x9908_b0df;
            }
            self.state[i] = v;
        }
        self.next = 0;
    }

    /// Skips `n` words: whole blocks are twisted without tempering any output.
    pub(crate) fn discard(&mut self, mut n: usize) {
        loop {
            let left = 624 - self.next.min(624);
            if n <= left {
                self.next += n;
                return;
            }
            n -= left;
            self.twist();
        }
    }

    pub(crate) fn next_u32(&mut self) -> u32 {
        if self.next >= 624 {
            self.twist();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }
}

/// torch's default CPU generator after `torch.manual_seed(seed)`.
#[derive(Clone)]
pub struct CpuGenerator {
    mt: Mt19937,
    /// The second value of the float64 Box–Muller pair, kept for the next small tensor.
    next_double: Option<f64>,
}

impl CpuGenerator {
    /// `torch.manual_seed(seed)`: only the low 32 bits seed the generator, so seeds that agree
    /// there (`156680208700286` and `4096709502`) give the same noise, as in ComfyUI.
    pub fn manual_seed(seed: u64) -> CpuGenerator {
        CpuGenerator {
            mt: Mt19937::new(seed as u32),
            next_double: None,
        }
    }

    /// `torch.randn(n)` in float32 (any shape with `n` elements, contiguous).
    pub fn randn(&mut self, n: usize) -> Vec<f32> {
        if n >= 16 {
            self.normal_fill(n)
        } else {
            (0..n).map(|_| self.normal_f64() as f32).collect()
        }
    }

    /// The low 24 bits of a word as a float in [0, 1).
    fn uniform_f32(&mut self) -> f32 {
        (self.mt.next_u32() & 0x00ff_ffff) as f32 * (1.0 / 16_777_216.0)
    }

    /// The low 53 bits of two words (the first is the high word) as a double in [0, 1).
    fn uniform_f64(&mut self) -> f64 {
        let hi = u64::from(self.mt.next_u32());
        let lo = u64::from(self.mt.next_u32());
        (((hi << 32) | lo) & ((1 << 53) - 1)) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }

    /// `normal_distribution<double>`: the radius from the second uniform, the angle from the
    /// first; the sine is cached for the next call.
    fn normal_f64(&mut self) -> f64 {
        if let Some(v) = self.next_double.take() {
            return v * 1.0 + 0.0;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let radius = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.next_double = Some(radius * theta.sin());
        radius * theta.cos() * 1.0 + 0.0
    }

    fn normal_fill(&mut self, n: usize) -> Vec<f32> {
        let mut out: Vec<f32> = (0..n).map(|_| self.uniform_f32()).collect();
        for chunk in out.chunks_exact_mut(16) {
            box_muller16(chunk);
        }
        if !n.is_multiple_of(16) {
            let tail = &mut out[n - 16..];
            for v in tail.iter_mut() {
                *v = self.uniform_f32();
            }
            box_muller16(tail);
        }
        out
    }
}

/// ComfyUI's `prepare_noise`: one `randn` over the whole batch, or with `batch_index` one
/// `randn` per index from 0 to the largest (the generator is not re-seeded between them), each
/// image taking the noise of its index. `per_image` is `C·h·w` of the latent.
pub fn prepare_noise(
    seed: u64,
    per_image: usize,
    batch: usize,
    batch_index: Option<&[usize]>,
) -> Vec<f32> {
    let mut generator = CpuGenerator::manual_seed(seed);
    let Some(indices) = batch_index.filter(|i| !i.is_empty()) else {
        return generator.randn(batch * per_image);
    };
    let last = indices.iter().copied().max().unwrap_or(0);
    let mut drawn: Vec<Option<Vec<f32>>> = vec![None; last + 1];
    for (i, slot) in drawn.iter_mut().enumerate() {
        let noise = generator.randn(per_image);
        if indices.contains(&i) {
            *slot = Some(noise);
        }
    }
    indices
        .iter()
        .flat_map(|&i| drawn[i].iter().flatten().copied())
        .collect()
}

// Constants of avx_mathfun.h as the torch binary holds them (float32 bit patterns).
const LOG_P: [u32; 9] = [
    0x3D90_21BB,
    0xBDEB_D1B8,
    0x3DEF_251A,
    0xBDFE_5D4F,
    0x3E11_E9BF,
    0xBE2A_AE50,
    0x3E4C_CEAC,
    0xBE7F_FFFC,
    0x3EAA_AAAA,
];
const LOG_Q1: u32 = 0xB95E_8083;
const LOG_Q2: u32 = 0x3F31_8000;
const SQRTHF: u32 = 0x3F35_04F3;
const MIN_NORM: u32 = 0x0080_0000;
const TWO_PI: u32 = 0x40C9_0FDB;
const FOPI: u32 = 0x3FA2_F983;
const MDP: [u32; 3] = [0xBF49_0000, 0xB97D_A000, 0xB322_2169];
const COS_P: [u32; 3] = [0x37CC_F5CE, 0xBAB6_061A, 0x3D2A_AAA5];
const SIN_P: [u32; 3] = [0xB94C_A1F9, 0x3C08_839E, 0xBE2A_AAA3];

fn c(bits: u32) -> f32 {
    f32::from_bits(bits)
}

/// `log256_ps` of torch's AVX2 kernel for one lane.
fn log_avx(x: f32) -> f32 {
    let x = x.max(c(MIN_NORM));
    let bits = x.to_bits();
    let mut e = ((bits >> 23) as i32 - 127) as f32;
    e += 1.0;
    let mut m = c((bits & 0x807F_FFFF) | 0x3F00_0000);
    let below = m < c(SQRTHF);
    let tmp = if below { m } else { 0.0 };
    m += -1.0;
    e -= if below { 1.0 } else { 0.0 };
    m += tmp;
    let z = m * m;
    let mut y = c(LOG_P[0]);
    for p in &LOG_P[1..] {
        y = y.mul_add(m, c(*p));
    }
    y *= m;
    y = y.mul_add(z, e * c(LOG_Q1));
    y = (-z).mul_add(0.5, y);
    m += y;
    e.mul_add(c(LOG_Q2), m)
}

/// `sincos256_ps` of torch's AVX2 kernel for one lane: `(sin θ, cos θ)`.
fn sincos_avx(theta: f32) -> (f32, f32) {
    let mut sign_sin = theta.to_bits() & 0x8000_0000;
    let ax = c(theta.to_bits() & 0x7FFF_FFFF);
    let q = ax * c(FOPI);
    // cvttps2dq: truncation; q < 8 for angles in [0, 2π).
    let mut k = q as i32;
    k = (k + 1) & !1;
    let yf = k as f32;
    sign_sin ^= ((k & 4) as u32) << 29;
    let use_sin_poly = (k & 2) == 0;
    let sign_cos = (((!(k - 2)) & 4) as u32) << 29;
    let mut x = yf.mul_add(c(MDP[0]), ax);
    x = yf.mul_add(c(MDP[1]), x);
    x = yf.mul_add(c(MDP[2]), x);
    let z = x * x;
    let mut cos = c(COS_P[0]).mul_add(z, c(COS_P[1]));
    cos = cos.mul_add(z, c(COS_P[2]));
    cos *= z;
    cos = cos.mul_add(z, -(z * 0.5));
    cos += 1.0;
    let mut sin = c(SIN_P[0]).mul_add(z, c(SIN_P[1]));
    sin = sin.mul_add(z, c(SIN_P[2]));
    sin *= z;
    sin = sin.mul_add(x, x);
    // Bitwise selects: a value or +0.0.
    let s2 = if use_sin_poly { sin } else { 0.0 };
    let s1 = if use_sin_poly { 0.0 } else { cos };
    let sin_out = c((s2 + s1).to_bits() ^ sign_sin);
    let cos_out = c(((sin - s2) + (cos - s1)).to_bits() ^ sign_cos);
    (sin_out, cos_out)
}

/// One lane pair: uniforms `a` (radius) and `b` (angle) → `(r·cos θ, r·sin θ)`.
fn box_muller_lane(a: f32, b: f32) -> (f32, f32) {
    let radius = (-2.0f32 * log_avx(1.0 - a)).sqrt();
    let (sin, cos) = sincos_avx(c(TWO_PI) * b);
    // `· std + mean` with std 1 and mean 0, fused: one rounding, and -0 becomes +0.
    (
        (radius * cos).mul_add(1.0, 0.0),
        (radius * sin).mul_add(1.0, 0.0),
    )
}

/// Normals from 16 uniforms in place: lane `j` pairs with lane `j + 8`.
fn box_muller16(d: &mut [f32]) {
    for j in 0..8 {
        let (cos, sin) = box_muller_lane(d[j], d[j + 8]);
        d[j] = cos;
        d[j + 8] = sin;
    }
}

#[cfg(test)]
mod tests;
