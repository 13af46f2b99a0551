/* Device-free host logic of the CUDA backend (see cuda_host.h): graph cache,
 * out-of-memory messages, im2col chunk planning. Tested on the CPU in CI. */
#include "cuda_host.h"

#include <stdlib.h>
#include <string.h>

#define GRAPH_SEEN_MAX 64

typedef struct {
    graph_key key;
    void *exec;
    uint64_t used; /* LRU clock */
} graph_entry;

typedef struct {
    graph_key key;
    int count;
} graph_seen;

struct graph_cache {
    graph_entry *e;
    int n, cap;
    uint64_t clock;
    void (*destroy)(void *, void *);
    void *user;
    graph_seen seen[GRAPH_SEEN_MAX];
    int nseen;
};

static int key_eq(graph_key a, graph_key b) {
    return a.batch == b.batch && a.height == b.height && a.width == b.width && a.layout == b.layout;
}

static int shape_eq(graph_key a, graph_key b) {
    return a.batch == b.batch && a.height == b.height && a.width == b.width;
}

graph_cache *graph_cache_create(int capacity, void (*destroy)(void *, void *), void *user) {
    if (capacity < 1) capacity = 1;
    graph_cache *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->e = calloc((size_t)capacity, sizeof *c->e);
    if (!c->e) {
        free(c);
        return NULL;
    }
    c->cap = capacity;
    c->destroy = destroy;
    c->user = user;
    return c;
}

void graph_cache_free(graph_cache *c) {
    if (!c) return;
    for (int i = 0; i < c->n; i++)
        if (c->destroy) c->destroy(c->e[i].exec, c->user);
    free(c->e);
    free(c);
}

static int find(const graph_cache *c, graph_key k) {
    for (int i = 0; i < c->n; i++)
        if (key_eq(c->e[i].key, k)) return i;
    return -1;
}

void *graph_cache_get(graph_cache *c, graph_key k) {
    int i = find(c, k);
    if (i < 0) return NULL;
    c->e[i].used = ++c->clock;
    return c->e[i].exec;
}

static void drop_stale(graph_cache *c, graph_key k) {
    for (int i = 0; i < c->n;) {
        if (shape_eq(c->e[i].key, k) && !key_eq(c->e[i].key, k)) {
            if (c->destroy) c->destroy(c->e[i].exec, c->user);
            c->e[i] = c->e[--c->n];
        } else {
            i++;
        }
    }
}

easel_err graph_cache_put(graph_cache *c, graph_key k, void *exec) {
    if (!exec) return easel_seterr(EASEL_EINVAL, "graph cache: NULL graph");
    drop_stale(c, k);
    int i = find(c, k);
    if (i >= 0) {
        if (c->destroy && c->e[i].exec != exec) c->destroy(c->e[i].exec, c->user);
    } else if (c->n < c->cap) {
        i = c->n++;
    } else {
        i = 0; /* evict the least recently used */
        for (int j = 1; j < c->n; j++)
            if (c->e[j].used < c->e[i].used) i = j;
        if (c->destroy) c->destroy(c->e[i].exec, c->user);
    }
    c->e[i] = (graph_entry){k, exec, ++c->clock};
    return EASEL_OK;
}

int graph_cache_size(const graph_cache *c) {
    return c->n;
}

int graph_cache_seen(graph_cache *c, graph_key k) {
    for (int i = 0; i < c->nseen; i++)
        if (key_eq(c->seen[i].key, k)) return ++c->seen[i].count;
    int i = c->nseen < GRAPH_SEEN_MAX ? c->nseen++ : GRAPH_SEEN_MAX - 1; /* reuse the last slot */
    c->seen[i] = (graph_seen){k, 1};
    return 1;
}

easel_err cuda_oom_error(const char *what, size_t needed, size_t free_bytes, size_t total_bytes) {
    const double mib = 1024.0 * 1024.0;
    return easel_seterr(EASEL_ENOMEM,
                        "%s: out of GPU memory: needed %.1f MiB, free %.1f MiB (of %.0f MiB)", what,
                        needed / mib, free_bytes / mib, total_bytes / mib);
}

int64_t cuda_im2col_chunk(int64_t rows, int64_t k, size_t elem, size_t budget) {
    if (rows <= 0) return 0;
    size_t row_bytes = (size_t)(k > 0 ? k : 1) * elem;
    int64_t r = (int64_t)(budget / row_bytes);
    if (r < 1) r = 1;
    return r < rows ? r : rows;
}

size_t cuda_im2col_bytes(int64_t rows, int64_t k, size_t elem, size_t budget) {
    return (size_t)cuda_im2col_chunk(rows, k, elem, budget) * (size_t)(k > 0 ? k : 1) * elem;
}

int64_t cuda_attn_chunk(int64_t lq, int64_t lk, size_t p_elem, size_t budget) {
    if (lq <= 0) return 0;
    size_t row = (size_t)(lk > 0 ? lk : 1) * (4 + p_elem);
    int64_t r = (int64_t)(budget / row);
    if (r > 64) r = r / 64 * 64;
    if (r < 1) r = 1;
    return r < lq ? r : lq;
}

int cuda_error_is_sticky(int e) {
    switch (e) {
    case 214: /* cudaErrorECCUncorrectable */
    case 700: /* cudaErrorIllegalAddress */
    case 702: /* cudaErrorLaunchTimeout */
    case 703: /* cudaErrorLaunchIncompatibleTexturing */
    case 710: /* cudaErrorAssert */
    case 714: /* cudaErrorHardwareStackError */
    case 715: /* cudaErrorIllegalInstruction */
    case 716: /* cudaErrorMisalignedAddress */
    case 717: /* cudaErrorInvalidAddressSpace */
    case 718: /* cudaErrorInvalidPc */
    case 719: /* cudaErrorLaunchFailure */
    case 999: /* cudaErrorUnknown */
        return 1;
    default:
        return 0;
    }
}

/* ---- GEMM plan cache ---- */

typedef struct {
    plan_key k;
    void *plan; /* NULL: empty slot */
} plan_slot;

struct plan_cache {
    plan_slot *s;
    int cap, n; /* cap: power of two */
    void (*destroy)(void *, void *);
    void *user;
};

static uint64_t key_hash(const plan_key *k) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a over the words */
    for (int i = 0; i < PLAN_KEY_WORDS; i++) {
        h ^= (uint64_t)k->w[i];
        h *= 1099511628211ULL;
        h ^= h >> 29;
    }
    return h;
}

plan_cache *plan_cache_create(int capacity, void (*destroy)(void *, void *), void *user) {
    int cap = 16;
    while (cap < capacity && cap < (1 << 20))
        cap *= 2;
    plan_cache *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->s = calloc((size_t)cap, sizeof *c->s);
    if (!c->s) {
        free(c);
        return NULL;
    }
    c->cap = cap;
    c->destroy = destroy;
    c->user = user;
    return c;
}

static void plan_clear(plan_cache *c) {
    for (int i = 0; i < c->cap; i++)
        if (c->s[i].plan) {
            if (c->destroy) c->destroy(c->s[i].plan, c->user);
            c->s[i].plan = NULL;
        }
    c->n = 0;
}

void plan_cache_free(plan_cache *c) {
    if (!c) return;
    plan_clear(c);
    free(c->s);
    free(c);
}

void *plan_cache_get(plan_cache *c, const plan_key *k) {
    for (uint64_t i = key_hash(k) & (uint64_t)(c->cap - 1);; i = (i + 1) & (uint64_t)(c->cap - 1)) {
        plan_slot *s = &c->s[i];
        if (!s->plan) return NULL;
        if (!memcmp(&s->k, k, sizeof *k)) return s->plan;
    }
}

easel_err plan_cache_put(plan_cache *c, const plan_key *k, void *plan) {
    if (!plan) return easel_seterr(EASEL_EINVAL, "plan cache: NULL plan");
    if (2 * (c->n + 1) > c->cap) plan_clear(c);
    uint64_t i = key_hash(k) & (uint64_t)(c->cap - 1);
    while (c->s[i].plan)
        i = (i + 1) & (uint64_t)(c->cap - 1);
    c->s[i].k = *k;
    c->s[i].plan = plan;
    c->n++;
    return EASEL_OK;
}

int plan_cache_size(const plan_cache *c) {
    return c->n;
}
