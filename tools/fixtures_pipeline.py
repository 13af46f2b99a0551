"""Reference txt2img runs for tests/test_pipeline.c: diffusers'
StableDiffusionPipeline on the model `easel make-model --arch tiny --dtype f32
--seed 0` writes (so the weights need not be committed; this also checks that
diffusers reads our diffusers folder), with the real CLIP tokenizer built from
models/data/clip_merges.txt. One case per sampler (64x64, CFG 7.5, negative
prompt), one without CFG and one with a prompt longer than 77 tokens.

Writes tests/fixtures/pipeline/cases.json and, per case, <name>.bin:
final latents (float32, NCHW 1x4x8x8) then the decoded RGB bytes (64x64x3).
Needs the easel binary: $EASEL_BIN, or build*/easel under the repo.
"""
import glob
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from diffusers import (AutoencoderKL, DDIMScheduler, DPMSolverMultistepScheduler,
                       EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
                       StableDiffusionPipeline, UNet2DConditionModel)
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "pipeline")

SCHEDULERS = {
    "euler_a": lambda c: EulerAncestralDiscreteScheduler.from_config(c),
    "euler": lambda c: EulerDiscreteScheduler.from_config(c),
    "ddim": lambda c: DDIMScheduler.from_config(c),
    "dpmpp_2m_karras": lambda c: DPMSolverMultistepScheduler.from_config(
        c, use_karras_sigmas=True, algorithm_type="dpmsolver++", solver_order=2),
}

PROMPT = "a cozy living room with a green sofa, watercolor"
NEGATIVE = "blurry, low quality"
LONG = ", ".join(["a very long prompt about a beautiful scandinavian kitchen"] * 12)
CASES = [dict(name=s, sampler=s, prompt=PROMPT, negative_prompt=NEGATIVE, guidance=7.5)
         for s in SCHEDULERS]
CASES += [dict(name="euler_a_nocfg", sampler="euler_a", prompt=PROMPT, negative_prompt="",
               guidance=1.0),
          dict(name="ddim_long", sampler="ddim", prompt=LONG, negative_prompt=NEGATIVE,
               guidance=5.0)]
for c in CASES:
    c.update(steps=4, seed=1234, width=64, height=64)


def easel_bin():
    b = os.environ.get("EASEL_BIN")
    if b:
        return b
    found = sorted(glob.glob(os.path.join(ROOT, "build*", "easel")), key=os.path.getmtime)
    if not found:
        sys.exit("fixtures_pipeline: no easel binary (build it, or set EASEL_BIN)")
    return found[-1]


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_tokenizer(d):
    """CLIP's vocab.json/merges.txt, built as CLIP builds them from its merges."""
    with open(os.path.join(ROOT, "models", "data", "clip_merges.txt"), encoding="utf-8") as f:
        merges = [tuple(l.split()) for l in f.read().split("\n") if l.strip() and not l.startswith("#version")]
    vocab = bytes_to_unicode()
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408, len(vocab)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({v: i for i, v in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(d, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return CLIPTokenizer(os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt"),
                         pad_token="<|endoftext|>", model_max_length=77)


def load_models(d):
    cfg = lambda c: json.load(open(os.path.join(d, c, "config.json")))
    unet = UNet2DConditionModel.from_config(cfg("unet"))
    unet.load_state_dict(load_file(os.path.join(d, "unet", "diffusion_pytorch_model.safetensors")))
    vae = AutoencoderKL.from_config(cfg("vae"))
    missing, unexpected = vae.load_state_dict(
        load_file(os.path.join(d, "vae", "diffusion_pytorch_model.safetensors")), strict=False)
    assert not unexpected and all(k.startswith(("encoder.", "quant_conv.")) for k in missing), \
        (missing, unexpected)
    te = CLIPTextModel(CLIPTextConfig(**cfg("text_encoder")))
    sd = load_file(os.path.join(d, "text_encoder", "model.safetensors"))
    own = te.state_dict()
    sd = {(k if k in own else k[len("text_model."):]): v for k, v in sd.items()}
    te.load_state_dict(sd)
    sched_cfg = json.load(open(os.path.join(d, "scheduler", "scheduler_config.json")))
    return unet.eval(), vae.eval(), te.eval(), sched_cfg


def run_case(pipe, vae, sched_cfg, c):
    pipe.scheduler = SCHEDULERS[c["sampler"]](sched_cfg)
    g = torch.Generator("cpu").manual_seed(c["seed"])
    with torch.no_grad():
        lat = pipe(c["prompt"], negative_prompt=c["negative_prompt"] or None, height=c["height"],
                   width=c["width"], num_inference_steps=c["steps"], guidance_scale=c["guidance"],
                   generator=g, output_type="latent").images
        img = vae.decode(lat / vae.config.scaling_factor).sample
    img = (img / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().numpy()
    rgb = (img * 255).round().astype(np.uint8)
    return lat.float().numpy().astype("<f4"), rgb


def check_saved_folder(pipe, tmp, c, rgb):
    """easel on the folder diffusers' own save_pretrained writes (transformers 5
    layout: no "text_model." level, tokenizer.json only, VAE encoder included)
    must give diffusers' image."""
    d, png = os.path.join(tmp, "saved"), os.path.join(tmp, "saved.png")
    pipe.save_pretrained(d, safe_serialization=True)
    subprocess.run([easel_bin(), "generate", "--model", d, "--prompt", c["prompt"], "--negative",
                    c["negative_prompt"], "--steps", str(c["steps"]), "--cfg", str(c["guidance"]),
                    "--sampler", c["sampler"], "--seed", str(c["seed"]), "--width", str(c["width"]),
                    "--height", str(c["height"]), "--out", png], check=True)
    from PIL import Image
    got = np.asarray(Image.open(png).convert("RGB")).astype(int)
    close = (np.abs(got - rgb[0].astype(int)) <= 1).mean()
    print(f"easel on diffusers' save_pretrained folder: {100 * close:.3f}% pixels within 1/255",
          file=sys.stderr)
    assert close >= 0.999


def main():
    torch.set_num_threads(2)
    os.makedirs(OUT, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        d = os.path.join(tmp, "tiny")
        subprocess.run([easel_bin(), "make-model", "--arch", "tiny", "--dtype", "f32",
                        "--seed", "0", "--out", d], check=True)
        tok = write_tokenizer(os.path.join(tmp, "tok"))
        # make-model's tokenizer/ must be CLIP's: same vocab and merges as derived here
        for fn in ("vocab.json", "merges.txt"):
            a = open(os.path.join(d, "tokenizer", fn), encoding="utf-8").read()
            b = open(os.path.join(tmp, "tok", fn), encoding="utf-8").read()
            assert (json.loads(a) == json.loads(b)) if fn.endswith("json") else \
                a.split() == b.split(), f"make-model's tokenizer/{fn} differs from CLIP's"
        unet, vae, te, sched_cfg = load_models(d)
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet,
                                       scheduler=SCHEDULERS["euler"](sched_cfg),
                                       safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        rgbs = {}
        for c in CASES:
            lat, rgb = run_case(pipe, vae, sched_cfg, c)
            rgbs[c["name"]] = rgb
            with open(os.path.join(OUT, c["name"] + ".bin"), "wb") as f:
                f.write(lat.tobytes() + rgb.tobytes())
            n_tok = len(tok(c["prompt"]).input_ids)
            c["truncated"] = n_tok > 77
            print(f"{c['name']}: latents |x| mean {np.abs(lat).mean():.4f}, "
                  f"rgb mean {rgb.mean():.1f}, prompt tokens {n_tok}", file=sys.stderr)
        check_saved_folder(pipe, tmp, CASES[0], rgbs[CASES[0]["name"]])
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(dict(model="easel make-model --arch tiny --dtype f32 --seed 0",
                       latent_shape=[1, 4, 8, 8], cases=CASES), f, indent=1)


if __name__ == "__main__":
    main()
