/* `easel bench`: the subcommand table and helpers shared by the drivers
 * (timing, medians). Each driver is `int bench_<name>(int argc, char **argv)`
 * with argv[0] = its own name, returning an exit status as cli.h says. */
#ifndef EASEL_BENCH_H
#define EASEL_BENCH_H

#include <stdio.h>

int bench_ops(int argc, char **argv);
int bench_pipeline(int argc, char **argv); /* bench_pipeline.c */
int bench_http(int argc, char **argv);     /* bench_http.c */
int bench_queue(int argc, char **argv);    /* bench_queue.c */
int bench_taesd(int argc, char **argv);    /* bench_taesd.c */
int bench_lora(int argc, char **argv);     /* bench_lora.c */
int bench_img2img(int argc, char **argv);  /* bench_img2img.c */

/* Monotonic wall time in seconds. */
double bench_now(void);
/* Median of v[0..n) (sorts v in place); 0 if n == 0. */
double bench_median(double *v, int n);
/* JSON string literal of s (quotes and escapes) to f. */
void bench_json_str(FILE *f, const char *s);

#endif
