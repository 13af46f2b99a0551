/* libFuzzer target for the seed-compat prompt builder (compat_build_prompt in
 * http/compat.c), which turns the room-analysis fields of POST
 * /generate-concept into a prompt: any JSON must give NULL or a bounded,
 * NUL-terminated prompt in the documented frame, deterministically; from a
 * body the server accepts (strict JSON, valid UTF-8), a valid UTF-8 prompt
 * (fields are cut at character boundaries). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "engine/utf8.h"
#include "http/json.h"
#include "http/server.h"

static const char head[] = "Interior design visualization of a ";
static const char tail[] = ". Photorealistic, high quality, detailed, natural lighting, "
                           "professional interior photography.";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char msg[200], field[64];
    cJSON *req = json_parse_strict((const char *)data, size, msg, sizeof msg, field, sizeof field);
    int strict = req != NULL;
    if (!req) req = cJSON_ParseWithLength((const char *)data, size);
    if (!req) return 0;
    int cut_a = 0, cut_b = 0;
    char *a = compat_build_prompt(req, &cut_a), *b = compat_build_prompt(req, &cut_b);
    if (cut_a != cut_b) abort();
    if (!a != !b) abort();
    if (a) {
        size_t n = strlen(a);
        /* five fields of at most 600 bytes each, plus the frame */
        if (n > 5 * 600 + 512) abort();
        if (strncmp(a, head, sizeof head - 1)) abort();
        if (n < sizeof tail - 1 || strcmp(a + n - (sizeof tail - 1), tail)) abort();
        if (strcmp(a, b)) abort();
        if (strict && !utf8_valid(a, n, NULL)) abort();
    }
    free(a);
    free(b);
    cJSON_Delete(req);
    return 0;
}
