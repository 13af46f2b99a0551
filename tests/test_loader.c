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
    return !strcmp(s, "unet") ? SD_UNET : !strcmp(s, "vae") ? SD_VAE : SD_TEXT;
}

#define MAX_ROWS 2000
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

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/easel_test_loader.XXXXXX");
    if (!mkdtemp(tmpdir)) return perror("mkdtemp"), 1;
    RUN(test_ldm_names_match_diffusers);
    RUN(test_networks_request_every_sd15_name);
    RUN(test_made_models_load);
    RUN(test_bad_files_are_named);
    RUN(test_pickles_and_missing_paths);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", tmpdir);
    return test_summary();
}
