/* Pipeline tests: full tiny txt2img runs (each sampler, with and without CFG,
 * a prompt over 77 tokens) against diffusers' StableDiffusionPipeline on the
 * same weights (tests/fixtures/pipeline, made by tools/fixtures_pipeline.py
 * from `easel make-model --arch tiny --dtype f32 --seed 0`): final latents
 * within 1e-3 relative L2, pixels within 1/255 on >= 99.9%. Also parameter
 * validation, progress callbacks and cancellation. */
#include <stdint.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "engine/cli.h"
#include "engine/image.h"
#include "engine/log.h"
#include "models/loader.h"
#include "models/pipeline.h"
#include "tests/test.h"

static char tmpdir[256];
static backend *be;
static sd_model *model;
static sd_worker *worker;

static void setup(void) {
    char dir[300];
    snprintf(dir, sizeof dir, "%s/tiny", tmpdir);
    sd_arch a;
    sd_arch_tiny(&a);
    if (sd_make_model(&a, DT_F32, 0, dir)) {
        fprintf(stderr, "make-model: %s\n", easel_errmsg());
        return;
    }
    be = backend_cpu_create(2);
    if (!be || sd_model_load(dir, be, &model) || sd_worker_create(model, be, &worker))
        fprintf(stderr, "setup: %s\n", easel_errmsg());
}

static char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc(n + 1);
    if (buf && fread(buf, 1, n, f) != (size_t)n) free(buf), buf = NULL;
    fclose(f);
    if (buf) buf[n] = 0, *len = (size_t)n;
    return buf;
}

static const char *jstr(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : "";
}
static double jnum(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : cJSON_IsTrue(v) ? 1 : 0;
}

static void check_case(const cJSON *c) {
    const char *name = jstr(c, "name");
    gen_params p;
    gen_params_default(&p);
    p.prompt = jstr(c, "prompt");
    p.negative_prompt = jstr(c, "negative_prompt");
    p.sampler = sampler_parse(jstr(c, "sampler"));
    p.steps = (int)jnum(c, "steps");
    p.guidance = (float)jnum(c, "guidance");
    p.seed = (uint64_t)jnum(c, "seed");
    p.width = (int)jnum(c, "width"), p.height = (int)jnum(c, "height");
    char path[512], fx[300];
    snprintf(fx, sizeof fx, "pipeline/%s.bin", name);
    size_t len = 0;
    char *ref = read_all(test_fixture(fx, path, sizeof path), &len);
    long nlat = 4L * (p.height / 8) * (p.width / 8), npx = 3L * p.width * p.height;
    REQUIRE(ref && len == (size_t)(nlat * 4 + npx), "%s: fixture %s missing or wrong size", name,
            path);
    float *lat = malloc(sizeof(float) * nlat), *rl = malloc(sizeof(float) * nlat);
    memcpy(rl, ref, sizeof(float) * nlat);
    const uint8_t *rrgb = (const uint8_t *)ref + nlat * 4;
    uint8_t *rgb = NULL;
    gen_timings tm;
    easel_err e = sd_generate_ex(worker, &p, NULL, NULL, &rgb, lat, &tm);
    CHECK(e == EASEL_OK, "%s: %s", name, easel_errmsg());
    if (!e) {
        double rel = test_rel_l2f(lat, rl, nlat), mx = test_max_abs(lat, rl, nlat);
        long close = 0;
        for (long i = 0; i < npx; i++)
            close += abs((int)rgb[i] - (int)rrgb[i]) <= 1;
        printf("  %-16s latents rel %.2e (max abs %.2e), pixels within 1/255: %.4f%%\n", name, rel,
               mx, 100.0 * close / npx);
        CHECK(rel <= 1e-3, "%s: latents rel L2 %.3e > 1e-3", name, rel);
        CHECK(close >= 0.999 * npx, "%s: only %ld of %ld pixels within 1/255", name, close, npx);
        CHECK(tm.truncated == (int)jnum(c, "truncated"), "%s: truncated flag %d", name,
              tm.truncated);
    }
    free(rgb), free(lat), free(rl), free(ref);
}

static void test_matches_diffusers(void) {
    REQUIRE(worker, "no model: %s", easel_errmsg());
    char path[512];
    size_t len;
    char *text = read_all(test_fixture("pipeline/cases.json", path, sizeof path), &len);
    REQUIRE(text, "%s missing (tools/fixtures_pipeline.py)", path);
    cJSON *root = cJSON_Parse(text);
    const cJSON *cases = cJSON_GetObjectItemCaseSensitive(root, "cases"), *c;
    REQUIRE(cJSON_GetArraySize(cases) >= 4, "cases.json has no cases");
    cJSON_ArrayForEach(c, cases) check_case(c);
    cJSON_Delete(root);
    free(text);
}

typedef struct {
    int calls, last_step, cancel_at;
} progress_log;

static int on_progress(void *user, int step, int steps, double ms) {
    progress_log *l = user;
    l->calls++;
    if (step != l->last_step + 1 || steps != 3 || !(ms >= 0)) l->calls = -1000;
    l->last_step = step;
    return l->cancel_at && step == l->cancel_at;
}

static void test_progress_and_cancel(void) {
    REQUIRE(worker, "no model");
    gen_params p;
    gen_params_default(&p);
    p.prompt = "x";
    p.width = p.height = 64;
    p.steps = 3;
    progress_log l = {0};
    uint8_t *rgb = NULL;
    gen_timings tm;
    CHECK(sd_generate(worker, &p, on_progress, &l, &rgb, &tm) == EASEL_OK, "%s", easel_errmsg());
    CHECK(l.calls == 3 && l.last_step == 3, "progress called once per step, in order (%d)",
          l.calls);
    CHECK(rgb != NULL && tm.total_ms > 0 && tm.sample_ms > 0 && tm.decode_ms > 0, "timings");
    free(rgb);
    rgb = NULL;
    l = (progress_log){.cancel_at = 2};
    CHECK(sd_generate(worker, &p, on_progress, &l, &rgb, &tm) == EASEL_ECANCELED, "cancel");
    CHECK(l.calls == 2 && rgb == NULL, "stopped at once, no image (%d calls)", l.calls);
}

static void expect_invalid(gen_params p, const char *field, const char *range) {
    const char *f = NULL;
    CHECK(gen_params_validate(&p, &f) == EASEL_EINVAL, "%s refused", field);
    CHECK(f && !strcmp(f, field), "field %s (got %s)", field, f ? f : "NULL");
    CHECK(strstr(easel_errmsg(), range) != NULL, "message has the range %s: %s", range,
          easel_errmsg());
    uint8_t *rgb = NULL;
    if (worker)
        CHECK(sd_generate(worker, &p, NULL, NULL, &rgb, NULL) == EASEL_EINVAL && !rgb,
              "sd_generate refuses %s too", field);
}

static void test_validation(void) {
    gen_params p;
    gen_params_default(&p);
    p.prompt = "ok";
    const char *f = NULL;
    CHECK(gen_params_validate(&p, &f) == EASEL_OK && !f, "defaults are valid");
    gen_params q = p;
    q.width = 100;
    expect_invalid(q, "width", "[64, 2048]");
    q = p, q.height = 4096;
    expect_invalid(q, "height", "[64, 2048]");
    q = p, q.steps = 0;
    expect_invalid(q, "steps", "[1, 150]");
    q = p, q.guidance = 31;
    expect_invalid(q, "guidance_scale", "[0, 30]");
    q = p, q.guidance = 0.0f / 0.0f;
    expect_invalid(q, "guidance_scale", "[0, 30]");
    q = p, q.sampler = SAMPLER_COUNT;
    expect_invalid(q, "sampler", "euler_a");
    q = p, q.prompt = NULL;
    expect_invalid(q, "prompt", "required");
    CHECK(sampler_parse("dpmpp_2m_karras") == SAMPLER_DPMPP_2M_KARRAS && sampler_parse("x") < 0,
          "sampler names");
    CHECK(!strcmp(sampler_name(SAMPLER_EULER_A), "euler_a"), "sampler_name");
}

/* The same weights written as one LDM-named .safetensors give the same image. */
static void test_single_file_same_image(void) {
    REQUIRE(worker, "no model");
    char path[300];
    snprintf(path, sizeof path, "%s/tiny.safetensors", tmpdir);
    sd_arch a;
    sd_arch_tiny(&a);
    REQUIRE(sd_make_model(&a, DT_F32, 0, path) == EASEL_OK, "%s", easel_errmsg());
    sd_model *m2 = NULL;
    sd_worker *w2 = NULL;
    REQUIRE(sd_model_load(path, be, &m2) == EASEL_OK, "%s", easel_errmsg());
    CHECK(!strcmp(sd_model_arch(m2), "tiny") && sd_model_weight_bytes(m2) > 0, "arch, bytes");
    gen_params p;
    gen_params_default(&p);
    p.prompt = "a red chair";
    p.negative_prompt = "blue";
    p.width = 64, p.height = 96;
    p.steps = 2;
    p.sampler = SAMPLER_DPMPP_2M_KARRAS;
    uint8_t *r1 = NULL, *r2 = NULL;
    CHECK(sd_worker_create(m2, be, &w2) == EASEL_OK, "worker");
    CHECK(sd_generate(worker, &p, NULL, NULL, &r1, NULL) == EASEL_OK, "%s", easel_errmsg());
    CHECK(w2 && sd_generate(w2, &p, NULL, NULL, &r2, NULL) == EASEL_OK, "%s", easel_errmsg());
    CHECK(r1 && r2 && !memcmp(r1, r2, 64 * 96 * 3), "folder and single file: same image");
    free(r1), free(r2);
    sd_worker_free(w2);
    sd_model_free(m2);
}

static int run_cli(int (*cmd)(int, char **), const char *const *args) {
    char *argv[32];
    int argc = 0;
    for (; args[argc] && argc < 31; argc++)
        argv[argc] = (char *)args[argc];
    argv[argc] = NULL;
    return cmd(argc, argv);
}

/* `easel generate` and `easel make-model`: exit 2 for what the user got wrong,
 * a PNG only on success. */
static void test_cli(void) {
    char model[300], png[300], bad[300];
    snprintf(model, sizeof model, "%s/cli_tiny", tmpdir);
    snprintf(png, sizeof png, "%s/out.png", tmpdir);
    snprintf(bad, sizeof bad, "%s/no/such/dir/out.png", tmpdir);
    const char *mk[] = {"make-model", "--arch", "tiny", "--out", model, NULL};
    REQUIRE(run_cli(cmd_make_model, mk) == 0, "make-model");
    const char *mk_bad[] = {"make-model", "--arch", "huge", "--out", model, NULL};
    CHECK(run_cli(cmd_make_model, mk_bad) == 2, "unknown arch: exit 2");
    const char *ok[] = {"generate",  "--model", model,     "--prompt", "a lamp",
                        "--steps",   "2",       "--width", "64",       "--height",
                        "72",        "--seed",  "5",       "--device", "cpu",
                        "--threads", "1",       "--out",   png,        NULL};
    CHECK(run_cli(cmd_generate, ok) == 0, "generate: %s", easel_errmsg());
    uint8_t *rgb = NULL;
    int w = 0, h = 0;
    CHECK(image_read_png(png, &rgb, &w, &h) == EASEL_OK && w == 64 && h == 72, "PNG %dx%d", w, h);
    free(rgb);
    const char *missing[] = {"generate", "--model", "/nonexistent/model", "--prompt", "x", "--out",
                             bad,        NULL};
    CHECK(run_cli(cmd_generate, missing) == 2, "missing model: exit 2");
    const char *range[] = {"generate", "--model", model,   "--prompt", "x",
                           "--cfg",    "99",      "--out", bad,        NULL};
    CHECK(run_cli(cmd_generate, range) == 2, "cfg out of range: exit 2");
    const char *flag[] = {"generate", "--model", model,   "--prompt", "x",
                          "--bogus",  "1",       "--out", bad,        NULL};
    CHECK(run_cli(cmd_generate, flag) == 2, "unknown flag: exit 2");
    const char *nodir[] = {"generate", "--model", model, "--prompt", "x",  "--steps",
                           "1",        "--width", "64",  "--height", "64", "--device",
                           "cpu",      "--out",   bad,   NULL};
    CHECK(run_cli(cmd_generate, nodir) == 1, "unwritable output: exit 1");
    CHECK(access(bad, F_OK) != 0, "no partial PNG");
}

int main(void) {
    log_set_level(LOG_ERROR);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/easel_test_pipeline.XXXXXX");
    if (!mkdtemp(tmpdir)) return perror("mkdtemp"), 1;
    setup();
    RUN(test_matches_diffusers);
    RUN(test_progress_and_cancel);
    RUN(test_validation);
    RUN(test_single_file_same_image);
    RUN(test_cli);
    sd_worker_free(worker);
    sd_model_free(model);
    backend_destroy(be);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", tmpdir);
    return test_summary();
}
