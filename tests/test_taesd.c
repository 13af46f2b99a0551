/* TAESD (models/taesd.c) and live previews (models/pipeline.c) against
 * diffusers (tests/fixtures/taesd, made by tools/fixtures_taesd.py):
 *   - AutoencoderTiny decode and encode of a random 16-channel model, loaded
 *     from diffusers' own save_pretrained folder and from the original
 *     release's file layout: rel L2 <= 1e-5 (fp32), max abs <= 1e-4;
 *   - the preview of each step (euler, ddim) on `make-model --arch tiny
 *     --seed 0` against diffusers' pipeline with callback_on_step_end decoding
 *     the scheduler's pred_original_sample with AutoencoderTiny: x0 within
 *     1e-3 rel L2 (the pipeline test's latent tolerance), pixels within 1/255
 *     on >= 99.9%;
 *   - previews do not change the image (bit for bit), the every-N and the
 *     time/budget policies, downscaling, "decoder": "taesd", and the errors
 *     (missing files, unsupported configs, stray tensors, a model without one). */
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "engine/log.h"
#include "engine/safetensors.h"
#include "models/loader.h"
#include "models/pipeline.h"
#include "models/taesd.h"
#include "tests/test.h"

static char tmpdir[256];
static backend *be;

static char *read_all(const char *path, size_t *len) {
    return test_read_file(path, len);
}

static int write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    int ok = fwrite(data, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}

static void nchw_to_nhwc(const float *src, float *dst, int64_t B, int64_t C, int64_t H, int64_t W) {
    for (int64_t b = 0; b < B; b++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t i = 0; i < H * W; i++)
                dst[(b * H * W + i) * C + c] = src[(b * C + c) * H * W + i];
}

static int64_t prod(const int64_t *s) {
    return s[0] * s[1] * s[2] * s[3];
}

static const cJSON *cases_of(cJSON **root, const char *file) {
    char path[512];
    size_t len;
    char *text = read_all(test_fixture(file, path, sizeof path), &len);
    *root = text ? cJSON_Parse(text) : NULL;
    free(text);
    return *root ? cJSON_GetObjectItemCaseSensitive(*root, "cases") : NULL;
}

static void shape_of(const cJSON *c, const char *key, int64_t s[4]) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(c, key);
    for (int i = 0; i < 4; i++)
        s[i] = (int64_t)cJSON_GetArrayItem(a, i)->valuedouble;
}

/* Runs one fixture case on m: input and expected output are NCHW in the
 * .bin; the model works in NHWC. Returns the rel L2 error (or -1). */
static double run_case(const taesd_model *m, const cJSON *c, double *max_abs) {
    const char *name = cJSON_GetObjectItemCaseSensitive(c, "name")->valuestring;
    int decode = !strcmp(cJSON_GetObjectItemCaseSensitive(c, "op")->valuestring, "decode");
    int64_t si[4], so[4];
    shape_of(c, "input", si);
    shape_of(c, "output", so);
    char fx[128], path[512];
    snprintf(fx, sizeof fx, "taesd/%s.bin", name);
    size_t len = 0;
    float *ref = (float *)read_all(test_fixture(fx, path, sizeof path), &len);
    int64_t ni = prod(si), no = prod(so);
    if (!ref || len != (size_t)(ni + no) * 4) {
        free(ref);
        return -1;
    }
    float *in = malloc(sizeof(float) * ni), *want = malloc(sizeof(float) * no),
          *got = malloc(sizeof(float) * no);
    nchw_to_nhwc(ref, in, si[0], si[1], si[2], si[3]);
    nchw_to_nhwc(ref + ni, want, so[0], so[1], so[2], so[3]);
    arena *ar = arena_create(be, 0);
    tensor x = arena_new4(ar, si[0], si[2], si[3], si[1]);
    tensor y = arena_new4(ar, so[0], so[2], so[3], so[1]);
    easel_err e = arena_error(ar);
    if (!e) e = be->upload(be, &x, in);
    if (!e) e = decode ? taesd_decode(m, ar, &x, &y) : taesd_encode(m, ar, &x, &y);
    if (!e) e = be->download(be, &y, got);
    double rel = -1;
    if (!e) {
        rel = test_rel_l2f(got, want, (long)no);
        *max_abs = test_max_abs(got, want, (long)no);
    } else {
        fprintf(stderr, "  %s: %s\n", name, easel_errmsg());
    }
    arena_free(ar);
    free(in), free(want), free(got), free(ref);
    return rel;
}

static void check_fixtures_on(const char *what, const char *path) {
    taesd_model *m = NULL;
    REQUIRE(taesd_load(path, be, &m) == EASEL_OK, "%s: %s", what, easel_errmsg());
    cJSON *root = NULL;
    const cJSON *cases = cases_of(&root, "taesd/cases.json"), *c;
    REQUIRE(cases && cJSON_GetArraySize(cases) >= 3, "taesd/cases.json (tools/fixtures_taesd.py)");
    CHECK(taesd_has_encoder(m), "%s: the encoder was found", what);
    CHECK(taesd_params(m) > 100000, "%s: %lld parameters", what, (long long)taesd_params(m));
    cJSON_ArrayForEach(c, cases) {
        double mx = 0, rel = run_case(m, c, &mx);
        const char *name = cJSON_GetObjectItemCaseSensitive(c, "name")->valuestring;
        printf("  %-8s %-10s rel L2 %.2e, max abs %.2e\n", what, name, rel, mx);
        CHECK(rel >= 0 && rel <= 1e-5 && mx <= 1e-4, "%s %s: rel L2 %.3e, max abs %.3e", what, name,
              rel, mx);
    }
    cJSON_Delete(root);
    taesd_free(m);
}

static void test_decode_encode_match_diffusers(void) {
    char p[512];
    check_fixtures_on("diffusers", test_fixture("taesd/model16", p, sizeof p));
}

static void test_original_layout(void) {
    char p[512];
    check_fixtures_on("original", test_fixture("taesd/orig16", p, sizeof p));
    /* one *_decoder.safetensors file: its _encoder sibling comes along */
    taesd_model *m = NULL;
    test_fixture("taesd/orig16/taesd_decoder.safetensors", p, sizeof p);
    REQUIRE(taesd_load(p, be, &m) == EASEL_OK, "%s", easel_errmsg());
    CHECK(taesd_has_encoder(m) && taesd_get_config(m)->dec_channels == 16 &&
              taesd_get_config(m)->latent_channels == 4,
          "config inferred from the original files");
    taesd_free(m);
}

static void copy_file(const char *from, const char *to) {
    size_t n = 0;
    char *d = read_all(from, &n);
    CHECK(d && write_file(to, d, n), "copy %s -> %s", from, to);
    free(d);
}

static void expect_error(const char *path, easel_err want, const char *needle) {
    taesd_model *m = NULL;
    easel_err e = taesd_load(path, be, &m);
    CHECK(e == want && !m && strstr(easel_errmsg(), needle), "%s: want %s with '%s', got %s: %s",
          path, easel_errname(want), needle, easel_errname(e), easel_errmsg());
    taesd_free(m);
}

static void test_load_errors(void) {
    char p[400], src[512], cfg[600];
    snprintf(p, sizeof p, "%s/none", tmpdir);
    expect_error(p, EASEL_ENOTFOUND, "does not exist");
    snprintf(p, sizeof p, "%s/empty", tmpdir);
    mkdir(p, 0755);
    expect_error(p, EASEL_ENOTFOUND, "taesd_decoder.safetensors");
    /* a diffusers folder whose config asks for what we do not implement */
    snprintf(p, sizeof p, "%s/silu", tmpdir);
    mkdir(p, 0755);
    snprintf(cfg, sizeof cfg, "%s/config.json", p);
    const char *silu = "{\"_class_name\": \"AutoencoderTiny\", \"act_fn\": \"silu\"}";
    CHECK(write_file(cfg, silu, strlen(silu)), "write");
    expect_error(p, EASEL_EUNSUPPORTED, "act_fn");
    const char *widths = "{\"decoder_block_out_channels\": [64, 64, 32, 64]}";
    CHECK(write_file(cfg, widths, strlen(widths)), "write");
    expect_error(p, EASEL_EUNSUPPORTED, "one width");
    const char *shift = "{\"shift_factor\": 0.0609}";
    CHECK(write_file(cfg, shift, strlen(shift)), "write");
    expect_error(p, EASEL_EUNSUPPORTED, "shift_factor");
    /* the right config, weights of another width: named with both shapes */
    const char *wide = "{\"decoder_block_out_channels\": [32, 32, 32, 32], "
                       "\"encoder_block_out_channels\": [32, 32, 32, 32]}";
    CHECK(write_file(cfg, wide, strlen(wide)), "write");
    snprintf(cfg, sizeof cfg, "%s/diffusion_pytorch_model.safetensors", p);
    copy_file(test_fixture("taesd/model16/diffusion_pytorch_model.safetensors", src, sizeof src),
              cfg);
    expect_error(p, EASEL_EFORMAT, "expected shape [32,4,3,3], found [16,4,3,3]");
    /* an original decoder with a tensor this layout does not have */
    snprintf(p, sizeof p, "%s/stray_decoder.safetensors", tmpdir);
    st_writer *w = st_writer_create();
    st_file *f = NULL;
    REQUIRE(st_open(test_fixture("taesd/orig16/taesd_decoder.safetensors", src, sizeof src), &f) ==
                EASEL_OK,
            "open");
    for (size_t i = 0; i < st_count(f); i++) {
        const st_tensor *t = st_at(f, i);
        st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data);
    }
    float extra[16] = {0};
    int64_t es[1] = {16};
    st_writer_add(w, "20.norm.weight", ST_F32, 1, es, extra);
    CHECK(st_writer_save(w, p) == EASEL_OK, "%s", easel_errmsg());
    st_writer_free(w);
    st_close(f);
    expect_error(p, EASEL_EFORMAT, "20.norm.weight");
}

/* ---- the pipeline: previews and the TAESD decoder ---- */

static char tiny[300];
static sd_model *model;
static sd_worker *worker;

static void setup_model(void) {
    snprintf(tiny, sizeof tiny, "%s/tiny", tmpdir);
    sd_arch a;
    sd_arch_tiny(&a);
    if (sd_make_model(&a, DT_F32, 0, tiny) || sd_model_load(tiny, be, &model) ||
        sd_worker_create(model, be, &worker))
        fprintf(stderr, "setup: %s\n", easel_errmsg());
}

typedef struct {
    int n, last_step, w, h, bad_order;
    float *x0;    /* per preview: latents (64·4 for 64x64) */
    uint8_t *rgb; /* per preview: w·h·3 */
    int cap, npx, nlat;
} frames;

static void on_preview(void *user, const gen_preview *pv) {
    frames *f = user;
    if (pv->step <= f->last_step || pv->step >= pv->steps) f->bad_order++;
    f->last_step = pv->step;
    f->w = pv->width, f->h = pv->height;
    if (f->n < f->cap) {
        memcpy(f->x0 + (size_t)f->n * f->nlat, pv->x0, sizeof(float) * f->nlat);
        memcpy(f->rgb + (size_t)f->n * f->npx, pv->rgb, (size_t)pv->width * pv->height * 3);
    }
    f->n++;
}

static void frames_init(frames *f, int cap, int nlat, int npx) {
    *f = (frames){.cap = cap, .nlat = nlat, .npx = npx};
    f->x0 = calloc((size_t)cap * nlat, sizeof(float));
    f->rgb = calloc((size_t)cap * npx, 1);
}
static void frames_free(frames *f) {
    free(f->x0), free(f->rgb);
}

static void params_for(gen_params *p, const cJSON *c) {
    gen_params_default(p);
    p->prompt = cJSON_GetObjectItemCaseSensitive(c, "prompt")->valuestring;
    p->negative_prompt = cJSON_GetObjectItemCaseSensitive(c, "negative_prompt")->valuestring;
    p->sampler = sampler_parse(cJSON_GetObjectItemCaseSensitive(c, "sampler")->valuestring);
    p->steps = cJSON_GetObjectItemCaseSensitive(c, "steps")->valueint;
    p->guidance = (float)cJSON_GetObjectItemCaseSensitive(c, "guidance")->valuedouble;
    p->seed = (uint64_t)cJSON_GetObjectItemCaseSensitive(c, "seed")->valuedouble;
    p->width = cJSON_GetObjectItemCaseSensitive(c, "width")->valueint;
    p->height = cJSON_GetObjectItemCaseSensitive(c, "height")->valueint;
}

static void check_preview_case(const cJSON *c) {
    const char *name = cJSON_GetObjectItemCaseSensitive(c, "name")->valuestring;
    gen_params p;
    params_for(&p, c);
    int nlat = 4 * (p.height / 8) * (p.width / 8), npx = 3 * p.width * p.height;
    char fx[128], path[512];
    snprintf(fx, sizeof fx, "taesd/preview_%s.bin", name);
    size_t len = 0;
    float *ref = (float *)read_all(test_fixture(fx, path, sizeof path), &len);
    size_t per = (size_t)nlat + (size_t)npx;
    REQUIRE(ref && len == per * 4 * (size_t)p.steps, "%s: fixture %s", name, path);
    frames f;
    frames_init(&f, p.steps, nlat, npx);
    gen_hooks h;
    gen_hooks_default(&h);
    h.preview = on_preview, h.preview_user = &f, h.preview_every = 1;
    uint8_t *rgb = NULL;
    gen_timings tm;
    easel_err e = sd_generate_hooks(worker, &p, &h, &rgb, NULL, &tm);
    CHECK(e == EASEL_OK, "%s: %s", name, easel_errmsg());
    /* a preview after every step but the last (the image follows it) */
    CHECK(f.n == p.steps - 1 && !f.bad_order && f.w == p.width && f.h == p.height,
          "%s: %d previews of %dx%d", name, f.n, f.w, f.h);
    CHECK(tm.previews == f.n && tm.preview_ms > 0, "timings count the previews");
    for (int k = 0; k < f.n && k < p.steps - 1; k++) {
        const float *rx0 = ref + per * k, *rimg = rx0 + nlat;
        double rel = test_rel_l2f(f.x0 + (size_t)k * nlat, rx0, nlat);
        long close = 0;
        for (int i = 0; i < npx; i++) {
            int want = (int)nearbyintf(rimg[i] * 255.0f);
            close += abs((int)f.rgb[(size_t)k * npx + i] - want) <= 1;
        }
        printf("  preview %-6s step %d: x0 rel L2 %.2e, pixels within 1/255 %.3f%%\n", name, k + 1,
               rel, 100.0 * close / npx);
        CHECK(rel <= 1e-3, "%s step %d: x0 rel L2 %.3e", name, k + 1, rel);
        CHECK(close >= 0.999 * npx, "%s step %d: %ld of %d pixels within 1/255", name, k + 1, close,
              npx);
    }
    free(rgb), free(ref);
    frames_free(&f);
}

static void test_previews_match_diffusers(void) {
    REQUIRE(worker, "no model");
    REQUIRE(sd_model_has_taesd(model), "make-model wrote taesd/ and the loader found it");
    cJSON *root = NULL;
    const cJSON *cases = cases_of(&root, "taesd/preview.json"), *c;
    REQUIRE(cases && cJSON_GetArraySize(cases) >= 2, "taesd/preview.json");
    cJSON_ArrayForEach(c, cases) check_preview_case(c);
    cJSON_Delete(root);
}

static gen_params small_job(void) {
    gen_params p;
    gen_params_default(&p);
    p.prompt = "a green sofa";
    p.width = 64, p.height = 64;
    p.steps = 6;
    p.seed = 77;
    p.sampler = SAMPLER_EULER_A; /* stochastic: previews must not touch its noise */
    return p;
}

static void test_previews_leave_the_image_alone(void) {
    REQUIRE(worker, "no model");
    gen_params p = small_job();
    uint8_t *a = NULL, *b = NULL;
    float la[256], lb[256];
    frames f;
    frames_init(&f, 8, 256, 64 * 64 * 3);
    gen_hooks h;
    gen_hooks_default(&h);
    h.preview = on_preview, h.preview_user = &f, h.preview_every = 1;
    CHECK(sd_generate_ex(worker, &p, NULL, NULL, &a, la, NULL) == EASEL_OK, "%s", easel_errmsg());
    CHECK(sd_generate_hooks(worker, &p, &h, &b, lb, NULL) == EASEL_OK, "%s", easel_errmsg());
    CHECK(f.n == 5, "5 previews (%d)", f.n);
    CHECK(a && b && !memcmp(a, b, 64 * 64 * 3) && !memcmp(la, lb, sizeof la),
          "same image and latents, bit for bit, with previews on and off");
    free(a), free(b);
    frames_free(&f);
    /* every 2nd step: steps 2 and 4 (6 is the last) */
    frames_init(&f, 8, 256, 64 * 64 * 3);
    h.preview_user = &f, h.preview_every = 2;
    CHECK(sd_generate_hooks(worker, &p, &h, &a, NULL, NULL) == EASEL_OK, "%s", easel_errmsg());
    CHECK(f.n == 2 && f.last_step == 4, "every 2nd: %d previews, last at %d", f.n, f.last_step);
    free(a);
    frames_free(&f);
}

static void test_preview_policies(void) {
    REQUIRE(model, "no model");
    gen_params p = small_job();
    sd_worker *w = NULL; /* a fresh worker: no cost measured yet */
    REQUIRE(sd_worker_create(model, be, &w) == EASEL_OK, "worker");
    frames f;
    frames_init(&f, 8, 256, 64 * 64 * 3);
    gen_hooks h;
    gen_hooks_default(&h);
    h.preview = on_preview, h.preview_user = &f;
    h.preview_interval_ms = 1e-6, h.preview_budget = 1e-9;
    uint8_t *rgb = NULL;
    gen_timings tm;
    CHECK(sd_generate_hooks(w, &p, &h, &rgb, NULL, &tm) == EASEL_OK, "%s", easel_errmsg());
    /* the first costs nothing known; after it, no preview fits a budget of 1e-9 */
    CHECK(f.n == 1 && f.last_step == 1, "budget: %d previews (want 1)", f.n);
    free(rgb), rgb = NULL;
    frames_free(&f);
    frames_init(&f, 8, 256, 64 * 64 * 3);
    h.preview_user = &f, h.preview_budget = 1.0;
    CHECK(sd_generate_hooks(w, &p, &h, &rgb, NULL, &tm) == EASEL_OK, "%s", easel_errmsg());
    CHECK(f.n == 5, "interval ~0, budget 1: every step but the last (%d)", f.n);
    free(rgb), rgb = NULL;
    frames_free(&f);
    frames_init(&f, 8, 256, 64 * 64 * 3);
    h.preview_user = &f, h.preview_interval_ms = 1e9;
    CHECK(sd_generate_hooks(w, &p, &h, &rgb, NULL, &tm) == EASEL_OK, "%s", easel_errmsg());
    CHECK(f.n == 0, "an interval longer than the job: no preview (%d)", f.n);
    free(rgb);
    frames_free(&f);
    sd_worker_free(w);
}

/* max_side 24 on 128x64: factor 6 -> 21x10, each pixel the rounded mean of a
 * 6x6 block of the full-size preview. */
static void test_preview_downscale(void) {
    REQUIRE(worker, "no model");
    gen_params p = small_job();
    p.width = 128, p.steps = 2;
    frames full, small;
    frames_init(&full, 2, 4 * 8 * 16, 128 * 64 * 3);
    frames_init(&small, 2, 4 * 8 * 16, 128 * 64 * 3);
    gen_hooks h;
    gen_hooks_default(&h);
    h.preview = on_preview, h.preview_user = &full, h.preview_every = 1;
    uint8_t *rgb = NULL;
    CHECK(sd_generate_hooks(worker, &p, &h, &rgb, NULL, NULL) == EASEL_OK, "%s", easel_errmsg());
    free(rgb), rgb = NULL;
    h.preview_user = &small, h.preview_max_side = 24;
    CHECK(sd_generate_hooks(worker, &p, &h, &rgb, NULL, NULL) == EASEL_OK, "%s", easel_errmsg());
    free(rgb);
    REQUIRE(full.n == 1 && small.n == 1, "one preview each");
    CHECK(full.w == 128 && full.h == 64 && small.w == 21 && small.h == 10, "sizes %dx%d, %dx%d",
          full.w, full.h, small.w, small.h);
    int bad = 0;
    for (int y = 0; y < 10; y++)
        for (int x = 0; x < 21; x++)
            for (int c = 0; c < 3; c++) {
                int sum = 0;
                for (int dy = 0; dy < 6; dy++)
                    for (int dx = 0; dx < 6; dx++)
                        sum += full.rgb[((y * 6 + dy) * 128 + x * 6 + dx) * 3 + c];
                bad += small.rgb[(y * 21 + x) * 3 + c] != (sum + 18) / 36;
            }
    CHECK(bad == 0, "%d downscaled values differ from the box means", bad);
    frames_free(&full), frames_free(&small);
}

/* "decoder": "taesd": the final latents through TAESD, exactly as taesd_decode does. */
static void test_taesd_decoder(void) {
    REQUIRE(worker, "no model");
    gen_params p = small_job();
    p.decoder = GEN_DECODER_TAESD;
    uint8_t *rgb = NULL, *vae = NULL;
    float lat[256];
    gen_timings tm;
    REQUIRE(sd_generate_ex(worker, &p, NULL, NULL, &rgb, lat, &tm) == EASEL_OK, "%s",
            easel_errmsg());
    p.decoder = GEN_DECODER_VAE;
    CHECK(sd_generate(worker, &p, NULL, NULL, &vae, NULL) == EASEL_OK, "%s", easel_errmsg());
    CHECK(vae && memcmp(rgb, vae, 64 * 64 * 3), "the VAE gives another image");
    /* the reference: TAESD straight from the model folder on the same latents */
    char dir[400];
    snprintf(dir, sizeof dir, "%s/taesd", tiny);
    taesd_model *m = NULL;
    REQUIRE(taesd_load(dir, be, &m) == EASEL_OK, "%s", easel_errmsg());
    float nhwc[256], img[64 * 64 * 3];
    nchw_to_nhwc(lat, nhwc, 1, 4, 8, 8);
    arena *ar = arena_create(be, 0);
    tensor z = arena_new4(ar, 1, 8, 8, 4), y = arena_new4(ar, 1, 64, 64, 3);
    CHECK(!arena_error(ar) && !be->upload(be, &z, nhwc) && !taesd_decode(m, ar, &z, &y) &&
              !be->download(be, &y, img),
          "%s", easel_errmsg());
    int bad = 0;
    for (int i = 0; i < 64 * 64 * 3; i++) {
        float v = img[i] / 2.0f + 0.5f;
        v = v < 0 ? 0 : v > 1 ? 1 : v;
        bad += rgb[i] != (uint8_t)nearbyintf(v * 255.0f);
    }
    CHECK(bad == 0, "%d pixels differ from TAESD on the final latents", bad);
    arena_free(ar);
    taesd_free(m);
    free(rgb), free(vae);
}

/* A folder without taesd/: no TAESD, "decoder": "taesd" refused naming the
 * field, previews asked for are simply not made; a broken taesd/ fails the load. */
static void test_model_without_taesd(void) {
    char dir[400], cmd[900];
    snprintf(dir, sizeof dir, "%s/bare", tmpdir);
    sd_arch a;
    sd_arch_tiny(&a);
    REQUIRE(sd_make_model(&a, DT_F16, 3, dir) == EASEL_OK, "%s", easel_errmsg());
    snprintf(cmd, sizeof cmd, "rm -rf '%s/taesd'", dir);
    REQUIRE(system(cmd) == 0, "rm");
    sd_model *m = NULL;
    REQUIRE(sd_model_load(dir, be, &m) == EASEL_OK, "%s", easel_errmsg());
    sd_model_info info;
    sd_model_get_info(m, &info);
    CHECK(!sd_model_has_taesd(m) && !info.taesd, "no TAESD");
    gen_params p = small_job(), r;
    p.decoder = GEN_DECODER_TAESD;
    const char *field = NULL;
    CHECK(sd_params_resolve(m, &p, &r, &field) == EASEL_EINVAL && field &&
              !strcmp(field, "decoder") && strstr(easel_errmsg(), "no TAESD"),
          "decoder taesd refused: %s", easel_errmsg());
    sd_model_free(m), m = NULL;
    /* --taesd PATH: the fixture's 16-channel model fits the tiny VAE's latents */
    sd_load_opts o;
    sd_load_opts_default(&o);
    char fx[512];
    o.taesd = test_fixture("taesd/orig16", fx, sizeof fx);
    CHECK(sd_model_load_ex(dir, be, &o, &m) == EASEL_OK && sd_model_has_taesd(m), "%s",
          easel_errmsg());
    sd_model_free(m), m = NULL;
    snprintf(cmd, sizeof cmd, "%s/taesd", dir);
    mkdir(cmd, 0755);
    CHECK(sd_model_load(dir, be, &m) == EASEL_ENOTFOUND && !m &&
              strstr(easel_errmsg(), "taesd_decoder.safetensors"),
          "an empty taesd/ is an error, not ignored: %s", easel_errmsg());
    o.taesd = "/nonexistent/taesd";
    CHECK(sd_model_load_ex(dir, be, &o, &m) == EASEL_ENOTFOUND && !m, "a missing --taesd: %s",
          easel_errmsg());
}

static void test_decoder_names(void) {
    CHECK(gen_decoder_parse("taesd") == GEN_DECODER_TAESD &&
              gen_decoder_parse("vae") == GEN_DECODER_VAE && gen_decoder_parse("tiny") < 0 &&
              gen_decoder_parse(NULL) < 0,
          "parse");
    CHECK(!strcmp(gen_decoder_name(GEN_DECODER_TAESD), "taesd"), "name");
    gen_params p;
    gen_params_default(&p);
    const char *field = NULL;
    p.decoder = (gen_decoder)7;
    CHECK(gen_params_validate(&p, &field) == EASEL_EINVAL && field && !strcmp(field, "decoder"),
          "out of range");
}

int main(void) {
    log_set_level(LOG_ERROR);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/easel_test_taesd.XXXXXX");
    if (!mkdtemp(tmpdir)) return perror("mkdtemp"), 1;
    be = backend_cpu_create(2);
    RUN(test_decode_encode_match_diffusers);
    RUN(test_original_layout);
    RUN(test_load_errors);
    RUN(test_decoder_names);
    setup_model();
    RUN(test_previews_match_diffusers);
    RUN(test_previews_leave_the_image_alone);
    RUN(test_preview_policies);
    RUN(test_preview_downscale);
    RUN(test_taesd_decoder);
    RUN(test_model_without_taesd);
    sd_worker_free(worker);
    sd_model_free(model);
    backend_destroy(be);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", tmpdir);
    return test_summary();
}
