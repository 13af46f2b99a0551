/* Normalisations and softmax: GroupNorm (+ fused SiLU), LayerNorm, row
 * softmax. Statistics in fp32 with two passes (mean, then the centred sum
 * of squares) so large means do not cancel. LayerNorm and softmax: one block
 * per row; GroupNorm: several blocks per group (below). */
#include "common.cuh"

#define NORM_THREADS 256

/* GroupNorm is split over up to GN_MAX_SPLITS blocks per (sample, group), so
 * the VAE's large maps (1 x 512 x 512 x 128, 32 groups) fill the GPU: block
 * (ng, split) writes the count, mean and centred sum of squares of its slice
 * (two passes over the slice); the apply kernel merges the slices' statistics
 * (Chan et al.'s pairwise update, no cancellation) and normalises its slice. */
#define GN_MIN_PER_BLOCK 16384
#define GN_MAX_SPLITS 64

static int gn_splits(int64_t count) {
    int64_t s = (count + GN_MIN_PER_BLOCK - 1) / GN_MIN_PER_BLOCK;
    return s < 1 ? 1 : (s > GN_MAX_SPLITS ? GN_MAX_SPLITS : (int)s);
}

int64_t kern_group_norm_work(int64_t n, int64_t l, int64_t c, int groups) {
    return n * groups * gn_splits(l * (c / groups)) * 3;
}

/* This block's slice [i0, i1) of its group's count = l·cg elements. */
__device__ __forceinline__ void gn_slice(int64_t count, int64_t *i0, int64_t *i1) {
    int64_t chunk = (count + gridDim.y - 1) / gridDim.y;
    *i0 = blockIdx.y * chunk;
    *i1 = *i0 + chunk < count ? *i0 + chunk : count;
}

__global__ void gn_stats_kernel(float *work, const half *x, int64_t l, int64_t c, int groups) {
    __shared__ float red[33];
    int64_t cg = c / groups, i0, i1;
    gn_slice(l * cg, &i0, &i1);
    const half *xb = x + (blockIdx.x / groups) * l * c + (blockIdx.x % groups) * cg;
    float s = 0.0f, cnt = (float)(i1 > i0 ? i1 - i0 : 0);
    for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x)
        s += ld(xb, (i / cg) * c + i % cg);
    s = block_sum(s, red);
    float mean = cnt > 0 ? s / cnt : 0.0f, q = 0.0f;
    for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) {
        float d = ld(xb, (i / cg) * c + i % cg) - mean;
        q += d * d;
    }
    q = block_sum(q, red);
    if (threadIdx.x == 0) {
        float *w = work + ((int64_t)blockIdx.x * gridDim.y + blockIdx.y) * 3;
        w[0] = cnt, w[1] = mean, w[2] = q;
    }
}

__global__ void gn_apply_kernel(half *y, const half *x, const float *work, const half *gamma,
                                const half *beta, int64_t l, int64_t c, int groups, float eps,
                                int silu) {
    int64_t cg = c / groups, g = blockIdx.x % groups, i0, i1;
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
    gn_slice(l * cg, &i0, &i1);
    int64_t base = (blockIdx.x / groups) * l * c + g * cg;
    for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) {
        int64_t off = base + (i / cg) * c + i % cg, ch = g * cg + i % cg;
        float v = (ld(x, off) - mean) * rstd * ld(gamma, ch) + ld(beta, ch);
        if (silu) v = v / (1.0f + expf(-v));
        st(y, off, v);
    }
}

int kern_group_norm(cudaStream_t s, void *y, const void *x, const void *gamma, const void *beta,
                    int64_t n, int64_t l, int64_t c, int groups, float eps, int silu, float *work) {
    if (n * l * c <= 0) return 0;
    dim3 grid((unsigned)(n * groups), (unsigned)gn_splits(l * (c / groups)));
    EASEL_LAUNCH(gn_stats_kernel, grid, NORM_THREADS, 0, s, work, (const half *)x, l, c, groups);
    EASEL_LAUNCH(gn_apply_kernel, grid, NORM_THREADS, 0, s, (half *)y, (const half *)x,
                 (const float *)work, (const half *)gamma, (const half *)beta, l, c, groups, eps,
                 silu);
    KERN_CHECK_LAUNCH();
}

__global__ void layer_norm_kernel(half *y, const half *x, const half *gamma, const half *beta,
                                  int64_t c, float eps) {
    __shared__ float red[33];
    const half *xr = x + (int64_t)blockIdx.x * c;
    half *yr = y + (int64_t)blockIdx.x * c;
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

int kern_layer_norm(cudaStream_t s, void *y, const void *x, const void *gamma, const void *beta,
                    int64_t rows, int64_t c, float eps) {
    if (rows * c <= 0) return 0;
    EASEL_LAUNCH(layer_norm_kernel, (unsigned)rows, NORM_THREADS, 0, s, (half *)y, (const half *)x,
                 (const half *)gamma, (const half *)beta, c, eps);
    KERN_CHECK_LAUNCH();
}

__global__ void softmax_kernel(half *y, const half *x, int64_t c) {
    __shared__ float red[33];
    const half *xr = x + (int64_t)blockIdx.x * c;
    half *yr = y + (int64_t)blockIdx.x * c;
    float m = -INFINITY;
    for (int64_t i = threadIdx.x; i < c; i += blockDim.x)
        m = fmaxf(m, ld(xr, i));
    m = block_max(m, red);
    float s = 0.0f;
    for (int64_t i = threadIdx.x; i < c; i += blockDim.x)
        s += expf(ld(xr, i) - m);
    float inv = 1.0f / block_sum(s, red);
    for (int64_t i = threadIdx.x; i < c; i += blockDim.x)
        st(yr, i, expf(ld(xr, i) - m) * inv);
}

int kern_softmax(cudaStream_t s, void *y, const void *x, int64_t rows, int64_t c) {
    if (rows * c <= 0) return 0;
    EASEL_LAUNCH(softmax_kernel, (unsigned)rows, NORM_THREADS, 0, s, (half *)y, (const half *)x, c);
    KERN_CHECK_LAUNCH();
}
