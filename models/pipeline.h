/* txt2img: tokenize -> encode (cond + uncond; SDXL: two encoders, pooled
 * text embedding and micro-conditioning time ids) -> sample loop with CFG ->
 * VAE decode -> RGB bytes. img2img and inpainting (SD1.x/SD2.x): the init
 * image through the VAE encoder, noised to the strength's first timestep,
 * only the remaining steps run; a mask blends the known latents back each
 * step (4-channel UNets) or conditions the UNet (9-channel inpainting UNets). An sd_model holds the
 * weights (loaded once, shared read-only by all workers); an sd_worker holds one worker's backend
 * and arena. Everything a caller can get wrong is checked by
 * gen_params_validate(), which names the field and the allowed range. */
#ifndef EASEL_PIPELINE_H
#define EASEL_PIPELINE_H

#include <stddef.h>
#include <stdint.h>

#include "../engine/backend.h"

/* A request's sampler: each is the diffusers scheduler class of that name
 * built from_config of the model's scheduler_config.json. The first four keep
 * their values (http/params.c stores them). */
typedef enum {
    SAMPLER_DEFAULT = -2,    /* the model's own scheduler class */
    SAMPLER_EULER_A = 0,     /* EulerAncestralDiscreteScheduler */
    SAMPLER_EULER,           /* EulerDiscreteScheduler */
    SAMPLER_DDIM,            /* DDIMScheduler */
    SAMPLER_DPMPP_2M_KARRAS, /* DPMSolverMultistep, dpmsolver++ order 2, Karras sigmas */
    SAMPLER_PNDM,            /* PNDMScheduler (PLMS; SD1.5's own) */
    SAMPLER_HEUN,            /* HeunDiscreteScheduler (2 evaluations per step) */
    SAMPLER_DPMPP_2M,        /* DPMSolverMultistepScheduler as the config says */
    SAMPLER_UNIPC,           /* UniPCMultistepScheduler */
    SAMPLER_LCM,             /* LCMScheduler */
    SAMPLER_TCD,             /* TCDScheduler (gamma = eta) */
    SAMPLER_COUNT
} sampler_kind;

/* "euler_a", "euler", "ddim", "dpmpp_2m_karras", "pndm", "heun", "dpmpp_2m",
 * "unipc", "lcm", "tcd"; "default" for SAMPLER_DEFAULT. */
const char *sampler_name(sampler_kind s);
/* -1 if unknown (SAMPLER_DEFAULT has no name to parse: leave the field out). */
int sampler_parse(const char *s);
/* "euler_a, euler, ..." for messages and API listings. */
const char *sampler_choices(void);

/* The A1111-style schedule, apart from the sampler: how the sigmas/timesteps
 * are spaced, as a diffusers user sets it with from_config(config, ...). */
typedef enum {
    SCHEDULE_DEFAULT = 0, /* the model's config as it is */
    SCHEDULE_KARRAS,      /* use_karras_sigmas=True (euler, heun, dpmpp_2m, unipc) */
    SCHEDULE_EXPONENTIAL, /* use_exponential_sigmas=True (same samplers) */
    SCHEDULE_UNIFORM,     /* Karras/exponential sigmas off */
    SCHEDULE_LINSPACE,    /* timestep_spacing="linspace" */
    SCHEDULE_LEADING,     /* timestep_spacing="leading" */
    SCHEDULE_TRAILING,    /* timestep_spacing="trailing" (SGM uniform; Turbo, Hyper-SD) */
    SCHEDULE_COUNT
} sched_schedule;

const char *schedule_name(sched_schedule s);
int schedule_parse(const char *s); /* -1 if unknown */
const char *schedule_choices(void);

/* The model's parameterisation (the denoiser seam, models/denoiser.h). */
typedef enum { PRED_EPSILON = 0, PRED_V, PRED_SAMPLE, PRED_COUNT } sd_prediction;

#define GEN_MIN_SIZE 64
#define GEN_MAX_SIZE 2048
#define GEN_MAX_STEPS 150
#define GEN_MAX_GUIDANCE 30.0f
#define GEN_MAX_PROMPT_BYTES 4096

/* Which network turns the final latents into the image: the model's full VAE
 * (default) or its TAESD (≈ 18x fewer operations; a preview-quality image). */
typedef enum { GEN_DECODER_VAE = 0, GEN_DECODER_TAESD, GEN_DECODER_COUNT } gen_decoder;
const char *gen_decoder_name(gen_decoder d); /* "vae", "taesd" */
int gen_decoder_parse(const char *s);        /* -1 if unknown */
#define GEN_MAX_LORAS 8                      /* LoRAs one request may apply at once */
#define GEN_LORA_NAME_MAX 128                /* bytes of a LoRA's name */
#define GEN_LORA_MAX_WEIGHT 10.0f            /* |weight| at most */

#define GEN_DEFAULT (-1) /* steps, width, height: the model's default */
#define GEN_GUIDANCE_DEFAULT (-1.0f)
#define GEN_STRENGTH_DEFAULT (-1.0) /* 0.8 for img2img, 1.0 for inpainting (diffusers') */
#define GEN_MAX_MASK_BLUR 64

/* One LoRA a request applies: its name in the model's LoRA directory
 * (models/lora.h lora_lib) and the weight it is merged with (0: not applied). */
typedef struct {
    char name[GEN_LORA_NAME_MAX + 1];
    float weight;
} gen_lora;

typedef struct {
    const char *prompt;          /* required (may be ""), ≤ GEN_MAX_PROMPT_BYTES */
    const char *negative_prompt; /* NULL: none given; "" = encode the empty prompt. They differ
                                    only where diffusers makes them differ: an SDXL model with
                                    force_zeros_for_empty_prompt zeroes the negative embeddings
                                    for NULL */
    /* SDXL's second text encoder (OpenCLIP ViT-bigG): NULL or "" = the prompt / negative
     * prompt, as diffusers' `prompt_2 or prompt`. Refused (EINVAL) by models without one. */
    const char *prompt_2, *negative_prompt_2;
    int width, height;       /* multiples of 8 in [GEN_MIN_SIZE, GEN_MAX_SIZE], or GEN_DEFAULT */
    int steps;               /* 1..GEN_MAX_STEPS, or GEN_DEFAULT */
    float guidance;          /* 0..GEN_MAX_GUIDANCE or GEN_GUIDANCE_DEFAULT; CFG runs when
                                > 1 (models with a guidance embedding: never, it is embedded) */
    sampler_kind sampler;    /* SAMPLER_DEFAULT: the model's own scheduler class */
    sched_schedule schedule; /* SCHEDULE_DEFAULT: the model's config */
    float eta;               /* DDIM's eta, TCD's gamma, in [0, 1] (diffusers' default 0) */
    uint64_t seed;
    int clip_skip;       /* 1 = last layer (default), 2 = penultimate, ... */
    gen_decoder decoder; /* GEN_DECODER_VAE (default) or _TAESD (the model must have one) */
    /* img2img / inpainting, as StableDiffusionImg2ImgPipeline and
     * StableDiffusionInpaintPipeline given this image at this size (the
     * caller decodes and resizes: engine/image_codecs.h). */
    const uint8_t *init_image;     /* NULL: txt2img; else width·height·3 RGB bytes */
    const uint8_t *mask;           /* NULL: img2img; else width·height bytes, white (>= 128 after
                                      mask_blur, diffusers' binarisation at 0.5) = repaint */
    double strength;               /* [0, 1] or GEN_STRENGTH_DEFAULT; the last int(steps·strength)
                                      steps run (double: Python's float, so 0.7·10 is 7) */
    int mask_blur;                 /* Gaussian sigma in pixels applied to the mask first, 0..64 */
    int keep_unmasked;             /* inpainting: outside the (blurred) mask the output is the init
                                      image exactly, blended by the mask at its edges (A1111's overlay) */
    gen_lora loras[GEN_MAX_LORAS]; /* merged into the UNet / text encoder for this job */
    int n_loras;
} gen_params;

/* 1 if name can name a LoRA: 1..GEN_LORA_NAME_MAX bytes of printable
 * UTF-8, no backslash, not absolute, no "." or ".." path segment (folders
 * inside the LoRA directory are "sub/name"). */
int gen_lora_name_ok(const char *name);
/* A1111's prompt syntax: removes every <lora:NAME> and <lora:NAME:WEIGHT>
 * (also <lyco:...>) from prompt, in place, as A1111 does (the tag only, the
 * text around it stays), and appends each to loras[*n] (weight 1 when not
 * given); a tag that the removals form ("<lo<lora:a>ra:b>") is taken too, so
 * the prompt that remains has none. EINVAL with *field "prompt" naming the tag when it is malformed
 * (more than one weight, a name gen_lora_name_ok refuses, a weight that is
 * not a number in [-GEN_LORA_MAX_WEIGHT, GEN_LORA_MAX_WEIGHT]) or when more
 * than max LoRAs result. */
easel_err gen_prompt_loras(char *prompt, gen_lora *loras, int *n, int max, const char **field);

/* Defaults: the model's size, steps, guidance and sampler (GEN_DEFAULT,
 * SAMPLER_DEFAULT, ...), schedule as configured, eta 0, seed 0, clip_skip 1,
 * the full VAE. */
void gen_params_default(gen_params *p);
/* 0 if valid; else EASEL_EINVAL, *field set to the field's name ("width") and the
 * message naming the allowed range (sampler and schedule: the choices). */
easel_err gen_params_validate(const gen_params *p, const char **field);

typedef struct {
    double tokenize_ms, encode_ms, sample_ms, decode_ms, total_ms;
    double step_ms_mean;
    int truncated;            /* the prompt or negative prompt was longer than 77 tokens */
    size_t worker_peak_bytes; /* the worker's activations (arena high water) + host staging:
                                 the memory one more worker costs at this size */
    int previews;             /* live previews made (sd_generate_hooks) */
    double preview_ms;        /* their time in all (inside sample_ms) */
    double image_encode_ms;   /* img2img/inpainting: the VAE encoder's time (init + masked image) */
    int steps_run;            /* steps sampled (img2img: int(steps·strength); else steps) */
    double lora_ms;           /* binding the job's LoRAs: reading and merging them, or (lora_cached)
                               * finding the worker's merged set; 0 without LoRAs */
    int lora_cached;          /* 1: the worker had the job's merged LoRA set already */
} gen_timings;

/* Called after every step; return nonzero to cancel (the job then ends with
 * EASEL_ECANCELED). step counts from 1 to steps, as diffusers' progress bar
 * (Heun's two model evaluations are one step); step_ms is the time since the
 * previous call. */
typedef int (*gen_progress_fn)(void *user, int step, int steps, double step_ms);

/* A live preview: the model's TAESD decoding the denoised estimate x0 of a
 * step (not the noisy latent), box-downscaled by a whole factor to at most
 * max_side pixels on its long side. */
typedef struct {
    int step, steps;    /* as progress reports them (step < steps) */
    int width, height;  /* of rgb */
    const uint8_t *rgb; /* width·height·3 bytes, valid during the call */
    const float *x0;    /* C·h·w latents, NCHW, valid during the call */
    double decode_ms;   /* x0 -> rgb */
} gen_preview;
typedef void (*gen_preview_fn)(void *user, const gen_preview *pv);

#define GEN_PREVIEW_INTERVAL_MS 500.0 /* auto: at least this much sampling between previews */
#define GEN_PREVIEW_BUDGET 0.10       /* auto: previews take at most this share of sampling */
#define GEN_PREVIEW_MAX_SIDE 256

/* What a caller hooks into one generation. Previews need the model's TAESD
 * (sd_model_has_taesd); they only read the latents, so the image is the same
 * bit for bit with and without them. None after the last step (the image
 * follows). */
typedef struct {
    gen_progress_fn progress; /* NULL: none */
    void *progress_user;
    gen_preview_fn preview; /* NULL: no previews */
    void *preview_user;
    /* > 0: after every N-th step, whatever they cost (tests, explicit asks);
     * 0: auto, after a step once preview_interval_ms of sampling passed since
     * the last one and the last one's cost is within preview_budget of the
     * sampling time it interrupts (so previews stay under that share). */
    int preview_every;
    double preview_interval_ms; /* 0: GEN_PREVIEW_INTERVAL_MS */
    double preview_budget;      /* 0: GEN_PREVIEW_BUDGET */
    int preview_max_side;       /* 0: GEN_PREVIEW_MAX_SIDE; at least 8 */
} gen_hooks;

void gen_hooks_default(gen_hooks *h);

typedef struct sd_model sd_model;
typedef struct sd_worker sd_worker;

/* How to read a checkpoint where it does not say (or says wrongly). */
typedef struct {
    int prediction;               /* sd_prediction, or -1: the checkpoint's. Contradicting a
                                     checkpoint that states its type is refused (EINVAL). */
    const char *family;           /* NULL: detected; else "sd15", "sd2", "sd2-v", "sd-turbo", "lcm",
                                     "sdxl", "sdxl-turbo", "sdxl-lightning": the defaults and, for
                                     single files, the schedule follow it (sdxl-lightning also on
                                     folders: trailing Euler over the model's config, as its card
                                     says) */
    const char *scheduler_config; /* NULL, or a scheduler_config.json replacing the model's */
    sampler_kind sampler;         /* SAMPLER_DEFAULT: the scheduler config's class */
    /* TAESD (live previews, "decoder": "taesd"): NULL: the folder's taesd/ when
     * there is one (a diffusers AutoencoderTiny folder, or the original
     * taesd_decoder.safetensors [+ taesd_encoder.safetensors]), else none; a
     * path: that one (see taesd_load), an error if it cannot be loaded. */
    const char *taesd;
} sd_load_opts;

void sd_load_opts_default(sd_load_opts *o);

/* Loads a diffusers folder or a single-file .safetensors onto be (weights
 * converted to be->act_dtype). Errors name the missing/unexpected tensor, a
 * scheduler config field we do not support, an unknown scheduler class. */
easel_err sd_model_load(const char *path, backend *be, sd_model **out);
easel_err sd_model_load_ex(const char *path, backend *be, const sd_load_opts *o, sd_model **out);
void sd_model_free(sd_model *m);
/* "tiny", "sd15", ... and a short description for `easel info` and /healthz. */
const char *sd_model_arch(const sd_model *m);
size_t sd_model_weight_bytes(const sd_model *m);
/* The dtype the VAE runs in: f32 when its config says force_upcast and the
 * backend can store f32 (a GPU storing f16 decodes through its f32 view). */
dtype sd_model_vae_dtype(const sd_model *m);

/* What a client needs to know about the loaded model (GET /v1/models,
 * /healthz, `easel info --model M`). Strings are static or owned by the model. */
typedef struct {
    const char *arch;   /* "sd15", "tiny", "sd2", ... or "custom" */
    const char *family; /* "sd15", "sd2", "sd2-v", "sd-turbo", "lcm", "sdxl", "sdxl-turbo", ... */
    const char *prediction_type; /* "epsilon", "v_prediction", "sample" */
    const char *scheduler_class; /* the config's _class_name ("PNDMScheduler") or "" */
    sampler_kind default_sampler;
    const char *default_sampler_name;
    int default_steps;
    float default_guidance;
    int guidance_embedded; /* 1: guidance is fed as an embedding, never a CFG batch */
    int default_width, default_height;
    int64_t params_unet, params_vae, params_text; /* parameters loaded */
    size_t weight_bytes;
    const char *dtype;    /* the weights' dtype on the backend ("f32", "f16") */
    int random_weights;   /* written by `easel make-model`: its images are noise */
    int text_encoders;    /* 1, or 2 (SDXL: prompt_2 / negative_prompt_2 accepted) */
    int force_zeros;      /* SDXL: no negative prompt = zero negative embeddings */
    int vae_force_upcast; /* the VAE overflows fp16 (run it in bf16/fp32 on such backends) */
    int taesd;            /* 1 when a TAESD is loaded (previews, "decoder": "taesd") */
    int64_t params_taesd; /* its parameters (decoder + encoder) */
    const char *taesd_path;
    int vae_encoder;  /* the VAE has its encoder: img2img and inpainting possible */
    int inpaint_unet; /* a 9-channel inpainting UNet (sd-1.5-inpainting): needs image and mask */
} sd_model_info;

void sd_model_get_info(const sd_model *m, sd_model_info *out);

/* *out = *in with every default (GEN_DEFAULT, SAMPLER_DEFAULT, ...) replaced
 * by the model's, and validated for this model (sizes a multiple of its VAE
 * factor, a schedule the sampler has, clip_skip within its text encoder,
 * prompt_2 / negative_prompt_2 only with a second text encoder, every LoRA
 * found in the model's directory and fitting its weights): what sd_generate
 * will run. EINVAL naming the field ("loras" for a LoRA), as
 * gen_params_validate. */
easel_err sd_params_resolve(const sd_model *m, const gen_params *in, gen_params *out,
                            const char **field);

/* The LoRA directory requests name LoRAs in (models/lora.h; shared, not
 * owned; NULL: requests with loras are refused). Call before any job. */
typedef struct lora_lib lora_lib;
void sd_model_set_loras(sd_model *m, lora_lib *lib);
lora_lib *sd_model_loras(const sd_model *m);
/* The model's weights by name, as LoRAs are matched to them. */
typedef struct lora_index lora_index;
const lora_index *sd_model_lora_index(const sd_model *m);

/* A worker on be (which must share memory with the model's backend). */
easel_err sd_worker_create(sd_model *m, backend *be, sd_worker **out);
void sd_worker_free(sd_worker *w);
/* The most device memory the worker's merged LoRA sets may take together
 * (default SD_LORA_CACHE_DEFAULT); sets beyond it are evicted least recently
 * used first, and a set larger than the cap alone fails its job. */
#define SD_LORA_CACHE_DEFAULT ((size_t)4 << 30)
void sd_worker_set_lora_cache(sd_worker *w, size_t cap_bytes);
/* Bytes the worker's merged sets take now, and how many (sets may be NULL). */
size_t sd_worker_lora_bytes(const sd_worker *w, int *sets);
/* Which networks the worker's current job runs: 1 for the model's own, else
 * the id of the merged LoRA set bound (unique in the worker, the same while
 * the set stays cached): what a cache of captured device work must include
 * in its key (CUDA graphs bake weight pointers in). */
uint64_t sd_worker_nets_id(const sd_worker *w);

/* Runs one txt2img. On success *rgb is a malloc'd width·height·3 byte image
 * (caller frees). On error nothing is returned and the message says why.
 * p->loras (those of weight 0 are skipped) are merged into this worker's
 * copy of the weights they touch, or taken from its cache. */
easel_err sd_generate(sd_worker *w, const gen_params *p, gen_progress_fn progress, void *user,
                      uint8_t **rgb, gen_timings *timings);
/* sd_generate that also copies the final latents (before VAE decode) into
 * latents, if not NULL: C·(height/f)·(width/f) floats in NCHW order as
 * diffusers returns them with output_type="latent" (f = the VAE's factor, 8
 * for SD1.x; C = 4). For tests and previews. */
easel_err sd_generate_ex(sd_worker *w, const gen_params *p, gen_progress_fn progress, void *user,
                         uint8_t **rgb, float *latents, gen_timings *timings);
/* sd_generate_ex with hooks (progress and live previews); h may be NULL. */
easel_err sd_generate_hooks(sd_worker *w, const gen_params *p, const gen_hooks *h, uint8_t **rgb,
                            float *latents, gen_timings *timings);
/* Whether the model has a TAESD (previews, GEN_DECODER_TAESD). */
int sd_model_has_taesd(const sd_model *m);

#endif
