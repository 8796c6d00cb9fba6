/*
 * processor.h - the processor runtime (processor.c) as the engine's command
 * layer (engine.c) drives it. Command thread only, except where noted.
 */
#ifndef ASPEN_ENGINE_PROCESSOR_H
#define ASPEN_ENGINE_PROCESSOR_H

#include "engine_int.h"

int64_t aspen_proc_now_ms(void);
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

#endif
