/* The C interface of the CUDA kernels: one host launcher per kernel family,
 * taking (stream, device pointers, sizes). Data are fp16 (half) unless said;
 * arithmetic is fp32. Every launcher returns 0 or a cudaError_t code (the
 * launch's cudaGetLastError()); it never synchronizes. The same functions are
 * built from the same .cu sources by nvcc (real GPU) or by the host C++
 * compiler over kernels/emu/ (CPU emulation, tests only, EASEL_CUDA_EMU). */
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
enum { KU_SILU = 0, KU_GELU = 1, KU_QUICK_GELU = 2 };
enum { KB_ADD = 0, KB_MUL = 1 };

/* ---- elementwise.cu ---- */
/* y[i] = x[i] converted between any two storage dtypes (round to nearest even). */
int kern_convert(cudaStream_t s, void *y, int ydt, const void *x, int xdt, int64_t n);
int kern_unary(cudaStream_t s, void *y, const void *x, int64_t n, int op);
/* x[rows, 2n] -> y[rows, n] = x[:, :n] * gelu(x[:, n:]). */
int kern_geglu(cudaStream_t s, void *y, const void *x, int64_t rows, int64_t n);
/* y = a op b; a's shape ane[4], b's shape bne[4] (right-aligned, each 1 or a's). */
int kern_binary(cudaStream_t s, void *y, const void *a, const void *b, const int64_t ane[4],
                const int64_t bne[4], int op);
int kern_axpby(cudaStream_t s, void *y, float alpha, const void *x, float beta, const void *z,
               int64_t n);
int kern_upsample2x(cudaStream_t s, void *y, const void *x, int64_t n, int64_t h, int64_t w,
                    int64_t c);
int kern_concat(cudaStream_t s, void *y, const void *a, const void *b, int64_t rows, int64_t ca,
                int64_t cb);
/* t: n fp32 values in device memory. y[n, dim]. */
int kern_timestep_embedding(cudaStream_t s, void *y, const float *t, int64_t n, int64_t dim,
                            int flip_sin_to_cos, float shift, float max_period);
/* ids: n int32 in device memory, already range-checked. */
int kern_gather_rows(cudaStream_t s, void *y, const void *table, const int32_t *ids, int64_t n,
                     int64_t c);
/* x[n,h,w,c] -> cols[rows, kh·kw·c] for output pixels row0 .. row0+rows-1 (of n·ho·wo). */
int kern_im2col(cudaStream_t s, void *cols, const void *x, int64_t n, int64_t h, int64_t w,
                int64_t c, int kh, int kw, int stride, int pad, int64_t ho, int64_t wo,
                int64_t row0, int64_t rows);

/* ---- norm.cu ---- */
/* x[n, l, c], groups | c; stats in fp32, two passes; optional SiLU. In place
 * allowed. work: kern_group_norm_work(n, l, c, groups) floats of device memory. */
int kern_group_norm(cudaStream_t s, void *y, const void *x, const void *gamma, const void *beta,
                    int64_t n, int64_t l, int64_t c, int groups, float eps, int silu, float *work);
int64_t kern_group_norm_work(int64_t n, int64_t l, int64_t c, int groups);
int kern_layer_norm(cudaStream_t s, void *y, const void *x, const void *gamma, const void *beta,
                    int64_t rows, int64_t c, float eps);
int kern_softmax(cudaStream_t s, void *y, const void *x, int64_t rows, int64_t c);

/* ---- attention.cu ---- */
/* Flash attention (online softmax, WMMA 16x16x16): q[b,lq,h·d], k/v[b,lk,h·d] ->
 * o[b,lq,h·d]; scale 1/sqrt(d); d ≤ KERN_ATTN_MAX_D. */
#define KERN_ATTN_MAX_D 256
int kern_attention(cudaStream_t s, void *o, const void *q, const void *k, const void *v, int64_t b,
                   int64_t lq, int64_t lk, int64_t h, int64_t d, int causal);
/* Shared memory one attention block needs for head dim d (for the launch check). */
size_t kern_attention_smem(int64_t d);

/* ---- gemm.cu: cuBLASLt (real) or an fp32 GEMM with fp16 rounding (emulated) ---- */
typedef struct kern_gemm kern_gemm;
/* A per-worker GEMM context (cuBLASLt handle + workspace of ws_bytes). NULL on failure. */
kern_gemm *kern_gemm_create(size_t ws_bytes);
void kern_gemm_destroy(kern_gemm *g);
/* For each of batch: y[M,N] = alpha · a[M,K] · (trans_b ? b[N,K]^T : b[K,N]) + bias[N].
 * Row-major fp16; bias may be NULL; sa/sb/sy are per-batch element strides
 * (sb 0 broadcasts b). */
int kern_gemm_run(kern_gemm *g, cudaStream_t s, void *y, const void *a, const void *b,
                  const void *bias, int64_t batch, int64_t m, int64_t n, int64_t k, int trans_b,
                  float alpha, int64_t sa, int64_t sb, int64_t sy);

#ifdef __cplusplus
}
#endif

#endif
