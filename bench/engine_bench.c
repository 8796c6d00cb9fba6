/*
 * engine_bench.c - throughput of the stateless engine path: a pipeline of
 * $match + $project + $addFields over N in-memory documents, on one thread
 * (one core). Prints events/s, wall and CPU ns/event and peak RSS. A
 * benchmark, not a test: it never fails on a timing. The measured loop is
 * bench_run, so `valgrind --tool=callgrind --toggle-collect=bench_run`
 * counts its instructions alone (bench/engine.sh --callgrind).
 *
 *   engine_bench [N]      (default 1000000)
 */
#include "builtins.h"
#include "connectors/connections.h"
#include "runtime/pipeline.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static uint64_t outputs, dlqs;

static void
on_output(void *arg, const aspen_sdoc_t *out)
{
   (void) arg;
   (void) out;
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

enum { DISTINCT = 1000 };

/* The measured loop (its own symbol, for callgrind's --toggle-collect). */
__attribute__((noinline)) static void
bench_run(aspen_pipeline_t *pl, bson_t *docs, const bson_t *meta, long n)
{
   for (long i = 0; i < n; i++) {
      aspen_sdoc_t d = {.doc = &docs[i % DISTINCT], .meta = meta};
      pl->now_ms = 1795000000000;
      aspen_pipeline_push(pl, &d);
   }
}

int
main(int argc, char **argv)
{
   long n = argc > 1 ? atol(argv[1]) : 1000000;
   const char *json =
      "[{\"$source\": {\"documents\": []}},"
      " {\"$match\": {\"obs.watts\": {\"$gte\": 50}, \"event_type\": 0}},"
      " {\"$project\": {\"device_id\": 1, \"group_id\": 1, \"obs\": 1,"
      "   \"ts\": \"$timestamp\"}},"
      " {\"$addFields\": {\"kw\": {\"$divide\": [\"$obs.watts\", 1000]},"
      "   \"hot\": {\"$gt\": [\"$obs.temp\", 20]},"
      "   \"label\": {\"$concat\": [\"$device_id\", \"-\", {\"$toString\": "
      "\"$group_id\"}]}}}]";
   bson_error_t berr;
   bson_t *def = bson_new_from_json((const uint8_t *) json, -1, &berr);
   if (!def) {
      fprintf(stderr, "bad pipeline json: %s\n", berr.message);
      return 1;
   }
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

   /* 1000 distinct solar-shaped documents, cycled. */
   bson_t docs[DISTINCT];
   for (int i = 0; i < DISTINCT; i++) {
      bson_t obs;
      char dev[32];
      snprintf(dev, sizeof dev, "device_%d", i % 11);
      bson_init(&docs[i]);
      BSON_APPEND_UTF8(&docs[i], "device_id", dev);
      BSON_APPEND_INT32(&docs[i], "group_id", i % 11);
      BSON_APPEND_UTF8(&docs[i], "timestamp", "2026-11-27T03:00:00.000+00:00");
      BSON_APPEND_INT32(&docs[i], "max_watts", 450);
      BSON_APPEND_INT32(&docs[i], "event_type", i % 200 == 0 ? 1 : 0);
      BSON_APPEND_DOCUMENT_BEGIN(&docs[i], "obs", &obs);
      BSON_APPEND_INT32(&obs, "watts", (i * 37) % 451);
      BSON_APPEND_INT32(&obs, "temp", 5 + (i * 13) % 21);
      bson_append_document_end(&docs[i], &obs);
      BSON_APPEND_DATE_TIME(&docs[i], "_ts", 1795000000000 + i);
   }
   bson_t meta = BSON_INITIALIZER, src;
   BSON_APPEND_DOCUMENT_BEGIN(&meta, "source", &src);
   BSON_APPEND_UTF8(&src, "type", "generated");
   bson_append_document_end(&meta, &src);

   /* Warm up (a tenth of the run, at most 100 000), then measure. */
   for (long i = 0; i < (n / 10 < 100000 ? n / 10 : 100000); i++) {
      aspen_sdoc_t d = {.doc = &docs[i % DISTINCT], .meta = &meta};
      aspen_pipeline_push(pl, &d);
   }
   outputs = dlqs = 0;
   double t0 = now_s(CLOCK_MONOTONIC);
   double c0 = now_s(CLOCK_PROCESS_CPUTIME_ID);
   bench_run(pl, docs, &meta, n);
   double dt = now_s(CLOCK_MONOTONIC) - t0;
   double dc = now_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
   struct rusage ru;
   getrusage(RUSAGE_SELF, &ru);
   printf("engine stateless pipeline ($match + $project + $addFields), 1 "
          "thread\n");
   printf("  events:      %ld in %.3f s\n", n, dt);
   printf("  throughput:  %.0f events/s (wall), %.0f events/s per CPU "
          "second\n",
          (double) n / dt, (double) n / dc);
   printf("  per event:   %.0f ns wall, %.0f ns CPU\n", dt * 1e9 / (double) n,
          dc * 1e9 / (double) n);
   printf("  outputs:     %llu (dlq %llu)\n", (unsigned long long) outputs,
          (unsigned long long) dlqs);
   printf("  peak RSS:    %ld KiB\n", ru.ru_maxrss);
   for (int i = 0; i < DISTINCT; i++) {
      bson_destroy(&docs[i]);
   }
   bson_destroy(&meta);
   aspen_pipeline_destroy(pl);
   aspen_conns_cleanup(&conns);
   bson_destroy(def);
   return 0;
}
