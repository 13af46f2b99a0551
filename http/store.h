/* The job store interface: the durable truth about jobs and the queue
 * itself. jobs.c keeps an in-memory cache of it for cheap status reads, but
 * a worker gets its next job from the store (store_claim), and every state
 * change is written here before the cache shows it. Implementations:
 * store_sqlite.c (the embedded default: one node owns the database) and
 * store_pg.c (PostgreSQL: several nodes on one queue).
 *
 * A processing job carries a lease: its owner (node/worker name) and an
 * expiry that heartbeats extend. A store handle is used by one thread at a
 * time (jobs.c holds its lock around every call), except the calls marked
 * "own connection" below, which a shared store serves on connections of
 * their own so one other thread (and, for images, any thread) may make them
 * at the same time. */
#ifndef EASEL_STORE_H
#define EASEL_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "../engine/err.h"

/* Job states, as stored (text) and as used in memory. */
typedef enum {
    JOB_PENDING = 0,
    JOB_PROCESSING,
    JOB_COMPLETED,
    JOB_FAILED,
    JOB_CANCELED,
    JOB_STATUS_COUNT
} job_status;

/* "pending", "processing", ... */
const char *job_status_name(job_status s);
/* -1 if unknown. */
int job_status_parse(const char *s);

#define STORE_OWNER_MAX 64

/* One row. Strings are owned by whoever filled the struct (see store_row_clear). */
typedef struct {
    char id[37]; /* UUID text */
    int64_t seq; /* insertion order (FIFO); set by store_insert */
    job_status status;
    char *params; /* the job's parameters as JSON text */
    int64_t created_ms, started_ms, finished_ms, progress_ms; /* wall clock; 0 = not yet */
    int attempts;                                             /* times a worker claimed it */
    char *error;                                              /* NULL unless failed/canceled */
    char *image;   /* image file name (inside the images dir), NULL until completed */
    char *timings; /* JSON text, NULL until completed */
    char lease_owner[STORE_OWNER_MAX]; /* "" unless processing */
    int64_t lease_expires_ms;
    int cancel_requested; /* set on a processing job; its owner stops at the next step */
    char *webhook_url;    /* NULL: no webhook */
    int webhook_events;   /* STORE_EV_* bits */
    /* img2img / inpainting: the upload ids (http/uploads.h) the job reads, or
     * NULL. Written by insert (columns init_image, mask_image: schema 5) so a
     * store can say which uploads pending jobs still need (upload_in_use); not
     * read back into rows: the params JSON carries them too. Not owned. */
    const char *init_image, *mask_image;
    /* shared stores (store_shared): what every node shows of a job */
    char model[64];  /* the model the job is for (the submitting node's) */
    int step, stage; /* progress written by the owner (stage: jobs.h job_stage) */
    double step_ms;  /* the owner's moving-average step time */
    /* store_finish only, never filled by reads: the PNG itself when the store
     * holds images (store_holds_images); not owned by the row */
    const unsigned char *image_data;
    size_t image_len;
} store_row;

/* Webhook events a job asked for. The store itself enqueues start and
 * completed in the transaction that makes them true (a claim; a finish,
 * cancel or failure), so none is lost between a state change and its
 * event; progress events are enqueued by the scheduler. */
enum { STORE_EV_START = 1, STORE_EV_PROGRESS = 2, STORE_EV_COMPLETED = 4 };

typedef enum { OUTBOX_PENDING = 0, OUTBOX_DELIVERED, OUTBOX_FAILED } outbox_status;

/* One webhook delivery. */
typedef struct {
    char id[96]; /* the webhook-id: stable across retries (receivers deduplicate on it) */
    char job_id[37];
    char event[16]; /* "start", "progress", "completed" */
    char url[1024];
    int64_t created_ms, next_ms, done_ms;
    int attempts;
    outbox_status status;
    char error[200];
} outbox_row;

typedef struct store store;
typedef int (*store_row_fn)(void *user, const store_row *row);
/* A change another node (or this one) committed: kind 'j' (a job row) or
 * 'o' (its webhook deliveries), and the job's id. */
typedef void (*store_change_fn)(void *user, char kind, const char *id);

/* A worker's progress on a job it holds (store_progress). */
typedef struct {
    const char *id, *owner;
    int64_t now_ms, lease_ms;
    int step, stage;
    double step_ms;
} store_progress_row;

#define STORE_MAX_NODES 64

/* The queue as a whole (store_queue_stats): every node's view is the same. */
typedef struct {
    int pending, processing;
    int64_t lease_expiries; /* leases found expired by the rescuers, ever */
    int64_t rescues;        /* ... of which went back to pending (the rest failed at the cap) */
    int n_nodes;            /* nodes seen in the last minute or holding jobs */
    struct {
        char node[STORE_OWNER_MAX];
        int workers, running;
        int64_t seen_ms; /* its last beat (0: none: it holds jobs but is gone) */
    } nodes[STORE_MAX_NODES];
} store_queue_info;

/* What every implementation fills. Each call is one transaction: when it
 * returns an error nothing was changed. */
typedef struct {
    const char *kind; /* "sqlite" */
    void (*close)(store *s);
    easel_err (*insert)(store *s, store_row *row);
    easel_err (*claim)(store *s, const char *owner, int64_t now_ms, int64_t lease_ms,
                       store_row *out, int *found);
    easel_err (*heartbeat)(store *s, const char *id, const char *owner, int64_t now_ms,
                           int64_t lease_ms, int *cancel_requested);
    easel_err (*finish)(store *s, const store_row *row, const char *owner);
    easel_err (*cancel)(store *s, const char *id, int64_t now_ms, job_status *after);
    easel_err (*fail)(store *s, const char *id, int64_t now_ms, const char *error);
    easel_err (*remove)(store *s, const char *id);
    easel_err (*each)(store *s, store_row_fn fn, void *user);
    easel_err (*recover)(store *s, int max_attempts, int64_t now_ms, int *requeued, int *failed);
    easel_err (*probe)(store *s);
    easel_err (*checkpoint)(store *s);
    int (*schema_version)(store *s);
    easel_err (*outbox_add)(store *s, const char *job_id, const char *event, int seq,
                            int64_t now_ms);
    easel_err (*outbox_due)(store *s, const char *owner, int64_t now_ms, int64_t lease_ms,
                            outbox_row *out, int max, int *n);
    easel_err (*outbox_done)(store *s, const outbox_row *r);
    easel_err (*outbox_each)(store *s, int (*fn)(void *user, const outbox_row *r), void *user);
    /* ---- several nodes on one store (NULL where one node owns the store) ---- */
    int shared;       /* several nodes use it: a replica cache, rescuers, wake-ups */
    int holds_images; /* images are rows of the store (finish takes the bytes) */
    easel_err (*progress)(store *s, const store_progress_row *p, int *cancel_requested);
    easel_err (*rescue)(store *s, int max_attempts, int64_t now_ms, int *requeued, int *failed);
    easel_err (*get)(store *s, const char *const *ids, int n, store_row_fn fn, void *user);
    easel_err (*changed)(store *s, int64_t since_ms, store_row_fn fn, void *user);
    easel_err (*outbox_of)(store *s, const char *job_id, int (*fn)(void *user, const outbox_row *r),
                           void *user);
    easel_err (*wait)(store *s, int timeout_ms, store_change_fn fn, void *user, int *resync);
    easel_err (*clock)(store *s, int64_t *offset_ms);
    easel_err (*image_read)(store *s, const char *name, int64_t off, unsigned char *buf, size_t cap,
                            size_t *n, int64_t *total);
    easel_err (*queue_stats)(store *s, int64_t now_ms, store_queue_info *out);
    easel_err (*node_beat)(store *s, int64_t now_ms, int workers);
    easel_err (*shared_secret)(store *s, const char *name, const char *candidate, char *out,
                               size_t cap);
    easel_err (*upload_in_use)(store *s, const char *upload_id, int *in_use);
    /* uploads as rows of a shared store, so a job another node claims finds
     * its init image and mask (http/uploads.c keeps a local copy too); own
     * connection, any thread. NULL where one node owns the store. */
    easel_err (*upload_put)(store *s, const char *id, const char *record, const uint8_t *data,
                            size_t len, int64_t created_ms);
    easel_err (*upload_get)(store *s, const char *id, char **record, uint8_t **data, size_t *len);
    easel_err (*upload_remove)(store *s, const char *id);
    easel_err (*upload_sweep)(store *s, int64_t before_ms, int *removed);
} store_ops;

struct store {
    const store_ops *ops;
};

/* ---- the calls (dispatch to s->ops) ---- */

/* Inserts a new pending row (id, params, created_ms, webhook); sets row->seq. */
easel_err store_insert(store *s, store_row *row);
/* Claims the oldest pending job for owner: status processing, attempts + 1,
 * started/progress = now, lease until now + lease_ms, cancel_requested 0.
 * *found = 0 (and nothing changed) when no job is pending; else *out is the
 * claimed row with malloc'd strings (store_row_clear). */
easel_err store_claim(store *s, const char *owner, int64_t now_ms, int64_t lease_ms, store_row *out,
                      int *found);
/* Extends owner's lease on a processing job and records the progress time;
 * *cancel_requested (may be NULL) gets the job's flag. EASEL_ENOTFOUND when
 * owner no longer holds it (the lease expired and it went back). */
easel_err store_heartbeat(store *s, const char *id, const char *owner, int64_t now_ms,
                          int64_t lease_ms, int *cancel_requested);
/* Writes the outcome of a job owner holds: row->status completed, failed,
 * canceled (finished_ms, error, image, timings) or pending (interrupted by a
 * shutdown: attempts as in row, not counted). EASEL_ENOTFOUND when owner no
 * longer holds the job. */
easel_err store_finish(store *s, const store_row *row, const char *owner);
/* Cancels: a pending job at once (*after = canceled), a processing one by
 * setting cancel_requested (*after = processing). EASEL_ENOTFOUND for no
 * such job; EASEL_EINVAL when it already finished (*after = its status). */
easel_err store_cancel(store *s, const char *id, int64_t now_ms, job_status *after);
/* A processing job fails whoever holds it (the watchdog): status failed,
 * finished_ms, error. EASEL_ENOTFOUND when it is no longer processing. */
easel_err store_fail(store *s, const char *id, int64_t now_ms, const char *error);
/* Deletes the row (no error if absent). */
easel_err store_delete(store *s, const char *id);
/* Calls fn for every row in seq order; fn's row is valid only during the
 * call. A nonzero return from fn stops the walk (and is not an error). */
easel_err store_each(store *s, store_row_fn fn, void *user);
/* Start-up recovery, one transaction. SQLite (one node owns every row):
 * every row left processing goes back to pending, or to failed (with the
 * reason) once its attempts reached max_attempts. Counts via the pointers. */
easel_err store_recover(store *s, int max_attempts, int64_t now_ms, int *requeued, int *failed);
/* A tiny write: whether the store can commit now (a full disk that was
 * freed, a database that came back). */
easel_err store_probe(store *s);
/* Background housekeeping (SQLite: copies the WAL into the database). */
easel_err store_checkpoint(store *s);
/* Enqueues a progress (or other) event for a job with a webhook that asked
 * for it; seq makes its id unique ("msg_<job>_<event>_<seq>"); a second add
 * of the same id is a no-op. */
easel_err store_outbox_add(store *s, const char *job_id, const char *event, int seq,
                           int64_t now_ms);
/* Claims up to max deliveries due now (pending, next attempt reached, not
 * leased), leasing them to owner for lease_ms; *n how many. */
easel_err store_outbox_due(store *s, const char *owner, int64_t now_ms, int64_t lease_ms,
                           outbox_row *out, int max, int *n);
/* Records an attempt: r->status delivered or failed (final), or pending
 * with r->next_ms for the retry; attempts, error, done_ms as in r. */
easel_err store_outbox_done(store *s, const outbox_row *r);
/* Every delivery, in insertion order (start-up: the jobs' delivery states). */
easel_err store_outbox_each(store *s, int (*fn)(void *user, const outbox_row *r), void *user);
/* *in_use = 1 when a pending or processing job reads this upload (as its
 * init_image or mask): the upload sweep keeps it. */
easel_err store_upload_in_use(store *s, const char *upload_id, int *in_use);
/* 1 when uploads are rows of the store (a shared store): every node reads them. */
int store_holds_uploads(const store *s);
/* Keeps an upload (its record, JSON text, and bytes); an id kept before is left as it is. */
easel_err store_upload_put(store *s, const char *id, const char *record, const uint8_t *data,
                           size_t len, int64_t created_ms);
/* An upload's record (NUL-terminated) and bytes, both malloc'd; EASEL_ENOTFOUND if unknown. */
easel_err store_upload_get(store *s, const char *id, char **record, uint8_t **data, size_t *len);
easel_err store_upload_remove(store *s, const char *id);
/* Removes uploads created before before_ms that no pending or processing job reads. */
easel_err store_upload_sweep(store *s, int64_t before_ms, int *removed);
/* ---- several nodes (store_shared); each returns EASEL_EUNSUPPORTED on a
 * store without it ---- */

/* Whether several nodes share this store (PostgreSQL): jobs.c then keeps
 * its cache a replica of the store (store_wait, store_get), rescues expired
 * leases, and writes progress for the other nodes to show. */
int store_shared(const store *s);
/* Whether images are kept in the store (store_finish's image_data; read
 * back with store_image_read) rather than as files. */
int store_holds_images(const store *s);
/* Own connection (one thread besides the store's user). A worker's progress
 * on a job owner holds: records step/stage/step_ms, extends the lease;
 * *cancel_requested (may be NULL) gets the job's flag. Committed without
 * waiting for the disk (a lost progress write costs nothing). EASEL_ENOTFOUND
 * when owner no longer holds it. */
easel_err store_progress(store *s, const store_progress_row *p, int *cancel_requested);
/* The rescuer: every job whose lease expired before now_ms, held by another
 * node than this store's, goes back to pending, or to failed (with the
 * reason) once its attempts reached max_attempts. Counts via the pointers;
 * the queue's lease_expiries/rescues counters follow. Jobs held by live
 * leases are never touched. */
easel_err store_rescue(store *s, int max_attempts, int64_t now_ms, int *requeued, int *failed);
/* Calls fn for each of the n rows with these ids that exists. */
easel_err store_get(store *s, const char *const *ids, int n, store_row_fn fn, void *user);
/* Calls fn for every row changed at or after since_ms (the store's clock,
 * see store_clock): the slow poll behind the wake-ups. */
easel_err store_changed(store *s, int64_t since_ms, store_row_fn fn, void *user);
/* Every delivery of one job. */
easel_err store_outbox_of(store *s, const char *job_id, int (*fn)(void *user, const outbox_row *r),
                          void *user);
/* Own connection (one thread besides the store's user). Waits up to
 * timeout_ms for changes committed by any node and calls fn for each; a
 * job row changed by this store's own connections is not reported (its
 * user changed its cache with the write; what it does not learn that way,
 * a rescue's rows, it reads with store_changed), outbox changes always are.
 * *resync = 1 when the wait (re)connected: changes may have been missed and
 * the caller should reload. EASEL_EIO while the store is unreachable (the
 * call then returns at once or after its reconnect backoff). */
easel_err store_wait(store *s, int timeout_ms, store_change_fn fn, void *user, int *resync);
/* The store's clock minus this host's (ms): the nodes' common clock for
 * leases is jobs_now_ms() + offset. */
easel_err store_clock(store *s, int64_t *offset_ms);
/* Own connection (any thread). Up to cap bytes of an image from offset off:
 * *n read, *total the image's size. EASEL_ENOTFOUND when there is none. */
easel_err store_image_read(store *s, const char *name, int64_t off, unsigned char *buf, size_t cap,
                           size_t *n, int64_t *total);
/* The queue as a whole (depth, running by node, lease expiries, rescues). */
easel_err store_queue_stats(store *s, int64_t now_ms, store_queue_info *out);
/* Records that this store's node is alive with `workers` workers. */
easel_err store_node_beat(store *s, int64_t now_ms, int workers);
/* A value every node shares (the URL-signing key, the webhook secret): the
 * stored one, or candidate, stored now, when there is none (the first node
 * to start decides). */
easel_err store_shared_secret(store *s, const char *name, const char *candidate, char *out,
                              size_t cap);

/* The schema version of an open store. */
int store_schema_version(store *s);
const char *store_kind(const store *s);
/* Closes. NULL is fine. */
void store_close(store *s);

/* Frees the strings of a row filled with malloc'd strings. */
void store_row_clear(store_row *row);

/* ---- SQLite (store_sqlite.c) ---- */

#define STORE_SQLITE_SCHEMA_VERSION 5

/* Opens (creating or migrating) the database at path; a schema newer than
 * this binary knows is refused (EASEL_EFORMAT). sync_full: every commit
 * fsyncs the WAL, so an accepted job survives power loss; else
 * (synchronous=NORMAL) a commit survives any crash of the process, kill -9
 * included, but the last commits before a power loss or kernel crash may
 * roll back. On error *out is NULL. */
easel_err store_sqlite_open(const char *path, int sync_full, store **out);

/* ---- PostgreSQL (store_pg.c; libpq, when built with it) ---- */

#define STORE_PG_SCHEMA_VERSION 3

typedef struct {
    const char *url;   /* a libpq connection string or postgres:// URL */
    const char *node;  /* this node's id: its lease owners are "<node>/..." ("" allowed) */
    const char *model; /* the model this node serves: rows it inserts carry it, and it
                        * claims only rows that do ("" allowed) */
    int images;        /* 1: images are rows of the store (else files, e.g. --image-dir) */
} store_pg_config;

/* Connects (retrying for up to connect_wait_ms while the server is not up),
 * applies the schema's migrations once under an advisory lock, and takes
 * the node's advisory lock (a second live process with the same node id is
 * refused: EASEL_EINVAL). A schema newer than this binary knows is refused
 * (EASEL_EFORMAT). Without libpq at build time: EASEL_EUNSUPPORTED ("built
 * without PostgreSQL"). Up to three connections: the main one (the store's
 * user), one for wake-ups and progress, one for image reads (opened on
 * first use). Lost connections come back on the next call after a backoff
 * (0.25 s doubling to 5 s); calls fail fast with EASEL_EIO meanwhile. */
easel_err store_pg_open(const store_pg_config *c, int connect_wait_ms, store **out);

#endif
