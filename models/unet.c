/* UNet2DConditionModel (SD1.x/2.x, SDXL): sinusoidal time embedding -> MLP
 * (+ SDXL's added text_time embedding), conv_in, down blocks (ResNets [+ transformers],
 * downsample), mid block, up blocks (ResNets over cat([h, skip]) [+ transformers], upsample to the
 * skip's size), GroupNorm + SiLU + conv_out. Follows diffusers' module names. */
#include "unet.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nn.h"

#define TRY(expr)                                                                                  \
    do {                                                                                           \
        if ((err = (expr))) goto done;                                                             \
    } while (0)

#define UNET_MAX_LAYERS 4 /* resnets per up block: layers_per_block + 1 */
#define UNET_MAX_SKIPS (1 + UNET_MAX_LEVELS * (UNET_MAX_LAYERS + 1))

typedef struct {
    int nres, has_attn, has_sample; /* has_sample: downsampler / upsampler */
    nn_resnet res[UNET_MAX_LAYERS];
    nn_transformer *attn; /* nres of them when has_attn */
    nn_conv sample;
} unet_block;

struct unet_model {
    unet_config c;
    backend *be;
    nn_params params;
    int temb_dim;
    nn_linear time1, time2, cond_proj; /* cond_proj: time_cond_proj_dim models only */
    nn_linear add1, add2;              /* add_embedding: text_time models only */
    nn_conv conv_in, conv_out;
    nn_norm norm_out;
    unet_block down[UNET_MAX_LEVELS], up[UNET_MAX_LEVELS];
    nn_resnet mid_res[2];
    nn_transformer *mid_attn;
};

void unet_config_sd15(unet_config *c) {
    *c = (unet_config){.in_channels = 4,
                       .out_channels = 4,
                       .levels = 4,
                       .block_out_channels = {320, 640, 1280, 1280},
                       .down_attn = {1, 1, 1, 0},
                       .up_attn = {0, 1, 1, 1},
                       .layers_per_block = 2,
                       .head_dim_or_heads = {8, 8, 8, 8},
                       .cross_attention_dim = 768,
                       .norm_num_groups = 32,
                       .norm_eps = 1e-5f,
                       .transformer_layers = {1, 1, 1, 1},
                       .use_linear_projection = 0,
                       .flip_sin_to_cos = 1,
                       .freq_shift = 0,
                       .sample_size = 64};
}

static easel_err check_config(const unet_config *c);

/* diffusers reads attention_head_dim as the number of heads (its config
 * naming predates num_attention_heads; SD2's [5,10,20,20] are head counts). */
static int heads_at(const unet_config *c, int level) {
    return c->head_dim_or_heads[level];
}

/* ---- config.json ---- */

/* Block type names -> attention flags; -1 for a type we do not implement. */
static int block_types(const cJSON *root, const char *key, const char *attn, const char *plain,
                       int *flags, int max) {
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(root, key), *e;
    if (!arr || cJSON_IsNull(arr)) return 0;
    if (!cJSON_IsArray(arr) || cJSON_GetArraySize(arr) > max) return -1;
    int n = 0;
    cJSON_ArrayForEach(e, arr) {
        if (!cJSON_IsString(e)) return -1;
        if (!strcmp(e->valuestring, attn))
            flags[n++] = 1;
        else if (!strcmp(e->valuestring, plain))
            flags[n++] = 0;
        else
            return -1;
    }
    return n;
}

/* Keys whose non-default values change the architecture in ways we do not
 * implement: refused by name. */
static const char *const unet_unsupported[] = {"class_embed_type",
                                               "num_class_embeds",
                                               "encoder_hid_dim",
                                               "encoder_hid_dim_type",
                                               "only_cross_attention",
                                               "dual_cross_attention",
                                               "center_input_sample",
                                               "resnet_skip_time_act",
                                               "timestep_post_act",
                                               "time_embedding_act_fn",
                                               "time_embedding_dim",
                                               "cross_attention_norm",
                                               "reverse_transformer_layers_per_block",
                                               "mid_block_only_cross_attention",
                                               "class_embeddings_concat",
                                               "num_attention_heads"};

static easel_err unet_refuse(const cJSON *root) {
    for (size_t i = 0; i < sizeof unet_unsupported / sizeof *unet_unsupported; i++)
        if (nn_json_set(root, unet_unsupported[i]))
            return easel_seterr(EASEL_EUNSUPPORTED, "unet config: %s is not supported",
                                unet_unsupported[i]);
    const cJSON *add = cJSON_GetObjectItemCaseSensitive(root, "addition_embed_type");
    if (add && !cJSON_IsNull(add) &&
        (!cJSON_IsString(add) || strcmp(add->valuestring, "text_time")))
        return easel_seterr(
            EASEL_EUNSUPPORTED,
            "unet config: addition_embed_type must be \"text_time\" (SDXL) or null");
    static const struct {
        const char *key, *want;
    } str[] = {{"act_fn", "silu"},
               {"time_embedding_type", "positional"},
               {"mid_block_type", "UNetMidBlock2DCrossAttn"},
               {"resnet_time_scale_shift", "default"},
               {"attention_type", "default"}};
    for (size_t i = 0; i < sizeof str / sizeof *str; i++) {
        const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, str[i].key);
        if (it && !cJSON_IsNull(it) &&
            (!cJSON_IsString(it) || strcmp(it->valuestring, str[i].want)))
            return easel_seterr(EASEL_EUNSUPPORTED, "unet config: %s must be \"%s\"", str[i].key,
                                str[i].want);
    }
    static const struct {
        const char *key;
        float want;
    } num[] = {{"conv_in_kernel", 3},
               {"conv_out_kernel", 3},
               {"downsample_padding", 1},
               {"mid_block_scale_factor", 1},
               {"resnet_out_scale_factor", 1}};
    for (size_t i = 0; i < sizeof num / sizeof *num; i++) {
        float v = num[i].want;
        if (nn_json_float(root, num[i].key, &v) || v != num[i].want)
            return easel_seterr(EASEL_EUNSUPPORTED, "unet config: %s must be %g", num[i].key,
                                (double)num[i].want);
    }
    return EASEL_OK;
}

static easel_err unet_parse(unet_config *t, const cJSON *root) {
    int levels = nn_json_ints(root, "block_out_channels", t->block_out_channels, UNET_MAX_LEVELS);
    if (levels < 0) return easel_seterr(EASEL_EUNSUPPORTED, "unet config: block_out_channels");
    if (levels > 0) t->levels = levels;
    int nd = block_types(root, "down_block_types", "CrossAttnDownBlock2D", "DownBlock2D",
                         t->down_attn, UNET_MAX_LEVELS);
    int nu = block_types(root, "up_block_types", "CrossAttnUpBlock2D", "UpBlock2D", t->up_attn,
                         UNET_MAX_LEVELS);
    if (nd < 0 || nu < 0)
        return easel_seterr(EASEL_EUNSUPPORTED, "unet config: down/up_block_types must be "
                                                "[CrossAttn]DownBlock2D / [CrossAttn]UpBlock2D");
    if ((nd && nd != t->levels) || (nu && nu != t->levels))
        return easel_seterr(EASEL_EFORMAT, "unet config: %d levels but %d down / %d up blocks",
                            t->levels, nd, nu);
    int tl[UNET_MAX_LEVELS] = {0},
        ntl = nn_json_ints(root, "transformer_layers_per_block", tl, UNET_MAX_LEVELS);
    if (ntl < 0 || (ntl > 0 && ntl != UNET_MAX_LEVELS && ntl != t->levels))
        return easel_seterr(EASEL_EUNSUPPORTED, "unet config: transformer_layers_per_block must be "
                                                "a number or one number per level");
    if (ntl > 0) memcpy(t->transformer_layers, tl, sizeof tl);
    const cJSON *add = cJSON_GetObjectItemCaseSensitive(root, "addition_embed_type");
    t->add_text_time = cJSON_IsString(add) && !strcmp(add->valuestring, "text_time");
    int nh = nn_json_ints(root, "attention_head_dim", t->head_dim_or_heads, UNET_MAX_LEVELS);
    if (nh < 0 || (nh > 0 && nh != UNET_MAX_LEVELS && nh != t->levels))
        return easel_seterr(EASEL_EUNSUPPORTED, "unet config: attention_head_dim");
    if (nn_json_int(root, "in_channels", &t->in_channels) ||
        nn_json_int(root, "out_channels", &t->out_channels) ||
        nn_json_int(root, "layers_per_block", &t->layers_per_block) ||
        nn_json_int(root, "cross_attention_dim", &t->cross_attention_dim) ||
        nn_json_int(root, "norm_num_groups", &t->norm_num_groups) ||
        nn_json_int(root, "sample_size", &t->sample_size) ||
        nn_json_float(root, "norm_eps", &t->norm_eps) ||
        nn_json_float(root, "freq_shift", &t->freq_shift) ||
        nn_json_bool(root, "flip_sin_to_cos", &t->flip_sin_to_cos) ||
        nn_json_bool(root, "use_linear_projection", &t->use_linear_projection) ||
        nn_json_bool(root, "upcast_attention", &t->upcast_attention) ||
        nn_json_int(root, "time_cond_proj_dim", &t->time_cond_proj_dim) ||
        nn_json_int(root, "addition_time_embed_dim", &t->addition_time_embed_dim) ||
        nn_json_int(root, "projection_class_embeddings_input_dim",
                    &t->projection_class_embeddings_input_dim))
        return easel_seterr(EASEL_EUNSUPPORTED,
                            "unet config: a value has the wrong type or is "
                            "a per-block list (layers_per_block, cross_attention_dim)");
    return EASEL_OK;
}

easel_err unet_config_from_json(unet_config *c, const char *json) {
    cJSON *root = cJSON_Parse(json);
    easel_err err = EASEL_OK;
    unet_config t = *c;
    if (!root || !cJSON_IsObject(root))
        err = easel_seterr(EASEL_EFORMAT, "unet config: not a JSON object");
    if (!err) err = unet_refuse(root);
    if (!err) err = unet_parse(&t, root);
    if (!err) err = check_config(&t);
    if (!err) *c = t;
    cJSON_Delete(root);
    return err;
}

/* ---- loading ---- */

static easel_err load_attn(unet_model *m, nn_transformer **t, int ch, int heads,
                           const char *prefix) {
    const unet_config *c = &m->c;
    *t = calloc(1, sizeof **t);
    if (!*t) return easel_seterr(EASEL_ENOMEM, "unet: out of host memory");
    return nn_transformer_load(&m->params, *t, ch, heads, c->cross_attention_dim,
                               c->norm_num_groups, c->transformer_layers[c->levels - 1],
                               c->use_linear_projection, prefix);
}

static easel_err load_down(unet_model *m, int i) {
    const unet_config *c = &m->c;
    unet_block *b = &m->down[i];
    char n[NN_NAME_MAX];
    easel_err err = EASEL_OK;
    int out = c->block_out_channels[i], in = i ? c->block_out_channels[i - 1] : out;
    b->nres = c->layers_per_block;
    b->has_attn = c->down_attn[i];
    b->has_sample = i < c->levels - 1;
    if (b->has_attn && !(b->attn = calloc((size_t)b->nres, sizeof *b->attn)))
        return easel_seterr(EASEL_ENOMEM, "unet: out of host memory");
    for (int j = 0; j < b->nres; j++) {
        TRY(nn_name(n, sizeof n, "down_blocks.%d.resnets.%d", i, j));
        TRY(nn_resnet_load(&m->params, &b->res[j], j ? out : in, out, m->temb_dim,
                           c->norm_num_groups, c->norm_eps, n));
        if (!b->has_attn) continue;
        TRY(nn_name(n, sizeof n, "down_blocks.%d.attentions.%d", i, j));
        TRY(nn_transformer_load(&m->params, &b->attn[j], out, heads_at(c, i),
                                c->cross_attention_dim, c->norm_num_groups,
                                c->transformer_layers[i], c->use_linear_projection, n));
    }
    if (b->has_sample) {
        TRY(nn_name(n, sizeof n, "down_blocks.%d.downsamplers.0.conv", i));
        TRY(nn_conv_load(&m->params, &b->sample, out, out, 3, n));
    }
done:
    return err;
}

/* Up block i (0 = deepest) works at level L-1-i; resnet j reads cat([h, skip]). */
static easel_err load_up(unet_model *m, int i) {
    const unet_config *c = &m->c;
    unet_block *b = &m->up[i];
    char n[NN_NAME_MAX];
    easel_err err = EASEL_OK;
    int L = c->levels, lev = L - 1 - i;
    int out = c->block_out_channels[lev];
    int prev = c->block_out_channels[i ? lev + 1 : lev];
    int skip_in = c->block_out_channels[lev > 0 ? lev - 1 : 0];
    b->nres = c->layers_per_block + 1;
    b->has_attn = c->up_attn[i];
    b->has_sample = i < L - 1;
    if (b->has_attn && !(b->attn = calloc((size_t)b->nres, sizeof *b->attn)))
        return easel_seterr(EASEL_ENOMEM, "unet: out of host memory");
    for (int j = 0; j < b->nres; j++) {
        int skip = j == b->nres - 1 ? skip_in : out, rin = j ? out : prev;
        TRY(nn_name(n, sizeof n, "up_blocks.%d.resnets.%d", i, j));
        TRY(nn_resnet_load(&m->params, &b->res[j], rin + skip, out, m->temb_dim, c->norm_num_groups,
                           c->norm_eps, n));
        if (!b->has_attn) continue;
        TRY(nn_name(n, sizeof n, "up_blocks.%d.attentions.%d", i, j));
        TRY(nn_transformer_load(&m->params, &b->attn[j], out, heads_at(c, lev),
                                c->cross_attention_dim, c->norm_num_groups,
                                c->transformer_layers[lev], c->use_linear_projection, n));
    }
    if (b->has_sample) {
        TRY(nn_name(n, sizeof n, "up_blocks.%d.upsamplers.0.conv", i));
        TRY(nn_conv_load(&m->params, &b->sample, out, out, 3, n));
    }
done:
    return err;
}

static easel_err load_ends(unet_model *m) {
    const unet_config *c = &m->c;
    nn_params *p = &m->params;
    easel_err err;
    int c0 = c->block_out_channels[0], top = c->block_out_channels[c->levels - 1];
    TRY(nn_linear_load(p, &m->time1, c0, m->temb_dim, 1, 0, "time_embedding.linear_1"));
    TRY(nn_linear_load(p, &m->time2, m->temb_dim, m->temb_dim, 1, 0, "time_embedding.linear_2"));
    if (c->time_cond_proj_dim > 0)
        TRY(nn_linear_load(p, &m->cond_proj, c->time_cond_proj_dim, c0, 0, 0,
                           "time_embedding.cond_proj"));
    if (c->add_text_time) {
        TRY(nn_linear_load(p, &m->add1, c->projection_class_embeddings_input_dim, m->temb_dim, 1, 0,
                           "add_embedding.linear_1"));
        TRY(nn_linear_load(p, &m->add2, m->temb_dim, m->temb_dim, 1, 0, "add_embedding.linear_2"));
    }
    TRY(nn_conv_load(p, &m->conv_in, c->in_channels, c0, 3, "conv_in"));
    TRY(nn_resnet_load(p, &m->mid_res[0], top, top, m->temb_dim, c->norm_num_groups, c->norm_eps,
                       "mid_block.resnets.0"));
    TRY(load_attn(m, &m->mid_attn, top, heads_at(c, c->levels - 1), "mid_block.attentions.0"));
    TRY(nn_resnet_load(p, &m->mid_res[1], top, top, m->temb_dim, c->norm_num_groups, c->norm_eps,
                       "mid_block.resnets.1"));
    TRY(nn_norm_load(p, &m->norm_out, c0, "conv_norm_out"));
    TRY(nn_conv_load(p, &m->conv_out, c0, c->out_channels, 3, "conv_out"));
done:
    return err;
}

static easel_err check_config(const unet_config *c) {
    if (c->levels < 1 || c->levels > UNET_MAX_LEVELS || c->layers_per_block < 1 ||
        c->layers_per_block + 1 > UNET_MAX_LAYERS || c->in_channels < 1 || c->out_channels < 1 ||
        c->norm_num_groups < 1 || c->cross_attention_dim < 1)
        return easel_seterr(EASEL_EUNSUPPORTED,
                            "unet: unsupported config (levels %d, layers "
                            "per block %d)",
                            c->levels, c->layers_per_block);
    if (c->add_text_time && (c->addition_time_embed_dim < 2 || c->addition_time_embed_dim % 2 ||
                             unet_text_embeds_dim(c) < 1))
        return easel_seterr(EASEL_EUNSUPPORTED,
                            "unet: text_time needs an even addition_time_embed_dim (%d) and "
                            "projection_class_embeddings_input_dim (%d) above %d time ids x it",
                            c->addition_time_embed_dim, c->projection_class_embeddings_input_dim,
                            UNET_TIME_IDS);
    for (int i = 0; i < c->levels; i++) {
        if (c->transformer_layers[i] < 1 || c->transformer_layers[i] > NN_MAX_TLAYERS)
            return easel_seterr(EASEL_EUNSUPPORTED, "unet: level %d: %d transformer layers (1..%d)",
                                i, c->transformer_layers[i], NN_MAX_TLAYERS);
        int ch = c->block_out_channels[i], h = heads_at(c, i);
        if (ch < 1 || ch % c->norm_num_groups || h < 1 || ch % h)
            return easel_seterr(EASEL_EUNSUPPORTED,
                                "unet: level %d: %d channels do not suit "
                                "%d groups / %d heads",
                                i, ch, c->norm_num_groups, h);
    }
    return EASEL_OK;
}

easel_err unet_load(const unet_config *c, wstore *ws, unet_model **out) {
    *out = NULL;
    easel_err err = check_config(c);
    if (err) return err;
    unet_model *m = calloc(1, sizeof *m);
    if (!m) return easel_seterr(EASEL_ENOMEM, "unet: out of host memory");
    m->c = *c;
    m->be = ws->be;
    m->temb_dim = 4 * c->block_out_channels[0];
    nn_params_init(&m->params, ws);
    TRY(load_ends(m));
    for (int i = 0; i < c->levels; i++)
        TRY(load_down(m, i));
    for (int i = 0; i < c->levels; i++)
        TRY(load_up(m, i));
    *out = m;
    return EASEL_OK;
done:
    unet_free(m);
    return easel_wraperr(err, "loading the unet");
}

void unet_free(unet_model *m) {
    if (!m) return;
    nn_params_free(&m->params);
    for (int i = 0; i < UNET_MAX_LEVELS; i++) {
        free(m->down[i].attn);
        free(m->up[i].attn);
    }
    free(m->mid_attn);
    free(m);
}

const unet_config *unet_get_config(const unet_model *m) {
    return &m->c;
}

/* ---- forward ---- */

typedef struct {
    tensor t[UNET_MAX_SKIPS];
    int n;
} skip_stack;

void unet_guidance_embedding(float w, int dim, float *out) {
    const float wf = w * 1000.0f;
    const int half = dim / 2;
    const float emb = logf(10000.0f) / (float)(half - 1);
    for (int k = 0; k < half; k++) {
        float a = wf * expf((float)k * -emb);
        out[k] = sinf(a);
        out[half + k] = cosf(a);
    }
    if (dim % 2) out[dim - 1] = 0.0f;
}

int unet_text_embeds_dim(const unet_config *c) {
    if (!c->add_text_time) return 0;
    return c->projection_class_embeddings_input_dim - UNET_TIME_IDS * c->addition_time_embed_dim;
}

int unet_temb_dim(const unet_config *c) {
    return 4 * c->block_out_channels[0];
}

easel_err unet_aug_embedding(const unet_model *m, arena *ar, const float *text_embeds,
                             const float *time_ids, tensor *aug_emb) {
    const unet_config *c = &m->c;
    if (!c->add_text_time)
        return easel_seterr(EASEL_EINVAL, "unet: text_embeds/time_ids given to a model without "
                                          "addition_embed_type text_time");
    int P = unet_text_embeds_dim(c), D = c->addition_time_embed_dim;
    if (aug_emb->ndim != 2 || aug_emb->ne[1] != m->temb_dim || !text_embeds || !time_ids)
        return easel_seterr(EASEL_EINVAL,
                            "unet: aug_emb must be [B, %d] with text_embeds and "
                            "time_ids",
                            m->temb_dim);
    int64_t B = aug_emb->ne[0];
    backend *be = arena_backend(ar);
    size_t mark = arena_mark(ar);
    easel_err err = EASEL_OK;
    /* add_time_proj(time_ids.flatten()) -> [B*6, D] = [B, 6*D] */
    tensor te = arena_new2(ar, B, P);
    tensor tp = arena_new2(ar, B * UNET_TIME_IDS, D);
    tensor cat = arena_new2(ar, B, c->projection_class_embeddings_input_dim);
    tensor h = arena_new2(ar, B, m->temb_dim);
    TRY(arena_error(ar));
    TRY(be->upload(be, &te, text_embeds));
    TRY(be->timestep_embedding(be, &tp, time_ids, c->flip_sin_to_cos, c->freq_shift, 10000.0f));
    tensor tp2 = tensor_2d(tp.data, tp.dt, tp.dev, B, (int64_t)UNET_TIME_IDS * D);
    TRY(be->concat(be, &cat, &te, &tp2));
    TRY(nn_linear_fwd(be, &m->add1, &h, &cat));
    TRY(be->unary(be, &h, &h, UNARY_SILU));
    TRY(nn_linear_fwd(be, &m->add2, aug_emb, &h));
done:
    arena_release(ar, mark);
    return err;
}

/* temb_act = SiLU(linear_2(SiLU(linear_1(timestep_embedding(t) [+ cond_proj(cond)]))) [+ aug]),
 * [B, temb_dim]. t and cond: host values, or (t == NULL) the f32 device
 * tensors td and cd (cd may be NULL), which a captured step reads at replay;
 * aug: SDXL's added embedding [B, temb_dim], or NULL. */
static easel_err time_embed(const unet_model *m, arena *ar, const float *t, const float *cond,
                            const tensor *td, const tensor *cd, const tensor *aug, int64_t B,
                            tensor *temb_act) {
    backend *be = arena_backend(ar);
    size_t mark = arena_mark(ar);
    easel_err err = EASEL_OK;
    int c0 = m->c.block_out_channels[0], cdim = m->c.time_cond_proj_dim;
    tensor e = arena_new2(ar, B, c0);
    tensor h = arena_new2(ar, B, m->temb_dim);
    int has_cond = cond || cd;
    tensor ct = has_cond ? arena_new2(ar, B, cdim) : (tensor){0};
    tensor cp = has_cond ? arena_new2(ar, B, c0) : (tensor){0};
    TRY(arena_error(ar));
    if (t)
        TRY(be->timestep_embedding(be, &e, t, m->c.flip_sin_to_cos, m->c.freq_shift, 10000.0f));
    else
        TRY(backend_timestep_embedding_t(be, &e, td, m->c.flip_sin_to_cos, m->c.freq_shift,
                                         10000.0f));
    if (has_cond) {
        if (cond)
            TRY(be->upload(be, &ct, cond));
        else
            TRY(be->copy(be, &ct, cd)); /* f32 device values -> the backend's dtype */
        TRY(nn_linear_fwd(be, &m->cond_proj, &cp, &ct));
        TRY(be->binary(be, &e, &e, &cp, BINARY_ADD));
    }
    TRY(nn_linear_fwd(be, &m->time1, &h, &e));
    TRY(be->unary(be, &h, &h, UNARY_SILU));
    TRY(nn_linear_fwd(be, &m->time2, temb_act, &h));
    if (aug) TRY(be->binary(be, temb_act, temb_act, aug, BINARY_ADD));
    TRY(be->unary(be, temb_act, temb_act, UNARY_SILU));
done:
    arena_release(ar, mark);
    return err;
}

static tensor new_like_ch(arena *ar, const tensor *x, int64_t ch) {
    return arena_new4(ar, x->ne[0], x->ne[1], x->ne[2], ch);
}

static easel_err down_fwd(const unet_block *b, arena *ar, tensor *h, const tensor *temb,
                          const tensor *ctx, skip_stack *sk) {
    backend *be = arena_backend(ar);
    easel_err err = EASEL_OK;
    for (int j = 0; j < b->nres; j++) {
        tensor o = new_like_ch(ar, h, b->res[j].out);
        if ((err = arena_error(ar))) return err;
        if ((err = nn_resnet_fwd(&b->res[j], ar, h, temb, &o))) return err;
        if (b->has_attn && (err = nn_transformer_fwd(&b->attn[j], ar, &o, ctx))) return err;
        *h = sk->t[sk->n++] = o;
    }
    if (!b->has_sample) return EASEL_OK;
    tensor o = arena_new4(ar, h->ne[0], (h->ne[1] + 1) / 2, (h->ne[2] + 1) / 2, h->ne[3]);
    if ((err = arena_error(ar))) return err;
    if ((err = be->conv2d(be, &o, h, &b->sample.w, &b->sample.b, 2, 1))) return err;
    *h = sk->t[sk->n++] = o;
    return EASEL_OK;
}

/* out = resnet(cat([h, skip])) [+ transformer] */
static easel_err up_layer(const unet_block *b, int j, arena *ar, const tensor *h,
                          const tensor *skip, const tensor *temb, const tensor *ctx, tensor *out) {
    backend *be = arena_backend(ar);
    size_t mark = arena_mark(ar);
    easel_err err = EASEL_OK;
    tensor cat = new_like_ch(ar, h, h->ne[3] + skip->ne[3]);
    TRY(arena_error(ar));
    TRY(be->concat(be, &cat, h, skip));
    TRY(nn_resnet_fwd(&b->res[j], ar, &cat, temb, out));
done:
    arena_release(ar, mark);
    if (!err && b->has_attn) err = nn_transformer_fwd(&b->attn[j], ar, out, ctx);
    return err;
}

static easel_err up_fwd(const unet_block *b, arena *ar, tensor *h, const tensor *temb,
                        const tensor *ctx, skip_stack *sk) {
    backend *be = arena_backend(ar);
    easel_err err = EASEL_OK;
    for (int j = 0; j < b->nres; j++) {
        const tensor *skip = &sk->t[--sk->n];
        tensor o = new_like_ch(ar, h, b->res[j].out);
        if ((err = arena_error(ar))) return err;
        if ((err = up_layer(b, j, ar, h, skip, temb, ctx, &o))) return err;
        *h = o;
    }
    if (!b->has_sample) return EASEL_OK;
    const tensor *next = &sk->t[sk->n - 1]; /* upsample to the next skip's size */
    tensor o = new_like_ch(ar, next, h->ne[3]);
    size_t mark = arena_mark(ar);
    tensor up = new_like_ch(ar, next, h->ne[3]);
    if (!(err = arena_error(ar)) && !(err = nn_upsample_to(be, ar, &up, h)))
        err = be->conv2d(be, &o, &up, &b->sample.w, &b->sample.b, 1, 1);
    arena_release(ar, mark);
    *h = o;
    return err;
}

static easel_err out_fwd(const unet_model *m, arena *ar, const tensor *h, tensor *out) {
    backend *be = arena_backend(ar);
    size_t mark = arena_mark(ar);
    easel_err err = EASEL_OK;
    tensor n = arena_like(ar, h);
    TRY(arena_error(ar));
    TRY(be->group_norm(be, &n, h, &m->norm_out.w, &m->norm_out.b, m->c.norm_num_groups,
                       m->c.norm_eps, 1));
    TRY(be->conv2d(be, out, &n, &m->conv_out.w, &m->conv_out.b, 1, 1));
done:
    arena_release(ar, mark);
    return err;
}

static easel_err check_io(const unet_model *m, const tensor *x, const tensor *ctx,
                          const tensor *out) {
    const unet_config *c = &m->c;
    if (x->ndim != 4 || x->ne[3] != c->in_channels || ctx->ndim != 3 || ctx->ne[0] != x->ne[0] ||
        ctx->ne[2] != c->cross_attention_dim || out->ndim != 4 || out->ne[0] != x->ne[0] ||
        out->ne[1] != x->ne[1] || out->ne[2] != x->ne[2] || out->ne[3] != c->out_channels) {
        char a[64], b[64], d[64];
        return easel_seterr(EASEL_EINVAL,
                            "unet_forward: x %s, ctx %s, out %s do not fit the "
                            "model",
                            tensor_shape_str(x, a, sizeof a), tensor_shape_str(ctx, b, sizeof b),
                            tensor_shape_str(out, d, sizeof d));
    }
    return EASEL_OK;
}

/* The conditioning fits the model (what it needs given, nothing else). */
static easel_err check_cond(const unet_model *m, const unet_cond *c, int64_t B) {
    int cond = c && (c->timestep_cond || c->timestep_cond_dev);
    if (cond != (m->c.time_cond_proj_dim > 0))
        return easel_seterr(EASEL_EINVAL, "unet_forward: %s",
                            cond ? "timestep_cond given to a model without time_cond_proj_dim"
                                 : "this model needs timestep_cond (its guidance embedding)");
    int added = c && (c->aug_emb || c->text_embeds || c->time_ids);
    if (added != m->c.add_text_time)
        return easel_seterr(EASEL_EINVAL, "unet_forward: %s",
                            added ? "text_embeds/time_ids given to a model without text_time"
                                  : "this model needs text_embeds and time_ids (SDXL's added "
                                    "conditioning)");
    if (c && c->aug_emb &&
        (c->aug_emb->ndim != 2 || c->aug_emb->ne[0] != B || c->aug_emb->ne[1] != m->temb_dim))
        return easel_seterr(EASEL_EINVAL, "unet_forward: aug_emb must be [%lld, %d]", (long long)B,
                            m->temb_dim);
    if (c && !c->aug_emb && added && (!c->text_embeds || !c->time_ids))
        return easel_seterr(EASEL_EINVAL, "unet_forward: text_embeds and time_ids go together");
    return EASEL_OK;
}

easel_err unet_forward_ex(const unet_model *m, arena *ar, const tensor *x, const float *t,
                          const tensor *t_dev, const unet_cond *cond, const tensor *ctx,
                          tensor *out) {
    easel_err err = check_io(m, x, ctx, out);
    if (err) return err;
    if (!t == !t_dev)
        return easel_seterr(EASEL_EINVAL, "unet_forward: give the timesteps on the host or on "
                                          "the device, one of the two");
    int64_t B = x->ne[0];
    if ((err = check_cond(m, cond, B))) return err;
    backend *be = arena_backend(ar);
    size_t mark = arena_mark(ar);
    skip_stack sk = {.n = 0};
    int make_aug = m->c.add_text_time && !cond->aug_emb;
    tensor temb = arena_new2(ar, B, m->temb_dim);
    tensor h = new_like_ch(ar, x, m->c.block_out_channels[0]);
    tensor aug = make_aug ? arena_new2(ar, B, m->temb_dim) : (tensor){0};
    TRY(arena_error(ar));
    if (make_aug) TRY(unet_aug_embedding(m, ar, cond->text_embeds, cond->time_ids, &aug));
    const tensor *ap = !m->c.add_text_time ? NULL : make_aug ? &aug : cond->aug_emb;
    TRY(time_embed(m, ar, t, cond ? cond->timestep_cond : NULL, t_dev,
                   cond ? cond->timestep_cond_dev : NULL, ap, B, &temb));
    TRY(be->conv2d(be, &h, x, &m->conv_in.w, &m->conv_in.b, 1, 1));
    sk.t[sk.n++] = h;
    for (int i = 0; i < m->c.levels; i++)
        TRY(down_fwd(&m->down[i], ar, &h, &temb, ctx, &sk));
    tensor mid = arena_like(ar, &h);
    TRY(arena_error(ar));
    TRY(nn_resnet_fwd(&m->mid_res[0], ar, &h, &temb, &mid));
    TRY(nn_transformer_fwd(m->mid_attn, ar, &mid, ctx));
    TRY(nn_resnet_fwd(&m->mid_res[1], ar, &mid, &temb, &mid));
    h = mid;
    for (int i = 0; i < m->c.levels; i++)
        TRY(up_fwd(&m->up[i], ar, &h, &temb, ctx, &sk));
    TRY(out_fwd(m, ar, &h, out));
done:
    arena_release(ar, mark);
    return err;
}

easel_err unet_forward(const unet_model *m, arena *ar, const tensor *x, const float *t,
                       const tensor *ctx, tensor *out) {
    return unet_forward_cond(m, ar, x, t, NULL, ctx, out);
}

easel_err unet_forward_cond(const unet_model *m, arena *ar, const tensor *x, const float *t,
                            const float *cond, const tensor *ctx, tensor *out) {
    if (!t) return easel_seterr(EASEL_EINVAL, "unet_forward: t is NULL");
    unet_cond uc = {.timestep_cond = cond};
    return unet_forward_ex(m, ar, x, t, NULL, &uc, ctx, out);
}

easel_err unet_forward_t(const unet_model *m, arena *ar, const tensor *x, const tensor *t,
                         const tensor *cond, const tensor *ctx, tensor *out) {
    if (!t) return easel_seterr(EASEL_EINVAL, "unet_forward_t: t is NULL");
    unet_cond uc = {.timestep_cond_dev = cond};
    return unet_forward_ex(m, ar, x, NULL, t, &uc, ctx, out);
}
