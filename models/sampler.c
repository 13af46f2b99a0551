/* Samplers written from diffusers 0.42's scheduler classes (see sampler.h).
 * A scheduler config is resolved per class (the class's defaults for what
 * the file leaves out), the tables are built the way torch/numpy build them
 * (float32 tables, float64 numpy spacing and interpolation, numpy's arange
 * and round-half-even), and the updates follow torch's float32 operation
 * order, so that step updates agree with diffusers to ~1e-7. */
#include "sampler.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "denoiser.h"

#define NBUF 8

struct sampler {
    sampler_kind kind;
    sched_config c; /* resolved for this class */
    sd_prediction pred;
    int steps; /* the pipeline's num_inference_steps */
    int evals; /* len(timesteps) */
    int order; /* scheduler.order (Heun 2) for the progress bar */
    int T;     /* num_train_timesteps */
    float eta;
    float ac[SCHED_MAX_TRAIN]; /* alphas_cumprod (float32, as torch) */
    float final_ac;            /* final_alpha_cumprod */
    float *timesteps;          /* [evals] */
    float *sigmas;             /* [nsig] */
    int nsig;
    int next;  /* the evaluation sampler_step expects next */
    int begin; /* the first evaluation run (img2img: t_start·order; 0 for txt2img) */
    int64_t n; /* latent size, fixed by the first step */
    float *buf[NBUF];
    /* multistep state */
    int counter, nets, lower_order_nums, this_order, have_last, first_order;
    float heun_dt;
};

/* ---- numpy / torch helpers ---- */

/* torch.linspace(start, end, n, float32) on the CPU: float step, the second
 * half counted back from the end. */
static void torch_linspace_f32(float start, float end, int n, float *out) {
    float step = n > 1 ? (end - start) / (float)(n - 1) : 0.0f;
    for (int i = 0; i < n; i++)
        out[i] = i < n / 2 ? start + step * (float)i : end - step * (float)(n - 1 - i);
    if (n == 1) out[0] = start;
}

/* np.linspace(start, stop, num, endpoint): i·step + start, the last = stop. */
static double np_linspace_at(double start, double stop, int num, int endpoint, int i) {
    int div = endpoint ? num - 1 : num;
    if (div <= 0) return start; /* numpy: step nan, y = i·delta = 0 for the one point */
    double step = (stop - start) / div;
    if (endpoint && num > 1 && i == num - 1) return stop;
    return (double)i * step + start;
}

/* np.arange(start, stop, step) for floats: ceil((stop-start)/step) points,
 * start + i·delta with delta = (start + step) − start. Returns the count. */
static int np_arange(double start, double stop, double step, double *out, int max) {
    double len = ceil((stop - start) / step);
    int n = len > 0 ? (int)len : 0;
    if (n > max) n = max;
    double delta = (start + step) - start;
    for (int i = 0; i < n; i++)
        out[i] = i == 0 ? start : start + (double)i * delta;
    return n;
}

/* np.interp(t, arange(len), fp) with fp float32 values. */
static double np_interp(const float *fp, int len, double t) {
    if (t <= 0) return fp[0];
    if (t >= len - 1) return fp[len - 1];
    int j = (int)floor(t);
    double lo = fp[j], hi = fp[j + 1];
    return (hi - lo) * (t - j) + lo;
}

/* _sigma_to_t: the fractional index of log(sigma) among the float32 log
 * train sigmas (ascending), numpy's mixed float32/float64 arithmetic. */
static double sigma_to_t(const float *log_sigmas, int T, double sigma) {
    double ls = log(sigma > 1e-10 ? sigma : 1e-10);
    int low = 0;
    for (int k = 0; k < T; k++)
        if (ls - (double)log_sigmas[k] >= 0) low = k;
    if (low > T - 2) low = T - 2;
    float lo = log_sigmas[low], hi = log_sigmas[low + 1];
    double w = ((double)lo - ls) / (double)(float)(lo - hi);
    w = w < 0 ? 0 : (w > 1 ? 1 : w);
    return (1 - w) * low + w * (low + 1);
}

static double karras_at(double smin, double smax, int n, int i) {
    double ramp = np_linspace_at(0, 1, n, 1, i);
    double min_inv = pow(smin, 1.0 / 7.0), max_inv = pow(smax, 1.0 / 7.0);
    return pow(max_inv + ramp * (min_inv - max_inv), 7.0);
}

static double exponential_at(double smin, double smax, int n, int i) {
    return exp(np_linspace_at(log(smax), log(smin), n, 1, i));
}

/* ---- class defaults (from_config: the class's __init__ defaults) ---- */

static void class_defaults(sampler_kind k, sched_config *d) {
    sched_config_empty(d);
    d->beta_start = 0.0001, d->beta_end = 0.02, d->beta_schedule = BETAS_LINEAR;
    d->prediction_type = PRED_EPSILON;
    d->clip_sample_range = 1.0;
    d->lower_order_final = 1;
    d->predict_x0 = 1;
    d->original_inference_steps = 50;
    d->timestep_scaling = 10.0;
    snprintf(d->solver_type, sizeof d->solver_type, "%s", k == SAMPLER_UNIPC ? "bh2" : "midpoint");
    switch (k) {
    case SAMPLER_DDIM:
        d->clip_sample = 1, d->set_alpha_to_one = 1, d->timestep_spacing = SPACING_LEADING;
        break;
    case SAMPLER_PNDM:
        d->timestep_spacing = SPACING_LEADING;
        break;
    case SAMPLER_HEUN:
        d->beta_start = 0.00085, d->beta_end = 0.012;
        break;
    case SAMPLER_LCM:
    case SAMPLER_TCD:
        d->beta_start = 0.00085, d->beta_end = 0.012, d->beta_schedule = BETAS_SCALED_LINEAR;
        d->set_alpha_to_one = 1, d->timestep_spacing = SPACING_LEADING;
        break;
    default:
        break;
    }
}

/* Fields the file set replace the class defaults. */
static void resolve(const sched_config *cfg, sampler_kind k, sched_config *r) {
    class_defaults(k, r);
    unsigned set = cfg->set;
#define TAKE(bit, field)                                                                           \
    if (set & (1u << (bit))) r->field = cfg->field
    TAKE(SF_NUM_TRAIN, num_train_timesteps);
    TAKE(SF_BETA_START, beta_start);
    TAKE(SF_BETA_END, beta_end);
    TAKE(SF_BETA_SCHEDULE, beta_schedule);
    TAKE(SF_PREDICTION, prediction_type);
    TAKE(SF_SPACING, timestep_spacing);
    TAKE(SF_STEPS_OFFSET, steps_offset);
    TAKE(SF_CLIP_SAMPLE, clip_sample);
    TAKE(SF_CLIP_RANGE, clip_sample_range);
    TAKE(SF_ALPHA_TO_ONE, set_alpha_to_one);
    TAKE(SF_ZERO_SNR, rescale_betas_zero_snr);
    TAKE(SF_KARRAS, use_karras_sigmas);
    TAKE(SF_EXPONENTIAL, use_exponential_sigmas);
    TAKE(SF_FINAL_SIGMAS, final_sigmas_min);
    TAKE(SF_INTERPOLATION, interpolation_log);
    TAKE(SF_TIMESTEP_TYPE, timestep_continuous);
    TAKE(SF_SIGMA_MIN, sigma_min);
    TAKE(SF_SIGMA_MAX, sigma_max);
    TAKE(SF_SKIP_PRK, skip_prk_steps);
    TAKE(SF_SOLVER_ORDER, solver_order);
    TAKE(SF_ALGORITHM, algorithm_type);
    TAKE(SF_LOWER_ORDER_FINAL, lower_order_final);
    TAKE(SF_EULER_AT_FINAL, euler_at_final);
    TAKE(SF_LAMBDA_MIN_CLIPPED, lambda_min_clipped);
    TAKE(SF_PREDICT_X0, predict_x0);
    TAKE(SF_ORIGINAL_STEPS, original_inference_steps);
    TAKE(SF_TIMESTEP_SCALING, timestep_scaling);
#undef TAKE
    if (set & (1u << SF_TRAINED_BETAS)) {
        r->n_trained_betas = cfg->n_trained_betas;
        memcpy(r->trained_betas, cfg->trained_betas, sizeof(float) * (size_t)cfg->n_trained_betas);
    }
    if (set & (1u << SF_DISABLE_CORRECTOR)) {
        r->n_disable_corrector = cfg->n_disable_corrector;
        memcpy(r->disable_corrector, cfg->disable_corrector, sizeof r->disable_corrector);
    }
    /* each class maps the other's solver_type names to its own default */
    if (set & (1u << SF_SOLVER_TYPE)) {
        const char *v = cfg->solver_type;
        int dpm_name = !strcmp(v, "midpoint") || !strcmp(v, "heun");
        int uni_name = !strcmp(v, "bh1") || !strcmp(v, "bh2");
        if (k == SAMPLER_UNIPC)
            snprintf(r->solver_type, sizeof r->solver_type, "%s", uni_name ? v : "bh2");
        else
            snprintf(r->solver_type, sizeof r->solver_type, "%s", dpm_name ? v : "midpoint");
    }
    r->set = set;
    snprintf(r->class_name, sizeof r->class_name, "%s", sampler_class_name(k));
}

static int has_sigma_schedules(sampler_kind k) {
    return k == SAMPLER_EULER || k == SAMPLER_HEUN || k == SAMPLER_DPMPP_2M ||
           k == SAMPLER_DPMPP_2M_KARRAS || k == SAMPLER_UNIPC;
}
static int has_zero_snr(sampler_kind k) {
    return k != SAMPLER_PNDM && k != SAMPLER_HEUN;
}
/* classes that pin alphas_cumprod[-1] to 2^-24 after the zero-SNR rescale */
static int pins_last_alpha(sampler_kind k) {
    return k == SAMPLER_EULER || k == SAMPLER_EULER_A || k == SAMPLER_DPMPP_2M ||
           k == SAMPLER_DPMPP_2M_KARRAS || k == SAMPLER_UNIPC;
}

static easel_err apply_schedule(sampler_kind k, sched_schedule sch, sched_config *r) {
    if (sch == SCHEDULE_DEFAULT) return EASEL_OK;
    if ((sch == SCHEDULE_KARRAS || sch == SCHEDULE_EXPONENTIAL || sch == SCHEDULE_UNIFORM) &&
        !has_sigma_schedules(k))
        return easel_seterr(EASEL_EINVAL,
                            "schedule %s is not available for sampler %s (%s has no sigma "
                            "schedules; it takes default, linspace, leading, trailing)",
                            schedule_name(sch), sampler_name(k), sampler_class_name(k));
    if ((k == SAMPLER_LCM || k == SAMPLER_TCD))
        return easel_seterr(EASEL_EINVAL,
                            "schedule %s is not available for sampler %s (its timesteps come from "
                            "original_inference_steps; only default)",
                            schedule_name(sch), sampler_name(k));
    if (k == SAMPLER_DPMPP_2M_KARRAS && sch != SCHEDULE_KARRAS)
        return easel_seterr(EASEL_EINVAL,
                            "sampler dpmpp_2m_karras is dpmpp_2m with schedule karras: use sampler "
                            "dpmpp_2m with schedule %s",
                            schedule_name(sch));
    switch (sch) {
    case SCHEDULE_KARRAS:
        r->use_karras_sigmas = 1, r->use_exponential_sigmas = 0;
        break;
    case SCHEDULE_EXPONENTIAL:
        r->use_karras_sigmas = 0, r->use_exponential_sigmas = 1;
        break;
    case SCHEDULE_UNIFORM:
        r->use_karras_sigmas = r->use_exponential_sigmas = 0;
        break;
    case SCHEDULE_LINSPACE:
        r->timestep_spacing = SPACING_LINSPACE;
        break;
    case SCHEDULE_LEADING:
        r->timestep_spacing = SPACING_LEADING;
        break;
    case SCHEDULE_TRAILING:
        r->timestep_spacing = SPACING_TRAILING;
        break;
    default:
        break;
    }
    return EASEL_OK;
}

/* ---- betas and alphas_cumprod ---- */

static double alpha_bar(sched_betas b, double t) {
    if (b == BETAS_EXP) return exp(t * -12.0);
    double c = cos((t + 0.008) / 1.008 * M_PI / 2);
    return c * c;
}

/* cumprod of 1 - betas with torch's double accumulator */
static void cumprod_alphas(const float *betas, int T, float *ac) {
    double acc = 1.0;
    for (int i = 0; i < T; i++) {
        acc *= (double)(1.0f - betas[i]);
        ac[i] = (float)acc;
    }
}

/* rescale_zero_terminal_snr, in torch's float32 order */
static void rescale_zero_snr(float *betas, int T) {
    float ac[SCHED_MAX_TRAIN], s[SCHED_MAX_TRAIN];
    cumprod_alphas(betas, T, ac);
    for (int i = 0; i < T; i++)
        s[i] = sqrtf(ac[i]);
    float s0 = s[0], sT = s[T - 1];
    float scale = s0 / (s0 - sT);
    for (int i = 0; i < T; i++)
        s[i] = (s[i] - sT) * scale;
    float prev = 0;
    for (int i = 0; i < T; i++) {
        float ab = s[i] * s[i];
        float alpha = i == 0 ? ab : ab / prev;
        betas[i] = 1.0f - alpha;
        prev = ab;
    }
}

static easel_err make_alphas(sampler *s) {
    const sched_config *c = &s->c;
    int T = s->T;
    float betas[SCHED_MAX_TRAIN];
    if (c->n_trained_betas) {
        if (c->n_trained_betas != T)
            return easel_seterr(EASEL_EINVAL,
                                "scheduler config: %d trained_betas for %d train steps",
                                c->n_trained_betas, T);
        memcpy(betas, c->trained_betas, sizeof(float) * (size_t)T);
    } else if (c->beta_schedule == BETAS_LINEAR) {
        torch_linspace_f32((float)c->beta_start, (float)c->beta_end, T, betas);
    } else if (c->beta_schedule == BETAS_SCALED_LINEAR) {
        torch_linspace_f32((float)sqrt(c->beta_start), (float)sqrt(c->beta_end), T, betas);
        for (int i = 0; i < T; i++)
            betas[i] = betas[i] * betas[i];
    } else {
        if (c->beta_schedule == BETAS_EXP && s->kind != SAMPLER_HEUN)
            return easel_seterr(EASEL_EINVAL, "beta_schedule exp is only implemented by "
                                              "HeunDiscreteScheduler (sampler heun)");
        for (int i = 0; i < T; i++) {
            double t1 = (double)i / T, t2 = (double)(i + 1) / T;
            double b = 1 - alpha_bar(c->beta_schedule, t2) / alpha_bar(c->beta_schedule, t1);
            betas[i] = (float)(b < 0.999 ? b : 0.999);
        }
    }
    int zsnr = c->rescale_betas_zero_snr && has_zero_snr(s->kind);
    if (zsnr) rescale_zero_snr(betas, T);
    cumprod_alphas(betas, T, s->ac);
    if (zsnr && pins_last_alpha(s->kind)) s->ac[T - 1] = 0x1p-24f;
    s->final_ac = c->set_alpha_to_one ? 1.0f : s->ac[0];
    return EASEL_OK;
}

static float train_sigma(const sampler *s, int t) {
    return sqrtf((1.0f - s->ac[t]) / s->ac[t]);
}

/* ---- tables ---- */

static easel_err alloc_tables(sampler *s, int evals, int nsig) {
    s->timesteps = malloc(sizeof(float) * (size_t)(evals > 0 ? evals : 1));
    s->sigmas = malloc(sizeof(float) * (size_t)(nsig > 0 ? nsig : 1));
    if (!s->timesteps || !s->sigmas) return easel_seterr(EASEL_ENOMEM, "sampler: out of memory");
    s->evals = evals, s->nsig = nsig;
    return EASEL_OK;
}

#define MAXTS (SCHED_MAX_TRAIN + 2)

/* The spacing Euler, Euler a and Heun use (float32 timesteps). */
static int spaced_float(const sampler *s, double *ts) {
    int N = s->steps, T = s->T;
    const sched_config *c = &s->c;
    if (c->timestep_spacing == SPACING_LINSPACE) {
        for (int i = 0; i < N; i++)
            ts[i] = (float)np_linspace_at(0, T - 1, N, 1, N - 1 - i);
        return N;
    }
    if (c->timestep_spacing == SPACING_LEADING) {
        int ratio = T / N;
        for (int i = 0; i < N; i++)
            ts[i] = (float)nearbyint((double)(N - 1 - i) * ratio) + (float)c->steps_offset;
        return N;
    }
    int n = np_arange(T, 0, -(double)T / N, ts, MAXTS);
    for (int i = 0; i < n; i++)
        ts[i] = (float)nearbyint(ts[i]) - 1.0f;
    return n;
}

static void log_train_sigmas(const sampler *s, float *log_sigmas) {
    for (int k = 0; k < s->T; k++)
        log_sigmas[k] = logf(train_sigma(s, k));
}

static easel_err tables_euler(sampler *s) {
    const sched_config *c = &s->c;
    int N = s->steps, T = s->T;
    double ts[MAXTS], sig[MAXTS];
    float train[SCHED_MAX_TRAIN], log_sigmas[SCHED_MAX_TRAIN];
    for (int k = 0; k < T; k++)
        train[k] = train_sigma(s, k);
    log_train_sigmas(s, log_sigmas);
    int nts = spaced_float(s, ts), nsig = nts;
    int euler = s->kind == SAMPLER_EULER;
    if (euler && c->interpolation_log) {
        float ls[MAXTS];
        torch_linspace_f32(logf(train[T - 1]), logf(train[0]), N + 1, ls);
        for (int i = 0; i <= N; i++)
            sig[i] = expf(ls[i]);
        nsig = N + 1;
    } else {
        for (int i = 0; i < nts; i++)
            sig[i] = np_interp(train, T, ts[i]);
    }
    if (euler && (c->use_karras_sigmas || c->use_exponential_sigmas)) {
        /* EulerDiscrete has sigma_min/sigma_max in its config; Heun and DPM do not */
        double smin = isnan(c->sigma_min) ? sig[nsig - 1] : c->sigma_min;
        double smax = isnan(c->sigma_max) ? sig[0] : c->sigma_max;
        for (int i = 0; i < N; i++) {
            sig[i] = c->use_karras_sigmas ? karras_at(smin, smax, N, i)
                                          : exponential_at(smin, smax, N, i);
            ts[i] = sigma_to_t(log_sigmas, T, sig[i]);
        }
        nts = nsig = N;
    }
    float last = euler && c->final_sigmas_min ? train_sigma(s, 0) : 0.0f;
    easel_err e = alloc_tables(s, nts, nsig + 1);
    if (e) return e;
    for (int i = 0; i < nsig; i++)
        s->sigmas[i] = (float)sig[i];
    s->sigmas[nsig] = last;
    for (int i = 0; i < nts; i++)
        s->timesteps[i] = euler && c->timestep_continuous && s->pred == PRED_V
                              ? 0.25f * logf(s->sigmas[i])
                              : (float)ts[i];
    return EASEL_OK;
}

static easel_err tables_heun(sampler *s) {
    const sched_config *c = &s->c;
    int N = s->steps, T = s->T;
    double ts[MAXTS], sig[MAXTS];
    float train[SCHED_MAX_TRAIN], log_sigmas[SCHED_MAX_TRAIN];
    for (int k = 0; k < T; k++)
        train[k] = train_sigma(s, k);
    log_train_sigmas(s, log_sigmas);
    int n = spaced_float(s, ts);
    for (int i = 0; i < n; i++)
        sig[i] = np_interp(train, T, ts[i]);
    if (c->use_karras_sigmas || c->use_exponential_sigmas) {
        double smin = sig[n - 1], smax = sig[0];
        for (int i = 0; i < N; i++) {
            sig[i] = c->use_karras_sigmas ? karras_at(smin, smax, N, i)
                                          : exponential_at(smin, smax, N, i);
            ts[i] = sigma_to_t(log_sigmas, T, sig[i]);
        }
        n = N;
    }
    /* [s0, s1, s1, ..., s_{n-1}, s_{n-1}, 0] and [t0, t1, t1, ..., t_{n-1}, t_{n-1}] */
    easel_err e = alloc_tables(s, 2 * n - 1, 2 * n);
    if (e) return e;
    s->sigmas[0] = (float)sig[0];
    s->timesteps[0] = (float)ts[0];
    for (int i = 1; i < n; i++) {
        s->sigmas[2 * i - 1] = s->sigmas[2 * i] = (float)sig[i];
        s->timesteps[2 * i - 1] = s->timesteps[2 * i] = (float)ts[i];
    }
    s->sigmas[2 * n - 1] = 0.0f;
    return EASEL_OK;
}

/* Whole timesteps; EINVAL if one falls outside the train range. */
static easel_err check_ints(const sampler *s, const double *ts, int n) {
    for (int i = 0; i < n; i++)
        if (ts[i] < 0 || ts[i] > s->T - 1)
            return easel_seterr(EASEL_EINVAL,
                                "steps %d: %s with timestep_spacing %s and steps_offset %d reaches "
                                "timestep %g (train timesteps 0..%d)",
                                s->steps, sampler_name(s->kind),
                                schedule_name(SCHEDULE_LINSPACE + s->c.timestep_spacing),
                                s->c.steps_offset, ts[i], s->T - 1);
    return EASEL_OK;
}

/* DDIM's and PNDM's integer spacings, descending (PNDM reverses its own). */
static int spaced_int(const sampler *s, double *ts) {
    int N = s->steps, T = s->T;
    const sched_config *c = &s->c;
    if (c->timestep_spacing == SPACING_LINSPACE) {
        for (int i = 0; i < N; i++)
            ts[i] = nearbyint(np_linspace_at(0, T - 1, N, 1, N - 1 - i));
        return N;
    }
    if (c->timestep_spacing == SPACING_LEADING) {
        int ratio = T / N;
        for (int i = 0; i < N; i++)
            ts[i] = nearbyint((double)(N - 1 - i) * ratio) + c->steps_offset;
        return N;
    }
    int n = np_arange(T, 0, -(double)T / N, ts, MAXTS);
    for (int i = 0; i < n; i++)
        ts[i] = nearbyint(ts[i]) - 1;
    return n;
}

static easel_err set_vp_tables(sampler *s, const double *ts, int n) {
    easel_err e = check_ints(s, ts, n);
    if (!e) e = alloc_tables(s, n, n + 1);
    if (e) return e;
    for (int i = 0; i < n; i++) {
        s->timesteps[i] = (float)ts[i];
        s->sigmas[i] = train_sigma(s, (int)ts[i]);
    }
    s->sigmas[n] = 0.0f;
    return EASEL_OK;
}

static easel_err tables_ddim(sampler *s) {
    double ts[MAXTS];
    return set_vp_tables(s, ts, spaced_int(s, ts));
}

static easel_err tables_pndm(sampler *s) {
    double desc[MAXTS], asc[MAXTS], ts[MAXTS + 16];
    int n = spaced_int(s, desc), N = s->steps, k = 0;
    for (int i = 0; i < n; i++)
        asc[i] = desc[n - 1 - i];
    if (s->c.skip_prk_steps) {
        /* concat(_t[:-1], _t[-2:-1], _t[-1:])[::-1] */
        double p[MAXTS + 1];
        int m = 0;
        for (int i = 0; i < n - 1; i++)
            p[m++] = asc[i];
        if (n >= 2) p[m++] = asc[n - 2];
        p[m++] = asc[n - 1];
        for (int i = 0; i < m; i++)
            ts[k++] = p[m - 1 - i];
    } else {
        if (n < 4)
            return easel_seterr(EASEL_EINVAL,
                                "pndm with PRK warm-up (skip_prk_steps false) needs "
                                "at least 4 steps (got %d)",
                                N);
        double prk[8], rep[14];
        int half = s->T / N / 2;
        for (int i = 0; i < 4; i++)
            prk[2 * i] = asc[n - 4 + i], prk[2 * i + 1] = asc[n - 4 + i] + half;
        for (int i = 0; i < 7; i++)
            rep[2 * i] = rep[2 * i + 1] = prk[i];
        for (int i = 12; i >= 1; i--) /* rep[1:-1] reversed */
            ts[k++] = rep[i];
        for (int i = n - 4; i >= 0; i--) /* _t[:-3][::-1] */
            ts[k++] = asc[i];
    }
    return set_vp_tables(s, ts, k);
}

/* DPM-Solver's and UniPC's spacings: N + 1 points, the last dropped. */
static int spaced_multistep(const sampler *s, int last, double *ts) {
    int N = s->steps, T = s->T;
    const sched_config *c = &s->c;
    if (c->timestep_spacing == SPACING_LINSPACE) {
        for (int i = 0; i < N; i++)
            ts[i] = nearbyint(np_linspace_at(0, last - 1, N + 1, 1, N - i));
        return N;
    }
    if (c->timestep_spacing == SPACING_LEADING) {
        int ratio = last / (N + 1);
        for (int i = 0; i < N; i++)
            ts[i] = nearbyint((double)(N - i) * ratio) + c->steps_offset;
        return N;
    }
    int n = np_arange(last, 0, -(double)T / N, ts, MAXTS);
    for (int i = 0; i < n; i++)
        ts[i] = nearbyint(ts[i]) - 1;
    return n;
}

static easel_err tables_multistep(sampler *s) {
    const sched_config *c = &s->c;
    int N = s->steps, T = s->T, unipc = s->kind == SAMPLER_UNIPC;
    double ts[MAXTS], sig[MAXTS];
    float train[SCHED_MAX_TRAIN], log_sigmas[SCHED_MAX_TRAIN];
    for (int k = 0; k < T; k++)
        train[k] = train_sigma(s, k);
    log_train_sigmas(s, log_sigmas);
    int last = T;
    if (!unipc && c->lambda_min_clipped > -INFINITY) {
        /* searchsorted(flip(lambda_t), lambda_min_clipped): how many are below it */
        int clipped = 0;
        for (int k = T - 1; k >= 0; k--) {
            float lam = logf(sqrtf(s->ac[k])) - logf(sqrtf(1.0f - s->ac[k]));
            if ((double)lam < c->lambda_min_clipped) clipped++;
        }
        last = T - clipped;
    }
    int n = spaced_multistep(s, last, ts);
    float sigma_last = c->final_sigmas_min ? train_sigma(s, 0) : 0.0f;
    if (c->use_karras_sigmas || c->use_exponential_sigmas) {
        double smin = unipc && !isnan(c->sigma_min) ? c->sigma_min : train[0];
        double smax = unipc && !isnan(c->sigma_max) ? c->sigma_max : train[T - 1];
        for (int i = 0; i < N; i++) {
            sig[i] = c->use_karras_sigmas ? karras_at(smin, smax, N, i)
                                          : exponential_at(smin, smax, N, i);
            double t = sigma_to_t(log_sigmas, T, sig[i]);
            int round = c->use_karras_sigmas && (unipc || c->beta_schedule != BETAS_SQUAREDCOS);
            ts[i] = round ? nearbyint(t) : trunc(t); /* .round() or the int64 cast */
        }
        n = N;
        if (unipc && c->final_sigmas_min) sigma_last = (float)sig[N - 1];
    } else {
        for (int i = 0; i < n; i++)
            sig[i] = np_interp(train, T, ts[i]);
    }
    easel_err e = check_ints(s, ts, n);
    if (!e) e = alloc_tables(s, n, n + 1);
    if (e) return e;
    for (int i = 0; i < n; i++) {
        s->timesteps[i] = (float)ts[i];
        s->sigmas[i] = (float)sig[i];
    }
    s->sigmas[n] = sigma_last;
    return EASEL_OK;
}

/* LCM and TCD: N of the original_inference_steps' timesteps. */
static easel_err tables_consistency(sampler *s) {
    int N = s->steps, T = s->T, orig = s->c.original_inference_steps;
    if (orig > T)
        return easel_seterr(EASEL_EINVAL, "original_inference_steps %d > num_train_timesteps %d",
                            orig, T);
    if (N > orig)
        return easel_seterr(EASEL_EINVAL,
                            "%s: steps %d must be at most original_inference_steps (%d)",
                            sampler_name(s->kind), N, orig);
    int k = T / orig;
    double ts[SCHED_MAX_TRAIN];
    for (int i = 0; i < N; i++) {
        int idx = (int)floor(np_linspace_at(0, orig, N, 0, i));
        ts[i] = (double)(orig - idx) * k - 1; /* origin reversed: (orig - idx)·k − 1 */
    }
    return set_vp_tables(s, ts, N);
}

/* ---- creation ---- */

/* diffusers' progress bar over the evaluations actually run (from begin):
 * num_warmup_steps = len(timesteps) − num_inference_steps·order; evaluation j
 * ticks when it is the last or (j + 1) > warm-up and (j + 1) % order == 0. */
static int progress_tick(const sampler *s, int i) {
    int run = s->evals - s->begin, steps = s->steps - s->begin / s->order;
    int warm = run - steps * s->order, j = i - s->begin;
    return j == run - 1 || ((j + 1) > warm && (j + 1) % s->order == 0);
}

static int progress_total(const sampler *s) {
    int total = 0;
    for (int i = s->begin; i < s->evals; i++)
        total += progress_tick(s, i);
    return total;
}

static easel_err check_prediction(const sampler *s) {
    sampler_kind k = s->kind;
    if (s->pred == PRED_SAMPLE && (k == SAMPLER_EULER_A || k == SAMPLER_PNDM))
        return easel_seterr(EASEL_EINVAL,
                            "sampler %s does not support prediction_type sample (%s raises for it)",
                            sampler_name(k), sampler_class_name(k));
    if (k == SAMPLER_UNIPC && (!s->c.predict_x0 || !strcmp(s->c.solver_type, "bh1")) &&
        !s->c.final_sigmas_min)
        return easel_seterr(
            EASEL_EINVAL,
            "sampler unipc: %s with final_sigmas_type zero ends in NaN (in diffusers "
            "too: its last step multiplies an infinite B(h) by zero); use "
            "final_sigmas_type sigma_min",
            !s->c.predict_x0 ? "predict_x0 false" : "solver_type bh1");
    if ((k == SAMPLER_DPMPP_2M) && s->c.algorithm_type == ALGO_DPMSOLVER && !s->c.final_sigmas_min)
        return easel_seterr(EASEL_EINVAL, "sampler dpmpp_2m: algorithm_type dpmsolver needs "
                                          "final_sigmas_type sigma_min (as diffusers requires)");
    return EASEL_OK;
}

easel_err sampler_create_ex(const sampler_opts *o, sampler **out) {
    sampler_kind k = o->kind;
    if ((int)k < 0 || k >= SAMPLER_COUNT)
        return easel_seterr(EASEL_EINVAL, "sampler: unknown kind %d (choices: %s)", (int)k,
                            sampler_choices());
    if ((unsigned)o->schedule >= SCHEDULE_COUNT)
        return easel_seterr(EASEL_EINVAL, "schedule: unknown %d (choices: %s)", (int)o->schedule,
                            schedule_choices());
    if (o->steps < 1 || o->steps > SAMPLER_TRAIN_STEPS)
        return easel_seterr(EASEL_EINVAL, "sampler: steps %d not in [1, %d]", o->steps,
                            SAMPLER_TRAIN_STEPS);
    if (!(o->eta >= 0.0f && o->eta <= 1.0f))
        return easel_seterr(EASEL_EINVAL, "eta must be in [0, 1] (got %g)", (double)o->eta);
    sampler *s = calloc(1, sizeof *s);
    if (!s) return easel_seterr(EASEL_ENOMEM, "sampler: out of memory");
    sched_config sd15;
    const sched_config *cfg = o->config;
    if (!cfg) sched_config_sd15(&sd15), cfg = &sd15;
    s->kind = k;
    resolve(cfg, k, &s->c);
    if (k == SAMPLER_DPMPP_2M_KARRAS) /* from_config(c, use_karras_sigmas=True, dpmsolver++, 2) */
        s->c.use_karras_sigmas = 1, s->c.use_exponential_sigmas = 0,
        s->c.algorithm_type = ALGO_DPMSOLVER_PP, s->c.solver_order = 2;
    if (o->pipeline_fixups) /* the pipeline rewrites "outdated" configs before it samples */
        s->c.clip_sample = 0, s->c.steps_offset = 1;
    easel_err e = apply_schedule(k, o->schedule, &s->c);
    s->pred = o->prediction >= 0 && o->prediction < PRED_COUNT ? (sd_prediction)o->prediction
                                                               : s->c.prediction_type;
    s->steps = o->steps;
    s->T = s->c.num_train_timesteps;
    s->eta = o->eta;
    s->order = k == SAMPLER_HEUN ? 2 : 1;
    if (!e) e = check_prediction(s);
    if (!e && s->steps > s->T)
        e = easel_seterr(EASEL_EINVAL, "sampler: steps %d > num_train_timesteps %d", s->steps,
                         s->T);
    if (!e) e = make_alphas(s);
    if (!e) {
        switch (k) {
        case SAMPLER_EULER_A:
        case SAMPLER_EULER:
            e = tables_euler(s);
            break;
        case SAMPLER_HEUN:
            e = tables_heun(s);
            break;
        case SAMPLER_DDIM:
            e = tables_ddim(s);
            break;
        case SAMPLER_PNDM:
            e = tables_pndm(s);
            break;
        case SAMPLER_LCM:
        case SAMPLER_TCD:
            e = tables_consistency(s);
            break;
        default:
            e = tables_multistep(s);
            break;
        }
    }
    /* diffusers finds its first step by timestep and takes the second match
     * when there are two: it would start one step in and run off the end */
    for (int i = 1;
         !e && k != SAMPLER_DDIM && k != SAMPLER_PNDM && k != SAMPLER_HEUN && i < s->evals; i++)
        if (s->timesteps[i] == s->timesteps[0])
            e = easel_seterr(EASEL_EINVAL,
                             "steps %d: %s's first timestep %g repeats (diffusers would start at "
                             "its second occurrence and step past the end); use fewer steps or "
                             "another schedule",
                             s->steps, sampler_name(k), (double)s->timesteps[0]);
    if (e) {
        sampler_free(s);
        return e;
    }
    s->first_order = 1;
    *out = s;
    return EASEL_OK;
}

easel_err sampler_create(sampler_kind kind, int steps, sampler **out) {
    sampler_opts o = {.kind = kind, .prediction = -1, .steps = steps};
    return sampler_create_ex(&o, out);
}

void sampler_free(sampler *s) {
    if (!s) return;
    free(s->timesteps);
    free(s->sigmas);
    for (int i = 0; i < NBUF; i++)
        free(s->buf[i]);
    free(s);
}

int sampler_steps(const sampler *s) {
    return s->steps;
}
int sampler_evals(const sampler *s) {
    return s->evals;
}
int sampler_sigma_count(const sampler *s) {
    return s->nsig;
}

float sampler_timestep(const sampler *s, int i) {
    return i >= 0 && i < s->evals ? s->timesteps[i] : 0.0f;
}

float sampler_sigma(const sampler *s, int i) {
    return i >= 0 && i < s->nsig ? s->sigmas[i] : 0.0f;
}

static int sigma_space(sampler_kind k) {
    return k == SAMPLER_EULER || k == SAMPLER_EULER_A || k == SAMPLER_HEUN;
}

float sampler_init_noise_sigma(const sampler *s) {
    if (!sigma_space(s->kind)) return 1.0f;
    float mx = 0;
    for (int i = 0; i < s->nsig; i++)
        mx = s->sigmas[i] > mx ? s->sigmas[i] : mx;
    sched_spacing sp = s->c.timestep_spacing;
    return sp == SPACING_LINSPACE || sp == SPACING_TRAILING ? mx : sqrtf(mx * mx + 1.0f);
}

void sampler_scale_input(const sampler *s, int i, const float *x, float *out, int64_t n) {
    if (!sigma_space(s->kind) || i < 0 || i >= s->evals) {
        if (out != x) memmove(out, x, sizeof(float) * (size_t)n);
        return;
    }
    const float sig = s->sigmas[i];
    const float scale = sqrtf(sig * sig + 1.0f);
    for (int64_t k = 0; k < n; k++)
        out[k] = x[k] / scale;
}

int sampler_progress(const sampler *s, int i) {
    int k = 0;
    if (i < s->begin || i >= s->evals) return 0;
    for (int j = s->begin; j <= i; j++) {
        int tick = progress_tick(s, j);
        k += tick;
        if (j == i) return tick ? k : 0;
    }
    return 0;
}

int sampler_progress_total(const sampler *s) {
    return progress_total(s);
}

/* ---- updates ---- */

static void clamp_x0(const sampler *s, float *x0, int64_t n) {
    if (!s->c.clip_sample) return;
    const float r = (float)s->c.clip_sample_range;
    for (int64_t k = 0; k < n; k++)
        x0[k] = x0[k] < -r ? -r : (x0[k] > r ? r : x0[k]);
}

/* EulerDiscrete (s_churn 0, so sigma_hat = sigma). */
static void step_euler(sampler *s, int i, const float *m, float *x, int64_t n) {
    float *x0 = s->buf[0];
    const float sig = s->sigmas[i], dt = s->sigmas[i + 1] - sig;
    denoise_ve(s->pred, sig, m, x, x0, n);
    for (int64_t k = 0; k < n; k++) {
        float d = (x[k] - x0[k]) / sig;
        x[k] = x[k] + d * dt;
    }
}

/* EulerAncestral: a deterministic step to sigma_down, plus sigma_up noise
 * (drawn every step, the last included, as diffusers does). */
static void step_euler_a(sampler *s, int i, const float *m, float *x, int64_t n, rng *r) {
    float *x0 = s->buf[0], *noise = s->buf[1];
    const float sf = s->sigmas[i], st = s->sigmas[i + 1];
    const float sf2 = sf * sf, st2 = st * st;
    const float su = sqrtf(st2 * (sf2 - st2) / sf2);
    const float sd = sqrtf(st2 - su * su);
    const float dt = sd - sf;
    denoise_ve(s->pred, sf, m, x, x0, n);
    rng_randn(r, noise, n);
    for (int64_t k = 0; k < n; k++) {
        float d = (x[k] - x0[k]) / sf;
        float p = x[k] + d * dt;
        x[k] = p + noise[k] * su;
    }
}

/* Heun: an Euler step, then (second evaluation) the average slope from the
 * saved sample; state_in_first_order is "no saved dt". */
static void step_heun(sampler *s, int i, const float *m, float *x, int64_t n) {
    float *x0 = s->buf[0], *prev_d = s->buf[1], *saved = s->buf[2];
    int first = s->first_order;
    float sigma = first ? s->sigmas[i] : s->sigmas[i - 1];
    float next = first ? s->sigmas[i + 1] : s->sigmas[i];
    float sigma_hat = sigma * 1.0f;
    denoise_ve(s->pred, first ? sigma_hat : next, m, x, x0, n);
    clamp_x0(s, x0, n);
    if (first) {
        float dt = next - sigma_hat;
        for (int64_t k = 0; k < n; k++) {
            float d = (x[k] - x0[k]) / sigma_hat;
            prev_d[k] = d;
            saved[k] = x[k];
            x[k] = x[k] + d * dt;
        }
        s->heun_dt = dt;
        s->first_order = 0;
    } else {
        float dt = s->heun_dt;
        for (int64_t k = 0; k < n; k++) {
            float d = (x[k] - x0[k]) / next;
            d = (prev_d[k] + d) / 2.0f;
            x[k] = saved[k] + d * dt;
        }
        s->first_order = 1;
    }
}

/* DDIM (eta >= 0); past t = 0 it steps to final_alpha_cumprod. */
static void step_ddim(sampler *s, int i, const float *m, float *x, int64_t n, rng *r) {
    float *x0 = s->buf[0], *eps = s->buf[1], *noise = s->buf[2];
    const int t = (int)s->timesteps[i];
    const int tp = t - s->T / s->steps;
    const float a = s->ac[t], ap = tp >= 0 ? s->ac[tp] : s->final_ac, b = 1.0f - a;
    denoise_vp(s->pred, sqrtf(a), sqrtf(b), m, x, x0, eps, n);
    clamp_x0(s, x0, n);
    const float var = ((1.0f - ap) / b) * (1.0f - a / ap);
    const float std = s->eta * sqrtf(var);
    const float dir = sqrtf(1.0f - ap - std * std), sap = sqrtf(ap);
    for (int64_t k = 0; k < n; k++)
        x[k] = sap * x0[k] + dir * eps[k];
    if (s->eta > 0) {
        rng_randn(r, noise, n);
        for (int64_t k = 0; k < n; k++)
            x[k] = x[k] + std * noise[k];
    }
}

/* PNDM's _get_prev_sample (eq. 9 of the paper), eps or v output. */
static void pndm_prev(const sampler *s, const float *x, int t, int tp, const float *mo, float *out,
                      int64_t n) {
    const float a = s->ac[t], ap = tp >= 0 ? s->ac[tp] : s->final_ac;
    const float b = 1.0f - a, bp = 1.0f - ap;
    const float coeff = sqrtf(ap / a);
    const float denom = a * sqrtf(bp) + sqrtf(a * b * ap);
    const float sa = sqrtf(a), sb = sqrtf(b), diff = ap - a;
    for (int64_t k = 0; k < n; k++) {
        float e = s->pred == PRED_V ? sa * mo[k] + sb * x[k] : mo[k];
        out[k] = coeff * x[k] - diff * e / denom;
    }
}

/* ets ring: buf[3..6] hold the last 4 outputs, newest at ets(s, 0). */
static float *ets(sampler *s, int back) {
    return s->buf[3 + (s->nets - 1 - back) % 4];
}
static void ets_push(sampler *s, const float *m, int64_t n) {
    s->nets++;
    memcpy(ets(s, 0), m, sizeof(float) * (size_t)n);
}

static void step_plms(sampler *s, int i, const float *m, float *x, int64_t n) {
    float *mo = s->buf[0], *cur = s->buf[1];
    int ratio = s->T / s->steps;
    int t = (int)s->timesteps[i], tp = t - ratio;
    if (s->counter != 1)
        ets_push(s, m, n);
    else
        tp = t, t = t + ratio;
    int ne = s->nets > 4 ? 4 : s->nets;
    const float *src = x;
    if (ne == 1 && s->counter == 0) {
        memcpy(mo, m, sizeof(float) * (size_t)n);
        memcpy(cur, x, sizeof(float) * (size_t)n);
    } else if (ne == 1 && s->counter == 1) {
        const float *e1 = ets(s, 0);
        for (int64_t k = 0; k < n; k++)
            mo[k] = (m[k] + e1[k]) / 2.0f;
        src = cur;
    } else if (ne == 2) {
        const float *e1 = ets(s, 0), *e2 = ets(s, 1);
        for (int64_t k = 0; k < n; k++)
            mo[k] = (3.0f * e1[k] - e2[k]) / 2.0f;
    } else if (ne == 3) {
        const float *e1 = ets(s, 0), *e2 = ets(s, 1), *e3 = ets(s, 2);
        for (int64_t k = 0; k < n; k++)
            mo[k] = (23.0f * e1[k] - 16.0f * e2[k] + 5.0f * e3[k]) / 12.0f;
    } else {
        const float *e1 = ets(s, 0), *e2 = ets(s, 1), *e3 = ets(s, 2), *e4 = ets(s, 3);
        const float c = (float)(1.0 / 24.0);
        for (int64_t k = 0; k < n; k++)
            mo[k] = c * (55.0f * e1[k] - 59.0f * e2[k] + 37.0f * e3[k] - 9.0f * e4[k]);
    }
    pndm_prev(s, src, t, tp, mo, x, n);
    s->counter++;
}

/* Runge-Kutta warm-up: four evaluations per step, combined 1/6, 1/3, 1/3, 1/6. */
static void step_prk(sampler *s, int i, const float *m, float *x, int64_t n) {
    float *acc = s->buf[0], *cur = s->buf[1], *mo = s->buf[2];
    int half = s->T / s->steps / 2, c = s->counter;
    int t = (int)s->timesteps[i], tp = t - (c % 2 ? 0 : half);
    t = (int)s->timesteps[c / 4 * 4];
    const float *use = m;
    if (c % 4 == 0) {
        for (int64_t k = 0; k < n; k++)
            acc[k] = 0.0f + (float)(1.0 / 6.0) * m[k];
        ets_push(s, m, n);
        memcpy(cur, x, sizeof(float) * (size_t)n);
    } else if (c % 4 == 3) {
        for (int64_t k = 0; k < n; k++)
            mo[k] = acc[k] + (float)(1.0 / 6.0) * m[k];
        use = mo;
    } else {
        for (int64_t k = 0; k < n; k++)
            acc[k] += (float)(1.0 / 3.0) * m[k];
    }
    pndm_prev(s, cur, t, tp, use, x, n);
    s->counter++;
}

typedef struct {
    float alpha, sigma, lambda;
} vp_point;

/* _sigma_to_alpha_sigma_t and lambda = log(alpha) − log(sigma). */
static vp_point vp_at(float sig) {
    vp_point p;
    p.alpha = (1.0f / sqrtf(sig * sig + 1.0f)) * 1.0f;
    p.sigma = sig * p.alpha;
    p.lambda = logf(p.alpha) - logf(p.sigma);
    return p;
}

/* model_outputs ring for DPM-Solver and UniPC: buf[3..5], newest at hist(s, 0). */
static float *hist(sampler *s, int back) {
    return s->buf[3 + (s->nets - 1 - back + 3) % 3];
}

static void step_dpm(sampler *s, int i, const float *m, float *x, int64_t n) {
    const sched_config *c = &s->c;
    int pp = c->algorithm_type == ALGO_DPMSOLVER_PP, heun = !strcmp(c->solver_type, "heun");
    int last = i == s->evals - 1;
    int lof = last && (c->euler_at_final || (c->lower_order_final && s->evals < 15) ||
                       !c->final_sigmas_min);
    int los = i == s->evals - 2 && c->lower_order_final && s->evals < 15;
    const vp_point p0 = vp_at(s->sigmas[i]);
    s->nets++;
    float *m0 = hist(s, 0);
    if (pp)
        denoise_x0_as(s->pred, p0.alpha, p0.sigma, m, x, m0, n);
    else
        denoise_eps_as(s->pred, p0.alpha, p0.sigma, m, x, m0, n);
    const vp_point pt = vp_at(s->sigmas[i + 1]);
    const float h = pt.lambda - p0.lambda;
    const float em = expf(-h), ep = expf(h);
    int order = c->solver_order == 1 || s->lower_order_nums < 1 || lof   ? 1
                : c->solver_order == 2 || s->lower_order_nums < 2 || los ? 2
                                                                         : 3;
    if (order == 1) {
        const float a = pp ? pt.sigma / p0.sigma : pt.alpha / p0.alpha;
        const float b = pp ? pt.alpha * (em - 1.0f) : pt.sigma * (ep - 1.0f);
        for (int64_t k = 0; k < n; k++)
            x[k] = a * x[k] - b * m0[k];
    } else if (order == 2) {
        const vp_point p1 = vp_at(s->sigmas[i - 1]);
        const float h0 = p0.lambda - p1.lambda, r0 = h0 / h, inv = (1.0f / r0) * 1.0f;
        const float *m1 = hist(s, 1);
        float a, b, c2;
        if (pp) {
            a = pt.sigma / p0.sigma, b = pt.alpha * (em - 1.0f);
            c2 = heun ? -(pt.alpha * ((em - 1.0f) / h + 1.0f)) : 0.5f * (pt.alpha * (em - 1.0f));
        } else {
            a = pt.alpha / p0.alpha, b = pt.sigma * (ep - 1.0f);
            c2 = heun ? pt.sigma * ((ep - 1.0f) / h - 1.0f) : 0.5f * (pt.sigma * (ep - 1.0f));
        }
        for (int64_t k = 0; k < n; k++) {
            float d1 = inv * (m0[k] - m1[k]);
            x[k] = a * x[k] - b * m0[k] - c2 * d1;
        }
    } else {
        const vp_point p1 = vp_at(s->sigmas[i - 1]), p2 = vp_at(s->sigmas[i - 2]);
        const float h0 = p0.lambda - p1.lambda, h1 = p1.lambda - p2.lambda;
        const float r0 = h0 / h, r1 = h1 / h;
        const float i0 = (1.0f / r0) * 1.0f, i1 = (1.0f / r1) * 1.0f;
        const float w1 = r0 / (r0 + r1), w2 = (1.0f / (r0 + r1)) * 1.0f;
        const float *m1 = hist(s, 1), *m2 = hist(s, 2);
        float a, b, c1, c2;
        if (pp) {
            a = pt.sigma / p0.sigma, b = pt.alpha * (em - 1.0f);
            c1 = pt.alpha * ((em - 1.0f) / h + 1.0f);
            c2 = pt.alpha * ((em - 1.0f + h) / (h * h) - 0.5f);
        } else {
            a = pt.alpha / p0.alpha, b = pt.sigma * (ep - 1.0f);
            c1 = -(pt.sigma * ((ep - 1.0f) / h - 1.0f));
            c2 = pt.sigma * ((ep - 1.0f - h) / (h * h) - 0.5f);
        }
        for (int64_t k = 0; k < n; k++) {
            float d10 = i0 * (m0[k] - m1[k]), d11 = i1 * (m1[k] - m2[k]);
            float d1 = d10 + w1 * (d10 - d11), d2 = w2 * (d10 - d11);
            x[k] = a * x[k] - b * m0[k] + c1 * d1 - c2 * d2;
        }
    }
    if (s->lower_order_nums < c->solver_order) s->lower_order_nums++;
}

/* Solves A·x = b (k ≤ 3) as LAPACK's sgesv does: LU with partial pivoting, float. */
static void solve_small(int k, float A[3][3], float *b, float *x) {
    int piv[3] = {0, 1, 2};
    for (int c = 0; c < k; c++) {
        int p = c;
        for (int r = c + 1; r < k; r++)
            if (fabsf(A[r][c]) > fabsf(A[p][c])) p = r;
        if (p != c) {
            for (int j = 0; j < k; j++) {
                float t = A[c][j];
                A[c][j] = A[p][j], A[p][j] = t;
            }
            float t = b[c];
            b[c] = b[p], b[p] = t;
            int ti = piv[c];
            piv[c] = piv[p], piv[p] = ti;
        }
        for (int r = c + 1; r < k; r++) {
            float l = A[r][c] / A[c][c];
            A[r][c] = l;
            for (int j = c + 1; j < k; j++)
                A[r][j] -= l * A[c][j];
            b[r] -= l * b[c];
        }
    }
    for (int r = k - 1; r >= 0; r--) {
        float v = b[r];
        for (int j = r + 1; j < k; j++)
            v -= A[r][j] * x[j];
        x[r] = v / A[r][r];
    }
}

/* UniPC's coefficients for `order` with the previous points at sigma indices
 * idx[0..order-2]: rks, and B_h, h_phi_1 and the rhs b (R is rks^(j)). */
typedef struct {
    vp_point t, s0;
    float h, hh, h_phi_1, B_h, rks[3], b[3];
    int order;
} unipc_coef;

static void unipc_coefs(const sampler *s, int it, int is0, const int *idx, int order,
                        unipc_coef *u) {
    u->t = vp_at(s->sigmas[it]);
    u->s0 = vp_at(s->sigmas[is0]);
    u->h = u->t.lambda - u->s0.lambda;
    u->order = order;
    for (int j = 0; j < order - 1; j++) {
        vp_point pi = vp_at(s->sigmas[idx[j]]);
        u->rks[j] = (pi.lambda - u->s0.lambda) / u->h;
    }
    u->rks[order - 1] = 1.0f;
    u->hh = s->c.predict_x0 ? -u->h : u->h;
    u->h_phi_1 = expm1f(u->hh);
    float h_phi_k = u->h_phi_1 / u->hh - 1.0f;
    u->B_h = !strcmp(s->c.solver_type, "bh1") ? u->hh : expm1f(u->hh);
    int fact = 1;
    for (int j = 1; j <= order; j++) {
        u->b[j - 1] = h_phi_k * (float)fact / u->B_h;
        fact *= j + 1;
        h_phi_k = h_phi_k / u->hh - (float)(1.0 / fact);
    }
}

/* R[r][c] = rks[c]^r for an order×order (or smaller) system. */
static void unipc_R(const unipc_coef *u, int k, float R[3][3]) {
    for (int r = 0; r < k; r++)
        for (int c = 0; c < k; c++)
            R[r][c] = r == 0 ? 1.0f : r == 1 ? u->rks[c] : u->rks[c] * u->rks[c];
}

/* x_t_ = sigma_t/sigma_s0·x − alpha_t·h_phi_1·m0 (predict_x0), else the eps form. */
static void unipc_base(const sampler *s, const unipc_coef *u, float *a, float *b, float *c) {
    if (s->c.predict_x0)
        *a = u->t.sigma / u->s0.sigma, *b = u->t.alpha * u->h_phi_1, *c = u->t.alpha * u->B_h;
    else
        *a = u->t.alpha / u->s0.alpha, *b = u->t.sigma * u->h_phi_1, *c = u->t.sigma * u->B_h;
}

/* The corrector at evaluation i: refines x (the sample the last predictor
 * made) with the new converted output mt. */
static void unipc_corrector(sampler *s, int i, const float *mt, float *x, int64_t n) {
    int order = s->this_order, idx[2] = {0, 0};
    for (int j = 1; j < order; j++)
        idx[j - 1] = i - (j + 1);
    unipc_coef u;
    unipc_coefs(s, i, i - 1, idx, order, &u);
    float rhos[3] = {0.5f}, R[3][3];
    if (order > 1) {
        unipc_R(&u, order, R);
        solve_small(order, R, u.b, rhos);
    }
    float a, b, c;
    unipc_base(s, &u, &a, &b, &c);
    const float *last = s->buf[6], *m0 = hist(s, 0);
    const float *m1 = order > 1 ? hist(s, 1) : NULL, *m2 = order > 2 ? hist(s, 2) : NULL;
    for (int64_t k = 0; k < n; k++) {
        float corr = 0.0f;
        if (m1) corr = rhos[0] * ((m1[k] - m0[k]) / u.rks[0]);
        if (m2) corr = corr + rhos[1] * ((m2[k] - m0[k]) / u.rks[1]);
        float d1t = mt[k] - m0[k];
        x[k] = (a * last[k] - b * m0[k]) - c * (corr + rhos[order - 1] * d1t);
    }
}

static void unipc_predictor(sampler *s, int i, float *x, int64_t n) {
    int order = s->this_order, idx[2] = {0, 0};
    for (int j = 1; j < order; j++)
        idx[j - 1] = i - j;
    unipc_coef u;
    unipc_coefs(s, i + 1, i, idx, order, &u);
    float rhos[3] = {0.5f}, R[3][3];
    if (order > 2) {
        unipc_R(&u, order - 1, R);
        solve_small(order - 1, R, u.b, rhos);
    }
    float a, b, c;
    unipc_base(s, &u, &a, &b, &c);
    const float *m0 = hist(s, 0);
    const float *m1 = order > 1 ? hist(s, 1) : NULL, *m2 = order > 2 ? hist(s, 2) : NULL;
    for (int64_t k = 0; k < n; k++) {
        float base = a * x[k] - b * m0[k];
        if (!m1) {
            x[k] = base - c * 0.0f;
            continue;
        }
        float res = rhos[0] * ((m1[k] - m0[k]) / u.rks[0]);
        if (m2) res = res + rhos[1] * ((m2[k] - m0[k]) / u.rks[1]);
        x[k] = base - c * res;
    }
}

static void step_unipc(sampler *s, int i, const float *m, float *x, int64_t n) {
    const sched_config *c = &s->c;
    float *conv = s->buf[0], *last = s->buf[6];
    int corrector = i > 0 && s->have_last;
    for (int j = 0; j < c->n_disable_corrector; j++)
        if (c->disable_corrector[j] == i - 1) corrector = 0;
    const vp_point p0 = vp_at(s->sigmas[i]);
    if (c->predict_x0)
        denoise_x0_as(s->pred, p0.alpha, p0.sigma, m, x, conv, n);
    else
        denoise_eps_as(s->pred, p0.alpha, p0.sigma, m, x, conv, n);
    if (corrector) unipc_corrector(s, i, conv, x, n);
    s->nets++;
    memcpy(hist(s, 0), conv, sizeof(float) * (size_t)n);
    int order =
        c->lower_order_final && s->evals - i < c->solver_order ? s->evals - i : c->solver_order;
    s->this_order = order < s->lower_order_nums + 1 ? order : s->lower_order_nums + 1;
    memcpy(last, x, sizeof(float) * (size_t)n);
    s->have_last = 1;
    unipc_predictor(s, i, x, n);
    if (s->lower_order_nums < c->solver_order) s->lower_order_nums++;
}

/* LCMScheduler: the consistency function with c_skip/c_out boundary
 * scalings, then noise to the next timestep (not after the last). */
static void step_lcm(sampler *s, int i, const float *m, float *x, int64_t n, rng *r) {
    float *x0 = s->buf[0], *noise = s->buf[1];
    const int t = (int)s->timesteps[i];
    const int tp = i + 1 < s->evals ? (int)s->timesteps[i + 1] : t;
    const float a = s->ac[t], ap = tp >= 0 ? s->ac[tp] : s->final_ac;
    const float b = 1.0f - a, bp = 1.0f - ap;
    const float st = (float)t * (float)s->c.timestep_scaling;
    const float c_skip = (1.0f / (st * st + 0.25f)) * 0.25f; /* 0.25 / tensor: reciprocal · 0.25 */
    const float c_out = st / sqrtf(st * st + 0.25f);
    denoise_vp(s->pred, sqrtf(a), sqrtf(b), m, x, x0, NULL, n);
    clamp_x0(s, x0, n);
    for (int64_t k = 0; k < n; k++)
        x0[k] = c_out * x0[k] + c_skip * x[k];
    if (i != s->steps - 1) {
        rng_randn(r, noise, n);
        const float sap = sqrtf(ap), sbp = sqrtf(bp);
        for (int64_t k = 0; k < n; k++)
            x[k] = sap * x0[k] + sbp * noise[k];
    } else {
        memcpy(x, x0, sizeof(float) * (size_t)n);
    }
}

/* TCDScheduler with gamma = eta: to the noised prediction at
 * s = floor((1 − gamma)·t_prev), then forward noise to t_prev. */
static void step_tcd(sampler *s, int i, const float *m, float *x, int64_t n, rng *r) {
    float *x0 = s->buf[0], *eps = s->buf[1], *noise = s->buf[2];
    const int t = (int)s->timesteps[i];
    const int tp = i + 1 < s->evals ? (int)s->timesteps[i + 1] : 0;
    const int ts = (int)floorf((float)tp * (float)(1.0 - (double)s->eta));
    const float a = s->ac[t], b = 1.0f - a, ap = tp >= 0 ? s->ac[tp] : s->final_ac;
    const float as = s->ac[ts], bs = 1.0f - as;
    denoise_vp(s->pred, sqrtf(a), sqrtf(b), m, x, x0, eps, n);
    const float sas = sqrtf(as), sbs = sqrtf(bs);
    for (int64_t k = 0; k < n; k++)
        x[k] = sas * x0[k] + sbs * eps[k];
    if (s->eta > 0 && i != s->steps - 1) {
        rng_randn(r, noise, n);
        const float c1 = sqrtf(ap / as), c2 = sqrtf(1.0f - ap / as);
        for (int64_t k = 0; k < n; k++)
            x[k] = c1 * x[k] + c2 * noise[k];
    }
}

static int draws_noise(const sampler *s) {
    sampler_kind k = s->kind;
    return k == SAMPLER_EULER_A || k == SAMPLER_LCM ||
           ((k == SAMPLER_DDIM || k == SAMPLER_TCD) && s->eta > 0);
}

easel_err sampler_step(sampler *s, int i, const float *out, float *x, int64_t n, rng *r) {
    if (i != s->next || i >= s->evals)
        return easel_seterr(EASEL_EINVAL, "sampler: step %d out of order (expected %d of %d)", i,
                            s->next, s->evals);
    if (n <= 0 || (s->n && n != s->n))
        return easel_seterr(EASEL_EINVAL, "sampler: latent size %lld changed", (long long)n);
    if (draws_noise(s) && !r)
        return easel_seterr(EASEL_EINVAL, "sampler: %s needs an rng", sampler_name(s->kind));
    for (int k = 0; k < NBUF && !s->buf[NBUF - 1]; k++)
        if (!s->buf[k] && !(s->buf[k] = calloc((size_t)n, sizeof(float))))
            return easel_seterr(EASEL_ENOMEM, "sampler: out of memory");
    s->n = n;
    switch (s->kind) {
    case SAMPLER_EULER_A:
        step_euler_a(s, i, out, x, n, r);
        break;
    case SAMPLER_EULER:
        step_euler(s, i, out, x, n);
        break;
    case SAMPLER_HEUN:
        step_heun(s, i, out, x, n);
        break;
    case SAMPLER_DDIM:
        step_ddim(s, i, out, x, n, r);
        break;
    case SAMPLER_PNDM:
        if (!s->c.skip_prk_steps && s->counter < 12)
            step_prk(s, i, out, x, n);
        else
            step_plms(s, i, out, x, n);
        break;
    case SAMPLER_UNIPC:
        step_unipc(s, i, out, x, n);
        break;
    case SAMPLER_LCM:
        step_lcm(s, i, out, x, n, r);
        break;
    case SAMPLER_TCD:
        step_tcd(s, i, out, x, n, r);
        break;
    default:
        step_dpm(s, i, out, x, n);
        break;
    }
    s->next = i + 1;
    return EASEL_OK;
}

/* ---- img2img: get_timesteps and add_noise ---- */

int sampler_img2img_begin(const sampler *s, double strength) {
    int N = s->steps;
    double st = strength < 0 ? 0 : strength > 1 ? 1 : strength;
    int init = (int)((double)N * st); /* Python's int(num_inference_steps * strength) */
    if (init > N) init = N;
    int t_start = N - init > 0 ? N - init : 0;
    int b = t_start * s->order;
    return b < s->evals ? b : s->evals;
}

easel_err sampler_set_begin(sampler *s, int begin) {
    if (s->next != s->begin || begin < 0 || begin > s->evals)
        return easel_seterr(EASEL_EINVAL, "sampler: begin %d (of %d evaluations) after stepping",
                            begin, s->evals);
    if (begin % s->order)
        return easel_seterr(EASEL_EINVAL, "sampler: begin %d is not a whole step (order %d)", begin,
                            s->order);
    s->begin = s->next = begin;
    return EASEL_OK;
}

int sampler_begin(const sampler *s) {
    return s->begin;
}

void sampler_add_noise(const sampler *s, int i, const float *x0, const float *noise, float *out,
                       int64_t n) {
    sampler_kind k = s->kind;
    if (sigma_space(k)) { /* Euler, Euler a, Heun: original + noise · sigma */
        const float sig = sampler_sigma(s, i);
        for (int64_t j = 0; j < n; j++)
            out[j] = x0[j] + noise[j] * sig;
        return;
    }
    float a, b;
    if (k == SAMPLER_DDIM || k == SAMPLER_PNDM || k == SAMPLER_LCM || k == SAMPLER_TCD) {
        /* alphas_cumprod[t] ** 0.5 · original + (1 − alphas_cumprod[t]) ** 0.5 · noise */
        int t = (int)sampler_timestep(s, i);
        float ac = s->ac[t < 0 ? 0 : t >= s->T ? s->T - 1 : t];
        a = sqrtf(ac), b = sqrtf(1.0f - ac);
    } else { /* DPM-Solver, UniPC: _sigma_to_alpha_sigma_t(sigmas[i]) */
        vp_point p = vp_at(sampler_sigma(s, i));
        a = p.alpha, b = p.sigma;
    }
    for (int64_t j = 0; j < n; j++)
        out[j] = a * x0[j] + b * noise[j];
}
