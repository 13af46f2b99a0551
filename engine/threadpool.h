/* A small persistent thread pool: n threads (the caller counts as one) that
 * run a batch of numbered tasks and return when all are done. Each CPU
 * backend owns one pool; pools are independent, so two backends can run at
 * the same time from two threads. */
#ifndef EASEL_THREADPOOL_H
#define EASEL_THREADPOOL_H

#include <stdint.h>

typedef struct threadpool threadpool;

/* A task: `task` in [0, ntasks), `thread` in [0, threadpool_size()) names the
 * thread running it (0 = the caller), for per-thread scratch. */
typedef void (*threadpool_fn)(void *ctx, int task, int thread);

/* A pool of n threads in all (n-1 are started; n = 1 runs everything on the
 * caller). NULL on failure (message set); nothing is left running. */
threadpool *threadpool_create(int n);
/* Stops and joins the threads. NULL is ignored. Not while a run is active. */
void threadpool_free(threadpool *p);
int threadpool_size(const threadpool *p);

/* Runs fn(ctx, task, thread) for every task in [0, ntasks), spread over the
 * pool's threads (the caller takes part), and returns when all have
 * finished. Tasks are handed out dynamically, in increasing order. Calls
 * from several threads on the same pool are serialised; a task must not call
 * threadpool_run on its own pool. */
void threadpool_run(threadpool *p, int ntasks, threadpool_fn fn, void *ctx);

#endif
