/* The generic weight store over safetensors files (see weights.h): an index
 * of every stored tensor sorted by name, shape checks, F32/F16/BF16 -> f32 ->
 * our layout -> the hook -> backend upload in the weight's dtype, and a
 * record of which tensors were asked for. */
#include "weights.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../engine/safetensors.h"

#define WS_NAME_MAX 512

typedef struct {
    const char *name; /* stored name (owned by the st_file) */
    const st_file *file;
    const st_tensor *t;
    size_t order; /* position over all files, for the unused list */
    int used;
} ws_entry;

typedef struct {
    st_file **files;
    int nfiles;
    ws_entry *ents; /* sorted by name */
    size_t nents;
    char *prefix;
    wstore_rename_fn rename;
    void *rename_ctx;
} ws_st;

static const char *shape_str(int ndim, const int64_t *s, char *buf, size_t len) {
    size_t o = 0;
    o += (size_t)snprintf(buf + o, len - o, "[");
    for (int i = 0; i < ndim && o < len; i++)
        o += (size_t)snprintf(buf + o, len - o, "%s%lld", i ? "," : "", (long long)s[i]);
    if (o < len) snprintf(buf + o, len - o, "]");
    return buf;
}

/* Drops trailing 1x1 from a conv-as-linear shape: [Co,Ci,1,1] -> [Co,Ci]. */
static int squeeze_1x1(int ndim, const int64_t *s, int64_t *o) {
    for (int i = 0; i < ndim; i++)
        o[i] = s[i];
    if (ndim == 4 && s[2] == 1 && s[3] == 1) return 2;
    return ndim;
}

static int shapes_match(int sndim, const int64_t *ss, int ndim, const int64_t *s,
                        weight_layout layout) {
    int64_t a[ST_MAX_DIMS], b[ST_MAX_DIMS];
    if (sndim > ST_MAX_DIMS || ndim > ST_MAX_DIMS) return 0;
    int na = sndim, nb = ndim;
    if (layout == WL_CONV_AS_LINEAR) {
        na = squeeze_1x1(sndim, ss, a);
        nb = squeeze_1x1(ndim, s, b);
    } else {
        memcpy(a, ss, sizeof(int64_t) * (size_t)sndim);
        memcpy(b, s, sizeof(int64_t) * (size_t)ndim);
    }
    if (na != nb) return 0;
    for (int i = 0; i < na; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

/* [Co,Ci,KH,KW] -> [Co,KH,KW,Ci] */
static void conv_to_ohwi(const float *src, float *dst, const int64_t *s) {
    int64_t co = s[0], ci = s[1], kh = s[2], kw = s[3];
    for (int64_t o = 0; o < co; o++)
        for (int64_t i = 0; i < ci; i++)
            for (int64_t y = 0; y < kh; y++)
                for (int64_t x = 0; x < kw; x++)
                    dst[((o * kh + y) * kw + x) * ci + i] = src[((o * ci + i) * kh + y) * kw + x];
}

dtype wstore_dtype(const backend *be, const char *name, int ndim) {
    if (ndim < 2 || (name && strstr(name, "position_embedding"))) return be->act_dtype;
    return be->weight_dtype;
}

easel_err wstore_upload(wstore *ws, const char *name, const float *src, int sndim,
                        const int64_t *sshape, int ndim, const int64_t *shape, weight_layout layout,
                        tensor *out) {
    backend *be = ws->be;
    char a[128], b[128];
    if (ndim < 1 || ndim > TENSOR_MAX_DIMS || (layout == WL_CONV && ndim != 4))
        return easel_seterr(EASEL_EINTERNAL, "weight %s: bad requested shape %s", name,
                            shape_str(ndim, shape, a, sizeof a));
    if (!shapes_match(sndim, sshape, ndim, shape, layout))
        return easel_seterr(EASEL_EFORMAT, "weight %s: expected shape %s, found %s", name,
                            shape_str(ndim, shape, a, sizeof a),
                            shape_str(sndim, sshape, b, sizeof b));
    int64_t ne[TENSOR_MAX_DIMS];
    int nd = ndim;
    const float *data = src;
    float *tmp = NULL;
    if (layout == WL_CONV) {
        int64_t n = shape[0] * shape[1] * shape[2] * shape[3];
        tmp = malloc(sizeof(float) * (size_t)(n ? n : 1));
        if (!tmp) return easel_seterr(EASEL_ENOMEM, "weight %s: out of host memory", name);
        conv_to_ohwi(src, tmp, shape);
        data = tmp;
        ne[0] = shape[0], ne[1] = shape[2], ne[2] = shape[3], ne[3] = shape[1];
    } else if (layout == WL_CONV_AS_LINEAR) {
        nd = 2;
        ne[0] = shape[0], ne[1] = shape[1];
    } else {
        memcpy(ne, shape, sizeof(int64_t) * (size_t)ndim);
    }
    int64_t n = 1;
    for (int i = 0; i < nd; i++)
        n *= ne[i];
    easel_err e = EASEL_OK;
    wstore_tensor t = {name, (float *)data, nd, ne, layout, wstore_dtype(be, name, nd)};
    if (ws->hook) {
        if (!tmp) { /* the hook may write: never into the caller's src */
            if (!(tmp = malloc(sizeof(float) * (size_t)(n ? n : 1))))
                return easel_seterr(EASEL_ENOMEM, "weight %s: out of host memory", name);
            memcpy(tmp, src, sizeof(float) * (size_t)n);
        }
        t.data = tmp;
        e = ws->hook(ws->hook_ctx, &t);
    }
    if (!e) e = backend_tensor_alloc(be, out, t.dt, nd, ne);
    if (!e) {
        e = be->upload(be, out, t.data);
        if (e) backend_tensor_free(be, out);
    }
    free(tmp);
    if (e) return easel_wraperr(e, "weight %s", name);
    return EASEL_OK;
}

static int ent_cmp(const void *a, const void *b) {
    return strcmp(((const ws_entry *)a)->name, ((const ws_entry *)b)->name);
}

static ws_entry *ws_find(ws_st *s, const char *name) {
    char full[WS_NAME_MAX], buf[WS_NAME_MAX];
    int n = snprintf(full, sizeof full, "%s%s", s->prefix ? s->prefix : "", name);
    if (n < 0 || (size_t)n >= sizeof full) return NULL;
    const char *key = full;
    if (s->rename) key = s->rename(s->rename_ctx, full, buf, sizeof buf);
    if (!key) return NULL;
    ws_entry probe = {.name = key};
    return bsearch(&probe, s->ents, s->nents, sizeof *s->ents, ent_cmp);
}

static int ws_has(wstore *ws, const char *name) {
    return ws_find(ws->ctx, name) != NULL;
}

static easel_err ws_get(wstore *ws, const char *name, int ndim, const int64_t *shape,
                        weight_layout layout, tensor *out) {
    ws_st *s = ws->ctx;
    ws_entry *e = ws_find(s, name);
    if (!e) return easel_seterr(EASEL_ENOTFOUND, "weight %s: missing from the checkpoint", name);
    int64_t n = st_nelem(e->t);
    float *buf = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    if (!buf) return easel_seterr(EASEL_ENOMEM, "weight %s: out of host memory", name);
    easel_err err = st_read_f32(e->file, e->t, buf);
    if (err) {
        free(buf);
        return easel_wraperr(err, "weight %s (stored as %s)", name, e->name);
    }
    err = wstore_upload(ws, name, buf, e->t->ndim, e->t->shape, ndim, shape, layout, out);
    free(buf);
    if (err) return err;
    e->used = 1;
    ws->bytes_loaded += tensor_nbytes(out);
    return EASEL_OK;
}

static easel_err ws_index(ws_st *s) {
    size_t total = 0;
    for (int i = 0; i < s->nfiles; i++)
        total += st_count(s->files[i]);
    s->ents = calloc(total ? total : 1, sizeof *s->ents);
    if (!s->ents) return easel_seterr(EASEL_ENOMEM, "weight store: out of host memory");
    for (int i = 0; i < s->nfiles; i++)
        for (size_t j = 0; j < st_count(s->files[i]); j++) {
            const st_tensor *t = st_at(s->files[i], j);
            s->ents[s->nents] = (ws_entry){t->name, s->files[i], t, s->nents, 0};
            s->nents++;
        }
    qsort(s->ents, s->nents, sizeof *s->ents, ent_cmp);
    for (size_t i = 1; i < s->nents; i++)
        if (!strcmp(s->ents[i - 1].name, s->ents[i].name))
            return easel_seterr(EASEL_EFORMAT, "tensor %s is stored in both %s and %s",
                                s->ents[i].name, st_path(s->ents[i - 1].file),
                                st_path(s->ents[i].file));
    return EASEL_OK;
}

static void ws_st_free(ws_st *s) {
    if (!s) return;
    for (int i = 0; i < s->nfiles; i++)
        st_close(s->files[i]);
    free(s->files);
    free(s->ents);
    free(s->prefix);
    free(s);
}

easel_err wstore_st_open(backend *be, const char *const *paths, int npaths, const char *prefix,
                         wstore_rename_fn rename, void *rename_ctx, wstore **out) {
    *out = NULL;
    wstore *ws = calloc(1, sizeof *ws);
    ws_st *s = calloc(1, sizeof *s);
    if (!ws || !s || npaths < 0 ||
        !(s->files = calloc(npaths > 0 ? (size_t)npaths : 1, sizeof *s->files)) ||
        (prefix && !(s->prefix = strdup(prefix)))) {
        free(ws);
        ws_st_free(s);
        return easel_seterr(EASEL_ENOMEM, "weight store: out of host memory");
    }
    s->rename = rename;
    s->rename_ctx = rename_ctx;
    easel_err e = EASEL_OK;
    for (int i = 0; i < npaths && !e; i++) {
        e = st_open(paths[i], &s->files[i]);
        if (!e) s->nfiles++;
    }
    if (!e) e = ws_index(s);
    if (e) {
        free(ws);
        ws_st_free(s);
        return e;
    }
    *ws = (wstore){.be = be, .get = ws_get, .has = ws_has, .ctx = s};
    *out = ws;
    return EASEL_OK;
}

void wstore_st_close(wstore *ws) {
    if (!ws) return;
    ws_st_free(ws->ctx);
    free(ws);
}

static int order_cmp(const void *a, const void *b) {
    size_t x = (*(ws_entry *const *)a)->order, y = (*(ws_entry *const *)b)->order;
    return x < y ? -1 : x > y;
}

size_t wstore_st_unused(const wstore *ws, const char **names, size_t max) {
    const ws_st *s = ws->ctx;
    size_t count = 0;
    for (size_t i = 0; i < s->nents; i++)
        count += !s->ents[i].used;
    if (!names || !max || !count) return count;
    ws_entry **list = malloc(sizeof *list * count);
    if (!list) { /* still report the count; names in index order */
        size_t k = 0;
        for (size_t i = 0; i < s->nents && k < max; i++)
            if (!s->ents[i].used) names[k++] = s->ents[i].name;
        return count;
    }
    size_t k = 0;
    for (size_t i = 0; i < s->nents; i++)
        if (!s->ents[i].used) list[k++] = &s->ents[i];
    qsort(list, count, sizeof *list, order_cmp);
    for (size_t i = 0; i < count && i < max; i++)
        names[i] = list[i]->name;
    free(list);
    return count;
}
