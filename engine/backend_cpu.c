/* The CPU reference backend (backend.h): fp32 ops over NHWC tensors. GEMMs
 * (linear, bmm, conv2d as im2col + GEMM, attention) go through OpenBLAS
 * sgemm; everything else is plain loops written for GCC's auto-vectoriser,
 * with our own vectorisable exp/erf, compiled per ISA (SIMD_CLONES). Every
 * non-trivial op is spread over the backend's own thread pool (threadpool.h).
 *
 * Precision (backend_cpu_create_prec): fp32 is everything below. bf16 (on
 * CPUs with AMX-BF16 or AVX512-BF16) keeps activations, norms, softmax
 * statistics and elementwise ops exactly as fp32, stores the matrix weights
 * in bf16 (weight_dtype; conv weights in oneDNN's blocked layout, see
 * stored_blocked) and runs linear and conv2d with bf16 weights, and
 * non-causal attention, on bf16 operands with fp32 accumulation through
 * oneDNN (backend_cpu_dnnl.c; "bf16 operands" and "attention, bf16" below).
 * Threads of a bf16 backend: its own pool, as fp32's; every oneDNN primitive
 * runs on one thread, and each GEMM/conv is cut into slices run as pool tasks
 * ("bf16 operands" below). Not oneDNN's OpenMP threading: its regions
 * partition statically and end at a barrier that waits for every thread, so
 * on a busy machine a descheduled thread stalled each op ~5 ms (the tiny
 * model's step: 87 ms, now 3-6 ms), and its idle threads spin ~3.5 ms after
 * each region beside ours. Our pool's caller never waits for a thread that
 * has not woken.
 *
 * On CPUs with AVX-512 our own kernels replace OpenBLAS for the big GEMMs:
 * linear and conv2d with >= 32 rows and >= 16 outputs ("GEMM, AVX-512
 * kernels") and non-causal attention with >= 64 keys ("attention, AVX-512
 * kernels": K/V packed once per head, exact softmax in an L2 tile); the GEMM
 * only while OpenBLAS runs its AVX2 kernels, as OPENBLAS_CORETYPE=Haswell
 * makes it here. At 512² a CFG UNet step went from 18.4 to 13.4 CPU-seconds
 * (2 threads; bench/results/2026-11-25-cpu-profile.md). Everything else, and
 * every CPU without AVX-512, takes the OpenBLAS paths below.
 *
 * Threading decision: OpenBLAS runs single-threaded (openblas_set_num_threads(1),
 * process-wide, at create) and we partition every GEMM over our pool: row or
 * column blocks (gemm_par), conv tiles of output pixels (each thread im2cols
 * its tile into its own scratch, then one sgemm), attention tasks per (batch,
 * head, query tile). Why:
 *   - speed: on the 2-core dev machine, pool-partitioned conv/linear ran at
 *     the same rate as OpenBLAS threading the same GEMMs (EASEL_CPU_BLAS_THREADED=1,
 *     `easel bench ops`, alternated runs) within the machine's noise, and
 *     single-threaded sgemm inside a tile keeps im2col and GEMM on one core's cache;
 *   - two backends at once (the service's workers): OpenBLAS has one global
 *     thread pool whose threads spin after each call; two callers contend for
 *     it. With one OpenBLAS thread each backend of n threads uses n cores,
 *     and our workers sleep (no spinning) between ops;
 *   - attention and conv tiles need the parallelism outside the GEMM anyway.
 * Give each of W concurrent backends cores/W threads to avoid oversubscription
 * (the pool tolerates it: callers never wait for a worker that has not woken).
 *
 * Knobs: backend_cpu_create(n), n = 0 -> $EASEL_THREADS if set and positive,
 * else all online cores. EASEL_CONV_TILE (output pixels per conv tile, 256),
 * EASEL_ATTN_TILE (query rows per attention task, 256),
 * EASEL_CPU_BLAS_THREADED=1 (let OpenBLAS thread the GEMMs instead) and
 * EASEL_CPU_AVX512=0 (never our AVX-512 kernels; =1: also our GEMM where
 * OpenBLAS has AVX-512 kernels, see cpu_pick_kernels) exist for measurements.
 * Scratch: per thread, grown on demand, at most ~64 MB for conv tiles; packed
 * GEMM weights (up to ~60 MB for SD1.5) and attention K/V (~23 MB at 512²)
 * in shared buffers; all kept until destroy. */
#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "backend_cpu_dnnl.h"
#include "log.h"
#include "threadpool.h"

#define CPU_ALIGN 256
#define CPU_MAX_THREADS 512
#define SCRATCH_CAP ((size_t)64 << 20) /* bytes per thread, for conv tiles */
#define CONV_TILE_PX 256               /* output pixels per conv tile: measured best of 128..2048 */
#define ATTN_TILE_Q 256                /* query rows per attention task: measured best of 32..256 */
#define ATTN_TILE_BYTES ((size_t)8 << 20) /* cap on a task's score tile */

/* Hot loops are compiled for AVX-512, AVX2+FMA and baseline x86-64, picked
 * at load time (GCC function multi-versioning; elsewhere, baseline only; not
 * under ThreadSanitizer, whose instrumented ifunc resolvers crash at load). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__SANITIZE_THREAD__)
#define SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SIMD_CLONES
#endif

/* Our AVX-512 kernels (attention, GEMM): GCC on x86-64, chosen at create
 * when the CPU has AVX-512F (cpu_ctx.avx512). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#include <immintrin.h>
#define FA_HAVE 1
#define FA_TARGET __attribute__((target("avx512f,fma")))
#endif

typedef struct {
    threadpool *pool;
    int nthreads;
    int conv_tile_px; /* tuning knobs, from env at create (see header) */
    int attn_tile;    /* query rows per attention task */
    int blas_mode;    /* 1: OpenBLAS threads the GEMMs instead (for comparison) */
    int avx512;       /* our AVX-512 attention: the CPU has it, EASEL_CPU_AVX512 != 0 */
    int own_gemm;     /* our AVX-512 GEMM: as avx512, and OpenBLAS runs AVX2 kernels */
    void *wpack;      /* GEMM weights packed for the op in flight */
    size_t wpack_n;
    void **scratch;    /* per thread */
    size_t *scratch_n; /* bytes */
    void *shared;      /* one buffer for the op in flight (partials, im2col) */
    size_t shared_n;
    backend_precision prec; /* PREC_FP32 or PREC_BF16 */
    cpu_dnnl *dnnl;         /* bf16: oneDNN (one-thread primitives, run as our tasks) */
    void *xb;               /* bf16: the GEMM operand converted from f32 activations */
    size_t xb_n;
} cpu_ctx;

static cpu_ctx *ctx_of(backend *be) {
    return be->ctx;
}

/* ---------------------------------------------------------------- helpers */

static easel_err grow(void **p, size_t *cap, size_t bytes, const char *op) {
    if (*cap >= bytes) return EASEL_OK;
    free(*p);
    *p = NULL;
    *cap = 0;
    void *q = NULL;
    if (posix_memalign(&q, 64, bytes ? bytes : 64))
        return easel_seterr(EASEL_ENOMEM, "%s: out of memory (%zu bytes of scratch)", op, bytes);
    *p = q;
    *cap = bytes;
    return EASEL_OK;
}

static easel_err thread_scratch(cpu_ctx *c, size_t bytes, const char *op) {
    for (int t = 0; t < c->nthreads; t++) {
        easel_err e = grow(&c->scratch[t], &c->scratch_n[t], bytes, op);
        if (e) return e;
    }
    return EASEL_OK;
}

/* Product of all dims but the last (tensor_rows() is 0 when the last is 0). */
static int64_t lead_rows(const tensor *t) {
    int64_t r = 1;
    for (int i = 0; i < t->ndim - 1; i++)
        r *= t->ne[i];
    return r;
}

static int fits_int(int64_t v) {
    return v >= 0 && v <= INT_MAX;
}

static int64_t imin(int64_t a, int64_t b) {
    return a < b ? a : b;
}
static int64_t imax(int64_t a, int64_t b) {
    return a > b ? a : b;
}
static int64_t cdiv(int64_t a, int64_t b) {
    return (a + b - 1) / b;
}

/* ------------------------------------------------------ parallel ranges */

typedef void (*range_fn)(void *arg, int64_t lo, int64_t hi, int thread);
typedef struct {
    range_fn fn;
    void *arg;
    int64_t n, chunk;
} range_job;

static void range_task(void *ctx, int task, int thread) {
    range_job *j = ctx;
    int64_t lo = (int64_t)task * j->chunk;
    j->fn(j->arg, lo, imin(j->n, lo + j->chunk), thread);
}

/* Every batch of tasks, on the backend's pool (see the header on threads). */
static void cpu_run(cpu_ctx *c, int ntasks, threadpool_fn fn, void *ctx) {
    threadpool_run(c->pool, ntasks, fn, ctx);
}

/* fn over [0, n) in chunks of at least `grain` items, about 4 per thread. */
static void par_for(cpu_ctx *c, int64_t n, int64_t grain, range_fn fn, void *arg) {
    if (n <= 0) return;
    int64_t tasks = imin(cdiv(n, grain < 1 ? 1 : grain), 4 * (int64_t)c->nthreads);
    if (c->nthreads == 1 || tasks <= 1) {
        fn(arg, 0, n, 0);
        return;
    }
    range_job j = {fn, arg, n, cdiv(n, tasks)};
    cpu_run(c, (int)cdiv(n, j.chunk), range_task, &j);
}

/* GEMM-calling tasks: on the pool, or serially on the caller in blas_mode
 * (where every sgemm is threaded by OpenBLAS itself). */
static void run_gemm_tasks(cpu_ctx *c, int ntasks, threadpool_fn fn, void *ctx) {
    if (!c->blas_mode) {
        cpu_run(c, ntasks, fn, ctx);
        return;
    }
    for (int t = 0; t < ntasks; t++)
        fn(ctx, t, 0);
}

/* ------------------------------------------------ vectorisable math */

/* e^x, Cephes-style: 2^n · p(r), |rel err| ~ 2 ulp; clamps to the f32 range. */
static inline float exp_f(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float r0 = x * 1.44269504088896341f + 12582912.0f; /* round to nearest int */
    float n = r0 - 12582912.0f;
    uint32_t ni; /* unsigned: a NaN input must give NaN, not signed-overflow UB */
    memcpy(&ni, &r0, 4);
    ni -= 0x4B400000u;
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    uint32_t bits = (ni + 127u) << 23;
    float s;
    memcpy(&s, &bits, 4);
    return p * s;
}

/* erf(x) as a rational function on [-4, 4] (±1 beyond); |abs err| < 5e-7. */
static inline float erf_f(float x) {
    x = x > 4.f ? 4.f : (x < -4.f ? -4.f : x);
    float x2 = x * x;
    float p = -2.72614225801306e-10f;
    p = p * x2 + 2.77068142495902e-08f;
    p = p * x2 + -2.10102402082508e-06f;
    p = p * x2 + -5.69250639462346e-05f;
    p = p * x2 + -7.34990630326855e-04f;
    p = p * x2 + -2.95459980854025e-03f;
    p = p * x2 + -1.60960333262415e-02f;
    float q = -1.45660718464996e-05f;
    q = q * x2 + -2.13374055278905e-04f;
    q = q * x2 + -1.68282697438203e-03f;
    q = q * x2 + -7.37332916720468e-03f;
    q = q * x2 + -1.42647390514189e-02f;
    return x * p / q;
}

static inline float silu_f(float x) {
    return x / (1.0f + exp_f(-x));
}
static inline float gelu_f(float x) {
    return 0.5f * x * (1.0f + erf_f(x * 0.70710678118654752f));
}
static inline float qgelu_f(float x) {
    return x / (1.0f + exp_f(-1.702f * x));
}
static inline float relu_f(float x) {
    return x < 0.0f ? 0.0f : x; /* NaN passes through, as in torch.relu */
}
/* tanh: Cephes' odd polynomial below |x| = 0.625 (no cancellation near 0),
 * 1 - 2/(e^2|x| + 1) above, sign restored; both computed so the loop stays
 * branch-free for the vectoriser. |rel err| ~ 2e-7. */
static inline float tanh_f(float x) {
    float z = x < 0.0f ? -x : x, s = x * x;
    float p = -5.70498872745e-3f;
    p = p * s + 2.06390887954e-2f;
    p = p * s - 5.37397155531e-2f;
    p = p * s + 1.33314422036e-1f;
    p = p * s - 3.33332819422e-1f;
    float small = p * s * x + x;
    float big = 1.0f - 2.0f / (exp_f(2.0f * z) + 1.0f);
    big = x < 0.0f ? -big : big;
    return z > 0.625f ? big : small;
}

#define LANES 16

static inline double sum_d(const float *x, int64_t n) {
    double acc[LANES / 2] = {0};
    int64_t i = 0;
    for (; i + LANES / 2 <= n; i += LANES / 2)
        for (int j = 0; j < LANES / 2; j++)
            acc[j] += x[i + j];
    double s = 0;
    for (; i < n; i++)
        s += x[i];
    for (int j = 0; j < LANES / 2; j++)
        s += acc[j];
    return s;
}

static inline double sumsq_dev_d(const float *x, int64_t n, double mean) {
    double acc[LANES / 2] = {0};
    int64_t i = 0;
    for (; i + LANES / 2 <= n; i += LANES / 2)
        for (int j = 0; j < LANES / 2; j++) {
            double d = x[i + j] - mean;
            acc[j] += d * d;
        }
    double s = 0;
    for (; i < n; i++)
        s += (x[i] - mean) * (x[i] - mean);
    for (int j = 0; j < LANES / 2; j++)
        s += acc[j];
    return s;
}

static inline float sum_f(const float *x, int64_t n) {
    float acc[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++)
            acc[j] += x[i + j];
    float s = 0;
    for (; i < n; i++)
        s += x[i];
    for (int j = 0; j < LANES; j++)
        s += acc[j];
    return s;
}

static inline float max_f(const float *x, int64_t n) {
    float acc[LANES];
    for (int j = 0; j < LANES; j++)
        acc[j] = -INFINITY;
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++)
            acc[j] = x[i + j] > acc[j] ? x[i + j] : acc[j];
    float m = -INFINITY;
    for (; i < n; i++)
        m = x[i] > m ? x[i] : m;
    for (int j = 0; j < LANES; j++)
        m = acc[j] > m ? acc[j] : m;
    return m;
}

/* In place, max-subtracted. */
SIMD_CLONES static void softmax_row(float *x, int64_t n) {
    if (n <= 0) return;
    float m = max_f(x, n);
    for (int64_t i = 0; i < n; i++)
        x[i] = exp_f(x[i] - m);
    float inv = 1.0f / sum_f(x, n);
    for (int64_t i = 0; i < n; i++)
        x[i] *= inv;
}

/* ------------------------------------------------------------- memory */

static easel_err cpu_alloc(backend *be, size_t bytes, void **out) {
    (void)be;
    void *p = NULL;
    if (!out) return easel_seterr(EASEL_EINVAL, "alloc: out is NULL");
    *out = NULL;
    size_t n = (bytes + CPU_ALIGN - 1) & ~(size_t)(CPU_ALIGN - 1);
    /* sizes no machine has are refused up front (sanitizer allocators abort on them) */
    if (n < bytes || n > ((size_t)1 << 44) || posix_memalign(&p, CPU_ALIGN, n ? n : CPU_ALIGN))
        return easel_seterr(EASEL_ENOMEM, "cpu alloc: out of memory (%zu bytes)", bytes);
    *out = p;
    return EASEL_OK;
}

static void cpu_free(backend *be, void *p) {
    (void)be;
    free(p);
}

static easel_err cpu_sync(backend *be) {
    (void)be;
    return EASEL_OK;
}

/* f32 -> bf16, round to nearest even (as f32_to_bf16; NaN stays NaN). */
typedef struct {
    uint16_t *y;
    const float *x;
} bf_job;

SIMD_CLONES static void to_bf16_range(void *arg, int64_t lo, int64_t hi, int thread) {
    (void)thread;
    const bf_job *j = arg;
    for (int64_t i = lo; i < hi; i++) {
        uint32_t u;
        memcpy(&u, &j->x[i], 4);
        uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
        j->y[i] = (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u : r);
    }
}

/* Conversion between any two of f32/f16/bf16 arrays, over a range. */
typedef struct {
    void *dst;
    const void *src;
    dtype ddt, sdt;
} conv_dt_job;

static float load_el(const void *p, dtype dt, int64_t i) {
    if (dt == DT_F32) return ((const float *)p)[i];
    uint16_t h = ((const uint16_t *)p)[i];
    return dt == DT_F16 ? f16_to_f32(h) : bf16_to_f32(h);
}

static void convert_range(void *arg, int64_t lo, int64_t hi, int thread) {
    (void)thread;
    conv_dt_job *j = arg;
    if (j->ddt == j->sdt) {
        size_t es = dtype_size(j->ddt);
        memcpy((char *)j->dst + lo * es, (const char *)j->src + lo * es, (size_t)(hi - lo) * es);
        return;
    }
    if (j->ddt == DT_BF16 && j->sdt == DT_F32) { /* weights at load: the vectorised loop */
        bf_job b = {(uint16_t *)j->dst + lo, (const float *)j->src + lo};
        to_bf16_range(&b, 0, hi - lo, thread);
        return;
    }
    for (int64_t i = lo; i < hi; i++) {
        float v = load_el(j->src, j->sdt, i);
        if (j->ddt == DT_F32)
            ((float *)j->dst)[i] = v;
        else if (j->ddt == DT_F16)
            ((uint16_t *)j->dst)[i] = f32_to_f16(v);
        else
            ((uint16_t *)j->dst)[i] = f32_to_bf16(v);
    }
}

static easel_err convert(backend *be, void *dst, dtype ddt, const void *src, dtype sdt, int64_t n) {
    conv_dt_job j = {dst, src, ddt, sdt};
    par_for(ctx_of(be), n, 1 << 16, convert_range, &j);
    return EASEL_OK;
}

static easel_err operand_bf16(cpu_ctx *c, const float *x, int64_t n, const char *op,
                              uint16_t **out);

/* A 4-D bf16 tensor on a bf16 backend is a conv weight, stored in the
 * blocked layout oneDNN's convolution reads when cpu_dnnl_conv_w_blocked says
 * so (the same bytes as plain; a function of the shape only). upload,
 * download and copy convert between that layout and plain values. */
static int stored_blocked(cpu_ctx *c, const tensor *t) {
    return c->dnnl && t->dt == DT_BF16 && t->ndim == 4 && cpu_dnnl_conv_w_blocked(c->dnnl, t->ne);
}

static easel_err cpu_upload(backend *be, tensor *dst, const float *src) {
    cpu_ctx *c = ctx_of(be);
    if (!stored_blocked(c, dst))
        return convert(be, dst->data, dst->dt, src, DT_F32, tensor_nelem(dst));
    uint16_t *plain;
    easel_err e = operand_bf16(c, src, tensor_nelem(dst), "upload", &plain);
    return e ? e : cpu_dnnl_conv_w_pack(c->dnnl, dst->ne, plain, dst->data);
}

static easel_err cpu_download(backend *be, const tensor *src, float *dst) {
    cpu_ctx *c = ctx_of(be);
    int64_t n = tensor_nelem(src);
    if (!stored_blocked(c, src)) return convert(be, dst, DT_F32, src->data, src->dt, n);
    easel_err e = grow(&c->xb, &c->xb_n, (size_t)n * 2, "download");
    if (!e) e = cpu_dnnl_conv_w_unpack(c->dnnl, src->ne, src->data, c->xb);
    return e ? e : convert(be, dst, DT_F32, c->xb, DT_BF16, n);
}

static easel_err cpu_copy(backend *be, tensor *y, const tensor *x) {
    if (y->data == x->data && y->dt == x->dt) return EASEL_OK;
    cpu_ctx *c = ctx_of(be);
    int64_t n = tensor_nelem(x);
    int bx = stored_blocked(c, x), by = stored_blocked(c, y);
    if ((!bx && !by) || (bx && by && tensor_same_shape(x, y)))
        return convert(be, y->data, y->dt, x->data, x->dt, n);
    /* through plain bf16 values in the operand buffer */
    easel_err e = grow(&c->xb, &c->xb_n, (size_t)n * 2, "copy");
    if (!e && bx) e = cpu_dnnl_conv_w_unpack(c->dnnl, x->ne, x->data, c->xb);
    if (!e && !bx) e = convert(be, c->xb, DT_BF16, x->data, x->dt, n);
    if (e) return e;
    return by ? cpu_dnnl_conv_w_pack(c->dnnl, y->ne, c->xb, y->data)
              : convert(be, y->data, y->dt, c->xb, DT_BF16, n);
}

/* --------------------------------------------------------------- GEMM */

/* C[M,N] = alpha·A[M,K]·op(B) + beta·C (+ bias[N]); op(B) = B[N,K]^T if transb
 * else B[K,N]. Row-major with leading dimensions. */
typedef struct {
    int M, N, K;
    const float *A;
    int lda;
    const float *B;
    int ldb, transb;
    float alpha, beta;
    float *C;
    int ldc;
    const float *bias;
    int mblk, nblk, nmb; /* block sizes, number of blocks along M */
} gemm_job;

SIMD_CLONES static void add_bias(float *C, int ldc, int m, int n, const float *bias) {
    for (int i = 0; i < m; i++) {
        float *c = C + (int64_t)i * ldc;
        for (int j = 0; j < n; j++)
            c[j] += bias[j];
    }
}

static void gemm_block(const gemm_job *g, int m0, int m1, int n0, int n1) {
    const float *B = g->transb ? g->B + (int64_t)n0 * g->ldb : g->B + n0;
    float *C = g->C + (int64_t)m0 * g->ldc + n0;
    if (g->K == 0) { /* legal (C = beta·C), but OpenBLAS leaves C untouched */
        for (int i = 0; i < m1 - m0; i++)
            for (int k = 0; k < n1 - n0; k++) {
                float *cv = C + (int64_t)i * g->ldc + k;
                *cv = g->beta == 0.0f ? 0.0f : g->beta * *cv;
            }
    } else {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, g->transb ? CblasTrans : CblasNoTrans, m1 - m0,
                    n1 - n0, g->K, g->alpha, g->A + (int64_t)m0 * g->lda, g->lda, B, g->ldb,
                    g->beta, C, g->ldc);
    }
    if (g->bias) add_bias(C, g->ldc, m1 - m0, n1 - n0, g->bias + n0);
}

static void gemm_task(void *ctx, int task, int thread) {
    (void)thread;
    const gemm_job *g = ctx;
    int bm = task % g->nmb, bn = task / g->nmb;
    int m0 = bm * g->mblk, n0 = bn * g->nblk;
    int m1 = (int)imin(g->M, m0 + g->mblk), n1 = (int)imin(g->N, n0 + g->nblk);
    if (m0 < m1 && n0 < n1) gemm_block(g, m0, m1, n0, n1);
}

static int round16(int64_t v) {
    return (int)((v + 15) & ~(int64_t)15);
}

/* Splits the GEMM into blocks, each one single-threaded sgemm: along M (each
 * thread then packs all of B) or along N (each packs all of A), whichever
 * duplicates less packing, when every block gets >= 64 rows or columns; else
 * one call. */
static void gemm_par(cpu_ctx *c, gemm_job *g, int threads) {
    int T = c->blas_mode ? 1 : threads;
    double flops = 2.0 * g->M * g->N * g->K;
    g->mblk = g->M;
    g->nblk = g->N;
    if (T > 1 && flops >= 4e6) {
        int split_m = g->M >= 64 * T, split_n = g->N >= 64 * T;
        if (split_m && (g->M >= g->N || !split_n)) /* 2 blocks per thread when large: balance */
            g->mblk = round16(cdiv(g->M, g->M >= 512 * T ? 2 * T : T));
        else if (split_n)
            g->nblk = round16(cdiv(g->N, T));
    }
    g->nmb = (int)cdiv(g->M, g->mblk > 0 ? g->mblk : 1);
    if (g->nmb < 1) g->nmb = 1;
    int nnb = (int)cdiv(g->N, g->nblk > 0 ? g->nblk : 1);
    if (nnb < 1) nnb = 1;
    if (g->nmb * nnb == 1) {
        if (g->M > 0 && g->N > 0) gemm_block(g, 0, g->M, 0, g->N);
        return;
    }
    run_gemm_tasks(c, g->nmb * nnb, gemm_task, g);
}

/* Our AVX-512 GEMM (defined after conv2d, which it shares conv_job with). */
static int gm_usable(const cpu_ctx *c, int64_t M, int64_t N);
static easel_err gm_linear(cpu_ctx *c, float *y, const float *x, const float *w, const float *b,
                           int64_t M, int64_t N, int64_t K);

/* --------------------------------------------- bf16 operands (oneDNN) */

static void to_bf16(cpu_ctx *c, uint16_t *y, const float *x, int64_t n) {
    bf_job j = {y, x};
    par_for(c, n, 1 << 15, to_bf16_range, &j);
}

/* x (f32, n values) as bf16 in the backend's operand buffer. */
static easel_err operand_bf16(cpu_ctx *c, const float *x, int64_t n, const char *op,
                              uint16_t **out) {
    easel_err e = grow(&c->xb, &c->xb_n, (size_t)n * 2, op);
    if (e) return e;
    to_bf16(c, c->xb, x, n);
    *out = c->xb;
    return EASEL_OK;
}

/* Slices of a bf16 GEMM or conv run as pool tasks (each a one-thread oneDNN
 * primitive; see backend_cpu_dnnl.h on why not oneDNN's own threads): about
 * BF_SLICES_PER_THREAD per thread so that a thread the OS runs late costs
 * little, none smaller than BF_MIN_MACS multiply-adds. */
#define BF_SLICES_PER_THREAD 2
#define BF_MIN_MACS ((int64_t)1 << 21)

static int64_t bf_slices(const cpu_ctx *c, int64_t macs, int64_t most) {
    int64_t n = imin(BF_SLICES_PER_THREAD * (int64_t)c->nthreads, macs / BF_MIN_MACS);
    return imax(1, imin(n, most));
}

/* The first failure of a run's tasks: its code and message (a task's message
 * is in its own thread's slot). */
typedef struct {
    easel_err err;
    char msg[256];
    int lock;
} bf_fail;

static void bf_failed(bf_fail *f, easel_err e) {
    if (__atomic_exchange_n(&f->lock, 1, __ATOMIC_ACQ_REL)) return;
    snprintf(f->msg, sizeof f->msg, "%s", easel_errmsg());
    __atomic_store_n(&f->err, e, __ATOMIC_RELEASE);
}

static easel_err bf_result(const bf_fail *f, const char *op) {
    return f->err ? easel_seterr(f->err, "%s: %s", op, f->msg) : EASEL_OK;
}

/* y[M,N] = x[M,K]·w[N,K]^T + b: slices of rows (or, when rows are few, of
 * columns: w's rows), each its own matmul on the bf16 copy of x. */
typedef struct {
    cpu_dnnl *dn;
    float *y;
    const uint16_t *x, *w;
    const float *b;
    int64_t M, N, K, rows, cols; /* slice sizes (rows == M or cols == N) */
    const cpu_dnnl_prim *p[2];   /* full slice, last slice */
    int64_t nslices;
    bf_fail fail;
} bl_job;

static void bl_task(void *ctx, int task, int thread) {
    bl_job *j = ctx;
    int last = task == j->nslices - 1;
    if (j->rows < j->M) { /* a band of rows */
        int64_t r0 = task * j->rows;
        easel_err e = cpu_dnnl_mm_exec(j->dn, j->p[last], thread, j->y + r0 * j->N,
                                       j->x + r0 * j->K, j->w, j->b);
        if (e) bf_failed(&j->fail, e);
    } else { /* a band of output columns */
        int64_t n0 = task * j->cols;
        easel_err e = cpu_dnnl_mm_exec(j->dn, j->p[last], thread, j->y + n0, j->x, j->w + n0 * j->K,
                                       j->b ? j->b + n0 : NULL);
        if (e) bf_failed(&j->fail, e);
    }
}

static easel_err bf_linear(cpu_ctx *c, float *y, const float *x, const uint16_t *w, const float *b,
                           int64_t M, int64_t N, int64_t K) {
    if (M == 0 || N == 0) return EASEL_OK;
    if (K == 0) { /* y = b (or 0) */
        for (int64_t r = 0; r < M; r++)
            for (int64_t n = 0; n < N; n++)
                y[r * N + n] = b ? b[n] : 0.0f;
        return EASEL_OK;
    }
    uint16_t *xb;
    easel_err e = operand_bf16(c, x, M * K, "linear", &xb);
    if (e) return e;
    bl_job j = {.dn = c->dnnl, .y = y, .x = xb, .w = w, .b = b, .M = M, .N = N, .K = K};
    int64_t n = bf_slices(c, M * N * K, imax(M, N) / 32);
    int by_rows = M >= N / 4; /* rows are cheaper to split: each slice reads all of w */
    j.rows = by_rows ? imin(M, cdiv(cdiv(M, n), 16) * 16) : M;
    j.cols = by_rows ? N : imin(N, cdiv(cdiv(N, n), 64) * 64);
    j.nslices = by_rows ? cdiv(M, j.rows) : cdiv(N, j.cols);
    int64_t lr = M - (j.nslices - 1) * j.rows, lc = N - (j.nslices - 1) * j.cols;
    cpu_dnnl_prim *p;
    /* full slices and the last (the cache keeps both: the ones just used); ldy
     * N, w rows of K, x rows of K */
    if (!(e = cpu_dnnl_mm_get(c->dnnl, by_rows ? j.rows : M, by_rows ? N : j.cols, K, K, K, N, 1,
                              b != NULL, &p))) {
        j.p[0] = p;
        e = cpu_dnnl_mm_get(c->dnnl, by_rows ? lr : M, by_rows ? N : lc, K, K, K, N, 1, b != NULL,
                            &p);
        j.p[1] = p;
    }
    if (e) return easel_wraperr(e, "linear");
    cpu_run(c, (int)j.nslices, bl_task, &j);
    return bf_result(&j.fail, "linear");
}

/* ------------------------------------------------------ linear and bmm */

static easel_err cpu_linear(backend *be, tensor *y, const tensor *x, const tensor *w,
                            const tensor *b) {
    int64_t M = lead_rows(x), K = tensor_cols(x), N = w->ne[0];
    if (!fits_int(M) || !fits_int(N) || !fits_int(K))
        return easel_seterr(EASEL_EINVAL, "linear: dims too large for BLAS");
    cpu_ctx *c = ctx_of(be);
    if (w->dt == DT_BF16)
        return bf_linear(c, y->data, x->data, w->data, b ? b->data : NULL, M, N, K);
    if (gm_usable(c, M, N))
        return gm_linear(c, y->data, x->data, w->data, b ? b->data : NULL, M, N, K);
    gemm_job g = {(int)M,
                  (int)N,
                  (int)K,
                  x->data,
                  (int)K,
                  w->data,
                  (int)K,
                  1,
                  1.0f,
                  0.0f,
                  y->data,
                  (int)N,
                  b ? b->data : NULL,
                  0,
                  0,
                  0};
    gemm_par(c, &g, c->nthreads);
    return EASEL_OK;
}

typedef struct {
    gemm_job g;
    int64_t sa, sb, sc; /* batch strides */
} bmm_job;

static void bmm_task(void *ctx, int task, int thread) {
    (void)thread;
    const bmm_job *j = ctx;
    gemm_job g = j->g;
    g.A += task * j->sa;
    g.B += task * j->sb;
    g.C += task * j->sc;
    if (g.M > 0 && g.N > 0) gemm_block(&g, 0, g.M, 0, g.N);
}

static easel_err cpu_bmm(backend *be, tensor *y, const tensor *a, const tensor *b, int trans_b,
                         float alpha) {
    int64_t B, M, N, K;
    easel_err e = backend_check_bmm(y, a, b, trans_b, &B, &M, &N, &K);
    if (e) return e;
    if (!fits_int(M) || !fits_int(N) || !fits_int(K) || !fits_int(B))
        return easel_seterr(EASEL_EINVAL, "bmm: dims too large for BLAS");
    cpu_ctx *c = ctx_of(be);
    bmm_job j = {{(int)M, (int)N, (int)K, a->data, (int)K, b->data, (int)(trans_b ? K : N),
                  trans_b != 0, alpha, 0.0f, y->data, (int)N, NULL, 0, 0, 0},
                 M * K,
                 K * N,
                 M * N};
    if (B >= c->nthreads || c->nthreads == 1) {
        run_gemm_tasks(c, (int)B, bmm_task, &j);
        return EASEL_OK;
    }
    for (int64_t i = 0; i < B; i++) {
        gemm_job g = j.g;
        g.A += i * j.sa;
        g.B += i * j.sb;
        g.C += i * j.sc;
        gemm_par(c, &g, c->nthreads);
    }
    return EASEL_OK;
}

/* ------------------------------------------------------------- conv2d */

typedef struct {
    const float *x, *w, *b;
    float *y;
    int64_t N, H, W, Ci, Co, KH, KW, Ho, Wo, P, K;
    int stride, pad;
    int64_t tile; /* output pixels per task (tiled path) */
    float *col;   /* whole im2col matrix (small-output path) */
    void **scratch;
} conv_job;

/* Rows [p0, p1) of the im2col matrix [P, KH·KW·Ci] into col (row p at col + (p-p0)·K).
 * One memcpy per (pixel, kernel row): NHWC makes the KW·Ci window contiguous. */
static void im2col(const conv_job *j, int64_t p0, int64_t p1, float *col) {
    int64_t hw = j->Ho * j->Wo, Ci = j->Ci, KW = j->KW;
    for (int64_t p = p0; p < p1; p++) {
        int64_t n = p / hw, r = p % hw, oy = r / j->Wo, ox = r % j->Wo;
        float *dst = col + (p - p0) * j->K;
        int64_t ix0 = ox * j->stride - j->pad;
        int64_t kx0 = ix0 < 0 ? -ix0 : 0, kx1 = imin(KW, j->W - ix0);
        if (kx1 < kx0) kx1 = kx0;
        for (int64_t ky = 0; ky < j->KH; ky++) {
            float *d = dst + ky * KW * Ci;
            int64_t iy = oy * j->stride - j->pad + ky;
            if (iy < 0 || iy >= j->H || kx0 >= KW) {
                memset(d, 0, (size_t)(KW * Ci) * sizeof(float));
                continue;
            }
            const float *s = j->x + ((n * j->H + iy) * j->W + ix0 + kx0) * Ci;
            if (kx0 > 0) memset(d, 0, (size_t)(kx0 * Ci) * sizeof(float));
            memcpy(d + kx0 * Ci, s, (size_t)((kx1 - kx0) * Ci) * sizeof(float));
            if (kx1 < KW) memset(d + kx1 * Ci, 0, (size_t)((KW - kx1) * Ci) * sizeof(float));
        }
    }
}

static void conv_gemm(const conv_job *j, const float *col, int64_t p0, int64_t m) {
    gemm_job g = {(int)m, (int)j->Co, (int)j->K,         col,        (int)j->K, j->w, (int)j->K, 1,
                  1.0f,   0.0f,       j->y + p0 * j->Co, (int)j->Co, j->b,      0,    0,         0};
    gemm_block(&g, 0, (int)m, 0, (int)j->Co);
}

static void conv_tile_task(void *ctx, int task, int thread) {
    const conv_job *j = ctx;
    int64_t p0 = task * j->tile, p1 = imin(j->P, p0 + j->tile);
    float *col = j->scratch[thread];
    im2col(j, p0, p1, col);
    conv_gemm(j, col, p0, p1 - p0);
}

static void im2col_range(void *arg, int64_t lo, int64_t hi, int thread) {
    (void)thread;
    const conv_job *j = arg;
    im2col(j, lo, hi, j->col + lo * j->K);
}

/* The dims of a checked conv2d (backend.c has checked the contract). */
static easel_err conv_dims(const tensor *y, const tensor *x, const tensor *w, int stride, int pad,
                           conv_job *j) {
    j->N = x->ne[0], j->H = x->ne[1], j->W = x->ne[2], j->Ci = x->ne[3];
    j->Co = w->ne[0], j->KH = w->ne[1], j->KW = w->ne[2];
    j->stride = stride, j->pad = pad;
    j->Ho = y->ne[1], j->Wo = y->ne[2];
    j->P = j->N * j->Ho * j->Wo;
    j->K = j->KH * j->KW * j->Ci;
    if (!fits_int(j->P) || !fits_int(j->K) || !fits_int(j->Co))
        return easel_seterr(EASEL_EINVAL, "conv2d: dims too large for BLAS");
    return EASEL_OK;
}

static easel_err gm_run(cpu_ctx *c, const conv_job *j);

/* conv2d with bf16 weights (K = 0 when Ci = 0: y = b): x converted, then
 * slices of (image, band of output rows), each a oneDNN convolution of its
 * input rows with the padding that falls in it. Bands are first, middle or
 * last (they differ in padding), so at most three primitives per conv. */
#define BC_MAX_BANDS 64

typedef struct {
    cpu_dnnl *dn;
    const conv_job *c;
    const uint16_t *x;
    int64_t bands, rows; /* bands per image, output rows per band */
    const cpu_dnnl_prim *p[BC_MAX_BANDS];
    const void *wk[BC_MAX_BANDS]; /* the weights each band's kernel reads */
    int64_t ih0[BC_MAX_BANDS];    /* each band's first input row */
    bf_fail fail;
} bc_job;

/* Band b's input rows and padding (its output rows [b·rows, ...)). */
static cpu_dnnl_conv_shape bc_shape(const bc_job *j, int64_t b, int64_t *ih0) {
    const conv_job *c = j->c;
    int64_t oh0 = b * j->rows, oh1 = imin(c->Ho, oh0 + j->rows);
    int64_t a = oh0 * c->stride - c->pad, e = (oh1 - 1) * c->stride - c->pad + c->KH;
    int64_t i0 = imax(0, a), i1 = imin(c->H, e);
    *ih0 = i0;
    return (cpu_dnnl_conv_shape){.H = i1 - i0,
                                 .W = c->W,
                                 .Ci = c->Ci,
                                 .Co = c->Co,
                                 .KH = c->KH,
                                 .KW = c->KW,
                                 .stride = c->stride,
                                 .pt = i0 - a,
                                 .pb = e - i1,
                                 .pl = c->pad,
                                 .pr = (c->Wo - 1) * c->stride + c->KW - c->W - c->pad,
                                 .has_bias = c->b != NULL};
}

static void bc_task(void *ctx, int task, int thread) {
    bc_job *j = ctx;
    const conv_job *c = j->c;
    int64_t n = task / j->bands, b = task % j->bands;
    float *y = c->y + ((n * c->Ho + b * j->rows) * c->Wo) * c->Co;
    const uint16_t *x = j->x + ((n * c->H + j->ih0[b]) * c->W) * c->Ci;
    easel_err e = cpu_dnnl_conv_exec(j->dn, j->p[b], thread, y, x, j->wk[b], c->b);
    if (e) bf_failed(&j->fail, e);
}

static easel_err bf_conv(cpu_ctx *c, const conv_job *cj) {
    if (cj->K == 0) return bf_linear(c, cj->y, NULL, NULL, cj->b, cj->P, cj->Co, 0);
    bc_job j = {.dn = c->dnnl, .c = cj};
    uint16_t *xb;
    easel_err e = operand_bf16(c, cj->x, cj->N * cj->H * cj->W * cj->Ci, "conv2d", &xb);
    if (e) return e;
    j.x = xb;
    int64_t slices = bf_slices(c, cj->P * cj->Co * cj->K, cj->N * cj->Ho);
    j.bands = imin(BC_MAX_BANDS, cdiv(slices, cj->N));
    j.rows = cdiv(cj->Ho, j.bands);
    j.bands = cdiv(cj->Ho, j.rows);
    /* the primitives (first, middle and last bands share theirs; the cache keeps
     * the ones just used) and the weights their kernels read */
    for (int64_t b = 0; b < j.bands && !e; b++) {
        cpu_dnnl_conv_shape s = bc_shape(&j, b, &j.ih0[b]);
        cpu_dnnl_prim *p;
        if ((e = cpu_dnnl_conv_get(c->dnnl, &s, &p))) break;
        j.p[b] = p;
        j.wk[b] = NULL;
        for (int64_t o = 0; o < b && !j.wk[b]; o++)
            if (j.p[o] == p) j.wk[b] = j.wk[o];
        if (!j.wk[b]) e = cpu_dnnl_conv_weights(c->dnnl, p, (const uint16_t *)cj->w, &j.wk[b]);
    }
    if (e) return easel_wraperr(e, "conv2d");
    cpu_run(c, (int)(cj->N * j.bands), bc_task, &j);
    return bf_result(&j.fail, "conv2d");
}

static easel_err cpu_conv2d(backend *be, tensor *y, const tensor *x, const tensor *w,
                            const tensor *b, int stride, int pad) {
    static const char *OP = "conv2d";
    conv_job j = {.x = x->data, .w = w->data, .b = b ? b->data : NULL, .y = y->data};
    easel_err e = conv_dims(y, x, w, stride, pad, &j);
    if (e || j.P == 0 || j.Co == 0) return e;
    cpu_ctx *c = ctx_of(be);
    if (w->dt == DT_BF16) return bf_conv(c, &j);
    if (gm_usable(c, j.P, j.Co)) return gm_run(c, &j);
    int T = c->blas_mode ? 1 : c->nthreads;
    if (j.KH == 1 && j.KW == 1 && stride == 1 && pad == 0) { /* a plain GEMM over pixels */
        gemm_job g = {(int)j.P, (int)j.Co, (int)j.K, j.x,       (int)j.K, j.w, (int)j.K, 1,
                      1.0f,     0.0f,      j.y,      (int)j.Co, j.b,      0,   0,        0};
        gemm_par(c, &g, T);
        return EASEL_OK;
    }
    size_t row = (size_t)j.K * sizeof(float);
    if (T > 1 && j.P <= 2 * (int64_t)c->conv_tile_px * T && (size_t)j.P * row <= SCRATCH_CAP) {
        /* small output: one shared im2col, the GEMM split over Co */
        if ((e = grow(&c->shared, &c->shared_n, (size_t)j.P * row, OP))) return e;
        j.col = c->shared;
        par_for(c, j.P, 16, im2col_range, &j);
        gemm_job g = {(int)j.P, (int)j.Co, (int)j.K, j.col,     (int)j.K, j.w, (int)j.K, 1,
                      1.0f,     0.0f,      j.y,      (int)j.Co, j.b,      0,   0,        0};
        gemm_par(c, &g, T);
        return EASEL_OK;
    }
    int64_t tile = imin(c->conv_tile_px, (int64_t)(SCRATCH_CAP / row));
    tile = imin(tile, cdiv(j.P, T));
    if (tile > 16) tile &= ~(int64_t)15;
    if (tile < 1) tile = 1;
    j.tile = tile;
    if ((e = thread_scratch(c, (size_t)tile * row, OP))) return e;
    j.scratch = c->scratch;
    run_gemm_tasks(c, (int)cdiv(j.P, tile), conv_tile_task, &j);
    return EASEL_OK;
}

/* ----------------------------------------------- GEMM, AVX-512 kernels */

/* Where the CPU has AVX-512 (FA_HAVE builds, not blas_mode), linear and conv2d
 * with M >= GM_MIN_M rows and N >= GM_MIN_N outputs use our own GEMM instead of
 * OpenBLAS: the OpenBLAS here is pinned to its AVX2 kernels
 * (OPENBLAS_CORETYPE=Haswell, see ANCHORS.md), half the width of the machine.
 * BLIS-style: W [N,K] is packed once per call into panels [K][GM_NR]; each task
 * owns a block of rows (and, when rows are few, of columns; then it packs its
 * slices of W itself, in cache) and runs a GM_MR x GM_NR register tile (24 zmm
 * accumulators) over GM_KC-long slices of A's rows: x itself for a linear or
 * 1x1 conv, else the im2col rows, gathered straight from x into a row-major
 * block. Accumulation is fp32 FMA in k order. The tile sizes here and
 * FA_MV/FA_PV below may be set with -D for experiments; 6x64, 8x48 and 14x32
 * tiles and 8-row O tiles measured no better, within the machine's noise. */
#ifdef FA_HAVE
#ifndef GM_MR
#define GM_MR 12
#define GM_NR 32
#define GM_KC 256 /* a W micro-panel (GM_KC x GM_NR) stays in L1 */
#define GM_MC 192 /* an A block (GM_MC x GM_KC) stays in L2 */
#endif
#define GM_NV (GM_NR / 16)
#define GM_MIN_M 32
#define GM_MIN_N 16
#define GM_GLOBAL_PACK 2 /* row blocks from which W is packed once up front */
#define GM_ONE_BLOCK 768 /* up to this many rows: one row block */

typedef struct {
    const conv_job *a; /* A = the im2col matrix of a (a linear is a 1x1 conv) */
    const float *wp;   /* W packed: [cdiv(N, GM_NR)][K][GM_NR], zero-padded */
    const float *w;
    float *y;
    const float *bias;
    int64_t M, N, K, mc, nc, nmb;
    int linear;     /* A is x as it is ([M,K] rows): no im2col */
    void **scratch; /* per thread: the A block */
} gm_job;

/* Row p of A, columns [k0, k0 + kc), into dst (zeros past the last row):
 * one copy per kernel window, which NHWC makes contiguous. */
static void gm_pack_row(const conv_job *j, int64_t p, int64_t k0, int64_t kc, float *dst) {
    if (p >= j->P) {
        memset(dst, 0, (size_t)kc * sizeof(float));
        return;
    }
    int64_t hw = j->Ho * j->Wo, n = p / hw, oy = (p % hw) / j->Wo, ox = p % j->Wo, Ci = j->Ci;
    for (int64_t k = k0, end = k0 + kc; k < end;) {
        int64_t win = k / Ci, ci = k % Ci, seg = imin(Ci - ci, end - k);
        int64_t iy = oy * j->stride - j->pad + win / j->KW,
                ix = ox * j->stride - j->pad + win % j->KW;
        if (iy < 0 || iy >= j->H || ix < 0 || ix >= j->W)
            memset(dst + (k - k0), 0, (size_t)seg * sizeof(float));
        else
            memcpy(dst + (k - k0), j->x + ((n * j->H + iy) * j->W + ix) * Ci + ci,
                   (size_t)seg * sizeof(float));
        k += seg;
    }
}

/* W rows [n0, n0 + GM_NR), columns [k0, k0 + kc) into dst as [kc][GM_NR]
 * (zero rows past N). By slices of GM_KC columns: each row's slice is read
 * sequentially, the slice's destination (GM_KC x GM_NR) stays in L1. */
static void gm_pack_w(const gm_job *g, int64_t n0, int64_t k0, int64_t kc, float *dst) {
    int64_t live = imin(GM_NR, g->N - n0);
    for (int64_t s0 = 0; s0 < kc; s0 += GM_KC) {
        int64_t sn = imin(GM_KC, kc - s0);
        float *d = dst + s0 * GM_NR;
        for (int64_t c = 0; c < GM_NR; c++) {
            const float *src = g->w + (n0 + c) * g->K + k0 + s0;
            if (c < live)
                for (int64_t k = 0; k < sn; k++)
                    d[k * GM_NR + c] = src[k];
            else
                for (int64_t k = 0; k < sn; k++)
                    d[k * GM_NR + c] = 0.0f;
        }
    }
}

static void gm_pack_w_task(void *ctx, int task, int thread) {
    (void)thread;
    const gm_job *g = ctx;
    gm_pack_w(g, (int64_t)task * GM_NR, 0, g->K, (float *)g->wp + (int64_t)task * g->K * GM_NR);
}

/* c[GM_MR][GM_NR] (row stride ldc) = (acc ? c : 0) + a[GM_MR][kc] (row stride
 * lda) · b[kc][GM_NR]. A is read in place: GM_MR sequential broadcast streams. */
FA_TARGET static void gm_kernel(int64_t kc, const float *a, int64_t lda, const float *b, float *c,
                                int64_t ldc, int acc) {
    __m512 t[GM_MR][GM_NV];
    for (int r = 0; r < GM_MR; r++)
        for (int v = 0; v < GM_NV; v++)
            t[r][v] = acc ? _mm512_loadu_ps(c + r * ldc + 16 * v) : _mm512_setzero_ps();
    for (int64_t k = 0; k < kc; k++) {
        __m512 bv[GM_NV];
        for (int v = 0; v < GM_NV; v++)
            bv[v] = _mm512_loadu_ps(b + k * GM_NR + 16 * v);
        for (int r = 0; r < GM_MR; r++) {
            __m512 av = _mm512_set1_ps(a[r * lda + k]);
            for (int v = 0; v < GM_NV; v++)
                t[r][v] = _mm512_fmadd_ps(av, bv[v], t[r][v]);
        }
    }
    for (int r = 0; r < GM_MR; r++)
        for (int v = 0; v < GM_NV; v++)
            _mm512_storeu_ps(c + r * ldc + 16 * v, t[r][v]);
}

/* One register tile of C at (m, n) with mr x nr valid; edges go through a
 * local full tile. */
static void gm_tile(const gm_job *g, const float *a, int64_t lda, const float *b, int64_t kc,
                    int64_t m, int64_t n, int64_t mr, int64_t nr, int acc) {
    float *c = g->y + m * g->N + n;
    if (mr == GM_MR && nr == GM_NR) {
        gm_kernel(kc, a, lda, b, c, g->N, acc);
        return;
    }
    float t[GM_MR * GM_NR];
    for (int64_t r = 0; r < GM_MR; r++)
        for (int64_t q = 0; q < GM_NR; q++)
            t[r * GM_NR + q] = acc && r < mr && q < nr ? c[r * g->N + q] : 0.0f;
    gm_kernel(kc, a, lda, b, t, GM_NR, 1);
    for (int64_t r = 0; r < mr; r++)
        memcpy(c + r * g->N, t + r * GM_NR, (size_t)nr * sizeof(float));
}

static void gm_task(void *ctx, int task, int thread) {
    const gm_job *g = ctx;
    int64_t m0 = (task % g->nmb) * g->mc, n0 = (task / g->nmb) * g->nc;
    int64_t m1 = imin(g->M, m0 + g->mc), n1 = imin(g->N, n0 + g->nc);
    float *ap = g->scratch[thread], *bp = ap + g->mc * GM_KC;
    for (int64_t k0 = 0; k0 < g->K; k0 += GM_KC) {
        int64_t kc = imin(GM_KC, g->K - k0);
        /* A rows in place when A is x itself (a linear), except a last partial panel */
        int64_t direct = g->linear ? (m1 / GM_MR) * GM_MR : m0;
        for (int64_t i = imax(m0, direct); i < m1; i += GM_MR)
            for (int r = 0; r < GM_MR; r++)
                gm_pack_row(g->a, i + r, k0, kc, ap + (i - m0 + r) * kc);
        if (!g->wp) /* few row blocks: this slice of W, packed here, in cache */
            for (int64_t n = n0; n < n1; n += GM_NR)
                gm_pack_w(g, n, k0, kc, bp + (n - n0) * kc);
        for (int64_t n = n0; n < n1; n += GM_NR) {
            const float *b =
                g->wp ? g->wp + (n / GM_NR) * g->K * GM_NR + k0 * GM_NR : bp + (n - n0) * kc;
            for (int64_t i = m0; i < m1; i += GM_MR) {
                int in_x = i < direct;
                const float *a = in_x ? g->a->x + i * g->K + k0 : ap + (i - m0) * kc;
                gm_tile(g, a, in_x ? g->K : kc, b, kc, i, n, imin(GM_MR, m1 - i),
                        imin(GM_NR, n1 - n), k0 > 0);
            }
        }
    }
    if (g->bias)
        add_bias(g->y + m0 * g->N + n0, (int)g->N, (int)(m1 - m0), (int)(n1 - n0), g->bias + n0);
}

static int gm_usable(const cpu_ctx *c, int64_t M, int64_t N) {
    return c->own_gemm && !c->blas_mode && M >= GM_MIN_M && N >= GM_MIN_N;
}

/* y[P,Co] = im2col(j)[P,K] · w[Co,K]^T + b, for a checked conv_job. Row blocks
 * of GM_MC; when they are fewer than 2 per thread, column blocks too. */
static easel_err gm_run(cpu_ctx *c, const conv_job *j) {
    gm_job g = {.a = j, .w = j->w, .y = j->y, .bias = j->b, .M = j->P, .N = j->Co, .K = j->K};
    g.linear = j->KH == 1 && j->KW == 1 && j->stride == 1 && j->pad == 0;
    int64_t panels = cdiv(g.N, GM_NR), T = c->nthreads;
    g.mc = cdiv(g.M, GM_MR) * GM_MR; /* few rows: one block, W packed once, in slices */
    if (g.mc > GM_ONE_BLOCK) g.mc = GM_MC;
    g.nmb = cdiv(g.M, g.mc);
    int64_t nsplit = g.nmb >= 2 * T ? 1 : imin(panels, cdiv(2 * T, g.nmb));
    g.nc = cdiv(panels, nsplit) * GM_NR;
    int64_t tasks = g.nmb * cdiv(g.N, g.nc);
    if (tasks > INT_MAX || panels > INT_MAX)
        return easel_seterr(EASEL_EINVAL, "gemm: too many blocks");
    /* W packed once for all row blocks, or per task and K slice when there
     * are few (then each slice of W is still packed only nmb times) */
    int global = g.nmb >= GM_GLOBAL_PACK;
    easel_err e = EASEL_OK;
    if (global)
        e = grow(&c->wpack, &c->wpack_n, (size_t)(panels * GM_NR * g.K) * sizeof(float), "gemm");
    if (!e)
        e = thread_scratch(c, (size_t)((g.mc + (global ? 0 : g.nc)) * GM_KC) * sizeof(float),
                           "gemm");
    if (e) return e;
    g.wp = global ? c->wpack : NULL;
    g.scratch = c->scratch;
    if (global) cpu_run(c, (int)panels, gm_pack_w_task, &g);
    cpu_run(c, (int)tasks, gm_task, &g);
    return EASEL_OK;
}
#else
static int gm_usable(const cpu_ctx *c, int64_t M, int64_t N) {
    (void)c, (void)M, (void)N;
    return 0;
}
static easel_err gm_run(cpu_ctx *c, const conv_job *j) {
    (void)c, (void)j;
    return easel_seterr(EASEL_EINTERNAL, "gemm: no AVX-512 kernels in this build");
}
#endif

/* A linear is a 1x1 conv over M "pixels" of K channels. */
static easel_err gm_linear(cpu_ctx *c, float *y, const float *x, const float *w, const float *b,
                           int64_t M, int64_t N, int64_t K) {
    conv_job j = {.x = x,
                  .w = w,
                  .b = b,
                  .y = y,
                  .N = 1,
                  .H = M,
                  .W = 1,
                  .Ci = K,
                  .Co = N,
                  .KH = 1,
                  .KW = 1,
                  .Ho = M,
                  .Wo = 1,
                  .P = M,
                  .K = K,
                  .stride = 1};
    return gm_run(c, &j);
}

/* ------------------------------------------------------------ attention */

typedef struct {
    const float *q, *k, *v;
    float *o;
    int64_t B, Lq, Lk, H, D, tq, ntiles;
    int causal;
    float scale;
    void **scratch;
} attn_job;

/* One (batch, head, query tile): S = scale·Q·K^T, row softmax, O = S·V, with
 * strided access (ld = H·D) so nothing is transposed or copied. */
static void attn_task(void *ctx, int task, int thread) {
    const attn_job *j = ctx;
    int64_t tile = task % j->ntiles, h = (task / j->ntiles) % j->H, b = task / (j->ntiles * j->H);
    int64_t q0 = tile * j->tq, m = imin(j->tq, j->Lq - q0), ld = j->H * j->D;
    int64_t kn = j->causal ? imin(j->Lk, q0 + m) : j->Lk;
    const float *Q = j->q + (b * j->Lq + q0) * ld + h * j->D;
    const float *K = j->k + b * j->Lk * ld + h * j->D;
    const float *V = j->v + b * j->Lk * ld + h * j->D;
    float *O = j->o + (b * j->Lq + q0) * ld + h * j->D;
    float *S = j->scratch[thread];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)kn, (int)j->D, j->scale, Q,
                (int)ld, K, (int)ld, 0.0f, S, (int)kn);
    for (int64_t i = 0; i < m; i++) {
        float *row = S + i * kn;
        int64_t valid = j->causal ? imin(kn, q0 + i + 1) : kn;
        softmax_row(row, valid);
        for (int64_t t = valid; t < kn; t++)
            row[t] = 0.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)j->D, (int)kn, 1.0f, S,
                (int)kn, V, (int)ld, 0.0f, O, (int)ld);
}

/* ------------------------------------------- attention, AVX-512 kernels */

/* Where the CPU has AVX-512 (and not in blas_mode), non-causal attention with
 * Lk >= FA_MIN_LK skips OpenBLAS: with D = 40..160 the per-tile sgemm calls are
 * thin and OpenBLAS re-packs K and V for every query tile (35-55% of sgemm's
 * rate measured). Instead K and V are packed once per (batch, head) into
 * register-tile layouts, and each task computes one query tile with two
 * micro-kernels: S = Q·K^T (FA_MR rows x FA_NR keys in 16 zmm accumulators),
 * exact row softmax in an L2-sized score tile, then O = P·V (FA_MV rows x up
 * to 64 columns). Same arithmetic as the sgemm path (fp32, max-subtracted
 * softmax), so results agree to rounding. EASEL_CPU_AVX512=0 turns it off. */
#ifdef FA_HAVE
#define FA_MR 8  /* query rows per S micro-tile */
#define FA_NR 32 /* keys per S micro-tile = keys per K panel */
#ifndef FA_MV
#define FA_MV 4 /* query rows per O micro-tile */
#define FA_PV 4 /* at most this many 16-column vectors per O micro-tile */
#endif
_Static_assert(FA_MR % FA_MV == 0 && FA_PV <= 4, "O tiles must tile the S tiles' rows");
#define FA_JB 128 /* keys per O pass: the V block stays in L1 */
#ifndef FA_MIN_LK
#define FA_MIN_LK 64
#endif
#define FA_TILE_BYTES ((size_t)512 << 10) /* score tile: stays in L2 */

typedef struct {
    const float *q, *k, *v;
    float *o;
    int64_t B, Lq, Lk, H, D, ld; /* ld = H·D */
    int64_t Lkp, Dp, tq, ntiles; /* keys padded to FA_NR, D to 16 */
    float scale;
    float *kp, *vp; /* per (b,h): K as [Lkp/FA_NR][D][FA_NR], V as [Lkp][Dp] */
    void **scratch; /* per thread: Q tile, scores, O tile */
} fa_job;

/* Packs K and V of one (batch, head), zero-padding keys and columns. */
static void fa_pack_task(void *ctx, int task, int thread) {
    (void)thread;
    const fa_job *j = ctx;
    int64_t b = task / j->H, h = task % j->H, D = j->D;
    float *kp = j->kp + task * j->Lkp * D, *vp = j->vp + task * j->Lkp * j->Dp;
    for (int64_t key = 0; key < j->Lkp; key++) {
        const float *ks = j->k + (b * j->Lk + key) * j->ld + h * D;
        const float *vs = j->v + (b * j->Lk + key) * j->ld + h * D;
        float *kd = kp + (key / FA_NR) * D * FA_NR + key % FA_NR, *vd = vp + key * j->Dp;
        int live = key < j->Lk;
        for (int64_t d = 0; d < D; d++)
            kd[d * FA_NR] = live ? ks[d] : 0.0f;
        for (int64_t d = 0; d < j->Dp; d++)
            vd[d] = live && d < D ? vs[d] : 0.0f;
    }
}

/* s[FA_MR][0..FA_NR) (row stride lds) = q[FA_MR][D] · panel^T, and the
 * running per-row maxima rmax[FA_MR][16] take in the first `valid` keys. */
FA_TARGET static void fa_qk_tile(const float *q, int64_t D, const float *panel, float *s,
                                 int64_t lds, float *rmax, int valid) {
    __m512 acc[FA_MR][2];
    for (int r = 0; r < FA_MR; r++)
        acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int64_t d = 0; d < D; d++) {
        __m512 k0 = _mm512_loadu_ps(panel + d * FA_NR),
               k1 = _mm512_loadu_ps(panel + d * FA_NR + 16);
        for (int r = 0; r < FA_MR; r++) {
            __m512 qv = _mm512_set1_ps(q[r * D + d]);
            acc[r][0] = _mm512_fmadd_ps(qv, k0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(qv, k1, acc[r][1]);
        }
    }
    uint32_t live = valid >= FA_NR ? 0xffffffffu : (1u << valid) - 1;
    __mmask16 m0 = (__mmask16)(live & 0xffff), m1 = (__mmask16)(live >> 16);
    for (int r = 0; r < FA_MR; r++) {
        _mm512_storeu_ps(s + r * lds, acc[r][0]);
        _mm512_storeu_ps(s + r * lds + 16, acc[r][1]);
        __m512 mx = _mm512_loadu_ps(rmax + r * 16);
        mx = _mm512_mask_max_ps(mx, m0, mx, acc[r][0]);
        mx = _mm512_mask_max_ps(mx, m1, mx, acc[r][1]);
        _mm512_storeu_ps(rmax + r * 16, mx);
    }
}

/* e^x as exp_f (same polynomial), 16 lanes; 2^n applied by scalef. */
FA_TARGET static inline __m512 fa_exp(__m512 x) {
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.0f)), _mm512_set1_ps(-87.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

/* x[0..np) = e^(x − mx) for the first n (n <= np, np a multiple of 16), 0
 * after; returns their sum. */
FA_TARGET static float fa_exp_row(float *x, int64_t n, int64_t np, float mx) {
    __m512 m = _mm512_set1_ps(mx), sum = _mm512_setzero_ps();
    for (int64_t i = 0; i < np; i += 16) {
        __mmask16 live = i + 16 <= n ? 0xffff : (i >= n ? 0 : (__mmask16)((1u << (n - i)) - 1));
        __m512 e = _mm512_maskz_mov_ps(live, fa_exp(_mm512_sub_ps(_mm512_loadu_ps(x + i), m)));
        _mm512_storeu_ps(x + i, e);
        sum = _mm512_add_ps(sum, e);
    }
    return _mm512_reduce_add_ps(sum);
}

/* o[FA_MV][16·nv] (row stride ldo) += p[FA_MV][0..n) · v[0..n)[16·nv] (stride ldv).
 * nv is a constant at every call, so each width gets its own register tile. */
FA_TARGET static inline __attribute__((always_inline)) void fa_pv_tile(const float *p, int64_t ldp,
                                                                       int64_t n, const float *v,
                                                                       int64_t ldv, float *o,
                                                                       int64_t ldo, const int nv) {
    __m512 acc[FA_MV][FA_PV];
    for (int r = 0; r < FA_MV; r++)
        for (int c = 0; c < nv; c++)
            acc[r][c] = _mm512_loadu_ps(o + r * ldo + 16 * c);
    for (int64_t t = 0; t < n; t++) {
        __m512 vv[FA_PV];
        for (int c = 0; c < nv; c++)
            vv[c] = _mm512_loadu_ps(v + t * ldv + 16 * c);
        for (int r = 0; r < FA_MV; r++) {
            __m512 pv = _mm512_set1_ps(p[r * ldp + t]);
            for (int c = 0; c < nv; c++)
                acc[r][c] = _mm512_fmadd_ps(pv, vv[c], acc[r][c]);
        }
    }
    for (int r = 0; r < FA_MV; r++)
        for (int c = 0; c < nv; c++)
            _mm512_storeu_ps(o + r * ldo + 16 * c, acc[r][c]);
}

FA_TARGET static void fa_pv(const float *p, int64_t ldp, int64_t n, const float *v, int64_t ldv,
                            float *o, int64_t ldo, int nv) {
    switch (nv) {
    case 1:
        fa_pv_tile(p, ldp, n, v, ldv, o, ldo, 1);
        break;
    case 2:
        fa_pv_tile(p, ldp, n, v, ldv, o, ldo, 2);
        break;
    case 3:
        fa_pv_tile(p, ldp, n, v, ldv, o, ldo, 3);
        break;
    default:
        fa_pv_tile(p, ldp, n, v, ldv, o, ldo, FA_PV);
        break;
    }
}

/* One (batch, head, query tile): scaled Q copied into a zero-padded tile,
 * S for all keys with row maxima, P = e^(S − max) (padding keys 0) and row
 * sums, O = P·V in key blocks, O / sum written out. */
FA_TARGET static void fa_task(void *ctx, int task, int thread) {
    const fa_job *j = ctx;
    int64_t tile = task % j->ntiles, bh = task / j->ntiles, h = bh % j->H, b = bh / j->H;
    int64_t q0 = tile * j->tq, m = imin(j->tq, j->Lq - q0), mp = cdiv(m, FA_MR) * FA_MR;
    int64_t D = j->D, Dp = j->Dp, Lkp = j->Lkp;
    float *qs = j->scratch[thread], *s = qs + j->tq * D, *ot = s + j->tq * Lkp;
    float *rmax = ot + j->tq * Dp, *sum = rmax + j->tq * 16;
    const float *kp = j->kp + bh * Lkp * D, *vp = j->vp + bh * Lkp * Dp;
    for (int64_t i = 0; i < mp; i++) {
        for (int64_t d = 0; d < D; d++)
            qs[i * D + d] = i < m ? j->q[(b * j->Lq + q0 + i) * j->ld + h * D + d] * j->scale : 0;
        for (int c = 0; c < 16; c++)
            rmax[i * 16 + c] = -INFINITY;
    }
    for (int64_t kb = 0; kb < Lkp; kb += FA_NR)
        for (int64_t i = 0; i < mp; i += FA_MR)
            fa_qk_tile(qs + i * D, D, kp + kb * D, s + i * Lkp + kb, Lkp, rmax + i * 16,
                       (int)imin(FA_NR, j->Lk - kb));
    for (int64_t i = 0; i < mp; i++)
        sum[i] = fa_exp_row(s + i * Lkp, j->Lk, Lkp,
                            _mm512_reduce_max_ps(_mm512_loadu_ps(rmax + i * 16)));
    memset(ot, 0, (size_t)(mp * Dp) * sizeof(float));
    for (int64_t t0 = 0; t0 < Lkp; t0 += FA_JB) {
        int64_t n = imin(FA_JB, Lkp - t0);
        for (int64_t i = 0; i < mp; i += FA_MV)
            for (int64_t c = 0; c < Dp; c += 16 * FA_PV)
                fa_pv(s + i * Lkp + t0, Lkp, n, vp + t0 * Dp + c, Dp, ot + i * Dp + c, Dp,
                      (int)imin(FA_PV, (Dp - c) / 16));
    }
    for (int64_t i = 0; i < m; i++) {
        float *dst = j->o + (b * j->Lq + q0 + i) * j->ld + h * D, inv = 1.0f / sum[i];
        for (int64_t d = 0; d < D; d++)
            dst[d] = ot[i * Dp + d] * inv;
    }
}

static int fa_usable(const cpu_ctx *c, int64_t Lk, int causal) {
    return c->avx512 && !c->blas_mode && !causal && Lk >= FA_MIN_LK;
}

/* The AVX-512 path for a checked, non-empty problem (attn_job from cpu_attention). */
static easel_err fa_run(cpu_ctx *c, const attn_job *a) {
    fa_job j = {a->q,
                a->k,
                a->v,
                a->o,
                a->B,
                a->Lq,
                a->Lk,
                a->H,
                a->D,
                a->H * a->D,
                cdiv(a->Lk, FA_NR) * FA_NR,
                cdiv(a->D, 16) * 16,
                0,
                0,
                a->scale,
                NULL,
                NULL,
                NULL};
    int64_t tq = (int64_t)(FA_TILE_BYTES / sizeof(float)) / j.Lkp;
    tq = imin(imax(tq, FA_MR), 256) / FA_MR * FA_MR;
    j.tq = imin(tq, cdiv(j.Lq, FA_MR) * FA_MR);
    j.ntiles = cdiv(j.Lq, j.tq);
    int64_t bh = j.B * j.H, tasks = bh * j.ntiles;
    if (tasks > INT_MAX) return easel_seterr(EASEL_EINVAL, "attention: too many tiles");
    size_t pack = (size_t)(bh * j.Lkp * (j.D + j.Dp)) * sizeof(float);
    easel_err e = grow(&c->shared, &c->shared_n, pack, "attention");
    if (!e)
        e = thread_scratch(c, (size_t)(j.tq * (j.D + j.Lkp + j.Dp + 17)) * sizeof(float),
                           "attention");
    if (e) return e;
    j.kp = c->shared;
    j.vp = j.kp + bh * j.Lkp * j.D;
    j.scratch = c->scratch;
    cpu_run(c, (int)bh, fa_pack_task, &j);
    cpu_run(c, (int)tasks, fa_task, &j);
    return EASEL_OK;
}
#else
static int fa_usable(const cpu_ctx *c, int64_t Lk, int causal) {
    (void)c, (void)Lk, (void)causal;
    return 0;
}
static easel_err fa_run(cpu_ctx *c, const attn_job *a) {
    (void)c, (void)a;
    return easel_seterr(EASEL_EINTERNAL, "attention: no AVX-512 kernels in this build");
}
#endif

/* ------------------------------------------------- attention, bf16 */

/* Non-causal attention on a bf16 backend, flash-style. Per (batch, head), K
 * and V are converted to bf16 and packed once, in blocks of BA_KB keys, into
 * the layout oneDNN's kernel reads (the head width padded with zeros to a
 * multiple of 32 for K and of 64 or 32 for V, the keys to a multiple of 32:
 * the AMX tiles then have no tails, which run far slower). Each task takes a
 * tile of queries in bf16 and walks the key blocks: S = Q·Kᵀ from a one-thread
 * oneDNN matmul (f32, stays in L2), then the online softmax of S/sqrt(D) in
 * f32 (running row max; O and the row sum rescaled when it grows), P rounded
 * to bf16 (the sum is taken over the rounded values, so the weights used sum
 * to 1), and O += P·V from a second matmul. O / sum is written out. */
#define BA_TQ 64  /* queries per task */
#define BA_KB 512 /* keys per block */

typedef struct {
    const attn_job *a;
    int64_t Dk, Dv, Lkp, kb, nkb; /* padded widths and key count, block size, blocks */
    char *kp, *vp;                /* packed K and V: [B·H][nkb] blocks of kbytes / vbytes */
    size_t kbytes, vbytes;
    cpu_dnnl *dn;
    const cpu_dnnl_prim *qk[2], *pv[2], *pk[2], *pvk[2]; /* [0] full block, [1] last block */
    void **scratch;
    easel_err *err; /* per thread: the first failure */
} ba_job;

/* rows [0, rows) of x (row stride ld, width D) as bf16 [rows_p][Dp], zero-padded. */
static void ba_rows_bf16(uint16_t *dst, const float *x, int64_t ld, int64_t rows, int64_t rows_p,
                         int64_t D, int64_t Dp) {
    memset(dst, 0, (size_t)(rows_p * Dp) * 2);
    for (int64_t t = 0; t < rows; t++) {
        bf_job b = {dst + t * Dp, x + t * ld};
        to_bf16_range(&b, 0, D, 0);
    }
}

/* Keys [k0, k0 + n) of block blk (n <= kb; the block is kb or the last one). */
static int64_t ba_block(const ba_job *j, int64_t blk, int64_t *k0, int *last) {
    *k0 = blk * j->kb;
    *last = blk == j->nkb - 1 && j->Lkp % j->kb;
    int64_t n = *last ? j->Lkp % j->kb : j->kb;
    return n;
}

static void ba_pack_task(void *ctx, int task, int thread) {
    const ba_job *j = ctx;
    const attn_job *a = j->a;
    if (j->err[thread]) return;
    int64_t bh = task / j->nkb, blk = task % j->nkb, b = bh / a->H, h = bh % a->H;
    int64_t D = a->D, ld = a->H * a->D, k0;
    int last;
    int64_t n = ba_block(j, blk, &k0, &last), valid = imax(0, imin(n, a->Lk - k0));
    uint16_t *tmp = j->scratch[thread];
    const float *k = a->k + (b * a->Lk + k0) * ld + h * D,
                *v = a->v + (b * a->Lk + k0) * ld + h * D;
    size_t at = (size_t)(bh * j->nkb + blk);
    ba_rows_bf16(tmp, k, ld, valid, n, D, j->Dk);
    easel_err e = cpu_dnnl_mm_pack_b(j->dn, j->pk[last], thread, tmp, j->kp + at * j->kbytes);
    if (!e) {
        ba_rows_bf16(tmp, v, ld, valid, n, D, j->Dv);
        e = cpu_dnnl_mm_pack_b(j->dn, j->pvk[last], thread, tmp, j->vp + at * j->vbytes);
    }
    if (e) j->err[thread] = e;
}

#ifdef FA_HAVE
/* 2^t for t <= 0: degree-4 Taylor polynomial on the fraction (rel err < 5e-5,
 * far below bf16's 4e-3), 2^n by scalef (underflows to 0). */
FA_TARGET static inline __m512 ba_exp2(__m512 t) {
    t = _mm512_max_ps(t, _mm512_set1_ps(-150.0f));
    __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(t, n);
    __m512 p = _mm512_set1_ps(9.6181291e-3f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504109e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022651e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

static inline __mmask16 ba_live(int64_t i, int64_t n) {
    return i + 16 <= n ? 0xffff : (i >= n ? 0 : (__mmask16)((1u << (n - i)) - 1));
}

/* The max of s[0..n) (n >= 1). */
FA_TARGET static float ba_row_max(const float *s, int64_t n) {
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 live = ba_live(i, n);
        mx = _mm512_mask_max_ps(mx, live, mx, _mm512_maskz_loadu_ps(live, s + i));
    }
    return _mm512_reduce_max_ps(mx);
}

/* p[0..np) = bf16(2^(s·c − mc)) over the first n scores (np a multiple of 16;
 * zeros after); returns Σ p over the rounded values. */
FA_TARGET static float ba_exp_row(const float *s, uint16_t *p, int64_t n, int64_t np, float c,
                                  float mc) {
    __m512 vc = _mm512_set1_ps(c), vm = _mm512_set1_ps(mc), sum = _mm512_setzero_ps();
    const __m512i half = _mm512_set1_epi32(0x7fff), one = _mm512_set1_epi32(1);
    for (int64_t i = 0; i < np; i += 16) {
        __mmask16 live = ba_live(i, n);
        __m512 e = ba_exp2(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(live, s + i), vc, vm));
        __m512i u = _mm512_castps_si512(_mm512_maskz_mov_ps(live, e));
        u = _mm512_add_epi32(
            u, _mm512_add_epi32(half, _mm512_and_si512(_mm512_srli_epi32(u, 16), one)));
        u = _mm512_srli_epi32(u, 16);
        _mm256_storeu_si256((__m256i *)(p + i), _mm512_cvtepi32_epi16(u));
        sum = _mm512_add_ps(sum, _mm512_castsi512_ps(_mm512_slli_epi32(u, 16)));
    }
    return _mm512_reduce_add_ps(sum);
}
#else
static float ba_row_max(const float *s, int64_t n) {
    return max_f(s, n);
}

static float ba_exp_row(const float *s, uint16_t *p, int64_t n, int64_t np, float c, float mc) {
    float sum = 0;
    for (int64_t i = 0; i < np; i++) {
        uint16_t h = i < n ? f32_to_bf16(exp2f(s[i] * c - mc)) : 0;
        p[i] = h;
        sum += bf16_to_f32(h);
    }
    return sum;
}
#endif

static void ba_task(void *ctx, int task, int thread) {
    const ba_job *j = ctx;
    const attn_job *a = j->a;
    if (j->err[thread]) return;
    int64_t tile = task % a->ntiles, bh = task / a->ntiles, h = bh % a->H, b = bh / a->H;
    int64_t q0 = tile * a->tq, m = imin(a->tq, a->Lq - q0), D = a->D, tq = a->tq;
    int64_t Dk = j->Dk, Dv = j->Dv, kb = j->kb, ld = a->H * D;
    uint16_t *qs = j->scratch[thread], *p = qs + tq * Dk;
    float *s = (float *)(p + tq * kb), *o = s + tq * kb, *mx = o + tq * Dv, *sum = mx + tq;
    float c = a->scale * 1.44269504088896341f; /* scores to base-2 exponents */
    ba_rows_bf16(qs, a->q + (b * a->Lq + q0) * ld + h * D, ld, m, tq, D, Dk);
    memset(o, 0, (size_t)(tq * Dv) * sizeof(float));
    for (int64_t i = 0; i < tq; i++)
        mx[i] = -INFINITY, sum[i] = 0;
    memset(p, 0, (size_t)(tq * kb) * 2); /* rows >= m stay zero */
    easel_err e = EASEL_OK;
    for (int64_t blk = 0; blk < j->nkb && !e; blk++) {
        int64_t k0;
        int last;
        int64_t n = ba_block(j, blk, &k0, &last), valid = imin(n, a->Lk - k0);
        size_t at = (size_t)(bh * j->nkb + blk);
        e = cpu_dnnl_mm_exec(j->dn, j->qk[last], thread, s, qs,
                             (const uint16_t *)(j->kp + at * j->kbytes), NULL);
        for (int64_t i = 0; !e && i < m; i++) {
            float *si = s + i * n, bm = ba_row_max(si, valid) * c;
            if (bm > mx[i]) { /* the running max grows: rescale what came before */
                float alpha = exp2f(mx[i] - bm);
                for (int64_t d = 0; d < Dv; d++)
                    o[i * Dv + d] *= alpha;
                sum[i] *= alpha;
                mx[i] = bm;
            }
            sum[i] += ba_exp_row(si, p + i * n, valid, n, c, mx[i]);
        }
        if (!e)
            e = cpu_dnnl_mm_exec(j->dn, j->pv[last], thread, o, p,
                                 (const uint16_t *)(j->vp + at * j->vbytes), NULL);
    }
    if (e) {
        j->err[thread] = e;
        return;
    }
    for (int64_t i = 0; i < m; i++) {
        float *dst = a->o + (b * a->Lq + q0 + i) * ld + h * D, inv = 1.0f / sum[i];
        for (int64_t d = 0; d < D; d++)
            dst[d] = o[i * Dv + d] * inv;
    }
}

/* The matmuls of one block size n: S = Q·Kᵀ [tq, n] and O += P·V [tq, Dv]. */
static easel_err ba_prims(cpu_ctx *c, ba_job *j, int64_t n, int slot) {
    int64_t tq = j->a->tq, Dk = j->Dk, Dv = j->Dv;
    cpu_dnnl_prim *qk, *pv;
    easel_err e = cpu_dnnl_mm_get_packed(c->dnnl, tq, n, Dk, Dk, Dk, n, 1, 0, &qk);
    if (!e) e = cpu_dnnl_mm_get_packed(c->dnnl, tq, Dv, n, n, Dv, Dv, 0, 1, &pv);
    if (e) return e;
    j->qk[slot] = j->pk[slot] = qk, j->pv[slot] = j->pvk[slot] = pv;
    return EASEL_OK;
}

/* The bf16 path for a checked, non-empty, non-causal problem. */
static easel_err ba_run(cpu_ctx *c, attn_job *a) {
    int64_t D = a->D, bh = a->B * a->H, Dv = cdiv(D, 32) * 32;
    ba_job j = {.a = a, .dn = c->dnnl, .Dk = cdiv(D, 32) * 32, .Lkp = cdiv(a->Lk, 32) * 32};
    j.Dv = Dv % 64 && Dv > 32 ? Dv + 32 : Dv; /* 64-multiples run faster than 32-multiples */
    j.kb = imin(BA_KB, j.Lkp);
    j.nkb = cdiv(j.Lkp, j.kb);
    a->tq = imin(BA_TQ, cdiv(a->Lq, 16) * 16);
    a->ntiles = cdiv(a->Lq, a->tq);
    if (bh * a->ntiles > INT_MAX || bh * j.nkb > INT_MAX)
        return easel_seterr(EASEL_EINVAL, "attention: too many tiles");
    easel_err e = ba_prims(c, &j, j.kb, 0);
    if (!e && j.Lkp % j.kb) e = ba_prims(c, &j, j.Lkp % j.kb, 1);
    if (e) return easel_wraperr(e, "attention");
    /* every block gets the full block's packed size (the last one is smaller) */
    j.kbytes = cpu_dnnl_mm_packed_bytes(j.qk[0]), j.vbytes = cpu_dnnl_mm_packed_bytes(j.pv[0]);
    size_t task = (size_t)(a->tq * (j.Dk * 2 + j.kb * 2 + j.kb * 4 + j.Dv * 4 + 8));
    size_t pack = (size_t)(j.kb * imax(j.Dk, j.Dv)) * 2;
    size_t kv = (size_t)(bh * j.nkb) * (j.kbytes + j.vbytes);
    if ((e = grow(&c->shared, &c->shared_n, kv + sizeof(easel_err) * (size_t)c->nthreads,
                  "attention")) ||
        (e = thread_scratch(c, task > pack ? task : pack, "attention")))
        return e;
    j.kp = c->shared;
    j.vp = j.kp + (size_t)(bh * j.nkb) * j.kbytes;
    j.err = (easel_err *)(j.kp + kv);
    memset(j.err, 0, sizeof(easel_err) * (size_t)c->nthreads);
    j.scratch = c->scratch;
    cpu_run(c, (int)(bh * j.nkb), ba_pack_task, &j);
    for (int t = 0; t < c->nthreads; t++) /* the message is in the task thread's slot */
        if (j.err[t]) return easel_seterr(j.err[t], "attention: packing K/V for oneDNN failed");
    cpu_run(c, (int)(bh * a->ntiles), ba_task, &j);
    for (int t = 0; t < c->nthreads; t++)
        if (j.err[t]) return easel_seterr(j.err[t], "attention: a oneDNN matmul failed");
    return EASEL_OK;
}

static easel_err cpu_attention(backend *be, tensor *o, const tensor *q, const tensor *k,
                               const tensor *v, int heads, int causal) {
    static const char *OP = "attention";
    attn_job j = {q->data, k->data,          v->data, o->data, q->ne[0],    q->ne[1], k->ne[1],
                  heads,   q->ne[2] / heads, 0,       0,       causal != 0, 0,        NULL};
    if (!fits_int(j.Lq) || !fits_int(j.Lk) || !fits_int(q->ne[2]))
        return easel_seterr(EASEL_EINVAL, "attention: dims too large for BLAS");
    if (j.B == 0 || j.Lq == 0 || j.D == 0) return EASEL_OK;
    if (j.Lk == 0) {
        memset(o->data, 0, tensor_nbytes(o));
        return EASEL_OK;
    }
    cpu_ctx *c = ctx_of(be);
    j.scale = 1.0f / sqrtf((float)j.D);
    if (c->dnnl && !j.causal) return ba_run(c, &j);
    if (fa_usable(c, j.Lk, j.causal)) return fa_run(c, &j);
    int64_t tq = imin(c->attn_tile, (int64_t)(ATTN_TILE_BYTES / 4) / j.Lk);
    tq = tq < 16 ? 16 : tq;
    j.tq = imin(tq, j.Lq);
    j.ntiles = cdiv(j.Lq, j.tq);
    j.scale = 1.0f / sqrtf((float)j.D);
    easel_err e = thread_scratch(c, (size_t)(j.tq * j.Lk) * sizeof(float), OP);
    if (e) return e;
    j.scratch = c->scratch;
    int64_t tasks = j.B * j.H * j.ntiles;
    if (tasks > INT_MAX) return easel_seterr(EASEL_EINVAL, "attention: too many tiles");
    run_gemm_tasks(c, (int)tasks, attn_task, &j);
    return EASEL_OK;
}

/* ----------------------------------------------------------- group norm */

#define GN_ROWS 64 /* rows per stats chunk: stays in cache for the second pass */

typedef struct {
    const float *x;
    float *y;
    int64_t N, L, C, G, chunks;     /* chunks per sample */
    double *part;                   /* [N·chunks][2][C]: chunk mean, chunk M2 */
    const float *hi, *lo, *sc, *bt; /* [N][C]: mean = hi + lo, scale, beta */
    int silu;
} gn_job;

/* Per chunk and channel, in double: mean, then M2 around it (the chunk is
 * still in cache), so large offsets do not cancel. */
SIMD_CLONES static void gn_stats_task(void *ctx, int task, int thread) {
    (void)thread;
    const gn_job *j = ctx;
    int64_t n = task / j->chunks, r0 = (task % j->chunks) * GN_ROWS;
    int64_t rows = imin(j->L, r0 + GN_ROWS) - r0, C = j->C;
    const float *x = j->x + (n * j->L + r0) * C;
    double *mean = j->part + (int64_t)task * 2 * C, *m2 = mean + C;
    for (int64_t c = 0; c < C; c++)
        mean[c] = 0, m2[c] = 0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < C; c++)
            mean[c] += x[r * C + c];
    for (int64_t c = 0; c < C; c++)
        mean[c] /= (double)rows;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < C; c++) {
            double d = x[r * C + c] - mean[c];
            m2[c] += d * d;
        }
}

/* Chan et al.'s pairwise combination of the chunk stats, per (sample, group). */
static void gn_combine(const gn_job *j, int64_t n, int64_t g, double *mean_out, double *var_out) {
    int64_t cg = j->C / j->G;
    double cnt = 0, mean = 0, m2 = 0;
    for (int64_t k = 0; k < j->chunks; k++) {
        const double *pm = j->part + (n * j->chunks + k) * 2 * j->C, *pv = pm + j->C;
        double nb = (double)(imin(j->L, (k + 1) * GN_ROWS) - k * GN_ROWS);
        for (int64_t c = g * cg; c < (g + 1) * cg; c++) {
            double tot = cnt + nb, d = pm[c] - mean;
            mean += d * nb / tot;
            m2 += pv[c] + d * d * cnt * nb / tot;
            cnt = tot;
        }
    }
    *mean_out = mean;
    *var_out = cnt > 0 ? m2 / cnt : 0;
}

/* y = ((x − hi) − lo)·scale + beta: x − hi is exact when x is near the mean. */
SIMD_CLONES static void gn_apply_range(void *arg, int64_t lo, int64_t hi, int thread) {
    (void)thread;
    const gn_job *j = arg;
    int64_t C = j->C;
    for (int64_t r = lo; r < hi; r++) {
        int64_t o = (r / j->L) * C;
        const float *x = j->x + r * C, *mh = j->hi + o, *ml = j->lo + o, *sc = j->sc + o;
        const float *bt = j->bt + o;
        float *y = j->y + r * C;
        if (j->silu)
            for (int64_t c = 0; c < C; c++)
                y[c] = silu_f(((x[c] - mh[c]) - ml[c]) * sc[c] + bt[c]);
        else
            for (int64_t c = 0; c < C; c++)
                y[c] = ((x[c] - mh[c]) - ml[c]) * sc[c] + bt[c];
    }
}

static easel_err cpu_group_norm(backend *be, tensor *y, const tensor *x, const tensor *gamma,
                                const tensor *beta, int groups, float eps, int silu) {
    static const char *OP = "group_norm";
    int64_t N = x->ne[0], C = tensor_cols(x);
    gn_job j = {.x = x->data,
                .y = y->data,
                .N = N,
                .L = N ? tensor_rows(x) / N : 0,
                .C = C,
                .G = groups,
                .silu = silu != 0};
    if (N == 0 || C == 0 || j.L == 0) return EASEL_OK;
    j.chunks = cdiv(j.L, GN_ROWS);
    cpu_ctx *c = ctx_of(be);
    size_t part = (size_t)(N * j.chunks * 2 * C), coef = (size_t)(N * C);
    easel_err e =
        grow(&c->shared, &c->shared_n, part * sizeof(double) + 4 * coef * sizeof(float), OP);
    if (e) return e;
    j.part = c->shared;
    float *mh = (float *)(j.part + part), *ml = mh + coef, *sc = ml + coef, *bt = sc + coef;
    cpu_run(c, (int)(N * j.chunks), gn_stats_task, &j);
    const float *ga = gamma->data, *bb = beta->data;
    for (int64_t n = 0; n < N; n++)
        for (int64_t g = 0; g < groups; g++) {
            double mean, var;
            gn_combine(&j, n, g, &mean, &var);
            double rstd = 1.0 / sqrt(var + (double)eps);
            float h = (float)mean, l = (float)(mean - (double)h);
            for (int64_t ch = g * (C / groups); ch < (g + 1) * (C / groups); ch++) {
                int64_t o = n * C + ch;
                mh[o] = h, ml[o] = l, sc[o] = (float)(ga[ch] * rstd), bt[o] = bb[ch];
            }
        }
    j.hi = mh, j.lo = ml, j.sc = sc, j.bt = bt;
    par_for(c, N * j.L, cdiv(8192, C), gn_apply_range, &j);
    return EASEL_OK;
}

/* --------------------------------------------------- layer norm, softmax */

typedef struct {
    const float *x, *g, *b;
    float *y;
    int64_t C;
    float eps;
} rows_job;

/* Stats in double; y = ((x − hi) − lo)·rstd·gamma + beta as in group_norm. */
SIMD_CLONES static void ln_range(void *arg, int64_t lo, int64_t hi, int thread) {
    (void)thread;
    const rows_job *j = arg;
    int64_t C = j->C;
    for (int64_t r = lo; r < hi; r++) {
        const float *x = j->x + r * C;
        float *y = j->y + r * C;
        double mean = sum_d(x, C) / (double)C;
        double var = sumsq_dev_d(x, C, mean) / (double)C;
        float rstd = (float)(1.0 / sqrt(var + (double)j->eps));
        float mh = (float)mean, ml = (float)(mean - (double)mh);
        for (int64_t c = 0; c < C; c++)
            y[c] = ((x[c] - mh) - ml) * rstd * j->g[c] + j->b[c];
    }
}

static easel_err cpu_layer_norm(backend *be, tensor *y, const tensor *x, const tensor *gamma,
                                const tensor *beta, float eps) {
    int64_t C = tensor_cols(x);
    rows_job j = {x->data, gamma->data, beta->data, y->data, C, eps};
    if (C > 0) par_for(ctx_of(be), tensor_rows(x), cdiv(8192, C), ln_range, &j);
    return EASEL_OK;
}

static void softmax_range(void *arg, int64_t lo, int64_t hi, int thread) {
    (void)thread;
    const rows_job *j = arg;
    for (int64_t r = lo; r < hi; r++) {
        if (j->y != j->x) memcpy(j->y + r * j->C, j->x + r * j->C, (size_t)j->C * sizeof(float));
        softmax_row(j->y + r * j->C, j->C);
    }
}

static easel_err cpu_softmax(backend *be, tensor *y, const tensor *x) {
    int64_t C = tensor_cols(x);
    rows_job j = {x->data, NULL, NULL, y->data, C, 0};
    if (C > 0) par_for(ctx_of(be), tensor_rows(x), cdiv(8192, C), softmax_range, &j);
    return EASEL_OK;
}

/* ---------------------------------------------------------- elementwise */

typedef struct {
    const float *x, *z;
    float *y;
    int op;
    float alpha, beta;
    int64_t C; /* geglu: output width */
} ew_job;

SIMD_CLONES static void unary_range(void *arg, int64_t lo, int64_t hi, int thread) {
    (void)thread;
    const ew_job *j = arg;
    const float *x = j->x;
    float *y = j->y;
    if (j->op == UNARY_SILU)
        for (int64_t i = lo; i < hi; i++)
            y[i] = silu_f(x[i]);
    else if (j->op == UNARY_GELU)
        for (int64_t i = lo; i < hi; i++)
            y[i] = gelu_f(x[i]);
    else if (j->op == UNARY_RELU)
        for (int64_t i = lo; i < hi; i++)
            y[i] = relu_f(x[i]);
    else if (j->op == UNARY_TANH)
        for (int64_t i = lo; i < hi; i++)
            y[i] = tanh_f(x[i]);
    else
        for (int64_t i = lo; i < hi; i++)
            y[i] = qgelu_f(x[i]);
}

static easel_err cpu_unary(backend *be, tensor *y, const tensor *x, unary_op op) {
    ew_job j = {x->data, NULL, y->data, op, 0, 0, 0};
    par_for(ctx_of(be), tensor_nelem(x), 1 << 14, unary_range, &j);
    return EASEL_OK;
}

SIMD_CLONES static void geglu_range(void *arg, int64_t lo, int64_t hi, int thread) {
    (void)thread;
    const ew_job *j = arg;
    int64_t C = j->C;
    for (int64_t r = lo; r < hi; r++) {
        const float *a = j->x + r * 2 * C, *g = a + C;
        float *y = j->y + r * C;
        for (int64_t c = 0; c < C; c++)
            y[c] = a[c] * gelu_f(g[c]);
    }
}

static easel_err cpu_geglu(backend *be, tensor *y, const tensor *x) {
    int64_t C2 = tensor_cols(x);
    ew_job j = {x->data, NULL, y->data, 0, 0, 0, C2 / 2};
    if (j.C > 0) par_for(ctx_of(be), tensor_rows(x), cdiv(1 << 14, j.C), geglu_range, &j);
    return EASEL_OK;
}

/* Broadcasting: b's dims right-aligned to a's 4 (padded with 1s); zero
 * strides where b has 1. Rows are a's last dim. */
typedef struct {
    const float *a, *b;
    float *y;
    int op;
    int64_t an[4], bs[4]; /* a's dims, b's strides (0 = broadcast) */
    int flat;             /* same element count: plain elementwise */
} bin_job;

static inline void bin_vec(float *y, const float *a, const float *b, int64_t n, int op) {
    if (op == BINARY_ADD)
        for (int64_t i = 0; i < n; i++)
            y[i] = a[i] + b[i];
    else
        for (int64_t i = 0; i < n; i++)
            y[i] = a[i] * b[i];
}

static inline void bin_scalar(float *y, const float *a, float b, int64_t n, int op) {
    if (op == BINARY_ADD)
        for (int64_t i = 0; i < n; i++)
            y[i] = a[i] + b;
    else
        for (int64_t i = 0; i < n; i++)
            y[i] = a[i] * b;
}

SIMD_CLONES static void binary_range(void *arg, int64_t lo, int64_t hi, int thread) {
    (void)thread;
    const bin_job *j = arg;
    if (j->flat) {
        bin_vec(j->y + lo, j->a + lo, j->b + lo, hi - lo, j->op);
        return;
    }
    int64_t C = j->an[3];
    for (int64_t r = lo; r < hi; r++) {
        int64_t i2 = r % j->an[2], i1 = (r / j->an[2]) % j->an[1], i0 = r / (j->an[2] * j->an[1]);
        const float *b = j->b + i0 * j->bs[0] + i1 * j->bs[1] + i2 * j->bs[2];
        if (j->bs[3])
            bin_vec(j->y + r * C, j->a + r * C, b, C, j->op);
        else
            bin_scalar(j->y + r * C, j->a + r * C, *b, C, j->op);
    }
}

static easel_err cpu_binary(backend *be, tensor *y, const tensor *a, const tensor *b,
                            binary_op op) {
    bin_job j = {a->data, b->data, y->data, op, {1, 1, 1, 1}, {0, 0, 0, 0}, 0};
    int64_t bn[4] = {1, 1, 1, 1};
    for (int i = 0; i < a->ndim; i++)
        j.an[4 - a->ndim + i] = a->ne[i];
    for (int i = 0; i < b->ndim; i++)
        bn[4 - b->ndim + i] = b->ne[i];
    int64_t stride = 1;
    for (int i = 3; i >= 0; i--) {
        j.bs[i] = bn[i] == 1 ? 0 : stride;
        stride *= bn[i];
    }
    cpu_ctx *c = ctx_of(be);
    if (tensor_nelem(b) == tensor_nelem(a)) {
        j.flat = 1;
        par_for(c, tensor_nelem(a), 1 << 14, binary_range, &j);
    } else if (j.an[3] > 0) {
        par_for(c, tensor_nelem(a) / j.an[3], cdiv(1 << 14, j.an[3]), binary_range, &j);
    }
    return EASEL_OK;
}

SIMD_CLONES static void axpby_range(void *arg, int64_t lo, int64_t hi, int thread) {
    (void)thread;
    const ew_job *j = arg;
    float al = j->alpha, bt = j->beta;
    for (int64_t i = lo; i < hi; i++)
        j->y[i] = al * j->x[i] + bt * j->z[i];
}

static easel_err cpu_axpby(backend *be, tensor *y, float alpha, const tensor *x, float beta,
                           const tensor *z) {
    ew_job j = {x->data, z->data, y->data, 0, alpha, beta, 0};
    par_for(ctx_of(be), tensor_nelem(x), 1 << 14, axpby_range, &j);
    return EASEL_OK;
}

/* ------------------------------------------------- layout: up, concat, ... */

typedef struct {
    const float *a, *b;
    float *y;
    int64_t H, W, C, Cb;
} lay_job;

/* Rows are input rows (n, iy): build output row 2·iy, then copy it to 2·iy+1. */
static void up_range(void *arg, int64_t lo, int64_t hi, int thread) {
    (void)thread;
    const lay_job *j = arg;
    int64_t W = j->W, C = j->C;
    for (int64_t r = lo; r < hi; r++) {
        const float *x = j->a + r * W * C;
        float *y0 = j->y + r * 4 * W * C, *y1 = y0 + 2 * W * C;
        for (int64_t ix = 0; ix < W; ix++) {
            memcpy(y0 + 2 * ix * C, x + ix * C, (size_t)C * sizeof(float));
            memcpy(y0 + (2 * ix + 1) * C, x + ix * C, (size_t)C * sizeof(float));
        }
        memcpy(y1, y0, (size_t)(2 * W * C) * sizeof(float));
    }
}

static easel_err cpu_upsample2x(backend *be, tensor *y, const tensor *x) {
    lay_job j = {x->data, NULL, y->data, x->ne[1], x->ne[2], x->ne[3], 0};
    int64_t rows = x->ne[0] * x->ne[1];
    if (j.W * j.C > 0) par_for(ctx_of(be), rows, cdiv(1 << 14, j.W * j.C), up_range, &j);
    return EASEL_OK;
}

static void concat_range(void *arg, int64_t lo, int64_t hi, int thread) {
    (void)thread;
    const lay_job *j = arg;
    int64_t Ca = j->C, Cb = j->Cb;
    for (int64_t r = lo; r < hi; r++) {
        float *y = j->y + r * (Ca + Cb);
        memcpy(y, j->a + r * Ca, (size_t)Ca * sizeof(float));
        memcpy(y + Ca, j->b + r * Cb, (size_t)Cb * sizeof(float));
    }
}

static easel_err cpu_concat(backend *be, tensor *y, const tensor *a, const tensor *b) {
    lay_job j = {a->data, b->data, y->data, 0, 0, tensor_cols(a), tensor_cols(b)};
    int64_t width = j.C + j.Cb;
    if (width > 0) par_for(ctx_of(be), tensor_rows(a), cdiv(1 << 14, width), concat_range, &j);
    return EASEL_OK;
}

typedef struct {
    const float *x;
    float *y;
    int64_t H, W, Hy, Wy, C, top, left;
} pad_job;

/* Rows are output rows (n, oy): zeros, then the input row at column left. */
static void pad_range(void *arg, int64_t lo, int64_t hi, int thread) {
    (void)thread;
    const pad_job *j = arg;
    for (int64_t r = lo; r < hi; r++) {
        int64_t n = r / j->Hy, oy = r % j->Hy, iy = oy - j->top;
        float *y = j->y + r * j->Wy * j->C;
        memset(y, 0, (size_t)(j->Wy * j->C) * sizeof(float));
        if (iy >= 0 && iy < j->H)
            memcpy(y + j->left * j->C, j->x + (n * j->H + iy) * j->W * j->C,
                   (size_t)(j->W * j->C) * sizeof(float));
    }
}

static easel_err cpu_pad2d(backend *be, tensor *y, const tensor *x, int top, int left) {
    pad_job j = {x->data, y->data, x->ne[1], x->ne[2], y->ne[1], y->ne[2], y->ne[3], top, left};
    int64_t rows = y->ne[0] * y->ne[1];
    if (j.Wy * j.C > 0) par_for(ctx_of(be), rows, cdiv(1 << 14, j.Wy * j.C), pad_range, &j);
    return EASEL_OK;
}

/* Computed in f32 in diffusers' order (exponent, exp, t·freq in f32), then
 * sin/cos of that f32 argument, so results match get_timestep_embedding. */
static easel_err cpu_timestep_embedding(backend *be, tensor *y, const float *t, int flip_sin_to_cos,
                                        float downscale_freq_shift, float max_period) {
    (void)be;
    int64_t N = y->ne[0], dim = y->ne[1], half = dim / 2;
    float *out = y->data;
    float lnp = (float)(-log((double)max_period));
    float den = (float)((double)half - (double)downscale_freq_shift);
    for (int64_t n = 0; n < N; n++) {
        float *row = out + n * dim;
        for (int64_t i = 0; i < half; i++) {
            float arg = t[n] * expf(lnp * (float)i / den);
            float s = (float)sin((double)arg), c = (float)cos((double)arg);
            row[i] = flip_sin_to_cos ? c : s;
            row[half + i] = flip_sin_to_cos ? s : c;
        }
        if (dim % 2) row[dim - 1] = 0.0f;
    }
    return EASEL_OK;
}

static easel_err cpu_gather_rows(backend *be, tensor *y, const tensor *table, const int32_t *ids,
                                 int64_t n) {
    (void)be;
    int64_t C = tensor_cols(table);
    float *out = y->data;
    if (table->dt == DT_BF16) { /* a weight table of a bf16 backend */
        const uint16_t *tb = table->data;
        for (int64_t i = 0; i < n; i++)
            for (int64_t c = 0; c < C; c++)
                out[i * C + c] = bf16_to_f32(tb[(int64_t)ids[i] * C + c]);
        return EASEL_OK;
    }
    const float *tb = table->data;
    for (int64_t i = 0; i < n; i++)
        memcpy(out + i * C, tb + (int64_t)ids[i] * C, (size_t)C * sizeof(float));
    return EASEL_OK;
}

/* ------------------------------------------------------------ lifecycle */

static void cpu_destroy(backend *be) {
    if (!be) return;
    cpu_ctx *c = be->ctx;
    if (c) {
        threadpool_free(c->pool);
        for (int t = 0; c->scratch && t < c->nthreads; t++)
            free(c->scratch[t]);
        free(c->scratch);
        free(c->scratch_n);
        free(c->shared);
        free(c->wpack);
        free(c->xb);
        cpu_dnnl_free(c->dnnl);
        free(c);
    }
    free(be);
}

/* Which of our AVX-512 kernels to use: none without them compiled in, without
 * the CPU support, or with EASEL_CPU_AVX512=0. The attention kernels beat the
 * sgemm path with either OpenBLAS kernel set. The GEMM beats OpenBLAS's AVX2
 * kernels (OPENBLAS_CORETYPE=Haswell) but not its AVX-512 ones (measured at
 * 512²: 64² convs faster, 16²/8² convs and linears slower), so it is used only
 * when OpenBLAS runs without AVX-512, or when EASEL_CPU_AVX512=1. */
static void cpu_pick_kernels(cpu_ctx *c) {
    const char *s = getenv("EASEL_CPU_AVX512");
    c->avx512 = c->own_gemm = 0;
    if (s && !strcmp(s, "0")) return;
#ifdef FA_HAVE
    __builtin_cpu_init();
    c->avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
#endif
    const char *core = openblas_get_corename();
    int blas512 = core && (strcasestr(core, "skylakex") || strcasestr(core, "cooperlake") ||
                           strcasestr(core, "sapphirerapids") || strcasestr(core, "zen4"));
    c->own_gemm = c->avx512 && ((s && !strcmp(s, "1")) || !blas512);
}

static int env_int(const char *name, int dflt) {
    const char *s = getenv(name);
    if (!s || !*s) return dflt;
    char *end;
    long v = strtol(s, &end, 10);
    return (*end || v <= 0 || v > INT_MAX) ? dflt : (int)v;
}

static int default_threads(void) {
    int n = env_int("EASEL_THREADS", 0);
    if (n > 0) return n;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    return cores > 0 ? (int)cores : 1;
}

/* ------------------------------------------------------------ LoRA merge */

/* y = w + scale·up·down (backend.h): w's values as plain f32 in a buffer
 * (download undoes bf16 and the blocked conv layout), one fp32 sgemm with
 * beta 1 partitioned over the pool (C = scale·(up·down) + w, the order
 * diffusers' fuse_lora adds in), then upload rounds once into y's dtype and
 * layout. A merge is a per-job, once-per-LoRA-set cost, so the buffer is a
 * plain malloc of one weight (SD1.5's largest: 26 MB). */
static easel_err cpu_lora_merge(backend *be, tensor *y, const tensor *w, const tensor *up,
                                const tensor *down, float scale) {
    cpu_ctx *c = ctx_of(be);
    int64_t N = up->ne[0], R = up->ne[1], K = down->ne[1];
    if (N > INT_MAX || R > INT_MAX || K > INT_MAX)
        return easel_seterr(EASEL_EUNSUPPORTED, "lora_merge: dims over the BLAS int range");
    float *acc = malloc(sizeof(float) * (size_t)(N * K > 0 ? N * K : 1));
    if (!acc)
        return easel_seterr(EASEL_ENOMEM, "lora_merge: out of memory (%lld values)",
                            (long long)(N * K));
    easel_err e = cpu_download(be, w, acc);
    if (!e) {
        gemm_job g = {.M = (int)N,
                      .N = (int)K,
                      .K = (int)R,
                      .A = up->data,
                      .lda = (int)R,
                      .B = down->data,
                      .ldb = (int)K,
                      .transb = 0,
                      .alpha = scale,
                      .beta = 1.0f,
                      .C = acc,
                      .ldc = (int)K};
        gemm_par(c, &g, c->nthreads);
        e = cpu_upload(be, y, acc);
    }
    free(acc);
    return e;
}

static void fill_ops(backend *be) {
    be->destroy = cpu_destroy;
    be->alloc = cpu_alloc;
    be->free = cpu_free;
    be->upload = cpu_upload;
    be->download = cpu_download;
    be->sync = cpu_sync;
    be->copy = cpu_copy;
    be->linear = cpu_linear;
    be->bmm = cpu_bmm;
    be->conv2d = cpu_conv2d;
    be->group_norm = cpu_group_norm;
    be->layer_norm = cpu_layer_norm;
    be->softmax = cpu_softmax;
    be->attention = cpu_attention;
    be->unary = cpu_unary;
    be->geglu = cpu_geglu;
    be->binary = cpu_binary;
    be->axpby = cpu_axpby;
    be->upsample2x = cpu_upsample2x;
    be->concat = cpu_concat;
    be->timestep_embedding = cpu_timestep_embedding;
    be->gather_rows = cpu_gather_rows;
    be->pad2d = cpu_pad2d;
    be->lora_merge = cpu_lora_merge;
}

easel_err backend_precision_parse(const char *s, backend_precision *out) {
    if (s && !strcmp(s, "auto"))
        *out = PREC_AUTO;
    else if (s && (!strcmp(s, "fp32") || !strcmp(s, "f32")))
        *out = PREC_FP32;
    else if (s && !strcmp(s, "bf16"))
        *out = PREC_BF16;
    else
        return easel_seterr(EASEL_EINVAL, "unknown precision '%s' (want auto, bf16 or fp32)",
                            s ? s : "");
    return EASEL_OK;
}

const char *backend_precision_name(backend_precision p) {
    return p == PREC_FP32 ? "fp32" : p == PREC_BF16 ? "bf16" : "auto";
}

easel_err backend_precision_env(backend_precision *out) {
    const char *s = getenv("EASEL_PRECISION");
    *out = PREC_AUTO;
    if (!s || !*s) return EASEL_OK;
    easel_err e = backend_precision_parse(s, out);
    return e ? easel_wraperr(e, "EASEL_PRECISION") : EASEL_OK;
}

/* The precision a request resolves to here, or an error for bf16 on a CPU
 * without it. auto falls back to fp32 with one log line per process. */
static easel_err resolve_precision(backend_precision want, backend_precision *out) {
    *out = want == PREC_AUTO ? (cpu_dnnl_has_bf16() ? PREC_BF16 : PREC_FP32) : want;
    if (want == PREC_BF16 && !cpu_dnnl_has_bf16())
        return easel_seterr(EASEL_EUNSUPPORTED,
                            "precision bf16: this CPU has neither AMX-BF16 nor AVX512-BF16 "
                            "(oneDNN dispatches on %s); use --precision fp32 or auto",
                            cpu_dnnl_isa());
    static int said; /* one line per process, however many workers ask */
    if (want == PREC_AUTO && *out == PREC_FP32 && !__atomic_exchange_n(&said, 1, __ATOMIC_SEQ_CST))
        log_info("precision auto: fp32 (this CPU has neither AMX-BF16 nor AVX512-BF16; oneDNN "
                 "dispatches on %s)",
                 cpu_dnnl_isa());
    return EASEL_OK;
}

easel_err backend_cpu_check_precision(backend_precision p) {
    backend_precision r;
    return p == PREC_BF16 ? resolve_precision(p, &r) : EASEL_OK;
}

backend *backend_cpu_create(int threads) {
    return backend_cpu_create_prec(threads, PREC_FP32);
}

backend *backend_cpu_create_prec(int threads, backend_precision prec) {
    int n = threads > 0 ? threads : default_threads();
    if (n > CPU_MAX_THREADS) n = CPU_MAX_THREADS;
    backend_precision p;
    if (resolve_precision(prec, &p)) return NULL;
    backend *be = calloc(1, sizeof *be);
    cpu_ctx *c = calloc(1, sizeof *c);
    if (!be || !c) goto oom;
    be->ctx = c;
    c->nthreads = n;
    c->prec = p;
    c->conv_tile_px = env_int("EASEL_CONV_TILE", CONV_TILE_PX);
    c->attn_tile = env_int("EASEL_ATTN_TILE", ATTN_TILE_Q);
    c->blas_mode = p == PREC_FP32 && env_int("EASEL_CPU_BLAS_THREADED", 0) > 0;
    cpu_pick_kernels(c);
    c->scratch = calloc((size_t)n, sizeof *c->scratch);
    c->scratch_n = calloc((size_t)n, sizeof *c->scratch_n);
    if (!c->scratch || !c->scratch_n) goto oom;
    if ((p == PREC_BF16 && !(c->dnnl = cpu_dnnl_create(n))) || !(c->pool = threadpool_create(n))) {
        cpu_destroy(be);
        return NULL;
    }
    be->name = "cpu";
    be->dev = DEV_CPU;
    be->act_dtype = DT_F32;
    be->weight_dtype = p == PREC_BF16 ? DT_BF16 : DT_F32;
    fill_ops(be);
    if (backend_install_checks(be)) {
        cpu_destroy(be);
        return NULL;
    }
    openblas_set_num_threads(c->blas_mode ? n : 1); /* see the header */
    return be;
oom:
    easel_seterr(EASEL_ENOMEM, "backend_cpu_create: out of memory");
    if (be)
        be->ctx = c;
    else
        free(c);
    cpu_destroy(be);
    return NULL;
}

backend_precision backend_cpu_precision(const backend *be) {
    return backend_cpu_threads(be) ? ((const cpu_ctx *)be->ctx)->prec : PREC_AUTO;
}

const char *backend_cpu_describe(backend_precision p, char *buf, size_t len) {
    if (p == PREC_AUTO) p = cpu_dnnl_has_bf16() ? PREC_BF16 : PREC_FP32;
    if (p == PREC_BF16 && cpu_dnnl_has_bf16()) {
        snprintf(buf, len,
                 "bf16: oneDNN %s on %s (bf16 weights and GEMM operands; fp32 "
                 "accumulation, activations, norms, softmax)",
                 cpu_dnnl_version(), cpu_dnnl_isa());
    } else if (p == PREC_BF16) {
        snprintf(buf, len, "bf16: unavailable (oneDNN %s dispatches on %s)", cpu_dnnl_version(),
                 cpu_dnnl_isa());
    } else {
        cpu_ctx probe = {0};
        cpu_pick_kernels(&probe);
        const char *core = openblas_get_corename();
        snprintf(buf, len, "fp32: OpenBLAS (%s kernels)%s", core ? core : "?",
                 probe.own_gemm ? " + own AVX-512 GEMM and attention"
                 : probe.avx512 ? " + own AVX-512 attention"
                                : "");
    }
    return buf;
}

int backend_cpu_threads(const backend *be) {
    return be && be->ctx && be->name && !strcmp(be->name, "cpu") ? ((cpu_ctx *)be->ctx)->nthreads
                                                                 : 0;
}
