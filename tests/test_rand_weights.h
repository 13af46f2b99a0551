/* Deterministic random weights by name for tests that build real networks
 * without a checkpoint (test_models.c, test_models_bf16.c): uniform values of
 * N(0, 1/fan_in)'s spread, norms' gamma around 1, small biases. */
#ifndef EASEL_TEST_RAND_WEIGHTS_H
#define EASEL_TEST_RAND_WEIGHTS_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "test.h"

/* The values of tensor `name` of that shape (malloc'd, *n of them; NULL when
 * out of memory). The same name gives the same values. */
static inline float *test_rand_weights(const char *name, int ndim, const int64_t *shape,
                                       int64_t *n) {
    *n = 1;
    for (int i = 0; i < ndim; i++)
        *n *= shape[i];
    float *d = malloc(sizeof(float) * (size_t)*n);
    if (!d) return NULL;
    unsigned long long s = 1469598103934665603ull;
    for (const char *p = name; *p; p++)
        s = (s ^ (unsigned char)*p) * 1099511628211ull;
    float fan_in = (float)(ndim >= 2 ? *n / shape[0] : 1);
    float a = ndim >= 2 ? sqrtf(3.0f / fan_in) : 0.02f;
    int gamma = ndim == 1 && strstr(name, "norm") && strstr(name, ".weight");
    for (int64_t i = 0; i < *n; i++)
        d[i] = (gamma ? 1.0f : 0.0f) + test_randf(&s, -a, a);
    return d;
}

#endif
