/* `easel serve`: options (one table: flags over EASEL_* environment over
 * defaults), the data dir (checked writable and locked before anything
 * else), the job store (SQLite in the data dir, or PostgreSQL shared by
 * several nodes), the model (loaded once on a thread, so SIGTERM stops a start-up
 * at once; a tiny random model is made on first run when none is given),
 * one pipeline worker per --workers, the scheduler, the HTTP server, and a
 * graceful stop on SIGTERM/SIGINT. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../engine/fsutil.h"
#include "../engine/image.h"
#include "../engine/image_codecs.h"
#include "../engine/log.h"
#include "../engine/opts.h"
#include "../http/server.h"
#include "../http/webhooks.h"
#include "../models/loader.h"
#include "../models/lora.h"
#include "backends.h"
#include "cli.h"

typedef struct {
    const char *model, *host, *data_dir, *token, *cors, *device, *static_dir, *openapi;
    int previews_given, preview_every, previews_off, preview_size, preview_png, decoder;
    int64_t preview_interval_ms;
    int port, workers, queue_max, max_jobs, threads, http_threads, default_steps, max_steps;
    int precision; /* backend_precision: the choices "auto|fp32|bf16" are in its order */
    int default_size[2], no_calibrate, sync_full, conn_limit, per_ip_limit;
    int64_t max_pixels, body_max, retention_ms, job_timeout_ms, shutdown_grace_ms, conn_timeout_ms;
    const char *allowed[SERVER_MAX_ALLOWED_HOSTS];
    int n_allowed;
    char allowed_buf[1024];
    size_t allowed_used;
    sd_load_opts load; /* --family, --prediction-type, --scheduler-config, --taesd */
    const char *webhook_secret;
    int64_t webhook_retry_ms, webhook_progress_ms;
    const char *store, *node_id, *image_dir;
    int64_t lease_ms, store_wait_ms;
    const char *hook_allow[SERVER_MAX_ALLOWED_HOSTS];
    int n_hook_allow;
    char hook_buf[1024];
    size_t hook_used;
    const char *lora_dir; /* NULL: DATA/loras */
    int64_t lora_cache;   /* bytes of merged LoRA sets per worker */
    int64_t upload_max, upload_retention_ms;
} serve_opts;

typedef struct {
    sd_model *model;
    backend **be;
    sd_worker **w;
    int n;
    gen_hooks previews; /* the policy; the hook itself is set per job (run_job) */
    int previews_on, preview_png;
    lora_lib *loras;
    uploads *up; /* DATA/uploads: init images and masks */
    jobs *js;    /* set once the queue exists (the upload sweep asks it what is in use) */
} serve_runtime;

/* NAME[,NAME...] into one of the option's lists. */
static const char *add_names(const char *v, const char **list, int *n, char *buf, size_t cap,
                             size_t *used) {
    for (const char *p = v; *p;) {
        size_t k = strcspn(p, ",");
        if (k) {
            if (*n == SERVER_MAX_ALLOWED_HOSTS) return "too many names (16 at most)";
            if (*used + k + 1 > cap) return "names too long";
            char *dst = buf + *used;
            memcpy(dst, p, k);
            dst[k] = 0;
            list[(*n)++] = dst;
            *used += k + 1;
        }
        p += k + (p[k] == ',');
    }
    return NULL;
}

/* --allowed-host NAME[,NAME...], repeatable. */
static const char *add_allowed(void *ctx, const char *v) {
    serve_opts *o = ctx;
    return add_names(v, o->allowed, &o->n_allowed, o->allowed_buf, sizeof o->allowed_buf,
                     &o->allowed_used);
}

/* --webhook-allow ADDR|CIDR|NAME[,...], repeatable. */
static const char *add_hook_allow(void *ctx, const char *v) {
    serve_opts *o = ctx;
    return add_names(v, o->hook_allow, &o->n_hook_allow, o->hook_buf, sizeof o->hook_buf,
                     &o->hook_used);
}

/* --previews off|auto|N */
static const char *set_previews(void *ctx, const char *v) {
    serve_opts *o = ctx;
    char *end;
    long n = strtol(v, &end, 10);
    o->previews_given = 1;
    o->previews_off = !strcmp(v, "off");
    o->preview_every = 0;
    if (o->previews_off || !strcmp(v, "auto")) return NULL;
    if (*v && !*end && n >= 1 && n <= GEN_MAX_STEPS) {
        o->preview_every = (int)n;
        return NULL;
    }
    return "must be off, auto or a step count N (a preview after every N-th step)";
}

static int parse_args(int argc, char **argv, serve_opts *o) {
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    memset(o, 0, sizeof *o);
    o->host = "127.0.0.1", o->port = 8080, o->data_dir = "data", o->device = "auto";
    o->lora_cache = (int64_t)SD_LORA_CACHE_DEFAULT;
    o->workers = 2, o->queue_max = 256, o->max_jobs = 10000;
    o->retention_ms = 24 * 3600000LL, o->job_timeout_ms = 600000;
    o->upload_max = UPLOAD_DEFAULT_MAX_BYTES, o->upload_retention_ms = 24 * 3600000LL;
    o->http_threads = cores > 0 ? (int)cores : 2;
    o->default_size[0] = o->default_size[1] = GEN_DEFAULT, o->default_steps = GEN_DEFAULT;
    o->max_pixels = 1024 * 1024, o->max_steps = GEN_MAX_STEPS;
    o->conn_limit = 1024, o->per_ip_limit = 256, o->conn_timeout_ms = 30000, o->body_max = 65536;
    o->shutdown_grace_ms = 10000, o->webhook_retry_ms = 3600000;
    o->store = "sqlite", o->lease_ms = 30000, o->store_wait_ms = 30000;
    o->webhook_progress_ms = 5000;
    o->preview_interval_ms = (int64_t)GEN_PREVIEW_INTERVAL_MS;
    o->preview_size = GEN_PREVIEW_MAX_SIDE;
    sd_load_opts_default(&o->load);
    o->static_dir = EASEL_SOURCE_DIR "/http/static";
    o->openapi = EASEL_SOURCE_DIR "/docs/openapi.yaml";
    const double day = 86400000.0, year = 365 * day;
    /* clang-format off */
    const opt_spec specs[] = {
        {.name = "model", .kind = OPT_STRING, .dst = &o->model, .metavar = "PATH", .flags = OPT_ENV,
         .help = "diffusers folder or .safetensors (default: a tiny random model made under "
                 "DATA/models/tiny on first run)"},
        CLI_LOAD_OPTS(&o->load),
        {.name = "host", .kind = OPT_STRING, .dst = &o->host, .metavar = "ADDR", .flags = OPT_ENV,
         .help = "listen address (127.0.0.1)"},
        {.name = "port", .kind = OPT_INT, .dst = &o->port, .lo = 0, .hi = 65535, .metavar = "N",
         .flags = OPT_ENV, .help = "port (8080; 0 = any free port, printed at start)"},
        {.name = "data-dir", .kind = OPT_STRING, .dst = &o->data_dir, .metavar = "DIR",
         .flags = OPT_ENV, .help = "job store and images (./data); one server per data dir"},
        {.name = "store", .kind = OPT_STRING, .dst = &o->store, .metavar = "sqlite|postgres://...",
         .flags = OPT_ENV,
         .help = "the job store: sqlite (DATA/easel.db; one node) or a PostgreSQL URL (several "
                 "nodes on one queue; images then live in the database unless --image-dir)"},
        {.name = "node-id", .kind = OPT_STRING, .dst = &o->node_id, .metavar = "NAME",
         .flags = OPT_ENV,
         .help = "this node's name on a shared store (HOST-PID-RANDOM); a stable one lets a "
                 "restarted node requeue its own jobs at once instead of after their leases"},
        {.name = "image-dir", .kind = OPT_STRING, .dst = &o->image_dir, .metavar = "DIR",
         .flags = OPT_ENV,
         .help = "where images are written (DATA/images); with PostgreSQL, a directory every "
                 "node shares instead of the database"},
        {.name = "lease", .kind = OPT_DURATION, .dst = &o->lease_ms, .lo = 1000, .hi = day,
         .metavar = "DUR", .flags = OPT_ENV,
         .help = "a claimed job's lease, renewed while it runs; on PostgreSQL another node takes "
                 "the job over once it expired (30s)"},
        {.name = "store-wait", .kind = OPT_DURATION, .dst = &o->store_wait_ms, .lo = 0,
         .hi = day, .metavar = "DUR", .flags = OPT_ENV,
         .help = "at start, wait this long for a PostgreSQL server that is not up yet (30s)"},
        {.name = "workers", .kind = OPT_INT, .dst = &o->workers, .lo = 1, .hi = 64,
         .metavar = "N", .flags = OPT_ENV, .help = "jobs processing at once (2)"},
        {.name = "queue-max", .kind = OPT_INT, .dst = &o->queue_max, .lo = 1, .hi = 1000000,
         .metavar = "N", .flags = OPT_ENV, .help = "pending jobs accepted at most; then 429 (256)"},
        {.name = "max-jobs", .kind = OPT_INT, .dst = &o->max_jobs, .lo = 0, .hi = 10000000,
         .metavar = "N", .flags = OPT_ENV,
         .help = "jobs kept in all; when full the oldest finished one is deleted first, and "
                 "with none finished submits get 429 (10000; 0 = no cap)"},
        {.name = "token", .kind = OPT_STRING, .dst = &o->token, .metavar = "TOKEN",
         .flags = OPT_ENV, .help = "require 'Authorization: Bearer TOKEN' on the API"},
        {.name = "cors-origin", .kind = OPT_STRING, .dst = &o->cors, .metavar = "ORIGIN",
         .flags = OPT_ENV,
         .help = "send CORS headers for this origin and accept its writes ('*' for any)"},
        {.name = "allowed-host", .kind = OPT_CALL, .call = add_allowed, .ctx = o,
         .metavar = "NAME[,NAME]", .flags = OPT_ENV | OPT_REPEAT,
         .help = "Host names answered besides the listen address and loopback ('*' = any)"},
        {.name = "retention", .kind = OPT_DURATION, .dst = &o->retention_ms, .lo = 0,
         .hi = 100 * year, .flags = OPT_ENV, .metavar = "DUR",
         .help = "delete finished jobs and images after DUR (24h; 0 = keep)"},
        {.name = "job-timeout", .kind = OPT_DURATION, .dst = &o->job_timeout_ms, .lo = 0,
         .hi = year, .flags = OPT_ENV, .metavar = "DUR",
         .help = "fail a job without progress for DUR (600s; 0 = off)"},
        {.name = "max-pixels", .kind = OPT_BYTES, .dst = &o->max_pixels, .lo = 0, .hi = 1e9,
         .flags = OPT_ENV, .metavar = "N",
         .help = "largest width x height a request may ask for (1048576 = 1024x1024; 0 = the "
                 "engine's 2048x2048)"},
        {.name = "max-steps", .kind = OPT_INT, .dst = &o->max_steps, .lo = 1, .hi = GEN_MAX_STEPS,
         .flags = OPT_ENV, .metavar = "N", .help = "most steps a request may ask for (150)"},
        {.name = "device", .kind = OPT_STRING, .dst = &o->device, .metavar = "cpu|cuda|auto",
         .flags = OPT_ENV, .help = "compute backend (auto)"},
        {.name = "threads", .kind = OPT_INT, .dst = &o->threads, .lo = 1, .hi = 1024,
         .metavar = "N", .flags = OPT_ENV, .help = "compute threads per worker (cores / workers)"},
        {.name = "precision", .kind = OPT_CHOICE, .dst = &o->precision,
         .choices = "auto|fp32|bf16", .flags = OPT_ENV,
         .help = "CPU compute: bf16 (AMX / AVX512-BF16), fp32 (exact), auto (bf16 where the CPU "
                 "has it)"},
        {.name = "http-threads", .kind = OPT_INT, .dst = &o->http_threads, .lo = 1, .hi = 256,
         .metavar = "N", .flags = OPT_ENV, .help = "HTTP thread pool (cores)"},
        {.name = "default-size", .kind = OPT_SIZE, .dst = o->default_size, .lo = GEN_MIN_SIZE,
         .hi = GEN_MAX_SIZE, .metavar = "WxH", .flags = OPT_ENV,
         .help = "size when a request gives none (the model's: 512x512 for SD1.5)"},
        {.name = "lora-dir", .kind = OPT_STRING, .dst = &o->lora_dir, .metavar = "DIR",
         .flags = OPT_ENV, .help = "where requests' LoRA names are looked up (DATA/loras; read "
                                   "on every request, so new files need no restart)"},
        {.name = "lora-cache", .kind = OPT_BYTES, .dst = &o->lora_cache, .lo = 0, .hi = 1e15,
         .metavar = "N", .flags = OPT_ENV,
         .help = "merged LoRA weights each worker keeps, least recently used out first (4G)"},
        {.name = "default-steps", .kind = OPT_INT, .dst = &o->default_steps, .lo = 1,
         .hi = GEN_MAX_STEPS, .metavar = "N", .flags = OPT_ENV,
         .help = "steps when a request gives none (the model's: 20, SD-Turbo 1, LCM 4)"},
        {.name = "shutdown-grace", .kind = OPT_DURATION, .dst = &o->shutdown_grace_ms, .lo = 0,
         .hi = day, .metavar = "DUR", .flags = OPT_ENV,
         .help = "on SIGTERM, wait this long for running jobs, then requeue them (10s)"},
        {.name = "store-sync", .kind = OPT_CHOICE, .dst = &o->sync_full, .choices = "normal|full",
         .flags = OPT_ENV,
         .help = "normal (default): an accepted job survives any crash of the process (kill -9 "
                 "included), the last ones may be lost on power loss; full: fsync every commit, "
                 "survives power loss, slower job starts"},
        {.name = "max-body", .kind = OPT_BYTES, .dst = &o->body_max, .lo = 1024, .hi = 64 << 20,
         .metavar = "BYTES", .flags = OPT_ENV, .help = "request body cap (64k)"},
        {.name = "max-upload", .kind = OPT_BYTES, .dst = &o->upload_max, .lo = 1024,
         .hi = 1 << 30, .metavar = "BYTES", .flags = OPT_ENV,
         .help = "body cap of the routes that take images: POST /v1/uploads, /v1/images/edits, "
                 "/sdapi/v1/img2img, /generate-concept (20M)"},
        {.name = "upload-retention", .kind = OPT_DURATION, .dst = &o->upload_retention_ms,
         .lo = 0, .hi = 3650 * 86400000.0, .metavar = "DUR", .flags = OPT_ENV,
         .help = "uploads no pending job uses are removed after this (1d; 0 = keep)"},
        {.name = "conn-limit", .kind = OPT_INT, .dst = &o->conn_limit, .lo = 1, .hi = 1000000,
         .metavar = "N", .flags = OPT_ENV, .help = "open connections at most (1024)"},
        {.name = "per-ip-limit", .kind = OPT_INT, .dst = &o->per_ip_limit, .lo = 1,
         .hi = 1000000, .metavar = "N", .flags = OPT_ENV,
         .help = "open connections per client address (256)"},
        {.name = "conn-timeout", .kind = OPT_DURATION, .dst = &o->conn_timeout_ms, .lo = 0,
         .hi = day, .metavar = "DUR", .flags = OPT_ENV, .help = "idle connection timeout (30s)"},
        {.name = "webhook-secret", .kind = OPT_STRING, .dst = &o->webhook_secret,
         .metavar = "whsec_...", .flags = OPT_ENV,
         .help = "signs webhooks (Standard Webhooks; default: DATA/webhook.secret, made once)"},
        {.name = "webhook-retry", .kind = OPT_DURATION, .dst = &o->webhook_retry_ms, .lo = 0,
         .hi = 30 * day, .metavar = "DUR", .flags = OPT_ENV,
         .help = "retry a webhook delivery this long, then give it up (1h)"},
        {.name = "webhook-progress", .kind = OPT_DURATION, .dst = &o->webhook_progress_ms,
         .lo = 1000, .hi = day, .metavar = "DUR", .flags = OPT_ENV,
         .help = "a running job's progress webhook at most this often (5s)"},
        {.name = "webhook-allow", .kind = OPT_CALL, .call = add_hook_allow, .ctx = o,
         .metavar = "ADDR|CIDR|NAME", .flags = OPT_ENV | OPT_REPEAT,
         .help = "webhook targets allowed besides public addresses (e.g. 127.0.0.1, 10.0.0.0/8)"},
        {.name = "static-dir", .kind = OPT_STRING, .dst = &o->static_dir, .metavar = "DIR",
         .flags = OPT_ENV, .help = "the demo page's folder"},
        {.name = "openapi", .kind = OPT_STRING, .dst = &o->openapi, .metavar = "FILE",
         .flags = OPT_ENV, .help = "the API description served at /openapi.yaml"},
        {.name = "previews", .kind = OPT_CALL, .call = set_previews, .ctx = o,
         .metavar = "off|auto|N", .flags = OPT_ENV,
         .help = "live previews while a job samples: auto (default: about every "
                 "--preview-interval, at most 10% of sampling time), N (after every N-th step), "
                 "off. Needs a TAESD: without one, auto turns previews off with a log line and "
                 "an explicit value is an error"},
        {.name = "preview-interval", .kind = OPT_DURATION, .dst = &o->preview_interval_ms, .lo = 1,
         .hi = 3600000, .metavar = "DUR", .flags = OPT_ENV,
         .help = "auto previews: sampling time between two (500ms)"},
        {.name = "preview-size", .kind = OPT_INT, .dst = &o->preview_size, .lo = 16, .hi = 2048,
         .metavar = "N", .flags = OPT_ENV,
         .help = "previews' long side at most N pixels, by a whole factor (256)"},
        {.name = "preview-format", .kind = OPT_CHOICE, .dst = &o->preview_png,
         .choices = "jpeg|png", .flags = OPT_ENV,
         .help = "previews as JPEG (default, quality 80) or PNG"},
        {.name = "decoder", .kind = OPT_CHOICE, .dst = &o->decoder, .choices = "vae|taesd",
         .flags = OPT_ENV,
         .help = "decoder of requests that name none: vae (default, the full VAE) or taesd"},
        {.name = "no-calibrate", .kind = OPT_FLAG, .dst = &o->no_calibrate, .flags = OPT_ENV,
         .help = "skip the start-up step-time measurement"},
        {0}};
    /* clang-format on */
    const opts_cmd cmd = {.name = "easel serve",
                          .synopsis = "[options]",
                          .intro = "Each option also comes from EASEL_<NAME> (e.g. EASEL_PORT); "
                                   "flags win.",
                          .footer = "durations: 90, 90s, 250ms, 15m, 24h, 7d; sizes: 65536, 64k, "
                                    "20M",
                          .specs = specs};
    int r = opts_parse(&cmd, argc, argv);
    if (r) return r;
    if (!o->threads) o->threads = cores > o->workers ? (int)(cores / o->workers) : 1;
    return 0;
}

/* ---- the data dir ---- */

/* dir exists (made if need be) and a file can be created, written, synced
 * and removed in it: found before the model loads, naming the directory. */
static easel_err check_writable(const char *what, const char *dir) {
    if (fs_mkdir_p(dir)) return easel_wraperr(EASEL_EIO, "%s %s", what, dir);
    char probe[4200];
    snprintf(probe, sizeof probe, "%s/.easel-write-test.%ld", dir, (long)getpid());
    int fd = open(probe, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    int ok = fd >= 0 && write(fd, "x", 1) == 1 && fsync(fd) == 0;
    int err = errno;
    if (fd >= 0) close(fd), unlink(probe);
    if (!ok) return easel_seterr(EASEL_EIO, "%s %s is not writable: %s", what, dir, strerror(err));
    return EASEL_OK;
}

/* One server per data dir: an exclusive flock on DATA/easel.lock, held for
 * the process's life (released by the kernel when it dies, kill -9 too).
 * Two servers on one dir would requeue each other's jobs and run them twice. */
static easel_err lock_data_dir(const char *dir, int *fd_out) {
    char path[4200];
    snprintf(path, sizeof path, "%s/easel.lock", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return easel_seterr(EASEL_EIO, "cannot open %s: %s", path, strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB)) {
        int err = errno;
        char pid[32] = "";
        ssize_t n = pread(fd, pid, sizeof pid - 1, 0);
        if (n > 0) pid[strcspn(pid, "\n")] = 0;
        close(fd);
        if (err == EWOULDBLOCK)
            return easel_seterr(EASEL_EINVAL, "data dir %s is in use by pid %s", dir,
                                pid[0] ? pid : "(unknown)");
        return easel_seterr(EASEL_EIO, "cannot lock %s: %s", path, strerror(err));
    }
    char line[32];
    int n = snprintf(line, sizeof line, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) || pwrite(fd, line, (size_t)n, 0) != n)
        log_warn("serve: cannot write the pid into %s: %s", path, strerror(errno));
    *fd_out = fd;
    return EASEL_OK;
}

/* The default model: DATA/models/tiny, made by make-model's writer if missing. */
static easel_err default_model(const char *data_dir, char *path, size_t n) {
    snprintf(path, n, "%s/models/tiny", data_dir);
    struct stat sb;
    if (!stat(path, &sb)) return EASEL_OK;
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/models", data_dir);
    easel_err e = fs_mkdir_p(dir);
    if (e) return e;
    log_info("serve: no --model given; making a tiny random-weight model in %s", path);
    sd_arch a;
    sd_arch_tiny(&a);
    e = sd_make_model(&a, DT_F16, 0, path);
    return e ? easel_wraperr(e, "making the default model") : EASEL_OK;
}

/* ---- the model and the workers ---- */

static void runtime_free(serve_runtime *rt) {
    for (int i = 0; i < rt->n; i++) {
        sd_worker_free(rt->w ? rt->w[i] : NULL);
        if (rt->be) backend_destroy(rt->be[i + 1]);
    }
    sd_model_free(rt->model);
    lora_lib_free(rt->loras);
    if (rt->be) backend_destroy(rt->be[0]);
    free(rt->w);
    free(rt->be);
    uploads *up = rt->up; /* not the model's: closed by serve_run */
    memset(rt, 0, sizeof *rt);
    rt->up = up;
}

/* Worker backends are created on a thread whose nice value is WORKER_NICE, so
 * their compute threads inherit it (Linux: nice is per thread, inherited at
 * creation) and the HTTP threads win the CPU when both cores render. */
#define WORKER_NICE 10

typedef struct {
    const serve_opts *o;
    serve_runtime *rt;
    easel_err err;
    char msg[1024];
} backends_arg;

static void *create_worker_backends(void *arg) {
    backends_arg *a = arg;
    if (setpriority(PRIO_PROCESS, (id_t)gettid(), WORKER_NICE) != 0)
        log_warn("serve: setpriority: %s", strerror(errno));
    for (int i = 0; i < a->o->workers && !a->err; i++) {
        if (!(a->rt->be[i + 1] =
                  backend_create(a->o->device, a->o->threads, (backend_precision)a->o->precision)))
            a->err = EASEL_EDEVICE;
        else
            a->err = sd_worker_create(a->rt->model, a->rt->be[i + 1], &a->rt->w[i]);
    }
    if (a->err) snprintf(a->msg, sizeof a->msg, "%s", easel_errmsg());
    return NULL;
}

/* Live previews as the options ask, given whether the model has a TAESD:
 * asked for explicitly (or "decoder" taesd by default) without one is an error
 * at start; the default (auto) turns them off with one log line. */
static easel_err previews_setup(const serve_opts *o, const char *model, serve_runtime *rt) {
    int has = sd_model_has_taesd(rt->model);
    const char *how = "put a diffusers AutoencoderTiny (or taesd_decoder.safetensors) in the "
                      "model folder's taesd/, or give --taesd PATH";
    if (!has && o->decoder)
        return easel_seterr(EASEL_EINVAL, "--decoder taesd: the model %s has no TAESD (%s)", model,
                            how);
    gen_hooks_default(&rt->previews);
    rt->preview_png = o->preview_png;
    if (o->previews_off) {
        log_info("serve: live previews off (--previews off)");
        return EASEL_OK;
    }
    if (!has) {
        if (o->previews_given)
            return easel_seterr(EASEL_EINVAL, "--previews: the model %s has no TAESD (%s)", model,
                                how);
        log_info("serve: live previews off: the model has no TAESD (%s)", how);
        return EASEL_OK;
    }
    rt->previews_on = 1;
    rt->previews.preview_every = o->preview_every;
    rt->previews.preview_interval_ms = (double)o->preview_interval_ms;
    rt->previews.preview_max_side = o->preview_size;
    sd_model_info info;
    sd_model_get_info(rt->model, &info);
    if (o->preview_every)
        log_info("serve: live previews after every %d step(s), %s, long side <= %d (TAESD %s)",
                 o->preview_every, o->preview_png ? "PNG" : "JPEG", o->preview_size,
                 info.taesd_path);
    else
        log_info("serve: live previews about every %lld ms of sampling (at most %.0f%% of it), "
                 "%s, long side <= %d (TAESD %s)",
                 (long long)o->preview_interval_ms, 100 * GEN_PREVIEW_BUDGET,
                 o->preview_png ? "PNG" : "JPEG", o->preview_size, info.taesd_path);
    return EASEL_OK;
}

/* be[0] holds the model's weights (shared read-only); worker i runs on its own
 * backend be[i + 1] (its own thread pool, or CUDA stream), as bench does. */
static easel_err runtime_create(const serve_opts *o, const char *model, serve_runtime *rt) {
    memset(rt, 0, sizeof *rt);
    rt->be = calloc((size_t)o->workers + 1, sizeof *rt->be);
    rt->w = calloc((size_t)o->workers, sizeof *rt->w);
    if (!rt->be || !rt->w) return easel_seterr(EASEL_ENOMEM, "out of memory");
    rt->n = o->workers;
    /* the same precision as the workers: they read the weights it stores */
    if (!(rt->be[0] = backend_create(o->device, 1, (backend_precision)o->precision)))
        return EASEL_EDEVICE;
    easel_err e = sd_model_load_ex(model, rt->be[0], &o->load, &rt->model);
    if (e) return easel_wraperr(e, "loading %s", model);
    if ((e = previews_setup(o, model, rt))) return e;
    char ldir[4096];
    snprintf(ldir, sizeof ldir, "%s/loras", o->data_dir);
    if (!o->lora_dir && (e = fs_mkdir_p(ldir))) return easel_wraperr(e, "the LoRA directory");
    if ((e = lora_lib_create(o->lora_dir ? o->lora_dir : ldir, &rt->loras))) return e;
    sd_model_set_loras(rt->model, rt->loras);
    backends_arg a = {.o = o, .rt = rt};
    pthread_t t;
    if (pthread_create(&t, NULL, create_worker_backends, &a))
        return easel_seterr(EASEL_ENOMEM, "cannot start a thread");
    pthread_join(t, NULL);
    if (a.err) easel_seterr(a.err, "%s", a.msg); /* the message was set on the other thread */
    for (int i = 0; !a.err && i < o->workers; i++)
        sd_worker_set_lora_cache(rt->w[i], (size_t)o->lora_cache);
    return a.err;
}

/* The model's defaults and checks for a request (the HTTP layer's resolver;
 * called only once the server is ready, so the model is loaded). */
static easel_err resolve_params(void *ctx, gen_params *g, const char **field) {
    serve_runtime *rt = ctx;
    return sd_params_resolve(rt->model, g, g, field);
}

typedef struct {
    serve_runtime *rt;
    void *job; /* the scheduler's progress user: names the job */
} preview_ctx;

#define PREVIEW_JPEG_QUALITY 80

/* A preview from the pipeline, encoded and handed to the scheduler. */
static void on_preview(void *user, const gen_preview *pv) {
    preview_ctx *c = user;
    uint8_t *buf = NULL;
    size_t len = 0;
    image_format f = c->rt->preview_png ? IMG_PNG : IMG_JPEG;
    easel_err e = image_encode(f, pv->rgb, pv->width, pv->height, PREVIEW_JPEG_QUALITY, &buf, &len);
    if (!e)
        jobs_publish_preview(c->job, image_format_mime(f), buf, len, pv->step, pv->steps, pv->width,
                             pv->height);
    else
        log_warn("serve: encoding a preview: %s", easel_errmsg());
    free(buf);
}

static cJSON *list_loras(void *ctx) {
    serve_runtime *rt = ctx;
    return cli_loras_json(rt->loras, rt->model);
}

static easel_err run_job(void *ctx, int worker, const gen_params *p, job_progress_fn progress,
                         void *user, uint8_t **rgb, gen_timings *t) {
    serve_runtime *rt = ctx;
    gen_hooks h = rt->previews;
    preview_ctx pc = {rt, user};
    h.progress = progress, h.progress_user = user;
    if (rt->previews_on) h.preview = on_preview, h.preview_user = &pc;
    return sd_generate_hooks(rt->w[worker], p, &h, rgb, NULL, t);
}

/* A job's init image and mask from its uploads, at the job's size. */
static easel_err load_images(void *ctx, const job_params *p, uint8_t **rgb, uint8_t **mask) {
    serve_runtime *rt = ctx;
    upload_job j = {.init_image = p->init_image[0] ? p->init_image : NULL,
                    .mask = p->mask[0] ? p->mask : NULL,
                    .mask_from = (mask_source)p->mask_source,
                    .resize = (image_resize_mode)p->resize_mode,
                    .width = p->width,
                    .height = p->height,
                    .background = 0xFFFFFF};
    if (!rt->up) return easel_seterr(EASEL_EUNSUPPORTED, "init_image: no upload store");
    return uploads_prepare(rt->up, &j, rgb, mask);
}

static int upload_in_use(void *ctx, const char *id) {
    serve_runtime *rt = ctx;
    return rt->js ? jobs_upload_in_use(rt->js, id) : 1;
}

static easel_err write_png(void *ctx, const char *path, const uint8_t *rgb, int w, int h) {
    (void)ctx;
    return image_write_png(path, rgb, w, h);
}

static easel_err encode_png(void *ctx, const uint8_t *rgb, int w, int h, uint8_t **out,
                            size_t *len) {
    (void)ctx;
    return image_encode_png(rgb, w, h, out, len);
}

static int calib_step(void *user, int step, int steps, double step_ms) {
    (void)steps;
    double *best = user;
    if (step > 0 && (*best <= 0 || step_ms < *best)) *best = step_ms;
    return 0;
}

/* One short run so the first ETA comes from a measurement, not a constant:
 * at the default size when that is cheap, else at 256x256 (scaled by pixels). */
static double calibrate(serve_runtime *rt, const serve_opts *o, int *w, int *h) {
    gen_params p;
    gen_params_default(&p);
    p.prompt = "calibration";
    sd_model_info info;
    sd_model_get_info(rt->model, &info);
    int dw = o->default_size[0] > 0 ? o->default_size[0] : info.default_width;
    int dh = o->default_size[1] > 0 ? o->default_size[1] : info.default_height;
    int small = (double)dw * dh <= 256.0 * 256.0;
    p.width = *w = small ? dw : 256;
    p.height = *h = small ? dh : 256;
    p.steps = 2;
    double best = 0;
    uint8_t *rgb = NULL;
    gen_timings t;
    if (sd_generate(rt->w[0], &p, calib_step, &best, &rgb, &t)) {
        log_warn("serve: calibration run failed: %s", easel_errmsg());
        return 0;
    }
    free(rgb);
    return best;
}

/* ---- signals ---- */

/* SIGTERM/SIGINT may land on any thread (some, like OpenBLAS's, exist before
 * main), so a handler, not a blocked mask, turns them into a byte on a pipe. */
static int stop_pipe[2] = {-1, -1};

static void on_stop_signal(int sig) {
    unsigned char b = (unsigned char)sig;
    ssize_t n = write(stop_pipe[1], &b, 1);
    (void)n;
}

static int install_stop_signals(void) {
    if (pipe(stop_pipe)) return -1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGTERM, &sa, NULL) || sigaction(SIGINT, &sa, NULL)) return -1;
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

/* Waits for a stop signal, or (done != NULL) until *done becomes nonzero.
 * Returns the signal number, or 0 when done. */
static int wait_for(atomic_int *done) {
    struct pollfd pf = {stop_pipe[0], POLLIN, 0};
    for (;;) {
        if (done && atomic_load(done)) return 0;
        int n = poll(&pf, 1, done ? 50 : -1);
        if (n < 0 && errno == EINTR) continue;
        if (n > 0 && pf.revents) {
            unsigned char b = 0;
            if (read(stop_pipe[0], &b, 1) == 1) return b ? b : SIGTERM;
        }
    }
}

/* ---- start-up on a thread: the model, the workers, calibration ---- */

typedef struct {
    const serve_opts *o;
    serve_runtime *rt;
    char model_path[4096];
    easel_err err;
    char msg[1024];
    double calib_ms;
    int calib_w, calib_h;
    atomic_int done;
} loader;

static void *loader_main(void *arg) {
    loader *l = arg;
    easel_err e = EASEL_OK;
    if (!l->o->model) e = default_model(l->o->data_dir, l->model_path, sizeof l->model_path);
    if (!e) e = runtime_create(l->o, l->model_path, l->rt);
    if (!e && !l->o->no_calibrate) l->calib_ms = calibrate(l->rt, l->o, &l->calib_w, &l->calib_h);
    l->err = e;
    if (e) snprintf(l->msg, sizeof l->msg, "%s", easel_errmsg());
    atomic_store(&l->done, 1);
    return NULL;
}

/* ---- the command ---- */

/* The name clients call the model by: the folder's or file's base name. */
static const char *model_id(const char *path, char *id, size_t cap) {
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/')
        n--;
    size_t b = n;
    while (b > 0 && path[b - 1] != '/')
        b--;
    snprintf(id, cap, "%.*s", (int)(n - b), path + b);
    char *dot = strstr(id, ".safetensors");
    if (dot && !dot[12]) *dot = 0;
    return id;
}

static void server_config_from(const serve_opts *o, const char *images, const char *desc,
                               serve_runtime *rt, server_config *c) {
    memset(c, 0, sizeof *c);
    c->host = o->host, c->port = o->port, c->threads = o->http_threads;
    c->conn_limit = o->conn_limit, c->per_ip_limit = o->per_ip_limit;
    c->conn_timeout_s = (int)((o->conn_timeout_ms + 999) / 1000), c->conn_memory = 128 * 1024;
    c->body_max = (size_t)o->body_max;
    c->token = o->token, c->cors_origin = o->cors;
    for (int i = 0; i < o->n_allowed; i++)
        c->allowed_hosts[i] = o->allowed[i];
    c->n_allowed_hosts = o->n_allowed;
    for (int i = 0; i < o->n_hook_allow; i++)
        c->webhook_allow[i] = o->hook_allow[i];
    c->n_webhook_allow = o->n_hook_allow;
    c->static_dir = o->static_dir, c->openapi_path = o->openapi, c->images_dir = images;
    params_policy_default(&c->policy);
    c->policy.width = o->default_size[0], c->policy.height = o->default_size[1];
    c->policy.steps = o->default_steps;
    c->policy.max_pixels = o->max_pixels;
    c->policy.max_steps = o->max_steps;
    c->policy.resolve = resolve_params;
    c->policy.resolve_ctx = rt;
    c->policy.decoder = o->decoder ? GEN_DECODER_TAESD : GEN_DECODER_VAE;
    c->loras = list_loras;
    c->loras_ctx = rt;
    c->uploads = rt->up;
    c->upload_max = (size_t)o->upload_max;
    c->model_desc = desc;
}

static int is_postgres(const char *store) {
    return !strncmp(store, "postgres://", 11) || !strncmp(store, "postgresql://", 13);
}

/* The URL key on a shared store: one for every node (a URL signed by one
 * is served by any), made by the first node to start. */
static easel_err shared_url_key(store *st, unsigned char key[32]) {
    unsigned char mine[32];
    char hex[65], got[80];
    if (getrandom(mine, 32, 0) != 32)
        return easel_seterr(EASEL_EIO, "cannot draw a random key: %s", strerror(errno));
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", mine[i]);
    easel_err e = store_shared_secret(st, "url_key", hex, got, sizeof got);
    if (e) return e;
    for (int i = 0; i < 32; i++) {
        unsigned v;
        if (strlen(got) != 64 || sscanf(got + 2 * i, "%2x", &v) != 1)
            return easel_seterr(EASEL_EFORMAT, "the store's url_key is not 64 hex digits");
        key[i] = (unsigned char)v;
    }
    return EASEL_OK;
}

/* DATA/url.key: the key that signs image URLs (OpenAI's `url` answers), made
 * once, so URLs handed out stay valid across restarts until they expire. */
static easel_err url_key(const char *data_dir, unsigned char key[32]) {
    char path[4200];
    snprintf(path, sizeof path, "%s/url.key", data_dir);
    FILE *f = fopen(path, "rb");
    if (f) {
        size_t n = fread(key, 1, 32, f);
        fclose(f);
        if (n == 32) return EASEL_OK;
    }
    if (getrandom(key, 32, 0) != 32)
        return easel_seterr(EASEL_EIO, "cannot draw a random key: %s", strerror(errno));
    easel_err e = fs_write_file(path, key, 32);
    if (!e && chmod(path, 0600)) log_warn("serve: chmod %s: %s", path, strerror(errno));
    return e;
}

/* The webhook secret: --webhook-secret, else DATA/webhook.secret (made once,
 * 0600), so a receiver configured with it keeps verifying across restarts. */
static easel_err webhook_secret(const serve_opts *o, store *st, char *out, size_t cap) {
    if (o->webhook_secret) {
        snprintf(out, cap, "%s", o->webhook_secret);
        return EASEL_OK;
    }
    if (store_shared(st)) { /* one secret for every node: receivers know one */
        char mine[128];
        if (webhooks_new_secret(mine, sizeof mine))
            return easel_seterr(EASEL_EIO, "cannot make a secret");
        return store_shared_secret(st, "webhook_secret", mine, out, cap);
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/webhook.secret", o->data_dir);
    FILE *f = fopen(path, "rb");
    if (f) {
        size_t n = fread(out, 1, cap - 1, f);
        fclose(f);
        out[n] = 0;
        out[strcspn(out, "\r\n")] = 0;
        if (out[0]) return EASEL_OK;
    }
    if (webhooks_new_secret(out, cap)) return easel_seterr(EASEL_EIO, "cannot make a secret");
    easel_err e = fs_write_file(path, out, strlen(out));
    if (!e && chmod(path, 0600)) log_warn("serve: chmod %s: %s", path, strerror(errno));
    if (!e) log_info("serve: made a webhook secret in %s (give it to your receivers)", path);
    return e;
}

/* This node's name on a shared store: --node-id, else HOST-PID-RANDOM. */
static easel_err node_name(const serve_opts *o, char *out, size_t cap) {
    if (o->node_id) {
        size_t n = strlen(o->node_id);
        if (!n || n > 48 ||
            strspn(o->node_id, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                               "0123456789._:-") != n)
            return easel_seterr(EASEL_EINVAL, "--node-id: 1 to 48 of A-Z a-z 0-9 . _ : -");
        snprintf(out, cap, "%s", o->node_id);
        return EASEL_OK;
    }
    char host[64] = "localhost";
    gethostname(host, sizeof host - 1);
    host[strspn(host, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-")] = 0;
    unsigned r = 0;
    if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r) r = (unsigned)time(NULL);
    snprintf(out, cap, "%.32s-%ld-%04x", host[0] ? host : "node", (long)getpid(), r & 0xffff);
    return EASEL_OK;
}

/* Data dir checks, lock, store. Every failure here is the operator's to
 * fix: exit 2, naming the directory (or the database). */
static easel_err open_data(const serve_opts *o, const char *node, char *images, size_t n,
                           int *lock_fd, unsigned char key[32], store **st) {
    int pg = is_postgres(o->store);
    if (!pg && strcmp(o->store, "sqlite"))
        return easel_seterr(EASEL_EINVAL, "--store: sqlite or a postgres:// URL, not '%s'",
                            o->store);
    snprintf(images, n, "%s", o->image_dir ? o->image_dir : "");
    if (!o->image_dir) snprintf(images, n, "%s/images", o->data_dir);
    easel_err e = check_writable("data dir", o->data_dir);
    if (!e) e = lock_data_dir(o->data_dir, lock_fd);
    if (!e) e = check_writable("images dir", images);
    if (e) return e;
    if (!pg) {
        if ((e = url_key(o->data_dir, key))) return e;
        char path[4200];
        snprintf(path, sizeof path, "%s/easel.db", o->data_dir);
        return store_sqlite_open(path, o->sync_full, st);
    }
    char mid[128];
    model_id(o->model ? o->model : "tiny", mid, sizeof mid);
    store_pg_config pc = {.url = o->store, .node = node, .model = mid, .images = !o->image_dir};
    e = store_pg_open(&pc, (int)o->store_wait_ms, st);
    if (!e) e = shared_url_key(*st, key);
    if (!e)
        log_info("serve: store: PostgreSQL as node %s (model %s; images in %s)", node, mid,
                 o->image_dir ? o->image_dir : "the database");
    return e;
}

static int serve_run(const serve_opts *o) {
    char images[4096], desc[4400];
    store *st = NULL;
    server *srv = NULL;
    jobs *js = NULL;
    webhooks *hooks = NULL;
    serve_runtime rt = {0};
    int rc = 1, lock_fd = -1;
    pthread_t lt;
    loader l = {.o = o, .rt = &rt};
    snprintf(l.model_path, sizeof l.model_path, "%s", o->model ? o->model : "");
    {
        char id[128];
        snprintf(desc, sizeof desc, "loading %s",
                 o->model ? model_id(o->model, id, sizeof id) : "(default tiny model)");
    }
    unsigned char key[32];
    char node[128], secret[256];
    /* the store is used directly only here, before the scheduler owns it */
    if (node_name(o, node, sizeof node) ||
        open_data(o, node, images, sizeof images, &lock_fd, key, &st) ||
        webhook_secret(o, st, secret, sizeof secret)) {
        rc = easel_errmsg()[0] && strstr(easel_errmsg(), "cannot connect") ? 1 : 2;
        goto fail;
    }
    {
        char udir[4200];
        snprintf(udir, sizeof udir, "%s/uploads", o->data_dir);
        uploads_config uc = {.dir = udir,
                             .retention_ms = o->upload_retention_ms,
                             .in_use = upload_in_use,
                             .in_use_ctx = &rt,
                             .store = st};
        if (uploads_open(&uc, &rt.up)) {
            rc = 2;
            goto fail;
        }
    }
    server_config sc;
    server_config_from(o, images, desc, &rt, &sc);
    memcpy(sc.url_key, key, sizeof key);
    if (server_start(&sc, &srv)) goto fail;
    log_info("serve: listening on http://%s:%d (not ready: loading the model)", o->host,
             server_port(srv));
    fprintf(stderr, "easel serve: port %d\n", server_port(srv));
    if (pthread_create(&lt, NULL, loader_main, &l)) {
        easel_seterr(EASEL_EIO, "cannot start the model loader");
        goto fail;
    }
    int sig = wait_for(&l.done);
    if (sig) { /* stopped while loading: nothing runs yet, the store is consistent */
        log_info("serve: %s during start-up: stopping without waiting for the model",
                 sig == SIGINT ? "SIGINT" : "SIGTERM");
        server_stop(srv);
        store_close(st);
        fflush(NULL);
        _exit(0); /* the loader thread is mid-load: do not run exit handlers under it */
    }
    pthread_join(lt, NULL);
    rt.up = sc.uploads; /* runtime_create started from a cleared runtime */
    if (l.err) {
        easel_seterr(l.err, "%s", l.msg);
        rc = 2; /* a missing or corrupt model: as a usage error */
        goto fail;
    }
    job_runner runner = {run_job, write_png, &rt, encode_png, load_images};
    char mid[128];
    model_id(l.model_path, mid, sizeof mid);
    jobs_config jc = {.worker_nice = WORKER_NICE,
                      .workers = o->workers,
                      .queue_max = o->queue_max,
                      .max_jobs = o->max_jobs,
                      .job_timeout_s = (int)((o->job_timeout_ms + 999) / 1000),
                      .retention_ms = o->retention_ms,
                      .max_attempts = 3,
                      .shutdown_grace_s = (int)((o->shutdown_grace_ms + 999) / 1000),
                      .images_dir = images,
                      .node = node,
                      .lease_ms = o->lease_ms,
                      .model = mid,
                      .webhook_progress_ms = o->webhook_progress_ms};
    if (jobs_create(&jc, st, &runner, &js)) goto fail;
    if (l.calib_ms > 0) {
        jobs_observe_step(js, l.calib_w, l.calib_h, l.calib_ms);
        log_info("serve: calibration: %.1f ms per step at %dx%d", l.calib_ms, l.calib_w, l.calib_h);
    }
    if (jobs_start(js)) goto fail;
    webhooks_config wc = {.secret = secret, .retry_ms = o->webhook_retry_ms, .owner = node};
    for (int i = 0; i < o->n_hook_allow; i++)
        wc.allow[i] = o->hook_allow[i];
    wc.n_allow = o->n_hook_allow;
    if (webhooks_start(&wc, js, &hooks)) {
        rc = 2;
        goto fail;
    }
    /* /healthz is open: it names the model, not where it lives (the log says that) */
    char id[128];
    model_id(l.model_path, id, sizeof id);
    snprintf(desc, sizeof desc, "%s (%s, %.1f MiB)", id, sd_model_arch(rt.model),
             sd_model_weight_bytes(rt.model) / 1048576.0);
    server_set_model(srv, desc);
    sd_model_info info;
    sd_model_get_info(rt.model, &info);
    server_set_model_info(srv, id, &info);
    rt.js = js;
    if (info.random_weights)
        log_warn("serve: %s has random weights (easel make-model): its images are noise; "
                 "see README -> Real models",
                 l.model_path);
    server_set_jobs(srv, js);
    char path[256] = "f16 (cuda)";
    if (rt.be[0]->dev == DEV_CPU)
        backend_cpu_describe(backend_cpu_precision(rt.be[0]), path, sizeof path);
    log_info("serve: ready: model %s (%s, %.1f MiB), %d workers x %d threads, %s", l.model_path,
             sd_model_arch(rt.model), sd_model_weight_bytes(rt.model) / 1048576.0, o->workers,
             o->threads, path);
    sig = wait_for(NULL);
    log_info("serve: %s: stopping (running jobs get %lld s, then go back to the queue)",
             sig == SIGINT ? "SIGINT" : "SIGTERM", (long long)(o->shutdown_grace_ms / 1000));
    rc = 0;
    goto out;
fail:
    log_error("serve: %s", easel_errmsg());
    fprintf(stderr, "easel serve: %s\n", easel_errmsg());
out:
    webhooks_stop(hooks); /* pending deliveries stay in the outbox for the next start */
    jobs_stop(js);        /* new jobs get 503 from here on; status reads still work */
    server_stop(srv);     /* ends event streams, closes connections */
    jobs_free(js);
    uploads_close(rt.up); /* after server_stop: no handler uses it */
    rt.up = NULL;
    runtime_free(&rt);
    store_close(st);
    if (lock_fd >= 0) close(lock_fd);
    if (!rc) log_info("serve: stopped cleanly");
    return rc;
}

int cmd_serve(int argc, char **argv) {
    serve_opts o;
    int rc = parse_args(argc, argv, &o);
    if (rc) return rc == 1 ? 0 : 2;
    if (backend_cpu_check_precision((backend_precision)o.precision))
        return fprintf(stderr, "easel serve: %s\n", easel_errmsg()), 2;
    const char *lvl = getenv("EASEL_LOG");
    if (lvl && log_parse_level(lvl) >= 0) log_set_level((log_level)log_parse_level(lvl));
    if (install_stop_signals()) {
        fprintf(stderr, "easel serve: cannot install signal handlers: %s\n", strerror(errno));
        return 1;
    }
    return serve_run(&o);
}
