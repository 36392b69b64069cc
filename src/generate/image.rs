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
