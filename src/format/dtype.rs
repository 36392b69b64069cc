//! Element types as safetensors names them, with their byte sizes.
//!
//! Every dtype the safetensors format defines with a whole-byte element size is known here, so a
//! tensor of any of them can be read, sized and passed through a merge byte for byte. Only the
//! floating types F16, BF16, F32 and F64 take part in merge arithmetic (see `is_mergeable`).

use std::fmt;

/// A tensor element type, named as in the safetensors header (`"F16"`, `"I64"`, …).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    Bool,
    U8,
    I8,
    F8E5M2,
    F8E4M3,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    F64,
    I64,
    U64,
}

impl DType {
    /// Every known dtype, in safetensors' own order (by alignment, then name).
    pub const ALL: [DType; 15] = [
        DType::Bool,
        DType::U8,
        DType::I8,
        DType::F8E5M2,
        DType::F8E4M3,
        DType::I16,
        DType::U16,
        DType::F16,
        DType::BF16,
        DType::I32,
        DType::U32,
        DType::F32,
        DType::F64,
        DType::I64,
        DType::U64,
    ];

    /// Bytes per element.
    pub fn size_bytes(self) -> usize {
        match self {
            DType::Bool | DType::U8 | DType::I8 | DType::F8E5M2 | DType::F8E4M3 => 1,
            DType::I16 | DType::U16 | DType::F16 | DType::BF16 => 2,
            DType::I32 | DType::U32 | DType::F32 => 4,
            DType::F64 | DType::I64 | DType::U64 => 8,
        }
    }

    /// The name used in safetensors headers.
    pub fn as_str(self) -> &'static str {
        match self {
            DType::Bool => "BOOL",
            DType::U8 => "U8",
            DType::I8 => "I8",
            DType::F8E5M2 => "F8_E5M2",
            DType::F8E4M3 => "F8_E4M3",
            DType::I16 => "I16",
            DType::U16 => "U16",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I32 => "I32",
            DType::U32 => "U32",
            DType::F32 => "F32",
            DType::F64 => "F64",
            DType::I64 => "I64",
            DType::U64 => "U64",
        }
    }

    /// Parses a safetensors dtype name; `None` for names this build does not know.
    pub fn from_safetensors_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.as_str() == name)
    }

    /// Whether merge arithmetic applies to this dtype: every float, fp8 included (read exactly,
    /// computed in f32). Integers and booleans pass through a merge untouched, as raw bytes.
    pub fn is_mergeable(self) -> bool {
        matches!(
            self,
            DType::F16 | DType::BF16 | DType::F32 | DType::F64 | DType::F8E4M3 | DType::F8E5M2
        )
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sizes_match_safetensors_crate() {
        for d in DType::ALL {
            assert_eq!(DType::from_safetensors_name(d.as_str()), Some(d));
            // The safetensors crate is an independent statement of the same table.
            let theirs: safetensors::Dtype =
                serde_json::from_value(serde_json::Value::String(d.as_str().into()))
                    .expect("safetensors knows every dtype we know");
            assert_eq!(theirs.bitsize() / 8, d.size_bytes(), "{d}");
        }
        assert_eq!(DType::from_safetensors_name("F4"), None);
        assert_eq!(DType::from_safetensors_name("f16"), None);
    }
}
