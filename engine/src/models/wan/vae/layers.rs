//! The VAE's leaf layers: the causal 3-D convolution (with its cache protocol) and the channel RMS
//! norm. Weights keep PyTorch's layout; see `ops` for how they are applied.

use std::sync::{Arc, OnceLock};

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::cache::Slot;
use super::ops::{self, ConvInputs, Lent, Pad2d};
use super::split::{HaloRows, RowExchange};

/// Frames of the causal time window kept between chunks (diffusers `CACHE_T`).
pub const CACHE_T: usize = 2;

/// `WanCausalConv3d` (and plain `Conv2d` layers, as kt = 1): weight `[O, I, kt, kh, kw]`.
#[derive(Debug, Clone)]
pub struct CausalConv3d {
    weight: Tensor,
    /// The generic (CUDA) path's tap-major weight (`ops::tap_major`), made once: on a CUDA weight
    /// at construction (`weight` is then a view of it, so the layer holds one copy), on the CPU on
    /// first generic use (tests that force that path).
    taps: Arc<OnceLock<Tensor>>,
    bias: Tensor,
    /// Spatial zero padding (top, bottom, left, right).
    pad: Pad2d,
    stride: usize,
}

impl CausalConv3d {
    /// A causal conv with kernel `(kt, k, k)` and symmetric spatial padding `pad`; the time padding
    /// is always `kt - 1` frames in front (zeros, or the cached frames).
    pub fn new(in_c: usize, out_c: usize, kt: usize, k: usize, pad: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get((out_c, in_c, kt, k, k), "weight")?;
        let bias = vb.get(out_c, "bias")?;
        Self::with_weight(weight, bias, (pad, pad, pad, pad), 1)
    }

    fn with_weight(weight: Tensor, bias: Tensor, pad: Pad2d, stride: usize) -> Result<Self> {
        let taps = Arc::new(OnceLock::new());
        let weight = if weight.device().is_cpu() {
            weight
        } else {
            // Only the generic path runs off the CPU: keep the tap-major copy alone.
            let t = ops::tap_major(&weight)?;
            let view = t.permute((1, 2, 0, 3, 4))?;
            let _ = taps.set(t);
            view
        };
        Ok(Self { weight, taps, bias, pad, stride })
    }

    /// The tap-major weight for the generic path, made on first use.
    fn taps(&self) -> Result<&Tensor> {
        if let Some(t) = self.taps.get() {
            return Ok(t);
        }
        let t = ops::tap_major(&self.weight)?;
        Ok(self.taps.get_or_init(|| t))
    }

    /// `Some(taps)` when the generic path will run on `xs` (the CPU kernels need none).
    fn taps_for(&self, xs: &Tensor) -> Result<Option<&Tensor>> {
        if ops::cpu_fast_path(xs) && self.weight.dtype() == candle_core::DType::F32 {
            return Ok(None);
        }
        self.taps().map(Some)
    }

    /// An `nn.Conv2d` applied per frame: weight `[O, I, k, k]` viewed as `[O, I, 1, k, k]`.
    pub fn conv2d(in_c: usize, out_c: usize, k: usize, stride: usize, pad: Pad2d, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get((out_c, in_c, k, k), "weight")?.unsqueeze(2)?;
        let bias = vb.get(out_c, "bias")?;
        Self::with_weight(weight, bias, pad, stride)
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    pub fn kt(&self) -> usize {
        self.weight.dims()[2]
    }

    pub fn out_channels(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Per-frame application of a conv without time extent (kt = 1), optionally adding `residual`.
    pub fn forward(&self, xs: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        self.forward_split(xs, residual, None)
    }

    /// [`Self::forward`] on a row slab (halo mode) when `halo` is given: the rows its top/bottom
    /// padding stands for come from the neighbouring slabs, exchanged while the interior rows compute.
    pub fn forward_split(
        &self,
        xs: &Tensor,
        residual: Option<&Tensor>,
        halo: Option<&dyn RowExchange>,
    ) -> Result<Tensor> {
        if self.kt() != 1 {
            candle_core::bail!("conv with {} time taps needs its cache (forward_cached)", self.kt());
        }
        let frames: Vec<Tensor> = (0..xs.dim(0)?).map(|t| xs.get(t)).collect::<Result<_>>()?;
        let taps = frames.iter().map(|f| vec![Some(f)]).collect();
        let inputs = ConvInputs { taps };
        let (pt, pb, _, _) = self.pad;
        match halo {
            Some(ex) if pt + pb > 0 => {
                let pending = ex.start(xs, pt, pb)?;
                let lent = || -> Result<Vec<Vec<Lent>>> {
                    let rows = pending.wait()?;
                    (0..frames.len()).map(|t| Ok(vec![lent_of(&rows, t)?])).collect()
                };
                let taps = self.taps_for(xs)?;
                ops::conv_frames_lent(&inputs, &self.weight, taps, &self.bias, self.stride, self.pad, residual, lent)
            }
            _ => {
                let taps = self.taps_for(xs)?;
                ops::conv_frames_with(&inputs, &self.weight, taps, &self.bias, self.stride, self.pad, residual)
            }
        }
    }

    /// Causal conv over the chunk `xs` `[T, C, H, W]`, reading the previous chunk's last frames from
    /// `slot` (zeros before the start) and leaving this chunk's in it: running chunk by chunk equals
    /// running over the whole sequence with `kt - 1` zero frames in front.
    ///
    /// In halo mode (`halo` given) the chunk's halo rows are exchanged while the interior rows
    /// compute, and the cache keeps the last frames' own rows and the rows their neighbours lent,
    /// so cached frames never need a second exchange.
    pub fn forward_cached(
        &self,
        xs: &Tensor,
        slot: &mut Slot,
        residual: Option<&Tensor>,
        halo: Option<&dyn RowExchange>,
    ) -> Result<Tensor> {
        let kt = self.kt();
        if kt == 1 {
            return self.forward_split(xs, residual, halo);
        }
        let (pt, pb, _, _) = self.pad;
        let halo = halo.filter(|_| pt + pb > 0);
        // Halo mode: the exchange is in flight from here until the lent rows are asked for.
        let pending = halo.map(|ex| ex.start(xs, pt, pb)).transpose()?;
        let (history, hist_rows) = match slot {
            Slot::Frames(h) => (Some(h.clone()), HaloRows::default()),
            Slot::Slab { body, above, below } => {
                (Some(body.clone()), HaloRows { above: above.clone(), below: below.clone() })
            }
            _ => (None, HaloRows::default()),
        };
        let n_hist = history.as_ref().map(|h| h.dim(0)).transpose()?.unwrap_or(0);
        let t_len = xs.dim(0)?;
        let hist_frames: Vec<Tensor> = match &history {
            Some(h) => (0..n_hist).map(|i| h.get(i)).collect::<Result<_>>()?,
            None => vec![],
        };
        let x_frames: Vec<Tensor> = (0..t_len).map(|t| xs.get(t)).collect::<Result<_>>()?;
        // Virtual sequence: (kt-1-n_hist) zero frames, history, chunk. `Src` says where a tap reads.
        let lead = kt - 1;
        let zeros = lead.saturating_sub(n_hist);
        let src = |t: usize, k: usize| -> Option<Src> {
            let s = t + k;
            if s < zeros {
                None
            } else if s < lead {
                let i = s - zeros + n_hist.saturating_sub(lead);
                (i < n_hist).then_some(Src::History(i))
            } else {
                Some(Src::Chunk(s - lead))
            }
        };
        let taps = (0..t_len)
            .map(|t| {
                (0..kt)
                    .map(|k| match src(t, k) {
                        None => None,
                        Some(Src::History(i)) => Some(&hist_frames[i]),
                        Some(Src::Chunk(i)) => Some(&x_frames[i]),
                    })
                    .collect()
            })
            .collect();
        let inputs = ConvInputs { taps };
        let wt = self.taps_for(xs)?;
        let (ys, chunk_rows) = match pending {
            None => {
                (ops::conv_frames_with(&inputs, &self.weight, wt, &self.bias, self.stride, self.pad, residual)?, None)
            }
            Some(pending) => {
                let mut arrived = None;
                let lent = || -> Result<Vec<Vec<Lent>>> {
                    let rows = pending.wait()?;
                    let lent = (0..t_len)
                        .map(|t| {
                            (0..kt)
                                .map(|k| match src(t, k) {
                                    None => Ok(Lent::default()),
                                    Some(Src::History(i)) => lent_of(&hist_rows, i),
                                    Some(Src::Chunk(i)) => lent_of(&rows, i),
                                })
                                .collect()
                        })
                        .collect::<Result<_>>()?;
                    arrived = Some(rows);
                    Ok(lent)
                };
                let ys = ops::conv_frames_lent(
                    &inputs,
                    &self.weight,
                    wt,
                    &self.bias,
                    self.stride,
                    self.pad,
                    residual,
                    lent,
                )?;
                (ys, arrived)
            }
        };
        *slot = match chunk_rows {
            None => Slot::Frames(next_history(history.as_ref(), xs)?),
            Some(rows) => Slot::Slab {
                body: next_history(history.as_ref(), xs)?,
                above: next_rows(hist_rows.above.as_ref(), rows.above.as_ref())?,
                below: next_rows(hist_rows.below.as_ref(), rows.below.as_ref())?,
            },
        };
        Ok(ys)
    }
}

/// Where a tap of a cached conv reads: a cached frame or a frame of the chunk.
#[derive(Clone, Copy)]
enum Src {
    History(usize),
    Chunk(usize),
}

/// The rows lent to frame `t` of a `[T, C, rows, W]` exchange result.
fn lent_of(rows: &HaloRows, t: usize) -> Result<Lent> {
    Ok(Lent {
        above: rows.above.as_ref().map(|a| a.get(t)).transpose()?,
        below: rows.below.as_ref().map(|b| b.get(t)).transpose()?,
    })
}

/// The cached frames' lent rows after this chunk (`None` at the frame's edge, as both parts are).
fn next_rows(history: Option<&Tensor>, chunk: Option<&Tensor>) -> Result<Option<Tensor>> {
    chunk.map(|c| next_history(history, c)).transpose()
}

/// The last `CACHE_T` frames of `history ++ xs`, in fresh storage.
pub fn next_history(history: Option<&Tensor>, xs: &Tensor) -> Result<Tensor> {
    let t_len = xs.dim(0)?;
    if t_len >= CACHE_T {
        return ops::copy_frames(xs, t_len - CACHE_T, CACHE_T);
    }
    match history {
        Some(h) => {
            let keep = CACHE_T - t_len;
            let n = h.dim(0)?;
            let old = h.narrow(0, n.saturating_sub(keep), keep.min(n))?;
            Tensor::cat(&[&old, xs], 0)
        }
        None => ops::copy_frames(xs, 0, t_len),
    }
}

/// `WanRMS_norm`: `x / ‖x‖ · √C · γ` over channels (γ stored as `[C,1,1,1]` or `[C,1,1]`).
#[derive(Debug, Clone)]
pub struct RmsNorm {
    /// γ·√C flattened to `[C]`.
    scale: Tensor,
}

impl RmsNorm {
    /// `images`: γ of shape `[C,1,1]` (attention blocks) instead of `[C,1,1,1]`.
    pub fn new(dim: usize, images: bool, vb: VarBuilder) -> Result<Self> {
        let gamma = if images { vb.get((dim, 1, 1), "gamma")? } else { vb.get((dim, 1, 1, 1), "gamma")? };
        let scale = (gamma.flatten_all()? * (dim as f64).sqrt())?;
        Ok(Self { scale })
    }

    pub fn forward(&self, xs: &Tensor, silu: bool) -> Result<Tensor> {
        ops::rms_norm(xs, &self.scale, silu)
    }
}
