/*
 * sink_timeseries.c - $emit to a MongoDB time-series collection
 * (../shared/spec/asp-semantics.md §5.2), the form of $emit whose
 * connection is an Atlas one:
 *
 *   {$emit: {connectionName: <atlas>, db: <name | expression>,
 *            coll: <name | expression>,
 *            timeseries: {timeField, metaField, granularity,
 *                         bucketMaxSpanSeconds, bucketRoundingSeconds}}}
 *
 * At create time the sink's parse (aspen__emit_ts_parse, chosen by
 * sink_stages.c for the atlas row) checks the options with mongod's rules for
 * the `timeseries` option of `create`, so a processor that could never
 * write is refused with a 420 error. At run time the sink
 * (aspen_sink_timeseries_ops, in sink_merge.c) is the collection writer
 * (coll_writer.c) in its time-series mode: batched unordered inserts (a
 * time-series collection takes inserts, not upserts), each target created
 * with the `timeseries` options before its first write, targets evaluated
 * per document when db/coll are expressions. Documents the server refuses
 * (a missing or non-Date timeField: mongod's BadValue) and documents over
 * 4 MB go to the DLQ; an unreachable server, or a collection that cannot be
 * created, fails the processor. flush (before each checkpoint) writes the
 * queued batches, so checkpoints never run ahead of the collection
 * (at-least-once, as $merge).
 */
#include "base/not_yet.h"
#include "connectors/coll_writer.h"
#include "connectors/sink_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

/* mongod's bounds on bucketMaxSpanSeconds / bucketRoundingSeconds. */
#define MAX_BUCKET_SECONDS INT64_C(31536000)

/* A granularity's bucketing defaults: mongod accepts bucket* options next
 * to a granularity only when they equal these. */
static const struct {
   const char *name;
   int64_t max_span, rounding;
} granularities[] = {
   {"seconds", 3600, 60},
   {"minutes", 86400, 3600},
   {"hours", 2592000, 86400},
};

/* A field name the server takes as a top-level field: non-empty, no dot. */
static bool
top_level_field(const char *name, const char *what, aspen_parse_ctx_t *pc,
                const char *opt, aspen_error_t *err)
{
   if (!*name) {
      aspen_parse_error(err, pc, opt, "$emit.timeseries.%s cannot be empty",
                        what);
      return false;
   }
   if (strchr(name, '.')) {
      aspen_parse_error(err, pc, opt,
                        "'%s' must be a top-level field and not contain a "
                        "'.'",
                        what);
      return false;
   }
   return true;
}

/* bucketMaxSpanSeconds / bucketRoundingSeconds: a whole number of seconds
 * within mongod's bounds. */
static bool
bucket_seconds(const bson_iter_t *it, aspen_parse_ctx_t *pc, const char *k,
               const char *opt, int64_t *out, aspen_error_t *err)
{
   bool number = BSON_ITER_HOLDS_INT32(it) || BSON_ITER_HOLDS_INT64(it) ||
                 BSON_ITER_HOLDS_DOUBLE(it);
   double d = number ? bson_iter_as_double(it) : 0;
   /* Converted only when in range (NaN is not), where it is defined. */
   bool in_range = d >= 1 && d <= (double) MAX_BUCKET_SECONDS;
   *out = in_range ? (int64_t) d : 0;
   if (!number || (in_range && (double) *out != d)) {
      aspen_parse_error(err, pc, opt,
                        "BSON field '$emit.timeseries.%s' must be a whole "
                        "number of seconds",
                        k);
      return false;
   }
   if (!in_range) {
      aspen_parse_error(err, pc, opt,
                        "BSON field '$emit.timeseries.%s' value must be in "
                        "the range [1, %" PRId64 "]",
                        k, MAX_BUCKET_SECONDS);
      return false;
   }
   return true;
}

/* The `timeseries` option, with mongod's rules for create's. */
static bool
parse_timeseries(const bson_iter_t *it, aspen_parse_ctx_t *pc,
                 aspen_error_t *err)
{
   if (!BSON_ITER_HOLDS_DOCUMENT(it)) {
      aspen_parse_error(err, pc, "timeseries",
                        "BSON field '$emit.timeseries' is the wrong type, "
                        "expected type 'object'");
      return false;
   }
   if (!aspen_parse_no_duplicates(it, pc, "$emit.timeseries", err)) {
      return false;
   }
   const char *time_field = NULL, *meta_field = NULL;
   int granularity = -1;
   int64_t max_span = 0, rounding = 0; /* 0: not given */
   bson_iter_t ti;
   bson_iter_recurse(it, &ti);
   while (bson_iter_next(&ti)) {
      const char *k = bson_iter_key(&ti);
      char opt[96];
      snprintf(opt, sizeof opt, "timeseries.%s", k);
      if (strcmp(k, "timeField") == 0 || strcmp(k, "metaField") == 0) {
         if (!BSON_ITER_HOLDS_UTF8(&ti)) {
            aspen_parse_error(err, pc, opt,
                              "BSON field '$emit.timeseries.%s' is the wrong "
                              "type, expected type 'string'",
                              k);
            return false;
         }
         const char *v = bson_iter_utf8(&ti, NULL);
         if (!top_level_field(v, k, pc, opt, err)) {
            return false;
         }
         *(k[0] == 't' ? &time_field : &meta_field) = v;
      } else if (strcmp(k, "granularity") == 0) {
         const char *v =
            BSON_ITER_HOLDS_UTF8(&ti) ? bson_iter_utf8(&ti, NULL) : NULL;
         granularity = -1;
         for (int i = 0; v && i < 3; i++) {
            if (strcmp(v, granularities[i].name) == 0) {
               granularity = i;
            }
         }
         if (granularity < 0) {
            aspen_parse_error(err, pc, opt,
                              "Enumeration value '%s' for field "
                              "'$emit.timeseries.granularity' is not a valid "
                              "value.",
                              v ? v : "(not a string)");
            return false;
         }
      } else if (strcmp(k, "bucketMaxSpanSeconds") == 0 ||
                 strcmp(k, "bucketRoundingSeconds") == 0) {
         if (!bucket_seconds(&ti, pc, k, opt,
                             k[6] == 'M' ? &max_span : &rounding, err)) {
            return false;
         }
      } else {
         aspen_parse_unknown_field(err, pc, opt, "$emit.timeseries", k);
         return false;
      }
   }
   if (!time_field) {
      aspen_parse_missing_field(err, pc, "timeseries.timeField",
                                "$emit.timeseries", "timeField");
      return false;
   }
   if (meta_field && strcmp(meta_field, "_id") == 0) {
      aspen_parse_error(err, pc, "timeseries.metaField",
                        "'metaField' cannot be \"_id\"");
      return false;
   }
   if (meta_field && strcmp(meta_field, time_field) == 0) {
      aspen_parse_error(err, pc, "timeseries.metaField",
                        "'metaField' cannot be the same as 'timeField'");
      return false;
   }
   if (granularity >= 0) {
      /* Bucket sizes come with the granularity; giving them too is
       * allowed only when they say the same. */
      const struct {
         const char *name;
         int64_t given, dflt;
      } buckets[] = {
         {"bucketMaxSpanSeconds", max_span, granularities[granularity].max_span},
         {"bucketRoundingSeconds", rounding,
          granularities[granularity].rounding},
      };
      for (size_t i = 0; i < sizeof buckets / sizeof buckets[0]; i++) {
         if (buckets[i].given && buckets[i].given != buckets[i].dflt) {
            char opt[64];
            snprintf(opt, sizeof opt, "timeseries.%s", buckets[i].name);
            aspen_parse_error(err, pc, opt,
                              "Timeseries '%s' is not configurable to a "
                              "value other than the default of %" PRId64
                              " for the provided granularity",
                              buckets[i].name, buckets[i].dflt);
            return false;
         }
      }
   } else if (!max_span != !rounding) {
      aspen_parse_error(err, pc, "timeseries",
                        "Timeseries 'bucketMaxSpanSeconds' and "
                        "'bucketRoundingSeconds' need to be set alongside "
                        "each other");
      return false;
   } else if (max_span != rounding) {
      aspen_parse_error(err, pc, "timeseries",
                        "Timeseries 'bucketRoundingSeconds' needs to be "
                        "equal to 'bucketMaxSpanSeconds'");
      return false;
   }
   return true;
}

bool
aspen__emit_ts_parse(const bson_t *spec, aspen_parse_ctx_t *pc,
                     aspen_error_t *err)
{
   bool has_db = false, has_coll = false, has_ts = false, literal;
   bson_iter_t it;
   bson_iter_init(&it, spec);
   while (bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      if (strcmp(k, "connectionName") == 0) {
         continue; /* resolved by the caller: an Atlas connection */
      }
      if (strcmp(k, "db") == 0 || strcmp(k, "coll") == 0) {
         char label[16];
         snprintf(label, sizeof label, "$emit.%s", k);
         if (!aspen__sink_parse_target_name(&it, pc, k, label, &literal,
                                            err)) {
            return false;
         }
         *(k[0] == 'd' ? &has_db : &has_coll) = true;
      } else if (strcmp(k, "timeseries") == 0) {
         if (!parse_timeseries(&it, pc, err)) {
            return false;
         }
         has_ts = true;
      } else {
         /* topic, config: the Kafka form's options; bucket, stream, ...:
          * ASP's $emit to S3 or Kinesis, not yet aspen's. */
         if (aspen_not_yet_parse_error("$emit", k, pc, k, err)) {
            return false;
         }
         aspen_parse_unknown_field(err, pc, k, "$emit", k);
         return false;
      }
   }
   const char *missing = !has_db     ? "db"
                         : !has_coll ? "coll"
                         : !has_ts   ? "timeseries"
                                     : NULL;
   if (missing) {
      aspen_parse_missing_field(err, pc, missing, "$emit", missing);
      return false;
   }
   return true;
}
