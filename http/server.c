/* libmicrohttpd setup and the request path shared by every route: the route
 * table (404/405 + Allow from it), Host and Origin checks, body collection
 * under a per-route cap (413 from the headers when the length says so),
 * auth (constant-time), CORS, request ids, JSON errors in the route's style,
 * per-route/status counters, static files, and the pump that wakes
 * suspended Server-Sent-Event streams when jobs change. */
#include "server.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../engine/fsutil.h"
#include "../engine/log.h"
#include "a1111.h"
#include "json.h"
#include "openai.h"

static enum MHD_Result serve_index(http_req *r);
static enum MHD_Result serve_openapi(http_req *r);
static int peer_gone(http_req *r);

/* The API. Handlers that need the queue are ROUTE_READY (503 until the
 * model is loaded); everything but health, the page, the spec and the
 * public image paths needs the token when one is set. */
/* clang-format off */
#define AR (ROUTE_AUTH | ROUTE_READY)
#define ARW (ROUTE_AUTH | ROUTE_READY | ROUTE_WRITE)
static const route routes[] = {
    /* the native API (http/api.c) */
    {{"POST",   "/v1/jobs"},                 api_create,   ARW, ERR_NATIVE, "/v1/jobs"},
    {{"GET",    "/v1/jobs"},                 api_list,     AR,  ERR_NATIVE, "/v1/jobs"},
    {{"GET",    "/v1/jobs/{id}"},            api_get,      AR,  ERR_NATIVE, "/v1/jobs/{id}"},
    {{"DELETE", "/v1/jobs/{id}"},            api_cancel,   ARW, ERR_NATIVE, "/v1/jobs/{id}"},
    {{"GET",    "/v1/jobs/{id}/image"},      api_image,    AR,  ERR_NATIVE, "/v1/jobs/{id}/image"},
    {{"POST",   "/v1/jobs/{id}/cancel"},     api_cancel,   ARW, ERR_NATIVE, "/v1/jobs/{id}/cancel"},
    {{"GET",    "/v1/jobs/{id}/events"},     api_events,   AR | ROUTE_TOKEN_QS, ERR_NATIVE,
     "/v1/jobs/{id}/events"},
    {{"GET",    "/v1/jobs/{id}/preview"},    api_preview,  AR,  ERR_NATIVE, "/v1/jobs/{id}/preview"},
    {{"GET",    "/v1/models"},               api_models,   AR,  ERR_NATIVE, "/v1/models"},
    {{"GET",    "/v1/loras"},                api_loras,    AR,  ERR_NATIVE, "/v1/loras"},
    {{"POST",   "/v1/uploads"},              api_upload_create, ARW | ROUTE_UPLOAD, ERR_NATIVE,
     "/v1/uploads"},
    {{"GET",    "/v1/uploads/{id}"},         api_upload_get, AR, ERR_NATIVE, "/v1/uploads/{id}"},
    {{"GET",    "/healthz"},                 api_healthz,  0,   ERR_NATIVE, "/healthz"},
    {{"GET",    "/metrics"},                 api_metrics,  ROUTE_AUTH, ERR_NATIVE, "/metrics"},
    {{"GET",    "/openapi.yaml"},            serve_openapi, 0,  ERR_NATIVE, "/openapi.yaml"},
    {{"GET",    "/"},                        serve_index,  0,   ERR_NATIVE, "/"},
    {{"GET",    "/index.html"},              serve_index,  0,   ERR_NATIVE, "/"},
    /* the seed's routes (http/compat.c) */
    {{"POST",   "/generate-concept"},        compat_generate, ARW | ROUTE_UPLOAD, ERR_COMPAT,
     "/generate-concept"},
    {{"GET",    "/image-status/{job_id}"},   compat_status, AR, ERR_COMPAT, "/image-status/{job_id}"},
    {{"GET",    "/uploads/conceptual_images/{name}"}, compat_upload, 0, ERR_COMPAT,
     "/uploads/conceptual_images/{name}"},
    /* OpenAI's Images API (http/openai.c) */
    {{"POST",   "/v1/images/generations"},   openai_generations, ARW, ERR_OPENAI,
     "/v1/images/generations"},
    {{"POST",   "/v1/images/edits"},         openai_edits, ARW | ROUTE_UPLOAD, ERR_OPENAI,
     "/v1/images/edits"},
    {{"GET",    "/v1/images/files/{name}"},  openai_file,  ROUTE_READY, ERR_OPENAI,
     "/v1/images/files/{name}"},
    /* AUTOMATIC1111's API (http/a1111.c) */
    {{"POST",   "/sdapi/v1/txt2img"},        a1111_txt2img, ARW, ERR_A1111, "/sdapi/v1/txt2img"},
    {{"POST",   "/sdapi/v1/img2img"},        a1111_img2img, ARW | ROUTE_UPLOAD, ERR_A1111,
     "/sdapi/v1/img2img"},
    {{"GET",    "/sdapi/v1/progress"},       a1111_progress, AR, ERR_A1111, "/sdapi/v1/progress"},
    {{"POST",   "/sdapi/v1/interrupt"},      a1111_interrupt, ARW, ERR_A1111, "/sdapi/v1/interrupt"},
    {{"POST",   "/sdapi/v1/skip"},           a1111_skip,   ARW, ERR_A1111, "/sdapi/v1/skip"},
    {{"GET",    "/sdapi/v1/options"},        a1111_options_get, AR, ERR_A1111, "/sdapi/v1/options"},
    {{"POST",   "/sdapi/v1/options"},        a1111_options_set, ARW, ERR_A1111, "/sdapi/v1/options"},
    {{"GET",    "/sdapi/v1/sd-models"},      a1111_sd_models, AR, ERR_A1111, "/sdapi/v1/sd-models"},
    {{"GET",    "/sdapi/v1/samplers"},       a1111_samplers, AR, ERR_A1111, "/sdapi/v1/samplers"},
    {{"GET",    "/sdapi/v1/schedulers"},     a1111_schedulers, AR, ERR_A1111, "/sdapi/v1/schedulers"},
    {{"GET",    "/sdapi/v1/loras"},          a1111_loras,  AR,  ERR_A1111, "/sdapi/v1/loras"},
    {{"GET",    "/sdapi/v1/upscalers"},      a1111_empty_list, AR, ERR_A1111, "/sdapi/v1/upscalers"},
    {{"GET",    "/sdapi/v1/scripts"},        a1111_scripts, AR, ERR_A1111, "/sdapi/v1/scripts"},
    {{"POST",   "/sdapi/v1/refresh-loras"},  a1111_refresh, ARW, ERR_A1111, "/sdapi/v1/refresh-loras"},
    {{"POST",   "/sdapi/v1/refresh-checkpoints"}, a1111_refresh, ARW, ERR_A1111,
     "/sdapi/v1/refresh-checkpoints"},
};
#undef AR
#undef ARW
/* clang-format on */
#define N_ROUTES (sizeof routes / sizeof routes[0])

static const unsigned tracked_status[] = {200, 202, 204, 304, 400, 401, 403, 404,
                                          405, 409, 413, 415, 421, 429, 500, 503};
#define N_STATUS (sizeof tracked_status / sizeof tracked_status[0])

const route *server_routes(size_t *n) {
    *n = N_ROUTES;
    return routes;
}

int server_match(const char *method, const char *path, char *arg, size_t argcap, char *allow,
                 size_t cap) {
    return router_match(routes, N_ROUTES, sizeof routes[0], method, path, arg, argcap, allow, cap);
}

typedef struct sse_waiter {
    struct MHD_Connection *conn;
    struct sse_waiter *next;
} sse_waiter;

struct server {
    server_config cfg;
    char *strings[8 + 2 * SERVER_MAX_ALLOWED_HOSTS]; /* owned copies of the config's strings */
    struct MHD_Daemon *d;
    _Atomic(jobs *) js;
    atomic_int stopping;
    atomic_ullong req_seq;
    /* per route row (then one row for unmatched paths), per status (+ other) */
    atomic_ullong counts[N_ROUTES + 1][N_STATUS + 1];
    char *openapi;
    size_t openapi_len;
    char *index_html;
    size_t index_len;
    char *page_csp;      /* the demo page's policy, with its inline blocks' hashes */
    int wildcard_listen; /* listening on 0.0.0.0 / :: (any IP literal is this host) */
    pthread_mutex_t sse_mu;
    sse_waiter *waiters;
    pthread_t pump;
    int pump_started;
    char model[600];
    char model_id[128];
    cJSON *model_info; /* set once before ready, read-only after */
    int default_side;  /* the model's default size's long side (0: not loaded) */
    a1111_state *a1111;
};

const server_config *server_cfg(const server *s) {
    return &s->cfg;
}
jobs *server_jobs(const server *s) {
    return atomic_load(&((server *)s)->js);
}
int server_stopping(const server *s) {
    return atomic_load(&((server *)s)->stopping);
}
int server_port(server *s) {
    const union MHD_DaemonInfo *i = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    return i ? i->port : 0;
}

/* ---- small helpers ---- */

const char *http_header(http_req *r, const char *name) {
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

const char *http_query(http_req *r, const char *name) {
    return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, name);
}

void http_time(int64_t ms, char *buf, size_t n) {
    if (ms <= 0) {
        buf[0] = 0;
        return;
    }
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    char base[32];
    strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf, n, "%s.%03dZ", base, (int)(ms % 1000));
}

int http_is_job_id(const char *s) {
    if (strlen(s) != 36) return 0;
    for (int i = 0; i < 36; i++) {
        int dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? s[i] != '-' : !strchr("0123456789abcdefABCDEF", s[i])) return 0;
    }
    return 1;
}

/* Constant-time: the time depends only on the lengths, not on where they differ. */
static int token_equal(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    unsigned char diff = (unsigned char)(la != lb);
    for (size_t i = 0; i < lb; i++)
        diff |= (unsigned char)(a[i % (la ? la : 1)] ^ b[i]);
    return diff == 0 && la == lb;
}

static void count(server *s, const http_req *r, unsigned status) {
    size_t k = N_STATUS;
    for (size_t i = 0; i < N_STATUS; i++)
        if (tracked_status[i] == status) k = i;
    size_t row = r->route ? (size_t)r->route_index : N_ROUTES;
    atomic_fetch_add_explicit(&s->counts[row][k], 1, memory_order_relaxed);
}

/* ---- responses ---- */

/* The policy for text/html answers when the demo page could not be read (so
 * no inline block can be hashed): nothing may run. */
#define CSP_TAIL                                                                                   \
    "img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "        \
    "frame-ancestors 'none'"
static const char fallback_csp[] = "default-src 'none'; " CSP_TAIL;

enum MHD_Result http_send(http_req *r, unsigned status, struct MHD_Response *resp,
                          const char *ctype, const char *cache) {
    if (!resp) return MHD_NO;
    server *s = r->srv;
    if (ctype) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    if (cache) MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, cache);
    MHD_add_response_header(resp, "X-Request-Id", r->request_id);
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    if (ctype && !strncmp(ctype, "text/html", 9)) {
        MHD_add_response_header(resp, "Content-Security-Policy",
                                s->page_csp ? s->page_csp : fallback_csp);
        MHD_add_response_header(resp, "Referrer-Policy", "no-referrer");
    }
    if (s->cfg.cors_origin && s->cfg.cors_origin[0]) {
        MHD_add_response_header(resp, "Access-Control-Allow-Origin", s->cfg.cors_origin);
        MHD_add_response_header(resp, "Access-Control-Expose-Headers",
                                "X-Request-Id, Location, Retry-After, ETag");
        if (strcmp(s->cfg.cors_origin, "*")) MHD_add_response_header(resp, "Vary", "Origin");
    }
    enum MHD_Result ok = MHD_queue_response(r->conn, status, resp);
    MHD_destroy_response(resp);
    r->responded = 1;
    count(s, r, status);
    if (status >= 500) log_warn("%s %s -> %u [%s]", r->method, r->url, status, r->request_id);
    return ok;
}

static struct MHD_Response *text_response(char *text, size_t len) {
    return MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
}

enum MHD_Result http_json(http_req *r, unsigned status, cJSON *obj) {
    char *text = obj ? cJSON_PrintUnformatted(obj) : NULL;
    cJSON_Delete(obj);
    if (!text) {
        static const char oom[] =
            "{\"error\":{\"code\":\"out_of_memory\",\"message\":\"out of memory\"}}";
        struct MHD_Response *resp =
            MHD_create_response_from_buffer(sizeof oom - 1, (void *)oom, MHD_RESPMEM_PERSISTENT);
        return http_send(r, 500, resp, "application/json", "no-store");
    }
    struct MHD_Response *resp = text_response(text, strlen(text));
    if (!resp) free(text);
    return http_send(r, status, resp, "application/json", "no-store");
}

/* OpenAI's error types by status. */
static const char *openai_type(unsigned status) {
    return status == 401   ? "authentication_error"
           : status == 403 ? "permission_error"
           : status == 429 ? "rate_limit_error"
           : status >= 500 ? "server_error"
                           : "invalid_request_error";
}

/* {"error":{"message","type","param","code"}}, as OpenAI's API writes it. */
static cJSON *openai_error(unsigned status, const char *code, const char *message,
                           const char *field) {
    cJSON *o = cJSON_CreateObject(), *e = o ? cJSON_AddObjectToObject(o, "error") : NULL;
    if (!e) return o;
    cJSON_AddStringToObject(e, "message", message);
    cJSON_AddStringToObject(e, "type", openai_type(status));
    if (field)
        cJSON_AddStringToObject(e, "param", field);
    else
        cJSON_AddNullToObject(e, "param");
    cJSON_AddStringToObject(e, "code", code);
    return o;
}

/* FastAPI's shapes, as A1111's API answers: {"detail":[{"loc","msg","type"}]}
 * for a field, else {"detail": message, "error": code}. */
static cJSON *a1111_error(const char *code, const char *message, const char *field) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    if (field) {
        cJSON *d = cJSON_AddArrayToObject(o, "detail"), *it = cJSON_CreateObject();
        if (d && it) {
            const char *loc[] = {"body", field};
            cJSON_AddItemToObject(it, "loc", cJSON_CreateStringArray(loc, 2));
            cJSON_AddStringToObject(it, "msg", message);
            cJSON_AddStringToObject(it, "type", "value_error");
            cJSON_AddItemToArray(d, it);
        } else {
            cJSON_Delete(it);
        }
    } else {
        cJSON_AddStringToObject(o, "detail", message);
    }
    cJSON_AddStringToObject(o, "error", code);
    return o;
}

static enum MHD_Result error_with(http_req *r, unsigned status, const char *code,
                                  const char *message, const char *field, int retry_after_s,
                                  const char *allow) {
    error_style style = r->route ? r->route->style : ERR_NATIVE;
    cJSON *o = style == ERR_OPENAI  ? openai_error(status, code, message, field)
               : style == ERR_A1111 ? a1111_error(code, message, field)
                                    : cJSON_CreateObject();
    if (o && style == ERR_COMPAT) {
        cJSON_AddFalseToObject(o, "success");
        cJSON_AddStringToObject(o, "error_message", message);
    }
    cJSON *e = o && style <= ERR_COMPAT ? cJSON_AddObjectToObject(o, "error") : NULL;
    if (e) {
        cJSON_AddStringToObject(e, "code", code);
        cJSON_AddStringToObject(e, "message", message);
        if (field) cJSON_AddStringToObject(e, "field", field);
        cJSON_AddStringToObject(e, "request_id", r->request_id);
    }
    char *text = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!text) return http_json(r, 500, NULL);
    struct MHD_Response *resp = text_response(text, strlen(text));
    if (!resp) {
        free(text);
        return MHD_NO;
    }
    if (retry_after_s > 0) {
        char ra[16];
        snprintf(ra, sizeof ra, "%d", retry_after_s);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, ra);
    }
    if (allow) MHD_add_response_header(resp, "Allow", allow);
    return http_send(r, status, resp, "application/json", "no-store");
}

enum MHD_Result http_error_retry(http_req *r, unsigned status, const char *code,
                                 const char *message, const char *field, int retry_after_s) {
    return error_with(r, status, code, message, field, retry_after_s, NULL);
}

enum MHD_Result http_error(http_req *r, unsigned status, const char *code, const char *message,
                           const char *field) {
    return error_with(r, status, code, message, field, 0, NULL);
}

enum MHD_Result http_not_ready(http_req *r) {
    return http_error_retry(r, 503, "not_ready",
                            server_stopping(r->srv) || server_jobs(r->srv)
                                ? "the server is shutting down"
                                : "the server is starting (loading the model)",
                            NULL, 2);
}

enum MHD_Result http_refuse_submit(http_req *r, easel_err e) {
    jobs *js = server_jobs(r->srv);
    char msg[320];
    snprintf(msg, sizeof msg, "%s", easel_errmsg());
    if (e == EASEL_EFULL)
        return http_error_retry(r, 429, "queue_full", msg, NULL, js ? api_retry_after(js) : 5);
    if (e == EASEL_ECANCELED) return http_not_ready(r);
    if (e == EASEL_ENOMEM) return http_error_retry(r, 503, "out_of_memory", msg, NULL, 5);
    if (e == EASEL_EDEVLOST) /* a sticky GPU fault: degraded until the process restarts */
        return http_error_retry(r, 503, "device_lost", msg, NULL, 30);
    /* EASEL_EIO: the store cannot write (full disk...): nothing was accepted */
    return http_error_retry(r, 503, "store_unavailable", msg, NULL, 5);
}

enum MHD_Result http_file(http_req *r, const char *path, const char *ctype, const char *etag) {
    const char *inm = http_header(r, MHD_HTTP_HEADER_IF_NONE_MATCH);
    if (etag && inm && (strstr(inm, etag) || !strcmp(inm, "*"))) {
        struct MHD_Response *resp =
            MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
        if (resp) MHD_add_response_header(resp, MHD_HTTP_HEADER_ETAG, etag);
        return http_send(r, 304, resp, NULL, "private, max-age=86400");
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) || !S_ISREG(sb.st_mode)) {
        if (fd >= 0) close(fd);
        return http_error(r, 404, "not_found", "the image no longer exists", NULL);
    }
    struct MHD_Response *resp = MHD_create_response_from_fd64((uint64_t)sb.st_size, fd);
    if (!resp) {
        close(fd);
        return http_error(r, 500, "internal", "cannot create a response", NULL);
    }
    if (etag) MHD_add_response_header(resp, MHD_HTTP_HEADER_ETAG, etag);
    return http_send(r, 200, resp, ctype, "private, max-age=86400");
}

#define IMAGE_RANGE (256 * 1024)

typedef struct {
    jobs *js;
    char name[200];
    int64_t total, have_off; /* the buffer holds [have_off, have_off + have_len) */
    size_t have_len;
    uint8_t buf[IMAGE_RANGE];
} image_stream;

static ssize_t image_stream_read(void *cls, uint64_t pos, char *out, size_t max) {
    image_stream *st = cls;
    if ((int64_t)pos >= st->total) return MHD_CONTENT_READER_END_OF_STREAM;
    if ((int64_t)pos < st->have_off || (int64_t)pos >= st->have_off + (int64_t)st->have_len) {
        size_t n = 0;
        int64_t total = 0;
        if (jobs_image_range(st->js, st->name, (int64_t)pos, st->buf, IMAGE_RANGE, &n, &total) ||
            !n || total != st->total)
            return MHD_CONTENT_READER_END_WITH_ERROR; /* deleted or changed meanwhile */
        st->have_off = (int64_t)pos, st->have_len = n;
    }
    size_t off = (size_t)((int64_t)pos - st->have_off), n = st->have_len - off;
    if (n > max) n = max;
    memcpy(out, st->buf + off, n);
    return (ssize_t)n;
}

enum MHD_Result http_image(http_req *r, const char *name, const char *etag) {
    jobs *js = server_jobs(r->srv);
    if (!js || !jobs_images_in_store(js)) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", r->srv->cfg.images_dir, name);
        return http_file(r, path, "image/png", etag);
    }
    const char *inm = http_header(r, MHD_HTTP_HEADER_IF_NONE_MATCH);
    if (etag && inm && (strstr(inm, etag) || !strcmp(inm, "*"))) {
        struct MHD_Response *resp =
            MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
        if (resp) MHD_add_response_header(resp, MHD_HTTP_HEADER_ETAG, etag);
        return http_send(r, 304, resp, NULL, "private, max-age=86400");
    }
    image_stream *st = malloc(sizeof *st);
    if (!st) return http_error(r, 500, "out_of_memory", "out of memory", NULL);
    st->js = js;
    snprintf(st->name, sizeof st->name, "%s", name);
    st->have_off = 0;
    easel_err e = jobs_image_range(js, name, 0, st->buf, IMAGE_RANGE, &st->have_len, &st->total);
    if (e) {
        free(st);
        if (e == EASEL_ENOTFOUND)
            return http_error(r, 404, "not_found", "the image no longer exists", NULL);
        return http_error_retry(r, 503, "store_unavailable", "the image store cannot be read now",
                                NULL, 5);
    }
    struct MHD_Response *resp = MHD_create_response_from_callback((uint64_t)st->total, 64 * 1024,
                                                                  image_stream_read, st, free);
    if (!resp) {
        free(st);
        return http_error(r, 500, "internal", "cannot create a response", NULL);
    }
    if (etag) MHD_add_response_header(resp, MHD_HTTP_HEADER_ETAG, etag);
    return http_send(r, 200, resp, "image/png", "private, max-age=86400");
}

cJSON *http_body_json(http_req *r, enum MHD_Result *answered) {
    const char *ct = http_header(r, MHD_HTTP_HEADER_CONTENT_TYPE);
    if (!json_media_type_is(ct, "application/json")) {
        *answered = http_error(r, 415, "unsupported_media_type",
                               "the body must be JSON (Content-Type: application/json)", NULL);
        return NULL;
    }
    char msg[200], field[64];
    cJSON *o = json_parse_strict(r->body, r->body_len, msg, sizeof msg, field, sizeof field);
    if (!o || !cJSON_IsObject(o)) {
        if (o) snprintf(msg, sizeof msg, "the body must be a JSON object");
        cJSON_Delete(o);
        *answered = http_error(r, 400, strcmp(field, "body") ? "invalid_field" : "invalid_json",
                               msg, field);
        return NULL;
    }
    return o;
}

/* ---- static content ---- */

static char *slurp(const char *path, size_t *len) {
    uint8_t *buf = NULL;
    return fs_read_file(path, SIZE_MAX, &buf, len) ? NULL : (char *)buf;
}

static enum MHD_Result send_static(http_req *r, const char *data, size_t len, const char *ctype) {
    if (!data) return http_error(r, 404, "not_found", "not installed on this server", NULL);
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)data, MHD_RESPMEM_PERSISTENT);
    return http_send(r, 200, resp, ctype, "no-cache");
}

static enum MHD_Result serve_index(http_req *r) {
    return send_static(r, r->srv->index_html, r->srv->index_len, "text/html; charset=utf-8");
}

static enum MHD_Result serve_openapi(http_req *r) {
    return send_static(r, r->srv->openapi, r->srv->openapi_len, "application/yaml");
}

/* ---- Host and Origin ---- */

/* The host part of a Host header or URL authority ("[::1]:8080" -> "::1",
 * "Example.COM:80" -> "example.com"), lower-cased into out. 0 if malformed. */
static int host_part(const char *authority, size_t n, char *out, size_t cap) {
    const char *end = authority + n, *h = authority, *stop;
    if (n && *h == '[') {
        stop = memchr(h, ']', n);
        if (!stop) return 0;
        h++;
    } else {
        stop = memchr(h, ':', n);
        if (!stop) stop = end;
    }
    size_t k = (size_t)(stop - h);
    if (!k || k >= cap) return 0;
    for (size_t i = 0; i < k; i++)
        out[i] = (char)tolower((unsigned char)h[i]);
    out[k] = 0;
    return 1;
}

static int is_ip_literal(const char *h) {
    unsigned char buf[16];
    return inet_pton(AF_INET, h, buf) == 1 || inet_pton(AF_INET6, h, buf) == 1;
}

static int is_loopback(const char *h) {
    unsigned char b4[4], b6[16];
    if (!strcmp(h, "localhost")) return 1;
    if (inet_pton(AF_INET, h, b4) == 1) return b4[0] == 127;
    if (inet_pton(AF_INET6, h, b6) == 1) {
        static const unsigned char one[16] = {[15] = 1};
        return !memcmp(b6, one, 16);
    }
    return 0;
}

/* DNS rebinding: a page on rebind.example that resolves to us must not
 * reach the API. Answered: no Host (HTTP/1.0), loopback, the listen address
 * (any IP literal when listening on every address), --allowed-host names. */
static int host_allowed(server *s, const char *hdr) {
    if (!hdr) return 1;
    char h[256];
    if (!host_part(hdr, strlen(hdr), h, sizeof h)) return 0;
    if (is_loopback(h)) return 1;
    if (s->wildcard_listen && is_ip_literal(h)) return 1;
    if (s->cfg.host && !strcasecmp(s->cfg.host, h)) return 1;
    for (int i = 0; i < s->cfg.n_allowed_hosts; i++)
        if (!strcmp(s->cfg.allowed_hosts[i], "*") || !strcasecmp(s->cfg.allowed_hosts[i], h))
            return 1;
    return 0;
}

/* "http://Host:80" and a Host header "host" name the same origin. */
static void authority_of(const char *scheme_default_port, const char *a, size_t n, char *out,
                         size_t cap) {
    size_t k = 0;
    for (size_t i = 0; i < n && k + 1 < cap; i++)
        out[k++] = (char)tolower((unsigned char)a[i]);
    out[k] = 0;
    size_t pl = strlen(scheme_default_port);
    if (k > pl && !strcmp(out + k - pl, scheme_default_port)) out[k - pl] = 0;
}

/* Cross-site writes: a state-changing request that carries an Origin must
 * come from this server's own origin or the configured CORS origin. Clients
 * that send no Origin (curl, PHP, SDKs) are not browsers and pass. */
static int origin_allowed(server *s, http_req *r) {
    const char *origin = http_header(r, "Origin");
    if (!origin) return 1;
    const char *cors = s->cfg.cors_origin;
    if (cors && (!strcmp(cors, "*") || !strcmp(cors, origin))) return 1;
    const char *sep = strstr(origin, "://"), *host = http_header(r, MHD_HTTP_HEADER_HOST);
    if (!sep || !host) return 0;
    const char *port = !strncasecmp(origin, "https", 5) ? ":443" : ":80";
    char a[300], b[300];
    authority_of(port, sep + 3, strcspn(sep + 3, "/"), a, sizeof a);
    authority_of(port, host, strlen(host), b, sizeof b);
    return a[0] && !strcmp(a, b);
}

/* ---- routing ---- */

static int authorized(http_req *r) {
    const char *tok = r->srv->cfg.token;
    if (!tok || !tok[0]) return 1;
    const char *h = http_header(r, MHD_HTTP_HEADER_AUTHORIZATION);
    const char *given = NULL;
    if (h && !strncasecmp(h, "Bearer ", 7)) given = h + 7;
    if (!given) given = http_header(r, "X-API-Key");
    if (!given && (r->route->flags & ROUTE_TOKEN_QS)) given = http_query(r, "access_token");
    if (!given && h && !strncasecmp(h, "Basic ", 6)) { /* A1111 clients: user:TOKEN */
        char *pass = NULL, *user = MHD_basic_auth_get_username_password(r->conn, &pass);
        int ok = pass && token_equal(pass, tok);
        MHD_free(user), MHD_free(pass);
        return ok;
    }
    return given && token_equal(given, tok);
}

static enum MHD_Result preflight(http_req *r, const char *allow) {
    struct MHD_Response *resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    if (!resp) return MHD_NO;
    MHD_add_response_header(resp, "Allow", allow);
    if (r->srv->cfg.cors_origin && r->srv->cfg.cors_origin[0]) {
        MHD_add_response_header(resp, "Access-Control-Allow-Methods", allow);
        MHD_add_response_header(resp, "Access-Control-Allow-Headers",
                                "Authorization, Content-Type, X-API-Key, X-Request-Id");
        MHD_add_response_header(resp, "Access-Control-Max-Age", "600");
    }
    return http_send(r, 204, resp, NULL, NULL);
}

static enum MHD_Result too_large(http_req *r) {
    char msg[128];
    snprintf(msg, sizeof msg, "the body is larger than %zu bytes (%s)", r->body_max,
             r->route && (r->route->flags & ROUTE_UPLOAD) ? "--max-upload" : "--max-body");
    return http_error(r, 413, "payload_too_large", msg, "body");
}

/* Checks made when the headers arrive, before any body is read: the path
 * (404/405), the Host, a declared length over the cap. Answers and returns
 * 1 when the request ends here. */
static int early_checks(http_req *r, enum MHD_Result *rc) {
    server *s = r->srv;
    char allow[96];
    r->route_index = server_match(r->method, r->url, r->arg, sizeof r->arg, allow, sizeof allow);
    r->route = r->route_index >= 0 ? &routes[r->route_index] : NULL;
    if (!host_allowed(s, http_header(r, MHD_HTTP_HEADER_HOST))) {
        char msg[200];
        snprintf(msg, sizeof msg,
                 "this server does not answer to that Host (start it with --allowed-host NAME "
                 "to allow a name)");
        *rc = http_error(r, 421, "host_not_allowed", msg, NULL);
        return 1;
    }
    if (!r->route && !allow[0]) {
        *rc = http_error(r, 404, "not_found", "no such resource", NULL);
        return 1;
    }
    if (!strcmp(r->method, "OPTIONS")) {
        *rc = preflight(r, allow);
        return 1;
    }
    if (!r->route) {
        char msg[160];
        snprintf(msg, sizeof msg, "%.20s is not allowed here (allowed: %s)", r->method, allow);
        *rc = error_with(r, 405, "method_not_allowed", msg, NULL, 0, allow);
        return 1;
    }
    r->body_max = (r->route->flags & ROUTE_UPLOAD)
                      ? (s->cfg.upload_max ? s->cfg.upload_max : UPLOAD_DEFAULT_MAX_BYTES)
                      : s->cfg.body_max;
    const char *cl = http_header(r, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl) {
        char *end;
        errno = 0;
        unsigned long long n = strtoull(cl, &end, 10);
        if (errno || *end || n > r->body_max) {
            r->too_big = 1;
            *rc = too_large(r);
            return 1;
        }
    }
    return 0;
}

static enum MHD_Result dispatch(http_req *r) {
    server *s = r->srv;
    const route *rt = r->route;
    if ((rt->flags & ROUTE_WRITE) && !origin_allowed(s, r))
        return http_error(r, 403, "origin_not_allowed",
                          "cross-origin requests that change state are refused (allow an origin "
                          "with --cors-origin)",
                          NULL);
    if ((rt->flags & ROUTE_AUTH) && !authorized(r))
        return http_error(r, 401, "unauthorized", "a valid bearer token is required", NULL);
    if (r->too_big) return too_large(r);
    if ((rt->flags & ROUTE_READY) && !server_jobs(s)) return http_not_ready(r);
    return rt->fn(r);
}

/* ---- MHD callbacks ---- */

static void set_request_id(server *s, http_req *r) {
    const char *given = http_header(r, "X-Request-Id");
    size_t n = given ? strlen(given) : 0;
    int ok = n > 0 && n < sizeof r->request_id;
    for (size_t i = 0; ok && i < n; i++)
        ok = (given[i] >= '0' && given[i] <= '9') || (given[i] >= 'a' && given[i] <= 'z') ||
             (given[i] >= 'A' && given[i] <= 'Z') || strchr("-_.:", given[i]);
    if (ok)
        memcpy(r->request_id, given, n + 1);
    else
        snprintf(r->request_id, sizeof r->request_id, "%016llx", /* unguessable */
                 (unsigned long long)(params_random64() ^ atomic_fetch_add(&s->req_seq, 1)));
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls) {
    (void)version;
    server *s = cls;
    http_req *r = *con_cls;
    if (!r) {
        if (!(r = calloc(1, sizeof *r))) return MHD_NO;
        r->srv = s, r->conn = c, r->url = url, r->method = method;
        r->is_head = !strcmp(method, "HEAD");
        r->route_index = -1;
        *con_cls = r;
        set_request_id(s, r);
        enum MHD_Result rc;
        /* an answer queued now means MHD sends no 100 Continue and reads no body */
        if (early_checks(r, &rc)) return rc;
        return MHD_YES;
    }
    if (*upload_size) {
        if (r->too_big || r->body_len + *upload_size > r->body_max) {
            /* over the cap without a Content-Length (chunked): MHD cannot
             * answer before the body ends, so the rest is read and dropped
             * (413 after it), up to 16x the cap; beyond that the connection
             * is closed unanswered rather than read on. */
            if (!r->too_big) free(r->body), r->body = NULL, r->body_len = 0;
            r->too_big = 1;
            r->discarded += *upload_size;
            *upload_size = 0;
            return r->discarded > 16 * r->body_max ? MHD_NO : MHD_YES;
        }
        char *nb = realloc(r->body, r->body_len + *upload_size + 1);
        if (!nb) return MHD_NO;
        memcpy(nb + r->body_len, upload, *upload_size);
        r->body = nb;
        r->body_len += *upload_size;
        nb[r->body_len] = 0;
        *upload_size = 0;
        return MHD_YES;
    }
    if (r->responded) return MHD_YES;
    if (r->resume) return peer_gone(r) ? MHD_NO : r->resume(r);
    return dispatch(r);
}

/* Has the client of a parked request hung up? A suspended connection is not
 * polled by MHD, so a closed socket would go unnoticed until the answer (or
 * --conn-timeout); peek at it: EOF or an error means gone, and the request is
 * then dropped (MHD_NO), which frees its state (batch_free cancels its jobs). */
static int peer_gone(http_req *r) {
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return 0;
    char b;
    ssize_t n = recv(ci->connect_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

enum MHD_Result http_park(http_req *r, http_handler resume, void *ctx, void (*free_ctx)(void *)) {
    if (r->park_ctx && r->park_ctx != ctx && r->park_free) r->park_free(r->park_ctx);
    r->resume = resume;
    r->park_ctx = ctx;
    r->park_free = free_ctx;
    server_sse_suspend(r->srv, NULL, r->conn); /* not suspended while stopping: called again */
    return MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    (void)cls, (void)c, (void)toe;
    http_req *r = *con_cls;
    if (!r) return;
    if (r->park_ctx && r->park_free) r->park_free(r->park_ctx);
    free(r->body);
    free(r);
    *con_cls = NULL;
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    if (n && msg[n - 1] == '\n') msg[n - 1] = 0;
    log_debug("http: %s", msg);
}

/* ---- SSE pump ---- */

void server_sse_suspend(server *s, sse_stream *st, struct MHD_Connection *c) {
    (void)st;
    sse_waiter *w = malloc(sizeof *w);
    if (!w) return; /* not suspended: MHD calls the reader again */
    w->conn = c;
    pthread_mutex_lock(&s->sse_mu);
    if (atomic_load(&s->stopping)) { /* stop_daemon must find no suspended connection */
        pthread_mutex_unlock(&s->sse_mu);
        free(w);
        return;
    }
    w->next = s->waiters;
    s->waiters = w;
    MHD_suspend_connection(c);
    pthread_mutex_unlock(&s->sse_mu);
}

static void resume_all(server *s) {
    pthread_mutex_lock(&s->sse_mu);
    for (sse_waiter *w = s->waiters, *next; w; w = next) {
        next = w->next;
        MHD_resume_connection(w->conn);
        free(w);
    }
    s->waiters = NULL;
    pthread_mutex_unlock(&s->sse_mu);
}

/* Wakes every waiting stream when any job changes, and at least once a
 * second (keep-alives, noticing closed clients). */
static void *pump_main(void *arg) {
    server *s = arg;
    unsigned version = 0;
    while (!atomic_load(&s->stopping)) {
        jobs *js = server_jobs(s);
        if (js)
            jobs_wait_any(js, &version, 1000);
        else
            usleep(200000);
        resume_all(s);
    }
    resume_all(s);
    return NULL;
}

/* ---- lifecycle ---- */

static easel_err copy_config(server *s, const server_config *cfg) {
    s->cfg = *cfg;
    const char **fields[8 + 2 * SERVER_MAX_ALLOWED_HOSTS] = {
        &s->cfg.host,         &s->cfg.token,      &s->cfg.cors_origin, &s->cfg.static_dir,
        &s->cfg.openapi_path, &s->cfg.images_dir, &s->cfg.model_desc};
    size_t n = 7;
    if (s->cfg.n_allowed_hosts < 0 || s->cfg.n_allowed_hosts > SERVER_MAX_ALLOWED_HOSTS ||
        s->cfg.n_webhook_allow < 0 || s->cfg.n_webhook_allow > SERVER_MAX_ALLOWED_HOSTS)
        return easel_seterr(EASEL_EINVAL, "at most %d allowed hosts", SERVER_MAX_ALLOWED_HOSTS);
    for (int i = 0; i < s->cfg.n_allowed_hosts; i++)
        fields[n++] = &s->cfg.allowed_hosts[i];
    for (int i = 0; i < s->cfg.n_webhook_allow; i++)
        fields[n++] = &s->cfg.webhook_allow[i];
    for (size_t i = 0; i < n; i++) {
        if (!*fields[i]) continue;
        if (!(s->strings[i] = strdup(*fields[i])))
            return easel_seterr(EASEL_ENOMEM, "out of memory");
        *fields[i] = s->strings[i];
    }
    return EASEL_OK;
}

static easel_err bind_addr(const server_config *cfg, struct sockaddr_storage *ss, int *v6,
                           int *wildcard) {
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    const char *host = cfg->host && cfg->host[0] ? cfg->host : "127.0.0.1";
    if (!strcmp(host, "localhost")) host = "127.0.0.1";
    *v6 = strchr(host, ':') != NULL;
    if (*v6) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)cfg->port);
        if (inet_pton(AF_INET6, host, &a6->sin6_addr) != 1) goto bad;
        *wildcard = !memcmp(&a6->sin6_addr, &in6addr_any, sizeof in6addr_any);
    } else {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)cfg->port);
        if (inet_pton(AF_INET, host, &a4->sin_addr) != 1) goto bad;
        *wildcard = a4->sin_addr.s_addr == htonl(INADDR_ANY);
    }
    return EASEL_OK;
bad:
    return easel_seterr(EASEL_EINVAL, "--host: '%s' is not an IPv4 or IPv6 address", host);
}

/* Appends " 'sha256-<base64>'" for the text of every inline <tag> element of
 * the page (NUL-terminated) to out. The browser hashes the element's text as
 * parsed: the UTF-8 bytes with CR LF and lone CR read as LF, so the same is
 * hashed here (OpenSSL's SHA-256 and base64). */
static int hash_blocks(const char *html, const char *tag, char *out, size_t cap) {
    char open[16], close[16];
    size_t open_len = (size_t)snprintf(open, sizeof open, "<%s", tag);
    snprintf(close, sizeof close, "</%s", tag);
    for (const char *p = html; (p = strcasestr(p, open));) {
        p += open_len;
        if (*p != '>' && *p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') continue;
        const char *body = strchr(p, '>');
        if (!body) break;
        body++;
        const char *stop = strcasestr(body, close);
        if (!stop) stop = body + strlen(body);
        EVP_MD_CTX *md = EVP_MD_CTX_new();
        int ok = md && EVP_DigestInit_ex(md, EVP_sha256(), NULL);
        for (const char *q = body, *run = body; ok && q <= stop; q++) {
            if (q < stop && *q != '\r') continue;
            ok = EVP_DigestUpdate(md, run, (size_t)(q - run)); /* the run before the CR */
            if (ok && q < stop) {
                ok = EVP_DigestUpdate(md, "\n", 1);
                if (q + 1 < stop && q[1] == '\n') q++;
                run = q + 1;
            }
        }
        unsigned char d[EVP_MAX_MD_SIZE];
        unsigned int dn = 0;
        ok = ok && EVP_DigestFinal_ex(md, d, &dn);
        EVP_MD_CTX_free(md);
        if (!ok) return -1;
        unsigned char b64[96];
        EVP_EncodeBlock(b64, d, (int)dn);
        size_t used = strlen(out);
        snprintf(out + used, cap - used, " 'sha256-%s'", b64);
        p = stop;
    }
    return 0;
}

/* The demo page's Content-Security-Policy: default-src 'none'; its inline
 * <script> and <style> blocks allowed by hash and nothing else inline (no
 * 'unsafe-inline', no eval, no inline event handlers or style attributes);
 * fetch/EventSource and images from this origin only; no framing. Recomputed
 * from the file at start, so an edited page keeps working. */
static char *page_csp(const char *html) {
    char scripts[1024] = "", styles[1024] = "";
    if (hash_blocks(html, "script", scripts, sizeof scripts) ||
        hash_blocks(html, "style", styles, sizeof styles))
        return NULL;
    size_t cap = sizeof scripts + sizeof styles + sizeof fallback_csp + 64;
    char *csp = malloc(cap);
    if (!csp) return NULL;
    snprintf(csp, cap, "default-src 'none'; script-src%s; style-src%s; " CSP_TAIL,
             scripts[0] ? scripts : " 'none'", styles[0] ? styles : " 'none'");
    return csp;
}

static void load_assets(server *s) {
    char path[4096];
    if (s->cfg.openapi_path && !(s->openapi = slurp(s->cfg.openapi_path, &s->openapi_len)))
        log_warn("http: %s: cannot read; /openapi.yaml answers 404", s->cfg.openapi_path);
    snprintf(path, sizeof path, "%s/index.html", s->cfg.static_dir ? s->cfg.static_dir : ".");
    if (!(s->index_html = slurp(path, &s->index_len)))
        log_warn("http: %s: cannot read; / answers 404", path);
    else if (!(s->page_csp = page_csp(s->index_html)))
        log_warn("http: cannot hash the page's inline blocks; the page's scripts are blocked");
}

easel_err server_start(const server_config *cfg, server **out) {
    *out = NULL;
    server *s = calloc(1, sizeof *s);
    if (!s) return easel_seterr(EASEL_ENOMEM, "out of memory");
    pthread_mutex_init(&s->sse_mu, NULL);
    easel_err e = copy_config(s, cfg);
    if (!e && !(s->a1111 = a1111_state_create())) e = easel_seterr(EASEL_ENOMEM, "out of memory");
    struct sockaddr_storage ss;
    int v6 = 0;
    if (!e) e = bind_addr(&s->cfg, &ss, &v6, &s->wildcard_listen);
    if (e) {
        server_stop(s);
        return e;
    }
    load_assets(s);
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ERROR_LOG | (v6 ? MHD_USE_IPv6 : 0);
    s->d = MHD_start_daemon(
        flags, (uint16_t)cfg->port, NULL, NULL, on_request, s, MHD_OPTION_SOCK_ADDR, &ss,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)(cfg->threads > 0 ? cfg->threads : 2),
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)cfg->conn_limit, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
        (unsigned)cfg->per_ip_limit, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)cfg->conn_timeout_s,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, cfg->conn_memory, MHD_OPTION_NOTIFY_COMPLETED,
        on_completed, s, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, s, MHD_OPTION_END);
    if (!s->d) {
        e = easel_seterr(EASEL_EIO, "cannot listen on %s:%d (%s)", s->cfg.host, cfg->port,
                         strerror(errno ? errno : EADDRINUSE));
        server_stop(s);
        return e;
    }
    if (pthread_create(&s->pump, NULL, pump_main, s)) {
        server_stop(s);
        return easel_seterr(EASEL_EIO, "cannot start the event-stream thread");
    }
    s->pump_started = 1;
    *out = s;
    return EASEL_OK;
}

void server_set_jobs(server *s, jobs *js) {
    atomic_store(&s->js, js);
}
void server_set_model(server *s, const char *desc) {
    snprintf(s->model, sizeof s->model, "%s", desc);
}

int server_default_side(const server *s) {
    return s->default_side;
}

void server_set_model_info(server *s, const char *id, const sd_model_info *m) {
    snprintf(s->model_id, sizeof s->model_id, "%s", id);
    cJSON *o = cJSON_CreateObject();
    if (!o) return;
    cJSON_AddStringToObject(o, "id", id);
    cJSON_AddStringToObject(o, "arch", m->arch);
    cJSON_AddStringToObject(o, "family", m->family);
    cJSON_AddStringToObject(o, "prediction_type", m->prediction_type);
    cJSON_AddStringToObject(o, "scheduler", m->scheduler_class);
    cJSON_AddStringToObject(o, "default_sampler", m->default_sampler_name);
    cJSON_AddNumberToObject(o, "default_steps", m->default_steps);
    cJSON_AddNumberToObject(o, "default_guidance_scale", m->default_guidance);
    cJSON_AddBoolToObject(o, "guidance_embedded", m->guidance_embedded);
    cJSON_AddNumberToObject(o, "default_width", m->default_width);
    cJSON_AddNumberToObject(o, "default_height", m->default_height);
    cJSON_AddStringToObject(o, "dtype", m->dtype);
    cJSON_AddNumberToObject(o, "weight_bytes", (double)m->weight_bytes);
    cJSON *pc = cJSON_AddObjectToObject(o, "parameters");
    if (pc) {
        cJSON_AddNumberToObject(pc, "unet", (double)m->params_unet);
        cJSON_AddNumberToObject(pc, "vae", (double)m->params_vae);
        cJSON_AddNumberToObject(pc, "text_encoder", (double)m->params_text);
    }
    cJSON_AddBoolToObject(o, "random_weights", m->random_weights);
    cJSON_AddBoolToObject(o, "img2img", m->vae_encoder && m->text_encoders == 1);
    cJSON_AddBoolToObject(o, "inpainting_unet", m->inpaint_unet);
    s->default_side = m->default_width > m->default_height ? m->default_width : m->default_height;
    if (m->random_weights)
        cJSON_AddStringToObject(o, "notice",
                                "random weights: images are noise; see README -> Real models");
    cJSON_Delete(s->model_info);
    s->model_info = o;
}

cJSON *server_model_json(const server *s) {
    return s->model_info ? cJSON_Duplicate(s->model_info, 1) : NULL;
}

const char *server_model_id(const server *s) {
    return s->model_id;
}

a1111_state *server_a1111(const server *s) {
    return s->a1111;
}
const char *server_model(const server *s) {
    return s->model;
}

void server_stop(server *s) {
    if (!s) return;
    atomic_store(&s->stopping, 1);
    if (s->pump_started) pthread_join(s->pump, NULL); /* resumes every stream on its way out */
    if (s->d) {
        resume_all(s); /* MHD must not be stopped with suspended connections */
        MHD_stop_daemon(s->d);
    }
    for (size_t i = 0; i < sizeof s->strings / sizeof s->strings[0]; i++)
        free(s->strings[i]);
    free(s->openapi);
    free(s->index_html);
    free(s->page_csp);
    cJSON_Delete(s->model_info);
    a1111_state_free(s->a1111);
    pthread_mutex_destroy(&s->sse_mu);
    free(s);
}

/* ---- metrics (the HTTP half; api.c writes the jobs half) ---- */

int server_metrics_text(server *s, char *buf, size_t n) {
    size_t off = 0;
    int w = snprintf(buf, n,
                     "# HELP easel_http_requests_total HTTP requests by route and status.\n"
                     "# TYPE easel_http_requests_total counter\n");
    off += w > 0 ? (size_t)w : 0;
    /* rows sharing a pattern (GET and POST /v1/jobs) are summed under one label */
    for (size_t r = 0; r <= N_ROUTES; r++) {
        const char *name = r < N_ROUTES ? routes[r].name : "other";
        int first = 1;
        for (size_t q = 0; q < r && first; q++)
            if (!strcmp(routes[q].name, name)) first = 0;
        if (!first) continue;
        for (size_t k = 0; k <= N_STATUS && off < n; k++) {
            unsigned long long v = 0;
            for (size_t q = r; q <= N_ROUTES; q++)
                if (q == r || (q < N_ROUTES && r < N_ROUTES && !strcmp(routes[q].name, name)))
                    v += atomic_load_explicit(&s->counts[q][k], memory_order_relaxed);
            if (!v) continue;
            char st[8];
            if (k < N_STATUS)
                snprintf(st, sizeof st, "%u", tracked_status[k]);
            else
                snprintf(st, sizeof st, "other");
            w = snprintf(buf + off, n - off,
                         "easel_http_requests_total{route=\"%s\",status=\"%s\"} %llu\n", name, st,
                         v);
            off += w > 0 ? (size_t)w : 0;
        }
    }
    return (int)(off < n ? off : n - 1);
}
