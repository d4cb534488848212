#!/usr/bin/env bash
# Issue 17's seed check on CUDA (run by scripts/gpu-profile.sh): trains the two tiny stages
# of scripts/gpu-smoke.yaml for 20 steps, samples seeds 0-13 at batch 7 and again at batch 1,
# and compares the images pixel by pixel (exit 1 if any seed's image differs).
#
#   RELAY=path/to/relay OUT=folder scripts/gpu-seeds.sh
set -euo pipefail
cd "$(dirname "$0")/.."
R=${RELAY:-relay}
OUT=${OUT:-target/gpu-profile}
run=("$R" run scripts/gpu-smoke.yaml --device cuda --var steps=20 -s samples.seeds=0-13)
for b in 7 1; do
  "${run[@]}" -s samples.batch=$b
  "$R" export target/gpu-smoke/samples --npz "$OUT/seeds-b$b.npz"
done
python3 - "$OUT/seeds-b7.npz" "$OUT/seeds-b1.npz" <<'PY'
import sys
import numpy as np
a, b = (np.load(p)["arr_0"].astype(np.int16) for p in sys.argv[1:3])
same = [bool((a[i] == b[i]).all()) for i in range(len(a))]
print(f"seeds_identical={sum(same)}/{len(same)} max_abs_pixel_diff={int(np.abs(a - b).max())}")
sys.exit(0 if all(same) else 1)
PY
