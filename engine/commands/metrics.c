/*
 * metrics.c - the processors' figures in Prometheus' text format, for the
 * proxy's opt-in metrics endpoint (aspen_engine_metrics; beyond ASP): per
 * processor its state, input, output and DLQ counters, state size, a
 * Kafka $source's total offset lag, and the latency of its output
 * documents as a histogram (seconds, since the run began). The figures
 * are the ones stats shows (runtime.h). Command thread.
 */
#include "commands/commands.h"
#include "connectors/kafka_int.h"

#include <stddef.h>
#include <string.h>

/* Latency histogram bounds, in seconds. */
static const double lat_le[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                0.005,  0.01,    0.025,  0.05,  0.1,
                                0.25,   0.5,     1,      2.5,   5,
                                10,     30,      60};
#define N_LE (sizeof lat_le / sizeof lat_le[0])

static void
header(bson_string_t *out, const char *name, const char *type,
       const char *help)
{
   bson_string_append_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help,
                             name, type);
}

/* name{processor="..."[,extra]} value */
static void
sample(bson_string_t *out, const char *name, const char *suffix,
       const aspen_proc_t *p, const char *extra, double v)
{
   bson_string_append_printf(out, "%s%s{processor=\"", name, suffix);
   aspen_prom_label_value(out, aspen_proc_name(p));
   bson_string_append(out, "\"");
   if (extra) {
      bson_string_append_printf(out, ",%s", extra);
   }
   bson_string_append_printf(out, "} %.17g\n", v);
}

/* The counter and gauge families read from aspen_proc_stats_t. */
static const struct {
   const char *name, *type, *help;
   size_t off; /* of a uint64_t in aspen_proc_stats_t */
} families[] = {
   {"aspen_processor_input_messages_total", "counter",
    "documents the source handed to the pipeline",
    offsetof(aspen_proc_stats_t, input_count)},
   {"aspen_processor_input_bytes_total", "counter", "bytes of those documents",
    offsetof(aspen_proc_stats_t, input_size)},
   {"aspen_processor_output_messages_total", "counter",
    "documents that made it through the whole pipeline",
    offsetof(aspen_proc_stats_t, output_count)},
   {"aspen_processor_output_bytes_total", "counter",
    "bytes of those documents", offsetof(aspen_proc_stats_t, output_size)},
   {"aspen_processor_dlq_messages_total", "counter",
    "documents sent to the dead-letter queue",
    offsetof(aspen_proc_stats_t, dlq_count)},
   {"aspen_processor_dlq_bytes_total", "counter", "bytes of those documents",
    offsetof(aspen_proc_stats_t, dlq_size)},
   {"aspen_processor_state_bytes", "gauge",
    "state held: open windows and $cachedLookup caches",
    offsetof(aspen_proc_stats_t, state_size)},
};

char *
aspen__cmd_metrics(aspen_cmd_ctx_t *ctx)
{
   bson_string_t *out = bson_string_new(NULL);
   static const char *const states[] = {"CREATED", "STARTED", "STOPPED",
                                        "FAILED", "PROVISIONING"};
   header(out, "aspen_processor_state", "gauge",
          "1 for the state the stream processor is in");
   for (aspen_proc_t *p = aspen_registry_first(ctx->reg); p;
        p = aspen_registry_next(p)) {
      const char *now = aspen_proc_state_name(aspen_proc_state(p));
      for (size_t i = 0; i < sizeof states / sizeof states[0]; i++) {
         char extra[48];
         snprintf(extra, sizeof extra, "state=\"%s\"", states[i]);
         sample(out, "aspen_processor_state", "", p, extra,
                strcmp(now, states[i]) == 0 ? 1 : 0);
      }
   }
   for (size_t f = 0; f < sizeof families / sizeof families[0]; f++) {
      header(out, families[f].name, families[f].type, families[f].help);
      for (aspen_proc_t *p = aspen_registry_first(ctx->reg); p;
           p = aspen_registry_next(p)) {
         aspen_proc_stats_t ps;
         aspen_proc_stats(p, &ps);
         uint64_t v;
         memcpy(&v, (const char *) &ps + families[f].off, sizeof v);
         sample(out, families[f].name, "", p, NULL, (double) v);
      }
   }
   header(out, "aspen_processor_kafka_lag_messages", "gauge",
          "a Kafka $source's total offset lag (kafkaTotalOffsetLag)");
   for (aspen_proc_t *p = aspen_registry_first(ctx->reg); p;
        p = aspen_registry_next(p)) {
      bson_t k = BSON_INITIALIZER;
      bson_iter_t it;
      if (aspen__kafka_stats_append(aspen_proc_id(p), &k) &&
          bson_iter_init_find(&it, &k, "kafkaTotalOffsetLag") &&
          BSON_ITER_HOLDS_NUMBER(&it)) {
         sample(out, "aspen_processor_kafka_lag_messages", "", p, NULL,
                (double) bson_iter_as_int64(&it));
      }
      bson_destroy(&k);
   }
   header(out, "aspen_processor_latency_seconds", "histogram",
          "time from reading an input to writing its output (a window's "
          "results: from its first input), this run");
   for (aspen_proc_t *p = aspen_registry_first(ctx->reg); p;
        p = aspen_registry_next(p)) {
      aspen_proc_figures_t f;
      if (!aspen_proc_figures(p, &f)) {
         aspen_proc_figures_cleanup(&f);
         continue;
      }
      /* Each histogram bucket counts below each bound its largest value
       * fits under (a bucket is within a quarter of its values). */
      uint64_t cum[N_LE] = {0};
      for (int b = 0; b < ASPEN_HIST_BUCKETS; b++) {
         double up = (double) aspen_hist_bucket_upper(b) / 1e6;
         for (size_t i = 0; i < N_LE; i++) {
            if (up <= lat_le[i]) {
               cum[i] += f.total.n[b];
            }
         }
      }
      for (size_t i = 0; i < N_LE; i++) {
         char extra[32];
         snprintf(extra, sizeof extra, "le=\"%g\"", lat_le[i]);
         sample(out, "aspen_processor_latency_seconds", "_bucket", p, extra,
                (double) cum[i]);
      }
      sample(out, "aspen_processor_latency_seconds", "_bucket", p,
             "le=\"+Inf\"", (double) f.total.count);
      sample(out, "aspen_processor_latency_seconds", "_sum", p, NULL,
             (double) f.total.sum / 1e6);
      sample(out, "aspen_processor_latency_seconds", "_count", p, NULL,
             (double) f.total.count);
      aspen_proc_figures_cleanup(&f);
   }
   return bson_string_free(out, false);
}
