/*
 * checkpoint.c - framing, atomic writing and loading of processor
 * checkpoints (see checkpoint.h for the file format and the directory
 * layout). What a checkpoint holds is the runtime's business
 * (checkpointing.c); this file only makes sure that what is read back is
 * exactly what was written, or is refused.
 */
#include "runtime/checkpoint.h"
#include "bytes.h"
#include "file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define ASPEN_LOG_DOMAIN "checkpoint"

static const uint8_t magic[8] = {'A', 'S', 'P', 'N', 'C', 'K', 'P', 'T'};

uint8_t *
aspen__checkpoint_encode(const bson_t *body, size_t *len)
{
   size_t n = ASPEN_CHECKPOINT_HEADER_LEN + body->len;
   uint8_t *out = aspen_xmalloc(n);
   memcpy(out, magic, sizeof magic);
   aspen_bytes_put_le32(out + 8, ASPEN_CHECKPOINT_VERSION);
   aspen_bytes_put_le32(out + 12, body->len);
   aspen_bytes_put_le32(out + 16,
                        aspen_crc32c(0, bson_get_data(body), body->len));
   memcpy(out + ASPEN_CHECKPOINT_HEADER_LEN, bson_get_data(body), body->len);
   *len = n;
   return out;
}

bool
aspen__checkpoint_decode(const uint8_t *data, size_t len,
                         const char *processor_id, bson_t *body,
                         aspen_error_t *err)
{
   bson_init(body);
   if (len < ASPEN_CHECKPOINT_HEADER_LEN) {
      aspen_error_set(err, ASPEN_ERR_InternalError,
                      "truncated checkpoint: %zu bytes, shorter than its "
                      "header",
                      len);
      return false;
   }
   if (memcmp(data, magic, sizeof magic) != 0) {
      aspen_error_set(err, ASPEN_ERR_InternalError,
                      "not a checkpoint (bad magic)");
      return false;
   }
   uint32_t version = aspen_bytes_get_le32(data + 8);
   if (version != ASPEN_CHECKPOINT_VERSION) {
      aspen_error_set(err, ASPEN_ERR_InternalError,
                      "checkpoint format version %u is not supported "
                      "(expected %u)",
                      version, ASPEN_CHECKPOINT_VERSION);
      return false;
   }
   uint32_t body_len = aspen_bytes_get_le32(data + 12);
   if (body_len > ASPEN_CHECKPOINT_MAX_BODY) {
      aspen_error_set(err, ASPEN_ERR_InternalError,
                      "checkpoint body length %u is over the limit", body_len);
      return false;
   }
   if (len - ASPEN_CHECKPOINT_HEADER_LEN != body_len) {
      aspen_error_set(err, ASPEN_ERR_InternalError,
                      "truncated or padded checkpoint: body is %zu bytes, "
                      "header says %u",
                      len - ASPEN_CHECKPOINT_HEADER_LEN, body_len);
      return false;
   }
   const uint8_t *b = data + ASPEN_CHECKPOINT_HEADER_LEN;
   uint32_t crc = aspen_crc32c(0, b, body_len);
   if (crc != aspen_bytes_get_le32(data + 16)) {
      aspen_error_set(err, ASPEN_ERR_InternalError,
                      "corrupted checkpoint: CRC-32C %08x, header says %08x",
                      crc, aspen_bytes_get_le32(data + 16));
      return false;
   }
   bson_t view;
   size_t off;
   if (!bson_init_static(&view, b, body_len) ||
       !bson_validate(&view, BSON_VALIDATE_NONE, &off)) {
      aspen_error_set(err, ASPEN_ERR_InternalError,
                      "checkpoint body is not valid BSON");
      return false;
   }
   if (processor_id) {
      bson_iter_t it;
      if (!bson_iter_init_find(&it, &view, "processorId") ||
          !BSON_ITER_HOLDS_UTF8(&it) ||
          strcmp(bson_iter_utf8(&it, NULL), processor_id) != 0) {
         aspen_error_set(err, ASPEN_ERR_InternalError,
                         "checkpoint belongs to another processor");
         return false;
      }
   }
   bson_destroy(body);
   bson_copy_to(&view, body);
   return true;
}

bool
aspen__proc_id_is_valid(const char *id, size_t len)
{
   if (len != 24 || strlen(id) != 24) {
      return false;
   }
   for (size_t i = 0; i < 24; i++) {
      char c = id[i];
      if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
         return false;
      }
   }
   return true;
}

void
aspen__checkpoint_dir(const char *state_dir, const char *processor_id,
                      char *out, size_t n)
{
   /* Ids are checked where they come in (the state files): one that could
    * name another directory ("../x") never gets here. */
   ASPEN_ASSERT(aspen__proc_id_is_valid(processor_id, strlen(processor_id)));
   snprintf(out, n, "%s/checkpoints/%s", state_dir, processor_id);
}

bool
aspen__checkpoint_write(const char *dir, const bson_t *body,
                        aspen_error_t *err)
{
   char tmp[4200], cur[4200], prev[4200];
   snprintf(tmp, sizeof tmp, "%s/tmp", dir);
   snprintf(cur, sizeof cur, "%s/current", dir);
   snprintf(prev, sizeof prev, "%s/previous", dir);
   if (body->len > ASPEN_CHECKPOINT_MAX_BODY) {
      /* Loading would refuse it: keep the good checkpoints on disk. */
      aspen_error_set(err, ASPEN_ERR_BSONObjectTooLarge,
                      "cannot write checkpoint %s: its body is %u bytes, "
                      "more than the %u a checkpoint may hold",
                      cur, (unsigned) body->len,
                      (unsigned) ASPEN_CHECKPOINT_MAX_BODY);
      return false;
   }
   const char *step = "create the directory";
   size_t len;
   uint8_t *data = aspen__checkpoint_encode(body, &len);
   bool ok = aspen_file_mkdirs(dir) &&
             aspen_file_write_synced(tmp, data, len, 0600, &step);
   free(data);
   if (ok) {
      /* Keep the last good one. A crash between the two renames leaves
       * only "previous" (and "tmp"), which load falls back to. */
      step = "rename";
      ok = (rename(cur, prev) == 0 || errno == ENOENT) &&
           rename(tmp, cur) == 0;
   }
   if (ok) {
      step = "fsync the directory of";
      ok = aspen_file_fsync_dir(dir);
   }
   if (!ok) {
      aspen_error_set(err, ASPEN_ERR_InternalError,
                      "cannot %s checkpoint %s: %s", step, cur,
                      strerror(errno));
   }
   return ok;
}

/* Reads a whole file; NULL when it does not exist or cannot be read. */
static uint8_t *
read_file(const char *path, size_t *len, bool *exists)
{
   *len = 0;
   *exists = false;
   int fd = open(path, O_RDONLY);
   if (fd < 0) {
      return NULL;
   }
   *exists = true;
   struct stat sb;
   if (fstat(fd, &sb) != 0 ||
       (uint64_t) sb.st_size >
          ASPEN_CHECKPOINT_MAX_BODY + ASPEN_CHECKPOINT_HEADER_LEN) {
      close(fd);
      return NULL;
   }
   size_t n = (size_t) sb.st_size;
   uint8_t *buf = aspen_xmalloc(n ? n : 1);
   size_t got = 0;
   while (got < n) {
      ssize_t r = read(fd, buf + got, n - got);
      if (r < 0 && errno == EINTR) {
         continue;
      }
      if (r <= 0) {
         break;
      }
      got += (size_t) r;
   }
   close(fd);
   *len = got;
   return buf;
}

bool
aspen__checkpoint_load_file(const char *dir, const char *name,
                            const char *processor_id, const char *ctx,
                            bson_t *body)
{
   char path[4200];
   snprintf(path, sizeof path, "%s/%s", dir, name);
   size_t len;
   bool exists;
   uint8_t *data = read_file(path, &len, &exists);
   if (!exists) {
      bson_init(body);
      return false;
   }
   aspen_error_t err;
   bool ok = data &&
             aspen__checkpoint_decode(data, len, processor_id, body, &err);
   free(data);
   if (ok) {
      return true;
   }
   if (!data) {
      aspen_error_set(&err, ASPEN_ERR_InternalError, "unreadable");
      bson_init(body);
   }
   aspen_logf(ASPEN_LOG_ERROR, ASPEN_LOG_DOMAIN, ctx,
              "checkpoint %s is unusable (%s)", path, err.message);
   return false;
}

bool
aspen__checkpoint_load(const char *dir, const char *processor_id,
                       const char *ctx, bson_t *body, bool *used_previous)
{
   *used_previous = false;
   if (aspen__checkpoint_load_file(dir, "current", processor_id, ctx, body)) {
      return true;
   }
   bson_destroy(body);
   if (aspen__checkpoint_load_file(dir, "previous", processor_id, ctx,
                                   body)) {
      *used_previous = true;
      return true;
   }
   return false;
}

/* True when `body` holds at least one partition position. */
static bool
has_positions(const bson_t *body)
{
   bson_iter_t it, found;
   return bson_iter_init(&it, body) &&
          bson_iter_find_descendant(&it, "position.parts.0", &found);
}

/* True when `body`'s checkpointId is one of the strings in `ids`. */
static bool
id_in(const bson_t *body, const bson_t *ids)
{
   bson_iter_t it, ii;
   if (!bson_iter_init_find(&it, body, "checkpointId") ||
       !BSON_ITER_HOLDS_UTF8(&it) || !bson_iter_init(&ii, ids)) {
      return false;
   }
   const char *id = bson_iter_utf8(&it, NULL);
   while (bson_iter_next(&ii)) {
      if (BSON_ITER_HOLDS_UTF8(&ii) &&
          strcmp(bson_iter_utf8(&ii, NULL), id) == 0) {
         return true;
      }
   }
   return false;
}

int
aspen__checkpoint_pick_committed(const bson_t *current,
                                 const bson_t *previous,
                                 const bson_t *committed_ids)
{
   if (current && id_in(current, committed_ids)) {
      return 0;
   }
   if (previous && id_in(previous, committed_ids)) {
      return 1;
   }
   /* No transaction committed positions yet: a checkpoint without any is
    * consistent with that (the first one, taken before any input). */
   if (current && !has_positions(current)) {
      return 0;
   }
   if (previous && !has_positions(previous)) {
      return 1;
   }
   return -1;
}

void
aspen__checkpoint_discard_current(const char *dir)
{
   char path[4200];
   snprintf(path, sizeof path, "%s/current", dir);
   (void) unlink(path);
   (void) aspen_file_fsync_dir(dir);
}

void
aspen__checkpoint_remove(const char *dir)
{
   static const char *const names[] = {"current", "previous", "tmp"};
   for (size_t i = 0; i < 3; i++) {
      char path[4200];
      snprintf(path, sizeof path, "%s/%s", dir, names[i]);
      (void) unlink(path);
   }
   (void) rmdir(dir);
}
