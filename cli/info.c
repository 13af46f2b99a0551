/* `easel info [--model M]`: version, build options, BLAS, threads, the CPU's
 * features and the path each precision takes on it, devices; with --model,
 * what the model is (architecture, weight size). */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "../engine/cpu_features.h"
#include "../engine/opts.h"
#include "../models/pipeline.h"
#include "backends.h"
#include "cli.h"
#include "version.h"

extern char *openblas_get_config(void);

static int describe_model(const char *path, const sd_load_opts *load) {
    backend *be = backend_cpu_create_prec(0, PREC_AUTO); /* as generate/serve load it */
    if (!be) return fprintf(stderr, "easel info: %s\n", easel_errmsg()), 1;
    sd_model *m = NULL;
    easel_err e = sd_model_load_ex(path, be, load, &m);
    if (e) {
        fprintf(stderr, "easel info: %s\n", easel_errmsg());
        backend_destroy(be);
        return cli_status_of(e);
    }
    sd_model_info i;
    sd_model_get_info(m, &i);
    printf("model: %s\n", path);
    printf("  family: %s (architecture %s)\n", i.family, i.arch);
    printf("  parameters: unet %lld, vae %lld, text encoder %lld\n", (long long)i.params_unet,
           (long long)i.params_vae, (long long)i.params_text);
    printf("  weights: %.1f MiB resident (matrices %s, the rest %s)\n", i.weight_bytes / 1048576.0,
           dtype_name(be->weight_dtype), dtype_name(be->act_dtype));
    printf("  prediction: %s; scheduler: %s (default sampler %s)\n", i.prediction_type,
           i.scheduler_class[0] ? i.scheduler_class : "(the family's)", i.default_sampler_name);
    printf("  defaults: %dx%d, %d steps, guidance %g%s\n", i.default_width, i.default_height,
           i.default_steps, (double)i.default_guidance,
           i.guidance_embedded ? " (embedded: no CFG batch)" : "");
    if (i.random_weights)
        printf("  random weights (easel make-model): images are noise; see README -> Real "
               "models\n");
    if (i.taesd)
        printf("  taesd: %s (%lld parameters): live previews, \"decoder\": \"taesd\"\n",
               i.taesd_path, (long long)i.params_taesd);
    else
        printf("  taesd: none (no live previews; a TAESD goes in the model folder's taesd/)\n");
    sd_model_free(m);
    backend_destroy(be);
    return 0;
}

int cmd_info(int argc, char **argv) {
    const char *model = NULL;
    sd_load_opts load;
    sd_load_opts_default(&load);
    const opt_spec specs[] = {{.name = "model",
                               .kind = OPT_STRING,
                               .dst = &model,
                               .metavar = "PATH",
                               .help = "also load and describe this model"},
                              CLI_LOAD_OPTS(&load),
                              {0}};
    const opts_cmd cmd = {.name = "easel info", .synopsis = "[--model PATH]", .specs = specs};
    int r = opts_parse(&cmd, argc, argv);
    if (r) return r == 1 ? 0 : 2;
    printf("easel %s (%s)\n", EASEL_VERSION, EASEL_GIT);
    printf("build: C11%s%s\n",
#ifdef EASEL_HAVE_CUDA
           ", CUDA compiled in",
#else
           ", CUDA not compiled in",
#endif
#ifdef EASEL_FAULTS
           ", fault injection (test build)"
#else
           ""
#endif
    );
    printf("blas: %s\n", openblas_get_config());
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    printf("cpu threads: %ld (default: all cores; --threads or EASEL_THREADS)\n", cores);
    cpu_features f;
    char feat[256], path[256];
    cpu_features_get(&f);
    printf("cpu features: %s\n", cpu_features_str(&f, feat, sizeof feat));
    backend_precision env = PREC_AUTO;
    if (backend_precision_env(&env)) printf("precision: %s\n", easel_errmsg());
    printf("precision %s\n", backend_cpu_describe(PREC_BF16, path, sizeof path));
    printf("precision %s\n", backend_cpu_describe(PREC_FP32, path, sizeof path));
    printf("precision auto: %s (--precision or EASEL_PRECISION%s%s)\n",
           backend_precision_name(backend_cpu_check_precision(PREC_BF16) ? PREC_FP32 : PREC_BF16),
           env != PREC_AUTO ? "; set to " : "",
           env != PREC_AUTO ? backend_precision_name(env) : "");
    char buf[2048];
    backends_describe(buf, sizeof buf);
    printf("cuda: %s\n", buf);
    return model ? describe_model(model, &load) : 0;
}
