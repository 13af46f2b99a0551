/* The LoRA directory (lora.h lora_lib): a name is DIR/NAME.safetensors, a
 * diffusers/PEFT save folder DIR/NAME/ (pytorch_lora_weights.safetensors or
 * adapter_model.safetensors), or a file of that stem anywhere two folders
 * deep; looked up afresh each time (files added while running are found),
 * refused when it resolves outside the directory. Parsed headers are kept
 * per path while the file's identity holds. Also random LoRAs (make-lora). */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "../engine/safetensors.h"
#include "lora.h"

#define LIB_DEPTH 2 /* folders below the directory searched and listed */

typedef struct {
    char *path;
    struct stat st; /* the identity the header was read at */
    lora_file *hdr; /* or err */
    char *err;
    easel_err code;
    int seen;
} lib_ent;

typedef struct {
    char *name, *path;
} lib_added;

struct lora_lib {
    char *dir;
    pthread_mutex_t mu;
    lib_ent *v;
    size_t n, cap;
    lib_added *add;
    size_t nadd;
};

static int ends(const char *s, const char *p) {
    size_t n = strlen(s), m = strlen(p);
    return n >= m && !strcmp(s + n - m, p);
}

easel_err lora_lib_create(const char *dir, lora_lib **out) {
    *out = NULL;
    lora_lib *l = calloc(1, sizeof *l);
    if (!l || !(l->dir = strdup(dir && *dir ? dir : "."))) {
        free(l);
        return easel_seterr(EASEL_ENOMEM, "out of memory");
    }
    size_t n = strlen(l->dir);
    while (n > 1 && l->dir[n - 1] == '/')
        l->dir[--n] = 0;
    pthread_mutex_init(&l->mu, NULL);
    *out = l;
    return EASEL_OK;
}

static void ent_clear(lib_ent *e) {
    lora_close(e->hdr);
    free(e->err);
    free(e->path);
}

void lora_lib_free(lora_lib *lib) {
    if (!lib) return;
    for (size_t i = 0; i < lib->n; i++)
        ent_clear(&lib->v[i]);
    for (size_t i = 0; i < lib->nadd; i++)
        free(lib->add[i].name), free(lib->add[i].path);
    free(lib->v), free(lib->add);
    pthread_mutex_destroy(&lib->mu);
    free(lib->dir);
    free(lib);
}

const char *lora_lib_dir(const lora_lib *lib) {
    return lib->dir;
}

/* The file's stem: "a/b/x.safetensors" -> "x"; a save folder's file -> the folder's name. */
static void stem_of(const char *path, char *out, size_t len) {
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    if ((!strcmp(b, "pytorch_lora_weights.safetensors") ||
         !strcmp(b, "adapter_model.safetensors")) &&
        b > path + 1) {
        const char *e = b - 1, *s = e;
        while (s > path && s[-1] != '/')
            s--;
        snprintf(out, len, "%.*s", (int)(e - s), s);
        return;
    }
    const char *dot = strrchr(b, '.');
    snprintf(out, len, "%.*s", (int)(dot ? (size_t)(dot - b) : strlen(b)), b);
}

easel_err lora_lib_add_file(lora_lib *lib, const char *path, char *name, size_t len) {
    struct stat st;
    if (stat(path, &st) || !S_ISREG(st.st_mode))
        return easel_seterr(EASEL_ENOTFOUND, "LoRA file %s: %s", path,
                            errno ? strerror(errno) : "not a file");
    stem_of(path, name, len);
    if (!gen_lora_name_ok(name))
        return easel_seterr(EASEL_EINVAL, "LoRA file %s: its name '%s' cannot be used", path, name);
    pthread_mutex_lock(&lib->mu);
    lib_added *a = realloc(lib->add, sizeof *a * (lib->nadd + 1));
    easel_err e = EASEL_OK;
    if (!a) {
        e = easel_seterr(EASEL_ENOMEM, "out of memory");
    } else {
        lib->add = a;
        a[lib->nadd] = (lib_added){strdup(name), strdup(path)};
        if (!a[lib->nadd].name || !a[lib->nadd].path) {
            free(a[lib->nadd].name), free(a[lib->nadd].path);
            e = easel_seterr(EASEL_ENOMEM, "out of memory");
        } else {
            lib->nadd++;
        }
    }
    pthread_mutex_unlock(&lib->mu);
    return e;
}

static int is_file(const char *p, struct stat *st) {
    return !stat(p, st) && S_ISREG(st->st_mode);
}

static int lora_ext(const char *n) {
    return ends(n, ".safetensors");
}
static int pickle_ext(const char *n) {
    return ends(n, ".pt") || ends(n, ".ckpt") || ends(n, ".pth") || ends(n, ".bin");
}

/* Depth-first search under dir for a LoRA file whose stem is stem. */
static int search(const char *dir, const char *stem, int depth, char *out, size_t len) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    struct dirent *de;
    int found = 0;
    while (!found && (de = readdir(d))) {
        if (de->d_name[0] == '.') continue;
        char p[PATH_MAX];
        if (snprintf(p, sizeof p, "%s/%s", dir, de->d_name) >= (int)sizeof p) continue;
        struct stat st;
        if (stat(p, &st)) continue;
        if (S_ISDIR(st.st_mode)) {
            if (depth > 0) found = search(p, stem, depth - 1, out, len);
            continue;
        }
        char s[NAME_MAX + 1];
        stem_of(p, s, sizeof s);
        if ((lora_ext(p) || pickle_ext(p)) && !strcmp(s, stem)) {
            snprintf(out, len, "%s", p);
            found = 1;
        }
    }
    closedir(d);
    return found;
}

/* path of name, under the lock. */
static easel_err locate(lora_lib *lib, const char *name, char *path, size_t len) {
    for (size_t i = 0; i < lib->nadd; i++)
        if (!strcmp(lib->add[i].name, name)) {
            snprintf(path, len, "%s", lib->add[i].path);
            return EASEL_OK;
        }
    if (!gen_lora_name_ok(name))
        return easel_seterr(EASEL_EINVAL,
                            "'%.*s' is not a LoRA name (a file name in the LoRA directory: no "
                            "'..', '\\' or absolute paths)",
                            GEN_LORA_NAME_MAX, name);
    static const char *forms[] = {"%s/%s.safetensors",
                                  "%s/%s",
                                  "%s/%s/pytorch_lora_weights.safetensors",
                                  "%s/%s/adapter_model.safetensors",
                                  "%s/%s.pt",
                                  "%s/%s.ckpt",
                                  "%s/%s.pth",
                                  "%s/%s.bin"};
    struct stat st;
    for (size_t i = 0; i < sizeof forms / sizeof *forms; i++) {
        if (i == 1 && !lora_ext(name)) continue;
        if (snprintf(path, len, forms[i], lib->dir, name) < (int)len && is_file(path, &st))
            return EASEL_OK;
    }
    if (!strchr(name, '/') && search(lib->dir, name, LIB_DEPTH, path, len)) return EASEL_OK;
    return easel_seterr(EASEL_ENOTFOUND,
                        "unknown LoRA '%s' (no %s.safetensors in the LoRA directory; GET "
                        "/v1/loras lists them)",
                        name, name);
}

/* The found file stays inside the directory, symlinks resolved. */
static easel_err inside(const lora_lib *lib, const char *name, const char *path) {
    char rd[PATH_MAX], rp[PATH_MAX];
    if (!realpath(lib->dir, rd) || !realpath(path, rp))
        return easel_seterr(EASEL_ENOTFOUND, "LoRA '%s': %s", name, strerror(errno));
    size_t n = strlen(rd);
    if (strncmp(rp, rd, n) || (rp[n] != '/' && strcmp(rd, "/")))
        return easel_seterr(EASEL_EINVAL, "LoRA '%s' resolves outside the LoRA directory", name);
    return EASEL_OK;
}

static void stamp_of(const struct stat *st, char *out, size_t len) {
    snprintf(out, len, "%llu:%llu:%lld:%lld.%09ld", (unsigned long long)st->st_dev,
             (unsigned long long)st->st_ino, (long long)st->st_size, (long long)st->st_mtim.tv_sec,
             (long)st->st_mtim.tv_nsec);
}

static int added(const lora_lib *lib, const char *name) {
    for (size_t i = 0; i < lib->nadd; i++)
        if (!strcmp(lib->add[i].name, name)) return 1;
    return 0;
}

static easel_err find_locked(lora_lib *lib, const char *name, char *path, size_t len,
                             struct stat *st) {
    easel_err e = locate(lib, name, path, len);
    if (!e && !added(lib, name)) e = inside(lib, name, path);
    if (!e && !is_file(path, st))
        e = easel_seterr(EASEL_ENOTFOUND, "LoRA '%s': %s is gone", name, path);
    return e;
}

easel_err lora_lib_find(lora_lib *lib, const char *name, char *path, size_t len, char *stamp,
                        size_t stamp_len) {
    struct stat st;
    pthread_mutex_lock(&lib->mu);
    easel_err e = find_locked(lib, name, path, len, &st);
    pthread_mutex_unlock(&lib->mu);
    if (!e && stamp) stamp_of(&st, stamp, stamp_len);
    return e;
}

easel_err lora_lib_open(const lora_lib *lib, const char *path, int with_data, lora_file **out) {
    easel_err e = lora_open(path, with_data, out);
    if (!e) return EASEL_OK;
    /* messages name files relative to the directory: the server's layout stays its own */
    char msg[1024], pre[PATH_MAX + 2];
    snprintf(msg, sizeof msg, "%s", easel_errmsg());
    int n = snprintf(pre, sizeof pre, "%s/", lib->dir);
    for (char *p; n > 1 && (p = strstr(msg, pre));)
        memmove(p, p + n, strlen(p + n) + 1);
    return easel_seterr(e, "%s", msg);
}

static int same_file(const struct stat *a, const struct stat *b) {
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

/* The cached header of path (re-read when the file changed), under the lock. */
static lib_ent *header(lora_lib *lib, const char *path, const struct stat *st) {
    lib_ent *e = NULL;
    for (size_t i = 0; i < lib->n && !e; i++)
        if (!strcmp(lib->v[i].path, path)) e = &lib->v[i];
    if (e && same_file(&e->st, st)) return e;
    if (!e) {
        if (lib->n == lib->cap) {
            size_t cap = lib->cap ? 2 * lib->cap : 16;
            lib_ent *v = realloc(lib->v, sizeof *v * cap);
            if (!v) return NULL;
            lib->v = v, lib->cap = cap;
        }
        e = &lib->v[lib->n];
        memset(e, 0, sizeof *e);
        if (!(e->path = strdup(path))) return NULL;
        lib->n++;
    } else {
        lora_close(e->hdr), free(e->err);
        e->hdr = NULL, e->err = NULL;
    }
    e->st = *st;
    e->code = lora_lib_open(lib, path, 0, &e->hdr);
    if (e->code) e->err = strdup(easel_errmsg());
    return e;
}

easel_err lora_lib_check(lora_lib *lib, const char *name, const lora_index *ix) {
    char path[PATH_MAX];
    struct stat st;
    pthread_mutex_lock(&lib->mu);
    easel_err e = find_locked(lib, name, path, sizeof path, &st);
    lib_ent *h = e ? NULL : header(lib, path, &st);
    if (!e && !h) e = easel_seterr(EASEL_ENOMEM, "out of memory");
    if (!e && h->code) e = easel_seterr(h->code, "%s", h->err ? h->err : "unreadable");
    if (!e && ix) e = lora_check(ix, h->hdr, name);
    pthread_mutex_unlock(&lib->mu);
    return e;
}

/* ---- listing ---- */

typedef struct {
    char *name, *path;
} found;

typedef struct {
    found *v;
    size_t n, cap;
} found_list;

static int push(found_list *l, const char *name, const char *path) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 32;
        found *v = realloc(l->v, sizeof *v * cap);
        if (!v) return 0;
        l->v = v, l->cap = cap;
    }
    l->v[l->n] = (found){strdup(name), strdup(path)};
    if (!l->v[l->n].name || !l->v[l->n].path)
        return free(l->v[l->n].name), free(l->v[l->n].path), 0;
    l->n++;
    return 1;
}

/* Files under dir; rel is the name prefix ("" or "sub/"). */
static int scan(const char *dir, const char *rel, int depth, found_list *l) {
    DIR *d = opendir(dir);
    if (!d) return 1;
    struct dirent *de;
    int ok = 1;
    while (ok && (de = readdir(d))) {
        if (de->d_name[0] == '.') continue; /* hidden, and our temp files */
        char p[PATH_MAX], r[PATH_MAX];
        if (snprintf(p, sizeof p, "%s/%s", dir, de->d_name) >= (int)sizeof p ||
            snprintf(r, sizeof r, "%s%s", rel, de->d_name) >= (int)sizeof r)
            continue;
        struct stat st;
        if (stat(p, &st)) continue;
        if (S_ISDIR(st.st_mode)) {
            char sub[PATH_MAX + 2];
            snprintf(sub, sizeof sub, "%s/", r);
            if (depth > 0) ok = scan(p, sub, depth - 1, l);
            continue;
        }
        if (!lora_ext(de->d_name) && !pickle_ext(de->d_name)) continue;
        char name[PATH_MAX];
        const char *dot = strrchr(r, '.');
        snprintf(name, sizeof name, "%.*s", (int)(dot - r), r);
        if (!strcmp(de->d_name, "pytorch_lora_weights.safetensors") ||
            !strcmp(de->d_name, "adapter_model.safetensors"))
            snprintf(name, sizeof name, "%.*s", (int)(strlen(rel) ? strlen(rel) - 1 : 0), rel);
        if (name[0]) ok = push(l, name, p);
    }
    closedir(d);
    return ok;
}

static int found_cmp(const void *a, const void *b) {
    return strcmp(((const found *)a)->name, ((const found *)b)->name);
}

easel_err lora_lib_each(lora_lib *lib, void (*fn)(void *ctx, const lora_entry *e), void *ctx) {
    found_list l = {0};
    pthread_mutex_lock(&lib->mu);
    int ok = scan(lib->dir, "", LIB_DEPTH, &l);
    for (size_t i = 0; ok && i < lib->nadd; i++)
        ok = push(&l, lib->add[i].name, lib->add[i].path);
    easel_err e = ok ? EASEL_OK : easel_seterr(EASEL_ENOMEM, "out of memory");
    if (!e) qsort(l.v, l.n, sizeof *l.v, found_cmp);
    for (size_t i = 0; i < lib->n; i++)
        lib->v[i].seen = 0;
    for (size_t i = 0; !e && i < l.n; i++) {
        struct stat st;
        if (!is_file(l.v[i].path, &st)) continue;
        lib_ent *h = header(lib, l.v[i].path, &st);
        if (!h) {
            e = easel_seterr(EASEL_ENOMEM, "out of memory");
            break;
        }
        h->seen = 1;
        lora_entry en = {l.v[i].name, l.v[i].path, (int64_t)st.st_size, h->hdr,
                         h->code ? (h->err ? h->err : "unreadable") : NULL};
        fn(ctx, &en);
    }
    /* forget headers of files that are gone */
    size_t o = 0;
    for (size_t i = 0; i < lib->n; i++) {
        if (!e && !lib->v[i].seen) {
            ent_clear(&lib->v[i]);
            continue;
        }
        lib->v[o++] = lib->v[i];
    }
    lib->n = o;
    pthread_mutex_unlock(&lib->mu);
    for (size_t i = 0; i < l.n; i++)
        free(l.v[i].name), free(l.v[i].path);
    free(l.v);
    return e;
}

/* ---- random LoRAs ---- */

void lora_make_opts_default(lora_make_opts *o) {
    memset(o, 0, sizeof *o);
    o->format = LORA_KOHYA;
    o->rank = 4;
    o->text_encoder = 1;
    o->dt = DT_F16;
}

/* The layers kohya's default network trains: the transformers' linear
 * layers (and 1x1 proj convs) in the UNet, attention and MLP in the text
 * encoder; with conv (LoCon) the ResNets, samplers and time projections. */
static int target(sd_component c, const char *n, const lora_make_opts *o) {
    static const char *attn[] = {".to_q.weight",     ".to_k.weight",          ".to_v.weight",
                                 ".to_out.0.weight", ".ff.net.0.proj.weight", ".ff.net.2.weight",
                                 ".proj_in.weight",  ".proj_out.weight"};
    static const char *conv[] = {".conv1.weight", ".conv2.weight", ".conv_shortcut.weight",
                                 ".time_emb_proj.weight", "samplers.0.conv.weight"};
    static const char *text[] = {"self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                 "self_attn.v_proj.weight", "self_attn.out_proj.weight",
                                 "mlp.fc1.weight",          "mlp.fc2.weight"};
    if (c == SD_UNET) {
        for (size_t i = 0; i < sizeof attn / sizeof *attn; i++)
            if (strstr(n, ".attentions.") && ends(n, attn[i])) return 1;
        if (o->conv)
            for (size_t i = 0; i < sizeof conv / sizeof *conv; i++)
                if (ends(n, conv[i])) return 1;
        return 0;
    }
    if ((c == SD_TEXT || c == SD_TEXT2) && o->text_encoder)
        for (size_t i = 0; i < sizeof text / sizeof *text; i++)
            if (ends(n, text[i])) return 1;
    return 0;
}

static uint64_t mix(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void fill(float *v, int64_t n, float bound, uint64_t seed, const char *name, int salt) {
    uint64_t s = seed * 0x100000001b3ull + (uint64_t)salt;
    for (const char *p = name; *p; p++)
        s = (s ^ (unsigned char)*p) * 1099511628211ull;
    for (int64_t i = 0; i < n; i++)
        v[i] = bound * (2.0f * (float)((mix(&s) >> 40) * (1.0 / 16777216.0)) - 1.0f);
}

/* Values the writer references until save: one block per tensor. */
typedef struct {
    void **blocks;
    size_t n, cap;
} keep_list;

static void *keep(keep_list *k, size_t bytes) {
    if (k->n == k->cap) {
        size_t cap = k->cap ? 2 * k->cap : 256;
        void **b = realloc(k->blocks, sizeof *b * cap);
        if (!b) return NULL;
        k->blocks = b, k->cap = cap;
    }
    void *p = malloc(bytes ? bytes : 1);
    if (p) k->blocks[k->n++] = p;
    return p;
}

/* n f32 values as dt in a kept block. */
static void *as_dtype(keep_list *k, const float *v, int64_t n, dtype dt) {
    if (dt == DT_F32) {
        float *p = keep(k, sizeof(float) * (size_t)n);
        if (p) memcpy(p, v, sizeof(float) * (size_t)n);
        return p;
    }
    uint16_t *p = keep(k, 2 * (size_t)n);
    for (int64_t i = 0; p && i < n; i++)
        p[i] = dt == DT_BF16 ? f32_to_bf16(v[i]) : f32_to_f16(v[i]);
    return p;
}

/* Where a random module's names start, per component (UNet, text encoder,
 * text encoder 2). SDXL's kohya files (sd-scripts trains SDXL on the LDM UNet)
 * name the UNet's layers by their LDM paths and the first encoder lora_te1_. */
static const char *kohya_prefix(sd_component c, int xl) {
    return c == SD_UNET    ? "lora_unet_"
           : c == SD_TEXT2 ? "lora_te2_"
           : xl            ? "lora_te1_"
                           : "lora_te_";
}
static const char *peft_prefix(sd_component c) {
    return c == SD_UNET ? "unet" : c == SD_TEXT2 ? "text_encoder_2" : "text_encoder";
}
static int target_slot(sd_component c) {
    return c == SD_UNET ? 0 : c == SD_TEXT2 ? 2 : 1;
}

static easel_err add_module(st_writer *w, keep_list *k, const sd_arch *a, const sd_wrec *r,
                            sd_component c, const lora_make_opts *o, cJSON *targets[3]) {
    int R = o->rank;
    int conv4 = r->ndim == 4;
    int64_t out = r->shape[0], in = r->shape[1];
    int64_t kh = conv4 && r->layout == WL_CONV ? r->shape[2] : 1;
    int64_t kw = conv4 && r->layout == WL_CONV ? r->shape[3] : 1;
    int64_t dshape[4] = {R, in, kh, kw}, ushape[4] = {out, R, 1, 1};
    int64_t nd = (int64_t)R * in * kh * kw, nu = out * (int64_t)R;
    float *d = malloc(sizeof(float) * (size_t)nd), *u = malloc(sizeof(float) * (size_t)nu);
    if (!d || !u) return free(d), free(u), easel_seterr(EASEL_ENOMEM, "out of memory");
    fill(d, nd, 1.0f / sqrtf((float)(in * kh * kw)), o->seed, r->name, 1);
    fill(u, nu, 0.5f / sqrtf((float)R), o->seed, r->name, 2);
    st_dtype sdt = o->dt == DT_F32 ? ST_F32 : o->dt == DT_BF16 ? ST_BF16 : ST_F16;
    void *dd = as_dtype(k, d, nd, o->dt), *ud = as_dtype(k, u, nu, o->dt);
    free(d), free(u);
    if (!dd || !ud) return easel_seterr(EASEL_ENOMEM, "out of memory");
    char base[600], name[700];
    size_t bl = strlen(r->name) - 7; /* without ".weight" */
    easel_err e;
    if (o->format == LORA_KOHYA) {
        const char *pre = kohya_prefix(c, a->has_text2);
        snprintf(base, sizeof base, "%s%.*s", pre, (int)bl, r->name);
        char ldm[600];
        if (c == SD_UNET && a->has_text2) {
            e = ldm_name(a, SD_UNET, r->name, ldm, sizeof ldm);
            if (e || strncmp(ldm, "model.diffusion_model.", 22) || strlen(ldm) < 22 + 7)
                return e ? e : easel_seterr(EASEL_EINTERNAL, "no LDM name for %s", r->name);
            snprintf(base, sizeof base, "%s%.*s", pre, (int)(strlen(ldm) - 22 - 7), ldm + 22);
        }
        for (char *p = base + strlen(pre); *p; p++)
            if (*p == '.') *p = '_';
        snprintf(name, sizeof name, "%s.lora_down.weight", base);
        e = st_writer_add(w, name, sdt, conv4 ? 4 : 2, dshape, dd);
        snprintf(name, sizeof name, "%s.lora_up.weight", base);
        if (!e) e = st_writer_add(w, name, sdt, conv4 ? 4 : 2, ushape, ud);
        float *a = keep(k, sizeof(float));
        if (!a) return easel_seterr(EASEL_ENOMEM, "out of memory");
        *a = o->alpha > 0 ? o->alpha : (float)R;
        snprintf(name, sizeof name, "%s.alpha", base);
        if (!e) e = st_writer_add(w, name, ST_F32, 0, NULL, a);
        return e;
    }
    snprintf(base, sizeof base, "%s.%.*s", peft_prefix(c), (int)bl, r->name);
    snprintf(name, sizeof name, "%s.lora_A.weight", base);
    e = st_writer_add(w, name, sdt, conv4 ? 4 : 2, dshape, dd);
    snprintf(name, sizeof name, "%s.lora_B.weight", base);
    if (!e) e = st_writer_add(w, name, sdt, conv4 ? 4 : 2, ushape, ud);
    char mod[600];
    snprintf(mod, sizeof mod, "%.*s", (int)bl, r->name);
    if (!e) cJSON_AddItemToArray(targets[target_slot(c)], cJSON_CreateString(mod));
    return e;
}

/* diffusers' lora_adapter_metadata: each network's LoraConfig, keys prefixed. */
static easel_err peft_meta(st_writer *w, const lora_make_opts *o, cJSON *targets[3]) {
    cJSON *m = cJSON_CreateObject();
    const char *pre[3] = {"unet", "text_encoder", "text_encoder_2"};
    char k[64];
    for (int i = 0; i < 3; i++) {
        if (!cJSON_GetArraySize(targets[i])) continue;
        snprintf(k, sizeof k, "%s.r", pre[i]);
        cJSON_AddNumberToObject(m, k, o->rank);
        snprintf(k, sizeof k, "%s.lora_alpha", pre[i]);
        cJSON_AddNumberToObject(m, k, o->alpha > 0 ? o->alpha : o->rank);
        snprintf(k, sizeof k, "%s.target_modules", pre[i]);
        cJSON_AddItemToObject(m, k, cJSON_Duplicate(targets[i], 1));
        snprintf(k, sizeof k, "%s.rank_pattern", pre[i]);
        cJSON_AddItemToObject(m, k, cJSON_CreateObject());
        snprintf(k, sizeof k, "%s.alpha_pattern", pre[i]);
        cJSON_AddItemToObject(m, k, cJSON_CreateObject());
    }
    char *text = cJSON_PrintUnformatted(m);
    cJSON_Delete(m);
    if (!text) return easel_seterr(EASEL_ENOMEM, "out of memory");
    easel_err e = st_writer_meta(w, "lora_adapter_metadata", text);
    free(text);
    return e;
}

easel_err lora_make_random(const sd_arch *a, const lora_make_opts *o, const char *path) {
    if (o->rank < 1 || o->rank > 1024)
        return easel_seterr(EASEL_EINVAL, "rank must be in [1, 1024] (got %d)", o->rank);
    sd_wrecs rec[SD_COMPONENTS];
    easel_err e = sd_record_weights(a, rec);
    if (e) return easel_wraperr(e, "recording the %s weights", a->arch);
    st_writer *w = st_writer_create();
    keep_list k = {0};
    cJSON *targets[3] = {cJSON_CreateArray(), cJSON_CreateArray(), cJSON_CreateArray()};
    if (!w || !targets[0] || !targets[1] || !targets[2])
        e = easel_seterr(EASEL_ENOMEM, "out of memory");
    int count = 0;
    sd_component comps[3] = {SD_UNET, SD_TEXT, SD_TEXT2};
    for (int ci = 0; ci < (a->has_text2 ? 3 : 2) && !e; ci++)
        for (size_t i = 0; i < rec[comps[ci]].n && !e; i++) {
            const sd_wrec *r = &rec[comps[ci]].v[i];
            if (r->ndim < 2 || !target(comps[ci], r->name, o)) continue;
            e = add_module(w, &k, a, r, comps[ci], o, targets);
            count++;
        }
    if (!e && !count) e = easel_seterr(EASEL_EINVAL, "no layer of %s to adapt", a->arch);
    /* kohya's ss_base_model_version spellings */
    const char *base =
        o->base        ? o->base
        : a->has_text2 ? "sdxl_base_v1-0"
        : !strcmp(a->family, "sd2") || !strcmp(a->family, "sd2-v") || !strcmp(a->family, "sd-turbo")
            ? "sd_v2"
            : "sd_v1";
    if (!e && o->format == LORA_KOHYA) {
        char r[32], al[32];
        snprintf(r, sizeof r, "%d", o->rank);
        snprintf(al, sizeof al, "%g", o->alpha > 0 ? (double)o->alpha : (double)o->rank);
        e = st_writer_meta(w, "ss_network_module", "networks.lora");
        if (!e) e = st_writer_meta(w, "ss_network_dim", r);
        if (!e) e = st_writer_meta(w, "ss_network_alpha", al);
        if (!e) e = st_writer_meta(w, "ss_base_model_version", base);
        if (!e) e = st_writer_meta(w, "ss_output_name", "easel-random");
        if (!e) e = st_writer_meta(w, "easel_random_weights", "1");
    } else if (!e) {
        e = peft_meta(w, o, targets);
        if (!e) e = st_writer_meta(w, "easel_random_weights", "1");
    }
    if (!e) e = st_writer_save(w, path);
    st_writer_free(w);
    for (size_t i = 0; i < k.n; i++)
        free(k.blocks[i]);
    free(k.blocks);
    cJSON_Delete(targets[0]), cJSON_Delete(targets[1]), cJSON_Delete(targets[2]);
    for (int c = 0; c < SD_COMPONENTS; c++)
        sd_wrecs_free(&rec[c]);
    return e;
}
