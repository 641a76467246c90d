//! The joint attention of the dual-stream blocks behind a seam ([`JointAttention`]), on one device
//! or sequence-parallel (Ulysses) over a group of `U` ranks.
//!
//! Ulysses for HunyuanVideo 1.5 (the scheme of the official repo and vLLM-Omni, made exact): the
//! video tokens are split over the group ([`SeqShard`], padded to `U·⌈L/U⌉`; padding is cut out of
//! q/k/v before the core and never reaches a real token); the context tokens (≤ ~2k, trimmed to the
//! valid ones) stay whole on every rank. Around the core one all-to-all trades the video shard for a
//! head shard, the context q/k/v are sliced to the same heads, the core attends over `[all video,
//! context]` for `H/U` heads, the video output goes back by all-to-all and the context output is
//! all-gathered over heads — so every rank continues with the whole context stream.

use candle_core::{Result, Tensor};

use crate::models::wan::transformer::attention::AttentionBackend;
use crate::models::wan::transformer::ulysses::SeqShard;
use crate::parallel::comm::Collective;

/// Attention over `[video, context]` tokens: q/k/v of each stream as `(1, H, L, hd)` /
/// `(1, H, N, hd)`; returns the video and context outputs, same shapes.
pub trait JointAttention: Send + Sync {
    fn attend(&self, video: [&Tensor; 3], context: [&Tensor; 3]) -> Result<(Tensor, Tensor)>;
}

fn joint(inner: &dyn AttentionBackend, video: [&Tensor; 3], context: [&Tensor; 3]) -> Result<(Tensor, Tensor)> {
    let l = video[0].dim(2)?;
    let cat = |i: usize| Tensor::cat(&[video[i], context[i]], 2);
    let out = inner.attend(&cat(0)?, &cat(1)?, &cat(2)?)?;
    let n = out.dim(2)? - l;
    Ok((out.narrow(2, 0, l)?, out.narrow(2, l, n)?))
}

/// One device: the two streams concatenated and attended together.
pub struct LocalJoint<'a>(pub &'a dyn AttentionBackend);

impl JointAttention for LocalJoint<'_> {
    fn attend(&self, video: [&Tensor; 3], context: [&Tensor; 3]) -> Result<(Tensor, Tensor)> {
        joint(self.0, video, context)
    }
}

/// Ulysses over `comm` (ranks in sequence order); `shard` describes this rank's video tokens.
pub struct UlyssesJoint<'a> {
    pub comm: &'a dyn Collective,
    pub inner: &'a dyn AttentionBackend,
    pub shard: SeqShard,
}

impl JointAttention for UlyssesJoint<'_> {
    fn attend(&self, video: [&Tensor; 3], context: [&Tensor; 3]) -> Result<(Tensor, Tensor)> {
        let u = self.comm.world_size();
        if u == 1 {
            return joint(self.inner, video, context);
        }
        let h = video[0].dim(1)?;
        if !h.is_multiple_of(u) {
            let valid: Vec<usize> = (1..=h).filter(|d| h.is_multiple_of(*d)).collect();
            candle_core::bail!("ulysses degree {u} does not divide the {h} attention heads; valid degrees: {valid:?}");
        }
        if video[0].dim(2)? != self.shard.shard_len {
            candle_core::bail!(
                "ulysses: {} video tokens on this rank, its shard holds {}",
                video[0].dim(2)?,
                self.shard.shard_len
            );
        }
        let hs = h / u;
        let r = self.comm.rank().0;
        // (3, 1, H, L/U, hd) → (3, 1, H/U, L_pad, hd), padding cut.
        let qkv = Tensor::stack(&video, 0)?.contiguous()?;
        let full = self.comm.all_to_all(&qkv, 2, 3)?.narrow(3, 0, self.shard.len)?;
        let ctx: Vec<Tensor> = context.iter().map(|c| c.narrow(1, r * hs, hs)).collect::<Result<_>>()?;
        let (ov, oc) = joint(self.inner, [&full.get(0)?, &full.get(1)?, &full.get(2)?], [&ctx[0], &ctx[1], &ctx[2]])?;
        let pad = self.shard.padded_len() - self.shard.len;
        let ov = if pad > 0 { ov.pad_with_zeros(2, 0, pad)? } else { ov };
        let ov = self.comm.all_to_all(&ov.contiguous()?, 2, 1)?;
        let oc = self.comm.all_gather(&oc.contiguous()?, 1)?;
        Ok((ov, oc))
    }
}
