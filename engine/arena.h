/* A bump allocator for activations, one per worker. Weights live outside it.
 * Allocation never fails loudly: a failed allocation returns a tensor with
 * data NULL and makes the arena's error sticky, so model code can allocate a
 * block's temporaries and check arena_error() once (every op also refuses a
 * NULL tensor). Memory comes from the backend in chunks; when one pass needed
 * more than one chunk, arena_reset() replaces them with a single chunk of the
 * high-water size, so steady-state steps allocate nothing. */
#ifndef EASEL_ARENA_H
#define EASEL_ARENA_H

#include "backend.h"

typedef struct arena arena;

/* NULL on failure. initial_bytes may be 0 (first use allocates). */
arena *arena_create(backend *be, size_t initial_bytes);
void arena_free(arena *a);

/* A tensor of dtype a->be->act_dtype (or dt for arena_new_dt). */
tensor arena_new(arena *a, int ndim, const int64_t *ne);
tensor arena_new_dt(arena *a, dtype dt, int ndim, const int64_t *ne);
tensor arena_new2(arena *a, int64_t d0, int64_t d1);
tensor arena_new3(arena *a, int64_t d0, int64_t d1, int64_t d2);
tensor arena_new4(arena *a, int64_t d0, int64_t d1, int64_t d2, int64_t d3);
/* A tensor like t (same shape, the arena's dtype). */
tensor arena_like(arena *a, const tensor *t);

/* Stack discipline: free everything allocated after the mark. */
size_t arena_mark(const arena *a);
void arena_release(arena *a, size_t mark);
/* Frees everything; consolidates chunks (see above). Clears the sticky error. */
void arena_reset(arena *a);

/* 0 or the first allocation error since the last reset (message set then). */
easel_err arena_error(const arena *a);
size_t arena_used(const arena *a);
size_t arena_high_water(const arena *a);
size_t arena_capacity(const arena *a);
backend *arena_backend(const arena *a);
/* Changes whenever the arena's memory is allocated or freed (a new chunk, or
 * the consolidation in arena_reset): while it stays the same, the same
 * sequence of allocations from the same mark returns the same addresses —
 * what a captured CUDA graph of a step relies on. */
uint64_t arena_generation(const arena *a);
/* Allocates from here on as be, a view of the arena's backend on the same
 * memory (backend_with_dtype): tensors get be's dtype. Returns the previous
 * backend, to restore. */
backend *arena_set_backend(arena *a, backend *be);

#endif
