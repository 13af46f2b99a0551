/* Host-side pieces of the CUDA backend that need no device, so CI tests
 * them on the CPU: the per-worker cache of captured CUDA graphs (keyed by
 * batch, height, width), the out-of-memory message, and the im2col chunk
 * planner that bounds the convolution scratch buffer. */
#ifndef EASEL_CUDA_HOST_H
#define EASEL_CUDA_HOST_H

#include <stddef.h>
#include <stdint.h>

#include "../engine/err.h"

/* ---- graph cache: one captured UNet step per (batch, height, width) ---- */
typedef struct {
    int batch, height, width;
} graph_key;

typedef struct graph_cache graph_cache;
/* destroy(exec, user) is called for every entry evicted or left at free.
 * capacity ≥ 1 entries; the least recently used one is evicted past it.
 * NULL on allocation failure. */
graph_cache *graph_cache_create(int capacity, void (*destroy)(void *exec, void *user), void *user);
void graph_cache_free(graph_cache *c);
/* The entry for k (and marks it most recently used), or NULL. */
void *graph_cache_get(graph_cache *c, graph_key k);
/* Inserts or replaces (destroying the old exec). exec must not be NULL. */
easel_err graph_cache_put(graph_cache *c, graph_key k, void *exec);
int graph_cache_size(const graph_cache *c);
/* How often k has been asked for (get hits and misses): the backend runs a
 * shape eagerly the first time (warm-up, so the arena and scratch reach their
 * size) and captures it the second. */
int graph_cache_seen(graph_cache *c, graph_key k);

/* ---- memory ---- */
/* "out of GPU memory: needed X MiB, free Y MiB (of Z MiB)" into buf, and
 * sets it as the thread's EASEL_ENOMEM error. Returns EASEL_ENOMEM. */
easel_err cuda_oom_error(const char *what, size_t needed, size_t free_bytes, size_t total_bytes);
/* Rows of an im2col matrix with k columns of elem bytes that fit in budget
 * bytes (at least 1, at most rows). */
int64_t cuda_im2col_chunk(int64_t rows, int64_t k, size_t elem, size_t budget);
/* Bytes of scratch a conv2d needs with that chunking. */
size_t cuda_im2col_bytes(int64_t rows, int64_t k, size_t elem, size_t budget);

#endif
