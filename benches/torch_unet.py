#!/usr/bin/env python3
"""The PyTorch side of `scripts/bench-vs-torch.sh`: EDM's `DhariwalUNet` behind `EDMPrecond`
(NVlabs/edm `training/networks.py`, Karras et al. 2022), written out here so that it builds
the same architecture as relay's `UnetConfig` presets, and timed the way `relay bench model`
times ours:

* train step: EDM loss (P_mean -1.2, P_std 1.2, sigma_data 0.5) on random images, backward,
  one `torch.optim.Adam` step and EDM's EMA update (half-life 500 kimg, ramp-up 0.05, one
  `torch._foreach_lerp_`) (dropout and label dropout as the config says);
* sample forward: D(x; sigma) in eval mode under `torch.no_grad()`.

Each is warmed up, then timed step by step; images/s = batch / median step time. On CUDA
the peak of `torch.cuda.max_memory_allocated` / `max_memory_reserved` is printed for each
part (relay prints its memory pool's), and the train step's forward / backward / Adam + EMA
medians (with a synchronisation between them, as relay's phases).
Not a reference implementation: it exists to measure, so the initialisation is only
shape-correct (EDM's kaiming-uniform x sqrt(1/3), zeros for the zero-initialised layers).

    python3 benches/torch_unet.py --config tiny --batch 16 --steps 10 --threads 2
"""

import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F

# relay's presets (src/model/config.rs), the `DhariwalUNet(...)` arguments.
PRESETS = {
    "tiny": dict(img_resolution=32, in_channels=3, out_channels=3, label_dim=0, augment_dim=0,
                 model_channels=32, channel_mult=[1, 2, 2], channel_mult_emb=4, num_blocks=1,
                 attn_resolutions=[8], dropout=0.0, label_dropout=0.0),
    "adm-64": dict(img_resolution=64, in_channels=3, out_channels=3, label_dim=1000, augment_dim=0,
                   model_channels=192, channel_mult=[1, 2, 3, 4], channel_mult_emb=4, num_blocks=3,
                   attn_resolutions=[32, 16, 8], dropout=0.10, label_dropout=0.0),
    "adm-256": dict(img_resolution=256, in_channels=3, out_channels=3, label_dim=1000, augment_dim=0,
                    model_channels=256, channel_mult=[1, 1, 2, 2, 4, 4], channel_mult_emb=4,
                    num_blocks=2, attn_resolutions=[32, 16, 8], dropout=0.10, label_dropout=0.0),
}


def with_resolution(cfg, res):
    """relay's `UnetConfig::with_resolution`: attention stays at the same levels."""
    cfg = dict(cfg)
    old = cfg["img_resolution"]
    cfg["attn_resolutions"] = [r * res // old for r in cfg["attn_resolutions"]]
    cfg["img_resolution"] = res
    return cfg


def uniform_(t, fan_in, zero):
    with torch.no_grad():
        if zero:
            t.zero_()
        else:
            t.uniform_(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
    return t


class Linear(torch.nn.Module):
    def __init__(self, cin, cout, bias=True, zero=False):
        super().__init__()
        self.weight = torch.nn.Parameter(uniform_(torch.empty(cout, cin), cin, zero))
        self.bias = torch.nn.Parameter(uniform_(torch.empty(cout), cin, zero)) if bias else None

    def forward(self, x):
        x = x @ self.weight.t()
        return x + self.bias if self.bias is not None else x


class Conv2d(torch.nn.Module):
    """EDM's Conv2d with the [1,1] box resample filter (fused_resample=False)."""

    def __init__(self, cin, cout, kernel, up=False, down=False, zero=False):
        super().__init__()
        self.cin, self.up, self.down = cin, up, down
        fan_in = cin * kernel * kernel
        self.weight = (torch.nn.Parameter(uniform_(torch.empty(cout, cin, kernel, kernel), fan_in, zero))
                       if kernel else None)
        self.bias = torch.nn.Parameter(uniform_(torch.empty(cout), fan_in, zero)) if kernel else None
        f = torch.ones(2)
        f = f.ger(f).unsqueeze(0).unsqueeze(1) / f.sum().square()
        self.register_buffer("resample_filter", f if up or down else None)

    def forward(self, x):
        w, f = self.weight, self.resample_filter
        if self.up:
            x = F.conv_transpose2d(x, f.mul(4).tile([self.cin, 1, 1, 1]), groups=self.cin, stride=2)
        if self.down:
            x = F.conv2d(x, f.tile([self.cin, 1, 1, 1]), groups=self.cin, stride=2)
        if w is not None:
            x = F.conv2d(x, w, padding=w.shape[-1] // 2)
        if self.bias is not None:
            x = x.add_(self.bias.reshape(1, -1, 1, 1))
        return x


class GroupNorm(torch.nn.Module):
    def __init__(self, c, eps=1e-5):
        super().__init__()
        self.groups, self.eps = min(32, c // 4), eps
        self.weight = torch.nn.Parameter(torch.ones(c))
        self.bias = torch.nn.Parameter(torch.zeros(c))

    def forward(self, x):
        return F.group_norm(x, self.groups, self.weight, self.bias, self.eps)


class AttentionOp(torch.autograd.Function):
    """EDM's attention weights: softmax(q^T k / sqrt(d)) in float32, with its own backward."""

    @staticmethod
    def forward(ctx, q, k):
        with torch.autocast(device_type=q.device.type, enabled=False):
            q32, k32 = q.float(), k.float()
            w = torch.einsum("ncq,nck->nqk", q32, k32 / math.sqrt(k.shape[1])).softmax(dim=2)
        ctx.save_for_backward(q, k, w)
        return w.to(q.dtype)

    @staticmethod
    def backward(ctx, dw):
        q, k, w = ctx.saved_tensors
        with torch.autocast(device_type=q.device.type, enabled=False):
            db = torch._softmax_backward_data(grad_output=dw.float(), output=w, dim=2,
                                              input_dtype=torch.float32)
            dq = torch.einsum("nck,nqk->ncq", k.float(), db) / math.sqrt(k.shape[1])
            dk = torch.einsum("ncq,nqk->nck", q.float(), db) / math.sqrt(k.shape[1])
        return dq.to(q.dtype), dk.to(k.dtype)


class UNetBlock(torch.nn.Module):
    """EDM's UNetBlock as DhariwalUNet configures it (adaptive_scale, skip_scale 1)."""

    def __init__(self, cin, cout, emb, up=False, down=False, attention=False, dropout=0.0):
        super().__init__()
        self.in_channels, self.out_channels, self.dropout = cin, cout, dropout
        self.num_heads = cout // 64 if attention else 0
        self.norm0 = GroupNorm(cin)
        self.conv0 = Conv2d(cin, cout, 3, up=up, down=down)
        self.affine = Linear(emb, 2 * cout)
        self.norm1 = GroupNorm(cout)
        self.conv1 = Conv2d(cout, cout, 3, zero=True)
        self.skip = None
        if cout != cin or up or down:
            self.skip = Conv2d(cin, cout, 1 if cout != cin else 0, up=up, down=down)
        if self.num_heads:
            self.norm2 = GroupNorm(cout)
            self.qkv = Conv2d(cout, 3 * cout, 1)
            self.proj = Conv2d(cout, cout, 1, zero=True)

    def forward(self, x, emb):
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))
        scale, shift = self.affine(emb).unsqueeze(2).unsqueeze(3).chunk(2, dim=1)
        x = F.silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = x.add_(self.skip(orig) if self.skip is not None else orig)
        if self.num_heads:
            q, k, v = self.qkv(self.norm2(x)).reshape(
                x.shape[0] * self.num_heads, x.shape[1] // self.num_heads, 3, -1).unbind(2)
            w = AttentionOp.apply(q, k)
            a = torch.einsum("nqk,nck->ncq", w, v)
            x = self.proj(a.reshape(*x.shape)).add_(x)
        return x


class DhariwalUNet(torch.nn.Module):
    def __init__(self, img_resolution, in_channels, out_channels, label_dim, augment_dim,
                 model_channels, channel_mult, channel_mult_emb, num_blocks, attn_resolutions,
                 dropout, label_dropout):
        super().__init__()
        assert augment_dim == 0, "augment_dim > 0 is not benchmarked"
        self.label_dropout, self.model_channels = label_dropout, model_channels
        emb = model_channels * channel_mult_emb
        self.map_layer0 = Linear(model_channels, emb)
        self.map_layer1 = Linear(emb, emb)
        self.map_label = None
        if label_dim:
            self.map_label = Linear(label_dim, emb, bias=False)
            torch.nn.init.normal_(self.map_label.weight)
        kw = dict(emb=emb, dropout=dropout)
        self.enc = torch.nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, 3)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **kw)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(
                    cin, cout, attention=res in attn_resolutions, **kw)
        skips = [b.weight.shape[0] if isinstance(b, Conv2d) else b.out_channels for b in self.enc.values()]
        self.dec = torch.nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **kw)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **kw)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **kw)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(
                    cin, cout, attention=res in attn_resolutions, **kw)
        self.out_norm = GroupNorm(cout)
        self.out_conv = Conv2d(cout, out_channels, 3, zero=True)

    def forward(self, x, noise_labels, class_labels):
        # Mapping: positional embedding (cos first, endpoint=False) -> MLP -> + label -> SiLU.
        half = self.model_channels // 2
        freqs = (1 / 10000) ** (torch.arange(half, dtype=torch.float32, device=noise_labels.device) / half)
        e = noise_labels.ger(freqs)
        emb = torch.cat([e.cos(), e.sin()], dim=1)
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.map_label is not None:
            tmp = class_labels
            if self.training and self.label_dropout:
                tmp = tmp * (torch.rand([x.shape[0], 1], device=x.device) >= self.label_dropout).to(tmp.dtype)
            emb = emb + self.map_label(tmp)
        emb = F.silu(emb)
        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        for block in self.dec.values():
            if x.shape[1] != block.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))


class EDMPrecond(torch.nn.Module):
    def __init__(self, cfg, sigma_data=0.5):
        super().__init__()
        self.sigma_data = sigma_data
        self.model = DhariwalUNet(**cfg)

    def forward(self, x, sigma, class_labels=None):
        sd = self.sigma_data
        sigma = sigma.reshape(-1, 1, 1, 1)
        c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
        c_out = sigma * sd / (sigma ** 2 + sd ** 2).sqrt()
        c_in = 1 / (sd ** 2 + sigma ** 2).sqrt()
        c_noise = sigma.log() / 4
        f = self.model(c_in * x, c_noise.flatten(), class_labels)
        return c_skip * x + c_out * f


def timed(fn, warmup, steps, sync):
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="tiny", help="a relay preset or a config.json")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--resolution", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--bf16", action="store_true",
                   help="autocast the network to bfloat16 (CUDA), float32 master weights")
    a = p.parse_args()
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    autocast = torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=a.bf16)

    if a.config in PRESETS:
        cfg = dict(PRESETS[a.config])
    else:
        with open(a.config) as f:
            cfg = json.load(f)
    if a.resolution:
        cfg = with_resolution(cfg, a.resolution)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    net = EDMPrecond(cfg).to(dev)
    params = sum(p.numel() for p in net.parameters())
    res, b = cfg["img_resolution"], a.batch
    y = torch.randn(b, cfg["in_channels"], res, res, device=dev) * 0.5
    labels = None
    if cfg["label_dim"]:
        labels = F.one_hot(torch.randint(cfg["label_dim"], (b,)), cfg["label_dim"]).float().to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8)
    plist = list(net.parameters())
    ema = [q.detach().clone() for q in plist]
    phases = []

    def train_step():
        net.train()
        t0 = time.perf_counter()
        sigma = (torch.randn(b, 1, 1, 1, device=dev) * 1.2 - 1.2).exp()
        weight = (sigma ** 2 + 0.25) / (sigma * 0.5) ** 2
        with autocast:
            d = net(y + torch.randn_like(y) * sigma, sigma, labels)
        loss = (weight * (d.float() - y) ** 2).sum()
        sync()
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sync()
        t2 = time.perf_counter()
        opt.step()
        # EDM's EMA: beta = 0.5 ** (batch / half-life), half-life min(500 kimg, 0.05 * nimg).
        halflife = min(500_000, len(phases) * b * 0.05)
        beta = 0.5 ** (b / max(halflife, 1e-8))
        with torch.no_grad():
            torch._foreach_lerp_(ema, plist, 1 - beta)
        sync()
        phases.append((t1 - t0, t2 - t1, time.perf_counter() - t2))

    x = torch.randn(b, cfg["in_channels"], res, res, device=dev) * 80
    sigma80 = torch.full((b,), 80.0, device=dev)

    @torch.no_grad()
    def sample_step():
        net.eval()
        with autocast:
            net(x, sigma80, labels)

    cuda = dev.type == "cuda"
    peak = lambda: ((torch.cuda.max_memory_allocated(dev) / 1e9, torch.cuda.max_memory_reserved(dev) / 1e9)
                    if cuda else None)
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    train_s = timed(train_step, a.warmup, a.steps, sync)
    train_peak = peak()
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    sample_s = timed(sample_step, a.warmup, a.steps, sync)
    sample_peak = peak()
    f, bw, ad = (statistics.median(p[i] for p in phases[a.warmup:]) for i in range(3))
    where = (f"{torch.cuda.get_device_name(dev)} (TF32: cuDNN conv "
             f"{torch.backends.cudnn.allow_tf32}, matmul {torch.backends.cuda.matmul.allow_tf32})"
             if dev.type == "cuda" else f"{torch.get_num_threads()} threads")
    print(f"pytorch {torch.__version__}, {where}{' bf16 autocast' if a.bf16 else ''}, {a.config} at {res}px, "
          f"batch {b}, {params:,} parameters")
    print(f"| train s/step | sample s/step | train img/s | sample img/s |")
    print(f"| {train_s:.3f} | {sample_s:.3f} | {b / train_s:.2f} | {b / sample_s:.2f} |")
    print(f"torch_parameters={params}")
    print(f"torch_train_images_per_sec={b / train_s:.4f}")
    print(f"torch_sample_images_per_sec={b / sample_s:.4f}")
    print(f"train step: forward {f:.3f} s, backward {bw:.3f} s, Adam + EMA {ad:.3f} s")
    print(f"torch_train_phases_s={f:.4f},{bw:.4f},{ad:.4f}")
    for part, pk in (("train", train_peak), ("sample", sample_peak)):
        if pk:
            print(f"torch_{part}_peak_gb={pk[0]:.3f}")
            print(f"torch_{part}_reserved_gb={pk[1]:.3f}")


if __name__ == "__main__":
    main()
