#!/usr/bin/env python3
"""PSNR of two 8-bit images of the same size (PNG; numpy + Pillow), and the
share of pixels within 1/255. Exit 1 below --min dB (default 30: issue 7's
bar for a same-seed image on CPU and GPU).
    usage: psnr.py REF.png TEST.png [--min DB]"""
import argparse
import math
import sys

import numpy as np
from PIL import Image


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ref")
    ap.add_argument("test")
    ap.add_argument("--min", type=float, default=30.0)
    a = ap.parse_args()
    r = np.asarray(Image.open(a.ref).convert("RGB"), dtype=np.float64)
    t = np.asarray(Image.open(a.test).convert("RGB"), dtype=np.float64)
    if r.shape != t.shape:
        print(f"FAIL: sizes differ: {r.shape} vs {t.shape}")
        return 1
    mse = float(np.mean((r - t) ** 2))
    psnr = 99.0 if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)
    within = float(np.mean(np.all(np.abs(r - t) <= 1, axis=-1))) * 100
    ok = psnr >= a.min
    print(f"{'pass' if ok else 'FAIL'}: PSNR {psnr:.2f} dB (limit {a.min:g}), "
          f"{within:.2f}% of pixels within 1/255, max difference {int(np.max(np.abs(r - t)))}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
