#!/usr/bin/env python3
"""Test data for loading an official checkpoint that has an augmentation input
(`augment_dim = 9`, as RDM's CelebA-HQ networks trained with `--augment`): a small
`EDMPrecond` + `DhariwalUNet` from the reference code with seeded random weights (all of
them, `map_augment` included, so nothing hides behind ADM's zero initialisation), saved as
the training loop saves it (`{'ema': net}`), converted with scripts/convert_checkpoint.py,
plus the reference's D for a few inputs with and without an augmentation vector.

    python scripts/augment_checkpoint_vectors.py --code PATH/TO/edm tests/data/convert_augment

Needs torch, numpy, safetensors and a checkout of NVlabs/edm (or THUDM/RelayDiffusion).
Writes OUT/model.safetensors and OUT/config.json (the converter's output) and
OUT/reference.safetensors (x, sigma, augment_labels, D_none, D_augment).
"""

import argparse
import os
import subprocess
import sys
import tempfile


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--code", required=True, help="checkout of NVlabs/edm or THUDM/RelayDiffusion")
    args = ap.parse_args()
    sys.path.insert(0, os.path.abspath(args.code))
    # dnnlib imports `requests` for downloads only; none happens here.
    try:
        import requests  # noqa: F401
    except ModuleNotFoundError:
        import types
        sys.modules["requests"] = types.ModuleType("requests")
    import torch
    from safetensors.torch import save_file
    from training.networks import EDMPrecond

    torch.manual_seed(19)
    net = EDMPrecond(img_resolution=8, img_channels=3, label_dim=0, use_fp16=False,
                     model_type="DhariwalUNet", model_channels=8, channel_mult=[1, 2],
                     num_blocks=1, attn_resolutions=[], augment_dim=9, dropout=0.0)
    net.eval().requires_grad_(False)
    g = torch.Generator().manual_seed(19)
    for name, p in net.named_parameters():
        if p.ndim >= 2:
            fan_in = p[0].numel()
            p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
        elif "norm" in name and name.endswith("weight"):
            p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(0.1 * torch.randn(p.shape, generator=g))

    x = torch.randn([3, 3, 8, 8], generator=g)
    sigma = torch.tensor([0.05, 0.7, 12.0])
    aug = torch.randn([3, 9], generator=g)
    d_none = net(x, sigma)
    d_aug = net(x, sigma, augment_labels=aug)
    rel = (d_aug - d_none).abs().max() / d_none.abs().max()
    print(f"D with / without the augmentation vector differ by {rel:.3%}", file=sys.stderr)

    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "training-state-000000.pt")
        torch.save({"ema": net}, ckpt)
        here = os.path.dirname(os.path.abspath(__file__))
        env = dict(os.environ)
        if isinstance(sys.modules["requests"], type(sys)) and not hasattr(sys.modules["requests"], "get"):
            with open(os.path.join(tmp, "requests.py"), "w") as f:
                f.write("# stand-in: dnnlib imports requests for downloads only\n")
            env["PYTHONPATH"] = tmp + os.pathsep + env.get("PYTHONPATH", "")
        subprocess.run([sys.executable, os.path.join(here, "convert_checkpoint.py"), ckpt, args.out,
                        "--code", args.code], check=True, env=env)
    save_file({"x": x, "sigma": sigma, "augment_labels": aug, "d_none": d_none.float(),
               "d_augment": d_aug.float()}, os.path.join(args.out, "reference.safetensors"))


if __name__ == "__main__":
    main()
