"""Pillow baseline for `relay bench prep`: what EDM's dataset_tool does per image.

For every JPEG in a folder (sorted): PIL decode + convert('RGB'), the largest centred
square (EDM `center_crop`), one LANCZOS resize to 256x256, PNG encode with
compress_level=0 (as dataset_tool writes), written to an output folder. One process,
one thread, like dataset_tool. Prints `pillow_images_per_sec=X`.

Usage: python prep_baseline.py IMAGES_DIR OUT_DIR
"""

import io
import os
import sys
import time

import numpy as np
import PIL.Image


def center_crop(width, height, img):
    crop = np.min(img.shape[:2])
    img = img[(img.shape[0] - crop) // 2 : (img.shape[0] + crop) // 2,
              (img.shape[1] - crop) // 2 : (img.shape[1] + crop) // 2]
    img = PIL.Image.fromarray(img, "RGB")
    img = img.resize((width, height), PIL.Image.LANCZOS)
    return np.array(img)


def main():
    src, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    names = sorted(n for n in os.listdir(src) if n.lower().endswith((".jpg", ".jpeg")))
    start = time.perf_counter()
    for i, name in enumerate(names):
        with open(os.path.join(src, name), "rb") as f:
            img = np.array(PIL.Image.open(f).convert("RGB"))
        img = center_crop(256, 256, img)
        buf = io.BytesIO()
        PIL.Image.fromarray(img, "RGB").save(buf, format="png", compress_level=0, optimize=False)
        with open(os.path.join(out, f"img{i:08d}.png"), "wb") as f:
            f.write(buf.getbuffer())
    seconds = time.perf_counter() - start
    print(f"pillow_images={len(names)} pillow_seconds={seconds:.3f} "
          f"pillow_images_per_sec={len(names) / seconds:.2f}")


if __name__ == "__main__":
    main()
