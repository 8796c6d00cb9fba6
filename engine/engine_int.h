/*
 * engine_int.h - types shared inside engine/: connections, parsed pipelines
 * and their stages, processors, sample cursors and the dead-letter queue.
 *
 * Data flow: a source thread (one per running processor) produces stream
 * documents; each passes down the stage chain by aspen_pipeline_push, where
 * every stage either drops it, hands it on unchanged (a borrowed view, no
 * copy), or builds a new document for the next stage. What leaves the last
 * stage goes to the sink and to any sample cursors. A stage that fails on a
 * document sends that document to the dead-letter queue and the processor
 * carries on.
 */
#ifndef ASPEN_ENGINE_INT_H
#define ASPEN_ENGINE_INT_H

#include "base/parse.h"
#include "engine.h"
#include "expr.h"
#include "match.h"

#include <pthread.h>
#include <stdatomic.h>

/* ------------------------------------------------------------------------ */
/* Connections (connections.c)                                               */
/* ------------------------------------------------------------------------ */

typedef enum {
   ASPEN_CONN_SAMPLE_SOLAR,
   ASPEN_CONN_ATLAS,
   ASPEN_CONN_KAFKA,
} aspen_conn_type_t;

typedef struct {
   char *name;
   aspen_conn_type_t type;
   char *uri;  /* atlas */
   bson_t doc; /* as configured, for listings (secrets removed) */
   /* kafka: librdkafka properties (name -> string) from bootstrapServers,
    * security and config; holds secrets, so never listed or logged. */
   bson_t kafka_conf;
   /* kafka with "local": true: the broker aspen hosts for it (kafka.c),
    * owned by the registry and destroyed with it. NULL otherwise. */
   struct aspen_kafka_local *kafka_local;
   /* atlas: the role every database access through it runs as (ASP's
    * dbRoleToExecute; readWriteAnyDatabase, BUILT_IN, when the config
    * names none), its grant from the authorization hook, and the hook
    * (a copy; grant NULL and no checks when the engine has none). */
   char *role;
   bool role_custom;
   void *grant;
   aspen_engine_authz_t authz;
} aspen_conn_t;

struct aspen_conns {
   aspen_conn_t *items;
   size_t n;
};

/* Loads the registry from the config's "connections" array (NULL: only
 * sample_stream_solar). Atlas connections' dbRoleToExecute roles are
 * resolved through `authz` (NULL: listed, not enforced). False with err
 * naming the config key on anything invalid, an unknown role included. */
bool aspen_conns_load(aspen_conns_t *conns, const bson_t *list,
                      const char *backend_uri,
                      const aspen_engine_authz_t *authz, aspen_error_t *err);
void aspen_conns_cleanup(aspen_conns_t *conns);
const aspen_conn_t *aspen_conns_find(const aspen_conns_t *conns,
                                     const char *name);
const char *aspen_conn_type_name(aspen_conn_type_t t);

/* A mongoc client for an atlas connection, for the one thread that calls
 * it (processor thread: sources, $lookup, $merge, the DLQ). The URI's
 * serverSelectionTimeoutMS defaults to 5 s. With `ping`, the server is
 * pinged first, so an unreachable one fails here. NULL on failure, err set
 * with code 421 StreamProcessorAtlasConnectionError. The caller owns the
 * client (mongoc_client_destroy). Blocking; never on the event loop. */
struct _mongoc_client_t;
struct _mongoc_client_t *aspen__conn_client_new(const aspen_conn_t *conn,
                                                bool ping,
                                                aspen_error_t *err);

/* ------------------------------------------------------------------------ */
/* What processors reach through Atlas connections (authz.c)                 */
/* ------------------------------------------------------------------------ */

/* True when `conn`'s dbRoleToExecute allows every ASPEN_ENGINE_ACT_* in
 * `acts` on db.coll (coll NULL: the database; db NULL: every database), or
 * when `conn` has no grant (no hook). Otherwise false with err = 422
 * StreamProcessorAtlasUnauthorizedError naming the connection, its role,
 * the action and the namespace. Any thread. */
bool aspen__conn_authorize(const aspen_conn_t *conn, unsigned acts,
                           const char *db, const char *coll,
                           aspen_error_t *err);
/* The same for what the stages of `pipeline` (an array the engine sends to
 * `conn`'s server to run on a collection of database `db`: $lookup's
 * pipeline, a change stream's config.pipeline) reach besides their input:
 * a nested $lookup's or $unionWith's collection, an $out or $merge target.
 * Any thread. */
bool aspen__conn_authorize_stages(const aspen_conn_t *conn, const char *db,
                                  const bson_t *pipeline, aspen_error_t *err);
/* What a $merge (its argument `spec`) does to its target: insert and
 * update (upserts), plus remove when whenMatched is "delete" or an
 * expression that may say so. */
unsigned aspen__merge_required_acts(const bson_t *spec);
struct aspen_pipeline;
/* Checks every literal namespace the parsed pipeline `pl` reaches through
 * an Atlas connection (the change-stream $source, $lookup and
 * $cachedLookup, $merge, a time-series $emit), and options.dlq, against
 * the connections' roles: false with the first refusal (as
 * aspen__conn_authorize, followed by where: "(at pipeline[2].$merge)").
 * Namespaces given as expressions are checked per document by the sinks.
 * Create, modify and start call it (command thread). */
bool aspen__pipeline_authorize(const struct aspen_pipeline *pl,
                               const bson_t *options,
                               const aspen_conns_t *conns,
                               aspen_error_t *err);

/* ------------------------------------------------------------------------ */
/* Stream documents                                                          */
/* ------------------------------------------------------------------------ */

/* A document in flight: the user-visible fields plus its stream metadata
 * (the value of _stream_meta / {$meta: "stream"}), both borrowed. */
typedef struct {
   const bson_t *doc;
   const bson_t *meta;
   int64_t ts_ms; /* event time */
} aspen_sdoc_t;

/* ------------------------------------------------------------------------ */
/* Pipelines and stages (pipeline.c, stage_*.c)                              */
/* ------------------------------------------------------------------------ */

typedef struct aspen_pipeline aspen_pipeline_t;
typedef struct aspen_stage aspen_stage_t;
typedef struct aspen_proc aspen_proc_t;

typedef struct {
   const char *name;          /* "$match" */
   const char *operator_name; /* for DLQ entries: "MatchOperator" */
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
} aspen_stage_ops_t;

/* A run of stages and where documents go after its last one. The main
 * pipeline is one chain; a window's inner pipeline is cut into chains at its
 * blocking stages ($group, $sort, $limit, $count). */
typedef struct aspen_chain {
   aspen_stage_t *stages;
   int n;
   void (*terminal)(void *arg, const aspen_sdoc_t *doc);
   void *arg;
} aspen_chain_t;

struct aspen_stage {
   const aspen_stage_ops_t *ops;
   aspen_pipeline_t *pl;
   aspen_chain_t *chain; /* the chain it belongs to */
   int index;            /* its position in that chain */
   void *state;          /* the stage's own data */
};

/* Where a stage placement is allowed. */
enum {
   ASPEN_PLACE_MAIN = 1u << 0,
   ASPEN_PLACE_WINDOW = 1u << 1,
   ASPEN_PLACE_SINK = 1u << 2, /* terminal only */
   /* Not a placement: the stage's argument is an options object (parsed by
    * IDL in ASP), so a field given twice is refused rather than read twice. */
   ASPEN_SPEC_OPTIONS = 1u << 3,
};

typedef enum {
   ASPEN_SOURCE_DOCUMENTS,
   ASPEN_SOURCE_SOLAR,
   ASPEN_SOURCE_CHANGE_STREAM,
   ASPEN_SOURCE_KAFKA,
} aspen_source_kind_t;

typedef struct {
   aspen_source_kind_t kind;
   const aspen_conn_t *conn;    /* NULL for documents */
   aspen_expr_t *time_field;    /* NULL: default event time */
   char ts_field[64];           /* default "_ts" */
   bson_t documents;            /* documents source: the literal array */
   aspen_expr_t *documents_expr;/* ... or an expression */
   bson_t spec;                 /* the whole $source argument */
   /* kafka: partitionIdleTimeout in ms, 0 when disabled (the default). */
   int64_t partition_idle_timeout_ms;
   struct aspen_kafka_source_opts *kafka; /* kafka options (kafka_int.h) */
} aspen_source_spec_t;

typedef enum {
   ASPEN_SINK_NONE,  /* ephemeral: the shell */
   ASPEN_SINK_MERGE,
   ASPEN_SINK_EMIT,       /* $emit to Kafka */
   ASPEN_SINK_TIMESERIES, /* $emit to a time-series collection */
} aspen_sink_kind_t;

/* Which sink an $emit argument (already validated) is: a Kafka topic, or a
 * time-series collection when its connection is an Atlas one. */
aspen_sink_kind_t aspen__emit_sink_kind(const bson_t *spec,
                                        const aspen_conns_t *conns);
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
   aspen_sink_kind_t sink_kind;
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
    * to replay from (processor.c). 0 when the source does not mark. */
   uint64_t cur_seq;
};

/* Parses and validates a pipeline array (copied). Errors carry code 420 and
 * ASP's wording, prefixed "StreamProcessorInvalidOptions: " and followed by
 * where the problem is ("(at pipeline[1].$merge.into)"). */
aspen_pipeline_t *aspen_pipeline_parse(const bson_t *pipeline,
                                       const aspen_conns_t *conns,
                                       bool ephemeral, bool has_dlq,
                                       aspen_error_t *err);
void aspen_pipeline_destroy(aspen_pipeline_t *pl);
/* Whether a parsed pipeline may run with the processor option exactlyOnce
 * (kafka_txn.c): a named processor, a Kafka $source, $emit to Kafka on the
 * same cluster (bootstrapServers), and no connection that is aspen's local
 * (mock) broker. False with a 420 error saying which. No I/O. */
bool aspen__kafka_txn_check(const aspen_pipeline_t *pl,
                            const aspen_conns_t *conns, bool ephemeral,
                            aspen_error_t *err);
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
/* Frees every open window of the window stage `st` (its state counted
 * out): what a processor that ran out of memory lets go of. */
void aspen__window_drop_state(aspen_stage_t *st);
/* Sends a source document into the stage chain. */
void aspen_pipeline_push(aspen_pipeline_t *pl, const aspen_sdoc_t *doc);
/* Lets time pass without input (window idle timeouts, processing-time
 * windows). */
void aspen_pipeline_tick(aspen_pipeline_t *pl, int64_t now_ms,
                         int64_t idle_ms);
/* Pushes `doc` into `chain` at stage `idx` (its terminal when idx == n). */
void aspen_chain_push(aspen_chain_t *chain, int idx, const aspen_sdoc_t *doc);
/* Emits every document a stage of the main chain holds back (a batched
 * $lookup: aspen__lookup_flush, stage_lookup.c), stage by stage in order.
 * The processor calls it before the sinks flush, so a checkpoint never
 * covers a held document. */
void aspen_pipeline_flush(aspen_pipeline_t *pl);
void aspen__lookup_flush(aspen_stage_t *st);
extern const aspen_stage_ops_t aspen_stage_lookup_ops;
/* Called by a stage for each output document. */
void aspen_stage_emit(aspen_stage_t *st, const aspen_sdoc_t *out);
/* Sends `in` to the DLQ as failed in stage `st` with `err` (what a push
 * returning false does). */
void aspen_stage_dead_letter(aspen_stage_t *st, const aspen_sdoc_t *in,
                             const aspen_error_t *err);
/* Fills an expression context for a document. */
void aspen_stage_expr_ctx(const aspen_stage_t *st, const aspen_sdoc_t *in,
                          aspen_expr_ctx_t *ctx);

/* Checkpoint support for the window stage `st` (window.c): the smallest
 * cur_seq of the first input of any open window (UINT64_MAX when none is
 * open), and the watermark to start from after a restore. Processor
 * thread. */
uint64_t aspen__window_min_seq(const aspen_stage_t *st);
void aspen__window_restore_watermark(aspen_stage_t *st, int64_t wm);
/* How many windows one event belongs to: ceil(interval / hopSize) for an
 * overlapping $hoppingWindow, else 1. Each costs a window per event, so the
 * work per event grows with it. Any thread, after parsing. */
int64_t aspen__window_fanout(const aspen_stage_t *st);
/* The per-partition watermarks (up to `max`: ids and watermarks), and
 * restoring one (or, with wm INT64_MIN, declaring a partition before its
 * first input), so a partition read first cannot move the watermark past
 * one not read yet. */
size_t aspen__window_partition_watermarks(const aspen_stage_t *st,
                                          int64_t *ids, int64_t *wms,
                                          size_t max);
void aspen__window_restore_partition(aspen_stage_t *st, int64_t id,
                                     int64_t wm);

/* The stage table (stages.c). */
const aspen_stage_ops_t *aspen_stage_lookup(const char *name, unsigned *place);

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

typedef struct {
   atomic_uint_fast64_t input_count, input_size;
   atomic_uint_fast64_t output_count, output_size;
   atomic_uint_fast64_t dlq_count, dlq_size;
   atomic_int_fast64_t watermark_ms; /* INT64_MIN: none yet */
} aspen_stats_t;

typedef struct aspen_cursor aspen_cursor_t;

struct aspen_proc {
   aspen_engine_t *eng;
   char *name;
   char id[25];        /* ObjectId hex */
   bool ephemeral;
   bson_t pipeline;    /* definition as given */
   bson_t options;     /* {dlq, tier, ...} as given (validated) */
   /* The tier the last start named ("" when none: options.tier, else
    * SP10); its state limit applies to that run. */
   char start_tier[8];
   aspen_proc_state_t state;
   char error_msg[ASPEN_ERROR_MSG_MAX];
   int64_t created_ms, modified_ms, state_changed_ms;
   aspen_stats_t stats;

   /* Runtime (valid while STARTED). */
   pthread_t thread;
   bool thread_running;
   atomic_bool stop;
   pthread_mutex_t mu;  /* guards cursors, the start handshake */
   pthread_cond_t cv;
   int start_result;    /* 0 pending, 1 ok, -1 failed */
   int32_t start_code;  /* error code when start_result is -1 */
   /* The thread failed after a good start, before the command thread took
    * the result (PROVISIONING); error_msg says why. */
   bool run_failed;
   /* A start whose reply waits for the thread (engine.c): the caller's
    * ticket, and the shell cursor of sp.process (0 for a named start). */
   bool start_pending;
   void *start_ticket;
   int64_t start_cursor_id;
   bool thread_done;    /* the thread has finished its work */
   aspen_cursor_t *cursors;
   aspen_pipeline_t *pl;
   void *sink;          /* sink runtime state */
   void *dlq;           /* DLQ runtime state */
   uint64_t owner_conn; /* ephemeral: the connection reading it */
   int64_t started_ms;
   /* Wall time of the last checkpoint written, 0 for none (stats). */
   atomic_int_fast64_t last_checkpoint_ms;
   aspen_proc_t *next;
};

/* ------------------------------------------------------------------------ */
/* Sample cursors (cursor.c)                                                 */
/* ------------------------------------------------------------------------ */

struct aspen_cursor {
   int64_t id;
   uint64_t conn_id;
   aspen_proc_t *proc;
   bool is_shell;      /* sp.process: the processor's sink, lossless */
   int64_t limit;      /* 0: unlimited */
   int64_t delivered;
   bson_t **docs;      /* ring of owned documents */
   size_t cap, head, len;
   bool closed;
   aspen_cursor_t *next;       /* in proc->cursors */
};

#endif /* ASPEN_ENGINE_INT_H */
