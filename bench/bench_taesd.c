/* `easel bench taesd`: TAESD next to the full VAE on one loaded model, in one
 * run so the ratios share the machine's state: TAESD decode and encode and
 * the VAE decode at one size (median/min/max over repeats after a warm-up,
 * wall time and the process's CPU time, which a shared machine inflates less:
 * CPU-s / threads is the wall time of a quiet machine with perfect scaling),
 * then the cost of live previews: the same txt2img with previews off, auto
 * (the service's default policy) and after every step, alternated over the
 * repeats, reporting sampling time, the previews' own time as a share of it,
 * and whether the image stayed bit-identical. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <cjson/cJSON.h>

#include "bench/bench.h"
#include "cli/backends.h"
#include "cli/version.h"
#include "engine/arena.h"
#include "engine/opts.h"
#include "models/loader.h"
#include "models/pipeline.h"
#include "models/taesd.h"
#include "../cli/version.h"

typedef struct {
    const char *model, *device, *json;
    int size[2], repeats, warmup, threads, steps, vae_repeats, preview_side, no_previews;
    float guidance;
} bt_opts;

static double bt_now_ms(void) {
    return bench_now() * 1e3;
}

/* This process's user + system CPU time so far, ms. */
static double bt_cpu_ms(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 +
           (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
}

typedef struct {
    double v[256];
    int n;
} bt_series;

static void bt_push(bt_series *s, double v) {
    if (s->n < 256) s->v[s->n++] = v;
}

static double bt_med(bt_series *s) {
    return bench_median(s->v, s->n);
}

static int bt_parse(int argc, char **argv, bt_opts *o) {
    *o = (bt_opts){.device = "cpu",
                   .size = {512, 512},
                   .repeats = 5,
                   .warmup = 1,
                   .threads = 2,
                   .steps = 4,
                   .vae_repeats = 2,
                   .preview_side = GEN_PREVIEW_MAX_SIDE,
                   .guidance = 7.5f};
    const opt_spec specs[] = {
        {.name = "model",
         .kind = OPT_STRING,
         .dst = &o->model,
         .metavar = "PATH",
         .flags = OPT_REQUIRED,
         .help = "a model folder with a taesd/ (easel make-model --arch sd15 writes one)"},
        {.name = "device",
         .kind = OPT_STRING,
         .dst = &o->device,
         .metavar = "cpu|cuda|auto",
         .help = "(cpu)"},
        {.name = "threads",
         .kind = OPT_INT,
         .dst = &o->threads,
         .lo = 0,
         .hi = 1024,
         .metavar = "N",
         .help = "CPU threads (2; 0 = all cores)"},
        {.name = "size",
         .kind = OPT_SIZE,
         .dst = o->size,
         .lo = 64,
         .hi = 4096,
         .metavar = "WxH|N",
         .help = "image size (512)"},
        {.name = "repeats",
         .kind = OPT_INT,
         .dst = &o->repeats,
         .lo = 1,
         .hi = 200,
         .metavar = "N",
         .help = "timed TAESD runs and preview rounds (5)"},
        {.name = "vae-repeats",
         .kind = OPT_INT,
         .dst = &o->vae_repeats,
         .lo = 0,
         .hi = 200,
         .metavar = "N",
         .help = "timed full-VAE decodes (2; 0 = skip)"},
        {.name = "warmup",
         .kind = OPT_INT,
         .dst = &o->warmup,
         .lo = 0,
         .hi = 100,
         .metavar = "N",
         .help = "(1)"},
        {.name = "steps",
         .kind = OPT_INT,
         .dst = &o->steps,
         .lo = 2,
         .hi = GEN_MAX_STEPS,
         .metavar = "N",
         .help = "steps of the preview runs (4)"},
        {.name = "preview-size",
         .kind = OPT_INT,
         .dst = &o->preview_side,
         .lo = 8,
         .hi = 4096,
         .metavar = "N",
         .help = "previews' long side (256)"},
        {.name = "no-previews",
         .kind = OPT_FLAG,
         .dst = &o->no_previews,
         .help = "skip the preview-overhead runs"},
        {.name = "json",
         .kind = OPT_STRING,
         .dst = &o->json,
         .metavar = "FILE",
         .help = "machine-readable results"},
        {0}};
    const opts_cmd cmd = {
        .name = "easel bench taesd", .synopsis = "--model PATH [options]", .specs = specs};
    return opts_parse(&cmd, argc, argv);
}

/* Times op (decode or encode) `runs` times after `warmup`; into s. */
typedef easel_err (*bt_op)(void *ctx, arena *ar, const tensor *in, tensor *out);

static easel_err bt_time(backend *be, bt_op op, void *ctx, int64_t in_shape[4],
                         int64_t out_shape[4], int warmup, int runs, bt_series *s, bt_series *cpu) {
    arena *ar = arena_create(be, 0);
    if (!ar) return easel_seterr(EASEL_ENOMEM, "arena");
    tensor in = arena_new(ar, 4, in_shape), out = arena_new(ar, 4, out_shape);
    int64_t n = in_shape[0] * in_shape[1] * in_shape[2] * in_shape[3];
    float *host = malloc(sizeof(float) * (size_t)n);
    easel_err e = host ? arena_error(ar) : easel_seterr(EASEL_ENOMEM, "host");
    unsigned long long r = 0x9e3779b97f4a7c15ull;
    for (int64_t i = 0; host && i < n; i++) {
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        host[i] = (float)((r >> 40) & 0xffffff) / 8388608.0f - 1.0f;
    }
    if (!e) e = be->upload(be, &in, host);
    for (int i = 0; i < warmup + runs && !e; i++) {
        size_t mark = arena_mark(ar);
        double t0 = bt_now_ms(), c0 = bt_cpu_ms();
        e = op(ctx, ar, &in, &out);
        if (!e) e = be->sync(be);
        if (!e && i >= warmup) bt_push(s, bt_now_ms() - t0), bt_push(cpu, bt_cpu_ms() - c0);
        arena_release(ar, mark);
    }
    free(host);
    arena_free(ar);
    return e;
}

static easel_err op_taesd_dec(void *ctx, arena *ar, const tensor *in, tensor *out) {
    return taesd_decode(ctx, ar, in, out);
}
static easel_err op_taesd_enc(void *ctx, arena *ar, const tensor *in, tensor *out) {
    return taesd_encode(ctx, ar, in, out);
}
static easel_err op_vae_dec(void *ctx, arena *ar, const tensor *in, tensor *out) {
    return vae_decode(ctx, ar, in, out);
}

typedef struct {
    int n;
    double ms;
} bt_count;

static void bt_on_preview(void *user, const gen_preview *pv) {
    bt_count *c = user;
    c->n++;
    c->ms += pv->decode_ms;
}

/* One txt2img in mode 0 off, 1 auto, 2 every step; sample ms, previews, their ms. */
static easel_err bt_gen(sd_worker *w, const bt_opts *o, int mode, double *sample_ms, int *nprev,
                        double *prev_ms, uint8_t **rgb) {
    gen_params p;
    gen_params_default(&p);
    p.prompt = "a bright scandinavian living room, morning light";
    p.negative_prompt = "blurry";
    p.width = o->size[0], p.height = o->size[1];
    p.steps = o->steps;
    p.guidance = o->guidance;
    p.sampler = SAMPLER_EULER_A;
    p.seed = 42;
    gen_hooks h;
    gen_hooks_default(&h);
    bt_count c = {0};
    if (mode) h.preview = bt_on_preview, h.preview_user = &c;
    h.preview_every = mode == 2 ? 1 : 0;
    h.preview_max_side = o->preview_side;
    gen_timings t = {0};
    easel_err e = sd_generate_hooks(w, &p, &h, rgb, NULL, &t);
    *sample_ms = t.sample_ms, *nprev = t.previews, *prev_ms = t.preview_ms;
    return e;
}

static const char *const mode_names[3] = {"off", "auto", "every_step"};

int bench_taesd(int argc, char **argv) {
    bt_opts o;
    int rc = bt_parse(argc, argv, &o);
    if (rc) return rc == 1 ? 0 : rc;
    backend *be = backend_auto_create(o.device, o.threads);
    sd_model *m = NULL;
    sd_worker *w = NULL;
    taesd_model *t = NULL;
    vae_model *v = NULL;
    bt_series dec, enc, vae, smp[3], pms[3], cdec, cenc, cvae;
    memset(&dec, 0, sizeof dec), memset(&enc, 0, sizeof enc), memset(&vae, 0, sizeof vae);
    memset(&cdec, 0, sizeof cdec), memset(&cenc, 0, sizeof cenc), memset(&cvae, 0, sizeof cvae);
    memset(smp, 0, sizeof smp), memset(pms, 0, sizeof pms);
    int nprev[3] = {0}, identical = 1;
    uint8_t *ref = NULL;
    cJSON *j = NULL;
    char dir[4200];
    rc = 1;
    if (!be) goto fail;
    snprintf(dir, sizeof dir, "%s/taesd", o.model);
    if (taesd_load(dir, be, &t)) goto fail;
    int W = o.size[0], H = o.size[1], f = taesd_config_factor(taesd_get_config(t));
    int64_t lat[4] = {1, H / f, W / f, taesd_get_config(t)->latent_channels}, img[4] = {1, H, W, 3};
    fprintf(stderr, "bench taesd: %s, %dx%d, %d threads\n", o.model, W, H, o.threads);
    if (bt_time(be, op_taesd_dec, t, lat, img, o.warmup, o.repeats, &dec, &cdec)) goto fail;
    if (taesd_has_encoder(t) &&
        bt_time(be, op_taesd_enc, t, img, lat, o.warmup, o.repeats, &enc, &cenc))
        goto fail;
    if (o.vae_repeats) { /* the model's own VAE, as the loader reads it */
        sd_checkpoint *ck = NULL;
        wstore ws;
        easel_err e = sd_checkpoint_open(o.model, &ck);
        if (!e) e = sd_checkpoint_store(ck, SD_VAE, be, &ws);
        if (!e) e = vae_load(&sd_checkpoint_arch(ck)->vae, &ws, &v);
        sd_checkpoint_close(ck);
        if (e || bt_time(be, op_vae_dec, v, lat, img, 0, o.vae_repeats, &vae, &cvae)) goto fail;
    }
    if (!o.no_previews && (sd_model_load(o.model, be, &m) || sd_worker_create(m, be, &w)))
        goto fail;
    for (int r = 0; !o.no_previews && r < o.warmup + o.repeats; r++)
        for (int mode = 0; mode < 3; mode++) {
            double sms, pms_;
            int np;
            uint8_t *rgb = NULL;
            if (bt_gen(w, &o, mode, &sms, &np, &pms_, &rgb)) goto fail;
            if (!ref)
                ref = rgb, rgb = NULL;
            else if (memcmp(ref, rgb, (size_t)W * H * 3))
                identical = 0;
            free(rgb);
            if (r < o.warmup) continue;
            bt_push(&smp[mode], sms);
            bt_push(&pms[mode], pms_);
            nprev[mode] += np;
        }
    bt_med(&dec), bt_med(&enc), bt_med(&vae); /* sorts them: v[0] is the min from here on */
    bt_med(&cdec), bt_med(&cenc), bt_med(&cvae);
    for (int k = 0; k < 3; k++)
        bt_med(&smp[k]), bt_med(&pms[k]);
    printf("easel bench taesd: %dx%d, %d threads, %d repeats (+%d warm-up)\n", W, H, o.threads,
           o.repeats, o.warmup);
    printf("  %-13s %9s %9s %9s %12s\n", "wall (ms)", "median", "min", "max", "CPU-ms med");
    printf("  taesd decode  %9.1f %9.1f %9.1f %12.1f\n", bt_med(&dec), dec.v[0], dec.v[dec.n - 1],
           bt_med(&cdec));
    if (enc.n)
        printf("  taesd encode  %9.1f %9.1f %9.1f %12.1f\n", bt_med(&enc), enc.v[0],
               enc.v[enc.n - 1], bt_med(&cenc));
    if (vae.n)
        printf("  vae decode    %9.1f %9.1f %9.1f %12.1f   (taesd %.1fx faster by wall, %.1fx "
               "by CPU time)\n",
               bt_med(&vae), vae.v[0], vae.v[vae.n - 1], bt_med(&cvae), bt_med(&vae) / bt_med(&dec),
               bt_med(&cvae) / bt_med(&cdec));
    j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "bench", "taesd");
    cJSON_AddStringToObject(j, "git", EASEL_GIT);
    cJSON_AddNumberToObject(j, "width", W);
    cJSON_AddNumberToObject(j, "height", H);
    cJSON_AddNumberToObject(j, "threads", o.threads);
    cJSON_AddNumberToObject(j, "taesd_decode_ms", bt_med(&dec));
    cJSON_AddNumberToObject(j, "taesd_decode_min_ms", dec.v[0]);
    cJSON_AddNumberToObject(j, "taesd_decode_max_ms", dec.v[dec.n - 1]);
    cJSON_AddNumberToObject(j, "taesd_decode_cpu_ms", bt_med(&cdec));
    if (enc.n) cJSON_AddNumberToObject(j, "taesd_encode_ms", bt_med(&enc));
    if (enc.n) cJSON_AddNumberToObject(j, "taesd_encode_cpu_ms", bt_med(&cenc));
    if (vae.n) cJSON_AddNumberToObject(j, "vae_decode_ms", bt_med(&vae));
    if (vae.n) cJSON_AddNumberToObject(j, "vae_decode_cpu_ms", bt_med(&cvae));
    if (!o.no_previews) {
        double off = bt_med(&smp[0]);
        printf("  previews over %d steps (preview long side %d): sample ms median, previews, "
               "their share of sampling\n",
               o.steps, o.preview_side);
        cJSON *pv = cJSON_AddObjectToObject(j, "previews");
        for (int mode = 0; mode < 3; mode++) {
            double s = bt_med(&smp[mode]), pm = bt_med(&pms[mode]);
            double share = s - pm > 0 ? pm / (s - pm) : 0;
            printf("  %-11s %9.1f ms  (%+5.1f%% vs off)  %5.2f previews/run  %5.1f%% of sampling\n",
                   mode_names[mode], s, off > 0 ? 100 * (s - off) / off : 0,
                   (double)nprev[mode] / o.repeats, 100 * share);
            cJSON *e = cJSON_AddObjectToObject(pv, mode_names[mode]);
            cJSON_AddNumberToObject(e, "sample_ms", s);
            cJSON_AddNumberToObject(e, "sample_min_ms", smp[mode].v[0]);
            cJSON_AddNumberToObject(e, "sample_max_ms", smp[mode].v[smp[mode].n - 1]);
            cJSON_AddNumberToObject(e, "preview_ms", pm);
            cJSON_AddNumberToObject(e, "previews_per_run", (double)nprev[mode] / o.repeats);
            cJSON_AddNumberToObject(e, "share_of_sampling", share);
        }
        printf("  final image identical with previews off/auto/every step: %s\n",
               identical ? "yes" : "NO");
        cJSON_AddBoolToObject(pv, "identical", identical);
        cJSON_AddNumberToObject(pv, "steps", o.steps);
    }
    rc = 0;
    if (o.json) {
        char *text = cJSON_Print(j);
        FILE *fp = text ? fopen(o.json, "w") : NULL;
        if (!fp || fputs(text, fp) < 0) rc = 1;
        if (fp) fclose(fp);
        free(text);
    }
    goto out;
fail:
    fprintf(stderr, "bench taesd: %s\n", easel_errmsg());
out:
    cJSON_Delete(j);
    free(ref);
    taesd_free(t);
    vae_free(v);
    sd_worker_free(w);
    sd_model_free(m);
    backend_destroy(be);
    return rc;
}
