/* SQLite job store (see store.h), WAL mode. The store opens with
 * synchronous=FULL (each commit fsyncs the WAL: an accepted job survives power
 * loss) unless asked for NORMAL (what `easel serve` uses by default): in WAL
 * mode NORMAL still survives any crash of the process (kill -9 included: the
 * WAL is in the OS page cache); only the last commits before a power loss or
 * a kernel crash may roll back — and it takes the fsync off the POST /v1/jobs
 * path, which is what makes job start sub-millisecond (with FULL, p99 is the
 * disk's fsync time, 20–70 ms measured on our loaded CI-class VM). One node
 * owns the file (the data-dir lock), so start-up recovery may requeue every
 * processing row. Schema changes are numbered migrations run in order inside
 * one transaction; PRAGMA user_version records the last one. */
#include "../engine/log.h"
#include "store.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    store base; /* first: a store * is a sqlite_store * */
    sqlite3 *db;
    sqlite3 *ckpt; /* a second connection, only for store_checkpoint() (maintenance thread) */
    sqlite3_stmt *ins, *claim, *beat, *fin, *fail, *del, *cancel_pending, *cancel_running,
        *status_of, *probe, *ob_add, *ob_due, *ob_done, *ob_del, *up_use;
} sqlite_store;

#define COLS                                                                                       \
    "seq,id,status,params,created_ms,started_ms,finished_ms,progress_ms,attempts,error,image,"     \
    "timings,lease_owner,lease_expires_ms,cancel_requested,webhook_url,webhook_events"
#define OB_COLS "id,job_id,event,url,created_ms,next_ms,attempts,status,error,done_ms"

/* Migration i brings the schema from version i to i+1. Append only. */
static const char *migrations[STORE_SQLITE_SCHEMA_VERSION] = {
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
    /* 3: the store is the queue (claims with a lease, cancel flags), probes */
    "ALTER TABLE jobs ADD COLUMN lease_owner TEXT;"
    "ALTER TABLE jobs ADD COLUMN lease_expires_ms INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;"
    "DROP INDEX jobs_status;"
    "CREATE INDEX jobs_status_seq ON jobs(status, seq);"
    "CREATE TABLE store_meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);",
    /* 4: webhooks: the jobs' URLs and a transactional outbox the state changes feed */
    "ALTER TABLE jobs ADD COLUMN webhook_url TEXT;"
    "ALTER TABLE jobs ADD COLUMN webhook_events INTEGER NOT NULL DEFAULT 0;"
    "CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,"
    " job_id TEXT NOT NULL, event TEXT NOT NULL, url TEXT NOT NULL, created_ms INTEGER NOT NULL,"
    " next_ms INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
    " status TEXT NOT NULL DEFAULT 'pending', error TEXT, done_ms INTEGER NOT NULL DEFAULT 0,"
    " lease_owner TEXT, lease_until INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX outbox_due ON outbox(status, next_ms);"
    "CREATE TRIGGER jobs_event_start AFTER UPDATE OF status ON jobs"
    " WHEN old.status='pending' AND new.status='processing' AND new.webhook_url IS NOT NULL"
    " AND (new.webhook_events & 1) BEGIN"
    " INSERT OR IGNORE INTO outbox(id,job_id,event,url,created_ms,next_ms)"
    " VALUES('msg_'||new.id||'_start_'||new.attempts, new.id, 'start', new.webhook_url,"
    " new.started_ms, new.started_ms); END;"
    "CREATE TRIGGER jobs_event_completed AFTER UPDATE OF status ON jobs"
    " WHEN old.status IN ('pending','processing')"
    " AND new.status IN ('completed','failed','canceled') AND new.webhook_url IS NOT NULL"
    " AND (new.webhook_events & 4) BEGIN"
    " INSERT OR IGNORE INTO outbox(id,job_id,event,url,created_ms,next_ms)"
    " VALUES('msg_'||new.id||'_completed', new.id, 'completed', new.webhook_url,"
    " new.finished_ms, new.finished_ms); END;",
    /* 5: img2img / inpainting: the uploads a job reads (the sweep keeps those in use) */
    "ALTER TABLE jobs ADD COLUMN init_image TEXT;"
    "ALTER TABLE jobs ADD COLUMN mask_image TEXT;"
    "CREATE INDEX jobs_init_image ON jobs(init_image) WHERE init_image IS NOT NULL;"
    "CREATE INDEX jobs_mask_image ON jobs(mask_image) WHERE mask_image IS NOT NULL;",
};

static sqlite_store *S(store *s) {
    return (sqlite_store *)s;
}

static easel_err sqlerr(sqlite_store *s, const char *what) {
    return easel_seterr(EASEL_EIO, "store: %s: %s", what, sqlite3_errmsg(s->db));
}

static easel_err exec(sqlite_store *s, const char *sql) {
    char *msg = NULL;
    if (sqlite3_exec(s->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        easel_err e = easel_seterr(EASEL_EIO, "store: %s", msg ? msg : "exec failed");
        sqlite3_free(msg);
        return e;
    }
    return EASEL_OK;
}

static int sq_schema_version(store *st) {
    sqlite_store *s = S(st);
    sqlite3_stmt *q;
    int v = -1;
    if (sqlite3_prepare_v2(s->db, "PRAGMA user_version", -1, &q, NULL) != SQLITE_OK) return -1;
    if (sqlite3_step(q) == SQLITE_ROW) v = sqlite3_column_int(q, 0);
    sqlite3_finalize(q);
    return v;
}

static easel_err migrate(sqlite_store *s) {
    int v = sq_schema_version(&s->base);
    if (v < 0) return sqlerr(s, "reading schema version");
    if (v > STORE_SQLITE_SCHEMA_VERSION)
        return easel_seterr(EASEL_EFORMAT,
                            "store: schema version %d is newer than this easel knows (%d); "
                            "run the newer easel or start with another --data-dir",
                            v, STORE_SQLITE_SCHEMA_VERSION);
    if (v == STORE_SQLITE_SCHEMA_VERSION) return EASEL_OK;
    easel_err e = exec(s, "BEGIN IMMEDIATE");
    for (int i = v; !e && i < STORE_SQLITE_SCHEMA_VERSION; i++)
        e = exec(s, migrations[i]);
    if (!e) {
        char sql[64];
        snprintf(sql, sizeof sql, "PRAGMA user_version=%d", STORE_SQLITE_SCHEMA_VERSION);
        e = exec(s, sql);
    }
    if (e) {
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        return easel_wraperr(e, "migrating from version %d", v);
    }
    return exec(s, "COMMIT");
}

static easel_err prepare(sqlite_store *s) {
    struct {
        sqlite3_stmt **st;
        const char *sql;
    } q[] = {
        {&s->ins, "INSERT INTO jobs(id,status,params,created_ms,webhook_url,webhook_events,"
                  "init_image,mask_image) VALUES(?1,'pending',?2,?3,?4,?5,?6,?7)"},
        {&s->up_use, "SELECT 1 FROM jobs WHERE (init_image=?1 OR mask_image=?1) AND status IN "
                     "('pending','processing') LIMIT 1"},
        {&s->claim, "UPDATE jobs SET status='processing',attempts=attempts+1,started_ms=?1,"
                    "progress_ms=?1,lease_owner=?2,lease_expires_ms=?3,cancel_requested=0 "
                    "WHERE seq=(SELECT seq FROM jobs WHERE status='pending' ORDER BY seq LIMIT 1) "
                    "RETURNING " COLS},
        {&s->beat, "UPDATE jobs SET progress_ms=?1,lease_expires_ms=?2 WHERE id=?3 AND "
                   "status='processing' AND lease_owner=?4 RETURNING cancel_requested"},
        {&s->fin, "UPDATE jobs SET status=?1,started_ms=?2,finished_ms=?3,progress_ms=?4,"
                  "attempts=?5,error=?6,image=?7,timings=?8,lease_owner=NULL,"
                  "lease_expires_ms=0,cancel_requested=0 WHERE id=?9 AND status='processing' "
                  "AND lease_owner=?10"},
        {&s->fail, "UPDATE jobs SET status='failed',finished_ms=?1,error=?2,lease_owner=NULL,"
                   "lease_expires_ms=0 WHERE id=?3 AND status='processing'"},
        {&s->del, "DELETE FROM jobs WHERE id=?1"},
        {&s->cancel_pending, "UPDATE jobs SET status='canceled',finished_ms=?1,"
                             "error='canceled by request' WHERE id=?2 AND status='pending'"},
        {&s->cancel_running, "UPDATE jobs SET cancel_requested=1 WHERE id=?1 AND "
                             "status='processing'"},
        {&s->status_of, "SELECT status FROM jobs WHERE id=?1"},
        {&s->probe, "INSERT INTO store_meta(k,v) VALUES('probe',1) "
                    "ON CONFLICT(k) DO UPDATE SET v=v+1"},
        {&s->ob_add, "INSERT OR IGNORE INTO outbox(id,job_id,event,url,created_ms,next_ms) "
                     "SELECT 'msg_'||id||'_'||?1||'_'||?2, id, ?1, webhook_url, ?3, ?3 FROM jobs "
                     "WHERE id=?4 AND webhook_url IS NOT NULL"},
        {&s->ob_due, "UPDATE outbox SET lease_owner=?1, lease_until=?2 WHERE seq IN (SELECT seq "
                     "FROM outbox WHERE status='pending' AND next_ms<=?3 AND lease_until<=?3 "
                     "ORDER BY next_ms LIMIT ?4) RETURNING " OB_COLS},
        {&s->ob_done, "UPDATE outbox SET status=?1, attempts=?2, next_ms=?3, error=?4, done_ms=?5,"
                      " lease_owner=NULL, lease_until=0 WHERE id=?6"},
        {&s->ob_del, "DELETE FROM outbox WHERE job_id=?1 AND status!='pending'"},
    };
    for (size_t i = 0; i < sizeof q / sizeof q[0]; i++)
        if (sqlite3_prepare_v2(s->db, q[i].sql, -1, q[i].st, NULL) != SQLITE_OK)
            return sqlerr(s, "preparing statements");
    return EASEL_OK;
}

/* Steps a bound single-statement (autocommit = its own transaction) to the
 * end and resets it; *changes (may be NULL) gets the rows it changed. */
static easel_err run_stmt(sqlite_store *s, sqlite3_stmt *st, const char *what, int *changes) {
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    }
    easel_err e = rc == SQLITE_DONE ? EASEL_OK : sqlerr(s, what);
    if (changes) *changes = e ? 0 : sqlite3_changes(s->db);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return e;
}

static char *col_text(sqlite3_stmt *st, int i) {
    return (char *)sqlite3_column_text(st, i);
}

/* A row from the COLS columns of st; strings point into st (valid until it steps). */
static void read_row(sqlite3_stmt *st, store_row *r) {
    memset(r, 0, sizeof *r);
    r->seq = sqlite3_column_int64(st, 0);
    snprintf(r->id, sizeof r->id, "%s", col_text(st, 1) ? col_text(st, 1) : "");
    int status = job_status_parse(col_text(st, 2));
    r->status = status < 0 ? JOB_FAILED : (job_status)status;
    r->params = col_text(st, 3);
    r->created_ms = sqlite3_column_int64(st, 4);
    r->started_ms = sqlite3_column_int64(st, 5);
    r->finished_ms = sqlite3_column_int64(st, 6);
    r->progress_ms = sqlite3_column_int64(st, 7);
    r->attempts = sqlite3_column_int(st, 8);
    r->error = col_text(st, 9);
    r->image = col_text(st, 10);
    r->timings = col_text(st, 11);
    snprintf(r->lease_owner, sizeof r->lease_owner, "%s", col_text(st, 12) ? col_text(st, 12) : "");
    r->lease_expires_ms = sqlite3_column_int64(st, 13);
    r->cancel_requested = sqlite3_column_int(st, 14);
    r->webhook_url = col_text(st, 15);
    r->webhook_events = sqlite3_column_int(st, 16);
}

static char *dup_or_null(const char *s) {
    return s ? strdup(s) : NULL;
}

/* ---- the operations ---- */

static easel_err sq_insert(store *st, store_row *row) {
    sqlite_store *s = S(st);
    sqlite3_bind_text(s->ins, 1, row->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(s->ins, 2, row->params ? row->params : "{}", -1, SQLITE_STATIC);
    sqlite3_bind_int64(s->ins, 3, row->created_ms);
    if (row->webhook_url)
        sqlite3_bind_text(s->ins, 4, row->webhook_url, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(s->ins, 4);
    sqlite3_bind_int(s->ins, 5, row->webhook_events);
    if (row->init_image)
        sqlite3_bind_text(s->ins, 6, row->init_image, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(s->ins, 6);
    if (row->mask_image)
        sqlite3_bind_text(s->ins, 7, row->mask_image, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(s->ins, 7);
    easel_err e = run_stmt(s, s->ins, "inserting a job", NULL);
    if (!e) row->seq = sqlite3_last_insert_rowid(s->db), row->status = JOB_PENDING;
    return e;
}

static easel_err sq_claim(store *st, const char *owner, int64_t now_ms, int64_t lease_ms,
                          store_row *out, int *found) {
    sqlite_store *s = S(st);
    *found = 0;
    memset(out, 0, sizeof *out);
    sqlite3_bind_int64(s->claim, 1, now_ms);
    sqlite3_bind_text(s->claim, 2, owner, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s->claim, 3, now_ms + lease_ms);
    int rc = sqlite3_step(s->claim);
    easel_err e = EASEL_OK;
    if (rc == SQLITE_ROW) {
        store_row tmp;
        read_row(s->claim, &tmp);
        *out = tmp;
        out->params = dup_or_null(tmp.params);
        out->error = dup_or_null(tmp.error);
        out->image = dup_or_null(tmp.image);
        out->timings = dup_or_null(tmp.timings);
        out->webhook_url = dup_or_null(tmp.webhook_url);
        rc = sqlite3_step(s->claim); /* completes the statement (and its transaction) */
        if (rc != SQLITE_DONE || (tmp.params && !out->params)) {
            e = rc != SQLITE_DONE ? sqlerr(s, "claiming a job")
                                  : easel_seterr(EASEL_ENOMEM, "store: out of memory");
            store_row_clear(out);
        } else {
            *found = 1;
        }
    } else if (rc != SQLITE_DONE) {
        e = sqlerr(s, "claiming a job");
    }
    sqlite3_reset(s->claim);
    sqlite3_clear_bindings(s->claim);
    return e;
}

static easel_err sq_heartbeat(store *st, const char *id, const char *owner, int64_t now_ms,
                              int64_t lease_ms, int *cancel_requested) {
    sqlite_store *s = S(st);
    sqlite3_bind_int64(s->beat, 1, now_ms);
    sqlite3_bind_int64(s->beat, 2, now_ms + lease_ms);
    sqlite3_bind_text(s->beat, 3, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(s->beat, 4, owner, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s->beat), held = rc == SQLITE_ROW, flag = 0;
    if (held) {
        flag = sqlite3_column_int(s->beat, 0);
        rc = sqlite3_step(s->beat);
    }
    easel_err e = rc == SQLITE_DONE ? EASEL_OK : sqlerr(s, "recording progress");
    sqlite3_reset(s->beat);
    sqlite3_clear_bindings(s->beat);
    if (e) return e;
    if (cancel_requested) *cancel_requested = flag;
    return held ? EASEL_OK
                : easel_seterr(EASEL_ENOTFOUND, "store: job %s is not held by %s", id, owner);
}

static void bind_text_or_null(sqlite3_stmt *st, int i, const char *v) {
    if (v)
        sqlite3_bind_text(st, i, v, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, i);
}

static easel_err sq_finish(store *st, const store_row *row, const char *owner) {
    sqlite_store *s = S(st);
    sqlite3_stmt *q = s->fin;
    sqlite3_bind_text(q, 1, job_status_name(row->status), -1, SQLITE_STATIC);
    sqlite3_bind_int64(q, 2, row->started_ms);
    sqlite3_bind_int64(q, 3, row->finished_ms);
    sqlite3_bind_int64(q, 4, row->progress_ms);
    sqlite3_bind_int(q, 5, row->attempts);
    bind_text_or_null(q, 6, row->error);
    bind_text_or_null(q, 7, row->image);
    bind_text_or_null(q, 8, row->timings);
    sqlite3_bind_text(q, 9, row->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 10, owner, -1, SQLITE_STATIC);
    int n = 0;
    easel_err e = run_stmt(s, q, "finishing a job", &n);
    if (!e && !n)
        return easel_seterr(EASEL_ENOTFOUND, "store: job %s is not held by %s", row->id, owner);
    return e;
}

static easel_err status_of(sqlite_store *s, const char *id, int *status) {
    sqlite3_bind_text(s->status_of, 1, id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s->status_of);
    *status = rc == SQLITE_ROW ? job_status_parse(col_text(s->status_of, 0)) : -1;
    if (rc == SQLITE_ROW) rc = sqlite3_step(s->status_of);
    easel_err e = rc == SQLITE_DONE ? EASEL_OK : sqlerr(s, "reading a job");
    sqlite3_reset(s->status_of);
    sqlite3_clear_bindings(s->status_of);
    return e;
}

static easel_err sq_cancel(store *st, const char *id, int64_t now_ms, job_status *after) {
    sqlite_store *s = S(st);
    int n = 0, status;
    easel_err e = exec(s, "BEGIN IMMEDIATE");
    if (!e) e = status_of(s, id, &status);
    if (!e && status == JOB_PENDING) {
        sqlite3_bind_int64(s->cancel_pending, 1, now_ms);
        sqlite3_bind_text(s->cancel_pending, 2, id, -1, SQLITE_STATIC);
        e = run_stmt(s, s->cancel_pending, "canceling a job", &n);
        *after = JOB_CANCELED;
    } else if (!e && status == JOB_PROCESSING) {
        sqlite3_bind_text(s->cancel_running, 1, id, -1, SQLITE_STATIC);
        e = run_stmt(s, s->cancel_running, "canceling a job", &n);
        *after = JOB_PROCESSING;
    }
    if (!e) e = exec(s, "COMMIT");
    if (e) {
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        return e;
    }
    if (status < 0) return easel_seterr(EASEL_ENOTFOUND, "no job %s", id);
    if (status != JOB_PENDING && status != JOB_PROCESSING) {
        *after = (job_status)status;
        return easel_seterr(EASEL_EINVAL, "job %s has already %s", id,
                            job_status_name((job_status)status));
    }
    return EASEL_OK;
}

static easel_err sq_fail(store *st, const char *id, int64_t now_ms, const char *error) {
    sqlite_store *s = S(st);
    sqlite3_bind_int64(s->fail, 1, now_ms);
    bind_text_or_null(s->fail, 2, error);
    sqlite3_bind_text(s->fail, 3, id, -1, SQLITE_STATIC);
    int n = 0;
    easel_err e = run_stmt(s, s->fail, "failing a job", &n);
    if (!e && !n) return easel_seterr(EASEL_ENOTFOUND, "store: job %s is not processing", id);
    return e;
}

static easel_err sq_remove(store *st, const char *id) {
    sqlite_store *s = S(st);
    sqlite3_bind_text(s->del, 1, id, -1, SQLITE_STATIC);
    easel_err e = run_stmt(s, s->del, "deleting a job", NULL);
    if (e) return e;
    sqlite3_bind_text(s->ob_del, 1, id, -1, SQLITE_STATIC); /* finished deliveries go with it */
    return run_stmt(s, s->ob_del, "deleting a job's deliveries", NULL);
}

/* ---- the webhook outbox ---- */

static easel_err sq_outbox_add(store *st, const char *job_id, const char *event, int seq,
                               int64_t now_ms) {
    sqlite_store *s = S(st);
    sqlite3_bind_text(s->ob_add, 1, event, -1, SQLITE_STATIC);
    sqlite3_bind_int(s->ob_add, 2, seq);
    sqlite3_bind_int64(s->ob_add, 3, now_ms);
    sqlite3_bind_text(s->ob_add, 4, job_id, -1, SQLITE_STATIC);
    return run_stmt(s, s->ob_add, "queueing a webhook", NULL);
}

static void read_outbox(sqlite3_stmt *q, outbox_row *r) {
    memset(r, 0, sizeof *r);
    snprintf(r->id, sizeof r->id, "%s", col_text(q, 0) ? col_text(q, 0) : "");
    snprintf(r->job_id, sizeof r->job_id, "%s", col_text(q, 1) ? col_text(q, 1) : "");
    snprintf(r->event, sizeof r->event, "%s", col_text(q, 2) ? col_text(q, 2) : "");
    snprintf(r->url, sizeof r->url, "%s", col_text(q, 3) ? col_text(q, 3) : "");
    r->created_ms = sqlite3_column_int64(q, 4);
    r->next_ms = sqlite3_column_int64(q, 5);
    r->attempts = sqlite3_column_int(q, 6);
    const char *st = col_text(q, 7);
    r->status = st && !strcmp(st, "delivered") ? OUTBOX_DELIVERED
                : st && !strcmp(st, "failed")  ? OUTBOX_FAILED
                                               : OUTBOX_PENDING;
    snprintf(r->error, sizeof r->error, "%s", col_text(q, 8) ? col_text(q, 8) : "");
    r->done_ms = sqlite3_column_int64(q, 9);
}

static easel_err sq_outbox_due(store *st, const char *owner, int64_t now_ms, int64_t lease_ms,
                               outbox_row *out, int max, int *n) {
    sqlite_store *s = S(st);
    *n = 0;
    sqlite3_bind_text(s->ob_due, 1, owner, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s->ob_due, 2, now_ms + lease_ms);
    sqlite3_bind_int64(s->ob_due, 3, now_ms);
    sqlite3_bind_int(s->ob_due, 4, max);
    int rc;
    while ((rc = sqlite3_step(s->ob_due)) == SQLITE_ROW)
        if (*n < max) read_outbox(s->ob_due, &out[(*n)++]);
    easel_err e = rc == SQLITE_DONE ? EASEL_OK : sqlerr(s, "claiming webhooks");
    sqlite3_reset(s->ob_due);
    sqlite3_clear_bindings(s->ob_due);
    if (e) *n = 0;
    return e;
}

static const char *outbox_status_name(outbox_status st) {
    return st == OUTBOX_DELIVERED ? "delivered" : st == OUTBOX_FAILED ? "failed" : "pending";
}

static easel_err sq_outbox_done(store *st, const outbox_row *r) {
    sqlite_store *s = S(st);
    sqlite3_stmt *q = s->ob_done;
    sqlite3_bind_text(q, 1, outbox_status_name(r->status), -1, SQLITE_STATIC);
    sqlite3_bind_int(q, 2, r->attempts);
    sqlite3_bind_int64(q, 3, r->next_ms);
    bind_text_or_null(q, 4, r->error[0] ? r->error : NULL);
    sqlite3_bind_int64(q, 5, r->done_ms);
    sqlite3_bind_text(q, 6, r->id, -1, SQLITE_STATIC);
    return run_stmt(s, q, "recording a webhook", NULL);
}

static easel_err sq_outbox_each(store *st, int (*fn)(void *, const outbox_row *), void *user) {
    sqlite_store *s = S(st);
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(s->db, "SELECT " OB_COLS " FROM outbox ORDER BY seq", -1, &q, NULL) !=
        SQLITE_OK)
        return sqlerr(s, "listing webhooks");
    int rc;
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        outbox_row r;
        read_outbox(q, &r);
        if (fn(user, &r)) break;
    }
    easel_err e =
        (rc == SQLITE_ROW || rc == SQLITE_DONE) ? EASEL_OK : sqlerr(s, "listing webhooks");
    sqlite3_finalize(q);
    return e;
}

static int changes_of(sqlite_store *s, const char *sql, easel_err *e) {
    if (*e) return 0;
    *e = exec(s, sql);
    return *e ? 0 : sqlite3_changes(s->db);
}

static easel_err sq_recover(store *st, int max_attempts, int64_t now_ms, int *requeued,
                            int *failed) {
    sqlite_store *s = S(st);
    char fail_sql[400], requeue_sql[200];
    snprintf(fail_sql, sizeof fail_sql,
             "UPDATE jobs SET status='failed', finished_ms=%lld, lease_owner=NULL, "
             "lease_expires_ms=0, error='interrupted %d times (the server stopped while it was "
             "processing); not retried again' WHERE status='processing' AND attempts>=%d",
             (long long)now_ms, max_attempts, max_attempts);
    snprintf(requeue_sql, sizeof requeue_sql,
             "UPDATE jobs SET status='pending', started_ms=0, progress_ms=0, lease_owner=NULL, "
             "lease_expires_ms=0, cancel_requested=0 WHERE status='processing'");
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

static easel_err sq_each(store *st, store_row_fn fn, void *user) {
    sqlite_store *s = S(st);
    const char *sql = "SELECT " COLS " FROM jobs ORDER BY seq";
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(s->db, sql, -1, &q, NULL) != SQLITE_OK) return sqlerr(s, "listing jobs");
    int rc;
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        store_row r;
        read_row(q, &r);
        if (fn(user, &r)) break;
    }
    easel_err e = (rc == SQLITE_ROW || rc == SQLITE_DONE) ? EASEL_OK : sqlerr(s, "listing jobs");
    sqlite3_finalize(q);
    return e;
}

static easel_err sq_probe(store *st) {
    sqlite_store *s = S(st);
    return run_stmt(s, s->probe, "probing", NULL);
}

static easel_err sq_checkpoint(store *st) {
    sqlite_store *s = S(st);
    /* PASSIVE: copies what it can without waiting for or blocking the writer. */
    int rc = sqlite3_wal_checkpoint_v2(s->ckpt, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    if (rc != SQLITE_OK && rc != SQLITE_BUSY)
        return easel_seterr(EASEL_EIO, "store: checkpoint: %s", sqlite3_errmsg(s->ckpt));
    return EASEL_OK;
}

static easel_err sq_upload_in_use(store *st, const char *id, int *in_use) {
    sqlite_store *s = S(st);
    *in_use = 0;
    sqlite3_bind_text(s->up_use, 1, id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s->up_use);
    if (rc == SQLITE_ROW) *in_use = 1;
    easel_err e = rc == SQLITE_ROW || rc == SQLITE_DONE ? EASEL_OK : sqlerr(s, "upload in use");
    sqlite3_reset(s->up_use);
    sqlite3_clear_bindings(s->up_use);
    return e;
}

static void sq_close(store *st) {
    sqlite_store *s = S(st);
    /* every prepared statement: one left unfinalized keeps the connection open (and leaks) */
    sqlite3_stmt *all[] = {s->ins,       s->claim,  s->beat,           s->fin,
                           s->fail,      s->del,    s->cancel_pending, s->cancel_running,
                           s->status_of, s->probe,  s->ob_add,         s->ob_due,
                           s->ob_done,   s->ob_del, s->up_use};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        sqlite3_finalize(all[i]);
    if (s->ckpt) sqlite3_close(s->ckpt);
    if (s->db) {
        sqlite3_exec(s->db, "PRAGMA wal_checkpoint(TRUNCATE)", NULL, NULL, NULL);
        if (sqlite3_close(s->db) != SQLITE_OK)
            log_warn("store: closing: %s", sqlite3_errmsg(s->db));
    }
    free(s);
}

static const store_ops sqlite_ops = {
    .kind = "sqlite",
    .close = sq_close,
    .insert = sq_insert,
    .claim = sq_claim,
    .heartbeat = sq_heartbeat,
    .finish = sq_finish,
    .cancel = sq_cancel,
    .fail = sq_fail,
    .remove = sq_remove,
    .each = sq_each,
    .recover = sq_recover,
    .probe = sq_probe,
    .checkpoint = sq_checkpoint,
    .schema_version = sq_schema_version,
    .outbox_add = sq_outbox_add,
    .outbox_due = sq_outbox_due,
    .outbox_done = sq_outbox_done,
    .outbox_each = sq_outbox_each,
    .upload_in_use = sq_upload_in_use,
};

easel_err store_sqlite_open(const char *path, int sync_full, store **out) {
    *out = NULL;
    sqlite_store *s = calloc(1, sizeof *s);
    if (!s) return easel_seterr(EASEL_ENOMEM, "store: out of memory");
    s->base.ops = &sqlite_ops;
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
    if (!e) e = exec(s, "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;");
    if (!e) e = exec(s, sync_full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL");
    if (!e && sqlite3_open_v2(path, &s->ckpt, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
                  SQLITE_OK)
        e = easel_seterr(EASEL_EIO, "store: cannot open %s for checkpoints: %s", path,
                         s->ckpt ? sqlite3_errmsg(s->ckpt) : "out of memory");
    if (!e) sqlite3_busy_timeout(s->ckpt, 5000);
    if (!e) e = migrate(s);
    if (!e) e = prepare(s);
    if (e) {
        sq_close(&s->base);
        return e;
    }
    *out = &s->base;
    return EASEL_OK;
}
