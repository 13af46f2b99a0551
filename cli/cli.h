/* The `easel` commands, one file each in cli/. Each takes argc/argv from its
 * own name on and returns the process exit status: 0 ok, 1 runtime failure,
 * 2 bad usage or input (an unknown flag, a value out of range, a missing or
 * corrupt model). Options come from one table per command (engine/opts.h). */
#ifndef EASEL_CLI_H
#define EASEL_CLI_H

#include "../engine/err.h"
#include "../engine/opts.h"
#include "../models/pipeline.h"

int cmd_info(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_make_model(int argc, char **argv);
int cmd_make_lora(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_bench(int argc, char **argv);

/* The LoRA directory as GET /v1/loras lists it (cli/loras.c): a new JSON
 * array, each file checked against model (may be NULL); NULL on failure. */
struct cJSON;
struct lora_lib;
struct sd_model;
struct cJSON *cli_loras_json(struct lora_lib *lib, const struct sd_model *model);

/* The exit status for an error a command reports: 2 for what the user got
 * wrong (input, flags, the model file), 1 for everything else. */
int cli_status_of(easel_err e);

/* How a model is read where it does not say (generate, serve and info take
 * the same flags): --family, --prediction-type, --scheduler-config, --taesd.
 * CLI_LOAD_OPTS(&load) expands to their opt_spec rows. */
const char *cli_set_prediction(void *load_opts, const char *v);
#define CLI_LOAD_OPTS(load)                                                                        \
    {.name = "family",                                                                             \
     .kind = OPT_STRING,                                                                           \
     .dst = &(load)->family,                                                                       \
     .metavar = "NAME",                                                                            \
     .flags = OPT_ENV,                                                                             \
     .help = "sd15|sd2|sd2-v|sd-turbo|lcm|sdxl|sdxl-turbo|sdxl-lightning: its defaults (and a "    \
             "single file's schedule; sdxl-lightning: trailing Euler)"},                           \
        {.name = "prediction-type",                                                                \
         .kind = OPT_CALL,                                                                         \
         .call = cli_set_prediction,                                                               \
         .ctx = (load),                                                                            \
         .metavar = "TYPE",                                                                        \
         .flags = OPT_ENV,                                                                         \
         .help = "epsilon|v_prediction|sample, where the checkpoint does not say"},                \
        {.name = "scheduler-config",                                                               \
         .kind = OPT_STRING,                                                                       \
         .dst = &(load)->scheduler_config,                                                         \
         .metavar = "FILE",                                                                        \
         .flags = OPT_ENV,                                                                         \
         .help = "a scheduler_config.json to use instead of the model's"},                         \
    {                                                                                              \
        .name = "taesd", .kind = OPT_STRING, .dst = &(load)->taesd, .metavar = "PATH",             \
        .flags = OPT_ENV,                                                                          \
        .help = "TAESD for live previews and decoder taesd: an AutoencoderTiny folder or "         \
                "taesd_decoder.safetensors (default: the model folder's taesd/)"                   \
    }

#endif
