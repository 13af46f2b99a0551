/* `easel bench <what>`: dispatches to the benchmark drivers. Adding one is a
 * line in `drivers` (and its declaration in bench.h). */
#include "bench.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../engine/cli.h"

typedef struct {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *help;
} bench_driver;

static const bench_driver drivers[] = {
    {"ops", bench_ops, "backend ops at SD1.5 shapes vs the raw sgemm rate"},
    {"pipeline", bench_pipeline, "txt2img per stage, peak RSS, images/s by workers"},
    {"http", bench_http, "job start latency + status polls/s (wrk) of running services"},
};

static void bench_usage(FILE *f) {
    fprintf(f, "usage: easel bench <what> [options]\n\n");
    for (size_t i = 0; i < sizeof drivers / sizeof drivers[0]; i++)
        fprintf(f, "  %-10s %s\n", drivers[i].name, drivers[i].help);
    fprintf(f, "\n`easel bench <what> --help` for its options.\n");
}

int cmd_bench(int argc, char **argv) {
    if (argc < 2) {
        bench_usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        bench_usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof drivers / sizeof drivers[0]; i++)
        if (!strcmp(argv[1], drivers[i].name)) return drivers[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "easel bench: unknown benchmark '%s'\n", argv[1]);
    bench_usage(stderr);
    return 2;
}

double bench_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double bench_median(double *v, int n) {
    if (n <= 0) return 0;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

void bench_json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') fprintf(f, "\\%c", *s);
        else if ((unsigned char)*s < 0x20) fprintf(f, "\\u%04x", (unsigned char)*s);
        else fputc(*s, f);
    }
    fputc('"', f);
}
