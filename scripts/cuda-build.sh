#!/usr/bin/env bash
# Build relay's CUDA binaries on a machine without a GPU or a system CUDA toolkit, for a
# GPU machine that has the NVIDIA driver and the CUDA 13 libraries (e.g. PyTorch's wheels)
# but no Rust toolchain. Toolkit: CUDA 13.0 from PyPI (13.0 to match driver 580's PTX JIT;
# candle's kernels ship as PTX compiled by this nvcc). candle links cudarc dynamically, so
# the link needs libcuda (a stub made here from cudarc's symbol list: the real one comes
# with the driver), cublas, cublasLt, curand, nvrtc, with `nccl` libnccl and with `cudnn`
# libcudnn (the PyPI wheel nvidia-cudnn-cu13 ships libcudnn.so.9 only: a libcudnn.so link is
# made here).
#
#   scripts/cuda-build.sh [cargo build args...]     # default: --features nccl,cudnn --bins --tests
#
# With the default arguments it also writes target/cuda-build/lib-tests.path: the library's
# unit-test binary, which scripts/gpu-pack.sh packs for the CUDA twin tests and op profile.
#
# Outputs land in target/cuda-build/debug (dev profile, dependencies at opt-level 3).
# CUDA_VENV: toolkit venv (default /opt/cuda130). CUDA_COMPUTE_CAP: default 90 (Hopper).
# At run time on the GPU machine: LD_LIBRARY_PATH must reach libcublas.so.13,
# libcublasLt.so.13, libcurand.so.10, libnvrtc.so.13, libnccl.so.2 and libcudnn.so.9.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CUDA_VENV:-/opt/cuda130}
if ! ls "$VENV"/lib/python3*/site-packages/nvidia/cu13/bin/nvcc >/dev/null 2>&1; then
  echo "== installing the CUDA 13.0 toolkit and libraries from PyPI into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-runtime==13.0.*" \
    "nvidia-cuda-crt==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cuda-cccl==13.0.*" \
    "nvidia-cuda-nvrtc==13.0.*" "nvidia-cublas==13.0.*" nvidia-curand nvidia-nccl-cu13
fi
if ! ls "$VENV"/lib/python3*/site-packages/nvidia/cudnn/lib/libcudnn.so.9 >/dev/null 2>&1; then
  echo "== installing cuDNN 9 (nvidia-cudnn-cu13) from PyPI into $VENV"
  "$VENV/bin/pip" install --quiet --no-deps nvidia-cudnn-cu13
fi
NV=$(echo "$VENV"/lib/python3*/site-packages/nvidia)
R=$NV/cu13
LINK=$VENV/link
mkdir -p "$LINK"
for l in cublas.so.13 cublasLt.so.13 curand.so.10 nvrtc.so.13 cudart.so.13; do
  ln -sf "$R/lib/lib$l" "$LINK/lib${l%%.so*}.so"
done
ln -sf "$NV/nccl/lib/libnccl.so.2" "$LINK/libnccl.so"
ln -sf "$NV/cudnn/lib/libcudnn.so.9" "$LINK/libcudnn.so"
if [ ! -f "$LINK/libcuda.so" ]; then
  # Every driver entry point cudarc can call, as an empty function: enough to link; the
  # real libcuda.so.1 of the GPU machine's driver is what runs.
  SYS=$(ls -d ~/.cargo/registry/src/*/cudarc-0.19.10/src/driver/sys/mod.rs | head -1)
  grep -o 'load::<_F>("cu[A-Za-z0-9_]*")' "$SYS" | sed 's/.*("\(.*\)")/void \1(void) {}/' \
    | sort -u > "$LINK/cuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$LINK/libcuda.so" "$LINK/cuda_stub.c"
fi
echo "== $("$R/bin/nvcc" --version | tail -2 | head -1)"
args=("$@")
default=0
[ ${#args[@]} -eq 0 ] && default=1 && args=(--features nccl,cudnn --bins --tests)
start=$(date +%s)
build() {
  PATH=$R/bin:$PATH CUDA_HOME=$R CUDA_PATH=$R CUDA_ROOT=$R CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90} \
    RUSTFLAGS="-L native=$LINK" CARGO_TARGET_DIR=target/cuda-build cargo "$@"
}
build build --locked "${args[@]}"
if [ $default = 1 ]; then
  # Already built above; this only names the library's unit-test binary.
  build test --locked --features nccl,cudnn --lib --no-run 2>&1 | tee /dev/stderr |
    sed -n 's/.*Executable unittests src\/lib.rs (\(.*\))/\1/p' >target/cuda-build/lib-tests.path
fi
echo "== cuda build: ok ($(( $(date +%s) - start )) s)"
