/* The denoiser seam: how a network's output relates to the clean sample.
 * A diffusion model predicts epsilon (the noise), v (alpha·eps − sigma·x0)
 * or the sample x0 itself (later: a flow velocity); the samplers only ever
 * want x0 (and sometimes eps) at the current noise level, so each asks here.
 * Two spaces, as diffusers' schedulers write them (kept apart so each sampler
 * rounds exactly as its diffusers class does, in float32):
 *   VE ("sigma" space, k-diffusion / Euler / Heun): x = x0 + sigma·eps, the
 *      UNet input is x / sqrt(sigma² + 1);
 *   VP (DDIM, PNDM, LCM, TCD, DPM-Solver, UniPC): x = sqrt(a)·x0 + sqrt(1−a)·eps
 *      with a = alphas_cumprod[t], or alpha_t·x0 + sigma_t·eps.
 * Every function works elementwise over n values; out may alias x or m. */
#ifndef EASEL_DENOISER_H
#define EASEL_DENOISER_H

#include <stdint.h>

#include "pipeline.h"

/* x0 from model output m at VE noise level sigma (Euler's formulas:
 * eps: x − sigma·m; v: m·(−sigma/sqrt(sigma²+1)) + x/(sigma²+1); sample: m). */
void denoise_ve(sd_prediction p, float sigma, const float *m, const float *x, float *x0, int64_t n);

/* x0 and eps from m at VP level a = alphas_cumprod[t] (DDIM's formulas with
 * sa = sqrt(a), sb = sqrt(1 − a)); eps may be NULL. */
void denoise_vp(sd_prediction p, float sa, float sb, const float *m, const float *x, float *x0,
                float *eps, int64_t n);

/* x0 from m with DPM-Solver's alpha_t, sigma_t (eps: (x − sigma_t·m)/alpha_t;
 * v: alpha_t·x − sigma_t·m). */
void denoise_x0_as(sd_prediction p, float alpha_t, float sigma_t, const float *m, const float *x,
                   float *x0, int64_t n);
/* eps from m with alpha_t, sigma_t (DPM-Solver's "dpmsolver" and UniPC's
 * predict_x0=False: sample: (x − alpha_t·m)/sigma_t; v: alpha_t·m + sigma_t·x). */
void denoise_eps_as(sd_prediction p, float alpha_t, float sigma_t, const float *m, const float *x,
                    float *eps, int64_t n);

/* x0 from m and the model's input x_in at noise level sigma (sampler_sigma
 * of the evaluation): what every sampler's evaluation has in common, since
 * each feeds the network the VP-scaled sample (sampler_scale_input). The VP
 * form with a = 1/(sigma² + 1); equals each sampler's own x0 up to float
 * rounding (previews; not used inside the samplers). */
void denoise_at_sigma(sd_prediction p, float sigma, const float *m, const float *x_in, float *x0,
                      int64_t n);

#endif
