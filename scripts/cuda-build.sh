#!/usr/bin/env bash
# Builds the CUDA `tessera-worker` on any x86-64 Linux machine, with or without a GPU: installs a CUDA
# toolkit from PyPI's NVIDIA wheels into a cache directory, assembles a CUDA_HOME from them (plus a
# link-only libcuda stub: the driver's real libcuda.so.1 is used at run time), and runs cargo.
#
#   scripts/cuda-build.sh [--cuda 13|12] [--features cuda,flash-attn] [--clippy | --check-only]
#                         [--no-build] [--example NAME] [--dist DIR] [--cutlass-from GIT_DIR]
#
#   --cuda 13   CUDA 13.0 (default): nvcc 13.0, cuBLAS 13, NCCL 2.28 (cu13). Needs driver >= 580.
#   --cuda 12   CUDA 12.4: nvcc 12.4, cuBLAS 12.4, NCCL 2.28 (cu12). Needs driver >= 550.54 (most RTX 4090
#               installs run 550-570 drivers). candle's kernels are PTX that the driver JIT-compiles, and a
#               driver cannot load PTX from a newer toolkit than itself: the toolkit picks the driver floor.
#               PyPI's CUDA 12 `nvidia-cuda-nvcc-cu12` wheels hold only ptxas (no nvcc): pass the compiler
#               with --toolkit (runtime libraries and NCCL still come from PyPI).
#   --toolkit DIR
#               an installed CUDA toolkit (DIR/bin/nvcc, e.g. /usr/local/cuda-12.4 from NVIDIA's apt
#               repository `cuda-toolkit-12-4`) used as CUDA_HOME instead of the assembled one.
#   --features  engine features for the worker (default `cuda`; `cuda,flash-attn` adds FlashAttention-2,
#               whose 53 kernel files take hours of nvcc on 2 cores; `cudnn` needs cuDNN installed).
#   --clippy    also runs `cargo clippy --release -p tessera_engine --features <features> --all-targets
#               -- -D warnings` (release profile: it shares the kernels' build-script outputs with the build).
#   --check-only
#               only `cargo clippy -p tessera_engine --features <features> --all-targets -- -D warnings`, in
#               target-cuda/check, through an nvcc wrapper that writes empty objects for the kernels that
#               are compiled to machine code (candle's quantized-MoE library, flash-attn's kernels): a check
#               build links nothing, and those take hours on 2 cores. PTX modules are compiled for real
#               (or copied from an earlier full build's identical output). Never use its artifacts to run.
#               CHECK_TARGET_DIR=target shares the CPU build's target dir (much less to check).
#   --example NAME
#               also builds engine/examples/NAME.rs (scripts/gpu-check.sh builds `gpu_check`).
#   --dist DIR  copies the stripped worker to DIR/tessera-worker and the CUDA/NCCL runtime libraries it
#               needs to DIR/lib (the worker's rpath is $ORIGIN/lib, so DIR is relocatable).
#   --cutlass-from GIT_DIR
#               flash-attn fetches CUTLASS from GitHub at build time; on a machine without GitHub access
#               this seeds cudaforge's cache (~/.cudaforge) from a local clone holding the pinned commit.
#
# Environment: TESSERA_CUDA_DIR (toolkit cache, default ~/.cache/tessera-cuda), CARGO_TARGET_DIR (default
# target-cuda, ignored by git: RUSTFLAGS differ from the CPU build, sharing `target/` would rebuild both),
# CUDA_COMPUTE_CAP (default 89: PTX for compute_89 runs natively on RTX 4090 (sm_89) and JIT-compiles on
# H100/H200 (sm_90); 90 would mean compute_90a, which a 4090 cannot load), JOBS (cargo -j, default 2).
#
# The GPU-free trick: cargo links the worker against libcuda.so.1, which only a driver install provides.
# The stub built here has that soname and every driver entry point cudarc binds (each returns
# CUDA_ERROR_NO_DEVICE); it lives in $CUDA_HOME/lib64/stubs and is never shipped or put on a run path.
set -euo pipefail

CUDA_MAJOR=13
FEATURES=cuda
CLIPPY=0
CHECK_ONLY=0
BUILD=1
DIST=""
CUTLASS_FROM=""
EXAMPLE=""
TOOLKIT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cuda) CUDA_MAJOR="$2"; shift 2 ;;
    --features) FEATURES="$2"; shift 2 ;;
    --clippy) CLIPPY=1; shift ;;
    --check-only) CHECK_ONLY=1; BUILD=0; shift ;;
    --no-build) BUILD=0; shift ;;
    --dist) DIST="$2"; shift 2 ;;
    --example) EXAMPLE="$2"; shift 2 ;;
    --toolkit) TOOLKIT="$2"; shift 2 ;;
    --cutlass-from) CUTLASS_FROM="$2"; shift 2 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "cuda-build: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

ROOT_DIR="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${TESSERA_CUDA_DIR:-$HOME/.cache/tessera-cuda}"

# Pinned wheel sets. CUDA_VERSION feeds cudarc's bindings (CUDARC_CUDA_VERSION).
case "$CUDA_MAJOR" in
  13)
    CUDA_VERSION=13000
    WHEELS="nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
      nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 \
      nvidia-curand==10.4.0.35 nvidia-cublas==13.0.2.14 nvidia-nccl-cu13==2.28.9"
    DRIVER_FLOOR=580 ;;
  12)
    CUDA_VERSION=12040
    WHEELS="nvidia-cuda-nvcc-cu12==12.4.131 nvidia-cuda-runtime-cu12==12.4.127 \
      nvidia-cuda-cccl-cu12==12.4.127.post1 nvidia-cuda-nvrtc-cu12==12.4.127 \
      nvidia-curand-cu12==10.3.5.147 nvidia-cublas-cu12==12.4.5.8 nvidia-nccl-cu12==2.28.9"
    DRIVER_FLOOR=550 ;;
  *) echo "cuda-build: --cuda takes 12 or 13, not '$CUDA_MAJOR'" >&2; exit 2 ;;
esac

TK="$CACHE/cuda-$CUDA_MAJOR"
mkdir -p "$TK"
if [ ! -x "$TK/venv/bin/python" ]; then python3 -m venv "$TK/venv"; fi
STAMP="$TK/.installed-$(echo "$WHEELS" | sha256sum | cut -c1-12)"
if [ ! -f "$STAMP" ]; then
  echo "cuda-build: installing CUDA $CUDA_MAJOR wheels into $TK/venv"
  # shellcheck disable=SC2086
  "$TK/venv/bin/pip" install -q $WHEELS
  touch "$STAMP"
  rm -rf "$TK/home"
fi
NV=$("$TK/venv/bin/python" -c 'import nvidia, os; print(os.path.realpath(list(nvidia.__path__)[0]))')

# CUDA_HOME: one tree with bin/ nvvm/ include/ lib64/ as cudaforge, nvcc and cudarc expect. nvcc finds its
# headers relative to its own location, so the compiler package is hard-linked in (not symlinked); the
# other packages' headers and libraries are symlinked into it.
H="$TK/home"
if [ ! -f "$H/.complete" ]; then
  rm -rf "$H"; mkdir -p "$H/include" "$H/lib64/stubs"
  if [ "$CUDA_MAJOR" = 13 ]; then PKGS=("$NV/cu13" "$NV/nccl"); else
    PKGS=("$NV/cuda_nvcc" "$NV/cuda_runtime" "$NV/cuda_cccl" "$NV/cuda_nvrtc" "$NV/curand" "$NV/cublas" "$NV/nccl"); fi
  cp -al "${PKGS[0]}/bin" "$H/bin"
  if [ -d "${PKGS[0]}/nvvm" ]; then cp -al "${PKGS[0]}/nvvm" "$H/nvvm"; fi
  for p in "${PKGS[@]}"; do
    if [ -d "$p/include" ]; then for f in "$p"/include/*; do [ -e "$H/include/$(basename "$f")" ] || cp -al "$f" "$H/include/"; done; fi
    for d in lib lib64; do
      if [ -d "$p/$d" ]; then for f in "$p/$d"/*; do [ -e "$H/lib64/$(basename "$f")" ] || ln -s "$f" "$H/lib64/"; done; fi
    done
  done
  # Unversioned names for the linker (the wheels ship only the sonames).
  for so in "$H"/lib64/lib*.so.*; do
    base="${so##*/}"; stem="${base%%.so.*}"
    [ -e "$H/lib64/$stem.so" ] || ln -s "$base" "$H/lib64/$stem.so"
  done
  SYS=$(ls -d "$HOME"/.cargo/registry/src/*/cudarc-*/src/driver/sys/mod.rs 2>/dev/null | sort -V | tail -1 || true)
  if [ -z "$SYS" ]; then (cd "$ROOT_DIR" && cargo fetch --locked >/dev/null)
    SYS=$(ls -d "$HOME"/.cargo/registry/src/*/cudarc-*/src/driver/sys/mod.rs | sort -V | tail -1); fi
  grep -oE "^pub unsafe fn cu[A-Za-z0-9_]+" "$SYS" | awk '{print $4}' | sort -u \
    | awk '{print "int " $1 "(void){return 100;}"}' > "$H/lib64/stubs/libcuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$H/lib64/stubs/libcuda.so" "$H/lib64/stubs/libcuda_stub.c"
  touch "$H/.complete"
fi

if [ -n "$CUTLASS_FROM" ]; then
  PIN=$(grep -oE 'CUTLASS_COMMIT: &str = "[0-9a-f]+"' "$HOME"/.cargo/registry/src/*/candle-flash-attn-*/build.rs \
    | sort -V | tail -1 | grep -oE '[0-9a-f]{40}')
  DEST="${CUDAFORGE_HOME:-$HOME/.cudaforge}/git/checkouts/cutlass-${PIN:0:16}"
  if [ ! -d "$DEST/include" ]; then
    git clone -q --no-checkout "$CUTLASS_FROM" "$DEST"
    git -C "$DEST" checkout -q "$PIN"
  fi
  echo "cuda-build: CUTLASS $PIN at $DEST"
fi

EXTRA_LINK=""
if [ -n "$TOOLKIT" ]; then
  # The toolkit's own lib64/stubs/libcuda.so serves the link; cuBLAS & co. come from it too, NCCL from PyPI.
  EXTRA_LINK="-L native=$H/lib64"
  H="$TOOLKIT"
fi
if [ ! -x "$H/bin/nvcc" ]; then
  echo "cuda-build: no nvcc in $H/bin (PyPI's CUDA $CUDA_MAJOR nvcc wheel ships only ptxas);" \
    "install a CUDA $CUDA_MAJOR toolkit and pass --toolkit DIR (e.g. /usr/local/cuda-12.4)" >&2
  exit 1
fi
export CUDA_HOME="$H" CUDA_PATH="$H" NVCC="$H/bin/nvcc" PATH="$H/bin:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-89}" CUDARC_CUDA_VERSION="$CUDA_VERSION"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT_DIR/target-cuda}"
# $ORIGIN/lib: a --dist folder is self-contained; otherwise LD_LIBRARY_PATH (printed below) is needed.
export RUSTFLAGS="-C link-arg=-Wl,-rpath,\$ORIGIN/lib${EXTRA_LINK:+ $EXTRA_LINK}"
# Kernel builds keep their objects across runs (candle-flash-attn's 53 files especially).
export CANDLE_FLASH_ATTN_BUILD_DIR="${CANDLE_FLASH_ATTN_BUILD_DIR:-$CARGO_TARGET_DIR/flash-attn-kernels}"
mkdir -p "$CANDLE_FLASH_ATTN_BUILD_DIR"
JOBS="${JOBS:-2}"
echo "cuda-build: nvcc $("$NVCC" --version | grep -o 'release [0-9.]*'), compute cap $CUDA_COMPUTE_CAP," \
  "features '$FEATURES', driver >= $DRIVER_FLOOR, target $CARGO_TARGET_DIR"

cd "$ROOT_DIR"
# Kernels compiled to machine code (candle's libmoe.a, FlashAttention) get SASS for CUDA_COMPUTE_CAP
# only; this wrapper also embeds that capability's PTX in them, so a compute_89 build's fused attention
# JIT-compiles on H100/H200 as candle's PTX modules do.
E="$H/bin/nvcc-embed-ptx"
if [ -w "$H/bin" ] || [ -w "$E" ]; then
  cat > "$E" <<'WRAP'
#!/usr/bin/env bash
here="$(cd "$(dirname "$0")" && pwd)"
cap="${CUDA_COMPUTE_CAP%%[af]*}"
for a in "$@"; do
  if [ "$a" = -c ]; then exec "$here/nvcc" "$@" "-gencode=arch=compute_${cap},code=compute_${cap}"; fi
done
exec "$here/nvcc" "$@"
WRAP
  chmod +x "$E"
  export NVCC="$E"
fi
if [ "$CHECK_ONLY" = 1 ]; then
  # The wrapper lives in the toolkit's bin/ so that tools deriving CUDA_HOME from $NVCC still work.
  W="$H/bin/nvcc-check-only"
  cat > "$W" <<'WRAP'
#!/usr/bin/env bash
# nvcc for check-only builds (scripts/cuda-build.sh --check-only): `-c` objects are empty (never
# linked by `cargo check`/`clippy`); PTX is real, or copied from an identical earlier full build.
here="$(cd "$(dirname "$0")" && pwd)"
mode=""; out=""; outdir=""; src=""; prev=""
for a in "$@"; do
  case "$prev" in -o) out="$a" ;; --output-directory) outdir="$a" ;; esac
  case "$a" in -c) mode=obj ;; --ptx) mode=ptx ;; *.cu) src="$a" ;; esac
  prev="$a"
done
if [ "$mode" = obj ] && [ -n "$out" ]; then exec gcc -c -x c /dev/null -o "$out"; fi
if [ "$mode" = ptx ] && [ -n "$outdir" ] && [ -n "$src" ]; then
  name="$(basename "${src%.cu}").ptx"
  for d in ${TESSERA_PTX_CACHE:-}; do
    if [ -f "$d/$name" ]; then cp "$d/$name" "$outdir/$name"; exit 0; fi
  done
fi
exec "$here/nvcc" "$@"
WRAP
  chmod +x "$W"
  export NVCC="$W" TESSERA_PTX_CACHE
  # No earlier full build (a fresh machine): nothing to copy; `|| true` keeps pipefail from ending the script.
  TESSERA_PTX_CACHE="$(ls -d "$ROOT_DIR"/target-cuda/release/build/candle-kernels-*/out 2>/dev/null | tr '\n' ' ' || true)"
  # No RUSTFLAGS (nothing is linked): with CHECK_TARGET_DIR=target the CPU build's checked
  # dependencies are reused and only the crates whose features change are checked again.
  RUSTFLAGS="" CARGO_TARGET_DIR="${CHECK_TARGET_DIR:-$ROOT_DIR/target-cuda/check}" \
    cargo clippy -j "$JOBS" -p tessera_engine --features "$FEATURES" --all-targets -- -D warnings
  echo "cuda-build: clippy --features $FEATURES clean (check-only kernels)"
fi
if [ "$CLIPPY" = 1 ]; then
  cargo clippy --release -j "$JOBS" -p tessera_engine --features "$FEATURES" --all-targets -- -D warnings
fi
if [ "$BUILD" = 1 ]; then
  cargo build --release -j "$JOBS" -p tessera_engine --features "$FEATURES" --bin tessera-worker \
    ${EXAMPLE:+--example "$EXAMPLE"}
  BIN="$CARGO_TARGET_DIR/release/tessera-worker"
  echo "cuda-build: built $BIN"
  echo "cuda-build: NEEDED: $(readelf -d "$BIN" | grep -o 'NEEDED.*\[.*\]' | grep -o '\[.*\]' | tr -d '[]' | tr '\n' ' ')"
  echo "cuda-build: glibc floor: $(objdump -T "$BIN" | grep -o 'GLIBC_2\.[0-9]*' | sort -Vu | tail -1)"
  LIBS="$H/lib64"
  if [ -n "$DIST" ]; then
    mkdir -p "$DIST/lib"
    strip -o "$DIST/tessera-worker" "$BIN"
    for n in $(readelf -d "$BIN" | grep NEEDED | grep -o '\[.*\]' | tr -d '[]'); do
      case "$n" in libcuda.so.*|libc.so.*|libm.so.*|libgcc_s.so.*|libstdc++.so.*|ld-linux*|libdl.so.*|libpthread.so.*|librt.so.*) continue ;; esac
      if [ -e "$LIBS/$n" ]; then cp -L "$LIBS/$n" "$DIST/lib/"; fi
    done
    # cuBLAS itself needs cuBLASLt, NEEDED or not.
    for extra in "$LIBS"/libcublasLt.so.*; do [ -e "$extra" ] && cp -L "$extra" "$DIST/lib/"; done
    echo "cuda-build: self-contained worker in $DIST (lib/ found through rpath \$ORIGIN/lib)"
  else
    echo "cuda-build: to run it: LD_LIBRARY_PATH=$(cd "$LIBS" && pwd -P) (or the same libraries from a" \
      "PyTorch CUDA $CUDA_MAJOR install: site-packages/nvidia/*/lib), driver >= $DRIVER_FLOOR"
  fi
fi
