/* Stand-in for <cblas.h> on the GPU machines, whose image has no OpenBLAS:
 * just what engine/backend_cpu.c calls (row-major sgemm). Used only by the
 * standalone build in tools/gpu_check.sh; see cblas_fallback.c. */
#ifndef EASEL_GPU_CHECK_CBLAS_H
#define EASEL_GPU_CHECK_CBLAS_H

enum CBLAS_ORDER { CblasRowMajor = 101, CblasColMajor = 102 };
enum CBLAS_TRANSPOSE { CblasNoTrans = 111, CblasTrans = 112, CblasConjTrans = 113 };

void cblas_sgemm(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, int m,
                 int n, int k, float alpha, const float *a, int lda, const float *b, int ldb,
                 float beta, float *c, int ldc);
void openblas_set_num_threads(int n);
char *openblas_get_config(void);
char *openblas_get_corename(void);

#endif
