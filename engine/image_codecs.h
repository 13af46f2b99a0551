/* Images in the formats clients send and ask for. Out: PNG (engine/image.h),
 * JPEG (libjpeg-turbo) and WebP (libwebp), from 8-bit RGB, into memory. In:
 * PNG, JPEG (EXIF orientation applied, as a phone photo is meant to be
 * seen) and WebP from memory, to 8-bit RGBA, with the size read from the
 * header and checked against caps before any pixel is decoded (a
 * 30000x30000 header is refused at once, not allocated). Then the
 * operations img2img needs (engine/image_ops.c): flattening alpha, masks
 * from luminance or alpha, the resize modes A1111 users know, a Gaussian
 * blur for masks. */
#ifndef EASEL_IMAGE_CODECS_H
#define EASEL_IMAGE_CODECS_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

typedef enum { IMG_PNG = 0, IMG_JPEG, IMG_WEBP, IMG_FORMAT_COUNT } image_format;

/* "png", "jpeg", "webp" (also "jpg"); -1 if unknown. */
int image_format_parse(const char *s);
const char *image_format_name(image_format f); /* "png", "jpeg", "webp" */
const char *image_format_mime(image_format f); /* "image/png", ... */
const char *image_format_ext(image_format f);  /* "png", "jpg", "webp" */

/* rgb (h·w·3 bytes) encoded as f into a malloc'd *out of *len bytes (caller
 * frees). quality 0..100 for JPEG and WebP (100 = best; WebP at 100 is
 * lossless); PNG ignores it. */
easel_err image_encode(image_format f, const uint8_t *rgb, int w, int h, int quality, uint8_t **out,
                       size_t *len);

/* ---- decoding ---- */

#define IMAGE_DEFAULT_MAX_PIXELS 50000000LL /* a 48 MP phone photo fits */
#define IMAGE_DEFAULT_MAX_SIDE 16384

/* What a decode may produce: width and height each at most max_side and
 * width·height at most max_pixels (0 = the defaults above). */
typedef struct {
    int64_t max_pixels;
    int max_side;
} image_limits;

/* The file's format from its first bytes (PNG signature, JPEG SOI, RIFF
 * "WEBP"); -1 for anything else. */
int image_sniff(const uint8_t *data, size_t len);

typedef struct {
    image_format format;
    int width, height; /* as displayed: after the EXIF orientation (JPEG) */
    int has_alpha;     /* an alpha channel or transparency (tRNS) in the file */
    int orientation;   /* EXIF orientation 1..8 (1 = as stored; always 1 but for JPEG) */
} image_info;

/* Reads the header only: format, size, alpha, orientation. EASEL_EFORMAT
 * (not an image, truncated or corrupt header, animated WebP) or
 * EASEL_EINVAL (over the limits: too large to decode), messages saying why. */
easel_err image_probe(const uint8_t *data, size_t len, const image_limits *lim, image_info *info);

/* Decodes to *rgba (w·h·4 bytes, malloc'd, caller frees; alpha 255 where
 * the file has none), EXIF orientation applied. The header is checked
 * against lim first (EASEL_EINVAL: nothing decoded); a truncated or corrupt
 * file is EASEL_EFORMAT (a JPEG that ends early is refused, not gray-filled).
 * info (may be NULL) as image_probe fills it. */
easel_err image_decode(const uint8_t *data, size_t len, const image_limits *lim, uint8_t **rgba,
                       image_info *info);

/* ---- operations (engine/image_ops.c) ---- */

/* rgba (w·h·4) composited over the background colour bg (0xRRGGBB) into
 * rgb (w·h·3): out = a·c + (1 − a)·bg, rounded. */
void image_flatten(const uint8_t *rgba, int w, int h, uint32_t bg, uint8_t *rgb);
/* A mask (255 = repaint) from an image: its luminance (ITU-R 601, PIL's "L":
 * (299 R + 587 G + 114 B) / 1000) composited over black, so transparent
 * pixels keep (what a painted PNG means). */
void image_mask_from_luma(const uint8_t *rgba, int w, int h, uint8_t *mask);
/* A mask from alpha (OpenAI's images.edit: transparent = where to edit):
 * 255 − alpha. */
void image_mask_from_alpha(const uint8_t *rgba, int w, int h, uint8_t *mask);

/* How an image of another size or shape becomes W x H (A1111's resize_mode). */
typedef enum {
    RESIZE_STRETCH = 0, /* "resize": to W x H, the aspect ratio not kept */
    RESIZE_CROP,        /* "crop and resize": cover W x H keeping the aspect, centre crop */
    RESIZE_FILL,        /* "resize and fill": fit inside W x H keeping the aspect; the bands
                           left over are filled with the image's edge rows/columns stretched */
    RESIZE_MODE_COUNT
} image_resize_mode;

/* "resize", "crop", "fill" (also A1111's "just resize", "crop and resize",
 * "resize and fill"); -1 if unknown. */
int image_resize_mode_parse(const char *s);
const char *image_resize_mode_name(image_resize_mode m);

/* src (sw x sh, ch channels interleaved, 1..4) -> dst (dw x dh, ch channels,
 * caller allocated) by mode, with Lanczos-3 resampling (support widened by
 * the scale when shrinking, as PIL's LANCZOS). Identical sizes copy. */
easel_err image_resize(const uint8_t *src, int sw, int sh, int ch, uint8_t *dst, int dw, int dh,
                       image_resize_mode mode);

/* Gaussian blur of a one-channel image in place, standard deviation sigma
 * pixels (<= 0: nothing), separable, edges clamped; for mask_blur. ENOMEM. */
easel_err image_blur(uint8_t *px, int w, int h, float sigma);
/* An 8-bit RGB image from PNG bytes in memory (a PNG the job store holds):
 * *rgb malloc'd (w·h·3), caller frees. EASEL_EFORMAT if it is not a PNG.
 * A thin wrapper over image_decode (the one PNG decoder; alpha composited
 * on black). */
easel_err image_decode_png_mem(const uint8_t *data, size_t len, uint8_t **rgb, int *w, int *h);

#endif
