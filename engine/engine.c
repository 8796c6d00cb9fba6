/*
 * engine.c - the stream engine's composition root (engine.h): it takes the
 * built-in catalog of stages and connectors (builtins.c), opens the
 * connection registry through it (connectors/connections.c) and the
 * processors store (runtime/registry.c), hands the runtime what every
 * processor needs when it launches (aspen_proc_env_t: the state directory,
 * checkpoint interval, memory limit, the catalog, the connections, the DLQ
 * writer and the "start reported" callback), and dispatches the sp
 * commands through the one command table (commands/commands.def) to their
 * handlers in commands/.
 *
 * Every command's strings (field names included) must be valid UTF-8, as
 * the saved state and every reply must be: that is checked here, before
 * any handler runs. Processors that were running when aspen stopped are
 * started again when it comes back.
 */
#include "engine.h"
#include "builtins.h"
#include "commands/commands.h"
#include "connectors/coll_writer.h"
#include "connectors/connections.h"
#include "file.h"
#include "lang/expr.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_CHECKPOINT_INTERVAL_MS 5000
#define DEFAULT_MAX_PROCESSORS 10000

struct aspen_engine {
   char *state_dir;
   aspen_conns_t conns;
   /* What every processor is handed when it launches. */
   aspen_proc_env_t env;
   /* What the command handlers work on (the registry among it). */
   aspen_cmd_ctx_t ctx;
};

/* The sp commands: the public row and its handler. */
typedef struct {
   aspen_engine_command_t cmd;
   aspen_cmd_fn handler;
} command_row_t;

static const command_row_t commands[] = {
#define ASPEN_SP_COMMAND(name, handler, action, flags)                         \
   {{name, action, flags}, handler},
#include "commands/commands.def"
#undef ASPEN_SP_COMMAND
};

static const command_row_t *
command_row(const char *name)
{
   for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
      if (strcmp(commands[i].cmd.name, name) == 0) {
         return &commands[i];
      }
   }
   return NULL;
}

const aspen_engine_command_t *
aspen_engine_command_find(const char *name)
{
   const command_row_t *row = command_row(name);
   return row ? &row->cmd : NULL;
}

bool
aspen_engine_command(aspen_engine_t *eng, const char *name, const bson_t *cmd,
                     uint64_t conn_id, void *ticket, bson_t *reply)
{
   /* Names, pipelines and options are saved and sent back in replies:
    * text that is not UTF-8 is refused here, before anything keeps it. */
   if (!aspen__cmd_check_utf8(name, cmd, reply)) {
      return true;
   }
   const command_row_t *row = command_row(name);
   if (!row) {
      aspen_reply_error(reply, ASPEN_ERR_CommandNotFound,
                        "no such command: '%s'", name);
      return true;
   }
   return row->handler(&eng->ctx, cmd, conn_id, ticket, reply);
}

void
aspen_engine_set_hooks(aspen_engine_t *eng, const aspen_engine_hooks_t *hooks)
{
   pthread_mutex_lock(&eng->ctx.hooks_mu);
   if (hooks) {
      eng->ctx.hooks = *hooks;
   } else {
      memset(&eng->ctx.hooks, 0, sizeof eng->ctx.hooks);
   }
   pthread_mutex_unlock(&eng->ctx.hooks_mu);
}

void
aspen_engine_poll(aspen_engine_t *eng)
{
   aspen__cmd_poll(&eng->ctx);
}

void
aspen_engine_cancel_starts(aspen_engine_t *eng)
{
   aspen__cmd_cancel_starts(&eng->ctx);
}

void
aspen_engine_connection_closed(aspen_engine_t *eng, uint64_t conn_id)
{
   aspen__cmd_connection_closed(&eng->ctx, conn_id);
}

char *
aspen_engine_metrics(aspen_engine_t *eng)
{
   return aspen__cmd_metrics(&eng->ctx);
}

aspen_engine_t *
aspen_engine_new(const aspen_engine_opts_t *opts, aspen_error_t *err)
{
   if (!aspen_file_mkdirs(opts->state_dir)) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "cannot create state directory %s: %s",
                      opts->state_dir, strerror(errno));
      return NULL;
   }
   aspen_engine_t *eng = aspen_xcalloc(1, sizeof *eng);
   aspen_cmd_ctx_t *ctx = &eng->ctx;
   pthread_mutex_init(&ctx->hooks_mu, NULL);
   eng->state_dir = aspen_xstrdup(opts->state_dir);
   size_t max = opts->max_processors > 0 ? opts->max_processors
                                         : DEFAULT_MAX_PROCESSORS;
   const aspen_catalog_t *catalog = aspen_builtins_catalog();
   if (!aspen_conns_load(&eng->conns, catalog, opts->connections,
                         opts->backend_uri, opts->authz, err) ||
       !(ctx->reg = aspen_registry_open(eng->state_dir, max, err))) {
      aspen_engine_destroy(eng);
      return NULL;
   }
   aspen_expr_function_set_limits(opts->function_time_limit_ms,
                                  opts->function_memory_limit_bytes);
   eng->env = (aspen_proc_env_t){
      .state_dir = eng->state_dir,
      .checkpoint_interval_ms = opts->checkpoint_interval_ms > 0
                                   ? opts->checkpoint_interval_ms
                                   : DEFAULT_CHECKPOINT_INTERVAL_MS,
      .memory_limit_bytes = opts->memory_limit_bytes,
      .catalog = catalog,
      .conns = &eng->conns,
      .dlq = &aspen_coll_writer_dlq_ops,
      .start_reported = aspen__cmd_start_reported,
      .arg = ctx,
   };
   ctx->conns = &eng->conns;
   ctx->env = &eng->env;
   /* Processors that were running when aspen stopped run again. */
   aspen__cmd_restart_saved(ctx);
   return eng;
}

void
aspen_engine_destroy(aspen_engine_t *eng)
{
   if (!eng) {
      return;
   }
   aspen__cmd_end_starts(&eng->ctx);
   /* Stops every thread; the saved states stay STARTED. */
   aspen_registry_destroy(eng->ctx.reg);
   aspen_conns_cleanup(&eng->conns);
   pthread_mutex_destroy(&eng->ctx.hooks_mu);
   free(eng->state_dir);
   free(eng);
}
