//! CLIP's text tokenizer as ComfyUI runs it (generation.md §4.2): transformers' slow
//! `CLIPTokenizer` without `ftfy`, so text goes through the BERT-style fallback normaliser —
//! drop NUL, U+FFFD and control characters, map whitespace to spaces, space out CJK ideographs,
//! NFC, split on whitespace and lower-case each piece — then CLIP's pre-tokenising regex,
//! byte-level BPE over OpenAI's merges (`assets/clip/merges.txt.gz`, MIT), and the vocabulary
//! rebuilt from them (256 byte symbols, the same with `</w>`, the merges, the two specials).
//! A literal `<|startoftext|>` or `<|endoftext|>` in the text is that special token.

use std::collections::HashMap;
use std::io::Read;
use std::sync::OnceLock;

use regex::Regex;
use unicode_normalization::UnicodeNormalization;

pub const START: u32 = 49406;
pub const END: u32 = 49407;

/// The merges CLIP uses: lines 1 ..= 48,894 of OpenAI's file (line 0 is a header).
const MERGES: usize = 49152 - 256 - 2;

static MERGES_GZ: &[u8] = include_bytes!("../../../assets/clip/merges.txt.gz");

/// The tokenizer's tables, built once per process. BPE runs on vocabulary ids: every symbol a
/// merge joins, and every result, is a vocabulary entry, and the rebuilt vocabulary has no
/// duplicates (49,408 distinct entries), so ids stand for the strings one to one.
pub struct ClipTokenizer {
    /// `(left, right)` → `(rank, joined)`.
    merges: HashMap<(u32, u32), (usize, u32)>,
    /// The id of each byte's symbol, and of the same symbol ending a word (`</w>`).
    byte_ids: [u32; 256],
    byte_end_ids: [u32; 256],
    pattern: Regex,
    /// BERT's `_is_control` (any "Other" category except tab, newline, CR) and U+FFFD.
    dropped: Regex,
    /// BERT's `_is_whitespace`: tab, newline, CR and space separators (Zs).
    whitespace: Regex,
}

impl ClipTokenizer {
    /// The shared tokenizer (CLIP-L, -H and -G use the same one).
    pub fn get() -> &'static ClipTokenizer {
        static TOKENIZER: OnceLock<ClipTokenizer> = OnceLock::new();
        TOKENIZER.get_or_init(ClipTokenizer::build)
    }

    fn build() -> ClipTokenizer {
        let mut text = String::new();
        // The asset is part of the binary and checked by the tests; a broken one is a build bug.
        flate2::read::GzDecoder::new(MERGES_GZ)
            .read_to_string(&mut text)
            .expect("assets/clip/merges.txt.gz is valid gzip text");
        let table = bytes_to_unicode();
        let order = byte_order();
        // Vocabulary order: the byte symbols, the same with `</w>`, then each merge's result.
        let mut vocab: HashMap<String, u32> = HashMap::new();
        let symbols = order
            .iter()
            .map(|&b| table[usize::from(b)].to_string())
            .chain(
                order
                    .iter()
                    .map(|&b| format!("{}</w>", table[usize::from(b)])),
            );
        for (id, symbol) in symbols.enumerate() {
            vocab.insert(symbol, id as u32);
        }
        let mut byte_ids = [0u32; 256];
        let mut byte_end_ids = [0u32; 256];
        for b in 0..=255u8 {
            let c = table[usize::from(b)];
            byte_ids[usize::from(b)] = vocab[&c.to_string()];
            byte_end_ids[usize::from(b)] = vocab[&format!("{c}</w>")];
        }
        let mut merges = HashMap::new();
        for (rank, line) in text.lines().skip(1).take(MERGES).enumerate() {
            let Some((a, b)) = line.split_once(' ') else {
                continue;
            };
            let joined = vocab.len() as u32;
            // Both halves are earlier symbols: bytes or the results of earlier merges.
            if let (Some(&left), Some(&right)) = (vocab.get(a), vocab.get(b)) {
                merges.insert((left, right), (rank, joined));
            }
            vocab.insert(format!("{a}{b}"), joined);
        }
        let compile =
            |pattern: &str| Regex::new(pattern).expect("the tokenizer's patterns compile");
        ClipTokenizer {
            merges,
            byte_ids,
            byte_end_ids,
            pattern: compile(
                r"(?i)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
            ),
            dropped: compile(r"[\p{C}&&[^\t\n\r]]|\x{FFFD}"),
            whitespace: compile(r"[\t\n\r\p{Zs}]"),
        }
    }

    /// The ids of `text`, without start and end tokens (what ComfyUI takes of each word).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        for (piece, special) in split_specials(text) {
            if let Some(id) = special {
                ids.push(id);
                continue;
            }
            let normalised = self.normalise(piece);
            for m in self.pattern.find_iter(&normalised) {
                ids.extend(self.bpe(m.as_str().as_bytes()));
            }
        }
        ids
    }

    /// Byte-pair merging of one pre-token: the lowest-ranked adjacent pair first, every
    /// occurrence of it left to right, until no pair is a merge; the last symbol ends the word.
    fn bpe(&self, token: &[u8]) -> Vec<u32> {
        let Some((&last, head)) = token.split_last() else {
            return Vec::new();
        };
        let mut word: Vec<u32> = head
            .iter()
            .map(|&b| self.byte_ids[usize::from(b)])
            .collect();
        word.push(self.byte_end_ids[usize::from(last)]);
        while word.len() > 1 {
            let best = word
                .windows(2)
                .filter_map(|p| self.merges.get(&(p[0], p[1])).map(|m| ((p[0], p[1]), *m)))
                .min_by_key(|(_, (rank, _))| *rank);
            let Some((pair, (_, joined))) = best else {
                break;
            };
            let mut merged = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len() && (word[i], word[i + 1]) == pair {
                    merged.push(joined);
                    i += 2;
                } else {
                    merged.push(word[i]);
                    i += 1;
                }
            }
            word = merged;
        }
        word
    }

    /// transformers' `BasicTokenizer` with `strip_accents=False, do_split_on_punc=False`: drop
    /// NUL, U+FFFD and control characters, map whitespace to spaces, space out CJK ideographs,
    /// NFC, split on whitespace and lower-case each piece.
    fn normalise(&self, text: &str) -> String {
        let kept = self.dropped.replace_all(text, "");
        let spaced = self.whitespace.replace_all(&kept, " ");
        let mut cleaned = String::with_capacity(spaced.len());
        for c in spaced.chars() {
            if is_cjk(c) {
                cleaned.push(' ');
                cleaned.push(c);
                cleaned.push(' ');
            } else {
                cleaned.push(c);
            }
        }
        let nfc: String = cleaned.nfc().collect();
        nfc.split_whitespace()
            .map(str::to_lowercase)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The text between special tokens, and the special tokens themselves, in order.
fn split_specials(text: &str) -> Vec<(&str, Option<u32>)> {
    const SPECIALS: [(&str, u32); 2] = [("<|startoftext|>", START), ("<|endoftext|>", END)];
    let mut out = Vec::new();
    let mut rest = text;
    loop {
        let next = SPECIALS
            .iter()
            .filter_map(|(s, id)| rest.find(s).map(|at| (at, *s, *id)))
            .min_by_key(|(at, ..)| *at);
        match next {
            Some((at, s, id)) => {
                if at > 0 {
                    out.push((&rest[..at], None));
                }
                out.push((s, Some(id)));
                rest = &rest[at + s.len()..];
            }
            None => {
                if !rest.is_empty() {
                    out.push((rest, None));
                }
                return out;
            }
        }
    }
}

/// BERT's `_is_chinese_char` ranges.
fn is_cjk(c: char) -> bool {
    matches!(u32::from(c),
        0x4E00..=0x9FFF
        | 0x3400..=0x4DBF
        | 0x20000..=0x2A6DF
        | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F
        | 0x2B820..=0x2CEAF
        | 0xF900..=0xFAFF
        | 0x2F800..=0x2FA1F)
}

/// The byte values in GPT-2's table order: the printable ranges first, then the rest.
fn byte_order() -> Vec<u8> {
    let mut bytes: Vec<u8> = (b'!'..=b'~')
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let printable = bytes.clone();
    bytes.extend((0..=255u8).filter(|b| !printable.contains(b)));
    bytes
}

/// GPT-2's `bytes_to_unicode`: printable bytes map to themselves, the others to 256 + n.
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0;
    for b in byte_order() {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[usize::from(b)] = if printable {
            char::from(b)
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap_or('\0')
        };
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vocabulary_is_rebuilt_whole() {
        let t = ClipTokenizer::get();
        assert_eq!(t.byte_ids[usize::from(b'!')], 0);
        assert_eq!(t.byte_end_ids[usize::from(b'!')], 256);
        assert_eq!(
            t.merges.len(),
            MERGES,
            "every merge joins two known symbols"
        );
        // The merges' results fill ids 512 .. START, right below the special tokens.
        let joined: Vec<u32> = t.merges.values().map(|&(_, id)| id).collect();
        assert_eq!(joined.iter().min(), Some(&512));
        assert_eq!(joined.iter().max(), Some(&(START - 1)));
    }

    /// Ids ComfyUI's tokenizer gives (generation.md §4.2, §4.1: real ComfyUI runs).
    #[test]
    fn prompts_give_comfyuis_ids() {
        let t = ClipTokenizer::get();
        assert_eq!(t.encode("text, watermark"), [4160, 267, 2505, 2110]);
        assert_eq!(
            t.encode("beautiful scenery nature glass bottle landscape, , purple galaxy bottle,"),
            [
                1215, 16025, 2625, 3313, 5392, 5727, 267, 267, 5496, 6545, 5392, 267
            ]
        );
        assert_eq!(t.encode("a "), [320]);
        assert_eq!(t.encode("red"), [736]);
        assert_eq!(t.encode(" cat, "), [2368, 267]);
        assert_eq!(t.encode("blue"), [1746]);
        // The escaped segment ` \(x\) [y]` reaches the tokenizer unescaped.
        assert_eq!(t.encode(" (x) [y]"), [263, 343, 264, 314, 344, 316]);
    }

    #[test]
    fn special_tokens_typed_in_the_text_are_kept() {
        let t = ClipTokenizer::get();
        let ids = t.encode("a<|endoftext|>cat");
        assert_eq!(ids, [320, END, 2368]);
        assert_eq!(t.encode(""), Vec::<u32>::new());
    }

    #[test]
    fn normalisation_follows_berts_fallback() {
        let normalise = |text| ClipTokenizer::get().normalise(text);
        // NBSP is a space separator; BEL is a control character and goes.
        assert_eq!(normalise("A\tB\u{a0}C\u{7}D"), "a b cd");
        assert_eq!(normalise("东京 Tower"), "东 京 tower");
        // NFC: e + combining acute becomes é.
        assert_eq!(normalise("Cafe\u{301}"), "café");
        assert_eq!(normalise("  x  "), "x");
    }
}
