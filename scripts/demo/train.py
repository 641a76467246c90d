#!/usr/bin/env python3
"""Trains the built-in demo model (assets/demo/) from procedurally generated clips (data.py).

The model has the Wan2.2 TI2V architecture classes at tiny widths: diffusers `AutoencoderKLWan`
(Wan2.2 form: patch_size 2, is_residual), `WanTransformer3DModel` (patch 1×2×2, per-token
timesteps: `expand_timesteps`), transformers `UMT5EncoderModel` with a real `tokenizer.json`
(a Unigram model trained on the captions, saved by `T5TokenizerFast`), and the UniPC flow scheduler.

Stages (each writes its checkpoint under WORK and is skipped when that exists, so a run can be
resumed; `--fresh` starts over):
  text    tokenizer + a seeded random UMT5 (kept fixed: its outputs still differ per caption);
          the prompt embeddings of the 80 captions and of "" exactly as `WanPipeline` computes
          them (UMT5 weights rounded to f16 first: the stored values)
  vae     encoder + decoder trained jointly on random clips (weighted L1 + L2, the object's pixels
          weighted up; the latent mean jittered so the decoder tolerates the DiT's errors;
          `--vae-colour-weight`: plus the error of the object's mean colour per frame)
  vae_more  more VAE steps from vae.pt (fresh optimizer and cosine; `--vae-more N`)
  vae_eval  the VAE alone on the 80 captions' fixed clips: how many reconstructions the
          measurement names as captioned (what the DiT can at best draw)
  latents the VAE's posterior means of the 80 fixed-path clips and of I2V clips with random starts;
          `latents_mean`/`latents_std` measured on them go into the VAE config
  dit     flow matching (x_t = (1−σ)·x0 + σ·ε, target ε − x0, σ = shift·u/(1+(shift−1)·u)):
          half the batch text-to-video on the caption's fixed clip, half TI2V image-to-video on a
          random-start clip with latent frame 0 replaced by the clean latent and its tokens at
          timestep 0 (what WanImageToVideoPipeline(expand_timesteps=True) and Tessera's
          `Condition::FirstFrame` feed the transformer), no loss on that frame; 10% of the
          prompts dropped to "" so classifier-free guidance has an unconditional branch;
          `--dit-obj-weight k` weights each latent cell's loss 1 + k·(the object's coverage of it)
  export  the diffusers folder (weights f16) + demo.json to OUT (default assets/demo)
  eval    the exported folder through diffusers' WanPipeline / WanImageToVideoPipeline with the
          folder's own scheduler; measures colour and motion in the decoded frames (data.measure)
          and writes assets/demo-loss.png and assets/demo-strip.png
  eval_all  text to video on all 80 captions through diffusers (the vocabulary's coverage)

Everything is seeded (torch, numpy); with OMP_NUM_THREADS=1 a rerun gives the same weights.
Time on this project's 2-core CPU (one core, the other busy), see README "The demo model":
printed at the end of each stage.

usage: OMP_NUM_THREADS=1 nice -n 10 python scripts/demo/train.py [--work /work/demo-train]
       [--out assets/demo] [--stages text,vae,latents,dit,export,eval] [--fresh]

The shipped assets/demo was made by these commands (`--work` as above). Blue and green differ only
along the palette's weakest colour direction: trained on pixel errors alone, the VAE's encoder drops
it within the first few hundred steps and then decodes both as one teal, which no later step or DiT
recovers (1700 steps: 63/80 reconstructions right, all 16 blue ones teal). With the object's mean
colour in the loss from the first step (weight 2) the colours stay apart but the motion lags (31/80
after 1700 steps); 1000 steps more at weight 0.5 bring the motion (79/80) but the first frame of a
random-start clip, encoded alone, loses its object (centroid 28 px off: image-to-video breaks);
1600 steps without the colour term restore it while the colours stay apart (80/80 fixed clips,
40/40 random starts, first-frame centroid 0.7 px off, median). `vae_eval` prints these. The DiT then
trains on those latents with the object's latent cells weighted (16: 74/80 captions through
diffusers, against 72/80 at 8 and 73/80 at 24; on an earlier VAE 65/80 unweighted):
  P="OMP_NUM_THREADS=1 nice -n 10 python scripts/demo/train.py"
  $P --stages text,vae --vae-colour-weight 2
  $P --stages vae_more --vae-more 500 --vae-obj-weight 24 --vae-colour-weight 2
  $P --stages vae_more --vae-more 400 --vae-obj-weight 24 --vae-colour-weight 2
  $P --stages vae_more --vae-more 1000 --vae-obj-weight 24 --vae-colour-weight 0.5
  $P --stages vae_more --vae-more 600 --vae-obj-weight 24
  $P --stages vae_more,latents,vae_eval --vae-more 1000 --vae-obj-weight 8
  $P --stages dit,export,eval,eval_all --dit-steps 12000 --dit-obj-weight 16
A rerun of these commands in an empty work folder (torch 2.15.0 CPU, diffusers 0.42.1, transformers
5.24.0) wrote every file of assets/demo byte for byte.
"""
import argparse
import json
import math
import os
import shutil
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data as D  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MAX_SEQ = 16  # the prompts' token length (demo.json max_sequence_length; Wan's default 512 would bury
# the ~9 real tokens among ~500 identical padding keys in cross-attention, which a short training never learns past)
SHIFT = 3.0  # the scheduler's flow_shift, also the training σ shift
STEPS = 10  # default sampling steps
GUIDANCE = 3.0  # default CFG scale
SEED = 2026

VAE_CFG = dict(
    base_dim=16, decoder_base_dim=16, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
    attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0, is_residual=True,
    in_channels=12, out_channels=12, patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4,
)
DIT_CFG = dict(
    patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=16, in_channels=16, out_channels=16,
    text_dim=32, freq_dim=64, ffn_dim=256, num_layers=4, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None, added_kv_proj_dim=None,
    rope_max_seq_len=1024, pos_embed_seq_len=None,
)
T5_CFG = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
              relative_attention_num_buckets=32, relative_attention_max_distance=128,
              feed_forward_proj="gated-gelu", dropout_rate=0.0)


def log(work, *msg):
    line = " ".join(str(m) for m in msg)
    print(line, flush=True)
    with open(os.path.join(work, "log.txt"), "a") as f:
        f.write(line + "\n")


def to_model(clips):
    """uint8 (B, F, H, W, 3) → (B, 3, F, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(clips)).float() / 127.5 - 1.0
    return x.permute(0, 4, 1, 2, 3).contiguous()


def round_f16_(module):
    """Rounds every parameter to the f16 values the folder stores (references then come from them)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.to(torch.float16).to(torch.float32))
    return module


# ------------------------------------------------------------------------------------------------ text
def stage_text(args):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import T5TokenizerFast, UMT5Config, UMT5EncoderModel
    from diffusers import WanPipeline

    d = os.path.join(args.work, "text")
    os.makedirs(d, exist_ok=True)
    # A SentencePiece Unigram model written out rather than trained: on 80 captions the trainer keeps
    # only characters. Every word of the captions is one piece (log-prob −1); single characters
    # (−10) spell anything else, so other words still tokenize (the model just never saw them).
    words = sorted({w for c in D.all_captions() for w in D.caption(*c).split()})
    chars = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789.,'-"))
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + w, -1.0) for w in words] + [(c, -10.0) for c in chars]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase(), normalizers.Replace("  ", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))])
    fast = T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0)
    vocab = tok.get_vocab_size()
    torch.manual_seed(SEED)
    t5 = round_f16_(UMT5EncoderModel(UMT5Config(vocab_size=vocab, **T5_CFG))).eval()
    pipe = WanPipeline(tokenizer=fast, text_encoder=t5, vae=None, scheduler=None, transformer=None)
    pipe.save_pretrained(d)
    prompts = [D.caption(*c) for c in D.all_captions()] + [""]
    with torch.no_grad():
        emb = pipe._get_t5_prompt_embeds(prompt=prompts, max_sequence_length=MAX_SEQ, device=torch.device("cpu"),
                                         dtype=torch.float32)
    for p in prompts[:2] + prompts[-1:]:
        log(args.work, "tokens", repr(p), fast(p).input_ids)
    torch.save(dict(prompts=prompts, embeds=emb), os.path.join(args.work, "embeds.pt"))
    log(args.work, f"text: vocab {vocab}, embeds {tuple(emb.shape)}")


# ------------------------------------------------------------------------------------------------ vae
def new_vae():
    from diffusers import AutoencoderKLWan
    return AutoencoderKLWan(latents_mean=[0.0] * VAE_CFG["z_dim"], latents_std=[1.0] * VAE_CFG["z_dim"], **VAE_CFG)


def vae_batch(rng, n, obj_weight=8.0):
    caps, clips, weights = [], [], []
    for _ in range(n):
        c, clip = D.random_clip(rng, fixed_prob=0.3)
        caps.append(c)
        clips.append(clip)
        bg = np.array(D.BACKGROUNDS[c[3]], np.float32)
        # weight: 1 on the background, 1 + obj_weight where the object (or its anti-aliased edge) is
        obj = (np.abs(clip.astype(np.float32) - bg).max(axis=-1) > 8).astype(np.float32)
        weights.append(1.0 + obj_weight * obj)
    w = torch.from_numpy(np.stack(weights))[:, None]  # (B, 1, F, H, W)
    return to_model(np.stack(clips)), w


def stage_vae(args, resume=False):
    torch.manual_seed(args.vae_seed + 10 * resume)
    rng = np.random.default_rng(args.vae_seed + 10 * resume)
    vae = new_vae().train()
    prior = []
    if resume:  # `vae_more`: continue from vae.pt with a fresh optimizer and cosine
        ck = torch.load(os.path.join(args.work, "vae.pt"))
        vae.load_state_dict(ck["state"])
        prior = ck["losses"]
    n_params = sum(p.numel() for p in vae.parameters())
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    steps = args.vae_more if resume else args.vae_steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / steps))))
    losses = []
    t0 = time.time()
    log(args.work, f"vae: {n_params} params, {steps} steps of batch {args.vae_batch}")
    for step in range(steps):
        x, w = vae_batch(rng, args.vae_batch, args.vae_obj_weight)
        post = vae.encode(x).latent_dist
        z = post.mean
        z_in = z + args.vae_jitter * torch.randn_like(z)
        rec = vae.decode(z_in).sample
        err = (rec - x).abs()
        loss = (w * (err + err ** 2)).mean() / w.mean() + 1e-4 * (z ** 2).mean()
        if args.vae_colour_weight > 0:
            # the object's mean colour per frame (its pixels weighted as in `w`): a hue shift moves
            # every object pixel the same way, which the per-pixel terms weigh as little as an edge
            o = (w - 1.0).clamp(min=0.0)
            mean = lambda t: (t * o).sum((3, 4)) / o.sum((3, 4)).clamp(min=1e-6)
            loss = loss + args.vae_colour_weight * (mean(rec) - mean(x)).abs().mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 20 == 0 or step == steps - 1:
            el = time.time() - t0
            log(args.work, f"vae step {step} loss {np.mean(losses[-20:]):.4f} z_std {z.std().item():.3f} "
                f"{el:.0f}s (eta {el / (step + 1) * (steps - step - 1):.0f}s)")
        if step % 100 == 99:
            torch.save(dict(state=vae.state_dict(), step=step, losses=losses), os.path.join(args.work, "vae_tmp.pt"))
    round_f16_(vae)
    torch.save(dict(state=vae.state_dict(), losses=prior + losses, seconds=time.time() - t0), os.path.join(args.work, "vae.pt"))
    log(args.work, f"vae: done in {time.time() - t0:.0f}s")


def stage_vae_eval(args):
    """The VAE alone on the 80 captions' fixed clips (posterior mean → decode): what the DiT can at
    best draw. A colour the VAE cannot keep apart (e.g. blue and green decoding to one teal) no
    DiT training recovers."""
    vae, _ = load_vae(args)
    passed, misses = 0, []
    with torch.no_grad():
        for parts in D.all_captions():
            x = to_model(D.render(*parts, D.fixed_start(parts[2]))[None])
            v = vae.decode(vae.encode(x).latent_dist.mean).sample[0]
            ok, msg = check(parts, D.measure(((v.permute(1, 2, 3, 0) + 1) * 127.5).clamp(0, 255).numpy()))
            passed += ok
            if not ok:
                misses.append(f"{D.caption(*parts)!r}: {msg}")
    for m in misses:
        log(args.work, f"vae_eval miss {m}")
    log(args.work, f"vae_eval: {passed}/{len(D.all_captions())} reconstructions named as captioned")
    # Random starts (image to video): the first frame, encoded alone by the causal VAE, must keep
    # the object where it is.
    rng = np.random.default_rng(SEED + 5)
    passed, off = 0, []
    with torch.no_grad():
        for _ in range(40):
            parts, clip = D.random_clip(rng, fixed_prob=0.0)
            v = vae.decode(vae.encode(to_model(clip[None])).latent_dist.mean).sample[0]
            m = D.measure(((v.permute(1, 2, 3, 0) + 1) * 127.5).clamp(0, 255).numpy())
            passed += check(parts, m)[0]
            off.append(float(np.abs(np.subtract(m["centroids"][0], D.measure(clip)["centroids"][0])).sum()))
    log(args.work, f"vae_eval: random starts {passed}/40 named as captioned; frame-0 centroid off by "
        f"{np.median(off):.1f} px (median), {np.max(off):.1f} px (max)")


def stage_vae_more(args):
    """More VAE steps on top of vae.pt (`--vae-more N`); the latents and the DiT must be redone."""
    stage_vae(args, resume=True)


def load_vae(args):
    vae = new_vae()
    ck = torch.load(os.path.join(args.work, "vae.pt"))
    vae.load_state_dict(ck["state"])
    return vae.eval(), ck


# ------------------------------------------------------------------------------------------------ latents
def stage_latents(args):
    vae, _ = load_vae(args)
    rng = np.random.default_rng(SEED + 2)
    t0 = time.time()
    fixed = [D.render(*c, D.fixed_start(c[2])) for c in D.all_captions()]
    pool_caps, pool = [], []
    for _ in range(args.i2v_clips):
        c = (str(rng.choice(list(D.COLOURS))), str(rng.choice(list(D.OBJECTS))), str(rng.choice(list(D.DIRECTIONS))),
             str(rng.choice(list(D.BACKGROUNDS))))
        pool_caps.append(D.all_captions().index(c))
        pool.append(D.render(*c, D.random_start(c[2], rng)))

    def encode(clips):
        out = []
        with torch.no_grad():
            for i in range(0, len(clips), 16):
                out.append(vae.encode(to_model(np.stack(clips[i:i + 16]))).latent_dist.mean)
        return torch.cat(out)

    zf, zp = encode(fixed), encode(pool)
    allz = torch.cat([zf, zp]).transpose(0, 1).reshape(VAE_CFG["z_dim"], -1)
    mean, std = allz.mean(1), allz.std(1)
    # round the statistics as the config will hold them (JSON floats of f32 values)
    torch.save(dict(fixed=zf, pool=zp, pool_caps=torch.tensor(pool_caps), mean=mean, std=std,
                    fixed_obj=object_cells(fixed, D.all_captions()),
                    pool_obj=object_cells(pool, [D.all_captions()[i] for i in pool_caps])),
               os.path.join(args.work, "latents.pt"))
    log(args.work, f"latents: fixed {tuple(zf.shape)} pool {tuple(zp.shape)} in {time.time() - t0:.0f}s; "
        f"mean {mean.numpy().round(2).tolist()} std {std.numpy().round(2).tolist()}")


def object_cells(clips, caps):
    """(N, T', h', w') float: the share of each latent cell's pixels the object covers (Wan2.2's VAE:
    latent frame 0 ← frame 0, latent frame j ← frames 4j−3 … 4j; 16×16 pixels per cell)."""
    out = []
    for clip, c in zip(clips, caps):
        bg = np.array(D.BACKGROUNDS[c[3]], np.float32)
        m = (np.abs(clip.astype(np.float32) - bg).max(axis=-1) > 8).astype(np.float32)  # (F, H, W)
        groups = [m[:1]] + [m[4 * j - 3:4 * j + 1] for j in range(1, (m.shape[0] - 1) // 4 + 1)]
        s = VAE_CFG["scale_factor_spatial"]
        cells = [g.mean(0).reshape(m.shape[1] // s, s, m.shape[2] // s, s).mean((1, 3)) for g in groups]
        out.append(np.stack(cells))
    return torch.from_numpy(np.stack(out))


# ------------------------------------------------------------------------------------------------ dit
def new_dit():
    from diffusers import WanTransformer3DModel
    return WanTransformer3DModel(**DIT_CFG)


def per_token_t(sigma, t_lat, grid_hw, first_zero):
    """(B, L) timesteps: σ·1000 per token, 0 on latent frame 0's tokens where `first_zero`."""
    per_frame = grid_hw
    t = (sigma * 1000.0)[:, None].repeat(1, t_lat * per_frame)
    t[first_zero, :per_frame] = 0.0
    return t


def stage_dit(args):
    lat = torch.load(os.path.join(args.work, "latents.pt"))
    emb = torch.load(os.path.join(args.work, "embeds.pt"))["embeds"]  # (81, 512, 32); last: ""
    mean, std = lat["mean"].view(1, -1, 1, 1, 1), lat["std"].view(1, -1, 1, 1, 1)
    fixed = (lat["fixed"] - mean) / std
    pool = (lat["pool"] - mean) / std
    pool_caps = lat["pool_caps"]
    # `--dit-obj-weight k`: the loss of each latent cell weighted 1 + k · (its object coverage), so the
    # object's few cells (one or two of 16 per frame) are not drowned by the plain background's
    obj_f, obj_p = lat["fixed_obj"], lat["pool_obj"]
    n_fixed = fixed.shape[0]
    torch.manual_seed(SEED + 3)
    dit = new_dit().train()
    ema = new_dit().eval()
    ema.load_state_dict(dit.state_dict())
    for p in ema.parameters():
        p.requires_grad_(False)
    n_params = sum(p.numel() for p in dit.parameters())
    opt = torch.optim.AdamW(dit.parameters(), lr=args.dit_lr, weight_decay=0.0)
    steps, B = args.dit_steps, args.dit_batch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * s / steps))))
    _, _, t_lat, lh, lw = fixed.shape
    grid_hw = (lh // 2) * (lw // 2)
    g = torch.Generator().manual_seed(SEED + 4)
    losses = []
    t0 = time.time()
    log(args.work, f"dit: {n_params} params, {steps} steps of batch {B}, latents {tuple(fixed.shape[1:])}")
    for step in range(args.dit_stop or steps):  # --dit-stop: end early on the same schedule
        i2v = torch.rand(B, generator=g) < 0.5
        x0 = torch.empty(B, *fixed.shape[1:])
        cap = torch.empty(B, dtype=torch.long)
        fi = torch.randint(0, n_fixed, (B,), generator=g)
        pi = torch.randint(0, pool.shape[0], (B,), generator=g)
        obj = torch.empty(B, 1, *fixed.shape[2:])
        for b in range(B):
            if i2v[b]:
                x0[b], cap[b], obj[b, 0] = pool[pi[b]], pool_caps[pi[b]], obj_p[pi[b]]
            else:
                x0[b], cap[b], obj[b, 0] = fixed[fi[b]], fi[b], obj_f[fi[b]]
        drop = torch.rand(B, generator=g) < 0.1
        cap[drop] = emb.shape[0] - 1
        u = torch.rand(B, generator=g)
        sigma = SHIFT * u / (1 + (SHIFT - 1) * u)
        noise = torch.randn(x0.shape, generator=g)
        s = sigma.view(B, 1, 1, 1, 1)
        xt = (1 - s) * x0 + s * noise
        xt[i2v, :, 0] = x0[i2v, :, 0]
        ts = per_token_t(sigma, t_lat, grid_hw, i2v)
        pred = dit(hidden_states=xt, timestep=ts, encoder_hidden_states=emb[cap], return_dict=False)[0]
        target = noise - x0
        m = (1.0 + args.dit_obj_weight * obj)
        m[i2v, :, 0] = 0.0
        loss = (((pred - target) ** 2) * m).sum() / (m.sum() * pred.shape[1])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dit.parameters(), 1.0)
        opt.step()
        sched.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), dit.parameters()):
                pe.mul_(decay).add_(pm, alpha=1 - decay)
        losses.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            el = time.time() - t0
            log(args.work, f"dit step {step} loss {np.mean(losses[-100:]):.4f} {el:.0f}s "
                f"(eta {el / (step + 1) * (steps - step - 1):.0f}s)")
        if step % 250 == 249:
            torch.save(dict(state=ema.state_dict(), step=step, losses=losses), os.path.join(args.work, "dit_tmp.pt"))
    round_f16_(ema)
    torch.save(dict(state=ema.state_dict(), losses=losses, seconds=time.time() - t0), os.path.join(args.work, "dit.pt"))
    log(args.work, f"dit: done in {time.time() - t0:.0f}s")


# ------------------------------------------------------------------------------------------------ export
def demo_json():
    return {
        "about": "Tessera's built-in demo: a tiny Wan2.2-TI2V-architecture model trained by scripts/demo/train.py "
                 "on procedurally generated clips of one object moving over a plain background.",
        "max_sequence_length": MAX_SEQ,
        "height": D.H, "width": D.W, "frames": D.F, "steps": STEPS, "guidance": GUIDANCE, "shift": SHIFT,
        "template": D.TEMPLATE,
        "vocabulary": [
            {"slot": "colour", "words": list(D.COLOURS)}, {"slot": "object", "words": list(D.OBJECTS)},
            {"slot": "direction", "words": list(D.DIRECTIONS)}, {"slot": "background", "words": list(D.BACKGROUNDS)},
        ],
        "example": D.caption("red", "ball", "right", "black"),
    }


def stage_export(args):
    from diffusers import UniPCMultistepScheduler, WanPipeline
    from transformers import T5TokenizerFast, UMT5EncoderModel

    lat = torch.load(os.path.join(args.work, "latents.pt"))
    vae, _ = load_vae(args)
    vae.register_to_config(latents_mean=[float(v) for v in lat["mean"]], latents_std=[float(v) for v in lat["std"]])
    dit = new_dit()
    dit.load_state_dict(torch.load(os.path.join(args.work, "dit.pt"))["state"])
    text = os.path.join(args.work, "text")
    tok = T5TokenizerFast.from_pretrained(os.path.join(text, "tokenizer"))
    t5 = UMT5EncoderModel.from_pretrained(os.path.join(text, "text_encoder"))
    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=SHIFT,
                                    num_train_timesteps=1000)
    pipe = WanPipeline(tokenizer=tok, text_encoder=t5, transformer=dit, vae=vae, scheduler=sched, expand_timesteps=True)
    if os.path.exists(args.out):
        shutil.rmtree(args.out)
    pipe.to(torch.float16).save_pretrained(args.out)
    with open(os.path.join(args.out, "demo.json"), "w") as f:
        json.dump(demo_json(), f, indent=2)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(r, n)) for r, _, ns in os.walk(args.out) for n in ns)
    log(args.work, f"export: {args.out} {total / 2**20:.2f} MiB")


# ------------------------------------------------------------------------------------------------ eval
EVAL_PROMPTS = [  # every colour, both objects, every direction, both backgrounds
    ("red", "ball", "right", "black"), ("green", "square", "left", "gray"), ("blue", "ball", "up", "gray"),
    ("yellow", "square", "down", "black"), ("white", "ball", "left", "gray"), ("red", "square", "up", "black"),
    ("blue", "square", "right", "black"), ("white", "square", "down", "gray"), ("green", "ball", "down", "black"),
    ("yellow", "ball", "up", "gray"),
]


def check(parts, m, start=None):
    ok_c = m["colour"] == parts[0]
    ok_d = m["direction"] == parts[2]
    ok_b = m["background"] == parts[3]
    return ok_c and ok_d and ok_b, f"colour {m['colour']:6s} rgb {np.round(m['mean_rgb']).astype(int).tolist()} " \
        f"move ({m['motion'][0]:+.1f},{m['motion'][1]:+.1f}) {m['direction']:5s} bg {m['background']}"


def stage_eval(args):
    from diffusers import WanImageToVideoPipeline, WanPipeline
    from PIL import Image

    torch.set_grad_enabled(False)
    pipe = WanPipeline.from_pretrained(args.out, torch_dtype=torch.float32)
    i2v = WanImageToVideoPipeline(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae,
                                  scheduler=pipe.scheduler, transformer=pipe.transformer, image_encoder=None,
                                  image_processor=None, expand_timesteps=True)
    strip = []
    for guidance in (GUIDANCE, 1.0):
        passed = 0
        for k, parts in enumerate(EVAL_PROMPTS):
            prompt = D.caption(*parts)
            g = torch.Generator().manual_seed(k)
            v = pipe(prompt=prompt, height=D.H, width=D.W, num_frames=D.F, num_inference_steps=STEPS,
                     guidance_scale=guidance, generator=g, output_type="np", max_sequence_length=MAX_SEQ).frames[0]  # (F, H, W, 3) in [0, 1]
            m = D.measure(v * 255.0)
            ok, msg = check(parts, m)
            passed += ok
            log(args.work, f"eval t2v g={guidance} {'PASS' if ok else 'FAIL'} {prompt!r:45s} {msg}")
            if guidance == GUIDANCE and k < 4:
                strip.append((v * 255).round().astype(np.uint8))
        log(args.work, f"eval t2v g={guidance}: {passed}/{len(EVAL_PROMPTS)}")
    rng = np.random.default_rng(7)
    passed = 0
    for k, parts in enumerate(EVAL_PROMPTS[:6]):
        start = D.random_start(parts[2], rng)
        clip = D.render(*parts, start)
        img = Image.fromarray(clip[0])
        g = torch.Generator().manual_seed(100 + k)
        # The prompt encoded by the T2V pipeline (the same tokenizer and UMT5): diffusers 0.42.1's
        # I2V prompt_clean calls ftfy without checking that it is installed.
        emb = pipe._get_t5_prompt_embeds(prompt=[D.caption(*parts), ""], max_sequence_length=MAX_SEQ)
        v = i2v(image=img, prompt_embeds=emb[:1], negative_prompt_embeds=emb[1:], height=D.H, width=D.W, num_frames=D.F,
                num_inference_steps=STEPS, guidance_scale=GUIDANCE, generator=g, output_type="np").frames[0]
        m = D.measure(v * 255.0)
        ok, msg = check(parts, m)
        err0 = np.abs(m["centroids"][0][0] - start[0]) + np.abs(m["centroids"][0][1] - start[1])
        passed += ok
        log(args.work, f"eval i2v {'PASS' if ok else 'FAIL'} {D.caption(*parts)!r:45s} start ({start[0]:.0f},{start[1]:.0f}) "
            f"frame-0 centroid off by {err0:.1f}px {msg}")
    log(args.work, f"eval i2v: {passed}/6")
    # the strip: frames 0, 2, 4, 6, 8 of four prompts, ×2 nearest
    rows = [np.concatenate([clip[f] for f in range(0, D.F, 2)], axis=1) for clip in strip]
    Image.fromarray(np.concatenate(rows, axis=0)).resize(
        (rows[0].shape[1] * 2, len(rows) * rows[0].shape[0] * 2), Image.NEAREST).save(
        os.path.join(REPO, "assets", "demo-strip.png"), optimize=True)
    loss_png(args)


def stage_eval_all(args):
    """Text to video on all 80 captions (guidance GUIDANCE, seed = the caption's index): the
    vocabulary's coverage beyond the 10 prompts the tests assert."""
    from diffusers import WanPipeline

    torch.set_grad_enabled(False)
    pipe = WanPipeline.from_pretrained(args.out, torch_dtype=torch.float32)
    passed, misses = 0, []
    for k, parts in enumerate(D.all_captions()):
        prompt = D.caption(*parts)
        v = pipe(prompt=prompt, height=D.H, width=D.W, num_frames=D.F, num_inference_steps=STEPS,
                 guidance_scale=GUIDANCE, generator=torch.Generator().manual_seed(k), output_type="np",
                 max_sequence_length=MAX_SEQ).frames[0]
        ok, msg = check(parts, D.measure(v * 255.0))
        passed += ok
        if not ok:
            misses.append(f"{prompt!r}: {msg}")
    for m in misses:
        log(args.work, f"eval_all miss {m}")
    log(args.work, f"eval_all t2v g={GUIDANCE}: {passed}/{len(D.all_captions())}")


def loss_png(args):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vae = torch.load(os.path.join(args.work, "vae.pt"))["losses"]
    dit = torch.load(os.path.join(args.work, "dit.pt"))["losses"]
    fig, ax = plt.subplots(1, 2, figsize=(8, 2.6), dpi=80)
    for a, ls, name in ((ax[0], vae, "VAE (weighted L1+L2)"), (ax[1], dit, "DiT (flow matching MSE)")):
        k = max(1, len(ls) // 100)
        sm = np.convolve(ls, np.ones(k) / k, mode="valid")
        a.plot(ls, lw=0.4, alpha=0.4)
        a.plot(np.arange(len(sm)) + k - 1, sm, lw=1.2)
        a.set_yscale("log")
        a.set_title(name, fontsize=9)
        a.set_xlabel("step", fontsize=8)
        a.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(REPO, "assets", "demo-loss.png"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/work/demo-train")
    ap.add_argument("--out", default=os.path.join(REPO, "assets", "demo"))
    ap.add_argument("--stages", default="text,vae,latents,dit,export,eval")
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--vae-steps", type=int, default=800)
    ap.add_argument("--vae-batch", type=int, default=2)
    ap.add_argument("--vae-lr", type=float, default=1e-3)
    ap.add_argument("--vae-seed", type=int, default=SEED + 1, help="seed of the VAE's initialisation and clips")
    ap.add_argument("--vae-obj-weight", type=float, default=8.0)
    ap.add_argument("--vae-more", type=int, default=0, help="steps of the vae_more stage")
    ap.add_argument("--vae-jitter", type=float, default=0.02)
    ap.add_argument("--vae-colour-weight", type=float, default=0.0, help="loss weight of the object's mean colour error")
    ap.add_argument("--i2v-clips", type=int, default=600)
    ap.add_argument("--dit-steps", type=int, default=1500)
    ap.add_argument("--dit-stop", type=int, default=0, help="stop after this many of --dit-steps (the LR schedule stays that of --dit-steps)")
    ap.add_argument("--dit-batch", type=int, default=16)
    ap.add_argument("--dit-lr", type=float, default=1e-3)
    ap.add_argument("--dit-obj-weight", type=float, default=0.0, help="extra loss weight of the object's latent cells")
    ap.add_argument("--ema", type=float, default=0.99)
    args = ap.parse_args()
    if args.fresh and os.path.exists(args.work):
        shutil.rmtree(args.work)
    os.makedirs(args.work, exist_ok=True)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    done = {"text": "embeds.pt", "vae": "vae.pt", "latents": "latents.pt", "dit": "dit.pt"}
    for st in args.stages.split(","):
        if st in done and os.path.exists(os.path.join(args.work, done[st])):
            log(args.work, f"{st}: have {done[st]}, skipped")
            continue
        t0 = time.time()
        globals()[f"stage_{st}"](args)
        log(args.work, f"stage {st}: {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
