/* The model parameterisations (see denoiser.h), each in the float32
 * operation order of the diffusers scheduler it serves. */
#include "denoiser.h"

#include <math.h>

void denoise_ve(sd_prediction p, float sigma, const float *m, const float *x, float *x0,
                int64_t n) {
    if (p == PRED_EPSILON) {
        for (int64_t k = 0; k < n; k++)
            x0[k] = x[k] - sigma * m[k];
    } else if (p == PRED_V) {
        const float c_out = -sigma / sqrtf(sigma * sigma + 1.0f), c_in = sigma * sigma + 1.0f;
        for (int64_t k = 0; k < n; k++)
            x0[k] = m[k] * c_out + x[k] / c_in;
    } else {
        for (int64_t k = 0; k < n; k++)
            x0[k] = m[k];
    }
}

void denoise_vp(sd_prediction p, float sa, float sb, const float *m, const float *x, float *x0,
                float *eps, int64_t n) {
    for (int64_t k = 0; k < n; k++) {
        float o, e;
        if (p == PRED_EPSILON) {
            o = (x[k] - sb * m[k]) / sa;
            e = m[k];
        } else if (p == PRED_V) {
            o = sa * x[k] - sb * m[k];
            e = sa * m[k] + sb * x[k];
        } else {
            o = m[k];
            e = (x[k] - sa * o) / sb;
        }
        x0[k] = o;
        if (eps) eps[k] = e;
    }
}

void denoise_x0_as(sd_prediction p, float alpha_t, float sigma_t, const float *m, const float *x,
                   float *x0, int64_t n) {
    for (int64_t k = 0; k < n; k++)
        x0[k] = p == PRED_EPSILON ? (x[k] - sigma_t * m[k]) / alpha_t
                : p == PRED_V     ? alpha_t * x[k] - sigma_t * m[k]
                                  : m[k];
}

void denoise_eps_as(sd_prediction p, float alpha_t, float sigma_t, const float *m, const float *x,
                    float *eps, int64_t n) {
    for (int64_t k = 0; k < n; k++)
        eps[k] = p == PRED_EPSILON ? m[k]
                 : p == PRED_V     ? alpha_t * m[k] + sigma_t * x[k]
                                   : (x[k] - alpha_t * m[k]) / sigma_t;
}

void denoise_at_sigma(sd_prediction p, float sigma, const float *m, const float *x_in, float *x0,
                      int64_t n) {
    const float sa = 1.0f / sqrtf(sigma * sigma + 1.0f), sb = sigma * sa;
    denoise_vp(p, sa, sb, m, x_in, x0, NULL, n);
}
