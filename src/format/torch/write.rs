//! Writing PyTorch files — the same structures `torch.save(state_dict)` produces, zip and
//! legacy — for tests and fuzzing only (the `testing` feature): Amalgam never writes pickles.

use std::fs::File;
use std::io;

use super::LEGACY_MAGIC;
use crate::format::DType;

/// A tensor to write into a PyTorch file.
#[derive(Clone, Copy, Debug)]
pub struct TorchTensor<'a> {
    pub name: &'a str,
    pub dtype: DType,
    pub shape: &'a [usize],
    pub data: &'a [u8],
}

fn storage_type_name(dtype: DType) -> Option<&'static str> {
    Some(match dtype {
        DType::F32 => "FloatStorage",
        DType::F16 => "HalfStorage",
        DType::BF16 => "BFloat16Storage",
        DType::F64 => "DoubleStorage",
        DType::I64 => "LongStorage",
        DType::I32 => "IntStorage",
        DType::I16 => "ShortStorage",
        DType::I8 => "CharStorage",
        DType::U8 => "ByteStorage",
        DType::Bool => "BoolStorage",
        _ => return None,
    })
}

struct PickleWriter(Vec<u8>);

impl PickleWriter {
    fn op(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }
    fn str(&mut self, s: &str) {
        self.0.push(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }
    fn int(&mut self, v: i64) {
        self.0.extend_from_slice(&[0x8a, 8]);
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn global(&mut self, module: &str, name: &str) {
        self.0.push(b'c');
        self.0
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    }
    fn int_tuple(&mut self, v: &[usize]) {
        self.op(b"(");
        for &d in v {
            self.int(d as i64);
        }
        self.op(b"t");
    }
    fn ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.op(b")R");
    }
}

/// Encodes the object pickle of a state dict whose tensor `i` lives in storage key `i`.
/// `legacy` adds the sixth (view metadata) field legacy persistent ids carry; `wrap` nests the
/// state dict under `state_dict` beside a step counter, as training checkpoints do.
fn encode_state_dict(tensors: &[TorchTensor], legacy: bool, wrap: bool) -> io::Result<Vec<u8>> {
    let mut w = PickleWriter(Vec::new());
    w.op(b"\x80\x02");
    if wrap {
        w.op(b"}(");
        w.str("global_step");
        w.int(470_000);
        w.str("state_dict");
    }
    w.ordered_dict();
    w.op(b"(");
    for (i, t) in tensors.iter().enumerate() {
        let storage = storage_type_name(t.dtype).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} has no torch storage", t.dtype),
            )
        })?;
        let numel: usize = t.shape.iter().product();
        w.str(t.name);
        w.global("torch._utils", "_rebuild_tensor_v2");
        w.op(b"((");
        w.str("storage");
        w.global("torch", storage);
        w.str(&i.to_string());
        w.str("cpu");
        w.int(numel as i64);
        if legacy {
            w.op(b"N");
        }
        w.op(b"tQ");
        w.int(0);
        w.int_tuple(t.shape);
        let mut stride = vec![1usize; t.shape.len()];
        for d in (0..t.shape.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * t.shape[d + 1];
        }
        w.int_tuple(&stride);
        w.op(b"\x89");
        w.ordered_dict();
        w.op(b"tR");
    }
    w.op(b"u}");
    w.str("_metadata");
    w.ordered_dict();
    w.op(b"sb");
    if wrap {
        w.op(b"u");
    }
    w.op(b".");
    Ok(w.0)
}

/// Writes `tensors` as `torch.save` does (zip container, uncompressed members under
/// `archive/`). With `wrap`, the state dict sits under a `state_dict` key.
pub fn write_zip(path: &std::path::Path, tensors: &[TorchTensor], wrap: bool) -> io::Result<()> {
    use std::io::Write;
    let pkl = encode_state_dict(tensors, false, wrap)?;
    let mut zip = zip::ZipWriter::new(File::create(path)?);
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut add = |name: &str, data: &[u8]| -> io::Result<()> {
        zip.start_file(name, opts).map_err(io::Error::other)?;
        zip.write_all(data)
    };
    add("archive/data.pkl", &pkl)?;
    add("archive/byteorder", b"little")?;
    for (i, t) in tensors.iter().enumerate() {
        add(&format!("archive/data/{i}"), t.data)?;
    }
    add("archive/version", b"3\n")?;
    zip.finish().map_err(io::Error::other)?;
    Ok(())
}

/// Writes `tensors` in the legacy (pre-1.6, non-zip) torch format.
pub fn write_legacy(path: &std::path::Path, tensors: &[TorchTensor]) -> io::Result<()> {
    let mut out = LEGACY_MAGIC.to_vec();
    out.extend_from_slice(b"\x80\x02M\xe9\x03.");
    out.extend_from_slice(b"\x80\x02}q\x00.");
    out.extend(encode_state_dict(tensors, true, false)?);
    let mut keys = PickleWriter(b"\x80\x02](".to_vec());
    for i in 0..tensors.len() {
        keys.str(&i.to_string());
    }
    keys.op(b"e.");
    out.extend(keys.0);
    for t in tensors {
        let numel: usize = t.shape.iter().product();
        out.extend_from_slice(&(numel as u64).to_le_bytes());
        out.extend_from_slice(t.data);
    }
    std::fs::write(path, out)
}
