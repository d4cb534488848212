#!/usr/bin/env python3
"""Reference vectors for relay's `postprocess:` (src/sample/postprocess.rs): Pillow's own
ImageEnhance output on small random RGB images, for the enhancement chains of the paper's
sampling scripts (RelayDiffusion generate_celebahq.py / generate_imagenet.py) and a few
single steps whose factors extrapolate (clipping) or interpolate.

    python scripts/pil_enhance_vectors.py > tests/data/pil_enhance.json

Needs Pillow and NumPy. The images are seeded, so a rerun with the same Pillow gives the
same file.
"""

import json
import sys

import numpy as np
import PIL
from PIL import Image, ImageEnhance

STEP = {
    "brightness": ImageEnhance.Brightness,
    "contrast": ImageEnhance.Contrast,
    "color": ImageEnhance.Color,
}

CHAINS = [
    [["contrast", 0.9], ["brightness", 1.05], ["color", 0.99]],  # generate_celebahq.py
    [["brightness", 1.06]],  # generate_imagenet.py
    [["brightness", 0.7]],
    [["contrast", 1.3]],
    [["contrast", 0.0]],
    [["color", 1.5]],
    [["color", 0.25]],
]


def images():
    rng = np.random.default_rng(19)
    out = [rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8) for _ in range(3)]
    # A bright one (brightness clipping) and a dark, low-contrast one.
    out.append(rng.integers(200, 256, size=(8, 8, 3), dtype=np.uint8))
    out.append(rng.integers(0, 40, size=(8, 8, 3), dtype=np.uint8))
    return out


def main():
    cases = []
    inputs = images()
    for chain in CHAINS:
        for k, arr in enumerate(inputs):
            img = Image.fromarray(arr, "RGB")
            for name, factor in chain:
                img = STEP[name](img).enhance(factor)
            cases.append({
                "chain": chain,
                "image": k,
                "output": np.asarray(img).reshape(-1).tolist(),
            })
    json.dump({
        "generated_with": f"Pillow {PIL.__version__}, numpy {np.__version__}",
        "layout": "8x8 RGB, row-major HWC uint8, flattened",
        "inputs": [arr.reshape(-1).tolist() for arr in inputs],
        "cases": cases,
    }, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
