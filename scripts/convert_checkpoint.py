#!/usr/bin/env python3
"""Convert an official EDM / RDM (RelayDiffusion) checkpoint to a relay model folder.

Usage:
    python scripts/convert_checkpoint.py CHECKPOINT OUT_DIR [--key ema] [--code DIR]

CHECKPOINT is one of
  * a `.pkl` network snapshot written by EDM / RDM training (`network-snapshot-*.pkl`):
    a pickle of a dict whose `ema` entry is the `EDMPrecond` module;
  * a `.pt` file written with `torch.save`, a dict whose `ema` entry (`data['ema']`) is the
    `EDMPrecond` module, or that module's `state_dict()`.
`--key` picks another entry of the dict (e.g. `net` for EDM's `training-state-*.pt`).

Unpickling a module needs the reference code importable (`torch_utils`, `dnnlib`,
`training`): run from a checkout of NVlabs/edm or THUDM/RelayDiffusion, or pass
`--code DIR` with such a checkout. A bare state_dict needs no reference code.

Writes
  * OUT_DIR/model.safetensors: `{k: v.float()}` of the EMA `state_dict()`, under the PyTorch
    names (`model.enc.64x64_conv.weight`, ..., including the `*.resample_filter` buffers);
  * OUT_DIR/config.json: relay's `UnetConfig` (src/model/config.rs). The values come from the
    module's recorded constructor arguments (`init_kwargs`, EDM's persistence), with the
    `DhariwalUNet` defaults filled in, and are cross-checked against the tensor shapes. For a
    bare state_dict they are derived from the shapes alone (dropout then takes its default,
    0.1; it only matters for training).

Needs: torch and safetensors (`pip install torch safetensors`). Only `DhariwalUNet` networks
behind `EDMPrecond` are supported (EDM's `--arch=adm`, every RDM network).
"""

import argparse
import inspect
import json
import os
import pickle
import re
import sys

# DhariwalUNet's constructor defaults (edm/RelayDiffusion training/networks.py).
DHARIWAL_DEFAULTS = dict(
    label_dim=0,
    augment_dim=0,
    model_channels=192,
    channel_mult=[1, 2, 3, 4],
    channel_mult_emb=4,
    num_blocks=3,
    attn_resolutions=[32, 16, 8],
    dropout=0.10,
    label_dropout=0,
)
CONFIG_KEYS = [
    "img_resolution", "in_channels", "out_channels", "label_dim", "augment_dim",
    "model_channels", "channel_mult", "channel_mult_emb", "num_blocks",
    "attn_resolutions", "dropout", "label_dropout",
]


def load_checkpoint(path, key):
    """The object stored under `key` in a .pkl or .pt checkpoint."""
    import torch

    try:
        if path.endswith(".pkl"):
            with open(path, "rb") as f:
                data = pickle.load(f)
        else:
            data = torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as e:
        sys.exit(f"error: unpickling {path} needs the reference code ({e}); "
                 f"pass --code with a checkout of NVlabs/edm or THUDM/RelayDiffusion")
    if isinstance(data, dict) and key in data:
        return data[key]
    if isinstance(data, torch.nn.Module) or _is_state_dict(data):
        return data
    found = list(data.keys()) if isinstance(data, dict) else type(data).__name__
    sys.exit(f"error: {path} has no `{key}` entry (found {found})")


def _is_state_dict(obj):
    import torch

    return isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values())


def config_from_shapes(shapes):
    """Derive the UnetConfig from a state_dict's {name: shape}, the way DhariwalUNet's
    constructor lays the modules out."""
    def get(name):
        if name not in shapes:
            sys.exit(f"error: the state_dict has no `{name}`; is this a DhariwalUNet behind EDMPrecond?")
        return shapes[name]

    emb, mc = get("model.map_layer0.weight")
    convs = [k for k in shapes if re.fullmatch(r"model\.enc\.(\d+)x\1_conv\.weight", k)]
    if len(convs) != 1:
        sys.exit(f"error: expected one encoder input conv, found {convs}")
    res = int(re.match(r"model\.enc\.(\d+)x", convs[0]).group(1))
    c0, in_channels = shapes[convs[0]][:2]
    out_channels = get("model.out_conv.weight")[0]

    # Levels: resolutions with any enc module; channels from each level's last module.
    enc = {}
    for k in shapes:
        m = re.fullmatch(r"model\.enc\.(\d+)x\1_(block\d+|down|conv)\.(.*)", k)
        if m:
            enc.setdefault(int(m.group(1)), set()).add(m.group(2))
    levels = sorted(enc, reverse=True)
    if levels != [res >> i for i in range(len(levels))]:
        sys.exit(f"error: encoder resolutions {levels} do not halve from {res}")
    num_blocks = sum(1 for n in enc[res] if n.startswith("block"))
    channel_mult, attn = [], set()
    for r in levels:
        # Every decoder `_block{i}` outputs the level's width (model_channels * mult), also
        # with num_blocks = 0, where the encoder never shows it.
        c = get(f"model.dec.{r}x{r}_block0.conv0.weight")[0]
        if c % mc:
            sys.exit(f"error: {c} channels at {r}x{r} is not a multiple of model_channels {mc}")
        channel_mult.append(c // mc)
        if any(f"model.{p}.{r}x{r}_block{i}.qkv.weight" in shapes
               for p in ("enc", "dec") for i in range(num_blocks + 1)):
            attn.add(r)
    if c0 != mc * channel_mult[0]:
        sys.exit(f"error: input conv has {c0} channels, level 0 has {mc * channel_mult[0]}")
    return dict(
        img_resolution=res,
        in_channels=in_channels,
        out_channels=out_channels,
        label_dim=shapes["model.map_label.weight"][1] if "model.map_label.weight" in shapes else 0,
        augment_dim=shapes["model.map_augment.weight"][1] if "model.map_augment.weight" in shapes else 0,
        model_channels=mc,
        channel_mult=channel_mult,
        channel_mult_emb=emb // mc,
        num_blocks=num_blocks,
        attn_resolutions=sorted(attn, reverse=True),
        dropout=DHARIWAL_DEFAULTS["dropout"],
        label_dropout=float(DHARIWAL_DEFAULTS["label_dropout"]),
    )


def config_from_module(net):
    """UnetConfig from the recorded constructor arguments of EDMPrecond / DhariwalUNet."""
    unet = net.model
    if type(unet).__name__ != "DhariwalUNet":
        sys.exit(f"error: the network is a {type(unet).__name__}; only DhariwalUNet is supported")
    try:
        kwargs = dict(unet.init_kwargs)
    except (AttributeError, AssertionError):
        return None
    defaults = dict(DHARIWAL_DEFAULTS)
    try:
        sig = inspect.signature(type(unet).__init__)
        defaults.update({k: p.default for k, p in sig.parameters.items()
                         if p.default is not inspect.Parameter.empty})
    except (TypeError, ValueError):
        pass
    cfg = {k: kwargs.get(k, defaults.get(k)) for k in CONFIG_KEYS}
    missing = [k for k, v in cfg.items() if v is None]
    if missing:
        sys.exit(f"error: cannot determine {missing} from the module's init_kwargs")
    cfg["channel_mult"] = [int(m) for m in cfg["channel_mult"]]
    cfg["attn_resolutions"] = [int(r) for r in cfg["attn_resolutions"]]
    cfg["dropout"] = float(cfg["dropout"])
    cfg["label_dropout"] = float(cfg["label_dropout"])
    return cfg


def check_against_shapes(cfg, derived):
    """The constructor arguments must agree with the tensors (attention resolutions only
    where a block really has attention, i.e. >= 64 channels)."""
    for k in ["img_resolution", "in_channels", "out_channels", "label_dim", "augment_dim",
              "model_channels", "channel_mult_emb", "num_blocks"]:
        if cfg[k] != derived[k]:
            sys.exit(f"error: init_kwargs say {k} = {cfg[k]}, the weights say {derived[k]}")
    if cfg["channel_mult"] != derived["channel_mult"]:
        sys.exit(f"error: init_kwargs say channel_mult = {cfg['channel_mult']}, "
                 f"the weights say {derived['channel_mult']}")
    if not set(derived["attn_resolutions"]) <= set(cfg["attn_resolutions"]):
        sys.exit(f"error: attention at {derived['attn_resolutions']} in the weights, "
                 f"init_kwargs say {cfg['attn_resolutions']}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help=".pkl or .pt file")
    ap.add_argument("out_dir", help="folder to write model.safetensors and config.json into")
    ap.add_argument("--key", default="ema", help="dict entry holding the network (default: ema)")
    ap.add_argument("--code", help="checkout of NVlabs/edm or THUDM/RelayDiffusion, for unpickling")
    args = ap.parse_args()
    if args.code:
        sys.path.insert(0, os.path.abspath(args.code))

    import torch
    from safetensors.torch import save_file

    obj = load_checkpoint(args.checkpoint, args.key)
    if isinstance(obj, torch.nn.Module):
        if type(obj).__name__ != "EDMPrecond":
            sys.exit(f"error: `{args.key}` is a {type(obj).__name__}, expected EDMPrecond")
        state = obj.state_dict()
        sigma_data = float(getattr(obj, "sigma_data", 0.5))
        if sigma_data != 0.5:
            print(f"warning: sigma_data = {sigma_data}; relay's EdmPrecond defaults to 0.5 "
                  f"(use EdmPrecond::with_sigma_data)", file=sys.stderr)
        cfg = config_from_module(obj)
    else:
        state, cfg = obj, None

    tensors = {k: v.detach().float().contiguous().cpu() for k, v in state.items()}
    derived = config_from_shapes({k: list(v.shape) for k, v in tensors.items()})
    if cfg is None:
        print("note: no constructor arguments recorded; config derived from tensor shapes",
              file=sys.stderr)
        cfg = derived
    else:
        check_against_shapes(cfg, derived)

    os.makedirs(args.out_dir, exist_ok=True)
    save_file(tensors, os.path.join(args.out_dir, "model.safetensors"))
    with open(os.path.join(args.out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    n_params = sum(v.numel() for k, v in tensors.items() if not k.endswith("resample_filter"))
    print(f"wrote {args.out_dir}: {len(tensors)} tensors, {n_params:,} parameters, "
          f"{cfg['img_resolution']}px, channel_mult {cfg['channel_mult']}")


if __name__ == "__main__":
    main()
