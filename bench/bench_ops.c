/* `easel bench ops`: the CPU backend's ops at Stable Diffusion 1.5 shapes
 * (CFG batch 2, 512² and 256²), median wall time over repeats after a
 * warm-up, as GFLOP/s (GEMM-like ops, with the ratio to the raw GEMM rate of
 * the library the precision uses, measured first: OpenBLAS sgemm for fp32,
 * oneDNN's bf16 matmul for bf16; oneDNN's f32 matmul is listed too) or GB/s
 * (memory-bound ops, minimum traffic). With --precision bf16 the linear and
 * conv weights are bf16, as the loader stores them. */
#include <cblas.h>
#include <dnnl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../engine/backend.h"
#include "../engine/opts.h"
#include "bench.h"

typedef enum { OP_CONV, OP_LINEAR, OP_ATTN, OP_GN, OP_LN, OP_GEGLU, OP_SOFTMAX } op_kind;

typedef struct {
    op_kind op;
    const char *name;
    int64_t d[8]; /* shape parameters, per op (see make_call) */
} op_spec;

typedef struct {
    char name[40], shape[64];
    double ms, rate; /* median wall time; GFLOP/s or GB/s from it */
    double cpu_ms;   /* median process CPU time per call (all threads): less
                        sensitive than wall time to other load on the machine */
    int gemm;        /* rate is GFLOP/s */
} result;

typedef struct {
    backend *be;
    int threads, quick, max_reps;
    double budget_s;            /* per measurement */
    double sgemm;               /* GFLOP/s: the raw GEMM of this precision, threaded */
    double dnnl_f32, dnnl_bf16; /* oneDNN's raw f32 / bf16 matmul, threaded (0: n/a) */
    const char *filter;         /* only ops whose name or shape contains it */
    result res[64];
    int nres;
} bctx;

typedef struct {
    op_kind op;
    tensor t[5]; /* output first */
    int i1, i2;
    double work; /* flops or bytes */
} op_call;

static unsigned long long rng_state = 88172645463325252ull;
static float rnd(void) {
    rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
    return (float)((rng_state >> 40) & 0xffffff) / 16777216.0f * 2.0f - 1.0f;
}

/* A tensor of random values in [-0.5, 0.5), of dtype dt. */
static easel_err new_tensor_dt(backend *be, tensor *t, dtype dt, int ndim, int64_t a, int64_t b,
                               int64_t c, int64_t d) {
    int64_t ne[4] = {a, b, c, d};
    easel_err e = backend_tensor_alloc(be, t, dt, ndim, ne);
    if (e) return e;
    int64_t n = tensor_nelem(t);
    float *h = malloc((size_t)n * sizeof(float));
    if (!h) return easel_seterr(EASEL_ENOMEM, "bench: out of memory");
    for (int64_t i = 0; i < n; i++)
        h[i] = rnd() * 0.5f;
    e = be->upload(be, t, h);
    free(h);
    return e;
}

static easel_err new_tensor(backend *be, tensor *t, int ndim, int64_t a, int64_t b, int64_t c,
                            int64_t d) {
    return new_tensor_dt(be, t, be->act_dtype, ndim, a, b, c, d);
}

static easel_err call_op(backend *be, op_call *c) {
    tensor *t = c->t;
    switch (c->op) {
    case OP_CONV:
        return be->conv2d(be, &t[0], &t[1], &t[2], &t[3], c->i1, c->i2);
    case OP_LINEAR:
        return be->linear(be, &t[0], &t[1], &t[2], &t[3]);
    case OP_ATTN:
        return be->attention(be, &t[0], &t[1], &t[2], &t[3], c->i1, 0);
    case OP_GN:
        return be->group_norm(be, &t[0], &t[1], &t[2], &t[3], c->i1, 1e-5f, c->i2);
    case OP_LN:
        return be->layer_norm(be, &t[0], &t[1], &t[2], &t[3], 1e-5f);
    case OP_GEGLU:
        return be->geglu(be, &t[0], &t[1]);
    case OP_SOFTMAX:
        return be->softmax(be, &t[0], &t[1]);
    }
    return EASEL_EINTERNAL;
}

/* Allocates the op's tensors and its work (flops or bytes) from the spec. */
static easel_err make_call(backend *be, const op_spec *s, op_call *c, char *shape, size_t len) {
    const int64_t *d = s->d;
    memset(c, 0, sizeof *c);
    c->op = s->op;
    easel_err e = EASEL_OK;
    tensor *t = c->t;
    switch (s->op) {
    case OP_CONV: { /* N, H, W, Ci, Co, k, stride */
        int64_t k = d[5], st = d[6], p = k / 2, Ho = (d[1] + 2 * p - k) / st + 1,
                Wo = (d[2] + 2 * p - k) / st + 1;
        c->i1 = (int)st, c->i2 = (int)p;
        if (!e) e = new_tensor(be, &t[1], 4, d[0], d[1], d[2], d[3]);
        if (!e) e = new_tensor_dt(be, &t[2], be->weight_dtype, 4, d[4], k, k, d[3]);
        if (!e) e = new_tensor(be, &t[3], 1, d[4], 1, 1, 1);
        if (!e) e = new_tensor(be, &t[0], 4, d[0], Ho, Wo, d[4]);
        c->work = 2.0 * d[0] * Ho * Wo * d[4] * k * k * d[3];
        snprintf(shape, len, "%lldx%lldx%lld->%lld k%lld s%lld", (long long)d[1], (long long)d[2],
                 (long long)d[3], (long long)d[4], (long long)k, (long long)st);
        break;
    }
    case OP_LINEAR: /* rows, K, N */
        if (!e) e = new_tensor(be, &t[1], 2, d[0], d[1], 1, 1);
        if (!e) e = new_tensor_dt(be, &t[2], be->weight_dtype, 2, d[2], d[1], 1, 1);
        if (!e) e = new_tensor(be, &t[3], 1, d[2], 1, 1, 1);
        if (!e) e = new_tensor(be, &t[0], 2, d[0], d[2], 1, 1);
        c->work = 2.0 * d[0] * d[1] * d[2];
        snprintf(shape, len, "%lldx%lld->%lld", (long long)d[0], (long long)d[1], (long long)d[2]);
        break;
    case OP_ATTN: /* B, Lq, Lk, H, D */
        c->i1 = (int)d[3];
        if (!e) e = new_tensor(be, &t[1], 3, d[0], d[1], d[3] * d[4], 1);
        if (!e) e = new_tensor(be, &t[2], 3, d[0], d[2], d[3] * d[4], 1);
        if (!e) e = new_tensor(be, &t[3], 3, d[0], d[2], d[3] * d[4], 1);
        if (!e) e = new_tensor(be, &t[0], 3, d[0], d[1], d[3] * d[4], 1);
        c->work = 4.0 * d[0] * d[3] * d[1] * d[2] * d[4];
        snprintf(shape, len, "B%lld Lq%lld Lk%lld H%lld D%lld", (long long)d[0], (long long)d[1],
                 (long long)d[2], (long long)d[3], (long long)d[4]);
        break;
    case OP_GN: /* N, H, W, C, groups, silu */
    case OP_LN: /* N, L, 1, C */
        c->i1 = (int)d[4], c->i2 = (int)d[5];
        if (!e) e = new_tensor(be, &t[1], 4, d[0], d[1], d[2], d[3]);
        if (!e) e = new_tensor(be, &t[2], 1, d[3], 1, 1, 1);
        if (!e) e = new_tensor(be, &t[3], 1, d[3], 1, 1, 1);
        if (!e) e = new_tensor(be, &t[0], 4, d[0], d[1], d[2], d[3]);
        c->work = 2.0 * 4 * d[0] * d[1] * d[2] * d[3];
        snprintf(shape, len, "[%lld,%lld,%lld,%lld]%s", (long long)d[0], (long long)d[1],
                 (long long)d[2], (long long)d[3], s->op == OP_GN && d[5] ? " +silu" : "");
        break;
    case OP_GEGLU:   /* rows, N (x is [rows, 2N]) */
    case OP_SOFTMAX: /* rows, C */
        if (!e) e = new_tensor(be, &t[1], 2, d[0], s->op == OP_GEGLU ? 2 * d[1] : d[1], 1, 1);
        if (!e) e = new_tensor(be, &t[0], 2, d[0], d[1], 1, 1);
        c->work = (s->op == OP_GEGLU ? 3.0 : 2.0) * 4 * d[0] * d[1];
        snprintf(shape, len, "%lldx%lld", (long long)d[0],
                 (long long)(s->op == OP_GEGLU ? 2 * d[1] : d[1]));
        break;
    }
    return e;
}

static void free_call(backend *be, op_call *c) {
    for (int i = 0; i < 5; i++)
        backend_tensor_free(be, &c->t[i]);
}

static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Median wall seconds of the op over repeats after one warm-up (median CPU
 * seconds into *cpu); -1 on error. */
static double time_call(bctx *b, op_call *c, double *cpu) {
    double t[32], u[32];
    int n = 0;
    if (call_op(b->be, c) || b->be->sync(b->be)) return -1;
    double start = bench_now();
    while (n < b->max_reps && n < 32 && (n < 3 || bench_now() - start < b->budget_s)) {
        double t0 = bench_now(), u0 = cpu_now();
        if (call_op(b->be, c) || b->be->sync(b->be)) return -1;
        t[n] = bench_now() - t0, u[n] = cpu_now() - u0;
        n++;
    }
    *cpu = bench_median(u, n);
    return bench_median(t, n);
}

static void add_result(bctx *b, const char *name, const char *shape, double s, double cpu,
                       double rate, int gemm) {
    if (b->nres == (int)(sizeof b->res / sizeof b->res[0])) return;
    result *r = &b->res[b->nres++];
    snprintf(r->name, sizeof r->name, "%s", name);
    snprintf(r->shape, sizeof r->shape, "%s", shape);
    r->ms = s * 1e3, r->cpu_ms = cpu * 1e3, r->rate = rate, r->gemm = gemm;
    if (gemm)
        printf("%-18s %-28s %9.2f %9.2f %8.1f GFLOP/s %5.0f%%\n", name, shape, r->ms, r->cpu_ms,
               rate, 100.0 * rate / b->sgemm);
    else
        printf("%-18s %-28s %9.2f %9.2f %8.1f GB/s\n", name, shape, r->ms, r->cpu_ms, rate);
    fflush(stdout);
}

/* Raw OpenBLAS sgemm n³ (C = A·B^T) with `threads` OpenBLAS threads; the
 * backend's own setting is restored after. */
static double sgemm_rate(bctx *b, int n, int threads, double *cpu) {
    size_t sz = (size_t)n * n;
    float *A = malloc(sz * 4), *B = malloc(sz * 4), *C = malloc(sz * 4);
    if (!A || !B || !C) {
        free(A), free(B), free(C);
        return 0;
    }
    for (size_t i = 0; i < sz; i++)
        A[i] = rnd(), B[i] = rnd();
    int prev = openblas_get_num_threads();
    openblas_set_num_threads(threads);
    double t[16], u[16];
    int k = 0;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1, A, n, B, n, 0, C, n);
    double start = bench_now();
    while (k < b->max_reps && k < 16 && (k < 3 || bench_now() - start < b->budget_s)) {
        double t0 = bench_now(), u0 = cpu_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1, A, n, B, n, 0, C, n);
        t[k] = bench_now() - t0, u[k] = cpu_now() - u0;
        k++;
    }
    *cpu = bench_median(u, k);
    openblas_set_num_threads(prev);
    free(A), free(B), free(C);
    return 2.0 * n * n * (double)n / bench_median(t, k) / 1e9;
}

/* oneDNN's raw matmul n³ (C = A·Bᵀ, B stored [N,K] as the backend's weights)
 * in f32 or bf16 (f32 C) with `threads` OpenMP threads; 0 when oneDNN cannot
 * (no bf16 on this CPU) or fails. */
void omp_set_num_threads(int n); /* libgomp, oneDNN's runtime (see CMakeLists.txt) */

static double dnnl_rate(bctx *b, int n, int bf16, int threads, double *cpu) {
    unsigned bfisa = dnnl_cpu_isa_avx512_core_bf16;
    if (bf16 && ((unsigned)dnnl_get_effective_cpu_isa() & bfisa) != bfisa) return 0;
    dnnl_data_type_t dt = bf16 ? dnnl_bf16 : dnnl_f32;
    size_t es = bf16 ? 2 : 4, sz = (size_t)n * n;
    void *A = calloc(sz, es), *B = calloc(sz, es), *C = calloc(sz, 4);
    dnnl_engine_t eng = NULL;
    dnnl_stream_t st = NULL;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_t prim = NULL;
    dnnl_memory_t ma = NULL, mb = NULL, mc = NULL;
    double rate = 0;
    dnnl_memory_desc_t ad, bd, cd;
    dnnl_dims_t dims = {n, n}, bs = {1, n};
    dnnl_matmul_desc_t md;
    omp_set_num_threads(threads);
    if (!A || !B || !C || dnnl_engine_create(&eng, dnnl_cpu, 0) ||
        dnnl_stream_create(&st, eng, dnnl_stream_default_flags) ||
        dnnl_memory_desc_init_by_tag(&ad, 2, dims, dt, dnnl_ab) ||
        dnnl_memory_desc_init_by_strides(&bd, 2, dims, dt, bs) ||
        dnnl_memory_desc_init_by_tag(&cd, 2, dims, dnnl_f32, dnnl_ab) ||
        dnnl_matmul_desc_init(&md, &ad, &bd, NULL, &cd) ||
        dnnl_primitive_desc_create(&pd, &md, NULL, eng, NULL) || dnnl_primitive_create(&prim, pd) ||
        dnnl_memory_create(&ma, &ad, eng, A) || dnnl_memory_create(&mb, &bd, eng, B) ||
        dnnl_memory_create(&mc, &cd, eng, C))
        goto done;
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, mb}, {DNNL_ARG_DST, mc}};
    double t[16], u[16];
    int k = 0;
    if (dnnl_primitive_execute(prim, st, 3, args) || dnnl_stream_wait(st)) goto done;
    double start = bench_now();
    while (k < b->max_reps && k < 16 && (k < 3 || bench_now() - start < b->budget_s)) {
        double t0 = bench_now(), u0 = cpu_now();
        if (dnnl_primitive_execute(prim, st, 3, args) || dnnl_stream_wait(st)) goto done;
        t[k] = bench_now() - t0, u[k] = cpu_now() - u0;
        k++;
    }
    *cpu = bench_median(u, k);
    rate = 2.0 * n * n * (double)n / bench_median(t, k) / 1e9;
done:
    if (ma) dnnl_memory_destroy(ma);
    if (mb) dnnl_memory_destroy(mb);
    if (mc) dnnl_memory_destroy(mc);
    if (prim) dnnl_primitive_destroy(prim);
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (st) dnnl_stream_destroy(st);
    if (eng) dnnl_engine_destroy(eng);
    free(A), free(B), free(C);
    return rate;
}

static const op_spec full_specs[] = {
    /* 512² (latent 64×64), CFG batch 2 */
    {OP_LINEAR, "linear (pool)", {2048, 2048, 2048}},
    {OP_CONV, "conv3x3", {2, 64, 64, 320, 320, 3, 1}},
    {OP_CONV, "conv3x3", {2, 32, 32, 640, 640, 3, 1}},
    {OP_CONV, "conv3x3", {2, 16, 16, 1280, 1280, 3, 1}},
    {OP_CONV, "conv3x3", {2, 8, 8, 1280, 1280, 3, 1}},
    {OP_CONV, "conv3x3 s2", {2, 64, 64, 320, 320, 3, 2}},
    {OP_CONV, "conv3x3 s2", {2, 32, 32, 640, 640, 3, 2}},
    {OP_CONV, "conv3x3 s2", {2, 16, 16, 1280, 1280, 3, 2}},
    {OP_CONV, "conv1x1", {2, 64, 64, 320, 320, 1, 1}},
    {OP_CONV, "conv1x1", {2, 32, 32, 320, 640, 1, 1}},
    {OP_LINEAR, "linear", {8192, 320, 1280}},
    {OP_LINEAR, "linear geglu-in", {8192, 320, 2560}},
    {OP_ATTN, "attn self", {2, 4096, 4096, 8, 40}},
    {OP_ATTN, "attn cross", {2, 4096, 77, 8, 40}},
    {OP_ATTN, "attn self", {2, 1024, 1024, 8, 80}},
    {OP_ATTN, "attn self", {2, 256, 256, 8, 160}},
    {OP_ATTN, "attn cross", {2, 256, 77, 8, 160}},
    {OP_GN, "group_norm", {2, 64, 64, 320, 32, 1}},
    {OP_GN, "group_norm", {2, 64, 64, 320, 32, 0}},
    {OP_LN, "layer_norm", {2, 4096, 1, 320}},
    {OP_GEGLU, "geglu", {8192, 1280}},
    {OP_SOFTMAX, "softmax", {4096, 4096}},
    /* 256² (latent 32×32) */
    {OP_CONV, "conv3x3 256²", {2, 32, 32, 320, 320, 3, 1}},
    {OP_CONV, "conv3x3 256²", {2, 16, 16, 640, 640, 3, 1}},
    {OP_CONV, "conv3x3 256²", {2, 8, 8, 1280, 1280, 3, 1}},
    {OP_CONV, "conv3x3 256²", {2, 4, 4, 1280, 1280, 3, 1}},
    {OP_ATTN, "attn self 256²", {2, 1024, 1024, 8, 40}},
    {OP_ATTN, "attn cross 256²", {2, 1024, 77, 8, 40}},
    {OP_GN, "group_norm 256²", {2, 32, 32, 320, 32, 1}},
};

static const op_spec quick_specs[] = {
    {OP_LINEAR, "linear (pool)", {1024, 1024, 1024}},
    {OP_CONV, "conv3x3", {1, 16, 16, 320, 320, 3, 1}},
    {OP_CONV, "conv3x3 s2", {1, 16, 16, 320, 320, 3, 2}},
    {OP_CONV, "conv1x1", {1, 16, 16, 320, 640, 1, 1}},
    {OP_LINEAR, "linear", {256, 320, 1280}},
    {OP_ATTN, "attn self", {1, 256, 256, 8, 40}},
    {OP_ATTN, "attn cross", {1, 256, 77, 8, 40}},
    {OP_GN, "group_norm", {1, 16, 16, 320, 32, 1}},
    {OP_LN, "layer_norm", {1, 256, 1, 320}},
    {OP_GEGLU, "geglu", {256, 1280}},
    {OP_SOFTMAX, "softmax", {256, 256}},
};

static int write_json(const bctx *b, const char *path) {
    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        return 1;
    }
    const char *ct = getenv("OPENBLAS_CORETYPE");
    fprintf(f, "{\n  \"bench\": \"ops\",\n  \"backend\": \"%s\",\n  \"threads\": %d,\n",
            b->be->name, b->threads);
    fprintf(f, "  \"blas\": ");
    bench_json_str(f, openblas_get_config());
    fprintf(f, ",\n  \"blas_core\": ");
    bench_json_str(f, openblas_get_corename());
    fprintf(f, ",\n  \"openblas_coretype_env\": ");
    bench_json_str(f, ct ? ct : "");
    fprintf(f, ",\n  \"precision\": \"%s\"", backend_precision_name(backend_cpu_precision(b->be)));
    fprintf(f, ",\n  \"raw_gemm_gflops\": %.2f,\n  \"dnnl_f32_gflops\": %.2f", b->sgemm,
            b->dnnl_f32);
    fprintf(f, ",\n  \"dnnl_bf16_gflops\": %.2f,\n  \"results\": [\n", b->dnnl_bf16);
    for (int i = 0; i < b->nres; i++) {
        const result *r = &b->res[i];
        fprintf(f, "    {\"op\": ");
        bench_json_str(f, r->name);
        fprintf(f, ", \"shape\": ");
        bench_json_str(f, r->shape);
        fprintf(f, ", \"ms\": %.4f, \"cpu_ms\": %.4f, \"%s\": %.2f", r->ms, r->cpu_ms,
                r->gemm ? "gflops" : "gbps", r->rate);
        if (r->gemm) fprintf(f, ", \"vs_raw\": %.3f", r->rate / b->sgemm);
        fprintf(f, "}%s\n", i + 1 < b->nres ? "," : "");
    }
    fprintf(f, "  ]\n}\n");
    return fclose(f) ? 1 : 0;
}

static int run_specs(bctx *b, const op_spec *specs, int n) {
    for (int i = 0; i < n; i++) {
        op_call c;
        char shape[64];
        if (b->filter && !strstr(specs[i].name, b->filter)) continue;
        easel_err e = make_call(b->be, &specs[i], &c, shape, sizeof shape);
        double cpu = 0, s = e ? -1 : time_call(b, &c, &cpu);
        free_call(b->be, &c);
        if (s < 0) {
            fprintf(stderr, "easel bench ops: %s %s: %s\n", specs[i].name, shape, easel_errmsg());
            return 1;
        }
        int gemm = c.op == OP_CONV || c.op == OP_LINEAR || c.op == OP_ATTN;
        add_result(b, specs[i].name, shape, s, cpu, c.work / s / 1e9, gemm);
    }
    return 0;
}

int bench_ops(int argc, char **argv) {
    bctx b;
    memset(&b, 0, sizeof b);
    const char *json = NULL;
    int prec = PREC_AUTO; /* the choices below are in backend_precision's order */
    const opt_spec specs[] = {
        {.name = "threads",
         .kind = OPT_INT,
         .dst = &b.threads,
         .lo = 0,
         .hi = 1024,
         .metavar = "N",
         .help = "backend threads (default: all cores)",
         .flags = OPT_ENV},
        {.name = "quick",
         .kind = OPT_FLAG,
         .dst = &b.quick,
         .help = "a few small shapes (CI smoke)"},
        {.name = "json",
         .kind = OPT_STRING,
         .dst = &json,
         .metavar = "FILE",
         .help = "also write the results as JSON"},
        {.name = "precision",
         .kind = OPT_CHOICE,
         .dst = &prec,
         .choices = "auto|fp32|bf16",
         .help = "the CPU backend's (default auto: bf16 where the CPU has it)",
         .flags = OPT_ENV},
        {.name = "filter",
         .kind = OPT_STRING,
         .dst = &b.filter,
         .metavar = "STR",
         .help = "only the ops whose name contains STR"},
        {0}};
    const opts_cmd cmd = {.name = "easel bench ops", .specs = specs};
    int pr = opts_parse(&cmd, argc, argv);
    if (pr) return pr == 1 ? 0 : 2;
    if (!(b.be = backend_cpu_create_prec(b.threads, (backend_precision)prec))) {
        fprintf(stderr, "easel bench ops: %s\n", easel_errmsg());
        return prec == PREC_BF16 ? 2 : 1; /* bf16 asked of a CPU without it: bad input */
    }
    b.threads = backend_cpu_threads(b.be);
    int bf16 = backend_cpu_precision(b.be) == PREC_BF16;
    b.max_reps = b.quick ? 3 : 9;
    b.budget_s = b.quick ? 0.05 : 1.0;
    const char *ct = getenv("OPENBLAS_CORETYPE");
    char desc[256];
    printf("easel bench ops: backend %s, %d threads, %s\n  %s (core %s, OPENBLAS_CORETYPE=%s)\n",
           b.be->name, b.threads,
           backend_cpu_describe(backend_cpu_precision(b.be), desc, sizeof desc),
           openblas_get_config(), openblas_get_corename(), ct ? ct : "");
    printf("median of up to %d runs after a warm-up; on a shared machine expect +-15%% noise\n",
           b.max_reps);
    printf("the %% column: the op's rate against the raw %s rate on as many threads\n\n",
           bf16 ? "oneDNN bf16 matmul" : "OpenBLAS sgemm");
    int n = b.quick ? 1024 : 2048;
    double cpu1, cpun, one = sgemm_rate(&b, n, 1, &cpu1), sg = sgemm_rate(&b, n, b.threads, &cpun);
    double cf = 0, cb = 0;
    b.dnnl_f32 = dnnl_rate(&b, n, 0, b.threads, &cf);
    b.dnnl_bf16 = dnnl_rate(&b, n, 1, b.threads, &cb);
    b.sgemm = bf16 && b.dnnl_bf16 > 0 ? b.dnnl_bf16 : sg;
    printf("%-18s %-28s %9s %9s %8s %-7s %6s\n", "op", "shape", "ms", "cpu-ms", "rate", "",
           "vs raw");
    char shape[64];
    double fl = 2.0 * n * n * (double)n / 1e9;
    snprintf(shape, sizeof shape, "%dx%dx%d, 1 thread", n, n, n);
    add_result(&b, "sgemm (openblas)", shape, fl / one, cpu1, one, 1);
    snprintf(shape, sizeof shape, "%dx%dx%d, %d threads", n, n, n, b.threads);
    add_result(&b, "sgemm (openblas)", shape, fl / sg, cpun, sg, 1);
    if (b.dnnl_f32 > 0)
        add_result(&b, "matmul f32 (onednn)", shape, fl / b.dnnl_f32, cf, b.dnnl_f32, 1);
    if (b.dnnl_bf16 > 0)
        add_result(&b, "matmul bf16 (onednn)", shape, fl / b.dnnl_bf16, cb, b.dnnl_bf16, 1);
    int rc = b.quick ? run_specs(&b, quick_specs, (int)(sizeof quick_specs / sizeof quick_specs[0]))
                     : run_specs(&b, full_specs, (int)(sizeof full_specs / sizeof full_specs[0]));
    if (!rc && json) rc = write_json(&b, json);
    backend_destroy(b.be);
    return rc;
}
