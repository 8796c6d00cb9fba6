/*
 * conn_schema_registry.c - the Schema Registry connection kind: a
 * Confluent-compatible registry Kafka $source and $emit use for Avro
 * ($source.schemaRegistry, $emit.schemaRegistry; schema_registry.c is its
 * client). Its config entry has ASP's fields (the Atlas Admin API's
 * SchemaRegistry connection):
 *   {name, type: "schemaRegistry", provider: "CONFLUENT",
 *    schemaRegistryUrls: [url, ...] | "url,url",
 *    schemaRegistryAuthentication: {type: "USER_INFO", username, password}}
 * Listings show everything but the password (URLs through
 * aspen_uri_redact). ASP's other authentication type, SASL_INHERIT (the
 * Kafka connection's SASL credentials), is refused as not yet supported.
 */
#include "connectors/connectors.h"
#include "connectors/schema_registry.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_URLS 8

struct aspen_sr_conn {
   char *urls[MAX_URLS]; /* without a trailing '/' */
   int n_urls;
   char *username; /* USER_INFO, else NULL */
   char *password;
   bson_t listed;
};

static void
sr_destroy(void *opts)
{
   aspen_sr_conn_t *c = opts;
   if (!c) {
      return;
   }
   for (int i = 0; i < c->n_urls; i++) {
      free(c->urls[i]);
   }
   free(c->username);
   free(c->password);
   bson_destroy(&c->listed);
   free(c);
}

/* Adds one URL (`len` bytes of `s`, blanks around it ignored). */
static bool
add_url(aspen_sr_conn_t *c, const char *s, size_t len, const char *where,
        aspen_error_t *err)
{
   while (len && (*s == ' ' || *s == '\t')) {
      s++;
      len--;
   }
   while (len && (s[len - 1] == ' ' || s[len - 1] == '\t' || s[len - 1] == '/')) {
      len--;
   }
   if (!len || (strncmp(s, "http://", 7) != 0 && strncmp(s, "https://", 8) != 0)) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "config key '%s.schemaRegistryUrls' must hold http:// "
                      "or https:// URLs, not '%.*s'",
                      where, (int) len, s);
      return false;
   }
   if (c->n_urls == MAX_URLS) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "config key '%s.schemaRegistryUrls' has more than %d "
                      "URLs",
                      where, MAX_URLS);
      return false;
   }
   char *u = aspen_xmalloc(len + 1);
   memcpy(u, s, len);
   u[len] = '\0';
   c->urls[c->n_urls++] = u;
   return true;
}

static bool
parse_urls(aspen_sr_conn_t *c, const bson_iter_t *it, const char *where,
           aspen_error_t *err)
{
   if (BSON_ITER_HOLDS_UTF8(it)) {
      /* A comma-separated list, as ASP's tooling accepts. */
      const char *s = bson_iter_utf8(it, NULL);
      for (;;) {
         const char *comma = strchr(s, ',');
         size_t len = comma ? (size_t) (comma - s) : strlen(s);
         if (!add_url(c, s, len, where, err)) {
            return false;
         }
         if (!comma) {
            return true;
         }
         s = comma + 1;
      }
   }
   if (!BSON_ITER_HOLDS_ARRAY(it)) {
      aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                      "config key '%s.schemaRegistryUrls' must be an array "
                      "of strings",
                      where);
      return false;
   }
   bson_iter_t ai;
   bson_iter_recurse(it, &ai);
   while (bson_iter_next(&ai)) {
      if (!BSON_ITER_HOLDS_UTF8(&ai)) {
         aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                         "config key '%s.schemaRegistryUrls' must be an "
                         "array of strings",
                         where);
         return false;
      }
      uint32_t len;
      const char *s = bson_iter_utf8(&ai, &len);
      if (!add_url(c, s, len, where, err)) {
         return false;
      }
   }
   return true;
}

static bool
parse_auth(aspen_sr_conn_t *c, const bson_iter_t *it, const char *where,
           aspen_error_t *err)
{
   if (!BSON_ITER_HOLDS_DOCUMENT(it)) {
      aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                      "config key '%s.schemaRegistryAuthentication' must be "
                      "an object",
                      where);
      return false;
   }
   const char *type = NULL, *user = NULL, *password = NULL;
   bson_iter_t ai;
   bson_iter_recurse(it, &ai);
   while (bson_iter_next(&ai)) {
      const char *k = bson_iter_key(&ai);
      const char **slot = strcmp(k, "type") == 0       ? &type
                          : strcmp(k, "username") == 0 ? &user
                          : strcmp(k, "password") == 0 ? &password
                                                       : NULL;
      if (!slot) {
         aspen_error_set(err, ASPEN_ERR_NoSuchKey,
                         "unknown config key "
                         "'%s.schemaRegistryAuthentication.%s'",
                         where, k);
         return false;
      }
      if (!BSON_ITER_HOLDS_UTF8(&ai)) {
         aspen_error_set(err, ASPEN_ERR_TypeMismatch,
                         "config key '%s.schemaRegistryAuthentication.%s' "
                         "must be a string",
                         where, k);
         return false;
      }
      *slot = bson_iter_utf8(&ai, NULL);
   }
   if (!type) {
      type = user ? "USER_INFO" : "NONE";
   }
   if (strcmp(type, "SASL_INHERIT") == 0) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "config key '%s.schemaRegistryAuthentication.type': "
                      "SASL_INHERIT is supported by Atlas Stream Processing "
                      "but not yet by this version of aspen",
                      where);
      return false;
   }
   if (strcmp(type, "USER_INFO") != 0) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "config key '%s.schemaRegistryAuthentication.type' "
                      "must be USER_INFO or SASL_INHERIT, not '%s'",
                      where, type);
      return false;
   }
   if (!user || !password) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "config key '%s.schemaRegistryAuthentication': "
                      "USER_INFO needs username and password",
                      where);
      return false;
   }
   c->username = aspen_xstrdup(user);
   c->password = aspen_xstrdup(password);
   return true;
}

static bool
sr_parse(const aspen_conn_cfg_t *cfg, const bson_t *entry, void **opts,
         aspen_error_t *err)
{
   *opts = NULL;
   aspen_sr_conn_t *c = aspen_xcalloc(1, sizeof *c);
   bson_init(&c->listed);
   bson_iter_t it;
   if (bson_iter_init_find(&it, entry, "provider") &&
       (!BSON_ITER_HOLDS_UTF8(&it) ||
        strcmp(bson_iter_utf8(&it, NULL), "CONFLUENT") != 0)) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "config key '%s.provider' must be \"CONFLUENT\"",
                      cfg->where);
      goto fail;
   }
   if (!bson_iter_init_find(&it, entry, "schemaRegistryUrls")) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "config key '%s.schemaRegistryUrls' is required for a "
                      "schemaRegistry connection",
                      cfg->where);
      goto fail;
   }
   if (!parse_urls(c, &it, cfg->where, err)) {
      goto fail;
   }
   if (!c->n_urls) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "config key '%s.schemaRegistryUrls' is empty",
                      cfg->where);
      goto fail;
   }
   if (bson_iter_init_find(&it, entry, "schemaRegistryAuthentication") &&
       !parse_auth(c, &it, cfg->where, err)) {
      goto fail;
   }
   BSON_APPEND_UTF8(&c->listed, "provider", "CONFLUENT");
   bson_t arr, auth;
   BSON_APPEND_ARRAY_BEGIN(&c->listed, "schemaRegistryUrls", &arr);
   for (int i = 0; i < c->n_urls; i++) {
      char idx[16], red[1024];
      const char *key;
      bson_uint32_to_string((uint32_t) i, &key, idx, sizeof idx);
      aspen_uri_redact(c->urls[i], red, sizeof red);
      BSON_APPEND_UTF8(&arr, key, red);
   }
   bson_append_array_end(&c->listed, &arr);
   if (c->username) {
      BSON_APPEND_DOCUMENT_BEGIN(&c->listed, "schemaRegistryAuthentication",
                                 &auth);
      BSON_APPEND_UTF8(&auth, "type", "USER_INFO");
      BSON_APPEND_UTF8(&auth, "username", c->username);
      bson_append_document_end(&c->listed, &auth);
   }
   *opts = c;
   return true;

fail:
   sr_destroy(c);
   return false;
}

static void
sr_list(const void *opts, bson_t *doc)
{
   const aspen_sr_conn_t *c = opts;
   bson_concat(doc, &c->listed);
}

static const char *const sr_keys[] = {"provider", "schemaRegistryUrls",
                                      "schemaRegistryAuthentication", NULL};

const aspen_conn_ops_t aspen_conn_schema_registry_ops = {
   .keys = sr_keys,
   .parse = sr_parse,
   .list = sr_list,
   .destroy = sr_destroy,
};

const aspen_sr_conn_t *
aspen__conn_schema_registry(const aspen_conn_t *conn)
{
   return conn && conn->kind->conn == &aspen_conn_schema_registry_ops
             ? conn->opts
             : NULL;
}

int
aspen__sr_conn_urls(const aspen_sr_conn_t *c, const char *const **urls)
{
   *urls = (const char *const *) c->urls;
   return c->n_urls;
}

void
aspen__sr_conn_user(const aspen_sr_conn_t *c, const char **user,
                    const char **password)
{
   *user = c->username;
   *password = c->password;
}

bool
aspen__sr_conn_resolve(const bson_iter_t *it, const aspen_parse_ctx_t *pc,
                       const char *opt, const aspen_conn_t **out,
                       aspen_error_t *err)
{
   char field[128];
   snprintf(field, sizeof field, "%s.connectionName", opt);
   *out = NULL;
   if (!BSON_ITER_HOLDS_UTF8(it)) {
      aspen_parse_error(err, pc, field,
                        "BSON field '%s' is the wrong type, expected type "
                        "'string'",
                        field);
      return false;
   }
   const char *name = bson_iter_utf8(it, NULL);
   const aspen_conn_t *conn = aspen_conns_find(pc->conns, name);
   if (!conn) {
      aspen_parse_error(err, pc, field, "Unknown connection name %s", name);
      return false;
   }
   if (!aspen__conn_schema_registry(conn)) {
      aspen_parse_error(err, pc, field,
                        "%s must name a schemaRegistry connection; '%s' is "
                        "a %s connection",
                        field, name, conn->kind->type_name);
      return false;
   }
   *out = conn;
   return true;
}
