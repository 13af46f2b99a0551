/* Webhooks: a job's start, progress and completion POSTed to the URL its
 * request gave, signed as the Standard Webhooks specification says
 * (webhook-id, webhook-timestamp, webhook-signature "v1,<base64 HMAC-SHA256
 * of id.timestamp.body>"), delivered by libcurl from the job store's
 * outbox: at least once (an event is queued in the same transaction as the
 * state change it reports, and survives kill -9 and restarts), retried
 * with exponential backoff and jitter for --webhook-retry, then recorded
 * as failed. SSRF: loopback, private, link-local and other non-public
 * targets are refused, at submit and again at connect time, unless
 * --webhook-allow lists them; no redirects; short timeouts; the answer's
 * body is not read beyond a few KB. */
#ifndef EASEL_WEBHOOKS_H
#define EASEL_WEBHOOKS_H

#include "server.h"

#define WEBHOOK_MAX_ALLOW 16

typedef struct {
    const char *secret;                   /* "whsec_<base64>" (the key is the decoded part) */
    int64_t retry_ms;                     /* deliveries are given up this long after their event */
    const char *allow[WEBHOOK_MAX_ALLOW]; /* "127.0.0.1", "10.0.0.0/8", "::1", "hooks.lan", "*" */
    int n_allow;
    const char *owner; /* this node's name, for the outbox leases */
} webhooks_config;

typedef struct webhooks webhooks;

/* Starts the delivery thread over js's outbox. */
easel_err webhooks_start(const webhooks_config *c, jobs *js, webhooks **out);
/* Stops it (an attempt in flight finishes first, within its timeout). NULL is fine. */
void webhooks_stop(webhooks *w);

/* 0 if url may receive webhooks: http(s), a host without userinfo, not a
 * literal non-public address or localhost unless allowed; else -1 with msg
 * saying why. Names are not resolved (deliveries check what they connect to). */
int webhooks_check_url(const char *url, const char *const *allow, int n_allow, char *msg,
                       size_t cap);
/* The v1 signature of id.timestamp.body with secret ("whsec_..."), into
 * out ("v1,<base64>"). -1 if the secret is not valid base64. */
int webhooks_sign(const char *secret, const char *id, long long timestamp, const char *body,
                  size_t len, char *out, size_t cap);
/* A new secret "whsec_<base64 of 24 random bytes>" into out (>= 48 bytes). */
int webhooks_new_secret(char *out, size_t cap);

#endif
