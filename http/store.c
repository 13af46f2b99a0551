/* SQLite job store (see store.h), WAL mode. The store opens with
 * synchronous=FULL (each commit fsyncs the WAL: an accepted job survives power
 * loss); `easel serve` lowers it to NORMAL unless --store-sync full is given:
 * in WAL mode NORMAL still survives any process crash (kill -9 included: the
 * WAL is in the OS page cache), only the last commits before a power loss may
 * roll back — and it takes the fsync off the POST /v1/jobs path, which is what
 * makes job start sub-millisecond (with FULL, p99 is the disk's fsync time,
 * 20–70 ms measured on our loaded CI-class VM). Schema changes are numbered
 * migrations run in order inside one transaction; PRAGMA user_version records
 * the last one. */
#include "store.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct store {
    sqlite3 *db;
    sqlite3 *ckpt; /* a second connection, only for store_checkpoint() (maintenance thread) */
    sqlite3_stmt *ins, *upd, *del;
};

static const char *status_names[JOB_STATUS_COUNT] = {"pending", "processing", "completed", "failed",
                                                     "canceled"};

const char *job_status_name(job_status s) {
    return (unsigned)s < JOB_STATUS_COUNT ? status_names[s] : "unknown";
}

int job_status_parse(const char *s) {
    for (int i = 0; s && i < JOB_STATUS_COUNT; i++)
        if (!strcmp(s, status_names[i])) return i;
    return -1;
}

/* Migration i brings the schema from version i to i+1. Append only. */
static const char *migrations[STORE_SCHEMA_VERSION] = {
    "CREATE TABLE jobs ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " id TEXT NOT NULL UNIQUE,"
    " status TEXT NOT NULL,"
    " params TEXT NOT NULL,"
    " created_ms INTEGER NOT NULL,"
    " started_ms INTEGER NOT NULL DEFAULT 0,"
    " finished_ms INTEGER NOT NULL DEFAULT 0,"
    " attempts INTEGER NOT NULL DEFAULT 0,"
    " error TEXT, image TEXT, timings TEXT);",
    "ALTER TABLE jobs ADD COLUMN progress_ms INTEGER NOT NULL DEFAULT 0;"
    "CREATE INDEX jobs_status ON jobs(status);",
};

static easel_err sqlerr(store *s, const char *what) {
    return easel_seterr(EASEL_EIO, "store: %s: %s", what, sqlite3_errmsg(s->db));
}

static easel_err exec(store *s, const char *sql) {
    char *msg = NULL;
    if (sqlite3_exec(s->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        easel_err e = easel_seterr(EASEL_EIO, "store: %s", msg ? msg : "exec failed");
        sqlite3_free(msg);
        return e;
    }
    return EASEL_OK;
}

easel_err store_set_sync(store *s, int full) {
    return exec(s, full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL");
}

int store_schema_version(store *s) {
    sqlite3_stmt *st;
    int v = -1;
    if (sqlite3_prepare_v2(s->db, "PRAGMA user_version", -1, &st, NULL) != SQLITE_OK) return -1;
    if (sqlite3_step(st) == SQLITE_ROW) v = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return v;
}

static easel_err migrate(store *s) {
    int v = store_schema_version(s);
    if (v < 0) return sqlerr(s, "reading schema version");
    if (v > STORE_SCHEMA_VERSION)
        return easel_seterr(EASEL_EFORMAT, "store: schema version %d is newer than this easel (%d)",
                            v, STORE_SCHEMA_VERSION);
    if (v == STORE_SCHEMA_VERSION) return EASEL_OK;
    easel_err e = exec(s, "BEGIN IMMEDIATE");
    for (int i = v; !e && i < STORE_SCHEMA_VERSION; i++)
        e = exec(s, migrations[i]);
    if (!e) {
        char sql[64];
        snprintf(sql, sizeof sql, "PRAGMA user_version=%d", STORE_SCHEMA_VERSION);
        e = exec(s, sql);
    }
    if (e) {
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        return easel_wraperr(e, "migrating from version %d", v);
    }
    return exec(s, "COMMIT");
}

static easel_err prepare(store *s) {
    const char *ins = "INSERT INTO jobs(id,status,params,created_ms) VALUES(?,?,?,?)";
    const char *upd = "UPDATE jobs SET status=?,started_ms=?,finished_ms=?,progress_ms=?,"
                      "attempts=?,error=?,image=?,timings=? WHERE id=?";
    const char *del = "DELETE FROM jobs WHERE id=?";
    if (sqlite3_prepare_v2(s->db, ins, -1, &s->ins, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(s->db, upd, -1, &s->upd, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(s->db, del, -1, &s->del, NULL) != SQLITE_OK)
        return sqlerr(s, "preparing statements");
    return EASEL_OK;
}

easel_err store_open(const char *path, store **out) {
    *out = NULL;
    store *s = calloc(1, sizeof *s);
    if (!s) return easel_seterr(EASEL_ENOMEM, "store: out of memory");
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
    easel_err e = EASEL_OK;
    if (sqlite3_open_v2(path, &s->db, flags, NULL) != SQLITE_OK) {
        e = easel_seterr(EASEL_EIO, "store: cannot open %s: %s", path,
                         s->db ? sqlite3_errmsg(s->db) : "out of memory");
    }
    if (!e) sqlite3_busy_timeout(s->db, 5000);
    /* No automatic checkpoints: the commit that crossed the threshold would pay
     * for copying the WAL into the database (and its fsync) on the request path.
     * The maintenance thread checkpoints instead (store_checkpoint). */
    if (!e) e = exec(s, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; "
                        "PRAGMA wal_autocheckpoint=0;");
    if (!e && sqlite3_open_v2(path, &s->ckpt, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
                  SQLITE_OK)
        e = easel_seterr(EASEL_EIO, "store: cannot open %s for checkpoints: %s", path,
                         s->ckpt ? sqlite3_errmsg(s->ckpt) : "out of memory");
    if (!e) sqlite3_busy_timeout(s->ckpt, 5000);
    if (!e) e = migrate(s);
    if (!e) e = prepare(s);
    if (e) {
        store_close(s);
        return e;
    }
    *out = s;
    return EASEL_OK;
}

void store_close(store *s) {
    if (!s) return;
    sqlite3_finalize(s->ins);
    sqlite3_finalize(s->upd);
    sqlite3_finalize(s->del);
    if (s->ckpt) sqlite3_close(s->ckpt);
    if (s->db) {
        sqlite3_exec(s->db, "PRAGMA wal_checkpoint(TRUNCATE)", NULL, NULL, NULL);
        sqlite3_close(s->db);
    }
    free(s);
}

easel_err store_checkpoint(store *s) {
    /* PASSIVE: copies what it can without waiting for or blocking the writer. */
    int rc = sqlite3_wal_checkpoint_v2(s->ckpt, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    if (rc != SQLITE_OK && rc != SQLITE_BUSY)
        return easel_seterr(EASEL_EIO, "store: checkpoint: %s", sqlite3_errmsg(s->ckpt));
    return EASEL_OK;
}

/* Steps a bound single-statement (autocommit = its own transaction) and resets it. */
static easel_err run_stmt(store *s, sqlite3_stmt *st, const char *what) {
    int rc = sqlite3_step(st);
    easel_err e = rc == SQLITE_DONE ? EASEL_OK : sqlerr(s, what);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return e;
}

easel_err store_insert(store *s, store_row *row) {
    sqlite3_bind_text(s->ins, 1, row->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(s->ins, 2, job_status_name(row->status), -1, SQLITE_STATIC);
    sqlite3_bind_text(s->ins, 3, row->params ? row->params : "{}", -1, SQLITE_STATIC);
    sqlite3_bind_int64(s->ins, 4, row->created_ms);
    easel_err e = run_stmt(s, s->ins, "inserting a job");
    if (!e) row->seq = sqlite3_last_insert_rowid(s->db);
    return e;
}

static void bind_text_or_null(sqlite3_stmt *st, int i, const char *v) {
    if (v)
        sqlite3_bind_text(st, i, v, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, i);
}

easel_err store_update(store *s, const store_row *row) {
    sqlite3_stmt *st = s->upd;
    sqlite3_bind_text(st, 1, job_status_name(row->status), -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, row->started_ms);
    sqlite3_bind_int64(st, 3, row->finished_ms);
    sqlite3_bind_int64(st, 4, row->progress_ms);
    sqlite3_bind_int(st, 5, row->attempts);
    bind_text_or_null(st, 6, row->error);
    bind_text_or_null(st, 7, row->image);
    bind_text_or_null(st, 8, row->timings);
    sqlite3_bind_text(st, 9, row->id, -1, SQLITE_STATIC);
    easel_err e = run_stmt(s, st, "updating a job");
    if (!e && sqlite3_changes(s->db) == 0)
        return easel_seterr(EASEL_ENOTFOUND, "store: no job %s", row->id);
    return e;
}

easel_err store_delete(store *s, const char *id) {
    sqlite3_bind_text(s->del, 1, id, -1, SQLITE_STATIC);
    return run_stmt(s, s->del, "deleting a job");
}

static int changes_of(store *s, const char *sql, easel_err *e) {
    if (*e) return 0;
    *e = exec(s, sql);
    return *e ? 0 : sqlite3_changes(s->db);
}

easel_err store_recover(store *s, int max_attempts, int *requeued, int *failed) {
    char fail_sql[320], requeue_sql[128];
    snprintf(fail_sql, sizeof fail_sql,
             "UPDATE jobs SET status='failed', "
             "finished_ms=CAST((julianday('now')-2440587.5)*86400000 AS "
             "INTEGER), error='interrupted %d times (the server stopped while it was processing); "
             "not retried again' WHERE status='processing' AND attempts>=%d",
             max_attempts, max_attempts);
    snprintf(requeue_sql, sizeof requeue_sql,
             "UPDATE jobs SET status='pending', started_ms=0, progress_ms=0 "
             "WHERE status='processing'");
    easel_err e = exec(s, "BEGIN IMMEDIATE");
    int nf = changes_of(s, fail_sql, &e);
    int nr = changes_of(s, requeue_sql, &e);
    if (e) {
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        return easel_wraperr(e, "recovering jobs");
    }
    if ((e = exec(s, "COMMIT"))) return e;
    if (requeued) *requeued = nr;
    if (failed) *failed = nf;
    return EASEL_OK;
}

static char *col_text(sqlite3_stmt *st, int i) {
    return (char *)sqlite3_column_text(st, i);
}

easel_err store_each(store *s, store_row_fn fn, void *user) {
    const char *sql = "SELECT seq,id,status,params,created_ms,started_ms,finished_ms,progress_ms,"
                      "attempts,error,image,timings FROM jobs ORDER BY seq";
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK)
        return sqlerr(s, "listing jobs");
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        store_row r = {0};
        r.seq = sqlite3_column_int64(st, 0);
        snprintf(r.id, sizeof r.id, "%s", col_text(st, 1) ? col_text(st, 1) : "");
        int status = job_status_parse(col_text(st, 2));
        r.status = status < 0 ? JOB_FAILED : (job_status)status;
        r.params = col_text(st, 3);
        r.created_ms = sqlite3_column_int64(st, 4);
        r.started_ms = sqlite3_column_int64(st, 5);
        r.finished_ms = sqlite3_column_int64(st, 6);
        r.progress_ms = sqlite3_column_int64(st, 7);
        r.attempts = sqlite3_column_int(st, 8);
        r.error = col_text(st, 9);
        r.image = col_text(st, 10);
        r.timings = col_text(st, 11);
        if (fn(user, &r)) break;
    }
    easel_err e = (rc == SQLITE_ROW || rc == SQLITE_DONE) ? EASEL_OK : sqlerr(s, "listing jobs");
    sqlite3_finalize(st);
    return e;
}

void store_row_clear(store_row *row) {
    free(row->params);
    free(row->error);
    free(row->image);
    free(row->timings);
    row->params = row->error = row->image = row->timings = NULL;
}
