/* libFuzzer target for the URL router (the route table of http/server.c
 * through server_match): any path and method give a row of the table or
 * -1; a {id}/{name} argument fits its buffer, is a substring of the path
 * without '/' (so a file name taken from it cannot leave its directory),
 * and only the paths the API names reach the static and upload routes; a
 * path some row names always gets a non-empty Allow list. Also checks
 * http_is_job_id on the same bytes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http/server.h"

static const char *methods[] = {"GET", "HEAD", "POST", "DELETE", "PUT", "OPTIONS"};

static void check_route(const char *url, const char *method) {
    char arg[80], allow[96];
    memset(arg, 0x5a, sizeof arg);
    size_t n_routes;
    const route *routes = server_routes(&n_routes);
    int i = server_match(method, url, arg, sizeof arg, allow, sizeof allow);
    if (i < -1 || i >= (int)n_routes) abort();
    if (i < 0) return;
    if (!allow[0]) abort();
    const route *r = &routes[i];
    if (strchr(r->e.pattern, '{')) {
        size_t n = strnlen(arg, sizeof arg);
        if (n == 0 || n == sizeof arg) abort();
        if (strchr(arg, '/') || !strstr(url, arg)) abort();
    }
    if (!strcmp(r->name, "/") && strcmp(url, "/") && strcmp(url, "/index.html")) abort();
    if (!strncmp(r->e.pattern, "/uploads/", 9) && strncmp(url, "/uploads/conceptual_images/", 27))
        abort();
}

static void check_id(const char *s) {
    if (!http_is_job_id(s)) return;
    if (strlen(s) != 36 || strspn(s, "0123456789abcdefABCDEF-") != 36) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *url = malloc(size + 1); /* exact size: reads past the NUL are ASan reports */
    if (!url) return 0;
    memcpy(url, data, size);
    url[size] = 0;
    for (size_t m = 0; m < sizeof methods / sizeof methods[0]; m++)
        check_route(url, methods[m]);
    check_id(url);
    free(url);
    return 0;
}
