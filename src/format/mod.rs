//! Bytes on disk: checkpoint containers, their tensors and metadata.
//!
//! [`TensorFile::open`] memory-maps a checkpoint, recognises its container by content (not by
//! extension) — safetensors, PyTorch zip, legacy PyTorch pickle — and yields one table of
//! tensors: name, dtype, shape and the byte range in the file, in the file's own order. Opening
//! reads only the header (or pickle); tensor bytes are touched when asked for, so inspecting a
//! multi-gigabyte file costs milliseconds.
//!
//! Tensor bytes are handed out as `&[u8]` with no alignment promise: some writers put data at odd
//! offsets, so every conversion must be byte-safe.

pub mod dtype;
pub mod fp8;
pub mod pickle;
pub mod png;
pub mod pyjson;
pub mod raster;
pub mod safetensors;
pub mod torch;

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

pub use dtype::DType;
pub use safetensors::Metadata;

/// Which container a checkpoint file uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Container {
    Safetensors,
    TorchZip,
    TorchLegacy,
}

impl Container {
    pub fn as_str(self) -> &'static str {
        match self {
            Container::Safetensors => "safetensors",
            Container::TorchZip => "pytorch-zip",
            Container::TorchLegacy => "pytorch-legacy",
        }
    }
}

/// One tensor of a checkpoint file: its bytes are `offset .. offset + len` of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorRecord {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub offset: u64,
    pub len: u64,
}

impl TensorRecord {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Why a checkpoint file could not be read. Always names the file.
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {}", path.display())]
pub struct ReadError {
    pub path: PathBuf,
    pub kind: ReadErrorKind,
}

/// What was wrong with the file.
#[derive(Debug, thiserror::Error)]
pub enum ReadErrorKind {
    #[error("cannot read file ({0})")]
    Io(io::Error),
    #[error("no such file")]
    NotFound,
    #[error("is a directory, not a checkpoint file")]
    IsDirectory,
    #[error("file is empty (0 bytes)")]
    Empty,
    #[error("not a checkpoint: neither safetensors nor a PyTorch zip or pickle file")]
    UnknownFormat,
    #[error(
        "a JSON file (a workflow or API prompt?), not a checkpoint: open it in the app or with `amalgam validate` / `amalgam run`"
    )]
    Json,
    #[error("invalid safetensors file: {0}")]
    Safetensors(safetensors::HeaderError),
    #[error("unsafe or invalid PyTorch pickle: {0}")]
    Pickle(pickle::PickleError),
    #[error("invalid PyTorch zip archive: {0}")]
    Zip(String),
    #[error("invalid PyTorch checkpoint: {0}")]
    Torch(String),
    #[error("tensor name {0:?} appears more than once")]
    DuplicateName(String),
}

from_printed_cause!(
    ReadErrorKind::Io(io::Error),
    ReadErrorKind::Safetensors(safetensors::HeaderError),
    ReadErrorKind::Pickle(pickle::PickleError),
);

/// An open, memory-mapped checkpoint file and its tensor table.
pub struct TensorFile {
    path: PathBuf,
    container: Container,
    map: Mmap,
    tensors: Vec<TensorRecord>,
    index: HashMap<String, usize>,
    metadata: Option<Metadata>,
}

impl std::fmt::Debug for TensorFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorFile")
            .field("path", &self.path)
            .field("container", &self.container)
            .field("tensors", &self.tensors.len())
            .finish_non_exhaustive()
    }
}

impl TensorFile {
    /// Opens and validates a checkpoint file. Reads the header only.
    pub fn open(path: &Path) -> Result<TensorFile, ReadError> {
        let err = |kind| ReadError {
            path: path.to_owned(),
            kind,
        };
        let file = File::open(path).map_err(|e| {
            err(if e.kind() == io::ErrorKind::NotFound {
                ReadErrorKind::NotFound
            } else {
                ReadErrorKind::Io(e)
            })
        })?;
        let meta = file.metadata().map_err(|e| err(e.into()))?;
        if meta.is_dir() {
            return Err(err(ReadErrorKind::IsDirectory));
        }
        if meta.len() == 0 {
            return Err(err(ReadErrorKind::Empty));
        }
        let map = map_file(&file).map_err(|e| err(e.into()))?;
        let (container, tensors, metadata) = read_table(&map).map_err(err)?;
        let index = index_by_name(&tensors).map_err(err)?;
        Ok(TensorFile {
            path: path.to_owned(),
            container,
            map,
            tensors,
            index,
            metadata,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn container(&self) -> Container {
        self.container
    }
    /// Tensors in the file's own order.
    pub fn tensors(&self) -> &[TensorRecord] {
        &self.tensors
    }
    pub fn get(&self, name: &str) -> Option<&TensorRecord> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }
    /// `__metadata__` of a safetensors file; `None` for other containers or when absent.
    pub fn metadata(&self) -> Option<&Metadata> {
        self.metadata.as_ref()
    }
    /// Size of the file in bytes.
    pub fn file_len(&self) -> u64 {
        self.map.len() as u64
    }
    /// The raw little-endian bytes of a tensor of this file (no alignment guarantee).
    pub fn bytes(&self, t: &TensorRecord) -> &[u8] {
        // Ranges were checked against the file length when the table was built.
        let start = usize::try_from(t.offset).unwrap_or(usize::MAX);
        let end = start.saturating_add(usize::try_from(t.len).unwrap_or(usize::MAX));
        self.map.get(start..end).unwrap_or_default()
    }
    /// Reads a float tensor into f32 values (for small tensors such as biases).
    pub fn read_f32(&self, t: &TensorRecord) -> Option<Vec<f32>> {
        let b = self.bytes(t);
        Some(match t.dtype {
            DType::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::F16 => b
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::BF16 => b
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::F64 => b
                .chunks_exact(8)
                .map(|c| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(c);
                    f64::from_le_bytes(a) as f32
                })
                .collect(),
            _ => return None,
        })
    }
}

/// Reads exactly `buf.len()` bytes at `offset` of `file` (a positioned read: no shared cursor,
/// so threads can read one file at once, and no mapped pages held afterwards).
pub fn read_exact_at(file: &File, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
    }
    #[cfg(windows)]
    {
        let mut done = 0;
        while done < buf.len() {
            let n = std::os::windows::fs::FileExt::seek_read(
                file,
                &mut buf[done..],
                offset + done as u64,
            )?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            done += n;
        }
        Ok(())
    }
}

#[allow(unsafe_code)]
fn map_file(file: &File) -> io::Result<Mmap> {
    // SAFETY: the file is opened read-only and the map is only ever read. The remaining hazard of
    // any file mapping — another process truncating the file while it is mapped, which would
    // fault on access — is documented in the README; Amalgam itself never writes to a file it has
    // mapped (outputs go to new temporary files).
    unsafe { Mmap::map(file) }
}

/// A checkpoint's container, tensor table and safetensors metadata.
pub type Table = (Container, Vec<TensorRecord>, Option<Metadata>);

/// Looks tensors up by name, refusing a name that appears twice.
fn index_by_name(tensors: &[TensorRecord]) -> Result<HashMap<String, usize>, ReadErrorKind> {
    let mut index = HashMap::with_capacity(tensors.len());
    for (i, t) in tensors.iter().enumerate() {
        if index.insert(t.name.clone(), i).is_some() {
            return Err(ReadErrorKind::DuplicateName(t.name.clone()));
        }
    }
    Ok(index)
}

/// Reads the tensor table of a whole checkpoint file held in memory, exactly as
/// [`TensorFile::open`] does after mapping it (duplicate names included). Every record's byte
/// range lies inside `bytes`.
pub fn read_table_bytes(bytes: &[u8]) -> Result<Table, ReadErrorKind> {
    let table = read_table(bytes)?;
    index_by_name(&table.1)?;
    Ok(table)
}

/// Text starting with `{` whose first 8 bytes, read as a safetensors header length, do not fit
/// in the file: JSON, not a checkpoint. (JSON indented by one space has `{` at byte 8 too, which
/// is how safetensors marks its header; the length tells them apart. A real header whose length
/// happens to begin with the byte `{` fits in its file.)
fn looks_like_json(map: &[u8]) -> bool {
    let starts_like_json = map
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{' || *b == b'[');
    let header_fits = map.len() >= 8 && {
        let mut le = [0u8; 8];
        le.copy_from_slice(&map[..8]);
        u64::from_le_bytes(le) <= (map.len() as u64).saturating_sub(8)
    };
    starts_like_json && !header_fits
}

fn read_table(map: &[u8]) -> Result<Table, ReadErrorKind> {
    if map.starts_with(b"PK\x03\x04") || map.starts_with(b"PK\x05\x06") {
        return Ok((Container::TorchZip, torch::read_zip(map)?, None));
    }
    if torch::is_legacy(map) {
        return Ok((Container::TorchLegacy, torch::read_legacy(map)?, None));
    }
    if looks_like_json(map) {
        return Err(ReadErrorKind::Json);
    }
    if map.len() >= 9 && map[8] == b'{' || map.len() < 9 && !map.starts_with(b"\x80") {
        let header = safetensors::parse_header(map)?;
        let records = header
            .tensors
            .into_iter()
            .map(|t| TensorRecord {
                offset: header.data_start + t.begin,
                len: t.end - t.begin,
                name: t.name,
                dtype: t.dtype,
                shape: t.shape,
            })
            .collect();
        return Ok((Container::Safetensors, records, header.metadata));
    }
    if map.starts_with(b"\x80") {
        // A bare pickle that is not torch's: run it through the safe reader for a precise error.
        pickle::load(map)?;
        return Err(ReadErrorKind::Torch(
            "a plain pickle without tensor storage; not a PyTorch checkpoint".into(),
        ));
    }
    // Anything else that looks like a length-prefixed header gets the safetensors diagnosis.
    let looks_like_header = map.len() >= 8 && {
        let mut le = [0u8; 8];
        le.copy_from_slice(&map[..8]);
        u64::from_le_bytes(le) < (1 << 40)
    };
    if looks_like_header {
        return Err(safetensors::parse_header(map)
            .err()
            .map_or(ReadErrorKind::UnknownFormat, ReadErrorKind::Safetensors));
    }
    Err(ReadErrorKind::UnknownFormat)
}
