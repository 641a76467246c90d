"""PyTorch/diffusers side of scripts/gpu-check.sh: the same shapes on the same GPU, for comparison.

Prints `SUMMARY torch <key> <value>` lines. TF32 off (the engine's f32 GEMMs use no TF32). Times are
the median of 3 runs after a warm-up (CUDA-synchronised); peaks are torch.cuda.max_memory_allocated
(the caching allocator's live tensors: compare with the engine's pool_used_high).
Stages: sdpa (always), dit and vae (only where diffusers is installed).
"""
import sys
import time

import torch

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
GIB = float(1 << 30)


def out(key, value):
    print(f"SUMMARY torch {key} {value}", flush=True)


def timed(fn, runs=3):
    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2], torch.cuda.max_memory_allocated() / GIB


def sdpa():
    L = 31 * 22 * 40
    for heads in (24, 6):
        q, k, v = (torch.randn(1, heads, L, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        s, peak = timed(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
        out(f"sdpa_bf16_h{heads}_s", f"{s:.4f}")
        out(f"sdpa_bf16_h{heads}_peak_gib", f"{peak:.2f}")


def dit():
    from diffusers import WanTransformer3DModel

    with torch.device("cuda"):
        model = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=24, attention_head_dim=128, in_channels=48, out_channels=48,
            text_dim=4096, freq_dim=256, ffn_dim=14336, num_layers=30, cross_attn_norm=True, eps=1e-6,
            rope_max_seq_len=1024,
        ).to(torch.bfloat16).eval()
        x = torch.randn(1, 48, 31, 44, 80, dtype=torch.bfloat16)
        t = torch.full((1,), 900.0)
        text = torch.randn(1, 512, 4096, dtype=torch.bfloat16)
    with torch.no_grad():
        s, peak = timed(lambda: model(x, t, text, return_dict=False), runs=1)
    out("dit_ti2v5b_27280tok_bf16_forward_s", f"{s:.2f}")
    out("dit_ti2v5b_27280tok_bf16_peak_gib", f"{peak:.2f}")


def vae():
    from diffusers import AutoencoderKLWan

    with torch.device("cuda"):
        model = AutoencoderKLWan(
            base_dim=160, decoder_base_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
            attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0, is_residual=True,
            in_channels=12, out_channels=12, patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4,
        ).eval()
        z = torch.randn(1, 48, 31, 44, 80)
    with torch.no_grad():
        for name, tiled in (("untiled", False), ("tiled", True)):
            if tiled:
                model.enable_tiling()
            s, peak = timed(lambda: model.decode(z, return_dict=False), runs=1)
            out(f"vae_{name}_decode_s", f"{s:.1f}")
            out(f"vae_{name}_peak_gib", f"{peak:.2f}")


def main():
    out("versions", f"torch={torch.__version__},cuda={torch.version.cuda},gpu={torch.cuda.get_device_name(0).replace(' ', '_')}")
    stages = sys.argv[1:] or ["sdpa", "dit", "vae"]
    for name in stages:
        try:
            {"sdpa": sdpa, "dit": dit, "vae": vae}[name]()
        except ImportError as e:
            out(f"{name}", f"SKIP ({e.name} not installed)")
        except Exception as e:  # one failing stage must not hide the others
            out(f"{name}_ERROR", str(e).replace("\n", " ")[:300])
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
