/* PostgreSQL job store (see store.h): several render nodes on one queue, as
 * River, Oban, good_job and pg-boss do it. Claims take the oldest pending
 * job for the node's model with FOR UPDATE SKIP LOCKED and set a lease
 * (owner, expiry, attempts + 1); progress writes extend it; a rescuer on
 * every node returns expired leases to pending (failed at the attempt cap).
 * Every change to a job row NOTIFYs its id on channel easel_jobs (a
 * trigger), so every node's cache follows every job; updated_ms (the
 * database's clock) lets a slow poll catch what a lost connection missed.
 * Images may live in easel_images (bytea, stored uncompressed so a range
 * is read without the rest), written in the transaction that completes the
 * job and deleted with it (ON DELETE CASCADE). The webhook outbox gets its
 * start/completed rows from a trigger in the state change's transaction,
 * as SQLite's does, and deliveries are claimed with SKIP LOCKED.
 *
 * Connections: main (the store's user, under jobs.c's lock), side (one
 * other thread: LISTEN and progress writes, committed without waiting for
 * the disk), img (image reads from any thread, under img_mu; opened on first
 * use). Each reconnects on the call after it broke, then backs off 0.25 s
 * doubling to 5 s, failing fast (EASEL_EIO) in between. Statements are
 * prepared on every (re)connect. Durability of an accepted job is the
 * server's synchronous_commit (on by default: it survives a crash of the
 * database). */
#include "store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef EASEL_HAVE_PG

easel_err store_pg_open(const store_pg_config *c, int connect_wait_ms, store **out) {
    (void)c, (void)connect_wait_ms;
    *out = NULL;
    return easel_seterr(EASEL_EUNSUPPORTED,
                        "this easel was built without PostgreSQL (install libpq-dev and rebuild)");
}

#else

#include <arpa/inet.h>
#include <libpq-fe.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#include "../engine/log.h"

/* Advisory locks: (1701999468 = 'easl', 1) for migrations, (1701999469,
 * hashtext(node id)) for each live node. */
#define BACKOFF_MIN_MS 250
#define BACKOFF_MAX_MS 5000

#define COLS                                                                                       \
    "seq,id,status,params,created_ms,started_ms,finished_ms,progress_ms,attempts,error,image,"     \
    "timings,lease_owner,lease_expires_ms,cancel_requested,webhook_url,webhook_events,model,"      \
    "step,stage,step_ms"
#define OB_COLS "id,job_id,event,url,created_ms,next_ms,attempts,status,error,done_ms"
#define DB_NOW_MS "(extract(epoch from clock_timestamp())*1000)::bigint"

/* Migration i brings the schema from version i to i+1. Append only. */
static const char *migrations[STORE_PG_SCHEMA_VERSION] = {
    "CREATE TABLE easel_meta (k text PRIMARY KEY, v bigint NOT NULL DEFAULT 0, t text);"
    "INSERT INTO easel_meta(k) VALUES ('probe'),('lease_expiries'),('rescues');"
    "CREATE TABLE easel_jobs ("
    " seq bigserial PRIMARY KEY,"
    " id text NOT NULL UNIQUE,"
    " model text NOT NULL DEFAULT '',"
    " status text NOT NULL,"
    " params text NOT NULL,"
    " created_ms bigint NOT NULL,"
    " started_ms bigint NOT NULL DEFAULT 0,"
    " finished_ms bigint NOT NULL DEFAULT 0,"
    " progress_ms bigint NOT NULL DEFAULT 0,"
    " updated_ms bigint NOT NULL DEFAULT 0,"
    " attempts int NOT NULL DEFAULT 0,"
    " error text, image text, timings text,"
    " lease_owner text,"
    " lease_expires_ms bigint NOT NULL DEFAULT 0,"
    " cancel_requested int NOT NULL DEFAULT 0,"
    " step int NOT NULL DEFAULT 0,"
    " stage int NOT NULL DEFAULT 0,"
    " step_ms double precision NOT NULL DEFAULT 0,"
    " webhook_url text,"
    " webhook_events int NOT NULL DEFAULT 0);"
    "CREATE INDEX easel_jobs_pending ON easel_jobs(model, seq) WHERE status='pending';"
    "CREATE INDEX easel_jobs_leases ON easel_jobs(lease_expires_ms) WHERE status='processing';"
    "CREATE INDEX easel_jobs_updated ON easel_jobs(updated_ms);"
    "CREATE TABLE easel_images (name text PRIMARY KEY,"
    " job_id text NOT NULL REFERENCES easel_jobs(id) ON DELETE CASCADE, data bytea NOT NULL);"
    "ALTER TABLE easel_images ALTER COLUMN data SET STORAGE EXTERNAL;"
    "CREATE INDEX easel_images_job ON easel_images(job_id);"
    "CREATE TABLE easel_outbox (seq bigserial PRIMARY KEY, id text NOT NULL UNIQUE,"
    " job_id text NOT NULL, event text NOT NULL, url text NOT NULL, created_ms bigint NOT NULL,"
    " next_ms bigint NOT NULL, attempts int NOT NULL DEFAULT 0,"
    " status text NOT NULL DEFAULT 'pending', error text, done_ms bigint NOT NULL DEFAULT 0,"
    " lease_owner text, lease_until bigint NOT NULL DEFAULT 0);"
    "CREATE INDEX easel_outbox_due ON easel_outbox(next_ms) WHERE status='pending';"
    "CREATE INDEX easel_outbox_job ON easel_outbox(job_id);"
    "CREATE TABLE easel_nodes (node text PRIMARY KEY, model text NOT NULL DEFAULT '',"
    " workers int NOT NULL DEFAULT 0, started_ms bigint NOT NULL, seen_ms bigint NOT NULL);"
    /* every change is stamped with the database's clock (the slow poll's cursor) */
    "CREATE FUNCTION easel_jobs_touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    " NEW.updated_ms := " DB_NOW_MS "; RETURN NEW; END $$;"
    "CREATE TRIGGER easel_jobs_touch BEFORE INSERT OR UPDATE ON easel_jobs"
    " FOR EACH ROW EXECUTE FUNCTION easel_jobs_touch();"
    /* ... and told to every node (delivered at commit, in commit order) */
    "CREATE FUNCTION easel_jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    " IF TG_OP = 'DELETE' THEN PERFORM pg_notify('easel_jobs', 'j' || OLD.id);"
    " ELSE PERFORM pg_notify('easel_jobs', 'j' || NEW.id); END IF; RETURN NULL; END $$;"
    "CREATE TRIGGER easel_jobs_notify AFTER INSERT OR UPDATE OR DELETE ON easel_jobs"
    " FOR EACH ROW EXECUTE FUNCTION easel_jobs_notify();"
    "CREATE FUNCTION easel_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    " PERFORM pg_notify('easel_jobs', 'o' || NEW.job_id); RETURN NULL; END $$;"
    "CREATE TRIGGER easel_outbox_notify AFTER INSERT OR UPDATE ON easel_outbox"
    " FOR EACH ROW EXECUTE FUNCTION easel_outbox_notify();"
    /* webhook events in the state change's transaction (SQLite's triggers, the same rows) */
    "CREATE FUNCTION easel_jobs_event() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    " IF NEW.webhook_url IS NULL THEN RETURN NULL; END IF;"
    " IF OLD.status = 'pending' AND NEW.status = 'processing' AND (NEW.webhook_events & 1) <> 0"
    " THEN INSERT INTO easel_outbox(id,job_id,event,url,created_ms,next_ms)"
    " VALUES('msg_'||NEW.id||'_start_'||NEW.attempts, NEW.id, 'start', NEW.webhook_url,"
    " NEW.started_ms, NEW.started_ms) ON CONFLICT (id) DO NOTHING;"
    " ELSIF OLD.status IN ('pending','processing')"
    " AND NEW.status IN ('completed','failed','canceled') AND (NEW.webhook_events & 4) <> 0"
    " THEN INSERT INTO easel_outbox(id,job_id,event,url,created_ms,next_ms)"
    " VALUES('msg_'||NEW.id||'_completed', NEW.id, 'completed', NEW.webhook_url,"
    " NEW.finished_ms, NEW.finished_ms) ON CONFLICT (id) DO NOTHING;"
    " END IF; RETURN NULL; END $$;"
    "CREATE TRIGGER easel_jobs_event AFTER UPDATE OF status ON easel_jobs FOR EACH ROW"
    " WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION easel_jobs_event();",
    /* 2: img2img / inpainting: the uploads a job reads (the upload sweep keeps those in use) */
    "ALTER TABLE easel_jobs ADD COLUMN init_image text, ADD COLUMN mask_image text;"
    "CREATE INDEX easel_jobs_init_image ON easel_jobs(init_image) WHERE init_image IS NOT NULL;"
    "CREATE INDEX easel_jobs_mask_image ON easel_jobs(mask_image) WHERE mask_image IS NOT NULL;",
    /* 3: uploads as rows, so a job another node claims finds its init image and mask */
    "CREATE TABLE easel_uploads (id text PRIMARY KEY, record text NOT NULL,"
    " data bytea NOT NULL, created_ms bigint NOT NULL);"
    "ALTER TABLE easel_uploads ALTER COLUMN data SET STORAGE EXTERNAL;"
    "CREATE INDEX easel_uploads_created ON easel_uploads(created_ms);",
};

/* ---- prepared statements ---- */

enum {
    Q_INS,
    Q_CLAIM,
    Q_BEAT,
    Q_FIN,
    Q_FAIL,
    Q_DEL,
    Q_CANCEL,
    Q_EACH,
    Q_GET,
    Q_CHANGED,
    Q_RECOVER,
    Q_RESCUE,
    Q_PROBE,
    Q_CLOCK,
    Q_OB_ADD,
    Q_OB_DUE,
    Q_OB_DONE,
    Q_OB_EACH,
    Q_OB_OF,
    Q_UP_USE,
    Q_STATS,
    Q_NODES,
    Q_NODE_BEAT,
    Q_SECRET,
    Q_MAIN_COUNT,
    Q_PROGRESS = Q_MAIN_COUNT, /* side connection */
    Q_IMAGE,                   /* img connection (and the uploads after it) */
    Q_UPL_PUT,
    Q_UPL_GET,
    Q_UPL_DEL,
    Q_UPL_SWEEP,
    Q_COUNT
};

/* The rows a recovery or a rescue takes: $1 now, $2 max attempts; the
 * CTE x picks them, f fails those at the cap, r requeues the rest. */
#define REQUEUE_OR_FAIL(why)                                                                       \
    "f AS (UPDATE easel_jobs j SET status='failed', finished_ms=$1, lease_owner=NULL,"             \
    " lease_expires_ms=0, error=format('interrupted %s times (" why "); not retried again',"       \
    " j.attempts) FROM x WHERE j.seq=x.seq AND x.attempts >= $2 RETURNING j.id, x.owner),"         \
    "r AS (UPDATE easel_jobs j SET status='pending', started_ms=0, progress_ms=0,"                 \
    " lease_owner=NULL, lease_expires_ms=0, cancel_requested=0, step=0, stage=0, step_ms=0"        \
    " FROM x WHERE j.seq=x.seq AND x.attempts < $2 RETURNING j.id, x.owner)"

static const struct {
    const char *name, *sql;
} queries[Q_COUNT] = {
    [Q_INS] = {"ins", "INSERT INTO easel_jobs(id,status,params,created_ms,webhook_url,"
                      "webhook_events,model,init_image,mask_image)"
                      " VALUES($1,'pending',$2,$3,$4,$5,$6,$7,$8) RETURNING seq"},
    [Q_CLAIM] = {"claim",
                 "UPDATE easel_jobs SET status='processing', attempts=attempts+1, started_ms=$1,"
                 " progress_ms=$1, lease_owner=$2, lease_expires_ms=$3, cancel_requested=0,"
                 " step=0, stage=1, step_ms=0 WHERE seq=(SELECT seq FROM easel_jobs WHERE"
                 " status='pending' AND model=$4 ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED)"
                 " RETURNING " COLS},
    [Q_BEAT] = {"beat", "UPDATE easel_jobs SET progress_ms=$1, lease_expires_ms=$2 WHERE id=$3"
                        " AND status='processing' AND lease_owner=$4 RETURNING cancel_requested"},
    [Q_FIN] = {"fin",
               "WITH u AS (UPDATE easel_jobs SET status=$1, started_ms=$2, finished_ms=$3,"
               " progress_ms=$4, attempts=$5, error=$6, image=$7, timings=$8, lease_owner=NULL,"
               " lease_expires_ms=0, cancel_requested=0,"
               " step=CASE WHEN $1='pending' THEN 0 ELSE step END, stage=0"
               " WHERE id=$9 AND status='processing' AND lease_owner=$10 RETURNING id),"
               " i AS (INSERT INTO easel_images(name,job_id,data) SELECT $7, id, $11 FROM u"
               " WHERE $11::bytea IS NOT NULL AND $7 IS NOT NULL ON CONFLICT (name) DO UPDATE"
               " SET job_id=excluded.job_id, data=excluded.data RETURNING 1)"
               " SELECT (SELECT count(*) FROM u), (SELECT count(*) FROM i)"},
    [Q_FAIL] = {"fail",
                "UPDATE easel_jobs SET status='failed', finished_ms=$1, error=$2,"
                " lease_owner=NULL, lease_expires_ms=0 WHERE id=$3 AND status='processing'"},
    [Q_DEL] = {"del", "WITH d AS (DELETE FROM easel_jobs WHERE id=$1 RETURNING id)"
                      " DELETE FROM easel_outbox WHERE job_id=$1 AND status<>'pending'"},
    /* the row is locked first, so the two updates see the status they act on */
    [Q_CANCEL] = {"cancel",
                  "WITH cur AS (SELECT seq, status FROM easel_jobs WHERE id=$1 FOR UPDATE),"
                  " p AS (UPDATE easel_jobs j SET status='canceled', finished_ms=$2,"
                  " error='canceled by request' FROM cur WHERE j.seq=cur.seq AND"
                  " cur.status='pending' RETURNING 1),"
                  " r AS (UPDATE easel_jobs j SET cancel_requested=1 FROM cur WHERE"
                  " j.seq=cur.seq AND cur.status='processing' RETURNING 1)"
                  " SELECT status FROM cur"},
    [Q_EACH] = {"each", "SELECT " COLS " FROM easel_jobs ORDER BY seq"},
    [Q_GET] = {"get", "SELECT " COLS " FROM easel_jobs WHERE id = ANY($1::text[]) ORDER BY seq"},
    [Q_CHANGED] = {"changed",
                   "SELECT " COLS " FROM easel_jobs WHERE updated_ms >= $1 ORDER BY seq"},
    /* start-up: this node's own earlier leases ($3 its owner prefix; '' = all) and expired ones */
    [Q_RECOVER] = {"recover",
                   "WITH x AS (SELECT seq, attempts, lease_owner AS owner FROM easel_jobs WHERE"
                   " status='processing' AND (starts_with(coalesce(lease_owner,''), $3) OR"
                   " lease_expires_ms < $1) FOR UPDATE), " REQUEUE_OR_FAIL(
                       "the server stopped while it was processing") " SELECT 'r', id, owner "
                                                                     "FROM r UNION ALL SELECT "
                                                                     "'f', id, owner FROM f"},
    /* every node: leases that expired, held by other nodes ($3 this node's prefix, NULL: none) */
    [Q_RESCUE] = {"rescue",
                  "WITH x AS (SELECT seq, attempts, lease_owner AS owner FROM easel_jobs WHERE"
                  " status='processing' AND lease_expires_ms < $1 AND ($3::text IS NULL OR NOT"
                  " starts_with(coalesce(lease_owner,''), $3)) ORDER BY seq FOR UPDATE SKIP"
                  " LOCKED), " REQUEUE_OR_FAIL(
                      "its node stopped or lost the database while processing "
                      "it") ","
                            " m1 AS (UPDATE easel_meta SET v=v+(SELECT count(*) "
                            "FROM x) WHERE"
                            " k='lease_expiries' AND EXISTS (SELECT 1 FROM x) "
                            "RETURNING 1),"
                            " m2 AS (UPDATE easel_meta SET v=v+(SELECT count(*) "
                            "FROM r) WHERE"
                            " k='rescues' AND EXISTS (SELECT 1 FROM r) "
                            "RETURNING 1)"
                            " SELECT 'r', id, owner FROM r UNION ALL SELECT "
                            "'f', id, owner FROM f"},
    [Q_PROBE] = {"probe", "UPDATE easel_meta SET v=v+1 WHERE k='probe'"},
    [Q_CLOCK] = {"clock", "SELECT " DB_NOW_MS},
    [Q_OB_ADD] =
        {"ob_add",
         "INSERT INTO easel_outbox(id,job_id,event,url,created_ms,next_ms)"
         " SELECT 'msg_'||id||'_'||$1||'_'||$2, id, $1, webhook_url, $3, $3 FROM"
         " easel_jobs WHERE id=$4 AND webhook_url IS NOT NULL ON CONFLICT (id) DO NOTHING"},
    [Q_OB_DUE] = {"ob_due", "UPDATE easel_outbox SET lease_owner=$1, lease_until=$2 WHERE seq IN"
                            " (SELECT seq FROM easel_outbox WHERE status='pending' AND next_ms<=$3"
                            " AND lease_until<=$3 ORDER BY next_ms LIMIT $4 FOR UPDATE SKIP LOCKED)"
                            " RETURNING " OB_COLS},
    [Q_OB_DONE] = {"ob_done", "UPDATE easel_outbox SET status=$1, attempts=$2, next_ms=$3,"
                              " error=$4, done_ms=$5, lease_owner=NULL, lease_until=0 WHERE id=$6"},
    [Q_OB_EACH] = {"ob_each", "SELECT " OB_COLS " FROM easel_outbox ORDER BY seq"},
    [Q_OB_OF] = {"ob_of", "SELECT " OB_COLS " FROM easel_outbox WHERE job_id=$1 ORDER BY seq"},
    [Q_UP_USE] = {"up_use", "SELECT 1 FROM easel_jobs WHERE (init_image=$1 OR mask_image=$1) AND"
                            " status IN ('pending','processing') LIMIT 1"},
    [Q_STATS] = {"stats", "SELECT count(*) FILTER (WHERE status='pending'),"
                          " count(*) FILTER (WHERE status='processing'),"
                          " (SELECT v FROM easel_meta WHERE k='lease_expiries'),"
                          " (SELECT v FROM easel_meta WHERE k='rescues')"
                          " FROM easel_jobs WHERE status IN ('pending','processing')"},
    [Q_NODES] = {"nodes",
                 "SELECT coalesce(n.node, r.node), coalesce(n.workers, 0), coalesce(n.seen_ms, 0),"
                 " coalesce(r.c, 0) FROM (SELECT node, workers, seen_ms FROM easel_nodes WHERE"
                 " seen_ms >= $1) n FULL JOIN (SELECT split_part(lease_owner, '/', 1) AS node,"
                 " count(*) AS c FROM easel_jobs WHERE status='processing' GROUP BY 1) r"
                 " ON n.node = r.node ORDER BY 1 LIMIT 64"},
    [Q_NODE_BEAT] = {"node_beat",
                     "WITH d AS (DELETE FROM easel_nodes WHERE seen_ms < $2::bigint - 86400000"
                     " AND node <> $1) INSERT INTO easel_nodes(node,model,workers,started_ms,"
                     "seen_ms) VALUES($1,$3,$4,$2,$2) ON CONFLICT (node) DO UPDATE SET"
                     " seen_ms=excluded.seen_ms, workers=excluded.workers, model=excluded.model"},
    [Q_SECRET] = {"secret", "WITH i AS (INSERT INTO easel_meta(k,t) VALUES($1,$2) ON CONFLICT (k)"
                            " DO NOTHING RETURNING t) SELECT t FROM i UNION ALL"
                            " SELECT t FROM easel_meta WHERE k=$1"},
    [Q_PROGRESS] = {"progress", "UPDATE easel_jobs SET progress_ms=$1, lease_expires_ms=$2,"
                                " step=$3, stage=$4, step_ms=$5 WHERE id=$6 AND status='processing'"
                                " AND lease_owner=$7 RETURNING cancel_requested"},
    [Q_IMAGE] = {"image", "SELECT length(data), substring(data FROM $2::int + 1 FOR $3::int)"
                          " FROM easel_images WHERE name=$1"},
    [Q_UPL_PUT] = {"upl_put", "INSERT INTO easel_uploads(id,record,data,created_ms)"
                              " VALUES($1,$2,$3,$4) ON CONFLICT (id) DO NOTHING"},
    [Q_UPL_GET] = {"upl_get", "SELECT record, data FROM easel_uploads WHERE id=$1"},
    [Q_UPL_DEL] = {"upl_del", "DELETE FROM easel_uploads WHERE id=$1"},
    [Q_UPL_SWEEP] = {"upl_sweep",
                     "DELETE FROM easel_uploads u WHERE created_ms < $1 AND NOT EXISTS (SELECT 1"
                     " FROM easel_jobs j WHERE (j.init_image=u.id OR j.mask_image=u.id) AND"
                     " j.status IN ('pending','processing'))"},
};

typedef enum { CONN_MAIN, CONN_SIDE, CONN_IMG } conn_role;

typedef struct {
    PGconn *c;
    conn_role role;
    int64_t next_try_ms; /* monotonic: no reconnect before this */
    int backoff_ms;
    int down;   /* a connect failed or the connection broke: reconnect after next_try_ms */
    int was_up; /* it worked once (reconnects are logged, with a shorter connect timeout) */
} pgconn;

typedef struct {
    store base;                        /* first: a store * is a pg_store * */
    char *url, *node, *model, *prefix; /* prefix: "<node>/" ("" when node is "") */
    int images;
    pgconn main, side, img;
    pthread_mutex_t img_mu;
    int node_locked;
    _Atomic int main_pid; /* the main connection's backend (its NOTIFYs are our own writes) */
} pg_store;

static pg_store *P(store *s) {
    return (pg_store *)s;
}

static int64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void notice(void *arg, const char *msg) {
    (void)arg;
    log_debug("store: postgres: %.*s", (int)strcspn(msg, "\n"), msg);
}

/* The first line of libpq's message for c. */
static const char *pqmsg(PGconn *c, char *buf, size_t n) {
    const char *m = c ? PQerrorMessage(c) : "out of memory";
    snprintf(buf, n, "%.*s", (int)strcspn(m, "\n"), m);
    return buf;
}

/* ---- connections ---- */

static easel_err exec_simple(PGconn *c, const char *sql, const char *what) {
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    easel_err e = EASEL_OK;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        char m[300];
        e = easel_seterr(EASEL_EIO, "store: %s: %s", what, pqmsg(c, m, sizeof m));
    }
    PQclear(r);
    return e;
}

static easel_err prepare_range(PGconn *c, int from, int to) {
    for (int i = from; i < to; i++) {
        PGresult *r = PQprepare(c, queries[i].name, queries[i].sql, 0, NULL);
        int ok = r && PQresultStatus(r) == PGRES_COMMAND_OK;
        PQclear(r);
        if (!ok) {
            char m[300];
            return easel_seterr(EASEL_EIO, "store: preparing %s: %s", queries[i].name,
                                pqmsg(c, m, sizeof m));
        }
    }
    return EASEL_OK;
}

/* The node's advisory lock (session level: released when the connection
 * ends, kill -9 included): two live processes with one node id would
 * requeue each other's jobs at start-up. *held = whether we have it. */
static easel_err lock_node(pg_store *s, PGconn *c, int *held) {
    *held = 1;
    if (!s->node[0]) return EASEL_OK;
    const char *v[1] = {s->node};
    PGresult *r = PQexecParams(c, "SELECT pg_try_advisory_lock(1701999469, hashtext($1))", 1, NULL,
                               v, NULL, NULL, 0);
    easel_err e = EASEL_OK;
    if (!r || PQresultStatus(r) != PGRES_TUPLES_OK) {
        char m[300];
        e = easel_seterr(EASEL_EIO, "store: locking the node id: %s", pqmsg(c, m, sizeof m));
    } else {
        *held = PQgetvalue(r, 0, 0)[0] == 't';
    }
    PQclear(r);
    return e;
}

/* After a connect: what each role needs. */
static easel_err setup(pg_store *s, pgconn *pc) {
    PQsetNoticeProcessor(pc->c, notice, NULL);
    if (pc->role == CONN_MAIN) {
        easel_err e = prepare_range(pc->c, 0, Q_MAIN_COUNT);
        int held = 1;
        if (!e) e = lock_node(s, pc->c, &held);
        if (!e && !held && s->node_locked)
            log_error("store: node id %s is now held by another process (its start-up may have "
                      "requeued this node's jobs)",
                      s->node);
        if (!e && !held && !s->node_locked)
            return easel_seterr(EASEL_EINVAL,
                                "store: node id %s is in use by another live easel (give each "
                                "node its own --node-id)",
                                s->node);
        if (!e) s->node_locked = 1;
        return e;
    }
    if (pc->role == CONN_SIDE) {
        easel_err e = exec_simple(pc->c, "SET synchronous_commit = off", "side connection");
        if (!e) e = prepare_range(pc->c, Q_PROGRESS, Q_PROGRESS + 1);
        if (!e) e = exec_simple(pc->c, "LISTEN easel_jobs", "listening");
        return e;
    }
    return prepare_range(pc->c, Q_IMAGE, Q_COUNT);
}

static PGconn *connect_url(const pg_store *s, const pgconn *pc) {
    char app[96];
    static const char *roles[] = {"", " (wake-ups)", " (images)"};
    snprintf(app, sizeof app, "easel %s%s", s->node[0] ? s->node : "", roles[pc->role]);
    /* our defaults first: the URL's own values (expanded from dbname) win over them */
    const char *keys[] = {"application_name",
                          "connect_timeout",
                          "keepalives",
                          "keepalives_idle",
                          "keepalives_interval",
                          "keepalives_count",
                          "tcp_user_timeout",
                          "dbname",
                          NULL};
    const char *vals[] = {app, pc->was_up ? "2" : "5", "1", "10", "3", "3", "15000", s->url, NULL};
    return PQconnectdbParams(keys, vals, 1);
}

/* Connected, or EASEL_EIO (at once while backing off). *fresh = connected now. */
static easel_err ensure(pg_store *s, pgconn *pc, int *fresh) {
    if (fresh) *fresh = 0;
    if (pc->c && PQstatus(pc->c) == CONNECTION_OK) return EASEL_OK;
    int64_t now = mono_ms();
    if (pc->down && now < pc->next_try_ms)
        return easel_seterr(EASEL_EIO, "store: the database is unreachable (retrying in %lld ms)",
                            (long long)(pc->next_try_ms - now));
    if (pc == &s->main) atomic_store(&s->main_pid, 0);
    if (pc->c) PQfinish(pc->c);
    pc->c = connect_url(s, pc);
    easel_err e = EASEL_OK;
    char m[300];
    if (!pc->c || PQstatus(pc->c) != CONNECTION_OK)
        e = easel_seterr(EASEL_EIO, "store: cannot connect to the database: %s",
                         pqmsg(pc->c, m, sizeof m));
    if (!e) e = setup(s, pc);
    if (e) {
        PQfinish(pc->c);
        pc->c = NULL;
        pc->down = 1;
        pc->backoff_ms = pc->backoff_ms ? pc->backoff_ms * 2 : BACKOFF_MIN_MS;
        if (pc->backoff_ms > BACKOFF_MAX_MS) pc->backoff_ms = BACKOFF_MAX_MS;
        pc->next_try_ms = mono_ms() + pc->backoff_ms;
        return e;
    }
    if (pc == &s->main) atomic_store(&s->main_pid, PQbackendPID(pc->c));
    if (pc->was_up) log_info("store: reconnected to the database");
    pc->was_up = 1;
    pc->down = 0;
    pc->backoff_ms = 0;
    if (fresh) *fresh = 1;
    return EASEL_OK;
}

static void drop(pgconn *pc) {
    if (pc->c) PQfinish(pc->c);
    pc->c = NULL;
    pc->down = 1;
    pc->next_try_ms = 0; /* the first reconnect is at once; backoff after it fails */
}

/* Runs prepared statement q on pc with text parameters (lens/formats may be
 * NULL: all text). *out (may be NULL) gets the result on success. Deadlocks
 * and serialisation failures are retried; a lost connection is EASEL_EIO
 * and reconnects on the next call. */
static easel_err run(pg_store *s, pgconn *pc, int q, int n, const char *const *vals,
                     const int *lens, const int *fmts, int binary_result, PGresult **out,
                     const char *what) {
    if (out) *out = NULL;
    for (int attempt = 0;; attempt++) {
        easel_err e = ensure(s, pc, NULL);
        if (e) return easel_wraperr(e, "%s", what);
        PGresult *r = PQexecPrepared(pc->c, queries[q].name, n, vals, lens, fmts, binary_result);
        ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
        if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
            if (out)
                *out = r;
            else
                PQclear(r);
            return EASEL_OK;
        }
        const char *code = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
        char m[300];
        pqmsg(pc->c, m, sizeof m);
        int transient = code && (!strcmp(code, "40001") || !strcmp(code, "40P01"));
        int integrity = code && !strncmp(code, "23", 2);
        PQclear(r);
        if (transient && attempt < 3) continue;
        if (PQstatus(pc->c) != CONNECTION_OK) {
            drop(pc); /* reconnect at the next call */
            return easel_seterr(EASEL_EIO, "store: %s: the database connection was lost: %s", what,
                                m);
        }
        return easel_seterr(integrity ? EASEL_EINVAL : EASEL_EIO, "store: %s: %s", what, m);
    }
}

/* ---- rows ---- */

static const char *val(const PGresult *r, int row, int col) {
    return PQgetisnull(r, row, col) ? NULL : PQgetvalue(r, row, col);
}

static int64_t i64(const PGresult *r, int row, int col) {
    const char *v = val(r, row, col);
    return v ? strtoll(v, NULL, 10) : 0;
}

/* A row from the COLS columns; strings point into r (valid until PQclear). */
static void read_row(const PGresult *r, int i, store_row *o) {
    memset(o, 0, sizeof *o);
    o->seq = i64(r, i, 0);
    snprintf(o->id, sizeof o->id, "%s", val(r, i, 1) ? val(r, i, 1) : "");
    int status = job_status_parse(val(r, i, 2));
    o->status = status < 0 ? JOB_FAILED : (job_status)status;
    o->params = (char *)val(r, i, 3);
    o->created_ms = i64(r, i, 4);
    o->started_ms = i64(r, i, 5);
    o->finished_ms = i64(r, i, 6);
    o->progress_ms = i64(r, i, 7);
    o->attempts = (int)i64(r, i, 8);
    o->error = (char *)val(r, i, 9);
    o->image = (char *)val(r, i, 10);
    o->timings = (char *)val(r, i, 11);
    snprintf(o->lease_owner, sizeof o->lease_owner, "%s", val(r, i, 12) ? val(r, i, 12) : "");
    o->lease_expires_ms = i64(r, i, 13);
    o->cancel_requested = (int)i64(r, i, 14);
    o->webhook_url = (char *)val(r, i, 15);
    o->webhook_events = (int)i64(r, i, 16);
    snprintf(o->model, sizeof o->model, "%s", val(r, i, 17) ? val(r, i, 17) : "");
    o->step = (int)i64(r, i, 18);
    o->stage = (int)i64(r, i, 19);
    o->step_ms = val(r, i, 20) ? strtod(val(r, i, 20), NULL) : 0;
}

static char *dup_or_null(const char *s) {
    return s ? strdup(s) : NULL;
}

static easel_err each_row(PGresult *r, store_row_fn fn, void *user) {
    for (int i = 0; i < PQntuples(r); i++) {
        store_row row;
        read_row(r, i, &row);
        if (fn(user, &row)) break;
    }
    PQclear(r);
    return EASEL_OK;
}

#define NUM(buf, v) (snprintf(buf, sizeof buf, "%lld", (long long)(v)), buf)

/* ---- the operations ---- */

static easel_err pg_insert(store *st, store_row *row) {
    pg_store *s = P(st);
    char created[24], events[16];
    const char *v[8] = {row->id,
                        row->params ? row->params : "{}",
                        NUM(created, row->created_ms),
                        row->webhook_url,
                        NUM(events, row->webhook_events),
                        s->model,
                        row->init_image,
                        row->mask_image};
    PGresult *r;
    easel_err e = run(s, &s->main, Q_INS, 8, v, NULL, NULL, 0, &r, "inserting a job");
    if (e) return e;
    row->seq = i64(r, 0, 0);
    row->status = JOB_PENDING;
    PQclear(r);
    return EASEL_OK;
}

static easel_err pg_claim(store *st, const char *owner, int64_t now_ms, int64_t lease_ms,
                          store_row *out, int *found) {
    pg_store *s = P(st);
    *found = 0;
    memset(out, 0, sizeof *out);
    char now[24], until[24];
    const char *v[4] = {NUM(now, now_ms), owner, NUM(until, now_ms + lease_ms), s->model};
    PGresult *r;
    easel_err e = run(s, &s->main, Q_CLAIM, 4, v, NULL, NULL, 0, &r, "claiming a job");
    if (e) return e;
    if (PQntuples(r) == 1) {
        store_row tmp;
        read_row(r, 0, &tmp);
        *out = tmp;
        out->params = dup_or_null(tmp.params);
        out->error = dup_or_null(tmp.error);
        out->image = dup_or_null(tmp.image);
        out->timings = dup_or_null(tmp.timings);
        out->webhook_url = dup_or_null(tmp.webhook_url);
        if ((tmp.params && !out->params) || (tmp.webhook_url && !out->webhook_url)) {
            store_row_clear(out);
            e = easel_seterr(EASEL_ENOMEM, "store: out of memory");
        } else {
            *found = 1;
        }
    }
    PQclear(r);
    return e;
}

static easel_err flag_result(PGresult *r, int *cancel_requested, const char *id,
                             const char *owner) {
    int held = PQntuples(r) == 1;
    if (cancel_requested) *cancel_requested = held ? (int)i64(r, 0, 0) : 0;
    PQclear(r);
    return held ? EASEL_OK
                : easel_seterr(EASEL_ENOTFOUND, "store: job %s is not held by %s", id, owner);
}

static easel_err pg_heartbeat(store *st, const char *id, const char *owner, int64_t now_ms,
                              int64_t lease_ms, int *cancel_requested) {
    pg_store *s = P(st);
    char now[24], until[24];
    const char *v[4] = {NUM(now, now_ms), NUM(until, now_ms + lease_ms), id, owner};
    PGresult *r;
    easel_err e = run(s, &s->main, Q_BEAT, 4, v, NULL, NULL, 0, &r, "renewing a lease");
    return e ? e : flag_result(r, cancel_requested, id, owner);
}

static easel_err pg_progress(store *st, const store_progress_row *p, int *cancel_requested) {
    pg_store *s = P(st);
    char now[24], until[24], step[16], stage[16], ms[32];
    snprintf(ms, sizeof ms, "%.3f", p->step_ms);
    const char *v[7] = {NUM(now, p->now_ms),
                        NUM(until, p->now_ms + p->lease_ms),
                        NUM(step, p->step),
                        NUM(stage, p->stage),
                        ms,
                        p->id,
                        p->owner};
    PGresult *r;
    easel_err e = run(s, &s->side, Q_PROGRESS, 7, v, NULL, NULL, 0, &r, "recording progress");
    return e ? e : flag_result(r, cancel_requested, p->id, p->owner);
}

static easel_err pg_finish(store *st, const store_row *row, const char *owner) {
    pg_store *s = P(st);
    char started[24], finished[24], progress[24], attempts[16];
    const char *v[11] = {job_status_name(row->status),
                         NUM(started, row->started_ms),
                         NUM(finished, row->finished_ms),
                         NUM(progress, row->progress_ms),
                         NUM(attempts, row->attempts),
                         row->error,
                         row->image,
                         row->timings,
                         row->id,
                         owner,
                         (const char *)row->image_data};
    int lens[11] = {0}, fmts[11] = {0};
    lens[10] = (int)row->image_len, fmts[10] = 1; /* the PNG as binary */
    if (row->image_data && row->image_len > (size_t)0x7fffffff)
        return easel_seterr(EASEL_EINVAL, "store: image too large");
    PGresult *r;
    easel_err e = run(s, &s->main, Q_FIN, 11, v, lens, fmts, 0, &r, "finishing a job");
    if (e) return e;
    int n = (int)i64(r, 0, 0);
    PQclear(r);
    if (!n) return easel_seterr(EASEL_ENOTFOUND, "store: job %s is not held by %s", row->id, owner);
    return EASEL_OK;
}

static easel_err pg_cancel(store *st, const char *id, int64_t now_ms, job_status *after) {
    pg_store *s = P(st);
    char now[24];
    const char *v[2] = {id, NUM(now, now_ms)};
    PGresult *r;
    easel_err e = run(s, &s->main, Q_CANCEL, 2, v, NULL, NULL, 0, &r, "canceling a job");
    if (e) return e;
    int status = PQntuples(r) == 1 ? job_status_parse(val(r, 0, 0)) : -1;
    PQclear(r);
    if (status < 0) return easel_seterr(EASEL_ENOTFOUND, "no job %s", id);
    if (status == JOB_PENDING) *after = JOB_CANCELED;
    if (status == JOB_PROCESSING) *after = JOB_PROCESSING;
    if (status != JOB_PENDING && status != JOB_PROCESSING) {
        *after = (job_status)status;
        return easel_seterr(EASEL_EINVAL, "job %s has already %s", id,
                            job_status_name((job_status)status));
    }
    return EASEL_OK;
}

static easel_err pg_fail(store *st, const char *id, int64_t now_ms, const char *error) {
    pg_store *s = P(st);
    char now[24];
    const char *v[3] = {NUM(now, now_ms), error, id};
    PGresult *r;
    easel_err e = run(s, &s->main, Q_FAIL, 3, v, NULL, NULL, 0, &r, "failing a job");
    if (e) return e;
    int n = atoi(PQcmdTuples(r));
    PQclear(r);
    return n ? EASEL_OK : easel_seterr(EASEL_ENOTFOUND, "store: job %s is not processing", id);
}

static easel_err pg_remove(store *st, const char *id) {
    pg_store *s = P(st);
    const char *v[1] = {id};
    return run(s, &s->main, Q_DEL, 1, v, NULL, NULL, 0, NULL, "deleting a job");
}

static easel_err pg_each(store *st, store_row_fn fn, void *user) {
    pg_store *s = P(st);
    PGresult *r;
    easel_err e = run(s, &s->main, Q_EACH, 0, NULL, NULL, NULL, 0, &r, "listing jobs");
    return e ? e : each_row(r, fn, user);
}

/* A text[] literal of the ids: {"a","b"} with " and \ escaped. */
static char *id_array(const char *const *ids, int n) {
    size_t cap = 3;
    for (int i = 0; i < n; i++)
        cap += 2 * strlen(ids[i]) + 3;
    char *a = malloc(cap), *p = a;
    if (!a) return NULL;
    *p++ = '{';
    for (int i = 0; i < n; i++) {
        if (i) *p++ = ',';
        *p++ = '"';
        for (const char *c = ids[i]; *c; c++) {
            if (*c == '"' || *c == '\\') *p++ = '\\';
            *p++ = *c;
        }
        *p++ = '"';
    }
    *p++ = '}';
    *p = 0;
    return a;
}

static easel_err pg_get(store *st, const char *const *ids, int n, store_row_fn fn, void *user) {
    pg_store *s = P(st);
    if (n <= 0) return EASEL_OK;
    char *arr = id_array(ids, n);
    if (!arr) return easel_seterr(EASEL_ENOMEM, "store: out of memory");
    const char *v[1] = {arr};
    PGresult *r;
    easel_err e = run(s, &s->main, Q_GET, 1, v, NULL, NULL, 0, &r, "reading jobs");
    free(arr);
    return e ? e : each_row(r, fn, user);
}

static easel_err pg_changed(store *st, int64_t since_ms, store_row_fn fn, void *user) {
    pg_store *s = P(st);
    char since[24];
    const char *v[1] = {NUM(since, since_ms)};
    PGresult *r;
    easel_err e = run(s, &s->main, Q_CHANGED, 1, v, NULL, NULL, 0, &r, "listing changes");
    return e ? e : each_row(r, fn, user);
}

/* Counts the 'r' and 'f' rows of a recovery or rescue and logs each. */
static void requeued_or_failed(PGresult *r, const char *how, int *requeued, int *failed) {
    int nr = 0, nf = 0;
    for (int i = 0; i < PQntuples(r); i++) {
        int f = PQgetvalue(r, i, 0)[0] == 'f';
        f ? nf++ : nr++;
        log_warn("store: %s job %s (lease of %s): %s", how, PQgetvalue(r, i, 1),
                 val(r, i, 2) ? val(r, i, 2) : "?",
                 f ? "failed: attempts used up" : "back to pending");
    }
    PQclear(r);
    if (requeued) *requeued = nr;
    if (failed) *failed = nf;
}

static easel_err pg_recover(store *st, int max_attempts, int64_t now_ms, int *requeued,
                            int *failed) {
    pg_store *s = P(st);
    char now[24], max[16];
    const char *v[3] = {NUM(now, now_ms), NUM(max, max_attempts), s->prefix};
    PGresult *r;
    easel_err e = run(s, &s->main, Q_RECOVER, 3, v, NULL, NULL, 0, &r, "recovering jobs");
    if (e) return e;
    requeued_or_failed(r, "recovered", requeued, failed);
    return EASEL_OK;
}

static easel_err pg_rescue(store *st, int max_attempts, int64_t now_ms, int *requeued,
                           int *failed) {
    pg_store *s = P(st);
    char now[24], max[16];
    const char *v[3] = {NUM(now, now_ms), NUM(max, max_attempts), s->prefix[0] ? s->prefix : NULL};
    PGresult *r;
    easel_err e = run(s, &s->main, Q_RESCUE, 3, v, NULL, NULL, 0, &r, "rescuing expired leases");
    if (e) return e;
    requeued_or_failed(r, "rescued", requeued, failed);
    return EASEL_OK;
}

static easel_err pg_probe(store *st) {
    pg_store *s = P(st);
    return run(s, &s->main, Q_PROBE, 0, NULL, NULL, NULL, 0, NULL, "probing");
}

static easel_err pg_checkpoint(store *st) {
    (void)st; /* the server's own checkpoints and autovacuum */
    return EASEL_OK;
}

static int pg_schema_version(store *st) {
    pg_store *s = P(st);
    if (ensure(s, &s->main, NULL)) return -1;
    PGresult *r = PQexec(s->main.c, "SELECT version FROM easel_schema");
    int v = r && PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1
                ? atoi(PQgetvalue(r, 0, 0))
                : -1;
    PQclear(r);
    return v;
}

static easel_err pg_clock(store *st, int64_t *offset_ms) {
    pg_store *s = P(st);
    struct timespec a, b;
    clock_gettime(CLOCK_REALTIME, &a);
    PGresult *r;
    easel_err e = run(s, &s->main, Q_CLOCK, 0, NULL, NULL, NULL, 0, &r, "reading the clock");
    clock_gettime(CLOCK_REALTIME, &b);
    if (e) return e;
    double mid = ((double)a.tv_sec + b.tv_sec) * 500.0 + ((double)a.tv_nsec + b.tv_nsec) / 2e6;
    *offset_ms = i64(r, 0, 0) - (int64_t)mid;
    PQclear(r);
    return EASEL_OK;
}

/* ---- the webhook outbox ---- */

static easel_err pg_outbox_add(store *st, const char *job_id, const char *event, int seq,
                               int64_t now_ms) {
    pg_store *s = P(st);
    char sq[16], now[24];
    const char *v[4] = {event, NUM(sq, seq), NUM(now, now_ms), job_id};
    return run(s, &s->main, Q_OB_ADD, 4, v, NULL, NULL, 0, NULL, "queueing a webhook");
}

static void read_outbox(const PGresult *q, int i, outbox_row *r) {
    memset(r, 0, sizeof *r);
    snprintf(r->id, sizeof r->id, "%s", val(q, i, 0) ? val(q, i, 0) : "");
    snprintf(r->job_id, sizeof r->job_id, "%s", val(q, i, 1) ? val(q, i, 1) : "");
    snprintf(r->event, sizeof r->event, "%s", val(q, i, 2) ? val(q, i, 2) : "");
    snprintf(r->url, sizeof r->url, "%s", val(q, i, 3) ? val(q, i, 3) : "");
    r->created_ms = i64(q, i, 4);
    r->next_ms = i64(q, i, 5);
    r->attempts = (int)i64(q, i, 6);
    const char *st = val(q, i, 7);
    r->status = st && !strcmp(st, "delivered") ? OUTBOX_DELIVERED
                : st && !strcmp(st, "failed")  ? OUTBOX_FAILED
                                               : OUTBOX_PENDING;
    snprintf(r->error, sizeof r->error, "%s", val(q, i, 8) ? val(q, i, 8) : "");
    r->done_ms = i64(q, i, 9);
}

static easel_err pg_outbox_due(store *st, const char *owner, int64_t now_ms, int64_t lease_ms,
                               outbox_row *out, int max, int *n) {
    pg_store *s = P(st);
    *n = 0;
    char until[24], now[24], lim[16];
    const char *v[4] = {owner, NUM(until, now_ms + lease_ms), NUM(now, now_ms), NUM(lim, max)};
    PGresult *r;
    easel_err e = run(s, &s->main, Q_OB_DUE, 4, v, NULL, NULL, 0, &r, "claiming webhooks");
    if (e) return e;
    for (int i = 0; i < PQntuples(r) && *n < max; i++)
        read_outbox(r, i, &out[(*n)++]);
    PQclear(r);
    return EASEL_OK;
}

static const char *outbox_status_name(outbox_status st) {
    return st == OUTBOX_DELIVERED ? "delivered" : st == OUTBOX_FAILED ? "failed" : "pending";
}

static easel_err pg_outbox_done(store *st, const outbox_row *r) {
    pg_store *s = P(st);
    char attempts[16], next[24], done[24];
    const char *v[6] = {outbox_status_name(r->status), NUM(attempts, r->attempts),
                        NUM(next, r->next_ms),         r->error[0] ? r->error : NULL,
                        NUM(done, r->done_ms),         r->id};
    return run(s, &s->main, Q_OB_DONE, 6, v, NULL, NULL, 0, NULL, "recording a webhook");
}

static easel_err outbox_rows(PGresult *r, int (*fn)(void *, const outbox_row *), void *user) {
    for (int i = 0; i < PQntuples(r); i++) {
        outbox_row o;
        read_outbox(r, i, &o);
        if (fn(user, &o)) break;
    }
    PQclear(r);
    return EASEL_OK;
}

static easel_err pg_upload_in_use(store *st, const char *id, int *in_use) {
    pg_store *s = P(st);
    const char *v[1] = {id};
    PGresult *r;
    *in_use = 1;
    easel_err e = run(s, &s->main, Q_UP_USE, 1, v, NULL, NULL, 0, &r, "upload in use");
    if (e) return e;
    *in_use = PQntuples(r) > 0;
    PQclear(r);
    return EASEL_OK;
}

static easel_err pg_outbox_each(store *st, int (*fn)(void *, const outbox_row *), void *user) {
    pg_store *s = P(st);
    PGresult *r;
    easel_err e = run(s, &s->main, Q_OB_EACH, 0, NULL, NULL, NULL, 0, &r, "listing webhooks");
    return e ? e : outbox_rows(r, fn, user);
}

static easel_err pg_outbox_of(store *st, const char *job_id, int (*fn)(void *, const outbox_row *),
                              void *user) {
    pg_store *s = P(st);
    const char *v[1] = {job_id};
    PGresult *r;
    easel_err e = run(s, &s->main, Q_OB_OF, 1, v, NULL, NULL, 0, &r, "reading webhooks");
    return e ? e : outbox_rows(r, fn, user);
}

/* ---- wake-ups (the side connection) ---- */

static easel_err pg_wait(store *st, int timeout_ms, store_change_fn fn, void *user, int *resync) {
    pg_store *s = P(st);
    pgconn *pc = &s->side;
    *resync = 0;
    int fresh = 0;
    easel_err e = ensure(s, pc, &fresh);
    if (e) { /* do not spin: wait out the timeout, then say so */
        poll(NULL, 0, timeout_ms);
        return e;
    }
    *resync = fresh;
    PGnotify *nt = PQnotifies(pc->c); /* any that came in with another call's answer */
    if (!nt) {
        struct pollfd pf = {PQsocket(pc->c), POLLIN, 0};
        int rc = poll(&pf, 1, timeout_ms);
        if (rc > 0 && (!PQconsumeInput(pc->c) || PQstatus(pc->c) != CONNECTION_OK)) {
            char m[300];
            e = easel_seterr(EASEL_EIO, "store: the wake-up connection was lost: %s",
                             pqmsg(pc->c, m, sizeof m));
            drop(pc);
            return e;
        }
        nt = PQnotifies(pc->c);
    }
    /* job rows this node wrote (main: submits, claims, finishes...; this connection: its
     * progress) are in its cache already: re-reading each would double the round trips
     * under the scheduler's store lock (the slow poll still sees them) */
    int mine[2] = {atomic_load(&s->main_pid), PQbackendPID(pc->c)};
    for (; nt; nt = PQnotifies(pc->c)) {
        int own = nt->be_pid && (nt->be_pid == mine[0] || nt->be_pid == mine[1]);
        if (nt->extra && nt->extra[0] && !(own && nt->extra[0] == 'j'))
            fn(user, nt->extra[0], nt->extra + 1);
        PQfreemem(nt);
    }
    return EASEL_OK;
}

/* ---- images (their own connection, any thread) ---- */

static uint32_t be32(const char *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return ntohl(v);
}

static easel_err pg_image_read(store *st, const char *name, int64_t off, unsigned char *buf,
                               size_t cap, size_t *n, int64_t *total) {
    pg_store *s = P(st);
    *n = 0, *total = 0;
    if (off < 0 || off > 0x7fffffff) return easel_seterr(EASEL_EINVAL, "store: bad image offset");
    if (cap > 0x7fffffff) cap = 0x7fffffff;
    char o[24], c[24];
    const char *v[3] = {name, NUM(o, off), NUM(c, cap)};
    pthread_mutex_lock(&s->img_mu);
    PGresult *r;
    easel_err e = run(s, &s->img, Q_IMAGE, 3, v, NULL, NULL, 1, &r, "reading an image");
    if (!e && PQntuples(r) != 1) e = easel_seterr(EASEL_ENOTFOUND, "store: no image %s", name);
    if (!e && PQgetlength(r, 0, 0) == 4) {
        *total = be32(PQgetvalue(r, 0, 0));
        size_t len = (size_t)PQgetlength(r, 0, 1);
        if (len > cap) len = cap;
        memcpy(buf, PQgetvalue(r, 0, 1), len);
        *n = len;
    }
    if (r) PQclear(r);
    pthread_mutex_unlock(&s->img_mu);
    return e;
}

/* ---- uploads (the img connection, any thread) ---- */

static easel_err pg_img_run(pg_store *s, int q, int n, const char *const *v, const int *lens,
                            const int *fmts, int binary, PGresult **r, const char *what) {
    pthread_mutex_lock(&s->img_mu);
    easel_err e = run(s, &s->img, q, n, v, lens, fmts, binary, r, what);
    pthread_mutex_unlock(&s->img_mu);
    return e;
}

static easel_err pg_upload_put(store *st, const char *id, const char *record, const uint8_t *data,
                               size_t len, int64_t created_ms) {
    if (len > 0x7fffffff) return easel_seterr(EASEL_EINVAL, "store: upload too large");
    char c[24];
    const char *v[4] = {id, record, (const char *)data, NUM(c, created_ms)};
    int lens[4] = {0, 0, (int)len, 0}, fmts[4] = {0, 0, 1, 0};
    return pg_img_run(P(st), Q_UPL_PUT, 4, v, lens, fmts, 0, NULL, "keeping an upload");
}

static easel_err pg_upload_get(store *st, const char *id, char **record, uint8_t **data,
                               size_t *len) {
    const char *v[1] = {id};
    PGresult *r;
    easel_err e = pg_img_run(P(st), Q_UPL_GET, 1, v, NULL, NULL, 1, &r, "reading an upload");
    if (e) return e;
    if (PQntuples(r) != 1) {
        PQclear(r);
        return easel_seterr(EASEL_ENOTFOUND, "store: no upload %s", id);
    }
    size_t rn = (size_t)PQgetlength(r, 0, 0), dn = (size_t)PQgetlength(r, 0, 1);
    *record = malloc(rn + 1), *data = malloc(dn ? dn : 1);
    if (!*record || !*data) {
        free(*record), free(*data), *record = NULL, *data = NULL;
        PQclear(r);
        return easel_seterr(EASEL_ENOMEM, "out of memory");
    }
    memcpy(*record, PQgetvalue(r, 0, 0), rn), (*record)[rn] = 0; /* text, in binary: its bytes */
    memcpy(*data, PQgetvalue(r, 0, 1), dn);
    *len = dn;
    PQclear(r);
    return EASEL_OK;
}

static easel_err pg_upload_remove(store *st, const char *id) {
    const char *v[1] = {id};
    return pg_img_run(P(st), Q_UPL_DEL, 1, v, NULL, NULL, 0, NULL, "removing an upload");
}

static easel_err pg_upload_sweep(store *st, int64_t before_ms, int *removed) {
    char b[24];
    const char *v[1] = {NUM(b, before_ms)};
    PGresult *r;
    easel_err e = pg_img_run(P(st), Q_UPL_SWEEP, 1, v, NULL, NULL, 0, &r, "sweeping uploads");
    if (e) return e;
    *removed = atoi(PQcmdTuples(r));
    PQclear(r);
    return EASEL_OK;
}

/* ---- the queue as a whole ---- */

static easel_err pg_queue_stats(store *st, int64_t now_ms, store_queue_info *out) {
    pg_store *s = P(st);
    memset(out, 0, sizeof *out);
    PGresult *r;
    easel_err e = run(s, &s->main, Q_STATS, 0, NULL, NULL, NULL, 0, &r, "reading the queue");
    if (e) return e;
    out->pending = (int)i64(r, 0, 0);
    out->processing = (int)i64(r, 0, 1);
    out->lease_expiries = i64(r, 0, 2);
    out->rescues = i64(r, 0, 3);
    PQclear(r);
    char since[24];
    const char *v[1] = {NUM(since, now_ms - 60000)};
    if ((e = run(s, &s->main, Q_NODES, 1, v, NULL, NULL, 0, &r, "reading the nodes"))) return e;
    for (int i = 0; i < PQntuples(r) && i < STORE_MAX_NODES; i++) {
        snprintf(out->nodes[i].node, sizeof out->nodes[i].node, "%s",
                 val(r, i, 0) ? val(r, i, 0) : "");
        out->nodes[i].workers = (int)i64(r, i, 1);
        out->nodes[i].seen_ms = i64(r, i, 2);
        out->nodes[i].running = (int)i64(r, i, 3);
        out->n_nodes = i + 1;
    }
    PQclear(r);
    return EASEL_OK;
}

static easel_err pg_node_beat(store *st, int64_t now_ms, int workers) {
    pg_store *s = P(st);
    if (!s->node[0]) return EASEL_OK;
    char now[24], w[16];
    const char *v[4] = {s->node, NUM(now, now_ms), s->model, NUM(w, workers)};
    return run(s, &s->main, Q_NODE_BEAT, 4, v, NULL, NULL, 0, NULL, "recording this node");
}

static easel_err pg_shared_secret(store *st, const char *name, const char *candidate, char *out,
                                  size_t cap) {
    pg_store *s = P(st);
    const char *v[2] = {name, candidate};
    PGresult *r;
    easel_err e = run(s, &s->main, Q_SECRET, 2, v, NULL, NULL, 0, &r, "reading a shared secret");
    if (e) return e;
    if (PQntuples(r) < 1 || !val(r, 0, 0)) e = easel_seterr(EASEL_EIO, "store: no secret %s", name);
    if (!e) snprintf(out, cap, "%s", val(r, 0, 0));
    PQclear(r);
    return e;
}

/* ---- open, migrate, close ---- */

static void pg_close(store *st) {
    pg_store *s = P(st);
    if (!s) return;
    drop(&s->main);
    drop(&s->side);
    drop(&s->img);
    pthread_mutex_destroy(&s->img_mu);
    free(s->url);
    free(s->node);
    free(s->model);
    free(s->prefix);
    free(s);
}

#define PG_OPS(images)                                                                             \
    .kind = "postgres", .close = pg_close, .insert = pg_insert, .claim = pg_claim,                 \
    .heartbeat = pg_heartbeat, .finish = pg_finish, .cancel = pg_cancel, .fail = pg_fail,          \
    .remove = pg_remove, .each = pg_each, .recover = pg_recover, .probe = pg_probe,                \
    .checkpoint = pg_checkpoint, .schema_version = pg_schema_version, .outbox_add = pg_outbox_add, \
    .outbox_due = pg_outbox_due, .outbox_done = pg_outbox_done, .outbox_each = pg_outbox_each,     \
    .shared = 1, .progress = pg_progress, .rescue = pg_rescue, .get = pg_get,                      \
    .changed = pg_changed, .outbox_of = pg_outbox_of, .wait = pg_wait, .clock = pg_clock,          \
    .image_read = pg_image_read, .queue_stats = pg_queue_stats, .node_beat = pg_node_beat,         \
    .shared_secret = pg_shared_secret, .holds_images = images, .upload_in_use = pg_upload_in_use,  \
    .upload_put = pg_upload_put, .upload_get = pg_upload_get, .upload_remove = pg_upload_remove,   \
    .upload_sweep = pg_upload_sweep

static const store_ops pg_ops = {PG_OPS(0)};
static const store_ops pg_ops_images = {PG_OPS(1)};

/* Applies the migrations this database lacks, once: under an advisory lock,
 * so nodes starting together migrate one after another (the later ones
 * find the work done). */
static easel_err migrate(PGconn *c) {
    easel_err e = exec_simple(c, "SELECT pg_advisory_lock(1701999468, 1)", "locking the schema");
    if (e) return e;
    e = exec_simple(c, "CREATE TABLE IF NOT EXISTS easel_schema (version int NOT NULL)",
                    "creating the schema table");
    int v = 0;
    PGresult *r = e ? NULL : PQexec(c, "SELECT version FROM easel_schema");
    if (!e && (!r || PQresultStatus(r) != PGRES_TUPLES_OK)) {
        char m[300];
        e = easel_seterr(EASEL_EIO, "store: reading the schema version: %s", pqmsg(c, m, sizeof m));
    } else if (!e && PQntuples(r) > 0) {
        v = atoi(PQgetvalue(r, 0, 0));
    }
    PQclear(r);
    if (!e && v > STORE_PG_SCHEMA_VERSION)
        e = easel_seterr(EASEL_EFORMAT,
                         "store: the database's schema is version %d, newer than this easel knows "
                         "(%d); run the newer easel on every node, or use another database",
                         v, STORE_PG_SCHEMA_VERSION);
    for (int i = v; !e && i < STORE_PG_SCHEMA_VERSION; i++) {
        char bump[96];
        snprintf(bump, sizeof bump,
                 i == 0 ? "INSERT INTO easel_schema VALUES (%d)"
                        : "UPDATE easel_schema SET "
                          "version = %d",
                 i + 1);
        e = exec_simple(c, "BEGIN", "migrating");
        if (!e) e = exec_simple(c, migrations[i], "migrating");
        if (!e) e = exec_simple(c, bump, "migrating");
        if (!e) e = exec_simple(c, "COMMIT", "migrating");
        if (e) {
            PQclear(PQexec(c, "ROLLBACK"));
            e = easel_wraperr(e, "schema version %d to %d", i, i + 1);
        } else {
            log_info("store: database schema migrated to version %d", i + 1);
        }
    }
    PGresult *u = PQexec(c, "SELECT pg_advisory_unlock(1701999468, 1)");
    PQclear(u);
    return e;
}

easel_err store_pg_open(const store_pg_config *c, int connect_wait_ms, store **out) {
    *out = NULL;
    pg_store *s = calloc(1, sizeof *s);
    if (!s) return easel_seterr(EASEL_ENOMEM, "store: out of memory");
    pthread_mutex_init(&s->img_mu, NULL);
    s->base.ops = c->images ? &pg_ops_images : &pg_ops;
    const char *node = c->node ? c->node : "";
    s->url = strdup(c->url ? c->url : "");
    s->node = strdup(node);
    s->model = strdup(c->model ? c->model : "");
    s->prefix = malloc(strlen(node) + 2);
    s->images = c->images;
    s->main.role = CONN_MAIN, s->side.role = CONN_SIDE, s->img.role = CONN_IMG;
    if (!s->url || !s->node || !s->model || !s->prefix) {
        pg_close(&s->base);
        return easel_seterr(EASEL_ENOMEM, "store: out of memory");
    }
    snprintf(s->prefix, strlen(node) + 2, node[0] ? "%s/" : "%s", node);
    /* the first connection: wait for a server that is still starting */
    int64_t deadline = mono_ms() + connect_wait_ms;
    PGconn *pc = NULL;
    for (int delay = 100;; delay = delay < 2000 ? delay * 2 : 2000) {
        pc = connect_url(s, &s->main);
        if (pc && PQstatus(pc) == CONNECTION_OK) break;
        char m[300];
        pqmsg(pc, m, sizeof m);
        PQfinish(pc);
        pc = NULL;
        if (mono_ms() + delay > deadline) {
            pg_close(&s->base);
            return easel_seterr(EASEL_EIO, "store: cannot connect to the database: %s", m);
        }
        log_warn("store: cannot connect to the database yet (%s); retrying", m);
        poll(NULL, 0, delay);
    }
    PQsetNoticeProcessor(pc, notice, NULL);
    easel_err e = migrate(pc);
    if (!e) {
        s->main.c = pc;
        e = setup(s, &s->main);
        if (!e) atomic_store(&s->main_pid, PQbackendPID(pc));
        s->main.was_up = 1;
    } else {
        PQfinish(pc);
    }
    if (!e) e = ensure(s, &s->side, NULL);
    if (e) {
        pg_close(&s->base);
        return e;
    }
    *out = &s->base;
    return EASEL_OK;
}

#endif /* EASEL_HAVE_PG */
