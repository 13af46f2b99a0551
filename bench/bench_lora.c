/* `easel bench lora`: what a LoRA costs a worker. On one model (a given one,
 * or random weights of a real architecture made in a temp dir) and one LoRA
 * (a given file, or a random one of a given rank from make-lora's writer):
 *   - the parts of a first job's bind: reading + checking the file, and the
 *     merge alone (lora_set_build: the lora_merge ops), each a median of
 *     --merge-repeats;
 *   - a job's LoRA binding when the worker merges it (first job) and when
 *     its set is cached (later jobs): gen_timings.lora_ms;
 *   - the memory one cached set takes: its device bytes, and the process's
 *     RSS before and after it, with the peak (file buffer and staging);
 *   - txt2img end to end at the given settings (default LCM-LoRA's recipe:
 *     lcm, 4 steps, guidance 1, 512x512) without the LoRA, with it merged
 *     by that job, and with it cached. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "bench/bench.h"
#include "cli/backends.h"
#include "engine/fsutil.h"
#include "engine/opts.h"
#include "models/loader.h"
#include "models/lora.h"
#include "models/pipeline.h"

typedef struct {
    const char *model, *arch, *lora, *device, *json, *out_dir;
    int rank, conv, width, height, steps, repeats, merge_repeats, threads, precision, peft;
    float guidance, weight;
    sampler_kind sampler;
} bl_opts;

static const char *bl_sampler(void *ctx, const char *v) {
    int s = sampler_parse(v);
    if (s < 0) return "is not a sampler";
    ((bl_opts *)ctx)->sampler = (sampler_kind)s;
    return NULL;
}

/* VmRSS or VmHWM of this process in MiB; -1 if unknown. */
static double status_mib(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    double kb = -1;
    size_t n = strlen(key);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, n)) kb = strtod(line + n, NULL);
    fclose(f);
    return kb < 0 ? -1 : kb / 1024.0;
}

static void reset_hwm(void) { /* "5" into clear_refs resets VmHWM (Linux >= 4.0) */
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (f) fputs("5", f), fclose(f);
}

static int bl_parse(int argc, char **argv, bl_opts *o) {
    *o = (bl_opts){.arch = "sd15",
                   .device = "cpu",
                   .rank = 64,
                   .conv = 1,
                   .width = 512,
                   .height = 512,
                   .steps = 4,
                   .repeats = 2,
                   .merge_repeats = 3,
                   .threads = 2,
                   .guidance = 1.0f,
                   .weight = 1.0f,
                   .sampler = SAMPLER_LCM};
    /* clang-format off */
    const opt_spec specs[] = {
        {.name = "model", .kind = OPT_STRING, .dst = &o->model, .metavar = "PATH",
         .help = "the model (default: random weights of --arch, made in a temp dir)"},
        {.name = "arch", .kind = OPT_STRING, .dst = &o->arch, .metavar = "NAME",
         .help = "the architecture without --model (sd15)"},
        {.name = "lora", .kind = OPT_STRING, .dst = &o->lora, .metavar = "FILE",
         .help = "a LoRA .safetensors (default: a random one, --rank, --conv)"},
        {.name = "rank", .kind = OPT_INT, .dst = &o->rank, .lo = 1, .hi = 1024, .metavar = "R",
         .help = "the random LoRA's rank (64)"},
        {.name = "no-conv", .kind = OPT_FLAG, .dst = &o->peft,
         .help = "the random LoRA without LoCon convs (default: with, as LCM-LoRA)"},
        {.name = "weight", .kind = OPT_FLOAT, .dst = &o->weight, .lo = -10, .hi = 10,
         .metavar = "W", .help = "its weight (1)"},
        {.name = "size", .kind = OPT_SIZE, .dst = &o->width, .lo = 64, .hi = 2048,
         .metavar = "WxH", .help = "image size (512x512)"},
        {.name = "steps", .kind = OPT_INT, .dst = &o->steps, .lo = 1, .hi = 150, .metavar = "N",
         .help = "steps (4)"},
        {.name = "sampler", .kind = OPT_CALL, .call = bl_sampler, .ctx = o, .metavar = "NAME",
         .help = "sampler (lcm)"},
        {.name = "guidance-scale", .aliases = "cfg", .kind = OPT_FLOAT, .dst = &o->guidance,
         .lo = 0, .hi = 30, .metavar = "G", .help = "guidance (1: no CFG batch)"},
        {.name = "repeats", .kind = OPT_INT, .dst = &o->repeats, .lo = 1, .hi = 100,
         .metavar = "N", .help = "cached LoRA jobs and no-LoRA jobs, each (2)"},
        {.name = "merge-repeats", .kind = OPT_INT, .dst = &o->merge_repeats, .lo = 1, .hi = 100,
         .metavar = "N", .help = "repeats of the read and merge timings (3)"},
        {.name = "device", .kind = OPT_STRING, .dst = &o->device, .metavar = "cpu|cuda|auto",
         .help = "backend (cpu)"},
        {.name = "threads", .kind = OPT_INT, .dst = &o->threads, .lo = 1, .hi = 1024,
         .metavar = "N", .help = "threads (2)"},
        {.name = "precision", .kind = OPT_CHOICE, .dst = &o->precision,
         .choices = "auto|fp32|bf16", .help = "CPU precision (auto)"},
        {.name = "json", .kind = OPT_STRING, .dst = &o->json, .metavar = "FILE",
         .help = "also write the results as JSON"},
        {0}};
    /* clang-format on */
    const opts_cmd cmd = {.name = "easel bench lora", .synopsis = "[options]", .specs = specs};
    int r = opts_parse(&cmd, argc, argv);
    o->conv = !o->peft;
    return r;
}

static double median_of(double *v, int n) {
    return bench_median(v, n);
}

static int job(sd_worker *w, const bl_opts *o, const char *lora, gen_timings *tm, double *e2e) {
    gen_params g;
    gen_params_default(&g);
    g.prompt = "a cozy living room, scandinavian style, soft light";
    g.width = o->width, g.height = o->height, g.steps = o->steps;
    g.guidance = o->guidance, g.sampler = o->sampler, g.seed = 42;
    if (lora) {
        snprintf(g.loras[0].name, sizeof g.loras[0].name, "%s", lora);
        g.loras[0].weight = o->weight, g.n_loras = 1;
    }
    uint8_t *rgb = NULL;
    double t0 = bench_now();
    easel_err e = sd_generate(w, &g, NULL, NULL, &rgb, tm);
    *e2e = (bench_now() - t0) * 1e3;
    free(rgb);
    if (e) fprintf(stderr, "easel bench lora: %s\n", easel_errmsg());
    return e ? -1 : 0;
}

int bench_lora(int argc, char **argv) {
    bl_opts o;
    int r = bl_parse(argc, argv, &o);
    if (r) return r == 1 ? 0 : 2;
    char tmp[] = "/tmp/easel_bench_lora.XXXXXX", model[600], lora[600];
    if (!mkdtemp(tmp)) return perror("mkdtemp"), 1;
    sd_arch a;
    easel_err e = EASEL_OK;
    double t0 = bench_now();
    if (o.model) {
        snprintf(model, sizeof model, "%s", o.model);
        sd_checkpoint *ck = NULL;
        if (!(e = sd_checkpoint_open(model, &ck))) a = *sd_checkpoint_arch(ck);
        sd_checkpoint_close(ck);
    } else if (!(e = sd_arch_by_name(o.arch, &a))) {
        snprintf(model, sizeof model, "%s/model", tmp);
        fprintf(stderr, "making a random %s model ...\n", o.arch);
        e = sd_make_model(&a, DT_F16, 0, model);
    }
    if (!e && o.lora) {
        snprintf(lora, sizeof lora, "%s", o.lora);
    } else if (!e) {
        lora_make_opts mo;
        lora_make_opts_default(&mo);
        mo.rank = o.rank, mo.conv = o.conv;
        snprintf(lora, sizeof lora, "%s/bench.safetensors", tmp);
        e = lora_make_random(&a, &mo, lora);
    }
    backend *be = e ? NULL : backend_create(o.device, o.threads, (backend_precision)o.precision);
    if (!e && !be) e = EASEL_EDEVICE;
    sd_model *m = NULL;
    sd_worker *w = NULL;
    lora_lib *lib = NULL;
    lora_file *lf = NULL;
    char name[GEN_LORA_NAME_MAX + 1];
    if (!e) e = sd_model_load(model, be, &m);
    if (!e) e = lora_lib_create(tmp, &lib);
    if (!e) e = lora_lib_add_file(lib, lora, name, sizeof name);
    if (e) {
        fprintf(stderr, "easel bench lora: %s\n", easel_errmsg());
        goto out;
    }
    sd_model_set_loras(m, lib);
    double setup_s = bench_now() - t0;
    const lora_info *info = NULL;
    if (!lora_open(lora, 0, &lf)) info = lora_file_info(lf);
    /* read + merge alone, on the model's backend */
    double rd[100], mg[100];
    size_t set_bytes = 0;
    for (int i = 0; i < o.merge_repeats && !e; i++) {
        double s0 = bench_now();
        lora_file *df = NULL;
        if ((e = lora_open(lora, 1, &df))) break;
        double s1 = bench_now();
        lora_use u = {name, df, o.weight};
        lora_set *s = NULL;
        e = lora_set_build(sd_model_lora_index(m), &u, 1, be, &s);
        double s2 = bench_now();
        if (s) set_bytes = lora_set_bytes(s);
        lora_set_free(s);
        lora_close(df);
        rd[i] = (s1 - s0) * 1e3, mg[i] = (s2 - s1) * 1e3;
    }
    if (!e) e = sd_worker_create(m, be, &w);
    if (e) {
        fprintf(stderr, "easel bench lora: %s\n", easel_errmsg());
        goto out;
    }
    gen_timings tm;
    double e2e_plain[100], e2e_cached[100], bind_cached[100], e2e_first = 0, bind_first = 0;
    int fail = job(w, &o, NULL, &tm, &e2e_plain[0]); /* warm-up: arena at size */
    for (int i = 0; i < o.repeats && !fail; i++)
        fail = job(w, &o, NULL, &tm, &e2e_plain[i]);
    double rss0 = status_mib("VmRSS:");
    reset_hwm();
    if (!fail) fail = job(w, &o, name, &tm, &e2e_first);
    bind_first = tm.lora_ms;
    double rss1 = status_mib("VmRSS:"), hwm = status_mib("VmHWM:");
    int sets = 0;
    size_t cached_bytes = sd_worker_lora_bytes(w, &sets);
    for (int i = 0; i < o.repeats && !fail; i++) {
        fail = job(w, &o, name, &tm, &e2e_cached[i]);
        bind_cached[i] = tm.lora_ms;
        if (!tm.lora_cached) fprintf(stderr, "easel bench lora: the set was not cached\n");
    }
    if (fail) {
        e = EASEL_EINTERNAL;
        goto out;
    }
    char prec[200] = "cuda";
    if (be->dev == DEV_CPU) backend_cpu_describe(backend_cpu_precision(be), prec, sizeof prec);
    printf("easel bench lora: %s (%s weights), %s, %d threads\n", a.arch,
           dtype_name(be->weight_dtype), prec, o.threads);
    if (info)
        printf("  LoRA: %s, %d layers (%d UNet, %d text, %d text_2, %d conv), rank %d, %.1f MiB "
               "file\n",
               lora_format_name(info->format), info->modules, info->part_modules[LORA_UNET],
               info->part_modules[LORA_TEXT], info->part_modules[LORA_TEXT2], info->conv_modules,
               info->rank_max, info->file_bytes / 1048576.0);
    double rdm = median_of(rd, o.merge_repeats), mgm = median_of(mg, o.merge_repeats);
    printf("  read + check the file: %.0f ms; merge (lora_set_build): %.0f ms (median of %d)\n",
           rdm, mgm, o.merge_repeats);
    double bc = median_of(bind_cached, o.repeats);
    printf("  job's LoRA bind: first job %.0f ms (read, merge, networks), cached %.3f ms\n",
           bind_first, bc);
    printf("  one cached set: %.1f MiB of merged weights on the device; RSS %.0f -> %.0f MiB, "
           "peak %.0f MiB\n",
           cached_bytes / 1048576.0, rss0, rss1, hwm);
    double pm = median_of(e2e_plain, o.repeats), cm = median_of(e2e_cached, o.repeats);
    printf("  txt2img %dx%d %s %d steps guidance %g: no LoRA %.2f s, first LoRA job %.2f s, "
           "cached %.2f s (medians of %d)\n",
           o.width, o.height, sampler_name(o.sampler), o.steps, (double)o.guidance, pm / 1e3,
           e2e_first / 1e3, cm / 1e3, o.repeats);
    printf("  (setup: model and LoRA made/loaded in %.0f s)\n", setup_s);
    if (o.json) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "arch", a.arch);
        cJSON_AddStringToObject(j, "precision", prec);
        cJSON_AddNumberToObject(j, "threads", o.threads);
        if (info) {
            cJSON_AddNumberToObject(j, "lora_rank", info->rank_max);
            cJSON_AddNumberToObject(j, "lora_layers", info->modules);
            cJSON_AddNumberToObject(j, "lora_file_mib", info->file_bytes / 1048576.0);
        }
        cJSON_AddNumberToObject(j, "read_ms", rdm);
        cJSON_AddNumberToObject(j, "merge_ms", mgm);
        cJSON_AddNumberToObject(j, "bind_first_ms", bind_first);
        cJSON_AddNumberToObject(j, "bind_cached_ms", bc);
        cJSON_AddNumberToObject(j, "set_mib", cached_bytes / 1048576.0);
        cJSON_AddNumberToObject(j, "set_build_mib", set_bytes / 1048576.0);
        cJSON_AddNumberToObject(j, "rss_before_mib", rss0);
        cJSON_AddNumberToObject(j, "rss_after_mib", rss1);
        cJSON_AddNumberToObject(j, "rss_peak_mib", hwm);
        cJSON_AddNumberToObject(j, "e2e_plain_s", pm / 1e3);
        cJSON_AddNumberToObject(j, "e2e_first_s", e2e_first / 1e3);
        cJSON_AddNumberToObject(j, "e2e_cached_s", cm / 1e3);
        char *t = cJSON_Print(j);
        if (t && fs_write_file(o.json, t, strlen(t))) fprintf(stderr, "%s\n", easel_errmsg());
        free(t);
        cJSON_Delete(j);
    }
out:
    lora_close(lf);
    sd_worker_free(w);
    sd_model_free(m);
    lora_lib_free(lib);
    backend_destroy(be);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", tmp);
    return e ? 1 : 0;
}
