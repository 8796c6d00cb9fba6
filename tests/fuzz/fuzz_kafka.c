/*
 * fuzz_kafka.c - what a Kafka topic can send aspen: message values through
 * aspen__kafka_json_decode (Extended JSON, optionally behind the 5-byte
 * Schema Registry prefix) and message keys through aspen__kafka_key_decode
 * in the format chosen by the first input byte. What decodes is encoded back
 * (aspen__kafka_json_encode, relaxed and canonical; aspen__kafka_key_encode)
 * and a re-encoded value must decode again.
 */
#include "fuzz_common.h"
#include "connectors/kafka_int.h"

#include <stdlib.h>

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
   if (size == 0 || size > FUZZ_MAX_INPUT) {
      return 0;
   }
   aspen_log_set_level(ASPEN_LOG_ERROR);
   aspen_kafka_key_format_t fmt = (aspen_kafka_key_format_t) (data[0] % 6);
   const uint8_t *rest = data + 1;
   size_t rest_len = size - 1;
   aspen_error_t err;

   /* The key. */
   bson_t key = BSON_INITIALIZER;
   if (aspen__kafka_key_decode(fmt, rest, rest_len, &key, "k", &err)) {
      bson_iter_t it;
      if (bson_iter_init_find(&it, &key, "k")) {
         uint8_t *enc = NULL;
         size_t enc_len = 0;
         if (aspen__kafka_key_encode(fmt, bson_iter_value(&it), &enc, &enc_len,
                                     &err)) {
            bson_free(enc);
         } else {
            ASPEN_ASSERT(enc == NULL);
         }
      }
   }
   bson_destroy(&key);

   /* The value (the whole input: the first byte may be the 0x00 of a
    * Schema Registry prefix). */
   bson_t doc;
   uint8_t buf[256];
   aspen_bsonw_t w, w2;
   aspen_bsonw_init_static(&w, buf, sizeof buf);
   aspen_bsonw_init(&w2);
   if (aspen__kafka_json_decode(data, size, &w, &doc, &err)) {
      for (int canonical = 0; canonical < 2; canonical++) {
         aspen_kafka_json_opts_t opts = {.canonical = canonical != 0,
                                         .iso_dates = canonical == 0};
         size_t len = 0;
         char *json = aspen__kafka_json_encode(&doc, &opts, &len);
         ASPEN_ASSERT(json != NULL);
         bson_t again;
         if (canonical) {
            /* Canonical Extended JSON is lossless: it must read back. */
            bool ok = aspen__kafka_json_decode(json, len, &w2, &again, &err);
            if (!ok) {
               fprintf(stderr, "canonical re-decode failed: %s\n%.*s\n",
                       err.message, (int) (len > 500 ? 500 : len), json);
            }
            ASPEN_ASSERT(ok);
         } else {
            (void) aspen__kafka_json_decode(json, len, &w2, &again, &err);
         }
         bson_destroy(&again);
         bson_free(json);
      }
   } else {
      ASPEN_ASSERT(err.code != 0);
   }
   bson_destroy(&doc);
   aspen_bsonw_cleanup(&w);
   aspen_bsonw_cleanup(&w2);
   return 0;
}
