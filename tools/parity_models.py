#!/usr/bin/env python3
"""Full-size architecture parity beyond SD1.5 (tools/parity_sd15.py): SD2,
SD2-768-v, SD-Turbo, LCM, SDXL and SDXL-Turbo, easel vs diffusers on the CPU
(fp32), on the same random-weight folder `easel make-model --arch ARCH` writes,
which diffusers loads with DiffusionPipeline.from_pretrained unchanged (the
pipeline class, the scheduler class and every component come from the
folder's model_index.json and configs). Same prompt, negative prompt, seed,
size, steps and guidance; each side uses the model's own scheduler.

  .venv-tools/bin/python tools/parity_models.py --easel build/easel --arch sdxl \\
      [--model DIR] [--size 128] [--steps N] [--guidance G] [--seed 7] [--keep]

Without --model the folder is made in a temp dir (f16 weights: both sides
widen them to the same f32 values) and removed afterwards unless --keep.
Prints what diffusers said while loading (missing / unexpected weights) and
the per-pixel agreement of the two PNGs (within 1/255 and 2/255, max
difference, PSNR). Run by hand; the result goes into bench/results/."""
import argparse
import io
import logging
import math
import os
import shutil
import subprocess
import tempfile

import numpy as np
import torch
from PIL import Image

# the model's defaults (the family's) where the command line does not say
DEFAULTS = {"sd2": (4, 7.5), "sd2-v": (4, 7.5), "sd-turbo": (1, 0.0), "lcm": (4, 8.0),
            "sdxl": (4, 5.0), "sdxl-turbo": (1, 0.0)}


def load_diffusers(model):
    """DiffusionPipeline.from_pretrained, with the loading messages captured."""
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as dlog
    buf = io.StringIO()
    h = logging.StreamHandler(buf)
    dlog.get_logger("diffusers").addHandler(h)
    dlog.set_verbosity_warning()
    kw = {}
    import json
    if "XL" in json.load(open(os.path.join(model, "model_index.json")))["_class_name"]:
        kw["add_watermarker"] = False
    try:
        pipe = DiffusionPipeline.from_pretrained(model, torch_dtype=torch.float32, **kw)
    finally:
        dlog.get_logger("diffusers").removeHandler(h)
    if hasattr(pipe, "safety_checker"):
        pipe.safety_checker = None
    return pipe, buf.getvalue()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--easel", required=True)
    ap.add_argument("--arch", required=True, choices=sorted(DEFAULTS))
    ap.add_argument("--model")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--guidance", type=float)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    steps, guidance = DEFAULTS[a.arch]
    steps = a.steps or steps
    guidance = guidance if a.guidance is None else a.guidance
    prompt = "a bright scandinavian living room with large windows, photorealistic"
    negative = "blurry, low quality"
    tmp = tempfile.mkdtemp()
    model = a.model or os.path.join(tmp, a.arch)
    try:
        if not a.model:
            subprocess.run([a.easel, "make-model", "--arch", a.arch, "--dtype", "f16", "--seed",
                            "3", "--out", model], check=True)
        out = os.path.join(tmp, "easel.png")
        subprocess.run([a.easel, "generate", "--model", model, "--prompt", prompt,
                        "--negative-prompt", negative, "--steps", str(steps), "--guidance-scale",
                        str(guidance), "--seed", str(a.seed), "--width", str(a.size), "--height",
                        str(a.size), "--threads", str(a.threads), "--device", "cpu", "--out", out],
                       check=True)
        ours = np.asarray(Image.open(out).convert("RGB")).astype(np.int32)

        torch.set_num_threads(a.threads)
        pipe, log = load_diffusers(model)
        pipe.set_progress_bar_config(disable=True)
        g = torch.Generator("cpu").manual_seed(a.seed)
        with torch.no_grad():
            img = pipe(prompt, negative_prompt=negative, num_inference_steps=steps,
                       guidance_scale=guidance, width=a.size, height=a.size,
                       generator=g).images[0]
        ref = np.asarray(img.convert("RGB")).astype(np.int32)
        sched = type(pipe.scheduler).__name__
        spacing = pipe.scheduler.config.get("timestep_spacing")
        cls = type(pipe).__name__
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    notes = [l for l in log.splitlines() if l.strip()]
    print(f"diffusers loaded it as {cls} + {sched} ({spacing}); its loading messages: "
          + ("; ".join(n[:200] for n in notes) if notes else "none"))
    d = np.abs(ours - ref)
    mse = float(np.mean((ours - ref) ** 2))
    psnr = float("inf") if mse == 0 else 10 * math.log10(255 ** 2 / mse)
    print(f"{a.arch} {a.size}x{a.size} {steps} steps guidance {guidance} seed {a.seed}: "
          f"within 1/255 {np.mean(d <= 1) * 100:.3f}%, within 2/255 {np.mean(d <= 2) * 100:.3f}%, "
          f"max diff {int(d.max())}, PSNR {psnr:.1f} dB")


if __name__ == "__main__":
    main()
