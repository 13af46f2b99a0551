/* `easel make-lora`: a random-weight LoRA for a model's architecture, in the
 * kohya/A1111 layout or diffusers/PEFT's (models/lora_lib.c writes it), so
 * tests and benches can apply LoRAs of real sizes without downloads. */
#include <stdio.h>
#include <string.h>

#include "../engine/fsutil.h"
#include "../engine/opts.h"
#include "../models/loader.h"
#include "../models/lora.h"
#include "cli.h"

int cmd_make_lora(int argc, char **argv) {
    const char *arch = NULL, *model = NULL, *out = NULL, *base = NULL;
    int fmt = 0, dti = 0, conv = 0, no_text = 0, rank = 16;
    float alpha = 0;
    uint64_t seed = 0;
    /* clang-format off */
    const opt_spec specs[] = {
        {.name = "model", .kind = OPT_STRING, .dst = &model, .metavar = "PATH",
         .help = "the model it is for (a diffusers folder or .safetensors; only its configs are read)"},
        {.name = "arch", .kind = OPT_STRING, .dst = &arch, .metavar = "NAME",
         .help = "or an architecture by name (tiny, sd15, sd2, ...)"},
        {.name = "out", .aliases = "o", .kind = OPT_STRING, .dst = &out, .metavar = "FILE",
         .help = "the .safetensors to write (atomically)", .flags = OPT_REQUIRED},
        {.name = "format", .kind = OPT_CHOICE, .dst = &fmt, .choices = "kohya|peft",
         .help = "kohya/A1111 (lora_unet_*, default) or diffusers/PEFT (unet.*.lora_A)"},
        {.name = "rank", .kind = OPT_INT, .dst = &rank, .lo = 1, .hi = 1024, .metavar = "R",
         .help = "the rank of every layer (default 16)"},
        {.name = "alpha", .kind = OPT_FLOAT, .dst = &alpha, .lo = 0, .hi = 1e6, .metavar = "A",
         .help = "alpha (scale alpha/rank; default the rank: scale 1)"},
        {.name = "conv", .kind = OPT_FLAG, .dst = &conv,
         .help = "LoCon: also the ResNet convs, shortcuts, samplers, time projections "
                 "(as LCM-LoRA and Hyper-SD adapt)"},
        {.name = "no-text-encoder", .kind = OPT_FLAG, .dst = &no_text,
         .help = "adapt the UNet only"},
        {.name = "dtype", .kind = OPT_CHOICE, .dst = &dti, .choices = "f16|f32|bf16",
         .help = "stored precision (default f16)"},
        {.name = "base", .kind = OPT_STRING, .dst = &base, .metavar = "NAME",
         .help = "kohya ss_base_model_version to write (default from the architecture)"},
        {.name = "seed", .kind = OPT_U64, .dst = &seed, .lo = 0, .hi = 9007199254740991.0,
         .metavar = "N", .help = "the values are a function of (seed, layer) (default 0)"},
        {0}};
    /* clang-format on */
    const opts_cmd cmd = {.name = "easel make-lora",
                          .synopsis = "(--model PATH | --arch NAME) --out FILE [options]",
                          .footer = "The weights are random: the images change, not for the "
                                    "better; the cost of merging and running is real.",
                          .specs = specs};
    int r = opts_parse(&cmd, argc, argv);
    if (r) return r == 1 ? 0 : 2;
    if (!model == !arch)
        return fprintf(stderr, "easel make-lora: give --model or --arch (one of them)\n"), 2;
    sd_arch a;
    sd_checkpoint *ck = NULL;
    if (arch && sd_arch_by_name(arch, &a))
        return fprintf(stderr, "easel make-lora: --arch: %s\n", easel_errmsg()), 2;
    if (model) {
        easel_err e = sd_checkpoint_open(model, &ck);
        if (e) return fprintf(stderr, "easel make-lora: %s\n", easel_errmsg()), cli_status_of(e);
        a = *sd_checkpoint_arch(ck);
        sd_checkpoint_close(ck);
    }
    lora_make_opts o;
    lora_make_opts_default(&o);
    o.format = fmt ? LORA_PEFT : LORA_KOHYA;
    o.rank = rank, o.alpha = alpha, o.conv = conv, o.text_encoder = !no_text;
    o.dt = dti == 1 ? DT_F32 : dti == 2 ? DT_BF16 : DT_F16;
    o.seed = seed, o.base = base;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", out);
    char *slash = strrchr(dir, '/');
    easel_err e = EASEL_OK;
    if (slash && slash != dir) *slash = 0, e = fs_mkdir_p(dir);
    if (!e) e = lora_make_random(&a, &o, out);
    if (e) {
        fprintf(stderr, "easel make-lora: %s\n", easel_errmsg());
        return e == EASEL_EINVAL ? 2 : 1;
    }
    lora_file *f = NULL;
    if (!lora_open(out, 0, &f)) {
        const lora_info *in = lora_file_info(f);
        fprintf(stderr,
                "wrote %s LoRA for %s: %d layers (%d UNet, %d text, %d text_2, %d conv), "
                "rank %d, %.1f MiB to %s\n",
                lora_format_name(in->format), a.arch, in->modules, in->part_modules[LORA_UNET],
                in->part_modules[LORA_TEXT], in->part_modules[LORA_TEXT2], in->conv_modules,
                in->rank_max, in->file_bytes / 1048576.0, out);
        lora_close(f);
    }
    return 0;
}
