/* The job store's contract (http/store.h), run against each implementation
 * (SQLite, and PostgreSQL on a real server the test starts: tests/pgtest.h):
 * round trips, FIFO claims with leases, ownership, cancel, watchdog
 * failures, crash recovery; plus SQLite's own (WAL mode, migrations, newer
 * schemas refused) and PostgreSQL's own (migrations racing under the
 * advisory lock, newer schemas refused, node ids, SKIP LOCKED claims from
 * several nodes, rescues of expired leases only, wake-ups, progress,
 * images, the outbox claimed once, reconnecting after the server died). */
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#ifdef EASEL_HAVE_PG
#include <libpq-fe.h>
#endif

#include "http/store.h"
#include "pgtest.h"
#include "test.h"

static char dir[] = "/tmp/easel-test-store-XXXXXX";

/* ---- the implementation under test ---- */

typedef struct {
    const char *name;
    easel_err (*open)(const char *name, store **out); /* a fresh, empty store */
} store_impl;

static easel_err open_sqlite(const char *name, store **out) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s.db", dir, name);
    unlink(path);
    return store_sqlite_open(path, 1, out);
}

/* A fresh database per name on the test's server; node and model "". */
static easel_err open_pg(const char *name, store **out) {
    char db[64], url[300];
    snprintf(db, sizeof db, "contract_%s", name);
    if (pgt_createdb(db, url, sizeof url)) return easel_seterr(EASEL_EIO, "createdb %s", db);
    store_pg_config c = {.url = url, .node = "", .model = ""};
    return store_pg_open(&c, 5000, out);
}

static const store_impl impls[] = {{"sqlite", open_sqlite}, {"postgres", open_pg}};
static const store_impl *impl;

static void db_path(const char *name, char *buf, size_t n) {
    snprintf(buf, n, "%s/%s", dir, name);
}

static void row(store_row *r, const char *id, int64_t created) {
    memset(r, 0, sizeof *r);
    snprintf(r->id, sizeof r->id, "%s", id);
    r->params = (char *)"{\"prompt\":\"a\"}";
    r->created_ms = created;
}

typedef struct {
    int n;
    store_row rows[8];
} collected;

static int collect(void *user, const store_row *r) {
    collected *c = user;
    if (c->n < 8) {
        store_row *d = &c->rows[c->n++];
        *d = *r;
        d->params = r->params ? strdup(r->params) : NULL;
        d->error = r->error ? strdup(r->error) : NULL;
        d->image = r->image ? strdup(r->image) : NULL;
        d->timings = r->timings ? strdup(r->timings) : NULL;
    }
    return 0;
}

static void collected_free(collected *c) {
    for (int i = 0; i < c->n; i++)
        store_row_clear(&c->rows[i]);
    c->n = 0;
}

static store *fresh(const char *name) {
    store *s = NULL;
    if (impl->open(name, &s)) return NULL;
    return s;
}

/* ---- the contract ---- */

static void test_roundtrip_and_order(void) {
    store *s = fresh("a");
    REQUIRE(s, "%s: %s", impl->name, easel_errmsg());
    store_row a, b, c;
    row(&a, "id-a", 100), row(&b, "id-b", 200), row(&c, "id-c", 300);
    CHECK(!store_insert(s, &a) && !store_insert(s, &b) && !store_insert(s, &c), "insert");
    CHECK(a.seq < b.seq && b.seq < c.seq, "seq increases: %lld %lld %lld", (long long)a.seq,
          (long long)b.seq, (long long)c.seq);
    CHECK(store_insert(s, &a) != EASEL_OK, "duplicate id refused");
    store_row got;
    int found = 0;
    CHECK(store_claim(s, "n1/w0", 205, 60000, &got, &found) == EASEL_OK && found, "claim");
    CHECK(!strcmp(got.id, "id-a"), "the oldest first: %s", got.id);
    store_row_clear(&got);
    CHECK(store_claim(s, "n1/w0", 210, 60000, &got, &found) == EASEL_OK && found &&
              !strcmp(got.id, "id-b") && got.status == JOB_PROCESSING && got.attempts == 1 &&
              got.started_ms == 210 && !strcmp(got.lease_owner, "n1/w0") &&
              got.lease_expires_ms == 60210,
          "claim b: %s", got.id);
    store_row fin = got;
    fin.status = JOB_COMPLETED, fin.finished_ms = 250;
    fin.image = (char *)"id-b.png", fin.timings = (char *)"{\"total_ms\":40}";
    CHECK(store_finish(s, &fin, "n2/w0") == EASEL_ENOTFOUND, "another owner cannot finish it");
    CHECK(store_finish(s, &fin, "n1/w0") == EASEL_OK, "%s", easel_errmsg());
    CHECK(store_finish(s, &fin, "n1/w0") == EASEL_ENOTFOUND, "finished once");
    fin.image = NULL, fin.timings = NULL;
    store_row_clear(&got);
    CHECK(store_delete(s, "id-c") == EASEL_OK, "delete");
    CHECK(store_delete(s, "id-c") == EASEL_OK, "delete of a missing id is fine");
    collected all = {0};
    CHECK(store_each(s, collect, &all) == EASEL_OK, "each");
    REQUIRE(all.n == 2, "2 rows after delete, got %d", all.n);
    CHECK(!strcmp(all.rows[0].id, "id-a") && !strcmp(all.rows[1].id, "id-b"), "order");
    store_row *r = &all.rows[1];
    CHECK(r->status == JOB_COMPLETED && r->started_ms == 210 && r->finished_ms == 250 &&
              r->attempts == 1 && r->created_ms == 200 && !r->lease_owner[0],
          "fields survive, lease released");
    CHECK(r->image && !strcmp(r->image, "id-b.png"), "image");
    CHECK(r->timings && !strcmp(r->timings, "{\"total_ms\":40}"), "timings");
    CHECK(!strcmp(all.rows[0].params, "{\"prompt\":\"a\"}") && !all.rows[0].error, "params");
    CHECK(all.rows[0].status == JOB_PROCESSING, "a still processing");
    collected_free(&all);
    CHECK(store_claim(s, "n1/w1", 300, 1000, &got, &found) == EASEL_OK && !found,
          "nothing pending: found = 0");
    CHECK(store_probe(s) == EASEL_OK, "probe writes");
    store_close(s);
}

static void test_heartbeat_cancel_fail(void) {
    store *s = fresh("hb");
    REQUIRE(s, "%s", easel_errmsg());
    store_row a, b, got;
    row(&a, "a", 1), row(&b, "b", 2);
    store_insert(s, &a), store_insert(s, &b);
    int found = 0, flag = -1;
    REQUIRE(!store_claim(s, "w0", 10, 100, &got, &found) && found, "claim");
    store_row_clear(&got);
    CHECK(store_heartbeat(s, "a", "w0", 50, 100, &flag) == EASEL_OK && flag == 0, "beat");
    CHECK(store_heartbeat(s, "a", "w9", 50, 100, &flag) == EASEL_ENOTFOUND, "not its owner");
    job_status after;
    CHECK(store_cancel(s, "b", 60, &after) == EASEL_OK && after == JOB_CANCELED,
          "pending: at once");
    CHECK(store_cancel(s, "b", 61, &after) == EASEL_EINVAL && after == JOB_CANCELED,
          "finished: refused with its status");
    CHECK(store_cancel(s, "a", 62, &after) == EASEL_OK && after == JOB_PROCESSING,
          "processing: flagged");
    CHECK(store_heartbeat(s, "a", "w0", 70, 100, &flag) == EASEL_OK && flag == 1,
          "the owner sees the flag");
    CHECK(store_cancel(s, "nope", 1, &after) == EASEL_ENOTFOUND, "unknown id");
    CHECK(store_fail(s, "a", 80, "stuck") == EASEL_OK, "the watchdog fails it");
    CHECK(store_fail(s, "a", 81, "again") == EASEL_ENOTFOUND, "only a processing job");
    CHECK(store_heartbeat(s, "a", "w0", 90, 100, NULL) == EASEL_ENOTFOUND, "lease gone");
    collected all = {0};
    store_each(s, collect, &all);
    REQUIRE(all.n == 2, "rows");
    CHECK(all.rows[0].status == JOB_FAILED && !strcmp(all.rows[0].error, "stuck") &&
              all.rows[0].finished_ms == 80,
          "failed with its reason");
    CHECK(all.rows[1].status == JOB_CANCELED && all.rows[1].finished_ms == 60, "canceled");
    collected_free(&all);
    store_close(s);
}

static void test_requeue_by_finish(void) {
    store *s = fresh("rq");
    REQUIRE(s, "%s", easel_errmsg());
    store_row a, got;
    row(&a, "a", 1);
    store_insert(s, &a);
    int found = 0;
    REQUIRE(!store_claim(s, "w0", 10, 100, &got, &found) && found && got.attempts == 1, "claim");
    got.status = JOB_PENDING, got.attempts = 0, got.started_ms = 0; /* a graceful stop */
    CHECK(store_finish(s, &got, "w0") == EASEL_OK, "back to pending");
    store_row_clear(&got);
    REQUIRE(!store_claim(s, "w1", 20, 100, &got, &found) && found, "claimed again");
    CHECK(got.attempts == 1 && !strcmp(got.lease_owner, "w1"), "not counted: %d", got.attempts);
    store_row_clear(&got);
    store_close(s);
}

/* The uploads a job reads (init_image, mask_image): in use while it is
 * pending or processing, free once it finished (the upload sweep asks). */
static void test_upload_in_use(void) {
    store *s = fresh("up");
    REQUIRE(s, "%s: %s", impl->name, easel_errmsg());
    CHECK(store_holds_uploads(s) == !strcmp(impl->name, "postgres"),
          "%s: uploads are rows only of a shared store", impl->name);
    store_row a;
    row(&a, "id-up", 100);
    a.init_image = "upl_11111111111111111111111111111111";
    a.mask_image = "upl_22222222222222222222222222222222";
    CHECK(!store_insert(s, &a), "insert: %s", easel_errmsg());
    int use = -1;
    CHECK(!store_upload_in_use(s, a.init_image, &use) && use == 1, "%s: init in use", impl->name);
    CHECK(!store_upload_in_use(s, a.mask_image, &use) && use == 1, "%s: mask in use", impl->name);
    CHECK(!store_upload_in_use(s, "upl_33333333333333333333333333333333", &use) && use == 0,
          "%s: another is not", impl->name);
    store_row c;
    int found = 0;
    CHECK(!store_claim(s, "w", 200, 60000, &c, &found) && found, "claim");
    CHECK(!store_upload_in_use(s, a.init_image, &use) && use == 1, "in use while processing");
    c.status = JOB_COMPLETED, c.finished_ms = 300;
    CHECK(!store_finish(s, &c, "w"), "finish: %s", easel_errmsg());
    store_row_clear(&c);
    CHECK(!store_upload_in_use(s, a.init_image, &use) && use == 0, "%s: free once finished",
          impl->name);
    store_close(s);
}

static void test_recover(void) {
    store *s = fresh("r");
    REQUIRE(s, "%s", easel_errmsg());
    store_row a, b, c, got;
    row(&a, "once", 1), row(&b, "thrice", 2), row(&c, "done", 3);
    store_insert(s, &a), store_insert(s, &b), store_insert(s, &c);
    int found;
    for (int i = 0; i < 4; i++) { /* "once" claimed once; "thrice" three times, requeued twice */
        store_claim(s, "w", 5, 100, &got, &found);
        if (!strcmp(got.id, "thrice") && got.attempts < 3) {
            got.status = JOB_PENDING;
            store_finish(s, &got, "w");
        }
        store_row_clear(&got);
    }
    CHECK(store_claim(s, "w", 5, 100, &got, &found) == EASEL_OK && found, "claim c");
    got.status = JOB_COMPLETED, got.finished_ms = 6;
    store_finish(s, &got, "w");
    store_row_clear(&got);
    int requeued = -1, failed = -1;
    CHECK(store_recover(s, 3, 1000, &requeued, &failed) == EASEL_OK, "%s", easel_errmsg());
    CHECK(requeued == 1 && failed == 1, "requeued %d failed %d", requeued, failed);
    collected all = {0};
    store_each(s, collect, &all);
    REQUIRE(all.n == 3, "rows %d", all.n);
    CHECK(all.rows[0].status == JOB_PENDING && all.rows[0].attempts == 1 &&
              all.rows[0].started_ms == 0 && !all.rows[0].lease_owner[0],
          "interrupted once: pending again, attempt kept");
    CHECK(all.rows[1].status == JOB_FAILED && all.rows[1].error &&
              strstr(all.rows[1].error, "interrupted 3 times") && all.rows[1].finished_ms == 1000,
          "third interruption: failed with a reason (%s)", all.rows[1].error);
    CHECK(all.rows[2].status == JOB_COMPLETED, "finished jobs untouched");
    collected_free(&all);
    store_close(s);
}

/* ---- SQLite's own ---- */

static void test_wal_mode(void) {
    char path[256];
    db_path("wal.db", path, sizeof path);
    store *s;
    {
        int rc_ = store_sqlite_open(path, 0, &s);
        REQUIRE(rc_ == EASEL_OK, "%s", easel_errmsg());
    }
    CHECK(!strcmp(store_kind(s), "sqlite"), "kind");
    sqlite3 *db;
    {
        int rc_ = sqlite3_open(path, &db);
        REQUIRE(rc_ == SQLITE_OK, "open");
    }
    sqlite3_stmt *st;
    sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL);
    CHECK(sqlite3_step(st) == SQLITE_ROW &&
              !strcmp((const char *)sqlite3_column_text(st, 0), "wal"),
          "journal mode is WAL");
    sqlite3_finalize(st);
    sqlite3_close(db);
    store_close(s);
}

static void test_migration_from_v1(void) {
    char path[256];
    db_path("v1.db", path, sizeof path);
    sqlite3 *db;
    {
        int rc_ = sqlite3_open(path, &db);
        REQUIRE(rc_ == SQLITE_OK, "open");
    }
    const char *v1 =
        "CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,"
        " status TEXT NOT NULL, params TEXT NOT NULL, created_ms INTEGER NOT NULL,"
        " started_ms INTEGER NOT NULL DEFAULT 0, finished_ms INTEGER NOT NULL DEFAULT 0,"
        " attempts INTEGER NOT NULL DEFAULT 0, error TEXT, image TEXT, timings TEXT);"
        "INSERT INTO jobs(id,status,params,created_ms) VALUES('old','pending','{}',7);"
        "PRAGMA user_version=1;";
    {
        int rc_ = sqlite3_exec(db, v1, NULL, NULL, NULL);
        REQUIRE(rc_ == SQLITE_OK, "v1 schema");
    }
    sqlite3_close(db);
    store *s;
    {
        int rc_ = store_sqlite_open(path, 1, &s);
        REQUIRE(rc_ == EASEL_OK, "%s", easel_errmsg());
    }
    CHECK(store_schema_version(s) == STORE_SQLITE_SCHEMA_VERSION, "migrated to %d",
          store_schema_version(s));
    collected got = {0};
    store_each(s, collect, &got);
    CHECK(got.n == 1 && !strcmp(got.rows[0].id, "old") && got.rows[0].created_ms == 7 &&
              got.rows[0].progress_ms == 0 && !got.rows[0].lease_owner[0],
          "v1 row kept");
    collected_free(&got);
    store_row c;
    int found = 0;
    CHECK(store_claim(s, "w", 9, 10, &c, &found) == EASEL_OK && found && !strcmp(c.id, "old"),
          "a migrated row is claimed");
    store_row_clear(&c);
    store_close(s);

    {
        int rc_ = sqlite3_open(path, &db);
        REQUIRE(rc_ == SQLITE_OK, "open");
    }
    sqlite3_exec(db, "PRAGMA user_version=99", NULL, NULL, NULL);
    sqlite3_close(db);
    CHECK(store_sqlite_open(path, 1, &s) == EASEL_EFORMAT && s == NULL,
          "a newer schema is refused");
    CHECK(strstr(easel_errmsg(), "newer"), "and says so: %s", easel_errmsg());
}

static void test_status_names(void) {
    for (int i = 0; i < JOB_STATUS_COUNT; i++)
        CHECK(job_status_parse(job_status_name((job_status)i)) == i, "status %d", i);
    CHECK(job_status_parse("bogus") == -1 && job_status_parse(NULL) == -1, "unknown");
}

/* ---- PostgreSQL's own ---- */

static void test_pg_unavailable(void) {
    PG_OR_SKIP();
}

static int64_t wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void msleep(int ms) {
    struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&t, NULL);
}

/* Opens a store on database db (made fresh when fresh_db) as node/model. */
static easel_err pg_open_as(const char *db, int fresh_db, const char *node, const char *model,
                            int images, store **out) {
    char url[300];
    if (fresh_db && pgt_createdb(db, url, sizeof url)) return easel_seterr(EASEL_EIO, "createdb");
    if (!fresh_db) {
        char tmp[300];
        snprintf(tmp, sizeof tmp, "postgresql:///%s?host=%s&user=easel", db, pgt_dir_);
        snprintf(url, sizeof url, "%s", tmp);
    }
    store_pg_config c = {.url = url, .node = node, .model = model, .images = images};
    return store_pg_open(&c, 5000, out);
}

#ifdef EASEL_HAVE_PG
/* Runs SQL on database db directly (libpq), for what the store does not expose. */
static int pg_sql(const char *db, const char *sql, char *first, size_t n) {
    char url[300];
    snprintf(url, sizeof url, "postgresql:///%s?host=%s&user=easel", db, pgt_dir_);
    PGconn *c = PQconnectdb(url);
    PGresult *r = PQexec(c, sql);
    int ok = r && (PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK);
    if (ok && first && n) snprintf(first, n, "%s", PQntuples(r) ? PQgetvalue(r, 0, 0) : "");
    if (!ok) fprintf(stderr, "  sql: %s", PQerrorMessage(c));
    PQclear(r);
    PQfinish(c);
    return ok ? 0 : -1;
}
#else
static int pg_sql(const char *db, const char *sql, char *first, size_t n) {
    (void)db, (void)sql, (void)first, (void)n;
    return -1;
}
#endif

typedef struct {
    const char *db, *node;
    easel_err e;
    store *s;
} open_arg;

static void *open_thread(void *p) {
    open_arg *a = p;
    a->e = pg_open_as(a->db, 0, a->node, "", 0, &a->s);
    return NULL;
}

static void test_pg_migrations_race_and_newer_refused(void) {
    PG_OR_SKIP();
    char url[300];
    REQUIRE(!pgt_createdb("mig", url, sizeof url), "createdb");
    open_arg a[4];
    pthread_t t[4];
    for (int i = 0; i < 4; i++) {
        a[i] = (open_arg){.db = "mig", .node = ""};
        pthread_create(&t[i], NULL, open_thread, &a[i]);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < 4; i++) {
        CHECK(a[i].e == EASEL_OK && a[i].s, "opener %d: %s", i, easel_errmsg());
        if (a[i].s)
            CHECK(store_schema_version(a[i].s) == STORE_PG_SCHEMA_VERSION, "version %d",
                  store_schema_version(a[i].s));
        CHECK(a[i].s && !strcmp(store_kind(a[i].s), "postgres") && store_shared(a[i].s) &&
                  !store_holds_images(a[i].s),
              "kind");
        store_close(a[i].s);
    }
    char n[32] = "";
    CHECK(!pg_sql("mig", "SELECT count(*) FROM easel_schema", n, sizeof n) && !strcmp(n, "1"),
          "one version row after four racing openers: %s", n);
    CHECK(!pg_sql("mig", "UPDATE easel_schema SET version = 99", NULL, 0), "bump");
    store *s = NULL;
    CHECK(pg_open_as("mig", 0, "", "", 0, &s) == EASEL_EFORMAT && !s, "a newer schema is refused");
    CHECK(strstr(easel_errmsg(), "newer") && strstr(easel_errmsg(), "99"), "and says so: %s",
          easel_errmsg());
}

static void test_pg_node_id_lock(void) {
    PG_OR_SKIP();
    store *a = NULL, *b = NULL;
    REQUIRE(!pg_open_as("nodes", 1, "n1", "", 0, &a), "%s", easel_errmsg());
    CHECK(pg_open_as("nodes", 0, "n1", "", 0, &b) == EASEL_EINVAL && !b,
          "a second live process with the same node id is refused");
    CHECK(strstr(easel_errmsg(), "n1") && strstr(easel_errmsg(), "in use"), "%s", easel_errmsg());
    CHECK(!pg_open_as("nodes", 0, "n2", "", 0, &b) && b, "another id is fine: %s", easel_errmsg());
    store_close(b), b = NULL;
    store_close(a);
    CHECK(!pg_open_as("nodes", 0, "n1", "", 0, &b) && b, "free again once its owner closed: %s",
          easel_errmsg());
    store_close(b);
}

#define SL_JOBS 200
#define SL_NODES 4

typedef struct {
    store *s;
    char owner[16];
    int claimed;
    atomic_int *seen; /* per job: times claimed */
} claimer;

static void *claim_loop(void *p) {
    claimer *c = p;
    for (;;) {
        store_row r;
        int found = 0;
        if (store_claim(c->s, c->owner, wall_ms(), 60000, &r, &found) || !found) break;
        int k = atoi(r.id + 1);
        if (k >= 0 && k < SL_JOBS) atomic_fetch_add(&c->seen[k], 1);
        r.status = JOB_COMPLETED, r.finished_ms = wall_ms();
        store_finish(c->s, &r, c->owner);
        store_row_clear(&r);
        c->claimed++;
    }
    return NULL;
}

static int count_attempts(void *user, const store_row *r) {
    int *bad = user;
    if (r->status != JOB_COMPLETED || r->attempts != 1) (*bad)++;
    return 0;
}

static void test_pg_skip_locked_claims(void) {
    PG_OR_SKIP();
    claimer c[SL_NODES];
    atomic_int seen[SL_JOBS];
    for (int i = 0; i < SL_JOBS; i++)
        atomic_init(&seen[i], 0);
    memset(c, 0, sizeof c);
    for (int i = 0; i < SL_NODES; i++) {
        char node[8];
        snprintf(node, sizeof node, "n%d", i);
        REQUIRE(!pg_open_as("skip", i == 0, node, "m", 0, &c[i].s), "%s", easel_errmsg());
        snprintf(c[i].owner, sizeof c[i].owner, "n%d/w0", i);
        c[i].seen = seen;
    }
    for (int i = 0; i < SL_JOBS; i++) {
        store_row r;
        char id[16];
        snprintf(id, sizeof id, "j%d", i);
        row(&r, id, i);
        CHECK(!store_insert(c[i % SL_NODES].s, &r), "insert %d", i);
    }
    store *other = NULL; /* a node with another model claims none of them */
    REQUIRE(!pg_open_as("skip", 0, "nx", "other-model", 0, &other), "%s", easel_errmsg());
    store_row r;
    int found = 1;
    CHECK(!store_claim(other, "nx/w0", 1, 1000, &r, &found) && !found,
          "another model's node claims nothing");
    store_close(other);
    pthread_t t[SL_NODES];
    for (int i = 0; i < SL_NODES; i++)
        pthread_create(&t[i], NULL, claim_loop, &c[i]);
    int total = 0, dup = 0, missing = 0, busy = 0;
    for (int i = 0; i < SL_NODES; i++) {
        pthread_join(t[i], NULL);
        total += c[i].claimed;
        busy += c[i].claimed > 0;
    }
    for (int i = 0; i < SL_JOBS; i++)
        dup += atomic_load(&seen[i]) > 1, missing += atomic_load(&seen[i]) == 0;
    CHECK(total == SL_JOBS && !dup && !missing, "claimed %d (dup %d, missing %d)", total, dup,
          missing);
    CHECK(busy >= 2, "the work was shared (%d nodes claimed)", busy);
    int bad = 0;
    store_each(c[0].s, count_attempts, &bad);
    CHECK(!bad, "%d rows not completed after exactly one attempt", bad);
    for (int i = 0; i < SL_NODES; i++)
        store_close(c[i].s);
}

static int status_of_row(store *s, const char *id, store_row *out) {
    collected all = {0};
    store_each(s, collect, &all);
    int found = 0;
    for (int i = 0; i < all.n; i++)
        if (!strcmp(all.rows[i].id, id)) {
            *out = all.rows[i];
            out->params = out->error = out->image = out->timings = NULL;
            out->webhook_url = NULL;
            found = 1;
        }
    collected_free(&all);
    return found;
}

static void test_pg_rescue_expired_only(void) {
    PG_OR_SKIP();
    store *a = NULL, *b = NULL;
    REQUIRE(!pg_open_as("rescue", 1, "a", "", 0, &a), "%s", easel_errmsg());
    REQUIRE(!pg_open_as("rescue", 0, "b", "", 0, &b), "%s", easel_errmsg());
    store_row j1, j2, got;
    row(&j1, "short", 1), row(&j2, "long", 2);
    store_insert(a, &j1), store_insert(a, &j2);
    int found, rq = -1, fl = -1;
    int64_t now = wall_ms();
    REQUIRE(!store_claim(a, "a/w0", now, 100, &got, &found) && found, "claim short");
    store_row_clear(&got);
    REQUIRE(!store_claim(a, "a/w1", now, 60000, &got, &found) && found, "claim long");
    store_row_clear(&got);
    CHECK(!store_rescue(b, 3, now + 50, &rq, &fl) && rq == 0 && fl == 0,
          "no lease expired yet: %d %d", rq, fl);
    CHECK(!store_rescue(a, 3, now + 500, &rq, &fl) && rq == 0,
          "a node does not rescue its own jobs (it still renders them): %d", rq);
    CHECK(!store_rescue(b, 3, now + 500, &rq, &fl) && rq == 1 && fl == 0,
          "another node rescues the expired one only: %d %d", rq, fl);
    store_row r;
    REQUIRE(status_of_row(b, "short", &r), "row");
    CHECK(r.status == JOB_PENDING && !r.lease_owner[0] && r.attempts == 1, "pending again");
    REQUIRE(status_of_row(b, "long", &r), "row");
    CHECK(r.status == JOB_PROCESSING && !strcmp(r.lease_owner, "a/w1"), "the live lease kept");
    CHECK(store_heartbeat(a, "short", "a/w0", now + 600, 1000, NULL) == EASEL_ENOTFOUND,
          "the old owner lost it");
    /* at the attempt cap a rescue fails the job, with the reason */
    for (int i = 0; i < 2; i++) {
        REQUIRE(!store_claim(a, "a/w0", now, 10, &got, &found) && found, "claim again");
        CHECK(!strcmp(got.id, "short"), "the rescued job first: %s", got.id);
        store_row_clear(&got);
        store_rescue(b, 3, now + 1000, &rq, &fl);
    }
    CHECK(rq == 0 && fl == 1, "third expiry: failed (%d %d)", rq, fl);
    REQUIRE(status_of_row(b, "short", &r), "row");
    CHECK(r.status == JOB_FAILED && r.finished_ms == now + 1000, "failed at the rescue's time");
    collected all = {0};
    store_each(b, collect, &all);
    for (int i = 0; i < all.n; i++)
        if (!strcmp(all.rows[i].id, "short"))
            CHECK(all.rows[i].error && strstr(all.rows[i].error, "interrupted 3 times"),
                  "with a reason: %s", all.rows[i].error);
    collected_free(&all);
    store_queue_info q;
    REQUIRE(!store_queue_stats(b, now, &q), "%s", easel_errmsg());
    CHECK(q.lease_expiries == 3 && q.rescues == 2, "counters: %lld expiries, %lld rescues",
          (long long)q.lease_expiries, (long long)q.rescues);
    store_close(a);
    store_close(b);
}

static void test_pg_recover_own_and_expired(void) {
    PG_OR_SKIP();
    store *a = NULL, *b = NULL;
    REQUIRE(!pg_open_as("recover", 1, "a", "", 0, &a), "%s", easel_errmsg());
    REQUIRE(!pg_open_as("recover", 0, "b", "", 0, &b), "%s", easel_errmsg());
    store_row x, got;
    const char *ids[] = {"a-live", "b-live", "b-expired"};
    for (int i = 0; i < 3; i++)
        row(&x, ids[i], i), store_insert(a, &x);
    int found, rq = -1, fl = -1;
    int64_t now = wall_ms();
    store_claim(a, "a/w0", now, 60000, &got, &found), store_row_clear(&got);
    store_claim(b, "b/w0", now, 60000, &got, &found), store_row_clear(&got);
    store_claim(b, "b/w1", now, 10, &got, &found), store_row_clear(&got);
    store_close(a); /* node a stops (kill -9: its lease stays) and starts again with its id */
    REQUIRE(!pg_open_as("recover", 0, "a", "", 0, &a), "%s", easel_errmsg());
    CHECK(!store_recover(a, 3, now + 100, &rq, &fl) && rq == 2 && fl == 0,
          "its own earlier lease and the expired one: %d %d", rq, fl);
    store_row r;
    REQUIRE(status_of_row(a, "b-live", &r), "row");
    CHECK(r.status == JOB_PROCESSING && !strcmp(r.lease_owner, "b/w0"),
          "a live node's job is never requeued by a start-up");
    REQUIRE(status_of_row(a, "a-live", &r), "row");
    CHECK(r.status == JOB_PENDING, "own: pending");
    REQUIRE(status_of_row(a, "b-expired", &r), "row");
    CHECK(r.status == JOB_PENDING, "expired: pending");
    store_close(a);
    store_close(b);
}

typedef struct {
    int n;
    char kinds[64];
    char ids[64][40];
} changes;

static void on_change(void *user, char kind, const char *id) {
    changes *c = user;
    if (c->n < 64) c->kinds[c->n] = kind, snprintf(c->ids[c->n++], 40, "%s", id);
}

static int saw(const changes *c, char kind, const char *id) {
    for (int i = 0; i < c->n; i++)
        if (c->kinds[i] == kind && !strcmp(c->ids[i], id)) return 1;
    return 0;
}

/* Waits up to ~2 s until a change (kind, id) arrives on s. */
static int wait_for_change(store *s, char kind, const char *id, changes *c) {
    for (int i = 0; i < 20 && !saw(c, kind, id); i++) {
        int resync = 0;
        store_wait(s, 100, on_change, c, &resync);
    }
    return saw(c, kind, id);
}

static int count_rows(void *user, const store_row *r) {
    (void)r;
    (*(int *)user)++;
    return 0;
}

static int keep_first(void *user, const store_row *r) {
    store_row *o = user;
    *o = *r;
    o->params = o->error = o->image = o->timings = o->webhook_url = NULL;
    return 1;
}

static void test_pg_wakeups_progress_changes(void) {
    PG_OR_SKIP();
    store *a = NULL, *b = NULL;
    REQUIRE(!pg_open_as("wake", 1, "a", "", 0, &a), "%s", easel_errmsg());
    REQUIRE(!pg_open_as("wake", 0, "b", "", 0, &b), "%s", easel_errmsg());
    changes c = {0};
    int resync = 0;
    store_wait(a, 10, on_change, &c, &resync); /* drain */
    int64_t before = wall_ms() - 5;
    store_row x, got;
    row(&x, "w1", 1);
    x.webhook_url = (char *)"http://127.0.0.1:9/h";
    x.webhook_events = STORE_EV_START | STORE_EV_COMPLETED;
    REQUIRE(!store_insert(b, &x), "%s", easel_errmsg());
    CHECK(wait_for_change(a, 'j', "w1", &c), "a submit on b wakes a (%d changes)", c.n);
    int found;
    c.n = 0;
    REQUIRE(!store_claim(a, "a/w0", wall_ms(), 60000, &got, &found) && found, "claim");
    store_row_clear(&got);
    CHECK(wait_for_change(a, 'o', "w1", &c), "the start event's outbox row is told too");
    /* (told in the claim's commit, before its outbox row) */
    CHECK(!saw(&c, 'j', "w1"), "a's own claim is not told back to a (its cache has it)");
    c.n = 0;
    job_status after;
    CHECK(!store_cancel(b, "w1", wall_ms(), &after) && after == JOB_PROCESSING, "cancel on b");
    CHECK(wait_for_change(a, 'j', "w1", &c), "the cancel reaches the owner");
    store_progress_row p = {.id = "w1",
                            .owner = "a/w0",
                            .now_ms = wall_ms(),
                            .lease_ms = 30000,
                            .step = 7,
                            .stage = 2,
                            .step_ms = 12.5};
    int cancel = 0;
    CHECK(!store_progress(a, &p, &cancel) && cancel == 1, "progress sees the cancel flag");
    p.owner = "b/w0";
    CHECK(store_progress(a, &p, NULL) == EASEL_ENOTFOUND, "only the owner writes progress");
    const char *ids[] = {"w1", "nope"};
    store_row r;
    memset(&r, 0, sizeof r);
    CHECK(!store_get(b, ids, 2, keep_first, &r), "get");
    CHECK(!strcmp(r.id, "w1") && r.step == 7 && r.stage == 2 && r.step_ms == 12.5 &&
              r.cancel_requested == 1 && r.lease_expires_ms == p.now_ms + 30000,
          "another node reads the progress: step %d stage %d %.1f", r.step, r.stage, r.step_ms);
    int n = 0;
    CHECK(!store_changed(b, before, count_rows, &n) && n == 1, "changed since: %d", n);
    n = 0;
    CHECK(!store_changed(b, wall_ms() + 60000, count_rows, &n) && n == 0, "none later: %d", n);
    int64_t off = 99999;
    CHECK(!store_clock(b, &off) && off > -1000 && off < 1000, "same host: offset %lld ms",
          (long long)off);
    store_close(a);
    store_close(b);
}

static void test_pg_images(void) {
    PG_OR_SKIP();
    store *s = NULL;
    REQUIRE(!pg_open_as("images", 1, "a", "", 1, &s), "%s", easel_errmsg());
    CHECK(store_holds_images(s), "holds images");
    size_t len = 700 * 1000 + 17;
    unsigned char *img = malloc(len), *back = malloc(len);
    REQUIRE(img && back, "oom");
    for (size_t i = 0; i < len; i++)
        img[i] = (unsigned char)((i * 2654435761u) >> 13);
    img[5] = 0; /* binary, NULs included */
    store_row x, got;
    row(&x, "img", 1);
    store_insert(s, &x);
    int found;
    REQUIRE(!store_claim(s, "a/w0", 2, 60000, &got, &found) && found, "claim");
    store_row fin = got;
    fin.status = JOB_COMPLETED, fin.finished_ms = 3, fin.image = (char *)"img.png";
    fin.image_data = img, fin.image_len = len;
    CHECK(store_finish(s, &fin, "a/w1") == EASEL_ENOTFOUND, "not the owner: no image either");
    fin.image = NULL;
    int64_t total = 0;
    size_t n = 0;
    CHECK(store_image_read(s, "img.png", 0, back, 10, &n, &total) == EASEL_ENOTFOUND,
          "no image row from a refused finish");
    fin.image = (char *)"img.png";
    CHECK(!store_finish(s, &fin, "a/w0"), "%s", easel_errmsg());
    fin.image = NULL;
    store_row_clear(&got);
    size_t off = 0;
    int chunks = 0;
    while (off < len) { /* in 256 KiB ranges, as the HTTP layer streams it */
        size_t want = 256 * 1024;
        if (store_image_read(s, "img.png", (int64_t)off, back + off, want, &n, &total) || !n) break;
        off += n, chunks++;
    }
    CHECK(off == len && total == (int64_t)len && chunks == 3, "read %zu of %zu in %d ranges", off,
          len, chunks);
    CHECK(!memcmp(img, back, len), "the bytes as written");
    CHECK(!store_image_read(s, "img.png", (int64_t)len, back, 10, &n, &total) && n == 0,
          "past the end: nothing");
    CHECK(!store_delete(s, "img"), "delete the job");
    CHECK(store_image_read(s, "img.png", 0, back, 10, &n, &total) == EASEL_ENOTFOUND,
          "its image went with it");
    char cnt[16] = "";
    CHECK(!pg_sql("images", "SELECT count(*) FROM easel_images", cnt, sizeof cnt) &&
              !strcmp(cnt, "0"),
          "no orphaned image rows: %s", cnt);
    free(img);
    free(back);
    store_close(s);
}

/* Uploads as rows (several nodes): what one node puts another reads, bytes
 * and record; a second put of an id changes nothing; the sweep takes only
 * rows older than its cutoff that no pending or processing job reads. */
static void test_pg_uploads(void) {
    PG_OR_SKIP();
    store *a = NULL, *b = NULL;
    REQUIRE(!pg_open_as("uploads", 1, "a", "", 0, &a), "%s", easel_errmsg());
    REQUIRE(!pg_open_as("uploads", 0, "b", "", 0, &b), "%s", easel_errmsg());
    CHECK(store_holds_uploads(a) && store_holds_uploads(b), "holds uploads");
    static const char *ids[3] = {"upl_00000000000000000000000000000001",
                                 "upl_00000000000000000000000000000002",
                                 "upl_00000000000000000000000000000003"};
    uint8_t bytes[3][300];
    for (int k = 0; k < 3; k++) {
        for (int i = 0; i < 300; i++)
            bytes[k][i] = (uint8_t)(i * (k + 7));
        bytes[k][3] = 0; /* binary, NULs included */
        char rec[64];
        snprintf(rec, sizeof rec, "{\"n\":%d,\"text\":\"\u00e9\"}", k);
        CHECK(!store_upload_put(a, ids[k], rec, bytes[k], 300, 1000 + k), "put %d: %s", k,
              easel_errmsg());
    }
    CHECK(!store_upload_put(a, ids[0], "{}", bytes[1], 10, 5), "a second put: %s", easel_errmsg());
    char *rec = NULL;
    uint8_t *data = NULL;
    size_t len = 0;
    CHECK(!store_upload_get(b, ids[0], &rec, &data, &len) && len == 300 &&
              !memcmp(data, bytes[0], 300) && !strcmp(rec, "{\"n\":0,\"text\":\"\u00e9\"}"),
          "b reads a's upload as it was first put: %s", rec ? rec : easel_errmsg());
    free(rec), free(data);
    CHECK(store_upload_get(b, "upl_ffffffffffffffffffffffffffffffff", &rec, &data, &len) ==
                  EASEL_ENOTFOUND &&
              !rec && !data,
          "unknown: not found");
    /* a pending job reads ids[1]: the sweep keeps it; ids[2] is newer than the cutoff */
    store_row j;
    row(&j, "uses-upload", 1);
    j.init_image = ids[1];
    CHECK(!store_insert(a, &j), "insert: %s", easel_errmsg());
    int removed = -1;
    CHECK(!store_upload_sweep(b, 1002, &removed) && removed == 1, "swept %d", removed);
    CHECK(store_upload_get(a, ids[0], &rec, &data, &len) == EASEL_ENOTFOUND, "old and unused: gone");
    CHECK(!store_upload_get(a, ids[1], &rec, &data, &len), "in use: kept");
    free(rec), free(data);
    CHECK(!store_upload_get(a, ids[2], &rec, &data, &len), "newer: kept");
    free(rec), free(data);
    CHECK(!store_upload_remove(b, ids[2]) &&
              store_upload_get(a, ids[2], &rec, &data, &len) == EASEL_ENOTFOUND,
          "removed");
    store_close(a);
    store_close(b);
}

typedef struct {
    store *s;
    char owner[16];
    int n;
    char ids[64][96];
} ob_claimer;

static void *ob_loop(void *p) {
    ob_claimer *c = p;
    for (int round = 0; round < 50; round++) {
        outbox_row rows[4];
        int n = 0;
        if (store_outbox_due(c->s, c->owner, wall_ms(), 60000, rows, 4, &n)) break;
        for (int i = 0; i < n && c->n < 64; i++) {
            memcpy(c->ids[c->n++], rows[i].id, sizeof rows[i].id);
            rows[i].status = OUTBOX_DELIVERED, rows[i].attempts = 1;
            store_outbox_done(c->s, &rows[i]);
        }
    }
    return NULL;
}

static void test_pg_outbox_claimed_once(void) {
    PG_OR_SKIP();
    ob_claimer c[3];
    memset(c, 0, sizeof c);
    for (int i = 0; i < 3; i++) {
        char node[8];
        snprintf(node, sizeof node, "n%d", i);
        REQUIRE(!pg_open_as("outbox", i == 0, node, "", 0, &c[i].s), "%s", easel_errmsg());
        snprintf(c[i].owner, sizeof c[i].owner, "n%d", i);
    }
    for (int i = 0; i < 10; i++) { /* 10 jobs: start + completed events from the triggers */
        store_row x, got;
        char id[16];
        snprintf(id, sizeof id, "h%d", i);
        row(&x, id, i);
        x.webhook_url = (char *)"http://127.0.0.1:9/h";
        x.webhook_events = STORE_EV_START | STORE_EV_COMPLETED;
        store_insert(c[0].s, &x);
        int found;
        store_claim(c[1].s, "n1/w0", 10 + i, 60000, &got, &found);
        got.status = JOB_COMPLETED, got.finished_ms = 20 + i;
        store_finish(c[1].s, &got, "n1/w0");
        store_row_clear(&got);
    }
    pthread_t t[3];
    for (int i = 0; i < 3; i++)
        pthread_create(&t[i], NULL, ob_loop, &c[i]);
    int total = 0, dup = 0;
    for (int i = 0; i < 3; i++)
        pthread_join(t[i], NULL), total += c[i].n;
    for (int i = 0; i < 3; i++)
        for (int k = 0; k < c[i].n; k++)
            for (int j = 0; j < 3; j++)
                for (int m = 0; m < c[j].n; m++)
                    if ((i != j || k != m) && !strcmp(c[i].ids[k], c[j].ids[m])) dup++;
    CHECK(total == 20 && !dup, "20 events, each claimed by one node: %d claimed, %d twice", total,
          dup);
    char start_id[96] = "";
    pg_sql("outbox", "SELECT id FROM easel_outbox WHERE job_id='h3' AND event='start'", start_id,
           sizeof start_id);
    CHECK(!strcmp(start_id, "msg_h3_start_1"), "the same ids as SQLite's triggers: %s", start_id);
    for (int i = 0; i < 3; i++)
        store_close(c[i].s);
}

static void test_pg_shared_secret_and_stats(void) {
    PG_OR_SKIP();
    store *a = NULL, *b = NULL;
    REQUIRE(!pg_open_as("secret", 1, "a", "m", 0, &a), "%s", easel_errmsg());
    REQUIRE(!pg_open_as("secret", 0, "b", "m", 0, &b), "%s", easel_errmsg());
    char out[64];
    CHECK(!store_shared_secret(a, "url_key", "first", out, sizeof out) && !strcmp(out, "first"),
          "the first node decides: %s", out);
    CHECK(!store_shared_secret(b, "url_key", "second", out, sizeof out) && !strcmp(out, "first"),
          "the others read it: %s", out);
    int64_t now = wall_ms();
    CHECK(!store_node_beat(a, now, 2) && !store_node_beat(b, now, 3), "%s", easel_errmsg());
    store_row x, got;
    row(&x, "s1", 1), store_insert(a, &x);
    row(&x, "s2", 2), store_insert(a, &x);
    int found;
    store_claim(b, "b/w0", now, 60000, &got, &found), store_row_clear(&got);
    store_queue_info q;
    REQUIRE(!store_queue_stats(a, now, &q), "%s", easel_errmsg());
    CHECK(q.pending == 1 && q.processing == 1 && q.n_nodes == 2,
          "pending %d processing %d nodes %d", q.pending, q.processing, q.n_nodes);
    CHECK(!strcmp(q.nodes[0].node, "a") && q.nodes[0].workers == 2 && q.nodes[0].running == 0 &&
              !strcmp(q.nodes[1].node, "b") && q.nodes[1].workers == 3 && q.nodes[1].running == 1,
          "running by node");
    store_close(a);
    store_close(b);
}

static void test_pg_reconnects(void) {
    PG_OR_SKIP();
    store *s = NULL;
    REQUIRE(!pg_open_as("reconnect", 1, "a", "", 0, &s), "%s", easel_errmsg());
    store_row x;
    row(&x, "before", 1);
    REQUIRE(!store_insert(s, &x), "%s", easel_errmsg());
    REQUIRE(!pgt_ctl("stop"), "stop the server (immediate: as a crash)");
    row(&x, "during", 2);
    CHECK(store_insert(s, &x) == EASEL_EIO, "a write while the database is gone: EIO");
    CHECK(store_probe(s) == EASEL_EIO, "the probe too (fast: %s)", easel_errmsg());
    changes c = {0};
    int resync = 0;
    int lost = 0; /* what was sent before the crash is read first, then the loss */
    for (int i = 0; i < 5 && !lost; i++)
        lost = store_wait(s, 50, on_change, &c, &resync) == EASEL_EIO;
    CHECK(lost, "the wake-ups too");
    REQUIRE(!pgt_ctl("start"), "start it again");
    int ok = 0;
    for (int i = 0; i < 60 && !ok; i++) { /* the backoff is at most 5 s */
        ok = store_probe(s) == EASEL_OK;
        if (!ok) msleep(100);
    }
    CHECK(ok, "the probe reconnects: %s", easel_errmsg());
    row(&x, "after", 3);
    CHECK(!store_insert(s, &x), "writes again: %s", easel_errmsg());
    int resynced = 0;
    for (int i = 0; i < 60 && !resynced; i++) {
        easel_err e = store_wait(s, 100, on_change, &c, &resync);
        resynced = !e && resync;
    }
    CHECK(resynced, "the wake-up connection comes back and asks for a reload");
    int n = 0;
    store_each(s, count_rows, &n);
    CHECK(n == 2, "the committed rows survived the crash: %d", n);
    store_close(s);
}

int main(void) {
    if (!mkdtemp(dir)) return 1;
    for (size_t i = 0; i < sizeof impls / sizeof impls[0]; i++) {
        impl = &impls[i];
        const char *why;
        if (!strcmp(impl->name, "postgres") && !pgt_up(&why)) {
            RUN(test_pg_unavailable);
            continue;
        }
        RUN(test_roundtrip_and_order);
        RUN(test_heartbeat_cancel_fail);
        RUN(test_requeue_by_finish);
        RUN(test_recover);
        RUN(test_upload_in_use);
    }
    RUN(test_wal_mode);
    RUN(test_migration_from_v1);
    RUN(test_status_names);
    RUN(test_pg_migrations_race_and_newer_refused);
    RUN(test_pg_node_id_lock);
    RUN(test_pg_skip_locked_claims);
    RUN(test_pg_rescue_expired_only);
    RUN(test_pg_recover_own_and_expired);
    RUN(test_pg_wakeups_progress_changes);
    RUN(test_pg_images);
    RUN(test_pg_uploads);
    RUN(test_pg_outbox_claimed_once);
    RUN(test_pg_shared_secret_and_stats);
    RUN(test_pg_reconnects); /* last: it stops the server */
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", dir);
    return test_summary();
}
