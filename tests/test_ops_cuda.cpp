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
#include "../engine/backend.h"
#include "../engine/tensor.h"
#include "../kernels/cuda_host.h"
}
#include <array>
#include <string>
#include <vector>

#include "test.h"

#ifdef EASEL_CUDA_EMU
#include "../kernels/emu/cuda_runtime_emu.h"
extern "C" backend *backend_cuda_emu_create(int device);
extern "C" easel_err backend_cuda_emu_run_graph(backend *be, int batch, int height, int width,
                                                easel_err (*step)(void *user), void *user);
extern "C" int backend_cuda_emu_graph_count(backend *be);
#define GPU_CREATE backend_cuda_emu_create
#define GPU_RUN_GRAPH backend_cuda_emu_run_graph
#define GPU_GRAPH_COUNT backend_cuda_emu_graph_count
static const int full_shapes = 0;
#else
#include <cuda_runtime.h>
extern "C" int backend_cuda_graph_count(backend *be);
#define GPU_CREATE backend_cuda_create
#define GPU_RUN_GRAPH backend_cuda_run_graph
#define GPU_GRAPH_COUNT backend_cuda_graph_count
static const int full_shapes = 1;
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
    p.g = tensor_make(NULL, DT_F16, DEV_CUDA, ndim, ne);
    void *mc = NULL, *mg = NULL;
    size_t nb = tensor_nbytes(&p.g);
    cpu->alloc(cpu, tensor_nbytes(&p.c) + 4, &mc);
    gpu->alloc(gpu, nb + GUARD_ELEMS * 2, &mg);
    p.c.data = mc;
    p.g.data = mg;
    p.guard = tensor_1d(mg ? (char *)mg + nb : NULL, DT_F16, DEV_CUDA, GUARD_ELEMS);
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
    const char *names[] = {"silu", "gelu", "quick_gelu"};
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
        {1, 17, 77, 1, 80, 0}, {1, 65, 65, 2, 160, 0},  {1, 1, 1, 1, 8, 0},
        {1, 5, 1, 3, 24, 0},   {1, 100, 100, 1, 40, 1},
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
    graph_key k1 = {2, 64, 64}, k2 = {2, 96, 64}, k3 = {1, 64, 64};
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
    for (int i = 0; i < 4; i++)
        CHECK(GPU_RUN_GRAPH(gpu, 1, 8, 8, step_fn, &s) == EASEL_OK, "%s", easel_errmsg());
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
#include "../kernels/emu/cuda_emu.h"

__global__ void emu_probe_kernel(int *out) {
    __shared__ int s[64];
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
    emu_launch(dim3(1), dim3(32), 0, [=]() { emu_deadlock_kernel(o); });
    CHECK(cudaGetLastError() == cudaErrorLaunchFailure, "deadlock not reported");
    std::vector<half> buf(512);
    const half *p = buf.data();
    emu_launch(dim3(1), dim3(32), 0, [=]() { emu_misaligned_kernel(p); });
    CHECK(cudaGetLastError() == cudaErrorLaunchFailure, "misaligned wmma load not reported");
    emu_launch(dim3(1), dim3(2048), 0, [=]() { emu_deadlock_kernel(o); });
    CHECK(cudaGetLastError() == cudaErrorInvalidValue, "2048 threads per block accepted");
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
#endif

int main(void) {
    cpu = backend_cpu_create(full_shapes ? 0 : 2); /* all cores for the full-shape references */
    if (!cpu) {
        fprintf(stderr, "cpu backend: %s\n", easel_errmsg());
        return 1;
    }
    gpu = GPU_CREATE(-1);
    if (!gpu) printf("  no CUDA device: %s\n", easel_errmsg());
    RUN(test_graph_cache);
    RUN(test_host_sizing);
    RUN(test_upload_download);
    RUN(test_copy_convert);
    RUN(test_unary);
    RUN(test_geglu);
    RUN(test_binary);
    RUN(test_axpby);
    RUN(test_upsample_concat);
    RUN(test_timestep_embedding);
    RUN(test_gather_rows);
    RUN(test_group_norm);
    RUN(test_layer_norm);
    RUN(test_softmax);
    RUN(test_attention);
    RUN(test_linear);
    RUN(test_bmm);
    RUN(test_conv2d);
    RUN(test_errors);
    RUN(test_workers);
#ifdef EASEL_CUDA_EMU
    RUN(test_emu_primitives);
    RUN(test_emu_device_limits);
#endif
    backend_destroy(gpu);
    backend_destroy(cpu);
    return test_summary();
}
