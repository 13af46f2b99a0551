/* GEMMs for linear, bmm, im2col convolution and GEMM attention. On the GPU:
 * cuBLASLt — fp16 operands with fp32 compute (fp16 or fp32 output), or fp32
 * operands on TF32 tensor cores with fp32 accumulation — with the bias fused
 * as an epilogue. Row-major problems are handed to the column-major library
 * transposed (y^T = op(b)^T · a^T). Each distinct problem (shapes, leading
 * dims, strides, dtypes, pointer alignment) is planned once per worker —
 * descriptors, layouts and the heuristic's algorithm — and the plan is reused
 * (cuda_host.c's plan cache), so a UNet step builds none after the first.
 * In the emulated build (tests): an fp32 GEMM over the same inputs (fp32
 * inputs rounded to TF32's 10-bit mantissa first), rounding the result to the
 * output type once, as cuBLASLt does, queued on the stream like a kernel. */
#include "common.cuh"

#include <stdlib.h>
#include <string.h>

extern "C" {
#include "cuda_host.h"
}

#define GEMM_PLANS 512

/* The plan key: every input of the heuristic. */
static void gemm_key(plan_key *k, const kern_gemm_args *p, uint32_t al_a, uint32_t al_b,
                     uint32_t al_c) {
    memset(k, 0, sizeof *k);
    int64_t v[] = {p->batch,
                   p->m,
                   p->n,
                   p->k,
                   p->lda,
                   p->ldb,
                   p->ldy,
                   p->sa,
                   p->sb,
                   p->sy,
                   p->trans_b,
                   p->ab_dt,
                   p->y_dt,
                   p->bias != NULL,
                   al_a | (int64_t)al_b << 16,
                   al_c};
    memcpy(k->w, v, sizeof v);
}

static int gemm_check(const kern_gemm_args *p) {
    int ok_dt = (p->ab_dt == KDT_F16 && (p->y_dt == KDT_F16 || p->y_dt == KDT_F32)) ||
                (p->ab_dt == KDT_F32 && p->y_dt == KDT_F32);
    if (!ok_dt || (p->bias && p->y_dt != p->ab_dt)) return (int)cudaErrorInvalidValue;
    if (p->lda < p->k || p->ldy < p->n || p->ldb < (p->trans_b ? p->k : p->n))
        return (int)cudaErrorInvalidValue;
    return 0;
}

#ifdef __CUDACC__
#include <cublasLt.h>

/* Largest power of two ≤ 256 dividing the address and the stride (bytes). */
static uint32_t gemm_align(const void *p, int64_t stride_bytes) {
    uint64_t v = (uint64_t)(uintptr_t)p | (uint64_t)stride_bytes | 256u;
    return (uint32_t)(v & (~v + 1));
}

struct kern_gemm {
    cublasLtHandle_t lt;
    void *ws;
    size_t ws_bytes;
    plan_cache *plans;
    long made;
};

struct gemm_plan {
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
};

static void plan_free(void *pl, void *user) {
    (void)user;
    gemm_plan *d = (gemm_plan *)pl;
    if (d->c) cublasLtMatrixLayoutDestroy(d->c);
    if (d->b) cublasLtMatrixLayoutDestroy(d->b);
    if (d->a) cublasLtMatrixLayoutDestroy(d->a);
    if (d->op) cublasLtMatmulDescDestroy(d->op);
    free(d);
}

kern_gemm *kern_gemm_create(size_t ws_bytes) {
    kern_gemm *g = (kern_gemm *)calloc(1, sizeof *g);
    if (!g) return NULL;
    if (cublasLtCreate(&g->lt) != CUBLAS_STATUS_SUCCESS) {
        free(g);
        return NULL;
    }
    g->plans = plan_cache_create(GEMM_PLANS, plan_free, NULL);
    if (!g->plans || (ws_bytes && cudaMalloc(&g->ws, ws_bytes) != cudaSuccess)) {
        plan_cache_free(g->plans);
        cublasLtDestroy(g->lt);
        free(g);
        return NULL;
    }
    g->ws_bytes = ws_bytes;
    return g;
}

void kern_gemm_destroy(kern_gemm *g) {
    if (!g) return;
    plan_cache_free(g->plans);
    cudaFree(g->ws);
    cublasLtDestroy(g->lt);
    free(g);
}

long kern_gemm_plans_made(const kern_gemm *g) {
    return g->made;
}

static cudaDataType_t lt_type(int dt) {
    return dt == KDT_F32 ? CUDA_R_32F : CUDA_R_16F;
}

static cublasStatus_t layout(cublasLtMatrixLayout_t *l, int dt, uint64_t rows, uint64_t cols,
                             int64_t ld, int32_t batch, int64_t stride) {
    cublasStatus_t st = cublasLtMatrixLayoutCreate(l, lt_type(dt), rows, cols, ld);
    if (st != CUBLAS_STATUS_SUCCESS || batch == 1) return st;
    st = cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch,
                                          sizeof batch);
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    return cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                            &stride, sizeof stride);
}

#define LT_TRY(x)                                                                                  \
    do {                                                                                           \
        cublasStatus_t st_ = (x);                                                                  \
        if (st_ != CUBLAS_STATUS_SUCCESS) {                                                        \
            if (pref) cublasLtMatmulPreferenceDestroy(pref);                                       \
            plan_free(d, NULL);                                                                    \
            return -(int)st_;                                                                      \
        }                                                                                          \
    } while (0)

/* Descriptors and the heuristic's first algorithm for one problem. */
static int plan_make(kern_gemm *g, const kern_gemm_args *p, uint32_t al[3], gemm_plan **out) {
    gemm_plan *d = (gemm_plan *)calloc(1, sizeof *d);
    if (!d) return (int)cudaErrorMemoryAllocation;
    cublasLtMatmulPreference_t pref = NULL;
    int32_t nb = (int32_t)p->batch;
    cublasOperation_t ta = p->trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, tb = CUBLAS_OP_N;
    cublasComputeType_t ct =
        p->ab_dt == KDT_F32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    LT_TRY(cublasLtMatmulDescCreate(&d->op, ct, CUDA_R_32F));
    LT_TRY(cublasLtMatmulDescSetAttribute(d->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    LT_TRY(cublasLtMatmulDescSetAttribute(d->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    if (p->bias) {
        cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        LT_TRY(
            cublasLtMatmulDescSetAttribute(d->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
    }
    /* A = b (library's m = n rows of y^T), B = a, C = D = y^T [n x m]. */
    int ab = p->ab_dt;
    if (p->trans_b)
        LT_TRY(layout(&d->a, ab, (uint64_t)p->k, (uint64_t)p->n, p->ldb, nb, p->sb));
    else
        LT_TRY(layout(&d->a, ab, (uint64_t)p->n, (uint64_t)p->k, p->ldb, nb, p->sb));
    LT_TRY(layout(&d->b, ab, (uint64_t)p->k, (uint64_t)p->m, p->lda, nb, p->sa));
    LT_TRY(layout(&d->c, p->y_dt, (uint64_t)p->n, (uint64_t)p->m, p->ldy, nb, p->sy));
    LT_TRY(cublasLtMatmulPreferenceCreate(&pref));
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                &g->ws_bytes, sizeof g->ws_bytes));
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                &al[1], sizeof al[1]));
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                &al[0], sizeof al[0]));
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                &al[2], sizeof al[2]));
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                &al[2], sizeof al[2]));
    cublasLtMatmulHeuristicResult_t heur;
    int found = 0;
    LT_TRY(cublasLtMatmulAlgoGetHeuristic(g->lt, d->op, d->a, d->b, d->c, d->c, pref, 1, &heur,
                                          &found));
    if (!found) LT_TRY(CUBLAS_STATUS_NOT_SUPPORTED);
    cublasLtMatmulPreferenceDestroy(pref);
    d->algo = heur.algo;
    *out = d;
    return 0;
}

/* Returns 0, a cudaError_t, or -cublasStatus_t. */
int kern_gemm_run(kern_gemm *g, cudaStream_t s, const kern_gemm_args *p) {
    if (p->batch <= 0 || p->m <= 0 || p->n <= 0) return 0;
    int bad = gemm_check(p);
    if (bad) return bad;
    size_t ab = p->ab_dt == KDT_F32 ? 4 : 2, yb = p->y_dt == KDT_F32 ? 4 : 2;
    uint32_t al[3] = {
        gemm_align(p->a, p->sa * (int64_t)ab) & gemm_align(p->a, p->lda * (int64_t)ab),
        gemm_align(p->b, p->sb * (int64_t)ab) & gemm_align(p->b, p->ldb * (int64_t)ab),
        gemm_align(p->y, p->sy * (int64_t)yb) & gemm_align(p->y, p->ldy * (int64_t)yb)};
    plan_key key;
    gemm_key(&key, p, al[0], al[1], al[2]);
    gemm_plan *pl = (gemm_plan *)plan_cache_get(g->plans, &key);
    if (!pl) {
        int rc = plan_make(g, p, al, &pl);
        if (rc) return rc;
        if (plan_cache_put(g->plans, &key, pl)) {
            plan_free(pl, NULL);
            return (int)cudaErrorMemoryAllocation;
        }
        g->made++;
    }
    if (p->bias) {
        cublasStatus_t st = cublasLtMatmulDescSetAttribute(
            pl->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &p->bias, sizeof p->bias);
        if (st != CUBLAS_STATUS_SUCCESS) return -(int)st;
    }
    float beta = 0.0f;
    cublasStatus_t st = cublasLtMatmul(g->lt, pl->op, &p->alpha, p->b, pl->a, p->a, pl->b, &beta,
                                       p->y, pl->c, p->y, pl->c, &pl->algo, g->ws, g->ws_bytes, s);
    return st == CUBLAS_STATUS_SUCCESS ? 0 : -(int)st;
}

#else /* emulated: an fp32 GEMM queued on the stream */

struct kern_gemm {
    plan_cache *plans;
    long made;
};

static void plan_free(void *pl, void *user) {
    (void)user;
    free(pl);
}

kern_gemm *kern_gemm_create(size_t ws_bytes) {
    (void)ws_bytes;
    kern_gemm *g = (kern_gemm *)calloc(1, sizeof(kern_gemm));
    if (!g) return NULL;
    if (!(g->plans = plan_cache_create(GEMM_PLANS, plan_free, NULL))) {
        free(g);
        return NULL;
    }
    return g;
}

void kern_gemm_destroy(kern_gemm *g) {
    if (!g) return;
    plan_cache_free(g->plans);
    free(g);
}

long kern_gemm_plans_made(const kern_gemm *g) {
    return g->made;
}

/* Host code of the emulator, not instrumented (and inlined into gemm_emu). */
#define EMU_HOST_FN __attribute__((no_sanitize_thread)) static inline

/* TF32: fp32 with a 10-bit mantissa (round to nearest even). */
EMU_HOST_FN float tf32(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) == 0x7f800000u) return x;
    u = (u + 0xfffu + ((u >> 13) & 1u)) & ~0x1fffu;
    memcpy(&x, &u, 4);
    return x;
}

EMU_HOST_FN float ld_op(const void *p, int dt, int64_t i) {
    return dt == KDT_F32 ? tf32(((const float *)p)[i]) : __half2float(((const half *)p)[i]);
}

/* Host code of the emulator, not a kernel: not instrumented. */
EMU_NOHOOK static void gemm_emu(kern_gemm_args p) {
    int64_t kk_n = p.k > 0 ? p.k : 1;
    float *bt = (float *)malloc(sizeof(float) * (size_t)((p.n + 1) * kk_n));
    if (!bt) {
        emu_set_sticky_error(cudaErrorMemoryAllocation, "emulated GEMM: out of host memory");
        return;
    }
    float *ar = bt + p.n * kk_n; /* one row of a, converted once */
    for (int64_t z = 0; z < p.batch; z++) {
        for (int64_t j = 0; j < p.n; j++) /* bt[j][kk] = op(b)[kk][j] */
            for (int64_t kk = 0; kk < p.k; kk++)
                bt[j * p.k + kk] =
                    ld_op(p.b, p.ab_dt, z * p.sb + (p.trans_b ? j * p.ldb + kk : kk * p.ldb + j));
        for (int64_t i = 0; i < p.m; i++) {
            for (int64_t kk = 0; kk < p.k; kk++)
                ar[kk] = ld_op(p.a, p.ab_dt, z * p.sa + i * p.lda + kk);
            for (int64_t j = 0; j < p.n; j++) {
                float acc = 0.0f;
                for (int64_t kk = 0; kk < p.k; kk++)
                    acc += ar[kk] * bt[j * p.k + kk];
                acc *= p.alpha;
                if (p.bias)
                    acc += p.ab_dt == KDT_F32 ? ((const float *)p.bias)[j]
                                              : __half2float(((const half *)p.bias)[j]);
                int64_t o = z * p.sy + i * p.ldy + j;
                if (p.y_dt == KDT_F32)
                    ((float *)p.y)[o] = acc;
                else
                    ((half *)p.y)[o] = __float2half(acc);
            }
        }
    }
    free(bt);
}

int kern_gemm_run(kern_gemm *g, cudaStream_t s, const kern_gemm_args *p) {
    if (p->batch <= 0 || p->m <= 0 || p->n <= 0) return 0;
    int bad = gemm_check(p);
    if (bad) return bad;
    /* the plan is only bookkeeping here, so tests can see that shapes are planned once */
    plan_key key;
    gemm_key(&key, p, 0, 0, 0);
    if (!plan_cache_get(g->plans, &key)) {
        void *pl = malloc(1);
        if (!pl || plan_cache_put(g->plans, &key, pl)) {
            free(pl);
            return (int)cudaErrorMemoryAllocation;
        }
        g->made++;
    }
    kern_gemm_args copy = *p;
    return (int)emu_enqueue(s, "gemm", [copy]() { gemm_emu(copy); });
}

#endif
