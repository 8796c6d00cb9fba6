/*
 * upstream_msg.c - what the relay sends and what its own errors say, as
 * pure functions (see upstream.h): the client's OP_MSG as aspen forwards
 * it (aspen_upstream_encode: a few top-level fields out, the lsid swapped
 * for the backend's, the deployment's $clusterTime in), the backend lsid
 * of a user's session, and the retryable-writes and transactions specs'
 * view of a command (aspen_upstream_txn_kind) and of aspen's own errors
 * (aspen_upstream_error_labels).
 */
#include "upstream_int.h"
#include "bytes.h"

#include <string.h>

void
aspen_upstream_encode(aspen_buf_t *out, int32_t request_id,
                      const aspen_op_msg_t *msg, const char *const *strip,
                      const bson_t *lsid, const bson_t *cluster_time)
{
   size_t start = aspen_buf_len(out);
   uint8_t hdr[ASPEN_WIRE_HEADER_LEN + 5] = {0};
   aspen_buf_append(out, hdr, sizeof hdr); /* header, flags 0, kind 0 */
   const uint8_t *raw = bson_get_data(&msg->body);
   size_t body_start = aspen_buf_len(out);
   aspen_buf_append(out, raw, 4); /* the length, patched below */
   bson_iter_t it;
   if (bson_iter_init(&it, &msg->body)) {
      size_t run_start = 4, run_end = 4; /* a run of kept elements */
      while (bson_iter_next(&it)) {
         const char *k = bson_iter_key(&it);
         bool drop = false, swap = false;
         if (k[0] == '$' && strip) {
            for (const char *const *s = strip; *s; s++) {
               if (strcmp(k, *s) == 0) {
                  drop = true;
                  break;
               }
            }
         } else if (lsid && strcmp(k, "lsid") == 0) {
            swap = true;
         }
         if (drop || swap) {
            aspen_buf_append(out, raw + run_start, run_end - run_start);
            run_start = it.next_off;
         }
         if (swap) {
            static const uint8_t head[] = {BSON_TYPE_DOCUMENT, 'l', 's', 'i',
                                           'd', 0};
            aspen_buf_append(out, head, sizeof head);
            aspen_buf_append(out, bson_get_data(lsid), lsid->len);
         }
         run_end = it.next_off;
      }
      aspen_buf_append(out, raw + run_start, run_end - run_start);
   }
   if (cluster_time) {
      static const uint8_t head[] = {BSON_TYPE_DOCUMENT, '$', 'c', 'l', 'u',
                                     's', 't', 'e', 'r', 'T', 'i', 'm', 'e',
                                     0};
      aspen_buf_append(out, head, sizeof head);
      aspen_buf_append(out, bson_get_data(cluster_time), cluster_time->len);
   }
   uint8_t zero = 0;
   aspen_buf_append(out, &zero, 1);
   uint8_t *base = (uint8_t *) aspen_buf_data(out);
   aspen_bytes_put_le32(base + body_start,
            (uint32_t) (aspen_buf_len(out) - body_start));
   for (size_t i = 0; i < msg->n_seqs; i++) {
      const aspen_doc_seq_t *seq = &msg->seqs[i];
      size_t idlen = strlen(seq->identifier) + 1;
      uint8_t head[5];
      head[0] = 1;
      aspen_bytes_put_le32(head + 1, (uint32_t) (4 + idlen + seq->len));
      aspen_buf_append(out, head, 5);
      aspen_buf_append(out, seq->identifier, idlen);
      aspen_buf_append(out, seq->docs, seq->len);
   }
   base = (uint8_t *) aspen_buf_data(out) + start;
   aspen_bytes_put_le32(base, (uint32_t) (aspen_buf_len(out) - start));
   aspen_bytes_put_le32(base + 4, (uint32_t) request_id);
   aspen_bytes_put_le32(base + 8, 0);
   aspen_bytes_put_le32(base + 12, ASPEN_OP_MSG);
}

unsigned
aspen_upstream_txn_kind(const bson_t *cmd, const char *name)
{
   bson_iter_t it;
   bool txn_number = false, in_txn = false;
   if (bson_iter_init(&it, cmd)) {
      while (bson_iter_next(&it)) {
         const char *k = bson_iter_key(&it);
         if (strcmp(k, "txnNumber") == 0) {
            txn_number = BSON_ITER_HOLDS_NUMBER(&it);
         } else if (strcmp(k, "autocommit") == 0) {
            in_txn = BSON_ITER_HOLDS_BOOL(&it) && !bson_iter_bool(&it);
         }
      }
   }
   if (!txn_number) {
      return ASPEN_TXN_NONE;
   }
   if (in_txn) {
      if (strcmp(name, "commitTransaction") == 0) {
         return ASPEN_TXN_COMMIT;
      }
      if (strcmp(name, "abortTransaction") == 0) {
         return ASPEN_TXN_ABORT;
      }
      return ASPEN_TXN_STATEMENT;
   }
   static const char *const writes[] = {"insert", "update", "delete",
                                        "findAndModify", "findandmodify",
                                        "bulkWrite", NULL};
   for (const char *const *w = writes; *w; w++) {
      if (strcmp(name, *w) == 0) {
         return ASPEN_TXN_RETRYABLE_WRITE;
      }
   }
   return ASPEN_TXN_NONE;
}

bool
aspen_upstream_error_labels(const bson_t *reply, unsigned kind, bson_t *out)
{
   bson_iter_t it;
   bool ok = true;
   int32_t code = 0;
   if (kind == ASPEN_TXN_NONE || !bson_iter_init(&it, reply)) {
      return false;
   }
   while (bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      if (strcmp(k, "errorLabels") == 0) {
         return false; /* the server's labels stand */
      } else if (strcmp(k, "ok") == 0) {
         ok = bson_iter_as_double(&it) == 1.0;
      } else if (strcmp(k, "code") == 0 && BSON_ITER_HOLDS_NUMBER(&it)) {
         code = (int32_t) bson_iter_as_int64(&it);
      }
   }
   if (ok || (code != ASPEN_ERR_HostUnreachable &&
              code != ASPEN_ERR_NetworkTimeout)) {
      return false;
   }
   bson_t arr;
   bson_copy_to(reply, out);
   BSON_APPEND_ARRAY_BEGIN(out, "errorLabels", &arr);
   switch (kind) {
   case ASPEN_TXN_STATEMENT:
      BSON_APPEND_UTF8(&arr, "0", "TransientTransactionError");
      break;
   case ASPEN_TXN_COMMIT:
      BSON_APPEND_UTF8(&arr, "0", "RetryableWriteError");
      BSON_APPEND_UTF8(&arr, "1", "UnknownTransactionCommitResult");
      break;
   default: /* a retryable write, abortTransaction */
      BSON_APPEND_UTF8(&arr, "0", "RetryableWriteError");
      break;
   }
   bson_append_array_end(out, &arr);
   return true;
}

void
aspen_upstream_backend_lsid(const bson_t *key, bson_t *out)
{
   if (!bson_has_field(key, "uid")) {
      bson_copy_to(key, out);
      return;
   }
   uint8_t digest[ASPEN_SCRAM_MAX_HASH];
   aspen_scram_hash(ASPEN_SCRAM_SHA_256, bson_get_data(key), key->len, digest);
   digest[6] = (uint8_t) ((digest[6] & 0x0f) | 0x40); /* version 4 */
   digest[8] = (uint8_t) ((digest[8] & 0x3f) | 0x80); /* RFC 4122 variant */
   bson_init(out);
   bson_append_binary(out, "id", 2, BSON_SUBTYPE_UUID, digest, 16);
}
