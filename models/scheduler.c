/* scheduler_config.json as diffusers' ConfigMixin reads it (see scheduler.h):
 * a table of the fields the implemented scheduler classes take, each parsed
 * into sched_config with a "set" bit; the families' known configs; sampler
 * and schedule names. */
#include "scheduler.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

/* ---- names ---- */

static const char *const sampler_names[SAMPLER_COUNT] = {
    "euler_a", "euler", "ddim", "dpmpp_2m_karras", "pndm", "heun", "dpmpp_2m",
    "unipc",   "lcm",   "tcd"};
static const char *const sampler_classes[SAMPLER_COUNT] = {"EulerAncestralDiscreteScheduler",
                                                           "EulerDiscreteScheduler",
                                                           "DDIMScheduler",
                                                           "DPMSolverMultistepScheduler",
                                                           "PNDMScheduler",
                                                           "HeunDiscreteScheduler",
                                                           "DPMSolverMultistepScheduler",
                                                           "UniPCMultistepScheduler",
                                                           "LCMScheduler",
                                                           "TCDScheduler"};
static const char *const schedule_names[SCHEDULE_COUNT] = {
    "default", "karras", "exponential", "uniform", "linspace", "leading", "trailing"};
static const char *const prediction_names[PRED_COUNT] = {"epsilon", "v_prediction", "sample"};

const char *sampler_name(sampler_kind s) {
    if (s == SAMPLER_DEFAULT) return "default";
    return (unsigned)s < SAMPLER_COUNT ? sampler_names[s] : "unknown";
}

int sampler_parse(const char *s) {
    for (int i = 0; s && i < SAMPLER_COUNT; i++)
        if (!strcmp(s, sampler_names[i])) return i;
    return -1;
}

const char *sampler_choices(void) {
    return "euler_a, euler, ddim, dpmpp_2m_karras, pndm, heun, dpmpp_2m, unipc, lcm, tcd";
}

const char *schedule_name(sched_schedule s) {
    return (unsigned)s < SCHEDULE_COUNT ? schedule_names[s] : "unknown";
}

int schedule_parse(const char *s) {
    for (int i = 0; s && i < SCHEDULE_COUNT; i++)
        if (!strcmp(s, schedule_names[i])) return i;
    return -1;
}

const char *schedule_choices(void) {
    return "default, karras, exponential, uniform, linspace, leading, trailing";
}

const char *sampler_class_name(sampler_kind k) {
    return (unsigned)k < SAMPLER_COUNT ? sampler_classes[k] : "?";
}

int sched_class_sampler(const char *class_name) {
    /* DPMSolverMultistep is the model's own as configured (dpmpp_2m), not the Karras preset */
    for (int i = 0; class_name && i < SAMPLER_COUNT; i++)
        if (i != SAMPLER_DPMPP_2M_KARRAS && !strcmp(class_name, sampler_classes[i])) return i;
    return -1;
}

const char *prediction_name(sd_prediction p) {
    return (unsigned)p < PRED_COUNT ? prediction_names[p] : "unknown";
}

int prediction_parse(const char *s) {
    for (int i = 0; s && i < PRED_COUNT; i++)
        if (!strcmp(s, prediction_names[i])) return i;
    return -1;
}

/* ---- known configs ---- */

void sched_config_empty(sched_config *c) {
    memset(c, 0, sizeof *c);
    c->num_train_timesteps = 1000;
    c->sigma_min = c->sigma_max = NAN;
    c->lambda_min_clipped = -INFINITY;
    c->solver_order = 2;
}

/* runwayml/stable-diffusion-v1-5 */
static const char *const sd15_json =
    "{\"_class_name\": \"PNDMScheduler\", \"beta_end\": 0.012, \"beta_schedule\": "
    "\"scaled_linear\", \"beta_start\": 0.00085, \"clip_sample\": false, \"num_train_timesteps\": "
    "1000, \"set_alpha_to_one\": false, \"skip_prk_steps\": true, \"steps_offset\": 1, "
    "\"trained_betas\": null}";
/* stabilityai/stable-diffusion-2-base */
static const char *const sd2_json =
    "{\"_class_name\": \"PNDMScheduler\", \"beta_end\": 0.012, \"beta_schedule\": "
    "\"scaled_linear\", \"beta_start\": 0.00085, \"clip_sample\": false, \"num_train_timesteps\": "
    "1000, \"prediction_type\": \"epsilon\", \"set_alpha_to_one\": false, \"skip_prk_steps\": "
    "true, \"steps_offset\": 1, \"trained_betas\": null}";
/* stabilityai/stable-diffusion-2-1 (768, v-prediction) */
static const char *const sd2v_json =
    "{\"_class_name\": \"DDIMScheduler\", \"beta_end\": 0.012, \"beta_schedule\": "
    "\"scaled_linear\", \"beta_start\": 0.00085, \"clip_sample\": false, \"num_train_timesteps\": "
    "1000, \"prediction_type\": \"v_prediction\", \"set_alpha_to_one\": false, "
    "\"skip_prk_steps\": true, \"steps_offset\": 1, \"trained_betas\": null}";
/* stabilityai/sd-turbo */
static const char *const turbo_json =
    "{\"_class_name\": \"EulerDiscreteScheduler\", \"beta_end\": 0.012, \"beta_schedule\": "
    "\"scaled_linear\", \"beta_start\": 0.00085, \"clip_sample\": false, \"interpolation_type\": "
    "\"linear\", \"num_train_timesteps\": 1000, \"prediction_type\": \"epsilon\", "
    "\"sample_max_value\": 1.0, \"set_alpha_to_one\": false, \"skip_prk_steps\": true, "
    "\"steps_offset\": 1, \"timestep_spacing\": \"trailing\", \"trained_betas\": null, "
    "\"use_karras_sigmas\": false}";
/* SimianLuo/LCM_Dreamshaper_v7 */
static const char *const lcm_json =
    "{\"_class_name\": \"LCMScheduler\", \"beta_end\": 0.012, \"beta_schedule\": "
    "\"scaled_linear\", \"beta_start\": 0.00085, \"clip_sample\": false, \"clip_sample_range\": "
    "1.0, \"dynamic_thresholding_ratio\": 0.995, \"num_train_timesteps\": 1000, "
    "\"original_inference_steps\": 50, \"prediction_type\": \"epsilon\", "
    "\"rescale_betas_zero_snr\": false, \"sample_max_value\": 1.0, \"set_alpha_to_one\": true, "
    "\"steps_offset\": 1, \"thresholding\": false, \"timestep_scaling\": 10.0, "
    "\"timestep_spacing\": \"leading\", \"trained_betas\": null}";

/* stabilityai/stable-diffusion-xl-base-1.0 */
static const char *const sdxl_json =
    "{\"_class_name\": \"EulerDiscreteScheduler\", \"beta_end\": 0.012, \"beta_schedule\": "
    "\"scaled_linear\", \"beta_start\": 0.00085, \"clip_sample\": false, \"interpolation_type\": "
    "\"linear\", \"num_train_timesteps\": 1000, \"prediction_type\": \"epsilon\", "
    "\"sample_max_value\": 1.0, \"set_alpha_to_one\": false, \"skip_prk_steps\": true, "
    "\"steps_offset\": 1, \"timestep_spacing\": \"leading\", \"trained_betas\": null, "
    "\"use_karras_sigmas\": false}";
/* stabilityai/sdxl-turbo: Euler ancestral, trailing */
static const char *const sdxl_turbo_json =
    "{\"_class_name\": \"EulerAncestralDiscreteScheduler\", \"beta_end\": 0.012, "
    "\"beta_schedule\": \"scaled_linear\", \"beta_start\": 0.00085, \"clip_sample\": false, "
    "\"interpolation_type\": \"linear\", \"num_train_timesteps\": 1000, \"prediction_type\": "
    "\"epsilon\", \"sample_max_value\": 1.0, \"set_alpha_to_one\": false, \"skip_prk_steps\": "
    "true, \"steps_offset\": 1, \"timestep_spacing\": \"trailing\", \"trained_betas\": null, "
    "\"use_karras_sigmas\": false}";
/* ByteDance/SDXL-Lightning's model card: EulerDiscreteScheduler.from_config(
 * <SDXL base's config>, timestep_spacing="trailing") */
static const char *const sdxl_lightning_json =
    "{\"_class_name\": \"EulerDiscreteScheduler\", \"beta_end\": 0.012, \"beta_schedule\": "
    "\"scaled_linear\", \"beta_start\": 0.00085, \"clip_sample\": false, \"interpolation_type\": "
    "\"linear\", \"num_train_timesteps\": 1000, \"prediction_type\": \"epsilon\", "
    "\"sample_max_value\": 1.0, \"set_alpha_to_one\": false, \"skip_prk_steps\": true, "
    "\"steps_offset\": 1, \"timestep_spacing\": \"trailing\", \"trained_betas\": null, "
    "\"use_karras_sigmas\": false}";

void sched_config_sd15(sched_config *c) {
    sched_config_empty(c);
    if (sched_config_from_json(c, sd15_json)) easel_clearerr(); /* a constant: cannot fail */
}

easel_err sched_config_family(sched_config *c, const char *family) {
    static const struct {
        const char *name, *json;
    } fam[] = {{"sd15", NULL},
               {"tiny", NULL},
               {"sd2", sd2_json},
               {"sd2-v", sd2v_json},
               {"sd-turbo", turbo_json},
               {"lcm", lcm_json},
               {"sdxl", sdxl_json},
               {"sdxl-turbo", sdxl_turbo_json},
               {"sdxl-lightning", sdxl_lightning_json}};
    for (size_t i = 0; i < sizeof fam / sizeof *fam; i++) {
        if (strcmp(family, fam[i].name)) continue;
        sched_config_empty(c);
        return sched_config_from_json(c, fam[i].json ? fam[i].json : sd15_json);
    }
    return easel_seterr(EASEL_EINVAL,
                        "unknown model family '%s' (sd15, sd2, sd2-v, sd-turbo, lcm, sdxl, "
                        "sdxl-turbo, sdxl-lightning)",
                        family);
}

/* ---- reading ---- */

typedef enum { FT_INT, FT_FLOAT, FT_BOOL, FT_ENUM, FT_BETAS, FT_INTS, FT_STR } field_type;

typedef struct {
    const char *key;
    int id;
    field_type type;
    const char *choices; /* FT_ENUM: "a|b|c" (index = value) */
} field_def;

static const field_def fields[] = {
    {"num_train_timesteps", SF_NUM_TRAIN, FT_INT, NULL},
    {"beta_start", SF_BETA_START, FT_FLOAT, NULL},
    {"beta_end", SF_BETA_END, FT_FLOAT, NULL},
    {"beta_schedule", SF_BETA_SCHEDULE, FT_ENUM, "linear|scaled_linear|squaredcos_cap_v2|exp"},
    {"trained_betas", SF_TRAINED_BETAS, FT_BETAS, NULL},
    {"prediction_type", SF_PREDICTION, FT_ENUM, "epsilon|v_prediction|sample"},
    {"timestep_spacing", SF_SPACING, FT_ENUM, "linspace|leading|trailing"},
    {"steps_offset", SF_STEPS_OFFSET, FT_INT, NULL},
    {"clip_sample", SF_CLIP_SAMPLE, FT_BOOL, NULL},
    {"clip_sample_range", SF_CLIP_RANGE, FT_FLOAT, NULL},
    {"set_alpha_to_one", SF_ALPHA_TO_ONE, FT_BOOL, NULL},
    {"rescale_betas_zero_snr", SF_ZERO_SNR, FT_BOOL, NULL},
    {"use_karras_sigmas", SF_KARRAS, FT_BOOL, NULL},
    {"use_exponential_sigmas", SF_EXPONENTIAL, FT_BOOL, NULL},
    {"final_sigmas_type", SF_FINAL_SIGMAS, FT_ENUM, "zero|sigma_min"},
    {"interpolation_type", SF_INTERPOLATION, FT_ENUM, "linear|log_linear"},
    {"timestep_type", SF_TIMESTEP_TYPE, FT_ENUM, "discrete|continuous"},
    {"sigma_min", SF_SIGMA_MIN, FT_FLOAT, NULL},
    {"sigma_max", SF_SIGMA_MAX, FT_FLOAT, NULL},
    {"skip_prk_steps", SF_SKIP_PRK, FT_BOOL, NULL},
    {"solver_order", SF_SOLVER_ORDER, FT_INT, NULL},
    /* "deis" is read as dpmsolver++ by DPMSolverMultistepScheduler itself */
    {"algorithm_type", SF_ALGORITHM, FT_ENUM, "dpmsolver++|dpmsolver|deis"},
    {"solver_type", SF_SOLVER_TYPE, FT_STR, NULL},
    {"lower_order_final", SF_LOWER_ORDER_FINAL, FT_BOOL, NULL},
    {"euler_at_final", SF_EULER_AT_FINAL, FT_BOOL, NULL},
    {"lambda_min_clipped", SF_LAMBDA_MIN_CLIPPED, FT_FLOAT, NULL},
    {"predict_x0", SF_PREDICT_X0, FT_BOOL, NULL},
    {"disable_corrector", SF_DISABLE_CORRECTOR, FT_INTS, NULL},
    {"original_inference_steps", SF_ORIGINAL_STEPS, FT_INT, NULL},
    {"timestep_scaling", SF_TIMESTEP_SCALING, FT_FLOAT, NULL},
};

/* Fields that only matter with a feature switched on that we refuse below:
 * any value is accepted, as they change nothing. */
static const char *const inert[] = {"dynamic_thresholding_ratio", "sample_max_value", "flow_shift",
                                    "time_shift_type"};

/* Features we do not implement: accepted only at their off value. */
static const char *const off_only[] = {"thresholding",    "use_beta_sigmas",      "use_lu_lambdas",
                                       "use_flow_sigmas", "use_dynamic_shifting", "variance_type",
                                       "solver_p",        "shift_terminal"};

static int enum_index(const char *choices, const char *v) {
    int i = 0;
    for (const char *p = choices; *p; i++) {
        const char *bar = strchr(p, '|');
        size_t n = bar ? (size_t)(bar - p) : strlen(p);
        if (strlen(v) == n && !strncmp(p, v, n)) return i;
        if (!bar) break;
        p = bar + 1;
    }
    return -1;
}

static easel_err bad_type(const char *key, const char *want) {
    return easel_seterr(EASEL_EFORMAT, "scheduler config: %s must be %s", key, want);
}

static easel_err set_betas(sched_config *c, const cJSON *it) {
    int n = cJSON_GetArraySize(it), k = 0;
    if (n < 1 || n > SCHED_MAX_TRAIN)
        return easel_seterr(EASEL_EUNSUPPORTED,
                            "scheduler config: trained_betas has %d values "
                            "(1..%d supported)",
                            n, SCHED_MAX_TRAIN);
    const cJSON *e;
    cJSON_ArrayForEach(e, it) {
        if (!cJSON_IsNumber(e)) return bad_type("trained_betas", "a list of numbers");
        c->trained_betas[k++] = (float)e->valuedouble; /* torch.tensor(..., float32) */
    }
    c->n_trained_betas = n;
    return EASEL_OK;
}

static easel_err set_field(sched_config *c, const field_def *f, const cJSON *it) {
    double d = cJSON_IsNumber(it) ? it->valuedouble : 0;
    int b = cJSON_IsTrue(it);
    if (cJSON_IsNull(it)) { /* None: the class default (booleans: false) */
        if (f->type == FT_BOOL)
            it = NULL;
        else if (f->id == SF_TRAINED_BETAS || f->id == SF_SIGMA_MIN || f->id == SF_SIGMA_MAX)
            return EASEL_OK;
        else
            return bad_type(f->key, "set (not null)");
    }
    switch (f->type) {
    case FT_INT:
        if (!cJSON_IsNumber(it) || d != floor(d) || fabs(d) > 1e6)
            return bad_type(f->key, "an integer");
        break;
    case FT_FLOAT:
        if (!cJSON_IsNumber(it)) return bad_type(f->key, "a number");
        break;
    case FT_BOOL:
        if (it && !cJSON_IsBool(it)) return bad_type(f->key, "true or false");
        break;
    case FT_ENUM:
    case FT_STR:
        if (!cJSON_IsString(it)) return bad_type(f->key, "a string");
        if (f->type == FT_ENUM && enum_index(f->choices, it->valuestring) < 0)
            return easel_seterr(EASEL_EUNSUPPORTED,
                                "scheduler config: %s \"%s\" is not supported (choices: %s)",
                                f->key, it->valuestring, f->choices);
        break;
    case FT_BETAS:
    case FT_INTS:
        if (!cJSON_IsArray(it)) return bad_type(f->key, "a list");
        break;
    }
    int e = f->type == FT_ENUM ? enum_index(f->choices, it->valuestring) : 0;
    switch (f->id) {
    case SF_NUM_TRAIN:
        if (d < 1 || d > SCHED_MAX_TRAIN)
            return easel_seterr(EASEL_EUNSUPPORTED,
                                "scheduler config: num_train_timesteps %g is not supported "
                                "(1..%d)",
                                d, SCHED_MAX_TRAIN);
        c->num_train_timesteps = (int)d;
        break;
    case SF_BETA_START:
        c->beta_start = d;
        break;
    case SF_BETA_END:
        c->beta_end = d;
        break;
    case SF_BETA_SCHEDULE:
        c->beta_schedule = (sched_betas)e;
        break;
    case SF_TRAINED_BETAS:
        return set_betas(c, it);
    case SF_PREDICTION:
        c->prediction_type = (sd_prediction)e;
        break;
    case SF_SPACING:
        c->timestep_spacing = (sched_spacing)e;
        break;
    case SF_STEPS_OFFSET:
        c->steps_offset = (int)d;
        break;
    case SF_CLIP_SAMPLE:
        c->clip_sample = b;
        break;
    case SF_CLIP_RANGE:
        c->clip_sample_range = d;
        break;
    case SF_ALPHA_TO_ONE:
        c->set_alpha_to_one = b;
        break;
    case SF_ZERO_SNR:
        c->rescale_betas_zero_snr = b;
        break;
    case SF_KARRAS:
        c->use_karras_sigmas = b;
        break;
    case SF_EXPONENTIAL:
        c->use_exponential_sigmas = b;
        break;
    case SF_FINAL_SIGMAS:
        c->final_sigmas_min = e;
        break;
    case SF_INTERPOLATION:
        c->interpolation_log = e;
        break;
    case SF_TIMESTEP_TYPE:
        c->timestep_continuous = e;
        break;
    case SF_SIGMA_MIN:
        c->sigma_min = d;
        break;
    case SF_SIGMA_MAX:
        c->sigma_max = d;
        break;
    case SF_SKIP_PRK:
        c->skip_prk_steps = b;
        break;
    case SF_SOLVER_ORDER:
        if (d < 1 || d > 3)
            return easel_seterr(EASEL_EUNSUPPORTED,
                                "scheduler config: solver_order %g is not supported (1, 2, 3)", d);
        c->solver_order = (int)d;
        break;
    case SF_ALGORITHM:
        c->algorithm_type = e == 1 ? ALGO_DPMSOLVER : ALGO_DPMSOLVER_PP;
        break;
    case SF_SOLVER_TYPE:
        if (enum_index("midpoint|heun|logrho|bh1|bh2", it->valuestring) < 0)
            return easel_seterr(EASEL_EUNSUPPORTED,
                                "scheduler config: solver_type \"%s\" is not supported (midpoint, "
                                "heun, logrho, bh1, bh2)",
                                it->valuestring);
        snprintf(c->solver_type, sizeof c->solver_type, "%s", it->valuestring);
        break;
    case SF_LOWER_ORDER_FINAL:
        c->lower_order_final = b;
        break;
    case SF_EULER_AT_FINAL:
        c->euler_at_final = b;
        break;
    case SF_LAMBDA_MIN_CLIPPED:
        c->lambda_min_clipped = d;
        break;
    case SF_PREDICT_X0:
        c->predict_x0 = b;
        break;
    case SF_DISABLE_CORRECTOR: {
        const cJSON *x;
        int n = 0;
        cJSON_ArrayForEach(x, it) {
            if (!cJSON_IsNumber(x) || n >= 16) return bad_type(f->key, "a list of up to 16 ints");
            c->disable_corrector[n++] = x->valueint;
        }
        c->n_disable_corrector = n;
        break;
    }
    case SF_ORIGINAL_STEPS:
        if (d < 1 || d > SCHED_MAX_TRAIN)
            return easel_seterr(EASEL_EUNSUPPORTED,
                                "scheduler config: original_inference_steps %g not in [1, %d]", d,
                                SCHED_MAX_TRAIN);
        c->original_inference_steps = (int)d;
        break;
    case SF_TIMESTEP_SCALING:
        c->timestep_scaling = d;
        break;
    }
    return EASEL_OK;
}

static easel_err check_off(const char *key, const cJSON *it) {
    int off = cJSON_IsNull(it) || cJSON_IsFalse(it);
    if (off) return EASEL_OK;
    return easel_seterr(EASEL_EUNSUPPORTED, "scheduler config: %s is not supported (only %s)", key,
                        !strcmp(key, "variance_type") || !strcmp(key, "solver_p") ||
                                !strcmp(key, "shift_terminal")
                            ? "null"
                            : "false");
}

static easel_err read_item(sched_config *c, const cJSON *it) {
    const char *key = it->string;
    if (key[0] == '_') { /* ConfigMixin drops private keys; we keep the class name */
        if (!strcmp(key, "_class_name")) {
            if (!cJSON_IsString(it)) return bad_type(key, "a string");
            snprintf(c->class_name, sizeof c->class_name, "%s", it->valuestring);
        }
        return EASEL_OK;
    }
    for (size_t i = 0; i < sizeof fields / sizeof *fields; i++) {
        if (strcmp(key, fields[i].key)) continue;
        easel_err e = set_field(c, &fields[i], it);
        if (!e && !(cJSON_IsNull(it) && fields[i].type != FT_BOOL)) c->set |= 1u << fields[i].id;
        return e;
    }
    for (size_t i = 0; i < sizeof inert / sizeof *inert; i++)
        if (!strcmp(key, inert[i])) return EASEL_OK;
    for (size_t i = 0; i < sizeof off_only / sizeof *off_only; i++)
        if (!strcmp(key, off_only[i])) return check_off(key, it);
    return easel_seterr(EASEL_EUNSUPPORTED,
                        "scheduler config: unknown field '%s' (not a field of the diffusers "
                        "schedulers easel implements: %s)",
                        key, sampler_choices());
}

easel_err sched_config_from_json(sched_config *c, const char *json) {
    cJSON *root = cJSON_Parse(json);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return easel_seterr(EASEL_EFORMAT, "scheduler config: not a JSON object");
    }
    sched_config *t = malloc(sizeof *t);
    if (!t) {
        cJSON_Delete(root);
        return easel_seterr(EASEL_ENOMEM, "out of memory");
    }
    *t = *c;
    easel_err e = EASEL_OK;
    const cJSON *it;
    cJSON_ArrayForEach(it, root) {
        if ((e = read_item(t, it))) break;
    }
    if (!e && t->use_karras_sigmas && t->use_exponential_sigmas)
        e = easel_seterr(EASEL_EUNSUPPORTED, "scheduler config: use_karras_sigmas and "
                                             "use_exponential_sigmas are both set");
    if (!e) *c = *t;
    free(t);
    cJSON_Delete(root);
    return e;
}

/* ---- writing ---- */

static const char *enum_at(const char *choices, int i, char *buf, size_t len) {
    const char *p = choices;
    for (int k = 0; k < i && p; k++) {
        p = strchr(p, '|');
        if (p) p++;
    }
    if (!p) return "";
    const char *bar = strchr(p, '|');
    snprintf(buf, len, "%.*s", (int)(bar ? (size_t)(bar - p) : strlen(p)), p);
    return buf;
}

static void add_field(cJSON *o, const sched_config *c, const field_def *f) {
    char buf[32];
    double num = 0;
    int flag = 0, e = 0;
    switch (f->id) {
    case SF_NUM_TRAIN:
        num = c->num_train_timesteps;
        break;
    case SF_BETA_START:
        num = c->beta_start;
        break;
    case SF_BETA_END:
        num = c->beta_end;
        break;
    case SF_BETA_SCHEDULE:
        e = c->beta_schedule;
        break;
    case SF_PREDICTION:
        e = c->prediction_type;
        break;
    case SF_SPACING:
        e = c->timestep_spacing;
        break;
    case SF_STEPS_OFFSET:
        num = c->steps_offset;
        break;
    case SF_CLIP_SAMPLE:
        flag = c->clip_sample;
        break;
    case SF_CLIP_RANGE:
        num = c->clip_sample_range;
        break;
    case SF_ALPHA_TO_ONE:
        flag = c->set_alpha_to_one;
        break;
    case SF_ZERO_SNR:
        flag = c->rescale_betas_zero_snr;
        break;
    case SF_KARRAS:
        flag = c->use_karras_sigmas;
        break;
    case SF_EXPONENTIAL:
        flag = c->use_exponential_sigmas;
        break;
    case SF_FINAL_SIGMAS:
        e = c->final_sigmas_min;
        break;
    case SF_INTERPOLATION:
        e = c->interpolation_log;
        break;
    case SF_TIMESTEP_TYPE:
        e = c->timestep_continuous;
        break;
    case SF_SIGMA_MIN:
        num = c->sigma_min;
        break;
    case SF_SIGMA_MAX:
        num = c->sigma_max;
        break;
    case SF_SKIP_PRK:
        flag = c->skip_prk_steps;
        break;
    case SF_SOLVER_ORDER:
        num = c->solver_order;
        break;
    case SF_ALGORITHM:
        e = c->algorithm_type;
        break;
    case SF_LOWER_ORDER_FINAL:
        flag = c->lower_order_final;
        break;
    case SF_EULER_AT_FINAL:
        flag = c->euler_at_final;
        break;
    case SF_LAMBDA_MIN_CLIPPED:
        num = c->lambda_min_clipped;
        break;
    case SF_PREDICT_X0:
        flag = c->predict_x0;
        break;
    case SF_ORIGINAL_STEPS:
        num = c->original_inference_steps;
        break;
    case SF_TIMESTEP_SCALING:
        num = c->timestep_scaling;
        break;
    }
    if (f->id == SF_TRAINED_BETAS)
        cJSON_AddItemToObject(o, f->key,
                              cJSON_CreateFloatArray(c->trained_betas, c->n_trained_betas));
    else if (f->id == SF_DISABLE_CORRECTOR)
        cJSON_AddItemToObject(o, f->key,
                              cJSON_CreateIntArray(c->disable_corrector, c->n_disable_corrector));
    else if (f->id == SF_SOLVER_TYPE)
        cJSON_AddStringToObject(o, f->key, c->solver_type);
    else if (f->type == FT_BOOL)
        cJSON_AddBoolToObject(o, f->key, flag);
    else if (f->type == FT_ENUM)
        cJSON_AddStringToObject(o, f->key, enum_at(f->choices, e, buf, sizeof buf));
    else if (isinf(num)) /* JSON has no infinity: -inf is the default, leave it out */
        return;
    else
        cJSON_AddNumberToObject(o, f->key, num);
}

char *sched_config_to_json(const sched_config *c) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    if (c->class_name[0]) cJSON_AddStringToObject(o, "_class_name", c->class_name);
    for (size_t i = 0; i < sizeof fields / sizeof *fields; i++)
        if (c->set & (1u << fields[i].id)) add_field(o, c, &fields[i]);
    char *s = cJSON_Print(o);
    cJSON_Delete(o);
    return s;
}
