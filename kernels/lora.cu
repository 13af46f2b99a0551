/* LoRA merge on the device: y[N,K] = w[N,K] + scale · up[N,R] · down[R,K],
 * the CPU backend's cpu_lora_merge (its reference) as a kernel. w and y in
 * any storage dtype (the weights: fp16 here, f32/bf16 possible), up and down
 * f32; the product accumulates in fp32 and the sum is rounded once into y.
 * Tiled like a plain SGEMM: a block of 16x16 threads owns a 64x64 tile of y
 * (4x4 per thread), stages 16 ranks of up and down per pass in shared
 * memory. R is small (4..128) and K large, so the cost is reading w and
 * writing y once; this runs once per LoRA set, not per step. */
#include "common.cuh"

#define LM_TILE 64
#define LM_RK 16
#define LM_T 16 /* threads per tile side; each thread LM_TILE / LM_T = 4 outputs a side */

__global__ void lora_merge_kernel(void *y, int ydt, const void *w, int wdt, const float *up,
                                  const float *down, int64_t n, int64_t r, int64_t k, float scale) {
    EASEL_SHARED(float, su, LM_TILE *(LM_RK + 1)); /* [64][17]: +1, no bank conflicts */
    EASEL_SHARED(float, sd, LM_RK *LM_TILE);       /* [16][64] */
    int tx = threadIdx.x, ty = threadIdx.y, tid = ty * LM_T + tx;
    int64_t row0 = (int64_t)blockIdx.y * LM_TILE, col0 = (int64_t)blockIdx.x * LM_TILE;
    float acc[4][4];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++)
            acc[i][j] = 0.0f;
    for (int64_t r0 = 0; r0 < r; r0 += LM_RK) {
        /* 64x16 of up and 16x64 of down: 1024 values each, 4 per thread */
        for (int e = tid; e < LM_TILE * LM_RK; e += LM_T * LM_T) {
            int ui = e / LM_RK, uk = e % LM_RK;
            int64_t gr = row0 + ui, gk = r0 + uk;
            su[ui * (LM_RK + 1) + uk] = gr < n && gk < r ? up[gr * r + gk] : 0.0f;
            int di = e / LM_TILE, dj = e % LM_TILE;
            int64_t dr = r0 + di, dc = col0 + dj;
            sd[di * LM_TILE + dj] = dr < r && dc < k ? down[dr * k + dc] : 0.0f;
        }
        __syncthreads();
        for (int q = 0; q < LM_RK; q++) {
            float a[4], b[4];
            for (int i = 0; i < 4; i++)
                a[i] = su[(ty + i * LM_T) * (LM_RK + 1) + q];
            for (int j = 0; j < 4; j++)
                b[j] = sd[q * LM_TILE + tx + j * LM_T];
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++)
                    acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads(); /* the tiles are overwritten next */
    }
    for (int i = 0; i < 4; i++) {
        int64_t gr = row0 + ty + i * LM_T;
        if (gr >= n) continue;
        for (int j = 0; j < 4; j++) {
            int64_t gc = col0 + tx + j * LM_T;
            if (gc >= k) continue;
            int64_t idx = gr * k + gc;
            store_any(y, ydt, idx, load_any(w, wdt, idx) + scale * acc[i][j]);
        }
    }
}

int kern_lora_merge(cudaStream_t s, void *y, int ydt, const void *w, int wdt, const float *up,
                    const float *down, int64_t n, int64_t r, int64_t k, float scale) {
    if (n <= 0 || k <= 0) return 0;
    int64_t gx = (k + LM_TILE - 1) / LM_TILE, gy = (n + LM_TILE - 1) / LM_TILE;
    if (gx > 2147483647LL || gy > 65535) return (int)cudaErrorInvalidValue;
    EASEL_LAUNCH(lora_merge_kernel, dim3((unsigned)gx, (unsigned)gy), dim3(LM_T, LM_T), 0, s, y,
                 ydt, w, wdt, up, down, n, r, k, scale);
    KERN_CHECK_LAUNCH();
}
