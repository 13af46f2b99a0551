/* Tensor headers, views and half-precision conversions (see tensor.h). */
#include "tensor.h"

#include <stdio.h>
#include <string.h>

size_t dtype_size(dtype dt) { return dt == DT_F32 ? 4 : 2; }

const char *dtype_name(dtype dt) {
    switch (dt) {
    case DT_F32: return "f32";
    case DT_F16: return "f16";
    case DT_BF16: return "bf16";
    }
    return "?";
}

tensor tensor_make(void *data, dtype dt, device_kind dev, int ndim, const int64_t *ne) {
    tensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.dt = dt;
    t.dev = dev;
    t.ndim = ndim < 1 ? 1 : (ndim > TENSOR_MAX_DIMS ? TENSOR_MAX_DIMS : ndim);
    for (int i = 0; i < TENSOR_MAX_DIMS; i++) t.ne[i] = i < t.ndim ? ne[i] : 1;
    return t;
}

tensor tensor_1d(void *data, dtype dt, device_kind dev, int64_t a) {
    int64_t ne[1] = {a};
    return tensor_make(data, dt, dev, 1, ne);
}
tensor tensor_2d(void *data, dtype dt, device_kind dev, int64_t a, int64_t b) {
    int64_t ne[2] = {a, b};
    return tensor_make(data, dt, dev, 2, ne);
}
tensor tensor_3d(void *data, dtype dt, device_kind dev, int64_t a, int64_t b, int64_t c) {
    int64_t ne[3] = {a, b, c};
    return tensor_make(data, dt, dev, 3, ne);
}
tensor tensor_4d(void *data, dtype dt, device_kind dev, int64_t a, int64_t b, int64_t c,
                 int64_t d) {
    int64_t ne[4] = {a, b, c, d};
    return tensor_make(data, dt, dev, 4, ne);
}

int64_t tensor_nelem(const tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->ne[i];
    return n;
}

size_t tensor_nbytes(const tensor *t) { return (size_t)tensor_nelem(t) * dtype_size(t->dt); }

int64_t tensor_cols(const tensor *t) { return t->ne[t->ndim - 1]; }

int64_t tensor_rows(const tensor *t) {
    int64_t c = tensor_cols(t);
    return c ? tensor_nelem(t) / c : 0;
}

int tensor_same_shape(const tensor *a, const tensor *b) {
    if (a->ndim != b->ndim) return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->ne[i] != b->ne[i]) return 0;
    return 1;
}

const char *tensor_shape_str(const tensor *t, char *buf, size_t len) {
    size_t n = 0;
    n += (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < t->ndim && n < len; i++)
        n += (size_t)snprintf(buf + n, len - n, i ? ",%lld" : "%lld", (long long)t->ne[i]);
    if (n < len) snprintf(buf + n, len - n, "] %s", dtype_name(t->dt));
    return buf;
}

tensor tensor_slice0(const tensor *t, int64_t first, int64_t count) {
    tensor v = *t;
    if (first < 0 || count < 0 || first + count > t->ne[0]) {
        v.data = NULL;
        return v;
    }
    size_t slice = tensor_nbytes(t) / (size_t)(t->ne[0] ? t->ne[0] : 1);
    v.data = t->data ? (char *)t->data + (size_t)first * slice : NULL;
    v.ne[0] = count;
    return v;
}

tensor tensor_reshape(const tensor *t, int ndim, const int64_t *ne) {
    tensor v = tensor_make(t->data, t->dt, t->dev, ndim, ne);
    if (tensor_nelem(&v) != tensor_nelem(t)) v.data = NULL;
    return v;
}

uint16_t f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t exp = (x >> 23) & 0xffu;
    uint32_t man = x & 0x7fffffu;
    if (exp == 0xff) return (uint16_t)(sign | 0x7c00u | (man ? 0x200u | (man >> 13) : 0));
    int32_t e = (int32_t)exp - 127 + 15;
    if (e >= 31) return (uint16_t)(sign | 0x7c00u);
    if (e <= 0) {
        if (e < -10) return (uint16_t)sign;
        man |= 0x800000u;
        uint32_t shift = (uint32_t)(14 - e);
        uint32_t half = man >> shift;
        uint32_t rem = man & ((1u << shift) - 1);
        uint32_t mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t h = sign | ((uint32_t)e << 10) | (man >> 13);
    uint32_t rem = man & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) h++; /* may carry into exp: correct */
    return (uint16_t)h;
}

float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t x;
    if (exp == 0) {
        if (man == 0) {
            x = sign;
        } else {
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400u));
            x = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 31) {
        x = sign | 0x7f800000u | (man << 13);
    } else {
        x = sign | ((exp - 15 + 127) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &x, 4);
    return f;
}

uint16_t f32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u); /* quiet nan */
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

float bf16_to_f32(uint16_t h) {
    uint32_t x = (uint32_t)h << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}
