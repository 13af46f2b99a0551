/* `easel make-model`: a random-weight model of a given architecture, so that
 * easel runs without downloading weights. The networks' own *_load functions
 * are run against a recording store (so the names and shapes are exactly what
 * the loader asks for); the weights are then generated again, tensor by
 * tensor, from (seed, name) while the file is streamed out, so even SD1.5 in
 * f32 never sits in memory. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "../engine/cli.h"
#include "../engine/safetensors.h"
#include "loader.h"
#include "tokenizer.h"

/* ---- recording ---- */

/* The recording backend hands out anonymous mappings: zero pages that cost
 * nothing until written, so "loading" SD1.5 to record it needs no memory. */
#define REC_HDR 256

static easel_err rec_alloc(backend *be, size_t bytes, void **out) {
    (void)be;
    size_t n = bytes + REC_HDR;
    void *p =
        mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return easel_seterr(EASEL_ENOMEM, "mmap of %zu bytes failed", n);
    *(size_t *)p = n;
    *out = (char *)p + REC_HDR;
    return EASEL_OK;
}

static void rec_free(backend *be, void *p) {
    (void)be;
    if (!p) return;
    char *base = (char *)p - REC_HDR;
    munmap(base, *(size_t *)base);
}

static easel_err rec_upload(backend *be, tensor *dst, const float *src) {
    (void)be, (void)dst, (void)src;
    return EASEL_OK; /* the recorded weights are never used */
}

static void rec_destroy(backend *be) {
    (void)be;
}

static easel_err rec_push(sd_wrecs *r, const char *name, int ndim, const int64_t *shape,
                          weight_layout layout) {
    if (ndim < 1 || ndim > 4) return easel_seterr(EASEL_EINVAL, "'%s': %d dims", name, ndim);
    if (r->n == r->cap) {
        size_t cap = r->cap ? 2 * r->cap : 256;
        sd_wrec *v = realloc(r->v, cap * sizeof *v);
        if (!v) return easel_seterr(EASEL_ENOMEM, "out of memory");
        r->v = v, r->cap = cap;
    }
    sd_wrec *w = &r->v[r->n];
    if (!(w->name = strdup(name))) return easel_seterr(EASEL_ENOMEM, "out of memory");
    w->ndim = ndim;
    for (int i = 0; i < 4; i++)
        w->shape[i] = i < ndim ? shape[i] : 1;
    w->layout = layout;
    r->n++;
    return EASEL_OK;
}

static easel_err rec_get(wstore *ws, const char *name, int ndim, const int64_t *shape,
                         weight_layout layout, tensor *out) {
    easel_err e = rec_push(ws->ctx, name, ndim, shape, layout);
    if (e) return e;
    int64_t ne[4] = {1, 1, 1, 1};
    int nd = ndim;
    memcpy(ne, shape, sizeof(int64_t) * ndim);
    if (layout == WL_CONV && ndim == 4) ne[1] = shape[2], ne[2] = shape[3], ne[3] = shape[1];
    if (layout == WL_CONV_AS_LINEAR) nd = 2;
    if ((e = backend_tensor_alloc(ws->be, out, ws->be->act_dtype, nd, ne))) return e;
    ws->bytes_loaded += tensor_nbytes(out);
    return EASEL_OK;
}

static int rec_has(wstore *ws, const char *name) {
    (void)ws, (void)name;
    return 1; /* a made model has every optional weight */
}

void sd_wrecs_free(sd_wrecs *r) {
    for (size_t i = 0; i < r->n; i++)
        free(r->v[i].name);
    free(r->v);
    memset(r, 0, sizeof *r);
}

easel_err sd_record_weights(const sd_arch *a, sd_wrecs rec[SD_COMPONENTS]) {
    backend be = {.name = "record",
                  .dev = DEV_CPU,
                  .act_dtype = DT_F32,
                  .destroy = rec_destroy,
                  .alloc = rec_alloc,
                  .free = rec_free,
                  .upload = rec_upload};
    memset(rec, 0, sizeof(sd_wrecs) * SD_COMPONENTS);
    wstore ws[SD_COMPONENTS];
    for (int c = 0; c < SD_COMPONENTS; c++)
        ws[c] = (wstore){.be = &be, .get = rec_get, .has = rec_has, .ctx = &rec[c]};
    unet_model *u = NULL;
    vae_model *v = NULL;
    clip_model *t = NULL;
    easel_err e = unet_load(&a->unet, &ws[SD_UNET], &u);
    if (!e) e = vae_load(&a->vae, &ws[SD_VAE], &v);
    if (!e) e = clip_load(&a->clip, &ws[SD_TEXT], &t);
    unet_free(u);
    vae_free(v);
    clip_free(t);
    if (e)
        for (int c = 0; c < SD_COMPONENTS; c++)
            sd_wrecs_free(&rec[c]);
    return e;
}

/* ---- deterministic random weights ---- */

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t name_hash(const char *s, uint64_t seed) {
    uint64_t h = 1469598103934665603ull ^ seed;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* Norm layers start as identity (γ=1, β=0); other biases are small; weights
 * are uniform with standard deviation 1/sqrt(fan_in). */
void sd_random_weight(const char *name, int ndim, const int64_t *shape, uint64_t seed, float *dst) {
    int64_t n = 1, fan_in = 1;
    for (int i = 0; i < ndim; i++)
        n *= shape[i];
    for (int i = 1; i < ndim; i++)
        fan_in *= shape[i];
    if (ndim == 1) fan_in = shape[0];
    const char *last = strrchr(name, '.');
    const char *prev = last;
    while (prev && prev > name && prev[-1] != '.')
        prev--;
    int is_bias = last && !strcmp(last, ".bias");
    int is_norm = prev && last && strstr(prev, "norm") && strstr(prev, "norm") < last;
    if (is_norm) {
        for (int64_t i = 0; i < n; i++)
            dst[i] = is_bias ? 0.0f : 1.0f;
        return;
    }
    double bound = is_bias ? 0.02 : sqrt(3.0 / (double)(fan_in > 0 ? fan_in : 1));
    uint64_t s = name_hash(name, seed);
    for (int64_t i = 0; i < n; i++) {
        double u = (double)(splitmix(&s) >> 11) / 9007199254740992.0; /* [0,1) */
        dst[i] = (float)((2.0 * u - 1.0) * bound);
    }
}

/* ---- streaming safetensors writer ---- */

typedef struct {
    const char *name;   /* stored name */
    const char *source; /* name the weights are generated from (diffusers) */
    int ndim;
    int64_t shape[4];
} out_tensor;

static int64_t nelem(const out_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

static char *st_header(const out_tensor *t, size_t n, dtype dt, const char *const *meta,
                       size_t nmeta) {
    cJSON *o = cJSON_CreateObject(), *m = cJSON_CreateObject();
    if (!o || !m) return cJSON_Delete(o), cJSON_Delete(m), NULL;
    for (size_t i = 0; i + 1 < 2 * nmeta; i += 2)
        cJSON_AddStringToObject(m, meta[i], meta[i + 1]);
    cJSON_AddItemToObject(o, "__metadata__", m);
    uint64_t off = 0, es = dt == DT_F32 ? 4 : 2;
    for (size_t i = 0; i < n; i++) {
        cJSON *e = cJSON_CreateObject();
        cJSON_AddItemToObject(o, t[i].name, e);
        cJSON_AddStringToObject(e, "dtype", dt == DT_F32 ? "F32" : "F16");
        double sh[4], offs[2] = {(double)off, (double)(off + (uint64_t)nelem(&t[i]) * es)};
        for (int d = 0; d < t[i].ndim; d++)
            sh[d] = (double)t[i].shape[d];
        cJSON_AddItemToObject(e, "shape", cJSON_CreateDoubleArray(sh, t[i].ndim));
        cJSON_AddItemToObject(e, "data_offsets", cJSON_CreateDoubleArray(offs, 2));
        off = (uint64_t)offs[1];
    }
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

static easel_err write_data(FILE *f, const out_tensor *t, dtype dt, uint64_t seed, float *buf,
                            uint16_t *half) {
    int64_t n = nelem(t);
    sd_random_weight(t->source, t->ndim, t->shape, seed, buf);
    size_t w;
    if (dt == DT_F32) {
        w = fwrite(buf, 4, (size_t)n, f);
    } else {
        for (int64_t i = 0; i < n; i++)
            half[i] = f32_to_f16(buf[i]);
        w = fwrite(half, 2, (size_t)n, f);
    }
    return w == (size_t)n ? EASEL_OK : easel_seterr(EASEL_EIO, "write failed: %s", strerror(errno));
}

/* Writes tensors t[0..n) to path (via path.tmp, fsynced, renamed). */
static easel_err stream_safetensors(const char *path, const out_tensor *t, size_t n, dtype dt,
                                    uint64_t seed, const char *const *meta, size_t nmeta) {
    int64_t biggest = 1;
    for (size_t i = 0; i < n; i++)
        biggest = nelem(&t[i]) > biggest ? nelem(&t[i]) : biggest;
    char *hdr = st_header(t, n, dt, meta, nmeta);
    float *buf = malloc(sizeof(float) * (size_t)biggest);
    uint16_t *half = malloc(sizeof(uint16_t) * (size_t)biggest);
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = hdr && buf && half ? fopen(tmp, "wb") : NULL;
    easel_err e = EASEL_OK;
    if (!hdr || !buf || !half)
        e = easel_seterr(EASEL_ENOMEM, "out of memory");
    else if (!f)
        e = easel_seterr(EASEL_EIO, "%s: %s", tmp, strerror(errno));
    if (!e) {
        size_t hl = strlen(hdr), padded = (hl + 7) / 8 * 8;
        uint64_t len = padded;
        unsigned char le[8];
        for (int i = 0; i < 8; i++)
            le[i] = (unsigned char)(len >> (8 * i));
        if (fwrite(le, 1, 8, f) != 8 || fwrite(hdr, 1, hl, f) != hl ||
            fwrite("        ", 1, padded - hl, f) != padded - hl)
            e = easel_seterr(EASEL_EIO, "%s: write failed", tmp);
        for (size_t i = 0; i < n && !e; i++)
            e = write_data(f, &t[i], dt, seed, buf, half);
        if (!e && (fflush(f) || fsync(fileno(f))))
            e = easel_seterr(EASEL_EIO, "%s: %s", tmp, strerror(errno));
    }
    if (f && fclose(f) && !e) e = easel_seterr(EASEL_EIO, "%s: %s", tmp, strerror(errno));
    if (!e && rename(tmp, path)) e = easel_seterr(EASEL_EIO, "%s: %s", path, strerror(errno));
    if (e && f) unlink(tmp);
    free(hdr), free(buf), free(half);
    return e;
}

/* ---- layouts ---- */

static easel_err write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f) return easel_seterr(EASEL_EIO, "%s: %s", path, strerror(errno));
    size_t n = strlen(text);
    int bad = fwrite(text, 1, n, f) != n;
    bad |= fclose(f) != 0;
    return bad ? easel_seterr(EASEL_EIO, "%s: write failed", path) : EASEL_OK;
}

static easel_err make_dir(const char *path) {
    if (mkdir(path, 0755) && errno != EEXIST)
        return easel_seterr(EASEL_EIO, "mkdir %s: %s", path, strerror(errno));
    return EASEL_OK;
}

static easel_err write_component(const char *dir, const sd_arch *a, sd_component c,
                                 const sd_wrecs *r, dtype dt, uint64_t seed) {
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, sd_component_name(c));
    easel_err e = make_dir(p);
    if (e) return e;
    out_tensor *t = calloc(r->n ? r->n : 1, sizeof *t);
    if (!t) return easel_seterr(EASEL_ENOMEM, "out of memory");
    for (size_t i = 0; i < r->n; i++) {
        t[i] = (out_tensor){.name = r->v[i].name, .source = r->v[i].name, .ndim = r->v[i].ndim};
        memcpy(t[i].shape, r->v[i].shape, sizeof t[i].shape);
    }
    const char *meta[] = {"format", "pt"};
    snprintf(p, sizeof p, "%s/%s/%s.safetensors", dir, sd_component_name(c),
             c == SD_TEXT ? "model" : "diffusion_pytorch_model");
    e = stream_safetensors(p, t, r->n, dt, seed, meta, 1);
    free(t);
    char *json = e ? NULL : sd_config_json(a, c);
    if (!e && !json) e = easel_seterr(EASEL_ENOMEM, "out of memory");
    snprintf(p, sizeof p, "%s/%s/config.json", dir, sd_component_name(c));
    if (!e) e = write_text(p, json);
    free(json);
    return e;
}

static const char *model_index_fmt =
    "{\n  \"_class_name\": \"StableDiffusionPipeline\",\n  \"_easel_arch\": \"%s\",\n"
    "  \"scheduler\": [\"diffusers\", \"PNDMScheduler\"],\n"
    "  \"text_encoder\": [\"transformers\", \"CLIPTextModel\"],\n"
    "  \"tokenizer\": [\"transformers\", \"CLIPTokenizer\"],\n"
    "  \"unet\": [\"diffusers\", \"UNet2DConditionModel\"],\n"
    "  \"vae\": [\"diffusers\", \"AutoencoderKL\"],\n"
    "  \"safety_checker\": [null, null],\n  \"feature_extractor\": [null, null],\n"
    "  \"requires_safety_checker\": false\n}\n";

/* runwayml/stable-diffusion-v1-5's scheduler config (no timestep_spacing key:
 * the schedulers' defaults apply, as models/sampler.c implements them). */
static const char *scheduler_json =
    "{\n  \"_class_name\": \"PNDMScheduler\",\n  \"beta_end\": 0.012,\n"
    "  \"beta_schedule\": \"scaled_linear\",\n  \"beta_start\": 0.00085,\n"
    "  \"num_train_timesteps\": 1000,\n  \"set_alpha_to_one\": false,\n"
    "  \"skip_prk_steps\": true,\n  \"steps_offset\": 1,\n  \"trained_betas\": null,\n"
    "  \"clip_sample\": false\n}\n";

static const char *tokenizer_config_json =
    "{\n  \"tokenizer_class\": \"CLIPTokenizer\",\n  \"model_max_length\": 77,\n"
    "  \"bos_token\": \"<|startoftext|>\",\n  \"eos_token\": \"<|endoftext|>\",\n"
    "  \"pad_token\": \"<|endoftext|>\",\n  \"unk_token\": \"<|endoftext|>\",\n"
    "  \"do_lower_case\": true\n}\n";

/* vocab.json ({token: id}) of the built-in tokenizer. */
static char *vocab_json(void) {
    tokenizer *t = NULL;
    if (tokenizer_create_default(&t)) return NULL;
    cJSON *o = cJSON_CreateObject();
    int n = tokenizer_vocab_size(t), ok = o != NULL;
    for (int i = 0; i < n && ok; i++) {
        const char *tok = tokenizer_token(t, i);
        ok = tok && cJSON_AddNumberToObject(o, tok, i) != NULL;
    }
    char *s = ok ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    tokenizer_free(t);
    return s;
}

/* tokenizer/: vocab.json + merges.txt (with the "#version" line transformers
 * skips) + tokenizer_config.json, as in SD1.5's diffusers folder. */
static easel_err write_tokenizer(const char *dir) {
    char p[4096];
    snprintf(p, sizeof p, "%s/tokenizer", dir);
    easel_err e = make_dir(p);
    char *vocab = e ? NULL : vocab_json();
    if (!e && !vocab) e = easel_seterr(EASEL_ENOMEM, "building vocab.json failed");
    snprintf(p, sizeof p, "%s/tokenizer/vocab.json", dir);
    if (!e) e = write_text(p, vocab);
    free(vocab);
    snprintf(p, sizeof p, "%s/tokenizer/merges.txt", dir);
    FILE *f = e ? NULL : fopen(p, "wb");
    if (!e && !f) e = easel_seterr(EASEL_EIO, "%s: %s", p, strerror(errno));
    if (f) {
        size_t n = 0;
        const char *merges = tokenizer_default_merges(&n);
        int bad = fputs("#version: 0.2\n", f) < 0 || fwrite(merges, 1, n, f) != n;
        bad |= fclose(f) != 0;
        if (bad) e = easel_seterr(EASEL_EIO, "%s: write failed", p);
    }
    snprintf(p, sizeof p, "%s/tokenizer/tokenizer_config.json", dir);
    if (!e) e = write_text(p, tokenizer_config_json);
    return e;
}

static easel_err write_folder(const char *dir, const sd_arch *a, const sd_wrecs *rec, dtype dt,
                              uint64_t seed) {
    char p[4096], idx[1024];
    easel_err e = make_dir(dir);
    for (int c = 0; c < SD_COMPONENTS && !e; c++)
        e = write_component(dir, a, c, &rec[c], dt, seed);
    if (!e) e = write_tokenizer(dir);
    snprintf(p, sizeof p, "%s/scheduler", dir);
    if (!e) e = make_dir(p);
    snprintf(p, sizeof p, "%s/scheduler/scheduler_config.json", dir);
    if (!e) e = write_text(p, scheduler_json);
    snprintf(idx, sizeof idx, model_index_fmt, a->arch);
    snprintf(p, sizeof p, "%s/model_index.json", dir);
    if (!e) e = write_text(p, idx);
    return e;
}

/* One .safetensors with LDM names; the configs ride in __metadata__. */
static easel_err write_single(const char *path, const sd_arch *a, const sd_wrecs *rec, dtype dt,
                              uint64_t seed) {
    size_t n = 0;
    for (int c = 0; c < SD_COMPONENTS; c++)
        n += rec[c].n;
    out_tensor *t = calloc(n ? n : 1, sizeof *t);
    char *names = calloc(n ? n : 1, 256);
    char *cfg[SD_COMPONENTS] = {0};
    easel_err e = t && names ? EASEL_OK : easel_seterr(EASEL_ENOMEM, "out of memory");
    size_t k = 0;
    for (int c = 0; c < SD_COMPONENTS && !e; c++) {
        for (size_t i = 0; i < rec[c].n && !e; i++, k++) {
            const sd_wrec *w = &rec[c].v[i];
            char *nm = names + 256 * k;
            if ((e = ldm_name(a, c, w->name, nm, 256))) break;
            t[k] = (out_tensor){.name = nm, .source = w->name, .ndim = w->ndim};
            memcpy(t[k].shape, w->shape, sizeof t[k].shape);
            /* LDM's VAE attention projections are 1x1 convolutions */
            if (c == SD_VAE && w->ndim == 2 && strstr(nm, ".attn_1."))
                t[k].ndim = 4, t[k].shape[2] = t[k].shape[3] = 1;
        }
        if (!e && !(cfg[c] = sd_config_json(a, c))) e = easel_seterr(EASEL_ENOMEM, "out of memory");
    }
    const char *meta[] = {"format",
                          "pt",
                          "easel_arch",
                          a->arch,
                          "easel_unet_config",
                          cfg[0] ? cfg[0] : "",
                          "easel_vae_config",
                          cfg[1] ? cfg[1] : "",
                          "easel_text_encoder_config",
                          cfg[2] ? cfg[2] : ""};
    if (!e) e = stream_safetensors(path, t, n, dt, seed, meta, 5);
    for (int c = 0; c < SD_COMPONENTS; c++)
        free(cfg[c]);
    free(t), free(names);
    return e;
}

static int ends_with_st(const char *s) {
    size_t n = strlen(s);
    return n >= 12 && !strcmp(s + n - 12, ".safetensors");
}

easel_err sd_make_model(const sd_arch *a, dtype dt, uint64_t seed, const char *out) {
    if (dt != DT_F32 && dt != DT_F16)
        return easel_seterr(EASEL_EINVAL, "make-model writes f16 or f32, not %s", dtype_name(dt));
    sd_wrecs rec[SD_COMPONENTS];
    easel_err e = sd_record_weights(a, rec);
    if (e) return easel_wraperr(e, "recording the %s weights", a->arch);
    e = ends_with_st(out) ? write_single(out, a, rec, dt, seed)
                          : write_folder(out, a, rec, dt, seed);
    for (int c = 0; c < SD_COMPONENTS; c++)
        sd_wrecs_free(&rec[c]);
    return e;
}

/* ---- the command ---- */

static void make_usage(FILE *f) {
    fprintf(f, "usage: easel make-model --arch tiny|sd15 [--dtype f16|f32] [--seed N] --out PATH\n"
               "  PATH ending in .safetensors: one single-file checkpoint (LDM names);\n"
               "  otherwise a diffusers folder (unet/, vae/, text_encoder/, tokenizer/, ...).\n"
               "  The weights are random: the images are noise, the speed is real.\n");
}

int cmd_make_model(int argc, char **argv) {
    const char *arch = NULL, *out = NULL, *dts = "f16";
    uint64_t seed = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) return make_usage(stdout), 0;
        int known = !strcmp(a, "--arch") || !strcmp(a, "--out") || !strcmp(a, "--dtype") ||
                    !strcmp(a, "--seed");
        if (!known || !v) {
            fprintf(stderr, "easel make-model: %s '%s'\n",
                    known ? "missing value for" : "unknown option", a);
            make_usage(stderr);
            return 2;
        }
        i++;
        if (!strcmp(a, "--arch"))
            arch = v;
        else if (!strcmp(a, "--out"))
            out = v;
        else if (!strcmp(a, "--dtype"))
            dts = v;
        else
            seed = strtoull(v, NULL, 10);
    }
    if (!arch || !out) {
        fprintf(stderr, "easel make-model: --arch and --out are required\n");
        make_usage(stderr);
        return 2;
    }
    sd_arch a;
    if (sd_arch_by_name(arch, &a))
        return fprintf(stderr, "easel make-model: %s\n", easel_errmsg()), 2;
    dtype dt = !strcmp(dts, "f32") ? DT_F32 : DT_F16;
    if (strcmp(dts, "f32") && strcmp(dts, "f16"))
        return fprintf(stderr, "easel make-model: --dtype must be f16 or f32, not '%s'\n", dts), 2;
    easel_err e = sd_make_model(&a, dt, seed, out);
    if (e) {
        fprintf(stderr, "easel make-model: %s\n", easel_errmsg());
        return e == EASEL_EINVAL ? 2 : 1;
    }
    fprintf(stderr, "wrote %s model (%s) to %s\n", a.arch, dts, out);
    return 0;
}
