/* The scheduler with a test runner (no model): FIFO order, the worker limit,
 * cancel (pending and processing), queue full, crash recovery, the watchdog,
 * retention, graceful-stop requeue, ETAs from measured step times; and the
 * defects of issue 13: a job vanishing between a worker's look and its claim,
 * a dying worker, a store that cannot write, the retained-jobs cap, orphaned
 * images, a wall clock that jumps, server paths in job errors; a lost
 * device (degraded until a restart); live previews (the latest one per
 * running job, dropped when it ends); and several nodes on one real
 * PostgreSQL: the queue shared, a cancel reaching the node that runs the
 * job, a run whose lease was taken stopping (its result refused), images
 * as rows every node reads. */
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "http/jobs.h"
#include "pgtest.h"
#include "test.h"

static char dir[] = "/tmp/easel-test-jobs-XXXXXX";

/* ---- the test runner ---- */
typedef struct {
    atomic_int active, max_active, started, stops_seen;
    int order[64]; /* seeds in the order jobs started */
    int step_sleep_ms;
    int hold;        /* nonzero: wait at the first step until released */
    int stall;       /* nonzero: wait without reporting progress until released */
    int lose_device; /* nonzero: fail with EASEL_EDEVLOST, as after a sticky GPU fault */
    int previews;    /* nonzero: publish a 4-byte "preview" after every step */
    pthread_mutex_t mu;
    pthread_cond_t cv;
} runner_state;

static runner_state rs;

static void sleep_ms(int ms) {
    struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&t, NULL);
}

static void release(void) {
    pthread_mutex_lock(&rs.mu);
    rs.hold = rs.stall = 0;
    pthread_cond_broadcast(&rs.cv);
    pthread_mutex_unlock(&rs.mu);
}

static void wait_released(int stall) {
    pthread_mutex_lock(&rs.mu);
    while (stall ? rs.stall : rs.hold)
        pthread_cond_wait(&rs.cv, &rs.mu);
    pthread_mutex_unlock(&rs.mu);
}

static easel_err t_run(void *ctx, int worker, const gen_params *p, job_progress_fn progress,
                       void *user, uint8_t **rgb, gen_timings *t) {
    (void)ctx, (void)worker;
    int now = atomic_fetch_add(&rs.active, 1) + 1;
    int m = atomic_load(&rs.max_active);
    while (now > m && !atomic_compare_exchange_weak(&rs.max_active, &m, now)) {
    }
    int k = atomic_fetch_add(&rs.started, 1);
    if (k < 64) rs.order[k] = (int)p->seed;
    easel_err e = EASEL_OK;
    if (rs.lose_device) {
        atomic_fetch_sub(&rs.active, 1);
        return easel_seterr(EASEL_EDEVLOST, "step 1/2: planted: the GPU context is lost");
    }
    if (rs.stall) wait_released(1);
    for (int s = 1; s <= p->steps && !e; s++) {
        sleep_ms(rs.step_sleep_ms);
        if (progress(user, s, p->steps, rs.step_sleep_ms)) {
            atomic_fetch_add(&rs.stops_seen, 1);
            e = easel_seterr(EASEL_ECANCELED, "canceled");
        }
        uint8_t pv[4] = {'p', 'v', (uint8_t)s, (uint8_t)p->seed};
        if (!e && rs.previews) jobs_publish_preview(user, "image/png", pv, 4, s, p->steps, 2, 1);
        if (s == 1 && rs.hold) wait_released(0);
    }
    atomic_fetch_sub(&rs.active, 1);
    if (e) return e;
    *rgb = malloc((size_t)p->width * p->height * 3);
    if (!*rgb) return easel_seterr(EASEL_ENOMEM, "oom");
    memset(*rgb, (int)(p->seed & 0xff), (size_t)p->width * p->height * 3);
    t->sample_ms = p->steps * rs.step_sleep_ms;
    t->total_ms = t->sample_ms + 1;
    return EASEL_OK;
}

static easel_err t_write(void *ctx, const char *path, const uint8_t *rgb, int w, int h) {
    (void)ctx;
    FILE *f = fopen(path, "wb");
    if (!f) return easel_seterr(EASEL_EIO, "cannot write %s", path);
    fwrite(rgb, 1, (size_t)w * h * 3, f);
    fclose(f);
    return EASEL_OK;
}

static const job_runner runner = {t_run, t_write, NULL, NULL, NULL};

/* ---- helpers ---- */

static void reset_runner(int step_ms) {
    atomic_store(&rs.active, 0);
    atomic_store(&rs.max_active, 0);
    atomic_store(&rs.started, 0);
    atomic_store(&rs.stops_seen, 0);
    rs.step_sleep_ms = step_ms;
    rs.hold = rs.stall = rs.lose_device = rs.previews = 0;
}

static jobs *open_jobs(const char *db, int workers, int queue_max, store **st) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, db);
    if (store_sqlite_open(path, 1, st)) return NULL;
    jobs_config cfg = {.workers = workers,
                       .queue_max = queue_max,
                       .job_timeout_s = 0,
                       .retention_ms = 0,
                       .max_attempts = 3,
                       .shutdown_grace_s = 0,
                       .images_dir = dir};
    jobs *js;
    if (jobs_create(&cfg, *st, &runner, &js)) {
        store_close(*st);
        return NULL;
    }
    return js;
}

static easel_err submit(jobs *js, int seed, int steps, char id[37]) {
    job_params p = {0};
    p.prompt = strdup("a test");
    p.width = p.height = 64;
    p.steps = steps;
    p.guidance = 1;
    p.seed = (uint64_t)seed;
    easel_err e = jobs_submit(js, &p, id);
    if (e) params_clear(&p);
    return e;
}

typedef struct {
    job_status status;
    int step, steps, queue_position, attempts;
    double eta_s;
    char error[200], image[200];
} seen;

static void grab(void *user, const job *j, const job_extra *x) {
    seen *s = user;
    s->status = j->status;
    s->step = j->step;
    s->steps = j->steps;
    s->queue_position = x->queue_position;
    s->attempts = j->attempts;
    s->eta_s = x->eta_s;
    snprintf(s->error, sizeof s->error, "%s", j->error ? j->error : "");
    snprintf(s->image, sizeof s->image, "%s", j->image ? j->image : "");
}

static seen look(jobs *js, const char *id) {
    seen s = {.status = JOB_STATUS_COUNT};
    jobs_view(js, id, grab, &s);
    return s;
}

/* Waits up to ms for the job to reach status. */
static int wait_status(jobs *js, const char *id, job_status want, int ms) {
    for (int t = 0; t < ms; t += 5) {
        if (look(js, id).status == want) return 1;
        sleep_ms(5);
    }
    return 0;
}

/* ---- cases ---- */

static void test_fifo_and_worker_limit(void) {
    reset_runner(3);
    store *st;
    jobs *js = open_jobs("fifo.db", 2, 64, &st);
    REQUIRE(js, "open: %s", easel_errmsg());
    char ids[10][37];
    for (int i = 0; i < 10; i++)
        CHECK(submit(js, i, 4, ids[i]) == EASEL_OK, "submit %d", i);
    CHECK(look(js, ids[9]).queue_position == 10, "10th in line before start: %d",
          look(js, ids[9]).queue_position);
    {
        int rc_ = jobs_start(js);
        REQUIRE(rc_ == EASEL_OK, "start");
    }
    for (int i = 0; i < 10; i++)
        CHECK(wait_status(js, ids[i], JOB_COMPLETED, 5000), "job %d completes", i);
    CHECK(atomic_load(&rs.max_active) == 2, "at most 2 at once, and 2 used: %d",
          atomic_load(&rs.max_active));
    for (int i = 0; i < 10; i++) /* two workers may swap neighbours, never more */
        CHECK(abs(rs.order[i] - i) <= 1, "start order FIFO at %d: %d", i, rs.order[i]);
    seen s = look(js, ids[3]);
    CHECK(s.step == 4 && s.steps == 4 && s.queue_position == 0 && s.attempts == 1, "final view");
    char path[300];
    snprintf(path, sizeof path, "%s/%s", dir, s.image);
    struct stat sb;
    CHECK(!strcmp(s.image + strlen(s.image) - 4, ".png") && stat(path, &sb) == 0 &&
              sb.st_size == 64 * 64 * 3,
          "image written: %s", s.image);
    jobs_stats stats;
    jobs_get_stats(js, &stats);
    CHECK(stats.by_status[JOB_COMPLETED] == 10 && stats.queue_depth == 0 && stats.step_count == 40,
          "stats: %d completed, %llu steps", stats.by_status[JOB_COMPLETED],
          (unsigned long long)stats.step_count);
    CHECK(stats.step_ms_per_mpx > 0, "a step-time average");
    jobs_free(js);
    store_close(st);
}

static void test_cancel_pending_and_processing(void) {
    reset_runner(2);
    rs.hold = 1;
    store *st;
    jobs *js = open_jobs("cancel.db", 1, 64, &st);
    REQUIRE(js, "open: %s", easel_errmsg());
    char a[37], b[37];
    submit(js, 1, 50, a);
    submit(js, 2, 5, b);
    {
        int rc_ = jobs_start(js);
        REQUIRE(rc_ == EASEL_OK, "start");
    }
    REQUIRE(wait_status(js, a, JOB_PROCESSING, 2000), "a processing");
    CHECK(look(js, b).queue_position == 1, "b waits first in line");
    job_status after;
    CHECK(jobs_cancel(js, b, &after) == EASEL_OK && after == JOB_CANCELED, "pending: at once");
    CHECK(look(js, b).status == JOB_CANCELED, "b canceled");
    CHECK(jobs_cancel(js, a, &after) == EASEL_OK && after == JOB_PROCESSING,
          "processing: at the next step");
    release();
    CHECK(wait_status(js, a, JOB_CANCELED, 3000), "a canceled");
    CHECK(atomic_load(&rs.stops_seen) == 1, "the runner was told to stop");
    CHECK(look(js, a).step < 50, "stopped early (step %d)", look(js, a).step);
    CHECK(jobs_cancel(js, a, &after) == EASEL_EINVAL, "a finished job cannot be canceled");
    CHECK(jobs_cancel(js, "no-such-id", &after) == EASEL_ENOTFOUND, "unknown id");
    CHECK(atomic_load(&rs.started) == 1, "b never ran");
    jobs_free(js);
    store_close(st);
}

static void test_queue_full(void) {
    reset_runner(2);
    store *st;
    jobs *js = open_jobs("full.db", 1, 2, &st);
    REQUIRE(js, "open: %s", easel_errmsg());
    char id[37];
    CHECK(submit(js, 1, 1, id) == EASEL_OK && submit(js, 2, 1, id) == EASEL_OK, "two fit");
    CHECK(submit(js, 3, 1, id) == EASEL_EFULL, "the third is refused");
    jobs_free(js);
    store_close(st);
}

static void test_recovery_after_crash(void) {
    reset_runner(1);
    store *st;
    jobs *js = open_jobs("crash.db", 1, 64, &st);
    REQUIRE(js, "open: %s", easel_errmsg());
    char a[37], b[37], c[37];
    submit(js, 1, 2, a), submit(js, 2, 2, b), submit(js, 3, 2, c);
    jobs_free(js); /* never started: as if killed */
    /* what a crash mid-job leaves: a and c 'processing' (c for the 3rd time),
     * written into the database file as a killed server leaves it */
    char path[256], sql[400];
    snprintf(path, sizeof path, "%s/crash.db", dir);
    snprintf(sql, sizeof sql,
             "UPDATE jobs SET status='processing',attempts=1,started_ms=1,lease_owner='x' "
             "WHERE id='%s'; UPDATE jobs SET status='processing',attempts=3,started_ms=1,"
             "lease_owner='x' WHERE id='%s';",
             a, c);
    sqlite3 *db;
    CHECK(sqlite3_open(path, &db) == SQLITE_OK && sqlite3_exec(db, sql, 0, 0, 0) == SQLITE_OK,
          "mark a and c");
    sqlite3_close(db);
    jobs_config cfg = {.workers = 1, .queue_max = 64, .max_attempts = 3, .images_dir = dir};
    {
        int rc_ = jobs_create(&cfg, st, &runner, &js);
        REQUIRE(rc_ == EASEL_OK, "reopen: %s", easel_errmsg());
    }
    CHECK(look(js, a).status == JOB_PENDING && look(js, a).queue_position == 1, "a first again");
    CHECK(look(js, b).status == JOB_PENDING && look(js, b).queue_position == 2, "b second");
    seen sc = look(js, c);
    CHECK(sc.status == JOB_FAILED && strstr(sc.error, "interrupted 3 times"), "c failed: %s",
          sc.error);
    {
        int rc_ = jobs_start(js);
        REQUIRE(rc_ == EASEL_OK, "start");
    }
    CHECK(wait_status(js, a, JOB_COMPLETED, 3000) && wait_status(js, b, JOB_COMPLETED, 3000),
          "both finish");
    CHECK(look(js, a).attempts == 2, "a's attempts counted: %d", look(js, a).attempts);
    jobs_free(js);
    store_close(st);
}

static void test_watchdog(void) {
    reset_runner(1);
    rs.stall = 1;
    store *st;
    jobs *js = open_jobs("dog.db", 1, 64, &st);
    REQUIRE(js, "open");
    jobs_free(js);
    jobs_config cfg = {
        .workers = 1, .queue_max = 8, .job_timeout_s = 2, .max_attempts = 3, .images_dir = dir};
    {
        int rc_ = jobs_create(&cfg, st, &runner, &js);
        REQUIRE(rc_ == EASEL_OK, "create");
    }
    char a[37];
    submit(js, 1, 3, a);
    {
        int rc_ = jobs_start(js);
        REQUIRE(rc_ == EASEL_OK, "start");
    }
    REQUIRE(wait_status(js, a, JOB_PROCESSING, 2000), "processing");
    CHECK(jobs_maintain(js, jobs_now_ms() + 3600000, jobs_mono_ms() + 500) == 0,
          "not yet, however far the wall clock jumps");
    CHECK(jobs_maintain(js, jobs_now_ms(), jobs_mono_ms() + 3000) == 1, "the watchdog fires");
    seen s = look(js, a);
    CHECK(s.status == JOB_FAILED && strstr(s.error, "no progress for 2 s"), "failed: %s", s.error);
    release();
    sleep_ms(50);
    CHECK(look(js, a).status == JOB_FAILED, "the late result is dropped");
    jobs_free(js);
    store_close(st);
}

static void test_retention(void) {
    reset_runner(1);
    store *st;
    jobs *js = open_jobs("ret.db", 1, 64, &st);
    REQUIRE(js, "open");
    jobs_free(js);
    jobs_config cfg = {
        .workers = 1, .queue_max = 8, .retention_ms = 60000, .max_attempts = 3, .images_dir = dir};
    {
        int rc_ = jobs_create(&cfg, st, &runner, &js);
        REQUIRE(rc_ == EASEL_OK, "create");
    }
    char a[37], b[37];
    submit(js, 1, 1, a);
    {
        int rc_ = jobs_start(js);
        REQUIRE(rc_ == EASEL_OK, "start");
    }
    REQUIRE(wait_status(js, a, JOB_COMPLETED, 2000), "done");
    rs.hold = 1;
    submit(js, 2, 3, b);
    REQUIRE(wait_status(js, b, JOB_PROCESSING, 2000), "b running");
    char path[300];
    snprintf(path, sizeof path, "%s/%s", dir, look(js, a).image);
    CHECK(access(path, F_OK) == 0, "image exists");
    CHECK(jobs_maintain(js, jobs_now_ms() + 30000, jobs_mono_ms()) == 0, "kept within retention");
    CHECK(jobs_maintain(js, jobs_now_ms() + 61000, jobs_mono_ms()) == 1, "deleted after retention");
    CHECK(look(js, a).status == JOB_STATUS_COUNT, "gone from memory");
    CHECK(look(js, b).status == JOB_PROCESSING, "a running job is kept");
    CHECK(access(path, F_OK) != 0, "image deleted");
    release();
    jobs_free(js);
    {
        int rc_ = jobs_create(&cfg, st, &runner, &js);
        REQUIRE(rc_ == EASEL_OK, "reopen");
    }
    CHECK(look(js, a).status == JOB_STATUS_COUNT, "gone from the store");
    CHECK(look(js, b).status != JOB_STATUS_COUNT, "b still there");
    jobs_free(js);
    store_close(st);
}

static void *stop_thread(void *js) {
    jobs_stop(js);
    return NULL;
}

static void test_stop_requeues(void) {
    reset_runner(5);
    rs.hold = 1;
    store *st;
    jobs *js = open_jobs("stop.db", 1, 64, &st);
    REQUIRE(js, "open");
    char a[37];
    submit(js, 1, 20, a);
    {
        int rc_ = jobs_start(js);
        REQUIRE(rc_ == EASEL_OK, "start");
    }
    REQUIRE(wait_status(js, a, JOB_PROCESSING, 2000), "processing");
    CHECK(jobs_accepting(js), "accepting before stop");
    pthread_t t;
    pthread_create(&t, NULL, stop_thread, js);
    sleep_ms(50);
    release();
    pthread_join(t, NULL);
    CHECK(!jobs_accepting(js), "not accepting after stop");
    char id[37];
    CHECK(submit(js, 2, 1, id) == EASEL_ECANCELED, "submit refused while stopped");
    jobs_free(js);
    jobs_config cfg = {.workers = 1, .queue_max = 8, .max_attempts = 3, .images_dir = dir};
    {
        int rc_ = jobs_create(&cfg, st, &runner, &js);
        REQUIRE(rc_ == EASEL_OK, "reopen");
    }
    seen s = look(js, a);
    CHECK(s.status == JOB_PENDING && s.attempts == 0, "requeued, not an attempt: %d %d", s.status,
          s.attempts);
    jobs_free(js);
    store_close(st);
}

/* A lost device: the job goes back to pending (not an attempt), no more jobs
 * are taken or accepted, the stats and jobs_degraded say why (/healthz is
 * degraded); after a restart both run. */
static void test_device_lost(void) {
    reset_runner(1);
    rs.lose_device = 1;
    store *st;
    jobs *js = open_jobs("lost.db", 1, 64, &st);
    REQUIRE(js, "open");
    char a[37], b[37], c[37], why[512];
    REQUIRE(!submit(js, 1, 2, a) && !submit(js, 2, 2, b), "submit");
    REQUIRE(jobs_start(js) == EASEL_OK, "start");
    int degraded = 0;
    for (int t = 0; t < 2000 && !(degraded = jobs_degraded(js, why, sizeof why)); t += 5)
        sleep_ms(5);
    REQUIRE(degraded, "not degraded after the device was lost");
    sleep_ms(50); /* a worker that took another job would have started it by now */
    CHECK(atomic_load(&rs.started) == 1, "%d jobs started on a lost device",
          atomic_load(&rs.started));
    CHECK(strstr(why, "planted") != NULL, "reason: %s", why);
    seen sa = look(js, a), sb = look(js, b);
    CHECK(sa.status == JOB_PENDING && sa.attempts == 0, "the failed job: status %d, attempts %d",
          sa.status, sa.attempts);
    CHECK(sb.status == JOB_PENDING, "the queued job: status %d", sb.status);
    jobs_stats stats;
    jobs_get_stats(js, &stats);
    CHECK(stats.device_lost && strstr(stats.device_error, "planted"),
          "the stats (/healthz's degraded) do not say the device is lost");
    CHECK(submit(js, 3, 1, c) == EASEL_EDEVLOST, "submit on a lost device");
    CHECK(strstr(easel_errmsg(), "restart") != NULL, "%s", easel_errmsg());
    jobs_stop(js);
    jobs_free(js);
    rs.lose_device = 0;
    jobs_config cfg = {.workers = 1, .queue_max = 8, .max_attempts = 3, .images_dir = dir};
    REQUIRE(jobs_create(&cfg, st, &runner, &js) == EASEL_OK, "restart");
    REQUIRE(jobs_start(js) == EASEL_OK, "start");
    CHECK(wait_status(js, a, JOB_COMPLETED, 3000) && wait_status(js, b, JOB_COMPLETED, 3000),
          "after the restart: %d %d", look(js, a).status, look(js, b).status);
    CHECK(!jobs_degraded(js, NULL, 0), "still degraded after the restart");
    jobs_stop(js);
    jobs_free(js);
    store_close(st);
}

static void test_eta(void) {
    reset_runner(20);
    store *st;
    jobs *js = open_jobs("eta.db", 1, 64, &st);
    REQUIRE(js, "open");
    job_params p = {.width = 64, .height = 64, .steps = 10};
    CHECK(jobs_estimate_ms(js, &p) < 0, "unknown before any measurement");
    jobs_observe_step(js, 64, 64, 20);
    double e = jobs_estimate_ms(js, &p);
    CHECK(fabs(e - 200) < 1, "10 steps of 20 ms: %.1f", e);
    p.width = 128;
    e = jobs_estimate_ms(js, &p);
    CHECK(fabs(e - 400) < 1, "twice the pixels: %.1f", e);
    char a[37], b[37];
    rs.hold = 1;
    submit(js, 1, 10, a);
    submit(js, 2, 10, b);
    {
        int rc_ = jobs_start(js);
        REQUIRE(rc_ == EASEL_OK, "start");
    }
    REQUIRE(wait_status(js, a, JOB_PROCESSING, 2000), "processing");
    sleep_ms(30);
    seen sb = look(js, b);
    CHECK(sb.queue_position == 1 && sb.eta_s > 0.3 && sb.eta_s < 0.45,
          "b waits for a's 9 steps + its 10: %.3f s", sb.eta_s);
    release();
    jobs_free(js);
    store_close(st);
}

/* ---- issue 13: the defects ---- */

/* Finding 1: jobs that vanish between a worker's look and its claim
 * (canceled, or taken by the other worker) must not end the worker. The
 * hook runs at exactly that moment and cancels every pending job, so the
 * claim finds nothing; the old scheduler's loop ended there. */
static jobs *hook_js;
static atomic_int hook_armed, hook_cancels;

static void collect_pending(void *user, const job *j, const job_extra *x) {
    (void)x;
    char(*ids)[37] = user;
    for (int i = 0; i < 8; i++)
        if (!ids[i][0]) {
            memcpy(ids[i], j->id, 37);
            break;
        }
}

static void cancel_hook(void *ctx, const char *id) {
    (void)ctx, (void)id;
    if (!atomic_load(&hook_armed)) return;
    char ids[8][37] = {{0}};
    jobs_list(hook_js, JOB_PENDING, 8, collect_pending, ids);
    job_status after;
    for (int i = 0; i < 8 && ids[i][0]; i++)
        if (jobs_cancel(hook_js, ids[i], &after) == EASEL_OK) atomic_fetch_add(&hook_cancels, 1);
}

static jobs *open_cfg(const char *db, jobs_config *cfg, store **st) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, db);
    unlink(path);
    if (store_sqlite_open(path, 1, st)) return NULL;
    jobs *js;
    if (jobs_create(cfg, *st, &runner, &js)) {
        store_close(*st);
        return NULL;
    }
    return js;
}

static void test_job_vanishes_before_claim(void) {
    reset_runner(1);
    store *st;
    jobs_config cfg = {.workers = 2,
                       .queue_max = 64,
                       .max_attempts = 3,
                       .images_dir = dir,
                       .take_hook = cancel_hook};
    jobs *js = open_cfg("vanish.db", &cfg, &st);
    REQUIRE(js, "open: %s", easel_errmsg());
    hook_js = js;
    atomic_store(&hook_armed, 1), atomic_store(&hook_cancels, 0);
    char ids[3][37], last[37];
    for (int i = 0; i < 3; i++)
        submit(js, i, 1, ids[i]);
    REQUIRE(jobs_start(js) == EASEL_OK, "start");
    for (int t = 0; t < 2000 && atomic_load(&hook_cancels) < 3; t += 5)
        sleep_ms(5);
    CHECK(atomic_load(&hook_cancels) == 3, "every job vanished before a claim");
    sleep_ms(50);
    atomic_store(&hook_armed, 0);
    for (int i = 0; i < 3; i++)
        CHECK(look(js, ids[i]).status == JOB_CANCELED, "job %d canceled", i);
    jobs_stats stats;
    jobs_get_stats(js, &stats);
    CHECK(stats.workers_live == 2, "both workers still run: %d", stats.workers_live);
    submit(js, 9, 2, last);
    CHECK(wait_status(js, last, JOB_COMPLETED, 3000), "a later job still runs");
    CHECK(atomic_load(&rs.started) == 1, "only it ran");
    jobs_free(js);
    store_close(st);
}

/* A worker that dies anyway (here: pthread_exit inside the hook) is seen
 * (workers_live drops) and restarted by the maintenance thread. */
static atomic_int exit_once;
static void exit_hook(void *ctx, const char *id) {
    (void)ctx, (void)id;
    if (atomic_exchange(&exit_once, 0)) pthread_exit(NULL);
}

static void test_dead_worker_restarted(void) {
    reset_runner(1);
    store *st;
    jobs_config cfg = {.workers = 1,
                       .queue_max = 64,
                       .max_attempts = 3,
                       .images_dir = dir,
                       .take_hook = exit_hook};
    atomic_store(&exit_once, 1);
    jobs *js = open_cfg("dead.db", &cfg, &st);
    REQUIRE(js, "open: %s", easel_errmsg());
    char a[37];
    submit(js, 1, 2, a);
    REQUIRE(jobs_start(js) == EASEL_OK, "start");
    jobs_stats stats;
    CHECK(wait_status(js, a, JOB_COMPLETED, 3000), "its job ran after the restart");
    jobs_get_stats(js, &stats);
    CHECK(stats.worker_restarts == 1 && stats.workers_live == 1, "restarted once: %llu, live %d",
          (unsigned long long)stats.worker_restarts, stats.workers_live);
    jobs_free(js);
    store_close(st);
}

/* A store whose writes fail on demand (a full disk), wrapping SQLite. */
typedef struct {
    store base;
    store *inner;
    atomic_int fail;
} flaky_store;

#define FLAKY(s) ((flaky_store *)(s))
#define FAIL_IF(s)                                                                                 \
    if (atomic_load(&FLAKY(s)->fail)) return easel_seterr(EASEL_EIO, "store: disk I/O error")

static void fk_close(store *s) {
    free(s);
}
static easel_err fk_insert(store *s, store_row *r) {
    FAIL_IF(s);
    return store_insert(FLAKY(s)->inner, r);
}
static easel_err fk_claim(store *s, const char *o, int64_t n, int64_t l, store_row *r, int *f) {
    FAIL_IF(s);
    return store_claim(FLAKY(s)->inner, o, n, l, r, f);
}
static easel_err fk_beat(store *s, const char *id, const char *o, int64_t n, int64_t l, int *c) {
    FAIL_IF(s);
    return store_heartbeat(FLAKY(s)->inner, id, o, n, l, c);
}
static easel_err fk_finish(store *s, const store_row *r, const char *o) {
    FAIL_IF(s);
    return store_finish(FLAKY(s)->inner, r, o);
}
static easel_err fk_cancel(store *s, const char *id, int64_t n, job_status *a) {
    FAIL_IF(s);
    return store_cancel(FLAKY(s)->inner, id, n, a);
}
static easel_err fk_fail(store *s, const char *id, int64_t n, const char *e) {
    FAIL_IF(s);
    return store_fail(FLAKY(s)->inner, id, n, e);
}
static easel_err fk_remove(store *s, const char *id) {
    FAIL_IF(s);
    return store_delete(FLAKY(s)->inner, id);
}
static easel_err fk_each(store *s, store_row_fn fn, void *u) {
    return store_each(FLAKY(s)->inner, fn, u);
}
static easel_err fk_recover(store *s, int m, int64_t n, int *r, int *f) {
    return store_recover(FLAKY(s)->inner, m, n, r, f);
}
static easel_err fk_probe(store *s) {
    FAIL_IF(s);
    return store_probe(FLAKY(s)->inner);
}
static easel_err fk_ckpt(store *s) {
    return store_checkpoint(FLAKY(s)->inner);
}
static int fk_version(store *s) {
    return store_schema_version(FLAKY(s)->inner);
}
static easel_err fk_ob_add(store *s, const char *j, const char *e, int q, int64_t n) {
    FAIL_IF(s);
    return store_outbox_add(FLAKY(s)->inner, j, e, q, n);
}
static easel_err fk_ob_due(store *s, const char *o, int64_t n, int64_t l, outbox_row *r, int m,
                           int *k) {
    FAIL_IF(s);
    return store_outbox_due(FLAKY(s)->inner, o, n, l, r, m, k);
}
static easel_err fk_ob_done(store *s, const outbox_row *r) {
    FAIL_IF(s);
    return store_outbox_done(FLAKY(s)->inner, r);
}
static easel_err fk_ob_each(store *s, int (*fn)(void *, const outbox_row *), void *u) {
    return store_outbox_each(FLAKY(s)->inner, fn, u);
}
static easel_err fk_up_use(store *s, const char *id, int *in_use) {
    FAIL_IF(s);
    return store_upload_in_use(FLAKY(s)->inner, id, in_use);
}
static const store_ops flaky_ops = {
    "flaky",    fk_close,   fk_insert,  fk_claim,    fk_beat,
    fk_finish,  fk_cancel,  fk_fail,    fk_remove,   fk_each,
    fk_recover, fk_probe,   fk_ckpt,    fk_version,  fk_ob_add,
    fk_ob_due,  fk_ob_done, fk_ob_each, .shared = 0, .upload_in_use = fk_up_use};

typedef struct {
    int n;
    char status[8][16];
} db_rows;

static int count_row(void *user, const store_row *r) {
    db_rows *d = user;
    if (d->n < 8) snprintf(d->status[d->n++], 16, "%s", job_status_name(r->status));
    return 0;
}

/* Finding 6: memory changes only after the store committed; a store that
 * cannot write makes the scheduler degraded, and it recovers by itself. */
static void test_store_failure_consistent(void) {
    reset_runner(2);
    rs.hold = 1;
    char path[256];
    snprintf(path, sizeof path, "%s/flaky.db", dir);
    unlink(path);
    store *inner;
    REQUIRE(store_sqlite_open(path, 1, &inner) == EASEL_OK, "open");
    flaky_store *fs = calloc(1, sizeof *fs);
    fs->base.ops = &flaky_ops, fs->inner = inner;
    jobs_config cfg = {.workers = 1, .queue_max = 8, .max_attempts = 3, .images_dir = dir};
    jobs *js;
    REQUIRE(jobs_create(&cfg, &fs->base, &runner, &js) == EASEL_OK, "create");
    char a[37], b[37];
    submit(js, 1, 3, a);
    REQUIRE(jobs_start(js) == EASEL_OK, "start");
    REQUIRE(wait_status(js, a, JOB_PROCESSING, 2000), "a processing");
    atomic_store(&fs->fail, 1); /* the disk fills up mid-job */
    CHECK(submit(js, 2, 1, b) == EASEL_EIO, "a submit is refused: %s", easel_errmsg());
    job_status after;
    CHECK(jobs_cancel(js, a, &after) == EASEL_EIO, "so is a cancel");
    release();
    sleep_ms(300); /* a finished rendering; its result cannot be written */
    jobs_stats stats;
    jobs_get_stats(js, &stats);
    CHECK(!stats.store_ok && stats.store_errors >= 2, "degraded: %s", stats.store_error);
    CHECK(look(js, a).status == JOB_PROCESSING, "a shows what the store has: processing");
    db_rows rows = {0};
    store_each(inner, count_row, &rows);
    CHECK(rows.n == 1 && !strcmp(rows.status[0], "processing"), "the store agrees: %d %s", rows.n,
          rows.status[0]);
    atomic_store(&fs->fail, 0); /* space returns */
    CHECK(wait_status(js, a, JOB_COMPLETED, 3000), "the held result is written");
    for (int t = 0; t < 3000 && !stats.store_ok; t += 10) {
        jobs_get_stats(js, &stats);
        sleep_ms(10);
    }
    CHECK(stats.store_ok, "no longer degraded");
    CHECK(submit(js, 2, 1, b) == EASEL_OK, "submits work again");
    CHECK(wait_status(js, b, JOB_COMPLETED, 3000), "and run");
    CHECK(atomic_load(&rs.started) == 2, "each job ran once: %d", atomic_load(&rs.started));
    jobs_free(js);
    store_close(&fs->base);
    store_close(inner);
}

/* Finding 4: a cap on retained jobs; the oldest finished one goes first;
 * with none finished, a submit is refused. */
static void test_max_jobs(void) {
    reset_runner(1);
    store *st;
    jobs_config cfg = {
        .workers = 1, .queue_max = 64, .max_jobs = 3, .max_attempts = 3, .images_dir = dir};
    jobs *js = open_cfg("cap.db", &cfg, &st);
    REQUIRE(js, "open: %s", easel_errmsg());
    char ids[6][37];
    for (int i = 0; i < 3; i++)
        CHECK(submit(js, i, 1, ids[i]) == EASEL_OK, "submit %d", i);
    CHECK(submit(js, 3, 1, ids[3]) == EASEL_EFULL, "full of unfinished jobs: refused");
    CHECK(strstr(easel_errmsg(), "--max-jobs"), "names the option: %s", easel_errmsg());
    job_status after;
    CHECK(jobs_cancel(js, ids[1], &after) == EASEL_OK, "cancel the second");
    CHECK(jobs_cancel(js, ids[0], &after) == EASEL_OK, "then the first");
    CHECK(submit(js, 3, 1, ids[3]) == EASEL_OK, "now one is evicted");
    CHECK(look(js, ids[1]).status == JOB_STATUS_COUNT, "the oldest finished one went");
    CHECK(look(js, ids[0]).status == JOB_CANCELED, "the other stays");
    jobs_stats stats;
    jobs_get_stats(js, &stats);
    CHECK(stats.retained == 3 && stats.evicted == 1, "3 retained, 1 evicted");
    db_rows rows = {0};
    store_each(st, count_row, &rows);
    CHECK(rows.n == 3, "the store holds 3 rows too: %d", rows.n);
    jobs_free(js);
    store_close(st);
}

typedef struct {
    int n;
    char first[37];
} list_seen;

static void list_cb(void *user, const job *j, const job_extra *x) {
    (void)x;
    list_seen *l = user;
    if (!l->n++) memcpy(l->first, j->id, 37);
}

/* Lists by status walk that status's list (newest first), not the table. */
static void test_list_by_status(void) {
    reset_runner(1);
    store *st;
    jobs *js = open_jobs("list.db", 1, 64, &st);
    REQUIRE(js, "open");
    char ids[5][37];
    for (int i = 0; i < 5; i++)
        submit(js, i, 1, ids[i]);
    job_status after;
    jobs_cancel(js, ids[1], &after), jobs_cancel(js, ids[3], &after);
    list_seen l = {0};
    jobs_list(js, JOB_PENDING, 100, list_cb, &l);
    CHECK(l.n == 3 && !strcmp(l.first, ids[4]), "3 pending, newest first");
    memset(&l, 0, sizeof l);
    jobs_list(js, JOB_CANCELED, 1, list_cb, &l);
    CHECK(l.n == 1 && !strcmp(l.first, ids[3]), "limit 1: the latest canceled");
    memset(&l, 0, sizeof l);
    jobs_list(js, -1, 100, list_cb, &l);
    CHECK(l.n == 5 && !strcmp(l.first, ids[4]), "all 5");
    CHECK(look(js, ids[4]).queue_position == 3, "queue position skips canceled jobs");
    jobs_free(js);
    store_close(st);
}

/* Finding 11: an image written before its row committed (a crash between
 * the two) is removed at start; referenced images and others' files stay. */
static void test_orphans_swept(void) {
    char sub[300], path[600];
    snprintf(sub, sizeof sub, "%s/orphans", dir);
    mkdir(sub, 0755);
    reset_runner(1);
    char dbp[300];
    snprintf(dbp, sizeof dbp, "%s/orph.db", dir);
    store *st;
    REQUIRE(store_sqlite_open(dbp, 1, &st) == EASEL_OK, "open");
    jobs_config cfg = {.workers = 1, .queue_max = 8, .max_attempts = 3, .images_dir = sub};
    jobs *js;
    REQUIRE(jobs_create(&cfg, st, &runner, &js) == EASEL_OK, "create");
    char a[37];
    submit(js, 1, 1, a);
    REQUIRE(jobs_start(js) == EASEL_OK, "start");
    REQUIRE(wait_status(js, a, JOB_COMPLETED, 2000), "done");
    seen s = look(js, a);
    jobs_free(js);
    const char *junk[] = {"0123abcd-0000-4000-8000-000000000000.png",
                          "conceptual_kitchen_20261201_101010_deadbeef.png",
                          ".x.png.tmp.123.0a1b2c3d", "notes.txt"};
    for (int i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "%s/%s", sub, junk[i]);
        FILE *f = fopen(path, "w");
        if (f) fputs("x", f), fclose(f);
    }
    REQUIRE(jobs_create(&cfg, st, &runner, &js) == EASEL_OK, "reopen");
    jobs_stats stats;
    jobs_get_stats(js, &stats);
    CHECK(stats.orphans_removed == 3, "2 orphans + 1 temp removed: %llu",
          (unsigned long long)stats.orphans_removed);
    snprintf(path, sizeof path, "%s/%s", sub, s.image);
    CHECK(access(path, F_OK) == 0, "the referenced image stays");
    snprintf(path, sizeof path, "%s/notes.txt", sub);
    CHECK(access(path, F_OK) == 0, "files that are not images stay");
    snprintf(path, sizeof path, "%s/%s", sub, junk[0]);
    CHECK(access(path, F_OK) != 0, "the orphan is gone");
    jobs_free(js);
    store_close(st);
}

/* Finding 9: job errors reach API clients without server paths. */
static easel_err path_run(void *ctx, int worker, const gen_params *p, job_progress_fn progress,
                          void *user, uint8_t **rgb, gen_timings *t) {
    (void)ctx, (void)worker, (void)p, (void)progress, (void)user, (void)rgb, (void)t;
    return easel_seterr(EASEL_EIO, "cannot read '/srv/models/secret/unet.safetensors': %s/x: gone",
                        dir);
}

typedef struct {
    int has, step, steps, w, h, b2, b3;
    unsigned seq;
    size_t len;
    char mime[16];
} preview_seen;

static void grab_preview(void *user, const job *j, const job_extra *x) {
    (void)x;
    preview_seen *s = user;
    const job_preview *p = &j->preview;
    *s = (preview_seen){.has = p->data != NULL,
                        .step = p->step,
                        .steps = p->steps,
                        .w = p->width,
                        .h = p->height,
                        .seq = p->seq,
                        .len = p->len};
    if (p->data) s->b2 = p->data[2], s->b3 = p->data[3];
    snprintf(s->mime, sizeof s->mime, "%s", p->mime ? p->mime : "");
}

static preview_seen look_preview(jobs *js, const char *id) {
    preview_seen s = {0};
    jobs_view(js, id, grab_preview, &s);
    return s;
}

/* The latest preview per running job (a copy), replaced by the next, gone
 * when the job completes or is canceled; counted in the stats. */
static void test_previews_held_then_dropped(void) {
    reset_runner(2);
    rs.hold = 1, rs.previews = 1;
    store *st;
    jobs *js = open_jobs("previews.db", 1, 64, &st);
    REQUIRE(js, "open: %s", easel_errmsg());
    char a[37], b[37];
    submit(js, 7, 6, a);
    submit(js, 8, 50, b);
    CHECK(!look_preview(js, a).has, "none before it runs");
    REQUIRE(jobs_start(js) == EASEL_OK, "start");
    REQUIRE(wait_status(js, a, JOB_PROCESSING, 2000), "a processing");
    preview_seen p = {0};
    for (int t = 0; t < 2000 && !p.has; t += 5, sleep_ms(5))
        p = look_preview(js, a);
    CHECK(p.has && p.step == 1 && p.steps == 6 && p.seq == 1 && p.len == 4 && p.b2 == 1 &&
              p.b3 == 7 && p.w == 2 && p.h == 1 && !strcmp(p.mime, "image/png"),
          "step 1's preview held (step %d, seq %u)", p.step, p.seq);
    release();
    CHECK(wait_status(js, a, JOB_COMPLETED, 3000), "a completes");
    CHECK(!look_preview(js, a).has && look_preview(js, a).seq == 6, "dropped at the end (seq %u)",
          look_preview(js, a).seq);
    REQUIRE(wait_status(js, b, JOB_PROCESSING, 2000), "b processing");
    for (int t = 0; t < 2000 && look_preview(js, b).step < 3; t += 5)
        sleep_ms(5);
    p = look_preview(js, b);
    CHECK(p.has && p.step >= 3 && p.seq == (unsigned)p.step && p.b3 == 8,
          "b's own, the latest (step %d)", p.step);
    job_status after;
    CHECK(jobs_cancel(js, b, &after) == EASEL_OK, "cancel b");
    CHECK(wait_status(js, b, JOB_CANCELED, 3000), "b canceled");
    CHECK(!look_preview(js, b).has, "a canceled job drops its preview");
    jobs_stats stats;
    jobs_get_stats(js, &stats);
    CHECK(stats.previews >= 6 + 3, "counted: %llu", (unsigned long long)stats.previews);
    jobs_free(js);
    store_close(st);
}

static void test_error_paths_redacted(void) {
    store *st;
    char path[256];
    snprintf(path, sizeof path, "%s/redact.db", dir);
    REQUIRE(store_sqlite_open(path, 1, &st) == EASEL_OK, "open");
    jobs_config cfg = {.workers = 1, .queue_max = 8, .max_attempts = 3, .images_dir = dir};
    job_runner r = {path_run, t_write, NULL, NULL, NULL};
    jobs *js;
    REQUIRE(jobs_create(&cfg, st, &r, &js) == EASEL_OK, "create");
    char a[37];
    submit(js, 1, 1, a);
    REQUIRE(jobs_start(js) == EASEL_OK, "start");
    REQUIRE(wait_status(js, a, JOB_FAILED, 2000), "failed");
    seen s = look(js, a);
    CHECK(!strstr(s.error, "/srv") && !strstr(s.error, dir) &&
              strstr(s.error, "unet.safetensors") && strstr(s.error, "images/x"),
          "no absolute path: %s", s.error);
    jobs_free(js);
    store_close(st);
}

/* ---- several nodes on one PostgreSQL (tests/pgtest.h starts a real server) ---- */

/* A node: its own store connection(s) and scheduler on database db. */
typedef struct {
    store *st;
    jobs *js;
    char node[16];
    atomic_int ran; /* jobs its runner ran */
} pg_node;

static easel_err n_run(void *ctx, int worker, const gen_params *p, job_progress_fn progress,
                       void *user, uint8_t **rgb, gen_timings *t) {
    pg_node *n = ctx;
    atomic_fetch_add(&n->ran, 1);
    return t_run(NULL, worker, p, progress, user, rgb, t);
}

/* The "PNG" a store-images node writes: the seed byte, repeated, behind a tag. */
static easel_err n_encode(void *ctx, const uint8_t *rgb, int w, int h, uint8_t **out, size_t *len) {
    (void)ctx;
    size_t n = 300000 + (size_t)w * h; /* over one 256 KiB range */
    if (!(*out = malloc(n))) return EASEL_ENOMEM;
    memset(*out, rgb[0], n);
    memcpy(*out, "IMG!", 4);
    *len = n;
    return EASEL_OK;
}

static int pg_node_open(pg_node *n, const char *db, const char *name, int workers, int images,
                        int64_t lease_ms) {
    char url[300];
    snprintf(url, sizeof url, "postgresql:///%s?host=%s&user=easel", db, pgt_dir_);
    memset(n, 0, sizeof *n);
    snprintf(n->node, sizeof n->node, "%s", name);
    store_pg_config c = {.url = url, .node = name, .model = "m", .images = images};
    if (store_pg_open(&c, 5000, &n->st)) return -1;
    jobs_config cfg = {.workers = workers,
                       .queue_max = 64,
                       .max_attempts = 3,
                       .images_dir = dir,
                       .node = name,
                       .lease_ms = lease_ms,
                       .model = "m"};
    job_runner r = {n_run, t_write, n, n_encode, NULL};
    if (jobs_create(&cfg, n->st, &r, &n->js)) {
        store_close(n->st);
        return -1;
    }
    return 0;
}

static void pg_node_close(pg_node *n) {
    jobs_free(n->js);
    store_close(n->st);
    n->js = NULL, n->st = NULL;
}

static void test_pg_nodes_share_the_queue(void) {
    PG_OR_SKIP();
    reset_runner(5);
    char url[300];
    REQUIRE(!pgt_createdb("jobs_share", url, sizeof url), "createdb");
    pg_node a, b;
    REQUIRE(!pg_node_open(&a, "jobs_share", "a", 1, 0, 0), "a: %s", easel_errmsg());
    REQUIRE(!pg_node_open(&b, "jobs_share", "b", 1, 0, 0), "b: %s", easel_errmsg());
    REQUIRE(!jobs_start(a.js) && !jobs_start(b.js), "start");
    char ids[8][37];
    for (int i = 0; i < 8; i++)
        CHECK(!submit(a.js, i + 1, 6, ids[i]), "submit %d on a", i);
    for (int i = 0; i < 8; i++) {
        CHECK(wait_status(b.js, ids[i], JOB_COMPLETED, 10000), "b sees %d completed", i);
        CHECK(wait_status(a.js, ids[i], JOB_COMPLETED, 10000), "a sees %d completed", i);
    }
    CHECK(atomic_load(&a.ran) + atomic_load(&b.ran) == 8 && atomic_load(&b.ran) > 0,
          "8 runs in all, some on b (a %d, b %d)", atomic_load(&a.ran), atomic_load(&b.ran));
    seen s = look(b.js, ids[7]);
    CHECK(s.attempts == 1 && s.step == s.steps && s.image[0], "b's view of a's job");
    jobs_stats st;
    jobs_get_stats(a.js, &st);
    CHECK(st.shared && !strcmp(st.store_kind, "postgres") && !strcmp(st.node, "a") &&
              st.by_status[JOB_COMPLETED] == 8,
          "a's stats: shared %d, %d completed", st.shared, st.by_status[JOB_COMPLETED]);
    pg_node_close(&a);
    pg_node_close(&b);
}

static void test_pg_cancel_reaches_the_owner(void) {
    PG_OR_SKIP();
    reset_runner(20);
    char url[300];
    REQUIRE(!pgt_createdb("jobs_cancel", url, sizeof url), "createdb");
    pg_node a, b;
    REQUIRE(!pg_node_open(&a, "jobs_cancel", "a", 1, 0, 0), "a: %s", easel_errmsg());
    REQUIRE(!pg_node_open(&b, "jobs_cancel", "b", 1, 0, 0), "b: %s", easel_errmsg());
    REQUIRE(!jobs_start(b.js), "only b runs jobs");
    char id[37];
    REQUIRE(!submit(a.js, 3, 150, id), "submit on a");
    REQUIRE(wait_status(b.js, id, JOB_PROCESSING, 5000), "b runs it");
    sleep_ms(100);
    job_status after;
    CHECK(!jobs_cancel(a.js, id, &after) && after == JOB_PROCESSING, "cancel on a: flagged");
    CHECK(wait_status(b.js, id, JOB_CANCELED, 5000), "b stopped it at its next step");
    seen s = look(b.js, id);
    CHECK(s.step < 150 && atomic_load(&rs.stops_seen) == 1, "stopped early: step %d", s.step);
    jobs_refresh(a.js, id); /* a runs no sync thread here: read it through */
    CHECK(look(a.js, id).status == JOB_CANCELED, "a reads it canceled");
    pg_node_close(&a);
    pg_node_close(&b);
}

static void test_pg_lost_lease_stops_the_run(void) {
    PG_OR_SKIP();
    reset_runner(20);
    char url[300];
    REQUIRE(!pgt_createdb("jobs_lost", url, sizeof url), "createdb");
    pg_node a, b;
    REQUIRE(!pg_node_open(&b, "jobs_lost", "b", 1, 0, 0), "b: %s", easel_errmsg());
    REQUIRE(!jobs_start(b.js), "start b");
    char id[37];
    REQUIRE(!submit(b.js, 5, 60, id), "submit");
    REQUIRE(wait_status(b.js, id, JOB_PROCESSING, 5000), "b runs it");
    /* b's lease ends as if its heartbeats had stopped (a database outage) and
     * node a's rescuer took it back: b must stop and its result be refused */
    store_pg_config c = {.url = url, .node = "rescuer", .model = "m"};
    store *r = NULL;
    REQUIRE(!store_pg_open(&c, 5000, &r), "%s", easel_errmsg());
    int rq = 0, fl = 0;
    CHECK(!store_rescue(r, 3, jobs_now_ms() + 3600 * 1000, &rq, &fl) && rq == 1, "rescued %d", rq);
    store_close(r);
    REQUIRE(!pg_node_open(&a, "jobs_lost", "a", 1, 0, 0), "a: %s", easel_errmsg());
    REQUIRE(!jobs_start(a.js), "start a");
    CHECK(wait_status(a.js, id, JOB_COMPLETED, 10000), "a runs it to the end");
    CHECK(wait_status(b.js, id, JOB_COMPLETED, 10000), "b shows a's result");
    jobs_stats st;
    for (int t = 0; t < 100; t++) {
        jobs_get_stats(b.js, &st);
        if (st.leases_lost && !st.running) break;
        sleep_ms(50);
    }
    CHECK(st.leases_lost == 1 && st.running == 0, "b counted the lost lease (%llu), stopped",
          (unsigned long long)st.leases_lost);
    CHECK(look(b.js, id).attempts == 2, "two attempts: %d", look(b.js, id).attempts);
    CHECK(atomic_load(&rs.stops_seen) >= 1, "b's run stopped at a step");
    pg_node_close(&a);
    pg_node_close(&b);
}

static void test_pg_images_in_the_store(void) {
    PG_OR_SKIP();
    reset_runner(1);
    char url[300];
    REQUIRE(!pgt_createdb("jobs_img", url, sizeof url), "createdb");
    pg_node a, b;
    REQUIRE(!pg_node_open(&a, "jobs_img", "a", 1, 1, 0), "a: %s", easel_errmsg());
    REQUIRE(!pg_node_open(&b, "jobs_img", "b", 1, 1, 0), "b: %s", easel_errmsg());
    REQUIRE(!jobs_start(a.js) && !jobs_start(b.js), "start");
    CHECK(jobs_images_in_store(a.js), "images in the store");
    char id[37];
    REQUIRE(!submit(a.js, 7, 2, id), "submit");
    REQUIRE(wait_status(b.js, id, JOB_COMPLETED, 10000), "done");
    seen s = look(b.js, id);
    uint8_t *img = NULL;
    size_t len = 0;
    REQUIRE(!jobs_image_read(b.js, s.image, &img, &len), "read on b: %s", easel_errmsg());
    CHECK(len == 300000 + 64 * 64 && !memcmp(img, "IMG!", 4) && img[len - 1] == 7,
          "the bytes written on whichever node ran it: %zu", len);
    uint8_t part[1000];
    size_t n = 0;
    int64_t total = 0;
    CHECK(!jobs_image_range(a.js, s.image, (int64_t)len - 500, part, sizeof part, &n, &total) &&
              total == (int64_t)len && n == 500 && !memcmp(part, img + len - 500, n),
          "a range on a: %zu of %lld", n, (long long)total);
    free(img);
    char path[300];
    snprintf(path, sizeof path, "%s/%s", dir, s.image);
    struct stat sb;
    CHECK(stat(path, &sb) != 0, "no file written");
    pg_node_close(&a);
    pg_node_close(&b);
}

int main(void) {
    if (!mkdtemp(dir)) return 1;
    pthread_mutex_init(&rs.mu, NULL);
    pthread_cond_init(&rs.cv, NULL);
    RUN(test_fifo_and_worker_limit);
    RUN(test_cancel_pending_and_processing);
    RUN(test_queue_full);
    RUN(test_recovery_after_crash);
    RUN(test_watchdog);
    RUN(test_retention);
    RUN(test_stop_requeues);
    RUN(test_eta);
    RUN(test_job_vanishes_before_claim);
    RUN(test_dead_worker_restarted);
    RUN(test_store_failure_consistent);
    RUN(test_max_jobs);
    RUN(test_list_by_status);
    RUN(test_orphans_swept);
    RUN(test_error_paths_redacted);
    RUN(test_device_lost);
    RUN(test_previews_held_then_dropped);
    RUN(test_pg_nodes_share_the_queue);
    RUN(test_pg_cancel_reaches_the_owner);
    RUN(test_pg_lost_lease_stops_the_run);
    RUN(test_pg_images_in_the_store);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", dir);
    return test_summary();
}
