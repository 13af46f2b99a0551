/* The job scheduler (see jobs.h): FIFO queue, worker threads around a
 * job_runner, progress/ETA, cancel, watchdog, retention, crash recovery.
 * Every state change follows one pattern: lock store_mu, lock mu, change the
 * job and snapshot its row, unlock mu, write the row, unlock store_mu. */
#include "jobs.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "../engine/log.h"

#define JOBS_BUCKETS 4096
#define EMA_ALPHA 0.2

const double jobs_step_bounds_ms[JOBS_STEP_BUCKETS] = {5,   10,   25,   50,   100,   250,
                                                       500, 1000, 2500, 5000, 10000, 1e300};
const double jobs_time_bounds_s[JOBS_TIME_BUCKETS] = {0.1, 0.25, 0.5, 1,   2.5, 5,    10,
                                                      30,  60,   120, 300, 600, 1e300};

struct jobs {
    jobs_config cfg;
    char *images_dir;
    store *st;
    job_runner runner;
    pthread_mutex_t store_mu, mu;
    pthread_cond_t work, changed, idle, tick;
    job *buckets[JOBS_BUCKETS];
    job *qhead, *qtail; /* pending, FIFO */
    job *lhead, *ltail; /* every job, seq order */
    int n_pending, running, reserved;
    int stopping, abort_running, started, stopped;
    pthread_t *threads, maint;
    int n_threads;
    unsigned gversion;                    /* bumped on any job change */
    double ema_step_mpx, ema_overhead_ms; /* 0 = no measurement yet */
    struct {
        int w, h;
        double ema;
    } sizes[16]; /* step time per image size seen (exact beats scaled) */
    int n_sizes;
    jobs_stats stats; /* histograms and counters (by_status unused) */
};

typedef struct {
    jobs *js;
    int index;
} worker_arg;

int64_t jobs_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void jobs_new_uuid(char out[37]) {
    uint8_t b[16];
    uint64_t a = params_random64(), c = params_random64();
    memcpy(b, &a, 8);
    memcpy(b + 8, &c, 8);
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
             b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
             b[14], b[15]);
}

/* ---- the table ---- */

static unsigned hash_id(const char *id) {
    unsigned h = 2166136261u;
    for (; *id; id++)
        h = (h ^ (unsigned char)*id) * 16777619u;
    return h % JOBS_BUCKETS;
}

static job *find(jobs *js, const char *id) {
    for (job *j = js->buckets[hash_id(id)]; j; j = j->hnext)
        if (!strcmp(j->id, id)) return j;
    return NULL;
}

static void table_add(jobs *js, job *j) {
    unsigned h = hash_id(j->id);
    j->hnext = js->buckets[h];
    js->buckets[h] = j;
    j->lprev = js->ltail;
    j->lnext = NULL;
    if (js->ltail)
        js->ltail->lnext = j;
    else
        js->lhead = j;
    js->ltail = j;
}

static void table_remove(jobs *js, job *j) {
    job **pp = &js->buckets[hash_id(j->id)];
    while (*pp && *pp != j)
        pp = &(*pp)->hnext;
    if (*pp) *pp = j->hnext;
    if (j->lprev)
        j->lprev->lnext = j->lnext;
    else
        js->lhead = j->lnext;
    if (j->lnext)
        j->lnext->lprev = j->lprev;
    else
        js->ltail = j->lprev;
}

static void queue_push(jobs *js, job *j) {
    j->qnext = NULL;
    j->qprev = js->qtail;
    if (js->qtail)
        js->qtail->qnext = j;
    else
        js->qhead = j;
    js->qtail = j;
    js->n_pending++;
}

static void queue_remove(jobs *js, job *j) {
    if (j->qprev)
        j->qprev->qnext = j->qnext;
    else
        js->qhead = j->qnext;
    if (j->qnext)
        j->qnext->qprev = j->qprev;
    else
        js->qtail = j->qprev;
    j->qprev = j->qnext = NULL;
    js->n_pending--;
}

static void job_free(job *j) {
    if (!j) return;
    params_clear(&j->params);
    free(j->error);
    free(j->image);
    free(j);
}

static void set_str(char **dst, const char *src) {
    free(*dst);
    *dst = src ? strdup(src) : NULL; /* on OOM the field is left empty, never dangling */
}

/* ---- store rows ---- */

static cJSON *timings_json(const gen_timings *t) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddNumberToObject(o, "tokenize_ms", t->tokenize_ms);
    cJSON_AddNumberToObject(o, "encode_ms", t->encode_ms);
    cJSON_AddNumberToObject(o, "sample_ms", t->sample_ms);
    cJSON_AddNumberToObject(o, "decode_ms", t->decode_ms);
    cJSON_AddNumberToObject(o, "total_ms", t->total_ms);
    cJSON_AddNumberToObject(o, "step_ms_mean", t->step_ms_mean);
    return o;
}

static double num_of(const cJSON *o, const char *k) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(it) ? it->valuedouble : 0;
}

static void timings_parse(const char *text, gen_timings *t) {
    cJSON *o = text ? cJSON_Parse(text) : NULL;
    if (!o) return;
    t->tokenize_ms = num_of(o, "tokenize_ms");
    t->encode_ms = num_of(o, "encode_ms");
    t->sample_ms = num_of(o, "sample_ms");
    t->decode_ms = num_of(o, "decode_ms");
    t->total_ms = num_of(o, "total_ms");
    t->step_ms_mean = num_of(o, "step_ms_mean");
    cJSON_Delete(o);
}

/* A row with malloc'd copies of j's fields (call under mu); clear with store_row_clear. */
static void snapshot(const job *j, store_row *r) {
    memset(r, 0, sizeof *r);
    memcpy(r->id, j->id, sizeof r->id);
    r->seq = j->seq;
    r->status = j->status;
    r->created_ms = j->created_ms;
    r->started_ms = j->started_ms;
    r->finished_ms = j->finished_ms;
    r->progress_ms = j->progress_ms;
    r->attempts = j->attempts;
    r->error = j->error ? strdup(j->error) : NULL;
    r->image = j->image ? strdup(j->image) : NULL;
    if (j->have_timings) {
        cJSON *t = timings_json(&j->timings);
        r->timings = t ? cJSON_PrintUnformatted(t) : NULL;
        cJSON_Delete(t);
    }
}

/* Writes a snapshot; a failing store is logged (the memory state stays). */
static void persist(jobs *js, store_row *r) {
    easel_err e = store_update(js->st, r);
    if (e) log_error("store: job %s (%s): %s", r->id, job_status_name(r->status), easel_errmsg());
    store_row_clear(r);
}

static void touch(jobs *js, job *j) {
    j->version++;
    js->gversion++;
    pthread_cond_broadcast(&js->changed);
}

/* ---- loading ---- */

static int load_row(void *user, const store_row *r) {
    jobs *js = user;
    job *j = calloc(1, sizeof *j);
    if (!j || params_from_text(r->params, &j->params)) {
        log_error("store: job %s: cannot load (%s); skipped", r->id,
                  j ? easel_errmsg() : "out of memory");
        free(j);
        return 0;
    }
    memcpy(j->id, r->id, sizeof j->id);
    j->seq = r->seq;
    j->status = r->status;
    j->created_ms = r->created_ms;
    j->started_ms = r->started_ms;
    j->finished_ms = r->finished_ms;
    j->progress_ms = r->progress_ms;
    j->attempts = r->attempts;
    set_str(&j->error, r->error);
    set_str(&j->image, r->image);
    if (r->timings) timings_parse(r->timings, &j->timings), j->have_timings = 1;
    j->steps = j->params.steps;
    j->step = j->status == JOB_COMPLETED ? j->steps : 0;
    j->worker = -1;
    table_add(js, j);
    if (j->status == JOB_PENDING) queue_push(js, j);
    return 0;
}

easel_err jobs_create(const jobs_config *cfg, store *st, const job_runner *r, jobs **out) {
    *out = NULL;
    if (cfg->workers < 1 || cfg->queue_max < 1 || !cfg->images_dir)
        return easel_seterr(EASEL_EINVAL, "jobs: workers and queue_max must be >= 1");
    jobs *js = calloc(1, sizeof *js);
    if (!js || !(js->images_dir = strdup(cfg->images_dir))) {
        free(js);
        return easel_seterr(EASEL_ENOMEM, "jobs: out of memory");
    }
    js->cfg = *cfg;
    js->cfg.images_dir = js->images_dir;
    if (js->cfg.max_attempts < 1) js->cfg.max_attempts = 3;
    js->st = st;
    js->runner = *r;
    pthread_mutex_init(&js->store_mu, NULL);
    pthread_mutex_init(&js->mu, NULL);
    pthread_cond_init(&js->work, NULL);
    pthread_cond_init(&js->changed, NULL);
    pthread_cond_init(&js->idle, NULL);
    pthread_cond_init(&js->tick, NULL);
    int requeued = 0, failed = 0;
    easel_err e = store_recover(st, js->cfg.max_attempts, &requeued, &failed);
    if (!e && (requeued || failed))
        log_warn("jobs: recovered after a stop: %d requeued, %d failed after %d attempts", requeued,
                 failed, js->cfg.max_attempts);
    if (!e) e = store_each(st, load_row, js);
    if (e) {
        jobs_free(js);
        return e;
    }
    *out = js;
    return EASEL_OK;
}

/* ---- estimates ---- */

static double mpx(const job_params *p) {
    return (double)p->width * p->height / 1e6;
}

static double ema(double old, double v) {
    return old > 0 ? (1 - EMA_ALPHA) * old + EMA_ALPHA * v : v;
}

static void observe_step(jobs *js, const job_params *p, double step_ms) {
    js->ema_step_mpx = ema(js->ema_step_mpx, step_ms / mpx(p));
    int i = 0;
    while (i < js->n_sizes && (js->sizes[i].w != p->width || js->sizes[i].h != p->height))
        i++;
    if (i == js->n_sizes) {
        int cap = (int)(sizeof js->sizes / sizeof js->sizes[0]);
        if (js->n_sizes < cap)
            js->n_sizes++;
        else
            i = (int)(js->stats.step_count % (uint64_t)cap); /* replace one */
        js->sizes[i].w = p->width, js->sizes[i].h = p->height, js->sizes[i].ema = 0;
    }
    js->sizes[i].ema = ema(js->sizes[i].ema, step_ms);
}

/* Expected ms per step for p's size: measured at that size, else scaled by pixels. */
static double step_estimate(const jobs *js, const job_params *p) {
    for (int i = 0; i < js->n_sizes; i++)
        if (js->sizes[i].w == p->width && js->sizes[i].h == p->height) return js->sizes[i].ema;
    return js->ema_step_mpx * mpx(p);
}

void jobs_observe_step(jobs *js, int width, int height, double step_ms) {
    job_params p = {.width = width, .height = height};
    pthread_mutex_lock(&js->mu);
    observe_step(js, &p, step_ms);
    pthread_mutex_unlock(&js->mu);
}

/* Milliseconds j still needs (the whole job if not started); < 0 unknown. */
static double remaining_ms(const jobs *js, const job *j) {
    double step = j->step > 0 ? j->step_ms_avg : step_estimate(js, &j->params);
    if (step <= 0) return -1;
    return (j->params.steps - j->step) * step + js->ema_overhead_ms;
}

/* Work ahead of (and including) j, spread over the workers. Call under mu. */
static double eta_ms(const jobs *js, const job *j) {
    if (j->status == JOB_PROCESSING) return remaining_ms(js, j);
    if (j->status != JOB_PENDING) return 0;
    double ahead = 0;
    for (const job *o = js->lhead; o; o = o->lnext)
        if (o->status == JOB_PROCESSING && o->worker >= 0) {
            double r = remaining_ms(js, o);
            if (r < 0) return -1;
            ahead += r;
        }
    for (const job *o = js->qhead; o && o != j; o = o->qnext) {
        double r = remaining_ms(js, o);
        if (r < 0) return -1;
        ahead += r;
    }
    double own = remaining_ms(js, j);
    return own < 0 ? -1 : ahead / js->cfg.workers + own;
}

double jobs_estimate_ms(jobs *js, const job_params *p) {
    job tmp = {.status = JOB_PENDING, .params = *p};
    pthread_mutex_lock(&js->mu);
    double ahead = 0, own = remaining_ms(js, &tmp);
    for (const job *o = js->lhead; o && own >= 0; o = o->lnext) {
        if (o->status != JOB_PENDING && !(o->status == JOB_PROCESSING && o->worker >= 0)) continue;
        double r = remaining_ms(js, o);
        if (r < 0) own = -1;
        ahead += r;
    }
    pthread_mutex_unlock(&js->mu);
    return own < 0 ? -1 : ahead / js->cfg.workers + own;
}

static int queue_position(const jobs *js, const job *j) {
    if (j->status != JOB_PENDING) return 0;
    int pos = 1;
    for (const job *o = js->qhead; o && o != j; o = o->qnext)
        pos++;
    return pos;
}

static void call_view(const jobs *js, const job *j, job_view_fn fn, void *user) {
    job_extra x = {queue_position(js, j), -1};
    double e = eta_ms(js, j);
    x.eta_s = e < 0 ? -1 : e / 1000.0;
    fn(user, j, &x);
}

/* ---- public queries ---- */

easel_err jobs_view(jobs *js, const char *id, job_view_fn fn, void *user) {
    pthread_mutex_lock(&js->mu);
    job *j = find(js, id);
    if (j) call_view(js, j, fn, user);
    pthread_mutex_unlock(&js->mu);
    return j ? EASEL_OK : easel_seterr(EASEL_ENOTFOUND, "no job %s", id);
}

void jobs_list(jobs *js, int filter, int limit, job_view_fn fn, void *user) {
    pthread_mutex_lock(&js->mu);
    int n = 0;
    for (job *j = js->ltail; j && n < limit; j = j->lprev) {
        if (filter >= 0 && (int)j->status != filter) continue;
        call_view(js, j, fn, user);
        n++;
    }
    pthread_mutex_unlock(&js->mu);
}

easel_err jobs_wait(jobs *js, const char *id, unsigned *version, int timeout_ms) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
    if (until.tv_nsec >= 1000000000) until.tv_sec++, until.tv_nsec -= 1000000000;
    pthread_mutex_lock(&js->mu);
    job *j;
    while ((j = find(js, id)) && j->version == *version && !js->stopped)
        if (pthread_cond_timedwait(&js->changed, &js->mu, &until) == ETIMEDOUT) break;
    if (j) *version = j->version;
    pthread_mutex_unlock(&js->mu);
    return j ? EASEL_OK : easel_seterr(EASEL_ENOTFOUND, "no job %s", id);
}

int jobs_wait_any(jobs *js, unsigned *version, int timeout_ms) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
    if (until.tv_nsec >= 1000000000) until.tv_sec++, until.tv_nsec -= 1000000000;
    pthread_mutex_lock(&js->mu);
    while (js->gversion == *version && !js->stopped)
        if (pthread_cond_timedwait(&js->changed, &js->mu, &until) == ETIMEDOUT) break;
    int changed = js->gversion != *version;
    *version = js->gversion;
    pthread_mutex_unlock(&js->mu);
    return changed;
}

void jobs_get_stats(jobs *js, jobs_stats *out) {
    pthread_mutex_lock(&js->mu);
    *out = js->stats;
    memset(out->by_status, 0, sizeof out->by_status);
    for (job *j = js->lhead; j; j = j->lnext)
        out->by_status[j->status]++;
    out->queue_depth = js->n_pending;
    out->running = js->running;
    out->workers = js->cfg.workers;
    out->queue_max = js->cfg.queue_max;
    out->step_ms_per_mpx = js->ema_step_mpx;
    pthread_mutex_unlock(&js->mu);
}

int jobs_accepting(jobs *js) {
    pthread_mutex_lock(&js->mu);
    int ok = !js->stopping;
    pthread_mutex_unlock(&js->mu);
    return ok;
}

/* ---- submit and cancel ---- */

/* Reserves a queue slot so the limit holds while the store write runs unlocked. */
static easel_err reserve(jobs *js) {
    easel_err e = EASEL_OK;
    pthread_mutex_lock(&js->mu);
    if (js->stopping)
        e = easel_seterr(EASEL_ECANCELED, "the server is shutting down");
    else if (js->n_pending + js->reserved >= js->cfg.queue_max)
        e = easel_seterr(EASEL_EFULL, "the queue is full (%d jobs pending)", js->cfg.queue_max);
    else
        js->reserved++;
    pthread_mutex_unlock(&js->mu);
    return e;
}

easel_err jobs_submit(jobs *js, job_params *p, char id_out[37]) {
    easel_err e = reserve(js);
    if (e) return e;
    job *j = calloc(1, sizeof *j);
    cJSON *pj = j ? params_to_json(p) : NULL;
    char *text = pj ? cJSON_PrintUnformatted(pj) : NULL;
    cJSON_Delete(pj);
    store_row r = {0};
    if (!text) e = easel_seterr(EASEL_ENOMEM, "out of memory");
    if (!e) {
        jobs_new_uuid(j->id);
        memcpy(r.id, j->id, sizeof r.id);
        r.status = JOB_PENDING;
        r.params = text;
        r.created_ms = jobs_now_ms();
        pthread_mutex_lock(&js->store_mu);
        e = store_insert(js->st, &r);
        pthread_mutex_unlock(&js->store_mu);
    }
    free(text);
    pthread_mutex_lock(&js->mu);
    js->reserved--;
    if (!e) {
        j->seq = r.seq;
        j->status = JOB_PENDING;
        j->params = *p;
        j->created_ms = r.created_ms;
        j->steps = p->steps;
        j->worker = -1;
        table_add(js, j);
        queue_push(js, j);
        js->stats.submitted++;
        memcpy(id_out, j->id, 37);
        pthread_cond_signal(&js->work);
    }
    pthread_mutex_unlock(&js->mu);
    if (e) {
        free(j);
        return e;
    }
    memset(p, 0, sizeof *p); /* ownership moved */
    return EASEL_OK;
}

static void finish_locked(jobs *js, job *j, job_status s, const char *error) {
    j->status = s;
    j->finished_ms = jobs_now_ms();
    set_str(&j->error, error);
    if (s == JOB_COMPLETED) js->stats.completed++;
    if (s == JOB_FAILED) js->stats.failed++;
    if (s == JOB_CANCELED) js->stats.canceled++;
    touch(js, j);
}

easel_err jobs_cancel(jobs *js, const char *id, job_status *after) {
    easel_err e = EASEL_OK;
    store_row r;
    int write = 0;
    pthread_mutex_lock(&js->store_mu);
    pthread_mutex_lock(&js->mu);
    job *j = find(js, id);
    if (!j) {
        e = easel_seterr(EASEL_ENOTFOUND, "no job %s", id);
    } else if (j->status == JOB_PENDING) {
        queue_remove(js, j);
        finish_locked(js, j, JOB_CANCELED, "canceled by request");
        snapshot(j, &r), write = 1;
    } else if (j->status == JOB_PROCESSING) {
        j->cancel = 1; /* the worker ends it at the next step */
        touch(js, j);
    } else {
        e = easel_seterr(EASEL_EINVAL, "job %s has already %s", id, job_status_name(j->status));
    }
    if (j) *after = j->status;
    pthread_mutex_unlock(&js->mu);
    if (write) persist(js, &r);
    pthread_mutex_unlock(&js->store_mu);
    return e;
}

/* ---- workers ---- */

typedef struct {
    jobs *js;
    job *j;
} run_ctx;

static void hist_add(uint64_t *hist, const double *bounds, int n, double v) {
    for (int i = 0; i < n; i++)
        if (v <= bounds[i]) hist[i]++;
}

static int on_progress(void *user, int step, int steps, double step_ms) {
    run_ctx *c = user;
    jobs *js = c->js;
    pthread_mutex_lock(&js->mu);
    job *j = c->j;
    j->step = step;
    j->steps = steps;
    j->progress_ms = jobs_now_ms();
    j->step_ms_avg =
        j->step_ms_avg > 0 ? (1 - EMA_ALPHA) * j->step_ms_avg + EMA_ALPHA * step_ms : step_ms;
    observe_step(js, &j->params, step_ms);
    hist_add(js->stats.step_hist, jobs_step_bounds_ms, JOBS_STEP_BUCKETS, step_ms);
    js->stats.step_count++;
    js->stats.step_sum_ms += step_ms;
    int stop = j->cancel || js->abort_running || j->status != JOB_PROCESSING;
    touch(js, j);
    pthread_mutex_unlock(&js->mu);
    return stop;
}

/* Takes the oldest pending job (waiting for one); NULL when stopping. */
static job *take(jobs *js, int worker) {
    pthread_mutex_lock(&js->mu);
    while (!js->stopping && !js->qhead)
        pthread_cond_wait(&js->work, &js->mu);
    pthread_mutex_unlock(&js->mu);
    store_row r;
    pthread_mutex_lock(&js->store_mu);
    pthread_mutex_lock(&js->mu);
    job *j = js->stopping ? NULL : js->qhead;
    if (j) {
        queue_remove(js, j);
        j->status = JOB_PROCESSING;
        j->attempts++;
        j->started_ms = j->progress_ms = jobs_now_ms();
        j->step = 0;
        j->step_ms_avg = 0;
        j->cancel = 0;
        j->worker = worker;
        js->running++;
        touch(js, j);
        snapshot(j, &r);
    }
    pthread_mutex_unlock(&js->mu);
    if (j) persist(js, &r);
    pthread_mutex_unlock(&js->store_mu);
    return j;
}

static void image_name(const job *j, char *buf, size_t n) {
    if (!j->params.room[0]) {
        snprintf(buf, n, "%s.png", j->id);
        return;
    }
    time_t t = (time_t)(jobs_now_ms() / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    char stamp[32];
    strftime(stamp, sizeof stamp, "%Y%m%d_%H%M%S", &tm);
    snprintf(buf, n, "conceptual_%s_%s_%.8s.png", j->params.room, stamp, j->id);
}

/* Records the outcome of a run: err, the written image name (or NULL). */
static void complete(jobs *js, job *j, easel_err err, const char *msg, const char *image,
                     const gen_timings *t) {
    store_row r;
    int write = 1;
    pthread_mutex_lock(&js->store_mu);
    pthread_mutex_lock(&js->mu);
    js->running--;
    j->worker = -1;
    if (j->status != JOB_PROCESSING) {
        write = 0; /* the watchdog already failed it: drop the late result */
        if (image) {
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", js->images_dir, image);
            unlink(path);
        }
    } else if (!err) {
        set_str(&j->image, image);
        j->timings = *t;
        j->have_timings = 1;
        j->step = j->steps;
        js->ema_overhead_ms =
            t->total_ms > t->sample_ms
                ? (js->ema_overhead_ms > 0 ? (1 - EMA_ALPHA) * js->ema_overhead_ms +
                                                 EMA_ALPHA * (t->total_ms - t->sample_ms)
                                           : t->total_ms - t->sample_ms)
                : js->ema_overhead_ms;
        double secs = (jobs_now_ms() - j->started_ms) / 1000.0;
        hist_add(js->stats.time_hist, jobs_time_bounds_s, JOBS_TIME_BUCKETS, secs);
        js->stats.time_count++;
        js->stats.time_sum_s += secs;
        finish_locked(js, j, JOB_COMPLETED, NULL);
    } else if (err == EASEL_ECANCELED && !j->cancel && js->abort_running) {
        j->status = JOB_PENDING; /* interrupted by shutdown: runs again after restart */
        j->attempts--;
        j->started_ms = 0;
        j->step = 0;
        touch(js, j);
    } else if (err == EASEL_ECANCELED) {
        finish_locked(js, j, JOB_CANCELED, "canceled by request");
    } else {
        finish_locked(js, j, JOB_FAILED, msg);
    }
    if (write) snapshot(j, &r);
    if (!js->running) pthread_cond_broadcast(&js->idle);
    pthread_mutex_unlock(&js->mu);
    if (write) persist(js, &r);
    pthread_mutex_unlock(&js->store_mu);
}

static void run_one(jobs *js, job *j, int worker) {
    gen_params g;
    params_to_gen(&j->params, &g); /* params are immutable while processing */
    run_ctx c = {js, j};
    uint8_t *rgb = NULL;
    gen_timings t = {0};
    easel_clearerr();
    easel_err e = js->runner.run(js->runner.ctx, worker, &g, on_progress, &c, &rgb, &t);
    char msg[512], name[160], path[4096];
    snprintf(msg, sizeof msg, "%s", e ? easel_errmsg() : "");
    if (!e) {
        image_name(j, name, sizeof name);
        snprintf(path, sizeof path, "%s/%s", js->images_dir, name);
        e = js->runner.write_image(js->runner.ctx, path, rgb, g.width, g.height);
        if (e) snprintf(msg, sizeof msg, "writing the image: %s", easel_errmsg());
    }
    free(rgb);
    if (e && !msg[0]) snprintf(msg, sizeof msg, "%s", easel_errname(e));
    complete(js, j, e, msg, e ? NULL : name, &t);
}

static void *worker_main(void *arg) {
    worker_arg *wa = arg;
    jobs *js = wa->js;
    int index = wa->index;
    free(wa);
    /* Rendering yields to the HTTP threads: a poll or a submit must not wait
     * behind a GEMM on a fully busy machine. Raising nice needs no privilege. */
    if (js->cfg.worker_nice > 0 &&
        setpriority(PRIO_PROCESS, (id_t)gettid(), js->cfg.worker_nice) != 0)
        log_warn("jobs: worker %d: setpriority: %s", index, strerror(errno));
    job *j;
    while ((j = take(js, index)))
        run_one(js, j, index);
    return NULL;
}

/* ---- maintenance ---- */

static int watchdog(jobs *js, int64_t now) {
    if (js->cfg.job_timeout_s <= 0) return 0;
    int n = 0;
    for (;;) {
        store_row r;
        job *hit = NULL;
        pthread_mutex_lock(&js->store_mu);
        pthread_mutex_lock(&js->mu);
        for (job *j = js->lhead; j && !hit; j = j->lnext)
            if (j->status == JOB_PROCESSING &&
                now - j->progress_ms > js->cfg.job_timeout_s * 1000LL)
                hit = j;
        if (hit) {
            char msg[160];
            snprintf(msg, sizeof msg, "no progress for %d s: stopped by the watchdog",
                     js->cfg.job_timeout_s);
            hit->cancel = 1;
            finish_locked(js, hit, JOB_FAILED, msg);
            snapshot(hit, &r);
        }
        pthread_mutex_unlock(&js->mu);
        if (hit) persist(js, &r), n++;
        pthread_mutex_unlock(&js->store_mu);
        if (!hit) return n;
        log_warn("jobs: watchdog failed job %s", r.id);
    }
}

static int retention(jobs *js, int64_t now) {
    if (js->cfg.retention_ms <= 0) return 0;
    int n = 0;
    for (;;) {
        job *old = NULL;
        pthread_mutex_lock(&js->store_mu);
        pthread_mutex_lock(&js->mu);
        for (job *j = js->lhead; j && !old; j = j->lnext)
            if (j->status >= JOB_COMPLETED && j->worker < 0 &&
                now - j->finished_ms > js->cfg.retention_ms)
                old = j;
        if (old) {
            table_remove(js, old);
            touch(js, old);
        }
        pthread_mutex_unlock(&js->mu);
        if (old) {
            if (old->image) {
                char path[4096];
                snprintf(path, sizeof path, "%s/%s", js->images_dir, old->image);
                if (unlink(path) && errno != ENOENT)
                    log_warn("retention: %s: %s", path, strerror(errno));
            }
            if (store_delete(js->st, old->id)) log_error("retention: %s", easel_errmsg());
            job_free(old);
            n++;
        }
        pthread_mutex_unlock(&js->store_mu);
        if (!old) return n;
    }
}

int jobs_maintain(jobs *js, int64_t now_ms) {
    return watchdog(js, now_ms) + retention(js, now_ms);
}

static void *maint_main(void *arg) {
    jobs *js = arg;
    pthread_mutex_lock(&js->mu);
    while (!js->stopping) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 1;
        pthread_cond_timedwait(&js->tick, &js->mu, &until);
        if (js->stopping) break;
        pthread_mutex_unlock(&js->mu);
        jobs_maintain(js, jobs_now_ms());
        if (store_checkpoint(js->st)) log_warn("jobs: %s", easel_errmsg());
        pthread_mutex_lock(&js->mu);
    }
    pthread_mutex_unlock(&js->mu);
    return NULL;
}

/* ---- lifecycle ---- */

easel_err jobs_start(jobs *js) {
    js->threads = calloc((size_t)js->cfg.workers, sizeof *js->threads);
    if (!js->threads) return easel_seterr(EASEL_ENOMEM, "jobs: out of memory");
    for (int i = 0; i < js->cfg.workers; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        if (!wa) return easel_seterr(EASEL_ENOMEM, "jobs: out of memory");
        wa->js = js, wa->index = i;
        if (pthread_create(&js->threads[i], NULL, worker_main, wa)) {
            free(wa);
            return easel_seterr(EASEL_EIO, "jobs: cannot start a worker thread");
        }
        js->n_threads++;
    }
    if (pthread_create(&js->maint, NULL, maint_main, js))
        return easel_seterr(EASEL_EIO, "jobs: cannot start the maintenance thread");
    js->started = 1;
    return EASEL_OK;
}

void jobs_stop(jobs *js) {
    if (!js || js->stopped) return;
    pthread_mutex_lock(&js->mu);
    js->stopping = 1;
    pthread_cond_broadcast(&js->work);
    pthread_cond_broadcast(&js->tick);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += js->cfg.shutdown_grace_s;
    while (js->running)
        if (pthread_cond_timedwait(&js->idle, &js->mu, &until) == ETIMEDOUT) break;
    js->abort_running = 1; /* whatever still runs stops at its next step, back to pending */
    pthread_mutex_unlock(&js->mu);
    for (int i = 0; i < js->n_threads; i++)
        pthread_join(js->threads[i], NULL);
    if (js->started) pthread_join(js->maint, NULL);
    pthread_mutex_lock(&js->mu);
    js->stopped = 1;
    pthread_cond_broadcast(&js->changed);
    pthread_mutex_unlock(&js->mu);
}

void jobs_free(jobs *js) {
    if (!js) return;
    jobs_stop(js);
    for (job *j = js->lhead, *next; j; j = next) {
        next = j->lnext;
        job_free(j);
    }
    pthread_mutex_destroy(&js->store_mu);
    pthread_mutex_destroy(&js->mu);
    pthread_cond_destroy(&js->work);
    pthread_cond_destroy(&js->changed);
    pthread_cond_destroy(&js->idle);
    pthread_cond_destroy(&js->tick);
    free(js->threads);
    free(js->images_dir);
    free(js);
}
