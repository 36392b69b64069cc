//! The CPU convolution the networks use, as a candle custom op: a patch matrix built a band of
//! output rows at a time, multiplied by the weight with the `gemm` crate straight into the
//! output's NCHW layout, the bias added by the multiply itself.
//!
//! Why not `Tensor::conv2d`: candle's CPU path converts the input to NHWC, multiplies, and copies
//! the result back to NCHW with scalar loops — about a fifth of a UNet step went to those copies
//! (profiled on SD1.5 at 512²). Here the only copy is the patch matrix, made of `memcpy`s of
//! input rows, and the product lands where it belongs.
//!
//! Memory stays bounded whatever the image size: the patch matrix of one band is at most
//! [`PATCH_BYTES`] per thread (a full-image patch matrix of the VAE's last block at 512² would
//! be 1.2 GB). Bands run in parallel with a single-threaded multiply each; an image too small to
//! split runs one band with the multiply itself parallel.
//!
//! The arithmetic is a plain sum over input channel and kernel position in f32 — ComfyUI's
//! oneDNN convolution sums in another order, so results agree to rounding, as every f32 kernel
//! pair does (the image tests hold that to ±1 in 8 bits).

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

/// The largest patch matrix one band builds.
pub const PATCH_BYTES: usize = 8 << 20;

/// Below this many output positions a convolution is one band with a parallel multiply.
const MIN_SPLIT_POSITIONS: usize = 1024;

/// `conv2d(x, weight) + bias` with square padding and stride, dilation 1, groups 1.
/// `x` `[B, Cin, H, W]`, `weight` `[Cout, Cin, kh, kw]`, `bias` `[Cout]`. With `upsample2`, the
/// convolution reads `x` upsampled ×2 by nearest neighbour, without that 4× larger tensor ever
/// existing (the VAE decoder's last upsampling would be a 1 GB tensor at 1024²).
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    padding: usize,
    stride: usize,
    upsample2: bool,
) -> candle_core::Result<Tensor> {
    if !x.device().is_cpu() {
        // Other devices keep candle's own kernels (bias broadcast over [1, Cout, 1, 1]).
        let out = bias.dim(0)?;
        let x = if upsample2 {
            let (_, _, h, w) = x.dims4()?;
            x.upsample_nearest2d(2 * h, 2 * w)?
        } else {
            x.clone()
        };
        return x
            .conv2d(weight, padding, stride, 1, 1)?
            .broadcast_add(&bias.reshape((1, out, 1, 1))?);
    }
    let x = x.contiguous()?;
    let weight = weight.contiguous()?;
    let bias = bias.contiguous()?;
    x.apply_op3_no_bwd(
        &weight,
        &bias,
        &PatchConv {
            padding,
            stride,
            upsample2,
        },
    )
}

struct PatchConv {
    padding: usize,
    stride: usize,
    upsample2: bool,
}

/// The geometry of one convolution.
#[derive(Clone, Copy)]
struct Geometry {
    c_in: usize,
    /// The (virtual, when upsampled) input size the kernel slides over.
    h: usize,
    w: usize,
    /// The stored input is `h/2 × w/2`, read upsampled ×2 by nearest neighbour.
    upsample2: bool,
    kh: usize,
    kw: usize,
    out_h: usize,
    out_w: usize,
    padding: usize,
    stride: usize,
}

impl Geometry {
    /// Rows of the patch matrix (and the inner dimension of the multiply).
    fn depth(&self) -> usize {
        self.c_in * self.kh * self.kw
    }

    /// A 1×1 convolution without padding or stride reads the input itself as its patch matrix.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.padding == 0 && self.stride == 1 && !self.upsample2
    }

    /// Fills `patches` (`[depth, rows·out_w]`, row-major) for output rows `oh0..oh0 + rows`.
    fn fill_patches(&self, input: &[f32], oh0: usize, rows: usize, patches: &mut [f32]) {
        let n = rows * self.out_w;
        let (pad, stride) = (self.padding, self.stride);
        let shift = usize::from(self.upsample2);
        let (src_h, src_w) = (self.h >> shift, self.w >> shift);
        for ci in 0..self.c_in {
            let plane = &input[ci * src_h * src_w..(ci + 1) * src_h * src_w];
            for ky in 0..self.kh {
                for kx in 0..self.kw {
                    let r = (ci * self.kh + ky) * self.kw + kx;
                    let dst_row = &mut patches[r * n..(r + 1) * n];
                    // Output columns whose input column `ow·stride + kx − pad` is inside the image.
                    let first = pad.saturating_sub(kx).div_ceil(stride);
                    let end = ((self.w + pad).saturating_sub(kx)).div_ceil(stride);
                    let end = end.min(self.out_w).max(first);
                    for (i, dst) in dst_row.chunks_exact_mut(self.out_w).enumerate() {
                        let iy = (oh0 + i) * stride + ky;
                        if iy < pad || iy - pad >= self.h {
                            dst.fill(0.0);
                            continue;
                        }
                        let sy = (iy - pad) >> shift;
                        let src = &plane[sy * src_w..(sy + 1) * src_w];
                        dst[..first].fill(0.0);
                        dst[end..].fill(0.0);
                        let x0 = first * stride + kx - pad;
                        if self.upsample2 {
                            for (j, d) in dst[first..end].iter_mut().enumerate() {
                                *d = src[(x0 + j * stride) >> 1];
                            }
                        } else if stride == 1 {
                            dst[first..end].copy_from_slice(&src[x0..x0 + (end - first)]);
                        } else {
                            for (j, d) in dst[first..end].iter_mut().enumerate() {
                                *d = src[x0 + j * stride];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `dst[c_out, n] = bias + weight[c_out, depth] · rhs[depth, n]`, `dst` rows `dst_rs` apart
/// and `rhs` rows `rhs_rs` apart; `dst` already holds the bias.
struct Multiply<'a> {
    weight: &'a [f32],
    c_out: usize,
    depth: usize,
}

impl Multiply<'_> {
    #[allow(unsafe_code)]
    fn run(
        &self,
        dst: *mut f32,
        dst_rs: usize,
        rhs: &[f32],
        rhs_rs: usize,
        n: usize,
        threads: usize,
    ) {
        assert!(self.weight.len() >= self.c_out * self.depth);
        assert!(self.depth == 0 || rhs.len() >= (self.depth - 1) * rhs_rs + n);
        let parallelism = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        // SAFETY: the asserts above keep every read of `weight` ([c_out, depth], row-major) and
        // `rhs` ([depth, n], rows `rhs_rs` apart) in bounds; the callers hand in a `dst` that
        // points at `c_out` rows of `n` writable values, `dst_rs` apart, that no other thread
        // touches during the call (each band writes its own columns).
        unsafe {
            gemm::gemm(
                self.c_out,
                n,
                self.depth,
                dst,
                1,
                dst_rs as isize,
                true,
                self.weight.as_ptr(),
                1,
                self.depth as isize,
                rhs.as_ptr(),
                1,
                rhs_rs as isize,
                1.0f32,
                1.0f32,
                false,
                false,
                false,
                parallelism,
            );
        }
    }
}

/// A raw output pointer that bands share; each writes a disjoint set of columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: used only to hand disjoint column ranges of one buffer to the bands (see `Multiply`).
#[allow(unsafe_code)]
unsafe impl Send for OutPtr {}
#[allow(unsafe_code)]
unsafe impl Sync for OutPtr {}

impl OutPtr {
    #[allow(unsafe_code)]
    fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: callers pass offsets inside the output buffer.
        unsafe { self.0.add(offset) }
    }
}

thread_local! {
    /// Each thread's patch matrix, kept between calls: a fresh 8 MB allocation per band costs
    /// page faults comparable to the band's multiply.
    static PATCHES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl CustomOp3 for PatchConv {
    fn name(&self) -> &'static str {
        "amalgam-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = super::contiguous_f32(s1, l1, self.name())?;
        let weight = super::contiguous_f32(s2, l2, self.name())?;
        let bias = super::contiguous_f32(s3, l3, self.name())?;
        let (&[batch, c_in, h, w], &[c_out, wc_in, kh, kw], &[bc_out]) =
            (l1.dims(), l2.dims(), l3.dims())
        else {
            candle_core::bail!(
                "amalgam-conv2d: input {:?}, weight {:?}, bias {:?} are not [B,C,H,W], [O,C,kh,kw], [O]",
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        };
        let (pad, stride) = (self.padding, self.stride.max(1));
        let (stored_h, stored_w) = (h, w);
        let (h, w) = if self.upsample2 {
            (2 * h, 2 * w)
        } else {
            (h, w)
        };
        if wc_in != c_in || bc_out != c_out || h + 2 * pad < kh || w + 2 * pad < kw {
            candle_core::bail!(
                "amalgam-conv2d: input {:?} does not fit weight {:?} / bias {:?} (padding {pad})",
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        }
        let g = Geometry {
            c_in,
            h,
            w,
            upsample2: self.upsample2,
            kh,
            kw,
            out_h: (h + 2 * pad - kh) / stride + 1,
            out_w: (w + 2 * pad - kw) / stride + 1,
            padding: pad,
            stride,
        };
        let positions = g.out_h * g.out_w;
        // The output starts as the bias: the multiply accumulates onto it.
        let mut out = Vec::with_capacity(batch * c_out * positions);
        for _ in 0..batch {
            for &b in bias {
                out.extend(std::iter::repeat_n(b, positions));
            }
        }
        let multiply = Multiply {
            weight,
            c_out,
            depth: g.depth(),
        };
        let threads = rayon::current_num_threads().max(1);
        let out_ptr = OutPtr(out.as_mut_ptr());
        for b in 0..batch {
            let plane = stored_h * stored_w;
            let input = &x[b * c_in * plane..(b + 1) * c_in * plane];
            let image_out = b * c_out * positions;
            if g.pointwise() {
                // The input planes are the patch matrix.
                multiply.run(
                    out_ptr.at(image_out),
                    positions,
                    input,
                    positions,
                    positions,
                    threads,
                );
                continue;
            }
            let row_bytes = g.depth() * g.out_w * std::mem::size_of::<f32>();
            let mut rows = (PATCH_BYTES / row_bytes.max(1)).clamp(1, g.out_h);
            let split = positions >= MIN_SPLIT_POSITIONS && threads > 1;
            if split {
                // At least two bands per thread, so an uneven last band does not idle a core.
                rows = rows.min(g.out_h.div_ceil(2 * threads)).max(1);
            }
            let bands: Vec<usize> = (0..g.out_h).step_by(rows).collect();
            let band = |oh0: usize, inner_threads: usize| {
                let rows = rows.min(g.out_h - oh0);
                let n = rows * g.out_w;
                PATCHES.with_borrow_mut(|patches| {
                    if patches.len() < g.depth() * n {
                        patches.resize(g.depth() * n, 0.0);
                    }
                    let patches = &mut patches[..g.depth() * n];
                    g.fill_patches(input, oh0, rows, patches);
                    multiply.run(
                        out_ptr.at(image_out + oh0 * g.out_w),
                        positions,
                        patches,
                        n,
                        n,
                        inner_threads,
                    );
                });
            };
            if split {
                bands.par_iter().for_each(|&oh0| band(oh0, 1));
            } else {
                bands.iter().for_each(|&oh0| band(oh0, threads));
            }
        }
        let shape = Shape::from((batch, c_out, g.out_h, g.out_w));
        Ok((CpuStorage::F32(out), shape))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The definition, summed in f64.
    fn reference(
        x: &[f32],
        (c_in, h, w): (usize, usize, usize),
        weight: &[f32],
        (c_out, kh, kw): (usize, usize, usize),
        bias: &[f32],
        pad: usize,
        stride: usize,
    ) -> Vec<f32> {
        let out_h = (h + 2 * pad - kh) / stride + 1;
        let out_w = (w + 2 * pad - kw) / stride + 1;
        let mut out = Vec::new();
        for co in 0..c_out {
            for oy in 0..out_h {
                for ox in 0..out_w {
                    let mut s = f64::from(bias[co]);
                    for ci in 0..c_in {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let (iy, ix) = (oy * stride + ky, ox * stride + kx);
                                if iy < pad || ix < pad || iy - pad >= h || ix - pad >= w {
                                    continue;
                                }
                                s += f64::from(x[(ci * h + iy - pad) * w + ix - pad])
                                    * f64::from(weight[((co * c_in + ci) * kh + ky) * kw + kx]);
                            }
                        }
                    }
                    out.push(s as f32);
                }
            }
        }
        out
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        // A small deterministic spread of positive and negative values.
        (0..n)
            .map(|i| {
                let v = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8;
                (v % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn check(c_in: usize, h: usize, w: usize, c_out: usize, k: usize, pad: usize, stride: usize) {
        let dev = Device::Cpu;
        let xs = values(c_in * h * w, 1);
        let ws = values(c_out * c_in * k * k, 2);
        let bs = values(c_out, 3);
        let x = Tensor::from_vec(xs.clone(), (1, c_in, h, w), &dev).expect("input");
        let weight = Tensor::from_vec(ws.clone(), (c_out, c_in, k, k), &dev).expect("weight");
        let bias = Tensor::from_vec(bs.clone(), c_out, &dev).expect("bias");
        let got = conv2d(&x, &weight, &bias, pad, stride, false).expect("conv2d");
        let want = reference(&xs, (c_in, h, w), &ws, (c_out, k, k), &bs, pad, stride);
        let out_h = (h + 2 * pad - k) / stride + 1;
        let out_w = (w + 2 * pad - k) / stride + 1;
        assert_eq!(got.dims(), &[1, c_out, out_h, out_w]);
        let got = got
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .expect("values");
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "{c_in}×{h}×{w} k{k} p{pad} s{stride}: value {i}: {a} vs {b}"
            );
        }
    }

    #[test]
    fn matches_the_definition_for_every_shape_the_networks_use() {
        check(3, 9, 7, 5, 3, 1, 1); // 3×3 "same"
        check(4, 10, 9, 3, 3, 0, 2); // the VAE encoder's stride-2 downsample (padded beforehand)
        check(4, 9, 10, 6, 3, 1, 2); // the UNet's stride-2 downsample
        check(6, 5, 8, 4, 1, 0, 1); // 1×1
        check(2, 40, 40, 3, 3, 1, 1); // enough positions to split into parallel bands
        check(3, 33, 37, 2, 3, 1, 2);
    }

    #[test]
    fn an_upsampled_input_is_read_without_being_made() {
        let dev = Device::Cpu;
        let (c_in, h, w, c_out) = (3, 17, 12, 4);
        let xs = values(c_in * h * w, 4);
        let x = Tensor::from_vec(xs, (1, c_in, h, w), &dev).expect("input");
        let weight = Tensor::from_vec(values(c_out * c_in * 9, 5), (c_out, c_in, 3, 3), &dev)
            .expect("weight");
        let bias = Tensor::from_vec(values(c_out, 6), c_out, &dev).expect("bias");
        let big = x.upsample_nearest2d(2 * h, 2 * w).expect("upsampled");
        let want = conv2d(&big, &weight, &bias, 1, 1, false).expect("conv of the upsampled");
        let got = conv2d(&x, &weight, &bias, 1, 1, true).expect("fused");
        assert_eq!(got.dims(), want.dims());
        let (got, want) = (
            got.flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .expect("got"),
            want.flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .expect("want"),
        );
        assert_eq!(
            got, want,
            "the same patches, the same multiply, the same bits"
        );
    }

    #[test]
    fn a_large_image_split_into_bands_is_still_exact() {
        // 64 channels × 3×3 × 128 columns = 295 KB a row: a 8 MB band holds 28 rows of 128.
        check(64, 128, 128, 2, 3, 1, 1);
    }
}
