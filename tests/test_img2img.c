/* img2img and inpainting against diffusers' StableDiffusionImg2ImgPipeline
 * and StableDiffusionInpaintPipeline on the same weights, image, mask and
 * seed (tests/fixtures/img2img, made by tools/fixtures_img2img.py from
 * `easel make-model --arch tiny|tiny-inpaint --dtype f32 --seed 0`): every
 * sampler at two strengths, 4- and 9-channel inpainting; final latents
 * within 1e-3 relative L2, pixels within 1/255 on >= 99.9 %. Also: only the
 * remaining steps run (progress), keep_unmasked keeps the pixels exactly,
 * strength 0 decodes the image's own latents, and every refusal names its
 * field. */
#include <stdint.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "engine/image_codecs.h"
#include "models/loader.h"
#include "models/pipeline.h"
#include "tests/test.h"

static char tmpdir[256];
static backend *be;
static sd_model *m4, *m9;
static sd_worker *w4, *w9;
static uint8_t *init_rgb, *mask_px; /* 64x64 */

static uint8_t *read_all(const char *path, size_t *len) {
    return (uint8_t *)test_read_file(path, len);
}

/* A fixture image through the decoders (RGB flattened over white; the mask by luminance). */
static uint8_t *load_image(const char *name, int as_mask) {
    char p[512], q[128];
    snprintf(q, sizeof q, "images/%s", name);
    size_t n = 0;
    uint8_t *d = read_all(test_fixture(q, p, sizeof p), &n), *rgba = NULL, *out = NULL;
    image_info in;
    if (d && !image_decode(d, n, NULL, &rgba, &in) && in.width == 64 && in.height == 64 &&
        (out = malloc(64 * 64 * 3))) {
        if (as_mask)
            image_mask_from_luma(rgba, 64, 64, out);
        else
            image_flatten(rgba, 64, 64, 0xFFFFFF, out);
    }
    free(d), free(rgba);
    return out;
}

static int load(const char *arch, sd_model **m, sd_worker **w) {
    char dir[400];
    snprintf(dir, sizeof dir, "%s/%s", tmpdir, arch);
    sd_arch a;
    if (sd_arch_by_name(arch, &a) || sd_make_model(&a, DT_F32, 0, dir) ||
        sd_model_load(dir, be, m) || sd_worker_create(*m, be, w)) {
        fprintf(stderr, "%s: %s\n", arch, easel_errmsg());
        return 0;
    }
    return 1;
}

static void setup(void) {
    be = backend_cpu_create(2);
    if (!be || !load("tiny", &m4, &w4) || !load("tiny-inpaint", &m9, &w9)) return;
    init_rgb = load_image("init_64.png", 0);
    mask_px = load_image("mask_64.png", 1);
}

static const char *jstr(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : "";
}
static double jnum(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

static void base_params(gen_params *p) {
    gen_params_default(p);
    p->prompt = "a scandinavian living room, oak floor, white sofa";
    p->negative_prompt = "blurry, low quality";
    p->guidance = 7.5f;
    p->steps = 6;
    p->seed = 4321;
    p->width = p->height = 64;
    p->init_image = init_rgb;
}

typedef struct {
    int calls, last_step, total;
} progress_seen;

static int on_progress(void *user, int step, int steps, double ms) {
    (void)ms;
    progress_seen *s = user;
    s->calls++, s->last_step = step, s->total = steps;
    return 0;
}

static void check_case(const cJSON *c, int *ran) {
    const char *name = jstr(c, "name");
    int inpaint = !strcmp(jstr(c, "kind"), "inpaint"),
        nine = !strcmp(jstr(c, "arch"), "tiny-inpaint");
    gen_params p;
    base_params(&p);
    p.sampler = sampler_parse(jstr(c, "sampler"));
    p.steps = (int)jnum(c, "steps");
    p.seed = (uint64_t)jnum(c, "seed");
    p.strength = jnum(c, "strength");
    p.eta = (float)jnum(c, "eta");
    if (inpaint) p.mask = mask_px;
    char path[512], fx[300];
    snprintf(fx, sizeof fx, "img2img/%s.bin", name);
    size_t len = 0;
    uint8_t *ref = read_all(test_fixture(fx, path, sizeof path), &len);
    long nlat = 4L * 8 * 8, npx = 3L * 64 * 64;
    REQUIRE(ref && len == (size_t)(nlat * 4 + npx), "%s: fixture missing or wrong size", name);
    float *lat = malloc(sizeof(float) * nlat), *rl = malloc(sizeof(float) * nlat);
    memcpy(rl, ref, sizeof(float) * nlat);
    uint8_t *rgb = NULL;
    gen_timings tm;
    progress_seen ps = {0};
    easel_err e = sd_generate_ex(nine ? w9 : w4, &p, on_progress, &ps, &rgb, lat, &tm);
    CHECK(e == EASEL_OK, "%s: %s", name, easel_errmsg());
    if (!e) {
        double rel = test_rel_l2f(lat, rl, nlat);
        long close = 0;
        for (long i = 0; i < npx; i++)
            close += abs((int)rgb[i] - (int)ref[nlat * 4 + i]) <= 1;
        printf("  %-28s latents rel %.2e, pixels within 1/255: %.4f%% (%d steps run)\n", name, rel,
               100.0 * close / npx, tm.steps_run);
        CHECK(rel <= 1e-3, "%s: latents rel L2 %.3e > 1e-3", name, rel);
        CHECK(close >= 0.999 * npx, "%s: only %ld of %ld pixels within 1/255", name, close, npx);
        /* diffusers: min(int(steps·strength), steps) steps run, and the bar counts those */
        int want = (int)(p.steps * p.strength);
        CHECK(tm.steps_run == want && ps.total == want && ps.last_step == want && ps.calls == want,
              "%s: %d steps run, progress %d/%d in %d calls (want %d)", name, tm.steps_run,
              ps.last_step, ps.total, ps.calls, want);
        CHECK(tm.image_encode_ms > 0, "%s: the image was encoded", name);
        (*ran)++;
    }
    free(rgb), free(lat), free(rl), free(ref);
}

static void test_matches_diffusers(void) {
    REQUIRE(w4 && w9 && init_rgb && mask_px, "setup failed");
    char path[512];
    size_t len;
    uint8_t *text = read_all(test_fixture("img2img/cases.json", path, sizeof path), &len);
    REQUIRE(text, "%s missing (tools/fixtures_img2img.py)", path);
    cJSON *root = cJSON_Parse((char *)text);
    free(text);
    const cJSON *c;
    int ran = 0, n = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(root, "cases")) {
        check_case(c, &ran);
        n++;
    }
    CHECK(n >= 30 && ran == n, "%d of %d cases ran", ran, n);
    cJSON_Delete(root);
}

/* keep_unmasked: outside the (blurred) mask the output is the init image,
 * byte for byte; inside it is the generated image; mask_blur changes it. */
static void test_keep_unmasked_and_blur(void) {
    REQUIRE(w4 && init_rgb && mask_px, "setup failed");
    gen_params p;
    base_params(&p);
    p.mask = mask_px;
    p.strength = 0.75;
    uint8_t *plain = NULL, *kept = NULL, *blurred = NULL;
    CHECK(!sd_generate(w4, &p, NULL, NULL, &plain, NULL), "%s", easel_errmsg());
    p.keep_unmasked = 1;
    CHECK(!sd_generate(w4, &p, NULL, NULL, &kept, NULL), "%s", easel_errmsg());
    p.mask_blur = 4;
    CHECK(!sd_generate(w4, &p, NULL, NULL, &blurred, NULL), "%s", easel_errmsg());
    REQUIRE(plain && kept && blurred, "images");
    long outside_same = 0, outside = 0, inside_gen = 0, inside = 0, outside_changed_plain = 0;
    for (int i = 0; i < 64 * 64; i++) {
        int in = mask_px[i] >= 128;
        for (int c = 0; c < 3; c++) {
            int k = 3 * i + c;
            if (in)
                inside++, inside_gen += kept[k] == plain[k];
            else
                outside++, outside_same += kept[k] == init_rgb[k],
                    outside_changed_plain += plain[k] != init_rgb[k];
        }
    }
    CHECK(outside_same == outside, "keep_unmasked: %ld of %ld unmasked values are the original's",
          outside_same, outside);
    CHECK(inside_gen == inside, "keep_unmasked: the masked area is the generated image");
    CHECK(outside_changed_plain > outside / 2,
          "without it the VAE round trip changes the unmasked pixels (%ld of %ld)",
          outside_changed_plain, outside);
    CHECK(memcmp(kept, blurred, 64 * 64 * 3) != 0, "mask_blur changes the result");
    CHECK(blurred[0] == init_rgb[0] && blurred[3 * (63 * 64 + 63)] == init_rgb[3 * (63 * 64 + 63)],
          "far from the mask the blurred overlay is still the original");
    free(plain), free(kept), free(blurred);
}

/* strength·steps < 1: no step runs and the image's own latents are decoded
 * (diffusers raises there; A1111 users expect the picture back). */
static void test_strength_zero(void) {
    REQUIRE(w4 && init_rgb, "setup failed");
    gen_params p;
    base_params(&p);
    p.strength = 0.1;          /* int(6 · 0.1) = 0 */
    p.sampler = SAMPLER_EULER; /* (PNDM has steps + 1 timesteps: diffusers runs its last one) */
    uint8_t *rgb = NULL;
    gen_timings tm;
    progress_seen ps = {0};
    CHECK(!sd_generate(w4, &p, on_progress, &ps, &rgb, &tm), "%s", easel_errmsg());
    CHECK(tm.steps_run == 0 && ps.calls == 0, "no step ran (%d)", tm.steps_run);
    /* the same as decoding the posterior sample: close to the image (a random VAE is no
     * identity, so only check that it is an image of the right size and not the noise path) */
    p.strength = 0.2; /* int(1.2) = 1 step */
    uint8_t *one = NULL;
    CHECK(!sd_generate(w4, &p, NULL, NULL, &one, &tm) && tm.steps_run == 1, "one step: %s",
          easel_errmsg());
    CHECK(rgb && one && memcmp(rgb, one, 64 * 64 * 3), "zero steps differs from one step");
    free(rgb), free(one);
}

static void expect_refused(sd_model *m, const gen_params *p, const char *field, const char *what) {
    gen_params r;
    const char *f = NULL;
    easel_err e = sd_params_resolve(m, p, &r, &f);
    CHECK(e == EASEL_EINVAL && f && !strcmp(f, field), "%s: want EINVAL naming %s, got %d %s (%s)",
          what, field, e, f ? f : "-", easel_errmsg());
}

static void test_refusals(void) {
    REQUIRE(m4 && m9 && init_rgb && mask_px, "setup failed");
    gen_params p;
    base_params(&p);
    p.strength = 1.5;
    expect_refused(m4, &p, "strength", "strength 1.5");
    p.strength = -0.1;
    expect_refused(m4, &p, "strength", "strength -0.1");
    base_params(&p);
    p.init_image = NULL, p.strength = 0.5;
    expect_refused(m4, &p, "strength", "strength without an image");
    base_params(&p);
    p.init_image = NULL, p.mask = mask_px;
    expect_refused(m4, &p, "mask", "a mask without an image");
    base_params(&p);
    p.mask = mask_px, p.mask_blur = 65;
    expect_refused(m4, &p, "mask_blur", "mask_blur 65");
    base_params(&p);
    p.keep_unmasked = 1;
    expect_refused(m4, &p, "keep_unmasked", "keep_unmasked without a mask");
    base_params(&p); /* an inpainting UNet needs its mask */
    expect_refused(m9, &p, "mask", "9-channel UNet, no mask");
    base_params(&p);
    p.init_image = NULL;
    expect_refused(m9, &p, "init_image", "9-channel UNet, txt2img");
    /* defaults: diffusers' strengths (0.8 img2img, 1.0 inpainting) */
    gen_params r;
    base_params(&p);
    CHECK(!sd_params_resolve(m4, &p, &r, NULL) && r.strength == 0.8, "img2img default %g",
          r.strength);
    p.mask = mask_px;
    CHECK(!sd_params_resolve(m4, &p, &r, NULL) && r.strength == 1.0, "inpaint default %g",
          r.strength);
    sd_model_info info;
    sd_model_get_info(m9, &info);
    CHECK(info.inpaint_unet && info.vae_encoder, "info: inpainting UNet, VAE encoder");
    sd_model_get_info(m4, &info);
    CHECK(!info.inpaint_unet && info.vae_encoder, "info: tiny");
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/easel_test_img2img.XXXXXX");
    if (!mkdtemp(tmpdir)) return perror("mkdtemp"), 1;
    setup();
    RUN(test_matches_diffusers);
    RUN(test_keep_unmasked_and_blur);
    RUN(test_strength_zero);
    RUN(test_refusals);
    sd_worker_free(w4), sd_worker_free(w9);
    sd_model_free(m4), sd_model_free(m9);
    backend_destroy(be);
    free(init_rgb), free(mask_px);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", tmpdir);
    return test_summary();
}
