/* The route table's matcher: a path and a method against patterns such as
 * "/v1/jobs/{id}/image" (one {name} segment at most, which matches one
 * non-empty path segment without '/'). Pure functions over a table the
 * server owns, so the fuzzer reaches them directly. */
#ifndef EASEL_ROUTER_H
#define EASEL_ROUTER_H

#include <stddef.h>

typedef struct {
    const char *method;  /* "GET" (also answers HEAD), "POST", "DELETE" */
    const char *pattern; /* "/v1/jobs/{id}" */
} router_entry;

/* Finds the entry for (method, path) among n entries of stride `stride`
 * bytes whose first member is a router_entry. Returns its index, or -1.
 * allow (cap bytes) receives the methods some entry answers for this path
 * ("GET, HEAD, DELETE"), "" when no pattern matches it (404); arg receives
 * the {segment} (truncated matches are refused, so arg always fits). */
int router_match(const void *table, size_t n, size_t stride, const char *method, const char *path,
                 char *arg, size_t argcap, char *allow, size_t cap);

#endif
