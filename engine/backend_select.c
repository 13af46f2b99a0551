/* Backend selection for the CLI and the service: "cpu", "cuda" or "auto".
 * Always compiled; the CUDA branch exists only when EASEL_HAVE_CUDA is set,
 * so a CUDA build runs on a machine without a GPU, on the CPU backend. */
#include <string.h>

#include "backend.h"
#include "log.h"

backend *backend_auto_create(const char *want, int threads) {
    if (!want || !*want) want = "auto";
    int is_auto = !strcmp(want, "auto");
    if (!is_auto && strcmp(want, "cpu") && strcmp(want, "cuda")) {
        easel_seterr(EASEL_EINVAL, "unknown backend '%s' (want cpu, cuda or auto)", want);
        return NULL;
    }
    if (!strcmp(want, "cpu")) return backend_cpu_create(threads);
#ifdef EASEL_HAVE_CUDA
    backend *be = backend_cuda_create(-1);
    if (be || !is_auto) return be;
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
    return backend_cpu_create(threads);
}
