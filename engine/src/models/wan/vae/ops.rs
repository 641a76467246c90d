//! Tensor-level ops of the VAE, on per-video activations laid out `[T, C, H, W]` (frames-major, so a
//! frame is one contiguous slab and per-frame 2-D ops need no permute).
//!
//! Each op has two paths with identical semantics: the CPU f32 fast path (`cpu_kernels`, no padded
//! or concatenated copies) and a generic candle path for CUDA / other dtypes. `KernelChoice` lets
//! tests force the generic path on CPU to prove the two agree.

use std::ops::{Deref, Range};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use candle_core::{CpuStorage, DType, Device, Result, Storage, StorageRef, Tensor};

use super::cpu_kernels::{self, ConvGeom, RowFrame, RowInit, WeightView};

static FORCE_GENERIC: AtomicBool = AtomicBool::new(false);

/// Which implementation the ops use (the generic path exists for CUDA; tests compare the two).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelChoice {
    /// CPU fast kernels when the tensors are f32 on the CPU, candle ops otherwise.
    Auto,
    /// Always candle ops.
    Generic,
}

/// Process-wide switch; only tests and benchmarks change it.
pub fn set_kernel_choice(choice: KernelChoice) {
    FORCE_GENERIC.store(choice == KernelChoice::Generic, Ordering::SeqCst);
}

/// Model FLOPs (2 × the multiply-adds of every convolution and attention product) run so far.
static MODEL_FLOPS: AtomicU64 = AtomicU64::new(0);

/// Model FLOPs of the VAE ops this process has run: 2 × multiply-adds of every conv (taps over a
/// causal zero frame excluded, a fused upsample + conv counted as the 3×3 conv on the upsampled map)
/// and of the attention products. Benchmarks difference it around a decode to report FLOP/s.
pub fn model_flops() -> u64 {
    MODEL_FLOPS.load(Ordering::Relaxed)
}

pub(crate) fn count_flops(multiply_adds: usize) {
    MODEL_FLOPS.fetch_add(2 * multiply_adds as u64, Ordering::Relaxed);
}

/// Whether the CPU kernels handle `xs` (f32 on the CPU, generic path not forced).
pub fn cpu_fast_path(xs: &Tensor) -> bool {
    use_cpu_kernels(xs)
}

fn use_cpu_kernels(xs: &Tensor) -> bool {
    !FORCE_GENERIC.load(Ordering::Relaxed) && xs.device().is_cpu() && xs.dtype() == DType::F32
}

/// A contiguous f32 CPU tensor's elements, borrowed under its storage's read lock.
///
/// Holding the lock (instead of a raw slice taken from under it) is what makes the borrow sound:
/// candle's in-place ops (`slice_set`, `InplaceOp*`) mutate storage through its write lock, so
/// they wait until a kernel is done reading instead of racing it. Nothing in the VAE writes a
/// tensor in place, so the lock is never contended; taking it is one atomic operation.
pub(crate) struct CpuF32<'a> {
    storage: StorageRef<'a>,
    range: Range<usize>,
}

impl Deref for CpuF32<'_> {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match &*self.storage {
            Storage::Cpu(CpuStorage::F32(data)) => &data[self.range.clone()],
            // `cpu_f32` checked the variant, and the read lock keeps the storage from changing.
            _ => unreachable!("CpuF32 is only built over f32 CPU storage"),
        }
    }
}

/// Borrows a contiguous f32 CPU tensor's elements (see [`CpuF32`]).
pub(crate) fn cpu_f32(xs: &Tensor) -> Result<CpuF32<'_>> {
    let (storage, layout) = xs.storage_and_layout();
    if !matches!(&*storage, Storage::Cpu(CpuStorage::F32(_))) {
        candle_core::bail!("expected an f32 CPU tensor, got {:?} on {:?}", xs.dtype(), xs.device().location());
    }
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("expected a contiguous tensor, got strides {:?} for {:?}", layout.stride(), xs.shape())
    };
    Ok(CpuF32 { storage, range: start..end })
}

fn from_vec(data: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
    Tensor::from_vec(data, shape, &Device::Cpu)
}

/// Spatial padding of a per-frame conv: (top, bottom, left, right).
pub type Pad2d = (usize, usize, usize, usize);

/// Input frames of a conv: `taps[t][k]` feeds time tap `k` of output frame `t`; `None` is a causal
/// zero frame. Frames are `[C, H, W]` views (rank-3 tensors).
pub struct ConvInputs<'a> {
    pub taps: Vec<Vec<Option<&'a Tensor>>>,
}

/// Generic conv over frames: `weight` is `[O, I, kt, kh, kw]`, `bias` `[O]`; `residual`, when given,
/// is `[T, O, Ho, Wo]` and added to the result (fused on CPU).
pub fn conv_frames(
    inputs: &ConvInputs<'_>,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    pad: Pad2d,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    conv_frames_with(inputs, weight, None, bias, stride, pad, residual)
}

/// [`conv_frames`] with the weight's [`tap_major`] form already made (`taps`: a layer keeps it, so
/// the generic path copies no weight per call; `None`: made here, once for the call).
#[allow(clippy::too_many_arguments)]
pub fn conv_frames_with(
    inputs: &ConvInputs<'_>,
    weight: &Tensor,
    taps: Option<&Tensor>,
    bias: &Tensor,
    stride: usize,
    pad: Pad2d,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let (o, i, kt, kh, kw) = weight.dims5()?;
    let first = inputs.taps.iter().flatten().flatten().next();
    let Some(first) = first else { candle_core::bail!("conv_frames: no input frames") };
    let (c, h, w) = first.dims3()?;
    if c != i {
        candle_core::bail!("conv expects {i} input channels, got {c} (frame shape {:?})", first.shape());
    }
    for (t, taps) in inputs.taps.iter().enumerate() {
        if taps.len() != kt {
            candle_core::bail!("conv with {kt} time taps got {} input frames for output frame {t}", taps.len());
        }
        if let Some(f) = taps.iter().flatten().find(|f| f.dims() != first.dims()) {
            candle_core::bail!("conv input frames differ in shape: {:?} and {:?}", first.shape(), f.shape());
        }
    }
    if bias.dims() != [o] {
        candle_core::bail!("conv with {o} output channels got a bias of shape {:?}", bias.shape());
    }
    let (pt, pb, pl, pr) = pad;
    if h + pt + pb < kh || w + pl + pr < kw || stride == 0 {
        candle_core::bail!("conv {kh}x{kw} stride {stride} does not fit a {h}x{w} frame padded by {pad:?}");
    }
    let geom = ConvGeom::new(i, o, (h, w), (kh, kw), stride, pad);
    let frames = inputs.taps.len();
    let live_taps = inputs.taps.iter().flatten().flatten().count();
    count_flops(o * i * kh * kw * geom.h_out * geom.w_out * live_taps);
    if let Some(r) = residual {
        if r.dims() != [frames, o, geom.h_out, geom.w_out] {
            let want = [frames, o, geom.h_out, geom.w_out];
            candle_core::bail!("conv residual has shape {:?}, the output {want:?}", r.shape());
        }
    }
    if use_cpu_kernels(first) && weight.dtype() == DType::F32 {
        let wdata = cpu_f32(weight)?;
        let bdata = cpu_f32(bias)?;
        // The locks are held until the kernel returns; the kernel reads plain slices of them.
        let frame_data: Vec<Vec<Option<CpuF32<'_>>>> = inputs
            .taps
            .iter()
            .map(|ts| ts.iter().map(|f| f.map(cpu_f32).transpose()).collect::<Result<Vec<_>>>())
            .collect::<Result<_>>()?;
        let frame_refs: Vec<Vec<Option<&[f32]>>> =
            frame_data.iter().map(|ts| ts.iter().map(|f| f.as_deref()).collect()).collect();
        let res_data = residual.map(cpu_f32).transpose()?;
        let res_frames: Vec<&[f32]>;
        let init = match &res_data {
            Some(data) => {
                res_frames = data.chunks(geom.out_frame_len()).collect();
                RowInit::BiasPlus(&bdata, &res_frames)
            }
            None => RowInit::Bias(&bdata),
        };
        let mut out = vec![0f32; frames * geom.out_frame_len()];
        cpu_kernels::conv_frames(&mut out, &frame_refs, WeightView { data: &wdata, kt }, init, geom);
        return from_vec(out, &[frames, o, geom.h_out, geom.w_out]);
    }
    let taps = match taps {
        Some(t) if t.dims() == [kt, o, i, kh, kw] => t.clone(),
        Some(t) => candle_core::bail!("tap-major weight of shape {:?} for a {:?} weight", t.shape(), weight.shape()),
        None => tap_major(weight)?,
    };
    generic_conv_frames(inputs, &taps, bias, stride, pad, residual, geom.h_out, geom.w_out)
}

/// Most bytes one candle `conv2d` call may spend on its im2col matrix on the generic path
/// (`set_im2col_budget`); rows are processed in bands that stay under it.
static IM2COL_BUDGET: AtomicUsize = AtomicUsize::new(DEFAULT_IM2COL_BUDGET);

/// 256 MiB: a 512-channel 3×3 conv at 640 px width makes 11.8 MB of im2col per output row
/// (f32), so bands of 22 rows (248 MiB); whole frames of the 352×640 stage would need 4.15 GB.
pub const DEFAULT_IM2COL_BUDGET: usize = 256 << 20;

/// Sets the generic path's im2col budget per conv2d call (tests force many bands with a tiny one).
pub fn set_im2col_budget(bytes: usize) {
    IM2COL_BUDGET.store(bytes.max(1), Ordering::SeqCst);
}

/// The generic path's im2col budget per conv2d call, in bytes.
pub fn im2col_budget() -> usize {
    IM2COL_BUDGET.load(Ordering::Relaxed)
}

/// Output rows per conv2d call so that its im2col matrix (`rows · w_out × I·kh·kw` elements of
/// `elt` bytes) stays within the budget (at least one row).
pub fn band_rows(w_out: usize, in_c: usize, kh: usize, kw: usize, elt: usize) -> usize {
    let per_row = (w_out * in_c * kh * kw * elt).max(1);
    (im2col_budget() / per_row).max(1)
}

/// `weight` `[O, I, kt, kh, kw]` tap-major, `[kt, O, I, kh, kw]` contiguous: time tap `k` is then
/// `taps.get(k)`, a contiguous `[O, I, kh, kw]` view that `conv2d` uses as it is. A view of the
/// weight itself when kt = 1, else one copy (made once per layer, see `layers::CausalConv3d`).
pub fn tap_major(weight: &Tensor) -> Result<Tensor> {
    let (_, _, kt, _, _) = weight.dims5()?;
    if kt == 1 && weight.is_contiguous() {
        weight.squeeze(2)?.unsqueeze(0)
    } else {
        weight.permute((2, 0, 1, 3, 4))?.contiguous()
    }
}

/// The generic (candle) conv of [`conv_frames`]: per output frame, per band of output rows sized
/// by the im2col budget, one `conv2d` per live time tap with the tap's weight view, summed onto
/// the bias (and the residual) and written into the preallocated output. Zero padding: whole
/// frames with symmetric padding use conv2d's own; a band copies its input rows with the padding
/// it needs (a copy bounded by the band, about 1/(kh·kw) of its im2col).
#[allow(clippy::too_many_arguments)]
fn generic_conv_frames(
    inputs: &ConvInputs<'_>,
    taps: &Tensor,
    bias: &Tensor,
    stride: usize,
    pad: Pad2d,
    residual: Option<&Tensor>,
    h_out: usize,
    w_out: usize,
) -> Result<Tensor> {
    let (_, o, i, kh, kw) = taps.dims5()?;
    let Some(first) = inputs.taps.iter().flatten().flatten().next() else {
        candle_core::bail!("conv_frames: no input frames")
    };
    let (_, h, _) = first.dims3()?;
    let (pt, pb, pl, pr) = pad;
    let frames = inputs.taps.len();
    let (dtype, device) = (first.dtype(), first.device());
    let out = Tensor::zeros((frames, o, h_out, w_out), dtype, device)?;
    let band = band_rows(w_out, i, kh, kw, dtype.size_in_bytes()).min(h_out.max(1));
    let bias = bias.to_dtype(dtype)?.reshape((o, 1, 1))?;
    for (t, frame_taps) in inputs.taps.iter().enumerate() {
        let frame_out = out.get(t)?;
        for y0 in (0..h_out).step_by(band) {
            let rows = band.min(h_out - y0);
            let mut acc = bias.broadcast_as((o, rows, w_out))?.contiguous()?;
            for (k, f) in frame_taps.iter().enumerate() {
                let Some(f) = f else { continue };
                let ys = if rows == h_out && pt == pb && pt == pl && pl == pr {
                    // The whole frame with symmetric padding: conv2d pads, nothing is copied.
                    f.unsqueeze(0)?.conv2d(&taps.get(k)?, pt, stride, 1, 1)?
                } else {
                    band_input(f, y0, rows, stride, kh, pad, h)?.conv2d(&taps.get(k)?, 0, stride, 1, 1)?
                };
                acc = (acc + ys.squeeze(0)?)?;
            }
            if let Some(r) = residual {
                acc = (acc + r.get(t)?.narrow(1, y0, rows)?)?;
            }
            frame_out.slice_set(&acc.contiguous()?, 1, y0)?;
        }
    }
    Ok(out)
}

/// Input rows of output rows `y0..y0+rows` of a `[C, H, W]` frame, zero-padded as the conv's
/// `pad` says (rows outside the frame are zeros), as `[1, C, rows_in, W + pl + pr]`.
fn band_input(f: &Tensor, y0: usize, rows: usize, stride: usize, kh: usize, pad: Pad2d, h: usize) -> Result<Tensor> {
    let (pt, _, pl, pr) = pad;
    // Padded-frame rows read by the band: y0·s .. (y0+rows−1)·s + kh, i.e. frame rows shifted by pt.
    let start = (y0 * stride) as isize - pt as isize;
    let end = ((y0 + rows - 1) * stride + kh) as isize - pt as isize;
    let (a, b) = (start.max(0) as usize, (end.min(h as isize)).max(0) as usize);
    let (zeros_above, zeros_below) = ((a as isize - start) as usize, (end - b as isize).max(0) as usize);
    let xs = f.narrow(1, a, b.saturating_sub(a))?;
    let xs = if zeros_above + zeros_below > 0 { xs.pad_with_zeros(1, zeros_above, zeros_below)? } else { xs };
    let xs = if pl + pr > 0 { xs.pad_with_zeros(2, pl, pr)? } else { xs };
    xs.unsqueeze(0)
}

/// The rows a slab frame's neighbours lent it for one conv (halo mode): `above` `[C, pad_top, W]`
/// and `below` `[C, rows, W]`; `None` is zero padding (the frame's top or bottom edge).
#[derive(Debug, Clone, Default)]
pub struct Lent {
    pub above: Option<Tensor>,
    pub below: Option<Tensor>,
}

/// Output rows `lo..hi` of a conv over `h` input rows whose outputs read no padding row: those a
/// slab can compute before its neighbours' rows arrive.
pub fn interior_rows(h: usize, kh: usize, stride: usize, pad_top: usize, h_out: usize) -> Range<usize> {
    let lo = pad_top.div_ceil(stride).min(h_out);
    let hi = if h + pad_top >= kh { ((h + pad_top - kh) / stride + 1).min(h_out) } else { 0 };
    lo..hi.max(lo)
}

/// [`conv_frames`] over row slabs whose top/bottom padding rows come from the neighbouring slabs
/// (halo mode), overlapping the exchange: the output rows that read no lent row are computed
/// first, then `lent()` waits for the exchange and returns, for every output frame and time tap,
/// the rows lent to that tap's frame; the remaining rows follow. The lent rows are read where they
/// lie (no slab is concatenated with them) and the result equals the conv of the extended frames bit
/// for bit. The generic path waits first and convolves the concatenated frames.
#[allow(clippy::too_many_arguments)]
pub fn conv_frames_lent(
    inputs: &ConvInputs<'_>,
    weight: &Tensor,
    taps: Option<&Tensor>,
    bias: &Tensor,
    stride: usize,
    pad: Pad2d,
    residual: Option<&Tensor>,
    lent: impl FnOnce() -> Result<Vec<Vec<Lent>>>,
) -> Result<Tensor> {
    let (o, i, kt, kh, kw) = weight.dims5()?;
    let Some(first) = inputs.taps.iter().flatten().flatten().next() else {
        candle_core::bail!("conv_frames_lent: no input frames")
    };
    let (c, h, w) = first.dims3()?;
    let (pt, pb, pl, pr) = pad;
    if c != i || h + pt + pb < kh || w + pl + pr < kw || stride == 0 {
        candle_core::bail!(
            "conv {kh}x{kw} stride {stride} on {i} channels does not fit a {c}x{h}x{w} slab padded by {pad:?}"
        );
    }
    let frames = inputs.taps.len();
    let check_lent = |lent: &[Vec<Lent>]| -> Result<()> {
        if lent.len() != frames || lent.iter().any(|l| l.len() != kt) {
            candle_core::bail!("conv_frames_lent: lent rows for {} frames, expected {frames} × {kt} taps", lent.len());
        }
        for l in lent.iter().flatten() {
            for (part, rows) in [(&l.above, pt), (&l.below, pb)] {
                if let Some(t) = part {
                    let (tc, tr, tw) = t.dims3()?;
                    if tc != c || tw != w || tr != rows {
                        candle_core::bail!(
                            "lent rows of shape {:?} for a {c}x{h}x{w} slab padded by {pad:?}",
                            t.shape()
                        );
                    }
                }
            }
        }
        Ok(())
    };
    let geom = ConvGeom::new(i, o, (h, w), (kh, kw), stride, pad);
    let cpu = use_cpu_kernels(first) && weight.dtype() == DType::F32;
    if !cpu || geom.h_out == 0 {
        // Generic path: the slabs extended with their lent rows (zeros at the frame's edges).
        let lent = lent()?;
        check_lent(&lent)?;
        let mut ext: Vec<Vec<Option<Tensor>>> = Vec::with_capacity(frames);
        for (taps, lent) in inputs.taps.iter().zip(&lent) {
            let row = taps
                .iter()
                .zip(lent)
                .map(|(f, l)| f.map(|f| extend_rows(f, l, pt, pb)).transpose())
                .collect::<Result<Vec<_>>>()?;
            ext.push(row);
        }
        let frames = ext.iter().map(|ts| ts.iter().map(Option::as_ref).collect()).collect();
        return conv_frames_with(&ConvInputs { taps: frames }, weight, taps, bias, stride, (0, 0, pl, pr), residual);
    }
    for (t, taps) in inputs.taps.iter().enumerate() {
        if taps.len() != kt {
            candle_core::bail!("conv with {kt} time taps got {} input frames for output frame {t}", taps.len());
        }
        if let Some(f) = taps.iter().flatten().find(|f| f.dims() != first.dims()) {
            candle_core::bail!("conv input frames differ in shape: {:?} and {:?}", first.shape(), f.shape());
        }
    }
    if bias.dims() != [o] {
        candle_core::bail!("conv with {o} output channels got a bias of shape {:?}", bias.shape());
    }
    if let Some(r) = residual {
        if r.dims() != [frames, o, geom.h_out, geom.w_out] {
            let want = [frames, o, geom.h_out, geom.w_out];
            candle_core::bail!("conv residual has shape {:?}, the output {want:?}", r.shape());
        }
    }
    count_flops(o * i * kh * kw * geom.h_out * geom.w_out * inputs.taps.iter().flatten().flatten().count());
    let wdata = cpu_f32(weight)?;
    let bdata = cpu_f32(bias)?;
    let bodies: Vec<Vec<Option<CpuF32<'_>>>> = inputs
        .taps
        .iter()
        .map(|ts| ts.iter().map(|f| f.map(cpu_f32).transpose()).collect::<Result<Vec<_>>>())
        .collect::<Result<_>>()?;
    let res_data = residual.map(cpu_f32).transpose()?;
    let res_frames: Vec<&[f32]>;
    let init = match &res_data {
        Some(data) => {
            res_frames = data.chunks(geom.out_frame_len()).collect();
            RowInit::BiasPlus(&bdata, &res_frames)
        }
        None => RowInit::Bias(&bdata),
    };
    let wv = WeightView { data: &wdata, kt };
    let mut out = vec![0f32; frames * geom.out_frame_len()];
    let inner = interior_rows(h, kh, stride, pt, geom.h_out);
    {
        let bare: Vec<Vec<Option<RowFrame<'_>>>> =
            bodies.iter().map(|ts| ts.iter().map(|f| f.as_deref().map(RowFrame::whole)).collect()).collect();
        cpu_kernels::conv_frames_rows(&mut out, &bare, wv, init, geom, inner.clone());
    }
    let lent = lent()?;
    check_lent(&lent)?;
    let lent_data: Vec<Vec<(Option<Tensor>, Option<Tensor>)>> = lent
        .iter()
        .map(|ls| {
            ls.iter()
                .map(|l| {
                    let c = |t: &Option<Tensor>| t.as_ref().map(Tensor::contiguous).transpose();
                    Ok((c(&l.above)?, c(&l.below)?))
                })
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<_>>()?;
    let lent_views: Vec<Vec<(Option<CpuF32<'_>>, Option<CpuF32<'_>>)>> = lent_data
        .iter()
        .map(|ls| {
            ls.iter()
                .map(|(a, b)| Ok((a.as_ref().map(cpu_f32).transpose()?, b.as_ref().map(cpu_f32).transpose()?)))
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<_>>()?;
    let full: Vec<Vec<Option<RowFrame<'_>>>> = bodies
        .iter()
        .zip(&lent_views)
        .map(|(ts, ls)| {
            ts.iter()
                .zip(ls)
                .map(|(f, (a, b))| f.as_deref().map(|body| RowFrame { body, above: a.as_deref(), below: b.as_deref() }))
                .collect()
        })
        .collect();
    cpu_kernels::conv_frames_rows(&mut out, &full, wv, init, geom, 0..inner.start);
    cpu_kernels::conv_frames_rows(&mut out, &full, wv, init, geom, inner.end..geom.h_out);
    from_vec(out, &[frames, o, geom.h_out, geom.w_out])
}

/// `[C, H, W]` with `pt` rows above and `pb` below: the lent ones, zeros where none were lent.
fn extend_rows(f: &Tensor, lent: &Lent, pt: usize, pb: usize) -> Result<Tensor> {
    let (c, _, w) = f.dims3()?;
    let mut parts = Vec::with_capacity(3);
    if pt > 0 {
        parts.push(match &lent.above {
            Some(t) => t.clone(),
            None => Tensor::zeros((c, pt, w), f.dtype(), f.device())?,
        });
    }
    parts.push(f.clone());
    if pb > 0 {
        parts.push(match &lent.below {
            Some(t) => t.clone(),
            None => Tensor::zeros((c, pb, w), f.dtype(), f.device())?,
        });
    }
    Tensor::cat(&parts, 1)
}

/// Sub-pixel weights for [`upsample_conv`] when the CPU kernels will run, else `None`.
pub fn upsample_phases(weight: &Tensor) -> Result<Option<Tensor>> {
    let (o, i, _kt, kh, kw) = weight.dims5()?;
    if kh != 3 || kw != 3 || !weight.device().is_cpu() || weight.dtype() != DType::F32 || !weight.is_contiguous() {
        return Ok(None);
    }
    let phases = cpu_kernels::upsample_phase_weights(&cpu_f32(weight)?, o, i);
    Ok(Some(from_vec(phases, &[4, o, i, 2, 2])?))
}

/// Nearest ×2 upsample then a 3×3 pad-1 conv (`weight` `[O, I, 1, 3, 3]`) on `[T, I, H, W]`, plus an
/// optional `[T, O, 2H, 2W]` residual. On CPU the upsampled tensor is never built.
pub fn upsample_conv(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    phases: Option<&Tensor>,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let (t, i, h, w) = xs.dims4()?;
    let o = weight.dim(0)?;
    if weight.dims() != [o, i, 1, 3, 3] {
        candle_core::bail!("upsample conv on {i} channels needs a [O, {i}, 1, 3, 3] weight, got {:?}", weight.shape());
    }
    if bias.dims() != [o] {
        candle_core::bail!("upsample conv with {o} output channels got a bias of shape {:?}", bias.shape());
    }
    if let Some(r) = residual {
        if r.dims() != [t, o, 2 * h, 2 * w] {
            candle_core::bail!(
                "upsample conv residual has shape {:?}, the output {:?}",
                r.shape(),
                [t, o, 2 * h, 2 * w]
            );
        }
    }
    if let (Some(phases), true) = (phases, use_cpu_kernels(xs)) {
        if phases.dims() != [4, o, i, 2, 2] {
            candle_core::bail!(
                "upsample phase weights of shape {:?} for a {:?} weight",
                phases.shape(),
                weight.shape()
            );
        }
        // The generic path below counts through `conv_frames`.
        count_flops(t * o * i * 9 * 4 * h * w);
        let xs = xs.contiguous()?;
        let data = cpu_f32(&xs)?;
        let frames: Vec<&[f32]> = data.chunks(i * h * w).collect();
        let res = residual.map(cpu_f32).transpose()?;
        let mut out = vec![0f32; t * o * 4 * h * w];
        cpu_kernels::upsample2x_conv3x3_frames(
            &mut out,
            &frames,
            &cpu_f32(phases)?,
            &cpu_f32(bias)?,
            res.as_deref(),
            i,
            o,
            h,
            w,
        );
        return from_vec(out, &[t, o, 2 * h, 2 * w]);
    }
    let up = xs.upsample_nearest2d(2 * h, 2 * w)?;
    let frames: Vec<Tensor> = (0..t).map(|k| up.get(k)).collect::<Result<_>>()?;
    let taps = frames.iter().map(|f| vec![Some(f)]).collect();
    conv_frames(&ConvInputs { taps }, weight, bias, 1, (1, 1, 1, 1), residual)
}

/// `x / max(‖x‖ over C, 1e-12) · scale[c]` (+ SiLU) on `[T, C, H, W]`; `scale = γ·√C` as `[C]`.
pub fn rms_norm(xs: &Tensor, scale: &Tensor, silu: bool) -> Result<Tensor> {
    let (t, c, h, w) = xs.dims4()?;
    if scale.dims1()? != c {
        candle_core::bail!("rms norm over {} channels got input {:?}", scale.dims1()?, xs.shape());
    }
    if use_cpu_kernels(xs) && scale.dtype() == DType::F32 {
        let xs = xs.contiguous()?;
        let mut out = vec![0f32; t * c * h * w];
        cpu_kernels::rms_norm_frames(&mut out, &cpu_f32(&xs)?, &cpu_f32(scale)?, h * w, silu);
        return from_vec(out, &[t, c, h, w]);
    }
    // Norm in f32 as diffusers does for half inputs, cast back before the scale.
    let dtype = xs.dtype();
    let xf = xs.to_dtype(DType::F32)?;
    let norm = xf.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(1e-12)?;
    let ys = xf.broadcast_div(&norm)?.to_dtype(dtype)?;
    let ys = ys.broadcast_mul(&scale.to_dtype(dtype)?.reshape((1, c, 1, 1))?)?;
    if silu {
        candle_nn::ops::silu(&ys)
    } else {
        Ok(ys)
    }
}

/// Copies frames `start..start+len` of a `[T, …]` tensor into fresh storage, so a cache never keeps a
/// whole chunk alive through a view.
pub fn copy_frames(xs: &Tensor, start: usize, len: usize) -> Result<Tensor> {
    // `force_contiguous` allocates exactly the narrowed elements (`copy` would clone the whole storage).
    xs.narrow(0, start, len)?.force_contiguous()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn seq(dims: &[usize]) -> Tensor {
        let n: usize = dims.iter().product();
        Tensor::from_vec((0..n).map(|v| v as f32 / n as f32).collect::<Vec<_>>(), dims, &Device::Cpu).unwrap()
    }

    #[test]
    fn cpu_f32_borrows_contiguous_views_and_rejects_the_rest() -> Result<()> {
        let x = seq(&[2, 3, 4]);
        let want: Vec<f32> = x.get(1)?.flatten_all()?.to_vec1()?;
        assert_eq!(&*cpu_f32(&x.get(1)?)?, &want[..]);
        let strided = cpu_f32(&x.transpose(1, 2)?).err().expect("a transposed view is not contiguous");
        assert!(strided.to_string().contains("expected a contiguous tensor"), "{strided}");
        let half = cpu_f32(&x.to_dtype(DType::F16)?).err().expect("f16 is not f32");
        assert!(half.to_string().contains("expected an f32 CPU tensor"), "{half}");
        Ok(())
    }

    /// The borrow holds the storage's read lock: an in-place write from another thread waits until
    /// the borrow ends instead of changing the data under it.
    #[test]
    fn an_in_place_write_waits_for_the_borrow() -> Result<()> {
        let x = seq(&[4, 8]);
        let before: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let data = cpu_f32(&x)?;
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let writer = {
            let x = x.clone();
            std::thread::spawn(move || {
                let result = x.zero_set();
                done_tx.send(()).unwrap();
                result
            })
        };
        assert!(done_rx.recv_timeout(Duration::from_millis(300)).is_err(), "the write did not wait for the borrow");
        assert_eq!(&*data, &before[..]);
        drop(data);
        done_rx.recv_timeout(Duration::from_secs(30)).expect("the write finishes once the borrow ends");
        writer.join().unwrap()?;
        assert!(x.flatten_all()?.to_vec1::<f32>()?.iter().all(|&v| v == 0.0));
        Ok(())
    }

    /// Every size the CPU kernels would assert on is an error here first. The checks run before
    /// the CPU/generic branch; the upsample runs both (phases given or not) to show it.
    #[test]
    fn bad_shapes_are_errors_before_any_kernel_runs() -> Result<()> {
        let (frame, other) = (seq(&[2, 5, 6]), seq(&[2, 5, 7]));
        let (w3, b3) = (seq(&[3, 2, 3, 3, 3]), seq(&[3]));
        let conv = |taps: Vec<Vec<Option<&Tensor>>>, bias: &Tensor, residual: Option<&Tensor>| {
            conv_frames(&ConvInputs { taps }, &w3, bias, 1, (1, 1, 1, 1), residual).map(|_| ())
        };
        let mut cases: Vec<(&str, Result<()>)> = vec![
            ("3 time taps got 2 input frames", conv(vec![vec![None, Some(&frame)]], &b3, None)),
            ("input frames differ in shape", conv(vec![vec![None, Some(&frame), Some(&other)]], &b3, None)),
            ("bias of shape [2]", conv(vec![vec![None, None, Some(&frame)]], &seq(&[2]), None)),
            (
                "residual has shape [1, 3, 5, 5]",
                conv(vec![vec![None, None, Some(&frame)]], &b3, Some(&seq(&[1, 3, 5, 5]))),
            ),
        ];
        let (x, w, b) = (seq(&[2, 4, 3, 5]), seq(&[6, 4, 1, 3, 3]), seq(&[6]));
        let fused = upsample_phases(&w)?;
        assert!(fused.is_some(), "an f32 CPU weight gets sub-pixel phases");
        for phases in [fused.as_ref(), None] {
            let up = |x: &Tensor, b: &Tensor, r: Option<&Tensor>| upsample_conv(x, &w, b, phases, r).map(|_| ());
            cases.push(("needs a [O, 3, 1, 3, 3] weight", up(&seq(&[2, 3, 3, 5]), &b, None)));
            cases.push(("bias of shape [5]", up(&x, &seq(&[5]), None)));
            cases.push(("residual has shape [2, 6, 6, 9]", up(&x, &b, Some(&seq(&[2, 6, 6, 9])))));
            // The same call with the right sizes succeeds.
            up(&x, &b, Some(&seq(&[2, 6, 6, 10])))?;
        }
        for (want, got) in cases {
            let err = got.err().unwrap_or_else(|| panic!("expected an error containing `{want}`"));
            assert!(err.to_string().contains(want), "`{err}` should mention `{want}`");
        }
        conv(vec![vec![None, None, Some(&frame)]], &b3, Some(&seq(&[1, 3, 5, 6])))?;
        Ok(())
    }
}
