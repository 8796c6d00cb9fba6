/*
 * connections.c - the connection registry: what $source, $merge and the DLQ
 * name with connectionName. It comes from aspen's config file ("connections":
 * [{name, type, ...}]) plus the built-in sample_stream_solar. Listings never
 * show secrets (wire/redact.c decides what is one): URIs are listed with
 * their credentials and secret options redacted, and a Kafka connection
 * without its password and with its secret config properties redacted. An
 * atlas connection lists the role its database access runs as
 * (dbRoleToExecute; authz.c enforces it).
 */
#include "connectors/kafka_int.h"

#include <mongoc/mongoc.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

const char *
aspen_conn_type_name(aspen_conn_type_t t)
{
   switch (t) {
   case ASPEN_CONN_SAMPLE_SOLAR:
      return "sample_solar";
   case ASPEN_CONN_ATLAS:
      return "atlas";
   case ASPEN_CONN_KAFKA:
      return "kafka";
   }
   return "unknown";
}

/* The registry is one array, allocated once for `cap` connections and never
 * moved: a bson_t that has grown onto the heap points into itself, so
 * moving one (as realloc would) leaves it dangling. bson_t also wants
 * 128-byte alignment. */
static void
reserve(aspen_conns_t *conns, size_t cap)
{
   size_t size = cap * sizeof *conns->items;
   size = (size + 127) / 128 * 128;
   conns->items = aligned_alloc(128, size);
   if (!conns->items) {
      abort();
   }
   memset(conns->items, 0, size);
}

static aspen_conn_t *
add(aspen_conns_t *conns, const char *name, aspen_conn_type_t type)
{
   aspen_conn_t *c = &conns->items[conns->n++];
   memset(c, 0, sizeof *c);
   c->name = aspen_xstrdup(name);
   c->type = type;
   bson_init(&c->doc);
   bson_init(&c->kafka_conf);
   BSON_APPEND_UTF8(&c->doc, "name", name);
   BSON_APPEND_UTF8(&c->doc, "type", aspen_conn_type_name(type));
   return c;
}

/* ---- kafka connections ------------------------------------------------ */

static bool
one_of(const char *v, const char *const *allowed)
{
   for (; *allowed; allowed++) {
      if (strcmp(v, *allowed) == 0) {
         return true;
      }
   }
   return false;
}

/* Reads a kafka connection's bootstrapServers, security {protocol,
 * mechanism, username, password, caFile} and config {librdkafka property:
 * string | number | bool} into conn->kafka_conf (what the client gets) and
 * conn->doc (what listings show: everything but the secrets). With `local`
 * it starts the broker aspen hosts for the connection instead, and its
 * address is the bootstrapServers. */
static bool
kafka_settings(aspen_conn_t *conn, const bson_t *c, bool local,
               const char *where, aspen_error_t *err)
{
   static const char *const protocols[] = {"PLAINTEXT", "SSL",
                                           "SASL_PLAINTEXT", "SASL_SSL",
                                           NULL};
   static const char *const mechanisms[] = {"PLAIN", "SCRAM-SHA-256",
                                            "SCRAM-SHA-512", NULL};
   bson_iter_t it;
   const char *bootstrap;
   if (local) {
      /* The mock broker speaks PLAINTEXT only, so security has no use. */
      if (bson_has_field(c, "bootstrapServers") ||
          bson_has_field(c, "security")) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "config key '%s.local': a local broker has no "
                         "bootstrapServers or security (it is PLAINTEXT on "
                         "127.0.0.1, at an address aspen picks)",
                         where);
         return false;
      }
      conn->kafka_local = aspen__kafka_local_new(conn->name, err);
      if (!conn->kafka_local) {
         return false;
      }
      bootstrap = aspen__kafka_local_bootstrap(conn->kafka_local);
   } else if (!bson_iter_init_find(&it, c, "bootstrapServers") ||
              !*bson_iter_utf8(&it, NULL)) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "config key '%s.bootstrapServers' is required for a "
                      "kafka connection (or \"local\": true for a broker "
                      "aspen hosts)",
                      where);
      return false;
   } else {
      bootstrap = bson_iter_utf8(&it, NULL);
   }
   BSON_APPEND_UTF8(&conn->kafka_conf, "bootstrap.servers", bootstrap);
   BSON_APPEND_UTF8(&conn->doc, "bootstrapServers", bootstrap);
   if (local) {
      BSON_APPEND_BOOL(&conn->doc, "local", true);
   }

   if (bson_iter_init_find(&it, c, "security")) {
      if (!BSON_ITER_HOLDS_DOCUMENT(&it)) {
         aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                         "config key '%s.security' must be an object", where);
         return false;
      }
      const char *protocol = NULL, *mechanism = NULL, *user = NULL,
                 *password = NULL, *ca = NULL;
      bson_iter_t si;
      bson_iter_recurse(&it, &si);
      while (bson_iter_next(&si)) {
         const char *k = bson_iter_key(&si);
         const char **slot = strcmp(k, "protocol") == 0    ? &protocol
                             : strcmp(k, "mechanism") == 0 ? &mechanism
                             : strcmp(k, "username") == 0  ? &user
                             : strcmp(k, "password") == 0  ? &password
                             : strcmp(k, "caFile") == 0    ? &ca
                                                           : NULL;
         if (!slot) {
            aspen_error_set(err, ASPEN_ERR_NoSuchKey,
                            "unknown config key '%s.security.%s'", where, k);
            return false;
         }
         if (!BSON_ITER_HOLDS_UTF8(&si)) {
            aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                            "config key '%s.security.%s' must be a string",
                            where, k);
            return false;
         }
         *slot = bson_iter_utf8(&si, NULL);
      }
      if (protocol && !one_of(protocol, protocols)) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "config key '%s.security.protocol' must be "
                         "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL, not "
                         "'%s'",
                         where, protocol);
         return false;
      }
      if (mechanism && !one_of(mechanism, mechanisms)) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "config key '%s.security.mechanism' must be PLAIN, "
                         "SCRAM-SHA-256 or SCRAM-SHA-512, not '%s'",
                         where, mechanism);
         return false;
      }
      bool sasl = protocol && strncmp(protocol, "SASL_", 5) == 0;
      if (sasl && (!mechanism || !user || !password)) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "config key '%s.security': protocol %s needs "
                         "mechanism, username and password",
                         where, protocol);
         return false;
      }
      if (!sasl && (mechanism || user || password)) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "config key '%s.security': mechanism, username and "
                         "password need protocol SASL_PLAINTEXT or SASL_SSL",
                         where);
         return false;
      }
      bson_t listed;
      BSON_APPEND_DOCUMENT_BEGIN(&conn->doc, "security", &listed);
      if (protocol) {
         BSON_APPEND_UTF8(&conn->kafka_conf, "security.protocol", protocol);
         BSON_APPEND_UTF8(&listed, "protocol", protocol);
      }
      if (mechanism) {
         BSON_APPEND_UTF8(&conn->kafka_conf, "sasl.mechanism", mechanism);
         BSON_APPEND_UTF8(&listed, "mechanism", mechanism);
      }
      if (user) {
         BSON_APPEND_UTF8(&conn->kafka_conf, "sasl.username", user);
         BSON_APPEND_UTF8(&listed, "username", user);
      }
      if (password) {
         BSON_APPEND_UTF8(&conn->kafka_conf, "sasl.password", password);
      }
      if (ca) {
         BSON_APPEND_UTF8(&conn->kafka_conf, "ssl.ca.location", ca);
         BSON_APPEND_UTF8(&listed, "caFile", ca);
      }
      bson_append_document_end(&conn->doc, &listed);
   }

   if (bson_iter_init_find(&it, c, "config")) {
      if (!BSON_ITER_HOLDS_DOCUMENT(&it)) {
         aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                         "config key '%s.config' must be an object", where);
         return false;
      }
      bson_t listed;
      bson_iter_t ci;
      BSON_APPEND_DOCUMENT_BEGIN(&conn->doc, "config", &listed);
      bson_iter_recurse(&it, &ci);
      while (bson_iter_next(&ci)) {
         const char *k = bson_iter_key(&ci);
         char num[64];
         const char *v = NULL;
         if (BSON_ITER_HOLDS_UTF8(&ci)) {
            v = bson_iter_utf8(&ci, NULL);
         } else if (BSON_ITER_HOLDS_BOOL(&ci)) {
            v = bson_iter_bool(&ci) ? "true" : "false";
         } else if (BSON_ITER_HOLDS_INT32(&ci) || BSON_ITER_HOLDS_INT64(&ci)) {
            snprintf(num, sizeof num, "%" PRId64, bson_iter_as_int64(&ci));
            v = num;
         } else if (BSON_ITER_HOLDS_DOUBLE(&ci)) {
            snprintf(num, sizeof num, "%.17g", bson_iter_double(&ci));
            v = num;
         }
         if (!v) {
            aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                            "config key '%s.config.%s' must be a string, a "
                            "number or a boolean",
                            where, k);
            bson_append_document_end(&conn->doc, &listed);
            return false;
         }
         bson_iter_t dup;
         if (bson_iter_init_find(&dup, &conn->kafka_conf, k)) {
            aspen_error_set(err, ASPEN_ERR_BadValue,
                            "config key '%s.config.%s' is already set by "
                            "bootstrapServers or security",
                            where, k);
            bson_append_document_end(&conn->doc, &listed);
            return false;
         }
         BSON_APPEND_UTF8(&conn->kafka_conf, k, v);
         /* A secret property is given to the client, and listed only as
          * set. */
         if (aspen_secret_name(k)) {
            BSON_APPEND_UTF8(&listed, k, ASPEN_REDACTED);
         } else {
            bson_append_iter(&listed, k, -1, &ci);
         }
      }
      bson_append_document_end(&conn->doc, &listed);
   }
   return true;
}

/* ---- atlas connections' roles ------------------------------------------ */

/* ASP's default execution role: read and write on any database, so a
 * connection configured without dbRoleToExecute reaches what it did
 * before aspen had the option. */
#define DEFAULT_ROLE "readWriteAnyDatabase"

/* Reads an atlas connection's dbRoleToExecute ({role, type: "BUILT_IN" |
 * "CUSTOM"}; `it` NULL when the config has none: the default), resolves it
 * through the hook and lists it. */
static bool
atlas_role(aspen_conn_t *conn, const bson_iter_t *it,
           const aspen_engine_authz_t *authz, const char *where,
           aspen_error_t *err)
{
   const char *role = DEFAULT_ROLE, *type = "BUILT_IN";
   if (it) {
      bson_iter_t ri;
      if (!BSON_ITER_HOLDS_DOCUMENT(it) || !bson_iter_recurse(it, &ri)) {
         aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                         "config key '%s.dbRoleToExecute' must be an object "
                         "{role, type}",
                         where);
         return false;
      }
      role = NULL;
      while (bson_iter_next(&ri)) {
         const char *k = bson_iter_key(&ri);
         const char **slot = strcmp(k, "role") == 0   ? &role
                             : strcmp(k, "type") == 0 ? &type
                                                      : NULL;
         if (!slot) {
            aspen_error_set(err, ASPEN_ERR_NoSuchKey,
                            "unknown config key '%s.dbRoleToExecute.%s' (it "
                            "has role and type)",
                            where, k);
            return false;
         }
         if (!BSON_ITER_HOLDS_UTF8(&ri) || !*bson_iter_utf8(&ri, NULL)) {
            aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                            "config key '%s.dbRoleToExecute.%s' must be a "
                            "non-empty string",
                            where, k);
            return false;
         }
         *slot = bson_iter_utf8(&ri, NULL);
      }
      if (!role) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "config key '%s.dbRoleToExecute.role' is required",
                         where);
         return false;
      }
      if (strcmp(type, "BUILT_IN") != 0 && strcmp(type, "CUSTOM") != 0) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "config key '%s.dbRoleToExecute.type' must be "
                         "BUILT_IN or CUSTOM, not '%s'",
                         where, type);
         return false;
      }
   }
   conn->role = aspen_xstrdup(role);
   conn->role_custom = strcmp(type, "CUSTOM") == 0;
   if (authz) {
      conn->authz = *authz;
      aspen_error_t why;
      conn->grant = authz->grant_new(authz->arg, role, conn->role_custom, &why);
      if (!conn->grant) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "config key '%s.dbRoleToExecute': %s", where,
                         why.message);
         return false;
      }
   }
   bson_t listed;
   BSON_APPEND_DOCUMENT_BEGIN(&conn->doc, "dbRoleToExecute", &listed);
   BSON_APPEND_UTF8(&listed, "role", role);
   BSON_APPEND_UTF8(&listed, "type", type);
   bson_append_document_end(&conn->doc, &listed);
   return true;
}

bool
aspen_conns_load(aspen_conns_t *conns, const bson_t *list,
                 const char *backend_uri, const aspen_engine_authz_t *authz,
                 aspen_error_t *err)
{
   memset(conns, 0, sizeof *conns);
   reserve(conns, 1 + (list ? bson_count_keys(list) : 0));
   add(conns, "sample_stream_solar", ASPEN_CONN_SAMPLE_SOLAR);
   if (!list) {
      return true;
   }
   bson_iter_t it;
   bson_iter_init(&it, list);
   int i = 0;
   while (bson_iter_next(&it)) {
      char where[64];
      snprintf(where, sizeof where, "connections[%d]", i++);
      if (!BSON_ITER_HOLDS_DOCUMENT(&it)) {
         aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                         "config key '%s' must be an object", where);
         return false;
      }
      uint32_t len;
      const uint8_t *data;
      bson_t c;
      bson_iter_t ci;
      bson_iter_document(&it, &len, &data);
      (void) bson_init_static(&c, data, len);
      const char *name = NULL, *type = NULL, *uri = NULL;
      const char *bootstrap = NULL;
      bool has_security = false, has_config = false, local = false;
      bool has_role = false;
      bson_iter_t role_it;
      bson_iter_init(&ci, &c);
      while (bson_iter_next(&ci)) {
         const char *k = bson_iter_key(&ci);
         if (strcmp(k, "dbRoleToExecute") == 0) {
            /* atlas: an object, read by atlas_role below */
            role_it = ci;
            has_role = true;
            continue;
         }
         if (strcmp(k, "security") == 0 || strcmp(k, "config") == 0) {
            /* kafka: objects, read by kafka_settings below */
            *(k[0] == 's' ? &has_security : &has_config) = true;
            continue;
         }
         if (strcmp(k, "local") == 0) {
            if (!BSON_ITER_HOLDS_BOOL(&ci)) {
               aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                               "config key '%s.local' must be a boolean",
                               where);
               return false;
            }
            local = bson_iter_bool(&ci);
            continue;
         }
         const char **slot = strcmp(k, "name") == 0   ? &name
                             : strcmp(k, "type") == 0 ? &type
                             : strcmp(k, "uri") == 0  ? &uri
                             : strcmp(k, "bootstrapServers") == 0
                                ? &bootstrap
                                : NULL;
         if (!slot) {
            aspen_error_set(err, ASPEN_ERR_NoSuchKey,
                            "unknown config key '%s.%s'", where, k);
            return false;
         }
         if (!BSON_ITER_HOLDS_UTF8(&ci)) {
            aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                            "config key '%s.%s' must be a string", where, k);
            return false;
         }
         *slot = bson_iter_utf8(&ci, NULL);
      }
      if (!name || !*name) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "config key '%s.name' is required", where);
         return false;
      }
      if (aspen_conns_find(conns, name)) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "config key '%s.name': connection '%s' is defined "
                         "twice",
                         where, name);
         return false;
      }
      if ((bootstrap || has_security || has_config || local) &&
          (!type || strcmp(type, "kafka") != 0)) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "config key '%s': bootstrapServers, security, "
                         "config and local are for kafka connections only",
                         where);
         return false;
      }
      if (!type || strcmp(type, "atlas") == 0) {
         if (!uri) {
            uri = backend_uri;
         }
         if (!uri) {
            aspen_error_set(err, ASPEN_ERR_BadValue,
                            "config key '%s.uri' is required for an atlas "
                            "connection when no backend is configured",
                            where);
            return false;
         }
         aspen_conn_t *conn = add(conns, name, ASPEN_CONN_ATLAS);
         conn->uri = aspen_xstrdup(uri);
         char red[1024];
         aspen_uri_redact(uri, red, sizeof red);
         BSON_APPEND_UTF8(&conn->doc, "uri", red);
         if (!atlas_role(conn, has_role ? &role_it : NULL, authz, where,
                         err)) {
            return false;
         }
      } else if (has_role) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "config key '%s.dbRoleToExecute' is for atlas "
                         "connections only",
                         where);
         return false;
      } else if (strcmp(type, "kafka") == 0) {
         if (uri) {
            aspen_error_set(err, ASPEN_ERR_BadValue,
                            "config key '%s.uri' is for atlas connections; "
                            "a kafka connection has bootstrapServers",
                            where);
            return false;
         }
         aspen_conn_t *conn = add(conns, name, ASPEN_CONN_KAFKA);
         if (!kafka_settings(conn, &c, local, where, err)) {
            return false;
         }
      } else {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "config key '%s.type' must be 'atlas' or 'kafka', "
                         "not '%s'",
                         where, type);
         return false;
      }
   }
   return true;
}

void
aspen_conns_cleanup(aspen_conns_t *conns)
{
   for (size_t i = 0; i < conns->n; i++) {
      free(conns->items[i].name);
      free(conns->items[i].uri);
      free(conns->items[i].role);
      if (conns->items[i].grant) {
         conns->items[i].authz.grant_destroy(conns->items[i].grant);
      }
      bson_destroy(&conns->items[i].doc);
      bson_destroy(&conns->items[i].kafka_conf);
      /* Last: processors (its clients) are gone by now. */
      aspen__kafka_local_destroy(conns->items[i].kafka_local);
   }
   free(conns->items);
   memset(conns, 0, sizeof *conns);
}

const aspen_conn_t *
aspen_conns_find(const aspen_conns_t *conns, const char *name)
{
   for (size_t i = 0; i < conns->n; i++) {
      if (strcmp(conns->items[i].name, name) == 0) {
         return &conns->items[i];
      }
   }
   return NULL;
}

mongoc_client_t *
aspen__conn_client_new(const aspen_conn_t *conn, bool ping, aspen_error_t *err)
{
   bson_error_t berr;
   mongoc_uri_t *uri = conn->uri ? mongoc_uri_new_with_error(conn->uri, &berr)
                                 : NULL;
   if (!uri) {
      aspen_error_set(err, ASPEN_ERR_StreamProcessorAtlasConnectionError,
                      "connection '%s' has an invalid URI: %s", conn->name,
                      conn->uri ? berr.message : "(none)");
      return NULL;
   }
   if (!mongoc_uri_has_option(uri, MONGOC_URI_SERVERSELECTIONTIMEOUTMS)) {
      mongoc_uri_set_option_as_int32(uri, MONGOC_URI_SERVERSELECTIONTIMEOUTMS,
                                     5000);
   }
   mongoc_client_t *client = mongoc_client_new_from_uri(uri);
   mongoc_uri_destroy(uri);
   if (!client) {
      aspen_error_set(err, ASPEN_ERR_StreamProcessorAtlasConnectionError,
                      "cannot create a client for connection '%s'",
                      conn->name);
      return NULL;
   }
   mongoc_client_set_error_api(client, MONGOC_ERROR_API_VERSION_2);
   mongoc_client_set_appname(client, "aspen-processor");
   if (ping) {
      bson_t cmd = BSON_INITIALIZER;
      BSON_APPEND_INT32(&cmd, "ping", 1);
      bool ok = mongoc_client_command_simple(client, "admin", &cmd, NULL, NULL,
                                             &berr);
      bson_destroy(&cmd);
      if (!ok) {
         aspen_error_set(err, ASPEN_ERR_StreamProcessorAtlasConnectionError,
                         "cannot reach connection '%s': %s", conn->name,
                         berr.message);
         mongoc_client_destroy(client);
         return NULL;
      }
   }
   return client;
}
