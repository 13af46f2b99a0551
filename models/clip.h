/* CLIP text encoder (SD1.x: OpenAI ViT-L/14 text tower; SD2.x: OpenCLIP
 * ViT-H; SDXL: both ViT-L and OpenCLIP ViT-bigG): token + position
 * embeddings, pre-LN transformer layers with causal self-attention and
 * quick-GELU or GELU MLPs, final layer norm, and for CLIPTextModelWithProjection
 * the pooled (EOS) state through text_projection. Weights by transformers'
 * names ("text_model.encoder.layers.0.self_attn.q_proj.weight", ...,
 * "text_projection.weight"). */
#ifndef EASEL_CLIP_H
#define EASEL_CLIP_H

#include "../engine/arena.h"
#include "weights.h"

typedef struct {
    int vocab_size;     /* 49408 */
    int hidden;         /* 768 */
    int layers;         /* 12 */
    int heads;          /* 12 */
    int intermediate;   /* 3072 */
    int max_positions;  /* 77 */
    int quick_gelu;     /* 1: quick_gelu (SD1.x), 0: gelu (SD2 OpenCLIP) */
    float eps;          /* 1e-5 */
    int projection;     /* 1: CLIPTextModelWithProjection (text_projection [projection_dim,
                           hidden], no bias; SDXL's text_encoder_2) */
    int projection_dim; /* 768 (its config's default); 1280 for ViT-bigG */
    int eos_token_id;   /* 2 (the legacy value: the pooled state is at the largest id, as
                           transformers does for it), else the EOS id whose first position */
} clip_config;

void clip_config_sd15(clip_config *c);
/* From transformers' text_encoder/config.json text (unknown keys ignored;
 * missing keys keep the SD1.5 values). */
easel_err clip_config_from_json(clip_config *c, const char *json);

typedef struct clip_model clip_model;

easel_err clip_load(const clip_config *c, wstore *ws, clip_model **out);
void clip_free(clip_model *m);
const clip_config *clip_get_config(const clip_model *m);

/* ids: batch×max_positions token ids (host). out: [batch, max_positions, hidden]
 * allocated by the caller. skip = number of final layers skipped (0 = last
 * layer; diffusers' clip_skip=1 is skip=1); the final layer norm is applied
 * either way, as diffusers does. Temporaries come from ar and are released. */
easel_err clip_forward(const clip_model *m, arena *ar, const int32_t *ids, int batch, int skip,
                       tensor *out);

/* The general form, as transformers' forward(output_hidden_states=True) is
 * read by the pipelines: hidden [batch, max_positions, hidden] gets
 * hidden_states[layer] (the state after `layer` of the layers, 0..layers; 0
 * is the embeddings),
 * through final_layer_norm when final_norm (SD1.x/2.x) or as it is (SDXL's
 * hidden_states[-2]). pooled, if not NULL, gets [batch, projection_dim] =
 * text_projection(final_layer_norm(last_hidden_state)[eos]) — text_embeds
 * of CLIPTextModelWithProjection (without a projection: pooler_output,
 * [batch, hidden]); it needs every layer run. */
easel_err clip_encode(const clip_model *m, arena *ar, const int32_t *ids, int batch, int layer,
                      int final_norm, tensor *hidden, tensor *pooled);
/* The width of clip_encode's pooled output. */
int clip_pooled_dim(const clip_config *c);

#endif
