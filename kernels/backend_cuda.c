/* The CUDA backend: fills engine/backend.h with the CUDA kernels (kernels/NAME.cu)
 * (fp16 storage, fp32 arithmetic) and cuBLASLt GEMMs. One backend is one
 * worker: its own stream, cuBLASLt handle + workspace, a scratch buffer
 * (im2col chunks, conversion staging) and pinned host memory for copy-back,
 * and its cache of captured CUDA graphs. Device memory from any backend on
 * the same device is usable by all, so weights loaded through one are shared
 * read-only by every worker. Built twice: by the C compiler against the real
 * runtime (libeasel, EASEL_HAVE_CUDA) and against kernels/emu (EASEL_CUDA_EMU,
 * the op test), where the entry points get an _emu_ infix. */
#ifdef EASEL_CUDA_EMU
#define backend_cuda_create backend_cuda_emu_create
#define backend_cuda_describe backend_cuda_emu_describe
#define backend_cuda_run_graph backend_cuda_emu_run_graph
#define backend_cuda_graph_count backend_cuda_emu_graph_count
#endif

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../engine/backend.h"
#include "../engine/log.h"
#include "cuda_host.h"
#include "kernels.h"

#define CUDA_SCRATCH_BUDGET ((size_t)64 << 20) /* im2col chunk bound */
#define CUDA_STAGE_FLOATS ((size_t)4 << 20)    /* upload/download chunk (16 MiB f32) */
#define CUDA_GEMM_WS ((size_t)32 << 20)
#define CUDA_GRAPHS_MAX 8

typedef struct {
    int device;
    cudaStream_t stream;
    kern_gemm *gemm;
    void *scratch; /* device, scratch_bytes */
    size_t scratch_bytes;
    float *pinned; /* host, CUDA_STAGE_FLOATS */
    graph_cache *graphs;
} cuda_ctx;

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

static easel_err need(const char *op, const char *name, const tensor *t, int any_dtype) {
    if (!t || !t->data) return easel_seterr(EASEL_EINVAL, "%s: %s has no data", op, name);
    if (t->dev != DEV_CUDA)
        return easel_seterr(EASEL_EINVAL, "%s: %s is not a cuda tensor", op, name);
    if (!any_dtype && t->dt != DT_F16)
        return easel_seterr(EASEL_EUNSUPPORTED, "%s: %s is %s; the cuda backend stores f16", op,
                            name, dtype_name(t->dt));
    return EASEL_OK;
}
#define NEED(t)                                                                                    \
    do {                                                                                           \
        easel_err e_ = need(OP, #t, t, 0);                                                         \
        if (e_) return e_;                                                                         \
    } while (0)

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
    cudaGetLastError();
    size_t fr = 0, tot = 0;
    cudaSetDevice(device);
    if (cudaMemGetInfo(&fr, &tot) != cudaSuccess) cudaGetLastError();
    if (e == cudaErrorMemoryAllocation) return cuda_oom_error(what, bytes, fr, tot);
    return cuda_fail(what, e);
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

/* The scratch buffer grows to at least bytes (cudaFree waits for the device). */
static easel_err scratch(backend *be, size_t bytes, void **out) {
    cuda_ctx *c = ctx_of(be);
    if (c->scratch_bytes < bytes) {
        cudaFree(c->scratch);
        c->scratch = NULL;
        c->scratch_bytes = 0;
        easel_err e = dev_malloc(c->device, "scratch", bytes, &c->scratch);
        if (e) return e;
        c->scratch_bytes = bytes;
    }
    *out = c->scratch;
    return EASEL_OK;
}

static easel_err cuda_sync(backend *be) {
    CU("sync", cudaStreamSynchronize(stream_of(be)));
    CU("sync", cudaGetLastError());
    return EASEL_OK;
}

static easel_err check_io(const char *op, const tensor *t, const float *host) {
    if (!host) return easel_seterr(EASEL_EINVAL, "%s: NULL host pointer", op);
    return need(op, "tensor", t, 1);
}

/* Host f32 -> device (any dtype), in chunks through the scratch buffer. */
static easel_err cuda_upload(backend *be, tensor *dst, const float *src) {
    easel_err e = check_io("upload", dst, src);
    if (e) return e;
    int64_t n = tensor_nelem(dst);
    if (dst->dt == DT_F32) {
        CU("upload", cudaMemcpy(dst->data, src, (size_t)n * 4, cudaMemcpyHostToDevice));
        return EASEL_OK;
    }
    void *buf;
    if ((e = scratch(be, CUDA_STAGE_FLOATS * 4, &buf))) return e;
    for (int64_t off = 0; off < n; off += (int64_t)CUDA_STAGE_FLOATS) {
        int64_t m = n - off < (int64_t)CUDA_STAGE_FLOATS ? n - off : (int64_t)CUDA_STAGE_FLOATS;
        /* pageable source: returns once the data are staged, so src may change after */
        CU("upload",
           cudaMemcpyAsync(buf, src + off, (size_t)m * 4, cudaMemcpyHostToDevice, stream_of(be)));
        char *d = (char *)dst->data + (size_t)off * dtype_size(dst->dt);
        if ((e = kcheck("upload", kern_convert(stream_of(be), d, (int)dst->dt, buf, KDT_F32, m))))
            return e;
    }
    return cuda_sync(be);
}

/* Device (any dtype) -> host f32, through scratch (convert) and pinned memory. */
static easel_err cuda_download(backend *be, const tensor *src, float *dst) {
    easel_err e = check_io("download", src, dst);
    if (e) return e;
    cuda_ctx *c = ctx_of(be);
    int64_t n = tensor_nelem(src);
    void *buf = NULL;
    if (src->dt != DT_F32 && (e = scratch(be, CUDA_STAGE_FLOATS * 4, &buf))) return e;
    for (int64_t off = 0; off < n; off += (int64_t)CUDA_STAGE_FLOATS) {
        int64_t m = n - off < (int64_t)CUDA_STAGE_FLOATS ? n - off : (int64_t)CUDA_STAGE_FLOATS;
        const char *s = (const char *)src->data + (size_t)off * dtype_size(src->dt);
        if (src->dt != DT_F32) {
            e = kcheck("download", kern_convert(stream_of(be), buf, KDT_F32, s, (int)src->dt, m));
            if (e) return e;
            s = buf;
        }
        CU("download",
           cudaMemcpyAsync(c->pinned, s, (size_t)m * 4, cudaMemcpyDeviceToHost, stream_of(be)));
        if ((e = cuda_sync(be))) return e;
        memcpy(dst + off, c->pinned, (size_t)m * 4);
    }
    return EASEL_OK;
}

/* ---- ops ---- */

static easel_err cuda_copy(backend *be, tensor *y, const tensor *x) {
    static const char *OP = "copy";
    easel_err e;
    if ((e = need(OP, "y", y, 1)) || (e = need(OP, "x", x, 1))) return e;
    if (tensor_nelem(y) != tensor_nelem(x)) return mismatch(OP, "element counts differ", y, x);
    if (y->dt == x->dt) {
        if (y->data != x->data)
            CU(OP, cudaMemcpyAsync(y->data, x->data, tensor_nbytes(x), cudaMemcpyDeviceToDevice,
                                   stream_of(be)));
        return EASEL_OK;
    }
    return kcheck(
        OP, kern_convert(stream_of(be), y->data, (int)y->dt, x->data, (int)x->dt, tensor_nelem(x)));
}

static easel_err cuda_linear(backend *be, tensor *y, const tensor *x, const tensor *w,
                             const tensor *b) {
    static const char *OP = "linear";
    NEED(y);
    NEED(x);
    NEED(w);
    if (b) NEED(b);
    int64_t m = tensor_rows(x), k = tensor_cols(x), n = w->ne[0];
    if (w->ndim != 2 || w->ne[1] != k) return mismatch(OP, "w must be [N,K]", w, x);
    if (tensor_rows(y) != m || tensor_cols(y) != n) return mismatch(OP, "y must be [M,N]", y, w);
    if (b && tensor_nelem(b) != n) return mismatch(OP, "b must be [N]", b, w);
    cuda_ctx *c = ctx_of(be);
    return kcheck(OP, kern_gemm_run(c->gemm, stream_of(be), y->data, x->data, w->data,
                                    b ? b->data : NULL, 1, m, n, k, 1, 1.0f, 0, 0, 0));
}

static easel_err cuda_bmm(backend *be, tensor *y, const tensor *a, const tensor *b, int trans_b,
                          float alpha) {
    static const char *OP = "bmm";
    NEED(y);
    NEED(a);
    NEED(b);
    int64_t B, M, N, K;
    easel_err e = backend_check_bmm(y, a, b, trans_b, &B, &M, &N, &K);
    if (e) return e;
    cuda_ctx *c = ctx_of(be);
    return kcheck(OP, kern_gemm_run(c->gemm, stream_of(be), y->data, a->data, b->data, NULL, B, M,
                                    N, K, trans_b, alpha, M * K, K * N, M * N));
}

static easel_err cuda_conv2d(backend *be, tensor *y, const tensor *x, const tensor *w,
                             const tensor *b, int stride, int pad) {
    static const char *OP = "conv2d";
    NEED(y);
    NEED(x);
    NEED(w);
    if (b) NEED(b);
    if (x->ndim != 4 || w->ndim != 4 || y->ndim != 4)
        return mismatch(OP, "x, w, y must be 4-d (NHWC, [Co,KH,KW,Ci])", x, w);
    if (stride < 1 || pad < 0)
        return easel_seterr(EASEL_EINVAL, "%s: bad stride %d or pad %d", OP, stride, pad);
    int64_t n = x->ne[0], h = x->ne[1], wd = x->ne[2], ci = x->ne[3];
    int64_t co = w->ne[0], kh = w->ne[1], kw = w->ne[2];
    if (w->ne[3] != ci) return mismatch(OP, "input channels differ", x, w);
    int64_t hn = h + 2 * pad - kh, wn = wd + 2 * pad - kw;
    if (hn < 0 || wn < 0) return mismatch(OP, "kernel larger than padded input", x, w);
    int64_t ho = hn / stride + 1, wo = wn / stride + 1;
    if (y->ne[0] != n || y->ne[1] != ho || y->ne[2] != wo || y->ne[3] != co)
        return mismatch(OP, "y has the wrong shape for this stride/pad", y, x);
    if (b && tensor_nelem(b) != co) return mismatch(OP, "b must be [Co]", b, w);
    cuda_ctx *c = ctx_of(be);
    const void *bias = b ? b->data : NULL;
    int64_t rows = n * ho * wo, k = kh * kw * ci;
    if (kh == 1 && kw == 1 && stride == 1 && pad == 0) /* a 1x1 conv is a linear layer */
        return kcheck(OP, kern_gemm_run(c->gemm, stream_of(be), y->data, x->data, w->data, bias, 1,
                                        rows, co, k, 1, 1.0f, 0, 0, 0));
    int64_t chunk = cuda_im2col_chunk(rows, k, 2, CUDA_SCRATCH_BUDGET);
    void *cols;
    easel_err e = scratch(be, cuda_im2col_bytes(rows, k, 2, CUDA_SCRATCH_BUDGET), &cols);
    if (e) return e;
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
        int64_t m = rows - r0 < chunk ? rows - r0 : chunk;
        e = kcheck(OP, kern_im2col(stream_of(be), cols, x->data, n, h, wd, ci, (int)kh, (int)kw,
                                   stride, pad, ho, wo, r0, m));
        if (e) return e;
        e = kcheck(OP,
                   kern_gemm_run(c->gemm, stream_of(be), (char *)y->data + (size_t)(r0 * co) * 2,
                                 cols, w->data, bias, 1, m, co, k, 1, 1.0f, 0, 0, 0));
        if (e) return e;
    }
    return EASEL_OK;
}

static easel_err cuda_group_norm(backend *be, tensor *y, const tensor *x, const tensor *gamma,
                                 const tensor *beta, int groups, float eps, int silu) {
    static const char *OP = "group_norm";
    NEED(y);
    NEED(x);
    NEED(gamma);
    NEED(beta);
    if (x->ndim < 2 || !tensor_same_shape(y, x))
        return mismatch(OP, "y must be x's shape (N,...,C)", y, x);
    int64_t n = x->ne[0], c = tensor_cols(x), l = n ? tensor_nelem(x) / (n * (c ? c : 1)) : 0;
    if (groups < 1 || c % groups)
        return easel_seterr(EASEL_EINVAL, "%s: %lld channels not divisible by %d groups", OP,
                            (long long)c, groups);
    if (tensor_nelem(gamma) != c || tensor_nelem(beta) != c)
        return mismatch(OP, "gamma, beta must be [C]", gamma, x);
    if (n * l * c == 0) return EASEL_OK;
    void *work; /* per-slice statistics */
    easel_err e = scratch(be, (size_t)kern_group_norm_work(n, l, c, groups) * sizeof(float), &work);
    if (e) return e;
    return kcheck(OP, kern_group_norm(stream_of(be), y->data, x->data, gamma->data, beta->data, n,
                                      l, c, groups, eps, silu, (float *)work));
}

static easel_err cuda_layer_norm(backend *be, tensor *y, const tensor *x, const tensor *gamma,
                                 const tensor *beta, float eps) {
    static const char *OP = "layer_norm";
    NEED(y);
    NEED(x);
    NEED(gamma);
    NEED(beta);
    if (!tensor_same_shape(y, x)) return mismatch(OP, "y must be x's shape", y, x);
    int64_t c = tensor_cols(x);
    if (tensor_nelem(gamma) != c || tensor_nelem(beta) != c)
        return mismatch(OP, "gamma, beta must be [C]", gamma, x);
    return kcheck(OP, kern_layer_norm(stream_of(be), y->data, x->data, gamma->data, beta->data,
                                      tensor_rows(x), c, eps));
}

static easel_err cuda_softmax(backend *be, tensor *y, const tensor *x) {
    static const char *OP = "softmax";
    NEED(y);
    NEED(x);
    if (!tensor_same_shape(y, x)) return mismatch(OP, "y must be x's shape", y, x);
    return kcheck(OP,
                  kern_softmax(stream_of(be), y->data, x->data, tensor_rows(x), tensor_cols(x)));
}

static easel_err cuda_attention(backend *be, tensor *o, const tensor *q, const tensor *k,
                                const tensor *v, int heads, int causal) {
    static const char *OP = "attention";
    NEED(o);
    NEED(q);
    NEED(k);
    NEED(v);
    if (q->ndim != 3 || k->ndim != 3 || v->ndim != 3 || o->ndim != 3)
        return mismatch(OP, "q, k, v, o must be [B,L,H*D]", q, k);
    if (!tensor_same_shape(k, v)) return mismatch(OP, "k and v differ", k, v);
    if (!tensor_same_shape(o, q)) return mismatch(OP, "o and q differ", o, q);
    if (k->ne[0] != q->ne[0] || k->ne[2] != q->ne[2])
        return mismatch(OP, "batch or width differ", q, k);
    if (heads < 1 || q->ne[2] % heads)
        return easel_seterr(EASEL_EINVAL, "%s: width %lld is not divisible by %d heads", OP,
                            (long long)q->ne[2], heads);
    int64_t d = q->ne[2] / heads;
    if (causal && q->ne[1] != k->ne[1]) return mismatch(OP, "causal needs Lq == Lk", q, k);
    if (d > KERN_ATTN_MAX_D)
        return easel_seterr(EASEL_EUNSUPPORTED, "%s: head dim %lld > %d", OP, (long long)d,
                            KERN_ATTN_MAX_D);
    if (k->ne[1] == 0) { /* no keys: zeros, as the CPU backend */
        CU(OP, cudaMemsetAsync(o->data, 0, tensor_nbytes(o), stream_of(be)));
        return EASEL_OK;
    }
    return kcheck(OP, kern_attention(stream_of(be), o->data, q->data, k->data, v->data, q->ne[0],
                                     q->ne[1], k->ne[1], heads, d, causal));
}

static easel_err cuda_unary(backend *be, tensor *y, const tensor *x, unary_op op) {
    static const char *OP = "unary";
    NEED(y);
    NEED(x);
    if ((unsigned)op >= UNARY_COUNT) return easel_seterr(EASEL_EINVAL, "unary: bad op %d", op);
    if (tensor_nelem(y) != tensor_nelem(x)) return mismatch(OP, "y must be x's shape", y, x);
    return kcheck(OP, kern_unary(stream_of(be), y->data, x->data, tensor_nelem(x), (int)op));
}

static easel_err cuda_geglu(backend *be, tensor *y, const tensor *x) {
    static const char *OP = "geglu";
    NEED(y);
    NEED(x);
    int64_t n = tensor_cols(y);
    if (tensor_cols(x) != 2 * n || tensor_rows(x) != tensor_rows(y))
        return mismatch(OP, "x must be [..., 2N] for y [..., N]", x, y);
    return kcheck(OP, kern_geglu(stream_of(be), y->data, x->data, tensor_rows(y), n));
}

static easel_err cuda_binary(backend *be, tensor *y, const tensor *a, const tensor *b,
                             binary_op op) {
    static const char *OP = "binary";
    NEED(y);
    NEED(a);
    NEED(b);
    if ((unsigned)op >= BINARY_COUNT) return easel_seterr(EASEL_EINVAL, "binary: bad op %d", op);
    if (tensor_nelem(y) != tensor_nelem(a)) return mismatch(OP, "y must have a's shape", y, a);
    if (b->ndim > a->ndim) return mismatch(OP, "b has more dims than a", a, b);
    int64_t an[4] = {1, 1, 1, 1}, bn[4] = {1, 1, 1, 1};
    for (int i = 0; i < a->ndim; i++)
        an[4 - a->ndim + i] = a->ne[i];
    for (int i = 0; i < b->ndim; i++)
        bn[4 - b->ndim + i] = b->ne[i];
    for (int i = 0; i < 4; i++)
        if (bn[i] != an[i] && bn[i] != 1) return mismatch(OP, "b does not broadcast onto a", a, b);
    return kcheck(OP, kern_binary(stream_of(be), y->data, a->data, b->data, an, bn, (int)op));
}

static easel_err cuda_axpby(backend *be, tensor *y, float alpha, const tensor *x, float beta,
                            const tensor *z) {
    static const char *OP = "axpby";
    NEED(y);
    NEED(x);
    NEED(z);
    if (tensor_nelem(x) != tensor_nelem(z) || tensor_nelem(y) != tensor_nelem(x))
        return mismatch(OP, "x, z, y must have the same shape", x, z);
    return kcheck(
        OP, kern_axpby(stream_of(be), y->data, alpha, x->data, beta, z->data, tensor_nelem(x)));
}

static easel_err cuda_upsample2x(backend *be, tensor *y, const tensor *x) {
    static const char *OP = "upsample2x";
    NEED(y);
    NEED(x);
    if (x->ndim != 4 || y->ndim != 4 || y->ne[0] != x->ne[0] || y->ne[1] != 2 * x->ne[1] ||
        y->ne[2] != 2 * x->ne[2] || y->ne[3] != x->ne[3])
        return mismatch(OP, "y must be [N,2H,2W,C] for x [N,H,W,C]", y, x);
    return kcheck(OP, kern_upsample2x(stream_of(be), y->data, x->data, x->ne[0], x->ne[1], x->ne[2],
                                      x->ne[3]));
}

static easel_err cuda_concat(backend *be, tensor *y, const tensor *a, const tensor *b) {
    static const char *OP = "concat";
    NEED(y);
    NEED(a);
    NEED(b);
    int64_t rows = tensor_rows(a), ca = tensor_cols(a), cb = tensor_cols(b);
    if (tensor_rows(b) != rows || tensor_rows(y) != rows || tensor_cols(y) != ca + cb ||
        a->ndim != b->ndim || y->ndim != a->ndim)
        return mismatch(OP, "a[...,Ca], b[...,Cb] -> y[...,Ca+Cb]", a, b);
    return kcheck(OP, kern_concat(stream_of(be), y->data, a->data, b->data, rows, ca, cb));
}

/* Small host arrays (timesteps, token ids) go through the scratch buffer:
 * a pageable copy, so the caller's array may change once this returns. */
static easel_err stage_small(backend *be, const char *op, const void *host, size_t bytes,
                             void **dev) {
    easel_err e = scratch(be, bytes < 256 ? 256 : bytes, dev);
    if (e) return e;
    CU(op, cudaMemcpyAsync(*dev, host, bytes, cudaMemcpyHostToDevice, stream_of(be)));
    return EASEL_OK;
}

static easel_err cuda_timestep_embedding(backend *be, tensor *y, const float *t, int flip,
                                         float shift, float max_period) {
    static const char *OP = "timestep_embedding";
    NEED(y);
    if (!t) return easel_seterr(EASEL_EINVAL, "%s: t is NULL", OP);
    if (y->ndim != 2 || y->ne[1] < 2) return mismatch(OP, "y must be [N,dim], dim >= 2", y, NULL);
    void *td;
    easel_err e = stage_small(be, OP, t, (size_t)y->ne[0] * sizeof(float), &td);
    if (e) return e;
    return kcheck(OP, kern_timestep_embedding(stream_of(be), y->data, td, y->ne[0], y->ne[1], flip,
                                              shift, max_period));
}

static easel_err cuda_gather_rows(backend *be, tensor *y, const tensor *table, const int32_t *ids,
                                  int64_t n) {
    static const char *OP = "gather_rows";
    NEED(y);
    NEED(table);
    if (!ids && n) return easel_seterr(EASEL_EINVAL, "%s: ids is NULL", OP);
    int64_t c = tensor_cols(table), rows = tensor_rows(table);
    if (tensor_rows(y) != n || tensor_cols(y) != c)
        return mismatch(OP, "y must be [n,C]", y, table);
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= rows)
            return easel_seterr(EASEL_EINVAL, "%s: id %d at %lld out of range [0,%lld)", OP,
                                (int)ids[i], (long long)i, (long long)rows);
    if (n == 0) return EASEL_OK;
    void *idd;
    easel_err e = stage_small(be, OP, ids, (size_t)n * sizeof(int32_t), &idd);
    if (e) return e;
    return kcheck(OP, kern_gather_rows(ctx_of(be)->stream, y->data, table->data, idd, n, c));
}

/* ---- lifecycle ---- */

static void graph_exec_destroy(void *exec, void *user) {
    (void)user;
    cudaGraphExecDestroy((cudaGraphExec_t)exec);
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
        if (c->stream) cudaStreamDestroy(c->stream);
        cudaGetLastError();
        free(c);
    }
    free(be);
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

static easel_err ctx_init(cuda_ctx *c, int device) {
    c->device = device;
    CU("cuda init", cudaSetDevice(device));
    CU("cuda init", cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    c->gemm = kern_gemm_create(CUDA_GEMM_WS);
    if (!c->gemm)
        return easel_seterr(EASEL_EDEVICE, "cuda init: cannot create the cuBLASLt handle");
    if (cudaMallocHost((void **)&c->pinned, CUDA_STAGE_FLOATS * 4) != cudaSuccess) {
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
    be->ctx = c;
    fill_ops(be);
    if (ctx_init(c, dev)) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", easel_errmsg());
        cuda_destroy(be);
        easel_seterr(EASEL_EDEVICE, "%s", msg);
        return NULL;
    }
    return be;
}

/* Runs step(user) under the graph cached for key: eagerly the first time
 * (warm-up: arena and scratch reach their size, nothing is allocated during
 * capture), captured and replayed from the second. If capture is not
 * possible, step runs eagerly every time. The step must allocate the same
 * buffers each time (an arena reset to the same mark does) and must not
 * depend on host values passed to ops (timestep_embedding, gather_rows copy
 * host arrays at capture time: compute those outside the step). */
easel_err backend_cuda_run_graph(backend *be, int batch, int height, int width,
                                 easel_err (*step)(void *user), void *user) {
    cuda_ctx *c = ctx_of(be);
    CU("graph", cudaSetDevice(c->device));
    graph_key key = {batch, height, width};
    cudaGraphExec_t exec = (cudaGraphExec_t)graph_cache_get(c->graphs, key);
    if (exec) {
        CU("graph replay", cudaGraphLaunch(exec, c->stream));
        return EASEL_OK;
    }
    if (graph_cache_seen(c->graphs, key) < 2) return step(user);
    if (cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
        cudaGetLastError();
        return step(user);
    }
    easel_err e = step(user);
    cudaGraph_t g = NULL;
    cudaError_t ce = cudaStreamEndCapture(c->stream, &g);
    if (e) {
        if (g) cudaGraphDestroy(g);
        return e;
    }
    if (ce == cudaSuccess) ce = cudaGraphInstantiate(&exec, g, 0);
    if (g) cudaGraphDestroy(g);
    if (ce != cudaSuccess) {
        cudaGetLastError();
        log_warn("cuda: graph capture failed (%s); running the step directly",
                 cudaGetErrorString(ce));
        return step(user);
    }
    if ((e = graph_cache_put(c->graphs, key, exec))) {
        cudaGraphExecDestroy(exec);
        return e;
    }
    CU("graph launch", cudaGraphLaunch(exec, c->stream));
    return EASEL_OK;
}

int backend_cuda_graph_count(backend *be) {
    return graph_cache_size(ctx_of(be)->graphs);
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
