//! Between a sampler and the network: ComfyUI's model wrapper (`BaseModel._apply_model`) and
//! classifier-free guidance (`sampling_function`, `cfg_function`), in f32 tensor-op order
//! (generation.md §6.4–6.6). `sigma_data` is 1 for every model Amalgam runs.
//!
//! - Input scaling `c_in`: `x / √(σ² + 1)`; the network sees `timestep(σ)`.
//! - Denoised from the network's output by prediction type: ε (`x − out·σ`), v, or EDM.
//! - CFG: `uncond + (cond − uncond)·cfg`; at cfg 1 the negative prompt is not evaluated at all.
//! - The initial latent: `noise·√(1 + σ₀²) + latent` when sampling starts at full noise, else
//!   `noise·σ₀ + latent`.

use super::samplers::Denoiser;
use super::schedule::ModelSampling;

/// What the network predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prediction {
    /// The noise (SD1, SD2-base, SDXL).
    Eps,
    /// v (SD2-768, v-prediction fine-tunes).
    V,
    /// EDM's parametrisation (CosXL).
    Edm,
}

/// Which conditioning a network call is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Positive,
    Negative,
}

/// The network: its raw output for scaled input `xc` at `timestep`, for one side's
/// conditioning (held by the implementation).
pub trait Network {
    type Error;
    fn forward(&mut self, xc: &[f32], timestep: f32, side: Side) -> Result<Vec<f32>, Self::Error>;
}

/// `calculate_input`: `x / (σ² + 1)^0.5`.
pub fn scale_input(x: &[f32], sigma: f32) -> Vec<f32> {
    let denom = (sigma * sigma + 1.0).sqrt();
    x.iter().map(|v| v / denom).collect()
}

/// `calculate_denoised` for each prediction type.
pub fn denoised(prediction: Prediction, sigma: f32, output: &[f32], input: &[f32]) -> Vec<f32> {
    let var = sigma * sigma + 1.0;
    let root = var.sqrt();
    let pairs = output.iter().zip(input);
    match prediction {
        Prediction::Eps => pairs.map(|(o, x)| x - o * sigma).collect(),
        // `x·sd²/(σ²+sd²) ∓ out·σ·sd/(σ²+sd²)^0.5` with sd = 1: the `· 1.0` are exact.
        Prediction::V => pairs
            .map(|(o, x)| (x * 1.0) / var - ((o * sigma) * 1.0) / root)
            .collect(),
        Prediction::Edm => pairs
            .map(|(o, x)| (x * 1.0) / var + ((o * sigma) * 1.0) / root)
            .collect(),
    }
}

/// `Sampler.max_denoise`: whether sampling starts at (or above) the model's largest σ.
pub fn starts_at_full_noise(sigma_max: f32, first: f32) -> bool {
    let (a, b) = (f64::from(sigma_max), f64::from(first));
    (a - b).abs() <= 1e-5 * a.abs().max(b.abs()) || b > a
}

/// `noise_scaling`: the latent the sampler starts from.
pub fn initial_latent(noise: &[f32], latent: &[f32], sigma: f32, full_noise: bool) -> Vec<f32> {
    let scale = if full_noise {
        (1.0 + sigma * sigma).sqrt()
    } else {
        sigma
    };
    noise
        .iter()
        .zip(latent)
        .map(|(n, l)| n * scale + l)
        .collect()
}

/// A network under ComfyUI's wrapper and CFG: the [`Denoiser`] the samplers call.
pub struct Guided<'a, N> {
    pub network: N,
    pub sampling: &'a ModelSampling,
    pub prediction: Prediction,
    pub cfg: f64,
}

impl<N: Network> Guided<'_, N> {
    fn predict(&mut self, x: &[f32], sigma: f32, side: Side) -> Result<Vec<f32>, N::Error> {
        let xc = scale_input(x, sigma);
        let timestep = self.sampling.timestep(sigma);
        let out = self.network.forward(&xc, timestep, side)?;
        Ok(denoised(self.prediction, sigma, &out, x))
    }
}

impl<N: Network> Denoiser for Guided<'_, N> {
    type Error = N::Error;

    fn denoise(&mut self, x: &[f32], sigma: f32) -> Result<Vec<f32>, N::Error> {
        let positive = self.predict(x, sigma, Side::Positive)?;
        // `math.isclose(cfg, 1.0)`: relative tolerance 1e-9.
        if (self.cfg - 1.0).abs() <= 1e-9 * self.cfg.abs().max(1.0) {
            return Ok(positive);
        }
        let negative = self.predict(x, sigma, Side::Negative)?;
        // The Python float scale is rounded to f32 for the multiply, as torch does.
        let scale = self.cfg as f32;
        Ok(positive
            .iter()
            .zip(&negative)
            .map(|(c, u)| u + (c - u) * scale)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::sampling::schedule::Scheduler;

    /// `out = 0.3·xc + 0.01·t` on the positive side, `0.2·xc` on the negative one.
    struct Linear {
        calls: Vec<(f32, Side)>,
    }

    impl Network for Linear {
        type Error = std::convert::Infallible;
        fn forward(&mut self, xc: &[f32], t: f32, side: Side) -> Result<Vec<f32>, Self::Error> {
            self.calls.push((t, side));
            Ok(xc
                .iter()
                .map(|v| match side {
                    Side::Positive => 0.3 * v + 0.01 * t,
                    Side::Negative => 0.2 * v,
                })
                .collect())
        }
    }

    #[test]
    fn cfg_mixes_the_two_sides_and_skips_the_negative_at_one() {
        let sampling = ModelSampling::discrete();
        let sigma = sampling.schedule(Scheduler::Normal, 20, 1.0, false)[3];
        let x = [1.5f32, -2.25, 0.0];
        let mut g = Guided {
            network: Linear { calls: Vec::new() },
            sampling: &sampling,
            prediction: Prediction::Eps,
            cfg: 7.5,
        };
        let Ok(got) = g.denoise(&x, sigma);
        let t = sampling.timestep(sigma);
        assert_eq!(g.network.calls, [(t, Side::Positive), (t, Side::Negative)]);
        let root = (sigma * sigma + 1.0).sqrt();
        let want: Vec<f32> = x
            .iter()
            .map(|&v| {
                let xc = v / root;
                let c = v - (0.3 * xc + 0.01 * t) * sigma;
                let u = v - (0.2 * xc) * sigma;
                u + (c - u) * 7.5
            })
            .collect();
        assert_eq!(got, want);
        g.cfg = 1.0;
        g.network.calls.clear();
        let Ok(_) = g.denoise(&x, sigma);
        assert_eq!(
            g.network.calls.len(),
            1,
            "cfg 1 evaluates the positive side only"
        );
    }

    #[test]
    fn v_and_edm_denoise_by_their_formulas() {
        let (sigma, out, x) = (2.0f32, [0.5f32, -1.0], [3.0f32, 4.0]);
        let v = denoised(Prediction::V, sigma, &out, &x);
        let edm = denoised(Prediction::Edm, sigma, &out, &x);
        for i in 0..2 {
            let a = x[i] / 5.0;
            let b = out[i] * 2.0 / 5.0f32.sqrt();
            assert_eq!((v[i], edm[i]), (a - b, a + b));
        }
        assert_eq!(denoised(Prediction::Eps, 2.0, &out, &x), [2.0, 6.0]);
    }

    #[test]
    fn the_initial_latent_is_scaled_for_full_noise() {
        let sampling = ModelSampling::discrete();
        let top = sampling.sigma_max();
        assert!(starts_at_full_noise(top, top));
        assert!(!starts_at_full_noise(top, 1.548_16));
        let full = initial_latent(&[1.0], &[0.5], top, true);
        assert!((full[0] - (14.648_813 + 0.5)).abs() < 1e-4, "{full:?}");
        assert_eq!(initial_latent(&[2.0], &[0.5], 3.0, false), [6.5]);
    }
}
