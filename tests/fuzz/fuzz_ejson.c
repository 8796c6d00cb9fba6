/*
 * fuzz_ejson.c - the plain-JSON fast path of wire/ejson.c against libbson,
 * which it must match byte for byte wherever it does not decline:
 *  - the input as JSON text: what aspen_ejson_read accepts, libbson's
 *    bson_init_from_json accepts too, with the same BSON;
 *  - the document read (by either reader), and the input itself as BSON when
 *    it is a well-framed document: what aspen_ejson_write writes equals
 *    bson_as_relaxed_extended_json's text;
 *  - the input as BSON, whatever its bytes: aspen_bsonw_iter_next leaves
 *    the iterator as bson_iter_next does, step by step, nested levels too.
 */
#include "fuzz_common.h"
#include "bson_iter_check.h"
#include "ejson.h"

#include <stdio.h>
#include <stdlib.h>

static void
check_write(const bson_t *doc)
{
   aspen_ejson_text_t t = {0};
   if (aspen_ejson_write(doc, &t)) {
      size_t n = 0;
      char *want = bson_as_relaxed_extended_json(doc, &n);
      if (!want || n != t.len || memcmp(want, t.data, n) != 0 ||
          t.data[t.len] != '\0') {
         fprintf(stderr, "ejson write differs:\n  libbson %s\n  aspen   %s\n",
                 want ? want : "(null)", t.data);
         abort();
      }
      bson_free(want);
   }
   aspen_ejson_text_cleanup(&t);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
   if (size > FUZZ_MAX_INPUT) {
      return 0;
   }
   aspen_bsonw_t w;
   bson_t fast, slow;
   bson_error_t berr;
   aspen_bsonw_init(&w);
   bool fast_ok = aspen_ejson_read((const char *) data, size, &w, &fast);
   bool slow_ok = size > 0 && bson_init_from_json(&slow, (const char *) data,
                                                  (ssize_t) size, &berr);
   if (fast_ok) {
      if (!slow_ok || slow.len != fast.len ||
          memcmp(bson_get_data(&slow), bson_get_data(&fast), fast.len) != 0) {
         fprintf(stderr, "ejson read differs from libbson (%s): %.*s\n",
                 slow_ok ? "other bytes" : berr.message,
                 (int) (size > 300 ? 300 : size), (const char *) data);
         abort();
      }
      check_write(&fast);
   }
   if (slow_ok) {
      check_write(&slow);
      bson_destroy(&slow);
   }
   aspen_bsonw_cleanup(&w);
   bson_t raw;
   if (size >= 5 && bson_init_static(&raw, data, size)) {
      check_write(&raw);
   }
   /* The iterator, also over bytes whose length header lies. */
   if (!bson_iter_check(data, size, 0)) {
      abort();
   }
   if (size >= 5) {
      uint8_t *copy = malloc(size);
      memcpy(copy, data, size);
      aspen_bytes_put_le32(copy, (uint32_t) size);
      copy[size - 1] = 0;
      if (!bson_iter_check(copy, size, 0)) {
         abort();
      }
      free(copy);
   }
   return 0;
}
