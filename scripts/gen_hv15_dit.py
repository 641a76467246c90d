#!/usr/bin/env python3
"""The HunyuanVideo 1.5 transformer golden case Tessera's CI tests against (tests/fixtures/hv15/dit).

Adapted from the project's shared generator (`gen_hv15.py`, its `dit` case): the same tiny
`HunyuanVideo15Transformer3DModel` (4 heads x 16, 2 blocks, 2 refiner blocks, in 9 / out 4, text 32,
glyph 20, image 16, rope (4,6,6)) and the same calls (T2V with 729 zero image tokens, I2V, no glyph,
diffusers' own trimmed calls, the meanflow twin with timestep_r), with two changes that keep the
tracked tree small:
  * diffusers hard-codes the ByT5 glyph projection's hidden width to 2048 (a 16 MB f32 matrix in an
    otherwise 2.6 MB model). This script builds it at GLYPH_HIDDEN = 32 by substituting the projection
    class before the model is built (same code, narrower constant) and records the width in
    config.json as `glyph_hidden_dim` (a Tessera key; its default 2048 is diffusers' constant).
  * every weight is rounded to bfloat16 and stored bf16 (sharded at 200 KB, as real checkpoints are
    sharded); the f32 references are computed from exactly those values. Inputs are f32.
  * transformer_meanflow/ holds only its extra tensors (timestep_embedder_r) in one file; its other
    shards are relative symlinks to ../transformer/ (byte-identical), tied together by its own index.

usage: scripts/gen_hv15_dit.py OUT_DIR [SEED]     (default seed 0; /work/venv has torch + diffusers)
Reproducible: one seeded torch.Generator draws everything in a fixed order.
"""
import json, os, sys

import torch
from safetensors.torch import save_file

import diffusers
import diffusers.models.transformers.transformer_hunyuan_video15 as T
from diffusers import HunyuanVideo15Transformer3DModel

torch.set_grad_enabled(False)
out_root = sys.argv[1]
seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
g = torch.Generator().manual_seed(seed)
torch.manual_seed(seed)
GLYPH_HIDDEN = 32


class NarrowGlyphProjection(T.HunyuanVideo15ByT5TextProjection):
    def __init__(self, in_features, hidden_size, out_features):
        assert hidden_size == 2048, hidden_size  # the constant being replaced
        super().__init__(in_features, GLYPH_HIDDEN, out_features)


T.HunyuanVideo15ByT5TextProjection = NarrowGlyphProjection


def randn(*shape, scale=1.0):
    return torch.randn(*shape, generator=g) * scale


LAT_C = 4
CFG = dict(in_channels=2 * LAT_C + 1, out_channels=LAT_C, num_attention_heads=4, attention_head_dim=16,
           num_layers=2, num_refiner_layers=2, mlp_ratio=4.0, patch_size=1, patch_size_t=1, qk_norm="rms_norm",
           text_embed_dim=32, text_embed_2_dim=20, image_embed_dim=16, rope_theta=256.0, rope_axes_dim=(4, 6, 6),
           target_size=112, task_type="t2v", use_meanflow=False)
d = os.path.join(out_root, "dit")


def bf16_roundtrip(model, name):
    model = model.to(torch.bfloat16).eval()
    path = os.path.join(d, name)
    model.save_pretrained(path, safe_serialization=True, max_shard_size="200KB")
    cfg_path = os.path.join(path, "config.json")
    cfg = json.load(open(cfg_path))
    cfg["glyph_hidden_dim"] = GLYPH_HIDDEN
    json.dump(cfg, open(cfg_path, "w"), indent=2, sort_keys=True)
    return model.float()  # exact: holds the bf16 values


dit = HunyuanVideo15Transformer3DModel(**CFG)
for p in dit.parameters():
    p.add_(randn(*p.shape, scale=0.02))
dit = bf16_roundtrip(dit, "transformer")
mf = HunyuanVideo15Transformer3DModel(**dict(CFG, use_meanflow=True))
missing, unexpected = mf.load_state_dict(dit.state_dict(), strict=False)
assert not unexpected and all(k.startswith("time_embed.timestep_embedder_r.") for k in missing), (missing, unexpected)
for n, p in mf.named_parameters():
    if n.startswith("time_embed.timestep_embedder_r."):
        p.add_(randn(*p.shape, scale=0.02))
mf = bf16_roundtrip(mf, "transformer_meanflow")


def share_base_shards():
    """transformer_meanflow/ = the base shards (relative symlinks to ../transformer/) + one file with the
    meanflow-only tensors, tied together by its own index: the same weights without a second copy."""
    mdir, base = os.path.join(d, "transformer_meanflow"), os.path.join(d, "transformer")
    idx = json.load(open(os.path.join(base, "diffusion_pytorch_model.safetensors.index.json")))
    for f in os.listdir(mdir):
        if f.endswith(".safetensors") or f.endswith(".index.json"):
            os.remove(os.path.join(mdir, f))
    extra_name = "diffusion_pytorch_model-meanflow.safetensors"
    extra = {k: v.to(torch.bfloat16).contiguous() for k, v in mf.state_dict().items()
             if k.startswith("time_embed.timestep_embedder_r.")}
    save_file(extra, os.path.join(mdir, extra_name), metadata={"format": "pt"})
    for shard in sorted(set(idx["weight_map"].values())):
        os.symlink(os.path.join("..", "transformer", shard), os.path.join(mdir, shard))
    weight_map = dict(idx["weight_map"], **{k: extra_name for k in extra})
    json.dump({"metadata": {}, "weight_map": weight_map},
              open(os.path.join(mdir, "diffusion_pytorch_model.safetensors.index.json"), "w"), indent=2, sort_keys=True)


share_base_shards()

lt, lh, lw = 3, 4, 6
noisy = randn(1, LAT_C, lt, lh, lw)
cond_lat = randn(1, LAT_C, lt, lh, lw)
cond_lat[:, :, 1:] = 0.0
mask_ch = torch.zeros(1, 1, lt, lh, lw)
mask_ch[:, :, 0] = 1.0
x_t2v = torch.cat([noisy, torch.zeros_like(noisy), torch.zeros_like(mask_ch)], dim=1)
x_i2v = torch.cat([noisy, cond_lat, mask_ch], dim=1)
nm, nmv, nb, nbv = 12, 9, 8, 5
ctx = randn(1, nm, 32)
ctx_mask = torch.zeros(1, nm)
ctx_mask[:, :nmv] = 1.0
byt5 = randn(1, nb, 20)
byt5_mask = torch.zeros(1, nb)
byt5_mask[:, :nbv] = 1.0
img_emb = randn(1, 9, 16)
img_zero = torch.zeros(1, 729, 16)
ts = torch.tensor([937.5])
ts_r = torch.tensor([833.3333])


def run(model, x, c, cm, b, bm, im, tr=None):
    return model(hidden_states=x, timestep=ts, encoder_hidden_states=c, encoder_attention_mask=cm,
                 encoder_hidden_states_2=b, encoder_attention_mask_2=bm, image_embeds=im, timestep_r=tr,
                 return_dict=False)[0]


cap = {}
hooks = [m.register_forward_hook(lambda mod, a, out, name=name: cap.__setitem__(name, out))
         for name, m in [("temb", dit.time_embed), ("x_embed", dit.x_embedder), ("refiner", dit.context_embedder),
                         ("byt5_proj", dit.context_embedder_2), ("rope", dit.rope), ("block0", dit.transformer_blocks[0])]]
out_t2v = run(dit, x_t2v, ctx, ctx_mask, byt5, byt5_mask, img_zero)
dbg = dict(dbg_t2v_temb=cap["temb"], dbg_t2v_x_embed=cap["x_embed"], dbg_t2v_refiner=cap["refiner"],
           dbg_t2v_byt5_proj=cap["byt5_proj"], dbg_rope_cos=cap["rope"][0], dbg_rope_sin=cap["rope"][1],
           dbg_t2v_block0_hidden=cap["block0"][0], dbg_t2v_block0_context=cap["block0"][1][:, : nbv + nmv])
dbg = {k: v.clone() for k, v in dbg.items()}
for h in hooks:
    h.remove()
out_i2v = run(dit, x_i2v, ctx, ctx_mask, byt5, byt5_mask, img_emb)
out_nobyt5 = run(dit, x_t2v, ctx, ctx_mask, torch.zeros(1, nb, 20), torch.zeros(1, nb), img_zero)
ones = lambda n: torch.ones(1, n)
out_t2v_trim = run(dit, x_t2v, ctx[:, :nmv], ones(nmv), byt5[:, :nbv], ones(nbv), torch.zeros(1, 0, 16))
out_i2v_trim = run(dit, x_i2v, ctx[:, :nmv], ones(nmv), byt5[:, :nbv], ones(nbv), img_emb)
out_nobyt5_trim = run(dit, x_t2v, ctx[:, :nmv], ones(nmv), torch.zeros(1, 0, 20), torch.zeros(1, 0), torch.zeros(1, 0, 16))
out_mf = run(mf, x_i2v, ctx, ctx_mask, byt5, byt5_mask, img_emb, ts_r)
assert (out_t2v - out_t2v_trim).abs().max() < 1e-5 and (out_i2v - out_i2v_trim).abs().max() < 1e-5

inputs = dict(x_t2v=x_t2v, x_i2v=x_i2v, timestep=ts, timestep_r=ts_r, context=ctx, context_mask=ctx_mask,
              byt5=byt5, byt5_mask=byt5_mask, image_embeds=img_emb)
outputs = dict(out_t2v=out_t2v, out_i2v=out_i2v, out_nobyt5=out_nobyt5, out_t2v_trimmed=out_t2v_trim,
               out_i2v_trimmed=out_i2v_trim, out_nobyt5_trimmed=out_nobyt5_trim, out_meanflow=out_mf, **dbg)
for k, v in outputs.items():
    assert torch.isfinite(v).all(), k
save_file({k: v.float().contiguous() for k, v in inputs.items()}, os.path.join(d, "inputs.safetensors"))
save_file({k: v.float().contiguous() for k, v in outputs.items()}, os.path.join(d, "outputs.safetensors"))
case = dict(
    kind="transformer", model_class="HunyuanVideo15Transformer3DModel", config=CFG, seed=seed,
    glyph_hidden_dim=GLYPH_HIDDEN, latent_thw=[lt, lh, lw],
    weights="rounded to bfloat16 and stored bf16 (200 KB shards); references computed in f32 from the bf16 values",
    calls={"out_t2v": "x_t2v, context + mask (9 of 12 valid), byt5 + mask (5 of 8 valid), image_embeds zeros [1,729,16]",
           "out_i2v": "x_i2v, image_embeds (9 tokens, all valid)", "out_nobyt5": "x_t2v, byt5 zeros with a zero mask",
           "out_*_trimmed": "the same calls with only the valid rows and all-ones masks (= the masked calls)",
           "out_meanflow": "transformer_meanflow (use_meanflow, timestep_embedder_r) on the i2v call with timestep_r",
           "dbg_t2v_block0_context": "block 0's context output, valid rows only (5 glyph then 9 text)"},
    inputs={k: list(v.shape) for k, v in inputs.items()}, outputs={k: list(v.shape) for k, v in outputs.items()},
    versions=dict(diffusers=diffusers.__version__, torch=torch.__version__),
)
json.dump(case, open(os.path.join(d, "case.json"), "w"), indent=2)
print("wrote", d)
