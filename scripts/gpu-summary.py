#!/usr/bin/env python3
"""The tables of issue 17 from the logs of scripts/gpu-profile.sh (one folder): whole steps
(relay vs PyTorch, images/s, ratios, peak GB, phases), the op profile (candle, relay's kernels
and PyTorch, ms per call), and the correctness checks. Markdown on stdout.

    python3 scripts/gpu-summary.py target/gpu-profile > summary.md
"""

import glob
import os
import re
import sys


def keys(path):
    """The key=value pairs of a log (the last value of each key wins)."""
    out = {}
    try:
        text = open(path, errors="replace").read()
    except OSError:
        return out
    for k, v in re.findall(r"\b([a-z_]+)=([^\s]+)", text):
        out[k] = v
    return out


def num(d, k):
    try:
        return float(d[k])
    except (KeyError, ValueError):
        return None


def fmt(x, spec=".1f"):
    return "—" if x is None else format(x, spec)


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def models(out):
    print("## Whole steps (images/s; peak GB used / reserved by the allocator)\n")
    print("| run | levers | relay train | torch train | ratio | relay sample | torch sample | ratio "
          "| relay peak train / sample | torch peak train / sample | relay fwd / bwd / Adam+EMA s | torch fwd / bwd / Adam+EMA s |")
    print("|" + "---|" * 12)
    for path in sorted(glob.glob(os.path.join(out, "model-relay-*.log"))):
        name = os.path.basename(path)[len("model-relay-"):-4]
        r = keys(path)
        m = re.match(r"(adm\d+)-b(\d+)-(bf16|tf32|f32)", name)
        tp = "bf16" if m and m.group(3) == "bf16" else "f32"
        cfg = m.group(1).replace("adm", "adm-") if m else "?"
        t = keys(os.path.join(out, f"model-torch-{cfg}-b{m.group(2) if m else '?'}-{tp}.log"))
        if m and m.group(3) == "f32":
            t = {}  # PyTorch's float32 uses TF32 convolutions: compared in the tf32 rows
        if r.get("rc") not in (None, "0"):
            print(f"| {name} | {r.get('relay_cuda_ops', '?')} | failed (rc {r.get('rc')}"
                  f"{', out of memory' if 'OUT_OF_MEMORY' in open(path, errors='replace').read() else ''}) |"
                  + " |" * 10)
            continue
        rt, tt = num(r, "relay_train_images_per_sec"), num(t, "torch_train_images_per_sec")
        rs, ts = num(r, "relay_sample_images_per_sec"), num(t, "torch_sample_images_per_sec")
        peak = lambda d, p: f"{fmt(num(d, p + '_train_peak_gb'), '.1f')} / {fmt(num(d, p + '_sample_peak_gb'), '.1f')}"
        print(f"| {name} | {r.get('relay_cuda_ops', '?')} | {fmt(rt)} | {fmt(tt)} | {fmt(ratio(rt, tt), '.2f')} "
              f"| {fmt(rs)} | {fmt(ts)} | {fmt(ratio(rs, ts), '.2f')} | {peak(r, 'relay')} | {peak(t, 'torch')} "
              f"| {r.get('relay_train_phases_s', '—')} | {t.get('torch_train_phases_s', '—')} |")
    print()


def ops(out):
    rows = {}
    for path in glob.glob(os.path.join(out, "ops-*.log")):
        for line in open(path, errors="replace"):
            if line.startswith("profile "):
                d = dict(kv.split("=", 1) for kv in line.split()[1:])
                # Adam, EMA and the norm run over each side's own parameter list: join by op.
                shape = d["shape"] if d["op"] not in ("adam", "ema", "grad_norm") else "all weights"
                rows.setdefault((d["dtype"], d["op"], shape), {})[d["variant"]] = float(d["ms"])
    if not rows:
        return
    print("## Op profile at adm-64 shapes, batch 32 (median ms per synchronised call)\n")
    print("| dtype | op | shape | candle | relay | PyTorch | relay / PyTorch | candle / relay |")
    print("|---|---|---|---|---|---|---|---|")
    for (dtype, op, shape), v in sorted(rows.items()):
        relay = next((v[k] for k in ("cudnn", "relay-cuda", "relay-one-sync") if k in v), None)
        torch = v.get("torch")
        print(f"| {dtype} | {op} | {shape} | {fmt(v.get('candle'), '.3f')} | {fmt(relay, '.3f')} | "
              f"{fmt(torch, '.3f')} | {fmt(ratio(relay, torch), '.2f')} | {fmt(ratio(v.get('candle'), relay), '.2f')} |")
    print()


def checks(out):
    print("## Correctness and checks\n")
    for name in ("twins-none", "twins-all", "golden-all", "seeds-b7-vs-b1"):
        path = os.path.join(out, name + ".log")
        if not os.path.exists(path):
            print(f"- {name}: not run")
            continue
        text = open(path, errors="replace").read()
        k = keys(path)
        lines = [ln for ln in text.splitlines()
                 if re.search(r"test result|seeds_identical|golden:|comparisons on|panicked", ln)]
        print(f"- {name}: rc {k.get('rc', '?')}; " + "; ".join(lines[-3:]))
    skipped = os.path.join(out, "skipped.txt")
    if os.path.exists(skipped):
        print("- " + open(skipped).read().strip().lstrip("= "))
    print()


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "target/gpu-profile"
    card = os.path.join(out, "card.txt")
    if os.path.exists(card):
        print("```\n" + open(card).read().strip() + "\n```\n")
    checks(out)
    models(out)
    ops(out)


if __name__ == "__main__":
    main()
