/* Uploaded images (init images and masks for img2img and inpainting), kept
 * in DATA/uploads as the bytes the client sent plus a small JSON record of
 * what they are. An upload is checked whole before it is kept (it must
 * decode within the caps: a truncated file or a decompression bomb is
 * refused, and nothing is written), and appears whole or not at all: the
 * image is written atomically first, its record second, and an upload
 * exists once its record does (a crash in between leaves an image the sweep
 * removes). Uploads older than the retention are removed unless a pending
 * or processing job refers to them.
 *
 * With several nodes on one shared store, every upload is also a row of the
 * store (written before the upload exists), and a node that lacks one gets
 * it from there; the sweep then also removes the store's expired rows.
 *
 * Ids are "upl_" + 32 hex digits (128 random bits). Thread-safe: every call
 * works on files (and the store's own connection); the sweep is
 * rate-limited under a lock. */
#ifndef EASEL_UPLOADS_H
#define EASEL_UPLOADS_H

#include <stddef.h>
#include <stdint.h>

#include "../engine/err.h"
#include "../engine/image_codecs.h"
#include "store.h"

#define UPLOAD_ID_LEN 36 /* "upl_" + 32 hex */
#define UPLOAD_DEFAULT_MAX_BYTES (20u << 20)

typedef struct uploads uploads;

typedef struct {
    char id[UPLOAD_ID_LEN + 1];
    image_format format;
    int width, height; /* as displayed (EXIF orientation applied) */
    int has_alpha;
    int64_t bytes, created_ms;
} upload_info;

/* Is a job still using this upload (pending or processing)? For the sweep. */
typedef int (*uploads_in_use_fn)(void *ctx, const char *id);

typedef struct {
    const char *dir;      /* DATA/uploads (made if missing) */
    int64_t retention_ms; /* 0: keep forever */
    image_limits limits;  /* what an upload may decode to */
    uploads_in_use_fn in_use;
    void *in_use_ctx;
    /* a shared store that holds uploads (store_holds_uploads), or NULL: each
     * upload is then also a row of it, and one this node lacks is fetched
     * from it (and kept here), so a job any node claims finds its images */
    store *store;
} uploads_config;

easel_err uploads_open(const uploads_config *cfg, uploads **out);
void uploads_close(uploads *u);
/* The decode caps uploads are held to. */
const image_limits *uploads_limits(const uploads *u);

/* 1 if s looks like an upload id (the format only). */
int upload_id_valid(const char *s);

/* Keeps data as a new upload: decoded first (EASEL_EFORMAT: not a PNG,
 * JPEG or WebP, truncated, corrupt; EASEL_EINVAL: over the caps), then
 * written; *info describes it. EASEL_EIO if the disk refuses (nothing left
 * behind). Also runs a due sweep. */
easel_err uploads_put(uploads *u, const uint8_t *data, size_t len, upload_info *info);
/* The record of an upload; EASEL_ENOTFOUND for an unknown (or expired) id. */
easel_err uploads_info(uploads *u, const char *id, upload_info *info);
/* The upload's bytes (malloc'd, caller frees). */
easel_err uploads_read(uploads *u, const char *id, uint8_t **data, size_t *len);
/* Removes an upload (a request that stored inline images and then failed). */
void uploads_remove(uploads *u, const char *id);
/* Removes uploads past the retention that no job uses, and leftovers of
 * interrupted writes older than an hour. Returns how many uploads went. */
int uploads_sweep(uploads *u, int64_t now_ms);

/* ---- what a job makes of its uploads ---- */

/* How a job's mask comes from its image: luminance (white = repaint), or
 * alpha (transparent = repaint, OpenAI's images.edit). */
typedef enum { MASK_FROM_LUMA = 0, MASK_FROM_ALPHA } mask_source;

typedef struct {
    const char *init_image; /* upload id, or NULL */
    const char *mask;       /* upload id, or NULL; may equal init_image (its alpha) */
    mask_source mask_from;
    image_resize_mode resize; /* how the image becomes width x height */
    int width, height;
    uint32_t background; /* what transparent pixels of the init image become (0xFFFFFF) */
} upload_job;

/* Decodes and resizes a job's image (*rgb, width·height·3) and mask (*mask,
 * width·height, 255 = repaint; NULL without one), both malloc'd. The mask
 * gets the image's geometry (resized with the same mode). */
easel_err uploads_prepare(uploads *u, const upload_job *j, uint8_t **rgb, uint8_t **mask);

/* The same from bytes in memory (easel generate's files): img (and mask, or
 * NULL; mask_same: the mask is img's own channel) decoded within lim (NULL:
 * the defaults), flattened on background, resized to width x height. */
easel_err image_prepare_job(const uint8_t *img, size_t img_len, const uint8_t *mask,
                            size_t mask_len, int mask_same, const image_limits *lim,
                            mask_source from, image_resize_mode resize, int width, int height,
                            uint32_t background, uint8_t **rgb, uint8_t **mask_out);

/* The size a job gets when it gives an image but no size: the image's
 * aspect ratio with its long side `side`, each a multiple of `mult`; when
 * one of *w, *h is given (> 0) the other follows the aspect ratio. */
void uploads_default_size(int img_w, int img_h, int side, int mult, int *w, int *h);

/* ---- base64 (inline images in JSON) ---- */

/* Decodes standard or URL-safe base64 (padding optional, whitespace
 * ignored), optionally after a "data:<mime>;base64," prefix. *out malloc'd.
 * EASEL_EFORMAT naming what is wrong; EASEL_EINVAL when the decoded size
 * would exceed max. */
easel_err base64_decode(const char *s, size_t n, size_t max, uint8_t **out, size_t *len);

#endif
