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
 * proxy serialises them). Every processor runs on its own thread.
 */
#ifndef ASPEN_ENGINE_H
#define ASPEN_ENGINE_H

#include "wire.h"

typedef struct aspen_engine aspen_engine_t;

typedef struct {
   /* Directory for processors.json and checkpoints; created if missing. */
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
} aspen_engine_opts_t;

/* Loads the persisted processors and restarts those that were running.
 * Returns NULL with err set when the state directory or the connection list
 * is unusable. */
aspen_engine_t *aspen_engine_new(const aspen_engine_opts_t *opts,
                                 aspen_error_t *err);
/* Stops every processor (taking no new input, flushing sinks) without
 * changing their persisted state, so they start again with aspen. */
void aspen_engine_destroy(aspen_engine_t *eng);

/* True for the command names the engine answers. */
bool aspen_engine_is_command(const char *name);

/* Runs one command. `conn_id` identifies the client connection (sample
 * cursors belong to it). `reply` is an initialised, empty document that gets
 * either the success reply or {ok: 0, errmsg, code, codeName}. */
void aspen_engine_command(aspen_engine_t *eng, const char *name,
                          const bson_t *cmd, uint64_t conn_id, bson_t *reply);

/* The client connection `conn_id` closed: its sample cursors end, and the
 * ephemeral processors they were reading (sp.process) are dropped. */
void aspen_engine_connection_closed(aspen_engine_t *eng, uint64_t conn_id);

#endif /* ASPEN_ENGINE_H */
