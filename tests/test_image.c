/* Tests for engine/image.c: PNG write -> read round trips, conversions of
 * gray/alpha/palette/16-bit PNGs (written here with libpng's own API) to
 * 8-bit RGB, atomic writes (no temp file left, the old file intact when a
 * write fails), and the float -> byte conversion. engine/image_codecs.c:
 * JPEG round trips within a JPEG's error, bad arguments and corrupt data
 * refused (an error, not libjpeg's exit()); the decoders against Pillow
 * (tests/fixtures/images, tools/fixtures_images.py): EXIF orientations 1-8,
 * RGBA/palette+tRNS/gray+alpha/16-bit PNGs, lossless and lossy WebP, CMYK
 * JPEG; headers over the caps refused before decoding, truncated files
 * refused. engine/image_ops.c: flatten, masks, the resize modes, blur. */
#include <dirent.h>
#include <errno.h>
#include <png.h>
#include <signal.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/image.h"
#include "engine/image_codecs.h"
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
    /* ... and decodes from memory (a PNG the job store holds) to the same pixels */
    uint8_t *mem = NULL;
    int mw = 0, mh = 0;
    OK(image_decode_png_mem(png, n, &mem, &mw, &mh), "decode: %s", easel_errmsg());
    CHECK(mw == w && mh == h && mem && !memcmp(mem, rgb, (size_t)w * h * 3), "decoded pixels");
    free(mem);
    CHECK(image_decode_png_mem(png, 20, &mem, &mw, &mh) == EASEL_EFORMAT && !mem, "truncated");
    CHECK(image_decode_png_mem((const uint8_t *)"not a png at all", 16, &mem, &mw, &mh) ==
              EASEL_EFORMAT,
          "not a PNG");
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

/* A smooth image (JPEG's case: previews) survives quality 90 within a few
 * levels on average; the stream is a JPEG (SOI ... EOI) of the right size. */
static void test_jpeg(void) {
    int w = 67, h = 45; /* not multiples of the 16x16 MCU */
    uint8_t *rgb = malloc((size_t)w * h * 3), *back = NULL, *jpg = NULL;
    REQUIRE(rgb, "alloc");
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            uint8_t *p = rgb + ((size_t)y * w + x) * 3;
            p[0] = (uint8_t)(x * 255 / (w - 1)), p[1] = (uint8_t)(y * 255 / (h - 1));
            p[2] = (uint8_t)(128 + 100 * sin(x * 0.1) * cos(y * 0.15));
        }
    size_t len = 0;
    int bw = 0, bh = 0;
    OK(image_encode(IMG_JPEG, rgb, w, h, 90, &jpg, &len), "encode: %s", easel_errmsg());
    CHECK(len > 100 && len < (size_t)w * h * 3 && jpg[0] == 0xFF && jpg[1] == 0xD8 &&
              jpg[len - 2] == 0xFF && jpg[len - 1] == 0xD9,
          "a JPEG stream of %zu bytes", len);
    OK(image_decode_jpeg(jpg, len, &back, &bw, &bh), "decode: %s", easel_errmsg());
    CHECK(bw == w && bh == h, "size %dx%d", bw, bh);
    double err = 0;
    for (size_t i = 0; back && i < (size_t)w * h * 3; i++)
        err += abs((int)back[i] - (int)rgb[i]);
    err /= (double)w * h * 3;
    CHECK(err < 3.0, "mean abs error %.2f levels at quality 90", err);
    free(back), back = NULL;
    /* corrupt: the error comes back, the process lives */
    jpg[len / 2] ^= 0xFF, jpg[len / 2 + 1] ^= 0xFF;
    easel_err e = image_decode_jpeg(jpg, len / 2, &back, &bw, &bh);
    CHECK(e == EASEL_EFORMAT && !back, "a truncated JPEG is refused: %s", easel_errmsg());
    free(back), back = NULL;
    uint8_t junk[64] = {1, 2, 3};
    CHECK(image_decode_jpeg(junk, sizeof junk, &back, &bw, &bh) == EASEL_EFORMAT && !back,
          "not a JPEG: %s", easel_errmsg());
    uint8_t *none = NULL;
    CHECK(image_encode(IMG_JPEG, rgb, 0, h, 90, &none, &len) != EASEL_OK && !none, "0 wide");
    free(jpg), free(rgb);
}

/* ---- decoders vs Pillow ---- */

static uint8_t *read_file(const char *name, size_t *n) {
    char p[1024], q[256];
    snprintf(q, sizeof q, "images/%s", name);
    return (uint8_t *)test_read_file(test_fixture(q, p, sizeof p), n);
}

/* Decodes fixture `name` and compares it with Pillow's RGBA (`ref`.rgba):
 * every byte within tol. */
static void expect_like_pil(const char *name, const char *ref, int w, int h, int tol) {
    size_t n = 0, rn = 0;
    uint8_t *d = read_file(name, &n), *r = read_file(ref, &rn), *px = NULL;
    REQUIRE(d && r && rn == (size_t)w * h * 4, "fixtures %s, %s", name, ref);
    image_info in;
    easel_err e = image_decode(d, n, NULL, &px, &in);
    CHECK(e == EASEL_OK, "%s: %s", name, easel_errmsg());
    CHECK(in.width == w && in.height == h, "%s: %dx%d, Pillow %dx%d", name, in.width, in.height, w,
          h);
    int worst = 0;
    for (size_t i = 0; px && in.width == w && in.height == h && i < rn; i++) {
        int dd = abs((int)px[i] - (int)r[i]);
        if (dd > worst) worst = dd;
    }
    CHECK(px && worst <= tol, "%s: differs from Pillow by up to %d levels (tolerance %d)", name,
          worst, tol);
    image_info pi;
    CHECK(!image_probe(d, n, NULL, &pi) && pi.width == w && pi.height == h &&
              pi.format == in.format && pi.orientation == in.orientation,
          "%s: probe agrees", name);
    free(d), free(r), free(px);
}

static void test_decode_orientation(void) {
    for (int k = 1; k <= 8; k++) {
        char name[32], ref[32];
        snprintf(name, sizeof name, "orient_%d.jpg", k);
        snprintf(ref, sizeof ref, "orient_%d.rgba", k);
        int swap = k >= 5;
        /* flat 8x8 blocks at quality 95: only JPEG's own error, within a few levels */
        expect_like_pil(name, ref, swap ? 16 : 24, swap ? 24 : 16, 6);
        size_t n;
        uint8_t *d = read_file(name, &n);
        image_info in;
        CHECK(d && !image_probe(d, n, NULL, &in) && in.orientation == k && in.format == IMG_JPEG,
              "%s: orientation %d read from EXIF", name, k);
        free(d);
    }
}

static void test_decode_layouts(void) {
    expect_like_pil("rgba.png", "rgba.rgba", 24, 16, 0);
    expect_like_pil("pal_trns.png", "pal_trns.rgba", 24, 16, 0);
    expect_like_pil("la.png", "la.rgba", 24, 16, 0);
    expect_like_pil("lossless_alpha.webp", "lossless_alpha.rgba", 24, 16, 0);
    expect_like_pil("lossy.webp", "lossy.rgba", 24, 16, 4); /* libwebp versions may round apart */
    expect_like_pil("cmyk.jpg", "cmyk.rgba", 24, 16, 6);
    size_t n;
    uint8_t *d = read_file("gray16.png", &n), *px = NULL;
    image_info in;
    REQUIRE(d, "gray16.png");
    CHECK(!image_decode(d, n, NULL, &px, &in) && in.width == 24 && in.height == 16 && !in.has_alpha,
          "gray16: %s", easel_errmsg());
    int worst = 0;
    for (int i = 0; px && i < 24 * 16; i++) { /* stored i·170; libpng scales 16 -> 8 bits */
        int want = (int)(((long)i * 170 * 255 + 32767) / 65535);
        for (int c = 0; c < 3; c++)
            worst = abs(px[4 * i + c] - want) > worst ? abs(px[4 * i + c] - want) : worst;
        if (px[4 * i + 3] != 255) worst = 999;
    }
    CHECK(px && worst <= 1, "gray16 scaled to 8 bits (worst %d)", worst);
    free(d), free(px);
    d = read_file("rgba.png", &n);
    CHECK(d && !image_probe(d, n, NULL, &in) && in.has_alpha && in.format == IMG_PNG, "alpha");
    free(d);
}

/* Headers that claim 30000x30000 are refused before any pixel is allocated
 * (decoding would need 3.6 GB); over explicit caps too. */
static void test_decode_bombs(void) {
    const char *names[] = {"bomb.png", "bomb.jpg", "bomb.webp"};
    const int side[] = {30000, 30000, 16384}; /* WebP's 14-bit sizes go to 16384 */
    for (int i = 0; i < 3; i++) {
        size_t n;
        uint8_t *d = read_file(names[i], &n), *px = NULL;
        REQUIRE(d, "%s", names[i]);
        image_info in;
        char dims[32];
        snprintf(dims, sizeof dims, "%dx%d", side[i], side[i]);
        easel_err e = image_decode(d, n, NULL, &px, &in);
        CHECK(e == EASEL_EINVAL && !px && strstr(easel_errmsg(), dims) &&
                  strstr(easel_errmsg(), "too large"),
              "%s refused: %s", names[i], easel_errmsg());
        CHECK(in.width == side[i] && in.height == side[i], "%s: the header's size reported",
              names[i]);
        free(d);
    }
    size_t n;
    uint8_t *d = read_file("rgba.png", &n), *px = NULL;
    image_limits lim = {.max_pixels = 24 * 16 - 1};
    CHECK(image_decode(d, n, &lim, &px, NULL) == EASEL_EINVAL && !px, "max_pixels");
    lim = (image_limits){.max_side = 23};
    CHECK(image_decode(d, n, &lim, &px, NULL) == EASEL_EINVAL && !px, "max_side");
    lim = (image_limits){.max_side = 24, .max_pixels = 24 * 16};
    CHECK(image_decode(d, n, &lim, &px, NULL) == EASEL_OK && px, "at the caps: %s", easel_errmsg());
    free(px), free(d);
}

/* Every prefix of each file: an error (never a crash, never a half image). */
static void test_decode_truncated(void) {
    const char *names[] = {"rgba.png", "orient_6.jpg", "lossless_alpha.webp", "lossy.webp",
                           "cmyk.jpg"};
    for (int i = 0; i < 5; i++) {
        size_t n;
        uint8_t *d = read_file(names[i], &n);
        REQUIRE(d, "%s", names[i]);
        int bad = 0;
        for (size_t cut = 0; cut < n - 1; cut++) {
            uint8_t *copy = malloc(cut ? cut : 1), *px = NULL;
            memcpy(copy, d, cut);
            easel_err e = image_decode(copy, cut, NULL, &px, NULL);
            /* JPEG: bytes after the last scan (EOI) may go; nothing else */
            if (e == EASEL_OK && !(strstr(names[i], ".jpg") && cut >= n - 2)) bad++;
            if (e != EASEL_OK && px) bad++;
            free(px), free(copy);
        }
        CHECK(bad == 0, "%s: %d truncations decoded", names[i], bad);
        free(d);
    }
    uint8_t junk[] = "GIF89a not supported";
    uint8_t *px = NULL;
    CHECK(image_decode(junk, sizeof junk, NULL, &px, NULL) == EASEL_EFORMAT && !px &&
              strstr(easel_errmsg(), "not a PNG, JPEG or WebP"),
          "not an image: %s", easel_errmsg());
    CHECK(image_decode(junk, 0, NULL, &px, NULL) == EASEL_EFORMAT, "empty");
}

/* ---- operations ---- */

static void test_image_ops(void) {
    uint8_t rgba[8] = {255, 0, 0, 255, 0, 0, 255, 0}, rgb[6], m[2];
    image_flatten(rgba, 2, 1, 0xFFFFFF, rgb);
    CHECK(rgb[0] == 255 && rgb[1] == 0 && rgb[3] == 255 && rgb[4] == 255 && rgb[5] == 255,
          "flatten over white");
    image_mask_from_alpha(rgba, 2, 1, m);
    CHECK(m[0] == 0 && m[1] == 255, "alpha mask: transparent = repaint");
    image_mask_from_luma(rgba, 2, 1, m);
    CHECK(m[0] == 76 && m[1] == 0, "luma mask (PIL L of red = 76; transparent keeps): %d %d", m[0],
          m[1]);
    CHECK(image_resize_mode_parse("crop and resize") == RESIZE_CROP &&
              image_resize_mode_parse("fill") == RESIZE_FILL && image_resize_mode_parse("x") < 0,
          "mode names");
    /* a flat image stays flat through every mode and scale */
    int sizes[][4] = {{40, 30, 16, 16}, {16, 16, 40, 30}, {7, 100, 64, 64}, {300, 11, 8, 64}};
    for (int t = 0; t < 4; t++)
        for (int mode = 0; mode < RESIZE_MODE_COUNT; mode++) {
            int sw = sizes[t][0], sh = sizes[t][1], dw = sizes[t][2], dh = sizes[t][3];
            uint8_t *src = malloc((size_t)sw * sh * 3), *dst = malloc((size_t)dw * dh * 3);
            for (int i = 0; i < sw * sh * 3; i++)
                src[i] = (uint8_t)(i % 3 ? 77 : 200);
            int bad = image_resize(src, sw, sh, 3, dst, dw, dh, (image_resize_mode)mode) != 0;
            for (int i = 0; !bad && i < dw * dh * 3; i++)
                bad = abs(dst[i] - (i % 3 ? 77 : 200)) > 1;
            CHECK(!bad, "flat %dx%d -> %dx%d %s", sw, sh, dw, dh,
                  image_resize_mode_name((image_resize_mode)mode));
            free(src), free(dst);
        }
    /* crop keeps the centre; fill letterboxes with the stretched edge rows */
    uint8_t col[20 * 10], out[10 * 10];
    for (int y = 0; y < 10; y++)
        for (int x = 0; x < 20; x++)
            col[y * 20 + x] = (uint8_t)(x < 5 || x >= 15 ? 0 : 250);
    CHECK(!image_resize(col, 20, 10, 1, out, 10, 10, RESIZE_CROP), "crop");
    int inner = 1;
    for (int i = 0; i < 100; i++)
        inner &= out[i] >= 240;
    CHECK(inner, "crop and resize: the centre 10x10 (all bright) is what is left");
    uint8_t rows[10 * 20], fill[20 * 20];
    for (int y = 0; y < 10; y++)
        for (int x = 0; x < 20; x++)
            rows[y * 20 + x] = (uint8_t)(y * 25);
    CHECK(!image_resize(rows, 20, 10, 1, fill, 20, 20, RESIZE_FILL), "fill");
    CHECK(fill[0] == rows[0] && fill[19 * 20] == rows[9 * 20] && fill[5 * 20 + 3] == rows[0] &&
              fill[10 * 20] == rows[5 * 20],
          "resize and fill: bands repeat the edge rows, the image sits in the middle");
    /* the blur spreads a point symmetrically and keeps a flat field flat */
    uint8_t b[9 * 9] = {0};
    b[4 * 9 + 4] = 255;
    CHECK(!image_blur(b, 9, 9, 1.0f), "blur");
    CHECK(b[4 * 9 + 3] == b[4 * 9 + 5] && b[3 * 9 + 4] == b[5 * 9 + 4] && b[4 * 9 + 4] < 255 &&
              b[4 * 9 + 3] > 0 && b[0] == 0,
          "blurred point");
    memset(b, 200, sizeof b);
    CHECK(!image_blur(b, 9, 9, 3.0f) && b[0] == 200 && b[40] == 200, "flat stays flat");
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
    RUN(test_jpeg);
    RUN(test_decode_orientation);
    RUN(test_decode_layouts);
    RUN(test_decode_bombs);
    RUN(test_decode_truncated);
    RUN(test_image_ops);
    rmdir(tmpdir);
    return test_summary();
}
