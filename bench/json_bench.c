/*
 * json_bench.c - the cost of a Kafka message's JSON on one thread: the
 * bench/kafka.sh event ({"_id", "k", "v", "tag", "ok"}, 1000 distinct, and
 * the same with a Date as the $emit side sees it) decoded as the Kafka
 * source decodes it (aspen__kafka_json_decode into a stack writer) and
 * encoded as $emit encodes it (aspen__kafka_json_encode_into a kept
 * buffer, relaxed), next to libbson's own reader and
 * writer (bson_init_from_json, bson_as_relaxed_extended_json) on the same
 * text. Prints ns per message (CPU time) for each. A benchmark, not a
 * test. The measured loops are bench_run (aspen) and bench_run_libbson, for
 * callgrind's --toggle-collect (bench/json.sh --callgrind).
 *
 *   json_bench [N]      (default 1000000)
 */
#include "connectors/kafka_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

enum { DISTINCT = 1000 };

static char *texts[DISTINCT];
static size_t lens[DISTINCT];
static uint64_t sink;

static double
cpu_s(void)
{
   struct timespec ts;
   clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
   return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

/* As the Kafka $source and $emit do it: decode into a stack writer
 * (aspen__kafka_json_decode, source_kafka.c's handle), copy it with a Date
 * appended (the runtime's `_ts`, rt.c), encode into a text buffer kept
 * from message to message (aspen__kafka_json_encode_into, as
 * sink_emit_kafka.c). */
__attribute__((noinline)) static void
bench_run(long n)
{
   aspen_kafka_json_opts_t opts = {0};
   aspen_ejson_text_t text = {0};
   for (long i = 0; i < n; i++) {
      bson_t doc, stamped;
      aspen_error_t err;
      uint8_t doc_buf[1024], ts_buf[1024];
      aspen_bsonw_t dw, tw;
      aspen_bsonw_init_static(&dw, doc_buf, sizeof doc_buf);
      aspen_bsonw_init_static(&tw, ts_buf, sizeof ts_buf);
      if (!aspen__kafka_json_decode(texts[i % DISTINCT], lens[i % DISTINCT],
                                    &dw, &doc, &err)) {
         abort();
      }
      bson_value_t ts = {.value_type = BSON_TYPE_DATE_TIME,
                         .value.v_datetime = 1795000000000 + i};
      aspen_bsonw_reset(&tw);
      aspen_bsonw_copy_without(&tw, &doc, "_ts", 3);
      aspen_bsonw_value(&tw, "_ts", 3, &ts);
      (void) aspen_bsonw_finish(&tw, &stamped);
      aspen__kafka_json_encode_into(&stamped, &opts, &text);
      sink += text.len;
      bson_destroy(&stamped);
      bson_destroy(&doc);
      aspen_bsonw_cleanup(&tw);
      aspen_bsonw_cleanup(&dw);
   }
   aspen_ejson_text_cleanup(&text);
}

__attribute__((noinline)) static void
bench_run_libbson(long n)
{
   for (long i = 0; i < n; i++) {
      bson_t doc;
      bson_error_t berr;
      if (!bson_init_from_json(&doc, texts[i % DISTINCT],
                               (ssize_t) lens[i % DISTINCT], &berr)) {
         abort();
      }
      BSON_APPEND_DATE_TIME(&doc, "_ts", 1795000000000 + i);
      size_t len;
      char *out = bson_as_relaxed_extended_json(&doc, &len);
      sink += len;
      bson_free(out);
      bson_destroy(&doc);
   }
}

int
main(int argc, char **argv)
{
   long n = argc > 1 ? atol(argv[1]) : 1000000;
   for (int i = 0; i < DISTINCT; i++) {
      char buf[160];
      int len = snprintf(buf, sizeof buf,
                         "{\"_id\": %d, \"k\": %d, \"v\": %.1f, \"tag\": "
                         "\"sensor-%d\", \"ok\": true}",
                         i, i % 100, i * 0.5, i % 1000);
      texts[i] = malloc((size_t) len);
      memcpy(texts[i], buf, (size_t) len);
      lens[i] = (size_t) len;
   }
   double c0 = cpu_s();
   bench_run(n);
   double c1 = cpu_s();
   bench_run_libbson(n);
   double c2 = cpu_s();
   printf("Kafka message JSON: decode + encode of a 5-field event, 1 thread\n");
   printf("  aspen (fast path):   %.0f ns CPU per message\n",
          (c1 - c0) * 1e9 / (double) n);
   printf("  libbson alone:       %.0f ns CPU per message\n",
          (c2 - c1) * 1e9 / (double) n);
   for (int i = 0; i < DISTINCT; i++) {
      free(texts[i]);
   }
   return sink == 0;
}
