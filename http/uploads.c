/* The upload store (see uploads.h). Layout in the directory:
 *   upl_<32 hex>.img   the bytes the client sent (written atomically first)
 *   upl_<32 hex>.json  its record (written atomically second: the upload exists)
 * plus our temp files (.X.tmp.PID.HEX) while a write is under way. */
#include "uploads.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "../engine/fsutil.h"
#include "../engine/log.h"
#include "params.h"

#define SWEEP_EVERY_MS 60000
#define LEFTOVER_MS 3600000 /* an image without a record, or a temp file, older than this goes */

struct uploads {
    char dir[4096];
    int64_t retention_ms;
    image_limits limits;
    uploads_in_use_fn in_use;
    void *in_use_ctx;
    store *st; /* holds uploads too (several nodes), or NULL */
    pthread_mutex_t mu; /* the sweep */
    int64_t last_sweep_ms;
};

static int64_t wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

easel_err uploads_open(const uploads_config *cfg, uploads **out) {
    *out = NULL;
    if (!cfg || !cfg->dir || !cfg->dir[0] || strlen(cfg->dir) > 3900)
        return easel_seterr(EASEL_EINVAL, "uploads: no directory");
    easel_err e = fs_mkdir_p(cfg->dir);
    if (e) return easel_wraperr(e, "uploads: making %s", cfg->dir);
    uploads *u = calloc(1, sizeof *u);
    if (!u) return easel_seterr(EASEL_ENOMEM, "out of memory");
    snprintf(u->dir, sizeof u->dir, "%s", cfg->dir);
    u->retention_ms = cfg->retention_ms;
    u->limits = cfg->limits;
    if (u->limits.max_pixels <= 0) u->limits.max_pixels = IMAGE_DEFAULT_MAX_PIXELS;
    if (u->limits.max_side <= 0) u->limits.max_side = IMAGE_DEFAULT_MAX_SIDE;
    u->in_use = cfg->in_use, u->in_use_ctx = cfg->in_use_ctx;
    u->st = cfg->store && store_holds_uploads(cfg->store) ? cfg->store : NULL;
    pthread_mutex_init(&u->mu, NULL);
    *out = u;
    return EASEL_OK;
}

void uploads_close(uploads *u) {
    if (!u) return;
    pthread_mutex_destroy(&u->mu);
    free(u);
}

const image_limits *uploads_limits(const uploads *u) {
    return &u->limits;
}

int upload_id_valid(const char *s) {
    if (!s || strncmp(s, "upl_", 4) || strlen(s) != UPLOAD_ID_LEN) return 0;
    for (int i = 4; i < UPLOAD_ID_LEN; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
    return 1;
}

static void path_of(const uploads *u, const char *id, const char *ext, char *buf, size_t n) {
    snprintf(buf, n, "%s/%s.%s", u->dir, id, ext);
}

static void new_id(char id[UPLOAD_ID_LEN + 1]) {
    snprintf(id, UPLOAD_ID_LEN + 1, "upl_%016llx%016llx", (unsigned long long)params_random64(),
             (unsigned long long)params_random64());
}

easel_err uploads_put(uploads *u, const uint8_t *data, size_t len, upload_info *info) {
    memset(info, 0, sizeof *info);
    if (!data || !len) return easel_seterr(EASEL_EFORMAT, "empty: not an image");
    /* the header first (a bomb is refused before any pixel is decoded), then
     * the whole image (truncated or corrupt data is refused now, not when a
     * job runs) */
    image_info ii;
    easel_err e = image_probe(data, len, &u->limits, &ii);
    uint8_t *px = NULL;
    if (!e) e = image_decode(data, len, &u->limits, &px, &ii);
    free(px);
    if (e) return e;
    uploads_sweep(u, wall_ms());
    new_id(info->id);
    info->format = ii.format;
    info->width = ii.width, info->height = ii.height;
    info->has_alpha = ii.has_alpha;
    info->bytes = (int64_t)len;
    info->created_ms = wall_ms();
    char img[4200], rec[4200];
    path_of(u, info->id, "img", img, sizeof img);
    path_of(u, info->id, "json", rec, sizeof rec);
    if ((e = fs_write_file(img, data, len))) return easel_wraperr(e, "keeping the upload");
    cJSON *o = cJSON_CreateObject();
    char *text = NULL;
    if (o && cJSON_AddStringToObject(o, "format", image_format_name(ii.format)) &&
        cJSON_AddNumberToObject(o, "width", ii.width) &&
        cJSON_AddNumberToObject(o, "height", ii.height) &&
        cJSON_AddBoolToObject(o, "has_alpha", ii.has_alpha) &&
        cJSON_AddNumberToObject(o, "bytes", (double)len) &&
        cJSON_AddNumberToObject(o, "created_ms", (double)info->created_ms))
        text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!text) {
        unlink(img);
        return easel_seterr(EASEL_ENOMEM, "out of memory");
    }
    /* the store's row first: once the record exists here, every node can read it */
    if (u->st && (e = store_upload_put(u->st, info->id, text, data, len, info->created_ms))) {
        free(text);
        unlink(img);
        return easel_wraperr(e, "keeping the upload");
    }
    e = fs_write_file(rec, text, strlen(text));
    free(text);
    if (e) {
        unlink(img);
        if (u->st) store_upload_remove(u->st, info->id);
        return easel_wraperr(e, "keeping the upload's record");
    }
    return EASEL_OK;
}

/* An upload this node lacks, from the shared store: kept here as if it had
 * been sent here (image first, record second). EASEL_ENOTFOUND if the store
 * has none either. */
static easel_err fetch_from_store(uploads *u, const char *id) {
    char *record = NULL;
    uint8_t *data = NULL;
    size_t len = 0;
    easel_err e = store_upload_get(u->st, id, &record, &data, &len);
    if (e) return e;
    char img[4200], rec[4200];
    path_of(u, id, "img", img, sizeof img);
    path_of(u, id, "json", rec, sizeof rec);
    e = fs_write_file(img, data, len);
    if (!e && (e = fs_write_file(rec, record, strlen(record)))) unlink(img);
    free(record), free(data);
    return e ? easel_wraperr(e, "keeping upload %s from the store", id) : EASEL_OK;
}

easel_err uploads_info(uploads *u, const char *id, upload_info *info) {
    memset(info, 0, sizeof *info);
    if (!upload_id_valid(id))
        return easel_seterr(EASEL_ENOTFOUND, "'%.40s' is not an upload id", id ? id : "");
    char rec[4200];
    path_of(u, id, "json", rec, sizeof rec);
    uint8_t *text = NULL;
    size_t n = 0;
    easel_err e = fs_read_file(rec, 4096, &text, &n);
    if (e == EASEL_ENOTFOUND && u->st) { /* another node's: the store has it */
        easel_err f = fetch_from_store(u, id);
        if (f && f != EASEL_ENOTFOUND) return f;
        if (!f) e = fs_read_file(rec, 4096, &text, &n);
    }
    if (e == EASEL_ENOTFOUND)
        return easel_seterr(EASEL_ENOTFOUND,
                            "no upload %s (unknown, or removed after the "
                            "retention)",
                            id);
    if (e) return e;
    cJSON *o = cJSON_ParseWithLength((const char *)text, n);
    free(text);
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(o, "format");
    int fmt = cJSON_IsString(f) ? image_format_parse(f->valuestring) : -1;
    const cJSON *w = cJSON_GetObjectItemCaseSensitive(o, "width"),
                *h = cJSON_GetObjectItemCaseSensitive(o, "height"),
                *a = cJSON_GetObjectItemCaseSensitive(o, "has_alpha"),
                *b = cJSON_GetObjectItemCaseSensitive(o, "bytes"),
                *c = cJSON_GetObjectItemCaseSensitive(o, "created_ms");
    if (fmt < 0 || !cJSON_IsNumber(w) || !cJSON_IsNumber(h) || !cJSON_IsNumber(b) ||
        !cJSON_IsNumber(c)) {
        cJSON_Delete(o);
        return easel_seterr(EASEL_EIO, "upload %s: its record is damaged", id);
    }
    snprintf(info->id, sizeof info->id, "%s", id);
    info->format = (image_format)fmt;
    info->width = w->valueint, info->height = h->valueint;
    info->has_alpha = cJSON_IsTrue(a);
    info->bytes = (int64_t)b->valuedouble, info->created_ms = (int64_t)c->valuedouble;
    cJSON_Delete(o);
    return EASEL_OK;
}

easel_err uploads_read(uploads *u, const char *id, uint8_t **data, size_t *len) {
    *data = NULL, *len = 0;
    upload_info info;
    easel_err e = uploads_info(u, id, &info);
    if (e) return e;
    char img[4200];
    path_of(u, id, "img", img, sizeof img);
    e = fs_read_file(img, (size_t)1 << 31, data, len);
    if (e == EASEL_ENOTFOUND)
        return easel_seterr(EASEL_ENOTFOUND, "upload %s: its image is gone", id);
    return e;
}

void uploads_remove(uploads *u, const char *id) {
    if (!upload_id_valid(id)) return;
    char p[4200];
    path_of(u, id, "json", p, sizeof p); /* the record first: the upload is gone at once */
    unlink(p);
    path_of(u, id, "img", p, sizeof p);
    unlink(p);
    if (u->st && store_upload_remove(u->st, id))
        log_warn("uploads: %s stays in the store: %s", id, easel_errmsg());
}

int uploads_sweep(uploads *u, int64_t now_ms) {
    pthread_mutex_lock(&u->mu);
    if (u->last_sweep_ms && now_ms - u->last_sweep_ms < SWEEP_EVERY_MS &&
        now_ms >= u->last_sweep_ms) {
        pthread_mutex_unlock(&u->mu);
        return 0;
    }
    u->last_sweep_ms = now_ms;
    int removed = 0;
    DIR *d = opendir(u->dir);
    struct dirent *de;
    while (d && (de = readdir(d))) {
        const char *name = de->d_name;
        char path[4400];
        snprintf(path, sizeof path, "%s/%s", u->dir, name);
        struct stat st;
        if (name[0] == '.' && !fs_is_temp_name(name)) continue;
        if (stat(path, &st) || !S_ISREG(st.st_mode)) continue;
        int64_t age = now_ms - (int64_t)st.st_mtime * 1000;
        if (fs_is_temp_name(name)) {
            if (age > LEFTOVER_MS) unlink(path);
            continue;
        }
        size_t n = strlen(name);
        char id[UPLOAD_ID_LEN + 1];
        if (n != UPLOAD_ID_LEN + 4 && n != UPLOAD_ID_LEN + 5) continue;
        memcpy(id, name, UPLOAD_ID_LEN), id[UPLOAD_ID_LEN] = 0;
        if (!upload_id_valid(id)) continue;
        if (!strcmp(name + UPLOAD_ID_LEN, ".img")) {
            char rec[4200];
            path_of(u, id, "json", rec, sizeof rec);
            if (age > LEFTOVER_MS && access(rec, F_OK) && errno == ENOENT) unlink(path);
            continue;
        }
        if (strcmp(name + UPLOAD_ID_LEN, ".json") || u->retention_ms <= 0) continue;
        upload_info info;
        if (uploads_info(u, id, &info)) continue;
        if (now_ms - info.created_ms <= u->retention_ms) continue;
        if (u->in_use && u->in_use(u->in_use_ctx, id)) continue;
        uploads_remove(u, id);
        removed++;
    }
    if (d) closedir(d);
    int in_store = 0; /* other nodes' expired uploads (this node never saw them) */
    if (u->st && u->retention_ms > 0 &&
        store_upload_sweep(u->st, now_ms - u->retention_ms, &in_store))
        log_warn("uploads: sweeping the store: %s", easel_errmsg());
    removed += in_store;
    pthread_mutex_unlock(&u->mu);
    if (removed) log_info("uploads: removed %d upload(s) past the retention", removed);
    return removed;
}

/* ---- what a job makes of its uploads ---- */

easel_err image_prepare_job(const uint8_t *img, size_t img_len, const uint8_t *mask,
                            size_t mask_len, int mask_same, const image_limits *lim,
                            mask_source from, image_resize_mode resize, int width, int height,
                            uint32_t background, uint8_t **rgb, uint8_t **mask_out) {
    *rgb = NULL;
    if (mask_out) *mask_out = NULL;
    image_limits def = {IMAGE_DEFAULT_MAX_PIXELS, IMAGE_DEFAULT_MAX_SIDE};
    if (!lim) lim = &def;
    if (width < 1 || height < 1 || (int64_t)width * height > lim->max_pixels)
        return easel_seterr(EASEL_EINVAL, "bad size %dx%d", width, height);
    uint8_t *rgba = NULL, *flat = NULL, *out = NULL, *m1 = NULL, *mout = NULL, *mrgba = NULL;
    image_info ii, mi;
    size_t px = (size_t)width * height;
    easel_err e = image_decode(img, img_len, lim, &rgba, &ii);
    if (e) {
        e = easel_wraperr(e, "init_image");
        goto done;
    }
    size_t spx = (size_t)ii.width * ii.height;
    if (!(flat = malloc(spx * 3)) || !(out = malloc(px * 3))) {
        e = easel_seterr(EASEL_ENOMEM, "out of memory");
        goto done;
    }
    image_flatten(rgba, ii.width, ii.height, background, flat);
    if ((e = image_resize(flat, ii.width, ii.height, 3, out, width, height, resize))) goto done;
    if ((mask || mask_same) && mask_out) {
        const uint8_t *src = rgba;
        int mw = ii.width, mh = ii.height;
        if (!mask_same) {
            if ((e = image_decode(mask, mask_len, lim, &mrgba, &mi))) {
                e = easel_wraperr(e, "mask");
                goto done;
            }
            src = mrgba, mw = mi.width, mh = mi.height;
        }
        if (mw != ii.width || mh != ii.height) {
            e = easel_seterr(EASEL_EINVAL, "mask: %dx%d, but the image is %dx%d (they must match)",
                             mw, mh, ii.width, ii.height);
            goto done;
        }
        if (!(m1 = malloc(spx)) || !(mout = malloc(px))) {
            e = easel_seterr(EASEL_ENOMEM, "out of memory");
            goto done;
        }
        if (from == MASK_FROM_ALPHA)
            image_mask_from_alpha(src, mw, mh, m1);
        else
            image_mask_from_luma(src, mw, mh, m1);
        if ((e = image_resize(m1, mw, mh, 1, mout, width, height, resize))) goto done;
    }
    *rgb = out, out = NULL;
    if (mask_out) *mask_out = mout, mout = NULL;
done:
    free(rgba), free(flat), free(out), free(m1), free(mout), free(mrgba);
    return e;
}

easel_err uploads_prepare(uploads *u, const upload_job *j, uint8_t **rgb, uint8_t **mask) {
    *rgb = NULL;
    if (mask) *mask = NULL;
    if (!j->init_image) return easel_seterr(EASEL_EINVAL, "init_image: none given");
    uint8_t *img = NULL, *msk = NULL;
    size_t il = 0, ml = 0;
    int same = j->mask && !strcmp(j->mask, j->init_image);
    easel_err e = uploads_read(u, j->init_image, &img, &il);
    if (e) e = easel_wraperr(e, "init_image");
    if (!e && j->mask && !same && (e = uploads_read(u, j->mask, &msk, &ml)))
        e = easel_wraperr(e, "mask");
    if (!e)
        e = image_prepare_job(img, il, msk, ml, same, &u->limits, j->mask_from, j->resize, j->width,
                              j->height, j->background, rgb, j->mask ? mask : NULL);
    free(img), free(msk);
    return e;
}

void uploads_default_size(int img_w, int img_h, int side, int mult, int *w, int *h) {
    if (mult < 1) mult = 8;
    if (img_w < 1 || img_h < 1) img_w = img_h = 1;
    double ar = (double)img_w / img_h;
    int gw = *w > 0, gh = *h > 0;
    double fw, fh;
    if (gw && gh) return;
    if (gw)
        fw = *w, fh = *w / ar;
    else if (gh)
        fh = *h, fw = *h * ar;
    else if (img_w >= img_h)
        fw = side, fh = side / ar;
    else
        fh = side, fw = side * ar;
    int rw = (int)(fw / mult + 0.5) * mult, rh = (int)(fh / mult + 0.5) * mult;
    if (!gw) *w = rw < mult ? mult : rw;
    if (!gh) *h = rh < mult ? mult : rh;
}

/* ---- base64 ---- */

static int b64_val(unsigned char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+' || c == '-') return 62;
    if (c == '/' || c == '_') return 63;
    return -1;
}

easel_err base64_decode(const char *s, size_t n, size_t max, uint8_t **out, size_t *len) {
    *out = NULL, *len = 0;
    if (n > 5 && !strncmp(s, "data:", 5)) {
        const char *comma = memchr(s, ',', n);
        if (!comma) return easel_seterr(EASEL_EFORMAT, "a data: URL without ','");
        size_t hl = (size_t)(comma - s);
        if (hl < 7 || memcmp(comma - 7, ";base64", 7))
            return easel_seterr(EASEL_EFORMAT, "a data: URL that is not ;base64");
        n -= hl + 1, s = comma + 1;
    }
    if (n / 4 * 3 > max + 3) return easel_seterr(EASEL_EINVAL, "larger than %zu bytes", max);
    uint8_t *p = malloc(n / 4 * 3 + 4);
    if (!p) return easel_seterr(EASEL_ENOMEM, "out of memory");
    uint32_t acc = 0;
    int bits = 0, pad = 0;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == ' ' || c == '\n' || c == '\r' || c == '\t') continue;
        if (c == '=') {
            pad++;
            continue;
        }
        int v = b64_val(c);
        if (v < 0 || pad) {
            free(p);
            return easel_seterr(EASEL_EFORMAT, "not base64 (byte %zu)", i);
        }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            p[k++] = (uint8_t)(acc >> bits);
        }
    }
    if (bits >= 6 || pad > 2) {
        free(p);
        return easel_seterr(EASEL_EFORMAT, "not base64 (its length)");
    }
    if (k > max) {
        free(p);
        return easel_seterr(EASEL_EINVAL, "larger than %zu bytes", max);
    }
    *out = p, *len = k;
    return EASEL_OK;
}
