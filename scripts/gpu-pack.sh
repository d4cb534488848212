#!/usr/bin/env bash
# Put what scripts/gpu-check.sh needs on a GPU machine without Rust into .gpu/: the CUDA
# build's `relay` and golden-test binaries (from scripts/cuda-build.sh, stripped) and the
# golden vectors (RELAY_GOLDEN_DIR, default ../shared/golden). Prints the pack's size;
# the device tool carries at most 64 MiB, so the binaries travel xz-compressed.
set -euo pipefail
cd "$(dirname "$0")/.."
D=target/cuda-build/debug
rm -rf .gpu && mkdir -p .gpu
cp "$D/relay" .gpu/relay
golden=$(ls -t $(find $D/deps -maxdepth 1 -name 'golden-*' -type f -executable) | head -1)
cp "$golden" .gpu/golden
strip .gpu/relay .gpu/golden
# The binaries carry candle's kernels as PTX text: xz takes them to a sixth.
xz -T0 -6 .gpu/relay .gpu/golden
cp -r "${RELAY_GOLDEN_DIR:-../shared/golden}" .gpu/golden.d
chmod -R u+w .gpu/golden.d
du -sh .gpu
