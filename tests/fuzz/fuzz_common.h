/*
 * fuzz_common.h - helpers shared by aspen's fuzz targets (tests/fuzz/).
 *
 * Each fuzz_<target>.c defines LLVMFuzzerTestOneInput. It is linked either
 * with libFuzzer (clang, -fsanitize=fuzzer; scripts/fuzz.sh) or with
 * replay.c, a plain main that runs a corpus directory through it (a ctest per
 * target in every build, so the ASan+UBSan build replays every corpus).
 *
 * Inputs that carry a document are either Extended JSON text (when the first
 * non-blank byte is '{' or '[': easy to write by hand and to mutate with the
 * dictionary) or raw BSON (anything else), so both parsers' outputs reach the
 * code under test.
 */
#ifndef ASPEN_FUZZ_COMMON_H
#define ASPEN_FUZZ_COMMON_H

#include "wire.h"

#include <bson/bson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Inputs above this are ignored: the targets look for logic bugs, not for
 * how long a 10 MB document takes. */
#define FUZZ_MAX_INPUT (64 * 1024)

/* Fills `doc` (always initialised; bson_destroy it) from `data`: Extended
 * JSON text when it starts with '{' or '[' after blanks, else BSON that must
 * pass the checks a client's BSON meets: it is wrapped in an OP_MSG frame and
 * decoded by aspen_op_msg_parse, as session.c would. Returns false when the
 * bytes are neither, or more than FUZZ_MAX_INPUT. */
static inline bool
fuzz_doc_from_bytes(const uint8_t *data, size_t size, bson_t *doc)
{
   size_t i = 0;
   if (size > FUZZ_MAX_INPUT) {
      bson_init(doc);
      return false;
   }
   while (i < size && (data[i] == ' ' || data[i] == '\n' || data[i] == '\t' ||
                       data[i] == '\r')) {
      i++;
   }
   if (i < size && (data[i] == '{' || data[i] == '[')) {
      bson_error_t berr;
      if (bson_init_from_json(doc, (const char *) data, (ssize_t) size,
                              &berr)) {
         return true;
      }
      bson_init(doc);
      return false;
   }
   if (size < 5) {
      bson_init(doc);
      return false;
   }
   uint8_t *body = bson_malloc(5 + size);
   memset(body, 0, 5); /* flagBits 0, section kind 0 */
   memcpy(body + 5, data, size);
   aspen_frame_t f = {.message_length = (int32_t) (16 + 5 + size),
                      .op_code = ASPEN_OP_MSG,
                      .body = body,
                      .body_len = 5 + size};
   aspen_op_msg_t msg;
   aspen_error_t err;
   bool ok = aspen_op_msg_parse(&f, &msg, &err);
   if (ok) {
      bson_copy_to(&msg.body, doc);
   } else {
      bson_init(doc);
   }
   bson_free(body);
   return ok;
}

/* A fixed document for a target's setup, from relaxed Extended JSON that is
 * known to be valid (aborts otherwise). */
static inline void
fuzz_fixed_doc(bson_t *doc, const char *json)
{
   bson_error_t berr;
   ASPEN_ASSERT(bson_init_from_json(doc, json, -1, &berr));
}

#endif /* ASPEN_FUZZ_COMMON_H */
