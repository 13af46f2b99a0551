/* txt2img as diffusers' StableDiffusionPipeline.__call__ runs it (and
 * StableDiffusionXLPipeline's: two text encoders' penultimate states side by
 * side, the pooled projection and the size/crop time ids as the UNet's added
 * conditioning): prompt and negative prompt through CLIP, seeded NCHW noise,
 * a sampler loop with classifier-free guidance (batch [uncond, cond],
 * skipped when guidance <= 1), VAE decode, (x/2+0.5).clamp(0,1)·255 rounded.
 * Weights are shared; each worker owns a backend and an arena that is reset
 * per job.
 *
 * Per evaluation the device sees one upload (the scaled latents, the
 * timesteps and the guidance embedding, f32, in one buffer), the UNet
 * through backend_run_graph (a CUDA graph replayed from the third evaluation
 * of a shape; the timesteps come from the device buffer, so the graph needs
 * nothing from the host; SDXL's added embedding is made once per job in the
 * arena, before the first step), the CFG combine and one download of the
 * guided noise. The sampler arithmetic stays on the host. The VAE decodes in
 * fp32 when its config says force_upcast (diffusers' default), through the
 * backend's fp32 view where it has one (CUDA stores fp16). */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "../engine/fault.h"
#include "../engine/image_codecs.h"
#include "../engine/log.h"
#include "../engine/rng.h"
#include "denoiser.h"
#include "loader.h"
#include "lora.h"
#include "pipeline.h"
#include "sampler.h"
#include "taesd.h"
#include "tokenizer.h"

#define SEQ 77

struct sd_model {
    backend *be;
    sd_arch arch; /* arch.sched: the schedule every request's sampler is built from */
    sd_prediction pred;
    sampler_kind default_sampler;
    unet_model *unet;
    vae_model *vae;
    clip_model *clip, *clip2; /* clip2, tok2: SDXL's second encoder */
    tokenizer *tok, *tok2;
    size_t weight_bytes;
    size_t bytes[SD_COMPONENTS];
    int random_weights; /* made by make-model */
    dtype vae_dtype;    /* what the VAE's weights and activations are stored in */
    taesd_model *taesd; /* NULL: none (no previews, no "decoder": "taesd") */
    lora_index *lix;    /* every UNet / text-encoder tensor by name, for LoRA merges */
    lora_lib *loras;    /* where requests' LoRA names are looked up (not owned) */
};

/* Steps and guidance each family is used with (the model cards'): */
static const struct {
    const char *family;
    int steps;
    float guidance;
} family_defaults[] = {
    {"sd15", 20, 7.5f},      {"sd2", 20, 7.5f},          {"sd2-v", 20, 7.5f}, {"sd-turbo", 1, 0.0f},
    {"lcm", 4, 8.0f},        {"sdxl", 20, 5.0f}, /* guidance: StableDiffusionXLPipeline's default */
    {"sdxl-turbo", 1, 0.0f}, {"sdxl-lightning", 4, 0.0f}};

static void family_default(const char *family, int *steps, float *guidance) {
    *steps = 20, *guidance = 7.5f;
    for (size_t i = 0; i < sizeof family_defaults / sizeof *family_defaults; i++)
        if (!strcmp(family, family_defaults[i].family))
            *steps = family_defaults[i].steps, *guidance = family_defaults[i].guidance;
}

struct sd_worker {
    sd_model *m;
    backend *be;
    arena *ar;
    double preview_ms_per_mpx; /* this worker's measured preview cost (0: none yet) */
    /* LoRA: the merged sets (lora_view payloads), the model as the current
     * job sees it (base networks replaced by a set's), what is bound now */
    lora_cache *lcache;
    sd_model view;
    const void *bound;
    uint64_t nets_id, next_id; /* 1: the model's networks; a set's id while it is bound */
};

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* ---- parameters ---- */

const char *gen_decoder_name(gen_decoder d) {
    return d == GEN_DECODER_TAESD ? "taesd" : d == GEN_DECODER_VAE ? "vae" : "?";
}

int gen_decoder_parse(const char *s) {
    if (!s) return -1;
    if (!strcmp(s, "vae")) return GEN_DECODER_VAE;
    if (!strcmp(s, "taesd")) return GEN_DECODER_TAESD;
    return -1;
}

void gen_hooks_default(gen_hooks *h) {
    memset(h, 0, sizeof *h);
    h->preview_interval_ms = GEN_PREVIEW_INTERVAL_MS;
    h->preview_budget = GEN_PREVIEW_BUDGET;
    h->preview_max_side = GEN_PREVIEW_MAX_SIDE;
}

void gen_params_default(gen_params *p) {
    memset(p, 0, sizeof *p);
    p->prompt = "";
    p->width = p->height = GEN_DEFAULT;
    p->steps = GEN_DEFAULT;
    p->guidance = GEN_GUIDANCE_DEFAULT;
    p->sampler = SAMPLER_DEFAULT;
    p->schedule = SCHEDULE_DEFAULT;
    p->eta = 0.0f;
    p->clip_skip = 1;
    p->strength = GEN_STRENGTH_DEFAULT;
}

static easel_err bad(const char **field, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static easel_err bad(const char **field, const char *name, const char *fmt, ...) {
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (field) *field = name;
    return easel_seterr(EASEL_EINVAL, "%s %s", name, msg);
}

easel_err gen_params_validate(const gen_params *p, const char **field) {
    if (field) *field = NULL;
    if (!p->prompt) return bad(field, "prompt", "is required");
    if (strlen(p->prompt) > GEN_MAX_PROMPT_BYTES)
        return bad(field, "prompt", "must be at most %d bytes", GEN_MAX_PROMPT_BYTES);
    if (p->negative_prompt && strlen(p->negative_prompt) > GEN_MAX_PROMPT_BYTES)
        return bad(field, "negative_prompt", "must be at most %d bytes", GEN_MAX_PROMPT_BYTES);
    if (p->prompt_2 && strlen(p->prompt_2) > GEN_MAX_PROMPT_BYTES)
        return bad(field, "prompt_2", "must be at most %d bytes", GEN_MAX_PROMPT_BYTES);
    if (p->negative_prompt_2 && strlen(p->negative_prompt_2) > GEN_MAX_PROMPT_BYTES)
        return bad(field, "negative_prompt_2", "must be at most %d bytes", GEN_MAX_PROMPT_BYTES);
    if (p->width != GEN_DEFAULT &&
        (p->width < GEN_MIN_SIZE || p->width > GEN_MAX_SIZE || p->width % 8))
        return bad(field, "width", "must be a multiple of 8 in [%d, %d] (got %d)", GEN_MIN_SIZE,
                   GEN_MAX_SIZE, p->width);
    if (p->height != GEN_DEFAULT &&
        (p->height < GEN_MIN_SIZE || p->height > GEN_MAX_SIZE || p->height % 8))
        return bad(field, "height", "must be a multiple of 8 in [%d, %d] (got %d)", GEN_MIN_SIZE,
                   GEN_MAX_SIZE, p->height);
    if (p->steps != GEN_DEFAULT && (p->steps < 1 || p->steps > GEN_MAX_STEPS))
        return bad(field, "steps", "must be in [1, %d] (got %d)", GEN_MAX_STEPS, p->steps);
    if (p->guidance != GEN_GUIDANCE_DEFAULT &&
        !(p->guidance >= 0.0f && p->guidance <= GEN_MAX_GUIDANCE))
        return bad(field, "guidance_scale", "must be in [0, %g] (got %g)", (double)GEN_MAX_GUIDANCE,
                   (double)p->guidance);
    if (p->sampler != SAMPLER_DEFAULT && (unsigned)p->sampler >= SAMPLER_COUNT)
        return bad(field, "sampler", "must be one of %s", sampler_choices());
    if ((unsigned)p->schedule >= SCHEDULE_COUNT)
        return bad(field, "schedule", "must be one of %s", schedule_choices());
    if (!(p->eta >= 0.0f && p->eta <= 1.0f))
        return bad(field, "eta", "must be in [0, 1] (got %g)", (double)p->eta);
    if (p->clip_skip < 1 || p->clip_skip > 12)
        return bad(field, "clip_skip", "must be in [1, 12] (got %d)", p->clip_skip);
    if ((unsigned)p->decoder >= GEN_DECODER_COUNT)
        return bad(field, "decoder", "must be one of vae, taesd");
    if (p->strength != GEN_STRENGTH_DEFAULT && !(p->strength >= 0.0 && p->strength <= 1.0))
        return bad(field, "strength", "must be in [0, 1] (got %g)", p->strength);
    if (p->strength != GEN_STRENGTH_DEFAULT && !p->init_image)
        return bad(field, "strength", "is for img2img and inpainting: give an init_image");
    if (p->mask && !p->init_image)
        return bad(field, "mask", "needs an init_image (the picture the mask is over)");
    if (p->mask_blur < 0 || p->mask_blur > GEN_MAX_MASK_BLUR)
        return bad(field, "mask_blur", "must be in [0, %d] pixels (got %d)", GEN_MAX_MASK_BLUR,
                   p->mask_blur);
    if ((p->mask_blur || p->keep_unmasked) && !p->mask)
        return bad(field, p->mask_blur ? "mask_blur" : "keep_unmasked", "needs a mask");
    if (p->n_loras < 0 || p->n_loras > GEN_MAX_LORAS)
        return bad(field, "loras", "must list at most %d LoRAs (got %d)", GEN_MAX_LORAS,
                   p->n_loras);
    for (int i = 0; i < p->n_loras; i++) {
        const gen_lora *l = &p->loras[i];
        if (!gen_lora_name_ok(l->name))
            return bad(field, "loras",
                       "'%.*s' is not a LoRA name (a file name in the LoRA "
                       "directory: no '..', '\\' or absolute paths)",
                       GEN_LORA_NAME_MAX, l->name);
        if (!(fabsf(l->weight) <= GEN_LORA_MAX_WEIGHT))
            return bad(field, "loras", "'%s': weight must be in [-%g, %g] (got %g)", l->name,
                       (double)GEN_LORA_MAX_WEIGHT, (double)GEN_LORA_MAX_WEIGHT, (double)l->weight);
        for (int k = 0; k < i; k++)
            if (!strcmp(p->loras[k].name, l->name))
                return bad(field, "loras", "'%s' is listed twice", l->name);
    }
    return EASEL_OK;
}

/* ---- model ---- */

/* The backend the VAE runs on: be's fp32 view when force_upcast asks for fp32
 * and be stores less; be itself where it has no such view (its own dtype
 * then, e.g. bf16 on the CPU, which has fp32's range). */
static backend *vae_backend(backend *be, const vae_config *c) {
    backend *v = c->force_upcast ? backend_with_dtype(be, DT_F32) : be;
    return v ? v : be;
}

static easel_err load_networks(sd_model *m, sd_checkpoint *ck) {
    wstore ws, rec; /* rec: ws recording into the LoRA index */
    easel_err e;
    const sd_arch *a = &m->arch;
    if ((e = lora_index_create(a, &m->lix))) return e;
    if ((e = sd_checkpoint_store(ck, SD_UNET, m->be, &ws)) ||
        (lora_index_wrap(m->lix, SD_UNET, &ws, &rec), 0) ||
        (e = unet_load(&a->unet, &rec, &m->unet)) || (e = sd_checkpoint_check_unused(ck, SD_UNET)))
        return e;
    m->bytes[SD_UNET] = ws.bytes_loaded;
    backend *vbe = vae_backend(m->be, &a->vae);
    m->vae_dtype = vbe->act_dtype;
    if ((e = sd_checkpoint_store(ck, SD_VAE, vbe, &ws)) || (e = vae_load(&a->vae, &ws, &m->vae)) ||
        (e = sd_checkpoint_check_unused(ck, SD_VAE)))
        return e;
    m->bytes[SD_VAE] = ws.bytes_loaded;
    if ((e = sd_checkpoint_store(ck, SD_TEXT, m->be, &ws)) ||
        (lora_index_wrap(m->lix, SD_TEXT, &ws, &rec), 0) ||
        (e = clip_load(&a->clip, &rec, &m->clip)) || (e = sd_checkpoint_check_unused(ck, SD_TEXT)))
        return e;
    m->bytes[SD_TEXT] = ws.bytes_loaded;
    if (a->has_text2) {
        if ((e = sd_checkpoint_store(ck, SD_TEXT2, m->be, &ws)) ||
            (lora_index_wrap(m->lix, SD_TEXT2, &ws, &rec), 0) ||
            (e = clip_load(&a->clip2, &rec, &m->clip2)) ||
            (e = sd_checkpoint_check_unused(ck, SD_TEXT2)))
            return easel_wraperr(e, "text_encoder_2");
        m->bytes[SD_TEXT2] = ws.bytes_loaded;
    }
    if ((e = lora_index_finish(m->lix))) return e;
    m->weight_bytes = 0;
    for (int c = 0; c < SD_COMPONENTS; c++)
        m->weight_bytes += m->bytes[c];
    return EASEL_OK;
}

/* The networks fit together: the UNet's cross-attention width is the text
 * encoders' (side by side for SDXL), its text_time input the pooled width. */
static easel_err check_fit(const sd_arch *a) {
    int ctx = a->clip.hidden + (a->has_text2 ? a->clip2.hidden : 0);
    if (a->unet.cross_attention_dim != ctx)
        return easel_seterr(EASEL_EFORMAT,
                            "the unet's cross_attention_dim %d is not the text encoder%s width %d",
                            a->unet.cross_attention_dim, a->has_text2 ? "s'" : "'s", ctx);
    if (a->unet.add_text_time != a->has_text2)
        return easel_seterr(EASEL_EUNSUPPORTED,
                            a->has_text2 ? "two text encoders but the unet has no text_time "
                                           "added embedding"
                                         : "the unet wants text_time (SDXL) but there is no "
                                           "text_encoder_2");
    if (a->has_text2 && unet_text_embeds_dim(&a->unet) != clip_pooled_dim(&a->clip2))
        return easel_seterr(EASEL_EFORMAT,
                            "the unet's text_time takes %d pooled values, text_encoder_2 gives %d",
                            unet_text_embeds_dim(&a->unet), clip_pooled_dim(&a->clip2));
    return EASEL_OK;
}

void sd_load_opts_default(sd_load_opts *o) {
    memset(o, 0, sizeof *o);
    o->prediction = -1;
    o->sampler = SAMPLER_DEFAULT;
}

/* The load options over what the checkpoint says: family, schedule,
 * prediction type, default sampler. */
static easel_err apply_opts(sd_model *m, const sd_load_opts *o) {
    sd_arch *a = &m->arch;
    easel_err e;
    if (o->family) {
        sched_config fc;
        if ((e = sched_config_family(&fc, o->family))) return easel_wraperr(e, "family");
        snprintf(a->family, sizeof a->family, "%s", o->family);
        if (!a->sched_stated) a->sched = fc, a->pred_stated = 0;
    }
    if (o->scheduler_config) {
        if ((e = sd_read_scheduler(o->scheduler_config, &a->sched))) return e;
        a->sched_stated = 1;
        a->pred_stated = (a->sched.set & (1u << SF_PREDICTION)) != 0;
    }
    int has = (a->sched.set & (1u << SF_PREDICTION)) != 0;
    if (o->prediction >= 0) {
        if ((unsigned)o->prediction >= PRED_COUNT)
            return easel_seterr(EASEL_EINVAL, "prediction_type: unknown %d", o->prediction);
        if (a->pred_stated && has && a->sched.prediction_type != (sd_prediction)o->prediction)
            return easel_seterr(EASEL_EINVAL,
                                "prediction_type %s was asked for, but the model says it is %s "
                                "(its scheduler config); refused rather than render noise",
                                prediction_name(o->prediction),
                                prediction_name(a->sched.prediction_type));
        a->sched.prediction_type = (sd_prediction)o->prediction;
        a->sched.set |= 1u << SF_PREDICTION;
        has = 1;
    }
    m->pred = has ? a->sched.prediction_type : PRED_EPSILON;
    if (o->family && !strcmp(o->family, "sdxl-lightning") && a->sched_stated) {
        /* the card: EulerDiscreteScheduler.from_config(config, timestep_spacing="trailing") */
        snprintf(a->sched.class_name, sizeof a->sched.class_name, "EulerDiscreteScheduler");
        a->sched.timestep_spacing = SPACING_TRAILING;
        a->sched.set |= 1u << SF_SPACING;
    }
    if (o->sampler != SAMPLER_DEFAULT) {
        if ((unsigned)o->sampler >= SAMPLER_COUNT)
            return easel_seterr(EASEL_EINVAL, "sampler: must be one of %s", sampler_choices());
        m->default_sampler = o->sampler;
        return EASEL_OK;
    }
    int k = sched_class_sampler(a->sched.class_name);
    if (k < 0)
        return easel_seterr(EASEL_EUNSUPPORTED,
                            "scheduler class '%s' is not implemented (easel has %s); name the "
                            "default sampler in the load options",
                            a->sched.class_name[0] ? a->sched.class_name : "(no _class_name)",
                            sampler_choices());
    m->default_sampler = (sampler_kind)k;
    return EASEL_OK;
}

/* The TAESD: o->taesd, else the folder's taesd/ when it has one. It must
 * fit the VAE's latents (channels, factor). */
static easel_err load_taesd(sd_model *m, const char *path, const sd_checkpoint *ck,
                            const char *want) {
    char dir[4200];
    const char *p = want;
    if (!p) {
        struct stat st;
        snprintf(dir, sizeof dir, "%s/taesd", path);
        if (sd_checkpoint_single_file(ck) || stat(dir, &st) || !S_ISDIR(st.st_mode))
            return EASEL_OK;
        p = dir;
    }
    easel_err e = taesd_load(p, m->be, &m->taesd);
    if (e) return e;
    const taesd_config *c = taesd_get_config(m->taesd);
    const vae_config *v = &m->arch.vae;
    if (c->latent_channels != v->latent_channels || c->out_channels != v->out_channels ||
        taesd_config_factor(c) != 1 << (v->levels - 1))
        return easel_seterr(EASEL_EUNSUPPORTED,
                            "taesd %s: %d latent channels, factor %d, but the model's VAE has %d "
                            "and %d: a TAESD for other latents (taesdxl for SDXL, taesd for "
                            "SD1.x/SD2.x)",
                            p, c->latent_channels, taesd_config_factor(c), v->latent_channels,
                            1 << (v->levels - 1));
    return EASEL_OK;
}

int sd_model_has_taesd(const sd_model *m) {
    return m && m->taesd != NULL;
}

easel_err sd_model_load(const char *path, backend *be, sd_model **out) {
    sd_load_opts o;
    sd_load_opts_default(&o);
    return sd_model_load_ex(path, be, &o, out);
}

easel_err sd_model_load_ex(const char *path, backend *be, const sd_load_opts *o, sd_model **out) {
    *out = NULL;
    sd_checkpoint *ck = NULL;
    easel_err e = sd_checkpoint_open(path, &ck);
    if (e) return e;
    sd_model *m = calloc(1, sizeof *m);
    if (!m) {
        sd_checkpoint_close(ck);
        return easel_seterr(EASEL_ENOMEM, "out of memory");
    }
    m->be = be;
    m->arch = *sd_checkpoint_arch(ck);
    m->random_weights = sd_checkpoint_random_weights(ck);
    e = apply_opts(m, o);
    if (!e) e = check_fit(&m->arch);
    if (!e) e = load_networks(m, ck);
    if (!e) {
        const char *dir = sd_checkpoint_tokenizer_dir(ck);
        e = dir ? tokenizer_load_dir(dir, &m->tok) : tokenizer_create_default(&m->tok);
        /* a single-file OpenCLIP (SD2.x) model pads with "!" as its tokenizer does */
        if (!e && !dir && !m->arch.clip.quick_gelu) e = tokenizer_set_pad(m->tok, 0);
    }
    if (!e && m->arch.has_text2) { /* SDXL's tokenizer_2 pads with OpenCLIP's "!" */
        const char *dir = sd_checkpoint_tokenizer2_dir(ck);
        e = dir ? tokenizer_load_dir(dir, &m->tok2) : tokenizer_create_default(&m->tok2);
        if (!e && !dir) e = tokenizer_set_pad(m->tok2, 0);
    }
    if (!e) e = load_taesd(m, path, ck, o->taesd);
    sd_checkpoint_close(ck);
    if (e) {
        sd_model_free(m);
        return easel_wraperr(e, "loading model '%s'", path);
    }
    *out = m;
    return EASEL_OK;
}

void sd_model_free(sd_model *m) {
    if (!m) return;
    unet_free(m->unet);
    vae_free(m->vae);
    clip_free(m->clip);
    clip_free(m->clip2);
    tokenizer_free(m->tok);
    tokenizer_free(m->tok2);
    taesd_free(m->taesd);
    lora_index_free(m->lix);
    free(m);
}

void sd_model_set_loras(sd_model *m, lora_lib *lib) {
    m->loras = lib;
}
lora_lib *sd_model_loras(const sd_model *m) {
    return m->loras;
}
const lora_index *sd_model_lora_index(const sd_model *m) {
    return m->lix;
}

const char *sd_model_arch(const sd_model *m) {
    return m->arch.arch;
}
size_t sd_model_weight_bytes(const sd_model *m) {
    return m->weight_bytes;
}
dtype sd_model_vae_dtype(const sd_model *m) {
    return m->vae_dtype;
}

static int vae_factor(const sd_model *m) {
    return 1 << (m->arch.vae.levels - 1);
}

void sd_model_get_info(const sd_model *m, sd_model_info *out) {
    memset(out, 0, sizeof *out);
    const sd_arch *a = &m->arch;
    out->arch = a->arch;
    out->family = a->family;
    out->prediction_type = prediction_name(m->pred);
    out->scheduler_class = a->sched.class_name;
    out->default_sampler = m->default_sampler;
    out->default_sampler_name = sampler_name(m->default_sampler);
    family_default(a->family, &out->default_steps, &out->default_guidance);
    out->guidance_embedded = a->unet.time_cond_proj_dim > 0;
    out->default_width = out->default_height = a->unet.sample_size * vae_factor(m);
    size_t es = dtype_size(m->be->act_dtype);
    out->params_unet = (int64_t)(m->bytes[SD_UNET] / es);
    out->params_vae = (int64_t)(m->bytes[SD_VAE] / es);
    out->params_text = (int64_t)((m->bytes[SD_TEXT] + m->bytes[SD_TEXT2]) / es);
    out->weight_bytes = m->weight_bytes;
    out->dtype = dtype_name(m->be->weight_dtype); /* the matrices; norms stay act_dtype */
    out->random_weights = m->random_weights;
    out->text_encoders = a->has_text2 ? 2 : 1;
    out->force_zeros = a->force_zeros;
    out->vae_force_upcast = a->vae.force_upcast;
    out->taesd = m->taesd != NULL;
    out->params_taesd = m->taesd ? taesd_params(m->taesd) : 0;
    out->taesd_path = m->taesd ? taesd_path(m->taesd) : "";
    out->vae_encoder = vae_has_encoder(m->vae);
    out->inpaint_unet = a->unet.in_channels == 2 * a->vae.latent_channels + 1;
}

static sampler_opts sampler_opts_for(const sd_model *m, const gen_params *p) {
    sampler_opts o = {.kind = p->sampler,
                      .config = &m->arch.sched,
                      .prediction = (int)m->pred,
                      .schedule = p->schedule,
                      .steps = p->steps,
                      .eta = p->eta,
                      .pipeline_fixups = 1};
    return o;
}

/* Every LoRA of a request exists in the model's directory and fits its
 * weights (the file's header against the model's index). */
static easel_err check_loras(const sd_model *m, const gen_params *p, const char **field) {
    for (int i = 0; i < p->n_loras; i++) {
        easel_err e = m->loras ? lora_lib_check(m->loras, p->loras[i].name, m->lix)
                               : easel_seterr(EASEL_EINVAL, "this server has no LoRA directory");
        if (e) {
            char msg[768];
            snprintf(msg, sizeof msg, "%s", easel_errmsg());
            if (field) *field = "loras";
            return easel_seterr(EASEL_EINVAL, "loras: %s", msg);
        }
    }
    return EASEL_OK;
}

easel_err sd_params_resolve(const sd_model *m, const gen_params *in, gen_params *out,
                            const char **field) {
    easel_err e = gen_params_validate(in, field);
    if (e) return e;
    gen_params p = *in;
    const sd_arch *a = &m->arch;
    int steps;
    float guidance;
    family_default(a->family, &steps, &guidance);
    int f = vae_factor(m), size = a->unet.sample_size * f;
    if (p.sampler == SAMPLER_DEFAULT) p.sampler = m->default_sampler;
    if (p.steps == GEN_DEFAULT) p.steps = steps;
    if (p.guidance == GEN_GUIDANCE_DEFAULT) p.guidance = guidance;
    if (p.width == GEN_DEFAULT) p.width = size < GEN_MIN_SIZE ? GEN_MIN_SIZE : size;
    if (p.height == GEN_DEFAULT) p.height = size < GEN_MIN_SIZE ? GEN_MIN_SIZE : size;
    if (p.width % f || p.height % f)
        return bad(field, p.width % f ? "width" : "height",
                   "must be a multiple of %d for this model (got %dx%d)", f, p.width, p.height);
    if (!a->has_text2 && (p.prompt_2 || p.negative_prompt_2))
        return bad(field, p.prompt_2 ? "prompt_2" : "negative_prompt_2",
                   "is for models with a second text encoder (SDXL); this %s model has one",
                   a->family);
    /* SDXL reads hidden_states[-(clip_skip + 1)] of each encoder (down to the embeddings) */
    int max_skip =
        a->has_text2 && a->clip2.layers < a->clip.layers ? a->clip2.layers : a->clip.layers;
    if (p.clip_skip > max_skip)
        return bad(field, "clip_skip", "must be in [1, %d] for this model", max_skip);
    if (p.decoder == GEN_DECODER_TAESD && !m->taesd)
        return bad(field, "decoder",
                   "taesd: this model has no TAESD (put a diffusers AutoencoderTiny or "
                   "taesd_decoder.safetensors in its taesd/ folder, or give --taesd PATH)");
    int inpaint_unet = a->unet.in_channels == 2 * a->vae.latent_channels + 1;
    if (inpaint_unet && !p.mask)
        return bad(field, p.init_image ? "mask" : "init_image",
                   "is required: this is an inpainting model (a %d-channel UNet); give "
                   "init_image and mask",
                   a->unet.in_channels);
    if (p.init_image && a->has_text2)
        return bad(field, "init_image",
                   "img2img and inpainting are implemented for SD1.x/SD2.x models; this is a "
                   "%s model",
                   a->family);
    if (p.init_image && !vae_has_encoder(m->vae))
        return bad(field, "init_image",
                   "needs the VAE's encoder, and this checkpoint's VAE has only a decoder");
    if (p.init_image && p.strength == GEN_STRENGTH_DEFAULT) p.strength = p.mask ? 1.0 : 0.8;
    if ((e = check_loras(m, &p, field))) return e;
    sampler_opts so = sampler_opts_for(m, &p);
    sampler *s = NULL;
    if ((e = sampler_create_ex(&so, &s))) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", easel_errmsg());
        const char *fld = p.schedule != SCHEDULE_DEFAULT && strstr(msg, "schedule") ? "schedule"
                          : strstr(msg, "steps")                                    ? "steps"
                                                                                    : "sampler";
        if (field) *field = fld;
        return easel_seterr(e, "%s", msg);
    }
    sampler_free(s);
    *out = p;
    return EASEL_OK;
}

easel_err sd_worker_create(sd_model *m, backend *be, sd_worker **out) {
    *out = NULL;
    sd_worker *w = calloc(1, sizeof *w);
    if (!w) return easel_seterr(EASEL_ENOMEM, "out of memory");
    w->m = m;
    w->be = be;
    if (!(w->ar = arena_create(be, 0)) || !(w->lcache = lora_cache_create(SD_LORA_CACHE_DEFAULT))) {
        arena_free(w->ar);
        free(w);
        return easel_wraperr(EASEL_ENOMEM, "worker arena");
    }
    w->nets_id = 1, w->next_id = 2;
    *out = w;
    return EASEL_OK;
}

void sd_worker_free(sd_worker *w) {
    if (!w) return;
    lora_cache_free(w->lcache);
    arena_free(w->ar);
    free(w);
}

void sd_worker_set_lora_cache(sd_worker *w, size_t cap_bytes) {
    lora_cache *c = lora_cache_create(cap_bytes);
    if (!c) return; /* keeps the old cache */
    lora_cache_free(w->lcache);
    w->lcache = c;
    w->bound = NULL, w->nets_id = 1;
}

size_t sd_worker_lora_bytes(const sd_worker *w, int *sets) {
    return lora_cache_bytes(w->lcache, sets);
}

uint64_t sd_worker_nets_id(const sd_worker *w) {
    return w->nets_id;
}

/* ---- LoRA: a job's merged weights ---- */

/* One cached (LoRA set, weights): the merged tensors and the networks built
 * over them (the model's other tensors borrowed). */
typedef struct {
    lora_set *set;
    unet_model *unet;
    clip_model *clip, *clip2; /* NULL: the set leaves that network as it is */
    uint64_t id;              /* unique in the worker, kept while cached (sd_worker_nets_id) */
} lora_view;

static void lora_view_free(void *p) {
    lora_view *v = p;
    if (!v) return;
    unet_free(v->unet);
    clip_free(v->clip);
    clip_free(v->clip2);
    lora_set_free(v->set);
    free(v);
}

/* Merges uses on the worker's backend and builds the networks they touch. */
static easel_err lora_view_build(sd_worker *w, const lora_use *uses, int n, lora_view **out) {
    sd_model *m = w->m;
    lora_view *v = calloc(1, sizeof *v);
    if (!v) return easel_seterr(EASEL_ENOMEM, "out of memory");
    wstore ws;
    easel_err e = lora_set_build(m->lix, uses, n, w->be, &v->set);
    if (!e && lora_set_count(v->set, LORA_UNET)) {
        lora_set_store(v->set, SD_UNET, &ws);
        e = unet_load(&m->arch.unet, &ws, &v->unet);
    }
    if (!e && lora_set_count(v->set, LORA_TEXT)) {
        lora_set_store(v->set, SD_TEXT, &ws);
        e = clip_load(&m->arch.clip, &ws, &v->clip);
    }
    if (!e && lora_set_count(v->set, LORA_TEXT2)) {
        lora_set_store(v->set, SD_TEXT2, &ws);
        e = clip_load(&m->arch.clip2, &ws, &v->clip2);
    }
    if (e) {
        lora_view_free(v);
        return e;
    }
    v->id = w->next_id++;
    *out = v;
    return EASEL_OK;
}

/* The cache key of the job's LoRAs (weight 0 skipped), each file's identity
 * in it so a replaced file is merged anew; the files' paths into paths. */
static easel_err lora_key(sd_worker *w, const gen_params *p, char *key, size_t klen,
                          char (*paths)[4096], int *n) {
    size_t o = 0;
    *n = 0;
    key[0] = 0;
    for (int i = 0; i < p->n_loras; i++) {
        if (p->loras[i].weight == 0.0f) continue;
        if (!w->m->loras) return easel_seterr(EASEL_EINVAL, "this server has no LoRA directory");
        char stamp[128];
        easel_err e = lora_lib_find(w->m->loras, p->loras[i].name, paths[*n], sizeof paths[*n],
                                    stamp, sizeof stamp);
        if (e) return e;
        int k = snprintf(key + o, klen - o, "%s\x1f%s\x1f%a\x1e", p->loras[i].name, stamp,
                         (double)p->loras[i].weight);
        if (k < 0 || (size_t)k >= klen - o) return easel_seterr(EASEL_EINTERNAL, "lora key");
        o += (size_t)k;
        (*n)++;
    }
    return EASEL_OK;
}

/* Binds the job's LoRAs: w->m becomes the worker's view of the model with
 * the merged networks (from the cache, or merged now), or stays the model. */
static easel_err bind_loras(sd_worker *w, const gen_params *p, gen_timings *tm) {
    char key[GEN_MAX_LORAS * (GEN_LORA_NAME_MAX + 180)];
    char paths[GEN_MAX_LORAS][4096];
    int n;
    double t0 = now_ms();
    easel_err e = lora_key(w, p, key, sizeof key, paths, &n);
    if (e) return easel_wraperr(e, "loras");
    lora_view *v = n ? lora_cache_get(w->lcache, key) : NULL;
    if (n && v) tm->lora_cached = 1;
    if (n && !v) {
        lora_file *files[GEN_MAX_LORAS] = {0};
        lora_use uses[GEN_MAX_LORAS];
        int k = 0;
        for (int i = 0; i < p->n_loras && !e; i++) {
            if (p->loras[i].weight == 0.0f) continue;
            e = lora_lib_open(w->m->loras, paths[k], 1, &files[k]);
            uses[k] = (lora_use){p->loras[i].name, files[k], p->loras[i].weight};
            k++;
        }
        size_t need = 0;
        if (!e) e = lora_set_size(w->m->lix, uses, n, &need);
        if (!e) e = lora_cache_reserve(w->lcache, need, NULL);
        if (!e) w->bound = NULL; /* the reserve may have evicted it */
        if (!e) e = lora_view_build(w, uses, n, &v);
        for (int i = 0; i < k; i++)
            lora_close(files[i]);
        if (!e) e = lora_cache_put(w->lcache, key, v, lora_set_bytes(v->set), lora_view_free);
        if (e) return easel_wraperr(e, "loras");
    }
    if (n) tm->lora_ms = now_ms() - t0;
    w->bound = v, w->nets_id = v ? v->id : 1;
    if (!v) return EASEL_OK;
    w->view = *w->m;
    if (v->unet) w->view.unet = v->unet;
    if (v->clip) w->view.clip = v->clip;
    if (v->clip2) w->view.clip2 = v->clip2;
    w->m = &w->view;
    return EASEL_OK;
}

/* ---- one job ---- */

typedef struct {
    sd_worker *w;
    const gen_params *p; /* resolved (sd_params_resolve) */
    gen_params rp;
    float *tcond; /* the guidance embedding [batch, time_cond_proj_dim], or NULL */
    int cfg, batch, lh, lw, lc, ncond;
    int64_t n;              /* latent elements (one sample) */
    tensor ctx, x_t, eps_t; /* [B,77,D], [B,h,w,c], [B,h,w,c] in the arena */
    tensor aug;             /* SDXL: [B, temb] the added embedding, made once per job (encode_xl) */
    tensor in_t;            /* f32 [B·nin + B + B·ncond]: the UNet's input (NHWC: latents [, mask,
                               masked-image latents]), timesteps, tcond */
    tensor eps_g;           /* [1,h,w,c] the guided noise (eps_t itself without CFG) */
    float *x, *x_in, *nhwc, *eps; /* host: NCHW latents, scaled input, NHWC staging, eps */
    float *in_host;               /* host copy of in_t */
    sampler *s;
    rng r;
    /* img2img / inpainting */
    int unet_in;   /* the UNet's input channels: lc, or 2·lc + 1 (inpainting UNet) */
    int64_t nin;   /* UNet input elements (one sample) */
    int begin;     /* first evaluation run (sampler_img2img_begin) */
    float *img;    /* host NHWC init image in [-1, 1] (H·W·3) */
    uint8_t *mask; /* host: the mask after mask_blur (H·W), 255 = repaint */
    float *init;   /* NCHW image latents (the posterior sample · scaling_factor) */
    float *noise;  /* NCHW: the noise add_noise mixed in (4-channel inpainting re-noises with it) */
    float *mlat;   /* [h·w] the latent-size binary mask (1 = repaint) */
    float *cond;   /* NHWC [h·w·(1 + lc)]: mask, masked-image latents (9-channel UNets) */
    float *proper; /* scratch: the known latents re-noised to the next step (4-channel) */
} job;

/* SD1.x/2.x: ctx = CLIP(ids) after clip_skip, final layer norm applied. */
static easel_err encode_sd(job *j, gen_timings *tm) {
    sd_model *m = j->w->m;
    int32_t ids[2 * SEQ];
    int trunc_neg = 0, trunc = 0;
    double t0 = now_ms();
    const char *neg = j->p->negative_prompt ? j->p->negative_prompt : "";
    easel_err e = EASEL_OK;
    if (j->cfg) e = tokenizer_encode(m->tok, neg, ids, &trunc_neg);
    if (!e) e = tokenizer_encode(m->tok, j->p->prompt, ids + (j->cfg ? SEQ : 0), &trunc);
    if (e) return easel_wraperr(e, "tokenizing");
    tm->truncated = trunc || trunc_neg;
    double t1 = now_ms();
    tm->tokenize_ms = t1 - t0;
    e = clip_forward(m->clip, j->w->ar, ids, j->batch, j->p->clip_skip - 1, &j->ctx);
    if (!e) e = j->w->be->sync(j->w->be);
    tm->encode_ms = now_ms() - t1;
    return e;
}

/* One SDXL sample b: ctx[b] = cat(enc1 hidden_states[layer], enc2 hidden_states[layer])
 * (no final norm), pooled[b] = enc2's projected EOS state; zeros when zero. */
static easel_err encode_xl_one(job *j, int b, const char *p1, const char *p2, int skip, int zero,
                               float *pooled, int *trunc) {
    sd_model *m = j->w->m;
    backend *be = j->w->be;
    arena *ar = j->w->ar;
    const clip_config *c1 = clip_get_config(m->clip), *c2 = clip_get_config(m->clip2);
    int P = clip_pooled_dim(c2);
    tensor dst = tensor_slice0(&j->ctx, b, 1);
    if (zero) { /* torch.zeros_like: the negative of force_zeros_for_empty_prompt */
        memset(pooled, 0, sizeof(float) * (size_t)P);
        float *z = calloc((size_t)tensor_nelem(&dst), sizeof(float));
        easel_err e = z ? be->upload(be, &dst, z) : easel_seterr(EASEL_ENOMEM, "out of memory");
        free(z);
        return e;
    }
    int32_t ids1[SEQ], ids2[SEQ];
    int t1 = 0, t2 = 0;
    easel_err e = tokenizer_encode(m->tok, p1, ids1, &t1);
    if (!e) e = tokenizer_encode(m->tok2, p2, ids2, &t2);
    if (e) return easel_wraperr(e, "tokenizing");
    *trunc |= t1 || t2;
    size_t mark = arena_mark(ar);
    tensor h1 = arena_new3(ar, 1, SEQ, c1->hidden), h2 = arena_new3(ar, 1, SEQ, c2->hidden);
    tensor pt = arena_new2(ar, 1, P);
    if (!(e = arena_error(ar)))
        e = clip_encode(m->clip, ar, ids1, 1, c1->layers - skip, 0, &h1, NULL);
    if (!e) e = clip_encode(m->clip2, ar, ids2, 1, c2->layers - skip, 0, &h2, &pt);
    if (!e) e = be->concat(be, &dst, &h1, &h2);
    if (!e) e = be->download(be, &pt, pooled);
    arena_release(ar, mark);
    return e;
}

/* StableDiffusionXLPipeline.encode_prompt: prompt_2 and negative_prompt_2
 * default to prompt / negative prompt (Python's `or`); the positive prompt
 * reads hidden_states[-(clip_skip + 1)], the negative always [-2] (as
 * diffusers); no negative prompt with force_zeros_for_empty_prompt is zeros.
 * Then the added embedding from the pooled states and the time ids
 * (original size = target size = the image's, crop (0, 0)), once per job. */
static easel_err encode_xl(job *j, gen_timings *tm) {
    sd_model *m = j->w->m;
    const gen_params *p = j->p;
    int P = clip_pooled_dim(clip_get_config(m->clip2)), trunc = 0;
    double t0 = now_ms();
    float *pooled = malloc(sizeof(float) * (size_t)P * j->batch);
    float time_ids[2 * UNET_TIME_IDS];
    if (!pooled) return easel_seterr(EASEL_ENOMEM, "out of memory");
    easel_err e = EASEL_OK;
    if (j->cfg) {
        const char *n1 = p->negative_prompt && *p->negative_prompt ? p->negative_prompt : "";
        const char *n2 = p->negative_prompt_2 && *p->negative_prompt_2 ? p->negative_prompt_2 : n1;
        int zero = !p->negative_prompt && m->arch.force_zeros;
        e = encode_xl_one(j, 0, n1, n2, 1, zero, pooled, &trunc);
    }
    const char *p2 = p->prompt_2 && *p->prompt_2 ? p->prompt_2 : p->prompt;
    if (!e)
        e = encode_xl_one(j, j->cfg, p->prompt, p2, p->clip_skip, 0, pooled + P * j->cfg, &trunc);
    for (int b = 0; b < j->batch; b++) {
        float *t = time_ids + b * UNET_TIME_IDS;
        t[0] = t[4] = (float)p->height, t[1] = t[5] = (float)p->width, t[2] = t[3] = 0.0f;
    }
    if (!e) e = unet_aug_embedding(m->unet, j->w->ar, pooled, time_ids, &j->aug);
    if (!e) e = j->w->be->sync(j->w->be);
    free(pooled);
    tm->truncated = trunc;
    tm->encode_ms = now_ms() - t0;
    return e ? easel_wraperr(e, "encoding the prompts") : EASEL_OK;
}

static easel_err encode_prompts(job *j, gen_timings *tm) {
    return j->w->m->arch.has_text2 ? encode_xl(j, tm) : encode_sd(j, tm);
}

/* NCHW (sampler, torch's draw order) <-> NHWC (the networks). */
static void nchw_to_nhwc(const float *src, float *dst, int c, int hw) {
    for (int k = 0; k < c; k++)
        for (int i = 0; i < hw; i++)
            dst[i * c + k] = src[k * hw + i];
}
static void nhwc_to_nchw(const float *src, float *dst, int c, int hw) {
    for (int k = 0; k < c; k++)
        for (int i = 0; i < hw; i++)
            dst[k * hw + i] = src[i * c + k];
}

/* j->x_in (NCHW) -> dst (NHWC) as the UNet takes it: the latents, and for an
 * inpainting UNet cat([latents, mask, masked_image_latents], dim=1). */
static void stage_unet_input(job *j, int hw, float *dst) {
    if (!j->cond) {
        nchw_to_nhwc(j->x_in, dst, j->lc, hw);
        return;
    }
    int C = j->unet_in, lc = j->lc, cc = C - lc;
    for (int p = 0; p < hw; p++) {
        float *o = dst + (size_t)p * C;
        for (int k = 0; k < lc; k++)
            o[k] = j->x_in[(size_t)k * hw + p];
        memcpy(o + lc, j->cond + (size_t)p * cc, sizeof(float) * (size_t)cc);
    }
}

/* The device work of one evaluation, the same every time (a graph replays
 * it): in_t's latents -> x_t in the backend's dtype, eps_t = UNet(x_t, in_t's
 * timesteps [and guidance embedding]). */
static easel_err unet_device_step(void *user) {
    job *j = user;
    sd_worker *w = j->w;
    backend *be = w->be;
    float *in = j->in_t.data;
    tensor xin = tensor_4d(in, DT_F32, be->dev, j->batch, j->lh, j->lw, j->unet_in);
    tensor t = tensor_1d(in + j->batch * j->nin, DT_F32, be->dev, j->batch);
    tensor c = tensor_2d(in + j->batch * (j->nin + 1), DT_F32, be->dev, j->batch, j->ncond);
    unet_cond uc = {.timestep_cond_dev = j->ncond ? &c : NULL,
                    .aug_emb = j->aug.data ? &j->aug : NULL};
    easel_err e = be->copy(be, &j->x_t, &xin);
    if (!e) e = unet_forward_ex(w->m->unet, w->ar, &j->x_t, NULL, &t, &uc, &j->ctx, &j->eps_t);
    return e;
}

/* Identifies the buffers a captured step uses: its tensors, the arena's
 * layout (generation and mark), so a moved arena is captured anew, and the
 * worker's networks (sd_worker_nets_id: a LoRA set's weights are others). */
static uint64_t step_layout(const job *j) {
    uint64_t v[] = {(uintptr_t)j->in_t.data, (uintptr_t)j->x_t.data, (uintptr_t)j->eps_t.data,
                    (uintptr_t)j->ctx.data,  (uintptr_t)j->aug.data, arena_generation(j->w->ar),
                    arena_mark(j->w->ar),    j->w->nets_id}; /* the weights: a LoRA set bound since
                                                                is another graph */
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
        h = (h ^ v[i]) * 1099511628211ULL;
    return h;
}

/* noise_pred = uncond + g·(cond − uncond), on the device, as diffusers does it. */
static easel_err cfg_combine(job *j) {
    backend *be = j->w->be;
    if (!j->cfg) return EASEL_OK; /* eps_g is eps_t */
    size_t es = dtype_size(j->eps_t.dt);
    tensor u = tensor_1d(j->eps_t.data, j->eps_t.dt, be->dev, j->n);
    tensor c = tensor_1d((char *)j->eps_t.data + (size_t)j->n * es, j->eps_t.dt, be->dev, j->n);
    tensor g = tensor_1d(j->eps_g.data, j->eps_g.dt, be->dev, j->n);
    easel_err e = be->axpby(be, &g, 1.0f, &c, -1.0f, &u);
    if (!e) e = be->axpby(be, &g, 1.0f, &u, j->p->guidance, &g);
    return e;
}

static easel_err unet_step(job *j, int i) {
    backend *be = j->w->be;
    int hw = j->lh * j->lw;
    sampler_scale_input(j->s, i, j->x, j->x_in, j->n);
    stage_unet_input(j, hw, j->in_host);
    if (j->cfg) memcpy(j->in_host + j->nin, j->in_host, sizeof(float) * j->nin);
    for (int b = 0; b < j->batch; b++)
        j->in_host[j->batch * j->nin + b] = sampler_timestep(j->s, i);
    if (j->ncond)
        memcpy(j->in_host + j->batch * (j->nin + 1), j->tcond,
               sizeof(float) * (size_t)(j->batch * j->ncond));
    backend_graph_key key = {j->batch, j->lh, j->lw, step_layout(j)};
    easel_err e = be->upload(be, &j->in_t, j->in_host);
    if (!e) e = backend_run_graph(be, &key, unet_device_step, j);
    if (!e) e = cfg_combine(j);
    if (!e) e = be->download(be, &j->eps_g, j->nhwc);
    if (e) return e;
    nhwc_to_nchw(j->nhwc, j->eps, j->lc, hw);
    return sampler_step(j->s, i, j->eps, j->x, j->n, &j->r);
}

/* diffusers: (image / 2 + 0.5).clamp(0, 1), then numpy (x * 255).round(). */
static void to_rgb8(const float *img, uint8_t *rgb, int64_t n) {
    for (int64_t k = 0; k < n; k++) {
        float v = img[k] / 2.0f + 0.5f;
        v = v < 0.0f ? 0.0f : v > 1.0f ? 1.0f : v;
        rgb[k] = (uint8_t)nearbyintf(v * 255.0f);
    }
}

/* ---- live previews ---- */

typedef struct {
    const gen_hooks *h;
    double since_ms; /* sampling time since the last preview (or the start) */
    double last_ms;  /* the last preview's cost; 0 before the first */
    float *x0, *img; /* host: NCHW x0, the decoded image (f32) */
    uint8_t *rgb;
} preview_state;

static void preview_free(preview_state *ps) {
    free(ps->x0), free(ps->img), free(ps->rgb);
}

/* Whether step k (of steps) gets a preview (see gen_hooks). */
static int preview_due(const job *j, const preview_state *ps, int k, int steps) {
    const gen_hooks *h = ps->h;
    if (!h || !h->preview || k >= steps) return 0;
    if (h->preview_every > 0) return k % h->preview_every == 0;
    double interval = h->preview_interval_ms > 0 ? h->preview_interval_ms : GEN_PREVIEW_INTERVAL_MS;
    double budget = h->preview_budget > 0 ? h->preview_budget : GEN_PREVIEW_BUDGET;
    double cost = ps->last_ms;
    if (cost <= 0) /* the first one: what this worker's previews cost so far */
        cost = j->w->preview_ms_per_mpx * j->p->width * j->p->height / 1e6;
    return ps->since_ms >= interval && cost <= budget * (ps->since_ms + cost);
}

/* rgb (W x H) -> its f x f box averages in place, f the smallest whole factor
 * that brings the long side to max_side or less. */
static void box_down(uint8_t *rgb, int W, int H, int max_side, int *pw, int *ph) {
    int f = 1, side = W > H ? W : H;
    while (side / f > max_side)
        f++;
    *pw = W / f, *ph = H / f;
    if (f == 1) return;
    for (int y = 0; y < *ph; y++)
        for (int x = 0; x < *pw; x++)
            for (int c = 0; c < 3; c++) {
                int sum = 0;
                for (int dy = 0; dy < f; dy++)
                    for (int dx = 0; dx < f; dx++)
                        sum += rgb[((size_t)(y * f + dy) * W + (x * f + dx)) * 3 + c];
                rgb[((size_t)y * *pw + x) * 3 + c] = (uint8_t)((sum + f * f / 2) / (f * f));
            }
}

/* TAESD(x0 of evaluation i) to the preview hook as step k. Reads only the
 * evaluation's model output and input (j->eps, j->x_in); uses j->nhwc, which
 * is free between evaluations, and arena memory it releases. */
static easel_err preview(job *j, preview_state *ps, int i, int k, int steps, gen_timings *tm) {
    sd_model *m = j->w->m;
    backend *be = j->w->be;
    arena *ar = j->w->ar;
    double t0 = now_ms();
    int W = j->p->width, H = j->p->height;
    int64_t npx = (int64_t)W * H * 3;
    if (!ps->x0) ps->x0 = malloc(sizeof(float) * j->n);
    if (!ps->img) ps->img = malloc(sizeof(float) * npx);
    if (!ps->rgb) ps->rgb = malloc(npx);
    if (!ps->x0 || !ps->img || !ps->rgb)
        return easel_seterr(EASEL_ENOMEM, "out of memory for a preview");
    denoise_at_sigma(m->pred, sampler_sigma(j->s, i), j->eps, j->x_in, ps->x0, j->n);
    nchw_to_nhwc(ps->x0, j->nhwc, j->lc, j->lh * j->lw);
    size_t mark = arena_mark(ar);
    tensor z = arena_new4(ar, 1, j->lh, j->lw, j->lc);
    tensor img = arena_new4(ar, 1, H, W, taesd_get_config(m->taesd)->out_channels);
    easel_err e = arena_error(ar);
    if (!e) e = be->upload(be, &z, j->nhwc);
    if (!e) e = taesd_decode(m->taesd, ar, &z, &img);
    if (!e) e = be->download(be, &img, ps->img);
    arena_release(ar, mark);
    if (e) return easel_wraperr(e, "preview at step %d", k);
    to_rgb8(ps->img, ps->rgb, npx);
    gen_preview pv = {.step = k, .steps = steps, .rgb = ps->rgb, .x0 = ps->x0};
    int side = ps->h->preview_max_side > 0 ? ps->h->preview_max_side : GEN_PREVIEW_MAX_SIDE;
    box_down(ps->rgb, W, H, side < 8 ? 8 : side, &pv.width, &pv.height);
    pv.decode_ms = now_ms() - t0;
    ps->h->preview(ps->h->preview_user, &pv);
    double cost = now_ms() - t0, mpx = (double)W * H / 1e6;
    ps->last_ms = cost;
    ps->since_ms = 0;
    double per = cost / mpx, *ema = &j->w->preview_ms_per_mpx;
    *ema = *ema > 0 ? 0.7 * *ema + 0.3 * per : per;
    tm->previews++;
    tm->preview_ms += cost;
    return EASEL_OK;
}

/* ---- img2img and inpainting: the latents to start from ---- */

/* AutoencoderKL.encode(img).latent_dist.sample(generator) · scaling_factor
 * into lat (NCHW): the posterior's unit noise (the latents' shape, NCHW)
 * comes from j->r, as diffusers draws it from the job's generator; logvar
 * clamped to [-30, 20], std = exp(0.5·logvar), mean + std·noise, in torch's
 * float32 order. img: NHWC H·W·3 in [-1, 1]. */
static easel_err encode_image(job *j, const float *img, float *lat) {
    sd_model *m = j->w->m;
    arena *ar = j->w->ar;
    backend *be = backend_with_dtype(j->w->be, m->vae_dtype); /* the view the VAE loaded on */
    if (!be) return easel_wraperr(EASEL_EUNSUPPORTED, "encoding the image");
    backend *prev = arena_set_backend(ar, be); /* the VAE's activations in its dtype */
    int lc = j->lc, hw = j->lh * j->lw, c2 = 2 * lc;
    size_t mark = arena_mark(ar);
    tensor x = arena_new4(ar, 1, j->p->height, j->p->width, m->arch.vae.in_channels);
    tensor mom = arena_new4(ar, 1, j->lh, j->lw, c2);
    float *host = malloc(sizeof(float) * (size_t)hw * c2);
    easel_err e = arena_error(ar);
    if (!e && !host) e = easel_seterr(EASEL_ENOMEM, "out of memory");
    if (!e) e = be->upload(be, &x, img);
    if (!e) e = vae_encode(m->vae, ar, &x, &mom);
    if (!e) e = be->download(be, &mom, host);
    arena_release(ar, mark);
    arena_set_backend(ar, prev);
    if (!e) {
        const float sf = m->arch.vae.scaling_factor;
        rng_randn(&j->r, lat, j->n);
        for (int k = 0; k < lc; k++)
            for (int p = 0; p < hw; p++) {
                float mean = host[(size_t)p * c2 + k], lv = host[(size_t)p * c2 + lc + k];
                lv = lv < -30.0f ? -30.0f : lv > 20.0f ? 20.0f : lv;
                float sd = expf(0.5f * lv), *o = lat + (size_t)k * hw + p;
                *o = (mean + sd * *o) * sf;
            }
    }
    free(host);
    return e ? easel_wraperr(e, "encoding the image") : EASEL_OK;
}

/* StableDiffusionInpaintPipeline.prepare_mask_latents: the binarised mask
 * (>= 0.5 after /255) at latent size by nearest (pixel 8i, 8j), the masked
 * image init_image·(mask < 0.5) through the encoder (its posterior draws
 * follow the image's and the noise's), and for a 9-channel UNet the
 * conditioning channels [mask, masked-image latents]. */
static easel_err prepare_mask(job *j) {
    int W = j->p->width, H = j->p->height, lw = j->lw, lh = j->lh, lc = j->lc, hw = lh * lw;
    int f = W / lw;
    size_t npx = (size_t)W * H;
    float *masked = malloc(sizeof(float) * npx * 3), *mimg = malloc(sizeof(float) * (size_t)j->n);
    easel_err e = masked && mimg ? EASEL_OK : easel_seterr(EASEL_ENOMEM, "out of memory");
    for (size_t q = 0; !e && q < npx; q++) {
        float keep = (float)j->mask[q] / 255.0f < 0.5f ? 1.0f : 0.0f;
        for (int c = 0; c < 3; c++)
            masked[3 * q + c] = j->img[3 * q + c] * keep;
    }
    if (!e) e = encode_image(j, masked, mimg);
    for (int y = 0; !e && y < lh; y++)
        for (int x = 0; x < lw; x++)
            j->mlat[y * lw + x] =
                (float)j->mask[(size_t)y * f * W + (size_t)x * f] / 255.0f < 0.5f ? 0.0f : 1.0f;
    for (int p = 0; !e && j->cond && p < hw; p++) {
        float *o = j->cond + (size_t)p * (1 + lc);
        o[0] = j->mlat[p];
        for (int k = 0; k < lc; k++)
            o[1 + k] = mimg[(size_t)k * hw + p];
    }
    free(masked), free(mimg);
    return e;
}

/* The latents the first evaluation sees. txt2img: unit noise ·
 * init_noise_sigma. img2img: the image latents noised to the first run
 * timestep (add_noise); inpainting at strength 1: pure noise as txt2img;
 * below 1 as img2img. The generator's draws come in diffusers' order: the
 * image's posterior (skipped by a 9-channel UNet at strength 1), the noise,
 * then the masked image's posterior. */
static easel_err prepare_latents(job *j, gen_timings *tm) {
    const gen_params *p = j->p;
    rng_seed(&j->r, p->seed);
    float sigma0 = sampler_init_noise_sigma(j->s);
    if (!p->init_image) {
        rng_randn(&j->r, j->x, j->n);
        for (int64_t k = 0; k < j->n; k++)
            j->x[k] *= sigma0;
        return EASEL_OK;
    }
    double t0 = now_ms();
    int strength_max = j->mlat && p->strength == 1.0;
    easel_err e = EASEL_OK;
    if (!strength_max || !j->cond) e = encode_image(j, j->img, j->init);
    if (!e) {
        rng_randn(&j->r, j->noise, j->n);
        if (strength_max)
            for (int64_t k = 0; k < j->n; k++)
                j->x[k] = j->noise[k] * sigma0;
        else if (j->begin < sampler_evals(j->s))
            sampler_add_noise(j->s, j->begin, j->init, j->noise, j->x, j->n);
        else /* strength·steps < 1: no step runs; the image's own latents are decoded */
            memcpy(j->x, j->init, sizeof(float) * (size_t)j->n);
    }
    if (!e && j->mlat) e = prepare_mask(j);
    if (!e) e = j->w->be->sync(j->w->be);
    tm->image_encode_ms = now_ms() - t0;
    return e;
}

/* 4-channel inpainting after evaluation i: outside the mask the latents are
 * the image's, noised to the next evaluation's timestep (the image latents
 * themselves after the last), as the pipeline's (1 − mask)·proper + mask·x. */
static void blend_known(job *j, int i) {
    int hw = j->lh * j->lw;
    const float *proper = j->init;
    if (i + 1 < sampler_evals(j->s)) {
        sampler_add_noise(j->s, i + 1, j->init, j->noise, j->proper, j->n);
        proper = j->proper;
    }
    for (int k = 0; k < j->lc; k++)
        for (int p = 0; p < hw; p++)
            if (j->mlat[p] == 0.0f) j->x[(size_t)k * hw + p] = proper[(size_t)k * hw + p];
}

static easel_err sample(job *j, const gen_hooks *h, gen_timings *tm) {
    easel_err e = prepare_latents(j, tm);
    if (e) return e;
    double t0 = now_ms();
    int evals = sampler_evals(j->s), steps = sampler_progress_total(j->s);
    gen_progress_fn progress = h ? h->progress : NULL;
    preview_state ps = {.h = h && h->preview && j->w->m->taesd ? h : NULL};
    double s0 = now_ms();
    tm->steps_run = steps;
    for (int i = j->begin; i < evals && !e; i++) {
        if ((e = unet_step(j, i))) {
            e = easel_wraperr(e, "evaluation %d/%d", i + 1, evals);
            break;
        }
        if (j->mlat && !j->cond) blend_known(j, i);
        int k = sampler_progress(j->s, i);
        if (!k) continue;
        double s1 = now_ms();
        ps.since_ms += s1 - s0;
        if (progress && progress(h->progress_user, k, steps, s1 - s0)) {
            e = easel_seterr(EASEL_ECANCELED, "canceled at step %d/%d", k, steps);
            break;
        }
        s0 = s1;
        if (preview_due(j, &ps, k, steps)) {
            e = preview(j, &ps, i, k, steps, tm);
            s0 = now_ms(); /* a step's time is the step's, not its preview's */
        }
    }
    preview_free(&ps);
    if (e) return e;
    tm->sample_ms = now_ms() - t0;
    tm->step_ms_mean = (tm->sample_ms - tm->preview_ms) / (steps > 0 ? steps : 1);
    return EASEL_OK;
}

static easel_err decode(job *j, uint8_t **rgb, gen_timings *tm) {
    sd_model *m = j->w->m;
    arena *ar = j->w->ar;
    int tiny = j->p->decoder == GEN_DECODER_TAESD;
    if (tiny && !m->taesd) return easel_seterr(EASEL_EINVAL, "decoder taesd: the model has none");
    /* the VAE on the view it loaded on; TAESD (AutoencoderTiny: force_upcast
     * false) in the worker's own dtype, as its weights were loaded */
    backend *be = tiny ? j->w->be : backend_with_dtype(j->w->be, m->vae_dtype);
    if (!be) return easel_wraperr(EASEL_EUNSUPPORTED, "decoding");
    backend *prev = arena_set_backend(ar, be); /* the decoder's activations in its dtype */
    double t0 = now_ms();
    int W = j->p->width, H = j->p->height; /* resolved */
    int64_t npx = (int64_t)W * H * 3;
    tensor z = arena_new4(ar, 1, j->lh, j->lw, j->lc);
    tensor img = arena_new4(ar, 1, H, W, m->arch.vae.out_channels);
    float *host = malloc(sizeof(float) * npx);
    uint8_t *out = malloc(npx);
    easel_err e = arena_error(ar);
    if (!e && (!host || !out)) e = easel_seterr(EASEL_ENOMEM, "out of memory for the image");
    if (!e) {
        nchw_to_nhwc(j->x, j->nhwc, j->lc, j->lh * j->lw);
        e = be->upload(be, &z, j->nhwc);
    }
    if (!e) e = tiny ? taesd_decode(m->taesd, ar, &z, &img) : vae_decode(m->vae, ar, &z, &img);
    if (!e) e = be->download(be, &img, host);
    if (!e) to_rgb8(host, out, npx);
    if (!e && j->p->keep_unmasked && j->mask) /* A1111's overlay: the original where not masked */
        for (int64_t q = 0; q < (int64_t)W * H; q++) {
            unsigned a = j->mask[q];
            for (int c = 0; c < 3; c++) {
                uint8_t *o = out + 3 * q + c;
                *o = (uint8_t)((j->p->init_image[3 * q + c] * (255u - a) + *o * a + 127u) / 255u);
            }
        }
    free(host);
    arena_set_backend(ar, prev);
    if (e) {
        free(out);
        return easel_wraperr(e, "decoding");
    }
    *rgb = out;
    tm->decode_ms = now_ms() - t0;
    return EASEL_OK;
}

/* The image (to [-1, 1] as VaeImageProcessor: v / 255 then 2x − 1, float32),
 * the blurred mask, their buffers, and the strength's first evaluation. */
static easel_err image_setup(job *j) {
    const gen_params *p = j->p;
    size_t npx = (size_t)p->width * p->height, n = (size_t)j->n;
    j->img = malloc(sizeof(float) * npx * 3);
    j->init = malloc(sizeof(float) * n);
    j->noise = malloc(sizeof(float) * n);
    if (p->mask) {
        j->mask = malloc(npx);
        j->mlat = malloc(sizeof(float) * (size_t)j->lh * j->lw);
        j->proper = malloc(sizeof(float) * n);
        if (j->unet_in != j->lc)
            j->cond = malloc(sizeof(float) * (size_t)j->lh * j->lw * (1 + j->lc));
    }
    if (!j->img || !j->init || !j->noise ||
        (p->mask && (!j->mask || !j->mlat || !j->proper || (j->unet_in != j->lc && !j->cond))))
        return easel_seterr(EASEL_ENOMEM, "out of memory for the image");
    for (size_t q = 0; q < npx * 3; q++)
        j->img[q] = 2.0f * ((float)p->init_image[q] / 255.0f) - 1.0f;
    if (p->mask) {
        memcpy(j->mask, p->mask, npx);
        easel_err e = image_blur(j->mask, p->width, p->height, (float)p->mask_blur);
        if (e) return e;
    }
    j->begin = sampler_img2img_begin(j->s, p->strength);
    return sampler_set_begin(j->s, j->begin);
}

static easel_err job_setup(job *j, sd_worker *w, const gen_params *in) {
    const sd_arch *a = &w->m->arch;
    easel_err e = sd_params_resolve(w->m, in, &j->rp, NULL);
    if (e) return e;
    const gen_params *p = &j->rp;
    int f = vae_factor(w->m);
    j->w = w, j->p = p;
    /* StableDiffusionPipeline: no CFG batch for a model with a guidance embedding */
    int embedded = a->unet.time_cond_proj_dim > 0;
    j->cfg = p->guidance > 1.0f && !embedded;
    j->batch = j->cfg ? 2 : 1;
    j->lh = p->height / f, j->lw = p->width / f, j->lc = a->vae.latent_channels;
    j->unet_in = a->unet.in_channels;
    j->n = (int64_t)j->lc * j->lh * j->lw;
    j->nin = (int64_t)j->unet_in * j->lh * j->lw;
    if (a->unet.out_channels != j->lc || (j->unet_in != j->lc && j->unet_in != 2 * j->lc + 1))
        return easel_seterr(EASEL_EUNSUPPORTED,
                            "the UNet (%d in, %d out channels) does not fit the VAE's %d latent "
                            "channels",
                            j->unet_in, a->unet.out_channels, j->lc);
    arena_reset(w->ar);
    j->ctx = arena_new3(w->ar, j->batch, SEQ, a->unet.cross_attention_dim);
    j->x_t = arena_new4(w->ar, j->batch, j->lh, j->lw, j->unet_in);
    j->eps_t = arena_new4(w->ar, j->batch, j->lh, j->lw, j->lc);
    if (a->unet.add_text_time) j->aug = arena_new2(w->ar, j->batch, unet_temb_dim(&a->unet));
    j->ncond = embedded ? a->unet.time_cond_proj_dim : 0;
    int64_t n_in_t = j->batch * (j->nin + 1 + j->ncond); /* UNet input, timesteps, guidance */
    j->in_t = arena_new_dt(w->ar, DT_F32, 1, &n_in_t);
    j->eps_g = j->cfg ? arena_new4(w->ar, 1, j->lh, j->lw, j->lc) : j->eps_t;
    if ((e = arena_error(w->ar))) return e;
    if (embedded) { /* guidance_scale_tensor = tensor(guidance_scale - 1) */
        int d = a->unet.time_cond_proj_dim;
        if (!(j->tcond = malloc(sizeof(float) * (size_t)d * j->batch)))
            return easel_seterr(EASEL_ENOMEM, "out of memory");
        for (int b = 0; b < j->batch; b++)
            unet_guidance_embedding((float)((double)p->guidance - 1.0), d, j->tcond + b * d);
    }
    j->x = malloc(sizeof(float) * j->n);
    j->x_in = malloc(sizeof(float) * j->n);
    j->eps = malloc(sizeof(float) * j->n);
    j->nhwc = malloc(sizeof(float) * j->n * 2);
    j->in_host = malloc(sizeof(float) * (size_t)n_in_t);
    if (!j->x || !j->x_in || !j->eps || !j->nhwc || !j->in_host)
        return easel_seterr(EASEL_ENOMEM, "out of memory");
    sampler_opts so = sampler_opts_for(w->m, p);
    if ((e = sampler_create_ex(&so, &j->s))) return e;
    return p->init_image ? image_setup(j) : EASEL_OK;
}

static void job_free(job *j) {
    free(j->x), free(j->x_in), free(j->eps), free(j->nhwc), free(j->tcond), free(j->in_host);
    free(j->img), free(j->mask), free(j->init), free(j->noise), free(j->mlat), free(j->cond);
    free(j->proper);
    sampler_free(j->s);
}

easel_err sd_generate_ex(sd_worker *w, const gen_params *p, gen_progress_fn progress, void *user,
                         uint8_t **rgb, float *latents, gen_timings *timings) {
    gen_hooks h;
    gen_hooks_default(&h);
    h.progress = progress, h.progress_user = user;
    return sd_generate_hooks(w, p, &h, rgb, latents, timings);
}

easel_err sd_generate_hooks(sd_worker *w, const gen_params *p, const gen_hooks *h, uint8_t **rgb,
                            float *latents, gen_timings *timings) {
    *rgb = NULL;
    gen_timings tm = {0};
    double t0 = now_ms();
    fault_arm(); /* fault builds: this generation's allocations may be made to fail */
    job j = {0};
    sd_model *base = w->m;
    easel_err e = bind_loras(w, p, &tm);
    if (!e) e = job_setup(&j, w, p);
    if (!e) e = encode_prompts(&j, &tm);
    if (!e) e = sample(&j, h, &tm);
    if (!e && latents) memcpy(latents, j.x, sizeof(float) * j.n);
    if (!e) e = decode(&j, rgb, &tm);
    /* host: x, x_in, eps, 2x nhwc staging, in_host; the decoded image as floats and bytes; img2img:
     * the image as floats (and its masked copy), init, noise, proper */
    size_t px = (size_t)j.rp.width * (size_t)j.rp.height;
    tm.worker_peak_bytes =
        arena_high_water(w->ar) +
        sizeof(float) * (5 * (size_t)j.n + (size_t)j.batch * (j.nin + 1 + j.ncond)) +
        (sizeof(float) + 1) * 3 * px;
    if (j.img) tm.worker_peak_bytes += sizeof(float) * (6 * px + 4 * (size_t)j.n) + px;
    job_free(&j);
    arena_reset(w->ar);
    w->m = base;
    tm.total_ms = now_ms() - t0;
    fault_disarm();
    if (tm.truncated) log_warn("prompt longer than 77 CLIP tokens: truncated as diffusers does");
    if (timings) *timings = tm;
    return e;
}

easel_err sd_generate(sd_worker *w, const gen_params *p, gen_progress_fn progress, void *user,
                      uint8_t **rgb, gen_timings *timings) {
    return sd_generate_ex(w, p, progress, user, rgb, NULL, timings);
}
