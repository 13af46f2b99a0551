/* AutoencoderKL. Decoder: post_quant_conv, conv_in, mid block (ResNets +
 * single-head attention), up blocks with upsampling, norm + SiLU + conv_out.
 * Encoder (img2img, inpainting): conv_in, down blocks (ResNets, Downsample2D
 * with its asymmetric zero padding), mid block, norm + SiLU + conv_out,
 * quant_conv. Weights by diffusers names ("decoder.up_blocks.0.resnets.0.
 * conv1.weight", "encoder.down_blocks.0.downsamplers.0.conv.weight",
 * "quant_conv.weight", ...). */
#ifndef EASEL_VAE_H
#define EASEL_VAE_H

#include "../engine/arena.h"
#include "weights.h"

#define VAE_MAX_LEVELS 4

typedef struct {
    int latent_channels;                    /* 4 */
    int in_channels;                        /* 3 (the encoder's input) */
    int out_channels;                       /* 3 */
    int levels;                             /* 4 */
    int block_out_channels[VAE_MAX_LEVELS]; /* 128, 256, 512, 512 */
    int layers_per_block; /* 2 (the decoder has layers_per_block+1 per up block) */
    int norm_num_groups;  /* 32 */
    float scaling_factor; /* 0.18215 (SDXL: 0.13025) */
    /* 1 (diffusers' default): decode in fp32 even where the UNet runs in fp16,
     * whose range the decoder's activations exceed (SDXL's VAE overflows it;
     * fp16-fix VAEs clear the flag) */
    int force_upcast;
} vae_config;

void vae_config_sd15(vae_config *c);
easel_err vae_config_from_json(vae_config *c, const char *json);

typedef struct vae_model vae_model;

/* Loads the decoder, and the encoder when the store has one
 * ("encoder.conv_in.weight"; a decoder-only checkpoint loads without it). */
easel_err vae_load(const vae_config *c, wstore *ws, vae_model **out);
void vae_free(vae_model *m);
const vae_config *vae_get_config(const vae_model *m);

/* z: [B, h, w, latent_channels] latents as the sampler leaves them (this
 * divides by scaling_factor); img: [B, 8h·…, out_channels] allocated by the
 * caller (8 = 2^(levels-1)), values in about [-1, 1] as diffusers' decoder
 * returns them (no clamping here). */
easel_err vae_decode(const vae_model *m, arena *ar, const tensor *z, tensor *img);

int vae_has_encoder(const vae_model *m);
/* img: [B, H, W, in_channels] in [-1, 1] (diffusers' preprocessed image);
 * moments: [B, h, w, 2·latent_channels] allocated by the caller, h = H/8 for
 * H a multiple of 8 (each of the levels−1 Downsample2D maps n to
 * floor((n−2)/2)+1): quant_conv(encoder(img)), the DiagonalGaussian's mean
 * in channels [0, C) and its log-variance (not yet clamped) in [C, 2C), as
 * AutoencoderKL.encode returns them (latent_dist.parameters). Scaling by
 * scaling_factor is the caller's (the pipeline's), after sampling. EUNSUPPORTED
 * without an encoder. */
easel_err vae_encode(const vae_model *m, arena *ar, const tensor *img, tensor *moments);

#endif
