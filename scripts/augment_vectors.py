#!/usr/bin/env python3
"""More `augment_pipe` vectors, for the transforms RDM's settings leave off (colour, quarter
turns, integer translation, one-channel images) and another size, in the golden folder
layout (index.json + JSON + safetensors): EDM's own `AugmentPipe` (training/augment.py)
run on seeded inputs with every torch.rand/randn/randint call recorded in call order.

    python scripts/augment_vectors.py PATH/TO/edm tests/data/augment_extra

Needs torch, numpy, safetensors and a checkout of NVlabs/edm. Checked by
`RELAY_GOLDEN_DIR=tests/data/augment_extra cargo test --test golden`.
"""
import os, sys, json, types
CODE, OUT = sys.argv[1], sys.argv[2]
sys.path.insert(0, os.path.abspath(CODE))
sys.modules.setdefault('requests', types.ModuleType('requests'))
import torch, numpy as np
from safetensors.torch import save_file
from training.augment import AugmentPipe

def run(case_id, n, c, size, params, seed):
    torch.manual_seed(seed)
    x = torch.randn([n, c, size, size])
    draws = []
    orig = {k: getattr(torch, k) for k in ['rand', 'randn', 'randint']}
    def wrap(name):
        def f(*a, **kw):
            t = orig[name](*a, **kw)
            draws.append((name, a[0] if name == 'randint' else None, t.clone()))
            return t
        return f
    for k in orig: setattr(torch, k, wrap(k))
    try:
        y, labels = AugmentPipe(**params)(x)
    finally:
        for k, v in orig.items(): setattr(torch, k, v)
    tensors = {f'{case_id}.x': x, f'{case_id}.y': y.contiguous(), f'{case_id}.labels': labels.contiguous()}
    dl = []
    for i, (name, high, t) in enumerate(draws):
        key = f'{case_id}.draw{i:02d}'
        tensors[key] = t.contiguous()
        dl.append({'fn': name, 'high': high, 'tensor': key, 'shape': list(t.shape), 'dtype': 'I64' if t.dtype == torch.int64 else 'F32'})
    case = {'kind': 'augment_pipe', 'id': case_id, 'params': params,
            'inputs': {'x': {'tensor': f'{case_id}.x', 'shape': list(x.shape), 'dtype': 'F32'}},
            'draws': dl,
            'outputs': {'images': {'tensor': f'{case_id}.y'}, 'labels': {'tensor': f'{case_id}.labels'}},
            'tolerance': {'images_f32_rel': 2e-5, 'labels_f32_rel': 1e-6}}
    return case, tensors

rdm = dict(xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)
allc = dict(xflip=1, yflip=1, rotate_int=1, translate_int=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1,
            brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)
os.makedirs(OUT, exist_ok=True)
cases, tensors = [], {}
for cid, n, c, s, par, seed in [
    ('rdm24_p02', 5, 3, 24, dict(p=0.2, **rdm), 3),
    ('all16_p1', 6, 3, 16, dict(p=1.0, **allc), 4),
    ('all16_p05', 6, 3, 16, dict(p=0.5, **allc), 5),
    ('colour1ch', 4, 1, 16, dict(p=1.0, brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1), 6),
]:
    cs, ts = run(cid, n, c, s, par, seed)
    cases.append(cs); tensors.update(ts)
save_file(tensors, os.path.join(OUT, 'extra.safetensors'))
json.dump({'cases': cases}, open(os.path.join(OUT, 'extra.json'), 'w'))
json.dump({'files': [{'file': 'extra.safetensors', 'json': 'extra.json'}]}, open(os.path.join(OUT, 'index.json'), 'w'))
os.makedirs(OUT, exist_ok=True) if False else None
print('wrote', len(cases), 'cases to', OUT)
