/* Noise schedules and samplers for SD1.x (epsilon prediction), matching
 * diffusers' schedulers as StableDiffusionPipeline runs them with SD1.5's
 * scheduler_config: EulerAncestralDiscrete, EulerDiscrete, DDIM (eta 0) and
 * DPMSolverMultistep (dpmsolver++, order 2, Karras sigmas). The pipeline does:
 *
 *   rng_randn(r, x, n); scale x by sampler_init_noise_sigma(s);
 *   for i in 0..steps-1:
 *       sampler_scale_input(s, i, x, x_in, n); eps = unet(x_in, sampler_timestep(s, i));
 *       (CFG on eps); sampler_step(s, i, eps, x, n, r);
 *
 * A sampler holds one run's state (DPM++'s previous prediction, Euler a's
 * noise buffer): one per job, not shared between threads. */
#ifndef EASEL_SAMPLER_H
#define EASEL_SAMPLER_H

#include <stdint.h>

#include "../engine/err.h"
#include "../engine/rng.h"
#include "pipeline.h"

#define SAMPLER_TRAIN_STEPS 1000

typedef struct sampler sampler;

/* A sampler for steps in [1, SAMPLER_TRAIN_STEPS] (DDIM: one fewer).
 * EINVAL for a bad kind or step count, ENOMEM; *out is untouched on error. */
easel_err sampler_create(sampler_kind kind, int steps, sampler **out);
void sampler_free(sampler *s);

int sampler_steps(const sampler *s);
/* The timestep fed to the UNet at step i (0-based): fractional for the Euler
 * samplers (diffusers passes float timesteps), whole for DDIM and DPM++. */
float sampler_timestep(const sampler *s, int i);
/* The noise level before step i (i in 0..steps; sigma(steps) = 0). For DDIM,
 * sqrt((1 - alpha_bar) / alpha_bar) at its timestep (0 past the end). */
float sampler_sigma(const sampler *s, int i);
/* Initial latents are unit noise times this (Euler: sigma max; others 1). */
float sampler_init_noise_sigma(const sampler *s);

/* out = the UNet input at step i: x / sqrt(sigma^2 + 1) for the Euler
 * samplers, x itself for DDIM and DPM++. out may equal x. */
void sampler_scale_input(const sampler *s, int i, const float *x, float *out, int64_t n);

/* One step: x (n latents, updated in place) from the guided eps at step i.
 * Steps must run in order 0, 1, ... with the same n. Euler a draws n normal
 * values from r (as torch.randn of the latent's shape); the others leave r
 * alone (r may be NULL for them). EINVAL on misuse, ENOMEM. */
easel_err sampler_step(sampler *s, int i, const float *eps, float *x, int64_t n, rng *r);

#endif
