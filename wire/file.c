/*
 * file.c - durable file writes (see file.h): the one home of the atomic
 * replace that the engine's state and checkpoint files and the proxy's
 * users file use.
 */
#include "file.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

bool
aspen_file_mkdirs(const char *dir)
{
   char path[4096];
   snprintf(path, sizeof path, "%s", dir);
   for (char *p = path + 1; *p; p++) {
      if (*p == '/') {
         *p = '\0';
         if (mkdir(path, 0700) != 0 && errno != EEXIST) {
            return false;
         }
         *p = '/';
      }
   }
   return mkdir(path, 0700) == 0 || errno == EEXIST;
}

bool
aspen_file_fsync_dir(const char *dir)
{
   int fd = open(dir, O_RDONLY | O_DIRECTORY);
   if (fd < 0) {
      return false;
   }
   bool ok = fsync(fd) == 0;
   close(fd);
   return ok;
}

static bool
write_all(int fd, const uint8_t *p, size_t n)
{
   while (n > 0) {
      ssize_t w = write(fd, p, n);
      if (w < 0 && errno == EINTR) {
         continue;
      }
      if (w <= 0) {
         return false;
      }
      p += w;
      n -= (size_t) w;
   }
   return true;
}

bool
aspen_file_write_synced(const char *path, const void *data, size_t len,
                        unsigned mode, const char **step)
{
   *step = "write";
   int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, (mode_t) mode);
   bool ok = fd >= 0 && write_all(fd, data, len);
   if (ok) {
      *step = "fsync";
      ok = fsync(fd) == 0;
   }
   if (fd >= 0) {
      int saved = errno;
      ok = close(fd) == 0 && ok;
      if (!ok && saved) {
         errno = saved;
      }
   }
   return ok;
}

bool
aspen_file_write_atomic(const char *path, const void *data, size_t len,
                        unsigned mode, unsigned flags, aspen_error_t *err)
{
   char tmp[4300], dir[4096];
   if (flags & ASPEN_FILE_TMP_PER_PROCESS) {
      snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int) getpid());
   } else {
      snprintf(tmp, sizeof tmp, "%s.tmp", path);
   }
   snprintf(dir, sizeof dir, "%s", path);
   const char *folder = dirname(dir); /* points into `dir` or is "." */
   const char *step = "create the directory of";
   bool ok = aspen_file_mkdirs(folder) &&
             aspen_file_write_synced(tmp, data, len, mode, &step);
   if (ok) {
      step = "rename";
      ok = rename(tmp, path) == 0;
   }
   if (ok) {
      step = "fsync the directory of";
      ok = aspen_file_fsync_dir(folder);
   }
   if (!ok) {
      aspen_error_set(err, ASPEN_ERR_InternalError, "cannot %s %s: %s", step,
                      path, strerror(errno));
      (void) unlink(tmp);
   }
   return ok;
}
