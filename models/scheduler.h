/* A model's noise schedule as diffusers describes it: the fields of
 * scheduler/scheduler_config.json, read the way ConfigMixin.from_config reads
 * them. Each field remembers whether the file set it, because diffusers
 * builds the requested sampler class from the config and lets every field the
 * file leaves out take *that class's* default (DDIM: clip_sample true and
 * leading spacing; Euler: linspace). Unknown fields, and known ones set to
 * values we do not implement (thresholding, SDE solvers, beta sigmas, ...),
 * are refused by name when the config is read, never ignored. */
#ifndef EASEL_SCHEDULER_H
#define EASEL_SCHEDULER_H

#include "../engine/err.h"
#include "pipeline.h"

#define SCHED_MAX_TRAIN 1000 /* num_train_timesteps we accept: 1..1000 */

typedef enum { BETAS_LINEAR = 0, BETAS_SCALED_LINEAR, BETAS_SQUAREDCOS, BETAS_EXP } sched_betas;
typedef enum { SPACING_LINSPACE = 0, SPACING_LEADING, SPACING_TRAILING } sched_spacing;
typedef enum { ALGO_DPMSOLVER_PP = 0, ALGO_DPMSOLVER } sched_algorithm;
typedef enum { SOLVER_MIDPOINT = 0, SOLVER_HEUN } sched_solver; /* DPM-Solver's solver_type */
typedef enum { UNIPC_BH2 = 0, UNIPC_BH1 } sched_unipc_solver;

/* Field ids; bit (1 << id) of sched_config.set says the JSON gave the field. */
typedef enum {
    SF_NUM_TRAIN = 0,
    SF_BETA_START,
    SF_BETA_END,
    SF_BETA_SCHEDULE,
    SF_TRAINED_BETAS,
    SF_PREDICTION,
    SF_SPACING,
    SF_STEPS_OFFSET,
    SF_CLIP_SAMPLE,
    SF_CLIP_RANGE,
    SF_ALPHA_TO_ONE,
    SF_ZERO_SNR,
    SF_KARRAS,
    SF_EXPONENTIAL,
    SF_FINAL_SIGMAS,
    SF_INTERPOLATION,
    SF_TIMESTEP_TYPE,
    SF_SIGMA_MIN,
    SF_SIGMA_MAX,
    SF_SKIP_PRK,
    SF_SOLVER_ORDER,
    SF_ALGORITHM,
    SF_SOLVER_TYPE,
    SF_LOWER_ORDER_FINAL,
    SF_EULER_AT_FINAL,
    SF_LAMBDA_MIN_CLIPPED,
    SF_PREDICT_X0,
    SF_DISABLE_CORRECTOR,
    SF_ORIGINAL_STEPS,
    SF_TIMESTEP_SCALING,
    SF_COUNT
} sched_field;

typedef struct {
    char class_name[48]; /* "_class_name", e.g. "PNDMScheduler"; "" if absent */
    unsigned set;        /* (1 << sched_field) for each field the JSON gave */
    int num_train_timesteps;
    double beta_start, beta_end; /* Python floats */
    sched_betas beta_schedule;
    int n_trained_betas;
    float trained_betas[SCHED_MAX_TRAIN];
    sd_prediction prediction_type;
    sched_spacing timestep_spacing;
    int steps_offset;
    int clip_sample;
    double clip_sample_range;
    int set_alpha_to_one;
    int rescale_betas_zero_snr;
    int use_karras_sigmas, use_exponential_sigmas;
    int final_sigmas_min;        /* final_sigmas_type: 0 "zero", 1 "sigma_min" */
    int interpolation_log;       /* interpolation_type: 0 "linear", 1 "log_linear" */
    int timestep_continuous;     /* timestep_type: 0 "discrete", 1 "continuous" */
    double sigma_min, sigma_max; /* NAN when null */
    int skip_prk_steps;
    int solver_order;
    sched_algorithm algorithm_type;
    char solver_type[16]; /* as written: DPM reads midpoint/heun, UniPC bh1/bh2 */
    int lower_order_final, euler_at_final;
    double lambda_min_clipped; /* -inf by default */
    int predict_x0;
    int n_disable_corrector;
    int disable_corrector[16];
    int original_inference_steps;
    double timestep_scaling;
} sched_config;

/* No field set: every sampler takes its own class defaults. */
void sched_config_empty(sched_config *c);
/* runwayml/stable-diffusion-v1-5's scheduler_config.json (PNDMScheduler,
 * scaled_linear 0.00085..0.012, steps_offset 1, skip_prk_steps, no spacing
 * key): the schedule SD1.x single files and make-model get. */
void sched_config_sd15(sched_config *c);
/* The config of a known family: "sd15" (as above), "sd2" (SD2.x base: PNDM,
 * epsilon), "sd2-v" (SD2.x 768: DDIM, v_prediction), "sd-turbo" (Euler,
 * trailing), "lcm" (LCMScheduler as LCM-Dreamshaper-v7 ships it), "sdxl"
 * (SDXL base: Euler, leading), "sdxl-turbo" (Euler ancestral, trailing),
 * "sdxl-lightning" (SDXL's config with trailing spacing, as its card says).
 * EASEL_EINVAL for another name. */
easel_err sched_config_family(sched_config *c, const char *family);

/* Parses scheduler_config.json text over *c (fields it gives replace those of
 * *c). Keys starting with '_' other than _class_name are metadata, as in
 * diffusers. EASEL_EUNSUPPORTED naming the field for an unknown key or an
 * unsupported value, EASEL_EFORMAT for malformed JSON or a wrong type; *c is
 * unchanged on error. */
easel_err sched_config_from_json(sched_config *c, const char *json);
/* The config as scheduler_config.json text (malloc'd; NULL when out of
 * memory): _class_name and every field set, as make-model writes it. */
char *sched_config_to_json(const sched_config *c);

/* The sampler a diffusers scheduler class name stands for (the model's own
 * sampler), or -1 if we do not implement that class. */
int sched_class_sampler(const char *class_name);
/* The diffusers class a sampler is built as ("EulerDiscreteScheduler"). */
const char *sampler_class_name(sampler_kind k);
/* "epsilon", "v_prediction", "sample"; parse returns -1 if unknown. */
const char *prediction_name(sd_prediction p);
int prediction_parse(const char *s);

#endif
