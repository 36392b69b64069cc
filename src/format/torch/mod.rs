//! PyTorch checkpoints (`.ckpt`, `.pt`, `.pth`, `.bin`) read without running Python.
//!
//! Two containers exist. The zip format (torch ≥ 1.6, every Stable Diffusion `.ckpt` in
//! circulation) holds `<root>/data.pkl` plus one archive member per storage, `<root>/data/<key>`,
//! stored uncompressed so they can be memory-mapped in place. The legacy format is a sequence of
//! pickles (magic number, protocol, system info, the object, the storage keys) followed by each
//! storage as an 8-byte element count and its raw bytes.
//!
//! The object pickle is read by [`super::pickle`], which refuses any global that is not a tensor
//! rebuilder or inert data class. The result is unwrapped like ComfyUI does (`state_dict` key, or a
//! single-key dict of a dict) and every tensor becomes a byte range of the file. Only C-contiguous
//! tensors are accepted (what `torch.save` writes for state dicts); others are refused by name.

use std::io::{self, Read};

use super::dtype::DType;
use super::pickle::{self, PickleError, Value};
use super::{ReadErrorKind, TensorRecord};

/// Largest `data.pkl` accepted (an SDXL checkpoint's is under 1 MiB).
pub const MAX_PICKLE_BYTES: u64 = 256 << 20;
/// Most archive members accepted.
pub const MAX_ZIP_MEMBERS: usize = 1_000_000;

/// Magic-number pickle that opens a legacy torch file: protocol 2, LONG1 of 10 bytes
/// (0x1950a86a20f9469cfc6c), STOP.
const LEGACY_MAGIC: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.";

/// Whether `bytes` start like a legacy (non-zip) torch file.
pub fn is_legacy(bytes: &[u8]) -> bool {
    bytes.starts_with(LEGACY_MAGIC)
}

/// A storage as the pickle names it: dtype, element count, and where it lives.
struct StorageRef {
    key: String,
    dtype: DType,
    numel: u64,
}

/// Where a storage's bytes are in the file.
#[derive(Clone, Copy)]
struct StorageLoc {
    offset: u64,
    len: u64,
}

/// Reads the tensor table of a zip-format torch file.
pub fn read_zip(bytes: &[u8]) -> Result<Vec<TensorRecord>, ReadErrorKind> {
    let zip_err = |e: zip::result::ZipError| ReadErrorKind::Zip(e.to_string());
    let mut archive = zip::ZipArchive::new(io::Cursor::new(bytes)).map_err(zip_err)?;
    if archive.len() > MAX_ZIP_MEMBERS {
        return Err(ReadErrorKind::Zip(format!(
            "{} members, over the limit of {MAX_ZIP_MEMBERS}",
            archive.len()
        )));
    }
    let pkl_name = archive
        .file_names()
        .filter_map(Result::ok)
        .map(std::borrow::Cow::into_owned)
        .filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1 || n == "data.pkl")
        .min()
        .ok_or_else(|| {
            ReadErrorKind::Torch("zip archive has no data.pkl: not a PyTorch checkpoint".into())
        })?;
    let root = pkl_name.trim_end_matches("data.pkl").to_owned();

    let pkl = {
        let member = archive.by_name(&pkl_name).map_err(zip_err)?;
        if member.size() > MAX_PICKLE_BYTES {
            return Err(ReadErrorKind::Torch(format!(
                "data.pkl is {} bytes, over the limit of {MAX_PICKLE_BYTES}",
                member.size()
            )));
        }
        let mut buf = Vec::new();
        // The limit also holds when the declared size lies (a zip bomb).
        member
            .take(MAX_PICKLE_BYTES + 1)
            .read_to_end(&mut buf)
            .map_err(|e| ReadErrorKind::Zip(e.to_string()))?;
        if buf.len() as u64 > MAX_PICKLE_BYTES {
            return Err(ReadErrorKind::Torch(
                "data.pkl expands past its limit".into(),
            ));
        }
        buf
    };
    let (value, _) = pickle::load(&pkl).map_err(ReadErrorKind::Pickle)?;
    let file_len = bytes.len() as u64;
    to_records(&value, |storage| {
        let name = format!("{root}data/{}", storage.key);
        let member = archive.by_name(&name).map_err(|_| {
            ReadErrorKind::Torch(format!(
                "storage {:?} is missing from the archive",
                storage.key
            ))
        })?;
        if member.compression() != zip::CompressionMethod::Stored {
            return Err(ReadErrorKind::Torch(format!(
                "storage {:?} is compressed; only uncompressed (stored) tensor data can be read",
                storage.key
            )));
        }
        let offset = member
            .data_start()
            .ok_or_else(|| ReadErrorKind::Zip(format!("no data offset for member {name}")))?;
        let len = member.size();
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= file_len)
            .ok_or_else(|| {
                ReadErrorKind::Torch(format!(
                    "storage {:?} runs past the end of the file",
                    storage.key
                ))
            })?;
        let _ = end;
        Ok(StorageLoc { offset, len })
    })
}

/// Reads the tensor table of a legacy (pre-zip) torch file.
pub fn read_legacy(bytes: &[u8]) -> Result<Vec<TensorRecord>, ReadErrorKind> {
    let mut pos = LEGACY_MAGIC.len();
    let mut next = |what: &str| -> Result<Value, ReadErrorKind> {
        let rest = bytes.get(pos..).unwrap_or_default();
        let (v, used) = pickle::load(rest).map_err(|e| match e {
            PickleError::Truncated { .. } => {
                ReadErrorKind::Torch(format!("file ends inside the {what} pickle"))
            }
            other => ReadErrorKind::Pickle(other),
        })?;
        pos += used;
        Ok(v)
    };
    let _protocol = next("protocol")?;
    let _sys_info = next("system info")?;
    let value = next("checkpoint")?;
    let keys = next("storage key")?
        .items()
        .ok_or_else(|| ReadErrorKind::Torch("storage key list is not a list".into()))?;

    // Storages follow in key order, each as an 8-byte element count then the data. Their sizes
    // come from the element type, which only the object pickle knows.
    let mut sizes = std::collections::HashMap::new();
    collect_storages(&value, &mut sizes, &mut std::collections::HashSet::new(), 0)?;
    let mut locations = std::collections::HashMap::new();
    let mut offset = pos as u64;
    let file_len = bytes.len() as u64;
    for key in keys {
        let key = key
            .as_str()
            .ok_or_else(|| ReadErrorKind::Torch("storage key is not a string".into()))?
            .to_owned();
        let Some(&elem_size) = sizes.get(&key) else {
            return Err(ReadErrorKind::Torch(format!(
                "storage {key:?} is listed but never used"
            )));
        };
        let count_at = usize::try_from(offset).unwrap_or(usize::MAX);
        let count_bytes = bytes
            .get(count_at..count_at.saturating_add(8))
            .ok_or_else(|| ReadErrorKind::Torch(format!("file ends before storage {key:?}")))?;
        let mut le = [0u8; 8];
        le.copy_from_slice(count_bytes);
        let numel = u64::from_le_bytes(le);
        let len = numel
            .checked_mul(elem_size)
            .ok_or_else(|| ReadErrorKind::Torch(format!("storage {key:?} size overflows")))?;
        let data = offset + 8;
        let end = data
            .checked_add(len)
            .filter(|&e| e <= file_len)
            .ok_or_else(|| {
                ReadErrorKind::Torch(format!("storage {key:?} runs past the end of the file"))
            })?;
        locations.insert(key, StorageLoc { offset: data, len });
        offset = end;
    }
    to_records(&value, |storage| {
        locations.get(&storage.key).copied().ok_or_else(|| {
            ReadErrorKind::Torch(format!("storage {:?} has no data in the file", storage.key))
        })
    })
}

/// Walks everything reachable from `v` once, noting every storage reference. Containers are
/// shared in a pickle (the memo, DUP), so a hostile file can make a small graph whose paths are
/// exponentially many: each container is visited once, whatever number of paths lead to it.
fn collect_storages(
    v: &Value,
    out: &mut std::collections::HashMap<String, u64>,
    visited: &mut std::collections::HashSet<usize>,
    depth: usize,
) -> Result<(), ReadErrorKind> {
    if depth > 64 {
        return Ok(());
    }
    let identity = match v {
        Value::Tuple(t) => Some(t.as_ptr() as usize),
        Value::List(l) => Some(std::rc::Rc::as_ptr(l) as usize),
        Value::Dict(d) => Some(std::rc::Rc::as_ptr(d) as usize),
        Value::Call(c) => Some(std::rc::Rc::as_ptr(c) as usize),
        _ => None,
    };
    if identity.is_some_and(|id| !visited.insert(id)) {
        return Ok(());
    }
    let mut walk = |child: &Value| collect_storages(child, out, visited, depth + 1);
    match v {
        Value::PersistentId(pid) => {
            let s = storage_ref(pid)?;
            out.insert(s.key, s.dtype.size_bytes() as u64);
        }
        Value::Tuple(items) => {
            for i in items.iter() {
                walk(i)?;
            }
        }
        Value::List(items) => {
            for i in items.borrow().iter() {
                walk(i)?;
            }
        }
        Value::Dict(_) | Value::Call(_) => {
            if let Some(items) = pickle::dict_items(v) {
                for (_, i) in items {
                    walk(&i)?;
                }
            }
            if let Value::Call(c) = v {
                walk(&c.args)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn storage_ref(pid: &Value) -> Result<StorageRef, ReadErrorKind> {
    let bad = || ReadErrorKind::Torch("malformed storage reference in the pickle".into());
    let items = pid.items().ok_or_else(bad)?;
    if items.len() < 5 || items[0].as_str() != Some("storage") {
        return Err(bad());
    }
    let (module, name) = items[1].global().ok_or_else(bad)?;
    let dtype = storage_dtype(module, name)
        .ok_or_else(|| ReadErrorKind::Torch(format!("unsupported storage type {module}.{name}")))?;
    let key = match &items[2] {
        Value::Str(s) => s.to_string(),
        Value::Int(i) => i.to_string(),
        _ => return Err(bad()),
    };
    let numel = items[4]
        .as_int()
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(bad)?;
    Ok(StorageRef { key, dtype, numel })
}

fn storage_dtype(module: &str, name: &str) -> Option<DType> {
    if module != "torch" {
        return None;
    }
    Some(match name {
        "FloatStorage" => DType::F32,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "DoubleStorage" => DType::F64,
        "LongStorage" => DType::I64,
        "IntStorage" => DType::I32,
        "ShortStorage" => DType::I16,
        "CharStorage" => DType::I8,
        "ByteStorage" => DType::U8,
        "BoolStorage" => DType::Bool,
        _ => return None,
    })
}

/// Unwraps the state dict and turns each tensor into a byte range via `locate`.
fn to_records(
    top: &Value,
    mut locate: impl FnMut(&StorageRef) -> Result<StorageLoc, ReadErrorKind>,
) -> Result<Vec<TensorRecord>, ReadErrorKind> {
    let mut items = pickle::dict_items(top)
        .ok_or_else(|| ReadErrorKind::Torch("the pickle does not hold a dict of tensors".into()))?;
    // Unwrap as ComfyUI does: a "state_dict" entry, else a lone dict inside a one-key dict.
    if let Some((_, sd)) = items.iter().find(|(k, _)| k.as_str() == Some("state_dict"))
        && let Some(inner) = pickle::dict_items(sd)
    {
        items = inner;
    } else if items.len() == 1
        && let Some(inner) = pickle::dict_items(&items[0].1)
    {
        items = inner;
    }
    let mut records = Vec::with_capacity(items.len());
    for (key, value) in items {
        let Some(name) = key.as_str() else { continue };
        let Some(rebuild) = tensor_call(&value) else {
            // Non-tensor entries (step counters, hyper-parameters) are not weights.
            continue;
        };
        records.push(tensor_record(name, &rebuild, &mut locate)?);
    }
    Ok(records)
}

/// Finds the `_rebuild_tensor*` call behind a value, looking through `_rebuild_parameter`.
fn tensor_call(v: &Value) -> Option<std::rc::Rc<pickle::Call>> {
    let Value::Call(c) = v else { return None };
    match c.func.global()? {
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => Some(c.clone()),
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
            tensor_call(c.args.items()?.first()?)
        }
        _ => None,
    }
}

fn tensor_record(
    name: &str,
    call: &pickle::Call,
    locate: &mut impl FnMut(&StorageRef) -> Result<StorageLoc, ReadErrorKind>,
) -> Result<TensorRecord, ReadErrorKind> {
    let bad = |problem: &str| ReadErrorKind::Torch(format!("tensor {name:?}: {problem}"));
    let args = call
        .args
        .items()
        .ok_or_else(|| bad("malformed rebuild arguments"))?;
    if args.len() < 4 {
        return Err(bad("too few rebuild arguments"));
    }
    let Value::PersistentId(pid) = &args[0] else {
        return Err(bad("tensor data is not a storage reference"));
    };
    let storage = storage_ref(pid)?;
    let storage_offset = args[1]
        .as_int()
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| bad("bad storage offset"))?;
    let ints = |v: &Value| -> Option<Vec<u64>> {
        v.items()?
            .iter()
            .map(|d| d.as_int().and_then(|d| u64::try_from(d).ok()))
            .collect()
    };
    let size = ints(&args[2]).ok_or_else(|| bad("bad size"))?;
    let stride = ints(&args[3]).ok_or_else(|| bad("bad stride"))?;
    if size.len() != stride.len() {
        return Err(bad("size and stride differ in length"));
    }
    let numel = size
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad("shape overflows"))?;
    if numel > 0 {
        let mut expected = 1u64;
        for (&d, &s) in size.iter().zip(&stride).rev() {
            if d > 1 && s != expected {
                return Err(bad("non-contiguous tensor (strided view) is not supported"));
            }
            expected = expected.saturating_mul(d);
        }
    }
    let in_storage = storage_offset
        .checked_add(numel)
        .filter(|&end| end <= storage.numel)
        .ok_or_else(|| bad("view runs past the end of its storage"))?;
    let _ = in_storage;
    let loc = locate(&storage)?;
    let es = storage.dtype.size_bytes() as u64;
    let begin = storage_offset
        .checked_mul(es)
        .ok_or_else(|| bad("offset overflows"))?;
    let len = numel.checked_mul(es).ok_or_else(|| bad("size overflows"))?;
    if begin.checked_add(len).is_none_or(|end| end > loc.len) {
        return Err(bad("storage data in the file is shorter than the tensor"));
    }
    let shape = size
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| bad("dimension too large"))?;
    Ok(TensorRecord {
        name: name.to_owned(),
        dtype: storage.dtype,
        shape,
        offset: loc.offset + begin,
        len,
    })
}

#[cfg(any(test, feature = "testing"))]
mod write;
#[cfg(any(test, feature = "testing"))]
pub use write::{TorchTensor, write_legacy, write_zip};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Container, ReadErrorKind, TensorFile};
    use std::fs::File;

    fn sample() -> (Vec<u8>, Vec<u8>) {
        let w: Vec<u8> = (0..24u8).collect(); // 2x3 f32... as F16 [2,6]
        let ids: Vec<u8> = (0..3i64).flat_map(i64::to_le_bytes).collect();
        (w, ids)
    }

    fn tensors<'a>(w: &'a [u8], ids: &'a [u8]) -> Vec<TorchTensor<'a>> {
        vec![
            TorchTensor {
                name: "model.w",
                dtype: DType::F16,
                shape: &[2, 6],
                data: w,
            },
            TorchTensor {
                name: "ids",
                dtype: DType::I64,
                shape: &[1, 3],
                data: ids,
            },
        ]
    }

    #[test]
    fn zip_checkpoint_reads_back_with_exact_bytes() {
        let dir = tempfile::tempdir().expect("tmp");
        let (w, ids) = sample();
        for wrap in [false, true] {
            let path = dir.path().join(format!("m{wrap}.ckpt"));
            write_zip(&path, &tensors(&w, &ids), wrap).expect("write");
            let f = TensorFile::open(&path).expect("read");
            assert_eq!(f.container(), Container::TorchZip);
            let names: Vec<_> = f.tensors().iter().map(|t| t.name.as_str()).collect();
            assert_eq!(
                names,
                ["model.w", "ids"],
                "state dict order, step counter skipped"
            );
            let t = f.get("model.w").expect("w");
            assert_eq!(
                (t.dtype, t.shape.as_slice()),
                (DType::F16, &[2usize, 6][..])
            );
            assert_eq!(f.bytes(t), &w[..]);
            assert_eq!(f.bytes(f.get("ids").expect("ids")), &ids[..]);
        }
    }

    #[test]
    fn legacy_checkpoint_reads_back_with_exact_bytes() {
        let dir = tempfile::tempdir().expect("tmp");
        let (w, ids) = sample();
        let path = dir.path().join("old.pt");
        write_legacy(&path, &tensors(&w, &ids)).expect("write");
        let f = TensorFile::open(&path).expect("read");
        assert_eq!(f.container(), Container::TorchLegacy);
        assert_eq!(f.bytes(f.get("model.w").expect("w")), &w[..]);
        assert_eq!(f.bytes(f.get("ids").expect("ids")), &ids[..]);
        // Every truncation is an error, never a panic.
        let bytes = std::fs::read(&path).expect("read");
        for cut in [1, 20, 40, bytes.len() / 2, bytes.len() - 1] {
            let p = dir.path().join("cut.pt");
            std::fs::write(&p, &bytes[..cut]).expect("write");
            assert!(TensorFile::open(&p).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn code_running_checkpoint_is_refused_and_not_run() {
        let dir = tempfile::tempdir().expect("tmp");
        let marker = dir.path().join("pwned");
        // A data.pkl that, under Python's pickle, would run `touch <marker>` via os.system.
        let cmd = format!("touch {}", marker.display());
        let mut pkl = b"\x80\x02cos\nsystem\n".to_vec();
        pkl.push(b'X');
        pkl.extend_from_slice(&(cmd.len() as u32).to_le_bytes());
        pkl.extend_from_slice(cmd.as_bytes());
        pkl.extend_from_slice(b"\x85R.");
        let path = dir.path().join("evil.ckpt");
        {
            use std::io::Write;
            let mut zip = zip::ZipWriter::new(File::create(&path).expect("create"));
            zip.start_file("archive/data.pkl", zip::write::SimpleFileOptions::default())
                .expect("start");
            zip.write_all(&pkl).expect("write");
            zip.finish().expect("finish");
        }
        let err = TensorFile::open(&path).expect_err("must be refused");
        assert!(matches!(
            err.kind,
            ReadErrorKind::Pickle(PickleError::ForbiddenGlobal { ref module, ref name })
                if module == "os" && name == "system"
        ));
        let msg = err.to_string();
        assert!(
            msg.contains("os.system") && msg.contains("evil.ckpt"),
            "{msg}"
        );
        assert!(!marker.exists());
    }

    #[test]
    fn zip_bomb_data_pkl_is_capped() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("bomb.ckpt");
        {
            use std::io::Write;
            let mut zip = zip::ZipWriter::new(File::create(&path).expect("create"));
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated)
                .large_file(true);
            zip.start_file("archive/data.pkl", opts).expect("start");
            let zeros = vec![0u8; 1 << 20];
            for _ in 0..(MAX_PICKLE_BYTES >> 20) + 2 {
                zip.write_all(&zeros).expect("write");
            }
            zip.finish().expect("finish");
        }
        assert!(
            std::fs::metadata(&path).expect("meta").len() < 2 << 20,
            "compressed small"
        );
        let err = TensorFile::open(&path).expect_err("refused");
        assert!(err.to_string().contains("limit"), "{err}");
    }

    #[test]
    fn compressed_storage_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tmp");
        let (w, ids) = sample();
        let ok = dir.path().join("ok.ckpt");
        write_zip(&ok, &tensors(&w, &ids), false).expect("write");
        // Re-pack with deflate.
        let src = std::fs::read(&ok).expect("read");
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(src)).expect("zip");
        let path = dir.path().join("deflated.ckpt");
        let mut out = zip::ZipWriter::new(File::create(&path).expect("create"));
        for i in 0..archive.len() {
            let mut m = archive.by_index(i).expect("member");
            let name = m.name().expect("name").into_owned();
            let mut data = Vec::new();
            m.read_to_end(&mut data).expect("read");
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated);
            out.start_file(name, opts).expect("start");
            std::io::Write::write_all(&mut out, &data).expect("write");
        }
        out.finish().expect("finish");
        let err = TensorFile::open(&path).expect_err("refused");
        assert!(err.to_string().contains("compressed"), "{err}");
    }
}
