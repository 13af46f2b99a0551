/* Fault-injection tests (engine/fault.h). In a -DEASEL_FAULTS=ON build: the
 * spec parser, the Nth-allocation and write failures, and, on a tiny model,
 * that an allocation failure anywhere inside a generation ends it with
 * EASEL_ENOMEM "out of memory" (no crash, no image) and that the same worker
 * then produces the very image it made before, also with live previews after
 * every step and the TAESD decoder. Other builds skip. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/fault.h"
#include "models/loader.h"
#include "models/pipeline.h"
#include "tests/test.h"

/* Allocates through a volatile pointer so the compiler keeps the call. */
static int alloc_ok(size_t n) {
    void *volatile p = malloc(n);
    int ok = p != NULL;
    free(p);
    return ok;
}

static void test_spec(void) {
    if (!fault_enabled()) {
        CHECK(fault_configure("alloc:1") == EASEL_EUNSUPPORTED, "unsupported outside fault build");
        SKIP("not a fault build (-DEASEL_FAULTS=ON)");
    }
    CHECK(fault_configure("alloc:3") == EASEL_OK, "alloc:3");
    CHECK(fault_configure("alloc:3+,size:4096,write:2+") == EASEL_OK, "list");
    const char *bad[] = {"alloc:0", "alloc:", "alloc:x",   "alloc:3-", "size:5+",
                         "nope:1",  "alloc",  "alloc:1,,", "write:-1"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        CHECK(fault_configure(bad[i]) == EASEL_EINVAL, "'%s' refused", bad[i]);
    CHECK(fault_configure(NULL) == EASEL_OK && fault_configure("") == EASEL_OK, "empty = none");
}

static void test_alloc(void) {
    if (!fault_enabled()) SKIP("not a fault build");
    REQUIRE(fault_configure("alloc:2") == EASEL_OK, "configure");
    CHECK(alloc_ok(16) && alloc_ok(16), "unarmed allocations never fail");
    CHECK(fault_allocs() == 0, "and are not counted (%ld)", fault_allocs());
    fault_arm();
    int a = alloc_ok(16), b = alloc_ok(16), c = alloc_ok(16);
    char *volatile s = strdup("x");
    fault_disarm();
    CHECK(a && !b && c && s, "only the 2nd armed allocation fails (%d %d %d)", a, b, c);
    free(s);
    CHECK(fault_allocs() == 4 && fault_injected() == 1, "counted %ld, injected %ld", fault_allocs(),
          fault_injected());

    REQUIRE(fault_configure("alloc:2+") == EASEL_OK, "configure");
    fault_arm();
    a = alloc_ok(8), b = alloc_ok(8), c = alloc_ok(8);
    void *volatile r = realloc(NULL, 8);
    fault_disarm();
    CHECK(a && !b && !c && !r, "every armed allocation from the 2nd fails");

    REQUIRE(fault_configure("size:1000") == EASEL_OK, "configure");
    fault_arm();
    a = alloc_ok(999), b = alloc_ok(1000);
    void *volatile z = calloc(100, 10);
    fault_disarm();
    CHECK(a && !b && !z, "size:1000 fails only allocations of >= 1000 bytes");
    fault_configure(NULL);
}

static void test_write(void) {
    if (!fault_enabled()) SKIP("not a fault build");
    int fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    REQUIRE(fd >= 0, "open /dev/null");
    REQUIRE(fault_configure("write:2") == EASEL_OK, "configure");
    ssize_t a = write(fd, "a", 1), b = write(fd, "b", 1);
    int err = errno;
    ssize_t c = write(fd, "c", 1);
    CHECK(a == 1 && b == -1 && err == ENOSPC && c == 1, "2nd write fails with ENOSPC (%zd %zd %zd)",
          a, b, c);
    close(fd);
    fault_configure(NULL);
}

static backend *be;
static sd_model *model;
static sd_worker *worker;

static int setup_model(void) {
    char dir[] = "/tmp/easel-test-fault-XXXXXX";
    if (!mkdtemp(dir)) return -1;
    char path[64];
    snprintf(path, sizeof path, "%s/tiny", dir);
    sd_arch a;
    sd_arch_tiny(&a);
    int bad = sd_make_model(&a, DT_F32, 0, path) || !(be = backend_cpu_create(1)) ||
              sd_model_load(path, be, &model) || sd_worker_create(model, be, &worker);
    if (bad) fprintf(stderr, "setup: %s\n", easel_errmsg());
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", dir);
    return bad ? -1 : 0;
}

static int with_previews; /* 1: previews after every step, TAESD decoder */

static void on_preview(void *user, const gen_preview *pv) {
    (void)user, (void)pv;
}

static easel_err generate_on(sd_worker *w, uint8_t **rgb) {
    gen_params p;
    gen_params_default(&p);
    p.prompt = "a red chair by a window";
    p.negative_prompt = "blurry";
    p.width = p.height = 64;
    p.steps = with_previews ? 3 : 2;
    p.seed = 7;
    p.decoder = with_previews ? GEN_DECODER_TAESD : GEN_DECODER_VAE;
    gen_timings t;
    *rgb = NULL;
    gen_hooks h;
    gen_hooks_default(&h);
    if (with_previews) h.preview = on_preview, h.preview_every = 1;
    return sd_generate_hooks(w, &p, &h, rgb, NULL, &t);
}

static easel_err generate(uint8_t **rgb) {
    return generate_on(worker, rgb);
}

/* 1 if the ending of a generation under an injected failure is as it must be. */
static int ended_oom(long n, easel_err e, const uint8_t *rgb) {
    int injected = fault_injected() == 1;
    int ok = injected && e == EASEL_ENOMEM && !rgb && strstr(easel_errmsg(), "out of memory");
    if (!ok)
        fprintf(stderr, "  alloc:%ld: injected %d, %s (%s)\n", n, injected, easel_errname(e),
                easel_errmsg());
    return ok;
}

/* Fails armed allocation n; returns 1 if the generation ended as it must. */
static int oom_at(long n, const uint8_t *ref, size_t bytes) {
    char spec[32];
    snprintf(spec, sizeof spec, "alloc:%ld", n);
    fault_configure(spec);
    uint8_t *rgb;
    easel_err e = generate(&rgb);
    int ok = ended_oom(n, e, rgb);
    free(rgb);
    fault_configure(NULL);
    e = generate(&rgb); /* the worker must be as good as new */
    int same = e == EASEL_OK && rgb && !memcmp(rgb, ref, bytes);
    if (!same) fprintf(stderr, "  after alloc:%ld the next run differs (%s)\n", n, easel_errmsg());
    free(rgb);
    return ok && same;
}

static void pipeline_oom(void) {
    REQUIRE(setup_model() == 0, "tiny model");
    uint8_t *ref;
    REQUIRE(generate(&ref) == EASEL_OK && ref, "clean run: %s", easel_errmsg());
    free(ref); /* the first run may allocate what later runs reuse: count the second */
    REQUIRE(fault_configure("alloc:2000000000") == EASEL_OK, "count only");
    REQUIRE(generate(&ref) == EASEL_OK && ref, "clean run: %s", easel_errmsg());
    long total = fault_allocs();
    fault_configure(NULL);
    REQUIRE(total > 0, "a generation allocates while armed (%ld)", total);
    /* every allocation when there are few, else a spread including both ends */
    long stride = total <= 400 ? 1 : total / 200, bad = 0, tried = 0;
    for (long n = 1; n <= total; n += stride, tried++)
        bad += !oom_at(n, ref, 64 * 64 * 3);
    if (stride > 1) bad += !oom_at(total, ref, 64 * 64 * 3), tried++;
    CHECK(bad == 0, "%ld of %ld injected failures (of %ld allocations) misbehaved", bad, tried,
          total);
    /* a fresh worker's first run allocates more (arena growth, scratch): sweep
     * that too. A failure the code can absorb (e.g. an optional regrowth) may
     * leave the run successful, but then its image must be the right one. */
    sd_worker *cold;
    uint8_t *img;
    REQUIRE(sd_worker_create(model, be, &cold) == EASEL_OK, "worker");
    REQUIRE(fault_configure("alloc:2000000000") == EASEL_OK, "count only");
    REQUIRE(generate_on(cold, &img) == EASEL_OK, "cold run: %s", easel_errmsg());
    long cold_total = fault_allocs();
    free(img);
    sd_worker_free(cold);
    bad = tried = 0;
    stride = cold_total <= 400 ? 1 : cold_total / 200;
    for (long n = 1; n <= cold_total; n += stride, tried++) {
        char spec[32];
        snprintf(spec, sizeof spec, "alloc:%ld", n);
        REQUIRE(sd_worker_create(model, be, &cold) == EASEL_OK, "worker");
        fault_configure(spec);
        easel_err e = generate_on(cold, &img);
        int absorbed = e == EASEL_OK && img && !memcmp(img, ref, 64 * 64 * 3);
        bad += !absorbed && !ended_oom(n, e, img);
        free(img);
        fault_configure(NULL);
        sd_worker_free(cold);
    }
    CHECK(bad == 0, "cold worker: %ld of %ld injected failures (of %ld allocations) misbehaved",
          bad, tried, cold_total);
    free(ref);
    sd_worker_free(worker);
    sd_model_free(model);
    backend_destroy(be);
}

static void test_pipeline_oom(void) {
    if (!fault_enabled()) SKIP("not a fault build");
    with_previews = 0;
    pipeline_oom();
}

static void test_pipeline_oom_previews(void) {
    if (!fault_enabled()) SKIP("not a fault build");
    with_previews = 1;
    pipeline_oom();
}

int main(void) {
    RUN(test_spec);
    RUN(test_alloc);
    RUN(test_write);
    RUN(test_pipeline_oom);
    RUN(test_pipeline_oom_previews);
    return test_summary();
}
