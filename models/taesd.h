/* TAESD, diffusers' AutoencoderTiny: a decoder and encoder of ≈ 1.2 M
 * parameters each between SD latents and images, made only of 3x3 convs,
 * ReLU, nearest 2x upsampling and strided convs (no norms, no attention).
 * The decoder soft-clamps its input (tanh(z/3)·3) and returns images in about
 * [-1, 1] as diffusers' decode does (its own [0, 1] output ·2 − 1); the
 * encoder takes [-1, 1] images ((x+1)/2 first) and returns raw latents.
 * Both live in the sampler's latent units: AutoencoderTiny's scaling_factor
 * is 1 for SD1.x/SD2.x/SDXL (SD latents already times 0.18215), and a
 * config that says otherwise is divided out as the pipelines do.
 *
 * Weights come from a diffusers AutoencoderTiny folder (config.json +
 * diffusion_pytorch_model.safetensors, names "decoder.layers.N...") or from
 * the original release (taesd_decoder.safetensors / taesd_encoder.safetensors,
 * taesdxl_* for SDXL: nn.Sequential indices, the decoder's shifted by one for
 * its parameterless Clamp at index 0). */
#ifndef EASEL_TAESD_H
#define EASEL_TAESD_H

#include "../engine/arena.h"
#include "weights.h"

#define TAESD_MAX_LEVELS 6
#define TAESD_MAX_BLOCKS 8

typedef struct {
    int in_channels;     /* 3 (image) */
    int out_channels;    /* 3 (image) */
    int latent_channels; /* 4 */
    int enc_levels, dec_levels;
    /* AutoencoderTiny builds level i+1 on level i's channels, so a working
     * model has one width per half: encoder/decoder_block_out_channels all equal. */
    int enc_channels, dec_channels;       /* 64 */
    int enc_blocks[TAESD_MAX_LEVELS];     /* num_encoder_blocks (1, 3, 3, 3) */
    int dec_blocks[TAESD_MAX_LEVELS];     /* num_decoder_blocks (3, 3, 3, 1) */
    float scaling_factor;                 /* 1.0 */
    float latent_magnitude, latent_shift; /* 3, 0.5: AutoencoderTiny.scale_latents (unused here) */
} taesd_config;

/* The released TAESD/TAESDXL shape: 64 channels, blocks (1,3,3,3)/(3,3,3,1). */
void taesd_config_default(taesd_config *c);
/* Reads an AutoencoderTiny config.json over *c. EUNSUPPORTED names a field we
 * do not implement (act_fn other than relu, upsample_fn other than nearest,
 * a scaling factor other than 2, per-level widths that differ, a shift_factor). */
easel_err taesd_config_from_json(taesd_config *c, const char *json);
/* The config as diffusers' AutoencoderTiny config.json (malloc'd; caller frees). */
char *taesd_config_json(const taesd_config *c);
/* Up/down factor between latents and images: 2^(levels-1) (8). */
int taesd_config_factor(const taesd_config *c);

typedef struct taesd_model taesd_model;

/* Loads from stores that answer diffusers names ("decoder.layers.0.weight",
 * "encoder.layers.0.weight"); enc may be NULL (a decoder alone: previews and
 * fast decode need nothing else). For make-model's recording stores too. */
easel_err taesd_load_ws(const taesd_config *c, wstore *dec, wstore *enc, taesd_model **out);
/* Loads from disk onto be: path is a diffusers AutoencoderTiny folder, a
 * folder holding the original taesd*_decoder.safetensors (+ _encoder), or one
 * original *_decoder.safetensors (its *_encoder.safetensors sibling is used
 * when present). Tensors nobody asked for are an error naming them. Errors
 * name the path and what is missing. */
easel_err taesd_load(const char *path, backend *be, taesd_model **out);
void taesd_free(taesd_model *m);
const taesd_config *taesd_get_config(const taesd_model *m);
int taesd_has_encoder(const taesd_model *m);
/* Parameters loaded (decoder + encoder). */
int64_t taesd_params(const taesd_model *m);
/* The path it was loaded from ("" for taesd_load_ws). */
const char *taesd_path(const taesd_model *m);

/* z: [B, h, w, latent_channels] latents in the sampler's units; img:
 * [B, f·h, f·w, out_channels] (f = taesd_config_factor), allocated by the
 * caller, values in about [-1, 1] as AutoencoderTiny.decode returns them. */
easel_err taesd_decode(const taesd_model *m, arena *ar, const tensor *z, tensor *img);
/* img: [B, H, W, in_channels] in [-1, 1], H and W multiples of f; z:
 * [B, H/f, W/f, latent_channels] as AutoencoderTiny.encode(...).latents
 * (times scaling_factor: the sampler's units). EUNSUPPORTED without an encoder. */
easel_err taesd_encode(const taesd_model *m, arena *ar, const tensor *img, tensor *z);

#endif
