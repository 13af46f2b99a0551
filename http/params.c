/* Job parameters <-> JSON (see params.h). This file checks JSON types;
 * the ranges, defaults and sampler names are the engine's
 * (gen_params_validate), so a request and `easel generate` are held to the
 * same rules. Every error names its field, so the HTTP layer can answer
 * 400 {"error":{"field":...}}. */
#include "params.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "../engine/utf8.h"
#include "store.h"
#include "uploads.h"

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

void params_policy_default(params_policy *pol) {
    memset(pol, 0, sizeof *pol);
    pol->width = pol->height = pol->steps = GEN_DEFAULT;
    pol->guidance = GEN_GUIDANCE_DEFAULT;
}

/* Without a model: the engine's fixed defaults, as before models had their own. */
static void engine_defaults(gen_params *g) {
    if (g->width == GEN_DEFAULT) g->width = 512;
    if (g->height == GEN_DEFAULT) g->height = 512;
    if (g->steps == GEN_DEFAULT) g->steps = 20;
    if (g->guidance == GEN_GUIDANCE_DEFAULT) g->guidance = 7.5f;
    if (g->sampler == SAMPLER_DEFAULT) g->sampler = SAMPLER_EULER_A;
}

static easel_err bad(const char **field, const char *name, const char *msg) {
    *field = name;
    return easel_seterr(EASEL_EINVAL, "%s: %s", name, msg);
}

/* A positive integer-valued JSON number that fits an int (the ranges are
 * the engine's; positive because a negative value is how a gen_params says
 * "the model's default", which only leaving the field out may mean). */
static easel_err get_int(const cJSON *o, const char *name, int *v, const char **field) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!it || cJSON_IsNull(it)) return EASEL_OK;
    if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble) || it->valuedouble < 1 ||
        it->valuedouble > 1e9)
        return bad(field, name, "must be a positive integer");
    *v = (int)it->valuedouble;
    return EASEL_OK;
}

static easel_err get_str(const cJSON *o, const char *name, char **out, const char **field) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!it || cJSON_IsNull(it)) return EASEL_OK;
    if (!cJSON_IsString(it)) return bad(field, name, "must be a string");
    size_t n = strlen(it->valuestring);
    if (!utf8_valid(it->valuestring, n, NULL)) return bad(field, name, "must be valid UTF-8");
    if (n > GEN_MAX_PROMPT_BYTES) {
        *field = name;
        return easel_seterr(EASEL_EINVAL, "%s: longer than %d bytes", name, GEN_MAX_PROMPT_BYTES);
    }
    char *s = strdup(it->valuestring);
    if (!s) return easel_seterr(EASEL_ENOMEM, "out of memory");
    free(*out);
    *out = s;
    return EASEL_OK;
}

static const char *known_fields[] = {"prompt",        "negative_prompt",
                                     "width",         "height",
                                     "steps",         "guidance_scale",
                                     "sampler",       "schedule",
                                     "eta",           "seed",
                                     "webhook",       "webhook_events_filter",
                                     "decoder",       "loras",
                                     "init_image",    "mask",
                                     "strength",      "mask_blur",
                                     "keep_unmasked", "resize_mode",
                                     "mask_source",   NULL};

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

/* One upload id field (inline images were stored as uploads by the handler). */
static easel_err get_upload_id(const cJSON *obj, const char *name, char *dst, size_t cap,
                               const char **field) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (!v || cJSON_IsNull(v)) return EASEL_OK;
    if (!cJSON_IsString(v) || !upload_id_valid(v->valuestring) || strlen(v->valuestring) >= cap)
        return bad(field, name,
                   "must be an upload id (upl_..., from POST /v1/uploads) or a base64 image");
    snprintf(dst, cap, "%s", v->valuestring);
    return EASEL_OK;
}

/* init_image, mask, strength, mask_blur, keep_unmasked, resize_mode, mask_source */
static easel_err get_images(const cJSON *obj, job_params *p, const char **field) {
    easel_err e = get_upload_id(obj, "init_image", p->init_image, sizeof p->init_image, field);
    if (!e) e = get_upload_id(obj, "mask", p->mask, sizeof p->mask, field);
    if (e) return e;
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(obj, "strength");
    if (st && !cJSON_IsNull(st)) {
        if (!cJSON_IsNumber(st) || !(st->valuedouble >= 0.0 && st->valuedouble <= 1.0))
            return bad(field, "strength", "must be a number in [0, 1]");
        p->strength = st->valuedouble;
    }
    const cJSON *mb = cJSON_GetObjectItemCaseSensitive(obj, "mask_blur");
    if (mb && !cJSON_IsNull(mb)) {
        if (!cJSON_IsNumber(mb) || mb->valuedouble != floor(mb->valuedouble) ||
            mb->valuedouble < 0 || mb->valuedouble > GEN_MAX_MASK_BLUR) {
            char msg[80];
            snprintf(msg, sizeof msg, "must be an integer in [0, %d] (pixels)", GEN_MAX_MASK_BLUR);
            return bad(field, "mask_blur", msg);
        }
        p->mask_blur = (int)mb->valuedouble;
    }
    const cJSON *ku = cJSON_GetObjectItemCaseSensitive(obj, "keep_unmasked");
    if (ku && !cJSON_IsNull(ku)) {
        if (!cJSON_IsBool(ku)) return bad(field, "keep_unmasked", "must be true or false");
        p->keep_unmasked = cJSON_IsTrue(ku);
    }
    const cJSON *rm = cJSON_GetObjectItemCaseSensitive(obj, "resize_mode");
    if (rm && !cJSON_IsNull(rm)) {
        int k = cJSON_IsString(rm) ? image_resize_mode_parse(rm->valuestring) : -1;
        if (k < 0) return bad(field, "resize_mode", "must be one of resize, crop, fill");
        p->resize_mode = k;
    }
    const cJSON *ms = cJSON_GetObjectItemCaseSensitive(obj, "mask_source");
    if (ms && !cJSON_IsNull(ms)) {
        const char *v = cJSON_IsString(ms) ? ms->valuestring : "";
        if (strcmp(v, "luminance") && strcmp(v, "alpha"))
            return bad(field, "mask_source",
                       "must be \"luminance\" (white = repaint) or "
                       "\"alpha\" (transparent = repaint)");
        p->mask_source = !strcmp(v, "alpha") ? MASK_FROM_ALPHA : MASK_FROM_LUMA;
    }
    if (p->mask_source == MASK_FROM_ALPHA && !p->mask[0] && p->init_image[0])
        snprintf(p->mask, sizeof p->mask, "%s", p->init_image); /* the image's own alpha */
    return EASEL_OK;
}

/* webhook (an http(s) URL) and webhook_events_filter (start, progress,
 * completed; default all three, as Replicate sends). */
static easel_err get_webhook(const cJSON *obj, job_params *p, const char **field) {
    const cJSON *w = cJSON_GetObjectItemCaseSensitive(obj, "webhook");
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(obj, "webhook_events_filter");
    if (!w || cJSON_IsNull(w)) {
        if (f && !cJSON_IsNull(f)) return bad(field, "webhook_events_filter", "needs a webhook");
        return EASEL_OK;
    }
    if (!cJSON_IsString(w) || strlen(w->valuestring) > 1000 ||
        (strncmp(w->valuestring, "http://", 7) && strncmp(w->valuestring, "https://", 8)))
        return bad(field, "webhook", "must be an http:// or https:// URL of at most 1000 bytes");
    int ev = STORE_EV_START | STORE_EV_PROGRESS | STORE_EV_COMPLETED;
    if (f && !cJSON_IsNull(f)) {
        if (!cJSON_IsArray(f) || !cJSON_GetArraySize(f))
            return bad(field, "webhook_events_filter", "a list of start, progress, completed");
        ev = 0;
        for (const cJSON *e = f->child; e; e = e->next) {
            const char *v = cJSON_IsString(e) ? e->valuestring : "";
            int bit = !strcmp(v, "start")       ? STORE_EV_START
                      : !strcmp(v, "progress")  ? STORE_EV_PROGRESS
                      : !strcmp(v, "completed") ? STORE_EV_COMPLETED
                                                : 0;
            if (!bit)
                return bad(field, "webhook_events_filter", "a list of start, progress, completed");
            ev |= bit;
        }
    }
    char *u = strdup(w->valuestring);
    if (!u) return easel_seterr(EASEL_ENOMEM, "out of memory");
    free(p->webhook);
    p->webhook = u, p->webhook_events = ev;
    return EASEL_OK;
}

/* loras: [{"name": "...", "weight": 0.8}, ...] (weight defaults to 1); the
 * names and ranges are the engine's (gen_params_validate), the files the
 * model's resolver checks. */
static easel_err get_loras(const cJSON *obj, job_params *p, const char **field) {
    const cJSON *l = cJSON_GetObjectItemCaseSensitive(obj, "loras");
    if (!l || cJSON_IsNull(l)) return EASEL_OK;
    static const char *shape = "a list of {\"name\": string, \"weight\": number}";
    if (!cJSON_IsArray(l)) return bad(field, "loras", shape);
    if (cJSON_GetArraySize(l) > GEN_MAX_LORAS) {
        *field = "loras";
        return easel_seterr(EASEL_EINVAL, "loras: at most %d at once", GEN_MAX_LORAS);
    }
    for (const cJSON *e = l->child; e; e = e->next) {
        if (!cJSON_IsObject(e)) return bad(field, "loras", shape);
        for (const cJSON *k = e->child; k; k = k->next)
            if (strcmp(k->string, "name") && strcmp(k->string, "weight")) {
                *field = "loras";
                return easel_seterr(EASEL_EINVAL, "loras: unknown field '%s' (name, weight)",
                                    k->string);
            }
        const cJSON *n = cJSON_GetObjectItemCaseSensitive(e, "name");
        const cJSON *w = cJSON_GetObjectItemCaseSensitive(e, "weight");
        if (!cJSON_IsString(n) || (w && !cJSON_IsNull(w) && !cJSON_IsNumber(w)))
            return bad(field, "loras", shape);
        if (strlen(n->valuestring) > GEN_LORA_NAME_MAX ||
            !utf8_valid(n->valuestring, strlen(n->valuestring), NULL)) {
            *field = "loras";
            return easel_seterr(EASEL_EINVAL, "loras: a name is at most %d bytes of UTF-8",
                                GEN_LORA_NAME_MAX);
        }
        gen_lora *g = &p->loras[p->n_loras++];
        snprintf(g->name, sizeof g->name, "%s", n->valuestring);
        g->weight = w && cJSON_IsNumber(w) ? (float)w->valuedouble : 1.0f;
        if (w && cJSON_IsNumber(w) && !isfinite(w->valuedouble)) g->weight = NAN;
    }
    return EASEL_OK;
}

static easel_err parse_fields(const cJSON *obj, job_params *p, const char **field) {
    easel_err e;
    if ((e = get_str(obj, "prompt", &p->prompt, field))) return e;
    if ((e = get_str(obj, "negative_prompt", &p->negative_prompt, field))) return e;
    if ((e = get_int(obj, "width", &p->width, field))) return e;
    if ((e = get_int(obj, "height", &p->height, field))) return e;
    if ((e = get_int(obj, "steps", &p->steps, field))) return e;
    if ((e = get_int(obj, "clip_skip", &p->clip_skip, field))) return e;
    const cJSON *sd = cJSON_GetObjectItemCaseSensitive(obj, "seed");
    if (sd && !cJSON_IsNull(sd)) {
        if (!cJSON_IsNumber(sd) || sd->valuedouble != floor(sd->valuedouble) ||
            sd->valuedouble < 0 || sd->valuedouble > PARAMS_MAX_SEED)
            return bad(field, "seed", "must be an integer in [0, 9007199254740991]");
        p->seed = (uint64_t)sd->valuedouble, p->seed_given = 1;
    }
    const cJSON *g = cJSON_GetObjectItemCaseSensitive(obj, "guidance_scale");
    if (g && !cJSON_IsNull(g)) {
        if (!cJSON_IsNumber(g) || !isfinite(g->valuedouble) || g->valuedouble < 0)
            return bad(field, "guidance_scale", "must be a number >= 0");
        p->guidance = (float)g->valuedouble;
    }
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(obj, "sampler");
    if (s && !cJSON_IsNull(s)) {
        int k = cJSON_IsString(s) ? sampler_parse(s->valuestring) : -1;
        if (k < 0) {
            char msg[400];
            snprintf(msg, sizeof msg, "must be one of %s", sampler_choices());
            return bad(field, "sampler", msg);
        }
        p->sampler = k;
    }
    const cJSON *sc = cJSON_GetObjectItemCaseSensitive(obj, "schedule");
    if (sc && !cJSON_IsNull(sc)) {
        int k = cJSON_IsString(sc) ? schedule_parse(sc->valuestring) : -1;
        if (k < 0) {
            char msg[400];
            snprintf(msg, sizeof msg, "must be one of %s", schedule_choices());
            return bad(field, "schedule", msg);
        }
        p->schedule = k;
    }
    const cJSON *et = cJSON_GetObjectItemCaseSensitive(obj, "eta");
    if (et && !cJSON_IsNull(et)) {
        if (!cJSON_IsNumber(et) || !isfinite(et->valuedouble))
            return bad(field, "eta", "must be a number");
        p->eta = (float)et->valuedouble;
    }
    const cJSON *dc = cJSON_GetObjectItemCaseSensitive(obj, "decoder");
    if (dc && !cJSON_IsNull(dc)) {
        int k = cJSON_IsString(dc) ? gen_decoder_parse(dc->valuestring) : -1;
        if (k < 0) {
            char msg[160];
            snprintf(msg, sizeof msg, "must be \"vae\" or \"taesd\" (got %s%.60s%s)",
                     cJSON_IsString(dc) ? "'" : "",
                     cJSON_IsString(dc) ? dc->valuestring : "a non-string",
                     cJSON_IsString(dc) ? "'" : "");
            return bad(field, "decoder", msg);
        }
        p->decoder = k;
    }
    if ((e = get_webhook(obj, p, field))) return e;
    if ((e = get_images(obj, p, field))) return e;
    if (!p->prompt) return bad(field, "prompt", "required (a string)");
    if ((e = get_loras(obj, p, field))) return e;
    if ((e = gen_prompt_loras(p->prompt, p->loras, &p->n_loras, GEN_MAX_LORAS, field))) return e;
    if (p->schedule != SCHEDULE_DEFAULT && p->sampler == SAMPLER_DEFAULT)
        return bad(field, "schedule", "name the sampler it is for (a schedule belongs to one)");
    return EASEL_OK;
}

/* The server's admission limits, beyond the engine's ranges. */
static easel_err check_policy(const job_params *p, const params_policy *pol, const char **field) {
    if (pol->max_pixels > 0 && (int64_t)p->width * p->height > pol->max_pixels) {
        *field = p->width >= p->height ? "width" : "height";
        return easel_seterr(EASEL_EINVAL,
                            "%s: %dx%d is %lld pixels, over this server's limit of %lld "
                            "(--max-pixels)",
                            *field, p->width, p->height, (long long)p->width * p->height,
                            (long long)pol->max_pixels);
    }
    if (pol->max_steps > 0 && p->steps > pol->max_steps) {
        *field = "steps";
        return easel_seterr(EASEL_EINVAL,
                            "steps: %d is over this server's limit of %d "
                            "(--max-steps)",
                            p->steps, pol->max_steps);
    }
    return EASEL_OK;
}

/* What a request gives, then the server's defaults, then the model's. */
static easel_err resolve(job_params *p, const params_policy *pol, const char **field) {
    gen_params g;
    params_to_gen(p, &g);
    /* the pixels come later (the worker decodes the uploads): stand-ins make
     * the checks see that an image and a mask are given */
    static const uint8_t given[1];
    if (p->init_image[0]) g.init_image = given;
    if (p->mask[0]) g.mask = given;
    g.strength = p->strength; /* as given: a strength without an image is refused */
    easel_err e = gen_params_validate(&g, field); /* the ranges, named by the engine */
    if (e) return e;
    if (pol->resolve)
        e = pol->resolve(pol->resolve_ctx, &g, field);
    else
        engine_defaults(&g);
    if (e) return e;
    p->width = g.width, p->height = g.height, p->steps = g.steps, p->guidance = g.guidance;
    p->sampler = (int)g.sampler, p->schedule = (int)g.schedule;
    p->decoder = (int)g.decoder;
    p->strength = g.strength;
    return EASEL_OK;
}

easel_err params_parse(const cJSON *obj, const params_policy *pol, int allow_unknown, job_params *p,
                       const char **field) {
    params_policy none;
    if (!pol) params_policy_default(&none), pol = &none;
    memset(p, 0, sizeof *p);
    *field = NULL;
    if (!cJSON_IsObject(obj)) return bad(field, "body", "must be a JSON object");
    p->width = pol->width, p->height = pol->height, p->steps = pol->steps;
    p->guidance = pol->guidance, p->sampler = SAMPLER_DEFAULT, p->schedule = SCHEDULE_DEFAULT;
    p->seed = params_random64() >> 32;
    p->decoder = pol->decoder;
    p->strength = GEN_STRENGTH_DEFAULT;
    easel_err e = allow_unknown ? EASEL_OK : check_unknown(obj, field);
    if (!e) e = parse_fields(obj, p, field);
    if (!e) e = resolve(p, pol, field);
    if (!e) e = check_policy(p, pol, field);
    if (e) params_clear(p);
    return e;
}

/* Seeds up to 2^53 - 1 as exact integers (cJSON would print 15 significant digits). */
static cJSON *add_seed(cJSON *o, const char *name, uint64_t seed) {
    char num[32];
    snprintf(num, sizeof num, "%llu", (unsigned long long)seed);
    return cJSON_AddRawToObject(o, name, num);
}

/* "loras": [{"name", "weight"}], only when the job has any. */
static int add_loras(cJSON *o, const job_params *p) {
    if (!p->n_loras) return 1;
    cJSON *a = cJSON_AddArrayToObject(o, "loras");
    for (int i = 0; a && i < p->n_loras; i++) {
        char num[32]; /* the float's shortest decimal, not its double expansion */
        snprintf(num, sizeof num, "%.7g", (double)p->loras[i].weight);
        cJSON *e = cJSON_CreateObject();
        if (!e || !cJSON_AddStringToObject(e, "name", p->loras[i].name) ||
            !cJSON_AddNumberToObject(e, "weight", strtod(num, NULL))) {
            cJSON_Delete(e);
            return 0;
        }
        cJSON_AddItemToArray(a, e);
    }
    return a != NULL;
}

/* img2img / inpainting fields, only when the job has an init image. */
static int add_images(cJSON *o, const job_params *p) {
    if (!p->init_image[0]) return 1;
    char num[32]; /* strength as given: 0.6, not 0.59999999999999998 */
    snprintf(num, sizeof num, "%.15g", p->strength);
    return cJSON_AddStringToObject(o, "init_image", p->init_image) &&
           (!p->mask[0] || cJSON_AddStringToObject(o, "mask", p->mask)) &&
           cJSON_AddRawToObject(o, "strength", num) &&
           cJSON_AddStringToObject(o, "resize_mode",
                                   image_resize_mode_name((image_resize_mode)p->resize_mode)) &&
           (!p->mask[0] ||
            (cJSON_AddNumberToObject(o, "mask_blur", p->mask_blur) &&
             cJSON_AddBoolToObject(o, "keep_unmasked", p->keep_unmasked) &&
             cJSON_AddStringToObject(o, "mask_source",
                                     p->mask_source == MASK_FROM_ALPHA ? "alpha" : "luminance")));
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
             cJSON_AddStringToObject(o, "sampler", sampler_name((sampler_kind)p->sampler)) &&
             (p->schedule == SCHEDULE_DEFAULT ||
              cJSON_AddStringToObject(o, "schedule", schedule_name((sched_schedule)p->schedule))) &&
             (p->eta == 0.0f || cJSON_AddNumberToObject(o, "eta", p->eta)) &&
             (p->clip_skip <= 1 || cJSON_AddNumberToObject(o, "clip_skip", p->clip_skip)) &&
             add_seed(o, "seed", p->seed) &&
             (p->decoder == GEN_DECODER_VAE ||
              cJSON_AddStringToObject(o, "decoder", gen_decoder_name((gen_decoder)p->decoder))) &&
             (!p->room[0] || cJSON_AddStringToObject(o, "room", p->room)) && add_loras(o, p) &&
             add_images(o, p);
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
    easel_err e = params_parse(o, NULL, 1, p, &field);
    const cJSON *room = cJSON_GetObjectItemCaseSensitive(o, "room");
    if (!e && cJSON_IsString(room)) snprintf(p->room, sizeof p->room, "%s", room->valuestring);
    if (!e && !cJSON_GetObjectItemCaseSensitive(o, "seed"))
        e = easel_seterr(EASEL_EFORMAT, "stored parameters have no seed");
    cJSON_Delete(o);
    if (e) params_clear(p);
    return e;
}

void params_to_gen(const job_params *p, gen_params *g) {
    gen_params_default(g);
    g->prompt = p->prompt;
    g->negative_prompt = p->negative_prompt;
    g->width = p->width;
    g->height = p->height;
    g->steps = p->steps;
    g->guidance = p->guidance;
    g->sampler = (sampler_kind)p->sampler;
    g->schedule = (sched_schedule)p->schedule;
    g->eta = p->eta;
    g->clip_skip = p->clip_skip > 0 ? p->clip_skip : 1;
    g->seed = p->seed;
    g->decoder = (gen_decoder)p->decoder;
    g->n_loras = p->n_loras;
    memcpy(g->loras, p->loras, sizeof g->loras);
    /* init_image / mask pixels: the worker's (job_runner.load_images) */
    g->strength = p->init_image[0] ? p->strength : GEN_STRENGTH_DEFAULT;
    g->mask_blur = p->mask_blur;
    g->keep_unmasked = p->keep_unmasked;
}

easel_err params_copy(job_params *dst, const job_params *src) {
    *dst = *src;
    dst->prompt = src->prompt ? strdup(src->prompt) : NULL;
    dst->negative_prompt = src->negative_prompt ? strdup(src->negative_prompt) : NULL;
    dst->webhook = src->webhook ? strdup(src->webhook) : NULL;
    if ((src->prompt && !dst->prompt) || (src->negative_prompt && !dst->negative_prompt) ||
        (src->webhook && !dst->webhook)) {
        params_clear(dst);
        return easel_seterr(EASEL_ENOMEM, "out of memory");
    }
    return EASEL_OK;
}

void params_clear(job_params *p) {
    free(p->prompt);
    free(p->negative_prompt);
    free(p->webhook);
    p->prompt = p->negative_prompt = p->webhook = NULL;
}
