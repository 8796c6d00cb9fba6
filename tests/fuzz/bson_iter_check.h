/*
 * bson_iter_check.h - shared by fuzz_ejson.c and tests/unit/test_wire.c:
 * walks the same bytes with bson_iter_next and aspen_bsonw_iter_next
 * (wire/bsonw.h), into sub-documents, and says whether both gave the same
 * result and left the iterator in the same state at every step.
 */
#ifndef ASPEN_TESTS_BSON_ITER_CHECK_H
#define ASPEN_TESTS_BSON_ITER_CHECK_H

#include "bsonw.h"

#include <stddef.h>
#include <stdio.h>
#include <string.h>

static inline bool
bson_iter_check(const uint8_t *data, size_t size, int depth)
{
   bson_iter_t a, b;
   if (depth > 32 || !bson_iter_init_from_data(&a, data, size)) {
      return true;
   }
   b = a;
   for (;;) {
      bool ra = bson_iter_next(&a);
      bool rb = aspen_bsonw_iter_next(&b);
      /* Everything but the value it may cache (not set by next). */
      if (ra != rb || memcmp(&a, &b, offsetof(bson_iter_t, value)) != 0) {
         fprintf(stderr, "aspen_bsonw_iter_next differs at offset %u\n",
                 a.off);
         return false;
      }
      if (!ra) {
         return true;
      }
      uint32_t n;
      const uint8_t *sub;
      if (BSON_ITER_HOLDS_DOCUMENT(&a)) {
         bson_iter_document(&a, &n, &sub);
      } else if (BSON_ITER_HOLDS_ARRAY(&a)) {
         bson_iter_array(&a, &n, &sub);
      } else {
         continue;
      }
      if (!bson_iter_check(sub, n, depth + 1)) {
         return false;
      }
   }
}

#endif /* ASPEN_TESTS_BSON_ITER_CHECK_H */
