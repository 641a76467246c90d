#!/usr/bin/env python3
"""The HunyuanVideo 1.5 MLLM-prompt golden case Tessera's CI tests against (tests/fixtures/hv15/prompt).

The shared generator's `prompt` case, MLLM half, on the tracked fixtures: the synthetic byte-level BPE
`tokenizer/` of the shared case (703 tokens, Qwen2.5-VL chat template, right padding) and the tracked
`qwen/text_encoder` (bf16-stored tiny Qwen2_5_VLTextModel, run in f32), through
`HunyuanVideo15Pipeline._get_mllm_prompt_embeds(..., tokenizer_max_length=46, crop_start=113)` for the
shared case's six prompts (quoted text, non-ASCII, empty, truncated). crop_start 113 is this tokenizer's
count of tokens up to and including `<|im_start|>user\\n` (the real tokenizer's is 108).

usage: scripts/gen_hv15_prompt.py FIXTURES_DIR SHARED_PROMPT_CASE
       (writes FIXTURES_DIR/prompt; FIXTURES_DIR/qwen/text_encoder must exist)
"""
import json, os, shutil, sys

import torch
from safetensors.torch import save_file

import diffusers, transformers
from diffusers.pipelines.hunyuan_video1_5.pipeline_hunyuan_video1_5 import HunyuanVideo15Pipeline
from transformers import AutoTokenizer, Qwen2_5_VLTextModel

torch.set_grad_enabled(False)
fixtures, shared = sys.argv[1], sys.argv[2]
case = json.load(open(os.path.join(shared, "case.json")))
prompts, crop, max_len = case["prompts"], case["crop_start"], case["tokenizer_max_length"]
d = os.path.join(fixtures, "prompt")
os.makedirs(d, exist_ok=True)
tok_dir = os.path.join(d, "tokenizer")
if os.path.isdir(tok_dir):
    shutil.rmtree(tok_dir)
shutil.copytree(os.path.join(shared, "tokenizer"), tok_dir)
link = os.path.join(d, "text_encoder")
if not os.path.lexists(link):
    os.symlink("../qwen/text_encoder", link)
tokenizer = AutoTokenizer.from_pretrained(tok_dir)
model = Qwen2_5_VLTextModel.from_pretrained(os.path.join(fixtures, "qwen", "text_encoder"), dtype=torch.float32).eval()
outputs = {}
for i, p in enumerate(prompts):
    embeds, mask = HunyuanVideo15Pipeline._get_mllm_prompt_embeds(
        model, tokenizer, p, device="cpu", tokenizer_max_length=max_len, crop_start=crop)
    outputs[f"mllm_embeds_{i}"] = embeds.float().contiguous()
    outputs[f"mllm_embeds_mask_{i}"] = mask.float().contiguous()
save_file(outputs, os.path.join(d, "outputs.safetensors"))
json.dump(dict(kind="prompt", prompts=prompts, crop_start=crop, tokenizer_max_length=max_len,
               system_message=case["system_message"], crop_prefix=case["crop_prefix"],
               rendered_templates=case["rendered_templates"],
               call=f"HunyuanVideo15Pipeline._get_mllm_prompt_embeds(qwen/text_encoder in f32, tokenizer, prompt_i, "
                    f"tokenizer_max_length={max_len}, crop_start={crop})",
               outputs={"mllm_embeds_i": "[1, 46, 32]: hidden_states[-3][:, crop_start:] (padded rows: pad-token states)",
                        "mllm_embeds_mask_i": "[1, 46]: attention mask after the crop (1 = valid), as f32"},
               versions=dict(diffusers=diffusers.__version__, transformers=transformers.__version__,
                             torch=torch.__version__)),
          open(os.path.join(d, "case.json"), "w"), indent=2, ensure_ascii=False)
print("wrote", d)
