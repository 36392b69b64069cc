//! ComfyUI's k-diffusion samplers (`comfy/k_diffusion/sampling.py`) on flat f32 latents, in
//! k-diffusion's operation order: every tensor operation is one f32 rounding per element, and
//! the per-step scalars (`dt`, `σ_up`, `h`, …) are f32 as ComfyUI's 0-dim tensors are.
//!
//! The network is behind [`Denoiser`]: given the latent and a noise level it returns the
//! denoised estimate (the model wrapper with CFG does that, in `generate`'s guider). A sampler
//! asks it once per step (twice for `heun` and `dpm_2`) and reports each step.
//!
//! - `euler` (and `ddim`, which ComfyUI runs as `euler`): `x += d·dt`.
//! - `euler_ancestral` (η = 1): to `σ_down`, plus fresh noise times `σ_up` from a generator
//!   seeded like the initial noise (ComfyUI's `default_noise_sampler`, one `randn` per step).
//! - `heun`, `dpm_2`: second-order, Euler on the last step.
//! - `lms` (order 4): Adams–Bashforth coefficients integrated over the σ steps in f64.
//! - `dpmpp_2m`: DPM-Solver++(2M) in `t = −ln σ`.

use super::rng::CpuGenerator;

/// The samplers Amalgam runs, as the registry lists them on KSampler (anything else is a
/// validation error naming these).
pub use crate::nodes::SAMPLER_NAMES as SAMPLERS;

/// A sampler by its ComfyUI name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sampler {
    Euler,
    EulerAncestral,
    Heun,
    Dpm2,
    DpmPp2m,
    Ddim,
    Lms,
}

impl Sampler {
    pub fn from_name(name: &str) -> Option<Sampler> {
        Some(match name {
            "euler" => Sampler::Euler,
            "euler_ancestral" => Sampler::EulerAncestral,
            "heun" => Sampler::Heun,
            "dpm_2" => Sampler::Dpm2,
            "dpmpp_2m" => Sampler::DpmPp2m,
            "ddim" => Sampler::Ddim,
            "lms" => Sampler::Lms,
            _ => return None,
        })
    }

    /// Whether ComfyUI computes one level more and drops the second-to-last for it.
    pub fn discards_penultimate_sigma(self) -> bool {
        self == Sampler::Dpm2
    }

    /// Whether the same inputs always give the same image (no noise drawn during sampling).
    pub fn is_deterministic(self) -> bool {
        self != Sampler::EulerAncestral
    }
}

/// The network plus guidance: the denoised estimate of latent `x` at noise level `sigma`.
pub trait Denoiser {
    type Error;
    fn denoise(&mut self, x: &[f32], sigma: f32) -> Result<Vec<f32>, Self::Error>;
}

/// What a sampler reports after each step (for the live preview and progress).
pub struct StepReport<'a> {
    pub step: usize,
    pub total: usize,
    pub denoised: &'a [f32],
}

/// The ancestral sampler's per-step noise: a generator seeded with `seed` draws `drawn` values
/// per step (the whole batch's latent, as ComfyUI's `randn(x.size())`), of which the latent being
/// sampled takes `keep` — all of them, or one image's when only part of the batch is sampled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepNoise {
    pub seed: u64,
    pub drawn: usize,
    pub keep: std::ops::Range<usize>,
}

impl StepNoise {
    /// Noise for a latent of `len` values sampled whole.
    pub fn whole(seed: u64, len: usize) -> StepNoise {
        StepNoise {
            seed,
            drawn: len,
            keep: 0..len,
        }
    }
}

/// Runs `sampler` from latent `x` (already noised for `sigmas[0]`) down the schedule.
/// `step_noise` is the ancestral sampler's per-step noise. `on_step` may stop the run by
/// returning `false` (cancel); then `Ok(None)` is returned.
pub fn sample<D: Denoiser>(
    sampler: Sampler,
    denoiser: &mut D,
    x: Vec<f32>,
    sigmas: &[f32],
    step_noise: &StepNoise,
    on_step: &mut dyn FnMut(StepReport) -> bool,
) -> Result<Option<Vec<f32>>, D::Error> {
    let mut x = x;
    let total = sigmas.len().saturating_sub(1);
    let mut noise =
        (sampler == Sampler::EulerAncestral).then(|| CpuGenerator::manual_seed(step_noise.seed));
    // dpmpp_2m's previous estimate; lms's last derivatives, newest last.
    let mut old_denoised: Option<Vec<f32>> = None;
    let mut derivatives: Vec<Vec<f32>> = Vec::new();
    // lms integrates over the schedule in f64 (numpy's copy of it in ComfyUI).
    let wide: Vec<f64> = sigmas.iter().map(|&s| f64::from(s)).collect();
    for i in 0..total {
        let (sigma, next) = (sigmas[i], sigmas[i + 1]);
        let denoised = denoiser.denoise(&x, sigma)?;
        let keep_going = on_step(StepReport {
            step: i,
            total,
            denoised: &denoised,
        });
        x = match sampler {
            Sampler::Euler | Sampler::Ddim => {
                let d = to_d(&x, sigma, &denoised);
                axpy(&x, &d, next - sigma)
            }
            Sampler::EulerAncestral => {
                let (down, up) = ancestral_step(sigma, next);
                if down == 0.0 {
                    denoised.clone()
                } else {
                    let d = to_d(&x, sigma, &denoised);
                    let stepped = axpy(&x, &d, down - sigma);
                    let fresh = noise.as_mut().map_or_else(Vec::new, |g| {
                        let mut all = g.randn(step_noise.drawn);
                        all.truncate(step_noise.keep.end);
                        all.drain(..step_noise.keep.start);
                        all
                    });
                    // `… + noise · s_noise · σ_up`: s_noise is 1.
                    stepped
                        .iter()
                        .zip(&fresh)
                        .map(|(s, n)| s + (n * 1.0) * up)
                        .collect()
                }
            }
            Sampler::Heun => {
                let d = to_d(&x, sigma, &denoised);
                let dt = next - sigma;
                if next == 0.0 {
                    axpy(&x, &d, dt)
                } else {
                    let x2 = axpy(&x, &d, dt);
                    let denoised2 = denoiser.denoise(&x2, next)?;
                    let d2 = to_d(&x2, next, &denoised2);
                    let d_prime: Vec<f32> = d.iter().zip(&d2).map(|(a, b)| (a + b) / 2.0).collect();
                    axpy(&x, &d_prime, dt)
                }
            }
            Sampler::Dpm2 => {
                let d = to_d(&x, sigma, &denoised);
                if next == 0.0 {
                    axpy(&x, &d, next - sigma)
                } else {
                    // log σ lerped half-way (torch's lerp at weight 0.5: end − (end − start)·0.5).
                    let (ls, ln) = (sigma.ln(), next.ln());
                    let mid = (ln - (ln - ls) * 0.5).exp();
                    let x2 = axpy(&x, &d, mid - sigma);
                    let denoised2 = denoiser.denoise(&x2, mid)?;
                    let d2 = to_d(&x2, mid, &denoised2);
                    axpy(&x, &d2, next - sigma)
                }
            }
            Sampler::Lms => {
                derivatives.push(to_d(&x, sigma, &denoised));
                if derivatives.len() > 4 {
                    derivatives.remove(0);
                }
                if next == 0.0 {
                    denoised.clone()
                } else {
                    let order = (i + 1).min(4);
                    // Python's `sum` starts from the integer 0: `0 + c·d` turns -0 into +0.
                    let mut sum = vec![0.0f32; x.len()];
                    for (j, d) in derivatives.iter().rev().enumerate() {
                        let coeff = lms_coefficient(order, &wide, i, j) as f32;
                        for (s, v) in sum.iter_mut().zip(d) {
                            *s += coeff * v;
                        }
                    }
                    x.iter().zip(&sum).map(|(a, b)| a + b).collect()
                }
            }
            Sampler::DpmPp2m => {
                let t = -sigma.ln();
                let t_next = -next.ln();
                let h = t_next - t;
                let ratio = (-t_next).exp() / (-t).exp();
                let expm1 = (-h).exp_m1();
                let estimate = match (&old_denoised, next == 0.0) {
                    (Some(old), false) => {
                        let h_last = t - -sigmas[i - 1].ln();
                        let r = h_last / h;
                        let k = 1.0 / (2.0 * r);
                        denoised
                            .iter()
                            .zip(old)
                            .map(|(den, old)| (1.0 + k) * den - k * old)
                            .collect()
                    }
                    _ => denoised.clone(),
                };
                x.iter()
                    .zip(&estimate)
                    .map(|(x, e)| ratio * x - expm1 * e)
                    .collect()
            }
        };
        old_denoised = Some(denoised);
        if !keep_going {
            return Ok(None);
        }
    }
    Ok(Some(x))
}

/// `(x − denoised) / σ`.
fn to_d(x: &[f32], sigma: f32, denoised: &[f32]) -> Vec<f32> {
    x.iter()
        .zip(denoised)
        .map(|(x, d)| (x - d) / sigma)
        .collect()
}

/// `x + d·dt`, the product rounded before the sum (two torch kernels).
fn axpy(x: &[f32], d: &[f32], dt: f32) -> Vec<f32> {
    x.iter().zip(d).map(|(x, d)| x + d * dt).collect()
}

/// `get_ancestral_step` at η = 1: `(σ_down, σ_up)`, in f32 (`x ** 2` is `x·x` in torch).
pub fn ancestral_step(from: f32, to: f32) -> (f32, f32) {
    let root = (to * to * (from * from - to * to) / (from * from)).sqrt();
    // Python's `min(to, root)`: `to` unless `root` is smaller.
    let up = if root < to { root } else { to };
    let down = (to * to - up * up).sqrt();
    (down, up)
}

/// `linear_multistep_coeff`: ∫ over [σ_i, σ_{i+1}] of the Lagrange basis polynomial `j` through
/// σ_i, σ_{i−1}, …, in f64. ComfyUI integrates with `scipy.integrate.quad`; the polynomial has
/// degree ≤ 3, so a 4-point Gauss–Legendre rule is exact too, and the two agree to f64 rounding —
/// the coefficient is then rounded to f32 for the multiply, which hides that.
fn lms_coefficient(order: usize, t: &[f64], i: usize, j: usize) -> f64 {
    let basis = |tau: f64| {
        (0..order)
            .filter(|&k| k != j)
            .map(|k| (tau - t[i - k]) / (t[i - j] - t[i - k]))
            .product::<f64>()
    };
    const NODES: [(f64, f64); 4] = [
        (-0.861_136_311_594_052_6, 0.347_854_845_137_453_9),
        (-0.339_981_043_584_856_3, 0.652_145_154_862_546_1),
        (0.339_981_043_584_856_3, 0.652_145_154_862_546_1),
        (0.861_136_311_594_052_6, 0.347_854_845_137_453_9),
    ];
    let (a, b) = (t[i], t[i + 1]);
    let (half, mid) = ((b - a) / 2.0, (a + b) / 2.0);
    half * NODES
        .iter()
        .map(|(x, w)| w * basis(mid + half * x))
        .sum::<f64>()
}

#[cfg(test)]
mod tests;
