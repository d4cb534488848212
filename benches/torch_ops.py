#!/usr/bin/env python3
"""The PyTorch side of relay's op profile (src/bench/ops.rs, issue 17): the same ops at the
same adm-64 shapes, each timed alone with a synchronisation around every call, median of
10 after 2 warm-up calls, printed as `profile op=... shape=... dtype=... variant=torch ms=...`
lines that scripts/gpu-profile.sh joins with relay's.

* conv_fwd (with bias), conv_dgrad, conv_wgrad (with the bias gradient): cuDNN through
  torch.nn.functional.conv2d and torch.nn.grad (TF32 as PyTorch's default for cuDNN);
* gn_silu_fwd, gn_silu_fwd_bwd: F.group_norm + F.silu, backward through (y * up).sum();
* softmax_fwd, softmax_fwd_bwd: float32 logits -> softmax -> the run's type;
* adam, ema, grad_norm: torch.optim.Adam (foreach), torch._foreach_lerp_, and
  torch.nn.utils.get_total_norm over adm-64's parameters (benches/torch_unet.py's model).

    python3 benches/torch_ops.py --batch 32 --dtype bf16
"""

import argparse

import torch
import torch.nn.functional as F

from torch_unet import PRESETS, EDMPrecond, timed


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    p.add_argument("--device", default="cuda", help="cuda (or cpu, to try the script)")
    p.add_argument("--net", default="adm-64", help="the preset whose parameters Adam updates")
    p.add_argument("--reps", type=int, default=10)
    a = p.parse_args()
    dev = torch.device(a.device)
    cuda_sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    t = lambda fn: timed(fn, 2, a.reps, cuda_sync) * 1e3  # noqa: E731  (ms)
    dt = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    name = "BF16" if a.dtype == "bf16" else "F32"
    b = a.batch
    rows = []

    def row(op, shape, ms):
        rows.append((op, shape, ms))
        print(f"profile op={op} shape={shape} dtype={name} variant=torch ms={ms:.4f}", flush=True)

    levels = [(192, 64), (384, 32), (576, 16), (768, 8)]
    convs = [((b, c, r, r), c, 3) for c, r in levels] + [((b, 384, 32, 32), 3 * 384, 1)]
    for x_dims, o, k in convs:
        shape = "x".join(map(str, x_dims)) + f"->{o}k{k}"
        x = torch.randn(x_dims, device=dev, dtype=dt)
        w = torch.randn(o, x_dims[1], k, k, device=dev, dtype=dt) * 0.05
        bias = torch.randn(o, device=dev, dtype=dt)
        g = torch.randn(x_dims[0], o, x_dims[2], x_dims[3], device=dev, dtype=dt)
        pad = k // 2
        with torch.no_grad():
            row("conv_fwd", shape, t(lambda: F.conv2d(x, w, bias, padding=pad)))
            row("conv_dgrad", shape, t(lambda: torch.nn.grad.conv2d_input(x.shape, w, g, padding=pad)))
            row("conv_wgrad", shape, t(lambda: (torch.nn.grad.conv2d_weight(x, w.shape, g, padding=pad),
                                                    g.sum((0, 2, 3)))))

    for c, r in levels:
        shape = f"{b}x{c}x{r}x{r}/32"
        x = torch.randn(b, c, r, r, device=dev, dtype=dt, requires_grad=True)
        up = torch.randn(b, c, r, r, device=dev, dtype=dt)
        gamma = torch.ones(c, device=dev, dtype=dt)
        beta = torch.zeros(c, device=dev, dtype=dt)
        fwd = lambda: F.silu(F.group_norm(x, 32, gamma, beta, 1e-5))
        with torch.no_grad():
            row("gn_silu_fwd", shape, t(fwd))
        row("gn_silu_fwd_bwd", shape, t(lambda: (fwd() * up).sum().backward()))

    for n, l in [(b * 6, 1024), (b * 9, 256)]:
        shape = f"{n}x{l}x{l}"
        x = torch.randn(n, l, l, device=dev, requires_grad=True)
        up = torch.randn(n, l, l, device=dev, dtype=dt)
        fwd = lambda: x.softmax(dim=2).to(dt)
        with torch.no_grad():
            row("softmax_fwd", shape, t(fwd))
        row("softmax_fwd_bwd", shape, t(lambda: (fwd() * up).sum().backward()))

    net = EDMPrecond(PRESETS[a.net]).to(dev)
    params = [q for q in net.parameters()]
    for q in params:
        q.grad = torch.randn_like(q) * 1e-3
    shape = f"{len(params)}x{sum(q.numel() for q in params)}"
    opt = torch.optim.Adam(params, lr=1e-4, foreach=True)
    row("adam", shape, t(opt.step))
    ema = [q.detach().clone() for q in params]
    with torch.no_grad():
        row("ema", shape, t(lambda: torch._foreach_lerp_(ema, params, 0.001)))
    grads = [q.grad for q in params]
    row("grad_norm", shape, t(lambda: torch.nn.utils.get_total_norm(grads).item()))


if __name__ == "__main__":
    main()
