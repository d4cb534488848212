#!/usr/bin/env bash
# Put what scripts/gpu-check.sh and scripts/gpu-profile.sh need on a GPU machine without Rust
# into .gpu/: the CUDA build's `relay`, golden-test and library unit-test binaries (from
# scripts/cuda-build.sh, stripped) and the golden vectors (RELAY_GOLDEN_DIR, default
# ../shared/golden). Prints the pack's size;
# the device tool carries at most 64 MiB, so the binaries travel xz-compressed.
set -euo pipefail
cd "$(dirname "$0")/.."
D=target/cuda-build/debug
rm -rf .gpu && mkdir -p .gpu
cp "$D/relay" .gpu/relay
golden=$(ls -t $(find $D/deps -maxdepth 1 -name 'golden-*' -type f -executable) | head -1)
cp "$golden" .gpu/golden
cp "$(cat target/cuda-build/lib-tests.path)" .gpu/lib-tests
strip .gpu/relay .gpu/golden .gpu/lib-tests
# The binaries carry candle's kernels as PTX text: xz takes them to a sixth.
xz -T0 -6 .gpu/relay .gpu/golden .gpu/lib-tests
cp -r "${RELAY_GOLDEN_DIR:-../shared/golden}" .gpu/golden.d
chmod -R u+w .gpu/golden.d
du -sh .gpu
