/*
 * runtime_int.h - inside runtime/ only: a processor (aspen_proc_t, opaque
 * everywhere else), the state of its running thread (aspen_runtime_t, what
 * the rt API that sources and sinks call works on), sample cursors, and the
 * calls the runtime's files make to each other:
 *
 *    processor.c      the thread: launch, run loop, halt; states
 *    rt.c             the aspen_rt_* API (source.h, sink.h): ingest, wait,
 *                     fail, output to the sink and the cursors
 *    checkpointing.c  positions (aspen_rt_mark ...) and the checkpoint
 *                     body: take, restore
 *    dlq.c            the dead-letter queue
 *    cursor.c         sample cursors and the shell's
 *    workers.c        a source's partitions spread over worker threads
 *    registry.c       the processors store and its files
 */
#ifndef ASPEN_ENGINE_RUNTIME_RUNTIME_INT_H
#define ASPEN_ENGINE_RUNTIME_RUNTIME_INT_H

#include "runtime/runtime.h"
#include "runtime/sink.h"

#include <pthread.h>
#include <stdatomic.h>

typedef struct {
   atomic_uint_fast64_t input_count, input_size;
   atomic_uint_fast64_t output_count, output_size;
   atomic_uint_fast64_t dlq_count, dlq_size;
   atomic_int_fast64_t watermark_ms; /* INT64_MIN: none yet */
} aspen_stats_t;

struct aspen_proc {
   char *name;
   char id[25];        /* ObjectId hex */
   bool ephemeral;
   bson_t pipeline;    /* definition as given */
   bson_t options;     /* {dlq, tier, ...} as given (validated) */
   aspen_proc_state_t state;
   char error_msg[ASPEN_ERROR_MSG_MAX];
   int64_t created_ms, modified_ms, state_changed_ms;
   aspen_stats_t stats;
   uint64_t owner_conn; /* ephemeral: the connection reading it */

   /* Runtime (valid while STARTED). */
   const aspen_proc_env_t *env; /* what the last launch was handed */
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
   bool thread_done;    /* the thread has finished its work */
   aspen_cursor_t *cursors;
   aspen_pipeline_t *pl;
   int64_t started_ms;
   /* Wall time of the last checkpoint written, 0 for none (stats). */
   atomic_int_fast64_t last_checkpoint_ms;
   /* A token-positioned source's last resume token and lag (stats'
    * changeStreamState, changeStreamTimeDifferenceSecs), published when
    * the source idles; under mu. has_source_pos: they are set. */
   bool has_source_pos;
   bson_t source_token;
   int64_t source_lag_ms;
   /* aspen_rt_source_figures' last document (under mu; empty: none),
    * kept after the run ends so a failure still shows it. */
   bson_t source_figures;
   aspen_proc_t *next;  /* in the registry */
};

struct aspen_cursor {
   int64_t id;
   uint64_t conn_id;
   aspen_proc_t *proc;
   bool is_shell;      /* sp.process: the processor's sink, lossless */
   int64_t limit;      /* 0: unlimited */
   int64_t delivered;
   bson_t **docs;      /* ring of owned documents */
   size_t cap, head, len;
   aspen_cursor_t *next;       /* in proc->cursors */
};

/* A running processor's thread state (processor.c makes it on the
 * thread's stack); the rt API's handle. */
struct aspen_runtime {
   aspen_proc_t *proc;
   /* The pipeline its documents go through: proc->pl, or a worker's own
    * instance of it (workers.c). */
   aspen_pipeline_t *pl;
   /* A worker's runtime (workers.c): the processor thread's, whose
    * positions, checkpoints and DLQ writer it uses; NULL on the processor
    * thread. `workers`: the processor thread's workers, NULL without. */
   aspen_runtime_t *main;
   struct aspen_workers *workers;
   /* Held around the DLQ writer's calls while workers share it; NULL
    * without workers. */
   pthread_mutex_t *dlq_mu;
   const aspen_sink_ops_t *sink;
   void *sink_state;
   void *dlq;           /* the DLQ writer (proc->env->dlq), or NULL */
   bson_t source_meta;  /* {source: {type: ...}}: the default metadata */
   const aspen_source_ops_t *source;
   void *source_state;
   uint64_t rng;
   bool failed;
   bool flush_all; /* in aspen__rt_flush_sinks(rt, true) */
   int64_t max_ts;
   int64_t last_input_ms; /* wall clock of the last ingested document */
   uint64_t ingested;     /* inputs of this run (figures' batches) */
   int64_t source_lag_ms; /* aspen_rt_source_lag, INT64_MIN: none */

   /* Positions (aspen_rt_mark) and checkpoints (checkpointing.c). */
   uint64_t seq;           /* inputs marked so far */
   aspen_rt_pos_t *parts;  /* per partition: replay (at last ckpt), high */
   size_t n_parts, cap_parts;
   struct pos_entry {
      uint64_t seq;
      int64_t part, offset;
      bson_t *token_before; /* NULL for offset sources */
   } *log;                 /* inputs that may still feed an open window */
   size_t log_head, log_len, log_cap;
   bson_t token_high;      /* resume token after the last input */
   bool has_token;
   bool restored;
   bson_t restored_pos;    /* position from the checkpoint restored */
   bool epoch_changed;     /* ... saved under another source epoch */
   uint64_t replay_count;  /* inputs to replay after the restore */
   aspen_rt_pos_t *restored_high; /* per partition: replays end there */
   size_t n_restored_high;
   bool replaying;         /* the current input is one of them */
   char ckpt_dir[4096];
   uint64_t ckpt_seq;      /* seq at the last checkpoint */
   bool ckpt_token_moved;  /* token_high moved since the last checkpoint */
   uint64_t ckpt_min_seq;  /* the open windows' min seq then */
   int64_t ckpt_mono_ms;   /* when the last one was written */
   uint64_t ckpt_gen;      /* checkpoints written by this run */
   /* Exactly-once: output went to the sink since the last commit; the
    * run's random prefix of checkpoint ids. */
   bool exactly_once;
   bool out_since_ckpt;
   uint64_t ckpt_run_id;
};

/* ---- processor.c --------------------------------------------------------- */

/* The processor's watermark for stats and checkpoints: its window's when
 * the pipeline has one (event time, per partition, never backwards), else
 * the source's (the latest event time less 1 ms). Any thread. */
int64_t aspen__processor_watermark(const aspen_proc_t *proc);

/* ---- rt.c ------------------------------------------------------------------ */

/* The pipeline's output hook: a document left the last stage (to the
 * cursors and the sink). */
void aspen__rt_on_output(void *arg, const aspen_sdoc_t *out);
/* Publishes the run's figures for stats: the pipeline's (pipeline.h)
 * and the source's position (resume token, lag). */
void aspen__rt_publish(aspen_runtime_t *rt);
/* Flushes the held documents, the sink and the DLQ; false (the processor
 * failed) when one of them could not. */
/* Flushes the sink and the DLQ. `all`: a checkpoint may follow whatever its
 * interval (a forced one, the final one), so a sink that holds output back
 * until a checkpoint is due (aspen_rt_checkpoint_due) writes it all now. */
bool aspen__rt_flush_sinks(aspen_runtime_t *rt, bool all);

/* ---- checkpointing.c -------------------------------------------------------- */

/* Sets up and frees the position and checkpoint state of `rt`. */
void aspen__checkpointing_init(aspen_runtime_t *rt);
void aspen__checkpointing_cleanup(aspen_runtime_t *rt);
/* Loads the processor's last good checkpoint, if any, after its sink and
 * before its source opens. False (err set) only when an exactly-once sink
 * cannot say which checkpoint it committed. */
bool aspen__checkpointing_restore(aspen_runtime_t *rt, aspen_error_t *err);
/* Writes a checkpoint: only call right after the sink and the DLQ flushed
 * successfully. Unless `force`, only once the interval has passed; either
 * way only when the position moved (or this run has none yet). */
void aspen__checkpointing_take(aspen_runtime_t *rt, bool force);

/* ---- dlq.c ------------------------------------------------------------------ */

/* Opens the DLQ that options.dlq names, if any (rt->dlq). False with err
 * set when it cannot be opened. */
bool aspen__dlq_open(aspen_runtime_t *rt, aspen_error_t *err);
/* The pipeline's DLQ hook (and the rt API's): `in` failed in the operator
 * `operator_name` for `reason`. `arg` is the aspen_runtime_t. */
void aspen__dlq_send(void *arg, const aspen_sdoc_t *in,
                     const char *operator_name, const char *reason);
/* Makes what the DLQ was handed durable; false (the processor failed)
 * when it could not. */
bool aspen__dlq_flush(aspen_runtime_t *rt);
void aspen__dlq_close(aspen_runtime_t *rt);

/* ---- workers.c ------------------------------------------------------------ */

/* The processor thread's flush with workers (aspen__rt_flush_sinks):
 * waits until every worker has processed what it was handed, has each
 * flush its pipeline and sink (`all` as there), sums their figures into
 * proc->pl's and notes a worker's failure or interrupted evaluation on
 * this thread. True when every worker's flush succeeded. */
bool aspen__workers_flush(aspen_runtime_t *rt, bool all);
/* Stops and joins the workers (none: a no-op), closing their sinks and
 * pipelines; what they were still handed is processed first unless the
 * processor failed. Processor thread, after the final checkpoint. */
void aspen__workers_stop(aspen_runtime_t *rt);
/* What aspen_rt_workers_start calls to set up worker `i` and start its
 * thread, so tests can make either fail for real: `before_init` (NULL:
 * none) runs just before worker i's pipeline and sink are made, and
 * `thread_create` starts each worker's thread (pthread_create). Tests
 * only change them, between processors. */
typedef struct {
   void (*before_init)(int i, void *arg);
   void *arg;
   int (*thread_create)(pthread_t *thread, const pthread_attr_t *attr,
                        void *(*start)(void *), void *arg);
} aspen_workers_hooks_t;
extern aspen_workers_hooks_t aspen__workers_hooks;

/* ---- cursor.c ---------------------------------------------------------------- */

/* Appends a copy of `doc` to every cursor of `proc`; proc->mu held. */
void aspen__cursor_push_all(aspen_proc_t *proc, const bson_t *doc);
/* Frees every cursor of `proc` (its thread stopped). */
void aspen__cursor_free_all(aspen_proc_t *proc);

#endif /* ASPEN_ENGINE_RUNTIME_RUNTIME_INT_H */
