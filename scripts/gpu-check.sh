#!/usr/bin/env bash
# The GPU checks of issues 5 and 10, in one run on a machine with an NVIDIA GPU, its driver
# and PyTorch with its CUDA 13 wheels, but no Rust toolchain: the binaries come prebuilt
# (scripts/cuda-build.sh, then scripts/gpu-pack.sh puts them with the golden vectors in
# .gpu/). Prints a summary table last; full logs go to $OUT (default target/gpu-check).
#
#   scripts/gpu-check.sh            # BATCH (default 64), STEPS (timed steps, default 10)
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

step allreduce "$R" bench allreduce --millions 296 --reps 10
step golden env RELAY_GOLDEN_DEVICE=cuda RELAY_GOLDEN_DIR="$G/golden.d" "$BIN/golden"
for p in f32 bf16; do
  flag=(); [ $p = bf16 ] && flag=(--bf16)
  # Halve the batch until relay's step fits in memory; PyTorch runs at the same batch.
  b=$BATCH
  until step relay-adm64-$p "$R" bench model adm-64 --device cuda --batch "$b" --steps "$STEPS" "${flag[@]}" \
    || [ "$b" -le 8 ]; do b=$((b / 2)); done
  echo "batch=$b" >>"$OUT/relay-adm64-$p.log"
  step torch-adm64-$p python3 benches/torch_unet.py --config adm-64 --device cuda --batch "$b" \
    --steps "$STEPS" "${flag[@]}"
done
step smoke-bf16 timeout 240 "$R" run scripts/gpu-smoke.yaml --device cuda
grep -h "final_loss\|images_per_sec\|loss" target/gpu-smoke/.relay/runs.jsonl 2>/dev/null | head -c 3000 > "$OUT/smoke-records.jsonl"
cp target/gpu-smoke/base/loss.png "$OUT/base-loss.png" 2>/dev/null
cp target/gpu-smoke/relay/samples.png "$OUT/relay-samples.png" 2>/dev/null

echo "== summary"
printf '%s\n' "${summary[@]}"
v() { grep -ho "$1=[0-9.]*" "$OUT/$2.log" | tail -1 | cut -d= -f2; }
for p in f32 bf16; do
  rt=$(v relay_train_images_per_sec relay-adm64-$p); rs=$(v relay_sample_images_per_sec relay-adm64-$p)
  tt=$(v torch_train_images_per_sec torch-adm64-$p); ts=$(v torch_sample_images_per_sec torch-adm64-$p)
  b=$(v batch relay-adm64-$p)
  echo "adm-64 $p batch $b img/s: relay train $rt sample $rs | pytorch train $tt sample $ts"
  if [ -n "$rt" ] && [ -n "$tt" ]; then
    awk "BEGIN { printf \"relay/pytorch ($p): train %.2f, sample %.2f\\n\", $rt / $tt, $rs / $ts }"
  fi
done
grep -h "all-reduce" "$OUT/allreduce.log"
grep -h "golden:" "$OUT/golden.log"
