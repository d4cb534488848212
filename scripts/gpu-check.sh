#!/usr/bin/env bash
# The GPU checks of issues 5 and 10, in one run on a machine with an NVIDIA GPU, its driver
# and PyTorch with its CUDA 13 wheels, but no Rust toolchain: the binaries come prebuilt
# (scripts/cuda-build.sh, then scripts/gpu-pack.sh puts them with the golden vectors in
# .gpu/). Prints a summary table last; full logs go to $OUT (default target/gpu-check).
#
#   scripts/gpu-check.sh     # BATCH (default 64), STEPS (timed steps, default 10),
#                            # CHECKS (default "allreduce golden adm64 smoke")
#
# 1. NCCL: `relay bench allreduce` (one rank: the custom op, the sum and the broadcast).
# 2. The golden vectors on CUDA (RELAY_GOLDEN_DEVICE=cuda).
# 3. adm-64 train/sample images/s, relay and PyTorch on the same card, float32 and bf16.
# 4. scripts/gpu-smoke.yaml: both tiny stages train in bf16 on CUDA, then sample.
set -uo pipefail
cd "$(dirname "$0")/.."
G=${GPU_PACK:-.gpu}
OUT=${OUT:-target/gpu-check}
mkdir -p "$OUT"
BATCH=${BATCH:-64}
STEPS=${STEPS:-10}
NV=$(python3 -c "import nvidia, os; print(list(nvidia.__path__)[0])" 2>/dev/null)
LIBS=$(ls -d "$NV"/*/lib 2>/dev/null | tr '\n' ':')
export LD_LIBRARY_PATH=${LIBS}${LD_LIBRARY_PATH:-}
BIN=${TMPDIR:-/tmp}/relay-gpu-bin
mkdir -p "$BIN"
for b in relay golden; do
  python3 -c "import lzma, sys; open(sys.argv[2], 'wb').write(lzma.open(sys.argv[1]).read())" \
    "$G/$b.xz" "$BIN/$b"
  chmod +x "$BIN/$b"
done
R=$BIN/relay
# candle's kernels are PTX that the driver compiles at first use: keep every module cached.
export CUDA_CACHE_MAXSIZE=4294967296
summary=()
step() { # name, command...: run, log, keep one line
  local name=$1; shift
  local t0=$(date +%s.%N)
  "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  local dt=$(awk "BEGIN { print $(date +%s.%N) - $t0 }")
  echo "== $name: rc=$rc (${dt%.*} s)"; tail -n 25 "$OUT/$name.log"
  summary+=("$(printf '%-22s rc=%-3s %6.1f s' "$name" "$rc" "$dt")")
  return $rc
}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
if ldd "$R" | grep "not found"; then echo "missing libraries (LD_LIBRARY_PATH=$LD_LIBRARY_PATH)"; fi

on() { [[ " ${CHECKS:-allreduce golden adm64 smoke} " == *" $1 "* ]]; }
if on allreduce; then step allreduce "$R" bench allreduce --millions 296 --reps 10; fi
if on golden; then
  step golden env RELAY_GOLDEN_DEVICE=cuda RELAY_GOLDEN_DIR="$G/golden.d" "$BIN/golden" --nocapture
fi
if on adm64; then
  # f32, f32 with TF32 matrix units (PyTorch's default for its cuDNN convolutions), bf16.
  for p in f32 tf32 bf16; do
    flag=(); [ $p = bf16 ] && flag=(--bf16)
    tf=0; [ $p = tf32 ] && tf=1
    # Halve the batch until relay's step fits in memory; PyTorch runs at the same batch.
    b=$BATCH
    until step relay-adm64-$p-b$b env RELAY_TF32=$tf "$R" bench model adm-64 --device cuda --batch "$b" \
      --steps "$STEPS" "${flag[@]}" || [ "$b" -le 8 ]; do b=$((b / 2)); done
    cp "$OUT/relay-adm64-$p-b$b.log" "$OUT/relay-adm64-$p.log"
    echo "batch=$b" >>"$OUT/relay-adm64-$p.log"
    if [ $p != tf32 ]; then
      step torch-adm64-$p python3 benches/torch_unet.py --config adm-64 --device cuda --batch "$b" \
        --steps "$STEPS" "${flag[@]}"
    fi
  done
fi
if on smoke; then
  step smoke-bf16 timeout 240 "$R" run scripts/gpu-smoke.yaml --device cuda
  cp target/gpu-smoke/base/loss.png "$OUT/base-loss.png" 2>/dev/null
  cp target/gpu-smoke/relay/samples.png "$OUT/relay-samples.png" 2>/dev/null
fi

echo "== summary"
printf '%s\n' "${summary[@]}"
v() { grep -ho "$1=[0-9.]*" "$OUT/$2.log" | tail -1 | cut -d= -f2; }
for p in f32 tf32 bf16; do
  [ -f "$OUT/relay-adm64-$p.log" ] || continue
  tp=$p; [ $p = tf32 ] && tp=f32 # PyTorch's f32 convolutions already use TF32
  rt=$(v relay_train_images_per_sec relay-adm64-$p); rs=$(v relay_sample_images_per_sec relay-adm64-$p)
  tt=$(v torch_train_images_per_sec torch-adm64-$tp); ts=$(v torch_sample_images_per_sec torch-adm64-$tp)
  b=$(v batch relay-adm64-$p)
  echo "adm-64 $p batch $b img/s: relay train $rt sample $rs | pytorch ($tp) train $tt sample $ts"
  if [ -n "$rt" ] && [ -n "$tt" ]; then
    awk "BEGIN { printf \"relay/pytorch ($p): train %.2f, sample %.2f\\n\", $rt / $tt, $rs / $ts }"
  fi
done
grep -h "all-reduce" "$OUT/allreduce.log" 2>/dev/null
grep -h "golden:\|comparisons on" "$OUT/golden.log" 2>/dev/null
