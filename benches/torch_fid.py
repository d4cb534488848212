#!/usr/bin/env python3
"""The peer of `relay bench metrics`: pytorch-fid's InceptionV3 (FID weights path) on the
same images, weights, batch, threads and device, and scipy's sqrtm on the same two
covariances (pytorch-fid's `calculate_frechet_distance` path). Prints one JSON line.

    python benches/torch_fid.py --dir target/bench-metrics --batch 50 --threads 2
"""
import argparse
import json
import time

import numpy as np
import scipy.linalg
import torch
from safetensors.torch import load_file

import pytorch_fid.inception as pfi


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device("cuda" if a.device.startswith("cuda") else "cpu")

    state = load_file(f"{a.dir}/inception.safetensors")
    pfi.load_state_dict_from_url = lambda *args, **kw: state
    net = pfi.InceptionV3([3], resize_input=True, normalize_input=True, use_fid_inception=True)
    net = net.eval().to(dev)
    images = np.load(f"{a.dir}/images.npz")["arr_0"]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    batches = [x[i:i + a.batch] for i in range(0, len(x), a.batch)]
    with torch.no_grad():
        net(batches[0].to(dev))[0].cpu()
        t0 = time.perf_counter()
        for _ in range(a.rounds):
            for b in batches:
                net(b.to(dev))[0].cpu()
        ips = a.rounds * len(x) / (time.perf_counter() - t0)

    cov = np.load(f"{a.dir}/cov.npz")
    s1, s2 = cov["sigma1"], cov["sigma2"]
    t0 = time.perf_counter()
    covmean = np.asarray(scipy.linalg.sqrtm(s1.dot(s2))).real
    sq = time.perf_counter() - t0
    print(json.dumps({"images_per_sec": ips, "sqrtm_seconds": sq, "trace": float(np.trace(covmean)),
                      "torch": torch.__version__, "scipy": scipy.__version__}))


if __name__ == "__main__":
    main()
