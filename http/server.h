/* The HTTP service on libmicrohttpd: the route table, limits, Host/Origin
 * checks, auth, CORS, request ids, JSON errors in each API's style, metrics,
 * static files. Handlers for the native API live in api.c, the seed's
 * endpoints in compat.c; both use the helpers declared here. The server
 * starts before the model is loaded and answers 503 on routes that need the
 * job queue until server_set_jobs() makes it ready. */
#ifndef EASEL_SERVER_H
#define EASEL_SERVER_H

#include <cjson/cJSON.h>
#include <microhttpd.h>
#include <stdatomic.h>
#include <stddef.h>

#include "jobs.h"
#include "router.h"
#include "uploads.h"

#define SERVER_MAX_ALLOWED_HOSTS 16

typedef struct {
    const char *host; /* "127.0.0.1", "0.0.0.0", "::1" ... */
    int port;         /* 0 = any free port (see server_port) */
    int threads;      /* MHD thread pool size */
    int conn_limit, per_ip_limit, conn_timeout_s;
    size_t conn_memory, body_max;
    const char *token;       /* NULL/"" = no auth */
    const char *cors_origin; /* NULL/"" = no CORS headers (and no cross-origin writes) */
    /* Host header names answered besides the listen address and loopback
     * ("*" = any Host: behind a proxy that rewrites it). */
    const char *allowed_hosts[SERVER_MAX_ALLOWED_HOSTS];
    int n_allowed_hosts;
    const char *static_dir; /* index.html etc. */
    const char *openapi_path;
    const char *images_dir;
    params_policy policy;      /* defaults and admission limits for requests */
    unsigned char url_key[32]; /* signs the image URLs OpenAI clients fetch */
    /* where webhooks may point besides public addresses (--webhook-allow) */
    const char *webhook_allow[SERVER_MAX_ALLOWED_HOSTS];
    int n_webhook_allow;
    const char *model_desc; /* for /healthz */
    /* GET /v1/loras and /sdapi/v1/loras: a new JSON array describing the LoRA
     * directory (cli/loras.c: name, file, size_bytes, format, base, rank,
     * layers, compatible, trigger_words, metadata, or error), or NULL on
     * failure; called on HTTP threads. NULL: no LoRAs (an empty list). */
    cJSON *(*loras)(void *ctx);
    void *loras_ctx;
    /* img2img / inpainting: where uploads are kept (NULL: none; the image
     * routes answer 400), the body cap of the routes that take images
     * (ROUTE_UPLOAD; 0 = UPLOAD_DEFAULT_MAX_BYTES) */
    uploads *uploads;
    size_t upload_max;
} server_config;

typedef struct server server;
typedef struct a1111_state a1111_state;

/* Starts listening (not ready yet: job routes answer 503). */
easel_err server_start(const server_config *cfg, server **out);
/* The port actually bound. */
int server_port(server *s);
/* Makes the server ready (js != NULL) or not (NULL: 503 again, e.g. on shutdown). */
void server_set_jobs(server *s, jobs *js);
/* Sets the model description /healthz shows (call before server_set_jobs). */
void server_set_model(server *s, const char *desc);
const char *server_model(const server *s);
/* What GET /v1/models and /healthz say about the loaded model: its family,
 * prediction type, scheduler, defaults, sizes (copied; call before
 * server_set_jobs). id is the name clients use for it (the OpenAI `model`). */
void server_set_model_info(server *s, const char *id, const sd_model_info *info);
/* The model as JSON (a new object the caller owns), or NULL before it loaded. */
cJSON *server_model_json(const server *s);
/* The long side of the model's default size (0 before it loaded). */
int server_default_side(const server *s);
const char *server_model_id(const server *s);
/* The A1111 API's state (http/a1111.c), owned by the server. */
a1111_state *server_a1111(const server *s);
/* Stops listening, ends event streams, frees. NULL is fine. */
void server_stop(server *s);

/* ---- for the handlers (api.c, compat.c) ---- */

/* How a route's errors look: the native {"error":{code,message,field}}; the
 * seed's, which adds {"success":false,"error_message":...}; OpenAI's
 * {"error":{message,type,param,code}}; A1111's (FastAPI) {"detail":...}. */
typedef enum { ERR_NATIVE = 0, ERR_COMPAT, ERR_OPENAI, ERR_A1111 } error_style;

typedef struct http_req http_req;
typedef enum MHD_Result (*http_handler)(http_req *r);

/* One row of the route table (server.c). GET rows also answer HEAD; the
 * methods of every row matching a path make its Allow header (405, OPTIONS). */
typedef struct {
    router_entry e; /* method, pattern */
    http_handler fn;
    unsigned flags;    /* ROUTE_* below */
    error_style style; /* how its errors are written */
    const char *name;  /* the metrics label (the pattern) */
} route;

enum {
    ROUTE_AUTH = 1 << 0,     /* needs the token when one is set */
    ROUTE_READY = 1 << 1,    /* needs the job queue (503 until ready) */
    ROUTE_WRITE = 1 << 2,    /* changes state: cross-origin requests refused */
    ROUTE_TOKEN_QS = 1 << 3, /* also takes ?access_token= (EventSource cannot set headers) */
    ROUTE_UPLOAD = 1 << 4    /* takes images: the upload body cap instead of the JSON one */
};

struct http_req {
    server *srv;
    struct MHD_Connection *conn;
    const char *method, *url;
    char *body;
    size_t body_len, body_max, discarded;
    int too_big, responded, is_head;
    const route *route; /* NULL until matched (404s count as "other") */
    int route_index;
    http_handler resume; /* set by http_park: called instead of the route's handler */
    void *park_ctx;
    void (*park_free)(void *);
    char request_id[65];
    char arg[80]; /* the {id} or {name} path segment */
};

/* The server's config and jobs (NULL while not ready). */
const server_config *server_cfg(const server *s);
jobs *server_jobs(const server *s);

/* Queues resp with the common headers (Content-Type, X-Request-Id, CORS,
 * Cache-Control when cache is not NULL) and counts it; destroys resp. */
enum MHD_Result http_send(http_req *r, unsigned status, struct MHD_Response *resp,
                          const char *ctype, const char *cache);
/* Sends obj as JSON (and deletes it). Cache-Control: no-store. */
enum MHD_Result http_json(http_req *r, unsigned status, cJSON *obj);
/* An error in the route's style (field omitted when NULL). */
enum MHD_Result http_error(http_req *r, unsigned status, const char *code, const char *message,
                           const char *field);
/* http_error plus a Retry-After header (429, 503). */
enum MHD_Result http_error_retry(http_req *r, unsigned status, const char *code,
                                 const char *message, const char *field, int retry_after_s);
/* The answer to a refused submit (jobs_submit's error): 429 queue or job
 * table full, 503 stopping or store unavailable, with Retry-After. */
enum MHD_Result http_refuse_submit(http_req *r, easel_err e);
/* Seconds a client should wait before retrying a full queue (from measured times). */
int api_retry_after(jobs *js);
/* 503 + Retry-After when the server is not ready. */
enum MHD_Result http_not_ready(http_req *r);
/* Parks the request without holding an HTTP thread: MHD stops calling the
 * handler until the server's pump wakes it (when any job changes, and at
 * least once a second); then resume(r) runs and must answer or park again.
 * ctx is the handler's state, freed with free_ctx (may be NULL) when the
 * request ends. While the server stops, resume is called at once: it must
 * answer (e.g. http_not_ready). Returns MHD_YES. */
enum MHD_Result http_park(http_req *r, http_handler resume, void *ctx, void (*free_ctx)(void *));
/* Serves a file (PNG) with an ETag; 304 on If-None-Match. */
enum MHD_Result http_file(http_req *r, const char *path, const char *ctype, const char *etag);
/* Serves a job's image (PNG) by name with an ETag, wherever the jobs keep
 * it: a file in the images dir, or (a shared store) rows of the database,
 * streamed in 256 KiB ranges (no whole copy in memory, no connection held
 * while a slow client reads). 404 when it is gone, 503 when the store
 * cannot be read now. */
enum MHD_Result http_image(http_req *r, const char *name, const char *etag);
/* Parses the request body as a JSON object, strictly (json.h); on error
 * answers 415/400 naming what is wrong, sets *answered and returns NULL. */
cJSON *http_body_json(http_req *r, enum MHD_Result *answered);
const char *http_header(http_req *r, const char *name);
const char *http_query(http_req *r, const char *name);
/* Seconds of a "Prefer: wait[=N]" header (RFC 7240; "wait" alone = 60; capped at
 * 60), or 0 when the client did not ask to wait. */
int http_prefer_wait(http_req *r);
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
enum MHD_Result api_preview(http_req *r);
enum MHD_Result api_healthz(http_req *r);
enum MHD_Result api_metrics(http_req *r);
enum MHD_Result api_models(http_req *r);
/* loras.c: GET /v1/loras, and A1111's /sdapi/v1/loras */
enum MHD_Result api_loras(http_req *r);
enum MHD_Result a1111_loras(http_req *r);
/* The job as GET /v1/jobs/{id} shows it (call under the jobs lock). */
cJSON *api_job_json(const job *j, const job_extra *x);
/* preview_url + preview_step (null without a preview) into o (under the lock). */
void api_add_preview(cJSON *o, const job *j);
/* Adds the HTTP request counters to the metrics text (server.c). */
int server_metrics_text(server *s, char *buf, size_t n);

/* api_uploads.c: POST /v1/uploads, GET /v1/uploads/{id} */
enum MHD_Result api_upload_create(http_req *r);
enum MHD_Result api_upload_get(http_req *r);

/* One field of a multipart/form-data body (data NUL-terminated, len bytes). */
typedef struct {
    char *name, *filename, *content_type;
    uint8_t *data;
    size_t len;
} http_part;
typedef struct {
    http_part *p;
    int n;
} http_parts;
int http_is_multipart(http_req *r);
/* Parses the collected body as multipart/form-data (or urlencoded): at most
 * 16 fields. EASEL_EFORMAT when malformed. */
easel_err http_multipart(http_req *r, http_parts *out);
const http_part *http_part_get(const http_parts *ps, const char *name);
void http_parts_free(http_parts *ps);

/* Uploads a request made for itself (inline images): removed again when the
 * request fails, so nothing half-done stays. */
typedef struct {
    char id[4][40];
    int n;
    /* what the API calls init_image and mask in its errors (NULL: those) */
    const char *image_name, *mask_name;
} http_made_uploads;
/* Keeps image bytes as an upload (recorded in *m); *id receives its id. */
easel_err http_keep_image(http_req *r, const uint8_t *data, size_t len, http_made_uploads *m,
                          char id[40]);
void http_made_uploads_drop(http_req *r, http_made_uploads *m);
/* The 4xx (5xx for the disk) for an image that could not be kept, naming field. */
enum MHD_Result http_upload_error(http_req *r, easel_err e, const char *field);
/* Before params_parse: req's init_image and mask become upload ids (an id is
 * checked to exist; base64 / data: URLs are stored, see *m); the mask must
 * have the image's size; a width/height the request leaves out follows the
 * image's aspect ratio. On error answers (400 naming the field), drops *m
 * and returns 1. */
int http_resolve_images(http_req *r, cJSON *req, http_made_uploads *m, enum MHD_Result *answered);

/* compat.c */
enum MHD_Result compat_generate(http_req *r);
enum MHD_Result compat_status(http_req *r);
enum MHD_Result compat_upload(http_req *r);
/* The documented prompt template over the room-analysis fields (tests, docs).
 * Returns a malloc'd prompt (valid UTF-8, each field cut at a character
 * boundary), or NULL when no field gives anything; *shortened (may be NULL)
 * is set when a field was longer than its cap. */
char *compat_build_prompt(const cJSON *req, int *shortened);

/* SSE support (server.c): the reader registers itself and suspends the
 * connection; the server's pump resumes it when any job changes. */
typedef struct sse_stream sse_stream;
void server_sse_suspend(server *s, sse_stream *st, struct MHD_Connection *c);
int server_stopping(const server *s);

/* The route table and its matcher, for the fuzzer and tests: the index of
 * the row for (method, path) or -1, with allow/arg as router_match fills them. */
const route *server_routes(size_t *n);
int server_match(const char *method, const char *path, char *arg, size_t argcap, char *allow,
                 size_t cap);

#endif
