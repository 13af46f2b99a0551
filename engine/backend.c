/* Backend-independent helpers (see backend.h). */
#include "backend.h"

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
