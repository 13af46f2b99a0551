/* A job's parameters: read from request JSON (types here, ranges and
 * defaults from the engine: gen_params_default / gen_params_validate /
 * sampler_parse in models/pipeline.h, so they exist once), checked against
 * the server's admission limits, stored as JSON in the job store, turned
 * into the pipeline's gen_params for a worker. */
#ifndef EASEL_PARAMS_H
#define EASEL_PARAMS_H

#include <cjson/cJSON.h>
#include <stdint.h>

#include "../engine/err.h"
#include "../models/pipeline.h"

#define PARAMS_MAX_SEED 9007199254740991.0 /* 2^53 - 1: exact in a JSON number */

typedef struct {
    char *prompt;          /* owned, never NULL once parsed */
    char *negative_prompt; /* owned, may be NULL */
    int width, height, steps;
    float guidance;
    int sampler;   /* sampler_kind (resolved: never SAMPLER_DEFAULT once parsed with a resolver) */
    int schedule;  /* sched_schedule; SCHEDULE_DEFAULT: as the model's config says */
    float eta;     /* DDIM's eta / TCD's gamma */
    int clip_skip; /* 1 = CLIP's last layer (0 when unset: 1) */
    char *webhook; /* owned, NULL: none (not a generation parameter: not in params JSON) */
    int webhook_events; /* STORE_EV_* bits (store.h) */
    uint64_t seed;
    int seed_given; /* 0: the seed was drawn at random */
    char room[48];  /* seed-compat jobs: the room type for the file name; "" otherwise */
    int decoder;    /* gen_decoder: the full VAE (default) or the model's TAESD */
    gen_lora loras[GEN_MAX_LORAS]; /* the request's loras, then its prompt's <lora:...> tags */
    int n_loras;
    /* img2img / inpainting: upload ids (http/uploads.h; "" = none). The HTTP
     * handlers turn inline base64 into uploads before params_parse, which
     * takes ids only; the worker decodes them (job_runner.load_images). */
    char init_image[40], mask[40];
    double strength;   /* GEN_STRENGTH_DEFAULT until resolved (0.8 img2img, 1.0 inpainting) */
    int mask_blur;     /* pixels, 0..GEN_MAX_MASK_BLUR */
    int keep_unmasked; /* outside the mask the output is the init image's pixels */
    int resize_mode;   /* image_resize_mode (engine/image_codecs.h) */
    int mask_source;   /* mask_source (http/uploads.h): 0 luminance, 1 alpha */
} job_params;

/* Replaces what a request left to the model (GEN_DEFAULT, SAMPLER_DEFAULT,
 * ...) by the model's values and checks the request against the model
 * (sd_params_resolve in `easel serve`); EINVAL naming the field. */
typedef easel_err (*params_resolve_fn)(void *ctx, gen_params *g, const char **field);

/* The server's policy for requests: defaults for fields a request leaves
 * out (GEN_DEFAULT etc.: the model's), admission limits by cost (0 = none
 * beyond the engine's ranges), and the model's resolver. */
typedef struct {
    int width, height, steps;
    float guidance;
    int64_t max_pixels; /* width·height at most */
    int max_steps;
    params_resolve_fn resolve; /* NULL: the engine's fixed defaults (512², 20, 7.5, euler_a) */
    void *resolve_ctx;
    int decoder; /* gen_decoder for requests that name none (GEN_DECODER_VAE) */
} params_policy;

/* Everything left to the model, no extra limits, no resolver. */
void params_policy_default(params_policy *pol);

/* Fills *p from a request object: prompt (required string), negative_prompt,
 * width, height, steps, guidance_scale, sampler, schedule, eta, clip_skip,
 * seed, decoder ("vae" or "taesd"), init_image / mask (upload ids), strength,
 * mask_blur, keep_unmasked, resize_mode, mask_source, loras ([{"name": string, "weight":
 * number (default 1)}], then the prompt's A1111 <lora:name:weight> tags, which
 * are removed from the prompt), and the job's webhook and
 * webhook_events_filter (type checks only: the server checks where a webhook
 * may point).
 * Missing fields take pol's values, then the model's (pol->resolve), so *p
 * holds what will run; a missing seed is drawn at random. Unknown fields
 * are rejected unless allow_unknown. Strings must be valid UTF-8 and at most
 * GEN_MAX_PROMPT_BYTES. pol may be NULL (engine defaults, no limits). On
 * error: EASEL_EINVAL, *field names the field, the message says what is
 * allowed (a limit names its option), and *p holds nothing. */
easel_err params_parse(const cJSON *obj, const params_policy *pol, int allow_unknown, job_params *p,
                       const char **field);
/* A JSON object with every field (as stored and as shown in GET /v1/jobs/{id}). */
cJSON *params_to_json(const job_params *p);
/* Parses what params_to_json produced (used when reloading the store; the
 * engine's ranges apply, not a server's admission limits). */
easel_err params_from_text(const char *text, job_params *p);
/* The pipeline's view; strings point into p. */
void params_to_gen(const job_params *p, gen_params *g);
/* Deep copy; EASEL_ENOMEM on failure (dst then holds nothing). */
easel_err params_copy(job_params *dst, const job_params *src);
void params_clear(job_params *p);

/* 64 random bits from the OS (getrandom), for seeds and job ids. */
uint64_t params_random64(void);

#endif
