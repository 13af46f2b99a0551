/* Checkpoint loading (see loader.h): detects the layout, refuses pickles,
 * reads the configs, and serves weights to the networks by diffusers name,
 * converting dtype and layout on the way and remembering which tensors were
 * used so that leftovers can be reported. */
#include <errno.h>
#include <math.h>
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
    char *tok_dir, *tok2_dir;
    st_file *files[SD_COMPONENTS]; /* single file: all are files[0]; NULL: not in this
                                      checkpoint (text_encoder_2 before SDXL, a component) */
    unsigned char *used[SD_COMPONENTS];
    ck_store stores[SD_COMPONENTS];
    float *scratch;   /* one f32 staging buffer reused for every tensor: a fresh */
    size_t scratch_n; /* malloc per tensor costs SD1.5 4 GB of page faults */
};

const char *sd_component_name(sd_component c) {
    static const char *names[] = {"unet", "vae", "text_encoder", "text_encoder_2"};
    return (unsigned)c < SD_COMPONENTS ? names[c] : "?";
}

/* ---- architectures ---- */

void sd_arch_sd15(sd_arch *a) {
    memset(a, 0, sizeof *a);
    snprintf(a->arch, sizeof a->arch, "sd15");
    snprintf(a->family, sizeof a->family, "sd15");
    sched_config_sd15(&a->sched);
    unet_config_sd15(&a->unet);
    vae_config_sd15(&a->vae);
    clip_config_sd15(&a->clip);
    clip_config_sd15(&a->clip2);
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

/* SD2.x: OpenCLIP ViT-H/14's text tower in CLIPTextModel layout, with 23 of
 * its 24 layers (SD2 reads the penultimate one, so diffusers' SD2 folders
 * carry 23 and use the last), GELU; the UNet with per-level head counts
 * 5/10/20/20, linear projections and 1024-wide cross-attention. */
static void sd_arch_sd2_base(sd_arch *a, const char *name, const char *family, int sample_size,
                             int upcast) {
    sd_arch_sd15(a);
    snprintf(a->arch, sizeof a->arch, "%s", name);
    snprintf(a->family, sizeof a->family, "%s", family);
    unet_config *u = &a->unet;
    u->head_dim_or_heads[0] = 5, u->head_dim_or_heads[1] = 10;
    u->head_dim_or_heads[2] = u->head_dim_or_heads[3] = 20;
    u->use_linear_projection = 1;
    u->cross_attention_dim = 1024;
    u->sample_size = sample_size;
    u->upcast_attention = upcast;
    clip_config *c = &a->clip;
    c->hidden = 1024, c->layers = 23, c->heads = 16, c->intermediate = 4096, c->quick_gelu = 0;
    if (sched_config_family(&a->sched, family)) easel_clearerr(); /* known names */
}

/* The tiny SD2-shaped model: four levels with two layers per block (the
 * layout diffusers' own SD conversion scripts assume), linear projections,
 * per-level heads, a GELU text encoder; channels small enough to commit. */
static void sd_arch_tiny_sd2(sd_arch *a) {
    sd_arch_tiny(a);
    snprintf(a->arch, sizeof a->arch, "tiny-sd2");
    snprintf(a->family, sizeof a->family, "sd2");
    if (sched_config_family(&a->sched, "sd2")) easel_clearerr();
    unet_config *u = &a->unet;
    u->levels = 4;
    int ch[4] = {32, 32, 64, 64}, heads[4] = {1, 2, 2, 4}, down[4] = {1, 1, 1, 0},
        up[4] = {0, 1, 1, 1};
    for (int i = 0; i < 4; i++)
        u->block_out_channels[i] = ch[i], u->head_dim_or_heads[i] = heads[i],
        u->down_attn[i] = down[i], u->up_attn[i] = up[i];
    u->layers_per_block = 2;
    u->use_linear_projection = 1;
    u->cross_attention_dim = 64;
    clip_config *c = &a->clip;
    c->hidden = 64, c->layers = 2, c->heads = 4, c->intermediate = 128, c->quick_gelu = 0;
}

/* SDXL base 1.0's networks (see loader.h); sample_size 128 (1024²), or 64 for SDXL-Turbo. */
static void sd_arch_sdxl(sd_arch *a, const char *name, const char *family, int sample_size) {
    sd_arch_sd15(a);
    snprintf(a->arch, sizeof a->arch, "%s", name);
    snprintf(a->family, sizeof a->family, "%s", family);
    unet_config *u = &a->unet;
    u->levels = 3;
    int ch[3] = {320, 640, 1280}, heads[3] = {5, 10, 20}, tl[3] = {1, 2, 10};
    for (int i = 0; i < 3; i++)
        u->block_out_channels[i] = ch[i], u->head_dim_or_heads[i] = heads[i],
        u->transformer_layers[i] = tl[i], u->down_attn[i] = i > 0, u->up_attn[i] = i < 2;
    u->use_linear_projection = 1;
    u->cross_attention_dim = 2048;
    u->sample_size = sample_size;
    u->add_text_time = 1;
    u->addition_time_embed_dim = 256;
    u->projection_class_embeddings_input_dim = 1280 + UNET_TIME_IDS * 256;
    clip_config *c = &a->clip2;
    c->hidden = 1280, c->layers = 32, c->heads = 20, c->intermediate = 5120, c->quick_gelu = 0;
    c->projection = 1, c->projection_dim = 1280;
    a->has_text2 = 1;
    a->force_zeros = 1;
    a->vae.scaling_factor = 0.13025f;
    a->vae.force_upcast = 1;
    if (sched_config_family(&a->sched, family)) easel_clearerr(); /* known names */
}

/* The tiny SDXL-shaped model: the same three levels (no attention at the top,
 * transformer layers 1/2/3), text_time with 8-wide time ids, two text
 * encoders of widths 32 and 64 (projection 48, so a transposed
 * text_projection cannot pass for the right one). */
static void sd_arch_tiny_sdxl(sd_arch *a) {
    sd_arch_tiny(a);
    snprintf(a->arch, sizeof a->arch, "tiny-sdxl");
    snprintf(a->family, sizeof a->family, "sdxl");
    if (sched_config_family(&a->sched, "sdxl")) easel_clearerr();
    unet_config *u = &a->unet;
    u->levels = 3;
    int ch[3] = {32, 64, 64}, heads[3] = {1, 2, 4}, tl[3] = {1, 2, 3};
    for (int i = 0; i < 3; i++)
        u->block_out_channels[i] = ch[i], u->head_dim_or_heads[i] = heads[i],
        u->transformer_layers[i] = tl[i], u->down_attn[i] = i > 0, u->up_attn[i] = i < 2;
    u->layers_per_block = 2;
    u->use_linear_projection = 1;
    u->cross_attention_dim = 32 + 64;
    u->add_text_time = 1;
    u->addition_time_embed_dim = 8;
    u->projection_class_embeddings_input_dim = 48 + UNET_TIME_IDS * 8;
    a->clip2 = a->clip;
    clip_config *c = &a->clip2;
    c->hidden = 64, c->layers = 3, c->heads = 4, c->intermediate = 128, c->quick_gelu = 0;
    c->projection = 1, c->projection_dim = 48;
    a->has_text2 = 1;
    a->force_zeros = 1;
    a->vae.scaling_factor = 0.13025f;
}

static const char *const arch_names = "tiny, tiny-sd2, tiny-lcm, tiny-sdxl, tiny-inpaint, sd15, "
                                      "sd15-inpaint, sd2, sd2-v, sd-turbo, lcm, sdxl, sdxl-turbo";

easel_err sd_arch_by_name(const char *name, sd_arch *a) {
    if (!strcmp(name, "sd15")) return sd_arch_sd15(a), EASEL_OK;
    if (!strcmp(name, "tiny")) return sd_arch_tiny(a), EASEL_OK;
    if (!strcmp(name, "tiny-sd2")) return sd_arch_tiny_sd2(a), EASEL_OK;
    if (!strcmp(name, "sd2")) return sd_arch_sd2_base(a, "sd2", "sd2", 64, 0), EASEL_OK;
    if (!strcmp(name, "sd2-v")) return sd_arch_sd2_base(a, "sd2-v", "sd2-v", 96, 1), EASEL_OK;
    if (!strcmp(name, "sd-turbo"))
        return sd_arch_sd2_base(a, "sd-turbo", "sd-turbo", 64, 0), EASEL_OK;
    if (!strcmp(name, "sdxl")) return sd_arch_sdxl(a, "sdxl", "sdxl", 128), EASEL_OK;
    if (!strcmp(name, "sdxl-turbo"))
        return sd_arch_sdxl(a, "sdxl-turbo", "sdxl-turbo", 64), EASEL_OK;
    if (!strcmp(name, "tiny-sdxl")) return sd_arch_tiny_sdxl(a), EASEL_OK;
    if (!strcmp(name, "sd15-inpaint") || !strcmp(name, "tiny-inpaint")) {
        /* runwayml's sd-1.5-inpainting: SD1.5 with conv_in taking latents (4), the mask (1)
         * and the masked image's latents (4) */
        if (name[0] == 't')
            sd_arch_tiny(a);
        else
            sd_arch_sd15(a);
        snprintf(a->arch, sizeof a->arch, "%s", name);
        a->unet.in_channels = 2 * a->vae.latent_channels + 1;
        return EASEL_OK;
    }
    if (!strcmp(name, "lcm") || !strcmp(name, "tiny-lcm")) {
        if (name[0] == 't')
            sd_arch_tiny(a);
        else
            sd_arch_sd15(a);
        snprintf(a->arch, sizeof a->arch, "%s", name);
        snprintf(a->family, sizeof a->family, "lcm");
        a->unet.time_cond_proj_dim = name[0] == 't' ? 32 : 256; /* LCM-Dreamshaper-v7: 256 */
        if (sched_config_family(&a->sched, "lcm")) easel_clearerr();
        return EASEL_OK;
    }
    return easel_seterr(EASEL_EINVAL, "unknown architecture '%s' (choices: %s)", name, arch_names);
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
    cJSON_AddItemToObject(o, "transformer_layers_per_block",
                          int_array(u->transformer_layers, u->levels));
    cJSON_AddBoolToObject(o, "use_linear_projection", u->use_linear_projection);
    cJSON_AddBoolToObject(o, "flip_sin_to_cos", u->flip_sin_to_cos);
    cJSON_AddNumberToObject(o, "freq_shift", u->freq_shift);
    cJSON_AddNumberToObject(o, "sample_size", u->sample_size);
    cJSON_AddBoolToObject(o, "upcast_attention", u->upcast_attention);
    if (u->time_cond_proj_dim > 0)
        cJSON_AddNumberToObject(o, "time_cond_proj_dim", u->time_cond_proj_dim);
    if (u->add_text_time) {
        cJSON_AddStringToObject(o, "addition_embed_type", "text_time");
        cJSON_AddNumberToObject(o, "addition_time_embed_dim", u->addition_time_embed_dim);
        cJSON_AddNumberToObject(o, "projection_class_embeddings_input_dim",
                                u->projection_class_embeddings_input_dim);
    }
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
    cJSON_AddBoolToObject(o, "force_upcast", v->force_upcast);
    cJSON_AddStringToObject(o, "act_fn", "silu");
    return o;
}

static cJSON *clip_json(const clip_config *c) {
    cJSON *o = cJSON_CreateObject();
    const char *arch[] = {c->projection ? "CLIPTextModelWithProjection" : "CLIPTextModel"};
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
    /* SD2's OpenCLIP text projection is 1024 -> 1024 (unused by txt2img) */
    cJSON_AddNumberToObject(o, "projection_dim",
                            c->projection       ? c->projection_dim
                            : c->hidden == 1024 ? 1024
                                                : c->hidden);
    if (!c->quick_gelu) { /* OpenCLIP's tokenizer: pad "!" (id 0), eos 49407 */
        cJSON_AddNumberToObject(o, "pad_token_id", 1);
        cJSON_AddNumberToObject(o, "bos_token_id", 0);
        cJSON_AddNumberToObject(o, "eos_token_id", 2);
    }
    return o;
}

char *sd_config_json(const sd_arch *a, sd_component c) {
    cJSON *o = c == SD_UNET    ? unet_json(&a->unet)
               : c == SD_VAE   ? vae_json(&a->vae)
               : c == SD_TEXT2 ? clip_json(&a->clip2)
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

static int dir_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Finds a component's weights file in its folder cdir (a diffusers pipeline's
 * <component>/ subfolder). */
static easel_err component_weights(const char *cdir, sd_component c, char *out, size_t len) {
    const char *base = c == SD_TEXT || c == SD_TEXT2 ? "model" : "diffusion_pytorch_model";
    snprintf(out, len, "%s/%s.safetensors", cdir, base);
    if (file_exists(out)) return EASEL_OK;
    snprintf(out, len, "%s/%s.fp16.safetensors", cdir, base);
    if (file_exists(out)) return EASEL_OK;
    snprintf(out, len, "%s/%s.bin", cdir, base);
    if (file_exists(out)) return refuse_pickle(out);
    snprintf(out, len, "%s/%s.safetensors.index.json", cdir, base);
    if (file_exists(out))
        return easel_seterr(EASEL_EUNSUPPORTED, "%s: sharded weights are not supported yet", out);
    return easel_seterr(EASEL_ENOTFOUND, "%s: no %s.safetensors (not a diffusers folder?)", cdir,
                        base);
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

static const config_parser parsers[SD_COMPONENTS] = {unet_parse, vae_parse, clip_parse, clip_parse};

static void *component_config(sd_arch *a, sd_component c) {
    return c == SD_UNET   ? (void *)&a->unet
           : c == SD_VAE  ? (void *)&a->vae
           : c == SD_TEXT ? (void *)&a->clip
                          : (void *)&a->clip2;
}

static void guess_arch_name(sd_arch *a, const char *index_json) {
    snprintf(a->arch, sizeof a->arch, "custom");
    cJSON *o = index_json ? cJSON_Parse(index_json) : NULL;
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(o, "_easel_arch");
    if (cJSON_IsString(n) && strlen(n->valuestring) < sizeof a->arch)
        snprintf(a->arch, sizeof a->arch, "%s", n->valuestring);
    else if (a->unet.levels == 4 && a->unet.block_out_channels[0] == 320 &&
             a->unet.cross_attention_dim == 768 && a->clip.hidden == 768)
        snprintf(a->arch, sizeof a->arch, "%s", a->unet.in_channels == 9 ? "sd15-inpaint" : "sd15");
    else if (a->has_text2 && a->unet.levels == 3 && a->unet.block_out_channels[0] == 320 &&
             a->unet.cross_attention_dim == 2048 && a->clip2.hidden == 1280)
        snprintf(a->arch, sizeof a->arch, "%s", a->unet.sample_size == 64 ? "sdxl-turbo" : "sdxl");
    cJSON_Delete(o);
}

/* The family the defaults follow, from what the checkpoint is: two text
 * encoders are SDXL (Euler a + trailing: SDXL-Turbo; Euler + trailing:
 * Lightning); a guidance embedding is LCM; SD2 (1024-wide cross-attention, or an OpenCLIP/GELU text
 * encoder) with Euler + trailing is SD-Turbo, with v-prediction SD2-768,
 * else SD2 base; the rest SD1.x. */
static void guess_family(sd_arch *a) {
    const char *f = "sd15";
    const sched_config *s = &a->sched;
    int v = (s->set & (1u << SF_PREDICTION)) && s->prediction_type == PRED_V;
    int trailing = (s->set & (1u << SF_SPACING)) && s->timestep_spacing == SPACING_TRAILING;
    if (a->has_text2 || a->unet.add_text_time) /* SDXL: Turbo ships Euler a trailing, */
        f = !trailing                                                   ? "sdxl" /* Lightning */
            : !strcmp(s->class_name, "EulerAncestralDiscreteScheduler") ? "sdxl-turbo"
                                                                        : "sdxl-lightning";
    else if (a->unet.time_cond_proj_dim > 0)
        f = "lcm";
    else if (a->unet.cross_attention_dim == 1024 || a->text_openclip || !a->clip.quick_gelu) {
        int turbo = !strcmp(s->class_name, "EulerDiscreteScheduler") &&
                    (s->set & (1u << SF_SPACING)) && s->timestep_spacing == SPACING_TRAILING;
        f = turbo ? "sd-turbo" : v ? "sd2-v" : "sd2";
    }
    snprintf(a->family, sizeof a->family, "%s", f);
}

/* scheduler_config.json as from_config reads it: absent keys stay unset. */
easel_err sd_read_scheduler(const char *path, sched_config *c) {
    char *json = NULL;
    easel_err e = sd_read_text(path, 1 << 20, &json);
    if (e) return e;
    sched_config t;
    sched_config_empty(&t);
    e = sched_config_from_json(&t, json);
    free(json);
    if (e) return easel_wraperr(e, "%s", path);
    *c = t;
    return EASEL_OK;
}

/* model_index.json's force_zeros_for_empty_prompt: StableDiffusionXLPipeline's
 * default (true) unless the file says otherwise. */
static int index_force_zeros(const char *index_json) {
    cJSON *o = index_json ? cJSON_Parse(index_json) : NULL;
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(o, "force_zeros_for_empty_prompt");
    int v = cJSON_IsBool(f) ? cJSON_IsTrue(f) : 1;
    cJSON_Delete(o);
    return v;
}

static easel_err open_component(sd_checkpoint *ck, sd_component c, const char *cdir) {
    char p[4096];
    easel_err e = component_weights(cdir, c, p, sizeof p);
    if (!e) e = st_open(p, &ck->files[c]);
    if (e) return e;
    snprintf(p, sizeof p, "%s/config.json", cdir);
    if (file_exists(p) && (e = read_config(p, component_config(&ck->arch, c), parsers[c])))
        return e;
    return EASEL_OK;
}

static easel_err tokenizer_dir(const char *path, const char *sub, char **out) {
    char p[4096];
    snprintf(p, sizeof p, "%s/%s/vocab.json", path, sub);
    if (!file_exists(p)) return EASEL_OK;
    snprintf(p, sizeof p, "%s/%s", path, sub);
    if (!(*out = strdup(p))) return easel_seterr(EASEL_ENOMEM, "out of memory");
    return EASEL_OK;
}

static easel_err open_folder(sd_checkpoint *ck) {
    char p[4096];
    sd_arch_sd15(&ck->arch);
    for (int c = 0; c < SD_COMPONENTS; c++) {
        snprintf(p, sizeof p, "%s/%s", ck->path, sd_component_name(c));
        if (c == SD_TEXT2 && !dir_exists(p)) continue; /* SDXL only */
        easel_err e = open_component(ck, c, p);
        if (e) return e;
    }
    char *index = NULL;
    snprintf(p, sizeof p, "%s/model_index.json", ck->path);
    if (file_exists(p) && sd_read_text(p, 1 << 20, &index)) index = NULL;
    ck->arch.has_text2 = ck->files[SD_TEXT2] != NULL;
    ck->arch.force_zeros = ck->arch.has_text2 && index_force_zeros(index);
    guess_arch_name(&ck->arch, index);
    free(index);
    snprintf(p, sizeof p, "%s/scheduler/scheduler_config.json", ck->path);
    if (file_exists(p)) {
        easel_err e = sd_read_scheduler(p, &ck->arch.sched);
        if (e) return e;
        ck->arch.sched_stated = 1;
        ck->arch.pred_stated = (ck->arch.sched.set & (1u << SF_PREDICTION)) != 0;
    }
    guess_family(&ck->arch);
    easel_err e = tokenizer_dir(ck->path, "tokenizer", &ck->tok_dir);
    if (!e && ck->arch.has_text2) e = tokenizer_dir(ck->path, "tokenizer_2", &ck->tok2_dir);
    return e;
}

/* How strongly a single SD2 file says it is v-prediction: 2 metadata
 * (modelspec.prediction_type, or a modelspec.architecture ending "-v"),
 * 1 a "v_pred" marker tensor (kohya / ComfyUI), 0 nothing, -2/-1 the same
 * signals saying epsilon. */
static int v_signal(const st_file *f) {
    const char *pt = st_meta_get(f, "modelspec.prediction_type");
    if (pt) return !strcmp(pt, "v") || !strcmp(pt, "v_prediction") ? 2 : -2;
    const char *ar = st_meta_get(f, "modelspec.architecture");
    if (ar) return strstr(ar, "-v") && strstr(ar, "-v") + 2 == ar + strlen(ar) ? 2 : -2;
    if (st_find(f, "v_pred")) return 1;
    return 0;
}

/* 1 for v-prediction (SD2.x 768), 0 epsilon (SD2.x base). Without a signal,
 * ComfyUI's test: SD2-768-v's last output block has norm1 biases with a
 * population std above 0.09 (the base model's are smaller). */
static int single_is_v(const st_file *f) {
    int sig = v_signal(f);
    if (sig) return sig > 0;
    const st_tensor *t =
        st_find(f, "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias");
    int64_t n = t ? st_nelem(t) : 0;
    float *b = n > 0 && n < (1 << 20) ? malloc(sizeof(float) * (size_t)n) : NULL;
    int v = 0;
    if (b && !st_read_f32(f, t, b)) {
        double m = 0, q = 0;
        for (int64_t i = 0; i < n; i++)
            m += b[i];
        m /= (double)n;
        for (int64_t i = 0; i < n; i++)
            q += (b[i] - m) * (b[i] - m);
        v = sqrt(q / (double)n) > 0.09;
    }
    free(b);
    easel_clearerr();
    return v;
}

/* Single files made by make-model carry their configs in __metadata__;
 * others are SD1.x with the SD1.5 configs, or SD2.x (OpenCLIP text encoder). */
static easel_err open_single(sd_checkpoint *ck) {
    easel_err e = st_open(ck->path, &ck->files[0]);
    if (e) return e;
    st_file *f = ck->files[0];
    ck->files[1] = ck->files[2] = f;
    sd_arch_sd15(&ck->arch);
    if (st_find(f, "conditioner.embedders.0.model.ln_final.weight"))
        return easel_seterr(EASEL_EUNSUPPORTED,
                            "%s: an SDXL refiner (OpenCLIP ViT-bigG only, aesthetic score) is not "
                            "supported; SDXL base-style checkpoints are",
                            ck->path);
    if (st_find(f, "conditioner.embedders.1.model.ln_final.weight")) {
        sd_arch_by_name("sdxl", &ck->arch);
        ck->files[SD_TEXT2] = f;
    } else if (st_find(f, "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight")) {
        int v = single_is_v(f);
        sd_arch_by_name(v ? "sd2-v" : "sd2", &ck->arch);
        ck->arch.text_openclip = 1;
        ck->arch.pred_stated = v_signal(f) != 0;
    }
    /* an inpainting UNet (sd-v1-5-inpainting, sd-2-inpainting): conv_in reads 9 channels */
    const st_tensor *ci = st_find(f, "model.diffusion_model.input_blocks.0.0.weight");
    if (ci && ci->ndim == 4 && ci->shape[1] > 0 && ci->shape[1] <= 64)
        ck->arch.unet.in_channels = (int)ci->shape[1];
    const char *u = st_meta_get(f, "easel_unet_config"), *v = st_meta_get(f, "easel_vae_config");
    const char *t = st_meta_get(f, "easel_text_encoder_config");
    const char *t2 = ck->arch.has_text2 ? st_meta_get(f, "easel_text_encoder_2_config") : NULL;
    if ((u && (e = unet_config_from_json(&ck->arch.unet, u))) ||
        (v && (e = vae_config_from_json(&ck->arch.vae, v))) ||
        (t && (e = clip_config_from_json(&ck->arch.clip, t))) ||
        (t2 && (e = clip_config_from_json(&ck->arch.clip2, t2))))
        return easel_wraperr(e, "%s: __metadata__ config", ck->path);
    const char *arch = st_meta_get(f, "easel_arch");
    char index[64] = "";
    if (arch && strlen(arch) < 16) snprintf(index, sizeof index, "{\"_easel_arch\":\"%s\"}", arch);
    guess_arch_name(&ck->arch, index[0] ? index : NULL);
    const char *sc = st_meta_get(f, "easel_scheduler_config");
    if (sc) {
        sched_config_empty(&ck->arch.sched);
        if ((e = sched_config_from_json(&ck->arch.sched, sc)))
            return easel_wraperr(e, "%s: __metadata__ scheduler config", ck->path);
        ck->arch.sched_stated = 1;
        ck->arch.pred_stated = (ck->arch.sched.set & (1u << SF_PREDICTION)) != 0;
    }
    guess_family(&ck->arch);
    return EASEL_OK;
}

static easel_err alloc_used(sd_checkpoint *ck) {
    int n = ck->single ? 1 : SD_COMPONENTS;
    for (int c = 0; c < n; c++) {
        if (!ck->files[c]) continue;
        size_t cnt = st_count(ck->files[c]);
        if (!(ck->used[c] = calloc(cnt ? cnt : 1, 1)))
            return easel_seterr(EASEL_ENOMEM, "out of memory");
    }
    if (ck->single) /* one file, one record: each component points at files[0]'s */
        for (int c = 1; c < SD_COMPONENTS; c++)
            ck->used[c] = ck->files[c] ? ck->used[0] : NULL;
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
    if (!e && ck->arch.has_text2 && !ck->files[SD_TEXT2])
        e = easel_seterr(EASEL_EFORMAT,
                         "%s: the configs describe SDXL but there is no "
                         "text_encoder_2",
                         path);
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
    free(ck->tok2_dir);
    free(ck->path);
    free(ck);
}

easel_err sd_checkpoint_open_component(const char *dir, sd_component c, sd_checkpoint **out) {
    *out = NULL;
    if ((unsigned)c >= SD_COMPONENTS) return easel_seterr(EASEL_EINVAL, "bad component %d", c);
    if (!dir_exists(dir))
        return easel_seterr(EASEL_ENOTFOUND, "component folder '%s' not found", dir);
    sd_checkpoint *ck = calloc(1, sizeof *ck);
    if (!ck || !(ck->path = strdup(dir))) {
        free(ck);
        return easel_seterr(EASEL_ENOMEM, "out of memory");
    }
    sd_arch_sd15(&ck->arch);
    snprintf(ck->arch.arch, sizeof ck->arch.arch, "component");
    easel_err e = open_component(ck, c, dir);
    if (!e && (c == SD_TEXT || c == SD_TEXT2))
        ck->arch.clip = ck->arch.clip2 = *(clip_config *)component_config(&ck->arch, c);
    if (!e) e = alloc_used(ck);
    if (e) {
        sd_checkpoint_close(ck);
        return easel_wraperr(e, "loading %s from '%s'", sd_component_name(c), dir);
    }
    *out = ck;
    return EASEL_OK;
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
const char *sd_checkpoint_tokenizer2_dir(const sd_checkpoint *ck) {
    return ck->tok2_dir;
}
int sd_checkpoint_random_weights(const sd_checkpoint *ck) {
    const st_file *f = ck->files[SD_UNET] ? ck->files[SD_UNET] : ck->files[0];
    return f && st_meta_get(f, "easel_random_weights") != NULL;
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

/* The stored tensor behind diffusers name `name`; *part (0..2) when name is
 * a third (q, k or v) of a fused OpenCLIP in_proj tensor, else -1. */
static const st_tensor *find_tensor_part(ck_store *s, const char *name, char *stored, size_t len,
                                         int *part) {
    st_file *f = s->ck->files[s->c];
    *part = -1;
    if (!s->ck->single) {
        snprintf(stored, len, "%s", name);
        const st_tensor *t = st_find(f, name);
        /* transformers 5 saves CLIPTextModel without the "text_model." level */
        if (!t && (s->c == SD_TEXT || s->c == SD_TEXT2) && !strncmp(name, "text_model.", 11))
            t = st_find(f, name + 11);
        return t ? t : s->c == SD_VAE ? find_alias(f, name) : NULL;
    }
    if (ldm_name_part(&s->ck->arch, s->c, name, stored, len, part)) {
        easel_clearerr();
        return NULL;
    }
    const st_tensor *t = st_find(f, stored);
    /* checkpoints saved with transformers < 4.x have no "text_model." level */
    if (!t && s->c == SD_TEXT && !s->ck->arch.has_text2 && !strncmp(name, "text_model.", 11)) {
        char old[512];
        snprintf(old, sizeof old, "cond_stage_model.transformer.%s", name + 11);
        t = st_find(f, old);
    }
    return t;
}

static const st_tensor *find_tensor(ck_store *s, const char *name, char *stored, size_t len) {
    int part;
    return find_tensor_part(s, name, stored, len, &part);
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
    int part;
    const st_tensor *t = find_tensor_part(s, name, stored, sizeof stored, &part);
    const char *comp = sd_component_name(s->c), *file = st_path(s->ck->files[s->c]);
    if (!t)
        return easel_seterr(EASEL_ENOTFOUND, "%s: %s: missing tensor '%s' (expected shape %s)",
                            file, comp, stored, shape_str(ndim, shape, want, sizeof want));
    /* a fused in_proj holds q, k, v stacked on rows: we want a third of it; a
     * transposed one is stored [in, out] */
    int thirds = part >= 0 && part < 3, tr = part == LDM_PART_T;
    if (tr && ndim != 2)
        return easel_seterr(EASEL_EINTERNAL, "%s: %s: '%s' transposed but not 2-D", file, comp,
                            name);
    int64_t stored_shape[4];
    memcpy(stored_shape, shape, sizeof(int64_t) * (size_t)ndim);
    if (thirds) stored_shape[0] *= 3;
    if (tr) stored_shape[0] = shape[1], stored_shape[1] = shape[0];
    if (!shape_ok(t, ndim, stored_shape, layout))
        return easel_seterr(EASEL_EFORMAT, "%s: %s: tensor '%s' has shape %s, expected %s", file,
                            comp, t->name, shape_str(t->ndim, t->shape, got, sizeof got),
                            shape_str(ndim, stored_shape, want, sizeof want));
    size_t n = (size_t)st_nelem(t);
    /* the transpose goes into the upper half of the staging buffer */
    float *buf = scratch(s->ck, (tr ? 2 * n : n) + 1);
    easel_err e = EASEL_OK;
    if (!buf) e = easel_seterr(EASEL_ENOMEM, "%s: out of memory reading '%s'", comp, t->name);
    if (!e && (e = st_read_f32(s->ck->files[s->c], t, buf)))
        e = easel_wraperr(e, "%s: tensor '%s'", comp, t->name);
    int64_t rows = 1;
    for (int i = 1; i < ndim; i++)
        rows *= shape[i];
    const float *src = thirds ? buf + (size_t)part * (size_t)(shape[0] * rows) : buf;
    if (!e && tr) { /* stored [in, out] -> ours [out, in] */
        float *dst = buf + n;
        for (int64_t o = 0; o < shape[0]; o++)
            for (int64_t i = 0; i < shape[1]; i++)
                dst[o * shape[1] + i] = buf[i * shape[0] + o];
        src = dst;
    }
    /* dtype, layout and upload as every store does it (models/wstore.c) */
    if (!e && (e = wstore_upload(ws, t->name, src, part >= 0 ? ndim : t->ndim,
                                 part >= 0 ? shape : t->shape, ndim, shape, layout, out)))
        e = easel_wraperr(e, "%s: %s", file, comp);
    if (e) return e;
    if (part < 0 || part >= 2) drop_pages(t);
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
    if (!ck->files[c])
        return easel_seterr(EASEL_EINVAL, "%s has no %s", ck->path, sd_component_name(c));
    ck->stores[c].ck = ck;
    ck->stores[c].c = c;
    memset(ws, 0, sizeof *ws);
    ws->be = be;
    ws->get = store_get;
    ws->has = store_has;
    ws->ctx = &ck->stores[c];
    return EASEL_OK;
}

/* OpenCLIP text-tower tensors under prefix oc that we never read: layers at
 * or past `layers` (SD2 reads the penultimate), the logit scale, and the
 * projection unless keep_proj (SDXL pools through it). 1 also for names
 * outside oc (another component's). */
static int openclip_ignorable(const char *name, const char *oc, int layers, int keep_proj) {
    if (strncmp(name, oc, strlen(oc))) return 1;
    name += strlen(oc);
    int l = -1;
    if (sscanf(name, "transformer.resblocks.%d.", &l) == 1) return l >= layers;
    return strncmp(name, "token_embedding.", 16) && strcmp(name, "positional_embedding") &&
           strncmp(name, "ln_final.", 9) && (!keep_proj || strcmp(name, "text_projection"));
}

/* Tensors a checkpoint may hold that txt2img never asks for. */
static int ignorable(const sd_checkpoint *ck, sd_component c, const char *name) {
    const int text = c == SD_TEXT || c == SD_TEXT2;
    if (ck->single) {
        const sd_arch *a = &ck->arch;
        static const char *pre[] = {"model.diffusion_model.", "first_stage_model.",
                                    "cond_stage_model.transformer.", ""};
        if (c == SD_TEXT && a->text_openclip)
            return openclip_ignorable(name, "cond_stage_model.model.", a->clip.layers, 0);
        if (c == SD_TEXT2)
            return openclip_ignorable(name, "conditioner.embedders.1.model.", a->clip2.layers,
                                      a->clip2.projection);
        const char *p =
            c == SD_TEXT && a->has_text2 ? "conditioner.embedders.0.transformer." : pre[c];
        if (strncmp(name, p, strlen(p))) return 1; /* another component or EMA etc. */
        name += strlen(p);
        if (c == SD_VAE) return !strncmp(name, "encoder.", 8) || !strncmp(name, "quant_conv.", 11);
        return text && strstr(name, "position_ids") != NULL;
    }
    if (c == SD_VAE) return !strncmp(name, "encoder.", 8) || !strncmp(name, "quant_conv.", 11);
    return text && strstr(name, "position_ids") != NULL;
}

easel_err sd_checkpoint_check_unused(const sd_checkpoint *ck, sd_component c) {
    if ((unsigned)c >= SD_COMPONENTS || !ck->files[c])
        return easel_seterr(EASEL_EINVAL, "%s has no %s", ck->path, sd_component_name(c));
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
