#!/usr/bin/env bash
# Calibrates the memory planner (`tessera plan`) against measured peaks of the real code on CPU:
#   - `tessera vae decode --ranks N --report`: per-rank heap peaks (counting allocator) of the Wan2.1
#     and Wan2.2 VAE decoders, untiled (1 rank), halo (2-4 ranks) and tiled;
#   - `tessera bench dit --case-model`: peak RSS of one DiT forward (TI2V-5B widths, 2 blocks);
#   - `tessera generate --report`: peak RSS of a whole single-rank generation (TI2V-5B and A14B
#     widths, 1-2 blocks, pipeline residency).
# and prints a markdown table of predicted vs measured bytes and the relative error (README,
# "Memory planner"). RSS-based rows subtract the RSS of an idle `tessera` process (code and
# libraries, which the planner does not model).
#
# Usage: scripts/calibrate_planner.sh [WORKDIR]   (default target/calib; needs ~12 GB of disk and
# the debug binaries: cargo build -p tessera_app -p tessera_engine --bins). Each run takes < 2 min
# on 2 cores. On a GPU machine the same commands with --device cuda would calibrate the CUDA path.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${TESSERA_BIN:-$ROOT/target/debug}
WORK=${1:-$ROOT/target/calib}
T=$BIN/tessera
export TESSERA_WORKER_EXE="$BIN/tessera-worker"
THREADS=$(nproc)
mkdir -p "$WORK"
cd "$WORK"

# f32 safetensors with pseudo-random values: tensors.py OUT NAME:D0,D1[=CONST] ...
cat > tensors.py <<'EOF'
import json, random, struct, sys
out, specs = sys.argv[1], sys.argv[2:]
rng = random.Random(0)
header, blobs, off = {}, [], 0
for spec in specs:
    name, rest = spec.split(":")
    dims, _, const = rest.partition("=")
    dims = [int(d) for d in dims.split(",")]
    n = 1
    for d in dims:
        n *= d
    vals = [float(const)] * n if const else [rng.gauss(0.0, 1.0) for _ in range(n)]
    blob = struct.pack(f"<{n}f", *vals)
    header[name] = {"dtype": "F32", "shape": dims, "data_offsets": [off, off + len(blob)]}
    blobs.append(blob)
    off += len(blob)
h = json.dumps(header).encode()
h += b" " * ((8 - len(h) % 8) % 8)
with open(out, "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
EOF

[ -d ti2v ] || "$T" make-model --arch wan2.2-ti2v-5b --layers 2 --out ti2v
[ -d a14b ] || "$T" make-model --arch wan2.2-t2v-a14b --layers 1 --out a14b

baseline=$(/usr/bin/time -f %M "$T" --version 2>&1 >/dev/null | tail -1)
baseline=$((baseline * 1024))
# Finished rows are kept: rerunning resumes after the last finished case (delete rows.tsv to redo).
rows=rows.tsv
touch "$rows"

# predicted peak of rank R in phase P: plan ARGS... -> bytes
predict() {
  local rank=$1 phase=$2
  shift 2
  "$T" plan "$@" --device cpu --threads "$THREADS" --json |
    python3 -c "import json,sys; d=json.load(sys.stdin); print(next(p['peak_bytes'] for p in d['ranks'][$rank]['phases'] if p['name']=='$phase'))"
}

# VAE decode on workers: heap peak per rank from the report.
vae_case() {
  local label=$1 model=$2 lat=$3 ranks=$4 tiling=$5
  shift 5
  grep -qF "$label	" "$rows" && return 0
  local extra=()
  [ "$tiling" = "-" ] || extra=(--tiling "$tiling")
  "$T" vae decode --model "$model" --latents "$lat" --out out.safetensors --ranks "$ranks" "${extra[@]}" --report r.json >/dev/null 2>&1
  for r in $(seq 0 $((ranks - 1))); do
    local measured
    measured=$(python3 -c "import json; print(json.load(open('r.json'))['ranks'][$r]['peak_bytes'])")
    local plan_args=(--model "$model" "$@" --residency phased --ranks "$ranks")
    if [ "$tiling" = "-" ]; then
      plan_args+=(--vae-parallel "$ranks")
    else
      plan_args+=(--vae-mode tiles --tiling "$tiling" --vae-parallel 1)
    fi
    local predicted
    predicted=$(predict "$r" vae_decode "${plan_args[@]}")
    printf '%s\t%s\t%s\t%s\theap\n' "$label" "$r" "$predicted" "$measured" >> "$rows"
  done
}

python3 tensors.py lat22.safetensors latents:1,48,2,4,8
python3 tensors.py lat21.safetensors latents:1,16,3,16,16
# Wan2.2 VAE (TI2V-5B): latents 48×2×4×8 → 5 frames of 64×128.
vae_case "Wan2.2 VAE decode 64×128×5, 1 rank" ti2v lat22.safetensors 1 - --height 64 --width 128 --frames 5 --guidance 1
vae_case "Wan2.2 VAE decode 64×128×5, halo 2 ranks" ti2v lat22.safetensors 2 - --height 64 --width 128 --frames 5 --guidance 1
vae_case "Wan2.2 VAE decode 64×128×5, tiled 64/48" ti2v lat22.safetensors 1 64,64,48,48 --height 64 --width 128 --frames 5 --guidance 1
# Wan2.1 VAE (A14B): latents 16×3×16×16 → 9 frames of 128×128.
vae_case "Wan2.1 VAE decode 128×128×9, 1 rank" a14b lat21.safetensors 1 - --height 128 --width 128 --frames 9 --guidance 1
vae_case "Wan2.1 VAE decode 128×128×9, halo 2 ranks" a14b lat21.safetensors 2 - --height 128 --width 128 --frames 9 --guidance 1
vae_case "Wan2.1 VAE decode 128×128×9, halo 4 ranks" a14b lat21.safetensors 4 - --height 128 --width 128 --frames 9 --guidance 1
vae_case "Wan2.1 VAE decode 128×128×9, tiled 64/48" a14b lat21.safetensors 1 64,64,48,48 --height 128 --width 128 --frames 9 --guidance 1

# One DiT forward (TI2V-5B widths, 2 blocks) in a fresh process: peak RSS − idle RSS.
for size in "4,32,32" "8,32,64"; do
  IFS=, read -r f h w <<< "$size"
  label="DiT forward TI2V-5B widths ×2 blocks, $((f * h * w / 4)) tokens"
  grep -qF "$label	" "$rows" && continue
  python3 tensors.py dit_in.safetensors "latents:1,48,$f,$h,$w" "context:1,512,4096" "timestep:1=500"
  measured=$("$T" bench dit --case-model ti2v/transformer --case-inputs dit_in.safetensors --warmup 0 --iters 1 |
    python3 -c "import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['peak_rss_bytes'])")
  predicted=$(predict 0 denoise --model ti2v --residency phased --height $((h * 16)) --width $((w * 16)) --frames $((4 * f - 3)) --guidance 1)
  printf '%s\t0\t%s\t%s\trss\n' "$label" "$predicted" "$((measured - baseline))" >> "$rows"
done

# Whole generations, one rank in-process (pipeline residency: DiT + whole VAE loaded throughout).
gen_case() {
  local label=$1 model=$2 h=$3 w=$4 f=$5
  grep -qF "$label	" "$rows" && return 0
  python3 tensors.py emb.safetensors "prompt_embeds:1,512,4096" "negative_prompt_embeds:1,512,4096"
  "$T" generate --model "$model" --prompt-embeds emb.safetensors --negative-prompt-embeds emb.safetensors \
    --height "$h" --width "$w" --frames "$f" --steps 2 --guidance 5 --out gen.safetensors --report g.json >/dev/null 2>&1
  local measured predicted
  measured=$(python3 -c "import json; print(json.load(open('g.json'))['ranks'][0]['peak_bytes'])")
  predicted=$("$T" plan --model "$model" --height "$h" --width "$w" --frames "$f" --guidance 5 --device cpu --threads "$THREADS" --json |
    python3 -c "import json,sys; print(json.load(sys.stdin)['ranks'][0]['peak_bytes'])")
  printf '%s\t0\t%s\t%s\trss\n' "$label" "$predicted" "$((measured - baseline))" >> "$rows"
}
gen_case "generate TI2V-5B widths ×2 blocks, 64×128×5, CFG" ti2v 64 128 5
gen_case "generate T2V-A14B widths ×1 block ×2 experts, 128×128×9, CFG" a14b 128 128 9

# Weights in W are the planner's parameter-count bytes for these make-model folders (tessera plan
# --json, 'weights' terms); they are exact, so the working-set column isolates the replay's error.
python3 - "$rows" <<'EOF'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
# Weights the planner counts in each row (exact: parameter counts), to show the working-set error too.
W = {"Wan2.2 VAE": 2371201264, "Wan2.1 VAE": 303799244, "DiT forward": 1669600000}
out = ["| configuration | rank | predicted | measured | error | working set predicted / measured (error) | measure |",
       "|---|---|---|---|---|---|---|"]
worst = worst_ws = 0.0
for label, rank, pred, meas, kind in rows:
    p, m = int(pred), int(meas)
    err = (p - m) / m
    worst = max(worst, abs(err))
    w = next((v for k, v in W.items() if label.startswith(k)), None)
    ws = "—"
    if w is not None:
        e2 = (p - m) / (m - w)
        worst_ws = max(worst_ws, abs(e2))
        ws = f"{(p - w) / 2**20:,.0f} / {(m - w) / 2**20:,.0f} MiB ({e2:+.1%})"
    out.append(f"| {label} | {rank} | {p / 2**20:,.0f} MiB | {m / 2**20:,.0f} MiB | {err:+.1%} | {ws} | {kind} |")
out.append("")
out.append(f"Largest |error| of the per-rank peak: {worst:.1%} over {len(rows)} rank measurements; of the working set alone (peak − weights): {worst_ws:.1%}.")
print("\n".join(out))
EOF
