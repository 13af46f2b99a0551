/* `easel generate`: one txt2img (or img2img / inpainting with --init-image
 * and --mask) from the command line, with a progress bar
 * on a terminal and a timing summary. The option names are the API's
 * (negative-prompt, guidance-scale, ...), with the older short spellings as
 * aliases. Exit 2 for bad flags, values out of range and missing or corrupt
 * models; the PNG is written atomically, so a failed run leaves no partial
 * file. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../engine/fsutil.h"
#include "../engine/image.h"
#include "../engine/image_codecs.h"
#include "../engine/opts.h"
#include "../http/uploads.h"
#include "../models/lora.h"
#include "../models/pipeline.h"
#include "../models/scheduler.h"
#include "backends.h"
#include "cli.h"

typedef struct {
    const char *model, *out, *device;
    int threads, quiet, seed_given, decoder;
    int precision; /* backend_precision: the choices "auto|fp32|bf16" are in its order */
    gen_params p;
    sd_load_opts load;
    const char *lora_dir;
    const char *lora_spec[GEN_MAX_LORAS]; /* --lora NAME[:W] or PATH[:W], as given */
    int n_lora_spec;
    const char *init_path, *mask_path; /* img2img / inpainting */
    int resize_mode, mask_alpha, width_given, height_given;
} gen_args;

/* A whole file into memory (at most 256 MB). */
static easel_err read_file(const char *path, uint8_t **data, size_t *len) {
    easel_err e = fs_read_file(path, (size_t)256 << 20, data, len);
    if (e == EASEL_ENOTFOUND) return easel_seterr(EASEL_EIO, "%s: cannot open", path);
    return e ? easel_seterr(EASEL_EIO, "%s: cannot read (or over 256 MB)", path) : EASEL_OK;
}

/* --init-image / --mask -> the job's pixels at its size (the image's aspect
 * ratio when no size was given: the model's default long side). */
static easel_err load_images(gen_args *a, const sd_model *m, uint8_t **rgb, uint8_t **mask) {
    uint8_t *img = NULL, *msk = NULL;
    size_t il = 0, ml = 0;
    easel_err e = read_file(a->init_path, &img, &il);
    if (e) return easel_wraperr(e, "--init-image");
    if (a->mask_path && (e = read_file(a->mask_path, &msk, &ml))) {
        free(img);
        return easel_wraperr(e, "--mask");
    }
    image_info ii;
    if (!(e = image_probe(img, il, NULL, &ii)) && !(a->width_given && a->height_given)) {
        sd_model_info info;
        sd_model_get_info(m, &info);
        int side =
            info.default_width > info.default_height ? info.default_width : info.default_height;
        int w = a->width_given ? a->p.width : 0, h = a->height_given ? a->p.height : 0;
        uploads_default_size(ii.width, ii.height, side, 8, &w, &h);
        a->p.width = w < GEN_MIN_SIZE ? GEN_MIN_SIZE : w > GEN_MAX_SIZE ? GEN_MAX_SIZE : w;
        a->p.height = h < GEN_MIN_SIZE ? GEN_MIN_SIZE : h > GEN_MAX_SIZE ? GEN_MAX_SIZE : h;
    }
    if (e) e = easel_wraperr(e, "--init-image %s", a->init_path);
    if (!e)
        e = image_prepare_job(img, il, msk, ml, a->mask_alpha && !msk, NULL,
                              a->mask_alpha ? MASK_FROM_ALPHA : MASK_FROM_LUMA,
                              (image_resize_mode)a->resize_mode, a->p.width, a->p.height, 0xFFFFFF,
                              rgb, a->mask_path || a->mask_alpha ? mask : NULL);
    free(img), free(msk);
    return e;
}

static const char *add_lora(void *ctx, const char *v) {
    gen_args *a = ctx;
    if (a->n_lora_spec >= GEN_MAX_LORAS) return "given more than 8 times";
    if (!*v) return "needs NAME[:WEIGHT] or FILE.safetensors[:WEIGHT]";
    a->lora_spec[a->n_lora_spec++] = v;
    return NULL;
}

/* --lora values -> a->p.loras: NAME or PATH, then an optional ":WEIGHT"; a
 * path (a file that exists) is made known to lib under its stem. */
static int resolve_lora_specs(gen_args *a, lora_lib *lib) {
    for (int i = 0; i < a->n_lora_spec; i++) {
        char spec[4200], name[GEN_LORA_NAME_MAX + 1];
        snprintf(spec, sizeof spec, "%s", a->lora_spec[i]);
        float w = 1.0f;
        char *colon = strrchr(spec, ':'), *end = NULL;
        if (colon) {
            double v = strtod(colon + 1, &end);
            if (end != colon + 1 && !*end) w = (float)v, *colon = 0;
        }
        if (access(spec, F_OK) == 0 && (strchr(spec, '/') || strstr(spec, ".safetensors"))) {
            if (lora_lib_add_file(lib, spec, name, sizeof name))
                return fprintf(stderr, "easel generate: --lora: %s\n", easel_errmsg()), 2;
        } else if (strlen(spec) <= GEN_LORA_NAME_MAX) {
            memcpy(name, spec, strlen(spec) + 1);
        } else {
            return fprintf(stderr, "easel generate: --lora: '%.40s...' is too long\n", spec), 2;
        }
        if (a->p.n_loras >= GEN_MAX_LORAS)
            return fprintf(stderr, "easel generate: more than %d LoRAs\n", GEN_MAX_LORAS), 2;
        gen_lora *l = &a->p.loras[a->p.n_loras++];
        snprintf(l->name, sizeof l->name, "%s", name);
        l->weight = w;
    }
    return 0;
}

static const char *set_sampler(void *ctx, const char *v) {
    int s = sampler_parse(v);
    if (s < 0) return "is not a sampler (see --help)";
    ((gen_args *)ctx)->p.sampler = (sampler_kind)s;
    return NULL;
}

static const char *set_schedule(void *ctx, const char *v) {
    int s = schedule_parse(v);
    if (s < 0) return "is not a schedule (see --help)";
    ((gen_args *)ctx)->p.schedule = (sched_schedule)s;
    return NULL;
}

typedef struct {
    int tty;
    double t0;
} bar_state;

static double mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* step/steps, it/s and ETA from the mean step time so far. */
static int progress_bar(void *user, int step, int steps, double step_ms) {
    (void)step_ms;
    bar_state *b = user;
    int width = 30, done = step * width / steps;
    double el = mono_s() - b->t0, per = step > 0 ? el / step : 0;
    double eta = (steps - step) * per;
    fprintf(stderr, "\r[%.*s%*s] step %d/%d  %.2f it/s  eta %.1fs ", done,
            "##############################", width - done, "", step, steps,
            per > 0 ? 1.0 / per : 0, eta);
    if (step == steps) fputc('\n', stderr);
    return 0;
}

static int run_model(gen_args *a, lora_lib *lib);

static int run(gen_args *a) {
    const char *field = NULL;
    lora_lib *lib = NULL;
    char prompt[GEN_MAX_PROMPT_BYTES + 1];
    snprintf(prompt, sizeof prompt, "%s", a->p.prompt); /* <lora:...> tags come out */
    a->p.prompt = prompt;
    /* the pixels come once the model is loaded (the size may follow the image);
     * stand-ins let the checks see that an image and a mask are given */
    static const uint8_t given[1];
    if (a->init_path) a->p.init_image = given;
    if (a->mask_path || (a->init_path && a->mask_alpha)) a->p.mask = given;
    if (lora_lib_create(a->lora_dir ? a->lora_dir : "loras", &lib))
        return fprintf(stderr, "easel generate: %s\n", easel_errmsg()), 1;
    int st = resolve_lora_specs(a, lib);
    if (!st && (gen_prompt_loras(prompt, a->p.loras, &a->p.n_loras, GEN_MAX_LORAS, &field) ||
                gen_params_validate(&a->p, &field))) {
        fprintf(stderr, "easel generate: %s\n", easel_errmsg());
        st = 2;
    }
    if (st) return lora_lib_free(lib), st;
    st = run_model(a, lib);
    lora_lib_free(lib);
    return st;
}

static int run_model(gen_args *a, lora_lib *lib) {
    backend *be = backend_create(a->device, a->threads, (backend_precision)a->precision);
    if (!be) return fprintf(stderr, "easel generate: backend: %s\n", easel_errmsg()), 2;
    double t0 = mono_s();
    sd_model *m = NULL;
    sd_worker *w = NULL;
    uint8_t *rgb = NULL;
    gen_timings tm = {0};
    easel_err e = sd_model_load_ex(a->model, be, &a->load, &m);
    double load_ms = (mono_s() - t0) * 1e3;
    if (!e) sd_model_set_loras(m, lib);
    uint8_t *init = NULL, *mask = NULL;
    if (!e && a->init_path && !(e = load_images(a, m, &init, &mask)))
        a->p.init_image = init, a->p.mask = mask;
    if (!e) e = sd_params_resolve(m, &a->p, &a->p, NULL); /* the model's defaults, to print */
    if (!e && !a->quiet) {
        sd_model_info info;
        sd_model_get_info(m, &info);
        if (info.random_weights)
            fprintf(stderr,
                    "note: %s has random weights (easel make-model): the image will be "
                    "noise; see README -> Real models\n",
                    a->model);
    }
    if (!e) e = sd_worker_create(m, be, &w);
    bar_state bar = {isatty(2) && !a->quiet, mono_s()};
    if (!e) e = sd_generate(w, &a->p, bar.tty ? progress_bar : NULL, &bar, &rgb, &tm);
    if (!e) e = image_write_png(a->out, rgb, a->p.width, a->p.height);
    int status = e ? cli_status_of(e) : 0;
    if (e) {
        fprintf(stderr, "easel generate: %s\n", easel_errmsg());
    } else if (!a->quiet) {
        if (tm.truncated)
            fprintf(stderr,
                    "warning: the prompt was longer than 77 CLIP tokens and was truncated\n");
        fprintf(stderr,
                "wrote %s (%dx%d, %s, %d steps, guidance %g, seed %llu) on %s\n"
                "  load %.0f ms | tokenize %.1f ms | encode %.0f ms | sample %.0f ms "
                "(%.0f ms/step) | decode %.0f ms (%s) | total %.0f ms | worker memory %.0f MiB\n",
                a->out, a->p.width, a->p.height, sampler_name(a->p.sampler), a->p.steps,
                (double)a->p.guidance, (unsigned long long)a->p.seed, be->name, load_ms,
                tm.tokenize_ms, tm.encode_ms, tm.sample_ms, tm.step_ms_mean, tm.decode_ms,
                gen_decoder_name(a->p.decoder), tm.total_ms,
                (double)tm.worker_peak_bytes / (1 << 20));
        if (a->p.init_image)
            fprintf(stderr, "  %s from %s: strength %g, %d of %d steps run, image encode %.0f ms\n",
                    a->p.mask ? "inpainting" : "img2img", a->init_path, a->p.strength, tm.steps_run,
                    a->p.steps, tm.image_encode_ms);
        for (int i = 0; i < a->p.n_loras; i++)
            fprintf(stderr, "  lora %s weight %g%s\n", a->p.loras[i].name,
                    (double)a->p.loras[i].weight, a->p.loras[i].weight == 0 ? " (skipped)" : "");
        if (a->p.n_loras)
            fprintf(stderr, "  lora merge %.0f ms (%.1f MiB of merged weights)\n", tm.lora_ms,
                    sd_worker_lora_bytes(w, NULL) / 1048576.0);
    }
    free(rgb), free(init), free(mask);
    sd_worker_free(w);
    sd_model_free(m);
    backend_destroy(be);
    return status;
}

int cmd_generate(int argc, char **argv) {
    gen_args a = {.device = "auto"};
    gen_params_default(&a.p);
    sd_load_opts_default(&a.load);
    a.p.prompt = NULL;
    int size[2] = {a.p.width, a.p.height}, wg = 0, hg = 0;
    char sampler_help[400], schedule_help[300];
    snprintf(sampler_help, sizeof sampler_help, "%s (default: the model's own scheduler)",
             sampler_choices());
    snprintf(schedule_help, sizeof schedule_help, "%s (default: as the model's config says)",
             schedule_choices());
    /* clang-format off */
    const opt_spec specs[] = {
        {.name = "model", .kind = OPT_STRING, .dst = &a.model, .metavar = "PATH",
         .help = "a diffusers folder or a single-file .safetensors", .flags = OPT_REQUIRED},
        {.name = "prompt", .kind = OPT_STRING, .dst = &a.p.prompt, .metavar = "TEXT",
         .help = "what to draw", .flags = OPT_REQUIRED},
        {.name = "out", .aliases = "o", .kind = OPT_STRING, .dst = &a.out, .metavar = "FILE.png",
         .help = "where the PNG goes (written atomically)", .flags = OPT_REQUIRED},
        {.name = "negative-prompt", .aliases = "negative", .kind = OPT_STRING,
         .dst = &a.p.negative_prompt, .metavar = "TEXT", .help = "what to avoid (default: none)"},
        {.name = "prompt-2", .kind = OPT_STRING, .dst = &a.p.prompt_2, .metavar = "TEXT",
         .help = "SDXL: the prompt for the second text encoder (default: --prompt)"},
        {.name = "negative-prompt-2", .kind = OPT_STRING, .dst = &a.p.negative_prompt_2,
         .metavar = "TEXT", .help = "SDXL: its negative prompt (default: --negative-prompt)"},
        {.name = "steps", .kind = OPT_INT, .dst = &a.p.steps, .lo = 1, .hi = GEN_MAX_STEPS,
         .metavar = "N", .help = "sampling steps (default: the model's, e.g. 20; SD-Turbo 1)"},
        {.name = "guidance-scale", .aliases = "cfg", .kind = OPT_FLOAT, .dst = &a.p.guidance,
         .lo = 0, .hi = GEN_MAX_GUIDANCE, .metavar = "G",
         .help = "classifier-free guidance (default: the model's, e.g. 7.5; <= 1: no CFG)"},
        {.name = "sampler", .kind = OPT_CALL, .call = set_sampler, .ctx = &a, .metavar = "NAME",
         .help = sampler_help},
        {.name = "schedule", .kind = OPT_CALL, .call = set_schedule, .ctx = &a,
         .metavar = "NAME", .help = schedule_help},
        {.name = "eta", .kind = OPT_FLOAT, .dst = &a.p.eta, .lo = 0, .hi = 1, .metavar = "E",
         .help = "DDIM's eta / TCD's gamma (default 0)"},
        {.name = "seed", .kind = OPT_U64, .dst = &a.p.seed, .lo = 0, .hi = 9007199254740991.0,
         .metavar = "N", .help = "(default: random, printed)", .given = &a.seed_given},
        {.name = "width", .kind = OPT_INT, .dst = &size[0], .lo = GEN_MIN_SIZE,
         .hi = GEN_MAX_SIZE, .metavar = "W", .help = "a multiple of 8 (default: the model's)",
         .given = &wg},
        {.name = "height", .kind = OPT_INT, .dst = &size[1], .lo = GEN_MIN_SIZE,
         .hi = GEN_MAX_SIZE, .metavar = "H", .help = "a multiple of 8 (default: the model's)",
         .given = &hg},
        {.name = "clip-skip", .kind = OPT_INT, .dst = &a.p.clip_skip, .lo = 1, .hi = 12,
         .metavar = "N", .help = "1 = the model's layer (default; SDXL's is the penultimate), "
                                 "2 = one before it, ..."},
        CLI_LOAD_OPTS(&a.load),
        {.name = "decoder", .kind = OPT_CHOICE, .dst = &a.decoder, .choices = "vae|taesd",
         .help = "vae: the model's full VAE (default); taesd: its TAESD, ~18x cheaper, "
                 "preview quality"},
        {.name = "device", .kind = OPT_STRING, .dst = &a.device, .metavar = "cpu|cuda|auto",
         .help = "compute backend (default auto)", .flags = OPT_ENV},
        {.name = "threads", .kind = OPT_INT, .dst = &a.threads, .lo = 1, .hi = 1024,
         .metavar = "N", .help = "CPU threads (default: all cores)", .flags = OPT_ENV},
        {.name = "precision", .kind = OPT_CHOICE, .dst = &a.precision,
         .choices = "auto|fp32|bf16", .flags = OPT_ENV,
         .help = "CPU compute: bf16 (AMX / AVX512-BF16), fp32 (the exact reference), or auto "
                 "(bf16 where the CPU has it)"},
        {.name = "lora", .kind = OPT_CALL, .call = add_lora, .ctx = &a, .flags = OPT_REPEAT,
         .metavar = "NAME[:W]",
         .help = "apply a LoRA at weight W (default 1): a name in --lora-dir or a "
                 ".safetensors path; repeatable, also <lora:NAME:W> in the prompt"},
        {.name = "lora-dir", .kind = OPT_STRING, .dst = &a.lora_dir, .metavar = "DIR",
         .flags = OPT_ENV, .help = "where LoRA names are looked up (default ./loras)"},
        {.name = "init-image", .kind = OPT_STRING, .dst = &a.init_path, .metavar = "FILE",
         .help = "img2img: start from this PNG/JPEG/WebP (EXIF orientation applied; size: its "
                 "aspect ratio unless --width/--height)"},
        {.name = "strength", .kind = OPT_DOUBLE, .dst = &a.p.strength, .lo = 0, .hi = 1,
         .metavar = "S", .help = "how much of the image is redrawn: the last int(steps*S) steps "
                                 "run (default 0.8; with --mask 1.0)"},
        {.name = "mask", .kind = OPT_STRING, .dst = &a.mask_path, .metavar = "FILE",
         .help = "inpainting: white = repaint, black = keep; the init image's size"},
        {.name = "mask-alpha", .kind = OPT_FLAG, .dst = &a.mask_alpha,
         .help = "the mask is an alpha channel (transparent = repaint; without --mask, the "
                 "init image's own)"},
        {.name = "mask-blur", .kind = OPT_INT, .dst = &a.p.mask_blur, .lo = 0,
         .hi = GEN_MAX_MASK_BLUR, .metavar = "PX", .help = "blur the mask first (sigma, pixels)"},
        {.name = "keep-unmasked", .kind = OPT_FLAG, .dst = &a.p.keep_unmasked,
         .help = "outside the mask keep the init image's pixels exactly"},
        {.name = "resize-mode", .kind = OPT_CHOICE, .dst = &a.resize_mode,
         .choices = "resize|crop|fill",
         .help = "how the image becomes WxH: stretch (default), cover and centre-crop, fit "
                 "inside and fill the bands from its edges"},
        {.name = "quiet", .aliases = "q", .kind = OPT_FLAG, .dst = &a.quiet,
         .help = "no progress bar or summary (for scripts)"},
        {0}};
    /* clang-format on */
    const opts_cmd cmd = {.name = "easel generate",
                          .synopsis = "--model PATH --prompt TEXT --out FILE.png [options]",
                          .footer = "The names are the HTTP API's (negative_prompt, "
                                    "guidance_scale, ...) with dashes.",
                          .specs = specs};
    int r = opts_parse(&cmd, argc, argv);
    if (r) return r == 1 ? 0 : 2;
    a.p.width = size[0], a.p.height = size[1];
    a.width_given = wg, a.height_given = hg;
    a.p.decoder = a.decoder ? GEN_DECODER_TAESD : GEN_DECODER_VAE;
    if (!a.seed_given) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        a.p.seed = ((uint64_t)ts.tv_nsec ^ (uint64_t)ts.tv_sec * 2654435761u ^ (uint64_t)getpid()) &
                   0xffffffffu;
    }
    return run(&a);
}
