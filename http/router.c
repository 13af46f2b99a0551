/* Pattern matching for the route table (see router.h). */
#include "router.h"

#include <stdio.h>
#include <string.h>

/* Does path match pattern? On a match with a {segment}, copies it to arg. */
static int match_one(const char *pattern, const char *path, char *arg, size_t argcap) {
    const char *brace = strchr(pattern, '{');
    if (!brace) return !strcmp(pattern, path);
    size_t pre = (size_t)(brace - pattern);
    if (strncmp(pattern, path, pre)) return 0;
    const char *close = strchr(brace, '}');
    if (!close) return 0;
    const char *suffix = close + 1, *seg = path + pre;
    size_t n = strcspn(seg, "/");
    if (n == 0 || n >= argcap || strcmp(seg + n, suffix)) return 0;
    memcpy(arg, seg, n);
    arg[n] = 0;
    return 1;
}

static int has_token(const char *list, const char *m) {
    size_t k = strlen(m);
    for (const char *p = list; (p = strstr(p, m)); p++)
        if ((p == list || p[-1] == ' ') && (p[k] == 0 || p[k] == ',')) return 1;
    return 0;
}

static void add_method(char *allow, size_t cap, const char *m) {
    if (has_token(allow, m)) return;
    size_t used = strlen(allow);
    snprintf(allow + used, cap - used, "%s%s", used ? ", " : "", m);
}

int router_match(const void *table, size_t n, size_t stride, const char *method, const char *path,
                 char *arg, size_t argcap, char *allow, size_t cap) {
    int found = -1;
    char tmp[128];
    allow[0] = 0;
    const char *want = !strcmp(method, "HEAD") ? "GET" : method;
    for (size_t i = 0; i < n; i++) {
        const router_entry *e = (const router_entry *)((const char *)table + i * stride);
        if (!match_one(e->pattern, path, tmp, sizeof tmp < argcap ? sizeof tmp : argcap)) continue;
        add_method(allow, cap, e->method);
        if (!strcmp(e->method, "GET")) add_method(allow, cap, "HEAD");
        if (found < 0 && !strcmp(e->method, want)) {
            found = (int)i;
            snprintf(arg, argcap, "%s", strchr(e->pattern, '{') ? tmp : "");
        }
    }
    return found;
}
