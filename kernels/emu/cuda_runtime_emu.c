/* Test-only CPU emulation of the CUDA runtime subset in cuda_runtime_emu.h.
 * Allocations carry a 256-byte header holding their size, so the emulated
 * device can enforce a memory cap and report what is in use. Streams are
 * synchronous; graph capture is reported as unsupported (callers fall back
 * to running ops directly, which is the path this exercises). */
#include "cuda_runtime_emu.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EMU_HDR 256
#define EMU_DEFAULT_MEM ((size_t)4 << 30)

static size_t emu_mem_total = EMU_DEFAULT_MEM;
static size_t emu_mem_used; /* updated with __atomic builtins */
static int emu_devices = 1;
static _Thread_local cudaError_t emu_last_err;

struct emu_stream {
    int unused;
};

void emu_set_device_memory(size_t total_bytes) {
    emu_mem_total = total_bytes ? total_bytes : EMU_DEFAULT_MEM;
}
void emu_set_device_count(int n) {
    emu_devices = n;
}
size_t emu_device_bytes_in_use(void) {
    return __atomic_load_n(&emu_mem_used, __ATOMIC_SEQ_CST);
}
void emu_set_launch_error(cudaError_t e) {
    if (!emu_last_err) emu_last_err = e;
}

const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess:
        return "no error";
    case cudaErrorInvalidValue:
        return "invalid argument";
    case cudaErrorMemoryAllocation:
        return "out of memory";
    case cudaErrorLaunchFailure:
        return "unspecified launch failure";
    case cudaErrorInsufficientDriver:
        return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorNoDevice:
        return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice:
        return "invalid device ordinal";
    case cudaErrorNotSupported:
        return "operation not supported";
    }
    return "unknown error";
}

cudaError_t cudaGetLastError(void) {
    cudaError_t e = emu_last_err;
    emu_last_err = cudaSuccess;
    return e;
}
cudaError_t cudaPeekAtLastError(void) {
    return emu_last_err;
}

cudaError_t cudaGetDeviceCount(int *count) {
    if (emu_devices <= 0) return cudaErrorNoDevice; /* like the real one: count untouched */
    *count = emu_devices;
    return cudaSuccess;
}
cudaError_t cudaSetDevice(int dev) {
    return dev >= 0 && dev < emu_devices ? cudaSuccess : cudaErrorInvalidDevice;
}
cudaError_t cudaGetDevice(int *dev) {
    *dev = 0;
    return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int dev) {
    if (dev < 0 || dev >= emu_devices) return cudaErrorInvalidDevice;
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "easel CPU emulator");
    p->totalGlobalMem = emu_mem_total;
    p->multiProcessorCount = 1;
    p->major = 9;
    p->minor = 0;
    p->sharedMemPerBlockOptin = 227 * 1024;
    p->l2CacheSize = 1 << 20;
    return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int *v) {
    *v = 13000;
    return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int *v) {
    *v = 13000;
    return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes) {
    size_t used = emu_device_bytes_in_use();
    *free_bytes = used < emu_mem_total ? emu_mem_total - used : 0;
    *total_bytes = emu_mem_total;
    return cudaSuccess;
}

cudaError_t cudaMalloc(void **p, size_t bytes) {
    *p = NULL;
    size_t used = __atomic_add_fetch(&emu_mem_used, bytes, __ATOMIC_SEQ_CST);
    void *m = NULL;
    if (used > emu_mem_total || posix_memalign(&m, EMU_HDR, bytes + EMU_HDR)) {
        __atomic_sub_fetch(&emu_mem_used, bytes, __ATOMIC_SEQ_CST);
        return cudaErrorMemoryAllocation;
    }
    memcpy(m, &bytes, sizeof bytes);
    *p = (char *)m + EMU_HDR;
    return cudaSuccess;
}
cudaError_t cudaFree(void *p) {
    if (!p) return cudaSuccess;
    char *m = (char *)p - EMU_HDR;
    size_t bytes;
    memcpy(&bytes, m, sizeof bytes);
    __atomic_sub_fetch(&emu_mem_used, bytes, __ATOMIC_SEQ_CST);
    free(m);
    return cudaSuccess;
}
cudaError_t cudaMallocHost(void **p, size_t bytes) {
    *p = malloc(bytes ? bytes : 1);
    return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaFreeHost(void *p) {
    free(p);
    return cudaSuccess;
}
cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, cudaMemcpyKind k) {
    (void)k;
    if (n) memmove(dst, src, n);
    return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, cudaMemcpyKind k,
                            cudaStream_t s) {
    (void)s;
    return cudaMemcpy(dst, src, n, k);
}
cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t s) {
    (void)s;
    if (n) memset(p, v, n);
    return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags) {
    (void)flags;
    *s = calloc(1, sizeof **s);
    return *s ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
    free(s);
    return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    (void)s;
    return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize(void) {
    return cudaSuccess;
}
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode) {
    (void)s;
    (void)mode;
    return cudaErrorNotSupported;
}
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *g) {
    (void)s;
    *g = NULL;
    return cudaErrorNotSupported;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *e, cudaGraph_t g, unsigned long long flags) {
    (void)g;
    (void)flags;
    *e = NULL;
    return cudaErrorNotSupported;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t s) {
    (void)e;
    (void)s;
    return cudaErrorNotSupported;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e) {
    (void)e;
    return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t g) {
    (void)g;
    return cudaSuccess;
}
