/* What this CPU (and its OS) can run: the x86 vector and matrix extensions the
 * CPU backend chooses between at run time (cpuid + XCR0, and on Linux the
 * permission to use AMX tile data, which a process must request once). */
#ifndef EASEL_CPU_FEATURES_H
#define EASEL_CPU_FEATURES_H

#include <stddef.h>

typedef struct {
    int avx2, fma;          /* AVX2 + FMA3 (x86-64-v3) */
    int avx512f, avx512bw;  /* AVX-512 foundation, byte/word */
    int avx512_bf16;        /* AVX512-BF16: vdpbf16ps, vcvtne2ps2bf16 */
    int amx_tile, amx_bf16; /* AMX: the CPU has the tiles and the bf16 TMUL */
    int amx_usable;         /* ... and the OS granted this process tile data */
} cpu_features;

/* Fills *f (all zero on a CPU that is not x86-64). The first call on Linux
 * asks the kernel for AMX tile data (arch_prctl ARCH_REQ_XCOMP_PERM); the
 * answer is per process, so later calls see the same result. Thread-safe. */
void cpu_features_get(cpu_features *f);

/* "avx2 fma avx512f avx512bw avx512_bf16 amx_tile amx_bf16" (the ones present,
 * with "(amx: not permitted by the OS)" when so) into buf; returns buf. */
const char *cpu_features_str(const cpu_features *f, char *buf, size_t len);

#endif
