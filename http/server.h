/* The HTTP service on libmicrohttpd: limits, routing, auth, CORS, request ids,
 * JSON errors, metrics, static files. Handlers for the native API live in
 * api.c, the seed's endpoints in compat.c; both use the helpers declared here.
 * The server starts before the model is loaded and answers 503 until
 * server_set_jobs() makes it ready. */
#ifndef EASEL_SERVER_H
#define EASEL_SERVER_H

#include <cjson/cJSON.h>
#include <microhttpd.h>
#include <stdatomic.h>
#include <stddef.h>

#include "jobs.h"

typedef struct {
    const char *host; /* "127.0.0.1", "0.0.0.0", "::1" ... */
    int port;         /* 0 = any free port (see server_port) */
    int threads;      /* MHD thread pool size */
    int conn_limit, per_ip_limit, conn_timeout_s;
    size_t conn_memory, body_max;
    const char *token;       /* NULL/"" = no auth */
    const char *cors_origin; /* NULL/"" = no CORS headers */
    const char *static_dir;  /* index.html etc. */
    const char *openapi_path;
    const char *images_dir;
    params_defaults defaults;
    const char *model_desc; /* for /healthz */
} server_config;

typedef struct server server;

/* Starts listening (not ready yet: job routes answer 503). */
easel_err server_start(const server_config *cfg, server **out);
/* The port actually bound. */
int server_port(server *s);
/* Makes the server ready (js != NULL) or not (NULL: 503 again, e.g. on shutdown). */
void server_set_jobs(server *s, jobs *js);
/* Sets the model description /healthz shows (call before server_set_jobs). */
void server_set_model(server *s, const char *desc);
const char *server_model(const server *s);
/* Stops listening, ends event streams, frees. NULL is fine. */
void server_stop(server *s);

/* ---- for the handlers (api.c, compat.c) ---- */

enum route_id {
    ROUTE_JOBS,
    ROUTE_JOB,
    ROUTE_JOB_IMAGE,
    ROUTE_JOB_CANCEL,
    ROUTE_JOB_EVENTS,
    ROUTE_HEALTHZ,
    ROUTE_METRICS,
    ROUTE_OPENAPI,
    ROUTE_STATIC,
    ROUTE_GENERATE_CONCEPT,
    ROUTE_IMAGE_STATUS,
    ROUTE_UPLOADS,
    ROUTE_OTHER,
    ROUTE_COUNT
};

typedef struct http_req {
    server *srv;
    struct MHD_Connection *conn;
    const char *method, *url;
    char *body;
    size_t body_len;
    int too_big, responded, is_head;
    enum route_id route;
    char request_id[65];
    char arg[80]; /* the {id} or {name} path segment */
} http_req;

/* The server's config and jobs (NULL while not ready). */
const server_config *server_cfg(const server *s);
jobs *server_jobs(const server *s);

/* Queues resp with the common headers (Content-Type, X-Request-Id, CORS,
 * Cache-Control when cache is not NULL) and counts it; destroys resp. */
enum MHD_Result http_send(http_req *r, unsigned status, struct MHD_Response *resp,
                          const char *ctype, const char *cache);
/* Sends obj as JSON (and deletes it). Cache-Control: no-store. */
enum MHD_Result http_json(http_req *r, unsigned status, cJSON *obj);
/* {"error":{"code","message","field"}} (field omitted when NULL); with
 * compat set, {"success":false,...} too, as the seed's clients expect. */
enum MHD_Result http_error(http_req *r, unsigned status, const char *code, const char *message,
                           const char *field);
/* http_error plus a Retry-After header (429, 503). */
enum MHD_Result http_error_retry(http_req *r, unsigned status, const char *code,
                                 const char *message, const char *field, int retry_after_s);
/* Seconds a client should wait before retrying a full queue (from measured times). */
int api_retry_after(jobs *js);
/* 503 + Retry-After when the server is not ready. */
enum MHD_Result http_not_ready(http_req *r);
/* Serves a file (PNG) with an ETag; 304 on If-None-Match. */
enum MHD_Result http_file(http_req *r, const char *path, const char *ctype, const char *etag);
/* Parses the request body as a JSON object (400 with a named field answered
 * and NULL returned on error; *answered set then). */
cJSON *http_body_json(http_req *r, enum MHD_Result *answered);
const char *http_header(http_req *r, const char *name);
const char *http_query(http_req *r, const char *name);
/* RFC 3339 UTC with milliseconds into buf; "" for 0. */
void http_time(int64_t ms, char *buf, size_t n);
/* A UUID-shaped job id (36 chars, hex and dashes). */
int http_is_job_id(const char *s);

/* api.c */
enum MHD_Result api_create(http_req *r);
enum MHD_Result api_get(http_req *r);
enum MHD_Result api_list(http_req *r);
enum MHD_Result api_cancel(http_req *r);
enum MHD_Result api_image(http_req *r);
enum MHD_Result api_events(http_req *r);
enum MHD_Result api_healthz(http_req *r);
enum MHD_Result api_metrics(http_req *r);
/* The job as GET /v1/jobs/{id} shows it (call under the jobs lock). */
cJSON *api_job_json(const job *j, const job_extra *x);
/* Adds the HTTP request counters to the metrics text (server.c). */
int server_metrics_text(server *s, char *buf, size_t n);

/* compat.c */
enum MHD_Result compat_generate(http_req *r);
enum MHD_Result compat_status(http_req *r);
enum MHD_Result compat_upload(http_req *r);
/* The documented prompt template over the room-analysis fields (tests, docs).
 * Returns a malloc'd prompt, or NULL when no field gives anything. */
char *compat_build_prompt(const cJSON *req);

/* SSE support (server.c): the reader registers itself and suspends the
 * connection; the server's pump resumes it when any job changes. */
typedef struct sse_stream sse_stream;
void server_sse_suspend(server *s, sse_stream *st, struct MHD_Connection *c);
int server_stopping(const server *s);

#endif
