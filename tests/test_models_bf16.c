/* The networks and the pipeline on the CPU's bf16 path against fp32: each
 * network (CLIP, UNet, VAE decoder and encoder) on the diffusers float64 fixtures
 * (tests/fixtures/models) and on the full SD1.5 architectures with random
 * weights; the tiny txt2img pipeline at 64² (tests/fixtures/pipeline, the
 * diffusers fp32 cases) as a PSNR of the decoded image; and the weight hook
 * that the loader runs for every tensor.
 * Stated tolerances (bf16 rounds each GEMM operand to 8 significant bits,
 * ~2e-3 relative; over a network these add up):
 *   fixture networks: rel L2 vs fp32 and vs the diffusers reference <= 2e-2;
 *   SD1.5 random weights: CLIP last hidden state and the UNet's noise
 *     prediction rel L2 vs fp32 <= 3e-2, VAE decoder <= 2e-2;
 *   tiny pipeline 64², 4 steps: PSNR of the bf16 image vs the fp32 image and
 *     vs diffusers' >= 30 dB.
 * The measured figures are printed; skipped where the CPU has no bf16. */
#include <math.h>
#include <stdint.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "../engine/arena.h"
#include "../engine/safetensors.h"
#include "../models/clip.h"
#include "../models/loader.h"
#include "../models/pipeline.h"
#include "../models/scheduler.h"
#include "../models/unet.h"
#include "../models/vae.h"
#include "test.h"
#include "test_rand_weights.h"

#define MUST(expr, ...)                                                                            \
    do {                                                                                           \
        int ok_ = !!(expr);                                                                        \
        CHECK(ok_ &&#expr, __VA_ARGS__);                                                           \
        if (!ok_) return;                                                                          \
    } while (0)

static backend *g_f32, *g_bf16;
static char tmpdir[256];

/* ------------------------------------------------------------ helpers */

static char *read_all(const char *path, size_t *len) {
    return test_read_file(path, len);
}

/* A tensor of shape ne on be, filled from host data. */
static int up(backend *be, tensor *t, int ndim, const int64_t *ne, const float *h) {
    return !backend_tensor_alloc(be, t, be->act_dtype, ndim, ne) && !be->upload(be, t, h);
}

static float *down(backend *be, const tensor *t) {
    float *h = malloc(sizeof(float) * (size_t)tensor_nelem(t));
    if (h && be->download(be, t, h)) {
        free(h);
        return NULL;
    }
    return h;
}

/* PSNR (dB) of two 8-bit images. */
static double psnr(const uint8_t *a, const uint8_t *b, long n) {
    double se = 0;
    for (long i = 0; i < n; i++)
        se += (double)(a[i] - b[i]) * (a[i] - b[i]);
    return se == 0 ? INFINITY : 10 * log10(255.0 * 255.0 * n / se);
}

/* ---------------------------------------------------- fixture networks */

typedef struct {
    char *json;
    st_file *st; /* io.safetensors */
    st_file *w;  /* the weights */
    char path[512];
} fixture;

static int fixture_open(const char *name, fixture *fx) {
    char q[128], p[512];
    /* models/NAME/: config.json, model.safetensors (the weights, diffusers'
     * names), io.safetensors (inputs and diffusers' outputs) */
    snprintf(q, sizeof q, "models/%s/config.json", name);
    fx->json = read_all(test_fixture(q, p, sizeof p), NULL);
    snprintf(q, sizeof q, "models/%s/model.safetensors", name);
    test_fixture(q, fx->path, sizeof fx->path);
    if (access(fx->path, R_OK)) { /* a UNet's or VAE's */
        snprintf(q, sizeof q, "models/%s/diffusion_pytorch_model.safetensors", name);
        test_fixture(q, fx->path, sizeof fx->path);
    }
    snprintf(q, sizeof q, "models/%s/io.safetensors", name);
    return fx->json && !st_open(test_fixture(q, p, sizeof p), &fx->st) &&
           !st_open(fx->path, &fx->w);
}

static void fixture_close(fixture *fx) {
    free(fx->json);
    st_close(fx->st);
    st_close(fx->w);
}

static float *st_f32(st_file *st, const char *name, int64_t *n) {
    const st_tensor *t = st_find(st, name);
    if (!t) return NULL;
    *n = st_nelem(t);
    float *d = malloc(sizeof(float) * (size_t)*n);
    if (d && st_read_f32(st, t, d)) {
        free(d);
        return NULL;
    }
    return d;
}

static float *fx_f32(fixture *fx, const char *name, int64_t *n) {
    return st_f32(fx->st, name, n);
}

typedef enum { NET_CLIP, NET_UNET, NET_VAE, NET_VAE_ENC } net_kind;

/* Runs fixture `name` (a network of kind k) on be; its output in *out (host). */
static easel_err run_fixture(backend *be, fixture *fx, net_kind k, float **out, int64_t *n) {
    const char *paths[1] = {fx->path};
    wstore *ws = NULL;
    arena *ar = arena_create(be, 0);
    easel_err e = ar ? wstore_st_open(be, paths, 1, NULL, NULL, NULL, &ws) : EASEL_ENOMEM;
    tensor a = {0}, b = {0}, y = {0};
    float *ha = NULL, *hb = NULL, *ht = NULL;
    int64_t na, nb, nt;
    if (!e && k == NET_CLIP) {
        clip_config c;
        clip_config_sd15(&c);
        clip_model *m = NULL;
        const st_tensor *ids = st_find(fx->st, "in.ids");
        int64_t ne[3] = {ids ? ids->shape[0] : 0, c.max_positions, c.hidden};
        if (!(e = clip_config_from_json(&c, fx->json)) && !(e = clip_load(&c, ws, &m))) {
            ne[1] = c.max_positions, ne[2] = c.hidden;
            e = backend_tensor_alloc(be, &y, be->act_dtype, 3, ne);
            if (!e) e = clip_forward(m, ar, ids->data, (int)ne[0], 0, &y);
        }
        clip_free(m);
    } else if (!e && k == NET_UNET) {
        unet_config c;
        unet_config_sd15(&c);
        unet_model *m = NULL;
        const st_tensor *xi = st_find(fx->st, "in.x"), *ci = st_find(fx->st, "in.ctx");
        ha = fx_f32(fx, "in.x", &na), hb = fx_f32(fx, "in.ctx", &nb), ht = fx_f32(fx, "in.t", &nt);
        if (!(e = unet_config_from_json(&c, fx->json)) && !(e = unet_load(&c, ws, &m))) {
            int64_t ne[4] = {xi->shape[0], xi->shape[1], xi->shape[2], c.out_channels};
            if (!up(be, &a, 4, xi->shape, ha) || !up(be, &b, 3, ci->shape, hb) ||
                backend_tensor_alloc(be, &y, be->act_dtype, 4, ne))
                e = EASEL_ENOMEM;
            if (!e) e = unet_forward(m, ar, &a, ht, &b, &y);
        }
        unet_free(m);
    } else if (!e && k == NET_VAE) {
        vae_config c;
        vae_config_sd15(&c);
        vae_model *m = NULL;
        const st_tensor *zi = st_find(fx->st, "in.z");
        ha = fx_f32(fx, "in.z", &na);
        if (!(e = vae_config_from_json(&c, fx->json)) && !(e = vae_load(&c, ws, &m))) {
            int64_t f = 1 << (c.levels - 1);
            int64_t ne[4] = {zi->shape[0], f * zi->shape[1], f * zi->shape[2], c.out_channels};
            if (!up(be, &a, 4, zi->shape, ha) || backend_tensor_alloc(be, &y, be->act_dtype, 4, ne))
                e = EASEL_ENOMEM;
            if (!e) e = vae_decode(m, ar, &a, &y);
        }
        vae_free(m);
    } else if (!e && k == NET_VAE_ENC) {
        vae_config c;
        vae_config_sd15(&c);
        vae_model *m = NULL;
        const st_tensor *xi = st_find(fx->st, "in.img"), *mo = st_find(fx->st, "out.moments");
        ha = fx_f32(fx, "in.img", &na);
        if (!xi || !mo || !ha)
            e = easel_seterr(EASEL_EFORMAT, "fixture: no in.img / out.moments");
        else if (!(e = vae_config_from_json(&c, fx->json)) && !(e = vae_load(&c, ws, &m))) {
            if (!up(be, &a, 4, xi->shape, ha) ||
                backend_tensor_alloc(be, &y, be->act_dtype, 4, mo->shape))
                e = EASEL_ENOMEM;
            if (!e) e = vae_encode(m, ar, &a, &y);
        }
        vae_free(m);
    }
    if (!e) {
        *n = tensor_nelem(&y);
        if (!(*out = down(be, &y))) e = EASEL_ENOMEM;
    }
    backend_tensor_free(be, &a), backend_tensor_free(be, &b), backend_tensor_free(be, &y);
    free(ha), free(hb), free(ht);
    wstore_st_close(ws);
    arena_free(ar);
    return e;
}

static void check_fixture(const char *name, net_kind k, const char *ref_name) {
    fixture fx = {0};
    MUST(fixture_open(name, &fx), "fixture %s", name);
    float *f = NULL, *b = NULL;
    int64_t nf = 0, nb = 0, nr = 0;
    easel_err e = run_fixture(g_f32, &fx, k, &f, &nf);
    CHECK(!e, "%s fp32: %s", name, easel_errmsg());
    e = e ? e : run_fixture(g_bf16, &fx, k, &b, &nb);
    CHECK(!e, "%s bf16: %s", name, easel_errmsg());
    float *ref = fx_f32(&fx, ref_name, &nr);
    if (!e && ref && nf == nb && nr == nb) {
        double vs32 = test_rel_l2f(b, f, (long)nb), vsref = test_rel_l2f(b, ref, (long)nb);
        printf("  %-8s bf16 rel L2: vs fp32 %.2e, vs diffusers %.2e (fp32 vs diffusers %.2e)\n",
               name, vs32, vsref, test_rel_l2f(f, ref, (long)nb));
        CHECK(vs32 <= 2e-2 && vsref <= 2e-2, "%s: bf16 rel L2 %.3g vs fp32, %.3g vs diffusers",
              name, vs32, vsref);
    } else if (!e) {
        CHECK(0, "%s: output sizes %lld %lld %lld", name, (long long)nf, (long long)nb,
              (long long)nr);
    }
    free(f), free(b), free(ref);
    fixture_close(&fx);
}

static void test_fixture_clip(void) {
    check_fixture("clip_a", NET_CLIP, "out.last_hidden_state");
    check_fixture("clip_b", NET_CLIP, "out.last_hidden_state");
}
static void test_fixture_unet(void) {
    check_fixture("unet_a", NET_UNET, "out.y");
    check_fixture("unet_b", NET_UNET, "out.y");
}
static void test_fixture_vae(void) {
    check_fixture("vae_a", NET_VAE, "out.img");
}
/* the VAE encoder (img2img, inpainting): its convs, Downsample2D's pad2d and
 * stride-2 convs through the bf16 path, moments vs fp32 and diffusers */
static void test_fixture_vae_encode(void) {
    check_fixture("vae_enc", NET_VAE_ENC, "out.moments");
    check_fixture("vae_enc4", NET_VAE_ENC, "out.moments");
}

/* ------------------------------------------- SD1.5 with random weights */

/* A store of deterministic random weights by name (fan-in scaled, norms
 * around 1), uploaded through wstore_upload: the dtype rule applies. */
typedef struct {
    int tensors, bf16, mats; /* mats: tensors of 2+ dims in our layout */
} rand_ctx;

static easel_err rand_get(wstore *ws, const char *name, int ndim, const int64_t *shape,
                          weight_layout layout, tensor *out) {
    rand_ctx *rc = ws->ctx;
    int64_t n;
    float *d = test_rand_weights(name, ndim, shape, &n);
    if (!d) return easel_seterr(EASEL_ENOMEM, "oom");
    easel_err e = wstore_upload(ws, name, d, ndim, shape, ndim, shape, layout, out);
    free(d);
    if (!e) rc->tensors++, rc->bf16 += out->dt == DT_BF16, rc->mats += out->ndim >= 2;
    return e;
}

static int rand_has(wstore *ws, const char *name) {
    (void)ws, (void)name;
    return 1;
}

/* UNet noise prediction at an 8x8 latent, CFG batch 2 (host output). */
static float *sd15_unet(backend *be, int *bf16_tensors, int *mats) {
    rand_ctx rc = {0};
    wstore ws = {.be = be, .get = rand_get, .has = rand_has, .ctx = &rc};
    unet_config c;
    unet_config_sd15(&c);
    unet_model *m = NULL;
    float *out = NULL, *hx = malloc(sizeof(float) * 2 * 77 * 768);
    arena *ar = arena_create(be, 0);
    tensor x = {0}, ctx = {0}, y = {0};
    int64_t nx[4] = {2, 8, 8, 4}, nc[3] = {2, 77, 768};
    unsigned long long s = 7;
    for (int i = 0; hx && i < 2 * 77 * 768; i++)
        hx[i] = test_randf(&s, -1, 1);
    float t[2] = {500, 500};
    if (hx && ar && !unet_load(&c, &ws, &m) && up(be, &x, 4, nx, hx) && up(be, &ctx, 3, nc, hx) &&
        !backend_tensor_alloc(be, &y, be->act_dtype, 4, nx) &&
        !unet_forward(m, ar, &x, t, &ctx, &y))
        out = down(be, &y);
    *bf16_tensors = rc.bf16, *mats = rc.mats;
    backend_tensor_free(be, &x), backend_tensor_free(be, &ctx), backend_tensor_free(be, &y);
    unet_free(m);
    arena_free(ar);
    free(hx);
    return out;
}

static void test_sd15_unet(void) {
    int b32 = 0, b16 = 0, mats = 0;
    float *f = sd15_unet(g_f32, &b32, &mats);
    REQUIRE(f, "fp32 unet: %s", easel_errmsg());
    float *b = sd15_unet(g_bf16, &b16, &mats);
    REQUIRE(b, "bf16 unet: %s", easel_errmsg());
    double e = test_rel_l2f(b, f, 2 * 8 * 8 * 4);
    printf("  sd15 unet (random weights, 8x8 latent, CFG batch): bf16 vs fp32 rel L2 %.2e; "
           "%d bf16 tensors\n",
           e, b16);
    /* every matrix (the UNet has no position table) in bf16, nothing else */
    CHECK(b32 == 0 && b16 == mats && mats > 0, "weights in bf16: %d on fp32, %d of %d on bf16", b32,
          b16, mats);
    CHECK(e <= 3e-2, "unet: bf16 rel L2 %.3g vs fp32", e);
    free(f), free(b);
}

/* CLIP-L last hidden state for one prompt's ids, and the VAE decoder of a
 * 16x16 latent (host outputs). */
static void sd15_clip_vae(backend *be, float **clip_out, float **vae_out) {
    rand_ctx rc = {0};
    wstore ws = {.be = be, .get = rand_get, .has = rand_has, .ctx = &rc};
    clip_config cc;
    clip_config_sd15(&cc);
    vae_config vc;
    vae_config_sd15(&vc);
    clip_model *cm = NULL;
    vae_model *vm = NULL;
    arena *ar = arena_create(be, 0);
    tensor h = {0}, z = {0}, img = {0};
    int32_t ids[77];
    for (int i = 0; i < 77; i++)
        ids[i] = i == 0 ? 49406 : i < 12 ? 320 + 37 * i : 49407;
    int64_t nh[3] = {1, 77, 768}, nz[4] = {1, 16, 16, 4}, ni[4] = {1, 128, 128, 3};
    float hz[1024];
    unsigned long long s = 9;
    for (int i = 0; i < 1024; i++)
        hz[i] = test_randf(&s, -1.5f, 1.5f);
    *clip_out = *vae_out = NULL;
    if (ar && !clip_load(&cc, &ws, &cm) && !backend_tensor_alloc(be, &h, be->act_dtype, 3, nh) &&
        !clip_forward(cm, ar, ids, 1, 0, &h))
        *clip_out = down(be, &h);
    clip_free(cm);
    if (ar && !vae_load(&vc, &ws, &vm) && up(be, &z, 4, nz, hz) &&
        !backend_tensor_alloc(be, &img, be->act_dtype, 4, ni) && !vae_decode(vm, ar, &z, &img))
        *vae_out = down(be, &img);
    vae_free(vm);
    backend_tensor_free(be, &h), backend_tensor_free(be, &z), backend_tensor_free(be, &img);
    arena_free(ar);
}

static void test_sd15_clip_vae(void) {
    float *cf, *vf, *cb, *vb;
    sd15_clip_vae(g_f32, &cf, &vf);
    sd15_clip_vae(g_bf16, &cb, &vb);
    REQUIRE(cf && vf && cb && vb, "sd15 clip/vae: %s", easel_errmsg());
    double ec = test_rel_l2f(cb, cf, 77 * 768), ev = test_rel_l2f(vb, vf, 128 * 128 * 3);
    printf("  sd15 clip (random weights): bf16 vs fp32 rel L2 %.2e; vae decode 128x128: %.2e\n", ec,
           ev);
    CHECK(ec <= 3e-2, "clip: bf16 rel L2 %.3g vs fp32", ec);
    CHECK(ev <= 2e-2, "vae: bf16 rel L2 %.3g vs fp32", ev);
    free(cf), free(vf), free(cb), free(vb);
}

/* ------------------------------------------------------ tiny pipeline */

static void test_tiny_pipeline_psnr(void) {
    char dir[300], path[512];
    snprintf(dir, sizeof dir, "%s/tiny", tmpdir);
    sd_arch a;
    sd_arch_tiny(&a);
    REQUIRE(!sd_make_model(&a, DT_F32, 0, dir), "make-model: %s", easel_errmsg());
    sd_model *m32 = NULL, *m16 = NULL;
    sd_worker *w32 = NULL, *w16 = NULL;
    REQUIRE(!sd_model_load(dir, g_f32, &m32) && !sd_worker_create(m32, g_f32, &w32) &&
                !sd_model_load(dir, g_bf16, &m16) && !sd_worker_create(m16, g_bf16, &w16),
            "load: %s", easel_errmsg());
    char *text = read_all(test_fixture("pipeline/cases.json", path, sizeof path), NULL);
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    const cJSON *cases = cJSON_GetObjectItemCaseSensitive(root, "cases"), *c;
    if (!cases) cases = root;
    REQUIRE(cJSON_IsArray(cases), "pipeline/cases.json");
    double worst32 = INFINITY, worstref = INFINITY;
    cJSON_ArrayForEach(c, cases) {
        gen_params p;
        gen_params_default(&p);
        const cJSON *v;
#define JS(k)                                                                                      \
    ((v = cJSON_GetObjectItemCaseSensitive(c, k)) && cJSON_IsString(v) ? v->valuestring : "")
#define JN(k)                                                                                      \
    ((v = cJSON_GetObjectItemCaseSensitive(c, k)) && cJSON_IsNumber(v) ? v->valuedouble : 0)
        const char *name = JS("name");
        p.prompt = JS("prompt"), p.negative_prompt = JS("negative_prompt");
        p.sampler = sampler_parse(JS("sampler"));
        p.steps = (int)JN("steps"), p.guidance = (float)JN("guidance");
        p.seed = (uint64_t)JN("seed"), p.eta = (float)JN("eta");
        p.width = (int)JN("width"), p.height = (int)JN("height");
        char fx[300];
        snprintf(fx, sizeof fx, "pipeline/%s.bin", name);
        size_t len = 0;
        char *ref = read_all(test_fixture(fx, path, sizeof path), &len);
        long nlat = 4L * (p.height / 8) * (p.width / 8), npx = 3L * p.width * p.height;
        uint8_t *r32 = NULL, *r16 = NULL;
        gen_timings tm;
        easel_err e = sd_generate(w32, &p, NULL, NULL, &r32, &tm);
        if (!e) e = sd_generate(w16, &p, NULL, NULL, &r16, &tm);
        CHECK(!e && ref && len == (size_t)(nlat * 4 + npx), "%s: %s", name, easel_errmsg());
        if (!e && ref && len == (size_t)(nlat * 4 + npx)) {
            double p32 = psnr(r16, r32, npx), pref = psnr(r16, (uint8_t *)ref + nlat * 4, npx);
            printf(
                "  tiny %-16s 64x64, %d steps: bf16 PSNR vs fp32 %.1f dB, vs diffusers %.1f dB\n",
                name, p.steps, p32, pref);
            worst32 = fmin(worst32, p32), worstref = fmin(worstref, pref);
        }
        free(r32), free(r16), free(ref);
    }
#undef JS
#undef JN
    CHECK(worst32 >= 30 && worstref >= 30, "tiny pipeline PSNR: %.1f dB vs fp32, %.1f vs diffusers",
          worst32, worstref);
    cJSON_Delete(root);
    free(text);
    sd_worker_free(w32), sd_worker_free(w16);
    sd_model_free(m32), sd_model_free(m16);
}

/* ------------------------------------------------------ the weight hook */

typedef struct {
    int calls, pos_emb, scaled, bf16;
    easel_err fail_on; /* 0: never */
    const char *fail_name;
} hook_ctx;

/* Doubles every bias, keeps the time embedding's linear_1 in f32, records. */
static easel_err test_hook(void *ctx, wstore_tensor *t) {
    hook_ctx *h = ctx;
    h->calls++;
    if (h->fail_name && strstr(t->name, h->fail_name))
        return easel_seterr(h->fail_on, "hook refused %s", t->name);
    if (strstr(t->name, "position_embedding")) h->pos_emb += t->dt == DT_F32;
    if (t->ndim == 1 && strstr(t->name, ".bias")) {
        int64_t n = t->ne[0];
        for (int64_t i = 0; i < n; i++)
            t->data[i] *= 2;
        h->scaled++;
    }
    if (strstr(t->name, "time_embedding.linear_1.weight")) t->dt = DT_F32;
    h->bf16 += t->dt == DT_BF16;
    return EASEL_OK;
}

static void test_weight_hook(void) {
    fixture fx = {0};
    MUST(fixture_open("clip_a", &fx), "fixture");
    const char *paths[1] = {fx.path};
    wstore *ws = NULL;
    MUST(!wstore_st_open(g_bf16, paths, 1, NULL, NULL, NULL, &ws), "open: %s", easel_errmsg());
    hook_ctx h = {0};
    ws->hook = test_hook, ws->hook_ctx = &h;
    clip_config c;
    clip_config_sd15(&c);
    clip_model *m = NULL;
    MUST(!clip_config_from_json(&c, fx.json) && !clip_load(&c, ws, &m), "load: %s", easel_errmsg());
    /* every tensor went through the hook; matrices in bf16, the position table in f32 */
    CHECK(h.calls > 10 && h.pos_emb == 1 && h.scaled > 5 && h.bf16 > 5,
          "hook: %d calls, pos_emb f32 %d, %d biases, %d bf16", h.calls, h.pos_emb, h.scaled,
          h.bf16);
    /* the hook changed the values that were uploaded, not the file */
    tensor b;
    int64_t nb[1] = {c.hidden};
    float *got = malloc(sizeof(float) * (size_t)c.hidden), *want = NULL;
    int64_t n = 0;
    const char *bn = "text_model.final_layer_norm.bias";
    want = st_f32(fx.w, bn, &n);
    MUST(!ws->get(ws, bn, 1, nb, WL_PLAIN, &b) && !g_bf16->download(g_bf16, &b, got) && want,
         "get %s: %s", bn, easel_errmsg());
    int bad = 0;
    for (int i = 0; i < c.hidden; i++)
        bad += got[i] != 2 * want[i];
    CHECK(bad == 0, "hook's doubling not in the uploaded bias: %d values differ", bad);
    backend_tensor_free(g_bf16, &b);
    free(got), free(want);
    /* a hook error fails the load and names the tensor */
    h.fail_name = "final_layer_norm.weight", h.fail_on = EASEL_EFORMAT;
    tensor t;
    CHECK(ws->get(ws, "text_model.final_layer_norm.weight", 1, nb, WL_PLAIN, &t) == EASEL_EFORMAT &&
              strstr(easel_errmsg(), "final_layer_norm"),
          "hook error: %s", easel_errmsg());
    clip_free(m);
    wstore_st_close(ws);
    fixture_close(&fx);
}

static void test_dtype_rule(void) {
    CHECK(wstore_dtype(g_bf16, "x.weight", 2) == DT_BF16, "linear weight -> bf16");
    CHECK(wstore_dtype(g_bf16, "x.weight", 4) == DT_BF16, "conv weight -> bf16");
    CHECK(wstore_dtype(g_bf16, "x.bias", 1) == DT_F32, "bias -> f32");
    CHECK(wstore_dtype(g_bf16, "a.position_embedding.weight", 2) == DT_F32, "positions -> f32");
    CHECK(wstore_dtype(g_f32, "x.weight", 2) == DT_F32, "fp32 backend: f32");
}

int main(void) {
    g_f32 = backend_cpu_create(0);
    g_bf16 = backend_cpu_create_prec(0, PREC_BF16);
    if (!g_f32) return fprintf(stderr, "cpu backend: %s\n", easel_errmsg()), 1;
    if (!g_bf16) {
        printf("  skipped: this CPU has neither AMX-BF16 nor AVX512-BF16 (%s)\n", easel_errmsg());
        test_skipped_++;
        backend_destroy(g_f32);
        return test_summary();
    }
    snprintf(tmpdir, sizeof tmpdir, "/tmp/easel-test-bf16-XXXXXX");
    if (!mkdtemp(tmpdir)) return perror("mkdtemp"), 1;
    RUN(test_dtype_rule);
    RUN(test_weight_hook);
    RUN(test_fixture_clip);
    RUN(test_fixture_unet);
    RUN(test_fixture_vae);
    RUN(test_fixture_vae_encode);
    RUN(test_tiny_pipeline_psnr);
    RUN(test_sd15_clip_vae);
    RUN(test_sd15_unet);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd)) fprintf(stderr, "cannot remove %s\n", tmpdir);
    backend_destroy(g_bf16);
    backend_destroy(g_f32);
    return test_summary();
}
