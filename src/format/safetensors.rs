//! The safetensors container: a strict header reader and a streaming, crash-safe writer.
//!
//! Layout: an 8-byte little-endian header length `N`, `N` bytes of UTF-8 JSON, then the tensor
//! data. The reader checks everything the `safetensors` crate checks and what it lets through:
//!
//! * the header length is capped ([`MAX_HEADER_BYTES`]) and must fit in the file;
//! * the header must start with `{` and end with `}` followed only by ASCII spaces (0x20), which
//!   is the padding writers use to align the data to 8 bytes; NULs, tabs or newlines around the
//!   JSON are refused, so two readers can never disagree on where the JSON ends;
//! * every entry is `{"dtype", "shape", "data_offsets"}` with nothing else; `__metadata__` is a
//!   map of strings to strings; no name may appear twice (JSON parsers usually keep the last one
//!   silently, which would let a file show different tensors to different tools);
//! * `shape × dtype size` must equal the byte range, computed with checked arithmetic;
//! * the byte ranges, taken in offset order, must tile the data exactly: they start at 0, have no
//!   gaps and no overlaps, and the last one ends at the end of the file (no trailing bytes).
//!
//! Tensor order is kept as the header lists it. Offsets are never assumed to be aligned: callers
//! get byte slices and convert them with byte-safe reads.
//!
//! The writer computes the whole header first, then takes the tensor bytes in order as a stream,
//! so a caller never needs to hold an output tensor set in memory. It writes to a hidden temporary
//! file beside the destination, syncs it, and moves it into place without ever replacing an
//! existing file; dropped before `finish`, it leaves nothing behind.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use super::dtype::DType;

/// Largest header accepted, as in the `safetensors` crate.
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Key-value metadata from `__metadata__`, in file order.
pub type Metadata = Vec<(String, String)>;

/// One tensor as the header describes it; `begin`/`end` are relative to the start of the data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub begin: u64,
    pub end: u64,
}

/// A parsed and validated header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Absolute file offset where tensor data begins (8 + header length).
    pub data_start: u64,
    pub tensors: Vec<TensorEntry>,
    /// `None` when the file has no `__metadata__` entry at all.
    pub metadata: Option<Metadata>,
}

/// What is wrong with a safetensors file. Paths are added by the caller.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("file is {len} bytes, too short to hold the 8-byte header length")]
    TooShort { len: u64 },
    #[error("header length {claimed} exceeds the {MAX_HEADER_BYTES}-byte limit")]
    HeaderTooLarge { claimed: u64 },
    #[error("header length {claimed} runs past the end of the file ({available} bytes follow it)")]
    HeaderPastEof { claimed: u64, available: u64 },
    #[error("header is not valid UTF-8")]
    NotUtf8,
    #[error("header does not start with '{{' (first byte 0x{first:02x})")]
    BadStart { first: u8 },
    #[error("header JSON must end with '}}' followed only by space padding")]
    BadEnd,
    #[error("header is not valid JSON: {0}")]
    Json(String),
    #[error("tensor name {name:?} appears more than once in the header")]
    DuplicateName { name: String },
    #[error("__metadata__ must map strings to strings: {0}")]
    BadMetadata(String),
    #[error("tensor {name:?}: {problem}")]
    BadEntry { name: String, problem: String },
    #[error("tensor {name:?}: unknown dtype {dtype:?}")]
    UnknownDtype { name: String, dtype: String },
    #[error(
        "tensor {name:?}: shape {shape:?} of {dtype} needs {expected} bytes but data_offsets span {actual}"
    )]
    SizeMismatch {
        name: String,
        shape: Vec<usize>,
        dtype: DType,
        expected: u64,
        actual: u64,
    },
    #[error("tensor {name:?}: shape {shape:?} is too large to address")]
    ShapeOverflow { name: String, shape: Vec<usize> },
    #[error(
        "tensor {name:?} starts at data offset {begin} but the previous tensor ends at {expected} (gap or overlap)"
    )]
    NotContiguous {
        name: String,
        begin: u64,
        expected: u64,
    },
    #[error("tensor data covers {covered} bytes but the file holds {available} bytes of data")]
    DataLengthMismatch { covered: u64, available: u64 },
}

/// Parses and validates the header of a whole safetensors file held in `file` (typically a
/// memory map: only the header's pages are touched).
pub fn parse_header(file: &[u8]) -> Result<Header, HeaderError> {
    let file_len = file.len() as u64;
    let Some(len_bytes) = file.get(..8) else {
        return Err(HeaderError::TooShort { len: file_len });
    };
    let mut le = [0u8; 8];
    le.copy_from_slice(len_bytes);
    let claimed = u64::from_le_bytes(le);
    if claimed > MAX_HEADER_BYTES {
        return Err(HeaderError::HeaderTooLarge { claimed });
    }
    let available = file_len - 8;
    if claimed > available {
        return Err(HeaderError::HeaderPastEof { claimed, available });
    }
    // Both fit in usize: claimed <= MAX_HEADER_BYTES and the slice exists.
    let data_start = 8 + claimed;
    let raw = &file[8..data_start as usize];
    let tensors_and_meta = parse_json(raw)?;
    let data_len = file_len - data_start;
    validate_layout(&tensors_and_meta.0, data_len)?;
    Ok(Header {
        data_start,
        tensors: tensors_and_meta.0,
        metadata: tensors_and_meta.1,
    })
}

fn parse_json(raw: &[u8]) -> Result<(Vec<TensorEntry>, Option<Metadata>), HeaderError> {
    let text = std::str::from_utf8(raw).map_err(|_| HeaderError::NotUtf8)?;
    match text.as_bytes().first() {
        Some(b'{') => {}
        Some(&first) => return Err(HeaderError::BadStart { first }),
        None => return Err(HeaderError::BadStart { first: 0 }),
    }
    let json = text.trim_end_matches(' ');
    if !json.ends_with('}') {
        return Err(HeaderError::BadEnd);
    }
    let mut de = serde_json::Deserializer::from_str(json);
    let entries = de
        .deserialize_map(OrderedUniqueMap)
        .map_err(|e| HeaderError::Json(e.to_string()))?;
    de.end().map_err(|e| HeaderError::Json(e.to_string()))?;
    let entries = entries?;

    let mut tensors = Vec::with_capacity(entries.len());
    let mut metadata = None;
    for (name, value) in entries {
        if name == "__metadata__" {
            metadata = Some(parse_metadata(value)?);
        } else {
            tensors.push(parse_entry(name, value)?);
        }
    }
    Ok((tensors, metadata))
}

fn parse_metadata(value: Value) -> Result<Metadata, HeaderError> {
    let Value::Object(map) = value else {
        return Err(HeaderError::BadMetadata("it is not an object".into()));
    };
    map.into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k, s)),
            other => Err(HeaderError::BadMetadata(format!(
                "value of {k:?} is {}, not a string",
                json_kind(&other)
            ))),
        })
        .collect()
}

fn parse_entry(name: String, value: Value) -> Result<TensorEntry, HeaderError> {
    let bad = |problem: String| HeaderError::BadEntry {
        name: name.clone(),
        problem,
    };
    let Value::Object(map) = value else {
        return Err(bad(format!(
            "entry is {}, not an object",
            json_kind(&value)
        )));
    };
    if let Some(extra) = map
        .keys()
        .find(|k| !matches!(k.as_str(), "dtype" | "shape" | "data_offsets"))
    {
        return Err(bad(format!("unexpected field {extra:?}")));
    }
    let dtype_name = match map.get("dtype") {
        Some(Value::String(s)) => s.as_str(),
        Some(other) => return Err(bad(format!("dtype is {}", json_kind(other)))),
        None => return Err(bad("missing dtype".into())),
    };
    let Some(dtype) = DType::from_safetensors_name(dtype_name) else {
        return Err(HeaderError::UnknownDtype {
            name,
            dtype: dtype_name.to_owned(),
        });
    };
    let shape = match map.get("shape") {
        Some(Value::Array(dims)) => dims
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| bad("shape must be a list of non-negative integers".into()))?,
        Some(other) => return Err(bad(format!("shape is {}", json_kind(other)))),
        None => return Err(bad("missing shape".into())),
    };
    let (begin, end) = match map.get("data_offsets") {
        Some(Value::Array(o)) if o.len() == 2 => match (o[0].as_u64(), o[1].as_u64()) {
            (Some(b), Some(e)) => (b, e),
            _ => return Err(bad("data_offsets must be two non-negative integers".into())),
        },
        Some(_) => return Err(bad("data_offsets must be [begin, end]".into())),
        None => return Err(bad("missing data_offsets".into())),
    };
    if end < begin {
        return Err(bad(format!(
            "data_offsets end {end} is before begin {begin}"
        )));
    }
    let expected = byte_len(dtype, &shape).ok_or_else(|| HeaderError::ShapeOverflow {
        name: name.clone(),
        shape: shape.clone(),
    })?;
    if expected != end - begin {
        return Err(HeaderError::SizeMismatch {
            name,
            shape,
            dtype,
            expected,
            actual: end - begin,
        });
    }
    Ok(TensorEntry {
        name,
        dtype,
        shape,
        begin,
        end,
    })
}

/// Byte length of a tensor, or `None` if it overflows.
pub fn byte_len(dtype: DType, shape: &[usize]) -> Option<u64> {
    shape.iter().try_fold(dtype.size_bytes() as u64, |acc, &d| {
        acc.checked_mul(u64::try_from(d).ok()?)
    })
}

fn validate_layout(tensors: &[TensorEntry], data_len: u64) -> Result<(), HeaderError> {
    let mut by_offset: Vec<&TensorEntry> = tensors.iter().collect();
    by_offset.sort_by_key(|t| (t.begin, t.end));
    let mut expected = 0u64;
    for t in by_offset {
        if t.begin != expected {
            return Err(HeaderError::NotContiguous {
                name: t.name.clone(),
                begin: t.begin,
                expected,
            });
        }
        expected = t.end;
    }
    if expected != data_len {
        return Err(HeaderError::DataLengthMismatch {
            covered: expected,
            available: data_len,
        });
    }
    Ok(())
}

/// How a JSON value is described in error messages (`a string`, `an object`, …).
pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Deserialises a JSON object into its entries in order, refusing a repeated key.
struct OrderedUniqueMap;

impl<'de> Visitor<'de> for OrderedUniqueMap {
    // The inner Result carries a duplicate-name error out of serde without losing its type.
    type Value = Result<Vec<(String, Value)>, HeaderError>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut seen = std::collections::HashSet::new();
        let mut entries = Vec::new();
        let mut duplicate = None;
        // The whole map is read even after a repeat: serde_json checks that the map was consumed,
        // and stopping early would report a confusing JSON error instead of the repeated name.
        while let Some(key) = map.next_key::<String>()? {
            let value: Value = map.next_value()?;
            if !seen.insert(key.clone()) {
                duplicate.get_or_insert(key);
                continue;
            }
            entries.push((key, value));
        }
        Ok(match duplicate {
            Some(name) => Err(HeaderError::DuplicateName { name }),
            None => Ok(entries),
        })
    }
}

impl From<de::value::Error> for HeaderError {
    fn from(e: de::value::Error) -> Self {
        HeaderError::Json(e.to_string())
    }
}

// ------------------------------------------------------------------------------------------------
// Writing

/// Name, dtype and shape of one tensor to be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, dtype: DType, shape: &[usize]) -> Self {
        TensorSpec {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
        }
    }

    /// Byte length of this tensor's data; `None` if the shape overflows.
    pub fn byte_len(&self) -> Option<u64> {
        byte_len(self.dtype, &self.shape)
    }
}

/// Why a safetensors file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("tensor {name:?} appears twice in the output")]
    DuplicateName { name: String },
    #[error("tensor {name:?}: shape {shape:?} is too large")]
    ShapeOverflow { name: String, shape: Vec<usize> },
    #[error("header would be {len} bytes, over the {MAX_HEADER_BYTES}-byte limit")]
    HeaderTooLarge { len: u64 },
    #[error("{written} bytes of tensor data were given but the header declares {expected}")]
    WrongDataLength { expected: u64, written: u64 },
    #[error("refusing to overwrite existing file {}", path.display())]
    Exists { path: PathBuf },
    #[error("cannot write {}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
}

/// Builds the header bytes (length prefix included, JSON padded with spaces so the data starts
/// 8-byte aligned) for tensors laid out back to back in the given order.
pub fn encode_header(tensors: &[TensorSpec], metadata: &Metadata) -> Result<Vec<u8>, WriteError> {
    let mut seen = std::collections::HashSet::new();
    let mut json = serde_json::Map::new();
    if !metadata.is_empty() {
        let meta: serde_json::Map<String, Value> = metadata
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        json.insert("__metadata__".into(), Value::Object(meta));
    }
    let mut offset = 0u64;
    for t in tensors {
        if t.name == "__metadata__" || !seen.insert(t.name.as_str()) {
            return Err(WriteError::DuplicateName {
                name: t.name.clone(),
            });
        }
        let len = t.byte_len().ok_or_else(|| WriteError::ShapeOverflow {
            name: t.name.clone(),
            shape: t.shape.clone(),
        })?;
        let end = offset
            .checked_add(len)
            .ok_or_else(|| WriteError::ShapeOverflow {
                name: t.name.clone(),
                shape: t.shape.clone(),
            })?;
        json.insert(
            t.name.clone(),
            serde_json::json!({"dtype": t.dtype.as_str(), "shape": t.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut body = serde_json::to_vec(&Value::Object(json)).map_err(|e| WriteError::Io {
        path: PathBuf::new(),
        error: io::Error::other(e),
    })?;
    while (8 + body.len()) % 8 != 0 {
        body.push(b' ');
    }
    let len = body.len() as u64;
    if len > MAX_HEADER_BYTES {
        return Err(WriteError::HeaderTooLarge { len });
    }
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// A safetensors file being written: header first, then tensor bytes streamed in order.
///
/// The bytes go to a hidden temporary file in the destination folder. [`PendingFile::finish`]
/// checks that exactly the declared number of bytes arrived, syncs, and moves the file to its
/// final name, refusing to replace a file that appeared meanwhile. Dropping a `PendingFile`
/// (on error or cancel) deletes the temporary file.
pub struct PendingFile {
    out: BufWriter<File>,
    temp: tempfile::TempPath,
    final_path: PathBuf,
    data_expected: u64,
    data_written: u64,
    /// File offset up to which writeback has been started.
    flushed_to: u64,
    header_len: u64,
}

/// Every this many bytes, writeback of what was written is started (Linux), so the disk works
/// while the rest is computed and the final sync only waits for the tail.
const WRITEBACK_WINDOW: u64 = 64 << 20;

/// Prefix of the temporary files the writer creates, so stray ones can be recognised and cleaned.
pub const TEMP_PREFIX: &str = ".amalgam-partial-";

impl PendingFile {
    /// Creates the temporary file next to `final_path` and writes the header.
    pub fn create(
        final_path: &Path,
        tensors: &[TensorSpec],
        metadata: &Metadata,
    ) -> Result<PendingFile, WriteError> {
        let header = encode_header(tensors, metadata)?;
        let data_expected = tensors
            .iter()
            .map(|t| t.byte_len().unwrap_or(0))
            .sum::<u64>();
        if final_path.exists() {
            return Err(WriteError::Exists {
                path: final_path.to_owned(),
            });
        }
        let dir = match final_path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let io_err = |error| WriteError::Io {
            path: final_path.to_owned(),
            error,
        };
        let mut builder = tempfile::Builder::new();
        builder.prefix(TEMP_PREFIX).suffix(".tmp");
        // A saved checkpoint is an ordinary file: 0666 less the umask, not tempfile's private 0600.
        #[cfg(unix)]
        builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
        let temp = builder.tempfile_in(dir).map_err(io_err)?;
        let (file, temp) = temp.into_parts();
        // Held until the file is closed — by the process ending too, however it ends — so a
        // later start can tell a crashed save's leftover from a save in progress. Filesystems
        // without locks fall back to the age rule in `clean_stray_temp_files`.
        let _ = file.try_lock();
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&header).map_err(io_err)?;
        Ok(PendingFile {
            out,
            temp,
            final_path: final_path.to_owned(),
            data_expected,
            data_written: 0,
            flushed_to: 0,
            header_len: header.len() as u64,
        })
    }

    /// Appends tensor bytes; tensors are written back to back in the order they were declared.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), WriteError> {
        let written = self.data_written + bytes.len() as u64;
        if written > self.data_expected {
            return Err(WriteError::WrongDataLength {
                expected: self.data_expected,
                written,
            });
        }
        self.out.write_all(bytes).map_err(|error| WriteError::Io {
            path: self.final_path.clone(),
            error,
        })?;
        self.data_written = written;
        let end = self.header_len + written;
        if end - self.flushed_to >= WRITEBACK_WINDOW {
            self.start_writeback(end)?;
        }
        Ok(())
    }

    /// Starts writing back everything up to `end` without waiting for it (Linux: POSIX_FADV_
    /// DONTNEED on dirty pages queues them for writeback and later drops them from the page
    /// cache, so a large save neither stalls at the end nor evicts the inputs). A no-op
    /// elsewhere.
    fn start_writeback(&mut self, end: u64) -> Result<(), WriteError> {
        #[cfg(target_os = "linux")]
        {
            self.out.flush().map_err(|error| WriteError::Io {
                path: self.final_path.clone(),
                error,
            })?;
            let len = std::num::NonZeroU64::new(end - self.flushed_to);
            // Advice is best effort: a filesystem that ignores it only loses the overlap.
            let _ = rustix::fs::fadvise(
                self.out.get_ref(),
                self.flushed_to,
                len,
                rustix::fs::Advice::DontNeed,
            );
        }
        self.flushed_to = end;
        Ok(())
    }

    /// Where the file will appear once finished.
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    /// Syncs and moves the file into place; returns its size in bytes.
    pub fn finish(self) -> Result<u64, WriteError> {
        if self.data_written != self.data_expected {
            return Err(WriteError::WrongDataLength {
                expected: self.data_expected,
                written: self.data_written,
            });
        }
        let path = self.final_path.clone();
        let io_err = |error| WriteError::Io {
            path: path.clone(),
            error,
        };
        let file = self.out.into_inner().map_err(|e| io_err(e.into_error()))?;
        file.sync_all().map_err(io_err)?;
        let size = file.metadata().map_err(io_err)?.len();
        // On Unix the file stays open, and so locked, until it has its final name: a cleaner
        // started meanwhile must not take it for a crashed save's leftover. Windows cannot
        // rename a file that is open.
        #[cfg(not(unix))]
        drop(file);
        self.temp.persist_noclobber(&path).map_err(|e| {
            if e.error.kind() == io::ErrorKind::AlreadyExists {
                WriteError::Exists { path: path.clone() }
            } else {
                io_err(e.error)
            }
        })?;
        // Make the rename itself durable.
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty())
            && let Ok(d) = File::open(dir)
        {
            let _ = d.sync_all();
        }
        #[cfg(unix)]
        drop(file);
        Ok(size)
    }
}

/// Writes a whole small file at once (samples, tests): `data` yields each tensor's bytes in order.
pub fn write_file<'a>(
    path: &Path,
    tensors: &[TensorSpec],
    metadata: &Metadata,
    data: impl IntoIterator<Item = &'a [u8]>,
) -> Result<u64, WriteError> {
    let mut file = PendingFile::create(path, tensors, metadata)?;
    for bytes in data {
        file.write(bytes)?;
    }
    file.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_file(json: &str, data_len: usize) -> Vec<u8> {
        let mut v = (json.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(json.as_bytes());
        v.extend(std::iter::repeat_n(0u8, data_len));
        v
    }

    #[test]
    fn accepts_valid_header_with_padding_and_keeps_order() {
        let json = r#"{"b":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"__metadata__":{"k":"v"},"a":{"dtype":"I64","shape":[1,1],"data_offsets":[4,12]}}    "#;
        let h = parse_header(&header_file(json, 12)).expect("valid");
        assert_eq!(h.tensors[0].name, "b");
        assert_eq!(h.tensors[1].name, "a");
        assert_eq!(h.tensors[1].dtype, DType::I64);
        assert_eq!(h.metadata, Some(vec![("k".into(), "v".into())]));
        assert_eq!(h.data_start, 8 + json.len() as u64);
    }

    #[test]
    fn accepts_empty_and_scalar_tensors() {
        let json = r#"{"v_pred":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"s":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}"#;
        let h = parse_header(&header_file(json, 4)).expect("valid");
        assert_eq!(h.tensors.len(), 2);
    }

    fn err(json: &str, data_len: usize) -> HeaderError {
        parse_header(&header_file(json, data_len)).expect_err("must be refused")
    }

    #[test]
    fn refuses_what_the_crate_misses_and_what_it_catches() {
        let t = r#""dtype":"F16","shape":[2],"data_offsets":[0,4]"#;
        assert!(matches!(
            err(&format!(r#"{{"a":{{{t}}},"a":{{{t}}}}}"#), 4),
            HeaderError::DuplicateName { .. }
        ));
        // Not the last entry either: the repeat is named, not a JSON error about the rest.
        let b = r#""dtype":"F16","shape":[2],"data_offsets":[4,8]"#;
        assert!(matches!(
            err(&format!(r#"{{"a":{{{t}}},"a":{{{t}}},"b":{{{b}}}}}"#), 8),
            HeaderError::DuplicateName { ref name } if name == "a"
        ));
        assert!(matches!(
            err(&format!(r#" {{"a":{{{t}}}}}"#), 4),
            HeaderError::BadStart { first: b' ' }
        ));
        assert!(matches!(
            err(&format!("{{\"a\":{{{t}}}}}\0\0\0"), 4),
            HeaderError::BadEnd
        ));
        assert!(matches!(
            err(&format!(r#"{{"a":{{{t}}}}}"#), 5),
            HeaderError::DataLengthMismatch { .. }
        ));
        assert!(matches!(
            err(
                r#"{"a":{"dtype":"F16","shape":[3],"data_offsets":[0,4]}}"#,
                4
            ),
            HeaderError::SizeMismatch { .. }
        ));
        assert!(matches!(
            err(
                r#"{"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"b":{"dtype":"F16","shape":[2],"data_offsets":[2,6]}}"#,
                6
            ),
            HeaderError::NotContiguous { .. }
        ));
        assert!(matches!(
            err(
                r#"{"a":{"dtype":"F16","shape":[2],"data_offsets":[4,8]}}"#,
                8
            ),
            HeaderError::NotContiguous { .. }
        ));
        assert!(matches!(
            err(
                r#"{"a":{"dtype":"F16","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,4]}}"#,
                4
            ),
            HeaderError::ShapeOverflow { .. }
        ));
        assert!(matches!(
            err(
                r#"{"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,4]}}"#,
                4
            ),
            HeaderError::UnknownDtype { .. }
        ));
        assert!(matches!(
            err(&format!(r#"{{"a":{{{t},"extra":1}}}}"#), 4),
            HeaderError::BadEntry { .. }
        ));
        assert!(matches!(
            err(&format!(r#"{{"__metadata__":{{"k":1}},"a":{{{t}}}}}"#), 4),
            HeaderError::BadMetadata(_)
        ));
        assert!(matches!(err("{not json}", 0), HeaderError::Json(_)));
    }

    #[test]
    fn refuses_bad_lengths() {
        assert_eq!(
            parse_header(&[1, 2, 3]),
            Err(HeaderError::TooShort { len: 3 })
        );
        let mut f = u64::MAX.to_le_bytes().to_vec();
        f.extend_from_slice(b"{}");
        assert!(matches!(
            parse_header(&f),
            Err(HeaderError::HeaderTooLarge { .. })
        ));
        let mut f = 1000u64.to_le_bytes().to_vec();
        f.extend_from_slice(b"{}");
        assert_eq!(
            parse_header(&f),
            Err(HeaderError::HeaderPastEof {
                claimed: 1000,
                available: 2
            })
        );
    }

    #[test]
    fn written_file_reads_back_here_and_in_the_safetensors_crate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out.safetensors");
        let specs = [
            TensorSpec::new("w", DType::F16, &[2, 3]),
            TensorSpec::new("ids", DType::I64, &[1, 2]),
            TensorSpec::new("v_pred", DType::F32, &[0]),
        ];
        let w: Vec<u8> = (0u8..12).collect();
        let ids: Vec<u8> = (100u8..116).collect();
        let meta = vec![("prompt".to_string(), "{\"a\": 1}".to_string())];
        let size = write_file(&path, &specs, &meta, [&w[..], &ids[..], &[][..]]).expect("write");
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(size, bytes.len() as u64);
        assert_eq!(
            (8 + u64::from_le_bytes(bytes[..8].try_into().expect("8"))) % 8,
            0
        );
        let h = parse_header(&bytes).expect("parse own output");
        assert_eq!(h.metadata, Some(meta));
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("crate reads it");
        assert_eq!(st.tensor("w").expect("w").data(), &w[..]);
        assert_eq!(st.tensor("ids").expect("ids").data(), &ids[..]);
        assert_eq!(st.tensor("ids").expect("ids").shape(), &[1, 2]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // Same mode as any file the user creates (0666 less the umask), not 0600.
            let reference = dir.path().join("reference");
            std::fs::write(&reference, b"").expect("reference");
            let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode(&path), mode(&reference));
            std::fs::remove_file(&reference).expect("rm");
        }
        // Nothing else is left in the folder.
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1);
    }

    #[test]
    fn writer_never_overwrites_and_leaves_no_temp_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.safetensors");
        std::fs::write(&path, b"keep").expect("seed");
        let specs = [TensorSpec::new("a", DType::U8, &[1])];
        assert!(matches!(
            write_file(&path, &specs, &vec![], [&[1u8][..]]),
            Err(WriteError::Exists { .. })
        ));
        assert_eq!(std::fs::read(&path).expect("read"), b"keep");

        let other = dir.path().join("y.safetensors");
        let mut pending = PendingFile::create(&other, &specs, &vec![]).expect("create");
        assert!(pending.write(&[1, 2]).is_err(), "more bytes than declared");
        drop(pending);
        let short = PendingFile::create(&other, &specs, &vec![]).expect("create");
        assert!(matches!(
            short.finish(),
            Err(WriteError::WrongDataLength { .. })
        ));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("x.safetensors")]);
    }
}
