/* What the backend op tests share (tests/test_backend_cpu.c, test_backend_bf16.c):
 * host buffers with guard words after their elements, seeded random fills, and
 * plain double-precision references of the GEMM ops (linear, conv2d in NHWC
 * with OHWI weights, attention) written from their definitions. */
#ifndef EASEL_TEST_OPS_REF_H
#define EASEL_TEST_OPS_REF_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../engine/tensor.h"
#include "test.h"

#define GUARD 16
#define SENTINEL 0x7fc0beefu /* a NaN no op produces */
#define FILL 0x7fc0bad0u     /* what an unwritten output element holds */

typedef struct {
    float *mem;
    int64_t n;
    tensor t;
} buf;

/* An f32 CPU tensor of shape (a, b, c, d)[:ndim], its elements FILL, then
 * GUARD words of SENTINEL. */
static inline buf mkbuf(int ndim, int64_t a, int64_t b, int64_t c, int64_t d) {
    int64_t ne[4] = {a, b, c, d};
    buf x;
    x.t = tensor_make(NULL, DT_F32, DEV_CPU, ndim, ne);
    x.n = tensor_nelem(&x.t);
    x.mem = malloc((size_t)(x.n + GUARD) * sizeof(float));
    uint32_t fill = FILL, sent = SENTINEL;
    for (int64_t i = 0; i < x.n; i++)
        memcpy(&x.mem[i], &fill, 4);
    for (int64_t i = 0; i < GUARD; i++)
        memcpy(&x.mem[x.n + i], &sent, 4);
    x.t.data = x.mem;
    return x;
}

static inline void rnd(buf *x, unsigned long long seed, float lo, float hi) {
    unsigned long long s = seed * 2654435761ull + 1;
    for (int64_t i = 0; i < x->n; i++)
        x->mem[i] = test_randf(&s, lo, hi);
}

static inline int guard_ok(const buf *x) {
    uint32_t sent = SENTINEL;
    for (int64_t i = 0; i < GUARD; i++)
        if (memcmp(&x->mem[x->n + i], &sent, 4)) return 0;
    return 1;
}

static inline void bfree(buf *x) {
    free(x->mem);
    x->mem = NULL;
}

static inline double *dalloc(int64_t n) {
    return calloc((size_t)(n > 0 ? n : 1), sizeof(double));
}

/* max |y - ref| (a NaN counts as infinite). */
static inline double max_abs_d(const float *y, const double *ref, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)y[i] - ref[i]);
        if (!(d <= m)) m = d != d ? INFINITY : d;
    }
    return m;
}

/* y[r, n] = b[n] + sum_k x[r, k] w[n, k] */
static inline void linear_ref(const float *x, const float *w, const float *b, int64_t R, int K,
                              int N, double *ref) {
    for (int64_t r = 0; r < R; r++)
        for (int n = 0; n < N; n++) {
            double s = b ? b[n] : 0;
            for (int k = 0; k < K; k++)
                s += (double)x[r * K + k] * w[(int64_t)n * K + k];
            ref[r * N + n] = s;
        }
}

/* x NHWC of shape xne, w OHWI of shape wne, zero padding. */
static inline void conv_ref(const float *x, const float *w, const float *b, const int64_t *xne,
                            const int64_t *wne, int stride, int pad, int64_t Ho, int64_t Wo,
                            double *ref) {
    int64_t N = xne[0], H = xne[1], W = xne[2], Ci = xne[3], Co = wne[0], KH = wne[1], KW = wne[2];
    for (int64_t n = 0; n < N; n++)
        for (int64_t oy = 0; oy < Ho; oy++)
            for (int64_t ox = 0; ox < Wo; ox++)
                for (int64_t co = 0; co < Co; co++) {
                    double s = b ? b[co] : 0;
                    for (int64_t ky = 0; ky < KH; ky++)
                        for (int64_t kx = 0; kx < KW; kx++) {
                            int64_t iy = oy * stride - pad + ky, ix = ox * stride - pad + kx;
                            if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                            const float *xp = x + ((n * H + iy) * W + ix) * Ci;
                            const float *wp = w + ((co * KH + ky) * KW + kx) * Ci;
                            for (int64_t ci = 0; ci < Ci; ci++)
                                s += (double)xp[ci] * wp[ci];
                        }
                    ref[((n * Ho + oy) * Wo + ox) * Co + co] = s;
                }
}

/* softmax(q kᵀ / sqrt(D)) v per head; q (B, Lq, H·D), k and v (B, Lk, H·D). */
static inline void attention_ref(const buf *q, const buf *k, const buf *v, int H, int causal,
                                 double *ref) {
    int64_t B = q->t.ne[0], Lq = q->t.ne[1], Lk = k->t.ne[1], HD = q->t.ne[2], D = HD / H;
    double *s = dalloc(Lk), scale = 1.0 / sqrt((double)D);
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t i = 0; i < Lq; i++) {
                const float *qi = q->mem + (b * Lq + i) * HD + h * D;
                int64_t nk = causal ? i + 1 : Lk;
                double mx = -INFINITY, sum = 0;
                for (int64_t j = 0; j < nk; j++) {
                    const float *kj = k->mem + (b * Lk + j) * HD + h * D;
                    double d = 0;
                    for (int64_t e = 0; e < D; e++)
                        d += (double)qi[e] * kj[e];
                    s[j] = d * scale;
                    mx = s[j] > mx ? s[j] : mx;
                }
                for (int64_t j = 0; j < nk; j++)
                    sum += (s[j] = exp(s[j] - mx));
                for (int64_t e = 0; e < D; e++) {
                    double o = 0;
                    for (int64_t j = 0; j < nk; j++)
                        o += s[j] * v->mem[(b * Lk + j) * HD + h * D + e];
                    ref[(b * Lq + i) * HD + h * D + e] = o / sum;
                }
            }
    free(s);
}

#endif
