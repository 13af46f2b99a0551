/* UNet2DConditionModel (SD1.x/2.x family): time embedding, conv_in, down
 * blocks (ResNet blocks + optional cross-attention transformers +
 * downsample), mid block, up blocks with skip connections, conv_out.
 * Configurable so that tiny test configs and SD2.x reuse it. Weights by
 * diffusers names ("down_blocks.0.resnets.0.conv1.weight", ...). */
#ifndef EASEL_UNET_H
#define EASEL_UNET_H

#include "../engine/arena.h"
#include "weights.h"

#define UNET_MAX_LEVELS 4

typedef struct {
    int in_channels, out_channels;           /* 4, 4 */
    int levels;                              /* len(block_out_channels): 4 */
    int block_out_channels[UNET_MAX_LEVELS]; /* 320, 640, 1280, 1280 */
    int down_attn[UNET_MAX_LEVELS];          /* CrossAttnDownBlock2D? 1,1,1,0 */
    int up_attn[UNET_MAX_LEVELS];            /* CrossAttnUpBlock2D? 0,1,1,1 (up order) */
    int layers_per_block;                    /* 2 */
    int head_dim_or_heads[UNET_MAX_LEVELS];  /* diffusers attention_head_dim: heads for SD1.x (8) */
    int heads_are_dims;                      /* 0: the value is the head count (SD1.x quirk) */
    int cross_attention_dim;                 /* 768 */
    int norm_num_groups;                     /* 32 */
    float norm_eps;                          /* 1e-5 */
    int transformer_layers;                  /* 1 */
    int use_linear_projection;               /* 0 (SD1.x: 1x1 conv proj_in/out), 1 for SD2 */
    int flip_sin_to_cos;                     /* 1 */
    float freq_shift;                        /* 0 */
    int sample_size;                         /* 64 (latent size the model was trained at) */
} unet_config;

void unet_config_sd15(unet_config *c);
/* From diffusers' unet/config.json text (missing keys keep the SD1.5 values;
 * unsupported features, e.g. class embeddings, are refused by name). */
easel_err unet_config_from_json(unet_config *c, const char *json);

typedef struct unet_model unet_model;

easel_err unet_load(const unet_config *c, wstore *ws, unet_model **out);
void unet_free(unet_model *m);
const unet_config *unet_get_config(const unet_model *m);

/* x: [B, h, w, in_channels] latents (NHWC); t: B timesteps (host);
 * ctx: [B, L, cross_attention_dim]; out: [B, h, w, out_channels] allocated by
 * the caller. h and w need not be powers of two (diffusers upsamples to the
 * skip's size). Temporaries come from ar and are released before returning. */
easel_err unet_forward(const unet_model *m, arena *ar, const tensor *x, const float *t,
                       const tensor *ctx, tensor *out);

#endif
