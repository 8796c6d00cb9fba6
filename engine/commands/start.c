/*
 * start.c - startStreamProcessor, and how every start ends (sp.process's
 * included).
 *
 * A start saves the processor as STARTED, launches its thread and, with
 * the caller's hooks set (engine.h), returns without its reply: the
 * processor is PROVISIONING until its thread reports whether its source
 * and sinks opened (aspen__cmd_start_reported, from that thread, wakes
 * the caller), and aspen_engine_poll then finishes the start on the
 * command thread and hands the reply to the caller. A stop, a drop, the
 * owning connection closing or shutdown meanwhile ends the start
 * (aspen__cmd_start_abort) with an error reply.
 */
#include "commands/commands.h"

#include <stdlib.h>

/* A start whose reply waits for its processor's thread. */
struct aspen_cmd_pending {
   aspen_proc_t *proc;
   void *ticket;      /* the caller's, handed back with the reply */
   int64_t cursor_id; /* sp.process: its shell cursor; 0 for a start */
   aspen_cmd_pending_t *next;
};

static aspen_engine_hooks_t
hooks_get(aspen_cmd_ctx_t *ctx)
{
   pthread_mutex_lock(&ctx->hooks_mu);
   aspen_engine_hooks_t h = ctx->hooks;
   pthread_mutex_unlock(&ctx->hooks_mu);
   return h;
}

void
aspen__cmd_start_reported(void *arg)
{
   aspen_cmd_ctx_t *ctx = arg;
   /* Called under hooks_mu, so that once aspen_engine_set_hooks(NULL)
    * returns, no processor thread is still inside the caller's hook. */
   pthread_mutex_lock(&ctx->hooks_mu);
   if (ctx->hooks.wake) {
      ctx->hooks.wake(ctx->hooks.arg);
   }
   pthread_mutex_unlock(&ctx->hooks_mu);
}

/* Hands a deferred reply to the caller's reply hook. */
static void
deliver(aspen_cmd_ctx_t *ctx, void *ticket, const bson_t *reply)
{
   aspen_engine_hooks_t h = hooks_get(ctx);
   if (h.reply) {
      h.reply(h.arg, ticket, reply);
   }
}

/* Takes `proc`'s pending start off the list: its ticket and cursor id.
 * False when it has none. */
static bool
pending_take(aspen_cmd_ctx_t *ctx, const aspen_proc_t *proc, void **ticket,
             int64_t *cursor_id)
{
   for (aspen_cmd_pending_t **pp = &ctx->pending; *pp; pp = &(*pp)->next) {
      aspen_cmd_pending_t *e = *pp;
      if (e->proc == proc) {
         *ticket = e->ticket;
         *cursor_id = e->cursor_id;
         *pp = e->next;
         free(e);
         return true;
      }
   }
   return false;
}

static bool
is_pending(const aspen_cmd_ctx_t *ctx, const aspen_proc_t *proc)
{
   for (const aspen_cmd_pending_t *e = ctx->pending; e; e = e->next) {
      if (e->proc == proc) {
         return true;
      }
   }
   return false;
}

/* Finishes the start of `p` (PROVISIONING) once its thread has reported,
 * waiting for that if need be: the state (STARTED, or FAILED with the
 * reason) is saved, and `reply` filled as a start's reply. A failed
 * sp.process processor is unlinked and freed. */
static void
start_finish(aspen_cmd_ctx_t *ctx, aspen_proc_t *p, int64_t cursor_id,
             bson_t *reply)
{
   aspen_error_t err, perr;
   if (!aspen_proc_finish_start(p, &err)) {
      if (aspen_proc_is_ephemeral(p)) {
         aspen_registry_unlink(ctx->reg, p);
         aspen_registry_proc_free(p);
      } else {
         aspen_proc_set_state(p, ASPEN_PROC_FAILED, err.message);
         (void) aspen_registry_save(ctx->reg, p, &perr); /* logged */
      }
      aspen__cmd_reply_err(reply, &err);
      return;
   }
   (void) aspen_registry_save(ctx->reg, p, &perr); /* logged when it fails */
   aspen_reply_ok(reply);
   if (aspen_proc_is_ephemeral(p)) {
      BSON_APPEND_UTF8(reply, "name", aspen_proc_name(p));
      BSON_APPEND_INT64(reply, "cursorId", cursor_id);
   }
}

bool
aspen__cmd_start_wait(aspen_cmd_ctx_t *ctx, aspen_proc_t *proc,
                      int64_t cursor_id, void *ticket, bson_t *reply)
{
   if (!hooks_get(ctx).reply) {
      start_finish(ctx, proc, cursor_id, reply);
      return true;
   }
   aspen_cmd_pending_t *e = aspen_xcalloc(1, sizeof *e);
   e->proc = proc;
   e->ticket = ticket;
   e->cursor_id = cursor_id;
   e->next = ctx->pending;
   ctx->pending = e;
   return false;
}

void
aspen__cmd_start_abort(aspen_cmd_ctx_t *ctx, aspen_proc_t *proc, int32_t code,
                       const char *why)
{
   aspen_proc_halt(proc);
   void *ticket;
   int64_t cursor_id;
   if (!pending_take(ctx, proc, &ticket, &cursor_id)) {
      return;
   }
   const char *name = aspen_proc_name(proc);
   aspen_logf(ASPEN_LOG_INFO, "STREAMS", name,
              "the pending start ends: the processor %s", why);
   bson_t r = BSON_INITIALIZER;
   aspen_reply_error(&r, code, "stream processor '%s' %s", name, why);
   deliver(ctx, ticket, &r);
   bson_destroy(&r);
}

void
aspen__cmd_reap(aspen_cmd_ctx_t *ctx, aspen_proc_t *proc)
{
   if (aspen_proc_reap(proc)) {
      aspen_error_t err;
      (void) aspen_registry_save(ctx->reg, proc, &err); /* logged */
   }
}

void
aspen__cmd_poll(aspen_cmd_ctx_t *ctx)
{
   aspen_proc_t *p = aspen_registry_first(ctx->reg);
   while (p) {
      aspen_proc_t *next = aspen_registry_next(p); /* p may be freed */
      void *ticket;
      int64_t cursor_id;
      if (is_pending(ctx, p) && aspen_proc_start_reported(p) &&
          pending_take(ctx, p, &ticket, &cursor_id)) {
         bson_t r = BSON_INITIALIZER;
         start_finish(ctx, p, cursor_id, &r);
         deliver(ctx, ticket, &r);
         bson_destroy(&r);
      }
      p = next;
   }
}

void
aspen__cmd_cancel_starts(aspen_cmd_ctx_t *ctx)
{
   aspen__cmd_poll(ctx); /* those that have finished reply as usual */
   for (aspen_proc_t *p = aspen_registry_first(ctx->reg); p;
        p = aspen_registry_next(p)) {
      /* The state file already says STARTED: such a processor starts
       * again with aspen, like a running one. */
      if (is_pending(ctx, p)) {
         aspen__cmd_start_abort(ctx, p,
                                ASPEN_ERR_StreamProcessorWorkerShuttingDown,
                                "did not finish starting: aspen is shutting "
                                "down");
      }
   }
}

void
aspen__cmd_end_starts(aspen_cmd_ctx_t *ctx)
{
   /* Never a start left without its reply (aspen_engine_cancel_starts
    * answers them at shutdown; this is the backstop). */
   while (ctx->pending) {
      aspen__cmd_start_abort(ctx, ctx->pending->proc,
                             ASPEN_ERR_StreamProcessorWorkerShuttingDown,
                             "was freed before it finished starting");
   }
}

void
aspen__cmd_restart_saved(aspen_cmd_ctx_t *ctx)
{
   for (aspen_proc_t *p = aspen_registry_first(ctx->reg); p;
        p = aspen_registry_next(p)) {
      if (aspen_proc_state(p) != ASPEN_PROC_STARTED) {
         continue;
      }
      /* Synchronously: nobody waits for a reply yet. */
      aspen_error_t serr;
      if (aspen_proc_launch(p, ctx->env, &serr)) {
         bson_t scratch = BSON_INITIALIZER;
         start_finish(ctx, p, 0, &scratch);
         bson_destroy(&scratch);
         if (aspen_proc_state(p) == ASPEN_PROC_STARTED) {
            aspen_logf(ASPEN_LOG_INFO, "STREAMS", aspen_proc_name(p),
                       "stream processor restarted");
         }
      } else {
         aspen_proc_set_state(p, ASPEN_PROC_FAILED, serr.message);
         (void) aspen_registry_save(ctx->reg, p, &serr); /* logged */
      }
   }
}

bool
aspen__cmd_start(aspen_cmd_ctx_t *ctx, const bson_t *cmd, uint64_t conn_id,
                 void *ticket, bson_t *reply)
{
   (void) conn_id;
   static const char *const allowed[] = {
      "tier", "autoscaling", "resumeFromCheckpoint", "startAfter",
      "startAtOperationTime", "workers", "options", NULL};
   const char *name = aspen__cmd_name_arg(cmd, "startStreamProcessor", reply);
   if (!name ||
       !aspen__cmd_check_fields(cmd, "startStreamProcessor", allowed, reply)) {
      return true;
   }
   bson_iter_t it;
   /* The start's tier and autoscaling replace the processor's own: saved
    * with it, they are what listings, stats and a restart see. */
   bson_t given = BSON_INITIALIZER;
   if (bson_iter_init_find(&it, cmd, "tier")) {
      if (!aspen__cmd_check_tier(&it, "startStreamProcessor.tier", reply)) {
         bson_destroy(&given);
         return true;
      }
      bson_append_iter(&given, NULL, 0, &it);
   }
   if (bson_iter_init_find(&it, cmd, "autoscaling")) {
      if (!aspen__cmd_check_autoscaling(&it, "startStreamProcessor.autoscaling",
                                        reply)) {
         bson_destroy(&given);
         return true;
      }
      bson_append_iter(&given, NULL, 0, &it);
   }
   bool resume;
   if (!aspen__cmd_resume_arg(cmd, "startStreamProcessor", &resume, reply)) {
      bson_destroy(&given);
      return true;
   }
   aspen_proc_t *p = aspen__cmd_find(ctx, name, reply);
   if (!p) {
      bson_destroy(&given);
      return true;
   }
   aspen__cmd_reap(ctx, p);
   if (aspen_proc_state(p) == ASPEN_PROC_STARTED) {
      aspen_reply_error(reply, ASPEN_ERR_IllegalOperation,
                        "stream processor '%s' is already started", name);
      bson_destroy(&given);
      return true;
   }
   if (aspen_proc_state(p) == ASPEN_PROC_PROVISIONING) {
      aspen_reply_error(reply, ASPEN_ERR_IllegalOperation,
                        "stream processor '%s' is already started (it is still "
                        "starting: state PROVISIONING)",
                        name);
      bson_destroy(&given);
      return true;
   }
   bson_t merged = BSON_INITIALIZER;
   bson_iter_t oi;
   bson_iter_init(&oi, aspen_proc_options(p));
   while (bson_iter_next(&oi)) {
      if (!bson_has_field(&given, bson_iter_key(&oi))) {
         bson_append_iter(&merged, NULL, 0, &oi);
      }
   }
   bson_concat(&merged, &given);
   bool changed = !bson_empty(&given) &&
                  !bson_equal(&merged, aspen_proc_options(p));
   bson_destroy(&given);
   if (!aspen__cmd_check_parallelism(aspen_proc_pipeline(p), &merged, reply)) {
      bson_destroy(&merged);
      return true;
   }
   aspen_error_t err, perr;
   if (!changed) {
      bson_destroy(&merged);
   } else if (!aspen_registry_redefine(ctx->reg, p, NULL, NULL, &merged,
                                       &err)) { /* takes merged */
      aspen__cmd_reply_err(reply, &err);
      return true;
   }
   /* Saved as STARTED before it launches: a start that cannot be saved
    * does not happen (and after a crash a saved one starts again). */
   if (!aspen_registry_save_as(ctx->reg, p, ASPEN_PROC_STARTED, &err)) {
      aspen__cmd_reply_err(reply, &err);
      return true;
   }
   if (!resume) {
      /* Start fresh: the checkpoint (positions, open windows) goes. */
      aspen_registry_drop_checkpoints(ctx->reg, p);
      aspen_logf(ASPEN_LOG_INFO, "STREAMS", name,
                 "starting without resuming: checkpoint removed");
   }
   if (!aspen_proc_launch(p, ctx->env, &err)) {
      aspen_proc_set_state(p, ASPEN_PROC_FAILED, err.message);
      (void) aspen_registry_save(ctx->reg, p, &perr); /* logged */
      aspen__cmd_reply_err(reply, &err);
      return true;
   }
   return aspen__cmd_start_wait(ctx, p, 0, ticket, reply);
}
