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
                       HeunDiscreteScheduler, LCMScheduler, PNDMScheduler, StableDiffusionPipeline,
                       TCDScheduler, UNet2DConditionModel, UniPCMultistepScheduler)
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

CLASSES = {"euler_a": EulerAncestralDiscreteScheduler, "euler": EulerDiscreteScheduler,
           "ddim": DDIMScheduler, "pndm": PNDMScheduler, "heun": HeunDiscreteScheduler,
           "dpmpp_2m": DPMSolverMultistepScheduler, "unipc": UniPCMultistepScheduler,
           "lcm": LCMScheduler, "tcd": TCDScheduler}

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
    assert unet.config.time_cond_proj_dim == cfg("unet").get("time_cond_proj_dim")
    vae = AutoencoderKL.from_config(cfg("vae"))
    # make-model writes the whole AutoencoderKL, the encoder txt2img never runs included
    vae.load_state_dict(load_file(os.path.join(d, "vae", "diffusion_pytorch_model.safetensors")))
    te = CLIPTextModel(CLIPTextConfig(**cfg("text_encoder")))
    te.config.eos_token_id = 49407  # the pooled output only; SD reads last_hidden_state
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
    # the reference is diffusers with the config it saved (its scheduler's, with
    # every field of that class written out: timestep_spacing "leading" among them)
    saved_cfg = json.load(open(os.path.join(d, "scheduler", "scheduler_config.json")))
    _, rgb = run_case(pipe, pipe.vae, saved_cfg, c)
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


def saved_pndm_config(pipe, tmp):
    """The issue's repro: a PNDMScheduler as diffusers initialises it, saved by
    save_pretrained: timestep_spacing "leading", no clip_sample key."""
    pipe = StableDiffusionPipeline(**{**pipe.components, "scheduler": PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
        steps_offset=1, set_alpha_to_one=False)})
    d = os.path.join(tmp, "saved_pndm")
    pipe.save_pretrained(d, safe_serialization=True)
    return json.load(open(os.path.join(d, "scheduler", "scheduler_config.json")))


def config_cases(tmp, base_pipe):
    """Full runs with configs as diffusers saves them, on make-model's tiny
    architectures: the repro config for every sampler, v-prediction (DDIM as
    SD2-768 ships it) on tiny-sd2, SD-Turbo's Euler trailing 1 step without
    CFG, LCM with its guidance embedding, TCD with gamma."""
    pndm = saved_pndm_config(base_pipe, tmp)
    sd2v = dict(pndm, _class_name="DDIMScheduler", prediction_type="v_prediction",
                clip_sample=False)
    turbo = {"_class_name": "EulerDiscreteScheduler", "beta_end": 0.012, "beta_schedule":
             "scaled_linear", "beta_start": 0.00085, "clip_sample": False, "interpolation_type":
             "linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
             "sample_max_value": 1.0, "set_alpha_to_one": False, "skip_prk_steps": True,
             "steps_offset": 1, "timestep_spacing": "trailing", "trained_betas": None,
             "use_karras_sigmas": False}
    cases = []
    for s in ["pndm", "euler_a", "euler", "ddim", "heun", "dpmpp_2m", "unipc"]:
        cases.append(dict(name=f"saved_{s}", sampler=s, arch="tiny", config=pndm, guidance=6.0,
                          steps=4))
    for s in ["ddim", "euler", "dpmpp_2m"]:
        cases.append(dict(name=f"sd2v_{s}", sampler=s, arch="tiny-sd2", config=sd2v, guidance=7.5,
                          steps=4))
    cases.append(dict(name="turbo_1step", sampler="euler", arch="tiny-sd2", config=turbo,
                      guidance=0.0, steps=1))
    cases.append(dict(name="lcm_4step", sampler="lcm", arch="tiny-lcm", config=None, guidance=8.0,
                      steps=4))
    cases.append(dict(name="tcd_gamma", sampler="tcd", arch="tiny", config=pndm, guidance=1.0,
                      steps=4, eta=0.3))
    cases.append(dict(name="ddim_trailing", sampler="ddim", arch="tiny",
                      config=dict(pndm, timestep_spacing="trailing"), guidance=1.0, steps=4))
    for c in cases:
        c.update(prompt=PROMPT, negative_prompt=NEGATIVE, seed=99, width=64, height=64)
        c.setdefault("eta", 0.0)
    return cases


def run_config_cases(tmp, tok, base_pipe):
    cases = config_cases(tmp, base_pipe)
    made = {}
    for c in cases:
        if c["arch"] not in made:
            d = os.path.join(tmp, c["arch"])
            subprocess.run([easel_bin(), "make-model", "--arch", c["arch"], "--dtype", "f32",
                            "--seed", "5", "--out", d], check=True)
            made[c["arch"]] = load_models(d)
        unet, vae, te, own = made[c["arch"]]
        cfg = c["config"] if c["config"] is not None else own
        c["config"] = cfg
        sched = CLASSES[c["sampler"]].from_config(cfg)
        tk = tok
        if c["arch"] == "tiny-sd2":  # OpenCLIP's tokenizer pads with "!"
            td = os.path.join(tmp, "tok")
            tk = CLIPTokenizer(os.path.join(td, "vocab.json"), os.path.join(td, "merges.txt"),
                               pad_token="!", model_max_length=77)
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tk, unet=unet,
                                       scheduler=sched, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        g = torch.Generator("cpu").manual_seed(c["seed"])
        with torch.no_grad():
            lat = pipe(c["prompt"], negative_prompt=c["negative_prompt"], height=c["height"],
                       width=c["width"], num_inference_steps=c["steps"],
                       guidance_scale=c["guidance"], eta=c["eta"], generator=g,
                       output_type="latent").images
            img = vae.decode(lat / vae.config.scaling_factor).sample
        img = (img / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().numpy()
        rgb = (img * 255).round().astype(np.uint8)
        with open(os.path.join(OUT, c["name"] + ".bin"), "wb") as f:
            f.write(lat.float().numpy().astype("<f4").tobytes() + rgb.tobytes())
        print(f"{c['name']}: |x| mean {np.abs(lat.numpy()).mean():.4f}", file=sys.stderr)
    with open(os.path.join(OUT, "config_cases.json"), "w") as f:
        json.dump(dict(seed=5, cases=cases), f, indent=1)


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
        run_config_cases(tmp, tok, pipe)
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(dict(model="easel make-model --arch tiny --dtype f32 --seed 0",
                       latent_shape=[1, 4, 8, 8], cases=CASES), f, indent=1)


if __name__ == "__main__":
    main()
