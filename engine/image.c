/* PNG images through libpng (see image.h). Encoding goes to memory; a file
 * is then written to a temp name in the target's directory, fsynced and
 * renamed over the target (and the directory fsynced), so readers never
 * see a partial PNG. libpng reports errors by longjmp: each setjmp sits in
 * a small function whose state lives in a caller-owned struct. */
#include "image.h"

#include "fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#define IMAGE_MAX_BYTES (1ull << 30) /* refuse to decode more than 1 GiB of pixels */

/* State shared with libpng's callbacks: the error text and an output buffer. */
typedef struct {
    char msg[200];
    int oom;
    uint8_t *p; /* encoder output, or decoder pixels */
    size_t n, cap;
    png_bytep *rows; /* decoder row pointers */
} png_ctx;

static void on_png_error(png_structp png, png_const_charp msg) {
    png_ctx *c = png_get_error_ptr(png);
    snprintf(c->msg, sizeof c->msg, "%s", msg);
    png_longjmp(png, 1);
}

static void on_png_warning(png_structp png, png_const_charp msg) {
    (void)png;
    (void)msg;
}

static void sink_write(png_structp png, png_bytep data, size_t len) {
    png_ctx *c = png_get_io_ptr(png);
    if (c->n + len > c->cap) {
        size_t cap = c->cap ? c->cap : 65536;
        while (cap < c->n + len)
            cap *= 2;
        uint8_t *p = realloc(c->p, cap);
        if (!p) {
            c->oom = 1;
            png_error(png, "out of memory");
        }
        c->p = p;
        c->cap = cap;
    }
    memcpy(c->p + c->n, data, len);
    c->n += len;
}

static void sink_flush(png_structp png) {
    (void)png;
}

/* 0 on success, -1 if libpng failed (c->msg says why). */
static int encode_rows(png_structp png, png_infop info, const uint8_t *rgb, int w, int h) {
    if (setjmp(png_jmpbuf(png))) return -1;
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < h; y++)
        png_write_row(png, rgb + (size_t)y * (size_t)w * 3);
    png_write_end(png, NULL);
    return 0;
}

static easel_err check_dims(const uint8_t *rgb, int w, int h) {
    if (!rgb || w <= 0 || h <= 0 || w > 1000000 || h > 1000000 ||
        (uint64_t)w * (uint64_t)h * 3 > IMAGE_MAX_BYTES)
        return easel_seterr(EASEL_EINVAL, "image %dx%d: bad size or NULL pixels", w, h);
    return 0;
}

easel_err image_encode_png(const uint8_t *rgb, int w, int h, uint8_t **out, size_t *len) {
    *out = NULL;
    *len = 0;
    easel_err e = check_dims(rgb, w, h);
    if (e) return e;
    png_ctx c = {0};
    png_structp png =
        png_create_write_struct(PNG_LIBPNG_VER_STRING, &c, on_png_error, on_png_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!info) {
        png_destroy_write_struct(&png, NULL);
        return easel_seterr(EASEL_ENOMEM, "encoding PNG: out of memory");
    }
    png_set_write_fn(png, &c, sink_write, sink_flush);
    int rc = encode_rows(png, info, rgb, w, h);
    png_destroy_write_struct(&png, &info);
    if (rc) {
        free(c.p);
        return easel_seterr(c.oom ? EASEL_ENOMEM : EASEL_EINTERNAL, "encoding PNG: %s", c.msg);
    }
    *out = c.p;
    *len = c.n;
    return 0;
}

easel_err image_write_png(const char *path, const uint8_t *rgb, int w, int h) {
    uint8_t *png;
    size_t n;
    easel_err e = image_encode_png(rgb, w, h, &png, &n);
    if (e) return easel_wraperr(e, "%s", path);
    e = fs_write_file(path, png, n); /* temp file, fsync, rename, directory fsync */
    if (e) easel_wraperr(e, "writing PNG");
    free(png);
    return e;
}

/* Sets the transforms that turn any PNG into 8-bit RGB. */
static void want_rgb8(png_structp png, png_infop info) {
    int ct = png_get_color_type(png, info), bd = png_get_bit_depth(png, info);
    if (ct == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if (ct == PNG_COLOR_TYPE_GRAY && bd < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (bd == 16) png_set_scale_16(png);
    if (ct == PNG_COLOR_TYPE_GRAY || ct == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(png);
    png_set_strip_alpha(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
}

/* 0 on success, -1 if libpng failed; pixels and rows land in c (freed by the caller). */
static int decode_rows(png_structp png, png_infop info, png_ctx *c, int *w, int *h) {
    if (setjmp(png_jmpbuf(png))) return -1;
    png_read_info(png, info);
    want_rgb8(png, info);
    png_uint_32 pw = png_get_image_width(png, info), ph = png_get_image_height(png, info);
    if ((uint64_t)pw * ph * 3 > IMAGE_MAX_BYTES) png_error(png, "image too large");
    if (png_get_rowbytes(png, info) != (size_t)pw * 3) png_error(png, "unexpected row layout");
    c->p = malloc((size_t)pw * ph * 3 + 1);
    c->rows = malloc((size_t)ph * sizeof *c->rows + 1);
    if (!c->p || !c->rows) c->oom = 1, png_error(png, "out of memory");
    for (png_uint_32 y = 0; y < ph; y++)
        c->rows[y] = c->p + (size_t)y * pw * 3;
    png_read_image(png, c->rows);
    png_read_end(png, NULL);
    *w = (int)pw;
    *h = (int)ph;
    return 0;
}

easel_err image_read_png(const char *path, uint8_t **rgb, int *w, int *h) {
    *rgb = NULL;
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return easel_seterr(errno == ENOENT ? EASEL_ENOTFOUND : EASEL_EIO, "%s: %s", path,
                            strerror(errno));
    uint8_t sig[8];
    if (fread(sig, 1, 8, fp) != 8 || png_sig_cmp(sig, 0, 8)) {
        fclose(fp);
        return easel_seterr(EASEL_EFORMAT, "%s: not a PNG file", path);
    }
    png_ctx c = {0};
    png_structp png =
        png_create_read_struct(PNG_LIBPNG_VER_STRING, &c, on_png_error, on_png_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!info) {
        png_destroy_read_struct(&png, NULL, NULL);
        fclose(fp);
        return easel_seterr(EASEL_ENOMEM, "%s: out of memory", path);
    }
    png_init_io(png, fp);
    png_set_sig_bytes(png, 8);
    int rc = decode_rows(png, info, &c, w, h);
    png_destroy_read_struct(&png, &info, NULL);
    fclose(fp);
    free(c.rows);
    if (rc) {
        free(c.p);
        return easel_seterr(c.oom ? EASEL_ENOMEM : EASEL_EFORMAT, "%s: bad PNG: %s", path, c.msg);
    }
    *rgb = c.p;
    return 0;
}

/* Matches diffusers' postprocessing for [lo,hi] = [-1,1]: (x/2+0.5) clamped
 * to [0,1], times 255, rounded half to even; NaN becomes 0. */
void image_f32_to_rgb8(const float *src, uint8_t *dst, int64_t n, float lo, float hi) {
    float scale = hi - lo;
    for (int64_t i = 0; i < n; i++) {
        float t = (src[i] - lo) / scale;
        if (!(t > 0.0f)) t = 0.0f;
        if (t > 1.0f) t = 1.0f;
        dst[i] = (uint8_t)nearbyintf(t * 255.0f);
    }
}
