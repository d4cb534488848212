#!/usr/bin/env bash
# Train and sample speed of our U-Net against the same architecture in PyTorch, side by
# side on this machine (issue 10): `relay bench model` (release build) and
# benches/torch_unet.py, same config, batch, resolution and thread count.
#
#   scripts/bench-vs-torch.sh CONFIG      (tiny, adm-64, adm-256 or a config.json)
#
# Environment: BATCH, STEPS (timed steps of each kind, after 2 warm-up steps), RESOLUTION
# (default: the config's), THREADS (default: all cores; RAYON_NUM_THREADS for relay,
# torch.set_num_threads for PyTorch), ROUNDS (alternate relay and PyTorch this many times
# and compare medians; default 1). Defaults: tiny batch 16 x 10 steps; adm-64 batch 2 x 3
# steps at 64 px (a 2-core CPU needs ~10-20 s per adm-64 training image).
# PyTorch: the system python3's when it has one, else CPU PyTorch from PyPI in
# target/bench-torch/venv. The last line reads `relay/pytorch: train R1, sample R2`.
set -euo pipefail
CONFIG=${1:-tiny}
cd "$(dirname "$0")/.."
THREADS=${THREADS:-$(nproc)}
ROUNDS=${ROUNDS:-1}
case "$CONFIG" in
  tiny) BATCH=${BATCH:-16}; STEPS=${STEPS:-10} ;;
  adm-64) BATCH=${BATCH:-2}; STEPS=${STEPS:-3} ;;
  *) BATCH=${BATCH:-2}; STEPS=${STEPS:-3} ;;
esac
RES_ARGS=()
if [ -n "${RESOLUTION:-}" ]; then RES_ARGS=(--resolution "$RESOLUTION"); fi

PY=python3
if ! python3 -c "import torch" 2>/dev/null; then
  VENV=target/bench-torch/venv
  if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    echo "== installing PyTorch from PyPI into $VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet torch numpy
  fi
  PY=$VENV/bin/python
fi

cargo build --release --quiet --bin relay
echo "== $CONFIG, batch $BATCH, $STEPS steps, $THREADS threads, $ROUNDS round(s); load: $(cut -d' ' -f1-3 /proc/loadavg)"
RELAY_TRAIN=() RELAY_SAMPLE=() TORCH_TRAIN=() TORCH_SAMPLE=()
TMP=$(mktemp)
trap 'rm -f "$TMP"' EXIT
value() { echo "$1" | grep -o "$2=[0-9.]*" | tail -1 | cut -d= -f2; }
for round in $(seq "$ROUNDS"); do
  echo "== round $round: relay"
  RAYON_NUM_THREADS=$THREADS target/release/relay bench model "$CONFIG" --device cpu \
    --batch "$BATCH" --steps "$STEPS" "${RES_ARGS[@]}" >"$TMP"
  cat "$TMP"
  OUT=$(cat "$TMP")
  RELAY_PARAMS=$(value "$OUT" relay_parameters)
  RELAY_TRAIN+=("$(value "$OUT" relay_train_images_per_sec)")
  RELAY_SAMPLE+=("$(value "$OUT" relay_sample_images_per_sec)")
  echo "== round $round: pytorch"
  OMP_NUM_THREADS=$THREADS "$PY" benches/torch_unet.py --config "$CONFIG" \
    --batch "$BATCH" --steps "$STEPS" --threads "$THREADS" "${RES_ARGS[@]}" >"$TMP"
  cat "$TMP"
  OUT=$(cat "$TMP")
  TORCH_PARAMS=$(value "$OUT" torch_parameters)
  TORCH_TRAIN+=("$(value "$OUT" torch_train_images_per_sec)")
  TORCH_SAMPLE+=("$(value "$OUT" torch_sample_images_per_sec)")
done
if [ "$RELAY_PARAMS" != "$TORCH_PARAMS" ]; then
  echo "error: the networks differ: relay has $RELAY_PARAMS parameters, PyTorch $TORCH_PARAMS" >&2
  exit 1
fi

"$PY" - "$CONFIG" "$BATCH" "$THREADS" "$RELAY_PARAMS" "${RELAY_TRAIN[*]}" "${RELAY_SAMPLE[*]}" \
  "${TORCH_TRAIN[*]}" "${TORCH_SAMPLE[*]}" <<'PY'
import statistics, sys
config, batch, threads, params = sys.argv[1:5]
rt, rs, tt, ts = (statistics.median(float(v) for v in a.split()) for a in sys.argv[5:9])
print(f"\n{config}: {int(params):,} parameters in both, batch {batch}, {threads} threads (images/s, medians)")
print("| | relay | pytorch | relay/pytorch |")
print("|---|---|---|---|")
print(f"| train (fwd + bwd + Adam) | {rt:.2f} | {tt:.2f} | {rt / tt:.2f} |")
print(f"| sample (fwd) | {rs:.2f} | {ts:.2f} | {rs / ts:.2f} |")
print(f"relay/pytorch: train {rt / tt:.2f}, sample {rs / ts:.2f}")
PY
