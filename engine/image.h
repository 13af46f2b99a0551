/* Images: float RGB -> 8-bit RGB -> PNG (libpng), written atomically:
 * to a temp file in the same directory, fsynced, then renamed, so a reader
 * never sees a partial PNG and a crash leaves at most a temp file. (JPEG and
 * WebP encoders: image_codecs.h.) */
#ifndef EASEL_IMAGE_H
#define EASEL_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

/* rgb: h·w·3 bytes, row-major. */
easel_err image_write_png(const char *path, const uint8_t *rgb, int w, int h);
/* Encodes to a malloc'd buffer (*out, *len); caller frees. */
easel_err image_encode_png(const uint8_t *rgb, int w, int h, uint8_t **out, size_t *len);
/* Decodes an 8-bit RGB PNG (tests, tools): *rgb malloc'd, caller frees. */
easel_err image_read_png(const char *path, uint8_t **rgb, int *w, int *h);
/* Decodes a JPEG held in memory to 8-bit RGB, EXIF orientation applied: a
 * thin wrapper over image_decode (engine/image_codecs.c, the one JPEG
 * decoder), kept for the tests of what image_encode writes. *rgb malloc'd,
 * caller frees. */
easel_err image_decode_jpeg(const uint8_t *data, size_t len, uint8_t **rgb, int *w, int *h);
/* HWC floats in [lo,hi] -> bytes (clamped, rounded). */
void image_f32_to_rgb8(const float *src, uint8_t *dst, int64_t n, float lo, float hi);

#endif
