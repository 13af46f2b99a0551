/* AUTOMATIC1111's /sdapi/v1 on the durable queue, for the clients written
 * for it (Open WebUI's default image engine, Krita and Photoshop plug-ins,
 * bots, webuiapi scripts): txt2img (batch_size x n_iter images = jobs,
 * waited for without holding an HTTP thread) answered as A1111 does
 * ({images, parameters, info: a JSON string with seeds and infotexts});
 * progress, interrupt and skip for the current request of this API;
 * options, sd-models, samplers, schedulers, loras, scripts. A1111's names
 * ("Euler a", "DPM++ 2M", "Karras") map to the engine's; unknown request
 * fields are ignored as A1111 ignores them; errors in FastAPI's shape. */
#include <ctype.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "a1111.h"
#include "batch.h"

#define A1111_SYNC_TIMEOUT_S 3600

/* ---- names ---- */

typedef struct {
    const char *name, *aliases[3];
    sampler_kind kind;
    sched_schedule schedule; /* the schedule an old combined name implies */
} a1111_sampler;

static const a1111_sampler samplers[] = {
    {"Euler a", {"k_euler_a", "k_euler_ancestral", NULL}, SAMPLER_EULER_A, SCHEDULE_DEFAULT},
    {"Euler", {"k_euler", NULL}, SAMPLER_EULER, SCHEDULE_DEFAULT},
    {"Heun", {"k_heun", NULL}, SAMPLER_HEUN, SCHEDULE_DEFAULT},
    {"DPM++ 2M", {"k_dpmpp_2m", NULL}, SAMPLER_DPMPP_2M, SCHEDULE_DEFAULT},
    {"DPM++ 2M Karras", {"k_dpmpp_2m_ka", NULL}, SAMPLER_DPMPP_2M, SCHEDULE_KARRAS},
    {"UniPC", {NULL}, SAMPLER_UNIPC, SCHEDULE_DEFAULT},
    {"DDIM", {NULL}, SAMPLER_DDIM, SCHEDULE_DEFAULT},
    {"PLMS", {NULL}, SAMPLER_PNDM, SCHEDULE_DEFAULT},
    {"LCM", {NULL}, SAMPLER_LCM, SCHEDULE_DEFAULT},
    {"TCD", {NULL}, SAMPLER_TCD, SCHEDULE_DEFAULT},
};
#define N_SAMPLERS (sizeof samplers / sizeof samplers[0])

typedef struct {
    const char *name, *label;
    sched_schedule schedule;
} a1111_schedule;

static const a1111_schedule schedules[] = {
    {"automatic", "Automatic", SCHEDULE_DEFAULT},
    {"uniform", "Uniform", SCHEDULE_UNIFORM},
    {"karras", "Karras", SCHEDULE_KARRAS},
    {"exponential", "Exponential", SCHEDULE_EXPONENTIAL},
    {"sgm_uniform", "SGM Uniform", SCHEDULE_TRAILING},
};
#define N_SCHEDULES (sizeof schedules / sizeof schedules[0])

static const a1111_sampler *find_sampler(const char *s) {
    for (size_t i = 0; i < N_SAMPLERS; i++) {
        if (!strcasecmp(s, samplers[i].name)) return &samplers[i];
        for (int k = 0; samplers[i].aliases[k]; k++)
            if (!strcasecmp(s, samplers[i].aliases[k])) return &samplers[i];
    }
    return NULL;
}

static const a1111_schedule *find_schedule(const char *s) {
    for (size_t i = 0; i < N_SCHEDULES; i++)
        if (!strcasecmp(s, schedules[i].name) || !strcasecmp(s, schedules[i].label))
            return &schedules[i];
    return NULL;
}

/* A1111's name for a sampler (the engine's when it has none). */
static const char *sampler_label(sampler_kind k) {
    for (size_t i = 0; i < N_SAMPLERS; i++)
        if (samplers[i].kind == k && samplers[i].schedule == SCHEDULE_DEFAULT)
            return samplers[i].name;
    return sampler_name(k);
}

static const char *schedule_label(sched_schedule s) {
    for (size_t i = 0; i < N_SCHEDULES; i++)
        if (schedules[i].schedule == s) return schedules[i].label;
    return schedule_name(s);
}

/* ---- the API's shared state: its requests in flight, its options ---- */

typedef struct a1111_req a1111_req;

struct a1111_state {
    pthread_mutex_t mu;
    a1111_req *active; /* newest first */
    int clip_skip;     /* the CLIP_stop_at_last_layers option (1) */
    unsigned long long started;
};

struct a1111_req {
    a1111_state *st;
    job_batch *b;
    a1111_req *next;
    int interrupted, skipped, send_images, img2img;
    char timestamp[16];
    cJSON *parameters; /* the request as it ran, for the answer */
    char prompt[GEN_MAX_PROMPT_BYTES + 1], negative[GEN_MAX_PROMPT_BYTES + 1];
    char sampler[32], schedule[32];
    job_params p;
};

a1111_state *a1111_state_create(void) {
    a1111_state *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    pthread_mutex_init(&s->mu, NULL);
    s->clip_skip = 1;
    return s;
}

void a1111_state_free(a1111_state *s) {
    if (!s) return;
    pthread_mutex_destroy(&s->mu);
    free(s);
}

static void req_free(void *p) {
    a1111_req *q = p;
    pthread_mutex_lock(&q->st->mu);
    for (a1111_req **pp = &q->st->active; *pp; pp = &(*pp)->next)
        if (*pp == q) {
            *pp = q->next;
            break;
        }
    pthread_mutex_unlock(&q->st->mu);
    cJSON_Delete(q->parameters);
    params_clear(&q->p);
    free(q);
}

/* ---- txt2img ---- */

static enum MHD_Result detail(http_req *r, unsigned status, const char *code, const char *msg,
                              const char *field) {
    return http_error(r, status, code, msg, field);
}

static int num(const cJSON *o, const char *k, double *v) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!it || cJSON_IsNull(it)) return 0;
    if (!cJSON_IsNumber(it)) return -1;
    *v = it->valuedouble;
    return 1;
}

static const char *text(const cJSON *o, const char *k) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(it) ? it->valuestring : NULL;
}

/* The native request from A1111's fields (unknown ones ignored). NULL after answering. */
static cJSON *to_native(http_req *r, const cJSON *in, a1111_req *q, int *n,
                        enum MHD_Result *answered) {
    cJSON *nat = cJSON_CreateObject();
    if (!nat) return NULL;
    const char *prompt = text(in, "prompt"), *neg = text(in, "negative_prompt");
    cJSON_AddStringToObject(nat, "prompt", prompt ? prompt : "");
    if (neg && neg[0]) cJSON_AddStringToObject(nat, "negative_prompt", neg);
    snprintf(q->prompt, sizeof q->prompt, "%s", prompt ? prompt : "");
    snprintf(q->negative, sizeof q->negative, "%s", neg ? neg : "");
    static const struct {
        const char *a1111, *native;
    } nums[] = {{"steps", "steps"},
                {"width", "width"},
                {"height", "height"},
                {"cfg_scale", "guidance_scale"},
                {"eta", "eta"}};
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
        double v;
        int k = num(in, nums[i].a1111, &v);
        if (k < 0) {
            char msg[120];
            snprintf(msg, sizeof msg, "%s: must be a number", nums[i].a1111);
            *answered = detail(r, 422, "invalid_field", msg, nums[i].a1111);
            cJSON_Delete(nat);
            return NULL;
        }
        if (k &&
            !(!strcmp(nums[i].a1111, "eta") && v > 1)) /* A1111 takes eta > 1; ours stops at 1 */
            cJSON_AddNumberToObject(nat, nums[i].native, v);
    }
    double seed;
    if (num(in, "seed", &seed) == 1 && seed >= 0) cJSON_AddNumberToObject(nat, "seed", seed);
    const char *sn = text(in, "sampler_name");
    if (!sn || !sn[0]) sn = text(in, "sampler_index");
    const a1111_sampler *smp = sn && sn[0] ? find_sampler(sn) : NULL;
    if (sn && sn[0] && !smp) {
        char msg[600], list[400] = "";
        for (size_t i = 0; i < N_SAMPLERS; i++)
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "",
                     samplers[i].name);
        snprintf(msg, sizeof msg, "Sampler not found: %.60s (available: %s)", sn, list);
        *answered = detail(r, 404, "sampler_not_found", msg, NULL);
        cJSON_Delete(nat);
        return NULL;
    }
    sched_schedule schedule = smp ? smp->schedule : SCHEDULE_DEFAULT;
    const char *sc = text(in, "scheduler");
    if (sc && sc[0]) {
        const a1111_schedule *s = find_schedule(sc);
        if (!s) {
            char msg[300];
            snprintf(msg, sizeof msg,
                     "scheduler: '%.60s' is not available (Automatic, Uniform, Karras, "
                     "Exponential, SGM Uniform)",
                     sc);
            *answered = detail(r, 422, "invalid_field", msg, "scheduler");
            cJSON_Delete(nat);
            return NULL;
        }
        if (s->schedule != SCHEDULE_DEFAULT) schedule = s->schedule;
    }
    if (smp) cJSON_AddStringToObject(nat, "sampler", sampler_name(smp->kind));
    if (schedule != SCHEDULE_DEFAULT)
        cJSON_AddStringToObject(nat, "schedule", schedule_name(schedule));
    snprintf(q->sampler, sizeof q->sampler, "%s", smp ? smp->name : "");
    snprintf(q->schedule, sizeof q->schedule, "%s", schedule_label(schedule));
    const cJSON *hr = cJSON_GetObjectItemCaseSensitive(in, "enable_hr");
    const char *script = text(in, "script_name");
    if (cJSON_IsTrue(hr) || (script && script[0])) {
        *answered = detail(r, 422, "unsupported",
                           cJSON_IsTrue(hr) ? "enable_hr: hires fix is not available here"
                                            : "script_name: scripts are not available here",
                           cJSON_IsTrue(hr) ? "enable_hr" : "script_name");
        cJSON_Delete(nat);
        return NULL;
    }
    double bs = 1, ni = 1;
    if (num(in, "batch_size", &bs) < 0 || num(in, "n_iter", &ni) < 0 || bs < 1 || ni < 1 ||
        bs != floor(bs) || ni != floor(ni) || bs * ni > BATCH_MAX) {
        char msg[160];
        snprintf(msg, sizeof msg, "batch_size x n_iter: from 1 to %d images", BATCH_MAX);
        *answered = detail(r, 422, "invalid_field", msg, "batch_size");
        cJSON_Delete(nat);
        return NULL;
    }
    *n = (int)(bs * ni);
    return nat;
}

/* "prompt\nNegative prompt: ...\nSteps: 20, Sampler: Euler a, ..." as A1111 writes it. */
static void infotext(const a1111_req *q, const char *model, uint64_t seed, char *out, size_t n) {
    size_t k = (size_t)snprintf(out, n, "%s\n", q->prompt);
    if (q->negative[0] && k < n)
        k += (size_t)snprintf(out + k, n - k, "Negative prompt: %s\n", q->negative);
    if (k >= n) return;
    k += (size_t)snprintf(out + k, n - k,
                          "Steps: %d, Sampler: %s, Schedule type: %s, CFG scale: %g, Seed: %llu, "
                          "Size: %dx%d, Model: %s",
                          q->p.steps, sampler_label((sampler_kind)q->p.sampler), q->schedule,
                          (double)q->p.guidance, (unsigned long long)seed, q->p.width, q->p.height,
                          model);
    if (q->p.clip_skip > 1 && k < n)
        k += (size_t)snprintf(out + k, n - k, ", Clip skip: %d", q->p.clip_skip);
    if (q->img2img && k < n)
        k += (size_t)snprintf(out + k, n - k, ", Denoising strength: %g", q->p.strength);
    if (q->img2img && q->p.mask[0] && k < n)
        k += (size_t)snprintf(out + k, n - k, ", Mask blur: %d", q->p.mask_blur);
    if (k < n) snprintf(out + k, n - k, ", Version: easel %s", EASEL_VERSION);
}

static cJSON *info_json(http_req *r, const a1111_req *q, job_batch *b) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    const char *model = server_model_id(r->srv);
    cJSON *prompts = cJSON_AddArrayToObject(o, "all_prompts");
    cJSON *negs = cJSON_AddArrayToObject(o, "all_negative_prompts");
    cJSON *seeds = cJSON_AddArrayToObject(o, "all_seeds");
    cJSON *subseeds = cJSON_AddArrayToObject(o, "all_subseeds");
    cJSON *infos = cJSON_AddArrayToObject(o, "infotexts");
    for (int i = 0; i < b->n; i++) {
        char it[GEN_MAX_PROMPT_BYTES * 2 + 400];
        infotext(q, model, b->seeds[i], it, sizeof it);
        cJSON_AddItemToArray(prompts, cJSON_CreateString(q->prompt));
        cJSON_AddItemToArray(negs, cJSON_CreateString(q->negative));
        cJSON_AddItemToArray(seeds, cJSON_CreateNumber((double)b->seeds[i]));
        cJSON_AddItemToArray(subseeds, cJSON_CreateNumber((double)b->seeds[i]));
        cJSON_AddItemToArray(infos, cJSON_CreateString(it));
    }
    cJSON_AddStringToObject(o, "prompt", q->prompt);
    cJSON_AddStringToObject(o, "negative_prompt", q->negative);
    cJSON_AddNumberToObject(o, "seed", (double)b->seeds[0]);
    cJSON_AddNumberToObject(o, "subseed", (double)b->seeds[0]);
    cJSON_AddNumberToObject(o, "subseed_strength", 0);
    cJSON_AddNumberToObject(o, "width", q->p.width);
    cJSON_AddNumberToObject(o, "height", q->p.height);
    cJSON_AddStringToObject(o, "sampler_name", sampler_label((sampler_kind)q->p.sampler));
    cJSON_AddNumberToObject(o, "cfg_scale", q->p.guidance);
    cJSON_AddNumberToObject(o, "steps", q->p.steps);
    cJSON_AddNumberToObject(o, "batch_size", b->n);
    cJSON_AddFalseToObject(o, "restore_faces");
    cJSON_AddNullToObject(o, "face_restoration_model");
    cJSON_AddStringToObject(o, "sd_model_name", model);
    cJSON_AddNullToObject(o, "sd_model_hash");
    cJSON_AddNumberToObject(o, "seed_resize_from_w", -1);
    cJSON_AddNumberToObject(o, "seed_resize_from_h", -1);
    if (q->img2img)
        cJSON_AddNumberToObject(o, "denoising_strength", q->p.strength);
    else
        cJSON_AddNullToObject(o, "denoising_strength");
    cJSON *extra = cJSON_AddObjectToObject(o, "extra_generation_params");
    if (extra) cJSON_AddStringToObject(extra, "Schedule type", q->schedule);
    cJSON_AddNumberToObject(o, "index_of_first_image", 0);
    cJSON_AddArrayToObject(o, "styles");
    cJSON_AddStringToObject(o, "job_timestamp", q->timestamp);
    cJSON_AddNumberToObject(o, "clip_skip", q->p.clip_skip);
    cJSON_AddFalseToObject(o, "is_using_inpainting_conditioning");
    cJSON_AddStringToObject(o, "version", "easel " EASEL_VERSION);
    return o;
}

static enum MHD_Result answer(http_req *r, job_batch *b) {
    a1111_req *q = b->api;
    cJSON *o = cJSON_CreateObject(), *imgs = o ? cJSON_AddArrayToObject(o, "images") : NULL;
    if (!imgs) {
        cJSON_Delete(o);
        return detail(r, 500, "out_of_memory", "out of memory", NULL);
    }
    int failed = 0;
    char why[600] = "";
    for (int i = 0; i < b->n; i++) {
        batch_item it;
        if (batch_item_get(b, i, &it) || it.status != JOB_COMPLETED) {
            if (it.status == JOB_FAILED && !failed++) snprintf(why, sizeof why, "%s", it.error);
            continue; /* interrupted or skipped: A1111 answers with what it has */
        }
        if (!q->send_images) continue;
        uint8_t *png = NULL;
        size_t len = 0;
        char *b64 = NULL;
        if (!batch_image(b, i, server_cfg(r->srv)->images_dir, IMG_PNG, 100, &png, &len))
            b64 = http_base64(png, len);
        free(png);
        if (b64) cJSON_AddItemToArray(imgs, cJSON_CreateString(b64));
        free(b64);
    }
    b->answered = 1;
    if (failed && !q->interrupted) {
        cJSON_Delete(o);
        char msg[700];
        snprintf(msg, sizeof msg, "generation failed: %s", why);
        return detail(r, 500, "generation_failed", msg, NULL);
    }
    cJSON_AddItemToObject(o, "parameters", q->parameters);
    q->parameters = NULL;
    cJSON *info = info_json(r, q, b);
    char *text = info ? cJSON_PrintUnformatted(info) : NULL;
    cJSON_Delete(info);
    cJSON_AddStringToObject(o, "info", text ? text : "{}");
    free(text);
    return http_json(r, 200, o);
}

static enum MHD_Result resume(http_req *r) {
    job_batch *b = r->park_ctx;
    if (!server_jobs(r->srv) || server_stopping(r->srv)) return http_not_ready(r);
    batch_state s = batch_poll(b);
    if (s == BATCH_DONE) return answer(r, b);
    if (s == BATCH_TIMED_OUT)
        return detail(r, 504, "timeout", "the images took longer than the request may wait", NULL);
    return http_park(r, resume, b, batch_free);
}

/* img2img's own fields -> the native request's: init_images[0] and mask
 * (base64, stored as uploads in *made), denoising_strength, mask_blur,
 * resize_mode 0-2 (3, latent upscale, resizes as 0), the overlay A1111 pastes
 * back (keep_unmasked). inpainting_fill, inpaint_full_res and their padding
 * are accepted and ignored: the masked area starts from the image's own
 * latents ("original") at the job's size. 1 after answering. */
static int img2img_fields(http_req *r, const cJSON *in, cJSON *nat, http_made_uploads *made,
                          enum MHD_Result *answered) {
    const cJSON *imgs = cJSON_GetObjectItemCaseSensitive(in, "init_images");
    const cJSON *first = cJSON_IsArray(imgs) ? cJSON_GetArrayItem(imgs, 0) : NULL;
    if (!cJSON_IsString(first)) {
        *answered =
            detail(r, 422, "invalid_field", "init_images: a list of base64 images", "init_images");
        return 1;
    }
    cJSON_AddStringToObject(nat, "init_image", first->valuestring);
    const char *mask = text(in, "mask");
    if (mask && mask[0]) cJSON_AddStringToObject(nat, "mask", mask);
    double v;
    if (num(in, "denoising_strength", &v) == 1)
        cJSON_AddNumberToObject(nat, "strength", v);
    else
        cJSON_AddNumberToObject(nat, "strength", 0.75); /* A1111's default */
    double blur = 4;                                    /* A1111's default */
    if (num(in, "mask_blur", &blur) < 0) {
        *answered = detail(r, 422, "invalid_field", "mask_blur: must be a number", "mask_blur");
        return 1;
    }
    if (mask && mask[0]) {
        cJSON_AddNumberToObject(nat, "mask_blur", blur);
        cJSON_AddTrueToObject(nat, "keep_unmasked");
    }
    double inv = 0;
    if (num(in, "inpainting_mask_invert", &inv) == 1 && inv != 0) {
        *answered = detail(r, 422, "unsupported",
                           "inpainting_mask_invert: only 0 (white = repaint); invert the mask",
                           "inpainting_mask_invert");
        return 1;
    }
    double rm = 0;
    if (num(in, "resize_mode", &rm) < 0 || rm < 0 || rm > 3 || rm != floor(rm)) {
        *answered = detail(r, 422, "invalid_field",
                           "resize_mode: 0 (just resize), 1 (crop and resize), 2 (resize and "
                           "fill) or 3 (latent upscale)",
                           "resize_mode");
        return 1;
    }
    static const char *modes[] = {"resize", "crop", "fill", "resize"};
    cJSON_AddStringToObject(nat, "resize_mode", modes[(int)rm]);
    if (http_resolve_images(r, nat, made, answered)) return 1;
    return 0;
}

/* txt2img and img2img: the request -> n jobs, the answer when they end. */
static enum MHD_Result generate(http_req *r, int img2img) {
    enum MHD_Result answered = MHD_NO;
    cJSON *in = http_body_json(r, &answered);
    if (!in) return answered;
    http_made_uploads made = {.image_name = "init_images", .mask_name = "mask"};
    a1111_state *st = server_a1111(r->srv);
    a1111_req *q = calloc(1, sizeof *q);
    if (!q) {
        cJSON_Delete(in);
        return detail(r, 500, "out_of_memory", "out of memory", NULL);
    }
    q->st = st;
    int n = 1;
    cJSON *nat = to_native(r, in, q, &n, &answered);
    const cJSON *send = cJSON_GetObjectItemCaseSensitive(in, "send_images");
    q->send_images = !cJSON_IsFalse(send);
    const cJSON *ov = cJSON_GetObjectItemCaseSensitive(in, "override_settings");
    double clip = st->clip_skip;
    if (cJSON_IsObject(ov)) num(ov, "CLIP_stop_at_last_layers", &clip);
    if (nat && img2img && img2img_fields(r, in, nat, &made, &answered)) {
        cJSON_Delete(nat);
        nat = NULL;
    }
    q->img2img = img2img;
    if (img2img) cJSON_DeleteItemFromObjectCaseSensitive(in, "init_images"); /* not echoed */
    q->parameters = in; /* echoed back, as A1111 does */
    if (!nat) {
        req_free(q);
        return answered;
    }
    if (clip > 1) cJSON_AddNumberToObject(nat, "clip_skip", clip);
    const char *field = NULL;
    easel_err e = params_parse(nat, &server_cfg(r->srv)->policy, 0, &q->p, &field);
    cJSON_Delete(nat);
    if (e) {
        char msg[400];
        snprintf(msg, sizeof msg, "%s", easel_errmsg());
        const char *f = !field                             ? NULL
                        : !strcmp(field, "guidance_scale") ? "cfg_scale"
                        : !strcmp(field, "strength")       ? "denoising_strength"
                        : !strcmp(field, "init_image")     ? "init_images"
                                                           : field;
        req_free(q);
        http_made_uploads_drop(r, &made);
        return detail(r, 422, "invalid_field", msg, f);
    }
    job_batch *b = calloc(1, sizeof *b);
    if (!b) {
        req_free(q);
        http_made_uploads_drop(r, &made);
        return detail(r, 500, "out_of_memory", "out of memory", NULL);
    }
    e = batch_submit(server_jobs(r->srv), &q->p, n, A1111_SYNC_TIMEOUT_S, b);
    b->api = q, b->api_free = req_free;
    q->b = b;
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(q->timestamp, sizeof q->timestamp, "%Y%m%d%H%M%S", &tm);
    if (e) {
        b->answered = 1;
        batch_free(b);
        http_made_uploads_drop(r, &made);
        return http_refuse_submit(r, e);
    }
    pthread_mutex_lock(&st->mu);
    q->next = st->active, st->active = q;
    st->started++;
    pthread_mutex_unlock(&st->mu);
    r->park_ctx = b, r->park_free = batch_free;
    return resume(r);
}

enum MHD_Result a1111_txt2img(http_req *r) {
    return generate(r, 0);
}

enum MHD_Result a1111_img2img(http_req *r) {
    return generate(r, 1);
}

/* ---- progress, interrupt, skip ---- */

/* The request of this API that is running (else the newest queued); NULL when idle. */
static a1111_req *current(a1111_state *st, int *job_no, batch_item *item) {
    a1111_req *best = NULL;
    for (a1111_req *q = st->active; q; q = q->next) {
        for (int i = 0; i < q->b->n; i++) {
            batch_item it;
            if (batch_item_get(q->b, i, &it) || it.status >= JOB_COMPLETED) continue;
            if (it.status == JOB_PROCESSING || !best) {
                best = q, *job_no = i, *item = it;
                if (it.status == JOB_PROCESSING) return q;
            }
            break;
        }
    }
    return best;
}

typedef struct {
    uint8_t *data;
    size_t len;
} preview_copy;

static void copy_preview(void *user, const job *j, const job_extra *x) {
    (void)x;
    preview_copy *c = user;
    if (j->preview.data && (c->data = malloc(j->preview.len)))
        memcpy(c->data, j->preview.data, j->preview.len), c->len = j->preview.len;
}

/* current_image: base64 of the job's live preview (as GET /v1/jobs/{id}/preview
 * serves it: JPEG unless --preview-format png), or NULL. */
static char *current_image(jobs *js, const char *id) {
    preview_copy c = {0};
    if (!js || !id[0] || jobs_view(js, id, copy_preview, &c) || !c.data) return NULL;
    char *b64 = http_base64(c.data, c.len);
    free(c.data);
    return b64;
}

enum MHD_Result a1111_progress(http_req *r) {
    a1111_state *st = server_a1111(r->srv);
    cJSON *o = cJSON_CreateObject(), *s = o ? cJSON_AddObjectToObject(o, "state") : NULL;
    if (!s) {
        cJSON_Delete(o);
        return detail(r, 500, "out_of_memory", "out of memory", NULL);
    }
    pthread_mutex_lock(&st->mu);
    int job_no = 0;
    batch_item it = {0};
    a1111_req *q = current(st, &job_no, &it);
    double progress = 0, eta = 0;
    int count = 0;
    if (q) {
        count = q->b->n;
        double within = it.steps > 0 ? (double)it.step / it.steps : 0;
        progress = (job_no + within) / count;
        eta = it.eta_s > 0 ? it.eta_s : 0;
    }
    cJSON_AddNumberToObject(o, "progress", progress);
    cJSON_AddNumberToObject(o, "eta_relative", eta);
    cJSON_AddBoolToObject(s, "skipped", q && q->skipped);
    cJSON_AddBoolToObject(s, "interrupted", q && q->interrupted);
    cJSON_AddStringToObject(s, "job", q ? q->b->ids[job_no] : "");
    cJSON_AddNumberToObject(s, "job_count", count);
    cJSON_AddStringToObject(s, "job_timestamp", q ? q->timestamp : "0");
    cJSON_AddNumberToObject(s, "job_no", job_no);
    cJSON_AddNumberToObject(s, "sampling_step", q ? it.step : 0);
    cJSON_AddNumberToObject(s, "sampling_steps", q ? it.steps : 0);
    char id[40] = "";
    if (q) snprintf(id, sizeof id, "%s", q->b->ids[job_no]);
    pthread_mutex_unlock(&st->mu);
    const char *skip = http_query(r, "skip_current_image");
    char *img = skip && !strcasecmp(skip, "true") ? NULL : current_image(server_jobs(r->srv), id);
    if (img)
        cJSON_AddStringToObject(o, "current_image", img);
    else
        cJSON_AddNullToObject(o, "current_image");
    free(img);
    cJSON_AddNullToObject(o, "textinfo");
    return http_json(r, 200, o);
}

/* interrupt: the current request's remaining images; skip: its current image. */
static enum MHD_Result stop_current(http_req *r, int skip) {
    a1111_state *st = server_a1111(r->srv);
    pthread_mutex_lock(&st->mu);
    int job_no = 0;
    batch_item it;
    a1111_req *q = current(st, &job_no, &it);
    if (q) {
        if (skip)
            q->skipped = 1, batch_cancel(q->b, job_no);
        else
            q->interrupted = 1, batch_cancel(q->b, -1);
    }
    pthread_mutex_unlock(&st->mu);
    return http_json(r, 200, cJSON_CreateObject());
}

enum MHD_Result a1111_interrupt(http_req *r) {
    return stop_current(r, 0);
}
enum MHD_Result a1111_skip(http_req *r) {
    return stop_current(r, 1);
}

/* ---- the lists and options ---- */

enum MHD_Result a1111_samplers(http_req *r) {
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; a && i < N_SAMPLERS; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", samplers[i].name);
        cJSON *al = cJSON_AddArrayToObject(o, "aliases");
        for (int k = 0; samplers[i].aliases[k]; k++)
            cJSON_AddItemToArray(al, cJSON_CreateString(samplers[i].aliases[k]));
        cJSON_AddObjectToObject(o, "options");
        cJSON_AddItemToArray(a, o);
    }
    return http_json(r, 200, a);
}

enum MHD_Result a1111_schedulers(http_req *r) {
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; a && i < N_SCHEDULES; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", schedules[i].name);
        cJSON_AddStringToObject(o, "label", schedules[i].label);
        cJSON_AddNullToObject(o, "aliases");
        cJSON_AddNumberToObject(o, "default_rho", -1);
        cJSON_AddFalseToObject(o, "need_inner_model");
        cJSON_AddItemToArray(a, o);
    }
    return http_json(r, 200, a);
}

enum MHD_Result a1111_sd_models(http_req *r) {
    cJSON *a = cJSON_CreateArray(), *o = cJSON_CreateObject();
    const char *id = server_model_id(r->srv);
    if (o) {
        cJSON_AddStringToObject(o, "title", id);
        cJSON_AddStringToObject(o, "model_name", id);
        cJSON_AddNullToObject(o, "hash");
        cJSON_AddNullToObject(o, "sha256");
        cJSON_AddStringToObject(o, "filename", id);
        cJSON_AddNullToObject(o, "config");
    }
    cJSON_AddItemToArray(a, o);
    return http_json(r, 200, a);
}

enum MHD_Result a1111_empty_list(http_req *r) {
    return http_json(r, 200, cJSON_CreateArray());
}

enum MHD_Result a1111_scripts(http_req *r) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddArrayToObject(o, "txt2img");
    cJSON_AddArrayToObject(o, "img2img");
    return http_json(r, 200, o);
}

enum MHD_Result a1111_refresh(http_req *r) {
    return http_json(r, 200, cJSON_CreateNull());
}

static cJSON *options_json(http_req *r) {
    a1111_state *st = server_a1111(r->srv);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "sd_model_checkpoint", server_model_id(r->srv));
    cJSON_AddNullToObject(o, "sd_checkpoint_hash");
    pthread_mutex_lock(&st->mu);
    cJSON_AddNumberToObject(o, "CLIP_stop_at_last_layers", st->clip_skip);
    pthread_mutex_unlock(&st->mu);
    cJSON_AddStringToObject(o, "samples_format", "png");
    cJSON_AddNumberToObject(o, "eta_ddim", 0);
    cJSON_AddNumberToObject(o, "eta_ancestral", 1);
    return o;
}

enum MHD_Result a1111_options_get(http_req *r) {
    return http_json(r, 200, options_json(r));
}

/* Sets what it can: the model (only the loaded one, until several are
 * resident) and CLIP skip; other options are accepted and ignored. */
enum MHD_Result a1111_options_set(http_req *r) {
    enum MHD_Result answered = MHD_NO;
    cJSON *in = http_body_json(r, &answered);
    if (!in) return answered;
    const char *ck = text(in, "sd_model_checkpoint"), *id = server_model_id(r->srv);
    if (ck) {
        size_t n = strlen(id);
        int same = !strcmp(ck, id) || (!strncmp(ck, id, n) && (ck[n] == ' ' || ck[n] == '.'));
        if (!same) {
            char msg[400];
            snprintf(msg, sizeof msg,
                     "sd_model_checkpoint: '%.120s' is not loaded (this server runs '%s' only)", ck,
                     id);
            cJSON_Delete(in);
            return detail(r, 400, "model_not_loaded", msg, "sd_model_checkpoint");
        }
    }
    double clip;
    int k = num(in, "CLIP_stop_at_last_layers", &clip);
    if (k < 0 || (k && (clip < 1 || clip > 12 || clip != floor(clip)))) {
        cJSON_Delete(in);
        return detail(r, 422, "invalid_field", "CLIP_stop_at_last_layers: 1 to 12",
                      "CLIP_stop_at_last_layers");
    }
    if (k) {
        a1111_state *st = server_a1111(r->srv);
        pthread_mutex_lock(&st->mu);
        st->clip_skip = (int)clip;
        pthread_mutex_unlock(&st->mu);
    }
    cJSON_Delete(in);
    return http_json(r, 200, cJSON_CreateNull());
}
