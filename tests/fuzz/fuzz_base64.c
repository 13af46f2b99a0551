/* libFuzzer target for base64_decode (http/uploads.c: the inline images of
 * JSON requests, "data:<mime>;base64," URLs included). The first byte picks
 * the size cap, the rest is the text. Checks: a success is within the cap;
 * on canonical standard base64 (alphabet, '=' only at the end, length a
 * multiple of 4) it agrees with OpenSSL's EVP_DecodeBlock; what it decodes
 * re-encodes (EVP_EncodeBlock) to a text it decodes to the same bytes; a
 * refusal leaves *out NULL (and nothing allocated: LeakSanitizer). */
#include <openssl/evp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http/uploads.h"

static int canonical(const uint8_t *s, size_t n) {
    if (n == 0 || n % 4) return 0;
    size_t pad = 0;
    while (pad < 2 && s[n - 1 - pad] == '=') pad++;
    for (size_t i = 0; i < n - pad; i++) {
        uint8_t c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '+' || c == '/'))
            return 0;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len) {
    if (len < 1) return 0;
    size_t max = data[0] < 128 ? (size_t)data[0] : ((size_t)1 << 20);
    size_t n = len - 1;
    char *text = malloc(n ? n : 1); /* exact size: a read past the end is an ASan report */
    if (!text) return 0;
    memcpy(text, data + 1, n);
    uint8_t *out = (uint8_t *)1;
    size_t got = 7;
    easel_err e = base64_decode(text, n, max, &out, &got);
    if (e) {
        if (out || got) abort();
        free(text);
        return 0;
    }
    if (got > max || (got && !out)) abort();
    if (canonical((const uint8_t *)text, n)) {
        unsigned char *ref = malloc(n / 4 * 3 + 1);
        if (!ref) abort();
        int k = EVP_DecodeBlock(ref, (const unsigned char *)text, (int)n);
        size_t pad = (text[n - 1] == '=') + (n > 1 && text[n - 2] == '=');
        if (k < 0 || (size_t)k - pad != got || memcmp(ref, out, got)) abort();
        free(ref);
    }
    /* round trip through OpenSSL's encoder */
    char *enc = malloc(4 * ((got + 2) / 3) + 1);
    if (!enc) abort();
    int m = EVP_EncodeBlock((unsigned char *)enc, out, (int)got);
    uint8_t *back = NULL;
    size_t blen = 0;
    if (base64_decode(enc, (size_t)m, max, &back, &blen) || blen != got ||
        (got && memcmp(back, out, got)))
        abort();
    free(back), free(enc), free(out), free(text);
    return 0;
}
