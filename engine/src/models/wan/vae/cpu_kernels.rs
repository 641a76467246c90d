//! Hand-written f32 CPU kernels for the VAE's memory-dominant ops.
//!
//! Why not candle's `conv2d`: on CPU it copies the input to NHWC and builds im2col tiles, and a causal
//! 3×3×3 conv would need one such conv per time tap plus the `cat`/`pad` copies diffusers makes. Here a
//! convolution is a sum of small GEMMs, one per kernel tap and output row, accumulated straight into
//! the preallocated output (`gemm` reads and writes arbitrary strides): no padded copy, no im2col, no
//! concatenation with the causal cache — zero padding is simply the taps that are skipped.
//!
//! Everything here works on plain slices; `ops.rs` wraps it for tensors (and turns bad shapes into
//! errors before they get here). All parallelism is over disjoint output rows (rayon), each GEMM
//! single-threaded.
//!
//! Soundness: every public kernel asserts each slice length its raw-pointer code relies on (input
//! frames, weights, bias, residual, output) before the first `unsafe` block runs, so no caller of
//! these safe functions can make a GEMM read or write out of bounds; a wrong length is a panic with
//! the kernel's name, never undefined behaviour.

// The convolutions hand raw pointers and strides to `gemm` (it reads and writes strided matrices in
// place) and let rayon tasks write disjoint rows of one output buffer through a shared pointer; both
// need `unsafe`. Each block states the bounds or disjointness argument it relies on.
#![allow(unsafe_code)]

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

/// Geometry of one 2-D convolution applied per frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeom {
    pub in_channels: usize,
    pub out_channels: usize,
    pub h_in: usize,
    pub w_in: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub h_out: usize,
    pub w_out: usize,
}

impl ConvGeom {
    /// Output size for explicit (top, bottom, left, right) zero padding.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        (h_in, w_in): (usize, usize),
        (kh, kw): (usize, usize),
        stride: usize,
        (pad_top, pad_bottom, pad_left, pad_right): (usize, usize, usize, usize),
    ) -> Self {
        let h_out = (h_in + pad_top + pad_bottom - kh) / stride + 1;
        let w_out = (w_in + pad_left + pad_right - kw) / stride + 1;
        Self { in_channels, out_channels, h_in, w_in, kh, kw, stride, pad_top, pad_left, h_out, w_out }
    }

    pub fn in_frame_len(&self) -> usize {
        checked_len("conv input frame", &[self.in_channels, self.h_in, self.w_in])
    }

    pub fn out_frame_len(&self) -> usize {
        checked_len("conv output frame", &[self.out_channels, self.h_out, self.w_out])
    }

    /// A 1×1 stride-1 conv over a whole frame is one GEMM: view the frame as a single row.
    fn flattened_if_pointwise(self) -> Self {
        if self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad_top == 0 && self.pad_left == 0 {
            let n = self.h_in * self.w_in;
            Self { h_in: 1, w_in: n, h_out: 1, w_out: n, ..self }
        } else {
            self
        }
    }
}

/// The product of `dims`, panicking instead of wrapping: the length checks below compare slice
/// lengths with such products, and a wrapped product could let a too-short slice pass them.
fn checked_len(what: &str, dims: &[usize]) -> usize {
    dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).unwrap_or_else(|| panic!("{what}: size {dims:?} overflows"))
}

/// Where output pixel (o, y, x) of a conv lands in the destination frame: `offset + o·plane +
/// y·row_stride + x·col_stride`. The identity map is the dense `[O, h_out, w_out]` frame; the
/// sub-pixel phases of a fused upsample+conv write every other row and column of a larger frame.
#[derive(Debug, Clone, Copy)]
struct OutMap {
    plane: usize,
    row_stride: usize,
    col_stride: usize,
    offset: usize,
}

impl OutMap {
    fn dense(g: &ConvGeom) -> Self {
        Self { plane: g.h_out * g.w_out, row_stride: g.w_out, col_stride: 1, offset: 0 }
    }
}

/// The weight of one conv as stored by PyTorch, `[O, I, kt, kh, kw]` contiguous; a time tap selects
/// one `[O, I, kh, kw]` slice through strides, so weights are never rearranged or copied.
#[derive(Debug, Clone, Copy)]
pub struct WeightView<'a> {
    pub data: &'a [f32],
    pub kt: usize,
}

/// One input frame of a conv: its own rows (`body`, `[I, h_in, w_in]`) and, for a horizontal slab of a
/// frame split over ranks (halo mode), the rows the neighbouring slabs lent it: `above` is
/// `[I, pad_top, w_in]` (the rows the top padding stands for), `below` `[I, rows, w_in]`. `None` is zero
/// padding (the frame's own edge), so a whole frame has neither. The kernels read every row where it
/// lies: a slab is never concatenated with its halo rows.
#[derive(Debug, Clone, Copy)]
pub struct RowFrame<'a> {
    pub body: &'a [f32],
    pub above: Option<&'a [f32]>,
    pub below: Option<&'a [f32]>,
}

impl<'a> RowFrame<'a> {
    /// A frame with zero padding on every side.
    pub fn whole(body: &'a [f32]) -> Self {
        Self { body, above: None, below: None }
    }

    /// Input row `iy` (negative: the top padding; `≥ h_in`: the bottom padding) as the slice starting
    /// at that row of channel 0, and the stride between channels; `None` where the row is zeros.
    /// Every slice returned holds the rest of its segment, `I · rows · w_in` values in all.
    fn row(&self, iy: isize, g: &ConvGeom) -> Option<(&'a [f32], usize)> {
        let seg = |data: &'a [f32], r: usize| {
            let rows = data.len() / (g.in_channels * g.w_in).max(1);
            (r < rows).then(|| (&data[r * g.w_in..], rows * g.w_in))
        };
        if iy < 0 {
            let above = self.above?;
            let rows = above.len() / (g.in_channels * g.w_in).max(1);
            let r = rows as isize + iy;
            if r < 0 {
                return None;
            }
            seg(above, r as usize)
        } else if (iy as usize) < g.h_in {
            seg(self.body, iy as usize)
        } else {
            seg(self.below?, iy as usize - g.h_in)
        }
    }

    /// Panics unless the body is one input frame and each lent segment whole rows of every channel,
    /// the top one exactly `pad_top` rows: `row` relies on it.
    fn assert_sizes(&self, g: &ConvGeom) {
        assert_eq!(self.body.len(), g.in_frame_len(), "conv_frames: input frame size");
        let row = checked_len("conv lent row", &[g.in_channels, g.w_in]);
        if let Some(a) = self.above {
            assert_eq!(a.len(), row * g.pad_top, "conv_frames: rows lent above");
        }
        if let Some(b) = self.below {
            assert!(row > 0 && b.len() % row == 0, "conv_frames: rows lent below");
        }
    }
}

/// How each output row is initialised before the taps accumulate into it.
#[derive(Debug, Clone, Copy)]
pub enum RowInit<'a> {
    /// `bias[o]`.
    Bias(&'a [f32]),
    /// `bias[o] + residual[t][o, y, x]`: fuses the residual add of a block into its last conv.
    BiasPlus(&'a [f32], &'a [&'a [f32]]),
}

impl RowInit<'_> {
    /// Panics unless there is one bias value per output channel and, with a residual, one whole
    /// output frame per output frame: `init_rows` relies on both.
    fn assert_sizes(&self, frames: usize, g: &ConvGeom) {
        let (RowInit::Bias(bias) | RowInit::BiasPlus(bias, _)) = self;
        assert_eq!(bias.len(), g.out_channels, "conv_frames: bias size");
        if let RowInit::BiasPlus(_, residual) = self {
            assert_eq!(residual.len(), frames, "conv_frames: residual frames");
            for r in residual.iter() {
                assert_eq!(r.len(), g.out_frame_len(), "conv_frames: residual frame size");
            }
        }
    }
}

/// A raw output pointer shared by tasks that write disjoint rows.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: the pointer is only dereferenced by the tasks of `conv_frames`, `upsample2x_conv3x3_frames`
// and `rms_norm_frames`, while the `&mut [f32]` it came from is borrowed by that call, and each task
// writes a set of positions no other task reads or writes (argued at each use). So sending it to, and
// sharing it between, rayon threads creates no data race.
unsafe impl Send for OutPtr {}
// SAFETY: see `Send` above; `&OutPtr` only gives out the same pointer.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// Going through a method makes closures capture the whole (Send) wrapper, not the raw field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Convolves frames in time and space: output frame `t` is
/// `init + Σ_k Σ_{dy,dx} W[:, :, k, dy, dx] · inputs[t][k]` where `inputs[t][k]` is the input
/// frame feeding time tap `k` (or `None` for a causal zero frame, which contributes nothing).
///
/// `out` holds `inputs.len()` frames of `geom.out_frame_len()` values; each `inputs[t]` has exactly
/// `weight.kt` taps of `geom.in_frame_len()` values. Panics (before touching `out`) on any other size.
pub fn conv_frames(
    out: &mut [f32],
    inputs: &[Vec<Option<&[f32]>>],
    weight: WeightView<'_>,
    init: RowInit<'_>,
    geom: ConvGeom,
) {
    let frames: Vec<Vec<Option<RowFrame<'_>>>> =
        inputs.iter().map(|taps| taps.iter().map(|f| f.map(RowFrame::whole)).collect()).collect();
    conv_frames_rows(out, &frames, weight, init, geom, 0..geom.h_out);
}

/// [`conv_frames`] over [`RowFrame`]s (slabs with the rows their neighbours lent), computing only
/// output rows `rows` of every frame (initialised and accumulated; the other rows are not touched).
/// Halo mode runs it twice: the rows that read no lent row while the exchange is in flight, then the
/// others. Each output row is computed by the same GEMMs whichever call computes it.
pub fn conv_frames_rows(
    out: &mut [f32],
    inputs: &[Vec<Option<RowFrame<'_>>>],
    weight: WeightView<'_>,
    init: RowInit<'_>,
    geom: ConvGeom,
    rows: std::ops::Range<usize>,
) {
    assert!(rows.start <= rows.end && rows.end <= geom.h_out, "conv_frames: output rows {rows:?} of {}", geom.h_out);
    let g = geom.flattened_if_pointwise();
    // A pointwise conv runs as one row per frame once flattened: it computes all rows or none.
    let rows = if g.h_out == geom.h_out {
        rows
    } else {
        assert!(rows.is_empty() || rows == (0..geom.h_out), "conv_frames: a pointwise conv computes all rows");
        if rows.is_empty() {
            0..0
        } else {
            0..1
        }
    };
    let frames = inputs.len();
    assert_eq!(out.len(), checked_len("conv_frames output", &[frames, g.out_frame_len()]), "conv_frames: output size");
    let weight_len = checked_len("conv_frames weight", &[g.out_channels, g.in_channels, weight.kt, g.kh, g.kw]);
    assert_eq!(weight.data.len(), weight_len, "conv_frames: weight size");
    init.assert_sizes(frames, &g);
    for taps in inputs {
        // A tap index past `kt` would address weights beyond the end of `weight.data`.
        assert_eq!(taps.len(), weight.kt, "conv_frames: time taps per frame");
        for input in taps.iter().flatten() {
            input.assert_sizes(&g);
            // Flattening moved rows into columns: lent rows would no longer line up.
            assert!(
                g.h_out == geom.h_out || (input.above.is_none() && input.below.is_none()),
                "conv_frames: pointwise halo"
            );
        }
    }
    if out.is_empty() || rows.is_empty() {
        return;
    }
    // Narrow rows make per-row GEMMs tiny (N = width) so packing the weights dominates; there the
    // band is padded once into a scratch and each tap becomes one GEMM over the whole band.
    let banded = g.stride == 1 && g.kh * g.kw > 1 && g.w_out < BANDED_BELOW_WIDTH;
    let tasks = plan_tasks(frames, rows, g.w_out, g.out_channels, banded);
    let ptr = OutPtr(out.as_mut_ptr());
    tasks.par_iter().for_each(|&Task { t, y0, y1, o0, o1 }| {
        // SAFETY: `t < frames` and `out` holds `frames` whole frames (asserted), so the frame start
        // is inside `out`.
        let frame_out = unsafe { ptr.get().add(t * g.out_frame_len()) };
        // SAFETY: `frame_out` is a dense frame of `g` inside `out`; rows `y0..y1` of channels
        // `o0..o1` of frame `t` belong to this task alone (`plan_tasks` tiles each frame's rows ×
        // channels without overlap); the bias and residual sizes were asserted.
        unsafe { init_rows(frame_out, init, t, g, y0, y1, o0..o1) };
        if banded {
            // SAFETY: as for `init_rows`, the dense map keeping every pixel of `g` inside this
            // frame; every input frame has `g.in_frame_len()` values and `kt` taps, matching
            // `weight` (asserted).
            unsafe { accumulate_band_padded(frame_out, OutMap::dense(&g), &inputs[t], weight, g, y0, y1, o0..o1) };
            return;
        }
        for (k, input) in inputs[t].iter().enumerate() {
            if let Some(input) = input {
                // SAFETY: the dense map keeps every pixel of `g` inside this frame, whose rows
                // `y0..y1` only this task writes; `input` has `g.in_frame_len()` values (and whole
                // lent rows) and `k < weight.kt` (asserted).
                unsafe { accumulate_rows(frame_out, OutMap::dense(&g), *input, weight, k, g, y0, y1) };
            }
        }
    });
}

/// Output width below which [`conv_frames`] switches to padded bands (one GEMM per tap and band).
const BANDED_BELOW_WIDTH: usize = 192;

/// Low-resolution width below which [`upsample2x_conv3x3_frames`] uses padded bands.
const UPSAMPLE_BANDED_BELOW_WIDTH: usize = 48;

/// Fewest output pixels a padded band covers. Every (band, tap) GEMM packs its whole `O × I` weight
/// slice (a strided gather), so a band of a few dozen pixels spends more time packing than
/// multiplying (the 8–32 px maps of Wan2.2's 1024-channel stages: a 1-row band of an 8×8 map is
/// 8 output pixels per packed weight). Bands this large keep packing under ~1 % of the MACs; the
/// threads then share a band's output channels instead of its rows.
const MIN_BAND_PIXELS: usize = 1024;

/// Channels of a task's group are a multiple of this (the GEMM micro-kernel's register tile).
const CHANNEL_GROUP_ALIGN: usize = 16;

/// One task of a conv: output rows `y0..y1` of channels `o0..o1` of frame `t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Task {
    t: usize,
    y0: usize,
    y1: usize,
    o0: usize,
    o1: usize,
}

/// Splits `frames` output frames of `h_out` rows × `out_channels` channels into disjoint tasks:
/// enough to balance two to a few dozen threads. Row bands by default; with `banded` (padded-band
/// GEMMs), bands grow to at least [`MIN_BAND_PIXELS`] and, when that leaves too few of them, the
/// output channels are split too.
fn plan_tasks(
    frames: usize,
    rows: std::ops::Range<usize>,
    w_out: usize,
    out_channels: usize,
    banded: bool,
) -> Vec<Task> {
    let h_out = rows.len();
    let want = rayon::current_num_threads().max(1) * 4;
    let bands_per_frame = want.div_ceil(frames.max(1)).clamp(1, h_out.max(1));
    let mut band = h_out.div_ceil(bands_per_frame).max(1);
    let mut groups = 1;
    if banded {
        band = band.max(MIN_BAND_PIXELS.div_ceil(w_out.max(1))).min(h_out.max(1));
        let tasks_so_far = frames * h_out.div_ceil(band);
        let max_groups = out_channels.div_ceil(CHANNEL_GROUP_ALIGN).max(1);
        groups = want.div_ceil(tasks_so_far.max(1)).clamp(1, max_groups);
    }
    let group = out_channels.div_ceil(groups).next_multiple_of(CHANNEL_GROUP_ALIGN).min(out_channels.max(1));
    let mut tasks = Vec::new();
    for t in 0..frames {
        for y0 in rows.clone().step_by(band) {
            for o0 in (0..out_channels).step_by(group.max(1)) {
                tasks.push(Task { t, y0, y1: (y0 + band).min(rows.end), o0, o1: (o0 + group).min(out_channels) });
            }
        }
    }
    tasks
}

/// Stride-1 conv of output rows `y0..y1`, channels `oc`: each input frame's band (plus the kernel's
/// halo rows and zero padding) is copied into a padded scratch `[I, rows + kh − 1, Wp]`, so a tap
/// (dy, dx) is a single GEMM whose columns run over the whole band (the `kw − 1` wrap-around
/// columns per row land in scratch columns that are thrown away). Results are added onto the
/// initialised output pixels, placed by `map`.
///
/// # Safety
/// For every output pixel (o ∈ oc, y0 ≤ y < y1, x < w_out), `frame_out + map.offset + o·map.plane +
/// y·map.row_stride + x·map.col_stride` must be inside one allocation that only this call reads or
/// writes at those positions while it runs; `y1 ≤ h_out`; `oc.end ≤ O`; `g.stride == 1`; `inputs`
/// has at most `weight.kt` taps, each of `g.in_frame_len()` values (plus whole lent rows, see
/// [`RowFrame::assert_sizes`]); `weight.data` holds `O·I·kt·kh·kw` values.
#[allow(clippy::too_many_arguments)]
unsafe fn accumulate_band_padded(
    frame_out: *mut f32,
    map: OutMap,
    inputs: &[Option<RowFrame<'_>>],
    weight: WeightView<'_>,
    g: ConvGeom,
    y0: usize,
    y1: usize,
    oc: std::ops::Range<usize>,
) {
    let rows = y1 - y0;
    let wp = g.w_out + g.kw - 1;
    let prow = rows + g.kh - 1;
    let m = oc.len();
    let mut padded = vec![0f32; g.in_channels * prow * wp];
    let mut acc = vec![0f32; m * rows * wp];
    let taps = weight.kt * g.kh * g.kw;
    let n = rows * wp - (g.kw - 1);
    for (k, input) in inputs.iter().enumerate() {
        let Some(input) = input else { continue };
        padded.fill(0.0);
        let cols = g.w_in.min(wp - g.pad_left);
        for r in 0..prow {
            let iy = (y0 + r) as isize - g.pad_top as isize;
            // Zero padding stays zero; a lent row is read from its neighbour's segment.
            let Some((src, plane)) = input.row(iy, &g) else { continue };
            for i in 0..g.in_channels {
                let dst = (i * prow + r) * wp + g.pad_left;
                padded[dst..dst + cols].copy_from_slice(&src[i * plane..i * plane + cols]);
            }
        }
        for dy in 0..g.kh {
            for dx in 0..g.kw {
                let tap = (k * g.kh + dy) * g.kw + dx;
                // SAFETY: all three matrices lie inside buffers of this call or of the contract.
                // dst `acc` [m × n], strides (1, rows·wp): last element (m−1)·rows·wp + n − 1 <
                // m·rows·wp = acc.len(). lhs: weight (o, i) for o = oc.start + r, r < m, at
                // tap + o·I·taps + i·taps, whose largest value O·I·taps − taps + tap (oc.end ≤ O) is
                // below O·I·taps = weight.data.len() because `k < kt` makes `tap < taps` (and the
                // slice start oc.start·I·taps + tap is then in bounds too). rhs: `padded` (i, j) at
                // dy·wp + dx + i·prow·wp + j, at most (I−1)·prow·wp + (kh−1)·wp + (kw−1) + n − 1 =
                // I·prow·wp − 1. `acc` is written only here and aliases neither input.
                unsafe {
                    gemm(
                        m,
                        n,
                        g.in_channels,
                        acc.as_mut_ptr(),
                        1,
                        (rows * wp) as isize,
                        true,
                        weight.data[oc.start * g.in_channels * taps + tap..].as_ptr(),
                        taps as isize,
                        (g.in_channels * taps) as isize,
                        padded[dy * wp + dx..].as_ptr(),
                        1,
                        (prow * wp) as isize,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    )
                };
            }
        }
    }
    for (a, o) in oc.enumerate() {
        for r in 0..rows {
            let src = &acc[(a * rows + r) * wp..(a * rows + r) * wp + g.w_out];
            let row = map.offset + o * map.plane + (y0 + r) * map.row_stride;
            if map.col_stride == 1 {
                // SAFETY: pixels (o, y0 + r, 0..w_out) with o ∈ oc and y0 + r < y1 are inside the
                // allocation and this call's alone (the contract), so a unique `&mut` is sound.
                let dst = unsafe { std::slice::from_raw_parts_mut(frame_out.add(row), g.w_out) };
                for (d, &v) in dst.iter_mut().zip(src) {
                    *d += v;
                }
            } else {
                for (x, &v) in src.iter().enumerate() {
                    // SAFETY: pixel (o, y0 + r, x), x < w_out, as above.
                    unsafe { *frame_out.add(row + x * map.col_stride) += v };
                }
            }
        }
    }
}

/// Writes the initial value (bias, plus the residual with `BiasPlus`) of output rows `y0..y1` of
/// channels `oc`.
///
/// # Safety
/// `frame_out` must point to a dense `[O, h_out, w_out]` frame whose rows `y0..y1` (`y1 ≤ h_out`)
/// of channels `oc` only this call accesses while it runs. With `BiasPlus`, `residual[t]` must
/// exist (it is indexed, so a missing one panics). Rows of channels past `bias.len()` are left
/// untouched, which is why the callers assert one bias value per output channel.
unsafe fn init_rows(
    frame_out: *mut f32,
    init: RowInit<'_>,
    t: usize,
    g: ConvGeom,
    y0: usize,
    y1: usize,
    oc: std::ops::Range<usize>,
) {
    let plane = g.h_out * g.w_out;
    let (bias, residual) = match init {
        RowInit::Bias(b) => (b, None),
        RowInit::BiasPlus(b, r) => (b, Some(r[t])),
    };
    let end = oc.end.min(g.out_channels);
    for (o, &b) in bias.iter().enumerate().take(end).skip(oc.start) {
        let start = o * plane + y0 * g.w_out;
        let len = (y1 - y0) * g.w_out;
        // SAFETY: rows `y0..y1` of channel `o < O` are inside the frame and only this call touches
        // them (the contract).
        let dst = unsafe { std::slice::from_raw_parts_mut(frame_out.add(start), len) };
        match residual {
            None => dst.fill(b),
            Some(r) => {
                for (d, &s) in dst.iter_mut().zip(&r[start..start + len]) {
                    *d = b + s;
                }
            }
        }
    }
}

/// Adds time tap `k` of the weight applied to `input` into output rows `y0..y1`.
///
/// # Safety
/// For every output pixel (o < O, y0 ≤ y < y1, x < w_out), `frame_out + map.offset + o·map.plane +
/// y·map.row_stride + x·map.col_stride` must be inside one allocation that only this call accesses
/// at those positions while it runs. `input` must hold `g.in_frame_len()` values (plus whole lent
/// rows, see [`RowFrame::assert_sizes`]), `k < weight.kt` and `weight.data` must hold
/// `O·I·kt·kh·kw` values.
#[allow(clippy::too_many_arguments)]
unsafe fn accumulate_rows(
    frame_out: *mut f32,
    map: OutMap,
    input: RowFrame<'_>,
    weight: WeightView<'_>,
    k: usize,
    g: ConvGeom,
    y0: usize,
    y1: usize,
) {
    let taps = weight.kt * g.kh * g.kw;
    let w_o_stride = (g.in_channels * taps) as isize;
    let w_i_stride = taps as isize;
    let s = g.stride;
    for y in y0..y1 {
        for dy in 0..g.kh {
            let iy = (y * s + dy) as isize - g.pad_top as isize;
            // Zero padding contributes nothing; a lent row is read where it lies.
            let Some((src, in_plane)) = input.row(iy, &g) else { continue };
            for dx in 0..g.kw {
                // Output columns whose input column x*s + dx - pad_left lies inside the frame.
                let x_lo = (g.pad_left.saturating_sub(dx)).div_ceil(s);
                let last_in = g.w_in as isize - 1 + g.pad_left as isize - dx as isize;
                if last_in < 0 {
                    continue;
                }
                let x_hi = ((last_in as usize) / s + 1).min(g.w_out);
                if x_hi <= x_lo {
                    continue;
                }
                let n = x_hi - x_lo;
                let ix0 = x_lo * s + dx - g.pad_left;
                let tap = (k * g.kh + dy) * g.kw + dx;
                // SAFETY: dst: pixels (o, y, x_lo..x_hi) with x_hi ≤ w_out, inside the allocation
                // and this call's own by the contract. lhs: weight (o, i) at tap + o·I·taps + i·taps
                // ≤ O·I·taps − taps + tap < weight.data.len(), as `k < kt` makes `tap < taps`. rhs:
                // `src` starts at row r of channel 0 of a segment of I·rows·w_in values (r < rows,
                // `RowFrame::row`), so `src` holds (I−1)·in_plane + (rows−r)·w_in values with
                // in_plane = rows·w_in; element (i, j) is at ix0 + j·s + i·in_plane, and
                // ix0 + (n−1)·s = (x_hi−1)·s + dx − pad_left ≤ last_in + dx − pad_left = w_in − 1
                // (x_hi ≤ last_in / s + 1), so the last one, (I−1)·in_plane + w_in − 1, is inside.
                // The output aliases neither input: it is a separate `&mut` buffer.
                unsafe {
                    gemm(
                        g.out_channels,
                        n,
                        g.in_channels,
                        frame_out.add(map.offset + y * map.row_stride + x_lo * map.col_stride),
                        map.col_stride as isize,
                        map.plane as isize,
                        true,
                        weight.data[tap..].as_ptr(),
                        w_i_stride,
                        w_o_stride,
                        src[ix0..].as_ptr(),
                        s as isize,
                        in_plane as isize,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    )
                };
            }
        }
    }
}

/// Sub-pixel weights of "nearest ×2 upsample, then 3×3 conv (pad 1)": for output phase (py, px)
/// the conv only ever sees each input pixel in a 2×2 neighbourhood, so the 3×3 taps fold into a 2×2
/// kernel per phase. Returns `[4][O, I, 2, 2]` (phase-major, py·2 + px) from a `[O, I, 3, 3]` weight.
pub fn upsample_phase_weights(w: &[f32], out_c: usize, in_c: usize) -> Vec<f32> {
    // Tap groups per phase along one axis: phase 0 reads rows (y-1 | y) with taps {0 | 1,2};
    // phase 1 reads rows (y | y+1) with taps {0,1 | 2}.
    const GROUPS: [[&[usize]; 2]; 2] = [[&[0], &[1, 2]], [&[0, 1], &[2]]];
    let mut out = vec![0f32; 4 * out_c * in_c * 4];
    for (py, rows) in GROUPS.iter().enumerate() {
        for (px, cols) in GROUPS.iter().enumerate() {
            let phase = py * 2 + px;
            for o in 0..out_c {
                for i in 0..in_c {
                    let src = &w[(o * in_c + i) * 9..(o * in_c + i) * 9 + 9];
                    for (ry, dys) in rows.iter().enumerate() {
                        for (rx, dxs) in cols.iter().enumerate() {
                            let mut acc = 0f32;
                            for &dy in *dys {
                                for &dx in *dxs {
                                    acc += src[dy * 3 + dx];
                                }
                            }
                            out[((phase * out_c + o) * in_c + i) * 4 + ry * 2 + rx] = acc;
                        }
                    }
                }
            }
        }
    }
    out
}

/// Nearest ×2 upsample followed by a 3×3 pad-1 conv, without ever building the upsampled frame:
/// four 2×2 sub-pixel convs on the low-resolution input, each writing every other row and column
/// of the output (2.25× fewer FLOPs, no 4× intermediate). `inputs` are `[I, H, W]` frames, `out`
/// holds as many `[O, 2H, 2W]` frames; `phases` come from [`upsample_phase_weights`], `bias` is
/// `[O]` and `residual`, when given, holds as many `[O, 2H, 2W]` frames as `out`. Panics (before
/// touching `out`) on any other size.
#[allow(clippy::too_many_arguments)]
pub fn upsample2x_conv3x3_frames(
    out: &mut [f32],
    inputs: &[&[f32]],
    phases: &[f32],
    bias: &[f32],
    residual: Option<&[f32]>,
    in_c: usize,
    out_c: usize,
    h: usize,
    w: usize,
) {
    let frames = inputs.len();
    let out_frame = checked_len("upsample conv output frame", &[out_c, 4, h, w]);
    assert_eq!(out.len(), checked_len("upsample conv output", &[frames, out_frame]), "upsample conv: output size");
    assert_eq!(
        phases.len(),
        checked_len("upsample conv phases", &[4, out_c, in_c, 4]),
        "upsample conv: phase weights size"
    );
    assert_eq!(bias.len(), out_c, "upsample conv: bias size");
    let in_frame = checked_len("upsample conv input frame", &[in_c, h, w]);
    for input in inputs {
        assert_eq!(input.len(), in_frame, "upsample conv: input frame size");
    }
    if let Some(r) = residual {
        assert_eq!(r.len(), out.len(), "upsample conv: residual size");
    }
    if out.is_empty() {
        return;
    }
    // Narrow inputs: each phase is a padded-band 2×2 conv (see `conv_frames`), tasks as there. The
    // phase outputs interleave (every other column), so the band's results scatter back element by
    // element: only worth it where per-row GEMMs are too small to amortise packing (measured
    // interleaved on 1024/512/256-channel maps: 3.6–5.4× faster at 8–16 px, even at 32, slower at 64).
    let banded = w < UPSAMPLE_BANDED_BELOW_WIDTH;
    let tasks = plan_tasks(frames, 0..h, w, out_c, banded);
    let ptr = OutPtr(out.as_mut_ptr());
    tasks.par_iter().for_each(|&Task { t, y0, y1, o0, o1 }| {
        // SAFETY: `t < frames` and `out` holds `frames` frames of `out_frame` values (asserted).
        let frame_out = unsafe { ptr.get().add(t * out_frame) };
        let (h2, w2) = (2 * h, 2 * w);
        for (o, &b) in bias.iter().enumerate().take(o1).skip(o0) {
            let start = o * h2 * w2 + 2 * y0 * w2;
            let len = 2 * (y1 - y0) * w2;
            // SAFETY: output rows 2·y0..2·y1 ≤ 2H of channel `o < O` lie inside this frame, and
            // low-res rows y0..y1 of channels o0..o1 of frame t (so output rows 2·y0..2·y1 of
            // those channels) belong to this task alone (`plan_tasks` tiles rows × channels).
            let dst = unsafe { std::slice::from_raw_parts_mut(frame_out.add(start), len) };
            match residual {
                None => dst.fill(b),
                Some(r) => {
                    let r = &r[t * out_frame + start..t * out_frame + start + len];
                    for (d, &v) in dst.iter_mut().zip(r) {
                        *d = b + v;
                    }
                }
            }
        }
        for py in 0..2 {
            for px in 0..2 {
                let phase = py * 2 + px;
                let g = ConvGeom {
                    in_channels: in_c,
                    out_channels: out_c,
                    h_in: h,
                    w_in: w,
                    kh: 2,
                    kw: 2,
                    stride: 1,
                    pad_top: 1 - py,
                    pad_left: 1 - px,
                    h_out: h,
                    w_out: w,
                };
                let map = OutMap { plane: h2 * w2, row_stride: 2 * w2, col_stride: 2, offset: py * w2 + px };
                let wv = WeightView { data: &phases[phase * out_c * in_c * 4..(phase + 1) * out_c * in_c * 4], kt: 1 };
                if banded {
                    // SAFETY: as below, for the pixels (o ∈ o0..o1, y0 ≤ y < y1, x < W) this task
                    // owns; one tap frame of I·H·W values for kt = 1; `o1 ≤ O`.
                    unsafe {
                        accumulate_band_padded(
                            frame_out,
                            map,
                            &[Some(RowFrame::whole(inputs[t]))],
                            wv,
                            g,
                            y0,
                            y1,
                            o0..o1,
                        )
                    };
                    continue;
                }
                // SAFETY: pixel (o, y, x) of this phase lands at (py + 2y)·2W + px + 2x + o·4HW, at
                // most 4HW·O − 1 for o < O, y < H, x < W, so inside this frame; its output row
                // 2y + py is one of this task's rows 2·y0..2·y1 (row tasks cover all channels:
                // `plan_tasks` only splits channels for banded convs). `inputs[t]` has I·H·W
                // values, `wv` O·I·1·2·2 and tap 0 < kt = 1 (asserted or built above).
                unsafe { accumulate_rows(frame_out, map, RowFrame::whole(inputs[t]), wv, 0, g, y0, y1) };
            }
        }
    });
}

/// `DupUp3D` in one pass: `out[t·ft + a − skip, o, y·fs + dh, x·fs + dw] = x[t, q / r, y, x]` with
/// `q = ((o·ft + a)·fs + dh)·fs + dw`, where the first `skip` output frames are dropped. `x` is
/// `[T, C, H, W]`; returns `[T·ft − skip, O, H·fs, W·fs]`.
#[allow(clippy::too_many_arguments)]
pub fn dup_up_frames(
    x: &[f32],
    (t_n, c_n, h, w): (usize, usize, usize, usize),
    out_c: usize,
    ft: usize,
    fs: usize,
    repeats: usize,
    skip: usize,
) -> Vec<f32> {
    // Safe code (indexing would panic anyway); the checks name the broken size instead.
    assert_eq!(x.len(), t_n * c_n * h * w, "dup_up_frames: input size");
    assert!(
        out_c * ft * fs * fs <= c_n * repeats,
        "dup_up_frames: {out_c} output channels need more than {c_n}×{repeats} packed channels"
    );
    let (h2, w2) = (h * fs, w * fs);
    let frames = t_n * ft - skip;
    let mut out = vec![0f32; frames * out_c * h2 * w2];
    out.par_chunks_mut(h2 * w2).enumerate().for_each(|(fo, plane)| {
        let (f, o) = (fo / out_c + skip, fo % out_c);
        let (t, a) = (f / ft, f % ft);
        for dh in 0..fs {
            for dw in 0..fs {
                let q = ((o * ft + a) * fs + dh) * fs + dw;
                let c = q / repeats;
                let src = &x[(t * c_n + c) * h * w..(t * c_n + c + 1) * h * w];
                for y in 0..h {
                    let row = &mut plane[(y * fs + dh) * w2..(y * fs + dh + 1) * w2];
                    for (xx, &v) in src[y * w..(y + 1) * w].iter().enumerate() {
                        row[xx * fs + dw] = v;
                    }
                }
            }
        }
    });
    out
}

/// `out = x / max(‖x‖₂ over channels, 1e-12) · scale[c]` per pixel, optionally followed by SiLU.
/// `scale[c]` is `γ[c]·√C` (WanRMS_norm). `x` and `out` hold whole frames `[C, plane]`.
pub fn rms_norm_frames(out: &mut [f32], x: &[f32], scale: &[f32], plane: usize, silu: bool) {
    let channels = scale.len();
    let frame = checked_len("rms_norm_frames frame", &[channels, plane]);
    assert!(frame > 0, "rms_norm_frames: empty frame ({channels} channels of {plane} pixels)");
    assert_eq!(x.len() % frame, 0, "rms_norm_frames: input is not whole frames");
    assert_eq!(out.len(), x.len(), "rms_norm_frames: output size");
    const CHUNK: usize = 2048;
    let frames = x.len() / frame;
    let chunks_per_frame = plane.div_ceil(CHUNK);
    let ptr = OutPtr(out.as_mut_ptr());
    (0..frames * chunks_per_frame).into_par_iter().for_each(|task| {
        let (t, ci) = (task / chunks_per_frame, task % chunks_per_frame);
        let p0 = ci * CHUNK;
        let p1 = (p0 + CHUNK).min(plane);
        let xf = &x[t * frame..(t + 1) * frame];
        let mut inv = [0f32; CHUNK];
        let inv = &mut inv[..p1 - p0];
        for c in 0..channels {
            for (acc, &v) in inv.iter_mut().zip(&xf[c * plane + p0..c * plane + p1]) {
                *acc += v * v;
            }
        }
        for acc in inv.iter_mut() {
            *acc = 1.0 / acc.sqrt().max(1e-12);
        }
        for (c, &sc) in scale.iter().enumerate() {
            let src = &xf[c * plane + p0..c * plane + p1];
            // SAFETY: t < frames, c < channels and p1 ≤ plane put t·frame + c·plane + p0..p1 inside
            // `out` (out.len() = x.len() = frames·frame, asserted); the task index fixes (t, p0..p1),
            // so these ranges are disjoint across tasks.
            let dst = unsafe { std::slice::from_raw_parts_mut(ptr.get().add(t * frame + c * plane + p0), p1 - p0) };
            for ((d, &v), &r) in dst.iter_mut().zip(src).zip(inv.iter()) {
                let y = v * r * sc;
                *d = if silu { y / (1.0 + (-y).exp()) } else { y };
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct loop reference: out[t][o,y,x] = b[o] + Σ w[o,i,k,dy,dx] in[t][k][i, y*s+dy-pt, x*s+dx-pl].
    #[allow(clippy::too_many_arguments)]
    fn naive(inputs: &[Vec<Option<Vec<f32>>>], w: &[f32], kt: usize, b: &[f32], g: ConvGeom) -> Vec<f32> {
        let mut out = vec![0f32; inputs.len() * g.out_frame_len()];
        for (t, taps) in inputs.iter().enumerate() {
            for o in 0..g.out_channels {
                for y in 0..g.h_out {
                    for x in 0..g.w_out {
                        let mut acc = b[o] as f64;
                        for (k, inp) in taps.iter().enumerate() {
                            let Some(inp) = inp else { continue };
                            for i in 0..g.in_channels {
                                for dy in 0..g.kh {
                                    for dx in 0..g.kw {
                                        let iy = (y * g.stride + dy) as isize - g.pad_top as isize;
                                        let ix = (x * g.stride + dx) as isize - g.pad_left as isize;
                                        if iy < 0 || ix < 0 || iy >= g.h_in as isize || ix >= g.w_in as isize {
                                            continue;
                                        }
                                        let wv = w[(((o * g.in_channels + i) * kt + k) * g.kh + dy) * g.kw + dx];
                                        let xv = inp[(i * g.h_in + iy as usize) * g.w_in + ix as usize];
                                        acc += (wv * xv) as f64;
                                    }
                                }
                            }
                        }
                        out[t * g.out_frame_len() + (o * g.h_out + y) * g.w_out + x] = acc as f32;
                    }
                }
            }
        }
        out
    }

    fn pseudo(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(12345);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2000) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn check(kt: usize, k: (usize, usize), stride: usize, pad: (usize, usize, usize, usize), hw: (usize, usize)) {
        let g = ConvGeom::new(5, 7, hw, k, stride, pad);
        let w = pseudo(7 * 5 * kt * k.0 * k.1, 1);
        let b = pseudo(7, 2);
        let frames: Vec<Vec<f32>> = (0..kt + 2).map(|i| pseudo(g.in_frame_len(), 10 + i as u32)).collect();
        // Output frame t reads frames t..t+kt, the first one missing (a causal zero frame) for t = 0.
        let taps: Vec<Vec<Option<Vec<f32>>>> = (0..3)
            .map(|t| {
                (0..kt).map(|k| if t == 0 && k == 0 && kt > 1 { None } else { Some(frames[t + k].clone()) }).collect()
            })
            .collect();
        let want = naive(&taps, &w, kt, &b, g);
        let refs: Vec<Vec<Option<&[f32]>>> = taps.iter().map(|ts| ts.iter().map(|f| f.as_deref()).collect()).collect();
        let mut got = vec![0f32; want.len()];
        conv_frames(&mut got, &refs, WeightView { data: &w, kt }, RowInit::Bias(&b), g);
        let max = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(max < 1e-4, "kt {kt} k {k:?} stride {stride} pad {pad:?}: max diff {max}");
    }

    #[test]
    fn conv_matches_direct_loops() {
        check(3, (3, 3), 1, (1, 1, 1, 1), (6, 9));
        // Wide enough for the per-row path (narrow ones take the padded-band path).
        check(3, (3, 3), 1, (1, 1, 1, 1), (3, BANDED_BELOW_WIDTH + 7));
        check(1, (3, 3), 1, (0, 0, 1, 1), (4, 5));
        check(1, (3, 3), 1, (1, 1, 1, 1), (5, 4));
        check(1, (3, 3), 2, (0, 1, 0, 1), (8, 10));
        check(1, (3, 3), 2, (0, 1, 0, 1), (7, 5));
        check(1, (1, 1), 1, (0, 0, 0, 0), (4, 6));
        check(3, (1, 1), 1, (0, 0, 0, 0), (3, 3));
    }

    /// A slab whose top/bottom padding rows are lent by neighbours, computed in two passes (the
    /// rows that read no lent row, then the rest), equals the conv of the slab concatenated with
    /// those rows bit for bit, on the per-row and on the padded-band path, stride 1 and 2.
    #[test]
    fn lent_rows_in_two_passes_equal_the_extended_frame() {
        for (w_in, stride, pad, k_t) in
            [(BANDED_BELOW_WIDTH + 5, 1, (1, 1), 3), (9, 1, (1, 1), 3), (12, 2, (0, 1), 1), (9, 1, (1, 1), 1)]
        {
            let (c, o, h) = (5, 7, 6);
            let (pt, pb) = pad;
            let w = pseudo(o * c * k_t * 9, 3);
            let b = pseudo(o, 4);
            let body: Vec<Vec<f32>> = (0..k_t).map(|i| pseudo(c * h * w_in, 10 + i as u32)).collect();
            let above: Vec<Vec<f32>> = (0..k_t).map(|i| pseudo(c * pt * w_in, 20 + i as u32)).collect();
            let below: Vec<Vec<f32>> = (0..k_t).map(|i| pseudo(c * pb * w_in, 30 + i as u32)).collect();
            // The reference: each frame extended with its lent rows, no top/bottom padding.
            let ext: Vec<Vec<f32>> = (0..k_t)
                .map(|i| {
                    let mut e = Vec::new();
                    for ch in 0..c {
                        e.extend_from_slice(&above[i][ch * pt * w_in..(ch + 1) * pt * w_in]);
                        e.extend_from_slice(&body[i][ch * h * w_in..(ch + 1) * h * w_in]);
                        e.extend_from_slice(&below[i][ch * pb * w_in..(ch + 1) * pb * w_in]);
                    }
                    e
                })
                .collect();
            let ge = ConvGeom::new(c, o, (h + pt + pb, w_in), (3, 3), stride, (0, 0, 1, 1));
            let refs: Vec<Vec<Option<&[f32]>>> = vec![ext.iter().map(|e| Some(e.as_slice())).collect()];
            let mut want = vec![0f32; ge.out_frame_len()];
            conv_frames(&mut want, &refs, WeightView { data: &w, kt: k_t }, RowInit::Bias(&b), ge);
            let g = ConvGeom::new(c, o, (h, w_in), (3, 3), stride, (pt, pb, 1, 1));
            assert_eq!((g.h_out, g.w_out), (ge.h_out, ge.w_out));
            let lent: Vec<Vec<Option<RowFrame<'_>>>> = vec![(0..k_t)
                .map(|i| {
                    Some(RowFrame {
                        body: &body[i],
                        above: (pt > 0).then_some(above[i].as_slice()),
                        below: (pb > 0).then_some(below[i].as_slice()),
                    })
                })
                .collect()];
            let bare: Vec<Vec<Option<RowFrame<'_>>>> = vec![body.iter().map(|f| Some(RowFrame::whole(f))).collect()];
            // Interior rows: output row y reads input rows y·s − pt .. y·s − pt + 2.
            let lo = pt.div_ceil(stride);
            let hi = (h + pt - 3) / stride + 1;
            let mut got = vec![f32::NAN; g.out_frame_len()];
            let (wv, init) = (WeightView { data: &w, kt: k_t }, RowInit::Bias(&b));
            conv_frames_rows(&mut got, &bare, wv, init, g, lo..hi);
            conv_frames_rows(&mut got, &lent, wv, init, g, 0..lo);
            conv_frames_rows(&mut got, &lent, wv, init, g, hi..g.h_out);
            let same = want.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "w {w_in} stride {stride} pad {pad:?} kt {k_t}: the two passes differ from the extended frame"
            );
        }
    }

    #[test]
    fn banded_conv_splits_channels_and_matches_direct_loops() {
        // 40 output channels and a 12×10 map: banded, one band per frame, channel groups of 16.
        let g = ConvGeom::new(6, 40, (12, 10), (3, 3), 1, (1, 1, 1, 1));
        let w = pseudo(40 * 6 * 3 * 9, 21);
        let b = pseudo(40, 22);
        let f: Vec<Vec<f32>> = (0..3).map(|i| pseudo(g.in_frame_len(), 30 + i)).collect();
        let taps = vec![
            vec![None, Some(f[0].clone()), Some(f[1].clone())],
            vec![Some(f[0].clone()), Some(f[1].clone()), Some(f[2].clone())],
        ];
        let want = naive(&taps, &w, 3, &b, g);
        let refs: Vec<Vec<Option<&[f32]>>> = taps.iter().map(|ts| ts.iter().map(|f| f.as_deref()).collect()).collect();
        let mut got = vec![0f32; want.len()];
        conv_frames(&mut got, &refs, WeightView { data: &w, kt: 3 }, RowInit::Bias(&b), g);
        let max = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(max < 1e-4, "banded channel-split conv: max diff {max}");
    }

    #[test]
    fn task_plans_tile_every_output_once() {
        for (frames, h, w, o, banded) in [
            (1, 8, 8, 1024, true),
            (2, 32, 32, 512, true),
            (3, 5, 300, 7, false),
            (1, 1, 1, 1, true),
            (4, 64, 100, 40, true),
        ] {
            let tasks = plan_tasks(frames, 0..h, w, o, banded);
            let mut seen = vec![0u8; frames * h * o];
            for t in &tasks {
                assert!(t.y0 < t.y1 && t.y1 <= h && t.o0 < t.o1 && t.o1 <= o, "{t:?}");
                if !banded {
                    assert_eq!((t.o0, t.o1), (0, o), "row tasks keep all channels");
                }
                for y in t.y0..t.y1 {
                    for c in t.o0..t.o1 {
                        seen[(t.t * h + y) * o + c] += 1;
                    }
                }
            }
            assert!(seen.iter().all(|&n| n == 1), "frames {frames} {h}×{w} O {o}: not a tiling");
        }
    }

    #[test]
    fn fused_upsample_conv_matches_upsample_then_conv_wide() {
        // Wider than UPSAMPLE_BANDED_BELOW_WIDTH: the per-row GEMM path.
        let (ci, co, h, w) = (2, 3, 2, UPSAMPLE_BANDED_BELOW_WIDTH + 3);
        let wt = pseudo(co * ci * 9, 15);
        let b = pseudo(co, 16);
        let x = pseudo(ci * h * w, 17);
        let mut up = vec![0f32; ci * 4 * h * w];
        for c in 0..ci {
            for y in 0..2 * h {
                for xx in 0..2 * w {
                    up[(c * 2 * h + y) * 2 * w + xx] = x[(c * h + y / 2) * w + xx / 2];
                }
            }
        }
        let g = ConvGeom::new(ci, co, (2 * h, 2 * w), (3, 3), 1, (1, 1, 1, 1));
        let want = naive(&[vec![Some(up)]], &wt, 1, &b, g);
        let mut got = vec![0f32; want.len()];
        upsample2x_conv3x3_frames(&mut got, &[&x], &upsample_phase_weights(&wt, co, ci), &b, None, ci, co, h, w);
        let max = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(max < 1e-4, "fused upsample conv (wide): max diff {max}");
    }

    #[test]
    fn fused_upsample_conv_matches_upsample_then_conv() {
        let (ci, co, h, w) = (3, 4, 5, 6);
        let wt = pseudo(co * ci * 9, 5);
        let b = pseudo(co, 6);
        let x = pseudo(ci * h * w, 7);
        // Reference: materialise the nearest-upsampled frame and run the plain conv on it.
        let mut up = vec![0f32; ci * 4 * h * w];
        for c in 0..ci {
            for y in 0..2 * h {
                for xx in 0..2 * w {
                    up[(c * 2 * h + y) * 2 * w + xx] = x[(c * h + y / 2) * w + xx / 2];
                }
            }
        }
        let g = ConvGeom::new(ci, co, (2 * h, 2 * w), (3, 3), 1, (1, 1, 1, 1));
        let want = naive(&[vec![Some(up)]], &wt, 1, &b, g);
        let mut got = vec![0f32; want.len()];
        let phases = upsample_phase_weights(&wt, co, ci);
        upsample2x_conv3x3_frames(&mut got, &[&x], &phases, &b, None, ci, co, h, w);
        let max = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(max < 1e-4, "fused upsample conv: max diff {max}");
    }

    /// A valid 3-tap 3×3 conv over two frames; the tests below break one size at a time.
    struct ConvCase {
        g: ConvGeom,
        w: Vec<f32>,
        b: Vec<f32>,
        frame: Vec<f32>,
    }

    impl ConvCase {
        fn new() -> Self {
            let g = ConvGeom::new(2, 3, (4, 5), (3, 3), 1, (1, 1, 1, 1));
            Self { g, w: pseudo(3 * 2 * 3 * 9, 1), b: pseudo(3, 2), frame: pseudo(g.in_frame_len(), 3) }
        }

        fn run(&self, inputs: &[Vec<Option<&[f32]>>], bias: &[f32]) {
            let mut out = vec![0f32; inputs.len() * self.g.out_frame_len()];
            conv_frames(&mut out, inputs, WeightView { data: &self.w, kt: 3 }, RowInit::Bias(bias), self.g);
        }
    }

    #[test]
    fn conv_case_is_valid() {
        let c = ConvCase::new();
        c.run(&[vec![None, None, Some(&c.frame)], vec![None, Some(&c.frame), Some(&c.frame)]], &c.b);
    }

    #[test]
    #[should_panic(expected = "conv_frames: input frame size")]
    fn conv_rejects_a_short_input_frame() {
        let c = ConvCase::new();
        let short = &c.frame[..c.frame.len() - 1];
        c.run(&[vec![None, None, Some(&c.frame)], vec![None, Some(&c.frame), Some(short)]], &c.b);
    }

    #[test]
    #[should_panic(expected = "conv_frames: time taps per frame")]
    fn conv_rejects_more_taps_than_the_weight_has() {
        let c = ConvCase::new();
        c.run(&[vec![None, None, Some(&c.frame), Some(&c.frame)]], &c.b);
    }

    #[test]
    #[should_panic(expected = "conv_frames: bias size")]
    fn conv_rejects_a_short_bias() {
        let c = ConvCase::new();
        c.run(&[vec![None, None, Some(&c.frame)]], &c.b[..2]);
    }

    #[test]
    #[should_panic(expected = "conv_frames: residual frames")]
    fn conv_rejects_a_missing_residual_frame() {
        let c = ConvCase::new();
        let mut out = vec![0f32; 2 * c.g.out_frame_len()];
        let residual = pseudo(c.g.out_frame_len(), 4);
        let inputs = [vec![None, None, Some(&c.frame[..])], vec![None, Some(&c.frame[..]), Some(&c.frame[..])]];
        let init = RowInit::BiasPlus(&c.b, &[&residual]);
        conv_frames(&mut out, &inputs, WeightView { data: &c.w, kt: 3 }, init, c.g);
    }

    /// A valid fused upsample conv of two 3→4 channel 5×6 frames.
    struct UpCase {
        phases: Vec<f32>,
        b: Vec<f32>,
        x: Vec<f32>,
    }

    impl UpCase {
        const DIMS: (usize, usize, usize, usize) = (3, 4, 5, 6);

        fn new() -> Self {
            let (ci, co, h, w) = Self::DIMS;
            Self {
                phases: upsample_phase_weights(&pseudo(co * ci * 9, 5), co, ci),
                b: pseudo(co, 6),
                x: pseudo(ci * h * w, 7),
            }
        }

        fn run(&self, inputs: &[&[f32]], bias: &[f32], residual: Option<&[f32]>) {
            let (ci, co, h, w) = Self::DIMS;
            let mut out = vec![0f32; inputs.len() * co * 4 * h * w];
            upsample2x_conv3x3_frames(&mut out, inputs, &self.phases, bias, residual, ci, co, h, w);
        }
    }

    #[test]
    fn up_case_is_valid() {
        let c = UpCase::new();
        let (_, co, h, w) = UpCase::DIMS;
        c.run(&[&c.x, &c.x], &c.b, Some(&pseudo(2 * co * 4 * h * w, 8)));
    }

    #[test]
    #[should_panic(expected = "upsample conv: input frame size")]
    fn upsample_rejects_a_short_input_frame() {
        let c = UpCase::new();
        c.run(&[&c.x, &c.x[1..]], &c.b, None);
    }

    #[test]
    #[should_panic(expected = "upsample conv: bias size")]
    fn upsample_rejects_a_short_bias() {
        let c = UpCase::new();
        c.run(&[&c.x], &c.b[1..], None);
    }

    #[test]
    #[should_panic(expected = "upsample conv: residual size")]
    fn upsample_rejects_a_short_residual() {
        let c = UpCase::new();
        let (_, co, h, w) = UpCase::DIMS;
        c.run(&[&c.x, &c.x], &c.b, Some(&pseudo(co * 4 * h * w, 8)));
    }

    #[test]
    #[should_panic(expected = "dup_up_frames: input size")]
    fn dup_up_rejects_a_short_input() {
        dup_up_frames(&pseudo(2 * 8 * 3 * 3 - 1, 9), (2, 8, 3, 3), 4, 2, 2, 4, 0);
    }

    #[test]
    fn rms_norm_matches_formula() {
        let (c, plane) = (6, 3000);
        let x = pseudo(2 * c * plane, 3);
        let scale = pseudo(c, 4);
        let mut out = vec![0f32; x.len()];
        rms_norm_frames(&mut out, &x, &scale, plane, true);
        for t in 0..2 {
            for p in [0, 1, 2047, 2048, 2999] {
                let norm: f32 = (0..c).map(|ch| x[t * c * plane + ch * plane + p].powi(2)).sum::<f32>().sqrt();
                for ch in 0..c {
                    let y = x[t * c * plane + ch * plane + p] / norm * scale[ch];
                    let want = y / (1.0 + (-y).exp());
                    let got = out[t * c * plane + ch * plane + p];
                    assert!((want - got).abs() < 1e-5, "t{t} p{p} c{ch}: {want} vs {got}");
                }
            }
        }
    }
}
