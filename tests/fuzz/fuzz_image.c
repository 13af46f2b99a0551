/* libFuzzer target for the image-input path (engine/image_codecs.c and
 * image_ops.c): every input goes through image_probe and image_decode with
 * caps small enough that a fuzzer-made header cannot ask for much memory;
 * what decodes must agree with its probe, and then goes through what a
 * job does with an upload: flatten, both masks, each resize mode to a
 * small size, a blur. Refusals must leave nothing allocated (LeakSanitizer). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/image_codecs.h"

static void use(const uint8_t *rgba, int w, int h) {
    size_t n = (size_t)w * h;
    uint8_t *rgb = malloc(n * 3), *mask = malloc(n), *out = malloc(40 * 24 * 3);
    if (!rgb || !mask || !out) goto done;
    image_flatten(rgba, w, h, 0xFFFFFF, rgb);
    image_mask_from_luma(rgba, w, h, mask);
    image_mask_from_alpha(rgba, w, h, mask);
    for (int m = 0; m < RESIZE_MODE_COUNT; m++) {
        if (image_resize(rgb, w, h, 3, out, 40, 24, (image_resize_mode)m)) abort();
        if (image_resize(mask, w, h, 1, out, 24, 40, (image_resize_mode)m)) abort();
    }
    if (image_blur(mask, w, h, 2.0f)) abort();
done:
    free(rgb), free(mask), free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len) {
    /* an exact-size heap copy: any read past the end is an ASan report */
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy) return 0;
    memcpy(copy, data, len);
    image_limits lim = {.max_pixels = 1 << 20, .max_side = 4096};
    image_info pi, di;
    easel_err pe = image_probe(copy, len, &lim, &pi);
    uint8_t *rgba = NULL;
    easel_err de = image_decode(copy, len, &lim, &rgba, &di);
    if (de == EASEL_OK) {
        /* a decoded image: its probe said so, with the same size, within the caps */
        if (!rgba || pe != EASEL_OK || pi.width != di.width || pi.height != di.height ||
            di.width < 1 || di.height < 1 || (int64_t)di.width * di.height > lim.max_pixels)
            abort();
        use(rgba, di.width, di.height);
    } else if (rgba) {
        abort(); /* a refusal hands nothing back */
    }
    free(rgba);
    free(copy);
    return 0;
}
