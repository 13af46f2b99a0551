/* TAESD (see taesd.h) as diffusers' EncoderTiny / DecoderTiny build it:
 *   decoder: tanh(z/3)·3 -> conv -> ReLU -> per level: blocks, [2x nearest,
 *            conv without bias] ... last level: blocks, conv (with bias) -> ·2 − 1
 *   encoder: (x+1)/2 -> conv -> blocks -> per level: conv stride 2 (no bias),
 *            blocks ... -> conv
 *   block:   relu(conv(relu(conv(relu(conv(x))))) + x)  (AutoencoderTinyBlock
 *            with equal widths: its skip is the identity)
 * Layers are numbered as their nn.Sequential does, which is how both weight
 * layouts name them. Each level's input stays in the arena below its output
 * (a third of the last level's size in all), which is cheaper than moving
 * the output down. */
#include "taesd.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../engine/safetensors.h"
#include "loader.h"
#include "nn.h"

#define TRY(expr)                                                                                  \
    do {                                                                                           \
        if ((err = (expr))) goto done;                                                             \
    } while (0)

typedef struct {
    nn_conv c[3]; /* conv.0, conv.2, conv.4 */
} tblock;

typedef struct {
    int nblocks;
    tblock b[TAESD_MAX_BLOCKS];
    nn_conv conv; /* decoder: after the blocks (and upsampling); encoder: before them */
} tlevel;

struct taesd_model {
    taesd_config c;
    backend *be;
    nn_params params;
    int64_t nparams;
    int has_dec, has_enc;
    nn_conv dec_in, enc_out;
    tlevel dec[TAESD_MAX_LEVELS], enc[TAESD_MAX_LEVELS];
    tensor one, minus_one; /* [1] constants for the ±1 shifts */
    char path[1024];
};

/* ---- config ---- */

void taesd_config_default(taesd_config *c) {
    *c = (taesd_config){.in_channels = 3,
                        .out_channels = 3,
                        .latent_channels = 4,
                        .enc_levels = 4,
                        .dec_levels = 4,
                        .enc_channels = 64,
                        .dec_channels = 64,
                        .enc_blocks = {1, 3, 3, 3},
                        .dec_blocks = {3, 3, 3, 1},
                        .scaling_factor = 1.0f,
                        .latent_magnitude = 3.0f,
                        .latent_shift = 0.5f};
}

int taesd_config_factor(const taesd_config *c) {
    return 1 << (c->dec_levels - 1);
}

static easel_err config_check(const taesd_config *c) {
    if (c->enc_levels < 1 || c->enc_levels > TAESD_MAX_LEVELS || c->dec_levels < 1 ||
        c->dec_levels > TAESD_MAX_LEVELS || c->enc_levels != c->dec_levels)
        return easel_seterr(EASEL_EUNSUPPORTED,
                            "taesd: %d encoder and %d decoder levels (1..%d, and equal)",
                            c->enc_levels, c->dec_levels, TAESD_MAX_LEVELS);
    if (c->in_channels < 1 || c->out_channels < 1 || c->latent_channels < 1 ||
        c->enc_channels < 1 || c->dec_channels < 1 || !(c->scaling_factor > 0))
        return easel_seterr(EASEL_EUNSUPPORTED, "taesd: bad channel counts or scaling_factor");
    for (int i = 0; i < c->dec_levels; i++)
        if (c->enc_blocks[i] < 0 || c->enc_blocks[i] > TAESD_MAX_BLOCKS || c->dec_blocks[i] < 0 ||
            c->dec_blocks[i] > TAESD_MAX_BLOCKS)
            return easel_seterr(EASEL_EUNSUPPORTED, "taesd: 0..%d blocks per level",
                                TAESD_MAX_BLOCKS);
    return EASEL_OK;
}

/* One width for all levels, as the architecture needs (see taesd_config). */
static easel_err one_width(const cJSON *root, const char *key, int *width, int *levels) {
    int v[TAESD_MAX_LEVELS];
    int n = nn_json_ints(root, key, v, TAESD_MAX_LEVELS);
    if (n < 0) return easel_seterr(EASEL_EUNSUPPORTED, "taesd config: %s", key);
    for (int i = 1; i < n; i++)
        if (v[i] != v[0])
            return easel_seterr(EASEL_EUNSUPPORTED,
                                "taesd config: %s must be one width for every level (diffusers "
                                "builds level i+1 on level i's channels)",
                                key);
    if (n > 0) *width = v[0], *levels = n;
    return EASEL_OK;
}

static easel_err refuse_fields(const cJSON *root) {
    static const struct {
        const char *key, *want;
    } strs[] = {{"act_fn", "relu"}, {"upsample_fn", "nearest"}};
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++) {
        const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, strs[i].key);
        if (it && !cJSON_IsNull(it) &&
            (!cJSON_IsString(it) || strcmp(it->valuestring, strs[i].want)))
            return easel_seterr(EASEL_EUNSUPPORTED, "taesd config: %s must be \"%s\"", strs[i].key,
                                strs[i].want);
    }
    int up = 2;
    if (nn_json_int(root, "upsampling_scaling_factor", &up) || up != 2)
        return easel_seterr(EASEL_EUNSUPPORTED,
                            "taesd config: upsampling_scaling_factor must be 2");
    if (nn_json_set(root, "shift_factor"))
        return easel_seterr(EASEL_EUNSUPPORTED,
                            "taesd config: shift_factor is not supported (SD3/Flux latents)");
    return EASEL_OK;
}

easel_err taesd_config_from_json(taesd_config *c, const char *json) {
    cJSON *root = cJSON_Parse(json);
    easel_err err = EASEL_OK;
    taesd_config t = *c;
    int eb[TAESD_MAX_LEVELS], db[TAESD_MAX_LEVELS], ne = 0, nd = 0;
    if (!root || !cJSON_IsObject(root))
        TRY(easel_seterr(EASEL_EFORMAT, "taesd config: not a JSON object"));
    TRY(refuse_fields(root));
    int el = t.enc_levels, dl = t.dec_levels;
    TRY(one_width(root, "encoder_block_out_channels", &t.enc_channels, &el));
    TRY(one_width(root, "decoder_block_out_channels", &t.dec_channels, &dl));
    if ((ne = nn_json_ints(root, "num_encoder_blocks", eb, TAESD_MAX_LEVELS)) < 0 ||
        (nd = nn_json_ints(root, "num_decoder_blocks", db, TAESD_MAX_LEVELS)) < 0)
        TRY(easel_seterr(EASEL_EUNSUPPORTED, "taesd config: num_encoder/decoder_blocks"));
    for (int i = 0; i < ne && i < TAESD_MAX_LEVELS; i++)
        t.enc_blocks[i] = eb[i], el = ne;
    for (int i = 0; i < nd && i < TAESD_MAX_LEVELS; i++)
        t.dec_blocks[i] = db[i], dl = nd;
    t.enc_levels = el, t.dec_levels = dl;
    if (nn_json_int(root, "in_channels", &t.in_channels) ||
        nn_json_int(root, "out_channels", &t.out_channels) ||
        nn_json_int(root, "latent_channels", &t.latent_channels) ||
        nn_json_float(root, "scaling_factor", &t.scaling_factor) ||
        nn_json_float(root, "latent_shift", &t.latent_shift) ||
        nn_json_float(root, "latent_magnitude", &t.latent_magnitude))
        TRY(easel_seterr(EASEL_EFORMAT, "taesd config: a value has the wrong type"));
    TRY(config_check(&t));
    *c = t;
done:
    cJSON_Delete(root);
    return err;
}

char *taesd_config_json(const taesd_config *c) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    int ec[TAESD_MAX_LEVELS], dc[TAESD_MAX_LEVELS];
    for (int i = 0; i < TAESD_MAX_LEVELS; i++)
        ec[i] = c->enc_channels, dc[i] = c->dec_channels;
    cJSON_AddStringToObject(o, "_class_name", "AutoencoderTiny");
    cJSON_AddStringToObject(o, "_diffusers_version", "0.42.1");
    cJSON_AddStringToObject(o, "act_fn", "relu");
    cJSON_AddItemToObject(o, "decoder_block_out_channels", cJSON_CreateIntArray(dc, c->dec_levels));
    cJSON_AddItemToObject(o, "encoder_block_out_channels", cJSON_CreateIntArray(ec, c->enc_levels));
    cJSON_AddBoolToObject(o, "force_upcast", 0);
    cJSON_AddNumberToObject(o, "in_channels", c->in_channels);
    cJSON_AddNumberToObject(o, "latent_channels", c->latent_channels);
    cJSON_AddNumberToObject(o, "latent_magnitude", c->latent_magnitude);
    cJSON_AddNumberToObject(o, "latent_shift", c->latent_shift);
    cJSON_AddItemToObject(o, "num_decoder_blocks",
                          cJSON_CreateIntArray(c->dec_blocks, c->dec_levels));
    cJSON_AddItemToObject(o, "num_encoder_blocks",
                          cJSON_CreateIntArray(c->enc_blocks, c->enc_levels));
    cJSON_AddNumberToObject(o, "out_channels", c->out_channels);
    cJSON_AddNumberToObject(o, "scaling_factor", c->scaling_factor);
    cJSON_AddNumberToObject(o, "shift_factor", 0);
    cJSON_AddStringToObject(o, "upsample_fn", "nearest");
    cJSON_AddNumberToObject(o, "upsampling_scaling_factor", 2);
    char *s = cJSON_Print(o);
    cJSON_Delete(o);
    return s;
}

/* ---- weights ---- */

static easel_err conv_load(taesd_model *m, nn_conv *c, int in, int out, int k, int bias,
                           const char *prefix) {
    int64_t ws[4] = {out, in, k, k}, bs[1] = {out};
    *c = (nn_conv){.in = in, .out = out, .k = k};
    easel_err err = nn_get(&m->params, &c->w, WL_CONV, 4, ws, prefix, "weight");
    if (!err && bias) err = nn_get(&m->params, &c->b, WL_PLAIN, 1, bs, prefix, "bias");
    if (!err) m->nparams += (int64_t)out * in * k * k + (bias ? out : 0);
    return err;
}

static easel_err block_load(taesd_model *m, tblock *b, int ch, const char *half, int layer) {
    char n[NN_NAME_MAX];
    easel_err err = EASEL_OK;
    for (int j = 0; j < 3 && !err; j++)
        if (!(err = nn_name(n, sizeof n, "%s.layers.%d.conv.%d", half, layer, 2 * j)))
            err = conv_load(m, &b->c[j], ch, ch, 3, 1, n);
    return err;
}

static easel_err dec_load(taesd_model *m, wstore *ws) {
    const taesd_config *c = &m->c;
    char n[NN_NAME_MAX];
    int C = c->dec_channels, k = 0;
    easel_err err;
    m->params.ws = ws;
    TRY(conv_load(m, &m->dec_in, c->latent_channels, C, 3, 1, "decoder.layers.0"));
    k = 2; /* 1 is the ReLU */
    for (int i = 0; i < c->dec_levels; i++) {
        tlevel *l = &m->dec[i];
        int last = i == c->dec_levels - 1;
        l->nblocks = c->dec_blocks[i];
        for (int j = 0; j < l->nblocks; j++)
            TRY(block_load(m, &l->b[j], C, "decoder", k++));
        if (!last) k++; /* the Upsample */
        TRY(nn_name(n, sizeof n, "decoder.layers.%d", k++));
        TRY(conv_load(m, &l->conv, C, last ? c->out_channels : C, 3, last, n));
    }
    m->has_dec = 1;
done:
    return err;
}

static easel_err enc_load(taesd_model *m, wstore *ws) {
    const taesd_config *c = &m->c;
    char n[NN_NAME_MAX];
    int C = c->enc_channels, k = 0;
    easel_err err;
    m->params.ws = ws;
    for (int i = 0; i < c->enc_levels; i++) {
        tlevel *l = &m->enc[i];
        TRY(nn_name(n, sizeof n, "encoder.layers.%d", k++));
        TRY(conv_load(m, &l->conv, i ? C : c->in_channels, C, 3, i == 0, n));
        l->nblocks = c->enc_blocks[i];
        for (int j = 0; j < l->nblocks; j++)
            TRY(block_load(m, &l->b[j], C, "encoder", k++));
    }
    TRY(nn_name(n, sizeof n, "encoder.layers.%d", k));
    TRY(conv_load(m, &m->enc_out, C, c->latent_channels, 3, 1, n));
    m->has_enc = 1;
done:
    return err;
}

static easel_err make_const(backend *be, tensor *t, float v) {
    int64_t ne[1] = {1};
    easel_err e = backend_tensor_alloc(be, t, be->act_dtype, 1, ne);
    if (!e && (e = be->upload(be, t, &v))) backend_tensor_free(be, t);
    return e;
}

easel_err taesd_load_ws(const taesd_config *c, wstore *dec, wstore *enc, taesd_model **out) {
    *out = NULL;
    easel_err err = config_check(c);
    if (err) return err;
    if (!dec) return easel_seterr(EASEL_EINVAL, "taesd: no decoder weights");
    taesd_model *m = calloc(1, sizeof *m);
    if (!m) return easel_seterr(EASEL_ENOMEM, "taesd: out of host memory");
    m->c = *c;
    m->be = dec->be;
    nn_params_init(&m->params, dec);
    err = dec_load(m, dec);
    if (!err && enc && enc->be != dec->be)
        err = easel_seterr(EASEL_EINVAL, "taesd: encoder and decoder stores on two backends");
    if (!err && enc) err = enc_load(m, enc);
    if (!err) err = make_const(m->be, &m->one, 1.0f);
    if (!err) err = make_const(m->be, &m->minus_one, -1.0f);
    if (err) {
        taesd_free(m);
        return easel_wraperr(err, "loading taesd");
    }
    *out = m;
    return EASEL_OK;
}

void taesd_free(taesd_model *m) {
    if (!m) return;
    nn_params_free(&m->params);
    if (m->be) backend_tensor_free(m->be, &m->one), backend_tensor_free(m->be, &m->minus_one);
    free(m);
}

const taesd_config *taesd_get_config(const taesd_model *m) {
    return &m->c;
}
int taesd_has_encoder(const taesd_model *m) {
    return m->has_enc;
}
int64_t taesd_params(const taesd_model *m) {
    return m->nparams;
}
const char *taesd_path(const taesd_model *m) {
    return m->path;
}

/* ---- from disk ---- */

static int is_file(const char *p) {
    struct stat st;
    return !stat(p, &st) && S_ISREG(st.st_mode);
}
static int is_dir(const char *p) {
    struct stat st;
    return !stat(p, &st) && S_ISDIR(st.st_mode);
}

/* The original release: "decoder.layers.N.rest" -> "<N+1>.rest" (the
 * decoder's Sequential starts with a parameterless Clamp), encoder N -> N. */
static const char *orig_name(void *ctx, const char *name, char *buf, size_t len) {
    const char *half = ctx; /* "decoder.layers." or "encoder.layers." */
    size_t hl = strlen(half);
    if (strncmp(name, half, hl)) return NULL;
    char *end;
    long k = strtol(name + hl, &end, 10);
    if (end == name + hl || k < 0) return NULL;
    int n = snprintf(buf, len, "%ld%s", k + (half[0] == 'd'), end);
    return n > 0 && (size_t)n < len ? buf : NULL;
}

/* Every stored tensor must have been asked for: a file of another shape
 * (taesd3's 16 latent channels, a mid-block GroupNorm) is refused, not half read. */
static easel_err check_unused(const wstore *ws, const char *path) {
    const char *names[4];
    size_t n = wstore_st_unused(ws, names, 4);
    if (!n) return EASEL_OK;
    return easel_seterr(EASEL_EFORMAT,
                        "%s: %zu tensor(s) this TAESD layout does not have (%s%s%s%s%s%s%s): "
                        "not an AutoencoderTiny of this shape",
                        path, n, names[0], n > 1 ? ", " : "", n > 1 ? names[1] : "",
                        n > 2 ? ", " : "", n > 2 ? names[2] : "", n > 3 ? ", " : "",
                        n > 3 ? "..." : "");
}

/* Widths and latent channels of the original files, from their first convs. */
static easel_err orig_config(const char *dec_path, const char *enc_path, taesd_config *c) {
    taesd_config_default(c);
    st_file *f = NULL;
    easel_err e = st_open(dec_path, &f);
    if (e) return e;
    const st_tensor *t = st_find(f, "1.weight");
    if (!t || t->ndim != 4) {
        st_close(f);
        return easel_seterr(EASEL_EFORMAT,
                            "%s: no 4-d tensor \"1.weight\": not an original TAESD decoder",
                            dec_path);
    }
    c->dec_channels = (int)t->shape[0], c->latent_channels = (int)t->shape[1];
    st_close(f);
    if (!enc_path) return EASEL_OK;
    if ((e = st_open(enc_path, &f))) return e;
    t = st_find(f, "0.weight");
    if (t && t->ndim == 4) c->enc_channels = (int)t->shape[0], c->in_channels = (int)t->shape[1];
    st_close(f);
    return EASEL_OK;
}

typedef struct {
    wstore *dec, *enc;
} stores;

static void stores_close(stores *s) {
    if (s->enc != s->dec) wstore_st_close(s->enc);
    wstore_st_close(s->dec);
    s->dec = s->enc = NULL;
}

static easel_err open_diffusers(const char *dir, backend *be, taesd_config *c, stores *s) {
    char p[4200], *json = NULL;
    snprintf(p, sizeof p, "%s/config.json", dir);
    easel_err e = sd_read_text(p, 1 << 20, &json);
    taesd_config_default(c);
    if (!e) e = taesd_config_from_json(c, json);
    free(json);
    if (e) return easel_wraperr(e, "%s", p);
    snprintf(p, sizeof p, "%s/diffusion_pytorch_model.safetensors", dir);
    const char *paths[1] = {p};
    if ((e = wstore_st_open(be, paths, 1, NULL, NULL, NULL, &s->dec))) return e;
    s->enc = s->dec;
    return EASEL_OK;
}

/* dec: the *_decoder.safetensors; its *_encoder sibling is used if present. */
static easel_err open_original(const char *dec, backend *be, taesd_config *c, stores *s) {
    char enc[4200];
    size_t n = strlen(dec), sfx = strlen("_decoder.safetensors");
    int has_enc = 0;
    if (n > sfx && n < sizeof enc && !strcmp(dec + n - sfx, "_decoder.safetensors")) {
        snprintf(enc, sizeof enc, "%.*s_encoder.safetensors", (int)(n - sfx), dec);
        has_enc = is_file(enc);
    }
    easel_err e = orig_config(dec, has_enc ? enc : NULL, c);
    if (e) return e;
    const char *dp[1] = {dec}, *ep[1] = {enc};
    if ((e = wstore_st_open(be, dp, 1, NULL, orig_name, (void *)"decoder.layers.", &s->dec)))
        return e;
    if (has_enc &&
        (e = wstore_st_open(be, ep, 1, NULL, orig_name, (void *)"encoder.layers.", &s->enc))) {
        stores_close(s);
        return e;
    }
    return EASEL_OK;
}

/* Which layout path is, into *c and *s (names checked at load). */
static easel_err open_stores(const char *path, backend *be, taesd_config *c, stores *s) {
    char p[4200];
    if (is_file(path)) return open_original(path, be, c, s);
    if (!is_dir(path)) return easel_seterr(EASEL_ENOTFOUND, "taesd: %s does not exist", path);
    snprintf(p, sizeof p, "%s/config.json", path);
    if (is_file(p)) return open_diffusers(path, be, c, s);
    static const char *const names[] = {"taesd_decoder.safetensors", "taesdxl_decoder.safetensors"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", path, names[i]);
        if (is_file(p)) return open_original(p, be, c, s);
    }
    return easel_seterr(EASEL_ENOTFOUND,
                        "taesd: %s has neither config.json + diffusion_pytorch_model.safetensors "
                        "(diffusers AutoencoderTiny) nor taesd_decoder.safetensors / "
                        "taesdxl_decoder.safetensors (the original release)",
                        path);
}

easel_err taesd_load(const char *path, backend *be, taesd_model **out) {
    *out = NULL;
    taesd_config c;
    stores s = {0};
    easel_err e = open_stores(path, be, &c, &s);
    taesd_model *m = NULL;
    if (!e) e = taesd_load_ws(&c, s.dec, s.enc, &m);
    if (!e) e = check_unused(s.dec, path);
    if (!e && s.enc && s.enc != s.dec) e = check_unused(s.enc, path);
    stores_close(&s);
    if (e) {
        taesd_free(m);
        return easel_wraperr(e, "taesd %s", path);
    }
    snprintf(m->path, sizeof m->path, "%s", path);
    *out = m;
    return EASEL_OK;
}

/* ---- forward ---- */

static easel_err conv_fwd(backend *be, const nn_conv *c, tensor *y, const tensor *x, int stride) {
    return be->conv2d(be, y, x, &c->w, c->b.data ? &c->b : NULL, stride, c->k / 2);
}

/* x = relu(conv(relu(conv(relu(conv(x))))) + x), in place. */
static easel_err block_fwd(const tblock *b, arena *ar, tensor *x) {
    backend *be = arena_backend(ar);
    size_t mark = arena_mark(ar);
    easel_err err = EASEL_OK;
    tensor t1 = arena_like(ar, x), t2 = arena_like(ar, x);
    TRY(arena_error(ar));
    TRY(conv_fwd(be, &b->c[0], &t1, x, 1));
    TRY(be->unary(be, &t1, &t1, UNARY_RELU));
    TRY(conv_fwd(be, &b->c[1], &t2, &t1, 1));
    TRY(be->unary(be, &t2, &t2, UNARY_RELU));
    TRY(conv_fwd(be, &b->c[2], &t1, &t2, 1));
    TRY(be->binary(be, x, x, &t1, BINARY_ADD));
    TRY(be->unary(be, x, x, UNARY_RELU));
done:
    arena_release(ar, mark);
    return err;
}

static easel_err blocks_fwd(const tlevel *l, arena *ar, tensor *h) {
    easel_err err = EASEL_OK;
    for (int j = 0; j < l->nblocks && !err; j++)
        err = block_fwd(&l->b[j], ar, h);
    return err;
}

static easel_err shapes_fit(const char *op, const tensor *small, int sc, const tensor *big, int bc,
                            int f) {
    if (small->ndim != 4 || big->ndim != 4 || small->ne[3] != sc || big->ne[3] != bc ||
        small->ne[0] != big->ne[0] || big->ne[1] != f * small->ne[1] ||
        big->ne[2] != f * small->ne[2]) {
        char a[64], b[64];
        return easel_seterr(EASEL_EINVAL, "%s: %s and %s do not fit the model (factor %d)", op,
                            tensor_shape_str(small, a, sizeof a),
                            tensor_shape_str(big, b, sizeof b), f);
    }
    return EASEL_OK;
}

easel_err taesd_decode(const taesd_model *m, arena *ar, const tensor *z, tensor *img) {
    const taesd_config *c = &m->c;
    easel_err err = shapes_fit("taesd_decode", z, c->latent_channels, img, c->out_channels,
                               taesd_config_factor(c));
    if (err) return err;
    if (!m->has_dec) return easel_seterr(EASEL_EUNSUPPORTED, "taesd: no decoder loaded");
    backend *be = arena_backend(ar);
    size_t mark = arena_mark(ar);
    int64_t B = z->ne[0], H = z->ne[1], W = z->ne[2];
    tensor zc = arena_like(ar, z);
    tensor h = arena_new4(ar, B, H, W, c->dec_channels);
    TRY(arena_error(ar));
    /* pipeline: z / scaling_factor; DecoderTiny: tanh(x / 3) * 3 */
    TRY(be->axpby(be, &zc, 1.0f / (3.0f * c->scaling_factor), z, 0.0f, z));
    TRY(be->unary(be, &zc, &zc, UNARY_TANH));
    TRY(be->axpby(be, &zc, 3.0f, &zc, 0.0f, &zc));
    TRY(conv_fwd(be, &m->dec_in, &h, &zc, 1));
    TRY(be->unary(be, &h, &h, UNARY_RELU));
    for (int i = 0; i < c->dec_levels; i++) {
        const tlevel *l = &m->dec[i];
        TRY(blocks_fwd(l, ar, &h));
        if (i == c->dec_levels - 1) {
            TRY(conv_fwd(be, &l->conv, img, &h, 1));
            break;
        }
        H *= 2, W *= 2;
        tensor o = arena_new4(ar, B, H, W, c->dec_channels);
        size_t up_mark = arena_mark(ar);
        tensor u = arena_like(ar, &o);
        TRY(arena_error(ar));
        TRY(be->upsample2x(be, &u, &h));
        TRY(conv_fwd(be, &l->conv, &o, &u, 1));
        arena_release(ar, up_mark);
        h = o;
    }
    /* [0, 1] -> [-1, 1] */
    TRY(be->axpby(be, img, 2.0f, img, 0.0f, img));
    TRY(be->binary(be, img, img, &m->minus_one, BINARY_ADD));
done:
    arena_release(ar, mark);
    return err;
}

easel_err taesd_encode(const taesd_model *m, arena *ar, const tensor *img, tensor *z) {
    const taesd_config *c = &m->c;
    if (!m->has_enc)
        return easel_seterr(EASEL_EUNSUPPORTED,
                            "taesd: no encoder loaded (the original release keeps it in "
                            "taesd_encoder.safetensors next to the decoder)");
    easel_err err = shapes_fit("taesd_encode", z, c->latent_channels, img, c->in_channels,
                               taesd_config_factor(c));
    if (err) return err;
    backend *be = arena_backend(ar);
    size_t mark = arena_mark(ar);
    int64_t B = img->ne[0], H = img->ne[1], W = img->ne[2];
    tensor x = arena_like(ar, img);
    tensor h = arena_new4(ar, B, H, W, c->enc_channels);
    TRY(arena_error(ar));
    /* EncoderTiny: x.add(1).div(2) */
    TRY(be->binary(be, &x, img, &m->one, BINARY_ADD));
    TRY(be->axpby(be, &x, 0.5f, &x, 0.0f, &x));
    TRY(conv_fwd(be, &m->enc[0].conv, &h, &x, 1));
    TRY(blocks_fwd(&m->enc[0], ar, &h));
    for (int i = 1; i < c->enc_levels; i++) {
        H = (H - 1) / 2 + 1, W = (W - 1) / 2 + 1;
        tensor o = arena_new4(ar, B, H, W, c->enc_channels);
        TRY(arena_error(ar));
        TRY(conv_fwd(be, &m->enc[i].conv, &o, &h, 2));
        h = o;
        TRY(blocks_fwd(&m->enc[i], ar, &h));
    }
    TRY(conv_fwd(be, &m->enc_out, z, &h, 1));
    if (c->scaling_factor != 1.0f) TRY(be->axpby(be, z, c->scaling_factor, z, 0.0f, z));
done:
    arena_release(ar, mark);
    return err;
}
