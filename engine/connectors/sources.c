/*
 * sources.c - the tables of $source and sink implementations by kind.
 */
#include "runtime/sink.h"

extern const aspen_source_ops_t aspen_source_documents_ops;
extern const aspen_source_ops_t aspen_source_solar_ops;
extern const aspen_source_ops_t aspen_source_change_stream_ops;
extern const aspen_source_ops_t aspen_source_kafka_ops;

const aspen_source_ops_t *
aspen_source_ops_for(aspen_source_kind_t kind)
{
   switch (kind) {
   case ASPEN_SOURCE_DOCUMENTS:
      return &aspen_source_documents_ops;
   case ASPEN_SOURCE_SOLAR:
      return &aspen_source_solar_ops;
   case ASPEN_SOURCE_KAFKA:
      return &aspen_source_kafka_ops;
   case ASPEN_SOURCE_CHANGE_STREAM:
      break;
   }
   return &aspen_source_change_stream_ops;
}

extern const aspen_sink_ops_t aspen_sink_merge_ops;
extern const aspen_sink_ops_t aspen_sink_emit_ops;
extern const aspen_sink_ops_t aspen_sink_timeseries_ops;

const aspen_sink_ops_t *
aspen_sink_ops_for(aspen_sink_kind_t kind)
{
   switch (kind) {
   case ASPEN_SINK_MERGE:
      return &aspen_sink_merge_ops;
   case ASPEN_SINK_EMIT:
      return &aspen_sink_emit_ops;
   case ASPEN_SINK_TIMESERIES:
      return &aspen_sink_timeseries_ops;
   case ASPEN_SINK_NONE:
      break;
   }
   return NULL;
}
