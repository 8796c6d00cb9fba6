/*
 * stop.c - stopStreamProcessor: a running processor (or one still
 * starting, whose start then ends with an error) stops, its sink flushed
 * and a last checkpoint taken by its thread, and is saved STOPPED first.
 */
#include "commands/commands.h"

bool
aspen__cmd_stop(aspen_cmd_ctx_t *ctx, const bson_t *cmd, uint64_t conn_id,
                void *ticket, bson_t *reply)
{
   (void) conn_id;
   (void) ticket;
   static const char *const allowed[] = {"force", "options", NULL};
   aspen_proc_t *p =
      aspen__cmd_proc_arg(ctx, cmd, "stopStreamProcessor", allowed, reply);
   if (!p) {
      return true;
   }
   const char *name = aspen_proc_name(p);
   aspen__cmd_reap(ctx, p);
   if (!aspen_proc_is_running(p)) {
      aspen_reply_error(reply, ASPEN_ERR_IllegalOperation,
                        "stream processor '%s' is not running (state %s)", name,
                        aspen_proc_state_name(aspen_proc_state(p)));
      return true;
   }
   /* Saved first: a stop that cannot be saved is refused, the processor
    * left running (it would start again with aspen otherwise). */
   aspen_error_t err;
   if (!aspen_registry_save_as(ctx->reg, p, ASPEN_PROC_STOPPED, &err)) {
      aspen__cmd_reply_err(reply, &err);
      return true;
   }
   /* Still starting (PROVISIONING): the start ends with an error. */
   aspen__cmd_start_abort(ctx, p, ASPEN_ERR_Interrupted,
                          "was stopped before it finished starting");
   aspen_proc_set_state(p, ASPEN_PROC_STOPPED, NULL);
   aspen_reply_ok(reply);
   return true;
}
