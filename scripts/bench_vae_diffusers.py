#!/usr/bin/env python3
"""One diffusers AutoencoderKLWan decode, measured like `tessera bench vae-case`.

usage: bench_vae_diffusers.py --model VAE_DIR --latents FILE.safetensors [--tiling TH,TW,SH,SW] [--threads N]
Prints one JSON line: {"seconds": decode wall time, "peak_rss_bytes": VmHWM of this process}.
Needs: pip install torch diffusers safetensors
"""
import argparse, json, time

import torch
from diffusers import AutoencoderKLWan
from safetensors.torch import load_file


def peak_rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--latents", required=True)
    p.add_argument("--tiling")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.set_grad_enabled(False)
    vae = AutoencoderKLWan.from_pretrained(a.model, torch_dtype=torch.float32).eval()
    if a.tiling:
        th, tw, sh, sw = (int(v) for v in a.tiling.split(","))
        vae.enable_tiling(tile_sample_min_height=th, tile_sample_min_width=tw,
                          tile_sample_stride_height=sh, tile_sample_stride_width=sw)
    z = load_file(a.latents)["latents"].float()
    start = time.perf_counter()
    video = vae.decode(z).sample
    seconds = time.perf_counter() - start
    del video
    print(json.dumps({"seconds": seconds, "peak_rss_bytes": peak_rss_bytes()}))


if __name__ == "__main__":
    main()
