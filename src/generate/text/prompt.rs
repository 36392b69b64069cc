//! From prompt text to CLIP's token batches, as ComfyUI's `SDTokenizer.tokenize_with_weights`
//! does (generation.md §4.1, §4.3): `\(` and `\)` escaped, `(text)` and `(text:1.3)` weights
//! (f64, `((x))` = 1.1·1.1, an explicit weight replaces rather than multiplies), each weighted
//! segment tokenized as one word, then packed into 77-token batches with start, end and padding
//! (a group of 8 or more tokens may be split across batches, a shorter one moves whole).

use super::tokenizer::{ClipTokenizer, END, START};

/// CLIP's sequence length.
pub const MAX_LENGTH: usize = 77;
/// Token groups at least this long may be split across two batches.
const MAX_WORD_LENGTH: usize = 8;

/// A token and its weight.
pub type Weighted = (u32, f64);

/// Why a prompt cannot be tokenized.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PromptError {
    #[error(
        "prompt word \"embedding:{0}\": textual-inversion embeddings are not supported yet; remove it or write the words it stands for"
    )]
    Embedding(String),
}

/// The 77-token batches of `text`, each token with its weight. `pad` is the padding token:
/// the end token for CLIP-L, 0 for OpenCLIP H and G.
pub fn tokenize_with_weights(text: &str, pad: u32) -> Result<Vec<Vec<Weighted>>, PromptError> {
    let tokenizer = ClipTokenizer::get();
    let mut groups: Vec<Vec<Weighted>> = Vec::new();
    for (segment, weight) in token_weights(&escape_important(text), 1.0) {
        let segment = unescape_important(&segment);
        for word in split_embeddings(&segment) {
            if let Some(name) = word.strip_prefix("embedding:") {
                return Err(PromptError::Embedding(name.trim_matches('\n').to_owned()));
            }
            groups.push(
                tokenizer
                    .encode(&word)
                    .into_iter()
                    .map(|t| (t, weight))
                    .collect(),
            );
        }
    }
    Ok(batch(groups, pad))
}

/// `re.split(' embedding:|\nembedding:')`: the pieces after a separator start with
/// `embedding:`; empty pieces are dropped.
fn split_embeddings(segment: &str) -> Vec<String> {
    const SEPARATORS: [&str; 2] = [" embedding:", "\nembedding:"];
    let mut pieces = Vec::new();
    let mut rest = segment;
    let mut prefix = "";
    loop {
        let at = SEPARATORS.iter().filter_map(|sep| rest.find(sep)).min();
        let piece = format!("{prefix}{}", &rest[..at.unwrap_or(rest.len())]);
        if !piece.is_empty() {
            pieces.push(piece);
        }
        let Some(at) = at else { return pieces };
        // Both separators are a space or newline and `embedding:`.
        rest = &rest[at + SEPARATORS[0].len()..];
        prefix = "embedding:";
    }
}

fn escape_important(text: &str) -> String {
    text.replace("\\)", "\0\u{1}").replace("\\(", "\0\u{2}")
}

fn unescape_important(text: &str) -> String {
    text.replace("\0\u{1}", ")").replace("\0\u{2}", "(")
}

/// ComfyUI's `parse_parentheses`, literally: top-level items, unbalanced input included.
fn parse_parentheses(text: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut level = 0i64;
    for c in text.chars() {
        match c {
            '(' => {
                if level == 0 {
                    if !current.is_empty() {
                        items.push(std::mem::take(&mut current));
                    }
                    current.push('(');
                } else {
                    current.push(c);
                }
                level += 1;
            }
            ')' => {
                level -= 1;
                if level == 0 {
                    current.push(')');
                    items.push(std::mem::take(&mut current));
                } else {
                    current.push(c);
                }
            }
            _ => current.push(c),
        }
    }
    if !current.is_empty() {
        items.push(current);
    }
    items
}

/// ComfyUI's `token_weights`: `(x)` multiplies the weight by 1.1, `(x:w)` sets it to `w`.
fn token_weights(text: &str, weight: f64) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for item in parse_parentheses(text) {
        let inner = item
            .strip_prefix('(')
            .and_then(|s| s.strip_suffix(')'))
            .filter(|_| item.chars().count() >= 2);
        match inner {
            Some(inner) => {
                let mut w = weight * 1.1;
                let mut inner = inner;
                if let Some(at) = inner.rfind(':').filter(|&at| at > 0)
                    && let Some(explicit) = python_float(&inner[at + 1..])
                {
                    w = explicit;
                    inner = &inner[..at];
                }
                out.extend(token_weights(inner, w));
            }
            None => out.push((item, weight)),
        }
    }
    out
}

/// Python's `float(text)`: surrounding whitespace, `inf`, `nan`, and single underscores
/// between digits are accepted.
fn python_float(text: &str) -> Option<f64> {
    let t = text.trim();
    let bytes = t.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'_' {
            let digit = |j: Option<&u8>| j.is_some_and(u8::is_ascii_digit);
            if !(digit(i.checked_sub(1).and_then(|j| bytes.get(j))) && digit(bytes.get(i + 1))) {
                return None;
            }
        }
    }
    t.replace('_', "").parse().ok()
}

/// Packs token groups into 77-token batches: `[start, …, end, pad…]`.
fn batch(groups: Vec<Vec<Weighted>>, pad: u32) -> Vec<Vec<Weighted>> {
    let mut batches = Vec::new();
    let mut current: Vec<Weighted> = vec![(START, 1.0)];
    for group in groups {
        let large = group.len() >= MAX_WORD_LENGTH;
        let mut group = &group[..];
        while !group.is_empty() {
            if group.len() + current.len() > MAX_LENGTH - 1 {
                let remaining = MAX_LENGTH - current.len() - 1;
                if large {
                    current.extend_from_slice(&group[..remaining]);
                    current.push((END, 1.0));
                    group = &group[remaining..];
                } else {
                    current.push((END, 1.0));
                    current.extend(std::iter::repeat_n((pad, 1.0), remaining));
                }
                batches.push(std::mem::replace(&mut current, vec![(START, 1.0)]));
            } else {
                current.extend_from_slice(group);
                group = &[];
            }
        }
    }
    current.push((END, 1.0));
    let missing = MAX_LENGTH.saturating_sub(current.len());
    current.extend(std::iter::repeat_n((pad, 1.0), missing));
    batches.push(current);
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_parse_like_comfyui() {
        // generation.md §4.1, from a real ComfyUI run.
        let segments = token_weights(
            &escape_important("a (red:1.3) cat, ((blue)) \\(x\\) [y]"),
            1.0,
        );
        assert_eq!(
            segments,
            [
                ("a ".to_owned(), 1.0),
                ("red".to_owned(), 1.3),
                (" cat, ".to_owned(), 1.0),
                ("blue".to_owned(), 1.2100000000000002),
                (" \0\u{2}x\0\u{1} [y]".to_owned(), 1.0),
            ]
        );
        let batches = tokenize_with_weights("a (red:1.3) cat, ((blue)) \\(x\\) [y]", END)
            .expect("no embeddings");
        let ids: Vec<Weighted> = batches[0][1..12].to_vec();
        assert_eq!(
            ids,
            [
                (320, 1.0),
                (736, 1.3),
                (2368, 1.0),
                (267, 1.0),
                (1746, 1.2100000000000002),
                (263, 1.0),
                (343, 1.0),
                (264, 1.0),
                (314, 1.0),
                (344, 1.0),
                (316, 1.0),
            ]
        );
    }

    #[test]
    fn odd_weights_and_unbalanced_parentheses() {
        assert_eq!(token_weights("(x: 2_0 )", 1.0), [("x".to_owned(), 20.0)]);
        assert_eq!(token_weights("(x:2__0)", 1.0), [("x:2__0".to_owned(), 1.1)]);
        assert_eq!(token_weights("(:2)", 1.0), [(":2".to_owned(), 1.1)]);
        // Python's loop: "(a(b)" is one item, whose inside "a(b" splits into "a" and "(b".
        assert_eq!(
            token_weights("(a(b)", 1.0),
            [("a".to_owned(), 1.1), ("(b".to_owned(), 1.1)]
        );
        // A stray ")" takes the level below zero and stays text.
        assert_eq!(token_weights("a)b", 1.0), [("a)b".to_owned(), 1.0)]);
        assert!(python_float("inf").is_some_and(f64::is_infinite));
        assert_eq!(python_float(" 1e-1 "), Some(0.1));
        assert_eq!(python_float("_1"), None);
    }

    #[test]
    fn batches_are_77_tokens_with_start_end_and_padding() {
        let empty = tokenize_with_weights("", END).expect("empty");
        assert_eq!(empty.len(), 1);
        assert_eq!(empty[0][..2], [(START, 1.0), (END, 1.0)]);
        assert!(empty[0][2..].iter().all(|&t| t == (END, 1.0)));
        let h = tokenize_with_weights("text, watermark", 0).expect("text");
        assert_eq!(
            h[0][..6],
            [
                (START, 1.0),
                (4160, 1.0),
                (267, 1.0),
                (2505, 1.0),
                (2110, 1.0),
                (END, 1.0)
            ]
        );
        assert_eq!(h[0].len(), MAX_LENGTH);
        assert_eq!(h[0][6], (0, 1.0), "OpenCLIP pads with 0");
    }

    /// Synthetic groups of `n` tokens (ids 1..).
    fn groups(sizes: &[usize]) -> Vec<Vec<Weighted>> {
        sizes
            .iter()
            .map(|&n| (1..=n as u32).map(|t| (t, 1.0)).collect())
            .collect()
    }

    #[test]
    fn large_groups_split_and_small_ones_move_whole() {
        // 70 tokens, then 10 (large): 5 of them fill the first batch, 5 start the second.
        let b = batch(groups(&[70, 10]), END);
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].len(), MAX_LENGTH);
        assert_eq!(
            b[0][71..],
            [(1, 1.0), (2, 1.0), (3, 1.0), (4, 1.0), (5, 1.0), (END, 1.0)]
        );
        assert_eq!(
            b[1][..7],
            [
                (START, 1.0),
                (6, 1.0),
                (7, 1.0),
                (8, 1.0),
                (9, 1.0),
                (10, 1.0),
                (END, 1.0)
            ]
        );
        // 70, then 7 (small): the first batch is closed and padded, the 7 move whole.
        let b = batch(groups(&[70, 7]), 0);
        assert_eq!(b.len(), 2);
        assert_eq!(b[0][71], (END, 1.0));
        assert!(b[0][72..].iter().all(|&t| t == (0, 1.0)));
        assert_eq!(b[1][1..8], groups(&[7])[0][..]);
        // A group longer than a batch spans three.
        let b = batch(groups(&[160]), END);
        assert_eq!(b.len(), 3);
        assert!(b.iter().all(|x| x.len() == MAX_LENGTH));
    }

    #[test]
    fn embeddings_are_refused_by_name() {
        assert_eq!(
            tokenize_with_weights("a photo, embedding:EasyNegative", END),
            Err(PromptError::Embedding("EasyNegative".into()))
        );
        assert_eq!(
            split_embeddings("x embedding:a y\nembedding:b"),
            ["x", "embedding:a y", "embedding:b"]
        );
        // At the very start there is no separator: the word is text, as in ComfyUI.
        assert_eq!(split_embeddings("embedding:a"), ["embedding:a"]);
    }
}
