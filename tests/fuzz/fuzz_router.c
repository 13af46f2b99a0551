/* libFuzzer target for the URL router of http/server.c (its static match()):
 * any path gives a route whose {id}/{name} argument fits its buffer, is a
 * substring of the path without '/' (so a file name taken from it cannot
 * leave its directory), and only the paths the API names reach the static
 * and upload routes. server.c is included whole so the static function is
 * reachable; its other symbols then come from here, not from libeasel. Also
 * checks http_is_job_id on the same bytes. */
#include "http/server.c"

static void check_route(const char *url, size_t len) {
    char arg[80];
    const char *allow = NULL;
    memset(arg, 0x5a, sizeof arg);
    enum route_id r = match(url, arg, sizeof arg, &allow);
    if (r < 0 || r >= ROUTE_COUNT || !allow) abort();
    int takes_arg = r == ROUTE_JOB || r == ROUTE_JOB_IMAGE || r == ROUTE_JOB_CANCEL ||
                    r == ROUTE_JOB_EVENTS || r == ROUTE_IMAGE_STATUS || r == ROUTE_UPLOADS;
    if (takes_arg) {
        size_t n = strnlen(arg, sizeof arg);
        if (n == 0 || n == sizeof arg) abort();
        if (strchr(arg, '/') || !strstr(url, arg)) abort();
    }
    if (r == ROUTE_STATIC && strcmp(url, "/") && strcmp(url, "/index.html")) abort();
    if (r == ROUTE_UPLOADS && strncmp(url, "/uploads/conceptual_images/", 27)) abort();
    (void)len;
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
    check_route(url, size);
    check_id(url);
    free(url);
    return 0;
}
