/* OpenAI's Images API on the durable queue, for clients built on the openai
 * SDKs (Open WebUI, LibreChat, LocalAI clients): POST /v1/images/generations
 * (n images = n jobs, waited for without holding an HTTP thread, answered as
 * b64_json or as signed, expiring URLs served by GET /v1/images/files/...),
 * POST /v1/images/edits (multipart: image, mask, the same fields; the
 * mask's transparent pixels are repainted, as OpenAI's are; with no mask an
 * image with transparency is its own mask, an opaque one is restyled as
 * img2img). Errors in OpenAI's shape. easel's own fields (negative_prompt,
 * seed, steps, guidance_scale, sampler, schedule, eta; strength for edits)
 * are accepted as extra fields, as other local servers do. */
#include <math.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "batch.h"
#include "openai.h"

#define OPENAI_MAX_N 10
#define OPENAI_URL_TTL_S 3600
#define OPENAI_SYNC_TIMEOUT_S 600

/* Names clients send for "the image model": the loaded one answers them all. */
static const char *model_aliases[] = {"dall-e-2",         "dall-e-3",         "gpt-image-1",
                                      "gpt-image-1-mini", "stable-diffusion", NULL};

static const char *known[] = {
    "prompt", "model", "n", "size", "response_format", "output_format", "output_compression",
    "quality", "style", "user", "background", "moderation",
    /* easel's extras */
    "negative_prompt", "seed", "steps", "guidance_scale", "sampler", "schedule", "eta",
    /* edits (their images come as files, not in this list) */
    "strength", NULL};
static const char *passed_through[] = {"negative_prompt", "seed", "guidance_scale", "sampler",
                                       "schedule",        "eta",  "strength",       NULL};

typedef struct {
    image_format format;
    int quality, b64, width, height;
    char prompt[GEN_MAX_PROMPT_BYTES + 1], size[32], quality_name[16];
} openai_req;

static enum MHD_Result bad(http_req *r, const char *param, const char *fmt, const char *arg) {
    char msg[400];
    snprintf(msg, sizeof msg, fmt, arg);
    return http_error(r, 400, param ? "invalid_value" : "invalid_request", msg, param);
}

static int is_one_of(const char *s, const char *const *set) {
    for (int i = 0; set[i]; i++)
        if (!strcmp(s, set[i])) return 1;
    return 0;
}

static const char *str_field(const cJSON *o, const char *k) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(it) ? it->valuestring : NULL;
}

static int present(const cJSON *o, const char *k) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, k);
    return it && !cJSON_IsNull(it);
}

/* The model's default steps, for quality (from /v1/models' view of it). */
static int model_default_steps(http_req *r) {
    cJSON *m = server_model_json(r->srv);
    const cJSON *d = m ? cJSON_GetObjectItemCaseSensitive(m, "default_steps") : NULL;
    int v = cJSON_IsNumber(d) ? (int)d->valuedouble : 20;
    cJSON_Delete(m);
    return v > 0 ? v : 20;
}

/* Checks OpenAI's own fields and builds the native request (prompt, size,
 * steps from quality, the extras). NULL after answering. */
static cJSON *to_native(http_req *r, const cJSON *in, openai_req *q, int *n,
                        enum MHD_Result *answered) {
    for (const cJSON *it = in->child; it; it = it->next)
        if (!is_one_of(it->string, known)) {
            char msg[160];
            snprintf(msg, sizeof msg, "Unrecognized request argument supplied: %.80s", it->string);
            *answered = http_error(r, 400, "unknown_parameter", msg, it->string);
            return NULL;
        }
    const char *prompt = str_field(in, "prompt"), *model = str_field(in, "model");
    if (!prompt || !prompt[0]) {
        *answered = bad(r, "prompt", "%s", "prompt: required (a non-empty string)");
        return NULL;
    }
    if (present(in, "model") &&
        (!model || (strcmp(model, server_model_id(r->srv)) && !is_one_of(model, model_aliases)))) {
        char msg[300];
        snprintf(msg, sizeof msg, "model: '%.100s' is not served here (the loaded model is '%s')",
                 model ? model : "(not a string)", server_model_id(r->srv));
        *answered = http_error(r, 400, "model_not_found", msg, "model");
        return NULL;
    }
    const cJSON *nn = cJSON_GetObjectItemCaseSensitive(in, "n");
    *n = 1;
    if (nn && !cJSON_IsNull(nn)) {
        if (!cJSON_IsNumber(nn) || nn->valuedouble != floor(nn->valuedouble) ||
            nn->valuedouble < 1 || nn->valuedouble > OPENAI_MAX_N) {
            *answered = bad(r, "n", "n: an integer from 1 to %s", "10");
            return NULL;
        }
        *n = (int)nn->valuedouble;
    }
    const char *rf = str_field(in, "response_format");
    if (present(in, "response_format") && (!rf || (strcmp(rf, "url") && strcmp(rf, "b64_json")))) {
        *answered = bad(r, "response_format", "%s", "response_format: url or b64_json");
        return NULL;
    }
    q->b64 = rf && !strcmp(rf, "b64_json");
    const char *of = str_field(in, "output_format");
    int fmt = of ? image_format_parse(of) : IMG_PNG;
    if ((present(in, "output_format") && !of) || fmt < 0 || (of && !strcmp(of, "jpg"))) {
        *answered = bad(r, "output_format", "%s", "output_format: png, jpeg or webp");
        return NULL;
    }
    q->format = (image_format)fmt;
    const cJSON *oc = cJSON_GetObjectItemCaseSensitive(in, "output_compression");
    q->quality = 100;
    if (oc && !cJSON_IsNull(oc)) {
        if (!cJSON_IsNumber(oc) || oc->valuedouble != floor(oc->valuedouble) ||
            oc->valuedouble < 0 || oc->valuedouble > 100) {
            *answered = bad(r, "output_compression", "%s", "output_compression: 0 to 100");
            return NULL;
        }
        q->quality = (int)oc->valuedouble;
    }
    const char *bg = str_field(in, "background");
    if (bg && strcmp(bg, "auto") && strcmp(bg, "opaque")) {
        *answered = bad(r, "background", "%s",
                        "background: auto or opaque (Stable Diffusion draws no transparency)");
        return NULL;
    }
    static const char *qualities[] = {"auto", "standard", "hd", "low", "medium", "high", NULL};
    const char *ql = str_field(in, "quality");
    if (present(in, "quality") && (!ql || !is_one_of(ql, qualities))) {
        *answered = bad(r, "quality", "%s", "quality: auto, low, medium, high, standard or hd");
        return NULL;
    }
    snprintf(q->quality_name, sizeof q->quality_name, "%s", ql ? ql : "auto");
    cJSON *nat = cJSON_CreateObject();
    if (!nat) return NULL;
    cJSON_AddStringToObject(nat, "prompt", prompt);
    snprintf(q->prompt, sizeof q->prompt, "%s", prompt);
    const char *size = str_field(in, "size");
    if (present(in, "size") && (!size || (strcmp(size, "auto") && !strchr(size, 'x')))) {
        cJSON_Delete(nat);
        *answered = bad(r, "size", "%s", "size: \"WIDTHxHEIGHT\" (e.g. 512x512) or \"auto\"");
        return NULL;
    }
    if (size && strcmp(size, "auto")) {
        char *end;
        long w = strtol(size, &end, 10), h = *end == 'x' ? strtol(end + 1, &end, 10) : 0;
        if (*end || w <= 0 || h <= 0 || w > 100000 || h > 100000) {
            cJSON_Delete(nat);
            *answered = bad(r, "size", "%s", "size: \"WIDTHxHEIGHT\" (e.g. 512x512) or \"auto\"");
            return NULL;
        }
        cJSON_AddNumberToObject(nat, "width", (double)w);
        cJSON_AddNumberToObject(nat, "height", (double)h);
    }
    for (int i = 0; passed_through[i]; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(in, passed_through[i]);
        if (v) cJSON_AddItemToObject(nat, passed_through[i], cJSON_Duplicate(v, 1));
    }
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(in, "steps");
    if (st && !cJSON_IsNull(st)) {
        cJSON_AddItemToObject(nat, "steps", cJSON_Duplicate(st, 1));
    } else if (ql && strcmp(ql, "auto") && strcmp(ql, "standard") && strcmp(ql, "medium")) {
        int d = model_default_steps(r); /* quality is a number of steps around the model's */
        int s = !strcmp(ql, "low") ? (d + 1) / 2 : d + d / 2;
        cJSON_AddNumberToObject(nat, "steps", s < 1 ? 1 : s > GEN_MAX_STEPS ? GEN_MAX_STEPS : s);
    }
    return nat;
}

/* ---- signed file URLs ---- */

static void sign(server *s, const char *name, long long expires, int q, char hex[65]) {
    const server_config *c = server_cfg(s);
    char msg[300];
    int n = snprintf(msg, sizeof msg, "%s|%lld|%d", name, expires, q);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int ml = 0;
    HMAC(EVP_sha256(), c->url_key, (int)sizeof c->url_key, (unsigned char *)msg, (size_t)n, mac,
         &ml);
    for (unsigned i = 0; i < 32 && i < ml; i++)
        snprintf(hex + 2 * i, 3, "%02x", mac[i]);
}

/* The URL a client fetches: absolute (as OpenAI's are), valid for an hour. */
static void file_url(http_req *r, const char *id, const openai_req *q, char *out, size_t n) {
    char name[64], hex[65] = "";
    snprintf(name, sizeof name, "%s.%s", id, image_format_ext(q->format));
    long long expires = (long long)time(NULL) + OPENAI_URL_TTL_S;
    sign(r->srv, name, expires, q->quality, hex);
    const char *host = http_header(r, MHD_HTTP_HEADER_HOST);
    const char *proto = http_header(r, "X-Forwarded-Proto");
    snprintf(out, n, "%s://%s/v1/images/files/%s?expires=%lld&q=%d&sig=%s",
             proto && !strcmp(proto, "https") ? "https" : "http", host ? host : "localhost", name,
             expires, q->quality, hex);
}

static job_batch *file_batch(jobs *js, const char *id) {
    job_batch *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    b->js = js, b->n = 1, b->answered = 1;
    memcpy(b->ids[0], id, 37);
    return b;
}

enum MHD_Result openai_file(http_req *r) {
    const char *name = r->arg, *dot = strchr(name, '.');
    const char *ex = http_query(r, "expires"), *qs = http_query(r, "q"),
               *sig = http_query(r, "sig");
    char id[37];
    int fmt = dot ? image_format_parse(dot + 1) : -1;
    if (!dot || dot - name != 36 || fmt < 0 || !ex || !qs || !sig || strlen(sig) != 64)
        return http_error(r, 404, "not_found", "no such file", NULL);
    memcpy(id, name, 36), id[36] = 0;
    char *end;
    long long expires = strtoll(ex, &end, 10);
    int q = (int)strtol(qs, &end, 10);
    char want[65] = "";
    sign(r->srv, name, expires, q, want);
    if (CRYPTO_memcmp(want, sig, 64) || !http_is_job_id(id))
        return http_error(r, 403, "invalid_signature", "the URL's signature does not match", NULL);
    if (expires < (long long)time(NULL))
        return http_error(r, 403, "expired", "the URL expired; ask for the image again", NULL);
    job_batch *b = file_batch(server_jobs(r->srv), id);
    if (!b) return http_error(r, 500, "out_of_memory", "out of memory", NULL);
    uint8_t *data = NULL;
    size_t len = 0;
    easel_err e =
        batch_image(b, 0, server_cfg(r->srv)->images_dir, (image_format)fmt, q, &data, &len);
    free(b);
    if (e) return http_error(r, 404, "not_found", "the image is no longer here", NULL);
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, data, MHD_RESPMEM_MUST_FREE);
    if (!resp) free(data);
    return http_send(r, 200, resp, image_format_mime((image_format)fmt), "private, max-age=3600");
}

/* ---- the answer ---- */

typedef struct {
    openai_req q;
} openai_state;

static enum MHD_Result answer(http_req *r, job_batch *b) {
    openai_state *st = b->api;
    const char *dir = server_cfg(r->srv)->images_dir;
    cJSON *o = cJSON_CreateObject(), *data = o ? cJSON_AddArrayToObject(o, "data") : NULL;
    if (!data) {
        cJSON_Delete(o);
        return http_error(r, 500, "out_of_memory", "out of memory", NULL);
    }
    int w = 0, h = 0;
    for (int i = 0; i < b->n; i++) {
        batch_item it;
        if (batch_item_get(b, i, &it) || it.status != JOB_COMPLETED) {
            char msg[700];
            snprintf(msg, sizeof msg, "image %d of %d %s: %s", i + 1, b->n,
                     it.status == JOB_CANCELED ? "was canceled" : "failed",
                     it.error[0] ? it.error : "gone");
            cJSON_Delete(o);
            b->answered = 1;
            return http_error(r, 500, "generation_failed", msg, NULL);
        }
        w = it.width, h = it.height;
        cJSON *d = cJSON_CreateObject();
        cJSON_AddItemToArray(data, d);
        if (st->q.b64) {
            uint8_t *img = NULL;
            size_t len = 0;
            char *b64 = NULL;
            if (!batch_image(b, i, dir, st->q.format, st->q.quality, &img, &len))
                b64 = http_base64(img, len);
            free(img);
            if (!b64) {
                cJSON_Delete(o);
                b->answered = 1;
                return http_error(r, 500, "encoding_failed", "the image could not be encoded",
                                  NULL);
            }
            cJSON_AddStringToObject(d, "b64_json", b64);
            free(b64);
        } else {
            char url[600];
            file_url(r, b->ids[i], &st->q, url, sizeof url);
            cJSON_AddStringToObject(d, "url", url);
        }
        cJSON_AddStringToObject(d, "revised_prompt", st->q.prompt);
    }
    char size[32];
    snprintf(size, sizeof size, "%dx%d", w, h);
    cJSON_AddNumberToObject(o, "created", (double)time(NULL));
    cJSON_AddStringToObject(o, "output_format", image_format_name(st->q.format));
    cJSON_AddStringToObject(o, "size", size);
    cJSON_AddStringToObject(o, "quality", st->q.quality_name);
    cJSON_AddStringToObject(o, "background", "opaque");
    b->answered = 1;
    return http_json(r, 200, o);
}

static enum MHD_Result resume(http_req *r) {
    job_batch *b = r->park_ctx;
    if (!server_jobs(r->srv) || server_stopping(r->srv)) return http_not_ready(r);
    batch_state s = batch_poll(b);
    if (s == BATCH_DONE) return answer(r, b);
    if (s == BATCH_TIMED_OUT)
        return http_error(r, 504, "timeout", "the images took longer than the request may wait",
                          NULL);
    return http_park(r, resume, b, batch_free);
}

/* generations and edits: in (consumed) -> n jobs, the answer when they end.
 * edits: the image (and mask) upload ids in *made, given to the jobs. */
static enum MHD_Result submit(http_req *r, cJSON *in, http_made_uploads *made, const char *image,
                              const char *mask, int mask_alpha) {
    enum MHD_Result answered = MHD_NO;
    openai_state *st = calloc(1, sizeof *st);
    int n = 1;
    cJSON *nat = st ? to_native(r, in, &st->q, &n, &answered) : NULL;
    cJSON_Delete(in);
    if (nat && image) {
        cJSON_AddStringToObject(nat, "init_image", image);
        if (mask) cJSON_AddStringToObject(nat, "mask", mask);
        if (mask && mask_alpha) cJSON_AddStringToObject(nat, "mask_source", "alpha");
        if (mask && !present(nat, "strength")) cJSON_AddNumberToObject(nat, "strength", 1.0);
        if (http_resolve_images(r, nat, made, &answered)) {
            cJSON_Delete(nat);
            free(st);
            return answered;
        }
    }
    if (!nat) {
        free(st);
        if (made) http_made_uploads_drop(r, made);
        return st ? answered : http_error(r, 500, "out_of_memory", "out of memory", NULL);
    }
    job_params p;
    const char *field = NULL;
    easel_err e = params_parse(nat, &server_cfg(r->srv)->policy, 0, &p, &field);
    cJSON_Delete(nat);
    if (e) {
        free(st);
        if (made) http_made_uploads_drop(r, made);
        char msg[400];
        snprintf(msg, sizeof msg, "%s", easel_errmsg());
        const char *param =
            field && (!strcmp(field, "width") || !strcmp(field, "height")) ? "size" : field;
        return http_error(r, 400, "invalid_value", msg, param);
    }
    job_batch *b = calloc(1, sizeof *b);
    if (!b) {
        params_clear(&p);
        free(st);
        if (made) http_made_uploads_drop(r, made);
        return http_error(r, 500, "out_of_memory", "out of memory", NULL);
    }
    e = batch_submit(server_jobs(r->srv), &p, n, OPENAI_SYNC_TIMEOUT_S, b);
    params_clear(&p);
    b->api = st, b->api_free = free;
    if (e) {
        b->answered = 1;
        batch_free(b);
        if (made) http_made_uploads_drop(r, made);
        return http_refuse_submit(r, e);
    }
    r->park_ctx = b, r->park_free = batch_free;
    return resume(r);
}

enum MHD_Result openai_generations(http_req *r) {
    enum MHD_Result answered = MHD_NO;
    cJSON *in = http_body_json(r, &answered);
    if (!in) return answered;
    return submit(r, in, NULL, NULL, NULL, 0);
}

/* A multipart text field as JSON: OpenAI's numbers (n, output_compression)
 * and easel's numeric extras as numbers, the rest as strings. */
static cJSON *form_value(const http_part *p) {
    static const char *numbers[] = {"n",   "output_compression", "seed",     "steps",
                                    "eta", "guidance_scale",     "strength", NULL};
    const char *s = (const char *)p->data;
    if (is_one_of(p->name, numbers)) {
        char *end;
        double v = strtod(s, &end);
        if (end != s && !*end) return cJSON_CreateNumber(v);
    }
    return cJSON_CreateString(s);
}

enum MHD_Result openai_edits(http_req *r) {
    if (!http_is_multipart(r))
        return http_error(r, 415, "invalid_request",
                          "the body must be multipart/form-data (image, mask, prompt, ...)", NULL);
    http_parts ps;
    easel_err e = http_multipart(r, &ps);
    if (e) return http_upload_error(r, e, "image");
    cJSON *in = cJSON_CreateObject();
    http_made_uploads made = {.image_name = "image", .mask_name = "mask"};
    char image[40] = "", mask[40] = "";
    int image_alpha = 0, mask_alpha = 0, images = 0;
    const char *bad_field = NULL;
    for (int i = 0; in && !bad_field && i < ps.n; i++) {
        const http_part *p = &ps.p[i];
        int is_image = !strcmp(p->name, "image") || !strcmp(p->name, "image[]");
        if (is_image || !strcmp(p->name, "mask")) {
            char *id = is_image ? image : mask;
            if (is_image && images++) {
                bad_field = "image";
                e = easel_seterr(EASEL_EINVAL, "one image at a time here (got several)");
                break;
            }
            if ((e = http_keep_image(r, p->data, p->len, &made, id))) {
                bad_field = is_image ? "image" : "mask";
                break;
            }
            upload_info info;
            if (!uploads_info(server_cfg(r->srv)->uploads, id, &info))
                *(is_image ? &image_alpha : &mask_alpha) = info.has_alpha;
        } else if (!cJSON_GetObjectItemCaseSensitive(in, p->name)) {
            cJSON_AddItemToObject(in, p->name, form_value(p));
        }
    }
    http_parts_free(&ps);
    if (!in || bad_field || !image[0]) {
        cJSON_Delete(in);
        http_made_uploads_drop(r, &made);
        if (!in) return http_error(r, 500, "out_of_memory", "out of memory", NULL);
        if (!bad_field)
            return http_error(r, 400, "invalid_request",
                              "image: required (a PNG, JPEG or WebP file)", "image");
        if (e == EASEL_EINVAL && !strcmp(bad_field, "image") && images > 1)
            return http_error(r, 400, "invalid_value", easel_errmsg(), "image");
        return http_upload_error(r, e, bad_field);
    }
    /* the mask's alpha (OpenAI's rule) when it has one, else its luminance; no mask: the
     * image's own transparency, or none (the whole image is restyled) */
    if (!mask[0] && image_alpha) snprintf(mask, sizeof mask, "%s", image), mask_alpha = 1;
    return submit(r, in, &made, image, mask[0] ? mask : NULL, mask_alpha);
}
