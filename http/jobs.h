/* The job scheduler: a FIFO queue served by at most `workers` threads, an
 * in-memory job table (the cache that status polls read; the store is the
 * durable truth), per-step progress with an ETA, cancel, a watchdog and
 * retention. The work itself is behind a job_runner, so the scheduler is
 * tested without a model and `easel serve` plugs in the real pipeline.
 *
 * Locks: `store_mu` serialises every state change with its store write
 * (taken first), `mu` guards the table (taken second, held briefly); a
 * status poll takes only `mu`, so it never waits for an fsync. */
#ifndef EASEL_JOBS_H
#define EASEL_JOBS_H

#include <pthread.h>
#include <stdint.h>

#include "params.h"
#include "store.h"

/* Called after every step; nonzero asks the runner to stop (EASEL_ECANCELED). */
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
} job_runner;

typedef struct {
    int workers;            /* jobs processing at once (>= 1) */
    int queue_max;          /* pending jobs accepted at most; then EASEL_EFULL */
    int job_timeout_s;      /* watchdog: fail a job with no step for this long; 0 = off */
    int64_t retention_ms;   /* finished jobs + images deleted after this; 0 = keep */
    int max_attempts;       /* interrupted this many times -> failed (3) */
    int shutdown_grace_s;   /* jobs_stop waits this long for running jobs, then requeues */
    const char *images_dir; /* where images are written (must exist) */
    int worker_nice;        /* worker threads lower their priority by this (0 = not) */
} jobs_config;

/* One job. Read-only outside jobs.c, and only while holding the jobs lock
 * (i.e. inside a jobs_view / jobs_list callback). */
typedef struct job {
    char id[37];
    int64_t seq;
    job_status status;
    job_params params;
    int64_t created_ms, started_ms, finished_ms, progress_ms;
    int attempts;
    char *error, *image;
    gen_timings timings;
    int have_timings;
    int step, steps;
    double step_ms_avg; /* this job's moving average step time */
    int cancel;         /* cancel requested while processing */
    int worker;         /* >= 0 while a worker holds the job */
    unsigned version;   /* bumped on every change (SSE) */
    struct job *hnext, *qprev, *qnext, *lprev, *lnext;
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
    int queue_depth, running, workers, queue_max;
    uint64_t step_hist[JOBS_STEP_BUCKETS], step_count; /* cumulative counts per bound */
    double step_sum_ms;
    uint64_t time_hist[JOBS_TIME_BUCKETS], time_count;
    double time_sum_s;
    uint64_t submitted, completed, failed, canceled;
    double step_ms_per_mpx; /* the moving average the ETAs use; 0 = none yet */
} jobs_stats;

typedef struct jobs jobs;

/* Creates the scheduler over an open store: recovers jobs left processing by a
 * crash (store_recover), loads every job into memory and queues the pending
 * ones in their original order. Threads start with jobs_start. */
easel_err jobs_create(const jobs_config *cfg, store *st, const job_runner *r, jobs **out);
/* Starts the workers and the maintenance thread (watchdog + retention, 1 Hz). */
easel_err jobs_start(jobs *js);
/* Stops taking work; waits up to shutdown_grace_s for running jobs, then
 * interrupts them at their next step and puts them back to pending (not
 * counted as an attempt). Joins every thread. Idempotent. */
void jobs_stop(jobs *js);
/* Frees (after jobs_stop). Does not close the store. */
void jobs_free(jobs *js);

/* Accepts a job: stored durably as pending, then queued. Takes ownership of
 * *p's strings on success (and only then). id_out receives the new UUID.
 * EASEL_EFULL when queue_max jobs are pending, EASEL_EIO if the store failed,
 * EASEL_ECANCELED after jobs_stop began. */
easel_err jobs_submit(jobs *js, job_params *p, char id_out[37]);
/* Calls fn with the job under the lock. EASEL_ENOTFOUND if no such job. */
easel_err jobs_view(jobs *js, const char *id, job_view_fn fn, void *user);
/* Calls fn for up to limit most recent jobs (newest first), optionally only
 * those with status == filter (filter < 0: all). */
void jobs_list(jobs *js, int filter, int limit, job_view_fn fn, void *user);
/* Cancels: a pending job at once, a processing one at its next step.
 * *after receives the status after the call. EASEL_ENOTFOUND; EASEL_EINVAL when
 * the job had already finished (status unchanged). */
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
/* One maintenance pass at time now_ms (wall clock, ms since the epoch): the
 * watchdog and retention. Returns how many jobs it failed + deleted. */
int jobs_maintain(jobs *js, int64_t now_ms);
/* Whether the queue accepts jobs (not stopping). */
int jobs_accepting(jobs *js);

/* Wall-clock milliseconds since the epoch. */
int64_t jobs_now_ms(void);
/* A random (version 4) UUID in text form. */
void jobs_new_uuid(char out[37]);

#endif
