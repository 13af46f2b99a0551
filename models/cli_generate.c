/* `easel generate`: one txt2img from the command line, with a progress bar
 * on a terminal and a timing summary. Exit 2 for bad flags, values out of
 * range and missing or corrupt models; the PNG is written atomically, so a
 * failed run leaves no partial file. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../engine/cli.h"
#include "../engine/image.h"
#include "pipeline.h"

typedef struct {
    const char *model, *out, *device;
    int threads;
    gen_params p;
} gen_args;

static void gen_usage(FILE *f) {
    fprintf(f,
            "usage: easel generate --model PATH --prompt TEXT --out FILE.png [options]\n"
            "  --negative TEXT      negative prompt (default: none)\n"
            "  --steps N            sampling steps, 1..%d (default 20)\n"
            "  --cfg G              guidance scale, 0..%g (default 7.5; <= 1 disables CFG)\n"
            "  --sampler NAME       euler_a|euler|ddim|dpmpp_2m_karras (default euler_a)\n"
            "  --seed N             (default: random, printed)\n"
            "  --width W --height H multiples of 8 in [%d, %d] (default 512x512)\n"
            "  --clip-skip N        1 = last CLIP layer (default), 2 = penultimate\n"
            "  --threads N          CPU threads (default: all cores)\n"
            "  --device cpu|cuda|auto (default auto)\n"
            "  MODEL: a diffusers folder or an SD1.x .safetensors (see easel make-model)\n",
            GEN_MAX_STEPS, (double)GEN_MAX_GUIDANCE, GEN_MIN_SIZE, GEN_MAX_SIZE);
}

/* Parses an integer flag value; 0 on junk. */
static int parse_long(const char *s, long long *v) {
    char *end;
    *v = strtoll(s, &end, 10);
    return *s && !*end;
}

static int set_flag(gen_args *a, const char *k, const char *v) {
    long long n = 0;
    char *end;
    if (!strcmp(k, "--model"))
        a->model = v;
    else if (!strcmp(k, "--prompt"))
        a->p.prompt = v;
    else if (!strcmp(k, "--negative"))
        a->p.negative_prompt = v;
    else if (!strcmp(k, "--out"))
        a->out = v;
    else if (!strcmp(k, "--device"))
        a->device = v;
    else if (!strcmp(k, "--cfg")) {
        a->p.guidance = strtof(v, &end);
        return *v && !*end;
    } else if (!strcmp(k, "--sampler")) {
        int s = sampler_parse(v);
        if (s < 0) return 0;
        a->p.sampler = s;
    } else if (!strcmp(k, "--seed")) {
        if (!parse_long(v, &n) || n < 0) return 0;
        a->p.seed = (uint64_t)n;
    } else {
        int *dst = !strcmp(k, "--steps")       ? &a->p.steps
                   : !strcmp(k, "--width")     ? &a->p.width
                   : !strcmp(k, "--height")    ? &a->p.height
                   : !strcmp(k, "--threads")   ? &a->threads
                   : !strcmp(k, "--clip-skip") ? &a->p.clip_skip
                                               : NULL;
        if (!dst) return -1;
        if (!parse_long(v, &n) || n < -1000000 || n > 1000000) return 0;
        *dst = (int)n;
    }
    return 1;
}

/* 0 ok, 1 --help, 2 usage error. */
static int parse_args(int argc, char **argv, gen_args *a, int *seed_given) {
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) return 1;
        if (i + 1 >= argc) {
            fprintf(stderr, "easel generate: %s needs a value\n", argv[i]);
            return 2;
        }
        int r = set_flag(a, argv[i], argv[i + 1]);
        if (r < 0) fprintf(stderr, "easel generate: unknown option '%s'\n", argv[i]);
        if (r == 0)
            fprintf(stderr, "easel generate: bad value for %s: '%s'\n", argv[i], argv[i + 1]);
        if (r <= 0) return 2;
        if (!strcmp(argv[i], "--seed")) *seed_given = 1;
        i++;
    }
    if (!a->model || !a->out || !a->p.prompt) {
        fprintf(stderr, "easel generate: --model, --prompt and --out are required\n");
        return 2;
    }
    return 0;
}

static int progress_bar(void *user, int step, int steps, double step_ms) {
    (void)user;
    int width = 30, done = step * width / steps;
    double eta = (steps - step) * step_ms / 1000.0;
    fprintf(stderr, "\r[%.*s%*s] %d/%d  %.0f ms/step  eta %.1fs ", done,
            "##############################", width - done, "", step, steps, step_ms, eta);
    if (step == steps) fputc('\n', stderr);
    return 0;
}

/* Exit status for an error: 2 for what the user got wrong (input, model). */
static int status_of(easel_err e) {
    return e == EASEL_EINVAL || e == EASEL_ENOTFOUND || e == EASEL_EFORMAT ||
                   e == EASEL_EUNSUPPORTED
               ? 2
               : 1;
}

static int run(gen_args *a) {
    const char *field = NULL;
    if (gen_params_validate(&a->p, &field))
        return fprintf(stderr, "easel generate: %s\n", easel_errmsg()), 2;
    backend *be = backend_auto_create(a->device, a->threads);
    if (!be) return fprintf(stderr, "easel generate: backend: %s\n", easel_errmsg()), 2;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    sd_model *m = NULL;
    sd_worker *w = NULL;
    uint8_t *rgb = NULL;
    gen_timings tm = {0};
    easel_err e = sd_model_load(a->model, be, &m);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double load_ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
    if (!e) e = sd_worker_create(m, be, &w);
    if (!e) e = sd_generate(w, &a->p, isatty(2) ? progress_bar : NULL, NULL, &rgb, &tm);
    if (!e) e = image_write_png(a->out, rgb, a->p.width, a->p.height);
    int status = e ? status_of(e) : 0;
    if (e)
        fprintf(stderr, "easel generate: %s\n", easel_errmsg());
    else {
        if (tm.truncated)
            fprintf(stderr,
                    "warning: the prompt was longer than 77 CLIP tokens and was truncated\n");
        fprintf(stderr,
                "wrote %s (%dx%d, %s, %d steps, cfg %g, seed %llu) on %s\n"
                "  load %.0f ms | tokenize %.1f ms | encode %.0f ms | sample %.0f ms "
                "(%.0f ms/step) | decode %.0f ms | total %.0f ms\n",
                a->out, a->p.width, a->p.height, sampler_name(a->p.sampler), a->p.steps,
                (double)a->p.guidance, (unsigned long long)a->p.seed, be->name, load_ms,
                tm.tokenize_ms, tm.encode_ms, tm.sample_ms, tm.step_ms_mean, tm.decode_ms,
                tm.total_ms);
    }
    free(rgb);
    sd_worker_free(w);
    sd_model_free(m);
    backend_destroy(be);
    return status;
}

int cmd_generate(int argc, char **argv) {
    gen_args a = {.device = "auto"};
    gen_params_default(&a.p);
    a.p.prompt = NULL;
    int seed_given = 0;
    int r = parse_args(argc, argv, &a, &seed_given);
    if (r == 1) return gen_usage(stdout), 0;
    if (r) return gen_usage(stderr), 2;
    if (!seed_given) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        a.p.seed = ((uint64_t)ts.tv_nsec ^ (uint64_t)ts.tv_sec * 2654435761u ^ (uint64_t)getpid()) &
                   0xffffffffu;
    }
    return run(&a);
}
