/* Job parameters <-> JSON (see params.h). Every check names its field, so
 * the HTTP layer can answer 400 {"error":{"field":...}}. */
#include "params.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

static const char *sampler_names[] = {"euler_a", "euler", "ddim", "dpmpp_2m_karras"};
#define N_SAMPLERS ((int)(sizeof sampler_names / sizeof sampler_names[0]))

int params_sampler_parse(const char *s) {
    for (int i = 0; s && i < N_SAMPLERS; i++)
        if (!strcmp(s, sampler_names[i])) return i;
    return -1;
}

const char *params_sampler_name(int s) {
    return s >= 0 && s < N_SAMPLERS ? sampler_names[s] : "unknown";
}

uint64_t params_random64(void) {
    uint64_t v = 0;
    if (getrandom(&v, sizeof v, 0) != (ssize_t)sizeof v) {
        /* getrandom on Linux only fails before the pool is ready; mix in time */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        v ^= (uint64_t)ts.tv_nsec * 0x9E3779B97F4A7C15ull ^ (uint64_t)ts.tv_sec;
    }
    return v;
}

static easel_err bad(const char **field, const char *name, const char *msg) {
    *field = name;
    return easel_seterr(EASEL_EINVAL, "%s: %s", name, msg);
}

/* An integer-valued JSON number in [lo, hi]. */
static easel_err get_int(const cJSON *o, const char *name, double lo, double hi, double *v,
                         const char **field) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!it || cJSON_IsNull(it)) return EASEL_OK;
    if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble) || it->valuedouble < lo ||
        it->valuedouble > hi) {
        *field = name;
        return easel_seterr(EASEL_EINVAL, "%s: must be an integer in [%.0f, %.0f]", name, lo, hi);
    }
    *v = it->valuedouble;
    return EASEL_OK;
}

static easel_err get_str(const cJSON *o, const char *name, size_t max, char **out,
                         const char **field) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!it || cJSON_IsNull(it)) return EASEL_OK;
    if (!cJSON_IsString(it)) return bad(field, name, "must be a string");
    if (strlen(it->valuestring) > max) {
        *field = name;
        return easel_seterr(EASEL_EINVAL, "%s: longer than %zu bytes", name, max);
    }
    char *s = strdup(it->valuestring);
    if (!s) return easel_seterr(EASEL_ENOMEM, "out of memory");
    free(*out);
    *out = s;
    return EASEL_OK;
}

static const char *known_fields[] = {"prompt", "negative_prompt", "width",   "height",
                                     "steps",  "guidance_scale",  "sampler", "seed",
                                     NULL};

static easel_err check_unknown(const cJSON *obj, const char **field) {
    for (const cJSON *it = obj->child; it; it = it->next) {
        int known = 0;
        for (int i = 0; known_fields[i]; i++)
            known |= !strcmp(it->string, known_fields[i]);
        if (!known) {
            *field = it->string;
            return easel_seterr(EASEL_EINVAL, "%s: unknown field", it->string);
        }
    }
    return EASEL_OK;
}

static easel_err parse_fields(const cJSON *obj, job_params *p, const char **field) {
    double v;
    easel_err e;
    if ((e = get_str(obj, "prompt", GEN_MAX_PROMPT_BYTES, &p->prompt, field))) return e;
    if ((e = get_str(obj, "negative_prompt", GEN_MAX_PROMPT_BYTES, &p->negative_prompt, field)))
        return e;
    v = p->width;
    if ((e = get_int(obj, "width", GEN_MIN_SIZE, GEN_MAX_SIZE, &v, field))) return e;
    p->width = (int)v;
    v = p->height;
    if ((e = get_int(obj, "height", GEN_MIN_SIZE, GEN_MAX_SIZE, &v, field))) return e;
    p->height = (int)v;
    v = p->steps;
    if ((e = get_int(obj, "steps", 1, GEN_MAX_STEPS, &v, field))) return e;
    p->steps = (int)v;
    v = -1;
    if ((e = get_int(obj, "seed", 0, PARAMS_MAX_SEED, &v, field))) return e;
    if (v >= 0) p->seed = (uint64_t)v, p->seed_given = 1;
    const cJSON *g = cJSON_GetObjectItemCaseSensitive(obj, "guidance_scale");
    if (g && !cJSON_IsNull(g)) {
        if (!cJSON_IsNumber(g) || !(g->valuedouble >= 0 && g->valuedouble <= GEN_MAX_GUIDANCE))
            return bad(field, "guidance_scale", "must be a number in [0, 30]");
        p->guidance = (float)g->valuedouble;
    }
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(obj, "sampler");
    if (s && !cJSON_IsNull(s)) {
        int k = cJSON_IsString(s) ? params_sampler_parse(s->valuestring) : -1;
        if (k < 0)
            return bad(field, "sampler", "must be one of euler_a, euler, ddim, dpmpp_2m_karras");
        p->sampler = k;
    }
    return EASEL_OK;
}

easel_err params_check(const job_params *p, const char **field) {
    if (!p->prompt) return bad(field, "prompt", "required (a string)");
    if (p->width % 8) return bad(field, "width", "must be a multiple of 8");
    if (p->height % 8) return bad(field, "height", "must be a multiple of 8");
    if (p->width < GEN_MIN_SIZE || p->width > GEN_MAX_SIZE)
        return bad(field, "width", "must be in [64, 2048]");
    if (p->height < GEN_MIN_SIZE || p->height > GEN_MAX_SIZE)
        return bad(field, "height", "must be in [64, 2048]");
    if (p->steps < 1 || p->steps > GEN_MAX_STEPS) return bad(field, "steps", "must be in [1, 150]");
    if (!(p->guidance >= 0 && p->guidance <= GEN_MAX_GUIDANCE))
        return bad(field, "guidance_scale", "must be in [0, 30]");
    return EASEL_OK;
}

easel_err params_parse(const cJSON *obj, const params_defaults *d, int allow_unknown, job_params *p,
                       const char **field) {
    memset(p, 0, sizeof *p);
    *field = NULL;
    if (!cJSON_IsObject(obj)) return bad(field, "body", "must be a JSON object");
    p->width = d->width, p->height = d->height, p->steps = d->steps, p->guidance = d->guidance;
    p->seed = params_random64() >> 32;
    easel_err e = allow_unknown ? EASEL_OK : check_unknown(obj, field);
    if (!e) e = parse_fields(obj, p, field);
    if (!e) e = params_check(p, field);
    if (e) params_clear(p);
    return e;
}

/* Seeds up to 2^53 - 1 as exact integers (cJSON would print 15 significant digits). */
static cJSON *add_seed(cJSON *o, const char *name, uint64_t seed) {
    char num[32];
    snprintf(num, sizeof num, "%llu", (unsigned long long)seed);
    return cJSON_AddRawToObject(o, name, num);
}

cJSON *params_to_json(const job_params *p) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    int ok = cJSON_AddStringToObject(o, "prompt", p->prompt ? p->prompt : "") &&
             (p->negative_prompt ? cJSON_AddStringToObject(o, "negative_prompt", p->negative_prompt)
                                 : cJSON_AddNullToObject(o, "negative_prompt")) &&
             cJSON_AddNumberToObject(o, "width", p->width) &&
             cJSON_AddNumberToObject(o, "height", p->height) &&
             cJSON_AddNumberToObject(o, "steps", p->steps) &&
             cJSON_AddNumberToObject(o, "guidance_scale", p->guidance) &&
             cJSON_AddStringToObject(o, "sampler", params_sampler_name(p->sampler)) &&
             add_seed(o, "seed", p->seed) &&
             (!p->room[0] || cJSON_AddStringToObject(o, "room", p->room));
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

easel_err params_from_text(const char *text, job_params *p) {
    memset(p, 0, sizeof *p);
    cJSON *o = cJSON_Parse(text ? text : "");
    if (!o) return easel_seterr(EASEL_EFORMAT, "stored parameters are not JSON");
    const char *field = NULL;
    params_defaults d = {512, 512, 20, 7.5f};
    easel_err e = params_parse(o, &d, 1, p, &field);
    const cJSON *room = cJSON_GetObjectItemCaseSensitive(o, "room");
    if (!e && cJSON_IsString(room)) snprintf(p->room, sizeof p->room, "%s", room->valuestring);
    if (!e && !cJSON_GetObjectItemCaseSensitive(o, "seed"))
        e = easel_seterr(EASEL_EFORMAT, "stored parameters have no seed");
    cJSON_Delete(o);
    if (e) params_clear(p);
    return e;
}

void params_to_gen(const job_params *p, gen_params *g) {
    memset(g, 0, sizeof *g);
    g->prompt = p->prompt;
    g->negative_prompt = p->negative_prompt;
    g->width = p->width;
    g->height = p->height;
    g->steps = p->steps;
    g->guidance = p->guidance;
    g->sampler = (sampler_kind)p->sampler;
    g->seed = p->seed;
    g->clip_skip = 1;
}

easel_err params_copy(job_params *dst, const job_params *src) {
    *dst = *src;
    dst->prompt = src->prompt ? strdup(src->prompt) : NULL;
    dst->negative_prompt = src->negative_prompt ? strdup(src->negative_prompt) : NULL;
    if ((src->prompt && !dst->prompt) || (src->negative_prompt && !dst->negative_prompt)) {
        params_clear(dst);
        return easel_seterr(EASEL_ENOMEM, "out of memory");
    }
    return EASEL_OK;
}

void params_clear(job_params *p) {
    free(p->prompt);
    free(p->negative_prompt);
    p->prompt = p->negative_prompt = NULL;
}
