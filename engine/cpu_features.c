/* CPU feature detection (see cpu_features.h): cpuid leaves 1 and 7 for what
 * the CPU has, XCR0 for what the OS saves and restores (AVX needs YMM state,
 * AVX-512 the opmask/ZMM state, AMX the tile config/data state), and on Linux
 * the per-process AMX permission. */
#include "cpu_features.h"

#include <stdio.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#ifdef __linux__
#include <sys/syscall.h>
#include <unistd.h>
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
#endif

static unsigned long long xcr0(void) {
    unsigned int lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}

/* Asks once per process; every later request answers the same. */
static int amx_permitted(void) {
#ifdef __linux__
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
#else
    return 0;
#endif
}

void cpu_features_get(cpu_features *f) {
    memset(f, 0, sizeof *f);
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return;
    int osxsave = (c >> 27) & 1, fma = (c >> 12) & 1;
    if (!osxsave) return;
    unsigned long long x = xcr0();
    int ymm = (x & 0x6) == 0x6, zmm = ymm && (x & 0xe0) == 0xe0, tiles = (x & 0x60000) == 0x60000;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return;
    f->avx2 = ymm && ((b >> 5) & 1);
    f->fma = ymm && fma;
    f->avx512f = zmm && ((b >> 16) & 1);
    f->avx512bw = zmm && ((b >> 30) & 1);
    f->amx_bf16 = (d >> 22) & 1;
    f->amx_tile = (d >> 24) & 1;
    unsigned a1 = 0, b1, c1, d1;
    if (__get_cpuid_count(7, 1, &a1, &b1, &c1, &d1)) f->avx512_bf16 = f->avx512f && ((a1 >> 5) & 1);
    /* Linux enables tile state in XCR0 but faults on first use until asked. */
    f->amx_usable = tiles && f->amx_tile && f->amx_bf16 && amx_permitted();
}
#else
void cpu_features_get(cpu_features *f) {
    memset(f, 0, sizeof *f);
}
#endif

const char *cpu_features_str(const cpu_features *f, char *buf, size_t len) {
    static const struct {
        size_t off;
        const char *name;
    } names[] = {{offsetof(cpu_features, avx2), "avx2"},
                 {offsetof(cpu_features, fma), "fma"},
                 {offsetof(cpu_features, avx512f), "avx512f"},
                 {offsetof(cpu_features, avx512bw), "avx512bw"},
                 {offsetof(cpu_features, avx512_bf16), "avx512_bf16"},
                 {offsetof(cpu_features, amx_tile), "amx_tile"},
                 {offsetof(cpu_features, amx_bf16), "amx_bf16"}};
    size_t o = 0;
    if (len) buf[0] = 0;
    for (size_t i = 0; i < sizeof names / sizeof names[0] && o < len; i++)
        if (*(const int *)((const char *)f + names[i].off))
            o += (size_t)snprintf(buf + o, len - o, "%s%s", o ? " " : "", names[i].name);
    if (f->amx_bf16 && !f->amx_usable && o < len)
        o += (size_t)snprintf(buf + o, len - o, " (amx: not permitted by the OS)");
    if (!o && len) snprintf(buf, len, "none of avx2/avx512/amx");
    return buf;
}
