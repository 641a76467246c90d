#!/usr/bin/env python3
"""The Qwen2.5-VL text-model golden case Tessera's CI tests against (tests/fixtures/hv15/qwen).

As the shared generator's `qwen` case (`gen_hv15.py`): a tiny `Qwen2_5_VLTextModel` (hidden 32, 4 layers,
4 heads / 2 KV heads (GQA), mrope [2,1,1], theta 1e6, vocab 704) on a right-padded batch of 2 rows (16 and 11
valid tokens), all hidden states recorded; `hidden_states[-3]` is what the HunyuanVideo 1.5 pipeline takes.
Weights rounded to bf16 and stored bf16 (references computed in f32 from those values).

usage: scripts/gen_hv15_qwen.py OUT_DIR [SEED]    (default seed 0; writes OUT_DIR/qwen)
"""
import json, os, sys

import torch
from safetensors.torch import save_file

import transformers
from transformers import Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel

torch.set_grad_enabled(False)
out_root = sys.argv[1]
seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
g = torch.Generator().manual_seed(seed)
torch.manual_seed(seed)
cfg = Qwen2_5_VLTextConfig(vocab_size=704, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=2, rope_theta=1e6, rms_norm_eps=1e-6,
                           rope_scaling={"mrope_section": [2, 1, 1], "rope_type": "default", "type": "default"},
                           bos_token_id=700, eos_token_id=702, use_cache=False)
model = Qwen2_5_VLTextModel(cfg)
for p in model.parameters():
    p.add_(torch.randn(*p.shape, generator=g) * 0.02)
model = model.to(torch.bfloat16).eval()
d = os.path.join(out_root, "qwen")
model.save_pretrained(os.path.join(d, "text_encoder"))
# Reload in f32: the weights are the bf16 values exactly, and the RoPE `inv_freq` buffer is rebuilt in
# f32 (`model.float()` would keep the bf16-rounded buffer that `.to(bfloat16)` made).
model = Qwen2_5_VLTextModel.from_pretrained(os.path.join(d, "text_encoder"), dtype=torch.float32).eval()

n, (v0, v1) = 16, (16, 11)
ids = torch.randint(0, 700, (2, n), generator=g)
mask = torch.zeros(2, n, dtype=torch.long)
mask[0, :v0] = 1
mask[1, :v1] = 1
ids[mask == 0] = 700  # <|endoftext|>
out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
hs = out.hidden_states
assert len(hs) == 5
outputs = dict(hidden_m3=hs[-3], last_hidden_state=out.last_hidden_state, **{f"hidden_states_{i}": x for i, x in enumerate(hs)})
save_file({"input_ids": ids.float(), "attention_mask": mask.float()}, os.path.join(d, "inputs.safetensors"))
save_file({k: v.float().clone().contiguous() for k, v in outputs.items()}, os.path.join(d, "outputs.safetensors"))
json.dump(dict(kind="text_encoder", model_class="Qwen2_5_VLTextModel", seed=seed, valid=[v0, v1],
               inputs={"input_ids": "[2,16] right padded with 700 (<|endoftext|>), stored as f32",
                       "attention_mask": "[2,16] 1 = valid"},
               outputs={"hidden_m3": "hidden_states[-3] = output of decoder layer 2 of 4, before the final norm",
                        "hidden_states_i": "[0] embeddings, [i] after layer i, [4] final norm of layer 4's output",
                        "last_hidden_state": "= hidden_states[4]"},
               note="padded rows hold what HF computes for pad tokens; compare valid rows only",
               weights="rounded to bfloat16 and stored bf16; references computed in f32 from the bf16 values",
               versions=dict(transformers=transformers.__version__, torch=torch.__version__)),
          open(os.path.join(d, "case.json"), "w"), indent=2)
print("wrote", d)
