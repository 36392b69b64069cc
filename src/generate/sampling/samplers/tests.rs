//! Samplers on a toy denoiser. References are written per element from k-diffusion's formulas
//! in scalar f32 (the real network is checked against ComfyUI's dumps elsewhere).

use super::*;
use crate::generate::sampling::rng::prepare_noise;
use crate::generate::sampling::schedule::{ModelSampling, Scheduler};

/// `denoised = scale · x`, counting its calls and remembering the levels it was asked at.
struct Toy {
    scale: f32,
    calls: Vec<f32>,
}

impl Denoiser for Toy {
    type Error = std::convert::Infallible;
    fn denoise(&mut self, x: &[f32], sigma: f32) -> Result<Vec<f32>, Self::Error> {
        self.calls.push(sigma);
        Ok(x.iter().map(|v| self.scale * v).collect())
    }
}

fn toy(scale: f32) -> Toy {
    Toy {
        scale,
        calls: Vec::new(),
    }
}

fn run(sampler: Sampler, toy: &mut Toy, x: &[f32], sigmas: &[f32]) -> Vec<f32> {
    let Ok(out) = sample(
        sampler,
        toy,
        x.to_vec(),
        sigmas,
        &StepNoise::whole(5, x.len()),
        &mut |_| true,
    );
    out.expect("nothing cancels")
}

fn schedule(steps: usize) -> Vec<f32> {
    ModelSampling::discrete().schedule(Scheduler::Karras, steps, 1.0, false)
}

fn latent() -> Vec<f32> {
    prepare_noise(1, 64, 1, None)
        .iter()
        .map(|n| n * 14.6)
        .collect()
}

#[test]
fn euler_follows_the_ode_step_by_step() {
    let (x0, sigmas) = (latent(), schedule(6));
    let got = run(Sampler::Euler, &mut toy(0.9), &x0, &sigmas);
    let want: Vec<f32> = x0
        .iter()
        .map(|&v| {
            let mut x = v;
            for w in sigmas.windows(2) {
                let d = (x - 0.9 * x) / w[0];
                x += d * (w[1] - w[0]);
            }
            x
        })
        .collect();
    assert_eq!(got, want);
    // ddim is euler in ComfyUI.
    assert_eq!(run(Sampler::Ddim, &mut toy(0.9), &x0, &sigmas), want);
}

#[test]
fn heun_and_dpm_2_ask_twice_per_step_but_the_last() {
    let sigmas = schedule(4);
    let mut t = toy(0.5);
    run(Sampler::Heun, &mut t, &latent(), &sigmas);
    assert_eq!(t.calls.len(), 2 * 4 - 1);
    assert_eq!(
        t.calls[1], sigmas[1],
        "heun's second call is at the next level"
    );
    let mut t = toy(0.5);
    run(Sampler::Dpm2, &mut t, &latent(), &sigmas);
    assert_eq!(t.calls.len(), 2 * 4 - 1);
    let mid = (sigmas[1].ln() - (sigmas[1].ln() - sigmas[0].ln()) * 0.5).exp();
    assert_eq!(
        t.calls[1], mid,
        "dpm_2's second call is at the geometric mid-point"
    );
    assert!(sigmas[1] < mid && mid < sigmas[0]);
}

#[test]
fn heun_averages_the_two_slopes() {
    let sigmas = [10.0f32, 4.0, 0.0];
    let got = run(Sampler::Heun, &mut toy(0.8), &[3.0], &sigmas);
    let (mut x, dt) = (3.0f32, 4.0f32 - 10.0);
    let d = (x - 0.8 * x) / 10.0;
    let x2 = x + d * dt;
    let d2 = (x2 - 0.8 * x2) / 4.0;
    x += ((d + d2) / 2.0) * dt;
    // The last step is Euler.
    let d = (x - 0.8 * x) / 4.0;
    x += d * (0.0 - 4.0);
    assert_eq!(got, [x]);
}

#[test]
fn dpmpp_2m_ends_on_the_denoised_estimate() {
    let (x0, sigmas) = (latent(), schedule(5));
    let got = run(Sampler::DpmPp2m, &mut toy(0.25), &x0, &sigmas);
    // One step before the end, x is what the last call saw; the last step returns 0.25·x.
    let mut t = toy(0.25);
    let before_last = run(Sampler::DpmPp2m, &mut t, &x0, &sigmas[..sigmas.len() - 1]);
    let want: Vec<f32> = before_last.iter().map(|v| 0.25 * v).collect();
    assert_eq!(got, want);
}

#[test]
fn lms_coefficients_integrate_the_lagrange_basis() {
    let t = [14.0f64, 9.0, 5.0, 2.0, 1.0];
    // Order 1: the step length.
    assert_eq!(lms_coefficient(1, &t, 0, 0), t[1] - t[0]);
    // Order 2 through (t1, l1) and (t0, l0) on [t1, t2]: closed forms.
    let h = t[2] - t[1];
    let c0 = h * (h / 2.0 + t[1] - t[0]) / (t[1] - t[0]);
    let c1 = -(h * h / 2.0) / (t[1] - t[0]);
    assert!((lms_coefficient(2, &t, 1, 0) - c0).abs() < 1e-12);
    assert!((lms_coefficient(2, &t, 1, 1) - c1).abs() < 1e-12);
    // The basis sums to 1, so the coefficients of any order sum to the step length.
    let sum: f64 = (0..4).map(|j| lms_coefficient(4, &t, 3, j)).sum();
    assert!((sum - (t[4] - t[3])).abs() < 1e-12);
}

#[test]
fn euler_ancestral_steps_with_the_seeds_noise() {
    let sigmas = [8.0f32, 3.0, 0.0];
    let x0 = vec![1.5f32; 32];
    let got = run(Sampler::EulerAncestral, &mut toy(0.5), &x0, &sigmas);
    // ComfyUI's default_noise_sampler: the seed's generator, one randn of the latent per step;
    // the first is the same as the initial noise of that seed.
    let first = prepare_noise(5, 32, 1, None);
    let (down, up) = ancestral_step(8.0, 3.0);
    assert!((down * down + up * up - 9.0).abs() < 1e-4 && up <= 3.0);
    let x1: Vec<f32> = x0
        .iter()
        .zip(&first)
        .map(|(&x, n)| {
            let d = (x - 0.5 * x) / 8.0;
            (x + d * (down - 8.0)) + (n * 1.0) * up
        })
        .collect();
    // To σ = 0: σ_down is 0, the step returns the estimate and draws no noise.
    assert_eq!(ancestral_step(3.0, 0.0).0, 0.0);
    let want: Vec<f32> = x1.iter().map(|v| 0.5 * v).collect();
    assert_eq!(got, want);
    assert!(!Sampler::EulerAncestral.is_deterministic());
}

#[test]
fn a_cancelled_run_stops_after_the_step_and_names_are_known() {
    let sigmas = schedule(8);
    let mut steps = Vec::new();
    let mut t = toy(0.9);
    let out = sample(
        Sampler::Euler,
        &mut t,
        latent(),
        &sigmas,
        &StepNoise::whole(0, 64),
        &mut |r| {
            steps.push((r.step, r.total, r.denoised.len()));
            r.step < 2
        },
    );
    assert!(matches!(out, Ok(None)));
    assert_eq!(steps, [(0, 8, 64), (1, 8, 64), (2, 8, 64)]);
    for name in SAMPLERS {
        assert!(Sampler::from_name(name).is_some(), "{name}");
    }
    assert_eq!(Sampler::from_name("uni_pc"), None);
    assert!(Sampler::Dpm2.discards_penultimate_sigma());
}
