/* AutoencoderKL decoder: post_quant_conv, conv_in, mid block (ResNets +
 * single-head attention), up blocks with upsampling, norm + SiLU + conv_out.
 * Weights by diffusers names ("decoder.up_blocks.0.resnets.0.conv1.weight",
 * "post_quant_conv.weight", ...). The encoder comes later (img2img). */
#ifndef EASEL_VAE_H
#define EASEL_VAE_H

#include "../engine/arena.h"
#include "weights.h"

#define VAE_MAX_LEVELS 4

typedef struct {
    int latent_channels;                    /* 4 */
    int out_channels;                       /* 3 */
    int levels;                             /* 4 */
    int block_out_channels[VAE_MAX_LEVELS]; /* 128, 256, 512, 512 */
    int layers_per_block;                   /* 2 (the decoder has layers_per_block+1 per up block) */
    int norm_num_groups;                    /* 32 */
    float scaling_factor;                   /* 0.18215 */
} vae_config;

void vae_config_sd15(vae_config *c);
easel_err vae_config_from_json(vae_config *c, const char *json);

typedef struct vae_model vae_model;

easel_err vae_load(const vae_config *c, wstore *ws, vae_model **out);
void vae_free(vae_model *m);
const vae_config *vae_get_config(const vae_model *m);

/* z: [B, h, w, latent_channels] latents as the sampler leaves them (this
 * divides by scaling_factor); img: [B, 8h·…, out_channels] allocated by the
 * caller (8 = 2^(levels-1)), values in about [-1, 1] as diffusers' decoder
 * returns them (no clamping here). */
easel_err vae_decode(const vae_model *m, arena *ar, const tensor *z, tensor *img);

#endif
