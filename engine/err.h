/* Error codes and the per-thread error message slot.
 * A function that can fail returns an easel_err (0 = ok) and, on failure,
 * writes a human-readable message with easel_seterr(); callers read it with
 * easel_errmsg(). The slot is thread-local, so workers never share it. */
#ifndef EASEL_ERR_H
#define EASEL_ERR_H

typedef enum {
    EASEL_OK = 0,
    EASEL_EINVAL,      /* bad argument or input value */
    EASEL_ENOMEM,      /* out of host or device memory */
    EASEL_EIO,         /* file or OS error */
    EASEL_EFORMAT,     /* malformed file or data */
    EASEL_ENOTFOUND,   /* missing file, tensor, job ... */
    EASEL_EUNSUPPORTED,/* valid but not handled (dtype, layout, op) */
    EASEL_ECANCELED,   /* stopped on request */
    EASEL_EDEVICE,     /* accelerator error */
    EASEL_EFULL,       /* queue or disk full */
    EASEL_EINTERNAL,   /* a bug: an invariant did not hold */
    EASEL_EDEVLOST     /* the accelerator is unusable until the process restarts
                          (a kernel fault is sticky for every worker) */
} easel_err;

/* Sets the calling thread's message (printf-style) and returns code. */
easel_err easel_seterr(easel_err code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Prefixes the current message with more context ("loading unet: ...") and returns code. */
easel_err easel_wraperr(easel_err code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* The calling thread's last message ("" if none). Valid until the next seterr. */
const char *easel_errmsg(void);
void easel_clearerr(void);
/* A short stable name for a code ("invalid_argument", "out_of_memory", ...). */
const char *easel_errname(easel_err code);

#endif
