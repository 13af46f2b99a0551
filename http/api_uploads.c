/* Images in over HTTP: POST /v1/uploads (a raw image body or
 * multipart/form-data), GET /v1/uploads/{id}, the multipart reader the
 * image routes share (libmicrohttpd's post processor over the collected
 * body), and the step every job route runs before params_parse: init_image
 * and mask given as upload ids are checked to exist, given inline (base64,
 * data: URLs) they become uploads, the mask must have the image's size, and
 * a missing width/height follows the image's aspect ratio. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../engine/log.h"
#include "json.h"
#include "server.h"
#include "uploads.h"

#define MAX_PARTS 16

void http_parts_free(http_parts *ps) {
    for (int i = 0; i < ps->n; i++) {
        free(ps->p[i].name), free(ps->p[i].filename), free(ps->p[i].content_type);
        free(ps->p[i].data);
    }
    free(ps->p);
    memset(ps, 0, sizeof *ps);
}

typedef struct {
    http_parts *ps;
    int failed;
} part_ctx;

static char *dup0(const char *s) {
    return s ? strdup(s) : NULL;
}

static enum MHD_Result on_part(void *cls, enum MHD_ValueKind kind, const char *key,
                               const char *filename, const char *content_type,
                               const char *transfer_encoding, const char *data, uint64_t off,
                               size_t size) {
    (void)kind, (void)transfer_encoding;
    part_ctx *c = cls;
    http_parts *ps = c->ps;
    http_part *cur = ps->n ? &ps->p[ps->n - 1] : NULL;
    int same = cur && key && cur->name && !strcmp(cur->name, key);
    if (off == 0 && !(same && cur->len == 0)) {
        if (ps->n >= MAX_PARTS) return c->failed = 2, MHD_NO;
        http_part *np = realloc(ps->p, sizeof *np * (size_t)(ps->n + 1));
        if (!np) return c->failed = 1, MHD_NO;
        ps->p = np;
        cur = &ps->p[ps->n++];
        memset(cur, 0, sizeof *cur);
        cur->name = dup0(key ? key : "");
        cur->filename = dup0(filename);
        cur->content_type = dup0(content_type);
        if (!cur->name) return c->failed = 1, MHD_NO;
    }
    if (!cur->filename && filename) cur->filename = dup0(filename);
    if (!cur->content_type && content_type) cur->content_type = dup0(content_type);
    if (size) {
        uint8_t *nd = realloc(cur->data, cur->len + size + 1);
        if (!nd) return c->failed = 1, MHD_NO;
        memcpy(nd + cur->len, data, size);
        cur->data = nd;
        cur->len += size;
        nd[cur->len] = 0;
    } else if (!cur->data && !(cur->data = calloc(1, 1))) {
        return c->failed = 1, MHD_NO;
    }
    return MHD_YES;
}

int http_is_multipart(http_req *r) {
    const char *ct = http_header(r, MHD_HTTP_HEADER_CONTENT_TYPE);
    return ct && !strncasecmp(ct, "multipart/form-data", 19);
}

easel_err http_multipart(http_req *r, http_parts *out) {
    memset(out, 0, sizeof *out);
    part_ctx c = {out, 0};
    struct MHD_PostProcessor *pp = MHD_create_post_processor(r->conn, 64 * 1024, on_part, &c);
    if (!pp) return easel_seterr(EASEL_EFORMAT, "not multipart/form-data with a boundary");
    enum MHD_Result rc = r->body_len ? MHD_post_process(pp, r->body, r->body_len) : MHD_YES;
    if (MHD_destroy_post_processor(pp) != MHD_YES && rc == MHD_YES && !c.failed) rc = MHD_NO;
    if (c.failed == 1 || (rc != MHD_YES && !c.failed)) {
        http_parts_free(out);
        return c.failed == 1 ? easel_seterr(EASEL_ENOMEM, "out of memory")
                             : easel_seterr(EASEL_EFORMAT, "the multipart body is malformed");
    }
    if (c.failed == 2) {
        http_parts_free(out);
        return easel_seterr(EASEL_EFORMAT, "more than %d form fields", MAX_PARTS);
    }
    return EASEL_OK;
}

const http_part *http_part_get(const http_parts *ps, const char *name) {
    for (int i = 0; i < ps->n; i++)
        if (!strcmp(ps->p[i].name, name)) return &ps->p[i];
    return NULL;
}

enum MHD_Result http_upload_error(http_req *r, easel_err e, const char *field) {
    char msg[400];
    snprintf(msg, sizeof msg, "%s: %s", field, easel_errmsg());
    if (e == EASEL_EFORMAT) return http_error(r, 400, "invalid_image", msg, field);
    if (e == EASEL_EINVAL) return http_error(r, 400, "image_too_large", msg, field);
    if (e == EASEL_ENOTFOUND) return http_error(r, 400, "unknown_upload", msg, field);
    if (e == EASEL_ENOMEM) return http_error(r, 500, "out_of_memory", "out of memory", NULL);
    log_error("uploads: %s", msg);
    return http_error(r, 507, "storage_unavailable", "the upload could not be kept", field);
}

static cJSON *upload_json(const upload_info *in) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    char t[40];
    http_time(in->created_ms, t, sizeof t);
    cJSON_AddStringToObject(o, "id", in->id);
    cJSON_AddStringToObject(o, "object", "upload");
    cJSON_AddStringToObject(o, "format", image_format_name(in->format));
    cJSON_AddNumberToObject(o, "width", in->width);
    cJSON_AddNumberToObject(o, "height", in->height);
    cJSON_AddBoolToObject(o, "has_alpha", in->has_alpha);
    cJSON_AddNumberToObject(o, "bytes", (double)in->bytes);
    cJSON_AddStringToObject(o, "created_at", t);
    return o;
}

enum MHD_Result api_upload_create(http_req *r) {
    uploads *u = server_cfg(r->srv)->uploads;
    if (!u) return http_error(r, 501, "not_implemented", "this server keeps no uploads", NULL);
    const uint8_t *data = (const uint8_t *)r->body;
    size_t len = r->body_len;
    http_parts ps = {0};
    const char *field = "body";
    if (http_is_multipart(r)) {
        easel_err e = http_multipart(r, &ps);
        if (e) return http_upload_error(r, e, "body");
        const http_part *p = http_part_get(&ps, "file");
        field = "file";
        if (!p) p = http_part_get(&ps, "image"), field = "image";
        if (!p) {
            http_parts_free(&ps);
            return http_error(r, 400, "invalid_field",
                              "file: the form has no \"file\" (or \"image\") field", "file");
        }
        data = p->data, len = p->len;
    }
    upload_info in;
    easel_err e = uploads_put(u, data, len, &in);
    http_parts_free(&ps);
    if (e) return http_upload_error(r, e, field);
    return http_json(r, 201, upload_json(&in));
}

enum MHD_Result api_upload_get(http_req *r) {
    uploads *u = server_cfg(r->srv)->uploads;
    upload_info in;
    if (!u || uploads_info(u, r->arg, &in))
        return http_error(r, 404, "not_found", "no such upload", NULL);
    return http_json(r, 200, upload_json(&in));
}

/* ---- init_image / mask of a job request ---- */

void http_made_uploads_drop(http_req *r, http_made_uploads *m) {
    uploads *u = server_cfg(r->srv)->uploads;
    for (int i = 0; u && i < m->n; i++)
        uploads_remove(u, m->id[i]);
    m->n = 0;
}

easel_err http_keep_image(http_req *r, const uint8_t *data, size_t len, http_made_uploads *m,
                          char id[40]) {
    uploads *u = server_cfg(r->srv)->uploads;
    if (!u) return easel_seterr(EASEL_EUNSUPPORTED, "this server keeps no uploads");
    if (m->n >= 4) return easel_seterr(EASEL_EINVAL, "too many images");
    upload_info in;
    easel_err e = uploads_put(u, data, len, &in);
    if (e) return e;
    snprintf(m->id[m->n++], sizeof m->id[0], "%s", in.id);
    snprintf(id, 40, "%s", in.id);
    return EASEL_OK;
}

/* Makes req[name] an upload id: checks an id exists; stores base64. */
static easel_err one_image(http_req *r, cJSON *req, const char *name, http_made_uploads *m,
                           upload_info *info, int *given) {
    uploads *u = server_cfg(r->srv)->uploads;
    *given = 0;
    cJSON *v = cJSON_GetObjectItemCaseSensitive(req, name);
    if (!v || cJSON_IsNull(v)) return EASEL_OK;
    if (!cJSON_IsString(v) || !v->valuestring[0])
        return easel_seterr(EASEL_EFORMAT, "must be an upload id (upl_...) or a base64 image");
    if (!u) return easel_seterr(EASEL_EUNSUPPORTED, "this server keeps no uploads");
    *given = 1;
    if (upload_id_valid(v->valuestring)) return uploads_info(u, v->valuestring, info);
    uint8_t *bytes = NULL;
    size_t len = 0;
    easel_err e = base64_decode(v->valuestring, strlen(v->valuestring),
                                server_cfg(r->srv)->upload_max, &bytes, &len);
    char id[40];
    if (!e) e = http_keep_image(r, bytes, len, m, id);
    free(bytes);
    if (!e) e = uploads_info(u, id, info);
    if (!e && !cJSON_ReplaceItemInObjectCaseSensitive(req, name, cJSON_CreateString(id)))
        e = easel_seterr(EASEL_ENOMEM, "out of memory");
    return e;
}

static int has_number(const cJSON *req, const char *name) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(req, name);
    return v && !cJSON_IsNull(v);
}

int http_resolve_images(http_req *r, cJSON *req, http_made_uploads *m, enum MHD_Result *answered) {
    upload_info img, msk;
    int gi = 0, gm = 0;
    const char *iname = m->image_name ? m->image_name : "init_image",
               *mname = m->mask_name ? m->mask_name : "mask";
    easel_err e = one_image(r, req, "init_image", m, &img, &gi);
    const char *field = iname;
    if (!e) field = mname, e = one_image(r, req, "mask", m, &msk, &gm);
    if (!e && gm && !gi) {
        e = easel_seterr(EASEL_EINVAL, "needs an init_image (the picture the mask is over)");
        char msg[120];
        snprintf(msg, sizeof msg, "%s: needs %s", mname, iname);
        *answered = http_error(r, 400, "invalid_field", msg, mname);
        http_made_uploads_drop(r, m);
        return 1;
    }
    if (!e && gm && (msk.width != img.width || msk.height != img.height)) {
        char msg[200];
        snprintf(msg, sizeof msg, "%s: %dx%d, but %s is %dx%d (they must match)", mname, msk.width,
                 msk.height, iname, img.width, img.height);
        *answered = http_error(r, 400, "invalid_field", msg, mname);
        http_made_uploads_drop(r, m);
        return 1;
    }
    if (e) {
        if (e == EASEL_EUNSUPPORTED) {
            *answered = http_error(r, 400, "invalid_field", "this server keeps no uploads", field);
        } else if (e == EASEL_EFORMAT && !gi && !gm) {
            char msg[200];
            snprintf(msg, sizeof msg, "%s: %s", field, easel_errmsg());
            *answered = http_error(r, 400, "invalid_field", msg, field);
        } else {
            *answered = http_upload_error(r, e, field);
        }
        http_made_uploads_drop(r, m);
        return 1;
    }
    if (gi && (!has_number(req, "width") || !has_number(req, "height"))) {
        /* the image's aspect ratio, its long side the server's default size */
        const server_config *cfg = server_cfg(r->srv);
        int side = cfg->policy.width > cfg->policy.height ? cfg->policy.width : cfg->policy.height;
        if (side <= 0) side = server_default_side(r->srv);
        if (side <= 0) side = 512;
        const cJSON *wv = cJSON_GetObjectItemCaseSensitive(req, "width"),
                    *hv = cJSON_GetObjectItemCaseSensitive(req, "height");
        int w = cJSON_IsNumber(wv) ? wv->valueint : 0, h = cJSON_IsNumber(hv) ? hv->valueint : 0;
        uploads_default_size(img.width, img.height, side, 8, &w, &h);
        /* a very wide or tall image: within the engine's sizes (the aspect then gives) */
        w = w < GEN_MIN_SIZE ? GEN_MIN_SIZE : w > GEN_MAX_SIZE ? GEN_MAX_SIZE : w;
        h = h < GEN_MIN_SIZE ? GEN_MIN_SIZE : h > GEN_MAX_SIZE ? GEN_MAX_SIZE : h;
        if (!has_number(req, "width")) {
            cJSON_DeleteItemFromObjectCaseSensitive(req, "width");
            cJSON_AddNumberToObject(req, "width", w);
        }
        if (!has_number(req, "height")) {
            cJSON_DeleteItemFromObjectCaseSensitive(req, "height");
            cJSON_AddNumberToObject(req, "height", h);
        }
    }
    return 0;
}
