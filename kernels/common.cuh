/* Shared by every kernel source (kernels/NAME.cu): the one launch macro both
 * builds use, static and dynamic shared memory, load/store helpers for the
 * storage types (half, float), the dtype dispatch and warp/block reductions.
 * Under nvcc this is plain CUDA; otherwise kernels/emu/cuda_emu.h supplies
 * the CUDA names and EASEL_LAUNCH queues the kernel in the CPU emulator. */
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
/* Static shared memory: `EASEL_SHARED(float, red, 33);` declares float red[33]. */
#define EASEL_SHARED(T, name, count) __shared__ __align__(16) T name[count]
#else
#include "emu/cuda_emu.h"
#define EASEL_LAUNCH(kernel, grid, block, smem, stream, ...)                                       \
    emu_launch_kernel(reinterpret_cast<const void *>(&kernel), #kernel, (grid), (block), (smem),   \
                      (stream), [=]() { kernel(__VA_ARGS__); })
#define EASEL_DYN_SMEM(T, name) T *name = reinterpret_cast<T *>(emu_dyn_smem())
#define EASEL_SHARED(T, name, count)                                                               \
    static const char name##_emu_key_ = 0;                                                         \
    T *const name = static_cast<T *>(emu_static_smem(&name##_emu_key_, sizeof(T) * (count), #name))
#endif

#include "kernels.h"

#define KERN_CHECK_LAUNCH() return (int)cudaGetLastError()
/* A comma inside a macro argument: EASEL_LAUNCH(k<T COMMA int>, ...). */
#define COMMA ,

/* Calls fn<half>(args) or fn<float>(args) by dt (KDT_F16 / KDT_F32). */
#define KERN_BY_DTYPE(dt, fn, ...)                                                                 \
    ((dt) == KDT_F16   ? fn<half>(__VA_ARGS__)                                                     \
     : (dt) == KDT_F32 ? fn<float>(__VA_ARGS__)                                                    \
                       : (int)cudaErrorInvalidValue)

static inline unsigned kern_blocks(int64_t n, int threads) {
    int64_t b = (n + threads - 1) / threads;
    return (unsigned)(b < 1 ? 1 : (b > 65535 * 16 ? 65535 * 16 : b));
}

__device__ __forceinline__ float to_f(half v) {
    return __half2float(v);
}
__device__ __forceinline__ float to_f(float v) {
    return v;
}
template <class T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ half from_f<half>(float v) {
    return __float2half(v);
}
template <> __device__ __forceinline__ float from_f<float>(float v) {
    return v;
}

template <class T> __device__ __forceinline__ float ld(const T *p, int64_t i) {
    return to_f(p[i]);
}
template <class T> __device__ __forceinline__ void st(T *p, int64_t i, float v) {
    p[i] = from_f<T>(v);
}

/* Element i of a buffer whose dtype is a runtime KDT_* (f32, f16, bf16), as
 * float; and its store (bf16: round to nearest even, NaN kept quiet). */
__device__ __forceinline__ float load_any(const void *p, int dt, int64_t i) {
    if (dt == KDT_F32) return ((const float *)p)[i];
    if (dt == KDT_F16) return __half2float(((const half *)p)[i]);
    unsigned u = (unsigned)((const unsigned short *)p)[i] << 16;
    return __uint_as_float(u);
}

__device__ __forceinline__ void store_any(void *p, int dt, int64_t i, float v) {
    if (dt == KDT_F32) {
        ((float *)p)[i] = v;
    } else if (dt == KDT_F16) {
        ((half *)p)[i] = __float2half(v);
    } else {
        unsigned u = __float_as_uint(v);
        if ((u & 0x7fffffffu) > 0x7f800000u)
            u = (u >> 16) | 0x40u; /* quiet nan */
        else
            u = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
        ((unsigned short *)p)[i] = (unsigned short)u;
    }
}

/* ---- tensor-core and async-copy primitives (attention.cu) ----
 * mma_16816: D[16x8] = A[16x16]·B[16x8] + C, fp16 operands, fp32 accumulate,
 *   fragments as the PTX ISA lays them out (g = lane/4, t = lane%4): a[0..3]
 *   = pairs (row g, cols 2t..), (g+8, 2t..), (g, 8+2t..), (g+8, 8+2t..);
 *   b[0..1] = (rows 2t.., col g), (rows 8+2t.., col g); c/d = (g, 2t..),
 *   (g+8, 2t..).
 * ldsm_x4(r, p): ldmatrix .x4: lane l gives p, the address of row l%8 of
 *   8x8 matrix l/8; r[j] = row l/4, cols 2(l%4).. of matrix j (.trans:
 *   rows 2(l%4).., col l/4). p 16-byte aligned, in shared memory.
 * cp_async16(dst, src, n): copies n (0 or 16) bytes global -> shared and
 *   zero-fills the rest of the 16; it lands at a cp_async_wait<N>() that
 *   leaves at most N newer commit groups pending, and is visible to other
 *   threads after a __syncthreads that follows the wait. */
#ifdef __CUDACC__
__device__ __forceinline__ void mma_16816(float d[4], const uint32_t a[4], const uint32_t b[2]) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ void ldsm_x4(uint32_t r[4], const half *p) {
    unsigned s = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t r[4], const half *p) {
    unsigned s = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}
__device__ __forceinline__ void cp_async16(void *dst, const void *src, int n) {
    unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::);
}
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
#else
static inline void mma_16816(float d[4], const uint32_t a[4], const uint32_t b[2]) {
    emu_mma_16816(d, a, b);
}
static inline void ldsm_x4(uint32_t r[4], const half *p) {
    emu_ldmatrix_x4(r, p, 0);
}
static inline void ldsm_x4_trans(uint32_t r[4], const half *p) {
    emu_ldmatrix_x4(r, p, 1);
}
static inline void cp_async16(void *dst, const void *src, int n) {
    emu_cp_async(dst, src, 16, n);
}
static inline void cp_async_commit() {
    emu_cp_async_commit();
}
template <int N> static inline void cp_async_wait() {
    emu_cp_async_wait(N);
}
#endif

/* Two halves packed as mma/ldmatrix registers hold them (lo = first). */
__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
    uint32_t a = __half_as_ushort(__float2half(lo)), b = __half_as_ushort(__float2half(hi));
    return a | b << 16;
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
