/* Activation arena (see arena.h). Offsets are global across chunks: chunk i
 * covers [base_i, base_i + size_i), so mark/release works across chunks. */
#include "arena.h"

#include <stdlib.h>
#include <string.h>

#define ARENA_ALIGN 256
#define ARENA_MAX_CHUNKS 64

typedef struct {
    void *mem;
    size_t base, size;
} chunk;

struct arena {
    backend *be;
    chunk chunks[ARENA_MAX_CHUNKS];
    int nchunks;
    size_t used;      /* global offset of the next free byte */
    size_t high;      /* high-water mark since creation */
    easel_err err;
    uint64_t gen;     /* bumped by every chunk allocated or freed */
};

static size_t align_up(size_t n) { return (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1); }

static easel_err add_chunk(arena *a, size_t size) {
    if (a->nchunks == ARENA_MAX_CHUNKS)
        return easel_seterr(EASEL_ENOMEM, "arena: too many chunks");
    void *p = NULL;
    easel_err e = a->be->alloc(a->be, size, &p);
    if (e) return e;
    size_t base = a->nchunks ? a->chunks[a->nchunks - 1].base + a->chunks[a->nchunks - 1].size : 0;
    a->chunks[a->nchunks++] = (chunk){p, base, size};
    a->gen++;
    return EASEL_OK;
}

arena *arena_create(backend *be, size_t initial_bytes) {
    arena *a = calloc(1, sizeof *a);
    if (!a) {
        easel_seterr(EASEL_ENOMEM, "arena: out of host memory");
        return NULL;
    }
    a->be = be;
    if (initial_bytes && add_chunk(a, align_up(initial_bytes))) {
        free(a);
        return NULL;
    }
    return a;
}

static void free_chunks(arena *a) {
    for (int i = 0; i < a->nchunks; i++) a->be->free(a->be, a->chunks[i].mem);
    a->nchunks = 0;
    a->gen++;
}

void arena_free(arena *a) {
    if (!a) return;
    free_chunks(a);
    free(a);
}

static void *arena_bytes(arena *a, size_t bytes) {
    bytes = align_up(bytes ? bytes : 1);
    /* find the chunk holding `used`, or the first one after it with room */
    for (int i = 0; i < a->nchunks; i++) {
        chunk *c = &a->chunks[i];
        size_t start = a->used > c->base ? a->used : c->base;
        if (start < c->base + c->size && start + bytes <= c->base + c->size) {
            a->used = start + bytes;
            if (a->used > a->high) a->high = a->used;
            return (char *)c->mem + (start - c->base);
        }
    }
    size_t last_end = a->nchunks ? a->chunks[a->nchunks - 1].base + a->chunks[a->nchunks - 1].size : 0;
    size_t want = bytes > last_end ? bytes : last_end; /* grow geometrically */
    if (want < (size_t)1 << 20) want = (size_t)1 << 20;
    if (add_chunk(a, want)) return NULL;
    chunk *c = &a->chunks[a->nchunks - 1];
    a->used = c->base + bytes;
    if (a->used > a->high) a->high = a->used;
    return c->mem;
}

tensor arena_new_dt(arena *a, dtype dt, int ndim, const int64_t *ne) {
    tensor t = tensor_make(NULL, dt, a->be->dev, ndim, ne);
    if (a->err) return t;
    for (int i = 0; i < t.ndim; i++) {
        if (t.ne[i] < 0) {
            a->err = easel_seterr(EASEL_EINVAL, "arena: negative dimension");
            return t;
        }
    }
    t.data = arena_bytes(a, tensor_nbytes(&t));
    if (!t.data) a->err = easel_wraperr(EASEL_ENOMEM, "arena: allocating %zu bytes", tensor_nbytes(&t));
    return t;
}

tensor arena_new(arena *a, int ndim, const int64_t *ne) {
    return arena_new_dt(a, a->be->act_dtype, ndim, ne);
}
tensor arena_new2(arena *a, int64_t d0, int64_t d1) {
    int64_t ne[2] = {d0, d1};
    return arena_new(a, 2, ne);
}
tensor arena_new3(arena *a, int64_t d0, int64_t d1, int64_t d2) {
    int64_t ne[3] = {d0, d1, d2};
    return arena_new(a, 3, ne);
}
tensor arena_new4(arena *a, int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
    int64_t ne[4] = {d0, d1, d2, d3};
    return arena_new(a, 4, ne);
}
tensor arena_like(arena *a, const tensor *t) { return arena_new(a, t->ndim, t->ne); }

size_t arena_mark(const arena *a) { return a->used; }
void arena_release(arena *a, size_t mark) {
    if (mark < a->used) a->used = mark;
}

void arena_reset(arena *a) {
    a->used = 0;
    a->err = EASEL_OK;
    if (a->nchunks > 1) {
        size_t total = a->high;
        free_chunks(a);
        (void)add_chunk(a, align_up(total)); /* on failure the next allocation retries */
    }
}

easel_err arena_error(const arena *a) { return a->err; }
size_t arena_used(const arena *a) { return a->used; }
size_t arena_high_water(const arena *a) { return a->high; }
size_t arena_capacity(const arena *a) {
    size_t n = 0;
    for (int i = 0; i < a->nchunks; i++) n += a->chunks[i].size;
    return n;
}
backend *arena_backend(const arena *a) { return a->be; }
uint64_t arena_generation(const arena *a) { return a->gen; }
backend *arena_set_backend(arena *a, backend *be) {
    backend *old = a->be;
    a->be = be;
    return old;
}
