/* Per-thread error messages (see err.h). */
#include "err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define ERRMSG_MAX 1024
static _Thread_local char errmsg[ERRMSG_MAX];

easel_err easel_seterr(easel_err code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errmsg, sizeof errmsg, fmt, ap);
    va_end(ap);
    return code;
}

easel_err easel_wraperr(easel_err code, const char *fmt, ...) {
    char old[ERRMSG_MAX];
    memcpy(old, errmsg, sizeof old);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(errmsg, sizeof errmsg, fmt, ap);
    va_end(ap);
    if (n < 0) n = 0;
    size_t len = (size_t)n < sizeof errmsg - 1 ? (size_t)n : sizeof errmsg - 1;
    size_t room = sizeof errmsg - 1 - len;
    if (room >= 2) {
        memcpy(errmsg + len, ": ", 2);
        len += 2;
        size_t oldlen = strnlen(old, sizeof old - 1);
        size_t k = oldlen < sizeof errmsg - 1 - len ? oldlen : sizeof errmsg - 1 - len;
        memcpy(errmsg + len, old, k);
        len += k;
    }
    errmsg[len] = 0;
    return code;
}

const char *easel_errmsg(void) { return errmsg; }
void easel_clearerr(void) { errmsg[0] = 0; }

const char *easel_errname(easel_err code) {
    switch (code) {
    case EASEL_OK: return "ok";
    case EASEL_EINVAL: return "invalid_argument";
    case EASEL_ENOMEM: return "out_of_memory";
    case EASEL_EIO: return "io_error";
    case EASEL_EFORMAT: return "bad_format";
    case EASEL_ENOTFOUND: return "not_found";
    case EASEL_EUNSUPPORTED: return "unsupported";
    case EASEL_ECANCELED: return "canceled";
    case EASEL_EDEVICE: return "device_error";
    case EASEL_EFULL: return "full";
    case EASEL_EINTERNAL: return "internal";
    case EASEL_EDEVLOST: return "device_lost";
    }
    return "unknown";
}
