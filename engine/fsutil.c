/* Atomic writes and directories (see fsutil.h). */
#include "fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

/* dir of path ("." if none) into buf. */
static void dir_of(const char *path, char *buf, size_t len) {
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(buf, len, ".");
    else if (slash == path)
        snprintf(buf, len, "/");
    else
        snprintf(buf, len, "%.*s", (int)(slash - path), path);
}

easel_err fs_atomic_open(fs_atomic *a, const char *path) {
    a->fd = -1;
    if (snprintf(a->path, sizeof a->path, "%s", path) >= (int)sizeof a->path)
        return easel_seterr(EASEL_EIO, "%s: %s", path, strerror(ENAMETOOLONG));
    char dir[4096];
    const char *slash = strrchr(path, '/');
    dir_of(path, dir, sizeof dir);
    for (int tries = 0; tries < 16; tries++) {
        uint32_t r = 0;
        if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r)
            r ^= (uint32_t)tries * 2654435761u ^ (uint32_t)(uintptr_t)a;
        int n = snprintf(a->tmp, sizeof a->tmp, "%s/.%s.tmp.%ld.%08x", dir,
                         slash ? slash + 1 : path, (long)getpid(), (unsigned)r);
        if (n < 0 || (size_t)n >= sizeof a->tmp)
            return easel_seterr(EASEL_EIO, "%s: %s", path, strerror(ENAMETOOLONG));
        a->fd = open(a->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (a->fd >= 0) return EASEL_OK;
        if (errno != EEXIST) break;
    }
    return easel_seterr(EASEL_EIO, "%s: %s", path, strerror(errno));
}

easel_err fs_atomic_write(fs_atomic *a, const void *p, size_t n) {
    const char *s = p;
    while (n) {
        size_t k = n > (1u << 30) ? (1u << 30) : n;
        ssize_t w = write(a->fd, s, k);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            int err = w == 0 ? EIO : errno;
            return easel_seterr(EASEL_EIO, "%s: %s", a->path, strerror(err));
        }
        s += w;
        n -= (size_t)w;
    }
    return EASEL_OK;
}

void fs_atomic_abort(fs_atomic *a) {
    if (a->fd < 0) return; /* not open (or already committed): nothing of ours to remove */
    close(a->fd);
    a->fd = -1;
    unlink(a->tmp);
}

easel_err fs_atomic_commit(fs_atomic *a) {
    int bad = fsync(a->fd);
    int err = errno;
    if (close(a->fd) && !bad) bad = 1, err = errno;
    a->fd = -1;
    if (!bad && rename(a->tmp, a->path)) bad = 1, err = errno;
    if (bad) {
        unlink(a->tmp);
        return easel_seterr(EASEL_EIO, "%s: %s", a->path, strerror(err));
    }
    char dir[4096];
    dir_of(a->path, dir, sizeof dir);
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd); /* best effort: some file systems refuse fsync on directories */
        close(dfd);
    }
    return EASEL_OK;
}

easel_err fs_write_file(const char *path, const void *p, size_t n) {
    fs_atomic a;
    easel_err e = fs_atomic_open(&a, path);
    if (e) return e;
    if ((e = fs_atomic_write(&a, p, n))) {
        fs_atomic_abort(&a);
        return e;
    }
    return fs_atomic_commit(&a);
}

int fs_is_temp_name(const char *name) {
    if (name[0] != '.') return 0;
    const char *t = strstr(name, ".tmp.");
    if (!t || t == name) return 0;
    const char *pid = t + 5, *dot = strchr(pid, '.');
    if (!dot || dot == pid || strspn(pid, "0123456789") != (size_t)(dot - pid)) return 0;
    return strlen(dot + 1) == 8 && strspn(dot + 1, "0123456789abcdef") == 8;
}

easel_err fs_mkdir_p(const char *dir) {
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", dir) >= (int)sizeof buf)
        return easel_seterr(EASEL_EIO, "cannot create %s: %s", dir, strerror(ENAMETOOLONG));
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir(buf, 0755) && errno != EEXIST)
                return easel_seterr(EASEL_EIO, "cannot create %s: %s", buf, strerror(errno));
            *p = '/';
        }
    if (mkdir(buf, 0755) && errno != EEXIST)
        return easel_seterr(EASEL_EIO, "cannot create %s: %s", buf, strerror(errno));
    return EASEL_OK;
}

easel_err fs_read_file(const char *path, size_t max, uint8_t **out, size_t *len) {
    *out = NULL, *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return easel_seterr(errno == ENOENT ? EASEL_ENOTFOUND : EASEL_EIO, "%s: %s", path,
                            strerror(errno));
    struct stat st;
    if (fstat(fd, &st) || st.st_size < 0 || (uint64_t)st.st_size > max) {
        close(fd);
        return easel_seterr(EASEL_EIO, "%s: unreadable, or over %zu bytes", path, max);
    }
    size_t n = (size_t)st.st_size, got = 0;
    uint8_t *buf = malloc(n + 1);
    if (!buf) {
        close(fd);
        return easel_seterr(EASEL_ENOMEM, "%s: out of memory", path);
    }
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
    }
    close(fd);
    if (got != n) {
        free(buf);
        return easel_seterr(EASEL_EIO, "%s: short read", path);
    }
    buf[n] = 0;
    *out = buf, *len = n;
    return EASEL_OK;
}
