/* txt2img: tokenize -> encode (cond + uncond) -> sample loop with CFG ->
 * VAE decode -> RGB bytes. An sd_model holds the weights (loaded once,
 * shared read-only by all workers); an sd_worker holds one worker's backend
 * and arena. Everything a caller can get wrong is checked by
 * gen_params_validate(), which names the field and the allowed range. */
#ifndef EASEL_PIPELINE_H
#define EASEL_PIPELINE_H

#include <stddef.h>
#include <stdint.h>

#include "../engine/backend.h"

typedef enum {
    SAMPLER_EULER_A = 0, /* the default, as in the seed's pipeline */
    SAMPLER_EULER,
    SAMPLER_DDIM,
    SAMPLER_DPMPP_2M_KARRAS,
    SAMPLER_COUNT
} sampler_kind;

/* "euler_a", "euler", "ddim", "dpmpp_2m_karras" */
const char *sampler_name(sampler_kind s);
/* -1 if unknown. */
int sampler_parse(const char *s);

#define GEN_MIN_SIZE 64
#define GEN_MAX_SIZE 2048
#define GEN_MAX_STEPS 150
#define GEN_MAX_GUIDANCE 30.0f
#define GEN_MAX_PROMPT_BYTES 4096

typedef struct {
    const char *prompt;          /* required (may be ""), ≤ GEN_MAX_PROMPT_BYTES */
    const char *negative_prompt; /* NULL or "" = unconditional */
    int width, height;           /* multiples of 8 in [GEN_MIN_SIZE, GEN_MAX_SIZE] */
    int steps;                   /* 1..GEN_MAX_STEPS */
    float guidance;              /* 0..GEN_MAX_GUIDANCE; CFG runs when > 1 */
    sampler_kind sampler;
    uint64_t seed;
    int clip_skip;               /* 1 = last layer (default), 2 = penultimate, ... */
} gen_params;

/* Defaults: 512x512, 20 steps, guidance 7.5, euler_a, seed 0, clip_skip 1. */
void gen_params_default(gen_params *p);
/* 0 if valid; else EASEL_EINVAL, *field set to the field's name ("width") and the
 * message naming the allowed range. */
easel_err gen_params_validate(const gen_params *p, const char **field);

typedef struct {
    double tokenize_ms, encode_ms, sample_ms, decode_ms, total_ms;
    double step_ms_mean;
    int truncated; /* the prompt or negative prompt was longer than 77 tokens */
} gen_timings;

/* Called after every step; return nonzero to cancel (the job then ends with
 * EASEL_ECANCELED). step counts from 1. */
typedef int (*gen_progress_fn)(void *user, int step, int steps, double step_ms);

typedef struct sd_model sd_model;
typedef struct sd_worker sd_worker;

/* Loads a diffusers folder or a single-file .safetensors onto be (weights
 * converted to be->act_dtype). Errors name the missing/unexpected tensor. */
easel_err sd_model_load(const char *path, backend *be, sd_model **out);
void sd_model_free(sd_model *m);
/* "tiny", "sd15", ... and a short description for `easel info` and /healthz. */
const char *sd_model_arch(const sd_model *m);
size_t sd_model_weight_bytes(const sd_model *m);

/* A worker on be (which must share memory with the model's backend). */
easel_err sd_worker_create(sd_model *m, backend *be, sd_worker **out);
void sd_worker_free(sd_worker *w);

/* Runs one txt2img. On success *rgb is a malloc'd width·height·3 byte image
 * (caller frees). On error nothing is returned and the message says why. */
easel_err sd_generate(sd_worker *w, const gen_params *p, gen_progress_fn progress, void *user,
                      uint8_t **rgb, gen_timings *timings);
/* sd_generate that also copies the final latents (before VAE decode) into
 * latents, if not NULL: C·(height/f)·(width/f) floats in NCHW order as
 * diffusers returns them with output_type="latent" (f = the VAE's factor, 8
 * for SD1.x; C = 4). For tests and previews. */
easel_err sd_generate_ex(sd_worker *w, const gen_params *p, gen_progress_fn progress, void *user,
                         uint8_t **rgb, float *latents, gen_timings *timings);

#endif
