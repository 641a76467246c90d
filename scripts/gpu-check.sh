#!/usr/bin/env bash
# The GPU check in two steps:
#
#   scripts/gpu-check.sh build [--cuda 13|12]   # here (any x86-64 Linux, no GPU needed; hours on 2 cores)
#   scripts/gpu-check.sh run                    # on a machine with one NVIDIA GPU (no Rust needed), <= 8 min
#
# build: the CUDA worker and the check program (engine/examples/gpu_check.rs) through
#   scripts/cuda-build.sh, stripped and xz-compressed into .gpu/ (ignored by git), and prints the size
#   of what a run carries: the tracked tree + .gpu/ must stay under 64 MiB.
# run: finds the CUDA/NCCL libraries (a PyTorch install's site-packages/nvidia/*/lib, /usr/local/cuda),
#   unpacks .gpu/, then runs each stage under its own timeout inside an overall deadline, goes on after
#   a failing or timed-out stage, and ends with a summary table:
#     env     device, compute capability, NCCL, first-kernel JIT time
#     parity  golden DiT (2 attention blockings, scalar and per-token t) and Wan2.2 VAE, f32 and bf16
#     dit     real-size TI2V-5B forward at 27,280 tokens (720p), bf16: time, peak device memory
#     halo    Wan2.2 VAE decode 1280x704x121 in halo mode over 2 ranks sharing the GPU (sockets)
#     vae     the same decode on one rank, untiled and tiled
#     torch   PyTorch SDPA, and diffusers' TI2V-5B forward / Wan2.2 decode where diffusers is installed
#   Everything is also in .gpu/out/log.txt.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
G="$ROOT/.gpu"
cmd="${1:-}"; shift || true

if [ "$cmd" = build ]; then
  set -e
  "$ROOT/scripts/cuda-build.sh" "$@" --example gpu_check
  T="${CARGO_TARGET_DIR:-$ROOT/target-cuda}"
  mkdir -p "$G"
  for b in "$T/release/tessera-worker" "$T/release/examples/gpu_check"; do
    strip -o "$G/$(basename "$b")" "$b"
    xz -T2 -9 -f "$G/$(basename "$b")"
  done
  ls -l "$G"
  tree_mib=$(git -C "$ROOT" ls-files -z | xargs -0 stat -c %s | awk '{s+=$1} END {print s/1048576}')
  gpu_mib=$(du -sm "$G" | cut -f1)
  echo "gpu-check: tracked tree ${tree_mib} MiB + .gpu ${gpu_mib} MiB (limit 64 MiB per carried run)"
  exit 0
fi
if [ "$cmd" != run ]; then sed -n '2,20p' "$0"; exit 2; fi

OUT="${OUT:-$G/out}"; mkdir -p "$OUT"; LOG="$OUT/log.txt"; : > "$LOG"
START=$(date +%s); DEADLINE=$((START + ${GPU_CHECK_SECONDS:-470}))
say() { echo "$*" | tee -a "$LOG"; }
declare -a ROWS

say "=== gpu-check $(date -u +%FT%TZ)"
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,temperature.gpu --format=csv 2>&1 | tee -a "$LOG"

# Runtime libraries: the worker NEEDs libcudart, libcublas(Lt), libcurand, libnccl (+ the driver's libcuda).
LIBS=""
for d in $(python3 - <<'PY' 2>/dev/null
import glob, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()]
for r in roots:
    for lib in sorted(glob.glob(r + "/nvidia/*/lib")):
        print(lib)
PY
) /usr/local/cuda/lib64 /usr/local/cuda-*/lib64; do
  [ -d "$d" ] && LIBS="${LIBS:+$LIBS:}$d"
done
export LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CUDA_CACHE_PATH="$OUT/cuda-cache" CUDA_CACHE_MAXSIZE=4294967296
export RUST_BACKTRACE=1 RUST_LOG=warn NCCL_DEBUG=WARN
say "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"

BIN="$OUT/bin"; mkdir -p "$BIN"
for b in tessera-worker gpu_check; do
  if [ -f "$G/$b.xz" ]; then
    python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$G/$b.xz" "$BIN/$b"
    chmod +x "$BIN/$b"
  else
    say "MISSING $G/$b.xz (run 'scripts/gpu-check.sh build' first)"
  fi
done
if [ -x "$BIN/gpu_check" ]; then
  ldd "$BIN/gpu_check" | grep -E "cuda|cublas|curand|nccl|nvrtc|not found" | tee -a "$LOG"
fi

# stage NAME TIMEOUT_S MIN_S COMMAND...: runs unless fewer than MIN_S seconds remain.
stage() {
  local name="$1" limit="$2" min="$3"; shift 3
  local now left rc t0
  now=$(date +%s); left=$((DEADLINE - now))
  if [ "$left" -lt "$min" ]; then ROWS+=("$name|SKIP (${left}s left)|-"); say "=== SKIP $name"; return; fi
  [ "$limit" -gt "$left" ] && limit="$left"
  say "=== $name (limit ${limit}s)"
  t0=$(date +%s)
  timeout -k 5 "$limit" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  local took=$(( $(date +%s) - t0 ))
  case "$rc" in 0) ROWS+=("$name|ok|${took}s") ;; 124|137) ROWS+=("$name|TIMEOUT|${took}s") ;; *) ROWS+=("$name|FAIL rc=$rc|${took}s") ;; esac
}

stage env 45 20 "$BIN/gpu_check" env
stage parity 60 30 "$BIN/gpu_check" parity "$ROOT/tests/fixtures/golden"
stage dit 120 60 "$BIN/gpu_check" dit
stage halo 150 60 "$BIN/gpu_check" halo "$BIN/tessera-worker" "$OUT/scratch"
stage vae 150 60 "$BIN/gpu_check" vae
stage torch 90 30 python3 "$ROOT/scripts/gpu_check_torch.py"

say ""
say "=== summary ($(( $(date +%s) - START ))s)"
printf '%-8s %-18s %s\n' stage status time | tee -a "$LOG"
for r in "${ROWS[@]}"; do IFS='|' read -r a b c <<<"$r"; printf '%-8s %-18s %s\n' "$a" "$b" "$c" | tee -a "$LOG"; done
say ""
grep '^SUMMARY' "$LOG" | awk '{k=$2" "$3; $1=$2=$3=""; printf "%-44s %s\n", k, $0}' | tee "$OUT/summary.txt"
nvidia-smi --query-gpu=memory.used,clocks.sm,temperature.gpu --format=csv,noheader 2>&1 | tee -a "$LOG"
