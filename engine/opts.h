/* Command-line options from one table per command: each entry names the
 * option, its type, where its value goes, its range and its help line. The
 * same table parses argv (--name VALUE, --name=VALUE, aliases), reads the
 * EASEL_<NAME> environment for entries marked OPT_ENV (flags win over the
 * environment, which wins over the defaults already in the destinations),
 * prints the usage text, and names the option in every error. An option
 * given twice takes its last value (OPT_REPEAT ones see every value). Exit-status
 * contract of every command: 0 ok, 2 bad usage or input, 1 runtime failure. */
#ifndef EASEL_OPTS_H
#define EASEL_OPTS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef enum {
    OPT_FLAG = 0, /* no value: *(int *)dst = 1 */
    OPT_STRING,   /* *(const char **)dst = the argument (not copied: argv/environ live on) */
    OPT_INT,      /* *(int *)dst, an integer in [lo, hi] */
    OPT_U64,      /* *(uint64_t *)dst, an integer in [lo, hi] (hi ≤ 2^53 when given) */
    OPT_FLOAT,    /* *(float *)dst, a finite number in [lo, hi] */
    OPT_DOUBLE,   /* *(double *)dst, a finite number in [lo, hi] */
    OPT_DURATION, /* *(int64_t *)dst milliseconds: "90", "90s", "250ms", "15m", "24h", "7d" */
    OPT_BYTES,    /* *(int64_t *)dst bytes: "65536", "64k", "20M", "1G" (powers of 1024) */
    OPT_SIZE,     /* ((int *)dst)[0..1] = width, height from "WxH" or "N" (square) */
    OPT_CHOICE,   /* *(int *)dst = the index of the argument in choices ("a|b|c") */
    OPT_CALL      /* call(ctx, value) decides; it prints nothing and returns 0 or a message */
} opt_kind;

enum {
    OPT_ENV = 1 << 0,      /* also read from EASEL_<NAME> (dashes become underscores) */
    OPT_REQUIRED = 1 << 1, /* an error when neither a flag nor the environment gives it */
    OPT_REPEAT = 1 << 2,   /* may be given more than once (OPT_CALL gets each value) */
    OPT_HIDDEN = 1 << 3    /* parsed, not listed in the usage (old spellings) */
};

/* For OPT_CALL: NULL when the value was taken, else a static or ctx-owned
 * message saying what is wrong with it ("no such LoRA"). */
typedef const char *(*opt_call_fn)(void *ctx, const char *value);

typedef struct {
    const char *name;    /* "guidance-scale": --guidance-scale and EASEL_GUIDANCE_SCALE */
    const char *aliases; /* other spellings, comma-separated ("cfg,guidance"), or NULL */
    opt_kind kind;
    void *dst;
    double lo, hi;       /* range of numbers (both 0: any value of the type) */
    const char *choices; /* OPT_CHOICE: "auto|bf16|fp32" */
    const char *metavar; /* shown in the usage: "N", "WxH", "PATH" */
    const char *help;    /* one line; "(default ...)" belongs here */
    unsigned flags;
    opt_call_fn call;
    void *ctx;
    int *given; /* if not NULL: set to 1 when a flag or the environment gave a value */
} opt_spec;

typedef struct {
    const char *name;      /* "easel serve" */
    const char *synopsis;  /* "[options]", "FILE.safetensors [--json]" */
    const char *intro;     /* a line or two above the options, or NULL */
    const char *footer;    /* text below the options, or NULL */
    const opt_spec *specs; /* terminated by an entry with name NULL */
    const char **pos;      /* where positional arguments go (NULL: none allowed) */
    int max_pos, *npos;    /* capacity of pos, and how many were given */
} opts_cmd;

/* Parses argv[1..argc) (argv[0] is the command's own name) after the
 * environment. Returns 0 when parsed, 1 when --help/-h printed the usage to
 * stdout (the command exits 0), 2 after printing "NAME: --opt: what is
 * wrong" and a hint to stderr (the command exits 2). */
int opts_parse(const opts_cmd *cmd, int argc, char **argv);
/* The usage text: synopsis, intro, one line per visible option with its
 * aliases, environment variable and help, footer. */
void opts_usage(const opts_cmd *cmd, FILE *f);

/* The value parsers the table uses, for callers with the same syntax
 * elsewhere (config files, the HTTP layer). Each returns 0 on success and -1
 * for a malformed or out-of-range value (nothing written then). */
int opts_parse_duration_ms(const char *s, int64_t *ms);
int opts_parse_bytes(const char *s, int64_t *bytes);
int opts_parse_size(const char *s, int *w, int *h);

#endif
