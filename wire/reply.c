/*
 * reply.c - encoding of the two reply shapes aspen sends: OP_MSG with flag
 * bits 0 and one kind-0 section (every reply after the handshake), and
 * OP_REPLY with one document (the answer to a legacy OP_QUERY hello); and
 * the command replies' bodies every command handler builds, the proxy's
 * and the engine's: {ok: 1} and {ok: 0, errmsg, code, codeName}.
 */
#include "wire_int.h"

#include <stdarg.h>
#include <stdio.h>

void
aspen_reply_error(bson_t *reply, int32_t code, const char *fmt, ...)
{
   aspen_error_t err;
   va_list ap;
   err.code = code;
   va_start(ap, fmt);
   vsnprintf(err.message, sizeof err.message, fmt, ap);
   va_end(ap);
   aspen_error_append_reply(reply, &err);
}

void
aspen_reply_ok(bson_t *reply)
{
   BSON_APPEND_DOUBLE(reply, "ok", 1.0);
}

void
aspen_reply_op_msg(aspen_buf_t *out, int32_t request_id, int32_t response_to,
                   const bson_t *doc)
{
   size_t total = ASPEN_WIRE_HEADER_LEN + 4 + 1 + doc->len;
   uint8_t *p = aspen_buf_reserve(out, total);
   aspen__write_i32(p, (int32_t) total);
   aspen__write_i32(p + 4, request_id);
   aspen__write_i32(p + 8, response_to);
   aspen__write_i32(p + 12, ASPEN_OP_MSG);
   aspen__write_i32(p + 16, 0); /* flagBits */
   p[20] = 0;                   /* kind-0 section */
   memcpy(p + 21, bson_get_data(doc), doc->len);
   aspen_buf_commit(out, total);
}

void
aspen_reply_op_reply(aspen_buf_t *out, int32_t request_id,
                     int32_t response_to, int32_t response_flags,
                     const bson_t *doc)
{
   size_t total = ASPEN_WIRE_HEADER_LEN + 4 + 8 + 4 + 4 + doc->len;
   uint8_t *p = aspen_buf_reserve(out, total);
   aspen__write_i32(p, (int32_t) total);
   aspen__write_i32(p + 4, request_id);
   aspen__write_i32(p + 8, response_to);
   aspen__write_i32(p + 12, ASPEN_OP_REPLY);
   aspen__write_i32(p + 16, response_flags);
   memset(p + 20, 0, 8);        /* cursorID */
   aspen__write_i32(p + 28, 0); /* startingFrom */
   aspen__write_i32(p + 32, 1); /* numberReturned */
   memcpy(p + 36, bson_get_data(doc), doc->len);
   aspen_buf_commit(out, total);
}
