#!/usr/bin/env bash
# Checks the memory planner (`tessera plan`) against the program it predicts: `tessera generate
# --report` on CPU worker processes, whose per-rank, per-phase heap peaks come from each worker's
# counting allocator, next to `tessera plan --json` for the same flags. Prints a markdown table of
# predicted vs measured bytes per rank and phase (README, "Memory planner").
#
# Cases: TI2V-5B widths (make-model, 2 blocks) on 1 rank, Ulysses 2 + halo VAE 2, CFG 2, Ulysses 2
# + FSDP 2 + halo VAE 2, CFG 2 + FSDP 2, image-to-video; I2V-A14B widths (1 block per expert, the
# Wan2.1 VAE, the image encoded with its zero frames) under CFG 2 + halo VAE 2, and under CFG 2 +
# FSDP 2 + halo VAE 2 with phased and with pipeline expert residency; and the golden tiny
# pipeline with the golden tiny UMT5 sharded over 2 ranks on a 512-token prompt (`text_encode`).
#
# Usage: scripts/calibrate_planner.sh [WORKDIR]   (default target/calib; needs ~10 GB of disk and
# the debug binaries: cargo build -p tessera_app -p tessera_engine --bins). The 256×256×5 cases
# take minutes on 2 cores (the real-width VAE decode). On a GPU machine the same commands with
# --device cuda would check the CUDA path.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${TESSERA_BIN:-$ROOT/target/debug}
WORK=${1:-$ROOT/target/calib}
T=$BIN/tessera
export TESSERA_WORKER_EXE="$BIN/tessera-worker"
# A fresh prompt cache: a cached prompt would skip the text encoder.
export TESSERA_CACHE_DIR="$WORK/cache"
GOLDEN=$ROOT/tests/fixtures/golden
IMAGE=$GOLDEN/pipeline_i2v/image.png
mkdir -p "$WORK"
cd "$WORK"

[ -d ti2v ] || "$T" make-model --arch wan2.2-ti2v-5b --layers 2 --out ti2v
[ -d i2v-a14b ] || "$T" make-model --arch wan2.2-i2v-a14b --layers 1 --out i2v-a14b
# The golden tiny pipeline with the golden tiny text encoder (text_dim = d_model = 32).
if [ ! -d tiny ]; then
  mkdir tiny
  for d in transformer vae scheduler; do ln -s "$GOLDEN/pipeline/$d" "tiny/$d"; done
  for d in text_encoder tokenizer; do ln -s "$GOLDEN/prompt/$d" "tiny/$d"; done
  python3 - "$GOLDEN" <<'EOF'
import json, sys
g = sys.argv[1]
index = json.load(open(f"{g}/pipeline/model_index.json"))
text = json.load(open(f"{g}/prompt/model_index.json"))
index["text_encoder"], index["tokenizer"] = text["text_encoder"], text["tokenizer"]
json.dump(index, open("tiny/model_index.json", "w"), indent=2)
EOF
fi

# (1, 512, 4096) f32 prompt and negative embeddings, as the UMT5 encoder pads them.
[ -f emb.safetensors ] || python3 - <<'EOF'
import json, random, struct
rng = random.Random(0)
n = 512 * 4096
header, blobs, off = {}, [], 0
for name in ["prompt_embeds", "negative_prompt_embeds"]:
    blob = struct.pack(f"<{n}f", *(rng.gauss(0.0, 0.1) for _ in range(n)))
    header[name] = {"dtype": "F32", "shape": [1, 512, 4096], "data_offsets": [off, off + len(blob)]}
    blobs.append(blob)
    off += len(blob)
h = json.dumps(header).encode()
h += b" " * ((8 - len(h) % 8) % 8)
with open("emb.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
EOF

# Finished cases are kept: rerunning resumes after the last one (delete rows.tsv to redo).
rows=rows.tsv
touch "$rows"

# case LABEL MODEL PROMPT_ARGS_VAR -- SIZE AND PLAN FLAGS (shared by generate and plan). The table was
# measured with `--weights free` (the transformer freed before the decode); `WEIGHTS=keep` measures
# the session default, where the decode rows add each rank's transformer part.
WEIGHTS=${WEIGHTS:-free}
case_() {
  local label=$1 model=$2 prompts=$3
  shift 3
  grep -qF "$label	" "$rows" && return 0
  local -n p=$prompts
  "$T" generate --model "$model" "${p[@]}" --steps 2 --out out.safetensors --report r.json --weights "$WEIGHTS" "$@" >/dev/null 2>&1
  "$T" plan --model "$model" --device cpu --json --weights "$WEIGHTS" "$@" > p.json
  python3 - "$label" >> "$rows" <<'EOF'
import json, sys
label = sys.argv[1]
measured, predicted = json.load(open("r.json")), json.load(open("p.json"))
for m, p in zip(measured["ranks"], predicted["ranks"]):
    pp = {ph["name"]: ph["peak_bytes"] for ph in p["phases"]}
    for ph in m["phases"]:
        print(f"{label}\t{m['rank']}\t{ph['name']}\t{pp.get(ph['name'], 0)}\t{ph['peak_bytes']}")
EOF
}

FILES=(--prompt-embeds emb.safetensors --negative-prompt-embeds emb.safetensors)
LONG=$(python3 -c "print(' '.join(['a white cat sits on a surfboard'] * 100))")
TEXT=(--prompt "$LONG" --negative-prompt "$LONG")
S256=(--height 256 --width 256 --frames 5 --guidance 5)
S128=(--height 128 --width 128 --frames 5 --guidance 5)

case_ "TI2V ×2 blocks 256×256×5, 1 rank" ti2v FILES "${S256[@]}" --ranks 1 --ulysses 1 --vae-parallel 1
case_ "TI2V ×2 blocks 256×256×5, Ulysses 2 + halo VAE 2" ti2v FILES "${S256[@]}" --ranks 2 --ulysses 2 --vae-parallel 2 --vae-mode halo
case_ "TI2V ×2 blocks 128×128×5, CFG 2" ti2v FILES "${S128[@]}" --ranks 2 --ulysses 1 --cfg-parallel 2 --vae-parallel 1
case_ "TI2V ×2 blocks 128×128×5, Ulysses 2 + FSDP 2 + halo VAE 2" ti2v FILES "${S128[@]}" --ranks 2 --ulysses 2 --fsdp 2 --vae-parallel 2 --vae-mode halo
case_ "TI2V ×2 blocks 128×128×5, CFG 2 + FSDP 2" ti2v FILES "${S128[@]}" --ranks 2 --ulysses 1 --cfg-parallel 2 --fsdp 2 --vae-parallel 1
case_ "TI2V ×2 blocks 256×256×1 image-to-video, Ulysses 2 + halo VAE 2" ti2v FILES --height 256 --width 256 --frames 1 --guidance 5 --image "$IMAGE" --ranks 2 --ulysses 2 --vae-parallel 2 --vae-mode halo
case_ "I2V-A14B ×1 block ×2 experts 128×128×9, CFG 2 + halo VAE 2" i2v-a14b FILES --height 128 --width 128 --frames 9 --guidance 5 --image "$IMAGE" --ranks 2 --ulysses 1 --cfg-parallel 2 --vae-parallel 2 --vae-mode halo
# Expert residency at real width: phased holds one expert's shard, pipeline both (same video).
A14B64=(--height 64 --width 64 --frames 5 --guidance 3.5 --image "$GOLDEN/a14b_i2v/image.png" --ranks 2 --ulysses 1 --cfg-parallel 2 --fsdp 2 --vae-parallel 2 --vae-mode halo)
case_ "I2V-A14B ×1 block ×2 experts 64×64×5, CFG 2 + FSDP 2 + halo VAE 2, phased" i2v-a14b FILES "${A14B64[@]}" --residency phased
case_ "I2V-A14B ×1 block ×2 experts 64×64×5, CFG 2 + FSDP 2 + halo VAE 2, pipeline" i2v-a14b FILES "${A14B64[@]}" --residency pipeline
case_ "golden tiny + tiny UMT5 sharded, 512-token prompt" tiny TEXT --height 96 --width 128 --frames 9 --guidance 5 --ranks 2 --ulysses 2 --vae-parallel 1 --text-encoder-on sharded

python3 - "$rows" <<'EOF'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
out = ["| configuration | rank | phase | predicted | measured | error |", "|---|---|---|---|---|---|"]
worst = 0.0
for label, rank, phase, pred, meas in rows:
    p, m = int(pred), int(meas)
    err = (p - m) / m
    if m >= 16 << 20:  # below that a phase is the size of the worker's own heap
        worst = max(worst, abs(err))
    out.append(f"| {label} | {rank} | {phase} | {p / 2**20:,.1f} MiB | {m / 2**20:,.1f} MiB | {err:+.2%} |")
out.append("")
out.append(f"Largest |error| over the phases above 16 MiB: {worst:.2%}.")
print("\n".join(out))
EOF
