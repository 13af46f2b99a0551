/* Flash-style multi-head attention on tensor cores (WMMA 16x16x16, fp16 in,
 * fp32 accumulate) with an online softmax: no Lq x Lk matrix is ever stored.
 * A block takes 64 queries of one (batch, head); each of its 4 warps owns 16
 * query rows. Keys/values stream through shared memory 32 at a time:
 *   S = Q·K^T (WMMA) -> shared; lanes r and r+16 rescale row r (running max
 *   m, running sum l, O *= exp(m_old - m_new)) and write P = exp(S - m) as
 *   fp16; O += P·V (WMMA, O kept in shared as fp32). Finally O / l.
 * The head dim is zero-padded to a multiple of 16 in shared memory, so 40,
 * 64, 80, 160 (any d ≤ 256) work; keys past Lk and, with causal, keys after
 * the query are masked to -inf. Row layout is NHWC: token t of batch b,
 * head h, dim i at ((b·L + t)·H + h)·D + i. */
#include "common.cuh"

using namespace nvcuda;

#define ATT_BQ 64 /* queries per block (4 warps x 16) */
#define ATT_BK 32 /* keys per tile */
#define ATT_THREADS 128
#define ATT_LDS (ATT_BK + 4) /* floats: S rows */
#define ATT_LDP (ATT_BK + 8) /* halves: P rows */

struct att_layout {
    int dp, ldq, ldo; /* padded head dim, Q/K/V and O row pitch */
    size_t q_off, k_off, v_off, s_off, p_off, o_off, bytes; /* byte offsets into shared */
};

static __host__ __device__ inline size_t att_align(size_t n) {
    return (n + 127) & ~(size_t)127;
}

static __host__ __device__ inline att_layout att_make_layout(int d) {
    att_layout a;
    a.dp = (d + 15) / 16 * 16;
    a.ldq = a.dp + 8;
    a.ldo = a.dp + 4;
    size_t off = 0;
    a.q_off = off, off = att_align(off + (size_t)ATT_BQ * a.ldq * 2);
    a.k_off = off, off = att_align(off + (size_t)ATT_BK * a.ldq * 2);
    a.v_off = off, off = att_align(off + (size_t)ATT_BK * a.ldq * 2);
    a.s_off = off, off = att_align(off + (size_t)ATT_BQ * ATT_LDS * 4);
    a.p_off = off, off = att_align(off + (size_t)ATT_BQ * ATT_LDP * 2);
    a.o_off = off, off = att_align(off + (size_t)ATT_BQ * a.ldo * 4);
    a.bytes = off;
    return a;
}

size_t kern_attention_smem(int64_t d) {
    return att_make_layout((int)d).bytes;
}

/* rows [t0, t0+nrows) of one head -> dst[nrows x ldq], zero-padded to dp and past len. */
__device__ void att_load_tile(half *dst, const half *src, int64_t t0, int nrows, int64_t len,
                              int64_t row_stride, int d, int dp, int ldq) {
    for (int i = threadIdx.x; i < nrows * dp; i += blockDim.x) {
        int r = i / dp, c = i % dp;
        half v = __float2half(0.0f);
        if (t0 + r < len && c < d) v = src[(t0 + r) * row_stride + c];
        dst[r * ldq + c] = v;
    }
}

/* S[16 x 32] = Q_w[16 x dp] · K[32 x dp]^T for this warp. */
__device__ void att_scores(float *s, const half *qw, const half *ks, const att_layout &L) {
    for (int nt = 0; nt < ATT_BK / 16; nt++) {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        wmma::fill_fragment(acc, 0.0f);
        for (int kt = 0; kt < L.dp / 16; kt++) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, half, wmma::row_major> a;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, half, wmma::col_major> b;
            wmma::load_matrix_sync(a, qw + kt * 16, L.ldq);
            wmma::load_matrix_sync(b, ks + nt * 16 * L.ldq + kt * 16, L.ldq);
            wmma::mma_sync(acc, a, b, acc);
        }
        wmma::store_matrix_sync(s + nt * 16, acc, ATT_LDS, wmma::mem_row_major);
    }
}

/* O_w[16 x dp] += P_w[16 x 32] · V[32 x dp]. */
__device__ void att_accumulate(float *o, const half *p, const half *vs, const att_layout &L) {
    for (int nt = 0; nt < L.dp / 16; nt++) {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        wmma::load_matrix_sync(acc, o + nt * 16, L.ldo, wmma::mem_row_major);
        for (int kt = 0; kt < ATT_BK / 16; kt++) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, half, wmma::row_major> a;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, half, wmma::row_major> b;
            wmma::load_matrix_sync(a, p + kt * 16, ATT_LDP);
            wmma::load_matrix_sync(b, vs + kt * 16 * L.ldq + nt * 16, L.ldq);
            wmma::mma_sync(acc, a, b, acc);
        }
        wmma::store_matrix_sync(o + nt * 16, acc, L.ldo, wmma::mem_row_major);
    }
}

/* One half-row of the online-softmax step: lanes r and r + 16 share row r,
 * each taking 16 of the tile's 32 keys (part = lane / 16) and half of O's
 * columns; the max and the sum are combined with one shuffle each. Every lane
 * of the warp calls this (the shuffles need all 32). A row with no visible key
 * yet gets P = 0 and keeps m, l and O (alpha = 1, sum = 0). */
__device__ void att_softmax_row(float *srow, half *prow, float *orow, float &m, float &l,
                                int64_t row, int64_t k0, int64_t lk, int causal, float scale,
                                int dp, int part) {
    const int j0 = part * (ATT_BK / 2), j1 = j0 + ATT_BK / 2;
    float mx = m;
    for (int j = j0; j < j1; j++) {
        int64_t key = k0 + j;
        bool ok = key < lk && (!causal || key <= row);
        float v = ok ? srow[j] * scale : -INFINITY;
        srow[j] = v;
        mx = fmaxf(mx, v);
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
    const bool none = mx == -INFINITY;
    float alpha = none ? 1.0f : (m == -INFINITY ? 0.0f : expf(m - mx)), sum = 0.0f;
    for (int j = j0; j < j1; j++) {
        float p = none || srow[j] == -INFINITY ? 0.0f : expf(srow[j] - mx);
        half ph = __float2half(p);
        prow[j] = ph;
        sum += __half2float(ph); /* the sum of what P·V actually adds */
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 16);
    l = l * alpha + sum;
    m = mx;
    for (int c = part * (dp / 2); c < (part + 1) * (dp / 2); c++)
        orow[c] *= alpha;
}

__global__ void __launch_bounds__(ATT_THREADS)
    attention_kernel(half *o, const half *q, const half *k, const half *v, int64_t lq, int64_t lk,
                     int heads, int d, int causal) {
    EASEL_DYN_SMEM(unsigned char, smem);
    const att_layout L = att_make_layout(d);
    half *qs = (half *)(smem + L.q_off), *ks = (half *)(smem + L.k_off);
    half *vs = (half *)(smem + L.v_off), *ps = (half *)(smem + L.p_off);
    float *ss = (float *)(smem + L.s_off), *os = (float *)(smem + L.o_off);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int64_t q0 = (int64_t)blockIdx.x * ATT_BQ, hd = (int64_t)heads * d;
    int64_t head_off = (int64_t)blockIdx.y * d, b = blockIdx.z;
    const half *qb = q + b * lq * hd + head_off;
    const half *kb = k + b * lk * hd + head_off, *vb = v + b * lk * hd + head_off;

    att_load_tile(qs, qb, q0, ATT_BQ, lq, hd, d, L.dp, L.ldq);
    for (int i = threadIdx.x; i < ATT_BQ * L.ldo; i += blockDim.x)
        os[i] = 0.0f;
    int r = lane & 15, part = lane >> 4; /* lanes r and r + 16 share row warp·16 + r */
    float m = -INFINITY, l = 0.0f;       /* that row's running max and sum */
    const float scale = 1.0f / sqrtf((float)d);
    int64_t row = q0 + warp * 16 + r;
    int64_t kend = causal && q0 + ATT_BQ < lk ? q0 + ATT_BQ : lk;
    float *sw = ss + warp * 16 * ATT_LDS, *ow = os + warp * 16 * L.ldo;
    half *pw = ps + warp * 16 * ATT_LDP;
    __syncthreads();
    for (int64_t k0 = 0; k0 < kend; k0 += ATT_BK) {
        att_load_tile(ks, kb, k0, ATT_BK, lk, hd, d, L.dp, L.ldq);
        att_load_tile(vs, vb, k0, ATT_BK, lk, hd, d, L.dp, L.ldq);
        __syncthreads();
        att_scores(sw, qs + warp * 16 * L.ldq, ks, L);
        __syncwarp();
        att_softmax_row(sw + r * ATT_LDS, pw + r * ATT_LDP, ow + r * L.ldo, m, l, row, k0, lk,
                        causal, scale, L.dp, part);
        __syncwarp();
        att_accumulate(ow, pw, vs, L);
        __syncthreads(); /* K/V tiles are overwritten next */
    }
    if (row < lq) { /* each lane of the pair writes its half of the columns */
        float inv = l > 0.0f ? 1.0f / l : 0.0f;
        half *orow = o + (b * lq + row) * hd + head_off;
        int c1 = part ? d : (L.dp / 2 < d ? L.dp / 2 : d);
        for (int c = part * (L.dp / 2); c < c1; c++)
            orow[c] = __float2half(ow[r * L.ldo + c] * inv);
    }
}

int kern_attention(cudaStream_t s, void *o, const void *q, const void *k, const void *v, int64_t b,
                   int64_t lq, int64_t lk, int64_t h, int64_t d, int causal) {
    if (b <= 0 || lq <= 0 || h <= 0) return 0;
    if (d <= 0 || d > KERN_ATTN_MAX_D || lk <= 0) return (int)cudaErrorInvalidValue;
    size_t smem = kern_attention_smem(d);
#ifdef __CUDACC__
    cudaError_t e = cudaFuncSetAttribute(attention_kernel,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) return (int)e;
#endif
    dim3 grid((unsigned)((lq + ATT_BQ - 1) / ATT_BQ), (unsigned)h, (unsigned)b);
    EASEL_LAUNCH(attention_kernel, grid, ATT_THREADS, smem, s, (half *)o, (const half *)q,
                 (const half *)k, (const half *)v, lq, lk, (int)h, (int)d, causal);
    KERN_CHECK_LAUNCH();
}
