#!/usr/bin/env bash
# Benchmark dataset preparation: relay (folder -> shard -> 256+64 box pairs, all cores)
# against a Pillow baseline doing what EDM's dataset_tool does per image (decode, centre
# crop, Lanczos resize, PNG encode; one process), on the same generated JPEGs.
#
#   scripts/bench-prep.sh [COUNT] [WORKDIR]      (defaults: 500, target/bench-prep)
#
# relay runs through `relay bench prep` (release build) when the binary has that
# subcommand, else through the ignored integration test `data::bench_prep` (dev profile:
# dependencies optimised, relay's own code at opt-level 1, so slower than release).
# RELAY_BENCH_PROFILE=dev skips the release build (~10 min from scratch on 2 cores).
# Pillow (and numpy) are installed from PyPI into WORKDIR/venv.
set -euo pipefail
COUNT=${1:-500}
WORK=${2:-target/bench-prep}
cd "$(dirname "$0")/.."
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)

if [ ! -x "$WORK/venv/bin/python" ]; then
  python3 -m venv "$WORK/venv"
  "$WORK/venv/bin/pip" install --quiet pillow numpy
fi

echo "== relay ($COUNT images, $(nproc) cores)"
if [ "${RELAY_BENCH_PROFILE:-release}" = release ] && cargo build --release --quiet \
   && target/release/relay bench prep --help >/dev/null 2>&1; then
  RELAY_OUT=$(target/release/relay bench prep --count "$COUNT" --dir "$WORK" | tee /dev/stderr)
  MODE=release
else
  RELAY_OUT=$(RELAY_BENCH_DIR="$WORK" RELAY_BENCH_COUNT="$COUNT" \
    cargo test --test it data::bench_prep -- --ignored --nocapture --exact 2>&1 | tee /dev/stderr)
  MODE="dev profile (cargo test)"
fi
RELAY=$(echo "$RELAY_OUT" | grep -o 'relay_images_per_sec=[0-9.]*' | tail -1 | cut -d= -f2)

echo "== Pillow baseline (same images)"
PIL_OUT=$("$WORK/venv/bin/python" benches/prep_baseline.py "$WORK/images" "$WORK/pillow-out")
echo "$PIL_OUT"
PIL=$(echo "$PIL_OUT" | grep -o 'pillow_images_per_sec=[0-9.]*' | cut -d= -f2)

python3 - "$RELAY" "$PIL" "$MODE" "$COUNT" <<'PY'
import sys
relay, pil, mode, count = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4]
print(f"\n| images | relay img/s ({mode}; 256+64 pairs) | Pillow img/s (256 only) | ratio |")
print(f"|---|---|---|---|")
print(f"| {count} | {relay:.1f} | {pil:.1f} | {relay / pil:.2f}x |")
PY
