/* Backend-independent helpers (see backend.h) and the op contracts, checked
 * here once for every backend: each checking entry point validates its
 * arguments (data present, this backend's device, the dtypes the op takes,
 * shapes) and then calls the backend's own op in be->impl. */
#include "backend.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

easel_err backend_tensor_alloc(backend *be, tensor *t, dtype dt, int ndim, const int64_t *ne) {
    *t = tensor_make(NULL, dt, be->dev, ndim, ne);
    size_t bytes = tensor_nbytes(t);
    void *p = NULL;
    easel_err e = be->alloc(be, bytes ? bytes : 1, &p);
    if (e) return e;
    t->data = p;
    return EASEL_OK;
}

void backend_tensor_free(backend *be, tensor *t) {
    if (t->data) be->free(be, t->data);
    t->data = NULL;
}

/* ------------------------------------------------------------- profile */

enum {
    PR_LINEAR,
    PR_CONV3,
    PR_CONV1,
    PR_CONV_S2,
    PR_ATTN_SELF,
    PR_ATTN_CROSS,
    PR_BMM,
    PR_GN,
    PR_LN,
    PR_SOFTMAX,
    PR_UNARY,
    PR_GEGLU,
    PR_BINARY,
    PR_AXPBY,
    PR_UPSAMPLE,
    PR_CONCAT,
    PR_COPY,
    PR_OTHER,
    PR_COUNT
};
static const char *const pr_names[PR_COUNT] = {
    "linear", "conv3x3",    "conv1x1",    "conv s2", "attention self", "attention cross",
    "bmm",    "group_norm", "layer_norm", "softmax", "unary",          "geglu",
    "binary", "axpby",      "upsample2x", "concat",  "copy",           "other"};

struct backend_prof {
    double wall[PR_COUNT], cpu[PR_COUNT], flop[PR_COUNT];
    long calls[PR_COUNT];
};

static double pr_wall(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static double pr_cpu(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Times the op expression into slot k (with flop of work) when profiling. */
#define PROFILED(k, flops, expr)                                                                   \
    do {                                                                                           \
        if (!be->prof) return (expr);                                                              \
        double w0_ = pr_wall(), c0_ = pr_cpu();                                                    \
        easel_err r_ = (expr);                                                                     \
        if (be->sync) be->sync(be);                                                                \
        be->prof->wall[k] += pr_wall() - w0_, be->prof->cpu[k] += pr_cpu() - c0_;                  \
        be->prof->flop[k] += (flops), be->prof->calls[k]++;                                        \
        return r_;                                                                                 \
    } while (0)

void backend_profile_print(const backend *be, FILE *f) {
    const struct backend_prof *p = be->prof;
    if (!p) return;
    double tw = 0, tc = 0;
    for (int k = 0; k < PR_COUNT; k++)
        tw += p->wall[k], tc += p->cpu[k];
    fprintf(f, "easel profile (%s backend): op, calls, wall s, cpu s, %% of wall, GFLOP/s (wall)\n",
            be->name);
    for (int k = 0; k < PR_COUNT; k++)
        if (p->calls[k])
            fprintf(f, "  %-16s %7ld %9.3f %9.3f %5.1f%% %9.1f\n", pr_names[k], p->calls[k],
                    p->wall[k], p->cpu[k], tw > 0 ? 100 * p->wall[k] / tw : 0,
                    p->flop[k] > 0 && p->wall[k] > 0 ? p->flop[k] / p->wall[k] / 1e9 : 0);
    fprintf(f, "  %-16s %7s %9.3f %9.3f\n", "all ops", "", tw, tc);
}

void backend_profile_free(backend *be) {
    free(be->prof);
    be->prof = NULL;
}

/* ------------------------------------------------------------ messages */

static easel_err mismatch(const char *op, const char *what, const char *na, const tensor *a,
                          const char *nb, const tensor *b) {
    char sa[96], sb[96];
    return easel_seterr(EASEL_EINVAL, "%s: %s: %s %s, %s %s", op, what, na,
                        tensor_shape_str(a, sa, sizeof sa), nb, tensor_shape_str(b, sb, sizeof sb));
}

/* ------------------------------------------------- tensors an op may use */

typedef enum { AS_ACT, AS_WEIGHT, AS_ANY } dt_rule;

static int known_dtype(dtype dt) {
    return dt == DT_F32 || dt == DT_F16 || dt == DT_BF16;
}

/* Present, on this backend's device, and of a dtype the op takes: act_dtype
 * (AS_ACT), act_dtype or weight_dtype (AS_WEIGHT), any of f32/f16/bf16 (AS_ANY). */
static easel_err need_t(const backend *be, const char *op, const char *name, const tensor *t,
                        dt_rule rule) {
    if (!t || !t->data) return easel_seterr(EASEL_EINVAL, "%s: %s has no data", op, name);
    if (t->dev != be->dev)
        return easel_seterr(EASEL_EINVAL, "%s: %s is not a %s tensor", op, name, be->name);
    int ok = rule == AS_ANY
                 ? known_dtype(t->dt)
                 : t->dt == be->act_dtype || (rule == AS_WEIGHT && t->dt == be->weight_dtype);
    if (!ok) {
        if (rule == AS_ANY)
            return easel_seterr(EASEL_EUNSUPPORTED, "%s: %s has unknown dtype %d", op, name,
                                (int)t->dt);
        return easel_seterr(EASEL_EUNSUPPORTED, "%s: %s is %s; the %s backend computes in %s", op,
                            name, dtype_name(t->dt), be->name, dtype_name(be->act_dtype));
    }
    return EASEL_OK;
}

#define NEED_AS(t, rule)                                                                           \
    do {                                                                                           \
        easel_err e_ = need_t(be, OP, #t, t, rule);                                                \
        if (e_) return e_;                                                                         \
    } while (0)
#define NEED(t) NEED_AS(t, AS_ACT)

/* Product of all dims but the last (tensor_rows() is 0 when the last is 0). */
static int64_t lead_rows(const tensor *t) {
    int64_t r = 1;
    for (int i = 0; i < t->ndim - 1; i++)
        r *= t->ne[i];
    return r;
}

/* ----------------------------------------------------- memory transfers */

static easel_err chk_io(const backend *be, const char *op, const tensor *t, const void *host) {
    if (!t || !t->data || !host) return easel_seterr(EASEL_EINVAL, "%s: NULL data", op);
    if (t->dev != be->dev) return easel_seterr(EASEL_EINVAL, "%s: not a %s tensor", op, be->name);
    if (!known_dtype(t->dt))
        return easel_seterr(EASEL_EUNSUPPORTED, "%s: unknown dtype %d", op, (int)t->dt);
    return EASEL_OK;
}

static easel_err chk_upload(backend *be, tensor *dst, const float *src) {
    easel_err e = chk_io(be, "upload", dst, src);
    return e ? e : be->impl.upload(be, dst, src);
}

static easel_err chk_download(backend *be, const tensor *src, float *dst) {
    easel_err e = chk_io(be, "download", src, dst);
    return e ? e : be->impl.download(be, src, dst);
}

static easel_err chk_copy(backend *be, tensor *y, const tensor *x) {
    static const char *OP = "copy";
    NEED_AS(y, AS_ANY);
    NEED_AS(x, AS_ANY);
    if (tensor_nelem(y) != tensor_nelem(x))
        return mismatch(OP, "element counts differ", "y", y, "x", x);
    PROFILED(PR_COPY, 0, be->impl.copy(be, y, x));
}

/* ------------------------------------------------------------ GEMM ops */

static easel_err chk_linear(backend *be, tensor *y, const tensor *x, const tensor *w,
                            const tensor *b) {
    static const char *OP = "linear";
    NEED(y);
    NEED(x);
    NEED_AS(w, AS_WEIGHT);
    if (b) NEED(b);
    int64_t M = lead_rows(x), K = tensor_cols(x);
    if (w->ndim != 2 || w->ne[1] != K) return mismatch(OP, "w must be [N,K]", "x", x, "w", w);
    int64_t N = w->ne[0];
    if (tensor_cols(y) != N || lead_rows(y) != M)
        return mismatch(OP, "y must be [M,N]", "y", y, "w", w);
    if (b && tensor_nelem(b) != N) return mismatch(OP, "b must be [N]", "b", b, "w", w);
    PROFILED(PR_LINEAR, 2.0 * (double)M * (double)N * (double)K, be->impl.linear(be, y, x, w, b));
}

static int batch3(const tensor *t, int64_t *B, int64_t *r, int64_t *cl) {
    if (t->ndim == 2)
        *B = 1, *r = t->ne[0], *cl = t->ne[1];
    else if (t->ndim == 3)
        *B = t->ne[0], *r = t->ne[1], *cl = t->ne[2];
    else
        return 0;
    return 1;
}

easel_err backend_check_bmm(const tensor *y, const tensor *a, const tensor *b, int trans_b,
                            int64_t *B, int64_t *M, int64_t *N, int64_t *K) {
    static const char *OP = "bmm";
    int64_t Bb, r, cl, By, My, Ny;
    if (!batch3(a, B, M, K) || !batch3(b, &Bb, &r, &cl) || !batch3(y, &By, &My, &Ny))
        return mismatch(OP, "tensors must be [B,M,K]-like (2 or 3 dims)", "a", a, "b", b);
    *N = trans_b ? r : cl;
    int64_t Kb = trans_b ? cl : r;
    if (Bb != *B || Kb != *K)
        return mismatch(OP, trans_b ? "b must be [B,N,K]" : "b must be [B,K,N]", "a", a, "b", b);
    if (By != *B || My != *M || Ny != *N) return mismatch(OP, "y must be [B,M,N]", "y", y, "b", b);
    return EASEL_OK;
}

static easel_err chk_bmm(backend *be, tensor *y, const tensor *a, const tensor *b, int trans_b,
                         float alpha) {
    static const char *OP = "bmm";
    NEED(y);
    NEED(a);
    NEED(b);
    int64_t B, M, N, K;
    easel_err e = backend_check_bmm(y, a, b, trans_b, &B, &M, &N, &K);
    if (e) return e;
    PROFILED(PR_BMM, 2.0 * (double)B * M * N * K, be->impl.bmm(be, y, a, b, trans_b, alpha));
}

easel_err backend_conv2d_dims(const tensor *y, const tensor *x, const tensor *w, const tensor *b,
                              int stride, int pad, int64_t *Ho, int64_t *Wo) {
    static const char *OP = "conv2d";
    if (x->ndim != 4 || w->ndim != 4 || y->ndim != 4)
        return mismatch(OP, "x, w, y must be 4-d (NHWC, [Co,KH,KW,Ci])", "x", x, "w", w);
    if (stride < 1 || pad < 0)
        return easel_seterr(EASEL_EINVAL, "%s: bad stride %d or pad %d", OP, stride, pad);
    if (w->ne[3] != x->ne[3]) return mismatch(OP, "input channels differ", "x", x, "w", w);
    int64_t hn = x->ne[1] + 2 * (int64_t)pad - w->ne[1],
            wn = x->ne[2] + 2 * (int64_t)pad - w->ne[2];
    if (hn < 0 || wn < 0) return mismatch(OP, "kernel larger than padded input", "x", x, "w", w);
    *Ho = hn / stride + 1, *Wo = wn / stride + 1;
    if (y->ne[0] != x->ne[0] || y->ne[1] != *Ho || y->ne[2] != *Wo || y->ne[3] != w->ne[0]) {
        char s[160];
        snprintf(s, sizeof s, "y must be [%lld,%lld,%lld,%lld] (stride %d, pad %d)",
                 (long long)x->ne[0], (long long)*Ho, (long long)*Wo, (long long)w->ne[0], stride,
                 pad);
        return mismatch(OP, s, "y", y, "x", x);
    }
    if (b && tensor_nelem(b) != w->ne[0]) return mismatch(OP, "b must be [Co]", "b", b, "w", w);
    return EASEL_OK;
}

static easel_err chk_conv2d(backend *be, tensor *y, const tensor *x, const tensor *w,
                            const tensor *b, int stride, int pad) {
    static const char *OP = "conv2d";
    NEED(y);
    NEED(x);
    NEED_AS(w, AS_WEIGHT);
    if (b) NEED(b);
    int64_t Ho, Wo;
    easel_err e = backend_conv2d_dims(y, x, w, b, stride, pad, &Ho, &Wo);
    if (e) return e;
    int k = stride > 1 ? PR_CONV_S2 : w->ne[1] * w->ne[2] == 1 ? PR_CONV1 : PR_CONV3;
    double flop = 2.0 * (double)tensor_nelem(y) * (double)(w->ne[1] * w->ne[2] * w->ne[3]);
    PROFILED(k, flop, be->impl.conv2d(be, y, x, w, b, stride, pad));
}

/* ----------------------------------------------------- norms, softmax */

static easel_err chk_group_norm(backend *be, tensor *y, const tensor *x, const tensor *gamma,
                                const tensor *beta, int groups, float eps, int silu) {
    static const char *OP = "group_norm";
    NEED(y);
    NEED(x);
    NEED(gamma);
    NEED(beta);
    if (x->ndim < 2) return mismatch(OP, "x must be [N,...,C]", "x", x, "y", y);
    if (!tensor_same_shape(y, x)) return mismatch(OP, "y and x differ", "y", y, "x", x);
    int64_t C = tensor_cols(x);
    if (tensor_nelem(gamma) != C || tensor_nelem(beta) != C)
        return mismatch(OP, "gamma and beta must be [C]", "gamma", gamma, "x", x);
    if (groups < 1 || C % groups)
        return easel_seterr(EASEL_EINVAL, "group_norm: %lld channels not divisible by %d groups",
                            (long long)C, groups);
    PROFILED(PR_GN, 0, be->impl.group_norm(be, y, x, gamma, beta, groups, eps, silu));
}

static easel_err chk_layer_norm(backend *be, tensor *y, const tensor *x, const tensor *gamma,
                                const tensor *beta, float eps) {
    static const char *OP = "layer_norm";
    NEED(y);
    NEED(x);
    NEED(gamma);
    NEED(beta);
    if (!tensor_same_shape(y, x)) return mismatch(OP, "y and x differ", "y", y, "x", x);
    int64_t C = tensor_cols(x);
    if (tensor_nelem(gamma) != C || tensor_nelem(beta) != C)
        return mismatch(OP, "gamma and beta must be [C]", "gamma", gamma, "x", x);
    PROFILED(PR_LN, 0, be->impl.layer_norm(be, y, x, gamma, beta, eps));
}

static easel_err chk_softmax(backend *be, tensor *y, const tensor *x) {
    static const char *OP = "softmax";
    NEED(y);
    NEED(x);
    if (!tensor_same_shape(y, x)) return mismatch(OP, "y and x differ", "y", y, "x", x);
    PROFILED(PR_SOFTMAX, 0, be->impl.softmax(be, y, x));
}

static easel_err chk_attention(backend *be, tensor *o, const tensor *q, const tensor *k,
                               const tensor *v, int heads, int causal) {
    static const char *OP = "attention";
    NEED(o);
    NEED(q);
    NEED(k);
    NEED(v);
    if (q->ndim != 3 || k->ndim != 3 || v->ndim != 3 || o->ndim != 3)
        return mismatch(OP, "q, k, v, o must be [B,L,H*D]", "q", q, "k", k);
    if (!tensor_same_shape(k, v)) return mismatch(OP, "k and v differ", "k", k, "v", v);
    if (!tensor_same_shape(o, q)) return mismatch(OP, "o and q differ", "o", o, "q", q);
    if (k->ne[0] != q->ne[0] || k->ne[2] != q->ne[2])
        return mismatch(OP, "batch or width differ", "q", q, "k", k);
    if (heads < 1 || q->ne[2] % heads)
        return easel_seterr(EASEL_EINVAL, "attention: width %lld is not divisible by %d heads",
                            (long long)q->ne[2], heads);
    if (causal && q->ne[1] != k->ne[1])
        return mismatch(OP, "causal needs Lq == Lk", "q", q, "k", k);
    double flop = 4.0 * (double)q->ne[0] * (double)q->ne[1] * (double)k->ne[1] * (double)q->ne[2];
    PROFILED(k->ne[1] >= 256 ? PR_ATTN_SELF : PR_ATTN_CROSS, flop,
             be->impl.attention(be, o, q, k, v, heads, causal));
}

/* ---------------------------------------------------------- elementwise */

static easel_err chk_unary(backend *be, tensor *y, const tensor *x, unary_op op) {
    static const char *OP = "unary";
    NEED(y);
    NEED(x);
    if ((unsigned)op >= UNARY_COUNT) return easel_seterr(EASEL_EINVAL, "unary: bad op %d", op);
    if (tensor_nelem(y) != tensor_nelem(x))
        return mismatch(OP, "element counts differ", "y", y, "x", x);
    PROFILED(PR_UNARY, 0, be->impl.unary(be, y, x, op));
}

static easel_err chk_geglu(backend *be, tensor *y, const tensor *x) {
    static const char *OP = "geglu";
    NEED(y);
    NEED(x);
    int64_t C2 = tensor_cols(x);
    if (C2 % 2 || tensor_cols(y) * 2 != C2 || tensor_rows(y) != tensor_rows(x))
        return mismatch(OP, "need x[...,2N] -> y[...,N]", "y", y, "x", x);
    PROFILED(PR_GEGLU, 0, be->impl.geglu(be, y, x));
}

static easel_err chk_binary(backend *be, tensor *y, const tensor *a, const tensor *b,
                            binary_op op) {
    static const char *OP = "binary";
    NEED(y);
    NEED(a);
    NEED(b);
    if ((unsigned)op >= BINARY_COUNT) return easel_seterr(EASEL_EINVAL, "binary: bad op %d", op);
    if (tensor_nelem(y) != tensor_nelem(a))
        return mismatch(OP, "y must have a's shape", "y", y, "a", a);
    if (b->ndim > a->ndim) return mismatch(OP, "b has more dims than a", "a", a, "b", b);
    for (int i = 1; i <= b->ndim; i++) {
        int64_t bn = b->ne[b->ndim - i], an = a->ne[a->ndim - i];
        if (bn != an && bn != 1) return mismatch(OP, "b does not broadcast onto a", "a", a, "b", b);
    }
    PROFILED(PR_BINARY, 0, be->impl.binary(be, y, a, b, op));
}

static easel_err chk_axpby(backend *be, tensor *y, float alpha, const tensor *x, float beta,
                           const tensor *z) {
    static const char *OP = "axpby";
    NEED(y);
    NEED(x);
    NEED(z);
    if (!tensor_same_shape(x, z)) return mismatch(OP, "x and z differ", "x", x, "z", z);
    if (tensor_nelem(y) != tensor_nelem(x)) return mismatch(OP, "y and x differ", "y", y, "x", x);
    PROFILED(PR_AXPBY, 0, be->impl.axpby(be, y, alpha, x, beta, z));
}

/* ------------------------------------------------------------- layout */

static easel_err chk_upsample2x(backend *be, tensor *y, const tensor *x) {
    static const char *OP = "upsample2x";
    NEED(y);
    NEED(x);
    if (x->ndim != 4 || y->ndim != 4 || y->ne[0] != x->ne[0] || y->ne[1] != 2 * x->ne[1] ||
        y->ne[2] != 2 * x->ne[2] || y->ne[3] != x->ne[3])
        return mismatch(OP, "need x[N,H,W,C] -> y[N,2H,2W,C]", "y", y, "x", x);
    PROFILED(PR_UPSAMPLE, 0, be->impl.upsample2x(be, y, x));
}

static easel_err chk_concat(backend *be, tensor *y, const tensor *a, const tensor *b) {
    static const char *OP = "concat";
    NEED(y);
    NEED(a);
    NEED(b);
    int ok = a->ndim == b->ndim && y->ndim == a->ndim;
    for (int i = 0; ok && i < a->ndim - 1; i++)
        ok = a->ne[i] == b->ne[i] && y->ne[i] == a->ne[i];
    if (!ok || tensor_cols(y) != tensor_cols(a) + tensor_cols(b))
        return mismatch(OP, "need a[...,Ca], b[...,Cb] -> y[...,Ca+Cb]", "a", a, "b", b);
    PROFILED(PR_CONCAT, 0, be->impl.concat(be, y, a, b));
}

static easel_err chk_timestep_embedding(backend *be, tensor *y, const float *t, int flip,
                                        float shift, float max_period) {
    static const char *OP = "timestep_embedding";
    NEED(y);
    if (!t) return easel_seterr(EASEL_EINVAL, "timestep_embedding: t is NULL");
    if (y->ndim != 2 || y->ne[1] < 2)
        return easel_seterr(EASEL_EINVAL, "timestep_embedding: y must be [N,dim] with dim >= 2");
    return be->impl.timestep_embedding(be, y, t, flip, shift, max_period);
}

static easel_err chk_gather_rows(backend *be, tensor *y, const tensor *table, const int32_t *ids,
                                 int64_t n) {
    static const char *OP = "gather_rows";
    NEED(y);
    NEED_AS(table, AS_WEIGHT);
    if (!ids && n > 0) return easel_seterr(EASEL_EINVAL, "gather_rows: ids is NULL");
    int64_t C = tensor_cols(table), V = tensor_rows(table);
    if (n < 0 || tensor_rows(y) != n || tensor_cols(y) != C)
        return mismatch(OP, "y must be [n,C] for table [V,C]", "y", y, "table", table);
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return easel_seterr(EASEL_EINVAL, "gather_rows: id %d at %lld is outside [0,%lld)",
                                ids[i], (long long)i, (long long)V);
    return be->impl.gather_rows(be, y, table, ids, n);
}

static easel_err chk_pad2d(backend *be, tensor *y, const tensor *x, int top, int left) {
    static const char *OP = "pad2d";
    NEED(y);
    NEED(x);
    if (x->ndim != 4 || y->ndim != 4 || top < 0 || left < 0 || y->ne[0] != x->ne[0] ||
        y->ne[3] != x->ne[3] || y->ne[1] < x->ne[1] + top || y->ne[2] < x->ne[2] + left)
        return mismatch(OP, "need x[N,H,W,C] -> y[N,>=top+H,>=left+W,C], top, left >= 0", "y", y,
                        "x", x);
    if (y->data == x->data) return easel_seterr(EASEL_EINVAL, "pad2d: y must not alias x");
    return be->impl.pad2d(be, y, x, top, left);
}

static easel_err chk_lora_merge(backend *be, tensor *y, const tensor *w, const tensor *up,
                                const tensor *down, float scale) {
    static const char *OP = "lora_merge";
    NEED_AS(y, AS_WEIGHT);
    NEED_AS(w, AS_WEIGHT);
    NEED_AS(up, AS_ANY);
    NEED_AS(down, AS_ANY);
    if (up->dt != DT_F32 || down->dt != DT_F32)
        return mismatch(OP, "up and down must be f32", "up", up, "down", down);
    if (!tensor_same_shape(y, w)) return mismatch(OP, "y and w differ", "y", y, "w", w);
    if (up->ndim != 2 || down->ndim != 2 || up->ne[1] != down->ne[0] || up->ne[1] < 1)
        return mismatch(OP, "need up [N,R] and down [R,K]", "up", up, "down", down);
    if ((w->ndim != 2 && w->ndim != 4) || w->ne[0] != up->ne[0] ||
        tensor_nelem(w) != up->ne[0] * down->ne[1])
        return mismatch(OP, "w must be [N,K] or [N,KH,KW,Ci] for up [N,R], down [R,K]", "w", w,
                        "down", down);
    if (!isfinite(scale)) return easel_seterr(EASEL_EINVAL, "lora_merge: scale is not finite");
    PROFILED(PR_OTHER, 2.0 * (double)tensor_nelem(w) * (double)up->ne[1],
             be->impl.lora_merge(be, y, w, up, down, scale));
}

/* -------------------------------------------------------- installation */

easel_err backend_install_checks(backend *be) {
    if (be->linear == chk_linear) return EASEL_OK; /* already installed */
    be->impl = (backend_ops){be->upload,
                             be->download,
                             be->copy,
                             be->linear,
                             be->bmm,
                             be->conv2d,
                             be->group_norm,
                             be->layer_norm,
                             be->softmax,
                             be->attention,
                             be->unary,
                             be->geglu,
                             be->binary,
                             be->axpby,
                             be->upsample2x,
                             be->concat,
                             be->timestep_embedding,
                             be->gather_rows,
                             be->lora_merge,
                             be->pad2d};
    const backend_ops *o = &be->impl;
    if (!o->upload || !o->download || !o->copy || !o->linear || !o->bmm || !o->conv2d ||
        !o->group_norm || !o->layer_norm || !o->softmax || !o->attention || !o->unary ||
        !o->geglu || !o->binary || !o->axpby || !o->upsample2x || !o->concat ||
        !o->timestep_embedding || !o->gather_rows || !o->lora_merge || !o->pad2d)
        return easel_seterr(EASEL_EINTERNAL, "backend %s: an op is missing", be->name);
    be->upload = chk_upload;
    be->download = chk_download;
    be->copy = chk_copy;
    be->linear = chk_linear;
    be->bmm = chk_bmm;
    be->conv2d = chk_conv2d;
    be->group_norm = chk_group_norm;
    be->layer_norm = chk_layer_norm;
    be->softmax = chk_softmax;
    be->attention = chk_attention;
    be->unary = chk_unary;
    be->geglu = chk_geglu;
    be->binary = chk_binary;
    be->axpby = chk_axpby;
    be->upsample2x = chk_upsample2x;
    be->concat = chk_concat;
    be->timestep_embedding = chk_timestep_embedding;
    be->gather_rows = chk_gather_rows;
    be->pad2d = chk_pad2d;
    be->lora_merge = chk_lora_merge;
    const char *prof = getenv("EASEL_PROFILE");
    if (prof && *prof && strcmp(prof, "0") && !be->prof) be->prof = calloc(1, sizeof *be->prof);
    return EASEL_OK;
}

easel_err backend_run_graph(backend *be, const backend_graph_key *key, easel_err (*fn)(void *user),
                            void *user) {
    if (!key || !fn) return easel_seterr(EASEL_EINVAL, "run_graph: NULL key or step");
    if (be->run_graph) return be->run_graph(be, key, fn, user);
    return fn(user);
}

easel_err backend_timestep_embedding_t(backend *be, tensor *y, const tensor *t, int flip_sin_to_cos,
                                       float downscale_freq_shift, float max_period) {
    if (!t || !t->data || t->dt != DT_F32 || t->dev != be->dev || tensor_nelem(t) != y->ne[0] ||
        y->ndim != 2) {
        char a[96], b[96];
        return easel_seterr(EASEL_EINVAL,
                            "timestep_embedding: t must be an f32 [N] tensor of this backend for "
                            "y [N,dim]: t %s, y %s",
                            t ? tensor_shape_str(t, a, sizeof a) : "NULL",
                            tensor_shape_str(y, b, sizeof b));
    }
    if (be->timestep_embedding_dev)
        return be->timestep_embedding_dev(be, y, t, flip_sin_to_cos, downscale_freq_shift,
                                          max_period);
    if (be->dev == DEV_CPU) /* its memory is the host's */
        return be->timestep_embedding(be, y, (const float *)t->data, flip_sin_to_cos,
                                      downscale_freq_shift, max_period);
    return easel_seterr(EASEL_EUNSUPPORTED, "timestep_embedding: no device-tensor form on %s",
                        be->name);
}

backend *backend_with_dtype(backend *be, dtype dt) {
    if (dt == be->act_dtype) return be;
    if (be->with_dtype) return be->with_dtype(be, dt);
    easel_seterr(EASEL_EUNSUPPORTED, "the %s backend stores %s only, not %s", be->name,
                 dtype_name(be->act_dtype), dtype_name(dt));
    return NULL;
}
