//! Attention of the Wan DiT: the q/k/v projections with QK RMSNorm across heads (diffusers
//! `WanAttention` + `WanAttnProcessor`, DIT 68-162) and the attention core behind a seam.
//!
//! The core is an [`AttentionBackend`] taking already-projected, normed and rotated heads
//! `(B, H, L, hd)`. [`ChunkedAttention`] is the single-device one: an online-softmax over query and
//! key blocks in plain candle ops, so the `L×L` score matrix of a whole sequence (36 GB per layer at
//! 720p TI2V) never exists. A sequence-parallel (Ulysses) backend wraps it with all-to-alls that
//! trade the sequence shard for a head shard around the call. With the `flash-attn` feature, CUDA
//! bf16/f16 heads go to FlashAttention-2 instead ([`set_fused_attention`] switches it off).

use candle_core::{DType, Result, Tensor, D};
use candle_nn::{Linear, Module, VarBuilder};

use super::norm::RmsNorm;
use super::rope::RopeTables;

/// Scaled dot-product attention without mask, `softmax(q·kᵀ/√hd)·v`, on heads `(B, H, L, hd)`.
pub trait AttentionBackend: Send + Sync {
    /// `q` `(B, H, Lq, hd)`, `k`/`v` `(B, H, Lk, hd)` → `(B, H, Lq, hd)` in `q`'s dtype.
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor>;
}

/// The attention cores one block uses: self-attention may be sequence-parallel, cross-attention
/// (queries local, the 512 text keys whole on every rank) never needs communication.
#[derive(Clone, Copy)]
pub struct Attention<'a> {
    pub self_attn: &'a dyn AttentionBackend,
    pub cross_attn: &'a dyn AttentionBackend,
}

fn check_qkv(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<(usize, usize, usize, usize, usize)> {
    let (b, h, lq, hd) = q.dims4()?;
    let (kb, kh, lk, khd) = k.dims4()?;
    if (kb, kh, khd) != (b, h, hd) || v.dims4()? != (b, h, lk, hd) || lk == 0 {
        candle_core::bail!(
            "attention: q {:?}, k {:?} and v {:?} must be (B, H, L, hd) with equal B, H, hd and k/v lengths",
            q.shape(),
            k.shape(),
            v.shape()
        );
    }
    Ok((b, h, lq, lk, hd))
}

/// Reference `softmax(q·kᵀ·scale)·v` in f32, building the whole score matrix. Only for tests and
/// tiny inputs.
pub fn naive_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (_, _, _, _, hd) = check_qkv(q, k, v)?;
    let dtype = q.dtype();
    let (q, k, v) = (q.to_dtype(DType::F32)?, k.to_dtype(DType::F32)?, v.to_dtype(DType::F32)?);
    let scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?;
    candle_nn::ops::softmax_last_dim(&scores)?.matmul(&v)?.to_dtype(dtype)
}

/// [`naive_attention`] as a backend (reference for tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct NaiveAttention;

impl AttentionBackend for NaiveAttention {
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        naive_attention(q, k, v)
    }
}

/// Blocked attention with an online softmax (flash-attention's recurrence in candle ops).
///
/// Peak extra memory is about three `B·H·q_block·kv_block` f32 score tiles plus the f32
/// accumulator of one query block. Scores, softmax statistics and the accumulator are f32; with
/// `upcast` (default) the q/k/v tiles are upcast too, so bf16 runs get f32 scores as the flash
/// kernels torch dispatches to have (set it to false to run the two matmuls in the input dtype).
#[derive(Debug, Clone, Copy)]
pub struct ChunkedAttention {
    /// Query rows per block.
    pub q_block: usize,
    /// Key/value rows per block.
    pub kv_block: usize,
    /// Compute the q·kᵀ and p·v products in f32 for non-f32 inputs.
    pub upcast: bool,
}

impl Default for ChunkedAttention {
    /// 512 × 4096 tiles: 8 MiB of f32 scores per head (320 MiB for 40 heads).
    fn default() -> Self {
        Self { q_block: 512, kv_block: 4096, upcast: true }
    }
}

impl ChunkedAttention {
    pub fn new(q_block: usize, kv_block: usize) -> Self {
        Self { q_block: q_block.max(1), kv_block: kv_block.max(1), ..Self::default() }
    }

    /// Attention of one (pre-scaled) query block against all keys; q, k, v already in the matmul
    /// dtype `mm`. Returns f32.
    fn query_block(&self, q: &Tensor, k: &Tensor, v: &Tensor, mm: DType) -> Result<Tensor> {
        let lk = k.dim(2)?;
        if lk <= self.kv_block {
            // One key block: a plain softmax over the rows of this query block.
            let s = q.matmul(&k.t()?)?.to_dtype(DType::F32)?;
            let p = candle_nn::ops::softmax_last_dim(&s)?;
            return p.to_dtype(mm)?.matmul(v)?.to_dtype(DType::F32);
        }
        let mut state: Option<(Tensor, Tensor, Tensor)> = None; // (row max m, row sum l, acc)
        let mut start = 0;
        while start < lk {
            let n = self.kv_block.min(lk - start);
            let kb = k.narrow(2, start, n)?;
            let vb = v.narrow(2, start, n)?;
            let s = q.matmul(&kb.t()?)?.to_dtype(DType::F32)?; // (B, H, lq, n)
            let m_blk = s.max_keepdim(D::Minus1)?;
            state = Some(match state {
                None => {
                    let p = s.broadcast_sub(&m_blk)?.exp()?;
                    let l = p.sum_keepdim(D::Minus1)?;
                    let acc = p.to_dtype(mm)?.matmul(&vb)?.to_dtype(DType::F32)?;
                    (m_blk, l, acc)
                }
                Some((m, l, acc)) => {
                    let m_new = m.maximum(&m_blk)?;
                    let p = s.broadcast_sub(&m_new)?.exp()?;
                    let alpha = (m - &m_new)?.exp()?;
                    let l = ((l * &alpha)? + p.sum_keepdim(D::Minus1)?)?;
                    let pv = p.to_dtype(mm)?.matmul(&vb)?.to_dtype(DType::F32)?;
                    let acc = (acc.broadcast_mul(&alpha)? + pv)?;
                    (m_new, l, acc)
                }
            });
            start += n;
        }
        match state {
            Some((_, l, acc)) => acc.broadcast_div(&l),
            None => candle_core::bail!("attention: no keys"),
        }
    }
}

/// Whether [`ChunkedAttention`] hands CUDA bf16/f16 heads to the fused FlashAttention-2 kernel
/// (feature `flash-attn`; on by default there). A process-wide switch so that a check can time and
/// compare both paths on the same model.
static FUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

pub fn set_fused_attention(on: bool) {
    FUSED.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// FlashAttention-2 on `(B, H, L, hd)` heads when it applies (CUDA, bf16/f16, hd a multiple of 8 up
/// to 256), `None` otherwise. The kernel wants `(B, L, H, hd)`: one transposed copy each way.
#[cfg(feature = "flash-attn")]
fn fused(q: &Tensor, k: &Tensor, v: &Tensor, hd: usize) -> Option<Result<Tensor>> {
    let applies = FUSED.load(std::sync::atomic::Ordering::Relaxed)
        && q.device().is_cuda()
        && matches!(q.dtype(), DType::BF16 | DType::F16)
        && k.dtype() == q.dtype()
        && v.dtype() == q.dtype()
        && hd.is_multiple_of(8)
        && hd <= 256;
    applies.then(|| {
        let bl = |t: &Tensor| t.transpose(1, 2)?.contiguous();
        let out = candle_flash_attn::flash_attn(&bl(q)?, &bl(k)?, &bl(v)?, 1.0 / (hd as f32).sqrt(), false)?;
        out.transpose(1, 2)?.contiguous()
    })
}

#[cfg(not(feature = "flash-attn"))]
fn fused(_: &Tensor, _: &Tensor, _: &Tensor, _: usize) -> Option<Result<Tensor>> {
    let _ = FUSED.load(std::sync::atomic::Ordering::Relaxed);
    None
}

impl AttentionBackend for ChunkedAttention {
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (_, _, lq, _, hd) = check_qkv(q, k, v)?;
        if let Some(out) = fused(q, k, v, hd) {
            return out;
        }
        let dtype = q.dtype();
        let mm = if self.upcast { DType::F32 } else { dtype };
        // Pre-scaling q costs Lq·hd multiplies instead of Lq·Lk on the scores.
        let q = (q.to_dtype(DType::F32)? * (1.0 / (hd as f64).sqrt()))?.to_dtype(mm)?;
        // Tiles are narrowed views: candle's matmul takes the strided blocks of contiguous heads.
        let (k, v) = (k.to_dtype(mm)?.contiguous()?, v.to_dtype(mm)?.contiguous()?);
        let mut outs = Vec::with_capacity(lq.div_ceil(self.q_block));
        let mut start = 0;
        while start < lq {
            let n = self.q_block.min(lq - start);
            let qb = q.narrow(2, start, n)?;
            outs.push(self.query_block(&qb, &k, &v, mm)?.to_dtype(dtype)?);
            start += n;
        }
        Tensor::cat(&outs, 2)
    }
}

/// The extra key/value projections of the Wan2.1 I2V cross-attention (CLIP image tokens).
#[derive(Debug, Clone)]
struct AddedKv {
    add_k_proj: Linear,
    add_v_proj: Linear,
    norm_added_k: RmsNorm,
}

/// diffusers `WanAttention` (self- or cross-attention; both have the same parameters).
#[derive(Debug, Clone)]
pub struct WanAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    norm_q: RmsNorm,
    norm_k: RmsNorm,
    added_kv: Option<AddedKv>,
    heads: usize,
}

impl WanAttention {
    /// `dim` = inner dim, `added_kv_proj_dim` only for the Wan2.1 I2V cross-attention.
    /// `attn2.norm_added_q` of old checkpoints is never requested (diffusers ignores it too).
    pub fn new(dim: usize, heads: usize, eps: f64, added_kv_proj_dim: Option<usize>, vb: VarBuilder) -> Result<Self> {
        let added_kv = match added_kv_proj_dim {
            None => None,
            Some(kv) => Some(AddedKv {
                add_k_proj: candle_nn::linear(kv, dim, vb.pp("add_k_proj"))?,
                add_v_proj: candle_nn::linear(kv, dim, vb.pp("add_v_proj"))?,
                norm_added_k: RmsNorm::new(dim, eps, vb.pp("norm_added_k"))?,
            }),
        };
        Ok(Self {
            to_q: candle_nn::linear(dim, dim, vb.pp("to_q"))?,
            to_k: candle_nn::linear(dim, dim, vb.pp("to_k"))?,
            to_v: candle_nn::linear(dim, dim, vb.pp("to_v"))?,
            to_out: candle_nn::linear(dim, dim, vb.pp("to_out").pp("0"))?,
            norm_q: RmsNorm::new(dim, eps, vb.pp("norm_q"))?,
            norm_k: RmsNorm::new(dim, eps, vb.pp("norm_k"))?,
            added_kv,
            heads,
        })
    }

    /// `(B, L, D)` → heads `(B, H, L, hd)`, contiguous.
    fn split_heads(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, l, d) = xs.dims3()?;
        xs.reshape((b, l, self.heads, d / self.heads))?.transpose(1, 2)?.contiguous()
    }

    /// `(B, H, L, hd)` → `(B, L, D)`.
    fn merge_heads(xs: &Tensor) -> Result<Tensor> {
        let (b, h, l, hd) = xs.dims4()?;
        xs.transpose(1, 2)?.reshape((b, l, h * hd))
    }

    /// Self-attention on `xs` `(B, L, D)` with RoPE on q and k (after their RMSNorm).
    pub fn forward_self(&self, xs: &Tensor, rope: &RopeTables, backend: &dyn AttentionBackend) -> Result<Tensor> {
        let q = rope.apply(&self.split_heads(&self.norm_q.forward(&self.to_q.forward(xs)?)?)?)?;
        let k = rope.apply(&self.split_heads(&self.norm_k.forward(&self.to_k.forward(xs)?)?)?)?;
        let v = self.split_heads(&self.to_v.forward(xs)?)?;
        let out = Self::merge_heads(&backend.attend(&q, &k, &v)?)?;
        self.to_out.forward(&out)
    }

    /// Cross-attention of `xs` `(B, L, D)` on the embedded text `(B, Lt, D)` and, for Wan2.1 I2V,
    /// the embedded image tokens `(B, Li, D)` (a second attention with the same queries whose
    /// output is added before `to_out`).
    pub fn forward_cross(
        &self,
        xs: &Tensor,
        text: &Tensor,
        image: Option<&Tensor>,
        backend: &dyn AttentionBackend,
    ) -> Result<Tensor> {
        let q = self.split_heads(&self.norm_q.forward(&self.to_q.forward(xs)?)?)?;
        let k = self.split_heads(&self.norm_k.forward(&self.to_k.forward(text)?)?)?;
        let v = self.split_heads(&self.to_v.forward(text)?)?;
        let mut out = Self::merge_heads(&backend.attend(&q, &k, &v)?)?;
        match (&self.added_kv, image) {
            (Some(added), Some(img)) => {
                let k_img = self.split_heads(&added.norm_added_k.forward(&added.add_k_proj.forward(img)?)?)?;
                let v_img = self.split_heads(&added.add_v_proj.forward(img)?)?;
                out = (out + Self::merge_heads(&backend.attend(&q, &k_img, &v_img)?)?)?;
            }
            (None, None) => {}
            (Some(_), None) => candle_core::bail!("this model has an image branch: pass the image embeddings"),
            (None, Some(_)) => candle_core::bail!("image embeddings given to a model without an image branch"),
        }
        self.to_out.forward(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn chunked_equals_naive_on_small_sizes() -> Result<()> {
        let dev = Device::Cpu;
        for (lq, lk) in [(1, 1), (1, 9), (9, 1), (17, 23)] {
            let q = (Tensor::randn(0f32, 1., (1, 2, lq, 8), &dev)? * 4.0)?;
            let k = Tensor::randn(0f32, 1., (1, 2, lk, 8), &dev)?;
            let v = Tensor::randn(0f32, 1., (1, 2, lk, 8), &dev)?;
            let reference = naive_attention(&q, &k, &v)?;
            for (qb, kb) in [(1, 1), (4, 5), (32, 32)] {
                let out = ChunkedAttention::new(qb, kb).attend(&q, &k, &v)?;
                let err = (out - &reference)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
                assert!(err < 1e-5, "lq {lq} lk {lk} blocks {qb}x{kb}: max-abs {err}");
            }
        }
        let q = Tensor::zeros((1, 2, 3, 8), DType::F32, &dev)?;
        let k = Tensor::zeros((1, 2, 4, 6), DType::F32, &dev)?;
        assert!(ChunkedAttention::default().attend(&q, &k, &k).is_err(), "mismatched head dims are rejected");
        Ok(())
    }
}
