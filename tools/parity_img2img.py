#!/usr/bin/env python3
"""Full-size img2img and inpainting parity (issue 19): easel vs diffusers on
the CPU (fp32), on the random-weight folders `easel make-model --arch sd15`
and `--arch sd15-inpaint` write, with the same init image, mask, prompt,
seed, size, steps, guidance and strength; each side uses the model's own
scheduler (PNDM). Three cases:

  img2img        sd15, StableDiffusionImg2ImgPipeline, strength 0.6
  inpaint4       sd15 (a 4-channel UNet: latent blending), StableDiffusionInpaintPipeline
  inpaint9       sd15-inpaint (the 9-channel UNet), StableDiffusionInpaintPipeline

  .venv-tools/bin/python tools/parity_img2img.py --easel build/easel \\
      [--case img2img|inpaint4|inpaint9|all] [--size 128] [--steps 10] [--seed 7] [--keep]

The image and mask are made at the job's size (no resizing on either side);
the mask is a soft-edged blob, so diffusers' binarisation at 0.5 and ours
meet real grey values. Prints the per-pixel agreement of the two PNGs
(within 1/255, 2/255, max difference, PSNR). Run by hand; the results go
into bench/results/."""
import argparse
import math
import os
import shutil
import subprocess
import tempfile

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

PROMPT = "a bright scandinavian living room with large windows, photorealistic"
NEGATIVE = "blurry, low quality"


def make_inputs(size, d):
    x, y = np.meshgrid(np.arange(size), np.arange(size))
    rgb = np.stack([40 + 180 * x / size, 60 + 120 * y / size,
                    np.where(((x // 16) + (y // 16)) % 2, 200, 90)], -1).astype(np.uint8)
    img = Image.fromarray(rgb)
    ImageDraw.Draw(img).ellipse([size // 5, size // 4, size // 2, size * 3 // 4],
                                fill=(230, 220, 200))
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).rectangle([size // 3, size // 4, size * 5 // 6, size * 2 // 3],
                                   fill=255)
    mask = mask.filter(ImageFilter.GaussianBlur(size / 32))
    ip, mp = os.path.join(d, "init.png"), os.path.join(d, "mask.png")
    img.save(ip)
    mask.save(mp)
    return img, mask, ip, mp


def agreement(ours, ref):
    d = np.abs(ours - ref)
    mse = float(np.mean((ours - ref) ** 2))
    psnr = float("inf") if mse == 0 else 10 * math.log10(255 ** 2 / mse)
    return (f"within 1/255 {np.mean(d <= 1) * 100:.3f}%, within 2/255 "
            f"{np.mean(d <= 2) * 100:.3f}%, max diff {int(d.max())}, PSNR {psnr:.1f} dB")


def run_case(a, case, tmp, img, mask, ip, mp):
    arch = "sd15-inpaint" if case == "inpaint9" else "sd15"
    model = os.path.join(tmp, arch)
    if not os.path.exists(model):
        subprocess.run([a.easel, "make-model", "--arch", arch, "--dtype", "f16", "--seed", "3",
                        "--out", model], check=True, capture_output=True)
    strength = 0.6 if case == "img2img" else 1.0
    out = os.path.join(tmp, f"easel-{case}.png")
    cmd = [a.easel, "generate", "--model", model, "--prompt", PROMPT, "--negative-prompt",
           NEGATIVE, "--steps", str(a.steps), "--guidance-scale", "7.5", "--seed", str(a.seed),
           "--width", str(a.size), "--height", str(a.size), "--threads", str(a.threads),
           "--device", "cpu", "--precision", "fp32", "--init-image", ip, "--strength",
           str(strength), "--out", out, "--quiet"]
    if case != "img2img":
        cmd += ["--mask", mp]
    subprocess.run(cmd, check=True)
    ours = np.asarray(Image.open(out).convert("RGB")).astype(np.int32)

    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline
    cls = StableDiffusionImg2ImgPipeline if case == "img2img" else StableDiffusionInpaintPipeline
    pipe = cls.from_pretrained(model, torch_dtype=torch.float32, safety_checker=None,
                               requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator("cpu").manual_seed(a.seed)
    kw = dict(prompt=PROMPT, negative_prompt=NEGATIVE, image=img, num_inference_steps=a.steps,
              guidance_scale=7.5, strength=strength, generator=g)
    if case != "img2img":
        kw.update(mask_image=mask, width=a.size, height=a.size)
    with torch.no_grad():
        ref_img = pipe(**kw).images[0]
    ref = np.asarray(ref_img.convert("RGB")).astype(np.int32)
    print(f"{case:9s} {arch} {a.size}x{a.size} {a.steps} steps strength {strength} "
          f"{type(pipe).__name__} + {type(pipe.scheduler).__name__} seed {a.seed}: "
          f"{agreement(ours, ref)}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--easel", required=True)
    ap.add_argument("--case", default="all", choices=["all", "img2img", "inpaint4", "inpaint9"])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    tmp = tempfile.mkdtemp()
    try:
        img, mask, ip, mp = make_inputs(a.size, tmp)
        cases = ["img2img", "inpaint4", "inpaint9"] if a.case == "all" else [a.case]
        for c in cases:
            run_case(a, c, tmp, img, mask, ip, mp)
    finally:
        if a.keep:
            print("kept", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
