/* Where the networks get their weights: a weight store answers "give me the
 * tensor named N (diffusers naming), of shape S" by converting the stored
 * data to our layouts and the backend's dtype (wstore_dtype) and uploading it,
 * after an optional per-tensor hook (LoRA merging, a dtype choice). The networks
 * (clip.c, unet.c, vae.c) only ever ask by diffusers name and expected shape;
 * the loader (loader.c) implements stores for a diffusers folder and for a
 * single-file LDM checkpoint (mapping names), and make-model implements a
 * store that invents random weights and records them for writing.
 * Errors name the tensor and the expected and found shapes. */
#ifndef EASEL_WEIGHTS_H
#define EASEL_WEIGHTS_H

#include "../engine/backend.h"

typedef enum {
    WL_PLAIN = 0,     /* as stored: linear [out,in], vectors, embeddings */
    WL_CONV,          /* stored [Co,Ci,KH,KW] (PyTorch), returned [Co,KH,KW,Ci] (ours) */
    WL_CONV_AS_LINEAR /* stored [Co,Ci,1,1] or [Co,Ci], returned [Co,Ci] (1x1 conv used as linear)
                       */
} weight_layout;

typedef struct wstore wstore;

/* One tensor on its way from a checkpoint to the backend (see wstore_hook). */
typedef struct {
    const char *name; /* as the store names it */
    float *data;      /* host f32, in our layout; the hook may change the values */
    int ndim;         /* our shape (after the layout conversion) */
    const int64_t *ne;
    weight_layout layout; /* what the network asked for */
    dtype dt;             /* the dtype it will be stored in: wstore_dtype()'s choice;
                           * the hook may change it to any dtype the backend stores */
} wstore_tensor;

/* The per-tensor hook a store calls (when set) for every tensor, after the
 * layout conversion and before the upload. Returns 0, or an error with a
 * message to fail the load. Called on the loading thread, one tensor at a
 * time, in the order the networks ask for them. */
typedef easel_err (*wstore_hook)(void *ctx, wstore_tensor *t);

struct wstore {
    backend *be;
    /* Fills *out (allocated with be->alloc, dtype wstore_dtype() unless the
     * hook changes it) with the tensor `name` whose stored shape must be
     * `shape` (ndim dims, PyTorch order) — for WL_CONV_AS_LINEAR a stored
     * [Co,Ci] is accepted too. */
    easel_err (*get)(wstore *ws, const char *name, int ndim, const int64_t *shape,
                     weight_layout layout, tensor *out);
    /* 1 if the store has a tensor of that name (for optional weights). */
    int (*has)(wstore *ws, const char *name);
    void *ctx;
    size_t bytes_loaded; /* device bytes handed out by get() */
    wstore_hook hook;    /* optional; set by whoever opened the store */
    void *hook_ctx;
    int borrowed; /* get() lends tensors the store's owner keeps (a LoRA set's view of a
                   * model, models/lora.h): a network loaded from it must not free them */
};

/* The dtype a weight is stored in on be: be->weight_dtype for the matrices the
 * matrix ops consume (2 dims or more in our layout: linear and conv weights,
 * embedding tables), except the position embeddings, which are added to
 * activations; be->act_dtype for everything else (biases, norms). */
dtype wstore_dtype(const backend *be, const char *name, int ndim);

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
 * (sndim, sshape) matches the request (ndim, shape, layout), converts the
 * host f32 data src to our layout, passes it through ws->hook (if set; src
 * itself is never written) and uploads it to ws->be into *out (allocated
 * here, in wstore_dtype() or the hook's choice). Errors name `name` and both
 * shapes. */
easel_err wstore_upload(wstore *ws, const char *name, const float *src, int sndim,
                        const int64_t *sshape, int ndim, const int64_t *shape, weight_layout layout,
                        tensor *out);

#endif
