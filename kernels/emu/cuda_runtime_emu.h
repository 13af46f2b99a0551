/* Test-only: the subset of the CUDA runtime API that easel's host code uses
 * (kernels/backend_cuda.c and the kernel launchers), emulated on the CPU with
 * the semantics that bite on hardware (kernels/emu/cuda_runtime_emu.cpp):
 *   - streams are asynchronous: work queued on a stream runs when something
 *     waits for it (stream/event/device synchronize, a copy to pageable host
 *     memory, cudaFree), so a host read without a sync sees stale data, and
 *     the synchronous cudaMemcpy (legacy default stream) is NOT ordered with
 *     non-blocking streams;
 *   - a kernel fault (deadlock, shared-memory race, misaligned WMMA pointer,
 *     bad shuffle mask) is sticky: every later call of every thread returns
 *     it, as after a real device exception, until emu_reset_device();
 *   - stream capture records work into a graph; during capture an allocation,
 *     a free, a synchronize, a pageable copy or use of the legacy stream is an
 *     error that invalidates the capture (cudaStreamEndCapture then fails);
 *   - launch limits as the hardware checks them: grid y/z <= 65535, block
 *     dims and 1024 threads, dynamic shared memory <= 48 KiB unless the
 *     kernel's cudaFuncAttributeMaxDynamicSharedMemorySize was raised (a
 *     per-kernel, process-wide attribute), <= 227 KiB in all.
 * "Device" memory is host memory with a header; a test can cap its size.
 * Never linked into the easel binary. */
#ifndef EASEL_CUDA_RUNTIME_EMU_H
#define EASEL_CUDA_RUNTIME_EMU_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInsufficientDriver = 35,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDevice = 101,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorNotReady = 600,
    cudaErrorIllegalAddress = 700,
    cudaErrorLaunchOutOfResources = 701,
    cudaErrorMisalignedAddress = 716,
    cudaErrorLaunchFailure = 719,
    cudaErrorNotSupported = 801,
    cudaErrorStreamCaptureUnsupported = 900,
    cudaErrorStreamCaptureInvalidated = 901,
    cudaErrorStreamCaptureImplicit = 906,
    cudaErrorStreamCaptureWrongThread = 908
} cudaError_t;

typedef enum {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4
} cudaMemcpyKind;

typedef enum {
    cudaStreamCaptureModeGlobal = 0,
    cudaStreamCaptureModeThreadLocal = 1,
    cudaStreamCaptureModeRelaxed = 2
} cudaStreamCaptureMode;

typedef enum cudaStreamCaptureStatus {
    cudaStreamCaptureStatusNone = 0,
    cudaStreamCaptureStatusActive = 1,
    cudaStreamCaptureStatusInvalidated = 2
} cudaStreamCaptureStatus;

typedef enum { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 } cudaFuncAttribute;

typedef struct emu_stream *cudaStream_t;
typedef struct emu_event *cudaEvent_t;
typedef struct emu_graph *cudaGraph_t;
typedef struct emu_graph_exec *cudaGraphExec_t;

typedef struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem;
    int multiProcessorCount;
    int major, minor;
    size_t sharedMemPerBlock, sharedMemPerBlockOptin;
    int l2CacheSize;
} cudaDeviceProp;

#define cudaStreamNonBlocking 1
#define cudaEventDefault 0
#define cudaEventDisableTiming 2
#define EMU_SMEM_DEFAULT (48 * 1024)
#define EMU_SMEM_OPTIN (227 * 1024)

const char *cudaGetErrorString(cudaError_t e);
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
cudaError_t cudaGetDeviceCount(int *count);
cudaError_t cudaSetDevice(int dev);
cudaError_t cudaGetDevice(int *dev);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int dev);
cudaError_t cudaDriverGetVersion(int *v);
cudaError_t cudaRuntimeGetVersion(int *v);
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes);
cudaError_t cudaMalloc(void **p, size_t bytes);
cudaError_t cudaFree(void *p);
cudaError_t cudaMallocHost(void **p, size_t bytes);
cudaError_t cudaFreeHost(void *p);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, cudaMemcpyKind k);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, cudaMemcpyKind k, cudaStream_t s);
cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t s);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaStreamQuery(cudaStream_t s);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventQuery(cudaEvent_t e);
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *g);
cudaError_t cudaStreamIsCapturing(cudaStream_t s, cudaStreamCaptureStatus *status);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *e, cudaGraph_t g, unsigned long long flags);
cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t s);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e);
cudaError_t cudaGraphDestroy(cudaGraph_t g);
/* The C form of the per-kernel attribute (C++ code passes the kernel itself,
 * kernels/emu/cuda_emu.h). */
cudaError_t emu_func_set_attribute(const void *func, cudaFuncAttribute attr, int value);

/* ---- test hooks (emulator only) ---- */
/* Caps the emulated device memory (0 = default 4 GiB); later cudaMalloc calls
 * beyond it fail with cudaErrorMemoryAllocation. */
void emu_set_device_memory(size_t total_bytes);
/* Emulated devices: 0 makes cudaGetDeviceCount report none (default 1). */
void emu_set_device_count(int n);
/* Bytes currently allocated with cudaMalloc. */
size_t emu_device_bytes_in_use(void);
/* Records a kernel fault: the context's sticky error (first one wins). */
void emu_set_sticky_error(cudaError_t e, const char *what);
/* Clears a sticky error and drops the work still queued on every stream
 * (what a process restart would do); memory stays allocated. */
void emu_reset_device(void);
/* Faults are printed to stderr unless quiet (tests that plant them). */
void emu_set_quiet(int quiet);
int emu_quiet(void);
/* The description of the first kernel fault since the last reset ("" if none). */
const char *emu_last_fault(void);
/* Counters for tests. */
typedef struct {
    long launches;        /* kernels run (eager or replayed) */
    long graph_launches;  /* cudaGraphLaunch calls that ran */
    long captures_ok;     /* cudaStreamEndCapture calls that returned a graph */
    long captures_failed; /* ... that reported an invalidated capture */
    long attribute_sets;  /* cudaFuncSetAttribute calls */
    long races;           /* shared-memory races reported */
} emu_counters;
void emu_get_counters(emu_counters *c);
/* The seed of the block order and fiber schedule (default: $EASEL_EMU_SEED or
 * a fixed value); every launch derives its own from it and a launch counter. */
void emu_set_seed(unsigned long long seed);
unsigned long long emu_seed(void);
/* 1 when the kernels were built with the shared-memory access hooks (race
 * detector and random switches; off in the ASan build). */
int emu_racecheck_available(void);

#ifdef __cplusplus
}
#endif

#endif
