/* Allocation- and write-failure injection for the fault build (see fault.h):
 * the --wrap'd allocators and write(2) count calls and fail the chosen ones;
 * image generation arms its thread (models/pipeline.c calls fault_arm). The configuration and
 * counters are deliberately process-wide (test builds only). */
#include "fault.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if EASEL_FAULTS

typedef struct {
    long alloc_n;    /* 0 = off */
    int alloc_from;  /* 1: every allocation from alloc_n on */
    size_t size_min; /* 0 = off */
    long write_n;    /* 0 = off */
    int write_from;
} fault_spec;

static fault_spec spec;
static atomic_long n_allocs, n_writes, n_injected;
static _Thread_local int armed;

/* "N" or "N+" into *n, *from; -1 if malformed. */
static int parse_count(const char *s, const char *end, long *n, int *from) {
    char *e;
    long v = strtol(s, &e, 10);
    if (e == s || v < 1) return -1;
    *from = e < end && *e == '+';
    if (*from) e++;
    *n = v;
    return e == end ? 0 : -1;
}

/* Parses one "kind:value" item of [s, end). */
static int parse_item(const char *s, const char *end, fault_spec *f) {
    const char *colon = memchr(s, ':', (size_t)(end - s));
    if (!colon) return -1;
    size_t k = (size_t)(colon - s);
    if (k == 5 && !memcmp(s, "alloc", 5))
        return parse_count(colon + 1, end, &f->alloc_n, &f->alloc_from);
    if (k == 5 && !memcmp(s, "write", 5))
        return parse_count(colon + 1, end, &f->write_n, &f->write_from);
    if (k == 4 && !memcmp(s, "size", 4)) {
        long n;
        int from;
        if (parse_count(colon + 1, end, &n, &from) || from) return -1;
        f->size_min = (size_t)n;
        return 0;
    }
    return -1;
}

static int parse_spec(const char *s, fault_spec *f) {
    memset(f, 0, sizeof *f);
    while (s && *s) {
        const char *end = strchr(s, ',');
        if (!end) end = s + strlen(s);
        if (parse_item(s, end, f)) return -1;
        s = *end ? end + 1 : end;
    }
    return 0;
}

/* Runs before main: a malformed EASEL_FAULT is ignored (and said so on stderr). */
__attribute__((constructor)) static void fault_from_env(void) {
    const char *s = getenv("EASEL_FAULT");
    static const char msg[] = "easel: ignoring malformed EASEL_FAULT\n";
    if (s && parse_spec(s, &spec)) {
        ssize_t n = write(2, msg, sizeof msg - 1);
        (void)n;
        memset(&spec, 0, sizeof spec);
    }
}

int fault_enabled(void) {
    return 1;
}

easel_err fault_configure(const char *s) {
    fault_spec f;
    if (parse_spec(s, &f)) return easel_seterr(EASEL_EINVAL, "bad fault spec '%s'", s);
    spec = f;
    atomic_store(&n_allocs, 0);
    atomic_store(&n_writes, 0);
    atomic_store(&n_injected, 0);
    return EASEL_OK;
}

void fault_arm(void) {
    armed++;
}
void fault_disarm(void) {
    if (armed > 0) armed--;
}
long fault_allocs(void) {
    return atomic_load(&n_allocs);
}
long fault_writes(void) {
    return atomic_load(&n_writes);
}
long fault_injected(void) {
    return atomic_load(&n_injected);
}

/* 1 if this allocation of size bytes is to fail. */
static int fail_alloc(size_t size) {
    if (!armed || (!spec.alloc_n && !spec.size_min)) return 0;
    long k = atomic_fetch_add(&n_allocs, 1) + 1;
    int fail = spec.alloc_n && (k == spec.alloc_n || (spec.alloc_from && k > spec.alloc_n));
    fail = fail || (spec.size_min && size >= spec.size_min);
    if (fail) atomic_fetch_add(&n_injected, 1);
    return fail;
}

void *__real_malloc(size_t n);
void *__real_calloc(size_t k, size_t n);
void *__real_realloc(void *p, size_t n);
int __real_posix_memalign(void **p, size_t align, size_t n);
void *__real_aligned_alloc(size_t align, size_t n);
char *__real_strdup(const char *s);
char *__real_strndup(const char *s, size_t n);
ssize_t __real_write(int fd, const void *buf, size_t n);

void *__wrap_malloc(size_t n) {
    if (fail_alloc(n)) return errno = ENOMEM, NULL;
    return __real_malloc(n);
}
void *__wrap_calloc(size_t k, size_t n) {
    if (fail_alloc(k * n)) return errno = ENOMEM, NULL;
    return __real_calloc(k, n);
}
void *__wrap_realloc(void *p, size_t n) {
    if (n && fail_alloc(n)) return errno = ENOMEM, NULL;
    return __real_realloc(p, n);
}
int __wrap_posix_memalign(void **p, size_t align, size_t n) {
    if (fail_alloc(n)) return ENOMEM;
    return __real_posix_memalign(p, align, n);
}
void *__wrap_aligned_alloc(size_t align, size_t n) {
    if (fail_alloc(n)) return errno = ENOMEM, NULL;
    return __real_aligned_alloc(align, n);
}
char *__wrap_strdup(const char *s) {
    if (fail_alloc(strlen(s) + 1)) return errno = ENOMEM, NULL;
    return __real_strdup(s);
}
char *__wrap_strndup(const char *s, size_t n) {
    if (fail_alloc(strnlen(s, n) + 1)) return errno = ENOMEM, NULL;
    return __real_strndup(s, n);
}

/* Async-signal-safe (the server's signal handler writes a byte to a pipe). */
ssize_t __wrap_write(int fd, const void *buf, size_t n) {
    if (spec.write_n) {
        long k = atomic_fetch_add(&n_writes, 1) + 1;
        if (k == spec.write_n || (spec.write_from && k > spec.write_n)) {
            atomic_fetch_add(&n_injected, 1);
            return errno = ENOSPC, -1;
        }
    }
    return __real_write(fd, buf, n);
}

#else /* not a fault build: nothing is wrapped */

int fault_enabled(void) {
    return 0;
}
easel_err fault_configure(const char *s) {
    (void)s;
    return easel_seterr(EASEL_EUNSUPPORTED, "fault injection needs a -DEASEL_FAULTS=ON build");
}
void fault_arm(void) {}
void fault_disarm(void) {}
long fault_allocs(void) {
    return 0;
}
long fault_writes(void) {
    return 0;
}
long fault_injected(void) {
    return 0;
}

#endif
