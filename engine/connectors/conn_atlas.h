/*
 * conn_atlas.h - Atlas connections (conn_atlas.c): a MongoDB deployment
 * named by a URI (by default aspen's backend), reached as one database
 * role, its dbRoleToExecute. What the change-stream $source, $lookup,
 * $merge, the time-series $emit and the DLQ use to reach it.
 */
#ifndef ASPEN_ENGINE_CONNECTORS_CONN_ATLAS_H
#define ASPEN_ENGINE_CONNECTORS_CONN_ATLAS_H

#include "connectors/connections.h"

/* What an Atlas connection holds (aspen_conn_t.opts of its kind). */
typedef struct {
   char *uri; /* with its credentials: never listed or logged */
   /* What listings show as ASP's `cluster`: the config's clusterName,
    * else the URI's hosts ("127.0.0.1:27017,h2:27017"). */
   char *cluster;
   /* The role every database access through it runs as (ASP's
    * dbRoleToExecute; readWriteAnyDatabase, BUILT_IN, when the config
    * names none), its grant from the authorization hook, and the hook (a
    * copy; grant NULL and no checks when the engine has none). */
   char *role;
   bool role_custom;
   void *grant;
   aspen_engine_authz_t authz;
} aspen_conn_atlas_t;

/* The Atlas side of `conn`, or NULL when it is of another kind. Any
 * thread. */
const aspen_conn_atlas_t *aspen__conn_atlas(const aspen_conn_t *conn);

/* A mongoc client for an atlas connection, for the one thread that calls
 * it (processor thread: sources, $lookup, $merge, the DLQ). The URI's
 * serverSelectionTimeoutMS defaults to 5 s. With `ping`, the server is
 * pinged first, so an unreachable one fails here. NULL on failure, err set
 * with code 421 StreamProcessorAtlasConnectionError (a connection of
 * another kind included). The caller owns the client
 * (mongoc_client_destroy). Blocking; never on the event loop. */
struct _mongoc_client_t;
struct _mongoc_client_t *aspen__conn_atlas_client_new(const aspen_conn_t *conn,
                                                      bool ping,
                                                      aspen_error_t *err);

#endif /* ASPEN_ENGINE_CONNECTORS_CONN_ATLAS_H */
