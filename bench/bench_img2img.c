/* `easel bench img2img`: what a photo costs on one loaded model, in one run
 * so the numbers share the machine's state. The VAE encoder alone at the size
 * (vae_encode on the image as the pipeline feeds it: median/min/max over
 * repeats after a warm-up, wall and process CPU time), then img2img end to
 * end at a strength (tokenize + encode prompts + encode the image + the
 * remaining int(steps x strength) steps + decode) next to txt2img with the
 * same steps, alternated over the repeats: the ratio says how much of
 * txt2img's cost the skipped steps save. --mask adds inpainting (a 4-channel
 * model: latent blending) at strength 1. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "bench/bench.h"
#include "cli/backends.h"
#include "engine/arena.h"
#include "engine/opts.h"
#include "models/loader.h"
#include "models/pipeline.h"
#include "models/vae.h"

typedef struct {
    const char *model, *device;
    int size[2], repeats, warmup, threads, steps, encode_repeats, mask, precision;
    double strength;
} bi_opts;

static double cpu_ms(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 +
           (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
}

typedef struct {
    double wall[64], cpu[64];
    int n;
} series;

static void push(series *s, double wall, double cpu) {
    if (s->n < 64) s->wall[s->n] = wall, s->cpu[s->n++] = cpu;
}

static void report(const char *what, series *s, int has_cpu) {
    double lo = 1e300, hi = 0, w[64], c[64];
    for (int i = 0; i < s->n; i++) {
        w[i] = s->wall[i], c[i] = s->cpu[i];
        lo = w[i] < lo ? w[i] : lo, hi = w[i] > hi ? w[i] : hi;
    }
    printf("  %-34s %9.0f ms wall (min %.0f, max %.0f, n=%d)", what, bench_median(w, s->n),
           s->n ? lo : 0, hi, s->n);
    if (has_cpu) printf(" %9.0f ms CPU", bench_median(c, s->n));
    printf("\n");
}

/* A photo-like test image: smooth gradients and a few edges (the encoder's
 * cost does not depend on the content; the pipeline's numbers neither). */
static void make_image(uint8_t *rgb, uint8_t *mask, int w, int h) {
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            uint8_t *p = rgb + 3 * ((size_t)y * w + x);
            p[0] = (uint8_t)(40 + 180 * x / w), p[1] = (uint8_t)(60 + 120 * y / h);
            p[2] = (uint8_t)((x / 32 + y / 32) % 2 ? 200 : 90);
            mask[(size_t)y * w + x] = x < w / 2 ? 255 : 0;
        }
}

int bench_img2img(int argc, char **argv) {
    bi_opts o = {.device = "cpu",
                 .size = {512, 512},
                 .repeats = 2,
                 .warmup = 1,
                 .threads = 2,
                 .steps = 20,
                 .encode_repeats = 3,
                 .strength = 0.6};
    const opt_spec specs[] = {
        {.name = "model",
         .kind = OPT_STRING,
         .dst = &o.model,
         .metavar = "PATH",
         .flags = OPT_REQUIRED,
         .help = "a model with the VAE's encoder (easel make-model writes it)"},
        {.name = "device",
         .kind = OPT_STRING,
         .dst = &o.device,
         .metavar = "cpu|cuda|auto",
         .help = "(cpu)"},
        {.name = "threads",
         .kind = OPT_INT,
         .dst = &o.threads,
         .lo = 1,
         .hi = 1024,
         .metavar = "N",
         .help = "CPU threads (2)"},
        {.name = "precision",
         .kind = OPT_CHOICE,
         .dst = &o.precision,
         .choices = "auto|fp32|bf16",
         .help = "CPU compute (auto)"},
        {.name = "size",
         .kind = OPT_SIZE,
         .dst = o.size,
         .lo = GEN_MIN_SIZE,
         .hi = GEN_MAX_SIZE,
         .metavar = "WxH",
         .help = "(512x512)"},
        {.name = "steps",
         .kind = OPT_INT,
         .dst = &o.steps,
         .lo = 1,
         .hi = GEN_MAX_STEPS,
         .metavar = "N",
         .help = "the job's steps (20)"},
        {.name = "strength",
         .kind = OPT_DOUBLE,
         .dst = &o.strength,
         .lo = 0,
         .hi = 1,
         .metavar = "S",
         .help = "img2img strength (0.6)"},
        {.name = "repeats",
         .kind = OPT_INT,
         .dst = &o.repeats,
         .lo = 1,
         .hi = 64,
         .metavar = "N",
         .help = "pipeline runs of each kind (2)"},
        {.name = "encode-repeats",
         .kind = OPT_INT,
         .dst = &o.encode_repeats,
         .lo = 1,
         .hi = 64,
         .metavar = "N",
         .help = "VAE encoder runs (3)"},
        {.name = "warmup",
         .kind = OPT_INT,
         .dst = &o.warmup,
         .lo = 0,
         .hi = 16,
         .metavar = "N",
         .help = "untimed runs first (1)"},
        {.name = "mask",
         .kind = OPT_FLAG,
         .dst = &o.mask,
         .help = "also inpainting (half the image masked, strength 1)"},
        {0}};
    const opts_cmd cmd = {
        .name = "easel bench img2img", .synopsis = "--model PATH [options]", .specs = specs};
    int r = opts_parse(&cmd, argc, argv);
    if (r) return r == 1 ? 0 : 2;
    backend *be = backend_create(o.device, o.threads, (backend_precision)o.precision);
    if (!be) return fprintf(stderr, "easel bench img2img: %s\n", easel_errmsg()), 2;
    sd_model *m = NULL;
    sd_worker *w = NULL;
    int W = o.size[0], H = o.size[1];
    uint8_t *rgb = malloc((size_t)W * H * 3), *mask = malloc((size_t)W * H), *out = NULL;
    easel_err e = rgb && mask ? sd_model_load(o.model, be, &m) : EASEL_ENOMEM;
    if (!e) e = sd_worker_create(m, be, &w);
    if (e) {
        fprintf(stderr, "easel bench img2img: %s\n", easel_errmsg());
        goto done;
    }
    make_image(rgb, mask, W, H);
    char path[256] = "f16 (cuda)";
    if (be->dev == DEV_CPU) backend_cpu_describe(backend_cpu_precision(be), path, sizeof path);
    printf("easel bench img2img: %s, %dx%d, %d steps, strength %g, %s, %d threads\n", o.model, W, H,
           o.steps, o.strength, path, o.threads);
    /* the encoder alone, through the pipeline's own timing of it: strength 0
     * (no step runs: encode, then decode the image's own latents) */
    gen_params p;
    gen_params_default(&p);
    p.prompt = "a scandinavian living room, warm light";
    p.width = W, p.height = H, p.steps = o.steps, p.seed = 1;
    series enc = {0}, i2i = {0}, t2i = {0}, inp = {0}, i2i_sample = {0}, t2i_sample = {0};
    int steps_run = 0;
    for (int i = 0; i < o.warmup + o.encode_repeats && !e; i++) {
        gen_params q = p;
        q.init_image = rgb, q.strength = 0.0;
        gen_timings t;
        e = sd_generate(w, &q, NULL, NULL, &out, &t);
        free(out), out = NULL;
        if (!e && i >= o.warmup) push(&enc, t.image_encode_ms, t.image_encode_ms);
    }
    for (int i = 0; i < o.warmup + o.repeats && !e; i++) {
        for (int kind = 0; kind < 2 + o.mask && !e; kind++) {
            gen_params q = p;
            if (kind == 0) q.init_image = rgb, q.strength = o.strength;
            if (kind == 2) q.init_image = rgb, q.mask = mask, q.strength = 1.0;
            gen_timings t;
            double c0 = cpu_ms();
            e = sd_generate(w, &q, NULL, NULL, &out, &t);
            double c = cpu_ms() - c0;
            free(out), out = NULL;
            if (e || i < o.warmup) continue;
            if (kind == 0) push(&i2i, t.total_ms, c), push(&i2i_sample, t.sample_ms, 0);
            if (kind == 1) push(&t2i, t.total_ms, c), push(&t2i_sample, t.sample_ms, 0);
            if (kind == 2) push(&inp, t.total_ms, c);
            if (kind == 0) steps_run = t.steps_run;
        }
    }
    if (e) {
        fprintf(stderr, "easel bench img2img: %s\n", easel_errmsg());
        goto done;
    }
    report("VAE encode (wall only)", &enc, 0);
    char what[64];
    snprintf(what, sizeof what, "img2img e2e (%d of %d steps)", steps_run, o.steps);
    report(what, &i2i, 1);
    report("  of which sampling", &i2i_sample, 0);
    snprintf(what, sizeof what, "txt2img e2e (%d steps)", o.steps);
    report(what, &t2i, 1);
    report("  of which sampling", &t2i_sample, 0);
    if (o.mask) report("inpainting e2e (4-ch, strength 1)", &inp, 1);
    double a[64], b[64];
    memcpy(a, i2i.wall, sizeof a), memcpy(b, t2i.wall, sizeof b);
    double ma = bench_median(a, i2i.n), mb = bench_median(b, t2i.n);
    printf("  img2img / txt2img wall: %.2f (steps %d / %d = %.2f)\n", mb > 0 ? ma / mb : 0,
           steps_run, o.steps, (double)steps_run / o.steps);
done:
    free(rgb), free(mask);
    sd_worker_free(w);
    sd_model_free(m);
    backend_destroy(be);
    return e ? 1 : 0;
}
