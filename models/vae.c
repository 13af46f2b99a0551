/* AutoencoderKL (diffusers' Encoder and Decoder). Decoder: z / scaling_factor
 * -> post_quant_conv -> conv_in -> mid block (ResNet, single-head attention,
 * ResNet) -> up blocks (ResNets, nearest 2x + conv) -> GroupNorm + SiLU ->
 * conv_out. Encoder: conv_in -> down blocks (ResNets, then Downsample2D: zero
 * pad one row and column at the bottom/right, conv 3x3 stride 2 without
 * padding) -> the same mid block -> GroupNorm + SiLU -> conv_out ->
 * quant_conv, giving the diagonal Gaussian's mean and log-variance. Every
 * norm uses eps 1e-6. ResNets without a channel change run in place so that
 * the full-resolution levels hold few tensors at a time. */
#include "vae.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "nn.h"

#define TRY(expr)                                                                                  \
    do {                                                                                           \
        if ((err = (expr))) goto done;                                                             \
    } while (0)

#define VAE_EPS 1e-6f
#define VAE_MAX_LAYERS 4

typedef struct {
    nn_norm norm;
    nn_attn attn;
} vae_attn;

typedef struct {
    int nres, has_up;
    nn_resnet res[VAE_MAX_LAYERS];
    nn_conv up;
} vae_block;

typedef struct {
    int nres, has_down;
    nn_resnet res[VAE_MAX_LAYERS];
    nn_conv down;
} vae_down_block;

typedef struct {
    nn_conv conv_in, conv_out, quant;
    vae_down_block down[VAE_MAX_LEVELS];
    nn_resnet mid_res[2];
    vae_attn mid_attn;
    nn_norm norm_out;
} vae_encoder;

struct vae_model {
    vae_config c;
    backend *be;
    nn_params params;
    nn_conv post_quant, conv_in, conv_out;
    nn_resnet mid_res[2];
    vae_attn mid_attn;
    vae_block up[VAE_MAX_LEVELS];
    nn_norm norm_out;
    int has_encoder;
    vae_encoder enc;
};

void vae_config_sd15(vae_config *c) {
    *c = (vae_config){.latent_channels = 4,
                      .in_channels = 3,
                      .out_channels = 3,
                      .levels = 4,
                      .block_out_channels = {128, 256, 512, 512},
                      .layers_per_block = 2,
                      .norm_num_groups = 32,
                      .scaling_factor = 0.18215f,
                      .force_upcast = 1}; /* AutoencoderKL's default when the config is silent */
}

static easel_err vae_check(const vae_config *c) {
    if (c->levels < 1 || c->levels > VAE_MAX_LEVELS || c->layers_per_block < 1 ||
        c->layers_per_block + 1 > VAE_MAX_LAYERS || c->latent_channels < 1 || c->out_channels < 1 ||
        c->in_channels < 1 || c->norm_num_groups < 1 || !(c->scaling_factor > 0))
        return easel_seterr(EASEL_EUNSUPPORTED,
                            "vae: unsupported config (levels %d, layers per "
                            "block %d)",
                            c->levels, c->layers_per_block);
    for (int i = 0; i < c->levels; i++)
        if (c->block_out_channels[i] < 1 || c->block_out_channels[i] % c->norm_num_groups)
            return easel_seterr(EASEL_EUNSUPPORTED,
                                "vae: %d channels at level %d do not suit %d "
                                "groups",
                                c->block_out_channels[i], i, c->norm_num_groups);
    return EASEL_OK;
}

/* Every entry of the list `key` (if present) is `want`. */
static easel_err all_blocks(const cJSON *root, const char *key, const char *want) {
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(root, key), *e;
    cJSON_ArrayForEach(e, list) {
        if (!cJSON_IsString(e) || strcmp(e->valuestring, want))
            return easel_seterr(EASEL_EUNSUPPORTED, "vae config: %s must be %s", key, want);
    }
    return EASEL_OK;
}

static easel_err vae_refuse(const cJSON *root) {
    easel_err e0 = all_blocks(root, "up_block_types", "UpDecoderBlock2D");
    if (!e0) e0 = all_blocks(root, "down_block_types", "DownEncoderBlock2D");
    if (e0) return e0;
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "act_fn");
    if (act && (!cJSON_IsString(act) || strcmp(act->valuestring, "silu")))
        return easel_seterr(EASEL_EUNSUPPORTED, "vae config: act_fn must be \"silu\"");
    static const char *const must_be_true[] = {"use_post_quant_conv", "mid_block_add_attention",
                                               "use_quant_conv", "double_z"};
    for (int i = 0; i < 4; i++) {
        int v = 1;
        if (nn_json_bool(root, must_be_true[i], &v) || !v)
            return easel_seterr(EASEL_EUNSUPPORTED, "vae config: %s must be true", must_be_true[i]);
    }
    static const char *const unset[] = {"shift_factor", "latents_mean", "latents_std"};
    for (int i = 0; i < 3; i++)
        if (nn_json_set(root, unset[i]))
            return easel_seterr(EASEL_EUNSUPPORTED, "vae config: %s is not supported", unset[i]);
    return EASEL_OK;
}

easel_err vae_config_from_json(vae_config *c, const char *json) {
    cJSON *root = cJSON_Parse(json);
    easel_err err = EASEL_OK;
    vae_config t = *c;
    if (!root || !cJSON_IsObject(root))
        TRY(easel_seterr(EASEL_EFORMAT, "vae config: not a JSON object"));
    TRY(vae_refuse(root));
    int n = nn_json_ints(root, "block_out_channels", t.block_out_channels, VAE_MAX_LEVELS);
    if (n < 0) TRY(easel_seterr(EASEL_EUNSUPPORTED, "vae config: block_out_channels"));
    if (n > 0) t.levels = n;
    if (nn_json_int(root, "latent_channels", &t.latent_channels) ||
        nn_json_int(root, "in_channels", &t.in_channels) ||
        nn_json_int(root, "out_channels", &t.out_channels) ||
        nn_json_int(root, "layers_per_block", &t.layers_per_block) ||
        nn_json_int(root, "norm_num_groups", &t.norm_num_groups) ||
        nn_json_float(root, "scaling_factor", &t.scaling_factor) ||
        nn_json_bool(root, "force_upcast", &t.force_upcast))
        TRY(easel_seterr(EASEL_EFORMAT, "vae config: a value has the wrong type"));
    TRY(vae_check(&t));
    *c = t;
done:
    cJSON_Delete(root);
    return err;
}

static easel_err load_up(vae_model *m, int i) {
    const vae_config *c = &m->c;
    vae_block *b = &m->up[i];
    char n[NN_NAME_MAX];
    easel_err err = EASEL_OK;
    int L = c->levels, out = c->block_out_channels[L - 1 - i];
    int prev = c->block_out_channels[i ? L - i : L - 1];
    b->nres = c->layers_per_block + 1;
    b->has_up = i < L - 1;
    for (int j = 0; j < b->nres; j++) {
        TRY(nn_name(n, sizeof n, "decoder.up_blocks.%d.resnets.%d", i, j));
        TRY(nn_resnet_load(&m->params, &b->res[j], j ? out : prev, out, 0, c->norm_num_groups,
                           VAE_EPS, n));
    }
    if (b->has_up) {
        TRY(nn_name(n, sizeof n, "decoder.up_blocks.%d.upsamplers.0.conv", i));
        TRY(nn_conv_load(&m->params, &b->up, out, out, 3, n));
    }
done:
    return err;
}

static easel_err load_all(vae_model *m) {
    const vae_config *c = &m->c;
    nn_params *p = &m->params;
    int top = c->block_out_channels[c->levels - 1], g = c->norm_num_groups;
    int lat = c->latent_channels;
    easel_err err;
    TRY(nn_conv_load(p, &m->post_quant, lat, lat, 1, "post_quant_conv"));
    TRY(nn_conv_load(p, &m->conv_in, lat, top, 3, "decoder.conv_in"));
    TRY(nn_resnet_load(p, &m->mid_res[0], top, top, 0, g, VAE_EPS, "decoder.mid_block.resnets.0"));
    TRY(nn_norm_load(p, &m->mid_attn.norm, top, "decoder.mid_block.attentions.0.group_norm"));
    TRY(nn_attn_load(p, &m->mid_attn.attn, top, top, 1, 1, 2, "decoder.mid_block.attentions.0"));
    TRY(nn_resnet_load(p, &m->mid_res[1], top, top, 0, g, VAE_EPS, "decoder.mid_block.resnets.1"));
    for (int i = 0; i < c->levels; i++)
        TRY(load_up(m, i));
    TRY(nn_norm_load(p, &m->norm_out, c->block_out_channels[0], "decoder.conv_norm_out"));
    TRY(nn_conv_load(p, &m->conv_out, c->block_out_channels[0], c->out_channels, 3,
                     "decoder.conv_out"));
done:
    return err;
}

static easel_err load_down(vae_model *m, int i) {
    const vae_config *c = &m->c;
    vae_down_block *b = &m->enc.down[i];
    char n[NN_NAME_MAX];
    easel_err err = EASEL_OK;
    int out = c->block_out_channels[i], in = c->block_out_channels[i ? i - 1 : 0];
    b->nres = c->layers_per_block;
    b->has_down = i < c->levels - 1;
    for (int j = 0; j < b->nres; j++) {
        TRY(nn_name(n, sizeof n, "encoder.down_blocks.%d.resnets.%d", i, j));
        TRY(nn_resnet_load(&m->params, &b->res[j], j ? out : in, out, 0, c->norm_num_groups,
                           VAE_EPS, n));
    }
    if (b->has_down) {
        TRY(nn_name(n, sizeof n, "encoder.down_blocks.%d.downsamplers.0.conv", i));
        TRY(nn_conv_load(&m->params, &b->down, out, out, 3, n));
    }
done:
    return err;
}

static easel_err load_encoder(vae_model *m) {
    const vae_config *c = &m->c;
    nn_params *p = &m->params;
    vae_encoder *en = &m->enc;
    int top = c->block_out_channels[c->levels - 1], g = c->norm_num_groups;
    int z2 = 2 * c->latent_channels;
    easel_err err;
    TRY(nn_conv_load(p, &en->conv_in, c->in_channels, c->block_out_channels[0], 3,
                     "encoder.conv_in"));
    for (int i = 0; i < c->levels; i++)
        TRY(load_down(m, i));
    TRY(nn_resnet_load(p, &en->mid_res[0], top, top, 0, g, VAE_EPS, "encoder.mid_block.resnets.0"));
    TRY(nn_norm_load(p, &en->mid_attn.norm, top, "encoder.mid_block.attentions.0.group_norm"));
    TRY(nn_attn_load(p, &en->mid_attn.attn, top, top, 1, 1, 2, "encoder.mid_block.attentions.0"));
    TRY(nn_resnet_load(p, &en->mid_res[1], top, top, 0, g, VAE_EPS, "encoder.mid_block.resnets.1"));
    TRY(nn_norm_load(p, &en->norm_out, top, "encoder.conv_norm_out"));
    TRY(nn_conv_load(p, &en->conv_out, top, z2, 3, "encoder.conv_out"));
    TRY(nn_conv_load(p, &en->quant, z2, z2, 1, "quant_conv"));
    m->has_encoder = 1;
done:
    return err;
}

easel_err vae_load(const vae_config *c, wstore *ws, vae_model **out) {
    *out = NULL;
    easel_err err = vae_check(c);
    if (err) return err;
    vae_model *m = calloc(1, sizeof *m);
    if (!m) return easel_seterr(EASEL_ENOMEM, "vae: out of host memory");
    m->c = *c;
    m->be = ws->be;
    nn_params_init(&m->params, ws);
    if ((err = load_all(m))) {
        vae_free(m);
        return easel_wraperr(err, "loading the vae");
    }
    /* the encoder is optional (a decoder-only checkpoint still does txt2img) */
    if (ws->has(ws, "encoder.conv_in.weight") && (err = load_encoder(m))) {
        vae_free(m);
        return easel_wraperr(err, "loading the vae encoder");
    }
    *out = m;
    return EASEL_OK;
}

void vae_free(vae_model *m) {
    if (!m) return;
    nn_params_free(&m->params);
    free(m);
}

const vae_config *vae_get_config(const vae_model *m) {
    return &m->c;
}

int vae_has_encoder(const vae_model *m) {
    return m && m->has_encoder;
}

/* x += attn(group_norm(x)), single head over all H·W positions. */
static easel_err attn_fwd(const vae_model *m, const vae_attn *a, arena *ar, tensor *x) {
    backend *be = arena_backend(ar);
    size_t mark = arena_mark(ar);
    easel_err err = EASEL_OK;
    tensor xs = tensor_3d(x->data, x->dt, x->dev, x->ne[0], x->ne[1] * x->ne[2], x->ne[3]);
    tensor n = arena_like(ar, &xs);
    TRY(arena_error(ar));
    TRY(be->group_norm(be, &n, &xs, &a->norm.w, &a->norm.b, m->c.norm_num_groups, VAE_EPS, 0));
    TRY(nn_attn_fwd(&a->attn, ar, &xs, &n, NULL));
done:
    arena_release(ar, mark);
    return err;
}

/* The block's ResNets (in place when the channels stay), then conv(up2x(h)). */
static easel_err up_fwd(const vae_block *b, arena *ar, tensor *h) {
    backend *be = arena_backend(ar);
    easel_err err = EASEL_OK;
    for (int j = 0; j < b->nres; j++) {
        tensor o = *h;
        if (b->res[j].in != b->res[j].out)
            o = arena_new4(ar, h->ne[0], h->ne[1], h->ne[2], b->res[j].out);
        if ((err = arena_error(ar)) || (err = nn_resnet_fwd(&b->res[j], ar, h, NULL, &o)))
            return err;
        *h = o;
    }
    if (!b->has_up) return EASEL_OK;
    tensor o = arena_new4(ar, h->ne[0], 2 * h->ne[1], 2 * h->ne[2], h->ne[3]);
    size_t mark = arena_mark(ar);
    tensor u = arena_like(ar, &o);
    if (!(err = arena_error(ar)) && !(err = be->upsample2x(be, &u, h)))
        err = be->conv2d(be, &o, &u, &b->up.w, &b->up.b, 1, 1);
    arena_release(ar, mark);
    *h = o;
    return err;
}

static easel_err check_io(const vae_model *m, const tensor *z, const tensor *img) {
    int64_t f = (int64_t)1 << (m->c.levels - 1);
    if (z->ndim != 4 || z->ne[3] != m->c.latent_channels || img->ndim != 4 ||
        img->ne[0] != z->ne[0] || img->ne[1] != f * z->ne[1] || img->ne[2] != f * z->ne[2] ||
        img->ne[3] != m->c.out_channels) {
        char a[64], b[64];
        return easel_seterr(EASEL_EINVAL, "vae_decode: z %s and img %s do not fit the model",
                            tensor_shape_str(z, a, sizeof a), tensor_shape_str(img, b, sizeof b));
    }
    return EASEL_OK;
}

easel_err vae_decode(const vae_model *m, arena *ar, const tensor *z, tensor *img) {
    easel_err err = check_io(m, z, img);
    if (err) return err;
    backend *be = arena_backend(ar);
    size_t mark = arena_mark(ar);
    int top = m->c.block_out_channels[m->c.levels - 1];
    tensor zs = arena_like(ar, z), zq = arena_like(ar, z);
    size_t base = arena_mark(ar); /* h lives here between blocks */
    tensor h = arena_new4(ar, z->ne[0], z->ne[1], z->ne[2], top);
    TRY(arena_error(ar));
    TRY(be->axpby(be, &zs, 1.0f / m->c.scaling_factor, z, 0.0f, z));
    TRY(be->conv2d(be, &zq, &zs, &m->post_quant.w, &m->post_quant.b, 1, 0));
    TRY(be->conv2d(be, &h, &zq, &m->conv_in.w, &m->conv_in.b, 1, 1));
    TRY(nn_resnet_fwd(&m->mid_res[0], ar, &h, NULL, &h));
    TRY(attn_fwd(m, &m->mid_attn, ar, &h));
    TRY(nn_resnet_fwd(&m->mid_res[1], ar, &h, NULL, &h));
    for (int i = 0; i < m->c.levels; i++) {
        TRY(up_fwd(&m->up[i], ar, &h));
        TRY(nn_compact(ar, base, &h)); /* the block's input and temporaries are dead */
    }
    tensor n = arena_like(ar, &h);
    TRY(arena_error(ar));
    TRY(be->group_norm(be, &n, &h, &m->norm_out.w, &m->norm_out.b, m->c.norm_num_groups, VAE_EPS,
                       1));
    TRY(be->conv2d(be, img, &n, &m->conv_out.w, &m->conv_out.b, 1, 1));
done:
    arena_release(ar, mark);
    return err;
}

/* The block's ResNets (in place when the channels stay), then Downsample2D:
 * F.pad(h, (0, 1, 0, 1)) and a 3x3 stride-2 conv without padding. */
static easel_err down_fwd(const vae_down_block *b, arena *ar, tensor *h) {
    backend *be = arena_backend(ar);
    easel_err err = EASEL_OK;
    for (int j = 0; j < b->nres; j++) {
        tensor o = *h;
        if (b->res[j].in != b->res[j].out)
            o = arena_new4(ar, h->ne[0], h->ne[1], h->ne[2], b->res[j].out);
        if ((err = arena_error(ar)) || (err = nn_resnet_fwd(&b->res[j], ar, h, NULL, &o)))
            return err;
        *h = o;
    }
    if (!b->has_down) return EASEL_OK;
    int64_t H = h->ne[1], W = h->ne[2];
    tensor o = arena_new4(ar, h->ne[0], (H + 1 - 3) / 2 + 1, (W + 1 - 3) / 2 + 1, h->ne[3]);
    size_t mark = arena_mark(ar);
    tensor p = arena_new4(ar, h->ne[0], H + 1, W + 1, h->ne[3]);
    if (!(err = arena_error(ar)) && !(err = be->pad2d(be, &p, h, 0, 0)))
        err = be->conv2d(be, &o, &p, &b->down.w, &b->down.b, 2, 0);
    arena_release(ar, mark);
    *h = o;
    return err;
}

/* The encoder's output size for an H x W input: each Downsample2D maps n to
 * (n + 1 - 3) / 2 + 1 = floor((n - 2) / 2) + 1. */
static int64_t enc_size(const vae_config *c, int64_t n) {
    for (int i = 0; i < c->levels - 1; i++)
        n = (n + 1 - 3) / 2 + 1;
    return n;
}

easel_err vae_encode(const vae_model *m, arena *ar, const tensor *img, tensor *moments) {
    if (!m->has_encoder)
        return easel_seterr(EASEL_EUNSUPPORTED,
                            "vae_encode: this VAE has no encoder (a decoder-only checkpoint)");
    const vae_config *c = &m->c;
    if (img->ndim != 4 || img->ne[3] != c->in_channels || img->ne[1] < 3 || img->ne[2] < 3 ||
        moments->ndim != 4 || moments->ne[0] != img->ne[0] ||
        moments->ne[1] != enc_size(c, img->ne[1]) || moments->ne[2] != enc_size(c, img->ne[2]) ||
        moments->ne[3] != 2 * c->latent_channels) {
        char a[64], b[64];
        return easel_seterr(EASEL_EINVAL, "vae_encode: img %s and moments %s do not fit the model",
                            tensor_shape_str(img, a, sizeof a),
                            tensor_shape_str(moments, b, sizeof b));
    }
    const vae_encoder *en = &m->enc;
    backend *be = arena_backend(ar);
    size_t mark = arena_mark(ar);
    easel_err err = EASEL_OK;
    size_t base = arena_mark(ar); /* h lives here between blocks */
    tensor h = arena_new4(ar, img->ne[0], img->ne[1], img->ne[2], c->block_out_channels[0]);
    TRY(arena_error(ar));
    TRY(be->conv2d(be, &h, img, &en->conv_in.w, &en->conv_in.b, 1, 1));
    for (int i = 0; i < c->levels; i++) {
        TRY(down_fwd(&en->down[i], ar, &h));
        TRY(nn_compact(ar, base, &h)); /* the block's input and temporaries are dead */
    }
    TRY(nn_resnet_fwd(&en->mid_res[0], ar, &h, NULL, &h));
    TRY(attn_fwd(m, &en->mid_attn, ar, &h));
    TRY(nn_resnet_fwd(&en->mid_res[1], ar, &h, NULL, &h));
    tensor n = arena_like(ar, &h);
    tensor z = arena_like(ar, moments);
    TRY(arena_error(ar));
    TRY(be->group_norm(be, &n, &h, &en->norm_out.w, &en->norm_out.b, c->norm_num_groups, VAE_EPS,
                       1));
    TRY(be->conv2d(be, &z, &n, &en->conv_out.w, &en->conv_out.b, 1, 1));
    TRY(be->conv2d(be, moments, &z, &en->quant.w, &en->quant.b, 1, 0));
done:
    arena_release(ar, mark);
    return err;
}
