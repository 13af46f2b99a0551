/* UTF-8 checks for text that crosses a trust boundary (request bodies,
 * safetensors headers, stored rows): what is valid, and where a string may be
 * cut without splitting a character. */
#ifndef EASEL_UTF8_H
#define EASEL_UTF8_H

#include <stddef.h>

/* 1 if s[0..n) is valid UTF-8 by Rust's str::from_utf8 rules (no overlong
 * forms, no surrogates, nothing above U+10FFFF). *bad (may be NULL) receives
 * the offset of the first invalid byte (n when valid). */
int utf8_valid(const void *s, size_t n, size_t *bad);
/* The largest k <= max such that s[0..k) ends on a character boundary of the
 * valid UTF-8 string s (of length n); n when n <= max. */
size_t utf8_cut(const char *s, size_t n, size_t max);

#endif
