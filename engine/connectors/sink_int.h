/*
 * sink_int.h - what the sink files of connectors/ share: the target-name
 * option of $merge and the time-series $emit (sink_merge.c) and the
 * time-series form of $emit's options (sink_timeseries.c), the parse of
 * aspen_sink_timeseries_ops, and what the $emit sinks share
 * (sink_common.c): an enumerated option and a document's _stream_meta.
 * No I/O, any thread.
 */
#ifndef ASPEN_ENGINE_CONNECTORS_SINK_INT_H
#define ASPEN_ENGINE_CONNECTORS_SINK_INT_H

#include "runtime/pipeline.h"

/* Validates a target name option ($merge.into.db, $emit.coll, ...): a
 * non-empty literal or an expression; *literal says which. `opt` is the
 * option's path for the error position, `label` its name in messages.
 * False with a 420 parse error. */
bool aspen__sink_parse_target_name(const bson_iter_t *it,
                                   aspen_parse_ctx_t *pc, const char *opt,
                                   const char *label, bool *literal,
                                   aspen_error_t *err);

/* Validates the time-series form of $emit (its connection already known to
 * be an Atlas one): db, coll and the `timeseries` options with mongod's
 * rules. False with a 420 parse error. (sink_timeseries.c) */
bool aspen__emit_ts_parse(const bson_t *spec, aspen_parse_ctx_t *pc,
                          aspen_error_t *err);

/* Reads the string option `it` at `pos` after the stage's own position
 * ("config.outputFormat", named '$emit.config.outputFormat' in messages),
 * which must be one of the NULL-terminated `allowed`: *out is that entry
 * of `allowed`. False with ASP's "Enumeration value ..." 420 error
 * otherwise. */
bool aspen__sink_enum_value(const bson_iter_t *it, const char *const *allowed,
                            const aspen_parse_ctx_t *pc, const char *pos,
                            const char **out, aspen_error_t *err);

/* The connection `name` (the $emit's connectionName, NULL when it has
 * none) names in `conns`: false with ASP's "missing but a required field"
 * or "Unknown connection name" 420 error. */
const aspen_conn_t *aspen__emit_conn_find(const aspen_conns_t *conns,
                                          const char *name,
                                          const aspen_parse_ctx_t *pc,
                                          aspen_error_t *err);

/* The _stream_meta of output document `doc` as a view into it (what
 * {$meta: ...} sees in a sink's expressions); false when it has none. */
bool aspen__sink_stream_meta(const bson_t *doc, bson_t *meta);

#endif /* ASPEN_ENGINE_CONNECTORS_SINK_INT_H */
