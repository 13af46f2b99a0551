/* The option-table parser (see opts.h). */
#include "opts.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

int opts_parse_duration_ms(const char *s, int64_t *ms) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno || !isfinite(v) || v < 0 || isspace((unsigned char)*s)) return -1;
    double mult;
    if (!*end || !strcmp(end, "s"))
        mult = 1000;
    else if (!strcmp(end, "ms"))
        mult = 1;
    else if (!strcmp(end, "m"))
        mult = 60e3;
    else if (!strcmp(end, "h"))
        mult = 3600e3;
    else if (!strcmp(end, "d"))
        mult = 86400e3;
    else
        return -1;
    double r = v * mult;
    if (r > 9.0e15) return -1;
    *ms = (int64_t)llround(r);
    return 0;
}

int opts_parse_bytes(const char *s, int64_t *bytes) {
    char *end;
    errno = 0;
    if (!isdigit((unsigned char)*s)) return -1;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno) return -1;
    unsigned shift = 0;
    if (*end) {
        switch (toupper((unsigned char)*end)) {
        case 'K':
            shift = 10;
            break;
        case 'M':
            shift = 20;
            break;
        case 'G':
            shift = 30;
            break;
        default:
            return -1;
        }
        end++;
        if (*end == 'i' || *end == 'I') end++;
        if (*end == 'B' || *end == 'b') end++;
        if (*end) return -1;
    }
    if (v > (1ull << (62 - shift))) return -1;
    *bytes = (int64_t)(v << shift);
    return 0;
}

static int parse_long(const char *s, long long *v) {
    char *end;
    errno = 0;
    if (!*s || isspace((unsigned char)*s)) return -1;
    *v = strtoll(s, &end, 10);
    return errno || *end ? -1 : 0;
}

int opts_parse_size(const char *s, int *w, int *h) {
    const char *x = strpbrk(s, "xX");
    long long a, b;
    if (!x) {
        if (parse_long(s, &a) || a < 1 || a > 1000000) return -1;
        *w = *h = (int)a;
        return 0;
    }
    char first[32];
    size_t n = (size_t)(x - s);
    if (!n || n >= sizeof first) return -1;
    memcpy(first, s, n);
    first[n] = 0;
    if (parse_long(first, &a) || parse_long(x + 1, &b) || a < 1 || b < 1 || a > 1000000 ||
        b > 1000000)
        return -1;
    *w = (int)a, *h = (int)b;
    return 0;
}

/* ---- names ---- */

static int has_range(const opt_spec *o) {
    return o->lo != 0 || o->hi != 0;
}

/* Is `name` (length n) o's name or one of its aliases? */
static int matches(const opt_spec *o, const char *name, size_t n) {
    if (strlen(o->name) == n && !strncmp(o->name, name, n)) return 1;
    for (const char *a = o->aliases; a && *a;) {
        const char *comma = strchr(a, ',');
        size_t k = comma ? (size_t)(comma - a) : strlen(a);
        if (k == n && !strncmp(a, name, n)) return 1;
        a = comma ? comma + 1 : a + k;
    }
    return 0;
}

static void env_name(const char *name, char *out, size_t cap) {
    size_t k = (size_t)snprintf(out, cap, "EASEL_");
    for (const char *p = name; *p && k + 1 < cap; p++)
        out[k++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
    out[k] = 0;
}

/* ---- values ---- */

static int choice_index(const char *choices, const char *v) {
    int i = 0;
    size_t n = strlen(v);
    for (const char *c = choices; c && *c; i++) {
        const char *bar = strchr(c, '|');
        size_t k = bar ? (size_t)(bar - c) : strlen(c);
        if (k == n && !strncmp(c, v, n)) return i;
        c = bar ? bar + 1 : c + k;
    }
    return -1;
}

/* Stores v into o's destination; NULL on success, else what is wrong. */
static const char *store(const opt_spec *o, const char *v, char *msg, size_t cap) {
    long long n;
    double d;
    char *end;
    switch (o->kind) {
    case OPT_FLAG:
        *(int *)o->dst = 1;
        return NULL;
    case OPT_STRING:
        *(const char **)o->dst = v;
        return NULL;
    case OPT_INT:
    case OPT_U64:
        if (parse_long(v, &n) || (o->kind == OPT_INT && (n < -2147483647LL || n > 2147483647LL)) ||
            (o->kind == OPT_U64 && n < 0))
            return "must be an integer";
        if (has_range(o) && (n < o->lo || n > o->hi)) {
            snprintf(msg, cap, "must be an integer in [%.0f, %.0f]", o->lo, o->hi);
            return msg;
        }
        if (o->kind == OPT_INT)
            *(int *)o->dst = (int)n;
        else
            *(uint64_t *)o->dst = (uint64_t)n;
        return NULL;
    case OPT_FLOAT:
    case OPT_DOUBLE:
        errno = 0;
        d = strtod(v, &end);
        if (end == v || *end || errno || !isfinite(d) || isspace((unsigned char)*v))
            return "must be a number";
        if (has_range(o) && (d < o->lo || d > o->hi)) {
            snprintf(msg, cap, "must be a number in [%g, %g]", o->lo, o->hi);
            return msg;
        }
        if (o->kind == OPT_FLOAT)
            *(float *)o->dst = (float)d;
        else
            *(double *)o->dst = d;
        return NULL;
    case OPT_DURATION: {
        int64_t ms;
        if (opts_parse_duration_ms(v, &ms))
            return "must be a duration: 90, 90s, 250ms, 15m, 24h, 7d";
        if (has_range(o) && (ms < o->lo || ms > o->hi)) return "duration out of range";
        *(int64_t *)o->dst = ms;
        return NULL;
    }
    case OPT_BYTES: {
        int64_t b;
        if (opts_parse_bytes(v, &b)) return "must be a size in bytes: 65536, 64k, 20M, 1G";
        if (has_range(o) && (b < o->lo || b > o->hi)) {
            snprintf(msg, cap, "must be in [%.0f, %.0f] bytes", o->lo, o->hi);
            return msg;
        }
        *(int64_t *)o->dst = b;
        return NULL;
    }
    case OPT_SIZE: {
        int w, h;
        if (opts_parse_size(v, &w, &h)) return "must be WIDTHxHEIGHT (e.g. 512x512) or N";
        if (has_range(o) && (w < o->lo || w > o->hi || h < o->lo || h > o->hi)) {
            snprintf(msg, cap, "each side must be in [%.0f, %.0f]", o->lo, o->hi);
            return msg;
        }
        ((int *)o->dst)[0] = w, ((int *)o->dst)[1] = h;
        return NULL;
    }
    case OPT_CHOICE: {
        int i = choice_index(o->choices, v);
        if (i < 0) {
            snprintf(msg, cap, "must be one of %s", o->choices);
            for (char *p = msg; *p; p++)
                if (*p == '|') *p = ',';
            return msg;
        }
        *(int *)o->dst = i;
        return NULL;
    }
    case OPT_CALL:
        return o->call(o->ctx, v);
    }
    return "unsupported option kind";
}

/* ---- parsing ---- */

static int fail(const opts_cmd *cmd, const char *opt, const char *v, const char *what) {
    if (v)
        fprintf(stderr, "%s: --%s: '%s' %s\n", cmd->name, opt, v, what);
    else
        fprintf(stderr, "%s: --%s: %s\n", cmd->name, opt, what);
    fprintf(stderr, "(%s --help lists the options)\n", cmd->name);
    return 2;
}

static int from_env(const opts_cmd *cmd, int *seen) {
    char msg[160], var[96];
    for (int i = 0; cmd->specs[i].name; i++) {
        const opt_spec *o = &cmd->specs[i];
        if (!(o->flags & OPT_ENV)) continue;
        env_name(o->name, var, sizeof var);
        const char *v = getenv(var);
        if (!v || !*v) continue;
        if (o->kind == OPT_FLAG && strcmp(v, "1") && strcmp(v, "true") && strcmp(v, "yes")) {
            if (!strcmp(v, "0") || !strcmp(v, "false") || !strcmp(v, "no")) continue;
            fprintf(stderr, "%s: %s: '%s' must be 1/true/yes or 0/false/no\n", cmd->name, var, v);
            return 2;
        }
        const char *bad = store(o, v, msg, sizeof msg);
        if (bad) {
            fprintf(stderr, "%s: %s (--%s): '%s' %s\n", cmd->name, var, o->name, v, bad);
            return 2;
        }
        seen[i] = 1;
        if (o->given) *o->given = 1;
    }
    return 0;
}

static const opt_spec *find(const opts_cmd *cmd, const char *name, size_t n, int *index) {
    for (int i = 0; cmd->specs[i].name; i++)
        if (matches(&cmd->specs[i], name, n)) {
            *index = i;
            return &cmd->specs[i];
        }
    return NULL;
}

int opts_parse(const opts_cmd *cmd, int argc, char **argv) {
    int n_specs = 0;
    while (cmd->specs[n_specs].name)
        n_specs++;
    int env_seen[128] = {0}, flag_seen[128] = {0};
    if (n_specs > 128) return fail(cmd, "?", NULL, "too many options in the table (a bug)");
    if (cmd->npos) *cmd->npos = 0;
    if (from_env(cmd, env_seen)) return 2;
    char msg[160];
    int only_pos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!only_pos && (!strcmp(a, "--help") || !strcmp(a, "-h"))) {
            opts_usage(cmd, stdout);
            return 1;
        }
        if (!only_pos && !strcmp(a, "--")) {
            only_pos = 1;
            continue;
        }
        if (only_pos || a[0] != '-' || !a[1]) {
            if (!cmd->pos || !cmd->npos || *cmd->npos >= cmd->max_pos) {
                fprintf(stderr, "%s: unexpected argument '%s'\n(%s --help lists the options)\n",
                        cmd->name, a, cmd->name);
                return 2;
            }
            cmd->pos[(*cmd->npos)++] = a;
            continue;
        }
        const char *name = a + (a[1] == '-' ? 2 : 1);
        const char *eq = strchr(name, '=');
        size_t n = eq ? (size_t)(eq - name) : strlen(name);
        int k = -1;
        const opt_spec *o = find(cmd, name, n, &k);
        if (!o) {
            fprintf(stderr, "%s: unknown option '%.*s'\n(%s --help lists the options)\n", cmd->name,
                    (int)(n + (size_t)(name - a)), a, cmd->name);
            return 2;
        }
        const char *v = NULL;
        if (o->kind == OPT_FLAG) {
            if (eq) return fail(cmd, o->name, NULL, "takes no value");
        } else if (eq) {
            v = eq + 1;
        } else if (i + 1 < argc) {
            v = argv[++i];
        } else {
            return fail(cmd, o->name, NULL, "needs a value");
        }
        const char *bad = store(o, v, msg, sizeof msg);
        if (bad) return fail(cmd, o->name, v, bad);
        flag_seen[k] = 1;
        if (o->given) *o->given = 1;
    }
    for (int i = 0; i < n_specs; i++)
        if ((cmd->specs[i].flags & OPT_REQUIRED) && !flag_seen[i] && !env_seen[i])
            return fail(cmd, cmd->specs[i].name, NULL, "is required");
    return 0;
}

void opts_usage(const opts_cmd *cmd, FILE *f) {
    fprintf(f, "usage: %s %s\n", cmd->name, cmd->synopsis ? cmd->synopsis : "[options]");
    if (cmd->intro) fprintf(f, "%s\n", cmd->intro);
    for (int i = 0; cmd->specs[i].name; i++) {
        const opt_spec *o = &cmd->specs[i];
        if (o->flags & OPT_HIDDEN) continue;
        char left[128];
        size_t k = (size_t)snprintf(left, sizeof left, "  --%s", o->name);
        if (o->kind != OPT_FLAG && k < sizeof left)
            k += (size_t)snprintf(left + k, sizeof left - k, " %s",
                                  o->metavar              ? o->metavar
                                  : o->kind == OPT_CHOICE ? o->choices
                                                          : "VALUE");
        fprintf(f, "%-28s %s%s\n", left, o->help ? o->help : "",
                o->flags & OPT_REQUIRED ? " (required)" : "");
        if (o->aliases || (o->flags & OPT_ENV)) {
            fprintf(f, "%-28s", "");
            if (o->aliases) {
                fprintf(f, " also");
                for (const char *a = o->aliases; *a;) {
                    const char *comma = strchr(a, ',');
                    size_t n = comma ? (size_t)(comma - a) : strlen(a);
                    fprintf(f, " --%.*s", (int)n, a);
                    a = comma ? comma + 1 : a + n;
                }
                if (o->flags & OPT_ENV) fprintf(f, ";");
            }
            if (o->flags & OPT_ENV) {
                char var[96];
                env_name(o->name, var, sizeof var);
                fprintf(f, " env %s", var);
            }
            fputc('\n', f);
        }
    }
    if (cmd->footer) fprintf(f, "%s\n", cmd->footer);
}
