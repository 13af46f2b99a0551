/* The networks (clip.c, unet.c, vae.c) against float64 diffusers/transformers
 * references on tiny random configs (tests/fixtures/models, made by
 * tools/fixtures_models.py), the safetensors weight store (wstore.c), and the
 * full SD1.5 architectures on random weights at a small size. */
#include "../engine/arena.h"
#include "../engine/safetensors.h"
#include "../models/clip.h"
#include "../models/unet.h"
#include "../models/vae.h"
#include "test.h"

#include <unistd.h>

#define TOL 1e-4

/* REQUIRE evaluates its condition twice; these conditions have side effects. */
#define MUST(expr, ...)                                                                            \
    do {                                                                                           \
        int ok_ = !!(expr);                                                                        \
        CHECK(ok_ &&#expr, __VA_ARGS__);                                                           \
        if (!ok_) return;                                                                          \
    } while (0)

static backend *be;

static char *read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) {
        free(s);
        s = NULL;
    }
    if (s) s[n] = 0;
    fclose(f);
    return s;
}

/* A fixture: its config text, its weight store and the raw file for in./out. tensors. */
typedef struct {
    char *json;
    wstore *ws;
    st_file *st;
} fixture;

static int fixture_open(const char *name, fixture *fx) {
    char p[1024], q[128];
    snprintf(q, sizeof q, "models/%s.json", name);
    fx->json = read_text(test_fixture(q, p, sizeof p));
    snprintf(q, sizeof q, "models/%s.safetensors", name);
    test_fixture(q, p, sizeof p);
    const char *paths[1] = {p};
    if (!fx->json || wstore_st_open(be, paths, 1, NULL, NULL, NULL, &fx->ws) ||
        st_open(p, &fx->st)) {
        fprintf(stderr, "  fixture %s: %s\n", name, easel_errmsg());
        return 0;
    }
    return 1;
}

static void fixture_close(fixture *fx) {
    free(fx->json);
    wstore_st_close(fx->ws);
    st_close(fx->st);
}

/* A fixture tensor as host f32 (malloc'd), its element count in *n. */
static float *fx_f32(fixture *fx, const char *name, int64_t *n) {
    const st_tensor *t = st_find(fx->st, name);
    if (!t) return NULL;
    *n = st_nelem(t);
    float *d = malloc(sizeof(float) * (size_t)*n);
    if (d && st_read_f32(fx->st, t, d)) {
        free(d);
        return NULL;
    }
    return d;
}

/* Uploads fixture tensor `name` into a new backend tensor of shape ne. */
static int fx_tensor(fixture *fx, const char *name, tensor *t, int ndim, const int64_t *ne) {
    int64_t n = 0;
    float *d = fx_f32(fx, name, &n);
    int ok = d && !backend_tensor_alloc(be, t, be->act_dtype, ndim, ne) && tensor_nelem(t) == n &&
             !be->upload(be, t, d);
    free(d);
    return ok;
}

/* rel L2 of the backend tensor got vs fixture tensor ref; -1 on failure. */
static double compare(fixture *fx, const tensor *got, const char *ref) {
    int64_t n = 0;
    float *r = fx_f32(fx, ref, &n);
    float *g = malloc(sizeof(float) * (size_t)tensor_nelem(got));
    double e = -1;
    if (r && g && n == tensor_nelem(got) && !be->download(be, got, g)) e = test_rel_l2f(g, r, n);
    free(r);
    free(g);
    return e;
}

/* ---- CLIP ---- */

static void check_clip(const char *name) {
    fixture fx = {0};
    MUST(fixture_open(name, &fx), "fixture");
    clip_config c;
    clip_config_sd15(&c);
    clip_model *m = NULL;
    arena *ar = arena_create(be, 0);
    MUST(!clip_config_from_json(&c, fx.json), "config: %s", easel_errmsg());
    MUST(!clip_load(&c, fx.ws, &m), "load: %s", easel_errmsg());
    const st_tensor *ids = st_find(fx.st, "in.ids");
    MUST(ids && ids->dtype == ST_I32 && ids->shape[1] == c.max_positions, "ids");
    int batch = (int)ids->shape[0];
    tensor out;
    int64_t ne[3] = {batch, c.max_positions, c.hidden};
    MUST(!backend_tensor_alloc(be, &out, be->act_dtype, 3, ne), "alloc");
    const char *refs[2] = {"out.last_hidden_state", "out.skip1"};
    for (int skip = 0; skip < 2 && skip < c.layers; skip++) {
        easel_err e = clip_forward(m, ar, ids->data, batch, skip, &out);
        CHECK(!e, "forward skip %d: %s", skip, easel_errmsg());
        double err = compare(&fx, &out, refs[skip]);
        CHECK(err >= 0 && err <= TOL, "%s skip %d: rel L2 %.3g", name, skip, err);
        if (getenv("TEST_VERBOSE")) printf("  %s skip %d: rel L2 %.3g\n", name, skip, err);
    }
    CHECK(arena_used(ar) == 0, "arena released");
    /* every weight in the file was used; only the in./out. tensors remain */
    const char *unused[8];
    size_t nu = wstore_st_unused(fx.ws, unused, 8);
    CHECK(nu == 3, "%zu unused tensors", nu);
    for (size_t i = 0; i < nu && i < 8; i++)
        CHECK(!strncmp(unused[i], "in.", 3) || !strncmp(unused[i], "out.", 4), "unused %s",
              unused[i]);
    backend_tensor_free(be, &out);
    clip_free(m);
    arena_free(ar);
    fixture_close(&fx);
}

static void test_clip_quick_gelu(void) {
    check_clip("clip_a");
}
static void test_clip_gelu(void) {
    check_clip("clip_b");
}

static void test_clip_bad_ids(void) {
    fixture fx = {0};
    MUST(fixture_open("clip_b", &fx), "fixture");
    clip_config c;
    clip_config_sd15(&c);
    clip_model *m = NULL;
    arena *ar = arena_create(be, 0);
    MUST(!clip_config_from_json(&c, fx.json) && !clip_load(&c, fx.ws, &m), "load");
    int32_t ids[77] = {0};
    ids[5] = c.vocab_size; /* one past the end */
    tensor out;
    int64_t ne[3] = {1, 77, c.hidden};
    MUST(!backend_tensor_alloc(be, &out, be->act_dtype, 3, ne), "alloc");
    CHECK(clip_forward(m, ar, ids, 1, 0, &out) == EASEL_EINVAL, "out-of-range id refused");
    CHECK(strstr(easel_errmsg(), "token id") != NULL, "message: %s", easel_errmsg());
    backend_tensor_free(be, &out);
    clip_free(m);
    arena_free(ar);
    fixture_close(&fx);
}

/* ---- UNet ---- */

static void check_unet(const char *name) {
    fixture fx = {0};
    MUST(fixture_open(name, &fx), "fixture");
    unet_config c;
    unet_config_sd15(&c);
    unet_model *m = NULL;
    arena *ar = arena_create(be, 0);
    MUST(!unet_config_from_json(&c, fx.json), "config: %s", easel_errmsg());
    MUST(!unet_load(&c, fx.ws, &m), "load: %s", easel_errmsg());
    const st_tensor *xi = st_find(fx.st, "in.x"), *ci = st_find(fx.st, "in.ctx");
    MUST(xi && ci && xi->ndim == 4 && ci->ndim == 3, "inputs");
    tensor x, ctx, y;
    MUST(fx_tensor(&fx, "in.x", &x, 4, xi->shape), "x");
    MUST(fx_tensor(&fx, "in.ctx", &ctx, 3, ci->shape), "ctx");
    int64_t nt = 0;
    float *t = fx_f32(&fx, "in.t", &nt);
    MUST(t && nt == xi->shape[0], "t");
    int64_t ne[4] = {xi->shape[0], xi->shape[1], xi->shape[2], c.out_channels};
    MUST(!backend_tensor_alloc(be, &y, be->act_dtype, 4, ne), "alloc");
    easel_err e = unet_forward(m, ar, &x, t, &ctx, &y);
    CHECK(!e, "forward: %s", easel_errmsg());
    double err = compare(&fx, &y, "out.y");
    CHECK(err >= 0 && err <= TOL, "%s: rel L2 %.3g", name, err);
    if (getenv("TEST_VERBOSE")) printf("  %s: rel L2 %.3g\n", name, err);
    CHECK(arena_used(ar) == 0, "arena released");
    size_t nu = wstore_st_unused(fx.ws, NULL, 0);
    CHECK(nu == 7, "%zu unused tensors (expected the 7 in./out.)", nu);
    free(t);
    backend_tensor_free(be, &x);
    backend_tensor_free(be, &ctx);
    backend_tensor_free(be, &y);
    unet_free(m);
    arena_free(ar);
    fixture_close(&fx);
}

static void test_unet_8x8(void) {
    check_unet("unet_a");
}
static void test_unet_odd_9x7(void) {
    check_unet("unet_b");
}

static void test_unet_config_refusals(void) {
    unet_config c;
    unet_config_sd15(&c);
    static const char *bad[] = {"{\"class_embed_type\": \"timestep\"}",
                                "{\"addition_embed_type\": \"text_time\"}",
                                "{\"only_cross_attention\": true}",
                                "{\"resnet_time_scale_shift\": \"scale_shift\"}",
                                "{\"down_block_types\": [\"SimpleCrossAttnDownBlock2D\"]}",
                                "{\"conv_in_kernel\": 7}",
                                "{\"transformer_layers_per_block\": [1, 2, 10, 10]}",
                                "{\"num_attention_heads\": 8}",
                                "[1,2]",
                                "{"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        easel_err e = unet_config_from_json(&c, bad[i]);
        CHECK(e != EASEL_OK, "accepted %s", bad[i]);
    }
    CHECK(strstr(easel_errmsg(), "unet config") != NULL, "message: %s", easel_errmsg());
    CHECK(unet_config_from_json(&c, "{\"only_cross_attention\": true}") &&
              strstr(easel_errmsg(), "only_cross_attention"),
          "named: %s", easel_errmsg());
    /* SD2.x's config: per-level heads given as attention_head_dim, linear proj */
    CHECK(!unet_config_from_json(&c, "{\"attention_head_dim\": [5, 10, 20, 20], "
                                     "\"use_linear_projection\": true, \"upcast_attention\": "
                                     "true, \"cross_attention_dim\": 1024}"),
          "sd2: %s", easel_errmsg());
    CHECK(c.head_dim_or_heads[2] == 20 && c.use_linear_projection && c.cross_attention_dim == 1024,
          "sd2 values");
}

/* runwayml/stable-diffusion-v1-5 unet/config.json parses to our SD1.5 config,
 * also over a config that differed everywhere (a tiny one). */
static void test_unet_config_sd15_json(void) {
    static const char *sd15 =
        "{\"_class_name\": \"UNet2DConditionModel\", \"_diffusers_version\": \"0.6.0\", "
        "\"act_fn\": \"silu\", \"attention_head_dim\": 8, \"block_out_channels\": [320, 640, "
        "1280, 1280], \"center_input_sample\": false, \"cross_attention_dim\": 768, "
        "\"down_block_types\": [\"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\", "
        "\"CrossAttnDownBlock2D\", \"DownBlock2D\"], \"downsample_padding\": 1, "
        "\"flip_sin_to_cos\": true, \"freq_shift\": 0, \"in_channels\": 4, \"layers_per_block\": "
        "2, \"mid_block_scale_factor\": 1, \"norm_eps\": 1e-05, \"norm_num_groups\": 32, "
        "\"out_channels\": 4, \"sample_size\": 64, \"up_block_types\": [\"UpBlock2D\", "
        "\"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\"]}";
    fixture fx = {0};
    MUST(fixture_open("unet_b", &fx), "fixture");
    unet_config want, c;
    unet_config_sd15(&want);
    unet_config_sd15(&c);
    MUST(!unet_config_from_json(&c, fx.json), "tiny: %s", easel_errmsg());
    CHECK(c.levels == 3 && c.block_out_channels[0] == 16 && c.use_linear_projection, "tiny values");
    MUST(!unet_config_from_json(&c, sd15), "sd15: %s", easel_errmsg());
    c.use_linear_projection = 0; /* absent from the SD1.5 file: keeps the tiny value */
    CHECK(!memcmp(&c, &want, sizeof c), "sd15 config differs from unet_config_sd15");
    fixture_close(&fx);
}

/* Inputs that do not fit the model are refused with a message, not a crash. */
static void test_shape_errors(void) {
    fixture fx = {0};
    MUST(fixture_open("unet_a", &fx), "fixture");
    unet_config c;
    unet_config_sd15(&c);
    unet_model *m = NULL;
    MUST(!unet_config_from_json(&c, fx.json) && !unet_load(&c, fx.ws, &m), "load: %s",
         easel_errmsg());
    arena *ar = arena_create(be, 0);
    tensor x, ctx, y;
    int64_t nx[4] = {1, 8, 8, 3}, nc[3] = {1, 77, c.cross_attention_dim}, ny[4] = {1, 8, 8, 4};
    MUST(!backend_tensor_alloc(be, &x, be->act_dtype, 4, nx) &&
             !backend_tensor_alloc(be, &ctx, be->act_dtype, 3, nc) &&
             !backend_tensor_alloc(be, &y, be->act_dtype, 4, ny),
         "alloc");
    float t = 1;
    CHECK(unet_forward(m, ar, &x, &t, &ctx, &y) == EASEL_EINVAL, "3 input channels refused");
    CHECK(strstr(easel_errmsg(), "[1,8,8,3]") != NULL, "message shows x: %s", easel_errmsg());
    CHECK(arena_used(ar) == 0, "nothing left in the arena");
    backend_tensor_free(be, &x);
    backend_tensor_free(be, &ctx);
    backend_tensor_free(be, &y);
    unet_free(m);
    arena_free(ar);
    fixture_close(&fx);
    wstore *ws = NULL;
    const char *paths[1] = {"/nonexistent/easel.safetensors"};
    CHECK(wstore_st_open(be, paths, 1, NULL, NULL, NULL, &ws) != EASEL_OK && !ws,
          "missing file refused");
    CHECK(strstr(easel_errmsg(), "/nonexistent/easel.safetensors") != NULL, "names it: %s",
          easel_errmsg());
}

/* ---- VAE ---- */

static void test_vae_decode(void) {
    fixture fx = {0};
    MUST(fixture_open("vae_a", &fx), "fixture");
    vae_config c;
    vae_config_sd15(&c);
    vae_model *m = NULL;
    arena *ar = arena_create(be, 0);
    MUST(!vae_config_from_json(&c, fx.json), "config: %s", easel_errmsg());
    CHECK(c.levels == 3 && fabsf(c.scaling_factor - 0.18215f) < 1e-7f, "config values");
    MUST(!vae_load(&c, fx.ws, &m), "load: %s", easel_errmsg());
    const st_tensor *zi = st_find(fx.st, "in.z");
    MUST(zi && zi->ndim == 4, "z");
    tensor z, img;
    MUST(fx_tensor(&fx, "in.z", &z, 4, zi->shape), "z upload");
    int64_t f = 1 << (c.levels - 1);
    int64_t ne[4] = {zi->shape[0], f * zi->shape[1], f * zi->shape[2], c.out_channels};
    MUST(!backend_tensor_alloc(be, &img, be->act_dtype, 4, ne), "alloc");
    CHECK(!vae_decode(m, ar, &z, &img), "decode: %s", easel_errmsg());
    double err = compare(&fx, &img, "out.img");
    CHECK(err >= 0 && err <= TOL, "vae: rel L2 %.3g", err);
    if (getenv("TEST_VERBOSE")) printf("  vae: rel L2 %.3g\n", err);
    CHECK(arena_used(ar) == 0, "arena released");
    CHECK(wstore_st_unused(fx.ws, NULL, 0) == 2, "only in.z/out.img unused");
    CHECK(vae_config_from_json(&c, "{\"use_post_quant_conv\": false}") == EASEL_EUNSUPPORTED,
          "refuses no post_quant_conv");
    backend_tensor_free(be, &z);
    backend_tensor_free(be, &img);
    vae_free(m);
    arena_free(ar);
    fixture_close(&fx);
}

/* ---- the weight store ---- */

static void test_wstore_errors(void) {
    fixture fx = {0};
    MUST(fixture_open("vae_a", &fx), "fixture");
    tensor t;
    int64_t s1[1] = {17};
    easel_err e = fx.ws->get(fx.ws, "decoder.conv_out.bias", 1, s1, WL_PLAIN, &t);
    CHECK(e == EASEL_EFORMAT, "wrong shape refused");
    CHECK(strstr(easel_errmsg(), "decoder.conv_out.bias") && strstr(easel_errmsg(), "[17]") &&
              strstr(easel_errmsg(), "[3]"),
          "message names tensor and shapes: %s", easel_errmsg());
    e = fx.ws->get(fx.ws, "decoder.nope.weight", 1, s1, WL_PLAIN, &t);
    CHECK(e == EASEL_ENOTFOUND && strstr(easel_errmsg(), "decoder.nope.weight"), "missing: %s",
          easel_errmsg());
    CHECK(fx.ws->has(fx.ws, "decoder.conv_out.bias") && !fx.ws->has(fx.ws, "nope"), "has");
    fixture_close(&fx);
}

/* ws->get converts OIHW -> OHWI, F16/BF16 -> f32, conv-as-linear shapes, rename + prefix. */
static const char *rename_fn(void *ctx, const char *name, char *buf, size_t len) {
    (void)ctx;
    if (strncmp(name, "pre.", 4)) return NULL;
    snprintf(buf, len, "stored.%s", name + 4);
    return buf;
}

static void test_wstore_layouts(void) {
    float w[2 * 3 * 2 * 2];
    uint16_t h[6], b16[6];
    for (int i = 0; i < 24; i++)
        w[i] = (float)i - 5.5f;
    for (int i = 0; i < 6; i++)
        h[i] = f32_to_f16(0.25f * i), b16[i] = f32_to_bf16(-1.5f * i);
    int64_t sw[4] = {2, 3, 2, 2}, sl[4] = {3, 2, 1, 1}, sh[2] = {2, 3};
    st_writer *wr = st_writer_create();
    MUST(wr, "writer");
    char path[256];
    snprintf(path, sizeof path, "/tmp/easel_test_models_%d.safetensors", (int)getpid());
    MUST(!st_writer_add(wr, "stored.conv", ST_F32, 4, sw, w) &&
             !st_writer_add(wr, "stored.lin", ST_F16, 4, sl, h) &&
             !st_writer_add(wr, "stored.b16", ST_BF16, 2, sh, b16) && !st_writer_save(wr, path),
         "write: %s", easel_errmsg());
    st_writer_free(wr);
    wstore *ws = NULL;
    const char *paths[1] = {path};
    MUST(!wstore_st_open(be, paths, 1, "pre.", rename_fn, NULL, &ws), "open: %s", easel_errmsg());
    tensor c, l, b;
    float got[24];
    MUST(!ws->get(ws, "conv", 4, sw, WL_CONV, &c), "conv: %s", easel_errmsg());
    CHECK(c.ne[0] == 2 && c.ne[1] == 2 && c.ne[2] == 2 && c.ne[3] == 3, "OHWI shape");
    be->download(be, &c, got);
    int bad = 0;
    for (int o = 0; o < 2; o++)
        for (int i = 0; i < 3; i++)
            for (int y = 0; y < 2; y++)
                for (int x = 0; x < 2; x++)
                    bad += got[((o * 2 + y) * 2 + x) * 3 + i] != w[((o * 3 + i) * 2 + y) * 2 + x];
    CHECK(bad == 0, "%d transposed values wrong", bad);
    int64_t want_l[2] = {3, 2};
    MUST(!ws->get(ws, "lin", 2, want_l, WL_CONV_AS_LINEAR, &l), "lin: %s", easel_errmsg());
    CHECK(l.ndim == 2 && l.ne[0] == 3 && l.ne[1] == 2, "conv as linear shape");
    be->download(be, &l, got);
    for (int i = 0; i < 6; i++)
        CHECK(got[i] == 0.25f * i, "f16 value %d: %g", i, got[i]);
    MUST(!ws->get(ws, "b16", 2, sh, WL_PLAIN, &b), "b16: %s", easel_errmsg());
    be->download(be, &b, got);
    for (int i = 0; i < 6; i++)
        CHECK(got[i] == -1.5f * i, "bf16 value %d: %g", i, got[i]);
    CHECK(wstore_st_unused(ws, NULL, 0) == 0, "all used");
    CHECK(ws->bytes_loaded == tensor_nbytes(&c) + tensor_nbytes(&l) + tensor_nbytes(&b), "bytes");
    backend_tensor_free(be, &c);
    backend_tensor_free(be, &l);
    backend_tensor_free(be, &b);
    wstore_st_close(ws);
    /* the same name in two files is refused */
    const char *two[2] = {path, path};
    CHECK(wstore_st_open(be, two, 2, NULL, NULL, NULL, &ws) == EASEL_EFORMAT && !ws,
          "duplicate refused");
    CHECK(strstr(easel_errmsg(), "stored in both") && strstr(easel_errmsg(), path), "names it: %s",
          easel_errmsg());
    unlink(path);
}

/* ---- SD1.5 architectures on random weights ---- */

/* A store that invents weights: N(0,1/fan_in)-like uniform values, norms'
 * gamma around 1, small biases; deterministic per name. Counts what it gave. */
typedef struct {
    int64_t params, tensors;
} rand_ctx;

static easel_err rand_get(wstore *ws, const char *name, int ndim, const int64_t *shape,
                          weight_layout layout, tensor *out) {
    rand_ctx *rc = ws->ctx;
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= shape[i];
    float *d = malloc(sizeof(float) * (size_t)n);
    if (!d) return easel_seterr(EASEL_ENOMEM, "oom");
    unsigned long long s = 1469598103934665603ull;
    for (const char *p = name; *p; p++)
        s = (s ^ (unsigned char)*p) * 1099511628211ull;
    float fan_in = (float)(ndim >= 2 ? n / shape[0] : 1);
    float a = ndim >= 2 ? sqrtf(3.0f / fan_in) : 0.02f;
    int gamma = ndim == 1 && strstr(name, "norm") && strstr(name, ".weight");
    for (int64_t i = 0; i < n; i++)
        d[i] = (gamma ? 1.0f : 0.0f) + test_randf(&s, -a, a);
    easel_err e = wstore_upload(ws->be, name, d, ndim, shape, ndim, shape, layout, out);
    free(d);
    if (!e) rc->params += n, rc->tensors++;
    return e;
}

static int rand_has(wstore *ws, const char *name) {
    (void)ws, (void)name;
    return 1;
}

/* All finite, and not all the same value. */
static void check_finite(const tensor *t, const char *what) {
    int64_t n = tensor_nelem(t);
    float *h = malloc(sizeof(float) * (size_t)n);
    MUST(h && !be->download(be, t, h), "download");
    int64_t bad = 0;
    double lo = INFINITY, hi = -INFINITY;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(h[i])) bad++;
        lo = fmin(lo, h[i]), hi = fmax(hi, h[i]);
    }
    CHECK(bad == 0, "%s: %lld non-finite values", what, (long long)bad);
    CHECK(hi > lo, "%s: constant output", what);
    free(h);
}

static void test_sd15_unet_8x8(void) {
    rand_ctx rc = {0};
    wstore ws = {.be = be, .get = rand_get, .has = rand_has, .ctx = &rc};
    unet_config c;
    unet_config_sd15(&c);
    unet_model *m = NULL;
    MUST(!unet_load(&c, &ws, &m), "load: %s", easel_errmsg());
    /* diffusers' UNet2DConditionModel(SD1.5 config): 686 tensors, 859,520,964 params */
    CHECK(rc.tensors == 686 && rc.params == 859520964, "%lld tensors, %lld params",
          (long long)rc.tensors, (long long)rc.params);
    arena *ar = arena_create(be, 0);
    tensor x, ctx, y;
    int64_t nx[4] = {1, 8, 8, 4}, nc[3] = {1, 77, 768};
    MUST(!backend_tensor_alloc(be, &x, be->act_dtype, 4, nx) &&
             !backend_tensor_alloc(be, &ctx, be->act_dtype, 3, nc) &&
             !backend_tensor_alloc(be, &y, be->act_dtype, 4, nx),
         "alloc");
    float *hx = malloc(sizeof(float) * 77 * 768);
    unsigned long long s = 7;
    for (int i = 0; i < 77 * 768; i++)
        hx[i] = test_randf(&s, -1, 1);
    be->upload(be, &x, hx);
    be->upload(be, &ctx, hx);
    float t = 500;
    CHECK(!unet_forward(m, ar, &x, &t, &ctx, &y), "forward: %s", easel_errmsg());
    check_finite(&y, "sd15 unet");
    if (getenv("TEST_VERBOSE"))
        printf("  sd15 unet 8x8 arena high water %.1f MB\n", arena_high_water(ar) / 1e6);
    free(hx);
    backend_tensor_free(be, &x);
    backend_tensor_free(be, &ctx);
    backend_tensor_free(be, &y);
    unet_free(m);
    arena_free(ar);
}

static void test_sd15_clip_vae(void) {
    rand_ctx rc = {0};
    wstore ws = {.be = be, .get = rand_get, .has = rand_has, .ctx = &rc};
    clip_config cc;
    clip_config_sd15(&cc);
    clip_model *cm = NULL;
    MUST(!clip_load(&cc, &ws, &cm), "clip load: %s", easel_errmsg());
    /* transformers' CLIPTextModel(ViT-L/14 text): 196 tensors, 123,060,480 params */
    CHECK(rc.tensors == 196 && rc.params == 123060480, "clip: %lld tensors, %lld params",
          (long long)rc.tensors, (long long)rc.params);
    arena *ar = arena_create(be, 0);
    int32_t ids[77] = {49406, 320, 1929, 539, 518, 2232}; /* <bos> a photo of the room */
    for (int i = 6; i < 77; i++)
        ids[i] = 49407;
    tensor e, z, img;
    int64_t ne[3] = {1, 77, 768}, nz[4] = {1, 8, 8, 4}, ni[4] = {1, 64, 64, 3};
    MUST(!backend_tensor_alloc(be, &e, be->act_dtype, 3, ne), "alloc");
    CHECK(!clip_forward(cm, ar, ids, 1, 0, &e), "clip forward: %s", easel_errmsg());
    check_finite(&e, "sd15 clip");
    clip_free(cm);
    backend_tensor_free(be, &e);

    rc = (rand_ctx){0};
    vae_config vc;
    vae_config_sd15(&vc);
    vae_model *vm = NULL;
    MUST(!vae_load(&vc, &ws, &vm), "vae load: %s", easel_errmsg());
    /* diffusers' AutoencoderKL (SD): decoder + post_quant_conv, 140 tensors, 49,490,199 params */
    CHECK(rc.tensors == 140 && rc.params == 49490199, "vae: %lld tensors, %lld params",
          (long long)rc.tensors, (long long)rc.params);
    MUST(!backend_tensor_alloc(be, &z, be->act_dtype, 4, nz) &&
             !backend_tensor_alloc(be, &img, be->act_dtype, 4, ni),
         "alloc");
    float hz[256];
    unsigned long long s = 9;
    for (int i = 0; i < 256; i++)
        hz[i] = test_randf(&s, -0.2f, 0.2f);
    be->upload(be, &z, hz);
    CHECK(!vae_decode(vm, ar, &z, &img), "vae decode: %s", easel_errmsg());
    check_finite(&img, "sd15 vae");
    vae_free(vm);
    backend_tensor_free(be, &z);
    backend_tensor_free(be, &img);
    arena_free(ar);
}

int main(void) {
    be = backend_cpu_create(0);
    if (!be) {
        fprintf(stderr, "cpu backend: %s\n", easel_errmsg());
        return 1;
    }
    RUN(test_wstore_layouts);
    RUN(test_wstore_errors);
    RUN(test_clip_quick_gelu);
    RUN(test_clip_gelu);
    RUN(test_clip_bad_ids);
    RUN(test_unet_8x8);
    RUN(test_unet_odd_9x7);
    RUN(test_unet_config_refusals);
    RUN(test_unet_config_sd15_json);
    RUN(test_shape_errors);
    RUN(test_vae_decode);
    RUN(test_sd15_clip_vae);
    RUN(test_sd15_unet_8x8);
    backend_destroy(be);
    return test_summary();
}
