/* The CPU backend's bf16 path (backend_cpu_create_prec(PREC_BF16), oneDNN):
 * linear, conv2d, attention and gather_rows with bf16 weights against
 * double-precision references written here, on random inputs (fixed seeds),
 * with guard words after every output; the precision choice (auto, bf16,
 * fp32, EASEL_PRECISION) and its errors. The same checks run on every ISA
 * this CPU offers: natively (AMX where present), then in child processes with
 * oneDNN capped by ONEDNN_MAX_CPU_ISA to AVX512_CORE_BF16 (the AVX512-BF16
 * kernels of CPUs without AMX) and to AVX2 (no bf16: auto falls back to fp32,
 * bf16 is refused).
 * Tolerances (|x|, |w| <= 1):
 *   linear, conv2d vs a reference on the bf16-rounded x and w (what the
 *     kernels multiply; the only difference left is fp32 accumulation):
 *     rel L2 <= 2e-5, max abs <= 1e-4, as the fp32 ops;
 *   the same vs the reference on the unrounded f32 inputs (the error bf16
 *     costs): rel L2 <= 1e-2, max abs <= 2e-2 · max |ref| (measured rel L2
 *     <= 3e-3);
 *   attention vs the unrounded reference: rel L2 <= 2e-2, max abs <= 3e-2
 *     (q, k, v and the probabilities are rounded to bf16; measured < 8e-3);
 *   gather_rows from a bf16 table: bit-exact against bf16_to_f32. */
#include <spawn.h>
#include <stdint.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../cli/backends.h"
#include "../engine/backend.h"
#include "../engine/cpu_features.h"
#include "test.h"
#include "test_ops_ref.h"

extern char **environ;

static backend *g_be;
static double g_worst_l2[3]; /* measured errors vs the unrounded refs: linear, conv, attention */

/* x rounded to bf16, as the backend rounds its operands. */
static float *rounded(const buf *x) {
    float *r = malloc((size_t)(x->n ? x->n : 1) * sizeof(float));
    for (int64_t i = 0; i < x->n; i++)
        r[i] = bf16_to_f32(f32_to_bf16(x->mem[i]));
    return r;
}

/* The bf16 weight tensor the loader would make of w (upload converts). */
static tensor bf16_weight(const buf *w) {
    tensor t;
    if (backend_tensor_alloc(g_be, &t, DT_BF16, w->t.ndim, w->t.ne)) return (tensor){0};
    if (g_be->upload(g_be, &t, w->mem)) backend_tensor_free(g_be, &t);
    return t;
}

static double max_abs_ref(const double *ref, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++)
        m = fabs(ref[i]) > m ? fabs(ref[i]) : m;
    return m;
}

/* Guard intact, rel L2 <= rtol, max abs <= atol (atol < 0: -atol · max |ref|). */
static void expect_close(const char *what, const buf *y, const double *ref, double rtol,
                         double atol, double *worst) {
    if (atol < 0) atol = -atol * max_abs_ref(ref, y->n);
    CHECK(guard_ok(y), "%s: guard words after the output were overwritten", what);
    double e = test_rel_l2(y->mem, ref, (long)y->n), m = max_abs_d(y->mem, ref, y->n);
    CHECK(e <= rtol, "%s: rel L2 %.3g > %.3g", what, e, rtol);
    CHECK(m <= atol, "%s: max abs %.3g > %.3g", what, m, atol);
    if (worst && e > *worst) *worst = e;
}

/* ------------------------------------------------------------- linear */

static void test_linear_bf16(void) {
    static const int cases[][5] = {/* lead, M, K, N, bias */
                                   {1, 1, 1, 1, 0},
                                   {1, 3, 5, 7, 1},
                                   {1, 17, 33, 9, 1},
                                   {2, 65, 40, 130, 1},
                                   {1, 300, 200, 40, 1},
                                   {1, 8, 256, 1100, 1},
                                   {2, 77, 64, 96, 0},
                                   {1, 130, 600, 333, 1},
                                   {1, 512, 320, 640, 1},
                                   {1, 2, 1280, 320, 1},
                                   /* sliced by rows / by columns over the pool's threads */
                                   {3, 211, 320, 128, 1},
                                   {1, 16, 640, 1280, 1}};
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        int L = cases[t][0], M = cases[t][1], K = cases[t][2], N = cases[t][3], hb = cases[t][4];
        buf x = mkbuf(3, L, M, K, 1), w = mkbuf(2, N, K, 1, 1), b = mkbuf(1, N, 1, 1, 1),
            y = mkbuf(3, L, M, N, 1);
        rnd(&x, 10 + t, -1, 1), rnd(&w, 20 + t, -1, 1), rnd(&b, 30 + t, -1, 1);
        tensor wb = bf16_weight(&w);
        REQUIRE(wb.data, "bf16 weights: %s", easel_errmsg());
        easel_err e = g_be->linear(g_be, &y.t, &x.t, &wb, hb ? &b.t : NULL);
        CHECK(e == EASEL_OK, "linear case %zu: %s", t, easel_errmsg());
        double *ref = dalloc(y.n);
        float *xr = rounded(&x), *wr = rounded(&w);
        char what[80];
        snprintf(what, sizeof what, "linear bf16 %dx%dx%dx%d (rounded ref)", L, M, K, N);
        linear_ref(xr, wr, hb ? b.mem : NULL, (int64_t)L * M, K, N, ref);
        expect_close(what, &y, ref, 2e-5, 1e-4, NULL);
        snprintf(what, sizeof what, "linear bf16 %dx%dx%dx%d (f32 ref)", L, M, K, N);
        linear_ref(x.mem, w.mem, hb ? b.mem : NULL, (int64_t)L * M, K, N, ref);
        expect_close(what, &y, ref, 1e-2, -2e-2, &g_worst_l2[0]);
        free(ref), free(xr), free(wr);
        backend_tensor_free(g_be, &wb);
        bfree(&x), bfree(&w), bfree(&b), bfree(&y);
    }
}

/* ------------------------------------------------------------- conv2d */

static void test_conv2d_bf16(void) {
    static const int cases[][9] = {
        /* N, H, W, Ci, Co, k, stride, pad, bias */
        {1, 5, 7, 3, 4, 3, 1, 1, 1},
        {2, 9, 8, 5, 6, 3, 2, 1, 1},
        {1, 7, 7, 4, 3, 3, 2, 0, 0},
        {1, 8, 8, 4, 3, 3, 2, 0, 1}, /* H - 3 odd: right pad < 0 */
        {2, 6, 5, 8, 16, 1, 1, 0, 1},
        {1, 9, 9, 3, 5, 1, 2, 0, 1},
        {1, 1, 1, 3, 2, 3, 1, 1, 1},
        {1, 33, 31, 17, 19, 3, 1, 1, 1},
        {2, 16, 16, 32, 20, 3, 2, 1, 1},
        {2, 20, 20, 24, 40, 3, 1, 1, 1},
        {2, 67, 61, 6, 5, 3, 2, 1, 0},
        {1, 24, 22, 64, 70, 3, 1, 1, 1},
        {2, 8, 8, 320, 64, 3, 1, 1, 1},
        {1, 16, 16, 4, 320, 3, 1, 1, 1}, /* the UNet's conv_in */
        {1, 16, 16, 128, 3, 3, 1, 1, 1}, /* the VAE's conv_out */
        /* channels that are multiples of 32: weights stored blocked */
        {2, 9, 8, 32, 64, 3, 1, 1, 1},
        {1, 16, 15, 64, 32, 3, 2, 1, 1},
        {2, 6, 6, 64, 64, 1, 1, 0, 1},
        {2, 4, 4, 320, 640, 3, 1, 1, 1},
        /* one image cut into bands of output rows (first, middle, last) */
        {1, 37, 20, 64, 64, 3, 1, 1, 1},
        {1, 33, 16, 32, 64, 3, 2, 1, 1},
        {1, 30, 9, 32, 32, 3, 2, 0, 0}};
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        const int *c = cases[t];
        int N = c[0], H = c[1], W = c[2], Ci = c[3], Co = c[4], k = c[5], s = c[6], p = c[7];
        int64_t Ho = (H + 2 * p - k) / s + 1, Wo = (W + 2 * p - k) / s + 1;
        buf x = mkbuf(4, N, H, W, Ci), w = mkbuf(4, Co, k, k, Ci), b = mkbuf(1, Co, 1, 1, 1),
            y = mkbuf(4, N, Ho, Wo, Co);
        rnd(&x, 60 + t, -1, 1), rnd(&w, 70 + t, -1, 1), rnd(&b, 80 + t, -1, 1);
        tensor wb = bf16_weight(&w);
        REQUIRE(wb.data, "bf16 weights: %s", easel_errmsg());
        easel_err e = g_be->conv2d(g_be, &y.t, &x.t, &wb, c[8] ? &b.t : NULL, s, p);
        CHECK(e == EASEL_OK, "conv2d case %zu: %s", t, easel_errmsg());
        double *ref = dalloc(y.n);
        float *xr = rounded(&x), *wr = rounded(&w);
        char what[96];
        snprintf(what, sizeof what, "conv2d bf16 [%d,%d,%d,%d] k%d s%d p%d -> %d (rounded ref)", N,
                 H, W, Ci, k, s, p, Co);
        conv_ref(xr, wr, c[8] ? b.mem : NULL, x.t.ne, w.t.ne, s, p, Ho, Wo, ref);
        expect_close(what, &y, ref, 2e-5, 1e-4, NULL);
        snprintf(what, sizeof what, "conv2d bf16 [%d,%d,%d,%d] k%d s%d p%d -> %d (f32 ref)", N, H,
                 W, Ci, k, s, p, Co);
        conv_ref(x.mem, w.mem, c[8] ? b.mem : NULL, x.t.ne, w.t.ne, s, p, Ho, Wo, ref);
        expect_close(what, &y, ref, 1e-2, -2e-2, &g_worst_l2[1]);
        free(ref), free(xr), free(wr);
        backend_tensor_free(g_be, &wb);
        bfree(&x), bfree(&w), bfree(&b), bfree(&y);
    }
}

/* ---------------------------------------------------------- attention */

static void test_attention_bf16(void) {
    static const int cases[][5] = {/* B, Lq, Lk, H, D */
                                   {1, 1, 1, 1, 1},      {2, 5, 7, 2, 3},      {1, 300, 77, 2, 40},
                                   {2, 40, 1100, 2, 8},  {2, 203, 290, 3, 40}, {1, 70, 256, 2, 80},
                                   {2, 33, 300, 1, 160}, {1, 9, 200, 1, 520},  {1, 1, 4100, 1, 40},
                                   {2, 130, 64, 8, 40}};
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        const int *c = cases[t];
        int B = c[0], Lq = c[1], Lk = c[2], H = c[3], D = c[4];
        buf q = mkbuf(3, B, Lq, H * D, 1), k = mkbuf(3, B, Lk, H * D, 1),
            v = mkbuf(3, B, Lk, H * D, 1), o = mkbuf(3, B, Lq, H * D, 1);
        rnd(&q, 90 + t, -2, 2), rnd(&k, 100 + t, -2, 2), rnd(&v, 110 + t, -1, 1);
        double *ref = dalloc(o.n);
        attention_ref(&q, &k, &v, H, 0, ref);
        easel_err e = g_be->attention(g_be, &o.t, &q.t, &k.t, &v.t, H, 0);
        CHECK(e == EASEL_OK, "attention case %zu: %s", t, easel_errmsg());
        char what[96];
        snprintf(what, sizeof what, "attention bf16 B%d Lq%d Lk%d H%d D%d", B, Lq, Lk, H, D);
        expect_close(what, &o, ref, 2e-2, 3e-2, &g_worst_l2[2]);
        free(ref), bfree(&q), bfree(&k), bfree(&v), bfree(&o);
    }
}

static void test_gather_bf16(void) {
    buf tb = mkbuf(2, 10, 7, 1, 1), y = mkbuf(2, 4, 7, 1, 1);
    rnd(&tb, 320, -1, 1);
    tensor t = bf16_weight(&tb);
    REQUIRE(t.data, "bf16 table: %s", easel_errmsg());
    int32_t ids[4] = {0, 9, 3, 3};
    CHECK(g_be->gather_rows(g_be, &y.t, &t, ids, 4) == EASEL_OK, "gather: %s", easel_errmsg());
    const uint16_t *h = t.data;
    int bad = 0;
    for (int i = 0; i < 4; i++)
        for (int c = 0; c < 7; c++)
            bad += y.mem[i * 7 + c] != bf16_to_f32(h[ids[i] * 7 + c]);
    CHECK(bad == 0 && guard_ok(&y), "gather from bf16: %d values differ", bad);
    backend_tensor_free(g_be, &t);
    bfree(&tb), bfree(&y);
}

/* Conv weights (4-D bf16) may be stored blocked: upload, download and copy
 * still give the plain values, whatever the layout. */
static void test_weight_layout(void) {
    static const int64_t shapes[][4] = {
        {64, 3, 3, 32}, {320, 3, 3, 320}, {4, 3, 3, 320}, {32, 1, 1, 64}, {3, 3, 3, 128}};
    for (size_t t = 0; t < sizeof shapes / sizeof shapes[0]; t++) {
        const int64_t *ne = shapes[t];
        buf w = mkbuf(4, ne[0], ne[1], ne[2], ne[3]), back = mkbuf(4, ne[0], ne[1], ne[2], ne[3]);
        rnd(&w, 500 + t, -1, 1);
        float *wr = rounded(&w);
        tensor wb = bf16_weight(&w), w2;
        REQUIRE(wb.data && !backend_tensor_alloc(g_be, &w2, DT_BF16, 4, ne), "alloc: %s",
                easel_errmsg());
        CHECK(g_be->download(g_be, &wb, back.mem) == EASEL_OK &&
                  !memcmp(back.mem, wr, (size_t)w.n * 4),
              "[%lld,%lld,%lld,%lld]: download is not the rounded weights", (long long)ne[0],
              (long long)ne[1], (long long)ne[2], (long long)ne[3]);
        CHECK(g_be->copy(g_be, &back.t, &wb) == EASEL_OK && !memcmp(back.mem, wr, (size_t)w.n * 4),
              "copy bf16 weight -> f32");
        CHECK(g_be->copy(g_be, &w2, &w.t) == EASEL_OK && !memcmp(w2.data, wb.data, (size_t)w.n * 2),
              "copy f32 -> bf16 weight stores as upload does");
        int64_t flat[4] = {ne[0], ne[1] * ne[2], ne[3], 1};
        tensor other = tensor_make(NULL, DT_BF16, DEV_CPU, 3, flat);
        other.data = malloc((size_t)w.n * 2);
        CHECK(g_be->copy(g_be, &other, &wb) == EASEL_OK, "copy to another shape");
        int bad = 0;
        for (int64_t i = 0; i < w.n; i++)
            bad += bf16_to_f32(((uint16_t *)other.data)[i]) != wr[i];
        CHECK(bad == 0, "copy to a 3-d bf16 tensor: %d values not the plain weights", bad);
        free(other.data), free(wr);
        backend_tensor_free(g_be, &wb), backend_tensor_free(g_be, &w2);
        bfree(&w), bfree(&back);
    }
}

/* bf16 weights only where the backend stores them: an fp32 backend refuses them. */
static void test_weight_dtypes(void) {
    CHECK(g_be->weight_dtype == DT_BF16 && g_be->act_dtype == DT_F32, "bf16 backend dtypes");
    CHECK(backend_cpu_precision(g_be) == PREC_BF16, "precision reported");
    backend *f = backend_cpu_create(1);
    REQUIRE(f, "fp32 backend: %s", easel_errmsg());
    buf x = mkbuf(2, 3, 4, 1, 1), w = mkbuf(2, 2, 4, 1, 1), y = mkbuf(2, 3, 2, 1, 1);
    rnd(&x, 1, -1, 1), rnd(&w, 2, -1, 1);
    tensor wb = bf16_weight(&w);
    CHECK(f->linear(f, &y.t, &x.t, &wb, NULL) == EASEL_EUNSUPPORTED, "bf16 w on fp32: %s",
          easel_errmsg());
    CHECK(g_be->softmax(g_be, &wb, &wb) == EASEL_EUNSUPPORTED, "bf16 activations refused");
    backend_tensor_free(g_be, &wb);
    backend_destroy(f);
    bfree(&x), bfree(&w), bfree(&y);
}

/* ------------------------------------------------ precision, children */

static void test_precision_api(void) {
    backend_precision p;
    CHECK(!backend_precision_parse("bf16", &p) && p == PREC_BF16, "parse bf16");
    CHECK(!backend_precision_parse("fp32", &p) && p == PREC_FP32, "parse fp32");
    CHECK(!backend_precision_parse("auto", &p) && p == PREC_AUTO, "parse auto");
    CHECK(backend_precision_parse("fp16", &p) == EASEL_EINVAL && strstr(easel_errmsg(), "fp16"),
          "parse fp16 refused: %s", easel_errmsg());
    setenv("EASEL_PRECISION", "bogus", 1);
    CHECK(backend_precision_env(&p) == EASEL_EINVAL, "bad EASEL_PRECISION");
    CHECK(backend_auto_create("cpu", 1) == NULL, "backend_auto_create refuses it");
    setenv("EASEL_PRECISION", "fp32", 1);
    backend *be = backend_auto_create("cpu", 1);
    CHECK(be && backend_cpu_precision(be) == PREC_FP32, "EASEL_PRECISION=fp32");
    backend_destroy(be);
    unsetenv("EASEL_PRECISION");
    char d[256];
    printf("  %s\n  %s\n", backend_cpu_describe(PREC_BF16, d, sizeof d),
           backend_cpu_describe(PREC_FP32, d + 128, 128));
}

/* Where oneDNN sees no bf16 (ONEDNN_MAX_CPU_ISA=AVX2 in a child): auto is
 * fp32, bf16 is an error naming the ISA. */
static void test_no_bf16(void) {
    backend *be = backend_cpu_create_prec(1, PREC_AUTO);
    REQUIRE(be, "auto: %s", easel_errmsg());
    CHECK(backend_cpu_precision(be) == PREC_FP32 && be->weight_dtype == DT_F32, "auto -> fp32");
    backend_destroy(be);
    CHECK(backend_cpu_create_prec(1, PREC_BF16) == NULL, "bf16 refused");
    CHECK(strstr(easel_errmsg(), "AVX512-BF16") && strstr(easel_errmsg(), "avx2"), "message: %s",
          easel_errmsg());
}

static void run_bf16(int threads) {
    g_be = backend_cpu_create_prec(threads, PREC_BF16);
    if (!g_be) {
        printf("  FAIL backend_cpu_create_prec(%d, bf16): %s\n", threads, easel_errmsg());
        test_failed_++;
        return;
    }
    char d[256];
    printf("  %s, %d thread(s)\n", backend_cpu_describe(PREC_BF16, d, sizeof d), threads);
    RUN(test_linear_bf16);
    RUN(test_conv2d_bf16);
    RUN(test_attention_bf16);
    RUN(test_gather_bf16);
    RUN(test_weight_layout);
    RUN(test_weight_dtypes);
    backend_destroy(g_be);
    g_be = NULL;
}

/* Runs this program again with ONEDNN_MAX_CPU_ISA=isa and adds its counts. */
static void run_child(const char *self, const char *isa) {
    char env_isa[64], *env[64];
    snprintf(env_isa, sizeof env_isa, "ONEDNN_MAX_CPU_ISA=%s", isa);
    int n = 0;
    for (char **e = environ; *e && n < 60; e++)
        if (strncmp(*e, "ONEDNN_MAX_CPU_ISA=", 19) && strncmp(*e, "EASEL_TEST_CHILD=", 17))
            env[n++] = *e;
    env[n++] = env_isa;
    env[n++] = "EASEL_TEST_CHILD=1";
    env[n] = NULL;
    int fd[2];
    if (pipe(fd)) return;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fd[1], 1);
    posix_spawn_file_actions_adddup2(&fa, fd[1], 2);
    posix_spawn_file_actions_addclose(&fa, fd[0]);
    char *argv[] = {(char *)self, NULL};
    pid_t pid;
    int rc = posix_spawn(&pid, self, &fa, NULL, argv, env);
    posix_spawn_file_actions_destroy(&fa);
    close(fd[1]);
    if (rc) {
        close(fd[0]);
        printf("  FAIL cannot run %s with %s\n", self, env_isa);
        test_failed_++;
        return;
    }
    FILE *f = fdopen(fd[0], "r");
    char line[1024];
    int p = 0, fl = 0, sk = 0, got = 0;
    while (f && fgets(line, sizeof line, f)) {
        if (sscanf(line, "%*s %d passed, %d failed, %d skipped", &p, &fl, &sk) == 3) {
            got = 1;
            continue;
        }
        printf("  [%s] %s", isa, line);
    }
    if (f) fclose(f);
    int st = 0;
    waitpid(pid, &st, 0);
    if (!got || !WIFEXITED(st)) {
        printf("  FAIL child with %s crashed or printed no summary\n", env_isa);
        test_failed_++;
        return;
    }
    test_passed_ += p, test_failed_ += fl, test_skipped_ += sk;
}

static void skip_no_isa(const char *what) {
    printf("  skipped: %s\n", what);
    test_skipped_++;
}

int main(int argc, char **argv) {
    (void)argc;
    const char *child = getenv("EASEL_TEST_CHILD");
    const char *isa = getenv("ONEDNN_MAX_CPU_ISA");
    if (!child) RUN(test_precision_api);
    backend *probe = backend_cpu_create_prec(1, PREC_BF16);
    if (probe) {
        backend_destroy(probe);
        run_bf16(1);
        run_bf16(3);
    } else if (child && isa && !strcmp(isa, "AVX2")) {
        RUN(test_no_bf16);
    } else {
        skip_no_isa("this CPU has neither AMX-BF16 nor AVX512-BF16: the bf16 kernels were not run");
    }
    if (!child) {
        cpu_features f;
        cpu_features_get(&f);
        if (!f.amx_usable) skip_no_isa("this CPU has no AMX: its kernels were not run");
        run_child(argv[0], "AVX512_CORE_BF16");
        run_child(argv[0], "AVX2");
    }
    printf("  worst rel L2 vs the f32 references: linear %.2e, conv2d %.2e, attention %.2e\n",
           g_worst_l2[0], g_worst_l2[1], g_worst_l2[2]);
    return test_summary();
}
