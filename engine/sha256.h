/* SHA-256 (FIPS 180-4), for content hashes: the demo page's Content-Security-
 * Policy names its inline <script>/<style> blocks by 'sha256-<base64>' hashes.
 * Not for secrets (no constant-time promises needed there). */
#ifndef EASEL_SHA256_H
#define EASEL_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t h[8];
    uint64_t len;      /* bytes hashed so far */
    uint8_t buf[64];   /* pending partial block */
    size_t nbuf;
} sha256_ctx;

void sha256_init(sha256_ctx *c);
void sha256_update(sha256_ctx *c, const void *data, size_t n);
void sha256_final(sha256_ctx *c, uint8_t out[32]);
void sha256(const void *data, size_t n, uint8_t out[32]);

/* Standard base64 (RFC 4648, '+' '/', '=' padding) of n bytes into out, which
 * must hold 4 * ((n + 2) / 3) + 1 bytes; returns the length written. */
size_t base64_encode(const uint8_t *in, size_t n, char *out);

#endif
