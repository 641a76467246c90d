//! Parameter counts of every component, computed from the config files alone (no weights), so the
//! planner can size weights for checkpoints that are not on disk. Each count mirrors the module
//! tree the engine builds (`models::wan::{transformer, vae}`, `models::umt5`); the tests check the
//! sums against the real checkpoints' tensor manifests.

use crate::models::umt5::config::Config as Umt5Config;
use crate::models::wan::transformer::config::Config as DitConfig;
use crate::models::wan::vae::config::Config as VaeConfig;

/// `nn.Linear(i, o)` with bias.
fn linear(i: usize, o: usize) -> u64 {
    (i * o + o) as u64
}

/// A conv with kernel volume `k` (`k·k` or `kt·k·k`) and bias.
fn conv(i: usize, o: usize, k: usize) -> u64 {
    (i * o * k + o) as u64
}

/// One `WanAttention` (q, k, v, out projections and the two RMSNorm weights), plus the Wan2.1 I2V
/// image key/value branch when `added_kv` is set.
pub fn dit_attention(d: usize, added_kv: Option<usize>) -> u64 {
    let base = 4 * linear(d, d) + 2 * d as u64;
    base + added_kv.map_or(0, |kv| 2 * linear(kv, d) + d as u64)
}

/// One `WanTransformerBlock`.
pub fn dit_block(cfg: &DitConfig) -> u64 {
    let d = cfg.inner_dim();
    let norm2 = if cfg.cross_attn_norm { 2 * d as u64 } else { 0 };
    let ffn = linear(d, cfg.ffn_dim) + linear(cfg.ffn_dim, d);
    dit_attention(d, None) + dit_attention(d, cfg.added_kv_proj_dim) + norm2 + ffn + 6 * d as u64
}

/// Everything outside the blocks: patch, time, text (and image) embedders, output head.
pub fn dit_stem(cfg: &DitConfig) -> u64 {
    let d = cfg.inner_dim();
    let patch: usize = cfg.patch_size.iter().product();
    let patch_embedding = conv(cfg.in_channels, d, patch);
    let time = linear(cfg.freq_dim, d) + linear(d, d) + linear(d, 6 * d);
    let text = linear(cfg.text_dim, d) + linear(d, d);
    let image = cfg.image_dim.map_or(0, |img| {
        // FP32LayerNorm(img) → Linear(img, img) → GELU → Linear(img, D) → FP32LayerNorm(D).
        2 * img as u64 + linear(img, img) + linear(img, d) + 2 * d as u64
    });
    let pos_embed = match (cfg.pos_embed_seq_len, cfg.image_dim) {
        (Some(n), Some(img)) => (n * img) as u64,
        _ => 0,
    };
    let head = 2 * d as u64 + linear(d, cfg.out_channels() * patch);
    patch_embedding + time + text + image + pos_embed + head
}

/// The whole transformer.
pub fn dit_total(cfg: &DitConfig) -> u64 {
    dit_stem(cfg) + cfg.num_layers as u64 * dit_block(cfg)
}

/// `WanResidualBlock(in, out)`.
pub fn vae_resblock(i: usize, o: usize) -> u64 {
    let shortcut = if i != o { conv(i, o, 1) } else { 0 };
    i as u64 + conv(i, o, 27) + o as u64 + conv(o, o, 27) + shortcut
}

/// `WanMidBlock(dim)`: two resnets around one per-frame attention.
pub fn vae_midblock(c: usize) -> u64 {
    2 * vae_resblock(c, c) + c as u64 + conv(c, 3 * c, 1) + conv(c, c, 1)
}

/// The decoder's channel widths: `[mid, stage 0 out, …]` (diffusers `dims`).
pub fn vae_decoder_dims(cfg: &VaeConfig) -> Vec<usize> {
    let n = cfg.dim_mult.len();
    std::iter::once(cfg.dim_mult[n - 1])
        .chain(cfg.dim_mult.iter().rev().copied())
        .map(|u| u * cfg.decoder_dim())
        .collect()
}

/// Input width of decoder stage `i` (Wan2.1 halves it after the first stage: its upsample conv
/// outputs `dim / 2`).
pub fn vae_decoder_stage_in(cfg: &VaeConfig, dims: &[usize], i: usize) -> usize {
    if i > 0 && !cfg.is_residual {
        dims[i] / 2
    } else {
        dims[i]
    }
}

/// Decoder plus `post_quant_conv`.
pub fn vae_decoder(cfg: &VaeConfig) -> u64 {
    let dims = vae_decoder_dims(cfg);
    let stages = cfg.dim_mult.len();
    let up_t: Vec<bool> = cfg.temperal_downsample.iter().rev().copied().collect();
    let mut n = conv(cfg.z_dim, dims[0], 27) + vae_midblock(dims[0]);
    for i in 0..stages {
        let (inp, out) = (vae_decoder_stage_in(cfg, &dims, i), dims[i + 1]);
        n += vae_resblock(inp, out) + cfg.num_res_blocks as u64 * vae_resblock(out, out);
        if i != stages - 1 {
            let up_out = if cfg.is_residual { out } else { out / 2 };
            n += conv(out, up_out, 9);
            if up_t.get(i).copied().unwrap_or(false) {
                n += conv(out, 2 * out, 3);
            }
        }
    }
    let last = dims[stages];
    n + last as u64 + conv(last, cfg.out_channels, 27) + conv(cfg.z_dim, cfg.z_dim, 1)
}

/// Encoder plus `quant_conv`.
pub fn vae_encoder(cfg: &VaeConfig) -> u64 {
    let dims: Vec<usize> = std::iter::once(1).chain(cfg.dim_mult.iter().copied()).map(|u| u * cfg.base_dim).collect();
    let stages = cfg.dim_mult.len();
    let mut n = conv(cfg.in_channels, dims[0], 27);
    for i in 0..stages {
        let (inp, out) = (dims[i], dims[i + 1]);
        n += vae_resblock(inp, out) + (cfg.num_res_blocks as u64 - 1) * vae_resblock(out, out);
        if i != stages - 1 {
            n += conv(out, out, 9);
            if cfg.temperal_downsample.get(i).copied().unwrap_or(false) {
                n += conv(out, out, 3);
            }
        }
    }
    let last = dims[stages];
    n + vae_midblock(last) + last as u64 + conv(last, 2 * cfg.z_dim, 27) + conv(2 * cfg.z_dim, 2 * cfg.z_dim, 1)
}

/// Extra f32 elements the CPU decoder derives at load: the sub-pixel weights of each fused
/// upsample conv (`ops::upsample_phases`: 4 phases × O × I × 2 × 2), kept beside the 3×3 weights.
pub fn vae_decoder_upsample_phases(cfg: &VaeConfig) -> u64 {
    let dims = vae_decoder_dims(cfg);
    let stages = cfg.dim_mult.len();
    (0..stages.saturating_sub(1))
        .map(|i| {
            let out = dims[i + 1];
            let up_out = if cfg.is_residual { out } else { out / 2 };
            16 * (out * up_out) as u64
        })
        .sum()
}

/// One UMT5 encoder layer (self-attention with its own relative bias, gated FFN, two norms).
pub fn umt5_layer(cfg: &Umt5Config) -> u64 {
    let (d, inner) = (cfg.d_model, cfg.num_heads * cfg.d_kv);
    let gated = cfg.feed_forward_proj.starts_with("gated");
    let wi = if gated { 2 } else { 1 } * (d * cfg.d_ff) as u64;
    let attn = 4 * (d * inner) as u64 + (cfg.relative_attention_num_buckets * cfg.num_heads) as u64;
    attn + wi + (cfg.d_ff * d) as u64 + 2 * d as u64
}

/// The UMT5 encoder: the token embedding (stored once; `encoder.embed_tokens` is tied to it),
/// the layers and the final norm.
pub fn umt5_total(cfg: &Umt5Config) -> u64 {
    (cfg.vocab_size * cfg.d_model) as u64 + cfg.num_layers as u64 * umt5_layer(cfg) + cfg.d_model as u64
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

    /// Parameters of the manifest tensors whose names start with `prefix` and pass `keep`.
    fn count(tensors: &BTreeMap<String, Vec<usize>>, keep: impl Fn(&str) -> bool) -> u64 {
        tensors.iter().filter(|(k, _)| keep(k)).map(|(_, s)| s.iter().product::<usize>() as u64).sum()
    }

    #[test]
    fn dit_counts_match_the_real_checkpoints() {
        for name in ["wan2.2-ti2v-5b-transformer", "wan2.2-t2v-a14b-transformer", "wan2.2-i2v-a14b-transformer"] {
            let (config, tensors) = manifest(name);
            let cfg: DitConfig = serde_json::from_value(config).unwrap();
            assert_eq!(dit_block(&cfg), count(&tensors, |k| k.starts_with("blocks.0.")), "{name} block");
            assert_eq!(dit_stem(&cfg), count(&tensors, |k| !k.starts_with("blocks.")), "{name} stem");
            assert_eq!(dit_total(&cfg), count(&tensors, |_| true), "{name} total");
        }
    }

    #[test]
    fn wan21_i2v_image_branch_is_counted() {
        let cfg = DitConfig::wan21_i2v_14b();
        // Published size of Wan2.1-I2V-14B (the Hub checkpoint's parameter count).
        assert_eq!(dit_total(&cfg), 16_394_878_784);
    }

    #[test]
    fn vae_counts_match_the_real_checkpoints() {
        for name in ["wan2.1-vae", "wan2.2-vae"] {
            let (config, tensors) = manifest(name);
            let cfg: VaeConfig = serde_json::from_value(config).unwrap();
            let dec = count(&tensors, |k| k.starts_with("decoder.") || k.starts_with("post_quant_conv."));
            let enc = count(&tensors, |k| k.starts_with("encoder.") || k.starts_with("quant_conv."));
            assert_eq!(vae_decoder(&cfg), dec, "{name} decoder");
            assert_eq!(vae_encoder(&cfg), enc, "{name} encoder");
            assert_eq!(
                count(&tensors, |k| k.starts_with("decoder.up_blocks.0.resnets.0.")),
                vae_resblock(vae_decoder_stage_in(&cfg, &vae_decoder_dims(&cfg), 0), vae_decoder_dims(&cfg)[1])
            );
        }
    }

    #[test]
    fn umt5_count_matches_the_real_checkpoint() {
        let (config, tensors) = manifest("umt5-xxl-encoder");
        let cfg: Umt5Config = serde_json::from_value(config).unwrap();
        // The manifest lists the tied embedding twice (`shared` and `encoder.embed_tokens`).
        assert_eq!(umt5_total(&cfg), count(&tensors, |k| k != "encoder.embed_tokens.weight"));
        assert_eq!(umt5_layer(&cfg), count(&tensors, |k| k.starts_with("encoder.block.0.")));
    }

    #[test]
    fn upsample_phases_scale_with_the_upsample_convs() {
        // Wan2.2: two 1024→1024 and one 512→512 upsample conv, 16 sub-pixel weights per (o, i).
        assert_eq!(vae_decoder_upsample_phases(&VaeConfig::wan22()), 16 * (2 * 1024 * 1024 + 512 * 512));
        assert_eq!(vae_decoder_upsample_phases(&VaeConfig::wan21()), 16 * (2 * 384 * 192 + 192 * 96));
    }
}
