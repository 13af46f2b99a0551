/* `easel make-model`: a random-weight model of a real architecture
 * (models/make_model.c writes it), so tests, benches and a first `make run`
 * work without downloads. */
#include <stdio.h>
#include <string.h>

#include "../engine/opts.h"
#include "../models/loader.h"
#include "cli.h"

int cmd_make_model(int argc, char **argv) {
    const char *arch = NULL, *out = NULL;
    int dti = 0;
    uint64_t seed = 0;
    const opt_spec specs[] = {
        {.name = "arch",
         .kind = OPT_STRING,
         .dst = &arch,
         .metavar = "NAME",
         .help = "the architecture (tiny, sd15, sd2, sdxl, tiny-sdxl, ...: an unknown name "
                 "lists them)",
         .flags = OPT_REQUIRED},
        {.name = "out",
         .aliases = "o",
         .kind = OPT_STRING,
         .dst = &out,
         .metavar = "PATH",
         .help = "a folder (diffusers layout) or FILE.safetensors (one LDM-named file)",
         .flags = OPT_REQUIRED},
        {.name = "dtype",
         .kind = OPT_CHOICE,
         .dst = &dti,
         .choices = "f16|f32",
         .help = "stored precision (default f16)"},
        {.name = "seed",
         .kind = OPT_U64,
         .dst = &seed,
         .lo = 0,
         .hi = 9007199254740991.0,
         .metavar = "N",
         .help = "the weights are a function of (seed, name, shape) (default 0)"},
        {0}};
    const opts_cmd cmd = {.name = "easel make-model",
                          .synopsis = "--arch NAME --out PATH [--dtype f16|f32] [--seed N]",
                          .footer = "The weights are random: the images are noise, the speed is "
                                    "real.",
                          .specs = specs};
    int r = opts_parse(&cmd, argc, argv);
    if (r) return r == 1 ? 0 : 2;
    sd_arch a;
    if (sd_arch_by_name(arch, &a))
        return fprintf(stderr, "easel make-model: --arch: %s\n", easel_errmsg()), 2;
    dtype dt = dti ? DT_F32 : DT_F16;
    easel_err e = sd_make_model(&a, dt, seed, out);
    if (e) {
        fprintf(stderr, "easel make-model: %s\n", easel_errmsg());
        return e == EASEL_EINVAL ? 2 : 1;
    }
    fprintf(stderr, "wrote %s model (%s) to %s\n", a.arch, dtype_name(dt), out);
    return 0;
}
