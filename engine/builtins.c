/*
 * builtins.c - the catalog aspen ships, built from the tables' rows: the
 * stages of stages/stages.def and the connection types of
 * connectors/connectors.def. Only the engine's top (engine.c, and the
 * tests and benchmarks that stand in for it) asks for it; everything below
 * is handed it.
 */
#include "builtins.h"
#include "connectors/authz.h"
#include "connectors/connectors.h"
#include "connectors/kafka_int.h"
#include "connectors/source_change_stream.h"

/* Each row's ops, defined in the stage's own file. */
#define ASPEN_STAGE(name, ops, placement) extern const aspen_stage_ops_t ops;
#include "stages/stages.def"
#undef ASPEN_STAGE

#define MAIN ASPEN_PLACE_MAIN
#define WINDOW ASPEN_PLACE_WINDOW
#define SINK ASPEN_PLACE_SINK
#define TERMINAL ASPEN_PLACE_TERMINAL
#define OPTIONS ASPEN_SPEC_OPTIONS

static const aspen_stage_def_t stages[] = {
#define ASPEN_STAGE(name, ops, placement) {name, &ops, placement},
#include "stages/stages.def"
#undef ASPEN_STAGE
};

#undef MAIN
#undef WINDOW
#undef SINK
#undef TERMINAL
#undef OPTIONS

static const aspen_connector_t connectors[] = {
#define ASPEN_CONNECTOR(type_name, conn, source, emit, merge) \
   {type_name, conn, source, emit, merge},
#include "connectors/connectors.def"
#undef ASPEN_CONNECTOR
};

/* The catalog's check: the Atlas connections' roles (authz.c), an
 * initialSync's rules (source_change_stream.c), then exactlyOnce's Kafka
 * transactions (kafka_txn.c). */
static bool
check_pipeline(const aspen_pipeline_t *pl, const bson_t *options,
               const aspen_conns_t *conns, bool ephemeral, aspen_error_t *err)
{
   bson_iter_t it;
   if (!aspen__pipeline_authorize(pl, options, conns, err) ||
       !aspen__change_stream_check(pl, err)) {
      return false;
   }
   if (options && bson_iter_init_find(&it, options, "exactlyOnce") &&
       bson_iter_as_bool(&it)) {
      return aspen__kafka_txn_check(pl, conns, ephemeral, err);
   }
   return true;
}

static const aspen_catalog_t catalog = {
   .stages = stages,
   .n_stages = sizeof stages / sizeof stages[0],
   .connectors = connectors,
   .n_connectors = sizeof connectors / sizeof connectors[0],
   .documents = &aspen_source_documents_ops,
   .check = check_pipeline,
};

const aspen_catalog_t *
aspen_builtins_catalog(void)
{
   return &catalog;
}
