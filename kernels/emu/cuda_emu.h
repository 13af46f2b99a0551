/* Test-only: lets the kernels (kernels/NAME.cu) compile with the host C++
 * compiler and run on the CPU, strictly enough that the bugs which corrupt
 * results on hardware corrupt them here too (kernels/emu/emu.cpp):
 *   - a block's threads are fibers; the blocks of a grid run in a seeded
 *     random order; within a block the next fiber is picked at random, and —
 *     in the build with access hooks (EASEL_EMU_RACECHECK, every build but
 *     ASan's) — a fiber may be switched out at any shared-memory access;
 *   - shared memory (static, declared with EASEL_SHARED, and dynamic) is
 *     poisoned with 0xff bytes (NaN as float and half) at every block start;
 *     plain __shared__ is refused at compile time, so nothing escapes this;
 *   - a shared-memory race detector: two accesses of the same 2-byte granule
 *     by different threads, one a write, with no barrier that orders them
 *     (__syncthreads for any two threads, __syncwarp(mask) for lanes of one
 *     warp named in the mask), fail the launch with both threads named;
 *   - __syncwarp and the shuffles honour their masks (a lane outside the mask
 *     is not waited for; a mask that names an exited lane, or omits the
 *     caller, is a fault), and barriers not reached by everyone are reported
 *     as deadlocks;
 *   - WMMA fragments are emulated functionally (every lane holds the whole
 *     tile); loads and stores are warp collectives whose accesses count as
 *     the warp's, so a thread reading a stored tile needs a __syncwarp;
 *   - mma.sync m16n8k16, ldmatrix and cp.async (kernels/common.cuh) follow
 *     the PTX ISA's documented fragment layouts lane by lane, and cp.async
 *     lands only at cp.async.wait_group, so layout and wait bugs show.
 * A fault is sticky for the whole emulated device (cuda_runtime_emu.h). */
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

/* Functions of the emulator itself that kernels call: not instrumented, so
 * their own memory accesses neither switch fibers nor count as races. */
#define EMU_NOHOOK __attribute__((no_sanitize_thread, noinline))

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
/* Static shared memory must be declared with EASEL_SHARED (kernels/common.cuh)
 * so that the emulator can poison it per block and watch it for races. */
#define __shared__ EASEL_SHARED_must_be_used_instead_of___shared__
#define __restrict__ __restrict

/* ---- scheduler entry points (emu.cpp) ---- */
/* Queues body (once per thread of every block) on stream s (NULL: the legacy
 * stream, run at once), after checking the configuration as the hardware
 * does; a bad one sets the launch error and queues nothing. */
void emu_launch_kernel(const void *func, const char *name, dim3 grid, dim3 block, size_t dyn_smem,
                       cudaStream_t s, std::function<void()> body);
/* Runs body on the grid now (test kernels): as a legacy-stream launch. */
void emu_launch(dim3 grid, dim3 block, size_t dyn_smem, const std::function<void()> &body);
/* Runs a launched grid (the runtime's queue calls this). 0 or the fault. */
cudaError_t emu_run_grid(const char *name, dim3 grid, dim3 block, size_t dyn_smem,
                         const std::function<void()> &body);
/* Queues host work on a stream, ordered with its kernels (the emulated GEMM).
 * Returns the launch error (e.g. the stream is capturing illegally). */
cudaError_t emu_enqueue(cudaStream_t s, const char *what, std::function<void()> op);
/* cudaErrorInvalidConfiguration / cudaErrorInvalidValue / 0. */
cudaError_t emu_check_launch(const void *func, dim3 grid, dim3 block, size_t dyn_smem);

/* The block's dynamic shared memory (poisoned with 0xff bytes per block). */
void *emu_dyn_smem();
/* The block's copy of the static shared variable declared at `key` (one per
 * declaration), bytes long, poisoned per block. */
void *emu_static_smem(const void *key, size_t bytes, const char *name);
/* Barriers. mask: lanes of the caller's warp. */
void emu_barrier_block();
void emu_syncwarp(unsigned mask);
/* A scheduling point where every live lane of the warp meets (the start of a
 * warp-collective operation); orders no memory. */
void emu_warp_converge();
/* Warp exchange among the lanes of mask: publishes v, returns what lane src
 * published. */
uint64_t emu_warp_exchange(uint64_t v, int src_lane, unsigned mask);
/* Ballot over the lanes of mask (bit i = lane i's predicate). */
unsigned emu_warp_ballot(int pred, unsigned mask);
/* Every lane of the warp publishes `bytes` from mine; all = 32 · bytes, lane
 * order (a warp collective, e.g. for mma.sync). */
void emu_warp_gather(const void *mine, size_t bytes, void *all);
/* Warp-collective accesses: between begin and end the caller's shared-memory
 * accesses count as its warp's (no race among the warp's own collective
 * accesses; a plain access by a lane needs a __syncwarp to be ordered). */
void emu_collective_begin();
void emu_collective_end();
int emu_collective_leader(); /* 1 for the lowest live lane: it performs the stores */
/* Tensor-core and async-copy instructions, lane by lane as the PTX ISA
 * specifies them (kernels/common.cuh documents the fragment layouts): warp
 * collectives; ldmatrix's shared reads count as the warp's. */
void emu_mma_16816(float d[4], const uint32_t a[4], const uint32_t b[2]);
void emu_ldmatrix_x4(uint32_t r[4], const void *row, int trans);
/* Queues a copy of n of bytes (the rest zero-filled) to shared dst; it is
 * done when a wait leaves at most `pending` newer groups outstanding. */
void emu_cp_async(void *dst, const void *src, int bytes, int n);
void emu_cp_async_commit();
void emu_cp_async_wait(int pending);
/* Records a fault for something real hardware would reject or fault on, e.g.
 * a misaligned WMMA pointer: the launch fails (a sticky error). */
void emu_fault(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static inline void __syncthreads() {
    emu_barrier_block();
}
static inline void __syncwarp(unsigned mask = 0xffffffffu) {
    emu_syncwarp(mask);
}
static inline int emu_lane() {
    return emu_cur->linear & 31;
}

template <class T> static inline T emu_shfl(T v, int src, unsigned mask) {
    static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    bits = emu_warp_exchange(bits, src & 31, mask);
    T out;
    std::memcpy(&out, &bits, sizeof(T));
    return out;
}
template <class T> static inline T __shfl_sync(unsigned m, T v, int src, int w = 32) {
    return emu_shfl(v, (emu_lane() & ~(w - 1)) + (src & (w - 1)), m);
}
template <class T> static inline T __shfl_xor_sync(unsigned m, T v, int mask, int w = 32) {
    int lane = emu_lane(), src = lane ^ mask;
    if ((src & ~(w - 1)) != (lane & ~(w - 1))) src = lane;
    return emu_shfl(v, src, m);
}
template <class T> static inline T __shfl_down_sync(unsigned m, T v, unsigned d, int w = 32) {
    int lane = emu_lane(), src = lane + (int)d;
    if ((src & ~(w - 1)) != (lane & ~(w - 1))) src = lane; /* out of segment: own value */
    return emu_shfl(v, src, m);
}
static inline unsigned __ballot_sync(unsigned m, int pred) {
    return emu_warp_ballot(pred, m);
}
static inline int __any_sync(unsigned m, int pred) {
    return __ballot_sync(m, pred) != 0;
}
static inline int __all_sync(unsigned m, int pred) {
    return __ballot_sync(m, !pred) == 0;
}
static inline unsigned __activemask() {
    return 0xffffffffu;
}

/* Atomics: the emulator switches fibers only inside instrumented code, and
 * these are not instrumented, so a read-modify-write here is atomic. */
template <class T> EMU_NOHOOK static T atomicAdd(T *p, T v) {
    T old = *p;
    *p = old + v;
    return old;
}
template <class T> EMU_NOHOOK static T atomicMax(T *p, T v) {
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
/* Every half's value, filled once from tensor.c's converter (a table lookup
 * instead of a call per element: the emulator spends its time converting). */
extern const float *const emu_half_table;
static inline __half __float2half(float f) {
    return __half{f32_to_f16(f)};
}
static inline __half __float2half_rn(float f) {
    return __float2half(f);
}
static inline float __half2float(__half h) {
    return emu_half_table[h.bits];
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
    emu_warp_converge();
    if (((uintptr_t)p & 31) || (ldm & 7))
        emu_fault("wmma load: pointer not 32-byte aligned or ldm %% 8");
    const bool col = std::is_same<L, col_major>::value;
    emu_collective_begin();
    for (int r = 0; r < F::rows; r++)
        for (int c = 0; c < F::cols; c++)
            f.x[r * F::cols + c] = col ? p[(size_t)c * ldm + r] : p[(size_t)r * ldm + c];
    emu_collective_end();
    emu_warp_converge(); /* one instruction: every lane has read before any goes on */
}
template <int M, int N, int K>
static inline void load_matrix_sync(fragment<accumulator, M, N, K, float> &f, const float *p,
                                    unsigned ldm, layout_t l) {
    emu_warp_converge();
    if (((uintptr_t)p & 31) || (ldm & 3))
        emu_fault("wmma load: pointer not 32-byte aligned or ldm %% 4");
    emu_collective_begin();
    for (int r = 0; r < M; r++)
        for (int c = 0; c < N; c++)
            f.x[r * N + c] = l == mem_col_major ? p[(size_t)c * ldm + r] : p[(size_t)r * ldm + c];
    emu_collective_end();
    emu_warp_converge();
}
template <int M, int N, int K>
static inline void store_matrix_sync(float *p, const fragment<accumulator, M, N, K, float> &f,
                                     unsigned ldm, layout_t l) {
    emu_warp_converge();
    if (((uintptr_t)p & 31) || (ldm & 3))
        emu_fault("wmma store: pointer not 32-byte aligned or ldm %% 4");
    emu_collective_begin();
    if (emu_collective_leader())
        for (int r = 0; r < M; r++)
            for (int c = 0; c < N; c++) {
                float v = f.x[r * N + c];
                if (l == mem_col_major)
                    p[(size_t)c * ldm + r] = v;
                else
                    p[(size_t)r * ldm + c] = v;
            }
    emu_collective_end();
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

/* cudaFuncSetAttribute as C++ code calls it, with the kernel itself. */
template <class F>
static inline cudaError_t cudaFuncSetAttribute(F *func, cudaFuncAttribute a, int v) {
    return emu_func_set_attribute(reinterpret_cast<const void *>(func), a, v);
}

#endif
