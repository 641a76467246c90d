//! HunyuanVideo 1.5 terms of the memory planner: parameter counts of its transformer, VAE,
//! Qwen2.5-VL text model and SigLIP image encoder from their configs (equal to the real
//! checkpoints' manifests, SigLIP to the golden tower, tested), weights per FSDP shard, a replay of
//! one dual-stream block (`models/hv15/transformer/block.rs`) with the Ulysses exchange of
//! `ulysses.rs`, replays of the streamed VAE decode and of the one-frame image encode
//! (`models/hv15/vae/{layers,decoder,encoder}.rs`) and of SigLIP (`models/siglip/vision.rs`), then
//! [`predict`]: the `Generate` job's phases per rank for an HV1.5 text- or image-to-video folder,
//! under the names `--report` uses.
//!
//! What differs from Wan (`super::dit`, `super::vae`), read from the code:
//! - every weight is held in the run dtype (no f32-kept tables), and the gathered FSDP block's
//!   largest tensor is a modulation matrix (`norm1.linear`, 6·D × D), not an FFN matrix;
//! - the block has two streams (video `L×D`, context `N×D`) whose every `let` lives to the end
//!   of `TransformerBlock::forward`; LayerNorm, modulation and the residual updates run in the run
//!   dtype; a `Linear` makes its matmul and then the bias sum; `heads` and `merge_heads` copy;
//! - one joint attention over `[video, context]` (the two are concatenated for q, k and v); with
//!   Ulysses the stacked video q/k/v go through one all-to-all, the context is sliced by head, the
//!   video output comes back by all-to-all and the context output by all-gather;
//! - the VAE decodes one latent frame per chunk (then 4 video frames per chunk), each causal conv
//!   keeping its last two *padded* input frames, and the mid attention every frame's keys and
//!   values so far (`[frames·h·w, C]` each); the I2V image encode is one chunk of one frame, so
//!   every conv's cache stays until the pass ends;
//! - image-to-video runs one `encode_image` phase on the VAE group: rank 0 loads SigLIP (f32),
//!   encodes and drops it, then the group encodes the image through the VAE encoder it holds from
//!   `load` on; SigLIP's tokens join every branch's context, and every rank holds the image
//!   embeddings through the denoise and the condition `[cond latents, mask]` to the end.

use serde::Deserialize;

use super::dit::{all_to_all, attention_core_bytes};
use super::live::Live;
use super::model::ModelSpec;
use super::predict::{
    Options, PhasePrediction, PredictError, Prediction, RankPrediction, Request, Target, Term, CUDA_CONTEXT_BYTES,
};
use super::vae::{conv_band_scratch, generic_band_rows, generic_conv_band_scratch, KernelPath, VaeRun};
use crate::models::hv15::transformer::Config as DitConfig;
use crate::models::hv15::vae::Config as VaeConfig;
use crate::models::siglip::Config as SiglipConfig;
use crate::models::wan::transformer::attention::ChunkedAttention;
use crate::models::wan::vae::TilePlan;
use crate::parallel::plan::{ParallelPlan, PlanModel, TextEncoderPlacement, VaeMode};
use crate::text::hv15::{layers_taken, PIPELINE_CROP_START};
use crate::text::sharded::LayerShard;

/// `nn.Linear(i, o)` with bias.
fn linear(i: usize, o: usize) -> u64 {
    (i * o + o) as u64
}

/// A conv with kernel volume `k` and bias.
fn conv(i: usize, o: usize, k: usize) -> u64 {
    (i * o * k + o) as u64
}

/// One `HunyuanVideo15TransformerBlock`: two AdaLN-zero modulations (6·D each), video and context
/// q/k/v and output projections, four per-head RMS norms, two GELU feed-forwards.
pub fn dit_block(cfg: &DitConfig) -> u64 {
    let (d, ff, hd) = (cfg.inner_dim(), cfg.ff_dim(), cfg.attention_head_dim);
    2 * linear(d, 6 * d) + 8 * linear(d, d) + 4 * hd as u64 + 2 * (linear(d, ff) + linear(ff, d))
}

/// One token-refiner block: affine `norm1`/`norm2`, self-attention with biases, the linear-SiLU
/// feed-forward and the two-way gate (`norm_out.linear`, D → 2·D).
pub fn refiner_block(cfg: &DitConfig) -> u64 {
    let (d, ff) = (cfg.inner_dim(), cfg.ff_dim());
    4 * d as u64 + 4 * linear(d, d) + linear(d, ff) + linear(ff, d) + linear(d, 2 * d)
}

/// Everything outside the dual-stream blocks: the video patch embedder, the image (SigLIP) and
/// glyph (ByT5) projections, the token refiner with its time/text embedders, the time embedding
/// (and its meanflow twin), `cond_type_embed`, the output norm and projection.
pub fn dit_stem(cfg: &DitConfig) -> u64 {
    let d = cfg.inner_dim();
    let patch = cfg.patch_size_t * cfg.patch_size * cfg.patch_size;
    let (img, text, t2, gh) = (cfg.image_embed_dim, cfg.text_embed_dim, cfg.text_embed_2_dim, cfg.glyph_hidden_dim);
    let x_embedder = conv(cfg.in_channels, d, patch);
    let image = 2 * img as u64 + linear(img, img) + linear(img, d) + 2 * d as u64;
    let timestep = linear(256, d) + linear(d, d);
    let refiner = timestep
        + linear(text, d)
        + linear(d, d)
        + linear(text, d)
        + cfg.num_refiner_layers as u64 * refiner_block(cfg);
    let glyph = 2 * t2 as u64 + linear(t2, gh) + linear(gh, d) + linear(d, d);
    let time = if cfg.use_meanflow { 2 } else { 1 } * timestep;
    let head = linear(d, 2 * d) + linear(d, cfg.out_channels * patch);
    x_embedder + image + refiner + glyph + time + 3 * d as u64 + head
}

/// The whole transformer.
pub fn dit_total(cfg: &DitConfig) -> u64 {
    dit_stem(cfg) + cfg.num_layers as u64 * dit_block(cfg)
}

/// `HunyuanVideo15ResnetBlock(i, o)`: two RMS gammas, two 3×3×3 convs, a 1×1×1 shortcut when the
/// channels change.
pub fn vae_resnet(i: usize, o: usize) -> u64 {
    let shortcut = if i != o { conv(i, o, 1) } else { 0 };
    i as u64 + conv(i, o, 27) + o as u64 + conv(o, o, 27) + shortcut
}

/// The mid block: resnet, single-head attention (RMS gamma, q/k/v/proj 1×1×1), resnet.
pub fn vae_mid(c: usize) -> u64 {
    2 * vae_resnet(c, c) + c as u64 + 4 * conv(c, c, 1)
}

/// The decoder (`decoder.*`).
pub fn vae_decoder(cfg: &VaeConfig) -> u64 {
    let mid = cfg.mid_channels();
    let mut n = conv(cfg.latent_channels, mid, 27) + vae_mid(mid);
    for u in cfg.up_blocks() {
        n += vae_resnet(u.in_c, u.out_c) + cfg.layers_per_block as u64 * vae_resnet(u.out_c, u.out_c);
        if let Some((c, temporal)) = u.up {
            n += conv(u.out_c, c * if temporal { 8 } else { 4 }, 27);
        }
    }
    let first = cfg.block_out_channels[0];
    n + first as u64 + conv(first, cfg.out_channels, 27)
}

/// The encoder (`encoder.*`).
pub fn vae_encoder(cfg: &VaeConfig) -> u64 {
    let mid = cfg.mid_channels();
    let mut n = conv(cfg.in_channels, cfg.block_out_channels[0], 27);
    for d in cfg.down_blocks() {
        n += vae_resnet(d.in_c, d.out_c) + (cfg.layers_per_block as u64 - 1) * vae_resnet(d.out_c, d.out_c);
        if let Some((c, temporal)) = d.down {
            n += conv(d.out_c, c / if temporal { 8 } else { 4 }, 27);
        }
    }
    n + vae_mid(mid) + mid as u64 + conv(mid, 2 * cfg.latent_channels, 27)
}

/// The fields of a Qwen2.5-VL text config the count needs (`text_encoder/config.json`).
#[derive(Debug, Clone, Deserialize)]
pub struct QwenSize {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
}

/// One Qwen2.5-VL decoder layer: q/k/v with biases (GQA k/v), o without, the SwiGLU MLP, two norms.
pub fn qwen_layer(q: &QwenSize) -> u64 {
    let h = q.hidden_size;
    let kv = q.num_key_value_heads * (h / q.num_attention_heads);
    let attn = linear(h, h) + 2 * linear(h, kv) + (h * h) as u64;
    attn + 3 * (h * q.intermediate_size) as u64 + 2 * h as u64
}

/// The text model: embedding, every layer, final norm.
pub fn qwen_total(q: &QwenSize) -> u64 {
    (q.vocab_size * q.hidden_size) as u64 + q.num_hidden_layers as u64 * qwen_layer(q) + q.hidden_size as u64
}

/// One SigLIP encoder layer: two layer norms, the q/k/v/out projections and the MLP, all with
/// biases.
pub fn siglip_layer(cfg: &SiglipConfig) -> u64 {
    let (d, i) = (cfg.hidden_size, cfg.intermediate_size);
    4 * d as u64 + 4 * linear(d, d) + linear(d, i) + linear(i, d)
}

/// The SigLIP tower the job loads (`image_encoder/`): the patch conv and position table, the
/// layers and `post_layernorm` — not the pooling head (`head.*`), which is never read.
pub fn siglip_total(cfg: &SiglipConfig) -> u64 {
    let d = cfg.hidden_size;
    let embeddings = conv(cfg.num_channels, d, cfg.patch_size * cfg.patch_size) + (cfg.num_patches() * d) as u64;
    embeddings + cfg.num_hidden_layers as u64 * siglip_layer(cfg) + 2 * d as u64
}

/// Peak bytes of SigLIP's `image_embeds` of one image (`models/siglip`, f32) above its weights:
/// the resized image and its pixel values (bound through the forward), the embeddings, then a
/// layer's attention — q, k and v projected and split into heads by copy, the scores and their
/// scaled copy, the softmax (the scores stay bound to the attention's return), the context and
/// its merged copy, the output projection — and its MLP (the inner projection with its GELU
/// beside it, the output projection), beside the layer's input and its attention residual.
pub fn siglip_peak(cfg: &SiglipConfig) -> u64 {
    let (k, d, i) = (cfg.num_patches() as u64, cfg.hidden_size as u64, cfg.intermediate_size as u64);
    let side = cfg.image_size as u64;
    let (x, inner) = (k * d * 4, k * i * 4);
    let scores = cfg.num_attention_heads as u64 * k * k * 4;
    let mut m = Live::default();
    m.alloc(3 * side * side); // the resized RGB
    m.alloc(3 * side * side * 4); // pixel values
    m.free(3 * side * side);
    m.alloc(x); // patch conv
    m.alloc(x); // + positions (the layers' first input)
    m.free(x);
    m.alloc(x); // layer_norm1
    for _ in 0..3 {
        lin(&mut m, x);
        m.alloc(x); // heads copy; the projection dies with the statement
        m.free(x);
    }
    m.alloc(scores); // q·kᵀ
    m.alloc(scores); // · scale
    m.free(scores);
    m.alloc(scores); // softmax
    m.alloc(x); // w·v
    m.alloc(x); // merged heads copy
    m.free(x);
    lin(&mut m, x); // out_proj
    m.free(4 * x + 2 * scores); // q, k, v, the context, the scores and probabilities
    m.alloc(x); // + attention
    m.free(2 * x); // the attention output and layer_norm1
    m.alloc(x); // layer_norm2
    lin(&mut m, inner); // fc1
    m.free(x);
    m.alloc(inner); // GELU (fc1's output stays bound)
    lin(&mut m, x); // fc2
    m.alloc(x); // + MLP
    m.peak()
}

/// Transformer weights one rank holds: the stem whole and `1/fsdp` of the blocks, all in the run
/// dtype (`Hv15ShardedTransformer::load` builds every tensor in it).
pub fn weights_bytes(cfg: &DitConfig, elt: u64, fsdp: usize) -> u64 {
    dit_stem(cfg) * elt + (cfg.num_layers as u64 * dit_block(cfg) * elt).div_ceil(fsdp.max(1) as u64)
}

/// The largest tensor of a block (`norm1.linear`, 6·D × D, or an FFN matrix).
fn largest_block_tensor(cfg: &DitConfig) -> u64 {
    let d = cfg.inner_dim();
    (6 * d * d).max(d * cfg.ff_dim()) as u64
}

/// FSDP: the gathered block (dropped after it runs). Nothing without FSDP.
pub fn fsdp_gather_bytes(cfg: &DitConfig, elt: u64, fsdp: usize) -> u64 {
    if fsdp <= 1 {
        return 0;
    }
    dit_block(cfg) * elt
}

/// FSDP: while gathering the largest tensor, the wire copy of this rank's slice and the received
/// slices, together the tensor once more (freed before the block runs).
pub fn fsdp_gather_transient_bytes(cfg: &DitConfig, elt: u64, fsdp: usize) -> u64 {
    if fsdp <= 1 {
        return 0;
    }
    largest_block_tensor(cfg) * elt
}

/// `LayerNorm(no affine)·(1 + scale) + shift` on `r` bytes (`block::modulate`): the centred input
/// and its square, the normalised result, the product and the sum; leaves the sum live.
fn modulate(m: &mut Live, r: u64) -> u64 {
    m.alloc(r); // xc
    m.transient(r); // xc²
    m.alloc(r); // xc / σ
    m.free(r); // xc, at return of layer_norm_plain
    m.alloc(r); // · (1 + scale)
    m.alloc(r); // + shift
    m.free(2 * r); // the statement's temporaries
    r
}

/// `Linear::forward`: the matmul, then the bias sum (the matmul is freed).
fn lin(m: &mut Live, out: u64) -> u64 {
    m.alloc(out);
    m.alloc(out);
    m.free(out);
    out
}

/// `StreamQkv::forward` on `r` bytes of normed rows: q and k are projected, split into heads
/// (a copy) and RMS-normed in one statement each, v projected and split; with `rope` the video
/// q and k are rotated in f32 (`RopeTables::apply`: the f32 copy, the rotation, the cast back)
/// and the unrotated ones dropped at return. Leaves q, k, v live.
fn stream_qkv(m: &mut Live, r: u64, rf: u64, e: u64, rope: bool) -> u64 {
    for _ in 0..2 {
        lin(m, r);
        m.alloc(r); // heads(..).contiguous()
        m.alloc(r); // RMS norm
        m.free(2 * r); // the projection and the head copy
    }
    lin(m, r);
    m.alloc(r); // v heads
    m.free(r);
    if rope {
        for _ in 0..2 {
            let up = if e == 4 { 0 } else { rf };
            m.alloc(up); // to_dtype(F32)
            m.alloc(rf); // rope_i
            m.alloc(if e == 4 { 0 } else { r }); // back to the run dtype
            m.free(up + if e == 4 { 0 } else { rf });
        }
        m.free(2 * r); // the unrotated q and k
    }
    3 * r
}

/// Peak bytes one dual-stream block allocates above its inputs, on a rank with `ls` video tokens
/// of `len` (the Ulysses shard) and `n` context tokens.
pub fn block_peak(
    cfg: &DitConfig,
    e: u64,
    ulysses: usize,
    attention: &ChunkedAttention,
    ls: usize,
    len: usize,
    n: usize,
) -> u64 {
    let d = cfg.inner_dim();
    let (heads, hd, ff) = (cfg.num_attention_heads, cfg.attention_head_dim, cfg.ff_dim());
    let u = ulysses.max(1);
    let x = (ls * d) as u64 * e;
    let xf = (ls * d) as u64 * 4;
    let c = (n * d) as u64 * e;
    let cf = (n * d) as u64 * 4;
    let mut m = Live::default();
    m.alloc(2 * 6 * d as u64 * e); // the two modulation rows
    let nx = modulate(&mut m, x);
    let nc = modulate(&mut m, c);
    let qkv = stream_qkv(&mut m, x, xf, e, true);
    let cqkv = stream_qkv(&mut m, c, cf, e, false);
    // The joint attention; `out` is what the block keeps of it (views of the core's output, or
    // the exchanged video output and the gathered context output).
    let out = if u == 1 {
        m.alloc(3 * (x + c)); // cat([video, context]) for q, k, v
        m.transient(attention_core_bytes(attention, heads, ls + n, ls + n, hd, e));
        m.alloc(x + c); // the core's output
        m.free(3 * (x + c));
        x + c
    } else {
        let full = (len * d / u) as u64 * e; // the video tokens of H/U heads
        let ch = c / u as u64;
        m.alloc(3 * x); // stack(q, k, v)
        all_to_all(&mut m, 3 * x, u); // leaves the head-sharded stack (3·x) live
        m.alloc(3 * (full + ch)); // cat([video, context]) for q, k, v
        m.transient(attention_core_bytes(attention, heads / u, len + n, len + n, hd, e));
        m.alloc(full + ch); // the core's output
        m.free(3 * (full + ch));
        let pad = (ls * u - len) as u64 * (d / u) as u64 * e;
        m.alloc(pad + full); // pad_with_zeros / contiguous copy of the video part
        all_to_all(&mut m, pad + full, u); // leaves the token-sharded video output (x) live
        m.alloc(ch); // contiguous context part
        m.alloc(c); // all_gather over heads
        m.free(pad + full + ch + (full + ch) + 3 * x + 3 * x);
        x + c
    };
    // Output projections: merge_heads copies, then the Linear; the copy dies with the statement.
    m.alloc(x);
    let ox = lin(&mut m, x);
    m.free(x);
    m.alloc(c);
    let oc = lin(&mut m, c);
    m.free(c);
    // Gated residuals: the product, then the sum.
    let residual = |m: &mut Live, r: u64| {
        m.alloc(r);
        m.alloc(r);
        m.free(r);
        r
    };
    let x1 = residual(&mut m, x);
    let c1 = residual(&mut m, c);
    // Feed-forwards: modulated input, the inner projection and its GELU, the output Linear; the
    // statement's temporaries die with it.
    let ffn = |m: &mut Live, r: u64, rows: usize| {
        let normed = modulate(m, r);
        let inner = (rows * ff) as u64 * e;
        lin(m, inner);
        m.alloc(inner); // GELU
        let y = lin(m, r);
        m.free(2 * inner + normed);
        y
    };
    let fx = ffn(&mut m, x, ls);
    let fc = ffn(&mut m, c, n);
    let yx = residual(&mut m, x);
    let yc = residual(&mut m, c);
    let peak = m.peak();
    m.free(2 * 6 * d as u64 * e + nx + nc + qkv + cqkv + out + ox + oc + x1 + c1 + fx + fc + yx + yc);
    peak
}

/// A `[T, C, H, W]` activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Act {
    t: usize,
    c: usize,
    h: usize,
    w: usize,
}

impl Act {
    fn with_c(self, c: usize) -> Self {
        Self { c, ..self }
    }
}

/// The replay of a streamed HV1.5 VAE pass — decode or encode — on one rank (its whole frame or
/// its halo slab): the parts (`models/hv15/vae/layers.rs`) are the same both ways.
struct VaeReplay<'a> {
    cfg: &'a VaeConfig,
    run: VaeRun,
    mem: Live,
    /// Bytes held by each causal conv's two cached padded frames, in traversal order.
    caches: Vec<u64>,
    at: usize,
    /// The mid attention's cached keys and values (all frames so far).
    kv: u64,
    /// Rows of the whole latent frame (the halo slabs gather every rank's keys).
    full_h: usize,
}

impl VaeReplay<'_> {
    fn b(&self, a: Act) -> u64 {
        (a.t * a.c * a.h * a.w) as u64 * self.run.elt
    }

    /// `CausalConv3d::forward`: the replicate padding — the rows' concatenation, then the
    /// columns' — or on a halo slab (`forward_slab`) the columns' copy and the two rows per frame
    /// the neighbours lend (read where they lie); the output, and the new two-frame cache (the
    /// padded frames, or the slab's rows and the lent ones: as many bytes) made before the old one
    /// goes. The padded input is dropped at return.
    fn conv(&mut self, x: Act, out_c: usize) -> Act {
        let padded = Act { h: x.h + 2, w: x.w + 2, ..x };
        let pb = if self.run.halo {
            let cols = Act { w: x.w + 2, ..x };
            let row = self.b(Act { h: 1, ..cols });
            self.mem.transient(2 * row); // the two rows sent
            let held = self.b(cols) + 2 * row; // the slab's columns' copy and the rows received
            self.mem.alloc(held);
            held
        } else {
            let rows = self.b(Act { h: x.h + 2, ..x });
            let pb = self.b(padded);
            self.mem.alloc(rows);
            self.mem.alloc(pb);
            self.mem.free(rows);
            pb
        };
        let out = x.with_c(out_c);
        if self.run.path == KernelPath::Generic {
            // `ops::conv_frames` on the generic path: the output allocated first and written band by
            // band, each band's conv2d im2col within the budget (as the Wan replay).
            self.mem.alloc(self.b(out));
            let rows = generic_band_rows(self.run.elt, x.c, out.h, out.w, 3, self.run.im2col_budget);
            self.mem.transient(generic_conv_band_scratch(self.run.elt, x.c, out_c, rows, out.w, 3));
        } else {
            self.mem.alloc(self.b(out));
            let band = conv_band_scratch(&self.run, x.c, out_c, out.t, out.h, out.w);
            self.mem.transient(band);
        }
        if self.at == self.caches.len() {
            self.caches.push(0);
        }
        let new = self.b(Act { t: 2, ..padded });
        self.mem.alloc(new);
        self.mem.free(self.caches[self.at]);
        self.caches[self.at] = new;
        self.at += 1;
        self.mem.free(pb);
        out
    }

    /// `RmsNorm::forward` (+ SiLU): one output on the CPU kernels; candle's ops (the generic
    /// path) also make the squares and the quotient on the way.
    fn norm(&mut self, x: Act) -> Act {
        if self.run.path == KernelPath::Generic {
            self.mem.transient(2 * self.b(x));
        }
        self.mem.alloc(self.b(x));
        x
    }

    /// `ResnetBlock::forward` with its input held by the caller: norm1, conv1, norm2 (all bound
    /// to the end), the shortcut when the channels change, conv2 with the residual fused.
    fn resnet(&mut self, x: Act, out_c: usize) -> Act {
        let n1 = self.norm(x);
        let c1 = self.conv(n1, out_c);
        let n2 = self.norm(c1);
        let sc = if x.c != out_c { self.b(x.with_c(out_c)) } else { 0 };
        self.mem.alloc(sc);
        let y = self.conv(n2, out_c);
        self.mem.free(self.b(n1) + self.b(c1) + self.b(n2) + sc);
        y
    }

    /// `AttnBlock::forward` with its input held by the caller: the norm and q/k/v (bound to the
    /// end), halo gathers of k and v, the token-major copies, the key/value cache grown by this
    /// chunk (the old one dropped after the concatenation), per-frame score blocks, the frames'
    /// outputs, their stack and transposed copy, the projection and the residual sum.
    fn attention(&mut self, x: Act) -> Act {
        const SCORE_BLOCK: usize = 1 << 24;
        let e = self.run.elt;
        let one = self.b(x);
        self.mem.alloc(one); // normed
        for _ in 0..3 {
            self.mem.alloc(2 * one); // Conv1x1: matmul, bias sum
            self.mem.free(one);
        }
        let kv_chunk = self.b(Act { h: self.full_h, ..x });
        let gathered = if self.run.halo { 2 * kv_chunk } else { 0 };
        self.mem.alloc(gathered);
        self.mem.alloc(one + 2 * kv_chunk); // token-major q, k, v
        let old = self.kv;
        let (cat, store) = if old > 0 {
            self.mem.alloc(old + 2 * kv_chunk);
            self.mem.free(old);
            (2 * kv_chunk, old + 2 * kv_chunk)
        } else {
            (0, 2 * kv_chunk) // the token copies become the cache
        };
        let keys = (store / (2 * x.c as u64 * e)) as usize;
        let n = x.h * x.w;
        let block = (SCORE_BLOCK / keys.max(1)).clamp(1, n.max(1));
        let scores = (block * keys) as u64 * e;
        self.mem.transient(2 * scores + (block * x.c) as u64 * e); // scores, probs, probs·v
        let frame = one / x.t.max(1) as u64;
        self.mem.alloc(one); // every frame's output
        self.mem.transient(frame); // a frame's blocks before their cat
        self.mem.alloc(one); // stack
        self.mem.alloc(one); // transpose(..).reshape copy
        self.mem.alloc(2 * one); // proj_out: matmul, bias sum
        self.mem.free(one);
        self.mem.alloc(one); // + xs
        self.mem.free(one + 3 * one + gathered + one + cat + one + one + one + one);
        self.kv = store;
        x
    }

    /// `Upsample::forward` with its input held by the caller: the conv, the depth-to-space of the
    /// conv output and of the repeated input, their sum.
    fn upsample(&mut self, x: Act, out_c: usize, temporal: bool, first: bool) -> Act {
        let factor = if temporal { 8 } else { 4 };
        let h = self.conv(x, out_c * factor);
        let ft = if temporal && !first { 2 } else { 1 };
        // Global frame 0 keeps half of its channels after the spatial rearrange.
        let y = Act { t: x.t * ft, c: out_c, h: 2 * x.h, w: 2 * x.w };
        let hb = self.b(h);
        let shaped = if temporal && first { hb } else { self.b(y) };
        if temporal {
            self.mem.alloc(shaped); // depth_to_space(h)
            self.mem.alloc(self.b(x)); // depth_to_space(x)
            self.mem.alloc(self.b(y)); // repeated
            self.mem.free(self.b(x));
        } else {
            self.mem.alloc(hb); // repeat_channels(x)
            self.mem.alloc(hb); // its depth_to_space
            self.mem.free(hb);
            self.mem.alloc(hb); // depth_to_space(h)
        }
        self.mem.alloc(self.b(y)); // the sum
        self.mem.free(hb + shaped + self.b(y));
        y
    }

    /// `group_mean` of `x` over groups of `g` channels: `sum` then the scaling (the sum freed);
    /// `g = 1` is the input itself. Leaves the mean live.
    fn group_mean(&mut self, x: Act, g: usize) -> Act {
        let y = Act { c: x.c / g, ..x };
        if g > 1 {
            self.mem.alloc(self.b(y)); // sum over the group
            self.mem.alloc(self.b(y)); // · 1/g
            self.mem.free(self.b(y));
        }
        y
    }

    /// `Downsample::forward` on the first chunk (global frame 0 alone) with its input held by the
    /// caller: the conv to `out_c / factor` channels; the input's space-to-depth copy and its group
    /// mean (the copy dies with the statement); the space-to-depth copy of the conv output (the
    /// temporal one then doubles its channels by concatenation) — the spatial one makes the
    /// shortcut first, the temporal one last —; then the sum.
    fn downsample(&mut self, x: Act, out_c: usize, temporal: bool) -> Act {
        let factor = if temporal { 8 } else { 4 };
        let h = self.conv(x, out_c / factor);
        let y = Act { c: out_c, h: x.h / 2, w: x.w / 2, ..x };
        // Frame 0 of a temporal downsample averages half as many channels.
        let g = factor * x.c / out_c / if temporal { 2 } else { 1 };
        let shortcut = |r: &mut Self| -> u64 {
            let s2d = Act { c: 4 * x.c, ..y };
            r.mem.alloc(r.b(s2d));
            let mean = r.group_mean(s2d, g);
            if g > 1 {
                r.mem.free(r.b(s2d));
            }
            r.b(mean)
        };
        let conv_part = |r: &mut Self| -> u64 {
            let packed = r.b(h);
            r.mem.alloc(packed);
            if temporal {
                r.mem.alloc(2 * packed); // cat([h0, h0], channels)
                r.mem.free(packed);
                2 * packed
            } else {
                packed
            }
        };
        // The two replays mutate the live bytes: their order is the code's.
        let held = if temporal {
            let first = conv_part(self);
            first + shortcut(self)
        } else {
            let first = shortcut(self);
            first + conv_part(self)
        };
        self.mem.alloc(self.b(y)); // the sum
        self.mem.free(held + self.b(h));
        y
    }

    /// `Encoder::forward` on the first chunk (one frame `x`, its rows of this rank) with its input
    /// held by the caller; returns the moments (live). Every conv's two cached frames and the mid
    /// attention's keys/values stay until the pass ends (one chunk: nothing is replaced).
    fn encoder_chunk(&mut self, x: Act) -> Act {
        let cfg = self.cfg;
        let mut h = self.conv(x, cfg.block_out_channels[0]);
        for d in cfg.down_blocks() {
            for _ in 0..cfg.layers_per_block {
                let y = self.resnet(h, d.out_c);
                self.mem.free(self.b(h));
                h = y;
            }
            if let Some((c, temporal)) = d.down {
                let y = self.downsample(h, c, temporal);
                self.mem.free(self.b(h));
                h = y;
            }
        }
        // `MidBlock::forward` binds its three results to its return; `forward_mid` then drops
        // its last input.
        let mid = cfg.mid_channels();
        let m1 = self.resnet(h, mid);
        let m2 = self.attention(m1);
        let m3 = self.resnet(m2, mid);
        self.mem.free(self.b(m1) + self.b(m2) + self.b(h));
        // The group-mean shortcut, norm_out (the mid output stays bound) and conv_out with the
        // shortcut fused.
        let out_c = 2 * cfg.latent_channels;
        let shortcut = self.group_mean(m3, mid / out_c);
        let normed = self.norm(m3);
        let y = self.conv(normed, out_c);
        let shortcut_bytes = if mid / out_c > 1 { self.b(shortcut) } else { 0 };
        self.mem.free(shortcut_bytes + self.b(normed) + self.b(m3));
        y
    }

    /// `Decoder::forward` on one chunk of `t` latent frames; returns the video frames (live).
    /// `forward_mid` holds conv_in's shortcut and output and the mid block's three results to its
    /// return; `forward_up` borrows its input, so a stage's input lives until the stage returns.
    fn chunk(&mut self, t: usize, rows: usize, w: usize, first: bool) -> Act {
        self.at = 0;
        let cfg = self.cfg;
        let z = Act { t, c: cfg.latent_channels, h: rows, w };
        let mid = cfg.mid_channels();
        let rep = self.b(z.with_c(mid));
        self.mem.alloc(rep); // repeat_channels(z): conv_in's shortcut
        let h0 = self.conv(z, mid);
        let h1 = self.resnet(h0, mid);
        let h2 = self.attention(h1);
        let mut h = self.resnet(h2, mid);
        self.mem.free(rep + self.b(h0) + self.b(h1) + self.b(h2));
        for u in cfg.up_blocks() {
            let input = h;
            for j in 0..=cfg.layers_per_block {
                let y = self.resnet(h, u.out_c);
                if j > 0 {
                    self.mem.free(self.b(h));
                }
                h = y;
            }
            if let Some((c, temporal)) = u.up {
                let y = self.upsample(h, c, temporal, first);
                self.mem.free(self.b(h));
                h = y;
            }
            self.mem.free(self.b(input));
        }
        let normed = self.norm(h);
        let y = self.conv(normed, cfg.out_channels);
        self.mem.free(self.b(normed) + self.b(h));
        y
    }
}

/// Peak bytes above `base` of a streamed decode of `t` latent frames on a rank holding `rows` of
/// the `h` latent rows (halo slab; all of them otherwise), width `w`: the latents as read and
/// their frames-major copy, the output video on the assembling rank, and the chunks replayed
/// until the caches are steady (the third; later chunks repeat it, only the key/value cache
/// grows, by one frame per chunk, which the replay adds for the last chunk).
pub fn decode_peak(
    cfg: &VaeConfig,
    run: VaeRun,
    (t, h, w): (usize, usize, usize),
    rows: usize,
    root: bool,
    world: usize,
) -> u64 {
    let mut r = VaeReplay { cfg, run, mem: Live::default(), caches: Vec::new(), at: 0, kv: 0, full_h: h };
    let z = cfg.latent_channels;
    r.mem.alloc((z * t * h * w) as u64 * 4); // latents as received
    r.mem.alloc((z * t * rows * w) as u64 * run.elt); // this rank's frames-major latents
    let s = cfg.spatial_compression_ratio;
    let video = (cfg.out_channels * cfg.decoded_frames(t) * h * s * w * s) as u64 * 4;
    if root {
        r.mem.alloc(video);
    }
    let steady = t.min(3);
    for i in 0..steady {
        if i == steady - 1 && t > steady {
            // The key/value cache as large as at the last chunk.
            let extra = 2 * (cfg.mid_channels() * (t - steady) * h * w) as u64 * run.elt;
            r.mem.alloc(extra);
            r.kv += extra;
        }
        let y = r.chunk(1, rows, w, i == 0);
        let out = r.b(y);
        let full = out / rows as u64 * h as u64;
        if run.halo && world > 1 {
            if root {
                r.mem.alloc(full - out); // received slabs
                r.mem.alloc(full); // their concatenation
                r.mem.transient(full); // the frames written out
                r.mem.free(2 * full - out);
            } else {
                r.mem.transient(2 * out); // wire copies of the send
            }
        } else {
            r.mem.transient(out); // the copy written into the video
        }
        r.mem.free(out);
    }
    r.mem.peak()
}

/// Peak bytes of the VAE encode of one image (`AutoencoderKLHunyuanVideo15::encode_frames`, one
/// frame, one chunk) on a rank holding `rows` of the `h` latent rows (its halo slab; all of them
/// otherwise) of an `h × w` latent grid: the input rows as the encoder takes them, then the
/// encoder pass. The moments are a few latent-sized tensors (not counted).
pub fn encode_peak(cfg: &VaeConfig, run: VaeRun, (h, w): (usize, usize), rows: usize) -> u64 {
    let mut r = VaeReplay { cfg, run, mem: Live::default(), caches: Vec::new(), at: 0, kv: 0, full_h: h };
    let s = cfg.spatial_compression_ratio;
    let x = Act { t: 1, c: cfg.in_channels, h: rows * s, w: w * s };
    r.mem.alloc(r.b(x));
    r.encoder_chunk(x);
    r.mem.peak()
}

/// Prompt tokens of one branch the transformer attends to (trimmed to the valid ones; 1000 is
/// the pipeline's limit, the planner's default is the options' `prompt_tokens`).
fn context_tokens(opts: &Options) -> usize {
    opts.prompt_tokens
}

fn term(name: &str, bytes: u64) -> Term {
    Term { name: name.into(), bytes }
}

/// The Qwen2.5-VL text model's size from `text_encoder/config.json` (`None` without a readable one:
/// prompts then come as embeddings files).
fn qwen_size(spec: &ModelSpec) -> Option<QwenSize> {
    let dir = spec.components.text_encoder.as_ref()?;
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).ok()?).ok()
}

/// Peak bytes one Qwen2.5-VL decoder layer allocates above its input, over `n` tokens in the run
/// dtype (`e` bytes; `models/qwen25vl_text/model.rs`): the input norm (bound to the end of the
/// attention's statement); q, k and v projected (matmul, then the bias sum) and split into heads
/// by a copy; RoPE on q and k in f32 (on bf16: the f32 copy, the rotation, the cast back), the
/// unrotated ones staying bound (shadowed) to the return; k and v repeated to every query head
/// (GQA; copies, the originals bound too); the scores and their scaled copy, the f32 causal mask
/// (and its run-dtype copy), the masked scores and the softmax; the context, its merged-heads copy
/// and `o_proj`. Then the residual sum, and the MLP in one statement: the norm, gate, SiLU, up and
/// their product all live until `down_proj` returns.
pub fn qwen_layer_peak(q: &QwenSize, n: usize, e: u64) -> u64 {
    let (n, h, i) = (n as u64, q.hidden_size as u64, q.intermediate_size as u64);
    let (heads, kv_heads) = (q.num_attention_heads as u64, q.num_key_value_heads as u64);
    let x = n * h * e;
    let kv = n * kv_heads * (h / heads) * e;
    let scores = heads * n * n * e;
    let mut m = Live::default();
    m.alloc(x); // input_layernorm
    for r in [x, kv, kv] {
        lin(&mut m, r);
        m.alloc(r); // heads(..).contiguous()
        m.free(r); // the projection, at the closure's return
    }
    for r in [x, kv] {
        let rf = r / e * 4;
        if e == 4 {
            m.alloc(rf); // rope (the input is already f32)
        } else {
            m.alloc(rf); // to_dtype(F32)
            m.alloc(rf); // rope
            m.alloc(r); // back to the run dtype
            m.free(2 * rf);
        }
    }
    if heads != kv_heads {
        m.alloc(2 * x); // k and v repeated
    }
    m.alloc(scores); // q·kᵀ
    m.alloc(scores); // · scale
    m.free(scores);
    m.alloc(n * n * 4 + if e == 4 { 0 } else { n * n * e }); // the causal mask
    m.alloc(scores); // + mask
    m.alloc(scores); // softmax
    m.free(scores);
    m.alloc(x); // probs·v
    m.alloc(x); // merged heads copy
    m.alloc(x); // o_proj
    let attention = m.peak();
    // After the attention: its input (the norm), its output and the residual sum, then the MLP.
    let mut m = Live::with_base(x);
    m.alloc(x); // post_attention_layernorm
    for _ in 0..4 {
        m.alloc(n * i * e); // gate, SiLU, up, product
    }
    m.alloc(x); // down_proj
    m.free(4 * n * i * e + x);
    m.alloc(x); // + MLP
    attention.max(m.peak())
}

/// The `text_encode` phase's terms on `rank` of `ranks` when the Qwen2.5-VL text model runs split
/// by layer over them (`text::hv15_sharded`) for `prompts` prompts: the rank's share of the layers
/// the pipeline's hidden state needs (the last two and the final norm are never loaded) in the run
/// dtype, the token embedding on rank 0; over the template prefix and `prompt_tokens` tokens, the
/// hidden state it starts from (rank 0: the embedding; later ranks: the f32 copy they receive and
/// its run-dtype cast), the previous layer's output beside the running layer, the RoPE tables and
/// one layer's working set ([`qwen_layer_peak`]); and the `[1, prompt_tokens, hidden]` f32 results
/// every rank ends with.
pub fn text_encode_terms(q: &QwenSize, opts: &Options, rank: usize, ranks: usize, prompts: usize) -> Vec<Term> {
    let e: u64 = if opts.target == Target::Cuda { 2 } else { 4 };
    let shard = LayerShard::new(layers_taken(q.num_hidden_layers), rank, ranks);
    let h = q.hidden_size as u64;
    let mut weights = shard.layers.len() as u64 * qwen_layer(q) * e;
    if shard.is_first() {
        weights += q.vocab_size as u64 * h * e;
    }
    let n = opts.prompt_tokens + PIPELINE_CROP_START;
    let x = n as u64 * h * e;
    let act = if rank < shard.holders {
        let input = if shard.is_first() { x } else { n as u64 * h * 4 + if e == 4 { 0 } else { x } };
        let previous = if shard.layers.len() > 1 { x } else { 0 };
        let rope = 2 * n as u64 * (h / q.num_attention_heads as u64 / 2) * 4;
        input + previous + rope + if shard.layers.is_empty() { 0 } else { qwen_layer_peak(q, n, e) }
    } else {
        0
    };
    let result = prompts as u64 * opts.prompt_tokens as u64 * h * 4;
    let slabs =
        if opts.target == Target::Cpu && !shard.layers.is_empty() { opts.threads as u64 * opts.l2_bytes } else { 0 };
    vec![
        term("text encoder weights", weights),
        term("text encoder activations", act),
        term("prompt embeddings", result),
        term("matmul slabs", slabs),
    ]
}

/// The image-to-video facts of a request: the SigLIP tower, its tokens' share of the context, and
/// the bucket-sized RGB image every encoding rank reads (`None` for text-to-video).
struct ImageInput<'a> {
    siglip: &'a SiglipConfig,
    /// `3·H·W` bytes (the run size is the image's bucket).
    pixels: u64,
}

/// Checks the request against the folder's variant (an I2V folder needs `--image`, a T2V folder
/// takes none) and returns the image input of an I2V request.
fn image_input<'a>(spec: &'a ModelSpec, req: &Request) -> Result<Option<ImageInput<'a>>, PredictError> {
    let variant = spec.variant.describe();
    if !req.image {
        if spec.requires_image() {
            return Err(PredictError::Request(format!("this model ({variant}) is image-to-video: add --image")));
        }
        return Ok(None);
    }
    let Some(siglip) = spec.hv15.as_ref().and_then(|hv| hv.image_encoder.as_ref()) else {
        return Err(PredictError::Request(format!("this model ({variant}) is text-to-video only: drop --image")));
    };
    Ok(Some(ImageInput { siglip, pixels: (3 * req.height * req.width) as u64 }))
}

/// Every rank's peak per phase of an HV1.5 generation (`text_encode` when the plan splits the Qwen
/// text model over the ranks, `load`, `encode_image` on the VAE group for image-to-video,
/// `denoise`, `decode`; with the text encoder on the host, its f32 bytes are reported beside the
/// ranks instead).
pub fn predict(
    spec: &ModelSpec,
    req: &Request,
    plan: &ParallelPlan,
    opts: &Options,
) -> Result<Prediction, PredictError> {
    let Some(hv) = &spec.hv15 else { return Err(PredictError::Request("not a HunyuanVideo 1.5 model".into())) };
    let (dcfg, vcfg) = (&hv.transformer, &hv.vae);
    let gen = crate::pipeline::GenerateParams {
        height: req.height,
        width: req.width,
        frames: req.frames,
        steps: 1,
        guidance: req.guidance,
        guidance_2: None,
        shift: None,
        seed: 0,
        scheduler: None,
        sigmas: None,
    };
    gen.validate(spec.size_multiple())?;
    plan.validate(PlanModel { num_heads: dcfg.num_attention_heads, cfg: req.guidance > 1.0 })?;
    let image = image_input(spec, req)?;
    let (lt, lh, lw) = spec.latent_grid(req.height, req.width, req.frames);
    let cuda = opts.target == Target::Cuda;
    let e: u64 = if cuda { 2 } else { 4 };
    let context = if cuda { CUDA_CONTEXT_BYTES } else { 0 };
    let branches: u64 = if req.guidance > 1.0 { 2 } else { 1 };
    let d = dcfg.inner_dim();
    let z = dcfg.out_channels;
    let len = lt * lh * lw;
    let u = plan.ulysses.max(1);
    let ls = len.div_ceil(u);
    // I2V: the SigLIP tokens join every branch's context (`[image, glyph, text]`), whole on every
    // Ulysses rank like the text.
    let image_tokens = image.as_ref().map_or(0, |i| i.siglip.num_patches());
    let n = context_tokens(opts) + image_tokens;

    let dit_w = weights_bytes(dcfg, e, plan.fsdp);
    // The VAE group holds the decoder and, for I2V, the encoder, in f32, from `load` to the end.
    let vae_w = (vae_decoder(vcfg) + if image.is_some() { vae_encoder(vcfg) } else { 0 }) * 4;
    // Prompt embeddings: sent inline in the job spec and copied into a tensor (host, f32) on the
    // CPU; the predictor's run-dtype copies on a GPU.
    let embeds = branches * (context_tokens(opts) * dcfg.text_embed_dim) as u64 * if cuda { e } else { 4 * 2 };
    // I2V: the image embeddings `(1, K, image_dim)` the predictor holds (both branches share one
    // tensor) and the condition `[cond latents, mask]` `(1, z + 1, T, h, w)` f32, held to the end.
    let image_embeds = (image_tokens * dcfg.image_embed_dim) as u64 * e;
    let lhw = (lt * lh * lw) as u64;
    let condition = if image.is_some() { (z + 1) as u64 * lhw * 4 } else { 0 };
    let latents = (z * len) as u64 * 4;
    let slabs = if cuda { 0 } else { opts.threads as u64 * opts.l2_bytes };

    // One step: Euler's latents, the model input — T2V: `[latents, zero cond, zero mask]` (the
    // zeros and the concatenation, in the predictor), I2V: the loop's `[latents, condition]` —,
    // each branch's prediction and the CFG combination.
    let preds = if branches == 2 { 3 } else { 1 };
    let input = if image.is_some() { (2 * z + 1) as u64 } else { (z + 1) as u64 + (2 * z + 1) as u64 } * lhw * e;
    let state = latents + (z as u64 * lhw) * e + input + preds * latents;
    // One forward: the embedded video tokens (all of them, bound through the loop; the shard's
    // copy with Ulysses), the context stream, RoPE tables (f32 cos/sin over the grid, the shard's
    // copy), then the blocks.
    let x_full = (len * d) as u64 * e;
    let x_shard = if u > 1 { (ls * d) as u64 * e } else { 0 };
    let ctx = (n * d) as u64 * e;
    let half = (dcfg.attention_head_dim / 2) as u64 * 4 * 2;
    let rope = len as u64 * half + if u > 1 { ls as u64 * half } else { 0 };
    let block = block_peak(dcfg, e, u, &ChunkedAttention::default(), ls, len, n);
    let head = 3 * (ls * d) as u64 * e + (len * z) as u64 * e * 3;
    // FSDP prefetch (the workers' default, `hv15/transformer/sharded.rs` gathers block i + 1 while
    // block i runs): a second gathered block, reserved when its gather is issued, and the
    // gather's transient beside the block's activations instead of after them. Only with a next
    // block to gather.
    let prefetch = opts.fsdp_prefetch && plan.fsdp > 1 && dcfg.num_layers > 1;
    let (gathered, transient) =
        (fsdp_gather_bytes(dcfg, e, plan.fsdp), fsdp_gather_transient_bytes(dcfg, e, plan.fsdp));
    let denoise_work = [
        term("image embeddings", image_embeds),
        term("latents, predictions and scheduler state", state),
        term("text context", ctx),
        term("rope tables", rope),
        term("video tokens", x_full + x_shard),
        term("block activations (FFN, attention tiles)", block.max(head).max(if prefetch { 0 } else { transient })),
        term("fsdp gather transient (prefetch, beside the block)", if prefetch { transient } else { 0 }),
        term("fsdp gathered block", gathered),
        term("fsdp prefetched block (the next, gathered during this one)", if prefetch { gathered } else { 0 }),
    ];

    let v = plan.vae_parallel.max(1);
    let halo = plan.vae_mode == VaeMode::Halo && v > 1;
    let run = VaeRun {
        elt: 4,
        path: if cuda { KernelPath::Generic } else { KernelPath::Cpu },
        halo,
        threads: opts.threads,
        im2col_budget: crate::models::wan::vae::ops::im2col_budget(),
    };
    let s = vcfg.spatial_compression_ratio;
    let video = (3 * vcfg.decoded_frames(lt) * lh * s * lw * s) as u64 * 4;
    let decode_work = |rank: usize| -> u64 {
        let root = rank == 0;
        // Rank 0 then maps the video to [0, 1] in one statement (the video, two affine results,
        // clamp's maximum and minimum) beside the scaled latents.
        let finish = if root { latents + 5 * video } else { 0 };
        let replay = match plan.vae_mode {
            VaeMode::Halo => {
                let rows = crate::models::wan::vae::split::split_rows(lh, v).get(rank).map_or(lh, |r| r.len());
                decode_peak(vcfg, run, (lt, lh, lw), rows, root, v)
            }
            VaeMode::Tiles => {
                // One latent tile (diffusers' 16 × 16 default) streamed over all frames, plus the
                // finished tiles this rank holds and, on rank 0, the output video.
                let t = plan.vae_tiling.unwrap_or_default().as_array();
                let (th, tw) = ((t[0] / s).clamp(1, lh), (t[1] / s).clamp(1, lw));
                let grid = (lh.div_ceil(th.max(1)), lw.div_ceil(tw.max(1)));
                let tile = decode_peak(vcfg, VaeRun { halo: false, ..run }, (lt, th, tw), th, false, 1);
                // The tile's chunks kept as host frames, their concatenation, the tile buffer.
                let tile_video = (vcfg.out_channels * vcfg.decoded_frames(lt) * th * s * tw * s) as u64 * 4;
                let held = super::vae::held_tiles(grid, v);
                tile + tile_video * (held + 2) + if root { video } else { 0 }
            }
        };
        replay.max(finish)
    };
    let encode_work = |rank: usize, image: &ImageInput<'_>| -> u64 {
        // Rank 0 first: SigLIP's f32 weights, the image's RGB and the tower's activations (the
        // tower is dropped before the VAE encode).
        let siglip =
            if rank == 0 { siglip_total(image.siglip) * 4 + image.pixels + siglip_peak(image.siglip) } else { 0 };
        let vae = vae_encode_work(vcfg, plan, run, rank, (req.height, req.width), image.pixels);
        siglip.max(if vae > 0 { image_embeds + vae } else { 0 })
    };

    // The Qwen text model: split over the ranks in a text job of its own before the generation, or
    // on the host.
    let qwen = qwen_size(spec);
    let sharded_text = plan.text_encoder == TextEncoderPlacement::Sharded;

    let mut ranks = Vec::with_capacity(plan.ranks);
    for rank in 0..plan.ranks {
        let decodes = rank < v;
        let vw = if decodes { vae_w } else { 0 };
        let loaded = || {
            vec![
                term("cuda context", context),
                term("prompt embeddings", embeds),
                term("transformer weights", dit_w),
                term("vae weights", vw),
            ]
        };
        let mut phases = Vec::new();
        if let (Some(q), true) = (&qwen, sharded_text) {
            let mut t = text_encode_terms(q, opts, rank, plan.ranks, branches as usize);
            t.push(term("cuda context", context));
            phases.push(PhasePrediction::new("text_encode", t));
        }
        let mut t = loaded();
        // FSDP slices are read through a byte buffer (on the CPU) before the stem is loaded
        // (`Hv15ShardedTransformer::load`), so that buffer never meets the whole part: no term.
        t.push(term("initial latents", latents));
        phases.push(PhasePrediction::new("load", t));
        if let (Some(image), true) = (&image, decodes) {
            let mut t = loaded();
            t.push(term("initial latents", latents));
            t.push(term("matmul slabs", slabs));
            t.push(term("image encode working set (SigLIP, then the VAE)", encode_work(rank, image)));
            phases.push(PhasePrediction::new("encode_image", t));
        }
        let mut t = loaded();
        t.push(term("image condition", condition));
        t.push(term("matmul slabs", slabs));
        t.extend(denoise_work.iter().cloned());
        phases.push(PhasePrediction::new("denoise", t));
        let t = vec![
            term("cuda context", context),
            term("prompt embeddings", embeds),
            term("transformer weights", if opts.keep_weights { dit_w } else { 0 }),
            term("vae weights", vw),
            term("latents", latents),
            term("image condition", condition),
            term("matmul slabs", slabs),
            term("vae decode working set", if decodes { decode_work(rank) } else { 0 }),
        ];
        phases.push(PhasePrediction::new("decode", t));
        let weights_bytes = phases
            .iter()
            .map(|p| p.terms.iter().filter(|t| t.name.ends_with("weights")).map(|t| t.bytes).sum::<u64>())
            .max()
            .unwrap_or(0);
        let peak_bytes = phases.iter().map(|p| p.peak_bytes).max().unwrap_or(0);
        ranks.push(RankPrediction {
            rank,
            device: if cuda { format!("cuda:{rank}") } else { "cpu".into() },
            peak_bytes,
            weights_bytes,
            phases,
        });
    }
    // The host's f32 Qwen (`--text-encoder-on cpu`); none when the ranks run it.
    let host_text = match (&qwen, sharded_text) {
        (Some(q), false) => qwen_total(q) * 4,
        _ => 0,
    };
    Ok(Prediction { ranks, host_text_encoder_bytes: host_text })
}

/// The VAE part of the image encode on `rank` of the VAE group (0: it takes no part), in the
/// plan's mode (`runtime/jobs/generate/inputs.rs` and `models/hv15/vae/parallel.rs`): the RGB
/// image and its `[-1, 1]` f32 video, bound through the encode, then the encoder over this rank's
/// halo slab, the whole frame (one rank), or one tile (tiles mode; the frames-major copy of the
/// whole image held beside it). A frame smaller than one tile is encoded untiled by rank 0 alone.
fn vae_encode_work(
    cfg: &VaeConfig,
    plan: &ParallelPlan,
    run: VaeRun,
    rank: usize,
    (height, width): (usize, usize),
    pixels: u64,
) -> u64 {
    let s = cfg.spatial_compression_ratio;
    let (lh, lw) = (height / s, width / s);
    let v = plan.vae_parallel.max(1);
    let untiled = VaeRun { halo: false, ..run };
    let replay = match plan.vae_mode {
        VaeMode::Halo => {
            let rows = crate::models::wan::vae::split::split_rows(lh, v).get(rank).map_or(lh, |r| r.len());
            encode_peak(cfg, run, (lh, lw), rows)
        }
        VaeMode::Tiles => {
            let tiling = crate::models::wan::vae::Tiling::from(plan.vae_tiling.unwrap_or_default());
            if !TilePlan::encode_needs_tiling(&tiling, height, width) {
                if rank > 0 {
                    return 0;
                }
                encode_peak(cfg, untiled, (lh, lw), lh)
            } else {
                let (th, tw) =
                    (tiling.tile_sample_min_height.min(height) / s, tiling.tile_sample_min_width.min(width) / s);
                pixels * 4 + encode_peak(cfg, untiled, (th, tw), th)
            }
        }
    };
    pixels + pixels * 4 + replay
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::read_manifest;
    use std::collections::BTreeMap;

    fn manifest(name: &str) -> (serde_json::Value, BTreeMap<String, Vec<usize>>) {
        let path = format!("{}/../tests/fixtures/golden/manifests/{name}.json", env!("CARGO_MANIFEST_DIR"));
        read_manifest(std::path::Path::new(&path)).unwrap()
    }

    fn count(tensors: &BTreeMap<String, Vec<usize>>, keep: impl Fn(&str) -> bool) -> u64 {
        tensors.iter().filter(|(k, _)| keep(k)).map(|(_, s)| s.iter().product::<usize>() as u64).sum()
    }

    #[test]
    fn transformer_counts_match_the_real_checkpoint() {
        let (config, tensors) = manifest("hv15-480p-t2v-transformer");
        let cfg: DitConfig = serde_json::from_value(config).unwrap();
        assert_eq!(tensors.len(), 1801);
        assert_eq!(dit_block(&cfg), count(&tensors, |k| k.starts_with("transformer_blocks.0.")));
        assert_eq!(dit_stem(&cfg), count(&tensors, |k| !k.starts_with("transformer_blocks.")));
        assert_eq!(dit_total(&cfg), 8_326_608_160);
        assert_eq!(dit_total(&cfg), count(&tensors, |_| true));
        assert_eq!(
            refiner_block(&cfg),
            count(&tensors, |k| k.starts_with("context_embedder.token_refiner.refiner_blocks.0."))
        );
        // The meanflow twin adds one timestep embedder (4.72 M parameters).
        let mf = DitConfig { use_meanflow: true, ..cfg.clone() };
        assert_eq!(dit_total(&mf) - dit_total(&cfg), 256 * 2048 + 2048 + 2048 * 2048 + 2048);
    }

    #[test]
    fn vae_counts_match_the_real_checkpoint() {
        let (config, tensors) = manifest("hv15-vae");
        let cfg: VaeConfig = serde_json::from_value(config).unwrap();
        assert_eq!(tensors.len(), 218);
        assert_eq!(vae_decoder(&cfg), count(&tensors, |k| k.starts_with("decoder.")));
        assert_eq!(vae_encoder(&cfg), count(&tensors, |k| k.starts_with("encoder.")));
        assert_eq!(vae_decoder(&cfg) + vae_encoder(&cfg), 1_260_634_115);
    }

    #[test]
    fn qwen_count_matches_the_real_checkpoint() {
        let (config, tensors) = manifest("hv15-qwen2.5-vl-7b-text");
        let q: QwenSize = serde_json::from_value(config).unwrap();
        assert_eq!(qwen_layer(&q), count(&tensors, |k| k.starts_with("layers.0.")));
        assert_eq!(qwen_total(&q), count(&tensors, |_| true));
        assert_eq!(qwen_total(&q), 7_070_619_136);
    }

    #[test]
    fn weights_shard_the_blocks_and_gather_one() {
        let cfg = DitConfig::default();
        assert_eq!(weights_bytes(&cfg, 2, 1), 8_326_608_160 * 2);
        let stem = dit_stem(&cfg) * 2;
        assert_eq!(weights_bytes(&cfg, 2, 8) - stem, (54 * dit_block(&cfg) * 2).div_ceil(8));
        assert_eq!(fsdp_gather_bytes(&cfg, 2, 1), 0);
        assert_eq!(fsdp_gather_bytes(&cfg, 2, 4), 151_056_896 * 2);
        // The modulation matrix (12288 × 2048) is larger than an FFN matrix (8192 × 2048).
        assert_eq!(fsdp_gather_transient_bytes(&cfg, 2, 4), 12288 * 2048 * 2);
    }

    #[test]
    fn ulysses_divides_the_block_working_set() {
        let cfg = DitConfig::default();
        let a = ChunkedAttention::default();
        // 720p × 121 frames: 31 × 45 × 80 latent tokens.
        let len = 31 * 45 * 80;
        let one = block_peak(&cfg, 2, 1, &a, len, len, 512);
        let four = block_peak(&cfg, 2, 4, &a, len.div_ceil(4), len, 512);
        assert!(four < one / 3, "ulysses 4: {four} vs {one}");
        // At least the two L×ffn FFN tensors and the eight L×D tensors bound by then.
        let floor = (2 * len * cfg.ff_dim() + 8 * len * cfg.inner_dim()) as u64 * 2;
        assert!(one >= floor, "{one} < {floor}");
    }

    /// With FSDP over a model of several blocks the denoise holds the next block too (gathered
    /// while the current one runs), unless prefetch is off; one block has no next.
    #[test]
    fn fsdp_prefetch_holds_a_second_block() {
        let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/configs"));
        let spec = ModelSpec::from_path(&root.join("hv15-480p-t2v")).unwrap();
        let req = Request { height: 480, width: 848, frames: 121, guidance: 6.0, image: false };
        let plan = ParallelPlan { ranks: 4, ulysses: 2, cfg_parallel: 2, fsdp: 4, ..Default::default() };
        let denoise = |prefetch: bool, spec: &ModelSpec| {
            let mut opts = Options::new(Target::Cuda);
            opts.fsdp_prefetch = prefetch;
            let p = predict(spec, &req, &plan, &opts).unwrap();
            let phase = p.ranks[0].phases.iter().find(|p| p.name == "denoise").unwrap().clone();
            let t = |name: &str| phase.terms.iter().find(|t| t.name == name).map_or(0, |t| t.bytes);
            (phase.peak_bytes, t("fsdp prefetched block (the next, gathered during this one)"))
        };
        let block = fsdp_gather_bytes(&spec.hv15.as_ref().unwrap().transformer, 2, 4);
        let (with, held) = denoise(true, &spec);
        let (without, none) = denoise(false, &spec);
        assert_eq!((held, none), (block, 0));
        // The gather's transient moves beside the activations; the block is added on top.
        assert!(with >= without + block, "{with} vs {without} + {block}");
        let mut one = spec.clone();
        one.hv15.as_mut().unwrap().transformer.num_layers = 1;
        assert_eq!(denoise(true, &one).1, 0, "one block: nothing to prefetch");
    }

    /// `--text-encoder-on sharded`: the published Qwen2.5-VL (28 layers; `hidden_states[-3]` takes
    /// 26) split over four ranks 7/7/6/6 in a `text_encode` phase before `load`, rank 0 also holding
    /// the token embedding and nobody the last two layers or the final norm; the host's 28 GB f32
    /// copy is gone and the other phases are unchanged. Ranks beyond the layers hold nothing.
    #[test]
    fn sharded_qwen_runs_on_the_ranks_instead_of_the_host() {
        let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/configs"));
        let spec = ModelSpec::from_path(&root.join("hv15-480p-t2v")).unwrap();
        let q = qwen_size(&spec).expect("the config folder has text_encoder/config.json");
        let req = Request { height: 480, width: 848, frames: 121, guidance: 6.0, image: false };
        let host_plan = ParallelPlan { ranks: 4, ulysses: 2, cfg_parallel: 2, fsdp: 4, ..Default::default() };
        let plan = ParallelPlan { text_encoder: TextEncoderPlacement::Sharded, ..host_plan };
        let opts = Options::new(Target::Cuda);
        let host = predict(&spec, &req, &host_plan, &opts).unwrap();
        let sharded = predict(&spec, &req, &plan, &opts).unwrap();
        assert_eq!(host.host_text_encoder_bytes, qwen_total(&q) * 4);
        assert_eq!(host.host_text_encoder_bytes, 28_282_476_544);
        assert_eq!(sharded.host_text_encoder_bytes, 0);
        let (layer, embedding) = (qwen_layer(&q) * 2, (q.vocab_size * q.hidden_size) as u64 * 2);
        let mut held = 0;
        for (rank, layers) in [7, 7, 6, 6].into_iter().enumerate() {
            let names: Vec<&str> = sharded.ranks[rank].phases.iter().map(|p| p.name.as_str()).collect();
            assert_eq!(names, ["text_encode", "load", "denoise", "decode"]);
            assert!(!host.ranks[rank].phases.iter().any(|p| p.name == "text_encode"));
            assert_eq!(sharded.ranks[rank].phases[1..], host.ranks[rank].phases[..], "rank {rank}");
            let text = phase(&sharded, rank, "text_encode");
            let weights = term_bytes(&text, "text encoder weights");
            assert_eq!(weights, layers * layer + if rank == 0 { embedding } else { 0 }, "rank {rank}");
            held += weights;
            // One layer's working set over 620 tokens: at least the MLP's four `n × intermediate`
            // tensors, far below the rank's weights; the phase is not the rank's peak.
            let act = term_bytes(&text, "text encoder activations");
            let mlp = 4 * 620 * q.intermediate_size as u64 * 2;
            assert!(act >= mlp && act < weights / 10, "rank {rank}: {act} B of activations");
            assert!(text.peak_bytes < sharded.ranks[rank].peak_bytes, "rank {rank}: text_encode is the peak");
        }
        assert_eq!(held, qwen_total(&q) * 2 - 2 * layer - q.hidden_size as u64 * 2);
        // The golden-sized model (4 layers, 2 taken) over 3 ranks: the third holds nothing but the
        // results.
        let tiny = QwenSize { num_hidden_layers: 4, ..q.clone() };
        let third = text_encode_terms(&tiny, &opts, 2, 3, 2);
        assert_eq!((third[0].bytes, third[1].bytes), (0, 0));
        assert_eq!(third[2].bytes, 2 * 512 * q.hidden_size as u64 * 4);
    }

    /// The tower's count equals the golden SigLIP's tensors (its pooling head aside), layer for
    /// layer; the published so400m tower is 0.41 B parameters without its head.
    #[test]
    fn siglip_counts_match_the_golden_tower() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/hv15/siglip/image_encoder");
        let cfg = SiglipConfig::from_json(&std::fs::read_to_string(format!("{dir}/config.json")).unwrap()).unwrap();
        let file = std::path::PathBuf::from(format!("{dir}/model.safetensors"));
        let table = crate::weights::TensorTable::open(&[file], &|k| Some(k.to_string())).unwrap();
        let tensors: BTreeMap<String, Vec<usize>> = table.iter().map(|(k, t)| (k.clone(), t.shape.clone())).collect();
        assert_eq!(siglip_layer(&cfg), count(&tensors, |k| k.starts_with("encoder.layers.0.")));
        assert_eq!(siglip_total(&cfg), count(&tensors, |k| !k.starts_with("head.")));
        assert_eq!(siglip_total(&SiglipConfig::so400m_patch14_384()), 412_987_248);
    }

    fn i2v_spec() -> ModelSpec {
        let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/configs"));
        let mut spec = ModelSpec::from_path(&root.join("hv15-480p-t2v")).unwrap();
        spec.variant = crate::model_spec::Variant::Hv15I2v;
        spec.hv15.as_mut().unwrap().image_encoder = Some(SiglipConfig::so400m_patch14_384());
        spec
    }

    fn phase(p: &Prediction, rank: usize, name: &str) -> PhasePrediction {
        p.ranks[rank].phases.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("rank {rank}: no {name}")).clone()
    }

    fn term_bytes(p: &PhasePrediction, name: &str) -> u64 {
        p.terms.iter().find(|t| t.name == name).map_or(0, |t| t.bytes)
    }

    /// Image-to-video: the VAE group encodes (rank 0 also runs SigLIP) and holds the encoder; the
    /// SigLIP tokens widen every rank's context, whose denoise also holds the image embeddings and
    /// the condition.
    #[test]
    fn i2v_encodes_on_the_vae_group_and_widens_the_context() {
        let i2v = i2v_spec();
        let mut t2v = i2v.clone();
        t2v.variant = crate::model_spec::Variant::Hv15T2v;
        t2v.hv15.as_mut().unwrap().image_encoder = None;
        let req = Request { height: 480, width: 848, frames: 121, guidance: 6.0, image: true };
        let plan = ParallelPlan { ranks: 4, ulysses: 2, cfg_parallel: 2, vae_parallel: 2, ..Default::default() };
        let opts = Options::new(Target::Cuda);
        let p = predict(&i2v, &req, &plan, &opts).unwrap();
        let t = predict(&t2v, &Request { image: false, ..req }, &plan, &opts).unwrap();
        for r in &p.ranks {
            let names: Vec<&str> = r.phases.iter().map(|p| p.name.as_str()).collect();
            let want: &[&str] = if r.rank < 2 {
                &["load", "encode_image", "denoise", "decode"]
            } else {
                &["load", "denoise", "decode"]
            };
            assert_eq!(names, want, "rank {}", r.rank);
        }
        let cfg = &i2v.hv15.as_ref().unwrap().transformer;
        let vcfg = &i2v.hv15.as_ref().unwrap().vae;
        let vae = |p: &Prediction, r| term_bytes(&phase(p, r, "load"), "vae weights");
        assert_eq!(vae(&p, 1) - vae(&t, 1), vae_encoder(vcfg) * 4);
        assert_eq!(vae(&p, 2), 0);
        let (i, o) = (phase(&p, 2, "denoise"), phase(&t, 2, "denoise"));
        assert_eq!(term_bytes(&i, "text context") - term_bytes(&o, "text context"), (729 * cfg.inner_dim() * 2) as u64);
        assert_eq!(term_bytes(&i, "image embeddings"), (729 * cfg.image_embed_dim * 2) as u64);
        let (lt, lh, lw) = i2v.latent_grid(480, 848, 121);
        assert_eq!(term_bytes(&i, "image condition"), ((cfg.out_channels + 1) * lt * lh * lw * 4) as u64);
        // 729 image tokens beside 512 text tokens and ~12 k video tokens per Ulysses shard: the
        // block's joint attention grows by a few percent, the denoise peak by less.
        let grew = i.peak_bytes - o.peak_bytes;
        assert!(grew > 0 && grew < o.peak_bytes / 10, "{} vs {}", i.peak_bytes, o.peak_bytes);
        // Rank 0's encode: SigLIP (0.41 B f32 parameters) or the VAE pass, whichever is larger.
        let work = |p: &Prediction, r| {
            term_bytes(&phase(p, r, "encode_image"), "image encode working set (SigLIP, then the VAE)")
        };
        assert!(work(&p, 0) >= siglip_total(&SiglipConfig::so400m_patch14_384()) * 4);
        assert!(work(&p, 1) > 0);
    }

    #[test]
    fn the_request_must_match_the_variant() {
        let opts = Options::new(Target::Cpu);
        let req = Request { height: 480, width: 848, frames: 5, guidance: 6.0, image: false };
        let err = predict(&i2v_spec(), &req, &ParallelPlan::single(), &opts).unwrap_err();
        assert!(err.to_string().contains("add --image"), "{err}");
        let mut t2v = i2v_spec();
        t2v.variant = crate::model_spec::Variant::Hv15T2v;
        t2v.hv15.as_mut().unwrap().image_encoder = None;
        let err = predict(&t2v, &Request { image: true, ..req }, &ParallelPlan::single(), &opts).unwrap_err();
        assert!(err.to_string().contains("drop --image"), "{err}");
    }

    /// One 480p frame through the real encoder: halo slabs over two ranks hold about half of
    /// what one rank does (the two cached frames of every conv dominate).
    #[test]
    fn image_encode_halves_with_halo_2() {
        let cfg = VaeConfig::default();
        let run = VaeRun { elt: 4, path: KernelPath::Cpu, halo: false, threads: 1, im2col_budget: usize::MAX };
        let whole = encode_peak(&cfg, run, (30, 53), 30);
        let slab = encode_peak(&cfg, VaeRun { halo: true, ..run }, (30, 53), 15);
        assert!(slab < whole * 6 / 10 && slab > whole * 4 / 10, "halo 2: {slab} vs {whole}");
        // At least every conv's two cached padded frames of the first down block (5 convs at
        // 128 channels, full resolution).
        let caches = 5 * 2 * (128 * 482 * 850 * 4) as u64;
        assert!(whole > caches, "{whole} < {caches}");
    }

    #[test]
    fn streamed_decode_is_bounded_and_halo_splits_it() {
        let cfg = VaeConfig::default();
        let run = VaeRun { elt: 4, path: KernelPath::Cpu, halo: false, threads: 1, im2col_budget: usize::MAX };
        // 480p (30 × 53 latents): 31 frames cost about as much as 9 beyond the output video.
        let video = |t: usize| (3 * cfg.decoded_frames(t) * 480 * 848) as u64 * 4;
        let p9 = decode_peak(&cfg, run, (9, 30, 53), 30, true, 1) - video(9);
        let p31 = decode_peak(&cfg, run, (31, 30, 53), 30, true, 1) - video(31);
        assert!(p31 < p9 + p9 / 5, "{p31} vs {p9}");
        let halo = VaeRun { halo: true, ..run };
        let p4 = decode_peak(&cfg, halo, (31, 30, 53), 8, false, 4);
        assert!(p4 < p31 / 2, "halo 4: {p4} vs {p31}");
    }
}
