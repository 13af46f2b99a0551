/* Checkpoint loading (see loader.h): detects the layout, refuses pickles,
 * reads the configs, and serves weights to the networks by diffusers name,
 * converting dtype and layout on the way and remembering which tensors were
 * used so that leftovers can be reported. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "../engine/safetensors.h"
#include "loader.h"

typedef struct {
    sd_checkpoint *ck;
    sd_component c;
} ck_store;

struct sd_checkpoint {
    char *path;
    int single;
    sd_arch arch;
    char *tok_dir;
    st_file *files[SD_COMPONENTS]; /* single file: all three are files[0] */
    unsigned char *used[SD_COMPONENTS];
    ck_store stores[SD_COMPONENTS];
    float *scratch;   /* one f32 staging buffer reused for every tensor: a fresh */
    size_t scratch_n; /* malloc per tensor costs SD1.5 4 GB of page faults */
};

const char *sd_component_name(sd_component c) {
    static const char *names[] = {"unet", "vae", "text_encoder"};
    return (unsigned)c < SD_COMPONENTS ? names[c] : "?";
}

/* ---- architectures ---- */

void sd_arch_sd15(sd_arch *a) {
    memset(a, 0, sizeof *a);
    snprintf(a->arch, sizeof a->arch, "sd15");
    unet_config_sd15(&a->unet);
    vae_config_sd15(&a->vae);
    clip_config_sd15(&a->clip);
}

void sd_arch_tiny(sd_arch *a) {
    sd_arch_sd15(a);
    snprintf(a->arch, sizeof a->arch, "tiny");
    unet_config *u = &a->unet;
    u->levels = 2;
    u->block_out_channels[0] = 32, u->block_out_channels[1] = 64;
    u->down_attn[0] = 0, u->down_attn[1] = 1;
    u->up_attn[0] = 1, u->up_attn[1] = 0;
    u->head_dim_or_heads[0] = 2, u->head_dim_or_heads[1] = 2;
    u->layers_per_block = 1;
    u->cross_attention_dim = 32;
    u->sample_size = 8;
    clip_config *c = &a->clip;
    c->hidden = 32, c->layers = 2, c->heads = 4, c->intermediate = 64;
    vae_config *v = &a->vae;
    v->levels = 4;
    v->block_out_channels[0] = 32, v->block_out_channels[1] = 32;
    v->block_out_channels[2] = 64, v->block_out_channels[3] = 64;
    v->layers_per_block = 1;
}

easel_err sd_arch_by_name(const char *name, sd_arch *a) {
    if (!strcmp(name, "sd15")) return sd_arch_sd15(a), EASEL_OK;
    if (!strcmp(name, "tiny")) return sd_arch_tiny(a), EASEL_OK;
    return easel_seterr(EASEL_EINVAL, "unknown architecture '%s' (choices: tiny, sd15)", name);
}

/* ---- config JSON (diffusers / transformers format) ---- */

static cJSON *int_array(const int *v, int n) {
    return cJSON_CreateIntArray(v, n);
}

static cJSON *str_array(const char *const *v, int n) {
    return cJSON_CreateStringArray(v, n);
}

static cJSON *unet_json(const unet_config *u) {
    cJSON *o = cJSON_CreateObject();
    const char *down[UNET_MAX_LEVELS], *up[UNET_MAX_LEVELS];
    for (int i = 0; i < u->levels; i++) {
        down[i] = u->down_attn[i] ? "CrossAttnDownBlock2D" : "DownBlock2D";
        up[i] = u->up_attn[i] ? "CrossAttnUpBlock2D" : "UpBlock2D";
    }
    cJSON_AddStringToObject(o, "_class_name", "UNet2DConditionModel");
    cJSON_AddNumberToObject(o, "in_channels", u->in_channels);
    cJSON_AddNumberToObject(o, "out_channels", u->out_channels);
    cJSON_AddItemToObject(o, "block_out_channels", int_array(u->block_out_channels, u->levels));
    cJSON_AddItemToObject(o, "down_block_types", str_array(down, u->levels));
    cJSON_AddItemToObject(o, "up_block_types", str_array(up, u->levels));
    cJSON_AddNumberToObject(o, "layers_per_block", u->layers_per_block);
    cJSON_AddItemToObject(o, "attention_head_dim", int_array(u->head_dim_or_heads, u->levels));
    cJSON_AddNumberToObject(o, "cross_attention_dim", u->cross_attention_dim);
    cJSON_AddNumberToObject(o, "norm_num_groups", u->norm_num_groups);
    cJSON_AddNumberToObject(o, "norm_eps", u->norm_eps);
    cJSON_AddNumberToObject(o, "transformer_layers_per_block", u->transformer_layers);
    cJSON_AddBoolToObject(o, "use_linear_projection", u->use_linear_projection);
    cJSON_AddBoolToObject(o, "flip_sin_to_cos", u->flip_sin_to_cos);
    cJSON_AddNumberToObject(o, "freq_shift", u->freq_shift);
    cJSON_AddNumberToObject(o, "sample_size", u->sample_size);
    cJSON_AddStringToObject(o, "act_fn", "silu");
    return o;
}

static cJSON *vae_json(const vae_config *v) {
    cJSON *o = cJSON_CreateObject();
    const char *down[VAE_MAX_LEVELS], *up[VAE_MAX_LEVELS];
    for (int i = 0; i < v->levels; i++)
        down[i] = "DownEncoderBlock2D", up[i] = "UpDecoderBlock2D";
    cJSON_AddStringToObject(o, "_class_name", "AutoencoderKL");
    cJSON_AddNumberToObject(o, "in_channels", 3);
    cJSON_AddNumberToObject(o, "out_channels", v->out_channels);
    cJSON_AddNumberToObject(o, "latent_channels", v->latent_channels);
    cJSON_AddItemToObject(o, "block_out_channels", int_array(v->block_out_channels, v->levels));
    cJSON_AddItemToObject(o, "down_block_types", str_array(down, v->levels));
    cJSON_AddItemToObject(o, "up_block_types", str_array(up, v->levels));
    cJSON_AddNumberToObject(o, "layers_per_block", v->layers_per_block);
    cJSON_AddNumberToObject(o, "norm_num_groups", v->norm_num_groups);
    cJSON_AddNumberToObject(o, "scaling_factor", v->scaling_factor);
    cJSON_AddStringToObject(o, "act_fn", "silu");
    return o;
}

static cJSON *clip_json(const clip_config *c) {
    cJSON *o = cJSON_CreateObject();
    const char *arch[] = {"CLIPTextModel"};
    cJSON_AddItemToObject(o, "architectures", str_array(arch, 1));
    cJSON_AddStringToObject(o, "model_type", "clip_text_model");
    cJSON_AddNumberToObject(o, "vocab_size", c->vocab_size);
    cJSON_AddNumberToObject(o, "hidden_size", c->hidden);
    cJSON_AddNumberToObject(o, "num_hidden_layers", c->layers);
    cJSON_AddNumberToObject(o, "num_attention_heads", c->heads);
    cJSON_AddNumberToObject(o, "intermediate_size", c->intermediate);
    cJSON_AddNumberToObject(o, "max_position_embeddings", c->max_positions);
    cJSON_AddStringToObject(o, "hidden_act", c->quick_gelu ? "quick_gelu" : "gelu");
    cJSON_AddNumberToObject(o, "layer_norm_eps", c->eps);
    cJSON_AddNumberToObject(o, "projection_dim", c->hidden);
    return o;
}

char *sd_config_json(const sd_arch *a, sd_component c) {
    cJSON *o = c == SD_UNET  ? unet_json(&a->unet)
               : c == SD_VAE ? vae_json(&a->vae)
                             : clip_json(&a->clip);
    if (!o) return NULL;
    char *s = cJSON_Print(o);
    cJSON_Delete(o);
    return s;
}

/* ---- files ---- */

easel_err sd_read_text(const char *path, size_t max_bytes, char **out) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return easel_seterr(errno == ENOENT ? EASEL_ENOTFOUND : EASEL_EIO, "%s: %s", path,
                            strerror(errno));
    char *buf = malloc(max_bytes + 1);
    if (!buf) {
        fclose(f);
        return easel_seterr(EASEL_ENOMEM, "%s: out of memory", path);
    }
    size_t n = fread(buf, 1, max_bytes + 1, f);
    int bad = ferror(f);
    fclose(f);
    if (bad || n > max_bytes) {
        free(buf);
        return easel_seterr(bad ? EASEL_EIO : EASEL_EFORMAT, "%s: %s", path,
                            bad ? "read error" : "file too large");
    }
    buf[n] = 0;
    *out = buf;
    return EASEL_OK;
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcasecmp(s + n - k, suffix);
}

/* Pickle checkpoints run code when unpickled; we never open them. */
static easel_err refuse_pickle(const char *path) {
    return easel_seterr(
        EASEL_EUNSUPPORTED,
        "%s is a PyTorch pickle checkpoint; easel does not load pickles because unpickling can "
        "run arbitrary code. Convert it once (in a sandbox, with a trusted PyTorch) to "
        ".safetensors: python -c \"import torch; from safetensors.torch import save_file; "
        "sd = torch.load('model.ckpt', map_location='cpu', weights_only=True); "
        "sd = sd.get('state_dict', sd); save_file({k: v.contiguous() for k, v in sd.items() "
        "if torch.is_tensor(v)}, 'model.safetensors')\"",
        path);
}

static int looks_like_pickle(const char *path) {
    if (ends_with(path, ".ckpt") || ends_with(path, ".pt") || ends_with(path, ".pth") ||
        ends_with(path, ".bin") || ends_with(path, ".pkl"))
        return 1;
    unsigned char m[4] = {0};
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    size_t n = fread(m, 1, 4, f);
    fclose(f);
    /* zip (torch.save since 1.6) or a raw pickle protocol 2+ stream */
    return n == 4 && ((m[0] == 'P' && m[1] == 'K' && m[2] == 3 && m[3] == 4) ||
                      (m[0] == 0x80 && m[1] >= 2 && m[1] <= 5));
}

static int file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* Finds the component's weights file in a diffusers folder. */
static easel_err folder_weights(const char *dir, sd_component c, char *out, size_t len) {
    const char *base = c == SD_TEXT ? "model" : "diffusion_pytorch_model";
    const char *comp = sd_component_name(c);
    snprintf(out, len, "%s/%s/%s.safetensors", dir, comp, base);
    if (file_exists(out)) return EASEL_OK;
    snprintf(out, len, "%s/%s/%s.fp16.safetensors", dir, comp, base);
    if (file_exists(out)) return EASEL_OK;
    snprintf(out, len, "%s/%s/%s.bin", dir, comp, base);
    if (file_exists(out)) return refuse_pickle(out);
    snprintf(out, len, "%s/%s/%s.safetensors.index.json", dir, comp, base);
    if (file_exists(out))
        return easel_seterr(EASEL_EUNSUPPORTED, "%s: sharded weights are not supported yet", out);
    return easel_seterr(EASEL_ENOTFOUND, "%s/%s: no %s.safetensors (not a diffusers folder?)", dir,
                        comp, base);
}

typedef easel_err (*config_parser)(void *cfg, const char *json);

static easel_err read_config(const char *path, void *cfg, config_parser parse) {
    char *json = NULL;
    easel_err e = sd_read_text(path, 1 << 20, &json);
    if (e) return e;
    e = parse(cfg, json);
    free(json);
    if (e) return easel_wraperr(e, "%s", path);
    return EASEL_OK;
}

static easel_err unet_parse(void *c, const char *j) {
    return unet_config_from_json(c, j);
}
static easel_err vae_parse(void *c, const char *j) {
    return vae_config_from_json(c, j);
}
static easel_err clip_parse(void *c, const char *j) {
    return clip_config_from_json(c, j);
}

static void guess_arch_name(sd_arch *a, const char *index_json) {
    snprintf(a->arch, sizeof a->arch, "custom");
    cJSON *o = index_json ? cJSON_Parse(index_json) : NULL;
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(o, "_easel_arch");
    if (cJSON_IsString(n) && strlen(n->valuestring) < sizeof a->arch)
        snprintf(a->arch, sizeof a->arch, "%s", n->valuestring);
    else if (a->unet.levels == 4 && a->unet.block_out_channels[0] == 320 &&
             a->unet.cross_attention_dim == 768 && a->clip.hidden == 768)
        snprintf(a->arch, sizeof a->arch, "sd15");
    cJSON_Delete(o);
}

static easel_err open_folder(sd_checkpoint *ck) {
    char p[4096];
    sd_arch_sd15(&ck->arch);
    config_parser parsers[SD_COMPONENTS] = {unet_parse, vae_parse, clip_parse};
    void *cfgs[SD_COMPONENTS] = {&ck->arch.unet, &ck->arch.vae, &ck->arch.clip};
    for (int c = 0; c < SD_COMPONENTS; c++) {
        easel_err e = folder_weights(ck->path, c, p, sizeof p);
        if (!e) e = st_open(p, &ck->files[c]);
        if (e) return e;
        snprintf(p, sizeof p, "%s/%s/config.json", ck->path, sd_component_name(c));
        if (file_exists(p) && (e = read_config(p, cfgs[c], parsers[c]))) return e;
    }
    char *index = NULL;
    snprintf(p, sizeof p, "%s/model_index.json", ck->path);
    if (file_exists(p) && sd_read_text(p, 1 << 20, &index)) index = NULL;
    guess_arch_name(&ck->arch, index);
    free(index);
    snprintf(p, sizeof p, "%s/tokenizer/vocab.json", ck->path);
    if (file_exists(p)) {
        size_t n = strlen(ck->path) + 16;
        if (!(ck->tok_dir = malloc(n))) return easel_seterr(EASEL_ENOMEM, "out of memory");
        snprintf(ck->tok_dir, n, "%s/tokenizer", ck->path);
    }
    return EASEL_OK;
}

/* Single files made by make-model carry their configs in __metadata__;
 * others are SD1.x with the SD1.5 configs. */
static easel_err open_single(sd_checkpoint *ck) {
    easel_err e = st_open(ck->path, &ck->files[0]);
    if (e) return e;
    st_file *f = ck->files[0];
    ck->files[1] = ck->files[2] = f;
    sd_arch_sd15(&ck->arch);
    if (st_find(f, "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight") ||
        st_find(f, "conditioner.embedders.0.transformer.text_model.embeddings.position_ids"))
        return easel_seterr(EASEL_EUNSUPPORTED,
                            "%s: SD2.x/SDXL single-file checkpoints are not supported yet "
                            "(SD1.x only)",
                            ck->path);
    const char *u = st_meta_get(f, "easel_unet_config"), *v = st_meta_get(f, "easel_vae_config");
    const char *t = st_meta_get(f, "easel_text_encoder_config");
    if ((u && (e = unet_config_from_json(&ck->arch.unet, u))) ||
        (v && (e = vae_config_from_json(&ck->arch.vae, v))) ||
        (t && (e = clip_config_from_json(&ck->arch.clip, t))))
        return easel_wraperr(e, "%s: __metadata__ config", ck->path);
    const char *arch = st_meta_get(f, "easel_arch");
    char index[64] = "";
    if (arch && strlen(arch) < 16) snprintf(index, sizeof index, "{\"_easel_arch\":\"%s\"}", arch);
    guess_arch_name(&ck->arch, index[0] ? index : NULL);
    return EASEL_OK;
}

static easel_err alloc_used(sd_checkpoint *ck) {
    int n = ck->single ? 1 : SD_COMPONENTS;
    for (int c = 0; c < n; c++) {
        size_t cnt = st_count(ck->files[c]);
        if (!(ck->used[c] = calloc(cnt ? cnt : 1, 1)))
            return easel_seterr(EASEL_ENOMEM, "out of memory");
    }
    if (ck->single) ck->used[1] = ck->used[2] = ck->used[0];
    return EASEL_OK;
}

easel_err sd_checkpoint_open(const char *path, sd_checkpoint **out) {
    *out = NULL;
    struct stat st;
    if (stat(path, &st) != 0)
        return easel_seterr(EASEL_ENOTFOUND, "model '%s' not found: %s", path, strerror(errno));
    if (S_ISREG(st.st_mode) && looks_like_pickle(path)) return refuse_pickle(path);
    sd_checkpoint *ck = calloc(1, sizeof *ck);
    if (!ck || !(ck->path = strdup(path))) {
        free(ck);
        return easel_seterr(EASEL_ENOMEM, "out of memory");
    }
    ck->single = S_ISREG(st.st_mode);
    easel_err e = ck->single ? open_single(ck) : open_folder(ck);
    if (!e) e = alloc_used(ck);
    if (e) {
        sd_checkpoint_close(ck);
        return easel_wraperr(e, "loading model '%s'", path);
    }
    *out = ck;
    return EASEL_OK;
}

void sd_checkpoint_close(sd_checkpoint *ck) {
    if (!ck) return;
    int n = ck->single ? 1 : SD_COMPONENTS;
    for (int c = 0; c < n; c++) {
        st_close(ck->files[c]);
        free(ck->used[c]);
    }
    free(ck->scratch);
    free(ck->tok_dir);
    free(ck->path);
    free(ck);
}

const sd_arch *sd_checkpoint_arch(const sd_checkpoint *ck) {
    return &ck->arch;
}
int sd_checkpoint_single_file(const sd_checkpoint *ck) {
    return ck->single;
}
const char *sd_checkpoint_tokenizer_dir(const sd_checkpoint *ck) {
    return ck->tok_dir;
}

/* ---- the store ---- */

/* Older diffusers VAEs name the attention query/key/value/proj_attn. */
static const st_tensor *find_alias(const st_file *f, const char *name) {
    static const char *alias[][2] = {{".to_q.", ".query."},
                                     {".to_k.", ".key."},
                                     {".to_v.", ".value."},
                                     {".to_out.0.", ".proj_attn."}};
    char buf[512];
    for (size_t i = 0; i < sizeof alias / sizeof alias[0]; i++) {
        const char *p = strstr(name, alias[i][0]);
        if (!p) continue;
        snprintf(buf, sizeof buf, "%.*s%s%s", (int)(p - name), name, alias[i][1],
                 p + strlen(alias[i][0]));
        return st_find(f, buf);
    }
    return NULL;
}

static const st_tensor *find_tensor(ck_store *s, const char *name, char *stored, size_t len) {
    st_file *f = s->ck->files[s->c];
    if (!s->ck->single) {
        snprintf(stored, len, "%s", name);
        const st_tensor *t = st_find(f, name);
        /* transformers 5 saves CLIPTextModel without the "text_model." level */
        if (!t && s->c == SD_TEXT && !strncmp(name, "text_model.", 11)) t = st_find(f, name + 11);
        return t ? t : s->c == SD_VAE ? find_alias(f, name) : NULL;
    }
    if (ldm_name(&s->ck->arch, s->c, name, stored, len)) {
        easel_clearerr();
        return NULL;
    }
    const st_tensor *t = st_find(f, stored);
    /* checkpoints saved with transformers < 4.x have no "text_model." level */
    if (!t && s->c == SD_TEXT && !strncmp(name, "text_model.", 11)) {
        char old[512];
        snprintf(old, sizeof old, "cond_stage_model.transformer.%s", name + 11);
        t = st_find(f, old);
    }
    return t;
}

static const char *shape_str(int ndim, const int64_t *s, char *buf, size_t len) {
    size_t o = snprintf(buf, len, "[");
    for (int i = 0; i < ndim && o < len; i++)
        o += snprintf(buf + o, len - o, "%s%lld", i ? "," : "", (long long)s[i]);
    if (o < len) snprintf(buf + o, len - o, "]");
    return buf;
}

/* Stored shape == wanted; a conv-as-linear weight may be stored [Co,Ci] or
 * [Co,Ci,1,1] (LDM's VAE attention, SD1.x proj_in/out) either way round. */
static int squeezed(int ndim, const int64_t *s) {
    while (ndim > 2 && s[ndim - 1] == 1)
        ndim--;
    return ndim;
}

static int shape_ok(const st_tensor *t, int ndim, const int64_t *shape, weight_layout layout) {
    int a = t->ndim, b = ndim;
    if (layout == WL_CONV_AS_LINEAR) a = squeezed(a, t->shape), b = squeezed(b, shape);
    if (a != b) return 0;
    for (int i = 0; i < a; i++)
        if (t->shape[i] != shape[i]) return 0;
    return 1;
}

/* Drops the file pages of a tensor already converted from our resident set:
 * the mapping is st_open's read-only private file mapping, so a later read
 * faults them back in from the file. Keeps SD1.5 f32 at ~weights size. */
static void drop_pages(const st_tensor *t) {
    uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = (uintptr_t)t->data & ~(pg - 1), b = (uintptr_t)t->data + (t->end - t->begin);
    if (b > a) madvise((void *)a, b - a, MADV_DONTNEED);
}

/* The staging buffer, grown to n floats (NULL if out of memory). */
static float *scratch(sd_checkpoint *ck, size_t n) {
    if (n <= ck->scratch_n) return ck->scratch;
    float *p = realloc(ck->scratch, sizeof(float) * n);
    if (!p) return NULL;
    ck->scratch = p, ck->scratch_n = n;
    return p;
}

static easel_err store_get(wstore *ws, const char *name, int ndim, const int64_t *shape,
                           weight_layout layout, tensor *out) {
    ck_store *s = ws->ctx;
    char stored[512], want[96], got[96];
    memset(out, 0, sizeof *out);
    const st_tensor *t = find_tensor(s, name, stored, sizeof stored);
    const char *comp = sd_component_name(s->c), *file = st_path(s->ck->files[s->c]);
    if (!t)
        return easel_seterr(EASEL_ENOTFOUND, "%s: %s: missing tensor '%s' (expected shape %s)",
                            file, comp, stored, shape_str(ndim, shape, want, sizeof want));
    if (!shape_ok(t, ndim, shape, layout))
        return easel_seterr(EASEL_EFORMAT, "%s: %s: tensor '%s' has shape %s, expected %s", file,
                            comp, t->name, shape_str(t->ndim, t->shape, got, sizeof got),
                            shape_str(ndim, shape, want, sizeof want));
    float *buf = scratch(s->ck, (size_t)st_nelem(t) + 1);
    easel_err e = EASEL_OK;
    if (!buf) e = easel_seterr(EASEL_ENOMEM, "%s: out of memory reading '%s'", comp, t->name);
    if (!e && (e = st_read_f32(s->ck->files[s->c], t, buf)))
        e = easel_wraperr(e, "%s: tensor '%s'", comp, t->name);
    if (!e) drop_pages(t);
    /* dtype, layout and upload as every store does it (models/wstore.c) */
    if (!e &&
        (e = wstore_upload(ws->be, t->name, buf, t->ndim, t->shape, ndim, shape, layout, out)))
        e = easel_wraperr(e, "%s: %s", file, comp);
    if (e) return e;
    s->ck->used[s->c][t - st_at(s->ck->files[s->c], 0)] = 1;
    ws->bytes_loaded += tensor_nbytes(out);
    return EASEL_OK;
}

static int store_has(wstore *ws, const char *name) {
    ck_store *s = ws->ctx;
    char stored[512];
    return find_tensor(s, name, stored, sizeof stored) != NULL;
}

easel_err sd_checkpoint_store(sd_checkpoint *ck, sd_component c, backend *be, wstore *ws) {
    if ((unsigned)c >= SD_COMPONENTS) return easel_seterr(EASEL_EINVAL, "bad component");
    ck->stores[c].ck = ck;
    ck->stores[c].c = c;
    memset(ws, 0, sizeof *ws);
    ws->be = be;
    ws->get = store_get;
    ws->has = store_has;
    ws->ctx = &ck->stores[c];
    return EASEL_OK;
}

/* Tensors a checkpoint may hold that SD1.x txt2img never asks for. */
static int ignorable(const sd_checkpoint *ck, sd_component c, const char *name) {
    if (ck->single) {
        static const char *pre[] = {"model.diffusion_model.", "first_stage_model.",
                                    "cond_stage_model.transformer."};
        if (strncmp(name, pre[c], strlen(pre[c]))) return 1; /* another component or EMA etc. */
        name += strlen(pre[c]);
        if (c == SD_VAE) return !strncmp(name, "encoder.", 8) || !strncmp(name, "quant_conv.", 11);
        return c == SD_TEXT && strstr(name, "position_ids") != NULL;
    }
    if (c == SD_VAE) return !strncmp(name, "encoder.", 8) || !strncmp(name, "quant_conv.", 11);
    return c == SD_TEXT && strstr(name, "position_ids") != NULL;
}

easel_err sd_checkpoint_check_unused(const sd_checkpoint *ck, sd_component c) {
    const st_file *f = ck->files[c];
    size_t n = st_count(f), bad = 0;
    char list[1024] = "";
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        const st_tensor *t = st_at(f, i);
        if (ck->used[c][i] || ignorable(ck, c, t->name)) continue;
        if (bad++ < 8 && o < sizeof list) {
            char sh[96];
            o += snprintf(list + o, sizeof list - o, "%s'%s' %s", bad > 1 ? ", " : "", t->name,
                          shape_str(t->ndim, t->shape, sh, sizeof sh));
        }
    }
    if (!bad) return EASEL_OK;
    return easel_seterr(EASEL_EFORMAT,
                        "%s: %s: %zu unexpected tensor%s (not part of this %s "
                        "architecture): %s%s",
                        st_path(f), sd_component_name(c), bad, bad > 1 ? "s" : "", ck->arch.arch,
                        list, bad > 8 ? ", ..." : "");
}
