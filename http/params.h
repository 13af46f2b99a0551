/* A job's parameters: parsed and checked from request JSON, stored as JSON in
 * the job store, turned into the pipeline's gen_params for a worker. Pure
 * cJSON code with no dependency on the pipeline's implementation, so the
 * scheduler and its tests link without the model. */
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
    int sampler; /* sampler_kind */
    uint64_t seed;
    int seed_given; /* 0: the seed was drawn at random */
    char room[48];  /* seed-compat jobs: the room type for the file name; "" otherwise */
} job_params;

/* Server-wide defaults for fields a request leaves out. */
typedef struct {
    int width, height, steps;
    float guidance;
} params_defaults;

/* "euler_a", "euler", "ddim", "dpmpp_2m_karras" (as pipeline.h); -1 if unknown. */
int params_sampler_parse(const char *s);
const char *params_sampler_name(int s);

/* Fills *p from a request object: prompt (required string), negative_prompt,
 * width, height, steps, guidance_scale, sampler, seed. Missing fields take
 * d's values; a missing seed is drawn at random. Unknown fields are rejected
 * unless allow_unknown. On error: EASEL_EINVAL, *field names the field, the
 * message says what is allowed, and *p holds nothing. */
easel_err params_parse(const cJSON *obj, const params_defaults *d, int allow_unknown, job_params *p,
                       const char **field);
/* Checks ranges only (the rules of gen_params_validate in pipeline.h). */
easel_err params_check(const job_params *p, const char **field);
/* A JSON object with every field (as stored and as shown in GET /v1/jobs/{id}). */
cJSON *params_to_json(const job_params *p);
/* Parses what params_to_json produced (used when reloading the store). */
easel_err params_from_text(const char *text, job_params *p);
/* The pipeline's view; strings point into p. */
void params_to_gen(const job_params *p, gen_params *g);
/* Deep copy; EASEL_ENOMEM on failure (dst then holds nothing). */
easel_err params_copy(job_params *dst, const job_params *src);
void params_clear(job_params *p);

/* 64 random bits from the OS (getrandom), for seeds and job ids. */
uint64_t params_random64(void);

#endif
