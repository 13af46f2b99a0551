/* The `easel` subcommands. Each takes argc/argv from its own name on and
 * returns the process exit status: 0 ok, 1 failure, 2 bad input/usage
 * (a corrupt file, a missing model, an unknown flag). */
#ifndef EASEL_CLI_H
#define EASEL_CLI_H

int cmd_info(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_make_model(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_bench(int argc, char **argv);

#endif
