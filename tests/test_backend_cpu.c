/* backend_cpu.c and threadpool.c: every op against a plain double-precision
 * reference written here, on random inputs (fixed seeds) and many shapes (odd
 * sizes, 1-element dims, stride 2 on odd inputs, Lq != Lk, causal, every
 * GEMM split and conv path), with guard words after every output; error
 * paths; 1 and 3 threads, and 2 threads with EASEL_CPU_AVX512=1 and =0 (our
 * AVX-512 kernels forced on and off); the same ops with f32 weights on a bf16
 * backend (its OpenMP task runner; its attention is bf16, tolerances as in
 * test_backend_bf16.c); two backends computing at once.
 * Tolerances (fp32 against the double reference):
 *   linear, bmm, conv2d: rel L2 <= 2e-5, max abs <= 1e-4 (|x|,|w| <= 1)
 *   attention: rel L2 <= 2e-5, max abs <= 1e-5
 *   group_norm, layer_norm: rel L2 <= 1e-5, max abs <= 2e-5 (also with a
 *     mean of 300 or 1000 on a spread of 1, which catches naive variance)
 *   softmax: rel L2 <= 1e-5, max abs <= 1e-6; unary: 1e-5 / 5e-6;
 *   geglu: 1e-5 / 1e-5; axpby, timestep_embedding: 1e-6 / 1e-6
 *   binary (one rounding): equal to the f32-rounded reference;
 *   copy/convert, upsample2x, concat, gather_rows, pad2d: bit-exact. */
#include <pthread.h>
#include <stdint.h>

#include "../engine/backend.h"
#include "../engine/threadpool.h"
#include "test.h"
#include "test_ops_ref.h"

static backend *g_be; /* the backend under test */

static void expect_close(const char *what, const buf *y, const double *ref, double rtol,
                         double atol) {
    CHECK(guard_ok(y), "%s: guard words after the output were overwritten", what);
    double e = test_rel_l2(y->mem, ref, (long)y->n), m = max_abs_d(y->mem, ref, y->n);
    CHECK(e <= rtol, "%s: rel L2 %.3g > %.3g", what, e, rtol);
    CHECK(m <= atol, "%s: max abs %.3g > %.3g", what, m, atol);
}

static void expect_exact(const char *what, const buf *y, const float *ref) {
    CHECK(guard_ok(y), "%s: guard words after the output were overwritten", what);
    CHECK(!memcmp(y->mem, ref, (size_t)y->n * sizeof(float)), "%s: not bit-exact", what);
}

/* ------------------------------------------------------------ GEMM ops */

static void test_linear(void) {
    static const int cases[][5] = {
        /* lead, M, K, N, bias */
        {1, 1, 1, 1, 0},      {1, 3, 5, 7, 1},       {1, 17, 33, 9, 1},   {2, 65, 40, 130, 1},
        {1, 300, 200, 40, 1}, {1, 8, 256, 1100, 1},  {2, 77, 64, 96, 0},  {1, 1600, 24, 70, 1},
        {1, 200, 64, 700, 1}, {1, 130, 600, 333, 1}, {1, 40, 520, 16, 0}, {1, 32, 1, 16, 1}};
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        int L = cases[t][0], M = cases[t][1], K = cases[t][2], N = cases[t][3], hb = cases[t][4];
        buf x = mkbuf(3, L, M, K, 1), w = mkbuf(2, N, K, 1, 1), b = mkbuf(1, N, 1, 1, 1),
            y = mkbuf(3, L, M, N, 1);
        rnd(&x, 10 + t, -1, 1), rnd(&w, 20 + t, -1, 1), rnd(&b, 30 + t, -1, 1);
        double *ref = dalloc(y.n);
        for (int64_t r = 0; r < (int64_t)L * M; r++)
            for (int n = 0; n < N; n++) {
                double s = hb ? b.mem[n] : 0;
                for (int k = 0; k < K; k++)
                    s += (double)x.mem[r * K + k] * w.mem[(int64_t)n * K + k];
                ref[r * N + n] = s;
            }
        easel_err e = g_be->linear(g_be, &y.t, &x.t, &w.t, hb ? &b.t : NULL);
        CHECK(e == EASEL_OK, "linear case %zu: %s", t, easel_errmsg());
        char what[64];
        snprintf(what, sizeof what, "linear %dx%dx%dx%d", L, M, K, N);
        expect_close(what, &y, ref, 2e-5, 1e-4);
        free(ref), bfree(&x), bfree(&w), bfree(&b), bfree(&y);
    }
}

static void test_bmm(void) {
    static const int cases[][5] = {/* B, M, K, N, trans_b */
                                   {1, 3, 4, 5, 0},    {3, 17, 9, 33, 1}, {2, 70, 64, 130, 0},
                                   {5, 40, 16, 77, 1}, {1, 1, 1, 1, 1},   {2, 9, 200, 300, 1}};
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        int B = cases[t][0], M = cases[t][1], K = cases[t][2], N = cases[t][3], tb = cases[t][4];
        float alpha = t % 2 ? 0.5f : 1.0f;
        buf a = mkbuf(3, B, M, K, 1), b = tb ? mkbuf(3, B, N, K, 1) : mkbuf(3, B, K, N, 1),
            y = mkbuf(3, B, M, N, 1);
        rnd(&a, 40 + t, -1, 1), rnd(&b, 50 + t, -1, 1);
        double *ref = dalloc(y.n);
        for (int bi = 0; bi < B; bi++)
            for (int m = 0; m < M; m++)
                for (int n = 0; n < N; n++) {
                    double s = 0;
                    for (int k = 0; k < K; k++) {
                        double bv = tb ? b.mem[((int64_t)bi * N + n) * K + k]
                                       : b.mem[((int64_t)bi * K + k) * N + n];
                        s += (double)a.mem[((int64_t)bi * M + m) * K + k] * bv;
                    }
                    ref[((int64_t)bi * M + m) * N + n] = alpha * s;
                }
        easel_err e = g_be->bmm(g_be, &y.t, &a.t, &b.t, tb, alpha);
        CHECK(e == EASEL_OK, "bmm case %zu: %s", t, easel_errmsg());
        expect_close("bmm", &y, ref, 2e-5, 1e-4);
        free(ref), bfree(&a), bfree(&b), bfree(&y);
    }
}

static void test_conv2d(void) {
    static const int cases[][9] = {/* N, H, W, Ci, Co, k, stride, pad, bias */
                                   {1, 5, 7, 3, 4, 3, 1, 1, 1},
                                   {2, 9, 8, 5, 6, 3, 2, 1, 1},
                                   {1, 7, 7, 4, 3, 3, 2, 0, 0},
                                   {2, 6, 5, 8, 16, 1, 1, 0, 1},
                                   {1, 9, 9, 3, 5, 1, 2, 0, 1},
                                   {1, 1, 1, 3, 2, 3, 1, 1, 1},
                                   {1, 33, 31, 17, 19, 3, 1, 1, 1},
                                   {2, 16, 16, 32, 20, 3, 2, 1, 1},
                                   {1, 11, 13, 9, 7, 3, 2, 1, 0},
                                   {1, 2, 3, 1, 1, 3, 1, 1, 1},
                                   {2, 20, 20, 24, 40, 3, 1, 1, 1},
                                   {1, 45, 40, 8, 12, 3, 1, 1, 1},
                                   {2, 67, 61, 6, 5, 3, 2, 1, 0},
                                   /* K = 360, 576: GEMM slices that end inside a window */
                                   {2, 14, 15, 40, 33, 3, 2, 1, 1},
                                   {1, 24, 22, 64, 70, 3, 1, 1, 1},
                                   {1, 9, 7, 1, 16, 3, 1, 1, 1}};
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        const int *c = cases[t];
        int N = c[0], H = c[1], W = c[2], Ci = c[3], Co = c[4], k = c[5], s = c[6], p = c[7];
        int64_t Ho = (H + 2 * p - k) / s + 1, Wo = (W + 2 * p - k) / s + 1;
        buf x = mkbuf(4, N, H, W, Ci), w = mkbuf(4, Co, k, k, Ci), b = mkbuf(1, Co, 1, 1, 1),
            y = mkbuf(4, N, Ho, Wo, Co);
        rnd(&x, 60 + t, -1, 1), rnd(&w, 70 + t, -1, 1), rnd(&b, 80 + t, -1, 1);
        double *ref = dalloc(y.n);
        conv_ref(x.mem, w.mem, c[8] ? b.mem : NULL, x.t.ne, w.t.ne, s, p, Ho, Wo, ref);
        easel_err e = g_be->conv2d(g_be, &y.t, &x.t, &w.t, c[8] ? &b.t : NULL, s, p);
        CHECK(e == EASEL_OK, "conv2d case %zu: %s", t, easel_errmsg());
        char what[96];
        snprintf(what, sizeof what, "conv2d [%d,%d,%d,%d] k%d s%d p%d -> %d", N, H, W, Ci, k, s, p,
                 Co);
        expect_close(what, &y, ref, 2e-5, 1e-4);
        free(ref), bfree(&x), bfree(&w), bfree(&b), bfree(&y);
    }
}

static void test_attention(void) {
    static const int cases[][6] = {/* B, Lq, Lk, H, D, causal */
                                   {1, 1, 1, 1, 1, 0},
                                   {2, 5, 7, 2, 3, 0},
                                   {1, 9, 9, 3, 8, 1},
                                   {2, 77, 77, 2, 40, 1},
                                   {1, 300, 77, 2, 40, 0},
                                   {1, 600, 600, 1, 16, 1},
                                   {2, 40, 1100, 2, 8, 0},
                                   {1, 3, 1, 4, 5, 0},
                                   /* Lk >= 64: the AVX-512 kernels where the CPU has them
                                    * (odd Lq and Lk, D = 1, 40, 80, 72, 160, 520) */
                                   {2, 203, 290, 3, 40, 0},
                                   {1, 70, 256, 2, 80, 0},
                                   {1, 17, 130, 1, 72, 0},
                                   {2, 33, 300, 1, 160, 0},
                                   {1, 9, 200, 1, 520, 0},
                                   {1, 1, 4100, 1, 40, 0},
                                   {2, 5, 64, 3, 1, 0}};
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        const int *c = cases[t];
        int B = c[0], Lq = c[1], Lk = c[2], H = c[3], D = c[4];
        buf q = mkbuf(3, B, Lq, H * D, 1), k = mkbuf(3, B, Lk, H * D, 1),
            v = mkbuf(3, B, Lk, H * D, 1), o = mkbuf(3, B, Lq, H * D, 1);
        /* a spread of scores wide enough to exercise the max subtraction */
        rnd(&q, 90 + t, -2, 2), rnd(&k, 100 + t, -2, 2), rnd(&v, 110 + t, -1, 1);
        double *ref = dalloc(o.n);
        attention_ref(&q, &k, &v, H, c[5], ref);
        easel_err e = g_be->attention(g_be, &o.t, &q.t, &k.t, &v.t, H, c[5]);
        CHECK(e == EASEL_OK, "attention case %zu: %s", t, easel_errmsg());
        char what[96];
        snprintf(what, sizeof what, "attention B%d Lq%d Lk%d H%d D%d causal%d", B, Lq, Lk, H, D,
                 c[5]);
        /* a bf16 backend computes non-causal attention in bf16 (test_backend_bf16.c) */
        int bf = backend_cpu_precision(g_be) == PREC_BF16 && !c[5];
        expect_close(what, &o, ref, bf ? 2e-2 : 2e-5, bf ? 3e-2 : 1e-5);
        free(ref), bfree(&q), bfree(&k), bfree(&v), bfree(&o);
    }
}

/* ------------------------------------------------------- norms, softmax */

static void test_group_norm(void) {
    static const int cases[][6] = {/* N, L, C, groups, silu, offset */
                                   {1, 1, 4, 2, 0, 0},       {2, 15, 6, 3, 1, 0},
                                   {2, 130, 320, 32, 0, 0},  {1, 65, 64, 32, 1, 300},
                                   {1, 200, 12, 1, 0, 1000}, {3, 64, 10, 5, 1, 0}};
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        const int *c = cases[t];
        int N = c[0], L = c[1], C = c[2], G = c[3], cg = C / G;
        buf x = mkbuf(3, N, L, C, 1), g = mkbuf(1, C, 1, 1, 1), b = mkbuf(1, C, 1, 1, 1),
            y = mkbuf(3, N, L, C, 1);
        rnd(&x, 120 + t, -1, 1), rnd(&g, 130 + t, 0.5f, 1.5f), rnd(&b, 140 + t, -0.5f, 0.5f);
        for (int64_t i = 0; i < x.n; i++)
            x.mem[i] += (float)c[5];
        double *ref = dalloc(y.n);
        for (int n = 0; n < N; n++)
            for (int gi = 0; gi < G; gi++) {
                double m = 0, v = 0, cnt = (double)L * cg;
                for (int l = 0; l < L; l++)
                    for (int ch = gi * cg; ch < (gi + 1) * cg; ch++)
                        m += x.mem[((int64_t)n * L + l) * C + ch];
                m /= cnt;
                for (int l = 0; l < L; l++)
                    for (int ch = gi * cg; ch < (gi + 1) * cg; ch++) {
                        double d = x.mem[((int64_t)n * L + l) * C + ch] - m;
                        v += d * d;
                    }
                double rs = 1.0 / sqrt(v / cnt + 1e-5);
                for (int l = 0; l < L; l++)
                    for (int ch = gi * cg; ch < (gi + 1) * cg; ch++) {
                        int64_t i = ((int64_t)n * L + l) * C + ch;
                        double r = (x.mem[i] - m) * rs * g.mem[ch] + b.mem[ch];
                        ref[i] = c[4] ? r / (1 + exp(-r)) : r;
                    }
            }
        easel_err e = g_be->group_norm(g_be, &y.t, &x.t, &g.t, &b.t, G, 1e-5f, c[4]);
        CHECK(e == EASEL_OK, "group_norm case %zu: %s", t, easel_errmsg());
        char what[96];
        snprintf(what, sizeof what, "group_norm [%d,%d,%d] G%d silu%d offset %d", N, L, C, G, c[4],
                 c[5]);
        expect_close(what, &y, ref, 1e-5, 2e-5);
        /* in place gives the same */
        e = g_be->group_norm(g_be, &x.t, &x.t, &g.t, &b.t, G, 1e-5f, c[4]);
        CHECK(e == EASEL_OK && !memcmp(x.mem, y.mem, (size_t)y.n * 4), "group_norm in place");
        free(ref), bfree(&x), bfree(&g), bfree(&b), bfree(&y);
    }
}

static void test_layer_norm(void) {
    static const int cases[][4] = {/* rows, C, offset, 3d */
                                   {1, 1, 0, 0},
                                   {3, 7, 0, 0},
                                   {5, 320, 0, 0},
                                   {154, 768, 0, 1},
                                   {4, 33, 100, 0}};
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        int R = cases[t][0], C = cases[t][1];
        buf x = cases[t][3] ? mkbuf(3, 2, R / 2, C, 1) : mkbuf(2, R, C, 1, 1);
        buf y = cases[t][3] ? mkbuf(3, 2, R / 2, C, 1) : mkbuf(2, R, C, 1, 1);
        buf g = mkbuf(1, C, 1, 1, 1), b = mkbuf(1, C, 1, 1, 1);
        rnd(&x, 150 + t, -2, 2), rnd(&g, 160 + t, 0.5f, 1.5f), rnd(&b, 170 + t, -1, 1);
        for (int64_t i = 0; i < x.n; i++)
            x.mem[i] += (float)cases[t][2];
        double *ref = dalloc(y.n);
        for (int r = 0; r < R; r++) {
            const float *xr = x.mem + (int64_t)r * C;
            double m = 0, v = 0;
            for (int c = 0; c < C; c++)
                m += xr[c];
            m /= C;
            for (int c = 0; c < C; c++)
                v += (xr[c] - m) * (xr[c] - m);
            double rs = 1.0 / sqrt(v / C + 1e-5);
            for (int c = 0; c < C; c++)
                ref[(int64_t)r * C + c] = (xr[c] - m) * rs * g.mem[c] + b.mem[c];
        }
        easel_err e = g_be->layer_norm(g_be, &y.t, &x.t, &g.t, &b.t, 1e-5f);
        CHECK(e == EASEL_OK, "layer_norm case %zu: %s", t, easel_errmsg());
        expect_close("layer_norm", &y, ref, 1e-5, 2e-5);
        free(ref), bfree(&x), bfree(&g), bfree(&b), bfree(&y);
    }
}

static void test_softmax(void) {
    static const int cases[][3] = {/* rows, C, scale */
                                   {1, 1, 1},
                                   {3, 5, 1},
                                   {4, 77, 10},
                                   {2, 1000, 50},
                                   {7, 17, 1}};
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        int R = cases[t][0], C = cases[t][1];
        buf x = mkbuf(2, R, C, 1, 1), y = mkbuf(2, R, C, 1, 1);
        rnd(&x, 180 + t, -1, 1);
        for (int64_t i = 0; i < x.n; i++)
            x.mem[i] = x.mem[i] * (float)cases[t][2] + 30.0f;
        double *ref = dalloc(y.n);
        for (int r = 0; r < R; r++) {
            const float *xr = x.mem + (int64_t)r * C;
            double m = -INFINITY, s = 0;
            for (int c = 0; c < C; c++)
                m = xr[c] > m ? xr[c] : m;
            for (int c = 0; c < C; c++)
                s += exp(xr[c] - m);
            for (int c = 0; c < C; c++)
                ref[(int64_t)r * C + c] = exp(xr[c] - m) / s;
        }
        easel_err e = g_be->softmax(g_be, &y.t, &x.t);
        CHECK(e == EASEL_OK, "softmax: %s", easel_errmsg());
        expect_close("softmax", &y, ref, 1e-5, 1e-6);
        e = g_be->softmax(g_be, &x.t, &x.t);
        CHECK(e == EASEL_OK && !memcmp(x.mem, y.mem, (size_t)y.n * 4), "softmax in place");
        free(ref), bfree(&x), bfree(&y);
    }
}

/* ---------------------------------------------------------- elementwise */

static double ref_unary(double x, int op) {
    if (op == UNARY_SILU) return x / (1 + exp(-x));
    if (op == UNARY_GELU) return 0.5 * x * (1 + erf(x / sqrt(2.0)));
    if (op == UNARY_RELU) return x < 0 ? 0 : x;
    if (op == UNARY_TANH) return tanh(x);
    return x / (1 + exp(-1.702 * x));
}

static void test_unary(void) {
    static const int sizes[] = {1, 7, 1000, 50001};
    for (int op = 0; op < UNARY_COUNT; op++)
        for (size_t t = 0; t < sizeof sizes / sizeof sizes[0]; t++) {
            buf x = mkbuf(1, sizes[t], 1, 1, 1), y = mkbuf(1, sizes[t], 1, 1, 1);
            rnd(&x, 190 + t + 10 * op, -8, 8);
            double *ref = dalloc(y.n);
            for (int64_t i = 0; i < x.n; i++)
                ref[i] = ref_unary(x.mem[i], op);
            easel_err e = g_be->unary(g_be, &y.t, &x.t, (unary_op)op);
            CHECK(e == EASEL_OK, "unary: %s", easel_errmsg());
            char what[48];
            snprintf(what, sizeof what, "unary op %d n %d", op, sizes[t]);
            expect_close(what, &y, ref, 1e-5, 5e-6);
            e = g_be->unary(g_be, &x.t, &x.t, (unary_op)op);
            CHECK(e == EASEL_OK && !memcmp(x.mem, y.mem, (size_t)y.n * 4), "unary in place");
            free(ref), bfree(&x), bfree(&y);
        }
}

static void test_geglu(void) {
    static const int cases[][2] = {{1, 1}, {3, 37}, {10, 640}, {5, 16}};
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        int R = cases[t][0], C = cases[t][1];
        buf x = mkbuf(2, R, 2 * C, 1, 1), y = mkbuf(2, R, C, 1, 1);
        rnd(&x, 230 + t, -4, 4);
        double *ref = dalloc(y.n);
        for (int r = 0; r < R; r++)
            for (int c = 0; c < C; c++) {
                const float *xr = x.mem + (int64_t)r * 2 * C;
                ref[(int64_t)r * C + c] = xr[c] * ref_unary(xr[C + c], UNARY_GELU);
            }
        easel_err e = g_be->geglu(g_be, &y.t, &x.t);
        CHECK(e == EASEL_OK, "geglu: %s", easel_errmsg());
        expect_close("geglu", &y, ref, 1e-5, 1e-5);
        free(ref), bfree(&x), bfree(&y);
    }
}

static void test_binary(void) {
    /* a is [2,3,4,5]; b shapes right-aligned */
    static const int bshapes[][5] = {/* ndim, dims... */
                                     {4, 2, 3, 4, 5}, {1, 5},          {4, 2, 1, 1, 5}, {1, 1},
                                     {3, 3, 1, 5},    {4, 2, 3, 4, 1}, {2, 4, 1},       {2, 1, 5}};
    for (int op = 0; op < BINARY_COUNT; op++)
        for (size_t t = 0; t < sizeof bshapes / sizeof bshapes[0]; t++) {
            const int *bs = bshapes[t];
            int nd = bs[0];
            int64_t bd[4] = {1, 1, 1, 1};
            for (int i = 0; i < nd; i++)
                bd[4 - nd + i] = bs[1 + i];
            buf a = mkbuf(4, 2, 3, 4, 5), y = mkbuf(4, 2, 3, 4, 5);
            buf b = mkbuf(nd, bs[1], nd > 1 ? bs[2] : 1, nd > 2 ? bs[3] : 1, nd > 3 ? bs[4] : 1);
            rnd(&a, 240 + t, -1, 1), rnd(&b, 250 + t, -1, 1);
            double *ref = dalloc(y.n);
            for (int i0 = 0; i0 < 2; i0++)
                for (int i1 = 0; i1 < 3; i1++)
                    for (int i2 = 0; i2 < 4; i2++)
                        for (int i3 = 0; i3 < 5; i3++) {
                            int64_t ai = ((i0 * 3 + i1) * 4 + i2) * 5 + i3;
                            int64_t j0 = bd[0] == 1 ? 0 : i0, j1 = bd[1] == 1 ? 0 : i1,
                                    j2 = bd[2] == 1 ? 0 : i2, j3 = bd[3] == 1 ? 0 : i3;
                            double bv = b.mem[((j0 * bd[1] + j1) * bd[2] + j2) * bd[3] + j3];
                            ref[ai] = (float)(op == BINARY_ADD ? a.mem[ai] + bv : a.mem[ai] * bv);
                        }
            easel_err e = g_be->binary(g_be, &y.t, &a.t, &b.t, (binary_op)op);
            CHECK(e == EASEL_OK, "binary case %zu: %s", t, easel_errmsg());
            expect_close("binary", &y, ref, 0,
                         0); /* one rounding, same as the double-rounded ref */
            e = g_be->binary(g_be, &a.t, &a.t, &b.t, (binary_op)op);
            CHECK(e == EASEL_OK && !memcmp(a.mem, y.mem, (size_t)y.n * 4), "binary in place");
            free(ref), bfree(&a), bfree(&b), bfree(&y);
        }
    /* a large same-shape and a large bias case, across threads */
    buf a = mkbuf(3, 2, 1000, 77, 1), b = mkbuf(1, 77, 1, 1, 1), y = mkbuf(3, 2, 1000, 77, 1);
    rnd(&a, 260, -1, 1), rnd(&b, 261, -1, 1);
    double *ref = dalloc(y.n);
    for (int64_t i = 0; i < a.n; i++)
        ref[i] = (float)(a.mem[i] + b.mem[i % 77]);
    CHECK(g_be->binary(g_be, &y.t, &a.t, &b.t, BINARY_ADD) == EASEL_OK, "binary bias");
    expect_close("binary bias", &y, ref, 0, 0);
    free(ref), bfree(&a), bfree(&b), bfree(&y);
}

static void test_axpby(void) {
    static const int sizes[] = {1, 13, 40001};
    for (size_t t = 0; t < sizeof sizes / sizeof sizes[0]; t++) {
        int n = sizes[t];
        buf x = mkbuf(1, n, 1, 1, 1), z = mkbuf(1, n, 1, 1, 1), y = mkbuf(1, n, 1, 1, 1);
        rnd(&x, 270 + t, -1, 1), rnd(&z, 280 + t, -1, 1);
        double *ref = dalloc(n);
        for (int i = 0; i < n; i++)
            ref[i] = 0.75 * x.mem[i] - 1.5 * z.mem[i];
        CHECK(g_be->axpby(g_be, &y.t, 0.75f, &x.t, -1.5f, &z.t) == EASEL_OK, "axpby");
        expect_close("axpby", &y, ref, 1e-6, 1e-6);
        CHECK(g_be->axpby(g_be, &x.t, 0.75f, &x.t, -1.5f, &z.t) == EASEL_OK &&
                  !memcmp(x.mem, y.mem, (size_t)n * 4),
              "axpby in place (y == x)");
        rnd(&x, 270 + t, -1, 1);
        CHECK(g_be->axpby(g_be, &z.t, 0.75f, &x.t, -1.5f, &z.t) == EASEL_OK &&
                  !memcmp(z.mem, y.mem, (size_t)n * 4),
              "axpby in place (y == z)");
        free(ref), bfree(&x), bfree(&z), bfree(&y);
    }
}

/* ------------------------------------------------------------- layout */

static void test_upsample_concat(void) {
    static const int ups[][4] = {{1, 1, 1, 1}, {2, 3, 5, 7}, {1, 16, 9, 64}};
    for (size_t t = 0; t < sizeof ups / sizeof ups[0]; t++) {
        int N = ups[t][0], H = ups[t][1], W = ups[t][2], C = ups[t][3];
        buf x = mkbuf(4, N, H, W, C), y = mkbuf(4, N, 2 * H, 2 * W, C);
        rnd(&x, 290 + t, -1, 1);
        float *ref = malloc((size_t)y.n * 4);
        for (int n = 0; n < N; n++)
            for (int oy = 0; oy < 2 * H; oy++)
                for (int ox = 0; ox < 2 * W; ox++)
                    for (int c = 0; c < C; c++)
                        ref[(((int64_t)n * 2 * H + oy) * 2 * W + ox) * C + c] =
                            x.mem[(((int64_t)n * H + oy / 2) * W + ox / 2) * C + c];
        CHECK(g_be->upsample2x(g_be, &y.t, &x.t) == EASEL_OK, "upsample2x: %s", easel_errmsg());
        expect_exact("upsample2x", &y, ref);
        free(ref), bfree(&x), bfree(&y);
    }
    static const int cats[][4] = {
        /* rows, Ca, Cb, 3d */ {1, 1, 1, 0}, {6, 4, 5, 1}, {1000, 320, 640, 1}};
    for (size_t t = 0; t < sizeof cats / sizeof cats[0]; t++) {
        int R = cats[t][0], Ca = cats[t][1], Cb = cats[t][2], d3 = cats[t][3];
        buf a = d3 ? mkbuf(3, 2, R / 2, Ca, 1) : mkbuf(2, R, Ca, 1, 1);
        buf b = d3 ? mkbuf(3, 2, R / 2, Cb, 1) : mkbuf(2, R, Cb, 1, 1);
        buf y = d3 ? mkbuf(3, 2, R / 2, Ca + Cb, 1) : mkbuf(2, R, Ca + Cb, 1, 1);
        rnd(&a, 300 + t, -1, 1), rnd(&b, 310 + t, -1, 1);
        float *ref = malloc((size_t)y.n * 4);
        for (int r = 0; r < R; r++) {
            for (int c = 0; c < Ca; c++)
                ref[(int64_t)r * (Ca + Cb) + c] = a.mem[(int64_t)r * Ca + c];
            for (int c = 0; c < Cb; c++)
                ref[(int64_t)r * (Ca + Cb) + Ca + c] = b.mem[(int64_t)r * Cb + c];
        }
        CHECK(g_be->concat(g_be, &y.t, &a.t, &b.t) == EASEL_OK, "concat: %s", easel_errmsg());
        expect_exact("concat", &y, ref);
        free(ref), bfree(&a), bfree(&b), bfree(&y);
    }
}

/* pad2d: x placed at (top, left) of a larger y, zeros around it (diffusers'
 * Downsample2D pads (0,1,0,1): top = left = 0 with one more row and column). */
static void test_pad2d(void) {
    static const int cases[][7] = {/* N, H, W, C, Hy, Wy, top/left */ {1, 1, 1, 1, 2, 2, 0},
                                   {2, 5, 3, 7, 6, 4, 0},
                                   {1, 4, 4, 3, 7, 9, 2},
                                   {1, 8, 6, 64, 9, 7, 0}};
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        int N = cases[t][0], H = cases[t][1], W = cases[t][2], C = cases[t][3];
        int Hy = cases[t][4], Wy = cases[t][5], top = cases[t][6], left = top ? top + 1 : 0;
        buf x = mkbuf(4, N, H, W, C), y = mkbuf(4, N, Hy, Wy, C);
        rnd(&x, 330 + t, -1, 1);
        float *ref = calloc((size_t)y.n, 4);
        for (int n = 0; n < N; n++)
            for (int i = 0; i < H; i++)
                for (int j = 0; j < W; j++)
                    for (int c = 0; c < C; c++)
                        ref[(((int64_t)n * Hy + i + top) * Wy + j + left) * C + c] =
                            x.mem[(((int64_t)n * H + i) * W + j) * C + c];
        CHECK(g_be->pad2d(g_be, &y.t, &x.t, top, left) == EASEL_OK, "pad2d: %s", easel_errmsg());
        expect_exact("pad2d", &y, ref);
        free(ref), bfree(&y);
        /* too small an output, negative offsets, aliasing: refused */
        buf small = mkbuf(4, N, H + top, W + left - 1, C);
        CHECK(g_be->pad2d(g_be, &small.t, &x.t, top, left) == EASEL_EINVAL,
              "pad2d into a too small y must be EINVAL");
        CHECK(g_be->pad2d(g_be, &x.t, &x.t, 0, 0) == EASEL_EINVAL, "pad2d in place must be EINVAL");
        CHECK(g_be->pad2d(g_be, &small.t, &x.t, -1, 0) == EASEL_EINVAL,
              "pad2d with top < 0 must be EINVAL");
        bfree(&small), bfree(&x);
    }
}

static void test_timestep_embedding(void) {
    static const float ts[] = {0.0f, 1.0f, 2.5f, 17.0f, 999.0f};
    static const int cfg[][2] = {/* dim, flip */ {320, 1}, {7, 0}, {2, 1}};
    static const float shifts[] = {0.0f, 1.0f, 0.0f};
    for (size_t t = 0; t < sizeof cfg / sizeof cfg[0]; t++) {
        int dim = cfg[t][0], flip = cfg[t][1], half = dim / 2, N = 5;
        float shift = shifts[t];
        buf y = mkbuf(2, N, dim, 1, 1);
        double *ref = dalloc(y.n);
        for (int n = 0; n < N; n++)
            for (int i = 0; i < half; i++) {
                /* diffusers: exponent = -log(max_period)·arange(half)/(half - shift) in f32,
                 * emb = t·exp(exponent) in f32, then sin / cos */
                float ex = (float)(-log(10000.0)) * (float)i;
                ex = ex / (float)(half - (double)shift);
                float arg = ts[n] * (float)exp((double)ex);
                double s = sin((double)arg), c = cos((double)arg);
                ref[(int64_t)n * dim + i] = flip ? c : s;
                ref[(int64_t)n * dim + half + i] = flip ? s : c;
            }
        easel_err e = g_be->timestep_embedding(g_be, &y.t, ts, flip, shift, 10000.0f);
        CHECK(e == EASEL_OK, "timestep_embedding: %s", easel_errmsg());
        expect_close("timestep_embedding", &y, ref, 1e-6, 1e-6);
        if (dim % 2)
            for (int n = 0; n < N; n++)
                CHECK(y.mem[(int64_t)n * dim + dim - 1] == 0.0f, "odd pad");
        free(ref), bfree(&y);
    }
}

static void test_gather_rows(void) {
    buf tb = mkbuf(2, 10, 7, 1, 1), y = mkbuf(2, 4, 7, 1, 1);
    rnd(&tb, 320, -1, 1);
    int32_t ids[4] = {0, 9, 3, 3};
    float ref[28];
    for (int i = 0; i < 4; i++)
        memcpy(ref + i * 7, tb.mem + ids[i] * 7, 7 * 4);
    CHECK(g_be->gather_rows(g_be, &y.t, &tb.t, ids, 4) == EASEL_OK, "gather: %s", easel_errmsg());
    expect_exact("gather_rows", &y, ref);
    int32_t bad[4] = {0, 10, 1, 2}, neg[4] = {0, -1, 1, 2};
    CHECK(g_be->gather_rows(g_be, &y.t, &tb.t, bad, 4) == EASEL_EINVAL, "id 10 of 10 rows");
    CHECK(g_be->gather_rows(g_be, &y.t, &tb.t, neg, 4) == EASEL_EINVAL, "id -1");
    bfree(&tb), bfree(&y);
}

static void test_copy_convert(void) {
    int n = 1001;
    buf x = mkbuf(1, n, 1, 1, 1), y = mkbuf(1, n, 1, 1, 1);
    rnd(&x, 330, -70000, 70000);
    uint16_t *h = malloc((size_t)n * 2), *bh = malloc((size_t)n * 2);
    tensor th = tensor_1d(h, DT_F16, DEV_CPU, n), tb = tensor_1d(bh, DT_BF16, DEV_CPU, n);
    CHECK(g_be->upload(g_be, &th, x.mem) == EASEL_OK, "upload f16");
    int bad = 0;
    for (int i = 0; i < n; i++)
        bad += h[i] != f32_to_f16(x.mem[i]);
    CHECK(bad == 0, "upload to f16: %d values differ from f32_to_f16", bad);
    CHECK(g_be->download(g_be, &th, y.mem) == EASEL_OK, "download f16");
    bad = 0;
    for (int i = 0; i < n; i++)
        bad += y.mem[i] != f16_to_f32(h[i]) && !isinf(y.mem[i]);
    CHECK(bad == 0 && guard_ok(&y), "download from f16: %d values differ", bad);
    CHECK(g_be->copy(g_be, &tb, &x.t) == EASEL_OK, "copy f32 -> bf16");
    bad = 0;
    for (int i = 0; i < n; i++)
        bad += bh[i] != f32_to_bf16(x.mem[i]);
    CHECK(bad == 0, "copy to bf16: %d values differ", bad);
    CHECK(g_be->copy(g_be, &th, &tb) == EASEL_OK, "copy bf16 -> f16");
    bad = 0;
    for (int i = 0; i < n; i++)
        bad += h[i] != f32_to_f16(bf16_to_f32(bh[i]));
    CHECK(bad == 0, "copy bf16 to f16: %d values differ", bad);
    CHECK(g_be->copy(g_be, &y.t, &x.t) == EASEL_OK, "copy f32");
    expect_exact("copy f32", &y, x.mem);
    free(h), free(bh), bfree(&x), bfree(&y);
}

/* ------------------------------------------------------------- errors */

static void test_errors(void) {
    buf x = mkbuf(2, 4, 8, 1, 1), w = mkbuf(2, 3, 7, 1, 1), y = mkbuf(2, 4, 3, 1, 1);
    rnd(&x, 1, -1, 1), rnd(&w, 2, -1, 1);
    CHECK(g_be->linear(g_be, &y.t, &x.t, &w.t, NULL) == EASEL_EINVAL, "linear K mismatch");
    CHECK(strstr(easel_errmsg(), "linear") && strstr(easel_errmsg(), "[3,7]"),
          "message names op and shape: %s", easel_errmsg());
    tensor nul = x.t;
    nul.data = NULL;
    CHECK(g_be->unary(g_be, &y.t, &nul, UNARY_SILU) == EASEL_EINVAL, "NULL data");
    CHECK(g_be->softmax(g_be, &nul, &x.t) == EASEL_EINVAL, "NULL output");
    uint16_t hb[32];
    tensor h = tensor_2d(hb, DT_F16, DEV_CPU, 4, 8);
    CHECK(g_be->softmax(g_be, &h, &h) == EASEL_EUNSUPPORTED, "f16 op input");
    tensor on_gpu = x.t;
    on_gpu.dev = DEV_CUDA;
    CHECK(g_be->layer_norm(g_be, &y.t, &on_gpu, &w.t, &w.t, 1e-5f) == EASEL_EINVAL &&
              strstr(easel_errmsg(), "not a cpu tensor"),
          "a tensor of another device: %s", easel_errmsg());
    buf cx = mkbuf(4, 1, 5, 5, 3), cw = mkbuf(4, 2, 3, 3, 3), cy = mkbuf(4, 1, 5, 5, 2);
    CHECK(g_be->conv2d(g_be, &cy.t, &cx.t, &cw.t, NULL, 2, 1) == EASEL_EINVAL, "conv y shape");
    CHECK(strstr(easel_errmsg(), "conv2d") != NULL, "conv message: %s", easel_errmsg());
    buf cw2 = mkbuf(4, 2, 3, 3, 4);
    CHECK(g_be->conv2d(g_be, &cy.t, &cx.t, &cw2.t, NULL, 1, 1) == EASEL_EINVAL, "conv Ci");
    buf q = mkbuf(3, 1, 4, 8, 1), k = mkbuf(3, 1, 5, 8, 1), o = mkbuf(3, 1, 4, 8, 1);
    CHECK(g_be->attention(g_be, &o.t, &q.t, &k.t, &k.t, 2, 1) == EASEL_EINVAL, "causal Lq != Lk");
    CHECK(g_be->attention(g_be, &o.t, &q.t, &k.t, &k.t, 3, 0) == EASEL_EINVAL,
          "heads not dividing");
    buf g6 = mkbuf(1, 8, 1, 1, 1);
    CHECK(g_be->group_norm(g_be, &x.t, &x.t, &g6.t, &g6.t, 3, 1e-5f, 0) == EASEL_EINVAL,
          "groups not dividing C");
    buf b3 = mkbuf(1, 3, 1, 1, 1);
    CHECK(g_be->binary(g_be, &x.t, &x.t, &b3.t, BINARY_ADD) == EASEL_EINVAL, "no broadcast");
    CHECK(g_be->geglu(g_be, &x.t, &x.t) == EASEL_EINVAL, "geglu widths");
    CHECK(g_be->upsample2x(g_be, &cy.t, &cx.t) == EASEL_EINVAL, "upsample shape");
    CHECK(g_be->concat(g_be, &x.t, &x.t, &y.t) == EASEL_EINVAL, "concat widths");
    CHECK(g_be->bmm(g_be, &y.t, &x.t, &w.t, 1, 1.0f) == EASEL_EINVAL, "bmm K");
    void *p = NULL;
    CHECK(g_be->alloc(g_be, 1000, &p) == EASEL_OK && p && ((uintptr_t)p % 256) == 0,
          "alloc aligned");
    g_be->free(g_be, p);
    p = NULL;
    CHECK(g_be->alloc(g_be, SIZE_MAX / 2, &p) == EASEL_ENOMEM && !p, "alloc huge -> ENOMEM");
    CHECK(g_be->sync(g_be) == EASEL_OK, "sync");
    /* K = 0: y = bias */
    buf x0 = mkbuf(2, 3, 0, 1, 1), w0 = mkbuf(2, 2, 0, 1, 1), b0 = mkbuf(1, 2, 1, 1, 1),
        y0 = mkbuf(2, 3, 2, 1, 1);
    b0.mem[0] = 1.5f, b0.mem[1] = -2.0f;
    CHECK(g_be->linear(g_be, &y0.t, &x0.t, &w0.t, &b0.t) == EASEL_OK, "linear K=0: %s",
          easel_errmsg());
    float ref0[6] = {1.5f, -2.0f, 1.5f, -2.0f, 1.5f, -2.0f};
    expect_exact("linear K=0", &y0, ref0);
    bfree(&x0), bfree(&w0), bfree(&b0), bfree(&y0);
    bfree(&x), bfree(&w), bfree(&y), bfree(&cx), bfree(&cw), bfree(&cy), bfree(&cw2);
    bfree(&q), bfree(&k), bfree(&o), bfree(&g6), bfree(&b3);
}

/* -------------------------------------------------- threads, concurrency */

static void count_task(void *ctx, int task, int thread) {
    int *hits = ctx;
    __atomic_fetch_add(&hits[task], 1, __ATOMIC_RELAXED);
    if (thread < 0 || thread >= 3) __atomic_fetch_add(&hits[1000], 1, __ATOMIC_RELAXED);
}

static void test_threadpool(void) {
    for (int n = 1; n <= 3; n += 2) {
        threadpool *p = threadpool_create(n);
        REQUIRE(p != NULL, "threadpool_create(%d): %s", n, easel_errmsg());
        CHECK(threadpool_size(p) == n, "size");
        int *hits = calloc(1001, sizeof *hits);
        for (int rep = 0; rep < 50; rep++)
            threadpool_run(p, 1000, count_task, hits);
        int bad = 0;
        for (int i = 0; i < 1000; i++)
            bad += hits[i] != 50;
        CHECK(bad == 0 && hits[1000] == 0, "%d tasks not run exactly once per run (n=%d)", bad, n);
        /* many short runs: workers that wake late must not touch a finished run */
        memset(hits, 0, 1001 * sizeof *hits);
        long want = 0;
        for (int rep = 0; rep < 20000; rep++) {
            threadpool_run(p, 2 + rep % 3, count_task, hits);
            want += 2 + rep % 3;
        }
        long got = 0;
        for (int i = 0; i < 4; i++)
            got += hits[i];
        CHECK(got == want && hits[1000] == 0, "short runs: %ld tasks ran, %ld expected", got, want);
        free(hits);
        threadpool_free(p);
    }
}

typedef struct {
    backend *be;
    buf x, w, b, y, q, k, v, o, g, gy;
    easel_err err;
} work;

static void work_init(work *wk, backend *be) {
    memset(wk, 0, sizeof *wk);
    wk->be = be;
    wk->x = mkbuf(4, 1, 24, 20, 16), wk->w = mkbuf(4, 24, 3, 3, 16), wk->b = mkbuf(1, 24, 1, 1, 1);
    wk->y = mkbuf(4, 1, 24, 20, 24);
    wk->q = mkbuf(3, 2, 200, 64, 1), wk->k = mkbuf(3, 2, 77, 64, 1), wk->v = mkbuf(3, 2, 77, 64, 1);
    wk->o = mkbuf(3, 2, 200, 64, 1), wk->g = mkbuf(1, 24, 1, 1, 1),
    wk->gy = mkbuf(4, 1, 24, 20, 24);
    rnd(&wk->x, 400, -1, 1), rnd(&wk->w, 401, -1, 1), rnd(&wk->b, 402, -1, 1);
    rnd(&wk->q, 403, -1, 1), rnd(&wk->k, 404, -1, 1), rnd(&wk->v, 405, -1, 1);
    rnd(&wk->g, 406, 0.5f, 1.5f);
}

static void work_free(work *wk) {
    buf *bs[] = {&wk->x, &wk->w, &wk->b, &wk->y, &wk->q, &wk->k, &wk->v, &wk->o, &wk->g, &wk->gy};
    for (size_t i = 0; i < sizeof bs / sizeof bs[0]; i++)
        bfree(bs[i]);
}

static void *work_run(void *arg) {
    work *wk = arg;
    backend *be = wk->be;
    for (int rep = 0; rep < 5 && !wk->err; rep++) {
        wk->err = be->conv2d(be, &wk->y.t, &wk->x.t, &wk->w.t, &wk->b.t, 1, 1);
        if (!wk->err) wk->err = be->attention(be, &wk->o.t, &wk->q.t, &wk->k.t, &wk->v.t, 4, 0);
        if (!wk->err)
            wk->err = be->group_norm(be, &wk->gy.t, &wk->y.t, &wk->g.t, &wk->b.t, 8, 1e-5f, 1);
    }
    return NULL;
}

static void concurrent_backends(backend_precision prec) {
    backend *b1 = backend_cpu_create_prec(2, prec), *b2 = backend_cpu_create_prec(2, prec);
    REQUIRE(b1 && b2, "create: %s", easel_errmsg());
    CHECK(backend_cpu_threads(b1) == 2, "threads");
    work ref, w1, w2;
    work_init(&ref, b1), work_init(&w1, b1), work_init(&w2, b2);
    work_run(&ref);
    pthread_t t1, t2;
    pthread_create(&t1, NULL, work_run, &w1);
    pthread_create(&t2, NULL, work_run, &w2);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    CHECK(!ref.err && !w1.err && !w2.err, "errors %d %d %d", ref.err, w1.err, w2.err);
    size_t yb = (size_t)ref.gy.n * 4, ob = (size_t)ref.o.n * 4;
    CHECK(!memcmp(w1.gy.mem, ref.gy.mem, yb) && !memcmp(w2.gy.mem, ref.gy.mem, yb),
          "conv + group_norm differ between concurrent backends");
    CHECK(!memcmp(w1.o.mem, ref.o.mem, ob) && !memcmp(w2.o.mem, ref.o.mem, ob),
          "attention differs between concurrent backends");
    CHECK(guard_ok(&w1.gy) && guard_ok(&w2.o), "guards");
    work_free(&ref), work_free(&w1), work_free(&w2);
    backend_destroy(b1);
    backend_destroy(b2);
}

static void test_concurrent_backends(void) {
    concurrent_backends(PREC_FP32);
}

/* two bf16 backends, each with its own OpenMP team, from two threads */
static void test_concurrent_bf16_backends(void) {
    backend *probe = backend_cpu_create_prec(1, PREC_BF16);
    if (!probe) SKIP("this CPU has neither AMX-BF16 nor AVX512-BF16");
    backend_destroy(probe);
    concurrent_backends(PREC_BF16);
}

/* lora_merge: y = w + scale·up·down against a double reference, for linear
 * [N,K] and conv [N,KH,KW,Ci] weights, in place and not, several ranks and
 * GEMM splits; scale 0 leaves w bit for bit; weights stored in weight_dtype
 * (bf16 on a bf16 backend, conv weights then in its blocked layout): one
 * rounding of the fp32 result, so every value is the reference rounded to
 * bf16 or its neighbour (the f32 sum rounds first; near 0, within the fp32
 * sum's error), most exactly. */
static void test_lora_merge(void) {
    static const int cases[][6] = {/* ndim, N, KH, KW, Ci (K = KH·KW·Ci), R */
                                   {2, 1, 1, 1, 1, 1},     {2, 7, 1, 1, 13, 3},
                                   {2, 320, 1, 1, 768, 4}, {2, 130, 1, 1, 70, 37},
                                   {4, 64, 3, 3, 32, 8},   {4, 320, 1, 1, 320, 16},
                                   {4, 33, 3, 3, 17, 5},   {2, 640, 1, 1, 2560, 64}};
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        const int *c = cases[t];
        int64_t N = c[1], K = (int64_t)c[2] * c[3] * c[4], R = c[5];
        int64_t wne[4] = {N, c[2], c[3], c[4]}, w2[2] = {N, K};
        const int64_t *ne = c[0] == 4 ? wne : w2;
        buf w =
            mkbuf(c[0], ne[0], c[0] == 4 ? ne[1] : K, c[0] == 4 ? ne[2] : 1, c[0] == 4 ? ne[3] : 1);
        buf y =
            mkbuf(c[0], ne[0], c[0] == 4 ? ne[1] : K, c[0] == 4 ? ne[2] : 1, c[0] == 4 ? ne[3] : 1);
        buf up = mkbuf(2, N, R, 1, 1), dn = mkbuf(2, R, K, 1, 1);
        rnd(&w, 500 + t, -1, 1), rnd(&up, 510 + t, -1, 1), rnd(&dn, 520 + t, -1, 1);
        float scale = 0.37f;
        double *ref = dalloc(N * K);
        for (int64_t i = 0; i < N; i++)
            for (int64_t j = 0; j < K; j++) {
                double acc = 0;
                for (int64_t r = 0; r < R; r++)
                    acc += (double)up.mem[i * R + r] * dn.mem[r * K + j];
                ref[i * K + j] = (double)w.mem[i * K + j] + scale * acc;
            }
        char what[96];
        snprintf(what, sizeof what, "lora_merge %lldx%lld r%lld %dD", (long long)N, (long long)K,
                 (long long)R, c[0]);
        CHECK(g_be->lora_merge(g_be, &y.t, &w.t, &up.t, &dn.t, scale) == EASEL_OK, "%s: %s", what,
              easel_errmsg());
        expect_close(what, &y, ref, 1e-6, 1e-5 * (1 + (double)R / 16));
        /* in place gives the same bits */
        CHECK(g_be->lora_merge(g_be, &w.t, &w.t, &up.t, &dn.t, scale) == EASEL_OK, "%s in place",
              what);
        CHECK(!memcmp(w.mem, y.mem, sizeof(float) * (size_t)y.n) && guard_ok(&w),
              "%s: in place differs", what);
        /* scale 0 copies w exactly */
        rnd(&w, 500 + t, -1, 1);
        CHECK(g_be->lora_merge(g_be, &y.t, &w.t, &up.t, &dn.t, 0.0f) == EASEL_OK, "%s: scale 0",
              what);
        expect_exact("lora_merge scale 0", &y, w.mem);
        if (g_be->weight_dtype != g_be->act_dtype) { /* bf16 weights, blocked when conv */
            tensor wb, yb;
            CHECK(backend_tensor_alloc(g_be, &wb, g_be->weight_dtype, c[0], ne) == EASEL_OK &&
                      backend_tensor_alloc(g_be, &yb, g_be->weight_dtype, c[0], ne) == EASEL_OK,
                  "alloc bf16");
            float *wr = malloc(sizeof(float) * (size_t)y.n);
            CHECK(g_be->upload(g_be, &wb, w.mem) == EASEL_OK && g_be->download(g_be, &wb, wr) == 0,
                  "bf16 round trip");
            for (int64_t i = 0; i < N; i++)
                for (int64_t j = 0; j < K; j++) {
                    double acc = 0;
                    for (int64_t r = 0; r < R; r++)
                        acc += (double)up.mem[i * R + r] * dn.mem[r * K + j];
                    ref[i * K + j] = (double)wr[i * K + j] + scale * acc;
                }
            CHECK(g_be->lora_merge(g_be, &yb, &wb, &up.t, &dn.t, scale) == EASEL_OK, "%s bf16: %s",
                  what, easel_errmsg());
            CHECK(g_be->download(g_be, &yb, y.mem) == EASEL_OK, "download bf16");
            int64_t exact = 0, far = 0;
            for (int64_t i = 0; i < y.n; i++) {
                float r = bf16_to_f32(f32_to_bf16((float)ref[i]));
                /* a bf16 ulp, or the fp32 sum's own error where the result is near 0 */
                float ulp = fmaxf(fabsf(r) * (1.0f / 128.0f), 1e-5f * (1.0f + (float)R / 16));
                exact += y.mem[i] == r;
                far += fabsf(y.mem[i] - r) > ulp;
            }
            CHECK(far == 0 && exact >= y.n * 9 / 10, "%s bf16: %lld of %lld exact, %lld off", what,
                  (long long)exact, (long long)y.n, (long long)far);
            CHECK(g_be->lora_merge(g_be, &yb, &wb, &up.t, &dn.t, 0.0f) == EASEL_OK &&
                      g_be->download(g_be, &yb, y.mem) == EASEL_OK,
                  "bf16 scale 0");
            CHECK(!memcmp(y.mem, wr, sizeof(float) * (size_t)y.n), "%s bf16: scale 0 changed w",
                  what);
            free(wr);
            backend_tensor_free(g_be, &wb), backend_tensor_free(g_be, &yb);
        }
        free(ref);
        bfree(&w), bfree(&y), bfree(&up), bfree(&dn);
    }
    /* the contract: f32 factors, matching shapes */
    buf w = mkbuf(2, 8, 6, 1, 1), up = mkbuf(2, 8, 2, 1, 1), dn = mkbuf(2, 2, 6, 1, 1);
    buf bad = mkbuf(2, 2, 5, 1, 1);
    rnd(&w, 1, -1, 1), rnd(&up, 2, -1, 1), rnd(&dn, 3, -1, 1);
    CHECK(g_be->lora_merge(g_be, &w.t, &w.t, &up.t, &bad.t, 1.0f) == EASEL_EINVAL, "down [2,5]");
    CHECK(g_be->lora_merge(g_be, &w.t, &w.t, &dn.t, &up.t, 1.0f) == EASEL_EINVAL, "swapped");
    CHECK(g_be->lora_merge(g_be, &w.t, &w.t, &up.t, &dn.t, NAN) == EASEL_EINVAL, "NaN scale");
    tensor h = up.t;
    h.dt = DT_F16;
    CHECK(g_be->lora_merge(g_be, &w.t, &w.t, &h, &dn.t, 1.0f) == EASEL_EINVAL, "f16 up");
    bfree(&w), bfree(&up), bfree(&dn), bfree(&bad);
}

static void run_ops_prec(int threads, backend_precision prec) {
    g_be = backend_cpu_create_prec(threads, prec);
    if (!g_be) {
        printf("  FAIL backend_cpu_create(%d): %s\n", threads, easel_errmsg());
        test_failed_++;
        return;
    }
    printf("  backend cpu %s, %d thread(s)\n", backend_precision_name(backend_cpu_precision(g_be)),
           backend_cpu_threads(g_be));
    RUN(test_linear);
    RUN(test_bmm);
    RUN(test_conv2d);
    RUN(test_attention);
    RUN(test_group_norm);
    RUN(test_layer_norm);
    RUN(test_softmax);
    RUN(test_unary);
    RUN(test_geglu);
    RUN(test_binary);
    RUN(test_axpby);
    RUN(test_upsample_concat);
    RUN(test_timestep_embedding);
    RUN(test_gather_rows);
    RUN(test_pad2d);
    RUN(test_copy_convert);
    RUN(test_lora_merge);
    RUN(test_errors);
    backend_destroy(g_be);
    g_be = NULL;
}

static void run_ops(int threads) {
    run_ops_prec(threads, PREC_FP32);
}

int main(void) {
    RUN(test_threadpool);
    run_ops(1);
    run_ops(3);
    /* where the CPU has AVX-512, both GEMM paths whatever OpenBLAS's kernels */
    printf("  EASEL_CPU_AVX512=1 (our GEMM, attention kernels where the CPU has AVX-512)\n");
    setenv("EASEL_CPU_AVX512", "1", 1);
    run_ops(2);
    printf("  EASEL_CPU_AVX512=0 (OpenBLAS paths only)\n");
    setenv("EASEL_CPU_AVX512", "0", 1);
    run_ops(2);
    unsetenv("EASEL_CPU_AVX512");
    /* a bf16 backend runs every op with f32 weights as fp32 does (on its OpenMP team) */
    backend *probe = backend_cpu_create_prec(1, PREC_BF16);
    if (probe) {
        backend_destroy(probe);
        run_ops_prec(2, PREC_BF16);
        run_ops_prec(1, PREC_BF16);
    } else {
        printf("  skipped: fp32 ops on a bf16 backend: this CPU has neither AMX-BF16 nor "
               "AVX512-BF16\n");
        test_skipped_++;
    }
    RUN(test_concurrent_backends);
    RUN(test_concurrent_bf16_backends);
    return test_summary();
}
