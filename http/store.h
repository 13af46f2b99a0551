/* The durable job store: one SQLite database in WAL mode. Every job state
 * change is one transaction, so a job a client was told was accepted
 * survives a crash; the in-memory table in jobs.c is only a cache of it.
 * A store handle is used by one thread at a time (jobs.c holds its lock). */
#ifndef EASEL_STORE_H
#define EASEL_STORE_H

#include <stdint.h>

#include "../engine/err.h"

#define STORE_SCHEMA_VERSION 2

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

/* One row. Strings are owned by whoever filled the struct (see store_row_clear). */
typedef struct {
    char id[37]; /* UUID text */
    int64_t seq; /* insertion order (FIFO); set by store_insert */
    job_status status;
    char *params; /* the job's parameters as JSON text */
    int64_t created_ms, started_ms, finished_ms, progress_ms; /* 0 = not yet */
    int attempts;                                             /* times a worker picked the job up */
    char *error;                                              /* NULL unless failed/canceled */
    char *image;   /* image file name (inside the images dir), NULL until completed */
    char *timings; /* JSON text, NULL until completed */
} store_row;

typedef struct store store;

/* Opens (creating or migrating) the database at path. On error *out is NULL. */
easel_err store_open(const char *path, store **out);
/* full (the default): every commit fsyncs the WAL, so an accepted job survives
 * power loss; !full (synchronous=NORMAL): a commit survives a crash of the
 * process but the last ones may be lost on power loss; commits are faster. */
easel_err store_set_sync(store *s, int full);
/* Closes; checkpoints the WAL. NULL is fine. */
void store_close(store *s);
/* Copies committed WAL frames into the database file without blocking the
 * writer (automatic checkpoints are off so that no request pays for one).
 * Called from one thread at a time (the jobs maintenance thread). */
easel_err store_checkpoint(store *s);
/* The schema version of an open store (PRAGMA user_version). */
int store_schema_version(store *s);

/* Inserts a new row (status, params, created_ms, id); sets row->seq. Durable on return. */
easel_err store_insert(store *s, store_row *row);
/* Writes status, started/finished/progress times, attempts, error, image, timings of
 * row->id. EASEL_ENOTFOUND if there is no such row. */
easel_err store_update(store *s, const store_row *row);
/* Deletes the row (no error if absent). */
easel_err store_delete(store *s, const char *id);

/* Crash recovery, one transaction: every row left 'processing' goes back to
 * 'pending', or to 'failed' (with a message saying why) when its attempts
 * reached max_attempts. Counts are returned through the pointers (may be NULL). */
easel_err store_recover(store *s, int max_attempts, int *requeued, int *failed);

/* Calls fn for every row in seq order; fn's row is valid only during the call.
 * A nonzero return from fn stops the walk (and is not an error). */
typedef int (*store_row_fn)(void *user, const store_row *row);
easel_err store_each(store *s, store_row_fn fn, void *user);

/* Frees the strings of a row filled by the caller with malloc'd strings. */
void store_row_clear(store_row *row);

#endif
