#!/usr/bin/env bash
# CUDA compile check without a GPU (issues 10, 17): `cargo check --features cuda,cudnn,nccl
# --all-targets` (CUDA, cuDNN, NCCL; relay's own kernels compiled to PTX by build.rs) against the
# CUDA 13.4 toolkit from PyPI (13.4, not 13.5: cudarc 0.19 knows versions up to 13.4),
# so that the CUDA path never silently stops compiling. Recipe: ../shared/DEPENDENCIES.md,
# "CUDA without a GPU". Takes ~7-12 min on 2 cores, mostly candle-kernels' nvcc build.
#
#   scripts/cuda-check.sh
#
# CUDA_VENV: where the toolkit venv lives (default /opt/cuda13; created when missing).
# CUDA_CHECK_TARGET: cargo target dir (default target/cuda-check, so that the check neither
# waits on nor invalidates the main build's lock and artifacts).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CUDA_VENV:-/opt/cuda13}
nvcc_path() { ls "$VENV"/lib/python3*/site-packages/nvidia/cu13/bin/nvcc 2>/dev/null | head -1; }

if [ -z "$(nvcc_path)" ]; then
  echo "== installing the CUDA 13.4 toolkit from PyPI into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "nvidia-cuda-nvcc==13.4.*" "nvidia-cuda-runtime==13.4.*" \
    "nvidia-cuda-crt==13.4.*" "nvidia-nvvm==13.4.*" nvidia-cuda-cccl
fi
NVCC=$(nvcc_path)
if [ -z "$NVCC" ]; then
  echo "error: no nvcc under $VENV after installing the toolkit" >&2
  exit 1
fi
R=$(dirname "$(dirname "$NVCC")")
echo "== $("$NVCC" --version | tail -2 | head -1)"

start=$(date +%s)
PATH=$R/bin:$PATH CUDA_HOME=$R CUDA_PATH=$R CUDA_COMPUTE_CAP=90 \
  CARGO_TARGET_DIR=${CUDA_CHECK_TARGET:-target/cuda-check} \
  cargo check --locked --features cuda,cudnn,nccl --all-targets
echo "== cargo check --features cuda,cudnn,nccl: ok ($(( $(date +%s) - start )) s)"
