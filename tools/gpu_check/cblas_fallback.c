/* A small, correct, reasonably fast row-major sgemm for the GPU machines'
 * standalone build (tools/gpu_check.sh), where OpenBLAS is absent. It is the
 * CPU reference there, so it favours plain code: B is packed transposed per
 * call, then each C element is a contiguous dot product (auto-vectorised). */
#include "cblas.h"

#include <stdlib.h>
#include <string.h>

void openblas_set_num_threads(int n) {
    (void)n;
}
char *openblas_get_config(void) {
    return "easel gpu_check fallback sgemm";
}
char *openblas_get_corename(void) {
    return "fallback";
}

static float dot(const float *x, const float *y, int k) {
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int i = 0;
    for (; i + 4 <= k; i += 4) {
        s0 += x[i] * y[i];
        s1 += x[i + 1] * y[i + 1];
        s2 += x[i + 2] * y[i + 2];
        s3 += x[i + 3] * y[i + 3];
    }
    for (; i < k; i++)
        s0 += x[i] * y[i];
    return (s0 + s1) + (s2 + s3);
}

void cblas_sgemm(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, int m,
                 int n, int k, float alpha, const float *a, int lda, const float *b, int ldb,
                 float beta, float *c, int ldc) {
    (void)order; /* row-major only, as backend_cpu.c uses it */
    float *bt = malloc(sizeof(float) * (size_t)n * (size_t)(k > 0 ? k : 1));
    float *ar = malloc(sizeof(float) * (size_t)(k > 0 ? k : 1));
    if (!bt || !ar) abort(); /* test tool only: no way to report */
    for (int j = 0; j < n; j++)
        for (int p = 0; p < k; p++)
            bt[(size_t)j * k + p] =
                tb == CblasNoTrans ? b[(size_t)p * ldb + j] : b[(size_t)j * ldb + p];
    for (int i = 0; i < m; i++) {
        const float *row = a + (size_t)i * lda;
        if (ta != CblasNoTrans) {
            for (int p = 0; p < k; p++)
                ar[p] = a[(size_t)p * lda + i];
            row = ar;
        }
        for (int j = 0; j < n; j++) {
            float v = alpha * dot(row, bt + (size_t)j * k, k);
            float *cv = c + (size_t)i * ldc + j;
            *cv = beta == 0.0f ? v : v + beta * *cv;
        }
    }
    free(ar);
    free(bt);
}
