#!/usr/bin/env python3
"""One diffusers WanTransformer3DModel forward, measured like `tessera bench dit --case-model`.

usage: bench_dit_diffusers.py --model TRANSFORMER_DIR --inputs FILE.safetensors [--out OUT.safetensors]
                              [--warmup N] [--iters N] [--threads N]
The inputs file holds `latents` (1,C,F,H,W), `context` (1,L,text_dim) and `timestep` (1,), as
`tessera bench dit` writes them. Prints one JSON line: {"seconds": mean timed forward,
"min_seconds", "load_seconds", "peak_rss_bytes": VmHWM of this process}; `--out` saves the output
as `out` so the bench can check both engines computed the same thing.
Needs: pip install torch diffusers safetensors
"""
import argparse, glob, json, os, sys, time

import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import load_file, save_file


def peak_rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def load_transformer(folder):
    """`WanTransformer3DModel.from_pretrained` in f32 without `accelerate`: built on the meta device,
    then every (possibly sharded) safetensors file is assigned in, so the weights are held once
    (plain `from_pretrained` refuses to run without accelerate because of `_keep_in_fp32_modules`)."""
    config = WanTransformer3DModel.load_config(folder)
    with torch.device("meta"):
        model = WanTransformer3DModel.from_config(config)
    files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    if not files:
        sys.exit(f"no safetensors files in {folder}")
    loaded = set()
    for f in files:
        sd = {k: v.float() for k, v in load_file(f).items()}
        model.load_state_dict(sd, strict=False, assign=True)
        loaded.update(sd)
        del sd
    missing = set(model.state_dict()) - loaded
    if missing:
        sys.exit(f"{folder}: missing tensors {sorted(missing)[:5]}")
    # The RoPE tables are non-persistent buffers (not in the checkpoint): rebuild them for real.
    rope = model.rope
    model.rope = type(rope)(config["attention_head_dim"], tuple(config["patch_size"]), config["rope_max_seq_len"])
    on_meta = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if on_meta:
        sys.exit(f"tensors left uninitialised: {on_meta[:5]}")
    return model.eval()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--inputs", required=True)
    p.add_argument("--out")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.set_grad_enabled(False)
    inputs = load_file(a.inputs)
    latents = inputs["latents"].float()
    context = inputs["context"].float()
    timestep = inputs["timestep"].float()
    start = time.perf_counter()
    model = load_transformer(a.model)
    load_seconds = time.perf_counter() - start

    def forward():
        return model(hidden_states=latents, timestep=timestep, encoder_hidden_states=context, return_dict=False)[0]

    for _ in range(a.warmup):
        forward()
    times, out = [], None
    for _ in range(max(a.iters, 1)):
        start = time.perf_counter()
        out = forward()
        times.append(time.perf_counter() - start)
    if a.out:
        save_file({"out": out.contiguous()}, a.out)
    print(json.dumps({
        "seconds": sum(times) / len(times),
        "min_seconds": min(times),
        "load_seconds": load_seconds,
        "peak_rss_bytes": peak_rss_bytes(),
    }))


if __name__ == "__main__":
    main()
