/* Shared by every kernel source (kernels/NAME.cu): the one launch macro both builds use,
 * dynamic shared memory, half load/store helpers and warp/block reductions.
 * Under nvcc this is plain CUDA; otherwise kernels/emu/cuda_emu.h supplies
 * the CUDA names and EASEL_LAUNCH runs the kernel in the CPU emulator. */
#ifndef EASEL_KERNELS_COMMON_CUH
#define EASEL_KERNELS_COMMON_CUH

#ifdef __CUDACC__
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>
#define EASEL_LAUNCH(kernel, grid, block, smem, stream, ...)                                       \
    kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__)
#define EASEL_DYN_SMEM(T, name)                                                                    \
    extern __shared__ __align__(128) unsigned char name##_raw_[];                                  \
    T *name = reinterpret_cast<T *>(name##_raw_)
#else
#include "emu/cuda_emu.h"
#define EASEL_LAUNCH(kernel, grid, block, smem, stream, ...)                                       \
    do {                                                                                           \
        (void)(stream);                                                                            \
        emu_launch((grid), (block), (smem), [=]() { kernel(__VA_ARGS__); });                       \
    } while (0)
#define EASEL_DYN_SMEM(T, name) T *name = reinterpret_cast<T *>(emu_dyn_smem())
#endif

#include "kernels.h"

#define KERN_CHECK_LAUNCH() return (int)cudaGetLastError()

static inline unsigned kern_blocks(int64_t n, int threads) {
    int64_t b = (n + threads - 1) / threads;
    return (unsigned)(b < 1 ? 1 : (b > 65535 * 16 ? 65535 * 16 : b));
}

__device__ __forceinline__ float ld(const half *p, int64_t i) {
    return __half2float(p[i]);
}
__device__ __forceinline__ void st(half *p, int64_t i, float v) {
    p[i] = __float2half(v);
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
/* Sum over the block (blockDim.x a multiple of 32, ≤ 1024); every thread gets
 * the result. red: 33 floats of shared memory; safe to call repeatedly. */
__device__ __forceinline__ float block_sum(float v, float *red) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float t = lane < nw ? red[lane] : 0.0f;
    t = warp_sum(t);
    __syncthreads(); /* red is reused by the next call */
    return t;
}
__device__ __forceinline__ float block_max(float v, float *red) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float t = lane < nw ? red[lane] : -INFINITY;
    t = warp_max(t);
    __syncthreads();
    return t;
}

#endif
