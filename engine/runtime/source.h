/*
 * source.h - what a $source implementation provides and what the processor
 * runtime (rt.c, checkpointing.c) offers it. Each source kind (documents,
 * sample_stream_solar, Kafka, change streams) is one aspen_source_ops_t in
 * its own connectors/source_<kind>.c, the source of a connection type's row
 * of connectors/connectors.def (documents: the catalog's source without a
 * connection). Parsing runs on the command thread, the rest on the
 * processor's thread.
 */
#ifndef ASPEN_ENGINE_RUNTIME_SOURCE_H
#define ASPEN_ENGINE_RUNTIME_SOURCE_H

#include "runtime/pipeline.h"

typedef struct aspen_runtime aspen_runtime_t;

struct aspen_source_ops {
   const char *type;          /* _stream_meta.source.type */
   const char *operator_name; /* names the source in DLQ entries */
   const char *what;          /* names it in messages: "a Kafka $source" */
   /* Parsing, when a processor is created or started (no I/O, any
    * thread). parse_option: one option of the $source argument that the
    * runtime does not read itself (connectionName, documents' presence,
    * timeField, tsFieldName, tsFieldOverride), into spec->opts, the
    * kind's own (NULL until it sets it). *handled false: not this kind's
    * option, which the runtime refuses by name. False with a 420 error
    * (ASP's wording) on a bad value. NULL: a kind without options. */
   bool (*parse_option)(aspen_source_spec_t *spec, const bson_iter_t *it,
                        aspen_parse_ctx_t *pc, bool *handled,
                        aspen_error_t *err);
   /* Once every option is read: what is required or goes together. NULL:
    * nothing to check. */
   bool (*parse_done)(aspen_source_spec_t *spec, aspen_parse_ctx_t *pc,
                      aspen_error_t *err);
   /* Frees spec->opts (NULL too). NULL: the kind keeps none. */
   void (*spec_destroy)(void *opts);
   /* Connects and checks what the source needs; false fails the start with
    * err (the processor never reaches STARTED). *state may be set. */
   bool (*open)(aspen_runtime_t *rt, void **state, aspen_error_t *err);
   /* Produces documents with aspen_rt_ingest until aspen_rt_stopping();
    * idles with aspen_rt_wait; a fatal error calls aspen_rt_fail. */
   void (*run)(aspen_runtime_t *rt, void *state);
   void (*close)(void *state);
   /* What the source reads from, when that can be replaced under the same
    * connection: the broker aspen hosts for a "local" Kafka connection
    * lives in aspen's memory and starts empty in each aspen process.
    * Checkpoints save it with their positions; positions saved under
    * another epoch are void, and every partition is read from its start
    * (all it holds came after that checkpoint). NULL (the op or its
    * result): positions are always valid. Command or processor thread. */
   const char *(*epoch)(const aspen_source_spec_t *spec);
};

/* ---- the runtime, for sources ------------------------------------------- */

/* Sends one document into the pipeline. `meta` is its stream metadata
 * ({source: {type, topic, partition, ...}}), NULL for the source default.
 * `source_ts_ms` is the source's own event time (Kafka timestamp, change
 * wallTime) or INT64_MIN for "now"; the $source timeField, when set, wins. */
void aspen_rt_ingest(aspen_runtime_t *rt, const bson_t *raw,
                     const bson_t *meta, int64_t source_ts_ms);
/* The same for a source that stamps its metadata itself: `meta` already
 * holds source.ts = `ingest_ms` (aspen_clock_now_ms(), read when the input
 * came in) right after source.type, as aspen_rt_ingest would have put it,
 * so the metadata is not written a second time. */
void aspen_rt_ingest_stamped(aspen_runtime_t *rt, const bson_t *raw,
                             const bson_t *meta, int64_t ingest_ms,
                             int64_t source_ts_ms);
/* Sends something the source could not turn into a document to the DLQ. */
void aspen_rt_dead_letter(aspen_runtime_t *rt, const bson_t *doc,
                          const bson_t *meta, const char *reason);
/* True once the processor is stopping or failed. */
bool aspen_rt_stopping(aspen_runtime_t *rt);
/* Flushes the sinks and waits up to `ms` (less if stopped); true when the
 * processor is stopping. Sources call it whenever they have nothing to do. */
bool aspen_rt_wait(aspen_runtime_t *rt, int64_t ms);
/* Fails the processor with `msg` (state FAILED, shown in stats/listings). */
void aspen_rt_fail(aspen_runtime_t *rt, const char *msg);
uint64_t aspen_rt_random(aspen_runtime_t *rt);
const aspen_source_spec_t *aspen_rt_source_spec(const aspen_runtime_t *rt);
bool aspen_rt_is_ephemeral(const aspen_runtime_t *rt);
const char *aspen_rt_processor_name(const aspen_runtime_t *rt);
const aspen_conns_t *aspen_rt_conns(const aspen_runtime_t *rt);
/* The processor's id (24 hex digits). */
const char *aspen_rt_processor_id(const aspen_runtime_t *rt);
/* True when the processor runs with options.exactlyOnce: its sink commits
 * the source positions in its transactions, so the source must not commit
 * them itself. */
bool aspen_rt_exactly_once(const aspen_runtime_t *rt);
/* The engine's checkpoint interval (streams.checkpointIntervalMs). */
int64_t aspen_rt_checkpoint_interval_ms(const aspen_runtime_t *rt);
/* Flushes the sink and the DLQ now. True when everything handed to them so
 * far is durable at the target (what a source may then commit); false when
 * the processor failed (now or before). */
bool aspen_rt_flush(aspen_runtime_t *rt);

/* ---- partitions in parallel (workers.c) ---------------------------------- */

/* Processes one item a source handed to a worker (aspen_rt_workers_submit)
 * on that worker's thread, with the worker's runtime `wrt`, which the
 * ingest, dead-letter and mark calls take as they take the processor's;
 * takes the item. `drop` frees an item never processed (the processor
 * failed). */
typedef void (*aspen_rt_work_fn)(aspen_runtime_t *wrt, void *item, void *arg);
typedef void (*aspen_rt_drop_fn)(void *item);
/* How many worker threads a source reading `partitions` partitions may
 * spread them over: 1 (no workers) unless every stage up to the sink is
 * stateless (no window, no stage holding connections or caches), the
 * source's inputs decode on any thread (aspen_source_spec_t.per_worker),
 * the sink can be opened per worker (aspen_sink_ops_t.per_worker) and the
 * processor is neither exactly-once nor on the virtual clock; then the
 * least of `partitions`, the tier's vCPUs and the host's CPUs. */
int aspen_rt_workers_allowed(const aspen_runtime_t *rt, int64_t partitions);
/* Starts `n` (> 1) workers, each with its own instance of the pipeline and
 * its own sink (the processor thread's is closed: from now on only the
 * workers output); `work` gets each item. False with err set when a
 * worker's sink could not open (no workers are left running). */
bool aspen_rt_workers_start(aspen_runtime_t *rt, int n, aspen_rt_work_fn work,
                            aspen_rt_drop_fn drop, void *arg,
                            aspen_error_t *err);
/* Hands `item` to worker `worker` (0 .. n-1); each worker processes its
 * items in the order handed, so a partition always handed to the same
 * worker keeps its order. The source marks the item's position first
 * (aspen_rt_mark with the processor's runtime): a checkpoint is only
 * taken once every worker has processed everything handed to it before
 * (aspen_rt_wait, aspen_rt_flush wait for that), so no checkpoint runs
 * past work in flight. Blocks while that worker has a full queue. */
void aspen_rt_workers_submit(aspen_runtime_t *rt, int worker, void *item);

/* ---- positions and checkpoints ------------------------------------------- */

/* A source position per partition. `part` is the source's own key (Kafka:
 * topic index << 32 | partition; documents: 0). `replay` is where a
 * restart reads from as of the last checkpoint; `high` is one past the
 * last offset marked. */
typedef struct {
   int64_t part, replay, high;
} aspen_rt_pos_t;

/* Says where the next input comes from, just before the source ingests or
 * dead-letters it: offset `offset` of partition `part`, or, for a source
 * positioned by resume tokens, `token_before` (the token to resume from so
 * that this input is read again; NULL if none yet) with offset -1. A source
 * that never marks (solar) has nothing to resume. With a worker's runtime
 * it only says whether the input is a replay (its DLQ entries are not
 * written again): the position was marked when it was handed over. */
void aspen_rt_mark(aspen_runtime_t *rt, int64_t part, int64_t offset,
                   const bson_t *token_before);
/* The source reads partition `part` (the key it marks with, as
 * aspen_rt_mark's; Kafka: on assignment): until it sends an input (or goes
 * idle, partitionIdleTimeout), the window's watermark waits for it, so a
 * partition consumed first cannot make the other partitions' inputs late.
 * The window keeps a watermark per key, so each topic's partitions of a
 * multi-topic Kafka source have their own. */
void aspen_rt_partition_assigned(aspen_runtime_t *rt, int64_t part);
/* A token source's position moved: `token` resumes after everything the
 * source has handed over (an event's _id, a post-batch token). */
void aspen_rt_mark_token(aspen_runtime_t *rt, const bson_t *token);
/* How far behind its stream the source is, in ms: a change stream's
 * wall clock less the last event's cluster time, 0 once it is caught up
 * (an empty batch). Shown by stats (changeStreamTimeDifferenceSecs) with
 * the resume token of aspen_rt_mark_token (changeStreamState); published
 * when the source idles. */
void aspen_rt_source_lag(aspen_runtime_t *rt, int64_t lag_ms);
/* Publishes what the source adds to its own operatorStats entry (a
 * change stream's per-collection initial-sync progress), copied under
 * the processor's lock: call it when the figures change, at most every
 * flush, never per document. Stats show the last one until the next
 * start; checkpoints keep it (aspen_rt_restored_position's
 * sourceFigures). */
void aspen_rt_source_figures(aspen_runtime_t *rt, const bson_t *figures);
/* The most partitions a Kafka $source may read on the processor's tier
 * (the highest its autoscaling allows), 0 for no limit; `tier` gets the
 * tier's name. */
int64_t aspen_rt_tier_kafka_partitions(const aspen_runtime_t *rt,
                                       const char **tier);
/* The most collections a change stream $source's initialSync may copy on
 * the processor's tier (the highest its autoscaling allows); `tier` gets
 * the tier's name. */
int64_t aspen_rt_tier_initial_sync_colls(const aspen_runtime_t *rt,
                                         const char **tier);
/* The {parts: [{p, replay, high}], token, sourceFigures} position of the
 * checkpoint this run resumed from (sourceFigures: the source's last
 * aspen_rt_source_figures document then, absent in checkpoints from before
 * it was kept), or NULL when it started fresh. Valid while running. */
const bson_t *aspen_rt_restored_position(const aspen_runtime_t *rt);
/* The offset to resume partition `part` from, per the restored checkpoint;
 * false when there is none (fresh start, or a partition it did not know).
 * 0 for every partition when the checkpoint was saved under another epoch
 * (aspen_source_ops_t.epoch). */
bool aspen_rt_restored_offset(const aspen_runtime_t *rt, int64_t part,
                              int64_t *offset);
/* The replay positions of the last checkpoint written by this run (*n of
 * them; valid until the next aspen_rt_wait) and how many checkpoints this
 * run has written, so a source commits to its broker only what a
 * checkpoint holds, and only when it changed. */
const aspen_rt_pos_t *aspen_rt_checkpointed(const aspen_runtime_t *rt,
                                            size_t *n, uint64_t *gen);

#endif /* ASPEN_ENGINE_RUNTIME_SOURCE_H */
