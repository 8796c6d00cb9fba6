/*
 * catalog.h - the kinds the runtime is handed instead of naming them: the
 * stage table (rows of stages/stages.def) and the connector table (rows of
 * connectors/connectors.def: a connection type, its configuration, its
 * $source, its $emit and $merge sinks), and the registry of configured
 * connections, each an instance of a connector kind.
 *
 * The catalog is built at the top of the engine (builtins.c) and handed
 * down: to the registry, which loads the configured connections through
 * their kinds' parsers, and to the pipeline parser in its parse context,
 * which finds a stage by name here and a connection's source or sinks
 * through its kind. So the runtime never names a stage or a connector.
 * Read-only once built: any thread.
 */
#ifndef ASPEN_ENGINE_RUNTIME_CATALOG_H
#define ASPEN_ENGINE_RUNTIME_CATALOG_H

#include "runtime/sink.h"

/* A row of the stage table (stages/stages.def). */
typedef struct {
   const char *name;             /* "$match" */
   const aspen_stage_ops_t *ops;
   unsigned place;               /* ASPEN_PLACE_* and ASPEN_SPEC_OPTIONS bits */
} aspen_stage_def_t;

/* How a connection kind is configured, listed and freed
 * (connectors/connections.h); opaque to the runtime. */
typedef struct aspen_conn_ops aspen_conn_ops_t;

/* A row of the connector table (connectors/connectors.def): a connection
 * type and what a connection of that type can be in a pipeline. */
typedef struct {
   const char *type_name;            /* config `type`, listings: "atlas" */
   const aspen_conn_ops_t *conn;     /* its configuration */
   const aspen_source_ops_t *source; /* its $source, or NULL */
   const aspen_sink_ops_t *emit;     /* its $emit sink, or NULL */
   const aspen_sink_ops_t *merge;    /* its $merge sink, or NULL */
} aspen_connector_t;

struct aspen_catalog {
   const aspen_stage_def_t *stages;
   size_t n_stages;
   const aspen_connector_t *connectors;
   size_t n_connectors;
   /* The $source that names no connection ({documents: [...]}). */
   const aspen_source_ops_t *documents;
   /* What the connectors require of a parsed pipeline `pl` and the
    * processor's `options` beyond its stages' arguments: the namespaces
    * its Atlas connections' roles allow, and what options.exactlyOnce
    * needs (`ephemeral`: sp.process). Called when a processor is created
    * or modified and at every start (command thread), through
    * aspen_catalog_check; false with the error to give. NULL: nothing
    * more is required. */
   bool (*check)(const aspen_pipeline_t *pl, const bson_t *options,
                 const aspen_conns_t *conns, bool ephemeral,
                 aspen_error_t *err);
};

/* The stage table's row for `name` ("$match"); NULL for a name that is no
 * stage. Any thread. */
const aspen_stage_def_t *aspen_catalog_stage(const aspen_catalog_t *cat,
                                             const char *name);

/* The catalog's check of a parsed pipeline (aspen_catalog_t.check): true
 * when it has none or it passes; false with err set. Command thread. */
bool aspen_catalog_check(const aspen_catalog_t *cat, const aspen_pipeline_t *pl,
                         const bson_t *options, const aspen_conns_t *conns,
                         bool ephemeral, aspen_error_t *err);

/* ---- the registry of configured connections ------------------------------ */

/* A connection: a name, its kind, and what its kind parsed from the
 * configuration (connectors/connections.c loads them). */
struct aspen_conn {
   char *name;
   const aspen_connector_t *kind;
   void *opts; /* the kind's own (its conn ops); NULL for a built-in one */
   bson_t doc; /* {name, type, ...} for listings: no secrets */
};

struct aspen_conns {
   aspen_conn_t *items;
   size_t n;
};

/* The connection named `name`, or NULL. Any thread (the registry never
 * changes once loaded). */
const aspen_conn_t *aspen_conns_find(const aspen_conns_t *conns,
                                     const char *name);

#endif /* ASPEN_ENGINE_RUNTIME_CATALOG_H */
