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

/* ---- the job as JSON ---- */

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
}

cJSON *api_job_json(const job *j, const job_extra *x) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "id", j->id);
    cJSON_AddStringToObject(o, "status", job_status_name(j->status));
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
    job_params one = {.width = 512, .height = 512, .steps = 20};
    double ms = jobs_estimate_ms(js, &one);
    /* about when the next slot frees: the queue ahead spread over its jobs */
    double s = ms > 0 ? ms / (st.queue_depth + st.running + 1) / 1000.0 : 5;
    return s < 1 ? 1 : s > 3600 ? 3600 : (int)ceil(s);
}

static enum MHD_Result refuse(http_req *r, easel_err e) {
    if (e == EASEL_EFULL)
        return http_error_retry(r, 429, "queue_full", easel_errmsg(), NULL,
                                api_retry_after(server_jobs(r->srv)));
    if (e == EASEL_ECANCELED) return http_not_ready(r);
    return http_error(r, 500, "store_failed", easel_errmsg(), NULL);
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

enum MHD_Result api_create(http_req *r) {
    enum MHD_Result answered = MHD_NO;
    cJSON *body = http_body_json(r, &answered);
    if (!body) return answered;
    job_params p;
    const char *field = NULL;
    easel_err e = params_parse(body, &server_cfg(r->srv)->defaults, 0, &p, &field);
    if (e) {
        char msg[300], f[64];
        snprintf(msg, sizeof msg, "%s", easel_errmsg());
        snprintf(f, sizeof f, "%s", field ? field : "body");
        cJSON_Delete(body);
        return http_error(r, 400, "invalid_field", msg, f);
    }
    cJSON_Delete(body);
    jobs *js = server_jobs(r->srv);
    char id[37];
    uint64_t seed = p.seed;
    if ((e = jobs_submit(js, &p, id))) {
        params_clear(&p);
        return refuse(r, e);
    }
    cJSON *out = cJSON_CreateObject();
    accepted_view v = {out};
    if (out) {
        cJSON_AddStringToObject(out, "id", id);
        cJSON_AddStringToObject(out, "status", "pending");
        jobs_view(js, id, view_accepted, &v); /* queue_position, created_at, progress */
        char num[32]; /* exact: cJSON prints only 15 significant digits */
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
    return http_send(r, 202, resp, "application/json", "no-store");
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
    if (v.status != JOB_COMPLETED || !v.image[0]) {
        char msg[96];
        snprintf(msg, sizeof msg, "the job is %s; the image exists once it is completed",
                 job_status_name(v.status));
        return http_error(r, 409, "not_completed", msg, NULL);
    }
    char path[4096], etag[96];
    snprintf(path, sizeof path, "%s/%s", server_cfg(r->srv)->images_dir, v.image);
    snprintf(etag, sizeof etag, "\"%.36s\"", r->arg);
    return http_file(r, path, "image/png", etag);
}

/* ---- Server-Sent Events ---- */

struct sse_stream {
    server *srv;
    struct MHD_Connection *conn;
    char id[37];
    unsigned version;
    int started, final_queued, done;
    char *out;
    size_t len, off;
    int64_t last_write_ms;
};

typedef struct {
    sse_stream *st;
    cJSON *json;
    int final;
} sse_view;

static void sse_check(void *user, const job *j, const job_extra *x) {
    sse_view *v = user;
    if (v->st->started && j->version == v->st->version) return;
    v->st->version = j->version;
    v->json = api_job_json(j, x);
    v->final = j->status >= JOB_COMPLETED;
}

static int sse_queue(sse_stream *st, const char *event, const char *data) {
    size_t n = strlen(event) + strlen(data) + 32;
    char *buf = malloc(n);
    if (!buf) return -1;
    st->len = (size_t)snprintf(buf, n, "event: %s\ndata: %s\n\n", event, data);
    free(st->out);
    st->out = buf;
    st->off = 0;
    st->last_write_ms = jobs_now_ms();
    return 0;
}

/* Fills st->out with the next event if there is one; 1 if queued, 0 if none,
 * -1 when the stream should end. */
static int sse_next(sse_stream *st) {
    jobs *js = server_jobs(st->srv);
    if (st->final_queued || !js || server_stopping(st->srv)) return -1;
    sse_view v = {st, NULL, 0};
    if (jobs_view(js, st->id, sse_check, &v)) return -1;
    st->started = 1;
    if (v.json) {
        char *text = cJSON_PrintUnformatted(v.json);
        cJSON_Delete(v.json);
        if (!text) return -1;
        int rc = sse_queue(st, v.final ? "final" : "progress", text);
        free(text);
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

/* ---- /healthz and /metrics ---- */

enum MHD_Result api_healthz(http_req *r) {
    jobs *js = server_jobs(r->srv);
    int ready = js && !server_stopping(r->srv) && jobs_accepting(js);
    cJSON *o = cJSON_CreateObject();
    if (!o) return MHD_NO;
    cJSON_AddStringToObject(o, "status",
                            ready                           ? "ok"
                            : server_stopping(r->srv) || js ? "stopping"
                                                            : "starting");
    cJSON_AddBoolToObject(o, "ready", ready);
    cJSON_AddStringToObject(o, "version", EASEL_VERSION);
    const char *model = js ? server_model(r->srv) : server_cfg(r->srv)->model_desc;
    if (model && model[0]) cJSON_AddStringToObject(o, "model", model);
    if (js) {
        jobs_stats st;
        jobs_get_stats(js, &st);
        cJSON_AddNumberToObject(o, "workers", st.workers);
        cJSON_AddNumberToObject(o, "running", st.running);
        cJSON_AddNumberToObject(o, "queue_depth", st.queue_depth);
        cJSON_AddNumberToObject(o, "queue_max", st.queue_max);
    }
    return http_json(r, ready ? 200 : 503, o);
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
              "easel_jobs_running %d\n# HELP easel_workers Worker count.\n"
              "# TYPE easel_workers gauge\neasel_workers %d\n",
              st.queue_depth, st.queue_max, st.running, st.workers);
    off = put(buf, n, off,
              "# HELP easel_jobs_finished_total Jobs finished since start by outcome.\n"
              "# TYPE easel_jobs_finished_total counter\n"
              "easel_jobs_finished_total{status=\"completed\"} %" PRIu64 "\n"
              "easel_jobs_finished_total{status=\"failed\"} %" PRIu64 "\n"
              "easel_jobs_finished_total{status=\"canceled\"} %" PRIu64 "\n"
              "# HELP easel_jobs_submitted_total Jobs accepted since start.\n"
              "# TYPE easel_jobs_submitted_total counter\neasel_jobs_submitted_total %" PRIu64 "\n",
              st.completed, st.failed, st.canceled, st.submitted);
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
