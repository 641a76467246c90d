#!/usr/bin/env python3
"""The HunyuanVideo 1.5 image-to-video pipeline case Tessera's CI tests against (tests/fixtures/hv15/pipeline_i2v).

As the shared generator's `pipeline_i2v` case (`gen_hv15.py`): `HunyuanVideo15ImageToVideoPipeline` with the text
encoders absent and the prompt embeddings passed in, FlowMatchEuler(shift 5), 4 steps, guidance 6 (untiled and with
VAE tiling, which also tiles the image encode) and 1 (one forward per step), and the step-distilled run
(`transformer_meanflow`, shift 7, guidance 1, timestep_r = next timestep, 0 last) — on the tracked fixture models:
tests/fixtures/hv15/{dit,vae} (bf16-stored; run gen_hv15_vae.py / gen_hv15_dit.py first; the glyph projection at
its `glyph_hidden_dim`) and tests/fixtures/hv15/siglip (copy_hv15_small_cases.py). The image is a seeded smooth
96x128 RGB PNG, the bucket `target_size` 112 picks for it (so the pipeline's crop-resize is a copy); 5 frames.
transformer/, transformer_meanflow/, vae/, image_encoder/, feature_extractor/ are relative symlinks. Videos are not
stored (1.3 MB each; the decode is the T2V case's): latents, image latents/embeds and the schedule are.

usage: scripts/gen_hv15_pipeline_i2v.py FIXTURES_DIR [SEED]     (e.g. tests/fixtures/hv15; default seed 0)
"""
import json, os, shutil, sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

import diffusers
import diffusers.models.transformers.transformer_hunyuan_video15 as T
from diffusers import (AutoencoderKLHunyuanVideo15, ClassifierFreeGuidance, FlowMatchEulerDiscreteScheduler,
                       HunyuanVideo15ImageToVideoPipeline, HunyuanVideo15Transformer3DModel)
from transformers import SiglipImageProcessor, SiglipVisionModel

torch.set_grad_enabled(False)
root = sys.argv[1]
seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
g = torch.Generator().manual_seed(seed)
rng = np.random.default_rng(seed)
dit_dir, vae_dir = os.path.join(root, "dit", "transformer"), os.path.join(root, "vae", "vae")
mf_dir, sig_dir = os.path.join(root, "dit", "transformer_meanflow"), os.path.join(root, "siglip")
GLYPH_HIDDEN = json.load(open(os.path.join(dit_dir, "config.json")))["glyph_hidden_dim"]
TILING = dict(tile_sample_min_height=64, tile_sample_min_width=64, tile_latent_min_height=4, tile_latent_min_width=4,
              tile_overlap_factor=0.25)


class NarrowGlyphProjection(T.HunyuanVideo15ByT5TextProjection):
    def __init__(self, in_features, hidden_size, out_features):
        super().__init__(in_features, GLYPH_HIDDEN, out_features)


T.HunyuanVideo15ByT5TextProjection = NarrowGlyphProjection
dit = HunyuanVideo15Transformer3DModel.from_pretrained(dit_dir, torch_dtype=torch.float32).eval()
mf = HunyuanVideo15Transformer3DModel.from_pretrained(mf_dir, torch_dtype=torch.float32).eval()
vae = AutoencoderKLHunyuanVideo15.from_pretrained(vae_dir, torch_dtype=torch.float32).eval()
sig = SiglipVisionModel.from_pretrained(os.path.join(sig_dir, "image_encoder")).eval()
fe = SiglipImageProcessor.from_pretrained(os.path.join(sig_dir, "feature_extractor"))


def randn(*shape):
    return torch.randn(*shape, generator=g)


def masked(n, v):
    m = torch.zeros(1, n, dtype=torch.long)
    m[:, :v] = 1
    return m


frames, height, width, shift, mf_shift = 5, 96, 128, 5.0, 7.0
lat = randn(1, 4, (frames - 1) // 4 + 1, height // 16, width // 16)
emb = dict(prompt_embeds=randn(1, 12, 32), prompt_embeds_mask=masked(12, 9), negative_prompt_embeds=randn(1, 12, 32),
           negative_prompt_embeds_mask=masked(12, 4), prompt_embeds_2=randn(1, 8, 20), prompt_embeds_mask_2=masked(8, 5),
           negative_prompt_embeds_2=torch.zeros(1, 8, 20), negative_prompt_embeds_mask_2=torch.zeros(1, 8, dtype=torch.long))
small = rng.random((height // 16, width // 16, 3))
base = np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((width, height), Image.BICUBIC), np.float32)
img = Image.fromarray(np.clip(base + rng.normal(0.0, 8.0, size=(height, width, 3)), 0, 255).astype(np.uint8), "RGB")

d = os.path.join(root, "pipeline_i2v")
os.makedirs(d, exist_ok=True)
img.save(os.path.join(d, "image.png"))
img = Image.open(os.path.join(d, "image.png")).convert("RGB")
pipe = HunyuanVideo15ImageToVideoPipeline(text_encoder=None, tokenizer=None, transformer=dit, vae=vae,
                                          scheduler=FlowMatchEulerDiscreteScheduler(shift=shift), text_encoder_2=None,
                                          tokenizer_2=None, guider=ClassifierFreeGuidance(guidance_scale=6.0),
                                          image_encoder=sig, feature_extractor=fe)
pipe.set_progress_bar_config(disable=True)
for name in ["transformer", "vae", "image_encoder", "feature_extractor"]:  # never write through an old link
    if os.path.islink(os.path.join(d, name)):
        os.remove(os.path.join(d, name))
pipe.save_pretrained(d)
for name, target in [("transformer", "../dit/transformer"), ("vae", "../vae/vae"),
                     ("image_encoder", "../siglip/image_encoder"), ("feature_extractor", "../siglip/feature_extractor")]:
    shutil.rmtree(os.path.join(d, name))
    os.symlink(target, os.path.join(d, name))
if os.path.lexists(os.path.join(d, "transformer_meanflow")):
    os.remove(os.path.join(d, "transformer_meanflow"))
os.symlink("../dit/transformer_meanflow", os.path.join(d, "transformer_meanflow"))

bucket = pipe.video_processor.calculate_default_height_width(height=img.size[1], width=img.size[0],
                                                             target_size=pipe.target_size)
assert tuple(bucket) == (height, width), bucket
dev = torch.device("cpu")
outs = dict(dbg_image_latents=pipe._get_image_latents(vae, pipe.video_processor, img, height, width, dev),
            dbg_image_embeds=pipe._get_image_embeds(sig, fe, img, dev),
            dbg_siglip_pixel_values=fe.preprocess(images=img, do_resize=True, return_tensors="pt").pixel_values)
vae.enable_tiling(**TILING)
outs["dbg_image_latents_tiled"] = pipe._get_image_latents(vae, pipe.video_processor, img, height, width, dev)
vae.disable_tiling()
common = dict(image=img, num_frames=frames, num_inference_steps=4, return_dict=False, output_type="latent", **emb)
for gs, tiled in [(6.0, False), (6.0, True), (1.0, False)]:
    pipe.guider = ClassifierFreeGuidance(guidance_scale=gs)
    if tiled:
        vae.enable_tiling(**TILING)
    outs[f"final_latents_g{int(gs)}" + ("_tiled" if tiled else "")] = pipe(latents=lat.clone(), **common)[0]
    vae.disable_tiling()
outs["dbg_timesteps"] = pipe.scheduler.timesteps.clone()

calls = []
mf.register_forward_hook(lambda m, a, k, out: calls.append(k["timestep_r"].clone()), with_kwargs=True)
pipe_mf = HunyuanVideo15ImageToVideoPipeline(text_encoder=None, tokenizer=None, transformer=mf, vae=vae,
                                             scheduler=FlowMatchEulerDiscreteScheduler(shift=mf_shift),
                                             text_encoder_2=None, tokenizer_2=None,
                                             guider=ClassifierFreeGuidance(guidance_scale=1.0),
                                             image_encoder=sig, feature_extractor=fe)
pipe_mf.set_progress_bar_config(disable=True)
outs["final_latents_meanflow"] = pipe_mf(latents=lat.clone(), **common)[0]
outs["dbg_meanflow_timesteps"] = pipe_mf.scheduler.timesteps.clone()
outs["dbg_meanflow_timestep_r"] = torch.cat(calls)

save_file({k: v.float().contiguous() for k, v in dict(latents=lat, **emb).items()}, os.path.join(d, "inputs.safetensors"))
save_file({k: v.float().contiguous() for k, v in outs.items()}, os.path.join(d, "outputs.safetensors"))
case = dict(kind="pipeline_i2v", pipeline_class="HunyuanVideo15ImageToVideoPipeline", seed=seed, num_frames=frames,
            image="image.png", image_size_hw=[height, width], bucket_hw=list(bucket), target_size=pipe.target_size,
            num_inference_steps=4, shift=shift, meanflow_shift=mf_shift, vae_tiling=TILING,
            runs=["final_latents_g6", "final_latents_g6_tiled (VAE tiling: also the image encode)", "final_latents_g1",
                  "final_latents_meanflow (transformer_meanflow, guidance 1, shift 7)"],
            embeds="prompt 9 of 12 valid, negative 4 of 12; glyph 5 of 8, negative glyph zeros with a zero mask",
            outputs={"dbg_image_latents(_tiled)": "vae.encode(preprocess(image)).latent_dist.mode() * scaling_factor",
                     "dbg_image_embeds": "_get_image_embeds(image) (SigLIP last_hidden_state)",
                     "dbg_meanflow_timestep_r": "timestep_r per call: next timestep, 0 at the last"},
            inputs={k: list(v.shape) for k, v in dict(latents=lat, **emb).items()},
            versions=dict(diffusers=diffusers.__version__, torch=torch.__version__))
json.dump(case, open(os.path.join(d, "case.json"), "w"), indent=2)
print("wrote", d, {k: tuple(v.shape) for k, v in outs.items()})
