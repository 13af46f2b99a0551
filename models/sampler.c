/* SD1.x samplers, written from diffusers 0.42's EulerAncestralDiscrete,
 * EulerDiscrete, DDIM and DPMSolverMultistep schedulers with SD1.5's config
 * (scaled_linear betas 0.00085..0.012, 1000 train steps, steps_offset 1). The
 * tables are built the way torch/numpy build them (float32 tables, float64
 * interpolation), and the updates follow torch's float32 operation order. */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct sampler {
    sampler_kind kind;
    int steps;
    int next;                      /* the step sampler_step expects next */
    int64_t n;                     /* latent size, fixed by the first step */
    float ac[SAMPLER_TRAIN_STEPS]; /* alphas_cumprod (float32, as torch) */
    float *timesteps;              /* [steps] */
    float *sigmas;                 /* [steps + 1] */
    float *buf;                    /* Euler a: noise; DPM++: previous x0 */
};

/* betas = linspace(sqrt(b0), sqrt(b1), 1000, float32)^2 as torch.linspace
 * computes it (float step, the second half counted back from the end), then
 * alphas_cumprod = cumprod(1 - betas) with torch's double accumulator. */
static void make_alphas_cumprod(float *ac) {
    const int n = SAMPLER_TRAIN_STEPS;
    const float start = (float)sqrt(0.00085), end = (float)sqrt(0.012);
    const float step = (end - start) / (float)(n - 1);
    double acc = 1.0;
    for (int i = 0; i < n; i++) {
        float b = i < n / 2 ? start + step * (float)i : end - step * (float)(n - 1 - i);
        float alpha = 1.0f - b * b;
        acc *= alpha;
        ac[i] = (float)acc;
    }
}

static float train_sigma(const float *ac, int t) {
    return sqrtf((1.0f - ac[t]) / ac[t]);
}

/* np.interp of the train sigmas at fractional timestep t (float64). */
static double interp_sigma(const float *ac, double t) {
    if (t <= 0) return train_sigma(ac, 0);
    if (t >= SAMPLER_TRAIN_STEPS - 1) return train_sigma(ac, SAMPLER_TRAIN_STEPS - 1);
    int j = (int)floor(t);
    double lo = train_sigma(ac, j), hi = train_sigma(ac, j + 1);
    return (hi - lo) * (t - j) + lo;
}

/* Euler, Euler a: timesteps = linspace(0, 999, steps) reversed (float32),
 * sigmas interpolated at them, then a final 0. */
static void tables_euler(sampler *s) {
    int n = s->steps;
    double delta = (double)(SAMPLER_TRAIN_STEPS - 1) / (n > 1 ? n - 1 : 1);
    for (int i = 0; i < n; i++) {
        int j = n - 1 - i;
        double t = (n > 1 && j == n - 1) ? SAMPLER_TRAIN_STEPS - 1 : j * delta;
        s->timesteps[i] = (float)t;
        s->sigmas[i] = (float)interp_sigma(s->ac, (double)s->timesteps[i]);
    }
    s->sigmas[n] = 0.0f;
}

/* DDIM ("leading" spacing): t_i = (steps-1-i) * (1000 / steps) + 1. */
static void tables_ddim(sampler *s) {
    int n = s->steps, ratio = SAMPLER_TRAIN_STEPS / n;
    for (int i = 0; i < n; i++) {
        int t = (n - 1 - i) * ratio + 1;
        s->timesteps[i] = (float)t;
        s->sigmas[i] = train_sigma(s->ac, t);
    }
    s->sigmas[n] = 0.0f;
}

/* _sigma_to_t: the fractional index of log(sigma) among the float32 log train
 * sigmas, interpolated linearly, clipped to [0, 999]. */
static double sigma_to_t(const float *log_sigmas, double sigma) {
    double ls = log(sigma > 1e-10 ? sigma : 1e-10);
    int low = 0;
    for (int k = 0; k < SAMPLER_TRAIN_STEPS; k++)
        if (ls - (double)log_sigmas[k] >= 0) low = k;
    if (low > SAMPLER_TRAIN_STEPS - 2) low = SAMPLER_TRAIN_STEPS - 2;
    double lo = log_sigmas[low], hi = log_sigmas[low + 1];
    double w = (lo - ls) / (lo - hi);
    w = w < 0 ? 0 : (w > 1 ? 1 : w);
    return (1 - w) * low + w * (low + 1);
}

/* DPM++ 2M Karras: rho=7 ramp between the smallest and largest train sigma
 * (float64), timesteps = round-half-even(sigma_to_t(sigma)). */
static void tables_karras(sampler *s) {
    float log_sigmas[SAMPLER_TRAIN_STEPS];
    for (int k = 0; k < SAMPLER_TRAIN_STEPS; k++)
        log_sigmas[k] = logf(train_sigma(s->ac, k));
    int n = s->steps;
    double smin = train_sigma(s->ac, 0), smax = train_sigma(s->ac, SAMPLER_TRAIN_STEPS - 1);
    double min_inv = pow(smin, 1.0 / 7.0), max_inv = pow(smax, 1.0 / 7.0);
    double dr = n > 1 ? 1.0 / (n - 1) : 0.0;
    for (int i = 0; i < n; i++) {
        double ramp = (n > 1 && i == n - 1) ? 1.0 : i * dr;
        double sig = pow(max_inv + ramp * (min_inv - max_inv), 7.0);
        s->timesteps[i] = (float)nearbyint(sigma_to_t(log_sigmas, sig));
        s->sigmas[i] = (float)sig;
    }
    s->sigmas[n] = 0.0f;
}

easel_err sampler_create(sampler_kind kind, int steps, sampler **out) {
    if ((int)kind < 0 || kind >= SAMPLER_COUNT)
        return easel_seterr(EASEL_EINVAL, "sampler: unknown kind %d", (int)kind);
    /* DDIM's leading spacing would reach t = 1000 at 1000 steps */
    int max_steps = kind == SAMPLER_DDIM ? SAMPLER_TRAIN_STEPS - 1 : SAMPLER_TRAIN_STEPS;
    if (steps < 1 || steps > max_steps)
        return easel_seterr(EASEL_EINVAL, "sampler: steps %d not in [1, %d]", steps, max_steps);
    sampler *s = calloc(1, sizeof *s);
    float *ts = malloc(sizeof(float) * (size_t)steps);
    float *sig = malloc(sizeof(float) * (size_t)(steps + 1));
    if (!s || !ts || !sig) {
        free(s);
        free(ts);
        free(sig);
        return easel_seterr(EASEL_ENOMEM, "sampler: out of memory");
    }
    s->kind = kind;
    s->steps = steps;
    s->timesteps = ts;
    s->sigmas = sig;
    make_alphas_cumprod(s->ac);
    if (kind == SAMPLER_DDIM)
        tables_ddim(s);
    else if (kind == SAMPLER_DPMPP_2M_KARRAS)
        tables_karras(s);
    else
        tables_euler(s);
    *out = s;
    return EASEL_OK;
}

void sampler_free(sampler *s) {
    if (!s) return;
    free(s->timesteps);
    free(s->sigmas);
    free(s->buf);
    free(s);
}

int sampler_steps(const sampler *s) {
    return s->steps;
}

float sampler_timestep(const sampler *s, int i) {
    return i >= 0 && i < s->steps ? s->timesteps[i] : 0.0f;
}

float sampler_sigma(const sampler *s, int i) {
    return i >= 0 && i <= s->steps ? s->sigmas[i] : 0.0f;
}

float sampler_init_noise_sigma(const sampler *s) {
    if (s->kind == SAMPLER_EULER || s->kind == SAMPLER_EULER_A) return s->sigmas[0];
    return 1.0f;
}

void sampler_scale_input(const sampler *s, int i, const float *x, float *out, int64_t n) {
    if (s->kind == SAMPLER_DDIM || s->kind == SAMPLER_DPMPP_2M_KARRAS || i < 0 || i >= s->steps) {
        if (out != x) memmove(out, x, sizeof(float) * (size_t)n);
        return;
    }
    const float sig = s->sigmas[i];
    const float scale = sqrtf(sig * sig + 1.0f);
    for (int64_t k = 0; k < n; k++)
        out[k] = x[k] / scale;
}

/* EulerDiscrete (s_churn 0, so sigma_hat = sigma). */
static void step_euler(const sampler *s, int i, const float *eps, float *x, int64_t n) {
    const float sig = s->sigmas[i], dt = s->sigmas[i + 1] - sig;
    for (int64_t k = 0; k < n; k++) {
        float x0 = x[k] - sig * eps[k];
        float d = (x[k] - x0) / sig;
        x[k] = x[k] + d * dt;
    }
}

/* EulerAncestral: a deterministic step to sigma_down, plus sigma_up noise
 * (drawn every step, the last included, as diffusers does). */
static void step_euler_a(sampler *s, int i, const float *eps, float *x, int64_t n, rng *r) {
    const float sf = s->sigmas[i], st = s->sigmas[i + 1];
    const float sf2 = sf * sf, st2 = st * st;
    const float su = sqrtf(st2 * (sf2 - st2) / sf2);
    const float sd = sqrtf(st2 - su * su);
    const float dt = sd - sf;
    float *noise = s->buf;
    rng_randn(r, noise, n);
    for (int64_t k = 0; k < n; k++) {
        float x0 = x[k] - sf * eps[k];
        float d = (x[k] - x0) / sf;
        float p = x[k] + d * dt;
        x[k] = p + noise[k] * su;
    }
}

/* DDIM with eta 0; past t = 0 it steps to alphas_cumprod[0]
 * (set_alpha_to_one false). */
static void step_ddim(const sampler *s, int i, const float *eps, float *x, int64_t n) {
    const int t = (int)s->timesteps[i];
    const int tp = t - SAMPLER_TRAIN_STEPS / s->steps;
    const float a = s->ac[t], ap = tp >= 0 ? s->ac[tp] : s->ac[0];
    const float sb = sqrtf(1.0f - a), sa = sqrtf(a), sap = sqrtf(ap), sdir = sqrtf(1.0f - ap);
    for (int64_t k = 0; k < n; k++) {
        float x0 = (x[k] - sb * eps[k]) / sa;
        float dir = sdir * eps[k];
        x[k] = sap * x0 + dir;
    }
}

typedef struct {
    float alpha, sigma, lambda;
} vp_point;

/* _sigma_to_alpha_sigma_t and lambda = log(alpha) - log(sigma). */
static vp_point vp_at(float sig) {
    vp_point p;
    p.alpha = 1.0f / sqrtf(sig * sig + 1.0f);
    p.sigma = sig * p.alpha;
    p.lambda = logf(p.alpha) - logf(p.sigma);
    return p;
}

/* DPMSolverMultistep, dpmsolver++ midpoint, order 2: first order on the
 * first step and (final sigma 0) on the last; buf keeps the previous x0. */
static void step_dpmpp_2m(sampler *s, int i, const float *eps, float *x, int64_t n) {
    const vp_point p0 = vp_at(s->sigmas[i]);
    const int last = i == s->steps - 1, first_order = i == 0 || last;
    float *prev = s->buf;
    if (s->sigmas[i + 1] == 0.0f) { /* lambda_t = inf: x_t is the x0 prediction */
        for (int64_t k = 0; k < n; k++)
            x[k] = (x[k] - p0.sigma * eps[k]) / p0.alpha;
        return;
    }
    const vp_point pt = vp_at(s->sigmas[i + 1]);
    const float h = pt.lambda - p0.lambda;
    const float ratio = pt.sigma / p0.sigma, c = pt.alpha * (expf(-h) - 1.0f);
    float inv_r0 = 0.0f, half_c = 0.5f * c;
    if (!first_order) {
        const vp_point p1 = vp_at(s->sigmas[i - 1]);
        inv_r0 = 1.0f / ((p0.lambda - p1.lambda) / h);
    }
    for (int64_t k = 0; k < n; k++) {
        float x0 = (x[k] - p0.sigma * eps[k]) / p0.alpha;
        if (first_order) {
            x[k] = ratio * x[k] - c * x0;
        } else {
            float d1 = inv_r0 * (x0 - prev[k]);
            x[k] = ratio * x[k] - c * x0 - half_c * d1;
        }
        prev[k] = x0;
    }
}

easel_err sampler_step(sampler *s, int i, const float *eps, float *x, int64_t n, rng *r) {
    if (i != s->next || i >= s->steps)
        return easel_seterr(EASEL_EINVAL, "sampler: step %d out of order (expected %d of %d)", i,
                            s->next, s->steps);
    if (n <= 0 || (s->n && n != s->n))
        return easel_seterr(EASEL_EINVAL, "sampler: latent size %lld changed", (long long)n);
    if (s->kind == SAMPLER_EULER_A && !r)
        return easel_seterr(EASEL_EINVAL, "sampler: euler_a needs an rng");
    int needs_buf = s->kind == SAMPLER_EULER_A || s->kind == SAMPLER_DPMPP_2M_KARRAS;
    if (needs_buf && !s->buf) {
        s->buf = malloc(sizeof(float) * (size_t)n);
        if (!s->buf) return easel_seterr(EASEL_ENOMEM, "sampler: out of memory");
    }
    s->n = n;
    switch (s->kind) {
    case SAMPLER_EULER_A:
        step_euler_a(s, i, eps, x, n, r);
        break;
    case SAMPLER_EULER:
        step_euler(s, i, eps, x, n);
        break;
    case SAMPLER_DDIM:
        step_ddim(s, i, eps, x, n);
        break;
    default:
        step_dpmpp_2m(s, i, eps, x, n);
        break;
    }
    s->next = i + 1;
    return EASEL_OK;
}
