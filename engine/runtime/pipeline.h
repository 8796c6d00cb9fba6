/*
 * pipeline.h - a processor's parsed pipeline and its stages (pipeline.c):
 * the types stages implement and the calls they make, the source and sink
 * specifications the runtime opens, and the pipeline API the processor
 * drives.
 *
 * Data flow: a source thread (one per running processor) produces stream
 * documents; each passes down the stage chain by aspen_pipeline_push, where
 * every stage either drops it, hands it on unchanged (a borrowed view, no
 * copy), or builds a new document for the next stage. What leaves the last
 * stage goes to the sink and to any sample cursors. A stage that fails on a
 * document sends that document to the dead-letter queue and the processor
 * carries on.
 */
#ifndef ASPEN_ENGINE_RUNTIME_PIPELINE_H
#define ASPEN_ENGINE_RUNTIME_PIPELINE_H

#include "base/hist.h"
#include "base/parse.h"
#include "lang/expr.h"

#include <pthread.h>
#include <stdatomic.h>

/* A connection of the registry (runtime/catalog.h). */
typedef struct aspen_conn aspen_conn_t;

/* ------------------------------------------------------------------------ */
/* Stream documents                                                          */
/* ------------------------------------------------------------------------ */

/* A document in flight: the user-visible fields plus its stream metadata
 * (the value of _stream_meta / {$meta: "stream"}), both borrowed. */
typedef struct {
   const bson_t *doc;
   const bson_t *meta;
   int64_t ts_ms; /* event time */
   /* doc's top-level field table when the stage that wrote it kept one
    * (lang/fields.h; trusted only if aspen_fields_covers doc), or NULL. */
   const aspen_fields_t *fields;
} aspen_sdoc_t;

/* ------------------------------------------------------------------------ */
/* Pipelines and stages (pipeline.c; the stages in stages/, connectors/)     */
/* ------------------------------------------------------------------------ */

typedef struct aspen_pipeline aspen_pipeline_t;
typedef struct aspen_stage aspen_stage_t;

/* Verbose stats' latency covers the last 30 s, as ASP's. */
#define ASPEN_PIPELINE_LATENCY_SECS 30
/* The latencies of one wall-clock second (a pipeline keeps the last
 * ASPEN_PIPELINE_LATENCY_SECS of them). */
typedef struct {
   int64_t sec;
   aspen_hist_t h;
} aspen_lat_slot_t;
/* One input in this many has its stages timed. */
#define ASPEN_PIPELINE_TIMING_EVERY 16

/* One operator's figures (verbose stats' operatorStats, the Prometheus
 * endpoint): documents and bytes in, out and to the DLQ, and the time
 * spent in it (sampled: see aspen_pipeline_t.timing). Counted in plain
 * integers on the processor thread, published per batch. */
typedef struct {
   uint64_t in_count, in_size, out_count, out_size, dlq_count, dlq_size;
   uint64_t exec_ns;
   /* Filled when published: the state it holds (a window's open
    * windows, a $cachedLookup's cache) and the most it held. */
   uint64_t state_size, max_state;
} aspen_op_counts_t;

/* What a checkpoint restore replays (the processor's checkpointing.c): the
 * source partitions read again from before the checkpoint's high mark, by
 * the source's key (aspen_rt_mark's `part`: Kafka's topic index << 32 |
 * partition), or every one (`all`: a source positioned by resume tokens
 * that replays inputs). */
typedef struct aspen_replay {
   bool all;
   const int64_t *parts;
   size_t n;
} aspen_replay_t;

typedef struct {
   const char *name;          /* "$match" */
   const char *operator_name; /* for DLQ entries: "MatchOperator" */
   /* Its outputs for an input depend on that input alone, and it holds no
    * connection: a processor may run copies of it on several threads
    * (runtime/workers.c). */
   bool per_document;
   /* Parses the stage's argument (the value of its only key). */
   bool (*parse)(aspen_stage_t *st, const bson_iter_t *arg,
                 aspen_parse_ctx_t *pc, aspen_error_t *err);
   /* Processes one document: calls aspen_stage_emit for each output. Returns
    * false with err set to send `in` to the DLQ. May be NULL for stages
    * that only exist at parse time. */
   bool (*push)(aspen_stage_t *st, const aspen_sdoc_t *in, aspen_error_t *err);
   void (*destroy)(aspen_stage_t *st);
   /* Window stages only (else NULL): time passes without input (`now_ms`
    * on the processor's clock, `idle_ms` since the last input). */
   void (*tick)(aspen_stage_t *st, int64_t now_ms, int64_t idle_ms);
   /* Emits every document the stage holds back (a batched $lookup); the
    * processor calls it (aspen_pipeline_flush) before its sinks flush, so
    * a checkpoint never covers a held document. NULL: holds none. */
   void (*flush)(aspen_stage_t *st);

   /* Checkpoints and memory (processor thread; each NULL for a stage that
    * keeps no state across documents).
    * - replay_seq: the smallest cur_seq of an input the stage still needs
    *   (the first input of its oldest open window), UINT64_MAX for none:
    *   a restore replays the source from there and the stage rebuilds
    *   its state from the same inputs.
    * - checkpoint_save: appends what the stage needs back after a restore
    *   (a window: its per-partition watermarks) to the checkpoint `body`.
    * - checkpoint_restore: reads that back from `body` before the source
    *   opens; `replay` says which partitions are read again from before
    *   the checkpoint (their clocks start over).
    * - partition_assigned: the source reads partition `part` (its key, as
    *   pl->cur_part) now; until it sends an input, the stage's event time
    *   waits for it.
    * - drop_state: lets every kept document go (the state limit was
    *   reached: the processor fails). */
   uint64_t (*replay_seq)(const aspen_stage_t *st);
   void (*checkpoint_save)(const aspen_stage_t *st, bson_t *body);
   void (*checkpoint_restore)(aspen_stage_t *st, const bson_t *body,
                              const aspen_replay_t *replay);
   void (*partition_assigned)(aspen_stage_t *st, int64_t part);
   void (*drop_state)(aspen_stage_t *st);
} aspen_stage_ops_t;

/* A run of stages and where documents go after its last one. The main
 * pipeline is one chain; a window's inner pipeline is cut into chains at its
 * blocking stages ($group, $sort, $limit, $count). */
typedef struct aspen_chain {
   aspen_stage_t *stages;
   int n;
   void (*terminal)(void *arg, const aspen_sdoc_t *doc);
   void *arg;
   /* The pipeline's main chain (set by aspen_pipeline_parse): its stages
    * count their figures (aspen_op_counts_t), and what leaves the last one
    * goes to that pipeline's output hook (its terminal's call, made
    * without it). NULL (any other chain, e.g. a window's inner ones):
    * nothing counted, the terminal called. */
   aspen_pipeline_t *counted;
} aspen_chain_t;

struct aspen_stage {
   const aspen_stage_ops_t *ops;
   aspen_pipeline_t *pl;
   aspen_chain_t *chain; /* the chain it belongs to */
   int index;            /* its position in that chain */
   void *state;          /* the stage's own data */
   /* Main-chain stages: its figures (a window's inner stages count in
    * their window's). Processor thread. */
   aspen_op_counts_t counts;
};

/* Where a stage placement is allowed. */
enum {
   ASPEN_PLACE_MAIN = 1u << 0,
   ASPEN_PLACE_WINDOW = 1u << 1,
   ASPEN_PLACE_SINK = 1u << 2, /* terminal only */
   /* Not a placement: the stage's argument is an options object (parsed by
    * IDL in ASP), so a field given twice is refused rather than read twice. */
   ASPEN_SPEC_OPTIONS = 1u << 3,
   /* May also end a persistent processor's pipeline while staying in the
    * chain (it delivers its documents itself: $https). */
   ASPEN_PLACE_TERMINAL = 1u << 4,
};

/* A $source kind (runtime/source.h). */
typedef struct aspen_source_ops aspen_source_ops_t;

typedef struct {
   /* Its kind: the source of its connection's kind, or the catalog's
    * source without a connection (documents). */
   const aspen_source_ops_t *ops;
   const aspen_conn_t *conn;    /* NULL for documents */
   aspen_expr_t *time_field;    /* NULL: default event time */
   char ts_field[64];           /* default "_ts" */
   bson_t spec;                 /* the whole $source argument */
   /* partitionIdleTimeout in ms (a partitioned source's option), 0 when
    * disabled (the default). */
   int64_t partition_idle_timeout_ms;
   /* The kind's own options, from its parse_option; freed by its
    * spec_destroy. */
   void *opts;
   /* Its inputs may be decoded on several threads at once, each worker's
    * independently of the others (set by the kind's parse_done): the
    * source may hand them to worker threads (runtime/workers.c), as a
    * stage's per_document and a sink's per_worker allow. False (a Kafka
    * $source reading Avro through a Schema Registry, whose schema cache
    * is the processor thread's): one thread. */
   bool per_worker;
} aspen_source_spec_t;

/* A processor sink (runtime/sink.h). */
typedef struct aspen_sink_ops aspen_sink_ops_t;

/* The DLQ side of a pipeline: where failed documents go. Set by the
 * processor before it runs. */
typedef void (*aspen_dlq_fn)(void *arg, const aspen_sdoc_t *in,
                             const char *operator_name, const char *reason);
/* The output side: documents leaving the last stage. */
typedef void (*aspen_output_fn)(void *arg, const aspen_sdoc_t *out);

struct aspen_pipeline {
   bson_t def;                  /* owned copy of the pipeline array */
   aspen_source_spec_t source;
   aspen_stage_t *stages;       /* between source and sink */
   int n_stages;
   /* The sink: set by the sink stage's parser (the $merge or $emit sink
    * of its connection's kind); NULL for the shell (sp.process). */
   const aspen_sink_ops_t *sink;
   bson_t sink_spec;            /* the sink stage's argument */
   bool has_window;
   aspen_chain_t main;          /* the stages above, ending at `output` */
   aspen_stage_t *window;       /* the window stage, if any */
   /* Sees every source document before the stages do (the window stage's
    * watermark is the source's, not just of what reaches the window). */
   void (*observe)(aspen_stage_t *st, const aspen_sdoc_t *doc);
   bool virtual_clock;          /* aspen extension: time from the input */
   bool exactly_once;           /* aspen extension: Kafka transactions */
   /* Published for stats (written by the processor thread). */
   atomic_int_fast64_t watermark_ms;  /* INT64_MIN: none */
   atomic_uint_fast64_t state_size;
   /* The state limit (ASP: 80 % of the tier's RAM, aspen__tier_state_limit,
    * or aspen's streams.memoryLimitBytes), set by the processor before it
    * runs; 0: none. Window state (window_bytes) and $cachedLookup caches
    * (cache_bytes) count against it, on the processor thread
    * (aspen__pipeline_state_update). Reaching it sets fatal_code 418 and
    * fatal, which the processor fails with after the push. */
   uint64_t state_limit;
   char state_limit_what[64];   /* "80% of SP10's 2 GB", for the message */
   /* The tier it runs on (base/tier.h's rank; stats' effectiveTier) and,
    * with autoscaling, the highest it may move to when the state reaches
    * the limit (else the same); set by the processor before it runs,
    * -1 when the limit is aspen's streams.memoryLimitBytes. */
   int tier_rank, tier_max_rank;
   atomic_int effective_tier;
   size_t window_bytes, cache_bytes;
   int32_t fatal_code;          /* 0: none */
   char fatal[ASPEN_ERROR_MSG_MAX];
   /* Run-time hooks. */
   const bson_t *dlq_extra;     /* fields a stage adds to its next DLQ entry */
   aspen_dlq_fn dlq;
   aspen_output_fn output;
   void *hook_arg;
   int64_t now_ms;              /* wall clock for $currentDate */
   /* Sequence number of the source input being pushed (aspen_rt_mark);
    * windows remember the first one they saw, so checkpoints know where
    * to replay from (checkpointing.c). 0 when the source does not mark. */
   uint64_t cur_seq;
   /* The source's key of the partition that input comes from (aspen_rt_mark's
    * `part`: Kafka's topic index << 32 | partition, so partition 0 of two
    * topics are two partitions); windows keep a watermark per key. 0 when
    * the source does not mark. */
   int64_t cur_part;

   /* Figures (verbose stats, Prometheus). The processor thread counts in
    * plain integers (each main-chain stage's `counts`, the source's and
    * the sink's here, `lat`: latencies since the last publish) and
    * publishes them every batch of inputs and whenever the source idles
    * (aspen__pipeline_publish), under pub_mu, where the command thread
    * reads them (aspen_pipeline_snapshot). Nothing per document crosses
    * threads.
    * - origin_ns: monotonic time (aspen_pipeline_clock_ns) the input being pushed was ingested, or,
    *   while a window emits, when the window's first input was: a
    *   document's latency is from there to the sink (window time
    *   included, as ASP's).
    * - timing: the stages' times are taken for this input (one in
    *   ASPEN_PIPELINE_TIMING_EVERY, counted that many times over), so the
    *   clock is read twice per stage only for a sample; child_ns is the
    *   time of the stages downstream of the one being timed. */
   aspen_op_counts_t src_counts, sink_counts;
   uint64_t origin_ns;
   bool timing;
   uint64_t child_ns;
   aspen_hist_t lat;             /* microseconds */
   pthread_mutex_t pub_mu;
   aspen_op_counts_t *pub;       /* source, the n_stages stages, sink */
   aspen_hist_t lat_total;       /* every latency since the run began */
   aspen_lat_slot_t lat_ring[ASPEN_PIPELINE_LATENCY_SECS];
   /* The open windows' smallest and largest start, INT64_MIN for none
    * (the window stage publishes them). */
   atomic_int_fast64_t open_min_ms, open_max_ms;
};

/* Parses and validates a pipeline array (copied), its stages found in
 * `catalog` (runtime/catalog.h) and its connections in `conns`. Errors
 * carry code 420 and ASP's wording, prefixed
 * "StreamProcessorInvalidOptions: " and followed by where the problem is
 * ("(at pipeline[1].$merge.into)"). */
aspen_pipeline_t *aspen_pipeline_parse(const bson_t *pipeline,
                                       const aspen_catalog_t *catalog,
                                       const aspen_conns_t *conns,
                                       bool ephemeral, bool has_dlq,
                                       aspen_error_t *err);
void aspen_pipeline_destroy(aspen_pipeline_t *pl);
/* Parses an inner pipeline (window stages). */
bool aspen_pipeline_parse_stages(aspen_pipeline_t *pl, const bson_t *arr,
                                 aspen_parse_ctx_t *pc, aspen_stage_t **out,
                                 int *n_out, aspen_error_t *err);
/* Publishes window_bytes + cache_bytes as state_size and checks them
 * against state_limit (see above). */
void aspen__pipeline_state_update(aspen_pipeline_t *pl);
/* The state limit of tier `tier` ("SP2".."SP50"): 80 % of its RAM in
 * decimal gigabytes (SP10: 0.8 x 2,000,000,000 bytes), with its RAM
 * written into `what` (e.g. "80% of SP10's 2 GB"); 0 for an unknown
 * tier. */
uint64_t aspen__tier_state_limit(const char *tier, char *what,
                                 size_t what_len);
/* Sends a source document into the stage chain. */
void aspen_pipeline_push(aspen_pipeline_t *pl, const aspen_sdoc_t *doc);
/* Lets time pass without input (window idle timeouts, processing-time
 * windows). */
void aspen_pipeline_tick(aspen_pipeline_t *pl, int64_t now_ms,
                         int64_t idle_ms);
/* Pushes `doc` into `chain` at stage `idx` (its terminal when idx == n). */
void aspen_chain_push(aspen_chain_t *chain, int idx, const aspen_sdoc_t *doc);
/* Emits every document a stage of the main chain holds back (its ops'
 * flush), stage by stage in order. The processor calls it before the
 * sinks flush, so a checkpoint never covers a held document. */
void aspen_pipeline_flush(aspen_pipeline_t *pl);
/* The stages' checkpoint hooks over the main chain (aspen_stage_ops_t):
 * the smallest replay_seq (UINT64_MAX when no stage needs an input
 * again), each stage's checkpoint_save / checkpoint_restore in order, a
 * partition the source was assigned, and drop_state (the state limit was
 * reached). Processor thread. */
uint64_t aspen_pipeline_replay_seq(const aspen_pipeline_t *pl);
void aspen_pipeline_checkpoint_save(const aspen_pipeline_t *pl, bson_t *body);
void aspen_pipeline_checkpoint_restore(aspen_pipeline_t *pl,
                                       const bson_t *body,
                                       const aspen_replay_t *replay);
void aspen_pipeline_partition_assigned(aspen_pipeline_t *pl, int64_t part);
void aspen_pipeline_drop_state(aspen_pipeline_t *pl);
/* Called by a stage for each output document. */
void aspen_stage_emit(aspen_stage_t *st, const aspen_sdoc_t *out);
/* Sends `in` to the DLQ as failed in stage `st` with `err` (what a push
 * returning false does). */
void aspen_stage_dead_letter(aspen_stage_t *st, const aspen_sdoc_t *in,
                             const aspen_error_t *err);
/* Publishes the figures counted since the last call (see
 * aspen_pipeline_t); processor thread, once per batch. */
void aspen__pipeline_publish(aspen_pipeline_t *pl);
/* The figures published last: `ops` gets the source's, each main-chain
 * stage's and the sink's (aspen_pipeline_op_count of them), `recent` the
 * latencies of the last ASPEN_PIPELINE_LATENCY_SECS seconds with the
 * wall-clock ms the oldest second with any began at (*recent_start_ms,
 * 0 when none), `total` every latency of this run. Any may be NULL.
 * Any thread while the pipeline lives. */
size_t aspen_pipeline_op_count(const aspen_pipeline_t *pl);
void aspen_pipeline_snapshot(aspen_pipeline_t *pl, aspen_op_counts_t *ops,
                             aspen_hist_t *recent, int64_t *recent_start_ms,
                             aspen_hist_t *total);
/* A monotonic clock in nanoseconds. */
uint64_t aspen_pipeline_clock_ns(void);
/* Fills an expression context for a document (inline: once per stage
 * and document). */
static inline void
aspen_stage_expr_ctx(const aspen_stage_t *st, const aspen_sdoc_t *in,
                     aspen_expr_ctx_t *ctx)
{
   ctx->root = in->doc;
   ctx->meta = in->meta;
   ctx->now_ms = st->pl->now_ms;
   ctx->current = NULL;
   ctx->fields = NULL;
   ctx->scratch = NULL;
   ctx->paths = NULL;
}

#endif /* ASPEN_ENGINE_RUNTIME_PIPELINE_H */
