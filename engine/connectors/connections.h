/*
 * connections.h - the engine's connection registry (connections.c): the
 * connections configured in streams.connections plus the built-in ones,
 * each of a kind of the connector table (connectors.def), looked up by
 * name (runtime/catalog.h) when a pipeline is parsed and opened when it
 * runs; and what a connection kind provides to be configured
 * (aspen_conn_ops_t), one file per kind (conn_atlas.c, conn_kafka.c).
 */
#ifndef ASPEN_ENGINE_CONNECTORS_CONNECTIONS_H
#define ASPEN_ENGINE_CONNECTORS_CONNECTIONS_H

#include "engine_types.h"
#include "runtime/catalog.h"

/* What a kind's parser is told about the config entry it parses. */
typedef struct {
   const char *name;        /* the connection's name */
   const char *where;       /* "connections[2]": config errors name it */
   const char *backend_uri; /* aspen's backend, or NULL */
   /* The authorization hook roles are resolved through (NULL: none). */
   const aspen_engine_authz_t *authz;
} aspen_conn_cfg_t;

struct aspen_conn_ops {
   /* The name of the one connection of this kind every registry has
    * ("sample_stream_solar"), or NULL. */
   const char *builtin;
   /* The `type` listings show, when it is not the config's type name
    * (the sample's: ASP lists it as "inmemory"); NULL: the type name. */
   const char *listed_type;
   /* The config keys of this kind besides name and type (NULL-terminated;
    * NULL with `parse` NULL: a kind that is not configured). The registry
    * refuses a key no kind has, and a key of another kind. */
   const char *const *keys;
   /* Parses a config entry of this kind (its keys are the kind's) into
    * *opts, the kind's own options, kept in aspen_conn_t.opts. False with
    * err naming the config key (codes as connections.c's), *opts NULL and
    * nothing left to free. Command thread, at startup. */
   bool (*parse)(const aspen_conn_cfg_t *cfg, const bson_t *entry,
                 void **opts, aspen_error_t *err);
   /* Appends what listings show of `opts` (NULL for the built-in
    * connection) after {name, type}: never a secret (URIs through
    * aspen_uri_redact). NULL: nothing. */
   void (*list)(const void *opts, bson_t *doc);
   /* Frees `opts` (NULL is a no-op); the registry's clients are gone by
    * then. NULL: nothing to free. */
   void (*destroy)(void *opts);
};

/* For kinds' parsers: reads config key `key` of entry `where` (iterator
 * `it`) as a non-empty string into *out (a copy; a previous *out is
 * freed). False with err naming the key. */
bool aspen__conn_parse_string(const bson_iter_t *it, const char *where,
                              const char *key, char **out,
                              aspen_error_t *err);
/* The same for an http:// or https:// URL, kept without trailing '/'. */
bool aspen__conn_parse_url(const bson_iter_t *it, const char *where,
                           const char *key, char **out, aspen_error_t *err);

/* Loads the registry from the config's "connections" array (NULL: the
 * built-in ones only), each entry parsed by its type's kind in `catalog`
 * (no type: atlas). Atlas connections' dbRoleToExecute roles are resolved
 * through `authz` (NULL: listed, not enforced). False with err naming the
 * config key on anything invalid, an unknown role included; the registry
 * still wants aspen_conns_cleanup then. */
bool aspen_conns_load(aspen_conns_t *conns, const aspen_catalog_t *catalog,
                      const bson_t *list, const char *backend_uri,
                      const aspen_engine_authz_t *authz, aspen_error_t *err);
void aspen_conns_cleanup(aspen_conns_t *conns);

#endif /* ASPEN_ENGINE_CONNECTORS_CONNECTIONS_H */
