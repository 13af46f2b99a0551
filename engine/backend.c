/* Backend-independent helpers (see backend.h). */
#include "backend.h"

#include <stdio.h>

easel_err backend_tensor_alloc(backend *be, tensor *t, dtype dt, int ndim, const int64_t *ne) {
    *t = tensor_make(NULL, dt, be->dev, ndim, ne);
    size_t bytes = tensor_nbytes(t);
    void *p = NULL;
    easel_err e = be->alloc(be, bytes ? bytes : 1, &p);
    if (e) return e;
    t->data = p;
    return EASEL_OK;
}

void backend_tensor_free(backend *be, tensor *t) {
    if (t->data) be->free(be, t->data);
    t->data = NULL;
}

static int batch3(const tensor *t, int64_t *B, int64_t *r, int64_t *cl) {
    if (t->ndim == 2)
        *B = 1, *r = t->ne[0], *cl = t->ne[1];
    else if (t->ndim == 3)
        *B = t->ne[0], *r = t->ne[1], *cl = t->ne[2];
    else
        return 0;
    return 1;
}

static easel_err bmm_mismatch(const char *what, const char *na, const tensor *a, const char *nb,
                              const tensor *b) {
    char sa[96], sb[96];
    return easel_seterr(EASEL_EINVAL, "bmm: %s: %s %s, %s %s", what, na,
                        tensor_shape_str(a, sa, sizeof sa), nb, tensor_shape_str(b, sb, sizeof sb));
}

easel_err backend_check_bmm(const tensor *y, const tensor *a, const tensor *b, int trans_b,
                            int64_t *B, int64_t *M, int64_t *N, int64_t *K) {
    int64_t Bb, r, cl, By, My, Ny;
    if (!batch3(a, B, M, K) || !batch3(b, &Bb, &r, &cl) || !batch3(y, &By, &My, &Ny))
        return bmm_mismatch("tensors must be [B,M,K]-like (2 or 3 dims)", "a", a, "b", b);
    *N = trans_b ? r : cl;
    int64_t Kb = trans_b ? cl : r;
    if (Bb != *B || Kb != *K)
        return bmm_mismatch(trans_b ? "b must be [B,N,K]" : "b must be [B,K,N]", "a", a, "b", b);
    if (By != *B || My != *M || Ny != *N) return bmm_mismatch("y must be [B,M,N]", "y", y, "b", b);
    return EASEL_OK;
}
