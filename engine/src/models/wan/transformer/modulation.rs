//! Timestep conditioning without per-token copies.
//!
//! With TI2V's `expand_timesteps` the timestep is given per token, `(B, L)`, but it only changes
//! between latent frames (frame 0 is the conditioning image at t = 0). diffusers embeds all L rows
//! and materialises `(B, L, 6, D)` (2 GB per block at 720p). Here the sequence is cut into *runs* of
//! consecutive tokens whose timesteps are equal in every batch row; each run is embedded once and
//! broadcast over its tokens. Row for row this is the same arithmetic as diffusers.

use candle_core::{DType, Result, Tensor};

/// Consecutive token runs sharing one conditioning row; the lengths sum to the sequence length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRuns {
    lens: Vec<usize>,
}

impl TokenRuns {
    /// One run covering `len` tokens (a scalar timestep per batch row).
    pub fn single(len: usize) -> Self {
        Self { lens: vec![len] }
    }

    /// One run per token: diffusers' materialised `(B, L, …)` layout (a reference for tests).
    pub fn per_token(len: usize) -> Self {
        Self { lens: vec![1; len] }
    }

    /// The length of each run, in token order.
    pub fn lens(&self) -> &[usize] {
        &self.lens
    }

    /// Splits per-token timesteps (one `Vec` per batch row, all of equal length) into maximal runs
    /// of equal columns. Returns the runs and the index of each run's first token.
    pub fn from_timesteps(rows: &[Vec<f32>]) -> Result<(Self, Vec<usize>)> {
        let len = rows.first().map(|r| r.len()).unwrap_or(0);
        if len == 0 || rows.iter().any(|r| r.len() != len) {
            candle_core::bail!("per-token timesteps must be a non-empty (B, L) matrix");
        }
        let mut starts = vec![0usize];
        for j in 1..len {
            // Bitwise comparison: a run may only merge tokens whose embeddings are identical.
            if rows.iter().any(|r| r[j].to_bits() != r[j - 1].to_bits()) {
                starts.push(j);
            }
        }
        let lens = starts.iter().zip(starts.iter().skip(1).chain(std::iter::once(&len))).map(|(a, b)| b - a).collect();
        Ok((Self { lens }, starts))
    }

    /// The same runs with the last one `extra` tokens longer (sequence padding of a shard: the
    /// padding tokens reuse the last conditioning row; their outputs are discarded).
    pub fn extend_last(&self, extra: usize) -> Self {
        let mut lens = self.lens.clone();
        if let Some(last) = lens.last_mut() {
            *last += extra;
        }
        Self { lens }
    }

    /// Total tokens covered.
    pub fn tokens(&self) -> usize {
        self.lens.iter().sum()
    }

    /// Number of runs (= conditioning rows).
    pub fn count(&self) -> usize {
        self.lens.len()
    }

    /// The common run length when every run has the same length.
    fn uniform(&self) -> Option<usize> {
        let first = *self.lens.first()?;
        self.lens.iter().all(|&l| l == first).then_some(first)
    }

    /// The runs covering tokens `start..start+len` and the range of row indices they use.
    pub fn slice(&self, start: usize, len: usize) -> Result<(Self, std::ops::Range<usize>)> {
        let total = self.tokens();
        if len == 0 || start + len > total {
            candle_core::bail!("token slice {start}..{} out of range for {total} tokens", start + len);
        }
        let (end, mut lens, mut first_row, mut pos) = (start + len, Vec::new(), None, 0usize);
        let mut last_row = 0;
        for (r, &l) in self.lens.iter().enumerate() {
            let (a, b) = (pos.max(start), (pos + l).min(end));
            if a < b {
                first_row.get_or_insert(r);
                last_row = r;
                lens.push(b - a);
            }
            pos += l;
        }
        let first = first_row.unwrap_or(0);
        Ok((Self { lens }, first..last_row + 1))
    }

    /// Applies `f(x_run, rows_run)` with every row tensor `(B, R, D)` broadcast over the tokens of
    /// its run, for `xs` `(B, L, D)`. Uses one broadcast op when possible (one run, or equal runs),
    /// per-run slices otherwise.
    pub fn broadcast_apply<F>(&self, xs: &Tensor, rows: &[&Tensor], f: F) -> Result<Tensor>
    where
        F: Fn(&Tensor, &[Tensor]) -> Result<Tensor>,
    {
        let (b, l, d) = xs.dims3()?;
        if l != self.tokens() {
            candle_core::bail!("modulation covers {} tokens but the input is {:?}", self.tokens(), xs.shape());
        }
        let r = self.count();
        for row in rows {
            if row.dims3()? != (b, r, d) {
                candle_core::bail!(
                    "modulation rows {:?} do not match input {:?} with {r} runs",
                    row.shape(),
                    xs.shape()
                );
            }
        }
        if r == 1 {
            return f(xs, rows.iter().map(|t| (*t).clone()).collect::<Vec<_>>().as_slice());
        }
        if let Some(n) = self.uniform() {
            let xs4 = xs.reshape((b, r, n, d))?;
            let rows4 = rows.iter().map(|t| t.unsqueeze(2)).collect::<Result<Vec<_>>>()?;
            return f(&xs4, &rows4)?.reshape((b, l, d));
        }
        let mut parts = Vec::with_capacity(r);
        let mut pos = 0;
        for (i, &n) in self.lens.iter().enumerate() {
            let x = xs.narrow(1, pos, n)?;
            let rs = rows.iter().map(|t| t.narrow(1, i, 1)).collect::<Result<Vec<_>>>()?;
            parts.push(f(&x, &rs)?);
            pos += n;
        }
        Tensor::cat(&parts, 1)
    }
}

/// The time embedding of one forward, per run: `temb` `(B, R, D)` (for the output head) and
/// `proj` `(B, R, 6, D)` (for the blocks), both in the run dtype as diffusers has them.
#[derive(Debug, Clone)]
pub struct TimeConditioning {
    pub temb: Tensor,
    pub proj: Tensor,
    pub runs: TokenRuns,
}

impl TimeConditioning {
    /// The conditioning of tokens `start..start+len` (a sequence shard).
    pub fn narrow(&self, start: usize, len: usize) -> Result<Self> {
        let (runs, rows) = self.runs.slice(start, len)?;
        Ok(Self {
            temb: self.temb.narrow(1, rows.start, rows.len())?,
            proj: self.proj.narrow(1, rows.start, rows.len())?,
            runs,
        })
    }
}

/// `table + cond` in f32 (diffusers: `scale_shift_table + temb.float()`), split into its `k`
/// chunks along dim 2: table `(1, k, D)`, cond `(B, R, k, D)` → k tensors `(B, R, D)`.
pub fn modulation_chunks(table: &Tensor, cond: &Tensor) -> Result<Vec<Tensor>> {
    let (_, k, d) = table.dims3()?;
    let sum = table.reshape((1, 1, k, d))?.broadcast_add(&cond.to_dtype(DType::F32)?)?;
    (0..k).map(|i| sum.narrow(2, i, 1)?.squeeze(2)).collect()
}

/// `x · (1 + scale) + shift` with per-run rows, in f32 (`x` is the f32 LayerNorm output).
pub fn scale_shift(runs: &TokenRuns, xs: &Tensor, scale: &Tensor, shift: &Tensor) -> Result<Tensor> {
    let one_plus = (scale + 1.0)?;
    runs.broadcast_apply(xs, &[&one_plus, shift], |x, r| x.broadcast_mul(&r[0])?.broadcast_add(&r[1]))
}

/// `x · gate` with per-run rows.
pub fn gate(runs: &TokenRuns, xs: &Tensor, gate: &Tensor) -> Result<Tensor> {
    runs.broadcast_apply(xs, &[gate], |x, r| x.broadcast_mul(&r[0]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Per-token materialisation: row of token j's run, for every token.
    fn expand(rows: &Tensor, runs: &TokenRuns) -> Result<Tensor> {
        let idx: Vec<u32> = runs.lens.iter().enumerate().flat_map(|(r, &n)| std::iter::repeat_n(r as u32, n)).collect();
        let n = idx.len();
        rows.index_select(&Tensor::from_vec(idx, n, rows.device())?, 1)
    }

    #[test]
    fn runs_from_timesteps() -> Result<()> {
        let (runs, starts) = TokenRuns::from_timesteps(&[vec![0., 0., 5., 5., 5., 7.], vec![1., 1., 1., 1., 1., 1.]])?;
        assert_eq!((runs.lens.clone(), starts), (vec![2, 3, 1], vec![0, 2, 5]));
        // A column differing in the second batch row splits a run too.
        let (runs, _) = TokenRuns::from_timesteps(&[vec![3., 3., 3.], vec![1., 2., 2.]])?;
        assert_eq!(runs.lens, vec![1, 2]);
        assert!(TokenRuns::from_timesteps(&[vec![1.], vec![1., 2.]]).is_err());
        Ok(())
    }

    #[test]
    fn slice_keeps_the_rows_it_touches() -> Result<()> {
        let runs = TokenRuns { lens: vec![4, 4, 4] };
        let (s, rows) = runs.slice(3, 6)?;
        assert_eq!((s.lens, rows), (vec![1, 4, 1], 0..3));
        let (s, rows) = runs.slice(4, 4)?;
        assert_eq!((s.lens, rows), (vec![4], 1..2));
        assert!(runs.slice(10, 3).is_err());
        Ok(())
    }

    /// Every path (one run, equal runs, ragged runs) equals the materialised per-token math.
    #[test]
    fn broadcast_apply_equals_per_token() -> Result<()> {
        let dev = Device::Cpu;
        for lens in [vec![12], vec![4, 4, 4], vec![4, 1, 1, 6], vec![1; 12]] {
            let runs = TokenRuns { lens };
            let (b, d, r) = (2, 5, runs.count());
            let xs = Tensor::randn(0f32, 1., (b, 12, d), &dev)?;
            let scale = Tensor::randn(0f32, 1., (b, r, d), &dev)?;
            let shift = Tensor::randn(0f32, 1., (b, r, d), &dev)?;
            let ours = scale_shift(&runs, &xs, &scale, &shift)?;
            let reference = xs.mul(&(expand(&scale, &runs)? + 1.0)?)?.add(&expand(&shift, &runs)?)?;
            let diff = (ours - reference)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            assert_eq!(diff, 0.0, "runs {:?}", runs.lens);
        }
        Ok(())
    }
}
