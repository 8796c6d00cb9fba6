/*
 * file.h - durable file writes (file.c): a file replaced atomically (a temp
 * file written and fsynced, renamed over the old one, the directory
 * fsynced, as Redis saves its RDB), and the two steps it is made of for
 * writers that rename in their own way (the checkpoint's current/previous
 * pair). Used by the engine's state and checkpoint files and the proxy's
 * users file.
 *
 * Everything here is blocking file I/O: any thread but the event loop.
 */
#ifndef ASPEN_WIRE_FILE_H
#define ASPEN_WIRE_FILE_H

#include "wire.h"

/* aspen_file_write_atomic's flags. */
enum {
   /* The temp file is "<path>.tmp.<pid>" instead of "<path>.tmp", so that
    * several processes replacing the same file never write into one temp
    * file (`aspen --add-user` runs). */
   ASPEN_FILE_TMP_PER_PROCESS = 1u << 0,
};

/* Creates `dir` and its parents (mode 0700). True when it exists
 * afterwards; false with errno set otherwise. */
bool aspen_file_mkdirs(const char *dir);

/* fsyncs the directory `dir`, making the renames in it durable. False with
 * errno set when it cannot be opened or synced. */
bool aspen_file_fsync_dir(const char *dir);

/* Writes `len` bytes to `path` (created with `mode` if missing, truncated),
 * fsyncs and closes it. False with errno set and *step naming what failed
 * ("write", including the open, or "fsync"). */
bool aspen_file_write_synced(const char *path, const void *data, size_t len,
                             unsigned mode, const char **step);

/* Replaces `path` with `len` bytes atomically: its folder is created with
 * its parents if missing (aspen_file_mkdirs), the temp file (see
 * ASPEN_FILE_TMP_PER_PROCESS; created with `mode`) written and fsynced,
 * renamed over `path`, and the folder fsynced. A crash leaves the old file
 * or the new one, never a part. False with err set (InternalError, "cannot
 * <step> <path>: <reason>") on any I/O error; the old file is then
 * untouched and the temp file removed. */
bool aspen_file_write_atomic(const char *path, const void *data, size_t len,
                             unsigned mode, unsigned flags,
                             aspen_error_t *err);

#endif /* ASPEN_WIRE_FILE_H */
