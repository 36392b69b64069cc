//! JSON text exactly as Python's `json.dumps` writes it with default arguments, and Python's
//! `repr` of floats.
//!
//! ComfyUI stores the `prompt` and `workflow` metadata of saved checkpoints with `json.dumps`:
//! `", "` and `": "` separators, non-ASCII escaped as `\uXXXX` (surrogate pairs above the BMP),
//! and floats in `repr` form (`1.0`, `0.3`, `1e-05`, `1e+16`). Writing the same text makes
//! Amalgam's outputs byte-identical to ComfyUI's, metadata included.

use serde_json::Value;

/// Python's `repr(float)`: the shortest round-tripping digits, in fixed notation for
/// `1e-4 <= |x| < 1e16` (always with a decimal point) and scientific notation otherwise.
pub fn float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let abs = x.abs();
    if abs == 0.0 || (1e-4..1e16).contains(&abs) {
        let s = format!("{x}");
        return if s.contains('.') { s } else { format!("{s}.0") };
    }
    // Rust's `{:e}` gives the same shortest digits: "1.5e16", "1e-5".
    let s = format!("{x:e}");
    let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let sign = if exp < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", exp.abs())
}

/// `json.dumps(value)` with Python's defaults.
pub fn dumps(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

fn write_value(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if n.is_f64() {
                out.push_str(&float_repr(n.as_f64().unwrap_or(f64::NAN)));
            } else {
                out.push_str(&n.to_string());
            }
        }
        Value::String(s) => write_str(out, s),
        Value::Array(a) => {
            out.push('[');
            for (i, item) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(m) => {
            out.push('{');
            for (i, (k, item)) in m.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_str(out, k);
                out.push_str(": ");
                write_value(out, item);
            }
            out.push('}');
        }
    }
}

fn write_str(out: &mut String, s: &str) {
    use std::fmt::Write;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            // CPython's `ensure_ascii` escapes everything outside ' '..='~', DEL (0x7F) included.
            c if !(' '..='~').contains(&c) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `str()` of a JSON value, for error messages (`'text'` quoting is the caller's).
pub fn py_str(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) if n.is_f64() => float_repr(n.as_f64().unwrap_or(f64::NAN)),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => dumps(other),
    }
}

/// Parses JSON as Python's `json.loads` reads it: besides standard JSON, the `NaN`,
/// `Infinity` and `-Infinity` literals `json.dumps` writes for non-finite floats. Those become
/// the strings `"NaN"`, `"Infinity"`, `"-Infinity"` (a JSON value cannot hold them), which
/// Python's `float()` — and so validation — reads back as the same numbers. Standard JSON takes
/// the fast path unchanged. The flag says whether such literals were there (JavaScript's
/// `JSON.parse`, and so ComfyUI's frontend, refuses them).
pub fn loads(text: &[u8]) -> Result<(Value, bool), serde_json::Error> {
    match serde_json::from_slice(text) {
        Ok(v) => Ok((v, false)),
        Err(e) => match quote_non_finite(text) {
            Some(fixed) => serde_json::from_slice(&fixed).map(|v| (v, true)),
            None => Err(e),
        },
    }
}

/// The text with Python's non-finite literals outside strings quoted, or `None` if it has none.
fn quote_non_finite(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() + 16);
    let (mut in_string, mut escaped, mut changed) = (false, false, false);
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        if in_string {
            out.push(b);
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        let literal = [&b"-Infinity"[..], b"Infinity", b"NaN"]
            .into_iter()
            .find(|l| text[i..].starts_with(l));
        match (b, literal) {
            (b'"', _) => {
                in_string = true;
                out.push(b);
                i += 1;
            }
            (_, Some(l)) => {
                out.push(b'"');
                out.extend_from_slice(l);
                out.push(b'"');
                i += l.len();
                changed = true;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn floats_print_like_python_repr() {
        for (x, py) in [
            (1.0, "1.0"),
            (0.3, "0.3"),
            (0.49999999999999956, "0.49999999999999956"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (0.00012, "0.00012"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (123456789012345.6, "123456789012345.6"),
            (-2.5e-7, "-2.5e-07"),
            (0.0, "0.0"),
            (120.0, "120.0"),
            (0.002, "0.002"),
            (1e300, "1e+300"),
        ] {
            assert_eq!(float_repr(x), py, "{x}");
        }
    }

    #[test]
    fn dumps_matches_python_defaults() {
        let v = json!({"3": {"inputs": {"ratio": 0.5, "seed": 156680208700286_u64, "name": "caf\u{e9} \u{1F600}\n\"q\"", "list": [1, 2.0, null, true]}, "class_type": "X"}});
        assert_eq!(
            dumps(&v),
            r#"{"3": {"inputs": {"ratio": 0.5, "seed": 156680208700286, "name": "caf\u00e9 \ud83d\ude00\n\"q\"", "list": [1, 2.0, null, true]}, "class_type": "X"}}"#
        );
    }

    /// Every ASCII code point, then non-ASCII, BMP edge and astral characters: the expected text
    /// is what CPython 3.11's `json.dumps` printed for this string (generated once with
    /// `json.dumps("".join(map(chr, range(0x80))) + "é€\u2028\ufeff\U0001F600\U0001D11E\uffff")`).
    #[test]
    fn strings_escape_exactly_like_python() {
        let s: String = (0u8..0x80)
            .map(char::from)
            .chain("é€\u{2028}\u{feff}\u{1F600}\u{1D11E}\u{ffff}".chars())
            .collect();
        let python = r##""\u0000\u0001\u0002\u0003\u0004\u0005\u0006\u0007\b\t\n\u000b\f\r\u000e\u000f\u0010\u0011\u0012\u0013\u0014\u0015\u0016\u0017\u0018\u0019\u001a\u001b\u001c\u001d\u001e\u001f !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~\u007f\u00e9\u20ac\u2028\ufeff\ud83d\ude00\ud834\udd1e\uffff""##;
        assert_eq!(dumps(&Value::String(s)), python);
    }

    #[test]
    fn python_non_finite_literals_are_read_and_strings_left_alone() {
        let (v, non_finite) = loads(
            br#"{"a": NaN, "b": [Infinity, -Infinity, 1.5], "s": "NaN and Infinity", "e": "q\"NaN"}"#,
        )
        .expect("python json");
        assert!(non_finite);
        assert_eq!(loads(br#"{"s": "NaN"}"#).expect("json"), (json_s(), false));
        assert_eq!(v["a"], "NaN");
        assert_eq!(v["b"], serde_json::json!(["Infinity", "-Infinity", 1.5]));
        assert_eq!(v["s"], "NaN and Infinity");
        assert_eq!(v["e"], "q\"NaN");
        assert!(loads(b"{\"a\": nan}").is_err(), "only Python's spelling");
        fn json_s() -> Value {
            serde_json::json!({"s": "NaN"})
        }
        assert!(loads(b"{\"a\": 1,}").is_err(), "other errors stay errors");
    }
}
