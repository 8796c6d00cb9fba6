/*
 * sink_common.c - what the $emit sinks share (sink_int.h): their
 * enumerated options, their connection's lookup and the _stream_meta
 * their expressions see.
 */
#include "connectors/sink_int.h"
#include "runtime/catalog.h"

#include <string.h>

bool
aspen__sink_enum_value(const bson_iter_t *it, const char *const *allowed,
                       const aspen_parse_ctx_t *pc, const char *pos,
                       const char **out, aspen_error_t *err)
{
   const char *v = BSON_ITER_HOLDS_UTF8(it) ? bson_iter_utf8(it, NULL) : NULL;
   for (const char *const *a = allowed; v && *a; a++) {
      if (strcmp(v, *a) == 0) {
         *out = *a;
         return true;
      }
   }
   aspen_parse_error(err, pc, pos,
                     "Enumeration value '%s' for field '$emit.%s' is not a "
                     "valid value.",
                     v ? v : "(not a string)", pos);
   return false;
}

const aspen_conn_t *
aspen__emit_conn_find(const aspen_conns_t *conns, const char *name,
                      const aspen_parse_ctx_t *pc, aspen_error_t *err)
{
   if (!name) {
      aspen_parse_error(err, pc, "connectionName",
                        "BSON field '$emit.connectionName' is missing but a "
                        "required field");
      return NULL;
   }
   const aspen_conn_t *conn = aspen_conns_find(conns, name);
   if (!conn) {
      aspen_parse_error(err, pc, "connectionName",
                        "Unknown connection name %s", name);
   }
   return conn;
}

bool
aspen__sink_stream_meta(const bson_t *doc, bson_t *meta)
{
   bson_iter_t it;
   uint32_t len;
   const uint8_t *data;
   if (bson_iter_init_find(&it, doc, "_stream_meta") &&
       BSON_ITER_HOLDS_DOCUMENT(&it)) {
      bson_iter_document(&it, &len, &data);
      return bson_init_static(meta, data, len);
   }
   return false;
}
