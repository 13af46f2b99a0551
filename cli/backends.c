/* Backend selection (see backends.h). Always compiled; the CUDA branch exists
 * only when EASEL_HAVE_CUDA is set, so a CUDA build runs on a machine without
 * a GPU, on the CPU backend. */
#include "backends.h"

#include <stdio.h>
#include <string.h>

#include "../engine/log.h"
#ifdef EASEL_HAVE_CUDA
#include "../kernels/backend_cuda.h"
#endif

backend *backend_create(const char *want, int threads, backend_precision prec) {
    if (!want || !*want) want = "auto";
    int is_auto = !strcmp(want, "auto");
    if (!is_auto && strcmp(want, "cpu") && strcmp(want, "cuda")) {
        easel_seterr(EASEL_EINVAL, "unknown backend '%s' (want cpu, cuda or auto)", want);
        return NULL;
    }
    if (!strcmp(want, "cpu")) return backend_cpu_create_prec(threads, prec);
#ifdef EASEL_HAVE_CUDA
    backend *be = backend_cuda_create(-1);
    if (be || !is_auto) {
        static int said; /* one line per process, however many workers ask */
        if (be && prec != PREC_AUTO && !__atomic_exchange_n(&said, 1, __ATOMIC_SEQ_CST))
            log_info("precision %s applies to the CPU backend; CUDA computes in f16",
                     backend_precision_name(prec));
        return be;
    }
    /* one line per process, however many workers ask */
    static int warned;
    if (!__atomic_exchange_n(&warned, 1, __ATOMIC_SEQ_CST))
        log_warn("CUDA backend unavailable: %s; using the CPU backend", easel_errmsg());
#else
    if (!is_auto) {
        easel_seterr(EASEL_EUNSUPPORTED,
                     "this easel was built without CUDA (rebuild with nvcc present)");
        return NULL;
    }
#endif
    return backend_cpu_create_prec(threads, prec);
}

backend *backend_auto_create(const char *want, int threads) {
    backend_precision prec;
    if (backend_precision_env(&prec)) return NULL;
    return backend_create(want, threads, prec);
}

void backends_describe(char *buf, size_t len) {
#ifdef EASEL_HAVE_CUDA
    backend_cuda_describe(buf, len);
#else
    snprintf(buf, len, "not compiled in (build with nvcc available, or -DEASEL_CUDA=ON)");
#endif
}
