/* Request bodies as the API documents them, strictly: exact media types
 * (parameters allowed), valid UTF-8, one JSON value with nothing after it, no
 * duplicate keys, no NUL characters in strings. Every refusal says what and
 * where, so the HTTP layer answers 400/415 with a message a client can act on. */
#ifndef EASEL_HTTP_JSON_H
#define EASEL_HTTP_JSON_H

#include <cjson/cJSON.h>
#include <stddef.h>

/* 1 if the Content-Type value ct is exactly `type` (case-insensitive),
 * optionally followed by parameters ("application/json; charset=utf-8"). */
int json_media_type_is(const char *ct, const char *type);

/* Parses body[0..len) strictly. On success returns the value; on failure
 * NULL with msg filled ("trailing data after the JSON value at byte 17",
 * "duplicate key \"prompt\"", "prompt: not valid UTF-8", ...) and field
 * (fcap bytes) naming the key the problem is in, or "body". */
cJSON *json_parse_strict(const char *body, size_t len, char *msg, size_t cap, char *field,
                         size_t fcap);

/* 1 if some string of v (keys and values, recursively) is not valid UTF-8
 * or contains a NUL; *where gets the offending key's name (or "body"). For
 * trees built from other sources than json_parse_strict (forms). */
int json_bad_text(const cJSON *v, const char **where);

#endif
