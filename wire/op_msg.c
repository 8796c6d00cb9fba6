/*
 * op_msg.c - OP_MSG (opcode 2013) decoding. The message is
 *   flagBits:uint32, sections..., [checksum:uint32 when flag bit 0 is set]
 * where a kind-0 section is one BSON document (the command body) and a kind-1
 * section is int32 size, a C-string identifier and BSON documents filling the
 * rest of the size. Decoded documents are views into the frame. Drivers send
 * large inserts as kind-1 sequences; aspen_op_msg_command folds them back
 * into the command as arrays, which is what both the router and the backend
 * forwarding need.
 */
#include "wire_int.h"

/* Bits 0-15 are "required": a receiver must fail on one it does not know. */
#define REQUIRED_MASK 0xFFFFu
#define KNOWN_REQUIRED (ASPEN_OP_MSG_CHECKSUM_PRESENT | ASPEN_OP_MSG_MORE_TO_COME)

bool
aspen_op_msg_parse(const aspen_frame_t *frame, aspen_op_msg_t *msg,
                   aspen_error_t *err)
{
   memset(msg, 0, sizeof *msg);
   aspen__cursor_t c = {frame->body, frame->body + frame->body_len};
   bool have_body = false;

   if (!aspen__cursor_u32(&c, &msg->flags)) {
      aspen_error_set(err, ASPEN_ERR_ProtocolError,
                      "OP_MSG too short for its flag bits");
      goto fail;
   }
   if ((msg->flags & REQUIRED_MASK) & ~KNOWN_REQUIRED) {
      aspen_error_set(err, ASPEN_ERR_ProtocolError,
                      "OP_MSG has unknown required flag bits 0x%x",
                      (unsigned) ((msg->flags & REQUIRED_MASK) & ~KNOWN_REQUIRED));
      goto fail;
   }
   if (msg->flags & ASPEN_OP_MSG_CHECKSUM_PRESENT) {
      if (frame->body_len < 8) {
         aspen_error_set(err, ASPEN_ERR_ProtocolError,
                         "OP_MSG too short for its checksum");
         goto fail;
      }
      /* The checksum covers the header and body except its own 4 bytes. */
      const uint8_t *start = frame->body - ASPEN_WIRE_HEADER_LEN;
      size_t covered = (size_t) frame->message_length - 4;
      aspen__cursor_t ck = {c.end - 4, c.end};
      (void) aspen__cursor_u32(&ck, &msg->checksum);
      msg->has_checksum = true;
      uint32_t actual = aspen_crc32c(0, start, covered);
      if (actual != msg->checksum) {
         aspen_error_set(err, ASPEN_ERR_ProtocolError,
                         "OP_MSG checksum mismatch (sent 0x%08x, computed "
                         "0x%08x)",
                         (unsigned) msg->checksum, (unsigned) actual);
         goto fail;
      }
      c.end -= 4;
   }

   while (c.p < c.end) {
      uint8_t kind;
      (void) aspen__cursor_u8(&c, &kind);
      if (kind == 0) {
         if (have_body) {
            aspen_error_set(err, ASPEN_ERR_ProtocolError,
                            "OP_MSG has more than one kind-0 section");
            goto fail;
         }
         if (!aspen__cursor_bson(&c, ASPEN_WIRE_MAX_COMMAND_LEN, &msg->body,
                                 "OP_MSG body", err)) {
            goto fail;
         }
         have_body = true;
      } else if (kind == 1) {
         int32_t size;
         const uint8_t *sec_start = c.p;
         if (!aspen__cursor_i32(&c, &size) || size < 5 ||
             (size_t) size > (size_t) (c.end - sec_start)) {
            aspen_error_set(err, ASPEN_ERR_ProtocolError,
                            "OP_MSG document sequence has an invalid size");
            goto fail;
         }
         if (msg->n_seqs == ASPEN_OP_MSG_MAX_SEQUENCES) {
            aspen_error_set(err, ASPEN_ERR_ProtocolError,
                            "OP_MSG has more than %d document sequences",
                            ASPEN_OP_MSG_MAX_SEQUENCES);
            goto fail;
         }
         aspen__cursor_t sc = {c.p, sec_start + size};
         aspen_doc_seq_t *seq = &msg->seqs[msg->n_seqs];
         if (!aspen__cursor_cstring(&sc, &seq->identifier) ||
             seq->identifier[0] == '\0') {
            aspen_error_set(err, ASPEN_ERR_ProtocolError,
                            "OP_MSG document sequence has no identifier");
            goto fail;
         }
         /* The identifier becomes a key of the command document, which
          * bson_validate would then refuse (found by tests/fuzz/fuzz_frame). */
         if (!bson_utf8_validate(seq->identifier, strlen(seq->identifier),
                                 false)) {
            aspen_error_set(err, ASPEN_ERR_ProtocolError,
                            "OP_MSG document sequence identifier is not valid "
                            "UTF-8");
            goto fail;
         }
         seq->docs = sc.p;
         seq->len = (size_t) (sc.end - sc.p);
         while (sc.p < sc.end) {
            bson_t doc;
            if (!aspen__cursor_bson(&sc, ASPEN_WIRE_MAX_BSON_LEN, &doc,
                                    "OP_MSG document sequence", err)) {
               goto fail;
            }
            seq->count++;
         }
         msg->n_seqs++;
         c.p = sec_start + size;
      } else {
         aspen_error_set(err, ASPEN_ERR_ProtocolError,
                         "OP_MSG has an unknown section kind %u",
                         (unsigned) kind);
         goto fail;
      }
   }
   if (!have_body) {
      aspen_error_set(err, ASPEN_ERR_ProtocolError,
                      "OP_MSG has no kind-0 body section");
      goto fail;
   }
   return true;

fail:
   memset(msg, 0, sizeof *msg);
   return false;
}

bool
aspen_op_msg_command(const aspen_op_msg_t *msg, bson_t *out, bool *owned,
                     aspen_error_t *err)
{
   if (msg->n_seqs == 0) {
      *owned = false;
      /* A static copy of the body view: same bytes, no allocation. */
      if (!bson_init_static(out, bson_get_data(&msg->body), msg->body.len)) {
         bson_init(out);
         *owned = true;
         aspen_error_set(err, ASPEN_ERR_InvalidBSON, "invalid OP_MSG body");
         return false;
      }
      return true;
   }
   *owned = true;
   bson_init(out);
   for (size_t i = 0; i < msg->n_seqs; i++) {
      /* Not bson_has_field: it treats a dotted name as a path, so it would
       * miss a literal "a.b" key and reject "a.b" when the body has a.b. */
      bson_iter_t it;
      if (bson_iter_init_find(&it, &msg->body, msg->seqs[i].identifier)) {
         aspen_error_set(err, ASPEN_ERR_ProtocolError,
                         "OP_MSG document sequence '%s' duplicates a field of "
                         "the command body",
                         msg->seqs[i].identifier);
         return false;
      }
      for (size_t j = 0; j < i; j++) {
         if (strcmp(msg->seqs[i].identifier, msg->seqs[j].identifier) == 0) {
            aspen_error_set(err, ASPEN_ERR_ProtocolError,
                            "OP_MSG has two document sequences named '%s'",
                            msg->seqs[i].identifier);
            return false;
         }
      }
   }
   bson_concat(out, &msg->body);
   for (size_t i = 0; i < msg->n_seqs; i++) {
      const aspen_doc_seq_t *seq = &msg->seqs[i];
      bson_t arr;
      uint32_t idx = 0;
      bson_append_array_begin(out, seq->identifier, -1, &arr);
      aspen__cursor_t sc = {seq->docs, seq->docs + seq->len};
      while (sc.p < sc.end) {
         bson_t doc;
         uint32_t dlen = 0;
         aspen__cursor_t peek = sc;
         (void) aspen__cursor_u32(&peek, &dlen);
         /* Validated by aspen_op_msg_parse. */
         (void) bson_init_static(&doc, sc.p, dlen);
         char keybuf[16];
         const char *key;
         size_t klen = bson_uint32_to_string(idx++, &key, keybuf, sizeof keybuf);
         bson_append_document(&arr, key, (int) klen, &doc);
         sc.p += dlen;
      }
      bson_append_array_end(out, &arr);
   }
   if (out->len > ASPEN_WIRE_MAX_MESSAGE_LEN) {
      /* Leave `out` empty so a caller that skips bson_destroy on failure
       * does not leak the oversized copy. */
      bson_destroy(out);
      bson_init(out);
      aspen_error_set(err, ASPEN_ERR_BSONObjectTooLarge,
                      "command with document sequences is too large");
      return false;
   }
   return true;
}
