/* Where the networks get their weights: a weight store answers "give me the
 * tensor named N (diffusers naming), of shape S" by converting the stored
 * data to the backend's dtype and our layouts and uploading it. The networks
 * (clip.c, unet.c, vae.c) only ever ask by diffusers name and expected shape;
 * the loader (loader.c) implements stores for a diffusers folder and for a
 * single-file LDM checkpoint (mapping names), and make-model implements a
 * store that invents random weights and records them for writing.
 * Errors name the tensor and the expected and found shapes. */
#ifndef EASEL_WEIGHTS_H
#define EASEL_WEIGHTS_H

#include "../engine/backend.h"

typedef enum {
    WL_PLAIN = 0, /* as stored: linear [out,in], vectors, embeddings */
    WL_CONV,      /* stored [Co,Ci,KH,KW] (PyTorch), returned [Co,KH,KW,Ci] (ours) */
    WL_CONV_AS_LINEAR /* stored [Co,Ci,1,1] or [Co,Ci], returned [Co,Ci] (1x1 conv used as linear) */
} weight_layout;

typedef struct wstore wstore;

struct wstore {
    backend *be;
    /* Fills *out (allocated with be->alloc, dtype be->act_dtype) with the tensor
     * `name` whose stored shape must be `shape` (ndim dims, PyTorch order) —
     * for WL_CONV_AS_LINEAR a stored [Co,Ci] is accepted too. */
    easel_err (*get)(wstore *ws, const char *name, int ndim, const int64_t *shape,
                     weight_layout layout, tensor *out);
    /* 1 if the store has a tensor of that name (for optional weights). */
    int (*has)(wstore *ws, const char *name);
    void *ctx;
    size_t bytes_loaded; /* device bytes handed out by get() */
};

/* printf-style name helper: wstore_getf(ws, layout, out, ndim, shape, "down_blocks.%d.x", i) */
easel_err wstore_getf(wstore *ws, weight_layout layout, tensor *out, int ndim,
                      const int64_t *shape, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

/* A store over one or more safetensors files (models/wstore.c). A requested
 * diffusers name N is looked up as prefix + N (prefix may be NULL), then
 * passed through rename (if given), which writes the stored name into buf and
 * returns it, or returns NULL for "no such tensor". Stored F32/F16/BF16 data is
 * converted to the backend dtype and layout; shapes are checked (the error
 * names the tensor and both shapes). A name stored in two files is refused at
 * open. paths are copied; rename_ctx must outlive the store. */
typedef const char *(*wstore_rename_fn)(void *ctx, const char *name, char *buf, size_t len);
easel_err wstore_st_open(backend *be, const char *const *paths, int npaths, const char *prefix,
                         wstore_rename_fn rename, void *rename_ctx, wstore **out);
void wstore_st_close(wstore *ws);
/* Stored tensors that no get() has asked for: fills up to max names (valid
 * until close, in file order) and returns how many there are in all. */
size_t wstore_st_unused(const wstore *ws, const char **names, size_t max);

/* The part every store shares: checks that a stored tensor of shape
 * (sndim, sshape) matches the request (ndim, shape, layout), then converts the
 * host f32 data src to our layout and uploads it into *out (allocated here).
 * Errors name `name` and both shapes. */
easel_err wstore_upload(backend *be, const char *name, const float *src, int sndim,
                        const int64_t *sshape, int ndim, const int64_t *shape,
                        weight_layout layout, tensor *out);

#endif
