/*
 * sink_common.c - what the $emit sinks share (sink_int.h): their
 * enumerated options, their connection's lookup, the options of their
 * config and the _stream_meta their expressions see.
 */
#include "connectors/sink_int.h"
#include "runtime/catalog.h"
#include "bsonw.h"

#include <stdio.h>
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

bool
aspen__emit_conn_name(const bson_iter_t *it, const aspen_parse_ctx_t *pc,
                      const char **name, aspen_error_t *err)
{
   if (!BSON_ITER_HOLDS_UTF8(it)) {
      aspen_parse_error(err, pc, "connectionName",
                        "connectionName must be a string");
      return false;
   }
   *name = bson_iter_utf8(it, NULL);
   return true;
}

const aspen_conn_t *
aspen__emit_conn_find(const aspen_conns_t *conns, const char *name,
                      const aspen_conn_ops_t *kind,
                      const aspen_parse_ctx_t *pc, aspen_error_t *err)
{
   if (!name) {
      aspen_parse_missing_field(err, pc, "connectionName", "$emit",
                                "connectionName");
      return NULL;
   }
   const aspen_conn_t *conn = aspen_conns_find(conns, name);
   if (!conn || (kind && conn->kind->conn != kind)) {
      aspen_parse_error(err, pc, "connectionName",
                        "Unknown connection name %s", name);
      return NULL;
   }
   return conn;
}

bool
aspen__emit_config_parse(const bson_iter_t *it, const aspen_parse_ctx_t *pc,
                         bool basic_json, aspen_kafka_json_opts_t *json,
                         aspen__emit_config_opt_fn opt_fn, void *sink,
                         aspen_error_t *err)
{
   static const char *const date_formats[] = {"default", "ISO8601", NULL};
   static const char *const output_formats[] = {"relaxedJson", "canonicalJson",
                                                "basicJson", NULL};
   static const char *const output_formats_no_basic[] = {"relaxedJson",
                                                         "canonicalJson", NULL};
   if (!BSON_ITER_HOLDS_DOCUMENT(it)) {
      aspen_parse_error(err, pc, "config",
                        "BSON field '$emit.config' is the wrong type, "
                        "expected type 'object'");
      return false;
   }
   bson_iter_t ci;
   bson_iter_recurse(it, &ci);
   while (bson_iter_next(&ci)) {
      const char *k = bson_iter_key(&ci);
      /* Where it is, after the stage's own position ("pipeline[2].$emit"). */
      char opt[96];
      const char *v = NULL;
      bool known = true;
      snprintf(opt, sizeof opt, "config.%s", k);
      if (strcmp(k, "dateFormat") == 0) {
         if (!aspen__sink_enum_value(&ci, date_formats, pc, opt, &v, err)) {
            return false;
         }
         json->iso_dates = strcmp(v, "ISO8601") == 0;
      } else if (strcmp(k, "outputFormat") == 0) {
         if (!aspen__sink_enum_value(
                &ci, basic_json ? output_formats : output_formats_no_basic,
                pc, opt, &v, err)) {
            return false;
         }
         json->canonical = strcmp(v, "canonicalJson") == 0;
         json->basic = strcmp(v, "basicJson") == 0;
      } else if (!opt_fn(sink, &ci, k, opt, pc, &known, err)) {
         return false;
      }
      if (!known) {
         aspen_parse_unknown_field(err, pc, opt, "$emit.config", k);
         return false;
      }
   }
   return true;
}

bool
aspen__sink_stream_meta(const bson_t *doc, bson_t *meta)
{
   bson_iter_t it;
   uint32_t len;
   const uint8_t *data;
   if (!bson_iter_init(&it, doc)) {
      return false;
   }
   /* The first _stream_meta, as bson_iter_find would find it, with the
    * hot-path iterator: this runs for every document a sink writes. */
   while (aspen_bsonw_iter_next(&it)) {
      if (aspen_bsonw_key_len(&it) == 12 &&
          memcmp(it.raw + it.key, "_stream_meta", 12) == 0) {
         if (!BSON_ITER_HOLDS_DOCUMENT(&it)) {
            return false;
         }
         bson_iter_document(&it, &len, &data);
         return bson_init_static(meta, data, len);
      }
   }
   return false;
}
