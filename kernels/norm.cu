/* Normalisations and softmax: GroupNorm (+ fused SiLU), LayerNorm, row
 * softmax, and the attention-score softmax of the GEMM attention path.
 * Statistics in fp32 with two passes (mean, then the centred sum of squares)
 * so large means do not cancel. LayerNorm and softmax: one block per row;
 * GroupNorm: many blocks per group (below). */
#include "common.cuh"

#define NORM_THREADS 256

/* GroupNorm is split over up to GN_MAX_SPLITS blocks per (sample, group),
 * each a contiguous run of pixels of at least GN_MIN_PER_BLOCK elements, so
 * that UNet sizes (2 x 64 x 64 x 320, 32 groups: 640 blocks) and the VAE's
 * large maps (1 x 512 x 512 x 128: 4096 blocks) fill the GPU: block
 * (ng, split) writes the count, mean and centred sum of squares of its slice
 * (two passes over the slice); the apply kernel merges the slices'
 * statistics (Chan et al.'s pairwise update, no cancellation) and
 * normalises its slice. Indices within a slice are 32-bit. */
#define GN_MIN_PER_BLOCK 4096
#define GN_MAX_SPLITS 128

static int gn_splits(int64_t l, int64_t cg) {
    int64_t s = (l * cg + GN_MIN_PER_BLOCK - 1) / GN_MIN_PER_BLOCK;
    if (s > l) s = l; /* at least one pixel per slice */
    return s < 1 ? 1 : (s > GN_MAX_SPLITS ? GN_MAX_SPLITS : (int)s);
}

int64_t kern_group_norm_work(int64_t n, int64_t l, int64_t c, int groups) {
    return n * groups * gn_splits(l, c / groups) * 3;
}

/* This block's pixels [p0, p1) of l. */
__device__ __forceinline__ void gn_slice(int64_t l, int64_t *p0, int64_t *p1) {
    int64_t chunk = (l + gridDim.y - 1) / gridDim.y;
    *p0 = blockIdx.y * chunk;
    *p1 = *p0 + chunk < l ? *p0 + chunk : l;
    if (*p0 > l) *p0 = l;
}

template <class T>
__global__ void gn_stats_kernel(float *work, const T *x, int64_t l, int64_t c, int groups) {
    EASEL_SHARED(float, red, 33);
    const int32_t cg = (int32_t)(c / groups);
    int64_t p0, p1;
    gn_slice(l, &p0, &p1);
    const T *xb = x + ((blockIdx.x / groups) * l + p0) * c + (blockIdx.x % groups) * cg;
    const int32_t cnt = (int32_t)((p1 - p0) * cg);
    float s = 0.0f;
    for (int32_t i = threadIdx.x; i < cnt; i += blockDim.x)
        s += ld(xb, (int64_t)(i / cg) * c + i % cg);
    s = block_sum(s, red);
    float mean = cnt > 0 ? s / (float)cnt : 0.0f, q = 0.0f;
    for (int32_t i = threadIdx.x; i < cnt; i += blockDim.x) {
        float d = ld(xb, (int64_t)(i / cg) * c + i % cg) - mean;
        q += d * d;
    }
    q = block_sum(q, red);
    if (threadIdx.x == 0) {
        float *w = work + ((int64_t)blockIdx.x * gridDim.y + blockIdx.y) * 3;
        w[0] = (float)cnt, w[1] = mean, w[2] = q;
    }
}

template <class T>
__global__ void gn_apply_kernel(T *y, const T *x, const float *work, const T *gamma, const T *beta,
                                int64_t l, int64_t c, int groups, float eps, int silu) {
    const int32_t cg = (int32_t)(c / groups), g = blockIdx.x % groups;
    const float *w = work + (int64_t)blockIdx.x * gridDim.y * 3;
    float na = 0.0f, mean = 0.0f, m2 = 0.0f;
    for (unsigned k = 0; k < gridDim.y; k++) { /* merge the slices' statistics */
        float nb = w[3 * k], mb = w[3 * k + 1], m2b = w[3 * k + 2];
        if (nb == 0.0f) continue;
        float nab = na + nb, delta = mb - mean;
        mean += delta * (nb / nab);
        m2 += m2b + delta * delta * (na / nab) * nb;
        na = nab;
    }
    float rstd = rsqrtf(m2 / na + eps);
    int64_t p0, p1;
    gn_slice(l, &p0, &p1);
    const int64_t base = ((blockIdx.x / groups) * l + p0) * c + (int64_t)g * cg;
    const int32_t cnt = (int32_t)((p1 - p0) * cg);
    for (int32_t i = threadIdx.x; i < cnt; i += blockDim.x) {
        int32_t ci = i % cg;
        int64_t off = base + (int64_t)(i / cg) * c + ci;
        float v = (ld(x, off) - mean) * rstd * ld(gamma, g * cg + ci) + ld(beta, g * cg + ci);
        if (silu) v = v / (1.0f + expf(-v));
        st(y, off, v);
    }
}

template <class T>
static int group_norm_t(cudaStream_t s, void *y, const void *x, const void *gamma, const void *beta,
                        int64_t n, int64_t l, int64_t c, int groups, float eps, int silu,
                        float *work) {
    dim3 grid((unsigned)(n * groups), (unsigned)gn_splits(l, c / groups));
    EASEL_LAUNCH(gn_stats_kernel<T>, grid, NORM_THREADS, 0, s, work, (const T *)x, l, c, groups);
    EASEL_LAUNCH(gn_apply_kernel<T>, grid, NORM_THREADS, 0, s, (T *)y, (const T *)x,
                 (const float *)work, (const T *)gamma, (const T *)beta, l, c, groups, eps, silu);
    KERN_CHECK_LAUNCH();
}

int kern_group_norm(cudaStream_t s, void *y, const void *x, const void *gamma, const void *beta,
                    int64_t n, int64_t l, int64_t c, int groups, float eps, int silu, float *work,
                    int dt) {
    if (n * l * c <= 0) return 0;
    int64_t slice = (l + gn_splits(l, c / groups) - 1) / gn_splits(l, c / groups) * (c / groups);
    if (n * groups > 0x7fffffff || slice >= INT32_MAX) return (int)cudaErrorInvalidValue;
    return KERN_BY_DTYPE(dt, group_norm_t, s, y, x, gamma, beta, n, l, c, groups, eps, silu, work);
}

template <class T>
__global__ void layer_norm_kernel(T *y, const T *x, const T *gamma, const T *beta, int64_t c,
                                  float eps) {
    EASEL_SHARED(float, red, 33);
    const T *xr = x + (int64_t)blockIdx.x * c;
    T *yr = y + (int64_t)blockIdx.x * c;
    float s = 0.0f;
    for (int64_t i = threadIdx.x; i < c; i += blockDim.x)
        s += ld(xr, i);
    float mean = block_sum(s, red) / (float)c;
    float q = 0.0f;
    for (int64_t i = threadIdx.x; i < c; i += blockDim.x) {
        float d = ld(xr, i) - mean;
        q += d * d;
    }
    float rstd = rsqrtf(block_sum(q, red) / (float)c + eps);
    for (int64_t i = threadIdx.x; i < c; i += blockDim.x)
        st(yr, i, (ld(xr, i) - mean) * rstd * ld(gamma, i) + ld(beta, i));
}

template <class T>
static int layer_norm_t(cudaStream_t s, void *y, const void *x, const void *gamma, const void *beta,
                        int64_t rows, int64_t c, float eps) {
    EASEL_LAUNCH(layer_norm_kernel<T>, (unsigned)rows, NORM_THREADS, 0, s, (T *)y, (const T *)x,
                 (const T *)gamma, (const T *)beta, c, eps);
    KERN_CHECK_LAUNCH();
}

int kern_layer_norm(cudaStream_t s, void *y, const void *x, const void *gamma, const void *beta,
                    int64_t rows, int64_t c, float eps, int dt) {
    if (rows * c <= 0) return 0;
    if (rows > 0x7fffffff) return (int)cudaErrorInvalidValue;
    return KERN_BY_DTYPE(dt, layer_norm_t, s, y, x, gamma, beta, rows, c, eps);
}

/* Row softmax: x and y of type T (X = T), or fp32 scores into T (attention). */
template <class X, class T>
__global__ void softmax_kernel(T *y, int64_t ldy, const X *x, int64_t ldx, int64_t c, int causal,
                               int64_t q0) {
    EASEL_SHARED(float, red, 33);
    const X *xr = x + (int64_t)blockIdx.x * ldx;
    T *yr = y + (int64_t)blockIdx.x * ldy;
    const int64_t seen = causal ? (q0 + blockIdx.x + 1 < c ? q0 + blockIdx.x + 1 : c) : c;
    float m = -INFINITY;
    for (int64_t i = threadIdx.x; i < seen; i += blockDim.x)
        m = fmaxf(m, ld(xr, i));
    m = block_max(m, red);
    float s = 0.0f;
    for (int64_t i = threadIdx.x; i < seen; i += blockDim.x)
        s += expf(ld(xr, i) - m);
    float inv = 1.0f / block_sum(s, red);
    for (int64_t i = threadIdx.x; i < c; i += blockDim.x)
        st(yr, i, i < seen ? expf(ld(xr, i) - m) * inv : 0.0f);
}

template <class T>
static int softmax_t(cudaStream_t s, void *y, const void *x, int64_t rows, int64_t c) {
    EASEL_LAUNCH(softmax_kernel<T COMMA T>, (unsigned)rows, NORM_THREADS, 0, s, (T *)y, c,
                 (const T *)x, c, c, 0, (int64_t)0);
    KERN_CHECK_LAUNCH();
}

int kern_softmax(cudaStream_t s, void *y, const void *x, int64_t rows, int64_t c, int dt) {
    if (rows * c <= 0) return 0;
    if (rows > 0x7fffffff) return (int)cudaErrorInvalidValue;
    return KERN_BY_DTYPE(dt, softmax_t, s, y, x, rows, c);
}

template <class T>
static int softmax_scores_t(cudaStream_t s, void *p, int64_t ldp, const float *sc, int64_t lds,
                            int64_t rows, int64_t c, int causal, int64_t q0) {
    EASEL_LAUNCH(softmax_kernel<float COMMA T>, (unsigned)rows, NORM_THREADS, 0, s, (T *)p, ldp, sc,
                 lds, c, causal, q0);
    KERN_CHECK_LAUNCH();
}

int kern_softmax_scores(cudaStream_t s, void *p, int64_t ldp, int pdt, const float *sc, int64_t lds,
                        int64_t rows, int64_t c, int causal, int64_t q0) {
    if (rows * c <= 0) return 0;
    if (rows > 0x7fffffff) return (int)cudaErrorInvalidValue;
    return KERN_BY_DTYPE(pdt, softmax_scores_t, s, p, ldp, sc, lds, rows, c, causal, q0);
}
