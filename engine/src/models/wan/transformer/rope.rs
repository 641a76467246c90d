//! 3-axis rotary position embedding of the Wan DiT (diffusers `WanRotaryPosEmbed`, DIT 354-416,
//! and `get_1d_rotary_pos_embed`).
//!
//! The head dim is split into a frame, a row and a column part (44/42/42 for 128). Each part has its
//! own frequency table `ω_j = θ^(-2j/d)` evaluated in f64 at integer positions and cast to f32;
//! pairs of channels are *interleaved* (`x[2i], x[2i+1]`). Nothing is precomputed at build time:
//! the tables for a latent grid are made per forward, only for the positions it uses.

use candle_core::{DType, Device, Result, Tensor};

const THETA: f64 = 10000.0;

/// Which position a table column uses and its angular frequency.
#[derive(Debug, Clone, Copy)]
struct Column {
    axis: usize,
    freq: f64,
}

/// The RoPE frequency layout for one head dim.
#[derive(Debug, Clone)]
pub struct WanRope {
    head_dim: usize,
    max_seq_len: usize,
    columns: Vec<Column>,
}

impl WanRope {
    pub fn new(head_dim: usize, max_seq_len: usize) -> Result<Self> {
        if !head_dim.is_multiple_of(2) || head_dim == 0 {
            candle_core::bail!("rope: head dim {head_dim} must be even and > 0");
        }
        // Tables are built with widths (t, h, w) = (hd − 2·2·(hd//6), 2·(hd//6), 2·(hd//6)) and
        // concatenated, but the forward splits the concatenation at (hd − 2·(hd//3), hd//3, hd//3).
        // The two agree for every real head dim; mapping column by column keeps diffusers'
        // behaviour exactly even where they would not.
        let hw = 2 * (head_dim / 6);
        let build_dims = [head_dim - 2 * hw, hw, hw];
        let split = [head_dim - 2 * (head_dim / 3), head_dim / 3, head_dim / 3];
        let mut freqs = Vec::with_capacity(head_dim);
        for d in build_dims {
            for j in 0..d / 2 {
                // `1 / θ^(arange(0, d, 2)/d)` in float64, then `repeat_interleave(2)`.
                let f = 1.0 / THETA.powf((2 * j) as f64 / d as f64);
                freqs.push(f);
                freqs.push(f);
            }
        }
        let columns = (0..head_dim)
            .map(|c| {
                let axis = if c < split[0] {
                    0
                } else if c < split[0] + split[1] {
                    1
                } else {
                    2
                };
                // Odd build widths leave a column without a frequency (diffusers' table is then
                // shorter than hd and the forward fails); cannot happen for an even head dim ≥ 6.
                Column { axis, freq: freqs.get(c).copied().unwrap_or(0.0) }
            })
            .collect();
        Ok(Self { head_dim, max_seq_len, columns })
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
        // Per axis, the (position, pair) entries for the pairs that axis owns. diffusers keeps
        // `cos[..., 0::2]` and `sin[..., 1::2]`: pair i takes cos from column 2i, sin from 2i+1.
        let axis_table = |axis: usize, n: usize| -> (Vec<f32>, Vec<f32>) {
            let mut cos = vec![0f32; n * half];
            let mut sin = vec![0f32; n * half];
            for p in 0..n {
                for i in 0..half {
                    let (c, s) = (self.columns[2 * i], self.columns[2 * i + 1]);
                    if c.axis == axis {
                        cos[p * half + i] = ((p as f64) * c.freq).cos() as f32;
                    }
                    if s.axis == axis {
                        sin[p * half + i] = ((p as f64) * s.freq).sin() as f32;
                    }
                }
            }
            (cos, sin)
        };
        let tabs = [axis_table(0, nf), axis_table(1, nh), axis_table(2, nw)];
        let owner = |i: usize, sin: bool| self.columns[2 * i + usize::from(sin)].axis;
        let len = nf * nh * nw;
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for f in 0..nf {
            for h in 0..nh {
                for w in 0..nw {
                    let pos = [f, h, w];
                    for i in 0..half {
                        let a = owner(i, false);
                        cos.push(tabs[a].0[pos[a] * half + i]);
                        let a = owner(i, true);
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

    /// Head dim 128: pairs 0..22 rotate with the frame, 22..43 with the row, 43..64 with the
    /// column, at `ω = 10000^(−2j/d)` per axis (diffusers `WanRotaryPosEmbed`: 44 + 42 + 42 of 128).
    #[test]
    fn tables_follow_the_44_42_42_split() -> Result<()> {
        let rope = WanRope::new(128, 1024)?;
        let (nf, nh, nw) = (3, 4, 5);
        let t = rope.tables((nf, nh, nw), &Device::Cpu)?;
        let (cos, sin) = (t.cos.to_vec2::<f32>()?, t.sin.to_vec2::<f32>()?);
        assert_eq!((cos.len(), cos[0].len()), (60, 64));
        let (f, h, w) = (2usize, 3usize, 4usize);
        let tok = f * nh * nw + h * nw + w;
        for i in 0..64 {
            let (pos, j, d) = if i < 22 {
                (f, i, 44)
            } else if i < 43 {
                (h, i - 22, 42)
            } else {
                (w, i - 43, 42)
            };
            let angle = pos as f64 / 10000f64.powf(2.0 * j as f64 / d as f64);
            assert_eq!(cos[tok][i], angle.cos() as f32, "cos pair {i}");
            assert_eq!(sin[tok][i], angle.sin() as f32, "sin pair {i}");
        }
        assert!(rope.tables((1025, 1, 1), &Device::Cpu).is_err());
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
