/*
 * commands.h - inside commands/ and for engine.c only: the sp command
 * handlers (one file per command or small family, one row each in
 * commands.def), what they work on (aspen_cmd_ctx_t, which engine.c owns)
 * and the helpers they share.
 *
 * Commands and replies follow ../shared/spec/mongosh-sp-contract.md §2 and
 * asp-semantics.md §7. Every command checks its fields strictly, ignoring
 * only what drivers add ($db, lsid, $clusterTime, ...), so a typo in an
 * option is an error, as with ASP's strict option parsing. Command thread
 * only, except where noted.
 */
#ifndef ASPEN_ENGINE_COMMANDS_COMMANDS_H
#define ASPEN_ENGINE_COMMANDS_COMMANDS_H

#include "base/tier.h"
#include "engine_types.h"
#include "runtime/runtime.h"

#include <pthread.h>

/* A start whose reply waits for its processor's thread (start.c). */
typedef struct aspen_cmd_pending aspen_cmd_pending_t;

/* What the handlers work on: the processors, the connections, what every
 * processor is handed when it launches, and how deferred start replies go
 * back. */
typedef struct {
   aspen_registry_t *reg;
   const aspen_conns_t *conns;
   const aspen_proc_env_t *env;
   int64_t next_cursor_id;
   /* How deferred start replies go back (aspen_engine_set_hooks). Set and
    * read under hooks_mu: processor threads call the wake hook. */
   pthread_mutex_t hooks_mu;
   aspen_engine_hooks_t hooks;
   aspen_cmd_pending_t *pending;
} aspen_cmd_ctx_t;

/* A row's handler: runs the command `cmd` of client connection `conn_id`.
 * True when `reply` (initialised, empty) holds the reply; false when it is
 * deferred (only a start, and only with hooks set: `ticket` comes back
 * with the reply through the reply hook, exactly once). */
typedef bool (*aspen_cmd_fn)(aspen_cmd_ctx_t *ctx, const bson_t *cmd,
                             uint64_t conn_id, void *ticket, bson_t *reply);

/* The handlers, one per commands.def row. */
#define ASPEN_SP_COMMAND(name, handler, action, flags)                         \
   bool handler(aspen_cmd_ctx_t *ctx, const bson_t *cmd, uint64_t conn_id,    \
                void *ticket, bson_t *reply);
#include "commands/commands.def"
#undef ASPEN_SP_COMMAND

/* ---- metrics.c ------------------------------------------------------------- */

/* The processors' figures in Prometheus' text format (aspen_engine_metrics),
 * to free with bson_free. */
char *aspen__cmd_metrics(aspen_cmd_ctx_t *ctx);

/* ---- args.c: checking a command's fields ----------------------------------- */

/* The parallelism a pipeline adds to its tier's: the sum over its stages
 * of each `parallelism` above 1, less one each (asp-semantics.md §8.3);
 * 0 when none has one. */
int64_t aspen__cmd_added_parallelism(const bson_t *pipeline);
/* Checks an autoscaling option ({enabled (required), minTier, maxTier},
 * minTier not above maxTier) at `where` ("options.autoscaling"): false
 * with `reply` filled (420) when it is not one. */
bool aspen__cmd_check_autoscaling(const bson_iter_t *it, const char *where,
                                  bson_t *reply);
/* Refuses (420, naming the smallest tier that allows it) a pipeline whose
 * cumulative parallelism (1 + aspen__cmd_added_parallelism) exceeds what
 * the tier it would run on with `options` allows (base/tier.h). */
bool aspen__cmd_check_parallelism(const bson_t *pipeline,
                                  const bson_t *options, bson_t *reply);

/* Refuses a string that is not valid UTF-8 anywhere in `cmd` (names,
 * pipelines and options are saved and sent back in replies), or nesting
 * past what aspen walks: false with `reply` filled (InvalidBSON) naming
 * where. `name` is the command's name. */
bool aspen__cmd_check_utf8(const char *name, const bson_t *cmd,
                           bson_t *reply);
/* Fills `reply` with `err`, and ASP's errorLabels for a user error. */
void aspen__cmd_reply_err(bson_t *reply, const aspen_error_t *err);
/* True when every field of `cmd` after the first is one drivers add or
 * listed in `allowed` (NULL-terminated; NULL: none); else false with
 * `reply` filled. */
bool aspen__cmd_check_fields(const bson_t *cmd, const char *name,
                             const char *const *allowed, bson_t *reply);
/* The processor name in the command's first field (borrowed), or NULL
 * with `reply` filled. */
const char *aspen__cmd_name_arg(const bson_t *cmd, const char *cmdname,
                                bson_t *reply);
/* aspen_registry_check_name with the refusal in `reply`. */
bool aspen__cmd_check_new_name(const char *name, const char *field,
                               bson_t *reply);
/* The processor named `name`, or NULL with `reply` filled (it does not
 * exist). */
aspen_proc_t *aspen__cmd_find(aspen_cmd_ctx_t *ctx, const char *name,
                              bson_t *reply);
/* The processor a command names in its first field, after checking its
 * other fields against `allowed`; NULL (reply filled) on any problem. */
aspen_proc_t *aspen__cmd_proc_arg(aspen_cmd_ctx_t *ctx, const bson_t *cmd,
                                  const char *cmdname,
                                  const char *const *allowed, bson_t *reply);
/* True when one more processor fits under streams.maxProcessors; else
 * false with the refusal in `reply`. */
bool aspen__cmd_room_for_one(aspen_cmd_ctx_t *ctx, bson_t *reply);
/* Checks a tier name at `where` ("options.tier"); false with `reply`
 * filled when it is not one of ASP's. */
bool aspen__cmd_check_tier(const bson_iter_t *it, const char *where,
                           bson_t *reply);
/* Validates a processor's options (create, process, modify) and copies
 * the accepted ones to `out`; false with `reply` filled. */
bool aspen__cmd_check_options(aspen_cmd_ctx_t *ctx, const bson_t *options,
                              bson_t *out, bson_t *reply);
/* A view of the array field `key` of `cmd` in `out`. False when it is
 * missing (`reply` filled when `required`) or not an array (filled). */
bool aspen__cmd_get_array(const bson_t *cmd, const char *key, bson_t *out,
                          bool required, const char *cmdname, bson_t *reply);
/* A view of the `options` document of `cmd` (empty when absent or null;
 * *present says it was given). False with `reply` filled when it is not
 * a document. */
bool aspen__cmd_get_options_doc(const bson_t *cmd, const char *cmdname,
                                bson_t *out, bool *present, bson_t *reply);
/* A resumeFromCheckpoint field, true when absent; false with `reply`
 * filled (TypeMismatch) when it is not a boolean. */
bool aspen__cmd_resume_arg(const bson_t *cmd, const char *cmdname,
                           bool *resume, bson_t *reply);

/* ---- create.c ------------------------------------------------------------------ */

/* Parses `pipeline` for a processor with `options` (already accepted)
 * against the env's catalog and connections, and checks it with the
 * catalog's check (the namespaces it reaches through Atlas connections
 * are allowed by their dbRoleToExecute, options.exactlyOnce holds), as
 * every launch does again; false with `reply` filled. */
bool aspen__cmd_pipeline_check(aspen_cmd_ctx_t *ctx, const bson_t *pipeline,
                               const bson_t *options, bson_t *reply);

/* ---- start.c: starts, and deferred replies ----------------------------------------- */

/* `proc` was launched (aspen_proc_launch): PROVISIONING until its thread
 * reports. Without a reply hook, waits for that and fills `reply` (true).
 * With one, keeps `ticket` and returns false: aspen__cmd_poll replies
 * once the thread has reported, and other commands run meanwhile. An
 * sp.process processor's reply names its shell cursor `cursor_id`. */
bool aspen__cmd_start_wait(aspen_cmd_ctx_t *ctx, aspen_proc_t *proc,
                           int64_t cursor_id, void *ticket, bson_t *reply);
/* Ends `proc`'s start if one is under way: stops and joins its thread (a
 * Kafka metadata wait notices within half a second) and answers the
 * pending start with error `code`, "stream processor '<name>' <why>".
 * Also just halts a running processor. The caller sets the state. */
void aspen__cmd_start_abort(aspen_cmd_ctx_t *ctx, aspen_proc_t *proc,
                            int32_t code, const char *why);
/* A thread that failed by itself is still to be joined; its FAILED state
 * is saved then. */
void aspen__cmd_reap(aspen_cmd_ctx_t *ctx, aspen_proc_t *proc);
/* The processors' start_reported (aspen_proc_env_t; `arg` is the ctx):
 * asks the caller (its wake hook) to call aspen_engine_poll. Any
 * thread. */
void aspen__cmd_start_reported(void *arg);
/* aspen_engine_poll, aspen_engine_cancel_starts (engine.h). */
void aspen__cmd_poll(aspen_cmd_ctx_t *ctx);
void aspen__cmd_cancel_starts(aspen_cmd_ctx_t *ctx);
/* Starts again, synchronously, the processors that were running when
 * aspen stopped (aspen_engine_new). */
void aspen__cmd_restart_saved(aspen_cmd_ctx_t *ctx);
/* Ends every start still pending, as a shutdown does, and frees the
 * pending list (aspen_engine_destroy). */
void aspen__cmd_end_starts(aspen_cmd_ctx_t *ctx);

/* ---- process.c ------------------------------------------------------------------- */

/* aspen_engine_connection_closed (engine.h). */
void aspen__cmd_connection_closed(aspen_cmd_ctx_t *ctx, uint64_t conn_id);

#endif /* ASPEN_ENGINE_COMMANDS_COMMANDS_H */
