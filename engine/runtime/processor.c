/*
 * processor.c - a stream processor's thread: launch, run, halt, and the
 * processor's states and figures.
 *
 * The command thread launches a processor (aspen_proc_launch) with what it
 * needs (aspen_proc_env_t: the state directory, checkpoint interval,
 * memory limit, the catalog of stages and connectors with its check, the
 * connections, the DLQ writer and the "start reported" callback) and does
 * not wait: the processor's thread opens its sink, DLQ and source, which
 * can take seconds against an unreachable peer, then reports the result
 * (start_result) and calls the env's start_reported, upon which the
 * command thread finishes the start (aspen_proc_finish_start), so `start`
 * still reports connection problems directly without holding up other
 * commands meanwhile. The thread then runs the source (rt.c is the API the
 * source and sink call), taking checkpoints (checkpointing.c) and writing
 * failed documents to the DLQ (dlq.c). Stopping sets a flag the thread
 * checks between documents, while idle and while waiting for a Kafka
 * cluster to answer, then joins it; the thread flushes its sink and takes
 * a last checkpoint before it exits.
 *
 * The sink opens first: an exactly-once sink says which checkpoint it
 * committed (checkpointing.c), and the source opens at the restored
 * positions.
 */
#include "runtime/runtime_int.h"
#include "base/tier.h"
#include "runtime/catalog.h"

#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>

const char *
aspen_proc_state_name(aspen_proc_state_t s)
{
   switch (s) {
   case ASPEN_PROC_CREATED:
      return "CREATED";
   case ASPEN_PROC_STARTED:
      return "STARTED";
   case ASPEN_PROC_STOPPED:
      return "STOPPED";
   case ASPEN_PROC_FAILED:
      return "FAILED";
   case ASPEN_PROC_PROVISIONING:
      return "PROVISIONING";
   }
   return "UNKNOWN";
}

void
aspen_proc_set_state(aspen_proc_t *proc, aspen_proc_state_t st,
                     const char *error)
{
   aspen_proc_state_t old = proc->state;
   proc->state = st;
   proc->state_changed_ms = aspen_clock_now_ms();
   if (error) {
      snprintf(proc->error_msg, sizeof proc->error_msg, "%s", error);
      aspen_utf8_scrub(proc->error_msg); /* it may have been cut mid-character */
   } else if (st != ASPEN_PROC_FAILED) {
      proc->error_msg[0] = '\0';
   }
   bson_t attr = BSON_INITIALIZER;
   BSON_APPEND_UTF8(&attr, "processor", proc->name);
   BSON_APPEND_UTF8(&attr, "from", aspen_proc_state_name(old));
   BSON_APPEND_UTF8(&attr, "to", aspen_proc_state_name(st));
   if (error) {
      BSON_APPEND_UTF8(&attr, "error", error);
   }
   aspen_log(st == ASPEN_PROC_FAILED ? ASPEN_LOG_WARNING : ASPEN_LOG_INFO,
             "STREAMS", 0, proc->name, "Stream processor state change", &attr);
   bson_destroy(&attr);
}

/* Opens the DLQ and the sink; false with err set fails the start. */
static bool
open_outputs(aspen_runtime_t *rt, aspen_error_t *err)
{
   aspen_proc_t *proc = rt->proc;
   if (!aspen__dlq_open(rt, err)) {
      return false;
   }
   rt->sink = proc->pl->sink;
   if (rt->sink &&
       !rt->sink->open(rt, &proc->pl->sink_spec, &rt->sink_state, err)) {
      rt->sink = NULL;
      return false;
   }
   if (rt->exactly_once && (!rt->sink || !rt->sink->commit)) {
      aspen_error_set(err, ASPEN_ERR_InternalError,
                      "exactly-once without a transactional sink");
      return false;
   }
   return true;
}

static void *
proc_main(void *arg)
{
   aspen_proc_t *proc = arg;
   /* A stop (or drop, or shutdown) interrupts a long evaluation on this
    * thread, so the command thread joining it never waits for one. */
   aspen_expr_set_interrupt(&proc->stop);
   aspen_runtime_t rt;
   memset(&rt, 0, sizeof rt);
   rt.proc = proc;
   rt.pl = proc->pl;
   rt.max_ts = INT64_MIN;
   rt.source_lag_ms = INT64_MIN;
   rt.last_input_ms = aspen_clock_now_ms();
   if (RAND_bytes((unsigned char *) &rt.rng, sizeof rt.rng) != 1 || !rt.rng) {
      rt.rng = (uint64_t) aspen_clock_now_ms() | 1;
   }
   bson_init(&rt.source_meta);
   bson_t src;
   BSON_APPEND_DOCUMENT_BEGIN(&rt.source_meta, "source", &src);
   rt.source = proc->pl->source.ops;
   BSON_APPEND_UTF8(&src, "type", rt.source->type);
   bson_append_document_end(&rt.source_meta, &src);
   proc->pl->dlq = aspen__dlq_send;
   proc->pl->output = aspen__rt_on_output;
   proc->pl->hook_arg = &rt;
   rt.exactly_once = proc->pl->exactly_once;
   aspen__checkpointing_init(&rt);

   /* Sink first: an exactly-once sink says which checkpoint it committed,
    * and the source opens at the restored positions. */
   aspen_error_t err;
   bool opened = open_outputs(&rt, &err) &&
                 aspen__checkpointing_restore(&rt, &err) &&
                 rt.source->open(&rt, &rt.source_state, &err);
   pthread_mutex_lock(&proc->mu);
   if (!opened) {
      snprintf(proc->error_msg, sizeof proc->error_msg, "%s", err.message);
      aspen_utf8_scrub(proc->error_msg);
      proc->start_result = -1;
      proc->start_code = err.code;
   } else {
      proc->start_result = 1;
   }
   pthread_cond_broadcast(&proc->cv);
   pthread_mutex_unlock(&proc->mu);
   /* The command thread may not be waiting: say so (the engine asks its
    * caller to finish the start on the command thread). */
   if (proc->env->start_reported) {
      proc->env->start_reported(proc->env->arg);
   }

   if (opened) {
      if (!rt.restored) {
         aspen__checkpointing_take(&rt, true); /* the first one, at start */
      }
      rt.source->run(&rt, rt.source_state);
      /* Stopping: the final checkpoint, after the final flush. */
      if (!rt.failed && aspen__rt_flush_sinks(&rt, true)) {
         aspen__checkpointing_take(&rt, true);
      }
      aspen__rt_publish(&rt);
   }
   aspen__workers_stop(&rt);
   if (proc->pl->fatal_code) {
      /* Out of memory: let the stages' state go now, not when the
       * processor is next started or dropped. */
      aspen_pipeline_drop_state(proc->pl);
   }
   if (rt.source_state) {
      rt.source->close(rt.source_state);
   }
   if (rt.sink) {
      rt.sink->close(rt.sink_state);
   }
   if (aspen_expr_interrupted()) {
      aspen_logf(ASPEN_LOG_INFO, "STREAMS", proc->name,
                 "the stop interrupted an expression evaluation; the "
                 "document it was for is read again from the last "
                 "checkpoint");
   }
   aspen__dlq_close(&rt);
   bson_destroy(&rt.source_meta);
   aspen__checkpointing_cleanup(&rt);
   /* Wake a getMore or a shell push waiting on this processor. */
   pthread_mutex_lock(&proc->mu);
   proc->thread_done = true;
   pthread_cond_broadcast(&proc->cv);
   pthread_mutex_unlock(&proc->mu);
   aspen_expr_set_interrupt(NULL);
   return NULL;
}

/* The tier of this run and its state limit: 80 % of the tier's RAM (the
 * tier of base/tier.h's plan for the options, which a start's tier and
 * autoscaling are saved into), or aspen's override when configured (no
 * autoscaling then: the override is the limit). */
static void
set_state_limit(aspen_proc_t *proc)
{
   aspen_pipeline_t *pl = proc->pl;
   aspen_tier_plan_t plan;
   aspen_tier_plan(&proc->options, &plan);
   const char *tier = aspen_tier_at(plan.rank)->name;
   pl->tier_rank = plan.rank;
   pl->tier_max_rank = plan.max_rank;
   atomic_store(&pl->effective_tier, plan.rank);
   uint64_t override = proc->env->memory_limit_bytes;
   pl->state_limit = aspen__tier_state_limit(tier, pl->state_limit_what,
                                             sizeof pl->state_limit_what);
   if (override > 0) {
      pl->state_limit = override;
      pl->tier_max_rank = plan.rank;
      snprintf(pl->state_limit_what, sizeof pl->state_limit_what,
               "tier %s; aspen's streams.memoryLimitBytes", tier);
   }
}

bool
aspen_proc_launch(aspen_proc_t *proc, const aspen_proc_env_t *env,
                  aspen_error_t *err)
{
   bool has_dlq = bson_has_field(&proc->options, "dlq");
   proc->env = env;
   proc->pl = aspen_pipeline_parse(&proc->pipeline, env->catalog, env->conns,
                                   proc->ephemeral, has_dlq, err);
   if (!proc->pl) {
      return false;
   }
   /* Checked again at every start (the Atlas connections' roles, what
    * exactlyOnce needs): the connections may have changed since create. */
   if (!aspen_catalog_check(env->catalog, proc->pl, &proc->options,
                            env->conns, proc->ephemeral, err)) {
      aspen_pipeline_destroy(proc->pl);
      proc->pl = NULL;
      return false;
   }
   set_state_limit(proc);
   bson_iter_t vit;
   proc->pl->virtual_clock = bson_iter_init_find(&vit, &proc->options,
                                                 "virtualClock") &&
                             bson_iter_as_bool(&vit);
   proc->pl->exactly_once = bson_iter_init_find(&vit, &proc->options,
                                                "exactlyOnce") &&
                            bson_iter_as_bool(&vit);
   atomic_store(&proc->stop, false);
   proc->start_result = 0;
   proc->run_failed = false;
   proc->thread_done = false;
   proc->started_ms = aspen_clock_now_ms();
   atomic_store(&proc->stats.watermark_ms, INT64_MIN);
   pthread_mutex_lock(&proc->mu);
   proc->has_source_pos = false;
   bson_reinit(&proc->source_figures);
   pthread_mutex_unlock(&proc->mu);
   /* Before the thread exists, so a failure it reports finds the state it
    * expects (aspen_rt_fail). */
   aspen_proc_set_state(proc, ASPEN_PROC_PROVISIONING, NULL);
   if (pthread_create(&proc->thread, NULL, proc_main, proc) != 0) {
      aspen_error_set(err, ASPEN_ERR_InternalError,
                      "cannot start a thread for the processor");
      aspen_pipeline_destroy(proc->pl);
      proc->pl = NULL;
      return false;
   }
   proc->thread_running = true;
   return true;
}

bool
aspen_proc_start_reported(aspen_proc_t *proc)
{
   pthread_mutex_lock(&proc->mu);
   bool reported = proc->start_result != 0;
   pthread_mutex_unlock(&proc->mu);
   return reported;
}

bool
aspen_proc_finish_start(aspen_proc_t *proc, aspen_error_t *err)
{
   pthread_mutex_lock(&proc->mu);
   while (proc->start_result == 0) {
      pthread_cond_wait(&proc->cv, &proc->mu);
   }
   int result = proc->start_result;
   pthread_mutex_unlock(&proc->mu);
   if (result < 0) {
      pthread_join(proc->thread, NULL);
      proc->thread_running = false;
      aspen_pipeline_destroy(proc->pl);
      proc->pl = NULL;
      aspen_error_set(err, proc->start_code, "%s", proc->error_msg);
      return false;
   }
   pthread_mutex_lock(&proc->mu);
   if (proc->run_failed) {
      /* It opened, then failed before this took the result: the start
       * itself succeeded, the processor did not last (as when it fails
       * just after a start's reply). */
      char msg[ASPEN_ERROR_MSG_MAX];
      snprintf(msg, sizeof msg, "%s", proc->error_msg);
      aspen_proc_set_state(proc, ASPEN_PROC_FAILED, msg);
   } else {
      aspen_proc_set_state(proc, ASPEN_PROC_STARTED, NULL);
   }
   pthread_mutex_unlock(&proc->mu);
   return true;
}

void
aspen_proc_halt(aspen_proc_t *proc)
{
   if (!proc->thread_running) {
      return;
   }
   pthread_mutex_lock(&proc->mu);
   atomic_store(&proc->stop, true);
   pthread_cond_broadcast(&proc->cv);
   pthread_mutex_unlock(&proc->mu);
   pthread_join(proc->thread, NULL);
   proc->thread_running = false;
   aspen_pipeline_destroy(proc->pl);
   proc->pl = NULL;
}

bool
aspen_proc_reap(aspen_proc_t *proc)
{
   if (!proc->thread_running || aspen_proc_is_running(proc)) {
      return false;
   }
   aspen_proc_halt(proc);
   return true;
}

/* ---- what a processor is ---------------------------------------------------- */

const char *
aspen_proc_name(const aspen_proc_t *proc)
{
   return proc->name;
}

const char *
aspen_proc_id(const aspen_proc_t *proc)
{
   return proc->id;
}

bool
aspen_proc_is_ephemeral(const aspen_proc_t *proc)
{
   return proc->ephemeral;
}

const bson_t *
aspen_proc_pipeline(const aspen_proc_t *proc)
{
   return &proc->pipeline;
}

const bson_t *
aspen_proc_options(const aspen_proc_t *proc)
{
   return &proc->options;
}

aspen_proc_state_t
aspen_proc_state(const aspen_proc_t *proc)
{
   return proc->state;
}

const char *
aspen_proc_error(const aspen_proc_t *proc)
{
   return proc->error_msg;
}

int64_t
aspen_proc_state_changed_ms(const aspen_proc_t *proc)
{
   return proc->state_changed_ms;
}

uint64_t
aspen_proc_owner_conn(const aspen_proc_t *proc)
{
   return proc->owner_conn;
}

bool
aspen_proc_is_running(const aspen_proc_t *proc)
{
   return proc->state == ASPEN_PROC_STARTED ||
          proc->state == ASPEN_PROC_PROVISIONING;
}

int64_t
aspen__processor_watermark(const aspen_proc_t *proc)
{
   if (proc->pl && proc->pl->window) {
      /* With a window, the watermark is the window's (event time, per
       * partition, never backwards). */
      return atomic_load(&proc->pl->watermark_ms);
   }
   return atomic_load(&proc->stats.watermark_ms);
}

void
aspen_proc_stats(const aspen_proc_t *proc, aspen_proc_stats_t *out)
{
   aspen_proc_t *p = (aspen_proc_t *) proc; /* atomics read, never written */
   out->input_count = atomic_load(&p->stats.input_count);
   out->input_size = atomic_load(&p->stats.input_size);
   out->output_count = atomic_load(&p->stats.output_count);
   out->output_size = atomic_load(&p->stats.output_size);
   out->dlq_count = atomic_load(&p->stats.dlq_count);
   out->dlq_size = atomic_load(&p->stats.dlq_size);
   out->watermark_ms = aspen__processor_watermark(proc);
   /* State: open windows and $cachedLookup caches. */
   out->state_size = p->pl ? atomic_load(&p->pl->state_size) : 0;
   out->last_checkpoint_ms = atomic_load(&p->last_checkpoint_ms);
}

bool
aspen_proc_figures(const aspen_proc_t *proc, aspen_proc_figures_t *out)
{
   memset(out, 0, sizeof *out);
   out->open_min_ms = out->open_max_ms = INT64_MIN;
   aspen_pipeline_t *pl = proc->pl;
   if (!proc->thread_running || !pl) {
      return false;
   }
   size_t n = aspen_pipeline_op_count(pl);
   aspen_op_counts_t *c = aspen_xcalloc(n, sizeof *c);
   aspen_pipeline_snapshot(pl, c, &out->recent, &out->recent_start_ms,
                           &out->total);
   out->ops = aspen_xcalloc(n, sizeof *out->ops);
   out->n_ops = n;
   for (size_t i = 0; i < n; i++) {
      out->ops[i].c = c[i];
      out->ops[i].state_size = c[i].state_size;
      out->ops[i].max_state = c[i].max_state;
   }
   free(c);
   out->ops[0].name = pl->source.ops->operator_name;
   for (int i = 0; i < pl->n_stages; i++) {
      out->ops[1 + i].name = pl->stages[i].ops->operator_name;
      out->ops[1 + i].is_window = &pl->stages[i] == pl->window;
   }
   if (pl->sink) {
      out->ops[n - 1].name = pl->sink->operator_name;
      out->has_sink = true;
   }
   out->open_min_ms = atomic_load(&pl->open_min_ms);
   out->open_max_ms = atomic_load(&pl->open_max_ms);
   return true;
}

void
aspen_proc_figures_cleanup(aspen_proc_figures_t *f)
{
   free(f->ops);
   f->ops = NULL;
   f->n_ops = 0;
}

bool
aspen_proc_source_position(aspen_proc_t *proc, bson_t *token, int64_t *lag_ms)
{
   pthread_mutex_lock(&proc->mu);
   bool has = proc->has_source_pos && proc->thread_running;
   bson_init(token);
   *lag_ms = INT64_MIN;
   if (has) {
      bson_concat(token, &proc->source_token);
      *lag_ms = proc->source_lag_ms;
   }
   pthread_mutex_unlock(&proc->mu);
   return has;
}

bool
aspen_proc_source_figures(const aspen_proc_t *proc, bson_t *out)
{
   pthread_mutex_t *mu = (pthread_mutex_t *) &proc->mu; /* the lock only */
   pthread_mutex_lock(mu);
   bson_copy_to(&proc->source_figures, out);
   pthread_mutex_unlock(mu);
   return !bson_empty(out);
}

int
aspen_proc_effective_tier(const aspen_proc_t *proc)
{
   if (proc->thread_running && proc->pl) {
      return atomic_load(&proc->pl->effective_tier);
   }
   aspen_tier_plan_t plan;
   aspen_tier_plan(&proc->options, &plan);
   return plan.rank;
}
