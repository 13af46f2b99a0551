/* GEMMs for linear, bmm and im2col convolution. On the GPU: cuBLASLt, fp16
 * operands, fp32 compute, bias fused as an epilogue. Row-major problems are
 * handed to the column-major library transposed (y^T = op(b)^T · a^T). In the
 * emulated build (tests): an fp32 GEMM over the same fp16 inputs, rounding
 * the result to fp16 once, as cuBLASLt does. */
#include "common.cuh"

#include <stdlib.h>

#ifdef __CUDACC__
#include <cublasLt.h>

struct kern_gemm {
    cublasLtHandle_t lt;
    void *ws;
    size_t ws_bytes;
};

kern_gemm *kern_gemm_create(size_t ws_bytes) {
    kern_gemm *g = (kern_gemm *)calloc(1, sizeof *g);
    if (!g) return NULL;
    if (cublasLtCreate(&g->lt) != CUBLAS_STATUS_SUCCESS) {
        free(g);
        return NULL;
    }
    if (ws_bytes && cudaMalloc(&g->ws, ws_bytes) != cudaSuccess) {
        cublasLtDestroy(g->lt);
        free(g);
        return NULL;
    }
    g->ws_bytes = ws_bytes;
    return g;
}

void kern_gemm_destroy(kern_gemm *g) {
    if (!g) return;
    cudaFree(g->ws);
    cublasLtDestroy(g->lt);
    free(g);
}

/* Largest power of two ≤ 256 dividing the address and the batch stride (bytes). */
static uint32_t gemm_align(const void *p, int64_t stride_elems) {
    uint64_t v = (uint64_t)(uintptr_t)p | (uint64_t)(stride_elems * 2) | 256u;
    return (uint32_t)(v & (~v + 1));
}

struct gemm_descs {
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulPreference_t pref;
};

static void gemm_descs_free(gemm_descs *d) {
    if (d->pref) cublasLtMatmulPreferenceDestroy(d->pref);
    if (d->c) cublasLtMatrixLayoutDestroy(d->c);
    if (d->b) cublasLtMatrixLayoutDestroy(d->b);
    if (d->a) cublasLtMatrixLayoutDestroy(d->a);
    if (d->op) cublasLtMatmulDescDestroy(d->op);
}

static cublasStatus_t layout(cublasLtMatrixLayout_t *l, uint64_t rows, uint64_t cols, int64_t ld,
                             int32_t batch, int64_t stride) {
    cublasStatus_t st = cublasLtMatrixLayoutCreate(l, CUDA_R_16F, rows, cols, ld);
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
            gemm_descs_free(&d);                                                                   \
            return -(int)st_;                                                                      \
        }                                                                                          \
    } while (0)

/* Returns 0, a cudaError_t, or -cublasStatus_t. */
int kern_gemm_run(kern_gemm *g, cudaStream_t s, void *y, const void *a, const void *b,
                  const void *bias, int64_t batch, int64_t m, int64_t n, int64_t k, int trans_b,
                  float alpha, int64_t sa, int64_t sb, int64_t sy) {
    if (batch <= 0 || m <= 0 || n <= 0) return 0;
    gemm_descs d = {};
    float beta = 0.0f;
    int32_t nb = (int32_t)batch;
    cublasOperation_t ta = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, tb = CUBLAS_OP_N;
    LT_TRY(cublasLtMatmulDescCreate(&d.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    LT_TRY(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    LT_TRY(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    if (bias) {
        cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        LT_TRY(
            cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
        LT_TRY(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                              sizeof bias));
    }
    /* A = b (library's m = n rows of y^T), B = a, C = D = y^T [n x m]. */
    if (trans_b)
        LT_TRY(layout(&d.a, (uint64_t)k, (uint64_t)n, k, nb, sb));
    else
        LT_TRY(layout(&d.a, (uint64_t)n, (uint64_t)k, n, nb, sb));
    LT_TRY(layout(&d.b, (uint64_t)k, (uint64_t)m, k, nb, sa));
    LT_TRY(layout(&d.c, (uint64_t)n, (uint64_t)m, n, nb, sy));
    LT_TRY(cublasLtMatmulPreferenceCreate(&d.pref));
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                &g->ws_bytes, sizeof g->ws_bytes));
    uint32_t al_a = gemm_align(b, sb), al_b = gemm_align(a, sa), al_c = gemm_align(y, sy);
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                &al_a, sizeof al_a));
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                &al_b, sizeof al_b));
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                &al_c, sizeof al_c));
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                &al_c, sizeof al_c));
    cublasLtMatmulHeuristicResult_t heur;
    int found = 0;
    LT_TRY(
        cublasLtMatmulAlgoGetHeuristic(g->lt, d.op, d.a, d.b, d.c, d.c, d.pref, 1, &heur, &found));
    if (!found) LT_TRY(CUBLAS_STATUS_NOT_SUPPORTED);
    LT_TRY(cublasLtMatmul(g->lt, d.op, &alpha, b, d.a, a, d.b, &beta, y, d.c, y, d.c, &heur.algo,
                          g->ws, g->ws_bytes, s));
    gemm_descs_free(&d);
    return 0;
}

#else /* emulated: fp32 GEMM, fp16 in, fp16 out */

struct kern_gemm {
    int unused;
};

kern_gemm *kern_gemm_create(size_t ws_bytes) {
    (void)ws_bytes;
    return (kern_gemm *)calloc(1, sizeof(kern_gemm));
}

void kern_gemm_destroy(kern_gemm *g) {
    free(g);
}

int kern_gemm_run(kern_gemm *g, cudaStream_t s, void *y, const void *a, const void *b,
                  const void *bias, int64_t batch, int64_t m, int64_t n, int64_t k, int trans_b,
                  float alpha, int64_t sa, int64_t sb, int64_t sy) {
    (void)g;
    (void)s;
    const half *A = (const half *)a, *B = (const half *)b, *bi = (const half *)bias;
    half *Y = (half *)y;
    float *bt = (float *)malloc(sizeof(float) * (size_t)(n * k > 0 ? n * k : 1));
    if (!bt) return (int)cudaErrorMemoryAllocation;
    for (int64_t z = 0; z < batch; z++) {
        const half *bz = B + z * sb, *az = A + z * sa;
        for (int64_t j = 0; j < n; j++) /* bt[j][kk] = op(b)[kk][j] */
            for (int64_t kk = 0; kk < k; kk++)
                bt[j * k + kk] = __half2float(trans_b ? bz[j * k + kk] : bz[kk * n + j]);
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++) {
                float acc = 0.0f;
                for (int64_t kk = 0; kk < k; kk++)
                    acc += __half2float(az[i * k + kk]) * bt[j * k + kk];
                acc *= alpha;
                if (bi) acc += __half2float(bi[j]);
                Y[z * sy + i * n + j] = __float2half(acc);
            }
    }
    free(bt);
    return 0;
}

#endif
