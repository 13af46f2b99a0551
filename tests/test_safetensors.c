/* Tests for engine/safetensors.c: valid hand-built files (every dtype, 0-rank,
 * empty tensors, metadata, escapes), f16/bf16 conversion against known bit
 * patterns, the writer round trip, one malformed file per validation check,
 * every truncation of a valid file, and `easel inspect` exit codes. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine/safetensors.h"
#include "test.h"

static char tmpdir[256];
static char easel_bin[1024];

/* 8-byte little-endian length + header + dlen bytes (data, or a pattern if NULL). */
static uint8_t *mkfile(const char *hdr, size_t hlen, const void *data, size_t dlen, size_t *len) {
    *len = 8 + hlen + dlen;
    uint8_t *b = malloc(*len ? *len : 1);
    if (!b) return NULL;
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    memcpy(b + 8, hdr, hlen);
    for (size_t i = 0; i < dlen; i++)
        b[8 + hlen + i] = data ? ((const uint8_t *)data)[i] : (uint8_t)(i * 7 + 1);
    return b;
}

/* Opens hdr + dlen pattern bytes from memory; the buffer is kept in *keep. */
static easel_err open_hdr(const char *hdr, size_t dlen, st_file **f, uint8_t **keep) {
    size_t len;
    *keep = mkfile(hdr, strlen(hdr), NULL, dlen, &len);
    if (!*keep) return EASEL_ENOMEM;
    return st_open_memory(*keep, len, "t.safetensors", f);
}

/* Rejection of hdr: returns the code; msg copied to buf. */
static easel_err reject(const char *hdr, size_t dlen, char *buf, size_t blen, int *leaked) {
    st_file *f = (st_file *)1;
    uint8_t *b;
    easel_err e = open_hdr(hdr, dlen, &f, &b);
    snprintf(buf, blen, "%s", easel_errmsg());
    *leaked = f != NULL;
    if (!e) st_close(f);
    free(b);
    return e;
}

/* A malformed header must fail with EASEL_EFORMAT, a NULL handle, and a
 * message naming the file and containing k1 (the check) and k2 (the tensor). */
#define BAD(hdr, dlen, k1, k2)                                                                     \
    do {                                                                                           \
        char m_[1024];                                                                             \
        int leaked_;                                                                               \
        easel_err e_ = reject(hdr, dlen, m_, sizeof m_, &leaked_);                                 \
        CHECK(e_ == EASEL_EFORMAT && !leaked_, "%s: code %d (%s)", hdr, e_, m_);                   \
        CHECK(!strncmp(m_, "t.safetensors: ", 15), "no file name: %s", m_);                        \
        CHECK(strstr(m_, k1) != NULL, "'%s' not in '%s'", k1, m_);                                 \
        CHECK(k2 == NULL || strstr(m_, k2 ? k2 : "") != NULL, "'%s' not in '%s'", k2 ? k2 : "",    \
              m_);                                                                                 \
    } while (0)

/* test.h's REQUIRE evaluates its condition twice: side effects go through OK. */
#define OK(expr, ...)                                                                              \
    do {                                                                                           \
        int ok_ = (int)(expr);                                                                     \
        REQUIRE(ok_ == 0, __VA_ARGS__);                                                            \
    } while (0)

#define F32_2 "\"dtype\":\"F32\",\"shape\":[2]"

/* ---------------------------------------------------------------- valid */

static void test_every_dtype(void) {
    static const char *names[] = {"BOOL", "U8",  "I8",  "F8_E5M2", "F8_E4M3", "I16", "U16", "F16",
                                  "BF16", "I32", "U32", "F32",     "F64",     "I64", "U64"};
    static const size_t sizes[] = {1, 1, 1, 1, 1, 2, 2, 2, 2, 4, 4, 4, 8, 8, 8};
    char hdr[4096];
    size_t k = (size_t)snprintf(hdr, sizeof hdr, "{");
    uint64_t off = 0;
    /* listed in reverse offset order: iteration must still follow offsets */
    for (int i = 14; i >= 0; i--) {
        uint64_t b = 0;
        for (int j = 0; j < i; j++)
            b += 3 * sizes[j];
        k +=
            (size_t)snprintf(hdr + k, sizeof hdr - k,
                             "%s\"t_%s\": {\"dtype\": \"%s\", \"shape\": [3, 1], \"data_offsets\": "
                             "[%llu, %llu]}",
                             i == 14 ? "" : ", ", names[i], names[i], (unsigned long long)b,
                             (unsigned long long)(b + 3 * sizes[i]));
        off += 3 * sizes[i];
    }
    snprintf(hdr + k, sizeof hdr - k, "}   ");
    st_file *f;
    uint8_t *buf;
    easel_err e = open_hdr(hdr, off, &f, &buf);
    REQUIRE(e == 0, "open: %s", easel_errmsg());
    CHECK(st_count(f) == 15, "count %zu", st_count(f));
    const uint8_t *data = buf + 8 + strlen(hdr);
    for (int i = 0; i < 15 && i < (int)st_count(f); i++) {
        const st_tensor *t = st_at(f, (size_t)i);
        char name[32];
        snprintf(name, sizeof name, "t_%s", names[i]);
        CHECK(!strcmp(t->name, name), "order %d: %s", i, t->name);
        CHECK(st_find(f, name) == t, "find %s", name);
        CHECK((int)t->dtype == i && st_dtype_size(t->dtype) == sizes[i], "dtype %d", i);
        CHECK(!strcmp(st_dtype_name(t->dtype), names[i]) && st_dtype_parse(names[i]) == i, "name");
        CHECK(t->ndim == 2 && t->shape[0] == 3 && t->shape[1] == 1 && st_nelem(t) == 3, "shape");
        CHECK(t->end - t->begin == 3 * sizes[i], "bytes");
        CHECK((const uint8_t *)t->data == data + t->begin, "data pointer");
    }
    CHECK(st_find(f, "t_F33") == NULL && st_at(f, 15) == NULL, "lookups out of range");
    CHECK(st_dtype_parse("f32") == -1 && st_dtype_parse("") == -1, "dtype parse is exact");
    st_close(f);
    free(buf);
}

static void test_scalar_empty_and_padding(void) {
    st_file *f;
    uint8_t *buf;
    /* 0-rank tensor (4 bytes), empty tensors of several shapes, one at the very end */
    const char *h =
        "{\"e1\":{\"dtype\":\"F16\",\"shape\":[0],\"data_offsets\":[0,0]},"
        "\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},"
        "\"e2\":{\"dtype\":\"F64\",\"shape\":[3,0,2],\"data_offsets\":[4,4]},"
        "\"big0\":{\"dtype\":\"U8\",\"shape\":[9007199254740993,0],\"data_offsets\":[4,4]}"
        "}\t\n\r  ";
    float v = 3.25f;
    size_t len;
    buf = mkfile(h, strlen(h), &v, 4, &len);
    REQUIRE(buf, "alloc");
    easel_err e = st_open_memory(buf, len, "t.safetensors", &f);
    REQUIRE(e == 0, "open: %s", easel_errmsg());
    const st_tensor *s = st_find(f, "s"), *e2 = st_find(f, "e2"), *b0 = st_find(f, "big0");
    REQUIRE(s && e2 && b0 && st_find(f, "e1"), "find");
    CHECK(s->ndim == 0 && st_nelem(s) == 1, "scalar");
    float out[2] = {0, 7};
    CHECK(st_read_f32(f, s, out) == 0 && out[0] == 3.25f && out[1] == 7, "scalar value");
    CHECK(e2->ndim == 3 && st_nelem(e2) == 0 && e2->begin == 4 && e2->end == 4, "empty");
    /* 2^53+1 survives exactly: no double in the parser */
    CHECK(b0->shape[0] == 9007199254740993LL && st_nelem(b0) == 0, "exact integer %lld",
          (long long)b0->shape[0]);
    CHECK(st_meta_count(f) == 0 && st_meta_get(f, "x") == NULL, "no metadata");
    st_close(f);
    free(buf);
    /* an empty header with no data, and whitespace between tokens */
    OK(open_hdr("{}", 0, &f, &buf), "{}: %s", easel_errmsg());
    CHECK(st_count(f) == 0 && st_at(f, 0) == NULL && st_find(f, "a") == NULL, "empty file");
    st_close(f);
    free(buf);
    OK(open_hdr(" \n{ \"a\" : { \"shape\" : [ 2 ] , \"dtype\" : \"U8\" , \"data_offsets\" : "
                "[ 0 , 2 ] } }",
                2, &f, &buf),
       "spaces: %s", easel_errmsg());
    st_close(f);
    free(buf);
}

static void test_metadata_and_escapes(void) {
    const char *h =
        "{\"__metadata__\":{\"format\":\"pt\",\"a\\u00e9\\ud83d\\ude00\":\"x\\ny\\\"\\\\\\/"
        "\\b\\f\\r\\t\",\"raw\":\"\xc3\xa9\xf0\x9f\x98\x80\"},"
        "\"n\\u0041me\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}";
    st_file *f;
    uint8_t *buf;
    OK(open_hdr(h, 1, &f, &buf), "open: %s", easel_errmsg());
    CHECK(st_meta_count(f) == 3, "meta count %zu", st_meta_count(f));
    const char *k = NULL, *v = NULL;
    CHECK(st_meta_at(f, 0, &k, &v) == 0 && !strcmp(k, "format") && !strcmp(v, "pt"), "meta 0");
    CHECK(st_meta_at(f, 1, &k, &v) == 0 && !strcmp(k, "a\xc3\xa9\xf0\x9f\x98\x80"),
          "escapes in key");
    CHECK(v && !strcmp(v, "x\ny\"\\/\b\f\r\t"), "escapes in value");
    CHECK(!strcmp(st_meta_get(f, "raw"), "\xc3\xa9\xf0\x9f\x98\x80"), "raw UTF-8");
    CHECK(st_meta_at(f, 3, &k, &v) == -1 && st_meta_get(f, "nope") == NULL, "out of range");
    CHECK(st_find(f, "nAme") != NULL, "escaped tensor name");
    st_close(f);
    free(buf);
    /* null and empty __metadata__ are accepted, as by the reference */
    OK(open_hdr("{\"__metadata__\":null}", 0, &f, &buf), "null: %s", easel_errmsg());
    st_close(f);
    free(buf);
    OK(open_hdr("{\"__metadata__\":{}}", 0, &f, &buf), "{}: %s", easel_errmsg());
    CHECK(st_meta_count(f) == 0, "empty metadata");
    st_close(f);
    free(buf);
}

static void test_half_conversion(void) {
    /* bit patterns and their exact values (computed independently with ldexp) */
    static const uint16_t f16[] = {0x3c00, 0xc000, 0x7bff, 0x0001, 0x8000,
                                   0x0400, 0x3555, 0x7c00, 0xfc00};
    const double f16v[] = {1.0,           -2.0,           65504.0,  ldexp(1, -24), -0.0,
                           ldexp(1, -14), 0.333251953125, INFINITY, -INFINITY};
    static const uint16_t bf[] = {0x3f80, 0xc040, 0x4049, 0x0001, 0x7f80, 0x8000, 0x3eaa};
    const double bfv[] = {1.0, -3.0, 3.140625, ldexp(1, -133), INFINITY, -0.0, 0.33203125};
    uint8_t data[64];
    for (int i = 0; i < 9; i++)
        data[2 * i] = f16[i] & 0xff, data[2 * i + 1] = f16[i] >> 8;
    for (int i = 0; i < 7; i++)
        data[18 + 2 * i] = bf[i] & 0xff, data[18 + 2 * i + 1] = bf[i] >> 8;
    float f32[3] = {1.5f, -0.0f, 1e-40f};
    memcpy(data + 32, f32, 12);
    /* header length 113 is odd, so the data (and the F32 tensor) sit unaligned */
    char h[512];
    snprintf(h, sizeof h,
             "{\"h\":{\"dtype\":\"F16\",\"shape\":[9],\"data_offsets\":[0,18]},"
             "\"b\":{\"dtype\":\"BF16\",\"shape\":[7],\"data_offsets\":[18,32]},"
             "\"f\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[32,44]},"
             "\"i\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[44,48]}}");
    size_t len;
    uint8_t *buf = mkfile(h, strlen(h), data, 48, &len);
    REQUIRE(buf, "alloc");
    st_file *f;
    OK(st_open_memory(buf, len, "t.safetensors", &f), "open: %s", easel_errmsg());
    float out[9];
    OK(st_read_f32(f, st_find(f, "h"), out), "f16: %s", easel_errmsg());
    for (int i = 0; i < 9; i++)
        CHECK(out[i] == (float)f16v[i] && !signbit(out[i]) == !signbit(f16v[i]), "f16 %04x -> %g",
              f16[i], out[i]);
    OK(st_read_f32(f, st_find(f, "b"), out), "bf16: %s", easel_errmsg());
    for (int i = 0; i < 7; i++)
        CHECK(out[i] == (float)bfv[i] && !signbit(out[i]) == !signbit(bfv[i]), "bf16 %04x -> %g",
              bf[i], out[i]);
    OK(st_read_f32(f, st_find(f, "f"), out), "f32: %s", easel_errmsg());
    CHECK(!memcmp(out, f32, 12), "f32 bytes");
    easel_err e = st_read_f32(f, st_find(f, "i"), out);
    CHECK(e == EASEL_EUNSUPPORTED && strstr(easel_errmsg(), "I32") &&
              strstr(easel_errmsg(), "\"i\""),
          "I32 refused: %d %s", e, easel_errmsg());
    st_close(f);
    free(buf);
}

/* ------------------------------------------------------------ malformed */

static void test_bad_prefix(void) {
    st_file *f = (st_file *)1;
    uint8_t small[5] = {0};
    CHECK(st_open_memory(small, 5, "t.safetensors", &f) == EASEL_EFORMAT && !f, "5 bytes");
    CHECK(strstr(easel_errmsg(), "8-byte") != NULL, "%s", easel_errmsg());
    CHECK(st_open_memory(NULL, 0, "t.safetensors", &f) == EASEL_EFORMAT && !f, "0 bytes");
    uint8_t b[64] = {0};
    uint64_t n = 100000001; /* one over the limit */
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(n >> (8 * i));
    CHECK(st_open_memory(b, sizeof b, "t.safetensors", &f) == EASEL_EFORMAT, "limit");
    CHECK(strstr(easel_errmsg(), "exceeds the limit") != NULL, "%s", easel_errmsg());
    n = 100000000; /* at the limit: passes that check, fails the next */
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(n >> (8 * i));
    CHECK(st_open_memory(b, sizeof b, "t.safetensors", &f) == EASEL_EFORMAT, "at limit");
    CHECK(strstr(easel_errmsg(), "past the end") != NULL, "%s", easel_errmsg());
    memset(b, 0xff, 8); /* 2^64-1: must not wrap around */
    CHECK(st_open_memory(b, sizeof b, "t.safetensors", &f) == EASEL_EFORMAT, "huge");
    b[0] = 57, memset(b + 1, 0, 7); /* 57 > 64 - 8 */
    CHECK(st_open_memory(b, sizeof b, "t.safetensors", &f) == EASEL_EFORMAT, "past end");
    CHECK(strstr(easel_errmsg(), "past the end") != NULL, "%s", easel_errmsg());
}

static void test_bad_json(void) {
    BAD("{\"\xff\":1}", 0, "UTF-8", NULL);
    BAD("{\"\xc0\xaf\":1}", 0, "UTF-8", NULL);         /* overlong */
    BAD("{\"\xed\xa0\x80\":1}", 0, "UTF-8", NULL);     /* encoded surrogate */
    BAD("{\"\xf4\x90\x80\x80\":1}", 0, "UTF-8", NULL); /* > U+10FFFF */
    BAD("{\"\xe2\x82\":1}", 0, "UTF-8", NULL);         /* truncated sequence */
    BAD("", 0, "not a JSON object", NULL);
    BAD("[]", 0, "not a JSON object", NULL);
    BAD(" ", 0, "not a JSON object", NULL);
    BAD("\"a\"", 0, "not a JSON object", NULL);
    BAD("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}", 1, "invalid JSON", NULL);
    BAD("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},}", 1, "invalid JSON",
        NULL);
    BAD("{'a':1}", 0, "invalid JSON", NULL);
    BAD("{\"a\" {}}", 0, "invalid JSON", NULL);
    BAD("{} x", 0, "trailing characters", NULL);
    BAD("{}\x01", 0, "trailing characters", NULL);
    BAD("{}{}", 0, "trailing characters", NULL);
    BAD("{\"a\\q\":1}", 0, "invalid escape", NULL);
    BAD("{\"a\\ud800\":1}", 0, "unpaired surrogate", NULL);
    BAD("{\"a\\ud800\\u0041\":1}", 0, "unpaired surrogate", NULL);
    BAD("{\"a\\udc00\":1}", 0, "lone low surrogate", NULL);
    BAD("{\"a\\u12g4\":1}", 0, "bad \\u escape", NULL);
    BAD("{\"a\\u0000\":1}", 0, "\\u0000", NULL);
    BAD("{\"a\nb\":1}", 0, "control character", NULL);
    BAD("{\"abc", 0, "unterminated string", NULL);
}

static void test_bad_entries(void) {
    BAD("{\"w.bias\":5}", 0, "expected an object", "tensor \"w.bias\"");
    BAD("{\"w.bias\":[]}", 0, "expected an object", "tensor \"w.bias\"");
    BAD("{\"w.bias\":{\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "missing \"dtype\"",
        "\"w.bias\"");
    BAD("{\"w.bias\":{\"dtype\":\"U8\",\"data_offsets\":[0,1]}}", 1, "missing \"shape\"",
        "\"w.bias\"");
    BAD("{\"w.bias\":{\"dtype\":\"U8\",\"shape\":[1]}}", 1, "missing \"data_offsets\"",
        "\"w.bias\"");
    BAD("{\"w.bias\":{\"dtype\":\"F7\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
        "unknown dtype \"F7\"", "tensor \"w.bias\"");
    BAD("{\"w.bias\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
        "unknown dtype \"f32\"", "\"w.bias\"");
    BAD("{\"w.bias\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "dtype",
        "\"w.bias\"");
    BAD("{\"w.bias\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"foo\":1}}", 1,
        "unknown key \"foo\"", "tensor \"w.bias\"");
    BAD("{\"w.bias\":{\"dtype\":\"U8\",\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
        "duplicate key \"dtype\"", "\"w.bias\"");
}

static void test_bad_numbers(void) {
    BAD("{\"c\":{\"dtype\":\"U8\",\"shape\":5,\"data_offsets\":[0,1]}}", 1, "shape",
        "tensor \"c\"");
    BAD("{\"c\":{\"dtype\":\"U8\",\"shape\":[-1],\"data_offsets\":[0,1]}}", 1, "negative", "\"c\"");
    BAD("{\"c\":{\"dtype\":\"U8\",\"shape\":[1.0],\"data_offsets\":[0,1]}}", 1, "not an integer",
        "\"c\"");
    BAD("{\"c\":{\"dtype\":\"U8\",\"shape\":[1e0],\"data_offsets\":[0,1]}}", 1, "not an integer",
        "\"c\"");
    BAD("{\"c\":{\"dtype\":\"U8\",\"shape\":[01],\"data_offsets\":[0,1]}}", 1, "leading zero",
        "\"c\"");
    BAD("{\"c\":{\"dtype\":\"U8\",\"shape\":[\"1\"],\"data_offsets\":[0,1]}}", 1, "an integer",
        "\"c\"");
    BAD("{\"c\":{\"dtype\":\"U8\",\"shape\":[18446744073709551616,0],\"data_offsets\":[0,0]}}", 0,
        "overflows 64 bits", "\"c\"");
    BAD("{\"c\":{\"dtype\":\"U8\",\"shape\":[18446744073709551615,0],\"data_offsets\":[0,0]}}", 0,
        "too large", "\"c\"");
    BAD("{\"c\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1,
        "unsupported rank 9", "tensor \"c\"");
    BAD("{\"c\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0]}}", 1, "2 elements", "\"c\"");
    BAD("{\"c\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1,2]}}", 1, "2 elements",
        "\"c\"");
    BAD("{\"c\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[-0,1]}}", 1, "negative", "\"c\"");
    BAD("{\"c\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[1,0]}}", 1, "end is before begin",
        "\"c\"");
}

static void test_bad_layout(void) {
    /* the example from the task: 12 bytes for a 16-byte tensor */
    BAD("{\"x.weight\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,12]}}", 12,
        "data_offsets [0, 12] do not match shape [2,2] x F32 (16 bytes)", "tensor \"x.weight\"");
    BAD("{\"o\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,0]}}", 0,
        "overflows", "tensor \"o\"");
    /* nelem fits (2^63) but nelem * 4 does not */
    BAD("{\"o\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,2],\"data_offsets\":[0,0]}}", 0,
        "overflows", "tensor \"o\"");
    BAD("{\"a\":{" F32_2 ",\"data_offsets\":[8,16]}}", 16, "gap", "tensor \"a\"");
    BAD("{\"a\":{" F32_2 ",\"data_offsets\":[0,8]},\"b\":{" F32_2 ",\"data_offsets\":[12,20]}}", 20,
        "gap", "tensor \"b\"");
    BAD("{\"a\":{" F32_2 ",\"data_offsets\":[0,8]},\"b\":{" F32_2 ",\"data_offsets\":[4,12]}}", 12,
        "overlap", "tensor \"b\"");
    BAD("{\"a\":{" F32_2 ",\"data_offsets\":[0,8]},\"b\":{" F32_2 ",\"data_offsets\":[0,8]}}", 8,
        "overlap", NULL);
    BAD("{\"a\":{" F32_2 ",\"data_offsets\":[0,8]}}", 9, "data region is 9 bytes", NULL);
    BAD("{\"a\":{" F32_2 ",\"data_offsets\":[0,8]}}", 7, "data region is 7 bytes", NULL);
    BAD("{\"a\":{" F32_2 ",\"data_offsets\":[0,8]}}", 0, "data region is 0 bytes", NULL);
    BAD("{\"a\":{" F32_2 ",\"data_offsets\":[0,8]},\"a\":{" F32_2 ",\"data_offsets\":[8,16]}}", 16,
        "duplicate tensor name \"a\"", NULL);
}

static void test_bad_metadata(void) {
    BAD("{\"__metadata__\":5}", 0, "__metadata__", NULL);
    BAD("{\"__metadata__\":[\"a\"]}", 0, "__metadata__", NULL);
    BAD("{\"__metadata__\":{\"k\":1}}", 0, "__metadata__ value for \"k\" is not a string", NULL);
    BAD("{\"__metadata__\":{\"k\":{}}}", 0, "__metadata__ value for \"k\"", NULL);
    BAD("{\"__metadata__\":{\"k\":\"a\",\"k\":\"b\"}}", 0, "duplicate __metadata__ key \"k\"",
        NULL);
    BAD("{\"__metadata__\":{},\"__metadata__\":{}}", 0, "duplicate __metadata__", NULL);
    BAD("{\"__metadata__\":{\"k\":\"a\"", 0, "invalid JSON", NULL);
}

static void test_bad_name_in_message_is_safe(void) {
    /* control characters in a name do not reach the message raw */
    char m[1024];
    int leaked;
    easel_err e = reject("{\"a\\nb\":{\"dtype\":\"F7\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
                         m, sizeof m, &leaked);
    CHECK(e == EASEL_EFORMAT && strstr(m, "tensor \"a?b\"") && !strchr(m, '\n'), "%s", m);
}

/* -------------------------------------------------------------- writer */

static int put_file(const char *path, const void *b, size_t n) {
    FILE *fp = fopen(path, "wb");
    if (!fp) return -1;
    int bad = fwrite(b, 1, n, fp) != n;
    return fclose(fp) || bad ? -1 : 0;
}

static const char *tpath(const char *name, char *buf, size_t len) {
    snprintf(buf, len, "%s/%s", tmpdir, name);
    return buf;
}

static uint8_t *read_all(const char *path, size_t *len) {
    return (uint8_t *)test_read_file(path, len);
}

static void test_writer_exact_bytes(void) {
    st_writer *w = st_writer_create();
    REQUIRE(w, "create");
    float a[2] = {1.0f, -2.0f};
    int64_t shape[1] = {2};
    CHECK(st_writer_add(w, "a", ST_F32, 1, shape, a) == 0, "add");
    char p[512];
    OK(st_writer_save(w, tpath("exact.safetensors", p, sizeof p)), "%s", easel_errmsg());
    st_writer_free(w);
    size_t len;
    uint8_t *b = read_all(p, &len);
    REQUIRE(b, "read back");
    const char *want = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    size_t hl = strlen(want), padded = (hl + 7) / 8 * 8;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = n << 8 | b[i];
    CHECK(n == padded && len == 8 + padded + 8, "lengths %llu %zu", (unsigned long long)n, len);
    CHECK(len >= 8 + padded && !memcmp(b + 8, want, hl), "header text");
    for (size_t i = hl; i < padded && 8 + i < len; i++)
        CHECK(b[8 + i] == ' ', "padding %zu", i);
    CHECK(len == 8 + padded + 8 && !memcmp(b + 8 + padded, a, 8), "data");
    free(b);
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", p);
    CHECK(access(tmp, F_OK) != 0, "no temp file left");
    unlink(p);
}

static void test_writer_round_trip(void) {
    st_writer *w = st_writer_create();
    REQUIRE(w, "create");
    unsigned long long seed = 42;
    float f32[6];
    uint16_t f16[12];
    int64_t i64[3] = {INT64_MIN, -1, INT64_MAX};
    uint8_t boolv[5] = {1, 0, 1, 1, 0};
    double scalar = 2.5;
    for (int i = 0; i < 6; i++)
        f32[i] = test_randf(&seed, -4, 4);
    for (int i = 0; i < 12; i++)
        f16[i] = (uint16_t)(i * 4099);
    int64_t s23[2] = {2, 3}, s12[3] = {2, 3, 2}, s3[1] = {3}, s5[1] = {5}, s40[2] = {4, 0};
    int64_t s8[8] = {1, 1, 1, 1, 1, 1, 1, 3};
    CHECK(st_writer_add(w, "z.first", ST_F32, 2, s23, f32) == 0, "%s", easel_errmsg());
    CHECK(st_writer_add(w, "y \"quoted\"\\\n\x01", ST_F16, 3, s12, f16) == 0, "%s", easel_errmsg());
    CHECK(st_writer_add(w, "scalar", ST_F64, 0, NULL, &scalar) == 0, "%s", easel_errmsg());
    CHECK(st_writer_add(w, "empty", ST_BF16, 2, s40, NULL) == 0, "%s", easel_errmsg());
    CHECK(st_writer_add(w, "ints", ST_I64, 1, s3, i64) == 0, "%s", easel_errmsg());
    CHECK(st_writer_add(w, "rank8", ST_I64, 8, s8, i64) == 0, "%s", easel_errmsg());
    CHECK(st_writer_add(w, "b\xc3\xa9", ST_BOOL, 1, s5, boolv) == 0, "%s", easel_errmsg());
    CHECK(st_writer_meta(w, "format", "pt") == 0 &&
              st_writer_meta(w, "note", "a\"b\n\xe2\x82\xac") == 0,
          "meta");
    /* rejected additions change nothing */
    int64_t neg[1] = {-1}, s9[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    CHECK(st_writer_add(w, "z.first", ST_F32, 2, s23, f32) == EASEL_EINVAL, "duplicate");
    CHECK(st_writer_add(w, "neg", ST_F32, 1, neg, f32) == EASEL_EINVAL, "negative dim");
    CHECK(st_writer_add(w, "r9", ST_F32, 9, s9, f32) == EASEL_EINVAL, "rank 9");
    CHECK(st_writer_add(w, "__metadata__", ST_F32, 1, s3, f32) == EASEL_EINVAL, "reserved name");
    CHECK(st_writer_add(w, "nul", ST_F32, 1, s3, NULL) == EASEL_EINVAL, "NULL data");
    CHECK(st_writer_add(w, "bad\xff", ST_F32, 1, s3, f32) == EASEL_EINVAL, "bad UTF-8");
    CHECK(st_writer_add(w, "dt", ST_DTYPE_COUNT, 1, s3, f32) == EASEL_EINVAL, "bad dtype");
    CHECK(st_writer_meta(w, "format", "x") == EASEL_EINVAL, "duplicate meta");
    char p[512];
    OK(st_writer_save(w, tpath("rt.safetensors", p, sizeof p)), "%s", easel_errmsg());
    st_writer_free(w);

    st_file *f;
    OK(st_open(p, &f), "reopen: %s", easel_errmsg());
    CHECK(!strcmp(st_path(f), p), "path");
    static const char *order[] = {
        "z.first", "y \"quoted\"\\\n\x01", "scalar", "empty", "ints", "rank8", "b\xc3\xa9"};
    const void *src[] = {f32, f16, &scalar, NULL, i64, i64, boolv};
    size_t bytes[] = {24, 24, 8, 0, 24, 24, 5};
    REQUIRE(st_count(f) == 7, "count %zu", st_count(f));
    for (int i = 0; i < 7; i++) {
        const st_tensor *t = st_at(f, (size_t)i);
        CHECK(!strcmp(t->name, order[i]), "insertion order %d", i);
        CHECK(t->end - t->begin == bytes[i], "bytes %d", i);
        CHECK(!bytes[i] || !memcmp(t->data, src[i], bytes[i]), "data %d", i);
    }
    const st_tensor *t = st_find(f, "y \"quoted\"\\\n\x01");
    CHECK(t && t->dtype == ST_F16 && t->ndim == 3 && t->shape[2] == 2, "f16 shape");
    t = st_find(f, "rank8");
    CHECK(t && t->ndim == 8 && t->shape[7] == 3, "rank 8");
    t = st_find(f, "scalar");
    CHECK(t && t->ndim == 0 && t->dtype == ST_F64, "scalar");
    CHECK(!strcmp(st_meta_get(f, "note"), "a\"b\n\xe2\x82\xac"), "meta value");
    float back[6];
    CHECK(st_read_f32(f, st_find(f, "z.first"), back) == 0 && !memcmp(back, f32, 24), "f32 read");
    st_close(f);
    unlink(p);
}

static void test_writer_errors(void) {
    st_writer *w = st_writer_create();
    REQUIRE(w, "create");
    float a = 1;
    CHECK(st_writer_add(w, "a", ST_F32, 0, NULL, &a) == 0, "add");
    char p[512];
    snprintf(p, sizeof p, "%s/no/such/dir/x.safetensors", tmpdir);
    easel_err e = st_writer_save(w, p);
    CHECK(e == EASEL_EIO && strstr(easel_errmsg(), "No such file"), "missing dir: %d %s", e,
          easel_errmsg());
    /* the target is a directory: the rename fails and the temp is removed */
    snprintf(p, sizeof p, "%s/adir", tmpdir);
    OK(mkdir(p, 0755), "mkdir");
    e = st_writer_save(w, p);
    CHECK(e == EASEL_EIO, "rename over a directory: %d", e);
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", p);
    CHECK(access(tmp, F_OK) != 0, "temp removed");
    rmdir(p);
    st_writer_free(w);
}

/* ------------------------------------------------- robustness, files */

static uint8_t *valid_small(size_t *len) {
    const char *h =
        "{\"__metadata__\":{\"k\":\"v\\u00e9\"},\"b\":{\"dtype\":\"F16\",\"shape\":[2],"
        "\"data_offsets\":[4,8]},\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":"
        "[0,4]},\"e\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[8,8]}}  ";
    return mkfile(h, strlen(h), NULL, 8, len);
}

static void test_every_truncation(void) {
    size_t len;
    uint8_t *full = valid_small(&len);
    REQUIRE(full, "alloc");
    for (size_t n = 0; n <= len + 1; n++) {
        /* an exact-size copy, so a read past the end is caught by ASan */
        uint8_t *b = malloc(n ? n : 1);
        REQUIRE(b, "alloc");
        memcpy(b, full, n <= len ? n : len);
        if (n > len) b[len] = 0;
        st_file *f;
        easel_err e = st_open_memory(b, n, "t.safetensors", &f);
        if (n == len) {
            CHECK(e == 0 && st_count(f) == 3, "full length: %s", easel_errmsg());
            if (!e) st_close(f);
        } else {
            CHECK(e == EASEL_EFORMAT && f == NULL, "length %zu accepted", n);
            if (!e) st_close(f);
        }
        free(b);
    }
    /* every single-byte change in the prefix and header: never crashes */
    size_t hdr_end = 8 + (size_t)(full[0] | full[1] << 8);
    for (size_t i = 0; i < hdr_end; i++) {
        static const uint8_t repl[] = {0, '"', '{', '}', ',', '\\', '9', 0xff, 0x80};
        for (size_t r = 0; r < sizeof repl; r++) {
            uint8_t *b = malloc(len);
            REQUIRE(b, "alloc");
            memcpy(b, full, len);
            b[i] = repl[r];
            st_file *f;
            if (st_open_memory(b, len, "t.safetensors", &f) == 0) {
                float out[4];
                for (size_t k = 0; k < st_count(f); k++)
                    if (st_nelem(st_at(f, k)) <= 4) st_read_f32(f, st_at(f, k), out);
                st_close(f);
            }
            free(b);
        }
    }
    free(full);
}

static void test_open_file(void) {
    size_t len;
    uint8_t *full = valid_small(&len);
    REQUIRE(full, "alloc");
    char p[512];
    tpath("small.safetensors", p, sizeof p);
    OK(put_file(p, full, len), "write");
    st_file *f;
    OK(st_open(p, &f), "open: %s", easel_errmsg());
    const st_tensor *a = st_at(f, 0);
    CHECK(st_count(f) == 3 && !strcmp(a->name, "a") && !strcmp(st_meta_get(f, "k"), "v\xc3\xa9"),
          "contents");
    CHECK(!memcmp(a->data, full + len - 8, 4), "mapped data");
    st_close(f);
    unlink(p);
    easel_err e = st_open(tpath("missing.safetensors", p, sizeof p), &f);
    CHECK(e == EASEL_ENOTFOUND && !f && strstr(easel_errmsg(), "No such file"), "missing: %s",
          easel_errmsg());
    e = st_open(tmpdir, &f);
    CHECK(e == EASEL_EIO && !f, "directory: %d %s", e, easel_errmsg());
    tpath("short.safetensors", p, sizeof p);
    OK(put_file(p, full, 3), "write");
    e = st_open(p, &f);
    CHECK(e == EASEL_EFORMAT && strstr(easel_errmsg(), "short.safetensors: ") &&
              strstr(easel_errmsg(), "8-byte"),
          "short: %s", easel_errmsg());
    unlink(p);
    free(full);
}

/* ------------------------------------------------------- easel inspect */

static int run_inspect(const char *args, char *out, size_t len) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "'%s' inspect %s 2>&1", easel_bin, args);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t n = fread(out, 1, len - 1, p);
    out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_inspect_cli(void) {
    if (access(easel_bin, X_OK)) SKIP("no easel binary at %s", easel_bin);
    size_t len;
    uint8_t *full = valid_small(&len);
    REQUIRE(full, "alloc");
    char good[512], bad[512], args[1200], out[8192];
    tpath("good.safetensors", good, sizeof good);
    tpath("bad.safetensors", bad, sizeof bad);
    OK(put_file(good, full, len), "write");
    OK(put_file(bad, full, len - 1), "write");
    snprintf(args, sizeof args, "'%s'", good);
    int rc = run_inspect(args, out, sizeof out);
    CHECK(rc == 0 && strstr(out, "F16") && strstr(out, "total: 3 tensors"), "valid: %d %s", rc,
          out);
    snprintf(args, sizeof args, "--json '%s'", good);
    rc = run_inspect(args, out, sizeof out);
    CHECK(rc == 0 && out[0] == '{' && strstr(out, "\"name\":\"b\""), "json: %d %s", rc, out);
    snprintf(args, sizeof args, "'%s'", bad);
    rc = run_inspect(args, out, sizeof out);
    CHECK(rc == 2 && !strncmp(out, "easel inspect: ", 15) && strstr(out, "data region"),
          "truncated: %d %s", rc, out);
    snprintf(args, sizeof args, "'%s/missing'", tmpdir);
    rc = run_inspect(args, out, sizeof out);
    CHECK(rc == 2 && strstr(out, "No such file or directory"), "missing: %d %s", rc, out);
    rc = run_inspect("", out, sizeof out);
    CHECK(rc == 2, "no file: %d", rc);
    rc = run_inspect("--bogus x", out, sizeof out);
    CHECK(rc == 2, "unknown flag: %d", rc);
    unlink(good);
    unlink(bad);
    free(full);
}

int main(int argc, char **argv) {
    (void)argc;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/easel_test_st.XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    /* the binary sits in the build dir, one level above tests/ */
    char self[1024];
    snprintf(self, sizeof self, "%s", argv[0]);
    snprintf(easel_bin, sizeof easel_bin, "%s/../easel", dirname(self));
    RUN(test_every_dtype);
    RUN(test_scalar_empty_and_padding);
    RUN(test_metadata_and_escapes);
    RUN(test_half_conversion);
    RUN(test_bad_prefix);
    RUN(test_bad_json);
    RUN(test_bad_entries);
    RUN(test_bad_numbers);
    RUN(test_bad_layout);
    RUN(test_bad_metadata);
    RUN(test_bad_name_in_message_is_safe);
    RUN(test_writer_exact_bytes);
    RUN(test_writer_round_trip);
    RUN(test_writer_errors);
    RUN(test_every_truncation);
    RUN(test_open_file);
    RUN(test_inspect_cli);
    rmdir(tmpdir);
    return test_summary();
}
