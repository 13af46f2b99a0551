/* Host-side pieces of the CUDA backend that need no device, so CI tests
 * them on the CPU: the per-worker cache of captured CUDA graphs (keyed by
 * shape and buffer layout), the per-worker cache of GEMM plans (keyed by
 * problem), the out-of-memory message, the im2col chunk planner that bounds
 * the convolution scratch buffer, the query chunking of GEMM attention, and
 * which CUDA errors leave the device unusable. */
#ifndef EASEL_CUDA_HOST_H
#define EASEL_CUDA_HOST_H

#include <stddef.h>
#include <stdint.h>

#include "../engine/err.h"

/* ---- graph cache: one captured UNet step per (batch, height, width) ---- */
typedef struct {
    int batch, height, width;
    uint64_t layout; /* the caller's buffers (addresses) the graph was captured with */
} graph_key;

typedef struct graph_cache graph_cache;
/* destroy(exec, user) is called for every entry evicted or left at free.
 * capacity ≥ 1 entries; the least recently used one is evicted past it.
 * NULL on allocation failure. */
graph_cache *graph_cache_create(int capacity, void (*destroy)(void *exec, void *user), void *user);
void graph_cache_free(graph_cache *c);
/* The entry for k (and marks it most recently used), or NULL. */
void *graph_cache_get(graph_cache *c, graph_key k);
/* Inserts or replaces (destroying the old exec). exec must not be NULL. An
 * entry of the same shape but another layout is stale (its buffers moved) and
 * is destroyed too. */
easel_err graph_cache_put(graph_cache *c, graph_key k, void *exec);
int graph_cache_size(const graph_cache *c);
/* How often k has been asked for (get hits and misses): the backend runs a
 * shape eagerly the first time (warm-up, so the arena and scratch reach their
 * size) and captures it the second. */
int graph_cache_seen(graph_cache *c, graph_key k);

/* ---- GEMM plans: one per problem (shapes, strides, dtypes, alignment) ---- */
#define PLAN_KEY_WORDS 16
typedef struct {
    int64_t w[PLAN_KEY_WORDS];
} plan_key;

typedef struct plan_cache plan_cache;
/* A hash table of at most capacity plans (rounded up to a power of two);
 * destroy(plan, user) is called for each one dropped. NULL on failure. */
plan_cache *plan_cache_create(int capacity, void (*destroy)(void *plan, void *user), void *user);
void plan_cache_free(plan_cache *c);
void *plan_cache_get(plan_cache *c, const plan_key *k);
/* Inserts (k must not be present). When the table is half full every plan is
 * dropped first: a model has a bounded set of shapes, so this is rare. */
easel_err plan_cache_put(plan_cache *c, const plan_key *k, void *plan);
int plan_cache_size(const plan_cache *c);

/* ---- memory ---- */
/* "out of GPU memory: needed X MiB, free Y MiB (of Z MiB)" into buf, and
 * sets it as the thread's EASEL_ENOMEM error. Returns EASEL_ENOMEM. */
easel_err cuda_oom_error(const char *what, size_t needed, size_t free_bytes, size_t total_bytes);
/* Rows of an im2col matrix with k columns of elem bytes that fit in budget
 * bytes (at least 1, at most rows). */
int64_t cuda_im2col_chunk(int64_t rows, int64_t k, size_t elem, size_t budget);
/* Bytes of scratch a conv2d needs with that chunking. */
size_t cuda_im2col_bytes(int64_t rows, int64_t k, size_t elem, size_t budget);
/* GEMM attention: queries per chunk so that the fp32 scores (lk per query)
 * and the probabilities (p_elem bytes each) fit in budget bytes; at least 1,
 * at most lq, a multiple of 64 when larger than 64. */
int64_t cuda_attn_chunk(int64_t lq, int64_t lk, size_t p_elem, size_t budget);

/* ---- errors ---- */
/* 1 if CUDA error code e (a cudaError_t value) is one after which the
 * context is unusable (a kernel fault: illegal address, launch failure,
 * ...): every later call fails, so the process must restart. */
int cuda_error_is_sticky(int e);

#endif
