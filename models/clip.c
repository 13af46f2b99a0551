/* CLIP text encoder (transformers' CLIPTextModel and
 * CLIPTextModelWithProjection): token + position embeddings, pre-LN layers
 * (causal self-attention, quick-GELU or GELU MLP), final layer norm, with
 * diffusers' clip_skip; the pooled EOS state and its projection. */
#include "clip.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "nn.h"

#define TRY(expr)                                                                                  \
    do {                                                                                           \
        if ((err = (expr))) goto done;                                                             \
    } while (0)

typedef struct {
    nn_norm ln1, ln2;
    nn_linear q, k, v, o, fc1, fc2;
} clip_layer;

struct clip_model {
    clip_config c;
    backend *be;
    nn_params params;
    tensor tok_emb, pos_emb;
    clip_layer *layers;
    nn_norm final_ln;
    nn_linear proj; /* text_projection (projection models only) */
};

void clip_config_sd15(clip_config *c) {
    *c = (clip_config){.vocab_size = 49408,
                       .hidden = 768,
                       .layers = 12,
                       .heads = 12,
                       .intermediate = 3072,
                       .max_positions = 77,
                       .quick_gelu = 1,
                       .eps = 1e-5f,
                       .projection_dim = 768,
                       .eos_token_id = 2};
}

static int json_int(const cJSON *root, const char *key, int *v) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!it || cJSON_IsNull(it)) return 0;
    if (!cJSON_IsNumber(it)) return -1;
    *v = it->valueint;
    return 0;
}

easel_err clip_config_from_json(clip_config *c, const char *json) {
    cJSON *root = cJSON_Parse(json);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return easel_seterr(EASEL_EFORMAT, "text encoder config: not a JSON object");
    }
    easel_err err = EASEL_OK;
    clip_config t = *c;
    if (json_int(root, "vocab_size", &t.vocab_size) || json_int(root, "hidden_size", &t.hidden) ||
        json_int(root, "num_hidden_layers", &t.layers) ||
        json_int(root, "num_attention_heads", &t.heads) ||
        json_int(root, "intermediate_size", &t.intermediate) ||
        json_int(root, "max_position_embeddings", &t.max_positions) ||
        json_int(root, "projection_dim", &t.projection_dim) ||
        json_int(root, "eos_token_id", &t.eos_token_id))
        TRY(easel_seterr(EASEL_EFORMAT, "text encoder config: a size is not a number"));
    const cJSON *eps = cJSON_GetObjectItemCaseSensitive(root, "layer_norm_eps");
    if (cJSON_IsNumber(eps)) t.eps = (float)eps->valuedouble;
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "hidden_act");
    if (cJSON_IsString(act)) {
        if (!strcmp(act->valuestring, "quick_gelu"))
            t.quick_gelu = 1;
        else if (!strcmp(act->valuestring, "gelu"))
            t.quick_gelu = 0;
        else
            TRY(easel_seterr(EASEL_EUNSUPPORTED,
                             "text encoder config: hidden_act \"%s\" "
                             "is not supported (quick_gelu, gelu)",
                             act->valuestring));
    }
    /* transformers builds the class the config names: the projection comes with it */
    const cJSON *archs = cJSON_GetObjectItemCaseSensitive(root, "architectures"), *an;
    cJSON_ArrayForEach(an, archs) if (cJSON_IsString(an)) {
        if (!strcmp(an->valuestring, "CLIPTextModelWithProjection"))
            t.projection = 1;
        else if (!strcmp(an->valuestring, "CLIPTextModel"))
            t.projection = 0;
        else
            TRY(easel_seterr(EASEL_EUNSUPPORTED,
                             "text encoder config: architecture \"%s\" is not supported "
                             "(CLIPTextModel, CLIPTextModelWithProjection)",
                             an->valuestring));
    }
    if (t.vocab_size < 1 || t.hidden < 1 || t.layers < 1 || t.heads < 1 || t.hidden % t.heads ||
        t.intermediate < 1 || t.max_positions < 1 || t.projection_dim < 1)
        TRY(easel_seterr(EASEL_EUNSUPPORTED,
                         "text encoder config: bad sizes (hidden %d, heads "
                         "%d, layers %d)",
                         t.hidden, t.heads, t.layers));
    *c = t;
done:
    cJSON_Delete(root);
    return err;
}

static easel_err layer_load(nn_params *p, const clip_config *c, clip_layer *l, int i) {
    char pre[NN_NAME_MAX], n[NN_NAME_MAX];
    easel_err err;
    int D = c->hidden;
    TRY(nn_name(pre, sizeof pre, "text_model.encoder.layers.%d", i));
#define SUB(field, fn, ...)                                                                        \
    TRY(nn_name(n, sizeof n, "%s.%s", pre, field));                                                \
    TRY(fn(p, __VA_ARGS__, n))
    SUB("layer_norm1", nn_norm_load, &l->ln1, D);
    SUB("self_attn.q_proj", nn_linear_load, &l->q, D, D, 1, 0);
    SUB("self_attn.k_proj", nn_linear_load, &l->k, D, D, 1, 0);
    SUB("self_attn.v_proj", nn_linear_load, &l->v, D, D, 1, 0);
    SUB("self_attn.out_proj", nn_linear_load, &l->o, D, D, 1, 0);
    SUB("layer_norm2", nn_norm_load, &l->ln2, D);
    SUB("mlp.fc1", nn_linear_load, &l->fc1, D, c->intermediate, 1, 0);
    SUB("mlp.fc2", nn_linear_load, &l->fc2, c->intermediate, D, 1, 0);
#undef SUB
done:
    return err;
}

easel_err clip_load(const clip_config *c, wstore *ws, clip_model **out) {
    *out = NULL;
    clip_model *m = calloc(1, sizeof *m);
    if (m) m->layers = calloc((size_t)c->layers, sizeof *m->layers);
    if (!m || !m->layers) {
        free(m);
        return easel_seterr(EASEL_ENOMEM, "text encoder: out of host memory");
    }
    m->c = *c;
    m->be = ws->be;
    nn_params_init(&m->params, ws);
    easel_err err;
    int64_t tok[2] = {c->vocab_size, c->hidden}, pos[2] = {c->max_positions, c->hidden};
    TRY(nn_get(&m->params, &m->tok_emb, WL_PLAIN, 2, tok, "text_model.embeddings.token_embedding",
               "weight"));
    TRY(nn_get(&m->params, &m->pos_emb, WL_PLAIN, 2, pos,
               "text_model.embeddings.position_embedding", "weight"));
    for (int i = 0; i < c->layers; i++)
        TRY(layer_load(&m->params, c, &m->layers[i], i));
    TRY(nn_norm_load(&m->params, &m->final_ln, c->hidden, "text_model.final_layer_norm"));
    if (c->projection)
        TRY(nn_linear_load(&m->params, &m->proj, c->hidden, c->projection_dim, 0, 0,
                           "text_projection"));
    *out = m;
    return EASEL_OK;
done:
    clip_free(m);
    return easel_wraperr(err, "loading the text encoder");
}

void clip_free(clip_model *m) {
    if (!m) return;
    nn_params_free(&m->params);
    free(m->layers);
    free(m);
}

const clip_config *clip_get_config(const clip_model *m) {
    return &m->c;
}

/* h += attn(ln1(h)) ; h += mlp(ln2(h)) */
static easel_err layer_fwd(const clip_model *m, const clip_layer *l, arena *ar, tensor *h) {
    backend *be = arena_backend(ar);
    size_t mark = arena_mark(ar);
    easel_err err = EASEL_OK;
    tensor n = arena_like(ar, h);
    TRY(arena_error(ar));
    TRY(be->layer_norm(be, &n, h, &l->ln1.w, &l->ln1.b, m->c.eps));
    tensor q = nn_linear_new(ar, &l->q, &n, &err);
    tensor k = nn_linear_new(ar, &l->k, &n, &err);
    tensor v = nn_linear_new(ar, &l->v, &n, &err);
    tensor o = arena_like(ar, h);
    TRY(err);
    TRY(arena_error(ar));
    TRY(be->attention(be, &o, &q, &k, &v, m->c.heads, 1));
    TRY(nn_linear_fwd(be, &l->o, &q, &o));
    TRY(be->binary(be, h, h, &q, BINARY_ADD));
    TRY(be->layer_norm(be, &n, h, &l->ln2.w, &l->ln2.b, m->c.eps));
    tensor f = nn_linear_new(ar, &l->fc1, &n, &err);
    TRY(err);
    TRY(be->unary(be, &f, &f, m->c.quick_gelu ? UNARY_QUICK_GELU : UNARY_GELU));
    TRY(nn_linear_fwd(be, &l->fc2, &n, &f));
    TRY(be->binary(be, h, h, &n, BINARY_ADD));
done:
    arena_release(ar, mark);
    return err;
}

int clip_pooled_dim(const clip_config *c) {
    return c->projection ? c->projection_dim : c->hidden;
}

/* Where transformers takes the pooled state of one sequence: the first
 * largest id for the legacy eos_token_id 2, else the first eos_token_id
 * (position 0 if there is none, as argmax of all-false). */
static int eos_position(const clip_config *c, const int32_t *ids) {
    int best = 0;
    for (int i = 0; i < c->max_positions; i++)
        if (c->eos_token_id == 2 ? ids[i] > ids[best] : ids[i] == c->eos_token_id) {
            best = i;
            if (c->eos_token_id != 2) break;
        }
    return best;
}

/* pooled [B, P] = proj(final_ln(h[b, eos_b])) */
static easel_err pool(const clip_model *m, arena *ar, const int32_t *ids, int batch,
                      const tensor *h, tensor *pooled) {
    const clip_config *c = &m->c;
    backend *be = arena_backend(ar);
    size_t mark = arena_mark(ar);
    easel_err err = EASEL_OK;
    int32_t rows[64];
    if (batch > 64) return easel_seterr(EASEL_EINVAL, "clip_encode: batch %d > 64", batch);
    for (int b = 0; b < batch; b++)
        rows[b] = b * c->max_positions + eos_position(c, ids + (size_t)b * c->max_positions);
    tensor h2 = tensor_2d(h->data, h->dt, h->dev, (int64_t)batch * c->max_positions, c->hidden);
    tensor g = arena_new2(ar, batch, c->hidden);
    tensor n = c->projection ? arena_new2(ar, batch, c->hidden) : *pooled;
    TRY(arena_error(ar));
    TRY(be->gather_rows(be, &g, &h2, rows, batch));
    TRY(be->layer_norm(be, &n, &g, &m->final_ln.w, &m->final_ln.b, c->eps));
    if (c->projection) TRY(nn_linear_fwd(be, &m->proj, pooled, &n));
done:
    arena_release(ar, mark);
    return err;
}

easel_err clip_encode(const clip_model *m, arena *ar, const int32_t *ids, int batch, int layer,
                      int final_norm, tensor *hidden, tensor *pooled) {
    const clip_config *c = &m->c;
    backend *be = arena_backend(ar);
    int64_t L = c->max_positions, D = c->hidden, P = clip_pooled_dim(c);
    if (batch < 1 || layer < 0 || layer > c->layers || hidden->ndim != 3 ||
        hidden->ne[0] != batch || hidden->ne[1] != L || hidden->ne[2] != D ||
        (pooled && (pooled->ndim != 2 || pooled->ne[0] != batch || pooled->ne[1] != P)))
        return easel_seterr(EASEL_EINVAL,
                            "clip_encode: bad batch %d, layer %d (of %d) or output shapes", batch,
                            layer, c->layers);
    for (int64_t i = 0; i < batch * L; i++)
        if (ids[i] < 0 || ids[i] >= c->vocab_size)
            return easel_seterr(EASEL_EINVAL, "clip_forward: token id %d out of range [0,%d)",
                                ids[i], c->vocab_size);
    size_t mark = arena_mark(ar);
    easel_err err = EASEL_OK;
    tensor h = arena_new3(ar, batch, L, D);
    TRY(arena_error(ar));
    tensor h2 = tensor_2d(h.data, h.dt, h.dev, batch * L, D);
    TRY(be->gather_rows(be, &h2, &m->tok_emb, ids, batch * L));
    TRY(be->binary(be, &h, &h, &m->pos_emb, BINARY_ADD));
    int run = pooled ? c->layers : layer;
    for (int i = 0; i <= run; i++) {
        if (i == layer) { /* hidden_states[i]: after i layers (0: the embeddings) */
            if (final_norm)
                TRY(be->layer_norm(be, hidden, &h, &m->final_ln.w, &m->final_ln.b, c->eps));
            else
                TRY(be->copy(be, hidden, &h));
        }
        if (i < run) TRY(layer_fwd(m, &m->layers[i], ar, &h));
    }
    if (pooled) TRY(pool(m, ar, ids, batch, &h, pooled));
done:
    arena_release(ar, mark);
    return err;
}

easel_err clip_forward(const clip_model *m, arena *ar, const int32_t *ids, int batch, int skip,
                       tensor *out) {
    if (skip < 0 || skip >= m->c.layers)
        return easel_seterr(EASEL_EINVAL, "clip_forward: bad skip %d", skip);
    return clip_encode(m, ar, ids, batch, m->c.layers - skip, 1, out, NULL);
}
