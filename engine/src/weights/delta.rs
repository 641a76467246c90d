//! Weight deltas merged into a checkpoint's tensors as they are read: what a LoRA becomes once its
//! file is parsed (`models::wan::lora`). Merging at load keeps the model code unchanged and costs
//! nothing per step.
//!
//! Every delta is computed in f32 and added to the f32 value of the stored tensor; the sum then
//! goes to the run dtype like any tensor. A rank that holds only a slice of a tensor (FSDP) merges
//! only that slice: [`Deltas::apply_range`] multiplies just the rows of `up` the slice touches, so
//! no rank ever builds a whole merged matrix it would not hold anyway.

use std::collections::BTreeMap;

use candle_core::{DType, Result, Tensor};

/// One delta on one tensor.
#[derive(Debug, Clone)]
pub enum Delta {
    /// `W += scale · up @ down`, with `up` `(out, r)` and `down` `(r, cols)` (f32; `cols` is the
    /// product of the weight's other dims, so conv kernels are covered too).
    LowRank { up: Tensor, down: Tensor, scale: f64 },
    /// `W += scale · diff` (`diff` flattened, f32): full-weight deltas and bias deltas.
    Full { diff: Tensor, scale: f64 },
}

impl Delta {
    /// Elements `[a, b)` of this delta, flattened row-major, as f32 `(b − a,)`.
    fn range(&self, a: usize, b: usize) -> Result<Tensor> {
        match self {
            Delta::Full { diff, scale } => diff.narrow(0, a, b - a)?.affine(*scale, 0.0),
            Delta::LowRank { up, down, scale } => {
                let cols = down.dim(1)?;
                let (r0, r1) = (a / cols, b.div_ceil(cols));
                let rows = up.narrow(0, r0, r1 - r0)?.matmul(down)?.flatten_all()?;
                rows.narrow(0, a - r0 * cols, b - a)?.affine(*scale, 0.0)
            }
        }
    }

    fn numel(&self) -> Result<usize> {
        Ok(match self {
            Delta::Full { diff, .. } => diff.elem_count(),
            Delta::LowRank { up, down, .. } => up.dim(0)? * down.dim(1)?,
        })
    }
}

/// Deltas by model tensor name (e.g. `blocks.0.attn1.to_q.weight`).
#[derive(Debug, Clone, Default)]
pub struct Deltas {
    by_name: BTreeMap<String, Vec<Delta>>,
}

impl Deltas {
    pub fn push(&mut self, name: impl Into<String>, delta: Delta) {
        self.by_name.entry(name.into()).or_default().push(delta);
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Names with deltas, in order.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.by_name.keys()
    }

    /// Total number of deltas.
    pub fn len(&self) -> usize {
        self.by_name.values().map(Vec::len).sum()
    }

    /// `base` (the whole tensor) plus its deltas, in f32; `base` unchanged when it has none.
    pub fn apply(&self, name: &str, base: Tensor) -> Result<Tensor> {
        let n = base.elem_count();
        self.apply_range(name, 0..n, base.flatten_all()?)?.reshape(base.shape())
    }

    /// `slice` (elements `range` of tensor `name` flattened) plus the same elements of its deltas,
    /// in f32; `slice` unchanged when the tensor has none.
    pub fn apply_range(&self, name: &str, range: std::ops::Range<usize>, slice: Tensor) -> Result<Tensor> {
        let Some(deltas) = self.by_name.get(name) else { return Ok(slice) };
        let mut out = slice.to_dtype(DType::F32)?;
        for d in deltas {
            if range.end > d.numel()? {
                candle_core::bail!("delta for {name} has {} elements, the tensor more", d.numel()?);
            }
            out = (out + d.range(range.start, range.end)?)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Any slice of the merged tensor equals the same slice of the whole merge, for slices that
    /// start and end mid-row.
    #[test]
    fn slices_merge_like_the_whole() -> Result<()> {
        let dev = Device::Cpu;
        let (out, cols, r) = (7, 5, 3);
        let w = Tensor::randn(0f32, 1., (out, cols), &dev)?;
        let up = Tensor::randn(0f32, 1., (out, r), &dev)?;
        let down = Tensor::randn(0f32, 1., (r, cols), &dev)?;
        let diff = Tensor::randn(0f32, 1., out * cols, &dev)?;
        let mut deltas = Deltas::default();
        deltas.push("w", Delta::LowRank { up: up.clone(), down: down.clone(), scale: 0.7 });
        deltas.push("w", Delta::Full { diff: diff.clone(), scale: -0.5 });
        let whole = deltas.apply("w", w.clone())?;
        let want = ((&w + (up.matmul(&down)? * 0.7)?)? + (diff.reshape((out, cols))? * -0.5)?)?;
        let err = (&whole - &want)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        assert!(err < 1e-5, "{err}");
        let flat = whole.flatten_all()?;
        for (a, b) in [(0, 35), (3, 4), (4, 13), (12, 35), (34, 35)] {
            let got = deltas.apply_range("w", a..b, w.flatten_all()?.narrow(0, a, b - a)?)?;
            let err = (got - flat.narrow(0, a, b - a)?)?.abs()?.max(0)?.to_scalar::<f32>()?;
            assert!(err < 1e-6, "{a}..{b}: {err}");
        }
        Ok(())
    }
}
