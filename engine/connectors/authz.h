/*
 * authz.h - what stream processors may reach through Atlas connections
 * (authz.c): each connection's dbRoleToExecute checked against the
 * namespaces a pipeline reads and writes, at create, modify and start for
 * literal ones and per document for computed ones.
 */
#ifndef ASPEN_ENGINE_CONNECTORS_AUTHZ_H
#define ASPEN_ENGINE_CONNECTORS_AUTHZ_H

#include "connectors/connections.h"
#include "runtime/pipeline.h"

/* True when `conn`'s dbRoleToExecute allows every ASPEN_ENGINE_ACT_* in
 * `acts` on db.coll (coll NULL: the database; db NULL: every database), or
 * when `conn` has no grant (no hook). Otherwise false with err = 422
 * StreamProcessorAtlasUnauthorizedError naming the connection, its role,
 * the action and the namespace. Any thread. */
bool aspen__conn_authorize(const aspen_conn_t *conn, unsigned acts,
                           const char *db, const char *coll,
                           aspen_error_t *err);
/* The same for what the stages of `pipeline` (an array the engine sends to
 * `conn`'s server to run on a collection of database `db`: $lookup's
 * pipeline, a change stream's config.pipeline) reach besides their input:
 * a nested $lookup's or $unionWith's collection, an $out or $merge target.
 * Any thread. */
bool aspen__conn_authorize_stages(const aspen_conn_t *conn, const char *db,
                                  const bson_t *pipeline, aspen_error_t *err);
/* What a $merge (its argument `spec`) does to its target: insert and
 * update (upserts), plus remove when whenMatched is "delete" or an
 * expression that may say so. */
unsigned aspen__merge_required_acts(const bson_t *spec);
/* Checks every literal namespace the parsed pipeline `pl` reaches through
 * an Atlas connection (the change-stream $source, $lookup and
 * $cachedLookup, $merge, a time-series $emit), and options.dlq, against
 * the connections' roles: false with the first refusal (as
 * aspen__conn_authorize, followed by where: "(at pipeline[2].$merge)").
 * Namespaces given as expressions are checked per document by the sinks.
 * Create, modify and start call it (command thread). */
bool aspen__pipeline_authorize(const aspen_pipeline_t *pl,
                               const bson_t *options,
                               const aspen_conns_t *conns,
                               aspen_error_t *err);

#endif /* ASPEN_ENGINE_CONNECTORS_AUTHZ_H */
