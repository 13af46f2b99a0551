/* Webhook delivery (see webhooks.h). One thread claims due deliveries from
 * the store's outbox, builds each payload from the job as it is now, signs
 * it, POSTs it, and records the outcome: delivered, a retry at a backoff,
 * or failed once --webhook-retry has passed since the event. */
#include "webhooks.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <netdb.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "../engine/log.h"

#define WH_BATCH 8
#define WH_BODY_CAP 4096 /* bytes of a receiver's answer we read at most */
#define WH_CONNECT_S 5
#define WH_TIMEOUT_S 10

/* ---- addresses ---- */

/* Non-public IPv4: this network, private, CGNAT, loopback, link-local,
 * IETF protocol assignments, benchmarking, multicast, reserved, broadcast. */
static int v4_special(const unsigned char *a) {
    return a[0] == 0 || a[0] == 10 || (a[0] == 100 && (a[1] & 0xc0) == 64) || a[0] == 127 ||
           (a[0] == 169 && a[1] == 254) || (a[0] == 172 && (a[1] & 0xf0) == 16) ||
           (a[0] == 192 && a[1] == 0 && a[2] == 0) || (a[0] == 192 && a[1] == 168) ||
           (a[0] == 198 && (a[1] & 0xfe) == 18) || a[0] >= 224;
}

/* Non-public IPv6: unspecified, loopback, link-local, unique local,
 * multicast; v4-mapped addresses as their IPv4. */
static int v6_special(const unsigned char *a) {
    static const unsigned char zero[16] = {0}, mapped[12] = {[10] = 0xff, [11] = 0xff};
    if (!memcmp(a, mapped, 12)) return v4_special(a + 12);
    if (!memcmp(a, zero, 15) && (a[15] == 0 || a[15] == 1)) return 1;
    return (a[0] == 0xfe && (a[1] & 0xc0) == 0x80) || (a[0] & 0xfe) == 0xfc || a[0] == 0xff;
}

/* Does address a (family fam) fall in the allow entry (an address or CIDR)? */
static int in_cidr(int fam, const unsigned char *a, const char *entry) {
    char buf[80];
    snprintf(buf, sizeof buf, "%s", entry);
    char *slash = strchr(buf, '/');
    int bits = -1;
    if (slash) *slash = 0, bits = atoi(slash + 1);
    unsigned char net[16];
    int len = fam == AF_INET ? 4 : 16;
    if (inet_pton(fam, buf, net) != 1) return 0;
    if (bits < 0 || bits > len * 8) bits = len * 8;
    for (int i = 0; i < len && bits > 0; i++, bits -= 8) {
        unsigned char mask = bits >= 8 ? 0xff : (unsigned char)(0xff << (8 - bits));
        if ((a[i] & mask) != (net[i] & mask)) return 0;
    }
    return 1;
}

static int allowed_addr(int fam, const unsigned char *a, const char *const *allow, int n) {
    if (!(fam == AF_INET ? v4_special(a) : v6_special(a))) return 1;
    for (int i = 0; i < n; i++)
        if (!strcmp(allow[i], "*") || in_cidr(fam, a, allow[i])) return 1;
    return 0;
}

static int allowed_name(const char *host, const char *const *allow, int n) {
    for (int i = 0; i < n; i++)
        if (!strcmp(allow[i], "*") || !strcasecmp(allow[i], host)) return 1;
    return 0;
}

/* http(s)://host[:port][/...|?...] -> host. The host is a name or an IPv4
 * address ([A-Za-z0-9.-], no userinfo, no IPv6 literal: use a name), the
 * port 1-65535, the rest printable ASCII (a URL is sent encoded). The same
 * rule is the pattern of JobRequest.webhook in docs/openapi.yaml. */
static int parse_url(const char *url, char *host, size_t cap) {
    const char *p = !strncmp(url, "http://", 7)    ? url + 7
                    : !strncmp(url, "https://", 8) ? url + 8
                                                   : NULL;
    if (!p) return -1;
    size_t n = strspn(p, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-");
    if (!n || n > 253 || n >= cap) return -1;
    memcpy(host, p, n);
    host[n] = 0;
    p += n;
    if (*p == ':') {
        size_t d = strspn(++p, "0123456789");
        if (!d || d > 5 || *p == '0' || atol(p) > 65535) return -1;
        p += d;
    }
    if (*p && *p != '/' && *p != '?') return -1;
    for (; *p; p++)
        if (*p < 0x21 || *p > 0x7e) return -1;
    return 0;
}

int webhooks_check_url(const char *url, const char *const *allow, int n_allow, char *msg,
                       size_t cap) {
    char host[256];
    if (parse_url(url, host, sizeof host))
        return snprintf(msg, cap,
                        "must be http(s)://HOST[:PORT][/PATH], HOST a name or IPv4 address, in "
                        "printable ASCII"),
               -1;
    if (allowed_name(host, allow, n_allow)) return 0;
    unsigned char a[16];
    int fam = inet_pton(AF_INET, host, a) == 1    ? AF_INET
              : inet_pton(AF_INET6, host, a) == 1 ? AF_INET6
                                                  : 0;
    if (fam) {
        if (allowed_addr(fam, a, allow, n_allow)) return 0;
        return snprintf(msg, cap,
                        "%s is not a public address (loopback, private or link-local); allow it "
                        "with --webhook-allow",
                        host),
               -1;
    }
    if (!strcasecmp(host, "localhost") || strstr(host, ".localhost"))
        return snprintf(msg, cap, "%s is this machine; allow it with --webhook-allow", host), -1;
    /* A name is not resolved here (a slow resolver would hold this HTTP
     * thread): every delivery checks the address it actually connects to
     * (open_socket), so a name that resolves to a private address fails
     * there, each time, rebinding or not. */
    return 0;
}

/* ---- signatures ---- */

int webhooks_new_secret(char *out, size_t cap) {
    unsigned char k[24];
    if (cap < 48 || getrandom(k, sizeof k, 0) != (ssize_t)sizeof k) return -1;
    memcpy(out, "whsec_", 6);
    EVP_EncodeBlock((unsigned char *)out + 6, k, (int)sizeof k);
    return 0;
}

int webhooks_sign(const char *secret, const char *id, long long timestamp, const char *body,
                  size_t len, char *out, size_t cap) {
    const char *b64 = !strncmp(secret, "whsec_", 6) ? secret + 6 : secret;
    unsigned char key[256];
    size_t bl = strlen(b64);
    if (bl == 0 || bl % 4 || bl > 4 * (sizeof key / 3)) return -1;
    int kl = EVP_DecodeBlock(key, (const unsigned char *)b64, (int)bl);
    if (kl < 0) return -1;
    kl -= (b64[bl - 1] == '=') + (b64[bl - 2] == '='); /* DecodeBlock counts padding bytes */
    char head[160];
    int hl = snprintf(head, sizeof head, "%s.%lld.", id, timestamp);
    if (hl < 0 || (size_t)hl >= sizeof head) return -1;
    unsigned char *msg = malloc((size_t)hl + len + 1);
    if (!msg) return -1;
    memcpy(msg, head, (size_t)hl);
    memcpy(msg + hl, body, len);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int ml = 0;
    unsigned char *ok = HMAC(EVP_sha256(), key, kl, msg, (size_t)hl + len, mac, &ml);
    free(msg);
    if (!ok) return -1;
    char sig[128];
    EVP_EncodeBlock((unsigned char *)sig, mac, (int)ml);
    snprintf(out, cap, "v1,%s", sig);
    return 0;
}

/* ---- delivery ---- */

struct webhooks {
    webhooks_config cfg;
    char *strings[WEBHOOK_MAX_ALLOW + 2];
    jobs *js;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int kicked; /* an event was committed since the last look (under mu) */
    int stopping, started;
};

typedef struct {
    const webhooks *w;
    int refused; /* the open-socket check refused the address */
} conn_check;

/* libcurl asks us for each socket it opens: the address it resolved the
 * host to must be public or allowed (DNS may have changed since submit). */
static curl_socket_t open_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *a) {
    conn_check *cc = clientp;
    (void)purpose;
    const unsigned char *p =
        a->family == AF_INET ? (const unsigned char *)&((struct sockaddr_in *)&a->addr)->sin_addr
                             : (const unsigned char *)&((struct sockaddr_in6 *)&a->addr)->sin6_addr;
    if ((a->family != AF_INET && a->family != AF_INET6) ||
        !allowed_addr(a->family, p, cc->w->cfg.allow, cc->w->cfg.n_allow)) {
        cc->refused = 1;
        return CURL_SOCKET_BAD;
    }
    return socket(a->family, a->socktype, a->protocol);
}

static size_t drop_body(char *p, size_t size, size_t n, void *user) {
    size_t *seen = user;
    (void)p;
    *seen += size * n;
    return *seen > WH_BODY_CAP ? 0 : size * n; /* stop reading a chatty receiver */
}

typedef struct {
    cJSON *doc;
} doc_view;

static void view_doc(void *user, const job *j, const job_extra *x) {
    ((doc_view *)user)->doc = api_job_json(j, x);
}

/* The body: {"type":"job.<event>","timestamp":...,"data":<the job>}. */
static char *payload(webhooks *w, const outbox_row *r) {
    doc_view v = {NULL};
    jobs_view(w->js, r->job_id, view_doc, &v);
    if (!v.doc && (v.doc = cJSON_CreateObject())) { /* deleted meanwhile (retention) */
        cJSON_AddStringToObject(v.doc, "id", r->job_id);
        cJSON_AddStringToObject(v.doc, "status", "deleted");
    }
    cJSON *o = cJSON_CreateObject();
    char type[32], ts[40];
    snprintf(type, sizeof type, "job.%s", !strcmp(r->event, "start") ? "started" : r->event);
    http_time(jobs_now_ms(), ts, sizeof ts);
    cJSON_AddStringToObject(o, "type", type);
    cJSON_AddStringToObject(o, "timestamp", ts);
    cJSON_AddItemToObject(o, "data", v.doc);
    char *text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return text;
}

/* One attempt; 0 when the receiver answered 2xx, else -1 with err. */
static int post(webhooks *w, const outbox_row *r, char *err, size_t cap) {
    char *body = payload(w, r);
    if (!body) return snprintf(err, cap, "out of memory"), -1;
    long long ts = (long long)time(NULL);
    char sig[160], h_id[160], h_ts[64], h_sig[200];
    if (webhooks_sign(w->cfg.secret, r->id, ts, body, strlen(body), sig, sizeof sig)) {
        free(body);
        return snprintf(err, cap, "the webhook secret is not valid base64"), -1;
    }
    snprintf(h_id, sizeof h_id, "webhook-id: %s", r->id);
    snprintf(h_ts, sizeof h_ts, "webhook-timestamp: %lld", ts);
    snprintf(h_sig, sizeof h_sig, "webhook-signature: %s", sig);
    struct curl_slist *hd = NULL;
    hd = curl_slist_append(hd, "Content-Type: application/json");
    hd = curl_slist_append(hd, h_id);
    hd = curl_slist_append(hd, h_ts);
    hd = curl_slist_append(hd, h_sig);
    CURL *c = curl_easy_init();
    conn_check cc = {w, 0};
    size_t seen = 0;
    char ebuf[CURL_ERROR_SIZE] = "";
    long code = 0;
    CURLcode rc = CURLE_FAILED_INIT;
    if (c && hd) {
        curl_easy_setopt(c, CURLOPT_URL, r->url);
        curl_easy_setopt(c, CURLOPT_POST, 1L);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, hd);
        curl_easy_setopt(c, CURLOPT_USERAGENT, "easel/" EASEL_VERSION " (webhooks)");
        curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
        curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, (long)WH_CONNECT_S);
        curl_easy_setopt(c, CURLOPT_TIMEOUT, (long)WH_TIMEOUT_S);
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(c, CURLOPT_OPENSOCKETFUNCTION, open_socket);
        curl_easy_setopt(c, CURLOPT_OPENSOCKETDATA, &cc);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, drop_body);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, &seen);
        curl_easy_setopt(c, CURLOPT_ERRORBUFFER, ebuf);
        rc = curl_easy_perform(c);
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    }
    curl_easy_cleanup(c);
    curl_slist_free_all(hd);
    free(body);
    if (cc.refused)
        return snprintf(err, cap, "refused: the host resolves to a non-public address"), -1;
    if (code >= 200 && code < 300 && (rc == CURLE_OK || rc == CURLE_WRITE_ERROR)) return 0;
    if (code)
        snprintf(err, cap, "the receiver answered %ld", code);
    else
        snprintf(err, cap, "%s", ebuf[0] ? ebuf : curl_easy_strerror(rc));
    return -1;
}

/* Exponential backoff from 1 s, capped at 5 min, with jitter in [0.5, 1]. */
static int64_t backoff_ms(int attempts) {
    double d = 1000.0 * (1 << (attempts > 9 ? 9 : attempts));
    if (d > 300000) d = 300000;
    unsigned r = 0;
    if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r)
        r = (unsigned)attempts * 2654435761u;
    return (int64_t)(d * (0.5 + 0.5 * (r / 4294967296.0)));
}

static void deliver(webhooks *w, outbox_row *r) {
    char err[200] = "";
    int ok = post(w, r, err, sizeof err) == 0;
    int64_t now = jobs_now_ms();
    r->attempts++;
    if (ok) {
        r->status = OUTBOX_DELIVERED, r->done_ms = now, r->error[0] = 0;
    } else if (now - r->created_ms >= w->cfg.retry_ms) {
        r->status = OUTBOX_FAILED, r->done_ms = now;
        snprintf(r->error, sizeof r->error, "given up after %d attempts: %s", r->attempts, err);
        log_warn("webhooks: %s to %s: %s", r->id, r->url, r->error);
    } else {
        r->status = OUTBOX_PENDING, r->next_ms = now + backoff_ms(r->attempts);
        snprintf(r->error, sizeof r->error, "%s", err);
    }
    jobs_outbox_done(w->js, r);
}

static void kick(void *ctx) {
    webhooks *w = ctx;
    pthread_mutex_lock(&w->mu);
    w->kicked = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static void *deliver_main(void *arg) {
    webhooks *w = arg;
    outbox_row rows[WH_BATCH];
    for (;;) {
        pthread_mutex_lock(&w->mu);
        int stop = w->stopping;
        pthread_mutex_unlock(&w->mu);
        if (stop) break;
        int n = 0;
        jobs_outbox_due(w->js, w->cfg.owner, rows, WH_BATCH, &n);
        for (int i = 0; i < n; i++)
            deliver(w, &rows[i]);
        if (n) continue;
        /* woken by a committed event (kick); the second's timeout finds retries due */
        pthread_mutex_lock(&w->mu);
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 1;
        if (!w->stopping && !w->kicked) pthread_cond_timedwait(&w->cv, &w->mu, &until);
        w->kicked = 0;
        pthread_mutex_unlock(&w->mu);
    }
    return NULL;
}

easel_err webhooks_start(const webhooks_config *c, jobs *js, webhooks **out) {
    *out = NULL;
    if (!c->secret || !c->secret[0]) return easel_seterr(EASEL_EINVAL, "webhooks need a secret");
    char probe[160];
    if (webhooks_sign(c->secret, "x", 1, "", 0, probe, sizeof probe))
        return easel_seterr(EASEL_EINVAL, "--webhook-secret: not whsec_ followed by base64");
    webhooks *w = calloc(1, sizeof *w);
    if (!w) return easel_seterr(EASEL_ENOMEM, "out of memory");
    w->cfg = *c;
    const char **fields[WEBHOOK_MAX_ALLOW + 2] = {&w->cfg.secret, &w->cfg.owner};
    int nf = 2;
    for (int i = 0; i < c->n_allow && i < WEBHOOK_MAX_ALLOW; i++)
        fields[nf++] = &w->cfg.allow[i];
    for (int i = 0; i < nf; i++)
        if (*fields[i] && !(w->strings[i] = strdup(*fields[i]))) {
            webhooks_stop(w);
            return easel_seterr(EASEL_ENOMEM, "out of memory");
        } else if (*fields[i]) {
            *fields[i] = w->strings[i];
        }
    if (!w->cfg.owner) w->cfg.owner = "webhooks";
    w->js = js;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    if (pthread_create(&w->thread, NULL, deliver_main, w)) {
        webhooks_stop(w);
        return easel_seterr(EASEL_EIO, "cannot start the webhook thread");
    }
    w->started = 1;
    jobs_set_outbox_kick(js, kick, w);
    *out = w;
    return EASEL_OK;
}

void webhooks_stop(webhooks *w) {
    if (!w) return;
    if (w->started) {
        jobs_set_outbox_kick(w->js, NULL, NULL);
        pthread_mutex_lock(&w->mu);
        w->stopping = 1;
        pthread_cond_broadcast(&w->cv);
        pthread_mutex_unlock(&w->mu);
        pthread_join(w->thread, NULL);
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->cv);
    }
    for (size_t i = 0; i < sizeof w->strings / sizeof w->strings[0]; i++)
        free(w->strings[i]);
    free(w);
}
