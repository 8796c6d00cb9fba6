/*
 * frame.c - incremental framing of the MongoDB wire protocol. A frame is a
 * 16-byte header (messageLength, requestID, responseTo, opCode, little
 * endian) and messageLength - 16 bytes of body. The announced length is
 * checked against the limit before the caller buffers anything more, so a
 * peer cannot make aspen allocate what it announces.
 */
#include "wire_int.h"

aspen_parse_result_t
aspen_frame_parse(const uint8_t *data, size_t len, size_t max_len,
                  aspen_frame_t *out, aspen_error_t *err)
{
   memset(out, 0, sizeof *out);
   if (len < ASPEN_WIRE_HEADER_LEN) {
      return ASPEN_PARSE_NEED_MORE;
   }
   aspen__cursor_t c = {data, data + ASPEN_WIRE_HEADER_LEN};
   (void) aspen__cursor_i32(&c, &out->message_length);
   (void) aspen__cursor_i32(&c, &out->request_id);
   (void) aspen__cursor_i32(&c, &out->response_to);
   (void) aspen__cursor_i32(&c, &out->op_code);
   if (out->message_length <= ASPEN_WIRE_HEADER_LEN ||
       (size_t) out->message_length > max_len) {
      aspen_error_set(err, ASPEN_ERR_ProtocolError,
                      "invalid message length %d (must be between %d and %zu)",
                      out->message_length, ASPEN_WIRE_HEADER_LEN + 1, max_len);
      return ASPEN_PARSE_ERROR;
   }
   if (len < (size_t) out->message_length) {
      return ASPEN_PARSE_NEED_MORE;
   }
   out->body = data + ASPEN_WIRE_HEADER_LEN;
   out->body_len = (size_t) out->message_length - ASPEN_WIRE_HEADER_LEN;
   return ASPEN_PARSE_OK;
}

/* Deepest nesting of documents and arrays accepted in a message, as mongod's
 * BSONDepth default (200 levels). */
#define MAX_BSON_DEPTH 200

/* Checks the structure of every embedded document and array: each must
 * iterate to its end without error and end with its NUL byte. libbson 1.23's
 * bson_validate accepts an embedded array whose last byte is not 0 (found by
 * tests/fuzz/fuzz_frame), and code that then calls bson_init_static on it
 * gets false and an uninitialised bson_t. Runs before bson_validate, whose
 * own recursion is unbounded, so the depth limit protects it too. Returns
 * false with *offset set to where the problem is (relative to `doc`). */
static bool
check_nesting(const bson_t *doc, const uint8_t *base, int depth,
              size_t *offset, bool *too_deep)
{
   bson_iter_t it;
   if (depth > MAX_BSON_DEPTH) {
      *too_deep = true;
      *offset = (size_t) (bson_get_data(doc) - base);
      return false;
   }
   if (!bson_iter_init(&it, doc)) {
      *offset = (size_t) (bson_get_data(doc) - base);
      return false;
   }
   while (bson_iter_next(&it)) {
      if (BSON_ITER_HOLDS_DOCUMENT(&it) || BSON_ITER_HOLDS_ARRAY(&it)) {
         uint32_t len;
         const uint8_t *data;
         bson_t sub;
         if (BSON_ITER_HOLDS_DOCUMENT(&it)) {
            bson_iter_document(&it, &len, &data);
         } else {
            bson_iter_array(&it, &len, &data);
         }
         if (!data || !bson_init_static(&sub, data, len)) {
            *offset = (size_t) (bson_get_data(doc) - base) + it.off;
            return false;
         }
         if (!check_nesting(&sub, base, depth + 1, offset, too_deep)) {
            return false;
         }
      }
   }
   if (it.err_off != 0) {
      *offset = (size_t) (bson_get_data(doc) - base) + it.err_off;
      return false;
   }
   return true;
}

bool
aspen__cursor_bson(aspen__cursor_t *c, size_t max_len, bson_t *doc,
                   const char *what, aspen_error_t *err)
{
   size_t left = (size_t) (c->end - c->p);
   uint32_t dlen = 0;
   aspen__cursor_t peek = *c;
   if (!aspen__cursor_u32(&peek, &dlen) || dlen < 5 || dlen > left) {
      aspen_error_set(err, ASPEN_ERR_InvalidBSON,
                      "%s: BSON document length %u does not fit the %zu bytes "
                      "left in the message",
                      what, dlen, left);
      return false;
   }
   if (dlen > max_len) {
      aspen_error_set(err, ASPEN_ERR_BSONObjectTooLarge,
                      "%s: BSON document of %u bytes exceeds the limit of %zu",
                      what, dlen, max_len);
      return false;
   }
   size_t offset = 0;
   bool too_deep = false;
   if (!bson_init_static(doc, c->p, dlen) ||
       !check_nesting(doc, c->p, 0, &offset, &too_deep) ||
       !bson_validate(doc, BSON_VALIDATE_NONE, &offset)) {
      if (too_deep) {
         aspen_error_set(err, ASPEN_ERR_InvalidBSON,
                         "%s: BSON nesting deeper than %d levels (at byte "
                         "%zu)",
                         what, MAX_BSON_DEPTH, offset);
      } else {
         aspen_error_set(err, ASPEN_ERR_InvalidBSON,
                         "%s: invalid BSON document (error at byte %zu)", what,
                         offset);
      }
      return false;
   }
   c->p += dlen;
   return true;
}

void
aspen__write_i32(uint8_t *p, int32_t v)
{
   uint32_t u = (uint32_t) v;
   p[0] = (uint8_t) u;
   p[1] = (uint8_t) (u >> 8);
   p[2] = (uint8_t) (u >> 16);
   p[3] = (uint8_t) (u >> 24);
}
