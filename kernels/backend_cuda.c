/* The CUDA backend: fills engine/backend.h with the CUDA kernels (kernels/NAME.cu)
 * (fp16 storage, or fp32 through a view for the VAE; fp32 arithmetic) and
 * cuBLASLt GEMMs. One backend is one worker: its own stream, cuBLASLt handle
 * + workspace + GEMM plans, a scratch buffer (im2col chunks, attention score
 * chunks, conversion staging) sized once at creation, pinned host memory for
 * the copies to and from the host, and its cache of captured CUDA graphs.
 * Device memory from any backend on the same device is usable by all, so
 * weights loaded through one are shared read-only by every worker. Nothing
 * here allocates, frees or synchronizes between a step's ops, so a step can
 * be captured into a graph and nothing stalls the device mid-run. A kernel
 * fault leaves the device unusable for every worker (CUDA's errors are
 * sticky): such errors come back as EASEL_EDEVLOST. Every op's contract
 * (shapes, dtypes, device) is checked once, in engine/backend.c, before it
 * reaches these functions; a view's dtype (with_dtype) is what those checks
 * hold the tensors to. Built twice: by the C
 * compiler against the real runtime (libeasel, EASEL_HAVE_CUDA) and against
 * kernels/emu (EASEL_CUDA_EMU, the op test), where the entry points get an
 * _emu_ infix. */
#ifdef EASEL_CUDA_EMU
#define backend_cuda_create backend_cuda_emu_create
#define backend_cuda_describe backend_cuda_emu_describe
#define backend_cuda_graph_count backend_cuda_emu_graph_count
#define backend_cuda_gemm_plans backend_cuda_emu_gemm_plans
#endif

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../engine/backend.h"
#include "../engine/log.h"
#include "backend_cuda.h"
#include "cuda_host.h"
#include "kernels.h"

#define CUDA_SCRATCH_DEFAULT ((size_t)64 << 20) /* im2col and attention chunk bound */
#define CUDA_STAGE_FLOATS ((size_t)4 << 20)     /* upload/download chunk (16 MiB f32) */
#define CUDA_GEMM_WS ((size_t)32 << 20)
#define CUDA_GRAPHS_MAX 8

typedef struct {
    int device;
    cudaStream_t stream;
    kern_gemm *gemm;
    void *scratch; /* device, scratch_bytes, allocated once */
    size_t scratch_bytes;
    size_t stage;     /* floats per upload/download chunk */
    float *pinned;    /* host, stage floats */
    cudaEvent_t done; /* the last copy out of pinned has been read by the device */
    int pinned_busy;
    graph_cache *graphs;
    backend *self;     /* the worker */
    backend *views[3]; /* by dtype: the worker with another act_dtype */
} cuda_ctx;

/* The sentinel graph of a shape whose capture failed: it runs eagerly. */
static char graph_eager;

static cuda_ctx *ctx_of(backend *be) {
    return be->ctx;
}

/* The worker's stream, with its device made current for the calling thread
 * (workers run on their own threads; cudaSetDevice is cheap when unchanged). */
static cudaStream_t stream_of(backend *be) {
    cudaSetDevice(ctx_of(be)->device);
    return ctx_of(be)->stream;
}

/* ---- errors ---- */

static easel_err cuda_fail(const char *op, cudaError_t e) {
    if (cuda_error_is_sticky((int)e))
        return easel_seterr(EASEL_EDEVLOST,
                            "%s: CUDA error: %s; the GPU context is lost (a kernel fault is "
                            "sticky for every worker): restart the process",
                            op, cudaGetErrorString(e));
    cudaGetLastError(); /* clear a non-sticky error */
    return easel_seterr(EASEL_EDEVICE, "%s: CUDA error: %s", op, cudaGetErrorString(e));
}

/* A launcher's result: 0, a cudaError_t, or -cublasStatus_t. */
static easel_err kcheck(const char *op, int rc) {
    if (rc == 0) return EASEL_OK;
    if (rc < 0) return easel_seterr(EASEL_EDEVICE, "%s: cuBLASLt status %d", op, -rc);
    return cuda_fail(op, (cudaError_t)rc);
}

#define CU(op, call)                                                                               \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) return cuda_fail(op, e_);                                           \
    } while (0)

/* For the one op outside engine/backend.c's checks (timestep_embedding_dev):
 * t must hold data on the device, in dtype want. */
static easel_err need(const char *op, const char *name, const tensor *t, int want) {
    if (!t || !t->data) return easel_seterr(EASEL_EINVAL, "%s: %s has no data", op, name);
    if (t->dev != DEV_CUDA)
        return easel_seterr(EASEL_EINVAL, "%s: %s is not a cuda tensor", op, name);
    if ((int)t->dt != want)
        return easel_seterr(EASEL_EUNSUPPORTED, "%s: %s is %s; this op's tensors are %s", op, name,
                            dtype_name(t->dt), dtype_name((dtype)want));
    return EASEL_OK;
}
/* The tensors' dtype: the worker's (f16) or its view's (f32). */
#define DT ((int)be->act_dtype)

static easel_err mismatch(const char *op, const char *what, const tensor *a, const tensor *b) {
    char sa[96], sb[96];
    return easel_seterr(EASEL_EINVAL, "%s: %s: %s, %s", op, what,
                        tensor_shape_str(a, sa, sizeof sa),
                        b ? tensor_shape_str(b, sb, sizeof sb) : "-");
}

/* ---- memory ---- */

static easel_err dev_malloc(int device, const char *what, size_t bytes, void **out) {
    cudaError_t e = cudaMalloc(out, bytes ? bytes : 1);
    if (e == cudaSuccess) return EASEL_OK;
    *out = NULL;
    if (e != cudaErrorMemoryAllocation) return cuda_fail(what, e);
    cudaGetLastError();
    size_t fr = 0, tot = 0;
    cudaSetDevice(device);
    if (cudaMemGetInfo(&fr, &tot) != cudaSuccess) cudaGetLastError();
    return cuda_oom_error(what, bytes, fr, tot);
}

static easel_err cuda_alloc(backend *be, size_t bytes, void **out) {
    if (!out) return easel_seterr(EASEL_EINVAL, "alloc: out is NULL");
    CU("alloc", cudaSetDevice(ctx_of(be)->device));
    return dev_malloc(ctx_of(be)->device, "alloc", bytes, out);
}

static void cuda_free_mem(backend *be, void *p) {
    (void)be;
    if (p) cudaFree(p);
}

/* The scratch buffer, when it holds bytes (every user chunks its work to it). */
static easel_err scratch(backend *be, const char *op, size_t bytes, void **out) {
    cuda_ctx *c = ctx_of(be);
    if (bytes > c->scratch_bytes)
        return easel_seterr(EASEL_EINTERNAL, "%s: needs %zu bytes of scratch, the worker has %zu",
                            op, bytes, c->scratch_bytes);
    *out = c->scratch;
    return EASEL_OK;
}

static easel_err cuda_sync(backend *be) {
    CU("sync", cudaStreamSynchronize(stream_of(be)));
    CU("sync", cudaGetLastError());
    return EASEL_OK;
}

/* The pinned buffer may be written again: the device has read the last copy. */
static easel_err pinned_wait(cuda_ctx *c, const char *op) {
    if (!c->pinned_busy) return EASEL_OK;
    c->pinned_busy = 0;
    CU(op, cudaEventSynchronize(c->done));
    return EASEL_OK;
}

/* Host f32 -> device (f16 or f32), chunk by chunk through pinned memory on
 * the worker's stream, so the copy is ordered with the worker's earlier and
 * later work (a plain cudaMemcpy runs on the legacy stream, which does not
 * wait for a non-blocking stream). Returns once the data are on the device,
 * so another worker may use them at once (weights are uploaded by the load
 * backend and read by every worker's stream); src may change after. */
static easel_err cuda_upload(backend *be, tensor *dst, const float *src) {
    easel_err e;
    cuda_ctx *c = ctx_of(be);
    cudaStream_t s = stream_of(be);
    int64_t n = tensor_nelem(dst);
    for (int64_t off = 0; off < n; off += (int64_t)c->stage) {
        int64_t m = n - off < (int64_t)c->stage ? n - off : (int64_t)c->stage;
        if ((e = pinned_wait(c, "upload"))) return e;
        memcpy(c->pinned, src + off, (size_t)m * 4);
        char *d = (char *)dst->data + (size_t)off * dtype_size(dst->dt);
        if (dst->dt == DT_F32) {
            CU("upload", cudaMemcpyAsync(d, c->pinned, (size_t)m * 4, cudaMemcpyHostToDevice, s));
        } else {
            CU("upload",
               cudaMemcpyAsync(c->scratch, c->pinned, (size_t)m * 4, cudaMemcpyHostToDevice, s));
            if ((e = kcheck("upload", kern_convert(s, d, (int)dst->dt, c->scratch, KDT_F32, m))))
                return e;
        }
        CU("upload", cudaEventRecord(c->done, s));
        c->pinned_busy = 1;
    }
    return pinned_wait(c, "upload");
}

/* Device (f16 or f32) -> host f32, through scratch (convert) and pinned memory. */
static easel_err cuda_download(backend *be, const tensor *src, float *dst) {
    easel_err e;
    cuda_ctx *c = ctx_of(be);
    cudaStream_t s = stream_of(be);
    int64_t n = tensor_nelem(src);
    if ((e = pinned_wait(c, "download"))) return e;
    for (int64_t off = 0; off < n; off += (int64_t)c->stage) {
        int64_t m = n - off < (int64_t)c->stage ? n - off : (int64_t)c->stage;
        const char *sp = (const char *)src->data + (size_t)off * dtype_size(src->dt);
        if (src->dt != DT_F32) {
            e = kcheck("download", kern_convert(s, c->scratch, KDT_F32, sp, (int)src->dt, m));
            if (e) return e;
            sp = c->scratch;
        }
        CU("download", cudaMemcpyAsync(c->pinned, sp, (size_t)m * 4, cudaMemcpyDeviceToHost, s));
        if ((e = cuda_sync(be))) return e;
        memcpy(dst + off, c->pinned, (size_t)m * 4);
    }
    return EASEL_OK;
}

/* ---- ops ---- */

static easel_err cuda_copy(backend *be, tensor *y, const tensor *x) {
    static const char *OP = "copy";
    if (y->dt == x->dt) {
        if (y->data != x->data)
            CU(OP, cudaMemcpyAsync(y->data, x->data, tensor_nbytes(x), cudaMemcpyDeviceToDevice,
                                   stream_of(be)));
        return EASEL_OK;
    }
    return kcheck(
        OP, kern_convert(stream_of(be), y->data, (int)y->dt, x->data, (int)x->dt, tensor_nelem(x)));
}

static kern_gemm_args gemm_plain(void *y, const void *a, const void *b, const void *bias, int64_t m,
                                 int64_t n, int64_t k, int dt) {
    kern_gemm_args g = {.y = y,
                        .a = a,
                        .b = b,
                        .bias = bias,
                        .batch = 1,
                        .m = m,
                        .n = n,
                        .k = k,
                        .lda = k,
                        .ldb = k,
                        .ldy = n,
                        .trans_b = 1,
                        .ab_dt = dt,
                        .y_dt = dt,
                        .alpha = 1.0f};
    return g;
}

static easel_err cuda_linear(backend *be, tensor *y, const tensor *x, const tensor *w,
                             const tensor *b) {
    static const char *OP = "linear";
    int64_t m = tensor_rows(x), k = tensor_cols(x), n = w->ne[0];
    kern_gemm_args g = gemm_plain(y->data, x->data, w->data, b ? b->data : NULL, m, n, k, DT);
    return kcheck(OP, kern_gemm_run(ctx_of(be)->gemm, stream_of(be), &g));
}

static easel_err cuda_bmm(backend *be, tensor *y, const tensor *a, const tensor *b, int trans_b,
                          float alpha) {
    static const char *OP = "bmm";
    int64_t B, M, N, K;
    easel_err e = backend_check_bmm(y, a, b, trans_b, &B, &M, &N, &K);
    if (e) return e;
    kern_gemm_args g = {.y = y->data,
                        .a = a->data,
                        .b = b->data,
                        .batch = B,
                        .m = M,
                        .n = N,
                        .k = K,
                        .lda = K,
                        .ldb = trans_b ? K : N,
                        .ldy = N,
                        .sa = M * K,
                        .sb = K * N,
                        .sy = M * N,
                        .trans_b = trans_b,
                        .ab_dt = DT,
                        .y_dt = DT,
                        .alpha = alpha};
    return kcheck(OP, kern_gemm_run(ctx_of(be)->gemm, stream_of(be), &g));
}

static easel_err cuda_conv2d(backend *be, tensor *y, const tensor *x, const tensor *w,
                             const tensor *b, int stride, int pad) {
    static const char *OP = "conv2d";
    int64_t n = x->ne[0], h = x->ne[1], wd = x->ne[2], ci = x->ne[3];
    int64_t co = w->ne[0], kh = w->ne[1], kw = w->ne[2], ho = y->ne[1], wo = y->ne[2];
    cuda_ctx *c = ctx_of(be);
    const void *bias = b ? b->data : NULL;
    int64_t rows = n * ho * wo, k = kh * kw * ci;
    size_t es = dtype_size(x->dt);
    if (kh == 1 && kw == 1 && stride == 1 && pad == 0) { /* a 1x1 conv is a linear layer */
        kern_gemm_args g = gemm_plain(y->data, x->data, w->data, bias, rows, co, k, DT);
        return kcheck(OP, kern_gemm_run(c->gemm, stream_of(be), &g));
    }
    int64_t chunk = cuda_im2col_chunk(rows, k, es, c->scratch_bytes);
    void *cols = NULL;
    easel_err e = scratch(be, OP, cuda_im2col_bytes(rows, k, es, c->scratch_bytes), &cols);
    if (e) return e;
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
        int64_t m = rows - r0 < chunk ? rows - r0 : chunk;
        e = kcheck(OP, kern_im2col(stream_of(be), cols, x->data, n, h, wd, ci, (int)kh, (int)kw,
                                   stride, pad, ho, wo, r0, m, DT));
        if (e) return e;
        kern_gemm_args g =
            gemm_plain((char *)y->data + (size_t)(r0 * co) * es, cols, w->data, bias, m, co, k, DT);
        if ((e = kcheck(OP, kern_gemm_run(c->gemm, stream_of(be), &g)))) return e;
    }
    return EASEL_OK;
}

static easel_err cuda_group_norm(backend *be, tensor *y, const tensor *x, const tensor *gamma,
                                 const tensor *beta, int groups, float eps, int silu) {
    static const char *OP = "group_norm";
    int64_t n = x->ne[0], c = tensor_cols(x), l = n ? tensor_nelem(x) / (n * (c ? c : 1)) : 0;
    if (n * l * c == 0) return EASEL_OK;
    void *work = NULL; /* per-slice statistics */
    easel_err e =
        scratch(be, OP, (size_t)kern_group_norm_work(n, l, c, groups) * sizeof(float), &work);
    if (e) return e;
    return kcheck(OP, kern_group_norm(stream_of(be), y->data, x->data, gamma->data, beta->data, n,
                                      l, c, groups, eps, silu, (float *)work, DT));
}

static easel_err cuda_layer_norm(backend *be, tensor *y, const tensor *x, const tensor *gamma,
                                 const tensor *beta, float eps) {
    static const char *OP = "layer_norm";
    int64_t c = tensor_cols(x);
    return kcheck(OP, kern_layer_norm(stream_of(be), y->data, x->data, gamma->data, beta->data,
                                      tensor_rows(x), c, eps, DT));
}

static easel_err cuda_softmax(backend *be, tensor *y, const tensor *x) {
    static const char *OP = "softmax";
    return kcheck(
        OP, kern_softmax(stream_of(be), y->data, x->data, tensor_rows(x), tensor_cols(x), DT));
}

/* Attention as GEMM -> softmax -> GEMM per (batch, head, chunk of queries),
 * for head dims above the flash kernel's 256 (the VAE's single 512-wide head)
 * and for fp32: scores in fp32, probabilities in the tensors' dtype, the
 * chunk sized so both fit the scratch buffer (a 1024² VAE decode has 16384
 * tokens: 512 queries per chunk, not a 1 GiB score matrix). */
static easel_err attention_gemm(backend *be, tensor *o, const tensor *q, const tensor *k,
                                const tensor *v, int64_t heads, int64_t d, int causal) {
    static const char *OP = "attention";
    cuda_ctx *c = ctx_of(be);
    cudaStream_t s = stream_of(be);
    int64_t B = q->ne[0], lq = q->ne[1], lk = k->ne[1], hd = heads * d;
    size_t pe = dtype_size(o->dt);
    int64_t qc = cuda_attn_chunk(lq, lk, pe, c->scratch_bytes);
    void *buf = NULL;
    easel_err e = scratch(be, OP, (size_t)(qc * lk) * (4 + pe), &buf);
    if (e) return e;
    float *sc = buf;
    void *p = (char *)buf + (size_t)(qc * lk) * 4;
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < heads; h++)
            for (int64_t q0 = 0; q0 < lq; q0 += qc) {
                int64_t m = lq - q0 < qc ? lq - q0 : qc;
                size_t qoff = (size_t)((b * lq + q0) * hd + h * d) * pe;
                size_t koff = (size_t)(b * lk * hd + h * d) * pe;
                kern_gemm_args g1 = {.y = sc,
                                     .a = (const char *)q->data + qoff,
                                     .b = (const char *)k->data + koff,
                                     .batch = 1,
                                     .m = m,
                                     .n = lk,
                                     .k = d,
                                     .lda = hd,
                                     .ldb = hd,
                                     .ldy = lk,
                                     .trans_b = 1,
                                     .ab_dt = DT,
                                     .y_dt = KDT_F32,
                                     .alpha = 1.0f / sqrtf((float)d)};
                if ((e = kcheck(OP, kern_gemm_run(c->gemm, s, &g1)))) return e;
                if ((e = kcheck(OP, kern_softmax_scores(s, p, lk, DT, sc, lk, m, lk, causal, q0))))
                    return e;
                kern_gemm_args g2 = {.y = (char *)o->data + qoff,
                                     .a = p,
                                     .b = (const char *)v->data + koff,
                                     .batch = 1,
                                     .m = m,
                                     .n = d,
                                     .k = lk,
                                     .lda = lk,
                                     .ldb = hd,
                                     .ldy = hd,
                                     .trans_b = 0,
                                     .ab_dt = DT,
                                     .y_dt = DT,
                                     .alpha = 1.0f};
                if ((e = kcheck(OP, kern_gemm_run(c->gemm, s, &g2)))) return e;
            }
    return EASEL_OK;
}

static easel_err cuda_attention(backend *be, tensor *o, const tensor *q, const tensor *k,
                                const tensor *v, int heads, int causal) {
    static const char *OP = "attention";
    int64_t d = q->ne[2] / heads;
    if (k->ne[1] == 0) { /* no keys: zeros, as the CPU backend */
        CU(OP, cudaMemsetAsync(o->data, 0, tensor_nbytes(o), stream_of(be)));
        return EASEL_OK;
    }
    if (d > KERN_ATTN_MAX_D || o->dt != DT_F16 || q->ne[0] > 65535 || heads > 65535)
        return attention_gemm(be, o, q, k, v, heads, d, causal);
    return kcheck(OP, kern_attention(stream_of(be), o->data, q->data, k->data, v->data, q->ne[0],
                                     q->ne[1], k->ne[1], heads, d, causal));
}

_Static_assert((int)UNARY_COUNT == KU_TANH + 1 && (int)UNARY_RELU == KU_RELU &&
                   (int)UNARY_TANH == KU_TANH,
               "kernels.h's KU_* must number backend.h's unary_op");

static easel_err cuda_unary(backend *be, tensor *y, const tensor *x, unary_op op) {
    static const char *OP = "unary";
    return kcheck(OP, kern_unary(stream_of(be), y->data, x->data, tensor_nelem(x), (int)op, DT));
}

static easel_err cuda_geglu(backend *be, tensor *y, const tensor *x) {
    static const char *OP = "geglu";
    int64_t n = tensor_cols(y);
    return kcheck(OP, kern_geglu(stream_of(be), y->data, x->data, tensor_rows(y), n, DT));
}

static easel_err cuda_binary(backend *be, tensor *y, const tensor *a, const tensor *b,
                             binary_op op) {
    static const char *OP = "binary";
    int64_t an[4] = {1, 1, 1, 1}, bn[4] = {1, 1, 1, 1};
    for (int i = 0; i < a->ndim; i++)
        an[4 - a->ndim + i] = a->ne[i];
    for (int i = 0; i < b->ndim; i++)
        bn[4 - b->ndim + i] = b->ne[i];
    return kcheck(OP, kern_binary(stream_of(be), y->data, a->data, b->data, an, bn, (int)op, DT));
}

static easel_err cuda_axpby(backend *be, tensor *y, float alpha, const tensor *x, float beta,
                            const tensor *z) {
    static const char *OP = "axpby";
    return kcheck(
        OP, kern_axpby(stream_of(be), y->data, alpha, x->data, beta, z->data, tensor_nelem(x), DT));
}

static easel_err cuda_upsample2x(backend *be, tensor *y, const tensor *x) {
    static const char *OP = "upsample2x";
    return kcheck(OP, kern_upsample2x(stream_of(be), y->data, x->data, x->ne[0], x->ne[1], x->ne[2],
                                      x->ne[3], DT));
}

static easel_err cuda_concat(backend *be, tensor *y, const tensor *a, const tensor *b) {
    static const char *OP = "concat";
    int64_t rows = tensor_rows(a), ca = tensor_cols(a), cb = tensor_cols(b);
    return kcheck(OP, kern_concat(stream_of(be), y->data, a->data, b->data, rows, ca, cb, DT));
}

static easel_err cuda_pad2d(backend *be, tensor *y, const tensor *x, int top, int left) {
    static const char *OP = "pad2d";
    return kcheck(OP, kern_pad2d(stream_of(be), y->data, x->data, x->ne[0], x->ne[1], x->ne[2],
                                 y->ne[1], y->ne[2], x->ne[3], top, left, DT));
}

/* Small host arrays (timesteps, token ids) go through the scratch buffer:
 * a pageable copy, so the caller's array may change once this returns (and
 * so this cannot be part of a captured step: see timestep_embedding_dev). */
static easel_err stage_small(backend *be, const char *op, const void *host, size_t bytes,
                             void **dev) {
    easel_err e = scratch(be, op, bytes < 256 ? 256 : bytes, dev);
    if (e) return e;
    CU(op, cudaMemcpyAsync(*dev, host, bytes, cudaMemcpyHostToDevice, stream_of(be)));
    return EASEL_OK;
}

static easel_err cuda_timestep_embedding(backend *be, tensor *y, const float *t, int flip,
                                         float shift, float max_period) {
    static const char *OP = "timestep_embedding";
    void *td = NULL;
    easel_err e = stage_small(be, OP, t, (size_t)y->ne[0] * sizeof(float), &td);
    if (e) return e;
    return kcheck(OP, kern_timestep_embedding(stream_of(be), y->data, td, y->ne[0], y->ne[1], flip,
                                              shift, max_period, DT));
}

static easel_err cuda_timestep_embedding_dev(backend *be, tensor *y, const tensor *t, int flip,
                                             float shift, float max_period) {
    static const char *OP = "timestep_embedding";
    easel_err e = need(OP, "y", y, DT);
    if (!e) e = need(OP, "t", t, DT_F32);
    if (e) return e;
    if (y->ndim != 2 || y->ne[1] < 2 || tensor_nelem(t) != y->ne[0])
        return mismatch(OP, "y must be [N,dim], dim >= 2, for t [N]", y, t);
    return kcheck(OP, kern_timestep_embedding(stream_of(be), y->data, t->data, y->ne[0], y->ne[1],
                                              flip, shift, max_period, DT));
}

static easel_err cuda_gather_rows(backend *be, tensor *y, const tensor *table, const int32_t *ids,
                                  int64_t n) {
    static const char *OP = "gather_rows";
    int64_t c = tensor_cols(table);
    if (n == 0) return EASEL_OK;
    void *idd = NULL;
    easel_err e = stage_small(be, OP, ids, (size_t)n * sizeof(int32_t), &idd);
    if (e) return e;
    return kcheck(OP, kern_gather_rows(stream_of(be), y->data, table->data, idd, n, c, DT));
}

/* ---- graphs ---- */

static void graph_exec_destroy(void *exec, void *user) {
    (void)user;
    if (exec != &graph_eager) cudaGraphExecDestroy((cudaGraphExec_t)exec);
}

/* Captures fn's work into a graph; NULL (and *fn_err 0) when capture is not
 * possible, e.g. because fn allocated or synchronized. */
static cudaGraphExec_t capture(backend *be, easel_err (*fn)(void *), void *user, easel_err *fn_err,
                               const char **why) {
    cuda_ctx *c = ctx_of(be);
    *fn_err = EASEL_OK;
    cudaError_t ce = cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal);
    if (ce != cudaSuccess) {
        *why = cudaGetErrorString(ce);
        cudaGetLastError();
        return NULL;
    }
    easel_err e = fn(user);
    enum cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
    cudaStreamIsCapturing(c->stream, &st);
    cudaGraph_t g = NULL;
    ce = cudaStreamEndCapture(c->stream, &g);
    if (e && ce == cudaSuccess && st == cudaStreamCaptureStatusActive) *fn_err = e; /* fn's own */
    cudaGraphExec_t exec = NULL;
    if (!e && ce == cudaSuccess) ce = cudaGraphInstantiate(&exec, g, 0);
    if (g) cudaGraphDestroy(g);
    if (e || ce != cudaSuccess) {
        *why = ce != cudaSuccess ? cudaGetErrorString(ce) : easel_errmsg();
        if (!cuda_error_is_sticky((int)ce)) cudaGetLastError();
        return NULL;
    }
    return exec;
}

static easel_err cuda_run_graph(backend *be, const backend_graph_key *k, easel_err (*fn)(void *),
                                void *user) {
    cuda_ctx *c = ctx_of(be);
    CU("graph", cudaSetDevice(c->device));
    graph_key key = {k->batch, k->height, k->width, k->layout};
    void *exec = graph_cache_get(c->graphs, key);
    if (exec == &graph_eager) return fn(user);
    if (exec) {
        CU("graph replay", cudaGraphLaunch((cudaGraphExec_t)exec, c->stream));
        return EASEL_OK;
    }
    if (graph_cache_seen(c->graphs, key) < 2)
        return fn(user); /* warm-up: memory reaches its size */
    easel_err fe;
    const char *why = "";
    cudaGraphExec_t ge = capture(be, fn, user, &fe, &why);
    if (fe) return fe;
    if (!ge) {
        char msg[256];
        snprintf(msg, sizeof msg, "%s", why);
        cudaError_t sticky = cudaPeekAtLastError();
        if (cuda_error_is_sticky((int)sticky)) return cuda_fail("graph capture", sticky);
        log_warn("cuda: capturing the %dx%dx%d step failed (%s); running it directly", k->batch,
                 k->height, k->width, msg);
        easel_err e = graph_cache_put(c->graphs, key, &graph_eager);
        return e ? e : fn(user);
    }
    easel_err e = graph_cache_put(c->graphs, key, ge);
    if (e) {
        cudaGraphExecDestroy(ge);
        return e;
    }
    CU("graph launch", cudaGraphLaunch(ge, c->stream));
    return EASEL_OK;
}

/* Shapes in the graph cache (a shape whose capture failed, and so runs
 * directly, counts too). */
int backend_cuda_graph_count(backend *be) {
    return graph_cache_size(ctx_of(be)->graphs);
}

long backend_cuda_gemm_plans(backend *be) {
    return kern_gemm_plans_made(ctx_of(be)->gemm);
}

static easel_err cuda_lora_merge(backend *be, tensor *y, const tensor *w, const tensor *up,
                                 const tensor *down, float scale) {
    static const char *OP = "lora_merge";
    return kcheck(OP,
                  kern_lora_merge(stream_of(be), y->data, (int)y->dt, w->data, (int)w->dt, up->data,
                                  down->data, up->ne[0], up->ne[1], down->ne[1], scale));
}

/* ---- lifecycle ---- */

static void view_destroy(backend *be) {
    (void)be; /* owned by its worker */
}

static void cuda_destroy(backend *be) {
    if (!be) return;
    cuda_ctx *c = ctx_of(be);
    if (c) {
        cudaSetDevice(c->device);
        if (c->stream) cudaStreamSynchronize(c->stream);
        graph_cache_free(c->graphs);
        kern_gemm_destroy(c->gemm);
        cudaFree(c->scratch);
        if (c->pinned) cudaFreeHost(c->pinned);
        if (c->done) cudaEventDestroy(c->done);
        if (c->stream) cudaStreamDestroy(c->stream);
        cudaGetLastError();
        for (int i = 0; i < 3; i++)
            free(c->views[i]);
        free(c);
    }
    free(be);
}

static backend *cuda_with_dtype(backend *be, dtype dt) {
    cuda_ctx *c = ctx_of(be);
    if (dt != DT_F16 && dt != DT_F32) {
        easel_seterr(EASEL_EUNSUPPORTED, "the cuda backend stores f16 or f32, not %s",
                     dtype_name(dt));
        return NULL;
    }
    backend *owner = c->self;
    if (dt == be->act_dtype) return be;
    if (owner->act_dtype == dt) return owner;
    if (!c->views[dt]) {
        backend *v = malloc(sizeof *v);
        if (!v) {
            easel_seterr(EASEL_ENOMEM, "cuda backend: out of host memory");
            return NULL;
        }
        *v = *owner; /* the checking entry points and impl too */
        v->act_dtype = v->weight_dtype = dt;
        v->destroy = view_destroy;
        c->views[dt] = v;
    }
    return c->views[dt];
}

static void fill_ops(backend *be) {
    be->destroy = cuda_destroy;
    be->alloc = cuda_alloc;
    be->free = cuda_free_mem;
    be->upload = cuda_upload;
    be->download = cuda_download;
    be->sync = cuda_sync;
    be->copy = cuda_copy;
    be->linear = cuda_linear;
    be->bmm = cuda_bmm;
    be->conv2d = cuda_conv2d;
    be->group_norm = cuda_group_norm;
    be->layer_norm = cuda_layer_norm;
    be->softmax = cuda_softmax;
    be->attention = cuda_attention;
    be->unary = cuda_unary;
    be->geglu = cuda_geglu;
    be->binary = cuda_binary;
    be->axpby = cuda_axpby;
    be->upsample2x = cuda_upsample2x;
    be->concat = cuda_concat;
    be->timestep_embedding = cuda_timestep_embedding;
    be->gather_rows = cuda_gather_rows;
    be->pad2d = cuda_pad2d;
    be->lora_merge = cuda_lora_merge;
    be->timestep_embedding_dev = cuda_timestep_embedding_dev;
    be->run_graph = cuda_run_graph;
    be->with_dtype = cuda_with_dtype;
}

/* Why cudaGetDeviceCount failed, in words a user can act on. */
static const char *no_device_reason(cudaError_t e) {
    if (e == cudaErrorInsufficientDriver) /* also what a machine without the driver reports */
        return "no NVIDIA driver, or one older than this CUDA runtime";
    return cudaGetErrorString(e);
}

/* Picks the device: device ≥ 0, else $EASEL_CUDA_DEVICE, else 0. */
static easel_err pick_device(int device, int *out) {
    int count = 0; /* cudaGetDeviceCount leaves it unwritten on failure */
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return easel_seterr(EASEL_EDEVICE, "no usable CUDA device (%s)", no_device_reason(e));
    }
    if (count <= 0) return easel_seterr(EASEL_EDEVICE, "no CUDA device found");
    if (device < 0) {
        const char *env = getenv("EASEL_CUDA_DEVICE");
        device = env ? atoi(env) : 0;
    }
    if (device >= count)
        return easel_seterr(EASEL_EDEVICE, "CUDA device %d requested, %d present", device, count);
    *out = device;
    return EASEL_OK;
}

/* Scratch size: $EASEL_CUDA_SCRATCH_KIB (tests use small ones to make the
 * chunked paths run at small shapes), else 64 MiB. */
static size_t scratch_size(void) {
    const char *env = getenv("EASEL_CUDA_SCRATCH_KIB");
    long kib = env ? atol(env) : 0;
    return kib >= 64 ? (size_t)kib << 10 : CUDA_SCRATCH_DEFAULT;
}

static easel_err ctx_init(cuda_ctx *c, int device) {
    c->device = device;
    CU("cuda init", cudaSetDevice(device));
    /* before the first launch, once per worker: idempotent, and the same value
     * every time, so workers created later cannot disturb running ones */
    easel_err e = kcheck("cuda init: kernel attributes", kern_init());
    if (e) return e;
    CU("cuda init", cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    CU("cuda init", cudaEventCreateWithFlags(&c->done, cudaEventDisableTiming));
    c->gemm = kern_gemm_create(CUDA_GEMM_WS);
    if (!c->gemm)
        return easel_seterr(EASEL_EDEVICE, "cuda init: cannot create the cuBLASLt handle");
    c->scratch_bytes = scratch_size();
    if ((e = dev_malloc(device, "cuda init: scratch", c->scratch_bytes, &c->scratch))) return e;
    c->stage = c->scratch_bytes / 4 < CUDA_STAGE_FLOATS ? c->scratch_bytes / 4 : CUDA_STAGE_FLOATS;
    if (cudaMallocHost((void **)&c->pinned, c->stage * 4) != cudaSuccess) {
        c->pinned = NULL;
        cudaGetLastError();
        return easel_seterr(EASEL_ENOMEM, "cuda init: cannot allocate pinned host memory");
    }
    c->graphs = graph_cache_create(CUDA_GRAPHS_MAX, graph_exec_destroy, NULL);
    if (!c->graphs) return easel_seterr(EASEL_ENOMEM, "cuda init: out of host memory");
    return EASEL_OK;
}

backend *backend_cuda_create(int device) {
    int dev = 0;
    if (pick_device(device, &dev)) return NULL;
    backend *be = calloc(1, sizeof *be);
    cuda_ctx *c = calloc(1, sizeof *c);
    if (!be || !c) {
        free(be);
        free(c);
        easel_seterr(EASEL_ENOMEM, "cuda backend: out of host memory");
        return NULL;
    }
    be->name = "cuda";
    be->dev = DEV_CUDA;
    be->act_dtype = DT_F16;
    be->weight_dtype = DT_F16;
    be->ctx = c;
    c->self = be;
    fill_ops(be);
    easel_err e = backend_install_checks(be);
    if (!e) e = ctx_init(c, dev);
    if (e) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", easel_errmsg());
        cuda_destroy(be);
        easel_seterr(e == EASEL_EDEVLOST ? e : EASEL_EDEVICE, "%s", msg);
        return NULL;
    }
    return be;
}

int backend_cuda_describe(char *buf, size_t len) {
    int count = 0, drv = 0, rt = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count <= 0) {
        cudaGetLastError();
        snprintf(buf, len, "compiled in; no usable device (%s)",
                 e != cudaSuccess ? no_device_reason(e) : "none found");
        return 0;
    }
    cudaDriverGetVersion(&drv);
    cudaRuntimeGetVersion(&rt);
    size_t n = (size_t)snprintf(buf, len, "%d device(s), driver %d.%d, runtime %d.%d", count,
                                drv / 1000, drv % 1000 / 10, rt / 1000, rt % 1000 / 10);
    for (int i = 0; i < count && n < len; i++) {
        struct cudaDeviceProp p;
        if (cudaGetDeviceProperties(&p, i) != cudaSuccess) break;
        n += (size_t)snprintf(buf + n, len - n, "; %d: %s (sm_%d%d, %.0f GiB, %d SMs)", i, p.name,
                              p.major, p.minor, p.totalGlobalMem / 1073741824.0,
                              p.multiProcessorCount);
    }
    return count;
}
