#!/usr/bin/env python3
"""Configuration sweep: reference outputs from Hugging Face diffusers/transformers for a few dozen
tiny, random configurations of every model part Tessera ports (Wan VAE 2.1/2.2, the Wan
transformer, UMT5, the UniPC and FlowMatchEuler schedulers), so parity is checked on many shapes,
not only on the golden fixtures' one.

usage: gen_sweep.py OUT_DIR      (the repository's copy lives in tests/fixtures/sweep/)
Needs: pip install torch diffusers==0.42.1 transformers safetensors. Not run in CI; the Rust tests
(engine/tests/sweep_*.rs) read what it writes.

Recipe (as the golden fixtures'): random init, then every parameter perturbed so nothing is exactly
zero or one. To keep all cases together under 5 MB the weights are rounded to bfloat16 and saved
as bfloat16 (the dtype of the published checkpoints); the references are computed in float32 from
those rounded values, so a float32 port loading the file sees exactly the weights diffusers ran.

Layout: OUT_DIR/index.json lists every case by part; OUT_DIR/<part>/<case>/ holds case.json (the
config and what was run), inputs.safetensors, outputs.safetensors (float32) and the model folder as
save_pretrained writes it (transformer/, vae/, text_encoder/, scheduler/).
"""
import json
import os
import shutil
import sys

import torch
import diffusers
import transformers
from safetensors.torch import save_file
from diffusers import (AutoencoderKLWan, WanTransformer3DModel, UniPCMultistepScheduler,
                       FlowMatchEulerDiscreteScheduler)
from diffusers.utils import logging as dlogging
from transformers import UMT5Config, UMT5EncoderModel

torch.set_grad_enabled(False)
dlogging.set_verbosity_error()
dlogging.disable_progress_bar()

SEED = 21
torch.manual_seed(SEED)  # module init draws from the global generator
g = torch.Generator().manual_seed(SEED)
VERSIONS = "diffusers %s, transformers %s, torch %s; float32, CPU" % (
    diffusers.__version__, transformers.__version__, torch.__version__)


def randn(*shape, scale=1.0):
    return torch.randn(*shape, generator=g) * scale


def rand_int(lo, hi, shape):
    return torch.randint(lo, hi, shape, generator=g)


def perturb_bf16(model, scale=0.02):
    """Perturb every parameter, then round it to bf16 (kept as f32 for the reference run)."""
    for p in model.parameters():
        p.add_(randn(*p.shape, scale=scale))
        p.copy_(p.to(torch.bfloat16).float())
    return model.eval()


def save_bf16(model, folder):
    model.to(torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    model.to(torch.float32)


def write_case(root, part, name, desc, inputs, outputs):
    d = os.path.join(root, part, name)
    os.makedirs(d, exist_ok=True)
    if inputs:
        save_file({k: v.contiguous().float() for k, v in inputs.items()}, os.path.join(d, "inputs.safetensors"))
    save_file({k: v.contiguous().float() for k, v in outputs.items()}, os.path.join(d, "outputs.safetensors"))
    desc = dict(desc, generated_by="scripts/gen_sweep.py", versions=VERSIONS)
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(desc, f, indent=1)
    return d


# ------------------------------------------------------------------------------------ transformer
# Head dims 6..40 (10, 16, 22, 28, 34, 40 are the ≡ 4 mod 6 ones whose RoPE split is uneven), 1-5
# heads, freq/ffn/text dims, patch sizes, odd token grids, text lengths 1..33, batch 2 and
# per-token timesteps (TI2V-style first frame 0, or a different timestep for every token).
# lat: latent (F, H, W); tok: "ti2v" | "random" per-token timesteps.
DIT_BASE = dict(patch_size=(1, 2, 2), in_channels=4, out_channels=4, text_dim=16, freq_dim=32, ffn_dim=32,
                num_layers=1, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
                rope_max_seq_len=1024)
DIT_CASES = [
    # The case: the golden `dit` config with head dim 16.
    ("hd16_h4_golden", dict(num_attention_heads=4, attention_head_dim=16, in_channels=8, out_channels=8,
                            text_dim=32, ffn_dim=64, num_layers=2), dict(lat=(3, 6, 8), ctx=16, tok="ti2v")),
    ("hd10_h5", dict(num_attention_heads=5, attention_head_dim=10), dict(lat=(3, 4, 6), ctx=7, tok="ti2v")),
    ("hd22_h2", dict(num_attention_heads=2, attention_head_dim=22, num_layers=2), dict(lat=(2, 6, 4), ctx=9, tok="random")),
    ("hd16_h2_freq64", dict(num_attention_heads=2, attention_head_dim=16, freq_dim=64), dict(lat=(4, 2, 6), ctx=5, tok="ti2v")),
    ("hd14_h3", dict(num_attention_heads=3, attention_head_dim=14, ffn_dim=20), dict(lat=(3, 2, 10), ctx=3, tok="ti2v")),
    ("hd8_h5", dict(num_attention_heads=5, attention_head_dim=8, text_dim=7), dict(lat=(2, 4, 4), ctx=1, tok="random")),
    ("hd6_h4", dict(num_attention_heads=4, attention_head_dim=6, freq_dim=16), dict(lat=(5, 2, 2), ctx=4, tok="ti2v")),
    ("hd12_h3_batch2", dict(num_attention_heads=3, attention_head_dim=12), dict(lat=(2, 4, 6), ctx=6, tok="ti2v", batch=2)),
    ("hd18_h2", dict(num_attention_heads=2, attention_head_dim=18, freq_dim=48, ffn_dim=48), dict(lat=(1, 6, 6), ctx=11, tok="random")),
    ("hd20_h3_nocrossnorm", dict(num_attention_heads=3, attention_head_dim=20, cross_attn_norm=False),
     dict(lat=(3, 4, 2), ctx=8, tok="ti2v")),
    ("hd24_h2_ffn96", dict(num_attention_heads=2, attention_head_dim=24, ffn_dim=96, text_dim=24), dict(lat=(2, 2, 2), ctx=2, tok="ti2v")),
    ("hd26_h1", dict(num_attention_heads=1, attention_head_dim=26, freq_dim=256), dict(lat=(3, 6, 2), ctx=33, tok="random")),
    ("hd28_h2_in12", dict(num_attention_heads=2, attention_head_dim=28, in_channels=12, out_channels=4),
     dict(lat=(2, 4, 4), ctx=5, tok="ti2v")),
    ("hd32_h1_patch111", dict(num_attention_heads=1, attention_head_dim=32, patch_size=(1, 1, 1)),
     dict(lat=(2, 3, 5), ctx=6, tok="random")),
    ("hd34_h1", dict(num_attention_heads=1, attention_head_dim=34, freq_dim=20), dict(lat=(4, 4, 2), ctx=4, tok="ti2v")),
    ("hd40_h1_patch222", dict(num_attention_heads=1, attention_head_dim=40, patch_size=(2, 2, 2), ffn_dim=16),
     dict(lat=(4, 4, 6), ctx=3, tok="ti2v")),
    ("hd10_h2_single_token", dict(num_attention_heads=2, attention_head_dim=10), dict(lat=(1, 2, 2), ctx=5, tok="ti2v")),
    # Wan2.1 I2V: CLIP image tokens through add_k/add_v (diffusers splits the context at len − 512,
    # so the text is 512 tokens).
    ("hd12_h2_image", dict(num_attention_heads=2, attention_head_dim=12, text_dim=4, image_dim=6,
                           added_kv_proj_dim=24), dict(lat=(2, 2, 4), ctx=512, tok="ti2v", image=5)),
]


def gen_transformer(root):
    names = []
    for name, over, shape in DIT_CASES:
        cfg = dict(DIT_BASE, **over)
        model = perturb_bf16(WanTransformer3DModel(**cfg))
        b = shape.get("batch", 1)
        f, h, w = shape["lat"]
        pt, ph, pw = cfg["patch_size"]
        x = randn(b, cfg["in_channels"], f, h, w)
        ctx = randn(b, shape["ctx"], cfg["text_dim"])
        img = randn(b, shape["image"], cfg["image_dim"]) if "image" in shape else None
        ts = torch.tensor([700.0, 120.0][:b])
        seq = (f // pt) * (h // ph) * (w // pw)
        per_frame = (h // ph) * (w // pw)
        if shape["tok"] == "ti2v":  # expand_timesteps: first latent frame is the conditioning image
            ts_tok = torch.full((b, seq), 0.0)
            ts_tok[:, per_frame:] = ts.view(b, 1)
        else:
            ts_tok = torch.rand(b, seq, generator=g) * 999.0

        def run(t):
            return model(hidden_states=x, timestep=t, encoder_hidden_states=ctx, encoder_hidden_states_image=img,
                         return_dict=False)[0]

        inputs = dict(latents=x, context=ctx, timestep=ts, timestep_per_token=ts_tok)
        if img is not None:
            inputs["image_embeds"] = img
        d = write_case(root, "transformer", name,
                       dict(kind="transformer", model_dir="transformer", config=cfg, latent_fhw=[f, h, w], batch=b,
                            per_token=shape["tok"],
                            outputs={"out": "transformer(latents, timestep, context)",
                                     "out_per_token": "transformer(latents, timestep_per_token, context)"},
                            note="image_embeds (if any) go in as encoder_hidden_states_image"),
                       inputs, dict(out=run(ts), out_per_token=run(ts_tok)))
        save_bf16(model, os.path.join(d, "transformer"))
        names.append(name)
    return names


# -------------------------------------------------------------------------------------------- VAE
# Wan2.1 (plain) and Wan2.2 (residual, patch 2) VAEs: base/decoder/z dims, res blocks, 2-4 stages
# (dim_mult), temporal downsampling patterns, odd latent sizes, batch 2. lat: latent (T, H, W).
# diffusers encodes in chunks of 4 frames, so every pattern downsamples time exactly twice.
VAE_CASES = [
    ("v21_b4_z4", dict(base_dim=4, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                       temperal_downsample=[False, True, True]), dict(lat=(2, 3, 5))),
    ("v21_b6_z3_res2", dict(base_dim=6, z_dim=3, dim_mult=[1, 2, 2, 1], num_res_blocks=2,
                            temperal_downsample=[True, True, False]), dict(lat=(3, 2, 3))),
    ("v21_b4_z2_3stages", dict(base_dim=4, z_dim=2, dim_mult=[1, 2, 3], num_res_blocks=1,
                               temperal_downsample=[True, True], scale_factor_spatial=4), dict(lat=(4, 3, 4))),
    ("v21_b4_z5_t_tft", dict(base_dim=4, z_dim=5, dim_mult=[1, 1, 2, 2], num_res_blocks=1,
                             temperal_downsample=[True, False, True]), dict(lat=(2, 2, 3))),
    ("v21_b3_z4_batch2", dict(base_dim=3, z_dim=4, dim_mult=[1, 1, 2, 2], num_res_blocks=1,
                              temperal_downsample=[False, True, True]), dict(lat=(3, 3, 2), batch=2)),
    ("v21_b4_z3_5stages", dict(base_dim=4, z_dim=3, dim_mult=[1, 1, 2, 2, 2], num_res_blocks=1,
                               temperal_downsample=[False, True, False, True], scale_factor_spatial=16),
     dict(lat=(2, 2, 1))),
    ("v22_b4_z4", dict(base_dim=4, decoder_base_dim=6, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                       temperal_downsample=[False, True, True], is_residual=True, patch_size=2,
                       in_channels=12, out_channels=12, scale_factor_spatial=16), dict(lat=(2, 2, 3))),
    ("v22_b4_z6_res2", dict(base_dim=4, decoder_base_dim=5, z_dim=6, dim_mult=[1, 2, 2, 2], num_res_blocks=2,
                            temperal_downsample=[True, False, True], is_residual=True, patch_size=2,
                            in_channels=12, out_channels=12, scale_factor_spatial=16), dict(lat=(2, 3, 2))),
    ("v22_b4_z3_3stages", dict(base_dim=4, z_dim=3, dim_mult=[1, 2, 2], num_res_blocks=1,
                               temperal_downsample=[True, True], is_residual=True, patch_size=2,
                               in_channels=12, out_channels=12, scale_factor_spatial=8), dict(lat=(2, 3, 5))),
]


def gen_vae(root):
    names = []
    for name, over, shape in VAE_CASES:
        z = over["z_dim"]
        cfg = dict(over, latents_mean=[round(0.1 * i - 0.2, 3) for i in range(z)],
                   latents_std=[round(1.0 + 0.15 * i, 3) for i in range(z)])
        vae = perturb_bf16(AutoencoderKLWan(**cfg))
        b = shape.get("batch", 1)
        t, h, w = shape["lat"]
        latents = randn(b, z, t, h, w)
        decoded = vae.decode(latents).sample
        video = torch.tanh(randn(*decoded.shape))
        moments = vae.encode(video).latent_dist
        d = write_case(root, "vae", name,
                       dict(kind="vae", model_dir="vae", config=cfg, latent_thw=[t, h, w], batch=b,
                            video_shape=list(decoded.shape),
                            outputs={"decoded": "vae.decode(latents).sample (untiled)",
                                     "enc_mean": "vae.encode(video).latent_dist.mean",
                                     "enc_logvar": "vae.encode(video).latent_dist.logvar"}),
                       dict(latents=latents, video=video),
                       dict(decoded=decoded, enc_mean=moments.mean, enc_logvar=moments.logvar))
        save_bf16(vae, os.path.join(d, "vae"))
        names.append(name)
    return names


# ------------------------------------------------------------------------------------------- UMT5
# Relative-position buckets and max distances (sequences longer than the max distance), 1-5 heads,
# d_kv·heads ≠ d_model, layers, gated-gelu/gated-silu, padding masks, batch 2.
UMT5_BASE = dict(vocab_size=300, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                 relative_attention_num_buckets=32, relative_attention_max_distance=128,
                 feed_forward_proj="gated-gelu", dropout_rate=0.0)
UMT5_CASES = [
    ("b8_dist16_h1_long", dict(num_heads=1, d_kv=16, relative_attention_num_buckets=8,
                               relative_attention_max_distance=16), dict(tokens=40, pad=(0,))),
    ("b16_dist20_h3_pad", dict(num_heads=3, d_kv=6, d_model=24, num_layers=3, relative_attention_num_buckets=16,
                               relative_attention_max_distance=20), dict(tokens=25, pad=(7,))),
    ("b4_dist8_h5", dict(num_heads=5, d_kv=4, d_model=20, relative_attention_num_buckets=4,
                         relative_attention_max_distance=8), dict(tokens=17, pad=(0,))),
    ("b64_dist256_h2", dict(num_heads=2, d_kv=12, relative_attention_num_buckets=64,
                            relative_attention_max_distance=256, num_layers=1), dict(tokens=70, pad=(0,))),
    ("b32_dist128_h4_batch2", dict(), dict(tokens=12, pad=(0, 5))),
    ("b10_dist30_h2_silu", dict(num_heads=2, d_kv=10, d_model=16, feed_forward_proj="gated-silu",
                                relative_attention_num_buckets=10, relative_attention_max_distance=30),
     dict(tokens=33, pad=(3,))),
    ("b32_dist128_h4_single", dict(d_model=8, d_kv=2), dict(tokens=1, pad=(0,))),
]


def gen_umt5(root):
    names = []
    for name, over, shape in UMT5_CASES:
        cfg = dict(UMT5_BASE, **over)
        model = perturb_bf16(UMT5EncoderModel(UMT5Config(**cfg)))
        n, pads = shape["tokens"], shape["pad"]
        ids = rand_int(2, cfg["vocab_size"], (len(pads), n))
        mask = torch.ones(len(pads), n, dtype=torch.long)
        for row, pad in enumerate(pads):
            ids[row, n - pad - 1] = 1  # eos
            if pad:
                ids[row, n - pad:] = 0
                mask[row, n - pad:] = 0
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        d = write_case(root, "umt5", name,
                       dict(kind="text_encoder", model_dir="text_encoder", config=cfg, tokens=n, padding=list(pads),
                            outputs={"hidden": "UMT5EncoderModel(input_ids, attention_mask).last_hidden_state"}),
                       dict(input_ids=ids.float(), attention_mask=mask.float()), dict(hidden=hidden))
        save_bf16(model, os.path.join(d, "text_encoder"))
        names.append(name)
    return names


# ------------------------------------------------------------------------------------- schedulers
# UniPC (flow): shifts, step counts 1..50, order 1/2, bh1/bh2, lower_order_final, final sigma
# zero/sigma_min, disabled correctors, shift_terminal; FlowMatchEuler: shifts (incl. < 1), step
# counts, shift_terminal. The "model" is sin(sample·(1 + i mod 3)) + 0.1·i: unlike the golden case's
# sin(sample·(i+1)) its slope stays small, so 50-step runs stay well conditioned (with the golden
# stand-in diffusers' own f32 and f64 runs part by 8e-4 after 50 steps). Each case is also run in
# float64 and must agree with the float32 reference within 1e-6, so a 1e-5 comparison is meaningful.
# Left out: bh1, or lower_order_final=False, with final_sigmas_type="zero" (diffusers' last step
# divides by the zero sigma and returns NaN/inf there).
UNIPC_BASE = dict(num_train_timesteps=1000, solver_order=2, prediction_type="flow_prediction",
                  use_flow_sigmas=True, flow_shift=5.0, solver_type="bh2", lower_order_final=True,
                  final_sigmas_type="zero", timestep_spacing="linspace", predict_x0=True)
SCHED_CASES = [
    ("unipc_s1_n1", "unipc", dict(flow_shift=1.0), 1),
    ("unipc_s3_n2", "unipc", dict(flow_shift=3.0), 2),
    ("unipc_s5_n3_order1", "unipc", dict(solver_order=1), 3),
    ("unipc_s8_n5_bh1_sigma_min", "unipc", dict(flow_shift=8.0, solver_type="bh1", final_sigmas_type="sigma_min"), 5),
    ("unipc_s12_n8_sigma_min", "unipc", dict(flow_shift=12.0, final_sigmas_type="sigma_min"), 8),
    ("unipc_s5_n25_no_lower_order_final", "unipc", dict(lower_order_final=False, final_sigmas_type="sigma_min"), 25),
    ("unipc_s5_n20", "unipc", dict(), 20),
    ("unipc_s2_n50", "unipc", dict(flow_shift=2.0), 50),
    ("unipc_s7_n6_no_corrector_0_3", "unipc", dict(flow_shift=7.0, disable_corrector=[0, 3]), 6),
    ("unipc_s3_n4_shift_terminal", "unipc", dict(flow_shift=3.0, shift_terminal=0.1), 4),
    ("euler_s1_n1", "euler", dict(shift=1.0), 1),
    ("euler_s3_n2", "euler", dict(shift=3.0), 2),
    ("euler_s5_n7", "euler", dict(shift=5.0), 7),
    ("euler_s8_n30", "euler", dict(shift=8.0), 30),
    ("euler_s0.5_n10", "euler", dict(shift=0.5), 10),
    ("euler_s2_n4_shift_terminal", "euler", dict(shift=2.0, shift_terminal=0.2), 4),
]


def run_scheduler(kind, over, steps, init, dtype):
    if kind == "unipc":
        sched = UniPCMultistepScheduler(**dict(UNIPC_BASE, **over))
    else:
        sched = FlowMatchEulerDiscreteScheduler(**over)
    sched.set_timesteps(steps)
    sample = init.to(dtype)
    samples = []
    for i, t in enumerate(sched.timesteps):
        model_out = torch.sin(sample * (1 + i % 3)) + 0.1 * i
        sample = sched.step(model_out, t, sample, return_dict=False)[0]
        samples.append(sample.clone())
    return sched, samples


def gen_scheduler(root):
    names = []
    for name, kind, over, steps in SCHED_CASES:
        init = randn(1, 4, 2, 3, 3)
        sched, samples = run_scheduler(kind, over, steps, init, torch.float32)
        _, samples64 = run_scheduler(kind, over, steps, init, torch.float64)
        worst = 0.0
        for a, b in zip(samples, samples64):
            assert torch.isfinite(a).all(), "%s: diffusers returns non-finite samples" % name
            worst = max(worst, ((a.double() - b).norm() / b.norm()).item())
        assert worst < 1e-6, "%s: diffusers f32 vs f64 differ by %.1e: ill-conditioned case" % (name, worst)
        outs = dict(init=init, timesteps=sched.timesteps.float(), sigmas=sched.sigmas.float())
        outs.update({f"step{i}": s for i, s in enumerate(samples)})
        d = write_case(root, "scheduler", name,
                       dict(kind="scheduler", scheduler=kind, steps=steps,
                            model_output="model_out = sin(sample * (1 + i % 3)) + 0.1 * i at step i",
                            f32_vs_f64_rel_max=worst,
                            outputs={"timesteps/sigmas": "after set_timesteps(steps)",
                                     "step{i}": "the sample after step i"}),
                       {}, outs)
        sched.save_config(os.path.join(d, "scheduler"))
        names.append(name)
    return names


def main():
    root = sys.argv[1]
    for part in ("transformer", "vae", "umt5", "scheduler"):  # other files (README.md) stay
        shutil.rmtree(os.path.join(root, part), ignore_errors=True)
    os.makedirs(root, exist_ok=True)
    index = dict(transformer=gen_transformer(root), vae=gen_vae(root), umt5=gen_umt5(root),
                 scheduler=gen_scheduler(root))
    with open(os.path.join(root, "index.json"), "w") as f:
        json.dump(dict(index, generated_by="scripts/gen_sweep.py", versions=VERSIONS), f, indent=1)
    total = sum(len(v) for v in index.values())
    print("wrote %d cases to %s: %s" % (total, root, {k: len(v) for k, v in index.items()}))


if __name__ == "__main__":
    main()
