/*
 * connections.h - the engine's connection registry (connections.c): the
 * connections configured in streams.connections (sample_stream_solar,
 * Atlas, Kafka), looked up by name when a pipeline is parsed and opened
 * when it runs.
 */
#ifndef ASPEN_ENGINE_CONNECTORS_CONNECTIONS_H
#define ASPEN_ENGINE_CONNECTORS_CONNECTIONS_H

#include "base/parse.h"
#include "engine.h"

typedef struct aspen_conn aspen_conn_t;

typedef enum {
   ASPEN_CONN_SAMPLE_SOLAR,
   ASPEN_CONN_ATLAS,
   ASPEN_CONN_KAFKA,
} aspen_conn_type_t;

struct aspen_conn {
   char *name;
   aspen_conn_type_t type;
   char *uri;  /* atlas */
   bson_t doc; /* as configured, for listings (secrets removed) */
   /* kafka: librdkafka properties (name -> string) from bootstrapServers,
    * security and config; holds secrets, so never listed or logged. */
   bson_t kafka_conf;
   /* kafka with "local": true: the broker aspen hosts for it (kafka.c),
    * owned by the registry and destroyed with it. NULL otherwise. */
   struct aspen_kafka_local *kafka_local;
   /* atlas: the role every database access through it runs as (ASP's
    * dbRoleToExecute; readWriteAnyDatabase, BUILT_IN, when the config
    * names none), its grant from the authorization hook, and the hook
    * (a copy; grant NULL and no checks when the engine has none). */
   char *role;
   bool role_custom;
   void *grant;
   aspen_engine_authz_t authz;
};

struct aspen_conns {
   aspen_conn_t *items;
   size_t n;
};

/* Loads the registry from the config's "connections" array (NULL: only
 * sample_stream_solar). Atlas connections' dbRoleToExecute roles are
 * resolved through `authz` (NULL: listed, not enforced). False with err
 * naming the config key on anything invalid, an unknown role included. */
bool aspen_conns_load(aspen_conns_t *conns, const bson_t *list,
                      const char *backend_uri,
                      const aspen_engine_authz_t *authz, aspen_error_t *err);
void aspen_conns_cleanup(aspen_conns_t *conns);
const aspen_conn_t *aspen_conns_find(const aspen_conns_t *conns,
                                     const char *name);
const char *aspen_conn_type_name(aspen_conn_type_t t);

/* A mongoc client for an atlas connection, for the one thread that calls
 * it (processor thread: sources, $lookup, $merge, the DLQ). The URI's
 * serverSelectionTimeoutMS defaults to 5 s. With `ping`, the server is
 * pinged first, so an unreachable one fails here. NULL on failure, err set
 * with code 421 StreamProcessorAtlasConnectionError. The caller owns the
 * client (mongoc_client_destroy). Blocking; never on the event loop. */
struct _mongoc_client_t;
struct _mongoc_client_t *aspen__conn_client_new(const aspen_conn_t *conn,
                                                bool ping,
                                                aspen_error_t *err);

#endif /* ASPEN_ENGINE_CONNECTORS_CONNECTIONS_H */
