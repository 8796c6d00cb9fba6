/*
 * bridge.c - hands stream-processor commands from the event loop to the
 * engine and the replies back. The engine's commands may block (fsync of the
 * state file, joining processor threads), so they run on one bridge thread,
 * one at a time, in arrival order; a uv_async_t brings each finished reply
 * back to the loop, where the session sends it.
 *
 * A start does not keep the bridge thread: the engine defers its reply
 * (aspen_engine_command returns false and keeps the job as its ticket)
 * while the processor's thread opens its peers. When that thread reports,
 * the engine's wake hook flags a poll; the bridge thread runs
 * aspen_engine_poll between jobs, and the engine's reply hook puts the
 * job, now with its reply, on the done list like any other. So the engine
 * is only ever called from one thread at a time, and each command gets
 * exactly one reply.
 */
#include "proxy_int.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef enum { JOB_COMMAND, JOB_CONN_CLOSED } job_kind_t;

typedef struct job {
   struct job *next;
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
   pthread_mutex_t mu;
   pthread_cond_t cv;
   job_t *head, *tail;
   job_t *done_head, *done_tail;
   bool poll; /* a processor reported its start: aspen_engine_poll */
   bool stop;
   uv_async_t async;
};

static void
job_free(job_t *job)
{
   free(job->name);
   bson_destroy(&job->cmd);
   bson_destroy(&job->reply);
   free(job);
}

/* Appends `job` to the list head..tail. */
static void
job_append(job_t **head, job_t **tail, job_t *job)
{
   job->next = NULL;
   if (*tail) {
      (*tail)->next = job;
   } else {
      *head = job;
   }
   *tail = job;
}

/* Queues an answered job for the loop; br->mu held. */
static void
done_push_locked(aspen_bridge_t *br, job_t *job)
{
   job_append(&br->done_head, &br->done_tail, job);
   uv_async_send(&br->async);
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
   pthread_mutex_lock(&br->mu);
   done_push_locked(br, job);
   pthread_mutex_unlock(&br->mu);
}

/* The engine's wake hook, on a processor's thread: a start has finished. */
static void
on_engine_wake(void *arg)
{
   aspen_bridge_t *br = arg;
   pthread_mutex_lock(&br->mu);
   br->poll = true;
   pthread_cond_signal(&br->cv);
   pthread_mutex_unlock(&br->mu);
}

static void *
bridge_main(void *arg)
{
   aspen_bridge_t *br = arg;
   pthread_mutex_lock(&br->mu);
   for (;;) {
      while (!br->head && !br->poll && !br->stop) {
         pthread_cond_wait(&br->cv, &br->mu);
      }
      if (br->poll) {
         br->poll = false;
         pthread_mutex_unlock(&br->mu);
         aspen_engine_poll(br->eng);
         pthread_mutex_lock(&br->mu);
         continue;
      }
      if (!br->head) {
         break; /* stopping, queue drained */
      }
      job_t *job = br->head;
      br->head = job->next;
      if (!br->head) {
         br->tail = NULL;
      }
      job->next = NULL;
      pthread_mutex_unlock(&br->mu);
      bool is_command = job->kind == JOB_COMMAND, replied = true;
      if (is_command) {
         /* false: deferred; the engine owns the job until on_engine_reply
          * queues it, and this thread must not touch it any more */
         replied = aspen_engine_command(br->eng, job->name, &job->cmd,
                                        job->conn_id, job, &job->reply);
      } else {
         aspen_engine_connection_closed(br->eng, job->conn_id);
      }
      pthread_mutex_lock(&br->mu);
      if (!is_command) {
         job_free(job);
      } else if (replied) {
         done_push_locked(br, job);
      }
   }
   pthread_mutex_unlock(&br->mu);
   return NULL;
}

static void
on_async(uv_async_t *h)
{
   aspen_bridge_t *br = h->data;
   pthread_mutex_lock(&br->mu);
   job_t *job = br->done_head;
   br->done_head = br->done_tail = NULL;
   pthread_mutex_unlock(&br->mu);
   while (job) {
      job_t *next = job->next;
      job->cb(job->arg, &job->reply);
      job_free(job);
      job = next;
   }
}

aspen_bridge_t *
aspen_bridge_new(uv_loop_t *loop, aspen_engine_t *eng)
{
   aspen_bridge_t *br = aspen_xcalloc(1, sizeof *br);
   br->eng = eng;
   pthread_mutex_init(&br->mu, NULL);
   pthread_cond_init(&br->cv, NULL);
   uv_async_init(loop, &br->async, on_async);
   br->async.data = br;
   aspen_engine_hooks_t hooks = {
      .wake = on_engine_wake, .reply = on_engine_reply, .arg = br};
   aspen_engine_set_hooks(eng, &hooks);
   pthread_create(&br->thread, NULL, bridge_main, br);
   return br;
}

static void
enqueue(aspen_bridge_t *br, job_t *job)
{
   pthread_mutex_lock(&br->mu);
   job_append(&br->head, &br->tail, job);
   pthread_cond_signal(&br->cv);
   pthread_mutex_unlock(&br->mu);
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
   enqueue(br, job);
}

void
aspen_bridge_connection_closed(aspen_bridge_t *br, uint64_t conn_id)
{
   job_t *job = aspen_xcalloc(1, sizeof *job);
   job->kind = JOB_CONN_CLOSED;
   bson_init(&job->cmd);
   bson_init(&job->reply);
   job->conn_id = conn_id;
   enqueue(br, job);
}

static void
on_async_closed(uv_handle_t *h)
{
   aspen_bridge_t *br = h->data;
   pthread_mutex_destroy(&br->mu);
   pthread_cond_destroy(&br->cv);
   free(br);
}

void
aspen_bridge_destroy(aspen_bridge_t *br)
{
   if (!br) {
      return;
   }
   pthread_mutex_lock(&br->mu);
   br->stop = true;
   pthread_cond_signal(&br->cv);
   pthread_mutex_unlock(&br->mu);
   pthread_join(br->thread, NULL);
   /* The bridge thread is gone, so this thread may call the engine: starts
    * still waiting for their processors end now (their replies join the
    * done list), and then no processor thread may wake us any more. */
   aspen_engine_cancel_starts(br->eng);
   aspen_engine_set_hooks(br->eng, NULL);
   on_async(&br->async); /* replies still owed (to closing sessions) */
   uv_close((uv_handle_t *) &br->async, on_async_closed);
}
