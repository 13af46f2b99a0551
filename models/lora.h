/* LoRA adapters: the files users have (kohya / A1111: lora_unet_*, lora_te_*,
 * .lora_down/.lora_up/.alpha, LoCon convs, SDXL's lora_te1_/lora_te2_ and
 * LDM-named UNet layers; diffusers / PEFT: unet.*, text_encoder.* and
 * text_encoder_2.* with lora_A/lora_B, alpha from the adapter metadata),
 * matched to the loaded model's weights by name and shape, and merged
 * W' = W + weight·(alpha/rank)·up·down into copies of the weights they touch
 * (backend op lora_merge: fp32, one rounding into the weight's dtype). The
 * base weights stay shared and untouched; a merged set lends the rest of the
 * model's tensors to networks built over it (lora_set_store). The pieces:
 *   lora_file   one parsed adapter (header only, or with its data in memory)
 *   lora_index  the model's weights by name, recorded while it loads
 *   lora_set    the merged weights of one (LoRA set, weights) on a backend
 *   lora_cache  a worker's sets, least recently used first out, under a cap
 *   lora_lib    the LoRA directory: names -> files, listing, re-read on change
 * The pipeline (models/pipeline.c) uses them per job; cli/ and http/ name
 * LoRAs only through gen_params.loras and the lib. */
#ifndef EASEL_LORA_H
#define EASEL_LORA_H

#include <stddef.h>
#include <stdint.h>

#include "loader.h"
#include "pipeline.h"

typedef enum { LORA_KOHYA = 0, LORA_PEFT } lora_format;
/* "kohya", "peft" */
const char *lora_format_name(lora_format f);

/* The network a module adapts. */
typedef enum { LORA_UNET = 0, LORA_TEXT, LORA_TEXT2, LORA_PARTS } lora_part;

/* One adapted layer: up [out, r(,1,1)] · down [r, in(,kh,kw)]. */
typedef struct {
    char *key;  /* the module as the file names it ("lora_unet_..._to_q", "unet.down_blocks...") */
    char *path; /* kohya: the full key; PEFT: the diffusers module path in its network */
    lora_part part;
    char *up, *down; /* the tensors' names in the file */
    int rank;
    int up_ndim, down_ndim;
    int64_t up_shape[4], down_shape[4];
    float alpha; /* scale = alpha / rank (rsLoRA: alpha / sqrt(rank), folded into alpha) */
} lora_module;

/* What a file says about itself (GET /v1/loras). */
typedef struct {
    lora_format format;
    int modules, part_modules[LORA_PARTS], conv_modules;
    int rank_min, rank_max;
    char base[16];         /* "sd1", "sd2", "sdxl" or "" (unknown) */
    const char *base_from; /* "metadata", "shapes" or "" */
    int64_t params;        /* up and down values */
    int64_t file_bytes;
} lora_info;

typedef struct lora_file lora_file;

/* Opens and checks a LoRA: safetensors validated (engine/safetensors.h),
 * pickles (.pt/.ckpt/.bin...) refused with the reason, every tensor part of
 * a module of one layout, up/down shapes consistent; LyCORIS LoHa/LoKr, DoRA,
 * Tucker (lora_mid) and full-weight diffs refused by name. with_data: the
 * whole file is read into memory (for merging; a file truncated or changed
 * since is caught here, and an mmap can never fault); else only the header
 * is kept (listing, request checks). */
easel_err lora_open(const char *path, int with_data, lora_file **out);
void lora_close(lora_file *lf);
const lora_info *lora_file_info(const lora_file *lf);
size_t lora_file_count(const lora_file *lf);
const lora_module *lora_file_module(const lora_file *lf, size_t i);
/* The metadata strings a listing shows: ss_* and modelspec.* (long values
 * cut), in file order. -1 when i is out of range. */
size_t lora_file_meta_count(const lora_file *lf);
int lora_file_meta_at(const lora_file *lf, size_t i, const char **key, const char **value);
/* Up to max trigger words: modelspec.trigger_phrase, else the most frequent
 * tags of kohya's ss_tag_frequency. Returns how many (strings owned by lf). */
int lora_file_triggers(const lora_file *lf, const char **out, int max);

/* ---- the model's weights ---- */

typedef struct lora_index lora_index;

/* An empty index for a model of architecture a (its LDM names: kohya files
 * made on the LDM UNet name layers that way). */
easel_err lora_index_create(const sd_arch *a, lora_index **out);
void lora_index_free(lora_index *ix);
/* *out = a store that loads through inner and records each tensor it hands
 * out (name, layout, shape, the tensor itself) as component c's. The index
 * must outlive out; inner keeps counting bytes_loaded. */
void lora_index_wrap(lora_index *ix, sd_component c, wstore *inner, wstore *out);
/* Builds the name tables once every network is loaded. */
easel_err lora_index_finish(lora_index *ix);
/* 0 if every module of lf adapts a weight of this model with a shape that
 * fits and the file's metadata (ss_base_model_version, modelspec) names no
 * other family (sd1 / sd2 / sdxl); else EASEL_EINVAL naming the LoRA (name),
 * the first tensor whose shape does not fit (and the base the file says it is
 * for), the first few modules that match nothing, or both families. */
easel_err lora_check(const lora_index *ix, const lora_file *lf, const char *name);

/* ---- merged sets ---- */

typedef struct {
    const char *name;      /* for messages */
    const lora_file *file; /* opened with_data */
    float weight;
} lora_use;

typedef struct lora_set lora_set;

/* Device bytes the merged copies of uses would take on be (each weight any
 * of them adapts, once, in its stored dtype). */
easel_err lora_set_size(const lora_index *ix, const lora_use *uses, int n, size_t *bytes);
/* Merges: for each adapted weight W, W' = W + Σ weight_i·scale_i·up_i·down_i
 * in one lora_merge on be (the uses' factors side by side), into a new
 * tensor of W's dtype and shape. Factors must be finite (else EINVAL naming
 * the tensor). */
easel_err lora_set_build(const lora_index *ix, const lora_use *uses, int n, backend *be,
                         lora_set **out);
void lora_set_free(lora_set *s);
size_t lora_set_bytes(const lora_set *s);
/* Number of weights the set replaces in part p. */
int lora_set_count(const lora_set *s, lora_part p);
/* The merged copy of weight `name` of component c, or NULL. */
const tensor *lora_set_find(const lora_set *s, sd_component c, const char *name);
/* *out = a store for component c's network: the set's merged copy of a
 * weight where it has one, else the model's own tensor. Its tensors are
 * borrowed (ws->borrowed): a network loaded from it frees none of them. */
void lora_set_store(lora_set *s, sd_component c, wstore *out);

/* ---- a worker's cache ---- */

typedef struct lora_cache lora_cache;
typedef void (*lora_cache_free_fn)(void *payload);

lora_cache *lora_cache_create(size_t cap_bytes);
void lora_cache_free(lora_cache *c);
/* The payload cached under key (now the most recently used), or NULL. */
void *lora_cache_get(lora_cache *c, const char *key);
/* Makes room for bytes more: evicts least recently used entries (except
 * keep, which may be NULL) until they fit under the cap. EASEL_ENOMEM naming
 * both sizes when bytes alone are over the cap. */
easel_err lora_cache_reserve(lora_cache *c, size_t bytes, const void *keep);
/* Adds payload under key (the caller reserved its bytes first); the cache
 * frees it with free_fn when evicted or freed. On error free_fn is called. */
easel_err lora_cache_put(lora_cache *c, const char *key, void *payload, size_t bytes,
                         lora_cache_free_fn free_fn);
size_t lora_cache_bytes(const lora_cache *c, int *entries);
size_t lora_cache_cap(const lora_cache *c);

/* ---- the LoRA directory ---- */

/* Shared by every thread (its own lock): names are looked up afresh in the
 * directory each time, so files added while running are found; parsed
 * headers are kept while the file's identity (inode, size, mtime) holds. */
easel_err lora_lib_create(const char *dir, lora_lib **out);
void lora_lib_free(lora_lib *lib);
const char *lora_lib_dir(const lora_lib *lib);
/* Makes a file outside the directory known by name (easel generate --lora
 * PATH): *name gets its stem. */
easel_err lora_lib_add_file(lora_lib *lib, const char *path, char *name, size_t len);
/* The file behind name: its path (into path) and identity, a stamp that
 * changes when the file does. EASEL_ENOTFOUND naming the name and the
 * directory; EINVAL for a name that leaves the directory. */
easel_err lora_lib_find(lora_lib *lib, const char *name, char *path, size_t len, char *stamp,
                        size_t stamp_len);
/* lora_open with the directory left out of any message (file names relative to it). */
easel_err lora_lib_open(const lora_lib *lib, const char *path, int with_data, lora_file **out);
/* Checks name against the model's index (lora_check on its header, cached). */
easel_err lora_lib_check(lora_lib *lib, const char *name, const lora_index *ix);

/* One listed file: its name, path, size, and the parsed header or the
 * reason it cannot be used. */
typedef struct {
    const char *name, *path;
    int64_t bytes;
    const lora_file *file; /* NULL when error is set */
    const char *error;
} lora_entry;
/* Calls fn for every .safetensors under the directory (two levels of
 * folders; pickles are listed with the reason they are refused) and every
 * added file, sorted by name; the entry is valid during the call only. */
easel_err lora_lib_each(lora_lib *lib, void (*fn)(void *ctx, const lora_entry *e), void *ctx);

/* ---- random LoRAs (easel make-lora, tests, benches) ---- */

typedef struct {
    lora_format format;
    int rank;
    float alpha;      /* 0: the rank (scale 1) */
    int text_encoder; /* also adapt the text encoders' attention and MLP (both, on SDXL) */
    int conv;         /* LoCon: also the ResNets' convolutions and the time projections */
    dtype dt;         /* F16 or F32 */
    uint64_t seed;
    const char *base; /* ss_base_model_version to write, or NULL */
} lora_make_opts;

void lora_make_opts_default(lora_make_opts *o);
/* Writes a random LoRA for architecture a at path (atomically): the layers
 * kohya's default network trains (attention q/k/v/out, proj_in/out, the
 * feed-forward; with conv also the ResNet convs, shortcuts, up/down
 * samplers and time projections), down ~ U(±1/sqrt(in)), up ~ U(±0.5/sqrt(r)).
 * For SDXL, as sd-scripts writes them: kohya names the UNet's layers by their
 * LDM paths (lora_unet_input_blocks_4_1_...), the encoders lora_te1_ and
 * lora_te2_; PEFT files add text_encoder_2.*. */
easel_err lora_make_random(const sd_arch *a, const lora_make_opts *o, const char *path);

#endif
