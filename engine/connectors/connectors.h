/*
 * connectors.h - the ops of every connector kind, as the rows of
 * connectors.def name them: each connection type's configuration
 * (conn_<type>.c, source_solar.c), its $source (source_<kind>.c) and its
 * sinks (sink_<kind>.c), and the $source that needs no connection
 * (source_documents.c). engine/builtins.c builds the tables from them;
 * code of connectors/ that must tell one kind from another compares with
 * them (pl->source.ops == &aspen_source_kafka_ops).
 */
#ifndef ASPEN_ENGINE_CONNECTORS_CONNECTORS_H
#define ASPEN_ENGINE_CONNECTORS_CONNECTORS_H

#include "connectors/connections.h"

/* Connection types (connectors.def's conn_ops). */
extern const aspen_conn_ops_t aspen_conn_solar_ops;
extern const aspen_conn_ops_t aspen_conn_atlas_ops;
extern const aspen_conn_ops_t aspen_conn_kafka_ops;
extern const aspen_conn_ops_t aspen_conn_schema_registry_ops;
extern const aspen_conn_ops_t aspen_conn_https_ops;
extern const aspen_conn_ops_t aspen_conn_lambda_ops;
extern const aspen_conn_ops_t aspen_conn_s3_ops;
extern const aspen_conn_ops_t aspen_conn_azure_blob_ops;
extern const aspen_conn_ops_t aspen_conn_kinesis_ops;

/* Sources. */
extern const aspen_source_ops_t aspen_source_documents_ops;
extern const aspen_source_ops_t aspen_source_solar_ops;
extern const aspen_source_ops_t aspen_source_change_stream_ops;
extern const aspen_source_ops_t aspen_source_kafka_ops;
extern const aspen_source_ops_t aspen_source_kinesis_ops;

/* Sinks. */
extern const aspen_sink_ops_t aspen_sink_merge_ops;
extern const aspen_sink_ops_t aspen_sink_timeseries_ops;
extern const aspen_sink_ops_t aspen_sink_emit_ops;
extern const aspen_sink_ops_t aspen_sink_s3_ops;
extern const aspen_sink_ops_t aspen_sink_azure_blob_ops;
extern const aspen_sink_ops_t aspen_sink_kinesis_ops;

#endif /* ASPEN_ENGINE_CONNECTORS_CONNECTORS_H */
