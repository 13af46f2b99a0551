"""Peer: diffusers (PyTorch) txt2img on any make-model folder, SDXL included
(DiffusionPipeline.from_pretrained picks StableDiffusionXLPipeline from the
folder's model_index.json; the model's own scheduler; no watermark), in fp32
or bf16 (torch_dtype=torch.bfloat16: oneDNN's AMX/AVX512-BF16 kernels on the
CPU). Same prompt, negative prompt, size, steps, guidance and seed as
`easel bench pipeline`. Prints one JSON line: per-step time (median over the
steps of the timed runs, from callback_on_step_end), text encode (the
pipeline's encode_prompt), VAE decode, end to end, peak RSS. Warm-up runs
are excluded.

  python diffusers_xl.py --model DIR --size 1024 --steps 20 --guidance 5 --dtype bf16 --threads 2
"""

import argparse
import json
import resource
import statistics
import time

import torch
from diffusers import DiffusionPipeline

PROMPT = "a cozy living room, scandinavian style, soft light"
NEGATIVE = "blurry, low quality"


def run_once(pipe, a, seed):
    """One generation; (step times ms, encode ms, sample ms, decode ms, total ms)."""
    marks = []

    def on_step(p, i, t, kw):
        marks.append(time.perf_counter())
        return kw

    xl = hasattr(pipe, "text_encoder_2")
    gen = torch.Generator("cpu").manual_seed(seed)
    t0 = time.perf_counter()
    with torch.inference_mode():
        if xl:
            pe, ne, pp, npp = pipe.encode_prompt(PROMPT, None, "cpu", 1, a.guidance > 1, NEGATIVE)
            kw = dict(prompt_embeds=pe, negative_prompt_embeds=ne, pooled_prompt_embeds=pp,
                      negative_pooled_prompt_embeds=npp)
        else:
            pe, ne = pipe.encode_prompt(PROMPT, "cpu", 1, a.guidance > 1, NEGATIVE)
            kw = dict(prompt_embeds=pe, negative_prompt_embeds=ne)
        t1 = time.perf_counter()
        lat = pipe(width=a.size, height=a.size, num_inference_steps=a.steps,
                   guidance_scale=a.guidance, generator=gen, output_type="latent",
                   callback_on_step_end=on_step, **kw).images
        t2 = time.perf_counter()
        img = pipe.vae.decode(lat / pipe.vae.config.scaling_factor, return_dict=False)[0]
        pipe.image_processor.postprocess(img, output_type="pil")
        t3 = time.perf_counter()
    starts = [t1] + marks[:-1]
    steps = [(b - s) * 1e3 for s, b in zip(starts, marks)]
    return steps, (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3, (t3 - t0) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--dtype", default="bf16", choices=["fp32", "bf16"])
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    t0 = time.perf_counter()
    idx = json.load(open(a.model + "/model_index.json"))
    kw = {"add_watermarker": False} if "XL" in idx["_class_name"] else {}
    pipe = DiffusionPipeline.from_pretrained(a.model, torch_dtype=dtype, **kw)
    pipe.set_progress_bar_config(disable=True)
    load_ms = (time.perf_counter() - t0) * 1e3
    steps, enc, samp, dec, tot = [], [], [], [], []
    for i in range(a.warmup + a.repeats):
        s, e, sa, d, t = run_once(pipe, a, a.seed + i)
        if i >= a.warmup:
            steps += s
            enc.append(e), samp.append(sa), dec.append(d), tot.append(t)
    med = statistics.median
    print(json.dumps({
        "peer": "diffusers", "pipeline": type(pipe).__name__,
        "scheduler": type(pipe.scheduler).__name__, "torch": torch.__version__,
        "diffusers": __import__("diffusers").__version__, "dtype": a.dtype,
        "threads": a.threads, "size": a.size, "steps": a.steps, "guidance": a.guidance,
        "repeats": a.repeats, "warmup": a.warmup, "load_ms": load_ms,
        "step_ms": {"median": med(steps), "min": min(steps), "max": max(steps)},
        "encode_ms": med(enc), "sample_ms": med(samp), "decode_ms": med(dec),
        "total_ms": med(tot),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }))


if __name__ == "__main__":
    main()
