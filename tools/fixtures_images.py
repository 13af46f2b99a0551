#!/usr/bin/env python3
"""Image-input fixtures for tests/test_image.c and the fuzz corpus, made with
Pillow (the decoder diffusers' and A1111's users feed images through):

    orient_<k>.jpg     a 24x16 picture of flat 8x8 blocks saved with EXIF
                       Orientation k (1..8); orient_<k>.rgba is what
                       PIL.ImageOps.exif_transpose(Image.open(...)) shows (RGBA bytes)
    rgba.png, pal_trns.png, la.png, lossless_alpha.webp, lossy.webp,
    cmyk.jpg           other layouts; <name>.rgba = Pillow's .convert("RGBA")
    gray16.png         16-bit gray (Pillow clips I;16 to 8 bits; the test expects
                       libpng's scaling, v·255/65535, instead)
    bomb.png, bomb.jpg  headers that claim 30000x30000 (no pixel data); bomb.webp
                       16384x16384 (the most a WebP header can say)
    init_64.png        the 64x64 "room" the img2img/inpainting fixtures start from
    mask_64.png        its mask (white = repaint: a window-shaped rectangle)

Run by hand with the tools venv:
    .venv-tools/bin/python tools/fixtures_images.py
"""
import io
import os
import struct
import zlib

import numpy as np
from PIL import Image, ImageOps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "images")


def blocks(w, h):
    """Flat 8x8 colour blocks, all different: orientation errors cannot hide."""
    a = np.zeros((h, w, 3), np.uint8)
    for by in range(h // 8):
        for bx in range(w // 8):
            k = by * (w // 8) + bx
            a[by * 8:(by + 1) * 8, bx * 8:(bx + 1) * 8] = [(40 * k) % 256, (90 + 70 * k) % 256,
                                                          (200 - 30 * k) % 256]
    return Image.fromarray(a)


def save_rgba(name, im):
    with open(os.path.join(OUT, name + ".rgba"), "wb") as f:
        f.write(np.asarray(im.convert("RGBA")).tobytes())


def room(w, h):
    """A synthetic room: wall gradient, floor, a window, a sofa (deterministic)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    img[..., 0] = 200 - 60 * y / h
    img[..., 1] = 180 - 40 * y / h + 20 * x / w
    img[..., 2] = 150 + 50 * x / w
    floor = y > 0.65 * h
    img[floor] = [120, 80, 50]
    img[(y > 0.15 * h) & (y < 0.45 * h) & (x > 0.55 * w) & (x < 0.85 * w)] = [170, 210, 240]
    img[(y > 0.5 * h) & (y < 0.75 * h) & (x > 0.1 * w) & (x < 0.5 * w)] = [60, 110, 70]
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def png_chunk(t, data):
    return struct.pack(">I", len(data)) + t + data + struct.pack(">I", zlib.crc32(t + data))


def main():
    os.makedirs(OUT, exist_ok=True)
    base = blocks(24, 16)
    for k in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = k
        p = os.path.join(OUT, f"orient_{k}.jpg")
        base.save(p, quality=95, exif=exif.tobytes())
        save_rgba(f"orient_{k}", ImageOps.exif_transpose(Image.open(p)))
    a = np.asarray(blocks(24, 16).convert("RGBA")).copy()
    a[..., 3] = np.linspace(0, 255, 24, dtype=np.uint8)[None, :]
    Image.fromarray(a).save(os.path.join(OUT, "rgba.png"))
    save_rgba("rgba", Image.fromarray(a))
    pal = blocks(24, 16).convert("P", palette=Image.ADAPTIVE, colors=6)
    pal.info["transparency"] = 2
    pal.save(os.path.join(OUT, "pal_trns.png"), transparency=2)
    save_rgba("pal_trns", Image.open(os.path.join(OUT, "pal_trns.png")))
    g = Image.fromarray((np.arange(24 * 16, dtype=np.uint16).reshape(16, 24) * 170).astype(np.uint16))
    g.save(os.path.join(OUT, "gray16.png"))
    la = Image.fromarray(np.stack([np.full((16, 24), 90, np.uint8),
                                   np.tile(np.arange(24, dtype=np.uint8) * 10, (16, 1))], -1), "LA")
    la.save(os.path.join(OUT, "la.png"))
    save_rgba("la", Image.open(os.path.join(OUT, "la.png")))
    Image.fromarray(a).save(os.path.join(OUT, "lossless_alpha.webp"), lossless=True)
    save_rgba("lossless_alpha", Image.open(os.path.join(OUT, "lossless_alpha.webp")))
    base.save(os.path.join(OUT, "lossy.webp"), quality=90)
    save_rgba("lossy", Image.open(os.path.join(OUT, "lossy.webp")))
    base.convert("CMYK").save(os.path.join(OUT, "cmyk.jpg"), quality=95)
    save_rgba("cmyk", Image.open(os.path.join(OUT, "cmyk.jpg")))

    # bombs: headers only
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    with open(os.path.join(OUT, "bomb.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) +
                png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b""))
    buf = io.BytesIO()
    base.save(buf, "JPEG", quality=50)
    j = bytearray(buf.getvalue())
    sof = j.find(b"\xff\xc0")
    j[sof + 5:sof + 9] = struct.pack(">HH", 30000, 30000)
    with open(os.path.join(OUT, "bomb.jpg"), "wb") as f:
        f.write(bytes(j))
    # VP8L stores 14-bit sizes: 16384x16384 (268 MP) is the largest a WebP can claim
    bits = (16384 - 1) | (16384 - 1) << 14
    vp8l = b"\x2f" + struct.pack("<I", bits) + b"\0" * 7
    body = b"WEBP" + b"VP8L" + struct.pack("<I", len(vp8l)) + vp8l
    with open(os.path.join(OUT, "bomb.webp"), "wb") as f:
        f.write(b"RIFF" + struct.pack("<I", len(body)) + body)

    room(64, 64).save(os.path.join(OUT, "init_64.png"))
    m = np.zeros((64, 64), np.uint8)
    m[8:30, 34:56] = 255  # the window
    Image.fromarray(m).save(os.path.join(OUT, "mask_64.png"))
    for n in sorted(os.listdir(OUT)):
        print(n, os.path.getsize(os.path.join(OUT, n)))


if __name__ == "__main__":
    main()
