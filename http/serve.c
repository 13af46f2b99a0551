/* `easel serve`: options (flags over EASEL_* environment variables over
 * defaults), the data dir, the model (loaded once; a tiny random model is
 * made on first run when none is given), one pipeline worker per --workers,
 * the scheduler, the HTTP server, and a graceful stop on SIGTERM/SIGINT. */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../engine/cli.h"
#include "../engine/image.h"
#include "../engine/log.h"
#include "server.h"

typedef struct {
    const char *model, *host, *data_dir, *token, *cors, *device, *static_dir, *openapi;
    int port, workers, queue_max, threads, http_threads, job_timeout_s, shutdown_grace_s;
    int default_w, default_h, default_steps, calibrate, sync_full;
    int conn_limit, per_ip_limit, conn_timeout_s;
    long body_max;
    int64_t retention_ms;
} serve_opts;

typedef struct {
    sd_model *model;
    backend **be;
    sd_worker **w;
    int n;
} serve_runtime;

static void usage(FILE *f) {
    fprintf(
        f,
        "usage: easel serve [options]   (each option also from EASEL_<NAME>, e.g. EASEL_PORT)\n"
        "  --model PATH         diffusers folder or .safetensors (default: a tiny random model\n"
        "                       made under DATA/models/tiny on first run)\n"
        "  --host ADDR          listen address (127.0.0.1)\n"
        "  --port N             port (8080; 0 = any free port, printed at start)\n"
        "  --data-dir DIR       job store and images (./data)\n"
        "  --workers N          jobs processing at once (2)\n"
        "  --queue-max N        pending jobs accepted at most; then 429 (256)\n"
        "  --token TOKEN        require 'Authorization: Bearer TOKEN' on the API\n"
        "  --cors-origin ORIGIN send CORS headers for this origin ('*' for any)\n"
        "  --retention DUR      delete finished jobs and images after DUR (24h; 0 = keep)\n"
        "  --job-timeout DUR    fail a job without step progress for DUR (600s; 0 = off)\n"
        "  --device cpu|cuda|auto   compute backend (auto)\n"
        "  --threads N          compute threads per worker (cores / workers)\n"
        "  --http-threads N     HTTP thread pool (cores)\n"
        "  --default-size WxH   size when a request gives none (512x512)\n"
        "  --default-steps N    steps when a request gives none (20)\n"
        "  --shutdown-grace DUR on SIGTERM, wait this long for running jobs, then requeue (10s)\n"
        "  --store-sync full|normal  fsync every job-store commit (full: survives power loss)\n"
        "                       or not (normal, the default: survives any crash of the process,\n"
        "                       kill -9 included; only a power loss may drop the last commits)\n"
        "  --max-body BYTES     request body cap (65536)\n"
        "  --conn-limit N  --per-ip-limit N  --conn-timeout DUR   connection limits\n"
        "  --static-dir DIR  --openapi FILE   the demo page and API description\n"
        "  --no-calibrate       skip the start-up step-time measurement\n"
        "durations: 90, 90s, 15m, 24h, 7d\n");
}

/* "90", "90s", "15m", "24h", "7d" -> milliseconds; -1 if malformed. */
static int64_t parse_duration(const char *s) {
    char *end;
    double v = strtod(s, &end);
    if (end == s || v < 0) return -1;
    double mult = 1000;
    if (!strcmp(end, "ms"))
        mult = 1;
    else if (!strcmp(end, "m"))
        mult = 60e3;
    else if (!strcmp(end, "h"))
        mult = 3600e3;
    else if (!strcmp(end, "d"))
        mult = 86400e3;
    else if (*end && strcmp(end, "s"))
        return -1;
    return (int64_t)(v * mult);
}

static int parse_int(const char *s, int lo, int hi, int *out) {
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < lo || v > hi) return -1;
    *out = (int)v;
    return 0;
}

static void defaults(serve_opts *o) {
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    memset(o, 0, sizeof *o);
    o->host = "127.0.0.1", o->port = 8080, o->data_dir = "data", o->device = "auto";
    o->workers = 2, o->queue_max = 256, o->retention_ms = 24 * 3600e3, o->job_timeout_s = 600;
    o->http_threads = cores > 0 ? (int)cores : 2;
    o->default_w = o->default_h = 512, o->default_steps = 20, o->calibrate = 1;
    o->conn_limit = 1024, o->per_ip_limit = 256, o->conn_timeout_s = 30, o->body_max = 65536;
    o->shutdown_grace_s = 10, o->sync_full = 0;
    o->static_dir = EASEL_SOURCE_DIR "/http/static";
    o->openapi = EASEL_SOURCE_DIR "/docs/openapi.yaml";
}

/* Applies one option; returns 0, or -1 with a message printed. */
static int apply(serve_opts *o, const char *name, const char *v) {
    int64_t d;
    int bad = 0;
    if (!strcmp(name, "model"))
        o->model = v;
    else if (!strcmp(name, "host"))
        o->host = v;
    else if (!strcmp(name, "data-dir"))
        o->data_dir = v;
    else if (!strcmp(name, "token"))
        o->token = v;
    else if (!strcmp(name, "cors-origin"))
        o->cors = v;
    else if (!strcmp(name, "device"))
        o->device = v;
    else if (!strcmp(name, "static-dir"))
        o->static_dir = v;
    else if (!strcmp(name, "openapi"))
        o->openapi = v;
    else if (!strcmp(name, "store-sync"))
        bad = strcmp(v, "full") && strcmp(v, "normal"), o->sync_full = !strcmp(v, "full");
    else if (!strcmp(name, "port"))
        bad = parse_int(v, 0, 65535, &o->port);
    else if (!strcmp(name, "workers"))
        bad = parse_int(v, 1, 64, &o->workers);
    else if (!strcmp(name, "queue-max"))
        bad = parse_int(v, 1, 1000000, &o->queue_max);
    else if (!strcmp(name, "threads"))
        bad = parse_int(v, 1, 1024, &o->threads);
    else if (!strcmp(name, "http-threads"))
        bad = parse_int(v, 1, 256, &o->http_threads);
    else if (!strcmp(name, "default-steps"))
        bad = parse_int(v, 1, GEN_MAX_STEPS, &o->default_steps);
    else if (!strcmp(name, "conn-limit"))
        bad = parse_int(v, 1, 1000000, &o->conn_limit);
    else if (!strcmp(name, "per-ip-limit"))
        bad = parse_int(v, 1, 1000000, &o->per_ip_limit);
    else if (!strcmp(name, "max-body")) {
        int b;
        bad = parse_int(v, 1024, 64 << 20, &b);
        o->body_max = b;
    } else if (!strcmp(name, "default-size")) {
        int w = 0, h = 0;
        bad = sscanf(v, "%dx%d", &w, &h) != 2 && (h = w = atoi(v)) <= 0;
        bad = bad || w % 8 || h % 8 || w < GEN_MIN_SIZE || h < GEN_MIN_SIZE || w > GEN_MAX_SIZE ||
              h > GEN_MAX_SIZE;
        o->default_w = w, o->default_h = h;
    } else if (!strcmp(name, "retention")) {
        bad = (d = parse_duration(v)) < 0;
        o->retention_ms = d;
    } else if (!strcmp(name, "job-timeout") || !strcmp(name, "shutdown-grace") ||
               !strcmp(name, "conn-timeout")) {
        bad = (d = parse_duration(v)) < 0 || d > 86400000LL * 365;
        int s = (int)((d + 999) / 1000);
        if (name[0] == 'j')
            o->job_timeout_s = s;
        else if (name[0] == 's')
            o->shutdown_grace_s = s;
        else
            o->conn_timeout_s = s;
    } else {
        fprintf(stderr, "easel serve: unknown option '--%s'\n", name);
        return -1;
    }
    if (bad) fprintf(stderr, "easel serve: --%s: invalid value '%s'\n", name, v);
    return bad ? -1 : 0;
}

static const char *env_names[] = {
    "model",        "host",         "port",          "data-dir",       "workers",    "queue-max",
    "token",        "cors-origin",  "retention",     "job-timeout",    "device",     "threads",
    "http-threads", "default-size", "default-steps", "shutdown-grace", "max-body",   "conn-limit",
    "per-ip-limit", "conn-timeout", "static-dir",    "openapi",        "store-sync", NULL};

static int from_env(serve_opts *o) {
    for (int i = 0; env_names[i]; i++) {
        char var[64] = "EASEL_";
        size_t k = 6;
        for (const char *p = env_names[i]; *p && k < sizeof var - 1; p++)
            var[k++] = *p == '-' ? '_' : (char)(*p - 32 * (*p >= 'a' && *p <= 'z'));
        var[k] = 0;
        const char *v = getenv(var);
        if (v && *v && apply(o, env_names[i], v)) return -1;
    }
    return 0;
}

/* 0 ok, 1 help shown, 2 usage error. */
static int parse_args(int argc, char **argv, serve_opts *o) {
    defaults(o);
    if (from_env(o)) return 2;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) return usage(stdout), 1;
        if (!strcmp(a, "--no-calibrate")) {
            o->calibrate = 0;
            continue;
        }
        if (strncmp(a, "--", 2) || i + 1 >= argc) {
            fprintf(stderr, "easel serve: %s '%s'\n",
                    strncmp(a, "--", 2) ? "unexpected argument" : "missing value for", a);
            return 2;
        }
        if (apply(o, a + 2, argv[++i])) return 2;
    }
    if (!o->threads) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        o->threads = cores > o->workers ? (int)(cores / o->workers) : 1;
    }
    return 0;
}

/* ---- the model and the workers ---- */

static int mkdir_p(const char *dir) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", dir);
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir(buf, 0755) && errno != EEXIST) return -1;
            *p = '/';
        }
    return mkdir(buf, 0755) && errno != EEXIST ? -1 : 0;
}

/* The default model: DATA/models/tiny, made with `easel make-model` if missing. */
static easel_err default_model(const char *data_dir, char *path, size_t n) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/models", data_dir);
    snprintf(path, n, "%s/models/tiny", data_dir);
    struct stat sb;
    if (!stat(path, &sb)) return EASEL_OK;
    if (mkdir_p(dir)) return easel_seterr(EASEL_EIO, "cannot create %s: %s", dir, strerror(errno));
    log_info("serve: no --model given; making a tiny random-weight model in %s", path);
    char *argv[] = {"make-model", "--arch", "tiny", "--out", path, NULL};
    if (cmd_make_model(5, argv)) return easel_seterr(EASEL_EIO, "easel make-model failed");
    return EASEL_OK;
}

static void runtime_free(serve_runtime *rt) {
    for (int i = 0; i < rt->n; i++) {
        sd_worker_free(rt->w ? rt->w[i] : NULL);
        if (rt->be) backend_destroy(rt->be[i + 1]);
    }
    sd_model_free(rt->model);
    if (rt->be) backend_destroy(rt->be[0]);
    free(rt->w);
    free(rt->be);
    memset(rt, 0, sizeof *rt);
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
        if (!(a->rt->be[i + 1] = backend_auto_create(a->o->device, a->o->threads)))
            a->err = EASEL_EDEVICE;
        else
            a->err = sd_worker_create(a->rt->model, a->rt->be[i + 1], &a->rt->w[i]);
    }
    if (a->err) snprintf(a->msg, sizeof a->msg, "%s", easel_errmsg());
    return NULL;
}

/* be[0] holds the model's weights (shared read-only); worker i runs on its own
 * backend be[i + 1] (its own thread pool, or CUDA stream), as bench does. */
static easel_err runtime_create(const serve_opts *o, const char *model, serve_runtime *rt) {
    memset(rt, 0, sizeof *rt);
    rt->be = calloc((size_t)o->workers + 1, sizeof *rt->be);
    rt->w = calloc((size_t)o->workers, sizeof *rt->w);
    if (!rt->be || !rt->w) return easel_seterr(EASEL_ENOMEM, "out of memory");
    rt->n = o->workers;
    if (!(rt->be[0] = backend_auto_create(o->device, 1))) return EASEL_EDEVICE;
    easel_err e = sd_model_load(model, rt->be[0], &rt->model);
    if (e) return easel_wraperr(e, "loading %s", model);
    backends_arg a = {.o = o, .rt = rt};
    pthread_t t;
    if (pthread_create(&t, NULL, create_worker_backends, &a))
        return easel_seterr(EASEL_ENOMEM, "cannot start a thread");
    pthread_join(t, NULL);
    if (a.err) easel_seterr(a.err, "%s", a.msg); /* the message was set on the other thread */
    return a.err;
}

static easel_err run_job(void *ctx, int worker, const gen_params *p, job_progress_fn progress,
                         void *user, uint8_t **rgb, gen_timings *t) {
    serve_runtime *rt = ctx;
    const char *field = NULL;
    easel_err e = gen_params_validate(p, &field);
    if (e) return e;
    return sd_generate(rt->w[worker], p, progress, user, rgb, t);
}

static easel_err write_png(void *ctx, const char *path, const uint8_t *rgb, int w, int h) {
    (void)ctx;
    return image_write_png(path, rgb, w, h);
}

typedef struct {
    double best;
} calib;

static int calib_step(void *user, int step, int steps, double step_ms) {
    (void)step, (void)steps;
    calib *c = user;
    if (c->best <= 0 || step_ms < c->best) c->best = step_ms;
    return 0;
}

/* One short run so the first ETA comes from a measurement, not a constant. */
static void calibrate(serve_runtime *rt, jobs *js, const serve_opts *o) {
    gen_params p;
    gen_params_default(&p);
    p.prompt = "calibration";
    /* at the default size when that is cheap, else at 256x256 (scaled by pixels) */
    int small = (double)o->default_w * o->default_h <= 256.0 * 256.0;
    p.width = small ? o->default_w : 256;
    p.height = small ? o->default_h : 256;
    p.steps = 2;
    p.guidance = 7.5f;
    calib c = {0};
    uint8_t *rgb = NULL;
    gen_timings t;
    if (sd_generate(rt->w[0], &p, calib_step, &c, &rgb, &t)) {
        log_warn("serve: calibration run failed: %s", easel_errmsg());
        return;
    }
    free(rgb);
    jobs_observe_step(js, p.width, p.height, c.best);
    log_info("serve: calibration: %.1f ms per step at %dx%d", c.best, p.width, p.height);
}

/* ---- the command ---- */

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

static int wait_for_signal(void) {
    unsigned char b = 0;
    while (read(stop_pipe[0], &b, 1) != 1) {
    }
    return b;
}

/* A crash mid-write leaves at most a temp file (.<name>.tmp.<pid>.<rand>, see
 * engine/image.c); no worker runs yet, so every one of them is stale. */
static void remove_stale_temps(const char *images) {
    DIR *d = opendir(images);
    if (!d) return;
    struct dirent *de;
    char path[4096 + 512];
    while ((de = readdir(d)))
        if (de->d_name[0] == '.' && strstr(de->d_name, ".tmp.")) {
            snprintf(path, sizeof path, "%s/%s", images, de->d_name);
            if (!unlink(path)) log_info("serve: removed a partial image %s", path);
        }
    closedir(d);
}

static easel_err open_store(const serve_opts *o, char *images, size_t n, store **st) {
    char path[4096];
    snprintf(images, n, "%s/images", o->data_dir);
    if (mkdir_p(images))
        return easel_seterr(EASEL_EIO, "cannot create %s: %s", images, strerror(errno));
    remove_stale_temps(images);
    snprintf(path, sizeof path, "%s/easel.db", o->data_dir);
    easel_err e = store_open(path, st);
    if (!e && !o->sync_full) e = store_set_sync(*st, 0);
    return e;
}

static void server_config_from(const serve_opts *o, const char *images, const char *desc,
                               server_config *c) {
    memset(c, 0, sizeof *c);
    c->host = o->host, c->port = o->port, c->threads = o->http_threads;
    c->conn_limit = o->conn_limit, c->per_ip_limit = o->per_ip_limit;
    c->conn_timeout_s = o->conn_timeout_s, c->conn_memory = 128 * 1024;
    c->body_max = (size_t)o->body_max;
    c->token = o->token, c->cors_origin = o->cors;
    c->static_dir = o->static_dir, c->openapi_path = o->openapi, c->images_dir = images;
    c->defaults = (params_defaults){o->default_w, o->default_h, o->default_steps, 7.5f};
    c->model_desc = desc;
}

static int serve_run(const serve_opts *o) {
    char images[4096], model_path[4096], desc[4200];
    store *st = NULL;
    server *srv = NULL;
    jobs *js = NULL;
    serve_runtime rt = {0};
    int rc = 1;
    snprintf(desc, sizeof desc, "loading %s", o->model ? o->model : "(default tiny model)");
    if (open_store(o, images, sizeof images, &st)) goto fail;
    server_config sc;
    server_config_from(o, images, desc, &sc);
    if (server_start(&sc, &srv)) goto fail;
    log_info("serve: listening on http://%s:%d (not ready: loading the model)", o->host,
             server_port(srv));
    fprintf(stderr, "easel serve: port %d\n", server_port(srv));
    snprintf(model_path, sizeof model_path, "%s", o->model ? o->model : "");
    if (!o->model && default_model(o->data_dir, model_path, sizeof model_path)) goto fail;
    if (runtime_create(o, model_path, &rt)) {
        rc = 2; /* a missing or corrupt model: as a usage error */
        goto fail;
    }
    job_runner runner = {run_job, write_png, &rt};
    jobs_config jc = {.worker_nice = WORKER_NICE,
                      .workers = o->workers,
                      .queue_max = o->queue_max,
                      .job_timeout_s = o->job_timeout_s,
                      .retention_ms = o->retention_ms,
                      .max_attempts = 3,
                      .shutdown_grace_s = o->shutdown_grace_s,
                      .images_dir = images};
    if (jobs_create(&jc, st, &runner, &js)) goto fail;
    if (o->calibrate) calibrate(&rt, js, o);
    if (jobs_start(js)) goto fail;
    snprintf(desc, sizeof desc, "%s (%.1f MiB) from %s", sd_model_arch(rt.model),
             sd_model_weight_bytes(rt.model) / 1048576.0, model_path);
    server_set_model(srv, desc);
    server_set_jobs(srv, js);
    log_info("serve: ready: model %s (%s, %.1f MiB), %d workers x %d threads", model_path,
             sd_model_arch(rt.model), sd_model_weight_bytes(rt.model) / 1048576.0, o->workers,
             o->threads);
    int sig = wait_for_signal();
    log_info("serve: %s: stopping (running jobs get %d s, then go back to the queue)",
             sig == SIGINT ? "SIGINT" : "SIGTERM", o->shutdown_grace_s);
    rc = 0;
    goto out;
fail:
    log_error("serve: %s", easel_errmsg());
out:
    jobs_stop(js);    /* new jobs get 503 from here on; status reads still work */
    server_stop(srv); /* ends event streams, closes connections */
    jobs_free(js);
    runtime_free(&rt);
    store_close(st);
    if (!rc) log_info("serve: stopped cleanly");
    return rc;
}

int cmd_serve(int argc, char **argv) {
    serve_opts o;
    int rc = parse_args(argc, argv, &o);
    if (rc) return rc == 1 ? 0 : 2;
    const char *lvl = getenv("EASEL_LOG");
    if (lvl && log_parse_level(lvl) >= 0) log_set_level((log_level)log_parse_level(lvl));
    if (install_stop_signals()) {
        fprintf(stderr, "easel serve: cannot install signal handlers: %s\n", strerror(errno));
        return 1;
    }
    return serve_run(&o);
}
