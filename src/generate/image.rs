//! Latents to pixels and back (generation.md §7–§8): VAEDecode (`clamp((x + 1)/2, 0, 1)`,
//! channels last), VAEEncode (centred crop to multiples of 8, `2x − 1`, the mean), SaveImage's
//! 8-bit conversion (`trunc(clip(255·v))`, numpy's `astype(uint8)`), and the live preview
//! (latent channels × ComfyUI's RGB factors, image 0 only).

use candle_core::{Device, Tensor};

use super::GenError;
use super::ksampler::{Latent, LatentFormat};
use super::nn::vae::{Decoder, Encoder};

/// An IMAGE: `count` images of `height × width` RGB, f32 in [0, 1], channels last.
#[derive(Clone, Debug, PartialEq)]
pub struct Images {
    pub count: usize,
    pub height: usize,
    pub width: usize,
    pub pixels: Vec<f32>,
}

impl Images {
    /// Image `i` as 8-bit RGB, converted as SaveImage does.
    pub fn to_rgb8(&self, i: usize) -> Vec<u8> {
        let n = self.height * self.width * 3;
        self.pixels[i * n..(i + 1) * n]
            .iter()
            .map(|&v| to_u8(v))
            .collect()
    }
}

/// `np.clip(255. * v, 0, 255).astype(np.uint8)`: the product in f32, then truncation.
pub fn to_u8(v: f32) -> u8 {
    let scaled = 255.0f32 * v;
    if scaled.is_nan() {
        0
    } else {
        scaled.clamp(0.0, 255.0) as u8
    }
}

/// VAEDecode: one image at a time (the decoder's activations are the large part).
pub fn decode(vae: &Decoder, latent: &Latent) -> Result<Images, GenError> {
    let (b, c, h, w) = latent.samples.dims4()?;
    if c != vae.latent_channels() {
        return Err(GenError::Input(format!(
            "the latent has {c} channels but the VAE takes {}",
            vae.latent_channels()
        )));
    }
    let mut pixels = Vec::with_capacity(b * h * w * 64 * 3);
    let (mut height, mut width) = (h * 8, w * 8);
    for i in 0..b {
        let z = latent.samples.narrow(0, i, 1)?;
        let x = vae.forward(&z)?;
        let x = ((x + 1.0)? / 2.0)?.clamp(0f32, 1f32)?;
        let (_, _, hh, ww) = x.dims4()?;
        (height, width) = (hh, ww);
        pixels.extend(
            x.squeeze(0)?
                .permute((1, 2, 0))?
                .flatten_all()?
                .to_vec1::<f32>()?,
        );
    }
    Ok(Images {
        count: b,
        height,
        width,
        pixels,
    })
}

/// VAEEncode: pixels cropped to multiples of 8 about the centre, `2x − 1`, encoded to the mean.
pub fn encode(vae: &Encoder, images: &Images) -> Result<Latent, GenError> {
    let (h8, w8) = ((images.height / 8) * 8, (images.width / 8) * 8);
    if h8 == 0 || w8 == 0 {
        return Err(GenError::Input(format!(
            "a {}×{} image is too small to encode (at least 8×8)",
            images.width, images.height
        )));
    }
    let (top, left) = ((images.height % 8) / 2, (images.width % 8) / 2);
    let all = Tensor::from_vec(
        images.pixels.clone(),
        (images.count, images.height, images.width, 3),
        &Device::Cpu,
    )?;
    let mut out = Vec::with_capacity(images.count);
    for i in 0..images.count {
        let x = all
            .narrow(0, i, 1)?
            .narrow(1, top, h8)?
            .narrow(2, left, w8)?
            .permute((0, 3, 1, 2))?
            .contiguous()?;
        let x = ((x * 2.0)? - 1.0)?;
        out.push(vae.forward(&x)?);
    }
    Ok(Latent::new(Tensor::cat(&out, 0)?))
}

/// LoadImage from PNG bytes (generation.md §7.1): pixels as `f32(u8) / 255`, RGB (grey
/// replicated, palettes expanded), and the MASK `1 − alpha/255` (`[1, H, W]`), or a `64 × 64`
/// zero mask when the image has no alpha — as ComfyUI's LoadImage. 16-bit PNGs are refused
/// (PIL's 16-bit conversion is not reproduced).
pub fn load_png(bytes: &[u8]) -> Result<(Images, Tensor), GenError> {
    let bad = |e: String| GenError::Input(format!("not a readable PNG: {e}"));
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().map_err(|e| bad(e.to_string()))?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| bad("too large".into()))?;
    let mut buf = vec![0; size];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| bad(e.to_string()))?;
    if info.bit_depth == png::BitDepth::Sixteen {
        return Err(GenError::Input(
            "16-bit PNGs are not supported by LoadImage here; save it as 8-bit".into(),
        ));
    }
    let (w, h) = (info.width as usize, info.height as usize);
    let channels = info.color_type.samples();
    let data = &buf[..w * h * channels];
    let mut pixels = Vec::with_capacity(w * h * 3);
    let mut alpha = Vec::new();
    for px in data.chunks_exact(channels) {
        let rgb = match channels {
            1 | 2 => [px[0]; 3],
            _ => [px[0], px[1], px[2]],
        };
        pixels.extend(rgb.iter().map(|&v| f32::from(v) / 255.0));
        if channels == 2 || channels == 4 {
            alpha.push(1.0 - f32::from(px[channels - 1]) / 255.0);
        }
    }
    let mask = if alpha.is_empty() {
        Tensor::zeros((1, 64, 64), candle_core::DType::F32, &Device::Cpu)?
    } else {
        Tensor::from_vec(alpha, (1, h, w), &Device::Cpu)?
    };
    Ok((
        Images {
            count: 1,
            height: h,
            width: w,
            pixels,
        },
        mask,
    ))
}

/// VAEEncodeForInpaint (`nodes.py`): the mask resized to the image, both cropped to multiples of
/// 8 about the centre, the masked pixels set to grey (0.5), the image encoded, and the mask grown
/// by `grow` pixels (a `grow × grow` box, asymmetric as ComfyUI's padding makes it) as the
/// latent's noise mask.
pub fn encode_for_inpaint(
    vae: &Encoder,
    images: &Images,
    mask: &Tensor,
    grow: usize,
) -> Result<Latent, GenError> {
    let (ih, iw) = (images.height, images.width);
    let (x, y) = ((ih / 8) * 8, (iw / 8) * 8);
    if x == 0 || y == 0 {
        return Err(GenError::Input(format!(
            "a {iw}×{ih} image is too small to encode (at least 8×8)"
        )));
    }
    let (mb, mh, mw) = mask.dims3()?;
    let mask_values: Vec<f32> = mask.flatten_all()?.to_vec1()?;
    let (top, left) = ((ih % 8) / 2, (iw % 8) / 2);
    let mut grown_all = Vec::with_capacity(mb * x * y);
    let mut keep_all = Vec::with_capacity(mb * x * y);
    for k in 0..mb {
        let full =
            super::ksampler::bilinear(&mask_values[k * mh * mw..(k + 1) * mh * mw], mh, mw, ih, iw);
        let crop: Vec<f32> = (0..x)
            .flat_map(|r| full[(r + top) * iw + left..(r + top) * iw + left + y].to_vec())
            .collect();
        let rounded: Vec<f32> = crop.iter().map(|v| v.round_ties_even()).collect();
        keep_all.extend(rounded.iter().map(|r| 1.0 - r));
        if grow == 0 {
            grown_all.extend(crop.iter().map(|v| v.round_ties_even()));
        } else {
            // `conv2d(…, ones(g, g), padding = ceil((g − 1)/2))`, cut to the image.
            let pad = (grow - 1).div_ceil(2);
            for r in 0..x {
                for c in 0..y {
                    let mut sum = 0.0f32;
                    for dr in 0..grow {
                        for dc in 0..grow {
                            let (sr, sc) = (r + dr, c + dc);
                            if sr < pad || sc < pad || sr - pad >= x || sc - pad >= y {
                                continue;
                            }
                            sum += rounded[(sr - pad) * y + (sc - pad)];
                        }
                    }
                    grown_all.push(sum.clamp(0.0, 1.0).round_ties_even());
                }
            }
        }
    }
    // Grey out the masked pixels: `(p − 0.5)·m + 0.5` per channel.
    let mut pixels = Vec::with_capacity(images.count * x * y * 3);
    let plane = ih * iw * 3;
    for i in 0..images.count {
        let m = &keep_all[(i % mb) * x * y..(i % mb + 1) * x * y];
        for r in 0..x {
            for c in 0..y {
                let at = i * plane + ((r + top) * iw + c + left) * 3;
                for ch in 0..3 {
                    pixels.push((images.pixels[at + ch] - 0.5) * m[r * y + c] + 0.5);
                }
            }
        }
    }
    let cropped = Images {
        count: images.count,
        height: x,
        width: y,
        pixels,
    };
    let mut latent = encode(vae, &cropped)?;
    latent.noise_mask = Some(Tensor::from_vec(grown_all, (mb, 1, x, y), &Device::Cpu)?);
    Ok(latent)
}

/// The live preview of a denoised estimate (`[4·h·w]`, scaled space): `h × w` RGB bytes.
pub fn preview_rgb8(denoised: &[f32], h: usize, w: usize, format: LatentFormat) -> Vec<u8> {
    let (factors, bias) = format.rgb_factors();
    let plane = h * w;
    let mut out = Vec::with_capacity(plane * 3);
    for p in 0..plane {
        for (k, b) in bias.iter().enumerate() {
            let v: f32 = (0..4)
                .map(|c| denoised.get(c * plane + p).copied().unwrap_or(0.0) * factors[c][k])
                .sum::<f32>()
                + b;
            out.push(to_u8(((v + 1.0) / 2.0).clamp(0.0, 1.0)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eight_bit_conversion_truncates() {
        assert_eq!(to_u8(1.0), 255);
        assert_eq!(to_u8(0.999), 254); // 254.745 → 254, not 255
        assert_eq!(to_u8(-0.5), 0);
        assert_eq!(to_u8(2.0), 255);
        assert_eq!(to_u8(f32::NAN), 0);
        assert_eq!(to_u8(0.5), 127);
    }

    #[test]
    fn preview_of_a_zero_latent_is_mid_grey() {
        let rgb = preview_rgb8(&[0.0; 4 * 6], 2, 3, LatentFormat::Sd15);
        assert_eq!(rgb, vec![127; 18]);
        let xl = preview_rgb8(&[0.0; 4 * 6], 2, 3, LatentFormat::Sdxl);
        assert_eq!(
            &xl[..3],
            &[
                to_u8(1.1084 / 2.0),
                to_u8(0.9825 / 2.0),
                to_u8(0.9989 / 2.0)
            ]
        );
    }
}
