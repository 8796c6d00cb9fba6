/*
 * op_query.c - legacy OP_QUERY (opcode 2004) decoding. Drivers send exactly
 * one of these per connection: the first hello/isMaster on admin.$cmd. The
 * layout is flags:int32, fullCollectionName:cstring, numberToSkip:int32,
 * numberToReturn:int32, query:document, [returnFieldsSelector:document].
 */
#include "wire_int.h"

bool
aspen_op_query_parse(const aspen_frame_t *frame, aspen_op_query_t *q,
                     aspen_error_t *err)
{
   memset(q, 0, sizeof *q);
   aspen__cursor_t c = {frame->body, frame->body + frame->body_len};
   if (!aspen__cursor_i32(&c, &q->flags) ||
       !aspen__cursor_cstring(&c, &q->collection) ||
       !aspen__cursor_i32(&c, &q->number_to_skip) ||
       !aspen__cursor_i32(&c, &q->number_to_return)) {
      aspen_error_set(err, ASPEN_ERR_ProtocolError, "truncated OP_QUERY");
      goto fail;
   }
   if (!aspen__cursor_bson(&c, ASPEN_WIRE_MAX_COMMAND_LEN, &q->query,
                           "OP_QUERY query", err)) {
      goto fail;
   }
   if (c.p < c.end) {
      if (!aspen__cursor_bson(&c, ASPEN_WIRE_MAX_BSON_LEN, &q->fields,
                              "OP_QUERY returnFieldsSelector", err)) {
         goto fail;
      }
      q->has_fields = true;
   }
   if (c.p != c.end) {
      aspen_error_set(err, ASPEN_ERR_ProtocolError,
                      "OP_QUERY has %zu trailing bytes",
                      (size_t) (c.end - c.p));
      goto fail;
   }
   return true;
fail:
   memset(q, 0, sizeof *q);
   return false;
}
