/*
 * window_bench.c - throughput of a windowed aggregation: a 10 s tumbling
 * window with $group over 10 000 keys ($avg, $max, $sum), fed N in-memory
 * events spread over event time (100 000 events per window), on one thread.
 * Every key occurs in every window: the prebuilt events (cycled) are at
 * least as many as the keys and carry each key, and each window holds
 * 100 000 consecutive events; the results per closed window (one per
 * distinct _id) show it. Prints events/s, wall and CPU ns/event, results
 * emitted, distinct keys per closed window and peak RSS. A benchmark, not a test. The
 * measured loop is bench_run, for callgrind's --toggle-collect
 * (bench/window.sh --callgrind).
 *
 *   window_bench [N] [keys]      (defaults 1000000, 10000)
 */
#include "builtins.h"
#include "connectors/connections.h"
#include "runtime/pipeline.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

static uint64_t outputs, dlqs;
/* Results per closed window ($group gives one per distinct _id, so this is
 * how many distinct keys each window saw): a window's results arrive
 * together, stamped with its end - 1. */
static int64_t cur_window_ts = INT64_MIN;
static uint64_t cur_window_n, windows_closed, keys_min = UINT64_MAX, keys_max;

static void
window_done(void)
{
   if (cur_window_n == 0) {
      return;
   }
   windows_closed++;
   keys_min = cur_window_n < keys_min ? cur_window_n : keys_min;
   keys_max = cur_window_n > keys_max ? cur_window_n : keys_max;
   cur_window_n = 0;
}

static void
on_output(void *arg, const aspen_sdoc_t *out)
{
   (void) arg;
   if (out->ts_ms != cur_window_ts) {
      window_done();
      cur_window_ts = out->ts_ms;
   }
   cur_window_n++;
   outputs++;
}

static void
on_dlq(void *arg, const aspen_sdoc_t *in, const char *op, const char *reason)
{
   (void) arg;
   (void) in;
   (void) op;
   (void) reason;
   dlqs++;
}

static double
now_s(clockid_t clk)
{
   struct timespec ts;
   clock_gettime(clk, &ts);
   return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

/* The measured loop (its own symbol, for callgrind's --toggle-collect). */
__attribute__((noinline)) static void
bench_run(aspen_pipeline_t *pl, bson_t *docs, long distinct,
          const bson_t *meta, long n)
{
   const int64_t t0_ms = 1795000000000;
   const int64_t per_window = 100000;
   for (long i = 0; i < n; i++) {
      /* 100 000 events per 10 s window: 0.1 ms of event time per event. */
      int64_t ts = t0_ms + (int64_t) i * 10000 / per_window;
      aspen_sdoc_t d = {.doc = &docs[i % distinct], .meta = meta,
                        .ts_ms = ts};
      pl->now_ms = ts;
      aspen_pipeline_push(pl, &d);
   }
}

int
main(int argc, char **argv)
{
   long n = argc > 1 ? atol(argv[1]) : 1000000;
   long keys = argc > 2 ? atol(argv[2]) : 10000;
   const char *json =
      "[{\"$source\": {\"documents\": []}},"
      " {\"$tumblingWindow\": {\"interval\": {\"size\": 10, \"unit\": "
      "\"second\"}, \"allowedLateness\": 0, \"pipeline\": ["
      "   {\"$group\": {\"_id\": \"$k\", \"avg\": {\"$avg\": \"$v\"},"
      "     \"max\": {\"$max\": \"$v\"}, \"sum\": {\"$sum\": \"$v\"}}}]}}]";
   bson_error_t berr;
   bson_t *def = bson_new_from_json((const uint8_t *) json, -1, &berr);
   aspen_conns_t conns;
   aspen_error_t err;
   aspen_conns_load(&conns, aspen_builtins_catalog(), NULL, NULL, NULL,
                    &err);
   aspen_pipeline_t *pl = aspen_pipeline_parse(def, aspen_builtins_catalog(),
                                               &conns, true, false, &err);
   if (!pl) {
      fprintf(stderr, "pipeline: %s\n", err.message);
      return 1;
   }
   pl->output = on_output;
   pl->dlq = on_dlq;
   bson_t meta = BSON_INITIALIZER, src;
   BSON_APPEND_DOCUMENT_BEGIN(&meta, "source", &src);
   BSON_APPEND_UTF8(&src, "type", "generated");
   bson_append_document_end(&meta, &src);

   /* Pre-built events (cycled), so the measurement is the engine's: at
    * least 4096 and at least one per key, event i with key i % keys, in an
    * order that scatters the keys (7919 is prime). */
   if (keys < 1) {
      keys = 1;
   }
   long distinct = keys > 4096 ? keys : 4096;
   while (distinct % 7919 == 0) {
      distinct++;
   }
   bson_t *docs = malloc((size_t) distinct * sizeof *docs);
   for (long i = 0; i < distinct; i++) {
      long j = (long) (((int64_t) i * 7919) % distinct);
      bson_init(&docs[j]);
      BSON_APPEND_INT32(&docs[j], "k", (int32_t) (i % keys));
      BSON_APPEND_DOUBLE(&docs[j], "v", (double) (i % 1000) / 10.0);
   }
   double t0 = now_s(CLOCK_MONOTONIC);
   double c0 = now_s(CLOCK_PROCESS_CPUTIME_ID);
   bench_run(pl, docs, distinct, &meta, n);
   double dt = now_s(CLOCK_MONOTONIC) - t0;
   double dc = now_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
   uint64_t state = atomic_load(&pl->state_size);
   struct rusage ru;
   getrusage(RUSAGE_SELF, &ru);
   printf("10 s tumbling window, $group over %ld keys ($avg, $max, $sum), 1 "
          "thread\n",
          keys);
   printf("  events:        %ld in %.3f s\n", n, dt);
   printf("  throughput:    %.0f events/s (wall), %.0f events/s per CPU "
          "second\n",
          (double) n / dt, (double) n / dc);
   printf("  per event:     %.0f ns wall, %.0f ns CPU\n",
          dt * 1e9 / (double) n, dc * 1e9 / (double) n);
   window_done();
   printf("  results:       %llu group documents from closed windows (dlq "
          "%llu)\n",
          (unsigned long long) outputs, (unsigned long long) dlqs);
   printf("  distinct keys: %llu-%llu per closed window (%llu closed; "
          "one result per distinct _id)\n",
          (unsigned long long) (windows_closed ? keys_min : 0),
          (unsigned long long) keys_max, (unsigned long long) windows_closed);
   printf("  open state:    %llu bytes\n", (unsigned long long) state);
   printf("  peak RSS:      %ld KiB\n", ru.ru_maxrss);
   for (long i = 0; i < distinct; i++) {
      bson_destroy(&docs[i]);
   }
   free(docs);
   bson_destroy(&meta);
   aspen_pipeline_destroy(pl);
   aspen_conns_cleanup(&conns);
   bson_destroy(def);
   return 0;
}
