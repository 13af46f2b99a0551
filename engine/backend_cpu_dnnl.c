/* oneDNN glue for the CPU backend's bf16 path (see backend_cpu_dnnl.h): an
 * engine and a stream per pool thread, one-thread primitives cached by shape,
 * the stored layout of conv weights, per-thread scratchpads and memory
 * objects. Only the C API (dnnl.h) is used. */
#include "backend_cpu_dnnl.h"

#include <dnnl.h>
#include <dnnl_debug.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* libgomp's (oneDNN's runtime): the thread count oneDNN sizes and runs a
 * primitive with, per calling thread. Declared here: no -fopenmp for one call. */
void omp_set_num_threads(int n);

#define CACHE_MAX 512 /* primitives per backend: an SD1.5 image needs ~250 shapes */
#define KEY_N 16

enum { K_MM = 1, K_CONV, K_WLAYOUT };

/* Memory objects per thread and primitive: the args and the scratchpad of the
 * primitive (0..4), then the reorder's from/to (6, 7). */
#define MEM_SLOTS 8
#define MEM_REORDER 6

struct cpu_dnnl_prim {
    int64_t key[KEY_N];
    uint64_t used;
    dnnl_primitive_t prim;
    dnnl_primitive_t reorder;               /* wplain -> wei */
    dnnl_primitive_t unreorder;             /* weight layout only: wei -> wplain */
    dnnl_memory_desc_t src, wei, bias, dst; /* what the primitive runs on */
    dnnl_memory_desc_t wplain;              /* the weights as we hold them */
    size_t scratch, wbytes;                 /* scratchpad bytes; packed/reordered weights */
    int has_bias, reorder_w;                /* conv: the kernel wants wei, not wplain */
    void *wbuf;                             /* conv: the weights reordered into wei */
    char impl[64];
    dnnl_memory_t *mem; /* [nthreads][MEM_SLOTS], made on first use, re-pointed after */
};

struct cpu_dnnl {
    dnnl_engine_t eng;
    dnnl_stream_t *st; /* per thread: a stream is used by one thread at a time */
    int nthreads;
    cpu_dnnl_prim *ents[CACHE_MAX];
    int nents;
    uint64_t clock;
    void **scr; /* per thread: the scratchpad */
    size_t *scr_n;
};

/* ---------------------------------------------------------------- errors */

static easel_err dn_fail(const char *what, dnnl_status_t s) {
    easel_err e = s == dnnl_out_of_memory ? EASEL_ENOMEM : EASEL_EINTERNAL;
    return easel_seterr(e, "oneDNN %s: %s", what, dnnl_status2str(s));
}

#define DN(what, call)                                                                             \
    do {                                                                                           \
        dnnl_status_t s_ = (call);                                                                 \
        if (s_ != dnnl_success) return dn_fail(what, s_);                                          \
    } while (0)

/* ---------------------------------------------------------- capabilities */

int cpu_dnnl_has_bf16(void) {
    unsigned isa = (unsigned)dnnl_get_effective_cpu_isa(), bf = dnnl_cpu_isa_avx512_core_bf16;
    return (isa & bf) == bf; /* the ISA values are bit sets: each includes the ones below */
}

const char *cpu_dnnl_isa(void) {
    const char *s = dnnl_cpu_isa2str(dnnl_get_effective_cpu_isa());
    return s && !strncmp(s, "cpu_isa_", 8) ? s + 8 : s;
}

const char *cpu_dnnl_version(void) {
    static char v[32]; /* written identically by every caller */
    const dnnl_version_t *dv = dnnl_version();
    snprintf(v, sizeof v, "%d.%d.%d", dv->major, dv->minor, dv->patch);
    return v;
}

const char *cpu_dnnl_impl(const cpu_dnnl_prim *p) {
    return p->impl;
}

/* ------------------------------------------------------------- lifecycle */

static void ent_free(cpu_dnnl_prim *m, int nthreads) {
    if (!m) return;
    for (int i = 0; m->mem && i < nthreads * MEM_SLOTS; i++)
        if (m->mem[i]) dnnl_memory_destroy(m->mem[i]);
    free(m->mem);
    if (m->prim) dnnl_primitive_destroy(m->prim);
    if (m->reorder) dnnl_primitive_destroy(m->reorder);
    if (m->unreorder) dnnl_primitive_destroy(m->unreorder);
    free(m->wbuf);
    free(m);
}

static cpu_dnnl_prim *ent_new(const cpu_dnnl *d, const int64_t *key) {
    cpu_dnnl_prim *m = calloc(1, sizeof *m);
    if (m && !(m->mem = calloc((size_t)d->nthreads * MEM_SLOTS, sizeof *m->mem))) {
        free(m);
        m = NULL;
    }
    if (m) memcpy(m->key, key, sizeof m->key);
    if (!m) easel_seterr(EASEL_ENOMEM, "oneDNN: out of memory");
    return m;
}

cpu_dnnl *cpu_dnnl_create(int nthreads) {
    cpu_dnnl *d = calloc(1, sizeof *d);
    if (!d) {
        easel_seterr(EASEL_ENOMEM, "oneDNN: out of memory");
        return NULL;
    }
    d->nthreads = nthreads < 1 ? 1 : nthreads;
    dnnl_status_t s = dnnl_engine_create(&d->eng, dnnl_cpu, 0);
    size_t n = (size_t)d->nthreads;
    if (s == dnnl_success &&
        (!(d->st = calloc(n, sizeof *d->st)) || !(d->scr = calloc(n, sizeof *d->scr)) ||
         !(d->scr_n = calloc(n, sizeof *d->scr_n))))
        s = dnnl_out_of_memory;
    for (int i = 0; s == dnnl_success && i < d->nthreads; i++)
        s = dnnl_stream_create(&d->st[i], d->eng, dnnl_stream_default_flags);
    if (s != dnnl_success) {
        dn_fail("engine", s);
        cpu_dnnl_free(d);
        return NULL;
    }
    return d;
}

void cpu_dnnl_free(cpu_dnnl *d) {
    if (!d) return;
    for (int i = 0; i < d->nents; i++)
        ent_free(d->ents[i], d->nthreads);
    for (int i = 0; d->st && i < d->nthreads; i++)
        if (d->st[i]) dnnl_stream_destroy(d->st[i]);
    for (int i = 0; d->scr && i < d->nthreads; i++)
        free(d->scr[i]);
    free(d->st);
    free(d->scr);
    free(d->scr_n);
    if (d->eng) dnnl_engine_destroy(d->eng);
    free(d);
}

/* ---------------------------------------------------------------- cache */

static cpu_dnnl_prim *cache_find(cpu_dnnl *d, const int64_t *key) {
    for (int i = 0; i < d->nents; i++)
        if (!memcmp(d->ents[i]->key, key, sizeof(int64_t) * KEY_N)) {
            d->ents[i]->used = ++d->clock;
            return d->ents[i];
        }
    return NULL;
}

static void cache_put(cpu_dnnl *d, cpu_dnnl_prim *m) {
    m->used = ++d->clock;
    if (d->nents < CACHE_MAX) {
        d->ents[d->nents++] = m;
        return;
    }
    int lru = 0;
    for (int i = 1; i < d->nents; i++)
        if (d->ents[i]->used < d->ents[lru]->used) lru = i;
    ent_free(d->ents[lru], d->nthreads);
    d->ents[lru] = m;
}

static easel_err grow(void **p, size_t *cap, size_t bytes) {
    if (*cap >= bytes) return EASEL_OK;
    free(*p);
    *p = NULL;
    *cap = 0;
    if (posix_memalign(p, 64, bytes ? bytes : 64)) {
        *p = NULL;
        return easel_seterr(EASEL_ENOMEM, "oneDNN: out of memory (%zu bytes)", bytes);
    }
    *cap = bytes;
    return EASEL_OK;
}

/* The entry for key, made by create() on a miss (one-thread primitives: the
 * OpenMP thread count is 1 while oneDNN sizes them). */
static easel_err get(cpu_dnnl *d, const int64_t *key, cpu_dnnl_prim **out,
                     easel_err (*create)(cpu_dnnl *, cpu_dnnl_prim *, const void *),
                     const void *arg) {
    cpu_dnnl_prim *m = cache_find(d, key);
    *out = m;
    if (m) return EASEL_OK;
    if (!(m = ent_new(d, key))) return EASEL_ENOMEM;
    omp_set_num_threads(1);
    easel_err e = create(d, m, arg);
    if (e) {
        ent_free(m, d->nthreads);
        return e;
    }
    cache_put(d, m);
    *out = m;
    return EASEL_OK;
}

/* Creates the primitive for an op descriptor: user scratchpad, dst += when
 * accumulate; notes its implementation name and scratchpad size. */
static easel_err make_prim(cpu_dnnl *d, const_dnnl_op_desc_t od, cpu_dnnl_prim *m, int accumulate,
                           dnnl_primitive_desc_t *pd_out) {
    dnnl_primitive_attr_t attr;
    DN("attr", dnnl_primitive_attr_create(&attr));
    dnnl_status_t s = dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user);
    if (s == dnnl_success && accumulate) {
        dnnl_post_ops_t po;
        s = dnnl_post_ops_create(&po);
        if (s == dnnl_success) {
            s = dnnl_post_ops_append_sum(po, 1.0f);
            if (s == dnnl_success) s = dnnl_primitive_attr_set_post_ops(attr, po);
            dnnl_post_ops_destroy(po);
        }
    }
    dnnl_primitive_desc_t pd = NULL;
    if (s == dnnl_success) s = dnnl_primitive_desc_create(&pd, od, attr, d->eng, NULL);
    dnnl_primitive_attr_destroy(attr);
    if (s != dnnl_success) return dn_fail("primitive descriptor", s);
    const char *impl = "?";
    dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
    snprintf(m->impl, sizeof m->impl, "%s", impl);
    m->scratch =
        dnnl_memory_desc_get_size(dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0));
    s = dnnl_primitive_create(&m->prim, pd);
    if (s != dnnl_success) {
        dnnl_primitive_desc_destroy(pd);
        return dn_fail("primitive", s);
    }
    *pd_out = pd;
    return EASEL_OK;
}

/* A reorder primitive from -> to (into *r). */
static easel_err make_reorder(cpu_dnnl *d, const dnnl_memory_desc_t *from,
                              const dnnl_memory_desc_t *to, dnnl_primitive_t *r) {
    dnnl_primitive_desc_t rpd;
    DN("weights reorder", dnnl_reorder_primitive_desc_create(&rpd, from, d->eng, to, d->eng, NULL));
    dnnl_status_t s = dnnl_primitive_create(r, rpd);
    dnnl_primitive_desc_destroy(rpd);
    return s == dnnl_success ? EASEL_OK : dn_fail("weights reorder", s);
}

/* ---------------------------------------------------------------- execute */

/* Runs prim on pool thread `thread` with n (arg, md, pointer) triples and,
 * when scratch_bytes, that thread's scratchpad; mem: the thread's memory
 * objects for this primitive (made on first use, then re-pointed). */
static easel_err exec(cpu_dnnl *d, int thread, dnnl_primitive_t prim, dnnl_memory_t *mem, int n,
                      const int *args, const dnnl_memory_desc_t *const *mds, void *const *ptrs,
                      size_t scratch_bytes) {
    dnnl_exec_arg_t ea[6];
    dnnl_status_t s = dnnl_success;
    int k = 0;
    omp_set_num_threads(1); /* reorders thread themselves by the caller's count: none */
    for (int i = 0; i < n && s == dnnl_success; i++, k++) {
        s = mem[i] ? dnnl_memory_set_data_handle(mem[i], ptrs[i])
                   : dnnl_memory_create(&mem[i], mds[i], d->eng, ptrs[i]);
        ea[k] = (dnnl_exec_arg_t){args[i], mem[i]};
    }
    if (s == dnnl_success && scratch_bytes) {
        if (grow(&d->scr[thread], &d->scr_n[thread], scratch_bytes)) return EASEL_ENOMEM;
        if (mem[n]) {
            s = dnnl_memory_set_data_handle(mem[n], d->scr[thread]);
        } else {
            dnnl_memory_desc_t sp;
            dnnl_dims_t sd = {(dnnl_dim_t)scratch_bytes};
            s = dnnl_memory_desc_init_by_tag(&sp, 1, sd, dnnl_u8, dnnl_a);
            if (s == dnnl_success) s = dnnl_memory_create(&mem[n], &sp, d->eng, d->scr[thread]);
        }
        ea[k++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, mem[n]};
    }
    if (s == dnnl_success) s = dnnl_primitive_execute(prim, d->st[thread], k, ea);
    if (s == dnnl_success) s = dnnl_stream_wait(d->st[thread]);
    return s == dnnl_success ? EASEL_OK : dn_fail("execute", s);
}

static dnnl_memory_t *slot(const cpu_dnnl_prim *m, int thread) {
    return m->mem + (size_t)thread * MEM_SLOTS;
}

/* The primitive's args: src, weights, dst, then bias when it has one. */
static easel_err run_prim(cpu_dnnl *d, const cpu_dnnl_prim *m, int thread, void *y, const void *a,
                          const void *b, const void *bias) {
    int args[4] = {DNNL_ARG_SRC, DNNL_ARG_WEIGHTS, DNNL_ARG_DST, DNNL_ARG_BIAS};
    const dnnl_memory_desc_t *mds[4] = {&m->src, &m->wei, &m->dst, &m->bias};
    void *ptrs[4] = {(void *)a, (void *)b, y, (void *)bias};
    return exec(d, thread, m->prim, slot(m, thread), m->has_bias ? 4 : 3, args, mds, ptrs,
                m->scratch);
}

/* from -> to through the entry's reorder (pack) or unreorder (unpack). */
static easel_err run_reorder(cpu_dnnl *d, const cpu_dnnl_prim *m, int thread, const void *from,
                             void *to, int pack) {
    int ra[2] = {DNNL_ARG_FROM, DNNL_ARG_TO};
    const dnnl_memory_desc_t *rm[2] = {pack ? &m->wplain : &m->wei, pack ? &m->wei : &m->wplain};
    void *rp[2] = {(void *)from, to};
    return exec(d, thread, pack ? m->reorder : m->unreorder,
                slot(m, thread) + (pack ? MEM_REORDER : 0), 2, ra, rm, rp, 0);
}

/* ---------------------------------------------------------------- matmul */

typedef struct {
    int64_t M, N, K, lda, ldb, ldy;
    int trans_b, has_bias, packed, accumulate;
} mm_args;

static easel_err mm_create(cpu_dnnl *d, cpu_dnnl_prim *m, const void *arg) {
    const mm_args *a = arg;
    m->has_bias = a->has_bias;
    dnnl_dims_t ad = {a->M, a->K}, as = {a->lda, 1}, bd = {a->K, a->N}, yd = {a->M, a->N},
                ys = {a->ldy, 1}, cd = {1, a->N};
    dnnl_dims_t bs = {a->trans_b ? 1 : a->ldb, a->trans_b ? a->ldb : 1};
    DN("matmul src", dnnl_memory_desc_init_by_strides(&m->src, 2, ad, dnnl_bf16, as));
    DN("matmul weights", dnnl_memory_desc_init_by_strides(&m->wplain, 2, bd, dnnl_bf16, bs));
    m->wei = m->wplain;
    if (a->packed)
        DN("matmul weights",
           dnnl_memory_desc_init_by_tag(&m->wei, 2, bd, dnnl_bf16, dnnl_format_tag_any));
    DN("matmul dst", dnnl_memory_desc_init_by_strides(&m->dst, 2, yd, dnnl_f32, ys));
    DN("matmul bias", dnnl_memory_desc_init_by_tag(&m->bias, 2, cd, dnnl_f32, dnnl_ab));
    dnnl_matmul_desc_t md;
    DN("matmul",
       dnnl_matmul_desc_init(&md, &m->src, &m->wei, m->has_bias ? &m->bias : NULL, &m->dst));
    dnnl_primitive_desc_t pd;
    easel_err e = make_prim(d, &md, m, a->accumulate, &pd);
    if (e) return e;
    if (a->packed) m->wei = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    dnnl_primitive_desc_destroy(pd);
    if (!a->packed) return EASEL_OK;
    m->wbytes = (dnnl_memory_desc_get_size(&m->wei) + 63) & ~(size_t)63;
    return make_reorder(d, &m->wplain, &m->wei, &m->reorder);
}

static easel_err mm_get(cpu_dnnl *d, const mm_args *a, cpu_dnnl_prim **out) {
    int64_t key[KEY_N] = {K_MM,   a->M,       a->N,        a->K,      a->lda,       a->ldb,
                          a->ldy, a->trans_b, a->has_bias, a->packed, a->accumulate};
    return get(d, key, out, mm_create, a);
}

easel_err cpu_dnnl_mm_get(cpu_dnnl *d, int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb,
                          int64_t ldy, int trans_b, int has_bias, cpu_dnnl_prim **out) {
    mm_args a = {M, N, K, lda, ldb, ldy, trans_b != 0, has_bias != 0, 0, 0};
    return mm_get(d, &a, out);
}

easel_err cpu_dnnl_mm_get_packed(cpu_dnnl *d, int64_t M, int64_t N, int64_t K, int64_t lda,
                                 int64_t ldb, int64_t ldy, int trans_b, int accumulate,
                                 cpu_dnnl_prim **out) {
    mm_args a = {M, N, K, lda, ldb, ldy, trans_b != 0, 0, 1, accumulate != 0};
    return mm_get(d, &a, out);
}

size_t cpu_dnnl_mm_packed_bytes(const cpu_dnnl_prim *p) {
    return p->wbytes;
}

easel_err cpu_dnnl_mm_pack_b(cpu_dnnl *d, const cpu_dnnl_prim *p, int thread, const uint16_t *b,
                             void *packed) {
    return run_reorder(d, p, thread, b, packed, 1);
}

easel_err cpu_dnnl_mm_exec(cpu_dnnl *d, const cpu_dnnl_prim *p, int thread, float *y,
                           const uint16_t *a, const uint16_t *b, const float *bias) {
    return run_prim(d, p, thread, y, a, b, bias);
}

/* ------------------------------------------ the stored conv weight layout */

/* A bf16 conv weight [Co,KH,KW,Ci] is stored on a bf16 backend in the blocked
 * layout oneDNN's convolution picks for it on a canonical problem (one 32x32
 * image, stride 1, same padding, one thread) when that layout needs no
 * padding (the same bytes as plain OHWI), else plain. It depends only on the
 * shape and the CPU, so every backend of the process agrees, and the
 * convolutions then read the weights without a reorder per call (a shape
 * whose kernel wants another layout reorders from this one). The entry keeps
 * the layout and the pack/unpack reorders. */
static easel_err wlayout_create(cpu_dnnl *d, cpu_dnnl_prim *m, const void *arg) {
    const int64_t *ne = arg; /* Co, KH, KW, Ci */
    int64_t Co = ne[0], KH = ne[1], KW = ne[2], Ci = ne[3];
    dnnl_dims_t wd = {Co, Ci, KH, KW}, sd = {1, Ci, 32, 32}, dd = {1, Co, 32, 32}, st = {1, 1};
    dnnl_dims_t pl = {KH / 2, KW / 2}, pr = {KH - 1 - KH / 2, KW - 1 - KW / 2};
    dnnl_memory_desc_t src, wany, dst;
    DN("weight layout", dnnl_memory_desc_init_by_tag(&m->wplain, 4, wd, dnnl_bf16, dnnl_ohwi));
    m->wei = m->wplain;
    if (KH > 32 || KW > 32) return EASEL_OK;
    DN("weight layout", dnnl_memory_desc_init_by_tag(&src, 4, sd, dnnl_bf16, dnnl_nhwc));
    DN("weight layout", dnnl_memory_desc_init_by_tag(&wany, 4, wd, dnnl_bf16, dnnl_format_tag_any));
    DN("weight layout", dnnl_memory_desc_init_by_tag(&dst, 4, dd, dnnl_f32, dnnl_nhwc));
    dnnl_convolution_desc_t cd;
    dnnl_primitive_desc_t pd;
    if (dnnl_convolution_forward_desc_init(&cd, dnnl_forward_inference, dnnl_convolution_direct,
                                           &src, &wany, NULL, &dst, st, pl, pr) != dnnl_success ||
        dnnl_primitive_desc_create(&pd, &cd, NULL, d->eng, NULL) != dnnl_success)
        return EASEL_OK; /* no kernel for it: keep it plain */
    dnnl_memory_desc_t w = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    dnnl_primitive_desc_destroy(pd);
    if (dnnl_memory_desc_get_size(&w) != dnnl_memory_desc_get_size(&m->wplain) ||
        dnnl_memory_desc_equal(&w, &m->wplain))
        return EASEL_OK;
    m->wei = w;
    easel_err e = make_reorder(d, &m->wplain, &m->wei, &m->reorder);
    return e ? e : make_reorder(d, &m->wei, &m->wplain, &m->unreorder);
}

static easel_err wlayout_get(cpu_dnnl *d, const int64_t ne[4], cpu_dnnl_prim **out) {
    int64_t key[KEY_N] = {K_WLAYOUT, ne[0], ne[1], ne[2], ne[3]};
    return get(d, key, out, wlayout_create, ne);
}

int cpu_dnnl_conv_w_blocked(cpu_dnnl *d, const int64_t ne[4]) {
    cpu_dnnl_prim *m;
    return !wlayout_get(d, ne, &m) && m->reorder;
}

static easel_err wlayout_move(cpu_dnnl *d, const int64_t ne[4], const void *from, void *to,
                              int pack) {
    cpu_dnnl_prim *m;
    easel_err e = wlayout_get(d, ne, &m);
    if (e) return e;
    if (!m->reorder) return easel_seterr(EASEL_EINTERNAL, "weight layout: plain, nothing to move");
    return run_reorder(d, m, 0, from, to, pack);
}

easel_err cpu_dnnl_conv_w_pack(cpu_dnnl *d, const int64_t ne[4], const uint16_t *plain,
                               void *stored) {
    return wlayout_move(d, ne, plain, stored, 1);
}

easel_err cpu_dnnl_conv_w_unpack(cpu_dnnl *d, const int64_t ne[4], const void *stored,
                                 uint16_t *plain) {
    return wlayout_move(d, ne, stored, plain, 0);
}

/* ------------------------------------------------------------------ conv */

static easel_err conv_create(cpu_dnnl *d, cpu_dnnl_prim *m, const void *arg) {
    const cpu_dnnl_conv_shape *c = arg;
    int64_t Ho = (c->H + c->pt + c->pb - c->KH) / c->stride + 1;
    int64_t Wo = (c->W + c->pl + c->pr - c->KW) / c->stride + 1;
    dnnl_dims_t sd = {1, c->Ci, c->H, c->W}, wd = {c->Co, c->Ci, c->KH, c->KW}, bd = {c->Co},
                dd = {1, c->Co, Ho, Wo};
    dnnl_dims_t st = {c->stride, c->stride}, pl = {c->pt, c->pl}, pr = {c->pb, c->pr};
    int64_t wne[4] = {c->Co, c->KH, c->KW, c->Ci};
    cpu_dnnl_prim *lay;
    easel_err e = wlayout_get(d, wne, &lay);
    if (e) return e;
    m->wplain = lay->wei; /* the weights come in their stored layout */
    m->has_bias = c->has_bias;
    dnnl_memory_desc_t wany;
    DN("conv src", dnnl_memory_desc_init_by_tag(&m->src, 4, sd, dnnl_bf16, dnnl_nhwc));
    DN("conv weights", dnnl_memory_desc_init_by_tag(&wany, 4, wd, dnnl_bf16, dnnl_format_tag_any));
    DN("conv bias", dnnl_memory_desc_init_by_tag(&m->bias, 1, bd, dnnl_f32, dnnl_a));
    DN("conv dst", dnnl_memory_desc_init_by_tag(&m->dst, 4, dd, dnnl_f32, dnnl_nhwc));
    dnnl_convolution_desc_t cd;
    DN("conv", dnnl_convolution_forward_desc_init(
                   &cd, dnnl_forward_inference, dnnl_convolution_direct, &m->src, &wany,
                   m->has_bias ? &m->bias : NULL, &m->dst, st, pl, pr));
    dnnl_primitive_desc_t pd;
    if ((e = make_prim(d, &cd, m, 0, &pd))) return e;
    m->wei = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    dnnl_primitive_desc_destroy(pd);
    m->reorder_w = !dnnl_memory_desc_equal(&m->wei, &m->wplain);
    if (!m->reorder_w) return EASEL_OK;
    m->wbytes = (dnnl_memory_desc_get_size(&m->wei) + 63) & ~(size_t)63;
    if (posix_memalign(&m->wbuf, 64, m->wbytes))
        return m->wbuf = NULL, easel_seterr(EASEL_ENOMEM, "oneDNN: out of memory (conv weights)");
    return make_reorder(d, &m->wplain, &m->wei, &m->reorder);
}

easel_err cpu_dnnl_conv_get(cpu_dnnl *d, const cpu_dnnl_conv_shape *s, cpu_dnnl_prim **out) {
    int64_t key[KEY_N] = {K_CONV,    s->H,  s->W,  s->Ci, s->Co, s->KH,      s->KW,
                          s->stride, s->pt, s->pb, s->pl, s->pr, s->has_bias};
    return get(d, key, out, conv_create, s);
}

easel_err cpu_dnnl_conv_weights(cpu_dnnl *d, cpu_dnnl_prim *p, const uint16_t *w, const void **wk) {
    *wk = w;
    if (!p->reorder_w) return EASEL_OK;
    *wk = p->wbuf;
    return run_reorder(d, p, 0, w, p->wbuf, 1);
}

easel_err cpu_dnnl_conv_exec(cpu_dnnl *d, const cpu_dnnl_prim *p, int thread, float *y,
                             const uint16_t *x, const void *wk, const float *bias) {
    return run_prim(d, p, thread, y, x, wk, bias);
}
