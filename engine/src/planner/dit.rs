//! Denoise memory of one rank: transformer weights per FSDP shard, the FSDP gather buffer, the
//! per-forward state (tokens, RoPE tables, text context, latents and scheduler history) and a replay
//! of one `WanTransformerBlock::forward` on this rank's tokens.
//!
//! The block replay follows `transformer/{block,attention,norm,modulation,rope}.rs`:
//! - every `let` in `WanTransformerBlock::forward` stays alive until the block returns (shadowing
//!   does not drop), so by the FFN the block holds its input plus eight `L×D` tensors;
//! - a `Linear` makes its matmul output and then the bias sum;
//! - `ChunkedAttention` keeps three f32 score tiles `heads × q_block × kv_block` per query block
//!   (scores, `s − m`, `exp`), the f32 scaled queries, every block's output and their `cat`;
//! - with Ulysses the self-attention runs on `heads/u` heads over all `L` tokens (all-to-all in and
//!   out: the head-sharded q, k, v and output, plus wire copies of each exchange).

use super::live::Live;
use super::params;
use crate::models::wan::transformer::attention::ChunkedAttention;
use crate::models::wan::transformer::config::Config as DitConfig;

/// Text tokens of the cross-attention (the pipelines always pad to 512).
pub const TEXT_TOKENS: usize = 512;

/// How the transformer runs on one rank.
#[derive(Debug, Clone, Copy)]
pub struct DitRun {
    /// Bytes per element of the run dtype (f32 4, bf16 2).
    pub elt: u64,
    /// Ulysses degree (sequence shard in, head shard around self-attention).
    pub ulysses: usize,
    /// Ranks sharing one copy of the weights.
    pub fsdp: usize,
    pub attention: ChunkedAttention,
}

/// Patch tokens of a latent grid `(frames, rows, cols)`.
pub fn tokens(cfg: &DitConfig, latent: (usize, usize, usize)) -> usize {
    let [pt, ph, pw] = cfg.patch_size;
    (latent.0 / pt) * (latent.1 / ph) * (latent.2 / pw)
}

/// Tokens of the largest Ulysses shard (the first `L mod u` ranks get one more).
pub fn shard_tokens(tokens: usize, ulysses: usize) -> usize {
    tokens.div_ceil(ulysses.max(1))
}

/// Transformer weights held by one rank: the stem whole, `1/fsdp` of the blocks. Parameters the
/// engine keeps in f32 whatever the run dtype (time embedder, modulation tables, affine `norm2`,
/// diffusers' `_keep_in_fp32_modules`) count 4 bytes each.
pub fn weights_bytes(cfg: &DitConfig, elt: u64, fsdp: usize) -> u64 {
    let d = cfg.inner_dim() as u64;
    let stem_f32 = (cfg.freq_dim as u64 * d + d + d * d + d) + 2 * d;
    let block_f32 = 6 * d + if cfg.cross_attn_norm { 2 * d } else { 0 };
    let stem = (params::dit_stem(cfg) - stem_f32) * elt + stem_f32 * 4;
    let block = (params::dit_block(cfg) - block_f32) * elt + block_f32 * 4;
    stem + (cfg.num_layers as u64 * block).div_ceil(fsdp.max(1) as u64)
}

/// FSDP: the full weights of the block that runs, all-gathered from the group's slices and dropped
/// after it. Nothing without FSDP.
pub fn fsdp_gather_bytes(cfg: &DitConfig, elt: u64, fsdp: usize) -> u64 {
    if fsdp <= 1 {
        return 0;
    }
    params::dit_block(cfg) * elt
}

/// FSDP: what gathering the block's largest tensor (an FFN matrix, gathered next to last) holds
/// besides its result: the wire copy of this rank's slice and the peers' received slices, together
/// the tensor once more. It is freed before the block runs, so it never meets the block's
/// activations. Nothing without FSDP.
pub fn fsdp_gather_transient_bytes(cfg: &DitConfig, elt: u64, fsdp: usize) -> u64 {
    if fsdp <= 1 {
        return 0;
    }
    let d = cfg.inner_dim();
    (d * cfg.ffn_dim.max(d)) as u64 * elt
}

/// FSDP load on the CPU: each slice is read from the checkpoint into a byte buffer and copied into
/// its tensor, so the largest slice (of an FFN matrix) is briefly held twice. Checkpoints are taken
/// to store f32 (the Hub's Wan2.2 transformers and `make-model` do). Nothing without FSDP.
pub fn fsdp_read_buffer_bytes(cfg: &DitConfig, fsdp: usize) -> u64 {
    if fsdp <= 1 {
        return 0;
    }
    let d = cfg.inner_dim();
    (d * cfg.ffn_dim.max(d)).div_ceil(fsdp) as u64 * 4
}

/// RoPE cos/sin tables (f32, `L × head_dim/2` each) built for the whole grid, plus this shard's
/// contiguous copy when the sequence is split.
pub fn rope_bytes(cfg: &DitConfig, tokens: usize, ulysses: usize) -> u64 {
    let per_token = (cfg.attention_head_dim / 2) as u64 * 4 * 2;
    let full = tokens as u64 * per_token;
    if ulysses > 1 {
        full + shard_tokens(tokens, ulysses) as u64 * per_token
    } else {
        full
    }
}

/// Text context of one forward: the embedded prompt (`512 × D` in the run dtype), held while the
/// blocks run (the prompt embeddings themselves are held by the job for its whole length).
pub fn context_bytes(cfg: &DitConfig, elt: u64) -> u64 {
    TEXT_TOKENS as u64 * cfg.inner_dim() as u64 * elt
}

/// Latent-sized state across a step: the f32 latents, the model input in the run dtype (with the
/// I2V condition channels), the conditional and unconditional predictions, their CFG combination
/// and UniPC's history (two model outputs and the last sample).
pub fn latent_state_bytes(cfg: &DitConfig, latent_elems: u64, elt: u64, cfg_on: bool) -> u64 {
    let out = latent_elems;
    let input = latent_elems * cfg.in_channels as u64 / cfg.out_channels().max(1) as u64;
    let preds = if cfg_on { 3 } else { 1 };
    out * 4 + input * (4 + elt) + preds * out * elt + 3 * out * 4
}

/// `ChunkedAttention::attend` for `heads` heads, `lq` query and `lk` key tokens: peak bytes it
/// allocates above its q/k/v inputs (scaled f32 queries, upcast k/v for non-f32 runs, score tiles,
/// per-block outputs and their concatenation).
pub fn attention_core_bytes(a: &ChunkedAttention, heads: usize, lq: usize, lk: usize, hd: usize, elt: u64) -> u64 {
    let mut m = Live::default();
    let qkv_elems = (heads * lq * hd) as u64;
    if elt != 4 {
        m.transient(qkv_elems * 4); // q.to_dtype(F32) before scaling
    }
    m.alloc(qkv_elems * 4); // scaled q (f32)
    if elt != 4 && a.upcast {
        m.alloc(2 * (heads * lk * hd) as u64 * 4); // k, v upcast
    }
    let qb = a.q_block.min(lq);
    let out_blocks = qkv_elems * elt; // all blocks' outputs in the input dtype
    let acc = (heads * qb * hd) as u64 * 4;
    // The last query block runs with every earlier block's output already kept.
    m.alloc(out_blocks - (heads * qb * hd) as u64 * elt);
    if lk <= a.kv_block {
        let s = (heads * qb * lk) as u64 * 4;
        m.alloc(2 * s); // scores, softmax
        m.transient(acc);
        m.free(2 * s);
    } else {
        let s = (heads * qb * a.kv_block) as u64 * 4;
        m.alloc(acc); // running accumulator
        m.alloc(3 * s); // scores, s − m, exp
        m.transient(3 * acc); // p·v, acc·α, sum
        m.free(3 * s);
        m.transient(acc); // acc / l
        m.free(acc);
    }
    m.alloc((heads * qb * hd) as u64 * elt);
    m.alloc(out_blocks); // Tensor::cat
    m.peak()
}

/// One all-to-all of an `n`-byte tensor over `u` ranks (the socket mesh's): for each peer the wire
/// bytes of the chunk it gets (`tensor_to_bytes` flattens and collects first: two transient
/// copies), kept until the exchange returns; each received payload and the tensor made from it;
/// then their concatenation, which is left live. Nothing for one rank.
pub fn all_to_all(m: &mut Live, n: u64, u: usize) {
    if u <= 1 {
        return;
    }
    let chunk = n / u as u64;
    let moving = chunk * (u as u64 - 1);
    m.transient(2 * chunk); // flattened copy and values of one outgoing chunk
    m.alloc(moving); // wire bytes of every outgoing chunk
    m.transient(chunk); // one received payload
    m.alloc(moving); // the received chunks as tensors
    m.alloc(n); // Tensor::cat
    m.free(2 * moving);
}

/// `Fp32LayerNorm::forward` + `scale_shift` + cast: what is allocated and freed, returns the
/// normed input (run dtype) left live.
fn modulated_norm(m: &mut Live, x: u64, xf: u64, elt: u64, affine: bool) -> u64 {
    let up = if elt != 4 { xf } else { 0 };
    m.alloc(up); // to_dtype(F32)
    m.alloc(xf); // centered
    m.transient(xf); // centered²
    m.alloc(xf); // normalised
    if affine {
        m.alloc(xf);
        m.alloc(xf);
        m.free(2 * xf);
    }
    m.free(xf + up); // centered and the upcast, at return
    if !affine {
        m.alloc(xf); // · (1 + scale)
        m.alloc(xf); // + shift
        m.free(xf);
    }
    let out = if elt != 4 { x } else { 0 };
    m.alloc(out); // to_dtype(run)
    if elt != 4 {
        // The f32 temporaries die at the end of the statement; the cast survives.
        m.free(if affine { xf } else { 2 * xf });
        x
    } else {
        // In f32 the last f32 result *is* the normed input; the LayerNorm output is freed.
        if !affine {
            m.free(xf);
        }
        x
    }
}

/// `Linear::forward` on `rows` rows: matmul output, then the bias sum (the matmul is freed).
fn linear(m: &mut Live, out: u64) -> u64 {
    m.alloc(out);
    m.alloc(out);
    m.free(out);
    out
}

/// The residual update `(x.f32 + gate(y.f32)).to(run)`: f32 temporaries, leaves the new x live.
fn gated_residual(m: &mut Live, x: u64, xf: u64, elt: u64) -> u64 {
    let up = if elt != 4 { 2 * xf } else { 0 };
    m.alloc(up);
    m.alloc(xf); // gate
    m.alloc(xf); // sum
    m.free(xf + up);
    if elt != 4 {
        m.alloc(x);
        m.free(xf);
    }
    x
}

/// Peak bytes one block allocates above its input on a rank with `ls` local tokens, `lq` full
/// tokens for self-attention (`ls · ulysses`).
pub fn block_peak(cfg: &DitConfig, run: &DitRun, ls: usize, runs: usize) -> u64 {
    let e = run.elt;
    let d = cfg.inner_dim();
    let (heads, hd) = (cfg.num_attention_heads, cfg.attention_head_dim);
    let u = run.ulysses.max(1);
    let x = (ls * d) as u64 * e;
    let xf = (ls * d) as u64 * 4;
    let mut m = Live::default();
    m.alloc((runs * 6 * d) as u64 * 4); // modulation rows (f32)
                                        // 1. Self-attention.
    let normed1 = modulated_norm(&mut m, x, xf, e, false);
    let qk_tmp = |m: &mut Live| {
        let lin = linear(m, x);
        let norm = if e == 4 { x } else { 3 * xf };
        m.alloc(norm);
        m.alloc(x); // split_heads(..).contiguous()
        m.alloc(xf); // rope_i (f32): q itself in f32 runs
        m.alloc(if e == 4 { 0 } else { x }); // cast back: q in bf16 runs
        m.free(lin + norm + x + if e == 4 { 0 } else { xf });
    };
    qk_tmp(&mut m); // q
    qk_tmp(&mut m); // k
    let lin = linear(&mut m, x); // v
    m.alloc(x);
    m.free(lin);
    let mut attn_in = 3 * x;
    if u > 1 {
        // One exchange for q, k and v: their stack and its head-sharded result (each as large as
        // the three token shards) live until the attention returns.
        m.alloc(3 * x);
        all_to_all(&mut m, 3 * x, u);
        attn_in += 6 * x;
    }
    let lq = ls * u;
    let core = attention_core_bytes(&run.attention, heads / u, lq, lq, hd, e);
    m.transient(core);
    m.alloc(x); // attention output (the cat)
    if u > 1 {
        all_to_all(&mut m, x, u); // back to token shards
        m.free(x + 6 * x); // head-sharded output, stack, head-sharded q, k, v
        attn_in -= 6 * x;
    }
    m.alloc(x); // merge_heads copy
    m.free(x);
    let attn1 = linear(&mut m, x); // to_out
    m.free(x + attn_in); // merged heads, q, k, v
    let x1 = gated_residual(&mut m, x, xf, e);
    // 2. Cross-attention on the 512 text tokens (no communication, all heads, local queries).
    let normed2 = modulated_norm(&mut m, x, xf, e, cfg.cross_attn_norm);
    // q, k and v each in one statement: the projection (and for q, k the RMSNorm) are temporaries
    // of the statement, the head-split copy survives it.
    let projected = |m: &mut Live, rows: u64, rows_f32: u64, normed: bool| -> u64 {
        let lin = linear(m, rows);
        let norm = if !normed {
            0
        } else if e == 4 {
            rows
        } else {
            3 * rows_f32
        };
        m.alloc(norm);
        m.alloc(rows);
        m.free(lin + norm);
        rows
    };
    let q = projected(&mut m, x, xf, true);
    let text = TEXT_TOKENS as u64 * d as u64;
    let k = projected(&mut m, text * e, text * 4, true);
    let v = projected(&mut m, text * e, text * 4, false);
    let core = attention_core_bytes(&run.attention, heads, ls, TEXT_TOKENS, hd, e);
    m.transient(core);
    m.alloc(x); // output
    m.alloc(x); // merge_heads
    m.free(x);
    let attn2 = linear(&mut m, x);
    m.free(q + k + v + x);
    m.alloc(x); // x1 + attn2
    let x2 = x;
    // 3. Feed-forward: by now the block holds normed1, attn1, x1, normed2, attn2, x2.
    let normed3 = modulated_norm(&mut m, x, xf, e, false);
    let inner = (ls * cfg.ffn_dim) as u64 * e;
    let h = linear(&mut m, inner);
    m.alloc(inner); // GELU
    m.free(h);
    let ff = linear(&mut m, x);
    m.free(inner);
    let out = gated_residual(&mut m, x, xf, e);
    let peak = m.peak();
    m.free(normed1 + attn1 + x1 + normed2 + attn2 + x2 + normed3 + ff + out);
    peak
}

/// Memory of one forward's stem and head on a rank: the patch tokens of the shard (run dtype), the
/// output head's f32 LayerNorm temporaries and projection, and the unpatchified output.
pub fn stem_head_bytes(cfg: &DitConfig, ls: usize, elt: u64) -> u64 {
    let d = cfg.inner_dim() as u64;
    let patch: usize = cfg.patch_size.iter().product();
    let xf = ls as u64 * d * 4;
    let proj = (ls * cfg.out_channels() * patch) as u64 * elt;
    3 * xf + 2 * proj
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ti2v() -> DitConfig {
        DitConfig::ti2v_5b()
    }

    #[test]
    fn tokens_and_shards() {
        // TI2V-5B 1280×704×121: latent 31×44×80 → 31·22·40.
        assert_eq!(tokens(&ti2v(), (31, 44, 80)), 27_280);
        assert_eq!(shard_tokens(27_280, 8), 3_410);
        assert_eq!(shard_tokens(10, 4), 3);
    }

    #[test]
    fn weights_shard_the_blocks_not_the_stem() {
        let cfg = ti2v();
        let full = weights_bytes(&cfg, 4, 1);
        assert_eq!(full, params::dit_total(&cfg) * 4, "f32: every parameter 4 bytes");
        let half = weights_bytes(&cfg, 4, 2);
        let stem = params::dit_stem(&cfg) * 4;
        assert_eq!(half - stem, (full - stem) / 2);
        // bf16 is a bit over half: the f32-kept tables and norms.
        let bf16 = weights_bytes(&cfg, 2, 1);
        assert!(bf16 > full / 2 && bf16 < full / 2 + 30_000_000, "{bf16}");
    }

    #[test]
    fn fsdp_gathers_one_block() {
        let cfg = ti2v();
        assert_eq!(fsdp_gather_bytes(&cfg, 2, 1), 0);
        assert_eq!(fsdp_gather_bytes(&cfg, 2, 4), params::dit_block(&cfg) * 2);
        assert_eq!(fsdp_gather_transient_bytes(&cfg, 2, 4), 3072 * 14336 * 2);
        assert_eq!(fsdp_gather_transient_bytes(&cfg, 2, 1), 0);
    }

    #[test]
    fn rope_tables_are_f32_per_token() {
        let cfg = ti2v();
        assert_eq!(rope_bytes(&cfg, 100, 1), 100 * 64 * 4 * 2);
        assert_eq!(rope_bytes(&cfg, 100, 4), (100 + 25) * 64 * 4 * 2);
    }

    #[test]
    fn context_and_latent_state() {
        let cfg = ti2v();
        assert_eq!(context_bytes(&cfg, 2), 512 * 3072 * 2);
        // f32, no CFG, in = out channels: latents, input f32 + cast, one prediction, UniPC history.
        assert_eq!(latent_state_bytes(&cfg, 100, 4, false), 100 * 4 * (1 + 2 + 1 + 3));
    }

    /// One query/key block: 2 score tiles, plus scaled q, block outputs and their cat.
    #[test]
    fn attention_core_counts_score_tiles() {
        let a = ChunkedAttention::new(4, 8);
        let (h, l, hd) = (2, 8, 16);
        let single = attention_core_bytes(&a, h, 4, l, hd, 4);
        let q = (h * 4 * hd * 4) as u64; // scaled queries = one block's output here
        assert_eq!(single, q + 2 * (h * 4 * l * 4) as u64 + q);
        // Longer keys than one block: three tiles of kv_block, independent of the key length.
        let long = attention_core_bytes(&a, h, 4, 1000, hd, 4);
        let long2 = attention_core_bytes(&a, h, 4, 2000, hd, 4);
        assert_eq!(long, long2);
    }

    #[test]
    fn ulysses_shrinks_the_block_peak() {
        let cfg = ti2v();
        let run = DitRun { elt: 2, ulysses: 1, fsdp: 1, attention: ChunkedAttention::default() };
        let l = 27_280;
        let one = block_peak(&cfg, &run, l, 2);
        let four = block_peak(&cfg, &DitRun { ulysses: 4, ..run }, shard_tokens(l, 4), 2);
        assert!(four < one / 2, "ulysses 4: {four} vs {one}");
        // The FFN dominates: at least the two L×ffn tensors and the seven L×D tensors the block
        // holds by then (its input is not counted here).
        let floor = 2 * (l * cfg.ffn_dim) as u64 * 2 + 7 * (l * cfg.inner_dim()) as u64 * 2;
        assert!(one >= floor, "{one} < {floor}");
        // The f32 (CPU) replay balances its frees too (a debug assertion checks every free).
        let f32_run = DitRun { elt: 4, ..run };
        assert!(block_peak(&cfg, &f32_run, 1000, 1) > block_peak(&cfg, &run, 1000, 1));
    }

    #[test]
    fn all_to_all_only_with_ulysses() {
        let mut m = Live::default();
        all_to_all(&mut m, 12, 1);
        assert_eq!((m.peak(), m.live()), (0, 0));
        // Two ranks: half leaves (6 wire bytes), half arrives (6), then the 12-byte concatenation.
        all_to_all(&mut m, 12, 2);
        assert_eq!((m.peak(), m.live()), (24, 12));
    }

    #[test]
    fn stem_head_is_token_local() {
        let cfg = ti2v();
        assert_eq!(stem_head_bytes(&cfg, 10, 4), 3 * 10 * 3072 * 4 + 2 * 10 * 48 * 4 * 4);
    }
}
