#!/usr/bin/env python3
"""The HunyuanVideo 1.5 text-to-video pipeline case Tessera's CI tests against (tests/fixtures/hv15/pipeline).

As the shared generator's `pipeline` case (`gen_hv15.py`): `HunyuanVideo15Pipeline` with the text encoders
absent and the prompt embeddings passed in, FlowMatchEuler(shift 5), 4 steps, guidance 6 (CFG: cond and
uncond per step) and 1 (one forward per step) — but on the small bf16-stored fixture models of
tests/fixtures/hv15/{dit,vae} (run scripts/gen_hv15_vae.py and gen_hv15_dit.py first; the transformer's
glyph projection is built at its `glyph_hidden_dim` as there) and a small latent [1,4,2,2,3] (5 frames, 32x48).
transformer/ and vae/ are relative symlinks to ../dit/transformer and ../vae/vae.

usage: scripts/gen_hv15_pipeline.py FIXTURES_DIR [SEED]     (e.g. tests/fixtures/hv15; default seed 0)
"""
import json, os, shutil, sys

import torch
from safetensors.torch import save_file

import diffusers
import diffusers.models.transformers.transformer_hunyuan_video15 as T
from diffusers import (AutoencoderKLHunyuanVideo15, ClassifierFreeGuidance, FlowMatchEulerDiscreteScheduler,
                       HunyuanVideo15Pipeline, HunyuanVideo15Transformer3DModel)

torch.set_grad_enabled(False)
root = sys.argv[1]
seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
g = torch.Generator().manual_seed(seed)
dit_dir, vae_dir = os.path.join(root, "dit", "transformer"), os.path.join(root, "vae", "vae")
GLYPH_HIDDEN = json.load(open(os.path.join(dit_dir, "config.json")))["glyph_hidden_dim"]


class NarrowGlyphProjection(T.HunyuanVideo15ByT5TextProjection):
    def __init__(self, in_features, hidden_size, out_features):
        super().__init__(in_features, GLYPH_HIDDEN, out_features)


T.HunyuanVideo15ByT5TextProjection = NarrowGlyphProjection
dit = HunyuanVideo15Transformer3DModel.from_pretrained(dit_dir, torch_dtype=torch.float32).eval()
vae = AutoencoderKLHunyuanVideo15.from_pretrained(vae_dir, torch_dtype=torch.float32).eval()


def randn(*shape):
    return torch.randn(*shape, generator=g)


def masked(n, v):
    m = torch.zeros(1, n, dtype=torch.long)
    m[:, :v] = 1
    return m


frames, height, width, shift = 5, 32, 48, 5.0
lat = randn(1, 4, (frames - 1) // 4 + 1, height // 16, width // 16)
emb = dict(prompt_embeds=randn(1, 12, 32), prompt_embeds_mask=masked(12, 9), negative_prompt_embeds=randn(1, 12, 32),
           negative_prompt_embeds_mask=masked(12, 4), prompt_embeds_2=randn(1, 8, 20), prompt_embeds_mask_2=masked(8, 5),
           negative_prompt_embeds_2=torch.zeros(1, 8, 20), negative_prompt_embeds_mask_2=torch.zeros(1, 8, dtype=torch.long))
pipe = HunyuanVideo15Pipeline(text_encoder=None, tokenizer=None, transformer=dit, vae=vae,
                              scheduler=FlowMatchEulerDiscreteScheduler(shift=shift), text_encoder_2=None,
                              tokenizer_2=None, guider=ClassifierFreeGuidance(guidance_scale=6.0))
pipe.set_progress_bar_config(disable=True)
d = os.path.join(root, "pipeline")
pipe.save_pretrained(d)
for name, target in [("transformer", "../dit/transformer"), ("vae", "../vae/vae")]:
    shutil.rmtree(os.path.join(d, name))
    os.symlink(target, os.path.join(d, name))

outs = {}
common = dict(num_frames=frames, height=height, width=width, num_inference_steps=4, return_dict=False, **emb)
for gs, ot in [(6.0, "latent"), (6.0, "pt"), (1.0, "latent")]:
    pipe.guider = ClassifierFreeGuidance(guidance_scale=gs)
    key = ("final_latents_" if ot == "latent" else "video_") + f"g{int(gs)}"
    outs[key] = pipe(latents=lat.clone(), output_type=ot, **common)[0]
outs["dbg_timesteps"] = pipe.scheduler.timesteps.clone()
outs["dbg_sigmas"] = pipe.scheduler.sigmas.clone()
inputs = dict(latents=lat, **emb)
save_file({k: v.float().contiguous() for k, v in inputs.items()}, os.path.join(d, "inputs.safetensors"))
save_file({k: v.float().contiguous() for k, v in outs.items()}, os.path.join(d, "outputs.safetensors"))
case = dict(kind="pipeline", pipeline_class="HunyuanVideo15Pipeline", seed=seed, num_frames=frames, height=height,
            width=width, num_inference_steps=4, shift=shift, sigmas="np.linspace(1, 0, 5)[:-1] (pipeline default)",
            guidance="ClassifierFreeGuidance: uncond + g*(cond - uncond); g=1 runs one forward per step",
            embeds="prompt 9 of 12 valid, negative 4 of 12; glyph 5 of 8, negative glyph zeros with a zero mask",
            outputs={"final_latents_g6 / final_latents_g1": "output_type='latent' (not divided by scaling_factor)",
                     "video_g6": "output_type='pt': (B, F, C, H, W) = clamp(decode(latents/scaling_factor)/2 + 0.5, 0, 1)"},
            inputs={k: list(v.shape) for k, v in inputs.items()}, versions=dict(diffusers=diffusers.__version__,
                                                                               torch=torch.__version__))
json.dump(case, open(os.path.join(d, "case.json"), "w"), indent=2)
print("wrote", d)
