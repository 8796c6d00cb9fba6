/*
 * runtime.h - the processor runtime as the sp commands (commands/) and the
 * composition root (engine.c) drive it: what a processor is handed when it
 * launches (aspen_proc_env_t), processors and their states, stats and
 * sample cursors (processor.c, cursor.c), and the registry that stores
 * them (registry.c). aspen_proc_t is opaque here: its struct lives in
 * runtime_int.h, which only runtime/ includes. Command thread only, except where noted.
 */
#ifndef ASPEN_ENGINE_RUNTIME_RUNTIME_H
#define ASPEN_ENGINE_RUNTIME_RUNTIME_H

#include "runtime/sink.h"

typedef struct aspen_proc aspen_proc_t;
typedef struct aspen_cursor aspen_cursor_t;

/* ------------------------------------------------------------------------ */
/* What a processor is handed at launch                                     */
/* ------------------------------------------------------------------------ */

typedef struct {
   /* The state directory: checkpoints go to <state_dir>/checkpoints/<id>. */
   const char *state_dir;
   /* How often a running processor takes a checkpoint (ms). */
   int64_t checkpoint_interval_ms;
   /* aspen's state limit override (streams.memoryLimitBytes); 0: the
    * tier's (aspen__tier_state_limit). */
   uint64_t memory_limit_bytes;
   /* The stages and connectors there are (runtime/catalog.h), and the
    * connection registry: what the pipeline is parsed against. */
   const aspen_catalog_t *catalog;
   const aspen_conns_t *conns;
   /* The dead-letter queue's writer (options.dlq). */
   const aspen_dlq_ops_t *dlq;
   /* Called by a processor's thread once it has reported its start's
    * result: the command thread should then finish the start
    * (aspen_proc_finish_start) soon. Any thread; may be NULL. */
   void (*start_reported)(void *arg);
   void *arg;
} aspen_proc_env_t;

/* ------------------------------------------------------------------------ */
/* Processors (processor.c)                                                  */
/* ------------------------------------------------------------------------ */

typedef enum {
   ASPEN_PROC_CREATED,
   ASPEN_PROC_STARTED,
   ASPEN_PROC_STOPPED,
   ASPEN_PROC_FAILED,
   /* Started, its thread still opening its source and sinks; the start's
    * reply waits for that. Never persisted (the state file says STARTED:
    * what the user asked for). Only the command thread leaves it. */
   ASPEN_PROC_PROVISIONING,
} aspen_proc_state_t;

const char *aspen_proc_state_name(aspen_proc_state_t s);

/* What a processor is (borrowed; valid until it changes or goes). */
const char *aspen_proc_name(const aspen_proc_t *proc);
const char *aspen_proc_id(const aspen_proc_t *proc);
bool aspen_proc_is_ephemeral(const aspen_proc_t *proc);
const bson_t *aspen_proc_pipeline(const aspen_proc_t *proc);
const bson_t *aspen_proc_options(const aspen_proc_t *proc);
aspen_proc_state_t aspen_proc_state(const aspen_proc_t *proc);
/* The last failure's message ("" when none). */
const char *aspen_proc_error(const aspen_proc_t *proc);
int64_t aspen_proc_state_changed_ms(const aspen_proc_t *proc);
/* The connection an ephemeral (sp.process) processor belongs to. */
uint64_t aspen_proc_owner_conn(const aspen_proc_t *proc);
/* True while a start is under way or the processor runs (STARTED or
 * PROVISIONING): what stop and drop end, and what start and modify
 * refuse. */
bool aspen_proc_is_running(const aspen_proc_t *proc);

/* A processor's figures for getStreamProcessorStats; any thread. */
typedef struct {
   uint64_t input_count, input_size;
   uint64_t output_count, output_size;
   uint64_t dlq_count, dlq_size;
   int64_t watermark_ms;       /* INT64_MIN: none yet */
   uint64_t state_size;        /* open windows, $cachedLookup caches */
   int64_t last_checkpoint_ms; /* 0: none written */
} aspen_proc_stats_t;

void aspen_proc_stats(const aspen_proc_t *proc, aspen_proc_stats_t *out);

/* A running processor's verbose figures (operatorStats, latency, open
 * windows), as its thread published them last (pipeline.h). */
typedef struct {
   const char *name;       /* the operator's: "KafkaConsumerOperator" */
   aspen_op_counts_t c;
   uint64_t state_size;    /* what it holds now (windows, caches) */
   uint64_t max_state;     /* the most it held this run */
   bool is_window;         /* the window stage */
} aspen_proc_op_t;

typedef struct {
   aspen_proc_op_t *ops;   /* source, stages, sink; owned */
   size_t n_ops;
   bool has_sink;          /* the last of ops is a sink (not sp.process) */
   aspen_hist_t recent;    /* latencies (µs) of the last 30 s */
   int64_t recent_start_ms;/* when the oldest of those came, 0: none */
   aspen_hist_t total;     /* every latency of this run */
   int64_t open_min_ms, open_max_ms; /* INT64_MIN: no open window */
} aspen_proc_figures_t;

/* Fills `out` for a processor whose thread runs (true), else leaves it
 * empty (false); aspen_proc_figures_cleanup frees it either way. Command
 * thread. */
bool aspen_proc_figures(const aspen_proc_t *proc, aspen_proc_figures_t *out);
void aspen_proc_figures_cleanup(aspen_proc_figures_t *f);
/* The tier (base/tier.h's rank) the processor runs on, or would start on
 * when it does not run: its options' tier brought into its autoscaling
 * range, moved up since by autoscaling. Command thread. */
int aspen_proc_effective_tier(const aspen_proc_t *proc);
/* A running processor's token-positioned source (a change stream): its
 * last resume token (`token`, initialized on every path; empty before the
 * first) and lag in ms (INT64_MIN: not known). False when it has none to
 * show. Command thread. */
bool aspen_proc_source_position(aspen_proc_t *proc, bson_t *token,
                                int64_t *lag_ms);
/* The source's last aspen_rt_source_figures document, copied into `out`
 * (initialized on every path), from the current or the last run. False
 * when there is none. Any thread: it copies under the processor's lock
 * (the command thread for stats, the processor's for checkpoints). */
bool aspen_proc_source_figures(const aspen_proc_t *proc, bson_t *out);

/* Changes state, logs the transition; the processor's thread must not be
 * running, or the caller holds the start's result (PROVISIONING). */
void aspen_proc_set_state(aspen_proc_t *proc, aspen_proc_state_t st,
                          const char *error);
/* Parses the pipeline against env's catalog and connections, checks it
 * (aspen_catalog_check) and starts the thread, which opens the sink, DLQ
 * and source and then reports the start's result (env->start_reported,
 * from the processor's thread). Does not
 * wait for that. The state is PROVISIONING from then on (the caller
 * leaves it). The run's tier and its state limit come from the options
 * (their tier and autoscaling, which a start saves there first:
 * base/tier.h's aspen_tier_plan). `env`
 * is borrowed for as long as the processor runs. False with err set (and
 * no thread) when the pipeline does not parse or is refused, or no thread
 * can be made. */
bool aspen_proc_launch(aspen_proc_t *proc, const aspen_proc_env_t *env,
                       aspen_error_t *err);
/* True once the launched thread has reported its start's result; any
 * thread. */
bool aspen_proc_start_reported(aspen_proc_t *proc);
/* Waits (if need be) for the launched thread's start result. True when the
 * source and sinks opened: the state is then STARTED, or FAILED when the
 * processor failed since (before anyone took the result). False with err
 * set (the thread joined, nothing left, the state unchanged) when it
 * could not open its peers. */
bool aspen_proc_finish_start(aspen_proc_t *proc, aspen_error_t *err);
/* Stops and joins the thread if there is one. */
void aspen_proc_halt(aspen_proc_t *proc);
/* True (and the thread joined) when the processor's thread failed by
 * itself and was still to be joined: its FAILED state is then the
 * caller's to save. */
bool aspen_proc_reap(aspen_proc_t *proc);

/* ------------------------------------------------------------------------ */
/* Sample cursors (cursor.c)                                                 */
/* ------------------------------------------------------------------------ */

/* Opens cursor `id` of connection `conn_id` on `proc`'s output: the shell
 * cursor of sp.process (`is_shell`: the processor's sink, lossless) or a
 * sample cursor (keeps the newest documents; `limit` 0: unlimited). */
void aspen_cursor_open(aspen_proc_t *proc, int64_t id, uint64_t conn_id,
                       bool is_shell, int64_t limit);
/* Moves up to `batch` documents (a default one when 0 or less) of cursor
 * `id` to the array `messages`. False when `proc` has no such cursor.
 * *exhausted says the cursor is done (its limit reached, or the processor
 * no longer runs and nothing is left). */
bool aspen_cursor_fetch(aspen_proc_t *proc, int64_t id, int64_t batch,
                        bson_t *messages, bool *exhausted);
/* Ends the sample cursors (not the shell's) of connection `conn_id`. */
void aspen_cursor_close_conn(aspen_proc_t *proc, uint64_t conn_id);

/* ------------------------------------------------------------------------ */
/* The registry: the processors store (registry.c)                          */
/* ------------------------------------------------------------------------ */

typedef struct aspen_registry aspen_registry_t;

/* Opens the store of the processors saved in <state_dir>/processors/ (one
 * file each; an older aspen's processors.json is migrated), at most `max`
 * at once. Nothing is started. NULL with err set when a state file is not
 * understood (nothing is rewritten then). */
aspen_registry_t *aspen_registry_open(const char *state_dir, size_t max,
                                      aspen_error_t *err);
/* Frees every processor (halting its thread: its saved state stays as it
 * is, so it starts again with aspen) and the store; NULL: nothing. */
void aspen_registry_destroy(aspen_registry_t *reg);

/* aspen's rules for a new processor name (create, a rename through
 * modify): 1 to 64 bytes of ASCII letters, digits, '_', '-' and '.', and
 * no "..". False with err set (BadValue, naming the command field
 * `field`) when `name` breaks them. */
bool aspen_registry_check_name(const char *name, const char *field,
                               aspen_error_t *err);

/* The processor named `name`, or NULL. */
aspen_proc_t *aspen_registry_find(const aspen_registry_t *reg,
                                  const char *name);
/* The processors in the order they were created: the first, the one
 * after `proc`; NULL at the end. */
aspen_proc_t *aspen_registry_first(const aspen_registry_t *reg);
aspen_proc_t *aspen_registry_next(const aspen_proc_t *proc);
/* How many are linked (sp.process ones included), and whether that is the
 * limit (streams.maxProcessors). */
size_t aspen_registry_count(const aspen_registry_t *reg);
bool aspen_registry_is_full(const aspen_registry_t *reg);

/* A new processor, CREATED, with a fresh id, neither linked nor saved;
 * `pipeline` and `options` (NULL: none) are copied. An ephemeral one
 * (sp.process) belongs to connection `owner_conn` and is never saved. */
aspen_proc_t *aspen_registry_proc_new(const char *name, const bson_t *pipeline,
                                      const bson_t *options, bool ephemeral,
                                      uint64_t owner_conn);
/* Halts an unlinked processor's thread and frees it; NULL: nothing. */
void aspen_registry_proc_free(aspen_proc_t *proc);
void aspen_registry_link(aspen_registry_t *reg, aspen_proc_t *proc);
void aspen_registry_unlink(aspen_registry_t *reg, aspen_proc_t *proc);

/* Saves `proc` in its own file, <stateDir>/processors/<id>.json, as its
 * state or as `st` (PROVISIONING is saved as STARTED); ephemeral ones are
 * never saved. False with err set (and logged) when it cannot be encoded
 * or written: the file on disk is then the old one. */
bool aspen_registry_save(aspen_registry_t *reg, const aspen_proc_t *proc,
                         aspen_error_t *err);
bool aspen_registry_save_as(aspen_registry_t *reg, const aspen_proc_t *proc,
                            aspen_proc_state_t st, aspen_error_t *err);
/* Deletes `proc`'s file (it is being dropped). False with err set (and
 * logged) when it is still there. */
bool aspen_registry_unsave(aspen_registry_t *reg, const aspen_proc_t *proc,
                           aspen_error_t *err);
/* Gives a stopped `proc` a new definition (modify): `new_name` (NULL:
 * the same), `pipeline` (NULL: the same, else copied) and `options`
 * (taken, on every path), and saves it. False with err set when the save
 * fails: the old definition is back, in memory as on disk. */
bool aspen_registry_redefine(aspen_registry_t *reg, aspen_proc_t *proc,
                             const char *new_name, const bson_t *pipeline,
                             bson_t *options, aspen_error_t *err);
/* Deletes `proc`'s checkpoints: it was dropped, or starts (or was
 * modified to start) without resuming. */
void aspen_registry_drop_checkpoints(const aspen_registry_t *reg,
                                     const aspen_proc_t *proc);
/* Appends `proc`'s listing entry ({id, name, state, pipeline, tier,
 * options, errorMsg, lastModified, lastStateChange}: listStreamProcessors'
 * and getStreamProcessor's) to `out`. */
void aspen_registry_entry(const aspen_proc_t *proc, bson_t *out);

#endif /* ASPEN_ENGINE_RUNTIME_RUNTIME_H */
