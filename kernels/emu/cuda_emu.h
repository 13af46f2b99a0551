/* Test-only: lets the kernels (kernels/NAME.cu) compile with the host C++
 * compiler and run on the CPU. A block's threads are ucontext fibers run by
 * a small scheduler (emu.cpp); __syncthreads/__syncwarp are barriers among
 * them; warp shuffles and votes exchange values through a per-warp slot
 * array between two warp barriers; __shared__ variables are per-host-thread
 * statics (blocks run one after another, so a static is per block).
 * WMMA fragments are emulated functionally: every lane holds the whole
 * 16x16 tile and computes the whole product, so kernels may only apply the
 * same operation to every element of a fragment (which real WMMA code must
 * do anyway, the element-to-lane mapping being unspecified). Fragment loads
 * and stores are warp-collective (as on hardware): each begins with a warp
 * barrier, so no lane stores a tile before every lane has loaded the last one. */
#ifndef EASEL_CUDA_EMU_H
#define EASEL_CUDA_EMU_H

#ifndef __cplusplus
#error "cuda_emu.h is C++ (the .cu files compile as C++ in the emulated build)"
#endif

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>

#include "cuda_runtime_emu.h"
extern "C" {
#include "../../engine/tensor.h"
}

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct emu_uint3 {
    unsigned x, y, z;
};

/* What a fiber knows about itself and its block. */
struct emu_thread_state {
    emu_uint3 tid;
    int linear; /* threadIdx.x + blockDim.x·(threadIdx.y + blockDim.y·threadIdx.z) */
};
struct emu_block_state {
    emu_uint3 idx, dim, grid;
};
/* __thread, not thread_local: plain TLS without C++'s init wrappers (g++ 12
 * with UBSan miscompiles the wrapper's null check). */
extern __thread emu_thread_state *emu_cur;
extern __thread emu_block_state emu_blk;

#define threadIdx (emu_cur->tid)
#define blockIdx (emu_blk.idx)
#define blockDim (emu_blk.dim)
#define gridDim (emu_blk.grid)
#define warpSize 32

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static thread_local
#define __restrict__ __restrict

/* ---- scheduler entry points (emu.cpp) ---- */
/* Runs body once per thread of every block of the grid. On a deadlock (a
 * barrier some threads never reach) or a bad configuration it records a
 * launch error for cudaGetLastError() and returns. */
void emu_launch(dim3 grid, dim3 block, size_t dyn_smem, const std::function<void()> &body);
/* The block's dynamic shared memory (poisoned with 0xff bytes per block). */
void *emu_dyn_smem();
void emu_barrier_block();
void emu_barrier_warp();
/* Warp exchange: publishes v for this lane, returns the value lane src published. */
uint64_t emu_warp_exchange(uint64_t v, int src_lane);
/* OR of pred over the warp's live lanes (bit i = lane i). */
unsigned emu_warp_ballot(int pred);
/* Records a launch error (printed once) for something real hardware would
 * reject or fault on, e.g. a misaligned WMMA pointer. */
void emu_fault(const char *what);

static inline void __syncthreads() {
    emu_barrier_block();
}
static inline void __syncwarp(unsigned mask = 0xffffffffu) {
    (void)mask;
    emu_barrier_warp();
}
static inline int emu_lane() {
    return emu_cur->linear & 31;
}

template <class T> static inline T emu_shfl(T v, int src) {
    static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    bits = emu_warp_exchange(bits, src & 31);
    T out;
    std::memcpy(&out, &bits, sizeof(T));
    return out;
}
template <class T> static inline T __shfl_sync(unsigned m, T v, int src, int w = 32) {
    (void)m;
    return emu_shfl(v, (emu_lane() & ~(w - 1)) + (src & (w - 1)));
}
template <class T> static inline T __shfl_xor_sync(unsigned m, T v, int mask, int w = 32) {
    (void)m;
    (void)w;
    return emu_shfl(v, emu_lane() ^ mask);
}
template <class T> static inline T __shfl_down_sync(unsigned m, T v, unsigned d, int w = 32) {
    (void)m;
    int lane = emu_lane(), src = lane + (int)d;
    if ((src & ~(w - 1)) != (lane & ~(w - 1))) src = lane; /* out of segment: own value */
    return emu_shfl(v, src);
}
static inline unsigned __ballot_sync(unsigned m, int pred) {
    return emu_warp_ballot(pred) & m;
}
static inline int __any_sync(unsigned m, int pred) {
    return __ballot_sync(m, pred) != 0;
}
static inline int __all_sync(unsigned m, int pred) {
    unsigned b = emu_warp_ballot(1) & m;
    return (emu_warp_ballot(pred) & m) == b;
}

/* Fibers of a block share one host thread and switch only at barriers, so a
 * plain read-modify-write is atomic here. */
template <class T> static inline T atomicAdd(T *p, T v) {
    T old = *p;
    *p = old + v;
    return old;
}
template <class T> static inline T atomicMax(T *p, T v) {
    T old = *p;
    if (v > old) *p = v;
    return old;
}

/* ---- math intrinsics (glibc already declares __expf and __logf) ---- */
static inline float rsqrtf(float x) {
    return 1.0f / sqrtf(x);
}
static inline float __fdividef(float a, float b) {
    return a / b;
}
static inline float __saturatef(float x) {
    return x < 0 ? 0 : (x > 1 ? 1 : x);
}
static inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
static inline int __float_as_int(float f) {
    int i;
    std::memcpy(&i, &f, 4);
    return i;
}
static inline unsigned __float_as_uint(float f) {
    unsigned i;
    std::memcpy(&i, &f, 4);
    return i;
}
static inline float __uint_as_float(unsigned i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}

/* ---- half precision (bit-exact round-to-nearest-even via tensor.c) ---- */
struct __half {
    uint16_t bits;
};
typedef __half half;
static inline __half __float2half(float f) {
    return __half{f32_to_f16(f)};
}
static inline __half __float2half_rn(float f) {
    return __float2half(f);
}
static inline float __half2float(__half h) {
    return f16_to_f32(h.bits);
}
static inline unsigned short __half_as_ushort(__half h) {
    return h.bits;
}
static inline __half __ushort_as_half(unsigned short b) {
    return __half{b};
}

/* ---- WMMA (16x16x16, f16 inputs, f32 accumulator) ---- */
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

/* Every lane holds the whole tile, row-major logical order (rows x cols). */
template <class Use, int M, int N, int K, class T, class Layout = void> struct fragment {
    static const int rows = std::is_same<Use, matrix_b>::value ? K : M;
    static const int cols = std::is_same<Use, matrix_a>::value ? K : N;
    static const int num_elements = rows * cols;
    T x[num_elements];
};

template <class Use, int M, int N, int K, class T, class L>
static inline void fill_fragment(fragment<Use, M, N, K, T, L> &f, T v) {
    for (int i = 0; i < f.num_elements; i++)
        f.x[i] = v;
}
template <class Use, int M, int N, int K, class L>
static inline void fill_fragment(fragment<Use, M, N, K, __half, L> &f, float v) {
    for (int i = 0; i < f.num_elements; i++)
        f.x[i] = __float2half(v);
}

/* a/b fragments: element (r, c) at p[r·ldm + c] (row_major) or p[c·ldm + r] (col_major). */
template <class Use, int M, int N, int K, class L>
static inline void load_matrix_sync(fragment<Use, M, N, K, __half, L> &f, const __half *p,
                                    unsigned ldm) {
    typedef fragment<Use, M, N, K, __half, L> F;
    emu_barrier_warp();
    if (((uintptr_t)p & 31) || (ldm & 7))
        emu_fault("wmma load: pointer not 32-byte aligned or ldm % 8");
    const bool col = std::is_same<L, col_major>::value;
    for (int r = 0; r < F::rows; r++)
        for (int c = 0; c < F::cols; c++)
            f.x[r * F::cols + c] = col ? p[(size_t)c * ldm + r] : p[(size_t)r * ldm + c];
}
template <int M, int N, int K>
static inline void load_matrix_sync(fragment<accumulator, M, N, K, float> &f, const float *p,
                                    unsigned ldm, layout_t l) {
    emu_barrier_warp();
    if (((uintptr_t)p & 31) || (ldm & 3))
        emu_fault("wmma load: pointer not 32-byte aligned or ldm % 4");
    for (int r = 0; r < M; r++)
        for (int c = 0; c < N; c++)
            f.x[r * N + c] = l == mem_col_major ? p[(size_t)c * ldm + r] : p[(size_t)r * ldm + c];
}
template <int M, int N, int K>
static inline void store_matrix_sync(float *p, const fragment<accumulator, M, N, K, float> &f,
                                     unsigned ldm, layout_t l) {
    emu_barrier_warp();
    if (((uintptr_t)p & 31) || (ldm & 3))
        emu_fault("wmma store: pointer not 32-byte aligned or ldm % 4");
    for (int r = 0; r < M; r++)
        for (int c = 0; c < N; c++) {
            float v = f.x[r * N + c];
            if (l == mem_col_major)
                p[(size_t)c * ldm + r] = v;
            else
                p[(size_t)r * ldm + c] = v;
        }
}
template <int M, int N, int K, class LA, class LB>
static inline void mma_sync(fragment<accumulator, M, N, K, float> &d,
                            const fragment<matrix_a, M, N, K, __half, LA> &a,
                            const fragment<matrix_b, M, N, K, __half, LB> &b,
                            const fragment<accumulator, M, N, K, float> &c) {
    float out[M * N];
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float s = c.x[i * N + j];
            for (int k = 0; k < K; k++)
                s += __half2float(a.x[i * K + k]) * __half2float(b.x[k * N + j]);
            out[i * N + j] = s;
        }
    for (int i = 0; i < M * N; i++)
        d.x[i] = out[i];
}
} // namespace wmma
} // namespace nvcuda

#endif
