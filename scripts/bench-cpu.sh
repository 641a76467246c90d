#!/usr/bin/env bash
# The five CPU rows of issue 20, Tessera beside diffusers, interleaved, on a quiet machine:
#   Wan2.1 VAE decode 1×16×2×32×32 → 5×256×256, Wan2.2 VAE decode 1×48×2×16×16 → 5×256×256 and
#   1×48×1×8×8 → 1×128×128, the TI2V-5B-width DiT forward (2 blocks) at 1,024 and 4,096 tokens.
# f32, THREADS threads per engine (default: all cores), RUNS timed processes per engine after one
# warm-up process each; every row states the load average before/after and is refused as a
# comparison when the machine was busy (see `tessera bench vae --help`).
#
# usage: scripts/bench-cpu.sh [PYTHON]     (PYTHON: an interpreter with torch + diffusers;
#                                           default /work/venv/bin/python3, else python3)
# env:   RUNS (3), THREADS, MODELS_DIR (target/bench-models), OUT (target/bench-cpu.md)
# Prints the README's Benchmarks tables (markdown) and writes them, with JSON beside, to $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-}"
if [[ -z "$PY" ]]; then
  if [[ -x /work/venv/bin/python3 ]]; then PY=/work/venv/bin/python3; else PY=python3; fi
fi
"$PY" -c 'import torch, diffusers' || { echo "error: $PY cannot import torch and diffusers (pip install torch diffusers safetensors)" >&2; exit 2; }
RUNS="${RUNS:-3}"
MODELS_DIR="${MODELS_DIR:-target/bench-models}"
OUT="${OUT:-target/bench-cpu.md}"
THREAD_ARGS=()
[[ -n "${THREADS:-}" ]] && THREAD_ARGS=(--threads "$THREADS")

cargo build --release -p tessera_app --bin tessera
BIN=target/release/tessera
mkdir -p "$(dirname "$OUT")"
{
  echo "Measured $(date -u '+%Y-%m-%d %H:%M UTC') at $(git rev-parse --short HEAD) with \`scripts/bench-cpu.sh\`;"
  echo "diffusers $("$PY" -c 'import diffusers; print(diffusers.__version__)'), torch $("$PY" -c 'import torch; print(torch.__version__)')."
  echo
  echo "#### VAE decode (\`tessera bench vae\`)"
  echo
  "$BIN" bench vae --models-dir "$MODELS_DIR" --arch wan2.1-vae,wan2.2-vae --tiled no \
    --sizes "wan2.1-vae=2,32,32;wan2.2-vae=2,16,16;wan2.2-vae=1,8,8" \
    --diffusers "$PY" --runs "$RUNS" "${THREAD_ARGS[@]}" --json "${OUT%.md}-vae.json"
  echo
  echo "#### DiT forward (\`tessera bench dit\`)"
  echo
  "$BIN" bench dit --models-dir "$MODELS_DIR" --arch wan2.2-ti2v-5b --layers 2 --sizes "2,32,64;4,64,64" \
    --diffusers "$PY" --runs "$RUNS" "${THREAD_ARGS[@]}" --json "${OUT%.md}-dit.json"
} | tee "$OUT"
echo "wrote $OUT" >&2
