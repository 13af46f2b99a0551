/* Tests for engine/image.c: PNG write -> read round trips, conversions of
 * gray/alpha/palette/16-bit PNGs (written here with libpng's own API) to
 * 8-bit RGB, atomic writes (no temp file left, the old file intact when a
 * write fails), and the float -> byte conversion. */
#include <dirent.h>
#include <errno.h>
#include <png.h>
#include <signal.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/image.h"
#include "test.h"

/* test.h's REQUIRE evaluates its condition twice: side effects go through OK. */
#define OK(expr, ...)                                                                              \
    do {                                                                                           \
        int ok_ = (int)(expr);                                                                     \
        REQUIRE(ok_ == 0, __VA_ARGS__);                                                            \
    } while (0)

static char tmpdir[256];

static const char *tpath(const char *name, char *buf, size_t len) {
    snprintf(buf, len, "%s/%s", tmpdir, name);
    return buf;
}

/* Number of entries in dir whose name starts with prefix. */
static int count_prefix(const char *dir, const char *prefix) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (!strncmp(e->d_name, prefix, strlen(prefix))) n++;
    closedir(d);
    return n;
}

static uint8_t *random_rgb(int w, int h, unsigned long long seed) {
    uint8_t *p = malloc((size_t)w * h * 3);
    if (!p) return NULL;
    for (size_t i = 0; i < (size_t)w * h * 3; i++)
        p[i] = (uint8_t)(test_randf(&seed, 0, 256));
    return p;
}

static void test_round_trip(void) {
    int w = 37, h = 23;
    uint8_t *rgb = random_rgb(w, h, 7);
    REQUIRE(rgb, "alloc");
    char p[512];
    tpath("rt.png", p, sizeof p);
    OK(image_write_png(p, rgb, w, h), "write: %s", easel_errmsg());
    uint8_t *back = NULL;
    int bw = 0, bh = 0;
    OK(image_read_png(p, &back, &bw, &bh), "read: %s", easel_errmsg());
    CHECK(bw == w && bh == h && !memcmp(back, rgb, (size_t)w * h * 3), "pixels differ");
    free(back);
    CHECK(count_prefix(tmpdir, ".rt.png.tmp") == 0, "temp file left");
    /* the in-memory encoder gives a PNG with the signature and the same pixels */
    uint8_t *png = NULL;
    size_t n = 0;
    OK(image_encode_png(rgb, w, h, &png, &n), "encode: %s", easel_errmsg());
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    CHECK(n > 8 && !memcmp(png, sig, 8), "signature");
    FILE *fp = fopen(p, "rb");
    uint8_t *disk = malloc(n + 1);
    size_t got = fp && disk ? fread(disk, 1, n + 1, fp) : 0;
    if (fp) fclose(fp);
    CHECK(got == n && !memcmp(disk, png, n), "file == encoded bytes (%zu vs %zu)", got, n);
    free(disk);
    free(png);
    /* overwriting an existing file */
    uint8_t *rgb2 = random_rgb(w, h, 8);
    REQUIRE(rgb2, "alloc");
    OK(image_write_png(p, rgb2, w, h), "overwrite: %s", easel_errmsg());
    OK(image_read_png(p, &back, &bw, &bh), "read: %s", easel_errmsg());
    CHECK(!memcmp(back, rgb2, (size_t)w * h * 3), "overwritten pixels");
    free(back);
    free(rgb2);
    free(rgb);
    unlink(p);
}

static void test_one_pixel_and_bad_args(void) {
    uint8_t px[3] = {255, 0, 128};
    char p[512];
    tpath("one.png", p, sizeof p);
    OK(image_write_png(p, px, 1, 1), "write: %s", easel_errmsg());
    uint8_t *back = NULL;
    int w, h;
    OK(image_read_png(p, &back, &w, &h), "read: %s", easel_errmsg());
    CHECK(w == 1 && h == 1 && !memcmp(back, px, 3), "1x1");
    free(back);
    unlink(p);
    uint8_t *out = (uint8_t *)1;
    size_t n;
    CHECK(image_encode_png(px, 0, 1, &out, &n) == EASEL_EINVAL && out == NULL, "w = 0");
    CHECK(image_encode_png(px, 1, -1, &out, &n) == EASEL_EINVAL, "h < 0");
    CHECK(image_encode_png(NULL, 1, 1, &out, &n) == EASEL_EINVAL, "NULL");
    CHECK(image_write_png(p, px, 0, 0) == EASEL_EINVAL && access(p, F_OK) != 0,
          "no file on EINVAL");
}

/* Writes a PNG with libpng's classic API: rows are raw PNG samples. */
static int write_raw_png(const char *path, int w, int h, int depth, int ctype, const uint8_t *rows,
                         size_t stride, const png_color *pal, int npal) {
    FILE *fp = fopen(path, "wb");
    if (!fp) return -1;
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!info || setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        fclose(fp);
        return -1;
    }
    png_init_io(png, fp);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, depth, ctype, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (pal) png_set_PLTE(png, info, pal, npal);
    png_write_info(png, info);
    for (int y = 0; y < h; y++)
        png_write_row(png, rows + (size_t)y * stride);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    return fclose(fp);
}

static void expect_rgb(const char *path, const uint8_t *want, int w, int h, const char *what) {
    uint8_t *got = NULL;
    int gw = 0, gh = 0;
    easel_err e = image_read_png(path, &got, &gw, &gh);
    CHECK(e == 0, "%s: %s", what, easel_errmsg());
    if (e) return;
    CHECK(gw == w && gh == h, "%s: size %dx%d", what, gw, gh);
    if (gw == w && gh == h)
        for (int i = 0; i < w * h * 3; i++)
            if (got[i] != want[i]) {
                CHECK(got[i] == want[i], "%s: byte %d: %d != %d", what, i, got[i], want[i]);
                break;
            }
    free(got);
}

static void test_read_conversions(void) {
    char p[512];
    tpath("conv.png", p, sizeof p);
    /* 8-bit gray: g -> (g,g,g) */
    uint8_t g[6] = {0, 17, 128, 200, 254, 255}, want[18];
    for (int i = 0; i < 6; i++)
        want[3 * i] = want[3 * i + 1] = want[3 * i + 2] = g[i];
    OK(write_raw_png(p, 3, 2, 8, PNG_COLOR_TYPE_GRAY, g, 3, NULL, 0), "gray");
    expect_rgb(p, want, 3, 2, "gray8");
    /* 1-bit gray: 0 -> 0, 1 -> 255 */
    uint8_t bits[2] = {0xa0, 0x40}; /* row 0: 1,0,1  row 1: 0,1,0 */
    uint8_t wb[18] = {255, 255, 255, 0, 0, 0, 255, 255, 255, 0, 0, 0, 255, 255, 255, 0, 0, 0};
    OK(write_raw_png(p, 3, 2, 1, PNG_COLOR_TYPE_GRAY, bits, 1, NULL, 0), "gray1");
    expect_rgb(p, wb, 3, 2, "gray1");
    /* RGBA: alpha dropped */
    uint8_t rgba[8] = {10, 20, 30, 0, 40, 50, 60, 255};
    uint8_t wa[6] = {10, 20, 30, 40, 50, 60};
    OK(write_raw_png(p, 2, 1, 8, PNG_COLOR_TYPE_RGB_ALPHA, rgba, 8, NULL, 0), "rgba");
    expect_rgb(p, wa, 2, 1, "rgba");
    /* gray + alpha */
    uint8_t ga[4] = {99, 1, 7, 200};
    uint8_t wga[6] = {99, 99, 99, 7, 7, 7};
    OK(write_raw_png(p, 2, 1, 8, PNG_COLOR_TYPE_GRAY_ALPHA, ga, 4, NULL, 0), "ga");
    expect_rgb(p, wga, 2, 1, "gray+alpha");
    /* palette */
    png_color pal[3] = {{1, 2, 3}, {250, 128, 0}, {9, 8, 7}};
    uint8_t idx[4] = {2, 0, 1, 1};
    uint8_t wp[12] = {9, 8, 7, 1, 2, 3, 250, 128, 0, 250, 128, 0};
    OK(write_raw_png(p, 4, 1, 8, PNG_COLOR_TYPE_PALETTE, idx, 4, pal, 3), "palette");
    expect_rgb(p, wp, 4, 1, "palette");
    /* 16-bit RGB, big-endian samples b*257 scale exactly to b */
    uint8_t s16[12], w16[6] = {0, 1, 127, 128, 254, 255};
    for (int i = 0; i < 6; i++) {
        unsigned v = w16[i] * 257u;
        s16[2 * i] = (uint8_t)(v >> 8), s16[2 * i + 1] = (uint8_t)v;
    }
    OK(write_raw_png(p, 2, 1, 16, PNG_COLOR_TYPE_RGB, s16, 12, NULL, 0), "rgb16");
    expect_rgb(p, w16, 2, 1, "rgb16");
    unlink(p);
}

static void test_read_errors(void) {
    char p[512];
    uint8_t *rgb = (uint8_t *)1;
    int w, h;
    CHECK(image_read_png(tpath("nope.png", p, sizeof p), &rgb, &w, &h) == EASEL_ENOTFOUND && !rgb,
          "missing");
    FILE *fp = fopen(tpath("text.png", p, sizeof p), "wb");
    REQUIRE(fp, "fopen");
    fputs("not a png at all", fp);
    fclose(fp);
    CHECK(image_read_png(p, &rgb, &w, &h) == EASEL_EFORMAT && !rgb, "not a PNG");
    /* a valid PNG cut in half */
    uint8_t *good = random_rgb(16, 16, 3), *png = NULL;
    size_t n = 0;
    REQUIRE(good, "alloc");
    OK(image_encode_png(good, 16, 16, &png, &n), "encode");
    fp = fopen(p, "wb");
    REQUIRE(fp, "fopen");
    fwrite(png, 1, n / 2, fp);
    fclose(fp);
    CHECK(image_read_png(p, &rgb, &w, &h) == EASEL_EFORMAT && !rgb, "truncated PNG: %s",
          easel_errmsg());
    free(png);
    free(good);
    unlink(p);
}

static void test_write_failures_leave_no_temp(void) {
    uint8_t *rgb = random_rgb(64, 64, 11);
    REQUIRE(rgb, "alloc");
    char p[512];
    /* missing directory */
    snprintf(p, sizeof p, "%s/no/such/dir/x.png", tmpdir);
    easel_err e = image_write_png(p, rgb, 64, 64);
    CHECK(e == EASEL_EIO && strstr(easel_errmsg(), "writing PNG") &&
              strstr(easel_errmsg(), "No such file"),
          "missing dir: %d %s", e, easel_errmsg());
    /* the target is a directory: rename fails after the temp was written */
    tpath("adir", p, sizeof p);
    OK(mkdir(p, 0755), "mkdir");
    e = image_write_png(p, rgb, 64, 64);
    CHECK(e == EASEL_EIO, "rename over a directory: %d", e);
    CHECK(count_prefix(tmpdir, ".adir.tmp") == 0, "temp file left after a failed rename");
    rmdir(p);
    /* a write that runs out of space (RLIMIT_FSIZE stands in for a full disk,
     * also for root): the error says so, no temp remains, the old file survives */
    tpath("keep.png", p, sizeof p);
    uint8_t old[3] = {1, 2, 3};
    OK(image_write_png(p, old, 1, 1), "first write: %s", easel_errmsg());
    struct rlimit saved, small;
    OK(getrlimit(RLIMIT_FSIZE, &saved), "getrlimit");
    small = saved;
    small.rlim_cur = 1000; /* 64x64 noise compresses to ~12 KB */
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    OK(setrlimit(RLIMIT_FSIZE, &small), "setrlimit");
    e = image_write_png(p, rgb, 64, 64);
    setrlimit(RLIMIT_FSIZE, &saved);
    signal(SIGXFSZ, prev);
    CHECK(e == EASEL_EIO && strstr(easel_errmsg(), "writing PNG") &&
              strstr(easel_errmsg(), "File too large"),
          "size limit: %d %s", e, easel_errmsg());
    CHECK(count_prefix(tmpdir, ".keep.png.tmp") == 0, "temp file left after a failed write");
    expect_rgb(p, old, 1, 1, "old file intact");
    unlink(p);
    free(rgb);
}

static void test_f32_to_rgb8(void) {
    const float in[] = {-1.0f, 1.0f, 0.0f, NAN, INFINITY, -INFINITY, 3.0f, -7.0f, 0.5f};
    const uint8_t want[] = {0, 255, 128, 0, 255, 0, 255, 0, 191};
    uint8_t out[9];
    image_f32_to_rgb8(in, out, 9, -1.0f, 1.0f);
    for (int i = 0; i < 9; i++)
        CHECK(out[i] == want[i], "x=%g: %d != %d", in[i], out[i], want[i]);
    /* random values against a double-precision reference: equal except
     * possibly at exact .5 ties, where float rounding may land either side */
    unsigned long long s = 5;
    int off = 0;
    for (int i = 0; i < 1000; i++) {
        float x = test_randf(&s, -1.2f, 1.2f);
        uint8_t b;
        image_f32_to_rgb8(&x, &b, 1, -1.0f, 1.0f);
        double t = ((double)x + 1.0) / 2.0;
        t = t < 0 ? 0 : t > 1 ? 1 : t;
        double r = rint(t * 255.0);
        CHECK(fabs((double)b - r) <= 1.0, "x=%g: %d vs %g", x, b, r);
        off += (double)b != r;
    }
    CHECK(off <= 5, "%d of 1000 differ from the double reference", off);
    /* another range: [0, 1] */
    const float in2[] = {0.0f, 1.0f, 0.25f};
    image_f32_to_rgb8(in2, out, 3, 0.0f, 1.0f);
    CHECK(out[0] == 0 && out[1] == 255 && out[2] == 64, "[0,1]: %d %d %d", out[0], out[1], out[2]);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/easel_test_img.XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_round_trip);
    RUN(test_one_pixel_and_bad_args);
    RUN(test_read_conversions);
    RUN(test_read_errors);
    RUN(test_write_failures_leave_no_temp);
    RUN(test_f32_to_rgb8);
    rmdir(tmpdir);
    return test_summary();
}
