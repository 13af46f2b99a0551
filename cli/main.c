/* easel: dispatches to the commands (cli/cli.h). */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "version.h"

typedef struct {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} command;

static const command commands[] = {
    {"generate", cmd_generate, "txt2img from the command line: --model --prompt --out"},
    {"serve", cmd_serve, "the HTTP job service: --model --port --data-dir --workers (see --help)"},
    {"info", cmd_info, "CPU features, devices, build options; with --model, the model"},
    {"inspect", cmd_inspect, "validate a .safetensors file; list its metadata and tensors"},
    {"make-model", cmd_make_model, "write a random-weight model of a real architecture"},
    {"make-lora", cmd_make_lora, "write a random-weight LoRA (kohya or PEFT) for a model"},
    {"bench", cmd_bench, "benchmarks: ops, pipeline, http (see `easel bench --help`)"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: easel <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].help);
    fprintf(f, "\n`easel <command> --help` for a command's options.\n"
               "exit status: 0 ok, 1 runtime failure, 2 bad usage or input.\n");
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
