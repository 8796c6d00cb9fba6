/*
 * conn_atlas.c - the Atlas connection kind: its config entry
 * ({name, type: "atlas", uri, dbRoleToExecute}; no uri: aspen's backend),
 * its listing (the URI with its credentials and secret options redacted by
 * wire/redact.c, the role), and the mongoc client every use of it starts
 * from. authz.c holds processors to the role.
 */
#include "connectors/conn_atlas.h"
#include "connectors/connectors.h"

#include <mongoc/mongoc.h>
#include <stdlib.h>
#include <string.h>

/* ASP's default execution role: read and write on any database, so a
 * connection configured without dbRoleToExecute reaches what it did
 * before aspen had the option. */
#define DEFAULT_ROLE "readWriteAnyDatabase"

static void
atlas_destroy(void *opts)
{
   aspen_conn_atlas_t *a = opts;
   if (!a) {
      return;
   }
   free(a->uri);
   free(a->cluster);
   free(a->role);
   if (a->grant) {
      a->authz.grant_destroy(a->grant);
   }
   free(a);
}

/* Reads an atlas connection's dbRoleToExecute ({role, type: "BUILT_IN" |
 * "CUSTOM"}; `it` NULL when the config has none: the default) and
 * resolves it through the hook. */
static bool
atlas_role(aspen_conn_atlas_t *a, const bson_iter_t *it,
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
   a->role = aspen_xstrdup(role);
   a->role_custom = strcmp(type, "CUSTOM") == 0;
   if (authz) {
      a->authz = *authz;
      aspen_error_t why;
      a->grant = authz->grant_new(authz->arg, role, a->role_custom, &why);
      if (!a->grant) {
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "config key '%s.dbRoleToExecute': %s", where,
                         why.message);
         return false;
      }
   }
   return true;
}

/* The hosts of `uri` joined by commas ("" when it does not parse). */
static char *
uri_hosts(const char *uri)
{
   mongoc_uri_t *u = mongoc_uri_new_with_error(uri, NULL);
   char out[1024] = "";
   size_t used = 0;
   for (const mongoc_host_list_t *h = u ? mongoc_uri_get_hosts(u) : NULL; h;
        h = h->next) {
      int n = snprintf(out + used, sizeof out - used, "%s%s",
                       used ? "," : "", h->host_and_port);
      if (n < 0 || (size_t) n >= sizeof out - used) {
         break;
      }
      used += (size_t) n;
   }
   mongoc_uri_destroy(u);
   return aspen_xstrdup(out);
}

static bool
atlas_parse(const aspen_conn_cfg_t *cfg, const bson_t *entry, void **opts,
            aspen_error_t *err)
{
   *opts = NULL;
   bson_iter_t it, role_it;
   const char *uri = NULL;
   if (bson_iter_init_find(&it, entry, "uri")) {
      if (!BSON_ITER_HOLDS_UTF8(&it)) {
         aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                         "config key '%s.uri' must be a string", cfg->where);
         return false;
      }
      uri = bson_iter_utf8(&it, NULL);
   }
   if (!uri) {
      uri = cfg->backend_uri;
   }
   if (!uri) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "config key '%s.uri' is required for an atlas "
                      "connection when no backend is configured",
                      cfg->where);
      return false;
   }
   aspen_conn_atlas_t *a = aspen_xcalloc(1, sizeof *a);
   a->uri = aspen_xstrdup(uri);
   if (bson_iter_init_find(&it, entry, "clusterName")) {
      if (!BSON_ITER_HOLDS_UTF8(&it)) {
         aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                         "config key '%s.clusterName' must be a string",
                         cfg->where);
         atlas_destroy(a);
         return false;
      }
      a->cluster = aspen_xstrdup(bson_iter_utf8(&it, NULL));
   } else {
      a->cluster = uri_hosts(uri);
   }
   bool has_role = bson_iter_init_find(&role_it, entry, "dbRoleToExecute");
   if (!atlas_role(a, has_role ? &role_it : NULL, cfg->authz, cfg->where,
                   err)) {
      atlas_destroy(a);
      return false;
   }
   *opts = a;
   return true;
}

static void
atlas_list(const void *opts, bson_t *doc)
{
   const aspen_conn_atlas_t *a = opts;
   char red[1024];
   aspen_uri_redact(a->uri, red, sizeof red);
   /* ASP lists the cluster; aspen also shows its (redacted) URI. */
   BSON_APPEND_UTF8(doc, "cluster", a->cluster);
   BSON_APPEND_UTF8(doc, "uri", red);
   bson_t listed;
   BSON_APPEND_DOCUMENT_BEGIN(doc, "dbRoleToExecute", &listed);
   BSON_APPEND_UTF8(&listed, "role", a->role);
   BSON_APPEND_UTF8(&listed, "type", a->role_custom ? "CUSTOM" : "BUILT_IN");
   bson_append_document_end(doc, &listed);
}

static const char *const atlas_keys[] = {"uri", "clusterName",
                                         "dbRoleToExecute", NULL};

const aspen_conn_ops_t aspen_conn_atlas_ops = {
   .keys = atlas_keys,
   .parse = atlas_parse,
   .list = atlas_list,
   .destroy = atlas_destroy,
};

const aspen_conn_atlas_t *
aspen__conn_atlas(const aspen_conn_t *conn)
{
   return conn->kind->conn == &aspen_conn_atlas_ops ? conn->opts : NULL;
}

mongoc_client_t *
aspen__conn_atlas_client_new(const aspen_conn_t *conn, bool ping,
                             aspen_error_t *err)
{
   const aspen_conn_atlas_t *a = aspen__conn_atlas(conn);
   bson_error_t berr;
   mongoc_uri_t *uri = a ? mongoc_uri_new_with_error(a->uri, &berr) : NULL;
   if (!uri) {
      aspen_error_set(err, ASPEN_ERR_StreamProcessorAtlasConnectionError,
                      "connection '%s' has an invalid URI: %s", conn->name,
                      a ? berr.message : "(none)");
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
