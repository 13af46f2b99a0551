/* Pipeline tests: full tiny txt2img runs (each sampler, with and without CFG,
 * a prompt over 77 tokens) against diffusers' StableDiffusionPipeline on the
 * same weights (tests/fixtures/pipeline, made by tools/fixtures_pipeline.py
 * from `easel make-model --arch tiny --dtype f32 --seed 0`): final latents
 * within 1e-3 relative L2, pixels within 1/255 on >= 99.9%. Also parameter
 * validation, progress callbacks and cancellation. */
#include <stdint.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "cli/cli.h"
#include "engine/image.h"
#include "engine/log.h"
#include "models/loader.h"
#include "models/pipeline.h"
#include "models/scheduler.h"
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
    return test_read_file(path, len);
}

static const char *jstr(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : "";
}
static double jnum(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : cJSON_IsTrue(v) ? 1 : 0;
}

/* A string, or NULL for null or absent (SDXL tells "no negative prompt" from ""). */
static const char *jstr_null(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static void check_case_on(sd_worker *worker, const cJSON *c) {
    const char *name = jstr(c, "name");
    gen_params p;
    gen_params_default(&p);
    p.prompt = jstr(c, "prompt");
    p.negative_prompt = jstr_null(c, "negative_prompt");
    p.prompt_2 = jstr_null(c, "prompt_2");
    p.negative_prompt_2 = jstr_null(c, "negative_prompt_2");
    if (jnum(c, "clip_skip") >= 1) p.clip_skip = (int)jnum(c, "clip_skip");
    p.sampler = sampler_parse(jstr(c, "sampler"));
    p.steps = (int)jnum(c, "steps");
    p.guidance = (float)jnum(c, "guidance");
    p.seed = (uint64_t)jnum(c, "seed");
    p.width = (int)jnum(c, "width"), p.height = (int)jnum(c, "height");
    p.eta = (float)jnum(c, "eta");
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

static void check_case(const cJSON *c) {
    check_case_on(worker, c);
}

static int write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    int ok = fputs(text, f) >= 0;
    return fclose(f) == 0 && ok;
}

/* Full runs with scheduler configs as diffusers saves them (the issue's
 * repro: a save_pretrained PNDM config, leading spacing, no clip_sample; an
 * SD2-768 v-prediction DDIM config on tiny-sd2; SD-Turbo's Euler trailing at
 * 1 step without CFG; LCM with its guidance embedding; TCD; DDIM trailing). */
static void test_saved_configs_match_diffusers(void) {
    char path[512], dir[400], sched[500];
    size_t len;
    char *text = read_all(test_fixture("pipeline/config_cases.json", path, sizeof path), &len);
    REQUIRE(text, "%s missing (tools/fixtures_pipeline.py)", path);
    cJSON *root = cJSON_Parse(text);
    free(text);
    const cJSON *cases = cJSON_GetObjectItemCaseSensitive(root, "cases"), *c;
    int seed = (int)jnum(root, "seed"), n = 0;
    cJSON_ArrayForEach(c, cases) {
        const char *arch = jstr(c, "arch");
        snprintf(dir, sizeof dir, "%s/cfg-%s", tmpdir, arch);
        sd_arch a;
        REQUIRE(sd_arch_by_name(arch, &a) == EASEL_OK, "%s", easel_errmsg());
        if (access(dir, F_OK))
            REQUIRE(sd_make_model(&a, DT_F32, (uint64_t)seed, dir) == EASEL_OK, "%s",
                    easel_errmsg());
        char *cfg = cJSON_Print(cJSON_GetObjectItemCaseSensitive(c, "config"));
        snprintf(sched, sizeof sched, "%s/scheduler/scheduler_config.json", dir);
        REQUIRE(cfg && write_file(sched, cfg), "write %s", sched);
        free(cfg);
        sd_model *m = NULL;
        sd_worker *w = NULL;
        easel_err e = sd_model_load(dir, be, &m);
        CHECK(e == EASEL_OK, "%s: load: %s", jstr(c, "name"), easel_errmsg());
        if (!e && !sd_worker_create(m, be, &w)) check_case_on(w, c), n++;
        sd_worker_free(w);
        sd_model_free(m);
    }
    CHECK(n >= 14, "%d config cases ran", n);
    cJSON_Delete(root);
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
    q = p, q.schedule = SCHEDULE_COUNT;
    expect_invalid(q, "schedule", "karras");
    q = p, q.eta = 2;
    expect_invalid(q, "eta", "[0, 1]");
    static char big[GEN_MAX_PROMPT_BYTES + 2];
    memset(big, 'a', sizeof big - 1);
    q = p, q.prompt_2 = big;
    expect_invalid(q, "prompt_2", "4096 bytes");
    q = p, q.negative_prompt_2 = big;
    expect_invalid(q, "negative_prompt_2", "4096 bytes");
    if (model) { /* a schedule the sampler does not have: named, at resolve time */
        gen_params r;
        q = p, q.sampler = SAMPLER_PNDM, q.schedule = SCHEDULE_KARRAS;
        CHECK(sd_params_resolve(model, &q, &r, &f) == EASEL_EINVAL && f && !strcmp(f, "schedule") &&
                  strstr(easel_errmsg(), "pndm"),
              "karras on pndm: %s", easel_errmsg());
        q = p;
        CHECK(!sd_params_resolve(model, &q, &r, &f) && r.sampler == SAMPLER_PNDM && r.steps == 20 &&
                  r.width == 64,
              "the tiny model's defaults: its PNDMScheduler, 20 steps, 64x64");
    }
    CHECK(sampler_parse("dpmpp_2m_karras") == SAMPLER_DPMPP_2M_KARRAS && sampler_parse("x") < 0,
          "sampler names");
    CHECK(!strcmp(sampler_name(SAMPLER_EULER_A), "euler_a"), "sampler_name");
}

/* SDXL txt2img vs StableDiffusionXLPipeline (tests/fixtures/pipeline/sdxl_cases.json, made by
 * tools/fixtures_sdxl.py on `make-model --arch tiny-sdxl --dtype f32 --seed 0`): both
 * encoders, prompt_2, zeroed or encoded negatives, time ids, Turbo and Lightning schedules. */
static void test_sdxl_matches_diffusers(void) {
    char path[512], dir[400], sched[500], index[500];
    size_t len;
    char *text = read_all(test_fixture("pipeline/sdxl_cases.json", path, sizeof path), &len);
    REQUIRE(text, "%s missing (tools/fixtures_sdxl.py)", path);
    cJSON *root = cJSON_Parse(text);
    free(text);
    snprintf(dir, sizeof dir, "%s/tiny-sdxl", tmpdir);
    sd_arch a;
    REQUIRE(sd_arch_by_name("tiny-sdxl", &a) == EASEL_OK, "%s", easel_errmsg());
    REQUIRE(sd_make_model(&a, DT_F32, 0, dir) == EASEL_OK, "%s", easel_errmsg());
    snprintf(sched, sizeof sched, "%s/scheduler/scheduler_config.json", dir);
    snprintf(index, sizeof index, "%s/model_index.json", dir);
    size_t ilen = 0;
    char *index_json = read_all(index, &ilen);
    REQUIRE(index_json, "model_index.json");
    const cJSON *cases = cJSON_GetObjectItemCaseSensitive(root, "cases"), *c;
    int n = 0;
    cJSON_ArrayForEach(c, cases) {
        char *cfg = cJSON_Print(cJSON_GetObjectItemCaseSensitive(c, "config"));
        REQUIRE(cfg && write_file(sched, cfg), "write %s", sched);
        free(cfg);
        cJSON *idx = cJSON_Parse(index_json); /* force_zeros_for_empty_prompt as the case says */
        cJSON_ReplaceItemInObjectCaseSensitive(
            idx, "force_zeros_for_empty_prompt",
            cJSON_CreateBool(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "force_zeros"))));
        char *it = cJSON_Print(idx);
        REQUIRE(it && write_file(index, it), "write %s", index);
        free(it);
        cJSON_Delete(idx);
        sd_model *m = NULL;
        sd_worker *w = NULL;
        easel_err e = sd_model_load(dir, be, &m);
        CHECK(e == EASEL_OK, "%s: load: %s", jstr(c, "name"), easel_errmsg());
        if (!e && !sd_worker_create(m, be, &w)) check_case_on(w, c), n++;
        sd_worker_free(w);
        sd_model_free(m);
    }
    CHECK(n >= 12, "%d SDXL cases ran", n);
    free(index_json);
    cJSON_Delete(root);
}

/* SDXL's defaults and its own refusals: prompt_2 only where there is a second
 * encoder, sizes named, families from the schedule. */
static void test_sdxl_params(void) {
    char dir[400];
    snprintf(dir, sizeof dir, "%s/tiny-sdxl", tmpdir);
    char sched[500];
    snprintf(sched, sizeof sched, "%s/scheduler/scheduler_config.json", dir);
    sd_arch a;
    REQUIRE(sd_arch_by_name("tiny-sdxl", &a) == EASEL_OK, "arch");
    char *cfg = sched_config_to_json(&a.sched); /* SDXL base's, which the last case replaced */
    REQUIRE(cfg && write_file(sched, cfg), "write");
    free(cfg);
    sd_model *xl = NULL;
    REQUIRE(sd_model_load(dir, be, &xl) == EASEL_OK, "%s", easel_errmsg());
    sd_model_info info;
    sd_model_get_info(xl, &info);
    CHECK(info.text_encoders == 2 && info.vae_force_upcast && !strcmp(info.arch, "tiny-sdxl"),
          "info: %d encoders, force_upcast %d, arch %s", info.text_encoders, info.vae_force_upcast,
          info.arch);
    gen_params p, r;
    const char *f = NULL;
    gen_params_default(&p);
    p.prompt = "a room";
    p.prompt_2 = "in oil";
    CHECK(sd_params_resolve(xl, &p, &r, &f) == EASEL_OK, "prompt_2 on SDXL: %s", easel_errmsg());
    if (model) { /* the SD1.5-shaped tiny model has one encoder */
        CHECK(sd_params_resolve(model, &p, &r, &f) == EASEL_EINVAL && f && !strcmp(f, "prompt_2") &&
                  strstr(easel_errmsg(), "second text encoder"),
              "prompt_2 on SD1.5: %s", easel_errmsg());
        p.prompt_2 = NULL, p.negative_prompt_2 = "x";
        CHECK(sd_params_resolve(model, &p, &r, &f) == EASEL_EINVAL && f &&
                  !strcmp(f, "negative_prompt_2"),
              "negative_prompt_2 on SD1.5: %s", easel_errmsg());
        uint8_t *rgb = NULL;
        CHECK(sd_generate(worker, &p, NULL, NULL, &rgb, NULL) == EASEL_EINVAL && !rgb,
              "sd_generate refuses it too");
    }
    gen_params_default(&p);
    p.prompt = "a room";
    p.width = 1020, p.height = 1024; /* not a multiple of SDXL's VAE factor */
    CHECK(sd_params_resolve(xl, &p, &r, &f) == EASEL_EINVAL && f && !strcmp(f, "width") &&
              strstr(easel_errmsg(), "multiple of 8"),
          "1020 wide: %s", easel_errmsg());
    p.width = 1024, p.height = 2056;
    CHECK(sd_params_resolve(xl, &p, &r, &f) == EASEL_EINVAL && f && !strcmp(f, "height"),
          "2056 high: %s", easel_errmsg());
    p.width = p.height = GEN_DEFAULT, p.clip_skip = 3; /* CLIP-L has 2 layers here: [-4] is none */
    CHECK(sd_params_resolve(xl, &p, &r, &f) == EASEL_EINVAL && f && !strcmp(f, "clip_skip"),
          "clip_skip past the encoder: %s", easel_errmsg());
    p.clip_skip = 1;
    CHECK(!sd_params_resolve(xl, &p, &r, &f) && r.steps == 20 && r.guidance == 5.0f &&
              r.sampler == SAMPLER_EULER && r.width == 64,
          "SDXL defaults: %d steps, guidance %g, %s", r.steps, (double)r.guidance,
          sampler_name(r.sampler));
    sd_model_free(xl);
    /* a Lightning model loads with its family: trailing Euler over the folder's config */
    sd_load_opts o;
    sd_load_opts_default(&o);
    o.family = "sdxl-lightning";
    REQUIRE(sd_model_load_ex(dir, be, &o, &xl) == EASEL_OK, "%s", easel_errmsg());
    gen_params_default(&p);
    p.prompt = "a room";
    CHECK(!sd_params_resolve(xl, &p, &r, &f) && r.steps == 4 && r.guidance == 0.0f,
          "Lightning defaults: %d steps, guidance %g", r.steps, (double)r.guidance);
    sd_model_get_info(xl, &info);
    CHECK(!strcmp(info.family, "sdxl-lightning"), "family %s", info.family);
    sd_model_free(xl);
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

/* v-prediction forced on a model whose config says epsilon is refused; on a
 * model that does not say, it is taken; info reports what was loaded. */
static void test_load_options(void) {
    REQUIRE(worker, "no model");
    char dir[300];
    snprintf(dir, sizeof dir, "%s/cfg-tiny-sd2", tmpdir);
    sd_arch a;
    REQUIRE(sd_arch_by_name("tiny-sd2", &a) == EASEL_OK, "arch");
    if (access(dir, F_OK)) REQUIRE(sd_make_model(&a, DT_F32, 5, dir) == EASEL_OK, "make");
    char sched[400];
    snprintf(sched, sizeof sched, "%s/scheduler/scheduler_config.json", dir);
    char *cfg = sched_config_to_json(&a.sched); /* PNDM, prediction_type epsilon */
    REQUIRE(cfg && write_file(sched, cfg), "write");
    free(cfg);
    sd_load_opts o;
    sd_load_opts_default(&o);
    o.prediction = PRED_V;
    sd_model *m = NULL;
    CHECK(sd_model_load_ex(dir, be, &o, &m) == EASEL_EINVAL && !m &&
              strstr(easel_errmsg(), "v_prediction") && strstr(easel_errmsg(), "epsilon"),
          "v on an epsilon model: %s", easel_errmsg());
    REQUIRE(write_file(sched, "{\"_class_name\": \"DDIMScheduler\", \"beta_schedule\": "
                              "\"scaled_linear\", \"beta_start\": 0.00085, \"beta_end\": 0.012}"),
            "write");
    CHECK(sd_model_load_ex(dir, be, &o, &m) == EASEL_OK, "v on a silent config: %s",
          easel_errmsg());
    sd_model_info info;
    if (m) {
        sd_model_get_info(m, &info);
        CHECK(!strcmp(info.prediction_type, "v_prediction") &&
                  info.default_sampler == SAMPLER_DDIM &&
                  !strcmp(info.scheduler_class, "DDIMScheduler") && !strcmp(info.family, "sd2") &&
                  info.params_unet > 0 && !strcmp(info.dtype, "f32"),
              "info: %s %s %s", info.family, info.prediction_type, info.default_sampler_name);
        sd_model_free(m), m = NULL;
    }
    REQUIRE(write_file(sched, "{\"_class_name\": \"DDIMScheduler\", \"dynamic_sigmas\": 3}"),
            "write");
    CHECK(sd_model_load(dir, be, &m) == EASEL_EUNSUPPORTED &&
              strstr(easel_errmsg(), "dynamic_sigmas"),
          "unknown field refused at load: %s", easel_errmsg());
    REQUIRE(write_file(sched, "{\"_class_name\": \"LMSDiscreteScheduler\"}"), "write");
    CHECK(sd_model_load(dir, be, &m) == EASEL_EUNSUPPORTED &&
              strstr(easel_errmsg(), "LMSDiscreteScheduler"),
          "unknown class refused: %s", easel_errmsg());
    o.prediction = -1, o.sampler = SAMPLER_EULER;
    CHECK(sd_model_load_ex(dir, be, &o, &m) == EASEL_OK, "... unless a sampler is named: %s",
          easel_errmsg());
    sd_model_free(m);
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
    RUN(test_saved_configs_match_diffusers);
    RUN(test_sdxl_matches_diffusers);
    RUN(test_sdxl_params);
    RUN(test_progress_and_cancel);
    RUN(test_validation);
    RUN(test_single_file_same_image);
    RUN(test_load_options);
    RUN(test_cli);
    sd_worker_free(worker);
    sd_model_free(model);
    backend_destroy(be);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", tmpdir);
    return test_summary();
}
