/* `easel bench queue`: the job queue itself, without a model. N schedulers
 * ("nodes", each with its own store connections, as separate processes
 * would have) in this process run trivial jobs (one progress call, a 1-byte
 * image write that does nothing), so what is timed is the store: submit
 * latency (jobs_submit: the committed insert), then claim + complete
 * throughput while the nodes drain a backlog, then (PostgreSQL) the progress
 * writes one node sustains while the others hear every change (NOTIFY). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "bench/bench.h"
#include "engine/opts.h"
#include "http/jobs.h"

#define BQ_MAX_NODES 8

typedef struct {
    const char *store, *json, *dir;
    int nodes, workers, jobs, submits, progress_s;
} bq_opts;

static easel_err bq_run(void *ctx, int worker, const gen_params *p, job_progress_fn progress,
                        void *user, uint8_t **rgb, gen_timings *t) {
    (void)ctx, (void)worker;
    progress(user, 1, 1, 0.01);
    *rgb = calloc((size_t)p->width * p->height * 3, 1);
    t->total_ms = 0.01;
    return *rgb ? EASEL_OK : EASEL_ENOMEM;
}

static easel_err bq_write(void *ctx, const char *path, const uint8_t *rgb, int w, int h) {
    (void)ctx, (void)path, (void)rgb, (void)w, (void)h;
    return EASEL_OK; /* the queue is timed, not the disk */
}

static easel_err bq_encode(void *ctx, const uint8_t *rgb, int w, int h, uint8_t **out,
                           size_t *len) {
    (void)ctx, (void)rgb, (void)w, (void)h;
    *out = malloc(1);
    *len = 1;
    return *out ? EASEL_OK : EASEL_ENOMEM;
}

static int bq_cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double bq_pct(double *v, int n, double p) {
    if (!n) return 0;
    qsort(v, (size_t)n, sizeof *v, bq_cmp);
    int i = (int)(p * n);
    return v[i < n ? i : n - 1];
}

static int bq_pg(const char *s) {
    return !strncmp(s, "postgres://", 11) || !strncmp(s, "postgresql://", 13);
}

static easel_err bq_open(const bq_opts *o, int i, store **st, jobs **js) {
    char node[32];
    snprintf(node, sizeof node, "bench-%d", i);
    easel_err e;
    if (bq_pg(o->store)) {
        store_pg_config c = {.url = o->store, .node = node, .model = "bench"};
        e = store_pg_open(&c, 5000, st);
    } else {
        char path[4200];
        snprintf(path, sizeof path, "%s/queue.db", o->dir);
        unlink(path);
        e = store_sqlite_open(path, !strcmp(o->store, "sqlite-full"), st);
    }
    if (e) return e;
    jobs_config jc = {.workers = o->workers,
                      .queue_max = o->jobs + o->submits + 16,
                      .max_jobs = 0,
                      .max_attempts = 3,
                      .images_dir = o->dir,
                      .node = node,
                      .model = "bench"};
    job_runner r = {bq_run, bq_write, NULL, bq_encode, NULL};
    return jobs_create(&jc, *st, &r, js);
}

static easel_err bq_submit(jobs *js, char id[37]) {
    job_params p = {0};
    if (!(p.prompt = strdup("bench"))) return EASEL_ENOMEM;
    p.width = p.height = 64;
    p.steps = 1;
    p.guidance = 1;
    easel_err e = jobs_submit(js, &p, id);
    if (e) params_clear(&p);
    return e;
}

static int bq_completed(jobs *js) {
    jobs_stats st;
    jobs_get_stats(js, &st);
    return st.by_status[JOB_COMPLETED];
}

typedef struct {
    store *st;
    atomic_int *stop;
    long writes;
    char id[37];
} bq_writer;

/* One node's progress writes on jobs it holds, as fast as the store takes them. */
static void *bq_progress_loop(void *arg) {
    bq_writer *w = arg;
    while (!atomic_load(w->stop)) {
        store_progress_row p = {w->id, "bench-0/w0", jobs_now_ms(), 60000, (int)(w->writes % 50),
                                2,     1.0};
        if (store_progress(w->st, &p, NULL)) break;
        w->writes++;
    }
    return NULL;
}

static int bq_parse(int argc, char **argv, bq_opts *o) {
    *o = (bq_opts){
        .store = "sqlite", .nodes = 1, .workers = 2, .jobs = 2000, .submits = 500, .progress_s = 5};
    const opt_spec specs[] = {{.name = "store",
                               .kind = OPT_STRING,
                               .dst = &o->store,
                               .metavar = "sqlite|sqlite-full|postgres://...",
                               .help = "the store (sqlite)"},
                              {.name = "nodes",
                               .kind = OPT_INT,
                               .dst = &o->nodes,
                               .lo = 1,
                               .hi = BQ_MAX_NODES,
                               .metavar = "N",
                               .help = "schedulers on the store (1; more need PostgreSQL)"},
                              {.name = "workers",
                               .kind = OPT_INT,
                               .dst = &o->workers,
                               .lo = 1,
                               .hi = 64,
                               .metavar = "N",
                               .help = "workers per node (2)"},
                              {.name = "jobs",
                               .kind = OPT_INT,
                               .dst = &o->jobs,
                               .lo = 1,
                               .hi = 10000000,
                               .metavar = "N",
                               .help = "the backlog drained (2000)"},
                              {.name = "submits",
                               .kind = OPT_INT,
                               .dst = &o->submits,
                               .lo = 1,
                               .hi = 1000000,
                               .metavar = "N",
                               .help = "submits timed one at a time (500)"},
                              {.name = "progress-seconds",
                               .kind = OPT_INT,
                               .dst = &o->progress_s,
                               .lo = 0,
                               .hi = 3600,
                               .metavar = "S",
                               .help = "progress writes timed (PostgreSQL; 5; 0 = skip)"},
                              {.name = "json",
                               .kind = OPT_STRING,
                               .dst = &o->json,
                               .metavar = "FILE",
                               .help = "machine-readable results"},
                              {0}};
    const opts_cmd cmd = {.name = "easel bench queue", .synopsis = "[options]", .specs = specs};
    int r = opts_parse(&cmd, argc, argv);
    if (r) return r;
    if (o->nodes > 1 && !bq_pg(o->store)) {
        fprintf(stderr, "easel bench queue: several nodes need --store postgres://...\n");
        return 2;
    }
    return 0;
}

int bench_queue(int argc, char **argv) {
    bq_opts o;
    int rc = bq_parse(argc, argv, &o);
    if (rc) return rc == 1 ? 0 : 2;
    char dir[] = "/tmp/easel-bench-queue-XXXXXX";
    if (!mkdtemp(dir)) return 1;
    o.dir = dir;
    store *st[BQ_MAX_NODES] = {0};
    jobs *js[BQ_MAX_NODES] = {0};
    double *lat = malloc(sizeof *lat * (size_t)o.submits);
    easel_err e = lat ? EASEL_OK : EASEL_ENOMEM;
    for (int i = 0; i < o.nodes && !e; i++)
        e = bq_open(&o, i, &st[i], &js[i]);
    char id[37];
    /* 1: submit latency, one at a time (nothing runs yet) */
    for (int i = 0; i < o.submits && !e; i++) {
        double t0 = bench_now();
        e = bq_submit(js[i % o.nodes], id);
        lat[i] = (bench_now() - t0) * 1000;
    }
    double s50 = bq_pct(lat, o.submits, 0.5), s99 = bq_pct(lat, o.submits, 0.99);
    /* 2: the backlog drained by every node's workers */
    for (int i = 0; i < o.jobs && !e; i++)
        e = bq_submit(js[i % o.nodes], id);
    int total = o.jobs + o.submits;
    double t0 = bench_now(), secs = 0;
    for (int i = 0; i < o.nodes && !e; i++)
        e = jobs_start(js[i]);
    while (!e && bq_completed(js[0]) < total && bench_now() - t0 < 600)
        usleep(2000);
    secs = bench_now() - t0;
    int done = e ? 0 : bq_completed(js[0]);
    /* 3: progress writes (PostgreSQL): one held job, written as fast as it goes */
    long writes = 0;
    double prog_s = 0;
    if (!e && store_shared(st[0]) && o.progress_s > 0) {
        store_row r;
        int found = 0;
        job_params jp = {.prompt = "progress", .width = 64, .height = 64, .steps = 50,
                         .guidance = 1, .seed = 1};
        cJSON *pj = params_to_json(&jp);
        char *text = pj ? cJSON_PrintUnformatted(pj) : NULL;
        cJSON_Delete(pj);
        store_row ins = {.params = text};
        jobs_new_uuid(ins.id);
        store *raw = NULL;
        store_pg_config c = {.url = o.store, .node = "bench-raw", .model = "raw"};
        if (!(e = store_pg_open(&c, 5000, &raw)) && !(e = store_insert(raw, &ins)) &&
            !(e = store_claim(raw, "bench-0/w0", jobs_now_ms(), 600000, &r, &found)) && found) {
            atomic_int stop = 0;
            bq_writer w = {raw, &stop, 0, ""};
            memcpy(w.id, r.id, 37);
            store_row_clear(&r);
            pthread_t t;
            double p0 = bench_now();
            pthread_create(&t, NULL, bq_progress_loop, &w);
            sleep((unsigned)o.progress_s);
            atomic_store(&stop, 1);
            pthread_join(t, NULL);
            prog_s = bench_now() - p0, writes = w.writes;
        }
        store_close(raw);
        free(text);
    }
    jobs_stats s0;
    if (!e) jobs_get_stats(js[0], &s0);
    for (int i = 0; i < o.nodes; i++)
        jobs_free(js[i]), store_close(st[i]);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", dir);
    free(lat);
    if (e) {
        fprintf(stderr, "easel bench queue: %s\n", easel_errmsg());
        return 1;
    }
    double rate = done / secs;
    printf("queue %s: %d node(s) x %d workers: submit p50 %.3f ms p99 %.3f ms; "
           "claim+complete %d jobs in %.2f s = %.0f jobs/s",
           bq_pg(o.store) ? "postgres" : o.store, o.nodes, o.workers, s50, s99, done, secs, rate);
    if (prog_s > 0) printf("; progress writes %.0f/s", writes / prog_s);
    printf("\n");
    if (o.json) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "store", bq_pg(o.store) ? "postgres" : o.store);
        cJSON_AddNumberToObject(j, "nodes", o.nodes);
        cJSON_AddNumberToObject(j, "workers_per_node", o.workers);
        cJSON_AddNumberToObject(j, "submit_p50_ms", s50);
        cJSON_AddNumberToObject(j, "submit_p99_ms", s99);
        cJSON_AddNumberToObject(j, "jobs", done);
        cJSON_AddNumberToObject(j, "seconds", secs);
        cJSON_AddNumberToObject(j, "jobs_per_s", rate);
        cJSON_AddNumberToObject(j, "progress_writes_per_s", prog_s > 0 ? writes / prog_s : 0);
        cJSON_AddNumberToObject(j, "remote_changes_node0", (double)s0.remote_changes);
        char *txt = cJSON_Print(j);
        FILE *f = fopen(o.json, "w");
        if (f && txt) fputs(txt, f), fclose(f);
        free(txt);
        cJSON_Delete(j);
    }
    return done == total ? 0 : 1;
}
