/* PNG images through libpng (see image.h). Encoding goes to memory; a file
 * is then written to a temp name in the target's directory, fsynced and
 * renamed over the target (and the directory fsynced), so readers never
 * see a partial PNG. libpng reports errors by longjmp: each setjmp sits in
 * a small function whose state lives in a caller-owned struct. */
#include "image.h"

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

static int write_all(int fd, const uint8_t *p, size_t n) {
    while (n) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            if (k == 0) errno = EIO;
            return -1;
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* dir of path ("." if none) into buf. */
static void dir_of(const char *path, char *buf, size_t len) {
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(buf, len, ".");
    else if (slash == path)
        snprintf(buf, len, "/");
    else
        snprintf(buf, len, "%.*s", (int)(slash - path), path);
}

/* Creates <dir>/.<name>.tmp.<pid>.<rand> exclusively; fd or -1 (errno set). */
static int open_temp(const char *path, char *tmp, size_t len) {
    char dir[4096];
    const char *slash = strrchr(path, '/');
    dir_of(path, dir, sizeof dir);
    for (int tries = 0; tries < 16; tries++) {
        unsigned r = 0;
        if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r)
            r ^= (unsigned)tries * 2654435761u;
        int n = snprintf(tmp, len, "%s/.%s.tmp.%ld.%08x", dir, slash ? slash + 1 : path,
                         (long)getpid(), r);
        if (n < 0 || (size_t)n >= len) return errno = ENAMETOOLONG, -1;
        int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd >= 0 || errno != EEXIST) return fd;
    }
    return -1;
}

/* Writes bytes to a temp file and renames it over path; removes the temp on failure. */
static easel_err write_atomic(const char *path, const uint8_t *bytes, size_t n) {
    char tmp[4352];
    int fd = open_temp(path, tmp, sizeof tmp);
    if (fd < 0) return easel_seterr(EASEL_EIO, "writing PNG %s: %s", path, strerror(errno));
    int bad = write_all(fd, bytes, n) || fsync(fd);
    int err = errno;
    if (close(fd) && !bad) bad = 1, err = errno;
    if (!bad && rename(tmp, path)) bad = 1, err = errno;
    if (bad) {
        unlink(tmp);
        return easel_seterr(EASEL_EIO, "writing PNG %s: %s", path, strerror(err));
    }
    char dir[4096];
    dir_of(path, dir, sizeof dir);
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd); /* best effort: makes the rename durable where supported */
        close(dfd);
    }
    return 0;
}

easel_err image_write_png(const char *path, const uint8_t *rgb, int w, int h) {
    uint8_t *png;
    size_t n;
    easel_err e = image_encode_png(rgb, w, h, &png, &n);
    if (e) return easel_wraperr(e, "%s", path);
    e = write_atomic(path, png, n);
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
