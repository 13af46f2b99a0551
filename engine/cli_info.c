/* `easel info`: version, build options, BLAS, threads, CUDA devices. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "cli.h"

/* Filled by the CUDA backend when compiled in (kernels/). */
#ifdef EASEL_HAVE_CUDA
int backend_cuda_describe(char *buf, size_t len);
#endif
extern char *openblas_get_config(void);

int cmd_info(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help")) {
            printf("usage: easel info\n");
            return 0;
        }
        fprintf(stderr, "easel info: unknown option '%s'\n", argv[i]);
        return 2;
    }
    printf("easel %s (%s)\n", EASEL_VERSION, EASEL_GIT);
    printf("build: C11%s%s\n",
#ifdef EASEL_HAVE_CUDA
           ", CUDA compiled in",
#else
           ", CUDA not compiled in",
#endif
#ifdef EASEL_FAULTS
           ", fault injection (test build)"
#else
           ""
#endif
    );
    printf("blas: %s\n", openblas_get_config());
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    printf("cpu threads: %ld (default: all cores; --threads or EASEL_THREADS)\n", cores);
#ifdef EASEL_HAVE_CUDA
    char buf[2048];
    backend_cuda_describe(buf, sizeof buf);
    printf("cuda: %s\n", buf);
#else
    printf("cuda: not compiled in (build with nvcc available, or -DEASEL_CUDA=ON)\n");
#endif
    return 0;
}
