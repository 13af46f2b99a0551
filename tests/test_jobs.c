/* The scheduler with a test runner (no model): FIFO order, the worker limit,
 * cancel (pending and processing), queue full, crash recovery, the watchdog,
 * retention, graceful-stop requeue, ETAs from measured step times. */
#include <pthread.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "http/jobs.h"
#include "test.h"

static char dir[] = "/tmp/easel-test-jobs-XXXXXX";

/* ---- the test runner ---- */
typedef struct {
    atomic_int active, max_active, started, stops_seen;
    int order[64]; /* seeds in the order jobs started */
    int step_sleep_ms;
    int hold;  /* nonzero: wait at the first step until released */
    int stall; /* nonzero: wait without reporting progress until released */
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
    if (rs.stall) wait_released(1);
    for (int s = 1; s <= p->steps && !e; s++) {
        sleep_ms(rs.step_sleep_ms);
        if (progress(user, s, p->steps, rs.step_sleep_ms)) {
            atomic_fetch_add(&rs.stops_seen, 1);
            e = easel_seterr(EASEL_ECANCELED, "canceled");
        }
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

static const job_runner runner = {t_run, t_write, NULL};

/* ---- helpers ---- */

static void reset_runner(int step_ms) {
    atomic_store(&rs.active, 0);
    atomic_store(&rs.max_active, 0);
    atomic_store(&rs.started, 0);
    atomic_store(&rs.stops_seen, 0);
    rs.step_sleep_ms = step_ms;
    rs.hold = rs.stall = 0;
}

static jobs *open_jobs(const char *db, int workers, int queue_max, store **st) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, db);
    if (store_open(path, st)) return NULL;
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
    /* what a crash mid-job leaves: a and c 'processing' (c for the 3rd time) */
    store_row r = {0};
    memcpy(r.id, a, 37), r.status = JOB_PROCESSING, r.attempts = 1, r.started_ms = 1;
    CHECK(store_update(st, &r) == EASEL_OK, "mark a");
    memcpy(r.id, c, 37), r.attempts = 3;
    CHECK(store_update(st, &r) == EASEL_OK, "mark c");
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
    CHECK(jobs_maintain(js, jobs_now_ms() + 500) == 0, "not yet");
    CHECK(jobs_maintain(js, jobs_now_ms() + 3000) == 1, "the watchdog fires");
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
    CHECK(jobs_maintain(js, jobs_now_ms() + 30000) == 0, "kept within retention");
    CHECK(jobs_maintain(js, jobs_now_ms() + 61000) == 1, "deleted after retention");
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
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", dir);
    return test_summary();
}
