/*
 * sink_int.h - what the sink files of connectors/ share: the target-name
 * option of $merge and the time-series $emit (sink_merge.c) and the
 * time-series form of $emit's options (sink_timeseries.c), the parse of
 * aspen_sink_timeseries_ops, and what the $emit sinks share
 * (sink_common.c): an enumerated option, connectionName and its lookup,
 * the options of $emit.config and a document's _stream_meta.
 * No I/O, any thread.
 */
#ifndef ASPEN_ENGINE_CONNECTORS_SINK_INT_H
#define ASPEN_ENGINE_CONNECTORS_SINK_INT_H

#include "connectors/kafka_int.h"
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

/* $emit.connectionName `it`: *name is its string (a view into the spec).
 * False with "connectionName must be a string" (420) otherwise. */
bool aspen__emit_conn_name(const bson_iter_t *it, const aspen_parse_ctx_t *pc,
                           const char **name, aspen_error_t *err);

/* The connection `name` (the $emit's connectionName, NULL when it has
 * none) names in `conns`, which must be of kind `kind` unless that is
 * NULL: NULL with ASP's "missing but a required field" or "Unknown
 * connection name" 420 error. */
const aspen_conn_t *aspen__emit_conn_find(const aspen_conns_t *conns,
                                          const char *name,
                                          const aspen_conn_ops_t *kind,
                                          const aspen_parse_ctx_t *pc,
                                          aspen_error_t *err);

/* One option of $emit.config that a sink has besides the JSON ones: `ci`
 * on it, `k` its name and `opt` its position ("config.<k>"). Sets *known
 * false when the sink has no such option; false with a 420 error when the
 * option is refused. */
typedef bool (*aspen__emit_config_opt_fn)(void *sink, const bson_iter_t *ci,
                                          const char *k, const char *opt,
                                          const aspen_parse_ctx_t *pc,
                                          bool *known, aspen_error_t *err);

/* Reads $emit.config `it`, which must be an object, in its order: the
 * options every JSON-writing $emit sink has, outputFormat (relaxedJson,
 * canonicalJson, and basicJson when `basic_json`) and dateFormat (default,
 * ISO8601), into *json; any other option through `opt_fn` (given `sink`),
 * and one neither knows is an unknown field. False with ASP's 420 error
 * for the first option refused. */
bool aspen__emit_config_parse(const bson_iter_t *it,
                              const aspen_parse_ctx_t *pc, bool basic_json,
                              aspen_kafka_json_opts_t *json,
                              aspen__emit_config_opt_fn opt_fn, void *sink,
                              aspen_error_t *err);

/* The _stream_meta of output document `doc` as a view into it (what
 * {$meta: ...} sees in a sink's expressions); false when it has none. */
bool aspen__sink_stream_meta(const bson_t *doc, bson_t *meta);

#endif /* ASPEN_ENGINE_CONNECTORS_SINK_INT_H */
