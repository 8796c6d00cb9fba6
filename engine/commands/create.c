/*
 * create.c - createStreamProcessor: a named processor from a pipeline and
 * options, checked (its name, its options, the pipeline parsed and
 * authorized) before it is saved; and the pipeline check that create and
 * modify share (every launch makes the same one).
 */
#include "commands/commands.h"
#include "runtime/catalog.h"

bool
aspen__cmd_pipeline_check(aspen_cmd_ctx_t *ctx, const bson_t *pipeline,
                          const bson_t *options, bson_t *reply)
{
   const aspen_catalog_t *cat = ctx->env->catalog;
   aspen_error_t err;
   aspen_pipeline_t *pl =
      aspen_pipeline_parse(pipeline, cat, ctx->conns, false,
                           bson_has_field(options, "dlq"), &err);
   bool ok = pl && aspen_catalog_check(cat, pl, options, ctx->conns, false,
                                       &err);
   aspen_pipeline_destroy(pl);
   if (!ok) {
      aspen__cmd_reply_err(reply, &err);
      return false;
   }
   return aspen__cmd_check_parallelism(pipeline, options, reply);
}

bool
aspen__cmd_create(aspen_cmd_ctx_t *ctx, const bson_t *cmd, uint64_t conn_id,
                  void *ticket, bson_t *reply)
{
   (void) conn_id;
   (void) ticket;
   static const char *const allowed[] = {"pipeline", "options", NULL};
   const char *name = aspen__cmd_name_arg(cmd, "createStreamProcessor", reply);
   bson_t pipeline, options, accepted = BSON_INITIALIZER;
   bool has_opts;
   bool ok =
      name &&
      aspen__cmd_check_fields(cmd, "createStreamProcessor", allowed, reply) &&
      aspen__cmd_get_array(cmd, "pipeline", &pipeline, true,
                           "createStreamProcessor", reply) &&
      aspen__cmd_get_options_doc(cmd, "createStreamProcessor", &options,
                                 &has_opts, reply) &&
      aspen__cmd_check_new_name(name, "createStreamProcessor", reply);
   if (ok && aspen_registry_find(ctx->reg, name)) {
      aspen_reply_error(reply, ASPEN_ERR_StreamProcessorAlreadyExists,
                        "stream processor '%s' already exists", name);
      ok = false;
   }
   ok = ok && aspen__cmd_room_for_one(ctx, reply) &&
        aspen__cmd_check_options(ctx, &options, &accepted, reply) &&
        aspen__cmd_pipeline_check(ctx, &pipeline, &accepted, reply);
   if (!ok) {
      bson_destroy(&accepted);
      return true;
   }
   aspen_proc_t *p =
      aspen_registry_proc_new(name, &pipeline, &accepted, false, 0);
   bson_destroy(&accepted);
   aspen_error_t err;
   if (!aspen_registry_save(ctx->reg, p, &err)) {
      aspen_registry_proc_free(p);
      aspen__cmd_reply_err(reply, &err);
      return true;
   }
   aspen_registry_link(ctx->reg, p);
   aspen_logf(ASPEN_LOG_INFO, "STREAMS", name, "stream processor created");
   aspen_reply_ok(reply);
   return true;
}
