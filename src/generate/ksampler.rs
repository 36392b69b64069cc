//! KSampler (`comfy/sample.py`, `comfy/samplers.py`; generation.md §5–§6): the noise for the
//! latent's batch, the model's schedule, `process_latent_in` (× the latent scale factor), the
//! initial noised latent, the sampler with classifier-free guidance around the UNet, and
//! `process_latent_out` (÷ the factor).
//!
//! Each image of a batch is independent of the others in ComfyUI's arithmetic, so
//! [`Images::First`] samples image 0 alone and gets ComfyUI's image 0: its noise is cut from the
//! noise of the whole batch, and so is each step's ancestral noise.

use candle_core::{Device, Tensor};

use super::GenError;
use super::conditioning::Conditioning;
use super::nn::ops::timestep_embedding;
use super::nn::unet::{Unet, UnetInput};
use super::sampling::guider::{
    Guided, Network, Prediction, Side, initial_latent, starts_at_full_noise,
};
use super::sampling::rng::prepare_noise;
use super::sampling::samplers::{Denoiser, Sampler, StepNoise, StepReport, sample};
use super::sampling::schedule::{ModelSampling, Scheduler};

/// The latent space a model works in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LatentFormat {
    /// SD1.x and SD2.x (`SD15`): scale 0.18215.
    Sd15,
    /// SDXL: scale 0.13025.
    Sdxl,
}

impl LatentFormat {
    pub fn scale_factor(self) -> f32 {
        match self {
            LatentFormat::Sd15 => 0.18215,
            LatentFormat::Sdxl => 0.13025,
        }
    }

    /// `latent_rgb_factors` (per latent channel: R, G, B) and the bias.
    pub fn rgb_factors(self) -> ([[f32; 3]; 4], [f32; 3]) {
        match self {
            LatentFormat::Sd15 => (
                [
                    [0.3512, 0.2297, 0.3227],
                    [0.3250, 0.4974, 0.2350],
                    [-0.2829, 0.1762, 0.2721],
                    [-0.2120, -0.2616, -0.7177],
                ],
                [0.0; 3],
            ),
            LatentFormat::Sdxl => (
                [
                    [0.3651, 0.4232, 0.4341],
                    [-0.2533, -0.0042, 0.1068],
                    [0.1076, 0.1111, -0.0362],
                    [-0.3165, -0.2492, -0.2188],
                ],
                [0.1084, -0.0175, -0.0011],
            ),
        }
    }
}

/// A MODEL ready to sample: the network, its noise levels and what it predicts.
#[derive(Clone, Debug)]
pub struct Diffusion {
    pub unet: Unet,
    pub sampling: ModelSampling,
    pub prediction: Prediction,
    pub latent_format: LatentFormat,
}

/// A LATENT: `samples` `[B, 4, h, w]` in VAE space, the `batch_index` a batch node set, and
/// the `noise_mask` an inpainting node set (`[b, 1, H, W]`, 1 where the sampler may change the
/// image; any size, resized to the latent's when sampling).
#[derive(Clone, Debug)]
pub struct Latent {
    pub samples: Tensor,
    pub batch_index: Option<Vec<usize>>,
    pub noise_mask: Option<Tensor>,
}

impl Latent {
    pub fn new(samples: Tensor) -> Latent {
        Latent {
            samples,
            batch_index: None,
            noise_mask: None,
        }
    }
}

/// `reshape_mask`: a mask `[b, 1, H, W]` bilinearly resized to `h × w` (torch's
/// `interpolate(mode="bilinear", align_corners=False)`, f32), repeated to `channels` and tiled
/// or cut to `batch` — flattened `[batch, channels, h, w]`.
pub fn reshape_mask(
    mask: &Tensor,
    batch: usize,
    channels: usize,
    h: usize,
    w: usize,
) -> Result<Vec<f32>, GenError> {
    let (b, _, mh, mw) = mask.dims4()?;
    let values: Vec<f32> = mask.flatten_all()?.to_vec1()?;
    let plane = mh * mw;
    let mut out = Vec::with_capacity(batch * channels * h * w);
    for i in 0..batch {
        let src = &values[(i % b.max(1)) * plane..(i % b.max(1) + 1) * plane];
        let resized = bilinear(src, mh, mw, h, w);
        for _ in 0..channels {
            out.extend_from_slice(&resized);
        }
    }
    Ok(out)
}

/// torch's `upsample_bilinear2d` (align_corners=False) of one plane, in its f32 operation order.
pub fn bilinear(src: &[f32], ih: usize, iw: usize, oh: usize, ow: usize) -> Vec<f32> {
    let axis = |i_len: usize, o_len: usize, o: usize| -> (usize, usize, f32, f32) {
        let scale = i_len as f32 / o_len as f32;
        let real = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
        let i0 = (real as usize).min(i_len - 1);
        let step = usize::from(i0 < i_len - 1);
        let l1 = real - i0 as f32;
        (i0, step, 1.0 - l1, l1)
    };
    let mut out = Vec::with_capacity(oh * ow);
    for y in 0..oh {
        let (y0, yp, h0, h1) = axis(ih, oh, y);
        for x in 0..ow {
            let (x0, xp, w0, w1) = axis(iw, ow, x);
            let at = |r: usize, c: usize| src[r * iw + c];
            out.push(
                h0 * (w0 * at(y0, x0) + w1 * at(y0, x0 + xp))
                    + h1 * (w0 * at(y0 + yp, x0) + w1 * at(y0 + yp, x0 + xp)),
            );
        }
    }
    out
}

/// The latent values of a "blank" inpainting image (`blank_inpaint_image_like`), per channel.
const BLANK_INPAINT: [f32; 4] = [0.8223, -0.6876, 0.6364, 0.1380];

/// KSampler's widgets, and KSamplerAdvanced's (`common_ksampler`'s arguments).
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub seed: u64,
    pub steps: usize,
    pub cfg: f64,
    pub sampler: Sampler,
    pub scheduler: Scheduler,
    pub denoise: f64,
    /// `false` for KSamplerAdvanced's `add_noise: disable`: the initial noise is zeros.
    pub add_noise: bool,
    /// Start at this step of the schedule (KSamplerAdvanced).
    pub start_step: Option<usize>,
    /// Stop after this step (KSamplerAdvanced).
    pub last_step: Option<usize>,
    /// When stopping early, end at σ = 0 (`return_with_leftover_noise: disable`).
    pub force_full_denoise: bool,
}

impl Settings {
    /// KSampler's settings: noise added, every step of the schedule.
    pub fn simple(
        seed: u64,
        steps: usize,
        cfg: f64,
        sampler: Sampler,
        scheduler: Scheduler,
        denoise: f64,
    ) -> Settings {
        Settings {
            seed,
            steps,
            cfg,
            sampler,
            scheduler,
            denoise,
            add_noise: true,
            start_step: None,
            last_step: None,
            force_full_denoise: false,
        }
    }
}

/// Which images of the batch to sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Images {
    All,
    /// Image 0 only — the same values as in the whole batch.
    First,
}

/// What the sampler reports after each step.
pub struct Step<'a> {
    pub step: usize,
    pub total: usize,
    /// The denoised estimate of the first image being sampled, `[4·h·w]`, in scaled space.
    pub denoised: &'a [f32],
}

/// Runs KSampler. Returns `None` when `on_step` asked to stop, or when `stop` was set (it is
/// checked between the UNet's blocks too, so a cancel need not wait for the step to end).
#[allow(clippy::too_many_arguments)]
pub fn ksample(
    model: &Diffusion,
    positive: &Conditioning,
    negative: &Conditioning,
    latent: &Latent,
    settings: &Settings,
    images: Images,
    stop: Option<&std::sync::atomic::AtomicBool>,
    on_step: &mut dyn FnMut(Step) -> bool,
) -> Result<Option<Latent>, GenError> {
    let (b, c, h, w) = latent.samples.dims4()?;
    let expected = model.unet.in_channels();
    if expected != c && expected != 2 * c + 1 {
        return Err(GenError::Input(format!(
            "the latent has {c} channels but the model takes {expected}"
        )));
    }
    let mut sigmas = model.sampling.schedule(
        settings.scheduler,
        settings.steps,
        settings.denoise,
        settings.sampler.discards_penultimate_sigma(),
    );
    // `KSampler.sample`: cut the schedule after `last_step` (ending at 0 when forced), then
    // start at `start_step`; starting at or past the end returns the latent as it is.
    let mut unchanged = sigmas.is_empty();
    if let Some(last) = settings.last_step
        && last + 1 < sigmas.len()
    {
        sigmas.truncate(last + 1);
        if settings.force_full_denoise
            && let Some(end) = sigmas.last_mut()
        {
            *end = 0.0;
        }
    }
    if let Some(start) = settings.start_step {
        if start + 1 < sigmas.len() {
            sigmas.drain(..start);
        } else {
            unchanged = true;
        }
    }
    let per_image = c * h * w;
    let count = match images {
        Images::All => b,
        Images::First => b.min(1),
    };
    let latent_values: Vec<f32> = latent.samples.flatten_all()?.to_vec1()?;
    let keep = 0..count * per_image;
    if unchanged {
        let samples =
            Tensor::from_vec(latent_values[keep].to_vec(), (count, c, h, w), &Device::Cpu)?;
        return Ok(Some(Latent::new(samples)));
    }
    let noise = if settings.add_noise {
        prepare_noise(settings.seed, per_image, b, latent.batch_index.as_deref())
    } else {
        vec![0.0; b * per_image]
    };
    let scale = model.latent_format.scale_factor();
    let scaled: Vec<f32> = latent_values[keep.clone()]
        .iter()
        .map(|v| v * scale)
        .collect();
    let full = starts_at_full_noise(model.sampling.sigma_max(), sigmas[0]);
    let x = initial_latent(&noise[keep.clone()], &scaled, sigmas[0], full);
    // Inpainting: the mask resized to the latent (per image being sampled), and for a 9-channel
    // UNet the extra input channels — the rounded mask and the masked image's latent.
    let denoise_mask = match &latent.noise_mask {
        Some(m) => Some(reshape_mask(m, b, c, h, w)?[keep.clone()].to_vec()),
        None => None,
    };
    let extra = model.unet.in_channels().saturating_sub(c);
    let concat = if extra == 0 {
        None
    } else if extra != 1 + c {
        return Err(GenError::Input(format!(
            "the model takes {} input channels, which Amalgam cannot fill from a {c}-channel latent",
            model.unet.in_channels()
        )));
    } else {
        let plane = h * w;
        let mut values = Vec::with_capacity(count * extra * plane);
        for i in 0..count {
            match &denoise_mask {
                Some(m) => values.extend(
                    m[i * c * plane..i * c * plane + plane]
                        .iter()
                        .map(|v| v.round_ties_even()),
                ),
                None => values.extend(std::iter::repeat_n(1.0f32, plane)),
            }
            match &latent.noise_mask {
                Some(_) => values.extend_from_slice(&scaled[i * per_image..(i + 1) * per_image]),
                None => {
                    for k in BLANK_INPAINT {
                        values.extend(std::iter::repeat_n(k, plane));
                    }
                }
            }
        }
        Some(Tensor::from_vec(
            values,
            (count, extra, h, w),
            &Device::Cpu,
        )?)
    };
    let mut network = UnetNetwork::new(model, positive, negative, (count, c, h, w))?;
    network.concat = concat;
    network.stop = stop;
    let guided = Guided {
        network,
        sampling: &model.sampling,
        prediction: model.prediction,
        cfg: settings.cfg,
    };
    let mut guided = Inpaint {
        inner: guided,
        mask: denoise_mask,
        noise: noise[keep.clone()].to_vec(),
        latent: scaled.clone(),
    };
    let step_noise = StepNoise {
        seed: settings.seed,
        drawn: noise.len(),
        keep,
    };
    let out = sample(
        settings.sampler,
        &mut guided,
        x,
        &sigmas,
        &step_noise,
        &mut |r: StepReport| {
            on_step(Step {
                step: r.step,
                total: r.total,
                denoised: &r.denoised[..per_image.min(r.denoised.len())],
            })
        },
    );
    let out = match out {
        Err(GenError::Network(super::nn::NnError::Cancelled)) => return Ok(None),
        other => other?,
    };
    let Some(out) = out else { return Ok(None) };
    let unscaled: Vec<f32> = out.iter().map(|v| v / scale).collect();
    let samples = Tensor::from_vec(unscaled, (count, c, h, w), &Device::Cpu)?;
    Ok(Some(Latent::new(samples)))
}

/// `KSamplerX0Inpaint`: with a mask, the kept part of the latent is re-noised to the current
/// level before each call (`x·m + (noise·σ + latent)·(1 − m)`) and restored in the estimate
/// (`den·m + latent·(1 − m)`), in f32 tensor-op order; without one, the guided network as is.
struct Inpaint<D> {
    inner: D,
    mask: Option<Vec<f32>>,
    noise: Vec<f32>,
    latent: Vec<f32>,
}

impl<D: Denoiser> Denoiser for Inpaint<D> {
    type Error = D::Error;

    fn denoise(&mut self, x: &[f32], sigma: f32) -> Result<Vec<f32>, D::Error> {
        let Some(m) = &self.mask else {
            return self.inner.denoise(x, sigma);
        };
        let kept: Vec<f32> = m.iter().map(|m| 1.0 - m).collect();
        let x: Vec<f32> = (0..x.len())
            .map(|i| x[i] * m[i] + (self.noise[i] * sigma + self.latent[i]) * kept[i])
            .collect();
        let out = self.inner.denoise(&x, sigma)?;
        Ok((0..out.len())
            .map(|i| out[i] * m[i] + self.latent[i] * kept[i])
            .collect())
    }
}

/// The UNet as the guider's [`Network`]: one side's conditioning repeated to the batch, and
/// SDXL's `y` built from the pooled output and the image size.
struct UnetNetwork<'a> {
    unet: &'a Unet,
    shape: (usize, usize, usize, usize),
    positive: (Tensor, Option<Tensor>),
    negative: (Tensor, Option<Tensor>),
    /// Channels appended to each scaled input (an inpainting UNet's mask and masked image).
    concat: Option<Tensor>,
    stop: Option<&'a std::sync::atomic::AtomicBool>,
}

impl<'a> UnetNetwork<'a> {
    fn new(
        model: &'a Diffusion,
        positive: &Conditioning,
        negative: &Conditioning,
        shape: (usize, usize, usize, usize),
    ) -> Result<UnetNetwork<'a>, GenError> {
        let side = |c: &Conditioning, name: &str| -> Result<(Tensor, Option<Tensor>), GenError> {
            let ctx = repeat(&c.cond, shape.0)?;
            let y = match model.unet.adm_channels() {
                None => None,
                Some(adm) => {
                    let pooled = c.pooled.as_ref().ok_or_else(|| {
                        GenError::Input(format!(
                            "the {name} conditioning has no pooled output, which this SDXL model needs"
                        ))
                    })?;
                    let y = sdxl_y(pooled, shape.3 * 8, shape.2 * 8)?;
                    if y.dim(1)? != adm {
                        return Err(GenError::Input(format!(
                            "the {name} conditioning gives {} values of `y`, the model takes {adm}",
                            y.dim(1)?
                        )));
                    }
                    Some(repeat(&y, shape.0)?)
                }
            };
            Ok((ctx, y))
        };
        Ok(UnetNetwork {
            unet: &model.unet,
            shape,
            positive: side(positive, "positive")?,
            negative: side(negative, "negative")?,
            concat: None,
            stop: None,
        })
    }
}

impl Network for UnetNetwork<'_> {
    type Error = GenError;

    fn forward(&mut self, xc: &[f32], timestep: f32, side: Side) -> Result<Vec<f32>, GenError> {
        let (ctx, y) = match side {
            Side::Positive => &self.positive,
            Side::Negative => &self.negative,
        };
        // One image at a time: the kernels' blocking then never depends on the batch size, so
        // image 0 alone is bit for bit image 0 of the batch (and activations stay per image).
        let (b, c, h, w) = self.shape;
        let per_image = c * h * w;
        let mut out = Vec::with_capacity(xc.len());
        for i in 0..b {
            let mut x = Tensor::from_vec(
                xc[i * per_image..(i + 1) * per_image].to_vec(),
                (1, c, h, w),
                &Device::Cpu,
            )?;
            if let Some(extra) = &self.concat {
                x = Tensor::cat(&[&x, &extra.narrow(0, i, 1)?], 1)?;
            }
            let y = match y {
                Some(y) => Some(y.narrow(0, i, 1)?),
                None => None,
            };
            let o = self.unet.forward(&UnetInput {
                x: &x,
                timesteps: &[timestep],
                context: &ctx.narrow(0, i, 1)?,
                y: y.as_ref(),
                stop: self.stop,
            })?;
            out.extend(o.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(out)
    }
}

fn repeat(t: &Tensor, n: usize) -> Result<Tensor, GenError> {
    if t.dim(0)? == n {
        return Ok(t.clone());
    }
    let first = t.narrow(0, 0, 1)?;
    Ok(Tensor::cat(&vec![first; n], 0)?)
}

/// SDXL's `y`: the pooled text, then the 256-wide embeddings of height, width, crop top, crop
/// left, target height and target width (`SDXL.encode_adm`).
pub fn sdxl_y(pooled: &Tensor, width: usize, height: usize) -> Result<Tensor, GenError> {
    let mut values: Vec<f32> = pooled.flatten_all()?.to_vec1()?;
    for v in [height, width, 0, 0, height, width] {
        values.extend(timestep_embedding(&[v as f32], 256));
    }
    let n = values.len();
    Ok(Tensor::from_vec(values, (1, n), &Device::Cpu)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `y` is the pooled text, then E(height), E(width), E(0), E(0), E(height), E(width).
    #[test]
    fn sdxl_y_order() {
        let pooled = Tensor::from_vec(vec![0.5f32; 4], (1, 4), &Device::Cpu).expect("pooled");
        let y: Vec<f32> = sdxl_y(&pooled, 96, 64)
            .and_then(|t| Ok(t.flatten_all()?.to_vec1()?))
            .expect("y");
        assert_eq!(y.len(), 4 + 6 * 256);
        let part = |i: usize| &y[4 + i * 256..4 + (i + 1) * 256];
        let e = |v: f32| timestep_embedding(&[v], 256);
        assert_eq!(part(0), e(64.0), "height first");
        assert_eq!(part(1), e(96.0), "then width");
        assert_eq!(part(2), e(0.0));
        assert_eq!(part(3), e(0.0));
        assert_eq!(part(4), e(64.0));
        assert_eq!(part(5), e(96.0));
    }
}
