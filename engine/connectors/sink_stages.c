/*
 * sink_stages.c - the $merge and $emit stages of the stage table: which
 * sink a pipeline ends in. Their argument names a connection ($merge:
 * into.connectionName, $emit: connectionName); the connection's row of the
 * connector table (connectors.def) says which sink it has for the stage,
 * and that sink's parse validates the argument. The pipeline then runs
 * that sink (pl->sink), with the argument as its spec.
 *
 * A connection the argument does not name, that does not exist, or whose
 * kind has no such sink is reported by the sink whose messages ASP gives
 * for it: the Atlas $merge ("Only atlas merge connection type is currently
 * supported") and the Kafka $emit ("Expected Atlas connection for $emit,
 * ..."), each after checking the rest of the argument as it always does.
 * Create time, no I/O, any thread.
 */
#include "connectors/connectors.h"

#include <string.h>

/* The connection the argument `spec` names with its connectionName, or
 * with its `in` object's (NULL: its own), or NULL. */
static const aspen_conn_t *
named_conn(const bson_t *spec, const char *in, const aspen_conns_t *conns)
{
   bson_t sub;
   bson_iter_t it;
   if (in) {
      if (!bson_iter_init_find(&it, spec, in) || !aspen_bson_view(&it, &sub)) {
         return NULL;
      }
      spec = &sub;
   }
   const char *name = aspen_bson_utf8(spec, "connectionName");
   return name ? aspen_conns_find(conns, name) : NULL;
}

/* Parses a sink stage: its connection's sink for the stage (`merge` or
 * emit), else `fallback`, validates the argument, and becomes the
 * pipeline's sink. */
static bool
sink_stage_parse(aspen_stage_t *st, const bson_iter_t *arg,
                 aspen_parse_ctx_t *pc, bool merge,
                 const aspen_sink_ops_t *fallback, aspen_error_t *err)
{
   const char *stage = merge ? "$merge" : "$emit";
   bson_t spec;
   if (!BSON_ITER_HOLDS_DOCUMENT(arg) || !aspen_bson_view(arg, &spec)) {
      aspen_parse_error(err, pc, NULL, "%s must be an object", stage);
      return false;
   }
   const aspen_conn_t *conn =
      named_conn(&spec, merge ? "into" : NULL, pc->conns);
   const aspen_sink_ops_t *sink =
      conn ? (merge ? conn->kind->merge : conn->kind->emit) : NULL;
   if (!sink) {
      sink = fallback; /* it reports the connection */
   }
   if (!sink->parse(&spec, pc, err)) {
      return false;
   }
   st->pl->sink = sink;
   return true;
}

static bool
merge_stage_parse(aspen_stage_t *st, const bson_iter_t *arg,
                  aspen_parse_ctx_t *pc, aspen_error_t *err)
{
   return sink_stage_parse(st, arg, pc, true, &aspen_sink_merge_ops, err);
}

static bool
emit_stage_parse(aspen_stage_t *st, const bson_iter_t *arg,
                 aspen_parse_ctx_t *pc, aspen_error_t *err)
{
   return sink_stage_parse(st, arg, pc, false, &aspen_sink_emit_ops, err);
}

/* Parse-time stages only: the pipeline takes the sink out of its chain. */
const aspen_stage_ops_t aspen_stage_merge_ops = {
   .name = "$merge",
   .operator_name = "MergeOperator",
   .parse = merge_stage_parse,
};

const aspen_stage_ops_t aspen_stage_emit_ops = {
   .name = "$emit",
   .operator_name = "KafkaEmitOperator",
   .parse = emit_stage_parse,
};
