#!/usr/bin/env python3
"""Copies the small HunyuanVideo 1.5 golden cases Tessera's CI tests against, as the shared generator wrote
them (no torch needed: the models are tiny, so they are kept as written, float32, with their references):

- the ByT5 half of `prompt` -> FIXTURES/prompt/{tokenizer_2,text_encoder_2}/ and FIXTURES/prompt/byt5.safetensors
  (`byt5_ids_i`, `byt5_mask_i`, `byt5_embeds_i`, `byt5_embeds_mask_i` of the six prompts; 78 KB of weights);
- `siglip` -> FIXTURES/siglip/ (image_encoder/, feature_extractor/, image.png, inputs, outputs, case.json).

The MLLM half of `prompt` is regenerated on the tracked Qwen by gen_hv15_prompt.py (whose case.json
lists the same six prompts).

usage: scripts/copy_hv15_small_cases.py FIXTURES_DIR SHARED_HV15_DIR
"""
import json, os, shutil, struct, sys


def read_st(path):
    with open(path, "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    data = blob[8 + n:]
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        out[k] = (v["dtype"], v["shape"], data[a:b])
    return out


def write_st(path, tensors):
    header, chunks, off = {}, [], 0
    for k in sorted(tensors):
        dtype, shape, raw = tensors[k]
        header[k] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        chunks.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(chunks))


def copy_dir(src, dst, files):
    os.makedirs(dst, exist_ok=True)
    for name in files:
        shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))


fixtures, shared = sys.argv[1], sys.argv[2]
prompt_src, prompt_dst = os.path.join(shared, "prompt"), os.path.join(fixtures, "prompt")
copy_dir(os.path.join(prompt_src, "tokenizer_2"), os.path.join(prompt_dst, "tokenizer_2"), ["tokenizer_config.json"])
copy_dir(os.path.join(prompt_src, "text_encoder_2"), os.path.join(prompt_dst, "text_encoder_2"),
         ["config.json", "model.safetensors"])
outs = read_st(os.path.join(prompt_src, "outputs.safetensors"))
write_st(os.path.join(prompt_dst, "byt5.safetensors"), {k: v for k, v in outs.items() if k.startswith("byt5_")})

sig_src, sig_dst = os.path.join(shared, "siglip"), os.path.join(fixtures, "siglip")
copy_dir(sig_src, sig_dst, ["case.json", "image.png", "inputs.safetensors", "outputs.safetensors"])
copy_dir(os.path.join(sig_src, "image_encoder"), os.path.join(sig_dst, "image_encoder"), ["config.json", "model.safetensors"])
copy_dir(os.path.join(sig_src, "feature_extractor"), os.path.join(sig_dst, "feature_extractor"),
         ["preprocessor_config.json"])
print("wrote", prompt_dst, sig_dst)
