/*
 * workers.c - a source's partitions processed in parallel: the processor
 * thread keeps the source (polling, positions, checkpoints, offset
 * commits) and hands each input to one of N worker threads, each running
 * its own instance of the pipeline into its own sink (issue 18's fourth
 * lever; source.h's aspen_rt_workers_*).
 *
 * Only a pipeline whose stages keep nothing across documents qualifies
 * (each stage's ops say per_document, the source's spec and the sink's
 * ops say per_worker; aspen_rt_workers_allowed), so
 * splitting its inputs changes no output: a partition is always handed
 * to the same worker, which processes its inputs in the order handed, so
 * each partition's order holds. Each worker counts its own figures in its
 * pipeline instance; they are summed into the processor's pipeline (what
 * operatorStats read) at every flush, so they lag by up to one flush, as
 * a processor thread's lag by a publish batch (rt.c's PUBLISH_EVERY). The
 * processor's counts (proc->stats: inputMessageCount ...) are atomics
 * every worker adds to: exact at any time. Summing the figures at stats
 * time instead would need the command thread to reach the workers'
 * pipelines, which this thread makes and frees, and a lock each worker
 * takes per document: not done. The
 * workers share the processor's DLQ writer behind a lock.
 *
 * Checkpoints: the processor thread marks each input's position when it
 * hands it over, and every flush (aspen_rt_wait, aspen_rt_flush, the
 * final one) waits until each worker has processed everything handed to
 * it and flushed its sink (aspen__workers_flush) before the checkpoint,
 * and the offset commit after it, are taken. So a checkpoint never covers
 * an input still in flight. A worker's failure fails the processor as the
 * processor thread's would (aspen_rt_fail); the flush then reports it and
 * no checkpoint follows.
 *
 * Threads: the aspen_rt_workers_* calls and aspen__workers_* run on the
 * processor thread; each worker's runtime is used on its own thread only,
 * except while the processor thread waits on it at a flush (the worker
 * is then idle, and its mutex orders what each wrote).
 */
#include "runtime/runtime_int.h"
#include "base/tier.h"

#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Inputs a worker may be handed ahead of what it processed. */
#define QUEUE_CAP 4096
/* Inputs a worker takes from its queue at once. */
#define TAKE_MAX 256

typedef struct {
   aspen_runtime_t rt; /* the worker's runtime (rt.main: the processor's) */
   struct aspen_workers *ws;
   pthread_t thread;
   bool started;
   pthread_mutex_t mu;
   pthread_cond_t work_cv; /* the worker waits: items, a flush, quit */
   pthread_cond_t back_cv; /* the processor thread waits: room, a flush */
   void **queue;           /* ring of QUEUE_CAP items */
   size_t head, len;
   uint64_t flush_req, flush_done;
   bool flush_all, flush_ok;
   bool interrupted; /* an evaluation was interrupted (a stop) */
   bool quit;
} worker_t;

aspen_workers_hooks_t aspen__workers_hooks = {.thread_create = pthread_create};

struct aspen_workers {
   int n;
   worker_t *w;
   aspen_rt_work_fn work;
   aspen_rt_drop_fn drop;
   void *arg;
   pthread_mutex_t dlq_mu;
};

int
aspen_rt_workers_allowed(const aspen_runtime_t *rt, int64_t partitions)
{
   const aspen_pipeline_t *pl = rt->pl;
   if (rt->main || partitions < 2 || pl->window || pl->exactly_once ||
       pl->virtual_clock || !pl->source.per_worker || !pl->sink ||
       !pl->sink->per_worker) {
      return 1;
   }
   for (int i = 0; i < pl->n_stages; i++) {
      if (!pl->stages[i].ops->per_document) {
         return 1;
      }
   }
   const aspen_tier_t *tier = aspen_tier_at(pl->tier_rank);
   int64_t n = partitions;
   int64_t vcpus = tier ? tier->vcpus : 1;
   long cpus = sysconf(_SC_NPROCESSORS_ONLN);
   if (vcpus < n) {
      n = vcpus;
   }
   if (cpus > 0 && cpus < n) {
      n = cpus;
   }
   return n > 1 ? (int) n : 1;
}

/* Adds the worker pipeline's figures to `sum` (the processor's, whose
 * stages are the same), taking its latencies. */
static void
figures_add(aspen_pipeline_t *sum, aspen_pipeline_t *pl)
{
   aspen_op_counts_t *to[2] = {&sum->src_counts, &sum->sink_counts};
   const aspen_op_counts_t *from[2] = {&pl->src_counts, &pl->sink_counts};
   for (int k = 0; k < 2 + pl->n_stages; k++) {
      aspen_op_counts_t *t = k < 2 ? to[k] : &sum->stages[k - 2].counts;
      const aspen_op_counts_t *f = k < 2 ? from[k] : &pl->stages[k - 2].counts;
      t->in_count += f->in_count;
      t->in_size += f->in_size;
      t->out_count += f->out_count;
      t->out_size += f->out_size;
      t->dlq_count += f->dlq_count;
      t->dlq_size += f->dlq_size;
      t->exec_ns += f->exec_ns;
   }
   aspen_hist_merge(&sum->lat, &pl->lat);
   memset(&pl->lat, 0, sizeof pl->lat);
}

/* The figures summed over every worker, as counted so far (each worker
 * idle: called at a flush). */
static void
figures_sum(aspen_runtime_t *rt)
{
   aspen_pipeline_t *sum = rt->pl;
   memset(&sum->src_counts, 0, sizeof sum->src_counts);
   memset(&sum->sink_counts, 0, sizeof sum->sink_counts);
   for (int i = 0; i < sum->n_stages; i++) {
      uint64_t state = sum->stages[i].counts.state_size;
      uint64_t max = sum->stages[i].counts.max_state;
      memset(&sum->stages[i].counts, 0, sizeof sum->stages[i].counts);
      sum->stages[i].counts.state_size = state;
      sum->stages[i].counts.max_state = max;
   }
   for (int i = 0; i < rt->workers->n; i++) {
      figures_add(sum, rt->workers->w[i].rt.pl);
   }
}

static void *
worker_main(void *arg)
{
   worker_t *w = arg;
   struct aspen_workers *ws = w->ws;
   void *batch[TAKE_MAX];
   /* A stop interrupts a long evaluation here as on the processor
    * thread; the flush reports it (the document is read again). */
   aspen_expr_set_interrupt(&w->rt.proc->stop);
   pthread_mutex_lock(&w->mu);
   for (;;) {
      if (w->len > 0) {
         size_t n = 0;
         while (w->len > 0 && n < TAKE_MAX) {
            batch[n++] = w->queue[w->head];
            w->head = (w->head + 1) % QUEUE_CAP;
            w->len--;
         }
         pthread_cond_signal(&w->back_cv); /* room again */
         pthread_mutex_unlock(&w->mu);
         for (size_t i = 0; i < n; i++) {
            if (w->rt.failed) {
               ws->drop(batch[i]);
            } else {
               ws->work(&w->rt, batch[i], ws->arg);
            }
         }
         pthread_mutex_lock(&w->mu);
         continue;
      }
      if (w->flush_done != w->flush_req) {
         /* Everything handed before the flush is processed (the queue is
          * empty, and nothing is handed while the flush is waited on). */
         uint64_t req = w->flush_req;
         bool all = w->flush_all;
         pthread_mutex_unlock(&w->mu);
         bool ok = !w->rt.failed && aspen__rt_flush_sinks(&w->rt, all);
         bool interrupted = aspen_expr_interrupted();
         pthread_mutex_lock(&w->mu);
         w->flush_ok = ok;
         w->interrupted = interrupted;
         w->flush_done = req;
         pthread_cond_signal(&w->back_cv);
         continue;
      }
      if (w->quit) {
         break;
      }
      pthread_cond_wait(&w->work_cv, &w->mu);
   }
   pthread_mutex_unlock(&w->mu);
   aspen_expr_set_interrupt(NULL);
   return NULL;
}

/* Frees what worker `w` holds (its thread joined or never started). */
static void
worker_cleanup(worker_t *w)
{
   if (w->rt.sink) {
      w->rt.sink->close(w->rt.sink_state);
   }
   aspen_pipeline_destroy(w->rt.pl);
   bson_destroy(&w->rt.source_meta);
   free(w->queue);
   pthread_cond_destroy(&w->work_cv);
   pthread_cond_destroy(&w->back_cv);
   pthread_mutex_destroy(&w->mu);
}

/* Sets up worker `w` of the processor runtime `rt`: its own pipeline
 * instance, with the hooks and limits of the processor's, and its own
 * sink. False with err set when either cannot be made. */
static bool
worker_init(worker_t *w, aspen_runtime_t *rt, struct aspen_workers *ws,
            aspen_error_t *err)
{
   aspen_proc_t *proc = rt->proc;
   const aspen_pipeline_t *main_pl = rt->pl;
   memset(w, 0, sizeof *w);
   w->ws = ws;
   pthread_mutex_init(&w->mu, NULL);
   pthread_cond_init(&w->work_cv, NULL);
   pthread_cond_init(&w->back_cv, NULL);
   w->queue = aspen_xcalloc(QUEUE_CAP, sizeof *w->queue);
   aspen_runtime_t *wrt = &w->rt;
   wrt->proc = proc;
   wrt->main = rt;
   wrt->dlq = rt->dlq;
   wrt->dlq_mu = &ws->dlq_mu;
   wrt->source = rt->source;
   wrt->max_ts = INT64_MIN;
   wrt->source_lag_ms = INT64_MIN;
   wrt->last_input_ms = aspen_clock_now_ms();
   wrt->rng = aspen_rt_random(rt) | 1;
   bson_copy_to(&rt->source_meta, &wrt->source_meta);
   wrt->pl = aspen_pipeline_parse(&proc->pipeline, proc->env->catalog,
                                  proc->env->conns, proc->ephemeral,
                                  bson_has_field(&proc->options, "dlq"), err);
   if (!wrt->pl) {
      return false;
   }
   aspen_pipeline_t *pl = wrt->pl;
   pl->tier_rank = main_pl->tier_rank;
   pl->tier_max_rank = main_pl->tier_max_rank;
   pl->state_limit = main_pl->state_limit;
   memcpy(pl->state_limit_what, main_pl->state_limit_what,
          sizeof pl->state_limit_what);
   pl->dlq = aspen__dlq_send;
   pl->output = aspen__rt_on_output;
   pl->hook_arg = wrt;
   wrt->sink = pl->sink;
   if (wrt->sink && !wrt->sink->open(wrt, &pl->sink_spec, &wrt->sink_state,
                                     err)) {
      wrt->sink = NULL;
      return false;
   }
   return true;
}

/* Asks each of the first `n` workers to quit, joins them and frees them
 * and `ws`. */
static void
workers_free(struct aspen_workers *ws, int n)
{
   for (int i = 0; i < n; i++) {
      worker_t *w = &ws->w[i];
      if (w->started) {
         pthread_mutex_lock(&w->mu);
         w->quit = true;
         pthread_cond_signal(&w->work_cv);
         pthread_mutex_unlock(&w->mu);
         pthread_join(w->thread, NULL);
      }
      worker_cleanup(w);
   }
   pthread_mutex_destroy(&ws->dlq_mu);
   free(ws->w);
   free(ws);
}

bool
aspen_rt_workers_start(aspen_runtime_t *rt, int n, aspen_rt_work_fn work,
                       aspen_rt_drop_fn drop, void *arg, aspen_error_t *err)
{
   ASPEN_ASSERT(n > 1 && !rt->workers && !rt->main);
   struct aspen_workers *ws = aspen_xcalloc(1, sizeof *ws);
   ws->n = n;
   ws->work = work;
   ws->drop = drop;
   ws->arg = arg;
   pthread_mutex_init(&ws->dlq_mu, NULL);
   ws->w = aspen_xcalloc((size_t) n, sizeof *ws->w);
   for (int i = 0; i < n; i++) {
      if (aspen__workers_hooks.before_init) {
         aspen__workers_hooks.before_init(i, aspen__workers_hooks.arg);
      }
      if (!worker_init(&ws->w[i], rt, ws, err)) {
         workers_free(ws, i + 1);
         return false;
      }
   }
   for (int i = 0; i < n; i++) {
      worker_t *w = &ws->w[i];
      int rc = aspen__workers_hooks.thread_create(&w->thread, NULL,
                                                  worker_main, w);
      if (rc != 0) {
         /* Those started are asked to quit and joined; nothing was handed
          * to them yet. */
         aspen_error_set(err, ASPEN_ERR_InternalError,
                         "cannot start worker thread %d of %d for the "
                         "processor's partitions: %s",
                         i + 1, n, strerror(rc));
         workers_free(ws, n);
         return false;
      }
      w->started = true;
   }
   /* From here only the workers output: the processor thread's sink is
    * not used again. */
   if (rt->sink) {
      rt->sink->close(rt->sink_state);
      rt->sink = NULL;
      rt->sink_state = NULL;
   }
   rt->dlq_mu = &ws->dlq_mu;
   rt->workers = ws;
   aspen_logf(ASPEN_LOG_INFO, "STREAMS", rt->proc->name,
              "%d workers process the source's partitions", n);
   return true;
}

void
aspen_rt_workers_submit(aspen_runtime_t *rt, int worker, void *item)
{
   worker_t *w = &rt->workers->w[worker];
   pthread_mutex_lock(&w->mu);
   while (w->len == QUEUE_CAP) {
      pthread_cond_wait(&w->back_cv, &w->mu);
   }
   w->queue[(w->head + w->len) % QUEUE_CAP] = item;
   if (w->len++ == 0) {
      pthread_cond_signal(&w->work_cv);
   }
   pthread_mutex_unlock(&w->mu);
}

bool
aspen__workers_flush(aspen_runtime_t *rt, bool all)
{
   struct aspen_workers *ws = rt->workers;
   for (int i = 0; i < ws->n; i++) {
      worker_t *w = &ws->w[i];
      pthread_mutex_lock(&w->mu);
      w->flush_req++;
      w->flush_all = all;
      pthread_cond_signal(&w->work_cv);
      pthread_mutex_unlock(&w->mu);
   }
   bool ok = true, interrupted = false;
   for (int i = 0; i < ws->n; i++) {
      worker_t *w = &ws->w[i];
      pthread_mutex_lock(&w->mu);
      while (w->flush_done != w->flush_req) {
         pthread_cond_wait(&w->back_cv, &w->mu);
      }
      ok = ok && w->flush_ok;
      interrupted = interrupted || w->interrupted;
      pthread_mutex_unlock(&w->mu);
   }
   figures_sum(rt);
   if (interrupted) {
      /* A document a worker did not finish is read again: no checkpoint
       * may cover it (aspen__checkpointing_take asks this thread). */
      aspen_expr_note_interrupted();
   }
   if (!ok) {
      /* The worker failed the processor (aspen_rt_fail: its state and
       * message are set); this thread stops too. */
      rt->failed = true;
   }
   return ok;
}

void
aspen__workers_stop(aspen_runtime_t *rt)
{
   struct aspen_workers *ws = rt->workers;
   if (!ws) {
      return;
   }
   workers_free(ws, ws->n);
   rt->workers = NULL;
   rt->dlq_mu = NULL;
}
