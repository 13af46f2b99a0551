/* models/sampler.c against diffusers (tools/fixtures_sched.py ->
 * tests/fixtures/sched/sched.bin): timestep and sigma tables for each sampler
 * at several step counts, and whole sampling runs with a fake model
 * eps = 0.5 * x_in + 0.1 * sin(t) starting from torch noise (our rng).
 * matrix.bin/.json: every sampler x spacing x prediction type and the config
 * variants, each from its config JSON through sched_config_from_json; tables
 * within 1e-6 and every evaluation's update, started from diffusers' own
 * latents, within 1e-6 relative L2. */
#include <stdint.h>

#include <cjson/cJSON.h>

#include "../engine/err.h"
#include "../models/sampler.h"
#include "test.h"

/* REQUIRE evaluates its condition twice: calls with effects go through this. */
#define REQUIRE_OK(expr)                                                                           \
    do {                                                                                           \
        easel_err e_ = (expr);                                                                     \
        REQUIRE(e_ == EASEL_OK, "%s: %s", #expr, easel_errmsg());                                  \
    } while (0)
#define REQUIRE_TRUE(expr, what)                                                                   \
    do {                                                                                           \
        int ok_ = (expr) != 0;                                                                     \
        REQUIRE(ok_, "%s", what);                                                                  \
    } while (0)

/* The EFX1 fixture container: "EFX1", u32 count, entries of
 * u16 name_len, name, u8 dtype (0 f32, 1 i32, 2 f64), u32 n, data. */
typedef struct {
    char name[256];
    int dtype;
    uint32_t n;
    const unsigned char *data;
} efx_entry;

static unsigned char *fix_buf;
static long fix_len;

static int efx_load_file(const char *name) {
    char path[1024];
    FILE *f = fopen(test_fixture(name, path, sizeof path), "rb");
    if (!f) return 0;
    fseek(f, 0, SEEK_END);
    fix_len = ftell(f);
    fseek(f, 0, SEEK_SET);
    fix_buf = malloc((size_t)fix_len);
    if (fix_buf && fread(fix_buf, 1, (size_t)fix_len, f) != (size_t)fix_len) {
        free(fix_buf);
        fix_buf = NULL;
    }
    fclose(f);
    return fix_buf && fix_len > 8 && !memcmp(fix_buf, "EFX1", 4);
}

static int efx_load(void) {
    return efx_load_file("sched/sched.bin");
}

/* Reads the entry at *pos and advances it; 0 at the end or on a bad entry. */
static int efx_next(long *pos, efx_entry *e) {
    const unsigned char *buf = fix_buf;
    if (*pos + 2 > fix_len) return 0;
    uint16_t nl;
    memcpy(&nl, buf + *pos, 2);
    if (nl >= sizeof e->name || *pos + 2 + nl + 5 > fix_len) return 0;
    memcpy(e->name, buf + *pos + 2, nl);
    e->name[nl] = 0;
    e->dtype = buf[*pos + 2 + nl];
    memcpy(&e->n, buf + *pos + 3 + nl, 4);
    long sz = (long)e->n * (e->dtype == 2 ? 8 : 4);
    if (*pos + 7 + nl + sz > fix_len) return 0;
    e->data = buf + *pos + 7 + nl;
    *pos += 7 + nl + sz;
    return 1;
}

static int efx_find(const char *name, efx_entry *e) {
    long pos = 8;
    while (efx_next(&pos, e))
        if (!strcmp(e->name, name)) return 1;
    return 0;
}

static float efx_f32(const efx_entry *e, uint32_t i) {
    float v;
    memcpy(&v, e->data + 4 * i, 4);
    return v;
}

/* the four samplers sched.bin covers (the first four sampler_kind values) */
#define NKINDS 4
static const char *kind_names[NKINDS] = {"euler_a", "euler", "ddim", "dpmpp_2m_karras"};

static double rel_err(double got, double want) {
    return fabs(got - want) / (fabs(want) > 1e-30 ? fabs(want) : 1.0);
}

static void test_tables(void) {
    REQUIRE(fix_buf, "no fixture file");
    const int step_counts[] = {1, 2, 3, 10, 14, 15, 20, 25, 50};
    int checked = 0;
    for (int k = 0; k < NKINDS; k++) {
        double max_t = 0, max_s = 0;
        for (size_t c = 0; c < sizeof step_counts / sizeof *step_counts; c++) {
            int steps = step_counts[c];
            char name[128];
            efx_entry ts, sg, init;
            snprintf(name, sizeof name, "%s/%d/timesteps", kind_names[k], steps);
            REQUIRE_TRUE(efx_find(name, &ts) && ts.n == (uint32_t)steps, name);
            snprintf(name, sizeof name, "%s/%d/init_sigma", kind_names[k], steps);
            REQUIRE_TRUE(efx_find(name, &init), name);
            sampler *s = NULL;
            REQUIRE_OK(sampler_create((sampler_kind)k, steps, &s));
            for (int i = 0; i < steps; i++) {
                double e = rel_err(sampler_timestep(s, i), efx_f32(&ts, (uint32_t)i));
                max_t = e > max_t ? e : max_t;
                CHECK(e <= 1e-6, "%s/%d timestep[%d] = %.7g, diffusers %.7g", kind_names[k], steps,
                      i, sampler_timestep(s, i), efx_f32(&ts, (uint32_t)i));
            }
            CHECK(rel_err(sampler_init_noise_sigma(s), efx_f32(&init, 0)) <= 1e-6,
                  "%s/%d init sigma %.7g vs %.7g", kind_names[k], steps,
                  sampler_init_noise_sigma(s), efx_f32(&init, 0));
            snprintf(name, sizeof name, "%s/%d/sigmas", kind_names[k], steps);
            if (efx_find(name, &sg)) {
                REQUIRE(sg.n == (uint32_t)steps + 1, "%s size", name);
                for (int i = 0; i <= steps; i++) {
                    double e = rel_err(sampler_sigma(s, i), efx_f32(&sg, (uint32_t)i));
                    max_s = e > max_s ? e : max_s;
                    CHECK(e <= 1e-6, "%s/%d sigma[%d] = %.8g, diffusers %.8g", kind_names[k], steps,
                          i, sampler_sigma(s, i), efx_f32(&sg, (uint32_t)i));
                }
            }
            sampler_free(s);
            checked++;
        }
        printf("  %-16s tables: max rel err timesteps %.2e, sigmas %.2e\n", kind_names[k], max_t,
               max_s);
    }
    CHECK(checked == 36, "checked %d tables", checked);
}

/* The train sigmas: Euler at 1000 steps interpolates at whole timesteps, so
 * its sigmas are sqrt((1 - alphas_cumprod) / alphas_cumprod) reversed. */
static void test_alphas_cumprod(void) {
    REQUIRE(fix_buf, "no fixture file");
    efx_entry ac;
    REQUIRE_TRUE(efx_find("alphas_cumprod", &ac) && ac.n == 1000, "alphas_cumprod missing");
    sampler *s = NULL;
    REQUIRE_OK(sampler_create(SAMPLER_EULER, 1000, &s));
    double max_e = 0;
    for (int t = 0; t < 1000; t++) {
        double a = efx_f32(&ac, (uint32_t)t);
        double e = rel_err(sampler_sigma(s, 999 - t), sqrt((1 - a) / a));
        max_e = e > max_e ? e : max_e;
    }
    CHECK(max_e <= 1e-6, "train sigmas max rel err %.3g", max_e);
    sampler_free(s);
}

static int parse_run(const char *name, int *kind, int *steps, int *n, uint64_t *seed, int *step) {
    char kname[32];
    int c, h, w;
    unsigned long long sd;
    if (sscanf(name, "run/%31[^/]/%d/%dx%dx%d/seed%llu/step%d", kname, steps, &c, &h, &w, &sd,
               step) != 7)
        return 0;
    *kind = -1;
    for (int k = 0; k < NKINDS; k++)
        if (!strcmp(kname, kind_names[k])) *kind = k;
    *n = c * h * w;
    *seed = sd;
    return *kind >= 0;
}

/* Replays one diffusers run (its step0 entry starts at *pos) and compares the
 * latents after every step. Returns the worst relative L2 error. */
static double replay_run(const efx_entry *first, long pos, int kind, int steps, int n,
                         uint64_t seed) {
    float *x = malloc(sizeof(float) * (size_t)n), *x_in = malloc(sizeof(float) * (size_t)n);
    float *eps = malloc(sizeof(float) * (size_t)n);
    sampler *s = NULL;
    double worst = 0;
    if (!x || !x_in || !eps || sampler_create((sampler_kind)kind, steps, &s) != EASEL_OK) {
        CHECK(0, "setup failed");
        goto done;
    }
    rng r;
    rng_seed(&r, seed);
    rng_randn(&r, x, n);
    for (int k = 0; k < n; k++)
        x[k] *= sampler_init_noise_sigma(s);
    memcpy(eps, first->data, sizeof(float) * (size_t)n); /* entries are not aligned */
    double e0 = test_rel_l2f(x, eps, n);
    CHECK(e0 <= 1e-7, "%s: initial latents rel err %.3g", first->name, e0);
    efx_entry e;
    for (int i = 0; i < steps; i++) {
        float t = sampler_timestep(s, i);
        sampler_scale_input(s, i, x, x_in, n);
        float shift = (float)(0.1 * sin((double)t));
        for (int k = 0; k < n; k++)
            eps[k] = 0.5f * x_in[k] + shift;
        CHECK(sampler_step(s, i, eps, x, n, &r) == EASEL_OK, "%s", easel_errmsg());
        if (!efx_next(&pos, &e) || e.n != (uint32_t)n) {
            CHECK(0, "%s: fixture ends early at step %d", first->name, i + 1);
            break;
        }
        float *want = malloc(sizeof(float) * (size_t)n);
        if (!want) break;
        memcpy(want, e.data, sizeof(float) * (size_t)n);
        double err = test_rel_l2f(x, want, n);
        worst = err > worst ? err : worst;
        CHECK(err <= 1e-5, "%s step %d: rel L2 err %.3g (max abs %.3g)", first->name, i + 1, err,
              test_max_abs(x, want, n));
        free(want);
    }
done:
    sampler_free(s);
    free(x);
    free(x_in);
    free(eps);
    return worst;
}

static void test_runs(void) {
    REQUIRE(fix_buf, "no fixture file");
    long pos = 8;
    efx_entry e;
    int runs = 0;
    double worst[NKINDS] = {0};
    while (efx_next(&pos, &e)) {
        int kind, steps, n, step;
        uint64_t seed;
        if (!parse_run(e.name, &kind, &steps, &n, &seed, &step) || step != 0) continue;
        double w = replay_run(&e, pos, kind, steps, n, seed);
        worst[kind] = w > worst[kind] ? w : worst[kind];
        runs++;
    }
    CHECK(runs == 9, "found %d runs", runs);
    for (int k = 0; k < NKINDS; k++)
        printf("  %-16s runs: worst rel L2 err vs diffusers %.2e\n", kind_names[k], worst[k]);
}

static void test_misuse(void) {
    sampler *s = NULL;
    CHECK(sampler_create(SAMPLER_EULER, 0, &s) == EASEL_EINVAL && !s, "0 steps");
    CHECK(sampler_create(SAMPLER_DDIM, 1000, &s) == EASEL_EINVAL && !s, "ddim 1000 steps");
    CHECK(sampler_create(SAMPLER_COUNT, 10, &s) == EASEL_EINVAL && !s, "bad kind");
    REQUIRE_OK(sampler_create(SAMPLER_EULER_A, 3, &s));
    float x[8] = {0}, eps[8] = {0};
    CHECK(sampler_step(s, 1, eps, x, 8, NULL) == EASEL_EINVAL, "out of order");
    CHECK(sampler_step(s, 0, eps, x, 8, NULL) == EASEL_EINVAL, "euler_a without rng");
    rng r;
    rng_seed(&r, 1);
    CHECK(sampler_step(s, 0, eps, x, 8, &r) == EASEL_OK, "%s", easel_errmsg());
    CHECK(sampler_step(s, 1, eps, x, 4, &r) == EASEL_EINVAL, "size change");
    sampler_free(s);
}

/* ---- the matrix ---- */

static float *efx_copy(const char *name, uint32_t want) {
    efx_entry e;
    if (!efx_find(name, &e) || e.n != want) return NULL;
    float *v = malloc(sizeof(float) * (want ? want : 1));
    if (v) memcpy(v, e.data, sizeof(float) * want);
    return v;
}

typedef struct {
    double tables, update;
    int cases, refused;
} worst_t;

static double max_rel(const float *got, const float *want, int n) {
    double m = 0;
    for (int i = 0; i < n; i++) {
        double e = rel_err(got[i], want[i]);
        m = e > m ? e : m;
    }
    return m;
}

/* One case: tables, then every evaluation from diffusers' latents. */
static void matrix_case(const cJSON *c, worst_t *w) {
    const char *name = cJSON_GetObjectItem(c, "name")->valuestring;
    int kind = sampler_parse(cJSON_GetObjectItem(c, "sampler")->valuestring);
    int sched = schedule_parse(cJSON_GetObjectItem(c, "schedule")->valuestring);
    int steps = cJSON_GetObjectItem(c, "steps")->valueint;
    const cJSON *ev = cJSON_GetObjectItem(c, "evals");
    int evals = ev ? ev->valueint : 0; /* absent for the refused cases */
    uint64_t seed = (uint64_t)cJSON_GetObjectItem(c, "seed")->valuedouble;
    const cJSON *shape = cJSON_GetObjectItem(c, "shape");
    int n = 1;
    for (int d = 0; d < cJSON_GetArraySize(shape); d++)
        n *= cJSON_GetArrayItem(shape, d)->valueint;
    char *json = cJSON_PrintUnformatted(cJSON_GetObjectItem(c, "config"));
    sched_config cfg;
    sched_config_empty(&cfg);
    easel_err e = sched_config_from_json(&cfg, json);
    free(json);
    CHECK(e == EASEL_OK, "%s: config: %s", name, easel_errmsg());
    sampler_opts o = {.kind = kind,
                      .config = &cfg,
                      .prediction = -1,
                      .schedule = sched,
                      .steps = steps,
                      .eta = (float)cJSON_GetObjectItem(c, "eta")->valuedouble};
    sampler *s = NULL;
    if (cJSON_IsTrue(cJSON_GetObjectItem(c, "refused"))) { /* diffusers breaks on it */
        CHECK(!e && sampler_create_ex(&o, &s) == EASEL_EINVAL && !s, "%s: not refused", name);
        if (getenv("TEST_VERBOSE")) printf("  %s refused: %s\n", name, easel_errmsg());
        w->refused++;
        return;
    }
    if (e || sampler_create_ex(&o, &s) != EASEL_OK) {
        CHECK(0, "%s: create: %s", name, easel_errmsg());
        return;
    }
    char key[256];
    CHECK(sampler_evals(s) == evals, "%s: %d evaluations, diffusers %d", name, sampler_evals(s),
          evals);
    if (sampler_evals(s) != evals) goto done;
    snprintf(key, sizeof key, "m/%s/timesteps", name);
    float *ts = efx_copy(key, (uint32_t)evals), got[2048];
    CHECK(ts != NULL, "%s: no timesteps", name);
    for (int i = 0; i < evals; i++)
        got[i] = sampler_timestep(s, i);
    double et = ts ? max_rel(got, ts, evals) : 1;
    CHECK(et <= 1e-6, "%s: timesteps max rel err %.3g", name, et);
    free(ts);
    snprintf(key, sizeof key, "m/%s/sigmas", name);
    efx_entry se;
    if (efx_find(key, &se)) {
        int ns = sampler_sigma_count(s);
        CHECK(se.n == (uint32_t)ns, "%s: %d sigmas, diffusers %u", name, ns, se.n);
        float *sg = efx_copy(key, se.n);
        for (int i = 0; i < ns && i < 2048; i++)
            got[i] = sampler_sigma(s, i);
        double es = sg && se.n == (uint32_t)ns ? max_rel(got, sg, ns) : 1;
        CHECK(es <= 1e-6, "%s: sigmas max rel err %.3g", name, es);
        et = es > et ? es : et;
        free(sg);
    }
    snprintf(key, sizeof key, "m/%s/init_sigma", name);
    float *init = efx_copy(key, 1);
    CHECK(init && rel_err(sampler_init_noise_sigma(s), init[0]) <= 1e-6, "%s: init sigma %.8g",
          name, sampler_init_noise_sigma(s));
    free(init);
    w->tables = et > w->tables ? et : w->tables;
    float *x = malloc(sizeof(float) * n), *x_in = malloc(sizeof(float) * n);
    float *m = malloc(sizeof(float) * n);
    rng r;
    rng_seed(&r, seed);
    rng_randn(&r, x, n);
    for (int k = 0; k < n; k++)
        x[k] *= sampler_init_noise_sigma(s);
    snprintf(key, sizeof key, "m/%s/x0", name);
    float *ref = efx_copy(key, (uint32_t)n);
    CHECK(ref && test_rel_l2f(x, ref, n) <= 1e-6, "%s: initial noise", name);
    snprintf(key, sizeof key, "m/%s/timesteps", name);
    ts = efx_copy(key, (uint32_t)evals);
    double worst = 0;
    for (int i = 0; i < evals && ref; i++) {
        memcpy(x, ref, sizeof(float) * n); /* diffusers' latents before evaluation i */
        free(ref);
        /* the fake model sees diffusers' timestep: the update is compared alone
         * (fractional Karras timesteps go through numpy's SIMD float32 log) */
        float t = ts ? ts[i] : sampler_timestep(s, i);
        sampler_scale_input(s, i, x, x_in, n);
        float shift = (float)(0.1 * sin((double)t));
        for (int k = 0; k < n; k++)
            m[k] = 0.5f * x_in[k] + shift;
        e = sampler_step(s, i, m, x, n, &r);
        CHECK(e == EASEL_OK, "%s: step %d: %s", name, i, easel_errmsg());
        snprintf(key, sizeof key, "m/%s/x%d", name, i + 1);
        ref = efx_copy(key, (uint32_t)n);
        if (!ref) {
            CHECK(0, "%s: no %s", name, key);
            break;
        }
        double err = test_rel_l2f(x, ref, n);
        if (err > worst) worst = err;
        CHECK(err <= 1e-6, "%s: evaluation %d/%d: rel L2 %.3g (max abs %.3g)", name, i + 1, evals,
              err, test_max_abs(x, ref, n));
    }
    free(ref);
    free(ts);
    w->update = worst > w->update ? worst : w->update;
    w->cases++;
    free(x), free(x_in), free(m);
done:
    sampler_free(s);
}

static void test_matrix(void) {
    free(fix_buf);
    fix_buf = NULL;
    REQUIRE(efx_load_file("sched/matrix.bin"), "no sched/matrix.bin");
    char path[1024];
    FILE *f = fopen(test_fixture("sched/matrix.json", path, sizeof path), "rb");
    REQUIRE(f, "no sched/matrix.json");
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)len + 1);
    REQUIRE(text && fread(text, 1, (size_t)len, f) == (size_t)len, "read matrix.json");
    fclose(f);
    text[len] = 0;
    cJSON *root = cJSON_Parse(text);
    free(text);
    const cJSON *cases = cJSON_GetObjectItem(root, "cases"), *c;
    REQUIRE(cJSON_GetArraySize(cases) >= 100, "matrix.json has %d cases",
            cJSON_GetArraySize(cases));
    worst_t w[SAMPLER_COUNT] = {{0}};
    cJSON_ArrayForEach(c, cases) {
        int k = sampler_parse(cJSON_GetObjectItem(c, "sampler")->valuestring);
        REQUIRE(k >= 0, "unknown sampler in matrix.json");
        matrix_case(c, &w[k]);
    }
    for (int k = 0; k < SAMPLER_COUNT; k++)
        printf("  %-16s %2d cases (+%d refused): tables max rel err %.2e, per-evaluation update "
               "rel L2 %.2e\n",
               sampler_name(k), w[k].cases, w[k].refused, w[k].tables, w[k].update);
    cJSON_Delete(root);
}

/* The reader refuses what it does not know or implement, naming the field,
 * and keeps from_config's semantics (an absent field is the class default). */
static void test_config_reader(void) {
    sched_config c;
    static const struct {
        const char *json, *named;
    } bad[] = {{"{\"beta_sigmas_magic\": 1}", "beta_sigmas_magic"},
               {"{\"thresholding\": true}", "thresholding"},
               {"{\"algorithm_type\": \"sde-dpmsolver++\"}", "algorithm_type"},
               {"{\"use_beta_sigmas\": true}", "use_beta_sigmas"},
               {"{\"timestep_spacing\": \"sgm\"}", "timestep_spacing"},
               {"{\"prediction_type\": \"flow_prediction\"}", "prediction_type"},
               {"{\"num_train_timesteps\": 4000}", "num_train_timesteps"},
               {"{\"steps_offset\": \"1\"}", "steps_offset"},
               {"{\"variance_type\": \"learned\"}", "variance_type"}};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        sched_config_sd15(&c);
        unsigned before = c.set;
        easel_err e = sched_config_from_json(&c, bad[i].json);
        CHECK(e != EASEL_OK && strstr(easel_errmsg(), bad[i].named), "%s: %s", bad[i].json,
              easel_errmsg());
        CHECK(c.set == before, "%s: config changed on error", bad[i].json);
    }
    sched_config_empty(&c);
    REQUIRE_OK(sched_config_from_json(&c,
                                      "{\"_class_name\": \"DDIMScheduler\", "
                                      "\"_diffusers_version\": \"0.42.1\", \"sample_max_value\": "
                                      "1.0, \"thresholding\": false}"));
    CHECK(!strcmp(c.class_name, "DDIMScheduler") && c.set == 0, "metadata and inert keys only");
    CHECK(sched_class_sampler("PNDMScheduler") == SAMPLER_PNDM &&
              sched_class_sampler("LMSDiscreteScheduler") < 0,
          "class -> sampler");
    /* round trip through make-model's writer */
    sched_config_sd15(&c);
    char *j = sched_config_to_json(&c);
    sched_config d;
    sched_config_empty(&d);
    REQUIRE_OK(sched_config_from_json(&d, j));
    free(j);
    CHECK(d.set == c.set && d.beta_start == c.beta_start && d.steps_offset == 1 &&
              !strcmp(d.class_name, "PNDMScheduler"),
          "round trip");
    /* schedules a class does not have are refused, naming the sampler */
    sampler *s = NULL;
    sampler_opts o = {
        .kind = SAMPLER_DDIM, .prediction = -1, .schedule = SCHEDULE_KARRAS, .steps = 10};
    CHECK(sampler_create_ex(&o, &s) == EASEL_EINVAL && !s && strstr(easel_errmsg(), "ddim"),
          "karras on ddim: %s", easel_errmsg());
    o.kind = SAMPLER_EULER_A, o.schedule = SCHEDULE_DEFAULT, o.prediction = PRED_SAMPLE;
    CHECK(sampler_create_ex(&o, &s) == EASEL_EINVAL && strstr(easel_errmsg(), "sample"),
          "euler_a with sample prediction: %s", easel_errmsg());
    CHECK(sampler_parse("dpmpp_2m") == SAMPLER_DPMPP_2M &&
              schedule_parse("karras") == SCHEDULE_KARRAS && schedule_parse("x") < 0 &&
              strstr(sampler_choices(), "tcd"),
          "names");
}

int main(void) {
    if (!efx_load()) fprintf(stderr, "cannot read tests/fixtures/sched/sched.bin\n");
    RUN(test_tables);
    RUN(test_alphas_cumprod);
    RUN(test_runs);
    RUN(test_misuse);
    RUN(test_matrix);
    RUN(test_config_reader);
    free(fix_buf);
    return test_summary();
}
