/* The SQLite job store: round trips, ordering, crash recovery, migrations. */
#include <sqlite3.h>
#include <stdlib.h>
#include <unistd.h>

#include "http/store.h"
#include "test.h"

static char dir[] = "/tmp/easel-test-store-XXXXXX";

static void db_path(const char *name, char *buf, size_t n) {
    snprintf(buf, n, "%s/%s", dir, name);
}

static void row(store_row *r, const char *id, job_status s, int64_t created) {
    memset(r, 0, sizeof *r);
    snprintf(r->id, sizeof r->id, "%s", id);
    r->status = s;
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

static void test_roundtrip_and_order(void) {
    char path[256];
    db_path("a.db", path, sizeof path);
    store *s;
    {
        int rc_ = store_open(path, &s);
        REQUIRE(rc_ == EASEL_OK, "%s", easel_errmsg());
    }
    CHECK(store_schema_version(s) == STORE_SCHEMA_VERSION, "version %d", store_schema_version(s));
    store_row a, b, c;
    row(&a, "id-a", JOB_PENDING, 100);
    row(&b, "id-b", JOB_PENDING, 200);
    row(&c, "id-c", JOB_PENDING, 300);
    CHECK(!store_insert(s, &a) && !store_insert(s, &b) && !store_insert(s, &c), "insert");
    CHECK(a.seq < b.seq && b.seq < c.seq, "seq increases: %lld %lld %lld", (long long)a.seq,
          (long long)b.seq, (long long)c.seq);
    CHECK(store_insert(s, &a) != EASEL_OK, "duplicate id refused");
    b.status = JOB_COMPLETED;
    b.started_ms = 210, b.finished_ms = 250, b.attempts = 1;
    b.image = (char *)"id-b.png";
    b.timings = (char *)"{\"total_ms\":40}";
    CHECK(store_update(s, &b) == EASEL_OK, "%s", easel_errmsg());
    store_row missing;
    row(&missing, "nope", JOB_FAILED, 1);
    CHECK(store_update(s, &missing) == EASEL_ENOTFOUND, "update of a missing id");
    CHECK(store_delete(s, "id-c") == EASEL_OK, "delete");
    store_close(s);

    {
        int rc_ = store_open(path, &s);
        REQUIRE(rc_ == EASEL_OK, "reopen: %s", easel_errmsg());
    }
    collected got = {0};
    CHECK(store_each(s, collect, &got) == EASEL_OK, "each");
    REQUIRE(got.n == 2, "2 rows after delete, got %d", got.n);
    CHECK(!strcmp(got.rows[0].id, "id-a") && !strcmp(got.rows[1].id, "id-b"), "order");
    store_row *r = &got.rows[1];
    CHECK(r->status == JOB_COMPLETED && r->started_ms == 210 && r->finished_ms == 250 &&
              r->attempts == 1 && r->created_ms == 200,
          "fields survive");
    CHECK(r->image && !strcmp(r->image, "id-b.png"), "image");
    CHECK(r->timings && !strcmp(r->timings, "{\"total_ms\":40}"), "timings");
    CHECK(!strcmp(got.rows[0].params, "{\"prompt\":\"a\"}") && !got.rows[0].error, "params");
    collected_free(&got);
    store_close(s);
}

static void test_wal_mode(void) {
    char path[256];
    db_path("wal.db", path, sizeof path);
    store *s;
    {
        int rc_ = store_open(path, &s);
        REQUIRE(rc_ == EASEL_OK, "%s", easel_errmsg());
    }
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

static void test_recover(void) {
    char path[256];
    db_path("r.db", path, sizeof path);
    store *s;
    {
        int rc_ = store_open(path, &s);
        REQUIRE(rc_ == EASEL_OK, "%s", easel_errmsg());
    }
    store_row a, b, c;
    row(&a, "once", JOB_PENDING, 1);
    row(&b, "thrice", JOB_PENDING, 2);
    row(&c, "done", JOB_PENDING, 3);
    store_insert(s, &a), store_insert(s, &b), store_insert(s, &c);
    a.status = JOB_PROCESSING, a.attempts = 1, a.started_ms = 5;
    b.status = JOB_PROCESSING, b.attempts = 3, b.started_ms = 5;
    c.status = JOB_COMPLETED, c.attempts = 1;
    store_update(s, &a), store_update(s, &b), store_update(s, &c);
    int requeued = -1, failed = -1;
    CHECK(store_recover(s, 3, &requeued, &failed) == EASEL_OK, "%s", easel_errmsg());
    CHECK(requeued == 1 && failed == 1, "requeued %d failed %d", requeued, failed);
    collected got = {0};
    store_each(s, collect, &got);
    REQUIRE(got.n == 3, "rows %d", got.n);
    CHECK(got.rows[0].status == JOB_PENDING && got.rows[0].attempts == 1 &&
              got.rows[0].started_ms == 0,
          "interrupted once: pending again, attempt kept");
    CHECK(got.rows[1].status == JOB_FAILED && got.rows[1].error &&
              strstr(got.rows[1].error, "interrupted 3 times") && got.rows[1].finished_ms > 0,
          "third interruption: failed with a reason (%s)", got.rows[1].error);
    CHECK(got.rows[2].status == JOB_COMPLETED, "finished jobs untouched");
    collected_free(&got);
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
        int rc_ = store_open(path, &s);
        REQUIRE(rc_ == EASEL_OK, "%s", easel_errmsg());
    }
    CHECK(store_schema_version(s) == STORE_SCHEMA_VERSION, "migrated to %d",
          store_schema_version(s));
    collected got = {0};
    store_each(s, collect, &got);
    CHECK(got.n == 1 && !strcmp(got.rows[0].id, "old") && got.rows[0].created_ms == 7 &&
              got.rows[0].progress_ms == 0,
          "v1 row kept");
    collected_free(&got);
    store_close(s);

    {
        int rc_ = sqlite3_open(path, &db);
        REQUIRE(rc_ == SQLITE_OK, "open");
    }
    sqlite3_exec(db, "PRAGMA user_version=99", NULL, NULL, NULL);
    sqlite3_close(db);
    CHECK(store_open(path, &s) == EASEL_EFORMAT && s == NULL, "a newer schema is refused");
}

static void test_status_names(void) {
    for (int i = 0; i < JOB_STATUS_COUNT; i++)
        CHECK(job_status_parse(job_status_name((job_status)i)) == i, "status %d", i);
    CHECK(job_status_parse("bogus") == -1 && job_status_parse(NULL) == -1, "unknown");
}

int main(void) {
    if (!mkdtemp(dir)) return 1;
    RUN(test_roundtrip_and_order);
    RUN(test_wal_mode);
    RUN(test_recover);
    RUN(test_migration_from_v1);
    RUN(test_status_names);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", dir);
    return test_summary();
}
