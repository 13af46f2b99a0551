/* The C interface of the CUDA kernels: one host launcher per kernel family,
 * taking (stream, device pointers, sizes, storage dtype). Storage is fp16 or
 * fp32 (KDT_*) as the dt argument says; arithmetic is fp32. Every launcher
 * returns 0 or a cudaError_t code (the launch's cudaGetLastError()); it never
 * synchronizes and never allocates, so every one may be captured into a CUDA
 * graph. The same functions are built from the same .cu sources by nvcc (real
 * GPU) or by the host C++ compiler over kernels/emu/ (CPU emulation, tests
 * only, EASEL_CUDA_EMU). */
#ifndef EASEL_KERNELS_H
#define EASEL_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef EASEL_CUDA_EMU
#include "emu/cuda_runtime_emu.h"
#else
#include <cuda_runtime.h>
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Storage dtypes, numbered as engine/tensor.h's dtype (0 f32, 1 f16, 2 bf16). */
enum { KDT_F32 = 0, KDT_F16 = 1, KDT_BF16 = 2 };
/* Unary ops, numbered as backend.h's unary_op; binary likewise. */
enum { KU_SILU = 0, KU_GELU = 1, KU_QUICK_GELU = 2, KU_RELU = 3, KU_TANH = 4 };
enum { KB_ADD = 0, KB_MUL = 1 };

/* Process-wide kernel attributes, set once per device before any launch (the
 * >48 KiB dynamic shared memory of attention at its largest head dim): they
 * are per kernel, not per stream, so setting them per launch would let two
 * workers undo each other's. Idempotent; call on each device's first worker. */
int kern_init(void);

/* ---- elementwise.cu (dt: KDT_F16 or KDT_F32 for y and every input) ---- */
/* y[i] = x[i] converted between any two storage dtypes (round to nearest even). */
int kern_convert(cudaStream_t s, void *y, int ydt, const void *x, int xdt, int64_t n);
int kern_unary(cudaStream_t s, void *y, const void *x, int64_t n, int op, int dt);
/* x[rows, 2n] -> y[rows, n] = x[:, :n] * gelu(x[:, n:]). */
int kern_geglu(cudaStream_t s, void *y, const void *x, int64_t rows, int64_t n, int dt);
/* y = a op b; a's shape ane[4], b's shape bne[4] (right-aligned, each 1 or a's). */
int kern_binary(cudaStream_t s, void *y, const void *a, const void *b, const int64_t ane[4],
                const int64_t bne[4], int op, int dt);
int kern_axpby(cudaStream_t s, void *y, float alpha, const void *x, float beta, const void *z,
               int64_t n, int dt);
int kern_upsample2x(cudaStream_t s, void *y, const void *x, int64_t n, int64_t h, int64_t w,
                    int64_t c, int dt);
int kern_concat(cudaStream_t s, void *y, const void *a, const void *b, int64_t rows, int64_t ca,
                int64_t cb, int dt);
/* x[n,h,w,c] -> y[n,hy,wy,c]: x at (top, left), zeros elsewhere. */
int kern_pad2d(cudaStream_t s, void *y, const void *x, int64_t n, int64_t h, int64_t w, int64_t hy,
               int64_t wy, int64_t c, int64_t top, int64_t left, int dt);
/* t: n fp32 values in device memory. y[n, dim]. */
int kern_timestep_embedding(cudaStream_t s, void *y, const float *t, int64_t n, int64_t dim,
                            int flip_sin_to_cos, float shift, float max_period, int dt);
/* ids: n int32 in device memory, already range-checked. */
int kern_gather_rows(cudaStream_t s, void *y, const void *table, const int32_t *ids, int64_t n,
                     int64_t c, int dt);
/* x[n,h,w,c] -> cols[rows, kh·kw·c] for output pixels row0 .. row0+rows-1 (of n·ho·wo). */
int kern_im2col(cudaStream_t s, void *cols, const void *x, int64_t n, int64_t h, int64_t w,
                int64_t c, int kh, int kw, int stride, int pad, int64_t ho, int64_t wo,
                int64_t row0, int64_t rows, int dt);

/* ---- norm.cu ---- */
/* x[n, l, c], groups | c; stats in fp32, two passes; optional SiLU. In place
 * allowed. work: kern_group_norm_work(n, l, c, groups) floats of device memory. */
int kern_group_norm(cudaStream_t s, void *y, const void *x, const void *gamma, const void *beta,
                    int64_t n, int64_t l, int64_t c, int groups, float eps, int silu, float *work,
                    int dt);
int64_t kern_group_norm_work(int64_t n, int64_t l, int64_t c, int groups);
int kern_layer_norm(cudaStream_t s, void *y, const void *x, const void *gamma, const void *beta,
                    int64_t rows, int64_t c, float eps, int dt);
int kern_softmax(cudaStream_t s, void *y, const void *x, int64_t rows, int64_t c, int dt);
/* Attention scores -> probabilities: p[r, j] (fp16 or fp32 as pdt, row pitch
 * ldp) = softmax_j(s[r, j]) over fp32 scores with row pitch lds; with causal,
 * row r sees keys j <= r + q0 only. */
int kern_softmax_scores(cudaStream_t s, void *p, int64_t ldp, int pdt, const float *sc, int64_t lds,
                        int64_t rows, int64_t c, int causal, int64_t q0);

/* ---- attention.cu ---- */
/* Flash attention (fp16 only): q[b,lq,h·d], k/v[b,lk,h·d] -> o[b,lq,h·d];
 * scale 1/sqrt(d); d ≤ KERN_ATTN_MAX_D. Longer heads, or fp32, go through
 * GEMMs (backend_cuda.c). */
#define KERN_ATTN_MAX_D 256
int kern_attention(cudaStream_t s, void *o, const void *q, const void *k, const void *v, int64_t b,
                   int64_t lq, int64_t lk, int64_t h, int64_t d, int causal);
/* Shared memory one attention block needs for head dim d (for the launch check). */
size_t kern_attention_smem(int64_t d);

/* ---- gemm.cu: cuBLASLt (real) or an fp32 GEMM (emulated) ---- */
typedef struct kern_gemm kern_gemm;
/* A per-worker GEMM context: cuBLASLt handle, workspace of ws_bytes and a
 * cache of matmul plans (descriptors, layouts and the chosen algorithm) per
 * problem shape, so that a shape is planned once. NULL on failure. */
kern_gemm *kern_gemm_create(size_t ws_bytes);
void kern_gemm_destroy(kern_gemm *g);
/* One batched row-major problem: for each of batch,
 *   y[m, n] (ldy) = alpha · a[m, k] (lda) · op(b) + bias[n]
 * with op(b) = b[n, k]^T (ldb) when trans_b, else b[k, n] (ldb); sa/sb/sy are
 * per-batch element strides (sb 0 broadcasts b). ab_dt is the dtype of a, b
 * and bias (KDT_F16: fp32 accumulate; KDT_F32: TF32 tensor cores, fp32
 * accumulate); y_dt is y's (ab_dt, or KDT_F32 for fp16 operands). */
typedef struct {
    void *y;
    const void *a, *b, *bias;
    int64_t batch, m, n, k, lda, ldb, ldy, sa, sb, sy;
    int trans_b, ab_dt, y_dt;
    float alpha;
} kern_gemm_args;
/* Returns 0, a cudaError_t, or -cublasStatus_t. */
int kern_gemm_run(kern_gemm *g, cudaStream_t s, const kern_gemm_args *p);
/* Plans made since create (for tests: a repeated shape makes none). */
long kern_gemm_plans_made(const kern_gemm *g);

/* ---- lora.cu ---- */
/* y[n,k] = w[n,k] + scale · up[n,r] · down[r,k]: w and y of storage dtypes wdt and
 * ydt (KDT_*), up and down f32, fp32 accumulation, one rounding into y. y == w allowed. */
int kern_lora_merge(cudaStream_t s, void *y, int ydt, const void *w, int wdt, const float *up,
                    const float *down, int64_t n, int64_t r, int64_t k, float scale);

#ifdef __cplusplus
}
#endif

#endif
