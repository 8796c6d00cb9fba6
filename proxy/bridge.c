/*
 * bridge.c - hands stream-processor commands from the event loop to the
 * engine and the replies back. The engine's commands may block (fsync of the
 * state file, joining processor threads), so they run on one bridge thread,
 * one at a time, in arrival order; a uv_async_t brings each finished reply
 * back to the loop, where the session sends it.
 *
 * The queue and the hand-back are workq.c's: jobs wait in an aspen_workq_t
 * that drains on stop (every command queued before shutdown still runs),
 * and go back to the loop through an aspen_workq_handback_t.
 *
 * A start does not keep the bridge thread: the engine defers its reply
 * (aspen_engine_command returns false and keeps the job as its ticket)
 * while the processor's thread opens its peers. When that thread reports,
 * the engine's wake hook wakes the queue; the bridge thread runs
 * aspen_engine_poll between jobs, and the engine's reply hook hands the
 * job, now with its reply, back like any other. So the engine is only ever
 * called from one thread at a time, and each command gets exactly one
 * reply.
 */
#include "proxy_int.h"
#include "workq.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef enum { JOB_COMMAND, JOB_CONN_CLOSED, JOB_METRICS } job_kind_t;

typedef struct job {
   aspen_workq_item_t link; /* in the queue, then in the hand-back */
   job_kind_t kind;
   char *name;
   bson_t cmd;
   uint64_t conn_id;
   bson_t reply;
   aspen_bridge_cb cb;
   void *arg;
} job_t;

struct aspen_bridge {
   aspen_engine_t *eng;
   pthread_t thread;
   /* Jobs for the bridge thread; a wake means a processor reported its
    * start: aspen_engine_poll. */
   aspen_workq_t queue;
   aspen_workq_handback_t done; /* answered jobs, back to the loop */
};

#define JOB(item) ASPEN_WORKQ_ENTRY(item, job_t, link)

static void
job_free(job_t *job)
{
   free(job->name);
   bson_destroy(&job->cmd);
   bson_destroy(&job->reply);
   free(job);
}

/* The engine's reply hook: a deferred reply (the ticket is its job). Called
 * on the bridge thread, or on the loop thread once that has stopped. */
static void
on_engine_reply(void *arg, void *ticket, const bson_t *reply)
{
   aspen_bridge_t *br = arg;
   job_t *job = ticket;
   bson_destroy(&job->reply);
   bson_copy_to(reply, &job->reply);
   aspen_workq_handback_push(&br->done, &job->link);
}

/* The engine's wake hook, on a processor's thread: a start has finished. */
static void
on_engine_wake(void *arg)
{
   aspen_bridge_t *br = arg;
   aspen_workq_wake(&br->queue);
}

static void *
bridge_main(void *arg)
{
   aspen_bridge_t *br = arg;
   for (;;) {
      bool woken;
      aspen_workq_item_t *item = aspen_workq_pop(&br->queue, &woken);
      if (woken) {
         aspen_engine_poll(br->eng);
         continue;
      }
      if (!item) {
         break; /* stopping, queue drained */
      }
      job_t *job = JOB(item);
      if (job->kind == JOB_METRICS) {
         char *text = aspen_engine_metrics(br->eng);
         BSON_APPEND_UTF8(&job->reply, "text", text);
         bson_free(text);
         aspen_workq_handback_push(&br->done, &job->link);
         continue;
      }
      bool is_command = job->kind == JOB_COMMAND, replied = true;
      if (is_command) {
         /* false: deferred; the engine owns the job until on_engine_reply
          * queues it, and this thread must not touch it any more */
         replied = aspen_engine_command(br->eng, job->name, &job->cmd,
                                        job->conn_id, job, &job->reply);
      } else {
         aspen_engine_connection_closed(br->eng, job->conn_id);
      }
      if (!is_command) {
         job_free(job);
      } else if (replied) {
         aspen_workq_handback_push(&br->done, &job->link);
      }
   }
   return NULL;
}

/* An answered job, on the loop thread: its reply goes to the session. */
static void
on_done(void *arg, aspen_workq_item_t *item)
{
   (void) arg;
   job_t *job = JOB(item);
   job->cb(job->arg, &job->reply);
   job_free(job);
}

aspen_bridge_t *
aspen_bridge_new(uv_loop_t *loop, aspen_engine_t *eng)
{
   aspen_bridge_t *br = aspen_xcalloc(1, sizeof *br);
   br->eng = eng;
   aspen_workq_init(&br->queue, true);
   aspen_workq_handback_init(&br->done, loop, on_done, br);
   aspen_engine_hooks_t hooks = {
      .wake = on_engine_wake, .reply = on_engine_reply, .arg = br};
   aspen_engine_set_hooks(eng, &hooks);
   pthread_create(&br->thread, NULL, bridge_main, br);
   return br;
}

void
aspen_bridge_submit(aspen_bridge_t *br, const char *name, const bson_t *cmd,
                    uint64_t conn_id, aspen_bridge_cb cb, void *arg)
{
   job_t *job = aspen_xcalloc(1, sizeof *job);
   job->kind = JOB_COMMAND;
   job->name = aspen_xstrdup(name);
   bson_copy_to(cmd, &job->cmd);
   bson_init(&job->reply);
   job->conn_id = conn_id;
   job->cb = cb;
   job->arg = arg;
   aspen_workq_push(&br->queue, &job->link);
}

void
aspen_bridge_connection_closed(aspen_bridge_t *br, uint64_t conn_id)
{
   job_t *job = aspen_xcalloc(1, sizeof *job);
   job->kind = JOB_CONN_CLOSED;
   bson_init(&job->cmd);
   bson_init(&job->reply);
   job->conn_id = conn_id;
   aspen_workq_push(&br->queue, &job->link);
}

void
aspen_bridge_metrics(aspen_bridge_t *br, aspen_bridge_cb cb, void *arg)
{
   job_t *job = aspen_xcalloc(1, sizeof *job);
   job->kind = JOB_METRICS;
   bson_init(&job->cmd);
   bson_init(&job->reply);
   job->cb = cb;
   job->arg = arg;
   aspen_workq_push(&br->queue, &job->link);
}

static void
on_closed(void *arg)
{
   aspen_bridge_t *br = arg;
   aspen_workq_cleanup(&br->queue);
   free(br);
}

void
aspen_bridge_destroy(aspen_bridge_t *br)
{
   if (!br) {
      return;
   }
   aspen_workq_stop(&br->queue);
   pthread_join(br->thread, NULL);
   /* The bridge thread is gone, so this thread may call the engine: starts
    * still waiting for their processors end now (their replies are handed
    * back), and then no processor thread may wake us any more. */
   aspen_engine_cancel_starts(br->eng);
   aspen_engine_set_hooks(br->eng, NULL);
   aspen_workq_handback_run(&br->done); /* replies owed to closing sessions */
   aspen_workq_handback_close(&br->done, on_closed);
}
