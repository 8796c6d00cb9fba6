/*
 * sources.c - the table of sink implementations by kind.
 */
#include "runtime/sink.h"

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
