/* Loader tests: the diffusers -> single-file name mapping against the pairs
 * diffusers' own converters produce (tests/fixtures/names, made by
 * tools/fixtures_names.py); every SD1.5 diffusers name is what the networks
 * request; made models load from both layouts; wrong, missing and extra
 * tensors and pickle files are refused with messages that name them. */
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/safetensors.h"
#include "models/loader.h"
#include "models/pipeline.h"
#include "tests/test.h"

typedef struct {
    char ldm[256], comp[32], name[256];
    int ndim;
    int64_t shape[4];
} name_row;

static int parse_shape(const char *s, int64_t *shape) {
    int n = 0;
    while (*s && n < 4) {
        shape[n++] = strtoll(s, (char **)&s, 10);
        if (*s == ',') s++;
    }
    return n;
}

/* Reads sd15_ldm.txt (with_ldm) or sd15_diffusers.txt rows; returns the count. */
static int read_rows(const char *file, int with_ldm, name_row *rows, int max) {
    char path[1024], line[1024], sh[128];
    FILE *f = fopen(test_fixture(file, path, sizeof path), "r");
    if (!f) return -1;
    int n = 0;
    while (n < max && fgets(line, sizeof line, f)) {
        name_row *r = &rows[n];
        int k = with_ldm ? sscanf(line, "%255s %31s %255s %127s", r->ldm, r->comp, r->name, sh)
                         : sscanf(line, "%31s %255s %127s", r->comp, r->name, sh);
        if (k != (with_ldm ? 4 : 3)) continue;
        r->ndim = parse_shape(sh, r->shape);
        n++;
    }
    fclose(f);
    return n;
}

static sd_component comp_of(const char *s) {
    return !strcmp(s, "unet")             ? SD_UNET
           : !strcmp(s, "vae")            ? SD_VAE
           : !strcmp(s, "text_encoder_2") ? SD_TEXT2
                                          : SD_TEXT;
}

#define MAX_ROWS 3000
static name_row rows[MAX_ROWS];

static void test_ldm_names_match_diffusers(void) {
    int n = read_rows("names/sd15_ldm.txt", 1, rows, MAX_ROWS);
    REQUIRE(n == 1130, "sd15_ldm.txt rows: %d (expected 686+248+196)", n);
    sd_arch a;
    sd_arch_sd15(&a);
    int bad = 0;
    for (int i = 0; i < n; i++) {
        char got[512];
        easel_err e = ldm_name(&a, comp_of(rows[i].comp), rows[i].name, got, sizeof got);
        if (e || strcmp(got, rows[i].ldm)) {
            if (bad++ < 5)
                CHECK(0, "%s %s -> %s, diffusers says %s", rows[i].comp, rows[i].name,
                      e ? easel_errmsg() : got, rows[i].ldm);
        }
    }
    CHECK(bad == 0, "%d of %d names map differently", bad, n);
    char out[256];
    CHECK(ldm_name(&a, SD_UNET, "down_blocks.0.bogus.0.x", out, sizeof out) == EASEL_ENOTFOUND,
          "an unknown name is refused");
}

static int find_row(int n, sd_component c, const char *name) {
    for (int i = 0; i < n; i++)
        if (comp_of(rows[i].comp) == c && !strcmp(rows[i].name, name)) return i;
    return -1;
}

/* The networks ask for exactly the SD1.5 diffusers names (the VAE encoder and
 * quant_conv aside: txt2img never uses them), with the same shapes. */
static void test_networks_request_every_sd15_name(void) {
    int n = read_rows("names/sd15_diffusers.txt", 0, rows, MAX_ROWS);
    REQUIRE(n == 1130, "sd15_diffusers.txt rows: %d", n);
    sd_arch a;
    sd_arch_sd15(&a);
    sd_wrecs rec[SD_COMPONENTS];
    REQUIRE(sd_record_weights(&a, rec) == EASEL_OK, "record: %s", easel_errmsg());
    static unsigned char seen[MAX_ROWS];
    memset(seen, 0, sizeof seen);
    for (int c = 0; c < SD_COMPONENTS; c++)
        for (size_t i = 0; i < rec[c].n; i++) {
            const sd_wrec *w = &rec[c].v[i];
            int r = find_row(n, c, w->name);
            CHECK(r >= 0, "%s requests '%s', not an SD1.5 name", sd_component_name(c), w->name);
            if (r < 0) continue;
            CHECK(!seen[r], "'%s' requested twice", w->name);
            seen[r] = 1;
            int same = rows[r].ndim == w->ndim;
            for (int d = 0; same && d < w->ndim; d++)
                same = rows[r].shape[d] == w->shape[d];
            CHECK(same, "'%s': requested shape differs from diffusers'", w->name);
        }
    int missing = 0;
    for (int i = 0; i < n; i++) {
        int unused_ok = !strcmp(rows[i].comp, "vae") && (!strncmp(rows[i].name, "encoder.", 8) ||
                                                         !strncmp(rows[i].name, "quant_conv.", 11));
        if (!seen[i] && !unused_ok && missing++ < 5)
            CHECK(0, "%s '%s' is never requested", rows[i].comp, rows[i].name);
    }
    CHECK(missing == 0, "%d SD1.5 names never requested", missing);
    for (int c = 0; c < SD_COMPONENTS; c++)
        sd_wrecs_free(&rec[c]);
}

static char tmpdir[256];

static const char *tmp_path(const char *name, char *buf, size_t len) {
    snprintf(buf, len, "%s/%s", tmpdir, name);
    return buf;
}

/* Loads every component of path through the stores (no networks' forward). */
static easel_err load_all(const char *path, backend *be) {
    sd_checkpoint *ck = NULL;
    easel_err e = sd_checkpoint_open(path, &ck);
    if (e) return e;
    const sd_arch *a = sd_checkpoint_arch(ck);
    unet_model *u = NULL;
    vae_model *v = NULL;
    clip_model *t = NULL;
    wstore ws;
    if (!(e = sd_checkpoint_store(ck, SD_UNET, be, &ws)) && !(e = unet_load(&a->unet, &ws, &u)))
        e = sd_checkpoint_check_unused(ck, SD_UNET);
    if (!e && !(e = sd_checkpoint_store(ck, SD_VAE, be, &ws)) && !(e = vae_load(&a->vae, &ws, &v)))
        e = sd_checkpoint_check_unused(ck, SD_VAE);
    if (!e && !(e = sd_checkpoint_store(ck, SD_TEXT, be, &ws)) &&
        !(e = clip_load(&a->clip, &ws, &t)))
        e = sd_checkpoint_check_unused(ck, SD_TEXT);
    unet_free(u), vae_free(v), clip_free(t);
    sd_checkpoint_close(ck);
    return e;
}

static void test_made_models_load(void) {
    backend *be = backend_cpu_create(1);
    REQUIRE(be, "cpu backend: %s", easel_errmsg());
    sd_arch a;
    sd_arch_tiny(&a);
    char dir[512], single[512];
    tmp_path("tiny", dir, sizeof dir);
    tmp_path("tiny.safetensors", single, sizeof single);
    CHECK(sd_make_model(&a, DT_F32, 7, dir) == EASEL_OK, "folder: %s", easel_errmsg());
    CHECK(sd_make_model(&a, DT_F16, 7, single) == EASEL_OK, "single: %s", easel_errmsg());
    CHECK(load_all(dir, be) == EASEL_OK, "load folder: %s", easel_errmsg());
    CHECK(load_all(single, be) == EASEL_OK, "load single: %s", easel_errmsg());
    sd_checkpoint *ck = NULL;
    if (sd_checkpoint_open(single, &ck) == EASEL_OK) {
        const sd_arch *b = sd_checkpoint_arch(ck);
        CHECK(!strcmp(b->arch, "tiny"), "arch from __metadata__: %s", b->arch);
        CHECK(b->unet.block_out_channels[1] == 64 && b->clip.hidden == 32 && b->vae.levels == 4,
              "configs from __metadata__");
        CHECK(sd_checkpoint_single_file(ck), "detected as a single file");
        sd_checkpoint_close(ck);
    }
    backend_destroy(be);
}

/* Copies the tensors of src to dst, dropping `drop`, reshaping `reshape`
 * to [1] (a wrong shape) and adding `extra`. */
static easel_err rewrite(const char *src, const char *dst, const char *drop, const char *reshape,
                         const char *extra) {
    st_file *f = NULL;
    easel_err e = st_open(src, &f);
    if (e) return e;
    st_writer *w = st_writer_create();
    static float one[1] = {1.0f};
    int64_t shape1[1] = {1};
    for (size_t i = 0; i < st_count(f) && !e; i++) {
        const st_tensor *t = st_at(f, i);
        if (drop && !strcmp(t->name, drop)) continue;
        if (reshape && !strcmp(t->name, reshape))
            e = st_writer_add(w, t->name, ST_F32, 1, shape1, one);
        else
            e = st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data);
    }
    for (size_t i = 0; i < st_meta_count(f) && !e; i++) {
        const char *k, *v;
        st_meta_at(f, i, &k, &v);
        e = st_writer_meta(w, k, v);
    }
    if (!e && extra) e = st_writer_add(w, extra, ST_F32, 1, shape1, one);
    if (!e) e = st_writer_save(w, dst);
    st_writer_free(w);
    st_close(f);
    return e;
}

static void test_bad_files_are_named(void) {
    backend *be = backend_cpu_create(1);
    REQUIRE(be, "cpu backend");
    char single[512], bad[512];
    tmp_path("tiny.safetensors", single, sizeof single);
    tmp_path("bad.safetensors", bad, sizeof bad);
    const char *victim = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight";
    REQUIRE(rewrite(single, bad, victim, NULL, NULL) == EASEL_OK, "rewrite: %s", easel_errmsg());
    CHECK(load_all(bad, be) == EASEL_ENOTFOUND, "missing tensor refused");
    CHECK(strstr(easel_errmsg(), victim) && strstr(easel_errmsg(), "missing"),
          "message names it: %s", easel_errmsg());
    REQUIRE(rewrite(single, bad, NULL, victim, NULL) == EASEL_OK, "rewrite");
    CHECK(load_all(bad, be) == EASEL_EFORMAT, "wrong shape refused");
    CHECK(strstr(easel_errmsg(), victim) && strstr(easel_errmsg(), "[1]") &&
              strstr(easel_errmsg(), "[32,32,3,3]"),
          "message names tensor and shapes: %s", easel_errmsg());
    const char *extra = "model.diffusion_model.input_blocks.1.0.surprise.weight";
    REQUIRE(rewrite(single, bad, NULL, NULL, extra) == EASEL_OK, "rewrite");
    CHECK(load_all(bad, be) == EASEL_EFORMAT, "unexpected tensor refused");
    CHECK(strstr(easel_errmsg(), extra) && strstr(easel_errmsg(), "unexpected"),
          "message names it: %s", easel_errmsg());
    /* tensors SD1.x txt2img does not use are fine */
    REQUIRE(rewrite(single, bad, NULL, NULL, "model_ema.decay") == EASEL_OK, "rewrite");
    CHECK(load_all(bad, be) == EASEL_OK, "EMA leftovers ignored: %s", easel_errmsg());
    char folder_file[400];
    snprintf(folder_file, sizeof folder_file, "%s/tiny/vae/diffusion_pytorch_model.safetensors",
             tmpdir);
    const char *v = "decoder.mid_block.attentions.0.to_q.weight";
    snprintf(bad, sizeof bad, "%s.orig", folder_file);
    REQUIRE(rename(folder_file, bad) == 0, "rename");
    REQUIRE(rewrite(bad, folder_file, v, NULL, NULL) == EASEL_OK, "rewrite");
    char dir[512];
    CHECK(load_all(tmp_path("tiny", dir, sizeof dir), be) == EASEL_ENOTFOUND, "folder: missing");
    CHECK(strstr(easel_errmsg(), v) != NULL, "folder message names it: %s", easel_errmsg());
    rename(bad, folder_file);
    backend_destroy(be);
}

static void test_pickles_and_missing_paths(void) {
    char p[512];
    tmp_path("model.ckpt", p, sizeof p);
    FILE *f = fopen(p, "wb");
    REQUIRE(f, "create");
    fputs("PK\003\004 not really a zip", f);
    fclose(f);
    sd_checkpoint *ck = NULL;
    CHECK(sd_checkpoint_open(p, &ck) == EASEL_EUNSUPPORTED && !ck, ".ckpt refused");
    CHECK(strstr(easel_errmsg(), "arbitrary code") && strstr(easel_errmsg(), "safetensors"),
          "says why and how to convert: %s", easel_errmsg());
    tmp_path("disguised.safetensors", p, sizeof p);
    f = fopen(p, "wb");
    REQUIRE(f, "create");
    fputs("\x80\x02}q\x00.", f);
    fclose(f);
    CHECK(sd_checkpoint_open(p, &ck) == EASEL_EUNSUPPORTED, "pickle bytes refused by content");
    CHECK(sd_checkpoint_open("/nonexistent/model", &ck) == EASEL_ENOTFOUND, "missing path");
    CHECK(strstr(easel_errmsg(), "/nonexistent/model") != NULL, "names the path");
    mkdir(tmp_path("empty", p, sizeof p), 0755);
    CHECK(sd_checkpoint_open(p, &ck) == EASEL_ENOTFOUND, "empty folder refused");
    CHECK(strstr(easel_errmsg(), "unet") != NULL, "says what is missing: %s", easel_errmsg());
}

/* SD2 rows: "ldm comp diffusers shape part" (tools/fixtures_sd2.py, from
 * diffusers' convert_diffusers_to_original_stable_diffusion.py). */
typedef struct {
    char ldm[256], comp[32], name[256];
    int ndim, part;
    int64_t shape[4];
} sd2_row;

static int read_sd2_rows(const char *file, sd2_row *r, int max) {
    char path[1024], line[1024], sh[128];
    FILE *f = fopen(test_fixture(file, path, sizeof path), "r");
    if (!f) return -1;
    int n = 0;
    while (n < max && fgets(line, sizeof line, f))
        if (sscanf(line, "%255s %31s %255s %127s %d", r[n].ldm, r[n].comp, r[n].name, sh,
                   &r[n].part) == 5) {
            r[n].ndim = parse_shape(sh, r[n].shape);
            n++;
        }
    fclose(f);
    return n;
}

static sd2_row sd2_rows[MAX_ROWS];

static void test_sd2_names_match_diffusers(void) {
    int n = read_sd2_rows("names/sd2_ldm.txt", sd2_rows, MAX_ROWS);
    REQUIRE(n > 1200, "sd2_ldm.txt rows: %d", n);
    sd_arch a;
    REQUIRE(sd_arch_by_name("sd2-v", &a) == EASEL_OK, "sd2-v");
    a.text_openclip = 1;
    int bad = 0, fused = 0;
    for (int i = 0; i < n; i++) {
        char got[512];
        int part = -9;
        easel_err e =
            ldm_name_part(&a, comp_of(sd2_rows[i].comp), sd2_rows[i].name, got, sizeof got, &part);
        fused += part >= 0;
        if (e || strcmp(got, sd2_rows[i].ldm) || part != sd2_rows[i].part)
            if (bad++ < 5)
                CHECK(0, "%s %s -> %s part %d, diffusers' converter says %s part %d",
                      sd2_rows[i].comp, sd2_rows[i].name, e ? easel_errmsg() : got, part,
                      sd2_rows[i].ldm, sd2_rows[i].part);
    }
    CHECK(bad == 0, "%d of %d SD2 names map differently", bad, n);
    CHECK(fused == 23 * 6, "%d q/k/v thirds of in_proj (23 layers x weight, bias x 3)", fused);
}

/* Copies row r's tensor(s) out of the folder's files into one host buffer:
 * the converter's torch.cat of q, k, v for a fused in_proj, its .T for a
 * transposed one (part 3). */
static float *gather(const sd2_row *rows, int n, int first, int *count, st_file *files[4]) {
    int k = 0;
    while (first + k < n && !strcmp(rows[first + k].ldm, rows[first].ldm))
        k++;
    int64_t per = 1;
    for (int d = 0; d < rows[first].ndim; d++)
        per *= rows[first].shape[d];
    float *buf = malloc(sizeof(float) * (size_t)(per * k));
    for (int j = 0; buf && j < k; j++) {
        const sd2_row *r = &rows[first + j];
        st_file *f = files[comp_of(r->comp)];
        const st_tensor *t = st_find(f, r->name);
        if (!t) t = st_find(f, r->name + (strncmp(r->name, "text_model.", 11) ? 0 : 11));
        int idx = r->part >= 0 && r->part < 3 ? r->part : 0;
        if (!t || st_nelem(t) != per || st_read_f32(f, t, buf + idx * per)) {
            free(buf);
            return NULL;
        }
        if (r->part == 3) { /* [R, C] -> [C, R] */
            int64_t R = r->shape[0], C = r->shape[1];
            float *tr = malloc(sizeof(float) * (size_t)per);
            for (int64_t i = 0; tr && i < R; i++)
                for (int64_t c = 0; c < C; c++)
                    tr[c * R + i] = buf[i * C + c];
            free(buf);
            buf = tr;
        }
    }
    *count = k;
    return buf;
}

/* Writes the single file that diffusers' converter would make from the made
 * folder dir by the converter's rows (fused, transposed or as they are), with
 * a's configs in __metadata__ (tiny dims are not in any real family). */
static int write_converted(const sd2_row *rows, int n, const char *dir, const sd_arch *a,
                           const char *single, int *written) {
    char p[700];
    st_file *files[4] = {0};
    const char *fn[4] = {"unet/diffusion_pytorch_model", "vae/diffusion_pytorch_model",
                         "text_encoder/model", "text_encoder_2/model"};
    int ok = 1, comps = a->has_text2 ? 4 : 3;
    for (int c = 0; c < comps && ok; c++) {
        snprintf(p, sizeof p, "%s/%s.safetensors", dir, fn[c]);
        ok = st_open(p, &files[c]) == EASEL_OK;
    }
    st_writer *w = st_writer_create();
    static float *keep[MAX_ROWS]; /* the writer keeps pointers until it saves */
    *written = 0;
    for (int i = 0; i < n && ok;) {
        int k = 0;
        float *data = gather(rows, n, i, &k, files);
        CHECK(data != NULL, "gather %s", rows[i].ldm);
        if (!data) ok = 0;
        if (!ok) break;
        int64_t shape[4];
        memcpy(shape, rows[i].shape, sizeof shape);
        if (rows[i].part >= 0 && rows[i].part < 3) shape[0] *= k;
        if (rows[i].part == 3) shape[0] = rows[i].shape[1], shape[1] = rows[i].shape[0];
        int nd = rows[i].ndim;
        /* the SDXL converter's reshape_weight_for_sd: VAE attention as 1x1 convolutions */
        if (a->has_text2 && nd == 2 && strstr(rows[i].ldm, ".mid.attn_1."))
            nd = 4, shape[2] = shape[3] = 1;
        ok = !st_writer_add(w, rows[i].ldm, ST_F32, nd, shape, data);
        keep[(*written)++] = data;
        i += k;
    }
    const char *keys[] = {"easel_unet_config", "easel_vae_config", "easel_text_encoder_config",
                          "easel_text_encoder_2_config"};
    for (int c = 0; c < comps && ok; c++) {
        char *j = sd_config_json(a, c);
        ok = j && !st_writer_meta(w, keys[c], j);
        free(j);
    }
    ok = ok && !st_writer_save(w, single);
    CHECK(ok, "writing %s: %s", single, easel_errmsg());
    st_writer_free(w);
    for (int i = 0; i < *written; i++)
        free(keep[i]);
    for (int c = 0; c < 4; c++)
        st_close(files[c]);
    return ok;
}

/* The folder and its converted single file load to the same model and draw
 * the same image. */
static void check_same_image(const char *dir, const char *single, int written, const char *family,
                             const char *prompt_2) {
    backend *be = backend_cpu_create(1);
    sd_model *m1 = NULL, *m2 = NULL;
    sd_worker *w1 = NULL, *w2 = NULL;
    REQUIRE(sd_model_load(dir, be, &m1) == EASEL_OK, "folder: %s", easel_errmsg());
    easel_err e = sd_model_load(single, be, &m2);
    CHECK(e == EASEL_OK, "single file (%d tensors): %s", written, easel_errmsg());
    if (!e) {
        sd_model_info i1, i2;
        sd_model_get_info(m1, &i1), sd_model_get_info(m2, &i2);
        CHECK(!strcmp(i2.family, family) && !strcmp(i2.prediction_type, "epsilon"),
              "single file: family %s, %s", i2.family, i2.prediction_type);
        CHECK(i1.params_text == i2.params_text && i1.params_unet == i2.params_unet &&
                  i1.text_encoders == i2.text_encoders,
              "same parameters");
        gen_params gp;
        gen_params_default(&gp);
        gp.prompt = "a room with a view";
        gp.prompt_2 = prompt_2;
        gp.negative_prompt = "dark";
        gp.width = gp.height = 64;
        gp.steps = 2;
        gp.guidance = 5;
        uint8_t *r1 = NULL, *r2 = NULL;
        CHECK(!sd_worker_create(m1, be, &w1) && !sd_worker_create(m2, be, &w2), "workers");
        CHECK(w1 && !sd_generate(w1, &gp, NULL, NULL, &r1, NULL), "%s", easel_errmsg());
        CHECK(w2 && !sd_generate(w2, &gp, NULL, NULL, &r2, NULL), "%s", easel_errmsg());
        CHECK(r1 && r2 && !memcmp(r1, r2, 64 * 64 * 3), "folder and converted file: same image");
        free(r1), free(r2);
    }
    sd_worker_free(w1), sd_worker_free(w2);
    sd_model_free(m1), sd_model_free(m2);
    backend_destroy(be);
}

/* A tiny-sd2 single file written by diffusers' converter's mapping from a
 * made folder loads, and draws the folder's image. */
static void test_sd2_single_file_matches_folder(void) {
    int n = read_sd2_rows("names/tiny_sd2_ldm.txt", sd2_rows, MAX_ROWS);
    REQUIRE(n > 700, "tiny_sd2_ldm.txt rows: %d", n);
    sd_arch a;
    REQUIRE(sd_arch_by_name("tiny-sd2", &a) == EASEL_OK, "tiny-sd2");
    char dir[512], single[512];
    tmp_path("tiny_sd2", dir, sizeof dir);
    tmp_path("tiny_sd2.safetensors", single, sizeof single);
    REQUIRE(sd_make_model(&a, DT_F32, 3, dir) == EASEL_OK, "make: %s", easel_errmsg());
    int written = 0;
    REQUIRE(write_converted(sd2_rows, n, dir, &a, single, &written), "converted file");
    check_same_image(dir, single, written, "sd2", NULL);
}

/* ---- SDXL ---- */

/* Every SDXL base 1.0 parameter name maps to the single-file name (and q/k/v
 * third, transpose) that diffusers' two converters agree on
 * (tools/fixtures_sdxl_names.py checked both directions). */
static void test_sdxl_names_match_diffusers(void) {
    int n = read_sd2_rows("names/sdxl_ldm.txt", sd2_rows, MAX_ROWS);
    REQUIRE(n == 2641, "sdxl_ldm.txt rows: %d (expected 1680 + 248 + 196 + 517)", n);
    sd_arch a;
    REQUIRE(sd_arch_by_name("sdxl", &a) == EASEL_OK, "sdxl");
    int bad = 0, fused = 0, transposed = 0;
    for (int i = 0; i < n; i++) {
        char got[512];
        int part = -9;
        easel_err e =
            ldm_name_part(&a, comp_of(sd2_rows[i].comp), sd2_rows[i].name, got, sizeof got, &part);
        fused += part >= 0 && part < 3;
        transposed += part == LDM_PART_T;
        if (e || strcmp(got, sd2_rows[i].ldm) || part != sd2_rows[i].part)
            if (bad++ < 5)
                CHECK(0, "%s %s -> %s part %d, diffusers' converters say %s part %d",
                      sd2_rows[i].comp, sd2_rows[i].name, e ? easel_errmsg() : got, part,
                      sd2_rows[i].ldm, sd2_rows[i].part);
    }
    CHECK(bad == 0, "%d of %d SDXL names map differently", bad, n);
    CHECK(fused == 32 * 6, "%d q/k/v thirds of in_proj (32 layers x weight, bias x 3)", fused);
    CHECK(transposed == 1, "%d transposed tensors (text_projection)", transposed);
}

/* The networks ask for exactly SDXL's diffusers names with diffusers' shapes
 * (the VAE encoder and quant_conv aside: txt2img never uses them). */
static void test_networks_request_every_sdxl_name(void) {
    int n = read_sd2_rows("names/sdxl_ldm.txt", sd2_rows, MAX_ROWS);
    REQUIRE(n == 2641, "sdxl_ldm.txt rows: %d", n);
    sd_arch a;
    REQUIRE(sd_arch_by_name("sdxl", &a) == EASEL_OK, "sdxl");
    sd_wrecs rec[SD_COMPONENTS];
    REQUIRE(sd_record_weights(&a, rec) == EASEL_OK, "record: %s", easel_errmsg());
    static unsigned char seen[MAX_ROWS];
    memset(seen, 0, sizeof seen);
    int64_t params[SD_COMPONENTS] = {0};
    for (int c = 0; c < SD_COMPONENTS; c++)
        for (size_t i = 0; i < rec[c].n; i++) {
            const sd_wrec *w = &rec[c].v[i];
            int r = -1;
            for (int k = 0; k < n && r < 0; k++)
                if (comp_of(sd2_rows[k].comp) == (sd_component)c &&
                    !strcmp(sd2_rows[k].name, w->name))
                    r = k;
            CHECK(r >= 0, "%s requests '%s', not an SDXL name", sd_component_name(c), w->name);
            if (r < 0) continue;
            CHECK(!seen[r], "'%s' requested twice", w->name);
            seen[r] = 1;
            int same = sd2_rows[r].ndim == w->ndim;
            int64_t np = 1;
            for (int d = 0; d < w->ndim; d++)
                same &= sd2_rows[r].shape[d] == w->shape[d], np *= w->shape[d];
            params[c] += np;
            CHECK(same, "'%s': requested shape differs from diffusers'", w->name);
        }
    int missing = 0;
    for (int i = 0; i < n; i++) {
        int unused_ok =
            !strcmp(sd2_rows[i].comp, "vae") && (!strncmp(sd2_rows[i].name, "encoder.", 8) ||
                                                 !strncmp(sd2_rows[i].name, "quant_conv.", 11));
        if (!seen[i] && !unused_ok && missing++ < 5)
            CHECK(0, "%s '%s' is never requested", sd2_rows[i].comp, sd2_rows[i].name);
    }
    CHECK(missing == 0, "%d SDXL names never requested", missing);
    /* diffusers' UNet2DConditionModel(SDXL) and the two encoders, counted by torch */
    CHECK(params[SD_UNET] == 2567463684LL && params[SD_TEXT] == 123060480LL &&
              params[SD_TEXT2] == 694659840LL,
          "parameters: unet %lld, text %lld, text_2 %lld", (long long)params[SD_UNET],
          (long long)params[SD_TEXT], (long long)params[SD_TEXT2]);
    for (int c = 0; c < SD_COMPONENTS; c++)
        sd_wrecs_free(&rec[c]);
}

/* A tiny-sdxl single file written by the converters' mapping from a made
 * folder (fused in_proj, transposed text_projection) loads and draws the
 * folder's image; so does make-model's own single file. */
static void test_sdxl_single_file_matches_folder(void) {
    int n = read_sd2_rows("names/tiny_sdxl_ldm.txt", sd2_rows, MAX_ROWS);
    REQUIRE(n == 1107, "tiny_sdxl_ldm.txt rows: %d", n);
    sd_arch a;
    REQUIRE(sd_arch_by_name("tiny-sdxl", &a) == EASEL_OK, "tiny-sdxl");
    char dir[512], single[512], own[512];
    tmp_path("tiny_sdxl", dir, sizeof dir);
    tmp_path("tiny_sdxl.safetensors", single, sizeof single);
    tmp_path("tiny_sdxl_own.safetensors", own, sizeof own);
    REQUIRE(sd_make_model(&a, DT_F32, 3, dir) == EASEL_OK, "make: %s", easel_errmsg());
    int written = 0;
    REQUIRE(write_converted(sd2_rows, n, dir, &a, single, &written), "converted file");
    CHECK(written == 1095, "%d stored tensors", written);
    check_same_image(dir, single, written, "sdxl", "a second prompt");
    REQUIRE(sd_make_model(&a, DT_F32, 3, own) == EASEL_OK, "make single: %s", easel_errmsg());
    st_file *f = NULL;
    REQUIRE(st_open(own, &f) == EASEL_OK, "%s", easel_errmsg());
    CHECK(st_count(f) == 1095, "make-model's SDXL single file: %zu tensors", st_count(f));
    st_close(f);
    check_same_image(dir, own, 1095, "sdxl", "a second prompt");
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/easel_test_loader.XXXXXX");
    if (!mkdtemp(tmpdir)) return perror("mkdtemp"), 1;
    RUN(test_ldm_names_match_diffusers);
    RUN(test_networks_request_every_sd15_name);
    RUN(test_made_models_load);
    RUN(test_bad_files_are_named);
    RUN(test_pickles_and_missing_paths);
    RUN(test_sd2_names_match_diffusers);
    RUN(test_sd2_single_file_matches_folder);
    RUN(test_sdxl_names_match_diffusers);
    RUN(test_networks_request_every_sdxl_name);
    RUN(test_sdxl_single_file_matches_folder);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", tmpdir);
    return test_summary();
}
