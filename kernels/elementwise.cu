/* Elementwise and data-movement kernels: dtype conversion, unary activations,
 * GEGLU, broadcast binary ops, axpby, nearest 2x upsample, channel concat,
 * timestep embedding, row gather and im2col. All memory-bound: grid-stride
 * loops with 32-bit indices when the tensor allows (64-bit division costs
 * tens of instructions), fp32 arithmetic on half or float storage, and
 * 16-byte accesses where a row of channels is contiguous (im2col). */
#include "common.cuh"

#define EW_THREADS 256

#define GRID_LOOP(i, n)                                                                            \
    for (I i = (I)(blockIdx.x * blockDim.x + threadIdx.x); i < (n); i += (I)blockDim.x * gridDim.x)

/* Index type: 32-bit when every index of the launch fits (n plus one grid
 * stride of at most 256 x 65535·16 threads stays below 2^31). */
static inline bool small_index(int64_t n) {
    return n < ((int64_t)1 << 31) - ((int64_t)1 << 29);
}

__global__ void convert_kernel(void *y, int ydt, const void *x, int xdt, int64_t n) {
    typedef int64_t I;
    GRID_LOOP(i, n) store_any(y, ydt, i, load_any(x, xdt, i));
}

int kern_convert(cudaStream_t s, void *y, int ydt, const void *x, int xdt, int64_t n) {
    if (n <= 0) return 0;
    EASEL_LAUNCH(convert_kernel, kern_blocks(n, EW_THREADS), EW_THREADS, 0, s, y, ydt, x, xdt, n);
    KERN_CHECK_LAUNCH();
}

__device__ __forceinline__ float gelu_erf(float x) {
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
}

__device__ __forceinline__ float unary_apply(float x, int op) {
    if (op == KU_SILU) return x / (1.0f + expf(-x));
    if (op == KU_GELU) return gelu_erf(x);
    if (op == KU_RELU) return x < 0.0f ? 0.0f : x; /* NaN passes, as torch.relu */
    if (op == KU_TANH) return tanhf(x);
    return x / (1.0f + expf(-1.702f * x));
}

template <class T, class I> __global__ void unary_kernel(T *y, const T *x, I n, int op) {
    GRID_LOOP(i, n) st(y, i, unary_apply(ld(x, i), op));
}

template <class T> static int unary_t(cudaStream_t s, void *y, const void *x, int64_t n, int op) {
    if (small_index(n))
        EASEL_LAUNCH(unary_kernel<T COMMA int32_t>, kern_blocks(n, EW_THREADS), EW_THREADS, 0, s,
                     (T *)y, (const T *)x, (int32_t)n, op);
    else
        EASEL_LAUNCH(unary_kernel<T COMMA int64_t>, kern_blocks(n, EW_THREADS), EW_THREADS, 0, s,
                     (T *)y, (const T *)x, n, op);
    KERN_CHECK_LAUNCH();
}

int kern_unary(cudaStream_t s, void *y, const void *x, int64_t n, int op, int dt) {
    if (n <= 0) return 0;
    return KERN_BY_DTYPE(dt, unary_t, s, y, x, n, op);
}

template <class T> __global__ void geglu_kernel(T *y, const T *x, int64_t rows, int64_t n) {
    typedef int64_t I;
    GRID_LOOP(i, rows * n) {
        int64_t r = i / n, c = i % n;
        const T *xr = x + r * 2 * n;
        st(y, i, ld(xr, c) * gelu_erf(ld(xr, n + c)));
    }
}

template <class T>
static int geglu_t(cudaStream_t s, void *y, const void *x, int64_t rows, int64_t n) {
    EASEL_LAUNCH(geglu_kernel<T>, kern_blocks(rows * n, EW_THREADS), EW_THREADS, 0, s, (T *)y,
                 (const T *)x, rows, n);
    KERN_CHECK_LAUNCH();
}

int kern_geglu(cudaStream_t s, void *y, const void *x, int64_t rows, int64_t n, int dt) {
    if (rows * n <= 0) return 0;
    return KERN_BY_DTYPE(dt, geglu_t, s, y, x, rows, n);
}

/* Broadcast patterns after merging neighbouring dims that broadcast alike:
 * b's index from a's flat index i with one division at most. */
enum { BC_SAME, BC_SCALAR, BC_INNER, BC_OUTER, BC_MIDDLE, BC_GENERAL };

/* a's dims and b's strides (0 where b broadcasts), 4 dims, outermost first. */
struct bcast4 {
    int64_t ne[4];
    int64_t bs[4];
    int mode;
    uint32_t inner, mid; /* BC_INNER: b = [inner]; BC_OUTER: b = [outer, 1] of rows of inner;
                            BC_MIDDLE: b = [outer, 1, inner] over [outer, mid, inner] */
};

template <class T>
__global__ void binary_kernel(T *y, const T *a, const T *b, bcast4 g, int64_t n, int op) {
    if (n < ((int64_t)1 << 31) && g.mode != BC_GENERAL) {
        typedef uint32_t I;
        const I nn = (I)n;
        GRID_LOOP(i, nn) {
            I bi = g.mode == BC_SAME     ? i
                   : g.mode == BC_SCALAR ? 0
                   : g.mode == BC_INNER  ? i % g.inner
                   : g.mode == BC_OUTER  ? i / g.inner
                                         : i / (g.mid * g.inner) * g.inner + i % g.inner;
            float av = ld(a, i), bv = ld(b, bi);
            st(y, i, op == KB_ADD ? av + bv : av * bv);
        }
        return;
    }
    typedef int64_t I;
    GRID_LOOP(i, n) {
        int64_t r = i, off = 0;
        for (int d = 3; d >= 0; d--) {
            off += (r % g.ne[d]) * g.bs[d];
            r /= g.ne[d];
        }
        float av = ld(a, i), bv = ld(b, off);
        st(y, i, op == KB_ADD ? av + bv : av * bv);
    }
}

/* Merges runs of dims where b is all-broadcast or all-present and classifies. */
static void bcast_plan(bcast4 *g, const int64_t ane[4], const int64_t bne[4]) {
    int64_t stride = 1;
    for (int d = 3; d >= 0; d--) {
        g->ne[d] = ane[d];
        g->bs[d] = bne[d] == 1 ? 0 : stride;
        stride *= bne[d];
    }
    int64_t run[4];
    int kind[4], nr = 0; /* kind 1: b present, 0: broadcast */
    for (int d = 0; d < 4; d++) {
        if (ane[d] == 1) continue;
        int k = bne[d] != 1;
        if (nr && kind[nr - 1] == k)
            run[nr - 1] *= ane[d];
        else
            run[nr] = ane[d], kind[nr++] = k;
    }
    g->mode = BC_GENERAL;
    g->inner = g->mid = 1;
    if (nr == 0 || (nr == 1 && kind[0] == 1)) {
        g->mode = BC_SAME;
    } else if (nr == 1) {
        g->mode = BC_SCALAR;
    } else if (nr == 2 && kind[0] == 0 && run[1] < ((int64_t)1 << 31)) {
        g->mode = BC_INNER, g->inner = (uint32_t)run[1];
    } else if (nr == 2 && run[1] < ((int64_t)1 << 31)) {
        g->mode = BC_OUTER, g->inner = (uint32_t)run[1];
    } else if (nr == 3 && kind[0] == 1 && run[1] * run[2] < ((int64_t)1 << 31)) {
        g->mode = BC_MIDDLE, g->mid = (uint32_t)run[1], g->inner = (uint32_t)run[2];
    }
}

template <class T>
static int binary_t(cudaStream_t s, void *y, const void *a, const void *b, const bcast4 &g,
                    int64_t n, int op) {
    EASEL_LAUNCH(binary_kernel<T>, kern_blocks(n, EW_THREADS), EW_THREADS, 0, s, (T *)y,
                 (const T *)a, (const T *)b, g, n, op);
    KERN_CHECK_LAUNCH();
}

int kern_binary(cudaStream_t s, void *y, const void *a, const void *b, const int64_t ane[4],
                const int64_t bne[4], int op, int dt) {
    int64_t n = ane[0] * ane[1] * ane[2] * ane[3];
    if (n <= 0) return 0;
    bcast4 g;
    bcast_plan(&g, ane, bne);
    return KERN_BY_DTYPE(dt, binary_t, s, y, a, b, g, n, op);
}

template <class T, class I>
__global__ void axpby_kernel(T *y, float alpha, const T *x, float beta, const T *z, I n) {
    GRID_LOOP(i, n) st(y, i, alpha * ld(x, i) + beta * ld(z, i));
}

template <class T>
static int axpby_t(cudaStream_t s, void *y, float alpha, const void *x, float beta, const void *z,
                   int64_t n) {
    if (small_index(n))
        EASEL_LAUNCH(axpby_kernel<T COMMA int32_t>, kern_blocks(n, EW_THREADS), EW_THREADS, 0, s,
                     (T *)y, alpha, (const T *)x, beta, (const T *)z, (int32_t)n);
    else
        EASEL_LAUNCH(axpby_kernel<T COMMA int64_t>, kern_blocks(n, EW_THREADS), EW_THREADS, 0, s,
                     (T *)y, alpha, (const T *)x, beta, (const T *)z, n);
    KERN_CHECK_LAUNCH();
}

int kern_axpby(cudaStream_t s, void *y, float alpha, const void *x, float beta, const void *z,
               int64_t n, int dt) {
    if (n <= 0) return 0;
    return KERN_BY_DTYPE(dt, axpby_t, s, y, alpha, x, beta, z, n);
}

template <class T>
__global__ void upsample2x_kernel(T *y, const T *x, int64_t n, int64_t h, int64_t w, int64_t c) {
    typedef int64_t I;
    int64_t total = n * 4 * h * w * c;
    GRID_LOOP(i, total) {
        int64_t ch = i % c, r = i / c;
        int64_t xx = r % (2 * w);
        r /= 2 * w;
        int64_t yy = r % (2 * h), b = r / (2 * h);
        y[i] = x[((b * h + yy / 2) * w + xx / 2) * c + ch];
    }
}

template <class T>
static int upsample2x_t(cudaStream_t s, void *y, const void *x, int64_t n, int64_t h, int64_t w,
                        int64_t c) {
    EASEL_LAUNCH(upsample2x_kernel<T>, kern_blocks(n * 4 * h * w * c, EW_THREADS), EW_THREADS, 0, s,
                 (T *)y, (const T *)x, n, h, w, c);
    KERN_CHECK_LAUNCH();
}

int kern_upsample2x(cudaStream_t s, void *y, const void *x, int64_t n, int64_t h, int64_t w,
                    int64_t c, int dt) {
    if (n * h * w * c <= 0) return 0;
    return KERN_BY_DTYPE(dt, upsample2x_t, s, y, x, n, h, w, c);
}

template <class T>
__global__ void concat_kernel(T *y, const T *a, const T *b, int64_t rows, int64_t ca, int64_t cb) {
    typedef int64_t I;
    int64_t c = ca + cb;
    GRID_LOOP(i, rows * c) {
        int64_t r = i / c, j = i % c;
        y[i] = j < ca ? a[r * ca + j] : b[r * cb + (j - ca)];
    }
}

template <class T>
static int concat_t(cudaStream_t s, void *y, const void *a, const void *b, int64_t rows, int64_t ca,
                    int64_t cb) {
    EASEL_LAUNCH(concat_kernel<T>, kern_blocks(rows * (ca + cb), EW_THREADS), EW_THREADS, 0, s,
                 (T *)y, (const T *)a, (const T *)b, rows, ca, cb);
    KERN_CHECK_LAUNCH();
}

int kern_concat(cudaStream_t s, void *y, const void *a, const void *b, int64_t rows, int64_t ca,
                int64_t cb, int dt) {
    if (rows * (ca + cb) <= 0) return 0;
    return KERN_BY_DTYPE(dt, concat_t, s, y, a, b, rows, ca, cb);
}

template <class T>
__global__ void pad2d_kernel(T *y, const T *x, int64_t n, int64_t h, int64_t w, int64_t hy,
                             int64_t wy, int64_t c, int64_t top, int64_t left) {
    typedef int64_t I;
    int64_t total = n * hy * wy * c;
    GRID_LOOP(i, total) {
        int64_t ch = i % c, r = i / c;
        int64_t xx = r % wy - left;
        r /= wy;
        int64_t yy = r % hy - top, b = r / hy;
        y[i] = yy >= 0 && yy < h && xx >= 0 && xx < w ? x[((b * h + yy) * w + xx) * c + ch]
                                                      : from_f<T>(0.0f);
    }
}

template <class T>
static int pad2d_t(cudaStream_t s, void *y, const void *x, int64_t n, int64_t h, int64_t w,
                   int64_t hy, int64_t wy, int64_t c, int64_t top, int64_t left) {
    EASEL_LAUNCH(pad2d_kernel<T>, kern_blocks(n * hy * wy * c, EW_THREADS), EW_THREADS, 0, s,
                 (T *)y, (const T *)x, n, h, w, hy, wy, c, top, left);
    KERN_CHECK_LAUNCH();
}

int kern_pad2d(cudaStream_t s, void *y, const void *x, int64_t n, int64_t h, int64_t w, int64_t hy,
               int64_t wy, int64_t c, int64_t top, int64_t left, int dt) {
    if (n * hy * wy * c <= 0) return 0;
    return KERN_BY_DTYPE(dt, pad2d_t, s, y, x, n, h, w, hy, wy, c, top, left);
}

template <class T>
__global__ void timestep_kernel(T *y, const float *t, int64_t n, int64_t dim, int flip, float shift,
                                float max_period) {
    typedef int64_t I;
    int64_t half_dim = dim / 2;
    GRID_LOOP(i, n * dim) {
        int64_t r = i / dim, j = i % dim;
        float v = 0.0f; /* odd dim: the last column is zero padding */
        if (j < 2 * half_dim) {
            int64_t k = j < half_dim ? j : j - half_dim;
            float freq = expf(-logf(max_period) * (float)k / ((float)half_dim - shift));
            float arg = t[r] * freq;
            int first = j < half_dim; /* first half: sin, unless flipped */
            v = (first != (flip != 0)) ? sinf(arg) : cosf(arg);
        }
        st(y, i, v);
    }
}

template <class T>
static int timestep_t(cudaStream_t s, void *y, const float *t, int64_t n, int64_t dim, int flip,
                      float shift, float max_period) {
    EASEL_LAUNCH(timestep_kernel<T>, kern_blocks(n * dim, EW_THREADS), EW_THREADS, 0, s, (T *)y, t,
                 n, dim, flip, shift, max_period);
    KERN_CHECK_LAUNCH();
}

int kern_timestep_embedding(cudaStream_t s, void *y, const float *t, int64_t n, int64_t dim,
                            int flip_sin_to_cos, float shift, float max_period, int dt) {
    if (n * dim <= 0) return 0;
    return KERN_BY_DTYPE(dt, timestep_t, s, y, t, n, dim, flip_sin_to_cos, shift, max_period);
}

template <class T>
__global__ void gather_kernel(T *y, const T *table, const int32_t *ids, int64_t n, int64_t c) {
    typedef int64_t I;
    GRID_LOOP(i, n * c) y[i] = table[(int64_t)ids[i / c] * c + i % c];
}

template <class T>
static int gather_t(cudaStream_t s, void *y, const void *table, const int32_t *ids, int64_t n,
                    int64_t c) {
    EASEL_LAUNCH(gather_kernel<T>, kern_blocks(n * c, EW_THREADS), EW_THREADS, 0, s, (T *)y,
                 (const T *)table, ids, n, c);
    KERN_CHECK_LAUNCH();
}

int kern_gather_rows(cudaStream_t s, void *y, const void *table, const int32_t *ids, int64_t n,
                     int64_t c, int dt) {
    if (n * c <= 0) return 0;
    return KERN_BY_DTYPE(dt, gather_t, s, y, table, ids, n, c);
}

/* im2col: one block per output pixel (its batch and position found with two
 * 32-bit divisions, once), its threads copy the pixel's kh·kw channel runs
 * of the input in vectors of V elements (16 bytes when the channels allow),
 * writing zeros for taps in the padding. */
struct conv_geom {
    int32_t h, w, c, ho, wo, kh, kw, stride, pad;
    int64_t row0;
};

template <class T, int V> struct vec_of { T v[V]; };

template <class T, int V> __global__ void im2col_kernel(T *cols, const T *x, conv_geom g) {
    typedef vec_of<T, V> vec;
    const int64_t p = g.row0 + blockIdx.x; /* output pixel */
    const int32_t hw = g.ho * g.wo, b = (int32_t)(p / hw), rem = (int32_t)(p % hw);
    const int32_t oy = rem / g.wo, ox = rem % g.wo, nv = g.c / V, taps = g.kh * g.kw;
    const int64_t kc = (int64_t)taps * g.c;
    vec *dst = reinterpret_cast<vec *>(cols + (int64_t)blockIdx.x * kc);
    for (int32_t j = threadIdx.x; j < taps * nv; j += blockDim.x) {
        int32_t tap = j / nv, v = j % nv, ky = tap / g.kw, kx = tap % g.kw;
        int32_t iy = oy * g.stride - g.pad + ky, ix = ox * g.stride - g.pad + kx;
        vec val;
        if (iy >= 0 && iy < g.h && ix >= 0 && ix < g.w) {
            const T *src = x + (((int64_t)b * g.h + iy) * g.w + ix) * g.c;
            val = reinterpret_cast<const vec *>(src)[v];
        } else {
            for (int k = 0; k < V; k++)
                val.v[k] = from_f<T>(0.0f);
        }
        dst[j] = val;
    }
}

template <class T>
static int im2col_t(cudaStream_t s, void *cols, const void *x, const conv_geom &g, int64_t rows) {
    const int V = 16 / (int)sizeof(T);
    const bool vec = g.c % V == 0 && ((uintptr_t)cols % 16) == 0 && ((uintptr_t)x % 16) == 0;
    int per_px = g.kh * g.kw * (vec ? g.c / V : g.c);
    int threads = per_px >= 256 ? 256 : (per_px + 31) / 32 * 32;
    for (int64_t r0 = 0; r0 < rows; r0 += 0x7fffffff) { /* grid.x ≤ 2^31 − 1 */
        conv_geom gc = g;
        gc.row0 = g.row0 + r0;
        unsigned nb = (unsigned)(rows - r0 < 0x7fffffff ? rows - r0 : 0x7fffffff);
        T *cc = (T *)cols + r0 * ((int64_t)g.kh * g.kw * g.c);
        if (vec)
            EASEL_LAUNCH(im2col_kernel<T COMMA(int)(16 / sizeof(T))>, nb, threads, 0, s, cc,
                         (const T *)x, gc);
        else
            EASEL_LAUNCH(im2col_kernel<T COMMA 1>, nb, threads, 0, s, cc, (const T *)x, gc);
    }
    KERN_CHECK_LAUNCH();
}

int kern_im2col(cudaStream_t s, void *cols, const void *x, int64_t n, int64_t h, int64_t w,
                int64_t c, int kh, int kw, int stride, int pad, int64_t ho, int64_t wo,
                int64_t row0, int64_t rows, int dt) {
    if (rows <= 0 || c <= 0 || kh <= 0 || kw <= 0) return 0;
    if (h >= INT32_MAX || w >= INT32_MAX || c >= INT32_MAX || ho * wo >= INT32_MAX ||
        n * h * w * c >= ((int64_t)1 << 40))
        return (int)cudaErrorInvalidValue;
    conv_geom g = {(int32_t)h, (int32_t)w, (int32_t)c, (int32_t)ho, (int32_t)wo,
                   kh,         kw,         stride,     pad,         row0};
    return KERN_BY_DTYPE(dt, im2col_t, s, cols, x, g, rows);
}
