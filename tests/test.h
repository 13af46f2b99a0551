/* A very small test harness. Each tests/test_*.c is a program:
 *
 *   static void test_foo(void) { CHECK(1 + 1 == 2, "arith"); }
 *   int main(void) { RUN(test_foo); return test_summary(); }
 *
 * A case passes if none of its CHECKs failed, is skipped if it called
 * SKIP(...) (and failed nothing). The last line printed is
 * "<file>: N passed, N failed, N skipped", which tests/run_tests.sh sums. */
#ifndef EASEL_TEST_H
#define EASEL_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int test_passed_, test_failed_, test_skipped_;
static int test_case_failed_, test_case_skipped_;
static const char *test_case_name_ = "";

#define CHECK_TEXT_(ok, text, ...)                                                                \
    do {                                                                                          \
        if (!(ok)) {                                                                              \
            if (test_case_failed_ < 10) {                                                         \
                fprintf(stderr, "  FAIL %s (%s:%d): %s: ", test_case_name_, __FILE__, __LINE__,   \
                        text);                                                                    \
                fprintf(stderr, __VA_ARGS__);                                                     \
                fprintf(stderr, "\n");                                                            \
            }                                                                                     \
            test_case_failed_++;                                                                  \
        }                                                                                         \
    } while (0)

/* cond is evaluated exactly once. */
#define CHECK(cond, ...)                                                                          \
    do {                                                                                          \
        int check_ok_ = !!(cond);                                                                 \
        CHECK_TEXT_(check_ok_, #cond, __VA_ARGS__);                                               \
    } while (0)

/* CHECK that also leaves the case on failure (cond evaluated once). */
#define REQUIRE(cond, ...)                                                                        \
    do {                                                                                          \
        int require_ok_ = !!(cond);                                                               \
        CHECK_TEXT_(require_ok_, #cond, __VA_ARGS__);                                             \
        if (!require_ok_) return;                                                                 \
    } while (0)

#define SKIP(...)                                                                                 \
    do {                                                                                          \
        printf("  skipped: %s: ", test_case_name_);                                               \
        printf(__VA_ARGS__);                                                                      \
        printf("\n");                                                                             \
        test_case_skipped_ = 1;                                                                   \
        return;                                                                                   \
    } while (0)

#define RUN(fn)                                                                                   \
    do {                                                                                          \
        test_case_name_ = #fn;                                                                    \
        test_case_failed_ = 0;                                                                    \
        test_case_skipped_ = 0;                                                                   \
        fn();                                                                                     \
        if (test_case_failed_) {                                                                  \
            test_failed_++;                                                                       \
            printf("  FAIL %s\n", #fn);                                                           \
        } else if (test_case_skipped_) {                                                          \
            test_skipped_++;                                                                      \
        } else {                                                                                  \
            test_passed_++;                                                                       \
            if (getenv("TEST_VERBOSE")) printf("  ok   %s\n", #fn);                               \
        }                                                                                         \
        fflush(stdout);                                                                           \
    } while (0)

static inline int test_summary_named(const char *file) {
    const char *base = strrchr(file, '/');
    printf("%s: %d passed, %d failed, %d skipped\n", base ? base + 1 : file, test_passed_,
           test_failed_, test_skipped_);
    return test_failed_ ? 1 : 0;
}
#define test_summary() test_summary_named(__FILE__)

/* Relative L2 error of got vs ref (|got-ref|_2 / max(|ref|_2, tiny)). */
static inline double test_rel_l2(const float *got, const double *ref, long n) {
    double num = 0, den = 0;
    for (long i = 0; i < n; i++) {
        double d = (double)got[i] - ref[i];
        num += d * d;
        den += ref[i] * ref[i];
    }
    return sqrt(num) / (den > 1e-300 ? sqrt(den) : 1.0);
}
static inline double test_rel_l2f(const float *got, const float *ref, long n) {
    double num = 0, den = 0;
    for (long i = 0; i < n; i++) {
        double d = (double)got[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return sqrt(num) / (den > 1e-300 ? sqrt(den) : 1.0);
}
static inline double test_max_abs(const float *got, const float *ref, long n) {
    double m = 0;
    for (long i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]);
        if (d > m || d != d) m = d != d ? INFINITY : d;
    }
    return m;
}

/* Deterministic uniform random numbers in [lo, hi) (xorshift). */
static inline float test_randf(unsigned long long *s, float lo, float hi) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return lo + (hi - lo) * (float)((*s >> 40) & 0xffffff) / 16777216.0f;
}

/* Path of a committed fixture: $EASEL_FIXTURES or the source dir's tests/fixtures. */
#ifndef EASEL_SOURCE_DIR
#define EASEL_SOURCE_DIR "."
#endif
static inline const char *test_fixture(const char *name, char *buf, size_t len) {
    const char *dir = getenv("EASEL_FIXTURES");
    snprintf(buf, len, "%s/%s", dir ? dir : EASEL_SOURCE_DIR "/tests/fixtures", name);
    return buf;
}

/* A whole file, NUL-terminated (malloc'd; *len its size when len is given),
 * or NULL when it cannot be read. */
static inline char *test_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    long n = fseek(f, 0, SEEK_END) ? -1 : ftell(f);
    char *buf = n >= 0 && !fseek(f, 0, SEEK_SET) ? (char *)malloc((size_t)n + 1) : NULL;
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) free(buf), buf = NULL;
    fclose(f);
    if (buf) {
        buf[n] = 0;
        if (len) *len = (size_t)n;
    }
    return buf;
}

#endif
