/* LoRA files, the model's weight index, merged sets and a worker's cache
 * (see lora.h); the directory and random LoRAs are in lora_lib.c. Names are
 * matched against the weights the model actually loaded: each weight's
 * kohya key (its diffusers and, for the UNet, its LDM module path with
 * underscores) and its diffusers path for PEFT files, so no guessing at
 * underscores. */
#include "lora.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "../engine/safetensors.h"
#include "../engine/utf8.h"

#define LORA_MAX_RANK 4096
#define LORA_META_MAX 512 /* bytes of a metadata value kept for listings */
#define LORA_TRIGGERS 8

static int starts(const char *s, const char *p) {
    return !strncmp(s, p, strlen(p));
}
static int ends(const char *s, const char *p) {
    size_t n = strlen(s), m = strlen(p);
    return n >= m && !strcmp(s + n - m, p);
}
static char *dupn(const char *s, size_t n) {
    char *d = malloc(n + 1);
    if (d) memcpy(d, s, n), d[n] = 0;
    return d;
}

const char *lora_format_name(lora_format f) {
    return f == LORA_PEFT ? "peft" : "kohya";
}

static const char *part_name(lora_part p) {
    static const char *n[] = {"unet", "text_encoder", "text_encoder_2"};
    return (unsigned)p < LORA_PARTS ? n[p] : "?";
}

/* ---- names and the prompt syntax (declared in pipeline.h) ---- */

int gen_lora_name_ok(const char *name) {
    size_t n = name ? strlen(name) : 0;
    if (!n || n > GEN_LORA_NAME_MAX || !utf8_valid(name, n, NULL) || name[0] == '/' ||
        name[n - 1] == '/')
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)name[i] < 0x20 || name[i] == 0x7f || name[i] == '\\' || name[i] == ':' ||
            name[i] == '<' || name[i] == '>')
            return 0;
    /* no "." or ".." segment: nothing outside the directory */
    for (const char *s = name; *s;) {
        const char *e = strchr(s, '/');
        size_t len = e ? (size_t)(e - s) : strlen(s);
        if (!len || (len == 1 && s[0] == '.') || (len == 2 && s[0] == '.' && s[1] == '.')) return 0;
        s += len + (e != NULL);
    }
    return 1;
}

static easel_err tag_err(const char **field, const char *tag, size_t len, const char *why) {
    if (field) *field = "prompt";
    return easel_seterr(EASEL_EINVAL, "prompt: %.*s: %s", (int)(len > 200 ? 200 : len), tag, why);
}

/* One tag's inside ("name" or "name:weight"), trimmed, into l. */
static easel_err parse_tag(const char *tag, size_t tlen, const char *in, size_t n, gen_lora *l,
                           const char **field) {
    while (n && isspace((unsigned char)*in))
        in++, n--;
    while (n && isspace((unsigned char)in[n - 1]))
        n--;
    const char *colon = memchr(in, ':', n);
    size_t nl = colon ? (size_t)(colon - in) : n;
    while (nl && isspace((unsigned char)in[nl - 1]))
        nl--;
    if (!nl || nl > GEN_LORA_NAME_MAX) return tag_err(field, tag, tlen, "needs a LoRA name");
    memcpy(l->name, in, nl);
    l->name[nl] = 0;
    if (!gen_lora_name_ok(l->name))
        return tag_err(field, tag, tlen, "not a LoRA name (no '..', '\\' or absolute paths)");
    l->weight = 1.0f;
    if (!colon) return EASEL_OK;
    char num[64];
    size_t wl = n - (size_t)(colon + 1 - in);
    if (!wl || wl >= sizeof num || memchr(colon + 1, ':', wl))
        return tag_err(field, tag, tlen, "takes a name and one weight (<lora:name:0.8>)");
    memcpy(num, colon + 1, wl);
    num[wl] = 0;
    char *end;
    errno = 0;
    double w = strtod(num, &end);
    while (*end && isspace((unsigned char)*end))
        end++;
    if (end == num || *end || errno || !isfinite(w) || fabs(w) > GEN_LORA_MAX_WEIGHT) {
        char why[96];
        snprintf(why, sizeof why, "the weight must be a number in [-%g, %g]",
                 (double)GEN_LORA_MAX_WEIGHT, (double)GEN_LORA_MAX_WEIGHT);
        return tag_err(field, tag, tlen, why);
    }
    l->weight = (float)w;
    return EASEL_OK;
}

easel_err gen_prompt_loras(char *prompt, gen_lora *loras, int *n, int max, const char **field) {
    if (!prompt) return EASEL_OK;
    char *p = prompt;
    while ((p = strchr(p, '<'))) {
        size_t pre = starts(p, "<lora:") || starts(p, "<lyco:") ? 6 : 0;
        if (!pre) {
            p++;
            continue;
        }
        char *close = strchr(p + pre, '>');
        if (!close) return tag_err(field, p, strlen(p), "has no closing '>'");
        size_t tlen = (size_t)(close + 1 - p);
        if (*n >= max) {
            char why[64];
            snprintf(why, sizeof why, "more than %d LoRAs in one request", max);
            return tag_err(field, p, tlen, why);
        }
        easel_err e = parse_tag(p, tlen, p + pre, (size_t)(close - p) - pre, &loras[*n], field);
        if (e) return e;
        (*n)++;
        memmove(p, close + 1, strlen(close + 1) + 1);
        /* from the start again: the text around a removed tag can form a new one
         * ("<lo<lora:a>ra:b>"), which must not survive into the stored prompt
         * (a re-read of the job would find it); at most max + 1 passes */
        p = prompt;
    }
    return EASEL_OK;
}

/* ---- parsing a file ---- */

struct lora_file {
    char *path;
    lora_info info;
    lora_module *mods;
    size_t nmods;
    char **mk, **mv; /* listed metadata */
    size_t nmeta;
    char *trig[LORA_TRIGGERS];
    int ntrig;
    void *data; /* with_data: the whole file, and st over it */
    st_file *st;
};

enum { R_DOWN = 0, R_UP, R_ALPHA };

typedef struct {
    char *key; /* module key (owned) */
    int role;
    lora_format fmt;
    const st_tensor *t;
} lf_ent;

static const struct {
    const char *suffix;
    int role;
} kohya_suffix[] = {{".lora_down.weight", R_DOWN}, {".lora_up.weight", R_UP}, {".alpha", R_ALPHA}},
  peft_suffix[] = {{".lora_A.weight", R_DOWN},
                   {".lora_B.weight", R_UP},
                   {".lora.down.weight", R_DOWN},
                   {".lora.up.weight", R_UP},
                   {".lora_linear_layer.down.weight", R_DOWN},
                   {".lora_linear_layer.up.weight", R_UP},
                   {"_lora.down.weight", R_DOWN}, /* attention-processor LoRAs: to_q_lora */
                   {"_lora.up.weight", R_UP},
                   {".alpha", R_ALPHA}};

/* What a tensor belongs to that we do not merge: named in the refusal. */
static const char *unsupported_kind(const char *name) {
    static const struct {
        const char *mark, *kind;
    } k[] = {{".hada_", "LyCORIS LoHa"},
             {".lokr_", "LyCORIS LoKr"},
             {".oft_", "OFT"},
             {"dora_scale", "DoRA"},
             {"lora_magnitude_vector", "DoRA"},
             {".lora_mid.", "LoCon with a Tucker core (lora_mid)"},
             {".diff", "a full-weight difference"},
             {"lora_embedding_", "an embedding LoRA"},
             {".lora_A.bias", "LoRA biases"},
             {".lora_B.bias", "LoRA biases"},
             {".w_norm", "GLoRA/norm adapters"},
             {".b_norm", "GLoRA/norm adapters"}};
    for (size_t i = 0; i < sizeof k / sizeof *k; i++)
        if (strstr(name, k[i].mark)) return k[i].kind;
    return NULL;
}

static int is_kohya_name(const char *n) {
    return starts(n, "lora_unet_") || starts(n, "lora_te_") || starts(n, "lora_te1_") ||
           starts(n, "lora_te2_");
}

/* The module key and role of tensor name, or an error naming it. */
static easel_err classify(const char *file, const char *name, lf_ent *e) {
    const char *kind = unsupported_kind(name);
    if (kind)
        return easel_seterr(EASEL_EUNSUPPORTED,
                            "%s: tensor '%s' belongs to %s, which easel does not merge (plain LoRA "
                            "and LoCon only)",
                            file, name, kind);
    int kohya = is_kohya_name(name);
    const char *dot = strchr(name, '.');
    if (kohya && dot) {
        for (size_t i = 0; i < sizeof kohya_suffix / sizeof *kohya_suffix; i++)
            if (!strcmp(dot, kohya_suffix[i].suffix)) {
                e->role = kohya_suffix[i].role, e->fmt = LORA_KOHYA;
                return (e->key = dupn(name, (size_t)(dot - name)))
                           ? EASEL_OK
                           : easel_seterr(EASEL_ENOMEM, "out of memory");
            }
    } else if (!kohya) {
        for (size_t i = 0; i < sizeof peft_suffix / sizeof *peft_suffix; i++)
            if (ends(name, peft_suffix[i].suffix)) {
                e->role = peft_suffix[i].role, e->fmt = LORA_PEFT;
                size_t n = strlen(name) - strlen(peft_suffix[i].suffix);
                if (peft_suffix[i].suffix[0] == '_') n += 5; /* keep "_lora": stripped later */
                return (e->key = dupn(name, n)) ? EASEL_OK
                                                : easel_seterr(EASEL_ENOMEM, "out of memory");
            }
    }
    return easel_seterr(EASEL_EFORMAT,
                        "%s: tensor '%s' is not part of a LoRA easel reads (kohya "
                        "lora_unet_/lora_te_ with .lora_down/.lora_up/.alpha, or PEFT/diffusers "
                        ".lora_A/.lora_B)",
                        file, name);
}

static int ent_cmp(const void *a, const void *b) {
    const lf_ent *x = a, *y = b;
    int c = strcmp(x->key, y->key);
    return c ? c : x->role - y->role;
}

/* A factor's shape: 2-D, or 4-D (conv). Matrix view: rows, and columns (the rest). */
static int factor_ok(const st_tensor *t) {
    if (t->ndim != 2 && t->ndim != 4) return 0;
    for (int i = 0; i < t->ndim; i++)
        if (t->shape[i] < 1) return 0;
    return t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16;
}

static const char *shp(int ndim, const int64_t *s, char *buf, size_t len) {
    size_t o = (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < ndim && o < len; i++)
        o += (size_t)snprintf(buf + o, len - o, "%s%lld", i ? "," : "", (long long)s[i]);
    if (o < len) snprintf(buf + o, len - o, "]");
    return buf;
}

/* PEFT module key -> part and the diffusers module path; older diffusers
 * spellings (attention processors, lora_linear_layer) normalised. */
static easel_err peft_path(const char *key, lora_part *part, char **path) {
    static const struct {
        const char *pre;
        int part;
    } pre[] = {{"unet.", LORA_UNET},
               {"text_encoder_2.", LORA_TEXT2},
               {"text_encoder.", LORA_TEXT},
               {"base_model.model.", -1},
               {"", -1}};
    size_t i = 0;
    while (!starts(key, pre[i].pre))
        i++;
    const char *rest = key + strlen(pre[i].pre);
    *part = pre[i].part >= 0              ? (lora_part)pre[i].part
            : starts(rest, "text_model.") ? LORA_TEXT
                                          : LORA_UNET;
    char buf[512];
    size_t o = 0;
    /* drop ".processor" segments */
    for (const char *s = rest; *s && o + 1 < sizeof buf;) {
        if (starts(s, ".processor.") || !strcmp(s, ".processor")) {
            s += 10;
            continue;
        }
        buf[o++] = *s++;
    }
    buf[o] = 0;
    if (ends(buf, "_lora")) buf[strlen(buf) - 5] = 0;
    static const char *te[][2] = {
        {"self_attn.to_q", "self_attn.q_proj"},
        {"self_attn.to_k", "self_attn.k_proj"},
        {"self_attn.to_v", "self_attn.v_proj"},
        {"self_attn.to_out", "self_attn.out_proj"},
    };
    if (*part != LORA_UNET)
        for (size_t k = 0; k < sizeof te / sizeof *te; k++)
            if (ends(buf, te[k][0]) && strlen(buf) - strlen(te[k][0]) + strlen(te[k][1]) < 500) {
                strcpy(buf + strlen(buf) - strlen(te[k][0]), te[k][1]);
                break;
            }
    if (*part == LORA_UNET && ends(buf, ".to_out") && strlen(buf) + 2 < sizeof buf)
        strcat(buf, ".0");
    return (*path = strdup(buf)) ? EASEL_OK : easel_seterr(EASEL_ENOMEM, "out of memory");
}

static easel_err read_scalar(const st_file *f, const st_tensor *t, float *v) {
    if (st_nelem(t) != 1)
        return easel_seterr(EASEL_EFORMAT, "%s: alpha '%s' is not one value", st_path(f), t->name);
    easel_err e = st_read_f32(f, t, v);
    if (!e && !(isfinite(*v) && *v > 0))
        return easel_seterr(EASEL_EFORMAT, "%s: alpha '%s' is %g (must be > 0)", st_path(f),
                            t->name, (double)*v);
    return e;
}

/* One group of tensors (a module) -> m. */
static easel_err make_module(lora_file *lf, const st_file *f, lf_ent *g, size_t n, lora_module *m) {
    const st_tensor *down = NULL, *up = NULL, *alpha = NULL;
    for (size_t i = 0; i < n; i++) {
        const st_tensor **slot = g[i].role == R_DOWN ? &down : g[i].role == R_UP ? &up : &alpha;
        if (*slot)
            return easel_seterr(EASEL_EFORMAT, "%s: module '%s' has two %s tensors ('%s', '%s')",
                                lf->path, g[0].key, g[i].role == R_ALPHA ? "alpha" : "factor",
                                (*slot)->name, g[i].t->name);
        *slot = g[i].t;
    }
    if (!down || !up)
        return easel_seterr(EASEL_EFORMAT, "%s: module '%s' has no %s", lf->path, g[0].key,
                            down ? "up (lora_up / lora_B) factor"
                                 : "down (lora_down / lora_A) factor");
    char a[96], b[96];
    if (!factor_ok(up) || !factor_ok(down) || up->shape[1] != down->shape[0] ||
        (up->ndim == 4 && (up->shape[2] != 1 || up->shape[3] != 1)))
        return easel_seterr(
            EASEL_EFORMAT,
            "%s: module '%s': factors '%s' %s and '%s' %s are not a LoRA pair "
            "(up [out,r] or [out,r,1,1], down [r,in] or [r,in,kh,kw], f32/f16/bf16)",
            lf->path, g[0].key, up->name, shp(up->ndim, up->shape, a, sizeof a), down->name,
            shp(down->ndim, down->shape, b, sizeof b));
    int64_t r = down->shape[0];
    if (r > LORA_MAX_RANK)
        return easel_seterr(EASEL_EFORMAT, "%s: module '%s' has rank %lld (at most %d)", lf->path,
                            g[0].key, (long long)r, LORA_MAX_RANK);
    memset(m, 0, sizeof *m);
    m->rank = (int)r;
    m->alpha = (float)r;
    m->up_ndim = up->ndim, m->down_ndim = down->ndim;
    memcpy(m->up_shape, up->shape, sizeof(int64_t) * (size_t)up->ndim);
    memcpy(m->down_shape, down->shape, sizeof(int64_t) * (size_t)down->ndim);
    if (alpha) {
        easel_err e = read_scalar(f, alpha, &m->alpha);
        if (e) return e;
    }
    if (!(m->key = strdup(g[0].key)) || !(m->up = strdup(up->name)) ||
        !(m->down = strdup(down->name)))
        return easel_seterr(EASEL_ENOMEM, "out of memory");
    if (g[0].fmt == LORA_KOHYA) {
        m->part = starts(m->key, "lora_unet_")  ? LORA_UNET
                  : starts(m->key, "lora_te2_") ? LORA_TEXT2
                                                : LORA_TEXT;
        if (!(m->path = strdup(m->key))) return easel_seterr(EASEL_ENOMEM, "out of memory");
        return EASEL_OK;
    }
    return peft_path(m->key, &m->part, &m->path);
}

/* ---- PEFT alphas: the adapter config (diffusers' lora_adapter_metadata, or a
 * PEFT adapter_config.json beside the file) ---- */

typedef struct {
    const cJSON *root;  /* the config object */
    const char *prefix; /* "unet." etc. in diffusers' flattened metadata, "" in a PEFT config */
} peft_cfg;

static const cJSON *cfg_get(const peft_cfg *c, const char *key) {
    char k[96];
    snprintf(k, sizeof k, "%s%s", c->prefix, key);
    return cJSON_GetObjectItemCaseSensitive(c->root, k);
}

/* PEFT's pattern match: the module path equals the key or ends with "." + key. */
static const cJSON *pattern_match(const cJSON *pat, const char *path) {
    const cJSON *it;
    size_t n = strlen(path);
    cJSON_ArrayForEach(it, pat) {
        size_t k = strlen(it->string);
        if (!strcmp(path, it->string) ||
            (n > k && path[n - k - 1] == '.' && !strcmp(path + n - k, it->string)))
            return it;
    }
    return NULL;
}

/* Sets each PEFT module's alpha (those without an .alpha tensor): the config's
 * alpha_pattern, else its lora_alpha, else the module's rank (scale 1, as
 * diffusers reads a file without alphas); use_rslora folds 1/sqrt(r) in
 * instead of 1/r. */
static easel_err peft_alphas(lora_file *lf, const st_file *f, const unsigned char *has_alpha) {
    cJSON *meta = NULL, *side = NULL;
    const char *m = st_meta_get(f, "lora_adapter_metadata");
    if (m && !(meta = cJSON_Parse(m)))
        return easel_seterr(EASEL_EFORMAT, "%s: lora_adapter_metadata is not JSON", lf->path);
    if (!meta) { /* a PEFT save_pretrained folder: adapter_config.json beside the weights */
        const char *slash = strrchr(lf->path, '/');
        char cfg[4096];
        snprintf(cfg, sizeof cfg, "%.*sadapter_config.json",
                 slash ? (int)(slash - lf->path + 1) : 0, lf->path);
        char *text = NULL;
        if (!access(cfg, R_OK) && !sd_read_text(cfg, 1 << 20, &text)) {
            side = cJSON_Parse(text);
            free(text);
            if (!side) return easel_seterr(EASEL_EFORMAT, "%s is not JSON", cfg);
        }
        easel_clearerr();
    }
    easel_err e = EASEL_OK;
    for (size_t i = 0; i < lf->nmods && !e; i++) {
        lora_module *md = &lf->mods[i];
        if (has_alpha[i]) continue;
        peft_cfg c = {meta ? meta : side, ""};
        char pre[32];
        if (meta) snprintf(pre, sizeof pre, "%s.", part_name(md->part)), c.prefix = pre;
        double alpha = md->rank;
        int rs = 0;
        if (c.root) {
            const cJSON *la = cfg_get(&c, "lora_alpha"), *ap = cfg_get(&c, "alpha_pattern");
            const cJSON *r = cfg_get(&c, "use_rslora");
            if (cJSON_IsNumber(la)) alpha = la->valuedouble;
            const cJSON *hit = cJSON_IsObject(ap) ? pattern_match(ap, md->path) : NULL;
            if (hit && cJSON_IsNumber(hit)) alpha = hit->valuedouble;
            rs = cJSON_IsTrue(r);
        }
        if (!(isfinite(alpha) && alpha > 0))
            e = easel_seterr(EASEL_EFORMAT, "%s: module '%s': lora_alpha %g (must be > 0)",
                             lf->path, md->key, alpha);
        md->alpha = (float)(rs ? alpha * sqrt((double)md->rank) : alpha);
    }
    cJSON_Delete(meta);
    cJSON_Delete(side);
    return e;
}

/* ---- what the file says it is for ---- */

static void guess_base(lora_file *lf, const st_file *f) {
    lora_info *in = &lf->info;
    const char *v = st_meta_get(f, "ss_base_model_version");
    const char *ms = st_meta_get(f, "modelspec.architecture");
    const char *v2 = st_meta_get(f, "ss_v2");
    const char *b = "";
    if (v) b = strstr(v, "xl") ? "sdxl" : strstr(v, "v2") || strstr(v, "_2") ? "sd2" : "sd1";
    if (!*b && ms)
        b = strstr(ms, "-xl") ? "sdxl" : strstr(ms, "-v2") ? "sd2" : strstr(ms, "-v1") ? "sd1" : "";
    if (!*b && v2) b = !strcmp(v2, "True") ? "sd2" : "sd1";
    if (*b) {
        snprintf(in->base, sizeof in->base, "%s", b);
        in->base_from = "metadata";
        return;
    }
    /* names: a second text encoder (kohya's lora_te1_/lora_te2_, PEFT's
     * text_encoder_2.) is SDXL's */
    for (size_t i = 0; i < lf->nmods && !*b; i++)
        if (lf->mods[i].part == LORA_TEXT2 || starts(lf->mods[i].key, "lora_te1_")) b = "sdxl";
    /* shapes: the cross-attention width the UNet keys take, or the text encoder's */
    for (size_t i = 0; i < lf->nmods && !*b; i++) {
        const lora_module *m = &lf->mods[i];
        int64_t in_dim = m->down_shape[1];
        if (m->part == LORA_UNET &&
            (strstr(m->path, "attn2_to_k") || strstr(m->path, "attn2.to_k")))
            b = in_dim == 768 ? "sd1" : in_dim == 1024 ? "sd2" : in_dim == 2048 ? "sdxl" : "";
        else if (m->part == LORA_TEXT && (strstr(m->path, "q_proj")))
            b = in_dim == 768 ? "sd1" : in_dim == 1024 ? "sd2" : "";
    }
    snprintf(in->base, sizeof in->base, "%s", b);
    in->base_from = *b ? "shapes" : "";
}

/* ---- metadata and trigger words for listings ---- */

static int meta_listed(const char *k) {
    if (!starts(k, "ss_") && !starts(k, "modelspec.")) return 0;
    static const char *skip[] = {"ss_tag_frequency", "ss_dataset_dirs",     "ss_datasets",
                                 "ss_bucket_info",   "ss_reg_dataset_dirs", "modelspec.thumbnail"};
    for (size_t i = 0; i < sizeof skip / sizeof *skip; i++)
        if (!strcmp(k, skip[i])) return 0;
    return 1;
}

typedef struct {
    const char *tag;
    double n;
} tag_count;

static int tag_cmp(const void *a, const void *b) {
    const tag_count *x = a, *y = b;
    if (x->n != y->n) return x->n < y->n ? 1 : -1;
    return strcmp(x->tag, y->tag);
}

/* kohya's ss_tag_frequency: {"dataset": {"tag": count, ...}, ...} -> the top tags. */
static void triggers_from_tags(lora_file *lf, const char *json) {
    cJSON *root = cJSON_Parse(json);
    if (!root) return;
    size_t n = 0, cap = 0;
    tag_count *v = NULL;
    const cJSON *ds, *t;
    cJSON_ArrayForEach(ds, root) {
        if (!cJSON_IsObject(ds)) continue;
        cJSON_ArrayForEach(t, ds) {
            if (!cJSON_IsNumber(t)) continue;
            size_t k = 0;
            while (k < n && strcmp(v[k].tag, t->string))
                k++;
            if (k == n) {
                if (n == cap) {
                    tag_count *nv = realloc(v, sizeof *v * (cap = cap ? 2 * cap : 64));
                    if (!nv) goto done;
                    v = nv;
                }
                v[n++] = (tag_count){t->string, 0};
            }
            v[k].n += t->valuedouble;
        }
    }
    qsort(v, n, sizeof *v, tag_cmp);
    for (size_t k = 0; k < n && lf->ntrig < LORA_TRIGGERS; k++) {
        char *s = dupn(v[k].tag, utf8_cut(v[k].tag, strlen(v[k].tag), 128));
        if (s) lf->trig[lf->ntrig++] = s;
    }
done:
    free(v);
    cJSON_Delete(root);
}

static easel_err keep_meta(lora_file *lf, const st_file *f) {
    size_t n = st_meta_count(f);
    lf->mk = calloc(n ? n : 1, sizeof *lf->mk);
    lf->mv = calloc(n ? n : 1, sizeof *lf->mv);
    if (!lf->mk || !lf->mv) return easel_seterr(EASEL_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        const char *k, *v;
        if (st_meta_at(f, i, &k, &v) || !meta_listed(k)) continue;
        lf->mk[lf->nmeta] = strdup(k);
        lf->mv[lf->nmeta] = dupn(v, utf8_cut(v, strlen(v), LORA_META_MAX));
        if (!lf->mk[lf->nmeta] || !lf->mv[lf->nmeta])
            return free(lf->mk[lf->nmeta]), free(lf->mv[lf->nmeta]),
                   easel_seterr(EASEL_ENOMEM, "out of memory");
        lf->nmeta++;
    }
    const char *tp = st_meta_get(f, "modelspec.trigger_phrase");
    if (tp && *tp) {
        char *s = dupn(tp, utf8_cut(tp, strlen(tp), 256));
        if (s) lf->trig[lf->ntrig++] = s;
    } else if ((tp = st_meta_get(f, "ss_tag_frequency"))) {
        triggers_from_tags(lf, tp);
    }
    return EASEL_OK;
}

/* Groups the tensors into modules and fills the info. */
static easel_err parse(lora_file *lf, const st_file *f) {
    size_t n = st_count(f);
    if (!n) return easel_seterr(EASEL_EFORMAT, "%s: no tensors (not a LoRA)", lf->path);
    lf_ent *v = calloc(n, sizeof *v);
    unsigned char *has_alpha = NULL;
    if (!v) return easel_seterr(EASEL_ENOMEM, "out of memory");
    easel_err e = EASEL_OK;
    for (size_t i = 0; i < n && !e; i++) {
        v[i].t = st_at(f, i);
        e = classify(lf->path, v[i].t->name, &v[i]);
        if (!e && v[i].fmt != v[0].fmt)
            e = easel_seterr(EASEL_EFORMAT,
                             "%s: mixes kohya ('%s') and PEFT ('%s') names; save it in one layout",
                             lf->path, v[0].fmt == LORA_KOHYA ? v[0].t->name : v[i].t->name,
                             v[0].fmt == LORA_KOHYA ? v[i].t->name : v[0].t->name);
    }
    if (!e) {
        qsort(v, n, sizeof *v, ent_cmp);
        lf->mods = calloc(n, sizeof *lf->mods);
        has_alpha = calloc(n, 1);
        if (!lf->mods || !has_alpha) e = easel_seterr(EASEL_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < n && !e;) {
        size_t j = i + 1;
        while (j < n && !strcmp(v[j].key, v[i].key))
            j++;
        has_alpha[lf->nmods] = v[j - 1].role == R_ALPHA;
        e = make_module(lf, f, v + i, j - i, &lf->mods[lf->nmods]);
        lf->nmods++; /* counted even on error: lora_close frees what it holds */
        i = j;
    }
    lf->info.format = n && !e ? v[0].fmt : LORA_KOHYA;
    if (!e && lf->info.format == LORA_PEFT) e = peft_alphas(lf, f, has_alpha);
    for (size_t i = 0; i < n; i++)
        free(v[i].key);
    free(v);
    free(has_alpha);
    if (e) return e;
    lora_info *in = &lf->info;
    in->rank_min = LORA_MAX_RANK + 1;
    for (size_t i = 0; i < lf->nmods; i++) {
        const lora_module *m = &lf->mods[i];
        in->modules++;
        in->part_modules[m->part]++;
        in->conv_modules += m->down_ndim == 4 && (m->down_shape[2] > 1 || m->down_shape[3] > 1);
        if (m->rank < in->rank_min) in->rank_min = m->rank;
        if (m->rank > in->rank_max) in->rank_max = m->rank;
        int64_t up = 1, dn = 1;
        for (int k = 0; k < m->up_ndim; k++)
            up *= m->up_shape[k];
        for (int k = 0; k < m->down_ndim; k++)
            dn *= m->down_shape[k];
        in->params += up + dn;
    }
    guess_base(lf, f);
    return keep_meta(lf, f);
}

/* Pickles are refused before anything reads them (as checkpoints are). */
static int pickle_name(const char *p) {
    return ends(p, ".pt") || ends(p, ".ckpt") || ends(p, ".pth") || ends(p, ".bin") ||
           ends(p, ".pkl");
}

static easel_err read_whole(const char *path, void **out, size_t *len) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return easel_seterr(EASEL_ENOTFOUND, "%s: %s", path, strerror(errno));
    struct stat st;
    void *buf = NULL;
    easel_err e = EASEL_OK;
    if (fstat(fileno(fp), &st) || !S_ISREG(st.st_mode))
        e = easel_seterr(EASEL_EIO, "%s: not a regular file", path);
    else if (!(buf = malloc(st.st_size ? (size_t)st.st_size : 1)))
        e = easel_seterr(EASEL_ENOMEM, "%s: out of memory reading %lld bytes", path,
                         (long long)st.st_size);
    else if (fread(buf, 1, (size_t)st.st_size, fp) != (size_t)st.st_size)
        e = easel_seterr(EASEL_EIO, "%s: short read (the file changed while it was read?)", path);
    fclose(fp);
    if (e) {
        free(buf);
        return e;
    }
    *out = buf, *len = (size_t)st.st_size;
    return EASEL_OK;
}

easel_err lora_open(const char *path, int with_data, lora_file **out) {
    *out = NULL;
    if (pickle_name(path))
        return easel_seterr(EASEL_EUNSUPPORTED,
                            "%s is a PyTorch pickle; easel does not load pickles because "
                            "unpickling can run arbitrary code. Convert it to .safetensors "
                            "once, in a sandbox (safetensors.torch.save_file(torch.load(path, "
                            "weights_only=True), 'x.safetensors'))",
                            path);
    lora_file *lf = calloc(1, sizeof *lf);
    if (!lf || !(lf->path = strdup(path))) {
        free(lf);
        return easel_seterr(EASEL_ENOMEM, "out of memory");
    }
    st_file *f = NULL;
    size_t len = 0;
    easel_err e = with_data ? read_whole(path, &lf->data, &len) : EASEL_OK;
    if (!e) e = with_data ? st_open_memory(lf->data, len, path, &f) : st_open(path, &f);
    if (!e) {
        struct stat st;
        lf->info.file_bytes = with_data ? (int64_t)len : !stat(path, &st) ? st.st_size : 0;
        e = parse(lf, f);
    }
    if (with_data)
        lf->st = f;
    else
        st_close(f);
    if (e) {
        lora_close(lf);
        return easel_wraperr(e, "LoRA %s", path);
    }
    *out = lf;
    return EASEL_OK;
}

void lora_close(lora_file *lf) {
    if (!lf) return;
    for (size_t i = 0; i < lf->nmods; i++) {
        lora_module *m = &lf->mods[i];
        free(m->key), free(m->path), free(m->up), free(m->down);
    }
    for (size_t i = 0; i < lf->nmeta; i++)
        free(lf->mk[i]), free(lf->mv[i]);
    for (int i = 0; i < lf->ntrig; i++)
        free(lf->trig[i]);
    free(lf->mk), free(lf->mv), free(lf->mods);
    st_close(lf->st);
    free(lf->data);
    free(lf->path);
    free(lf);
}

const lora_info *lora_file_info(const lora_file *lf) {
    return &lf->info;
}
size_t lora_file_count(const lora_file *lf) {
    return lf->nmods;
}
const lora_module *lora_file_module(const lora_file *lf, size_t i) {
    return i < lf->nmods ? &lf->mods[i] : NULL;
}
size_t lora_file_meta_count(const lora_file *lf) {
    return lf->nmeta;
}
int lora_file_meta_at(const lora_file *lf, size_t i, const char **key, const char **value) {
    if (i >= lf->nmeta) return -1;
    *key = lf->mk[i], *value = lf->mv[i];
    return 0;
}
int lora_file_triggers(const lora_file *lf, const char **out, int max) {
    int n = 0;
    for (; n < lf->ntrig && n < max; n++)
        out[n] = lf->trig[n];
    return n;
}

/* ---- the model's weights ---- */

typedef struct {
    char *name; /* diffusers name as the network asked for it */
    sd_component comp;
    weight_layout layout;
    int ndim;
    int64_t shape[4]; /* as asked (PyTorch order) */
    tensor t;         /* the model's tensor */
} ix_rec;

typedef struct {
    char *key; /* kohya key ("lora_unet_down_blocks_0_..."), owned */
    int rec;   /* -2: two weights share the key */
} ix_key;

typedef struct {
    lora_index *ix;
    sd_component c;
    wstore *inner;
} ix_wrap;

struct lora_index {
    sd_arch arch;
    ix_rec *recs; /* sorted by (comp, name) once finished */
    size_t n, cap;
    ix_key *keys;
    size_t nkeys;
    ix_wrap wrap[8];
};

static lora_part part_of(sd_component c) {
    return c == SD_UNET ? LORA_UNET : c == SD_TEXT ? LORA_TEXT : LORA_TEXT2;
}

easel_err lora_index_create(const sd_arch *a, lora_index **out) {
    *out = calloc(1, sizeof **out);
    if (!*out) return easel_seterr(EASEL_ENOMEM, "out of memory");
    (*out)->arch = *a;
    return EASEL_OK;
}

void lora_index_free(lora_index *ix) {
    if (!ix) return;
    for (size_t i = 0; i < ix->n; i++)
        free(ix->recs[i].name);
    for (size_t i = 0; i < ix->nkeys; i++)
        free(ix->keys[i].key);
    free(ix->recs), free(ix->keys), free(ix);
}

static easel_err ix_get(wstore *ws, const char *name, int ndim, const int64_t *shape,
                        weight_layout layout, tensor *out) {
    ix_wrap *w = ws->ctx;
    easel_err e = w->inner->get(w->inner, name, ndim, shape, layout, out);
    if (e) return e;
    lora_index *ix = w->ix;
    if (ix->n == ix->cap) {
        size_t cap = ix->cap ? 2 * ix->cap : 1024;
        ix_rec *r = realloc(ix->recs, sizeof *r * cap);
        if (!r) return easel_seterr(EASEL_ENOMEM, "lora index: out of memory");
        ix->recs = r, ix->cap = cap;
    }
    ix_rec *r = &ix->recs[ix->n];
    *r = (ix_rec){.comp = w->c, .layout = layout, .ndim = ndim, .t = *out};
    memcpy(r->shape, shape, sizeof(int64_t) * (size_t)(ndim < 4 ? ndim : 4));
    if (!(r->name = strdup(name))) return easel_seterr(EASEL_ENOMEM, "lora index: out of memory");
    ix->n++;
    return EASEL_OK;
}

static int ix_has(wstore *ws, const char *name) {
    ix_wrap *w = ws->ctx;
    return w->inner->has(w->inner, name);
}

void lora_index_wrap(lora_index *ix, sd_component c, wstore *inner, wstore *out) {
    ix_wrap *w = &ix->wrap[(unsigned)c % 8];
    *w = (ix_wrap){ix, c, inner};
    *out = (wstore){.be = inner->be, .get = ix_get, .has = ix_has, .ctx = w};
}

static int rec_cmp(const void *a, const void *b) {
    const ix_rec *x = a, *y = b;
    if (x->comp != y->comp) return (int)x->comp - (int)y->comp;
    return strcmp(x->name, y->name);
}
static int key_cmp(const void *a, const void *b) {
    return strcmp(((const ix_key *)a)->key, ((const ix_key *)b)->key);
}

/* The weights a LoRA may adapt: matrices of the UNet and text encoders
 * (linear and conv), not the embedding tables. */
static int adaptable(const ix_rec *r) {
    return r->comp != SD_VAE && r->ndim >= 2 && ends(r->name, ".weight") &&
           !strstr(r->name, "embeddings.");
}

/* "<prefix><module path with '.' -> '_'>" of a ".weight" name. */
static char *kohya_key(const char *prefix, const char *name) {
    size_t n = strlen(name) - 7, p = strlen(prefix);
    char *k = malloc(p + n + 1);
    if (!k) return NULL;
    memcpy(k, prefix, p);
    for (size_t i = 0; i < n; i++)
        k[p + i] = name[i] == '.' ? '_' : name[i];
    k[p + n] = 0;
    return k;
}

static easel_err add_key(lora_index *ix, size_t *cap, char *key, int rec) {
    if (!key) return easel_seterr(EASEL_ENOMEM, "lora index: out of memory");
    if (ix->nkeys == *cap) {
        size_t c = *cap ? 2 * *cap : 1024;
        ix_key *k = realloc(ix->keys, sizeof *k * c);
        if (!k) return free(key), easel_seterr(EASEL_ENOMEM, "lora index: out of memory");
        ix->keys = k, *cap = c;
    }
    ix->keys[ix->nkeys++] = (ix_key){key, rec};
    return EASEL_OK;
}

easel_err lora_index_finish(lora_index *ix) {
    qsort(ix->recs, ix->n, sizeof *ix->recs, rec_cmp);
    size_t cap = 0;
    easel_err e = EASEL_OK;
    for (size_t i = 0; i < ix->n && !e; i++) {
        const ix_rec *r = &ix->recs[i];
        if (!adaptable(r)) continue;
        lora_part p = part_of(r->comp);
        const char *pre = p == LORA_UNET ? "lora_unet_" : p == LORA_TEXT ? "lora_te_" : "lora_te2_";
        e = add_key(ix, &cap, kohya_key(pre, r->name), (int)i);
        if (!e && p == LORA_TEXT2) e = add_key(ix, &cap, kohya_key("lora_te2_", r->name), (int)i);
        if (!e && p == LORA_TEXT) e = add_key(ix, &cap, kohya_key("lora_te1_", r->name), (int)i);
        if (!e && p == LORA_UNET) { /* kohya on the LDM UNet (SDXL's trainer, some SD1 tools) */
            char ldm[512];
            if (!ldm_name(&ix->arch, SD_UNET, r->name, ldm, sizeof ldm) &&
                starts(ldm, "model.diffusion_model."))
                e = add_key(ix, &cap, kohya_key("lora_unet_", ldm + 22), (int)i);
            easel_clearerr();
        }
    }
    if (e) return e;
    qsort(ix->keys, ix->nkeys, sizeof *ix->keys, key_cmp);
    /* one key per weight: duplicates of the same weight collapse, clashes are marked */
    size_t o = 0;
    for (size_t i = 0; i < ix->nkeys; i++) {
        if (o && !strcmp(ix->keys[o - 1].key, ix->keys[i].key)) {
            if (ix->keys[o - 1].rec != ix->keys[i].rec) ix->keys[o - 1].rec = -2;
            free(ix->keys[i].key);
            continue;
        }
        ix->keys[o++] = ix->keys[i];
    }
    ix->nkeys = o;
    return EASEL_OK;
}

static const ix_rec *ix_find(const lora_index *ix, sd_component c, const char *name) {
    ix_rec probe = {.name = (char *)name, .comp = c};
    return bsearch(&probe, ix->recs, ix->n, sizeof *ix->recs, rec_cmp);
}

/* The weight module m adapts, or NULL. */
static const ix_rec *ix_target(const lora_index *ix, const lora_file *lf, const lora_module *m) {
    if (lf->info.format == LORA_KOHYA) {
        ix_key probe = {.key = m->path};
        const ix_key *k = bsearch(&probe, ix->keys, ix->nkeys, sizeof *ix->keys, key_cmp);
        return k && k->rec >= 0 ? &ix->recs[k->rec] : NULL;
    }
    sd_component c = m->part == LORA_UNET ? SD_UNET : m->part == LORA_TEXT ? SD_TEXT : SD_TEXT2;
    char name[600];
    snprintf(name, sizeof name, "%s.weight", m->path);
    const ix_rec *r = ix_find(ix, c, name);
    if (!r && m->part != LORA_UNET && !starts(m->path, "text_model.")) {
        snprintf(name, sizeof name, "text_model.%s.weight", m->path); /* transformers 5 saves */
        r = ix_find(ix, c, name);
    }
    return r && adaptable(r) ? r : NULL;
}

/* The factors as matrices for weight r: up [N,R], down [R,K] with K in our
 * layout's order. 0 if the module's shapes cannot adapt r. */
static int fits(const ix_rec *r, const lora_module *m, int64_t *N, int64_t *K) {
    int64_t out = r->shape[0], in = r->ndim > 1 ? r->shape[1] : 1;
    int64_t kh = r->ndim == 4 ? r->shape[2] : 1, kw = r->ndim == 4 ? r->shape[3] : 1;
    if (r->layout == WL_CONV_AS_LINEAR) kh = kw = 1;
    int64_t dkh = m->down_ndim == 4 ? m->down_shape[2] : 1;
    int64_t dkw = m->down_ndim == 4 ? m->down_shape[3] : 1;
    *N = out, *K = in * kh * kw;
    return m->up_shape[0] == out && m->down_shape[1] == in && dkh == kh && dkw == kw;
}

/* The base family a model of family f takes LoRAs of ("sd1", "sd2",
 * "sdxl"), as guess_base names them; "" if unknown. */
static const char *model_base(const char *f) {
    if (!strcmp(f, "sd15") || !strcmp(f, "lcm")) return "sd1";
    if (!strcmp(f, "sd2") || !strcmp(f, "sd2-v") || !strcmp(f, "sd-turbo")) return "sd2";
    if (starts(f, "sdxl")) return "sdxl";
    return "";
}

easel_err lora_check(const lora_index *ix, const lora_file *lf, const char *name) {
    const lora_info *in = &lf->info;
    char fam[48];
    if (strcmp(ix->arch.arch, ix->arch.family))
        snprintf(fam, sizeof fam, "%s (%s)", ix->arch.arch, ix->arch.family);
    else
        snprintf(fam, sizeof fam, "%s", ix->arch.arch);
    char miss[400] = "";
    size_t o = 0, nmiss = 0;
    for (size_t i = 0; i < lf->nmods; i++) {
        const lora_module *m = &lf->mods[i];
        const ix_rec *r = ix_target(ix, lf, m);
        int64_t N, K;
        if (r && !fits(r, m, &N, &K)) {
            char a[96], b[96], c[96];
            char base[96] = "";
            if (in->base[0])
                snprintf(base, sizeof base, " (the file is for %s, by its %s)", in->base,
                         in->base_from);
            return easel_seterr(EASEL_EINVAL,
                                "LoRA '%s' does not fit this %s model%s: its '%s' %s x '%s' %s "
                                "cannot adapt '%s' %s",
                                name, fam, base, m->up, shp(m->up_ndim, m->up_shape, a, sizeof a),
                                m->down, shp(m->down_ndim, m->down_shape, b, sizeof b), r->name,
                                shp(r->ndim, r->shape, c, sizeof c));
        }
        if (!r && nmiss++ < 4 && o < sizeof miss)
            o += (size_t)snprintf(miss + o, sizeof miss - o, "%s'%s'", nmiss > 1 ? ", " : "",
                                  m->key);
    }
    /* every layer fits: still refused when the file's own metadata names
     * another family (e.g. an SD1.5 text-encoder-only LoRA on SDXL's CLIP-L,
     * whose shapes are the same) */
    const char *mb = model_base(ix->arch.family);
    if (!nmiss && in->base[0] && !strcmp(in->base_from, "metadata") && mb[0] &&
        strcmp(mb, in->base))
        return easel_seterr(EASEL_EINVAL,
                            "LoRA '%s' is for %s models (by its metadata), this is a %s model "
                            "(%s)",
                            name, in->base, mb, fam);
    if (!nmiss) return EASEL_OK;
    char base[96] = "";
    if (in->base[0])
        snprintf(base, sizeof base, "; the file is for %s, by its %s", in->base, in->base_from);
    return easel_seterr(EASEL_EINVAL,
                        "LoRA '%s': %zu of its %zu layers match no weight of this %s model%s: "
                        "%s%s",
                        name, nmiss, lf->nmods, fam, base, miss, nmiss > 4 ? ", ..." : "");
}

/* ---- merged sets ---- */

typedef struct {
    int rec;          /* index record it replaces */
    const char *name; /* the record's */
    sd_component comp;
    tensor t; /* merged copy (owned) */
} set_ent;

struct lora_set {
    const lora_index *ix;
    backend *be;
    set_ent *v; /* sorted by (comp, name) like the records */
    size_t n;
    size_t bytes;
    int count[LORA_PARTS];
    sd_component comp; /* for lora_set_store's views, one per component */
    struct set_view {
        lora_set *s;
        sd_component c;
    } views[8];
};

/* One contribution to a weight. */
typedef struct {
    int rec;
    const lora_file *lf;
    const lora_module *m;
    float scale; /* weight · alpha / rank */
    const char *name;
} contrib;

static int contrib_cmp(const void *a, const void *b) {
    const contrib *x = a, *y = b;
    return x->rec != y->rec ? (x->rec < y->rec ? -1 : 1) : 0;
}

/* Every (weight, module) pair of the uses, grouped by weight, in use order
 * within a weight (stable: the sort keeps ties in collection order). */
static easel_err collect(const lora_index *ix, const lora_use *uses, int n, contrib **out,
                         size_t *count) {
    size_t total = 0;
    for (int u = 0; u < n; u++)
        total += uses[u].weight != 0.0f ? uses[u].file->nmods : 0;
    contrib *v = calloc(total ? total : 1, sizeof *v);
    if (!v) return easel_seterr(EASEL_ENOMEM, "out of memory");
    size_t k = 0;
    for (int u = 0; u < n; u++) {
        if (uses[u].weight == 0.0f) continue;
        easel_err e = lora_check(ix, uses[u].file, uses[u].name);
        if (e) return free(v), e;
        for (size_t i = 0; i < uses[u].file->nmods; i++) {
            const lora_module *m = &uses[u].file->mods[i];
            const ix_rec *r = ix_target(ix, uses[u].file, m);
            v[k++] = (contrib){(int)(r - ix->recs), uses[u].file, m,
                               uses[u].weight * m->alpha / (float)m->rank, uses[u].name};
        }
    }
    /* stable sort by record: insertion into runs (k is a few hundred) */
    for (size_t i = 1; i < k; i++) {
        contrib c = v[i];
        size_t j = i;
        while (j > 0 && contrib_cmp(&v[j - 1], &c) > 0)
            v[j] = v[j - 1], j--;
        v[j] = c;
    }
    *out = v, *count = k;
    return EASEL_OK;
}

easel_err lora_set_size(const lora_index *ix, const lora_use *uses, int n, size_t *bytes) {
    contrib *v;
    size_t k;
    *bytes = 0;
    easel_err e = collect(ix, uses, n, &v, &k);
    if (e) return e;
    for (size_t i = 0; i < k; i++)
        if (!i || v[i].rec != v[i - 1].rec) *bytes += tensor_nbytes(&ix->recs[v[i].rec].t);
    free(v);
    return EASEL_OK;
}

static easel_err finite_check(const float *x, int64_t n, const char *lora, const char *tensor) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return easel_seterr(EASEL_EFORMAT, "LoRA '%s': tensor '%s' has a non-finite value",
                                lora, tensor);
    return EASEL_OK;
}

/* The factors of contributions c[0..n) to weight r, side by side: up
 * [N, ΣR] (scale folded in when several), down [ΣR, K] in our layout. */
static easel_err stack_factors(const ix_rec *r, const contrib *c, size_t n, float *up, float *down,
                               int64_t N, int64_t K, int64_t RT) {
    int64_t r0 = 0;
    for (size_t i = 0; i < n; i++) {
        const lora_module *m = c[i].m;
        const st_file *f = c[i].lf->st;
        const st_tensor *tu = st_find(f, m->up), *td = st_find(f, m->down);
        int64_t R = m->rank;
        if (!f || !tu || !td)
            return easel_seterr(EASEL_EINTERNAL, "LoRA '%s' was not opened with its data",
                                c[i].name);
        float *u = malloc(sizeof(float) * (size_t)(N * R)),
              *d = malloc(sizeof(float) * (size_t)(R * K));
        easel_err e = !u || !d ? easel_seterr(EASEL_ENOMEM, "out of memory") : EASEL_OK;
        if (!e) e = st_read_f32(f, tu, u);
        if (!e) e = st_read_f32(f, td, d);
        if (!e) e = finite_check(u, N * R, c[i].name, m->up);
        if (!e) e = finite_check(d, R * K, c[i].name, m->down);
        if (e) return free(u), free(d), e;
        float s = n > 1 ? c[i].scale : 1.0f;
        for (int64_t y = 0; y < N; y++)
            for (int64_t q = 0; q < R; q++)
                up[y * RT + r0 + q] = s * u[y * R + q];
        int64_t ci = r->shape[1];
        int64_t kh = r->layout == WL_CONV ? r->shape[2] : 1,
                kw = r->layout == WL_CONV ? r->shape[3] : 1;
        for (int64_t q = 0; q < R; q++) {
            float *dst = down + (r0 + q) * K;
            const float *src = d + q * K;
            if (kh * kw == 1) {
                memcpy(dst, src, sizeof(float) * (size_t)K);
                continue;
            }
            /* [Ci, KH, KW] -> [KH, KW, Ci] (our conv layout) */
            for (int64_t i2 = 0; i2 < ci; i2++)
                for (int64_t y = 0; y < kh; y++)
                    for (int64_t x = 0; x < kw; x++)
                        dst[(y * kw + x) * ci + i2] = src[(i2 * kh + y) * kw + x];
        }
        free(u), free(d);
        r0 += R;
    }
    return EASEL_OK;
}

/* The merged copy of record r from its contributions. */
static easel_err merge_one(backend *be, const ix_rec *r, const contrib *c, size_t n, tensor *out) {
    int64_t N = 0, K = 0, RT = 0;
    for (size_t i = 0; i < n; i++)
        RT += c[i].m->rank;
    fits(r, c[0].m, &N, &K);
    float *up = malloc(sizeof(float) * (size_t)(N * RT));
    float *down = malloc(sizeof(float) * (size_t)(RT * K));
    tensor tu = {0}, td = {0};
    const int64_t une[2] = {N, RT}, dne[2] = {RT, K};
    easel_err e = !up || !down ? easel_seterr(EASEL_ENOMEM, "out of memory") : EASEL_OK;
    if (!e) e = stack_factors(r, c, n, up, down, N, K, RT);
    if (!e) e = backend_tensor_alloc(be, &tu, DT_F32, 2, une);
    if (!e) e = backend_tensor_alloc(be, &td, DT_F32, 2, dne);
    if (!e) e = be->upload(be, &tu, up);
    if (!e) e = be->upload(be, &td, down);
    if (!e) e = backend_tensor_alloc(be, out, r->t.dt, r->t.ndim, r->t.ne);
    if (!e) {
        e = be->lora_merge(be, out, &r->t, &tu, &td, n > 1 ? 1.0f : c[0].scale);
        if (!e) e = be->sync(be); /* the factors are freed next */
        if (e) backend_tensor_free(be, out);
    }
    backend_tensor_free(be, &tu), backend_tensor_free(be, &td);
    free(up), free(down);
    return e ? easel_wraperr(e, "merging into %s", r->name) : EASEL_OK;
}

easel_err lora_set_build(const lora_index *ix, const lora_use *uses, int n, backend *be,
                         lora_set **out) {
    *out = NULL;
    contrib *v;
    size_t k;
    easel_err e = collect(ix, uses, n, &v, &k);
    if (e) return e;
    lora_set *s = calloc(1, sizeof *s);
    if (s) s->v = calloc(k ? k : 1, sizeof *s->v);
    if (!s || !s->v) {
        free(v), free(s);
        return easel_seterr(EASEL_ENOMEM, "out of memory");
    }
    s->ix = ix, s->be = be;
    for (size_t i = 0; i < k && !e;) {
        size_t j = i + 1;
        while (j < k && v[j].rec == v[i].rec)
            j++;
        const ix_rec *r = &ix->recs[v[i].rec];
        set_ent *se = &s->v[s->n];
        *se = (set_ent){v[i].rec, r->name, r->comp, {0}};
        e = merge_one(be, r, v + i, j - i, &se->t);
        if (!e) {
            s->n++;
            s->bytes += tensor_nbytes(&se->t);
            s->count[part_of(r->comp)]++;
        }
        i = j;
    }
    free(v);
    if (e) {
        lora_set_free(s);
        return e;
    }
    *out = s;
    return EASEL_OK;
}

void lora_set_free(lora_set *s) {
    if (!s) return;
    for (size_t i = 0; i < s->n; i++)
        backend_tensor_free(s->be, &s->v[i].t);
    free(s->v);
    free(s);
}

size_t lora_set_bytes(const lora_set *s) {
    return s->bytes;
}
int lora_set_count(const lora_set *s, lora_part p) {
    return (unsigned)p < LORA_PARTS ? s->count[p] : 0;
}

static int ent_rec_cmp(const void *a, const void *b) {
    const set_ent *x = a, *y = b;
    if (x->comp != y->comp) return (int)x->comp - (int)y->comp;
    return strcmp(x->name, y->name);
}

const tensor *lora_set_find(const lora_set *s, sd_component c, const char *name) {
    set_ent probe = {.name = name, .comp = c};
    const set_ent *e = bsearch(&probe, s->v, s->n, sizeof *s->v, ent_rec_cmp);
    return e ? &e->t : NULL;
}

static easel_err view_get(wstore *ws, const char *name, int ndim, const int64_t *shape,
                          weight_layout layout, tensor *out) {
    const struct set_view *v = ws->ctx;
    (void)ndim, (void)shape, (void)layout; /* the same network asks as it did at load */
    const tensor *t = lora_set_find(v->s, v->c, name);
    const ix_rec *r = t ? NULL : ix_find(v->s->ix, v->c, name);
    if (!t && !r)
        return easel_seterr(EASEL_EINTERNAL, "lora view: %s: weight %s was not loaded",
                            sd_component_name(v->c), name);
    *out = t ? *t : r->t;
    return EASEL_OK;
}

static int view_has(wstore *ws, const char *name) {
    const struct set_view *v = ws->ctx;
    return ix_find(v->s->ix, v->c, name) != NULL;
}

void lora_set_store(lora_set *s, sd_component c, wstore *out) {
    struct set_view *v = &s->views[(unsigned)c % 8];
    *v = (struct set_view){s, c};
    *out = (wstore){.be = s->be, .get = view_get, .has = view_has, .ctx = v, .borrowed = 1};
}

/* ---- a worker's cache ---- */

typedef struct cache_ent {
    char *key;
    void *payload;
    size_t bytes;
    lora_cache_free_fn free_fn;
    uint64_t used; /* a tick: higher is more recent */
    struct cache_ent *next;
} cache_ent;

struct lora_cache {
    size_t cap, bytes;
    int n;
    uint64_t tick;
    cache_ent *head;
};

lora_cache *lora_cache_create(size_t cap_bytes) {
    lora_cache *c = calloc(1, sizeof *c);
    if (c) c->cap = cap_bytes;
    return c;
}

static void ent_free(cache_ent *e) {
    if (e->free_fn) e->free_fn(e->payload);
    free(e->key);
    free(e);
}

void lora_cache_free(lora_cache *c) {
    if (!c) return;
    for (cache_ent *e = c->head, *n; e; e = n) {
        n = e->next;
        ent_free(e);
    }
    free(c);
}

void *lora_cache_get(lora_cache *c, const char *key) {
    for (cache_ent *e = c->head; e; e = e->next)
        if (!strcmp(e->key, key)) {
            e->used = ++c->tick;
            return e->payload;
        }
    return NULL;
}

easel_err lora_cache_reserve(lora_cache *c, size_t bytes, const void *keep) {
    if (bytes > c->cap)
        return easel_seterr(EASEL_ENOMEM,
                            "the LoRA set's merged weights need %.1f MiB, over this worker's "
                            "LoRA cache of %.1f MiB (--lora-cache)",
                            bytes / 1048576.0, c->cap / 1048576.0);
    while (c->bytes + bytes > c->cap) {
        cache_ent **lru = NULL;
        for (cache_ent **p = &c->head; *p; p = &(*p)->next)
            if ((*p)->payload != keep && (!lru || (*p)->used < (*lru)->used)) lru = p;
        if (!lru)
            return easel_seterr(EASEL_ENOMEM,
                                "the LoRA cache cannot make %.1f MiB of room (cap %.1f MiB)",
                                bytes / 1048576.0, c->cap / 1048576.0);
        cache_ent *e = *lru;
        *lru = e->next;
        c->bytes -= e->bytes;
        c->n--;
        ent_free(e);
    }
    return EASEL_OK;
}

easel_err lora_cache_put(lora_cache *c, const char *key, void *payload, size_t bytes,
                         lora_cache_free_fn free_fn) {
    cache_ent *e = calloc(1, sizeof *e);
    if (!e || !(e->key = strdup(key))) {
        free(e);
        if (free_fn) free_fn(payload);
        return easel_seterr(EASEL_ENOMEM, "out of memory");
    }
    e->payload = payload, e->bytes = bytes, e->free_fn = free_fn, e->used = ++c->tick;
    e->next = c->head;
    c->head = e;
    c->bytes += bytes;
    c->n++;
    return EASEL_OK;
}

size_t lora_cache_bytes(const lora_cache *c, int *entries) {
    if (entries) *entries = c->n;
    return c->bytes;
}
size_t lora_cache_cap(const lora_cache *c) {
    return c->cap;
}
