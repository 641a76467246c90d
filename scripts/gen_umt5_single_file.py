#!/usr/bin/env python3
"""The golden UMT5 text encoder as the single files ComfyUI users have
(`text_encoders/umt5_xxl_fp16.safetensors`, `umt5_xxl_fp8_e4m3fn_scaled.safetensors`), with prompt
embeddings computed by diffusers from exactly the values those files hold.

usage: gen_umt5_single_file.py OUT_DIR    (the repository's copy is tests/fixtures/umt5_single_file/)
Needs: pip install torch diffusers==0.42.1 transformers safetensors. Not run in CI; the Rust test
engine/tests/umt5_single_file.rs reads what it writes.

Source: the golden `prompt` case (tests/fixtures/golden/prompt: a tiny UMT5EncoderModel in
`text_encoder/` and a Unigram `tokenizer/`). The files hold the transformers names ComfyUI's T5
module uses (`shared.weight`, `encoder.block.N.layer.0.SelfAttention.{q,k,v,o,relative_attention_bias}`,
`encoder.block.N.layer.1.DenseReluDense.{wi_0,wi_1,wo}`, `...layer_norm`, `encoder.final_layer_norm`)
and only `shared.weight` for the tied embedding (no `encoder.embed_tokens.weight`), no config:
- `umt5_xxl_fp16.safetensors`: every tensor float16;
- `umt5_xxl_fp8_e4m3fn_scaled.safetensors`: ComfyUI's `scaled_fp8` convention as in the golden
  `single_file` case (its case.json): the 2-D linears of the blocks float8_e4m3fn with
  `<module>.scale_weight` (float32, shape [], max|W|/448), the marker `scaled_fp8` (empty
  float8_e4m3fn), every other tensor float16.
outputs.safetensors: `prompt_embeds_{fp16,fp8}_{i}` = WanPipeline._get_t5_prompt_embeds(prompt_i,
max_sequence_length=64) with the encoder's weights set to the file's values in float32 (f16
upcast; fp8 × scale_weight), so a float32 port reading the file sees exactly the weights diffusers ran.
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, UMT5EncoderModel
from diffusers import WanPipeline

torch.set_grad_enabled(False)
HERE = os.path.dirname(os.path.abspath(__file__))
PROMPT = os.path.join(HERE, "..", "tests", "fixtures", "golden", "prompt")
LINEARS = ("SelfAttention.q.", "SelfAttention.k.", "SelfAttention.v.", "SelfAttention.o.",
           "DenseReluDense.wi_0.", "DenseReluDense.wi_1.", "DenseReluDense.wo.")


def comfy_state(model):
    state = {k: v.clone() for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    assert torch.equal(model.state_dict()["encoder.embed_tokens.weight"], state["shared.weight"]), "tied"
    return state


def fp16_file(state):
    stored = {k: v.to(torch.float16).contiguous() for k, v in state.items()}
    values = {k: v.float() for k, v in stored.items()}
    return stored, values


def fp8_file(state):
    stored, values = {}, {}
    for k, v in state.items():
        if k.endswith(".weight") and v.dim() == 2 and any(m in k for m in LINEARS):
            scale = (v.abs().max() / 448.0).float()
            q = (v / scale).to(torch.float8_e4m3fn)
            stored[k] = q
            stored[k[: -len("weight")] + "scale_weight"] = scale.reshape(())
            values[k] = q.float() * scale
        else:
            stored[k] = v.to(torch.float16).contiguous()
            values[k] = stored[k].float()
    stored["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return stored, values


def embeds(values, case):
    encoder = UMT5EncoderModel.from_pretrained(os.path.join(PROMPT, "text_encoder")).eval()
    state = dict(values)
    state["encoder.embed_tokens.weight"] = state["shared.weight"]
    encoder.load_state_dict(state, strict=True)
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(PROMPT, "tokenizer"))
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=encoder, transformer=None, vae=None, scheduler=None)
    return [pipe._get_t5_prompt_embeds(prompt=p, max_sequence_length=case["max_sequence_length"],
                                       device=torch.device("cpu"), dtype=torch.float32)
            for p in case["prompts"]]


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    case = json.load(open(os.path.join(PROMPT, "case.json")))
    state = comfy_state(UMT5EncoderModel.from_pretrained(os.path.join(PROMPT, "text_encoder")).eval())
    outputs = {}
    for tag, make, name in [("fp16", fp16_file, "umt5_xxl_fp16.safetensors"),
                            ("fp8", fp8_file, "umt5_xxl_fp8_e4m3fn_scaled.safetensors")]:
        stored, values = make(state)
        save_file(stored, os.path.join(out, name))
        for i, e in enumerate(embeds(values, case)):
            outputs[f"prompt_embeds_{tag}_{i}"] = e.contiguous()
        print(f"{name}: {len(stored)} tensors")
    save_file(outputs, os.path.join(out, "outputs.safetensors"))
    json.dump(dict(kind="umt5_single_file", source="tests/fixtures/golden/prompt (text_encoder/, tokenizer/)",
                   prompts=case["prompts"], max_sequence_length=case["max_sequence_length"],
                   files={"umt5_xxl_fp16.safetensors": "ComfyUI names (transformers', shared.weight only), float16",
                          "umt5_xxl_fp8_e4m3fn_scaled.safetensors": "block linears float8_e4m3fn × scale_weight "
                          "(float32 []), marker scaled_fp8, the rest float16"},
                   outputs={"prompt_embeds_<fp16|fp8>_i": "WanPipeline._get_t5_prompt_embeds(prompt_i, 64) "
                            "with the file's values in float32"},
                   generated_by="scripts/gen_umt5_single_file.py"),
              open(os.path.join(out, "case.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
