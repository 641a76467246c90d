//! The one table from Wan-native checkpoint names (the official Wan2.x releases, ComfyUI's and
//! Kijai's single files, lightx2v/Kohya LoRAs) to the diffusers names the model code asks for.
//!
//! Reference: diffusers 0.42.1 `loaders/single_file_utils.py` — `convert_wan_transformer_to_diffusers`
//! (an ordered list of substring replacements, reproduced as [`TRANSFORMER_RENAMES`] and applied in
//! the same order, the `norm2`/`norm3` swap included) and `convert_wan_vae_to_diffusers` (Wan2.1
//! VAE; written here for any `num_res_blocks`, equal to diffusers' fixed indices for the published
//! 2). The Wan2.2 VAE (residual blocks, `wan2.2_vae.safetensors`) follows `convert_vae_22` of
//! diffusers' `scripts/convert_wan_to_diffusers.py` (not in the wheel; checked against it by
//! `scripts/gen_vae22_native.py`). ComfyUI's `model.diffusion_model.` prefix (and the LoRAs'
//! `diffusion_model.`) is stripped first.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::weights::Rename;

/// How a file names a component's tensors.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyDialect {
    /// diffusers names (`blocks.0.attn1.to_q.weight`, `decoder.up_blocks.0…`).
    Diffusers,
    /// Wan-native names (`blocks.0.self_attn.q.weight`, `decoder.upsamples.0…`) after `prefix`
    /// (`""` for the official releases, `model.diffusion_model.` for ComfyUI's files).
    WanNative { prefix: String },
}

/// Prefixes single-file checkpoints and LoRAs put before Wan-native transformer names.
pub const NATIVE_PREFIXES: [&str; 2] = ["model.diffusion_model.", "diffusion_model."];

/// diffusers' `TRANSFORMER_KEYS_RENAME_DICT`, in its order (each replacement applies to the result
/// of the previous ones; `norm__placeholder` swaps `norm2` and `norm3`).
pub const TRANSFORMER_RENAMES: [(&str, &str); 27] = [
    ("time_embedding.0", "condition_embedder.time_embedder.linear_1"),
    ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
    ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
    ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
    ("time_projection.1", "condition_embedder.time_proj"),
    ("cross_attn", "attn2"),
    ("self_attn", "attn1"),
    (".o.", ".to_out.0."),
    (".q.", ".to_q."),
    (".k.", ".to_k."),
    (".v.", ".to_v."),
    (".k_img.", ".add_k_proj."),
    (".v_img.", ".add_v_proj."),
    (".norm_k_img.", ".norm_added_k."),
    ("head.modulation", "scale_shift_table"),
    ("head.head", "proj_out"),
    ("modulation", "scale_shift_table"),
    ("ffn.0", "ffn.net.0.proj"),
    ("ffn.2", "ffn.net.2"),
    ("norm2", "norm__placeholder"),
    ("norm3", "norm2"),
    ("norm__placeholder", "norm3"),
    ("img_emb.proj.0", "condition_embedder.image_embedder.norm1"),
    ("img_emb.proj.1", "condition_embedder.image_embedder.ff.net.0.proj"),
    ("img_emb.proj.3", "condition_embedder.image_embedder.ff.net.2"),
    ("img_emb.proj.4", "condition_embedder.image_embedder.norm2"),
    ("img_emb.emb_pos", "condition_embedder.image_embedder.pos_embed"),
];

/// A Wan-native transformer name (no prefix) → its diffusers name.
pub fn transformer_native_to_diffusers(native: &str) -> String {
    let mut name = native.to_string();
    for (from, to) in TRANSFORMER_RENAMES {
        name = name.replace(from, to);
    }
    name
}

/// Strips a known single-file prefix; `(prefix, rest)`.
pub fn split_native_prefix(key: &str) -> (&str, &str) {
    for p in NATIVE_PREFIXES {
        if let Some(rest) = key.strip_prefix(p) {
            return (p, rest);
        }
    }
    ("", key)
}

/// The transformer dialect of a file from its keys: diffusers names have `condition_embedder.`,
/// Wan-native ones `patch_embedding.` + `time_embedding.` (after an optional prefix).
pub fn detect_transformer<'a>(keys: impl Iterator<Item = &'a str> + Clone) -> Option<KeyDialect> {
    if keys.clone().any(|k| k.starts_with("condition_embedder.")) {
        return Some(KeyDialect::Diffusers);
    }
    keys.filter_map(|k| {
        let (prefix, rest) = split_native_prefix(k);
        rest.starts_with("time_embedding.").then(|| KeyDialect::WanNative { prefix: prefix.to_string() })
    })
    .next()
}

/// The rename for a transformer file in `dialect` (keys outside the prefix are not model tensors).
pub fn transformer_rename(dialect: &KeyDialect) -> Arc<Rename> {
    match dialect {
        KeyDialect::Diffusers => Arc::new(|k: &str| Some(k.to_string())),
        KeyDialect::WanNative { prefix } => {
            let prefix = prefix.clone();
            Arc::new(move |k: &str| k.strip_prefix(prefix.as_str()).map(transformer_native_to_diffusers))
        }
    }
}

/// Which Wan VAE a file holds, from its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaeKeys {
    Diffusers,
    /// Wan2.1 VAE, Wan-native names (`wan_2.1_vae.safetensors`).
    Wan21Native,
    /// Wan2.2 VAE, Wan-native names (`wan2.2_vae.safetensors`): residual levels nest their resnets
    /// and resampler (`decoder.upsamples.N.upsamples.M…`).
    Wan22Native,
}

/// The VAE dialect of a file from its keys; `None` when it holds no Wan VAE.
pub fn detect_vae<'a>(keys: impl Iterator<Item = &'a str> + Clone) -> Option<VaeKeys> {
    if keys.clone().any(|k| k.starts_with("decoder.mid_block.")) {
        return Some(VaeKeys::Diffusers);
    }
    // diffusers' own detection key for the Wan VAE.
    if !keys.clone().any(|k| k == "decoder.middle.0.residual.0.gamma") {
        return None;
    }
    // Wan2.2's residual up blocks nest their resnets (`decoder.upsamples.N.upsamples.M…`).
    if keys.clone().any(|k| k.starts_with("decoder.upsamples.") && k.split('.').nth(3) == Some("upsamples")) {
        Some(VaeKeys::Wan22Native)
    } else {
        Some(VaeKeys::Wan21Native)
    }
}

/// diffusers' resnet part names for the Wan-native ones (`residual.N` is the Sequential of
/// norm, act, conv, norm, act, dropout, conv), shared by both VAE generations.
const VAE_RESNET: [(&str, &str); 8] = [
    (".residual.0.gamma", ".norm1.gamma"),
    (".residual.2.bias", ".conv1.bias"),
    (".residual.2.weight", ".conv1.weight"),
    (".residual.3.gamma", ".norm2.gamma"),
    (".residual.6.bias", ".conv2.bias"),
    (".residual.6.weight", ".conv2.weight"),
    (".shortcut.bias", ".conv_shortcut.bias"),
    (".shortcut.weight", ".conv_shortcut.weight"),
];

/// The one-off VAE names, the same in Wan2.1 and Wan2.2.
const VAE_EXACT: [(&str, &str); 14] = [
    ("conv1.weight", "quant_conv.weight"),
    ("conv1.bias", "quant_conv.bias"),
    ("conv2.weight", "post_quant_conv.weight"),
    ("conv2.bias", "post_quant_conv.bias"),
    ("encoder.conv1.weight", "encoder.conv_in.weight"),
    ("encoder.conv1.bias", "encoder.conv_in.bias"),
    ("decoder.conv1.weight", "decoder.conv_in.weight"),
    ("decoder.conv1.bias", "decoder.conv_in.bias"),
    ("encoder.head.0.gamma", "encoder.norm_out.gamma"),
    ("encoder.head.2.bias", "encoder.conv_out.bias"),
    ("encoder.head.2.weight", "encoder.conv_out.weight"),
    ("decoder.head.0.gamma", "decoder.norm_out.gamma"),
    ("decoder.head.2.bias", "decoder.conv_out.bias"),
    ("decoder.head.2.weight", "decoder.conv_out.weight"),
];

fn vae_resnet(s: &str) -> String {
    VAE_RESNET.iter().fold(s.to_string(), |acc, (f, t)| acc.replace(f, t))
}

/// A Wan-native VAE name (Wan2.1 or Wan2.2: the level layouts differ and each key says which it
/// is, the rest is shared) → its diffusers name. `num_res_blocks` matters for Wan2.1 only (its
/// decoder levels are numbered flat).
pub fn vae_native_to_diffusers(key: &str, num_res_blocks: usize) -> String {
    if let Some((_, to)) = VAE_EXACT.iter().find(|(f, _)| *f == key) {
        return to.to_string();
    }
    for side in ["encoder", "decoder"] {
        if let Some(rest) = key.strip_prefix(&format!("{side}.middle.")) {
            // middle.0 / middle.2: resnets 0 / 1; middle.1: the attention.
            let (i, tail) = rest.split_once('.').unwrap_or((rest, ""));
            return match i {
                "1" => format!("{side}.mid_block.attentions.0.{tail}"),
                _ => vae_resnet(&format!("{side}.mid_block.resnets.{}.{tail}", if i == "0" { 0 } else { 1 })),
            };
        }
    }
    if let Some(renamed) = vae22_level_to_diffusers(key) {
        return renamed;
    }
    vae21_level_to_diffusers(key, num_res_blocks)
}

/// Wan2.2's residual levels (`convert_vae_22`): `encoder.downsamples.X.downsamples.Y` is resnet Y
/// of level X, or its downsampler when it holds `resample` / `time_conv` (the last Y); the decoder
/// likewise with `upsamples` / `upsampler`. `None` for keys of another layout.
fn vae22_level_to_diffusers(key: &str) -> Option<String> {
    let (side, inner, blocks, sampler) = if key.starts_with("encoder.downsamples.") {
        ("encoder", "downsamples", "down_blocks", "downsampler")
    } else if key.starts_with("decoder.upsamples.") {
        ("decoder", "upsamples", "up_blocks", "upsampler")
    } else {
        return None;
    };
    let parts: Vec<&str> = key.split('.').collect();
    if parts.len() < 5 || parts[3] != inner {
        return None;
    }
    let level = parts[2];
    let tail = parts[5..].join(".");
    if key.contains("residual") || key.contains("shortcut") {
        Some(vae_resnet(&format!("{side}.{blocks}.{level}.resnets.{}.{tail}", parts[4])))
    } else if key.contains("resample") || key.contains("time_conv") {
        Some(format!("{side}.{blocks}.{level}.{sampler}.{tail}"))
    } else {
        Some(format!("{side}.{blocks}.{}", parts[2..].join(".")))
    }
}

/// Wan2.1's levels (`convert_wan_vae_to_diffusers`): encoder levels keep their flat index, each
/// decoder level holds `num_res_blocks + 1` resnets and, but for the last, one upsampler.
fn vae21_level_to_diffusers(key: &str, num_res_blocks: usize) -> String {
    if let Some(rest) = key.strip_prefix("encoder.downsamples.") {
        return vae_resnet(&format!("encoder.down_blocks.{rest}"));
    }
    if let Some(rest) = key.strip_prefix("decoder.upsamples.") {
        let (idx, tail) = rest.split_once('.').unwrap_or((rest, ""));
        let Ok(idx) = idx.parse::<usize>() else { return key.to_string() };
        let per_level = num_res_blocks + 2;
        let (level, pos) = (idx / per_level, idx % per_level);
        return if pos <= num_res_blocks {
            vae_resnet(&format!("decoder.up_blocks.{level}.resnets.{pos}.{tail}"))
        } else {
            format!("decoder.up_blocks.{level}.upsamplers.0.{tail}")
        };
    }
    key.to_string()
}

/// The rename for a VAE file in `dialect` (Wan-native: either generation, see
/// [`vae_native_to_diffusers`]).
pub fn vae_rename(dialect: &KeyDialect, num_res_blocks: usize) -> Arc<Rename> {
    match dialect {
        KeyDialect::Diffusers => Arc::new(|k: &str| Some(k.to_string())),
        KeyDialect::WanNative { .. } => Arc::new(move |k: &str| Some(vae_native_to_diffusers(k, num_res_blocks))),
    }
}

/// Kohya / musubi LoRA module names (`blocks_0_self_attn_q`) cannot be split back at `_` without
/// knowing the modules: this lists every Wan-native module path a transformer of `num_layers`
/// blocks can have, so a Kohya name is looked up, not parsed.
pub fn native_transformer_modules(num_layers: usize) -> Vec<String> {
    let mut out: Vec<String> = [
        "patch_embedding",
        "text_embedding.0",
        "text_embedding.2",
        "time_embedding.0",
        "time_embedding.2",
        "time_projection.1",
        "head.head",
        "img_emb.proj.1",
        "img_emb.proj.3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for i in 0..num_layers {
        for attn in ["self_attn", "cross_attn"] {
            for m in ["q", "k", "v", "o", "k_img", "v_img"] {
                out.push(format!("blocks.{i}.{attn}.{m}"));
            }
        }
        out.push(format!("blocks.{i}.ffn.0"));
        out.push(format!("blocks.{i}.ffn.2"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transformer_names_follow_diffusers() {
        let cases = [
            ("blocks.3.self_attn.q.weight", "blocks.3.attn1.to_q.weight"),
            ("blocks.3.cross_attn.o.bias", "blocks.3.attn2.to_out.0.bias"),
            ("blocks.3.cross_attn.norm_k.weight", "blocks.3.attn2.norm_k.weight"),
            ("blocks.3.norm3.weight", "blocks.3.norm2.weight"),
            ("blocks.3.ffn.0.weight", "blocks.3.ffn.net.0.proj.weight"),
            ("blocks.3.modulation", "blocks.3.scale_shift_table"),
            ("head.modulation", "scale_shift_table"),
            ("head.head.weight", "proj_out.weight"),
            ("time_projection.1.bias", "condition_embedder.time_proj.bias"),
            ("text_embedding.2.weight", "condition_embedder.text_embedder.linear_2.weight"),
            ("blocks.0.cross_attn.k_img.weight", "blocks.0.attn2.add_k_proj.weight"),
            ("img_emb.proj.4.bias", "condition_embedder.image_embedder.norm2.bias"),
            ("patch_embedding.weight", "patch_embedding.weight"),
        ];
        for (native, want) in cases {
            assert_eq!(transformer_native_to_diffusers(native), want, "{native}");
        }
        assert_eq!(
            split_native_prefix("model.diffusion_model.head.head.weight"),
            ("model.diffusion_model.", "head.head.weight")
        );
    }

    #[test]
    fn vae22_names_follow_convert_vae_22() {
        let cases = [
            ("encoder.downsamples.1.downsamples.0.residual.2.weight", "encoder.down_blocks.1.resnets.0.conv1.weight"),
            ("encoder.downsamples.0.downsamples.1.shortcut.bias", "encoder.down_blocks.0.resnets.1.conv_shortcut.bias"),
            (
                "encoder.downsamples.2.downsamples.2.resample.1.weight",
                "encoder.down_blocks.2.downsampler.resample.1.weight",
            ),
            ("encoder.downsamples.1.downsamples.2.time_conv.bias", "encoder.down_blocks.1.downsampler.time_conv.bias"),
            ("decoder.upsamples.0.upsamples.2.residual.3.gamma", "decoder.up_blocks.0.resnets.2.norm2.gamma"),
            ("decoder.upsamples.1.upsamples.3.resample.1.bias", "decoder.up_blocks.1.upsampler.resample.1.bias"),
            ("decoder.upsamples.0.upsamples.3.time_conv.weight", "decoder.up_blocks.0.upsampler.time_conv.weight"),
            ("decoder.middle.1.to_qkv.weight", "decoder.mid_block.attentions.0.to_qkv.weight"),
            ("conv1.weight", "quant_conv.weight"),
        ];
        for (native, want) in cases {
            assert_eq!(vae_native_to_diffusers(native, 2), want, "{native}");
        }
    }

    #[test]
    fn vae_names_follow_diffusers_fixed_indices() {
        let cases = [
            ("decoder.upsamples.0.residual.0.gamma", "decoder.up_blocks.0.resnets.0.norm1.gamma"),
            ("decoder.upsamples.3.time_conv.weight", "decoder.up_blocks.0.upsamplers.0.time_conv.weight"),
            ("decoder.upsamples.4.shortcut.weight", "decoder.up_blocks.1.resnets.0.conv_shortcut.weight"),
            ("decoder.upsamples.11.resample.1.bias", "decoder.up_blocks.2.upsamplers.0.resample.1.bias"),
            ("decoder.upsamples.14.residual.6.weight", "decoder.up_blocks.3.resnets.2.conv2.weight"),
            ("encoder.downsamples.2.resample.1.weight", "encoder.down_blocks.2.resample.1.weight"),
            ("encoder.downsamples.4.shortcut.bias", "encoder.down_blocks.4.conv_shortcut.bias"),
            ("encoder.middle.2.residual.3.gamma", "encoder.mid_block.resnets.1.norm2.gamma"),
            ("decoder.middle.1.to_qkv.weight", "decoder.mid_block.attentions.0.to_qkv.weight"),
            ("conv2.bias", "post_quant_conv.bias"),
            ("decoder.head.2.weight", "decoder.conv_out.weight"),
        ];
        for (native, want) in cases {
            assert_eq!(vae_native_to_diffusers(native, 2), want, "{native}");
        }
    }
}
