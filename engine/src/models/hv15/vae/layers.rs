//! The module tree's parts, one struct per diffusers module (`HunyuanVideo15CausalConv3d`,
//! `…ResnetBlock`, `…AttnBlock`, `…Upsample`, `…Downsample`, `…MidBlock`), on per-video activations
//! laid out `[T, C, H, W]` (frames-major, as the Wan VAE's kernels take them).
//!
//! Every part runs on a *chunk* of frames and keeps what the next chunk needs in [`Caches`]: the last
//! two padded input frames of each causal conv (on a row slab: their rows and the rows the
//! neighbours lent them) and the keys/values of the frame-causal mid
//! attention. One chunk of all frames is exactly diffusers' forward; several chunks give the same
//! numbers (each output frame reads the same taps, each query frame the same keys), which is what
//! bounds the memory of a long decode. Rows are either the whole frame or a slab of it ([`Rows`]):
//! the only places a slab differs are the convs' row padding (halo rows from the neighbours,
//! replicate only at the frame's global edges) and the attention's keys (gathered from every slab).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::models::wan::vae::layers::RmsNorm;
use crate::models::wan::vae::ops::{self, ConvInputs, Lent};
use crate::models::wan::vae::split::{HaloRows, RowExchange};

/// How the rows of a feature map meet the rest of the frame.
#[derive(Clone, Copy, Debug)]
pub enum Rows<'a> {
    /// The whole frame: convs replicate the first and last rows (`F.pad(mode="replicate")`).
    Whole,
    /// A horizontal slab of a frame split over ranks (halo mode): a conv's top/bottom padding row
    /// comes from the neighbouring slab, the replicated edge row only at the frame's global edges;
    /// the attention gathers every slab's keys and values.
    Slab(&'a dyn RowExchange),
}

/// An input frame a causal conv keeps for the next chunk: the padded frame (whole rows), or a
/// slab's column-padded rows with the rows its neighbours lent above and below them (halo mode,
/// where the padding rows are never concatenated to the slab).
#[derive(Debug, Clone)]
enum CachedFrame {
    Padded(Tensor),
    Slab { body: Tensor, above: Tensor, below: Tensor },
}

/// What the causal convs and the mid attention carry from one chunk to the next.
#[derive(Debug, Default)]
pub struct Caches {
    convs: Vec<Option<[CachedFrame; 2]>>,
    at: usize,
    /// Keys and values `[frames·H·W, C]` of every frame so far (whole rows, also in halo mode).
    kv: Option<(Tensor, Tensor)>,
    /// Whether the running chunk starts at the video's first frame (the up/down samplers treat
    /// global frame 0 on its own).
    first: bool,
    chunks: usize,
}

impl Caches {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the next chunk: the convs are visited in the same order every chunk.
    pub fn begin_chunk(&mut self) {
        self.at = 0;
        self.first = self.chunks == 0;
        self.chunks += 1;
    }

    fn next_conv(&mut self) -> &mut Option<[CachedFrame; 2]> {
        if self.at == self.convs.len() {
            self.convs.push(None);
        }
        self.at += 1;
        &mut self.convs[self.at - 1]
    }
}

/// `[T, C, H, W]` → `[T, C, H+2, W+2]` with replicated edges, or the neighbours' rows in a slab.
pub fn pad_replicate(xs: &Tensor, rows: Rows<'_>) -> Result<Tensor> {
    let (_, _, h, w) = xs.dims4()?;
    let first = xs.narrow(2, 0, 1)?;
    let last = xs.narrow(2, h - 1, 1)?;
    let (above, below) = match rows {
        Rows::Whole => (None, None),
        // The slab above wants my first row (its bottom halo), the one below my last row.
        Rows::Slab(ex) => ex.exchange(Some(first.contiguous()?), Some(last.contiguous()?))?,
    };
    let above = above.unwrap_or(first);
    let below = below.unwrap_or(last);
    let xs = Tensor::cat(&[&above, xs, &below], 2)?;
    let left = xs.narrow(3, 0, 1)?;
    let right = xs.narrow(3, w - 1, 1)?;
    Tensor::cat(&[&left, &xs, &right], 3)
}

/// `HunyuanVideo15CausalConv3d` with kernel 3: replicate padding of one row/column on each side
/// and two frames in front (copies of frame 0 before the first chunk, the cached frames after).
#[derive(Debug, Clone)]
pub struct CausalConv3d {
    weight: Tensor,
    bias: Tensor,
}

impl CausalConv3d {
    /// Weights under `<vb>.conv` (the module wraps an `nn.Conv3d` named `conv`).
    pub fn new(in_c: usize, out_c: usize, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("conv");
        Ok(Self { weight: vb.get((out_c, in_c, 3, 3, 3), "weight")?, bias: vb.get(out_c, "bias")? })
    }

    /// The chunk `xs` `[T, C, H, W]` → `[T, O, H, W]`, plus `residual` (same shape as the output).
    pub fn forward(
        &self,
        xs: &Tensor,
        caches: &mut Caches,
        rows: Rows<'_>,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        if let Rows::Slab(ex) = rows {
            return self.forward_slab(xs, caches, ex, residual);
        }
        let padded = pad_replicate(xs, rows)?;
        let frames: Vec<Tensor> = (0..padded.dim(0)?).map(|t| padded.get(t)).collect::<Result<_>>()?;
        let slot = caches.next_conv();
        let history = match slot.take() {
            Some([CachedFrame::Padded(a), CachedFrame::Padded(b)]) => [a, b],
            Some(_) => candle_core::bail!("a conv cache of a row slab met a whole frame"),
            None => [frames[0].clone(), frames[0].clone()],
        };
        let seq: Vec<&Tensor> = history.iter().chain(frames.iter()).collect();
        let taps = (0..frames.len()).map(|t| (0..3).map(|k| Some(seq[t + k])).collect()).collect();
        let ys = ops::conv_frames(&ConvInputs { taps }, &self.weight, &self.bias, 1, (0, 0, 0, 0), residual)?;
        // Fresh copies, so the cache never keeps a whole chunk alive through a view.
        let n = seq.len();
        *slot = Some([
            CachedFrame::Padded(seq[n - 2].force_contiguous()?),
            CachedFrame::Padded(seq[n - 1].force_contiguous()?),
        ]);
        Ok(ys)
    }

    /// [`Self::forward`] on a row slab (halo mode), overlapping the exchange: the columns are
    /// replicated here, the slab's edge rows go to the neighbours, and the output rows that read
    /// no lent row are computed while they travel (`ops::conv_frames_lent`); at the frame's global
    /// top/bottom the lent row is the slab's own edge row (replicate padding). The same taps as
    /// the padded frame of [`pad_replicate`], so the same numbers bit for bit.
    fn forward_slab(
        &self,
        xs: &Tensor,
        caches: &mut Caches,
        ex: &dyn RowExchange,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (t_len, _, h, w) = xs.dims4()?;
        let cols = Tensor::cat(&[&xs.narrow(3, 0, 1)?, xs, &xs.narrow(3, w - 1, 1)?], 3)?;
        let pending = ex.start(&cols, 1, 1)?;
        let frames: Vec<Tensor> = (0..t_len).map(|t| cols.get(t)).collect::<Result<_>>()?;
        let slot = caches.next_conv();
        let history = match slot.take() {
            Some(
                [CachedFrame::Slab { body: b0, above: a0, below: l0 }, CachedFrame::Slab { body: b1, above: a1, below: l1 }],
            ) => Some([(b0, a0, l0), (b1, a1, l1)]),
            Some(_) => candle_core::bail!("a conv cache of a whole frame met a row slab"),
            None => None,
        };
        // The sequence a tap reads: two cached frames (copies of frame 0 before the first chunk),
        // then the chunk's frames.
        let src = |s: usize| -> Src {
            match (&history, s) {
                (Some(_), 0 | 1) => Src::History(s),
                (Some(_), s) => Src::Chunk(s - 2),
                (None, s) => Src::Chunk(s.saturating_sub(2)),
            }
        };
        let body = |s: Src| -> &Tensor {
            match (s, &history) {
                (Src::History(i), Some(h)) => &h[i].0,
                (Src::Chunk(i), _) | (Src::History(i), None) => &frames[i],
            }
        };
        let taps = (0..t_len).map(|t| (0..3).map(|k| Some(body(src(t + k)))).collect()).collect();
        let mut arrived: Option<(Vec<Tensor>, Vec<Tensor>)> = None;
        let lent = || -> Result<Vec<Vec<Lent>>> {
            let HaloRows { above, below } = pending.wait()?;
            // Replicate at the frame's global edges: the slab's own first/last row.
            let edge = |lent: &Option<Tensor>, t: usize, row: usize| -> Result<Tensor> {
                match lent {
                    Some(r) => r.get(t),
                    None => frames[t].narrow(1, row, 1),
                }
            };
            let up = (0..t_len).map(|t| edge(&above, t, 0)).collect::<Result<Vec<_>>>()?;
            let down = (0..t_len).map(|t| edge(&below, t, h - 1)).collect::<Result<Vec<_>>>()?;
            let of = |s: Src| -> Lent {
                let (a, b) = match (s, &history) {
                    (Src::History(i), Some(h)) => (h[i].1.clone(), h[i].2.clone()),
                    (Src::Chunk(i), _) | (Src::History(i), None) => (up[i].clone(), down[i].clone()),
                };
                Lent { above: Some(a), below: Some(b) }
            };
            let lent = (0..t_len).map(|t| (0..3).map(|k| of(src(t + k))).collect()).collect();
            arrived = Some((up, down));
            Ok(lent)
        };
        let ys = ops::conv_frames_lent(
            &ConvInputs { taps },
            &self.weight,
            None,
            &self.bias,
            1,
            (1, 1, 0, 0),
            residual,
            lent,
        )?;
        let Some((up, down)) = arrived else { candle_core::bail!("the halo rows of a conv never arrived") };
        // The last two frames of the sequence, in fresh storage (no view keeps the chunk alive).
        let keep = |s: Src| -> Result<CachedFrame> {
            let (b, a, l) = match (s, &history) {
                (Src::History(i), Some(h)) => (h[i].0.clone(), h[i].1.clone(), h[i].2.clone()),
                (Src::Chunk(i), _) | (Src::History(i), None) => (frames[i].clone(), up[i].clone(), down[i].clone()),
            };
            Ok(CachedFrame::Slab {
                body: b.force_contiguous()?,
                above: a.force_contiguous()?,
                below: l.force_contiguous()?,
            })
        };
        let n = t_len + 2;
        *slot = Some([keep(src(n - 2))?, keep(src(n - 1))?]);
        Ok(ys)
    }
}

/// Where a tap of a slab conv reads: a cached frame or a frame of the chunk.
#[derive(Clone, Copy)]
enum Src {
    History(usize),
    Chunk(usize),
}

/// A 1×1×1 `nn.Conv3d` (attention projections, `conv_shortcut`): a per-pixel linear map.
#[derive(Debug, Clone)]
pub struct Conv1x1 {
    weight: Tensor,
    bias: Tensor,
}

impl Conv1x1 {
    pub fn new(in_c: usize, out_c: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get((out_c, in_c, 1, 1, 1), "weight")?.reshape((out_c, in_c))?;
        Ok(Self { weight, bias: vb.get(out_c, "bias")? })
    }

    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (t, c, h, w) = xs.dims4()?;
        let o = self.weight.dim(0)?;
        let ys = self.weight.broadcast_matmul(&xs.reshape((t, c, h * w))?)?;
        ys.broadcast_add(&self.bias.reshape((1, o, 1))?)?.reshape((t, o, h, w))
    }
}

/// `[T, C, …]` with every channel repeated `r` times in place (`repeat_interleave(r, dim=1)`).
pub fn repeat_channels(xs: &Tensor, r: usize) -> Result<Tensor> {
    if r == 1 {
        return Ok(xs.clone());
    }
    let (t, c, h, w) = xs.dims4()?;
    xs.unsqueeze(2)?.broadcast_as((t, c, r, h, w))?.reshape((t, c * r, h, w))
}

/// Mean over consecutive groups of `g` channels: `view(B, C/g, g, …).mean(2)`.
pub fn group_mean(xs: &Tensor, g: usize) -> Result<Tensor> {
    if g == 1 {
        return Ok(xs.clone());
    }
    let (t, c, h, w) = xs.dims4()?;
    xs.reshape((t, c / g, g, h, w))?.mean(2)
}

/// `_dcae_upsample_rearrange`: `[T, r1·4·c, H, W]` → `[T·r1, c, 2H, 2W]` (packed channel
/// `((i1·2 + i2)·2 + i3)·c + ch` lands at frame `t·r1 + i1`, row `2y + i2`, column `2x + i3`).
pub fn depth_to_space(xs: &Tensor, r1: usize) -> Result<Tensor> {
    let (t, cp, h, w) = xs.dims4()?;
    let c = cp / (4 * r1);
    xs.reshape(vec![t, r1, 2, 2, c, h, w])?.permute([0, 1, 4, 5, 2, 6, 3])?.reshape((t * r1, c, 2 * h, 2 * w))
}

/// `_dcae_downsample_rearrange`: `[T·r1, c, 2H, 2W]` → `[T, r1·4·c, H, W]`, the inverse of
/// [`depth_to_space`].
pub fn space_to_depth(xs: &Tensor, r1: usize) -> Result<Tensor> {
    let (tr, c, h2, w2) = xs.dims4()?;
    let (t, h, w) = (tr / r1, h2 / 2, w2 / 2);
    xs.reshape(vec![t, r1, c, h, 2, w, 2])?.permute([0, 1, 4, 6, 2, 3, 5])?.reshape((t, r1 * 4 * c, h, w))
}

/// `HunyuanVideo15ResnetBlock`: norm → SiLU → conv → norm → SiLU → conv, plus the input (through a
/// 1×1×1 `conv_shortcut` when the channels change).
#[derive(Debug, Clone)]
pub struct ResnetBlock {
    norm1: RmsNorm,
    conv1: CausalConv3d,
    norm2: RmsNorm,
    conv2: CausalConv3d,
    conv_shortcut: Option<Conv1x1>,
}

impl ResnetBlock {
    pub fn new(in_c: usize, out_c: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm1: RmsNorm::new(in_c, false, vb.pp("norm1"))?,
            conv1: CausalConv3d::new(in_c, out_c, vb.pp("conv1"))?,
            norm2: RmsNorm::new(out_c, false, vb.pp("norm2"))?,
            conv2: CausalConv3d::new(out_c, out_c, vb.pp("conv2"))?,
            conv_shortcut: (in_c != out_c).then(|| Conv1x1::new(in_c, out_c, vb.pp("conv_shortcut"))).transpose()?,
        })
    }

    pub fn forward(&self, xs: &Tensor, caches: &mut Caches, rows: Rows<'_>) -> Result<Tensor> {
        let h = self.norm1.forward(xs, true)?;
        let h = self.conv1.forward(&h, caches, rows, None)?;
        let h = self.norm2.forward(&h, true)?;
        let residual = match &self.conv_shortcut {
            Some(c) => c.forward(xs)?,
            None => xs.clone(),
        };
        self.conv2.forward(&h, caches, rows, Some(&residual))
    }
}

/// Elements of one block of attention scores; query rows are processed in blocks of at most this
/// many scores so a long video never materialises a `[tokens, tokens]` matrix.
const SCORE_BLOCK: usize = 1 << 24;

/// `HunyuanVideo15AttnBlock`: one head of width C over all `T·H·W` tokens with a frame-causal mask
/// (a query of frame f sees the keys of frames ≤ f), plus the input.
#[derive(Debug, Clone)]
pub struct AttnBlock {
    norm: RmsNorm,
    to_q: Conv1x1,
    to_k: Conv1x1,
    to_v: Conv1x1,
    proj_out: Conv1x1,
}

impl AttnBlock {
    pub fn new(c: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: RmsNorm::new(c, false, vb.pp("norm"))?,
            to_q: Conv1x1::new(c, c, vb.pp("to_q"))?,
            to_k: Conv1x1::new(c, c, vb.pp("to_k"))?,
            to_v: Conv1x1::new(c, c, vb.pp("to_v"))?,
            proj_out: Conv1x1::new(c, c, vb.pp("proj_out"))?,
        })
    }

    pub fn forward(&self, xs: &Tensor, caches: &mut Caches, rows: Rows<'_>) -> Result<Tensor> {
        let (t, c, h, w) = xs.dims4()?;
        let normed = self.norm.forward(xs, false)?;
        let (q, k, v) = (self.to_q.forward(&normed)?, self.to_k.forward(&normed)?, self.to_v.forward(&normed)?);
        // Keys and values of the whole frame: a slab gathers every rank's rows (in rank order,
        // which is the frame's row order).
        let (k, v) = match rows {
            Rows::Whole => (k, v),
            Rows::Slab(ex) => (ex.all_gather(&k, 2)?, ex.all_gather(&v, 2)?),
        };
        let frame_tokens = k.dim(2)? * w;
        // [T, C, rows, W] → [T, rows·W, C]: tokens in (h, w) order within a frame.
        let tokens = |x: &Tensor| -> Result<Tensor> {
            let (t, c, r, w) = x.dims4()?;
            x.reshape((t, c, r * w))?.transpose(1, 2)?.contiguous()
        };
        let q = tokens(&q)?;
        let k = tokens(&k)?.reshape((t * frame_tokens, c))?;
        let v = tokens(&v)?.reshape((t * frame_tokens, c))?;
        let (k_all, v_all) = match caches.kv.take() {
            Some((kc, vc)) => (Tensor::cat(&[&kc, &k], 0)?, Tensor::cat(&[&vc, &v], 0)?),
            None => (k, v),
        };
        let before = k_all.dim(0)? / frame_tokens - t;
        let scale = 1.0 / (c as f64).sqrt();
        let mut frames = Vec::with_capacity(t);
        for f in 0..t {
            let keys = (before + f + 1) * frame_tokens;
            let (kf, vf) = (k_all.narrow(0, 0, keys)?, v_all.narrow(0, 0, keys)?);
            let kt = kf.t()?;
            let qf = q.get(f)?;
            let n = qf.dim(0)?;
            let block = (SCORE_BLOCK / keys).clamp(1, n.max(1));
            let mut outs = Vec::with_capacity(n.div_ceil(block));
            for start in (0..n).step_by(block) {
                let len = block.min(n - start);
                let scores = (qf.narrow(0, start, len)?.matmul(&kt)? * scale)?;
                let probs = candle_nn::ops::softmax_last_dim(&scores)?;
                outs.push(probs.matmul(&vf)?);
            }
            frames.push(Tensor::cat(&outs, 0)?);
        }
        caches.kv = Some((k_all, v_all));
        let out = Tensor::stack(&frames, 0)?.transpose(1, 2)?.reshape((t, c, h, w))?;
        self.proj_out.forward(&out)? + xs
    }
}

/// `HunyuanVideo15MidBlock` (one attention): resnet, attention, resnet.
#[derive(Debug, Clone)]
pub struct MidBlock {
    resnets: [ResnetBlock; 2],
    attention: AttnBlock,
}

impl MidBlock {
    pub fn new(c: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            resnets: [ResnetBlock::new(c, c, vb.pp("resnets.0"))?, ResnetBlock::new(c, c, vb.pp("resnets.1"))?],
            attention: AttnBlock::new(c, vb.pp("attentions.0"))?,
        })
    }

    pub fn forward(&self, xs: &Tensor, caches: &mut Caches, rows: Rows<'_>) -> Result<Tensor> {
        let h = self.resnets[0].forward(xs, caches, rows)?;
        let h = self.attention.forward(&h, caches, rows)?;
        self.resnets[1].forward(&h, caches, rows)
    }
}

/// The frames of a chunk the samplers treat alone (global frame 0) and the rest.
fn split_first(xs: &Tensor, caches: &Caches) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let t = xs.dim(0)?;
    let lead = usize::from(caches.first);
    let first = if caches.first { Some(xs.narrow(0, 0, 1)?) } else { None };
    let rest = if t > lead { Some(xs.narrow(0, lead, t - lead)?) } else { None };
    Ok((first, rest))
}

fn cat_frames(parts: [Option<Tensor>; 2]) -> Result<Tensor> {
    let parts: Vec<Tensor> = parts.into_iter().flatten().collect();
    Tensor::cat(&parts, 0)
}

/// `HunyuanVideo15Upsample`: conv to `out·factor` channels, depth-to-space (×2 in time too when
/// temporal, except global frame 0, which keeps the first half of its channels), plus the input's
/// channels repeated and rearranged alike.
#[derive(Debug, Clone)]
pub struct Upsample {
    conv: CausalConv3d,
    temporal: bool,
    repeats: usize,
}

impl Upsample {
    pub fn new(in_c: usize, out_c: usize, temporal: bool, vb: VarBuilder) -> Result<Self> {
        let factor = if temporal { 8 } else { 4 };
        Ok(Self {
            conv: CausalConv3d::new(in_c, out_c * factor, vb.pp("conv"))?,
            temporal,
            repeats: factor * out_c / in_c,
        })
    }

    pub fn forward(&self, xs: &Tensor, caches: &mut Caches, rows: Rows<'_>) -> Result<Tensor> {
        let h = self.conv.forward(xs, caches, rows, None)?;
        if !self.temporal {
            let shortcut = depth_to_space(&repeat_channels(xs, self.repeats)?, 1)?;
            return depth_to_space(&h, 1)? + shortcut;
        }
        let (h_first, h_next) = split_first(&h, caches)?;
        let (x_first, x_next) = split_first(xs, caches)?;
        let h_first = h_first
            .map(|h0| {
                let h0 = depth_to_space(&h0, 1)?;
                h0.narrow(1, 0, h0.dim(1)? / 2)
            })
            .transpose()?;
        let h_next = h_next.map(|hn| depth_to_space(&hn, 2)).transpose()?;
        let x_first = x_first.map(|x0| repeat_channels(&depth_to_space(&x0, 1)?, self.repeats / 2)).transpose()?;
        let x_next = x_next.map(|xn| repeat_channels(&depth_to_space(&xn, 2)?, self.repeats)).transpose()?;
        cat_frames([h_first, h_next])? + cat_frames([x_first, x_next])?
    }
}

/// `HunyuanVideo15Downsample`: conv to `out/factor` channels, space-to-depth (pairs of frames too
/// when temporal, except global frame 0, whose channels are duplicated), plus the input
/// rearranged alike and averaged over channel groups.
#[derive(Debug, Clone)]
pub struct Downsample {
    conv: CausalConv3d,
    temporal: bool,
    group: usize,
}

impl Downsample {
    pub fn new(in_c: usize, out_c: usize, temporal: bool, vb: VarBuilder) -> Result<Self> {
        let factor = if temporal { 8 } else { 4 };
        Ok(Self {
            conv: CausalConv3d::new(in_c, out_c / factor, vb.pp("conv"))?,
            temporal,
            group: factor * in_c / out_c,
        })
    }

    pub fn forward(&self, xs: &Tensor, caches: &mut Caches, rows: Rows<'_>) -> Result<Tensor> {
        let h = self.conv.forward(xs, caches, rows, None)?;
        if !self.temporal {
            let shortcut = group_mean(&space_to_depth(xs, 1)?, self.group)?;
            return space_to_depth(&h, 1)? + shortcut;
        }
        let (h_first, h_next) = split_first(&h, caches)?;
        let (x_first, x_next) = split_first(xs, caches)?;
        if let Some(n) = &h_next {
            if n.dim(0)? % 2 != 0 {
                candle_core::bail!(
                    "temporal downsample got {} frames after the first; encode chunks must hold 1 + 4k video frames",
                    n.dim(0)?
                );
            }
        }
        let h_first = h_first
            .map(|h0| {
                let h0 = space_to_depth(&h0, 1)?;
                Tensor::cat(&[&h0, &h0], 1)
            })
            .transpose()?;
        let h_next = h_next.map(|hn| space_to_depth(&hn, 2)).transpose()?;
        let x_first = x_first.map(|x0| group_mean(&space_to_depth(&x0, 1)?, self.group / 2)).transpose()?;
        let x_next = x_next.map(|xn| group_mean(&space_to_depth(&xn, 2)?, self.group)).transpose()?;
        cat_frames([h_first, h_next])? + cat_frames([x_first, x_next])?
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn seq(dims: &[usize]) -> Tensor {
        let n: usize = dims.iter().product();
        Tensor::from_vec((0..n).map(|v| v as f32).collect::<Vec<_>>(), dims, &Device::Cpu).unwrap()
    }

    #[test]
    fn rearranges_are_inverse_and_place_channels_as_diffusers() -> Result<()> {
        for r1 in [1, 2] {
            let x = seq(&[2 * r1, 3, 4, 6]);
            let packed = space_to_depth(&x, r1)?;
            assert_eq!(packed.dims(), [2, r1 * 12, 2, 3]);
            let back = depth_to_space(&packed, r1)?;
            assert_eq!(back.flatten_all()?.to_vec1::<f32>()?, x.flatten_all()?.to_vec1::<f32>()?);
        }
        // Packed channel ((i1·2 + i2)·2 + i3)·c + ch → frame i1, row 2y + i2, column 2x + i3.
        let x = seq(&[1, 8 * 2, 1, 1]);
        let y = depth_to_space(&x, 2)?;
        let (i1, i2, i3, ch) = (1, 0, 1, 1);
        let v: f32 = y.get(i1)?.get(ch)?.get(i2)?.get(i3)?.to_scalar()?;
        assert_eq!(v, (((i1 * 2 + i2) * 2 + i3) * 2 + ch) as f32);
        Ok(())
    }

    /// A causal conv on row slabs over 2 and 3 in-process ranks (the halo exchange overlapped with
    /// the interior rows), chunk after chunk, gives each rank exactly its rows of the whole-frame
    /// conv: the same taps and the same kernels' summation order, replicate padding only at the
    /// frame's global top and bottom. Narrow and wide frames (the CPU kernels band below 192
    /// output columns).
    #[test]
    fn slab_conv_equals_the_whole_frame_rows_bit_for_bit() -> Result<()> {
        use std::sync::Arc;

        use crate::models::wan::vae::split::{split_rows, CommRowExchange};
        use crate::parallel::comm::{Collective, ThreadComm};

        let dev = Device::Cpu;
        for (c, o, h, w) in [(3, 4, 7, 5), (2, 3, 6, 200)] {
            let tensors = std::collections::HashMap::from([
                ("conv.weight".to_string(), Tensor::randn(0f32, 1.0, (o, c, 3, 3, 3), &dev)?),
                ("conv.bias".to_string(), Tensor::randn(0f32, 1.0, o, &dev)?),
            ]);
            let conv = CausalConv3d::new(c, o, VarBuilder::from_tensors(tensors, candle_core::DType::F32, &dev))?;
            // A first chunk of one frame, then two frames with a residual (the resnets' conv2).
            let chunks = [Tensor::randn(0f32, 1.0, (1, c, h, w), &dev)?, Tensor::randn(0f32, 1.0, (2, c, h, w), &dev)?];
            let residuals = [None, Some(Tensor::randn(0f32, 1.0, (2, o, h, w), &dev)?)];
            let mut caches = Caches::new();
            let mut whole = Vec::new();
            for (x, r) in chunks.iter().zip(&residuals) {
                caches.begin_chunk();
                whole.push(conv.forward(x, &mut caches, Rows::Whole, r.as_ref())?);
            }
            for world in [2, 3] {
                let comms = ThreadComm::world(world, std::time::Duration::from_secs(30));
                std::thread::scope(|s| -> Result<()> {
                    let handles: Vec<_> = comms
                        .into_iter()
                        .enumerate()
                        .map(|(rank, comm)| {
                            let (conv, chunks, residuals, whole) = (&conv, &chunks, &residuals, &whole);
                            s.spawn(move || -> Result<()> {
                                let ex = CommRowExchange::new(Arc::new(comm) as Arc<dyn Collective>, h);
                                let rows = split_rows(h, world)[rank].clone();
                                let mut caches = Caches::new();
                                for (i, (x, r)) in chunks.iter().zip(residuals).enumerate() {
                                    caches.begin_chunk();
                                    let slab = x.narrow(2, rows.start, rows.len())?.contiguous()?;
                                    let r = r
                                        .as_ref()
                                        .map(|r| r.narrow(2, rows.start, rows.len())?.contiguous())
                                        .transpose()?;
                                    let got = conv.forward(&slab, &mut caches, Rows::Slab(&ex), r.as_ref())?;
                                    let want = whole[i].narrow(2, rows.start, rows.len())?;
                                    let diff = (got - want)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
                                    assert_eq!(diff, 0.0, "width {w}, world {world}, rank {rank}, chunk {i}");
                                }
                                Ok(())
                            })
                        })
                        .collect();
                    for h in handles {
                        h.join().expect("rank thread")?;
                    }
                    Ok(())
                })?;
            }
        }
        Ok(())
    }

    #[test]
    fn replicate_padding_copies_edges() -> Result<()> {
        let x = seq(&[1, 1, 2, 3]);
        let p = pad_replicate(&x, Rows::Whole)?;
        let rows: Vec<Vec<f32>> = p.get(0)?.get(0)?.to_vec2()?;
        assert_eq!(
            rows,
            vec![
                vec![0., 0., 1., 2., 2.],
                vec![0., 0., 1., 2., 2.],
                vec![3., 3., 4., 5., 5.],
                vec![3., 3., 4., 5., 5.]
            ]
        );
        Ok(())
    }
}
