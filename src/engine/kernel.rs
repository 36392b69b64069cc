//! Evaluating an expression over a range of elements, in f32, exactly as ComfyUI's
//! `calculate_weight` does it: `w = f32(w1)`; per step `w = w * mm` (when `mm ≠ 1`), then
//! `w = w + s * sub` as a separate multiply and add (Rust never fuses them into an FMA without
//! being asked); one final round-to-nearest-even to the output dtype.
//!
//! Tensors are processed in chunks, so a 250 MB embedding never needs more than a chunk of f32
//! scratch per nesting level. Input bytes are read into reused, properly aligned buffers
//! (positioned reads), so no alignment is ever assumed of the file.

use half::slice::HalfFloatSliceExt;
use std::sync::Arc;

use half::{bf16, f16};

use crate::format::DType;

use super::plan::{Expr, Leaf, Recipe};
use super::source::Source;

/// Elements per chunk: 1 Mi elements is 4 MiB of f32 per nesting level.
pub const CHUNK_ELEMENTS: usize = 1 << 20;

/// Reusable buffers of one worker thread.
#[derive(Default)]
pub struct Scratch {
    levels: Vec<Vec<f32>>,
    half: Vec<f16>,
    bhalf: Vec<bf16>,
}

fn io_err(e: &std::io::Error, source: &Source) -> String {
    format!("cannot read {}: {e}", source.path.display())
}

/// What evaluation of one recipe needs besides the expression.
struct Eval<'a> {
    sources: &'a [Arc<Source>],
    /// ComfyUI's load dtype, when inputs are rounded to it first.
    round: Option<DType>,
    half: &'a mut Vec<f16>,
    bhalf: &'a mut Vec<bf16>,
}

impl Eval<'_> {
    /// Reads `out.len()` elements from `start` of a leaf into f32.
    fn load(&mut self, leaf: &Leaf, start: usize, out: &mut [f32]) -> Result<(), String> {
        let src = &self.sources[leaf.source];
        let es = leaf.dtype.size_bytes();
        let offset = leaf.offset + (start * es) as u64;
        let n = out.len();
        match leaf.dtype {
            DType::F16 => {
                self.half.resize(n, f16::ZERO);
                src.read_at(offset, bytemuck::cast_slice_mut(&mut self.half[..]))
                    .map_err(|e| io_err(&e, src))?;
                self.half.convert_to_f32_slice(out);
            }
            DType::BF16 => {
                self.bhalf.resize(n, bf16::ZERO);
                src.read_at(offset, bytemuck::cast_slice_mut(&mut self.bhalf[..]))
                    .map_err(|e| io_err(&e, src))?;
                self.bhalf.convert_to_f32_slice(out);
            }
            DType::F32 => {
                src.read_at(offset, bytemuck::cast_slice_mut(out))
                    .map_err(|e| io_err(&e, src))?;
            }
            DType::F64 => {
                let mut raw = vec![0u8; n * 8];
                src.read_at(offset, &mut raw).map_err(|e| io_err(&e, src))?;
                for (o, c) in out.iter_mut().zip(raw.chunks_exact(8)) {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(c);
                    *o = f64::from_le_bytes(b) as f32;
                }
            }
            other => return Err(format!("cannot compute with {other} tensors")),
        }
        // ComfyUI first loads weights in its load dtype, then computes in f32.
        match self.round {
            Some(DType::F16) if leaf.dtype != DType::F16 => {
                for v in out.iter_mut() {
                    *v = f16::from_f32(*v).to_f32();
                }
            }
            Some(DType::BF16) if leaf.dtype != DType::BF16 => {
                for v in out.iter_mut() {
                    *v = bf16::from_f32(*v).to_f32();
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Evaluates `expr` for elements `start .. start + out.len()` into `out`; `levels` holds one
    /// scratch buffer per deeper nesting level.
    fn eval(
        &mut self,
        expr: &Expr,
        start: usize,
        out: &mut [f32],
        levels: &mut [Vec<f32>],
    ) -> Result<(), String> {
        self.load(&expr.leaf, start, out)?;
        for step in &expr.steps {
            if let Some(mm) = step.mm {
                for v in out.iter_mut() {
                    *v *= mm;
                }
            }
            if let Some((s, sub)) = &step.add {
                let (tmp, deeper) = levels
                    .split_first_mut()
                    .ok_or("expression nested deeper than its scratch")?;
                tmp.resize(out.len(), 0.0);
                self.eval(sub, start, tmp, deeper)?;
                let s = *s;
                for (w, &b) in out.iter_mut().zip(tmp.iter()) {
                    // Product first, then the add: two roundings, as in ComfyUI.
                    let product = s * b;
                    *w += product;
                }
            }
        }
        Ok(())
    }
}

/// Produces the bytes of `recipe` for elements `start .. start + len`, appending to `out`.
pub fn produce(
    recipe: &Recipe,
    start: usize,
    len: usize,
    sources: &[Arc<Source>],
    scratch: &mut Scratch,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    match recipe {
        Recipe::Bytes(b) => out.extend_from_slice(b),
        Recipe::Copy(leaf) => {
            let es = leaf.dtype.size_bytes();
            let at = out.len();
            out.resize(at + len * es, 0);
            let src = &sources[leaf.source];
            src.read_at(leaf.offset + (start * es) as u64, &mut out[at..])
                .map_err(|e| io_err(&e, src))?;
        }
        Recipe::Compute {
            expr,
            out: dtype,
            round_inputs,
        } => {
            let Scratch {
                levels,
                half,
                bhalf,
            } = scratch;
            let depth = expr.depth();
            if levels.len() < depth {
                levels.resize_with(depth, Vec::new);
            }
            let (first, rest) = levels.split_first_mut().ok_or("no scratch")?;
            first.resize(len, 0.0);
            let mut ev = Eval {
                sources,
                round: *round_inputs,
                half,
                bhalf,
            };
            ev.eval(expr, start, first, rest)?;
            store(first, *dtype, out, half, bhalf);
        }
    }
    Ok(())
}

/// Rounds f32 values once to `dtype` (round-to-nearest-even) and appends their bytes.
fn store(
    values: &[f32],
    dtype: DType,
    out: &mut Vec<u8>,
    half: &mut Vec<f16>,
    bhalf: &mut Vec<bf16>,
) {
    match dtype {
        DType::F16 => {
            half.resize(values.len(), f16::ZERO);
            half.convert_from_f32_slice(values);
            out.extend_from_slice(bytemuck::cast_slice(&half[..]));
        }
        DType::BF16 => {
            bhalf.resize(values.len(), bf16::ZERO);
            bhalf.convert_from_f32_slice(values);
            out.extend_from_slice(bytemuck::cast_slice(&bhalf[..]));
        }
        DType::F64 => {
            for v in values {
                out.extend_from_slice(&f64::from(*v).to_le_bytes());
            }
        }
        _ => out.extend_from_slice(bytemuck::cast_slice(values)),
    }
}
