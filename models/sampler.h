/* Samplers matching diffusers' scheduler classes (see pipeline.h's
 * sampler_kind), each built from a model's scheduler config the way
 * `Class.from_config(pipe.scheduler.config)` builds it, with the model's
 * parameterisation (models/denoiser.h) and an optional schedule override.
 * The pipeline does, as StableDiffusionPipeline does:
 *
 *   rng_randn(r, x, n); scale x by sampler_init_noise_sigma(s);
 *   for i in 0..sampler_evals(s)-1:
 *       sampler_scale_input(s, i, x, x_in, n); out = unet(x_in, sampler_timestep(s, i));
 *       (CFG on out); sampler_step(s, i, out, x, n, r);
 *       if (k = sampler_progress(s, i)) report step k of sampler_progress_total(s);
 *
 * sampler_evals may differ from the requested steps: Heun evaluates the
 * model twice per step (2·steps − 1), PNDM's PLMS once more than steps, PRK
 * 4 per warm-up step, and "trailing" spacing can give numpy's arange one
 * extra point (61 steps → 62 timesteps), all as in diffusers. A sampler holds
 * one run's state (multistep history, noise buffers): one per job. */
#ifndef EASEL_SAMPLER_H
#define EASEL_SAMPLER_H

#include <stdint.h>

#include "../engine/err.h"
#include "../engine/rng.h"
#include "pipeline.h"
#include "scheduler.h"

#define SAMPLER_TRAIN_STEPS 1000

typedef struct sampler sampler;

typedef struct {
    sampler_kind kind;          /* not SAMPLER_DEFAULT: resolve that first */
    const sched_config *config; /* NULL: SD1.5's (sched_config_sd15) */
    int prediction;             /* sd_prediction, or -1: the config's (else the class default) */
    sched_schedule schedule;    /* SCHEDULE_DEFAULT: as configured */
    int steps;                  /* num_inference_steps, 1..1000 */
    float eta;                  /* DDIM eta, TCD gamma: [0, 1] */
    int pipeline_fixups; /* what StableDiffusionPipeline.__init__ does to the scheduler config:
                            clip_sample true -> false, steps_offset -> 1 */
} sampler_opts;

/* EINVAL naming the problem (a schedule the class does not have, a
 * prediction type it refuses, too many steps for the spacing), ENOMEM;
 * *out is untouched on error. */
easel_err sampler_create_ex(const sampler_opts *o, sampler **out);
/* sampler_create_ex with SD1.5's config, epsilon, the default schedule. */
easel_err sampler_create(sampler_kind kind, int steps, sampler **out);
void sampler_free(sampler *s);

int sampler_steps(const sampler *s); /* the requested steps */
int sampler_evals(const sampler *s); /* model evaluations (len(scheduler.timesteps)) */
/* The timestep fed to the model at evaluation i: fractional for Euler and
 * Heun (diffusers passes float timesteps), whole for the others. */
float sampler_timestep(const sampler *s, int i);
/* The scheduler's sigma table (scheduler.sigmas), i in 0..sampler_sigma_count-1;
 * for DDIM/PNDM/LCM/TCD sqrt((1 - a)/a) at each timestep, then 0. */
int sampler_sigma_count(const sampler *s);
float sampler_sigma(const sampler *s, int i);
/* Initial latents are unit noise times this (scheduler.init_noise_sigma). */
float sampler_init_noise_sigma(const sampler *s);
/* The model sees sampler_timestep(s, i) with this extra input, if it has a
 * guidance embedding: nothing here, see the pipeline. */

/* out = scheduler.scale_model_input(x) at evaluation i. out may equal x. */
void sampler_scale_input(const sampler *s, int i, const float *x, float *out, int64_t n);

/* One evaluation's update: x (n latents, updated in place) from the (guided)
 * model output at evaluation i. Evaluations run in order 0, 1, ... with the
 * same n. Ancestral / stochastic updates (euler_a, ddim with eta > 0, lcm,
 * tcd with gamma > 0) draw n normal values from r as torch.randn of the
 * latent's shape; the others leave r alone (it may be NULL for them).
 * EINVAL on misuse, ENOMEM. */
easel_err sampler_step(sampler *s, int i, const float *out, float *x, int64_t n, rng *r);

/* diffusers' progress bar: after evaluation i, the step number (1-based) it
 * completes, or 0 when it is an inner evaluation (Heun's first half, PNDM's
 * warm-up); there are sampler_progress_total(s) of them. */
int sampler_progress(const sampler *s, int i);
int sampler_progress_total(const sampler *s);

/* img2img and inpainting as StableDiffusionImg2ImgPipeline.get_timesteps
 * does it: init_timestep = min(int(steps·strength), steps), t_start = steps −
 * init_timestep, and the run starts at evaluation t_start·order (Heun: 2)
 * with scheduler.set_begin_index(t_start·order); only the remaining
 * evaluations run. sampler_img2img_begin returns that first evaluation
 * (sampler_evals(s) when no step remains, strength·steps < 1);
 * sampler_set_begin makes it the first (before any sampler_step: EINVAL
 * after), and progress then counts the steps run (steps − t_start), as
 * diffusers' bar does. */
int sampler_img2img_begin(const sampler *s, double strength);
easel_err sampler_set_begin(sampler *s, int begin);
int sampler_begin(const sampler *s);

/* out = scheduler.add_noise(x0, noise, timesteps[i]) with the step index the
 * pipeline's scheduler has there (begin_index before the first step, the
 * current step index after): Euler, Euler a, Heun x0 + noise·sigmas[i];
 * DPM-Solver, UniPC alpha_t·x0 + sigma_t·noise of sigmas[i]; DDIM, PNDM,
 * LCM, TCD sqrt(ac[t])·x0 + sqrt(1 − ac[t])·noise of t = timesteps[i]; in
 * torch's float32 order. out may equal x0 or noise. */
void sampler_add_noise(const sampler *s, int i, const float *x0, const float *noise, float *out,
                       int64_t n);

#endif
