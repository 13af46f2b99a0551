/* libFuzzer target for the safetensors reader: every input goes through
 * st_open_memory() as is and again with its header length folded into the
 * input's size (so mutations reach the JSON parser instead of stopping at
 * the length check); accepted files are walked and read as f32. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/safetensors.h"

/* Reads every tensor the reader accepts, checking the invariants it promises. */
static void walk(const st_file *f, const uint8_t *buf, size_t len) {
    for (size_t i = 0; i < st_count(f); i++) {
        const st_tensor *t = st_at(f, i);
        const uint8_t *d = t->data;
        if (d < buf || d + (t->end - t->begin) > buf + len) abort();
        if (st_find(f, t->name) != t) abort();
        if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16) continue;
        int64_t n = st_nelem(t);
        float *out = malloc(n ? (size_t)n * sizeof *out : 1);
        if (!out) continue;
        if (st_read_f32(f, t, out)) abort();
        free(out);
    }
    for (size_t i = 0; i < st_meta_count(f); i++) {
        const char *k, *v;
        if (st_meta_at(f, i, &k, &v) || strlen(k) + strlen(v) > len) abort();
    }
}

static void one(const uint8_t *buf, size_t len) {
    /* an exact-size heap copy: any read past the end is an ASan report */
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy) return;
    memcpy(copy, buf, len);
    st_file *f;
    if (st_open_memory(copy, len, "fuzz", &f) == EASEL_OK) {
        walk(f, copy, len);
        st_close(f);
    }
    free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    one(data, size);
    if (size >= 8) {
        uint8_t *fixed = malloc(size);
        if (!fixed) return 0;
        memcpy(fixed, data, size);
        uint64_t n = 0;
        for (int i = 7; i >= 0; i--)
            n = n << 8 | fixed[i];
        n %= (uint64_t)(size - 8) + 1; /* now 8 + n <= size */
        for (int i = 0; i < 8; i++)
            fixed[i] = (uint8_t)(n >> (8 * i));
        one(fixed, size);
        free(fixed);
    }
    return 0;
}
