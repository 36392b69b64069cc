//! Noise levels: ComfyUI's model sampling (`ModelSamplingDiscrete`, `ModelSamplingContinuousEDM`)
//! and its schedulers, in the precisions ComfyUI computes them in (generation.md §6.1–6.3):
//! the discrete table in f64 then stored as f32, schedules in f32 with values passed through
//! Python floats, `timestep(σ)` as the nearest table index (discrete) or `0.25·ln σ` (EDM).
//!
//! `linspace` follows torch's CPU formula (from the start for the first half, from the end for
//! the second). torch's vectorised loop and compiler contraction can move the last bit of a
//! linspace value; the golden schedules below agree to the printed digits, and the bit-level
//! comparison belongs to the ComfyUI oracle runs (see the session note).

use std::fmt;

/// The schedulers Amalgam runs, as the registry lists them on KSampler (anything else is a
/// validation error naming these); the order is [`Scheduler`]'s.
pub use crate::nodes::SCHEDULER_NAMES as SCHEDULERS;

/// A scheduler by its ComfyUI name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheduler {
    Normal,
    Karras,
    Exponential,
    Simple,
    SgmUniform,
    DdimUniform,
}

impl Scheduler {
    pub fn from_name(name: &str) -> Option<Scheduler> {
        Some(match name {
            "normal" => Scheduler::Normal,
            "karras" => Scheduler::Karras,
            "exponential" => Scheduler::Exponential,
            "simple" => Scheduler::Simple,
            "sgm_uniform" => Scheduler::SgmUniform,
            "ddim_uniform" => Scheduler::DdimUniform,
            _ => return None,
        })
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = match self {
            Scheduler::Normal => 0,
            Scheduler::Karras => 1,
            Scheduler::Exponential => 2,
            Scheduler::Simple => 3,
            Scheduler::SgmUniform => 4,
            Scheduler::DdimUniform => 5,
        };
        f.write_str(SCHEDULERS[i])
    }
}

/// How a model maps noise levels to the timesteps its network is conditioned on.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelSampling {
    /// SD1/SD2/SDXL: 1000 discrete levels of the "linear" beta schedule.
    Discrete {
        /// σ per timestep, ascending (f32, as ComfyUI stores them).
        sigmas: Vec<f32>,
        /// `f32(ln σ)` of the f64 σ.
        log_sigmas: Vec<f32>,
    },
    /// CosXL and other EDM models: `σ = exp(t / 0.25)`, levels spread log-uniformly.
    ContinuousEdm { sigmas: Vec<f32> },
}

/// The 1000-step "linear" schedule: `β = linspace(√0.00085, √0.012)²`, `ᾱ = Π(1 − β)`,
/// `σ = √((1 − ᾱ)/ᾱ)`, all in f64.
fn discrete_sigmas_f64() -> Vec<f64> {
    let betas: Vec<f64> = linspace_f64(0.00085f64.sqrt(), 0.012f64.sqrt(), 1000)
        .into_iter()
        .map(|b| b * b)
        .collect();
    let mut cumulative = 1.0f64;
    betas
        .iter()
        .map(|beta| {
            cumulative *= 1.0 - beta;
            ((1.0 - cumulative) / cumulative).sqrt()
        })
        .collect()
}

/// `rescale_zero_terminal_snr_sigmas` (ModelSamplingDiscrete's `zsnr`), in f64: the schedule
/// shifted and scaled so its last level has (almost) zero signal.
fn zero_terminal_snr(sigmas: &[f64]) -> Vec<f64> {
    let roots: Vec<f64> = sigmas
        .iter()
        .map(|s| (1.0 / (s * s + 1.0)).sqrt())
        .collect();
    let (first, last) = (roots[0], roots[roots.len() - 1]);
    let scale = first / (first - last);
    let mut out: Vec<f64> = roots
        .iter()
        .map(|r| {
            let shifted = (r - last) * scale;
            let alpha_bar = shifted * shifted;
            ((1.0 - alpha_bar) / alpha_bar).sqrt()
        })
        .collect();
    if let Some(end) = out.last_mut() {
        let alpha_bar = 4.897_345_189_085_343_5e-8_f64;
        *end = ((1.0 - alpha_bar) / alpha_bar).sqrt();
    }
    out
}

impl ModelSampling {
    /// ModelSamplingDiscrete with ComfyUI's default (eps/v) schedule, without zero-SNR.
    pub fn discrete() -> ModelSampling {
        Self::discrete_with(false)
    }

    /// ModelSamplingDiscrete, with the zero-terminal-SNR rescale when `zsnr` is set.
    pub fn discrete_with(zsnr: bool) -> ModelSampling {
        let mut sigmas = discrete_sigmas_f64();
        if zsnr {
            sigmas = zero_terminal_snr(&sigmas);
        }
        ModelSampling::Discrete {
            log_sigmas: sigmas.iter().map(|s| s.ln() as f32).collect(),
            sigmas: sigmas.iter().map(|&s| s as f32).collect(),
        }
    }

    /// ModelSamplingContinuousEDM: `exp(linspace(ln σmin, ln σmax, 1000))` in f32.
    pub fn continuous_edm(sigma_min: f64, sigma_max: f64) -> ModelSampling {
        let lo = sigma_min.ln() as f32;
        let hi = sigma_max.ln() as f32;
        ModelSampling::ContinuousEdm {
            sigmas: linspace_f32(lo, hi, 1000)
                .into_iter()
                .map(f32::exp)
                .collect(),
        }
    }

    /// Every noise level of the table, ascending.
    pub fn sigmas(&self) -> &[f32] {
        match self {
            ModelSampling::Discrete { sigmas, .. } | ModelSampling::ContinuousEdm { sigmas } => {
                sigmas
            }
        }
    }

    pub fn sigma_min(&self) -> f32 {
        self.sigmas().first().copied().unwrap_or(0.0)
    }

    pub fn sigma_max(&self) -> f32 {
        self.sigmas().last().copied().unwrap_or(0.0)
    }

    /// The timestep the network sees for noise level `sigma`: the nearest table index by
    /// log distance (the first on a tie) for discrete models, `0.25·ln σ` for EDM.
    pub fn timestep(&self, sigma: f32) -> f32 {
        match self {
            ModelSampling::Discrete { log_sigmas, .. } => {
                let log_sigma = sigma.ln();
                let mut best = (0usize, f32::INFINITY);
                for (i, l) in log_sigmas.iter().enumerate() {
                    let d = (log_sigma - l).abs();
                    if d < best.1 {
                        best = (i, d);
                    }
                }
                best.0 as f32
            }
            ModelSampling::ContinuousEdm { .. } => 0.25 * sigma.ln(),
        }
    }

    /// The noise level of timestep `t`: for discrete models the f32 interpolation of the log
    /// table between the neighbouring indices.
    pub fn sigma(&self, t: f32) -> f32 {
        match self {
            ModelSampling::Discrete { log_sigmas, .. } => {
                let last = (log_sigmas.len() - 1) as f32;
                let t = t.clamp(0.0, last);
                let (lo, hi) = (t.floor() as usize, t.ceil() as usize);
                let w = t - t.floor();
                let log_sigma = (1.0 - w) * log_sigmas[lo] + w * log_sigmas[hi];
                log_sigma.exp()
            }
            ModelSampling::ContinuousEdm { .. } => (t / 0.25).exp(),
        }
    }

    /// The sampler's noise levels for `steps` steps (ending in 0), as `KSampler` computes
    /// them: `denoise < 1` keeps the last `steps + 1` levels of a longer schedule, `denoise`
    /// of 0 or less an empty one; samplers that discard the penultimate level (`dpm_2`) get one
    /// step more and lose it.
    pub fn schedule(
        &self,
        scheduler: Scheduler,
        steps: usize,
        denoise: f64,
        discard_penultimate: bool,
    ) -> Vec<f32> {
        if denoise <= 0.0 || steps == 0 {
            return Vec::new();
        }
        let (mut total, keep) = if denoise > 0.9999 {
            (steps, None)
        } else {
            ((steps as f64 / denoise) as usize, Some(steps + 1))
        };
        if discard_penultimate {
            total += 1;
        }
        let mut sigmas = self.scheduler_sigmas(scheduler, total);
        if discard_penultimate && sigmas.len() >= 2 {
            let penultimate = sigmas.len() - 2;
            sigmas.remove(penultimate);
        }
        if let Some(keep) = keep
            && sigmas.len() > keep
        {
            sigmas.drain(..sigmas.len() - keep);
        }
        sigmas
    }

    /// `calculate_sigmas(model_sampling, scheduler, steps)`.
    pub fn scheduler_sigmas(&self, scheduler: Scheduler, steps: usize) -> Vec<f32> {
        // Values pass through Python floats between torch ops; f32 → f64 → f32 is exact.
        let (lo, hi) = (f64::from(self.sigma_min()), f64::from(self.sigma_max()));
        match scheduler {
            Scheduler::Normal => self.normal(steps, false),
            Scheduler::SgmUniform => self.normal(steps, true),
            Scheduler::Karras => {
                let rho = 7.0f64;
                let (min_inv, max_inv) = (lo.powf(1.0 / rho), hi.powf(1.0 / rho));
                let span = (min_inv - max_inv) as f32;
                let mut out: Vec<f32> = linspace_f32(0.0, 1.0, steps)
                    .into_iter()
                    .map(|ramp| (max_inv as f32 + ramp * span).powf(rho as f32))
                    .collect();
                out.push(0.0);
                out
            }
            Scheduler::Exponential => {
                let mut out: Vec<f32> = linspace_f32(hi.ln() as f32, lo.ln() as f32, steps)
                    .into_iter()
                    .map(f32::exp)
                    .collect();
                out.push(0.0);
                out
            }
            Scheduler::Simple => {
                let table = self.sigmas();
                let stride = table.len() as f64 / steps as f64;
                let mut out: Vec<f32> = (0..steps)
                    .map(|x| table[table.len() - 1 - (x as f64 * stride) as usize])
                    .collect();
                out.push(0.0);
                out
            }
            Scheduler::DdimUniform => {
                let table = self.sigmas();
                let mut steps = steps;
                let mut out = Vec::new();
                if table.get(1).is_some_and(|s| s.abs() <= 1e-5) {
                    steps += 1;
                } else {
                    out.push(0.0);
                }
                let stride = (table.len() / steps).max(1);
                out.extend(table.iter().skip(1).step_by(stride));
                out.reverse();
                out
            }
        }
    }

    /// `normal_scheduler`: timesteps evenly spaced from σ_max's to σ_min's, mapped back to σ.
    fn normal(&self, steps: usize, sgm: bool) -> Vec<f32> {
        let start = self.timestep(self.sigma_max());
        let end = self.timestep(self.sigma_min());
        let (timesteps, append_zero) = if sgm {
            let mut t = linspace_f32(start, end, steps + 1);
            t.pop();
            (t, true)
        } else if self.sigma(end).abs() <= 1e-5 {
            (linspace_f32(start, end, steps + 1), false)
        } else {
            (linspace_f32(start, end, steps), true)
        };
        let mut out: Vec<f32> = timesteps.into_iter().map(|t| self.sigma(t)).collect();
        if append_zero {
            out.push(0.0);
        }
        out
    }
}

/// The float types `linspace` is computed in.
trait Real: Copy + std::ops::Add<Output = Self> + std::ops::Sub<Output = Self> {
    fn mul(self, other: Self) -> Self;
    fn div(self, other: Self) -> Self;
    fn of(n: usize) -> Self;
}

macro_rules! real {
    ($t:ty) => {
        impl Real for $t {
            fn mul(self, other: $t) -> $t {
                self * other
            }
            fn div(self, other: $t) -> $t {
                self / other
            }
            fn of(n: usize) -> $t {
                n as $t
            }
        }
    };
}

real!(f32);
real!(f64);

/// torch's CPU `linspace`: `start + step·i` for the first half, `end − step·(steps − 1 − i)`
/// for the second, each product rounded before the sum, in the type's own precision.
fn linspace<T: Real>(start: T, end: T, steps: usize) -> Vec<T> {
    match steps {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let step = (end - start).div(T::of(steps - 1));
            let half = steps / 2;
            (0..steps)
                .map(|i| {
                    if i < half {
                        start + step.mul(T::of(i))
                    } else {
                        end - step.mul(T::of(steps - i - 1))
                    }
                })
                .collect()
        }
    }
}

/// [`linspace`] in f32 (torch's default dtype).
pub fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    linspace(start, end, steps)
}

/// [`linspace`] in f64.
pub fn linspace_f64(start: f64, end: f64, steps: usize) -> Vec<f64> {
    linspace(start, end, steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Within the golden values' last printed digit (generation.md §6.3 prints 6 decimals).
    fn close(got: &[f32], want: &[f64]) {
        assert_eq!(got.len(), want.len(), "{got:?}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (f64::from(*g) - w).abs() <= 1e-6 * w.abs().max(1.0),
                "value {i}: {g} vs {w}; all: {got:?}"
            );
        }
    }

    #[test]
    fn the_discrete_table_spans_comfyuis_sigma_range() {
        let m = ModelSampling::discrete();
        assert_eq!(m.sigmas().len(), 1000);
        close(&[m.sigma_min(), m.sigma_max()], &[0.0291671585, 14.6146412]);
        assert_eq!(m.timestep(m.sigma_max()), 999.0);
        assert_eq!(m.timestep(m.sigma_min()), 0.0);
    }

    #[test]
    fn normal_and_karras_give_comfyuis_twenty_step_schedules() {
        let m = ModelSampling::discrete();
        close(
            &m.schedule(Scheduler::Normal, 20, 1.0, false),
            &[
                14.614641, 10.746800, 8.081519, 6.204935, 4.855652, 3.865378, 3.123761, 2.557166,
                2.115658, 1.764822, 1.480581, 1.245813, 1.048142, 0.878428, 0.729719, 0.596434,
                0.473585, 0.355545, 0.232164, 0.029167, 0.0,
            ],
        );
        let timesteps: Vec<f32> = m
            .schedule(Scheduler::Normal, 20, 1.0, false)
            .iter()
            .take(20)
            .map(|s| m.timestep(*s))
            .collect();
        let want = [
            999, 946, 894, 841, 789, 736, 684, 631, 578, 526, 473, 421, 368, 315, 263, 210, 158,
            105, 53, 0,
        ];
        assert_eq!(timesteps, want.map(|t| t as f32));
        close(
            &m.schedule(Scheduler::Karras, 20, 1.0, false),
            &[
                14.614643, 11.725368, 9.340202, 7.383618, 5.789413, 4.499835, 3.464747, 2.640841,
                1.990916, 1.483211, 1.090786, 0.790946, 0.564722, 0.396390, 0.273038, 0.184168,
                0.121341, 0.077860, 0.048481, 0.029167, 0.0,
            ],
        );
    }

    #[test]
    fn cosxl_edm_normal_schedule() {
        let m = ModelSampling::continuous_edm(0.002, 120.0);
        close(
            &m.schedule(Scheduler::Normal, 20, 1.0, false),
            &[
                120.000008, 67.251152, 37.689289, 21.122065, 11.837357, 6.633963, 3.717846,
                2.083578, 1.167692, 0.654405, 0.366745, 0.205534, 0.115186, 0.064553, 0.036177,
                0.020275, 0.011363, 0.006368, 0.003569, 0.002, 0.0,
            ],
        );
    }

    #[test]
    fn denoise_keeps_the_tail_of_a_longer_schedule() {
        let m = ModelSampling::discrete();
        let half = m.schedule(Scheduler::Normal, 20, 0.5, false);
        assert_eq!(half.len(), 21);
        close(&half[..3], &[1.548160, 1.422527, 1.307809]);
        let forty = m.schedule(Scheduler::Normal, 40, 1.0, false);
        assert_eq!(half[..], forty[20..]);
        assert!(m.schedule(Scheduler::Normal, 20, 0.0, false).is_empty());
    }

    #[test]
    fn the_other_schedulers_end_in_zero_and_descend() {
        let m = ModelSampling::discrete();
        for name in SCHEDULERS {
            let scheduler = Scheduler::from_name(name).expect("known");
            assert_eq!(scheduler.to_string(), name, "names round-trip");
            let s = m.schedule(scheduler, 10, 1.0, false);
            assert_eq!(s.last(), Some(&0.0), "{scheduler}");
            assert!(s.windows(2).all(|w| w[0] > w[1]), "{scheduler}: {s:?}");
        }
        // simple: every (1000/steps)-th level from the top.
        let simple = m.schedule(Scheduler::Simple, 4, 1.0, false);
        let t = m.sigmas();
        assert_eq!(simple, [t[999], t[749], t[499], t[249], 0.0]);
        // dpm_2 computes one level more and drops the second-to-last.
        let five = m.scheduler_sigmas(Scheduler::Normal, 5);
        let dpm2 = m.schedule(Scheduler::Normal, 4, 1.0, true);
        assert_eq!(dpm2, [&five[..4], &five[5..]].concat());
        assert_eq!(Scheduler::from_name("beta"), None);
    }

    #[test]
    fn zero_terminal_snr_raises_the_top_level_and_keeps_the_bottom() {
        let plain = ModelSampling::discrete();
        let zsnr = ModelSampling::discrete_with(true);
        // The first level is kept (up to rounding); the last is ComfyUI's fixed near-zero SNR.
        close(&[zsnr.sigma_min()], &[f64::from(plain.sigma_min())]);
        let want = ((1.0 - 4.897_345_189_085_343_5e-8) / 4.897_345_189_085_343_5e-8_f64).sqrt();
        assert_eq!(zsnr.sigma_max(), want as f32);
        assert!(zsnr.sigma_max() > 4000.0 && plain.sigma_max() < 15.0);
    }

    #[test]
    fn linspace_is_exact_at_both_ends() {
        let v = linspace_f32(999.0, 0.0, 20);
        assert_eq!((v[0], v[19]), (999.0, 0.0));
        close(&v[..3], &[999.0, 946.42102, 893.84210]);
        assert_eq!(linspace_f32(1.0, 2.0, 1), [1.0]);
    }
}
