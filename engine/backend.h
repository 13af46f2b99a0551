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

#include <stdio.h>

#include "err.h"
#include "tensor.h"

typedef enum {
    UNARY_SILU = 0,
    UNARY_GELU,
    UNARY_QUICK_GELU,
    UNARY_RELU, /* max(x, 0) (NaN stays NaN, as torch.relu) */
    UNARY_TANH,
    UNARY_COUNT
} unary_op;
typedef enum { BINARY_ADD = 0, BINARY_MUL, BINARY_COUNT } binary_op;

typedef struct backend backend;

/* What identifies one captured step: its shape, and the caller's buffers (a
 * hash of their addresses, which a replay reuses). */
typedef struct {
    int batch, height, width;
    uint64_t layout;
} backend_graph_key;

/* The ops. Their contracts (shapes, dtypes, devices) are checked once, in
 * engine/backend.c, for every backend: a backend fills these pointers with its
 * own functions and calls backend_install_checks(), which moves them to
 * be->impl and puts the checking entry points in their place. A backend's own
 * op therefore only ever sees arguments that meet the contract below; it still
 * refuses what it cannot do (e.g. dims too large for its BLAS). */
typedef easel_err backend_linear_fn(backend *be, tensor *y, const tensor *x, const tensor *w,
                                    const tensor *b);
typedef easel_err backend_bmm_fn(backend *be, tensor *y, const tensor *a, const tensor *b,
                                 int trans_b, float alpha);
typedef easel_err backend_conv2d_fn(backend *be, tensor *y, const tensor *x, const tensor *w,
                                    const tensor *b, int stride, int pad);
typedef easel_err backend_group_norm_fn(backend *be, tensor *y, const tensor *x,
                                        const tensor *gamma, const tensor *beta, int groups,
                                        float eps, int silu);
typedef easel_err backend_layer_norm_fn(backend *be, tensor *y, const tensor *x,
                                        const tensor *gamma, const tensor *beta, float eps);
/* y = f(x): copy, softmax, geglu, upsample2x */
typedef easel_err backend_map_fn(backend *be, tensor *y, const tensor *x);
typedef easel_err backend_attention_fn(backend *be, tensor *o, const tensor *q, const tensor *k,
                                       const tensor *v, int heads, int causal);
typedef easel_err backend_unary_fn(backend *be, tensor *y, const tensor *x, unary_op op);
typedef easel_err backend_binary_fn(backend *be, tensor *y, const tensor *a, const tensor *b,
                                    binary_op op);
typedef easel_err backend_axpby_fn(backend *be, tensor *y, float alpha, const tensor *x, float beta,
                                   const tensor *z);
typedef easel_err backend_concat_fn(backend *be, tensor *y, const tensor *a, const tensor *b);
typedef easel_err backend_timestep_fn(backend *be, tensor *y, const float *t, int flip_sin_to_cos,
                                      float downscale_freq_shift, float max_period);
typedef easel_err backend_gather_fn(backend *be, tensor *y, const tensor *table, const int32_t *ids,
                                    int64_t n);
typedef easel_err backend_lora_merge_fn(backend *be, tensor *y, const tensor *w, const tensor *up,
                                        const tensor *down, float scale);
typedef easel_err backend_pad2d_fn(backend *be, tensor *y, const tensor *x, int top, int left);

/* What a backend implements behind the checks (see above). */
typedef struct {
    easel_err (*upload)(backend *be, tensor *dst, const float *src);
    easel_err (*download)(backend *be, const tensor *src, float *dst);
    backend_map_fn *copy;
    backend_linear_fn *linear;
    backend_bmm_fn *bmm;
    backend_conv2d_fn *conv2d;
    backend_group_norm_fn *group_norm;
    backend_layer_norm_fn *layer_norm;
    backend_map_fn *softmax;
    backend_attention_fn *attention;
    backend_unary_fn *unary;
    backend_map_fn *geglu;
    backend_binary_fn *binary;
    backend_axpby_fn *axpby;
    backend_map_fn *upsample2x;
    backend_concat_fn *concat;
    backend_timestep_fn *timestep_embedding;
    backend_gather_fn *gather_rows;
    backend_lora_merge_fn *lora_merge;
    backend_pad2d_fn *pad2d;
} backend_ops;

struct backend {
    const char *name; /* "cpu", "cuda" */
    device_kind dev;
    dtype act_dtype;    /* storage dtype of activations (and of weights unless stated) */
    dtype weight_dtype; /* storage dtype of matrix weights (linear/conv2d w, gather_rows
                         * table): act_dtype, or a narrower one (the CPU's bf16 path) */
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
    backend_map_fn *copy;
    /* y[M,N] = x[M,K] · w[N,K]^T + b[N]. x and y may have any leading dims (M = rows).
     * b may be NULL. w may have weight_dtype. */
    backend_linear_fn *linear;
    /* Batched: y[B,M,N] = alpha · a[B,M,K] · (trans_b ? b[B,N,K]^T : b[B,K,N]). */
    backend_bmm_fn *bmm;
    /* y[N,Ho,Wo,Co] = conv(x[N,H,W,Ci], w[Co,KH,KW,Ci]) + b[Co]; b may be NULL.
     * Ho = (H + 2·pad − KH)/stride + 1 (likewise Wo). Zero padding. w may have
     * weight_dtype. */
    backend_conv2d_fn *conv2d;
    /* GroupNorm over x[N,H,W,C] (or [N,L,C]): per sample, per group of C/groups
     * channels; y = (x−mean)/sqrt(var+eps)·gamma[C] + beta[C], then SiLU if silu.
     * In place allowed. */
    backend_group_norm_fn *group_norm;
    /* LayerNorm over the last dim C: y = (x−mean)/sqrt(var+eps)·gamma[C] + beta[C]. In place
     * allowed. */
    backend_layer_norm_fn *layer_norm;
    /* Softmax over the last dim. In place allowed. */
    backend_map_fn *softmax;
    /* Multi-head scaled-dot-product attention, scale 1/sqrt(D):
     * q[B,Lq,H·D], k[B,Lk,H·D], v[B,Lk,H·D] -> o[B,Lq,H·D]. With causal, query i
     * sees keys j ≤ i (requires Lq == Lk). */
    backend_attention_fn *attention;
    /* y = op(x) elementwise. In place allowed. GELU is the exact (erf) one;
     * quick-GELU is x·sigmoid(1.702x); ReLU and tanh as torch's. */
    backend_unary_fn *unary;
    /* x[..., 2N] -> y[..., N]: y = x[..., :N] · gelu(x[..., N:]) (diffusers GEGLU). */
    backend_map_fn *geglu;
    /* y = a op b with b broadcast onto a (numpy rules, shapes right-aligned, each
     * of b's dims equal to a's or 1). y has a's shape. In place (y == a) allowed. */
    backend_binary_fn *binary;
    /* y = alpha·x + beta·z (same shapes). In place (y == x or y == z) allowed. */
    backend_axpby_fn *axpby;
    /* Nearest-neighbour 2x: x[N,H,W,C] -> y[N,2H,2W,C]. */
    backend_map_fn *upsample2x;
    /* Concatenate along the last dim: a[...,Ca], b[...,Cb] -> y[...,Ca+Cb]. */
    backend_concat_fn *concat;
    /* Sinusoidal timestep embedding as diffusers' get_timestep_embedding:
     * t[N] (host values) -> y[N,dim]; half = dim/2, freq_i = exp(−ln(max_period)·i/(half−shift)),
     * first half sin, second cos (swapped when flip_sin_to_cos). */
    backend_timestep_fn *timestep_embedding;
    /* Row gather: y[n,C] = table[ids[n],C], ids on the host (embedding lookup).
     * Errors if an id is out of range. table may have weight_dtype. */
    backend_gather_fn *gather_rows;
    /* LoRA merge (models/lora.c): y = w + scale · up[N,R] · down[R,K] for a weight w
     * [N,K] (linear) or [N,KH,KW,Ci] (conv, K = KH·KW·Ci in our layout) of weight_dtype
     * or act_dtype; y has w's shape and either dtype; up and down are f32. Computed
     * in fp32: w read as f32, the product accumulated in fp32, added, rounded once
     * into y's dtype (a bf16 conv weight in the CPU's blocked layout stays in it).
     * In place (y == w) allowed. */
    backend_lora_merge_fn *lora_merge;
    /* Zero padding: x[N,H,W,C] -> y[N,Hy,Wy,C] with Hy >= top+H, Wy >= left+W;
     * y[n, top+i, left+j, c] = x[n,i,j,c], every other element 0 (so the
     * bottom/right padding is what y's size leaves). Asymmetric padding, e.g.
     * diffusers' Downsample2D pad (0,1,0,1) before its stride-2 conv. */
    backend_pad2d_fn *pad2d;

    /* The backend's own upload, download and ops, behind the checks above. */
    backend_ops impl;
    /* Per-op time and work when $EASEL_PROFILE was set at install (else NULL);
     * printed to stderr by backend_destroy. */
    struct backend_prof *prof;

    /* ---- optional (NULL: the helpers below do without; not behind the checks) ---- */
    /* timestep_embedding with t an f32 tensor [N] in this backend's memory
     * (backend_timestep_embedding_t checks the arguments). */
    easel_err (*timestep_embedding_dev)(backend *be, tensor *y, const tensor *t,
                                        int flip_sin_to_cos, float downscale_freq_shift,
                                        float max_period);
    /* See backend_run_graph. */
    easel_err (*run_graph)(backend *be, const backend_graph_key *key, easel_err (*fn)(void *user),
                           void *user);
    /* See backend_with_dtype. */
    backend *(*with_dtype)(backend *be, dtype dt);
};

/* Moves the op pointers a backend filled in into be->impl and installs the
 * checking entry points (engine/backend.c) in their place. Call once, last,
 * when creating a backend. EASEL_EINTERNAL if an op is missing. */
easel_err backend_install_checks(backend *be);

/* How the CPU backend computes. */
typedef enum {
    PREC_AUTO = 0, /* bf16 where the CPU has AMX-BF16 or AVX512-BF16, else fp32 */
    PREC_FP32,     /* fp32 throughout: the exact reference */
    PREC_BF16      /* bf16 weights and GEMM operands, fp32 accumulation and activations */
} backend_precision;

/* "auto", "fp32" (or "f32"), "bf16" -> *out; EASEL_EINVAL with a message if unknown. */
easel_err backend_precision_parse(const char *s, backend_precision *out);
const char *backend_precision_name(backend_precision p);
/* $EASEL_PRECISION if set (EASEL_EINVAL if it is not a precision), else PREC_AUTO. */
easel_err backend_precision_env(backend_precision *out);

/* CPU backend, fp32 (the exact reference): OpenBLAS sgemm and our AVX-512
 * kernels, its own thread pool of `threads` threads (0 = $EASEL_THREADS or all
 * cores). NULL on failure (message in easel_errmsg()). */
backend *backend_cpu_create(int threads);
/* CPU backend of a precision. PREC_BF16: weights (matrices) are stored in bf16
 * (be->weight_dtype; the loader converts them once), activations stay f32;
 * linear, conv2d and attention run on bf16 operands through oneDNN with fp32
 * accumulation; norms, softmax statistics and elementwise ops in fp32. It
 * fails with EASEL_EUNSUPPORTED on a CPU without AVX512-BF16 or AMX-BF16.
 * PREC_AUTO takes bf16 where the CPU has it, else fp32 (logging one line per
 * process). A bf16 backend has its own pool of `threads` threads, as fp32,
 * and runs every oneDNN primitive on one thread, slices of each GEMM/conv as
 * tasks of that pool (no OpenMP team is started). */
backend *backend_cpu_create_prec(int threads, backend_precision prec);
/* 0 if this CPU can run precision p, else EASEL_EUNSUPPORTED with the message
 * backend_cpu_create_prec would give (for the commands to exit 2 early). */
easel_err backend_cpu_check_precision(backend_precision p);
int backend_cpu_threads(const backend *be);
/* The precision a CPU backend computes in (PREC_FP32 or PREC_BF16; PREC_AUTO
 * for another backend). */
backend_precision backend_cpu_precision(const backend *be);
/* What a CPU backend of precision p would run on this machine, one line, e.g.
 * "bf16: oneDNN 2.6.3, avx512_core_amx" or "fp32: OpenBLAS (Haswell) + own
 * AVX-512 kernels" or "bf16: unavailable (oneDNN sees avx2)". */
const char *backend_cpu_describe(backend_precision p, char *buf, size_t len);

/* Other backends declare their own constructors (kernels/backend_cuda.h);
 * cli/backends.c is the one place that chooses among them. */

/* Helpers on top of the interface. */
/* Runs fn(user) — the device work of one step whose shapes and buffers key
 * names — through the backend's cache of captured graphs when it has one
 * (CUDA): eagerly the first time a key is seen (memory reaches its size),
 * captured the second, replayed after. fn must queue the same work on the
 * same buffers each time (values may change between runs, addresses not) and
 * never allocate, synchronize or copy from pageable host memory; host values
 * it needs go into device buffers before (backend_timestep_embedding_t).
 * When capture is not possible the step runs directly, as on a backend
 * without graphs (the CPU). Errors are fn's or the device's. */
easel_err backend_run_graph(backend *be, const backend_graph_key *key, easel_err (*fn)(void *user),
                            void *user);
/* timestep_embedding with the timesteps in an f32 tensor t [N] of this
 * backend (so a captured step reads them at replay). */
easel_err backend_timestep_embedding_t(backend *be, tensor *y, const tensor *t, int flip_sin_to_cos,
                                       float downscale_freq_shift, float max_period);
/* A backend on be's device, stream and memory whose act_dtype (and
 * weight_dtype) is dt, owned by be (valid until be is destroyed; not to be
 * destroyed itself): be when dt is be->act_dtype already; NULL with
 * EASEL_EUNSUPPORTED when the backend cannot store dt (e.g. an fp32 VAE on a
 * GPU that stores fp16). */
backend *backend_with_dtype(backend *be, dtype dt);
/* Allocate a tensor's data with be->alloc (dtype be->act_dtype unless dt given). */
easel_err backend_tensor_alloc(backend *be, tensor *t, dtype dt, int ndim, const int64_t *ne);
void backend_tensor_free(backend *be, tensor *t);
/* The bmm shape contract (checked by the entry point; backends call it for the dims): a [B,M,K] (or
 * [M,K]), b [B,N,K] with trans_b else [B,K,N], y [B,M,N]. Fills the dims, or
 * returns EASEL_EINVAL with a message naming the shapes. */
easel_err backend_check_bmm(const tensor *y, const tensor *a, const tensor *b, int trans_b,
                            int64_t *B, int64_t *M, int64_t *N, int64_t *K);
/* The conv2d shape contract (see conv2d above): fills the output size, or
 * returns EASEL_EINVAL with a message naming the shapes. */
easel_err backend_conv2d_dims(const tensor *y, const tensor *x, const tensor *w, const tensor *b,
                              int stride, int pad, int64_t *Ho, int64_t *Wo);
/* The per-op profile (EASEL_PROFILE=1): calls, wall and process-CPU seconds,
 * and GFLOP/s for the GEMM-like ops, one line per op kind. */
void backend_profile_print(const backend *be, FILE *f);
void backend_profile_free(backend *be);
static inline void backend_destroy(backend *be) {
    if (!be) return;
    if (be->prof) backend_profile_print(be, stderr), backend_profile_free(be);
    be->destroy(be);
}

#endif
