//! VAE working set: a replay of `models::wan::vae` (decoder and encoder, one temporal chunk at a
//! time) that allocates and frees what the real code does, in the same order, so the peak of the
//! replay is the peak of the run.
//!
//! What is live at any moment (read from `vae/{decoder,blocks,layers,ops,cpu_kernels,autoencoder}.rs`):
//! - the causal caches: 2 frames of every cached conv's input (halo mode: the slab's rows and the
//!   rows its neighbours lent), 1 frame per `downsample3d`; a new slot is made before the old one
//!   is released;
//! - in a residual block, everything bound with `let` until the block returns (Rust drops shadowed
//!   bindings at the end of the scope): shortcut, norm1, conv1, norm2 and conv2 outputs;
//! - in halo mode, the rows each padded conv's neighbours lend (one above, one below), read in place
//!   by the CPU kernels; the generic path also builds the input extended with them;
//! - the output buffer (rank 0 only) and a host copy of each finished chunk while it is written;
//! - on the generic (CUDA) path, per conv: the output, written band by band; per band of output rows
//!   (sized so that its im2col stays within `ops::im2col_budget`): the band's zero-padded input
//!   copy, the im2col matrix, candle's GEMM result and its NCHW copy, the running sum (the CPU path
//!   has none of these).

use super::live::Live;
use super::params::vae_decoder_dims;
use crate::models::wan::vae::config::Config as VaeConfig;
use crate::models::wan::vae::decoder::frame_tail_from;

/// Which implementation of the VAE ops runs (see `vae::ops`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelPath {
    /// The f32 CPU kernels: direct convs into preallocated outputs.
    Cpu,
    /// candle ops (CUDA): padded copies, im2col conv2d, stacked frames.
    Generic,
}

/// How one VAE pass is laid out on this rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VaeRun {
    /// Bytes per activation element (f32: 4).
    pub elt: u64,
    pub path: KernelPath,
    /// Row-slab (halo) mode: neighbour rows are exchanged at every padded conv.
    pub halo: bool,
    /// Threads of the CPU kernels (each holds a band scratch for narrow convs).
    pub threads: usize,
    /// Generic path: the most bytes of im2col per conv2d call (`ops::im2col_budget`).
    pub im2col_budget: usize,
}

/// A `[T, C, H, W]` activation (H = this rank's rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Act {
    pub t: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Act {
    pub fn bytes(&self, elt: u64) -> u64 {
        (self.t * self.c * self.h * self.w) as u64 * elt
    }
    fn with_c(self, c: usize) -> Self {
        Self { c, ..self }
    }
    fn with_t(self, t: usize) -> Self {
        Self { t, ..self }
    }
    fn up2(self) -> Self {
        Self { h: 2 * self.h, w: 2 * self.w, ..self }
    }
}

/// Cache slots in traversal order (bytes held by each).
#[derive(Debug, Default, Clone)]
pub struct Slots {
    bytes: Vec<u64>,
    frames: Vec<usize>,
    cursor: usize,
}

impl Slots {
    fn start_chunk(&mut self) {
        self.cursor = 0;
    }
    fn cursor(&self) -> usize {
        self.cursor
    }
    fn rewind(&mut self, to: usize) {
        self.cursor = to;
    }
    /// (frames, bytes) of the next slot.
    fn next(&mut self) -> usize {
        if self.cursor == self.bytes.len() {
            self.bytes.push(0);
            self.frames.push(0);
        }
        self.cursor += 1;
        self.cursor - 1
    }
    pub fn total(&self) -> u64 {
        self.bytes.iter().sum()
    }
}

/// Band scratch of the CPU conv for narrow outputs (`cpu_kernels::accumulate_band_padded`): each
/// running task pads its band of input rows and accumulates into a band of output rows.
pub fn conv_band_scratch(run: &VaeRun, in_c: usize, out_c: usize, frames: usize, h_out: usize, w_out: usize) -> u64 {
    const BANDED_BELOW_WIDTH: usize = 192;
    if run.path != KernelPath::Cpu || w_out >= BANDED_BELOW_WIDTH || h_out == 0 {
        return 0;
    }
    let threads = run.threads.max(1);
    let bands_per_frame = (threads * 4).div_ceil(frames.max(1)).clamp(1, h_out);
    let band = h_out.div_ceil(bands_per_frame);
    let tasks = frames * h_out.div_ceil(band);
    let wp = w_out + 2;
    let per_task = (in_c * (band + 2) * wp + out_c * band * wp) as u64 * 4;
    per_task * tasks.min(threads) as u64
}

/// Transient buffers of one conv2d call of the generic path (`ops::generic_conv_frames`) on a band
/// of `h` output rows × `w` columns: the band's input with its zero padding (two pad copies, rows
/// then columns), candle's im2col matrix, its GEMM result and NCHW copy, and the running sum.
pub fn generic_conv_band_scratch(elt: u64, in_c: usize, out_c: usize, h: usize, w: usize, k: usize) -> u64 {
    let pad = if k > 1 { (in_c * (h + k - 1) * w + in_c * (h + k - 1) * (w + k - 1)) as u64 } else { 0 };
    let im2col = (h * w * in_c * k * k) as u64;
    (pad + im2col + 3 * (out_c * h * w) as u64) * elt
}

/// Output rows per conv2d call on the generic path: as many as keep the im2col matrix within
/// `budget` bytes (`ops::band_rows`), at most the frame's.
pub fn generic_band_rows(elt: u64, in_c: usize, h_out: usize, w_out: usize, k: usize, budget: usize) -> usize {
    let per_row = (w_out * in_c * k * k) as u64 * elt;
    ((budget as u64 / per_row.max(1)).max(1) as usize).min(h_out.max(1))
}

/// The replay of one VAE pass on one rank.
pub struct Replay<'a> {
    pub cfg: &'a VaeConfig,
    pub run: VaeRun,
    pub mem: Live,
    pub slots: Slots,
}

impl<'a> Replay<'a> {
    pub fn new(cfg: &'a VaeConfig, run: VaeRun, base: u64) -> Self {
        Self { cfg, run, mem: Live::with_base(base), slots: Slots::default() }
    }

    fn b(&self, a: Act) -> u64 {
        a.bytes(self.run.elt)
    }

    /// Halo mode: what a conv with `pad` rows of padding holds beside its input while it runs: the
    /// `2·pad` rows the neighbours lent (read in place on the CPU path, `ops::conv_frames_lent`),
    /// plus on the generic path the input extended with them.
    fn lent_bytes(&self, x: Act, pad: usize, halo: bool) -> u64 {
        if !halo || pad == 0 {
            return 0;
        }
        let lent = self.b(Act { h: 2 * pad, ..x });
        match self.run.path {
            KernelPath::Cpu => lent,
            KernelPath::Generic => lent + self.b(Act { h: x.h + 2 * pad, ..x }),
        }
    }

    /// A per-frame conv without time taps (1×1 shortcut / qkv / proj, or a resample's 3×3):
    /// allocates the output (plus the generic path's scratch). `pad` rows come from neighbours in
    /// halo mode.
    fn conv2d(&mut self, x: Act, out_c: usize, k: usize, pad: usize) -> Act {
        let out = x.with_c(out_c);
        let ext = self.lent_bytes(x, pad, self.run.halo);
        self.mem.alloc(ext);
        self.conv_out(x, out, k);
        self.mem.free(ext);
        out
    }

    /// Output allocation and transient scratch of a conv producing `out` from `x`.
    fn conv_out(&mut self, x: Act, out: Act, k: usize) {
        match self.run.path {
            KernelPath::Cpu => {
                self.mem.alloc(self.b(out));
                let s = if k > 1 { conv_band_scratch(&self.run, x.c, out.c, out.t, out.h, out.w) } else { 0 };
                self.mem.transient(s);
            }
            KernelPath::Generic => {
                // The output is allocated first and written band by band.
                self.mem.alloc(self.b(out));
                let rows = generic_band_rows(self.run.elt, x.c, out.h, out.w, k, self.run.im2col_budget);
                self.mem.transient(generic_conv_band_scratch(self.run.elt, x.c, out.c, rows, out.w, k));
            }
        }
    }

    /// A causal conv with `kt` time taps and `pad` spatial padding reading/updating the next cache
    /// slot (`layers::CausalConv3d::forward_cached`). `x` stays owned by the caller.
    fn conv_cached(&mut self, x: Act, out_c: usize, kt: usize, k: usize, pad: usize, halo: bool) -> Act {
        let slot = self.slots.next();
        // The cache keeps the slab's rows and the rows lent to them: the extended frames' bytes.
        let ext_act = if halo && pad > 0 { Act { h: x.h + 2 * pad, ..x } } else { x };
        let ext = self.lent_bytes(x, pad, halo);
        self.mem.alloc(ext);
        let out = x.with_c(out_c);
        // kt > 1 on the generic path: the layer's tap-major weight was made at load (no copy here).
        let _ = kt;
        self.conv_out(x, out, k);
        // The new history (last 2 frames of old ++ input) is built while the old one is still held.
        let old_frames = self.slots.frames[slot];
        let new_frames = (x.t + old_frames).min(2);
        let new_bytes = self.b(ext_act.with_t(new_frames));
        self.mem.alloc(new_bytes);
        self.mem.free(self.slots.bytes[slot]);
        self.slots.bytes[slot] = new_bytes;
        self.slots.frames[slot] = new_frames;
        self.mem.free(ext);
        out
    }

    /// `WanRMS_norm` (+ SiLU): one output on the CPU path; the generic path's squares, division,
    /// scale and SiLU each make a tensor.
    fn rms_norm(&mut self, x: Act, silu: bool) -> Act {
        let b = self.b(x);
        if self.run.path == KernelPath::Generic {
            self.mem.transient(b); // x²
            self.mem.alloc(b); // x / ‖x‖
            self.mem.alloc(b); // · scale
            self.mem.free(b);
            if silu {
                self.mem.alloc(b);
                self.mem.free(b);
            }
        }
        self.mem.alloc(b);
        x
    }

    /// `ResidualBlock::forward`, consuming `x`.
    pub fn resblock(&mut self, x: Act, out_c: usize) -> Act {
        let out = x.with_c(out_c);
        let shortcut = if x.c != out_c { self.conv2d(x, out_c, 1, 0) } else { x };
        let shortcut_bytes = self.b(shortcut);
        let h1 = self.rms_norm(x, true);
        if x.c != out_c {
            self.mem.free(self.b(x)); // drop(xs)
        }
        let h2 = self.conv_cached(h1, out_c, 3, 3, 1, self.run.halo);
        let h3 = self.rms_norm(h2, true);
        let y = self.conv_cached(h3, out_c, 3, 3, 1, self.run.halo);
        // Shadowed bindings and the shortcut are dropped at return.
        for a in [h1, h2, h3] {
            self.mem.free(self.b(a));
        }
        self.mem.free(shortcut_bytes);
        debug_assert_eq!(y, out);
        y
    }

    /// `AttentionBlock::forward` (per-frame single-head attention), consuming `x`. `full_h` is the
    /// frame's full height (halo mode gathers keys and values of the whole frame).
    pub fn attention(&mut self, x: Act, full_h: usize) -> Act {
        const ATTN_SCORE_BLOCK: usize = 1 << 22;
        let (t, c, n) = (x.t, x.c, x.h * x.w);
        let e = self.run.elt;
        let normed = self.rms_norm(x, false);
        let qkv = self.conv2d(normed, 3 * c, 1, 0);
        self.mem.free(self.b(normed));
        let q = (t * n * c) as u64 * e;
        self.mem.alloc(q);
        let n_kv = if self.run.halo { full_h * x.w } else { n };
        // Storage that keeps k alive: the gathered kv (halo) or qkv itself (k is a view of it).
        let k_storage = if self.run.halo {
            let own = (t * 2 * c * n) as u64 * e;
            let gathered = (t * 2 * c * n_kv) as u64 * e;
            self.mem.alloc(own); // contiguous copy sent to the gather
            self.mem.transient(2 * own); // wire copies of the send
            self.mem.alloc(gathered); // all_gather result
            self.mem.alloc(gathered); // cat of the per-rank parts
            self.mem.free(gathered);
            self.mem.free(own);
            self.mem.free(self.b(qkv)); // drop(qkv)
            gathered
        } else {
            self.b(qkv)
        };
        let v = (t * n_kv * c) as u64 * e;
        self.mem.alloc(v);
        let block = (ATTN_SCORE_BLOCK / n_kv.max(1)).clamp(1, n.max(1));
        let qb = (t * block * c) as u64 * e;
        let scores = (t * block * n_kv) as u64 * e;
        self.mem.alloc(qb);
        self.mem.alloc(scores);
        self.mem.transient(scores); // softmax
        self.mem.free(scores);
        self.mem.free(qb);
        let outs = q; // every block's output, kept until return
        self.mem.alloc(outs);
        self.mem.alloc(q); // cat
        self.mem.alloc(q); // transpose(..).contiguous()
        self.mem.free(q);
        let y = self.conv2d(x, c, 1, 0); // proj + residual
        for bytes in [q, k_storage, v, outs, q, self.b(x)] {
            self.mem.free(bytes);
        }
        y
    }

    fn midblock(&mut self, x: Act, full_h: usize) -> Act {
        let x = self.resblock(x, x.c);
        let x = self.attention(x, full_h);
        self.resblock(x, x.c)
    }

    /// Nearest ×2 upsample fused with the 3×3 conv (`ops::upsample_conv` via `Resample::upsample`),
    /// consuming `x`, plus the optional residual add.
    fn upsample(&mut self, x: Act, out_c: usize, residual: bool) -> Act {
        let out = x.with_c(out_c).up2();
        if !self.run.halo {
            if self.run.path == KernelPath::Generic {
                let up = self.b(x.up2());
                self.mem.alloc(up);
                let y = self.conv2d(x.up2(), out_c, 3, 0);
                self.mem.free(up);
                self.mem.free(self.b(x));
                return y;
            }
            self.mem.alloc(self.b(out));
            self.mem.free(self.b(x));
            return out;
        }
        let ext = Act { h: x.h + 2, ..x };
        self.mem.alloc(self.b(ext));
        self.mem.free(self.b(x)); // drop(xs)
        let ys = ext.with_c(out_c).up2();
        if self.run.path == KernelPath::Generic {
            self.mem.alloc(self.b(ext.up2()));
            self.conv_out(ext.up2(), ys, 3);
            self.mem.free(self.b(ext.up2()));
        } else {
            self.mem.alloc(self.b(ys));
        }
        self.mem.alloc(self.b(out)); // narrow(..).contiguous()
        if residual {
            self.mem.alloc(self.b(out));
            self.mem.free(self.b(out));
        }
        self.mem.free(self.b(ys));
        self.mem.free(self.b(ext));
        out
    }

    /// One decoder up stage (`decoder::UpBlock::forward`), consuming `x`.
    fn up_block(&mut self, x: Act, stage: usize, first_chunk: bool) -> Act {
        let cfg = self.cfg;
        let dims = vae_decoder_dims(cfg);
        let stages = cfg.dim_mult.len();
        let out_c = dims[stage + 1];
        let up_flag = stage != stages - 1;
        let temporal = up_flag && cfg.temperal_downsample.iter().rev().nth(stage).copied().unwrap_or(false);
        // Wan2.2's DupUp3D shortcut, computed from the block input and held to the end.
        let shortcut = if cfg.is_residual && up_flag {
            let ft = if temporal { 2 } else { 1 };
            let frames = x.t * ft - if first_chunk { ft - 1 } else { 0 };
            let s = self.b(Act { t: frames, c: out_c, h: 2 * x.h, w: 2 * x.w });
            if self.run.path == KernelPath::Generic {
                let r = out_c * ft * 4 / x.c;
                self.mem.transient(self.b(x.with_c(x.c * r)) + s);
            }
            self.mem.alloc(s);
            s
        } else {
            0
        };
        let mut h = x;
        for _ in 0..=cfg.num_res_blocks {
            h = self.resblock(h, out_c);
        }
        let y = if up_flag {
            let up_out = if cfg.is_residual { out_c } else { out_c / 2 };
            if temporal {
                let slot = self.slots.next();
                if self.slots.frames[slot] == 0 && self.slots.bytes[slot] == 0 && first_chunk {
                    // "Rep": no time conv on the first chunk.
                    self.slots.frames[slot] = usize::MAX; // marks Rep
                    self.upsample(h, up_out, shortcut > 0)
                } else {
                    let y = self.time_conv(h, slot);
                    let y = self.upsample(y, up_out, shortcut > 0);
                    self.mem.free(self.b(h)); // the shadowed input, dropped at return
                    y
                }
            } else {
                self.upsample(h, up_out, shortcut > 0)
            }
        } else {
            h
        };
        self.mem.free(shortcut);
        y
    }

    /// `upsample3d`'s causal time conv (3×1×1, no halo): `t` frames of `c` channels to `2t`.
    fn time_conv(&mut self, x: Act, slot: usize) -> Act {
        let out = x.with_c(2 * x.c);
        self.conv_out(x, out, 1);
        // After "Rep" the slot holds no frames (the first real history is this chunk alone).
        let old = if self.slots.frames[slot] == usize::MAX { 0 } else { self.slots.frames[slot] };
        let new_frames = (x.t + old).min(2);
        let new_bytes = self.b(x.with_t(new_frames));
        self.mem.alloc(new_bytes);
        self.mem.free(self.slots.bytes[slot]);
        self.slots.bytes[slot] = new_bytes;
        self.slots.frames[slot] = new_frames;
        Act { t: 2 * x.t, c: x.c, ..x }
    }

    /// `Decoder::forward_chunk` on one latent frame `x` (a view of the post-quant latents); returns
    /// the chunk's output, which the caller frees.
    pub fn decoder_chunk(&mut self, x: Act, full_h: usize, first_chunk: bool) -> Act {
        self.slots.start_chunk();
        let dims = vae_decoder_dims(self.cfg);
        let h = self.conv_cached(x, dims[0], 3, 3, 1, self.run.halo);
        let mut h = self.midblock(h, full_h);
        let tail_from = frame_tail_from(self.cfg);
        for stage in 0..tail_from {
            h = self.up_block(h, stage, first_chunk);
        }
        if h.t == 1 {
            return self.decoder_tail(h, tail_from, first_chunk);
        }
        // Frame by frame (`Decoder::forward_chunk`): `h` is held to the end and every frame's output
        // is kept until the concatenation. Each frame is a view of `h`; it is counted as its own
        // allocation (which the tail frees when it drops it), one frame more than is really live.
        let mark = self.slots.cursor();
        let frame = Act { t: 1, ..h };
        let mut out = None;
        for _ in 0..h.t {
            self.slots.rewind(mark);
            self.mem.alloc(self.b(frame));
            out = Some(self.decoder_tail(frame, tail_from, first_chunk));
        }
        let y1 = out.expect("h.t > 1");
        let y = Act { t: h.t, ..y1 };
        self.mem.alloc(self.b(y)); // Tensor::cat
        self.mem.free(self.b(y1) * h.t as u64);
        self.mem.free(self.b(h));
        y
    }

    /// The frame-preserving tail of the decoder on `h` (a view the caller owns): up stages from
    /// `tail_from`, the output norm and conv. The output stays allocated.
    fn decoder_tail(&mut self, h: Act, tail_from: usize, first_chunk: bool) -> Act {
        let mut h = h;
        for stage in tail_from..self.cfg.dim_mult.len() {
            h = self.up_block(h, stage, first_chunk);
        }
        let normed = self.rms_norm(h, true);
        let y = self.conv_cached(normed, self.cfg.out_channels, 3, 3, 1, self.run.halo);
        self.mem.free(self.b(normed));
        self.mem.free(self.b(h)); // shadowed `hs`, dropped at return
        y
    }

    /// One encoder chunk (`Encoder::forward_chunk`) on `x` (owned by the caller).
    pub fn encoder_chunk(&mut self, x: Act, full_h: usize) -> Act {
        self.slots.start_chunk();
        let cfg = self.cfg;
        let dims: Vec<usize> =
            std::iter::once(1).chain(cfg.dim_mult.iter().copied()).map(|u| u * cfg.base_dim).collect();
        let stages = cfg.dim_mult.len();
        let mut h = self.conv_cached(x, dims[0], 3, 3, 1, self.run.halo);
        let mut full_h = full_h;
        for i in 0..stages {
            let last = i == stages - 1;
            let temporal = !last && cfg.temperal_downsample.get(i).copied().unwrap_or(false);
            // Wan2.2's AvgDown3D shortcut: a padded copy and the packed permute, then the mean.
            let shortcut = if cfg.is_residual {
                let ft = if temporal { 2 } else { 1 };
                let fs = if last { 1 } else { 2 };
                let t2 = h.t.div_ceil(ft);
                let s = self.b(Act { t: t2, c: dims[i + 1], h: h.h / fs, w: h.w / fs });
                self.mem.transient(2 * self.b(h.with_t(t2 * ft)));
                self.mem.alloc(s);
                s
            } else {
                0
            };
            for _ in 0..cfg.num_res_blocks {
                h = self.resblock(h, dims[i + 1]);
            }
            if !last {
                // Stride-2 conv (right/bottom pad only: one halo row).
                let y = Act { h: h.h / 2, w: h.w / 2, ..h };
                let ext = match (self.run.halo, self.run.path) {
                    (false, _) => 0,
                    (true, KernelPath::Cpu) => self.b(Act { h: 1, ..h }),
                    (true, KernelPath::Generic) => self.b(Act { h: 1, ..h }) + self.b(Act { h: h.h + 1, ..h }),
                };
                self.mem.alloc(ext);
                self.conv_out(h, y, 3);
                self.mem.free(ext);
                self.mem.free(self.b(h));
                h = y;
                full_h /= 2;
                if temporal {
                    let slot = self.slots.next();
                    let last_frame = self.b(h.with_t(1));
                    if self.slots.bytes[slot] == 0 {
                        self.mem.alloc(last_frame);
                        self.slots.bytes[slot] = last_frame;
                    } else {
                        let y = h.with_t((h.t + 1 - 3) / 2 + 1);
                        self.conv_out(h, y, 1);
                        self.mem.alloc(last_frame);
                        self.mem.free(self.slots.bytes[slot]);
                        self.slots.bytes[slot] = last_frame;
                        self.mem.free(self.b(h));
                        h = y;
                    }
                }
            }
            if shortcut > 0 {
                self.mem.alloc(self.b(h)); // hs + shortcut
                self.mem.free(self.b(h));
                self.mem.free(shortcut);
            }
        }
        let h = self.midblock(h, full_h);
        let normed = self.rms_norm(h, true);
        let y = self.conv_cached(normed, 2 * cfg.z_dim, 3, 3, 1, self.run.halo);
        self.mem.free(self.b(normed));
        self.mem.free(self.b(h));
        y
    }
}

/// Sizes of one decode on one rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeShape {
    /// Latent frames, full latent height and width.
    pub t: usize,
    pub h: usize,
    pub w: usize,
    /// This rank's latent rows (halo mode) or the tile's latent height and width.
    pub rows: usize,
    pub cols: usize,
    /// Whether this rank assembles the video (holds the output buffer).
    pub root: bool,
    /// Ranks sending their rows to the root each chunk (halo mode).
    pub world: usize,
}

/// Output video buffer of the decode (`OutputVideo`, f32, `[B, 3, F, H, W]`).
pub fn output_video_bytes(cfg: &VaeConfig, t: usize, h: usize, w: usize) -> u64 {
    let frames = 1 + 4 * t.saturating_sub(1);
    let s = cfg.scale_factor_spatial;
    (3 * frames * h * s * w * s) as u64 * 4
}

/// Rank 0 after the decode: `video_to_unit_range` computes `(x / 2 + 0.5).clamp(0, 1)` in one
/// statement, so the decoded video, the two affine results and clamp's `maximum` and `minimum`
/// (five videos) are live together before the temporaries drop and the permuted copy is made.
pub fn unit_range_peak(cfg: &VaeConfig, t: usize, h: usize, w: usize) -> u64 {
    5 * output_video_bytes(cfg, t, h, w)
}

/// Peak bytes of an untiled (or halo-slab) decode above `base`, replaying chunks until the caches
/// reach their steady state (the third chunk; later chunks repeat it).
pub fn decode_peak(cfg: &VaeConfig, run: VaeRun, shape: DecodeShape, base: u64) -> u64 {
    let mut r = Replay::new(cfg, run, base);
    let e = run.elt;
    let latent_slab = (cfg.z_dim * shape.t * shape.rows * shape.cols) as u64 * e;
    let full_latent = (cfg.z_dim * shape.t * shape.h * shape.w) as u64 * 4;
    r.mem.alloc(full_latent); // latents as read
    r.mem.alloc(latent_slab); // this rank's slab, frames-major
    r.mem.alloc(latent_slab); // post_quant_conv output
    if shape.root {
        r.mem.alloc(output_video_bytes(cfg, shape.t, shape.h, shape.w));
    }
    let x = Act { t: 1, c: cfg.z_dim, h: shape.rows, w: shape.cols };
    for i in 0..shape.t.min(3) {
        let y = r.decoder_chunk(x, shape.h, i == 0);
        let host = r.b(y);
        let full = (host / shape.rows as u64) * shape.h as u64;
        if run.halo && shape.world > 1 {
            if shape.root {
                // Received slabs, their concatenation, and the flattened copy written out.
                r.mem.alloc(full - host);
                r.mem.alloc(full);
                r.mem.transient(full);
                r.mem.free(full);
                r.mem.free(full - host);
            } else {
                r.mem.transient(2 * host); // wire copies of the send
            }
        } else {
            r.mem.transient(host); // `to_vec1` copy in `write_frames`
        }
        r.mem.free(host);
    }
    r.mem.peak() - base
}

/// Peak bytes above `base` of a tiled decode on one rank: one tile decoded over all frames (each
/// chunk's host output kept, then concatenated and flattened), the finished tiles it holds
/// ([`held_tiles`]) and, on the assembling rank, the output buffer.
pub fn tiled_decode_peak(cfg: &VaeConfig, run: VaeRun, shape: DecodeShape, grid: (usize, usize), base: u64) -> u64 {
    let mut r = Replay::new(cfg, run, base);
    let e = run.elt;
    let full_latent = (cfg.z_dim * shape.t * shape.h * shape.w) as u64 * 4;
    r.mem.alloc(full_latent);
    r.mem.alloc((cfg.z_dim * shape.t * shape.h * shape.w) as u64 * e); // frames-major copy
    let frames = 1 + 4 * shape.t.saturating_sub(1);
    let net = cfg.network_spatial_factor();
    let tile_out = (cfg.out_channels * frames * shape.rows * net * shape.cols * net) as u64 * 4;
    if shape.root {
        r.mem.alloc(output_video_bytes(cfg, shape.t, shape.h, shape.w));
    }
    r.mem.alloc(tile_out * held_tiles(grid, shape.world));
    let latent_tile = (cfg.z_dim * shape.t * shape.rows * shape.cols) as u64 * e;
    r.mem.alloc(2 * latent_tile); // the tile's latent and its post_quant_conv
    let x = Act { t: 1, c: cfg.z_dim, h: shape.rows, w: shape.cols };
    let mut kept = 0;
    for i in 0..shape.t {
        // Chunks past the third repeat its allocations; replaying them only adds their outputs.
        let y = if i < 3 {
            r.decoder_chunk(x, shape.rows, i == 0)
        } else {
            let y = Act { t: 4, ..r_last_out(cfg, shape) };
            r.mem.alloc(r.b(y));
            y
        };
        kept += r.b(y);
    }
    r.mem.alloc(kept); // Tensor::cat of the chunks
    r.mem.alloc(tile_out); // TileBuf (`to_vec1`)
    r.mem.free(kept);
    r.mem.peak() - base
}

/// Finished tiles a rank holds while it decodes the next one: one device walks the grid keeping the
/// previous row and the current row (`TileAssembler`); over `world` ranks (`tile_parallel`) each
/// keeps its own contiguous run of raw tiles (about 1/world of them) until the run is blended.
pub fn held_tiles(grid: (usize, usize), world: usize) -> u64 {
    let (rows, cols) = grid;
    if world <= 1 {
        (2 * cols.max(1) - 1).min(rows * cols) as u64
    } else {
        (rows * cols).div_ceil(world) as u64
    }
}

/// The decoder's output activation of a steady chunk for one tile/slab (4 frames).
fn r_last_out(cfg: &VaeConfig, shape: DecodeShape) -> Act {
    let net = cfg.network_spatial_factor();
    Act { t: 4, c: cfg.out_channels, h: shape.rows * net, w: shape.cols * net }
}

/// Peak bytes above `base` of an encode of `frames` video frames `h × w` (pixels) on one rank
/// (`rows_frac` = this rank's share of the rows in halo mode; 1 otherwise).
pub fn encode_peak(cfg: &VaeConfig, run: VaeRun, frames: usize, h: usize, w: usize, world: usize, base: u64) -> u64 {
    let mut r = Replay::new(cfg, run, base);
    let p = cfg.patch();
    let net = cfg.network_spatial_factor();
    let lat_h = h / (p * net);
    let rows = lat_h.div_ceil(world.max(1)) * net;
    let full_video = (3 * frames * h * w) as u64 * 4;
    r.mem.alloc(full_video); // the conditioning video ([image, zeros…])
    r.mem.alloc(full_video); // patchify / frames-major copy
    let slab = Act { t: frames, c: cfg.in_channels, h: rows, w: w / p };
    if world > 1 {
        r.mem.alloc(r.b(slab));
    }
    let chunks = 1 + frames.saturating_sub(1) / 4;
    let lat_frame = (2 * cfg.z_dim * rows / net * (w / p / net)) as u64 * 4;
    for i in 0..chunks.min(3) {
        let x = Act { t: if i == 0 { 1 } else { 4 }, c: cfg.in_channels, h: rows, w: w / p };
        let y = r.encoder_chunk(x, rows * world);
        r.mem.alloc(r.b(y)); // quant_conv output, kept in `outs`
        r.mem.free(r.b(y));
    }
    // Per-chunk latents accumulate, then are concatenated.
    r.mem.alloc(2 * lat_frame * chunks as u64);
    r.mem.peak() - base
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPU: VaeRun =
        VaeRun { elt: 4, path: KernelPath::Cpu, halo: false, threads: 2, im2col_budget: DEFAULT_IM2COL_BUDGET };

    fn shape(t: usize, h: usize, w: usize) -> DecodeShape {
        DecodeShape { t, h, w, rows: h, cols: w, root: true, world: 1 }
    }

    #[test]
    fn band_scratch_only_for_narrow_cpu_convs() {
        assert_eq!(conv_band_scratch(&CPU, 8, 8, 1, 10, 200), 0, "wide rows use per-row GEMMs");
        // 2 threads, 1 frame: 8 bands of 2 rows (last: 2 rows too, 16 rows); 2 concurrent tasks.
        let s = conv_band_scratch(&CPU, 8, 4, 1, 16, 10);
        assert_eq!(s, 2 * ((8 * 4 * 12 + 4 * 2 * 12) * 4) as u64);
        let generic = VaeRun { path: KernelPath::Generic, ..CPU };
        assert_eq!(conv_band_scratch(&generic, 8, 4, 1, 16, 10), 0);
    }

    use crate::models::wan::vae::ops::DEFAULT_IM2COL_BUDGET;

    #[test]
    fn generic_conv_scratch_counts_im2col() {
        // 3×3 conv, 2→3 channels, a 4×5 band: pads 2·6·5 + 2·6·7, im2col 20·18, GEMM result,
        // NCHW copy and sum 3·60.
        assert_eq!(generic_conv_band_scratch(4, 2, 3, 4, 5, 3), (60 + 84 + 360 + 180) * 4);
        // Wan2.2's 352×640, 512-channel stage: whole frames would need 4.15 GB of im2col; the
        // 256 MiB default keeps each call to 22 rows (248 MiB).
        let rows = generic_band_rows(4, 512, 352, 640, 3, 256 << 20);
        assert_eq!(rows, 22);
        assert!((rows * 640 * 512 * 9 * 4) as u64 <= 256 << 20);
        assert_eq!(generic_band_rows(4, 512, 352, 640, 3, usize::MAX), 352);
    }

    /// A residual block that changes width holds shortcut, norm1, conv1, norm2 and conv2 outputs.
    #[test]
    fn resblock_holds_its_shadowed_bindings() {
        let cfg = VaeConfig::wan21();
        let run = VaeRun { threads: 1, ..CPU };
        let mut r = Replay::new(&cfg, run, 0);
        let x = Act { t: 1, c: 4, h: 256, w: 256 };
        r.mem.alloc(r.b(x));
        let y = r.resblock(x, 8);
        let unit = (256 * 256 * 4) as u64; // one channel of one frame
                                           // At conv2's new cache slot: shortcut 8, h1 4, h2 8, h3 8, y 8, conv1 cache 1 frame of 4,
                                           // conv2's new slot 1 frame of 8 (x was freed after norm1).
        assert_eq!(r.mem.peak(), unit * (8 + 4 + 8 + 8 + 8 + 4 + 8));
        assert_eq!(y.c, 8);
        assert_eq!(r.mem.live(), unit * (8 + 4 + 8), "output and both caches remain");
    }

    #[test]
    fn caches_reach_two_frames_per_conv() {
        let cfg = VaeConfig::wan21();
        let mut r = Replay::new(&cfg, CPU, 0);
        let x = Act { t: 1, c: 16, h: 4, w: 4 };
        let mut sizes = vec![];
        for i in 0..4 {
            let y = r.decoder_chunk(x, 4, i == 0);
            r.mem.free(r.b(y));
            sizes.push(r.slots.total());
        }
        assert!(sizes[0] < sizes[1] && sizes[1] < sizes[2], "{sizes:?}");
        assert_eq!(sizes[2], sizes[3], "steady state from the third chunk");
        assert_eq!(r.mem.live(), r.slots.total(), "only the caches survive a chunk");
    }

    #[test]
    fn halo_slabs_cut_the_decode_peak() {
        let cfg = VaeConfig::wan22();
        let whole = decode_peak(&cfg, CPU, shape(3, 16, 16), 0);
        let halo = VaeRun { halo: true, ..CPU };
        let slab = DecodeShape { rows: 4, root: false, world: 4, ..shape(3, 16, 16) };
        let part = decode_peak(&cfg, halo, slab, 0);
        assert!(part * 3 < whole, "a quarter slab ({part}) should need well under half of {whole}");
    }

    #[test]
    fn tiles_held_by_one_device_or_a_run() {
        assert_eq!(held_tiles((4, 7), 1), 13, "previous row of 7 and 6 of the current");
        assert_eq!(held_tiles((1, 3), 1), 3);
        assert_eq!(held_tiles((4, 7), 8), 4);
    }

    #[test]
    fn output_buffer_is_the_decoded_video() {
        // 3 latent frames → 9 frames; Wan2.2 16× spatial.
        assert_eq!(output_video_bytes(&VaeConfig::wan22(), 3, 2, 3), (3 * 9 * 32 * 48 * 4) as u64);
    }

    #[test]
    fn encode_scales_with_frames() {
        let cfg = VaeConfig::wan21();
        let one = encode_peak(&cfg, CPU, 1, 64, 64, 1, 0);
        let many = encode_peak(&cfg, CPU, 9, 64, 64, 1, 0);
        assert!(many > 2 * one, "{many} vs {one}");
    }
}
