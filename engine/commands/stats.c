/*
 * stats.c - getStreamProcessorStats: a processor's state and figures in
 * ASP's shape ({ns, name, state, stats: {..., inputMessageCount,
 * watermark, stateSize, lastCheckpointTime, ...}, pipeline}), scaled, and
 * a running Kafka $source's partitions, offsets and lag; with verbose,
 * the latency of the last 30 s, each operator's figures (operatorStats)
 * and the open windows' start times (asp-semantics.md §7.4).
 *
 * Sizes are divided by `scale` with the same rounding everywhere (down,
 * as mongod's collStats does), keeping ASP's types: inputMessageSize and
 * outputMessageSize are doubles, the others Longs.
 */
#include "commands/commands.h"
#include "connectors/connectors.h"
#include "connectors/kafka_int.h"
#include "connectors/source_change_stream.h"

#include <string.h>

/* ASP's engine statuses are created, running, error and stopping
 * (asp-semantics.md §7.3, [E7]); a stopped processor is, for the engine,
 * one that exists and does not run: "created" (the top-level `state`
 * says STOPPED). A start under way keeps aspen's "provisioning" (ASP's
 * PROVISIONING state; ASP's engine has no processor yet then). */
static const char *
status_name(const aspen_proc_t *p)
{
   switch (aspen_proc_state(p)) {
   case ASPEN_PROC_STARTED:
      return "running";
   case ASPEN_PROC_FAILED:
      return "error";
   case ASPEN_PROC_PROVISIONING:
      return "provisioning";
   case ASPEN_PROC_STOPPED:
   case ASPEN_PROC_CREATED:
   default:
      return "created";
   }
}

static int64_t
scaled(uint64_t bytes, int64_t scale)
{
   return (int64_t) (bytes / (uint64_t) scale);
}

/* latency: {p50, p99, start, end, unit, count, sum} of `h`. */
static void
append_latency(bson_t *into, const char *key, const aspen_hist_t *h,
               int64_t start_ms, int64_t end_ms)
{
   bson_t lat;
   BSON_APPEND_DOCUMENT_BEGIN(into, key, &lat);
   BSON_APPEND_INT64(&lat, "p50", (int64_t) aspen_hist_quantile(h, 0.50));
   BSON_APPEND_INT64(&lat, "p99", (int64_t) aspen_hist_quantile(h, 0.99));
   BSON_APPEND_DATE_TIME(&lat, "start", start_ms ? start_ms : end_ms);
   BSON_APPEND_DATE_TIME(&lat, "end", end_ms);
   BSON_APPEND_UTF8(&lat, "unit", "microseconds");
   BSON_APPEND_INT64(&lat, "count", (int64_t) h->count);
   BSON_APPEND_INT64(&lat, "sum", (int64_t) h->sum);
   bson_append_document_end(into, &lat);
}

/* The sink's target when its stage names it literally: {db, coll} for a
 * $merge (or a time-series $emit), {topic} for a Kafka $emit, {stream}
 * for a Kinesis one, {bucket, path} for S3 and {container, path} for Azure
 * Blob. False for a computed one (its per-target figures are not kept). */
static bool
literal_target(const bson_t *pipeline, bson_t *target)
{
   bson_iter_t it, st, arg;
   bson_init(target);
   const char *stage = NULL;
   bson_iter_t last;
   bool any = false;
   if (!bson_iter_init(&it, pipeline)) {
      return false;
   }
   while (bson_iter_next(&it)) {
      last = it;
      any = true;
   }
   if (!any || !BSON_ITER_HOLDS_DOCUMENT(&last) ||
       !bson_iter_recurse(&last, &st) || !bson_iter_next(&st) ||
       !BSON_ITER_HOLDS_DOCUMENT(&st)) {
      return false;
   }
   stage = bson_iter_key(&st);
   const char *keys[2] = {"db", "coll"};
   bson_iter_t spec;
   if (strcmp(stage, "$merge") == 0) {
      if (!bson_iter_recurse(&st, &arg) || !bson_iter_find(&arg, "into") ||
          !BSON_ITER_HOLDS_DOCUMENT(&arg)) {
         return false;
      }
      bson_iter_recurse(&arg, &spec);
   } else if (strcmp(stage, "$emit") == 0) {
      bson_iter_recurse(&st, &spec);
      /* Kafka's topic, Kinesis's stream: the one name of the target. */
      static const char *const named[] = {"topic", "stream"};
      for (int i = 0; i < 2; i++) {
         bson_iter_t t = spec;
         if (bson_iter_find(&t, named[i])) {
            if (!BSON_ITER_HOLDS_UTF8(&t)) {
               return false;
            }
            BSON_APPEND_UTF8(target, named[i], bson_iter_utf8(&t, NULL));
            return true;
         }
      }
      /* An object store's: {bucket, path} (S3), {container, path}
       * (Azure Blob). */
      static const char *const stores[] = {"bucket", "container"};
      for (int i = 0; i < 2; i++) {
         bson_iter_t t = spec, p = spec;
         if (!bson_iter_find(&t, stores[i])) {
            continue;
         }
         if (!BSON_ITER_HOLDS_UTF8(&t) || !bson_iter_find(&p, "path") ||
             !BSON_ITER_HOLDS_UTF8(&p)) {
            return false;
         }
         BSON_APPEND_UTF8(target, stores[i], bson_iter_utf8(&t, NULL));
         BSON_APPEND_UTF8(target, "path", bson_iter_utf8(&p, NULL));
         return true;
      }
   } else {
      return false;
   }
   for (int i = 0; i < 2; i++) {
      bson_iter_t f = spec;
      if (!bson_iter_find(&f, keys[i]) || !BSON_ITER_HOLDS_UTF8(&f)) {
         bson_reinit(target);
         return false;
      }
      BSON_APPEND_UTF8(target, keys[i], bson_iter_utf8(&f, NULL));
   }
   return true;
}

/* The counts every operator and target shows, scaled. */
static void
append_counts(bson_t *into, const aspen_op_counts_t *c, int64_t scale)
{
   BSON_APPEND_INT64(into, "inputMessageCount", (int64_t) c->in_count);
   BSON_APPEND_INT64(into, "inputMessageSize", scaled(c->in_size, scale));
   BSON_APPEND_INT64(into, "outputMessageCount", (int64_t) c->out_count);
   BSON_APPEND_INT64(into, "outputMessageSize", scaled(c->out_size, scale));
   BSON_APPEND_INT64(into, "dlqMessageCount", (int64_t) c->dlq_count);
   BSON_APPEND_INT64(into, "dlqMessageSize", scaled(c->dlq_size, scale));
}

/* operatorStats: one entry per operator, source to sink. */
static void
append_operators(bson_t *st, const aspen_proc_t *p,
                 const aspen_proc_figures_t *f, int64_t scale, int64_t now)
{
   bson_t arr;
   BSON_APPEND_ARRAY_BEGIN(st, "operatorStats", &arr);
   bson_t target;
   bool has_target = literal_target(aspen_proc_pipeline(p), &target);
   for (size_t i = 0; i < f->n_ops; i++) {
      const aspen_proc_op_t *op = &f->ops[i];
      char key[16];
      const char *k;
      bson_uint32_to_string((uint32_t) i, &k, key, sizeof key);
      bson_t o;
      BSON_APPEND_DOCUMENT_BEGIN(&arr, k, &o);
      BSON_APPEND_UTF8(&o, "name", op->name);
      append_counts(&o, &op->c, scale);
      BSON_APPEND_INT64(&o, "stateSize", scaled(op->state_size, scale));
      BSON_APPEND_INT64(&o, "maxMemoryUsage", scaled(op->max_state, scale));
      BSON_APPEND_INT64(&o, "executionTimeMillis",
                        (int64_t) (op->c.exec_ns / 1000000u));
      bool is_sink = f->has_sink && i == f->n_ops - 1;
      if (is_sink) {
         /* End to end: the documents' latency is the sink's. */
         append_latency(&o, "latency", &f->recent, f->recent_start_ms, now);
      }
      if (op->is_window && f->open_min_ms != INT64_MIN) {
         BSON_APPEND_DATE_TIME(&o, "minOpenWindowStartTime", f->open_min_ms);
         BSON_APPEND_DATE_TIME(&o, "maxOpenWindowStartTime", f->open_max_ms);
      }
      if (i == 0) {
         /* A change stream's initial sync: per collection, and summed. */
         bson_t fig;
         if (aspen_proc_source_figures(p, &fig)) {
            aspen__change_stream_operator_stats(&fig, scale, &o);
         }
         bson_destroy(&fig);
      }
      if (is_sink && has_target) {
         bson_t ts, t0;
         BSON_APPEND_ARRAY_BEGIN(&o, "targetStats", &ts);
         BSON_APPEND_DOCUMENT_BEGIN(&ts, "0", &t0);
         bson_concat(&t0, &target);
         append_counts(&t0, &op->c, scale);
         bson_append_document_end(&ts, &t0);
         bson_append_array_end(&o, &ts);
      }
      bson_append_document_end(&arr, &o);
   }
   if (f->n_ops == 0) {
      /* Not running (a failed initial sync): the source's last figures,
       * so the collection that failed shows. */
      bson_t fig, o;
      if (aspen_proc_source_figures(p, &fig)) {
         BSON_APPEND_DOCUMENT_BEGIN(&arr, "0", &o);
         BSON_APPEND_UTF8(&o, "name",
                          aspen_source_change_stream_ops.operator_name);
         aspen__change_stream_operator_stats(&fig, scale, &o);
         bson_append_document_end(&arr, &o);
      }
      bson_destroy(&fig);
   }
   bson_append_array_end(st, &arr);
   bson_destroy(&target);
}

bool
aspen__cmd_stats(aspen_cmd_ctx_t *ctx, const bson_t *cmd, uint64_t conn_id,
                 void *ticket, bson_t *reply)
{
   (void) conn_id;
   (void) ticket;
   static const char *const allowed[] = {"scale", "verbose", "options", NULL};
   aspen_proc_t *p =
      aspen__cmd_proc_arg(ctx, cmd, "getStreamProcessorStats", allowed, reply);
   if (!p) {
      return true;
   }
   aspen__cmd_reap(ctx, p);
   int64_t scale = 1;
   bool verbose = false;
   /* Both {scale, verbose} and {options: {scale, verbose}} arrive. */
   bson_iter_t it;
   bson_t nested;
   bool has_nested = false;
   if (!aspen__cmd_get_options_doc(cmd, "getStreamProcessorStats", &nested,
                                   &has_nested, reply)) {
      return true;
   }
   const bson_t *srcs[2] = {cmd, has_nested ? &nested : NULL};
   for (int i = 0; i < 2; i++) {
      if (!srcs[i]) {
         continue;
      }
      if (bson_iter_init_find(&it, srcs[i], "scale")) {
         if (!BSON_ITER_HOLDS_NUMBER(&it) || bson_iter_as_int64(&it) < 1) {
            aspen_reply_error(reply, ASPEN_ERR_BadValue,
                              "scale must be a positive number");
            return true;
         }
         scale = bson_iter_as_int64(&it);
      }
      if (bson_iter_init_find(&it, srcs[i], "verbose")) {
         if (!BSON_ITER_HOLDS_BOOL(&it)) {
            aspen_reply_error(reply, ASPEN_ERR_TypeMismatch,
                              "verbose must be a boolean");
            return true;
         }
         verbose = bson_iter_bool(&it);
      }
   }
   char ns[512];
   snprintf(ns, sizeof ns, "aspen.local.%s", aspen_proc_name(p));
   BSON_APPEND_DOUBLE(reply, "ok", 1.0);
   BSON_APPEND_UTF8(reply, "ns", ns);
   BSON_APPEND_UTF8(reply, "name", aspen_proc_name(p));
   BSON_APPEND_UTF8(reply, "state", aspen_proc_state_name(aspen_proc_state(p)));
   /* The tier asked for, the one it runs on (autoscaling may have moved
    * it) and the autoscaling settings, next to name and state. */
   aspen_tier_plan_t plan;
   aspen_tier_plan(aspen_proc_options(p), &plan);
   BSON_APPEND_UTF8(reply, "tier", aspen_tier_at(plan.asked_rank)->name);
   BSON_APPEND_UTF8(reply, "effectiveTier",
                    aspen_tier_at(aspen_proc_effective_tier(p))->name);
   bson_iter_t ai;
   if (bson_iter_init_find(&ai, aspen_proc_options(p), "autoscaling")) {
      bson_append_iter(reply, "autoscaling", -1, &ai);
   }
   bson_t st;
   BSON_APPEND_DOCUMENT_BEGIN(reply, "stats", &st);
   BSON_APPEND_UTF8(&st, "name", aspen_proc_name(p));
   BSON_APPEND_UTF8(&st, "processorId", aspen_proc_id(p));
   BSON_APPEND_UTF8(&st, "status", status_name(p));
   BSON_APPEND_INT64(&st, "scaleFactor", scale);
   aspen_proc_stats_t ps;
   aspen_proc_stats(p, &ps);
   BSON_APPEND_INT64(&st, "inputMessageCount", (int64_t) ps.input_count);
   BSON_APPEND_DOUBLE(&st, "inputMessageSize",
                      (double) scaled(ps.input_size, scale));
   BSON_APPEND_INT64(&st, "outputMessageCount", (int64_t) ps.output_count);
   BSON_APPEND_DOUBLE(&st, "outputMessageSize",
                      (double) scaled(ps.output_size, scale));
   BSON_APPEND_INT64(&st, "dlqMessageCount", (int64_t) ps.dlq_count);
   BSON_APPEND_INT64(&st, "dlqMessageSize", scaled(ps.dlq_size, scale));
   BSON_APPEND_INT64(&st, "stateSize", scaled(ps.state_size, scale));
   if (ps.watermark_ms != INT64_MIN) {
      BSON_APPEND_DATE_TIME(&st, "watermark", ps.watermark_ms);
   }
   if (aspen_proc_error(p)[0]) {
      BSON_APPEND_UTF8(&st, "error", aspen_proc_error(p));
   }
   if (ps.last_checkpoint_ms > 0) {
      BSON_APPEND_DATE_TIME(&st, "lastCheckpointTime", ps.last_checkpoint_ms);
   }
   /* A running Kafka $source: partitions, offsets, lag, group (kafka.c). */
   aspen__kafka_stats_append(aspen_proc_id(p), &st);
   /* A running change stream $source: its resume token and lag. */
   bson_t token;
   int64_t lag_ms;
   if (aspen_proc_source_position(p, &token, &lag_ms)) {
      aspen__change_stream_stats_append(aspen_proc_pipeline(p), &token, &st);
      if (lag_ms != INT64_MIN) {
         BSON_APPEND_INT64(&st, "changeStreamTimeDifferenceSecs",
                           lag_ms / 1000);
      }
   }
   bson_destroy(&token);
   /* The memory the processor's state holds (windows, caches): what
    * aspen's tracker counts against the tier's limit. Never scaled. */
   BSON_APPEND_INT64(&st, "memoryTrackerBytes", (int64_t) ps.state_size);
   int64_t added = aspen__cmd_added_parallelism(aspen_proc_pipeline(p));
   if (added > 0) {
      BSON_APPEND_INT64(&st, "addedParallelism", added);
   }
   if (verbose) {
      int64_t now = aspen_clock_now_ms();
      aspen_proc_figures_t f;
      aspen_proc_figures(p, &f);
      append_latency(&st, "latency", &f.recent, f.recent_start_ms, now);
      if (f.open_min_ms != INT64_MIN) {
         BSON_APPEND_DATE_TIME(&st, "minOpenWindowStartTime", f.open_min_ms);
         BSON_APPEND_DATE_TIME(&st, "maxOpenWindowStartTime", f.open_max_ms);
      }
      append_operators(&st, p, &f, scale, now);
      aspen_proc_figures_cleanup(&f);
      BSON_APPEND_DATE_TIME(&st, "lastStateChange",
                            aspen_proc_state_changed_ms(p));
      BSON_APPEND_BOOL(&st, "ephemeral", aspen_proc_is_ephemeral(p));
   }
   BSON_APPEND_DOUBLE(&st, "ok", 1.0);
   bson_append_document_end(reply, &st);
   BSON_APPEND_ARRAY(reply, "pipeline", aspen_proc_pipeline(p));
   return true;
}
