/* diffusers -> single-file (LDM / CompVis / SGM) parameter names for SD1.x,
 * SD2.x and SDXL: the inverse of diffusers' convert_ldm_unet_checkpoint,
 * convert_ldm_vae_checkpoint, convert_ldm_clip_checkpoint and
 * convert_open_clip_checkpoint (tests/test_loader.c checks it against the
 * pairs tools/fixtures_names.py, fixtures_sd2.py and fixtures_sdxl_names.py
 * get from diffusers' own converters). */
#include <stdio.h>
#include <string.h>

#include "loader.h"

typedef struct {
    const char *from, *to;
} name_pair;

static const name_pair unet_fixed[] = {
    {"time_embedding.linear_1.weight", "time_embed.0.weight"},
    {"time_embedding.linear_1.bias", "time_embed.0.bias"},
    {"time_embedding.linear_2.weight", "time_embed.2.weight"},
    {"time_embedding.linear_2.bias", "time_embed.2.bias"},
    {"conv_in.weight", "input_blocks.0.0.weight"},
    {"conv_in.bias", "input_blocks.0.0.bias"},
    {"conv_norm_out.weight", "out.0.weight"},
    {"conv_norm_out.bias", "out.0.bias"},
    {"conv_out.weight", "out.2.weight"},
    {"conv_out.bias", "out.2.bias"},
    /* SDXL's text_time added embedding */
    {"add_embedding.linear_1.weight", "label_emb.0.0.weight"},
    {"add_embedding.linear_1.bias", "label_emb.0.0.bias"},
    {"add_embedding.linear_2.weight", "label_emb.0.2.weight"},
    {"add_embedding.linear_2.bias", "label_emb.0.2.bias"},
};

static const name_pair resnet_inner[] = {
    {"norm1.", "in_layers.0."},          {"conv1.", "in_layers.2."},
    {"norm2.", "out_layers.0."},         {"conv2.", "out_layers.3."},
    {"time_emb_proj.", "emb_layers.1."}, {"conv_shortcut.", "skip_connection."},
};

static const name_pair vae_fixed[] = {
    {"encoder.conv_norm_out.weight", "encoder.norm_out.weight"},
    {"encoder.conv_norm_out.bias", "encoder.norm_out.bias"},
    {"decoder.conv_norm_out.weight", "decoder.norm_out.weight"},
    {"decoder.conv_norm_out.bias", "decoder.norm_out.bias"},
};

static const name_pair vae_attn_inner[] = {
    {"group_norm.", "norm."},   {"to_q.", "q."}, {"to_k.", "k."}, {"to_v.", "v."},
    {"to_out.0.", "proj_out."},
};

static const char *lookup(const name_pair *t, size_t n, const char *name) {
    for (size_t i = 0; i < n; i++)
        if (!strcmp(t[i].from, name)) return t[i].to;
    return NULL;
}

/* rest with its leading component renamed by table t (NULL if none matches). */
static int rename_prefix(const name_pair *t, size_t n, const char *rest, char *out, size_t len) {
    for (size_t i = 0; i < n; i++) {
        size_t k = strlen(t[i].from);
        if (!strncmp(rest, t[i].from, k))
            return snprintf(out, len, "%s%s", t[i].to, rest + k) < (int)len;
    }
    return 0;
}

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

static int unet_resnet(char *out, size_t len, const char *head, const char *rest) {
    char inner[256];
    if (!rename_prefix(resnet_inner, NELEM(resnet_inner), rest, inner, sizeof inner)) return 0;
    return snprintf(out, len, "model.diffusion_model.%s.%s", head, inner) < (int)len;
}

static int unet_map(const unet_config *u, const char *name, char *out, size_t len) {
    const char *fx = lookup(unet_fixed, NELEM(unet_fixed), name);
    if (fx) return snprintf(out, len, "model.diffusion_model.%s", fx) < (int)len;
    int lpb = u->layers_per_block, b = 0, j = 0, n = 0;
    char head[64];
    if (n = 0, sscanf(name, "down_blocks.%d.resnets.%d.%n", &b, &j, &n) == 2 && n) {
        snprintf(head, sizeof head, "input_blocks.%d.0", 1 + b * (lpb + 1) + j);
        return unet_resnet(out, len, head, name + n);
    }
    if (n = 0, sscanf(name, "down_blocks.%d.attentions.%d.%n", &b, &j, &n) == 2 && n)
        return snprintf(out, len, "model.diffusion_model.input_blocks.%d.1.%s",
                        1 + b * (lpb + 1) + j, name + n) < (int)len;
    if (n = 0, sscanf(name, "down_blocks.%d.downsamplers.0.conv.%n", &b, &n) == 1 && n)
        return snprintf(out, len, "model.diffusion_model.input_blocks.%d.0.op.%s",
                        1 + b * (lpb + 1) + lpb, name + n) < (int)len;
    if (n = 0, sscanf(name, "mid_block.resnets.%d.%n", &j, &n) == 1 && n) {
        snprintf(head, sizeof head, "middle_block.%d", 2 * j);
        return unet_resnet(out, len, head, name + n);
    }
    if (!strncmp(name, "mid_block.attentions.0.", 23))
        return snprintf(out, len, "model.diffusion_model.middle_block.1.%s", name + 23) < (int)len;
    if (n = 0, sscanf(name, "up_blocks.%d.resnets.%d.%n", &b, &j, &n) == 2 && n) {
        snprintf(head, sizeof head, "output_blocks.%d.0", b * (lpb + 1) + j);
        return unet_resnet(out, len, head, name + n);
    }
    if (n = 0, sscanf(name, "up_blocks.%d.attentions.%d.%n", &b, &j, &n) == 2 && n)
        return snprintf(out, len, "model.diffusion_model.output_blocks.%d.1.%s", b * (lpb + 1) + j,
                        name + n) < (int)len;
    if (n = 0, sscanf(name, "up_blocks.%d.upsamplers.0.conv.%n", &b, &n) == 1 && n) {
        if (b < 0 || b >= UNET_MAX_LEVELS) return 0;
        return snprintf(out, len, "model.diffusion_model.output_blocks.%d.%d.conv.%s",
                        b * (lpb + 1) + lpb, u->up_attn[b] ? 2 : 1, name + n) < (int)len;
    }
    return 0;
}

/* VAE ResNet inner names are the same but for the shortcut. */
static int vae_resnet(char *out, size_t len, const char *head, const char *rest) {
    if (!strncmp(rest, "conv_shortcut.", 14))
        return snprintf(out, len, "first_stage_model.%s.nin_shortcut.%s", head, rest + 14) <
               (int)len;
    return snprintf(out, len, "first_stage_model.%s.%s", head, rest) < (int)len;
}

static int vae_map(const vae_config *v, const char *name, char *out, size_t len) {
    const char *fx = lookup(vae_fixed, NELEM(vae_fixed), name);
    if (fx) return snprintf(out, len, "first_stage_model.%s", fx) < (int)len;
    char part[16], head[64], inner[128];
    int i = 0, j = 0, n = 0;
    if (n = 0, sscanf(name, "%15[a-z].mid_block.resnets.%d.%n", part, &j, &n) == 2 && n) {
        snprintf(head, sizeof head, "%s.mid.block_%d", part, j + 1);
        return vae_resnet(out, len, head, name + n);
    }
    if (n = 0, sscanf(name, "%15[a-z].mid_block.attentions.0.%n", part, &n) == 1 && n) {
        if (!rename_prefix(vae_attn_inner, NELEM(vae_attn_inner), name + n, inner, sizeof inner))
            return 0;
        return snprintf(out, len, "first_stage_model.%s.mid.attn_1.%s", part, inner) < (int)len;
    }
    if (n = 0, sscanf(name, "encoder.down_blocks.%d.resnets.%d.%n", &i, &j, &n) == 2 && n) {
        snprintf(head, sizeof head, "encoder.down.%d.block.%d", i, j);
        return vae_resnet(out, len, head, name + n);
    }
    if (n = 0, sscanf(name, "encoder.down_blocks.%d.downsamplers.0.conv.%n", &i, &n) == 1 && n)
        return snprintf(out, len, "first_stage_model.encoder.down.%d.downsample.conv.%s", i,
                        name + n) < (int)len;
    if (n = 0, sscanf(name, "decoder.up_blocks.%d.resnets.%d.%n", &i, &j, &n) == 2 && n) {
        snprintf(head, sizeof head, "decoder.up.%d.block.%d", v->levels - 1 - i, j);
        return vae_resnet(out, len, head, name + n);
    }
    if (n = 0, sscanf(name, "decoder.up_blocks.%d.upsamplers.0.conv.%n", &i, &n) == 1 && n)
        return snprintf(out, len, "first_stage_model.decoder.up.%d.upsample.conv.%s",
                        v->levels - 1 - i, name + n) < (int)len;
    /* conv_in, conv_out, quant_conv, post_quant_conv keep their names. */
    static const char *same[] = {"encoder.conv_in.",  "encoder.conv_out.", "decoder.conv_in.",
                                 "decoder.conv_out.", "quant_conv.",       "post_quant_conv."};
    for (size_t k = 0; k < NELEM(same); k++)
        if (!strncmp(name, same[k], strlen(same[k])))
            return snprintf(out, len, "first_stage_model.%s", name) < (int)len;
    return 0;
}

/* transformers' CLIPTextModel -> OpenCLIP (open_clip's text tower, as SD2
 * checkpoints store it under cond_stage_model.model., SDXL's second encoder
 * under conditioner.embedders.1.model.) */
static const name_pair openclip_fixed[] = {
    {"text_model.embeddings.token_embedding.weight", "token_embedding.weight"},
    {"text_model.embeddings.position_embedding.weight", "positional_embedding"},
    {"text_model.final_layer_norm.weight", "ln_final.weight"},
    {"text_model.final_layer_norm.bias", "ln_final.bias"},
};
static const name_pair openclip_layer[] = {
    {"layer_norm1.", "ln_1."},
    {"layer_norm2.", "ln_2."},
    {"mlp.fc1.", "mlp.c_fc."},
    {"mlp.fc2.", "mlp.c_proj."},
    {"self_attn.out_proj.", "attn.out_proj."},
};

static int openclip_map(const char *pre, const char *name, char *out, size_t len, int *part) {
    const char *fx = lookup(openclip_fixed, NELEM(openclip_fixed), name);
    if (fx) return snprintf(out, len, "%s%s", pre, fx) < (int)len;
    if (!strcmp(name, "text_projection.weight")) { /* OpenCLIP applies it as x @ P */
        *part = LDM_PART_T;
        return snprintf(out, len, "%stext_projection", pre) < (int)len;
    }
    int l = 0, n = 0;
    char inner[128];
    if (sscanf(name, "text_model.encoder.layers.%d.%n", &l, &n) != 1 || !n) return 0;
    const char *rest = name + n;
    static const char *qkv[] = {"self_attn.q_proj.", "self_attn.k_proj.", "self_attn.v_proj."};
    for (int k = 0; k < 3; k++)
        if (!strncmp(rest, qkv[k], strlen(qkv[k]))) {
            *part = k;
            return snprintf(out, len, "%stransformer.resblocks.%d.attn.in_proj_%s", pre, l,
                            rest + strlen(qkv[k])) < (int)len;
        }
    if (!rename_prefix(openclip_layer, NELEM(openclip_layer), rest, inner, sizeof inner)) return 0;
    return snprintf(out, len, "%stransformer.resblocks.%d.%s", pre, l, inner) < (int)len;
}

easel_err ldm_name(const sd_arch *a, sd_component c, const char *name, char *out, size_t len) {
    int part = -1;
    easel_err e = ldm_name_part(a, c, name, out, len, &part);
    if (!e && part >= 0) /* a fused or transposed tensor has no name of its own */
        return easel_seterr(EASEL_ENOTFOUND, "%s: '%s' is %s %s", sd_component_name(c), name,
                            part == LDM_PART_T ? "the transpose of" : "a third of", out);
    return e;
}

easel_err ldm_name_part(const sd_arch *a, sd_component c, const char *name, char *out, size_t len,
                        int *part) {
    int ok = 0, dummy;
    if (!part) part = &dummy;
    *part = -1;
    if (c == SD_TEXT && a->text_openclip)
        ok = openclip_map("cond_stage_model.model.", name, out, len, part);
    else if (c == SD_TEXT2)
        ok = a->has_text2 && openclip_map("conditioner.embedders.1.model.", name, out, len, part);
    else if (c == SD_TEXT && a->has_text2)
        ok = snprintf(out, len, "conditioner.embedders.0.transformer.%s", name) < (int)len;
    else if (c == SD_UNET)
        ok = unet_map(&a->unet, name, out, len);
    else if (c == SD_VAE)
        ok = vae_map(&a->vae, name, out, len);
    else if (c == SD_TEXT)
        ok = snprintf(out, len, "cond_stage_model.transformer.%s", name) < (int)len;
    if (!ok)
        return easel_seterr(EASEL_ENOTFOUND, "%s: '%s' has no single-file (LDM) name",
                            sd_component_name(c), name);
    return EASEL_OK;
}
