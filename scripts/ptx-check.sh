#!/usr/bin/env bash
# ptxas on every kernel of kernels/*.cu (issue 17): compiles each to PTX with the flags of
# build.rs, then `ptxas -arch=sm_90 -v`, prints registers / shared memory / spills per
# kernel, and fails if any kernel spills or nvcc/ptxas fail. Seconds; no GPU, no cargo.
#
#   scripts/ptx-check.sh            # ARCH (default sm_90), CUDA_VENV (default /opt/cuda13)
#
# The toolkit comes from PyPI as in scripts/cuda-check.sh (installed there when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CUDA_VENV:-/opt/cuda13}
ARCH=${ARCH:-sm_90}
NVCC=$(ls "$VENV"/lib/python3*/site-packages/nvidia/cu13/bin/nvcc 2>/dev/null | head -1)
if [ -z "$NVCC" ]; then
  echo "== installing the CUDA 13.4 compiler from PyPI into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "nvidia-cuda-nvcc==13.4.*" "nvidia-cuda-runtime==13.4.*" \
    "nvidia-cuda-crt==13.4.*" "nvidia-nvvm==13.4.*" nvidia-cuda-cccl
  NVCC=$(ls "$VENV"/lib/python3*/site-packages/nvidia/cu13/bin/nvcc | head -1)
fi
BIN=$(dirname "$NVCC")
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
echo "== $("$NVCC" --version | tail -2 | head -1); ptxas -arch=$ARCH"
printf '%-28s %5s %6s %6s %s\n' kernel regs smem stack spills
bad=0
for cu in kernels/*.cu; do
  name=$(basename "$cu" .cu)
  "$NVCC" --ptx -O3 -std=c++17 -arch=compute_${ARCH#sm_} -o "$TMP/$name.ptx" "$cu"
  "$BIN/ptxas" -arch="$ARCH" -v "$TMP/$name.ptx" -o "$TMP/$name.cubin" 2>"$TMP/$name.log"
  # ptxas -v prints, per entry: "Compiling entry function 'NAME'", then the stack/spill
  # line, then "Used N registers, ... M bytes smem".
  awk -v bad_file="$TMP/bad" '
    /Compiling entry function/ { match($0, /'"'"'[^'"'"']+'"'"'/); k = substr($0, RSTART + 1, RLENGTH - 2) }
    /bytes stack frame/ { split($0, a, /[ ,]+/); for (i in a) { if (a[i] == "stack") st = a[i-2]; if (a[i] == "spill" && a[i+1] == "stores") ss = a[i-2]; if (a[i] == "spill" && a[i+1] == "loads") sl = a[i-2] } }
    /Used [0-9]+ registers/ {
      match($0, /Used [0-9]+ registers/); r = substr($0, RSTART + 5, RLENGTH - 15)
      sm = 0; if (match($0, /[0-9]+ bytes smem/)) sm = substr($0, RSTART, RLENGTH - 11)
      printf "%-28s %5s %6s %6s %s/%s\n", k, r, sm, st, ss, sl
      if (ss + sl > 0) print k >> bad_file
    }' "$TMP/$name.log"
done
if [ -s "$TMP/bad" ]; then
  echo "error: register spills in: $(tr '\n' ' ' <"$TMP/bad")" >&2
  exit 1
fi
echo "== ptx check: $(ls kernels/*.cu | wc -l) files, no spills"
