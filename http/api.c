/* The native API (/v1/jobs...), /healthz and /metrics: cJSON in, cJSON out.
 * Status reads come from the scheduler's in-memory table (one short lock),
 * never from SQL, so polls stay cheap. */
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server.h"
#include "webhooks.h"

/* ---- the job as JSON ---- */

void api_add_preview(cJSON *o, const job *j) {
    char url[96];
    snprintf(url, sizeof url, "/v1/jobs/%s/preview", j->id);
    if (j->preview.data) {
        cJSON_AddStringToObject(o, "preview_url", url);
        cJSON_AddNumberToObject(o, "preview_step", j->preview.step);
    } else {
        cJSON_AddNullToObject(o, "preview_url");
        cJSON_AddNullToObject(o, "preview_step");
    }
}

static void add_time(cJSON *o, const char *key, int64_t ms) {
    char buf[40];
    http_time(ms, buf, sizeof buf);
    if (buf[0])
        cJSON_AddStringToObject(o, key, buf);
    else
        cJSON_AddNullToObject(o, key);
}

static void add_links(cJSON *o, const char *id) {
    cJSON *l = cJSON_AddObjectToObject(o, "links");
    if (!l) return;
    char buf[96];
    snprintf(buf, sizeof buf, "/v1/jobs/%s", id);
    cJSON_AddStringToObject(l, "self", buf);
    snprintf(buf, sizeof buf, "/v1/jobs/%s/image", id);
    cJSON_AddStringToObject(l, "image", buf);
    snprintf(buf, sizeof buf, "/v1/jobs/%s/cancel", id);
    cJSON_AddStringToObject(l, "cancel", buf);
    snprintf(buf, sizeof buf, "/v1/jobs/%s/events", id);
    cJSON_AddStringToObject(l, "events", buf);
}

static void add_progress(cJSON *o, const job *j, const job_extra *x) {
    cJSON *p = cJSON_AddObjectToObject(o, "progress");
    if (!p) return;
    int steps = j->steps > 0 ? j->steps : j->params.steps;
    cJSON_AddNumberToObject(p, "step", j->step);
    cJSON_AddNumberToObject(p, "steps", steps);
    cJSON_AddNumberToObject(p, "fraction", steps ? (double)j->step / steps : 0);
    if (x->eta_s >= 0 && j->status <= JOB_PROCESSING)
        cJSON_AddNumberToObject(p, "eta_seconds", round(x->eta_s * 1000) / 1000);
    else if (j->status > JOB_PROCESSING)
        cJSON_AddNumberToObject(p, "eta_seconds", 0);
    else
        cJSON_AddNullToObject(p, "eta_seconds");
}

static double ms3(double v) {
    return round(v * 1000) / 1000;
}

static void add_timings(cJSON *o, const job *j) {
    if (!j->have_timings) {
        cJSON_AddNullToObject(o, "timings");
        return;
    }
    cJSON *t = cJSON_AddObjectToObject(o, "timings");
    if (!t) return;
    cJSON_AddNumberToObject(t, "encode_ms", ms3(j->timings.tokenize_ms + j->timings.encode_ms));
    cJSON_AddNumberToObject(t, "sample_ms", ms3(j->timings.sample_ms));
    cJSON_AddNumberToObject(t, "decode_ms", ms3(j->timings.decode_ms));
    cJSON_AddNumberToObject(t, "total_ms", ms3(j->timings.total_ms));
    cJSON_AddNumberToObject(t, "step_ms_mean", ms3(j->timings.step_ms_mean));
    if (j->timings.lora_ms > 0) { /* binding its LoRAs: merged now, or the worker's cached set */
        cJSON_AddNumberToObject(t, "lora_ms", ms3(j->timings.lora_ms));
        cJSON_AddBoolToObject(t, "lora_cached", j->timings.lora_cached);
    }
    if (j->timings.image_encode_ms > 0) { /* img2img: the VAE encoder; only the last steps ran */
        cJSON_AddNumberToObject(t, "image_encode_ms", ms3(j->timings.image_encode_ms));
        cJSON_AddNumberToObject(t, "steps_run", j->timings.steps_run);
    }
}

/* "webhook": {url, events, deliveries: [{event, status, attempts, error, delivered_at}]} */
static void add_webhook(cJSON *o, const job *j) {
    if (!j->params.webhook) return;
    cJSON *w = cJSON_AddObjectToObject(o, "webhook");
    if (!w) return;
    cJSON_AddStringToObject(w, "url", j->params.webhook);
    cJSON *ev = cJSON_AddArrayToObject(w, "events");
    static const char *names[] = {"start", "progress", "completed"};
    for (int i = 0; i < 3; i++)
        if (j->params.webhook_events & (1 << i))
            cJSON_AddItemToArray(ev, cJSON_CreateString(names[i]));
    cJSON *ds = cJSON_AddArrayToObject(w, "deliveries");
    static const char *st[] = {"pending", "delivered", "failed"};
    for (int i = 0; i < 3; i++) {
        const job_delivery *d = &j->deliveries[i];
        if (!d->event[0]) continue;
        cJSON *it = cJSON_CreateObject();
        cJSON_AddStringToObject(it, "event", d->event);
        cJSON_AddStringToObject(it, "status", st[d->status]);
        cJSON_AddNumberToObject(it, "attempts", d->attempts);
        if (d->error[0])
            cJSON_AddStringToObject(it, "error", d->error);
        else
            cJSON_AddNullToObject(it, "error");
        add_time(it, d->status == OUTBOX_DELIVERED ? "delivered_at" : "finished_at", d->done_ms);
        cJSON_AddItemToArray(ds, it);
    }
}

cJSON *api_job_json(const job *j, const job_extra *x) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "id", j->id);
    cJSON_AddStringToObject(o, "status", job_status_name(j->status));
    cJSON_AddStringToObject(o, "stage",
                            j->status == JOB_PROCESSING ? job_stage_name(j->stage)
                            : j->status == JOB_PENDING  ? "queued"
                                                        : "done");
    add_progress(o, j, x);
    cJSON_AddNumberToObject(o, "queue_position", x->queue_position);
    cJSON_AddItemToObject(o, "params", params_to_json(&j->params));
    add_time(o, "created_at", j->created_ms);
    add_time(o, "started_at", j->started_ms);
    add_time(o, "finished_at", j->finished_ms);
    cJSON_AddNumberToObject(o, "attempts", j->attempts);
    if (j->status == JOB_PROCESSING && j->cancel) cJSON_AddTrueToObject(o, "cancel_requested");
    add_timings(o, j);
    char url[96];
    snprintf(url, sizeof url, "/v1/jobs/%s/image", j->id);
    if (j->status == JOB_COMPLETED)
        cJSON_AddStringToObject(o, "image_url", url);
    else
        cJSON_AddNullToObject(o, "image_url");
    if (j->error && j->status != JOB_COMPLETED)
        cJSON_AddStringToObject(o, "error", j->error);
    else
        cJSON_AddNullToObject(o, "error");
    add_webhook(o, j);
    api_add_preview(o, j);
    add_links(o, j->id);
    return o;
}

static void view_json(void *user, const job *j, const job_extra *x) {
    *(cJSON **)user = api_job_json(j, x);
}

static enum MHD_Result no_job(http_req *r) {
    return http_error(r, 404, "not_found", "no such job (unknown id, or deleted after retention)",
                      NULL);
}

/* ---- /v1/jobs ---- */

int api_retry_after(jobs *js) {
    jobs_stats st;
    jobs_get_stats(js, &st);
    job_params one = {.width = 512, .height = 512, .steps = 20}; /* "a typical job" */
    double ms = jobs_estimate_ms(js, &one);
    /* about when the next slot frees: the queue ahead spread over its jobs */
    double s = ms > 0 ? ms / (st.queue_depth + st.running + 1) / 1000.0 : 5;
    return s < 1 ? 1 : s > 3600 ? 3600 : (int)ceil(s);
}

typedef struct {
    cJSON *out;
} accepted_view;

static void view_accepted(void *user, const job *j, const job_extra *x) {
    cJSON *o = ((accepted_view *)user)->out;
    cJSON_AddNumberToObject(o, "queue_position", x->queue_position);
    add_time(o, "created_at", j->created_ms);
    add_progress(o, j, x);
}

/* The 202 answer: id, status, queue position, created_at, progress, seed, links. */
static struct MHD_Response *accepted_response(jobs *js, const char *id, uint64_t seed) {
    cJSON *out = cJSON_CreateObject();
    accepted_view v = {out};
    if (out) {
        cJSON_AddStringToObject(out, "id", id);
        cJSON_AddStringToObject(out, "status", "pending");
        jobs_view(js, id, view_accepted, &v); /* queue_position, created_at, progress */
        char num[32];                         /* exact: cJSON prints only 15 significant digits */
        snprintf(num, sizeof num, "%llu", (unsigned long long)seed);
        cJSON_AddRawToObject(out, "seed", num);
        add_links(out, id);
    }
    char *text = out ? cJSON_PrintUnformatted(out) : NULL;
    cJSON_Delete(out);
    struct MHD_Response *resp =
        text ? MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE) : NULL;
    char loc[64];
    snprintf(loc, sizeof loc, "/v1/jobs/%s", id);
    if (resp)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_LOCATION, loc);
    else
        free(text);
    return resp;
}

int http_prefer_wait(http_req *r) {
    const char *p = http_header(r, "Prefer");
    for (const char *t = p; t && (t = strstr(t, "wait"));) {
        int start = t == p || strchr(" ,;", t[-1]);
        const char *after = t + 4;
        if (start && (*after == 0 || strchr(" ,;", *after)))
            return 60; /* "wait" alone: as long as the server allows */
        if (start && *after == '=') {
            char *end;
            long v = strtol(after + 1, &end, 10);
            if (end != after + 1 && v >= 0) return v > 60 ? 60 : (int)v;
        }
        t = after;
    }
    return 0;
}

typedef struct {
    char id[37];
    uint64_t seed;
    int64_t deadline;
    int wait_s;
} wait_ctx;

typedef struct {
    int done;
    cJSON *doc;
} done_view;

static void view_done(void *user, const job *j, const job_extra *x) {
    done_view *v = user;
    v->done = j->status >= JOB_COMPLETED;
    if (v->done) v->doc = api_job_json(j, x);
}

static enum MHD_Result send_with_preference(http_req *r, unsigned status, struct MHD_Response *resp,
                                            int wait_s) {
    char pa[32];
    snprintf(pa, sizeof pa, "wait=%d", wait_s);
    if (resp) MHD_add_response_header(resp, "Preference-Applied", pa);
    return http_send(r, status, resp, "application/json", "no-store");
}

static enum MHD_Result create_resume(http_req *r);

static enum MHD_Result create_resume_first(http_req *r, wait_ctx *w) {
    r->park_ctx = w, r->park_free = free;
    return create_resume(r);
}

/* Prefer: wait: the finished job (200) once it is done, else the 202 when
 * the wait runs out (parked meanwhile, no HTTP thread held). */
static enum MHD_Result create_resume(http_req *r) {
    wait_ctx *w = r->park_ctx;
    jobs *js = server_jobs(r->srv);
    if (!js || server_stopping(r->srv)) return http_not_ready(r);
    done_view v = {0};
    if (jobs_view(js, w->id, view_done, &v)) return no_job(r);
    if (v.done) {
        char *text = v.doc ? cJSON_PrintUnformatted(v.doc) : NULL;
        cJSON_Delete(v.doc);
        struct MHD_Response *resp =
            text ? MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE)
                 : NULL;
        if (!resp) free(text);
        return send_with_preference(r, 200, resp, w->wait_s);
    }
    if (jobs_mono_ms() >= w->deadline)
        return send_with_preference(r, 202, accepted_response(js, w->id, w->seed), w->wait_s);
    return http_park(r, create_resume, w, free);
}

enum MHD_Result api_create(http_req *r) {
    enum MHD_Result answered = MHD_NO;
    cJSON *body = http_body_json(r, &answered);
    if (!body) return answered;
    http_made_uploads made = {0}; /* inline images: removed again if the job is not accepted */
    if (http_resolve_images(r, body, &made, &answered)) {
        cJSON_Delete(body);
        return answered;
    }
    job_params p;
    const char *field = NULL;
    easel_err e = params_parse(body, &server_cfg(r->srv)->policy, 0, &p, &field);
    if (e) {
        char msg[300], f[64];
        snprintf(msg, sizeof msg, "%s", easel_errmsg());
        snprintf(f, sizeof f, "%s", field ? field : "body");
        cJSON_Delete(body);
        http_made_uploads_drop(r, &made);
        return http_error(r, 400, "invalid_field", msg, f);
    }
    cJSON_Delete(body);
    const server_config *cfg = server_cfg(r->srv);
    char why[300];
    if (p.webhook &&
        webhooks_check_url(p.webhook, cfg->webhook_allow, cfg->n_webhook_allow, why, sizeof why)) {
        params_clear(&p);
        http_made_uploads_drop(r, &made);
        char msg[400];
        snprintf(msg, sizeof msg, "webhook: %s", why);
        return http_error(r, 400, "invalid_field", msg, "webhook");
    }
    jobs *js = server_jobs(r->srv);
    char id[37];
    uint64_t seed = p.seed;
    if ((e = jobs_submit(js, &p, id))) {
        params_clear(&p);
        http_made_uploads_drop(r, &made);
        return http_refuse_submit(r, e);
    }
    int wait_s = http_prefer_wait(r);
    if (wait_s > 0) {
        wait_ctx *w = calloc(1, sizeof *w);
        if (w) {
            memcpy(w->id, id, 37);
            w->seed = seed;
            w->wait_s = wait_s;
            w->deadline = jobs_mono_ms() + wait_s * 1000LL;
            return create_resume_first(r, w);
        }
    }
    return http_send(r, 202, accepted_response(js, id, seed), "application/json", "no-store");
}

enum MHD_Result api_get(http_req *r) {
    if (!http_is_job_id(r->arg)) return no_job(r);
    cJSON *o = NULL;
    if (jobs_view(server_jobs(r->srv), r->arg, view_json, &o)) return no_job(r);
    return http_json(r, 200, o);
}

typedef struct {
    cJSON *arr;
} list_ctx;

static void list_add(void *user, const job *j, const job_extra *x) {
    list_ctx *c = user;
    cJSON *o = api_job_json(j, x);
    if (o) cJSON_AddItemToArray(c->arr, o);
}

enum MHD_Result api_list(http_req *r) {
    const char *st = http_query(r, "status"), *lim = http_query(r, "limit");
    int filter = -1;
    if (st && (filter = job_status_parse(st)) < 0)
        return http_error(r, 400, "invalid_field",
                          "status: one of pending, processing, completed, failed, canceled",
                          "status");
    long limit = 20;
    if (lim) {
        char *end;
        limit = strtol(lim, &end, 10);
        if (!*lim || *end || limit < 1 || limit > 100)
            return http_error(r, 400, "invalid_field", "limit: an integer in [1, 100]", "limit");
    }
    cJSON *o = cJSON_CreateObject();
    list_ctx c = {o ? cJSON_AddArrayToObject(o, "jobs") : NULL};
    if (!c.arr) {
        cJSON_Delete(o);
        return http_error(r, 500, "out_of_memory", "out of memory", NULL);
    }
    jobs_list(server_jobs(r->srv), filter, (int)limit, list_add, &c);
    cJSON_AddNumberToObject(o, "count", cJSON_GetArraySize(c.arr));
    return http_json(r, 200, o);
}

enum MHD_Result api_cancel(http_req *r) {
    if (!http_is_job_id(r->arg)) return no_job(r);
    jobs *js = server_jobs(r->srv);
    job_status after;
    easel_err e = jobs_cancel(js, r->arg, &after);
    if (e == EASEL_ENOTFOUND) return no_job(r);
    if (e == EASEL_EIO)
        return http_error_retry(r, 503, "store_unavailable", easel_errmsg(), NULL, 5);
    if (e) return http_error(r, 409, "already_finished", easel_errmsg(), NULL);
    cJSON *o = NULL;
    if (jobs_view(js, r->arg, view_json, &o)) return no_job(r);
    return http_json(r, 200, o);
}

typedef struct {
    job_status status;
    char image[200];
} image_view;

static void view_image(void *user, const job *j, const job_extra *x) {
    (void)x;
    image_view *v = user;
    v->status = j->status;
    snprintf(v->image, sizeof v->image, "%s", j->image ? j->image : "");
}

enum MHD_Result api_image(http_req *r) {
    if (!http_is_job_id(r->arg)) return no_job(r);
    image_view v = {0};
    if (jobs_view(server_jobs(r->srv), r->arg, view_image, &v)) return no_job(r);
    if (v.status != JOB_COMPLETED) { /* several nodes: another may have just finished it */
        jobs_refresh(server_jobs(r->srv), r->arg);
        jobs_view(server_jobs(r->srv), r->arg, view_image, &v);
    }
    if (v.status != JOB_COMPLETED || !v.image[0]) {
        char msg[96];
        snprintf(msg, sizeof msg, "the job is %s; the image exists once it is completed",
                 job_status_name(v.status));
        return http_error(r, 409, "not_completed", msg, NULL);
    }
    char etag[96];
    snprintf(etag, sizeof etag, "\"%.36s\"", r->arg);
    return http_image(r, v.image, etag);
}

/* ---- GET /v1/jobs/{id}/preview ---- */

typedef struct {
    int found;
    uint8_t *data;
    size_t len;
    const char *mime;
    unsigned seq;
    job_status status;
    char owner[STORE_OWNER_MAX]; /* another node runs it (a shared store): its lease owner */
} preview_view;

static void view_preview(void *user, const job *j, const job_extra *x) {
    (void)x;
    preview_view *v = user;
    v->found = 1;
    v->status = j->status;
    if (j->status == JOB_PROCESSING && j->worker < 0 && j->owner[0])
        snprintf(v->owner, sizeof v->owner, "%s", j->owner);
    if (!j->preview.data || !(v->data = malloc(j->preview.len))) return;
    memcpy(v->data, j->preview.data, j->preview.len);
    v->len = j->preview.len, v->mime = j->preview.mime, v->seq = j->preview.seq;
}

/* The latest live preview while the job runs; 404 before the first and once
 * it finished (previews are dropped then: the image is at .../image). The
 * ETag names the preview, so a poller's If-None-Match gets 304 until the
 * next one. */
enum MHD_Result api_preview(http_req *r) {
    if (!http_is_job_id(r->arg)) return no_job(r);
    preview_view v = {0};
    if (jobs_view(server_jobs(r->srv), r->arg, view_preview, &v) || !v.found) return no_job(r);
    if (!v.data) {
        char msg[240];
        if (v.owner[0]) /* previews stay in the memory of the node that renders */
            snprintf(msg, sizeof msg,
                     "the job runs on another node (%.*s): its live previews are served there",
                     (int)strcspn(v.owner, "/"), v.owner);
        else
            snprintf(msg, sizeof msg,
                     v.status <= JOB_PROCESSING
                         ? "no preview yet (the job is %s; the first comes after a step)"
                         : "the job is %s: previews are dropped when a job finishes",
                     job_status_name(v.status));
        return http_error(r, 404, "no_preview", msg, NULL);
    }
    char etag[64];
    snprintf(etag, sizeof etag, "\"%.36s.%u\"", r->arg, v.seq);
    const char *inm = http_header(r, MHD_HTTP_HEADER_IF_NONE_MATCH);
    struct MHD_Response *resp;
    unsigned status = 200;
    if (inm && (strstr(inm, etag) || !strcmp(inm, "*"))) {
        free(v.data);
        resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
        status = 304;
    } else {
        resp = MHD_create_response_from_buffer(v.len, v.data, MHD_RESPMEM_MUST_FREE);
        if (!resp) free(v.data);
    }
    if (resp) MHD_add_response_header(resp, MHD_HTTP_HEADER_ETAG, etag);
    return http_send(r, status, resp, status == 200 ? v.mime : NULL, "no-cache");
}

/* ---- Server-Sent Events ---- */

struct sse_stream {
    server *srv;
    struct MHD_Connection *conn;
    char id[37];
    unsigned version, preview_seq;
    int started, final_queued, done;
    char *out;
    size_t len, off;
    int64_t last_write_ms;
};

typedef struct {
    sse_stream *st;
    cJSON *json, *preview;
    int final;
} sse_view;

/* A new preview as its own event: {id, step, steps, width, height, url, seq}. */
static cJSON *preview_event(const job *j) {
    cJSON *o = cJSON_CreateObject();
    char url[96];
    if (!o) return NULL;
    snprintf(url, sizeof url, "/v1/jobs/%s/preview", j->id);
    cJSON_AddStringToObject(o, "id", j->id);
    cJSON_AddNumberToObject(o, "step", j->preview.step);
    cJSON_AddNumberToObject(o, "steps", j->preview.steps);
    cJSON_AddNumberToObject(o, "width", j->preview.width);
    cJSON_AddNumberToObject(o, "height", j->preview.height);
    cJSON_AddStringToObject(o, "url", url);
    cJSON_AddNumberToObject(o, "seq", j->preview.seq);
    return o;
}

static void sse_check(void *user, const job *j, const job_extra *x) {
    sse_view *v = user;
    if (v->st->started && j->version == v->st->version) return;
    v->st->version = j->version;
    v->json = api_job_json(j, x);
    v->final = j->status >= JOB_COMPLETED;
    if (j->preview.data && j->preview.seq != v->st->preview_seq) {
        v->st->preview_seq = j->preview.seq;
        v->preview = preview_event(j);
    }
}

/* Queues event [+ event2] (data texts) as the next bytes to send. */
static int sse_queue2(sse_stream *st, const char *event, const char *data, const char *event2,
                      const char *data2) {
    size_t n = strlen(event) + strlen(data) + 64 + (event2 ? strlen(event2) + strlen(data2) : 0);
    char *buf = malloc(n);
    if (!buf) return -1;
    int k = snprintf(buf, n, "event: %s\ndata: %s\n\n", event, data);
    if (event2) k += snprintf(buf + k, n - (size_t)k, "event: %s\ndata: %s\n\n", event2, data2);
    st->len = (size_t)k;
    free(st->out);
    st->out = buf;
    st->off = 0;
    st->last_write_ms = jobs_now_ms();
    return 0;
}

static int sse_queue(sse_stream *st, const char *event, const char *data) {
    return sse_queue2(st, event, data, NULL, NULL);
}

/* Fills st->out with the next event if there is one; 1 if queued, 0 if none,
 * -1 when the stream should end. */
static int sse_next(sse_stream *st) {
    jobs *js = server_jobs(st->srv);
    if (st->final_queued || !js || server_stopping(st->srv)) return -1;
    sse_view v = {st, NULL, NULL, 0};
    if (jobs_view(js, st->id, sse_check, &v)) return -1;
    st->started = 1;
    if (v.json) { /* a new preview goes first: a client draws it, then the progress */
        char *text = cJSON_PrintUnformatted(v.json);
        char *ptext = v.preview ? cJSON_PrintUnformatted(v.preview) : NULL;
        cJSON_Delete(v.json);
        cJSON_Delete(v.preview);
        if (!text) return free(ptext), -1;
        const char *ev = v.final ? "final" : "progress";
        int rc = ptext ? sse_queue2(st, "preview", ptext, ev, text) : sse_queue(st, ev, text);
        free(text);
        free(ptext);
        st->final_queued = v.final;
        return rc < 0 ? -1 : 1;
    }
    if (jobs_now_ms() - st->last_write_ms > 15000)
        return sse_queue(st, "keepalive", "{}") < 0 ? -1 : 1;
    return 0;
}

static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    sse_stream *st = cls;
    if (st->off >= st->len) {
        int rc = sse_next(st);
        if (rc < 0) return MHD_CONTENT_READER_END_OF_STREAM;
        if (rc == 0) {
            server_sse_suspend(st->srv, st, st->conn);
            return 0;
        }
    }
    size_t n = st->len - st->off < max ? st->len - st->off : max;
    memcpy(buf, st->out + st->off, n);
    st->off += n;
    return (ssize_t)n;
}

static void sse_free(void *cls) {
    sse_stream *st = cls;
    free(st->out);
    free(st);
}

enum MHD_Result api_events(http_req *r) {
    if (!http_is_job_id(r->arg)) return no_job(r);
    image_view v;
    if (jobs_view(server_jobs(r->srv), r->arg, view_image, &v)) return no_job(r);
    sse_stream *st = calloc(1, sizeof *st);
    if (!st) return http_error(r, 500, "out_of_memory", "out of memory", NULL);
    st->srv = r->srv;
    st->conn = r->conn;
    memcpy(st->id, r->arg, 37);
    st->last_write_ms = jobs_now_ms();
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, sse_read, st, sse_free);
    if (!resp) {
        free(st);
        return http_error(r, 500, "out_of_memory", "out of memory", NULL);
    }
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    return http_send(r, 200, resp, "text/event-stream", "no-store");
}

/* ---- /v1/models ---- */

/* OpenAI's model list ({object: "list", data: [{id, object, created, owned_by}]})
 * with what easel knows about the model beside it (family, defaults, ...). */
enum MHD_Result api_models(http_req *r) {
    cJSON *o = cJSON_CreateObject(), *m = server_model_json(r->srv);
    cJSON *data = o ? cJSON_AddArrayToObject(o, "data") : NULL;
    if (!data || !m) {
        cJSON_Delete(o), cJSON_Delete(m);
        return http_error(r, 500, "out_of_memory", "out of memory", NULL);
    }
    cJSON_AddStringToObject(o, "object", "list");
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", 0);
    cJSON_AddStringToObject(m, "owned_by", "easel");
    cJSON_AddItemToArray(data, m);
    return http_json(r, 200, o);
}

/* ---- /healthz and /metrics ---- */

/* Node names from the store, safe in JSON and in a Prometheus label. */
static void clean_name(char *out, size_t n, const char *in) {
    size_t k = 0;
    for (; in[k] && k + 1 < n; k++)
        out[k] = strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-", in[k])
                     ? in[k]
                     : '_';
    out[k] = 0;
}

/* The queue as a whole (a shared store): what every node sees alike. */
static void add_queue_json(cJSON *o, const jobs_stats *st) {
    cJSON *q = cJSON_AddObjectToObject(o, "queue");
    if (!q) return;
    const store_queue_info *qi = &st->queue;
    cJSON_AddNumberToObject(q, "pending", qi->pending);
    cJSON_AddNumberToObject(q, "processing", qi->processing);
    cJSON_AddNumberToObject(q, "lease_expiries", (double)qi->lease_expiries);
    cJSON_AddNumberToObject(q, "rescues", (double)qi->rescues);
    cJSON_AddNumberToObject(q, "as_of_ms_ago",
                            st->queue_ms ? (double)(jobs_now_ms() - st->queue_ms) : -1);
    cJSON *nodes = cJSON_AddArrayToObject(q, "nodes");
    for (int i = 0; nodes && i < qi->n_nodes; i++) {
        cJSON *n = cJSON_CreateObject();
        char name[STORE_OWNER_MAX];
        clean_name(name, sizeof name, qi->nodes[i].node);
        cJSON_AddStringToObject(n, "node", name);
        cJSON_AddNumberToObject(n, "workers", qi->nodes[i].workers);
        cJSON_AddNumberToObject(n, "running", qi->nodes[i].running);
        cJSON_AddBoolToObject(n, "alive", qi->nodes[i].seen_ms > 0);
        cJSON_AddItemToArray(nodes, n);
    }
    cJSON *me = cJSON_AddObjectToObject(o, "this_node");
    if (!me) return;
    cJSON_AddNumberToObject(me, "rescued", (double)st->rescued);
    cJSON_AddNumberToObject(me, "leases_lost", (double)st->leases_lost);
    cJSON_AddBoolToObject(me, "wakeups", st->listening);
}

/* 200 when the service takes and runs jobs; 503 while starting, stopping,
 * or degraded: a worker is not running, the store cannot write, or the GPU
 * is lost after a kernel fault (the reasons are listed, so a load
 * balancer's log says why). */
enum MHD_Result api_healthz(http_req *r) {
    jobs *js = server_jobs(r->srv);
    int up = js && !server_stopping(r->srv) && jobs_accepting(js);
    jobs_stats st;
    if (js) jobs_get_stats(js, &st);
    int degraded = up && (st.workers_live < st.workers || !st.store_ok || st.device_lost);
    cJSON *o = cJSON_CreateObject();
    if (!o) return MHD_NO;
    cJSON_AddStringToObject(o, "status",
                            degraded                        ? "degraded"
                            : up                            ? "ok"
                            : server_stopping(r->srv) || js ? "stopping"
                                                            : "starting");
    cJSON_AddBoolToObject(o, "ready", up && !degraded);
    cJSON_AddStringToObject(o, "version", EASEL_VERSION);
    const char *model = js ? server_model(r->srv) : server_cfg(r->srv)->model_desc;
    if (model && model[0]) cJSON_AddStringToObject(o, "model", model);
    cJSON *mi = js ? server_model_json(r->srv) : NULL;
    if (mi) {
        const cJSON *notice = cJSON_GetObjectItemCaseSensitive(mi, "notice");
        if (cJSON_IsString(notice)) cJSON_AddStringToObject(o, "notice", notice->valuestring);
        cJSON_AddItemToObject(o, "model_info", mi);
    }
    if (js) {
        cJSON_AddNumberToObject(o, "workers", st.workers);
        cJSON_AddNumberToObject(o, "workers_live", st.workers_live);
        cJSON_AddNumberToObject(o, "running", st.running);
        cJSON_AddNumberToObject(o, "queue_depth", st.queue_depth);
        cJSON_AddNumberToObject(o, "queue_max", st.queue_max);
        cJSON_AddNumberToObject(o, "jobs_retained", st.retained);
        if (st.max_jobs > 0) cJSON_AddNumberToObject(o, "max_jobs", st.max_jobs);
        cJSON_AddBoolToObject(o, "store_ok", st.store_ok);
        cJSON_AddStringToObject(o, "store", st.store_kind ? st.store_kind : "?");
        cJSON_AddStringToObject(o, "node", st.node);
        if (st.shared) add_queue_json(o, &st);
        cJSON *why = degraded ? cJSON_AddArrayToObject(o, "problems") : NULL;
        char msg[300];
        if (why && st.workers_live < st.workers) {
            snprintf(msg, sizeof msg, "%d of %d workers running", st.workers_live, st.workers);
            cJSON_AddItemToArray(why, cJSON_CreateString(msg));
        }
        if (why && !st.store_ok) {
            snprintf(msg, sizeof msg, "the job store cannot write: %s", st.store_error);
            cJSON_AddItemToArray(why, cJSON_CreateString(msg));
        }
        if (why && st.device_lost) {
            snprintf(msg, sizeof msg, "the GPU is unusable until the process restarts: %s",
                     st.device_error);
            cJSON_AddItemToArray(why, cJSON_CreateString(msg));
        }
    }
    return http_json(r, up && !degraded ? 200 : 503, o);
}

static size_t put(char *buf, size_t n, size_t off, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static size_t put(char *buf, size_t n, size_t off, const char *fmt, ...) {
    if (off >= n) return off;
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(buf + off, n - off, fmt, ap);
    va_end(ap);
    return w > 0 ? off + (size_t)w : off;
}

static size_t histogram(char *buf, size_t n, size_t off, const char *name, const char *help,
                        const double *bounds, const uint64_t *counts, int nb, uint64_t total,
                        double sum) {
    off = put(buf, n, off, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    for (int i = 0; i < nb - 1; i++)
        off = put(buf, n, off, "%s_bucket{le=\"%g\"} %" PRIu64 "\n", name, bounds[i], counts[i]);
    off = put(buf, n, off, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n", name, total);
    off = put(buf, n, off, "%s_sum %.6f\n%s_count %" PRIu64 "\n", name, sum, name, total);
    return off;
}

/* The queue as a whole (every node reports the same) and this node's part. */
static size_t queue_metrics(const jobs_stats *st, char *buf, size_t n, size_t off) {
    const store_queue_info *q = &st->queue;
    off = put(buf, n, off,
              "# HELP easel_queue_jobs Jobs of the whole queue (every node) by status.\n"
              "# TYPE easel_queue_jobs gauge\neasel_queue_jobs{status=\"pending\"} %d\n"
              "easel_queue_jobs{status=\"processing\"} %d\n"
              "# HELP easel_queue_lease_expiries_total Leases found expired by any node.\n"
              "# TYPE easel_queue_lease_expiries_total counter\n"
              "easel_queue_lease_expiries_total %lld\n"
              "# HELP easel_queue_rescues_total Expired jobs any node returned to pending.\n"
              "# TYPE easel_queue_rescues_total counter\neasel_queue_rescues_total %lld\n"
              "# HELP easel_queue_running Jobs processing, by node.\n"
              "# TYPE easel_queue_running gauge\n",
              q->pending, q->processing, (long long)q->lease_expiries, (long long)q->rescues);
    for (int i = 0; i < q->n_nodes; i++) {
        char name[STORE_OWNER_MAX];
        clean_name(name, sizeof name, q->nodes[i].node);
        off = put(buf, n, off, "easel_queue_running{node=\"%s\"} %d\n", name, q->nodes[i].running);
    }
    off = put(buf, n, off,
              "# HELP easel_queue_node_workers Workers by live node.\n"
              "# TYPE easel_queue_node_workers gauge\n");
    for (int i = 0; i < q->n_nodes; i++) {
        char name[STORE_OWNER_MAX];
        clean_name(name, sizeof name, q->nodes[i].node);
        if (q->nodes[i].seen_ms)
            off = put(buf, n, off, "easel_queue_node_workers{node=\"%s\"} %d\n", name,
                      q->nodes[i].workers);
    }
    off = put(buf, n, off,
              "# HELP easel_node_rescued_total Expired leases this node's rescuer handled.\n"
              "# TYPE easel_node_rescued_total counter\neasel_node_rescued_total %" PRIu64 "\n"
              "# HELP easel_node_leases_lost_total Runs here whose lease another node took.\n"
              "# TYPE easel_node_leases_lost_total counter\neasel_node_leases_lost_total %" PRIu64
              "\n# HELP easel_node_remote_changes_total Store rows applied to this node's cache.\n"
              "# TYPE easel_node_remote_changes_total counter\n"
              "easel_node_remote_changes_total %" PRIu64 "\n"
              "# HELP easel_store_wakeups Whether this node hears the store's wake-ups.\n"
              "# TYPE easel_store_wakeups gauge\neasel_store_wakeups %d\n",
              st->rescued, st->leases_lost, st->remote_changes, st->listening);
    return off;
}

static size_t jobs_metrics(jobs *js, char *buf, size_t n, size_t off) {
    jobs_stats st;
    jobs_get_stats(js, &st);
    off = put(buf, n, off,
              "# HELP easel_jobs Jobs in the table by status.\n# TYPE easel_jobs gauge\n");
    for (int i = 0; i < JOB_STATUS_COUNT; i++)
        off = put(buf, n, off, "easel_jobs{status=\"%s\"} %d\n", job_status_name((job_status)i),
                  st.by_status[i]);
    off = put(buf, n, off,
              "# HELP easel_queue_depth Pending jobs.\n# TYPE easel_queue_depth gauge\n"
              "easel_queue_depth %d\n# HELP easel_queue_max Queue capacity.\n"
              "# TYPE easel_queue_max gauge\neasel_queue_max %d\n"
              "# HELP easel_jobs_running Jobs processing now.\n# TYPE easel_jobs_running gauge\n"
              "easel_jobs_running %d\n# HELP easel_workers Worker count configured.\n"
              "# TYPE easel_workers gauge\neasel_workers %d\n"
              "# HELP easel_workers_live Worker threads running now.\n"
              "# TYPE easel_workers_live gauge\neasel_workers_live %d\n"
              "# HELP easel_jobs_retained Jobs in the table (all statuses).\n"
              "# TYPE easel_jobs_retained gauge\neasel_jobs_retained %d\n"
              "# HELP easel_store_ok Whether the job store can write (0: degraded).\n"
              "# TYPE easel_store_ok gauge\neasel_store_ok %d\n",
              st.queue_depth, st.queue_max, st.running, st.workers, st.workers_live, st.retained,
              st.store_ok);
    off = put(buf, n, off,
              "# HELP easel_worker_restarts_total Workers restarted after exiting.\n"
              "# TYPE easel_worker_restarts_total counter\neasel_worker_restarts_total %" PRIu64
              "\n# HELP easel_store_errors_total Failed job-store writes.\n"
              "# TYPE easel_store_errors_total counter\neasel_store_errors_total %" PRIu64
              "\n# HELP easel_jobs_evicted_total Finished jobs removed early for --max-jobs.\n"
              "# TYPE easel_jobs_evicted_total counter\neasel_jobs_evicted_total %" PRIu64
              "\n# HELP easel_orphan_images_removed_total Images no job referred to, removed.\n"
              "# TYPE easel_orphan_images_removed_total counter\n"
              "easel_orphan_images_removed_total %" PRIu64 "\n",
              st.worker_restarts, st.store_errors, st.evicted, st.orphans_removed);
    off = put(buf, n, off,
              "# HELP easel_webhooks_total Webhook delivery attempts by outcome.\n"
              "# TYPE easel_webhooks_total counter\n"
              "easel_webhooks_total{result=\"delivered\"} %" PRIu64 "\n"
              "easel_webhooks_total{result=\"retry\"} %" PRIu64 "\n"
              "easel_webhooks_total{result=\"failed\"} %" PRIu64 "\n",
              st.webhooks_delivered, st.webhooks_retried, st.webhooks_failed);
    off = put(buf, n, off,
              "# HELP easel_jobs_finished_total Jobs finished since start by outcome.\n"
              "# TYPE easel_jobs_finished_total counter\n"
              "easel_jobs_finished_total{status=\"completed\"} %" PRIu64 "\n"
              "easel_jobs_finished_total{status=\"failed\"} %" PRIu64 "\n"
              "easel_jobs_finished_total{status=\"canceled\"} %" PRIu64 "\n"
              "# HELP easel_jobs_submitted_total Jobs accepted since start.\n"
              "# TYPE easel_jobs_submitted_total counter\neasel_jobs_submitted_total %" PRIu64 "\n"
              "# HELP easel_previews_total Live previews published.\n"
              "# TYPE easel_previews_total counter\neasel_previews_total %" PRIu64 "\n",
              st.completed, st.failed, st.canceled, st.submitted, st.previews);
    char node[STORE_OWNER_MAX];
    clean_name(node, sizeof node, st.node);
    off = put(buf, n, off,
              "# HELP easel_node_info This node and its store.\n# TYPE easel_node_info gauge\n"
              "easel_node_info{node=\"%s\",store=\"%s\"} 1\n",
              node, st.store_kind ? st.store_kind : "?");
    if (st.shared) off = queue_metrics(&st, buf, n, off);
    double bounds_s[JOBS_STEP_BUCKETS];
    for (int i = 0; i < JOBS_STEP_BUCKETS; i++)
        bounds_s[i] = jobs_step_bounds_ms[i] / 1000.0;
    off = histogram(buf, n, off, "easel_step_seconds", "Time of one sampling step.", bounds_s,
                    st.step_hist, JOBS_STEP_BUCKETS, st.step_count, st.step_sum_ms / 1000.0);
    off = histogram(buf, n, off, "easel_job_seconds", "Time from start to completion of a job.",
                    jobs_time_bounds_s, st.time_hist, JOBS_TIME_BUCKETS, st.time_count,
                    st.time_sum_s);
    return off;
}

enum MHD_Result api_metrics(http_req *r) {
    size_t n = 64 * 1024, off = 0;
    char *buf = malloc(n);
    if (!buf) return http_error(r, 500, "out_of_memory", "out of memory", NULL);
    jobs *js = server_jobs(r->srv);
    off = put(buf, n, off,
              "# HELP easel_ready Whether the service takes jobs.\n"
              "# TYPE easel_ready gauge\neasel_ready %d\n",
              js ? 1 : 0);
    if (js) off = jobs_metrics(js, buf, n, off);
    if (off < n) off += (size_t)server_metrics_text(r->srv, buf + off, n - off);
    if (off >= n) off = n - 1;
    struct MHD_Response *resp = MHD_create_response_from_buffer(off, buf, MHD_RESPMEM_MUST_FREE);
    if (!resp) free(buf);
    return http_send(r, 200, resp, "text/plain; version=0.0.4; charset=utf-8", "no-store");
}
