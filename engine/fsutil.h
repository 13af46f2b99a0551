/* Files that appear whole or not at all: one atomic-write implementation for
 * images, safetensors, make-model's folders and anything else we write. A
 * write goes to a unique temp file beside the target (.NAME.tmp.PID.RAND,
 * created O_EXCL, so two writers never share one), is fsynced, renamed over
 * the target, and the directory is fsynced so the rename survives a power
 * loss. On any failure the temp file is removed and the old target stays.
 * A crash leaves at most a temp file whose name fs_is_temp_name() knows. */
#ifndef EASEL_FSUTIL_H
#define EASEL_FSUTIL_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

typedef struct {
    int fd;
    char path[4096], tmp[4352];
} fs_atomic;

/* Creates the temp file for path. EASEL_EIO on failure; every message here
 * is "<path>: <reason>", for the caller to wrap with what it was writing. */
easel_err fs_atomic_open(fs_atomic *a, const char *path);
/* Appends n bytes (handles short writes and EINTR). */
easel_err fs_atomic_write(fs_atomic *a, const void *p, size_t n);
/* fsync, close, rename over path, fsync the directory. On failure the temp
 * file is removed (the target is untouched) and the message names path. */
easel_err fs_atomic_commit(fs_atomic *a);
/* Closes and removes the temp file (after a failed write of the caller's);
 * nothing when the file is not open. */
void fs_atomic_abort(fs_atomic *a);
/* The whole cycle for one buffer. */
easel_err fs_write_file(const char *path, const void *p, size_t n);

/* A whole file into *out (malloc'd, NUL-terminated so text can be read as a
 * string; *len excludes the NUL). EASEL_ENOTFOUND when it does not exist,
 * EASEL_EIO when it cannot be read or is larger than max bytes, EASEL_ENOMEM;
 * each with a message naming path (callers replace it with their own). */
easel_err fs_read_file(const char *path, size_t max, uint8_t **out, size_t *len);

/* 1 if name (a file name, no directory) is a temp file of ours: ".X.tmp.PID.HEX". */
int fs_is_temp_name(const char *name);
/* mkdir -p; EASEL_EIO naming the directory that could not be made. */
easel_err fs_mkdir_p(const char *dir);

#endif
