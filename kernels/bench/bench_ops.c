/* Kernel benchmarks of the CUDA backend at Stable Diffusion 1.5 shapes
 * (512x512, batch 2 = classifier-free guidance), run by tools/gpu_check.sh.
 * First measures the two ceilings (a large device copy: bytes read + written
 * per second; a large fp16 GEMM through cuBLASLt), then times each op (median
 * of 7 rounds of 10 launches between syncs) and prints a markdown table with
 * achieved TFLOP/s (matrix ops) or GB/s (memory-bound ops, counting each
 * input read once and each output written once) against those ceilings.
 * The op/shape names match tools/gpu_check/torch_ops.py's, which times the
 * same problems in PyTorch, so tools/gpu_check/report.py can give ratios.
 *   usage: bench_ops [--quick] [--json FILE]   (needs a CUDA device) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../engine/backend.h"
#include "../backend_cuda.h"

static backend *be;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef easel_err (*op_fn)(void *arg);

/* Median seconds per call of fn over 7 rounds of 10 calls (after 3 warm-up calls). */
static double time_op(op_fn fn, void *arg) {
    double t[7];
    for (int i = 0; i < 3; i++)
        if (fn(arg)) return -1;
    if (be->sync(be)) return -1;
    for (int r = 0; r < 7; r++) {
        double t0 = now_s();
        for (int i = 0; i < 10; i++)
            if (fn(arg)) return -1;
        if (be->sync(be)) return -1;
        t[r] = (now_s() - t0) / 10;
    }
    qsort(t, 7, sizeof t[0], cmp_d);
    return t[3];
}

/* A device tensor of random values in [-1, 1). */
static tensor rnd(int ndim, const int64_t *ne) {
    tensor t;
    if (backend_tensor_alloc(be, &t, be->act_dtype, ndim, ne)) {
        fprintf(stderr, "bench: %s\n", easel_errmsg());
        exit(1);
    }
    int64_t n = tensor_nelem(&t);
    float *h = malloc(sizeof(float) * (size_t)n);
    if (!h) exit(1);
    unsigned long long s = 0x9e3779b97f4a7c15ULL ^ (unsigned long long)n;
    for (int64_t i = 0; i < n; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        h[i] = (float)((s >> 40) & 0xffffff) / 8388608.0f - 1.0f;
    }
    be->upload(be, &t, h);
    free(h);
    return t;
}

typedef struct {
    tensor y, a, b, c, d;
    int heads, causal, stride, pad;
} args;

static easel_err run_attention(void *p) {
    args *a = p;
    return be->attention(be, &a->y, &a->a, &a->b, &a->c, a->heads, a->causal);
}
static easel_err run_conv(void *p) {
    args *a = p;
    return be->conv2d(be, &a->y, &a->a, &a->b, &a->c, a->stride, a->pad);
}
static easel_err run_linear(void *p) {
    args *a = p;
    return be->linear(be, &a->y, &a->a, &a->b, a->c.data ? &a->c : NULL);
}
static easel_err run_gn(void *p) {
    args *a = p;
    return be->group_norm(be, &a->y, &a->a, &a->b, &a->c, 32, 1e-5f, 1);
}
static easel_err run_ln(void *p) {
    args *a = p;
    return be->layer_norm(be, &a->y, &a->a, &a->b, &a->c, 1e-5f);
}
static easel_err run_softmax(void *p) {
    args *a = p;
    return be->softmax(be, &a->y, &a->a);
}
static easel_err run_geglu(void *p) {
    args *a = p;
    return be->geglu(be, &a->y, &a->a);
}
static easel_err run_add(void *p) {
    args *a = p;
    return be->binary(be, &a->y, &a->a, &a->b, BINARY_ADD);
}
static easel_err run_silu(void *p) {
    args *a = p;
    return be->unary(be, &a->y, &a->a, UNARY_SILU);
}
static easel_err run_up(void *p) {
    args *a = p;
    return be->upsample2x(be, &a->y, &a->a);
}
static easel_err run_concat(void *p) {
    args *a = p;
    return be->concat(be, &a->y, &a->a, &a->b);
}
static easel_err run_copy(void *p) {
    args *a = p;
    return be->copy(be, &a->y, &a->a);
}

static void free_args(args *a) {
    tensor *ts[5] = {&a->y, &a->a, &a->b, &a->c, &a->d};
    for (int i = 0; i < 5; i++)
        if (ts[i]->data) backend_tensor_free(be, ts[i]);
}

static double peak_tflops, peak_gbs;
static FILE *json; /* --json: one object per row */
static int json_rows;

static void row(const char *name, const char *shape, double s, double flop, double bytes) {
    if (json) {
        fprintf(json,
                "%s\n  {\"op\": \"%s\", \"shape\": \"%s\", \"ms\": %.6f, \"flop\": %.6g, "
                "\"bytes\": %.6g}",
                json_rows++ ? "," : "", name, shape, s < 0 ? -1.0 : s * 1e3, flop, bytes);
        fflush(json);
    }
    if (s < 0) {
        printf("| %s | %s | error: %s | | |\n", name, shape, easel_errmsg());
        return;
    }
    if (flop > 0)
        printf("| %s | %s | %.3f | %.1f TFLOP/s | %.0f%% of %.0f |\n", name, shape, s * 1e3,
               flop / s / 1e12, 100 * flop / s / 1e12 / peak_tflops, peak_tflops);
    else
        printf("| %s | %s | %.3f | %.0f GB/s | %.0f%% of %.0f |\n", name, shape, s * 1e3,
               bytes / s / 1e9, 100 * bytes / s / 1e9 / peak_gbs, peak_gbs);
    fflush(stdout);
}

static void ceilings(void) {
    int64_t n[1] = {(int64_t)1 << 28}; /* 512 MiB of f16 */
    args a = {0};
    a.a = rnd(1, n);
    backend_tensor_alloc(be, &a.y, be->act_dtype, 1, n);
    double s = time_op(run_copy, &a);
    peak_gbs = s > 0 ? 2.0 * 2 * n[0] / s / 1e9 : 1;
    free_args(&a);
    int64_t m[2] = {8192, 8192};
    args g = {0};
    g.a = rnd(2, m);
    g.b = rnd(2, m);
    backend_tensor_alloc(be, &g.y, be->act_dtype, 2, m);
    s = time_op(run_linear, &g);
    peak_tflops = s > 0 ? 2.0 * 8192 * 8192 * 8192 / s / 1e12 : 1;
    free_args(&g);
    printf("ceilings: device copy %.0f GB/s (read + write), fp16 GEMM 8192^3 %.0f TFLOP/s\n\n",
           peak_gbs, peak_tflops);
}

static void bench_attention(int64_t b, int64_t lq, int64_t lk, int64_t h, int64_t d) {
    int64_t sq[3] = {b, lq, h * d}, sk[3] = {b, lk, h * d};
    args a = {0};
    a.a = rnd(3, sq), a.b = rnd(3, sk), a.c = rnd(3, sk);
    backend_tensor_alloc(be, &a.y, be->act_dtype, 3, sq);
    a.heads = (int)h;
    char shape[96];
    snprintf(shape, sizeof shape, "B%lld Lq%lld Lk%lld H%lld D%lld%s", (long long)b, (long long)lq,
             (long long)lk, (long long)h, (long long)d, be->act_dtype == DT_F32 ? " f32" : "");
    row(d > 256 ? "attention (GEMM-softmax-GEMM)" : "attention (flash, mma.sync)", shape,
        time_op(run_attention, &a), 4.0 * b * h * lq * lk * d, 0);
    free_args(&a);
}

static void bench_conv(int64_t n, int64_t hw, int64_t ci, int64_t co, int k, int stride) {
    int64_t sx[4] = {n, hw, hw, ci}, sw[4] = {co, k, k, ci}, sb[1] = {co};
    int64_t ho = (hw + 2 * (k / 2) - k) / stride + 1, sy[4] = {n, ho, ho, co};
    args a = {0};
    a.a = rnd(4, sx), a.b = rnd(4, sw), a.c = rnd(1, sb);
    backend_tensor_alloc(be, &a.y, be->act_dtype, 4, sy);
    a.stride = stride, a.pad = k / 2;
    char shape[96];
    snprintf(shape, sizeof shape, "x[%lld,%lld,%lld,%lld] %dx%d s%d -> %lld%s", (long long)n,
             (long long)hw, (long long)hw, (long long)ci, k, k, stride, (long long)co,
             be->act_dtype == DT_F32 ? " f32" : "");
    row("conv2d (im2col + cuBLASLt)", shape, time_op(run_conv, &a),
        2.0 * n * ho * ho * co * k * k * ci, 0);
    free_args(&a);
}

static void bench_linear(int64_t m, int64_t k, int64_t n) {
    int64_t sx[2] = {m, k}, sw[2] = {n, k}, sb[1] = {n}, sy[2] = {m, n};
    args a = {0};
    a.a = rnd(2, sx), a.b = rnd(2, sw), a.c = rnd(1, sb);
    backend_tensor_alloc(be, &a.y, be->act_dtype, 2, sy);
    char shape[96];
    snprintf(shape, sizeof shape, "[%lld,%lld] x [%lld,%lld]^T + b", (long long)m, (long long)k,
             (long long)n, (long long)k);
    row("linear (cuBLASLt, bias epilogue)", shape, time_op(run_linear, &a), 2.0 * m * n * k, 0);
    free_args(&a);
}

static void bench_memory_ops(void) {
    int64_t x4[4] = {2, 64, 64, 320}, c1[1] = {320}, nel = 2 * 64 * 64 * 320;
    args a = {0};
    a.a = rnd(4, x4), a.b = rnd(1, c1), a.c = rnd(1, c1);
    backend_tensor_alloc(be, &a.y, be->act_dtype, 4, x4);
    row("group_norm + SiLU", "[2,64,64,320] 32 groups", time_op(run_gn, &a), 0, 4.0 * nel);
    free_args(&a);
    int64_t l3[3] = {2, 4096, 320};
    a = (args){0};
    a.a = rnd(3, l3), a.b = rnd(1, c1), a.c = rnd(1, c1);
    backend_tensor_alloc(be, &a.y, be->act_dtype, 3, l3);
    row("layer_norm", "[2,4096,320]", time_op(run_ln, &a), 0, 4.0 * nel);
    free_args(&a);
    int64_t sm[2] = {16 * 1024, 1024};
    a = (args){0};
    a.a = rnd(2, sm);
    backend_tensor_alloc(be, &a.y, be->act_dtype, 2, sm);
    row("softmax", "[16384,1024]", time_op(run_softmax, &a), 0, 4.0 * sm[0] * sm[1]);
    free_args(&a);
    int64_t gx[2] = {8192, 2560}, gy[2] = {8192, 1280};
    a = (args){0};
    a.a = rnd(2, gx);
    backend_tensor_alloc(be, &a.y, be->act_dtype, 2, gy);
    row("geglu", "[8192,2560] -> [8192,1280]", time_op(run_geglu, &a), 0,
        2.0 * (8192 * 2560 + 8192 * 1280));
    free_args(&a);
    a = (args){0};
    a.a = rnd(4, x4), a.b = rnd(4, x4);
    backend_tensor_alloc(be, &a.y, be->act_dtype, 4, x4);
    row("binary add (residual)", "[2,64,64,320]", time_op(run_add, &a), 0, 6.0 * nel);
    row("unary SiLU", "[2,64,64,320]", time_op(run_silu, &a), 0, 4.0 * nel);
    int64_t up[4] = {2, 128, 128, 320};
    tensor upy;
    backend_tensor_alloc(be, &upy, be->act_dtype, 4, up);
    tensor keep = a.y;
    a.y = upy;
    row("upsample2x", "[2,64,64,320] -> [2,128,128,320]", time_op(run_up, &a), 0, 10.0 * nel);
    backend_tensor_free(be, &upy);
    a.y = keep;
    free_args(&a);
    int64_t ca[3] = {2, 4096, 640}, cb[3] = {2, 4096, 640}, cy[3] = {2, 4096, 1280};
    a = (args){0};
    a.a = rnd(3, ca), a.b = rnd(3, cb);
    backend_tensor_alloc(be, &a.y, be->act_dtype, 3, cy);
    row("concat (skip)", "[2,4096,640] + [2,4096,640]", time_op(run_concat, &a), 0,
        4.0 * 2 * 4096 * 1280);
    free_args(&a);
}

/* The VAE's problems, on the fp32 view it decodes through (force_upcast). */
static void bench_vae_f32(int quick) {
    backend *f16 = be, *v = backend_with_dtype(be, DT_F32);
    if (!v) {
        printf("| vae (fp32 view) | | error: %s | | |\n", easel_errmsg());
        return;
    }
    be = v;
    bench_attention(1, 4096, 4096, 1, 512); /* the mid-block at 512^2, fp32: GEMMs on TF32 */
    if (!quick) bench_conv(1, 256, 256, 256, 3, 1);
    be = f16;
}

int main(int argc, char **argv) {
    int quick = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick")) {
            quick = 1;
        } else if (!strcmp(argv[i], "--json") && i + 1 < argc) {
            if (!(json = fopen(argv[++i], "w"))) {
                fprintf(stderr, "bench_ops: cannot write %s\n", argv[i]);
                return 2;
            }
            fprintf(json, "[");
        } else {
            fprintf(stderr, "usage: bench_ops [--quick] [--json FILE]\n");
            return 2;
        }
    }
    be = backend_cuda_create(-1);
    if (!be) {
        printf("skipped: no CUDA device (%s)\n", easel_errmsg());
        if (json) fprintf(json, "]\n"), fclose(json);
        return 0;
    }
    ceilings();
    printf("| op | shape | ms | achieved | vs ceiling |\n|---|---|---|---|---|\n");
    bench_attention(2, 4096, 4096, 8, 40);
    bench_attention(2, 4096, 77, 8, 40);
    bench_attention(2, 1024, 1024, 8, 80);
    bench_attention(2, 256, 256, 8, 160);
    bench_attention(2, 4096, 4096, 5, 64); /* SD2-style head dim */
    bench_conv(2, 64, 320, 320, 3, 1);
    bench_conv(2, 64, 320, 320, 3, 2);
    bench_conv(2, 32, 640, 640, 3, 1);
    if (!quick) bench_conv(1, 512, 128, 128, 3, 1); /* VAE decoder, last stage */
    bench_linear(8192, 320, 1280);
    bench_linear(8192, 1280, 320);
    bench_linear(8192, 320, 960); /* packed QKV */
    bench_memory_ops();
    bench_attention(1, 4096, 4096, 1, 512); /* the VAE mid-block head, fp16 (force_upcast off) */
    bench_vae_f32(quick);
    backend_destroy(be);
    if (json) fprintf(json, "\n]\n"), fclose(json);
    return 0;
}
