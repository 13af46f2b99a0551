/* Atomic writes (engine/fsutil.c): whole or nothing, unique temp names (two
 * writers of one path never share a temp file, as safetensors' fixed
 * "path.tmp" did), failures leave the old file and no temp, the temp names
 * a crash leaves are recognised, mkdir -p. */
#include <dirent.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include "engine/fsutil.h"
#include "engine/safetensors.h"
#include "test.h"

static char dir[] = "/tmp/easel-test-fsutil-XXXXXX";

static size_t read_file(const char *path, char *buf, size_t cap) {
    FILE *f = fopen(path, "rb");
    if (!f) return (size_t)-1;
    size_t n = fread(buf, 1, cap, f);
    fclose(f);
    return n;
}

static int temps_in(const char *d) {
    DIR *dd = opendir(d);
    int n = 0;
    struct dirent *de;
    while (dd && (de = readdir(dd)))
        n += fs_is_temp_name(de->d_name);
    if (dd) closedir(dd);
    return n;
}

static void test_write_replace(void) {
    char path[256], buf[64];
    snprintf(path, sizeof path, "%s/a.txt", dir);
    CHECK(fs_write_file(path, "first", 5) == EASEL_OK, "%s", easel_errmsg());
    CHECK(read_file(path, buf, sizeof buf) == 5 && !memcmp(buf, "first", 5), "written");
    CHECK(fs_write_file(path, "second!", 7) == EASEL_OK, "replace");
    CHECK(read_file(path, buf, sizeof buf) == 7 && !memcmp(buf, "second!", 7), "replaced whole");
    CHECK(temps_in(dir) == 0, "no temp file left");
    char missing[300];
    snprintf(missing, sizeof missing, "%s/no-such-dir/x", dir);
    CHECK(fs_write_file(missing, "x", 1) == EASEL_EIO && strstr(easel_errmsg(), "no-such-dir/x"),
          "a failure names the target: %s", easel_errmsg());
}

static void test_failure_keeps_old(void) {
    char path[256], buf[64];
    snprintf(path, sizeof path, "%s/keep.txt", dir);
    REQUIRE(fs_write_file(path, "old", 3) == EASEL_OK, "setup");
    /* a full disk, as a file-size limit: the write fails midway */
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit old, lim = {4096, 4096};
    getrlimit(RLIMIT_FSIZE, &old);
    lim.rlim_max = old.rlim_max;
    setrlimit(RLIMIT_FSIZE, &lim);
    static char big[65536];
    easel_err e = fs_write_file(path, big, sizeof big);
    setrlimit(RLIMIT_FSIZE, &old);
    CHECK(e == EASEL_EIO, "the write fails");
    CHECK(read_file(path, buf, sizeof buf) == 3 && !memcmp(buf, "old", 3), "the old file stays");
    CHECK(temps_in(dir) == 0, "and its temp file is gone");
}

static void test_temp_names(void) {
    CHECK(fs_is_temp_name(".x.png.tmp.123.0a1b2c3d"), "ours");
    CHECK(fs_is_temp_name(".model.safetensors.tmp.9.ffffffff"), "ours too");
    CHECK(!fs_is_temp_name("x.png") && !fs_is_temp_name(".x.tmp.") &&
              !fs_is_temp_name(".x.tmp.12.zz") && !fs_is_temp_name("x.safetensors.tmp"),
          "not ours");
    fs_atomic a;
    char path[256];
    snprintf(path, sizeof path, "%s/b.bin", dir);
    REQUIRE(fs_atomic_open(&a, path) == EASEL_OK, "open");
    const char *base = strrchr(a.tmp, '/') + 1;
    CHECK(fs_is_temp_name(base), "what a crash would leave is recognised: %s", base);
    fs_atomic_abort(&a);
    CHECK(access(a.tmp, F_OK) != 0, "abort removes it");
}

/* Two threads saving the same safetensors path over and over: every read in
 * between sees one whole file, never a mix. */
typedef struct {
    const char *path;
    float fill;
} saver;

static void *save_loop(void *arg) {
    saver *s = arg;
    static float data[2][4096];
    float *d = data[s->fill > 1.5f];
    for (int i = 0; i < 4096; i++)
        d[i] = s->fill;
    for (int k = 0; k < 60; k++) {
        st_writer *w = st_writer_create();
        int64_t shape[1] = {4096};
        st_writer_add(w, "t", ST_F32, 1, shape, d);
        st_writer_save(w, s->path);
        st_writer_free(w);
    }
    return NULL;
}

static void test_two_writers(void) {
    char path[256];
    snprintf(path, sizeof path, "%s/w.safetensors", dir);
    saver a = {path, 1.0f}, b = {path, 2.0f};
    pthread_t ta, tb;
    pthread_create(&ta, NULL, save_loop, &a);
    pthread_create(&tb, NULL, save_loop, &b);
    int reads = 0, bad = 0;
    for (int k = 0; k < 200; k++) {
        st_file *f;
        if (st_open(path, &f)) continue;
        const st_tensor *t = st_find(f, "t");
        const float *v = t ? (const float *)t->data : NULL;
        for (int i = 0; v && i < 4096; i++)
            if (v[i] != v[0]) bad++;
        reads += v != NULL;
        st_close(f);
    }
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    CHECK(bad == 0, "no mixed file seen in %d reads", reads);
    st_file *f;
    CHECK(st_open(path, &f) == EASEL_OK, "the last file is valid");
    st_close(f);
    CHECK(temps_in(dir) == 0, "no temp left");
}

static void test_mkdir_p(void) {
    char deep[256];
    snprintf(deep, sizeof deep, "%s/x/y/z", dir);
    CHECK(fs_mkdir_p(deep) == EASEL_OK && access(deep, F_OK) == 0, "made");
    CHECK(fs_mkdir_p(deep) == EASEL_OK, "again: fine");
    char under_file[300];
    snprintf(under_file, sizeof under_file, "%s/a.txt/sub", dir);
    CHECK(fs_mkdir_p(under_file) == EASEL_EIO && strstr(easel_errmsg(), "a.txt"),
          "under a file: refused, named: %s", easel_errmsg());
}

int main(void) {
    if (!mkdtemp(dir)) return 1;
    RUN(test_write_replace);
    RUN(test_failure_keeps_old);
    RUN(test_temp_names);
    RUN(test_two_writers);
    RUN(test_mkdir_p);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", dir);
    return test_summary();
}
