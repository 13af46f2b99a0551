/* `easel bench http`: measures a running job service (easel serve, or a peer
 * such as bench/peers/seed_service.py). Job start latency is timed here, one
 * POST at a time on a keep-alive connection; status polls/s come from wrk
 * (keep-alive, a Lua done() hook prints its numbers as JSON). */
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "bench/bench.h"
#include "engine/opts.h"
#include "../cli/version.h"

extern char **environ;

#define BH_MAX_TARGETS 4
#define BH_MAX_TARGETS_STR "4"
#define BH_BUF 65536

typedef struct {
    const char *name, *url, *api; /* api: "v1" or "compat" */
    int is_peer;                  /* given with --peer: the others' ratios are against it */
    char *spec;                   /* the option's copy that name/url/api point into */
} bh_target;

typedef struct {
    bh_target t[BH_MAX_TARGETS];
    int n;
    int starts, duration, connections, threads, cancel;
    const char *json, *wrk;
} bh_opts;

typedef struct {
    int n, errors;
    double p50_ms, p99_ms, max_ms, mean_ms;
    double rps, poll_p50_ms, poll_p99_ms;
    long poll_requests, poll_errors;
    char job_id[64], error[200];
} bh_result;

static double bh_now_ms(void) {
    return bench_now() * 1e3;
}

/* ---- a minimal keep-alive HTTP/1.1 client (Content-Length bodies only) ---- */

typedef struct {
    int fd;
    char host[128], port[16];
    char buf[BH_BUF];
    size_t len; /* bytes buffered beyond the last response */
} bh_conn;

/* "http://host:port" -> host, port. */
static int bh_parse_url(const char *url, char *host, size_t hl, char *port, size_t pl) {
    if (strncmp(url, "http://", 7)) return -1;
    const char *h = url + 7, *c = strchr(h, ':');
    const char *end = h + strcspn(h, "/");
    if (!c || c > end || (size_t)(c - h) >= hl || (size_t)(end - c - 1) >= pl || end == c + 1)
        return -1;
    snprintf(host, hl, "%.*s", (int)(c - h), h);
    snprintf(port, pl, "%.*s", (int)(end - c - 1), c + 1);
    return 0;
}

static int bh_connect(bh_conn *c, const char *url) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
    c->fd = -1;
    c->len = 0;
    if (bh_parse_url(url, c->host, sizeof c->host, c->port, sizeof c->port)) return -1;
    if (getaddrinfo(c->host, c->port, &hints, &ai)) return -1;
    for (struct addrinfo *p = ai; p && c->fd < 0; p = p->ai_next) {
        c->fd = socket(p->ai_family, p->ai_socktype | SOCK_CLOEXEC, p->ai_protocol);
        if (c->fd >= 0 && connect(c->fd, p->ai_addr, p->ai_addrlen)) {
            close(c->fd);
            c->fd = -1;
        }
    }
    freeaddrinfo(ai);
    if (c->fd < 0) return -1;
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return 0;
}

static int bh_send_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Content-Length of a header block ("-1" if absent). */
static long bh_content_length(const char *hdr, size_t hlen) {
    for (const char *p = hdr; p && p < hdr + hlen; p = memchr(p, '\n', hdr + hlen - p)) {
        if (*p == '\n') p++;
        if (!strncasecmp(p, "content-length:", 15)) return strtol(p + 15, NULL, 10);
    }
    return -1;
}

/* Sends one request and reads its response; the body (NUL-terminated, cut to
 * cap) goes to body. Returns the status code, or -1 on a transport error. */
static int bh_request(bh_conn *c, const char *method, const char *path, const char *json,
                      char *body, size_t cap) {
    char req[2048];
    int n = snprintf(req, sizeof req,
                     "%s %s HTTP/1.1\r\nHost: %s:%s\r\nAccept: application/json\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                     method, path, c->host, c->port, json ? strlen(json) : 0, json ? json : "");
    if (n < 0 || (size_t)n >= sizeof req || bh_send_all(c->fd, req, (size_t)n)) return -1;
    for (;;) {
        char *eoh = c->len ? memmem(c->buf, c->len, "\r\n\r\n", 4) : NULL;
        if (eoh) {
            size_t hlen = (size_t)(eoh - c->buf) + 4;
            long clen = bh_content_length(c->buf, hlen);
            if (clen < 0 || hlen + (size_t)clen > sizeof c->buf) return -1;
            if (c->len >= hlen + (size_t)clen) {
                int status = 0;
                if (sscanf(c->buf, "HTTP/1.%*d %d", &status) != 1) return -1;
                size_t bl = (size_t)clen < cap ? (size_t)clen : cap - 1;
                memcpy(body, c->buf + hlen, bl);
                body[bl] = 0;
                c->len -= hlen + (size_t)clen;
                memmove(c->buf, c->buf + hlen + clen, c->len);
                return status;
            }
        }
        if (c->len == sizeof c->buf) return -1;
        ssize_t r = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
        if (r <= 0) return -1;
        c->len += (size_t)r;
    }
}

/* The job id of a start response: "id" (v1) or "job_id" (seed API). */
static int bh_job_id(const char *body, char *id, size_t len) {
    cJSON *j = cJSON_Parse(body);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "job_id");
    if (!cJSON_IsString(v)) v = cJSON_GetObjectItemCaseSensitive(j, "id");
    int ok = cJSON_IsString(v) && strlen(v->valuestring) < len;
    if (ok) snprintf(id, len, "%s", v->valuestring);
    cJSON_Delete(j);
    return ok ? 0 : -1;
}

static int bh_cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double bh_pct(const double *sorted, int n, double p) {
    if (!n) return 0;
    int i = (int)(p / 100.0 * n + 0.5) - 1;
    return sorted[i < 0 ? 0 : i >= n ? n - 1 : i];
}

static const char *bh_start_path(const bh_target *t) {
    return strcmp(t->api, "v1") ? "/generate-concept" : "/v1/jobs";
}

static const char *bh_start_body(const bh_target *t) {
    /* Small jobs so that easel's workers, which run them, barely load the CPU. */
    if (!strcmp(t->api, "v1"))
        return "{\"prompt\":\"a cozy living room, scandinavian style\",\"width\":64,"
               "\"height\":64,\"steps\":1}";
    return "{\"room_type\":\"living_room\",\"style\":\"scandinavian\","
           "\"prompt\":\"a cozy living room, scandinavian style\"}";
}

/* N sequential job starts; then each job is canceled (not timed) so that the
 * workers do not compete with the poll bench. The first id is kept for polls. */
static int bh_starts(const bh_opts *o, const bh_target *t, bh_result *r) {
    bh_conn c;
    char body[4096], path[256], (*ids)[64] = calloc((size_t)o->starts, sizeof *ids);
    double *lat = malloc((size_t)o->starts * sizeof *lat), sum = 0;
    int rc = -1;
    if (!ids || !lat) goto out;
    if (bh_connect(&c, t->url)) {
        snprintf(r->error, sizeof r->error, "cannot connect to %s", t->url);
        goto out;
    }
    for (int i = 0; i < o->starts; i++) {
        double t0 = bh_now_ms();
        int st = bh_request(&c, "POST", bh_start_path(t), bh_start_body(t), body, sizeof body);
        double dt = bh_now_ms() - t0;
        if (st < 0) {
            snprintf(r->error, sizeof r->error, "connection lost after %d starts", i);
            break;
        }
        if (st / 100 != 2 || bh_job_id(body, ids[r->n], sizeof ids[0])) {
            if (!r->errors++) snprintf(r->error, sizeof r->error, "HTTP %d: %.120s", st, body);
            continue;
        }
        lat[r->n++] = dt;
        sum += dt;
    }
    if (r->n) {
        snprintf(r->job_id, sizeof r->job_id, "%s", ids[0]);
        qsort(lat, (size_t)r->n, sizeof *lat, bh_cmp);
        r->p50_ms = bh_pct(lat, r->n, 50);
        r->p99_ms = bh_pct(lat, r->n, 99);
        r->max_ms = lat[r->n - 1];
        r->mean_ms = sum / r->n;
        rc = 0;
    }
    for (int i = 0; o->cancel && i < r->n; i++) {
        snprintf(path, sizeof path, "/v1/jobs/%s/cancel", ids[i]);
        if (bh_request(&c, "POST", path, "{}", body, sizeof body) < 0) break;
    }
    close(c.fd);
out:
    free(ids);
    free(lat);
    return rc;
}

/* ---- wrk ---- */

static const char bh_lua[] =
    "done = function(s, lat, req)\n"
    "  local e = s.errors\n"
    "  io.write(string.format('WRKJSON {\"requests\":%d,\"duration_us\":%d,\"connect\":%d,"
    "\"read\":%d,\"write\":%d,\"status\":%d,\"timeout\":%d,\"p50_us\":%d,\"p99_us\":%d}\\n',\n"
    "    s.requests, s.duration, e.connect, e.read, e.write, e.status, e.timeout,\n"
    "    lat:percentile(50), lat:percentile(99)))\n"
    "end\n";

/* Runs wrk and returns its stdout (malloc'd), or NULL. */
static char *bh_run_wrk(const bh_opts *o, const char *url) {
    char lua[] = "/tmp/easel-bench-wrk-XXXXXX.lua", th[16], co[16], du[16];
    int fd = mkstemps(lua, 4), pfd[2] = {-1, -1};
    char *out = NULL;
    if (fd < 0) return NULL;
    int ok = write(fd, bh_lua, sizeof bh_lua - 1) == (ssize_t)(sizeof bh_lua - 1);
    close(fd);
    snprintf(th, sizeof th, "%d", o->threads);
    snprintf(co, sizeof co, "%d", o->connections);
    snprintf(du, sizeof du, "%ds", o->duration);
    char *args[] = {(char *)o->wrk, "-t", th, "-c", co, "-d", du, "-s", lua, (char *)url, NULL};
    posix_spawn_file_actions_t fa;
    pid_t pid;
    if (ok && !pipe(pfd) && !posix_spawn_file_actions_init(&fa)) {
        posix_spawn_file_actions_adddup2(&fa, pfd[1], 1);
        posix_spawn_file_actions_addclose(&fa, pfd[0]);
        if (!posix_spawnp(&pid, o->wrk, &fa, NULL, args, environ)) {
            close(pfd[1]);
            pfd[1] = -1;
            size_t len = 0, cap = 8192;
            out = malloc(cap);
            ssize_t r;
            while (out && (r = read(pfd[0], out + len, cap - len - 1)) > 0)
                if ((len += (size_t)r) == cap - 1) {
                    char *n = realloc(out, cap *= 2);
                    if (!n) free(out);
                    out = n;
                }
            if (out) out[len] = 0;
            int st;
            waitpid(pid, &st, 0);
        }
        posix_spawn_file_actions_destroy(&fa);
    }
    if (pfd[0] >= 0) close(pfd[0]);
    if (pfd[1] >= 0) close(pfd[1]);
    unlink(lua);
    return out;
}

static int bh_polls(const bh_opts *o, const bh_target *t, bh_result *r) {
    char url[512];
    if (!r->job_id[0]) return -1;
    snprintf(url, sizeof url, "%s%s%s", t->url,
             strcmp(t->api, "v1") ? "/image-status/" : "/v1/jobs/", r->job_id);
    char *out = bh_run_wrk(o, url);
    const char *js = out ? strstr(out, "WRKJSON ") : NULL;
    cJSON *j = js ? cJSON_Parse(js + 8) : NULL;
    if (!j) {
        snprintf(r->error, sizeof r->error, "wrk gave no result (is '%s' installed?)", o->wrk);
        free(out);
        return -1;
    }
    double req = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "requests"));
    double dur = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "duration_us"));
    const char *errs[] = {"connect", "read", "write", "status", "timeout"};
    for (int i = 0; i < 5; i++)
        r->poll_errors += (long)cJSON_GetNumberValue(cJSON_GetObjectItem(j, errs[i]));
    r->poll_requests = (long)req;
    r->rps = dur > 0 ? (req - r->poll_errors) / (dur / 1e6) : 0;
    r->poll_p50_ms = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "p50_us")) / 1e3;
    r->poll_p99_ms = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "p99_us")) / 1e3;
    cJSON_Delete(j);
    free(out);
    return 0;
}

/* ---- options, report ---- */

static int bh_add_target(bh_opts *o, char *spec, int is_peer) {
    char *eq = strchr(spec, '='), *comma;
    if (!eq || o->n == BH_MAX_TARGETS) return -1;
    *eq = 0;
    bh_target *t = &o->t[o->n];
    t->name = spec;
    t->url = eq + 1;
    t->api = "v1";
    t->is_peer = is_peer;
    if ((comma = strchr(eq + 1, ','))) {
        *comma = 0;
        t->api = comma + 1;
    }
    if (strcmp(t->api, "v1") && strcmp(t->api, "compat")) return -1;
    o->n++;
    return 0;
}

typedef struct {
    bh_opts *o;
    int is_peer;
} bh_target_ctx;

static const char *bh_target_opt(void *ctx, const char *v) {
    bh_target_ctx *c = ctx;
    char *copy = strdup(v); /* names point into it for the whole run */
    if (!copy) return "out of memory";
    if (bh_add_target(c->o, copy, c->is_peer)) {
        free(copy);
        return "must be NAME=URL[,v1|compat] (at most " BH_MAX_TARGETS_STR " in all)";
    }
    c->o->t[c->o->n - 1].spec = copy;
    return NULL;
}

static int bh_parse(int argc, char **argv, bh_opts *o) {
    *o = (bh_opts){
        .starts = 200, .duration = 5, .connections = 32, .threads = 1, .cancel = 1, .wrk = "wrk"};
    int no_cancel = 0;
    bh_target_ctx tc = {o, 0}, pc = {o, 1};
    const opt_spec specs[] = {
        {.name = "target",
         .kind = OPT_CALL,
         .call = bh_target_opt,
         .ctx = &tc,
         .metavar = "NAME=URL[,API]",
         .flags = OPT_REPEAT,
         .help = "a running service; API v1 (/v1/jobs) or compat (the seed's routes)"},
        {.name = "peer",
         .kind = OPT_CALL,
         .call = bh_target_opt,
         .ctx = &pc,
         .metavar = "NAME=URL[,API]",
         .flags = OPT_REPEAT,
         .help = "likewise, and the others' ratios are against it"},
        {.name = "starts",
         .kind = OPT_INT,
         .dst = &o->starts,
         .lo = 1,
         .hi = 1000000,
         .metavar = "N",
         .help = "sequential job starts timed (200)"},
        {.name = "duration",
         .kind = OPT_INT,
         .dst = &o->duration,
         .lo = 1,
         .hi = 86400,
         .metavar = "S",
         .help = "wrk seconds per poll run (5)"},
        {.name = "connections",
         .kind = OPT_INT,
         .dst = &o->connections,
         .lo = 1,
         .hi = 100000,
         .metavar = "N",
         .help = "wrk keep-alive connections (32)"},
        {.name = "threads",
         .kind = OPT_INT,
         .dst = &o->threads,
         .lo = 1,
         .hi = 256,
         .metavar = "N",
         .help = "wrk threads (1: the server keeps the other core)"},
        {.name = "no-cancel",
         .kind = OPT_FLAG,
         .dst = &no_cancel,
         .help = "leave the started jobs queued"},
        {.name = "wrk", .kind = OPT_STRING, .dst = &o->wrk, .metavar = "PATH", .help = "(wrk)"},
        {.name = "json",
         .kind = OPT_STRING,
         .dst = &o->json,
         .metavar = "FILE",
         .help = "machine-readable results"},
        {0}};
    const opts_cmd cmd = {.name = "easel bench http",
                          .synopsis = "--target NAME=URL[,API] [--peer NAME=URL[,API]] [options]",
                          .specs = specs};
    int r = opts_parse(&cmd, argc, argv);
    if (r) return r;
    if (no_cancel) o->cancel = 0;
    if (!o->n) {
        fprintf(stderr, "easel bench http: give at least one --target\n");
        return 2;
    }
    return 0;
}

static cJSON *bh_result_json(const bh_target *t, const bh_result *r) {
    cJSON *e = cJSON_CreateObject();
    cJSON_AddStringToObject(e, "name", t->name);
    cJSON_AddStringToObject(e, "url", t->url);
    cJSON_AddStringToObject(e, "api", t->api);
    cJSON_AddNumberToObject(e, "starts", r->n);
    cJSON_AddNumberToObject(e, "start_errors", r->errors);
    cJSON_AddNumberToObject(e, "start_p50_ms", r->p50_ms);
    cJSON_AddNumberToObject(e, "start_p99_ms", r->p99_ms);
    cJSON_AddNumberToObject(e, "start_max_ms", r->max_ms);
    cJSON_AddNumberToObject(e, "start_mean_ms", r->mean_ms);
    cJSON_AddNumberToObject(e, "polls_per_s", r->rps);
    cJSON_AddNumberToObject(e, "poll_requests", (double)r->poll_requests);
    cJSON_AddNumberToObject(e, "poll_errors", (double)r->poll_errors);
    cJSON_AddNumberToObject(e, "poll_p50_ms", r->poll_p50_ms);
    cJSON_AddNumberToObject(e, "poll_p99_ms", r->poll_p99_ms);
    if (r->error[0]) cJSON_AddStringToObject(e, "error", r->error);
    return e;
}

static void bh_report(const bh_opts *o, const bh_result *r, cJSON *root) {
    int p = -1;
    for (int i = 0; i < o->n && p < 0; i++)
        if (o->t[i].is_peer) p = i;
    const bh_result *peer = p >= 0 ? &r[p] : NULL;
    cJSON *arr = cJSON_AddArrayToObject(root, "targets");
    printf("easel bench http: %d sequential starts; polls: wrk -t%d -c%d -d%ds (keep-alive)\n",
           o->starts, o->threads, o->connections, o->duration);
    printf("  %-22s %-7s %9s %9s %9s %12s %9s %9s\n", "target", "api", "start50", "start99",
           "startmax", "polls/s", "poll50", "poll99");
    for (int i = 0; i < o->n; i++) {
        printf("  %-22s %-7s %7.3fms %7.3fms %7.3fms %12.0f %7.3fms %7.3fms%s%s\n", o->t[i].name,
               o->t[i].api, r[i].p50_ms, r[i].p99_ms, r[i].max_ms, r[i].rps, r[i].poll_p50_ms,
               r[i].poll_p99_ms, r[i].error[0] ? "  ! " : "", r[i].error);
        cJSON *e = bh_result_json(&o->t[i], &r[i]);
        if (peer && !o->t[i].is_peer && peer->rps > 0 && r[i].p99_ms > 0) {
            double pr = r[i].rps / peer->rps, sr = peer->p99_ms / r[i].p99_ms;
            printf("  %-22s vs %s: polls/s x%.1f, start p99 x%.1f faster\n", "", o->t[p].name, pr,
                   sr);
            cJSON_AddNumberToObject(e, "polls_ratio_vs_peer", pr);
            cJSON_AddNumberToObject(e, "start_p99_ratio_vs_peer", sr);
        }
        cJSON_AddItemToArray(arr, e);
    }
}

int bench_http(int argc, char **argv) {
    bh_opts o;
    bh_result r[BH_MAX_TARGETS] = {0};
    int rc = bh_parse(argc, argv, &o);
    if (rc) {
        for (int i = 0; i < o.n; i++)
            free(o.t[i].spec);
        return rc == 1 ? 0 : rc;
    }
    int failed = 0;
    for (int i = 0; i < o.n; i++) {
        if (bh_starts(&o, &o.t[i], &r[i]) || bh_polls(&o, &o.t[i], &r[i])) failed = 1;
        if (r[i].error[0]) fprintf(stderr, "bench http: %s: %s\n", o.t[i].name, r[i].error);
    }
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "bench", "http");
    cJSON_AddStringToObject(root, "git", EASEL_GIT);
    cJSON_AddNumberToObject(root, "starts", o.starts);
    cJSON_AddNumberToObject(root, "wrk_threads", o.threads);
    cJSON_AddNumberToObject(root, "wrk_connections", o.connections);
    cJSON_AddNumberToObject(root, "wrk_duration_s", o.duration);
    bh_report(&o, r, root);
    if (o.json) {
        char *text = cJSON_Print(root);
        FILE *f = text ? fopen(o.json, "w") : NULL;
        int ok = f && fputs(text, f) >= 0;
        if (f && fclose(f)) ok = 0;
        if (!ok) {
            fprintf(stderr, "bench http: cannot write %s\n", o.json);
            failed = 1;
        }
        free(text);
    }
    cJSON_Delete(root);
    for (int i = 0; i < o.n; i++)
        free(o.t[i].spec);
    return failed;
}
