//! 3-axis rotary position embedding of the Wan DiT (diffusers 0.42.1 `WanRotaryPosEmbed`, DIT
//! 354-416, and `get_1d_rotary_pos_embed`).
//!
//! The head dim `hd` is split into a frame, a row and a column part of widths
//! `(hd − 4·⌊hd/6⌋, 2·⌊hd/6⌋, 2·⌊hd/6⌋)` (44/42/42 for 128, 8/4/4 for 16): on the `hd/2` rotated pairs
//! that is `(c − 2·⌊c/3⌋, ⌊c/3⌋, ⌊c/3⌋)` with `c = hd/2`, the split of the original Wan code. Each
//! part has its own frequency table `ω_j = θ^(-2j/d)` evaluated in f64 at integer positions and cast
//! to f32; pairs of channels are *interleaved* (`x[2i], x[2i+1]`). Nothing is precomputed at build
//! time: the tables for a latent grid are made per forward, only for the positions it uses.
//!
//! Older diffusers split the concatenated table at `(hd − 2·⌊hd/3⌋, ⌊hd/3⌋, ⌊hd/3⌋)` instead; that
//! differs for `hd ≡ 4 (mod 6)` (10, 16, 22, …), where it moved a frame frequency onto the row axis
//! and a row frequency onto the column axis. diffusers 0.42.1 splits at the table's own widths, as
//! here; the published models (hd 128) are unaffected.

use candle_core::{DType, Device, Result, Tensor};

const THETA: f64 = 10000.0;

/// Which position a rotated pair uses and its angular frequency.
#[derive(Debug, Clone, Copy)]
struct Pair {
    axis: usize,
    freq: f64,
}

/// The RoPE frequency layout for one head dim.
#[derive(Debug, Clone)]
pub struct WanRope {
    head_dim: usize,
    max_seq_len: usize,
    /// One entry per rotated pair, frame pairs first, then row, then column.
    pairs: Vec<Pair>,
}

/// Widths (in channels) of the frame, row and column parts of a head dim.
pub fn axis_widths(head_dim: usize) -> [usize; 3] {
    let hw = 2 * (head_dim / 6);
    [head_dim - 2 * hw, hw, hw]
}

impl WanRope {
    pub fn new(head_dim: usize, max_seq_len: usize) -> Result<Self> {
        if !head_dim.is_multiple_of(2) || head_dim == 0 {
            candle_core::bail!("rope: head dim {head_dim} must be even and > 0");
        }
        // Every width is even, so each pair lies within one axis and its cos and sin columns
        // share one frequency (`repeat_interleave(2)` of `1 / θ^(arange(0, d, 2)/d)`, in f64).
        let pairs = axis_widths(head_dim)
            .into_iter()
            .enumerate()
            .flat_map(|(axis, d)| {
                (0..d / 2).map(move |j| Pair { axis, freq: 1.0 / THETA.powf((2 * j) as f64 / d as f64) })
            })
            .collect();
        Ok(Self { head_dim, max_seq_len, pairs })
    }

    /// cos/sin tables for every token of a patched latent grid (frames, rows, cols), tokens in
    /// `f·(rows·cols) + h·cols + w` order.
    pub fn tables(&self, grid: (usize, usize, usize), device: &Device) -> Result<RopeTables> {
        let (nf, nh, nw) = grid;
        if nf.max(nh).max(nw) > self.max_seq_len {
            candle_core::bail!(
                "rope: patched latent grid {grid:?} exceeds rope_max_seq_len {} per axis",
                self.max_seq_len
            );
        }
        let half = self.head_dim / 2;
        // Per axis, the (position, pair) angles of the pairs that axis owns (zero elsewhere).
        let axis_table = |axis: usize, n: usize| -> (Vec<f32>, Vec<f32>) {
            let mut cos = vec![0f32; n * half];
            let mut sin = vec![0f32; n * half];
            for p in 0..n {
                for (i, pair) in self.pairs.iter().enumerate().filter(|(_, pair)| pair.axis == axis) {
                    let angle = p as f64 * pair.freq;
                    cos[p * half + i] = angle.cos() as f32;
                    sin[p * half + i] = angle.sin() as f32;
                }
            }
            (cos, sin)
        };
        let tabs = [axis_table(0, nf), axis_table(1, nh), axis_table(2, nw)];
        let len = nf * nh * nw;
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for f in 0..nf {
            for h in 0..nh {
                for w in 0..nw {
                    let pos = [f, h, w];
                    for (i, pair) in self.pairs.iter().enumerate() {
                        let a = pair.axis;
                        cos.push(tabs[a].0[pos[a] * half + i]);
                        sin.push(tabs[a].1[pos[a] * half + i]);
                    }
                }
            }
        }
        Ok(RopeTables {
            cos: Tensor::from_vec(cos, (len, half), device)?,
            sin: Tensor::from_vec(sin, (len, half), device)?,
        })
    }
}

/// Per-token cos/sin, each `(L, head_dim/2)` f32 (one value per rotated pair).
#[derive(Debug, Clone)]
pub struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
}

impl RopeTables {
    /// The tables of tokens `start..start+len` (a sequence shard).
    pub fn narrow(&self, start: usize, len: usize) -> Result<Self> {
        Ok(Self {
            cos: self.cos.narrow(0, start, len)?.contiguous()?,
            sin: self.sin.narrow(0, start, len)?.contiguous()?,
        })
    }

    pub fn len(&self) -> usize {
        self.cos.dim(0).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rotates interleaved pairs of `xs` `(B, H, L, hd)`:
    /// `out[2i] = x[2i]·cos − x[2i+1]·sin`, `out[2i+1] = x[2i]·sin + x[2i+1]·cos`, in f32 (the
    /// tables are f32, so torch promotes) and cast back to the input dtype.
    pub fn apply(&self, xs: &Tensor) -> Result<Tensor> {
        let (_b, _h, l, hd) = xs.dims4()?;
        if l != self.len() || hd != 2 * self.cos.dim(1)? {
            candle_core::bail!(
                "rope: input {:?} does not match tables for {} tokens × {} pairs",
                xs.shape(),
                self.len(),
                self.cos.dim(1)?
            );
        }
        let dtype = xs.dtype();
        let x32 = xs.to_dtype(DType::F32)?.contiguous()?;
        candle_nn::rotary_emb::rope_i(&x32, &self.cos, &self.sin)?.to_dtype(dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks every pair of one token against `pos / θ^(2j/d)` for the axis layout `widths`.
    fn check_layout(head_dim: usize, widths: [usize; 3]) -> Result<()> {
        let rope = WanRope::new(head_dim, 1024)?;
        let (nf, nh, nw) = (3, 4, 5);
        let t = rope.tables((nf, nh, nw), &Device::Cpu)?;
        let (cos, sin) = (t.cos.to_vec2::<f32>()?, t.sin.to_vec2::<f32>()?);
        assert_eq!((cos.len(), cos[0].len()), (60, head_dim / 2));
        let pos = [2usize, 3, 4];
        let tok = pos[0] * nh * nw + pos[1] * nw + pos[2];
        let mut i = 0;
        for (axis, d) in widths.into_iter().enumerate() {
            for j in 0..d / 2 {
                let angle = pos[axis] as f64 / 10000f64.powf(2.0 * j as f64 / d as f64);
                assert_eq!(cos[tok][i], angle.cos() as f32, "hd {head_dim}: cos pair {i}");
                assert_eq!(sin[tok][i], angle.sin() as f32, "hd {head_dim}: sin pair {i}");
                i += 1;
            }
        }
        assert_eq!(i, head_dim / 2);
        Ok(())
    }

    /// Head dim 128: pairs 0..22 rotate with the frame, 22..43 with the row, 43..64 with the
    /// column, at `ω = 10000^(−2j/d)` per axis (diffusers `WanRotaryPosEmbed`: 44 + 42 + 42 of 128).
    #[test]
    fn tables_follow_the_44_42_42_split() -> Result<()> {
        assert_eq!(axis_widths(128), [44, 42, 42]);
        check_layout(128, [44, 42, 42])?;
        assert!(WanRope::new(128, 1024)?.tables((1025, 1, 1), &Device::Cpu).is_err());
        Ok(())
    }

    /// Head dims ≡ 4 (mod 6) split at the tables' own widths, as diffusers 0.42.1 and the Wan code
    /// do: 16 → 8/4/4 (4, 2, 2 pairs), not the older 6/5/5 column split that moved frame pair 3
    /// onto the row axis (8.5e-5 relative error on a whole transformer).
    #[test]
    fn uneven_head_dims_split_at_the_table_widths() -> Result<()> {
        check_layout(16, [8, 4, 4])?;
        check_layout(10, [6, 2, 2])?;
        check_layout(22, [10, 6, 6])?;
        for hd in (2..=64).step_by(2) {
            let c = hd / 2;
            let pairs = axis_widths(hd).map(|w| w / 2);
            assert_eq!(pairs, [c - 2 * (c / 3), c / 3, c / 3], "hd {hd}: the Wan split on pairs");
            check_layout(hd, axis_widths(hd))?;
        }
        Ok(())
    }

    #[test]
    fn apply_rotates_interleaved_pairs() -> Result<()> {
        let rope = WanRope::new(12, 16)?;
        let t = rope.tables((2, 2, 2), &Device::Cpu)?;
        let xs = Tensor::randn(0f32, 1., (1, 3, 8, 12), &Device::Cpu)?;
        let (x, y) = (xs.get(0)?.get(1)?.to_vec2::<f32>()?, t.apply(&xs)?.get(0)?.get(1)?.to_vec2::<f32>()?);
        let (cos, sin) = (t.cos.to_vec2::<f32>()?, t.sin.to_vec2::<f32>()?);
        for tok in 0..8 {
            for i in 0..6 {
                let (a, b) = (x[tok][2 * i], x[tok][2 * i + 1]);
                assert!((y[tok][2 * i] - (a * cos[tok][i] - b * sin[tok][i])).abs() < 1e-6);
                assert!((y[tok][2 * i + 1] - (a * sin[tok][i] + b * cos[tok][i])).abs() < 1e-6);
            }
        }
        Ok(())
    }
}
