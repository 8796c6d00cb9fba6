/*
 * stats.c - getStreamProcessorStats: a processor's state and figures in
 * ASP's shape ({ns, name, state, stats: {..., inputMessageCount,
 * watermark, stateSize, lastCheckpointTime, ...}, pipeline}), scaled, and
 * a running Kafka $source's partitions, offsets and lag.
 */
#include "commands/commands.h"
#include "connectors/kafka_int.h"

static const char *
status_name(const aspen_proc_t *p)
{
   switch (aspen_proc_state(p)) {
   case ASPEN_PROC_STARTED:
      return "running";
   case ASPEN_PROC_FAILED:
      return "error";
   case ASPEN_PROC_STOPPED:
      return "stopped";
   case ASPEN_PROC_PROVISIONING:
      return "provisioning";
   case ASPEN_PROC_CREATED:
   default:
      return "created";
   }
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
                      (double) ps.input_size / (double) scale);
   BSON_APPEND_INT64(&st, "outputMessageCount", (int64_t) ps.output_count);
   BSON_APPEND_DOUBLE(&st, "outputMessageSize",
                      (double) ps.output_size / (double) scale);
   BSON_APPEND_INT64(&st, "dlqMessageCount", (int64_t) ps.dlq_count);
   BSON_APPEND_INT64(&st, "dlqMessageSize", (int64_t) ps.dlq_size / scale);
   BSON_APPEND_INT64(&st, "stateSize", (int64_t) ps.state_size / scale);
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
   if (verbose) {
      BSON_APPEND_DATE_TIME(&st, "lastStateChange",
                            aspen_proc_state_changed_ms(p));
      BSON_APPEND_BOOL(&st, "ephemeral", aspen_proc_is_ephemeral(p));
   }
   BSON_APPEND_DOUBLE(&st, "ok", 1.0);
   bson_append_document_end(reply, &st);
   BSON_APPEND_ARRAY(reply, "pipeline", aspen_proc_pipeline(p));
   return true;
}
