/* Tests for engine/sha256.c: FIPS 180-2 appendix B vectors, digests of
 * messages around the 55/56/64-byte padding edges (expected values from
 * Python's hashlib: hashlib.sha256(bytes((k*7+3)&255 for k in range(n)))),
 * any split of the input into update() calls giving the same digest, and
 * base64 against RFC 4648 section 10. */
#include "engine/sha256.h"
#include "test.h"

static void hex(const uint8_t d[32], char out[65]) {
    for (int i = 0; i < 32; i++) snprintf(out + 2 * i, 3, "%02x", d[i]);
}

static void test_fips_vectors(void) {
    static const struct { const char *msg, *want; } v[] = {
        {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
    };
    uint8_t d[32];
    char h[65];
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        sha256(v[i].msg, strlen(v[i].msg), d);
        hex(d, h);
        CHECK(!strcmp(h, v[i].want), "'%s': %s", v[i].msg, h);
    }
    /* one million 'a', fed 1000 bytes at a time */
    char a[1000];
    memset(a, 'a', sizeof a);
    sha256_ctx c;
    sha256_init(&c);
    for (int i = 0; i < 1000; i++) sha256_update(&c, a, sizeof a);
    sha256_final(&c, d);
    hex(d, h);
    CHECK(!strcmp(h, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"), "%s", h);
}

static void test_padding_edges(void) {
    static const struct { size_t n; const char *want; } v[] = {
        {55, "e7313d333c272e639f790978283f9eb392e843d0f29b7016828bb1daa4aac70b"},
        {56, "4324d65f3c103567f5589c710bc08f8523f929a9272e3af36fc968e52abc6c27"},
        {63, "81c80242132f230c3bd41b3e63bbcff16107339549214a99614ff26664625055"},
        {64, "39e3d7b6b5d075d37d053ad89b24b41bef4f3c29760c84447cab3f3be1882241"},
        {65, "aacca6ff74fdbb296d165a45cecfa04e5127bc008770fbbdd48006f2d2fae95e"},
        {119, "9ce7368e4daf32341631b492e80359dc9f594b48453cd0dd5bf0b19279cc177e"},
        {120, "7836b787757e95e58b3ca5aec90b1b004e8deba1e50e9675af9cabf1a13a04b5"},
        {1000, "1e9bc38cbf860b9ec31918b065f9b52476c549a782e0e7990bed8ce3868d2371"},
    };
    uint8_t m[1000], d[32];
    char h[65];
    for (size_t k = 0; k < sizeof m; k++) m[k] = (uint8_t)(k * 7 + 3);
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        sha256(m, v[i].n, d);
        hex(d, h);
        CHECK(!strcmp(h, v[i].want), "n=%zu: %s", v[i].n, h);
    }
}

static void test_any_split(void) {
    uint8_t m[300], whole[32], parts[32];
    for (size_t k = 0; k < sizeof m; k++) m[k] = (uint8_t)(k * 131 + 17);
    unsigned seed = 12345;
    for (size_t n = 0; n <= sizeof m; n++) {
        sha256(m, n, whole);
        sha256_ctx c;
        sha256_init(&c);
        for (size_t at = 0; at < n;) {
            seed = seed * 1103515245u + 12345u;
            size_t take = (seed >> 16) % 130;
            if (take > n - at) take = n - at;
            sha256_update(&c, m + at, take);
            at += take;
        }
        sha256_final(&c, parts);
        CHECK(!memcmp(whole, parts, 32), "n=%zu: split digest differs", n);
    }
}

static void test_base64(void) {
    static const char *want[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    char out[16];
    for (size_t n = 0; n <= 6; n++) {
        size_t len = base64_encode((const uint8_t *)"foobar", n, out);
        CHECK(len == strlen(want[n]) && !strcmp(out, want[n]), "n=%zu: '%s'", n, out);
    }
    uint8_t all[3] = {0xfb, 0xff, 0xbf};
    base64_encode(all, 3, out);
    CHECK(!strcmp(out, "+/+/"), "'%s'", out);
}

int main(void) {
    RUN(test_fips_vectors);
    RUN(test_padding_edges);
    RUN(test_any_split);
    RUN(test_base64);
    return test_summary();
}
