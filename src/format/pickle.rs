//! A pickle reader that never runs anything.
//!
//! PyTorch checkpoints (`.ckpt`, `.pt`, `.pth`, `.bin`) store their structure as a Python pickle:
//! a small stack machine whose `GLOBAL` + `REDUCE` opcodes would, in Python, import and call any
//! function named in the file. This reader interprets the opcodes that `torch.save` emits into
//! plain [`Value`]s and calls nothing. A `GLOBAL` must name one of the [`ALLOWED_GLOBALS`]:
//! tensor rebuilders, storage types, `OrderedDict`, and the handful of inert classes that ComfyUI
//! also allows (`torch.load(weights_only=True)` plus its safe globals). Any other name — say
//! `os.system` or `builtins.eval` — stops the read with [`PickleError::ForbiddenGlobal`].
//!
//! Resource limits keep hostile input cheap: the stack, the mark stack, the memo and the total
//! number of values built are capped, and every length is checked against the bytes that remain.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// Globals a checkpoint pickle may name. Each becomes an inert [`Value::Global`].
pub const ALLOWED_GLOBALS: &[(&str, &str)] = &[
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("collections", "OrderedDict"),
    ("torch", "FloatStorage"),
    ("torch", "HalfStorage"),
    ("torch", "BFloat16Storage"),
    ("torch", "DoubleStorage"),
    ("torch", "LongStorage"),
    ("torch", "IntStorage"),
    ("torch", "ShortStorage"),
    ("torch", "CharStorage"),
    ("torch", "ByteStorage"),
    ("torch", "BoolStorage"),
    // Inert data classes found in real Stable Diffusion checkpoints; ComfyUI allows the same.
    (
        "pytorch_lightning.callbacks.model_checkpoint",
        "ModelCheckpoint",
    ),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "dtype"),
    ("numpy.dtypes", "Float64DType"),
    ("_codecs", "encode"),
    ("torch.torch_version", "TorchVersion"),
];

/// Most values one pickle may build (a 2 GB SD checkpoint builds about 30 000).
pub const MAX_VALUES: usize = 20_000_000;
/// Deepest stack or mark nesting accepted.
pub const MAX_STACK: usize = 1_000_000;

/// A Python value as far as a checkpoint needs one. Containers are shared (`Rc`) because the
/// pickle memo refers to the same object from several places, as in Python.
#[derive(Clone, Debug)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Tuple(Rc<[Value]>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    /// A name from [`ALLOWED_GLOBALS`], never resolved to anything callable.
    Global(Rc<(String, String)>),
    /// `func(*args)` recorded, not performed (REDUCE / NEWOBJ), with state from BUILD.
    Call(Rc<Call>),
    /// A persistent id: in torch files, a reference to tensor storage.
    PersistentId(Rc<Value>),
}

/// A recorded call: the callee, its arguments, items set on the result (an `OrderedDict`'s
/// entries arrive through SETITEMS) and any state set by BUILD (`_metadata` for a state dict).
#[derive(Debug)]
pub struct Call {
    pub func: Value,
    pub args: Value,
    pub items: RefCell<Vec<(Value, Value)>>,
    pub state: RefCell<Option<Value>>,
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }
    /// Items of a tuple or list.
    pub fn items(&self) -> Option<Vec<Value>> {
        match self {
            Value::Tuple(t) => Some(t.to_vec()),
            Value::List(l) => Some(l.borrow().clone()),
            _ => None,
        }
    }
    /// `(module, name)` of a global.
    pub fn global(&self) -> Option<(&str, &str)> {
        match self {
            Value::Global(g) => Some((g.0.as_str(), g.1.as_str())),
            _ => None,
        }
    }
}

/// Why a pickle was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PickleError {
    #[error(
        "pickle refers to {module}.{name}, which a checkpoint has no reason to use; refusing to load it (it could run code)"
    )]
    ForbiddenGlobal { module: String, name: String },
    #[error("pickle opcode 0x{opcode:02x} at byte {offset} is not supported")]
    UnsupportedOpcode { opcode: u8, offset: usize },
    #[error("pickle ends early at byte {offset} (truncated or corrupt)")]
    Truncated { offset: usize },
    #[error("pickle is malformed at byte {offset}: {problem}")]
    Malformed { offset: usize, problem: String },
    #[error("pickle exceeds the limit of {limit} {what}")]
    Limit { what: &'static str, limit: usize },
}

/// Reads one pickle from the start of `data`; returns the value and the bytes consumed.
/// Persistent ids (torch's storage references) come back as [`Value::PersistentId`].
pub fn load(data: &[u8]) -> Result<(Value, usize), PickleError> {
    Machine::new(data).run()
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    built: usize,
}

impl<'a> Machine<'a> {
    fn new(data: &'a [u8]) -> Self {
        Machine {
            data,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            built: 0,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or(PickleError::Truncated { offset: self.pos })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, PickleError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, PickleError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, PickleError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn len_u64(&mut self) -> Result<usize, PickleError> {
        let n = self.u64()?;
        usize::try_from(n).map_err(|_| PickleError::Truncated { offset: self.pos })
    }
    fn line(&mut self) -> Result<&'a str, PickleError> {
        let rest = &self.data[self.pos..];
        let nl = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(PickleError::Truncated { offset: self.pos })?;
        let line = &rest[..nl];
        let at = self.pos;
        self.pos += nl + 1;
        std::str::from_utf8(line).map_err(|_| self.malformed_at(at, "text is not UTF-8"))
    }
    fn malformed_at(&self, offset: usize, problem: &str) -> PickleError {
        PickleError::Malformed {
            offset,
            problem: problem.to_owned(),
        }
    }
    fn malformed(&self, problem: &str) -> PickleError {
        self.malformed_at(self.pos, problem)
    }

    fn push(&mut self, v: Value) -> Result<(), PickleError> {
        self.built += 1;
        if self.built > MAX_VALUES {
            return Err(PickleError::Limit {
                what: "values",
                limit: MAX_VALUES,
            });
        }
        if self.stack.len() >= MAX_STACK {
            return Err(PickleError::Limit {
                what: "stack entries",
                limit: MAX_STACK,
            });
        }
        self.stack.push(v);
        Ok(())
    }
    fn pop(&mut self) -> Result<Value, PickleError> {
        self.stack
            .pop()
            .ok_or_else(|| self.malformed("stack underflow"))
    }
    fn top(&self) -> Result<&Value, PickleError> {
        self.stack
            .last()
            .ok_or_else(|| self.malformed("stack underflow"))
    }
    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let mark = self.marks.pop().ok_or_else(|| self.malformed("no MARK"))?;
        if mark > self.stack.len() {
            return Err(self.malformed("MARK above stack"));
        }
        Ok(self.stack.split_off(mark))
    }
    fn memo_put(&mut self, key: u32) -> Result<(), PickleError> {
        let v = self.top()?.clone();
        if self.memo.len() >= MAX_STACK && !self.memo.contains_key(&key) {
            return Err(PickleError::Limit {
                what: "memo entries",
                limit: MAX_STACK,
            });
        }
        self.memo.insert(key, v);
        Ok(())
    }
    fn memo_get(&mut self, key: u32) -> Result<(), PickleError> {
        let v = self
            .memo
            .get(&key)
            .cloned()
            .ok_or_else(|| self.malformed(&format!("memo key {key} is not defined")))?;
        self.push(v)
    }
    fn global(&mut self, module: &str, name: &str) -> Result<(), PickleError> {
        if !ALLOWED_GLOBALS.contains(&(module, name)) {
            return Err(PickleError::ForbiddenGlobal {
                module: module.to_owned(),
                name: name.to_owned(),
            });
        }
        self.push(Value::Global(Rc::new((module.to_owned(), name.to_owned()))))
    }
    fn string(&mut self, n: usize) -> Result<(), PickleError> {
        let at = self.pos;
        let b = self.take(n)?;
        let s = std::str::from_utf8(b).map_err(|_| self.malformed_at(at, "string is not UTF-8"))?;
        self.push(Value::Str(Rc::from(s)))
    }
    fn bytes(&mut self, n: usize) -> Result<(), PickleError> {
        let b = self.take(n)?;
        self.push(Value::Bytes(Rc::from(b)))
    }
    fn long(&mut self, n: usize) -> Result<(), PickleError> {
        let b = self.take(n)?;
        if n > 8 {
            return Err(self.malformed("integer wider than 64 bits"));
        }
        let mut v: i64 = 0;
        for (i, &byte) in b.iter().enumerate() {
            v |= i64::from(byte) << (8 * i);
        }
        if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
            v -= 1i64 << (8 * n);
        }
        self.push(Value::Int(v))
    }

    fn run(mut self) -> Result<(Value, usize), PickleError> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    // PROTO
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(self.malformed_at(at, &format!("protocol {proto}")));
                    }
                }
                0x95 => {
                    // FRAME: a length hint only.
                    self.u64()?;
                }
                b'.' => {
                    // STOP
                    let v = self.pop()?;
                    return Ok((v, self.pos));
                }
                b'(' => {
                    if self.marks.len() >= MAX_STACK {
                        return Err(PickleError::Limit {
                            what: "marks",
                            limit: MAX_STACK,
                        });
                    }
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v)?;
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Value::Int(i64::from(v)))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(i64::from(v)))?;
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(i64::from(v)))?;
                }
                0x8a => {
                    let n = usize::from(self.u8()?);
                    self.long(n)?;
                }
                0x8b => {
                    let n = self.u32()? as usize;
                    self.long(n)?;
                }
                b'I' => {
                    let line = self.line()?;
                    let v = match line {
                        "01" => Value::Bool(true),
                        "00" => Value::Bool(false),
                        _ => Value::Int(line.parse().map_err(|_| self.malformed("bad INT"))?),
                    };
                    self.push(v)?;
                }
                b'L' => {
                    let line = self.line()?.trim_end_matches('L');
                    let v = line.parse().map_err(|_| self.malformed("bad LONG"))?;
                    self.push(Value::Int(v))?;
                }
                b'G' => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.push(Value::Float(f64::from_be_bytes(a)))?;
                }
                b'F' => {
                    let line = self.line()?;
                    let v = line.parse().map_err(|_| self.malformed("bad FLOAT"))?;
                    self.push(Value::Float(v))?;
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    self.string(n)?;
                }
                0x8c => {
                    let n = usize::from(self.u8()?);
                    self.string(n)?;
                }
                0x8d => {
                    let n = self.len_u64()?;
                    self.string(n)?;
                }
                b'T' => {
                    let n = self.u32()? as usize;
                    self.bytes(n)?;
                }
                b'U' => {
                    let n = usize::from(self.u8()?);
                    self.bytes(n)?;
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    self.bytes(n)?;
                }
                b'C' => {
                    let n = usize::from(self.u8()?);
                    self.bytes(n)?;
                }
                0x8e => {
                    let n = self.len_u64()?;
                    self.bytes(n)?;
                }
                b')' => self.push(Value::Tuple(Rc::from(Vec::new())))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(Rc::from(items)))?;
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    if self.stack.len() < n {
                        return Err(self.malformed("stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push(Value::Tuple(Rc::from(items)))?;
                }
                b']' => self.push(Value::List(Rc::new(RefCell::new(Vec::new()))))?,
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(Rc::new(RefCell::new(items))))?;
                }
                b'a' => {
                    let v = self.pop()?;
                    match self.top()? {
                        Value::List(l) => l.borrow_mut().push(v),
                        _ => return Err(self.malformed("APPEND to a non-list")),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Value::List(l) => l.borrow_mut().extend(items),
                        _ => return Err(self.malformed("APPENDS to a non-list")),
                    }
                }
                b'}' => self.push(Value::Dict(Rc::new(RefCell::new(Vec::new()))))?,
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = pairs(items).ok_or_else(|| self.malformed("odd DICT items"))?;
                    self.push(Value::Dict(Rc::new(RefCell::new(pairs))))?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    dict_set(self.top()?, vec![(k, v)])
                        .ok_or_else(|| self.malformed("SETITEM on a non-dict"))?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let pairs = pairs(items).ok_or_else(|| self.malformed("odd SETITEMS items"))?;
                    dict_set(self.top()?, pairs)
                        .ok_or_else(|| self.malformed("SETITEMS on a non-dict"))?;
                }
                0x8f => self.push(Value::List(Rc::new(RefCell::new(Vec::new()))))?, // EMPTY_SET
                0x90 => {
                    // ADDITEMS (sets are kept as lists)
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Value::List(l) => l.borrow_mut().extend(items),
                        _ => return Err(self.malformed("ADDITEMS to a non-set")),
                    }
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(Rc::from(items)))?;
                }
                b'p' => {
                    let key = self
                        .line()?
                        .parse()
                        .map_err(|_| self.malformed("bad PUT"))?;
                    self.memo_put(key)?;
                }
                b'q' => {
                    let key = u32::from(self.u8()?);
                    self.memo_put(key)?;
                }
                b'r' => {
                    let key = self.u32()?;
                    self.memo_put(key)?;
                }
                0x94 => {
                    let key = u32::try_from(self.memo.len()).map_err(|_| self.malformed("memo"))?;
                    self.memo_put(key)?;
                }
                b'g' => {
                    let key = self
                        .line()?
                        .parse()
                        .map_err(|_| self.malformed("bad GET"))?;
                    self.memo_get(key)?;
                }
                b'h' => {
                    let key = u32::from(self.u8()?);
                    self.memo_get(key)?;
                }
                b'j' => {
                    let key = self.u32()?;
                    self.memo_get(key)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(module, name)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module.as_str(), name.as_str()) {
                        (Some(m), Some(n)) => {
                            let (m, n) = (m.to_owned(), n.to_owned());
                            self.global(&m, &n)?;
                        }
                        _ => return Err(self.malformed("STACK_GLOBAL needs two strings")),
                    }
                }
                b'R' | 0x81 => {
                    // REDUCE / NEWOBJ: recorded, never called. The callee can only be an allowed
                    // global (or a value built from one), so there is nothing to call anyway.
                    let args = self.pop()?;
                    let func = self.pop()?;
                    if !matches!(func, Value::Global(_) | Value::Call(_)) {
                        return Err(self.malformed("call of a non-class value"));
                    }
                    self.push(Value::Call(Rc::new(Call {
                        func,
                        args,
                        items: RefCell::new(Vec::new()),
                        state: RefCell::new(None),
                    })))?;
                }
                b'b' => {
                    let state = self.pop()?;
                    match self.top()? {
                        Value::Call(c) => *c.state.borrow_mut() = Some(state),
                        _ => return Err(self.malformed("BUILD on a non-object")),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.push(Value::PersistentId(Rc::new(pid)))?;
                }
                b'P' => {
                    let line = self.line()?;
                    self.push(Value::PersistentId(Rc::new(Value::Str(Rc::from(line)))))?;
                }
                _ => {
                    return Err(PickleError::UnsupportedOpcode {
                        opcode: op,
                        offset: at,
                    });
                }
            }
        }
    }
}

fn pairs(items: Vec<Value>) -> Option<Vec<(Value, Value)>> {
    if !items.len().is_multiple_of(2) {
        return None;
    }
    let mut it = items.into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Some(out)
}

/// Sets items on a dict, or on an object built by a call (OrderedDict's items arrive this way).
fn dict_set(target: &Value, items: Vec<(Value, Value)>) -> Option<()> {
    match target {
        Value::Dict(d) => {
            d.borrow_mut().extend(items);
            Some(())
        }
        Value::Call(c) if c.func.global() == Some(("collections", "OrderedDict")) => {
            c.items.borrow_mut().extend(items);
            Some(())
        }
        _ => None,
    }
}

/// The key-value pairs of a dict or an `OrderedDict()` call, later duplicates winning as in
/// Python. `None` for anything else.
pub fn dict_items(v: &Value) -> Option<Vec<(Value, Value)>> {
    let raw = match v {
        Value::Dict(d) => d.borrow().clone(),
        Value::Call(c) if c.func.global() == Some(("collections", "OrderedDict")) => {
            c.items.borrow().clone()
        }
        _ => return None,
    };
    let mut out: Vec<(Value, Value)> = Vec::with_capacity(raw.len());
    let mut index: HashMap<String, usize> = HashMap::new();
    for (k, v) in raw {
        match k.as_str().map(str::to_owned) {
            Some(name) => match index.get(&name) {
                Some(&i) => out[i].1 = v,
                None => {
                    index.insert(name, out.len());
                    out.push((k, v));
                }
            },
            None => out.push((k, v)),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_basic_values() {
        // pickle.dumps({'a': [1, 2.5, 'x'], 'b': (True, None)}, protocol=2)
        let data = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01G@\x04\x00\x00\x00\x00\x00\x00X\x01\x00\x00\x00xq\x03eX\x01\x00\x00\x00bq\x04\x88N\x86q\x05u.";
        let (v, used) = load(data).expect("loads");
        assert_eq!(used, data.len());
        let items = dict_items(&v).expect("dict");
        assert_eq!(items[0].0.as_str(), Some("a"));
        let list = items[0].1.items().expect("list");
        assert_eq!(list[0].as_int(), Some(1));
        assert!(matches!(list[1], Value::Float(f) if f == 2.5));
        assert_eq!(list[2].as_str(), Some("x"));
    }

    #[test]
    fn ordered_dict_items_survive_build_of_metadata() {
        // What torch.save({'weight': t}) writes: OrderedDict() REDUCE, SETITEMS, then BUILD with
        // the state dict's `_metadata`.
        let data = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01(X\x01\x00\x00\x00aK\x07u}q\x02X\t\x00\x00\x00_metadataq\x03h\x00)Rq\x04sb.";
        let (v, _) = load(data).expect("loads");
        let items = dict_items(&v).expect("ordered dict");
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].0.as_str(), Some("a"));
        assert_eq!(items[0].1.as_int(), Some(7));
    }

    #[test]
    fn refuses_code_execution_globals() {
        // pickle.dumps of an object whose __reduce__ returns (os.system, ('echo pwned',))
        let data = b"\x80\x02cposix\nsystem\nq\x00X\n\x00\x00\x00echo pwnedq\x01\x85q\x02Rq\x03.";
        assert_eq!(
            load(data).expect_err("refused").to_string(),
            "pickle refers to posix.system, which a checkpoint has no reason to use; refusing to load it (it could run code)"
        );
        let data = b"\x80\x04\x95\x1c\x00\x00\x00\x00\x00\x00\x00\x8c\x08builtins\x94\x8c\x04eval\x94\x93\x94.";
        assert!(matches!(
            load(data),
            Err(PickleError::ForbiddenGlobal { .. })
        ));
    }

    #[test]
    fn truncation_and_garbage_are_errors_not_panics() {
        let data = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01K\x01u.";
        for cut in 0..data.len() {
            assert!(load(&data[..cut]).is_err(), "cut at {cut}");
        }
        assert!(load(b"\xff").is_err());
        assert!(load(b"h\x05.").is_err(), "undefined memo");
        assert!(load(b"X\xff\xff\xff\xff").is_err(), "length past end");
        assert!(load(b"a.").is_err(), "append to nothing");
    }

    #[test]
    fn negative_and_wide_integers() {
        assert_eq!(load(b"\x8a\x01\xff.").expect("ok").0.as_int(), Some(-1));
        assert_eq!(
            load(b"\x8a\x08\xff\xff\xff\xff\xff\xff\xff\x7f.")
                .expect("ok")
                .0
                .as_int(),
            Some(i64::MAX)
        );
        assert!(load(b"\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x00.").is_err());
        assert_eq!(
            load(b"J\xfe\xff\xff\xff.").expect("ok").0.as_int(),
            Some(-2)
        );
    }
}
