/* The optional parts of engine/backend.h and their helpers on the CPU
 * backend, and the arena facts a captured step relies on (its generation
 * counter; allocating through a view of its backend): the timestep embedding from a device tensor
 * (what a captured step uses), the graph runner (runs the step directly where there are no graphs)
 * and backend_with_dtype. The embedding is compared bit for bit with the host-array op and with
 * diffusers' get_timestep_embedding evaluated in double precision here (rel L2 <= 2e-5: torch, like
 * the op, computes t·freq in fp32, and at t ~ 1000 that argument carries ~6e-5 rad of rounding, so
 * 5e-6 is measured). The CUDA forms are tested in test_ops_cuda against these. */
#include "../engine/arena.h"
#include "../engine/backend.h"
#include "test.h"

static backend *cpu;

/* diffusers.models.embeddings.get_timestep_embedding, in double. */
static void ref_embedding(double *out, const float *t, int n, int dim, int flip, double shift,
                          double max_period) {
    int half = dim / 2;
    for (int r = 0; r < n; r++)
        for (int j = 0; j < dim; j++) {
            double v = 0;
            if (j < 2 * half) {
                int k = j < half ? j : j - half;
                double f = exp(-log(max_period) * k / (half - shift)), a = t[r] * f;
                int first = j < half;
                v = (first != (flip != 0)) ? sin(a) : cos(a);
            }
            out[r * dim + j] = v;
        }
}

static void test_timestep_embedding_tensor(void) {
    const float tv[5] = {0.0f, 1.0f, 999.0f, 500.5f, 37.25f};
    const int dims[] = {320, 7, 4};
    for (int di = 0; di < 3; di++)
        for (int flip = 0; flip < 2; flip++) {
            int dim = dims[di];
            float shift = flip ? 0.0f : 1.0f;
            tensor t, y1, y2;
            int64_t nt[1] = {5}, ny[2] = {5, dim};
            REQUIRE(!backend_tensor_alloc(cpu, &t, DT_F32, 1, nt), "%s", easel_errmsg());
            REQUIRE(!backend_tensor_alloc(cpu, &y1, DT_F32, 2, ny), "alloc");
            REQUIRE(!backend_tensor_alloc(cpu, &y2, DT_F32, 2, ny), "alloc");
            CHECK(cpu->upload(cpu, &t, tv) == EASEL_OK, "upload");
            CHECK(backend_timestep_embedding_t(cpu, &y1, &t, flip, shift, 10000.0f) == EASEL_OK,
                  "%s", easel_errmsg());
            CHECK(cpu->timestep_embedding(cpu, &y2, tv, flip, shift, 10000.0f) == EASEL_OK, "%s",
                  easel_errmsg());
            float a[5 * 320], b[5 * 320];
            double ref[5 * 320];
            cpu->download(cpu, &y1, a);
            cpu->download(cpu, &y2, b);
            CHECK(memcmp(a, b, sizeof(float) * 5 * (size_t)dim) == 0,
                  "dim %d flip %d: differs from the host-array op", dim, flip);
            ref_embedding(ref, tv, 5, dim, flip, shift, 10000.0);
            double num = 0, den = 0;
            for (int i = 0; i < 5 * dim; i++)
                num += (a[i] - ref[i]) * (a[i] - ref[i]), den += ref[i] * ref[i];
            CHECK(sqrt(num / den) <= 2e-5, "dim %d flip %d: rel L2 %.3g vs diffusers' formula", dim,
                  flip, sqrt(num / den));
            backend_tensor_free(cpu, &t);
            backend_tensor_free(cpu, &y1);
            backend_tensor_free(cpu, &y2);
        }
}

static void test_timestep_embedding_tensor_errors(void) {
    tensor t, y, t16;
    int64_t nt[1] = {3}, nt4[1] = {4}, ny[2] = {3, 8};
    REQUIRE(!backend_tensor_alloc(cpu, &t, DT_F32, 1, nt4), "alloc");
    REQUIRE(!backend_tensor_alloc(cpu, &y, DT_F32, 2, ny), "alloc");
    REQUIRE(!backend_tensor_alloc(cpu, &t16, DT_F16, 1, nt), "alloc");
    CHECK(backend_timestep_embedding_t(cpu, &y, &t, 1, 0, 10000) == EASEL_EINVAL,
          "4 timesteps for 3 rows accepted");
    CHECK(strstr(easel_errmsg(), "timestep_embedding") != NULL, "%s", easel_errmsg());
    CHECK(backend_timestep_embedding_t(cpu, &y, &t16, 1, 0, 10000) == EASEL_EINVAL,
          "f16 timesteps accepted");
    CHECK(backend_timestep_embedding_t(cpu, &y, NULL, 1, 0, 10000) == EASEL_EINVAL,
          "NULL timesteps accepted");
    backend_tensor_free(cpu, &t);
    backend_tensor_free(cpu, &y);
    backend_tensor_free(cpu, &t16);
}

typedef struct {
    int calls;
    easel_err ret;
} step_state;

static easel_err step(void *user) {
    step_state *s = user;
    s->calls++;
    return s->ret ? easel_seterr(s->ret, "step failed on purpose") : EASEL_OK;
}

static void test_run_graph_without_graphs(void) {
    backend_graph_key k = {2, 64, 64, 1234};
    step_state s = {0, EASEL_OK};
    for (int i = 0; i < 5; i++)
        CHECK(backend_run_graph(cpu, &k, step, &s) == EASEL_OK, "%s", easel_errmsg());
    CHECK(s.calls == 5, "the step ran %d times for 5 calls", s.calls);
    s.ret = EASEL_ENOMEM;
    CHECK(backend_run_graph(cpu, &k, step, &s) == EASEL_ENOMEM, "the step's error is returned");
    CHECK(strstr(easel_errmsg(), "on purpose") != NULL, "%s", easel_errmsg());
    CHECK(backend_run_graph(cpu, NULL, step, &s) == EASEL_EINVAL, "NULL key accepted");
}

static void test_with_dtype(void) {
    CHECK(backend_with_dtype(cpu, cpu->act_dtype) == cpu, "the backend's own dtype is itself");
    backend *h = backend_with_dtype(cpu, DT_F16);
    if (h)
        CHECK(h->act_dtype == DT_F16, "a view stores what was asked");
    else
        CHECK(strstr(easel_errmsg(), "stores") != NULL, "says what it stores: %s", easel_errmsg());
}

/* Same generation, same mark, same sequence: same addresses. */
static void test_arena_generation(void) {
    arena *a = arena_create(cpu, 0);
    REQUIRE(a, "%s", easel_errmsg());
    uint64_t g0 = arena_generation(a);
    tensor x = arena_new2(a, 100, 100);
    uint64_t g1 = arena_generation(a);
    CHECK(g1 != g0, "the first chunk did not change the generation");
    size_t mark = arena_mark(a);
    tensor y = arena_new2(a, 10, 10), z = arena_new2(a, 1000, 1000); /* z: a second chunk */
    uint64_t g2 = arena_generation(a);
    CHECK(g2 != g1, "a new chunk did not change the generation");
    arena_release(a, mark);
    tensor y2 = arena_new2(a, 10, 10), z2 = arena_new2(a, 1000, 1000);
    CHECK(arena_generation(a) == g2, "reusing memory changed the generation");
    CHECK(y2.data == y.data && z2.data == z.data, "the same allocations moved");
    arena_reset(a); /* two chunks: consolidated into one */
    CHECK(arena_generation(a) != g2, "consolidation did not change the generation");
    uint64_t g3 = arena_generation(a);
    (void)arena_new2(a, 100, 100);
    arena_reset(a); /* one chunk: kept */
    CHECK(arena_generation(a) == g3, "a reset that keeps the chunk changed the generation");
    (void)x;
    backend view = *cpu; /* a view on the same memory storing another dtype */
    view.act_dtype = DT_F16;
    backend *old = arena_set_backend(a, &view);
    tensor h = arena_new2(a, 4, 4);
    CHECK(old == cpu && h.dt == DT_F16 && arena_backend(a) == &view, "allocating as the view");
    CHECK(arena_set_backend(a, old) == &view && arena_new2(a, 4, 4).dt == DT_F32, "restored");
    arena_free(a);
}

int main(void) {
    cpu = backend_cpu_create(1);
    if (!cpu) {
        fprintf(stderr, "cpu backend: %s\n", easel_errmsg());
        return 1;
    }
    RUN(test_timestep_embedding_tensor);
    RUN(test_timestep_embedding_tensor_errors);
    RUN(test_run_graph_without_graphs);
    RUN(test_with_dtype);
    RUN(test_arena_generation);
    backend_destroy(cpu);
    return test_summary();
}
