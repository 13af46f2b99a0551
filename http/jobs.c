/* The job scheduler (see jobs.h). Every state change follows one pattern:
 * lock store_mu, write the change to the store, and only when it committed
 * lock mu and change the cached job. Workers claim their next job from the
 * store; the cache's pending list (in seq order, as the store claims) only
 * tells them when to look. */
#include "jobs.h"

#include <dirent.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../engine/fsutil.h"
#include "../engine/log.h"

#define JOBS_BUCKETS 4096
#define EMA_ALPHA 0.2
#define LEASE_MS 120000       /* a claimed job's lease unless configured; heartbeats renew it */
#define BEAT_EVERY_MS 5000    /* how often the maintenance thread renews leases (at most) */
#define PROGRESS_EVERY_MS 500 /* a shared store gets a job's progress at most this often */
#define WAIT_MS 200           /* the sync thread's wait for wake-ups (and its progress tick) */
#define POLL_EVERY_MS 2000    /* the slow poll behind the wake-ups ... */
#define POLL_OVERLAP_MS 10000 /* ... re-reads changes this far back */
#define NODE_EVERY_MS 5000    /* this node's beat and the queue's figures */
#define CLOCK_EVERY_MS 60000  /* the store's clock, measured again */
#define SYNC_BATCH 256        /* ids re-read per wake-up (more: a poll instead) */
#define SWEEP_EVERY_S 600     /* orphan-image sweeps while running */
#define SWEEP_MIN_AGE_S 600   /* ... of files at least this old */

const double jobs_step_bounds_ms[JOBS_STEP_BUCKETS] = {5,   10,   25,   50,   100,   250,
                                                       500, 1000, 2500, 5000, 10000, 1e300};
const double jobs_time_bounds_s[JOBS_TIME_BUCKETS] = {0.1, 0.25, 0.5, 1,   2.5, 5,    10,
                                                      30,  60,   120, 300, 600, 1e300};

typedef struct {
    job *head, *tail;
    int n;
} job_list;

typedef struct {
    pthread_t thread;
    int started, alive, restarts;
} worker_slot;

struct jobs {
    jobs_config cfg;
    void (*outbox_kick)(void *ctx); /* wakes the webhook deliverer (under mu: it only signals) */
    void *outbox_ctx;
    char *images_dir, *node;
    store *st;
    job_runner runner;
    pthread_mutex_t store_mu, mu;
    pthread_cond_t work, changed, idle, tick;
    job *buckets[JOBS_BUCKETS];
    job *lhead, *ltail; /* every job, seq order */
    job_list
        by_status[JOB_STATUS_COUNT]; /* pending/processing: seq order; finished: finish order */
    int total, reserved, running;
    int stopping, abort_running, started, stopped;
    int device_lost;        /* a job failed with EASEL_EDEVLOST: take no more work */
    char device_error[200]; /* that job's error */
    worker_slot *workers;
    int live;
    pthread_t maint;
    unsigned gversion;                    /* bumped on any job change */
    double ema_step_mpx, ema_overhead_ms; /* 0 = no measurement yet */
    double ema_decode_mpx;                /* decode ms per megapixel */
    struct {
        int w, h;
        double ema;
    } sizes[16]; /* step time per image size seen (exact beats scaled) */
    int n_sizes;
    int store_ok;
    char store_error[200];
    jobs_stats stats; /* histograms and counters (by_status etc. filled on read) */
    /* several nodes on a shared store */
    int shared, images_in_store;
    int64_t lease_ms, beat_ms;
    atomic_llong clock_off; /* the store's clock minus ours */
    pthread_t sync;
    int sync_started, sync_stop;
    unsigned reload_gen;
    char model[64];
    int need_reload; /* a sync read failed: reload everything when the store is back */
    int64_t last_rescue, last_node, last_clock; /* monotonic, maintenance thread */
};

typedef struct {
    jobs *js;
    int index;
} worker_arg;

const char *job_stage_name(job_stage s) {
    static const char *names[] = {"queued", "encoding", "sampling", "decoding"};
    return (unsigned)s < 4 ? names[s] : "unknown";
}

int64_t jobs_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int jobs_upload_in_use(void *ctx, const char *id) {
    jobs *js = ctx;
    int in_use = 1;
    pthread_mutex_lock(&js->store_mu);
    if (store_upload_in_use(js->st, id, &in_use)) in_use = 1; /* cannot tell: keep it */
    pthread_mutex_unlock(&js->store_mu);
    return in_use;
}

int64_t jobs_clock_ms(jobs *js) {
    return jobs_now_ms() + atomic_load(&js->clock_off);
}

int64_t jobs_mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
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

/* A timed wait on a monotonic deadline ms from now (the conds use CLOCK_MONOTONIC). */
static void wait_ms(pthread_cond_t *c, pthread_mutex_t *m, int ms) {
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (long)(ms % 1000) * 1000000;
    if (until.tv_nsec >= 1000000000) until.tv_sec++, until.tv_nsec -= 1000000000;
    pthread_cond_timedwait(c, m, &until);
}

static void deadline_in(struct timespec *until, int ms) {
    clock_gettime(CLOCK_MONOTONIC, until);
    until->tv_sec += ms / 1000;
    until->tv_nsec += (long)(ms % 1000) * 1000000;
    if (until->tv_nsec >= 1000000000) until->tv_sec++, until->tv_nsec -= 1000000000;
}

/* ---- the cache ---- */

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

static void list_append(job_list *l, job *j) {
    j->snext = NULL;
    j->sprev = l->tail;
    if (l->tail)
        l->tail->snext = j;
    else
        l->head = j;
    l->tail = j;
    l->n++;
}

/* Pending and processing lists stay in seq order: a job requeued by a
 * shutdown goes back to its place (rare, so a walk is fine). */
static void list_insert_by_seq(job_list *l, job *j) {
    job *after = l->tail;
    while (after && after->seq > j->seq)
        after = after->sprev;
    j->sprev = after;
    j->snext = after ? after->snext : l->head;
    if (j->snext)
        j->snext->sprev = j;
    else
        l->tail = j;
    if (after)
        after->snext = j;
    else
        l->head = j;
    l->n++;
}

static void list_remove(job_list *l, job *j) {
    if (j->sprev)
        j->sprev->snext = j->snext;
    else
        l->head = j->snext;
    if (j->snext)
        j->snext->sprev = j->sprev;
    else
        l->tail = j->sprev;
    j->sprev = j->snext = NULL;
    l->n--;
}

static void drop_preview(job *j) {
    free(j->preview.data);
    j->preview.data = NULL;
    j->preview.len = 0;
}

/* Moves j to status s (its list and count); a job that stops processing
 * drops its preview. Call under mu. */
static void set_status(jobs *js, job *j, job_status s) {
    if (s != JOB_PROCESSING) drop_preview(j);
    list_remove(&js->by_status[j->status], j);
    j->status = s;
    /* a start or completed event was just committed with this change */
    if (j->params.webhook && s != JOB_PENDING && js->outbox_kick) js->outbox_kick(js->outbox_ctx);
    if (s <= JOB_PROCESSING)
        list_insert_by_seq(&js->by_status[s], j);
    else
        list_append(&js->by_status[s], j);
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
    js->total++;
}

/* Adds j to the table and its status list. */
static void cache_add(jobs *js, job *j) {
    table_add(js, j);
    if (j->status <= JOB_PROCESSING)
        list_insert_by_seq(&js->by_status[j->status], j);
    else
        list_append(&js->by_status[j->status], j);
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
    list_remove(&js->by_status[j->status], j);
    js->total--;
}

static void job_free(job *j) {
    if (!j) return;
    params_clear(&j->params);
    free(j->error);
    free(j->image);
    drop_preview(j);
    free(j);
}

static void set_str(char **dst, const char *src) {
    free(*dst);
    *dst = src ? strdup(src) : NULL; /* on OOM the field is left empty, never dangling */
}

static void touch(jobs *js, job *j) {
    j->version++;
    js->gversion++;
    pthread_cond_broadcast(&js->changed);
}

/* ---- store health ---- */

static void store_failed(jobs *js, const char *what) {
    pthread_mutex_lock(&js->mu);
    if (js->store_ok) log_error("jobs: the store cannot write (%s): %s", what, easel_errmsg());
    js->store_ok = 0;
    snprintf(js->store_error, sizeof js->store_error, "%s", easel_errmsg());
    js->stats.store_errors++;
    pthread_mutex_unlock(&js->mu);
}

static void store_worked(jobs *js) {
    pthread_mutex_lock(&js->mu);
    if (!js->store_ok) log_info("jobs: the store writes again");
    js->store_ok = 1;
    js->store_error[0] = 0;
    pthread_mutex_unlock(&js->mu);
}

/* ---- rows ---- */

static cJSON *timings_json(const gen_timings *t) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddNumberToObject(o, "tokenize_ms", t->tokenize_ms);
    cJSON_AddNumberToObject(o, "encode_ms", t->encode_ms);
    cJSON_AddNumberToObject(o, "sample_ms", t->sample_ms);
    cJSON_AddNumberToObject(o, "decode_ms", t->decode_ms);
    cJSON_AddNumberToObject(o, "total_ms", t->total_ms);
    cJSON_AddNumberToObject(o, "step_ms_mean", t->step_ms_mean);
    if (t->lora_ms > 0) { /* a job with LoRAs: binding them */
        cJSON_AddNumberToObject(o, "lora_ms", t->lora_ms);
        cJSON_AddBoolToObject(o, "lora_cached", t->lora_cached);
    }
    if (t->image_encode_ms > 0) { /* img2img / inpainting: the VAE encoder, the steps that ran */
        cJSON_AddNumberToObject(o, "image_encode_ms", t->image_encode_ms);
        cJSON_AddNumberToObject(o, "steps_run", t->steps_run);
    }
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
    t->lora_ms = num_of(o, "lora_ms");
    t->lora_cached = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "lora_cached"));
    t->total_ms = num_of(o, "total_ms");
    t->step_ms_mean = num_of(o, "step_ms_mean");
    t->image_encode_ms = num_of(o, "image_encode_ms");
    t->steps_run = (int)num_of(o, "steps_run");
    cJSON_Delete(o);
}

/* The job as a row, before or after a change (call under mu); the strings
 * are malloc'd copies (store_row_clear). */
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

/* A cached job from a row (store_each at start, or a claim of a job this
 * cache never saw). NULL when the row cannot be read (logged). */
static job *job_from_row(const store_row *r) {
    job *j = calloc(1, sizeof *j);
    if (!j || params_from_text(r->params, &j->params)) {
        log_error("store: job %s: cannot load (%s); skipped", r->id,
                  j ? easel_errmsg() : "out of memory");
        free(j);
        return NULL;
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
    snprintf(j->owner, sizeof j->owner, "%s", r->lease_owner);
    snprintf(j->model, sizeof j->model, "%s", r->model);
    if (j->status == JOB_PROCESSING) { /* another node's run, as it last wrote */
        j->step = r->step;
        j->stage = (job_stage)r->stage;
        j->step_ms_avg = r->step_ms;
        j->cancel = r->cancel_requested;
    }
    if (r->webhook_url && !(j->params.webhook = strdup(r->webhook_url))) {
        job_free(j);
        return NULL;
    }
    j->params.webhook_events = r->webhook_events;
    return j;
}

/* ---- several nodes: the cache as a replica of the store ---- */

static void owner_of(const jobs *js, int worker, char *buf, size_t n);
static int str_differs(const char *a, const char *b) {
    return (a == NULL) != (b == NULL) || (a && strcmp(a, b));
}

/* Whether the cached job already says what the row says. */
static int row_matches(const job *j, const store_row *r) {
    if (j->status != r->status || j->attempts != r->attempts || j->started_ms != r->started_ms ||
        j->finished_ms != r->finished_ms || str_differs(j->error, r->error) ||
        str_differs(j->image, r->image) || strcmp(j->owner, r->lease_owner) ||
        j->have_timings != (r->timings != NULL))
        return 0;
    if (r->status == JOB_PROCESSING)
        return j->progress_ms == r->progress_ms && j->step == r->step &&
               (int)j->stage == r->stage && j->cancel == r->cancel_requested;
    return 1;
}

/* Copies a row into a cached job this node does not run. Call under mu. */
static void copy_row(jobs *js, job *j, const store_row *r) {
    if (j->status != r->status) set_status(js, j, r->status);
    j->attempts = r->attempts;
    j->started_ms = r->started_ms;
    j->finished_ms = r->finished_ms;
    j->progress_ms = r->progress_ms;
    set_str(&j->error, r->error);
    set_str(&j->image, r->image);
    snprintf(j->owner, sizeof j->owner, "%s", r->lease_owner);
    if (r->timings) timings_parse(r->timings, &j->timings);
    j->have_timings = r->timings != NULL;
    j->progress_mono_ms = jobs_mono_ms();
    if (r->status == JOB_PROCESSING) {
        j->step = r->step;
        j->stage = (job_stage)r->stage;
        j->step_ms_avg = r->step_ms;
        j->cancel = r->cancel_requested;
    } else {
        j->step = r->status == JOB_COMPLETED ? j->steps : r->status == JOB_PENDING ? 0 : j->step;
        j->stage = STAGE_QUEUED;
        j->cancel = 0;
    }
}

/* Applies the store's row for a job: another node's change, or a reload.
 * The store is the truth; a job this node runs keeps its own (newer)
 * progress, unless the row says another node has it now: then this run
 * lost its lease and stops at its next step (its result will be refused).
 * Call under store_mu and mu (store_mu: no write of ours can slip between
 * the read of the row and this). */
static void apply_row(jobs *js, const store_row *r) {
    job *j = find(js, r->id);
    js->stats.remote_changes++;
    if (!j) {
        if (!(j = job_from_row(r))) return;
        cache_add(js, j);
        j->seen_gen = js->reload_gen;
        touch(js, j);
        if (j->status == JOB_PENDING) pthread_cond_broadcast(&js->work);
        return;
    }
    j->seen_gen = js->reload_gen;
    if (j->worker >= 0 && !j->lost) {
        char mine[STORE_OWNER_MAX];
        owner_of(js, j->worker, mine, sizeof mine);
        if (r->status == JOB_PROCESSING && !strcmp(r->lease_owner, mine)) {
            if (r->cancel_requested && !j->cancel) j->cancel = 1, touch(js, j);
            return;
        }
        j->lost = 1;
        js->stats.leases_lost++;
        drop_preview(j); /* this run's: the job's next preview comes from its new owner */
        log_warn("jobs: job %s is no longer held by %s (the store says %s%s%s); its run here "
                 "stops",
                 j->id, mine, job_status_name(r->status), r->lease_owner[0] ? " by " : "",
                 r->lease_owner);
    }
    if (row_matches(j, r)) return;
    copy_row(js, j, r);
    touch(js, j);
    if (j->status == JOB_PENDING) pthread_cond_broadcast(&js->work);
}

static int apply_row_cb(void *user, const store_row *r) {
    jobs *js = user;
    pthread_mutex_lock(&js->mu);
    apply_row(js, r);
    pthread_mutex_unlock(&js->mu);
    return 0;
}

/* Drops a cached job whose row is gone (deleted by another node), unless a
 * worker here still holds it. Call under mu. */
static void drop_gone(jobs *js, job *j) {
    if (!j || j->worker >= 0) return;
    table_remove(js, j);
    touch(js, j);
    job_free(j);
}

typedef struct {
    int n, n_ob, overflow;
    char ids[SYNC_BATCH][37];
    int found[SYNC_BATCH];
    char ob[32][37];
} sync_batch;

static void on_change(void *user, char kind, const char *id) {
    sync_batch *b = user;
    char(*list)[37] = kind == 'o' ? b->ob : b->ids;
    int *n = kind == 'o' ? &b->n_ob : &b->n, cap = kind == 'o' ? 32 : SYNC_BATCH;
    if (strlen(id) > 36) return;
    for (int i = 0; i < *n; i++)
        if (!strcmp(list[i], id)) return;
    if (*n == cap) {
        b->overflow = 1;
        return;
    }
    memcpy(list[(*n)++], id, strlen(id) + 1);
}

typedef struct {
    jobs *js;
    sync_batch *b;
} batch_ctx;

static int apply_batch_row(void *user, const store_row *r) {
    batch_ctx *c = user;
    for (int i = 0; i < c->b->n; i++)
        if (!strcmp(c->b->ids[i], r->id)) c->b->found[i] = 1;
    return apply_row_cb(c->js, r);
}

/* Re-reads the rows a wake-up named; those gone were deleted. */
static easel_err sync_ids(jobs *js, sync_batch *b) {
    const char *ids[SYNC_BATCH];
    for (int i = 0; i < b->n; i++)
        ids[i] = b->ids[i], b->found[i] = 0;
    batch_ctx c = {js, b};
    pthread_mutex_lock(&js->store_mu);
    easel_err e = store_get(js->st, ids, b->n, apply_batch_row, &c);
    if (!e) {
        pthread_mutex_lock(&js->mu);
        for (int i = 0; i < b->n; i++)
            if (!b->found[i]) drop_gone(js, find(js, b->ids[i]));
        pthread_mutex_unlock(&js->mu);
    }
    pthread_mutex_unlock(&js->store_mu);
    return e;
}

static void record_delivery(jobs *js, const outbox_row *r);

static int delivery_cb(void *user, const outbox_row *r) {
    record_delivery(user, r);
    return 0;
}

/* A job's deliveries changed (another node delivered, or an event was
 * queued): its view follows, and this node's deliverer may take it. */
static easel_err sync_deliveries(jobs *js, sync_batch *b) {
    easel_err e = EASEL_OK;
    pthread_mutex_lock(&js->store_mu);
    for (int i = 0; i < b->n_ob && !e; i++)
        e = store_outbox_of(js->st, b->ob[i], delivery_cb, js);
    pthread_mutex_unlock(&js->store_mu);
    pthread_mutex_lock(&js->mu);
    if (js->outbox_kick && b->n_ob) js->outbox_kick(js->outbox_ctx);
    pthread_mutex_unlock(&js->mu);
    return e;
}

/* Every row again (after the wake-up connection came back, or a failed
 * read): cached jobs the store no longer has are dropped. */
static easel_err reload_all(jobs *js) {
    pthread_mutex_lock(&js->store_mu);
    pthread_mutex_lock(&js->mu);
    unsigned gen = ++js->reload_gen;
    pthread_mutex_unlock(&js->mu);
    easel_err e = store_each(js->st, apply_row_cb, js);
    if (!e) {
        pthread_mutex_lock(&js->mu);
        for (job *j = js->lhead, *next; j; j = next) {
            next = j->lnext;
            if (j->seen_gen != gen) drop_gone(js, j);
        }
        pthread_mutex_unlock(&js->mu);
    }
    pthread_mutex_unlock(&js->store_mu);
    return e;
}

static easel_err sync_changed(jobs *js, int64_t since) {
    pthread_mutex_lock(&js->store_mu);
    easel_err e = store_changed(js->st, since, apply_row_cb, js);
    pthread_mutex_unlock(&js->store_mu);
    return e;
}

typedef struct {
    char id[37], owner[STORE_OWNER_MAX];
    int step, stage;
    double step_ms;
} progress_note;

/* Writes the progress of the jobs this node runs, for the other nodes to
 * show: when the step moved (at most every PROGRESS_EVERY_MS) or the lease
 * needs renewing. The sync thread's own connection: no lock held. */
static void push_progress(jobs *js) {
    progress_note list[64];
    int n = 0;
    int64_t mono = jobs_mono_ms();
    pthread_mutex_lock(&js->mu);
    for (job *j = js->by_status[JOB_PROCESSING].head; j && n < 64; j = j->snext) {
        if (j->worker < 0 || j->lost || j->finishing) continue;
        int64_t since = mono - j->pushed_mono_ms;
        if (!(since >= js->beat_ms || (j->step != j->pushed_step && since >= PROGRESS_EVERY_MS)))
            continue;
        progress_note *p = &list[n++];
        memcpy(p->id, j->id, 37);
        owner_of(js, j->worker, p->owner, sizeof p->owner);
        p->step = j->step, p->stage = (int)j->stage, p->step_ms = j->step_ms_avg;
        j->pushed_step = j->step, j->pushed_mono_ms = mono;
    }
    pthread_mutex_unlock(&js->mu);
    for (int i = 0; i < n; i++) {
        store_progress_row pr = {list[i].id,   list[i].owner, jobs_clock_ms(js), js->lease_ms,
                                 list[i].step, list[i].stage, list[i].step_ms};
        int cancel = 0;
        if (store_progress(js->st, &pr, &cancel) || !cancel) continue;
        pthread_mutex_lock(&js->mu);
        job *j = find(js, list[i].id);
        if (j && !j->cancel) j->cancel = 1, touch(js, j);
        pthread_mutex_unlock(&js->mu);
    }
}

static void *sync_main(void *arg) {
    jobs *js = arg;
    int64_t last_poll = jobs_mono_ms(), poll_since = jobs_clock_ms(js) - POLL_OVERLAP_MS;
    int listening = 1;
    for (;;) {
        pthread_mutex_lock(&js->mu);
        int stop = js->sync_stop, reload = js->need_reload;
        js->stats.listening = listening;
        pthread_mutex_unlock(&js->mu);
        if (stop) break;
        sync_batch *b = calloc(1, sizeof *b);
        if (!b) {
            usleep(WAIT_MS * 1000);
            continue;
        }
        int resync = 0;
        easel_err e = store_wait(js->st, WAIT_MS, on_change, b, &resync);
        push_progress(js);
        if (e) {
            if (listening) log_warn("jobs: wake-ups lost: %s", easel_errmsg());
            listening = 0;
            free(b);
            continue;
        }
        if (resync && !listening) log_info("jobs: wake-ups back; reloading the cache");
        listening = 1;
        int64_t poll_start = jobs_clock_ms(js);
        if (resync || reload)
            e = reload_all(js);
        else if (b->overflow)
            e = sync_changed(js, poll_since);
        else if (b->n)
            e = sync_ids(js, b);
        if (!e && b->n_ob) e = sync_deliveries(js, b);
        if (!e && jobs_mono_ms() - last_poll >= POLL_EVERY_MS) { /* what a wake-up missed */
            e = sync_changed(js, poll_since);
            if (!e) poll_since = poll_start - POLL_OVERLAP_MS, last_poll = jobs_mono_ms();
        }
        pthread_mutex_lock(&js->mu);
        js->need_reload = e != EASEL_OK;
        pthread_mutex_unlock(&js->mu);
        free(b);
    }
    return NULL;
}

/* The store's row for id into the cache. Call with store_mu held (not mu). */
static void read_through_locked(jobs *js, const char *id) {
    const char *ids[1] = {id};
    store_get(js->st, ids, 1, apply_row_cb, js);
}

typedef struct {
    jobs *js;
    int found;
} refresh_ctx;

static int refresh_cb(void *user, const store_row *r) {
    refresh_ctx *c = user;
    c->found = 1;
    return apply_row_cb(c->js, r);
}

/* The store's row for a cached id, or the id dropped when its row is gone.
 * Call with store_mu held (not mu). */
static void refresh_row(jobs *js, const char *id) {
    const char *ids[1] = {id};
    refresh_ctx c = {js, 0};
    if (store_get(js->st, ids, 1, refresh_cb, &c)) return;
    if (c.found) return;
    pthread_mutex_lock(&js->mu);
    drop_gone(js, find(js, id));
    pthread_mutex_unlock(&js->mu);
}

/* A poll for an id the cache does not know: another node's job, submitted
 * a moment ago (its wake-up not yet here). Reads it from the store. */
static void read_through(jobs *js, const char *id) {
    pthread_mutex_lock(&js->mu);
    int ok = js->shared && js->store_ok && !find(js, id) && strlen(id) == 36;
    pthread_mutex_unlock(&js->mu);
    if (!ok) return;
    pthread_mutex_lock(&js->store_mu);
    read_through_locked(js, id);
    pthread_mutex_unlock(&js->store_mu);
}

/* The shared store's periodic duties (maintenance thread): rescue other
 * nodes' expired leases, beat, read the queue's figures, follow the clock. */
static void shared_duties(jobs *js, int64_t mono) {
    int64_t rescue_every = js->lease_ms / 4;
    if (rescue_every < 1000) rescue_every = 1000;
    if (rescue_every > 10000) rescue_every = 10000;
    if (mono - js->last_rescue >= rescue_every) {
        js->last_rescue = mono;
        int rq = 0, fl = 0;
        int64_t t0 = jobs_clock_ms(js);
        pthread_mutex_lock(&js->store_mu);
        easel_err e = store_rescue(js->st, js->cfg.max_attempts, t0, &rq, &fl);
        pthread_mutex_unlock(&js->store_mu);
        if (e == EASEL_EIO) store_failed(js, "rescuing expired leases");
        /* store_wait does not report this node's own writes: read what the rescue changed */
        if (!e && rq + fl) sync_changed(js, t0 - 2000);
        pthread_mutex_lock(&js->mu);
        js->stats.rescued += (uint64_t)(rq + fl);
        if (rq + fl) pthread_cond_broadcast(&js->work);
        pthread_mutex_unlock(&js->mu);
    }
    if (mono - js->last_node >= NODE_EVERY_MS) {
        js->last_node = mono;
        store_queue_info *q = malloc(sizeof *q);
        int64_t now = jobs_clock_ms(js);
        pthread_mutex_lock(&js->store_mu);
        easel_err e = store_node_beat(js->st, now, js->cfg.workers);
        if (!e && q) e = store_queue_stats(js->st, now, q);
        pthread_mutex_unlock(&js->store_mu);
        pthread_mutex_lock(&js->mu);
        if (!e && q) js->stats.queue = *q, js->stats.queue_ms = now;
        pthread_mutex_unlock(&js->mu);
        free(q);
    }
    if (mono - js->last_clock >= CLOCK_EVERY_MS) {
        js->last_clock = mono;
        int64_t off;
        pthread_mutex_lock(&js->store_mu);
        easel_err e = store_clock(js->st, &off);
        pthread_mutex_unlock(&js->store_mu);
        if (!e) atomic_store(&js->clock_off, off);
    }
}

/* ---- loading ---- */

typedef struct {
    jobs *js;
    job **finished;
    size_t n, cap;
    int oom;
} load_ctx;

/* Rows come in seq order: the table and the pending list keep it; finished
 * jobs join their lists in finish order once all are read (load_all). */
static int load_row(void *user, const store_row *r) {
    load_ctx *c = user;
    job *j = job_from_row(r);
    if (!j) return 0;
    if (j->status > JOB_PROCESSING && c->n == c->cap) {
        size_t cap = c->cap ? 2 * c->cap : 256;
        job **v = realloc(c->finished, cap * sizeof *v);
        if (!v) {
            job_free(j);
            c->oom = 1;
            return 1;
        }
        c->finished = v, c->cap = cap;
    }
    table_add(c->js, j);
    if (j->status <= JOB_PROCESSING)
        list_append(&c->js->by_status[j->status], j);
    else
        c->finished[c->n++] = j;
    return 0;
}

static int by_finish(const void *a, const void *b) {
    const job *x = *(job *const *)a, *y = *(job *const *)b;
    if (x->finished_ms != y->finished_ms) return x->finished_ms < y->finished_ms ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static void record_delivery(jobs *js, const outbox_row *r);

static int load_delivery(void *user, const outbox_row *r) {
    record_delivery(user, r);
    return 0;
}

static easel_err load_all(jobs *js) {
    load_ctx c = {js, NULL, 0, 0, 0};
    easel_err e = store_each(js->st, load_row, &c);
    if (!e && c.oom) e = easel_seterr(EASEL_ENOMEM, "jobs: out of memory loading the store");
    if (c.n) qsort(c.finished, c.n, sizeof *c.finished, by_finish);
    for (size_t i = 0; i < c.n; i++)
        list_append(&js->by_status[c.finished[i]->status], c.finished[i]);
    free(c.finished);
    if (!e) e = store_outbox_each(js->st, load_delivery, js);
    return e;
}

easel_err jobs_create(const jobs_config *cfg, store *st, const job_runner *r, jobs **out) {
    *out = NULL;
    if (cfg->workers < 1 || cfg->queue_max < 1 || !cfg->images_dir)
        return easel_seterr(EASEL_EINVAL, "jobs: workers and queue_max must be >= 1");
    jobs *js = calloc(1, sizeof *js);
    char node[96];
    if (cfg->node)
        snprintf(node, sizeof node, "%s", cfg->node);
    else
        snprintf(node, sizeof node, "node-%ld", (long)getpid());
    if (!js || !(js->images_dir = strdup(cfg->images_dir)) || !(js->node = strdup(node)) ||
        !(js->workers = calloc((size_t)cfg->workers, sizeof *js->workers))) {
        if (js) free(js->images_dir), free(js->node);
        free(js);
        return easel_seterr(EASEL_ENOMEM, "jobs: out of memory");
    }
    js->cfg = *cfg;
    js->cfg.images_dir = js->images_dir;
    js->cfg.node = js->node;
    if (js->cfg.max_attempts < 1) js->cfg.max_attempts = 3;
    js->st = st;
    js->runner = *r;
    js->store_ok = 1;
    js->shared = store_shared(st);
    js->images_in_store = store_holds_images(st);
    js->lease_ms = cfg->lease_ms > 0 ? cfg->lease_ms : LEASE_MS;
    js->beat_ms = js->lease_ms / 3 < BEAT_EVERY_MS ? js->lease_ms / 3 : BEAT_EVERY_MS;
    if (js->beat_ms < 100) js->beat_ms = 100;
    atomic_init(&js->clock_off, 0);
    snprintf(js->model, sizeof js->model, "%s", cfg->model ? cfg->model : "");
    js->cfg.model = js->model;
    snprintf(js->stats.node, sizeof js->stats.node, "%s", node);
    js->stats.store_kind = store_kind(st);
    js->stats.shared = js->shared;
    js->stats.listening = js->shared;
    js->last_rescue = js->last_node = -1000000;
    js->last_clock = jobs_mono_ms();
    pthread_mutex_init(&js->store_mu, NULL);
    pthread_mutex_init(&js->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&js->work, &ca);
    pthread_cond_init(&js->changed, &ca);
    pthread_cond_init(&js->idle, &ca);
    pthread_cond_init(&js->tick, &ca);
    pthread_condattr_destroy(&ca);
    int requeued = 0, failed = 0;
    if (js->images_in_store && !r->encode_image) {
        jobs_free(js);
        return easel_seterr(EASEL_EINVAL, "jobs: the store holds images: the runner must encode");
    }
    int64_t off = 0;
    if (js->shared && !store_clock(st, &off)) atomic_store(&js->clock_off, off);
    if (js->shared && (off > 2000 || off < -2000))
        log_warn("jobs: this host's clock is %lld ms off the database's; leases follow the "
                 "database's",
                 (long long)off);
    easel_err e = store_recover(st, js->cfg.max_attempts, jobs_clock_ms(js), &requeued, &failed);
    if (!e && (requeued || failed))
        log_warn("jobs: recovered after a stop: %d requeued, %d failed after %d attempts", requeued,
                 failed, js->cfg.max_attempts);
    if (!e) e = load_all(js);
    if (e) {
        jobs_free(js);
        return e;
    }
    /* nothing runs here yet: every unreferenced image is one (other nodes on a
     * shared directory may be writing theirs: only old files then) */
    int n = js->images_in_store ? 0 : jobs_sweep_orphans(js, js->shared ? SWEEP_MIN_AGE_S : 0);
    if (n) log_warn("jobs: removed %d image(s) no job refers to (a crash before its commit)", n);
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

/* The running jobs' remaining work plus the pending jobs' ahead of stop
 * (NULL: all of them); < 0 unknown. O(running + ahead). Call under mu. */
static double work_ahead(const jobs *js, const job *stop) {
    double ahead = 0;
    for (const job *o = js->by_status[JOB_PROCESSING].head; o; o = o->snext) {
        if (o->worker < 0 && !js->shared) continue;
        double r = remaining_ms(js, o);
        if (r < 0) return -1;
        ahead += r;
    }
    for (const job *o = js->by_status[JOB_PENDING].head; o && o != stop; o = o->snext) {
        double r = remaining_ms(js, o);
        if (r < 0) return -1;
        ahead += r;
    }
    return ahead;
}

/* The workers the queue has: this node's, or (a shared store) every live
 * node's, as last read. Call under mu. */
static int queue_workers(const jobs *js) {
    int n = 0;
    for (int i = 0; js->shared && i < js->stats.queue.n_nodes; i++)
        if (js->stats.queue.nodes[i].seen_ms) n += js->stats.queue.nodes[i].workers;
    return n > js->cfg.workers ? n : js->cfg.workers;
}

/* Work ahead of (and including) j, spread over the workers. Call under mu. */
static double eta_ms(const jobs *js, const job *j) {
    if (j->status == JOB_PROCESSING) return remaining_ms(js, j);
    if (j->status != JOB_PENDING) return 0;
    double ahead = work_ahead(js, j), own = remaining_ms(js, j);
    return ahead < 0 || own < 0 ? -1 : ahead / queue_workers(js) + own;
}

double jobs_estimate_ms(jobs *js, const job_params *p) {
    job tmp = {.status = JOB_PENDING, .params = *p};
    pthread_mutex_lock(&js->mu);
    double ahead = work_ahead(js, NULL), own = remaining_ms(js, &tmp);
    pthread_mutex_unlock(&js->mu);
    return ahead < 0 || own < 0 ? -1 : ahead / queue_workers(js) + own;
}

static int queue_position(const jobs *js, const job *j) {
    if (j->status != JOB_PENDING) return 0;
    int pos = 1;
    for (const job *o = js->by_status[JOB_PENDING].head; o && o != j; o = o->snext)
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

void jobs_refresh(jobs *js, const char *id) {
    if (!js->shared) return;
    pthread_mutex_lock(&js->mu);
    int ok = js->store_ok;
    pthread_mutex_unlock(&js->mu);
    if (!ok) return;
    pthread_mutex_lock(&js->store_mu);
    read_through_locked(js, id);
    pthread_mutex_unlock(&js->store_mu);
}

easel_err jobs_view(jobs *js, const char *id, job_view_fn fn, void *user) {
    if (js->shared) read_through(js, id);
    pthread_mutex_lock(&js->mu);
    job *j = find(js, id);
    if (j) call_view(js, j, fn, user);
    pthread_mutex_unlock(&js->mu);
    return j ? EASEL_OK : easel_seterr(EASEL_ENOTFOUND, "no job %s", id);
}

void jobs_list(jobs *js, int filter, int limit, job_view_fn fn, void *user) {
    pthread_mutex_lock(&js->mu);
    int n = 0;
    if (filter < 0 || filter >= JOB_STATUS_COUNT) {
        for (job *j = js->ltail; j && n < limit; j = j->lprev, n++)
            call_view(js, j, fn, user);
    } else {
        for (job *j = js->by_status[filter].tail; j && n < limit; j = j->sprev, n++)
            call_view(js, j, fn, user);
    }
    pthread_mutex_unlock(&js->mu);
}

easel_err jobs_wait(jobs *js, const char *id, unsigned *version, int timeout_ms) {
    struct timespec until;
    deadline_in(&until, timeout_ms);
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
    deadline_in(&until, timeout_ms);
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
    for (int i = 0; i < JOB_STATUS_COUNT; i++)
        out->by_status[i] = js->by_status[i].n;
    out->queue_depth = js->by_status[JOB_PENDING].n;
    out->running = js->running;
    out->workers = js->cfg.workers;
    out->workers_live = js->live;
    out->queue_max = js->cfg.queue_max;
    out->max_jobs = js->cfg.max_jobs;
    out->retained = js->total;
    out->step_ms_per_mpx = js->ema_step_mpx;
    out->store_ok = js->store_ok;
    snprintf(out->store_error, sizeof out->store_error, "%s", js->store_error);
    out->device_lost = js->device_lost;
    snprintf(out->device_error, sizeof out->device_error, "%s", js->device_error);
    pthread_mutex_unlock(&js->mu);
}

/* ---- images ---- */

int jobs_images_in_store(jobs *js) {
    return js->images_in_store;
}

easel_err jobs_image_range(jobs *js, const char *name, int64_t off, uint8_t *buf, size_t cap,
                           size_t *n, int64_t *total) {
    if (!js->images_in_store) return easel_seterr(EASEL_EUNSUPPORTED, "images are files here");
    return store_image_read(js->st, name, off, buf, cap, n, total); /* its own connection */
}

easel_err jobs_image_read(jobs *js, const char *name, uint8_t **out, size_t *len) {
    *out = NULL, *len = 0;
    if (!js->images_in_store) {
        char path[4400];
        snprintf(path, sizeof path, "%s/%s", js->images_dir, name);
        easel_err e = fs_read_file(path, SIZE_MAX, out, len);
        if (e == EASEL_ENOTFOUND) return easel_seterr(e, "no image %s", name);
        return e ? easel_seterr(e, "reading image %s failed", name) : EASEL_OK;
    }
    size_t cap = 256 * 1024, used = 0;
    uint8_t *buf = malloc(cap);
    int64_t total = 0;
    for (;;) {
        size_t n = 0;
        if (!buf) return easel_seterr(EASEL_ENOMEM, "out of memory");
        easel_err e =
            store_image_read(js->st, name, (int64_t)used, buf + used, cap - used, &n, &total);
        if (e) {
            free(buf);
            return e;
        }
        used += n;
        if ((int64_t)used >= total || !n) break;
        if (used == cap) {
            size_t want = (size_t)total > cap ? (size_t)total : 2 * cap;
            uint8_t *nb = realloc(buf, want);
            if (!nb) free(buf);
            buf = nb, cap = want;
        }
    }
    *out = buf, *len = used;
    return EASEL_OK;
}

int jobs_degraded(jobs *js, char *reason, size_t len) {
    pthread_mutex_lock(&js->mu);
    int d = js->device_lost;
    if (d && reason && len) snprintf(reason, len, "%s", js->device_error);
    pthread_mutex_unlock(&js->mu);
    return d;
}

int jobs_accepting(jobs *js) {
    pthread_mutex_lock(&js->mu);
    int ok = !js->stopping;
    pthread_mutex_unlock(&js->mu);
    return ok;
}

/* ---- removing finished jobs (retention, the retained-jobs cap) ---- */

static void unlink_image(jobs *js, const char *name) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", js->images_dir, name);
    if (unlink(path) && errno != ENOENT)
        log_warn("jobs: removing image %s: %s", name, strerror(errno));
}

/* The finished job that finished first (heads of the three finish-ordered
 * lists), skipping one a worker still holds. Call under mu. */
static job *oldest_finished(jobs *js) {
    job *best = NULL;
    for (int s = JOB_COMPLETED; s < JOB_STATUS_COUNT; s++) {
        job *j = js->by_status[s].head;
        while (j && j->worker >= 0)
            j = j->snext;
        if (j && (!best || j->finished_ms < best->finished_ms)) best = j;
    }
    return best;
}

/* Deletes a finished job: its row first, then the cache and its image.
 * Call with store_mu held. */
static easel_err remove_finished(jobs *js, job *j) {
    easel_err e = store_delete(js->st, j->id);
    if (e) {
        store_failed(js, "deleting a finished job");
        return e;
    }
    pthread_mutex_lock(&js->mu);
    table_remove(js, j);
    touch(js, j);
    pthread_mutex_unlock(&js->mu);
    if (j->image) unlink_image(js, j->image);
    job_free(j);
    return EASEL_OK;
}

/* ---- submit and cancel ---- */

/* Reserves a queue slot so the limits hold while the store write runs unlocked. */
static easel_err reserve(jobs *js, int *evict) {
    easel_err e = EASEL_OK;
    *evict = 0;
    pthread_mutex_lock(&js->mu);
    if (js->stopping)
        e = easel_seterr(EASEL_ECANCELED, "the server is shutting down");
    else if (js->device_lost)
        e = easel_seterr(EASEL_EDEVLOST, "the server cannot run jobs until it restarts: %s",
                         js->device_error);
    else if (js->by_status[JOB_PENDING].n + js->reserved >= js->cfg.queue_max)
        e = easel_seterr(EASEL_EFULL, "the queue is full (%d jobs pending)", js->cfg.queue_max);
    else if (js->cfg.max_jobs > 0 && js->total + js->reserved >= js->cfg.max_jobs &&
             !oldest_finished(js))
        e = easel_seterr(EASEL_EFULL,
                         "the server keeps at most %d jobs (--max-jobs) and none has finished",
                         js->cfg.max_jobs);
    else {
        *evict = js->cfg.max_jobs > 0 && js->total + js->reserved >= js->cfg.max_jobs;
        js->reserved++;
    }
    pthread_mutex_unlock(&js->mu);
    return e;
}

easel_err jobs_submit(jobs *js, job_params *p, char id_out[37]) {
    int evict;
    easel_err e = reserve(js, &evict);
    if (e) return e;
    job *j = calloc(1, sizeof *j);
    cJSON *pj = j ? params_to_json(p) : NULL;
    char *text = pj ? cJSON_PrintUnformatted(pj) : NULL;
    cJSON_Delete(pj);
    store_row r = {0};
    if (!text) e = easel_seterr(EASEL_ENOMEM, "out of memory");
    pthread_mutex_lock(&js->store_mu);
    while (!e && evict) { /* the cap: the oldest finished job makes room */
        pthread_mutex_lock(&js->mu);
        job *old = oldest_finished(js);
        evict = js->total + js->reserved > js->cfg.max_jobs;
        pthread_mutex_unlock(&js->mu);
        if (!old || !evict) break;
        if (!(e = remove_finished(js, old))) {
            pthread_mutex_lock(&js->mu);
            js->stats.evicted++;
            pthread_mutex_unlock(&js->mu);
        }
    }
    if (!e) {
        jobs_new_uuid(j->id);
        memcpy(r.id, j->id, sizeof r.id);
        r.params = text;
        r.created_ms = jobs_clock_ms(js);
        r.webhook_url = p->webhook;
        r.webhook_events = p->webhook ? p->webhook_events : 0;
        r.init_image = p->init_image[0] ? p->init_image : NULL;
        r.mask_image = p->mask[0] && strcmp(p->mask, p->init_image) ? p->mask : NULL;
        e = store_insert(js->st, &r);
        if (e)
            store_failed(js, "accepting a job");
        else if (!js->store_ok)
            store_worked(js);
    }
    pthread_mutex_lock(&js->mu);
    js->reserved--;
    if (!e) {
        j->seq = r.seq;
        j->status = JOB_PENDING;
        j->params = *p;
        j->created_ms = r.created_ms;
        j->steps = p->steps;
        j->worker = -1;
        snprintf(j->model, sizeof j->model, "%s", js->model);
        cache_add(js, j);
        js->stats.submitted++;
        memcpy(id_out, j->id, 37);
        touch(js, j);
        pthread_cond_signal(&js->work);
    }
    pthread_mutex_unlock(&js->mu);
    pthread_mutex_unlock(&js->store_mu);
    free(text);
    if (e) {
        free(j);
        if (e == EASEL_EIO) easel_wraperr(e, "the job store cannot write; nothing was accepted");
        return e;
    }
    memset(p, 0, sizeof *p); /* ownership moved */
    return EASEL_OK;
}

/* Records a finish in the cache (after its row committed). Call under mu. */
static void finish_locked(jobs *js, job *j, job_status s, const char *error, int64_t at) {
    set_status(js, j, s);
    j->finished_ms = at;
    set_str(&j->error, error);
    if (s == JOB_COMPLETED) js->stats.completed++;
    if (s == JOB_FAILED) js->stats.failed++;
    if (s == JOB_CANCELED) js->stats.canceled++;
    touch(js, j);
}

easel_err jobs_cancel(jobs *js, const char *id, job_status *after) {
    pthread_mutex_lock(&js->store_mu);
    int64_t now = jobs_clock_ms(js);
    easel_err e = store_cancel(js->st, id, now, after);
    if (e == EASEL_EIO) {
        store_failed(js, "canceling a job");
        pthread_mutex_unlock(&js->store_mu);
        return easel_wraperr(e, "the job store cannot write; the job was not canceled");
    }
    pthread_mutex_lock(&js->mu);
    job *j = find(js, id);
    if (!e && j && *after == JOB_CANCELED && j->status == JOB_PENDING) {
        finish_locked(js, j, JOB_CANCELED, "canceled by request", now);
    } else if (!e && j && *after == JOB_PROCESSING) {
        j->cancel = 1; /* the worker ends it at the next step */
        touch(js, j);
    } else if (e == EASEL_ENOTFOUND && j) {
        e = EASEL_OK, *after = j->status; /* cached but gone from the store: a bug */
    }
    pthread_mutex_unlock(&js->mu);
    /* a shared store's row may say more than a cache that had not caught up (another
     * node's job, rescued a moment ago): store_wait does not report our own writes */
    if (!e && js->shared) read_through_locked(js, id);
    pthread_mutex_unlock(&js->store_mu);
    return e;
}

/* ---- workers ---- */

typedef struct {
    jobs *js;
    job *j;
    unsigned gen; /* the claim this run is for */
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
    j->stage = step >= steps ? STAGE_DECODING : STAGE_SAMPLING;
    j->progress_ms = jobs_clock_ms(js);
    j->progress_mono_ms = jobs_mono_ms();
    if (step > 0) {
        j->step_ms_avg =
            j->step_ms_avg > 0 ? (1 - EMA_ALPHA) * j->step_ms_avg + EMA_ALPHA * step_ms : step_ms;
        observe_step(js, &j->params, step_ms);
        hist_add(js->stats.step_hist, jobs_step_bounds_ms, JOBS_STEP_BUCKETS, step_ms);
        js->stats.step_count++;
        js->stats.step_sum_ms += step_ms;
    }
    int stop = j->cancel || js->abort_running || j->status != JOB_PROCESSING || j->lost ||
               c->gen != j->claim_gen;
    touch(js, j);
    pthread_mutex_unlock(&js->mu);
    return stop;
}

void jobs_publish_preview(void *progress_user, const char *mime, const uint8_t *data, size_t len,
                          int step, int steps, int width, int height) {
    run_ctx *c = progress_user;
    if (!c || !data || !len) return;
    uint8_t *copy = malloc(len); /* outside the lock: previews are tens of KB */
    if (!copy) return;
    memcpy(copy, data, len);
    jobs *js = c->js;
    pthread_mutex_lock(&js->mu);
    job *j = c->j;
    /* a run that lost its lease (another node has the job now) shows nothing more */
    if (j->status == JOB_PROCESSING && !j->cancel && !j->lost && c->gen == j->claim_gen) {
        drop_preview(j);
        j->preview = (job_preview){copy, len, mime, step, steps, width, height, j->preview.seq + 1};
        copy = NULL;
        js->stats.previews++;
        touch(js, j);
    }
    pthread_mutex_unlock(&js->mu);
    free(copy);
}

static void owner_of(const jobs *js, int worker, char *buf, size_t n) {
    snprintf(buf, n, "%s/w%d", js->node, worker);
}

/* Claims the oldest pending job from the store for worker (waiting until
 * the cache shows one). NULL when there is none after all, or stopping: the
 * caller's loop asks again, so a job canceled or taken in between never
 * ends a worker. */
static job *first_pending_for_me(jobs *js) {
    for (job *j = js->by_status[JOB_PENDING].head; j; j = j->snext)
        if (!j->model[0] || !js->model[0] || !strcmp(j->model, js->model)) return j;
    return NULL;
}

static job *take(jobs *js, int worker) {
    pthread_mutex_lock(&js->mu);
    while (!js->stopping && (js->device_lost || !first_pending_for_me(js)))
        wait_ms(&js->work, &js->mu, 1000); /* a lost device: idle until the restart */
    char seen[37] = "";
    job *first = first_pending_for_me(js);
    if (first) memcpy(seen, first->id, 37);
    int stopping = js->stopping;
    pthread_mutex_unlock(&js->mu);
    if (stopping) return NULL;
    if (js->cfg.take_hook) js->cfg.take_hook(js->cfg.hook_ctx, seen);
    char owner[STORE_OWNER_MAX];
    owner_of(js, worker, owner, sizeof owner);
    store_row r;
    int found = 0;
    job *j = NULL;
    pthread_mutex_lock(&js->store_mu);
    int64_t now = jobs_clock_ms(js);
    easel_err e =
        js->stopping ? EASEL_OK : store_claim(js->st, owner, now, js->lease_ms, &r, &found);
    if (e) store_failed(js, "claiming a job");
    pthread_mutex_lock(&js->mu);
    if (found) {
        j = find(js, r.id);
        if (!j && (j = job_from_row(&r))) { /* claimed a job this cache never saw */
            j->status = JOB_PENDING;
            cache_add(js, j);
        }
        if (j) {
            set_status(js, j, JOB_PROCESSING);
            j->attempts = r.attempts;
            j->started_ms = j->progress_ms = r.started_ms;
            j->progress_mono_ms = j->last_beat_ms = j->last_hook_ms = jobs_mono_ms();
            j->step = 0;
            j->stage = STAGE_ENCODING;
            j->step_ms_avg = 0;
            j->cancel = r.cancel_requested;
            j->worker = worker; /* (a stale run of it here, if any, sees claim_gen move) */
            j->claim_gen++;
            j->lost = 0;
            snprintf(j->owner, sizeof j->owner, "%s", owner);
            j->pushed_step = 0, j->pushed_mono_ms = j->progress_mono_ms;
            js->running++;
            touch(js, j);
        }
    }
    int refresh = js->shared && !e && !found && seen[0] && !js->stopping;
    if (!found && !e && !js->stopping) wait_ms(&js->work, &js->mu, 20); /* nothing after all */
    pthread_mutex_unlock(&js->mu);
    /* A shared store, and the job the cache showed pending could not be claimed: if the
     * cache is behind (a change it has not heard of), read the row again, so a stale
     * "pending" cannot keep the workers claiming nothing (and the API saying pending). */
    if (refresh) refresh_row(js, seen);
    pthread_mutex_unlock(&js->store_mu);
    if (found) store_row_clear(&r);
    if (e) { /* the store cannot claim: do not spin */
        pthread_mutex_lock(&js->mu);
        if (!js->stopping) wait_ms(&js->tick, &js->mu, 1000);
        pthread_mutex_unlock(&js->mu);
    }
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

/* Appends to out (cap bytes, NUL-terminated, k used) without overflowing. */
static void append(char *out, size_t cap, size_t *k, const char *s, size_t n) {
    if (*k + 1 >= cap) return;
    if (n > cap - 1 - *k) n = cap - 1 - *k;
    memcpy(out + *k, s, n);
    *k += n;
    out[*k] = 0;
}

/* Job errors are shown to API clients: no server paths in them. The images
 * dir becomes "images", any other absolute path its last component. */
static void redact_paths(const jobs *js, char *msg, size_t cap) {
    char out[512] = "";
    size_t k = 0, dl = strlen(js->images_dir);
    for (const char *p = msg; *p;) {
        int word_start = p == msg || strchr(" '\"(", p[-1]);
        if (!word_start || *p != '/') {
            append(out, sizeof out, &k, p++, 1);
            continue;
        }
        size_t n = strcspn(p, " :'\",)");
        if (dl && n >= dl && !strncmp(p, js->images_dir, dl) && (n == dl || p[dl] == '/')) {
            append(out, sizeof out, &k, "images", 6);
            append(out, sizeof out, &k, p + dl, n - dl);
        } else {
            const char *base = p;
            for (const char *q = p; q < p + n; q++)
                if (*q == '/') base = q + 1;
            append(out, sizeof out, &k, base, (size_t)(p + n - base));
        }
        p += n;
    }
    snprintf(msg, cap, "%s", out);
}

typedef struct {
    easel_err err;
    const char *msg, *image;
    const gen_timings *t;
    const uint8_t *png; /* the image itself when the store holds images */
    size_t png_len;
} outcome;

/* The row after the outcome (call under mu); *status_out receives it. */
static void outcome_row(jobs *js, const job *j, const outcome *o, store_row *r, int64_t now) {
    snapshot(j, r);
    r->finished_ms = now;
    free(r->error), r->error = NULL;
    if (!o->err) {
        r->status = JOB_COMPLETED;
        free(r->image), r->image = o->image ? strdup(o->image) : NULL;
        r->image_data = o->png, r->image_len = o->png_len;
        cJSON *t = timings_json(o->t);
        free(r->timings), r->timings = t ? cJSON_PrintUnformatted(t) : NULL;
        cJSON_Delete(t);
    } else if (o->err == EASEL_EDEVLOST) {
        r->status = JOB_PENDING; /* not the job's fault: it runs after the restart needed */
        r->attempts = j->attempts - 1;
        r->started_ms = r->finished_ms = r->progress_ms = 0;
    } else if (o->err == EASEL_ECANCELED && !j->cancel && js->abort_running) {
        r->status = JOB_PENDING; /* interrupted by shutdown: runs again after restart */
        r->attempts = j->attempts - 1;
        r->started_ms = r->finished_ms = r->progress_ms = 0;
    } else if (o->err == EASEL_ECANCELED) {
        r->status = JOB_CANCELED;
        r->error = strdup("canceled by request");
    } else {
        r->status = JOB_FAILED;
        r->error = strdup(o->msg);
    }
}

/* Applies a committed outcome row to the cache. Call under mu. */
static void apply_outcome(jobs *js, job *j, const store_row *r, const outcome *o) {
    js->running--;
    j->worker = -1;
    j->finishing = 0;
    if (r->status == JOB_PENDING) {
        log_info("jobs: job %s goes back to the queue (stopping)", j->id);
        set_status(js, j, JOB_PENDING);
        j->attempts = r->attempts;
        j->started_ms = 0;
        j->step = 0;
        j->stage = STAGE_QUEUED;
        touch(js, j);
    } else {
        if (r->status == JOB_COMPLETED) {
            set_str(&j->image, o->image);
            j->timings = *o->t;
            j->have_timings = 1;
            j->step = j->steps;
            const gen_timings *t = o->t;
            if (t->total_ms > t->sample_ms)
                js->ema_overhead_ms = ema(js->ema_overhead_ms, t->total_ms - t->sample_ms);
            if (t->decode_ms > 0)
                js->ema_decode_mpx = ema(js->ema_decode_mpx, t->decode_ms / mpx(&j->params));
            double secs = (r->finished_ms - j->started_ms) / 1000.0;
            hist_add(js->stats.time_hist, jobs_time_bounds_s, JOBS_TIME_BUCKETS, secs);
            js->stats.time_count++;
            js->stats.time_sum_s += secs;
        }
        finish_locked(js, j, r->status, r->error, r->finished_ms);
    }
    if (!js->running) pthread_cond_broadcast(&js->idle);
}

/* Records the outcome of a run: store first, then the cache. While the
 * store cannot write, the result is held and the write retried each second
 * (the job shows processing, as the store says); given up only when a
 * shutdown interrupts it (the row stays processing: requeued at restart). */
static void complete(jobs *js, job *j, int worker, const outcome *o) {
    char owner[STORE_OWNER_MAX];
    owner_of(js, worker, owner, sizeof owner);
    if (o->err == EASEL_EDEVLOST) { /* a sticky GPU fault: every later job would fail too */
        pthread_mutex_lock(&js->mu);
        if (!js->device_lost)
            log_error("jobs: the device is lost; taking no more jobs until a restart: %s", o->msg);
        js->device_lost = 1;
        snprintf(js->device_error, sizeof js->device_error, "%.190s", o->msg);
        pthread_cond_broadcast(&js->work);
        pthread_mutex_unlock(&js->mu);
    }
    for (;;) {
        store_row r;
        pthread_mutex_lock(&js->store_mu);
        pthread_mutex_lock(&js->mu);
        outcome_row(js, j, o, &r, jobs_clock_ms(js));
        pthread_mutex_unlock(&js->mu);
        easel_err e = store_finish(js->st, &r, owner);
        pthread_mutex_lock(&js->mu);
        if (!e) {
            apply_outcome(js, j, &r, o);
        } else if (e == EASEL_ENOTFOUND) { /* the watchdog failed it meanwhile, or (several
                                            * nodes) its lease went to another: drop the result */
            js->running--;
            if (j->worker == worker) j->worker = -1; /* unless it was claimed here again */
            j->finishing = 0;
            if (!js->running) pthread_cond_broadcast(&js->idle);
            if (js->shared) {
                if (!j->lost) js->stats.leases_lost++;
                log_warn("jobs: job %s: its lease was lost before its result was written; the "
                         "result is dropped",
                         j->id);
                pthread_mutex_unlock(&js->mu);
                read_through_locked(js, j->id); /* the cache shows what the store says */
                pthread_mutex_lock(&js->mu);
            }
        } else {
            j->finishing = 1;
        }
        int give_up = e && e != EASEL_ENOTFOUND && js->abort_running;
        if (give_up) {
            js->running--;
            if (j->worker == worker) j->worker = -1;
            if (!js->running) pthread_cond_broadcast(&js->idle);
        }
        pthread_mutex_unlock(&js->mu);
        pthread_mutex_unlock(&js->store_mu);
        store_row_clear(&r);
        if (e == EASEL_ENOTFOUND && o->image && !js->images_in_store) unlink_image(js, o->image);
        if (!e) store_worked(js);
        if (!e || e == EASEL_ENOTFOUND || give_up) return;
        store_failed(js, "recording a finished job");
        pthread_mutex_lock(&js->mu);
        wait_ms(&js->tick, &js->mu, 1000);
        pthread_mutex_unlock(&js->mu);
    }
}

static void run_one(jobs *js, job *j, int worker) {
    gen_params g;
    params_to_gen(&j->params, &g); /* params are immutable while processing */
    pthread_mutex_lock(&js->mu);
    run_ctx c = {js, j, j->claim_gen};
    pthread_mutex_unlock(&js->mu);
    uint8_t *rgb = NULL;
    gen_timings t = {0};
    uint8_t *init = NULL, *mask = NULL;
    easel_clearerr();
    easel_err e = EASEL_OK;
    if (j->params.init_image[0]) {
        e = js->runner.load_images
                ? js->runner.load_images(js->runner.ctx, &j->params, &init, &mask)
                : easel_seterr(EASEL_EUNSUPPORTED, "init_image: this server keeps no uploads");
        g.init_image = init, g.mask = mask;
    }
    if (!e) e = js->runner.run(js->runner.ctx, worker, &g, on_progress, &c, &rgb, &t);
    free(init), free(mask);
    char msg[512], name[160], path[4096];
    snprintf(msg, sizeof msg, "%s", e ? easel_errmsg() : "");
    uint8_t *png = NULL;
    size_t png_len = 0;
    if (!e) {
        image_name(j, name, sizeof name);
        snprintf(path, sizeof path, "%s/%s", js->images_dir, name);
        if (js->images_in_store) /* written with the job's row, in one transaction */
            e = js->runner.encode_image(js->runner.ctx, rgb, g.width, g.height, &png, &png_len);
        else
            e = js->runner.write_image(js->runner.ctx, path, rgb, g.width, g.height);
        if (e) snprintf(msg, sizeof msg, "writing the image: %s", easel_errmsg());
    }
    free(rgb);
    if (e && !msg[0]) snprintf(msg, sizeof msg, "%s", easel_errname(e));
    redact_paths(js, msg, sizeof msg);
    outcome o = {e, msg, e ? NULL : name, &t, png, png_len};
    complete(js, j, worker, &o);
    free(png);
}

static void worker_exited(void *arg) {
    worker_arg *wa = arg;
    jobs *js = wa->js;
    pthread_mutex_lock(&js->mu);
    js->workers[wa->index].alive = 0;
    js->live--;
    if (!js->stopping) log_error("jobs: worker %d exited unexpectedly", wa->index);
    pthread_cond_broadcast(&js->tick);
    pthread_mutex_unlock(&js->mu);
    free(wa);
}

static void *worker_main(void *arg) {
    worker_arg *wa = arg;
    jobs *js = wa->js;
    int index = wa->index;
    pthread_cleanup_push(worker_exited, wa); /* runs on return and on pthread_exit */
    /* Rendering yields to the HTTP threads: a poll or a submit must not wait
     * behind a GEMM on a fully busy machine. Raising nice needs no privilege. */
    if (js->cfg.worker_nice > 0 &&
        setpriority(PRIO_PROCESS, (id_t)gettid(), js->cfg.worker_nice) != 0)
        log_warn("jobs: worker %d: setpriority: %s", index, strerror(errno));
    for (;;) {
        pthread_mutex_lock(&js->mu);
        int stop = js->stopping;
        pthread_mutex_unlock(&js->mu);
        if (stop) break;
        job *j = take(js, index);
        if (j) run_one(js, j, index);
    }
    pthread_cleanup_pop(1);
    return NULL;
}

static easel_err start_worker(jobs *js, int i) {
    worker_arg *wa = malloc(sizeof *wa);
    if (!wa) return easel_seterr(EASEL_ENOMEM, "jobs: out of memory");
    wa->js = js, wa->index = i;
    pthread_mutex_lock(&js->mu);
    js->workers[i].alive = 1;
    js->live++;
    pthread_mutex_unlock(&js->mu);
    if (pthread_create(&js->workers[i].thread, NULL, worker_main, wa)) {
        pthread_mutex_lock(&js->mu);
        js->workers[i].alive = 0;
        js->live--;
        pthread_mutex_unlock(&js->mu);
        free(wa);
        return easel_seterr(EASEL_EIO, "jobs: cannot start a worker thread");
    }
    js->workers[i].started = 1;
    return EASEL_OK;
}

/* Restarts workers that exited while not stopping (maintenance thread). */
static void supervise(jobs *js) {
    for (int i = 0; i < js->cfg.workers; i++) {
        pthread_mutex_lock(&js->mu);
        int dead = js->workers[i].started && !js->workers[i].alive && !js->stopping;
        pthread_mutex_unlock(&js->mu);
        if (!dead) continue;
        pthread_join(js->workers[i].thread, NULL);
        js->workers[i].started = 0;
        if (start_worker(js, i)) {
            log_error("jobs: cannot restart worker %d: %s", i, easel_errmsg());
            continue;
        }
        pthread_mutex_lock(&js->mu);
        js->workers[i].restarts++;
        js->stats.worker_restarts++;
        pthread_mutex_unlock(&js->mu);
        log_warn("jobs: restarted worker %d", i);
    }
}

/* ---- maintenance ---- */

/* How long a processing job may go without progress: the timeout, and
 * while decoding (one long call without steps) also 3x the decode time
 * measured for its size. */
static int64_t budget_ms(const jobs *js, const job *j) {
    int64_t b = js->cfg.job_timeout_s * 1000LL;
    if (j->stage == STAGE_DECODING && js->ema_decode_mpx > 0) {
        int64_t d = (int64_t)(3 * js->ema_decode_mpx * mpx(&j->params));
        if (d > b) b = d;
    }
    return b;
}

static int watchdog(jobs *js, int64_t now_mono) {
    if (js->cfg.job_timeout_s <= 0) return 0;
    int n = 0;
    for (;;) {
        char id[37] = "", msg[160];
        pthread_mutex_lock(&js->store_mu);
        pthread_mutex_lock(&js->mu);
        for (job *j = js->by_status[JOB_PROCESSING].head; j && !id[0]; j = j->snext)
            if (j->worker >= 0 && !j->lost && !j->finishing &&
                now_mono - j->progress_mono_ms > budget_ms(js, j))
                memcpy(id, j->id, 37);
        pthread_mutex_unlock(&js->mu);
        if (!id[0]) {
            pthread_mutex_unlock(&js->store_mu);
            return n;
        }
        snprintf(msg, sizeof msg, "no progress for %d s: stopped by the watchdog",
                 js->cfg.job_timeout_s);
        int64_t now = jobs_clock_ms(js);
        easel_err e = store_fail(js->st, id, now, msg);
        pthread_mutex_lock(&js->mu);
        job *j = find(js, id);
        if ((!e || e == EASEL_ENOTFOUND) && j && j->status == JOB_PROCESSING) {
            j->cancel = 1;
            if (!e) finish_locked(js, j, JOB_FAILED, msg, now), n++;
        }
        pthread_mutex_unlock(&js->mu);
        pthread_mutex_unlock(&js->store_mu);
        if (e == EASEL_EIO) {
            store_failed(js, "the watchdog");
            return n;
        }
        if (!e) log_warn("jobs: watchdog failed job %s", id);
    }
}

static int retention(jobs *js, int64_t now) {
    if (js->cfg.retention_ms <= 0) return 0;
    int n = 0;
    for (;;) {
        pthread_mutex_lock(&js->store_mu);
        pthread_mutex_lock(&js->mu);
        job *old = oldest_finished(js);
        if (old && now - old->finished_ms <= js->cfg.retention_ms) old = NULL;
        pthread_mutex_unlock(&js->mu);
        easel_err e = old ? remove_finished(js, old) : EASEL_OK;
        pthread_mutex_unlock(&js->store_mu);
        if (!old || e) return n;
        n++;
    }
}

/* Renews the leases of the jobs this node's workers hold (and records their
 * progress time in the store), every BEAT_EVERY_MS; queues a progress webhook
 * for a job that asked for them at most every cfg.webhook_progress_ms (its
 * first one that long after it started, once it has taken a step). */
static void heartbeats(jobs *js, int64_t now_mono) {
    int64_t hook_every = js->cfg.webhook_progress_ms > 0 ? js->cfg.webhook_progress_ms : 5000;
    for (;;) {
        char id[37] = "";
        int worker = -1, progress = 0, beat = 0, step = 0;
        pthread_mutex_lock(&js->mu);
        for (job *j = js->by_status[JOB_PROCESSING].head; j && !id[0]; j = j->snext) {
            if (j->worker < 0 || j->lost) continue;
            beat = now_mono - j->last_beat_ms >= js->beat_ms;
            progress = j->params.webhook && (j->params.webhook_events & STORE_EV_PROGRESS) &&
                       j->step > 0 && now_mono - j->last_hook_ms >= hook_every;
            if (!beat && !progress) continue;
            memcpy(id, j->id, 37), worker = j->worker, step = j->step;
            if (beat) j->last_beat_ms = now_mono;
            if (progress) j->last_hook_ms = now_mono;
        }
        pthread_mutex_unlock(&js->mu);
        if (!id[0]) return;
        char owner[STORE_OWNER_MAX];
        owner_of(js, worker, owner, sizeof owner);
        int cancel = 0;
        pthread_mutex_lock(&js->store_mu);
        int64_t now = jobs_clock_ms(js);
        easel_err e =
            beat ? store_heartbeat(js->st, id, owner, now, js->lease_ms, &cancel) : EASEL_OK;
        if (!e && progress) e = store_outbox_add(js->st, id, "progress", step, now);
        pthread_mutex_unlock(&js->store_mu);
        if (e == EASEL_EIO) store_failed(js, beat ? "renewing a lease" : "queueing a webhook");
        if (!e && progress) {
            pthread_mutex_lock(&js->mu);
            if (js->outbox_kick) js->outbox_kick(js->outbox_ctx);
            pthread_mutex_unlock(&js->mu);
        }
        if (!e && cancel) { /* canceled through the store (another node) */
            pthread_mutex_lock(&js->mu);
            job *j = find(js, id);
            if (j && !j->cancel) j->cancel = 1, touch(js, j);
            pthread_mutex_unlock(&js->mu);
        }
    }
}

/* ---- webhook deliveries ---- */

void jobs_set_outbox_kick(jobs *js, void (*kick)(void *ctx), void *ctx) {
    pthread_mutex_lock(&js->mu);
    js->outbox_kick = kick, js->outbox_ctx = ctx;
    pthread_mutex_unlock(&js->mu);
}

static int delivery_slot(const char *event) {
    return !strcmp(event, "start") ? 0 : !strcmp(event, "progress") ? 1 : 2;
}

/* The job's view of a delivery, and the counters. */
static void record_delivery(jobs *js, const outbox_row *r) {
    pthread_mutex_lock(&js->mu);
    job *j = find(js, r->job_id);
    if (j) {
        job_delivery *d = &j->deliveries[delivery_slot(r->event)];
        snprintf(d->event, sizeof d->event, "%s", r->event);
        d->status = r->status;
        d->attempts = r->attempts;
        d->done_ms = r->done_ms;
        snprintf(d->error, sizeof d->error, "%s", r->error);
        touch(js, j);
    }
    pthread_mutex_unlock(&js->mu);
}

easel_err jobs_outbox_due(jobs *js, const char *owner, outbox_row *out, int max, int *n) {
    pthread_mutex_lock(&js->store_mu);
    easel_err e = store_outbox_due(js->st, owner, jobs_clock_ms(js), 60000, out, max, n);
    pthread_mutex_unlock(&js->store_mu);
    if (e) store_failed(js, "claiming webhooks");
    for (int i = 0; !e && i < *n; i++)
        record_delivery(js, &out[i]);
    return e;
}

easel_err jobs_outbox_done(jobs *js, const outbox_row *r) {
    pthread_mutex_lock(&js->store_mu);
    easel_err e = store_outbox_done(js->st, r);
    pthread_mutex_unlock(&js->store_mu);
    if (e) {
        store_failed(js, "recording a webhook");
        return e;
    }
    record_delivery(js, r);
    pthread_mutex_lock(&js->mu);
    if (r->status == OUTBOX_DELIVERED) js->stats.webhooks_delivered++;
    if (r->status == OUTBOX_FAILED) js->stats.webhooks_failed++;
    if (r->status == OUTBOX_PENDING) js->stats.webhooks_retried++;
    pthread_mutex_unlock(&js->mu);
    return EASEL_OK;
}

int jobs_maintain(jobs *js, int64_t now_ms, int64_t now_mono_ms) {
    return watchdog(js, now_mono_ms) + retention(js, now_ms);
}

static int cmp_cstr(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int all_of(const char *s, size_t n, const char *set) {
    return strspn(s, set) >= n;
}

/* The names easel writes (image_name): "<uuid>.png" and
 * "conceptual_<room>_<YYYYmmdd>_<HHMMSS>_<8 hex>.png"; other files in the
 * directory are the operator's and are never touched. */
static int is_our_image(const char *nm, size_t len) {
    static const char hex[] = "0123456789abcdef", digits[] = "0123456789";
    if (len == 40 && !strcmp(nm + 36, ".png")) {
        for (int i = 0; i < 36; i++)
            if ((i == 8 || i == 13 || i == 18 || i == 23) ? nm[i] != '-' : !strchr(hex, nm[i]))
                return 0;
        return 1;
    }
    if (len < 11 + 1 + 16 + 9 + 4 || strncmp(nm, "conceptual_", 11) || strcmp(nm + len - 4, ".png"))
        return 0;
    const char *tail = nm + len - 4 - 8 - 1 - 6 - 1 - 8 - 1; /* "_YYYYmmdd_HHMMSS_xxxxxxxx" */
    return tail[0] == '_' && all_of(tail + 1, 8, digits) && tail[9] == '_' &&
           all_of(tail + 10, 6, digits) && tail[16] == '_' && all_of(tail + 17, 8, hex);
}

int jobs_sweep_orphans(jobs *js, int min_age_s) {
    if (js->images_in_store) return 0; /* rows, deleted with their jobs */
    /* the names the cache refers to, and the id prefixes of jobs in flight
     * (whose image may be renamed into place before its row commits) */
    pthread_mutex_lock(&js->mu);
    size_t n = 0, np = 0, cap = (size_t)js->total + 1;
    char **names = malloc(cap * sizeof *names);
    char(*busy)[9] = malloc(((size_t)js->by_status[JOB_PROCESSING].n + 1) * sizeof *busy);
    int ok = names && busy;
    for (job *j = js->lhead; ok && j; j = j->lnext)
        if (j->image && !(names[n] = strdup(j->image)))
            ok = 0;
        else if (j->image)
            n++;
    for (job *j = js->by_status[JOB_PROCESSING].head; ok && j; j = j->snext)
        snprintf(busy[np++], 9, "%.8s", j->id);
    pthread_mutex_unlock(&js->mu);
    int removed = 0;
    DIR *d = ok ? opendir(js->images_dir) : NULL;
    if (ok) qsort(names, n, sizeof *names, cmp_cstr);
    time_t now = time(NULL);
    struct dirent *de;
    while (d && (de = readdir(d))) {
        const char *nm = de->d_name;
        size_t len = strlen(nm);
        int temp = fs_is_temp_name(nm) && strstr(nm, ".png.tmp.");
        if (!temp && !is_our_image(nm, len)) continue;
        if (!temp && bsearch(&nm, names, n, sizeof *names, cmp_cstr)) continue;
        int in_flight = 0;
        for (size_t i = 0; i < np && !in_flight; i++)
            in_flight = strstr(nm, busy[i]) != NULL;
        if (in_flight) continue;
        char path[4096 + 256];
        snprintf(path, sizeof path, "%s/%s", js->images_dir, nm);
        struct stat sb;
        if (lstat(path, &sb) || !S_ISREG(sb.st_mode) || now - sb.st_mtime < min_age_s) continue;
        if (!unlink(path)) {
            removed++;
            log_info("jobs: removed %s %s", temp ? "a partial image" : "an orphaned image", nm);
        }
    }
    if (d) closedir(d);
    for (size_t i = 0; names && i < n; i++)
        free(names[i]);
    free(names);
    free(busy);
    if (removed) {
        pthread_mutex_lock(&js->mu);
        js->stats.orphans_removed += (uint64_t)removed;
        pthread_mutex_unlock(&js->mu);
    }
    return removed;
}

static void *maint_main(void *arg) {
    jobs *js = arg;
    int64_t last_sweep = jobs_mono_ms();
    pthread_mutex_lock(&js->mu);
    while (!js->stopping) {
        wait_ms(&js->tick, &js->mu, 1000);
        if (js->stopping) break;
        int store_ok = js->store_ok;
        pthread_mutex_unlock(&js->mu);
        int64_t mono = jobs_mono_ms();
        supervise(js);
        if (!store_ok) {
            pthread_mutex_lock(&js->store_mu);
            easel_err e = store_probe(js->st);
            pthread_mutex_unlock(&js->store_mu);
            if (!e) store_worked(js);
        }
        heartbeats(js, mono);
        if (js->shared) shared_duties(js, mono);
        jobs_maintain(js, jobs_clock_ms(js), mono);
        if (!js->images_in_store && mono - last_sweep >= SWEEP_EVERY_S * 1000LL) {
            jobs_sweep_orphans(js, SWEEP_MIN_AGE_S);
            last_sweep = mono;
        }
        pthread_mutex_lock(&js->store_mu);
        easel_err e = store_checkpoint(js->st);
        pthread_mutex_unlock(&js->store_mu);
        if (e) log_warn("jobs: %s", easel_errmsg());
        pthread_mutex_lock(&js->mu);
    }
    pthread_mutex_unlock(&js->mu);
    return NULL;
}

/* ---- lifecycle ---- */

easel_err jobs_start(jobs *js) {
    for (int i = 0; i < js->cfg.workers; i++) {
        easel_err e = start_worker(js, i);
        if (e) return e;
    }
    if (pthread_create(&js->maint, NULL, maint_main, js))
        return easel_seterr(EASEL_EIO, "jobs: cannot start the maintenance thread");
    js->started = 1;
    if (js->shared) {
        if (pthread_create(&js->sync, NULL, sync_main, js))
            return easel_seterr(EASEL_EIO, "jobs: cannot start the sync thread");
        js->sync_started = 1;
    }
    return EASEL_OK;
}

void jobs_stop(jobs *js) {
    if (!js || js->stopped) return;
    pthread_mutex_lock(&js->mu);
    js->stopping = 1;
    pthread_cond_broadcast(&js->work);
    pthread_cond_broadcast(&js->tick);
    struct timespec until;
    deadline_in(&until, js->cfg.shutdown_grace_s * 1000);
    while (js->running)
        if (pthread_cond_timedwait(&js->idle, &js->mu, &until) == ETIMEDOUT) break;
    js->abort_running = 1; /* whatever still runs stops at its next step, back to pending */
    pthread_cond_broadcast(&js->tick);
    pthread_mutex_unlock(&js->mu);
    if (js->started) pthread_join(js->maint, NULL);
    for (int i = 0; i < js->cfg.workers; i++)
        if (js->workers[i].started) pthread_join(js->workers[i].thread, NULL);
    pthread_mutex_lock(&js->mu);
    js->sync_stop = 1; /* after the workers: their runs saw other nodes' cancels until the end */
    pthread_mutex_unlock(&js->mu);
    if (js->sync_started) pthread_join(js->sync, NULL);
    js->sync_started = 0;
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
    free(js->workers);
    free(js->images_dir);
    free(js->node);
    free(js);
}
