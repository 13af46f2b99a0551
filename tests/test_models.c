/* The networks (clip.c, unet.c, vae.c) against float64 diffusers/transformers
 * references on tiny random configs (tests/fixtures/models, made by
 * tools/fixtures_models.py: SD1.x-, SD2-, LCM- and SDXL-shaped), loaded the
 * way every model is (the loader's component store), the store's dtype and
 * layout conversions, and the full SD1.5 architectures on random weights at a
 * small size. */
#include "../engine/arena.h"
#include "../engine/safetensors.h"
#include "../models/clip.h"
#include "../models/loader.h"
#include "../models/unet.h"
#include "../models/vae.h"
#include "test.h"
#include "test_rand_weights.h"

#include <sys/stat.h>
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
    return test_read_file(path, NULL);
}

/* A fixture: a component folder opened by the loader, its weight store, its
 * config text, and io.safetensors with the in./out. tensors. */
typedef struct {
    char *json;
    sd_checkpoint *ck;
    wstore ws;
    st_file *st;
    sd_component c;
} fixture;

static int fixture_open(const char *name, sd_component c, fixture *fx) {
    char p[1024], q[128];
    fx->c = c;
    snprintf(q, sizeof q, "models/%s/config.json", name);
    fx->json = read_text(test_fixture(q, p, sizeof p));
    snprintf(q, sizeof q, "models/%s", name);
    test_fixture(q, p, sizeof p);
    if (!fx->json || sd_checkpoint_open_component(p, c, &fx->ck) ||
        sd_checkpoint_store(fx->ck, c, be, &fx->ws)) {
        fprintf(stderr, "  fixture %s: %s\n", name, easel_errmsg());
        return 0;
    }
    snprintf(q, sizeof q, "models/%s/io.safetensors", name);
    if (st_open(test_fixture(q, p, sizeof p), &fx->st)) {
        fprintf(stderr, "  fixture %s: %s\n", name, easel_errmsg());
        return 0;
    }
    return 1;
}

static void fixture_close(fixture *fx) {
    free(fx->json);
    sd_checkpoint_close(fx->ck);
    st_close(fx->st);
}

/* Every tensor of the fixture's weights file was asked for. */
static void check_all_used(fixture *fx, const char *name) {
    easel_err e = sd_checkpoint_check_unused(fx->ck, fx->c);
    CHECK(e == EASEL_OK, "%s: %s", name, easel_errmsg());
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

/* got against the fixture's tensor ref within TOL (rel L2); label names it. */
static void expect_ref(fixture *fx, const tensor *got, const char *ref, const char *label) {
    double err = compare(fx, got, ref);
    CHECK(err >= 0 && err <= TOL, "%s: rel L2 %.3g", label, err);
    if (getenv("TEST_VERBOSE")) printf("  %s: rel L2 %.3g\n", label, err);
}

/* ---- CLIP ---- */

static clip_model *load_clip(fixture *fx, clip_config *c) {
    clip_config_sd15(c);
    clip_model *m = NULL;
    if (clip_config_from_json(c, fx->json)) return NULL;
    /* the loader read the same config */
    const clip_config *lc = &sd_checkpoint_arch(fx->ck)->clip;
    if (memcmp(lc, c, sizeof *c)) return NULL;
    if (clip_load(c, &fx->ws, &m)) return NULL;
    return m;
}

/* SD1.x/2.x: the last hidden state and clip_skip 2, final layer norm applied. */
static void check_clip(const char *name) {
    fixture fx = {0};
    MUST(fixture_open(name, SD_TEXT, &fx), "fixture");
    clip_config c;
    clip_model *m = load_clip(&fx, &c);
    MUST(m, "load %s: %s", name, easel_errmsg());
    arena *ar = arena_create(be, 0);
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
        char label[96];
        snprintf(label, sizeof label, "%s skip %d", name, skip);
        expect_ref(&fx, &out, refs[skip], label);
    }
    CHECK(arena_used(ar) == 0, "arena released");
    check_all_used(&fx, name);
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
/* OpenCLIP ViT-H's layout as SD2 reads it: GELU, 64-wide heads, the folder
 * keeps all but the last layer (the reference is the 4-layer model's
 * final_layer_norm(hidden_states[-2])), padded with '!' (id 0). */
static void test_clip_sd2_penultimate(void) {
    check_clip("clip_sd2");
}

/* SDXL's reading: hidden_states[-2] and [-3] without the final layer norm;
 * the bigG-like encoder's projected pooled output (text_embeds). */
static void check_clip_xl(const char *name) {
    fixture fx = {0};
    MUST(fixture_open(name, SD_TEXT, &fx), "fixture");
    clip_config c;
    clip_model *m = load_clip(&fx, &c);
    MUST(m, "load %s: %s", name, easel_errmsg());
    arena *ar = arena_create(be, 0);
    const st_tensor *ids = st_find(fx.st, "in.ids");
    MUST(ids && ids->dtype == ST_I32 && ids->shape[1] == c.max_positions, "ids");
    int batch = (int)ids->shape[0], P = clip_pooled_dim(&c);
    tensor h, pooled;
    int64_t ne[3] = {batch, c.max_positions, c.hidden}, np[2] = {batch, P};
    MUST(!backend_tensor_alloc(be, &h, be->act_dtype, 3, ne) &&
             !backend_tensor_alloc(be, &pooled, be->act_dtype, 2, np),
         "alloc");
    int has_pooled = st_find(fx.st, "out.text_embeds") != NULL;
    CHECK(has_pooled == c.projection && (!c.projection || P == 48), "%s: projection %d dim %d",
          name, c.projection, P);
    const char *refs[2] = {"out.penultimate", "out.skip2"};
    for (int k = 0; k < 2; k++) {
        easel_err e = clip_encode(m, ar, ids->data, batch, c.layers - 1 - k, 0, &h,
                                  has_pooled && !k ? &pooled : NULL);
        CHECK(!e, "encode layer %d: %s", c.layers - 1 - k, easel_errmsg());
        char label[96];
        snprintf(label, sizeof label, "%s %s", name, refs[k]);
        expect_ref(&fx, &h, refs[k], label);
    }
    if (has_pooled) {
        char label[96];
        snprintf(label, sizeof label, "%s text_embeds", name);
        expect_ref(&fx, &pooled, "out.text_embeds", label);
    }
    CHECK(arena_used(ar) == 0, "arena released");
    check_all_used(&fx, name);
    backend_tensor_free(be, &h);
    backend_tensor_free(be, &pooled);
    clip_free(m);
    arena_free(ar);
    fixture_close(&fx);
}

static void test_clip_xl_vit_l(void) {
    check_clip_xl("clip_xl1");
}
static void test_clip_xl_bigg_pooled(void) {
    check_clip_xl("clip_xl2");
}

static void test_clip_bad_ids(void) {
    fixture fx = {0};
    MUST(fixture_open("clip_b", SD_TEXT, &fx), "fixture");
    clip_config c;
    clip_model *m = load_clip(&fx, &c);
    MUST(m, "load");
    arena *ar = arena_create(be, 0);
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

/* One step on the fixture's inputs: x, t, ctx, and what the model takes
 * besides (LCM's guidance embedding, SDXL's text_embeds + time ids, also
 * through a precomputed aug_emb). */
static void check_unet(const char *name) {
    fixture fx = {0};
    MUST(fixture_open(name, SD_UNET, &fx), "fixture");
    unet_config c;
    unet_config_sd15(&c);
    unet_model *m = NULL;
    arena *ar = arena_create(be, 0);
    MUST(!unet_config_from_json(&c, fx.json), "config: %s", easel_errmsg());
    CHECK(!memcmp(&c, &sd_checkpoint_arch(fx.ck)->unet, sizeof c), "the loader read the config");
    MUST(!unet_load(&c, &fx.ws, &m), "load: %s", easel_errmsg());
    const st_tensor *xi = st_find(fx.st, "in.x"), *ci = st_find(fx.st, "in.ctx");
    MUST(xi && ci && xi->ndim == 4 && ci->ndim == 3, "inputs");
    int64_t B = xi->shape[0];
    tensor x, ctx, y, aug = {0};
    MUST(fx_tensor(&fx, "in.x", &x, 4, xi->shape), "x");
    MUST(fx_tensor(&fx, "in.ctx", &ctx, 3, ci->shape), "ctx");
    int64_t nt = 0, nc = 0, nte = 0, nid = 0, nw = 0;
    float *t = fx_f32(&fx, "in.t", &nt), *cond = fx_f32(&fx, "in.cond", &nc);
    float *te = fx_f32(&fx, "in.text_embeds", &nte), *tid = fx_f32(&fx, "in.time_ids", &nid);
    float *w = fx_f32(&fx, "in.w", &nw);
    MUST(t && nt == B, "t");
    CHECK(!cond == !c.time_cond_proj_dim && !te == !c.add_text_time, "%s: inputs fit the config",
          name);
    CHECK(!te || (nte == B * unet_text_embeds_dim(&c) && nid == B * UNET_TIME_IDS),
          "text_time inputs");
    for (int64_t b = 0; w && b < nw; b++) { /* our guidance embedding = the LCM pipeline's */
        float mine[512];
        int d = c.time_cond_proj_dim;
        unet_guidance_embedding(w[b], d, mine);
        double err = test_rel_l2f(mine, cond + b * d, d);
        CHECK(d <= 512 && err <= 1e-6, "%s: guidance embedding of w=%g: rel %.3g", name, w[b], err);
    }
    int64_t ne[4] = {B, xi->shape[1], xi->shape[2], c.out_channels};
    MUST(!backend_tensor_alloc(be, &y, be->act_dtype, 4, ne), "alloc");
    unet_cond uc = {.timestep_cond = cond, .text_embeds = te, .time_ids = tid};
    easel_err e = unet_forward_ex(m, ar, &x, t, NULL, &uc, &ctx, &y);
    CHECK(!e, "forward: %s", easel_errmsg());
    expect_ref(&fx, &y, "out.y", name);
    if (te) { /* the same through the per-job aug_emb, as the pipeline runs it */
        int64_t na[2] = {B, unet_temb_dim(&c)};
        MUST(!backend_tensor_alloc(be, &aug, be->act_dtype, 2, na), "alloc");
        CHECK(!unet_aug_embedding(m, ar, te, tid, &aug), "aug: %s", easel_errmsg());
        unet_cond ua = {.aug_emb = &aug};
        CHECK(!unet_forward_ex(m, ar, &x, t, NULL, &ua, &ctx, &y), "forward: %s", easel_errmsg());
        double e2 = compare(&fx, &y, "out.y");
        CHECK(e2 >= 0 && e2 <= TOL, "%s via aug_emb: rel L2 %.3g", name, e2);
        /* a text_time model refuses to run without its added conditioning */
        CHECK(unet_forward(m, ar, &x, t, &ctx, &y) == EASEL_EINVAL &&
                  strstr(easel_errmsg(), "text_embeds"),
              "missing time ids refused: %s", easel_errmsg());
        backend_tensor_free(be, &aug);
    }
    CHECK(arena_used(ar) == 0, "arena released");
    check_all_used(&fx, name);
    free(t), free(cond), free(te), free(tid), free(w);
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
/* SD2.x: linear projections, per-level heads, 1024-wide cross-attention, upcast_attention */
static void test_unet_sd2(void) {
    check_unet("unet_sd2");
}
/* LCM: time_cond_proj_dim, the guidance embedding of LatentConsistencyModelPipeline */
static void test_unet_lcm_guidance_embedding(void) {
    check_unet("unet_lcm");
}
/* SDXL: no attention at the top, 1/2/3 transformer layers, text_time with two
 * different time-id rows, odd 9x7 latents */
static void test_unet_sdxl_time_ids(void) {
    check_unet("unet_xl");
}

static void test_unet_config_refusals(void) {
    unet_config c;
    unet_config_sd15(&c);
    static const char *bad[] = {"{\"class_embed_type\": \"timestep\"}",
                                "{\"only_cross_attention\": true}",
                                "{\"resnet_time_scale_shift\": \"scale_shift\"}",
                                "{\"down_block_types\": [\"SimpleCrossAttnDownBlock2D\"]}",
                                "{\"conv_in_kernel\": 7}",
                                "{\"transformer_layers_per_block\": [1, 2]}",
                                "{\"addition_embed_type\": \"text_image\"}",
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
    MUST(fixture_open("unet_b", SD_UNET, &fx), "fixture");
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
    MUST(fixture_open("unet_a", SD_UNET, &fx), "fixture");
    unet_config c;
    unet_config_sd15(&c);
    unet_model *m = NULL;
    MUST(!unet_config_from_json(&c, fx.json) && !unet_load(&c, &fx.ws, &m), "load: %s",
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
    sd_checkpoint *ck = NULL;
    CHECK(sd_checkpoint_open_component("/nonexistent/easel-unet", SD_UNET, &ck) ==
                  EASEL_ENOTFOUND &&
              !ck,
          "missing folder refused");
    CHECK(strstr(easel_errmsg(), "/nonexistent/easel-unet") != NULL, "names it: %s",
          easel_errmsg());
}

/* ---- VAE ---- */

static void check_vae(const char *name, int levels, float scaling, int upcast) {
    fixture fx = {0};
    MUST(fixture_open(name, SD_VAE, &fx), "fixture");
    vae_config c;
    vae_config_sd15(&c);
    vae_model *m = NULL;
    arena *ar = arena_create(be, 0);
    MUST(!vae_config_from_json(&c, fx.json), "config: %s", easel_errmsg());
    CHECK(c.levels == levels && fabsf(c.scaling_factor - scaling) < 1e-7f &&
              c.force_upcast == upcast,
          "%s config values: %d levels, scaling %g, force_upcast %d", name, c.levels,
          (double)c.scaling_factor, c.force_upcast);
    MUST(!vae_load(&c, &fx.ws, &m), "load: %s", easel_errmsg());
    CHECK(!vae_has_encoder(m), "%s holds a decoder only: loaded without an encoder", name);
    const st_tensor *zi = st_find(fx.st, "in.z");
    MUST(zi && zi->ndim == 4, "z");
    tensor z, img;
    MUST(fx_tensor(&fx, "in.z", &z, 4, zi->shape), "z upload");
    int64_t f = 1 << (c.levels - 1);
    int64_t ne[4] = {zi->shape[0], f * zi->shape[1], f * zi->shape[2], c.out_channels};
    MUST(!backend_tensor_alloc(be, &img, be->act_dtype, 4, ne), "alloc");
    CHECK(!vae_decode(m, ar, &z, &img), "decode: %s", easel_errmsg());
    expect_ref(&fx, &img, "out.img", name);
    CHECK(arena_used(ar) == 0, "arena released");
    check_all_used(&fx, name);
    backend_tensor_free(be, &z);
    backend_tensor_free(be, &img);
    vae_free(m);
    arena_free(ar);
    fixture_close(&fx);
}

static void test_vae_decode(void) {
    check_vae("vae_a", 3, 0.18215f, 1); /* force_upcast: AutoencoderKL's default */
    vae_config c;
    vae_config_sd15(&c);
    CHECK(vae_config_from_json(&c, "{\"use_post_quant_conv\": false}") == EASEL_EUNSUPPORTED,
          "refuses no post_quant_conv");
    CHECK(!vae_config_from_json(&c, "{\"force_upcast\": false}") && !c.force_upcast,
          "fp16-fix VAEs clear force_upcast");
}

/* SDXL's VAE: four levels, scaling factor 0.13025 (applied inside vae_decode) */
static void test_vae_sdxl(void) {
    check_vae("vae_xl", 4, 0.13025f, 1);
}

/* AutoencoderKL.encode's moments (mean, logvar) against float64 diffusers:
 * 3 levels at 20x14 (14 -> 7 -> 3 only with Downsample2D's bottom/right
 * padding) and SD's 4-level layout at 32x24. Tolerance 1e-5 rel L2 (fp32). */
static void check_vae_encode(const char *name) {
    fixture fx = {0};
    MUST(fixture_open(name, SD_VAE, &fx), "fixture");
    vae_config c;
    vae_config_sd15(&c);
    vae_model *m = NULL;
    arena *ar = arena_create(be, 0);
    MUST(!vae_config_from_json(&c, fx.json), "config: %s", easel_errmsg());
    MUST(!vae_load(&c, &fx.ws, &m), "load: %s", easel_errmsg());
    CHECK(vae_has_encoder(m), "%s: the encoder was loaded", name);
    const st_tensor *xi = st_find(fx.st, "in.img"), *mo = st_find(fx.st, "out.moments");
    MUST(xi && xi->ndim == 4 && mo && mo->ndim == 4, "io");
    tensor x, mom;
    MUST(fx_tensor(&fx, "in.img", &x, 4, xi->shape), "img upload");
    MUST(!backend_tensor_alloc(be, &mom, be->act_dtype, 4, mo->shape), "alloc");
    CHECK(!vae_encode(m, ar, &x, &mom), "encode: %s", easel_errmsg());
    double err = compare(&fx, &mom, "out.moments");
    CHECK(err >= 0 && err <= 1e-5, "%s: encoder moments rel L2 %.3g > 1e-5", name, err);
    if (getenv("TEST_VERBOSE")) printf("  %s: encoder rel L2 %.3g\n", name, err);
    CHECK(arena_used(ar) == 0, "arena released");
    check_all_used(&fx, name);
    /* a wrong moments shape (symmetric padding's size) is refused, not overrun */
    tensor bad;
    int64_t nb[4] = {mo->shape[0], mo->shape[1], mo->shape[2] + 1, mo->shape[3]};
    MUST(!backend_tensor_alloc(be, &bad, be->act_dtype, 4, nb), "alloc");
    CHECK(vae_encode(m, ar, &x, &bad) == EASEL_EINVAL, "wrong moments shape refused");
    backend_tensor_free(be, &bad);
    backend_tensor_free(be, &x);
    backend_tensor_free(be, &mom);
    vae_free(m);
    arena_free(ar);
    fixture_close(&fx);
}

static void test_vae_encode(void) {
    check_vae_encode("vae_enc");
    check_vae_encode("vae_enc4");
    vae_config c;
    vae_config_sd15(&c);
    CHECK(vae_config_from_json(&c, "{\"use_quant_conv\": false}") == EASEL_EUNSUPPORTED,
          "refuses no quant_conv");
    CHECK(vae_config_from_json(&c, "{\"down_block_types\": [\"DownBlock2D\"]}") ==
              EASEL_EUNSUPPORTED,
          "refuses other down blocks");
}

/* ---- the loader's component store ---- */

static void test_component_store_errors(void) {
    fixture fx = {0};
    MUST(fixture_open("vae_a", SD_VAE, &fx), "fixture");
    tensor t;
    int64_t s1[1] = {17};
    easel_err e = fx.ws.get(&fx.ws, "decoder.conv_out.bias", 1, s1, WL_PLAIN, &t);
    CHECK(e == EASEL_EFORMAT, "wrong shape refused");
    CHECK(strstr(easel_errmsg(), "decoder.conv_out.bias") && strstr(easel_errmsg(), "[17]") &&
              strstr(easel_errmsg(), "[3]"),
          "message names tensor and shapes: %s", easel_errmsg());
    e = fx.ws.get(&fx.ws, "decoder.nope.weight", 1, s1, WL_PLAIN, &t);
    CHECK(e == EASEL_ENOTFOUND && strstr(easel_errmsg(), "decoder.nope.weight"), "missing: %s",
          easel_errmsg());
    CHECK(fx.ws.has(&fx.ws, "decoder.conv_out.bias") && !fx.ws.has(&fx.ws, "nope"), "has");
    /* a component checkpoint serves only its component */
    wstore other;
    CHECK(sd_checkpoint_store(fx.ck, SD_UNET, be, &other) == EASEL_EINVAL, "other component");
    CHECK(sd_checkpoint_check_unused(fx.ck, SD_VAE) == EASEL_EFORMAT &&
              strstr(easel_errmsg(), "decoder.conv_in.weight"),
          "never-requested tensors are named: %s", easel_errmsg());
    fixture_close(&fx);
}

/* The store converts OIHW -> OHWI, F16/BF16 -> f32 and conv-as-linear shapes. */
static void test_component_store_layouts(void) {
    float w[2 * 3 * 2 * 2];
    uint16_t h[6], b16[6];
    for (int i = 0; i < 24; i++)
        w[i] = (float)i - 5.5f;
    for (int i = 0; i < 6; i++)
        h[i] = f32_to_f16(0.25f * i), b16[i] = f32_to_bf16(-1.5f * i);
    int64_t sw[4] = {2, 3, 2, 2}, sl[4] = {3, 2, 1, 1}, sh[2] = {2, 3};
    char dir[256], path[300];
    snprintf(dir, sizeof dir, "/tmp/easel_test_models_%d", (int)getpid());
    MUST(mkdir(dir, 0700) == 0, "mkdir %s", dir);
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", dir);
    st_writer *wr = st_writer_create();
    MUST(wr, "writer");
    MUST(!st_writer_add(wr, "conv", ST_F32, 4, sw, w) &&
             !st_writer_add(wr, "lin", ST_F16, 4, sl, h) &&
             !st_writer_add(wr, "b16", ST_BF16, 2, sh, b16) && !st_writer_save(wr, path),
         "write: %s", easel_errmsg());
    st_writer_free(wr);
    sd_checkpoint *ck = NULL;
    wstore ws;
    MUST(!sd_checkpoint_open_component(dir, SD_UNET, &ck) &&
             !sd_checkpoint_store(ck, SD_UNET, be, &ws),
         "open: %s", easel_errmsg());
    tensor c, l, b;
    float got[24];
    MUST(!ws.get(&ws, "conv", 4, sw, WL_CONV, &c), "conv: %s", easel_errmsg());
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
    MUST(!ws.get(&ws, "lin", 2, want_l, WL_CONV_AS_LINEAR, &l), "lin: %s", easel_errmsg());
    CHECK(l.ndim == 2 && l.ne[0] == 3 && l.ne[1] == 2, "conv as linear shape");
    be->download(be, &l, got);
    for (int i = 0; i < 6; i++)
        CHECK(got[i] == 0.25f * i, "f16 value %d: %g", i, got[i]);
    MUST(!ws.get(&ws, "b16", 2, sh, WL_PLAIN, &b), "b16: %s", easel_errmsg());
    be->download(be, &b, got);
    for (int i = 0; i < 6; i++)
        CHECK(got[i] == -1.5f * i, "bf16 value %d: %g", i, got[i]);
    CHECK(sd_checkpoint_check_unused(ck, SD_UNET) == EASEL_OK, "all used: %s", easel_errmsg());
    CHECK(ws.bytes_loaded == tensor_nbytes(&c) + tensor_nbytes(&l) + tensor_nbytes(&b), "bytes");
    backend_tensor_free(be, &c);
    backend_tensor_free(be, &l);
    backend_tensor_free(be, &b);
    sd_checkpoint_close(ck);
    unlink(path);
    rmdir(dir);
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
    int64_t n;
    float *d = test_rand_weights(name, ndim, shape, &n);
    if (!d) return easel_seterr(EASEL_ENOMEM, "oom");
    easel_err e = wstore_upload(ws, name, d, ndim, shape, ndim, shape, layout, out);
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
    /* diffusers' AutoencoderKL (SD), the whole of it: 248 tensors, 83,653,863 params (the
     * encoder and quant_conv 108 and 34,163,664 of them) */
    CHECK(rc.tensors == 248 && rc.params == 83653863, "vae: %lld tensors, %lld params",
          (long long)rc.tensors, (long long)rc.params);
    CHECK(vae_has_encoder(vm), "sd15 vae encoder");
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
    RUN(test_component_store_layouts);
    RUN(test_component_store_errors);
    RUN(test_clip_quick_gelu);
    RUN(test_clip_gelu);
    RUN(test_clip_sd2_penultimate);
    RUN(test_clip_xl_vit_l);
    RUN(test_clip_xl_bigg_pooled);
    RUN(test_clip_bad_ids);
    RUN(test_unet_8x8);
    RUN(test_unet_odd_9x7);
    RUN(test_unet_sd2);
    RUN(test_unet_lcm_guidance_embedding);
    RUN(test_unet_sdxl_time_ids);
    RUN(test_unet_config_refusals);
    RUN(test_unet_config_sd15_json);
    RUN(test_shape_errors);
    RUN(test_vae_decode);
    RUN(test_vae_sdxl);
    RUN(test_vae_encode);
    RUN(test_sd15_clip_vae);
    RUN(test_sd15_unet_8x8);
    backend_destroy(be);
    return test_summary();
}
