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
/* Parses the pipeline, starts the thread and waits until the sink and DLQ
 * are open. False with err set (and no thread left) on failure. */
bool aspen_proc_run(aspen_proc_t *proc, aspen_error_t *err);
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

#endif
