/* Checkpoint layouts -> weight stores. A checkpoint is either a diffusers
 * folder (unet/, vae/, text_encoder/, tokenizer/, *.safetensors + config.json)
 * or one SD1.x .safetensors file with LDM names (model.diffusion_model.*,
 * first_stage_model.*, cond_stage_model.transformer.*). Pickle files are
 * refused. The networks ask the stores by diffusers name; the single-file
 * store maps names with ldm_name(). */
#ifndef EASEL_LOADER_H
#define EASEL_LOADER_H

#include <stddef.h>

#include "clip.h"
#include "unet.h"
#include "vae.h"
#include "weights.h"

typedef enum { SD_UNET = 0, SD_VAE, SD_TEXT, SD_COMPONENTS } sd_component;

/* "unet", "vae", "text_encoder" (the diffusers folder names). */
const char *sd_component_name(sd_component c);

/* A model's architecture: the three networks' configs. */
typedef struct {
    char arch[16]; /* "sd15", "tiny" or "custom" */
    unet_config unet;
    vae_config vae;
    clip_config clip;
} sd_arch;

void sd_arch_sd15(sd_arch *a);
/* A few-MB SD-shaped model for tests and first runs: UNet (32,64) channels, one
 * layer per block, cross dim 32; CLIP 2 layers of width 32; VAE (32,32,64,64)
 * so that images are still 8x the latents. */
void sd_arch_tiny(sd_arch *a);
/* "sd15" or "tiny"; EASEL_EINVAL naming the choices otherwise. */
easel_err sd_arch_by_name(const char *name, sd_arch *a);

/* Single-file (LDM) name of diffusers parameter `name` of component c,
 * prefix included ("model.diffusion_model.input_blocks.1.0.in_layers.0.weight").
 * Uses a's layers_per_block, up-block attention flags and VAE depth.
 * EASEL_ENOTFOUND if the name is not one SD1.x has. */
easel_err ldm_name(const sd_arch *a, sd_component c, const char *name, char *out, size_t len);

/* JSON texts of the configs in diffusers/transformers format (malloc'd;
 * caller frees), as make-model writes them and the *_config_from_json read them. */
char *sd_config_json(const sd_arch *a, sd_component c);

typedef struct sd_checkpoint sd_checkpoint;

/* Opens path (a diffusers folder or a .safetensors file), reads the configs.
 * .ckpt/.pt/.bin/.pth (pickle) files are refused with the reason and how to
 * convert them. EASEL_ENOTFOUND for a missing path. */
easel_err sd_checkpoint_open(const char *path, sd_checkpoint **out);
void sd_checkpoint_close(sd_checkpoint *ck);
const sd_arch *sd_checkpoint_arch(const sd_checkpoint *ck);
int sd_checkpoint_single_file(const sd_checkpoint *ck);
/* The folder's tokenizer/ directory, or NULL (use the built-in CLIP vocab). */
const char *sd_checkpoint_tokenizer_dir(const sd_checkpoint *ck);

/* A store for component c uploading to be. The store stays valid until the
 * checkpoint is closed. */
easel_err sd_checkpoint_store(sd_checkpoint *ck, sd_component c, backend *be, wstore *ws);
/* After the network was loaded from the store: EASEL_EFORMAT naming the
 * tensors of c that were never requested (weights SD1.x inference does not
 * use, such as the VAE encoder or EMA copies, are not counted). */
easel_err sd_checkpoint_check_unused(const sd_checkpoint *ck, sd_component c);

/* Reads a whole small text file (malloc'd, NUL-terminated). */
easel_err sd_read_text(const char *path, size_t max_bytes, char **out);

/* ---- make-model (models/make_model.c) ---- */

/* One weight request a network made: diffusers name, PyTorch shape. */
typedef struct {
    char *name;
    int ndim;
    int64_t shape[4];
    weight_layout layout;
} sd_wrec;
typedef struct {
    sd_wrec *v;
    size_t n, cap;
} sd_wrecs;

/* Runs unet_load/vae_load/clip_load for a against stores that record every
 * request (in order) and hand out untouched zero pages, so recording SD1.5
 * costs no memory. rec[c] are freed with sd_wrecs_free. */
easel_err sd_record_weights(const sd_arch *a, sd_wrecs rec[SD_COMPONENTS]);
void sd_wrecs_free(sd_wrecs *r);
/* The deterministic random values make-model writes for weight `name`:
 * norms γ=1 β=0, other biases uniform ±0.02, weights uniform with std
 * 1/sqrt(fan_in); a function of (name, shape, seed) only. */
void sd_random_weight(const char *name, int ndim, const int64_t *shape, uint64_t seed, float *dst);
/* Writes a random model of a: a diffusers folder, or one LDM-named
 * .safetensors (configs in __metadata__) when out ends in ".safetensors". */
easel_err sd_make_model(const sd_arch *a, dtype dt, uint64_t seed, const char *out);

#endif
