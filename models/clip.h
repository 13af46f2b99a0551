/* CLIP text encoder (SD1.x: OpenAI ViT-L/14 text tower): token + position
 * embeddings, pre-LN transformer layers with causal self-attention and
 * quick-GELU MLPs, final layer norm. Weights by transformers' CLIPTextModel
 * names ("text_model.encoder.layers.0.self_attn.q_proj.weight", ...). */
#ifndef EASEL_CLIP_H
#define EASEL_CLIP_H

#include "../engine/arena.h"
#include "weights.h"

typedef struct {
    int vocab_size;        /* 49408 */
    int hidden;            /* 768 */
    int layers;            /* 12 */
    int heads;             /* 12 */
    int intermediate;      /* 3072 */
    int max_positions;     /* 77 */
    int quick_gelu;        /* 1: quick_gelu (SD1.x), 0: gelu (SD2 OpenCLIP) */
    float eps;             /* 1e-5 */
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

#endif
