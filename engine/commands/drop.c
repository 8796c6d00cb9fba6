/*
 * drop.c - dropStreamProcessor: the processor's file goes first (a drop
 * that cannot be saved is refused), then a running processor is stopped,
 * as ASP does (one still starting ends its start with an error), and it
 * goes with its checkpoints.
 */
#include "commands/commands.h"

bool
aspen__cmd_drop(aspen_cmd_ctx_t *ctx, const bson_t *cmd, uint64_t conn_id,
                void *ticket, bson_t *reply)
{
   (void) conn_id;
   (void) ticket;
   static const char *const allowed[] = {"force", "ttl", "options", NULL};
   aspen_proc_t *p =
      aspen__cmd_proc_arg(ctx, cmd, "dropStreamProcessor", allowed, reply);
   if (!p) {
      return true;
   }
   aspen_error_t err;
   if (!aspen_registry_unsave(ctx->reg, p, &err)) {
      aspen__cmd_reply_err(reply, &err);
      return true;
   }
   aspen__cmd_start_abort(ctx, p, ASPEN_ERR_Interrupted,
                          "was dropped before it finished starting");
   aspen_registry_unlink(ctx->reg, p);
   aspen_logf(ASPEN_LOG_INFO, "STREAMS", aspen_proc_name(p),
              "stream processor dropped");
   if (!aspen_proc_is_ephemeral(p)) {
      aspen_registry_drop_checkpoints(ctx->reg, p);
   }
   aspen_registry_proc_free(p);
   aspen_reply_ok(reply);
   return true;
}
