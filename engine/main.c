/* easel: dispatches to the subcommands (engine/cli.h). */
#include <stdio.h>
#include <string.h>

#include "cli.h"

typedef struct {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} command;

static const command commands[] = {
    {"info", cmd_info, "devices, build options, model"},
    {"inspect", cmd_inspect, "validate a .safetensors file; list its metadata and tensors"},
    {"generate", cmd_generate, "txt2img from the command line: --model --prompt --out"},
    {"serve", cmd_serve, "the HTTP job service: --model --port --data-dir --workers (see --help)"},
    {"make-model", cmd_make_model, "write a random-weight model (tiny or sd15) to run without downloads"},
    {"bench", cmd_bench, "benchmarks: `easel bench ops` (backend ops vs sgemm)"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: easel <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].help);
    fprintf(f, "\n`easel <command> --help` for a command's options.\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("easel %s (%s)\n", EASEL_VERSION, EASEL_GIT);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "easel: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
