//! Ulysses sequence parallelism for the Wan DiT: the tokens are split over a sequence-parallel
//! group; around the self-attention core an all-to-all trades the sequence shard for a head shard
//! (every rank then sees the whole sequence for `H/U` heads) and a second one trades it back.
//!
//! - [`SeqShard`]: which tokens a rank owns. When `U` does not divide `L` the sequence is padded to
//!   `U·⌈L/U⌉` with zero tokens (never truncated); RoPE rows and timestep runs are sliced with the
//!   same ranges and padded alike. Padding never reaches a real token: it is cut out of q/k/v before
//!   the attention core (so no key mask is needed) and out of the gathered output.
//! - [`UlyssesAttention`]: the [`AttentionBackend`] doing the two all-to-alls around an inner core.
//!
//! Everything else in a block is token-local, so it runs on the shard unchanged.

use candle_core::{Result, Tensor};

use super::attention::AttentionBackend;
use super::modulation::TimeConditioning;
use super::rope::RopeTables;
use crate::parallel::comm::Collective;

/// The tokens one rank of a sequence-parallel group of `degree` owns: `[start, start + shard_len)`
/// of the sequence padded to `degree · shard_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqShard {
    /// Real tokens in the whole sequence.
    pub len: usize,
    pub degree: usize,
    pub index: usize,
    /// `⌈len / degree⌉`.
    pub shard_len: usize,
}

impl SeqShard {
    pub fn new(len: usize, degree: usize, index: usize) -> Result<Self> {
        if len == 0 || degree == 0 || index >= degree {
            candle_core::bail!("sequence shard {index} of {degree} over {len} tokens is not valid");
        }
        Ok(Self { len, degree, index, shard_len: len.div_ceil(degree) })
    }

    pub fn start(&self) -> usize {
        self.index * self.shard_len
    }

    pub fn padded_len(&self) -> usize {
        self.degree * self.shard_len
    }

    /// Real tokens in this shard (the rest is padding).
    pub fn valid(&self) -> usize {
        self.len.saturating_sub(self.start()).min(self.shard_len)
    }

    /// This shard's rows of `xs` along `dim` (length `len` there), zero-padded to `shard_len`.
    pub fn take(&self, xs: &Tensor, dim: usize) -> Result<Tensor> {
        if xs.dim(dim)? != self.len {
            candle_core::bail!("sequence shard: {:?} has no {} tokens on dim {dim}", xs.shape(), self.len);
        }
        let valid = self.valid();
        let real = (valid > 0).then(|| xs.narrow(dim, self.start(), valid)).transpose()?;
        pad_to(real, xs, dim, self.shard_len)
    }

    /// The timestep conditioning of this shard's tokens; padding tokens reuse the last row.
    pub fn time(&self, time: &TimeConditioning) -> Result<TimeConditioning> {
        let pad = self.shard_len - self.valid();
        if self.valid() == 0 {
            let last = time.runs.count() - 1;
            return Ok(TimeConditioning {
                temb: time.temb.narrow(1, last, 1)?,
                proj: time.proj.narrow(1, last, 1)?,
                runs: super::modulation::TokenRuns::single(self.shard_len),
            });
        }
        let mut t = time.narrow(self.start(), self.valid())?;
        t.runs = t.runs.extend_last(pad);
        Ok(t)
    }

    /// The RoPE rows of this shard's tokens (zero rows for padding).
    pub fn rope(&self, rope: &RopeTables) -> Result<RopeTables> {
        Ok(RopeTables { cos: self.take(&rope.cos, 0)?, sin: self.take(&rope.sin, 0)? })
    }
}

/// `real` (may be `None` when empty) zero-padded along `dim` to `n` rows, shaped like `like`.
fn pad_to(real: Option<Tensor>, like: &Tensor, dim: usize, n: usize) -> Result<Tensor> {
    let have = real.as_ref().map(|r| r.dim(dim)).transpose()?.unwrap_or(0);
    if have == n {
        if let Some(r) = real {
            return r.contiguous();
        }
    }
    let mut shape = like.dims().to_vec();
    shape[dim] = n - have;
    let zeros = Tensor::zeros(shape, like.dtype(), like.device())?;
    match real {
        Some(r) => Tensor::cat(&[&r, &zeros], dim),
        None => Ok(zeros),
    }
}

/// Sequence-parallel self-attention: q/k/v `(B, H, L/U, hd)` of this rank's tokens →
/// all-to-all → `(B, H/U, L_pad, hd)` → padding cut → `inner` → padded → all-to-all back.
pub struct UlyssesAttention<'a> {
    /// The Ulysses group (ranks in sequence order).
    pub comm: &'a dyn Collective,
    pub inner: &'a dyn AttentionBackend,
    /// Real tokens of the whole sequence.
    pub len: usize,
}

impl AttentionBackend for UlyssesAttention<'_> {
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let u = self.comm.world_size();
        if u == 1 {
            return self.inner.attend(q, k, v);
        }
        let (_, h, ls, _) = q.dims4()?;
        if k.dims() != q.dims() || v.dims() != q.dims() {
            candle_core::bail!(
                "ulysses: q {:?}, k {:?}, v {:?} must have equal shapes",
                q.shape(),
                k.shape(),
                v.shape()
            );
        }
        if !h.is_multiple_of(u) {
            let valid: Vec<usize> = (1..=h).filter(|d| h.is_multiple_of(*d)).collect();
            candle_core::bail!("ulysses degree {u} does not divide the {h} attention heads; valid degrees: {valid:?}");
        }
        let padded = ls * u;
        if padded < self.len {
            candle_core::bail!("ulysses: {u} shards of {ls} tokens cannot hold {} tokens", self.len);
        }
        // One exchange for q, k and v: (3, B, H, L/U, hd) → (3, B, H/U, L_pad, hd).
        let qkv = Tensor::stack(&[q, k, v], 0)?.contiguous()?;
        let full = self.comm.all_to_all(&qkv, 2, 3)?;
        let full = if padded > self.len { full.narrow(3, 0, self.len)? } else { full };
        let out = self.inner.attend(&full.get(0)?, &full.get(1)?, &full.get(2)?)?;
        let out = pad_to(Some(out.clone()), &out, 2, padded)?; // (B, H/U, L_pad, hd)
        self.comm.all_to_all(&out, 2, 1)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use candle_core::Device;

    use super::*;
    use crate::models::wan::transformer::attention::naive_attention;
    use crate::models::wan::transformer::ChunkedAttention;
    use crate::parallel::comm::ThreadComm;

    #[test]
    fn shards_cover_the_sequence_with_padding_at_the_end() -> Result<()> {
        let xs = Tensor::arange(0f32, 7., &Device::Cpu)?.reshape((1, 7, 1))?;
        let shards: Vec<Vec<f32>> = (0..3)
            .map(|i| SeqShard::new(7, 3, i)?.take(&xs, 1)?.flatten_all()?.to_vec1::<f32>())
            .collect::<Result<_>>()?;
        assert_eq!(shards, vec![vec![0., 1., 2.], vec![3., 4., 5.], vec![6., 0., 0.]]);
        // More ranks than tokens: the last shard is all padding.
        let s = SeqShard::new(3, 4, 3)?;
        assert_eq!((s.valid(), s.take(&xs.narrow(1, 0, 3)?, 1)?.dims()), (0, &[1usize, 1, 1][..]));
        assert!(SeqShard::new(3, 2, 2).is_err());
        Ok(())
    }

    /// Ulysses attention over 2 and 3 ranks (3 with padding: 10 tokens) equals attention on the
    /// whole sequence, row for row; heads not divisible by the degree are rejected with the valid
    /// degrees.
    #[test]
    fn ulysses_equals_whole_sequence_attention() {
        let dev = Device::Cpu;
        let (l, h, hd) = (10, 6, 4);
        let q = (Tensor::randn(0f32, 1., (1, h, l, hd), &dev).unwrap() * 3.0).unwrap();
        let k = Tensor::randn(0f32, 1., (1, h, l, hd), &dev).unwrap();
        let v = Tensor::randn(0f32, 1., (1, h, l, hd), &dev).unwrap();
        let want = naive_attention(&q, &k, &v).unwrap();
        for u in [2usize, 3] {
            let comms = ThreadComm::world(u, Duration::from_secs(10));
            let outs: Vec<Tensor> = std::thread::scope(|s| {
                let hs: Vec<_> = comms
                    .into_iter()
                    .enumerate()
                    .map(|(i, comm)| {
                        let (q, k, v) = (&q, &k, &v);
                        s.spawn(move || {
                            let shard = SeqShard::new(l, u, i).unwrap();
                            let inner = ChunkedAttention::new(3, 4);
                            let ua = UlyssesAttention { comm: &comm, inner: &inner, len: l };
                            let take = |t: &Tensor| shard.take(t, 2).unwrap();
                            let out = ua.attend(&take(q), &take(k), &take(v)).unwrap();
                            out.narrow(2, 0, shard.valid()).unwrap()
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let got = Tensor::cat(&outs, 2).unwrap();
            let err = (got - &want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
            let err = err.to_scalar::<f32>().unwrap();
            println!("ulysses {u}: max-abs {err:.2e} vs whole-sequence attention");
            // Same f32 arithmetic per head, only blocked differently: rounding-level differences.
            assert!(err < 1e-5, "ulysses {u}: max-abs {err}");
        }
        let comms = ThreadComm::world(4, Duration::from_secs(10));
        std::thread::scope(|s| {
            for comm in comms {
                let (q, k, v) = (&q, &k, &v);
                s.spawn(move || {
                    let inner = ChunkedAttention::default();
                    let ua = UlyssesAttention { comm: &comm, inner: &inner, len: l };
                    let shard = SeqShard::new(l, 4, comm.rank().0).unwrap();
                    let take = |t: &Tensor| shard.take(t, 2).unwrap();
                    let err = ua.attend(&take(q), &take(k), &take(v)).unwrap_err().to_string();
                    assert!(err.contains("valid degrees: [1, 2, 3, 6]"), "{err}");
                });
            }
        });
    }
}
