/* Flash attention (FlashAttention-2's schedule) on tensor cores: fp16 in,
 * fp32 accumulate, online softmax; no Lq x Lk matrix is ever stored, and the
 * scores, probabilities, running max/sum and output accumulator all live in
 * registers. A block takes 64 queries of one (batch, head); each of its 4
 * warps owns 16 query rows. Keys/values stream through shared memory 64 at a
 * time, double-buffered: 16-byte cp.async copies of tile t+1 are in flight
 * while tile t is computed. Per tile and warp:
 *   S[16x64] = Q·K^T   (mma.sync m16n8k16; Q and K fragments by ldmatrix)
 *   m, l, O rescaled per row (the 4 lanes of a quad share a row: 2 shuffles)
 *   P = exp2(S·scale·log2e − m) re-packed from S's accumulator registers
 *   straight into A fragments (the two layouts line up), O += P·V (V's B
 *   fragments by ldmatrix.trans).
 * The head dim is zero-padded to DP (16 ≤ DP ≤ 256, a template parameter so
 * the accumulators are register arrays); keys past Lk and, with causal, keys
 * after the query are masked. Rows whose head slice is not 16-byte aligned
 * (d % 8 != 0) are loaded with plain loads instead of cp.async. Row layout is
 * NHWC: token t of batch b, head h, dim i at ((b·L + t)·H + h)·D + i. Head
 * dims above 256 go through GEMMs (backend_cuda.c). */
#include "common.cuh"

#define ATT_BQ 64 /* queries per block (4 warps x 16) */
#define ATT_BK 64 /* keys per tile */
#define ATT_THREADS 128
#define ATT_PAD 8 /* halves added to each shared row: conflict-free ldmatrix */

/* Shared layout for padded head dim dp: Q, then two K and two V stages. */
static __host__ __device__ inline size_t att_smem(int dp) {
    return (size_t)(ATT_BQ + 4 * ATT_BK) * (dp + ATT_PAD) * 2;
}

static inline int att_dp(int64_t d) {
    static const int dps[] = {16, 32, 48, 64, 80, 96, 128, 160, 192, 256};
    for (int p : dps)
        if (d <= p) return p;
    return 0;
}

size_t kern_attention_smem(int64_t d) {
    int dp = att_dp(d);
    return dp ? att_smem(dp) : 0;
}

/* rows [t0, t0+64) of one head -> dst[64][ld] (ld = dp + pad), zero-padded
 * past d and past len. vec: 16-byte copies (rows 16-byte aligned, d % 8 = 0). */
template <int DP>
__device__ __forceinline__ void att_load(half *dst, const half *src, int64_t t0, int64_t len,
                                         int64_t pitch, int d, bool vec) {
    const int ld = DP + ATT_PAD;
    if (vec) {
        for (int i = threadIdx.x; i < ATT_BK * (DP / 8); i += ATT_THREADS) {
            int r = i / (DP / 8), c = (i % (DP / 8)) * 8;
            bool ok = t0 + r < len && c < d;
            const half *sp = ok ? src + (t0 + r) * pitch + c : src; /* a valid address either way */
            cp_async16(dst + r * ld + c, sp, ok ? 16 : 0);
        }
    } else {
        for (int i = threadIdx.x; i < ATT_BK * DP; i += ATT_THREADS) {
            int r = i / DP, c = i % DP;
            dst[r * ld + c] =
                t0 + r < len && c < d ? src[(t0 + r) * pitch + c] : __float2half(0.0f);
        }
    }
    cp_async_commit();
}

template <int DP>
__global__ void __launch_bounds__(ATT_THREADS)
    flash_kernel(half *o, const half *q, const half *k, const half *v, int64_t lq, int64_t lk,
                 int heads, int d, int causal, float scale_log2, int vec) {
    constexpr int LD = DP + ATT_PAD, NT = ATT_BK / 8, DT = DP / 8, KS = DP / 16;
    EASEL_DYN_SMEM(half, sm);
    half *qs = sm, *ks[2] = {sm + ATT_BQ * LD, sm + (ATT_BQ + ATT_BK) * LD};
    half *vs[2] = {sm + (ATT_BQ + 2 * ATT_BK) * LD, sm + (ATT_BQ + 3 * ATT_BK) * LD};
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int64_t q0 = (int64_t)blockIdx.x * ATT_BQ, hd = (int64_t)heads * d;
    const int64_t head_off = (int64_t)blockIdx.y * d, b = blockIdx.z;
    const half *qb = q + b * lq * hd + head_off;
    const half *kb = k + b * lk * hd + head_off, *vb = v + b * lk * hd + head_off;
    const int64_t kend = causal && q0 + ATT_BQ < lk ? q0 + ATT_BQ : lk;
    const int ntiles = (int)((kend + ATT_BK - 1) / ATT_BK);

    att_load<DP>(qs, qb, q0, lq, hd, d, vec != 0);
    att_load<DP>(ks[0], kb, 0, lk, hd, d, vec != 0);
    att_load<DP>(vs[0], vb, 0, lk, hd, d, vec != 0);

    float acc[DT][4]; /* O: rows g and g+8 of the warp's 16, dims jn·8 + 2t.. */
    for (int jn = 0; jn < DT; jn++)
        acc[jn][0] = acc[jn][1] = acc[jn][2] = acc[jn][3] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    const int64_t row0 = q0 + warp * 16 + g, row1 = row0 + 8;

    for (int tile = 0; tile < ntiles; tile++) {
        const int st = tile & 1;
        if (tile + 1 < ntiles) { /* the next tile's copies fly while this one is used */
            att_load<DP>(ks[st ^ 1], kb, (int64_t)(tile + 1) * ATT_BK, lk, hd, d, vec != 0);
            att_load<DP>(vs[st ^ 1], vb, (int64_t)(tile + 1) * ATT_BK, lk, hd, d, vec != 0);
            cp_async_wait<2>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        /* S = Q·K^T: 8 n-tiles of 8 keys, DP/16 k-steps */
        float s[NT][4];
        for (int j = 0; j < NT; j++)
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
        for (int kk = 0; kk < KS; kk++) {
            uint32_t a[4];
            ldsm_x4(a, qs + (warp * 16 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8);
            for (int j = 0; j < NT; j += 2) {
                uint32_t bk[4]; /* n-tiles j and j+1: (keys, dims 0-7), (keys, dims 8-15) */
                ldsm_x4(bk, ks[st] + (j * 8 + (lane >> 4) * 8 + (lane & 7)) * LD + kk * 16 +
                                ((lane >> 3) & 1) * 8);
                mma_16816(s[j], a, bk);
                mma_16816(s[j + 1], a, bk + 2);
            }
        }
        /* mask, scale, online softmax over each of the lane's two rows */
        const int64_t k0 = (int64_t)tile * ATT_BK;
        float mx[2] = {m[0], m[1]};
        for (int j = 0; j < NT; j++)
            for (int e = 0; e < 4; e++) {
                int64_t key = k0 + j * 8 + 2 * t + (e & 1), row = e < 2 ? row0 : row1;
                bool ok = key < lk && (!causal || key <= row);
                s[j][e] = ok ? s[j][e] * scale_log2 : -INFINITY;
                mx[e >> 1] = fmaxf(mx[e >> 1], s[j][e]);
            }
        float alpha[2];
        for (int r = 0; r < 2; r++) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            alpha[r] = mx[r] == -INFINITY ? 1.0f : exp2f(m[r] - mx[r]); /* exp2(-inf) = 0 */
            m[r] = mx[r];
            l[r] *= alpha[r];
        }
        for (int jn = 0; jn < DT; jn++) {
            acc[jn][0] *= alpha[0], acc[jn][1] *= alpha[0];
            acc[jn][2] *= alpha[1], acc[jn][3] *= alpha[1];
        }
        /* P as A fragments: keys kt·16.. = n-tiles 2kt (cols 0-7) and 2kt+1 (cols 8-15) */
        uint32_t pa[NT / 2][4];
        for (int j = 0; j < NT; j++) {
            float p[4];
            for (int e = 0; e < 4; e++) {
                float x = s[j][e] == -INFINITY ? 0.0f : exp2f(s[j][e] - m[e >> 1]);
                p[e] = __half2float(__float2half(x)); /* what P·V adds */
                l[e >> 1] += p[e];
            }
            pa[j / 2][(j & 1) * 2 + 0] = pack_half2(p[0], p[1]);
            pa[j / 2][(j & 1) * 2 + 1] = pack_half2(p[2], p[3]);
        }
        /* O += P·V: DP/8 n-tiles of dims, 4 k-steps of 16 keys */
        for (int kt = 0; kt < NT / 2; kt++)
            for (int jn = 0; jn < DT; jn += 2) {
                uint32_t bv[4]; /* dims jn·8.. and (jn+1)·8..: keys kt·16 + 0-7, 8-15 */
                ldsm_x4_trans(bv, vs[st] + (kt * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * LD +
                                      jn * 8 + (lane >> 4) * 8);
                mma_16816(acc[jn], pa[kt], bv);
                if (jn + 1 < DT) mma_16816(acc[jn + 1], pa[kt], bv + 2);
            }
        __syncthreads(); /* this stage is refilled by the next iteration's copies */
    }
    /* the quad's partial sums, then O / l */
    for (int r = 0; r < 2; r++) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    }
    for (int r = 0; r < 2; r++) {
        int64_t row = r ? row1 : row0;
        if (row >= lq) continue;
        float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
        half *orow = o + (b * lq + row) * hd + head_off;
        for (int jn = 0; jn < DT; jn++)
            for (int e = 0; e < 2; e++) {
                int c = jn * 8 + 2 * t + e;
                if (c < d) orow[c] = __float2half(acc[jn][2 * r + e] * inv);
            }
    }
}

#define ATT_EACH(X) X(16) X(32) X(48) X(64) X(80) X(96) X(128) X(160) X(192) X(256)

/* Each kernel's dynamic shared memory limit, raised once to what it needs
 * (kern_init): the attribute belongs to the kernel, so a per-launch setting
 * would race with another worker's launch. */
int kern_attention_init(void) {
    cudaError_t e = cudaSuccess;
#define ATT_INIT(DP)                                                                               \
    if (!e)                                                                                        \
        e = cudaFuncSetAttribute(flash_kernel<DP>, cudaFuncAttributeMaxDynamicSharedMemorySize,    \
                                 (int)att_smem(DP));
    ATT_EACH(ATT_INIT)
#undef ATT_INIT
    return (int)e;
}

int kern_attention(cudaStream_t s, void *o, const void *q, const void *k, const void *v, int64_t b,
                   int64_t lq, int64_t lk, int64_t h, int64_t d, int causal) {
    if (b <= 0 || lq <= 0 || h <= 0) return 0;
    int dp = att_dp(d);
    if (d <= 0 || !dp || lk <= 0 || h > 65535 || b > 65535 || lq > (int64_t)ATT_BQ * 0x7fffffff)
        return (int)cudaErrorInvalidValue;
    const float scale_log2 = 1.4426950408889634f / sqrtf((float)d);
    int vec =
        d % 8 == 0 && (h * d) % 8 == 0 && ((uintptr_t)q | (uintptr_t)k | (uintptr_t)v) % 16 == 0;
    dim3 grid((unsigned)((lq + ATT_BQ - 1) / ATT_BQ), (unsigned)h, (unsigned)b);
    switch (dp) {
#define ATT_CASE(DP)                                                                               \
    case DP:                                                                                       \
        EASEL_LAUNCH(flash_kernel<DP>, grid, ATT_THREADS, att_smem(DP), s, (half *)o,              \
                     (const half *)q, (const half *)k, (const half *)v, lq, lk, (int)h, (int)d,    \
                     causal, scale_log2, vec);                                                     \
        break;
        ATT_EACH(ATT_CASE)
#undef ATT_CASE
    }
    KERN_CHECK_LAUNCH();
}

int kern_init(void) {
    return kern_attention_init();
}
