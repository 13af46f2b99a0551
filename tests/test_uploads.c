/* Tests for http/uploads.c (the upload store) and the store's upload
 * columns (schema 5): an upload is decoded whole before it is kept, so not
 * an image / truncated / a decompression bomb are refused with nothing left
 * in the directory; records round trip; the sweep removes uploads past the
 * retention unless a job uses them (the SQLite store answers which) and
 * leftovers of interrupted writes; uploads_prepare gives the job's pixels
 * (resized, the mask from luminance or alpha, a mask of another size
 * refused); base64 in its forms; the default size from an image. */
#include <dirent.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <utime.h>

#include "engine/image.h"
#include "http/store.h"
#include "http/uploads.h"
#include "test.h"

static char dir[] = "/tmp/easel-test-uploads-XXXXXX";

static uint8_t *slurp(const char *name, size_t *n) {
    char p[4096];
    return (uint8_t *)test_read_file(test_fixture(name, p, sizeof p), n);
}

/* Files in the upload directory (dot files included). */
static int count_files(const char *d) {
    DIR *h = opendir(d);
    int n = 0;
    struct dirent *e;
    while (h && (e = readdir(h)))
        n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    if (h) closedir(h);
    return n;
}

typedef struct {
    const char *busy; /* the id a job "uses" */
} use_ctx;

static int in_use(void *ctx, const char *id) {
    use_ctx *c = ctx;
    return c->busy && !strcmp(c->busy, id);
}

static uploads *open_up(const char *sub, int64_t retention_ms, use_ctx *uc) {
    char d[256];
    snprintf(d, sizeof d, "%s/%s", dir, sub);
    uploads_config cfg = {
        .dir = d, .retention_ms = retention_ms, .in_use = in_use, .in_use_ctx = uc};
    uploads *u = NULL;
    if (uploads_open(&cfg, &u)) return NULL;
    return u;
}

static void test_put_info_read(void) {
    uploads *u = open_up("a", 0, NULL);
    REQUIRE(u, "open: %s", easel_errmsg());
    size_t n;
    uint8_t *jpg = slurp("images/orient_6.jpg", &n);
    REQUIRE(jpg, "fixture");
    upload_info in, back;
    CHECK(!uploads_put(u, jpg, n, &in), "put: %s", easel_errmsg());
    CHECK(upload_id_valid(in.id), "id %s", in.id);
    CHECK(in.format == IMG_JPEG && in.bytes == (int64_t)n, "format %d bytes %lld", in.format,
          (long long)in.bytes);
    CHECK(!uploads_info(u, in.id, &back), "info: %s", easel_errmsg());
    CHECK(back.width == in.width && back.height == in.height && back.format == IMG_JPEG &&
              back.created_ms == in.created_ms,
          "record round trip");
    uint8_t *data = NULL;
    size_t len = 0;
    CHECK(!uploads_read(u, in.id, &data, &len) && len == n && !memcmp(data, jpg, n),
          "the bytes as sent");
    free(data);
    CHECK(uploads_info(u, "upl_0123456789abcdef0123456789abcdef", &back) == EASEL_ENOTFOUND,
          "unknown id");
    CHECK(uploads_info(u, "../../etc/passwd", &back) == EASEL_ENOTFOUND, "not an id");
    CHECK(!upload_id_valid("upl_0123456789ABCDEF0123456789abcdef"), "upper case refused");
    CHECK(!upload_id_valid("upl_0123"), "short refused");
    uploads_remove(u, in.id);
    CHECK(uploads_info(u, in.id, &back) == EASEL_ENOTFOUND, "removed");
    char d[256];
    snprintf(d, sizeof d, "%s/a", dir);
    CHECK(count_files(d) == 0, "nothing left after remove (%d files)", count_files(d));
    free(jpg);
    uploads_close(u);
}

static void test_bad_inputs_leave_nothing(void) {
    uploads *u = open_up("b", 0, NULL);
    REQUIRE(u, "open");
    char d[256];
    snprintf(d, sizeof d, "%s/b", dir);
    upload_info in;
    const char *junk = "this is not an image";
    CHECK(uploads_put(u, (const uint8_t *)junk, strlen(junk), &in) == EASEL_EFORMAT,
          "not an image");
    size_t n, np, nj;
    uint8_t *png = slurp("images/rgba.png", &np), *jpg = slurp("images/orient_1.jpg", &nj);
    REQUIRE(png && jpg, "fixtures");
    CHECK(uploads_put(u, png, np / 2, &in) == EASEL_EFORMAT, "truncated PNG: %s", easel_errmsg());
    CHECK(uploads_put(u, jpg, nj / 2, &in) == EASEL_EFORMAT, "truncated JPEG: %s", easel_errmsg());
    const char *bombs[] = {"images/bomb.png", "images/bomb.jpg", "images/bomb.webp"};
    for (int i = 0; i < 3; i++) {
        uint8_t *b = slurp(bombs[i], &n);
        REQUIRE(b, "fixture %s", bombs[i]);
        easel_err e = uploads_put(u, b, n, &in);
        CHECK(e == EASEL_EINVAL || e == EASEL_EFORMAT, "%s refused (%d: %s)", bombs[i], e,
              easel_errmsg());
        free(b);
    }
    CHECK(uploads_put(u, NULL, 0, &in) == EASEL_EFORMAT, "empty");
    CHECK(count_files(d) == 0, "nothing written (%d files)", count_files(d));
    free(png), free(jpg);
    uploads_close(u);
}

static void age(const char *path, int64_t seconds) {
    struct utimbuf t = {time(NULL) - seconds, time(NULL) - seconds};
    utime(path, &t);
}

static void test_sweep(void) {
    use_ctx uc = {0};
    uploads *u = open_up("c", 1000, &uc);
    REQUIRE(u, "open");
    size_t n;
    uint8_t *png = slurp("images/init_64.png", &n);
    REQUIRE(png, "fixture");
    upload_info a, b;
    REQUIRE(!uploads_put(u, png, n, &a) && !uploads_put(u, png, n, &b), "put: %s", easel_errmsg());
    char d[256], p[512];
    snprintf(d, sizeof d, "%s/c", dir);
    /* leftovers: an image whose record was never written, a temp file, both old */
    snprintf(p, sizeof p, "%s/upl_00000000000000000000000000000001.img", d);
    FILE *f = fopen(p, "wb");
    if (f) fputs("x", f), fclose(f);
    age(p, 7200);
    snprintf(p, sizeof p, "%s/.upl_x.img.tmp.1.abcd0123", d);
    f = fopen(p, "wb");
    if (f) fputs("x", f), fclose(f);
    age(p, 7200);
    /* (put swept at its own time: the next sweep is a minute later) */
    CHECK(uploads_sweep(u, a.created_ms + 500) == 0, "rate-limited");
    uc.busy = a.id; /* a pending job uses a */
    int gone = uploads_sweep(u, a.created_ms + 100000);
    CHECK(gone == 1, "b past the retention went (%d)", gone);
    upload_info x;
    CHECK(!uploads_info(u, a.id, &x), "a is in use: kept");
    CHECK(uploads_info(u, b.id, &x) == EASEL_ENOTFOUND, "b removed");
    CHECK(count_files(d) == 2, "a's image and record only (%d files)", count_files(d));
    CHECK(uploads_sweep(u, a.created_ms + 110000) == 0, "rate-limited: one sweep a minute");
    free(png);
    uploads_close(u);
}

static void test_prepare(void) {
    uploads *u = open_up("d", 0, NULL);
    REQUIRE(u, "open");
    size_t n;
    uint8_t *init = slurp("images/init_64.png", &n);
    upload_info ii, mi, ai, oi;
    REQUIRE(init && !uploads_put(u, init, n, &ii), "init");
    free(init);
    uint8_t *m = slurp("images/mask_64.png", &n);
    REQUIRE(m && !uploads_put(u, m, n, &mi), "mask");
    free(m);
    uint8_t *a = slurp("images/rgba.png", &n);
    REQUIRE(a && !uploads_put(u, a, n, &ai), "rgba");
    free(a);
    uint8_t *o = slurp("images/orient_6.jpg", &n);
    REQUIRE(o && !uploads_put(u, o, n, &oi), "orient");
    free(o);
    uint8_t *rgb = NULL, *mask = NULL;
    upload_job j = {
        .init_image = ii.id, .mask = mi.id, .width = 64, .height = 64, .background = 0xFFFFFF};
    CHECK(!uploads_prepare(u, &j, &rgb, &mask), "prepare: %s", easel_errmsg());
    /* at the image's own size the pixels are the PNG's, the mask its luminance */
    uint8_t *ref = NULL;
    int rw, rh;
    char p[4096];
    if (rgb && !image_read_png(test_fixture("images/init_64.png", p, sizeof p), &ref, &rw, &rh))
        CHECK(rw == 64 && rh == 64 && !memcmp(ref, rgb, 64 * 64 * 3), "init pixels as decoded");
    int white = 0;
    for (int i = 0; mask && i < 64 * 64; i++)
        white += mask[i] > 127;
    CHECK(mask && white > 0 && white < 64 * 64, "the mask has both parts (%d white)", white);
    free(ref), free(rgb), free(mask);
    /* resized to another size and aspect */
    j.width = 96, j.height = 48, j.resize = RESIZE_CROP;
    CHECK(!uploads_prepare(u, &j, &rgb, &mask) && rgb && mask, "crop: %s", easel_errmsg());
    free(rgb), free(mask);
    /* a mask of another size is refused, naming the mask */
    j.mask = oi.id;
    CHECK(uploads_prepare(u, &j, &rgb, &mask) == EASEL_EINVAL && !rgb && !mask &&
              strstr(easel_errmsg(), "mask"),
          "mask size: %s", easel_errmsg());
    /* the image's own alpha as the mask (OpenAI's edits): transparent = repaint */
    j.init_image = j.mask = ai.id, j.mask_from = MASK_FROM_ALPHA, j.width = ai.width,
    j.height = ai.height, j.resize = RESIZE_STRETCH;
    CHECK(!uploads_prepare(u, &j, &rgb, &mask), "alpha: %s", easel_errmsg());
    uint8_t *rgba = NULL;
    image_info info;
    uint8_t *file = slurp("images/rgba.png", &n);
    int ok = file && !image_decode(file, n, NULL, &rgba, &info) && mask;
    for (int i = 0; ok && i < info.width * info.height; i++)
        ok = mask[i] == 255 - rgba[4 * i + 3];
    CHECK(ok, "mask = 255 - alpha");
    free(file), free(rgba), free(rgb), free(mask);
    j.init_image = "upl_0123456789abcdef0123456789abcdef", j.mask = NULL;
    CHECK(uploads_prepare(u, &j, &rgb, &mask) == EASEL_ENOTFOUND, "gone upload");
    uploads_close(u);
}

static void test_base64(void) {
    uint8_t *o = NULL;
    size_t n = 0;
    CHECK(!base64_decode("aGVsbG8=", 8, 100, &o, &n) && n == 5 && !memcmp(o, "hello", 5), "padded");
    free(o);
    CHECK(!base64_decode("aGVsbG8", 7, 100, &o, &n) && n == 5, "unpadded");
    free(o);
    const char *url = "data:image/png;base64,aGV\nsbG__7w==";
    CHECK(!base64_decode(url, strlen(url), 100, &o, &n) && n == 7 && o[5] == 0xff && o[6] == 0xef,
          "data: URL, URL-safe, whitespace");
    free(o);
    CHECK(base64_decode("aGVs*G8=", 8, 100, &o, &n) == EASEL_EFORMAT && !o, "bad byte");
    CHECK(base64_decode("aGVsbG8=", 8, 3, &o, &n) == EASEL_EINVAL && !o, "over max");
    CHECK(base64_decode("a", 1, 100, &o, &n) == EASEL_EFORMAT, "bad length");
    const char *nb = "data:image/png,abc";
    CHECK(base64_decode(nb, strlen(nb), 100, &o, &n) == EASEL_EFORMAT, "not ;base64");
}

static void test_default_size(void) {
    int w = 0, h = 0;
    uploads_default_size(4032, 3024, 512, 8, &w, &h);
    CHECK(w == 512 && h == 384, "4:3 landscape -> %dx%d", w, h);
    w = h = 0;
    uploads_default_size(3024, 4032, 512, 8, &w, &h);
    CHECK(w == 384 && h == 512, "portrait -> %dx%d", w, h);
    w = 768, h = 0;
    uploads_default_size(1000, 500, 512, 8, &w, &h);
    CHECK(w == 768 && h == 384, "width given -> %dx%d", w, h);
}

/* The SQLite store keeps a job's uploads (schema 5) and says which are in use. */
static void test_store_columns(void) {
    char p[256];
    snprintf(p, sizeof p, "%s/jobs.db", dir);
    store *s = NULL;
    REQUIRE(!store_sqlite_open(p, 0, &s), "open: %s", easel_errmsg());
    CHECK(store_schema_version(s) == 5, "schema %d", store_schema_version(s));
    store_row r = {0};
    snprintf(r.id, sizeof r.id, "job-1");
    r.params = (char *)"{\"prompt\":\"a\"}";
    r.created_ms = 1;
    r.init_image = "upl_11111111111111111111111111111111";
    r.mask_image = "upl_22222222222222222222222222222222";
    CHECK(!store_insert(s, &r), "insert: %s", easel_errmsg());
    int use = -1;
    CHECK(!store_upload_in_use(s, r.init_image, &use) && use == 1, "init in use (pending)");
    CHECK(!store_upload_in_use(s, r.mask_image, &use) && use == 1, "mask in use");
    CHECK(!store_upload_in_use(s, "upl_33333333333333333333333333333333", &use) && use == 0,
          "another is not");
    store_row c;
    int found = 0;
    CHECK(!store_claim(s, "w", 2, 1000, &c, &found) && found, "claim");
    CHECK(!store_upload_in_use(s, r.init_image, &use) && use == 1, "in use while processing");
    c.status = JOB_COMPLETED, c.finished_ms = 3;
    CHECK(!store_finish(s, &c, "w"), "finish: %s", easel_errmsg());
    store_row_clear(&c);
    CHECK(!store_upload_in_use(s, r.init_image, &use) && use == 0, "free once it finished");
    store_close(s);
}

int main(void) {
    if (!mkdtemp(dir)) return perror("mkdtemp"), 1;
    RUN(test_put_info_read);
    RUN(test_bad_inputs_leave_nothing);
    RUN(test_sweep);
    RUN(test_prepare);
    RUN(test_base64);
    RUN(test_default_size);
    RUN(test_store_columns);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", dir);
    return test_summary();
}
