/* The job scheduler: workers that claim jobs from the store (the queue's
 * truth), an in-memory cache of every job for cheap status reads (kept in
 * step with the store: a state changes in memory only after its write
 * committed), per-step progress with an ETA, cancel, a watchdog, retention
 * with a cap on retained jobs, orphan-image sweeps, worker supervision and
 * a degraded state while the store cannot write. The work itself is behind
 * a job_runner, so the scheduler is tested without a model and `easel
 * serve` plugs in the real pipeline.
 *
 * Locks: `store_mu` serialises every store call and the cache change that
 * follows it (taken first), `mu` guards the cache (taken second, held
 * briefly); a status poll takes only `mu`, so it never waits for a write. */
#ifndef EASEL_JOBS_H
#define EASEL_JOBS_H

#include <pthread.h>
#include <stdint.h>

#include "params.h"
#include "store.h"

/* Called after every step; nonzero asks the runner to stop (EASEL_ECANCELED).
 * Also called once with step 0 when the prompts are encoded (sampling
 * starts); after step == steps the image is being decoded. */
typedef int (*job_progress_fn)(void *user, int step, int steps, double step_ms);

typedef struct {
    /* Runs one job on worker `worker` (0-based): on success *rgb is a malloc'd
     * width*height*3 image. Must call progress after each step and stop when it
     * returns nonzero. */
    easel_err (*run)(void *ctx, int worker, const gen_params *p, job_progress_fn progress,
                     void *user, uint8_t **rgb, gen_timings *t);
    /* Writes the image atomically (temp file, fsync, rename). */
    easel_err (*write_image)(void *ctx, const char *path, const uint8_t *rgb, int w, int h);
    void *ctx;
    /* Encodes the image (PNG) into *out (malloc'd): used instead of
     * write_image when the store holds images (store_holds_images). */
    easel_err (*encode_image)(void *ctx, const uint8_t *rgb, int w, int h, uint8_t **out,
                              size_t *len);
    /* img2img / inpainting (optional): the pixels of a job's init_image
     * (*rgb, width·height·3) and mask (*mask, width·height, NULL without
     * one), decoded from its uploads, malloc'd; called before run for a job
     * with p->init_image. An error fails the job with its message. NULL: such
     * jobs fail ("no upload store"). */
    easel_err (*load_images)(void *ctx, const job_params *p, uint8_t **rgb, uint8_t **mask);
} job_runner;

typedef struct {
    int workers;            /* jobs processing at once (>= 1) */
    int queue_max;          /* pending jobs accepted at most; then EASEL_EFULL */
    int max_jobs;           /* jobs retained in all (0 = no cap); full: oldest finished evicted */
    int job_timeout_s;      /* watchdog: fail a job with no progress for this long; 0 = off */
    int64_t retention_ms;   /* finished jobs + images deleted after this; 0 = keep */
    int max_attempts;       /* interrupted this many times -> failed (3) */
    int shutdown_grace_s;   /* jobs_stop waits this long for running jobs, then requeues */
    const char *images_dir; /* where images are written (must exist) */
    const char *node;       /* lease owner prefix ("host:pid"); NULL = made up */
    int worker_nice;        /* worker threads lower their priority by this (0 = not) */
    int64_t lease_ms;       /* a claimed job's lease (0: 120 s); renewed every lease/3 (<= 5 s) */
    const char *model;      /* the model this node serves (shared stores claim only its jobs) */
    int64_t webhook_progress_ms; /* a progress webhook at most this often (0 = 5 s) */
    /* Tests: called by a worker after it saw a pending job in the cache and
     * before it claims it from the store (so a test can make the job vanish). */
    void (*take_hook)(void *ctx, const char *id);
    void *hook_ctx;
} jobs_config;

/* The state of one of a job's webhook events (the latest of each kind). */
typedef struct {
    char event[16]; /* "" = none */
    outbox_status status;
    int attempts;
    int64_t done_ms;
    char error[200];
} job_delivery;

/* What a job is doing while processing. */
typedef enum { STAGE_QUEUED = 0, STAGE_ENCODING, STAGE_SAMPLING, STAGE_DECODING } job_stage;
const char *job_stage_name(job_stage s);

/* The latest live preview of a processing job (jobs_publish_preview). Held in
 * memory only, dropped when the job leaves processing. */
typedef struct {
    uint8_t *data; /* NULL: none (yet, or any more) */
    size_t len;
    const char *mime; /* "image/jpeg" or "image/png" (static strings) */
    int step, steps, width, height;
    unsigned seq; /* 1, 2, ... over the job's life (never reused: an ETag) */
} job_preview;

/* One job. Read-only outside jobs.c, and only while holding the jobs lock
 * (i.e. inside a jobs_view / jobs_list callback). */
typedef struct job {
    char id[37];
    int64_t seq;
    job_status status;
    job_params params;
    int64_t created_ms, started_ms, finished_ms, progress_ms; /* wall clock, for display */
    int64_t progress_mono_ms;                                 /* monotonic: the watchdog's clock */
    int attempts;
    char *error, *image;
    gen_timings timings;
    int have_timings;
    int step, steps;
    job_stage stage;
    double step_ms_avg; /* this job's moving average step time */
    int cancel;         /* cancel requested while processing */
    int worker;         /* >= 0 while a worker holds the job */
    int finishing;      /* its result is being written (retried while the store fails) */
    unsigned version;   /* bumped on every change (SSE) */
    int64_t last_beat_ms;
    int64_t last_hook_ms;       /* when its last progress webhook was queued (mono) */
    job_delivery deliveries[3]; /* start, progress, completed */
    /* several nodes (a shared store): */
    char owner[STORE_OWNER_MAX]; /* the lease owner while processing ("node/wN"), any node */
    char model[64];              /* the model it is for */
    int lost;                    /* this node's run lost its lease (another node has the job) */
    unsigned claim_gen;          /* bumped by each claim here: a stale run knows it is stale */
    int pushed_step;             /* progress last written to the store ... */
    int64_t pushed_mono_ms;      /* ... and when (monotonic) */
    unsigned seen_gen;           /* the reload that last saw its row */
    job_preview preview;
    struct job *hnext, *lprev, *lnext, *sprev, *snext;
} job;

/* What a view callback gets besides the job: values computed at view time. */
typedef struct {
    int queue_position; /* 1-based among pending jobs; 0 when not pending */
    double eta_s;       /* seconds until the job should finish; < 0 unknown */
} job_extra;

typedef void (*job_view_fn)(void *user, const job *j, const job_extra *x);

#define JOBS_STEP_BUCKETS 12
#define JOBS_TIME_BUCKETS 13
extern const double jobs_step_bounds_ms[JOBS_STEP_BUCKETS]; /* last is +Inf */
extern const double jobs_time_bounds_s[JOBS_TIME_BUCKETS];

typedef struct {
    int by_status[JOB_STATUS_COUNT];
    int queue_depth, running, workers, workers_live, queue_max, max_jobs, retained;
    uint64_t step_hist[JOBS_STEP_BUCKETS], step_count; /* cumulative counts per bound */
    double step_sum_ms;
    uint64_t time_hist[JOBS_TIME_BUCKETS], time_count;
    double time_sum_s;
    uint64_t submitted, completed, failed, canceled, evicted, orphans_removed, worker_restarts;
    uint64_t store_errors;
    uint64_t webhooks_delivered, webhooks_retried, webhooks_failed;
    uint64_t previews;      /* live previews published */
    int store_ok;           /* 0 while the store cannot write (degraded) */
    char store_error[200];  /* the last store failure ("" when none) */
    int device_lost;        /* a job failed with EASEL_EDEVLOST (degraded until a restart) */
    char device_error[200]; /* its error */
    double step_ms_per_mpx; /* the moving average the ETAs use; 0 = none yet */
    /* this node, and the queue as a whole (a shared store) */
    char node[96];
    const char *store_kind;
    int shared;
    int listening;           /* the wake-up connection is up (shared stores) */
    uint64_t rescued;        /* expired leases this node's rescuer returned or failed */
    uint64_t leases_lost;    /* runs here that found their lease taken (double-run risk) */
    uint64_t remote_changes; /* rows applied to the cache from the store (other nodes' work) */
    int64_t queue_ms;        /* when `queue` was read (wall clock; 0: never) */
    store_queue_info queue;
} jobs_stats;

typedef struct jobs jobs;

/* Creates the scheduler over an open store: recovers jobs left processing by a
 * crash (store_recover), loads every job into the cache, and removes images
 * no job refers to (a crash between an image's rename and its row's commit).
 * Threads start with jobs_start.
 *
 * On a shared store (store_shared: several nodes on one PostgreSQL) the
 * cache is a replica of every node's jobs: a sync thread waits for the
 * store's wake-ups (store_wait), re-reads the rows that changed and applies
 * them (a slow poll of recent changes behind it, a full reload after the
 * wake-up connection came back), and writes this node's progress (at most
 * twice a second per job, extending its lease); polls for an id the cache
 * does not know read it from the store. The maintenance thread also rescues
 * other nodes' expired leases, records this node's beat, reads the queue's
 * figures, and follows the store's clock. Recovery at start touches only
 * this node's own earlier leases and expired ones. */
easel_err jobs_create(const jobs_config *cfg, store *st, const job_runner *r, jobs **out);
/* Starts the workers and the maintenance thread (watchdog, retention, orphan
 * sweeps, worker supervision, store probes; 1 Hz). */
easel_err jobs_start(jobs *js);
/* Stops taking work; waits up to shutdown_grace_s for running jobs, then
 * interrupts them at their next step and puts them back to pending (not
 * counted as an attempt). Joins every thread. Idempotent. */
void jobs_stop(jobs *js);
/* Frees (after jobs_stop). Does not close the store. */
void jobs_free(jobs *js);

/* Accepts a job: stored durably as pending, then cached. Takes ownership of
 * *p's strings on success (and only then). id_out receives the new UUID.
 * EASEL_EFULL when queue_max jobs are pending or max_jobs are retained with
 * none finished to evict, EASEL_EIO if the store cannot write (nothing
 * accepted), EASEL_ECANCELED after jobs_stop began. */
easel_err jobs_submit(jobs *js, job_params *p, char id_out[37]);
/* Calls fn with the job under the lock. EASEL_ENOTFOUND if no such job. */
easel_err jobs_view(jobs *js, const char *id, job_view_fn fn, void *user);
/* A shared store: reads the job's row now (another node may have finished
 * it a moment ago, before its wake-up arrived). No-op otherwise. */
void jobs_refresh(jobs *js, const char *id);
/* Calls fn for up to limit most recent jobs (newest first), optionally only
 * those with status == filter (filter < 0: all), in O(limit). */
void jobs_list(jobs *js, int filter, int limit, job_view_fn fn, void *user);
/* Cancels: a pending job at once, a processing one at its next step.
 * *after receives the status after the call. EASEL_ENOTFOUND; EASEL_EINVAL when
 * the job had already finished (status unchanged); EASEL_EIO if the store
 * cannot write. */
easel_err jobs_cancel(jobs *js, const char *id, job_status *after);
/* Waits until the job's version differs from *version or timeout_ms passes;
 * updates *version. EASEL_ENOTFOUND if the job is gone. */
easel_err jobs_wait(jobs *js, const char *id, unsigned *version, int timeout_ms);
/* Waits until any job changed since *version (or timeout_ms); updates *version.
 * Returns nonzero if something changed. */
int jobs_wait_any(jobs *js, unsigned *version, int timeout_ms);
void jobs_get_stats(jobs *js, jobs_stats *out);
/* Estimated milliseconds until a job with p submitted now would finish (< 0 unknown). */
double jobs_estimate_ms(jobs *js, const job_params *p);
/* Seeds the step-time average (e.g. from a calibration run at start). */
void jobs_observe_step(jobs *js, int width, int height, double step_ms);
/* One maintenance pass: the watchdog (monotonic time now_mono_ms, see
 * jobs_mono_ms) and retention (wall-clock now_ms). Returns how many jobs it
 * failed + deleted. */
int jobs_maintain(jobs *js, int64_t now_ms, int64_t now_mono_ms);
/* Removes images in the images dir that no job refers to and that are older
 * than min_age_s (and temp files of interrupted image writes). Only names
 * easel writes are candidates; other files are left alone. Returns how many. */
int jobs_sweep_orphans(jobs *js, int min_age_s);
/* Webhook deliveries (http/webhooks.c drives them; the store holds them):
 * claims up to max due ones for owner (*n of them), and records an
 * attempt's outcome (the job's delivery state and the counters follow). */
/* kick(ctx) is called (under the cache lock: it must only signal) when an
 * event was committed to the outbox; NULL stops it. */
void jobs_set_outbox_kick(jobs *js, void (*kick)(void *ctx), void *ctx);
easel_err jobs_outbox_due(jobs *js, const char *owner, outbox_row *out, int max, int *n);
easel_err jobs_outbox_done(jobs *js, const outbox_row *r);

/* Images when the store holds them (a shared PostgreSQL store by default):
 * whether it does (else images are files in the images dir), up to cap
 * bytes of one from off (*n read, *total its size), or the whole of it
 * (*out malloc'd; either mode). EASEL_ENOTFOUND for none; EASEL_EIO when
 * the store cannot be read now. */
int jobs_images_in_store(jobs *js);
easel_err jobs_image_range(jobs *js, const char *name, int64_t off, uint8_t *buf, size_t cap,
                           size_t *n, int64_t *total);
easel_err jobs_image_read(jobs *js, const char *name, uint8_t **out, size_t *len);

/* Whether the queue accepts jobs (not stopping). */
int jobs_accepting(jobs *js);
/* 1 once a job failed with EASEL_EDEVLOST (the accelerator is unusable until
 * the process restarts: a sticky GPU fault): that job went back to pending
 * (not counted as an attempt), workers take no more jobs, submits fail with
 * EASEL_EDEVLOST and /healthz answers 503 "degraded". reason (may be NULL)
 * gets the error. */
int jobs_degraded(jobs *js, char *reason, size_t len);

/* For runners, from inside run(): publishes the running job's latest live
 * preview (an encoded image of mime "image/jpeg" or "image/png"; the bytes
 * are copied). progress_user is the `user` run() was given: it names the job.
 * Ignored when the job is no longer processing or memory is short. */
void jobs_publish_preview(void *progress_user, const char *mime, const uint8_t *data, size_t len,
                          int step, int steps, int width, int height);

/* Wall-clock milliseconds since the epoch. */
int64_t jobs_now_ms(void);
/* The queue's clock: jobs_now_ms() corrected to the store's (a shared store:
 * the database's, so every node's leases and times agree). */
int64_t jobs_clock_ms(jobs *js);
/* 1 when a pending or processing job reads upload `id` (the store says; 1
 * too when it cannot tell): the upload sweep's in_use (http/uploads.h). */
int jobs_upload_in_use(void *js, const char *id);
/* Monotonic milliseconds (the watchdog's clock: immune to clock steps). */
int64_t jobs_mono_ms(void);
/* A random (version 4) UUID in text form. */
void jobs_new_uuid(char out[37]);

#endif
