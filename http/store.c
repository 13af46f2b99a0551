/* The store interface's calls (see store.h): each dispatches to the open
 * implementation; the status names are shared by all of them. */
#include "store.h"

#include <stdlib.h>
#include <string.h>

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

easel_err store_insert(store *s, store_row *row) {
    return s->ops->insert(s, row);
}
easel_err store_claim(store *s, const char *owner, int64_t now_ms, int64_t lease_ms, store_row *out,
                      int *found) {
    return s->ops->claim(s, owner, now_ms, lease_ms, out, found);
}
easel_err store_heartbeat(store *s, const char *id, const char *owner, int64_t now_ms,
                          int64_t lease_ms, int *cancel_requested) {
    return s->ops->heartbeat(s, id, owner, now_ms, lease_ms, cancel_requested);
}
easel_err store_finish(store *s, const store_row *row, const char *owner) {
    return s->ops->finish(s, row, owner);
}
easel_err store_cancel(store *s, const char *id, int64_t now_ms, job_status *after) {
    return s->ops->cancel(s, id, now_ms, after);
}
easel_err store_fail(store *s, const char *id, int64_t now_ms, const char *error) {
    return s->ops->fail(s, id, now_ms, error);
}
easel_err store_delete(store *s, const char *id) {
    return s->ops->remove(s, id);
}
easel_err store_each(store *s, store_row_fn fn, void *user) {
    return s->ops->each(s, fn, user);
}
easel_err store_recover(store *s, int max_attempts, int64_t now_ms, int *requeued, int *failed) {
    return s->ops->recover(s, max_attempts, now_ms, requeued, failed);
}
easel_err store_probe(store *s) {
    return s->ops->probe(s);
}
easel_err store_checkpoint(store *s) {
    return s->ops->checkpoint(s);
}
int store_schema_version(store *s) {
    return s->ops->schema_version(s);
}
easel_err store_outbox_add(store *s, const char *job_id, const char *event, int seq,
                           int64_t now_ms) {
    return s->ops->outbox_add(s, job_id, event, seq, now_ms);
}
easel_err store_outbox_due(store *s, const char *owner, int64_t now_ms, int64_t lease_ms,
                           outbox_row *out, int max, int *n) {
    return s->ops->outbox_due(s, owner, now_ms, lease_ms, out, max, n);
}
easel_err store_outbox_done(store *s, const outbox_row *r) {
    return s->ops->outbox_done(s, r);
}
easel_err store_outbox_each(store *s, int (*fn)(void *user, const outbox_row *r), void *user) {
    return s->ops->outbox_each(s, fn, user);
}
easel_err store_upload_in_use(store *s, const char *upload_id, int *in_use) {
    if (!s->ops->upload_in_use) { /* a store without it: every upload counts as in use */
        *in_use = 1;
        return EASEL_OK;
    }
    return s->ops->upload_in_use(s, upload_id, in_use);
}
/* ---- several nodes: optional operations ---- */

static easel_err unsupported(const store *s, const char *what) {
    return easel_seterr(EASEL_EUNSUPPORTED, "store: %s does not %s", s->ops->kind, what);
}
int store_shared(const store *s) {
    return s->ops->shared;
}
int store_holds_images(const store *s) {
    return s->ops->holds_images;
}
int store_holds_uploads(const store *s) {
    return s->ops->upload_put && s->ops->upload_get;
}
easel_err store_upload_put(store *s, const char *id, const char *record, const uint8_t *data,
                           size_t len, int64_t created_ms) {
    return s->ops->upload_put ? s->ops->upload_put(s, id, record, data, len, created_ms)
                              : unsupported(s, "hold uploads");
}
easel_err store_upload_get(store *s, const char *id, char **record, uint8_t **data, size_t *len) {
    *record = NULL, *data = NULL, *len = 0;
    return s->ops->upload_get ? s->ops->upload_get(s, id, record, data, len)
                              : unsupported(s, "hold uploads");
}
easel_err store_upload_remove(store *s, const char *id) {
    return s->ops->upload_remove ? s->ops->upload_remove(s, id) : unsupported(s, "hold uploads");
}
easel_err store_upload_sweep(store *s, int64_t before_ms, int *removed) {
    *removed = 0;
    return s->ops->upload_sweep ? s->ops->upload_sweep(s, before_ms, removed)
                                : unsupported(s, "hold uploads");
}
easel_err store_progress(store *s, const store_progress_row *p, int *cancel_requested) {
    return s->ops->progress ? s->ops->progress(s, p, cancel_requested)
                            : unsupported(s, "record progress");
}
easel_err store_rescue(store *s, int max_attempts, int64_t now_ms, int *requeued, int *failed) {
    return s->ops->rescue ? s->ops->rescue(s, max_attempts, now_ms, requeued, failed)
                          : unsupported(s, "rescue leases");
}
easel_err store_get(store *s, const char *const *ids, int n, store_row_fn fn, void *user) {
    return s->ops->get ? s->ops->get(s, ids, n, fn, user) : unsupported(s, "read rows by id");
}
easel_err store_changed(store *s, int64_t since_ms, store_row_fn fn, void *user) {
    return s->ops->changed ? s->ops->changed(s, since_ms, fn, user)
                           : unsupported(s, "list changes");
}
easel_err store_outbox_of(store *s, const char *job_id, int (*fn)(void *user, const outbox_row *r),
                          void *user) {
    return s->ops->outbox_of ? s->ops->outbox_of(s, job_id, fn, user)
                             : unsupported(s, "read a job's deliveries");
}
easel_err store_wait(store *s, int timeout_ms, store_change_fn fn, void *user, int *resync) {
    return s->ops->wait ? s->ops->wait(s, timeout_ms, fn, user, resync)
                        : unsupported(s, "wait for changes");
}
easel_err store_clock(store *s, int64_t *offset_ms) {
    *offset_ms = 0;
    return s->ops->clock ? s->ops->clock(s, offset_ms) : EASEL_OK;
}
easel_err store_image_read(store *s, const char *name, int64_t off, unsigned char *buf, size_t cap,
                           size_t *n, int64_t *total) {
    return s->ops->image_read ? s->ops->image_read(s, name, off, buf, cap, n, total)
                              : unsupported(s, "hold images");
}
easel_err store_queue_stats(store *s, int64_t now_ms, store_queue_info *out) {
    return s->ops->queue_stats ? s->ops->queue_stats(s, now_ms, out)
                               : unsupported(s, "report the queue");
}
easel_err store_node_beat(store *s, int64_t now_ms, int workers) {
    return s->ops->node_beat ? s->ops->node_beat(s, now_ms, workers)
                             : unsupported(s, "record nodes");
}
easel_err store_shared_secret(store *s, const char *name, const char *candidate, char *out,
                              size_t cap) {
    return s->ops->shared_secret ? s->ops->shared_secret(s, name, candidate, out, cap)
                                 : unsupported(s, "share secrets");
}

const char *store_kind(const store *s) {
    return s->ops->kind;
}
void store_close(store *s) {
    if (s) s->ops->close(s);
}

void store_row_clear(store_row *row) {
    free(row->params);
    free(row->error);
    free(row->image);
    free(row->timings);
    free(row->webhook_url);
    row->params = row->error = row->image = row->timings = row->webhook_url = NULL;
}
