/* Backend selection for the commands (generate, serve, bench): the one place
 * that knows every backend. */
#ifndef EASEL_CLI_BACKENDS_H
#define EASEL_CLI_BACKENDS_H

#include "../engine/backend.h"

/* want "cpu", "cuda" or "auto" (NULL = "auto"). "auto" takes CUDA when
 * compiled in and a device works, else the CPU backend (logging one line that
 * says why) of precision prec (backend_cpu_create_prec; CUDA computes in f16
 * and ignores it, saying so once when it is not PREC_AUTO). NULL with a
 * message on failure. */
backend *backend_create(const char *want, int threads, backend_precision prec);
/* The same with the precision $EASEL_PRECISION names (auto when unset). */
backend *backend_auto_create(const char *want, int threads);
/* The build's backend description for `easel info` (CUDA devices or why none). */
void backends_describe(char *buf, size_t len);

#endif
