/*
 * source_solar.c - the built-in sample_stream_solar generator: solar-panel
 * readings of ASP's shape (../shared/spec/asp-semantics.md §2.5), two per
 * round, one round a second. `timestamp` is a string, as in ASP.
 */
#include "connectors/connectors.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

static int
range(aspen_runtime_t *rt, int lo, int hi)
{
   return lo + (int) (aspen_rt_random(rt) % (uint64_t) (hi - lo + 1));
}

static void
solar_doc(aspen_runtime_t *rt, int64_t now, bson_t *doc)
{
   time_t secs = (time_t) (now / 1000);
   struct tm tm;
   char stamp[64], device[32];
   gmtime_r(&secs, &tm);
   size_t n = strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
   snprintf(stamp + n, sizeof stamp - n, ".%03d+00:00", (int) (now % 1000));
   snprintf(device, sizeof device, "device_%d", range(rt, 0, 10));
   /* Panels make less in the (UTC) morning. */
   bool afternoon = tm.tm_hour >= 12;
   bool fault = range(rt, 0, 199) == 0;
   bson_init(doc);
   BSON_APPEND_UTF8(doc, "device_id", device);
   BSON_APPEND_INT32(doc, "group_id", range(rt, 0, 10));
   BSON_APPEND_UTF8(doc, "timestamp", stamp);
   BSON_APPEND_INT32(doc, "max_watts", 450);
   BSON_APPEND_INT32(doc, "event_type", fault ? 1 : 0);
   if (fault) {
      BSON_APPEND_UTF8(doc, "event_details", "Network error");
   } else {
      bson_t obs;
      BSON_APPEND_DOCUMENT_BEGIN(doc, "obs", &obs);
      BSON_APPEND_INT32(&obs, "watts", range(rt, 0, afternoon ? 450 : 225));
      BSON_APPEND_INT32(&obs, "temp", range(rt, 5, afternoon ? 25 : 12));
      bson_append_document_end(doc, &obs);
   }
}

static bool
solar_open(aspen_runtime_t *rt, void **state, aspen_error_t *err)
{
   (void) rt;
   (void) err;
   *state = NULL;
   return true;
}

static void
solar_run(aspen_runtime_t *rt, void *state)
{
   (void) state;
   do {
      for (int i = 0; i < 2 && !aspen_rt_stopping(rt); i++) {
         int64_t now = aspen_clock_now_ms();
         bson_t doc;
         solar_doc(rt, now, &doc);
         /* _ts is the generation time, equal to `timestamp` to the ms. */
         aspen_rt_ingest(rt, &doc, NULL, now);
         bson_destroy(&doc);
      }
   } while (!aspen_rt_wait(rt, 1000));
}

static void
solar_close(void *state)
{
   (void) state;
}

const aspen_source_ops_t aspen_source_solar_ops = {
   .type = "generated",
   .operator_name = "SampleDataSourceOperator",
   .what = "sample_stream_solar",
   .open = solar_open,
   .run = solar_run,
   .close = solar_close,
};

/* The sample_stream_solar connection: built into every registry, never
 * configured, listed with its name and type only. */
const aspen_conn_ops_t aspen_conn_solar_ops = {
   .builtin = "sample_stream_solar",
   .listed_type = "inmemory", /* ASP's listing of its sample */
};
