/* Building blocks shared by the networks (see nn.h): weights by diffusers
 * names, and forward functions over backend ops that follow diffusers'
 * ResnetBlock2D, Attention, BasicTransformerBlock and Transformer2DModel. */
#include "nn.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#define TRY(expr)                                                                                  \
    do {                                                                                           \
        if ((err = (expr))) goto done;                                                             \
    } while (0)

easel_err nn_name(char *buf, size_t len, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= len) return easel_seterr(EASEL_EINVAL, "name too long: %s", buf);
    return EASEL_OK;
}

int nn_json_int(const cJSON *obj, const char *key, int *v) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!it || cJSON_IsNull(it)) return 0;
    if (!cJSON_IsNumber(it) || it->valuedouble != (double)it->valueint) return -1;
    *v = it->valueint;
    return 0;
}

int nn_json_float(const cJSON *obj, const char *key, float *v) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!it || cJSON_IsNull(it)) return 0;
    if (!cJSON_IsNumber(it)) return -1;
    *v = (float)it->valuedouble;
    return 0;
}

int nn_json_bool(const cJSON *obj, const char *key, int *v) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!it || cJSON_IsNull(it)) return 0;
    if (!cJSON_IsBool(it)) return -1;
    *v = cJSON_IsTrue(it);
    return 0;
}

int nn_json_ints(const cJSON *obj, const char *key, int *v, int max) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!it || cJSON_IsNull(it)) return 0;
    if (cJSON_IsNumber(it)) {
        for (int i = 0; i < max; i++)
            v[i] = it->valueint;
        return max;
    }
    if (!cJSON_IsArray(it) || cJSON_GetArraySize(it) > max) return -1;
    int n = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, it) {
        if (!cJSON_IsNumber(e)) return -1;
        v[n++] = e->valueint;
    }
    return n;
}

int nn_json_set(const cJSON *obj, const char *key) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!it || cJSON_IsNull(it) || cJSON_IsFalse(it)) return 0;
    if (cJSON_IsNumber(it)) return it->valuedouble != 0;
    if (cJSON_IsString(it)) return it->valuestring[0] != 0;
    if (cJSON_IsArray(it)) { /* e.g. only_cross_attention per block */
        const cJSON *e;
        cJSON_ArrayForEach(e, it) if (cJSON_IsTrue(e)) return 1;
        return 0;
    }
    return 1;
}

void nn_params_init(nn_params *p, wstore *ws) {
    *p = (nn_params){.ws = ws, .be = ws ? ws->be : NULL};
}

void nn_params_free(nn_params *p) {
    for (int i = 0; i < p->n; i++)
        p->be->free(p->be, p->ptrs[i]);
    free(p->ptrs);
    p->ptrs = NULL;
    p->n = p->cap = 0;
}

easel_err nn_get(nn_params *p, tensor *out, weight_layout layout, int ndim, const int64_t *shape,
                 const char *prefix, const char *name) {
    char full[NN_NAME_MAX];
    easel_err err = nn_name(full, sizeof full, "%s%s%s", prefix, *prefix ? "." : "", name);
    if (err) return err;
    if (p->n == p->cap) {
        int cap = p->cap ? 2 * p->cap : 256;
        void **np = realloc(p->ptrs, sizeof *np * (size_t)cap);
        if (!np) return easel_seterr(EASEL_ENOMEM, "loading %s: out of host memory", full);
        p->ptrs = np;
        p->cap = cap;
    }
    err = p->ws->get(p->ws, full, ndim, shape, layout, out);
    if (err) return err;
    if (!p->ws->borrowed) p->ptrs[p->n++] = out->data; /* borrowed: its owner frees it */
    return EASEL_OK;
}

easel_err nn_linear_load(nn_params *p, nn_linear *l, int in, int out, int bias, int as_conv,
                         const char *prefix) {
    int64_t ws[4] = {out, in, 1, 1}, bs[1] = {out};
    *l = (nn_linear){.in = in, .out = out};
    weight_layout lay = as_conv ? WL_CONV_AS_LINEAR : WL_PLAIN;
    easel_err err = nn_get(p, &l->w, lay, as_conv == 1 ? 4 : 2, ws, prefix, "weight");
    if (!err && bias) err = nn_get(p, &l->b, WL_PLAIN, 1, bs, prefix, "bias");
    return err;
}

easel_err nn_conv_load(nn_params *p, nn_conv *c, int in, int out, int k, const char *prefix) {
    int64_t ws[4] = {out, in, k, k}, bs[1] = {out};
    *c = (nn_conv){.in = in, .out = out, .k = k};
    easel_err err = nn_get(p, &c->w, WL_CONV, 4, ws, prefix, "weight");
    if (!err) err = nn_get(p, &c->b, WL_PLAIN, 1, bs, prefix, "bias");
    return err;
}

easel_err nn_norm_load(nn_params *p, nn_norm *n, int ch, const char *prefix) {
    int64_t s[1] = {ch};
    easel_err err = nn_get(p, &n->w, WL_PLAIN, 1, s, prefix, "weight");
    if (!err) err = nn_get(p, &n->b, WL_PLAIN, 1, s, prefix, "bias");
    return err;
}

easel_err nn_linear_fwd(backend *be, const nn_linear *l, tensor *y, const tensor *x) {
    return be->linear(be, y, x, &l->w, l->b.data ? &l->b : NULL);
}

tensor nn_linear_new(arena *ar, const nn_linear *l, const tensor *x, easel_err *err) {
    int64_t ne[TENSOR_MAX_DIMS];
    for (int i = 0; i < x->ndim; i++)
        ne[i] = x->ne[i];
    ne[x->ndim - 1] = l->out;
    tensor y = arena_new(ar, x->ndim, ne);
    if (!*err) *err = arena_error(ar);
    if (!*err) *err = nn_linear_fwd(arena_backend(ar), l, &y, x);
    return y;
}

/* ---- ResnetBlock2D ---- */

easel_err nn_resnet_load(nn_params *p, nn_resnet *r, int in, int out, int temb_dim, int groups,
                         float eps, const char *prefix) {
    char n[NN_NAME_MAX];
    easel_err err;
    *r = (nn_resnet){.in = in,
                     .out = out,
                     .groups = groups,
                     .eps = eps,
                     .has_temb = temb_dim > 0,
                     .has_shortcut = in != out};
    TRY(nn_name(n, sizeof n, "%s.norm1", prefix));
    TRY(nn_norm_load(p, &r->norm1, in, n));
    TRY(nn_name(n, sizeof n, "%s.conv1", prefix));
    TRY(nn_conv_load(p, &r->conv1, in, out, 3, n));
    if (r->has_temb) {
        TRY(nn_name(n, sizeof n, "%s.time_emb_proj", prefix));
        TRY(nn_linear_load(p, &r->temb, temb_dim, out, 1, 0, n));
    }
    TRY(nn_name(n, sizeof n, "%s.norm2", prefix));
    TRY(nn_norm_load(p, &r->norm2, out, n));
    TRY(nn_name(n, sizeof n, "%s.conv2", prefix));
    TRY(nn_conv_load(p, &r->conv2, out, out, 3, n));
    if (r->has_shortcut) {
        TRY(nn_name(n, sizeof n, "%s.conv_shortcut", prefix));
        TRY(nn_conv_load(p, &r->shortcut, in, out, 1, n));
    }
done:
    return err;
}

static easel_err conv_fwd(backend *be, const nn_conv *c, tensor *y, const tensor *x, int stride) {
    return be->conv2d(be, y, x, &c->w, &c->b, stride, c->k / 2);
}

easel_err nn_resnet_fwd(const nn_resnet *r, arena *ar, const tensor *x, const tensor *temb_act,
                        tensor *out) {
    backend *be = arena_backend(ar);
    size_t mark = arena_mark(ar);
    easel_err err = EASEL_OK;
    int64_t B = x->ne[0], H = x->ne[1], W = x->ne[2], wide = r->in > r->out ? r->in : r->out;
    /* one scratch serves as norm1(x) [.., in] and later conv2's output [.., out] */
    tensor s = arena_new4(ar, B, H, W, wide);
    tensor h = tensor_4d(s.data, s.dt, s.dev, B, H, W, r->in);
    tensor c2 = tensor_4d(s.data, s.dt, s.dev, B, H, W, r->out);
    tensor h2 = arena_new4(ar, B, H, W, r->out);
    tensor tp = r->has_temb ? arena_new2(ar, B, r->out) : (tensor){0};
    TRY(arena_error(ar));
    if (x->ne[3] != r->in || out->ne[3] != r->out || (r->has_temb && !temb_act) ||
        (r->has_shortcut && out->data == x->data))
        TRY(easel_seterr(EASEL_EINVAL, "resnet: bad input/output channels"));
    if (r->has_shortcut) TRY(conv_fwd(be, &r->shortcut, out, x, 1)); /* out = shortcut(x) */
    TRY(be->group_norm(be, &h, x, &r->norm1.w, &r->norm1.b, r->groups, r->eps, 1));
    TRY(conv_fwd(be, &r->conv1, &h2, &h, 1));
    if (r->has_temb) {
        TRY(nn_linear_fwd(be, &r->temb, &tp, temb_act));
        tensor tp4 = tensor_4d(tp.data, tp.dt, tp.dev, B, 1, 1, r->out);
        TRY(be->binary(be, &h2, &h2, &tp4, BINARY_ADD));
    }
    TRY(be->group_norm(be, &h2, &h2, &r->norm2.w, &r->norm2.b, r->groups, r->eps, 1));
    TRY(conv_fwd(be, &r->conv2, &c2, &h2, 1));
    TRY(be->axpby(be, out, 1.0f, r->has_shortcut ? out : x, 1.0f, &c2));
done:
    arena_release(ar, mark);
    return err;
}

/* ---- attention ---- */

easel_err nn_attn_load(nn_params *p, nn_attn *a, int dim, int ctx_dim, int heads, int qkv_bias,
                       int as_conv, const char *prefix) {
    char n[NN_NAME_MAX];
    easel_err err;
    a->heads = heads;
    TRY(nn_name(n, sizeof n, "%s.to_q", prefix));
    TRY(nn_linear_load(p, &a->q, dim, dim, qkv_bias, as_conv, n));
    TRY(nn_name(n, sizeof n, "%s.to_k", prefix));
    TRY(nn_linear_load(p, &a->k, ctx_dim, dim, qkv_bias, as_conv, n));
    TRY(nn_name(n, sizeof n, "%s.to_v", prefix));
    TRY(nn_linear_load(p, &a->v, ctx_dim, dim, qkv_bias, as_conv, n));
    TRY(nn_name(n, sizeof n, "%s.to_out.0", prefix));
    TRY(nn_linear_load(p, &a->o, dim, dim, 1, as_conv, n));
done:
    return err;
}

easel_err nn_attn_fwd(const nn_attn *a, arena *ar, tensor *x, const tensor *n, const tensor *ctx) {
    backend *be = arena_backend(ar);
    size_t mark = arena_mark(ar);
    easel_err err = EASEL_OK;
    const tensor *c = ctx ? ctx : n;
    tensor q = nn_linear_new(ar, &a->q, n, &err);
    tensor k = nn_linear_new(ar, &a->k, c, &err);
    tensor v = nn_linear_new(ar, &a->v, c, &err);
    tensor o = arena_like(ar, &q);
    TRY(err);
    TRY(arena_error(ar));
    TRY(be->attention(be, &o, &q, &k, &v, a->heads, 0));
    TRY(nn_linear_fwd(be, &a->o, &q, &o)); /* q is free now and has x's shape */
    TRY(be->binary(be, x, x, &q, BINARY_ADD));
done:
    arena_release(ar, mark);
    return err;
}

/* ---- Transformer2DModel ---- */

static easel_err tblock_load(nn_params *p, nn_tblock *b, int ch, int heads, int ctx_dim,
                             const char *prefix) {
    char n[NN_NAME_MAX];
    easel_err err;
    TRY(nn_name(n, sizeof n, "%s.norm1", prefix));
    TRY(nn_norm_load(p, &b->norm1, ch, n));
    TRY(nn_name(n, sizeof n, "%s.attn1", prefix));
    TRY(nn_attn_load(p, &b->attn1, ch, ch, heads, 0, 0, n));
    TRY(nn_name(n, sizeof n, "%s.norm2", prefix));
    TRY(nn_norm_load(p, &b->norm2, ch, n));
    TRY(nn_name(n, sizeof n, "%s.attn2", prefix));
    TRY(nn_attn_load(p, &b->attn2, ch, ctx_dim, heads, 0, 0, n));
    TRY(nn_name(n, sizeof n, "%s.norm3", prefix));
    TRY(nn_norm_load(p, &b->norm3, ch, n));
    TRY(nn_name(n, sizeof n, "%s.ff.net.0.proj", prefix));
    TRY(nn_linear_load(p, &b->ff_in, ch, 8 * ch, 1, 0, n));
    TRY(nn_name(n, sizeof n, "%s.ff.net.2", prefix));
    TRY(nn_linear_load(p, &b->ff_out, 4 * ch, ch, 1, 0, n));
done:
    return err;
}

easel_err nn_transformer_load(nn_params *p, nn_transformer *t, int ch, int heads, int ctx_dim,
                              int groups, int layers, int linear_proj, const char *prefix) {
    char n[NN_NAME_MAX];
    easel_err err;
    if (layers < 1 || layers > NN_MAX_TLAYERS || heads < 1 || ch % heads)
        return easel_seterr(EASEL_EUNSUPPORTED, "%s: %d layers / %d heads for %d channels", prefix,
                            layers, heads, ch);
    *t = (nn_transformer){
        .ch = ch, .heads = heads, .groups = groups, .layers = layers, .linear_proj = linear_proj};
    TRY(nn_name(n, sizeof n, "%s.norm", prefix));
    TRY(nn_norm_load(p, &t->norm, ch, n));
    TRY(nn_name(n, sizeof n, "%s.proj_in", prefix));
    TRY(nn_linear_load(p, &t->proj_in, ch, ch, 1, linear_proj ? 0 : 1, n));
    for (int i = 0; i < layers; i++) {
        TRY(nn_name(n, sizeof n, "%s.transformer_blocks.%d", prefix, i));
        TRY(tblock_load(p, &t->blocks[i], ch, heads, ctx_dim, n));
    }
    TRY(nn_name(n, sizeof n, "%s.proj_out", prefix));
    TRY(nn_linear_load(p, &t->proj_out, ch, ch, 1, linear_proj ? 0 : 1, n));
done:
    return err;
}

/* hs += ff(layer_norm3(hs)); n is a free [B,L,ch] scratch tensor. */
static easel_err ff_fwd(const nn_tblock *b, arena *ar, tensor *hs, tensor *n) {
    backend *be = arena_backend(ar);
    size_t mark = arena_mark(ar);
    easel_err err = EASEL_OK;
    TRY(be->layer_norm(be, n, hs, &b->norm3.w, &b->norm3.b, 1e-5f));
    tensor g = nn_linear_new(ar, &b->ff_in, n, &err);
    tensor gg = arena_new3(ar, hs->ne[0], hs->ne[1], b->ff_out.in);
    TRY(err);
    TRY(arena_error(ar));
    TRY(be->geglu(be, &gg, &g));
    TRY(nn_linear_fwd(be, &b->ff_out, n, &gg));
    TRY(be->binary(be, hs, hs, n, BINARY_ADD));
done:
    arena_release(ar, mark);
    return err;
}

static easel_err tblock_fwd(const nn_tblock *b, arena *ar, tensor *hs, tensor *n,
                            const tensor *ctx) {
    backend *be = arena_backend(ar);
    easel_err err;
    TRY(be->layer_norm(be, n, hs, &b->norm1.w, &b->norm1.b, 1e-5f));
    TRY(nn_attn_fwd(&b->attn1, ar, hs, n, NULL));
    TRY(be->layer_norm(be, n, hs, &b->norm2.w, &b->norm2.b, 1e-5f));
    TRY(nn_attn_fwd(&b->attn2, ar, hs, n, ctx));
    TRY(ff_fwd(b, ar, hs, n));
done:
    return err;
}

easel_err nn_transformer_fwd(const nn_transformer *t, arena *ar, tensor *x, const tensor *ctx) {
    backend *be = arena_backend(ar);
    size_t mark = arena_mark(ar);
    easel_err err = EASEL_OK;
    int64_t B = x->ne[0], L = x->ne[1] * x->ne[2];
    tensor xs = tensor_3d(x->data, x->dt, x->dev, B, L, x->ne[3]);
    tensor n = arena_like(ar, &xs);
    tensor hs = arena_like(ar, &xs);
    TRY(arena_error(ar));
    TRY(be->group_norm(be, &n, &xs, &t->norm.w, &t->norm.b, t->groups, 1e-6f, 0));
    TRY(nn_linear_fwd(be, &t->proj_in, &hs, &n));
    for (int i = 0; i < t->layers; i++)
        TRY(tblock_fwd(&t->blocks[i], ar, &hs, &n, ctx));
    TRY(nn_linear_fwd(be, &t->proj_out, &n, &hs));
    TRY(be->binary(be, &xs, &xs, &n, BINARY_ADD));
done:
    arena_release(ar, mark);
    return err;
}

/* ---- arena compaction ---- */

easel_err nn_compact(arena *ar, size_t mark, tensor *t) {
    backend *be = arena_backend(ar);
    arena_release(ar, mark);
    tensor d = arena_like(ar, t); /* at or below t, or in another chunk */
    easel_err err = arena_error(ar);
    if (err || d.data == t->data) return err;
    size_t es = dtype_size(t->dt), n = (size_t)tensor_nelem(t);
    char *dst = d.data, *src = t->data;
    size_t gap = dst < src ? (size_t)(src - dst) / es : n; /* elements; copies must not overlap */
    if (dst > src && dst < src + n * es)
        return easel_seterr(EASEL_EINTERNAL, "nn_compact: overlap");
    for (size_t i = 0; i < n; i += gap) {
        size_t k = n - i < gap ? n - i : gap;
        tensor a = tensor_1d(dst + i * es, t->dt, t->dev, (int64_t)k);
        tensor b = tensor_1d(src + i * es, t->dt, t->dev, (int64_t)k);
        if ((err = be->copy(be, &a, &b))) return err;
    }
    d = tensor_make(d.data, t->dt, t->dev, t->ndim, t->ne);
    *t = d;
    return EASEL_OK;
}

/* ---- upsampling ---- */

easel_err nn_upsample_to(backend *be, arena *ar, tensor *y, const tensor *x) {
    int64_t N = x->ne[0], h = x->ne[1], w = x->ne[2], C = x->ne[3];
    int64_t H = y->ne[1], W = y->ne[2];
    if (y->ne[0] != N || y->ne[3] != C || (H + 1) / 2 != h || (W + 1) / 2 != w)
        return easel_seterr(EASEL_EINVAL, "upsample: cannot take [%lld,%lld] to [%lld,%lld]",
                            (long long)h, (long long)w, (long long)H, (long long)W);
    if (H == 2 * h && W == 2 * w) return be->upsample2x(be, y, x);
    size_t mark = arena_mark(ar), es = dtype_size(y->dt);
    easel_err err = EASEL_OK;
    tensor big = arena_new4(ar, N, 2 * h, 2 * w, C);
    TRY(arena_error(ar));
    TRY(be->upsample2x(be, &big, x));
    /* crop: rows of W·C values (whole samples at once when only H is odd) */
    int64_t run = W == 2 * w ? H * W * C : W * C, per = W == 2 * w ? 1 : H;
    for (int64_t i = 0; i < N * per; i++) {
        int64_t n = i / per, r = i % per;
        char *src = (char *)big.data + (size_t)(((n * 2 * h + r) * 2 * w) * C) * es;
        char *dst = (char *)y->data + (size_t)(i * run) * es;
        tensor s = tensor_1d(src, y->dt, y->dev, run), d = tensor_1d(dst, y->dt, y->dev, run);
        TRY(be->copy(be, &d, &s));
    }
done:
    arena_release(ar, mark);
    return err;
}
