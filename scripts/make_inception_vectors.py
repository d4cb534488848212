#!/usr/bin/env python3
"""Reference vectors for relay's FID Inception-v3 and metrics (issue 18).

Writes, under tests/data/metrics/:

* inception.safetensors: pytorch-fid's `InceptionV3` (the FID network: FIDInceptionA..E,
  bilinear resize to 299, [-1, 1]) run with *formula weights* (every weight a hash of its
  tensor name and index, see `formula` below; relay computes the same values in
  `src/model/inception/synthetic.rs`) and batch-norm running statistics calibrated on
  deterministic shape images, so that features vary from image to image. Stored: the
  calibrated statistics (`<layer>.bn.running_mean` / `running_var`), 8 test images at two
  sizes (`images_a` 32x32, `images_b` 48x64, uint8 NHWC) and, for each, pool3 (2048),
  `mixed_6/conv` (Mixed_6d.branch1x1, first 7 channels, 17x17, flattened HWC as ADM's
  evaluator does: 2023) and the logits as ADM's evaluator takes them (pool3 @ fc.weight^T,
  the graph's `softmax/logits/MatMul`, no bias), from the same network run in float64; the
  metadata keeps how far pytorch-fid's own float32 run is from those.
* legacy.pth, zip.pth: a tiny state dict in torch.save's two formats (the .pth reader's test).
* stats.json: FID (scipy.linalg.sqrtm, as pytorch-fid and ADM's evaluator), Inception
  Score (ADM's splits) and precision/recall counts (ADM's k = 3 manifold radii, float64
  distances) on feature sets that relay regenerates from the same formula.

The weights are not stored (pytorch-fid's real file is ~95 MB; these would be as large).

    python3 scripts/make_inception_vectors.py            # needs torch, pytorch-fid, scipy

Without them it makes a venv under target/metrics-torch/ and installs them from PyPI
(CPU is enough).
"""
import collections
import copy
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, "target", "metrics-torch", "venv")


def ensure_deps():
    try:
        import pytorch_fid  # noqa: F401
        import safetensors  # noqa: F401
        import scipy  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        py = os.path.join(VENV, "bin", "python")
        if os.path.abspath(sys.executable) == os.path.abspath(py):
            raise
        if not os.path.exists(py):
            subprocess.check_call([sys.executable, "-m", "venv", VENV])
        subprocess.check_call([py, "-m", "pip", "install", "--quiet", "torch", "numpy",
                               "scipy", "pytorch-fid==0.3.0", "safetensors", "pillow"])
        os.execv(py, [py] + sys.argv)


ensure_deps()

import numpy as np  # noqa: E402
import scipy.linalg  # noqa: E402
import torch  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

import pytorch_fid.inception as pfi  # noqa: E402

OUT = os.path.join(ROOT, "tests", "data", "metrics")
M64 = (1 << 64) - 1


# ---- The formula (relay: src/model/inception/synthetic.rs) ----------------------------

def fnv1a64(text):
    h = 0xCBF29CE484222325
    for b in text.encode():
        h = ((h ^ b) * 0x100000001B3) & M64
    return h


def uniform(name, n):
    """n values in [-1, 1): splitmix64 of fnv1a64(name) + (i + 1) * golden, top 24 bits."""
    with np.errstate(over="ignore"):
        i = np.arange(1, n + 1, dtype=np.uint64)
        x = np.uint64(fnv1a64(name)) + i * np.uint64(0x9E3779B97F4A7C15)
        z = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(40)).astype(np.float64) / float(1 << 24)
    return 2.0 * u - 1.0


def formula(name, shape):
    """A weight tensor's value: uniform(name) scaled by its role (float64, then float32)."""
    n = int(np.prod(shape))
    v = uniform(name, n)
    if name == "fc.weight":
        v = v / np.sqrt(2048.0)
    elif name.endswith("conv.weight"):
        fan_in = int(np.prod(shape[1:]))
        v = v * np.sqrt(6.0 / fan_in)
    elif name.endswith("bn.weight"):
        v = 1.0 + 0.25 * v
    elif name.endswith("bn.bias") or name == "fc.bias":
        v = 0.25 * v
    elif name.endswith("running_mean"):
        v = np.zeros(n)
    elif name.endswith("running_var"):
        v = np.ones(n)
    elif name.endswith("num_batches_tracked"):
        return np.zeros(shape, dtype=np.int64)
    else:
        raise SystemExit(f"no formula for {name}")
    return v.astype(np.float32).reshape(shape)


# ---- Deterministic images: soft shapes on a gradient (legacy RandomState: frozen stream) ----

def shape_images(count, h, w, seed):
    rs = np.random.RandomState(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    out = np.zeros((count, h, w, 3), dtype=np.uint8)
    for k in range(count):
        a, b = rs.uniform(0, 255, 3), rs.uniform(0, 255, 3)
        t = (xx * np.cos(rs.uniform(0, 6.3)) + yy * np.sin(rs.uniform(0, 6.3)))[..., None]
        img = a + (b - a) * (t - t.min()) / (np.ptp(t) + 1e-9)
        for _ in range(rs.randint(1, 5)):
            cy, cx, r = rs.uniform(0, 1), rs.uniform(0, 1), rs.uniform(0.08, 0.4)
            col = rs.uniform(0, 255, 3)
            if rs.uniform() < 0.5:
                m = ((yy - cy) ** 2 + (xx - cx) ** 2) < r * r
            else:
                m = (abs(yy - cy) < r) & (abs(xx - cx) < r * rs.uniform(0.3, 1.0))
            img[m] = col
        out[k] = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return out


# ---- The network --------------------------------------------------------------------

def bare_inception():
    """fid_inception_v3's module tree, without loading anything."""
    net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pfi.FIDInceptionE_1(1280)
    net.Mixed_7c = pfi.FIDInceptionE_2(2048)
    return net


def formula_state_dict():
    return {k: torch.from_numpy(formula(k, tuple(v.shape)))
            for k, v in bare_inception().state_dict().items()}


def pytorch_fid_network(state):
    """pytorch-fid's own InceptionV3 (FID weights path), fed `state` instead of the download."""
    pfi.load_state_dict_from_url = lambda *a, **k: state
    net = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=True,
                          normalize_input=True, use_fid_inception=True)
    return net.eval()


def bn_layers(net):
    return [(name, m) for name, m in net.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]


def calibrate(net, images):
    """Set every BN layer's running statistics to the batch statistics of its input on
    `images`, layer by layer in forward order (each later layer sees calibrated inputs)."""
    def pre_hook(m, args):
        x = args[0].double()
        m.running_mean.copy_(x.mean(dim=(0, 2, 3)).float())
        m.running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False).float())
    hooks = [m.register_forward_pre_hook(pre_hook) for _, m in bn_layers(net)]
    with torch.no_grad():
        net(to_input(images))
    for h in hooks:
        h.remove()


def to_input(images, dtype=torch.float32):
    return torch.from_numpy(images).permute(0, 3, 1, 2).to(dtype) / 255.0


def features(net, fc_weight, images, dtype=torch.float32):
    spatial = {}
    mixed_6 = net.blocks[2][6]  # Mixed_6d = the TF graph's mixed_6
    h = mixed_6.branch1x1.register_forward_hook(lambda m, a, out: spatial.update(x=out))
    with torch.no_grad():
        pool = net(to_input(images, dtype))[0][:, :, 0, 0]
    h.remove()
    s = spatial["x"][:, :7].permute(0, 2, 3, 1).reshape(len(images), -1)
    logits = pool @ fc_weight.to(dtype).T
    return pool.numpy(), s.numpy(), logits.numpy()


def rel_err(a, b):
    """max |a - b| / max |b| per row, worst row (what relay's test measures)."""
    return float((np.abs(a - b).max(axis=1) / np.abs(b).max(axis=1)).max())


def bn_key(torch_name):
    # blocks.2.6.branch1x1.bn -> the state-dict name of the same layer (Mixed_6d.branch1x1.bn)
    return torch_name


def network_vectors():
    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    state = formula_state_dict()
    net = pytorch_fid_network(state)
    calibrate(net, shape_images(96, 64, 64, seed=1))
    # The calibrated statistics under the state-dict names: the i-th BN of pytorch-fid's
    # blocks is the i-th BN of the plain module tree (same construction order).
    names = [k[: -len(".running_mean")] for k in state if k.endswith(".running_mean")]
    layers = bn_layers(net)
    assert len(names) == len(layers) == 94, (len(names), len(layers))
    out = {}
    for name, (_, m) in zip(names, layers):
        assert tuple(m.running_mean.shape) == tuple(state[name + ".running_mean"].shape)
        out[name + ".running_mean"] = m.running_mean.numpy().copy()
        out[name + ".running_var"] = m.running_var.numpy().copy()
    # The expected outputs come from the same network in float64 (the values float32 round-off
    # scatters around); pytorch-fid's own float32 error against them is kept for comparison.
    net64 = copy.deepcopy(net).double()
    f32_err = {}
    for tag, (h, w) in (("a", (32, 32)), ("b", (48, 64))):
        imgs = shape_images(8, h, w, seed={"a": 2, "b": 3}[tag])
        want = features(net64, state["fc.weight"], imgs, torch.float64)
        got = features(net, state["fc.weight"], imgs)
        out[f"images_{tag}"] = imgs
        for name, g, wv in zip(("pool", "spatial", "logits"), got, want):
            out[f"{name}_{tag}"] = wv
            f32_err[f"{name}_{tag}"] = rel_err(g.astype(np.float64), wv)
        pool = want[0]
        spread = pool.std(axis=0).mean() / (abs(pool).mean() + 1e-12)
        print(f"images_{tag} {h}x{w}: pool3 spread across images {spread:.3f}")
        assert spread > 0.05, "features barely vary: calibration failed"
    print("pytorch-fid float32 vs float64:", {k: f"{v:.1e}" for k, v in f32_err.items()})
    return out, f32_err


# ---- Statistics and distances -------------------------------------------------------

def feature_set(family, name, n, d, shift):
    """n x d float32 features of set `name` from distribution `family`: uniform values with
    the family's per-dimension scale, offset by `shift` times a fixed direction, plus a
    low-rank correlated part (elementwise, no matrix product: relay gets the same bits)."""
    u = uniform(name, n * d).reshape(n, d)
    scale = 0.2 + 1.5 * (0.5 + 0.5 * uniform(family + "/scale", d))
    x = u * scale + shift * uniform(family + "/offset", d)
    f = uniform(name + "/factor", n)[:, None] * uniform(family + "/load", d)[None, :]
    return (x + f).astype(np.float32)


def stats(x):
    x = x.astype(np.float64)
    return x.mean(axis=0), np.cov(x, rowvar=False)


def fid_scipy(m1, s1, m2, s2):
    covmean = np.asarray(scipy.linalg.sqrtm(s1.dot(s2))).real
    diff = m1 - m2
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def inception_score(logits, split):
    x = logits.astype(np.float64)
    p = np.exp(x - x.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    scores = []
    for i in range(0, len(p), split):
        part = p[i:i + split]
        kl = part * (np.log(part) - np.log(np.mean(part, 0, keepdims=True)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores))


def sqdist(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


def radii(x, k=3):
    d = sqdist(x, x)
    return np.sort(d, axis=1)[:, k]


def precision_recall(ref, sample, k=3):
    r_ref, r_s = radii(ref, k), radii(sample, k)
    d = sqdist(ref, sample)
    sample_in = (d <= r_ref[:, None]).any(axis=0)  # precision: samples inside the ref manifold
    ref_in = (d <= r_s[None, :]).any(axis=1)  # recall: refs inside the sample manifold
    # How close the closest decision is (relay's float32 distances must not flip one).
    margin = min(np.min(np.abs(d - r_ref[:, None]) / r_ref[:, None]),
                 np.min(np.abs(d - r_s[None, :]) / r_s[None, :]))
    return int(sample_in.sum()), int(ref_in.sum()), float(margin)


def stats_vectors():
    cases = []
    for name, d, n1, n2, shift in (("small", 16, 60, 50, 0.5), ("wide", 200, 320, 300, 0.5)):
        a = feature_set(name, f"{name}/a", n1, d, 0.0)
        b = feature_set(name, f"{name}/b", n2, d, shift)
        m1, s1 = stats(a)
        m2, s2 = stats(b)
        prec, rec, margin = precision_recall(a, b)
        assert margin > 1e-4, f"{name}: a distance lies within {margin:.1e} of a radius"
        cases.append({
            "name": name, "dims": d, "n_ref": n1, "n_sample": n2, "shift": shift,
            "fid": fid_scipy(m1, s1, m2, s2),
            "fid_self": fid_scipy(m1, s1, m1, s1),
            "mu_ref_sum": float(m1.sum()), "sigma_ref_trace": float(np.trace(s1)),
            "sigma_ref_01": float(s1[0, 1]),
            "precision_count": prec, "recall_count": rec, "pr_margin": margin,
        })
        print(f"{name}: fid {cases[-1]['fid']:.6f}, P {prec}/{n2}, R {rec}/{n1}, margin {margin:.1e}")
    logits = feature_set("is", "is/logits", 1200, 40, 0.0) * 3.0
    is_cases = [{"n": 1200, "classes": 40, "split": s, "inception_score": inception_score(logits, s)}
                for s in (5000, 500)]
    return {"fid_pr": cases, "inception_score": is_cases,
            "generator": "scripts/make_inception_vectors.py", "numpy": np.__version__,
            "scipy": scipy.__version__, "torch": torch.__version__}


def main():
    os.makedirs(OUT, exist_ok=True)
    vec, f32_err = network_vectors()
    save_file(vec, os.path.join(OUT, "inception.safetensors"),
              metadata={"generator": "scripts/make_inception_vectors.py",
                        "torch": torch.__version__, "pytorch_fid": "0.3.0",
                        "pytorch_float32_rel_err": json.dumps(f32_err)})
    with open(os.path.join(OUT, "stats.json"), "w") as f:
        json.dump(stats_vectors(), f, indent=1)
        f.write("\n")
    # A tiny state dict in torch.save's legacy (pre-1.6) format, with a view into a shared
    # storage at an offset (relay's legacy reader: src/model/inception/weights.rs).
    x = torch.arange(10.0)
    small = collections.OrderedDict(w=x[2:8].view(2, 3), v=x, d=torch.arange(3, dtype=torch.float64))
    torch.save(small, os.path.join(OUT, "legacy.pth"), _use_new_zipfile_serialization=False)
    torch.save(small, os.path.join(OUT, "zip.pth"))
    print("wrote", OUT)


if __name__ == "__main__":
    main()
