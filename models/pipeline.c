/* txt2img as diffusers' StableDiffusionPipeline.__call__ runs it: prompt and
 * negative prompt through CLIP, seeded NCHW noise, a sampler loop with
 * classifier-free guidance (batch [uncond, cond], skipped when guidance <= 1),
 * VAE decode, (x/2+0.5).clamp(0,1)·255 rounded. Weights are shared; each
 * worker owns a backend and an arena that is reset per job. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../engine/log.h"
#include "../engine/rng.h"
#include "loader.h"
#include "pipeline.h"
#include "sampler.h"
#include "tokenizer.h"

#define SEQ 77

struct sd_model {
    backend *be;
    sd_arch arch;
    unet_model *unet;
    vae_model *vae;
    clip_model *clip;
    tokenizer *tok;
    size_t weight_bytes;
};

struct sd_worker {
    sd_model *m;
    backend *be;
    arena *ar;
};

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* ---- parameters ---- */

static const char *sampler_names[SAMPLER_COUNT] = {"euler_a", "euler", "ddim", "dpmpp_2m_karras"};

const char *sampler_name(sampler_kind s) {
    return (unsigned)s < SAMPLER_COUNT ? sampler_names[s] : "unknown";
}

int sampler_parse(const char *s) {
    for (int i = 0; s && i < SAMPLER_COUNT; i++)
        if (!strcmp(s, sampler_names[i])) return i;
    return -1;
}

void gen_params_default(gen_params *p) {
    memset(p, 0, sizeof *p);
    p->prompt = "";
    p->width = p->height = 512;
    p->steps = 20;
    p->guidance = 7.5f;
    p->sampler = SAMPLER_EULER_A;
    p->clip_skip = 1;
}

static easel_err bad(const char **field, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static easel_err bad(const char **field, const char *name, const char *fmt, ...) {
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (field) *field = name;
    return easel_seterr(EASEL_EINVAL, "%s %s", name, msg);
}

easel_err gen_params_validate(const gen_params *p, const char **field) {
    if (field) *field = NULL;
    if (!p->prompt) return bad(field, "prompt", "is required");
    if (strlen(p->prompt) > GEN_MAX_PROMPT_BYTES)
        return bad(field, "prompt", "must be at most %d bytes", GEN_MAX_PROMPT_BYTES);
    if (p->negative_prompt && strlen(p->negative_prompt) > GEN_MAX_PROMPT_BYTES)
        return bad(field, "negative_prompt", "must be at most %d bytes", GEN_MAX_PROMPT_BYTES);
    if (p->width < GEN_MIN_SIZE || p->width > GEN_MAX_SIZE || p->width % 8)
        return bad(field, "width", "must be a multiple of 8 in [%d, %d] (got %d)", GEN_MIN_SIZE,
                   GEN_MAX_SIZE, p->width);
    if (p->height < GEN_MIN_SIZE || p->height > GEN_MAX_SIZE || p->height % 8)
        return bad(field, "height", "must be a multiple of 8 in [%d, %d] (got %d)", GEN_MIN_SIZE,
                   GEN_MAX_SIZE, p->height);
    if (p->steps < 1 || p->steps > GEN_MAX_STEPS)
        return bad(field, "steps", "must be in [1, %d] (got %d)", GEN_MAX_STEPS, p->steps);
    if (!(p->guidance >= 0.0f && p->guidance <= GEN_MAX_GUIDANCE))
        return bad(field, "guidance_scale", "must be in [0, %g] (got %g)", (double)GEN_MAX_GUIDANCE,
                   (double)p->guidance);
    if ((unsigned)p->sampler >= SAMPLER_COUNT)
        return bad(field, "sampler", "must be one of euler_a, euler, ddim, dpmpp_2m_karras");
    if (p->clip_skip < 1 || p->clip_skip > 12)
        return bad(field, "clip_skip", "must be in [1, 12] (got %d)", p->clip_skip);
    return EASEL_OK;
}

/* ---- model ---- */

static easel_err load_networks(sd_model *m, sd_checkpoint *ck) {
    wstore ws;
    easel_err e;
    const sd_arch *a = &m->arch;
    if ((e = sd_checkpoint_store(ck, SD_UNET, m->be, &ws)) ||
        (e = unet_load(&a->unet, &ws, &m->unet)) || (e = sd_checkpoint_check_unused(ck, SD_UNET)))
        return e;
    m->weight_bytes += ws.bytes_loaded;
    if ((e = sd_checkpoint_store(ck, SD_VAE, m->be, &ws)) ||
        (e = vae_load(&a->vae, &ws, &m->vae)) || (e = sd_checkpoint_check_unused(ck, SD_VAE)))
        return e;
    m->weight_bytes += ws.bytes_loaded;
    if ((e = sd_checkpoint_store(ck, SD_TEXT, m->be, &ws)) ||
        (e = clip_load(&a->clip, &ws, &m->clip)) || (e = sd_checkpoint_check_unused(ck, SD_TEXT)))
        return e;
    m->weight_bytes += ws.bytes_loaded;
    return EASEL_OK;
}

easel_err sd_model_load(const char *path, backend *be, sd_model **out) {
    *out = NULL;
    sd_checkpoint *ck = NULL;
    easel_err e = sd_checkpoint_open(path, &ck);
    if (e) return e;
    sd_model *m = calloc(1, sizeof *m);
    if (!m) {
        sd_checkpoint_close(ck);
        return easel_seterr(EASEL_ENOMEM, "out of memory");
    }
    m->be = be;
    m->arch = *sd_checkpoint_arch(ck);
    e = load_networks(m, ck);
    if (!e) {
        const char *dir = sd_checkpoint_tokenizer_dir(ck);
        e = dir ? tokenizer_load_dir(dir, &m->tok) : tokenizer_create_default(&m->tok);
    }
    sd_checkpoint_close(ck);
    if (e) {
        sd_model_free(m);
        return easel_wraperr(e, "loading model '%s'", path);
    }
    *out = m;
    return EASEL_OK;
}

void sd_model_free(sd_model *m) {
    if (!m) return;
    unet_free(m->unet);
    vae_free(m->vae);
    clip_free(m->clip);
    tokenizer_free(m->tok);
    free(m);
}

const char *sd_model_arch(const sd_model *m) {
    return m->arch.arch;
}
size_t sd_model_weight_bytes(const sd_model *m) {
    return m->weight_bytes;
}

easel_err sd_worker_create(sd_model *m, backend *be, sd_worker **out) {
    *out = NULL;
    sd_worker *w = calloc(1, sizeof *w);
    if (!w) return easel_seterr(EASEL_ENOMEM, "out of memory");
    w->m = m;
    w->be = be;
    if (!(w->ar = arena_create(be, 0))) {
        free(w);
        return easel_wraperr(EASEL_ENOMEM, "worker arena");
    }
    *out = w;
    return EASEL_OK;
}

void sd_worker_free(sd_worker *w) {
    if (!w) return;
    arena_free(w->ar);
    free(w);
}

/* ---- one job ---- */

typedef struct {
    sd_worker *w;
    const gen_params *p;
    int cfg, batch, lh, lw, lc;
    int64_t n;                    /* latent elements (one sample) */
    tensor ctx, x_t, eps_t;       /* [B,77,D], [B,h,w,c], [B,h,w,c] in the arena */
    float *x, *x_in, *nhwc, *eps; /* host: NCHW latents, scaled input, NHWC staging, eps */
    sampler *s;
    rng r;
} job;

static easel_err encode_prompts(job *j, gen_timings *tm) {
    sd_model *m = j->w->m;
    int32_t ids[2 * SEQ];
    int trunc_neg = 0, trunc = 0;
    double t0 = now_ms();
    const char *neg = j->p->negative_prompt ? j->p->negative_prompt : "";
    easel_err e = EASEL_OK;
    if (j->cfg) e = tokenizer_encode(m->tok, neg, ids, &trunc_neg);
    if (!e) e = tokenizer_encode(m->tok, j->p->prompt, ids + (j->cfg ? SEQ : 0), &trunc);
    if (e) return easel_wraperr(e, "tokenizing");
    tm->truncated = trunc || trunc_neg;
    double t1 = now_ms();
    tm->tokenize_ms = t1 - t0;
    e = clip_forward(m->clip, j->w->ar, ids, j->batch, j->p->clip_skip - 1, &j->ctx);
    if (!e) e = j->w->be->sync(j->w->be);
    tm->encode_ms = now_ms() - t1;
    return e;
}

/* NCHW (sampler, torch's draw order) <-> NHWC (the networks). */
static void nchw_to_nhwc(const float *src, float *dst, int c, int hw) {
    for (int k = 0; k < c; k++)
        for (int i = 0; i < hw; i++)
            dst[i * c + k] = src[k * hw + i];
}
static void nhwc_to_nchw(const float *src, float *dst, int c, int hw) {
    for (int k = 0; k < c; k++)
        for (int i = 0; i < hw; i++)
            dst[k * hw + i] = src[i * c + k];
}

static easel_err unet_step(job *j, int i) {
    sd_model *m = j->w->m;
    backend *be = j->w->be;
    int hw = j->lh * j->lw;
    sampler_scale_input(j->s, i, j->x, j->x_in, j->n);
    nchw_to_nhwc(j->x_in, j->nhwc, j->lc, hw);
    if (j->cfg) memcpy(j->nhwc + j->n, j->nhwc, sizeof(float) * j->n);
    float t[2];
    t[0] = t[1] = sampler_timestep(j->s, i);
    easel_err e = be->upload(be, &j->x_t, j->nhwc);
    if (!e) e = unet_forward(m->unet, j->w->ar, &j->x_t, t, &j->ctx, &j->eps_t);
    if (!e) e = be->download(be, &j->eps_t, j->nhwc);
    if (e) return e;
    float g = j->p->guidance;
    if (j->cfg) /* noise_pred = uncond + g·(cond − uncond) */
        for (int64_t k = 0; k < j->n; k++)
            j->nhwc[k] = j->nhwc[k] + g * (j->nhwc[j->n + k] - j->nhwc[k]);
    nhwc_to_nchw(j->nhwc, j->eps, j->lc, hw);
    return sampler_step(j->s, i, j->eps, j->x, j->n, &j->r);
}

static easel_err sample(job *j, gen_progress_fn progress, void *user, gen_timings *tm) {
    double t0 = now_ms();
    rng_seed(&j->r, j->p->seed);
    rng_randn(&j->r, j->x, j->n);
    float sigma0 = sampler_init_noise_sigma(j->s);
    for (int64_t k = 0; k < j->n; k++)
        j->x[k] *= sigma0;
    int steps = j->p->steps;
    for (int i = 0; i < steps; i++) {
        double s0 = now_ms();
        easel_err e = unet_step(j, i);
        if (e) return easel_wraperr(e, "step %d/%d", i + 1, steps);
        double ms = now_ms() - s0;
        if (progress && progress(user, i + 1, steps, ms))
            return easel_seterr(EASEL_ECANCELED, "canceled at step %d/%d", i + 1, steps);
    }
    tm->sample_ms = now_ms() - t0;
    tm->step_ms_mean = tm->sample_ms / steps;
    return EASEL_OK;
}

/* diffusers: (image / 2 + 0.5).clamp(0, 1), then numpy (x * 255).round(). */
static void to_rgb8(const float *img, uint8_t *rgb, int64_t n) {
    for (int64_t k = 0; k < n; k++) {
        float v = img[k] / 2.0f + 0.5f;
        v = v < 0.0f ? 0.0f : v > 1.0f ? 1.0f : v;
        rgb[k] = (uint8_t)nearbyintf(v * 255.0f);
    }
}

static easel_err decode(job *j, uint8_t **rgb, gen_timings *tm) {
    sd_model *m = j->w->m;
    backend *be = j->w->be;
    arena *ar = j->w->ar;
    double t0 = now_ms();
    int W = j->p->width, H = j->p->height;
    int64_t npx = (int64_t)W * H * 3;
    tensor z = arena_new4(ar, 1, j->lh, j->lw, j->lc);
    tensor img = arena_new4(ar, 1, H, W, m->arch.vae.out_channels);
    float *host = malloc(sizeof(float) * npx);
    uint8_t *out = malloc(npx);
    easel_err e = arena_error(ar);
    if (!e && (!host || !out)) e = easel_seterr(EASEL_ENOMEM, "out of memory for the image");
    if (!e) {
        nchw_to_nhwc(j->x, j->nhwc, j->lc, j->lh * j->lw);
        e = be->upload(be, &z, j->nhwc);
    }
    if (!e) e = vae_decode(m->vae, ar, &z, &img);
    if (!e) e = be->download(be, &img, host);
    if (!e) to_rgb8(host, out, npx);
    free(host);
    if (e) {
        free(out);
        return easel_wraperr(e, "decoding");
    }
    *rgb = out;
    tm->decode_ms = now_ms() - t0;
    return EASEL_OK;
}

static easel_err job_setup(job *j, sd_worker *w, const gen_params *p) {
    const sd_arch *a = &w->m->arch;
    int f = 1 << (a->vae.levels - 1);
    if (p->width % f || p->height % f)
        return easel_seterr(EASEL_EINVAL, "width and height must be multiples of %d for this model",
                            f);
    if (p->clip_skip > a->clip.layers)
        return easel_seterr(EASEL_EINVAL, "clip_skip must be in [1, %d] for this model",
                            a->clip.layers);
    j->w = w, j->p = p;
    j->cfg = p->guidance > 1.0f;
    j->batch = j->cfg ? 2 : 1;
    j->lh = p->height / f, j->lw = p->width / f, j->lc = a->unet.in_channels;
    j->n = (int64_t)j->lc * j->lh * j->lw;
    if (a->vae.latent_channels != j->lc || a->unet.out_channels != j->lc)
        return easel_seterr(EASEL_EUNSUPPORTED, "latent channels differ between UNet and VAE");
    arena_reset(w->ar);
    j->ctx = arena_new3(w->ar, j->batch, SEQ, a->clip.hidden);
    j->x_t = arena_new4(w->ar, j->batch, j->lh, j->lw, j->lc);
    j->eps_t = arena_new4(w->ar, j->batch, j->lh, j->lw, j->lc);
    easel_err e = arena_error(w->ar);
    if (e) return e;
    j->x = malloc(sizeof(float) * j->n);
    j->x_in = malloc(sizeof(float) * j->n);
    j->eps = malloc(sizeof(float) * j->n);
    j->nhwc = malloc(sizeof(float) * j->n * 2);
    if (!j->x || !j->x_in || !j->eps || !j->nhwc)
        return easel_seterr(EASEL_ENOMEM, "out of memory");
    return sampler_create(p->sampler, p->steps, &j->s);
}

static void job_free(job *j) {
    free(j->x), free(j->x_in), free(j->eps), free(j->nhwc);
    sampler_free(j->s);
}

easel_err sd_generate_ex(sd_worker *w, const gen_params *p, gen_progress_fn progress, void *user,
                         uint8_t **rgb, float *latents, gen_timings *timings) {
    *rgb = NULL;
    gen_timings tm = {0};
    double t0 = now_ms();
    easel_err e = gen_params_validate(p, NULL);
    if (e) return e;
    job j = {0};
    e = job_setup(&j, w, p);
    if (!e) e = encode_prompts(&j, &tm);
    if (!e) e = sample(&j, progress, user, &tm);
    if (!e && latents) memcpy(latents, j.x, sizeof(float) * j.n);
    if (!e) e = decode(&j, rgb, &tm);
    job_free(&j);
    arena_reset(w->ar);
    tm.total_ms = now_ms() - t0;
    if (tm.truncated) log_warn("prompt longer than 77 CLIP tokens: truncated as diffusers does");
    if (timings) *timings = tm;
    return e;
}

easel_err sd_generate(sd_worker *w, const gen_params *p, gen_progress_fn progress, void *user,
                      uint8_t **rgb, gen_timings *timings) {
    return sd_generate_ex(w, p, progress, user, rgb, NULL, timings);
}
