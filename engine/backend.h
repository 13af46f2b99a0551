/* The op interface: the only door to a device. A backend is a struct of
 * function pointers; model code calls only these and never branches on the
 * device. Every op:
 *   - takes its output first, then inputs; all tensors live in this backend's
 *     memory, are contiguous, and have the backend's storage dtype (act_dtype)
 *     unless stated;
 *   - checks shapes and returns EASEL_EINVAL with a message on mismatch
 *     (or if any data pointer is NULL, e.g. after a failed arena allocation);
 *   - may run asynchronously on the backend's stream: results are visible to
 *     later ops on the same backend, and to the host after download()/sync().
 * Outputs must not alias inputs unless the op says "in place allowed".
 * A new op is added here, to backend_cpu.c, to the CUDA backend and to
 * tests/test_ops.c together. */
#ifndef EASEL_BACKEND_H
#define EASEL_BACKEND_H

#include "err.h"
#include "tensor.h"

typedef enum { UNARY_SILU = 0, UNARY_GELU, UNARY_QUICK_GELU, UNARY_COUNT } unary_op;
typedef enum { BINARY_ADD = 0, BINARY_MUL, BINARY_COUNT } binary_op;

typedef struct backend backend;

struct backend {
    const char *name;   /* "cpu", "cuda" */
    device_kind dev;
    dtype act_dtype;    /* storage dtype for weights and activations */
    void *ctx;          /* backend-private state */

    void (*destroy)(backend *be);

    /* ---- memory ---- */
    /* Device memory of at least `bytes`, aligned to 256 bytes. */
    easel_err (*alloc)(backend *be, size_t bytes, void **out);
    void (*free)(backend *be, void *p);
    /* Host f32 array of tensor_nelem(dst) values -> dst (converted to dst->dt). */
    easel_err (*upload)(backend *be, tensor *dst, const float *src);
    /* src -> host f32 array (converted from src->dt). Waits for pending work. */
    easel_err (*download)(backend *be, const tensor *src, float *dst);
    /* Waits until all queued work is done. */
    easel_err (*sync)(backend *be);

    /* ---- ops ---- */
    /* y = x (dtype conversion allowed between f32/f16/bf16; same element count). */
    easel_err (*copy)(backend *be, tensor *y, const tensor *x);
    /* y[M,N] = x[M,K] · w[N,K]^T + b[N]. x and y may have any leading dims (M = rows).
     * b may be NULL. */
    easel_err (*linear)(backend *be, tensor *y, const tensor *x, const tensor *w, const tensor *b);
    /* Batched: y[B,M,N] = alpha · a[B,M,K] · (trans_b ? b[B,N,K]^T : b[B,K,N]). */
    easel_err (*bmm)(backend *be, tensor *y, const tensor *a, const tensor *b, int trans_b,
                     float alpha);
    /* y[N,Ho,Wo,Co] = conv(x[N,H,W,Ci], w[Co,KH,KW,Ci]) + b[Co]; b may be NULL.
     * Ho = (H + 2·pad − KH)/stride + 1 (likewise Wo). Zero padding. */
    easel_err (*conv2d)(backend *be, tensor *y, const tensor *x, const tensor *w, const tensor *b,
                        int stride, int pad);
    /* GroupNorm over x[N,H,W,C] (or [N,L,C]): per sample, per group of C/groups
     * channels; y = (x−mean)/sqrt(var+eps)·gamma[C] + beta[C], then SiLU if silu.
     * In place allowed. */
    easel_err (*group_norm)(backend *be, tensor *y, const tensor *x, const tensor *gamma,
                            const tensor *beta, int groups, float eps, int silu);
    /* LayerNorm over the last dim C: y = (x−mean)/sqrt(var+eps)·gamma[C] + beta[C]. In place allowed. */
    easel_err (*layer_norm)(backend *be, tensor *y, const tensor *x, const tensor *gamma,
                            const tensor *beta, float eps);
    /* Softmax over the last dim. In place allowed. */
    easel_err (*softmax)(backend *be, tensor *y, const tensor *x);
    /* Multi-head scaled-dot-product attention, scale 1/sqrt(D):
     * q[B,Lq,H·D], k[B,Lk,H·D], v[B,Lk,H·D] -> o[B,Lq,H·D]. With causal, query i
     * sees keys j ≤ i (requires Lq == Lk). */
    easel_err (*attention)(backend *be, tensor *o, const tensor *q, const tensor *k,
                           const tensor *v, int heads, int causal);
    /* y = op(x) elementwise. In place allowed. GELU is the exact (erf) one;
     * quick-GELU is x·sigmoid(1.702x). */
    easel_err (*unary)(backend *be, tensor *y, const tensor *x, unary_op op);
    /* x[..., 2N] -> y[..., N]: y = x[..., :N] · gelu(x[..., N:]) (diffusers GEGLU). */
    easel_err (*geglu)(backend *be, tensor *y, const tensor *x);
    /* y = a op b with b broadcast onto a (numpy rules, shapes right-aligned, each
     * of b's dims equal to a's or 1). y has a's shape. In place (y == a) allowed. */
    easel_err (*binary)(backend *be, tensor *y, const tensor *a, const tensor *b, binary_op op);
    /* y = alpha·x + beta·z (same shapes). In place (y == x or y == z) allowed. */
    easel_err (*axpby)(backend *be, tensor *y, float alpha, const tensor *x, float beta,
                       const tensor *z);
    /* Nearest-neighbour 2x: x[N,H,W,C] -> y[N,2H,2W,C]. */
    easel_err (*upsample2x)(backend *be, tensor *y, const tensor *x);
    /* Concatenate along the last dim: a[...,Ca], b[...,Cb] -> y[...,Ca+Cb]. */
    easel_err (*concat)(backend *be, tensor *y, const tensor *a, const tensor *b);
    /* Sinusoidal timestep embedding as diffusers' get_timestep_embedding:
     * t[N] (host values) -> y[N,dim]; half = dim/2, freq_i = exp(−ln(max_period)·i/(half−shift)),
     * first half sin, second cos (swapped when flip_sin_to_cos). */
    easel_err (*timestep_embedding)(backend *be, tensor *y, const float *t, int flip_sin_to_cos,
                                    float downscale_freq_shift, float max_period);
    /* Row gather: y[n,C] = table[ids[n],C], ids on the host (embedding lookup).
     * Errors if an id is out of range. */
    easel_err (*gather_rows)(backend *be, tensor *y, const tensor *table, const int32_t *ids,
                             int64_t n);
};

/* CPU backend: fp32, OpenBLAS sgemm, its own thread pool of `threads`
 * threads (0 = all cores). NULL on failure (message in easel_errmsg()). */
backend *backend_cpu_create(int threads);
int backend_cpu_threads(const backend *be);

/* CUDA backend (kernels/backend_cuda.c; present only when built with
 * EASEL_HAVE_CUDA): one worker on GPU `device` (< 0: $EASEL_CUDA_DEVICE or 0)
 * with its own stream, cuBLASLt handle, scratch and graph cache; act_dtype
 * f16. Memory of any cuda backend on the device is usable by all, so weights
 * loaded through one are shared by every worker. NULL with a message (no
 * device, driver missing, out of memory) on failure. */
backend *backend_cuda_create(int device);
/* Runs step(user) (one UNet step of shape batch x height x width) through a
 * CUDA graph cached per shape on this worker: eager the first time, captured
 * the second, replayed after; eager whenever capture is not possible. */
easel_err backend_cuda_run_graph(backend *be, int batch, int height, int width,
                                 easel_err (*step)(void *user), void *user);
/* engine/backend_select.c: want "cpu", "cuda" or "auto" (NULL = "auto").
 * "auto" takes CUDA when compiled in and a device works, else the CPU backend
 * (logging one line that says why). NULL with a message on failure. */
backend *backend_auto_create(const char *want, int threads);

/* Helpers on top of the interface. */
/* Allocate a tensor's data with be->alloc (dtype be->act_dtype unless dt given). */
easel_err backend_tensor_alloc(backend *be, tensor *t, dtype dt, int ndim, const int64_t *ne);
void backend_tensor_free(backend *be, tensor *t);
/* The bmm shape contract, checked once for every backend: a [B,M,K] (or
 * [M,K]), b [B,N,K] with trans_b else [B,K,N], y [B,M,N]. Fills the dims, or
 * returns EASEL_EINVAL with a message naming the shapes. */
easel_err backend_check_bmm(const tensor *y, const tensor *a, const tensor *b, int trans_b,
                            int64_t *B, int64_t *M, int64_t *N, int64_t *K);
static inline void backend_destroy(backend *be) {
    if (be) be->destroy(be);
}

#endif
