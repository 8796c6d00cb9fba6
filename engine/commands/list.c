/*
 * list.c - listStreamProcessors, getStreamProcessor (a processor's listing
 * entry, aspen_registry_entry) and listStreamConnections, each list
 * filtered by an optional query (the matcher of lang/).
 */
#include "commands/commands.h"
#include "connectors/connections.h"
#include "lang/match.h"

/* Parses the optional filter; NULL means "everything". */
static bool
filter_arg(const bson_t *cmd, const char *cmdname, bson_t *filter,
           aspen_matcher_t **m, bson_t *reply)
{
   bson_iter_t it;
   *m = NULL;
   bson_init(filter);
   if (!bson_iter_init_find(&it, cmd, "filter") || BSON_ITER_HOLDS_NULL(&it)) {
      return true;
   }
   if (!BSON_ITER_HOLDS_DOCUMENT(&it)) {
      aspen_reply_error(reply, ASPEN_ERR_TypeMismatch,
                        "BSON field '%s.filter' is the wrong type, expected "
                        "type 'object'",
                        cmdname);
      return false;
   }
   uint32_t len;
   const uint8_t *data;
   bson_t f;
   bson_iter_document(&it, &len, &data);
   (void) bson_init_static(&f, data, len);
   bson_destroy(filter);
   bson_copy_to(&f, filter);
   aspen_error_t err;
   if (!aspen_matcher_new(filter, m, &err)) {
      aspen_reply_error(reply, err.code ? err.code : ASPEN_ERR_BadValue, "%s",
                        err.message);
      return false;
   }
   return true;
}

static bool
passes(aspen_matcher_t *m, const bson_t *doc)
{
   if (!m) {
      return true;
   }
   bool matched = false;
   aspen_error_t err;
   aspen_expr_ctx_t ctx = {.root = doc, .meta = NULL,
                           .now_ms = aspen_clock_now_ms()};
   return aspen_matcher_match(m, doc, &ctx, &matched, &err) && matched;
}

bool
aspen__cmd_list(aspen_cmd_ctx_t *ctx, const bson_t *cmd, uint64_t conn_id,
                void *ticket, bson_t *reply)
{
   (void) conn_id;
   (void) ticket;
   static const char *const allowed[] = {"filter", "verbose", NULL};
   if (!aspen__cmd_check_fields(cmd, "listStreamProcessors", allowed, reply)) {
      return true;
   }
   bson_t filter;
   aspen_matcher_t *m;
   if (!filter_arg(cmd, "listStreamProcessors", &filter, &m, reply)) {
      bson_destroy(&filter);
      return true;
   }
   aspen_reply_ok(reply);
   bson_t arr;
   uint32_t i = 0;
   BSON_APPEND_ARRAY_BEGIN(reply, "streamProcessors", &arr);
   for (aspen_proc_t *p = aspen_registry_first(ctx->reg); p;
        p = aspen_registry_next(p)) {
      if (aspen_proc_is_ephemeral(p)) {
         continue;
      }
      aspen__cmd_reap(ctx, p);
      bson_t entry = BSON_INITIALIZER;
      aspen_registry_entry(p, &entry);
      if (passes(m, &entry)) {
         char buf[16];
         const char *key;
         bson_uint32_to_string(i++, &key, buf, sizeof buf);
         BSON_APPEND_DOCUMENT(&arr, key, &entry);
      }
      bson_destroy(&entry);
   }
   bson_append_array_end(reply, &arr);
   aspen_matcher_destroy(m);
   bson_destroy(&filter);
   return true;
}

bool
aspen__cmd_list_connections(aspen_cmd_ctx_t *ctx, const bson_t *cmd,
                            uint64_t conn_id, void *ticket, bson_t *reply)
{
   (void) conn_id;
   (void) ticket;
   static const char *const allowed[] = {"filter", NULL};
   if (!aspen__cmd_check_fields(cmd, "listStreamConnections", allowed,
                                reply)) {
      return true;
   }
   bson_t filter;
   aspen_matcher_t *m;
   if (!filter_arg(cmd, "listStreamConnections", &filter, &m, reply)) {
      bson_destroy(&filter);
      return true;
   }
   aspen_reply_ok(reply);
   bson_t arr;
   uint32_t i = 0;
   BSON_APPEND_ARRAY_BEGIN(reply, "connections", &arr);
   for (size_t j = 0; j < ctx->conns->n; j++) {
      const bson_t *doc = &ctx->conns->items[j].doc;
      if (passes(m, doc)) {
         char buf[16];
         const char *key;
         bson_uint32_to_string(i++, &key, buf, sizeof buf);
         BSON_APPEND_DOCUMENT(&arr, key, doc);
      }
   }
   bson_append_array_end(reply, &arr);
   aspen_matcher_destroy(m);
   bson_destroy(&filter);
   return true;
}

bool
aspen__cmd_get(aspen_cmd_ctx_t *ctx, const bson_t *cmd, uint64_t conn_id,
               void *ticket, bson_t *reply)
{
   (void) conn_id;
   (void) ticket;
   aspen_proc_t *p =
      aspen__cmd_proc_arg(ctx, cmd, "getStreamProcessor", NULL, reply);
   if (!p) {
      return true;
   }
   aspen__cmd_reap(ctx, p);
   aspen_reply_ok(reply);
   aspen_registry_entry(p, reply);
   return true;
}
