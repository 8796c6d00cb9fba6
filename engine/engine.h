/*
 * engine.h - the only engine API the proxy uses.
 *
 * The engine owns the connection registry, the stream processors (their
 * definitions, persisted in the state directory, and their runtime threads)
 * and the sample cursors behind sp.process() and sample(). The proxy hands it
 * the `sp` commands mongosh sends (createStreamProcessor, ...,
 * getMoreSampleStreamProcessor, listStreamConnections) and sends back the
 * reply it builds.
 *
 * Threading: aspen_engine_command may block (it writes the state file with
 * fsync, starts and joins processor threads), so the proxy calls it from a
 * worker thread, never from the event loop; calls must not overlap (the
 * proxy serialises them: "the command thread" below is whichever thread
 * makes the current call). Every processor runs on its own thread.
 *
 * Starts do not hold up other commands: a processor's thread may need
 * seconds to open its source and sinks (an unreachable Kafka cluster: 10 s)
 * and the start's reply waits for that, so with hooks set
 * (aspen_engine_set_hooks) startStreamProcessor and processStreamProcessor
 * return at once, the processor PROVISIONING, and reply later through the
 * reply hook, from aspen_engine_poll (which the wake hook asks for) or from
 * a command that ends the start (stop, drop, the connection closing).
 */
#ifndef ASPEN_ENGINE_H
#define ASPEN_ENGINE_H

#include "engine_types.h"

typedef struct aspen_engine aspen_engine_t;

typedef struct {
   /* Directory for the processors' files (processors/<id>.json) and
    * checkpoints; created if missing. */
   const char *state_dir;
   /* The configured connections: an array of {name, type, ...} documents,
    * or NULL. Types: "atlas" {uri} (uri defaults to backend_uri), "kafka"
    * {bootstrapServers, ...}. sample_stream_solar is always there. */
   const bson_t *connections;
   /* URI of the proxy's backing deployment, or NULL. */
   const char *backend_uri;
   /* How often a running processor takes a checkpoint (ms); 0 for the
    * default, 5000. Checkpoints are also taken at start and on stop. */
   int64_t checkpoint_interval_ms;
   /* The state limit of every processor (bytes); 0 for ASP's: 80 % of the
    * processor's tier's RAM (SP10 when it names none). Past it a processor
    * fails with 418 "Worker out of memory". */
   uint64_t memory_limit_bytes;
   /* The most processors (named and sp.process ones) at once; 0 for the
    * default, 10000. A create past it is refused. */
   size_t max_processors;
   /* The $function expression's limits: one call's time (ms) and one
    * $function's JavaScript heap (bytes); 0 for the defaults, 60 s and
    * 64 MB. A call past either fails its document. */
   uint64_t function_time_limit_ms;
   uint64_t function_memory_limit_bytes;
   /* How Atlas connections' dbRoleToExecute roles are resolved and
    * checked (copied), or NULL: roles are listed but not enforced, every
    * namespace is reachable (tests and fuzz targets without users). */
   const aspen_engine_authz_t *authz;
} aspen_engine_opts_t;

/* Loads the persisted processors and restarts those that were running.
 * Returns NULL with err set when the state directory or the connection list
 * is unusable. */
aspen_engine_t *aspen_engine_new(const aspen_engine_opts_t *opts,
                                 aspen_error_t *err);
/* Stops every processor (taking no new input, flushing sinks) without
 * changing their persisted state, so they start again with aspen. */
void aspen_engine_destroy(aspen_engine_t *eng);

/* The sp commands (engine/commands/commands.def), as the proxy routes,
 * authorizes and audits them. */
enum {
   /* What the command does to a processor (the audit log's activity):
    * creates one, changes one (start, stop, modify), deletes one, or
    * reads its output (a sample). None of these: it only looks. */
   ASPEN_ENGINE_CMD_CREATES = 1u << 0,
   ASPEN_ENGINE_CMD_UPDATES = 1u << 1,
   ASPEN_ENGINE_CMD_DELETES = 1u << 2,
   ASPEN_ENGINE_CMD_READS = 1u << 3,
   /* It also reads what the processor produces (sp.process opens its
    * shell cursor): it needs sampleStreamProcessor as well as its own
    * action. */
   ASPEN_ENGINE_CMD_SAMPLES = 1u << 4,
};

typedef struct {
   const char *name;   /* "createStreamProcessor" */
   const char *action; /* the ASP privilege action it needs */
   unsigned flags;     /* ASPEN_ENGINE_CMD_* */
} aspen_engine_command_t;

/* The sp command named `name` (exact match), or NULL when the engine does
 * not answer it. Any thread (the table is constant). */
const aspen_engine_command_t *aspen_engine_command_find(const char *name);

/* Runs one command. `conn_id` identifies the client connection (sample
 * cursors belong to it). `reply` is an initialised, empty document. Returns
 * true when `reply` holds the reply: the success reply or {ok: 0, errmsg,
 * code, codeName}. Returns false (reply left empty) when the reply is
 * deferred, which only a start does and only with hooks set: the engine
 * keeps `ticket`, borrowed, and hands it back with the reply, exactly once,
 * through the reply hook. */
bool aspen_engine_command(aspen_engine_t *eng, const char *name,
                          const bson_t *cmd, uint64_t conn_id, void *ticket,
                          bson_t *reply);

/* Sets the hooks (aspen_engine_hooks_t, engine_types.h: where deferred
 * replies go), copied, or with NULL removes them; any thread. Once it
 * returns, no processor thread is inside the old wake hook. Remove them
 * only with no start pending (aspen_engine_cancel_starts). */
void aspen_engine_set_hooks(aspen_engine_t *eng,
                            const aspen_engine_hooks_t *hooks);

/* Finishes the starts whose processor threads have reported: sets their
 * state (STARTED, or FAILED with the reason; a failed sp.process processor
 * goes), saves it, and replies through the reply hook. Command thread. */
void aspen_engine_poll(aspen_engine_t *eng);

/* For shutdown: finishes the starts that have reported, and ends every
 * other pending one (its thread joined, error 417 replied); the state file
 * keeps those STARTED, so they start again with aspen. Command thread. */
void aspen_engine_cancel_starts(aspen_engine_t *eng);

/* The client connection `conn_id` closed: its sample cursors end, and the
 * ephemeral processors they were reading (sp.process) are dropped; one
 * still starting has its pending start answered with an error first. */
void aspen_engine_connection_closed(aspen_engine_t *eng, uint64_t conn_id);
/* The processors' figures in Prometheus' text exposition format (state,
 * input/output/DLQ counters, state size, Kafka lag, latency histograms),
 * for aspen's opt-in metrics endpoint; free with bson_free. Command
 * thread. */
char *aspen_engine_metrics(aspen_engine_t *eng);

#endif /* ASPEN_ENGINE_H */
