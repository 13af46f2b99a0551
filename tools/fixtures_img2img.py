#!/usr/bin/env python3
"""Reference img2img and inpainting runs for tests/test_img2img.c: diffusers'
StableDiffusionImg2ImgPipeline and StableDiffusionInpaintPipeline on the
models `easel make-model --arch tiny --dtype f32 --seed 0` (a 4-channel UNet)
and `--arch tiny-inpaint --seed 0` (a 9-channel inpainting UNet) write, given
tests/fixtures/images/init_64.png (and mask_64.png, white = repaint) at their
own size, so no resizing happens on either side.

    img2img_<sampler>_<strength>   every sampler at strengths 0.5 and 0.75 (6 steps:
                                   3 and 4 run), and euler at 1.0
    inpaint4_*, inpaint9_*         a few samplers and strengths on each UNet kind

Writes tests/fixtures/img2img/cases.json and per case <name>.bin: the final
latents (float32, NCHW 1x4x8x8) then the decoded RGB bytes (64x64x3).
Needs the easel binary ($EASEL_BIN, or build*/easel). Run by hand:
    .venv-tools/bin/python tools/fixtures_img2img.py
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from diffusers import (DPMSolverMultistepScheduler, StableDiffusionImg2ImgPipeline,
                       StableDiffusionInpaintPipeline)
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixtures_pipeline import CLASSES, easel_bin, load_models, write_tokenizer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "img2img")
IMAGES = os.path.join(ROOT, "tests", "fixtures", "images")
PROMPT = "a scandinavian living room, oak floor, white sofa"
NEGATIVE = "blurry, low quality"
SAMPLERS = ["euler_a", "euler", "ddim", "dpmpp_2m_karras", "pndm", "heun", "dpmpp_2m", "unipc",
            "lcm", "tcd"]


def scheduler(name, cfg):
    if name == "dpmpp_2m_karras":
        return DPMSolverMultistepScheduler.from_config(cfg, use_karras_sigmas=True,
                                                       algorithm_type="dpmsolver++",
                                                       solver_order=2)
    return CLASSES[name].from_config(cfg)


def cases():
    out = []
    for s in SAMPLERS:
        for st in (0.5, 0.75):
            out.append(dict(name=f"img2img_{s}_{int(st * 100)}", kind="img2img", arch="tiny",
                            sampler=s, strength=st))
    out.append(dict(name="img2img_euler_100", kind="img2img", arch="tiny", sampler="euler",
                    strength=1.0))
    for s, st in (("euler_a", 1.0), ("ddim", 0.75), ("pndm", 1.0), ("heun", 0.5), ("unipc", 0.75)):
        out.append(dict(name=f"inpaint4_{s}_{int(st * 100)}", kind="inpaint", arch="tiny",
                        sampler=s, strength=st))
    for s, st in (("euler_a", 1.0), ("dpmpp_2m_karras", 0.75), ("unipc", 1.0), ("ddim", 0.5),
                  ("heun", 1.0)):
        out.append(dict(name=f"inpaint9_{s}_{int(st * 100)}", kind="inpaint", arch="tiny-inpaint",
                        sampler=s, strength=st))
    for c in out:
        c.update(prompt=PROMPT, negative_prompt=NEGATIVE, guidance=7.5, steps=6, seed=4321,
                 width=64, height=64, eta=0.3 if c["sampler"] == "tcd" else 0.0)
    return out


def main():
    torch.set_num_threads(2)
    os.makedirs(OUT, exist_ok=True)
    image = Image.open(os.path.join(IMAGES, "init_64.png")).convert("RGB")
    mask = Image.open(os.path.join(IMAGES, "mask_64.png")).convert("L")
    all_cases = cases()
    with tempfile.TemporaryDirectory() as tmp:
        tok = write_tokenizer(os.path.join(tmp, "tok"))
        made = {}
        for arch in ("tiny", "tiny-inpaint"):
            d = os.path.join(tmp, arch)
            subprocess.run([easel_bin(), "make-model", "--arch", arch, "--dtype", "f32", "--seed",
                            "0", "--out", d], check=True, capture_output=True)
            made[arch] = load_models(d)
        assert made["tiny-inpaint"][0].config.in_channels == 9
        for c in all_cases:
            unet, vae, te, cfg = made[c["arch"]]
            cls = StableDiffusionImg2ImgPipeline if c["kind"] == "img2img" else \
                StableDiffusionInpaintPipeline
            pipe = cls(vae=vae, text_encoder=te, tokenizer=tok, unet=unet,
                       scheduler=scheduler(c["sampler"], cfg), safety_checker=None,
                       feature_extractor=None, requires_safety_checker=False)
            pipe.set_progress_bar_config(disable=True)
            g = torch.Generator("cpu").manual_seed(c["seed"])
            kw = dict(prompt=c["prompt"], negative_prompt=c["negative_prompt"], image=image,
                      strength=c["strength"], num_inference_steps=c["steps"],
                      guidance_scale=c["guidance"], eta=c["eta"], generator=g,
                      output_type="latent")
            if c["kind"] == "inpaint":
                kw.update(mask_image=mask, height=c["height"], width=c["width"])
            with torch.no_grad():
                lat = pipe(**kw).images
                img = vae.decode(lat / vae.config.scaling_factor).sample
            img = (img / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().numpy()
            rgb = (img * 255).round().astype(np.uint8)
            with open(os.path.join(OUT, c["name"] + ".bin"), "wb") as f:
                f.write(lat.float().numpy().astype("<f4").tobytes() + rgb.tobytes())
            print(f"{c['name']}: |x| mean {np.abs(lat.numpy()).mean():.4f}, rgb mean "
                  f"{rgb.mean():.1f}", file=sys.stderr)
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(dict(models="easel make-model --arch tiny|tiny-inpaint --dtype f32 --seed 0",
                       image="images/init_64.png", mask="images/mask_64.png",
                       latent_shape=[1, 4, 8, 8], cases=all_cases), f, indent=1)


if __name__ == "__main__":
    main()
