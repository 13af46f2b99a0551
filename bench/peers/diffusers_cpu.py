"""Peer: diffusers (PyTorch) txt2img on the same model folder easel uses
(make-model's diffusers layout), same size/steps/sampler/seed/guidance.
Prints one JSON line: per-step time (median over steps of the timed runs),
text encode, VAE decode, end to end. Warm-up runs are excluded.

  python diffusers_cpu.py --model DIR --size 256 --steps 2 --threads 2
  python diffusers_cpu.py --model DIR --device cuda --dtype fp16 [--compile]   (GPU peer)
"""

import argparse
import json
import resource
import statistics
import sys
import time

import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler,
                       EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
                       StableDiffusionPipeline)

PROMPT = "a cozy living room, scandinavian style, soft light"
NEGATIVE = "blurry, low quality"


def make_scheduler(name, config):
    if name == "euler_a":
        return EulerAncestralDiscreteScheduler.from_config(config)
    if name == "euler":
        return EulerDiscreteScheduler.from_config(config)
    if name == "ddim":
        return DDIMScheduler.from_config(config)
    if name == "dpmpp_2m_karras":
        return DPMSolverMultistepScheduler.from_config(config, use_karras_sigmas=True)
    raise SystemExit(f"unknown sampler {name}")


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def run_once(pipe, a, seed):
    """One generation; returns (step times ms, encode ms, sample ms, decode ms, total ms)."""
    dev = a.device
    marks = []

    def on_step(p, i, t, kw):
        sync(dev)
        marks.append(time.perf_counter())
        return kw

    gen = torch.Generator("cpu").manual_seed(seed)
    sync(dev)
    t0 = time.perf_counter()
    with torch.inference_mode():
        pe, ne = pipe.encode_prompt(PROMPT, dev, 1, a.guidance > 1, NEGATIVE)
        sync(dev)
        t1 = time.perf_counter()
        lat = pipe(prompt_embeds=pe, negative_prompt_embeds=ne, width=a.size, height=a.size,
                   num_inference_steps=a.steps, guidance_scale=a.guidance, generator=gen,
                   output_type="latent", callback_on_step_end=on_step).images
        sync(dev)
        t2 = time.perf_counter()
        img = pipe.vae.decode(lat / pipe.vae.config.scaling_factor, return_dict=False)[0]
        pipe.image_processor.postprocess(img, output_type="pil")
        sync(dev)
        t3 = time.perf_counter()
    starts = [t1] + marks[:-1]
    steps = [(b - s) * 1e3 for s, b in zip(starts, marks)]
    return steps, (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3, (t3 - t0) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--sampler", default="euler_a")
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16"])
    ap.add_argument("--compile", action="store_true", help="torch.compile the UNet (GPU peer)")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    dtype = torch.float16 if a.dtype == "fp16" else torch.float32
    t0 = time.perf_counter()
    try:
        pipe = StableDiffusionPipeline.from_pretrained(a.model, torch_dtype=dtype,
                                                       safety_checker=None,
                                                       requires_safety_checker=False)
    except Exception as e:  # the lead wants to know exactly what fails
        print(json.dumps({"peer": "diffusers", "error": f"from_pretrained: {type(e).__name__}: {e}"}))
        sys.exit(1)
    pipe.scheduler = make_scheduler(a.sampler, pipe.scheduler.config)
    pipe = pipe.to(a.device)
    pipe.set_progress_bar_config(disable=True)
    if a.compile:
        pipe.unet = torch.compile(pipe.unet, mode="max-autotune", fullgraph=True)
    load_ms = (time.perf_counter() - t0) * 1e3

    steps, enc, samp, dec, tot = [], [], [], [], []
    for i in range(a.warmup + a.repeats):
        s, e, sa, d, t = run_once(pipe, a, a.seed + i)
        if i >= a.warmup:
            steps += s
            enc.append(e)
            samp.append(sa)
            dec.append(d)
            tot.append(t)
    med = statistics.median
    print(json.dumps({
        "peer": "diffusers", "torch": torch.__version__,
        "diffusers": __import__("diffusers").__version__,
        "device": a.device, "dtype": a.dtype, "compile": a.compile, "threads": a.threads,
        "size": a.size, "steps": a.steps, "sampler": a.sampler, "guidance": a.guidance,
        "repeats": a.repeats, "load_ms": load_ms,
        "step_ms": {"median": med(steps), "min": min(steps), "max": max(steps)},
        "s_per_step": med(steps) / 1e3,
        "encode_ms": med(enc), "sample_ms": med(samp), "decode_ms": med(dec), "total_ms": med(tot),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }))


if __name__ == "__main__":
    main()
