/* Pixel operations for images coming in (see image_codecs.h): alpha
 * flattening, masks, the three resize modes with separable Lanczos-3
 * resampling over a fractional source box (the filter widened by the scale
 * when shrinking, as PIL's LANCZOS does, so a 12 MP photo shrinks without
 * aliasing), and a separable Gaussian blur for masks. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "image_codecs.h"

void image_flatten(const uint8_t *rgba, int w, int h, uint32_t bg, uint8_t *rgb) {
    const unsigned b[3] = {(bg >> 16) & 0xFF, (bg >> 8) & 0xFF, bg & 0xFF};
    size_t n = (size_t)w * h;
    for (size_t i = 0; i < n; i++) {
        unsigned a = rgba[4 * i + 3];
        for (int c = 0; c < 3; c++)
            rgb[3 * i + c] = (uint8_t)((rgba[4 * i + c] * a + b[c] * (255 - a) + 127) / 255);
    }
}

void image_mask_from_luma(const uint8_t *rgba, int w, int h, uint8_t *mask) {
    size_t n = (size_t)w * h;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *p = rgba + 4 * i;
        unsigned l = (p[0] * 299u + p[1] * 587u + p[2] * 114u) / 1000u; /* PIL's convert("L") */
        mask[i] = (uint8_t)((l * p[3] + 127) / 255);
    }
}

void image_mask_from_alpha(const uint8_t *rgba, int w, int h, uint8_t *mask) {
    size_t n = (size_t)w * h;
    for (size_t i = 0; i < n; i++)
        mask[i] = (uint8_t)(255 - rgba[4 * i + 3]);
}

static const char *const mode_names[RESIZE_MODE_COUNT] = {"resize", "crop", "fill"};

int image_resize_mode_parse(const char *s) {
    if (!s) return -1;
    for (int i = 0; i < RESIZE_MODE_COUNT; i++)
        if (!strcmp(s, mode_names[i])) return i;
    if (!strcmp(s, "just resize")) return RESIZE_STRETCH;
    if (!strcmp(s, "crop and resize")) return RESIZE_CROP;
    if (!strcmp(s, "resize and fill")) return RESIZE_FILL;
    return -1;
}

const char *image_resize_mode_name(image_resize_mode m) {
    return (unsigned)m < RESIZE_MODE_COUNT ? mode_names[m] : "?";
}

/* ---- Lanczos-3 ---- */

static double sinc(double x) {
    if (x == 0.0) return 1.0;
    x *= M_PI;
    return sin(x) / x;
}

static double lanczos3(double x) {
    return x > -3.0 && x < 3.0 ? sinc(x) * sinc(x / 3.0) : 0.0;
}

/* Per output index: the first input index, the count, and normalised weights. */
typedef struct {
    int *first, *count, taps;
    float *w; /* [out][taps] */
} coeffs;

static void coeffs_free(coeffs *c) {
    free(c->first), free(c->count), free(c->w);
}

/* Output [0, out) from the input interval [x0, x0 + span) of an axis of n pixels. */
static easel_err coeffs_make(coeffs *c, int n, double x0, double span, int out) {
    double scale = span / out, fs = scale > 1.0 ? scale : 1.0, support = 3.0 * fs;
    c->taps = (int)ceil(support) * 2 + 1;
    c->first = malloc(sizeof(int) * (size_t)out);
    c->count = malloc(sizeof(int) * (size_t)out);
    c->w = malloc(sizeof(float) * (size_t)out * (size_t)c->taps);
    if (!c->first || !c->count || !c->w) {
        coeffs_free(c);
        return easel_seterr(EASEL_ENOMEM, "resize: out of memory");
    }
    for (int i = 0; i < out; i++) {
        double center = x0 + (i + 0.5) * scale;
        int lo = (int)floor(center - support + 0.5), hi = (int)floor(center + support + 0.5);
        if (lo < 0) lo = 0;
        if (hi > n) hi = n;
        if (hi - lo > c->taps) hi = lo + c->taps;
        if (hi <= lo) { /* a box entirely outside: the nearest edge pixel */
            lo = center < 0 ? 0 : n - 1;
            hi = lo + 1;
        }
        double sum = 0;
        int k = hi - lo;
        float *w = c->w + (size_t)i * c->taps;
        for (int t = 0; t < k; t++)
            sum += w[t] = (float)lanczos3((lo + t + 0.5 - center) / fs);
        for (int t = 0; t < k; t++)
            w[t] = sum != 0 ? (float)(w[t] / sum) : (float)(t == 0);
        c->first[i] = lo, c->count[i] = k;
    }
    return EASEL_OK;
}

static uint8_t clamp8(float v) {
    return v <= 0.0f ? 0 : v >= 255.0f ? 255 : (uint8_t)(v + 0.5f);
}

/* src box (bx, by, bw, bh) of src -> the dw x dh rectangle of dst at (ox, oy)
 * (dst row stride dstride pixels). */
static easel_err resample(const uint8_t *src, int sw, int sh, int ch, double bx, double by,
                          double bw, double bh, uint8_t *dst, int dstride, int ox, int oy, int dw,
                          int dh) {
    coeffs cx = {0}, cy = {0};
    easel_err e = coeffs_make(&cx, sw, bx, bw, dw);
    if (!e) e = coeffs_make(&cy, sh, by, bh, dh);
    /* rows of the source the vertical pass reads */
    int y0 = sh, y1 = 0;
    for (int i = 0; !e && i < dh; i++) {
        if (cy.first[i] < y0) y0 = cy.first[i];
        if (cy.first[i] + cy.count[i] > y1) y1 = cy.first[i] + cy.count[i];
    }
    float *tmp = e ? NULL : malloc(sizeof(float) * (size_t)(y1 - y0) * dw * ch);
    if (!e && !tmp) e = easel_seterr(EASEL_ENOMEM, "resize: out of memory");
    for (int y = y0; !e && y < y1; y++) { /* horizontal */
        const uint8_t *row = src + (size_t)y * sw * ch;
        float *t = tmp + (size_t)(y - y0) * dw * ch;
        for (int x = 0; x < dw; x++) {
            const float *w = cx.w + (size_t)x * cx.taps;
            const uint8_t *p = row + (size_t)cx.first[x] * ch;
            for (int c = 0; c < ch; c++) {
                float s = 0;
                for (int k = 0; k < cx.count[x]; k++)
                    s += w[k] * p[k * ch + c];
                t[x * ch + c] = s;
            }
        }
    }
    for (int y = 0; !e && y < dh; y++) { /* vertical */
        const float *w = cy.w + (size_t)y * cy.taps;
        uint8_t *o = dst + ((size_t)(oy + y) * dstride + ox) * ch;
        for (int x = 0; x < dw * ch; x++) {
            float s = 0;
            for (int k = 0; k < cy.count[y]; k++)
                s += w[k] * tmp[(size_t)(cy.first[y] - y0 + k) * dw * ch + x];
            o[x] = clamp8(s);
        }
    }
    free(tmp);
    coeffs_free(&cx), coeffs_free(&cy);
    return e;
}

easel_err image_resize(const uint8_t *src, int sw, int sh, int ch, uint8_t *dst, int dw, int dh,
                       image_resize_mode mode) {
    if (!src || !dst || sw < 1 || sh < 1 || dw < 1 || dh < 1 || ch < 1 || ch > 4 ||
        (unsigned)mode >= RESIZE_MODE_COUNT)
        return easel_seterr(EASEL_EINVAL, "resize: bad arguments (%dx%d -> %dx%d, %d channels)", sw,
                            sh, dw, dh, ch);
    if (sw == dw && sh == dh) {
        memcpy(dst, src, (size_t)sw * sh * ch);
        return EASEL_OK;
    }
    double ratio = (double)dw / dh, sratio = (double)sw / sh;
    if (mode == RESIZE_STRETCH)
        return resample(src, sw, sh, ch, 0, 0, sw, sh, dst, dw, 0, 0, dw, dh);
    if (mode == RESIZE_CROP) { /* the largest centred box of the target's shape */
        double bw = sw, bh = sh;
        if (sratio > ratio)
            bw = sh * ratio;
        else
            bh = sw / ratio;
        return resample(src, sw, sh, ch, (sw - bw) / 2, (sh - bh) / 2, bw, bh, dst, dw, 0, 0, dw,
                        dh);
    }
    /* fill: fit inside (A1111's integer sizes), then stretch the edge rows/columns */
    int iw = ratio < sratio ? dw : (int)((int64_t)sw * dh / sh);
    int ih = ratio >= sratio ? dh : (int)((int64_t)sh * dw / sw);
    iw = iw < 1 ? 1 : iw > dw ? dw : iw;
    ih = ih < 1 ? 1 : ih > dh ? dh : ih;
    int ox = dw / 2 - iw / 2, oy = dh / 2 - ih / 2;
    easel_err e = resample(src, sw, sh, ch, 0, 0, sw, sh, dst, dw, ox, oy, iw, ih);
    if (e) return e;
    for (int y = 0; y < dh; y++) {
        int sy = y < oy ? oy : y >= oy + ih ? oy + ih - 1 : y;
        uint8_t *row = dst + (size_t)y * dw * ch;
        if (sy != y)
            memcpy(row + (size_t)ox * ch, dst + ((size_t)sy * dw + ox) * ch, (size_t)iw * ch);
        for (int x = 0; x < ox; x++)
            memcpy(row + (size_t)x * ch, row + (size_t)ox * ch, (size_t)ch);
        for (int x = ox + iw; x < dw; x++)
            memcpy(row + (size_t)x * ch, row + (size_t)(ox + iw - 1) * ch, (size_t)ch);
    }
    return EASEL_OK;
}

/* ---- Gaussian blur ---- */

easel_err image_blur(uint8_t *px, int w, int h, float sigma) {
    if (!(sigma > 0) || w < 1 || h < 1) return EASEL_OK;
    int r = (int)ceilf(3.0f * sigma);
    if (r > 4 * (w > h ? w : h)) r = 4 * (w > h ? w : h);
    float *k = malloc(sizeof(float) * (size_t)(2 * r + 1));
    float *tmp = malloc(sizeof(float) * (size_t)w * h);
    if (!k || !tmp) {
        free(k), free(tmp);
        return easel_seterr(EASEL_ENOMEM, "blur: out of memory");
    }
    double sum = 0;
    for (int i = -r; i <= r; i++)
        sum += k[i + r] = expf(-(float)(i * i) / (2.0f * sigma * sigma));
    for (int i = 0; i <= 2 * r; i++)
        k[i] = (float)(k[i] / sum);
    for (int y = 0; y < h; y++) /* horizontal, edges clamped */
        for (int x = 0; x < w; x++) {
            float s = 0;
            for (int i = -r; i <= r; i++) {
                int xx = x + i < 0 ? 0 : x + i >= w ? w - 1 : x + i;
                s += k[i + r] * px[(size_t)y * w + xx];
            }
            tmp[(size_t)y * w + x] = s;
        }
    for (int y = 0; y < h; y++) /* vertical */
        for (int x = 0; x < w; x++) {
            float s = 0;
            for (int i = -r; i <= r; i++) {
                int yy = y + i < 0 ? 0 : y + i >= h ? h - 1 : y + i;
                s += k[i + r] * tmp[(size_t)yy * w + x];
            }
            px[(size_t)y * w + x] = clamp8(s);
        }
    free(k), free(tmp);
    return EASEL_OK;
}
