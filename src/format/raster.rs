//! 8-bit RGBA pictures for looking at results: decoded from PNG (any 8-bit colour type, 16-bit
//! reduced), shrunk to thumbnails, and laid out into grids. What the app shows and the sweep grid
//! it saves; never part of a computation (the image nodes keep their own exact pixel paths).
//!
//! Decoding is bounded: a picture may have at most [`MAX_PIXELS`] pixels, so a hostile PNG header
//! cannot make the viewer allocate gigabytes.

use super::png::PngError;

/// Largest picture decoded for viewing (64 megapixels: an 8K × 8K image).
pub const MAX_PIXELS: u64 = 64 << 20;

/// An RGBA picture, rows top to bottom, 4 bytes per pixel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Raster {
    pub width: u32,
    pub height: u32,
    pub rgba: Vec<u8>,
}

impl Raster {
    /// A picture of one colour.
    pub fn filled(width: u32, height: u32, rgba: [u8; 4]) -> Raster {
        let n = width as usize * height as usize;
        Raster {
            width,
            height,
            rgba: rgba.repeat(n),
        }
    }

    /// From packed RGB bytes (`width · height · 3` of them; missing bytes read as black).
    pub fn from_rgb8(width: u32, height: u32, rgb: &[u8]) -> Raster {
        let n = width as usize * height as usize;
        let mut rgba = Vec::with_capacity(n * 4);
        for i in 0..n {
            let px = rgb.get(i * 3..i * 3 + 3).unwrap_or(&[0, 0, 0]);
            rgba.extend_from_slice(&[px[0], px[1], px[2], 255]);
        }
        Raster {
            width,
            height,
            rgba,
        }
    }

    /// Decodes a PNG file's first frame.
    pub fn decode_png(bytes: &[u8]) -> Result<Raster, PngError> {
        if !super::png::is_png(bytes) {
            return Err(PngError::NotPng);
        }
        let corrupt = |e: png::DecodingError| match e {
            png::DecodingError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                PngError::Truncated(bytes.len())
            }
            e => PngError::Corrupt(e.to_string()),
        };
        let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
        let header = decoder.read_header_info().map_err(corrupt)?;
        let pixels = u64::from(header.width) * u64::from(header.height);
        if pixels > MAX_PIXELS {
            return Err(PngError::Corrupt(format!(
                "{} × {} pixels is more than the {MAX_PIXELS} this viewer decodes",
                header.width, header.height
            )));
        }
        let mut reader = decoder.read_info().map_err(corrupt)?;
        let size = reader
            .output_buffer_size()
            .ok_or_else(|| PngError::Corrupt("image too large".into()))?;
        let mut buf = vec![0; size];
        let info = reader.next_frame(&mut buf).map_err(corrupt)?;
        let (w, h) = (info.width, info.height);
        let channels = info.color_type.samples();
        let n = w as usize * h as usize;
        let data = buf
            .get(..n * channels)
            .ok_or_else(|| PngError::Corrupt("short image data".into()))?;
        let mut rgba = Vec::with_capacity(n * 4);
        for px in data.chunks_exact(channels) {
            let p = match channels {
                1 => [px[0], px[0], px[0], 255],
                2 => [px[0], px[0], px[0], px[1]],
                3 => [px[0], px[1], px[2], 255],
                _ => [px[0], px[1], px[2], px[3]],
            };
            rgba.extend_from_slice(&p);
        }
        Ok(Raster {
            width: w,
            height: h,
            rgba,
        })
    }

    /// A copy no larger than `max_side` on either side, each pixel the average of the box it
    /// covers (a picture already small enough is returned as it is).
    pub fn thumbnail(&self, max_side: u32) -> Raster {
        let longest = self.width.max(self.height);
        if longest <= max_side || longest == 0 {
            return self.clone();
        }
        let scale = f64::from(max_side) / f64::from(longest);
        let tw = ((f64::from(self.width) * scale).round() as u32).max(1);
        let th = ((f64::from(self.height) * scale).round() as u32).max(1);
        let mut rgba = Vec::with_capacity(tw as usize * th as usize * 4);
        for ty in 0..th {
            let y0 = (u64::from(ty) * u64::from(self.height) / u64::from(th)) as u32;
            let y1 = ((u64::from(ty + 1) * u64::from(self.height)).div_ceil(u64::from(th)) as u32)
                .max(y0 + 1);
            for tx in 0..tw {
                let x0 = (u64::from(tx) * u64::from(self.width) / u64::from(tw)) as u32;
                let x1 = ((u64::from(tx + 1) * u64::from(self.width)).div_ceil(u64::from(tw))
                    as u32)
                    .max(x0 + 1);
                let mut sum = [0u64; 4];
                for y in y0..y1.min(self.height) {
                    for x in x0..x1.min(self.width) {
                        let i = (y as usize * self.width as usize + x as usize) * 4;
                        for (s, v) in sum.iter_mut().zip(&self.rgba[i..i + 4]) {
                            *s += u64::from(*v);
                        }
                    }
                }
                let count =
                    u64::from(y1.min(self.height) - y0) * u64::from(x1.min(self.width) - x0);
                rgba.extend(sum.iter().map(|s| ((s + count / 2) / count.max(1)) as u8));
            }
        }
        Raster {
            width: tw,
            height: th,
            rgba,
        }
    }

    /// Copies `src` with its top-left corner at (`x`, `y`), clipped to this picture.
    pub fn paste(&mut self, src: &Raster, x: u32, y: u32) {
        if x >= self.width || y >= self.height {
            return;
        }
        let w = src.width.min(self.width - x) as usize;
        for row in 0..src.height.min(self.height - y) as usize {
            let from = row * src.width as usize * 4;
            let to = ((y as usize + row) * self.width as usize + x as usize) * 4;
            self.rgba[to..to + w * 4].copy_from_slice(&src.rgba[from..from + w * 4]);
        }
    }

    /// Packed RGB bytes (alpha dropped), for [`super::png::encode_rgb8`].
    pub fn to_rgb8(&self) -> Vec<u8> {
        self.rgba
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> Raster {
        let rgb: Vec<u8> = (0..w * h)
            .flat_map(|i| {
                let (x, y) = (i % w, i / w);
                [(x * 255 / w.max(1)) as u8, (y * 255 / h.max(1)) as u8, 7]
            })
            .collect();
        Raster::from_rgb8(w, h, &rgb)
    }

    #[test]
    fn png_round_trips_through_the_encoder_the_image_nodes_use() {
        let r = gradient(37, 21);
        let bytes = super::super::png::encode_rgb8(37, 21, &r.to_rgb8(), &[], true).expect("png");
        assert_eq!(Raster::decode_png(&bytes).expect("decode"), r);
        assert!(matches!(
            Raster::decode_png(b"not a png"),
            Err(PngError::NotPng)
        ));
        assert!(Raster::decode_png(&bytes[..bytes.len() / 2]).is_err());
    }

    #[test]
    fn grey_pngs_are_expanded() {
        let bytes = super::super::png::write_png_with_text(3, 2, &[]).expect("png");
        let r = Raster::decode_png(&bytes).expect("decode");
        assert_eq!((r.width, r.height), (3, 2));
        assert!(r.rgba.chunks(4).all(|p| p == [128, 128, 128, 255]));
    }

    #[test]
    fn thumbnails_average_boxes_and_keep_the_aspect() {
        let mut r = Raster::filled(4, 2, [0, 0, 0, 255]);
        // Left half white: a 2 × 1 thumbnail is white then black.
        for y in 0..2 {
            for x in 0..2 {
                let i = (y * 4 + x) * 4;
                r.rgba[i..i + 3].copy_from_slice(&[255, 255, 255]);
            }
        }
        let t = r.thumbnail(2);
        assert_eq!((t.width, t.height), (2, 1));
        assert_eq!(t.rgba, [255, 255, 255, 255, 0, 0, 0, 255]);
        let big = gradient(640, 480).thumbnail(128);
        assert_eq!((big.width, big.height), (128, 96));
        assert_eq!(gradient(5, 5).thumbnail(128), gradient(5, 5));
    }

    #[test]
    fn paste_clips_at_the_edges() {
        let mut canvas = Raster::filled(4, 4, [0, 0, 0, 255]);
        canvas.paste(&Raster::filled(3, 3, [9, 9, 9, 255]), 2, 2);
        let at = |x: usize, y: usize| canvas.rgba[(y * 4 + x) * 4];
        assert_eq!((at(1, 1), at(2, 2), at(3, 3), at(3, 1)), (0, 9, 9, 0));
        canvas.paste(&Raster::filled(1, 1, [5, 5, 5, 255]), 9, 9);
    }
}
