#!/usr/bin/env python3
"""The HunyuanVideo 1.5 VAE golden case Tessera's CI tests against (tests/fixtures/hv15/vae).

Adapted from the project's shared generator (`gen_hv15.py`, its `vae` case) to keep the tracked tree
small: the same tiny `AutoencoderKLHunyuanVideo15` structure (block_out (4,8,16,32,32), latent 4, 16x
spatial / 4x temporal, match_channel: the real checkpoint's up/down channel ratios), but a smaller case
(latent [1,4,2,4,6] -> video [1,3,5,64,96]) and every weight rounded to bfloat16 and *stored* as bf16.
The f32 references are computed in float32 on CPU from exactly those bf16 values (bf16 -> f32 is exact),
so a port that loads the bf16 file into f32 must match to f32 rounding. The input video and image are
rounded to bf16 too (stored bf16, references computed from the rounded values); latents stay f32.

usage: scripts/gen_hv15_vae.py OUT_DIR [SEED]     (default seed 0; /work/venv has torch + diffusers)

Writes OUT_DIR/vae/{case.json, inputs.safetensors, outputs.safetensors, vae/} where vae/ is exactly
what `save_pretrained` writes. Reproducible: one seeded torch.Generator draws everything in a fixed order.
"""
import json, os, sys

import torch
from safetensors.torch import save_file

import diffusers
from diffusers import AutoencoderKLHunyuanVideo15

torch.set_grad_enabled(False)
out_root = sys.argv[1]
seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
g = torch.Generator().manual_seed(seed)
torch.manual_seed(seed)


def randn(*shape, scale=1.0):
    return torch.randn(*shape, generator=g) * scale


LAT_C = 4
VAE_CFG = dict(in_channels=3, out_channels=3, latent_channels=LAT_C, block_out_channels=(4, 8, 16, 32, 32),
               layers_per_block=2, spatial_compression_ratio=16, temporal_compression_ratio=4,
               downsample_match_channel=True, upsample_match_channel=True, scaling_factor=1.03682)
# Latent (T, H, W): T = 2 still has the special first frame and one temporal pair at each level; 4x6
# latents give a 2x2 tile grid in both tiled decode and tiled encode with these settings.
LAT = (2, 4, 6)
TILING = dict(tile_sample_min_height=64, tile_sample_min_width=64, tile_latent_min_height=4,
              tile_latent_min_width=4, tile_overlap_factor=0.25)

vae = AutoencoderKLHunyuanVideo15(**VAE_CFG)
for p in vae.parameters():  # random init leaves exact zeros/ones (gammas, biases): perturb everything
    p.add_(randn(*p.shape, scale=0.02))
vae = vae.to(torch.bfloat16).eval()
d = os.path.join(out_root, "vae")
vae.save_pretrained(os.path.join(d, "vae"), safe_serialization=True)
vae = vae.float()  # exact: the f32 model holds the bf16 values

t, h, w = LAT
F_, H_, W_ = (t - 1) * 4 + 1, h * 16, w * 16
z = randn(1, LAT_C, t, h, w)
video = torch.tanh(randn(1, 3, F_, H_, W_)).to(torch.bfloat16)
image = torch.tanh(randn(1, 3, 1, H_, W_)).to(torch.bfloat16)

cap = {}
hooks = [m.register_forward_hook(lambda mod, a, out, name=name: cap.__setitem__(name, out.clone()))
         for name, m in [("dec_mid", vae.decoder.mid_block), ("dec_up0", vae.decoder.up_blocks[0]),
                         ("enc_mid", vae.encoder.mid_block)]]
dec = vae.decode(z).sample
post = vae.encode(video.float()).latent_dist
dbg_enc_mid = cap["enc_mid"]  # before the image encode overwrites it
post_img = vae.encode(image.float()).latent_dist
for hk in hooks:
    hk.remove()
vae.enable_tiling(**TILING)
dec_t = vae.decode(z).sample
post_t = vae.encode(video.float()).latent_dist
post_img_t = vae.encode(image.float()).latent_dist

outputs = dict(decoded=dec, decoded_tiled=dec_t, enc_mean=post.mean, enc_logvar=post.logvar,
               enc_mean_tiled=post_t.mean, enc_logvar_tiled=post_t.logvar, enc_image_mean=post_img.mean,
               enc_image_mean_tiled=post_img_t.mean, dbg_dec_mid=cap["dec_mid"], dbg_dec_up0=cap["dec_up0"],
               dbg_enc_mid=dbg_enc_mid)
for k, v in outputs.items():
    assert torch.isfinite(v).all(), k
inputs = dict(latents=z, video=video, image=image)
save_file({k: v.contiguous() for k, v in inputs.items()}, os.path.join(d, "inputs.safetensors"))
save_file({k: v.float().contiguous() for k, v in outputs.items()}, os.path.join(d, "outputs.safetensors"))
case = dict(
    kind="vae", model_dir="vae", model_class="AutoencoderKLHunyuanVideo15", config=VAE_CFG, seed=seed,
    latent_thw=list(LAT), video_fhw=[F_, H_, W_],
    tiling=dict(TILING, tessera="--tiling 64,64,48,48 (stride = tile - int(tile * overlap))"),
    weights="rounded to bfloat16 and stored bf16; references computed in f32 from the bf16 values",
    inputs={k: [list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in inputs.items()},
    outputs={k: list(v.shape) for k, v in outputs.items()},
    outputs_doc={"decoded": "vae.decode(latents).sample, untiled, no clamp", "decoded_tiled": "same, enable_tiling(**tiling)",
                 "enc_mean / enc_logvar": "vae.encode(video).latent_dist (logvar clamped to [-30, 20])",
                 "*_tiled": "with tiling", "enc_image_mean": "vae.encode(image).latent_dist.mean (I2V first frame)",
                 "dbg_*": "decoder.mid_block, decoder.up_blocks[0], encoder.mid_block outputs (untiled)"},
    versions=dict(diffusers=diffusers.__version__, torch=torch.__version__),
)
with open(os.path.join(d, "case.json"), "w") as f:
    json.dump(case, f, indent=2)
print("wrote", d)
