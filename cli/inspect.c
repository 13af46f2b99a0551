/* `easel inspect FILE [--json]`: validates a safetensors file and prints its
 * metadata and tensor table (name, dtype, shape, bytes) with totals. An
 * invalid or missing file prints `easel inspect: <reason>` and exits 2. */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "../engine/opts.h"
#include "../engine/safetensors.h"
#include "cli.h"

typedef struct {
    int64_t elements;
    uint64_t bytes;
    size_t count[ST_DTYPE_COUNT];
    uint64_t dt_bytes[ST_DTYPE_COUNT];
} inspect_totals;

static void totals(const st_file *f, inspect_totals *t) {
    memset(t, 0, sizeof *t);
    for (size_t i = 0; i < st_count(f); i++) {
        const st_tensor *x = st_at(f, i);
        t->elements += st_nelem(x);
        t->bytes += x->end - x->begin;
        t->count[x->dtype]++;
        t->dt_bytes[x->dtype] += x->end - x->begin;
    }
}

static const char *shape_text(const st_tensor *t, char *buf, size_t len) {
    size_t k = (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < t->ndim && k < len; i++)
        k += (size_t)snprintf(buf + k, len - k, "%s%lld", i ? "," : "", (long long)t->shape[i]);
    if (k < len) snprintf(buf + k, len - k, "]");
    return buf;
}

/* Prints s as a JSON string literal (control bytes escaped; the reader
 * guarantees valid UTF-8, which passes through). */
static void json_str(FILE *o, const char *s) {
    fputc('"', o);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(o, "\\%c", c);
        else if (c < 0x20)
            fprintf(o, "\\u%04x", c);
        else
            fputc(c, o);
    }
    fputc('"', o);
}

/* Text output: control bytes in names/metadata are shown as '?'. */
static void text_str(FILE *o, const char *s, int width) {
    int n = 0;
    for (; *s; s++, n++)
        fputc((unsigned char)*s < 0x20 ? '?' : *s, o);
    for (; n < width; n++)
        fputc(' ', o);
}

static void print_text(const st_file *f, uint64_t fsize) {
    inspect_totals t;
    totals(f, &t);
    printf("file: %s\n", st_path(f));
    printf("size: %llu bytes (8 + header %llu + data %llu)\n", (unsigned long long)fsize,
           (unsigned long long)(fsize >= 8 + t.bytes ? fsize - 8 - t.bytes : 0),
           (unsigned long long)t.bytes);
    printf("metadata: %zu entries\n", st_meta_count(f));
    for (size_t i = 0; i < st_meta_count(f); i++) {
        const char *k, *v;
        st_meta_at(f, i, &k, &v);
        printf("  ");
        text_str(stdout, k, 0);
        printf(" = ");
        text_str(stdout, v, 0);
        printf("\n");
    }
    int w = 4;
    for (size_t i = 0; i < st_count(f); i++) {
        size_t n = strlen(st_at(f, i)->name);
        if ((int)n > w) w = n > 72 ? 72 : (int)n;
    }
    printf("tensors: %zu (in file order)\n", st_count(f));
    printf("  %-*s  %-7s  %-24s  %s\n", w, "NAME", "DTYPE", "SHAPE", "BYTES");
    for (size_t i = 0; i < st_count(f); i++) {
        const st_tensor *x = st_at(f, i);
        char sb[256];
        printf("  ");
        text_str(stdout, x->name, w);
        printf("  %-7s  %-24s  %llu\n", st_dtype_name(x->dtype), shape_text(x, sb, sizeof sb),
               (unsigned long long)(x->end - x->begin));
    }
    printf("total: %zu tensors, %lld elements, %llu bytes\n", st_count(f), (long long)t.elements,
           (unsigned long long)t.bytes);
    for (int d = 0; d < ST_DTYPE_COUNT; d++)
        if (t.count[d])
            printf("  %-7s %zu tensors, %llu bytes\n", st_dtype_name((st_dtype)d), t.count[d],
                   (unsigned long long)t.dt_bytes[d]);
}

static void print_json(const st_file *f, uint64_t fsize) {
    inspect_totals t;
    totals(f, &t);
    printf("{\"file\":");
    json_str(stdout, st_path(f));
    printf(",\"size\":%llu,\"header_bytes\":%llu,\"metadata\":{", (unsigned long long)fsize,
           (unsigned long long)(fsize >= 8 + t.bytes ? fsize - 8 - t.bytes : 0));
    for (size_t i = 0; i < st_meta_count(f); i++) {
        const char *k, *v;
        st_meta_at(f, i, &k, &v);
        printf(i ? "," : "");
        json_str(stdout, k);
        printf(":");
        json_str(stdout, v);
    }
    printf("},\"tensors\":[");
    for (size_t i = 0; i < st_count(f); i++) {
        const st_tensor *x = st_at(f, i);
        char sb[256];
        printf(i ? ",{\"name\":" : "{\"name\":");
        json_str(stdout, x->name);
        printf(",\"dtype\":\"%s\",\"shape\":%s,\"data_offsets\":[%llu,%llu],\"bytes\":%llu}",
               st_dtype_name(x->dtype), shape_text(x, sb, sizeof sb), (unsigned long long)x->begin,
               (unsigned long long)x->end, (unsigned long long)(x->end - x->begin));
    }
    printf("],\"total\":{\"tensors\":%zu,\"elements\":%lld,\"bytes\":%llu}}\n", st_count(f),
           (long long)t.elements, (unsigned long long)t.bytes);
}

int cmd_inspect(int argc, char **argv) {
    const char *pos[1] = {NULL};
    int npos = 0, json = 0;
    const opt_spec specs[] = {
        {.name = "json", .kind = OPT_FLAG, .dst = &json, .help = "print JSON instead of text"},
        {0}};
    const opts_cmd cmd = {.name = "easel inspect",
                          .synopsis = "[--json] FILE.safetensors",
                          .intro = "Validates the file and prints its metadata and tensors.",
                          .footer = "exit status: 0 valid, 2 invalid/missing file or bad usage, "
                                    "1 other failure",
                          .specs = specs,
                          .pos = pos,
                          .max_pos = 1,
                          .npos = &npos};
    int r = opts_parse(&cmd, argc, argv);
    if (r) return r == 1 ? 0 : 2;
    const char *path = pos[0];
    if (!path) {
        fprintf(stderr, "easel inspect: give one FILE.safetensors\n");
        return 2;
    }
    st_file *f;
    easel_err e = st_open(path, &f);
    if (e) {
        fprintf(stderr, "easel inspect: %s\n", easel_errmsg());
        return e == EASEL_ENOMEM || e == EASEL_EINTERNAL ? 1 : 2;
    }
    struct stat st;
    uint64_t fsize = stat(path, &st) ? 0 : (uint64_t)st.st_size;
    if (json)
        print_json(f, fsize);
    else
        print_text(f, fsize);
    st_close(f);
    return fflush(stdout) ? 1 : 0;
}
