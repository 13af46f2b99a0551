/* Elementwise and data-movement kernels: dtype conversion, unary activations,
 * GEGLU, broadcast binary ops, axpby, nearest 2x upsample, channel concat,
 * timestep embedding, row gather and im2col. All memory-bound: grid-stride
 * loops, fp32 arithmetic on fp16 storage. */
#include "common.cuh"

#define EW_THREADS 256

#define GRID_LOOP(i, n)                                                                            \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);                      \
         i += (int64_t)blockDim.x * gridDim.x)

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

__global__ void convert_kernel(void *y, int ydt, const void *x, int xdt, int64_t n) {
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
    return x / (1.0f + expf(-1.702f * x));
}

__global__ void unary_kernel(half *y, const half *x, int64_t n, int op) {
    GRID_LOOP(i, n) st(y, i, unary_apply(ld(x, i), op));
}

int kern_unary(cudaStream_t s, void *y, const void *x, int64_t n, int op) {
    if (n <= 0) return 0;
    EASEL_LAUNCH(unary_kernel, kern_blocks(n, EW_THREADS), EW_THREADS, 0, s, (half *)y,
                 (const half *)x, n, op);
    KERN_CHECK_LAUNCH();
}

__global__ void geglu_kernel(half *y, const half *x, int64_t rows, int64_t n) {
    GRID_LOOP(i, rows * n) {
        int64_t r = i / n, c = i % n;
        const half *xr = x + r * 2 * n;
        st(y, i, ld(xr, c) * gelu_erf(ld(xr, n + c)));
    }
}

int kern_geglu(cudaStream_t s, void *y, const void *x, int64_t rows, int64_t n) {
    if (rows * n <= 0) return 0;
    EASEL_LAUNCH(geglu_kernel, kern_blocks(rows * n, EW_THREADS), EW_THREADS, 0, s, (half *)y,
                 (const half *)x, rows, n);
    KERN_CHECK_LAUNCH();
}

/* a's dims and b's strides (0 where b broadcasts), 4 dims, outermost first. */
struct bcast4 {
    int64_t ne[4];
    int64_t bs[4];
};

__global__ void binary_kernel(half *y, const half *a, const half *b, bcast4 g, int op) {
    int64_t n = g.ne[0] * g.ne[1] * g.ne[2] * g.ne[3];
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

int kern_binary(cudaStream_t s, void *y, const void *a, const void *b, const int64_t ane[4],
                const int64_t bne[4], int op) {
    bcast4 g;
    int64_t stride = 1, n = 1;
    for (int d = 3; d >= 0; d--) {
        g.ne[d] = ane[d];
        g.bs[d] = bne[d] == 1 ? 0 : stride;
        stride *= bne[d];
        n *= ane[d];
    }
    if (n <= 0) return 0;
    EASEL_LAUNCH(binary_kernel, kern_blocks(n, EW_THREADS), EW_THREADS, 0, s, (half *)y,
                 (const half *)a, (const half *)b, g, op);
    KERN_CHECK_LAUNCH();
}

__global__ void axpby_kernel(half *y, float alpha, const half *x, float beta, const half *z,
                             int64_t n) {
    GRID_LOOP(i, n) st(y, i, alpha * ld(x, i) + beta * ld(z, i));
}

int kern_axpby(cudaStream_t s, void *y, float alpha, const void *x, float beta, const void *z,
               int64_t n) {
    if (n <= 0) return 0;
    EASEL_LAUNCH(axpby_kernel, kern_blocks(n, EW_THREADS), EW_THREADS, 0, s, (half *)y, alpha,
                 (const half *)x, beta, (const half *)z, n);
    KERN_CHECK_LAUNCH();
}

__global__ void upsample2x_kernel(half *y, const half *x, int64_t n, int64_t h, int64_t w,
                                  int64_t c) {
    int64_t total = n * 4 * h * w * c;
    GRID_LOOP(i, total) {
        int64_t ch = i % c, r = i / c;
        int64_t xx = r % (2 * w);
        r /= 2 * w;
        int64_t yy = r % (2 * h), b = r / (2 * h);
        y[i] = x[((b * h + yy / 2) * w + xx / 2) * c + ch];
    }
}

int kern_upsample2x(cudaStream_t s, void *y, const void *x, int64_t n, int64_t h, int64_t w,
                    int64_t c) {
    int64_t total = n * 4 * h * w * c;
    if (total <= 0) return 0;
    EASEL_LAUNCH(upsample2x_kernel, kern_blocks(total, EW_THREADS), EW_THREADS, 0, s, (half *)y,
                 (const half *)x, n, h, w, c);
    KERN_CHECK_LAUNCH();
}

__global__ void concat_kernel(half *y, const half *a, const half *b, int64_t rows, int64_t ca,
                              int64_t cb) {
    int64_t c = ca + cb;
    GRID_LOOP(i, rows * c) {
        int64_t r = i / c, j = i % c;
        y[i] = j < ca ? a[r * ca + j] : b[r * cb + (j - ca)];
    }
}

int kern_concat(cudaStream_t s, void *y, const void *a, const void *b, int64_t rows, int64_t ca,
                int64_t cb) {
    if (rows * (ca + cb) <= 0) return 0;
    EASEL_LAUNCH(concat_kernel, kern_blocks(rows * (ca + cb), EW_THREADS), EW_THREADS, 0, s,
                 (half *)y, (const half *)a, (const half *)b, rows, ca, cb);
    KERN_CHECK_LAUNCH();
}

__global__ void timestep_kernel(half *y, const float *t, int64_t n, int64_t dim, int flip,
                                float shift, float max_period) {
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

int kern_timestep_embedding(cudaStream_t s, void *y, const float *t, int64_t n, int64_t dim,
                            int flip_sin_to_cos, float shift, float max_period) {
    if (n * dim <= 0) return 0;
    EASEL_LAUNCH(timestep_kernel, kern_blocks(n * dim, EW_THREADS), EW_THREADS, 0, s, (half *)y, t,
                 n, dim, flip_sin_to_cos, shift, max_period);
    KERN_CHECK_LAUNCH();
}

__global__ void gather_kernel(half *y, const half *table, const int32_t *ids, int64_t n,
                              int64_t c) {
    GRID_LOOP(i, n * c) y[i] = table[(int64_t)ids[i / c] * c + i % c];
}

int kern_gather_rows(cudaStream_t s, void *y, const void *table, const int32_t *ids, int64_t n,
                     int64_t c) {
    if (n * c <= 0) return 0;
    EASEL_LAUNCH(gather_kernel, kern_blocks(n * c, EW_THREADS), EW_THREADS, 0, s, (half *)y,
                 (const half *)table, ids, n, c);
    KERN_CHECK_LAUNCH();
}

struct conv_geom {
    int64_t n, h, w, c, ho, wo, row0, rows;
    int kh, kw, stride, pad;
};

__global__ void im2col_kernel(half *cols, const half *x, conv_geom g) {
    int64_t kc = (int64_t)g.kh * g.kw * g.c;
    GRID_LOOP(i, g.rows * kc) {
        int64_t r = i / kc, j = i % kc;
        int64_t p = g.row0 + r;
        int64_t ox = p % g.wo, oy = (p / g.wo) % g.ho, b = p / (g.wo * g.ho);
        int64_t ci = j % g.c, kx = (j / g.c) % g.kw, ky = j / (g.c * g.kw);
        int64_t iy = oy * g.stride - g.pad + ky, ix = ox * g.stride - g.pad + kx;
        half v = __float2half(0.0f);
        if (iy >= 0 && iy < g.h && ix >= 0 && ix < g.w)
            v = x[((b * g.h + iy) * g.w + ix) * g.c + ci];
        cols[i] = v;
    }
}

int kern_im2col(cudaStream_t s, void *cols, const void *x, int64_t n, int64_t h, int64_t w,
                int64_t c, int kh, int kw, int stride, int pad, int64_t ho, int64_t wo,
                int64_t row0, int64_t rows) {
    conv_geom g = {n, h, w, c, ho, wo, row0, rows, kh, kw, stride, pad};
    int64_t total = rows * kh * kw * c;
    if (total <= 0) return 0;
    EASEL_LAUNCH(im2col_kernel, kern_blocks(total, EW_THREADS), EW_THREADS, 0, s, (half *)cols,
                 (const half *)x, g);
    KERN_CHECK_LAUNCH();
}
