//! Text chunks of PNG files, where ComfyUI embeds its workflow (`workflow`) and API prompt
//! (`prompt`).
//!
//! Uses the `png` crate's streaming decoder over the chunks in file order, without decoding the
//! image. `tEXt`, `zTXt` and `iTXt` (compressed or not) are all read — ComfyUI's frontend reads
//! `tEXt` and uncompressed `iTXt` only — and when a keyword repeats, the later chunk wins, as in
//! the frontend. `tEXt` is decoded as UTF-8 like the frontend does (falling back to Latin-1, the
//! PNG standard, when the bytes are not UTF-8). CRCs are checked. One text chunk may hold at most
//! [`MAX_TEXT_BYTES`], compressed or expanded, and compressed text may expand at most
//! [`MAX_EXPANSION`] times (past its first MiB), which stops deflate bombs.

use png::{StreamingDecoder, chunk};

/// Largest text chunk accepted (a big workflow is well under 1 MiB).
pub const MAX_TEXT_BYTES: usize = 64 << 20;

/// Most a compressed text chunk may expand, as a multiple of its size (past the first MiB).
pub const MAX_EXPANSION: usize = 32;

const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Why the text of a PNG could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PngError {
    #[error("not a PNG file")]
    NotPng,
    #[error("corrupt PNG: {0}")]
    Corrupt(String),
    #[error("PNG ends early (truncated) after {0} bytes")]
    Truncated(usize),
    #[error(
        "PNG text chunk {keyword:?} is larger than the {MAX_TEXT_BYTES}-byte limit, or expands more than {MAX_EXPANSION}x"
    )]
    TextTooLarge { keyword: String },
}

/// Whether `bytes` start with the PNG signature.
pub fn is_png(bytes: &[u8]) -> bool {
    bytes.starts_with(SIGNATURE)
}

/// All text entries of a PNG in file order: `(keyword, text)`.
pub fn text_chunks(bytes: &[u8]) -> Result<Vec<(String, String)>, PngError> {
    if !is_png(bytes) {
        return Err(PngError::NotPng);
    }
    let mut decoder = StreamingDecoder::new();
    decoder.set_skip_ancillary_crc_failures(false);
    let mut out = Vec::new();
    let mut pos = 0;
    let mut chunk_len = 0usize;
    loop {
        if pos >= bytes.len() {
            // Ran out before IEND: keep what was read if anything, as a truncated image still
            // carries its workflow when the cut came after the text.
            return if out.is_empty() {
                Err(PngError::Truncated(bytes.len()))
            } else {
                Ok(out)
            };
        }
        let (used, event) = decoder
            .update(&bytes[pos..], None)
            .map_err(|e| PngError::Corrupt(e.to_string()))?;
        pos += used;
        match event {
            png::Decoded::ChunkBegin(len, kind)
                if (kind == chunk::tEXt || kind == chunk::zTXt || kind == chunk::iTXt)
                    && len as usize > MAX_TEXT_BYTES =>
            {
                return Err(PngError::TextTooLarge {
                    keyword: String::from_utf8_lossy(&kind.0).into_owned(),
                });
            }
            png::Decoded::ChunkBegin(len, _) => chunk_len = len as usize,
            png::Decoded::ChunkComplete(kind) => {
                if kind == chunk::IEND {
                    return Ok(out);
                }
                if let Some(entry) = last_text(&decoder, kind, chunk_len)? {
                    out.push(entry);
                }
            }
            _ => {}
        }
        if used == 0 && pos < bytes.len() {
            return Err(PngError::Corrupt("decoder made no progress".into()));
        }
    }
}

/// The text entry the decoder just completed, if `kind` is a text chunk.
fn last_text(
    decoder: &StreamingDecoder,
    kind: png::chunk::ChunkType,
    chunk_len: usize,
) -> Result<Option<(String, String)>, PngError> {
    // Compressed text may expand to a bounded multiple of the chunk: JSON compresses 5-15x, a
    // deflate bomb 1000x.
    let expanded_limit = MAX_TEXT_BYTES.min((1 << 20) + MAX_EXPANSION * chunk_len);
    let Some(info) = decoder.info() else {
        return Ok(None);
    };
    let too_large = |keyword: &str| PngError::TextTooLarge {
        keyword: keyword.to_owned(),
    };
    if kind == chunk::tEXt {
        let Some(t) = info.uncompressed_latin1_text.last() else {
            return Ok(None);
        };
        return Ok(Some((t.keyword.clone(), utf8_or_latin1(&t.text))));
    }
    if kind == chunk::zTXt {
        let Some(t) = info.compressed_latin1_text.last() else {
            return Ok(None);
        };
        let mut t = t.clone();
        t.decompress_text_with_limit(expanded_limit)
            .map_err(|_| too_large(&t.keyword))?;
        let text = t.get_text().map_err(|e| PngError::Corrupt(e.to_string()))?;
        return Ok(Some((t.keyword.clone(), utf8_or_latin1(&text))));
    }
    if kind == chunk::iTXt {
        let Some(t) = info.utf8_text.last() else {
            return Ok(None);
        };
        let mut t = t.clone();
        t.decompress_text_with_limit(expanded_limit)
            .map_err(|_| too_large(&t.keyword))?;
        let text = t.get_text().map_err(|e| PngError::Corrupt(e.to_string()))?;
        return Ok(Some((t.keyword.clone(), text)));
    }
    Ok(None)
}

/// The png crate decodes `tEXt` as Latin-1; ComfyUI's frontend reads the same bytes as UTF-8.
/// Recover the bytes and prefer UTF-8 when they are valid UTF-8.
fn utf8_or_latin1(latin1: &str) -> String {
    let bytes: Option<Vec<u8>> = latin1
        .chars()
        .map(|c| u8::try_from(u32::from(c)).ok())
        .collect();
    match bytes.map(String::from_utf8) {
        Some(Ok(s)) => s,
        _ => latin1.to_owned(),
    }
}

/// The value of `keyword`, the later chunk winning.
pub fn find_text<'a>(chunks: &'a [(String, String)], keyword: &str) -> Option<&'a str> {
    chunks
        .iter()
        .rev()
        .find(|(k, _)| k == keyword)
        .map(|(_, v)| v.as_str())
}

/// An 8-bit RGB image as a PNG with `tEXt` chunks before the image data, as ComfyUI's SaveImage
/// writes it (PIL: `compress_level` 4, or 1 for previews). The texts must be Latin-1; the JSON
/// ComfyUI writes is ASCII.
pub fn encode_rgb8(
    width: u32,
    height: u32,
    rgb: &[u8],
    texts: &[(String, String)],
    fast: bool,
) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, width, height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(if fast {
            png::Compression::Fastest
        } else {
            png::Compression::Balanced
        });
        for (k, v) in texts {
            enc.add_text_chunk(k.clone(), v.clone())?;
        }
        let mut w = enc.write_header()?;
        w.write_image_data(rgb)?;
        w.finish()?;
    }
    Ok(out)
}

/// Kinds of text chunk, for writing.
#[cfg(any(test, feature = "testing"))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextKind {
    TEXt,
    ZTXt,
    ITXt,
}

/// Writes a small PNG (a grey square) carrying the given text chunks, as ComfyUI's SaveImage
/// does: test fixtures (the `testing` feature).
#[cfg(any(test, feature = "testing"))]
pub fn write_png_with_text(
    width: u32,
    height: u32,
    texts: &[(TextKind, &str, &str)],
) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, width, height);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        for (kind, k, v) in texts {
            match kind {
                TextKind::TEXt => enc.add_text_chunk((*k).to_owned(), (*v).to_owned())?,
                TextKind::ZTXt => enc.add_ztxt_chunk((*k).to_owned(), (*v).to_owned())?,
                TextKind::ITXt => enc.add_itxt_chunk((*k).to_owned(), (*v).to_owned())?,
            }
        }
        let mut w = enc.write_header()?;
        let pixels = vec![128u8; (width * height) as usize];
        w.write_image_data(&pixels)?;
        w.finish()?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_all_text_kinds_in_order_later_wins() {
        let png = write_png_with_text(
            4,
            4,
            &[
                (TextKind::TEXt, "prompt", "{\"a\": 1}"),
                (TextKind::ZTXt, "workflow", "first"),
                (TextKind::ITXt, "workflow", "sécond ✓"),
            ],
        )
        .expect("encode");
        let chunks = text_chunks(&png).expect("read");
        assert_eq!(chunks.len(), 3);
        assert_eq!(find_text(&chunks, "workflow"), Some("sécond ✓"));
        assert_eq!(find_text(&chunks, "prompt"), Some("{\"a\": 1}"));
        assert_eq!(find_text(&chunks, "parameters"), None);
    }

    #[test]
    fn utf8_in_text_chunks_reads_like_the_frontend() {
        // Some tools put UTF-8 bytes in tEXt; the frontend decodes them as UTF-8.
        assert_eq!(utf8_or_latin1("Ã©"), "é");
        assert_eq!(utf8_or_latin1("\u{e9}t\u{e9}"), "\u{e9}t\u{e9}");
    }

    #[test]
    fn bad_crc_truncation_and_garbage_are_errors() {
        let png = write_png_with_text(2, 2, &[(TextKind::TEXt, "workflow", "{}")]).expect("encode");
        // Flip a byte inside the tEXt chunk's data: its CRC no longer matches.
        let at = png.windows(4).position(|w| w == b"tEXt").expect("chunk") + 6;
        let mut bad = png.clone();
        bad[at] ^= 0x20;
        assert!(matches!(text_chunks(&bad), Err(PngError::Corrupt(_))));
        assert!(matches!(
            text_chunks(&png[..20]),
            Err(PngError::Truncated(_))
        ));
        // Cut after the text chunk: the workflow is still there.
        let after_text = png.windows(4).position(|w| w == b"IDAT").expect("idat");
        assert_eq!(text_chunks(&png[..after_text]).expect("partial").len(), 1);
        assert!(matches!(text_chunks(b"GIF89a"), Err(PngError::NotPng)));
        let mut junk = SIGNATURE.to_vec();
        junk.extend_from_slice(&[0xff; 64]);
        assert!(text_chunks(&junk).is_err());
    }

    #[test]
    fn gigantic_chunk_lengths_are_capped() {
        let png = write_png_with_text(2, 2, &[(TextKind::TEXt, "workflow", "{}")]).expect("encode");
        let at = png.windows(4).position(|w| w == b"tEXt").expect("chunk") - 4;
        let mut bad = png.clone();
        bad[at..at + 4].copy_from_slice(&0x7fff_0000u32.to_be_bytes());
        assert!(text_chunks(&bad).is_err());
    }

    #[test]
    fn compressed_text_may_not_expand_like_a_bomb() {
        // 20 MiB of one letter compresses to ~20 KiB: a 1000x expansion. (iTXt goes through
        // the same limit; the encoder here writes iTXt uncompressed.)
        let bomb = "a".repeat(20 << 20);
        let png =
            write_png_with_text(2, 2, &[(TextKind::ZTXt, "workflow", &bomb)]).expect("encode");
        assert!(png.len() < 200 << 10, "{} bytes", png.len());
        let err = text_chunks(&png).expect_err("bomb refused");
        assert!(err.to_string().contains("expands more than 32x"), "{err}");
        // A real workflow's JSON, compressed, reads back.
        let json = format!(
            "{{\"nodes\": [{}]}}",
            vec!["{\"id\": 1, \"type\": \"CheckpointLoaderSimple\"}"; 30_000].join(",")
        );
        let png =
            write_png_with_text(2, 2, &[(TextKind::ZTXt, "workflow", &json)]).expect("encode");
        let chunks = text_chunks(&png).expect("reads");
        assert_eq!(find_text(&chunks, "workflow"), Some(json.as_str()));
    }
}
