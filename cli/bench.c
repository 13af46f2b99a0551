/* `easel bench <what>`: dispatches to the benchmark drivers in bench/.
 * Adding one is a line in `drivers` (and its declaration in bench/bench.h). */
#include <stdio.h>
#include <string.h>

#include "../bench/bench.h"
#include "cli.h"

typedef struct {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *help;
} bench_driver;

static const bench_driver drivers[] = {
    {"ops", bench_ops, "backend ops at SD1.5 shapes vs the raw GEMM rate"},
    {"pipeline", bench_pipeline, "txt2img per stage, peak RSS, images/s by workers"},
    {"http", bench_http, "job start latency + status polls/s (wrk) of running services"},
    {"queue", bench_queue, "the job store as a queue: submit latency, claim+complete jobs/s"},
    {"taesd", bench_taesd, "TAESD decode/encode vs the VAE, and the cost of live previews"},
    {"img2img", bench_img2img, "VAE encode, img2img at a strength vs txt2img, inpainting"},
    {"lora", bench_lora, "LoRA merge time (first job) vs cached, memory per set, LCM-LoRA e2e"},
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
