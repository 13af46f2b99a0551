/* Strict request-body parsing (see json.h). cJSON parses; the checks it
 * does not make (trailing data, duplicates, UTF-8, \u0000) are made here. */
#include "json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../engine/utf8.h"

int json_media_type_is(const char *ct, const char *type) {
    if (!ct) return 0;
    while (*ct == ' ' || *ct == '\t')
        ct++;
    size_t n = strlen(type);
    if (strncasecmp(ct, type, n)) return 0;
    const char *rest = ct + n;
    while (*rest == ' ' || *rest == '\t')
        rest++;
    return *rest == 0 || *rest == ';';
}

/* Offset of a "\u0000" escape in a JSON text, or -1. Backslash pairs are
 * skipped together, so "\\u0000" (a backslash and "u0000") is not one. */
static long nul_escape(const char *s, size_t n) {
    for (size_t i = 0; i + 1 < n; i++) {
        if (s[i] != '\\') continue;
        if (s[i + 1] == 'u' && i + 5 < n && !strncmp(s + i + 2, "0000", 4)) return (long)i;
        i++;
    }
    return -1;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The first key that appears twice in an object of v (recursively), or NULL.
 * Sorting the names makes a 10,000-key object cost n log n, not n². */
static const char *duplicate_key(const cJSON *v) {
    if (!cJSON_IsObject(v) && !cJSON_IsArray(v)) return NULL;
    size_t n = 0;
    for (const cJSON *c = v->child; c; c = c->next)
        n++;
    if (cJSON_IsObject(v) && n > 1) {
        const char **names = malloc(n * sizeof *names);
        if (!names) return "(out of memory)";
        size_t k = 0;
        for (const cJSON *c = v->child; c; c = c->next)
            names[k++] = c->string;
        qsort(names, n, sizeof *names, cmp_str);
        const char *dup = NULL;
        for (size_t i = 1; i < n && !dup; i++)
            if (!strcmp(names[i - 1], names[i])) dup = names[i];
        free(names);
        if (dup) return dup;
    }
    for (const cJSON *c = v->child; c; c = c->next) {
        const char *d = duplicate_key(c);
        if (d) return d;
    }
    return NULL;
}

cJSON *json_parse_strict(const char *body, size_t len, char *msg, size_t cap, char *field,
                         size_t fcap) {
    size_t bad;
    snprintf(field, fcap, "body");
    if (!body || !len) {
        snprintf(msg, cap, "the body is empty");
        return NULL;
    }
    if (!utf8_valid(body, len, &bad)) {
        /* name the field: cJSON passes the bytes through, so look for them */
        cJSON *v = cJSON_ParseWithLength(body, len);
        const char *where = "body";
        if (v && json_bad_text(v, &where)) snprintf(field, fcap, "%s", where);
        cJSON_Delete(v);
        snprintf(msg, cap, "%s: not valid UTF-8 (byte %zu of the body)", field, bad);
        return NULL;
    }
    long nul = nul_escape(body, len);
    if (nul >= 0) {
        snprintf(msg, cap, "strings must not contain NUL (\\u0000 at byte %ld)", nul);
        return NULL;
    }
    const char *end = NULL;
    cJSON *v = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    if (!v) {
        size_t at = end && end >= body ? (size_t)(end - body) : 0;
        snprintf(msg, cap, "the body is not valid JSON (near byte %zu)", at);
        return NULL;
    }
    size_t at = (size_t)(end - body);
    while (at < len && strchr(" \t\r\n", body[at]))
        at++;
    if (at < len) {
        cJSON_Delete(v);
        snprintf(msg, cap, "trailing data after the JSON value (byte %zu)", at);
        return NULL;
    }
    const char *dup = duplicate_key(v);
    if (dup) {
        snprintf(msg, cap, "duplicate key \"%.60s\"", dup);
        snprintf(field, fcap, "%s", dup);
        cJSON_Delete(v);
        return NULL;
    }
    return v;
}

static int bad_str(const char *s) {
    return s && !utf8_valid(s, strlen(s), NULL);
}

int json_bad_text(const cJSON *v, const char **where) {
    for (const cJSON *c = v ? v->child : NULL; c; c = c->next) {
        if (bad_str(c->string)) return *where = "body", 1;
        if (cJSON_IsString(c) && bad_str(c->valuestring))
            return *where = c->string ? c->string : "body", 1;
        if ((cJSON_IsObject(c) || cJSON_IsArray(c)) && json_bad_text(c, where)) {
            if (c->string && !strcmp(*where, "body")) *where = c->string;
            return 1;
        }
    }
    return 0;
}
