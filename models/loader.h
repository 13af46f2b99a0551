/* Checkpoint layouts -> weight stores. A checkpoint is either a diffusers
 * folder (unet/, vae/, text_encoder/, tokenizer/, *.safetensors + config.json;
 * SDXL adds text_encoder_2/ and tokenizer_2/) or one .safetensors file with
 * LDM names (model.diffusion_model.*, first_stage_model.*, and
 * cond_stage_model.* for SD1.x/2.x, conditioner.embedders.{0,1}.* for SDXL).
 * Pickle files are refused. The networks ask the stores by diffusers name;
 * the single-file store maps names with ldm_name(). */
#ifndef EASEL_LOADER_H
#define EASEL_LOADER_H

#include <stddef.h>

#include "clip.h"
#include "scheduler.h"
#include "taesd.h"
#include "unet.h"
#include "vae.h"
#include "weights.h"

typedef enum { SD_UNET = 0, SD_VAE, SD_TEXT, SD_TEXT2, SD_COMPONENTS } sd_component;

/* "unet", "vae", "text_encoder", "text_encoder_2" (the diffusers folder names). */
const char *sd_component_name(sd_component c);

/* A model's architecture: the three networks' configs, and its schedule. */
typedef struct {
    char arch[16];   /* "sd15", "tiny", "sd2", ... (make-model's names) or "custom" */
    char family[16]; /* "sd15", "sd2", "sd2-v", "sd-turbo", "lcm": what the defaults follow */
    unet_config unet;
    vae_config vae;
    clip_config clip;
    clip_config clip2; /* text_encoder_2 when has_text2 (SDXL: OpenCLIP ViT-bigG + projection) */
    int has_text2;     /* a second text encoder (SDXL): ctx = cat(clip, clip2), pooled from clip2 */
    int force_zeros;   /* force_zeros_for_empty_prompt (model_index.json; SDXL's default):
                          no negative prompt = zero negative embeddings, as diffusers */
    sched_config sched; /* scheduler/scheduler_config.json, or the family's */
    int text_openclip;  /* single file: the text encoder in OpenCLIP layout (SD2.x) */
    int sched_stated;   /* the schedule came from the checkpoint (file, metadata) */
    int pred_stated;    /* the checkpoint itself states its prediction type */
} sd_arch;

void sd_arch_sd15(sd_arch *a);
/* A few-MB SD-shaped model for tests and first runs: UNet (32,64) channels, one
 * layer per block, cross dim 32; CLIP 2 layers of width 32; VAE (32,32,64,64)
 * so that images are still 8x the latents. */
void sd_arch_tiny(sd_arch *a);
/* SDXL base 1.0 (and sdxl-turbo at 512², the same networks): CLIP ViT-L + OpenCLIP
 * ViT-bigG (32 layers of 1280, projection 1280), the UNet with levels 320/640/1280,
 * no attention at the top level, transformer layers 1/2/10, heads 5/10/20,
 * cross-attention 2048 and the text_time added embedding (2816 = 1280 + 6 x 256), the SD
 * VAE with scaling factor 0.13025 (force_upcast: it overflows fp16). */
/* An architecture by make-model's name (sd_arch_tiny, sd15, sd2, ..., sdxl, tiny-sdxl);
 * EASEL_EINVAL naming the choices otherwise. */
easel_err sd_arch_by_name(const char *name, sd_arch *a);

/* Single-file (LDM) name of diffusers parameter `name` of component c,
 * prefix included ("model.diffusion_model.input_blocks.1.0.in_layers.0.weight").
 * Uses a's layers_per_block, up-block attention flags and VAE depth; with
 * a->text_openclip the text encoder's OpenCLIP names (SD2.x), with
 * a->has_text2 SDXL's (conditioner.embedders.0.transformer.* for text_encoder,
 * OpenCLIP names under conditioner.embedders.1.model.* for text_encoder_2).
 * In OpenCLIP q, k and v live in one in_proj tensor: *part (if not NULL) is
 * then 0, 1 or 2, the third of its rows that `name` is; LDM_PART_T when the
 * stored tensor is the transpose of ours (OpenCLIP's text_projection, applied
 * as x @ P); else -1. EASEL_ENOTFOUND if the name is not one SD1.x/2.x/XL has. */
#define LDM_PART_T 3
easel_err ldm_name(const sd_arch *a, sd_component c, const char *name, char *out, size_t len);
easel_err ldm_name_part(const sd_arch *a, sd_component c, const char *name, char *out, size_t len,
                        int *part);

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
/* The folder's tokenizer_2/ directory (SDXL), or NULL. */
const char *sd_checkpoint_tokenizer2_dir(const sd_checkpoint *ck);

/* One component on its own: dir holds config.json and the weights as a diffusers
 * pipeline's <component>/ subfolder does (diffusion_pytorch_model.safetensors,
 * or model.safetensors for a text encoder) — a standalone VAE such as an
 * fp16-fix one, or a test fixture. The arch gets that component's config over
 * the SD1.5 defaults (a text encoder's in both clip and clip2); only c is served
 * (sd_checkpoint_store for another component is EINVAL). */
easel_err sd_checkpoint_open_component(const char *dir, sd_component c, sd_checkpoint **out);
/* 1 if `easel make-model` wrote it (random weights: its images are noise). */
int sd_checkpoint_random_weights(const sd_checkpoint *ck);

/* A store for component c uploading to be. The store stays valid until the
 * checkpoint is closed. */
easel_err sd_checkpoint_store(sd_checkpoint *ck, sd_component c, backend *be, wstore *ws);
/* After the network was loaded from the store: EASEL_EFORMAT naming the
 * tensors of c that were never requested (weights SD1.x inference does not
 * use, such as the VAE encoder or EMA copies, are not counted). */
easel_err sd_checkpoint_check_unused(const sd_checkpoint *ck, sd_component c);

/* Reads a scheduler_config.json (fields it lacks stay unset, as from_config
 * leaves them to each class); errors name the file and the field. */
easel_err sd_read_scheduler(const char *path, sched_config *c);

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

/* Runs unet_load/vae_load/clip_load (twice for SDXL) for a against stores that
 * record every request (in order) and hand out untouched zero pages, so
 * recording SD1.5 costs no memory. rec[c] are freed with sd_wrecs_free
 * (rec[SD_TEXT2] stays empty without a second encoder). */
easel_err sd_record_weights(const sd_arch *a, sd_wrecs rec[SD_COMPONENTS]);
void sd_wrecs_free(sd_wrecs *r);
/* The deterministic random values make-model writes for weight `name`:
 * norms γ=1 β=0, other biases uniform ±0.02, weights uniform with std
 * 1/sqrt(fan_in); a function of (name, shape, seed) only. */
void sd_random_weight(const char *name, int ndim, const int64_t *shape, uint64_t seed, float *dst);
/* Writes a random model of a: a diffusers folder (with a random TAESD in
 * taesd/, see sd_taesd_config_for), or one LDM-named .safetensors (configs in
 * __metadata__, no TAESD) when out ends in ".safetensors". */
easel_err sd_make_model(const sd_arch *a, dtype dt, uint64_t seed, const char *out);
/* The TAESD make-model writes for a: the released shape (64 channels), 16
 * channels for the tiny archs, a's latent channels and VAE depth. */
void sd_taesd_config_for(const sd_arch *a, taesd_config *c);

#endif
