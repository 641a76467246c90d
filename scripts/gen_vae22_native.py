#!/usr/bin/env python3
"""The Wan2.2 VAE in Wan-native names (`wan2.2_vae.safetensors`, as the official Wan2.2 release and
ComfyUI ship it), checked against diffusers' own converter.

usage: gen_vae22_native.py CONVERTER OUT_DIR
  CONVERTER: diffusers' scripts/convert_wan_to_diffusers.py (huggingface/diffusers at commit
             2843b3d37ad7c83b44cdcd098b9c064e1569457d or later; it holds `convert_vae_22`). It is
             imported, not copied: its `convert_vae_22` is the ground truth for the names.
  OUT_DIR:   the repository's copy is tests/fixtures/vae22_native/.
Needs: pip install torch diffusers==0.42.1 transformers accelerate safetensors. Not run in CI; the
Rust test engine/tests/vae22_native.rs reads what it writes.

What it writes, and why each is ground truth:
1. `wan2.2_vae.safetensors`: the tiny Wan2.2 VAE of the sweep case `vae/v22_b4_z6_res2` (diffusers
   names, bf16, residual blocks, 2 resnets per level as the published VAE; its decode and encode
   references were computed by diffusers in f32 from those bf16 values) renamed to Wan-native names
   by inverting diffusers' mapping. `convert_vae_22` (run on this file, with the published config
   swapped for the tiny one) must give back exactly the sweep case's state dict: every name, every
   value bitwise. So the Rust test can compare the native file with the sweep folder and decode it
   against the sweep references without a second copy of weights or references here.
2. `published_names.json`: the published Wan2.2 VAE's Wan-native name of every tensor with its
   diffusers name, made the same way on torch's meta device from `vae22_diffusers_config` (the
   converter's strict load checks the inversion on the real structure). The Rust test checks its
   key table on these real names.
"""
import importlib.util
import json
import os
import sys
from unittest import mock

import torch
from accelerate import init_empty_weights
from safetensors.torch import load_file, save_file
from diffusers import AutoencoderKLWan

torch.set_grad_enabled(False)
HERE = os.path.dirname(os.path.abspath(__file__))
SWEEP = os.path.join(HERE, "..", "tests", "fixtures", "sweep", "vae", "v22_b4_z6_res2", "vae")

RESNET = [  # Wan-native resnet part -> diffusers (the converter's chain of replaces, inverted)
    ("residual.0.gamma", "norm1.gamma"), ("residual.2.weight", "conv1.weight"),
    ("residual.2.bias", "conv1.bias"), ("residual.3.gamma", "norm2.gamma"),
    ("residual.6.weight", "conv2.weight"), ("residual.6.bias", "conv2.bias"),
    ("shortcut.weight", "conv_shortcut.weight"), ("shortcut.bias", "conv_shortcut.bias"),
]
EXACT = {  # diffusers -> native for the one-off names
    "quant_conv.weight": "conv1.weight", "quant_conv.bias": "conv1.bias",
    "post_quant_conv.weight": "conv2.weight", "post_quant_conv.bias": "conv2.bias",
    "encoder.conv_in.weight": "encoder.conv1.weight", "encoder.conv_in.bias": "encoder.conv1.bias",
    "decoder.conv_in.weight": "decoder.conv1.weight", "decoder.conv_in.bias": "decoder.conv1.bias",
    "encoder.norm_out.gamma": "encoder.head.0.gamma", "encoder.conv_out.weight": "encoder.head.2.weight",
    "encoder.conv_out.bias": "encoder.head.2.bias", "decoder.norm_out.gamma": "decoder.head.0.gamma",
    "decoder.conv_out.weight": "decoder.head.2.weight", "decoder.conv_out.bias": "decoder.head.2.bias",
}


def resnet_native(tail):
    for native, diff in RESNET:
        if tail == diff:
            return native
    raise KeyError(tail)


def to_native(key, num_res_blocks):
    """A diffusers name of a residual (Wan2.2) VAE -> its Wan-native name."""
    if key in EXACT:
        return EXACT[key]
    p = key.split(".")
    side = p[0]
    if p[1] == "mid_block":
        if p[2] == "attentions":
            return f"{side}.middle.1." + ".".join(p[4:])
        return f"{side}.middle.{2 * int(p[3])}." + resnet_native(".".join(p[4:]))
    if p[1] in ("down_blocks", "up_blocks"):
        outer = "downsamples" if side == "encoder" else "upsamples"
        level = p[2]
        # Wan-native levels are one Sequential: the resnets, then the resampler after them
        # (encoder: num_res_blocks resnets; decoder: num_res_blocks + 1).
        if p[3] == "resnets":
            return f"{side}.{outer}.{level}.{outer}.{p[4]}." + resnet_native(".".join(p[5:]))
        if p[3] in ("downsampler", "upsampler"):
            idx = num_res_blocks if side == "encoder" else num_res_blocks + 1
            return f"{side}.{outer}.{level}.{outer}.{idx}." + ".".join(p[4:])
    raise KeyError(key)


def load_converter(path):
    spec = importlib.util.spec_from_file_location("convert_wan_to_diffusers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def convert_with(conv, native_state, config):
    """Runs diffusers' `convert_vae_22` on `native_state` (in place of the downloaded .pth) with
    `config` in place of the published one; returns the diffusers state dict it loaded (strict)."""
    with mock.patch.object(conv, "hf_hub_download", lambda *a, **k: "<native>"), \
            mock.patch.object(conv.torch, "load", lambda *a, **k: dict(native_state)), \
            mock.patch.object(conv, "vae22_diffusers_config", config):
        vae = conv.convert_vae_22()
    return vae.state_dict()


def main():
    conv_path, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    conv = load_converter(conv_path)

    # 1. The tiny sweep VAE as a Wan-native file.
    config = json.load(open(os.path.join(SWEEP, "config.json")))
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    diffusers_state = load_file(os.path.join(SWEEP, "diffusion_pytorch_model.safetensors"))
    nrb = config["num_res_blocks"]
    native = {to_native(k, nrb): v for k, v in diffusers_state.items()}
    assert len(native) == len(diffusers_state), "the inversion must be one to one"
    back = convert_with(conv, native, config)
    assert sorted(back) == sorted(diffusers_state), "converter names differ"
    for k, v in diffusers_state.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    save_file(native, os.path.join(out, "wan2.2_vae.safetensors"),
              metadata={"source": "tests/fixtures/sweep/vae/v22_b4_z6_res2/vae renamed to Wan-native names",
                        "checked_with": "diffusers scripts/convert_wan_to_diffusers.py convert_vae_22"})
    print(f"wan2.2_vae.safetensors: {len(native)} tensors; convert_vae_22 gives back the sweep state dict bitwise")

    # 2. The published Wan2.2 VAE's names (meta device: no weights).
    # `clip_output` (a decode-time clamp, no tensors) is newer than diffusers 0.42.1's AutoencoderKLWan.
    published = {k: v for k, v in conv.vae22_diffusers_config.items() if k != "clip_output"}
    with init_empty_weights():
        meta = AutoencoderKLWan(**published)
    meta_state = meta.state_dict()
    names = {to_native(k, published.get("num_res_blocks", 2)): k for k in meta_state}
    assert len(names) == len(meta_state)
    native_meta = {n: torch.empty(meta_state[d].shape, device="meta") for n, d in names.items()}
    back = convert_with(conv, native_meta, published)
    assert sorted(back) == sorted(meta_state)
    with open(os.path.join(out, "published_names.json"), "w") as f:
        json.dump({"note": "Wan2.2 VAE (Wan2.2_VAE.pth / ComfyUI wan2.2_vae.safetensors): Wan-native name -> "
                           "diffusers name, checked with diffusers' convert_vae_22 (strict load)",
                   "names": dict(sorted(names.items()))}, f, indent=0)
    print(f"published_names.json: {len(names)} names of the published Wan2.2 VAE")


if __name__ == "__main__":
    main()
