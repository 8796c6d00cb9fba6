/*
 * sink.h - what a processor sink ($merge, $emit) provides and what the
 * processor runtime (rt.c) offers it beyond source.h. Each sink kind
 * is one aspen_sink_ops_t in connectors/ (sink_merge.c, sink_emit_kafka.c),
 * the $merge or $emit sink of a connection type's row of
 * connectors/connectors.def; the stage parser picks it through the
 * connection (sink_stages.c) and the pipeline keeps it (pl->sink).
 * Processor thread, except parse.
 */
#ifndef ASPEN_ENGINE_RUNTIME_SINK_H
#define ASPEN_ENGINE_RUNTIME_SINK_H

#include "runtime/source.h"

struct aspen_sink_ops {
   const char *operator_name; /* names the sink in DLQ entries */
   /* The sink may be opened once per worker (runtime/workers.c), each
    * instance on its own thread writing independently of the others
    * (its own client; no names or files shared between instances). */
   bool per_worker;
   /* Validates the sink stage's argument `spec` when a processor is
    * created or started (no I/O, any thread): false with a 420 error in
    * ASP's wording, positioned by `pc`. */
   bool (*parse)(const bson_t *spec, aspen_parse_ctx_t *pc,
                 aspen_error_t *err);
   /* Connects; false fails the start. `spec` is the stage's argument. */
   bool (*open)(aspen_runtime_t *rt, const bson_t *spec, void **state,
                aspen_error_t *err);
   /* Takes one output document (with _stream_meta). A document the target
    * refuses goes to aspen_rt_sink_failed; false (err set) is fatal. */
   bool (*write)(aspen_runtime_t *rt, void *state, const bson_t *doc,
                 aspen_error_t *err);
   /* Makes everything written so far durable at the target. */
   bool (*flush)(aspen_runtime_t *rt, void *state, aspen_error_t *err);
   void (*close)(void *state);
   /* Exactly-once sinks only (options.exactlyOnce; NULL otherwise).
    * commit: makes everything written since the last commit visible
    * atomically with the source positions `pos` (the replay offsets of the
    * n partitions) tagged with `checkpoint_id`, then opens the next
    * transaction. Called right after a successful flush and after the
    * checkpoint `checkpoint_id` was written. False (err set) is fatal and
    * leaves nothing of the transaction visible. */
   bool (*commit)(aspen_runtime_t *rt, void *state, const aspen_rt_pos_t *pos,
                  size_t n, const char *checkpoint_id, aspen_error_t *err);
   /* committed: appends to the array `ids` the checkpoint ids the target
    * holds with its committed positions (none before the first commit).
    * Called after open, before the checkpoint is restored; false (err
    * set) fails the start. */
   bool (*committed)(aspen_runtime_t *rt, void *state, bson_t *ids,
                     aspen_error_t *err);
};

/* Called for each entry the DLQ's target refused. */
typedef void (*aspen_dlq_refused_fn)(void *arg, const bson_t *doc,
                                     const char *reason);

/* The dead-letter queue's writer (options.dlq: a collection of an Atlas
 * connection): connectors/coll_writer.c implements it, engine.c hands it
 * to every processor (aspen_proc_env_t), dlq.c uses it. Processor
 * thread. */
typedef struct {
   /* Connects to collection db.coll of connection `conn_name`; NULL with
    * err set (the whole message: the start fails with it). */
   void *(*open)(const aspen_conns_t *conns, const char *conn_name,
                 const char *db, const char *coll, aspen_error_t *err);
   /* Queues a copy of `doc`; writes when the batch is full. False (err
    * set) when a write could not reach the server. */
   bool (*add)(void *w, const bson_t *doc, aspen_dlq_refused_fn refused,
               void *arg, aspen_error_t *err);
   /* Writes what is queued. */
   bool (*flush)(void *w, aspen_dlq_refused_fn refused, void *arg,
                 aspen_error_t *err);
   void (*close)(void *w);
} aspen_dlq_ops_t;

/* True when the flush being made may be followed by a checkpoint: the
 * checkpoint interval has passed, or the flush is forced (a source's
 * commit, the final flush). A sink that batches output into larger units
 * than a flush (files of $emit to S3) may keep a partial unit open in a
 * flush when this is false, and must write it when it is true: the
 * checkpoint records its inputs as done. Processor thread, in flush. */
bool aspen_rt_checkpoint_due(const aspen_runtime_t *rt);

/* A document the sink's target refused: to the DLQ with `reason`. */
void aspen_rt_sink_failed(aspen_runtime_t *rt, const bson_t *doc,
                          const char *reason);

#endif /* ASPEN_ENGINE_RUNTIME_SINK_H */
