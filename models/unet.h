/* UNet2DConditionModel (SD1.x/2.x and SDXL): time embedding (+ SDXL's
 * text_time added embedding, + LCM's guidance embedding), conv_in, down
 * blocks (ResNet blocks + optional cross-attention transformers +
 * downsample), mid block, up blocks with skip connections, conv_out.
 * Configurable so that tiny test configs, SD2.x and SDXL reuse it. Weights by
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
    int head_dim_or_heads[UNET_MAX_LEVELS];  /* diffusers attention_head_dim, which diffusers
                                                reads as the head count: 8 (SD1.x), 5,10,20,20 (SD2)
                                              */
    int cross_attention_dim;                 /* 768 */
    int norm_num_groups;                     /* 32 */
    float norm_eps;                          /* 1e-5 */
    int transformer_layers[UNET_MAX_LEVELS]; /* transformer_layers_per_block: 1 (SDXL 1,2,10);
                                                the up blocks use their level's, the mid block
                                                the deepest level's, as diffusers */
    int use_linear_projection;               /* 0 (SD1.x: 1x1 conv proj_in/out), 1 for SD2 */
    int flip_sin_to_cos;                     /* 1 */
    float freq_shift;                        /* 0 */
    int sample_size;                         /* 64 (latent size the model was trained at) */
    int upcast_attention;                    /* 1 for SD2.x-768: attention scores in fp32 */
    int time_cond_proj_dim;                  /* 0, or the guidance embedding's width (LCM: 256) */
    int add_text_time;           /* addition_embed_type "text_time" (SDXL): the pooled text
                                    embedding and the micro-conditioning time ids */
    int addition_time_embed_dim; /* 256: the sinusoidal width per time id */
    int projection_class_embeddings_input_dim; /* 2816 = pooled 1280 + 6 time ids x 256 */
} unet_config;

/* SDXL's micro-conditioning: original size (h, w), crop top-left (top,
 * left), target size (h, w), in pixels. */
#define UNET_TIME_IDS 6

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
/* unet_forward with timestep_cond: cond is B·time_cond_proj_dim host floats
 * (the guidance embedding, unet_guidance_embedding) for a model that has
 * time_cond_proj_dim, NULL otherwise. */
easel_err unet_forward_cond(const unet_model *m, arena *ar, const tensor *x, const float *t,
                            const float *cond, const tensor *ctx, tensor *out);
/* The same with the B timesteps in an f32 tensor t [B] and the timestep_cond
 * (NULL, or f32 [B, time_cond_proj_dim]) in tensors of the arena's backend,
 * so that a captured step reads each step's values (see backend_run_graph). */
easel_err unet_forward_t(const unet_model *m, arena *ar, const tensor *x, const tensor *t,
                         const tensor *cond, const tensor *ctx, tensor *out);

/* What a UNet is conditioned on besides x, t and ctx, per sample (B of each).
 * Fields a model does not use must be NULL. */
typedef struct {
    /* time_cond_proj_dim models: B x time_cond_proj_dim on the host, or an f32 device tensor
     * [B, time_cond_proj_dim] (read at replay by a captured step) */
    const float *timestep_cond;
    const tensor *timestep_cond_dev;
    /* text_time models: either text_embeds (B x pooled dim) and time_ids (B x UNET_TIME_IDS) on
     * the host, or aug_emb: add_embedding's output [B, temb], which does not change between
     * steps (unet_aug_embedding) */
    const float *text_embeds, *time_ids;
    const tensor *aug_emb;
} unet_cond;

/* The pooled text width a text_time model expects (0 for others). */
int unet_text_embeds_dim(const unet_config *c);
/* The width of the time embedding (4 x block_out_channels[0]): aug_emb's last dim. */
int unet_temb_dim(const unet_config *c);
/* aug_emb [B, temb] = add_embedding(cat(text_embeds, add_time_proj(time_ids))), as diffusers'
 * get_aug_embed for text_time: computed once per job, it is added to every step's time
 * embedding. */
easel_err unet_aug_embedding(const unet_model *m, arena *ar, const float *text_embeds,
                             const float *time_ids, tensor *aug_emb);
/* unet_forward with everything else it may be conditioned on: the timesteps on the host (t)
 * or in an f32 device tensor (t_dev, as unet_forward_t), exactly one of them; cond may be
 * NULL for a model that needs nothing more. */
easel_err unet_forward_ex(const unet_model *m, arena *ar, const tensor *x, const float *t,
                          const tensor *t_dev, const unet_cond *cond, const tensor *ctx,
                          tensor *out);
/* diffusers' get_guidance_scale_embedding(w, dim) for one w (the pipelines pass
 * guidance_scale - 1), in torch's float32 operation order: out[dim]. */
void unet_guidance_embedding(float w, int dim, float *out);

#endif
