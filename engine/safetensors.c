/* safetensors reader and writer (see safetensors.h). The reader validates the
 * header with its own strict, schema-directed JSON parser (exact u64 integers,
 * duplicate keys and bad UTF-8 rejected) before any tensor is handed out; the
 * writer streams the caller's buffers through an atomic write (fsutil.h). */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fsutil.h"
#include "tensor.h"
#include "utf8.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host (F32 data is copied as is)"
#endif

/* ------------------------------------------------------------------ dtypes */

static const char *const dtype_names[ST_DTYPE_COUNT] = {"BOOL", "U8",  "I8",  "F8_E5M2", "F8_E4M3",
                                                        "I16",  "U16", "F16", "BF16",    "I32",
                                                        "U32",  "F32", "F64", "I64",     "U64"};
static const unsigned char dtype_sizes[ST_DTYPE_COUNT] = {1, 1, 1, 1, 1, 2, 2, 2,
                                                          2, 4, 4, 4, 8, 8, 8};

const char *st_dtype_name(st_dtype dt) {
    return (unsigned)dt < ST_DTYPE_COUNT ? dtype_names[dt] : "?";
}

size_t st_dtype_size(st_dtype dt) {
    return (unsigned)dt < ST_DTYPE_COUNT ? dtype_sizes[dt] : 0;
}

int st_dtype_parse(const char *s) {
    for (int i = 0; i < ST_DTYPE_COUNT; i++)
        if (!strcmp(s, dtype_names[i])) return i;
    return -1;
}

/* Validation bounds a non-empty tensor's product by the file size; a zero
 * dim short-cuts, since the dims before it may multiply past INT64_MAX. */
int64_t st_nelem(const st_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        if (!t->shape[i]) return 0;
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

/* prod(shape)·size with overflow checks, folded left like the reference
 * (so [0, huge] is 0 bytes but [huge, huge, 0] overflows). 0 on overflow. */
static int shape_nbytes(const uint64_t *shape, int ndim, size_t esize, uint64_t *out) {
    uint64_t n = 1;
    for (int i = 0; i < ndim; i++)
        if (__builtin_mul_overflow(n, shape[i], &n)) return 0;
    return !__builtin_mul_overflow(n, (uint64_t)esize, out);
}

/* "[2,3]" into buf (8 dims of 20 digits fit in 200 bytes). */
static const char *shape_str(const int64_t *shape, int ndim, char *buf, size_t len) {
    size_t k = (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < ndim && k < len; i++)
        k += (size_t)snprintf(buf + k, len - k, "%s%lld", i ? "," : "", (long long)shape[i]);
    if (k < len) snprintf(buf + k, len - k, "]");
    return buf;
}

/* A name made safe for a message: control bytes become '?', long names are cut. */
static const char *safe_name(const char *s, char *buf, size_t len) {
    size_t k = 0;
    for (; s[k] && k + 4 < len; k++)
        buf[k] = (unsigned char)s[k] < 0x20 || s[k] == 0x7f ? '?' : s[k];
    if (s[k]) memcpy(buf + k, "...", 3), k += 3;
    buf[k] = 0;
    return buf;
}

/* ------------------------------------------------------------ the handle */

struct st_file {
    char *path;
    const uint8_t *buf;
    size_t len;
    void *map; /* our mmap, or NULL for st_open_memory */
    uint64_t hlen;
    st_tensor *tensors; /* sorted by offset once validated */
    size_t count, cap;
    size_t *by_name;   /* indices into tensors, sorted by name */
    const char **meta; /* key, value pairs in header order */
    size_t nmeta, meta_cap;
    int have_meta;
    char *pool; /* decoded strings; the header bounds their total size */
    size_t pool_used, pool_cap;
};

void st_close(st_file *f) {
    if (!f) return;
    if (f->map) munmap(f->map, f->len);
    free(f->path);
    free(f->tensors);
    free(f->by_name);
    free(f->meta);
    free(f->pool);
    free(f);
}

size_t st_count(const st_file *f) {
    return f->count;
}
const st_tensor *st_at(const st_file *f, size_t i) {
    return i < f->count ? &f->tensors[i] : NULL;
}
size_t st_meta_count(const st_file *f) {
    return f->nmeta;
}
const char *st_path(const st_file *f) {
    return f->path;
}

int st_meta_at(const st_file *f, size_t i, const char **key, const char **value) {
    if (i >= f->nmeta) return -1;
    if (key) *key = f->meta[2 * i];
    if (value) *value = f->meta[2 * i + 1];
    return 0;
}

const char *st_meta_get(const st_file *f, const char *key) {
    for (size_t i = 0; i < f->nmeta; i++)
        if (!strcmp(f->meta[2 * i], key)) return f->meta[2 * i + 1];
    return NULL;
}

const st_tensor *st_find(const st_file *f, const char *name) {
    size_t lo = 0, hi = f->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const st_tensor *t = &f->tensors[f->by_name[mid]];
        int c = strcmp(t->name, name);
        if (!c) return t;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* --------------------------------------------------- strict JSON parsing */

/* Cursor over the header text. Primitives set a message without the file
 * name; parse_header() prefixes it (and entries prefix the tensor name). */
typedef struct {
    const char *s;
    size_t n, i;
    st_file *f;
} jp;

static easel_err jerr(const jp *p, const char *what) {
    if (p->i >= p->n)
        return easel_seterr(EASEL_EFORMAT, "invalid JSON: header ends where %s was expected", what);
    unsigned char c = (unsigned char)p->s[p->i];
    if (c >= 0x20 && c < 0x7f)
        return easel_seterr(EASEL_EFORMAT,
                            "invalid JSON at header byte %zu: expected %s, found '%c'", p->i, what,
                            c);
    return easel_seterr(EASEL_EFORMAT,
                        "invalid JSON at header byte %zu: expected %s, found byte 0x%02x", p->i,
                        what, c);
}

static void ws(jp *p) {
    while (p->i < p->n &&
           (p->s[p->i] == ' ' || p->s[p->i] == '\t' || p->s[p->i] == '\n' || p->s[p->i] == '\r'))
        p->i++;
}

/* Skips whitespace; true (and consumed) if the next character is c. */
static int accept(jp *p, char c) {
    ws(p);
    if (p->i < p->n && p->s[p->i] == c) {
        p->i++;
        return 1;
    }
    return 0;
}

static easel_err expect(jp *p, char c, const char *what) {
    return accept(p, c) ? 0 : jerr(p, what);
}

static int hex4(const char *s, unsigned *out) {
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
        char c = s[k];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0) return 0;
        v = v * 16 + (unsigned)d;
    }
    *out = v;
    return 1;
}

/* \uXXXX (and its low surrogate if it is a high one) at s[i] ('\\'): code point or error. */
static easel_err unicode_escape(jp *p, unsigned *cp) {
    unsigned hi = 0, lo = 0;
    if (p->i + 6 > p->n || !hex4(p->s + p->i + 2, &hi))
        return easel_seterr(EASEL_EFORMAT, "invalid JSON at header byte %zu: bad \\u escape", p->i);
    p->i += 6;
    if (hi >= 0xdc00 && hi <= 0xdfff)
        return easel_seterr(EASEL_EFORMAT, "invalid JSON at header byte %zu: lone low surrogate",
                            p->i - 6);
    if (hi >= 0xd800 && hi <= 0xdbff) {
        if (p->i + 6 > p->n || p->s[p->i] != '\\' || p->s[p->i + 1] != 'u' ||
            !hex4(p->s + p->i + 2, &lo) || lo < 0xdc00 || lo > 0xdfff)
            return easel_seterr(EASEL_EFORMAT,
                                "invalid JSON at header byte %zu: unpaired surrogate", p->i - 6);
        p->i += 6;
        hi = 0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00);
    }
    if (hi == 0)
        return easel_seterr(EASEL_EFORMAT,
                            "invalid JSON at header byte %zu: \\u0000 is not allowed", p->i - 6);
    *cp = hi;
    return 0;
}

static size_t put_utf8(char *d, unsigned cp) {
    size_t n = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
    static const unsigned char lead[5] = {0, 0, 0xc0, 0xe0, 0xf0};
    for (size_t k = n - 1; k > 0; k--, cp >>= 6)
        d[k] = (char)(0x80 | (cp & 0x3f));
    d[0] = (char)(lead[n] | cp);
    return n;
}

/* One escape at s[i] == '\\' appended to d; returns bytes written or 0 on error. */
static size_t escape(jp *p, char *d) {
    if (p->i + 1 >= p->n)
        return easel_seterr(EASEL_EFORMAT, "invalid JSON: unterminated string"), 0;
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    const char *k = memchr(from, p->s[p->i + 1], 8);
    if (k) {
        d[0] = to[k - from];
        p->i += 2;
        return 1;
    }
    if (p->s[p->i + 1] != 'u')
        return easel_seterr(EASEL_EFORMAT, "invalid JSON at header byte %zu: invalid escape", p->i),
               0;
    unsigned cp = 0;
    if (unicode_escape(p, &cp)) return 0;
    return put_utf8(d, cp);
}

/* A JSON string (after optional whitespace) decoded into the pool. The
 * header was checked to be UTF-8, so raw bytes are copied as they are. */
static easel_err parse_string(jp *p, const char **out, const char *what) {
    ws(p);
    if (p->i >= p->n || p->s[p->i] != '"') return jerr(p, what);
    p->i++;
    st_file *f = p->f;
    char *d = f->pool + f->pool_used;
    size_t k = 0;
    for (;;) {
        if (p->i >= p->n) return easel_seterr(EASEL_EFORMAT, "invalid JSON: unterminated string");
        unsigned char c = (unsigned char)p->s[p->i];
        if (c == '"') break;
        if (c < 0x20)
            return easel_seterr(EASEL_EFORMAT,
                                "invalid JSON at header byte %zu: control character in string",
                                p->i);
        if (c != '\\') {
            d[k++] = (char)c;
            p->i++;
            continue;
        }
        size_t w = escape(p, d + k);
        if (!w) return EASEL_EFORMAT;
        k += w;
    }
    p->i++;
    d[k] = 0;
    f->pool_used += k + 1; /* decoded+NUL never exceeds the raw quoted length */
    *out = d;
    return 0;
}

/* A non-negative integer that fits in u64. */
static easel_err parse_u64(jp *p, uint64_t *out) {
    ws(p);
    size_t at = p->i;
    if (at < p->n && p->s[at] == '-')
        return easel_seterr(EASEL_EFORMAT, "negative number at header byte %zu (must be >= 0)", at);
    if (at >= p->n || p->s[at] < '0' || p->s[at] > '9') return jerr(p, "an integer");
    if (p->s[at] == '0' && at + 1 < p->n && p->s[at + 1] >= '0' && p->s[at + 1] <= '9')
        return easel_seterr(EASEL_EFORMAT,
                            "invalid JSON at header byte %zu: number with a leading zero", at);
    uint64_t v = 0;
    while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9') {
        if (__builtin_mul_overflow(v, 10, &v) ||
            __builtin_add_overflow(v, (uint64_t)(p->s[p->i] - '0'), &v))
            return easel_seterr(EASEL_EFORMAT, "integer at header byte %zu overflows 64 bits", at);
        p->i++;
    }
    if (p->i < p->n && (p->s[p->i] == '.' || p->s[p->i] == 'e' || p->s[p->i] == 'E'))
        return easel_seterr(EASEL_EFORMAT, "number at header byte %zu is not an integer", at);
    *out = v;
    return 0;
}

/* [u64, ...]: stores up to max values, counts them all in *count. */
static easel_err parse_u64_array(jp *p, uint64_t *vals, int max, int *count) {
    *count = 0;
    if (expect(p, '[', "'['")) return EASEL_EFORMAT;
    if (accept(p, ']')) return 0;
    do {
        uint64_t v = 0;
        if (parse_u64(p, &v)) return EASEL_EFORMAT;
        if (*count < max) vals[*count] = v;
        if (*count < 1 << 30) (*count)++;
    } while (accept(p, ','));
    return expect(p, ']', "',' or ']'");
}

static easel_err parse_shape(jp *p, st_tensor *t) {
    uint64_t dims[ST_MAX_DIMS] = {0};
    int n = 0;
    if (parse_u64_array(p, dims, ST_MAX_DIMS, &n)) return easel_wraperr(EASEL_EFORMAT, "shape");
    if (n > ST_MAX_DIMS)
        return easel_seterr(EASEL_EFORMAT, "unsupported rank %d (at most %d dimensions)", n,
                            ST_MAX_DIMS);
    for (int i = 0; i < n; i++) {
        if (dims[i] > (uint64_t)INT64_MAX)
            return easel_seterr(EASEL_EFORMAT, "shape dimension %llu is too large",
                                (unsigned long long)dims[i]);
        t->shape[i] = (int64_t)dims[i];
    }
    t->ndim = n;
    return 0;
}

static easel_err parse_offsets(jp *p, st_tensor *t) {
    uint64_t v[2] = {0, 0};
    int n = 0;
    if (parse_u64_array(p, v, 2, &n)) return easel_wraperr(EASEL_EFORMAT, "data_offsets");
    if (n != 2)
        return easel_seterr(EASEL_EFORMAT, "data_offsets must have 2 elements [begin, end], not %d",
                            n);
    if (v[1] < v[0])
        return easel_seterr(EASEL_EFORMAT, "data_offsets [%llu, %llu]: end is before begin",
                            (unsigned long long)v[0], (unsigned long long)v[1]);
    t->begin = v[0];
    t->end = v[1];
    return 0;
}

static easel_err parse_field(jp *p, st_tensor *t, unsigned *seen) {
    const char *key, *dt;
    if (parse_string(p, &key, "a key string") || expect(p, ':', "':'")) return EASEL_EFORMAT;
    unsigned bit = !strcmp(key, "dtype")          ? 1
                   : !strcmp(key, "shape")        ? 2
                   : !strcmp(key, "data_offsets") ? 4
                                                  : 0;
    char kb[64];
    if (!bit)
        return easel_seterr(EASEL_EFORMAT, "unknown key \"%s\"", safe_name(key, kb, sizeof kb));
    if (*seen & bit) return easel_seterr(EASEL_EFORMAT, "duplicate key \"%s\"", key);
    *seen |= bit;
    if (bit == 2) return parse_shape(p, t);
    if (bit == 4) return parse_offsets(p, t);
    if (parse_string(p, &dt, "a dtype string")) return easel_wraperr(EASEL_EFORMAT, "dtype");
    int d = st_dtype_parse(dt);
    if (d < 0)
        return easel_seterr(EASEL_EFORMAT, "unknown dtype \"%s\"", safe_name(dt, kb, sizeof kb));
    t->dtype = (st_dtype)d;
    return 0;
}

static easel_err push_tensor(st_file *f, st_tensor **out) {
    if (f->count == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 64;
        st_tensor *n = realloc(f->tensors, cap * sizeof *n);
        if (!n) return easel_seterr(EASEL_ENOMEM, "out of memory for %zu tensors", cap);
        f->tensors = n;
        f->cap = cap;
    }
    *out = &f->tensors[f->count++];
    memset(*out, 0, sizeof **out);
    return 0;
}

/* {"dtype": ..., "shape": [...], "data_offsets": [b, e]} for tensor name. */
static easel_err parse_entry(jp *p, const char *name) {
    st_tensor *t = NULL;
    easel_err e = push_tensor(p->f, &t);
    if (e) return e;
    t->name = name;
    unsigned seen = 0;
    if (!accept(p, '{')) {
        e = jerr(p, "an object");
    } else if (!accept(p, '}')) {
        do
            e = parse_field(p, t, &seen);
        while (!e && accept(p, ','));
        if (!e) e = expect(p, '}', "',' or '}'");
    }
    if (!e && seen != 7)
        e = easel_seterr(EASEL_EFORMAT, "missing \"%s\"",
                         !(seen & 1)   ? "dtype"
                         : !(seen & 2) ? "shape"
                                       : "data_offsets");
    if (e != EASEL_EFORMAT) return e;
    char nb[160];
    return easel_wraperr(e, "tensor \"%s\"", safe_name(name, nb, sizeof nb));
}

static easel_err push_meta(st_file *f, const char *k, const char *v) {
    if (f->nmeta == f->meta_cap) {
        size_t cap = f->meta_cap ? f->meta_cap * 2 : 16;
        const char **n = realloc(f->meta, cap * 2 * sizeof *n);
        if (!n) return easel_seterr(EASEL_ENOMEM, "out of memory for metadata");
        f->meta = n;
        f->meta_cap = cap;
    }
    f->meta[2 * f->nmeta] = k;
    f->meta[2 * f->nmeta + 1] = v;
    f->nmeta++;
    return 0;
}

/* __metadata__: an object of string -> string (null is accepted as "none",
 * as the reference's Option<HashMap> does). */
static easel_err parse_meta(jp *p) {
    if (p->f->have_meta) return easel_seterr(EASEL_EFORMAT, "duplicate __metadata__");
    p->f->have_meta = 1;
    ws(p);
    if (p->i + 4 <= p->n && !memcmp(p->s + p->i, "null", 4)) return p->i += 4, 0;
    if (!accept(p, '{')) return easel_wraperr(jerr(p, "an object"), "__metadata__");
    if (accept(p, '}')) return 0;
    do {
        const char *k, *v;
        char kb[64];
        if (parse_string(p, &k, "a key string") || expect(p, ':', "':'"))
            return easel_wraperr(EASEL_EFORMAT, "__metadata__");
        if (parse_string(p, &v, "a string value"))
            return easel_wraperr(EASEL_EFORMAT, "__metadata__ value for \"%s\" is not a string",
                                 safe_name(k, kb, sizeof kb));
        easel_err e = push_meta(p->f, k, v);
        if (e) return e;
    } while (accept(p, ','));
    return expect(p, '}', "',' or '}'") ? easel_wraperr(EASEL_EFORMAT, "__metadata__") : 0;
}

static easel_err parse_member(jp *p) {
    const char *key;
    if (parse_string(p, &key, "a tensor name string") || expect(p, ':', "':'"))
        return EASEL_EFORMAT;
    return !strcmp(key, "__metadata__") ? parse_meta(p) : parse_entry(p, key);
}

/* The whole header: one object, then only whitespace. The schema is fixed,
 * so nesting never goes deeper than three levels and there is no recursion. */
static easel_err parse_header(st_file *f, const char *s, size_t n) {
    jp p = {s, n, 0, f};
    ws(&p); /* the reference accepts leading whitespace (its '{' check is not enabled) */
    if (p.i >= n || s[p.i] != '{')
        return easel_seterr(EASEL_EFORMAT, "header is not a JSON object (does not start with '{')");
    p.i++;
    if (!accept(&p, '}')) {
        easel_err e;
        do
            if ((e = parse_member(&p))) return e;
        while (accept(&p, ','));
        if (expect(&p, '}', "',' or '}'")) return EASEL_EFORMAT;
    }
    ws(&p);
    if (p.i != n)
        return easel_seterr(EASEL_EFORMAT,
                            "trailing characters after the header object at header byte %zu", p.i);
    return 0;
}

/* ---------------------------------------------------------- validation */

/* qsort_r comparators (glibc argument order: a, b, context). */
static int cmp_by_name(const void *a, const void *b, void *ctx) {
    const st_tensor *t = ctx;
    return strcmp(t[*(const size_t *)a].name, t[*(const size_t *)b].name);
}

static int cmp_by_offset(const void *a, const void *b) {
    const st_tensor *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int cmp_meta_key(const void *a, const void *b, void *ctx) {
    const char **m = ctx;
    return strcmp(m[2 * *(const size_t *)a], m[2 * *(const size_t *)b]);
}

/* Builds by_name (indices sorted by name) and rejects duplicate names. */
static easel_err index_names(st_file *f) {
    f->by_name = malloc((f->count ? f->count : 1) * sizeof *f->by_name);
    if (!f->by_name) return easel_seterr(EASEL_ENOMEM, "out of memory indexing tensors");
    for (size_t i = 0; i < f->count; i++)
        f->by_name[i] = i;
    qsort_r(f->by_name, f->count, sizeof *f->by_name, cmp_by_name, f->tensors);
    char nb[160];
    for (size_t i = 1; i < f->count; i++)
        if (!strcmp(f->tensors[f->by_name[i]].name, f->tensors[f->by_name[i - 1]].name))
            return easel_seterr(EASEL_EFORMAT, "duplicate tensor name \"%s\"",
                                safe_name(f->tensors[f->by_name[i]].name, nb, sizeof nb));
    return 0;
}

static easel_err check_meta_keys(st_file *f) {
    if (f->nmeta < 2) return 0;
    size_t *idx = malloc(f->nmeta * sizeof *idx);
    if (!idx) return easel_seterr(EASEL_ENOMEM, "out of memory checking metadata");
    for (size_t i = 0; i < f->nmeta; i++)
        idx[i] = i;
    qsort_r(idx, f->nmeta, sizeof *idx, cmp_meta_key, (void *)f->meta);
    easel_err e = 0;
    char kb[64];
    for (size_t i = 1; i < f->nmeta && !e; i++)
        if (!strcmp(f->meta[2 * idx[i]], f->meta[2 * idx[i - 1]]))
            e = easel_seterr(EASEL_EFORMAT, "duplicate __metadata__ key \"%s\"",
                             safe_name(f->meta[2 * idx[i]], kb, sizeof kb));
    free(idx);
    return e;
}

static easel_err tensor_err(const st_tensor *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static easel_err tensor_err(const st_tensor *t, const char *fmt, ...) {
    char msg[512], nb[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return easel_seterr(EASEL_EFORMAT, "tensor \"%s\": %s", safe_name(t->name, nb, sizeof nb), msg);
}

/* prod(shape)·size(dtype) == end - begin for every tensor. */
static easel_err check_sizes(const st_file *f) {
    for (size_t i = 0; i < f->count; i++) {
        const st_tensor *t = &f->tensors[i];
        uint64_t dims[ST_MAX_DIMS], nbytes;
        char sb[200];
        for (int k = 0; k < t->ndim; k++)
            dims[k] = (uint64_t)t->shape[k];
        shape_str(t->shape, t->ndim, sb, sizeof sb);
        if (!shape_nbytes(dims, t->ndim, st_dtype_size(t->dtype), &nbytes))
            return tensor_err(t, "size of shape %s x %s overflows 64 bits", sb,
                              st_dtype_name(t->dtype));
        if (nbytes != t->end - t->begin)
            return tensor_err(t,
                              "data_offsets [%llu, %llu] do not match shape %s x %s (%llu bytes)",
                              (unsigned long long)t->begin, (unsigned long long)t->end, sb,
                              st_dtype_name(t->dtype), (unsigned long long)nbytes);
    }
    return 0;
}

/* Sorted by offset, the tensors tile [0, data size) exactly. */
static easel_err check_tiling(st_file *f) {
    if (f->count > 1) qsort(f->tensors, f->count, sizeof *f->tensors, cmp_by_offset);
    uint64_t off = 0;
    for (size_t i = 0; i < f->count; i++) {
        const st_tensor *t = &f->tensors[i];
        if (t->begin > off)
            return tensor_err(t,
                              "data_offsets [%llu, %llu] leave a gap: the data before it ends at "
                              "byte %llu",
                              (unsigned long long)t->begin, (unsigned long long)t->end,
                              (unsigned long long)off);
        if (t->begin < off)
            return tensor_err(t,
                              "data_offsets [%llu, %llu] overlap the previous tensor (which ends "
                              "at byte %llu)",
                              (unsigned long long)t->begin, (unsigned long long)t->end,
                              (unsigned long long)off);
        off = t->end;
    }
    uint64_t have = f->len - 8 - f->hlen;
    if (off != have)
        return easel_seterr(EASEL_EFORMAT,
                            "data region is %llu bytes but the tensors cover %llu "
                            "(the data must end exactly at the end of the file)",
                            (unsigned long long)have, (unsigned long long)off);
    return 0;
}

static easel_err check_prefix(st_file *f) {
    if (f->len < 8)
        return easel_seterr(EASEL_EFORMAT,
                            "file is %zu bytes, smaller than the 8-byte header "
                            "length",
                            f->len);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = n << 8 | f->buf[i];
    if (n > ST_MAX_HEADER)
        return easel_seterr(EASEL_EFORMAT, "header length %llu exceeds the limit of %llu bytes",
                            (unsigned long long)n, ST_MAX_HEADER);
    if (n > f->len - 8)
        return easel_seterr(EASEL_EFORMAT,
                            "header length %llu runs past the end of the file "
                            "(%zu bytes)",
                            (unsigned long long)n, f->len);
    size_t bad;
    if (!utf8_valid(f->buf + 8, (size_t)n, &bad))
        return easel_seterr(EASEL_EFORMAT, "header is not valid UTF-8 (at header byte %zu)", bad);
    f->hlen = n;
    return 0;
}

static easel_err validate(st_file *f) {
    easel_err e = check_prefix(f);
    if (e) return e;
    f->pool_cap = (size_t)f->hlen + 1;
    f->pool = malloc(f->pool_cap);
    if (!f->pool)
        return easel_seterr(EASEL_ENOMEM, "out of memory for a %llu-byte header",
                            (unsigned long long)f->hlen);
    /* Each decoded string plus its NUL fits in its raw quoted text, and
     * strings do not overlap, so hlen + 1 bytes hold them all. */
    if ((e = parse_header(f, (const char *)f->buf + 8, (size_t)f->hlen))) return e;
    if ((e = index_names(f)) || (e = check_meta_keys(f)) || (e = check_sizes(f)) ||
        (e = check_tiling(f)))
        return e;
    for (size_t i = 0; i < f->count; i++)
        f->tensors[i].data = f->buf + 8 + f->hlen + f->tensors[i].begin;
    /* by_name held indices into the parse order; rebuild for the sorted array. */
    for (size_t i = 0; i < f->count; i++)
        f->by_name[i] = i;
    qsort_r(f->by_name, f->count, sizeof *f->by_name, cmp_by_name, f->tensors);
    return 0;
}

static easel_err load(const void *buf, size_t len, const char *name, void *map, st_file **out) {
    st_file *f = calloc(1, sizeof *f);
    char *path = strdup(name);
    if (!f || !path) {
        free(f);
        free(path);
        if (map) munmap(map, len);
        return easel_seterr(EASEL_ENOMEM, "%s: out of memory", name);
    }
    f->path = path;
    f->buf = buf;
    f->len = len;
    f->map = map;
    easel_err e = validate(f);
    if (e) {
        easel_wraperr(e, "%s", name);
        st_close(f);
        return e;
    }
    *out = f;
    return 0;
}

easel_err st_open_memory(const void *buf, size_t len, const char *name, st_file **out) {
    *out = NULL;
    if (!buf && len) return easel_seterr(EASEL_EINVAL, "st_open_memory: NULL buffer");
    return load(buf ? buf : "", len, name ? name : "<memory>", NULL, out);
}

/* The mapping stays valid while the file is open; a file truncated by
 * someone else meanwhile would fault (SIGBUS), as with any mmap reader. */
easel_err st_open(const char *path, st_file **out) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return easel_seterr(errno == ENOENT ? EASEL_ENOTFOUND : EASEL_EIO, "%s: %s", path,
                            strerror(errno));
    struct stat st;
    if (fstat(fd, &st)) {
        int err = errno;
        close(fd);
        return easel_seterr(EASEL_EIO, "%s: %s", path, strerror(err));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return easel_seterr(EASEL_EIO, "%s: %s", path,
                            S_ISDIR(st.st_mode) ? strerror(EISDIR) : "not a regular file");
    }
    size_t len = (size_t)st.st_size;
    if (len < 8) {
        close(fd);
        return easel_seterr(EASEL_EFORMAT,
                            "%s: file is %zu bytes, smaller than the 8-byte header "
                            "length",
                            path, len);
    }
    void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    int err = errno;
    close(fd);
    if (map == MAP_FAILED)
        return easel_seterr(err == ENOMEM ? EASEL_ENOMEM : EASEL_EIO, "%s: mmap: %s", path,
                            strerror(err));
    return load(map, len, path, map, out);
}

easel_err st_read_f32(const st_file *f, const st_tensor *t, float *dst) {
    int64_t n = st_nelem(t);
    const uint8_t *s = t->data;
    char nb[160];
    switch (t->dtype) {
    case ST_F32:
        if (n) memcpy(dst, s, (size_t)n * 4);
        return 0;
    case ST_F16:
        for (int64_t i = 0; i < n; i++)
            dst[i] = f16_to_f32((uint16_t)(s[2 * i] | s[2 * i + 1] << 8));
        return 0;
    case ST_BF16:
        for (int64_t i = 0; i < n; i++)
            dst[i] = bf16_to_f32((uint16_t)(s[2 * i] | s[2 * i + 1] << 8));
        return 0;
    default:
        return easel_seterr(EASEL_EUNSUPPORTED,
                            "%s: tensor \"%s\": dtype %s cannot be read as "
                            "f32 (F32, F16 and BF16 can)",
                            f ? f->path : "?", safe_name(t->name, nb, sizeof nb),
                            st_dtype_name(t->dtype));
    }
}

/* --------------------------------------------------------------- writer */

typedef struct {
    char *name;
    st_dtype dt;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;
    uint64_t nbytes;
} st_wentry;

struct st_writer {
    st_wentry *e;
    size_t n, cap;
    char **meta; /* key, value pairs (copies) */
    size_t nmeta, meta_cap;
};

st_writer *st_writer_create(void) {
    return calloc(1, sizeof(st_writer));
}

void st_writer_free(st_writer *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n; i++)
        free(w->e[i].name);
    for (size_t i = 0; i < 2 * w->nmeta; i++)
        free(w->meta[i]);
    free(w->e);
    free(w->meta);
    free(w);
}

static int is_utf8_str(const char *s) {
    size_t bad;
    return utf8_valid((const uint8_t *)s, strlen(s), &bad);
}

static easel_err writer_check(const st_writer *w, const char *name, st_dtype dt, int ndim,
                              const int64_t *shape, const void *data, uint64_t *nbytes) {
    if (!name || !is_utf8_str(name) || !strcmp(name, "__metadata__"))
        return easel_seterr(EASEL_EINVAL, "st_writer_add: invalid tensor name");
    if ((unsigned)dt >= ST_DTYPE_COUNT || ndim < 0 || ndim > ST_MAX_DIMS || (ndim && !shape))
        return easel_seterr(EASEL_EINVAL, "st_writer_add: tensor \"%s\": bad dtype or rank", name);
    uint64_t dims[ST_MAX_DIMS];
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return easel_seterr(EASEL_EINVAL, "st_writer_add: tensor \"%s\": negative dimension",
                                name);
        dims[i] = (uint64_t)shape[i];
    }
    if (!shape_nbytes(dims, ndim, st_dtype_size(dt), nbytes) || *nbytes > (uint64_t)INT64_MAX)
        return easel_seterr(EASEL_EINVAL, "st_writer_add: tensor \"%s\": size overflows", name);
    if (*nbytes && !data)
        return easel_seterr(EASEL_EINVAL, "st_writer_add: tensor \"%s\": NULL data", name);
    for (size_t i = 0; i < w->n; i++)
        if (!strcmp(w->e[i].name, name))
            return easel_seterr(EASEL_EINVAL, "st_writer_add: duplicate tensor name \"%s\"", name);
    return 0;
}

easel_err st_writer_add(st_writer *w, const char *name, st_dtype dt, int ndim, const int64_t *shape,
                        const void *data) {
    uint64_t nbytes = 0;
    easel_err e = writer_check(w, name, dt, ndim, shape, data, &nbytes);
    if (e) return e;
    if (w->n == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 64;
        st_wentry *n = realloc(w->e, cap * sizeof *n);
        if (!n) return easel_seterr(EASEL_ENOMEM, "st_writer_add: out of memory");
        w->e = n;
        w->cap = cap;
    }
    st_wentry *x = &w->e[w->n];
    memset(x, 0, sizeof *x);
    if (!(x->name = strdup(name)))
        return easel_seterr(EASEL_ENOMEM, "st_writer_add: out of memory");
    x->dt = dt;
    x->ndim = ndim;
    if (ndim) memcpy(x->shape, shape, (size_t)ndim * sizeof *shape);
    x->data = data;
    x->nbytes = nbytes;
    w->n++;
    return 0;
}

easel_err st_writer_meta(st_writer *w, const char *key, const char *value) {
    if (!key || !value || !is_utf8_str(key) || !is_utf8_str(value))
        return easel_seterr(EASEL_EINVAL, "st_writer_meta: key and value must be UTF-8 strings");
    for (size_t i = 0; i < w->nmeta; i++)
        if (!strcmp(w->meta[2 * i], key))
            return easel_seterr(EASEL_EINVAL, "st_writer_meta: duplicate key \"%s\"", key);
    if (w->nmeta == w->meta_cap) {
        size_t cap = w->meta_cap ? w->meta_cap * 2 : 8;
        char **n = realloc(w->meta, cap * 2 * sizeof *n);
        if (!n) return easel_seterr(EASEL_ENOMEM, "st_writer_meta: out of memory");
        w->meta = n;
        w->meta_cap = cap;
    }
    char *k = strdup(key), *v = strdup(value);
    if (!k || !v) {
        free(k);
        free(v);
        return easel_seterr(EASEL_ENOMEM, "st_writer_meta: out of memory");
    }
    w->meta[2 * w->nmeta] = k;
    w->meta[2 * w->nmeta + 1] = v;
    w->nmeta++;
    return 0;
}

/* A growing string; oom is sticky and checked once at the end. */
typedef struct {
    char *p;
    size_t n, cap;
    int oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
    char tmp[64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0) sb_put(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* A JSON string literal: escapes quote, backslash and control bytes. */
static void sb_jstr(sbuf *b, const char *s) {
    sb_put(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            sb_put(b, e, 2);
        } else if (c < 0x20) {
            sb_printf(b, "\\u%04x", c);
        } else {
            sb_put(b, (const char *)&c, 1);
        }
    }
    sb_put(b, "\"", 1);
}

static void build_header(const st_writer *w, sbuf *b) {
    sb_put(b, "{", 1);
    if (w->nmeta) {
        sb_put(b, "\"__metadata__\":{", 16);
        for (size_t i = 0; i < w->nmeta; i++) {
            if (i) sb_put(b, ",", 1);
            sb_jstr(b, w->meta[2 * i]);
            sb_put(b, ":", 1);
            sb_jstr(b, w->meta[2 * i + 1]);
        }
        sb_put(b, "}", 1);
    }
    uint64_t off = 0;
    for (size_t i = 0; i < w->n; i++) {
        const st_wentry *x = &w->e[i];
        if (i || w->nmeta) sb_put(b, ",", 1);
        sb_jstr(b, x->name);
        sb_printf(b, ":{\"dtype\":\"%s\",\"shape\":[", st_dtype_name(x->dt));
        for (int k = 0; k < x->ndim; k++)
            sb_printf(b, "%s%lld", k ? "," : "", (long long)x->shape[k]);
        sb_printf(b, "],\"data_offsets\":[%llu,", (unsigned long long)off);
        off += x->nbytes;
        sb_printf(b, "%llu]}", (unsigned long long)off);
    }
    sb_put(b, "}", 1);
    while (!b->oom && b->n % 8)
        sb_put(b, " ", 1); /* the reference pads with spaces to 8 */
}

/* write() until done; chunks stay below the kernel's ~2 GiB per-call cap. */
static easel_err write_file(const st_writer *w, const sbuf *h, fs_atomic *f) {
    uint8_t len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (uint8_t)((uint64_t)h->n >> (8 * i));
    easel_err e = fs_atomic_write(f, len8, 8);
    if (!e) e = fs_atomic_write(f, h->p, h->n);
    for (size_t i = 0; i < w->n && !e; i++)
        e = fs_atomic_write(f, w->e[i].data, w->e[i].nbytes);
    return e;
}

easel_err st_writer_save(st_writer *w, const char *path) {
    sbuf h = {0};
    build_header(w, &h);
    if (h.oom)
        return free(h.p), easel_seterr(EASEL_ENOMEM, "%s: out of memory for the header", path);
    if (h.n > ST_MAX_HEADER)
        return free(h.p),
               easel_seterr(EASEL_EINVAL, "%s: header of %zu bytes is too large", path, h.n);
    fs_atomic f;
    easel_err e = fs_atomic_open(&f, path);
    if (e) {
        free(h.p);
        return easel_wraperr(e, "writing safetensors");
    }
    e = write_file(w, &h, &f);
    free(h.p);
    if (e)
        fs_atomic_abort(&f);
    else
        e = fs_atomic_commit(&f); /* fsync, rename, directory fsync */
    return e ? easel_wraperr(e, "writing safetensors") : EASEL_OK;
}
