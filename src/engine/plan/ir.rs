//! The plan's intermediate representation: what the kernel evaluates. Each output tensor has a
//! [`Recipe`]; a computed one is an [`Expr`] — a leaf of an input file and the [`Step`]s that
//! patch it in order. This is the kernel's contract and holds no planning logic.

use std::path::PathBuf;
use std::sync::Arc;

use crate::format::DType;
use crate::format::safetensors::TensorSpec;
use crate::model::arch::{Architecture, Prediction};

use super::super::Warning;
use super::super::source::Source;

/// A tensor of an input file: where its bytes are and how they are stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Leaf {
    /// Index into [`Plan::sources`].
    pub source: usize,
    pub offset: u64,
    pub dtype: DType,
    pub numel: usize,
}

/// One patch applied to a running f32 weight: `w *= mm` (when `mm ≠ 1`), then `w += s * sub`.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// `strength_model`, applied when it is not 1.
    pub mm: Option<f32>,
    /// `strength_patch` and what is added: another model's value, or a LoRA delta.
    pub add: Option<(f32, Term)>,
    /// A DoRA LoRA: `w + s * sub` (`s` is then the LoRA's own `alpha / rank`) is rescaled per
    /// channel and blended in at the LoRA's strength, as ComfyUI's `weight_decompose`.
    pub dora: Option<Dora>,
    /// The elements the step applies to, when it patches part of the weight; the others are
    /// left untouched (not even `+ 0`, which would turn `-0.0` into `0.0`).
    pub window: Option<Window>,
}

/// A contiguous range of a flattened weight that a step patches (a block of rows), the term
/// being indexed from its start; with `swap_halves`, the term's two halves are exchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: usize,
    pub len: usize,
    pub swap_halves: bool,
}

impl Window {
    /// The parts of elements `first .. first + n` inside the window: one, or two when the
    /// swapped halves meet inside the range.
    pub fn pieces(&self, first: usize, n: usize) -> [Option<Piece>; 2] {
        let (lo, hi) = (
            first.max(self.start),
            (first + n).min(self.start + self.len),
        );
        let half = self.len / 2;
        let split = if self.swap_halves {
            self.start + half
        } else {
            hi
        };
        let piece = |l: usize, h: usize| {
            (l < h).then(|| {
                let local = l - self.start;
                let term = match (self.swap_halves, local < half) {
                    (false, _) => local,
                    (true, true) => local + half,
                    (true, false) => local - half,
                };
                Piece {
                    offset: l - first,
                    term,
                    local,
                    len: h - l,
                }
            })
        };
        [piece(lo, hi.min(split)), piece(lo.max(split), hi)]
    }
}

/// A run of elements a step applies to: `len` elements from `offset` (relative to the range
/// being evaluated), which are the term's elements from `term` and the patched part's from
/// `local`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub offset: usize,
    pub term: usize,
    pub local: usize,
    pub len: usize,
}

impl Step {
    /// The runs of elements `first .. first + n` this step applies to.
    pub fn pieces(&self, first: usize, n: usize) -> [Option<Piece>; 2] {
        match &self.window {
            Some(w) => w.pieces(first, n),
            None => [
                Some(Piece {
                    offset: 0,
                    term: first,
                    local: first,
                    len: n,
                }),
                None,
            ],
        }
    }
}

/// The weight decomposition of a DoRA LoRA (ComfyUI's `weight_decompose`), for a weight of `out`
/// rows of `inner = in_channels · khw` elements. With `wc = w + alpha · delta`:
/// `wc' = wc · f32(dora_scale[c]) / (‖·‖[c] + ε)` per channel `c`, then `w' = wc'` at strength 1
/// or `w' = w + strength · (wc' − w)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Dora {
    /// `dora_scale`: one value per channel, or one for all.
    pub scale: Leaf,
    /// Which channels, and so whose norm: see [`DoraAxis`].
    pub axis: DoraAxis,
    /// The LoRA's strength, or `None` when it is exactly 1 (ComfyUI then takes `wc'` as is).
    pub strength: Option<f32>,
    pub inner: usize,
    pub in_channels: usize,
    /// Per channel, `f32(dora_scale[c]) / (norm[c] + ε)`: whole-tensor values, computed by
    /// [`super::kernel::prepare`] before any chunk of the tensor is evaluated.
    pub factors: Option<Arc<[f32]>>,
}

/// The axis a DoRA's `dora_scale` runs along, which ComfyUI decides by `dora_scale.shape[0]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DoraAxis {
    /// Per output row, normalised by the row norms of the weight *before* the LoRA.
    Output,
    /// Per input channel, normalised by the norms of `wc` over rows (and kernel positions).
    Input,
}

impl Dora {
    /// How many channels the axis has, for a weight of `out` rows.
    pub fn channels(&self, out: usize) -> usize {
        match self.axis {
            DoraAxis::Output => out,
            DoraAxis::Input => self.in_channels,
        }
    }

    /// The channel of element `e` of the flattened weight.
    pub fn channel(&self, e: usize) -> usize {
        match self.axis {
            DoraAxis::Output => e / self.inner,
            DoraAxis::Input => (e % self.inner) / (self.inner / self.in_channels),
        }
    }
}

/// What a step adds.
#[derive(Clone, Debug, PartialEq)]
pub enum Term {
    /// Another model's (lazily evaluated) weight.
    Weights(Expr),
    /// A LoRA's `up @ down`, flattened to the weight's shape.
    Lora(LoraTerm),
    /// A LoKr's `kron(w1, w2)`.
    Kron(KronTerm),
}

/// A factor matrix of a LoKr: stored whole, or as the product of two stored factors, or (the
/// second factor of a conv LoKr) as a Tucker product `Σ_i a[i, c] · Σ_j t[i, j, x] · b[j, d]`
/// with `a: [rank, c]`, `b: [rank, d]`, `t: [rank, rank, kh, kw]`.
#[derive(Clone, Debug, PartialEq)]
pub enum Factor {
    Full(Leaf),
    Product {
        a: Leaf,
        b: Leaf,
        rank: usize,
    },
    Tucker {
        a: Leaf,
        b: Leaf,
        t: Leaf,
        rank: usize,
        khw: usize,
    },
}

/// `kron(w1, w2)` for `w1: [a, b]` and `w2: [c, d]` or `[c, d, h, w]`; the weight is
/// `[a·c, b·d(, h, w)]`.
#[derive(Clone, Debug, PartialEq)]
pub struct KronTerm {
    pub w1: Factor,
    pub w2: Factor,
    /// `[a, b]` and `[c, d, h·w]`.
    pub w1_shape: [usize; 2],
    pub w2_shape: [usize; 3],
}

/// The factors of one LoRA delta: `up` is `[out, rank]`, `down` is `[rank, inner]` (any
/// trailing dimensions flattened), and `out · inner` equals the weight's element count. A LoHa
/// has a second pair, and its delta is the element-wise product of the two matrix products.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraTerm {
    pub up: Leaf,
    pub down: Leaf,
    pub out: usize,
    pub rank: usize,
    pub inner: usize,
    /// LoHa's `hada_w2_a`, `hada_w2_b` and their rank.
    pub hadamard: Option<(Leaf, Leaf, usize)>,
    /// LoCon's Tucker core `lora_mid` `[rank, rank, kh, kw]` (or a Tucker LoHa's `hada_t1`), with
    /// the down factor's input channels and `kh·kw`: the down factor becomes `[rank, in, kh, kw]`
    /// first.
    pub mid: Option<(Leaf, usize, usize)>,
    /// A Tucker LoHa's second core `hada_t2`, applied to the second pair's down factor alike.
    pub mid2: Option<Leaf>,
    /// The up factors are stored `[rank, out]` (a Tucker LoHa's `hada_w1_a`, `hada_w2_a`).
    pub up_transposed: bool,
}

/// A lazily evaluated weight: a base tensor and the steps applied to it, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub leaf: Leaf,
    pub steps: Vec<Step>,
}

impl Expr {
    /// Depth of nested expressions (scratch buffers needed to evaluate).
    pub fn depth(&self) -> usize {
        1 + self
            .steps
            .iter()
            .filter_map(|s| {
                s.add.as_ref().map(|(_, t)| match t {
                    Term::Weights(e) => e.depth(),
                    Term::Lora(_) | Term::Kron(_) => 1,
                })
            })
            .max()
            .unwrap_or(0)
    }
}

/// ComfyUI's stochastic rounding of one fp8 tensor: the seed (the CRC-32 of the weight's key in
/// the model patcher), and once prepared, the generator at the start of every chunk so chunks
/// can be rounded on any thread in any order.
#[derive(Clone, Debug, PartialEq)]
pub struct Stochastic {
    pub seed: u32,
    pub chunk_starts: ChunkStarts,
}

impl Stochastic {
    pub fn new(key: &str) -> Stochastic {
        Stochastic {
            seed: crate::engine::kernel::stochastic::string_to_seed(key),
            chunk_starts: ChunkStarts::default(),
        }
    }
}

/// Generators positioned at each chunk's first element (empty until prepared).
#[derive(Clone, Default)]
pub struct ChunkStarts(pub Arc<Vec<crate::engine::kernel::stochastic::StochasticRounder>>);

impl std::fmt::Debug for ChunkStarts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChunkStarts({})", self.0.len())
    }
}

/// Positions derived from the seed: equal recipes are equal whether prepared or not.
impl PartialEq for ChunkStarts {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// How one output tensor's bytes are produced.
#[derive(Clone, Debug, PartialEq)]
pub enum Recipe {
    /// The input bytes unchanged.
    Copy(Leaf),
    /// Evaluate in f32, then round once to `out`. `round_inputs` rounds every input value to
    /// that dtype first (ComfyUI's load dtype). An fp8 `out` is rounded stochastically, as
    /// ComfyUI writes a patched fp8 weight back, with `stochastic`'s seed.
    Compute {
        expr: Expr,
        out: DType,
        round_inputs: Option<DType>,
        stochastic: Option<Stochastic>,
    },
    /// Fixed bytes (markers, re-created `position_ids`).
    Bytes(Arc<[u8]>),
}

/// One tensor of an output file.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedTensor {
    pub spec: TensorSpec,
    pub recipe: Recipe,
}

/// What kind of save made a file (decides metadata).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveKind {
    Checkpoint,
    Model,
    Clip,
    Vae,
}

/// One file to write.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedFile {
    /// Prompt id of the save node.
    pub node: String,
    pub class_type: String,
    pub kind: SaveKind,
    /// `filename_prefix` as given (substituted and numbered at write time).
    pub prefix: String,
    /// Tensors in write order (safetensors' order: dtype descending, then name).
    pub tensors: Vec<PlannedTensor>,
    /// Metadata except the `modelspec.title`, which needs the final name.
    pub metadata: Vec<(String, String)>,
    /// Whether to add `modelspec.title = "<name> <counter>"`.
    pub modelspec_title: bool,
}

impl PlannedFile {
    pub fn data_bytes(&self) -> u64 {
        self.tensors.iter().filter_map(|t| t.spec.byte_len()).sum()
    }
}

/// Which network a set of weights is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Network {
    Unet,
    Clip,
    Vae,
}

/// How a MODEL samples: the noise levels and what its network predicts (from the checkpoint's
/// markers, or a ModelSampling node).
#[derive(Clone, Debug, PartialEq)]
pub enum SamplingKind {
    Discrete {
        prediction: Prediction,
        zsnr: bool,
    },
    ContinuousEdm {
        prediction: Prediction,
        sigma_min: f64,
        sigma_max: f64,
    },
}

/// One model's weights for the image nodes: every tensor's recipe under its component-local
/// key, evaluated by the kernel (f32 for UNet and VAE; CLIP rounded to f16 as ComfyUI stores
/// it) before the network is built.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedWeights {
    pub network: Network,
    pub architecture: Architecture,
    pub tensors: Vec<(String, Recipe, Vec<usize>)>,
}

/// An input of an image step: the output of an earlier step.
pub type StepRef = usize;

/// What an image step does. Models are indices into [`Plan::weights`].
#[derive(Clone, Debug, PartialEq)]
pub enum ImageOp {
    TextEncode {
        clip: usize,
        text: String,
        stop_at_clip_layer: Option<i64>,
    },
    EmptyLatent {
        width: usize,
        height: usize,
        batch: usize,
    },
    RepeatLatent {
        samples: StepRef,
        amount: usize,
    },
    Sample {
        model: usize,
        sampling: SamplingKind,
        positive: StepRef,
        negative: StepRef,
        latent: StepRef,
        seed: u64,
        steps: usize,
        cfg: f64,
        sampler: String,
        scheduler: String,
        denoise: f64,
        /// KSamplerAdvanced's controls (KSampler: noise added, all steps, nothing forced).
        add_noise: bool,
        start_at_step: Option<usize>,
        end_at_step: Option<usize>,
        force_full_denoise: bool,
    },
    Decode {
        vae: usize,
        samples: StepRef,
    },
    Encode {
        vae: usize,
        pixels: StepRef,
    },
    /// VAEEncodeForInpaint; `mask` is a LoadImage step (its MASK output).
    EncodeInpaint {
        vae: usize,
        pixels: StepRef,
        mask: StepRef,
        grow: usize,
    },
    SetNoiseMask {
        samples: StepRef,
        mask: StepRef,
    },
    /// LoadImage: the file, already resolved inside the input folder. Its step's value holds
    /// both outputs (IMAGE and MASK); a consumer takes the one its input is for.
    LoadImage {
        path: PathBuf,
    },
    Save {
        images: StepRef,
        prefix: String,
        temp: bool,
    },
}

/// One image node, in an order where every input comes before its use.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageStep {
    pub node: String,
    pub class_type: String,
    pub op: ImageOp,
}

/// Everything a job will write.
#[derive(Debug)]
pub struct Plan {
    pub sources: Vec<Arc<Source>>,
    pub files: Vec<PlannedFile>,
    /// Models the image steps use.
    pub weights: Vec<PlannedWeights>,
    pub image_steps: Vec<ImageStep>,
    /// The PNG text chunks a SaveImage writes (`prompt`, then `workflow`), as ComfyUI's JSON.
    pub image_metadata: Vec<(String, String)>,
    pub warnings: Vec<Warning>,
    pub output_dir: PathBuf,
    /// Where PreviewImage writes (ComfyUI's `temp/`).
    pub temp_dir: PathBuf,
}

impl Plan {
    pub fn tensors_total(&self) -> usize {
        self.files.iter().map(|f| f.tensors.len()).sum()
    }
    pub fn bytes_total(&self) -> u64 {
        self.files.iter().map(PlannedFile::data_bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Window pieces, for every range a tile can cover, agree with the element-by-element
    /// definition: element `e` of the weight is patched iff it is inside the window, by term
    /// element `e - start` (its halves exchanged when swapped).
    #[test]
    fn window_pieces_match_the_per_element_definition() {
        for swap_halves in [false, true] {
            let w = Window {
                start: 6,
                len: 10,
                swap_halves,
            };
            for first in 0..20 {
                for n in 0..12 {
                    let mut got = vec![None; n];
                    for p in w.pieces(first, n).iter().flatten() {
                        for i in 0..p.len {
                            assert!(got[p.offset + i].is_none(), "overlap");
                            got[p.offset + i] = Some((p.term + i, p.local + i));
                        }
                    }
                    let want: Vec<_> = (first..first + n)
                        .map(|e| {
                            (w.start..w.start + w.len).contains(&e).then(|| {
                                let local = e - w.start;
                                let term = if swap_halves {
                                    (local + w.len / 2) % w.len
                                } else {
                                    local
                                };
                                (term, local)
                            })
                        })
                        .collect();
                    assert_eq!(got, want, "first {first}, n {n}, swap {swap_halves}");
                }
            }
        }
    }
}
