/* libFuzzer target for request JSON -> job parameters (http/params.c), the
 * path every POST /v1/jobs body takes: an accepted request must satisfy the
 * pipeline's own validation and survive the store's JSON round trip
 * unchanged; a refused one must name its field and leave nothing allocated
 * (LeakSanitizer). Raw inputs also go through params_from_text, as a damaged
 * store row would. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "http/params.h"

static int same(const job_params *a, const job_params *b) {
    int neg = (!a->negative_prompt && !b->negative_prompt) ||
              (a->negative_prompt && b->negative_prompt &&
               !strcmp(a->negative_prompt, b->negative_prompt));
    return neg && !strcmp(a->prompt, b->prompt) && a->width == b->width && a->height == b->height &&
           a->steps == b->steps && a->guidance == b->guidance && a->sampler == b->sampler &&
           a->seed == b->seed;
}

/* Invariants of an accepted request. */
static void accepted(const job_params *p) {
    const char *field = NULL;
    gen_params g;
    params_to_gen(p, &g);
    if (!p->prompt || gen_params_validate(&g, &field)) abort();
    cJSON *j = params_to_json(p);
    char *text = j ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    if (!text) return; /* out of memory */
    job_params q, c;
    if (params_from_text(text, &q)) abort();
    if (!same(p, &q)) abort();
    if (params_copy(&c, &q) == EASEL_OK) {
        if (!same(&c, &q)) abort();
        params_clear(&c);
    }
    params_clear(&q);
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = 0;
    params_policy d;
    params_policy_default(&d);
    d.max_pixels = 1 << 20, d.max_steps = 100;
    cJSON *obj = cJSON_ParseWithLength(text, size);
    for (int allow = 0; allow < 2; allow++) {
        job_params p;
        const char *field = (const char *)1;
        easel_err e = params_parse(obj, &d, allow, &p, &field);
        if (e == EASEL_OK) {
            accepted(&p);
            if ((int64_t)p.width * p.height > d.max_pixels || p.steps > d.max_steps) abort();
        } else if (e != EASEL_ENOMEM &&
                   (e != EASEL_EINVAL || !field || p.prompt || p.negative_prompt))
            abort();
        params_clear(&p);
    }
    cJSON_Delete(obj);
    job_params s;
    if (params_from_text(text, &s) == EASEL_OK) {
        gen_params g;
        params_to_gen(&s, &g);
        if (!s.prompt || gen_params_validate(&g, &(const char *){NULL})) abort();
    } else if (s.prompt || s.negative_prompt) {
        abort();
    }
    params_clear(&s);
    free(text);
    return 0;
}
