/*
 * test_checkpoint.c - checkpoint files (engine/runtime/checkpoint.c): a
 * round trip, every truncation and every single-bit flip of an encoded
 * checkpoint is refused, a foreign processor id is refused, and loading
 * falls back to the previous checkpoint when the current one is damaged or
 * missing, and the exactly-once restore picks the checkpoint the broker
 * committed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "runtime/checkpoint.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PID "65a1b2c3d4e5f60718293a4b"

static void
make_body(bson_t *b, int64_t n)
{
   bson_init(b);
   BSON_APPEND_UTF8(b, "processorId", PID);
   BSON_APPEND_INT64(b, "seq", n);
   bson_t pos, parts, p0;
   BSON_APPEND_DOCUMENT_BEGIN(b, "position", &pos);
   BSON_APPEND_ARRAY_BEGIN(&pos, "parts", &parts);
   BSON_APPEND_DOCUMENT_BEGIN(&parts, "0", &p0);
   BSON_APPEND_INT64(&p0, "p", 3);
   BSON_APPEND_INT64(&p0, "replay", 100 + n);
   BSON_APPEND_INT64(&p0, "high", 200 + n);
   bson_append_document_end(&parts, &p0);
   bson_append_array_end(&pos, &parts);
   bson_append_document_end(b, &pos);
}

static int64_t
seq_of(const bson_t *b)
{
   bson_iter_t it;
   assert_true(bson_iter_init_find(&it, b, "seq"));
   return bson_iter_as_int64(&it);
}

static void
test_round_trip(void **state)
{
   (void) state;
   bson_t body, out;
   make_body(&body, 7);
   size_t len;
   uint8_t *data = aspen__checkpoint_encode(&body, &len);
   assert_int_equal(len, ASPEN_CHECKPOINT_HEADER_LEN + body.len);
   aspen_error_t err;
   assert_true(aspen__checkpoint_decode(data, len, PID, &out, &err));
   assert_true(bson_equal(&body, &out));
   bson_destroy(&out);
   assert_true(aspen__checkpoint_decode(data, len, NULL, &out, &err));
   bson_destroy(&out);
   /* Another processor's checkpoint is refused. */
   assert_false(aspen__checkpoint_decode(data, len, "000000000000000000000000",
                                         &out, &err));
   assert_true(bson_empty(&out));
   assert_non_null(strstr(err.message, "another processor"));
   bson_destroy(&out);
   free(data);
   bson_destroy(&body);
}

static void
test_truncation(void **state)
{
   (void) state;
   bson_t body, out;
   make_body(&body, 1);
   size_t len;
   uint8_t *data = aspen__checkpoint_encode(&body, &len);
   for (size_t n = 0; n < len; n++) {
      /* Each prefix in a buffer of exactly its size (ASan sees overreads). */
      uint8_t *copy = malloc(n ? n : 1);
      memcpy(copy, data, n);
      aspen_error_t err;
      assert_false(aspen__checkpoint_decode(copy, n, PID, &out, &err));
      assert_true(bson_empty(&out));
      assert_non_null(strstr(err.message, "truncated"));
      bson_destroy(&out);
      free(copy);
   }
   /* Trailing garbage is refused too. */
   uint8_t *longer = malloc(len + 1);
   memcpy(longer, data, len);
   longer[len] = 0;
   aspen_error_t err;
   assert_false(aspen__checkpoint_decode(longer, len + 1, PID, &out, &err));
   bson_destroy(&out);
   free(longer);
   free(data);
   bson_destroy(&body);
}

static void
test_bit_flips(void **state)
{
   (void) state;
   bson_t body, out;
   make_body(&body, 2);
   size_t len;
   uint8_t *data = aspen__checkpoint_encode(&body, &len);
   for (size_t i = 0; i < len; i++) {
      for (int bit = 0; bit < 8; bit++) {
         data[i] ^= (uint8_t) (1u << bit);
         aspen_error_t err;
         assert_false(aspen__checkpoint_decode(data, len, PID, &out, &err));
         assert_true(bson_empty(&out));
         bson_destroy(&out);
         data[i] ^= (uint8_t) (1u << bit);
      }
   }
   aspen_error_t err;
   assert_true(aspen__checkpoint_decode(data, len, PID, &out, &err));
   bson_destroy(&out);
   free(data);
   bson_destroy(&body);
}

static void
tmp_dir(char *out, size_t n)
{
   snprintf(out, n, "/tmp/aspen-ckpt-XXXXXX");
   assert_non_null(mkdtemp(out));
}

static void
rm_dir(const char *root)
{
   char dir[512];
   snprintf(dir, sizeof dir, "%s/checkpoints/%s", root, PID);
   aspen__checkpoint_remove(dir);
   snprintf(dir, sizeof dir, "%s/checkpoints", root);
   rmdir(dir);
   rmdir(root);
}

/* Overwrites `path` with its first `keep` bytes, one byte flipped at `flip`
 * (or none when flip < 0). */
static void
damage(const char *path, off_t keep, off_t flip)
{
   if (keep >= 0) {
      assert_int_equal(truncate(path, keep), 0);
   }
   if (flip >= 0) {
      int fd = open(path, O_RDWR);
      assert_true(fd >= 0);
      uint8_t c;
      assert_int_equal(pread(fd, &c, 1, flip), 1);
      c ^= 0x10;
      assert_int_equal(pwrite(fd, &c, 1, flip), 1);
      close(fd);
   }
}

static void
test_write_and_fallback(void **state)
{
   (void) state;
   char root[64], dir[512], cur[600], prev[600];
   tmp_dir(root, sizeof root);
   aspen__checkpoint_dir(root, PID, dir, sizeof dir);
   snprintf(cur, sizeof cur, "%s/current", dir);
   snprintf(prev, sizeof prev, "%s/previous", dir);
   bson_t body, out;
   bool used_prev;
   aspen_error_t err;

   /* Nothing yet. */
   assert_false(aspen__checkpoint_load(dir, PID, "t", &out, &used_prev));
   assert_true(bson_empty(&out));
   bson_destroy(&out);

   for (int64_t n = 1; n <= 3; n++) {
      make_body(&body, n);
      assert_true(aspen__checkpoint_write(dir, &body, &err));
      bson_destroy(&body);
   }
   assert_true(aspen__checkpoint_load(dir, PID, "t", &out, &used_prev));
   assert_false(used_prev);
   assert_int_equal(seq_of(&out), 3);
   bson_destroy(&out);

   /* Torn current: the previous (2) is used. */
   damage(cur, 30, -1);
   assert_true(aspen__checkpoint_load(dir, PID, "t", &out, &used_prev));
   assert_true(used_prev);
   assert_int_equal(seq_of(&out), 2);
   bson_destroy(&out);

   /* Two good writes replace the damaged one; a bit flip in the newest
    * body makes the one before it (4) the answer. */
   for (int64_t n = 4; n <= 5; n++) {
      make_body(&body, n);
      assert_true(aspen__checkpoint_write(dir, &body, &err));
      bson_destroy(&body);
   }
   damage(cur, -1, 40);
   assert_true(aspen__checkpoint_load(dir, PID, "t", &out, &used_prev));
   assert_true(used_prev);
   assert_int_equal(seq_of(&out), 4);
   bson_destroy(&out);

   /* Crash between the two renames: no current, previous is used. */
   make_body(&body, 6);
   assert_true(aspen__checkpoint_write(dir, &body, &err));
   bson_destroy(&body);
   make_body(&body, 7);
   assert_true(aspen__checkpoint_write(dir, &body, &err));
   bson_destroy(&body);
   assert_int_equal(unlink(cur), 0);
   assert_true(aspen__checkpoint_load(dir, PID, "t", &out, &used_prev));
   assert_true(used_prev);
   assert_int_equal(seq_of(&out), 6);
   bson_destroy(&out);

   /* Both damaged: nothing usable, reported, empty body. */
   damage(prev, 10, -1);
   assert_false(aspen__checkpoint_load(dir, PID, "t", &out, &used_prev));
   assert_true(bson_empty(&out));
   bson_destroy(&out);

   rm_dir(root);
}

/* A body with checkpointId `id` and, unless `empty`, one position. */
static void
make_ided(bson_t *b, const char *id, bool empty)
{
   if (empty) {
      bson_init(b);
      BSON_APPEND_UTF8(b, "processorId", PID);
      bson_t pos, parts;
      BSON_APPEND_DOCUMENT_BEGIN(b, "position", &pos);
      BSON_APPEND_ARRAY_BEGIN(&pos, "parts", &parts);
      bson_append_array_end(&pos, &parts);
      bson_append_document_end(b, &pos);
   } else {
      make_body(b, 1);
   }
   BSON_APPEND_UTF8(b, "checkpointId", id);
}

/* Exactly-once restore: the checkpoint whose id the broker committed. */
static void
test_pick_committed(void **state)
{
   (void) state;
   bson_t cur, prev, cur_empty, prev_empty;
   make_ided(&cur, "r-2", false);
   make_ided(&prev, "r-1", false);
   make_ided(&cur_empty, "r-2", true);
   make_ided(&prev_empty, "r-1", true);
   bson_t *none = bson_new();
   bson_t *c2 = BCON_NEW("0", "r-2");
   bson_t *c1 = BCON_NEW("0", "old-9", "1", "r-1");
   bson_t *other = BCON_NEW("0", "old-9");
   /* The current one committed; or it did not and the previous one did
    * (aspen died between writing the checkpoint and committing). */
   assert_int_equal(aspen__checkpoint_pick_committed(&cur, &prev, c2), 0);
   assert_int_equal(aspen__checkpoint_pick_committed(&cur, &prev, c1), 1);
   assert_int_equal(aspen__checkpoint_pick_committed(NULL, &prev, c1), 1);
   assert_int_equal(aspen__checkpoint_pick_committed(&cur, NULL, c2), 0);
   /* Nothing committed yet: only a checkpoint without positions fits. */
   assert_int_equal(aspen__checkpoint_pick_committed(&cur_empty, NULL, none), 0);
   assert_int_equal(aspen__checkpoint_pick_committed(&cur, &prev_empty, none), 1);
   assert_int_equal(aspen__checkpoint_pick_committed(&cur, &prev, none), -1);
   /* Ids of another chain (a fresh start) match neither. */
   assert_int_equal(aspen__checkpoint_pick_committed(&cur, &prev, other), -1);
   assert_int_equal(aspen__checkpoint_pick_committed(NULL, NULL, c2), -1);
   bson_destroy(&cur);
   bson_destroy(&prev);
   bson_destroy(&cur_empty);
   bson_destroy(&prev_empty);
   bson_destroy(none);
   bson_destroy(c2);
   bson_destroy(c1);
   bson_destroy(other);
}

int
main(void)
{
   const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_round_trip),
      cmocka_unit_test(test_truncation),
      cmocka_unit_test(test_bit_flips),
      cmocka_unit_test(test_write_and_fallback),
      cmocka_unit_test(test_pick_committed),
   };
   return cmocka_run_group_tests_name("checkpoint", tests, NULL, NULL);
}
