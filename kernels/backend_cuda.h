/* The CUDA backend's entry points (kernels/backend_cuda.c; linked only when
 * built with EASEL_HAVE_CUDA). cli/backends.c chooses between it and the CPU
 * backend; nothing in engine/ or models/ names it (they reach its graphs and
 * its fp32 view through backend_run_graph and backend_with_dtype). */
#ifndef EASEL_BACKEND_CUDA_H
#define EASEL_BACKEND_CUDA_H

#include <stddef.h>

#include "../engine/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One worker on GPU `device` (< 0: $EASEL_CUDA_DEVICE or 0) with its own
 * stream, cuBLASLt handle, scratch (64 MiB, or $EASEL_CUDA_SCRATCH_KIB) and
 * graph cache; act_dtype f16, with an f32 view (backend_with_dtype). Memory
 * of any cuda backend on the device is usable by all, so weights loaded
 * through one are shared by every worker. NULL with a message (no device,
 * driver missing, out of memory; EASEL_EDEVLOST after a sticky fault) on
 * failure. */
backend *backend_cuda_create(int device);
/* Shapes in this worker's graph cache (tests). */
int backend_cuda_graph_count(backend *be);
/* GEMM plans this worker made (tests: a repeated problem makes none). */
long backend_cuda_gemm_plans(backend *be);
/* One line per visible device (name, memory, compute capability) or why none. */
int backend_cuda_describe(char *buf, size_t len);

#ifdef __cplusplus
}
#endif

#endif
