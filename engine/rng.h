/* Seeded noise that matches PyTorch's CPU generator bit for bit, so a seed
 * gives the same latents as diffusers with generator=torch.Generator("cpu").
 * An rng is a plain struct (no heap); each worker/job owns its own. */
#ifndef EASEL_RNG_H
#define EASEL_RNG_H

#include <stdint.h>

#define RNG_MT_N 624

typedef struct {
    uint32_t state[RNG_MT_N]; /* mt19937 state, as at::mt19937 keeps it */
    int left, next;           /* draws left before the next twist; next index */
    int has_normal;           /* torch's cached second Box-Muller sample (double path) */
    double next_normal;
} rng;

/* torch.Generator("cpu").manual_seed(seed): mt19937 seeded with the low 32 bits
 * of seed (torch truncates too), and the cached normal sample dropped. */
void rng_seed(rng *r, uint64_t seed);

/* One raw 32-bit draw (CPUGeneratorImpl::random) and a 64-bit one made from two
 * draws, first as the high half (CPUGeneratorImpl::random64). */
uint32_t rng_u32(rng *r);
uint64_t rng_u64(rng *r);

/* out[0..n) = torch.randn(n, generator=g, dtype=torch.float32): the float
 * Box-Muller in blocks of 16 (normal_fill) when n >= 16, else the double path
 * with the generator's cached sample. The generator advances exactly as
 * torch's does, so consecutive calls match consecutive torch.randn calls.
 * Any shape with n elements gives the same numbers as a flat n (contiguous).
 * n >= 16 follows the kernel torch runs on x86-64 CPUs with AVX2 (AVX512 ones
 * included: torch picks the same kernel there), whose log/sincos are
 * avx_mathfun's Cephes polynomials; torch builds without it (ARM, pre-AVX2
 * x86) use libm instead and differ from these in the last bits. */
void rng_randn(rng *r, float *out, int64_t n);

#endif
