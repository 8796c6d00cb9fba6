/*
 * fuzz_frame.c - the wire decoder on arbitrary bytes, as a client sends them:
 * aspen_frame_parse cuts frames off the front (as session.c's process_input
 * does), and each complete frame goes through aspen_op_msg_parse +
 * aspen_op_msg_command and aspen_op_query_parse whatever its opcode says.
 * What a parser accepts is walked (every key and value, recursively) and
 * encoded back as a reply, which must parse again: a view that points outside
 * the frame, or a document the parser let through unvalidated, shows up as an
 * ASan report or a failed round trip.
 */
#include "fuzz_common.h"
#include "wire.h"

#include <stdio.h>
#include <stdlib.h>

/* Visits every element, descending into documents and arrays. */
static size_t
walk(const bson_t *doc, int depth)
{
   bson_iter_t it;
   size_t n = 0;
   if (depth > 200 || !bson_iter_init(&it, doc)) {
      return 0;
   }
   while (bson_iter_next(&it)) {
      n += strlen(bson_iter_key(&it));
      bson_t sub;
      if (BSON_ITER_HOLDS_DOCUMENT(&it) || BSON_ITER_HOLDS_ARRAY(&it)) {
         /* The decoder promised every embedded document is well formed. */
         ASPEN_ASSERT(aspen_bson_view(&it, &sub));
         n += walk(&sub, depth + 1);
      } else if (BSON_ITER_HOLDS_UTF8(&it)) {
         uint32_t len;
         const char *s = bson_iter_utf8(&it, &len);
         n += len ? (unsigned char) s[len - 1] : 0;
      }
   }
   return n;
}

/* Encodes `doc` as an OP_MSG reply and checks that it decodes to the same
 * bytes. */
static void
round_trip(const bson_t *doc, int32_t response_to)
{
   aspen_buf_t out;
   aspen_frame_t f;
   aspen_op_msg_t msg;
   aspen_error_t err;
   aspen_buf_init(&out);
   aspen_reply_op_msg(&out, 1, response_to, doc);
   ASPEN_ASSERT(aspen_frame_parse(aspen_buf_data(&out), aspen_buf_len(&out),
                                  SIZE_MAX, &f, &err) == ASPEN_PARSE_OK);
   ASPEN_ASSERT((size_t) f.message_length == aspen_buf_len(&out));
   if (!aspen_op_msg_parse(&f, &msg, &err)) {
      fprintf(stderr, "reply does not parse: %s\n", err.message);
      ASPEN_ASSERT(false);
   }
   ASPEN_ASSERT(msg.body.len == doc->len &&
                memcmp(bson_get_data(&msg.body), bson_get_data(doc),
                       doc->len) == 0);
   aspen_buf_cleanup(&out);
}

static void
decode_frame(const aspen_frame_t *f)
{
   aspen_error_t err;
   aspen_op_msg_t msg;
   if (aspen_op_msg_parse(f, &msg, &err)) {
      bson_t cmd;
      bool owned = false;
      (void) walk(&msg.body, 0);
      for (size_t i = 0; i < msg.n_seqs; i++) {
         ASPEN_ASSERT(msg.seqs[i].docs >= f->body &&
                      msg.seqs[i].docs + msg.seqs[i].len <=
                         f->body + f->body_len);
         (void) strlen(msg.seqs[i].identifier);
      }
      if (aspen_op_msg_command(&msg, &cmd, &owned, &err)) {
         (void) walk(&cmd, 0);
         round_trip(&cmd, f->request_id);
      }
      if (owned) {
         bson_destroy(&cmd);
      }
   } else {
      ASPEN_ASSERT(err.code != 0);
   }
   aspen_op_query_t q;
   if (aspen_op_query_parse(f, &q, &err)) {
      (void) strlen(q.collection);
      (void) walk(&q.query, 0);
      if (q.has_fields) {
         (void) walk(&q.fields, 0);
      }
      aspen_buf_t out;
      aspen_buf_init(&out);
      aspen_reply_op_reply(&out, 1, f->request_id, 0, &q.query);
      aspen_buf_cleanup(&out);
   }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
   size_t off = 0;
   /* A small maximum as well as the real one: net.maxMessageSizeBytes can be
    * configured down to 1024. */
   size_t max = size > 0 && (data[0] & 1) ? 1024 : ASPEN_WIRE_MAX_MESSAGE_LEN;
   while (off < size) {
      aspen_frame_t f;
      aspen_error_t err;
      aspen_parse_result_t r =
         aspen_frame_parse(data + off, size - off, max, &f, &err);
      if (r == ASPEN_PARSE_NEED_MORE) {
         ASPEN_ASSERT(size - off < ASPEN_WIRE_HEADER_LEN ||
                      (size_t) f.message_length > size - off);
         break;
      }
      if (r == ASPEN_PARSE_ERROR) {
         ASPEN_ASSERT(err.code != 0);
         break;
      }
      ASPEN_ASSERT(f.message_length >= ASPEN_WIRE_HEADER_LEN &&
                   (size_t) f.message_length <= size - off &&
                   (size_t) f.message_length <= max);
      ASPEN_ASSERT(f.body == data + off + ASPEN_WIRE_HEADER_LEN &&
                   f.body_len == (size_t) f.message_length -
                                    ASPEN_WIRE_HEADER_LEN);
      decode_frame(&f);
      off += (size_t) f.message_length;
   }
   return 0;
}
