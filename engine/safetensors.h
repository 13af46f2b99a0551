/* safetensors reader and writer. The reader mmaps the file and validates it
 * exactly as the reference implementation does before anything is used:
 * size ≥ 8; header length ≤ 100,000,000 and within the file; header is a
 * UTF-8 JSON object; each entry has a known dtype, a shape and data_offsets
 * [begin,end] with end ≥ begin; sorted by offset the tensors tile the data
 * region from 0 with no gap or overlap; prod(shape)·size(dtype) (overflow
 * checked) == end − begin; the data ends exactly at the end of the file; no
 * duplicate names; __metadata__ is a string→string map. Every rejection's
 * message names the file, the check and (where there is one) the tensor. */
#ifndef EASEL_SAFETENSORS_H
#define EASEL_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

#define ST_MAX_DIMS 8
#define ST_MAX_HEADER 100000000ull

typedef enum {
    ST_BOOL = 0, ST_U8, ST_I8, ST_F8_E5M2, ST_F8_E4M3, ST_I16, ST_U16, ST_F16, ST_BF16,
    ST_I32, ST_U32, ST_F32, ST_F64, ST_I64, ST_U64, ST_DTYPE_COUNT
} st_dtype;

typedef struct {
    const char *name;
    st_dtype dtype;
    int ndim;                    /* 0 for a scalar */
    int64_t shape[ST_MAX_DIMS];
    uint64_t begin, end;         /* offsets in the data region */
    const void *data;            /* into the mapping */
} st_tensor;

typedef struct st_file st_file;

/* Opens and validates path. On error *out is NULL and the message says why. */
easel_err st_open(const char *path, st_file **out);
/* Same checks on a buffer the caller keeps alive (fuzzing, tests); name is for messages. */
easel_err st_open_memory(const void *buf, size_t len, const char *name, st_file **out);
void st_close(st_file *f);

size_t st_count(const st_file *f);
/* Tensors in data-offset order. NULL if i is out of range. */
const st_tensor *st_at(const st_file *f, size_t i);
const st_tensor *st_find(const st_file *f, const char *name);
size_t st_meta_count(const st_file *f);
/* Metadata entry i (key, value), or -1 if out of range. */
int st_meta_at(const st_file *f, size_t i, const char **key, const char **value);
const char *st_meta_get(const st_file *f, const char *key);
const char *st_path(const st_file *f);

int64_t st_nelem(const st_tensor *t);
/* Converts F32/F16/BF16 to f32 into dst (st_nelem values); other dtypes are refused. */
easel_err st_read_f32(const st_file *f, const st_tensor *t, float *dst);

const char *st_dtype_name(st_dtype dt);
size_t st_dtype_size(st_dtype dt);
/* -1 if unknown. */
int st_dtype_parse(const char *s);

/* Writer: tensors reference the caller's data until st_writer_save() returns.
 * The file is written atomically (engine/fsutil.h: a unique temp file,
 * fsynced, renamed, the directory fsynced). */
typedef struct st_writer st_writer;
st_writer *st_writer_create(void);
void st_writer_free(st_writer *w);
easel_err st_writer_add(st_writer *w, const char *name, st_dtype dt, int ndim,
                        const int64_t *shape, const void *data);
easel_err st_writer_meta(st_writer *w, const char *key, const char *value);
easel_err st_writer_save(st_writer *w, const char *path);

#endif
