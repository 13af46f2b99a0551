/* The thread pool (see threadpool.h). Workers sleep on a condition variable
 * between runs (no spinning: two pools share the machine's cores when the
 * service's two workers compute at once) and claim tasks from an atomic
 * counter tagged with the run's generation. The caller claims tasks too and
 * waits only for tasks that were claimed, never for a worker that has not
 * woken up yet: on a loaded machine a late worker finds nothing left and
 * goes back to sleep, instead of holding every op up by a scheduler slice. */
#include "threadpool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"

struct threadpool {
    int n;
    pthread_t *threads; /* n-1 workers */
    int started;
    pthread_mutex_t run_mu; /* one run at a time */
    pthread_mutex_t mu;     /* guards gen, stop, fn, ctx, ntasks; pairs with the conds */
    pthread_cond_t wake, done_cv;
    uint32_t gen; /* bumped per run */
    int stop;
    threadpool_fn fn;
    void *ctx;
    int ntasks;
    _Atomic uint64_t next; /* gen << 32 | next task of that run */
    atomic_int done;       /* tasks finished in the current run */
};

typedef struct {
    threadpool *p;
    int index;
} worker_arg;

/* The next task of run `gen`, or -1 when none is left or the run is over. */
static int claim(threadpool *p, uint32_t gen, int ntasks) {
    uint64_t s = atomic_load_explicit(&p->next, memory_order_relaxed);
    for (;;) {
        if ((uint32_t)(s >> 32) != gen || (uint32_t)s >= (uint32_t)ntasks) return -1;
        if (atomic_compare_exchange_weak_explicit(&p->next, &s, s + 1, memory_order_acq_rel,
                                                  memory_order_relaxed))
            return (int)(uint32_t)s;
    }
}

static void run_tasks(threadpool *p, uint32_t gen, threadpool_fn fn, void *ctx, int ntasks,
                      int thread) {
    int t;
    while ((t = claim(p, gen, ntasks)) >= 0) {
        fn(ctx, t, thread);
        if (atomic_fetch_add_explicit(&p->done, 1, memory_order_acq_rel) + 1 == ntasks) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done_cv);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

static void *worker_main(void *arg) {
    worker_arg *wa = arg;
    threadpool *p = wa->p;
    int index = wa->index;
    free(wa);
    uint32_t seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (p->gen == seen && !p->stop)
            pthread_cond_wait(&p->wake, &p->mu);
        if (p->stop) break;
        seen = p->gen;
        threadpool_fn fn = p->fn; /* valid while a task of run `seen` is claimed */
        void *ctx = p->ctx;
        int ntasks = p->ntasks;
        pthread_mutex_unlock(&p->mu);
        run_tasks(p, seen, fn, ctx, ntasks, index);
        pthread_mutex_lock(&p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

static void stop_workers(threadpool *p) {
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->started; i++)
        pthread_join(p->threads[i], NULL);
    p->started = 0;
}

threadpool *threadpool_create(int n) {
    if (n < 1) n = 1;
    threadpool *p = calloc(1, sizeof *p);
    if (!p) {
        easel_seterr(EASEL_ENOMEM, "threadpool: out of memory");
        return NULL;
    }
    p->n = n;
    atomic_init(&p->next, 0);
    atomic_init(&p->done, 0);
    pthread_mutex_init(&p->run_mu, NULL);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done_cv, NULL);
    if (n > 1 && !(p->threads = calloc((size_t)n - 1, sizeof *p->threads))) {
        easel_seterr(EASEL_ENOMEM, "threadpool: out of memory");
        threadpool_free(p);
        return NULL;
    }
    for (int i = 0; i < n - 1; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        if (wa) *wa = (worker_arg){p, i + 1};
        int rc = wa ? pthread_create(&p->threads[i], NULL, worker_main, wa) : -1;
        if (rc != 0) {
            free(wa);
            easel_seterr(EASEL_ENOMEM, "threadpool: cannot start thread %d of %d: %s", i + 2, n,
                         rc > 0 ? strerror(rc) : "out of memory");
            threadpool_free(p);
            return NULL;
        }
        p->started++;
    }
    return p;
}

void threadpool_free(threadpool *p) {
    if (!p) return;
    stop_workers(p);
    pthread_cond_destroy(&p->done_cv);
    pthread_cond_destroy(&p->wake);
    pthread_mutex_destroy(&p->mu);
    pthread_mutex_destroy(&p->run_mu);
    free(p->threads);
    free(p);
}

int threadpool_size(const threadpool *p) {
    return p ? p->n : 1;
}

void threadpool_run(threadpool *p, int ntasks, threadpool_fn fn, void *ctx) {
    if (ntasks <= 0) return;
    pthread_mutex_lock(&p->run_mu);
    if (p->n == 1 || ntasks == 1) {
        for (int t = 0; t < ntasks; t++)
            fn(ctx, t, 0);
        pthread_mutex_unlock(&p->run_mu);
        return;
    }
    pthread_mutex_lock(&p->mu);
    uint32_t gen = ++p->gen;
    p->fn = fn;
    p->ctx = ctx;
    p->ntasks = ntasks;
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    atomic_store_explicit(&p->next, (uint64_t)gen << 32, memory_order_release);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    run_tasks(p, gen, fn, ctx, ntasks, 0);
    pthread_mutex_lock(&p->mu);
    while (atomic_load_explicit(&p->done, memory_order_acquire) < ntasks)
        pthread_cond_wait(&p->done_cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
    pthread_mutex_unlock(&p->run_mu);
}
