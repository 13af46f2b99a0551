/* The CUDA backend, op by op, against the CPU backend (the reference) on
 * random inputs of many shapes (odd sizes, tails that fill no tile, 1-element
 * dims), with NaN-poisoned outputs and guard regions after them. Built twice
 * (kernels/kernels.cmake): test_ops_cuda runs the kernels in the CPU emulator
 * (kernels/emu, small shapes, CI); test_ops_gpu runs them on a real GPU and
 * adds full Stable Diffusion shapes, or skips with "no CUDA device".
 * Tolerances (fp16 storage, fp32 arithmetic): elementwise/copies rel L2
 * <= 2e-3; norms/softmax <= 5e-3; GEMM/conv <= 5e-3; attention <= 1e-2;
 * max abs error <= 2e-2 · max|ref| (+ 1e-3) everywhere. Also tests the
 * device-free host logic (graph cache, OOM messages, im2col planning,
 * worker lifecycle) which CI runs through the emulator. */
extern "C" {
#include "../engine/arena.h"
#include "../engine/backend.h"
#include "../engine/tensor.h"
#include "../kernels/cuda_host.h"
#include "../models/taesd.h"
}
#include <algorithm>
#include <array>
#include <functional>
#include <pthread.h>
#include <string>
#include <vector>

#include "test.h"

#ifdef EASEL_CUDA_EMU
#include "../kernels/emu/cuda_runtime_emu.h"
extern "C" backend *backend_cuda_emu_create(int device);
extern "C" int backend_cuda_emu_graph_count(backend *be);
extern "C" long backend_cuda_emu_gemm_plans(backend *be);
#define GPU_CREATE backend_cuda_emu_create
#define GPU_GRAPH_COUNT backend_cuda_emu_graph_count
#define GPU_GEMM_PLANS backend_cuda_emu_gemm_plans
static int full_shapes = 0;
#else
#include "../kernels/backend_cuda.h"
#include <cuda_runtime.h>
#define GPU_CREATE backend_cuda_create
#define GPU_GRAPH_COUNT backend_cuda_graph_count
#define GPU_GEMM_PLANS backend_cuda_gemm_plans
static int full_shapes = 1; /* TEST_OPS_SMALL=1: the small shapes only (compute-sanitizer) */
/* The emulator's counters and switches; on a real GPU the checks using them are skipped. */
typedef struct {
    long launches, graph_launches, captures_ok, captures_failed, attribute_sets, races;
} emu_counters;
static void emu_get_counters(emu_counters *c) {
    memset(c, 0, sizeof *c);
}
static void emu_set_quiet(int) {}
#endif
#ifdef EASEL_CUDA_EMU
static const int have_counters = 1;
#else
static const int have_counters = 0;
#endif

static backend *cpu, *gpu;
static unsigned long long seed = 0x5eed1234ULL;

#define GUARD_ELEMS 64
#define GUARD_VAL 1234.0f /* exact in f16 */

#define NEED_GPU()                                                                                 \
    do {                                                                                           \
        if (!gpu) SKIP("no CUDA device");                                                          \
    } while (0)

/* A tensor on both backends: same shape, the GPU one followed by a guard. */
struct pair {
    tensor c, g, guard;
    std::vector<float> host; /* the values uploaded (fp16-rounded) */
};

static float r16(float x) {
    return f16_to_f32(f32_to_f16(x));
}

static void pair_alloc(pair &p, int ndim, const int64_t *ne) {
    p.c = tensor_make(NULL, DT_F32, DEV_CPU, ndim, ne);
    p.g = tensor_make(NULL, gpu->act_dtype, DEV_CUDA, ndim, ne); /* f16, or f32 on the view */
    void *mc = NULL, *mg = NULL;
    size_t nb = tensor_nbytes(&p.g);
    cpu->alloc(cpu, tensor_nbytes(&p.c) + 4, &mc);
    gpu->alloc(gpu, nb + GUARD_ELEMS * 4, &mg);
    p.c.data = mc;
    p.g.data = mg;
    p.guard = tensor_1d(mg ? (char *)mg + nb : NULL, gpu->act_dtype, DEV_CUDA, GUARD_ELEMS);
    std::vector<float> gv(GUARD_ELEMS, GUARD_VAL);
    if (mg) gpu->upload(gpu, &p.guard, gv.data());
}

/* Random input in [lo, hi), fp16-rounded, on both backends. */
static pair rnd(std::vector<int64_t> ne, float lo = -1.0f, float hi = 1.0f) {
    pair p;
    pair_alloc(p, (int)ne.size(), ne.data());
    p.host.resize((size_t)tensor_nelem(&p.c));
    for (auto &v : p.host)
        v = r16(test_randf(&seed, lo, hi));
    if (p.c.data) cpu->upload(cpu, &p.c, p.host.data());
    if (p.g.data) gpu->upload(gpu, &p.g, p.host.data());
    return p;
}

/* An output: NaN-poisoned on the GPU so unwritten elements fail. */
static pair out(std::vector<int64_t> ne) {
    pair p;
    pair_alloc(p, (int)ne.size(), ne.data());
    std::vector<float> nan((size_t)tensor_nelem(&p.g), NAN);
    if (p.g.data) gpu->upload(gpu, &p.g, nan.data());
    return p;
}

static void pfree(pair &p) {
    if (p.c.data) cpu->free(cpu, p.c.data);
    if (p.g.data) gpu->free(gpu, p.g.data);
    p.c.data = p.g.data = NULL;
}

/* Downloads both sides and compares; checks the guard is intact. */
static void compare(const char *what, pair &y, double rel_tol) {
    long n = (long)tensor_nelem(&y.c);
    std::vector<float> a((size_t)n + 1), b((size_t)n + 1), gd(GUARD_ELEMS);
    CHECK(cpu->download(cpu, &y.c, a.data()) == EASEL_OK, "%s: cpu download: %s", what,
          easel_errmsg());
    CHECK(gpu->download(gpu, &y.g, b.data()) == EASEL_OK, "%s: gpu download: %s", what,
          easel_errmsg());
    CHECK(gpu->download(gpu, &y.guard, gd.data()) == EASEL_OK, "%s: guard download", what);
    int bad_guard = 0;
    for (float v : gd)
        bad_guard += v != GUARD_VAL;
    CHECK(bad_guard == 0, "%s: %d guard elements overwritten", what, bad_guard);
    double rel = test_rel_l2f(b.data(), a.data(), n), mx = test_max_abs(b.data(), a.data(), n);
    double ref_max = 0;
    for (long i = 0; i < n; i++)
        ref_max = fmax(ref_max, fabs((double)a[(size_t)i]));
    double abs_tol = 2e-2 * ref_max + 1e-3;
    CHECK(rel <= rel_tol && mx <= abs_tol, "%s: rel L2 %.3g (tol %.1g), max abs %.3g (tol %.3g)",
          what, rel, rel_tol, mx, abs_tol);
    if (getenv("TEST_VERBOSE")) printf("    %-44s rel %.2e  max abs %.2e\n", what, rel, mx);
}

static std::string shp(const std::vector<int64_t> &ne) {
    std::string s = "[";
    for (size_t i = 0; i < ne.size(); i++)
        s += (i ? "," : "") + std::to_string(ne[i]);
    return s + "]";
}

/* ------------------------------------------------------------ conversions */

static void test_upload_download(void) {
    NEED_GPU();
    pair p = rnd({3, 7, 11}, -70000.0f, 70000.0f); /* beyond f16 range: inf */
    std::vector<float> raw(p.host.size()), got(p.host.size());
    for (auto &v : raw)
        v = test_randf(&seed, -100.0f, 100.0f);
    REQUIRE(gpu->upload(gpu, &p.g, raw.data()) == EASEL_OK, "%s", easel_errmsg());
    REQUIRE(gpu->download(gpu, &p.g, got.data()) == EASEL_OK, "%s", easel_errmsg());
    int bad = 0;
    for (size_t i = 0; i < raw.size(); i++)
        bad += got[i] != r16(raw[i]);
    CHECK(bad == 0, "%d values not rounded to nearest f16", bad);
    pfree(p);
}

/* f32 -> f16/bf16 -> f32 through copy; bit-exact against tensor.c's converters. */
static void test_copy_convert(void) {
    NEED_GPU();
    const int n = 1000;
    std::vector<float> x(n), got(n);
    for (auto &v : x)
        v = test_randf(&seed, -3.0f, 3.0f) * (test_randf(&seed, 0, 1) < 0.1f ? 1e-6f : 1.0f);
    x[0] = 65520.0f, x[1] = -1e-8f, x[2] = 0.0f;
    tensor f32, h, bf, back;
    const int64_t ne[1] = {n};
    REQUIRE(!backend_tensor_alloc(gpu, &f32, DT_F32, 1, ne), "%s", easel_errmsg());
    REQUIRE(!backend_tensor_alloc(gpu, &h, DT_F16, 1, ne), "alloc");
    REQUIRE(!backend_tensor_alloc(gpu, &bf, DT_BF16, 1, ne), "alloc");
    REQUIRE(!backend_tensor_alloc(gpu, &back, DT_F32, 1, ne), "alloc");
    CHECK(gpu->upload(gpu, &f32, x.data()) == EASEL_OK, "%s", easel_errmsg());
    CHECK(gpu->copy(gpu, &h, &f32) == EASEL_OK, "%s", easel_errmsg());
    CHECK(gpu->copy(gpu, &back, &h) == EASEL_OK, "%s", easel_errmsg());
    gpu->download(gpu, &back, got.data());
    int bad = 0;
    for (int i = 0; i < n; i++) {
        float want = r16(x[i]);
        bad += memcmp(&got[i], &want, 4) != 0;
    }
    CHECK(bad == 0, "f32->f16->f32: %d mismatches", bad);
    CHECK(isinf(got[0]), "65520 rounds to inf in f16");
    CHECK(gpu->copy(gpu, &bf, &f32) == EASEL_OK, "%s", easel_errmsg());
    CHECK(gpu->copy(gpu, &back, &bf) == EASEL_OK, "%s", easel_errmsg());
    gpu->download(gpu, &back, got.data());
    bad = 0;
    for (int i = 0; i < n; i++)
        bad += got[i] != bf16_to_f32(f32_to_bf16(x[i]));
    CHECK(bad == 0, "f32->bf16->f32: %d mismatches", bad);
    CHECK(gpu->copy(gpu, &h, &bf) == EASEL_OK, "bf16->f16: %s", easel_errmsg());
    gpu->download(gpu, &h, got.data());
    bad = 0;
    for (int i = 0; i < n; i++)
        bad += got[i] != r16(bf16_to_f32(f32_to_bf16(x[i])));
    CHECK(bad == 0, "bf16->f16: %d mismatches", bad);
    backend_tensor_free(gpu, &f32);
    backend_tensor_free(gpu, &h);
    backend_tensor_free(gpu, &bf);
    backend_tensor_free(gpu, &back);
}

/* ------------------------------------------------------------ elementwise */

static void test_unary(void) {
    NEED_GPU();
    const char *names[] = {"silu", "gelu", "quick_gelu", "relu", "tanh"};
    std::vector<std::vector<int64_t>> shapes = {{1}, {7, 33}, {3, 5, 17}, {2, 3, 4, 129}};
    for (auto &s : shapes)
        for (int op = 0; op < UNARY_COUNT; op++) {
            pair x = rnd(s, -6.0f, 6.0f), y = out(s);
            CHECK(cpu->unary(cpu, &y.c, &x.c, (unary_op)op) == EASEL_OK, "%s", easel_errmsg());
            CHECK(gpu->unary(gpu, &y.g, &x.g, (unary_op)op) == EASEL_OK, "%s", easel_errmsg());
            compare((std::string(names[op]) + shp(s)).c_str(), y, 2e-3);
            /* in place */
            CHECK(cpu->unary(cpu, &x.c, &x.c, (unary_op)op) == EASEL_OK, "in place");
            CHECK(gpu->unary(gpu, &x.g, &x.g, (unary_op)op) == EASEL_OK, "in place");
            compare((std::string(names[op]) + " in place").c_str(), x, 2e-3);
            pfree(x);
            pfree(y);
        }
}

static void test_geglu(void) {
    NEED_GPU();
    std::vector<std::vector<int64_t>> shapes = {{1, 1}, {5, 13}, {2, 3, 40}, {2, 70, 160}};
    for (auto &s : shapes) {
        std::vector<int64_t> sx = s;
        sx.back() *= 2;
        pair x = rnd(sx, -4.0f, 4.0f), y = out(s);
        CHECK(cpu->geglu(cpu, &y.c, &x.c) == EASEL_OK, "%s", easel_errmsg());
        CHECK(gpu->geglu(gpu, &y.g, &x.g) == EASEL_OK, "%s", easel_errmsg());
        compare(("geglu" + shp(s)).c_str(), y, 2e-3);
        pfree(x);
        pfree(y);
    }
}

static void test_binary(void) {
    NEED_GPU();
    std::vector<int64_t> a_shape = {2, 5, 7, 9};
    std::vector<std::vector<int64_t>> b_shapes = {{9},          {1, 5, 1, 9}, {2, 1, 7, 1},
                                                  {2, 5, 7, 9}, {1},          {7, 9}};
    for (auto &bs : b_shapes)
        for (int op = 0; op < BINARY_COUNT; op++) {
            pair a = rnd(a_shape, -3, 3), b = rnd(bs, -3, 3), y = out(a_shape);
            CHECK(cpu->binary(cpu, &y.c, &a.c, &b.c, (binary_op)op) == EASEL_OK, "%s",
                  easel_errmsg());
            CHECK(gpu->binary(gpu, &y.g, &a.g, &b.g, (binary_op)op) == EASEL_OK, "%s",
                  easel_errmsg());
            compare(((op ? "mul " : "add ") + shp(bs)).c_str(), y, 2e-3);
            CHECK(cpu->binary(cpu, &a.c, &a.c, &b.c, (binary_op)op) == EASEL_OK, "in place");
            CHECK(gpu->binary(gpu, &a.g, &a.g, &b.g, (binary_op)op) == EASEL_OK, "in place");
            compare(((op ? "mul in place " : "add in place ") + shp(bs)).c_str(), a, 2e-3);
            pfree(a);
            pfree(b);
            pfree(y);
        }
    pair a = rnd({3, 4}), b = rnd({3, 1, 4}), y = out({3, 4});
    CHECK(gpu->binary(gpu, &y.g, &a.g, &b.g, BINARY_ADD) == EASEL_EINVAL, "b with more dims");
    pair c = rnd({2, 4}), d = out({3, 4});
    CHECK(gpu->binary(gpu, &d.g, &a.g, &c.g, BINARY_ADD) == EASEL_EINVAL, "no broadcast 2 -> 3");
    pfree(a), pfree(b), pfree(y), pfree(c), pfree(d);
}

static void test_axpby(void) {
    NEED_GPU();
    std::vector<std::vector<int64_t>> shapes = {{1}, {257}, {2, 4, 4, 33}};
    for (auto &s : shapes) {
        pair x = rnd(s), z = rnd(s), y = out(s);
        CHECK(cpu->axpby(cpu, &y.c, 0.7f, &x.c, -1.3f, &z.c) == EASEL_OK, "%s", easel_errmsg());
        CHECK(gpu->axpby(gpu, &y.g, 0.7f, &x.g, -1.3f, &z.g) == EASEL_OK, "%s", easel_errmsg());
        compare(("axpby" + shp(s)).c_str(), y, 2e-3);
        CHECK(cpu->axpby(cpu, &z.c, 2.0f, &x.c, 0.5f, &z.c) == EASEL_OK, "in place z");
        CHECK(gpu->axpby(gpu, &z.g, 2.0f, &x.g, 0.5f, &z.g) == EASEL_OK, "in place z");
        compare("axpby in place", z, 2e-3);
        pfree(x), pfree(z), pfree(y);
    }
}

static void test_upsample_concat(void) {
    NEED_GPU();
    std::vector<std::vector<int64_t>> shapes = {{1, 1, 1, 1}, {1, 3, 5, 7}, {2, 4, 4, 33}};
    for (auto &s : shapes) {
        pair x = rnd(s), y = out({s[0], 2 * s[1], 2 * s[2], s[3]});
        CHECK(cpu->upsample2x(cpu, &y.c, &x.c) == EASEL_OK, "%s", easel_errmsg());
        CHECK(gpu->upsample2x(gpu, &y.g, &x.g) == EASEL_OK, "%s", easel_errmsg());
        compare(("upsample2x" + shp(s)).c_str(), y, 1e-6);
        pfree(x), pfree(y);
    }
    std::vector<std::array<int64_t, 3>> cs = {{1, 1, 1}, {6, 5, 7}, {128, 320, 640}};
    for (auto &c : cs) {
        pair a = rnd({2, c[0], c[1]}), b = rnd({2, c[0], c[2]}), y = out({2, c[0], c[1] + c[2]});
        CHECK(cpu->concat(cpu, &y.c, &a.c, &b.c) == EASEL_OK, "%s", easel_errmsg());
        CHECK(gpu->concat(gpu, &y.g, &a.g, &b.g) == EASEL_OK, "%s", easel_errmsg());
        compare("concat", y, 1e-6);
        pfree(a), pfree(b), pfree(y);
    }
}

static void test_pad2d(void) {
    NEED_GPU();
    /* N, H, W, C, Hy, Wy, top, left: Downsample2D's (0,1,0,1), odd sizes, an offset */
    std::vector<std::array<int64_t, 8>> cs = {{1, 1, 1, 1, 2, 2, 0, 0},
                                              {2, 5, 3, 7, 6, 4, 0, 0},
                                              {1, 64, 64, 128, 65, 65, 0, 0},
                                              {1, 4, 4, 3, 7, 9, 2, 3}};
    for (auto &c : cs) {
        pair x = rnd({c[0], c[1], c[2], c[3]}), y = out({c[0], c[4], c[5], c[3]});
        CHECK(cpu->pad2d(cpu, &y.c, &x.c, (int)c[6], (int)c[7]) == EASEL_OK, "%s", easel_errmsg());
        CHECK(gpu->pad2d(gpu, &y.g, &x.g, (int)c[6], (int)c[7]) == EASEL_OK, "%s", easel_errmsg());
        compare(("pad2d" + shp({c[0], c[1], c[2], c[3]})).c_str(), y, 1e-6);
        pfree(x), pfree(y);
    }
}

static void test_timestep_embedding(void) {
    NEED_GPU();
    const float t[4] = {0.0f, 1.0f, 999.0f, 500.5f};
    int dims[] = {320, 7, 4};
    for (int dim : dims)
        for (int flip = 0; flip < 2; flip++) {
            pair y = out({4, dim});
            float shift = flip ? 0.0f : 1.0f;
            CHECK(cpu->timestep_embedding(cpu, &y.c, t, flip, shift, 10000.0f) == EASEL_OK, "%s",
                  easel_errmsg());
            CHECK(gpu->timestep_embedding(gpu, &y.g, t, flip, shift, 10000.0f) == EASEL_OK, "%s",
                  easel_errmsg());
            compare(("timestep dim " + std::to_string(dim) + (flip ? " flip" : "")).c_str(), y,
                    2e-3);
            pfree(y);
        }
}

static void test_gather_rows(void) {
    NEED_GPU();
    pair table = rnd({50, 17}), y = out({9, 17});
    int32_t ids[9] = {0, 49, 3, 3, 17, 25, 1, 48, 0};
    CHECK(cpu->gather_rows(cpu, &y.c, &table.c, ids, 9) == EASEL_OK, "%s", easel_errmsg());
    CHECK(gpu->gather_rows(gpu, &y.g, &table.g, ids, 9) == EASEL_OK, "%s", easel_errmsg());
    compare("gather_rows", y, 1e-6);
    int32_t badid[1] = {50};
    CHECK(gpu->gather_rows(gpu, &y.g, &table.g, badid, 1) != EASEL_OK, "id out of range accepted");
    pfree(table), pfree(y);
}

/* ------------------------------------------------------------ norms */

static void test_group_norm(void) {
    NEED_GPU();
    struct gn_case {
        std::vector<int64_t> s;
        int groups;
    };
    std::vector<gn_case> cases = {{{2, 5, 7, 64}, 32},
                                  {{1, 3, 3, 96}, 32},
                                  {{2, 77, 40}, 8},
                                  {{1, 1, 1, 4}, 4},
                                  /* large groups: statistics split over 2 and 9 blocks */
                                  {{1, 40, 40, 64}, 4},
                                  {{2, 96, 96, 32}, 2}};
    if (full_shapes) {
        cases.push_back({{2, 64, 64, 320}, 32});   /* UNet, 512^2 */
        cases.push_back({{1, 256, 256, 256}, 32}); /* VAE decoder */
    }
    for (auto &c : cases)
        for (int silu = 0; silu < 2; silu++) {
            int64_t ch = c.s.back();
            pair x = rnd(c.s, 3.0f, 5.0f), g = rnd({ch}, 0.5f, 1.5f), b = rnd({ch}), y = out(c.s);
            CHECK(cpu->group_norm(cpu, &y.c, &x.c, &g.c, &b.c, c.groups, 1e-5f, silu) == EASEL_OK,
                  "%s", easel_errmsg());
            CHECK(gpu->group_norm(gpu, &y.g, &x.g, &g.g, &b.g, c.groups, 1e-5f, silu) == EASEL_OK,
                  "%s", easel_errmsg());
            compare(("group_norm" + shp(c.s) + (silu ? "+silu" : "")).c_str(), y, 5e-3);
            CHECK(gpu->group_norm(gpu, &x.g, &x.g, &g.g, &b.g, c.groups, 1e-5f, silu) == EASEL_OK,
                  "in place");
            CHECK(cpu->group_norm(cpu, &x.c, &x.c, &g.c, &b.c, c.groups, 1e-5f, silu) == EASEL_OK,
                  "in place");
            compare("group_norm in place", x, 5e-3);
            pfree(x), pfree(g), pfree(b), pfree(y);
        }
    { /* a ramp along the image: the split slices have different means, so
       * merging their statistics must account for it */
        pair x = rnd({1, 96, 96, 32}), g = rnd({32}, 0.5f, 1.5f), b = rnd({32}),
             y = out({1, 96, 96, 32});
        for (size_t i = 0; i < x.host.size(); i++)
            x.host[i] = r16(x.host[i] + (float)(i / (96 * 32)) / 12.0f);
        cpu->upload(cpu, &x.c, x.host.data());
        gpu->upload(gpu, &x.g, x.host.data());
        CHECK(cpu->group_norm(cpu, &y.c, &x.c, &g.c, &b.c, 2, 1e-5f, 0) == EASEL_OK, "ramp");
        CHECK(gpu->group_norm(gpu, &y.g, &x.g, &g.g, &b.g, 2, 1e-5f, 0) == EASEL_OK, "ramp");
        compare("group_norm, ramp across the split", y, 5e-3);
        pfree(x), pfree(g), pfree(b), pfree(y);
    }
    pair x = rnd({1, 2, 2, 10}), g = rnd({10}), b = rnd({10}), y = out({1, 2, 2, 10});
    CHECK(gpu->group_norm(gpu, &y.g, &x.g, &g.g, &b.g, 3, 1e-5f, 0) == EASEL_EINVAL,
          "10 channels / 3 groups");
    pfree(x), pfree(g), pfree(b), pfree(y);
}

static void test_layer_norm(void) {
    NEED_GPU();
    std::vector<std::vector<int64_t>> shapes = {{1, 1}, {3, 77, 40}, {5, 768}, {2, 33, 1280}};
    for (auto &s : shapes) {
        pair x = rnd(s, -2.0f, 6.0f), g = rnd({s.back()}, 0.5f, 1.5f), b = rnd({s.back()}),
             y = out(s);
        CHECK(cpu->layer_norm(cpu, &y.c, &x.c, &g.c, &b.c, 1e-5f) == EASEL_OK, "%s",
              easel_errmsg());
        CHECK(gpu->layer_norm(gpu, &y.g, &x.g, &g.g, &b.g, 1e-5f) == EASEL_OK, "%s",
              easel_errmsg());
        compare(("layer_norm" + shp(s)).c_str(), y, 5e-3);
        pfree(x), pfree(g), pfree(b), pfree(y);
    }
}

static void test_softmax(void) {
    NEED_GPU();
    std::vector<std::vector<int64_t>> shapes = {{1, 1}, {3, 7}, {2, 100}, {2, 3, 1000}};
    for (auto &s : shapes) {
        pair x = rnd(s, -20.0f, 20.0f), y = out(s);
        CHECK(cpu->softmax(cpu, &y.c, &x.c) == EASEL_OK, "%s", easel_errmsg());
        CHECK(gpu->softmax(gpu, &y.g, &x.g) == EASEL_OK, "%s", easel_errmsg());
        compare(("softmax" + shp(s)).c_str(), y, 5e-3);
        pfree(x), pfree(y);
    }
}

/* ------------------------------------------------------------ attention */

struct att_case {
    int64_t b, lq, lk, h, d;
    int causal;
};

static void run_attention(const att_case &a) {
    std::vector<int64_t> sq = {a.b, a.lq, a.h * a.d}, sk = {a.b, a.lk, a.h * a.d};
    pair q = rnd(sq, -2.0f, 2.0f), k = rnd(sk, -2.0f, 2.0f), v = rnd(sk), o = out(sq);
    char what[128];
    snprintf(what, sizeof what, "attention b%lld lq%lld lk%lld h%lld d%lld%s", (long long)a.b,
             (long long)a.lq, (long long)a.lk, (long long)a.h, (long long)a.d,
             a.causal ? " causal" : "");
    CHECK(cpu->attention(cpu, &o.c, &q.c, &k.c, &v.c, (int)a.h, a.causal) == EASEL_OK, "%s",
          easel_errmsg());
    CHECK(gpu->attention(gpu, &o.g, &q.g, &k.g, &v.g, (int)a.h, a.causal) == EASEL_OK, "%s",
          easel_errmsg());
    compare(what, o, 1e-2);
    pfree(q), pfree(k), pfree(v), pfree(o);
}

static void test_attention(void) {
    NEED_GPU();
    std::vector<att_case> cases = {
        {1, 70, 77, 2, 40, 0}, /* cross-attention: 77 keys, 40-dim heads */
        {2, 33, 33, 1, 64, 1}, /* causal (CLIP), tails in both tiles */
        {1, 17, 77, 1, 80, 0},
        {1, 65, 65, 2, 160, 0},
        {1, 1, 1, 1, 8, 0},
        {1, 5, 1, 3, 24, 0},
        {1, 100, 100, 1, 40, 1},
        /* 3+ key tiles: the double buffer's stages are reused */
        {1, 70, 200, 2, 64, 0},
        {1, 200, 200, 1, 40, 1},
        {1, 20, 300, 1, 80, 0},
        {1, 70, 150, 1, 36, 0}, /* d % 8 != 0: plain loads instead of cp.async */
    };
    if (full_shapes) {
        cases.push_back({2, 4096, 4096, 8, 40, 0}); /* SD1.5 512^2, first block */
        cases.push_back({2, 4096, 77, 8, 40, 0});
        cases.push_back({2, 1024, 1024, 8, 80, 0});
        cases.push_back({2, 256, 256, 8, 160, 0});
        cases.push_back({2, 77, 77, 12, 64, 1});
    }
    for (auto &c : cases)
        run_attention(c);
}

/* Head dims above the flash kernel's 256 go through GEMM -> softmax -> GEMM:
 * the VAE's mid-block attention is one 512-wide head. */
static void test_attention_wide_heads(void) {
    NEED_GPU();
    std::vector<att_case> cases = {
        {1, 70, 77, 1, 512, 0}, /* the VAE's head (its tokens: 64x64 latents at 512^2) */
        {1, 33, 33, 1, 512, 1}, /* causal */
        {2, 20, 30, 2, 288, 0}, /* several heads and batches, d not a power of two */
    };
    if (full_shapes) {
        cases.push_back({1, 4096, 4096, 1, 512, 0});   /* VAE decode at 512^2 */
        cases.push_back({1, 16384, 16384, 1, 512, 0}); /* 1024^2: 32 query chunks */
    }
    for (auto &c : cases)
        run_attention(c);
}

/* ------------------------------------------------------------ GEMM, conv */

static void test_linear(void) {
    NEED_GPU();
    struct {
        std::vector<int64_t> x;
        int64_t n;
        int bias;
    } cases[] = {{{7, 33}, 19, 1}, {{2, 5, 64}, 48, 0}, {{1, 1}, 1, 1}, {{3, 77, 40}, 120, 1}};
    for (auto &c : cases) {
        int64_t k = c.x.back();
        std::vector<int64_t> sy = c.x;
        sy.back() = c.n;
        pair x = rnd(c.x), w = rnd({c.n, k}), b = rnd({c.n}), y = out(sy);
        const tensor *bc = c.bias ? &b.c : NULL, *bg = c.bias ? &b.g : NULL;
        CHECK(cpu->linear(cpu, &y.c, &x.c, &w.c, bc) == EASEL_OK, "%s", easel_errmsg());
        CHECK(gpu->linear(gpu, &y.g, &x.g, &w.g, bg) == EASEL_OK, "%s", easel_errmsg());
        compare(("linear" + shp(c.x) + " n" + std::to_string(c.n)).c_str(), y, 5e-3);
        pfree(x), pfree(w), pfree(b), pfree(y);
    }
}

/* lora_merge: y = w + scale·up·down, fp16 weights, f32 factors (uploaded as
 * f32 on both sides), against the CPU backend's fp32 merge; one fp16
 * rounding, so the elementwise tolerance; also in place, and tiles that
 * R, N and K do not fill. */
static void test_lora_merge(void) {
    NEED_GPU();
    struct {
        std::vector<int64_t> w;
        int64_t r;
    } cases[] = {{{1, 1}, 1}, {{7, 33}, 3}, {{65, 130}, 17}, {{40, 3, 3, 24}, 8}, {{130, 200}, 64}};
    for (auto &c : cases) {
        int64_t n = c.w[0], k = 1;
        for (size_t i = 1; i < c.w.size(); i++)
            k *= c.w[i];
        pair w = rnd(c.w), y = out(c.w);
        tensor uc, dc, ug, dg;
        const int64_t une[2] = {n, c.r}, dne[2] = {c.r, k};
        REQUIRE(!backend_tensor_alloc(cpu, &uc, DT_F32, 2, une) &&
                    !backend_tensor_alloc(cpu, &dc, DT_F32, 2, dne) &&
                    !backend_tensor_alloc(gpu, &ug, DT_F32, 2, une) &&
                    !backend_tensor_alloc(gpu, &dg, DT_F32, 2, dne),
                "alloc: %s", easel_errmsg());
        std::vector<float> u((size_t)(n * c.r)), d((size_t)(c.r * k));
        for (auto &v : u)
            v = test_randf(&seed, -1.0f, 1.0f);
        for (auto &v : d)
            v = test_randf(&seed, -1.0f, 1.0f);
        cpu->upload(cpu, &uc, u.data()), cpu->upload(cpu, &dc, d.data());
        gpu->upload(gpu, &ug, u.data()), gpu->upload(gpu, &dg, d.data());
        std::string what = "lora_merge" + shp(c.w) + " r" + std::to_string(c.r);
        CHECK(cpu->lora_merge(cpu, &y.c, &w.c, &uc, &dc, 0.25f) == EASEL_OK, "%s", easel_errmsg());
        CHECK(gpu->lora_merge(gpu, &y.g, &w.g, &ug, &dg, 0.25f) == EASEL_OK, "%s", easel_errmsg());
        compare(what.c_str(), y, 2e-3);
        CHECK(gpu->lora_merge(gpu, &w.g, &w.g, &ug, &dg, 0.25f) == EASEL_OK, "in place: %s",
              easel_errmsg());
        pair in_place = w; /* w.c is untouched: compare w.g with the merged y.c */
        in_place.c = y.c;
        compare((what + " in place").c_str(), in_place, 2e-3);
        backend_tensor_free(cpu, &uc), backend_tensor_free(cpu, &dc);
        backend_tensor_free(gpu, &ug), backend_tensor_free(gpu, &dg);
        pfree(w), pfree(y);
    }
}

static void test_bmm(void) {
    NEED_GPU();
    struct {
        int64_t b, m, n, k;
        int tb;
        float alpha;
    } cases[] = {{3, 17, 21, 40, 1, 0.125f},
                 {2, 9, 11, 13, 0, 1.0f},
                 {1, 1, 1, 1, 0, 2.0f},
                 {4, 33, 77, 64, 1, 1.0f}};
    for (auto &c : cases) {
        pair a = rnd({c.b, c.m, c.k}), b = c.tb ? rnd({c.b, c.n, c.k}) : rnd({c.b, c.k, c.n});
        pair y = out({c.b, c.m, c.n});
        CHECK(cpu->bmm(cpu, &y.c, &a.c, &b.c, c.tb, c.alpha) == EASEL_OK, "%s", easel_errmsg());
        CHECK(gpu->bmm(gpu, &y.g, &a.g, &b.g, c.tb, c.alpha) == EASEL_OK, "%s", easel_errmsg());
        compare(c.tb ? "bmm trans_b" : "bmm", y, 5e-3);
        pfree(a), pfree(b), pfree(y);
    }
}

struct conv_case {
    int64_t n, h, w, ci, co, k;
    int stride, pad, bias;
};

static void run_conv(const conv_case &c) {
    int64_t ho = (c.h + 2 * c.pad - c.k) / c.stride + 1,
            wo = (c.w + 2 * c.pad - c.k) / c.stride + 1;
    pair x = rnd({c.n, c.h, c.w, c.ci}), w = rnd({c.co, c.k, c.k, c.ci}, -0.3f, 0.3f),
         b = rnd({c.co});
    pair y = out({c.n, ho, wo, c.co});
    char what[128];
    snprintf(what, sizeof what, "conv2d x[%lld,%lld,%lld,%lld] %lldx%lld co%lld s%d p%d",
             (long long)c.n, (long long)c.h, (long long)c.w, (long long)c.ci, (long long)c.k,
             (long long)c.k, (long long)c.co, c.stride, c.pad);
    CHECK(cpu->conv2d(cpu, &y.c, &x.c, &w.c, c.bias ? &b.c : NULL, c.stride, c.pad) == EASEL_OK,
          "%s", easel_errmsg());
    CHECK(gpu->conv2d(gpu, &y.g, &x.g, &w.g, c.bias ? &b.g : NULL, c.stride, c.pad) == EASEL_OK,
          "%s", easel_errmsg());
    compare(what, y, 5e-3);
    pfree(x), pfree(w), pfree(b), pfree(y);
}

static void test_conv2d(void) {
    NEED_GPU();
    std::vector<conv_case> cases = {
        {1, 9, 7, 5, 6, 3, 1, 1, 1},  {1, 9, 7, 5, 6, 3, 2, 1, 1}, {2, 8, 8, 16, 8, 3, 2, 0, 0},
        {2, 5, 3, 12, 7, 1, 1, 0, 1}, {1, 1, 1, 3, 2, 1, 1, 0, 0}, {1, 4, 4, 4, 4, 3, 1, 1, 0},
    };
    if (full_shapes) {
        cases.push_back({2, 64, 64, 320, 320, 3, 1, 1, 1});
        cases.push_back({2, 64, 64, 320, 320, 3, 2, 1, 1});
        cases.push_back({1, 256, 256, 128, 128, 3, 1, 1, 1});
    }
    for (auto &c : cases)
        run_conv(c);
}

/* A worker with a small scratch buffer ($EASEL_CUDA_SCRATCH_KIB) runs the
 * chunked paths at small shapes: attention in query chunks, im2col in row
 * chunks, uploads/downloads in pieces. */
static void test_small_scratch_worker(void) {
    NEED_GPU();
    setenv("EASEL_CUDA_SCRATCH_KIB", "256", 1);
    backend *small = GPU_CREATE(-1);
    unsetenv("EASEL_CUDA_SCRATCH_KIB");
    REQUIRE(small, "%s", easel_errmsg());
    backend *saved = gpu;
    gpu = small;
    run_attention({1, 300, 300, 1, 512, 0}); /* 300 x 300 x 6 bytes > 256 KiB: 2 chunks */
    run_attention({1, 200, 200, 1, 512, 1});
    run_conv({1, 30, 30, 32, 16, 3, 1, 1, 1}); /* 900 rows x 576 halves: 4 chunks */
    pair big = rnd({100000});                  /* 400 KB of f32: uploads in 2 pieces */
    std::vector<float> back(100000);
    CHECK(gpu->download(gpu, &big.g, back.data()) == EASEL_OK, "%s", easel_errmsg());
    CHECK(memcmp(back.data(), big.host.data(), back.size() * 4) == 0, "chunked round trip");
    pfree(big);
    gpu = saved;
    backend_destroy(small);
}

/* ------------------------------------------------------------ errors */

static void test_errors(void) {
    NEED_GPU();
    pair x = rnd({4, 8}), y = out({4, 9});
    CHECK(gpu->unary(gpu, &y.g, &x.g, UNARY_SILU) == EASEL_EINVAL, "shape mismatch accepted");
    CHECK(strstr(easel_errmsg(), "unary") != NULL, "message names the op: %s", easel_errmsg());
    tensor nul = x.g;
    nul.data = NULL;
    CHECK(gpu->softmax(gpu, &nul, &x.g) == EASEL_EINVAL, "NULL output accepted");
    tensor f32;
    const int64_t ne[2] = {4, 8};
    REQUIRE(!backend_tensor_alloc(gpu, &f32, DT_F32, 2, ne), "alloc");
    CHECK(gpu->softmax(gpu, &f32, &f32) == EASEL_EUNSUPPORTED, "f32 op accepted");
    tensor host = x.c; /* a cpu tensor handed to the cuda backend */
    CHECK(gpu->softmax(gpu, &x.g, &host) == EASEL_EINVAL, "cpu tensor accepted");
    pair q = rnd({1, 4, 16}), k = rnd({1, 5, 16});
    CHECK(gpu->attention(gpu, &q.g, &q.g, &k.g, &k.g, 3, 0) == EASEL_EINVAL,
          "16 not divisible by 3 heads");
    CHECK(gpu->attention(gpu, &q.g, &q.g, &k.g, &k.g, 1, 1) == EASEL_EINVAL,
          "causal with Lq != Lk");
    backend_tensor_free(gpu, &f32);
    pfree(x), pfree(y), pfree(q), pfree(k);
}

/* ------------------------------------------------------------ a network */

/* TAESD end to end (every op it uses: conv2d, ReLU, tanh, axpby, broadcast
 * add, nearest 2x, stride 2) on the CUDA backend against the CPU one: the
 * 16-channel fixture model (tests/fixtures/taesd), decode and encode of
 * fp16-rounded inputs; fp16 storage through ~20 convs: rel L2 <= 1e-2. */
static void run_taesd(taesd_model *mc, taesd_model *mg, int decode, std::vector<int64_t> in,
                      std::vector<int64_t> outs, double tol) {
    pair x = rnd(in, decode ? -3.0f : -1.0f, decode ? 3.0f : 1.0f), y = out(outs);
    arena *ac = arena_create(cpu, 0), *ag = arena_create(gpu, 0);
    easel_err ec = decode ? taesd_decode(mc, ac, &x.c, &y.c) : taesd_encode(mc, ac, &x.c, &y.c);
    easel_err eg = decode ? taesd_decode(mg, ag, &x.g, &y.g) : taesd_encode(mg, ag, &x.g, &y.g);
    CHECK(ec == EASEL_OK && eg == EASEL_OK, "taesd: %s", easel_errmsg());
    compare(decode ? "taesd decode [1,8,12,4]" : "taesd encode [1,64,96,3]", y, tol);
    arena_free(ac), arena_free(ag);
    pfree(x), pfree(y);
}

static void test_taesd(void) {
    NEED_GPU();
    char path[512];
    test_fixture("taesd/model16", path, sizeof path);
    taesd_model *mc = NULL, *mg = NULL;
    REQUIRE(taesd_load(path, cpu, &mc) == EASEL_OK, "cpu: %s", easel_errmsg());
    REQUIRE(taesd_load(path, gpu, &mg) == EASEL_OK, "gpu: %s", easel_errmsg());
    run_taesd(mc, mg, 1, {1, 8, 12, 4}, {1, 64, 96, 3}, 1e-2);
    run_taesd(mc, mg, 0, {1, 64, 96, 3}, {1, 8, 12, 4}, 1e-2);
    taesd_free(mc), taesd_free(mg);
}

/* ------------------------------------------------------------ fp32 (the VAE's view) */

/* Every op again on the worker's fp32 view: fp32 storage, TF32 GEMMs,
 * attention through GEMMs; same tolerances (TF32 rounds operands as fp16 does). */
static void test_f32_view(void) {
    NEED_GPU();
    backend *v = backend_with_dtype(gpu, DT_F32);
    REQUIRE(v && v->act_dtype == DT_F32, "%s", easel_errmsg());
    CHECK(backend_with_dtype(v, DT_F16) == gpu, "the view's f16 view is the worker");
    CHECK(backend_with_dtype(gpu, DT_F32) == v, "one view per dtype");
    CHECK(backend_with_dtype(gpu, DT_BF16) == NULL, "bf16 is not stored by the cuda backend");
    backend *saved = gpu;
    gpu = v;
    test_unary();
    test_geglu();
    test_binary();
    test_axpby();
    test_upsample_concat();
    test_pad2d();
    test_timestep_embedding();
    test_gather_rows();
    test_group_norm();
    test_layer_norm();
    test_softmax();
    test_attention();
    test_attention_wide_heads();
    test_linear();
    test_bmm();
    test_conv2d();
    gpu = saved;
}

/* ------------------------------------------------------------ the backend's host side */

/* Uploads run on the worker's stream, after the work queued before them: a
 * copy of X queued before X is overwritten must see the old X (with a plain
 * cudaMemcpy on the legacy stream it would not). f32 tensors, the path that
 * used cudaMemcpy. */
static void test_upload_ordering(void) {
    NEED_GPU();
    backend *v = backend_with_dtype(gpu, DT_F32);
    REQUIRE(v, "%s", easel_errmsg());
    tensor x, y;
    const int64_t ne[1] = {1000};
    REQUIRE(!backend_tensor_alloc(v, &x, DT_F32, 1, ne) &&
                !backend_tensor_alloc(v, &y, DT_F32, 1, ne),
            "alloc");
    std::vector<float> a(1000), b(1000), got(1000);
    for (int i = 0; i < 1000; i++)
        a[(size_t)i] = (float)i, b[(size_t)i] = -1.0f - (float)i;
    CHECK(v->upload(v, &x, a.data()) == EASEL_OK, "%s", easel_errmsg());
    CHECK(v->copy(v, &y, &x) == EASEL_OK, "%s", easel_errmsg()); /* queued */
    CHECK(v->upload(v, &x, b.data()) == EASEL_OK, "%s", easel_errmsg());
    CHECK(v->download(v, &y, got.data()) == EASEL_OK, "%s", easel_errmsg());
    CHECK(memcmp(got.data(), a.data(), 4000) == 0,
          "the upload overtook work queued before it (y[1] = %g)", got[1]);
    backend_tensor_free(v, &x);
    backend_tensor_free(v, &y);
}

static void test_timestep_embedding_dev(void) {
    NEED_GPU();
    const float tv[3] = {999.0f, 1.0f, 500.5f};
    tensor t;
    const int64_t nt[1] = {3};
    REQUIRE(!backend_tensor_alloc(gpu, &t, DT_F32, 1, nt), "alloc");
    CHECK(gpu->upload(gpu, &t, tv) == EASEL_OK, "%s", easel_errmsg());
    pair y = out({3, 320});
    CHECK(cpu->timestep_embedding(cpu, &y.c, tv, 1, 0.0f, 10000.0f) == EASEL_OK, "cpu");
    CHECK(backend_timestep_embedding_t(gpu, &y.g, &t, 1, 0.0f, 10000.0f) == EASEL_OK, "%s",
          easel_errmsg());
    compare("timestep embedding from a device tensor", y, 2e-3);
    pfree(y);
    backend_tensor_free(gpu, &t);
}

/* Repeated problems reuse their GEMM plan (descriptors and algorithm). */
static void test_gemm_plans(void) {
    NEED_GPU();
    backend *w = GPU_CREATE(-1);
    REQUIRE(w, "%s", easel_errmsg());
    backend *saved = gpu;
    gpu = w;
    pair x = rnd({7, 33}), wt = rnd({19, 33}), y = out({7, 19}), x2 = rnd({9, 33}),
         y2 = out({9, 19});
    long p0 = GPU_GEMM_PLANS(w);
    for (int i = 0; i < 5; i++)
        CHECK(w->linear(w, &y.g, &x.g, &wt.g, NULL) == EASEL_OK, "%s", easel_errmsg());
    long p1 = GPU_GEMM_PLANS(w);
    CHECK(w->linear(w, &y2.g, &x2.g, &wt.g, NULL) == EASEL_OK, "%s", easel_errmsg());
    long p2 = GPU_GEMM_PLANS(w);
    CHECK(p1 - p0 == 1 && p2 - p1 == 1,
          "plans made: %ld for 5 calls of one shape, %ld for a new one", p1 - p0, p2 - p1);
    cpu->linear(cpu, &y.c, &x.c, &wt.c, NULL);
    compare("linear with a cached plan", y, 5e-3);
    pfree(x), pfree(wt), pfree(y), pfree(x2), pfree(y2);
    gpu = saved;
    backend_destroy(w);
}

/* One "step": t -> embedding, y = linear(x) + embedding (fixed buffers). */
struct graph_step {
    tensor t, x, w, y, e;
    int allocate; /* plant an allocation inside the step */
};

static easel_err graph_step_fn(void *user) {
    graph_step *g = (graph_step *)user;
    easel_err e = backend_timestep_embedding_t(gpu, &g->e, &g->t, 1, 0.0f, 10000.0f);
    if (!e) e = gpu->linear(gpu, &g->y, &g->x, &g->w, NULL);
    if (!e) e = gpu->binary(gpu, &g->y, &g->y, &g->e, BINARY_ADD);
    if (!e && g->allocate) {
        void *p = NULL;
        e = gpu->alloc(gpu, 4096, &p);
        if (p) gpu->free(gpu, p);
    }
    return e;
}

/* The graph path under the emulator's capture model: eager, then captured,
 * then replayed — each run with new values uploaded into the same buffers
 * gives the right result; a step that allocates cannot be captured and runs
 * directly; new buffers (another layout) are captured again. */
static void test_graph_path(void) {
    NEED_GPU();
    graph_step g = {};
    const int64_t nt[1] = {2}, nx[2] = {2, 16}, nw[2] = {8, 16}, ny[2] = {2, 8};
    REQUIRE(!backend_tensor_alloc(gpu, &g.t, DT_F32, 1, nt) &&
                !backend_tensor_alloc(gpu, &g.x, DT_F16, 2, nx) &&
                !backend_tensor_alloc(gpu, &g.w, DT_F16, 2, nw) &&
                !backend_tensor_alloc(gpu, &g.y, DT_F16, 2, ny) &&
                !backend_tensor_alloc(gpu, &g.e, DT_F16, 2, ny),
            "alloc");
    tensor ct, cx, cw, cy, ce;
    REQUIRE(!backend_tensor_alloc(cpu, &ct, DT_F32, 1, nt) &&
                !backend_tensor_alloc(cpu, &cx, DT_F32, 2, nx) &&
                !backend_tensor_alloc(cpu, &cw, DT_F32, 2, nw) &&
                !backend_tensor_alloc(cpu, &cy, DT_F32, 2, ny) &&
                !backend_tensor_alloc(cpu, &ce, DT_F32, 2, ny),
            "alloc");
    std::vector<float> w(8 * 16);
    for (auto &v : w)
        v = r16(test_randf(&seed, -0.5f, 0.5f));
    gpu->upload(gpu, &g.w, w.data());
    cpu->upload(cpu, &cw, w.data());
    auto run = [&](backend_graph_key key, int runs, const char *what) {
        for (int i = 0; i < runs; i++) {
            std::vector<float> x(2 * 16), t = {(float)(100 * i + 7), (float)(900 - 50 * i)};
            for (auto &v : x)
                v = r16(test_randf(&seed, -1.0f, 1.0f));
            gpu->upload(gpu, &g.x, x.data());
            gpu->upload(gpu, &g.t, t.data());
            CHECK(backend_run_graph(gpu, &key, graph_step_fn, &g) == EASEL_OK, "%s run %d: %s",
                  what, i, easel_errmsg());
            cpu->upload(cpu, &cx, x.data());
            cpu->timestep_embedding(cpu, &ce, t.data(), 1, 0.0f, 10000.0f);
            cpu->linear(cpu, &cy, &cx, &cw, NULL);
            cpu->binary(cpu, &cy, &cy, &ce, BINARY_ADD);
            std::vector<float> a(16), b(16);
            cpu->download(cpu, &cy, a.data());
            CHECK(gpu->download(gpu, &g.y, b.data()) == EASEL_OK, "%s", easel_errmsg());
            double rel = test_rel_l2f(b.data(), a.data(), 16);
            CHECK(rel < 5e-3, "%s run %d: rel L2 %.3g against the CPU", what, i, rel);
        }
    };
    emu_counters c0, c1, c2, c3;
    emu_get_counters(&c0);
    backend_graph_key k1 = {2, 4, 4, 1};
    run(k1, 4, "captured step");
    emu_get_counters(&c1);
    CHECK(!have_counters || c1.captures_ok == c0.captures_ok + 1, "one capture (%ld)",
          c1.captures_ok - c0.captures_ok);
    CHECK(!have_counters || c1.graph_launches == c0.graph_launches + 3,
          "runs 2-4 replayed the graph (%ld)", c1.graph_launches - c0.graph_launches);
    g.allocate = 1;
    backend_graph_key k2 = {2, 8, 8, 1};
    emu_set_quiet(1);
    run(k2, 4, "step that allocates");
    emu_set_quiet(0);
    emu_get_counters(&c2);
    CHECK(!have_counters ||
              (c2.captures_failed == c1.captures_failed + 1 && c2.captures_ok == c1.captures_ok),
          "an allocation invalidates the capture once; then the step runs directly");
    CHECK(!have_counters || c2.graph_launches == c1.graph_launches,
          "no graph replayed for the eager step");
    g.allocate = 0;
    backend_graph_key k3 = {2, 4, 4, 2}; /* the same shape with other buffers */
    int n0 = GPU_GRAPH_COUNT(gpu);
    run(k3, 3, "recaptured step");
    emu_get_counters(&c3);
    CHECK(!have_counters || c3.captures_ok == c2.captures_ok + 1, "a new layout is captured again");
    CHECK(GPU_GRAPH_COUNT(gpu) == n0, "the stale graph of that shape was dropped (%d -> %d)", n0,
          GPU_GRAPH_COUNT(gpu));
    tensor *gt[] = {&g.t, &g.x, &g.w, &g.y, &g.e}, *ctt[] = {&ct, &cx, &cw, &cy, &ce};
    for (int i = 0; i < 5; i++)
        backend_tensor_free(gpu, gt[i]), backend_tensor_free(cpu, ctt[i]);
}

/* Two workers on two threads with different head dims: the kernel's shared-
 * memory attribute is set once, at worker creation, to the largest size, so
 * neither can make the other's launches fail (the emulator widens the window
 * in which a per-launch setting would have raced). */
struct att_thread_arg {
    backend *w;
    int64_t d;
    int failures, runs;
};

static void *att_thread(void *p) {
    att_thread_arg *a = (att_thread_arg *)p;
    tensor q;
    const int64_t ne[3] = {1, 40, a->d};
    if (backend_tensor_alloc(a->w, &q, DT_F16, 3, ne)) {
        a->failures = a->runs;
        return NULL;
    }
    std::vector<float> v((size_t)(40 * a->d), 0.25f), o(v.size());
    a->w->upload(a->w, &q, v.data());
    tensor out_t;
    backend_tensor_alloc(a->w, &out_t, DT_F16, 3, ne);
    for (int i = 0; i < a->runs; i++) {
        if (a->w->attention(a->w, &out_t, &q, &q, &q, 1, 0) ||
            a->w->download(a->w, &out_t, o.data()) || fabsf(o[0] - 0.25f) > 1e-3f)
            a->failures++;
    }
    backend_tensor_free(a->w, &q);
    backend_tensor_free(a->w, &out_t);
    return NULL;
}

static void test_attribute_race(void) {
    NEED_GPU();
    emu_counters c0, c1;
    att_thread_arg a = {GPU_CREATE(-1), 160, 0, 12}, b = {GPU_CREATE(-1), 40, 0, 12};
    REQUIRE(a.w && b.w, "%s", easel_errmsg());
    emu_get_counters(&c0);
    pthread_t ta, tb;
    pthread_create(&ta, NULL, att_thread, &a);
    pthread_create(&tb, NULL, att_thread, &b);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    emu_get_counters(&c1);
    CHECK(a.failures == 0 && b.failures == 0, "attention failed %d + %d times of %d + %d",
          a.failures, b.failures, a.runs, b.runs);
    CHECK(!have_counters || c1.attribute_sets == c0.attribute_sets,
          "attention set a kernel attribute per launch (%ld)",
          c1.attribute_sets - c0.attribute_sets);
    backend_destroy(a.w);
    backend_destroy(b.w);
}

/* ------------------------------------------------------------ host logic */

static int destroyed;
static void count_destroy(void *exec, void *user) {
    (void)exec;
    (void)user;
    destroyed++;
}

static void test_graph_cache(void) {
    destroyed = 0;
    graph_cache *c = graph_cache_create(2, count_destroy, NULL);
    REQUIRE(c, "create");
    int a, b, d;
    graph_key k1 = {2, 64, 64, 0}, k2 = {2, 96, 64, 0}, k3 = {1, 64, 64, 0};
    CHECK(graph_cache_get(c, k1) == NULL, "empty cache hit");
    CHECK(graph_cache_put(c, k1, &a) == EASEL_OK, "put");
    CHECK(graph_cache_put(c, k2, &b) == EASEL_OK, "put");
    CHECK(graph_cache_get(c, k1) == &a, "k1 lookup");
    CHECK(graph_cache_put(c, k3, &d) == EASEL_OK, "put evicts");
    CHECK(destroyed == 1 && graph_cache_get(c, k2) == NULL, "least recently used (k2) evicted");
    CHECK(graph_cache_get(c, k1) == &a && graph_cache_get(c, k3) == &d, "k1, k3 kept");
    CHECK(graph_cache_put(c, k1, &b) == EASEL_OK && destroyed == 2,
          "replace destroys the old graph");
    CHECK(graph_cache_size(c) == 2, "size %d", graph_cache_size(c));
    CHECK(graph_cache_put(c, k1, NULL) == EASEL_EINVAL, "NULL graph accepted");
    CHECK(graph_cache_seen(c, k2) == 1 && graph_cache_seen(c, k2) == 2, "seen counts per key");
    CHECK(graph_cache_seen(c, k3) == 1, "seen is per key");
    graph_cache_free(c);
    CHECK(destroyed == 4, "free destroys what is left (%d)", destroyed);
}

static void test_host_sizing(void) {
    CHECK(cuda_im2col_chunk(100, 10, 2, 1000) == 50, "50 rows of 20 bytes fit 1000");
    CHECK(cuda_im2col_chunk(10, 10, 2, 1000) == 10, "capped at rows");
    CHECK(cuda_im2col_chunk(10, 1000, 2, 100) == 1, "at least one row");
    CHECK(cuda_im2col_bytes(100, 10, 2, 1000) == 1000, "bytes");
    /* SD1.5 512^2, first up-block conv: 2x64x64 pixels, 3x3x1280 -> bounded by the budget */
    size_t b = cuda_im2col_bytes(2 * 64 * 64, 9 * 1280, 2, (size_t)64 << 20);
    CHECK(b <= ((size_t)64 << 20) && b > ((size_t)60 << 20), "scratch %zu", b);
    easel_err e = cuda_oom_error("alloc", (size_t)1536 << 20, (size_t)512 << 20, (size_t)80 << 30);
    CHECK(e == EASEL_ENOMEM, "code");
    CHECK(strstr(easel_errmsg(), "out of GPU memory: needed 1536.0 MiB, free 512.0 MiB") != NULL,
          "%s", easel_errmsg());
}

static easel_err step_fn(void *user) {
    pair *p = (pair *)user;
    return gpu->axpby(gpu, &p->g, 1.0f, &p->g, 1.0f, &p->g); /* doubles */
}

/* Several workers on one device: weights from one used by another; OOM is an
 * error with sizes; graph runs give the same result whether captured or not. */
static void test_workers(void) {
    NEED_GPU();
    backend *w2 = GPU_CREATE(-1);
    REQUIRE(w2, "second worker: %s", easel_errmsg());
    pair x = rnd({5, 16}), w = rnd({8, 16}), y = out({5, 8});
    CHECK(cpu->linear(cpu, &y.c, &x.c, &w.c, NULL) == EASEL_OK, "%s", easel_errmsg());
    CHECK(w2->linear(w2, &y.g, &x.g, &w.g, NULL) == EASEL_OK, "worker 2: %s", easel_errmsg());
    CHECK(w2->sync(w2) == EASEL_OK, "sync");
    compare("linear on a second worker", y, 5e-3);
    void *p = NULL;
    easel_err e = w2->alloc(w2, (size_t)1 << 50, &p);
    CHECK(e == EASEL_ENOMEM && p == NULL, "1 PiB allocation: %d", (int)e);
    CHECK(strstr(easel_errmsg(), "out of GPU memory: needed") != NULL, "message: %s",
          easel_errmsg());
    backend_destroy(w2);

    pair s = rnd({3, 5});
    std::vector<float> before(15), after(15);
    gpu->download(gpu, &s.g, before.data());
    backend_graph_key key = {1, 8, 8, (uint64_t)(uintptr_t)s.g.data};
    for (int i = 0; i < 4; i++)
        CHECK(backend_run_graph(gpu, &key, step_fn, &s) == EASEL_OK, "%s", easel_errmsg());
    gpu->download(gpu, &s.g, after.data());
    int bad = 0;
    for (int i = 0; i < 15; i++)
        bad += fabsf(after[(size_t)i] - 16.0f * before[(size_t)i]) >
               1e-2f * fabsf(before[(size_t)i]) + 1e-4f;
    CHECK(bad == 0, "4 graph runs of x *= 2 gave %d wrong values", bad);
    CHECK(GPU_GRAPH_COUNT(gpu) <= 1, "at most one graph for one shape");
    pfree(x), pfree(w), pfree(y), pfree(s);
}

#ifdef EASEL_CUDA_EMU
/* ---- the emulator's own primitives (kernels written here, run by emu.cpp) ---- */
#include "../kernels/common.cuh"

__global__ void emu_probe_kernel(int *out) {
    EASEL_SHARED(int, s, 64);
    int t = threadIdx.x, lane = t & 31;
    s[t] = t * 3;
    __syncthreads();
    int sum = lane;
    for (int o = 16; o > 0; o >>= 1)
        sum += __shfl_xor_sync(0xffffffffu, sum, o);
    int down = __shfl_down_sync(0xffffffffu, lane, 1);
    unsigned odd = __ballot_sync(0xffffffffu, lane & 1);
    int any = __any_sync(0xffffffffu, t == 40), all = __all_sync(0xffffffffu, lane < 32);
    out[t] = s[63 - t];  /* written by another thread before the barrier */
    out[64 + t] = sum;   /* 0 + 1 + ... + 31 = 496 in every lane */
    out[128 + t] = down; /* lane + 1, the last lane keeps its own */
    out[192 + t] = (int)(odd == 0xaaaaaaaau) + 2 * any + 4 * all;
    if (t == 0) atomicAdd(&out[256], (int)blockIdx.x + 1);
}

__global__ void emu_deadlock_kernel(int *out) {
    if (threadIdx.x < 5)
        __syncthreads();
    else
        __syncwarp();
    out[0] = 1;
}

__global__ void emu_misaligned_kernel(const half *p) {
    nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, half, nvcuda::wmma::row_major> a;
    nvcuda::wmma::load_matrix_sync(a, p + 1, 16);
}

static void test_emu_primitives(void) {
    std::vector<int> out(257, -1);
    int *o = out.data();
    out[256] = 0;
    emu_launch(dim3(3), dim3(64), 0, [=]() { emu_probe_kernel(o); });
    CHECK(cudaGetLastError() == cudaSuccess, "probe launch failed");
    int bad = 0;
    for (int t = 0; t < 64; t++) {
        int lane = t & 31;
        bad += out[(size_t)t] != (63 - t) * 3;
        bad += out[(size_t)(64 + t)] != 496;
        bad += out[(size_t)(128 + t)] != (lane == 31 ? 31 : lane + 1);
        bad += out[(size_t)(192 + t)] != 1 + 2 * (t >= 32) + 4;
    }
    CHECK(bad == 0, "%d wrong probe values", bad);
    CHECK(out[256] == 1 + 2 + 3, "atomicAdd over blocks: %d", out[256]);
    emu_set_quiet(!getenv("TEST_VERBOSE"));
    emu_launch(dim3(1), dim3(32), 0, [=]() { emu_deadlock_kernel(o); });
    CHECK(cudaGetLastError() == cudaErrorLaunchFailure, "deadlock not reported");
    CHECK(strstr(emu_last_fault(), "deadlock") != NULL, "%s", emu_last_fault());
    emu_reset_device();
    std::vector<half> buf(512);
    const half *p = buf.data();
    emu_launch(dim3(1), dim3(32), 0, [=]() { emu_misaligned_kernel(p); });
    CHECK(cudaGetLastError() == cudaErrorLaunchFailure, "misaligned wmma load not reported");
    emu_reset_device();
    emu_launch(dim3(1), dim3(2048), 0, [=]() { emu_deadlock_kernel(o); });
    CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration, "2048 threads per block accepted");
    emu_set_quiet(0);
}

static void test_emu_device_limits(void) {
    size_t base = emu_device_bytes_in_use();
    emu_set_device_memory(base + ((size_t)64 << 20));
    void *p = NULL;
    easel_err e = gpu->alloc(gpu, (size_t)100 << 20, &p);
    CHECK(e == EASEL_ENOMEM, "100 MiB beyond a 64 MiB device");
    CHECK(strstr(easel_errmsg(), "needed 100.0 MiB, free 64.0 MiB") != NULL, "%s", easel_errmsg());
    emu_set_device_memory(0);
    emu_set_device_count(0);
    backend *none = GPU_CREATE(-1);
    CHECK(none == NULL, "created a backend without a device");
    CHECK(strstr(easel_errmsg(), "no usable CUDA device") != NULL, "%s", easel_errmsg());
    emu_set_device_count(1);
    backend *w = GPU_CREATE(0);
    REQUIRE(w, "%s", easel_errmsg());
    backend_destroy(w);
    CHECK(emu_device_bytes_in_use() == base, "a worker's memory is returned (%zu vs %zu)",
          emu_device_bytes_in_use(), base);
}

/* ---- the stricter emulator: each planted bug must be caught ---- */

/* Runs a test kernel; returns its error (resetting the device after a fault). */
static cudaError_t emu_try(dim3 grid, dim3 block, size_t smem, const std::function<void()> &k) {
    emu_set_quiet(!getenv("TEST_VERBOSE"));
    emu_launch(grid, block, smem, k);
    cudaError_t e = cudaGetLastError();
    if (e) emu_reset_device();
    emu_set_quiet(0);
    return e;
}

/* Each thread writes its slot, then reads its neighbour's. */
__global__ void neighbour_kernel(int *out, int barrier) {
    EASEL_SHARED(int, s, 128);
    int t = threadIdx.x, n = blockDim.x;
    s[t] = t * 7 + 1;
    if (barrier == 1) __syncthreads();
    if (barrier == 2) __syncwarp();
    out[t] = s[(t + 1) % n];
}

/* block_sum as kernels/common.cuh has it, minus its second __syncthreads:
 * calling it twice lets a fast warp overwrite red[] before a slow one read
 * the first sum. */
__device__ float block_sum_missing_sync(float v, float *red) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float t = lane < nw ? red[lane] : 0.0f;
    return warp_sum(t); /* planted bug: no __syncthreads before red is reused */
}

__global__ void two_sums_kernel(float *out, int planted) {
    EASEL_SHARED(float, red, 33);
    float x = (float)threadIdx.x;
    float a = planted ? block_sum_missing_sync(x, red) : block_sum(x, red);
    float b = planted ? block_sum_missing_sync(2 * x, red) : block_sum(2 * x, red);
    if (threadIdx.x == 0) out[0] = a, out[1] = b;
}

static void test_emu_planted_race(void) {
    if (!emu_racecheck_available())
        SKIP("this build has no emulator access hooks (ASan build: its instrumentation excludes "
             "ThreadSanitizer's)");
    std::vector<int> out(128, -1);
    int *o = out.data();
    emu_counters c0, c1;
    emu_get_counters(&c0);
    /* across warps with no barrier: a race */
    CHECK(emu_try(1, 128, 0, [=]() { neighbour_kernel(o, 0); }) == cudaErrorLaunchFailure,
          "shared-memory race across warps not caught");
    /* within a warp, __syncwarp is not enough across warps (lane 31 reads warp 1's slot 32) */
    CHECK(emu_try(1, 128, 0, [=]() { neighbour_kernel(o, 2); }) == cudaErrorLaunchFailure,
          "a race across warps hidden by __syncwarp");
    emu_get_counters(&c1);
    CHECK(c1.races >= c0.races + 2, "race counter %ld -> %ld", c0.races, c1.races);
    /* one warp: __syncwarp orders its lanes; no barrier does not */
    CHECK(emu_try(1, 32, 0, [=]() { neighbour_kernel(o, 0); }) == cudaErrorLaunchFailure,
          "race within a warp (no __syncwarp) not caught");
    CHECK(emu_try(1, 32, 0, [=]() { neighbour_kernel(o, 2); }) == cudaSuccess,
          "__syncwarp did not order a warp's lanes: %s", emu_last_fault());
    CHECK(emu_try(1, 128, 0, [=]() { neighbour_kernel(o, 1); }) == cudaSuccess,
          "__syncthreads did not order the block: %s", emu_last_fault());
    int bad = 0;
    for (int t = 0; t < 128; t++)
        bad += out[(size_t)t] != ((t + 1) % 128) * 7 + 1;
    CHECK(bad == 0, "%d wrong values with the barrier", bad);
}

static void test_emu_planted_missing_syncthreads(void) {
    if (!emu_racecheck_available())
        SKIP("this build has no emulator access hooks (ASan build: its instrumentation excludes "
             "ThreadSanitizer's)");
    std::vector<float> out(2, 0.0f);
    float *o = out.data();
    CHECK(emu_try(1, 256, 0, [=]() { two_sums_kernel(o, 0); }) == cudaSuccess, "%s",
          emu_last_fault());
    CHECK(out[0] == 32640.0f && out[1] == 65280.0f, "sums %g %g", out[0], out[1]);
    unsigned long long seed0 = emu_seed();
    for (int seed = 0; seed < 4; seed++) { /* caught under every schedule, not by luck */
        emu_set_seed(1000 + (unsigned long long)seed);
        cudaError_t e = emu_try(1, 256, 0, [=]() { two_sums_kernel(o, 1); });
        CHECK(e == cudaErrorLaunchFailure, "seed %d: missing __syncthreads not caught", seed);
    }
    emu_set_seed(seed0);
}

__global__ void poison_kernel(int *out) {
    EASEL_SHARED(int, s, 4);
    if (threadIdx.x == 0) {
        out[blockIdx.x] = s[0]; /* never written in this block yet */
        s[0] = (int)blockIdx.x;
    }
}

__global__ void order_kernel(int *out) {
    if (threadIdx.x == 0) out[atomicAdd(&out[64], 1)] = (int)blockIdx.x;
}

__global__ void mask_kernel(int *out, int mode) {
    int lane = threadIdx.x & 31;
    if (mode == 0) { /* halves of the warp sync separately: fine */
        if (lane < 16)
            __syncwarp(0x0000ffffu);
        else
            __syncwarp(0xffff0000u);
        out[lane] = __shfl_sync(lane < 16 ? 0x0000ffffu : 0xffff0000u, lane, lane < 16 ? 3 : 20);
    } else if (mode == 1) { /* a mask without the caller */
        __syncwarp(0x1u << ((lane + 1) & 31));
    } else if (mode == 2) { /* a mask that names an exited lane */
        if (lane == 31) return;
        __syncwarp();
    } else if (lane < 16) { /* a shuffle from a lane outside its mask */
        out[lane] = __shfl_sync(0x0000ffffu, lane, 20);
    }
}

static void test_emu_poison_order_masks(void) {
    std::vector<int> out(65, 0);
    int *o = out.data();
    CHECK(emu_try(8, 32, 0, [=]() { poison_kernel(o); }) == cudaSuccess, "%s", emu_last_fault());
    int leaked = 0;
    for (int b = 0; b < 8; b++)
        leaked += out[(size_t)b] != -1; /* 0xffffffff: the poison */
    CHECK(leaked == 0, "static shared memory kept values across %d blocks", leaked);
    out.assign(65, 0);
    CHECK(emu_try(64, 32, 0, [=]() { order_kernel(o); }) == cudaSuccess, "%s", emu_last_fault());
    int in_order = 0;
    for (int i = 0; i < 64; i++)
        in_order += out[(size_t)i] == i;
    std::vector<int> sorted(out.begin(), out.begin() + 64);
    std::sort(sorted.begin(), sorted.end());
    int perm = 1;
    for (int i = 0; i < 64; i++)
        perm &= sorted[(size_t)i] == i;
    CHECK(perm && out[64] == 64, "every block ran once");
    CHECK(in_order < 64, "blocks ran in launch order");
    CHECK(emu_try(1, 32, 0, [=]() { mask_kernel(o, 0); }) == cudaSuccess,
          "partial __syncwarp masks: %s", emu_last_fault());
    int bad = 0;
    for (int l = 0; l < 32; l++)
        bad += out[(size_t)l] != (l < 16 ? 3 : 20);
    CHECK(bad == 0, "%d wrong shuffles within partial masks", bad);
    CHECK(emu_try(1, 32, 0, [=]() { mask_kernel(o, 1); }) == cudaErrorLaunchFailure,
          "__syncwarp with a mask that omits the caller accepted");
    CHECK(emu_try(1, 32, 0, [=]() { mask_kernel(o, 2); }) == cudaErrorLaunchFailure,
          "__syncwarp naming an exited lane accepted");
    CHECK(emu_try(1, 32, 0, [=]() { mask_kernel(o, 3); }) == cudaErrorLaunchFailure,
          "shuffle from a lane outside the mask accepted");
}

__global__ void dyn_smem_kernel(int *out) {
    EASEL_DYN_SMEM(int, d);
    d[threadIdx.x] = (int)threadIdx.x;
    __syncthreads();
    out[threadIdx.x] = d[31 - threadIdx.x];
}

static void test_emu_launch_limits(void) {
    std::vector<int> out(32, 0);
    int *o = out.data();
    auto k = [=]() { dyn_smem_kernel(o); };
    const void *fn = reinterpret_cast<const void *>(&dyn_smem_kernel);
    CHECK(emu_check_launch(fn, dim3(1, 65536), 32, 0) == cudaErrorInvalidConfiguration,
          "grid y 65536 accepted");
    CHECK(emu_check_launch(fn, dim3(1, 1, 65536), 32, 0) == cudaErrorInvalidConfiguration,
          "grid z 65536 accepted");
    CHECK(emu_check_launch(fn, dim3(0), 32, 0) == cudaErrorInvalidConfiguration, "empty grid");
    CHECK(emu_check_launch(fn, 1, dim3(1, 1, 65), 0) == cudaErrorInvalidConfiguration,
          "block z 65 accepted");
    CHECK(emu_check_launch(fn, 1, dim3(32, 33), 0) == cudaErrorInvalidConfiguration,
          "1056 threads accepted");
    CHECK(emu_check_launch(fn, dim3(0x7fffffffu), 32, 0) == cudaSuccess, "grid x 2^31-1");
    CHECK(emu_check_launch(fn, 1, 32, 64 << 10) == cudaErrorInvalidValue,
          "64 KiB dynamic shared memory without the opt-in");
    CHECK(cudaFuncSetAttribute(dyn_smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               228 << 10) == cudaErrorInvalidValue,
          "an opt-in beyond 227 KiB accepted");
    CHECK(cudaFuncSetAttribute(dyn_smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               64 << 10) == cudaSuccess,
          "opt-in");
    CHECK(emu_check_launch(fn, 1, 32, 64 << 10) == cudaSuccess, "64 KiB after the opt-in");
    CHECK(emu_check_launch(fn, 1, 32, 65 << 10) == cudaErrorInvalidValue, "65 KiB after 64");
    emu_launch_kernel(fn, "dyn_smem_kernel", 1, 32, 64 << 10, nullptr, k);
    CHECK(cudaGetLastError() == cudaSuccess, "%s", emu_last_fault());
    CHECK(out[0] == 31 && out[31] == 0, "dynamic shared memory");
}

/* Stream semantics: queued work runs when waited for; the legacy cudaMemcpy
 * does not wait for a non-blocking stream; capture rules; sticky faults. */
static void test_emu_streams_and_capture(void) {
    cudaStream_t s;
    REQUIRE(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess, "stream");
    void *dv = NULL, *pinned = NULL;
    REQUIRE(cudaMalloc(&dv, 64) == cudaSuccess && cudaMallocHost(&pinned, 64) == cudaSuccess,
            "alloc");
    int host[16], back[16];
    for (int i = 0; i < 16; i++)
        host[i] = i + 100;
    memset(pinned, 0, 64);
    CHECK(cudaMemsetAsync(dv, 0, 64, s) == cudaSuccess, "memset");
    CHECK(cudaMemcpyAsync(dv, host, 64, cudaMemcpyHostToDevice, s) == cudaSuccess, "h2d");
    CHECK(cudaMemcpyAsync(pinned, dv, 64, cudaMemcpyDeviceToHost, s) == cudaSuccess, "d2h");
    CHECK(((int *)pinned)[5] == 0, "a pinned copy landed before the stream was waited for");
    cudaMemcpy(back, dv, 64, cudaMemcpyDeviceToHost); /* legacy stream: not ordered with s */
    CHECK(back[5] != 105, "the legacy cudaMemcpy waited for a non-blocking stream");
    CHECK(cudaStreamSynchronize(s) == cudaSuccess, "sync");
    CHECK(((int *)pinned)[5] == 105, "after the sync: %d", ((int *)pinned)[5]);
    emu_set_quiet(1);
    CHECK(cudaMemcpy(dv, dv, 4, cudaMemcpyHostToDevice) == cudaErrorInvalidValue,
          "a device pointer passed as host memory accepted");
    emu_set_quiet(0);

    emu_set_quiet(!getenv("TEST_VERBOSE"));
    /* capture: queued, not run; illegal calls invalidate it */
    cudaGraph_t g = NULL;
    cudaGraphExec_t ge = NULL;
    int val = 7;
    REQUIRE(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) == cudaSuccess, "begin");
    CHECK(cudaMemsetAsync(dv, 1, 64, s) == cudaSuccess, "memset in capture");
    CHECK(cudaMemcpyAsync(dv, pinned, 4, cudaMemcpyHostToDevice, s) == cudaSuccess,
          "pinned copy in capture");
    CHECK(cudaStreamEndCapture(s, &g) == cudaSuccess && g, "end");
    CHECK(cudaGraphInstantiate(&ge, g, 0) == cudaSuccess, "instantiate");
    ((int *)pinned)[0] = 4242; /* read at replay, not at capture */
    CHECK(cudaGraphLaunch(ge, s) == cudaSuccess && cudaStreamSynchronize(s) == cudaSuccess,
          "replay");
    cudaMemcpy(back, dv, 64, cudaMemcpyDeviceToHost);
    CHECK(back[0] == 4242 && back[1] == 0x01010101, "replay read %d %d", back[0], back[1]);
    cudaGraphExecDestroy(ge);
    cudaGraphDestroy(g);

    struct {
        const char *what;
        std::function<cudaError_t()> call;
    } illegal[] = {
        {"cudaMalloc",
         [&]() {
             void *p = NULL;
             cudaError_t e = cudaMalloc(&p, 16);
             if (p) cudaFree(p);
             return e;
         }},
        {"cudaStreamSynchronize", [&]() { return cudaStreamSynchronize(s); }},
        {"a pageable copy",
         [&]() { return cudaMemcpyAsync(dv, &val, 4, cudaMemcpyHostToDevice, s); }},
        {"the legacy cudaMemcpy",
         [&]() { return cudaMemcpy(back, dv, 4, cudaMemcpyDeviceToHost); }},
    };
    for (auto &c : illegal) {
        REQUIRE(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) == cudaSuccess,
                "begin");
        cudaError_t e = c.call();
        CHECK(e != cudaSuccess, "%s during capture accepted", c.what);
        cudaError_t end = cudaStreamEndCapture(s, &g);
        CHECK(end == cudaErrorStreamCaptureInvalidated && g == NULL,
              "%s: capture not invalidated (%s)", c.what, cudaGetErrorString(end));
        cudaGetLastError();
    }

    /* a kernel fault is sticky: later calls of every kind fail until reset */
    std::vector<half> buf(512);
    const half *bp = buf.data();
    emu_launch_kernel(nullptr, "misaligned", 1, 32, 0, s, [=]() { emu_misaligned_kernel(bp); });
    CHECK(cudaGetLastError() == cudaSuccess, "a fault reported at launch (it runs later)");
    CHECK(cudaStreamSynchronize(s) == cudaErrorLaunchFailure, "the fault at the next sync");
    void *p2 = NULL;
    CHECK(cudaMalloc(&p2, 16) == cudaErrorLaunchFailure, "cudaMalloc after a fault");
    CHECK(cudaGetLastError() == cudaErrorLaunchFailure &&
              cudaGetLastError() == cudaErrorLaunchFailure,
          "the error is sticky");
    emu_reset_device();
    CHECK(cudaMalloc(&p2, 16) == cudaSuccess, "after reset");
    emu_set_quiet(0);
    cudaFree(p2);
    cudaFree(dv);
    cudaFreeHost(pinned);
    cudaStreamDestroy(s);
}

/* A kernel fault is sticky for the device: the backend says the context is
 * lost (EASEL_EDEVLOST), for every worker, until the process restarts. */
static void test_sticky_fault(void) {
    NEED_GPU();
    backend *w2 = GPU_CREATE(-1);
    REQUIRE(w2, "%s", easel_errmsg());
    emu_set_sticky_error(cudaErrorIllegalAddress, "planted: an illegal address in a kernel");
    CHECK(gpu->sync(gpu) == EASEL_EDEVLOST, "a fault is not reported as a lost device");
    CHECK(strstr(easel_errmsg(), "restart") != NULL, "%s", easel_errmsg());
    void *p = NULL;
    CHECK(w2->alloc(w2, 64, &p) == EASEL_EDEVLOST, "another worker's allocation after a fault");
    CHECK(GPU_CREATE(-1) == NULL, "a new worker on a lost device");
    emu_reset_device();
    CHECK(w2->alloc(w2, 64, &p) == EASEL_OK, "after the (emulated) restart");
    w2->free(w2, p);
    backend_destroy(w2);
}
#endif

/* TEST_OPS_ONLY=name,name: run only the cases whose name contains one of them. */
static int selected(const char *name) {
    const char *only = getenv("TEST_OPS_ONLY");
    if (!only || !*only) return 1;
    std::string list = only;
    size_t p = 0;
    while (p <= list.size()) {
        size_t q = list.find(',', p);
        std::string part = list.substr(p, q == std::string::npos ? std::string::npos : q - p);
        if (!part.empty() && strstr(name, part.c_str())) return 1;
        if (q == std::string::npos) break;
        p = q + 1;
    }
    return 0;
}
#define RUN_SEL(fn)                                                                                \
    do {                                                                                           \
        if (selected(#fn)) RUN(fn);                                                                \
    } while (0)

int main(void) {
    const char *small = getenv("TEST_OPS_SMALL");
    if (small && *small == '1') full_shapes = 0;
    cpu = backend_cpu_create(full_shapes ? 0 : 2); /* all cores for the full-shape references */
    if (!cpu) {
        fprintf(stderr, "cpu backend: %s\n", easel_errmsg());
        return 1;
    }
    gpu = GPU_CREATE(-1);
    if (!gpu) {
        printf("  no CUDA device: %s\n", easel_errmsg());
        /* tools/gpu_check.sh sets this where nvidia-smi sees a GPU: every case
         * skipping would then hide a backend that cannot start */
        const char *req = getenv("EASEL_REQUIRE_GPU");
        if (req && *req == '1') {
            printf("FAIL: a GPU is visible but the CUDA backend cannot start: %s\n",
                   easel_errmsg());
            printf("test_ops_cuda.cpp: 0 passed, 1 failed, 0 skipped\n");
            backend_destroy(cpu);
            return 2;
        }
    }
    RUN_SEL(test_graph_cache);
    RUN_SEL(test_host_sizing);
    RUN_SEL(test_upload_download);
    RUN_SEL(test_copy_convert);
    RUN_SEL(test_unary);
    RUN_SEL(test_geglu);
    RUN_SEL(test_binary);
    RUN_SEL(test_axpby);
    RUN_SEL(test_upsample_concat);
    RUN_SEL(test_pad2d);
    RUN_SEL(test_timestep_embedding);
    RUN_SEL(test_gather_rows);
    RUN_SEL(test_group_norm);
    RUN_SEL(test_layer_norm);
    RUN_SEL(test_softmax);
    RUN_SEL(test_attention);
    RUN_SEL(test_linear);
    RUN_SEL(test_bmm);
    RUN_SEL(test_conv2d);
    RUN_SEL(test_lora_merge);
    RUN_SEL(test_attention_wide_heads);
    RUN_SEL(test_small_scratch_worker);
    RUN_SEL(test_errors);
    RUN_SEL(test_taesd);
    RUN_SEL(test_workers);
    RUN_SEL(test_f32_view);
    RUN_SEL(test_upload_ordering);
    RUN_SEL(test_timestep_embedding_dev);
    RUN_SEL(test_gemm_plans);
    RUN_SEL(test_graph_path);
    RUN_SEL(test_attribute_race);
#ifdef EASEL_CUDA_EMU
    RUN_SEL(test_emu_primitives);
    RUN_SEL(test_emu_device_limits);
    RUN_SEL(test_emu_planted_race);
    RUN_SEL(test_emu_planted_missing_syncthreads);
    RUN_SEL(test_emu_poison_order_masks);
    RUN_SEL(test_emu_launch_limits);
    RUN_SEL(test_emu_streams_and_capture);
    RUN_SEL(test_sticky_fault);
#endif
    backend_destroy(gpu);
    backend_destroy(cpu);
    return test_summary();
}
