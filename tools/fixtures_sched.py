#!/usr/bin/env python3
"""Fixtures for engine/rng.c and models/sampler.c, made with torch + diffusers.

Run from the repo root:   .venv-tools/bin/python tools/fixtures_sched.py
Writes tests/fixtures/rng/randn.bin and tests/fixtures/sched/sched.bin.

File format (read by tests/test_rng.c and tests/test_sampler.c), little-endian:
  "EFX1", u32 count, then count entries of
  u16 name_len, name (utf-8), u8 dtype (0 = f32, 1 = i32, 2 = f64), u32 n, n values.

rng: torch.randn(size, generator=torch.Generator("cpu").manual_seed(seed)) for
several seeds and sizes, fresh generators ("fresh/<seed>/<size>") and runs of
consecutive draws from one generator ("seq/<seed>/<s1>,<s2>,...", values
concatenated). sched: SD1.5's scheduler_config through each scheduler's
from_config (as StableDiffusionPipeline uses them), tables for several step
counts ("<kind>/<steps>/timesteps|sigmas|init_sigma") and whole sampling runs
with a fake deterministic model eps = 0.5 * x_in + 0.1 * sin(t) starting from
torch noise ("run/<kind>/<steps>/<C>x<H>x<W>/seed<seed>/step<i>" = latents
after step i, step0 = the initial scaled noise).

torch.randn of >= 16 floats gives different last bits on CPUs where torch
lacks its AVX2 kernel (see engine/rng.h); the script refuses to run there.
"""
import math
import os
import struct
import sys

import numpy as np
import torch
import diffusers
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json
SD15_SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
    "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
    "clip_sample": False,
}

KINDS = {  # our sampler_kind names -> diffusers scheduler
    "euler_a": lambda: EulerAncestralDiscreteScheduler.from_config(SD15_SCHEDULER_CONFIG),
    "euler": lambda: EulerDiscreteScheduler.from_config(SD15_SCHEDULER_CONFIG),
    "ddim": lambda: DDIMScheduler.from_config(SD15_SCHEDULER_CONFIG),
    "dpmpp_2m_karras": lambda: DPMSolverMultistepScheduler.from_config(
        SD15_SCHEDULER_CONFIG, use_karras_sigmas=True, algorithm_type="dpmsolver++", solver_order=2),
}


class Writer:
    def __init__(self):
        self.entries = []

    def add(self, name, arr, dtype):
        code = {np.float32: 0, np.int32: 1, np.float64: 2}[dtype]
        a = np.ascontiguousarray(np.asarray(arr, dtype=dtype).reshape(-1))
        self.entries.append((name, code, a))

    def save(self, path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(b"EFX1" + struct.pack("<I", len(self.entries)))
            for name, code, a in self.entries:
                nb = name.encode()
                f.write(struct.pack("<H", len(nb)) + nb + struct.pack("<BI", code, a.size))
                f.write(a.astype(a.dtype.newbyteorder("<")).tobytes())
        print(f"wrote {path}: {len(self.entries)} entries, {os.path.getsize(path)} bytes")


def rng_fixtures():
    w = Writer()
    seeds = [0, 1, 42, 2**32 + 5, 2**63]
    sizes = [1, 7, 15, 16, 17, 100, 4 * 64 * 64, 2 * 4 * 8 * 8]
    for seed in seeds:
        for size in sizes:
            if size == 4 * 64 * 64 and seed not in (0, 42):
                continue  # keep the file small: the big size for two seeds
            g = torch.Generator("cpu").manual_seed(seed)
            w.add(f"fresh/{seed}/{size}", torch.randn(size, generator=g, dtype=torch.float32).numpy(),
                  np.float32)
    # consecutive draws: the cached double-path sample must survive big draws
    runs = [(0, [3, 5, 1, 16, 2, 33, 1]), (7, [256, 256, 1, 300, 7]), (42, [4 * 64 * 64, 3, 17, 1]),
            (123, [1, 1, 1, 20, 1, 15, 15]), (2**63 - 1, [640, 2, 999])]
    for seed, run in runs:
        g = torch.Generator("cpu").manual_seed(seed)
        vals = [torch.randn(s, generator=g, dtype=torch.float32).numpy() for s in run]
        w.add(f"seq/{seed}/{','.join(map(str, run))}", np.concatenate(vals), np.float32)
    # a 4-D shape draws the same as its flat size
    g = torch.Generator("cpu").manual_seed(5)
    w.add("fresh/5/252", torch.randn((1, 4, 7, 9), generator=g).numpy(), np.float32)
    w.save(os.path.join(ROOT, "tests/fixtures/rng/randn.bin"))


def fake_eps(x_in, t):
    return 0.5 * x_in + 0.1 * math.sin(float(t))


def run_sampler(w, kind, steps, shape, seed):
    s = KINDS[kind]()
    s.set_timesteps(steps)
    g = torch.Generator("cpu").manual_seed(seed)
    # StableDiffusionPipeline.prepare_latents + the denoising loop (guidance is applied
    # before step(), so a fake eps stands in for the guided prediction)
    latents = torch.randn(shape, generator=g, dtype=torch.float32) * s.init_noise_sigma
    tag = f"run/{kind}/{steps}/{shape[1]}x{shape[2]}x{shape[3]}/seed{seed}"
    w.add(f"{tag}/step0", latents.numpy(), np.float32)
    extra = {"generator": g} if kind == "euler_a" else {}
    if kind == "ddim":
        extra["eta"] = 0.0
    for i, t in enumerate(s.timesteps):
        x_in = s.scale_model_input(latents, t)
        eps = fake_eps(x_in, t)
        latents = s.step(eps, t, latents, **extra).prev_sample
        w.add(f"{tag}/step{i + 1}", latents.numpy(), np.float32)


def sched_fixtures():
    w = Writer()
    for kind in KINDS:
        for steps in [1, 2, 3, 10, 14, 15, 20, 25, 50]:
            s = KINDS[kind]()
            s.set_timesteps(steps)
            w.add(f"{kind}/{steps}/timesteps", s.timesteps.numpy().astype(np.float32), np.float32)
            if kind != "ddim":
                w.add(f"{kind}/{steps}/sigmas", s.sigmas.numpy(), np.float32)
            w.add(f"{kind}/{steps}/init_sigma", [float(s.init_noise_sigma)], np.float32)
    s = KINDS["ddim"]()
    w.add("alphas_cumprod", s.alphas_cumprod.numpy(), np.float32)
    for kind in KINDS:
        run_sampler(w, kind, 6, (1, 4, 8, 8), 42)
        run_sampler(w, kind, 20, (1, 4, 7, 9), 1234)
    run_sampler(w, "euler_a", 3, (1, 4, 64, 64), 0)
    w.save(os.path.join(ROOT, "tests/fixtures/sched/sched.bin"))


if __name__ == "__main__":
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}", file=sys.stderr)
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        sys.exit("torch runs its scalar randn kernel here (no AVX2): engine/rng.c follows the "
                 "AVX2 kernel, so make these fixtures on an x86-64 machine with AVX2")
    torch.set_num_threads(1)
    rng_fixtures()
    sched_fixtures()
