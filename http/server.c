/* libmicrohttpd setup and the request path shared by every route: body
 * collection under a cap, routing (404/405), auth (constant-time), CORS,
 * request ids, JSON errors, per-route/status counters, static files, and the
 * pump that wakes suspended Server-Sent-Event streams when jobs change. */
#include "server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../engine/log.h"
#include "../engine/sha256.h"

static const unsigned tracked_status[] = {200, 202, 204, 304, 400, 401, 404,
                                          405, 409, 413, 415, 429, 500, 503};
#define N_STATUS (sizeof tracked_status / sizeof tracked_status[0])
static const char *route_names[ROUTE_COUNT] = {"/v1/jobs",
                                               "/v1/jobs/{id}",
                                               "/v1/jobs/{id}/image",
                                               "/v1/jobs/{id}/cancel",
                                               "/v1/jobs/{id}/events",
                                               "/healthz",
                                               "/metrics",
                                               "/openapi.yaml",
                                               "/",
                                               "/generate-concept",
                                               "/image-status/{job_id}",
                                               "/uploads/conceptual_images/{name}",
                                               "other"};

struct sse_stream; /* defined in api.c; here only linked through `sse_link` below */

typedef struct sse_waiter {
    struct MHD_Connection *conn;
    struct sse_waiter *next;
} sse_waiter;

struct server {
    server_config cfg;
    char *strings[8]; /* owned copies of the config's strings */
    struct MHD_Daemon *d;
    _Atomic(jobs *) js;
    atomic_int stopping;
    atomic_ullong req_seq;
    unsigned long long id_prefix;
    atomic_ullong counts[ROUTE_COUNT][N_STATUS + 1]; /* last column: any other status */
    char *openapi;
    size_t openapi_len;
    char *index_html;
    size_t index_len;
    char *page_csp; /* the demo page's policy, with its inline blocks' hashes */
    pthread_mutex_t sse_mu;
    sse_waiter *waiters;
    pthread_t pump;
    int pump_started;
    char model[600];
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

static void count(server *s, enum route_id route, unsigned status) {
    size_t k = N_STATUS;
    for (size_t i = 0; i < N_STATUS; i++)
        if (tracked_status[i] == status) k = i;
    atomic_fetch_add_explicit(&s->counts[route][k], 1, memory_order_relaxed);
}

/* ---- responses ---- */

/* The policy for text/html answers when the demo page could not be read (so
 * no inline block can be hashed): nothing may run. */
#define CSP_TAIL                                                                           \
    "img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "       \
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
    count(s, r->route, status);
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
    return http_send(r, status, text_response(text, strlen(text)), "application/json", "no-store");
}

enum MHD_Result http_error_retry(http_req *r, unsigned status, const char *code,
                                 const char *message, const char *field, int retry_after_s) {
    cJSON *o = cJSON_CreateObject();
    int compat = r->route == ROUTE_GENERATE_CONCEPT || r->route == ROUTE_IMAGE_STATUS;
    if (o && compat) {
        cJSON_AddFalseToObject(o, "success");
        cJSON_AddStringToObject(o, "error_message", message);
    }
    cJSON *e = o ? cJSON_AddObjectToObject(o, "error") : NULL;
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
    if (!resp) free(text);
    if (resp && retry_after_s > 0) {
        char ra[16];
        snprintf(ra, sizeof ra, "%d", retry_after_s);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, ra);
    }
    return http_send(r, status, resp, "application/json", "no-store");
}

enum MHD_Result http_error(http_req *r, unsigned status, const char *code, const char *message,
                           const char *field) {
    return http_error_retry(r, status, code, message, field, 0);
}

enum MHD_Result http_not_ready(http_req *r) {
    return http_error_retry(r, 503, "not_ready",
                            server_stopping(r->srv) || server_jobs(r->srv)
                                ? "the server is shutting down"
                                : "the server is starting (loading the model)",
                            NULL, 2);
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

cJSON *http_body_json(http_req *r, enum MHD_Result *answered) {
    const char *ct = http_header(r, MHD_HTTP_HEADER_CONTENT_TYPE);
    if (!ct || strncasecmp(ct, "application/json", 16) ||
        (ct[16] && ct[16] != ';' && ct[16] != ' ')) {
        *answered = http_error(r, 415, "unsupported_media_type",
                               "the body must be JSON (Content-Type: application/json)", NULL);
        return NULL;
    }
    cJSON *o = r->body_len ? cJSON_ParseWithLength(r->body, r->body_len) : NULL;
    if (!o || !cJSON_IsObject(o)) {
        cJSON_Delete(o);
        *answered = http_error(r, 400, "invalid_json", "the body must be a JSON object", "body");
        return NULL;
    }
    return o;
}

/* ---- static content ---- */

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    long n = -1;
    if (!fseek(f, 0, SEEK_END) && (n = ftell(f)) >= 0 && !fseek(f, 0, SEEK_SET))
        buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) buf[n] = 0, *len = (size_t)n;
    return buf;
}

static enum MHD_Result send_static(http_req *r, const char *data, size_t len, const char *ctype) {
    if (!data) return http_error(r, 404, "not_found", "not installed on this server", NULL);
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)data, MHD_RESPMEM_PERSISTENT);
    return http_send(r, 200, resp, ctype, "no-cache");
}

/* ---- routing ---- */

/* Splits "/v1/jobs/{id}/tail" style paths. Returns the route or ROUTE_OTHER. */
static enum route_id match(const char *url, char *arg, size_t n, const char **allow) {
    const char *rest;
    *allow = "GET, HEAD";
    if (!strcmp(url, "/v1/jobs") || !strcmp(url, "/v1/jobs/"))
        return *allow = "GET, HEAD, POST", ROUTE_JOBS;
    if (!strncmp(url, "/v1/jobs/", 9)) {
        rest = url + 9;
        const char *slash = strchr(rest, '/');
        size_t idlen = slash ? (size_t)(slash - rest) : strlen(rest);
        if (idlen == 0 || idlen >= n) return ROUTE_OTHER;
        memcpy(arg, rest, idlen);
        arg[idlen] = 0;
        if (!slash) return *allow = "GET, HEAD, DELETE", ROUTE_JOB;
        if (!strcmp(slash, "/image")) return ROUTE_JOB_IMAGE;
        if (!strcmp(slash, "/cancel")) return *allow = "POST", ROUTE_JOB_CANCEL;
        if (!strcmp(slash, "/events")) return ROUTE_JOB_EVENTS;
        return ROUTE_OTHER;
    }
    if (!strcmp(url, "/healthz")) return ROUTE_HEALTHZ;
    if (!strcmp(url, "/metrics")) return ROUTE_METRICS;
    if (!strcmp(url, "/openapi.yaml")) return ROUTE_OPENAPI;
    if (!strcmp(url, "/") || !strcmp(url, "/index.html")) return ROUTE_STATIC;
    if (!strcmp(url, "/generate-concept")) return *allow = "POST", ROUTE_GENERATE_CONCEPT;
    if (!strncmp(url, "/image-status/", 14) || !strncmp(url, "/uploads/conceptual_images/", 27)) {
        int status = url[1] == 'i';
        rest = url + (status ? 14 : 27);
        if (!*rest || strchr(rest, '/') || strlen(rest) >= n) return ROUTE_OTHER;
        strcpy(arg, rest);
        return status ? ROUTE_IMAGE_STATUS : ROUTE_UPLOADS;
    }
    return ROUTE_OTHER;
}

static int method_allowed(const char *method, const char *allow) {
    size_t m = strlen(method);
    for (const char *p = allow; (p = strstr(p, method)); p += m)
        if ((p == allow || p[-1] == ' ') && (p[m] == 0 || p[m] == ',')) return 1;
    return 0;
}

static int needs_auth(enum route_id route) {
    return route != ROUTE_HEALTHZ && route != ROUTE_OPENAPI && route != ROUTE_STATIC &&
           route != ROUTE_UPLOADS && route != ROUTE_OTHER;
}

static int authorized(http_req *r) {
    const char *tok = r->srv->cfg.token;
    if (!tok || !tok[0]) return 1;
    const char *h = http_header(r, MHD_HTTP_HEADER_AUTHORIZATION);
    const char *given = NULL;
    if (h && !strncasecmp(h, "Bearer ", 7)) given = h + 7;
    if (!given) given = http_header(r, "X-API-Key");
    /* EventSource cannot send headers: the events route also takes ?access_token= */
    if (!given && r->route == ROUTE_JOB_EVENTS) given = http_query(r, "access_token");
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

static enum MHD_Result dispatch_route(http_req *r) {
    server *s = r->srv;
    switch (r->route) {
    case ROUTE_HEALTHZ:
        return api_healthz(r);
    case ROUTE_OPENAPI:
        return send_static(r, s->openapi, s->openapi_len, "application/yaml");
    case ROUTE_STATIC:
        return send_static(r, s->index_html, s->index_len, "text/html; charset=utf-8");
    case ROUTE_METRICS:
        return api_metrics(r);
    case ROUTE_UPLOADS:
        return compat_upload(r);
    default:
        break;
    }
    if (!server_jobs(s)) return http_not_ready(r);
    switch (r->route) {
    case ROUTE_JOBS:
        return !strcmp(r->method, "POST") ? api_create(r) : api_list(r);
    case ROUTE_JOB:
        return !strcmp(r->method, "DELETE") ? api_cancel(r) : api_get(r);
    case ROUTE_JOB_IMAGE:
        return api_image(r);
    case ROUTE_JOB_CANCEL:
        return api_cancel(r);
    case ROUTE_JOB_EVENTS:
        return api_events(r);
    case ROUTE_GENERATE_CONCEPT:
        return compat_generate(r);
    case ROUTE_IMAGE_STATUS:
        return compat_status(r);
    default:
        return http_error(r, 404, "not_found", "no such resource", NULL);
    }
}

static enum MHD_Result dispatch(http_req *r) {
    const char *allow;
    r->route = match(r->url, r->arg, sizeof r->arg, &allow);
    if (r->route == ROUTE_OTHER) return http_error(r, 404, "not_found", "no such resource", NULL);
    if (!strcmp(r->method, "OPTIONS")) return preflight(r, allow);
    const char *m = r->is_head ? "GET" : r->method;
    if (!method_allowed(m, allow)) {
        char msg[96];
        snprintf(msg, sizeof msg, "%s is not allowed here (allowed: %s)", r->method, allow);
        struct MHD_Response *resp = NULL;
        cJSON *o = cJSON_CreateObject();
        cJSON *e = o ? cJSON_AddObjectToObject(o, "error") : NULL;
        if (e) {
            cJSON_AddStringToObject(e, "code", "method_not_allowed");
            cJSON_AddStringToObject(e, "message", msg);
        }
        char *text = o ? cJSON_PrintUnformatted(o) : NULL;
        cJSON_Delete(o);
        if (text && (resp = text_response(text, strlen(text))))
            MHD_add_response_header(resp, "Allow", allow);
        else
            free(text);
        return http_send(r, 405, resp, "application/json", "no-store");
    }
    if (needs_auth(r->route) && !authorized(r)) {
        return http_error(r, 401, "unauthorized", "a valid bearer token is required", NULL);
    }
    if (r->too_big) {
        char msg[96];
        snprintf(msg, sizeof msg, "the body is larger than %zu bytes", r->srv->cfg.body_max);
        return http_error(r, 413, "payload_too_large", msg, "body");
    }
    return dispatch_route(r);
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
        r->route = ROUTE_OTHER;
        set_request_id(s, r);
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > s->cfg.body_max) r->too_big = 1;
        *con_cls = r;
        return MHD_YES;
    }
    if (*upload_size) {
        if (!r->too_big && r->body_len + *upload_size <= s->cfg.body_max) {
            char *nb = realloc(r->body, r->body_len + *upload_size + 1);
            if (!nb) return MHD_NO;
            memcpy(nb + r->body_len, upload, *upload_size);
            r->body = nb;
            r->body_len += *upload_size;
            nb[r->body_len] = 0;
        } else {
            r->too_big = 1;
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (r->responded) return MHD_YES;
    return dispatch(r);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    (void)cls, (void)c, (void)toe;
    http_req *r = *con_cls;
    if (!r) return;
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
    const char **fields[] = {&s->cfg.host,       &s->cfg.token,        &s->cfg.cors_origin,
                             &s->cfg.static_dir, &s->cfg.openapi_path, &s->cfg.images_dir,
                             &s->cfg.model_desc};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        if (!*fields[i]) continue;
        if (!(s->strings[i] = strdup(*fields[i])))
            return easel_seterr(EASEL_ENOMEM, "out of memory");
        *fields[i] = s->strings[i];
    }
    return EASEL_OK;
}

static easel_err bind_addr(const server_config *cfg, struct sockaddr_storage *ss, int *v6) {
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
    } else {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)cfg->port);
        if (inet_pton(AF_INET, host, &a4->sin_addr) != 1) goto bad;
    }
    return EASEL_OK;
bad:
    return easel_seterr(EASEL_EINVAL, "--host: '%s' is not an IPv4 or IPv6 address", host);
}

/* Appends " 'sha256-<base64>'" for the text of every inline <tag> element of
 * the page (NUL-terminated) to out. The browser hashes the element's text as
 * parsed: the UTF-8 bytes with CR LF and lone CR read as LF, so the same is
 * hashed here. */
static void hash_blocks(const char *html, const char *tag, char *out, size_t cap) {
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
        sha256_ctx c;
        sha256_init(&c);
        for (const char *q = body; q < stop; q++) {
            char ch = *q;
            if (ch == '\r') {
                ch = '\n';
                if (q + 1 < stop && q[1] == '\n') q++;
            }
            sha256_update(&c, &ch, 1);
        }
        uint8_t d[32];
        char b64[48];
        sha256_final(&c, d);
        base64_encode(d, sizeof d, b64);
        size_t used = strlen(out);
        snprintf(out + used, cap - used, " 'sha256-%s'", b64);
        p = stop;
    }
}

/* The demo page's Content-Security-Policy: default-src 'none'; its inline
 * <script> and <style> blocks allowed by hash and nothing else inline (no
 * 'unsafe-inline', no eval, no inline event handlers or style attributes);
 * fetch/EventSource and images from this origin only; no framing. Recomputed
 * from the file at start, so an edited page keeps working. */
static char *page_csp(const char *html) {
    char scripts[1024] = "", styles[1024] = "";
    hash_blocks(html, "script", scripts, sizeof scripts);
    hash_blocks(html, "style", styles, sizeof styles);
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
        log_warn("http: out of memory building the page's policy; the page's scripts are blocked");
}

easel_err server_start(const server_config *cfg, server **out) {
    *out = NULL;
    server *s = calloc(1, sizeof *s);
    if (!s) return easel_seterr(EASEL_ENOMEM, "out of memory");
    pthread_mutex_init(&s->sse_mu, NULL);
    s->id_prefix = params_random64() & 0xffffffffull;
    easel_err e = copy_config(s, cfg);
    struct sockaddr_storage ss;
    int v6 = 0;
    if (!e) e = bind_addr(&s->cfg, &ss, &v6);
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
    for (int r = 0; r < ROUTE_COUNT; r++)
        for (size_t k = 0; k <= N_STATUS && off < n; k++) {
            unsigned long long v = atomic_load_explicit(&s->counts[r][k], memory_order_relaxed);
            if (!v) continue;
            char st[8];
            if (k < N_STATUS)
                snprintf(st, sizeof st, "%u", tracked_status[k]);
            else
                snprintf(st, sizeof st, "other");
            w = snprintf(buf + off, n - off,
                         "easel_http_requests_total{route=\"%s\",status=\"%s\"} %llu\n",
                         route_names[r], st, v);
            off += w > 0 ? (size_t)w : 0;
        }
    return (int)(off < n ? off : n - 1);
}
