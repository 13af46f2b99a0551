"""Peer: diffusers (PyTorch) txt2img on the same model folder easel uses
(make-model's diffusers layout), same size/steps/sampler/seed/guidance.
Prints one JSON line: per-step time (median over steps of the timed runs),
text encode, VAE decode, end to end. Warm-up runs are excluded.

  python diffusers_cpu.py --model DIR --size 256 --steps 2 --threads 2 [--dtype bf16]
  python diffusers_cpu.py --model DIR --device cuda --dtype fp16 [--compile]   (GPU peer)

--dtype bf16 loads the pipeline with torch_dtype=torch.bfloat16 (what a user of
a CPU with AMX / AVX512-BF16 would run); --channels-last also converts the UNet
and VAE to channels_last (diffusers' CPU advice; off by default).
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
    """One generation; returns (step times ms, encode ms, sample ms, decode ms, total ms,
    step CPU ms, decode CPU ms): CPU = process time of all threads."""
    dev = a.device
    marks, cpu = [], []

    def on_step(p, i, t, kw):
        sync(dev)
        marks.append(time.perf_counter())
        cpu.append(time.process_time())
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
        c2 = time.process_time()
        img = pipe.vae.decode(lat / pipe.vae.config.scaling_factor, return_dict=False)[0]
        pipe.image_processor.postprocess(img, output_type="pil")
        sync(dev)
        t3 = time.perf_counter()
        c3 = time.process_time()
    starts = [t1] + marks[:-1]
    steps = [(b - s) * 1e3 for s, b in zip(starts, marks)]
    cpu_steps = [(b - s) * 1e3 for s, b in zip(cpu[:-1], cpu[1:])]  # from step 2 on
    return (steps, (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3, (t3 - t0) * 1e3,
            cpu_steps, (c3 - c2) * 1e3)


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
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile the UNet (GPU peer)")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(a.dtype, torch.float32)
    t0 = time.perf_counter()
    try:
        pipe = StableDiffusionPipeline.from_pretrained(a.model, torch_dtype=dtype,
                                                       safety_checker=None,
                                                       requires_safety_checker=False)
    except Exception as e:  # the lead wants to know exactly what fails
        print(json.dumps({"peer": "diffusers", "error": f"from_pretrained: {type(e).__name__}: {e}"}))
        sys.exit(1)
    pipe.scheduler = make_scheduler(a.sampler, pipe.scheduler.config)
    if a.device != "cpu":  # on the CPU already; .to() fails on modules a checkpoint lacks
        pipe = pipe.to(a.device)  # (make-model writes no VAE encoder: diffusers leaves it on meta)
    pipe.set_progress_bar_config(disable=True)
    if a.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if a.compile:
        pipe.unet = torch.compile(pipe.unet, mode="max-autotune", fullgraph=True)
    load_ms = (time.perf_counter() - t0) * 1e3

    steps, enc, samp, dec, tot, csteps, cdec = [], [], [], [], [], [], []
    for i in range(a.warmup + a.repeats):
        s, e, sa, d, t, cs, cd = run_once(pipe, a, a.seed + i)
        if i >= a.warmup:
            steps += s
            enc.append(e)
            samp.append(sa)
            dec.append(d)
            tot.append(t)
            csteps += cs
            cdec.append(cd)
    med = statistics.median
    print(json.dumps({
        "peer": "diffusers", "torch": torch.__version__,
        "diffusers": __import__("diffusers").__version__,
        "device": a.device, "dtype": a.dtype, "compile": a.compile, "threads": a.threads,
        "channels_last": a.channels_last,
        "size": a.size, "steps": a.steps, "sampler": a.sampler, "guidance": a.guidance,
        "repeats": a.repeats, "load_ms": load_ms,
        "step_ms": {"median": med(steps), "min": min(steps), "max": max(steps)},
        "s_per_step": med(steps) / 1e3,
        "encode_ms": med(enc), "sample_ms": med(samp), "decode_ms": med(dec), "total_ms": med(tot),
        "cpu_ms": {"unet_step": med(csteps) if csteps else None, "decode": med(cdec)},
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }))


if __name__ == "__main__":
    main()
