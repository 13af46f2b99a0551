/* UTF-8 validation and boundary-safe cutting (see utf8.h). */
#include "utf8.h"

#include <stdint.h>

int utf8_valid(const void *p, size_t n, size_t *bad) {
    const uint8_t *s = p;
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t len = c < 0x80                 ? 1
                     : c >= 0xc2 && c <= 0xdf ? 2
                     : c >= 0xe0 && c <= 0xef ? 3
                     : c >= 0xf0 && c <= 0xf4 ? 4
                                              : 0;
        if (!len || i + len > n) break;
        uint8_t lo = 0x80, hi = 0xbf;
        if (c == 0xe0) lo = 0xa0;
        if (c == 0xed) hi = 0x9f;
        if (c == 0xf0) lo = 0x90;
        if (c == 0xf4) hi = 0x8f;
        size_t k = 1;
        for (; k < len; k++) {
            uint8_t d = s[i + k];
            if (d < (k == 1 ? lo : 0x80) || d > (k == 1 ? hi : 0xbf)) break;
        }
        if (k < len) break;
        i += len;
    }
    if (bad) *bad = i;
    return i == n;
}

size_t utf8_cut(const char *s, size_t n, size_t max) {
    if (n <= max) return n;
    size_t k = max;
    while (k > 0 && ((uint8_t)s[k] & 0xc0) == 0x80) /* s[k] continues a character */
        k--;
    return k;
}
