#!/usr/bin/env bash
# Issue 17's whole measurement in one device call (~9 min): on a GPU machine with the NVIDIA
# driver and PyTorch's CUDA 13 wheels but no Rust, from binaries built here
# (scripts/cuda-build.sh, then scripts/gpu-pack.sh: relay, the golden tests and the library's
# unit tests in .gpu/). Most important first; once BUDGET seconds have passed the remaining
# steps are skipped and listed. Logs go to $LOGS; when $OUT is set (the device tool's folder
# that comes back: at most 8 files) the logs are re-packed there as logs.tgz after every step,
# so a time-out still returns every finished log, and summary.md is written there last.
#
#   OUT=$OUT scripts/gpu-profile.sh   # BUDGET (default 540 s), STEPS (timed steps, default 5)
#
# 1. Correctness: the CUDA-vs-CPU twin tests (src/model/ops/cuda/tests.rs) with
#    RELAY_CUDA_OPS=none and =all, the golden vectors on CUDA with all levers on.
# 2. Seeds on CUDA: the same 14 seeds sampled at batch 7 and at batch 1 (levers on) must
#    give the same images (tiny models trained 20 steps by scripts/gpu-smoke.yaml).
# 3. The op profile at adm-64 shapes, batch 32: relay (candle's composite and relay's
#    kernels / cuDNN, src/bench/ops.rs) and PyTorch (benches/torch_ops.py), bf16 and
#    f32/TF32.
# 4. `relay bench model` against benches/torch_unet.py: adm-64 at batch 32 and 64, adm-256
#    at batch 8, bf16 and TF32 (float32 with TF32 convolutions, PyTorch's default), levers
#    on; then float32 without TF32, the levers-off baselines, and adm-64 with each lever
#    left out in turn (what each one is worth).
# Last: $OUT/summary.md (scripts/gpu-summary.py), the tables docs/gpu-notes.md wants.
set -uo pipefail
cd "$(dirname "$0")/.."
G=${GPU_PACK:-.gpu}
LOGS=${LOGS:-target/gpu-profile}
RESULTS=${OUT:-}
BUDGET=${BUDGET:-540}
STEPS=${STEPS:-5}
START=$(date +%s)
OUT=$LOGS
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
bundle() { [ -n "$RESULTS" ] && tar -czf "$RESULTS/logs.tgz" -C "$OUT" . 2>/dev/null; true; }
NV=$(python3 -c "import nvidia, os; print(list(nvidia.__path__)[0])" 2>/dev/null)
LIBS=$(ls -d "$NV"/*/lib 2>/dev/null | tr '\n' ':')
export LD_LIBRARY_PATH=${LIBS}${LD_LIBRARY_PATH:-}
export CUDA_CACHE_MAXSIZE=4294967296 # keep the driver's PTX JIT cache across processes
BIN=${TMPDIR:-/tmp}/relay-gpu-bin
mkdir -p "$BIN"
for b in relay golden lib-tests; do
  python3 -c "import lzma, sys; open(sys.argv[2], 'wb').write(lzma.open(sys.argv[1]).read())" \
    "$G/$b.xz" "$BIN/$b" && chmod +x "$BIN/$b"
done
R=$BIN/relay
LIBT=$BIN/lib-tests

skipped=()
left() { echo $((BUDGET - ($(date +%s) - START))); }
step() { # name, seconds it needs at most, command...: run under `timeout`, log, one line each
  local name=$1 need=$2
  shift 2
  if [ "$(left)" -lt "$need" ]; then
    skipped+=("$name")
    echo "== $name: skipped ($(left) s left)"
    return 1
  fi
  local t0=$(date +%s)
  timeout "$need" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "rc=$rc seconds=$(($(date +%s) - t0))" >>"$OUT/$name.log"
  echo "== $name: rc=$rc ($(($(date +%s) - t0)) s)"
  tail -n 4 "$OUT/$name.log"
  bundle
  return $rc
}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cuDNN', torch.backends.cudnn.version())"
  ldd "$R" | grep -i "not found\|cudnn"
} 2>&1 | tee "$OUT/card.txt"

# 1. Correctness.
step twins-none 150 env RELAY_CUDA_OPS=none "$LIBT" model::ops::cuda --test-threads 1 --nocapture
step twins-all 150 env RELAY_CUDA_OPS=all "$LIBT" model::ops::cuda --test-threads 1 --nocapture
step golden-all 150 env RELAY_CUDA_OPS=all RELAY_GOLDEN_DEVICE=cuda \
  RELAY_GOLDEN_DIR="$G/golden.d" "$BIN/golden" --nocapture

# 2. Seeds: batch 7 vs batch 1 on CUDA, all levers on.
step seeds-b7-vs-b1 150 env RELAY_CUDA_OPS=all RELAY="$R" OUT="$LOGS" bash scripts/gpu-seeds.sh

# 3. Op profile, relay then PyTorch, batch 32.
for p in bf16 f32; do
  tf=0; [ $p = f32 ] && tf=1 # relay's f32 row with TF32, as PyTorch's cuDNN default
  step ops-relay-$p 120 env RELAY_TF32=$tf RELAY_PROFILE_DTYPE=$p RELAY_PROFILE_BATCH=32 \
    "$LIBT" --ignored --exact bench::ops::tests::profile_ops --nocapture
  step ops-torch-$p 120 python3 benches/torch_ops.py --batch 32 --dtype $p
done

# 4. Whole steps. model NAME CONFIG BATCH PRECISION OPS: relay; torch once per config/batch/precision.
model() {
  local name=$1 config=$2 batch=$3 prec=$4 ops=$5 need=${6:-100}
  local flag=() tf=0
  [ "$prec" = bf16 ] && flag=(--bf16)
  [ "$prec" = tf32 ] && tf=1
  step "model-relay-$name" "$need" env RELAY_CUDA_OPS="$ops" RELAY_TF32=$tf "$R" bench model "$config" \
    --device cuda --batch "$batch" --steps "$STEPS" "${flag[@]}"
  local tp=$prec; [ "$prec" != bf16 ] && tp=f32 # PyTorch's float32 runs its convolutions in TF32
  local t="model-torch-$config-b$batch-$tp"
  if [ "$prec" != f32 ] && [ ! -f "$OUT/$t.log" ]; then
    step "$t" "$need" python3 benches/torch_unet.py --config "$config" --device cuda --batch "$batch" \
      --steps "$STEPS" "${flag[@]}"
  fi
}
model adm64-b32-bf16-all adm-64 32 bf16 all
model adm64-b32-tf32-all adm-64 32 tf32 all
model adm64-b64-bf16-all adm-64 64 bf16 all 120
model adm64-b64-tf32-all adm-64 64 tf32 all 120
model adm256-b8-bf16-all adm-256 8 bf16 all 120
model adm256-b8-tf32-all adm-256 8 tf32 all 120
model adm64-b32-f32-all adm-64 32 f32 all
model adm64-b32-bf16-none adm-64 32 bf16 none
model adm64-b32-tf32-none adm-64 32 tf32 none
model adm256-b8-bf16-none adm-256 8 bf16 none 120
for lever in conv group_norm softmax adam pool events; do
  rest=$(echo conv group_norm softmax adam norm pool events | tr ' ' '\n' | grep -vx $lever | paste -sd,)
  model "adm64-b32-bf16-no-$lever" adm-64 32 bf16 "$rest"
done

skipped_list=$(printf '%s\n' "${skipped[@]}" | awk 'NF && !seen[$0]++' | paste -sd' ')
echo "== skipped (budget $BUDGET s): ${skipped_list:-none}" | tee "$OUT/skipped.txt"
python3 scripts/gpu-summary.py "$OUT" | tee "$OUT/summary.md"
bundle
[ -n "$RESULTS" ] && cp "$OUT/summary.md" "$RESULTS/summary.md"
true
