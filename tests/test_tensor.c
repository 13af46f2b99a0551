/* tensor.c and arena.c: shapes, views, half conversions, arena reuse. */
#include "../engine/arena.h"
#include "../engine/tensor.h"
#include "test.h"

static void test_f16_roundtrip_all(void) {
    /* every finite f16 converts to f32 and back exactly */
    int bad = 0;
    for (unsigned h = 0; h < 65536; h++) {
        if ((h & 0x7c00u) == 0x7c00u && (h & 0x3ffu)) continue; /* nan payloads */
        float f = f16_to_f32((uint16_t)h);
        if (f32_to_f16(f) != h) bad++;
    }
    CHECK(bad == 0, "%d halves did not round-trip", bad);
}

static void test_f16_rounding(void) {
    CHECK(f16_to_f32(f32_to_f16(1.0f)) == 1.0f, "1.0");
    CHECK(f16_to_f32(f32_to_f16(65504.0f)) == 65504.0f, "max half");
    CHECK(isinf(f16_to_f32(f32_to_f16(65520.0f))), "rounds to inf");
    /* 1 + 2^-11 is halfway between 1 and 1+2^-10: ties to even -> 1 */
    CHECK(f16_to_f32(f32_to_f16(1.0f + 1.0f / 2048)) == 1.0f, "tie to even");
    CHECK(f16_to_f32(f32_to_f16(1.0f + 3.0f / 2048)) == 1.0f + 4.0f / 2048, "tie to even up");
    CHECK(f16_to_f32(f32_to_f16(5.9604645e-8f)) == 5.9604645e-8f, "smallest subnormal");
    CHECK(f16_to_f32(f32_to_f16(2.0e-8f)) == 0.0f, "underflow to zero");
    CHECK(isnan(f16_to_f32(f32_to_f16(NAN))), "nan");
    /* compare against the double-rounded value for a sweep of values */
    unsigned long long s = 42;
    int bad = 0;
    for (int i = 0; i < 100000; i++) {
        float x = test_randf(&s, -70000.f, 70000.f) * (i % 7 == 0 ? 1e-6f : 1.0f);
        float y = f16_to_f32(f32_to_f16(x));
        /* the nearest half: check no neighbour is closer */
        uint16_t h = f32_to_f16(x);
        if (isinf(y)) continue;
        float up = f16_to_f32((uint16_t)(h + 1)), dn = f16_to_f32((uint16_t)(h - 1));
        if (fabsf(up - x) < fabsf(y - x) || fabsf(dn - x) < fabsf(y - x)) bad++;
    }
    CHECK(bad == 0, "%d values not rounded to nearest", bad);
}

static void test_bf16(void) {
    CHECK(bf16_to_f32(f32_to_bf16(1.0f)) == 1.0f, "1.0");
    CHECK(bf16_to_f32(f32_to_bf16(3.140625f)) == 3.140625f, "exact");
    CHECK(isnan(bf16_to_f32(f32_to_bf16(NAN))), "nan");
    float x = 1.0f + 1.0f / 256; /* halfway between 1 and 1+2^-7: to even -> 1 */
    CHECK(bf16_to_f32(f32_to_bf16(x)) == 1.0f, "tie");
}

static void test_views(void) {
    float buf[2 * 3 * 4 * 5];
    tensor t = tensor_4d(buf, DT_F32, DEV_CPU, 2, 3, 4, 5);
    CHECK(tensor_nelem(&t) == 120, "nelem");
    CHECK(tensor_rows(&t) == 24 && tensor_cols(&t) == 5, "rows/cols");
    tensor s = tensor_slice0(&t, 1, 1);
    CHECK(s.data == buf + 60 && s.ne[0] == 1, "slice");
    tensor bad = tensor_slice0(&t, 1, 2);
    CHECK(bad.data == NULL, "out-of-range slice");
    int64_t ne[2] = {6, 20};
    tensor r = tensor_reshape(&t, 2, ne);
    CHECK(r.data == buf && r.ndim == 2, "reshape");
    int64_t ne2[2] = {7, 20};
    CHECK(tensor_reshape(&t, 2, ne2).data == NULL, "bad reshape");
    char sb[64];
    CHECK(strcmp(tensor_shape_str(&t, sb, sizeof sb), "[2,3,4,5] f32") == 0, "%s", sb);
}

static void test_arena(void) {
    backend *be = backend_cpu_create(1);
    REQUIRE(be, "cpu backend");
    arena *a = arena_create(be, 0);
    REQUIRE(a, "arena");
    for (int pass = 0; pass < 3; pass++) {
        tensor x = arena_new2(a, 1000, 1000); /* 4 MB: forces chunks */
        size_t m = arena_mark(a);
        tensor y = arena_new4(a, 1, 64, 64, 320);
        CHECK(x.data && y.data, "alloc");
        memset(y.data, 1, tensor_nbytes(&y));
        arena_release(a, m);
        tensor z = arena_new4(a, 1, 64, 64, 320);
        CHECK(z.data == y.data, "release reuses memory");
        CHECK(!arena_error(a), "no error");
        if (pass > 0) CHECK(arena_capacity(a) >= arena_high_water(a), "one chunk fits");
        arena_reset(a);
    }
    size_t cap = arena_capacity(a);
    tensor x = arena_new2(a, 1000, 1000);
    CHECK(x.data && arena_capacity(a) == cap, "steady state allocates nothing");
    int64_t neg[1] = {-1};
    tensor bad = arena_new(a, 1, neg);
    CHECK(bad.data == NULL && arena_error(a), "negative dim is a sticky error");
    tensor after = arena_new2(a, 2, 2);
    CHECK(after.data == NULL, "sticky");
    arena_reset(a);
    CHECK(!arena_error(a), "reset clears");
    arena_free(a);
    backend_destroy(be);
}

int main(void) {
    RUN(test_f16_roundtrip_all);
    RUN(test_f16_rounding);
    RUN(test_bf16);
    RUN(test_views);
    RUN(test_arena);
    return test_summary();
}
