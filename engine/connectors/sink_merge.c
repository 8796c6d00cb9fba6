/*
 * sink_merge.c - $merge: validating its options at create time, and the
 * processor sinks that write through the collection writer (coll_writer.c):
 * $merge's, and the time-series $emit's (options: sink_timeseries.c).
 *
 * Writes are batched into unordered bulk operations keyed on the `on` fields
 * (default _id), so replaying the same input leaves the same collection. A
 * document the server refuses goes to the DLQ with the server's error; an
 * unreachable server fails the processor. Runs on the processor's thread;
 * mongoc calls block there, never on the event loop.
 */
#include "connectors/coll_writer.h"
#include "connectors/connectors.h"
#include "connectors/sink_int.h"
#include "runtime/sink.h"

#include <string.h>
/* ---- option parsing ---------------------------------------------------- */

/* A target database or collection name ($merge.into.db / .coll, $emit.db /
 * .coll): a non-empty literal name, or an expression ("$field", {$concat:
 * ...}) evaluated per document. *literal says which; `label` names the
 * option in messages ("$merge.into.db"). */
bool
aspen__sink_parse_target_name(const bson_iter_t *it, aspen_parse_ctx_t *pc,
                              const char *opt, const char *label,
                              bool *literal, aspen_error_t *err)
{
   *literal = false;
   if (BSON_ITER_HOLDS_UTF8(it) && bson_iter_utf8(it, NULL)[0] != '$') {
      if (!*bson_iter_utf8(it, NULL)) {
         aspen_parse_error(err, pc, opt, "%s cannot be empty", label);
         return false;
      }
      *literal = true;
      return true;
   }
   if (!BSON_ITER_HOLDS_UTF8(it) && !BSON_ITER_HOLDS_DOCUMENT(it)) {
      aspen_parse_error(err, pc, opt, "%s must be a string or an expression",
                        label);
      return false;
   }
   aspen_expr_t *e = NULL;
   if (!aspen_expr_parse(it, NULL, &e, err)) {
      char msg[ASPEN_ERROR_MSG_MAX];
      snprintf(msg, sizeof msg, "%s", err->message);
      aspen_parse_error(err, pc, opt, "invalid %s expression: %s", label, msg);
      return false;
   }
   aspen_expr_destroy(e);
   return true;
}

static bool
parse_into(const bson_iter_t *it, aspen_parse_ctx_t *pc, bool *literal,
           aspen_error_t *err)
{
   if (!BSON_ITER_HOLDS_DOCUMENT(it)) {
      aspen_parse_error(err, pc, "into",
                        "$merge.into must be an object {connectionName, db, "
                        "coll}");
      return false;
   }
   uint32_t len;
   const uint8_t *data;
   bson_t into;
   bson_iter_t ii;
   bson_iter_document(it, &len, &data);
   (void) bson_init_static(&into, data, len);
   const char *conn = NULL;
   bool db = false, coll = false, db_lit = false, coll_lit = false;
   bson_iter_init(&ii, &into);
   while (bson_iter_next(&ii)) {
      const char *k = bson_iter_key(&ii);
      char opt[64];
      snprintf(opt, sizeof opt, "into.%s", k);
      if (strcmp(k, "connectionName") == 0) {
         if (!BSON_ITER_HOLDS_UTF8(&ii)) {
            aspen_parse_error(err, pc, opt, "connectionName must be a string");
            return false;
         }
         conn = bson_iter_utf8(&ii, NULL);
      } else if (strcmp(k, "db") == 0 || strcmp(k, "coll") == 0) {
         bool is_db = k[0] == 'd';
         char label[32];
         snprintf(label, sizeof label, "$merge.into.%s", k);
         if (!aspen__sink_parse_target_name(&ii, pc, opt, label,
                                            is_db ? &db_lit : &coll_lit,
                                            err)) {
            return false;
         }
         *(is_db ? &db : &coll) = true;
      } else {
         aspen_parse_unknown_field(err, pc, opt, "$merge.into", k);
         return false;
      }
   }
   if (!conn || !db || !coll) {
      aspen_parse_error(err, pc, "into",
                        "$merge.into requires connectionName, db and coll");
      return false;
   }
   const aspen_conn_t *c = aspen_conns_find(pc->conns, conn);
   if (!c) {
      aspen_parse_error(err, pc, "into.connectionName",
                        "Unknown connection name %s", conn);
      return false;
   }
   if (c->kind->merge != &aspen_sink_merge_ops) {
      aspen_parse_error(err, pc, "into.connectionName",
                        "Only atlas merge connection type is currently "
                        "supported");
      return false;
   }
   *literal = db_lit && coll_lit;
   return true;
}

/* whenMatched as a pipeline: an array of update stages (the server checks
 * which stages it allows). */
static bool
parse_when_matched_pipeline(const bson_iter_t *it, aspen_parse_ctx_t *pc,
                            aspen_error_t *err)
{
   uint32_t len;
   const uint8_t *data;
   bson_t arr;
   bson_iter_t ai;
   bson_iter_array(it, &len, &data);
   (void) bson_init_static(&arr, data, len);
   bson_iter_init(&ai, &arr);
   while (bson_iter_next(&ai)) {
      if (!BSON_ITER_HOLDS_DOCUMENT(&ai)) {
         aspen_parse_error(err, pc, "whenMatched",
                           "Each element of the 'whenMatched' pipeline must "
                           "be an object");
         return false;
      }
   }
   return true;
}

/* $merge.let: {name: <expression>}, evaluated against the incoming
 * document; names follow MongoDB's variable rules. */
static bool
parse_let(const bson_iter_t *it, aspen_parse_ctx_t *pc, aspen_error_t *err)
{
   if (!BSON_ITER_HOLDS_DOCUMENT(it)) {
      aspen_parse_error(err, pc, "let", "$merge.let must be an object");
      return false;
   }
   bson_iter_t li;
   bson_iter_recurse(it, &li);
   while (bson_iter_next(&li)) {
      const char *name = bson_iter_key(&li);
      if (!((name[0] >= 'a' && name[0] <= 'z') || (unsigned char) name[0] >= 0x80)) {
         aspen_parse_error(err, pc, "let",
                           "'%s' starts with an invalid character for a user "
                           "variable name",
                           name);
         return false;
      }
      aspen_expr_t *e = NULL;
      if (!aspen_expr_parse(&li, NULL, &e, err)) {
         char msg[ASPEN_ERROR_MSG_MAX];
         snprintf(msg, sizeof msg, "%s", err->message);
         aspen_parse_error(err, pc, "let", "invalid $merge.let.%s: %s", name,
                           msg);
         return false;
      }
      aspen_expr_destroy(e);
   }
   return true;
}

/* Validates a $merge argument (the sink's parse). */
static bool
merge_parse(const bson_t *spec, aspen_parse_ctx_t *pc, aspen_error_t *err)
{
   uint32_t len;
   const uint8_t *data;
   bson_iter_t it;
   bool has_into = false, literal = true, has_let = false, wm_pipeline = false;
   int64_t parallelism = 1;
   bson_iter_init(&it, spec);
   while (bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      if (strcmp(k, "into") == 0) {
         if (!parse_into(&it, pc, &literal, err)) {
            return false;
         }
         has_into = true;
      } else if (strcmp(k, "on") == 0) {
         if (BSON_ITER_HOLDS_UTF8(&it)) {
            continue;
         }
         if (!BSON_ITER_HOLDS_ARRAY(&it)) {
            aspen_parse_error(err, pc, "on",
                              "$merge.on must be a string or an array of "
                              "strings");
            return false;
         }
         bson_t arr;
         bson_iter_t ai, aj;
         bson_iter_array(&it, &len, &data);
         (void) bson_init_static(&arr, data, len);
         bson_iter_init(&ai, &arr);
         int n = 0;
         while (bson_iter_next(&ai)) {
            n++;
            if (!BSON_ITER_HOLDS_UTF8(&ai)) {
               aspen_parse_error(err, pc, "on",
                                 "$merge.on array elements must be strings");
               return false;
            }
            bson_iter_init(&aj, &arr);
            while (bson_iter_next(&aj) &&
                   strcmp(bson_iter_key(&aj), bson_iter_key(&ai)) != 0) {
               if (BSON_ITER_HOLDS_UTF8(&aj) &&
                   strcmp(bson_iter_utf8(&aj, NULL),
                          bson_iter_utf8(&ai, NULL)) == 0) {
                  aspen_parse_error(err, pc, "on",
                                    "Found a duplicate field in the "
                                    "$merge.on list: '%s'",
                                    bson_iter_utf8(&ai, NULL));
                  return false;
               }
            }
         }
         if (n == 0) {
            aspen_parse_error(err, pc, "on",
                              "If explicitly specifying $merge.on, must "
                              "include at least one field");
            return false;
         }
      } else if (strcmp(k, "whenMatched") == 0) {
         const char *m = BSON_ITER_HOLDS_UTF8(&it) ? bson_iter_utf8(&it, NULL)
                                                   : NULL;
         if (BSON_ITER_HOLDS_DOCUMENT(&it)) {
            /* An expression that picks the mode per document. */
            aspen_expr_t *e = NULL;
            bool ok = aspen_expr_parse(&it, NULL, &e, err);
            aspen_expr_destroy(e);
            if (!ok) {
               return false;
            }
            continue;
         }
         if (BSON_ITER_HOLDS_ARRAY(&it)) {
            if (!parse_when_matched_pipeline(&it, pc, err)) {
               return false;
            }
            wm_pipeline = true;
            continue;
         }
         if (!m || (strcmp(m, "merge") != 0 && strcmp(m, "replace") != 0 &&
                    strcmp(m, "keepExisting") != 0 &&
                    strcmp(m, "delete") != 0)) {
            aspen_parse_error(err, pc, "whenMatched",
                              "Unsupported whenMatched mode: %s",
                              m ? m : "(not a string)");
            return false;
         }
      } else if (strcmp(k, "whenNotMatched") == 0) {
         const char *m = BSON_ITER_HOLDS_UTF8(&it) ? bson_iter_utf8(&it, NULL)
                                                   : NULL;
         if (BSON_ITER_HOLDS_DOCUMENT(&it)) {
            aspen_expr_t *e = NULL;
            bool ok = aspen_expr_parse(&it, NULL, &e, err);
            aspen_expr_destroy(e);
            if (!ok) {
               return false;
            }
            continue;
         }
         if (!m || (strcmp(m, "insert") != 0 && strcmp(m, "discard") != 0)) {
            aspen_parse_error(err, pc, "whenNotMatched",
                              "Unsupported whenNotMatched mode: %s",
                              m ? m : "(not a string)");
            return false;
         }
      } else if (strcmp(k, "parallelism") == 0) {
         if (!BSON_ITER_HOLDS_INT32(&it) && !BSON_ITER_HOLDS_INT64(&it)) {
            aspen_parse_error(err, pc, "parallelism",
                              "$merge.parallelism must be an integer");
            return false;
         }
         int64_t p = bson_iter_as_int64(&it);
         if (p < 1 || p > 64) {
            aspen_parse_error(err, pc, "parallelism",
                              "$merge.parallelism must be between 1 and 64");
            return false;
         }
         parallelism = p;
      } else if (strcmp(k, "let") == 0) {
         if (!parse_let(&it, pc, err)) {
            return false;
         }
         has_let = true;
      } else {
         aspen_parse_unknown_field(err, pc, k, "$merge", k);
         return false;
      }
   }
   if (!has_into) {
      aspen_parse_missing_field(err, pc, "into", "$merge", "into");
      return false;
   }
   if (parallelism > 1 && !literal) {
      aspen_parse_error(err, pc, "parallelism",
                        "$merge.into.db and $merge.into.coll must be literals "
                        "if $merge.parallelism is greater than 1");
      return false;
   }
   if (has_let && !wm_pipeline) {
      /* mongod: variables are only usable from a whenMatched pipeline. */
      aspen_parse_error(err, pc, "let",
                        "Cannot use 'let' variables with 'whenMatched' modes "
                        "other than a pipeline");
      return false;
   }
   return true;
}

/* ---- $merge as a processor sink ----------------------------------------- */

static void
merge_refused(void *arg, const bson_t *doc, const char *reason)
{
   aspen_rt_sink_failed(arg, doc, reason);
}

static bool
merge_open(aspen_runtime_t *rt, const bson_t *spec, void **state,
           aspen_error_t *err)
{
   *state = aspen_coll_writer_new_merge(aspen_rt_conns(rt), spec, err);
   return *state != NULL;
}

static bool
merge_write(aspen_runtime_t *rt, void *state, const bson_t *doc,
            aspen_error_t *err)
{
   return aspen_coll_writer_add(state, doc, merge_refused, rt, err);
}

static bool
merge_flush(aspen_runtime_t *rt, void *state, aspen_error_t *err)
{
   return aspen_coll_writer_flush(state, merge_refused, rt, err);
}

static void
merge_close(void *state)
{
   aspen_coll_writer_destroy(state);
}

const aspen_sink_ops_t aspen_sink_merge_ops = {
   .operator_name = "MergeOperator",
   .parse = merge_parse,
   .open = merge_open,
   .write = merge_write,
   .flush = merge_flush,
   .close = merge_close,
};

/* ---- $emit to a time-series collection (options: sink_timeseries.c) ---- */

static bool
timeseries_open(aspen_runtime_t *rt, const bson_t *spec, void **state,
                aspen_error_t *err)
{
   *state = aspen_coll_writer_new_timeseries(aspen_rt_conns(rt), spec, err);
   return *state != NULL;
}

/* The rest is $merge's: the writer knows which mode it is in. */
const aspen_sink_ops_t aspen_sink_timeseries_ops = {
   .operator_name = ASPEN_EMIT_TS_OPERATOR,
   .parse = aspen__emit_ts_parse,
   .open = timeseries_open,
   .write = merge_write,
   .flush = merge_flush,
   .close = merge_close,
};
