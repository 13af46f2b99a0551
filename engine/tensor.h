/* Tensors: a shape of at most 4 dims (outermost first; activations are NHWC),
 * a dtype, the device the data lives on, and a pointer into that device's
 * memory. Tensors are always contiguous, row-major; a view is a tensor whose
 * data points inside another one's (no copies, no ownership). Whoever
 * allocated the data (a backend, an arena, the loader) frees it. */
#ifndef EASEL_TENSOR_H
#define EASEL_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#define TENSOR_MAX_DIMS 4

typedef enum { DT_F32 = 0, DT_F16, DT_BF16 } dtype;
typedef enum { DEV_CPU = 0, DEV_CUDA } device_kind;

typedef struct tensor {
    void *data;
    int ndim;
    int64_t ne[TENSOR_MAX_DIMS]; /* ne[0] outermost; unused dims are 1 */
    dtype dt;
    device_kind dev;
} tensor;

size_t dtype_size(dtype dt);
const char *dtype_name(dtype dt);

/* A tensor header over data (not copied). ndim in 1..4. */
tensor tensor_make(void *data, dtype dt, device_kind dev, int ndim, const int64_t *ne);
tensor tensor_1d(void *data, dtype dt, device_kind dev, int64_t a);
tensor tensor_2d(void *data, dtype dt, device_kind dev, int64_t a, int64_t b);
tensor tensor_3d(void *data, dtype dt, device_kind dev, int64_t a, int64_t b, int64_t c);
tensor tensor_4d(void *data, dtype dt, device_kind dev, int64_t a, int64_t b, int64_t c, int64_t d);

int64_t tensor_nelem(const tensor *t);
size_t tensor_nbytes(const tensor *t);
/* Product of all dims but the last ("rows"), and the last dim. */
int64_t tensor_rows(const tensor *t);
int64_t tensor_cols(const tensor *t);
int tensor_same_shape(const tensor *a, const tensor *b);
/* "[2,64,64,320] f16" into buf, for messages. */
const char *tensor_shape_str(const tensor *t, char *buf, size_t len);

/* A view of `count` consecutive slices along dim 0, starting at slice `first`.
 * Returns a tensor with data NULL if out of range. */
tensor tensor_slice0(const tensor *t, int64_t first, int64_t count);
/* The same data with another shape of the same element count (data NULL if not). */
tensor tensor_reshape(const tensor *t, int ndim, const int64_t *ne);

/* Scalar conversions (round-to-nearest-even, inf/nan preserved). */
uint16_t f32_to_f16(float f);
float f16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);
float bf16_to_f32(uint16_t h);

#endif
