/* libFuzzer target for the seed-compat prompt builder (compat_build_prompt in
 * http/compat.c), which turns the room-analysis fields of POST
 * /generate-concept into a prompt: any JSON must give NULL or a bounded,
 * NUL-terminated prompt in the documented frame, deterministically. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "http/server.h"

static const char head[] = "Interior design visualization of a ";
static const char tail[] = ". Photorealistic, high quality, detailed, natural lighting, "
                           "professional interior photography.";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    cJSON *req = cJSON_ParseWithLength((const char *)data, size);
    if (!req) return 0;
    char *a = compat_build_prompt(req), *b = compat_build_prompt(req);
    if (!a != !b) abort();
    if (a) {
        size_t n = strlen(a);
        /* five fields of at most 600 bytes each, plus the frame */
        if (n > 5 * 600 + 512) abort();
        if (strncmp(a, head, sizeof head - 1)) abort();
        if (n < sizeof tail - 1 || strcmp(a + n - (sizeof tail - 1), tail)) abort();
        if (strcmp(a, b)) abort();
    }
    free(a);
    free(b);
    cJSON_Delete(req);
    return 0;
}
