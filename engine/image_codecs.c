/* Codecs (see image_codecs.h): JPEG and WebP encoders (PNG's is
 * engine/image.c's), and the decoders of all three from memory, with the
 * header checked against the caps before any pixel buffer exists and EXIF
 * orientation applied to JPEGs. libjpeg and libpng report errors through a
 * longjmp: each setjmp sits in a small function whose state lives in a
 * caller-owned struct, so nothing but that state crosses the jump. */
#include "image_codecs.h"

#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jerror.h>
#include <jpeglib.h>
#include <webp/decode.h>
#include <webp/encode.h>

#include "image.h"

static const char *names[IMG_FORMAT_COUNT] = {"png", "jpeg", "webp"};

int image_format_parse(const char *s) {
    if (!s) return -1;
    if (!strcmp(s, "jpg")) return IMG_JPEG;
    for (int i = 0; i < IMG_FORMAT_COUNT; i++)
        if (!strcmp(s, names[i])) return i;
    return -1;
}

const char *image_format_name(image_format f) {
    return (unsigned)f < IMG_FORMAT_COUNT ? names[f] : "?";
}

const char *image_format_mime(image_format f) {
    static const char *m[IMG_FORMAT_COUNT] = {"image/png", "image/jpeg", "image/webp"};
    return (unsigned)f < IMG_FORMAT_COUNT ? m[f] : "application/octet-stream";
}

const char *image_format_ext(image_format f) {
    static const char *e[IMG_FORMAT_COUNT] = {"png", "jpg", "webp"};
    return (unsigned)f < IMG_FORMAT_COUNT ? e[f] : "bin";
}

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jb;
    char msg[JMSG_LENGTH_MAX];
} jpeg_err;

static void jpeg_fail(j_common_ptr c) {
    jpeg_err *e = (jpeg_err *)c->err;
    c->err->format_message(c, e->msg);
    longjmp(e->jb, 1);
}

static easel_err encode_jpeg(const uint8_t *rgb, int w, int h, int quality, uint8_t **out,
                             size_t *len) {
    struct jpeg_compress_struct c;
    jpeg_err je;
    unsigned char *buf = NULL;
    unsigned long n = 0;
    c.err = jpeg_std_error(&je.pub);
    je.pub.error_exit = jpeg_fail;
    if (setjmp(je.jb)) {
        jpeg_destroy_compress(&c);
        free(buf);
        return easel_seterr(EASEL_EINTERNAL, "encoding JPEG: %s", je.msg);
    }
    jpeg_create_compress(&c);
    jpeg_mem_dest(&c, &buf, &n);
    c.image_width = (JDIMENSION)w;
    c.image_height = (JDIMENSION)h;
    c.input_components = 3;
    c.in_color_space = JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, quality < 1 ? 1 : quality > 100 ? 100 : quality, TRUE);
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = (JSAMPROW)(rgb + (size_t)c.next_scanline * (size_t)w * 3);
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    /* jpeg_mem_dest allocates with malloc: ours to free */
    *out = buf;
    *len = n;
    return EASEL_OK;
}

static easel_err encode_webp(const uint8_t *rgb, int w, int h, int quality, uint8_t **out,
                             size_t *len) {
    uint8_t *enc = NULL;
    size_t n = quality >= 100
                   ? WebPEncodeLosslessRGB(rgb, w, h, w * 3, &enc)
                   : WebPEncodeRGB(rgb, w, h, w * 3, (float)(quality < 0 ? 0 : quality), &enc);
    if (!n || !enc) return easel_seterr(EASEL_EINTERNAL, "encoding WebP failed (%dx%d)", w, h);
    uint8_t *copy = malloc(n); /* callers free() what we return; WebP's own buffer is WebPFree's */
    if (copy) memcpy(copy, enc, n);
    WebPFree(enc);
    if (!copy) return easel_seterr(EASEL_ENOMEM, "encoding WebP: out of memory");
    *out = copy;
    *len = n;
    return EASEL_OK;
}

easel_err image_encode(image_format f, const uint8_t *rgb, int w, int h, int quality, uint8_t **out,
                       size_t *len) {
    *out = NULL, *len = 0;
    if (w <= 0 || h <= 0) return easel_seterr(EASEL_EINVAL, "image size %dx%d", w, h);
    switch (f) {
    case IMG_PNG:
        return image_encode_png(rgb, w, h, out, len);
    case IMG_JPEG:
        return encode_jpeg(rgb, w, h, quality, out, len);
    case IMG_WEBP:
        return encode_webp(rgb, w, h, quality, out, len);
    default:
        return easel_seterr(EASEL_EINVAL, "unknown image format %d", (int)f);
    }
}

/* ---- decoding: common ---- */

int image_sniff(const uint8_t *d, size_t n) {
    if (!d) return -1;
    if (n >= 8 && !memcmp(d, "\x89PNG\r\n\x1a\n", 8)) return IMG_PNG;
    if (n >= 3 && d[0] == 0xFF && d[1] == 0xD8 && d[2] == 0xFF) return IMG_JPEG;
    if (n >= 12 && !memcmp(d, "RIFF", 4) && !memcmp(d + 8, "WEBP", 4)) return IMG_WEBP;
    return -1;
}

static void limits_of(const image_limits *lim, int64_t *max_px, int *max_side) {
    *max_px = lim && lim->max_pixels > 0 ? lim->max_pixels : IMAGE_DEFAULT_MAX_PIXELS;
    *max_side = lim && lim->max_side > 0 ? lim->max_side : IMAGE_DEFAULT_MAX_SIDE;
}

static easel_err check_size(const char *fmt, uint64_t w, uint64_t h, const image_limits *lim) {
    int64_t max_px;
    int max_side;
    limits_of(lim, &max_px, &max_side);
    if (w == 0 || h == 0)
        return easel_seterr(EASEL_EFORMAT, "%s: the header says %llux%llu", fmt,
                            (unsigned long long)w, (unsigned long long)h);
    if (w > (uint64_t)max_side || h > (uint64_t)max_side || w * h > (uint64_t)max_px)
        return easel_seterr(EASEL_EINVAL,
                            "%s: %llux%llu is too large to decode (at most %d pixels a side and "
                            "%.1f megapixels)",
                            fmt, (unsigned long long)w, (unsigned long long)h, max_side,
                            (double)max_px / 1e6);
    return EASEL_OK;
}

/* ---- EXIF orientation (JPEG APP1) ---- */

static unsigned rd16(const uint8_t *p, int be) {
    return be ? (unsigned)p[0] << 8 | p[1] : (unsigned)p[1] << 8 | p[0];
}
static uint32_t rd32(const uint8_t *p, int be) {
    return be ? (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]
              : (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0];
}

/* The Orientation tag (0x0112) of IFD0 in an APP1 "Exif\0\0" payload; 1 when
 * absent, out of range or malformed (a broken EXIF block never fails a decode). */
static int exif_orientation(const uint8_t *d, size_t n) {
    if (n < 6 + 8 || memcmp(d, "Exif\0\0", 6)) return 1;
    const uint8_t *t = d + 6;
    size_t tn = n - 6;
    int be;
    if (!memcmp(t, "II*\0", 4))
        be = 0;
    else if (!memcmp(t, "MM\0*", 4))
        be = 1;
    else
        return 1;
    uint32_t ifd = rd32(t + 4, be);
    if (ifd > tn || tn - ifd < 2) return 1;
    unsigned count = rd16(t + ifd, be);
    for (unsigned i = 0; i < count; i++) {
        size_t at = (size_t)ifd + 2 + (size_t)i * 12;
        if (at > tn || tn - at < 12) return 1;
        const uint8_t *e = t + at;
        if (rd16(e, be) != 0x0112) continue;
        if (rd16(e + 2, be) != 3 || rd32(e + 4, be) < 1) return 1; /* SHORT, count >= 1 */
        unsigned v = rd16(e + 8, be);
        return v >= 1 && v <= 8 ? (int)v : 1;
    }
    return 1;
}

/* Applies EXIF orientation o to rgba (w x h) in a new buffer; *w, *h become
 * the displayed size. For each displayed pixel (x', y') the stored one. */
static easel_err orient(uint8_t **rgba, int *w, int *h, int o) {
    if (o <= 1) return EASEL_OK;
    int W = *w, H = *h, swap = o >= 5;
    int dw = swap ? H : W, dh = swap ? W : H;
    uint32_t *dst = malloc((size_t)dw * dh * 4), *src = (uint32_t *)*rgba;
    if (!dst) return easel_seterr(EASEL_ENOMEM, "jpeg: out of memory (orientation)");
    for (int y = 0; y < dh; y++)
        for (int x = 0; x < dw; x++) {
            int sx, sy;
            switch (o) {
            case 2:
                sx = W - 1 - x, sy = y;
                break;
            case 3:
                sx = W - 1 - x, sy = H - 1 - y;
                break;
            case 4:
                sx = x, sy = H - 1 - y;
                break;
            case 5:
                sx = y, sy = x;
                break;
            case 6:
                sx = y, sy = H - 1 - x;
                break;
            case 7:
                sx = W - 1 - y, sy = H - 1 - x;
                break;
            default:
                sx = W - 1 - y, sy = x;
                break; /* 8 */
            }
            dst[(size_t)y * dw + x] = src[(size_t)sy * W + sx];
        }
    free(*rgba);
    *rgba = (uint8_t *)dst;
    *w = dw, *h = dh;
    return EASEL_OK;
}

/* ---- JPEG ---- */

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jb;
    char msg[JMSG_LENGTH_MAX];
    int truncated; /* libjpeg warned that the data ended early (it would fill gray) */
} jpeg_derr;

static void jpeg_derr_exit(j_common_ptr c) {
    jpeg_derr *e = (jpeg_derr *)c->err;
    c->err->format_message(c, e->msg);
    longjmp(e->jb, 1);
}

static void jpeg_derr_emit(j_common_ptr c, int level) {
    jpeg_derr *e = (jpeg_derr *)c->err;
    if (level < 0 && c->err->msg_code == JWRN_JPEG_EOF) e->truncated = 1;
}

/* What one decode holds across the longjmp; freed by the caller. */
typedef struct {
    struct jpeg_decompress_struct d;
    jpeg_derr err;
    uint8_t *px; /* RGBA */
    uint8_t *row;
    image_info info;
} jpeg_job;

/* 0, or -1 if libjpeg failed (j->err.msg says why). header_only: stop after
 * the header (and the EXIF block). */
static int jpeg_run(jpeg_job *j, const uint8_t *data, size_t len, const image_limits *lim,
                    int header_only, easel_err *size_err) {
    if (setjmp(j->err.jb)) return -1;
    jpeg_create_decompress(&j->d);
    jpeg_mem_src(&j->d, data, (unsigned long)len);
    jpeg_save_markers(&j->d, JPEG_APP0 + 1, 0xFFFF);
    jpeg_read_header(&j->d, TRUE);
    int o = 1;
    for (jpeg_saved_marker_ptr m = j->d.marker_list; m; m = m->next)
        if (m->marker == JPEG_APP0 + 1 && (o = exif_orientation(m->data, m->data_length)) != 1)
            break;
    unsigned W = j->d.image_width, H = j->d.image_height;
    j->info = (image_info){.format = IMG_JPEG,
                           .width = (int)(o >= 5 ? H : W),
                           .height = (int)(o >= 5 ? W : H),
                           .orientation = o};
    if ((*size_err = check_size("jpeg", W, H, lim))) return 0;
    if (header_only) return 0;
    int cmyk = j->d.jpeg_color_space == JCS_CMYK || j->d.jpeg_color_space == JCS_YCCK;
    j->d.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
    jpeg_start_decompress(&j->d);
    int nc = j->d.output_components;
    if ((cmyk && nc != 4) || (!cmyk && nc != 3)) ERREXIT(&j->d, JERR_CONVERSION_NOTIMPL);
    size_t w = j->d.output_width, h = j->d.output_height;
    if (!(j->px = malloc(w * h * 4)) || !(j->row = malloc(w * (size_t)nc)))
        ERREXIT1(&j->d, JERR_OUT_OF_MEMORY, 0);
    int inverted = cmyk && j->d.saw_Adobe_marker; /* Adobe writes CMYK inverted */
    while (j->d.output_scanline < h) {
        size_t y = j->d.output_scanline;
        JSAMPROW r = j->row;
        jpeg_read_scanlines(&j->d, &r, 1);
        uint8_t *o8 = j->px + y * w * 4;
        for (size_t x = 0; x < w; x++) {
            const uint8_t *s = j->row + x * (size_t)nc;
            if (cmyk) {
                unsigned c = s[0], m = s[1], yy = s[2], k = s[3];
                if (!inverted) c = 255 - c, m = 255 - m, yy = 255 - yy, k = 255 - k;
                o8[4 * x] = (uint8_t)((c * k + 127) / 255);
                o8[4 * x + 1] = (uint8_t)((m * k + 127) / 255);
                o8[4 * x + 2] = (uint8_t)((yy * k + 127) / 255);
            } else {
                o8[4 * x] = s[0], o8[4 * x + 1] = s[1], o8[4 * x + 2] = s[2];
            }
            o8[4 * x + 3] = 255;
        }
    }
    jpeg_finish_decompress(&j->d);
    return 0;
}

static easel_err decode_jpeg(const uint8_t *data, size_t len, const image_limits *lim,
                             int header_only, uint8_t **rgba, image_info *info) {
    jpeg_job *j = calloc(1, sizeof *j);
    if (!j) return easel_seterr(EASEL_ENOMEM, "jpeg: out of memory");
    j->d.err = jpeg_std_error(&j->err.pub);
    j->err.pub.error_exit = jpeg_derr_exit;
    j->err.pub.emit_message = jpeg_derr_emit;
    easel_err size_err = EASEL_OK, e = EASEL_OK;
    int rc = jpeg_run(j, data, len, lim, header_only, &size_err);
    if (rc)
        e = easel_seterr(EASEL_EFORMAT, "jpeg: %s", j->err.msg);
    else if (size_err)
        e = size_err;
    else if (j->err.truncated)
        e = easel_seterr(EASEL_EFORMAT, "jpeg: the data ends before the image does (truncated)");
    jpeg_destroy_decompress(&j->d);
    free(j->row);
    int w = j->info.width, h = j->info.height;
    if (!e && !header_only) {
        int sw = (int)j->d.output_width, sh = (int)j->d.output_height;
        e = orient(&j->px, &sw, &sh, j->info.orientation);
        if (!e && (sw != w || sh != h)) e = easel_seterr(EASEL_EINTERNAL, "jpeg: size changed");
        if (!e) *rgba = j->px, j->px = NULL;
    }
    if (info) *info = j->info;
    free(j->px);
    free(j);
    return e;
}

/* ---- PNG ---- */

typedef struct {
    const uint8_t *data;
    size_t len, at;
    char msg[200];
    int oom;
    uint8_t *px;
    png_bytep *rows;
    image_info info;
} png_job;

static void png_derr(png_structp png, png_const_charp msg) {
    png_job *j = png_get_error_ptr(png);
    snprintf(j->msg, sizeof j->msg, "%s", msg);
    png_longjmp(png, 1);
}

static void png_dwarn(png_structp png, png_const_charp msg) {
    (void)png, (void)msg;
}

static void png_mem_read(png_structp png, png_bytep out, size_t n) {
    png_job *j = png_get_io_ptr(png);
    if (j->len - j->at < n) png_error(png, "the data ends before the image does (truncated)");
    memcpy(out, j->data + j->at, n);
    j->at += n;
}

/* 0, or -1 if libpng failed (j->msg says why). */
static int png_run(png_structp png, png_infop info, png_job *j, const image_limits *lim,
                   int header_only, easel_err *size_err) {
    if (setjmp(png_jmpbuf(png))) return -1;
    int64_t max_px;
    int max_side;
    limits_of(lim, &max_px, &max_side);
    png_set_user_limits(png, 0x7fffffff, 0x7fffffff); /* ours are checked below, with a message */
    png_set_chunk_malloc_max(png, 8u << 20);          /* no 2 GB iCCP/zTXt chunk */
    png_read_info(png, info);
    png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
    int ct = png_get_color_type(png, info), bd = png_get_bit_depth(png, info);
    int trns = png_get_valid(png, info, PNG_INFO_tRNS) != 0;
    j->info = (image_info){.format = IMG_PNG,
                           .width = (int)w,
                           .height = (int)h,
                           .has_alpha = (ct & PNG_COLOR_MASK_ALPHA) || trns,
                           .orientation = 1};
    if ((*size_err = check_size("png", w, h, lim))) return 0;
    if (header_only) return 0;
    if (ct == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if (ct == PNG_COLOR_TYPE_GRAY && bd < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (trns) png_set_tRNS_to_alpha(png);
    if (bd == 16) png_set_scale_16(png);
    if (ct == PNG_COLOR_TYPE_GRAY || ct == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(png);
    if (!(ct & PNG_COLOR_MASK_ALPHA) && !trns) png_set_add_alpha(png, 0xFF, PNG_FILLER_AFTER);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    if (png_get_rowbytes(png, info) != (size_t)w * 4) png_error(png, "unexpected row layout");
    j->px = malloc((size_t)w * h * 4);
    j->rows = malloc((size_t)h * sizeof *j->rows);
    if (!j->px || !j->rows) j->oom = 1, png_error(png, "out of memory");
    for (png_uint_32 y = 0; y < h; y++)
        j->rows[y] = j->px + (size_t)y * w * 4;
    png_read_image(png, j->rows);
    png_read_end(png, NULL);
    return 0;
}

static easel_err decode_png(const uint8_t *data, size_t len, const image_limits *lim,
                            int header_only, uint8_t **rgba, image_info *info) {
    png_job j = {.data = data, .len = len};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &j, png_derr, png_dwarn);
    png_infop pi = png ? png_create_info_struct(png) : NULL;
    if (!pi) {
        png_destroy_read_struct(&png, NULL, NULL);
        return easel_seterr(EASEL_ENOMEM, "png: out of memory");
    }
    png_set_read_fn(png, &j, png_mem_read);
    easel_err size_err = EASEL_OK, e = EASEL_OK;
    int rc = png_run(png, pi, &j, lim, header_only, &size_err);
    png_destroy_read_struct(&png, &pi, NULL);
    free(j.rows);
    if (rc)
        e = easel_seterr(j.oom ? EASEL_ENOMEM : EASEL_EFORMAT, "png: %s", j.msg);
    else if (size_err)
        e = size_err;
    if (!e && !header_only) *rgba = j.px, j.px = NULL;
    if (info) *info = j.info;
    free(j.px);
    return e;
}

/* ---- WebP ---- */

static easel_err decode_webp(const uint8_t *data, size_t len, const image_limits *lim,
                             int header_only, uint8_t **rgba, image_info *info) {
    WebPBitstreamFeatures f;
    VP8StatusCode st = WebPGetFeatures(data, len, &f);
    if (st != VP8_STATUS_OK)
        return easel_seterr(EASEL_EFORMAT, "webp: %s",
                            st == VP8_STATUS_NOT_ENOUGH_DATA ? "the data ends in the header"
                                                             : "not a valid WebP header");
    image_info in = {.format = IMG_WEBP,
                     .width = f.width,
                     .height = f.height,
                     .has_alpha = f.has_alpha,
                     .orientation = 1};
    if (info) *info = in;
    if (f.has_animation)
        return easel_seterr(EASEL_EFORMAT, "webp: an animated WebP (send one still image)");
    easel_err e = check_size("webp", (uint64_t)(f.width > 0 ? f.width : 0),
                             (uint64_t)(f.height > 0 ? f.height : 0), lim);
    if (e || header_only) return e;
    size_t stride = (size_t)f.width * 4, n = stride * (size_t)f.height;
    uint8_t *px = malloc(n);
    if (!px) return easel_seterr(EASEL_ENOMEM, "webp: out of memory");
    if (!WebPDecodeRGBAInto(data, len, px, n, (int)stride)) {
        free(px);
        return easel_seterr(EASEL_EFORMAT, "webp: corrupt or truncated image data");
    }
    *rgba = px;
    return EASEL_OK;
}

/* ---- entry points ---- */

static easel_err decode_any(const uint8_t *data, size_t len, const image_limits *lim,
                            int header_only, uint8_t **rgba, image_info *info) {
    if (rgba) *rgba = NULL;
    if (info) memset(info, 0, sizeof *info);
    if (!data || !len) return easel_seterr(EASEL_EFORMAT, "empty: not an image");
    switch (image_sniff(data, len)) {
    case IMG_PNG:
        return decode_png(data, len, lim, header_only, rgba, info);
    case IMG_JPEG:
        return decode_jpeg(data, len, lim, header_only, rgba, info);
    case IMG_WEBP:
        return decode_webp(data, len, lim, header_only, rgba, info);
    default:
        return easel_seterr(EASEL_EFORMAT, "not a PNG, JPEG or WebP image");
    }
}

easel_err image_probe(const uint8_t *data, size_t len, const image_limits *lim, image_info *info) {
    return decode_any(data, len, lim, 1, NULL, info);
}

easel_err image_decode(const uint8_t *data, size_t len, const image_limits *lim, uint8_t **rgba,
                       image_info *info) {
    return decode_any(data, len, lim, 0, rgba, info);
}

/* ---- engine/image.h's JPEG entry points (live previews, tests) ---- */

easel_err image_encode_jpeg(const uint8_t *rgb, int w, int h, int quality, uint8_t **out,
                            size_t *len) {
    *out = NULL, *len = 0;
    if (!rgb || w < 1 || h < 1 || w > 65500 || h > 65500)
        return easel_seterr(EASEL_EINVAL, "jpeg: bad image %dx%d", w, h);
    return encode_jpeg(rgb, w, h, quality, out, len);
}

easel_err image_decode_jpeg(const uint8_t *data, size_t len, uint8_t **rgb, int *w, int *h) {
    *rgb = NULL, *w = *h = 0;
    if (!data || !len) return easel_seterr(EASEL_EINVAL, "jpeg: no data");
    if (image_sniff(data, len) != IMG_JPEG) return easel_seterr(EASEL_EFORMAT, "jpeg: not a JPEG");
    uint8_t *rgba = NULL;
    image_info in;
    easel_err e = image_decode(data, len, NULL, &rgba, &in);
    if (e) return e;
    size_t n = (size_t)in.width * in.height;
    for (size_t i = 0; i < n; i++) /* RGBA -> RGB in place */
        memmove(rgba + 3 * i, rgba + 4 * i, 3);
    *rgb = rgba, *w = in.width, *h = in.height;
    return EASEL_OK;
}

easel_err image_decode_png_mem(const uint8_t *data, size_t len, uint8_t **rgb, int *w, int *h) {
    *rgb = NULL, *w = *h = 0;
    if (!data || !len) return easel_seterr(EASEL_EFORMAT, "png: no data");
    if (image_sniff(data, len) != IMG_PNG) return easel_seterr(EASEL_EFORMAT, "png: not a PNG");
    uint8_t *rgba = NULL;
    image_info in;
    easel_err e = image_decode(data, len, NULL, &rgba, &in);
    if (e) return e;
    image_flatten(rgba, in.width, in.height, 0x000000, rgba); /* in place: RGB <= RGBA */
    *rgb = rgba, *w = in.width, *h = in.height;
    return EASEL_OK;
}
