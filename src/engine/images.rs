//! Running a plan's image steps: each model's weights evaluated once by the kernel (the exact
//! merge expressions, so a merge never has to be saved to be looked at), the networks built on
//! them, the steps run in order, and SaveImage's PNGs written like checkpoints are — to a
//! temporary file renamed into place, never over an existing file, never outside the folder.
//!
//! Progress: a [`Event::Step`] per sampler step, with seconds per step and a small latent
//! preview of image 0. Cancel is checked between steps (and before each step's UNet calls), and
//! a cancelled job writes no image.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{Device, Tensor};
use half::f16;

use crate::format::DType;
use crate::format::png::encode_rgb8;
use crate::generate::GenError;
use crate::generate::conditioning::{Conditioning, TextEncoders};
use crate::generate::image::{
    Images as Pixels, decode, encode, encode_for_inpaint, load_png, preview_rgb8,
};
use crate::generate::ksampler::{Diffusion, Images, Latent, LatentFormat, Settings, ksample};
use crate::generate::nn::WeightMap;
use crate::generate::nn::unet::{Heads, Unet};
use crate::generate::nn::vae::{Decoder, Encoder};
use crate::generate::sampling::guider::Prediction as Predicts;
use crate::generate::sampling::samplers::Sampler;
use crate::generate::sampling::schedule::{ModelSampling, Scheduler};
use crate::model::arch::{Architecture, Prediction};

use super::kernel::{self, Scratch};
use super::naming::{check_inside_output, next_image_name};
use super::plan::{ImageOp, Network, Plan, PlannedWeights, Recipe, SamplingKind};
use super::{EngineError, Event, SavedFile};

/// A small RGB picture of a sampler's current estimate.
#[derive(Clone, Debug, PartialEq)]
pub struct Preview {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

/// One finished sampler step.
#[derive(Clone, Debug, PartialEq)]
pub struct StepProgress {
    pub node: String,
    /// Steps done (1-based) and in all.
    pub step: usize,
    pub total: usize,
    pub seconds_per_step: f64,
    pub preview: Option<Preview>,
}

impl StepProgress {
    /// Seconds until the sampler is done, at the pace so far.
    pub fn eta_seconds(&self) -> f64 {
        self.seconds_per_step * (self.total.saturating_sub(self.step)) as f64
    }

    /// `#3 step 7/20 · 4.1 s/step · ETA 53 s`, as the queue panel and the command line show it.
    pub fn summary(&self) -> String {
        format!(
            "#{} step {}/{} · {:.1} s/step · ETA {:.0} s",
            self.node,
            self.step,
            self.total,
            self.seconds_per_step,
            self.eta_seconds()
        )
    }
}

/// A value flowing between image steps.
#[derive(Clone, Debug)]
enum Value {
    Conditioning(Conditioning),
    Latent(Latent),
    Images(Pixels),
    /// LoadImage's two outputs: IMAGE and MASK (`[b, H, W]`).
    Loaded(Pixels, Tensor),
}

impl Value {
    fn pixels(&self) -> Option<&Pixels> {
        match self {
            Value::Images(p) | Value::Loaded(p, _) => Some(p),
            _ => None,
        }
    }

    fn mask(&self) -> Option<&Tensor> {
        match self {
            Value::Loaded(_, m) => Some(m),
            _ => None,
        }
    }
}

/// A network built on its weights.
enum Built {
    Unet(Unet),
    Text(TextEncoders),
    Vae(Box<VaeHalves>),
}

/// A VAE's weights, with each half built the first time a node needs it (a text-to-image
/// graph never builds the encoder).
struct VaeHalves {
    weights: WeightMap,
    decoder: Option<Decoder>,
    encoder: Option<Encoder>,
}

impl VaeHalves {
    fn decoder(&mut self) -> Result<&Decoder, crate::generate::nn::NnError> {
        if self.decoder.is_none() {
            self.decoder = Some(Decoder::load(&self.weights)?);
        }
        Ok(self.decoder.as_ref().expect("built above"))
    }

    fn encoder(&mut self) -> Result<&Encoder, crate::generate::nn::NnError> {
        if self.encoder.is_none() {
            self.encoder = Some(Encoder::load(&self.weights)?);
        }
        Ok(self.encoder.as_ref().expect("built above"))
    }
}

/// What identifies a built network across jobs: the input files (path, size, modification
/// time, in the plan's order, which the recipes index) and the weights' recipes.
#[derive(PartialEq)]
struct NetworkKey {
    sources: Vec<(PathBuf, u64, Option<std::time::SystemTime>)>,
    weights: PlannedWeights,
}

/// Networks built by the last job, kept for the next: re-queueing after changing only a seed,
/// a prompt or a sampler setting reads and merges nothing again. Networks the next job does
/// not use are dropped when it ends, so memory follows the graph's models.
#[derive(Default)]
pub struct NetworkCache {
    entries: Vec<(NetworkKey, Built)>,
    reused: usize,
}

impl std::fmt::Debug for NetworkCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkCache")
            .field("networks", &self.entries.len())
            .field("reused", &self.reused)
            .finish()
    }
}

impl NetworkCache {
    /// How many networks are kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many networks the last job took from the cache instead of building them.
    pub fn reused_by_last_job(&self) -> usize {
        self.reused
    }
}

fn network_keys(plan: &Plan) -> Vec<NetworkKey> {
    let sources: Vec<_> = plan
        .sources
        .iter()
        .map(|s| {
            let meta = std::fs::metadata(&s.path).ok();
            (
                s.path.clone(),
                meta.as_ref().map_or(0, std::fs::Metadata::len),
                meta.and_then(|m| m.modified().ok()),
            )
        })
        .collect();
    plan.weights
        .iter()
        .map(|w| NetworkKey {
            sources: sources.clone(),
            weights: w.clone(),
        })
        .collect()
}

/// Runs the image steps of `plan`, with the networks `cache` kept from the last job; returns
/// the images written.
pub fn run_images(
    plan: &Plan,
    first_image_only: bool,
    cache: &mut NetworkCache,
    cancel: &AtomicBool,
    emit: &mut dyn FnMut(Event),
) -> Result<Vec<SavedFile>, EngineError> {
    if plan.image_steps.is_empty() {
        // A job without images keeps no networks: a merge should not run beside gigabytes of
        // weights it does not use.
        cache.entries.clear();
        cache.reused = 0;
        return Ok(Vec::new());
    }
    // Big tensors stay on the heap while images are made (see `memory`).
    let _big_blocks = super::memory::BigBlocks::hold();
    let keys = network_keys(plan);
    let mut kept = std::mem::take(&mut cache.entries);
    let mut built: Vec<Option<Built>> = keys
        .iter()
        .map(|k| {
            kept.iter()
                .position(|(key, _)| key == k)
                .map(|i| kept.swap_remove(i).1)
        })
        .collect();
    cache.reused = built.iter().filter(|b| b.is_some()).count();
    drop(kept);
    let result = run_steps(plan, first_image_only, &mut built, cancel, emit);
    cache.entries = keys
        .into_iter()
        .zip(built)
        .filter_map(|(k, b)| b.map(|b| (k, b)))
        .collect();
    result
}

fn run_steps(
    plan: &Plan,
    first_image_only: bool,
    built: &mut [Option<Built>],
    cancel: &AtomicBool,
    emit: &mut dyn FnMut(Event),
) -> Result<Vec<SavedFile>, EngineError> {
    let mut values: Vec<Option<Value>> = Vec::with_capacity(plan.image_steps.len());
    let mut saved = Vec::new();
    let images = if first_image_only {
        Images::First
    } else {
        Images::All
    };
    for step in &plan.image_steps {
        if cancel.load(Ordering::Relaxed) {
            return Err(EngineError::Cancelled);
        }
        emit(Event::NodeStarted {
            node: step.node.clone(),
            class_type: step.class_type.clone(),
        });
        let fail = |message: String| EngineError::Node {
            node: step.node.clone(),
            class_type: step.class_type.clone(),
            message,
        };
        let gen_err = |e: GenError| fail(e.to_string());
        let input = |r: usize| {
            values
                .get(r)
                .and_then(Option::as_ref)
                .ok_or_else(|| fail(format!("input step {r} has no value")))
        };
        let value = match &step.op {
            ImageOp::TextEncode {
                clip,
                text,
                stop_at_clip_layer,
            } => {
                let Built::Text(t) = network(plan, built, *clip, (&step.node, &step.class_type))?
                else {
                    return Err(fail("the CLIP input is not a text encoder".into()));
                };
                Some(Value::Conditioning(
                    t.encode(text, *stop_at_clip_layer).map_err(gen_err)?,
                ))
            }
            ImageOp::EmptyLatent {
                width,
                height,
                batch,
            } => {
                let shape = (*batch, 4, height / 8, width / 8);
                let zeros = Tensor::zeros(shape, candle_core::DType::F32, &Device::Cpu)
                    .map_err(|e| fail(e.to_string()))?;
                Some(Value::Latent(Latent::new(zeros)))
            }
            ImageOp::RepeatLatent { samples, amount } => {
                let Value::Latent(l) = input(*samples)? else {
                    return Err(fail("input \"samples\" is not a LATENT".into()));
                };
                let parts = vec![l.samples.clone(); *amount];
                let samples = Tensor::cat(&parts, 0).map_err(|e| fail(e.to_string()))?;
                let batch_index = l.batch_index.as_ref().map(|bi| {
                    let offset = bi.iter().max().map_or(0, |m| m + 1);
                    (0..*amount)
                        .flat_map(|k| bi.iter().map(move |i| i + k * offset))
                        .collect()
                });
                // RepeatLatentBatch repeats a per-image mask; a single one applies to all.
                let noise_mask = match &l.noise_mask {
                    Some(m) if m.dim(0).map_err(|e| fail(e.to_string()))? > 1 => Some(
                        Tensor::cat(&vec![m.clone(); *amount], 0)
                            .map_err(|e| fail(e.to_string()))?,
                    ),
                    other => other.clone(),
                };
                Some(Value::Latent(Latent {
                    samples,
                    batch_index,
                    noise_mask,
                }))
            }
            ImageOp::Sample {
                model,
                sampling,
                positive,
                negative,
                latent,
                seed,
                steps,
                cfg,
                sampler,
                scheduler,
                denoise,
                add_noise,
                start_at_step,
                end_at_step,
                force_full_denoise,
            } => {
                let (Value::Conditioning(pos), Value::Conditioning(neg), Value::Latent(lat)) = (
                    input(*positive)?.clone(),
                    input(*negative)?.clone(),
                    input(*latent)?.clone(),
                ) else {
                    return Err(fail(
                        "positive/negative must be CONDITIONING and latent_image a LATENT".into(),
                    ));
                };
                let arch = plan.weights[*model].architecture;
                let Built::Unet(unet) =
                    network(plan, built, *model, (&step.node, &step.class_type))?
                else {
                    return Err(fail("the MODEL input is not a UNet".into()));
                };
                let settings = Settings {
                    seed: *seed,
                    steps: *steps,
                    cfg: *cfg,
                    sampler: Sampler::from_name(sampler)
                        .ok_or_else(|| fail(format!("sampler {sampler:?} is not supported")))?,
                    scheduler: Scheduler::from_name(scheduler)
                        .ok_or_else(|| fail(format!("scheduler {scheduler:?} is not supported")))?,
                    denoise: *denoise,
                    add_noise: *add_noise,
                    start_step: *start_at_step,
                    last_step: *end_at_step,
                    force_full_denoise: *force_full_denoise,
                };
                let diffusion = Diffusion {
                    unet: unet.clone(),
                    sampling: model_sampling(sampling),
                    prediction: predicts(sampling),
                    latent_format: latent_format(arch),
                };
                let (_, _, h, w) = lat.samples.dims4().map_err(|e| fail(e.to_string()))?;
                let started = Instant::now();
                let node = step.node.clone();
                let mut nan_warned = false;
                let result = ksample(
                    &diffusion,
                    &pos,
                    &neg,
                    &lat,
                    &settings,
                    images,
                    Some(cancel),
                    &mut |s| {
                        if !nan_warned && s.denoised.iter().any(|v| !v.is_finite()) {
                            nan_warned = true;
                            emit(Event::Warning(super::Warning {
                                node: Some(node.clone()),
                                key: None,
                                message: format!(
                                    "the latent holds NaN or infinite values at step {}",
                                    s.step + 1
                                ),
                            }));
                        }
                        emit(Event::Step(StepProgress {
                            node: node.clone(),
                            step: s.step + 1,
                            total: s.total,
                            seconds_per_step: started.elapsed().as_secs_f64() / (s.step + 1) as f64,
                            preview: Some(Preview {
                                width: w,
                                height: h,
                                rgb: preview_rgb8(s.denoised, h, w, diffusion.latent_format),
                            }),
                        }));
                        !cancel.load(Ordering::Relaxed)
                    },
                )
                .map_err(gen_err)?;
                match result {
                    Some(l) => Some(Value::Latent(l)),
                    None => return Err(EngineError::Cancelled),
                }
            }
            ImageOp::Decode { vae, samples } => {
                let Value::Latent(l) = input(*samples)?.clone() else {
                    return Err(fail("input \"samples\" is not a LATENT".into()));
                };
                let halves = vae_of(plan, built, *vae, (&step.node, &step.class_type))?;
                let d = halves
                    .decoder()
                    .map_err(|e| fail(format!("the VAE cannot be used: {e}")))?;
                Some(Value::Images(decode(d, &l).map_err(gen_err)?))
            }
            ImageOp::Encode { vae, pixels } => {
                let Some(p) = input(*pixels)?.pixels() else {
                    return Err(fail("input \"pixels\" is not an IMAGE".into()));
                };
                let halves = vae_of(plan, built, *vae, (&step.node, &step.class_type))?;
                let e = halves
                    .encoder()
                    .map_err(|e| fail(format!("the VAE cannot be used: {e}")))?;
                Some(Value::Latent(encode(e, p).map_err(gen_err)?))
            }
            ImageOp::LoadImage { path } => {
                let bytes = std::fs::read(path)
                    .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
                let (pixels, mask) =
                    load_png(&bytes).map_err(|e| fail(format!("{}: {e}", path.display())))?;
                Some(Value::Loaded(pixels, mask))
            }
            ImageOp::SetNoiseMask { samples, mask } => {
                let Value::Latent(mut l) = input(*samples)?.clone() else {
                    return Err(fail("input \"samples\" is not a LATENT".into()));
                };
                let Some(m) = input(*mask)?.mask() else {
                    return Err(fail("input \"mask\" is not a MASK".into()));
                };
                let (b, h, w) = m.dims3().map_err(|e| fail(e.to_string()))?;
                l.noise_mask = Some(m.reshape((b, 1, h, w)).map_err(|e| fail(e.to_string()))?);
                Some(Value::Latent(l))
            }
            ImageOp::EncodeInpaint {
                vae,
                pixels,
                mask,
                grow,
            } => {
                let Some(p) = input(*pixels)?.pixels() else {
                    return Err(fail("input \"pixels\" is not an IMAGE".into()));
                };
                let Some(m) = input(*mask)?.mask() else {
                    return Err(fail("input \"mask\" is not a MASK".into()));
                };
                let halves = vae_of(plan, built, *vae, (&step.node, &step.class_type))?;
                let e = halves
                    .encoder()
                    .map_err(|e| fail(format!("the VAE cannot be used: {e}")))?;
                Some(Value::Latent(
                    encode_for_inpaint(e, p, m, *grow).map_err(gen_err)?,
                ))
            }
            ImageOp::Save {
                images,
                prefix,
                temp,
            } => {
                let Some(p) = input(*images)?.pixels() else {
                    return Err(fail("input \"images\" is not an IMAGE".into()));
                };
                saved.extend(save_images(plan, &step.node, p, prefix, *temp, cancel)?);
                None
            }
        };
        values.push(value);
        emit(Event::NodeFinished {
            node: step.node.clone(),
        });
    }
    Ok(saved)
}

/// The VAE of `plan.weights[index]`, evaluated on first use.
fn vae_of<'b>(
    plan: &Plan,
    built: &'b mut [Option<Built>],
    index: usize,
    (node, class_type): (&str, &str),
) -> Result<&'b mut VaeHalves, EngineError> {
    match network(plan, built, index, (node, class_type))? {
        Built::Vae(v) => Ok(v),
        _ => Err(EngineError::Node {
            node: node.to_owned(),
            class_type: class_type.to_owned(),
            message: "the VAE input is not a VAE".into(),
        }),
    }
}

/// The network of `plan.weights[index]`, evaluated and built on first use.
fn network<'b>(
    plan: &Plan,
    built: &'b mut [Option<Built>],
    index: usize,
    (node, class_type): (&str, &str),
) -> Result<&'b mut Built, EngineError> {
    if built[index].is_none() {
        let w = &plan.weights[index];
        let map = materialize(plan, w, node)?;
        let err = |e: String| EngineError::Node {
            node: node.to_owned(),
            class_type: class_type.to_owned(),
            message: e,
        };
        let b = match w.network {
            Network::Unet => {
                let heads = match w.architecture {
                    Architecture::Sd1 => Heads::Count(8),
                    _ => Heads::Width(64),
                };
                Built::Unet(
                    Unet::load(&map, heads)
                        .map_err(|e| err(format!("the model cannot be used: {e}")))?,
                )
            }
            Network::Clip => Built::Text(
                TextEncoders::load(&map)
                    .map_err(|e| err(format!("the CLIP cannot be used: {e}")))?,
            ),
            Network::Vae => Built::Vae(Box::new(VaeHalves {
                weights: map,
                decoder: None,
                encoder: None,
            })),
        };
        built[index] = Some(b);
    }
    built[index].as_mut().ok_or_else(|| EngineError::Node {
        node: node.to_owned(),
        class_type: class_type.to_owned(),
        message: "model not built".into(),
    })
}

/// The weights of `plan.weights[index]`, evaluated: what a network of the plan is built on
/// (for tools and tests that look at one stage).
pub fn load_weights(plan: &Plan, index: usize) -> Result<WeightMap, EngineError> {
    let w = plan.weights.get(index).ok_or_else(|| EngineError::Node {
        node: String::new(),
        class_type: String::new(),
        message: format!("the plan has no weights #{index}"),
    })?;
    materialize(plan, w, "")
}

/// Evaluates every tensor of `w` with the kernel into f32 candle tensors — except a text
/// encoder's matrices, kept as the f16 values ComfyUI computes with (exactly: they are rounded
/// to f16 by the recipe) and widened per use, which halves CLIP-G's 2.8 GB (SDXL at 1024² then
/// fits in 16 GiB).
fn materialize(plan: &Plan, w: &PlannedWeights, node: &str) -> Result<WeightMap, EngineError> {
    let threads = super::execute::thread_count().max(1);
    let chunks: Vec<&[(String, Recipe, Vec<usize>)]> = {
        let per = w.tensors.len().div_ceil(threads).max(1);
        w.tensors.chunks(per).collect()
    };
    let results: Vec<Result<Vec<(String, Tensor)>, EngineError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|chunk| {
                scope.spawn(move || {
                    let mut scratch = Scratch::default();
                    let mut out = Vec::with_capacity(chunk.len());
                    for (key, recipe, shape) in *chunk {
                        let keep_f16 = w.network == Network::Clip && shape.len() == 2;
                        out.push((
                            key.clone(),
                            tensor_of(plan, recipe, shape, keep_f16, &mut scratch).map_err(
                                |message| EngineError::Compute {
                                    node: node.to_owned(),
                                    key: key.clone(),
                                    message,
                                },
                            )?,
                        ));
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(EngineError::Node {
                        node: node.to_owned(),
                        class_type: String::new(),
                        message: "a weight-evaluation thread panicked".into(),
                    })
                })
            })
            .collect()
    });
    let mut map = WeightMap::new();
    for r in results {
        for (k, t) in r? {
            map.insert(k, t);
        }
    }
    Ok(map)
}

/// One weight as a tensor: f32, or with `keep_f16` f16 when its values are f16.
fn tensor_of(
    plan: &Plan,
    recipe: &Recipe,
    shape: &[usize],
    keep_f16: bool,
    scratch: &mut Scratch,
) -> Result<Tensor, String> {
    let numel: usize = shape.iter().product();
    let prepared = kernel::prepare(recipe, numel, &plan.sources).map_err(|e| e.to_string())?;
    let recipe = prepared.as_ref().unwrap_or(recipe);
    let dtype = match recipe {
        Recipe::Copy(leaf) => leaf.dtype,
        Recipe::Compute { out, .. } => *out,
        Recipe::Bytes(_) => return Err("fixed bytes are not a weight".into()),
    };
    let mut bytes = Vec::with_capacity(numel * dtype.size_bytes());
    kernel::produce(recipe, 0, numel, &plan.sources, scratch, &mut bytes)
        .map_err(|e| e.to_string())?;
    if keep_f16 && dtype == DType::F16 {
        let values: Vec<f16> = bytes
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]))
            .collect();
        return Tensor::from_vec(values, shape, &Device::Cpu).map_err(|e| e.to_string());
    }
    let values: Vec<f32> = match dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => return Err(format!("a {other} weight cannot be used by a network")),
    };
    Tensor::from_vec(values, shape, &Device::Cpu).map_err(|e| e.to_string())
}

fn model_sampling(kind: &SamplingKind) -> ModelSampling {
    match kind {
        SamplingKind::Discrete { zsnr, .. } => ModelSampling::discrete_with(*zsnr),
        SamplingKind::ContinuousEdm {
            sigma_min,
            sigma_max,
            ..
        } => ModelSampling::continuous_edm(*sigma_min, *sigma_max),
    }
}

fn predicts(kind: &SamplingKind) -> Predicts {
    let p = match kind {
        SamplingKind::Discrete { prediction, .. }
        | SamplingKind::ContinuousEdm { prediction, .. } => *prediction,
    };
    match p {
        Prediction::V | Prediction::EdmV => Predicts::V,
        Prediction::Edm => Predicts::Edm,
        _ => Predicts::Eps,
    }
}

fn latent_format(arch: Architecture) -> LatentFormat {
    match arch {
        Architecture::Sdxl | Architecture::SdxlRefiner => LatentFormat::Sdxl,
        _ => LatentFormat::Sd15,
    }
}

/// SaveImage / PreviewImage: one PNG per image, with the prompt and workflow (SaveImage only).
fn save_images(
    plan: &Plan,
    node: &str,
    images: &Pixels,
    prefix: &str,
    temp: bool,
    cancel: &AtomicBool,
) -> Result<Vec<SavedFile>, EngineError> {
    let naming = |error| EngineError::Naming {
        node: node.to_owned(),
        error,
    };
    let io = |path: &Path, error: std::io::Error| EngineError::Node {
        node: node.to_owned(),
        class_type: String::new(),
        message: format!("cannot write {}: {error}", path.display()),
    };
    let (dir, prefix) = if temp {
        (
            plan.temp_dir.clone(),
            format!("{prefix}_temp_{}", random_letters()),
        )
    } else {
        (plan.output_dir.clone(), prefix.to_owned())
    };
    let name = next_image_name(&prefix, &dir, images.width, images.height).map_err(naming)?;
    check_inside_output(&name.folder, &dir).map_err(naming)?;
    std::fs::create_dir_all(&name.folder).map_err(|e| io(&name.folder, e))?;
    check_inside_output(&name.folder, &dir).map_err(naming)?;
    let texts = if temp {
        Vec::new()
    } else {
        plan.image_metadata.clone()
    };
    let mut saved = Vec::new();
    for i in 0..images.count {
        if cancel.load(Ordering::Relaxed) {
            return Err(EngineError::Cancelled);
        }
        let rgb = images.to_rgb8(i);
        let png = encode_rgb8(
            images.width as u32,
            images.height as u32,
            &rgb,
            &texts,
            temp,
        )
        .map_err(|e| EngineError::Node {
            node: node.to_owned(),
            class_type: String::new(),
            message: format!("cannot encode the PNG: {e}"),
        })?;
        let path: PathBuf = name.folder.join(name.image_file_name(i));
        let mut file = tempfile::Builder::new()
            .prefix(".amalgam-")
            .suffix(".png.partial")
            .tempfile_in(&name.folder)
            .map_err(|e| io(&name.folder, e))?;
        std::io::Write::write_all(&mut file, &png).map_err(|e| io(&path, e))?;
        file.as_file().sync_all().map_err(|e| io(&path, e))?;
        file.persist_noclobber(&path)
            .map_err(|e| io(&path, e.error))?;
        saved.push(SavedFile {
            node: node.to_owned(),
            path,
            bytes: png.len() as u64,
            cached: false,
        });
    }
    Ok(saved)
}

/// Five letters for a preview's name, from ComfyUI's alphabet (sic: "…stupvxyz").
fn random_letters() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstupvxyz";
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id());
    (0..5)
        .map(|_| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ALPHABET[((seed >> 33) % ALPHABET.len() as u64) as usize] as char
        })
        .collect()
}
