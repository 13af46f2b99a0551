/* The CPU backend's bf16 path through oneDNN (engine/backend_cpu_dnnl.c),
 * private to engine/backend_cpu.c: matmuls and NHWC convolutions on bf16
 * operands with f32 accumulation and f32 results, on AMX or AVX512-BF16 as
 * oneDNN dispatches.
 *
 * Threads: every primitive here runs on one thread. The backend splits each
 * GEMM or convolution into slices (rows of the output) and runs them as
 * tasks on its own pool, `thread` naming the pool thread (< nthreads) that
 * runs a slice; per thread there is a stream, a scratchpad and memory
 * objects. oneDNN's own OpenMP threading is not used (Debian's oneDNN threads
 * with OpenMP): an OpenMP region ends at a barrier that waits for every
 * thread, which on a busy machine waits for a descheduled one, and its idle
 * threads spin beside ours. Primitives are created once per shape, on the
 * worker's thread (never inside a task), and kept in the backend's cache
 * (least recently used out); a primitive got from the cache stays valid
 * until the next get. */
#ifndef EASEL_BACKEND_CPU_DNNL_H
#define EASEL_BACKEND_CPU_DNNL_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

typedef struct cpu_dnnl cpu_dnnl;
typedef struct cpu_dnnl_prim cpu_dnnl_prim;

/* 1 if oneDNN can run bf16 matmuls on this CPU's matrix/vector units (its
 * effective ISA, after ONEDNN_MAX_CPU_ISA, is AVX512-BF16 or AMX). */
int cpu_dnnl_has_bf16(void);
/* The ISA oneDNN will dispatch on, e.g. "avx512_core_amx" (ONEDNN_MAX_CPU_ISA applied). */
const char *cpu_dnnl_isa(void);
/* oneDNN's version, e.g. "2.6.3". */
const char *cpu_dnnl_version(void);

/* For nthreads pool threads. NULL with a message on failure. */
cpu_dnnl *cpu_dnnl_create(int nthreads);
void cpu_dnnl_free(cpu_dnnl *d);

/* A matmul: y[M,N] (f32, row stride ldy) = a[M,K] (bf16, row stride lda) · B
 * (+ bias[N], f32, when has_bias), B = b[N,K]ᵀ (trans_b, row stride ldb) or
 * b[K,N] (row stride ldb). */
easel_err cpu_dnnl_mm_get(cpu_dnnl *d, int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb,
                          int64_t ldy, int trans_b, int has_bias, cpu_dnnl_prim **out);
/* The same for a B packed once (cpu_dnnl_mm_pack_b) into the layout the kernel
 * wants and used by many runs (attention's K and V); with accumulate,
 * y += a·B instead of y = a·B. No bias. */
easel_err cpu_dnnl_mm_get_packed(cpu_dnnl *d, int64_t M, int64_t N, int64_t K, int64_t lda,
                                 int64_t ldb, int64_t ldy, int trans_b, int accumulate,
                                 cpu_dnnl_prim **out);
/* Bytes (a multiple of 64) of a packed B of a cpu_dnnl_mm_get_packed matmul. */
size_t cpu_dnnl_mm_packed_bytes(const cpu_dnnl_prim *p);
/* b (as described at get) -> packed, on pool thread `thread`. */
easel_err cpu_dnnl_mm_pack_b(cpu_dnnl *d, const cpu_dnnl_prim *p, int thread, const uint16_t *b,
                             void *packed);
/* Runs a matmul on pool thread `thread`; tasks on distinct threads may run
 * at once (with distinct y). b is packed for a packed matmul. */
easel_err cpu_dnnl_mm_exec(cpu_dnnl *d, const cpu_dnnl_prim *p, int thread, float *y,
                           const uint16_t *a, const uint16_t *b, const float *bias);

/* One image's convolution, possibly a band of its rows: y[Ho,Wo,Co] (f32,
 * NHWC) = conv(x[H,W,Ci] (bf16, NHWC), w[Co,KH,KW,Ci] (bf16, stored layout))
 * + bias[Co] (f32, when has_bias), with zero padding pt/pb rows above/below
 * and pl/pr columns left/right (pb and pr may be negative: rows and columns
 * the stride skips), stride `stride`. */
typedef struct {
    int64_t H, W, Ci, Co, KH, KW, stride, pt, pb, pl, pr;
    int has_bias;
} cpu_dnnl_conv_shape;

easel_err cpu_dnnl_conv_get(cpu_dnnl *d, const cpu_dnnl_conv_shape *s, cpu_dnnl_prim **out);
/* The weights a conv's kernel reads: w itself, or (when the kernel for this
 * shape wants another layout than w's stored one) w reordered into a buffer
 * the primitive owns. On the worker's thread, before the tasks. */
easel_err cpu_dnnl_conv_weights(cpu_dnnl *d, cpu_dnnl_prim *p, const uint16_t *w, const void **wk);
/* Runs a conv on pool thread `thread` with the weights from cpu_dnnl_conv_weights. */
easel_err cpu_dnnl_conv_exec(cpu_dnnl *d, const cpu_dnnl_prim *p, int thread, float *y,
                             const uint16_t *x, const void *wk, const float *bias);

/* The stored layout of a bf16 conv weight ne = [Co,KH,KW,Ci] (see the .c):
 * 1 when blocked for oneDNN's kernels, 0 when plain OHWI. pack/unpack convert
 * between plain OHWI bf16 and the stored layout (the same bytes) of a blocked
 * one, on the worker's thread. */
int cpu_dnnl_conv_w_blocked(cpu_dnnl *d, const int64_t ne[4]);
easel_err cpu_dnnl_conv_w_pack(cpu_dnnl *d, const int64_t ne[4], const uint16_t *plain,
                               void *stored);
easel_err cpu_dnnl_conv_w_unpack(cpu_dnnl *d, const int64_t ne[4], const void *stored,
                                 uint16_t *plain);

/* The oneDNN implementation of a primitive ("brg:avx512_core_amx_bf16"). */
const char *cpu_dnnl_impl(const cpu_dnnl_prim *p);

#endif
