/*
 * connections.c - the connection registry: what $source, $merge and the DLQ
 * name with connectionName. It comes from aspen's config file ("connections":
 * [{name, type, ...}]) plus the built-in sample_stream_solar. Listings never
 * show secrets: URIs are listed without their credentials.
 */
#include "engine_int.h"

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

static void
redact(const char *uri, char *out, size_t size)
{
   const char *scheme = strstr(uri, "://");
   const char *at = scheme ? strchr(scheme + 3, '@') : NULL;
   const char *slash = scheme ? strchr(scheme + 3, '/') : NULL;
   if (at && (!slash || at < slash)) {
      snprintf(out, size, "%.*s%s", (int) (scheme + 3 - uri), uri, at + 1);
   } else {
      snprintf(out, size, "%s", uri);
   }
}

static aspen_conn_t *
add(aspen_conns_t *conns, const char *name, aspen_conn_type_t type)
{
   conns->items =
      aspen_xrealloc(conns->items, (conns->n + 1) * sizeof *conns->items);
   aspen_conn_t *c = &conns->items[conns->n++];
   memset(c, 0, sizeof *c);
   c->name = aspen_xstrdup(name);
   c->type = type;
   bson_init(&c->doc);
   BSON_APPEND_UTF8(&c->doc, "name", name);
   BSON_APPEND_UTF8(&c->doc, "type", aspen_conn_type_name(type));
   return c;
}

bool
aspen_conns_load(aspen_conns_t *conns, const bson_t *list,
                 const char *backend_uri, aspen_error_t *err)
{
   memset(conns, 0, sizeof *conns);
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
      bson_iter_init(&ci, &c);
      while (bson_iter_next(&ci)) {
         const char *k = bson_iter_key(&ci);
         const char **slot = strcmp(k, "name") == 0   ? &name
                             : strcmp(k, "type") == 0 ? &type
                             : strcmp(k, "uri") == 0  ? &uri
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
         redact(uri, red, sizeof red);
         BSON_APPEND_UTF8(&conn->doc, "uri", red);
      } else if (strcmp(type, "kafka") == 0) {
         aspen_conn_t *conn = add(conns, name, ASPEN_CONN_KAFKA);
         (void) conn;
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
      bson_destroy(&conns->items[i].doc);
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
