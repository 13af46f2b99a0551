#!/usr/bin/env python3
"""Full-size SD1.5 architecture parity: easel vs diffusers on the CPU, same
random-weight checkpoint (easel make-model), prompt, seed, sampler and size.

  .venv-tools/bin/python tools/parity_sd15.py --easel build/easel --model /tmp/sd15-f32 \
      [--size 128] [--steps 4] [--sampler euler_a] [--seed 7]

Prints the per-pixel agreement of the two PNGs (fraction within 1/255 and
2/255, max difference, PSNR). Run by hand (needs torch + diffusers); the
result goes into bench/results/."""
import argparse
import math
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench", "peers"))
from diffusers_cpu import make_scheduler  # noqa: E402
from diffusers import StableDiffusionPipeline  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--easel", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--sampler", default="euler_a")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    prompt = "a bright scandinavian living room with large windows, photorealistic"
    negative = "blurry, low quality"

    out = os.path.join(tempfile.mkdtemp(), "easel.png")
    subprocess.run([a.easel, "generate", "--model", a.model, "--prompt", prompt,
                    "--negative", negative, "--steps", str(a.steps), "--cfg", "7.5",
                    "--sampler", a.sampler, "--seed", str(a.seed), "--width", str(a.size),
                    "--height", str(a.size), "--threads", str(a.threads), "--device", "cpu",
                    "--out", out], check=True)
    ours = np.asarray(Image.open(out).convert("RGB")).astype(np.int32)

    torch.set_num_threads(a.threads)
    pipe = StableDiffusionPipeline.from_pretrained(a.model, torch_dtype=torch.float32,
                                                   safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.scheduler = make_scheduler(a.sampler, pipe.scheduler.config)
    g = torch.Generator("cpu").manual_seed(a.seed)
    img = pipe(prompt, negative_prompt=negative, num_inference_steps=a.steps,
               guidance_scale=7.5, width=a.size, height=a.size, generator=g).images[0]
    ref = np.asarray(img.convert("RGB")).astype(np.int32)

    d = np.abs(ours - ref)
    mse = float(np.mean((ours - ref) ** 2))
    psnr = float("inf") if mse == 0 else 10 * math.log10(255 ** 2 / mse)
    print(f"SD1.5 arch {a.size}x{a.size} {a.sampler} {a.steps} steps seed {a.seed}: "
          f"within 1/255 {np.mean(d <= 1) * 100:.3f}%, within 2/255 {np.mean(d <= 2) * 100:.3f}%, "
          f"max diff {int(d.max())}, PSNR {psnr:.1f} dB")


if __name__ == "__main__":
    main()
