/* `easel bench pipeline`: txt2img end to end on one loaded model. Warm-up runs
 * are excluded; each stage (tokenize, text encode, each UNet step, VAE decode,
 * PNG encode) is reported as median/min/max over the repeats, with peak RSS
 * and images/s for several workers x threads splits run concurrently. */
#include <ftw.h>
#include <pthread.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "../cli/version.h"
#include "bench/bench.h"
#include "cli/backends.h"
#include "engine/backend.h"
#include "engine/image.h"
#include "engine/opts.h"
#include "models/pipeline.h"

extern char **environ;

#define BP_MAX_SPLITS 4

typedef struct {
    const char *model, *arch, *device, *json, *prompt, *negative, *splits;
    int width, height, steps, repeats, warmup, threads, throughput_images;
    int precision; /* backend_precision ("auto|fp32|bf16" is its order) */
    int decoder;   /* gen_decoder ("vae|taesd" is its order) */
    float guidance;
    sampler_kind sampler;
    uint64_t seed;
} bp_opts;

/* One run's timings, in ms. */
enum { ST_TOKENIZE, ST_ENCODE, ST_SAMPLE, ST_DECODE, ST_PNG, ST_TOTAL, ST_E2E, ST_COUNT };
static const char *const st_names[ST_COUNT] = {"tokenize", "encode", "sample",    "decode",
                                               "png",      "total",  "end_to_end"};

typedef struct {
    double *v;
    int n, cap;
} bp_series;

typedef struct {
    int workers, threads, images;
    double wall_s, images_per_s;
    char error[160];
} bp_split;

static double bp_now_ms(void) {
    return bench_now() * 1e3;
}

static int bp_push(bp_series *s, double v) {
    if (s->n == s->cap) {
        int cap = s->cap ? 2 * s->cap : 64;
        double *nv = realloc(s->v, (size_t)cap * sizeof *nv);
        if (!nv) return -1;
        s->v = nv;
        s->cap = cap;
    }
    s->v[s->n++] = v;
    return 0;
}

/* Sorts s in place; median of the sorted values (0 when empty). */
static double bp_median(bp_series *s) {
    return bench_median(s->v, s->n);
}

/* Peak resident set size of this process so far, in MiB (VmHWM); -1 if unknown. */
static double bp_peak_rss_mib(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    double kb = -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM:", 6)) kb = strtod(line + 6, NULL);
    fclose(f);
    return kb < 0 ? -1 : kb / 1024.0;
}

static const char *bp_set_sampler(void *ctx, const char *v) {
    int s = sampler_parse(v);
    if (s < 0) return "is not a sampler: euler_a, euler, ddim, dpmpp_2m_karras";
    ((bp_opts *)ctx)->sampler = (sampler_kind)s;
    return NULL;
}

static int bp_parse(int argc, char **argv, bp_opts *o) {
    *o = (bp_opts){.device = "cpu",
                   .prompt = "a cozy living room, scandinavian style, soft light",
                   .negative = "blurry, low quality",
                   .splits = "1x2,2x1",
                   .width = 256,
                   .height = 256,
                   .steps = 2,
                   .repeats = 3,
                   .warmup = 1,
                   .threads = 2,
                   .guidance = 7.5f,
                   .sampler = SAMPLER_EULER_A,
                   .seed = 42};
    int size[2] = {256, 256}, size_given = 0;
    const opt_spec specs[] = {
        {.name = "model",
         .kind = OPT_STRING,
         .dst = &o->model,
         .metavar = "PATH",
         .help = "diffusers folder or single .safetensors"},
        {.name = "arch",
         .kind = OPT_STRING,
         .dst = &o->arch,
         .metavar = "NAME",
         .help = "without --model: make a random-weight model (tiny, sd15, ...) in a temp dir"},
        {.name = "device",
         .kind = OPT_STRING,
         .dst = &o->device,
         .metavar = "cpu|cuda|auto",
         .help = "(cpu)"},
        {.name = "precision",
         .kind = OPT_CHOICE,
         .dst = &o->precision,
         .choices = "auto|fp32|bf16",
         .flags = OPT_ENV,
         .help = "the CPU backend's (auto: bf16 where the CPU has it)"},
        {.name = "decoder",
         .kind = OPT_CHOICE,
         .dst = &o->decoder,
         .choices = "vae|taesd",
         .help = "the final decode: the model's VAE (default) or its taesd/"},
        {.name = "threads",
         .kind = OPT_INT,
         .dst = &o->threads,
         .lo = 0,
         .hi = 1024,
         .metavar = "N",
         .help = "CPU threads for the latency runs (2; 0 = all cores)"},
        {.name = "size",
         .kind = OPT_SIZE,
         .dst = size,
         .lo = 8,
         .hi = 8192,
         .metavar = "WxH|N",
         .help = "image size (256)",
         .given = &size_given},
        {.name = "width",
         .kind = OPT_INT,
         .dst = &o->width,
         .lo = 8,
         .hi = 8192,
         .metavar = "W",
         .help = "image width"},
        {.name = "height",
         .kind = OPT_INT,
         .dst = &o->height,
         .lo = 8,
         .hi = 8192,
         .metavar = "H",
         .help = "image height"},
        {.name = "steps",
         .kind = OPT_INT,
         .dst = &o->steps,
         .lo = 1,
         .hi = GEN_MAX_STEPS,
         .metavar = "N",
         .help = "(2)"},
        {.name = "sampler",
         .kind = OPT_CALL,
         .call = bp_set_sampler,
         .ctx = o,
         .metavar = "NAME",
         .help = "(euler_a)"},
        {.name = "guidance-scale",
         .aliases = "guidance",
         .kind = OPT_FLOAT,
         .dst = &o->guidance,
         .lo = 0,
         .hi = GEN_MAX_GUIDANCE,
         .metavar = "G",
         .help = "(7.5)"},
        {.name = "seed",
         .kind = OPT_U64,
         .dst = &o->seed,
         .lo = 0,
         .hi = 9007199254740991.0,
         .metavar = "N",
         .help = "(42)"},
        {.name = "prompt", .kind = OPT_STRING, .dst = &o->prompt, .metavar = "TEXT"},
        {.name = "repeats",
         .kind = OPT_INT,
         .dst = &o->repeats,
         .lo = 1,
         .hi = 100000,
         .metavar = "N",
         .help = "(3)"},
        {.name = "warmup",
         .kind = OPT_INT,
         .dst = &o->warmup,
         .lo = 0,
         .hi = 100000,
         .metavar = "N",
         .help = "(1)"},
        {.name = "splits",
         .kind = OPT_STRING,
         .dst = &o->splits,
         .metavar = "LIST",
         .help = "concurrent workers x threads for images/s (\"1x2,2x1\"; \"\" = skip)"},
        {.name = "throughput-images",
         .kind = OPT_INT,
         .dst = &o->throughput_images,
         .lo = 1,
         .hi = 100000,
         .metavar = "N",
         .help = "images per worker in the images/s runs (repeats)"},
        {.name = "json",
         .kind = OPT_STRING,
         .dst = &o->json,
         .metavar = "FILE",
         .help = "machine-readable results"},
        {0}};
    const opts_cmd cmd = {.name = "easel bench pipeline",
                          .synopsis = "[--model PATH | --arch NAME] [options]",
                          .specs = specs};
    int r = opts_parse(&cmd, argc, argv);
    if (r) return r;
    if (size_given) o->width = size[0], o->height = size[1];
    if (!o->model && !o->arch) o->arch = "tiny";
    if (o->throughput_images < 1) o->throughput_images = o->repeats;
    return 0;
}

static int bp_rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

/* Runs `easel make-model --arch A --out DIR/model` (this same binary). */
static int bp_make_model(const char *arch, char *dir, size_t dirlen, char *model, size_t mlen) {
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, dirlen, "%s/easel-bench-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        perror("bench pipeline: mkdtemp");
        return -1;
    }
    snprintf(model, mlen, "%s/model", dir);
    char *args[] = {"easel", "make-model", "--arch", (char *)arch, "--out", model, NULL};
    pid_t pid;
    int st = 0;
    fprintf(stderr, "bench pipeline: easel make-model --arch %s --out %s\n", arch, model);
    if (posix_spawn(&pid, "/proc/self/exe", NULL, NULL, args, environ) != 0 ||
        waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "bench pipeline: make-model failed\n");
        nftw(dir, bp_rm_one, 16, FTW_DEPTH | FTW_PHYS);
        return -1;
    }
    return 0;
}

static backend *bp_backend(const bp_opts *o, int threads) {
    return backend_create(o->device, threads, (backend_precision)o->precision);
}

static void bp_params(const bp_opts *o, gen_params *p, uint64_t seed) {
    gen_params_default(p);
    p->prompt = o->prompt;
    p->negative_prompt = o->negative;
    p->width = o->width;
    p->height = o->height;
    p->steps = o->steps;
    p->guidance = o->guidance;
    p->sampler = o->sampler;
    p->decoder = (gen_decoder)o->decoder;
    p->seed = seed;
}

/* Process CPU time (all threads), in ms: on a machine others share, the
 * core-seconds a stage used says more than its wall time. */
static double bp_cpu_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e3 + 1e-6 * (double)ts.tv_nsec;
}

typedef struct {
    bp_series *steps, *cpu_steps; /* NULL: not recording */
    double last_cpu;              /* CPU ms at the previous step's end (< 0: none yet) */
} bp_progress_ctx;

static int bp_progress(void *user, int step, int steps, double step_ms) {
    bp_progress_ctx *c = user;
    (void)step, (void)steps;
    double now = bp_cpu_ms();
    if (c->steps) bp_push(c->steps, step_ms);
    /* a step's CPU from the previous step's end: the first step's includes the encode */
    if (c->cpu_steps && c->last_cpu >= 0) bp_push(c->cpu_steps, now - c->last_cpu);
    c->last_cpu = now;
    return 0;
}

/* One generation + PNG encode; records into stages[], step times, the CPU
 * ms of steps, of the decode and of the whole run (cpu[0], cpu[1], cpu[2])
 * and the worker's peak arena bytes (*worker_peak) when record. */
static easel_err bp_run_once(sd_worker *w, const gen_params *p, bp_series *stages, bp_series *steps,
                             bp_series *cpu, double *worker_peak) {
    bp_progress_ctx pc = {steps, cpu, -1};
    uint8_t *rgb = NULL, *png = NULL;
    size_t png_len = 0;
    gen_timings t = {0};
    double c0 = bp_cpu_ms();
    double t0 = bp_now_ms();
    easel_err e = sd_generate(w, p, bp_progress, &pc, &rgb, &t);
    if (e) return e;
    if (cpu && pc.last_cpu >= 0) bp_push(&cpu[1], bp_cpu_ms() - pc.last_cpu); /* the decode */
    double t1 = bp_now_ms();
    e = image_encode_png(rgb, p->width, p->height, &png, &png_len);
    double t2 = bp_now_ms();
    if (cpu) bp_push(&cpu[2], bp_cpu_ms() - c0);
    if (worker_peak && (double)t.worker_peak_bytes > *worker_peak)
        *worker_peak = (double)t.worker_peak_bytes;
    free(rgb);
    free(png);
    if (e) return e;
    if (stages) {
        double v[ST_COUNT] = {t.tokenize_ms, t.encode_ms, t.sample_ms, t.decode_ms,
                              t2 - t1,       t1 - t0,     t2 - t0};
        for (int i = 0; i < ST_COUNT; i++)
            if (bp_push(&stages[i], v[i]))
                return easel_seterr(EASEL_ENOMEM, "bench: out of memory");
    }
    return EASEL_OK;
}

/* ---- images/s with W workers x T threads, run concurrently ---- */

typedef struct {
    sd_worker *w;
    const bp_opts *o;
    int index;
    pthread_barrier_t *start;
    easel_err err;
    char msg[160];
} bp_thread;

static void *bp_thread_main(void *arg) {
    bp_thread *t = arg;
    gen_params p;
    bp_params(t->o, &p, t->o->seed + 1000u * (uint64_t)t->index);
    t->err = bp_run_once(t->w, &p, NULL, NULL, NULL, NULL); /* warm-up, outside the timing */
    pthread_barrier_wait(t->start);
    for (int i = 0; i < t->o->throughput_images && !t->err; i++) {
        p.seed++;
        t->err = bp_run_once(t->w, &p, NULL, NULL, NULL, NULL);
    }
    if (t->err) snprintf(t->msg, sizeof t->msg, "%s", easel_errmsg());
    return NULL;
}

static void bp_split_run(sd_model *m, const bp_opts *o, bp_split *s) {
    backend *be[BP_MAX_SPLITS] = {0};
    sd_worker *w[BP_MAX_SPLITS] = {0};
    bp_thread th[BP_MAX_SPLITS] = {0};
    pthread_t tid[BP_MAX_SPLITS];
    pthread_barrier_t start;
    int started = 0;
    for (int i = 0; i < s->workers; i++) {
        be[i] = bp_backend(o, s->threads);
        if (!be[i] || sd_worker_create(m, be[i], &w[i])) {
            snprintf(s->error, sizeof s->error, "worker %d: %s", i, easel_errmsg());
            goto done;
        }
    }
    pthread_barrier_init(&start, NULL, (unsigned)s->workers + 1);
    for (; started < s->workers; started++) {
        th[started] = (bp_thread){.w = w[started], .o = o, .index = started, .start = &start};
        if (pthread_create(&tid[started], NULL, bp_thread_main, &th[started])) break;
    }
    if (started < s->workers) { /* cannot happen in practice; do not deadlock the barrier */
        snprintf(s->error, sizeof s->error, "pthread_create failed");
        for (int i = started; i < s->workers; i++)
            pthread_barrier_wait(&start);
    } else {
        pthread_barrier_wait(&start);
    }
    double t0 = bp_now_ms();
    for (int i = 0; i < started; i++)
        pthread_join(tid[i], NULL);
    s->wall_s = (bp_now_ms() - t0) / 1e3;
    pthread_barrier_destroy(&start);
    s->images = started * o->throughput_images;
    s->images_per_s = s->wall_s > 0 ? s->images / s->wall_s : 0;
    for (int i = 0; i < started; i++)
        if (th[i].err && !s->error[0])
            snprintf(s->error, sizeof s->error, "worker %d: %s", i, th[i].msg);
done:
    for (int i = 0; i < s->workers; i++) {
        sd_worker_free(w[i]);
        backend_destroy(be[i]);
    }
}

/* "1x2,2x1" -> splits; returns the count (0 for ""), -1 on a malformed list. */
static int bp_parse_splits(const char *list, bp_split *out) {
    int n = 0;
    const char *p = list;
    while (*p) {
        int w, t, used;
        if (n == BP_MAX_SPLITS || sscanf(p, "%dx%d%n", &w, &t, &used) != 2 || w < 1 ||
            w > BP_MAX_SPLITS || t < 1)
            return -1;
        out[n++] = (bp_split){.workers = w, .threads = t};
        p += used;
        if (*p == ',')
            p++;
        else if (*p)
            return -1;
    }
    return n;
}

/* ---- report ---- */

static cJSON *bp_stat_json(bp_series *s) {
    cJSON *o = cJSON_CreateObject();
    double med = bp_median(s);
    cJSON_AddNumberToObject(o, "median", med);
    cJSON_AddNumberToObject(o, "min", s->n ? s->v[0] : 0);
    cJSON_AddNumberToObject(o, "max", s->n ? s->v[s->n - 1] : 0);
    cJSON_AddNumberToObject(o, "n", s->n);
    return o;
}

static void bp_print_row(const char *name, bp_series *s) {
    double med = bp_median(s);
    printf("  %-18s %10.2f %10.2f %10.2f   (n=%d)\n", name, med, s->n ? s->v[0] : 0,
           s->n ? s->v[s->n - 1] : 0, s->n);
}

typedef struct {
    const bp_opts *o;
    const char *arch, *precision; /* what the latency backend computes in */
    double load_ms, weight_mib, rss_latency_mib, rss_end_mib;
    double worker_peak;              /* the latency worker's peak arena bytes */
    bp_series *stages, *steps, *cpu; /* cpu: CPU ms per UNet step, per decode, per run */
    bp_split *splits;
    int nsplits;
} bp_report;

static void bp_print(const bp_report *r) {
    const bp_opts *o = r->o;
    printf("easel bench pipeline: %s on %s %s (%d threads), %dx%d, %d steps, %s, guidance %.1f, "
           "decoder %s, %d repeats (+%d warm-up)\n",
           r->arch, o->device, r->precision, o->threads, o->width, o->height, o->steps,
           sampler_name(o->sampler), o->guidance, gen_decoder_name((gen_decoder)o->decoder),
           o->repeats, o->warmup);
    printf("  load %.0f ms, weights %.0f MiB\n", r->load_ms, r->weight_mib);
    printf("  %-18s %10s %10s %10s\n", "stage (ms)", "median", "min", "max");
    for (int i = 0; i < ST_COUNT; i++) {
        if (i == ST_SAMPLE) bp_print_row("unet step", r->steps);
        if (i == ST_SAMPLE && r->cpu[0].n) bp_print_row("unet step cpu", &r->cpu[0]);
        if (i == ST_PNG && r->cpu[1].n) bp_print_row("decode cpu", &r->cpu[1]);
        bp_print_row(st_names[i], &r->stages[i]);
    }
    if (r->cpu[2].n) bp_print_row("end_to_end cpu", &r->cpu[2]);
    printf("  peak RSS: %.0f MiB after the latency runs, %.0f MiB at the end; worker memory "
           "(arena peak) %.0f MiB\n",
           r->rss_latency_mib, r->rss_end_mib, r->worker_peak / (1024.0 * 1024.0));
    for (int i = 0; i < r->nsplits; i++) {
        const bp_split *s = &r->splits[i];
        if (s->error[0])
            printf("  images/s %d worker(s) x %d thread(s): failed: %s\n", s->workers, s->threads,
                   s->error);
        else
            printf("  images/s %d worker(s) x %d thread(s): %.4f (%d images in %.2f s)\n",
                   s->workers, s->threads, s->images_per_s, s->images, s->wall_s);
    }
}

static cJSON *bp_json(const bp_report *r) {
    const bp_opts *o = r->o;
    cJSON *j = cJSON_CreateObject(), *st = cJSON_CreateObject(), *tp = cJSON_CreateArray();
    cJSON_AddStringToObject(j, "bench", "pipeline");
    cJSON_AddStringToObject(j, "version", EASEL_VERSION);
    cJSON_AddStringToObject(j, "git", EASEL_GIT);
    cJSON_AddStringToObject(j, "arch", r->arch);
    cJSON_AddStringToObject(j, "device", o->device);
    cJSON_AddStringToObject(j, "precision", r->precision);
    cJSON_AddNumberToObject(j, "threads", o->threads);
    cJSON_AddNumberToObject(j, "width", o->width);
    cJSON_AddNumberToObject(j, "height", o->height);
    cJSON_AddNumberToObject(j, "steps", o->steps);
    cJSON_AddStringToObject(j, "sampler", sampler_name(o->sampler));
    cJSON_AddNumberToObject(j, "guidance", o->guidance);
    cJSON_AddStringToObject(j, "decoder", gen_decoder_name((gen_decoder)o->decoder));
    cJSON_AddNumberToObject(j, "repeats", o->repeats);
    cJSON_AddNumberToObject(j, "warmup", o->warmup);
    cJSON_AddNumberToObject(j, "load_ms", r->load_ms);
    cJSON_AddNumberToObject(j, "weights_mib", r->weight_mib);
    for (int i = 0; i < ST_COUNT; i++)
        cJSON_AddItemToObject(st, st_names[i], bp_stat_json(&r->stages[i]));
    cJSON_AddItemToObject(st, "unet_step", bp_stat_json(r->steps));
    cJSON *cp = cJSON_CreateObject(); /* process CPU ms (all threads) */
    cJSON_AddItemToObject(cp, "unet_step", bp_stat_json(&r->cpu[0]));
    cJSON_AddItemToObject(cp, "decode", bp_stat_json(&r->cpu[1]));
    cJSON_AddItemToObject(cp, "end_to_end", bp_stat_json(&r->cpu[2]));
    cJSON_AddItemToObject(j, "cpu_ms", cp);
    cJSON_AddItemToObject(j, "stages_ms", st);
    cJSON_AddNumberToObject(j, "peak_rss_mib_latency", r->rss_latency_mib);
    cJSON_AddNumberToObject(j, "peak_rss_mib", r->rss_end_mib);
    cJSON_AddNumberToObject(j, "worker_peak_mib", r->worker_peak / (1024.0 * 1024.0));
    for (int i = 0; i < r->nsplits; i++) {
        const bp_split *s = &r->splits[i];
        cJSON *e = cJSON_CreateObject();
        cJSON_AddNumberToObject(e, "workers", s->workers);
        cJSON_AddNumberToObject(e, "threads", s->threads);
        cJSON_AddNumberToObject(e, "images", s->images);
        cJSON_AddNumberToObject(e, "wall_s", s->wall_s);
        cJSON_AddNumberToObject(e, "images_per_s", s->images_per_s);
        if (s->error[0]) cJSON_AddStringToObject(e, "error", s->error);
        cJSON_AddItemToArray(tp, e);
    }
    cJSON_AddItemToObject(j, "throughput", tp);
    return j;
}

static int bp_write_json(const char *path, cJSON *j) {
    char *text = cJSON_Print(j);
    FILE *f = text ? fopen(path, "w") : NULL;
    int ok = f && fputs(text, f) >= 0 && fputc('\n', f) != EOF;
    if (f && fclose(f)) ok = 0;
    free(text);
    if (!ok) fprintf(stderr, "bench pipeline: cannot write %s\n", path);
    return ok ? 0 : -1;
}

/* ---- main ---- */

/* Warm-up + repeats on one worker; fills r->stages / r->steps. */
static easel_err bp_latency(sd_model *m, backend *be, const bp_opts *o, bp_report *r) {
    sd_worker *w = NULL;
    easel_err e = sd_worker_create(m, be, &w);
    if (e) return e;
    gen_params p;
    for (int i = 0; i < o->warmup + o->repeats && !e; i++) {
        bp_params(o, &p, o->seed + (uint64_t)i);
        const char *field = NULL;
        if ((e = gen_params_validate(&p, &field))) break;
        int rec = i >= o->warmup;
        e = bp_run_once(w, &p, rec ? r->stages : NULL, rec ? r->steps : NULL, rec ? r->cpu : NULL,
                        rec ? &r->worker_peak : NULL);
    }
    sd_worker_free(w);
    return e;
}

static int bp_measure(const bp_opts *o, const char *model_path) {
    bp_series stages[ST_COUNT] = {0}, steps = {0}, cpu[3] = {{0}};
    bp_split splits[BP_MAX_SPLITS] = {0};
    bp_report r = {.o = o, .stages = stages, .steps = &steps, .cpu = cpu, .splits = splits};
    sd_model *m = NULL;
    int rc = 1;
    r.nsplits = bp_parse_splits(o->splits, splits);
    if (r.nsplits < 0) {
        fprintf(stderr,
                "bench pipeline: --splits wants e.g. 1x2,2x1 (workers x threads, <= %d workers)\n",
                BP_MAX_SPLITS);
        return 2;
    }
    backend *be = bp_backend(o, o->threads);
    if (!be) goto fail;
    r.precision = be->dev == DEV_CPU ? backend_precision_name(backend_cpu_precision(be)) : "f16";
    double t0 = bp_now_ms();
    if (sd_model_load(model_path, be, &m)) goto fail;
    r.load_ms = bp_now_ms() - t0;
    r.arch = sd_model_arch(m);
    r.weight_mib = sd_model_weight_bytes(m) / (1024.0 * 1024.0);
    if (bp_latency(m, be, o, &r)) goto fail;
    r.rss_latency_mib = bp_peak_rss_mib();
    for (int i = 0; i < r.nsplits; i++)
        bp_split_run(m, o, &splits[i]);
    r.rss_end_mib = bp_peak_rss_mib();
    bp_print(&r);
    cJSON *j = bp_json(&r);
    rc = o->json && (!j || bp_write_json(o->json, j)) ? 1 : 0;
    cJSON_Delete(j);
    goto out;
fail:
    fprintf(stderr, "bench pipeline: %s\n", easel_errmsg());
out:
    sd_model_free(m);
    backend_destroy(be);
    for (int i = 0; i < ST_COUNT; i++)
        free(stages[i].v);
    free(steps.v);
    free(cpu[0].v), free(cpu[1].v), free(cpu[2].v);
    return rc;
}

int bench_pipeline(int argc, char **argv) {
    bp_opts o;
    int rc = bp_parse(argc, argv, &o);
    if (rc) return rc == 1 ? 0 : rc;
    char dir[512] = "", made[600];
    const char *path = o.model;
    if (!path) {
        if (bp_make_model(o.arch, dir, sizeof dir, made, sizeof made)) return 1;
        path = made;
    }
    rc = bp_measure(&o, path);
    if (dir[0]) nftw(dir, bp_rm_one, 16, FTW_DEPTH | FTW_PHYS);
    return rc;
}
