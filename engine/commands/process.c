/*
 * process.c - sp.process and sample(): processStreamProcessor (an
 * ephemeral processor whose only sink is the shell cursor that reads it,
 * never listed nor saved, dropped when its connection closes),
 * startSampleStreamProcessor (a sample cursor on a running processor's
 * output) and getMoreSampleStreamProcessor (the next documents of either
 * cursor).
 */
#include "commands/commands.h"

static int64_t
cursor_id_arg(const bson_t *cmd, bool *ok)
{
   bson_iter_t it;
   *ok = false;
   if ((bson_iter_init_find(&it, cmd, "cursorId") ||
        bson_iter_init_find(&it, cmd, "cursorID")) &&
       BSON_ITER_HOLDS_NUMBER(&it)) {
      *ok = true;
      return bson_iter_as_int64(&it);
   }
   return 0;
}

static void
start_cursor(aspen_cmd_ctx_t *ctx, aspen_proc_t *p, uint64_t conn_id,
             bool is_shell, int64_t limit, bson_t *reply)
{
   int64_t id = ++ctx->next_cursor_id;
   aspen_cursor_open(p, id, conn_id, is_shell, limit);
   aspen_reply_ok(reply);
   BSON_APPEND_INT64(reply, "cursorId", id);
}

bool
aspen__cmd_process(aspen_cmd_ctx_t *ctx, const bson_t *cmd, uint64_t conn_id,
                   void *ticket, bson_t *reply)
{
   static const char *const allowed[] = {"options", NULL};
   bson_t pipeline, options, accepted = BSON_INITIALIZER;
   bool has_opts;
   bson_iter_t it;
   bson_iter_init(&it, cmd);
   bson_iter_next(&it);
   if (!BSON_ITER_HOLDS_ARRAY(&it)) {
      aspen_reply_error(reply, ASPEN_ERR_TypeMismatch,
                        "BSON field 'processStreamProcessor' is the wrong "
                        "type, expected type 'array'");
      bson_destroy(&accepted);
      return true;
   }
   uint32_t len;
   const uint8_t *data;
   bson_iter_array(&it, &len, &data);
   (void) bson_init_static(&pipeline, data, len);
   if (!aspen__cmd_check_fields(cmd, "processStreamProcessor", allowed,
                                reply) ||
       !aspen__cmd_get_options_doc(cmd, "processStreamProcessor", &options,
                                   &has_opts, reply) ||
       !aspen__cmd_check_options(ctx, &options, &accepted, reply)) {
      bson_destroy(&accepted);
      return true;
   }
   if (!aspen__cmd_room_for_one(ctx, reply)) {
      bson_destroy(&accepted);
      return true;
   }
   char name[64];
   bson_oid_t oid;
   char hex[25];
   bson_oid_init(&oid, NULL);
   bson_oid_to_string(&oid, hex);
   snprintf(name, sizeof name, "__process_%s", hex);
   aspen_proc_t *p =
      aspen_registry_proc_new(name, &pipeline, &accepted, true, conn_id);
   bson_destroy(&accepted);
   aspen_error_t err;
   /* The shell cursor exists before the first document can be produced. */
   int64_t id = ++ctx->next_cursor_id;
   aspen_cursor_open(p, id, conn_id, true, 0);
   if (!aspen_proc_launch(p, ctx->env, &err)) {
      aspen_registry_proc_free(p);
      aspen__cmd_reply_err(reply, &err);
      return true;
   }
   /* Linked while it starts: its connection may close meanwhile, and
    * shutdown must find it. Never listed nor saved (ephemeral). */
   aspen_registry_link(ctx->reg, p);
   return aspen__cmd_start_wait(ctx, p, id, ticket, reply);
}

bool
aspen__cmd_start_sample(aspen_cmd_ctx_t *ctx, const bson_t *cmd,
                        uint64_t conn_id, void *ticket, bson_t *reply)
{
   (void) ticket;
   static const char *const allowed[] = {"limit", "options", NULL};
   const char *name =
      aspen__cmd_name_arg(cmd, "startSampleStreamProcessor", reply);
   if (!name || !aspen__cmd_check_fields(cmd, "startSampleStreamProcessor",
                                         allowed, reply)) {
      return true;
   }
   int64_t limit = 0;
   bson_iter_t it;
   if (bson_iter_init_find(&it, cmd, "limit")) {
      if (!BSON_ITER_HOLDS_NUMBER(&it) || bson_iter_as_int64(&it) < 1) {
         aspen_reply_error(reply, ASPEN_ERR_BadValue,
                           "limit must be a positive integer");
         return true;
      }
      limit = bson_iter_as_int64(&it);
   }
   aspen_proc_t *p = aspen__cmd_find(ctx, name, reply);
   if (!p) {
      return true;
   }
   aspen__cmd_reap(ctx, p);
   if (aspen_proc_state(p) != ASPEN_PROC_STARTED) {
      aspen_reply_error(reply, ASPEN_ERR_IllegalOperation,
                        "stream processor '%s' is not running (state %s): "
                        "only a running processor can be sampled",
                        name, aspen_proc_state_name(aspen_proc_state(p)));
      return true;
   }
   start_cursor(ctx, p, conn_id, false, limit, reply);
   return true;
}

bool
aspen__cmd_get_more(aspen_cmd_ctx_t *ctx, const bson_t *cmd, uint64_t conn_id,
                    void *ticket, bson_t *reply)
{
   (void) conn_id;
   (void) ticket;
   static const char *const allowed[] = {"cursorId", "cursorID", "batchSize",
                                         NULL};
   const char *name =
      aspen__cmd_name_arg(cmd, "getMoreSampleStreamProcessor", reply);
   if (!name || !aspen__cmd_check_fields(cmd, "getMoreSampleStreamProcessor",
                                         allowed, reply)) {
      return true;
   }
   bool ok;
   int64_t id = cursor_id_arg(cmd, &ok);
   if (!ok) {
      aspen_reply_error(reply, ASPEN_ERR_TypeMismatch,
                        "getMoreSampleStreamProcessor needs a numeric "
                        "cursorId");
      return true;
   }
   aspen_proc_t *p = aspen__cmd_find(ctx, name, reply);
   if (!p) {
      return true;
   }
   int64_t batch = 0;
   bson_iter_t it;
   if (bson_iter_init_find(&it, cmd, "batchSize") &&
       BSON_ITER_HOLDS_NUMBER(&it) && bson_iter_as_int64(&it) > 0) {
      batch = bson_iter_as_int64(&it);
   }
   /* cursorId comes before messages in the reply, and whether the
    * cursor is done is known once they are taken. */
   bson_t arr = BSON_INITIALIZER, msgs;
   bool done;
   if (!aspen_cursor_fetch(p, id, batch, &arr, &done)) {
      bson_destroy(&arr);
      aspen_reply_error(reply, ASPEN_ERR_CursorNotFound,
                        "cursor id %lld not found for stream processor '%s'",
                        (long long) id, name);
      return true;
   }
   aspen_reply_ok(reply);
   BSON_APPEND_INT64(reply, "cursorId", done ? 0 : id);
   BSON_APPEND_ARRAY_BEGIN(reply, "messages", &msgs);
   bson_concat(&msgs, &arr);
   bson_append_array_end(reply, &msgs);
   bson_destroy(&arr);
   return true;
}

void
aspen__cmd_connection_closed(aspen_cmd_ctx_t *ctx, uint64_t conn_id)
{
   aspen_proc_t *p = aspen_registry_first(ctx->reg);
   while (p) {
      aspen_proc_t *next = aspen_registry_next(p);
      if (aspen_proc_is_ephemeral(p) && aspen_proc_owner_conn(p) == conn_id) {
         aspen_logf(ASPEN_LOG_INFO, "STREAMS", aspen_proc_name(p),
                    "the shell reading this ephemeral processor went away; "
                    "dropping it");
         aspen__cmd_start_abort(ctx, p, ASPEN_ERR_Interrupted,
                                "was dropped before it finished starting: "
                                "the connection that started it closed");
         aspen_registry_unlink(ctx->reg, p);
         aspen_registry_proc_free(p);
      } else {
         aspen_cursor_close_conn(p, conn_id);
      }
      p = next;
   }
}
