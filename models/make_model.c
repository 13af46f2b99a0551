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

#include "../engine/fsutil.h"

#include "../engine/safetensors.h"
#include "loader.h"
#include "taesd.h"
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
    clip_model *t = NULL, *t2 = NULL;
    easel_err e = unet_load(&a->unet, &ws[SD_UNET], &u);
    if (!e) e = vae_load(&a->vae, &ws[SD_VAE], &v);
    if (!e) e = clip_load(&a->clip, &ws[SD_TEXT], &t);
    if (!e && a->has_text2) e = clip_load(&a->clip2, &ws[SD_TEXT2], &t2);
    unet_free(u);
    vae_free(v);
    clip_free(t);
    clip_free(t2);
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
    int64_t shape[4]; /* as stored */
    int transpose;    /* stored as the transpose of the 2-D diffusers tensor [shape[1], shape[0]] */
    const char *thirds[3]; /* OpenCLIP's fused in_proj: q, k, v (shape[0]/3 rows each) */
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
    if (t->thirds[0]) { /* q, k, v stacked on rows */
        int64_t part[4];
        memcpy(part, t->shape, sizeof part);
        part[0] /= 3;
        for (int k = 0; k < 3; k++)
            sd_random_weight(t->thirds[k], t->ndim, part, seed, buf + k * (n / 3));
    } else if (t->transpose) { /* ours [R, C] is generated in buf's upper half, stored [C, R] */
        int64_t R = t->shape[1], C = t->shape[0], ours[2] = {R, C};
        float *src = buf + n;
        sd_random_weight(t->source, 2, ours, seed, src);
        for (int64_t r = 0; r < R; r++)
            for (int64_t c = 0; c < C; c++)
                buf[c * R + r] = src[r * C + c];
    } else {
        sd_random_weight(t->source, t->ndim, t->shape, seed, buf);
    }
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

/* Writes tensors t[0..n) to path atomically (engine/fsutil.h), through a
 * stdio stream on a duplicate of the temp file's descriptor. */
static easel_err stream_safetensors(const char *path, const out_tensor *t, size_t n, dtype dt,
                                    uint64_t seed, const char *const *meta, size_t nmeta) {
    int64_t biggest = 1;
    for (size_t i = 0; i < n; i++)
        biggest = nelem(&t[i]) > biggest ? nelem(&t[i]) : biggest;
    char *hdr = st_header(t, n, dt, meta, nmeta);
    float *buf = malloc(sizeof(float) * 2 * (size_t)biggest); /* 2x: room for a transpose */
    uint16_t *half = malloc(sizeof(uint16_t) * (size_t)biggest);
    fs_atomic a;
    easel_err e = !hdr || !buf || !half ? easel_seterr(EASEL_ENOMEM, "out of memory")
                                        : fs_atomic_open(&a, path);
    int opened = !e;
    int dupfd = opened ? dup(a.fd) : -1;
    FILE *f = dupfd >= 0 ? fdopen(dupfd, "wb") : NULL;
    if (opened && !f) {
        if (dupfd >= 0) close(dupfd);
        e = easel_seterr(EASEL_EIO, "%s: %s", path, strerror(errno));
    }
    if (!e) {
        size_t hl = strlen(hdr), padded = (hl + 7) / 8 * 8;
        uint64_t len = padded;
        unsigned char le[8];
        for (int i = 0; i < 8; i++)
            le[i] = (unsigned char)(len >> (8 * i));
        if (fwrite(le, 1, 8, f) != 8 || fwrite(hdr, 1, hl, f) != hl ||
            fwrite("        ", 1, padded - hl, f) != padded - hl)
            e = easel_seterr(EASEL_EIO, "%s: write failed", path);
        for (size_t i = 0; i < n && !e; i++)
            e = write_data(f, &t[i], dt, seed, buf, half);
    }
    if (f && fclose(f) && !e) e = easel_seterr(EASEL_EIO, "%s: %s", path, strerror(errno));
    if (opened) {
        if (e)
            fs_atomic_abort(&a);
        else
            e = fs_atomic_commit(&a);
    }
    free(hdr), free(buf), free(half);
    return e;
}

/* ---- layouts ---- */

static easel_err write_text(const char *path, const char *text) {
    return fs_write_file(path, text, strlen(text));
}

static easel_err make_dir(const char *path) {
    return fs_mkdir_p(path); /* --out a/b/c makes a and a/b too */
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
    const char *meta[] = {"format", "pt", "easel_random_weights", "true"};
    snprintf(p, sizeof p, "%s/%s/%s.safetensors", dir, sd_component_name(c),
             c == SD_TEXT || c == SD_TEXT2 ? "model" : "diffusion_pytorch_model");
    e = stream_safetensors(p, t, r->n, dt, seed, meta, 2);
    free(t);
    char *json = e ? NULL : sd_config_json(a, c);
    if (!e && !json) e = easel_seterr(EASEL_ENOMEM, "out of memory");
    snprintf(p, sizeof p, "%s/%s/config.json", dir, sd_component_name(c));
    if (!e) e = write_text(p, json);
    free(json);
    return e;
}

/* taesd/: a random AutoencoderTiny for the model's latents (the released
 * TAESD's shape; 16 channels for the tiny archs, so their previews stay cheap),
 * so that previews and fast decode work on a made model. */
void sd_taesd_config_for(const sd_arch *a, taesd_config *c) {
    taesd_config_default(c);
    c->latent_channels = a->vae.latent_channels;
    int L = a->vae.levels < 1                  ? 1
            : a->vae.levels > TAESD_MAX_LEVELS ? TAESD_MAX_LEVELS
                                               : a->vae.levels;
    c->enc_levels = c->dec_levels = L;
    for (int i = 0; i < L; i++)
        c->enc_blocks[i] = i ? 3 : 1, c->dec_blocks[i] = i < L - 1 ? 3 : 1;
    if (!strncmp(a->arch, "tiny", 4)) c->enc_channels = c->dec_channels = 16;
}

static easel_err write_taesd(const char *dir, const sd_arch *a, dtype dt, uint64_t seed) {
    backend be = {.name = "record",
                  .dev = DEV_CPU,
                  .act_dtype = DT_F32,
                  .destroy = rec_destroy,
                  .alloc = rec_alloc,
                  .free = rec_free,
                  .upload = rec_upload};
    sd_wrecs rec = {0};
    wstore ws = {.be = &be, .get = rec_get, .has = rec_has, .ctx = &rec};
    taesd_config c;
    sd_taesd_config_for(a, &c);
    taesd_model *m = NULL;
    easel_err e = taesd_load_ws(&c, &ws, &ws, &m);
    taesd_free(m);
    char p[4096];
    snprintf(p, sizeof p, "%s/taesd", dir);
    if (!e) e = make_dir(p);
    out_tensor *t = e ? NULL : calloc(rec.n ? rec.n : 1, sizeof *t);
    if (!e && !t) e = easel_seterr(EASEL_ENOMEM, "out of memory");
    for (size_t i = 0; !e && i < rec.n; i++) {
        t[i] = (out_tensor){.name = rec.v[i].name, .source = rec.v[i].name, .ndim = rec.v[i].ndim};
        memcpy(t[i].shape, rec.v[i].shape, sizeof t[i].shape);
    }
    const char *meta[] = {"format", "pt"};
    snprintf(p, sizeof p, "%s/taesd/diffusion_pytorch_model.safetensors", dir);
    if (!e) e = stream_safetensors(p, t, rec.n, dt, seed, meta, 1);
    free(t);
    sd_wrecs_free(&rec);
    char *json = e ? NULL : taesd_config_json(&c);
    if (!e && !json) e = easel_seterr(EASEL_ENOMEM, "out of memory");
    snprintf(p, sizeof p, "%s/taesd/config.json", dir);
    if (!e) e = write_text(p, json);
    free(json);
    return e ? easel_wraperr(e, "writing taesd/") : EASEL_OK;
}

/* model_index.json: the pipeline class and each component's class, as
 * from_pretrained reads them (the scheduler's is the config's own class). */
static char *model_index_json(const sd_arch *a) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
#define COMP(key, lib, cls)                                                                        \
    do {                                                                                           \
        const char *v_[2] = {lib, cls};                                                            \
        cJSON_AddItemToObject(o, key, cJSON_CreateStringArray(v_, 2));                             \
    } while (0)
    int inpaint = a->unet.in_channels == 2 * a->vae.latent_channels + 1;
    cJSON_AddStringToObject(o, "_class_name",
                            a->has_text2 ? "StableDiffusionXLPipeline"
                            : inpaint    ? "StableDiffusionInpaintPipeline"
                                         : "StableDiffusionPipeline");
    /* the diffusers version whose folder layout this is (from_pretrained reads it: its
     * inpainting pipeline's legacy check fails on a folder without one) */
    cJSON_AddStringToObject(o, "_diffusers_version", "0.30.0");
    cJSON_AddStringToObject(o, "_easel_arch", a->arch);
    COMP("scheduler", "diffusers", a->sched.class_name[0] ? a->sched.class_name : "PNDMScheduler");
    COMP("text_encoder", "transformers", "CLIPTextModel");
    COMP("tokenizer", "transformers", "CLIPTokenizer");
    if (a->has_text2) {
        COMP("text_encoder_2", "transformers",
             a->clip2.projection ? "CLIPTextModelWithProjection" : "CLIPTextModel");
        COMP("tokenizer_2", "transformers", "CLIPTokenizer");
    }
    COMP("unet", "diffusers", "UNet2DConditionModel");
    COMP("vae", "diffusers", "AutoencoderKL");
#undef COMP
    cJSON *none[2] = {cJSON_CreateArray(), cJSON_CreateArray()};
    for (int i = 0; i < 2; i++) {
        cJSON_AddItemToArray(none[i], cJSON_CreateNull());
        cJSON_AddItemToArray(none[i], cJSON_CreateNull());
    }
    cJSON_AddItemToObject(o, "feature_extractor", none[0]);
    if (a->has_text2) {
        cJSON_AddItemToObject(o, "image_encoder", none[1]);
        cJSON_AddBoolToObject(o, "force_zeros_for_empty_prompt", a->force_zeros);
    } else {
        cJSON_AddItemToObject(o, "safety_checker", none[1]);
        cJSON_AddBoolToObject(o, "requires_safety_checker", 0);
    }
    char *text = cJSON_Print(o);
    cJSON_Delete(o);
    return text;
}

/* pad: "<|endoftext|>" (OpenAI CLIP, SD1.x) or "!" (OpenCLIP, SD2.x) */
static const char *tokenizer_config_fmt =
    "{\n  \"tokenizer_class\": \"CLIPTokenizer\",\n  \"model_max_length\": 77,\n"
    "  \"bos_token\": \"<|startoftext|>\",\n  \"eos_token\": \"<|endoftext|>\",\n"
    "  \"pad_token\": \"%s\",\n  \"unk_token\": \"<|endoftext|>\",\n"
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

/* <sub>/ (tokenizer, tokenizer_2): vocab.json + merges.txt (with the
 * "#version" line transformers skips) + tokenizer_config.json, as in SD1.5's
 * and SDXL's diffusers folders. */
static easel_err write_tokenizer(const char *dir, const char *sub, const char *pad) {
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, sub);
    easel_err e = make_dir(p);
    char *vocab = e ? NULL : vocab_json();
    if (!e && !vocab) e = easel_seterr(EASEL_ENOMEM, "building vocab.json failed");
    snprintf(p, sizeof p, "%s/%s/vocab.json", dir, sub);
    if (!e) e = write_text(p, vocab);
    free(vocab);
    snprintf(p, sizeof p, "%s/%s/merges.txt", dir, sub);
    fs_atomic a;
    if (!e && !(e = fs_atomic_open(&a, p))) {
        size_t n = 0;
        const char *merges = tokenizer_default_merges(&n), head[] = "#version: 0.2\n";
        e = fs_atomic_write(&a, head, sizeof head - 1);
        if (!e) e = fs_atomic_write(&a, merges, n);
        if (e)
            fs_atomic_abort(&a);
        else
            e = fs_atomic_commit(&a);
    }
    snprintf(p, sizeof p, "%s/%s/tokenizer_config.json", dir, sub);
    char cfg[512];
    snprintf(cfg, sizeof cfg, tokenizer_config_fmt, pad);
    if (!e) e = write_text(p, cfg);
    return e;
}

static easel_err write_folder(const char *dir, const sd_arch *a, const sd_wrecs *rec, dtype dt,
                              uint64_t seed) {
    char p[4096];
    easel_err e = make_dir(dir);
    for (int c = 0; c < SD_COMPONENTS && !e; c++)
        if (c != SD_TEXT2 || a->has_text2) e = write_component(dir, a, c, &rec[c], dt, seed);
    if (!e) e = write_tokenizer(dir, "tokenizer", a->clip.quick_gelu ? "<|endoftext|>" : "!");
    if (!e && a->has_text2) e = write_tokenizer(dir, "tokenizer_2", "!"); /* OpenCLIP's */
    if (!e) e = write_taesd(dir, a, dt, seed);
    snprintf(p, sizeof p, "%s/scheduler", dir);
    if (!e) e = make_dir(p);
    snprintf(p, sizeof p, "%s/scheduler/scheduler_config.json", dir);
    char *sched = e ? NULL : sched_config_to_json(&a->sched);
    if (!e && !sched) e = easel_seterr(EASEL_ENOMEM, "out of memory");
    if (!e) e = write_text(p, sched);
    free(sched);
    char *idx = e ? NULL : model_index_json(a);
    if (!e && !idx) e = easel_seterr(EASEL_ENOMEM, "out of memory");
    snprintf(p, sizeof p, "%s/model_index.json", dir);
    if (!e) e = write_text(p, idx);
    free(idx);
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
    char *cfg[SD_COMPONENTS] = {0}, *sched = sched_config_to_json(&a->sched);
    easel_err e = t && names && sched ? EASEL_OK : easel_seterr(EASEL_ENOMEM, "out of memory");
    size_t k = 0;
    for (int c = 0; c < SD_COMPONENTS && !e; c++) {
        for (size_t i = 0; i < rec[c].n && !e; i++) {
            const sd_wrec *w = &rec[c].v[i];
            char *nm = names + 256 * k;
            int part = -1;
            if ((e = ldm_name_part(a, c, w->name, nm, 256, &part))) break;
            if (part == 1 || part == 2) { /* k or v: joins the in_proj its q started */
                size_t f = k;
                while (f > 0 && k - f < 8 && strcmp(t[f - 1].name, nm))
                    f--;
                if (f == 0 || strcmp(t[f - 1].name, nm)) {
                    e = easel_seterr(EASEL_EINTERNAL, "'%s' before its q", w->name);
                    break;
                }
                t[f - 1].thirds[part] = w->name;
                continue;
            }
            t[k] = (out_tensor){.name = nm, .source = w->name, .ndim = w->ndim};
            memcpy(t[k].shape, w->shape, sizeof t[k].shape);
            if (part == 0) t[k].thirds[0] = w->name, t[k].shape[0] *= 3;
            if (part == LDM_PART_T)
                t[k].transpose = 1, t[k].shape[0] = w->shape[1], t[k].shape[1] = w->shape[0];
            /* LDM's VAE attention projections are 1x1 convolutions */
            if (c == SD_VAE && w->ndim == 2 && strstr(nm, ".attn_1."))
                t[k].ndim = 4, t[k].shape[2] = t[k].shape[3] = 1;
            k++;
        }
        if (!e && (c != SD_TEXT2 || a->has_text2) && !(cfg[c] = sd_config_json(a, c)))
            e = easel_seterr(EASEL_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < k && !e; i++)
        if (t[i].thirds[0] && (!t[i].thirds[1] || !t[i].thirds[2]))
            e = easel_seterr(EASEL_EINTERNAL, "'%s': q without k, v", t[i].name);
    const char *meta[] = {"format",
                          "pt",
                          "easel_arch",
                          a->arch,
                          "easel_unet_config",
                          cfg[0] ? cfg[0] : "",
                          "easel_vae_config",
                          cfg[1] ? cfg[1] : "",
                          "easel_text_encoder_config",
                          cfg[2] ? cfg[2] : "",
                          "easel_scheduler_config",
                          sched ? sched : "",
                          "easel_random_weights",
                          "true",
                          "easel_text_encoder_2_config",
                          cfg[3] ? cfg[3] : ""};
    if (!e) e = stream_safetensors(path, t, k, dt, seed, meta, a->has_text2 ? 8 : 7);
    free(sched);
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
    if (ends_with_st(out)) { /* its folder too, as for a diffusers folder */
        const char *slash = strrchr(out, '/');
        char dir[4096];
        if (slash && slash > out && (size_t)(slash - out) < sizeof dir) {
            memcpy(dir, out, (size_t)(slash - out));
            dir[slash - out] = 0;
            e = fs_mkdir_p(dir);
        }
    }
    if (!e)
        e = ends_with_st(out) ? write_single(out, a, rec, dt, seed)
                              : write_folder(out, a, rec, dt, seed);
    for (int c = 0; c < SD_COMPONENTS; c++)
        sd_wrecs_free(&rec[c]);
    return e;
}
