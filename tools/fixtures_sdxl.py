#!/usr/bin/env python3
"""Reference SDXL txt2img runs for tests/test_pipeline.c: diffusers'
StableDiffusionXLPipeline.from_pretrained on the folder `easel make-model
--arch tiny-sdxl --dtype f32 --seed 0` writes (so no weights are committed, and
this also checks that diffusers loads our SDXL folder unchanged: both
tokenizers, both text encoders, the UNet's text_time config, the VAE), with
the watermarker off. Cases: CFG with a negative prompt, no negative prompt
(force_zeros_for_empty_prompt zeroes the negative embeddings) and the same
with force_zeros_for_empty_prompt false, prompt_2 / negative_prompt_2, no
CFG, a non-square size (time ids h != w), clip_skip, a prompt over 77 tokens,
SDXL-Turbo's schedule (Euler ancestral trailing, 1 and 2 steps, guidance 0)
and SDXL-Lightning's (Euler trailing, 4 steps, guidance 0).

Writes tests/fixtures/pipeline/sdxl_cases.json and, per case, <name>.bin:
final latents (float32, NCHW 1x4xh/8xw/8) then the decoded RGB bytes.
Needs the easel binary: $EASEL_BIN, or build*/easel under the repo.
"""
import copy
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from diffusers import (AutoencoderKL, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
                       StableDiffusionXLPipeline, UNet2DConditionModel)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixtures_pipeline import easel_bin  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "pipeline")

PROMPT = "a cozy living room with a green sofa, watercolor"
NEGATIVE = "blurry, low quality"
LONG = ", ".join(["a very long prompt about a beautiful scandinavian kitchen"] * 12)
# stabilityai/sdxl-turbo's scheduler_config.json
TURBO = {"_class_name": "EulerAncestralDiscreteScheduler", "beta_end": 0.012,
         "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
         "interpolation_type": "linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
         "sample_max_value": 1.0, "set_alpha_to_one": False, "skip_prk_steps": True,
         "steps_offset": 1, "timestep_spacing": "trailing", "trained_betas": None,
         "use_karras_sigmas": False}
CLASSES = {"euler": EulerDiscreteScheduler, "euler_a": EulerAncestralDiscreteScheduler}


def cases(base):
    """base: the made folder's scheduler config (SDXL base's Euler, leading)."""
    lightning = dict(base, timestep_spacing="trailing")  # SDXL-Lightning's model card
    c = [dict(name="xl_cfg", negative_prompt=NEGATIVE),
         dict(name="xl_zero_negative", negative_prompt=None),
         dict(name="xl_empty_negative", negative_prompt=""),
         dict(name="xl_no_force_zeros", negative_prompt=None, force_zeros=False),
         dict(name="xl_prompt_2", negative_prompt=NEGATIVE, prompt_2="an oil painting, dark",
              negative_prompt_2="bright, sunny"),
         dict(name="xl_nocfg", negative_prompt=NEGATIVE, guidance=1.0),
         dict(name="xl_96x64", negative_prompt=NEGATIVE, width=96, height=64),
         dict(name="xl_clip_skip2", negative_prompt=NEGATIVE, clip_skip=2),
         dict(name="xl_long", prompt=LONG, negative_prompt=NEGATIVE),
         dict(name="xl_turbo_1step", sampler="euler_a", config=TURBO, steps=1, guidance=0.0,
              negative_prompt=None),
         dict(name="xl_turbo_2step", sampler="euler_a", config=TURBO, steps=2, guidance=0.0,
              negative_prompt=None),
         dict(name="xl_lightning_4step", config=lightning, steps=4, guidance=0.0,
              negative_prompt=None)]
    for x in c:
        x.setdefault("prompt", PROMPT)
        x.setdefault("sampler", "euler")
        x.setdefault("config", base)
        x.setdefault("steps", 4)
        x.setdefault("guidance", 5.0)
        x.setdefault("width", 64)
        x.setdefault("height", 64)
        x.setdefault("force_zeros", True)
        x.setdefault("clip_skip", 1)
        x.setdefault("seed", 2024)
    return c


def run(pipe, c):
    pipe.scheduler = CLASSES[c["sampler"]].from_config(c["config"])
    pipe.register_to_config(force_zeros_for_empty_prompt=c["force_zeros"])
    g = torch.Generator("cpu").manual_seed(c["seed"])
    kw = dict(prompt_2=c.get("prompt_2"), negative_prompt_2=c.get("negative_prompt_2"))
    if c["clip_skip"] > 1:  # easel's clip_skip k is diffusers' k - 1
        kw["clip_skip"] = c["clip_skip"] - 1
    with torch.no_grad():
        lat = pipe(c["prompt"], negative_prompt=c["negative_prompt"], height=c["height"],
                   width=c["width"], num_inference_steps=c["steps"], guidance_scale=c["guidance"],
                   generator=g, output_type="latent", **kw).images
        img = pipe.vae.decode(lat / pipe.vae.config.scaling_factor).sample
    img = (img / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().numpy()
    rgb = (img * 255).round().astype(np.uint8)
    c["truncated"] = len(pipe.tokenizer(c["prompt"]).input_ids) > 77
    return lat.float().numpy().astype("<f4"), rgb


def main():
    torch.set_num_threads(2)
    os.makedirs(OUT, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        d = os.path.join(tmp, "tiny-sdxl")
        subprocess.run([easel_bin(), "make-model", "--arch", "tiny-sdxl", "--dtype", "f32",
                        "--seed", "0", "--out", d], check=True)
        for sub, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL)):
            _, info = cls.from_pretrained(d, subfolder=sub, output_loading_info=True)
            assert not any(info.values()), (sub, info)  # every weight there, nothing extra
        pipe = StableDiffusionXLPipeline.from_pretrained(d, torch_dtype=torch.float32,
                                                         add_watermarker=False)
        assert pipe.tokenizer_2.pad_token == "!" and pipe.tokenizer.pad_token == "<|endoftext|>"
        assert pipe.config.force_zeros_for_empty_prompt
        pipe.set_progress_bar_config(disable=True)
        base = json.load(open(os.path.join(d, "scheduler", "scheduler_config.json")))
        cs = cases(base)
        for c in cs:
            lat, rgb = run(pipe, copy.deepcopy(c))
            c["truncated"] = len(pipe.tokenizer(c["prompt"]).input_ids) > 77
            with open(os.path.join(OUT, c["name"] + ".bin"), "wb") as f:
                f.write(lat.tobytes() + rgb.tobytes())
            print(f"{c['name']}: latents |x| mean {np.abs(lat).mean():.4f}, rgb mean "
                  f"{rgb.mean():.1f}", file=sys.stderr)
    with open(os.path.join(OUT, "sdxl_cases.json"), "w") as f:
        json.dump(dict(model="easel make-model --arch tiny-sdxl --dtype f32 --seed 0",
                       cases=cs), f, indent=1)


if __name__ == "__main__":
    main()
