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
   if (!bson_init_static(doc, c->p, dlen) ||
       !bson_validate(doc, BSON_VALIDATE_NONE, &offset)) {
      aspen_error_set(err, ASPEN_ERR_InvalidBSON,
                      "%s: invalid BSON document (error at byte %zu)", what,
                      offset);
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
