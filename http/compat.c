/* The seed's endpoints, so its PHP backend and React polling work unchanged:
 * POST /generate-concept (room-analysis fields -> prompt -> job),
 * GET /image-status/{job_id} (the seed's status document) and the images
 * under /uploads/conceptual_images/. Field names follow the seed document.
 *
 * Prompt template (also in docs/api.md). With a plain `prompt`, it is used
 * as is. Otherwise, from the room fields:
 *   "Interior design visualization of a <style> <room type>, featuring
 *    <features>, color palette: <colors>. <free text>. Photorealistic, high
 *    quality, detailed, natural lighting, professional interior photography."
 * where every missing part is left out (with its connecting words). */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../engine/utf8.h"
#include "json.h"
#include "server.h"

#define COMPAT_FIELD_MAX 600
#define COMPAT_POLL_S 3
#define COMPAT_STRENGTH 0.6 /* a room photo is restyled, its layout kept (documented) */
static const char disclaimer[] = "Conceptual Visualization / Inspirational Preview";
static const char default_negative[] =
    "blurry, low quality, distorted, deformed, disfigured, watermark, text, signature";

static const char *room_keys[] = {"room_type", "roomType", "room", "space_type", NULL};
static const char *style_keys[] = {"style",          "design_style", "preferred_style",
                                   "interior_style", "theme",        NULL};
static const char *color_keys[] = {
    "colors",       "colours",       "color_palette",    "colour_palette",
    "color_scheme", "colour_scheme", "preferred_colors", NULL};
static const char *feature_keys[] = {"features", "key_features", "furniture",
                                     "elements", "materials",    NULL};
static const char *text_keys[] = {"description",
                                  "additional_details",
                                  "details",
                                  "notes",
                                  "user_preferences",
                                  "requirements",
                                  "text",
                                  "summary",
                                  NULL};
static const char *nest_keys[] = {"room_analysis",   "analysis",        "analysis_data",
                                  "visual_analysis", "design_analysis", NULL};

/* ---- reading the request ---- */

/* A string, or an array of strings joined with ", ", capped at
 * COMPAT_FIELD_MAX bytes on a character boundary (*shortened set then);
 * NULL if absent/empty. Inputs are valid UTF-8 (checked on the way in). */
static char *as_text(const cJSON *it, int *shortened) {
    char buf[COMPAT_FIELD_MAX + 1];
    size_t off = 0;
    buf[0] = 0;
    for (const cJSON *e = cJSON_IsArray(it) ? it->child : it; e; e = e->next) {
        if (!cJSON_IsString(e) || !e->valuestring[0]) {
            if (!cJSON_IsArray(it)) break;
            continue;
        }
        const char *sep = off ? ", " : "";
        size_t want = strlen(sep) + strlen(e->valuestring);
        if (off + want > COMPAT_FIELD_MAX) {
            size_t room = COMPAT_FIELD_MAX - off, sl = strlen(sep);
            if (room > sl) {
                size_t k = utf8_cut(e->valuestring, strlen(e->valuestring), room - sl);
                memcpy(buf + off, sep, sl);
                memcpy(buf + off + sl, e->valuestring, k);
                off += sl + k;
            }
            buf[off] = 0;
            if (shortened) *shortened = 1;
            break;
        }
        off += (size_t)snprintf(buf + off, sizeof buf - off, "%s%s", sep, e->valuestring);
        if (!cJSON_IsArray(it)) break;
    }
    size_t n = strlen(buf);
    while (n && isspace((unsigned char)buf[n - 1]))
        buf[--n] = 0;
    const char *s = buf;
    while (isspace((unsigned char)*s))
        s++;
    return *s ? strdup(s) : NULL;
}

static char *lookup(const cJSON *req, const char **keys, int *shortened) {
    for (int i = 0; keys[i]; i++) {
        char *v = as_text(cJSON_GetObjectItemCaseSensitive(req, keys[i]), shortened);
        if (v) return v;
    }
    for (int n = 0; nest_keys[n]; n++) {
        const cJSON *o = cJSON_GetObjectItemCaseSensitive(req, nest_keys[n]);
        for (int i = 0; cJSON_IsObject(o) && keys[i]; i++) {
            char *v = as_text(cJSON_GetObjectItemCaseSensitive(o, keys[i]), shortened);
            if (v) return v;
        }
    }
    return NULL;
}

/* Room type as words ("living_room" -> "living room"). */
static void humanize(char *s) {
    for (; *s; s++)
        if (*s == '_' || *s == '-') *s = ' ';
}

char *compat_build_prompt(const cJSON *req, int *shortened) {
    int cut = 0;
    char *room = lookup(req, room_keys, &cut), *style = lookup(req, style_keys, &cut);
    char *colors = lookup(req, color_keys, &cut), *features = lookup(req, feature_keys, &cut);
    char *text = lookup(req, text_keys, &cut);
    if (shortened) *shortened = cut;
    char *out = NULL;
    if (room || style || colors || features || text) {
        size_t n = 512 + 5 * COMPAT_FIELD_MAX;
        out = malloc(n);
        if (room) humanize(room);
        if (out) {
            size_t off =
                (size_t)snprintf(out, n, "Interior design visualization of a %s%s%s",
                                 style ? style : "", style ? " " : "", room ? room : "room");
            if (features) off += (size_t)snprintf(out + off, n - off, ", featuring %s", features);
            if (colors) off += (size_t)snprintf(out + off, n - off, ", color palette: %s", colors);
            if (text) {
                size_t t = strlen(text);
                off += (size_t)snprintf(out + off, n - off, ". %s", text);
                if (t && text[t - 1] == '.') out[--off] = 0;
            }
            snprintf(out + off, n - off,
                     ". Photorealistic, high quality, detailed, natural "
                     "lighting, professional interior photography.");
        }
    }
    free(room), free(style), free(colors), free(features), free(text);
    return out;
}

/* "Living Room" -> "living_room" for the file name; "room" if nothing usable. */
static void room_slug(const cJSON *req, char *out, size_t n) {
    char *room = lookup(req, room_keys, NULL);
    size_t k = 0;
    for (const char *s = room ? room : ""; *s && k + 1 < n && k < 40; s++) {
        char c = (char)tolower((unsigned char)*s);
        if (isalnum((unsigned char)c))
            out[k++] = c;
        else if (k && out[k - 1] != '_')
            out[k++] = '_';
    }
    while (k && out[k - 1] == '_')
        k--;
    out[k] = 0;
    if (!k) snprintf(out, n, "room");
    free(room);
}

/* ---- form bodies (PHP's http_build_query) ---- */

static int hexval(int c) {
    return isdigit(c) ? c - '0' : isxdigit(c) ? tolower(c) - 'a' + 10 : -1;
}

/* Decodes in place; -1 for a %00 (a NUL would silently cut the text). */
static int url_decode(char *s) {
    char *o = s;
    for (; *s; s++) {
        if (*s == '+') {
            *o++ = ' ';
        } else if (*s == '%' && hexval((unsigned char)s[1]) >= 0 &&
                   hexval((unsigned char)s[2]) >= 0) {
            char c = (char)(hexval((unsigned char)s[1]) * 16 + hexval((unsigned char)s[2]));
            if (!c) return -1;
            *o++ = c;
            s += 2;
        } else {
            *o++ = *s;
        }
    }
    *o = 0;
    return 0;
}

/* One form pair into o, as PHP's http_build_query writes nesting:
 * "a" -> "a": value; "a[]" or "a[0]" -> "a": [..., value];
 * "a[b]" -> "a": {"b": value}. The first value of a key wins. */
static void form_add(cJSON *o, char *key, const char *val) {
    char *br = strchr(key, '[');
    if (br) *br = 0;
    if (!*key) return;
    cJSON *prev = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!br) {
        if (!prev) cJSON_AddStringToObject(o, key, val);
        return;
    }
    char *sub = br + 1, *close = strchr(sub, ']');
    if (close) *close = 0;
    int index = !*sub || strspn(sub, "0123456789") == strlen(sub);
    if (index) {
        if (!prev) prev = cJSON_AddArrayToObject(o, key);
        if (cJSON_IsArray(prev)) cJSON_AddItemToArray(prev, cJSON_CreateString(val));
        return;
    }
    if (!prev) prev = cJSON_AddObjectToObject(o, key);
    if (cJSON_IsObject(prev) && !cJSON_GetObjectItemCaseSensitive(prev, sub))
        cJSON_AddStringToObject(prev, sub, val);
}

/* a=1&features[]=x&features[]=y -> {"a":"1","features":["x","y"]} (all
 * strings). NULL with *bad set for a NUL in the form, NULL alone on OOM. */
static cJSON *parse_form(const char *body, size_t len, int *bad) {
    char *copy = strndup(body ? body : "", len);
    cJSON *o = cJSON_CreateObject();
    if (!copy || !o) {
        free(copy);
        cJSON_Delete(o);
        return NULL;
    }
    char *save = NULL;
    for (char *pair = strtok_r(copy, "&", &save); pair; pair = strtok_r(NULL, "&", &save)) {
        char *eq = strchr(pair, '=');
        char *val = eq ? (*eq = 0, eq + 1) : pair + strlen(pair); /* writable "" */
        if (url_decode(pair) || url_decode(val)) {
            *bad = 1;
            break;
        }
        form_add(o, pair, val);
    }
    free(copy);
    if (*bad) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

static int is_form(http_req *r) {
    return json_media_type_is(http_header(r, MHD_HTTP_HEADER_CONTENT_TYPE),
                              "application/x-www-form-urlencoded");
}

/* A room photo's field names (multipart file or base64 text). */
static int is_photo_field(const char *k) {
    return !strcmp(k, "room_image") || !strcmp(k, "image");
}

/* multipart/form-data (PHP's CURLFile): text fields as a form's, the room
 * photo kept as an upload (in *made) and named by its id. */
static cJSON *parse_multipart(http_req *r, http_made_uploads *made, enum MHD_Result *answered) {
    http_parts ps;
    easel_err e = http_multipart(r, &ps);
    if (e) {
        *answered = http_upload_error(r, e, "body");
        return NULL;
    }
    cJSON *o = cJSON_CreateObject();
    for (int i = 0; o && i < ps.n; i++) {
        http_part *p = &ps.p[i];
        char key[128];
        snprintf(key, sizeof key, "%s", p->name);
        if (p->filename || is_photo_field(key)) {
            if (!is_photo_field(key) || cJSON_GetObjectItemCaseSensitive(o, key)) continue;
            char id[40];
            if ((e = http_keep_image(r, p->data, p->len, made, id))) {
                *answered = http_upload_error(r, e, key);
                cJSON_Delete(o);
                http_parts_free(&ps);
                http_made_uploads_drop(r, made);
                return NULL;
            }
            cJSON_AddStringToObject(o, key, id);
        } else if (memchr(p->data, 0, p->len)) {
            *answered = http_error(r, 400, "invalid_field", "form values must not hold NUL", key);
            cJSON_Delete(o);
            http_parts_free(&ps);
            http_made_uploads_drop(r, made);
            return NULL;
        } else {
            form_add(o, key, (const char *)p->data);
        }
    }
    http_parts_free(&ps);
    const char *where = "body";
    if (o && json_bad_text(o, &where)) {
        char msg[160], field[64];
        snprintf(field, sizeof field, "%s", where);
        cJSON_Delete(o);
        http_made_uploads_drop(r, made);
        snprintf(msg, sizeof msg, "%s: form values must be valid UTF-8 without NUL", field);
        *answered = http_error(r, 400, "invalid_field", msg, field);
        return NULL;
    }
    if (!o) *answered = http_error(r, 500, "out_of_memory", "out of memory", NULL);
    return o;
}

/* The body as an object: JSON (strictly), a form (the seed's PHP may send
 * http_build_query bodies) or multipart (a room photo as a CURLFile), every
 * string valid UTF-8. */
static cJSON *request_object(http_req *r, http_made_uploads *made, enum MHD_Result *answered) {
    const char *ct = http_header(r, MHD_HTTP_HEADER_CONTENT_TYPE);
    if (http_is_multipart(r)) return parse_multipart(r, made, answered);
    if (is_form(r)) {
        int bad = 0;
        const char *where = "body";
        cJSON *o = parse_form(r->body, r->body_len, &bad);
        if (bad || (o && json_bad_text(o, &where))) {
            char msg[160], field[64];
            snprintf(field, sizeof field, "%s", where); /* before the tree it points into goes */
            cJSON_Delete(o);
            snprintf(msg, sizeof msg, "%s: form values must be valid UTF-8 without NUL", field);
            *answered = http_error(r, 400, "invalid_field", msg, field);
            return NULL;
        }
        if (!o) *answered = http_error(r, 500, "out_of_memory", "out of memory", NULL);
        return o;
    }
    if (ct && !json_media_type_is(ct, "application/json")) {
        *answered = http_error(r, 415, "unsupported_media_type",
                               "send JSON (application/json), a form "
                               "(application/x-www-form-urlencoded) or multipart/form-data",
                               NULL);
        return NULL;
    }
    char msg[200], field[64];
    cJSON *o = json_parse_strict(r->body, r->body_len, msg, sizeof msg, field, sizeof field);
    if (!cJSON_IsObject(o)) {
        if (o) snprintf(msg, sizeof msg, "the body must be a JSON object");
        cJSON_Delete(o);
        *answered = http_error(r, 400, strcmp(field, "body") ? "invalid_field" : "invalid_json",
                               msg, field);
        return NULL;
    }
    return o;
}

/* ---- POST /generate-concept ---- */

/* Numeric fields: numbers in JSON (anything else is passed on to be rejected,
 * named), strings in forms (where everything is a string; "" = absent). */
static void copy_number(const cJSON *from, cJSON *to, const char *key, int form) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(from, key);
    if (!it || cJSON_IsNull(it)) return;
    if (form && cJSON_IsString(it)) {
        char *end;
        double v = strtod(it->valuestring, &end);
        if (!it->valuestring[0]) return;
        if (*end)
            cJSON_AddStringToObject(to, key, it->valuestring);
        else
            cJSON_AddNumberToObject(to, key, v);
        return;
    }
    cJSON_AddItemToObject(to, key, cJSON_Duplicate(it, 1));
}

/* The documented text fields must be text (or, for lists, arrays of text) or null. */
static const char *wrong_type(const cJSON *req) {
    static const char *text[] = {"prompt", "room_type", "style", "description", "negative_prompt"};
    static const char *lists[] = {"colors", "features"};
    for (size_t i = 0; i < sizeof text / sizeof text[0]; i++) {
        const cJSON *it = cJSON_GetObjectItemCaseSensitive(req, text[i]);
        if (it && !cJSON_IsString(it) && !cJSON_IsNull(it)) return text[i];
    }
    for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++) {
        const cJSON *it = cJSON_GetObjectItemCaseSensitive(req, lists[i]);
        if (!it || cJSON_IsString(it) || cJSON_IsNull(it)) continue;
        if (!cJSON_IsArray(it)) return lists[i];
        for (const cJSON *e = it->child; e; e = e->next)
            if (!cJSON_IsString(e)) return lists[i];
    }
    return NULL;
}

/* Builds the native request {prompt, negative_prompt, width, ...} from the
 * seed's fields. NULL with *field set: *wrong = 1 when that field has the
 * wrong type, 0 when nothing gives a prompt (field "room_type"); NULL with
 * *field NULL: out of memory. *shortened is set when a field was cut. */
static cJSON *native_request(const cJSON *req, int form, const char **field, int *wrong,
                             int *shortened) {
    *wrong = 0;
    if ((*field = wrong_type(req))) return *wrong = 1, NULL;
    cJSON *n = cJSON_CreateObject();
    if (!n) return NULL;
    char *prompt = as_text(cJSON_GetObjectItemCaseSensitive(req, "prompt"), shortened);
    if (!prompt) prompt = compat_build_prompt(req, shortened);
    if (!prompt) {
        *field = "room_type";
        cJSON_Delete(n);
        return NULL;
    }
    cJSON_AddStringToObject(n, "prompt", prompt);
    free(prompt);
    const cJSON *neg = cJSON_GetObjectItemCaseSensitive(req, "negative_prompt");
    int given = cJSON_IsString(neg) && neg->valuestring[0]; /* checked in full by params_parse */
    cJSON_AddStringToObject(n, "negative_prompt", given ? neg->valuestring : default_negative);
    static const char *nums[] = {"width", "height", "steps", "guidance_scale", "seed"};
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++)
        copy_number(req, n, nums[i], form);
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(req, "sampler");
    if (s && !cJSON_IsNull(s)) cJSON_AddItemToObject(n, "sampler", cJSON_Duplicate(s, 1));
    const cJSON *l = cJSON_GetObjectItemCaseSensitive(req, "loras"); /* checked by params_parse */
    if (l && !cJSON_IsNull(l)) cJSON_AddItemToObject(n, "loras", cJSON_Duplicate(l, 1));
    return n;
}

static void estimate_text(double ms, char *buf, size_t n, double *secs) {
    if (ms < 0) {
        snprintf(buf, n, "unknown");
        *secs = -1;
        return;
    }
    double s = ms / 1000.0;
    int lo = s < 1 ? 1 : (int)lround(s);
    int hi = (int)ceil(s * 1.5);
    if (hi <= lo) hi = lo + 1;
    snprintf(buf, n, "%d-%d seconds", lo, hi);
    *secs = round(s * 10) / 10;
}

static enum MHD_Result generate_reply(http_req *r, const char *id, const job_params *p,
                                      double est_ms, int shortened) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return http_error(r, 500, "out_of_memory", "out of memory", NULL);
    char est[48], url[80];
    double secs;
    estimate_text(est_ms, est, sizeof est, &secs);
    cJSON_AddTrueToObject(o, "success");
    cJSON_AddStringToObject(o, "job_id", id);
    cJSON_AddStringToObject(o, "status", "pending");
    cJSON_AddStringToObject(o, "estimated_completion_time", est);
    if (secs >= 0)
        cJSON_AddNumberToObject(o, "estimated_completion_seconds", secs);
    else
        cJSON_AddNullToObject(o, "estimated_completion_seconds");
    cJSON_AddStringToObject(o, "prompt", p->prompt);
    cJSON_AddBoolToObject(o, "prompt_shortened", shortened);
    if (shortened) {
        char note[120];
        snprintf(note, sizeof note,
                 "a field was longer than %d bytes and was shortened (at a character boundary)",
                 COMPAT_FIELD_MAX);
        cJSON *w = cJSON_AddArrayToObject(o, "warnings");
        if (w) cJSON_AddItemToArray(w, cJSON_CreateString(note));
    }
    cJSON *pi = cJSON_AddObjectToObject(o, "polling_instructions");
    snprintf(url, sizeof url, "/image-status/%s", id);
    if (pi) {
        cJSON_AddStringToObject(pi, "endpoint", url);
        cJSON_AddNumberToObject(pi, "poll_interval_seconds", COMPAT_POLL_S);
    }
    return http_json(r, 200, o);
}

/* The room photo (room_image, or image): img2img at strength 0.6 unless the
 * request says. 1 after answering. */
static int add_photo(http_req *r, const cJSON *req, int form, cJSON *native,
                     http_made_uploads *made, enum MHD_Result *answered) {
    const cJSON *sv = cJSON_GetObjectItemCaseSensitive(req, "strength");
    if (sv && !cJSON_IsNull(sv) && !(form && cJSON_IsString(sv) && !sv->valuestring[0])) {
        double v = cJSON_IsNumber(sv)           ? sv->valuedouble
                   : form && cJSON_IsString(sv) ? strtod(sv->valuestring, NULL)
                                                : -1;
        if (!(v >= 0 && v <= 1)) { /* checked with or without a photo */
            *answered =
                http_error(r, 400, "invalid_field", "strength: a number in [0, 1]", "strength");
            return 1;
        }
    }
    const char *name = "room_image";
    const cJSON *ph = cJSON_GetObjectItemCaseSensitive(req, name);
    if (!ph || cJSON_IsNull(ph) || (cJSON_IsString(ph) && !ph->valuestring[0]))
        ph = cJSON_GetObjectItemCaseSensitive(req, name = "image");
    if (!ph || cJSON_IsNull(ph) || (cJSON_IsString(ph) && !ph->valuestring[0])) return 0;
    if (!cJSON_IsString(ph)) {
        char msg[120];
        snprintf(msg, sizeof msg, "%s: a photo (a file field, or base64 text)", name);
        *answered = http_error(r, 400, "invalid_field", msg, name);
        return 1;
    }
    cJSON_AddStringToObject(native, "init_image", ph->valuestring);
    copy_number(req, native, "strength", form);
    if (!cJSON_GetObjectItemCaseSensitive(native, "strength"))
        cJSON_AddNumberToObject(native, "strength", COMPAT_STRENGTH);
    made->image_name = name;
    return http_resolve_images(r, native, made, answered);
}

enum MHD_Result compat_generate(http_req *r) {
    enum MHD_Result answered = MHD_NO;
    http_made_uploads made = {0}; /* a multipart or base64 photo: removed if the job is not taken */
    cJSON *req = request_object(r, &made, &answered);
    if (!req) return answered;
    int form = is_form(r) || http_is_multipart(r), wrong = 0, shortened = 0;
    const char *field = NULL;
    cJSON *native = native_request(req, form, &field, &wrong, &shortened);
    if (native && add_photo(r, req, form, native, &made, &answered)) {
        cJSON_Delete(native);
        cJSON_Delete(req);
        http_made_uploads_drop(r, &made);
        return answered;
    }
    char room[48];
    room_slug(req, room, sizeof room);
    cJSON_Delete(req);
    if (!native) http_made_uploads_drop(r, &made);
    if (!native && wrong) {
        char msg[120];
        snprintf(msg, sizeof msg, "%s: must be text%s", field,
                 strcmp(field, "colors") && strcmp(field, "features") ? "" : " or a list of text");
        return http_error(r, 400, "invalid_field", msg, field);
    }
    if (!native)
        return field ? http_error(r, 400, "invalid_field",
                                  "give a prompt or the room fields (room_type, style, colors, "
                                  "features, description)",
                                  field)
                     : http_error(r, 500, "out_of_memory", "out of memory", NULL);
    job_params p;
    easel_err e = params_parse(native, &server_cfg(r->srv)->policy, 0, &p, &field);
    cJSON_Delete(native);
    if (e) {
        char msg[300], f[64];
        snprintf(msg, sizeof msg, "%s", easel_errmsg());
        snprintf(f, sizeof f, "%s",
                 !field                         ? "body"
                 : !strcmp(field, "init_image") ? (made.image_name ? made.image_name : field)
                                                : field);
        http_made_uploads_drop(r, &made);
        return http_error(r, 400, "invalid_field", msg, f);
    }
    snprintf(p.room, sizeof p.room, "%s", room);
    jobs *js = server_jobs(r->srv);
    double est = jobs_estimate_ms(js, &p);
    char id[37];
    job_params shown = p; /* the strings move into the job; reply before they can be freed */
    if (params_copy(&shown, &p)) {
        params_clear(&p);
        http_made_uploads_drop(r, &made);
        return http_error(r, 500, "out_of_memory", "out of memory", NULL);
    }
    if ((e = jobs_submit(js, &p, id))) {
        params_clear(&p);
        params_clear(&shown);
        http_made_uploads_drop(r, &made);
        return http_refuse_submit(r, e);
    }
    enum MHD_Result rc = generate_reply(r, id, &shown, est, shortened);
    params_clear(&shown);
    return rc;
}

/* ---- GET /image-status/{job_id} ---- */

static void image_url(const job *j, char *buf, size_t n) {
    if (j->image && !strncmp(j->image, "conceptual_", 11))
        snprintf(buf, n, "/uploads/conceptual_images/%s", j->image);
    else
        snprintf(buf, n, "/v1/jobs/%s/image", j->id);
}

static void add_polling(cJSON *o, const job *j) {
    cJSON *pi = cJSON_AddObjectToObject(o, "polling_instructions");
    if (!pi) return;
    if (j->status <= JOB_PROCESSING) {
        cJSON_AddTrueToObject(pi, "continue_polling");
        cJSON_AddNumberToObject(pi, "poll_interval_seconds", COMPAT_POLL_S);
    } else {
        cJSON_AddFalseToObject(pi, "continue_polling");
        cJSON_AddStringToObject(pi, "final_status", job_status_name(j->status));
    }
}

static void add_running(cJSON *o, const job *j, const job_extra *x) {
    cJSON *pr = cJSON_AddObjectToObject(o, "progress");
    if (!pr) return;
    if (x->eta_s >= 0)
        cJSON_AddNumberToObject(pr, "estimated_remaining_seconds", ceil(x->eta_s));
    else
        cJSON_AddNullToObject(pr, "estimated_remaining_seconds");
    char msg[160];
    if (j->status == JOB_PENDING)
        snprintf(msg, sizeof msg, "Waiting in queue (position %d)...", x->queue_position);
    else if (j->step == 0)
        snprintf(msg, sizeof msg, "Generating real AI image with Stable Diffusion...");
    else
        snprintf(msg, sizeof msg,
                 "Generating real AI image with Stable Diffusion... (step %d of %d)", j->step,
                 j->steps);
    cJSON_AddStringToObject(pr, "progress_message", msg);
    cJSON_AddNumberToObject(pr, "step", j->step);
    cJSON_AddNumberToObject(pr, "steps", j->steps);
    cJSON_AddNumberToObject(pr, "percent", j->steps ? floor(100.0 * j->step / j->steps) : 0);
    if (j->preview.data) { /* optional: the seed's clients ignore what they do not know */
        char url[96];
        snprintf(url, sizeof url, "/v1/jobs/%s/preview", j->id);
        cJSON_AddStringToObject(pr, "preview_url", url);
        cJSON_AddNumberToObject(pr, "preview_step", j->preview.step);
    }
    cJSON_AddNumberToObject(o, "queue_position", x->queue_position);
}

static void add_done(cJSON *o, const job *j) {
    char url[128];
    if (j->status == JOB_COMPLETED) {
        image_url(j, url, sizeof url);
        cJSON_AddStringToObject(o, "image_url", url);
        cJSON_AddStringToObject(o, "disclaimer", disclaimer);
        cJSON *cv = cJSON_AddObjectToObject(o, "conceptual_visualization");
        if (cv) {
            cJSON_AddTrueToObject(cv, "success");
            cJSON_AddStringToObject(cv, "image_url", url);
            cJSON_AddStringToObject(cv, "disclaimer", disclaimer);
        }
    } else {
        cJSON_AddStringToObject(o, "error_message",
                                j->error                    ? j->error
                                : j->status == JOB_CANCELED ? "canceled"
                                                            : "failed");
    }
}

static void status_view(void *user, const job *j, const job_extra *x) {
    cJSON *o = cJSON_CreateObject();
    *(cJSON **)user = o;
    if (!o) return;
    cJSON_AddTrueToObject(o, "success");
    cJSON_AddStringToObject(o, "job_id", j->id);
    cJSON_AddStringToObject(o, "status", job_status_name(j->status));
    if (j->status <= JOB_PROCESSING)
        add_running(o, j, x);
    else
        add_done(o, j);
    add_polling(o, j);
    char t[40];
    http_time(j->created_ms, t, sizeof t);
    cJSON_AddStringToObject(o, "created_at", t);
}

enum MHD_Result compat_status(http_req *r) {
    cJSON *o = NULL;
    if (!http_is_job_id(r->arg) || jobs_view(server_jobs(r->srv), r->arg, status_view, &o))
        return http_error(r, 404, "not_found", "Job not found", NULL);
    return http_json(r, 200, o);
}

/* ---- GET /uploads/conceptual_images/{name} ---- */

enum MHD_Result compat_upload(http_req *r) {
    const char *name = r->arg;
    size_t n = strlen(name);
    int ok =
        n > 15 && n < 120 && !strncmp(name, "conceptual_", 11) && !strcmp(name + n - 4, ".png");
    for (size_t i = 0; ok && i < n; i++)
        ok = isalnum((unsigned char)name[i]) || name[i] == '_' || (name[i] == '.' && i == n - 4);
    if (!ok) return http_error(r, 404, "not_found", "no such image", NULL);
    char etag[140];
    snprintf(etag, sizeof etag, "\"%s\"", name);
    return http_image(r, name, etag);
}
