/* PyTorch-compatible CPU random numbers: mt19937 as in ATen's
 * MT19937RNGEngine.h, uniform and normal transforms as in
 * DistributionsHelper.h / TransformationHelper.h, and the float normal_fill
 * kernel of native/cpu/DistributionTemplates.h. Written from reading those. */
#include "rng.h"

#include <math.h>
#include <string.h>

#define MT_M 397
#define MT_MATRIX_A 0x9908b0dfu
#define MT_UMASK 0x80000000u
#define MT_LMASK 0x7fffffffu

void rng_seed(rng *r, uint64_t seed) {
    r->state[0] = (uint32_t)(seed & 0xffffffffu);
    for (int j = 1; j < RNG_MT_N; j++) {
        uint32_t p = r->state[j - 1];
        r->state[j] = 1812433253u * (p ^ (p >> 30)) + (uint32_t)j;
    }
    r->left = 1;
    r->next = 0;
    r->has_normal = 0;
    r->next_normal = 0.0;
}

static uint32_t mt_twist(uint32_t u, uint32_t v) {
    uint32_t mixed = (u & MT_UMASK) | (v & MT_LMASK);
    return (mixed >> 1) ^ ((v & 1u) ? MT_MATRIX_A : 0u);
}

static void mt_next_state(rng *r) {
    uint32_t *s = r->state;
    int j;
    for (j = 0; j < RNG_MT_N - MT_M; j++)
        s[j] = s[j + MT_M] ^ mt_twist(s[j], s[j + 1]);
    for (; j < RNG_MT_N - 1; j++)
        s[j] = s[j + MT_M - RNG_MT_N] ^ mt_twist(s[j], s[j + 1]);
    s[j] = s[j + MT_M - RNG_MT_N] ^ mt_twist(s[j], s[0]);
    r->left = RNG_MT_N;
    r->next = 0;
}

uint32_t rng_u32(rng *r) {
    if (--r->left == 0) mt_next_state(r);
    uint32_t y = r->state[r->next++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

uint64_t rng_u64(rng *r) {
    uint32_t hi = rng_u32(r);
    uint32_t lo = rng_u32(r);
    return ((uint64_t)hi << 32) | lo;
}

/* uniform_real_distribution<float>(0, 1): 24 random bits / 2^24 (exact). */
static float uniform_f32(rng *r) {
    return (float)(rng_u32(r) & ((1u << 24) - 1)) * (1.0f / 16777216.0f);
}

/* uniform_real_distribution<double>(0, 1): 53 random bits / 2^53 (exact). */
static double uniform_f64(rng *r) {
    return (double)(rng_u64(r) & ((UINT64_C(1) << 53) - 1)) * (1.0 / 9007199254740992.0);
}

/* at::normal_distribution<double>(0, 1): Box-Muller, the sine sample cached
 * in the generator for the next call. */
static double normal_f64(rng *r) {
    if (r->has_normal) {
        r->has_normal = 0;
        return r->next_normal;
    }
    double u1 = uniform_f64(r);
    double u2 = uniform_f64(r);
    double rad = sqrt(-2.0 * log1p(-u2));
    double theta = 2.0 * M_PI * u1;
    r->next_normal = rad * sin(theta);
    r->has_normal = 1;
    return rad * cos(theta);
}

/* torch's float normal_fill runs, on any x86 CPU with AVX2 (AVX512 machines
 * included), NormalFill16<float> built on avx_mathfun.h: Cephes-style log and
 * sincos polynomials in float, not libm. Below is the same sequence of float
 * operations, one lane at a time. GCC fused torch's mul+add pairs into FMA
 * instructions; MAD is such a fused pair, and where two products met one add
 * the choice it made is spelled out (found by matching torch on 65,536
 * draws with no difference). */
#define MAD(a, b, c) fmaf((a), (b), (c))

static float f_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t bits_from_f(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* log256_ps for one lane; x in (0, 1] here, so the NaN path never fires. */
static float cephes_logf(float x) {
    int invalid = !(x > 0.0f);
    if (x < f_from_bits(0x00800000u)) x = f_from_bits(0x00800000u);
    uint32_t bits = bits_from_f(x);
    int32_t ei = (int32_t)(bits >> 23) - 0x7f;
    x = f_from_bits((bits & ~0x7f800000u) | bits_from_f(0.5f));
    float e = (float)ei + 1.0f;
    int lt = x < 0.707106781186547524f;
    float tmp = lt ? x : 0.0f;
    x = x - 1.0f;
    e = e - (lt ? 1.0f : 0.0f);
    x = x + tmp;
    float z = x * x;
    float y = 7.0376836292E-2f;
    y = MAD(y, x, -1.1514610310E-1f);
    y = MAD(y, x, 1.1676998740E-1f);
    y = MAD(y, x, -1.2420140846E-1f);
    y = MAD(y, x, 1.4249322787E-1f);
    y = MAD(y, x, -1.6668057665E-1f);
    y = MAD(y, x, 2.0000714765E-1f);
    y = MAD(y, x, -2.4999993993E-1f);
    y = MAD(y, x, 3.3333331174E-1f);
    y = y * x;
    y = MAD(y, z, e * -2.12194440e-4f);
    y = MAD(-z, 0.5f, y);
    x = x + y;
    x = MAD(e, 0.693359375f, x);
    return invalid ? NAN : x;
}

/* sincos256_ps for one lane (x >= 0 here). */
static void cephes_sincosf(float x, float *s, float *c) {
    uint32_t sign_sin = bits_from_f(x) & 0x80000000u;
    x = fabsf(x);
    float y = x * 1.27323954473516f;
    int32_t j = (int32_t)y;
    j = (j + 1) & ~1;
    y = (float)j;
    uint32_t swap_sin = ((uint32_t)j & 4u) << 29;
    int poly_cos = ((uint32_t)j & 2u) == 0;
    x = MAD(y, -0.78515625f, x);
    x = MAD(y, -2.4187564849853515625e-4f, x);
    x = MAD(y, -3.77489497744594108e-8f, x);
    uint32_t sign_cos = (~(uint32_t)(j - 2) & 4u) << 29;
    sign_sin ^= swap_sin;
    float z = x * x;
    float yc = 2.443315711809948E-005f;
    yc = MAD(yc, z, -1.388731625493765E-003f);
    yc = MAD(yc, z, 4.166664568298827E-002f);
    yc = yc * z;
    yc = MAD(yc, z, -(z * 0.5f));
    yc = yc + 1.0f;
    float ys = -1.9515295891E-4f;
    ys = MAD(ys, z, 8.3321608736E-3f);
    ys = MAD(ys, z, -1.6666654611E-1f);
    ys = ys * z;
    ys = MAD(ys, x, x);
    float ysin2 = poly_cos ? ys : 0.0f, ysin1 = poly_cos ? 0.0f : yc;
    ys = ys - ysin2;
    yc = yc - ysin1;
    *s = f_from_bits(bits_from_f(ysin1 + ysin2) ^ sign_sin);
    *c = f_from_bits(bits_from_f(yc + ys) ^ sign_cos);
}

/* NormalFill16<float>: 8 pairs, u1 from the first half, u2 from the second;
 * out = fma(r * cos, std = 1, mean = 0). */
static void normal_fill_16(float *d) {
    const float two_pi = (float)(2.0 * M_PI);
    for (int j = 0; j < 8; j++) {
        const float u1 = 1.0f - d[j];
        const float u2 = d[j + 8];
        const float radius = sqrtf(-2.0f * cephes_logf(u1));
        float sn, cs;
        cephes_sincosf(two_pi * u2, &sn, &cs);
        d[j] = fmaf(radius * cs, 1.0f, 0.0f);
        d[j + 8] = fmaf(radius * sn, 1.0f, 0.0f);
    }
}

void rng_randn(rng *r, float *out, int64_t n) {
    if (n <= 0) return;
    if (n < 16) {
        for (int64_t i = 0; i < n; i++)
            out[i] = (float)normal_f64(r);
        return;
    }
    for (int64_t i = 0; i < n; i++)
        out[i] = uniform_f32(r);
    for (int64_t i = 0; i + 16 <= n; i += 16)
        normal_fill_16(out + i);
    if (n % 16 != 0) {
        float *tail = out + n - 16;
        for (int i = 0; i < 16; i++)
            tail[i] = uniform_f32(r);
        normal_fill_16(tail);
    }
}
