/*
 * sources.c - the tables of $source and sink implementations by kind. Source
 * kinds whose implementation has not landed yet refuse to open with a
 * message saying so.
 */
#include "source.h"

#include <stdio.h>

extern const aspen_source_ops_t aspen_source_documents_ops;
extern const aspen_source_ops_t aspen_source_solar_ops;
extern const aspen_source_ops_t aspen_source_kafka_ops;

static bool
missing_open(aspen_runtime_t *rt, void **state, aspen_error_t *err)
{
   const aspen_source_spec_t *spec = aspen_rt_source_spec(rt);
   *state = NULL;
   aspen_error_set(err, ASPEN_ERR_StreamProcessorInvalidOptions,
                   "StreamProcessorInvalidOptions: a %s $source (connection "
                   "'%s') is not supported by this version of aspen yet",
                   spec->kind == ASPEN_SOURCE_KAFKA ? "Kafka" : "change stream",
                   spec->conn ? spec->conn->name : "?");
   return false;
}

static void
missing_run(aspen_runtime_t *rt, void *state)
{
   (void) rt;
   (void) state;
}

static void
missing_close(void *state)
{
   (void) state;
}

static const aspen_source_ops_t change_stream_missing = {
   "atlas", "ChangeStreamConsumerOperator", missing_open, missing_run,
   missing_close};

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
   return &change_stream_missing;
}

extern const aspen_sink_ops_t aspen_sink_merge_ops;
extern const aspen_sink_ops_t aspen_sink_emit_ops;

const aspen_sink_ops_t *
aspen_sink_ops_for(aspen_sink_kind_t kind)
{
   switch (kind) {
   case ASPEN_SINK_MERGE:
      return &aspen_sink_merge_ops;
   case ASPEN_SINK_EMIT:
      return &aspen_sink_emit_ops;
   case ASPEN_SINK_NONE:
      break;
   }
   return NULL;
}
