/*
 * processor.h - the processor runtime (processor.c) as the engine's command
 * layer (engine.c) drives it: processors, their states and stats, sample
 * cursors. Command thread only, except where noted.
 */
#ifndef ASPEN_ENGINE_RUNTIME_PROCESSOR_H
#define ASPEN_ENGINE_RUNTIME_PROCESSOR_H

#include "engine.h"
#include "runtime/pipeline.h"

#include <pthread.h>
#include <stdatomic.h>

typedef struct aspen_proc aspen_proc_t;

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
/* Sample cursors (processor.c)                                              */
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

/* Changes state, logs the transition; proc->mu need not be held by the
 * command thread when the processor thread is not running. */
void aspen_proc_set_state(aspen_proc_t *proc, aspen_proc_state_t st,
                          const char *error);
/* Parses the pipeline and starts the thread, which opens the sink, DLQ and
 * source and then reports the start's result (start_result, and a call to
 * aspen__engine_start_reported from the processor's thread). Does not wait
 * for that. The state is PROVISIONING from then on (the caller leaves it).
 * False with err set (and no thread) when the pipeline does not parse or
 * no thread can be made. */
bool aspen_proc_launch(aspen_proc_t *proc, aspen_error_t *err);
/* True once the launched thread has reported its start's result; any
 * thread. */
bool aspen_proc_start_reported(aspen_proc_t *proc);
/* Waits (if need be) for the launched thread's start result. True when the
 * processor runs; false with err set (the thread joined, nothing left) when
 * it could not open its peers. Does not change the state. */
bool aspen_proc_finish_start(aspen_proc_t *proc, aspen_error_t *err);
/* Stops and joins the thread if there is one. */
void aspen_proc_halt(aspen_proc_t *proc);

aspen_cursor_t *aspen_cursor_new(aspen_proc_t *proc, int64_t id,
                                 uint64_t conn_id, bool is_shell,
                                 int64_t limit);
/* Frees an unlinked cursor; proc->mu held or the thread stopped. */
void aspen_cursor_destroy_locked(aspen_cursor_t *c);

/* The engine's connection registry. */
const aspen_conns_t *aspen_engine_conns(const aspen_engine_t *eng);
/* The state directory and the checkpoint interval (ms) the engine was
 * opened with; any thread (they never change). */
const char *aspen__engine_state_dir(const aspen_engine_t *eng);
int64_t aspen__engine_checkpoint_interval_ms(const aspen_engine_t *eng);
/* aspen's state limit override (streams.memoryLimitBytes); 0: none. */
uint64_t aspen__engine_memory_limit_bytes(const aspen_engine_t *eng);
/* Called by a processor's thread once it has set its start_result: asks
 * the engine's user (aspen_engine_set_hooks) to call aspen_engine_poll on
 * the command thread, which finishes the start. Any thread; a no-op
 * without hooks (the command thread then waits itself). */
void aspen__engine_start_reported(aspen_engine_t *eng);

#endif /* ASPEN_ENGINE_RUNTIME_PROCESSOR_H */
