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

matrix (--matrix): every sampler x timestep_spacing x prediction_type, plus
the schedule options and config variants (Karras/exponential sigmas, zero-SNR,
betas, final sigmas, solver orders, PRK, eta/gamma, numpy's trailing-arange
quirk), each built as `Class.from_config(config, **overrides)`; per case the
timesteps, sigmas, init sigma and the latents before every model evaluation
("m/<case>/x<i>", x0 = the initial scaled noise) of a fake-model run. Cases
and their configs in tests/fixtures/sched/matrix.json (read by test_sampler.c,
which replays every evaluation from diffusers' latents: per-step updates).

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
import json
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, HeunDiscreteScheduler, LCMScheduler, PNDMScheduler,
                       TCDScheduler, UniPCMultistepScheduler)

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


CLASSES = {"euler_a": EulerAncestralDiscreteScheduler, "euler": EulerDiscreteScheduler,
           "ddim": DDIMScheduler, "pndm": PNDMScheduler, "heun": HeunDiscreteScheduler,
           "dpmpp_2m": DPMSolverMultistepScheduler, "dpmpp_2m_karras": DPMSolverMultistepScheduler,
           "unipc": UniPCMultistepScheduler, "lcm": LCMScheduler, "tcd": TCDScheduler}
# what easel's `schedule` option means, as from_config overrides
SCHEDULES = {"default": {}, "karras": {"use_karras_sigmas": True, "use_exponential_sigmas": False},
             "exponential": {"use_karras_sigmas": False, "use_exponential_sigmas": True},
             "uniform": {"use_karras_sigmas": False, "use_exponential_sigmas": False},
             "linspace": {"timestep_spacing": "linspace"}, "leading": {"timestep_spacing": "leading"},
             "trailing": {"timestep_spacing": "trailing"}}
BASE = {k: v for k, v in SD15_SCHEDULER_CONFIG.items() if not k.startswith("_")}


def matrix_cases():
    cases = []

    def add(name, sampler, config, steps=7, schedule="default", eta=0.0, shape=(1, 4, 4, 5), seed=7):
        cases.append(dict(name=name, sampler=sampler, config=config, steps=steps, schedule=schedule,
                          eta=eta, shape=list(shape), seed=seed))

    for s in CLASSES:
        for pred in ("epsilon", "v_prediction", "sample"):
            if pred == "sample" and s in ("euler_a", "pndm"):
                continue  # diffusers raises for these
            spacings = ["leading"] if s in ("lcm", "tcd") else ["linspace", "leading", "trailing"]
            for sp in spacings:
                cfg = dict(BASE, prediction_type=pred, timestep_spacing=sp)
                add(f"{s}/{sp}/{pred}", s, cfg, eta=0.3 if s == "tcd" else 0.0)
    eps = dict(BASE)
    for s in ("euler", "heun", "dpmpp_2m", "unipc"):
        for sch in ("karras", "exponential"):
            add(f"{s}/schedule-{sch}", s, eps, schedule=sch, steps=6)
    add("euler/schedule-trailing", "euler", eps, schedule="trailing", steps=4)
    add("ddim/schedule-trailing", "ddim", eps, schedule="trailing", steps=4)
    add("euler_a/schedule-leading", "euler_a", eps, schedule="leading", steps=5)
    add("dpmpp_2m_karras/schedule-karras", "dpmpp_2m_karras", eps, schedule="karras", steps=5)
    add("euler/log_linear", "euler", dict(eps, interpolation_type="log_linear"), steps=5)
    add("euler/final_sigma_min", "euler", dict(eps, final_sigmas_type="sigma_min"), steps=5)
    add("euler/karras-sigma-range", "euler",
        dict(eps, use_karras_sigmas=True, sigma_min=0.1, sigma_max=10.0), steps=5)
    add("euler/continuous-v", "euler", dict(eps, prediction_type="v_prediction",
                                            timestep_type="continuous"), steps=5)
    for s in ("euler", "euler_a", "ddim", "dpmpp_2m", "unipc", "lcm", "tcd"):
        add(f"{s}/zero_snr", s, dict(eps, rescale_betas_zero_snr=True, prediction_type="v_prediction",
                                     timestep_spacing="trailing" if s not in ("lcm", "tcd") else
                                     "leading"), steps=5, eta=0.3 if s == "tcd" else 0.0)
    add("ddim/squaredcos", "ddim", dict(eps, beta_schedule="squaredcos_cap_v2"), steps=6)
    add("dpmpp_2m_karras/squaredcos", "dpmpp_2m_karras", dict(eps, beta_schedule="squaredcos_cap_v2"),
        steps=6)
    add("euler/linear-betas", "euler", dict(eps, beta_schedule="linear", beta_start=0.0001,
                                            beta_end=0.02), steps=6)
    add("heun/exp-betas", "heun", dict(eps, beta_schedule="exp"), steps=4)
    tb = list(np.linspace(0.0001, 0.02, 1000).astype(float))
    add("ddim/trained_betas", "ddim", dict(eps, trained_betas=tb), steps=5)
    nodefaults = {k: v for k, v in eps.items() if k not in ("clip_sample", "set_alpha_to_one")}
    add("ddim/class-defaults", "ddim", nodefaults, steps=5)  # clip_sample, set_alpha_to_one: DDIM's
    add("ddim/eta", "ddim", eps, steps=5, eta=0.5)
    add("ddim/clip", "ddim", dict(eps, clip_sample=True, clip_sample_range=0.5), steps=5)
    add("heun/clip", "heun", dict(eps, clip_sample=True, clip_sample_range=0.5), steps=4)
    add("pndm/prk", "pndm", dict(eps, skip_prk_steps=False), steps=6)
    add("pndm/prk-v", "pndm", dict(eps, skip_prk_steps=False, prediction_type="v_prediction"),
        steps=5)
    add("dpmpp_2m/order3", "dpmpp_2m", dict(eps, solver_order=3), steps=8)
    add("dpmpp_2m/order3-long", "dpmpp_2m", dict(eps, solver_order=3), steps=16)
    add("dpmpp_2m/order1", "dpmpp_2m", dict(eps, solver_order=1), steps=5)
    add("dpmpp_2m/heun-solver", "dpmpp_2m", dict(eps, solver_type="heun"), steps=6)
    add("dpmpp_2m/dpmsolver", "dpmpp_2m", dict(eps, algorithm_type="dpmsolver",
                                               final_sigmas_type="sigma_min"), steps=6)
    add("dpmpp_2m/dpmsolver-order3", "dpmpp_2m", dict(eps, algorithm_type="dpmsolver", solver_order=3,
                                                      final_sigmas_type="sigma_min",
                                                      solver_type="heun"), steps=8)
    add("dpmpp_2m/lambda_min_clipped", "dpmpp_2m", dict(eps, lambda_min_clipped=-5.1), steps=6)
    add("dpmpp_2m/euler_at_final", "dpmpp_2m", dict(eps, euler_at_final=True), steps=16)
    add("unipc/bh1", "unipc", dict(eps, solver_type="bh1"), steps=6)
    add("unipc/order3", "unipc", dict(eps, solver_order=3), steps=8)
    add("unipc/order3-v", "unipc", dict(eps, solver_order=3, prediction_type="v_prediction"), steps=8)
    add("unipc/noise-pred", "unipc", dict(eps, predict_x0=False), steps=6)
    add("unipc/disable_corrector", "unipc", dict(eps, disable_corrector=[0, 2]), steps=6)
    add("unipc/final_sigma_min", "unipc", dict(eps, final_sigmas_type="sigma_min"), steps=5)
    add("tcd/gamma0", "tcd", eps, steps=4, eta=0.0)
    add("tcd/gamma1", "tcd", eps, steps=4, eta=1.0)
    for n in (1, 2, 4, 8):
        add(f"lcm/{n}", "lcm", dict(eps, timestep_scaling=10.0, original_inference_steps=50), steps=n)
    add("lcm/clip", "lcm", dict(eps, clip_sample=True, clip_sample_range=0.5), steps=4)
    for s in ("euler", "ddim", "dpmpp_2m", "euler_a"):  # np.arange gives 62 points for 61 steps
        add(f"{s}/trailing-61", s, dict(eps, timestep_spacing="trailing"), steps=61, shape=(1, 1, 2, 3))
    for s in ("euler", "heun", "pndm", "ddim", "unipc", "dpmpp_2m"):
        add(f"{s}/1step", s, dict(eps, timestep_spacing="trailing"), steps=1)
    return cases


def build(case):
    over = dict(SCHEDULES[case["schedule"]])
    if case["sampler"] == "dpmpp_2m_karras":
        over.update(use_karras_sigmas=True, algorithm_type="dpmsolver++", solver_order=2)
    return CLASSES[case["sampler"]].from_config(case["config"], **over)


def matrix_fixtures():
    import inspect
    w = Writer()
    cases = matrix_cases()
    for c in cases:
        s = build(c)
        s.set_timesteps(c["steps"])
        # configs on which diffusers itself breaks: an exception, NaN latents, or a
        # negative integer timestep (numpy's trailing arange; torch then indexes
        # alphas_cumprod[-1]). easel refuses these; the test checks it does.
        try:
            probe = build(c)
            probe.set_timesteps(c["steps"])
            px = torch.randn(c["shape"], generator=torch.Generator("cpu").manual_seed(1))
            px = px * probe.init_noise_sigma
            pkw = {"eta": c["eta"]} if "eta" in inspect.signature(probe.step).parameters else {}
            for t in probe.timesteps:
                px = probe.step(fake_eps(probe.scale_model_input(px, t), t), t, px, **pkw).prev_sample
            bad = not torch.isfinite(px).all() or (
                not probe.timesteps.is_floating_point() and int(probe.timesteps.min()) < 0)
            why = "non-finite latents or a negative timestep"
        except (IndexError, ValueError) as e:
            bad, why = True, repr(e)
        if bad:
            print(f"diffusers breaks on {c['name']}: {why}; easel must refuse it", file=sys.stderr)
            c["refused"] = True
            continue
        name = "m/" + c["name"]
        w.add(f"{name}/timesteps", s.timesteps.numpy().astype(np.float32), np.float32)
        if c["sampler"] in ("euler", "euler_a", "heun", "dpmpp_2m", "dpmpp_2m_karras", "unipc"):
            w.add(f"{name}/sigmas", s.sigmas.numpy(), np.float32)
        w.add(f"{name}/init_sigma", [float(s.init_noise_sigma)], np.float32)
        g = torch.Generator("cpu").manual_seed(c["seed"])
        x = torch.randn(c["shape"], generator=g, dtype=torch.float32) * s.init_noise_sigma
        params = inspect.signature(s.step).parameters
        kw = {"generator": g} if "generator" in params else {}
        if "eta" in params:
            kw["eta"] = c["eta"]
        w.add(f"{name}/x0", x.numpy(), np.float32)
        for i, t in enumerate(s.timesteps):
            x_in = s.scale_model_input(x, t)
            x = s.step(fake_eps(x_in, t), t, x, **kw).prev_sample
            w.add(f"{name}/x{i + 1}", x.numpy(), np.float32)
        c["evals"] = len(s.timesteps)
    w.save(os.path.join(ROOT, "tests/fixtures/sched/matrix.bin"))
    with open(os.path.join(ROOT, "tests/fixtures/sched/matrix.json"), "w") as f:
        json.dump({"diffusers": diffusers.__version__, "fake_model": "0.5 * x_in + 0.1 * sin(t)",
                   "cases": cases}, f, indent=0)
    print(f"{len(cases)} matrix cases")


if __name__ == "__main__":
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}", file=sys.stderr)
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        sys.exit("torch runs its scalar randn kernel here (no AVX2): engine/rng.c follows the "
                 "AVX2 kernel, so make these fixtures on an x86-64 machine with AVX2")
    torch.set_num_threads(1)
    if "--matrix" in sys.argv:
        matrix_fixtures()
        sys.exit(0)
    rng_fixtures()
    sched_fixtures()
    matrix_fixtures()
