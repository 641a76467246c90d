#!/usr/bin/env python3
"""Reference outputs from Hugging Face diffusers/transformers for tiny, randomly
initialised Wan2.x models, saved in the diffusers folder layout so that a Rust
implementation can load the very same checkpoint files and compare.

This is the project's generator of both golden sets: tests/fixtures/golden/ (seed 0, the "public"
shapes of the shared reference set /work/shared/golden, written by its gen.py) and
tests/fixtures/golden-seed1/ (seed 1, the "hidden" odd shapes). It is the shared gen.py with two
changes:

* every model's weights are rounded to bfloat16 after the perturbation and stored as bf16
  safetensors (`save_pretrained` after `.to(torch.bfloat16)`), which halves the fixtures; every
  reference output is still computed in float32, from those very rounded values (the f32 model holds
  exactly the bf16 values), so a loader that upcasts bf16 storage to f32 meets the same f32
  tolerances as on f32-stored weights. The random draws are the shared script's, in the same order
  (rounding draws nothing), so seed 0 / public gives the shared models rounded to bf16;
* weight files that several cases share are relative symlinks to one stored copy.

usage: gen_golden.py OUT_DIR SEED public|hidden
  (tests/fixtures/golden = `gen_golden.py OUT 0 public`, golden-seed1 = `gen_golden.py OUT 1 hidden`)
Each case writes OUT_DIR/<case>/ with the model folder(s), inputs.safetensors,
outputs.safetensors and case.json describing what was run. Weight files that several cases share
(the pipelines' vae/ and transformer/, the prompt case's text_encoder/) are replaced by relative
symlinks to the one stored copy, as tests/fixtures does everywhere.
"""
import copy, json, os, sys
import torch
from safetensors.torch import save_file
from diffusers import (AutoencoderKLWan, WanTransformer3DModel,
                       UniPCMultistepScheduler, FlowMatchEulerDiscreteScheduler, WanPipeline)
from transformers import UMT5EncoderModel, UMT5Config

torch.set_grad_enabled(False)

if len(sys.argv) != 4 or sys.argv[3] not in ("public", "hidden"):
    sys.exit(__doc__)
out_root, seed, variant = sys.argv[1], int(sys.argv[2]), sys.argv[3]
torch.manual_seed(seed)
g = torch.Generator().manual_seed(seed)

def randn(*shape, scale=1.0):
    return torch.randn(*shape, generator=g) * scale

def perturb(model, scale=0.02):
    # Random init leaves some tensors at exact zeros/ones; perturb all of them so
    # that every weight influences the output.
    for p in model.parameters():
        p.add_(randn(*p.shape, scale=scale))
        # Round to bf16 (the stored dtype); every reference is then computed in f32 from the rounded
        # values. Parameters only: buffers such as the DiT's RoPE tables are recomputed in f32 on
        # load, so `model.to(bfloat16)` (which rounds them too) would skew the references.
        p.copy_(p.to(torch.bfloat16).to(torch.float32))
    return model.eval()

def save_bf16(model, path):
    # Store the (already bf16-exact) weights as bf16 from a copy, so the in-memory model (buffers
    # included) stays exactly f32.
    copy.deepcopy(model).to(torch.bfloat16).save_pretrained(path, safe_serialization=True)

def link(path, target):
    # Replace a weight file written by a pipeline's save_pretrained with a relative symlink to the
    # stored bf16 copy (same values; the pipeline ran on the f32 upcast of exactly those).
    os.remove(path)
    os.symlink(os.path.relpath(target, os.path.dirname(path)), path)

def write_case(name, desc, inputs, outputs):
    d = os.path.join(out_root, name)
    os.makedirs(d, exist_ok=True)
    save_file({k: v.contiguous().float() for k, v in inputs.items()}, os.path.join(d, "inputs.safetensors"))
    save_file({k: v.contiguous().float() for k, v in outputs.items()}, os.path.join(d, "outputs.safetensors"))
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(desc, f, indent=2)
    print("wrote", d)

# Model configs and shapes. lat: latent (T, H, W) to decode; tile: (min_h, min_w, stride_h, stride_w) in pixels.
PUBLIC = dict(  # the configs and shapes of the published cases (/work/shared/golden)
    vae21=dict(base_dim=16, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
               temperal_downsample=[False, True, True],
               latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 2.0, 0.8, 1.2]),
    vae22=dict(base_dim=16, decoder_base_dim=24, z_dim=8, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
               temperal_downsample=[False, True, True], is_residual=True, patch_size=2,
               in_channels=12, out_channels=12, scale_factor_spatial=16,
               latents_mean=[0.1 * i for i in range(8)], latents_std=[1.0 + 0.1 * i for i in range(8)]),
    vae21_lat=(3, 10, 12), vae21_tile=(48, 48, 32, 32),
    vae22_lat=(3, 6, 8), vae22_tile=(64, 64, 32, 48),
    dit=dict(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=12,
             in_channels=8, out_channels=8, text_dim=32, freq_dim=32, ffn_dim=64,
             num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
             eps=1e-6, rope_max_seq_len=1024),
    dit_lat=(3, 6, 8), dit_ctx=16, dit_t=500.0,
    flow_shift=5.0, sched_steps=10, sched_sample=(1, 4, 2, 3, 3),
    t5=dict(vocab_size=300, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4),
    t5_tokens=12,
    pipe_hwf=(96, 128, 9), pipe_ctx=16,
    prompts=["A white cat wearing sunglasses sits on a surfboard, summer beach style.",
             "  Two cats &amp; bright gloves   fight on a stage  "],
    max_seq=64,
)
HIDDEN = dict(  # the odd shapes of golden-seed1: nothing divides evenly
    vae21=dict(base_dim=16, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
               temperal_downsample=[False, True, True],
               latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 2.0, 0.8, 1.2]),
    vae22=dict(base_dim=16, decoder_base_dim=24, z_dim=8, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
               temperal_downsample=[False, True, True], is_residual=True, patch_size=2,
               in_channels=12, out_channels=12, scale_factor_spatial=16,
               latents_mean=[0.1 * i for i in range(8)], latents_std=[1.0 + 0.1 * i for i in range(8)]),
    # Wan2.1: latent 9x13 (72x104 px) under 40x56 tiles every 24x40 px: 3x3 tiles, clipped edge tiles.
    vae21_lat=(2, 9, 13), vae21_tile=(40, 56, 24, 40),
    # Wan2.2: latent 5x3 (80x48 px) under 48x64 tiles every 32x32 px: 3x2 tiles, one-row/one-column edges.
    vae22_lat=(2, 5, 3), vae22_tile=(48, 64, 32, 32),
    dit=dict(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=12,
             in_channels=8, out_channels=8, text_dim=32, freq_dim=32, ffn_dim=64,
             num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
             eps=1e-6, rope_max_seq_len=1024),
    dit_lat=(2, 8, 6), dit_ctx=11, dit_t=731.0,
    flow_shift=3.0, sched_steps=7, sched_sample=(1, 4, 2, 3, 3),
    t5=dict(vocab_size=300, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4),
    t5_tokens=9,
    pipe_hwf=(96, 64, 5), pipe_ctx=16,  # portrait: 64 wide, 96 high, 5 frames (latent 2x6x4)
    prompts=["Crystal-clear waters and distant green hills; a close-up of the feline.",
             "\u00e9 unknown \u2713 tokens"],
    max_seq=64,
)
P = PUBLIC if variant == "public" else HIDDEN
# ---------------------------------------------------------------- VAE cases
vae_cfgs = {"vae21": P["vae21"], "vae22": P["vae22"]}
shapes = {"vae21": dict(lat=P["vae21_lat"], tile=P["vae21_tile"]),
          "vae22": dict(lat=P["vae22_lat"], tile=P["vae22_tile"])}
for name, cfg in vae_cfgs.items():
    vae = perturb(AutoencoderKLWan(**cfg))
    d = os.path.join(out_root, name)
    save_bf16(vae, os.path.join(d, "vae"))
    t, h, w = shapes[name]["lat"]
    z = randn(1, cfg["z_dim"], t, h, w)
    full = vae.decode(z).sample
    th, tw, sh, sw = shapes[name]["tile"]
    vae.enable_tiling(tile_sample_min_height=th, tile_sample_min_width=tw,
                      tile_sample_stride_height=sh, tile_sample_stride_width=sw)
    tiled = vae.decode(z).sample
    vae.disable_tiling()
    # encode a smooth-ish video in [-1, 1]
    x = torch.tanh(randn(1, 3, full.shape[2], full.shape[3], full.shape[4]))
    moments = vae.encode(x).latent_dist
    vae.enable_tiling(tile_sample_min_height=th, tile_sample_min_width=tw,
                      tile_sample_stride_height=sh, tile_sample_stride_width=sw)
    moments_tiled = vae.encode(x).latent_dist
    write_case(name,
               dict(kind="vae", model_dir="vae", latent_thw=[t, h, w],
                    tiling=dict(tile_sample_min_height=th, tile_sample_min_width=tw,
                                tile_sample_stride_height=sh, tile_sample_stride_width=sw),
                    outputs={"decoded": "vae.decode(latents).sample, untiled",
                             "decoded_tiled": "vae.decode(latents).sample with enable_tiling(tiling)",
                             "enc_mean": "vae.encode(video).latent_dist.mean, untiled",
                             "enc_logvar": "vae.encode(video).latent_dist.logvar, untiled",
                             "enc_mean_tiled": "latent_dist.mean with tiling"},
                    note="weights stored bf16, computed float32 from the rounded values, CPU, torch %s" % torch.__version__),
               dict(latents=z, video=x),
               dict(decoded=full, decoded_tiled=tiled, enc_mean=moments.mean,
                    enc_logvar=moments.logvar, enc_mean_tiled=moments_tiled.mean))

# ---------------------------------------------------------------- transformer
dit_cfg = P["dit"]
dit = perturb(WanTransformer3DModel(**dit_cfg))
d = os.path.join(out_root, "dit")
save_bf16(dit, os.path.join(d, "transformer"))
lt, lh, lw = P["dit_lat"]
x = randn(1, dit_cfg["in_channels"], lt, lh, lw)
ctx = randn(1, P["dit_ctx"], dit_cfg["text_dim"])
ts = torch.tensor([P["dit_t"]])
out = dit(hidden_states=x, timestep=ts, encoder_hidden_states=ctx, return_dict=False)[0]
seq = lt * (lh // 2) * (lw // 2)
ts_tok = torch.linspace(999.0, 0.0, seq).unsqueeze(0)  # per-token timesteps (TI2V expand_timesteps)
ts_tok[:, : (lh // 2) * (lw // 2)] = 0.0  # first latent frame is the conditioning image
out_tok = dit(hidden_states=x, timestep=ts_tok, encoder_hidden_states=ctx, return_dict=False)[0]
write_case("dit", dict(kind="transformer", model_dir="transformer",
                       outputs={"out": "transformer(latents, timestep, context)",
                                "out_per_token": "transformer(latents, timestep_per_token, context)"}),
           dict(latents=x, context=ctx, timestep=ts, timestep_per_token=ts_tok),
           dict(out=out, out_per_token=out_tok))

# ---------------------------------------------------------------- schedulers
unipc_cfg = dict(num_train_timesteps=1000, solver_order=2, prediction_type="flow_prediction",
                 use_flow_sigmas=True, flow_shift=P["flow_shift"], solver_type="bh2",
                 lower_order_final=True, final_sigmas_type="zero", timestep_spacing="linspace",
                 predict_x0=True)
steps = P["sched_steps"]
outs = {}
for sname, sched in (("unipc", UniPCMultistepScheduler(**unipc_cfg)),
                     ("euler", FlowMatchEulerDiscreteScheduler(shift=unipc_cfg["flow_shift"]))):
    sched.set_timesteps(steps)
    sample = randn(*P["sched_sample"])
    outs[f"{sname}_init"] = sample.clone()
    outs[f"{sname}_timesteps"] = sched.timesteps.float()
    outs[f"{sname}_sigmas"] = sched.sigmas.float()
    for i, t in enumerate(sched.timesteps):
        model_out = torch.sin(sample * (i + 1)) + 0.1 * i  # deterministic stand-in for the DiT
        sample = sched.step(model_out, t, sample, return_dict=False)[0]
        outs[f"{sname}_step{i}"] = sample.clone()
d = os.path.join(out_root, "scheduler")
os.makedirs(d, exist_ok=True)
write_case("scheduler", dict(kind="scheduler", unipc_config=unipc_cfg, steps=steps,
                             euler_config=dict(shift=unipc_cfg["flow_shift"]),
                             model_output="model_out = sin(sample * (i + 1)) + 0.1 * i at step i"),
           {}, outs)

# ---------------------------------------------------------------- UMT5 encoder
t5cfg = UMT5Config(**P["t5"],
                   relative_attention_num_buckets=32, relative_attention_max_distance=128,
                   feed_forward_proj="gated-gelu", dropout_rate=0.0)
t5 = perturb(UMT5EncoderModel(t5cfg))
d = os.path.join(out_root, "umt5")
if variant == "public":
    # The public set's UMT5 keeps f32 storage (of the bf16-exact values): Tessera runs a text encoder
    # in its stored dtype, and the CLI prompt tests compare an f32 run with the f32 references.
    t5.save_pretrained(os.path.join(d, "text_encoder"), safe_serialization=True)
else:
    save_bf16(t5, os.path.join(d, "text_encoder"))
n = P["t5_tokens"]
ids = torch.randint(2, 300, (1, n), generator=g)
ids[0, -1] = 1  # eos
mask = torch.ones(1, n, dtype=torch.long)
hs = t5(input_ids=ids, attention_mask=mask).last_hidden_state
write_case("umt5", dict(kind="text_encoder", model_dir="text_encoder",
                        outputs={"hidden": "UMT5EncoderModel(input_ids, attention_mask).last_hidden_state"}),
           dict(input_ids=ids.float(), attention_mask=mask.float()), dict(hidden=hs))

# ---------------------------------------------------------------- whole TI2V-style pipeline
vae = AutoencoderKLWan.from_pretrained(os.path.join(out_root, "vae22", "vae")).to(torch.float32)
pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=vae,
                   scheduler=UniPCMultistepScheduler(**unipc_cfg), transformer=dit,
                   expand_timesteps=True)
H, W, F = P["pipe_hwf"]
lat = randn(1, vae.config.z_dim, (F - 1) // 4 + 1, H // 16, W // 16)
pe = randn(1, P["pipe_ctx"], dit_cfg["text_dim"])
ne = randn(1, P["pipe_ctx"], dit_cfg["text_dim"])
res = pipe(prompt_embeds=pe, negative_prompt_embeds=ne, latents=lat.clone(), height=H, width=W,
           num_frames=F, num_inference_steps=4, guidance_scale=5.0, output_type="pt",
           return_dict=False)[0]
res_lat = pipe(prompt_embeds=pe, negative_prompt_embeds=ne, latents=lat.clone(), height=H, width=W,
               num_frames=F, num_inference_steps=4, guidance_scale=5.0, output_type="latent",
               return_dict=False)[0]
d = os.path.join(out_root, "pipeline")
pipe.save_pretrained(d)  # model_index.json, scheduler/, transformer/, vae/ exactly as diffusers writes them
WEIGHTS = {"vae": os.path.join(out_root, "vae22", "vae", "diffusion_pytorch_model.safetensors"),
           "transformer": os.path.join(out_root, "dit", "transformer", "diffusion_pytorch_model.safetensors")}
for sub, target in WEIGHTS.items():
    link(os.path.join(d, sub, "diffusion_pytorch_model.safetensors"), target)
write_case("pipeline", dict(kind="pipeline", expand_timesteps=True, height=H, width=W, num_frames=F,
                            num_inference_steps=4, guidance_scale=5.0,
                            outputs={"video": "WanPipeline(..., output_type='pt') frames in [0,1], shape (B, F, C, H, W)",
                                     "final_latents": "same call with output_type='latent'"}),
           dict(latents=lat, prompt_embeds=pe, negative_prompt_embeds=ne),
           dict(video=res, final_latents=res_lat))

# ---------------------------------------------------------------- TI2V image-to-video pipeline
from diffusers import WanImageToVideoPipeline
import numpy as np
from PIL import Image
rng = np.random.default_rng(seed)
# a smooth image: low-frequency noise upsampled, so the VAE sees structure
small = rng.random((H // 16, W // 16, 3))
img = Image.fromarray((small * 255).astype(np.uint8)).resize((W, H), Image.BICUBIC)
pipe_i2v = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=vae,
                                   scheduler=UniPCMultistepScheduler(**unipc_cfg), transformer=dit,
                                   image_encoder=None, image_processor=None, expand_timesteps=True)
res_i2v = pipe_i2v(image=img, prompt_embeds=pe, negative_prompt_embeds=ne, latents=lat.clone(), height=H,
                   width=W, num_frames=F, num_inference_steps=4, guidance_scale=5.0, output_type="pt",
                   return_dict=False)[0]
d = os.path.join(out_root, "pipeline_i2v")
pipe_i2v.save_pretrained(d)
for sub, target in WEIGHTS.items():
    link(os.path.join(d, sub, "diffusion_pytorch_model.safetensors"), target)
img.save(os.path.join(d, "image.png"))
write_case("pipeline_i2v", dict(kind="pipeline_i2v", expand_timesteps=True, height=H, width=W, num_frames=F,
                                num_inference_steps=4, guidance_scale=5.0, image="image.png",
                                outputs={"video": "WanImageToVideoPipeline(image=image.png, ..., output_type='pt') frames in [0,1], shape (B, F, C, H, W)"}),
           dict(latents=lat, prompt_embeds=pe, negative_prompt_embeds=ne), dict(video=res_i2v))

# ---------------------------------------------------------------- prompt -> embeddings (tokenizer + UMT5)
from tokenizers import Tokenizer, models, trainers, pre_tokenizers, decoders, normalizers
from transformers import T5TokenizerFast
corpus = ["Summer beach vacation style, a white cat wearing sunglasses sits on a surfboard.",
          "Two anthropomorphic cats in comfy boxing gear and bright gloves fight intensely on a spotlighted stage.",
          "A close-up shot highlights the feline's intricate details and the refreshing atmosphere of the seaside.",
          "Blurred beach scenery forms the background featuring crystal-clear waters, distant green hills."] * 4
tok = Tokenizer(models.Unigram())
tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace("  ", " ")])
tok.pre_tokenizer = pre_tokenizers.Metaspace()
tok.decoder = decoders.Metaspace()
tok.train_from_iterator(corpus, trainers.UnigramTrainer(vocab_size=300 - 3, special_tokens=["<pad>", "</s>", "<unk>"],
                                                       unk_token="<unk>"))
from tokenizers.processors import TemplateProcessing
tok.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))])
fast = T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0)
d = os.path.join(out_root, "prompt")
pipe_txt = WanPipeline(tokenizer=fast, text_encoder=t5, vae=None, scheduler=None, transformer=None)
pipe_txt.save_pretrained(d)  # model_index.json, tokenizer/, text_encoder/
link(os.path.join(d, "text_encoder", "model.safetensors"), os.path.join(out_root, "umt5", "text_encoder", "model.safetensors"))
prompts = P["prompts"]
max_seq = P["max_seq"]
outs = {}
for i, p in enumerate(prompts):
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean
    ids = fast(prompt_clean(p), padding="max_length", max_length=max_seq, truncation=True, add_special_tokens=True,
               return_attention_mask=True, return_tensors="pt")
    emb = pipe_txt._get_t5_prompt_embeds(prompt=p, max_sequence_length=max_seq, device=torch.device("cpu"),
                                          dtype=torch.float32)
    outs[f"ids_{i}"] = ids.input_ids.float()
    outs[f"mask_{i}"] = ids.attention_mask.float()
    outs[f"prompt_embeds_{i}"] = emb
write_case("prompt", dict(kind="prompt", model_dirs=["tokenizer", "text_encoder"], max_sequence_length=max_seq,
                          prompts=prompts, cleaned=[__import__('diffusers.pipelines.wan.pipeline_wan', fromlist=['x']).prompt_clean(p) for p in prompts],
                          cleaning="html.unescape twice, strip, collapse whitespace (ftfy not installed, so not applied)",
                          outputs={"ids_i/mask_i": "tokenizer(cleaned_i, padding='max_length', max_length=%d, truncation=True)" % max_seq,
                                   "prompt_embeds_i": "WanPipeline._get_t5_prompt_embeds(prompt_i, max_sequence_length=%d): UMT5 states trimmed to the prompt's length, zero-padded to %d" % (max_seq, max_seq)}),
           {}, outs)
