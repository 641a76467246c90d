#!/usr/bin/env bash
# Sets up a CUDA 13.0 build toolchain from PyPI wheels on a machine with no GPU and no CUDA
# toolkit, so that `cargo build --features cuda` (candle's CUDA kernels, cudarc, NCCL) compiles and
# links here; the binary then runs on a GPU machine whose driver supports CUDA 13.0 (driver 580+).
#
#   source scripts/cuda-env.sh [DIR]     # from the repository root; DIR defaults to ~/.cache/tessera-cuda
#
# After sourcing: CUDA_HOME, NVCC, PATH, CUDA_COMPUTE_CAP (default 90 = H100/H200; use 89 for
# RTX 4090, 80 for A100), CUDARC_CUDA_VERSION and RUSTFLAGS (link dir with a libcuda stub) are set.
# Never ship the stub: on the GPU machine the driver's libcuda.so.1 is used, with the CUDA/NCCL
# libraries on LD_LIBRARY_PATH (printed at the end). nvcc must stay at 13.0: PTX from a newer nvcc
# cannot be loaded by a 13.0 driver.

DIR="${1:-$HOME/.cache/tessera-cuda}"
mkdir -p "$DIR"
if [ ! -x "$DIR/venv/bin/python" ]; then python3 -m venv "$DIR/venv" || return 1 2>/dev/null || exit 1; fi
if [ ! -f "$DIR/.installed-13.0" ]; then
  "$DIR/venv/bin/pip" install -q nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 \
    nvidia-curand==10.4.0.35 nvidia-cublas==13.0.2.14 nvidia-nccl-cu13==2.28.9 && touch "$DIR/.installed-13.0"
fi
N=$("$DIR/venv/bin/python" -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0] + "/x"))')
LINK="$DIR/link"; mkdir -p "$LINK"
if [ ! -f "$LINK/libcuda.so.1" ]; then
  # A stub libcuda for the linker only: every driver entry point cudarc binds returns
  # CUDA_ERROR_NO_DEVICE (100). The symbol list is taken from the cudarc sources cargo fetched.
  SYS=$(ls -d "$HOME"/.cargo/registry/src/*/cudarc-*/src/driver/sys/mod.rs 2>/dev/null | sort -V | tail -1)
  if [ -z "$SYS" ]; then echo "cuda-env: run 'cargo fetch' in the project first (cudarc sources needed)"; return 1 2>/dev/null || exit 1; fi
  grep -oE "^pub unsafe fn cu[A-Za-z0-9_]+" "$SYS" | awk '{print $4}' | sort -u \
    | awk '{print "int " $1 "(void){return 100;}"}' > "$LINK/libcuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$LINK/libcuda.so.1" "$LINK/libcuda_stub.c"
  ln -sf libcuda.so.1 "$LINK/libcuda.so"
  for l in cublas.so.13 cublasLt.so.13 curand.so.10 nvrtc.so.13 cudart.so.13; do
    ln -sf "$N/cu13/lib/lib$l" "$LINK/lib${l%%.so.*}.so"; done
  ln -sf "$N/nccl/lib/libnccl.so.2" "$LINK/libnccl.so"
fi
export CUDA_HOME="$N/cu13" NVCC="$N/cu13/bin/nvcc" PATH="$N/cu13/bin:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}" CUDARC_CUDA_VERSION=13000
export RUSTFLAGS="${RUSTFLAGS:-} -L native=$LINK"
echo "cuda-env: nvcc $("$NVCC" --version | grep -o 'release [0-9.]*'), compute cap $CUDA_COMPUTE_CAP"
echo "cuda-env: on the GPU machine run with LD_LIBRARY_PATH=<its nvidia/cu13/lib>:<its nvidia/nccl/lib> (the PyTorch venv there has both)"
