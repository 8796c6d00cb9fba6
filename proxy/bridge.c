/*
 * bridge.c - hands stream-processor commands from the event loop to the
 * engine and the replies back. The engine's commands may block (fsync of the
 * state file, starting and joining processor threads), so they run on one
 * bridge thread, one at a time, in arrival order; a uv_async_t brings each
 * finished reply back to the loop, where the session sends it.
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

static void *
bridge_main(void *arg)
{
   aspen_bridge_t *br = arg;
   pthread_mutex_lock(&br->mu);
   for (;;) {
      while (!br->head && !br->stop) {
         pthread_cond_wait(&br->cv, &br->mu);
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
      if (job->kind == JOB_COMMAND) {
         aspen_engine_command(br->eng, job->name, &job->cmd, job->conn_id,
                              &job->reply);
      } else {
         aspen_engine_connection_closed(br->eng, job->conn_id);
      }
      pthread_mutex_lock(&br->mu);
      if (job->kind == JOB_COMMAND) {
         if (br->done_tail) {
            br->done_tail->next = job;
         } else {
            br->done_head = job;
         }
         br->done_tail = job;
         uv_async_send(&br->async);
      } else {
         job_free(job);
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
   pthread_create(&br->thread, NULL, bridge_main, br);
   return br;
}

static void
enqueue(aspen_bridge_t *br, job_t *job)
{
   pthread_mutex_lock(&br->mu);
   if (br->tail) {
      br->tail->next = job;
   } else {
      br->head = job;
   }
   br->tail = job;
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
   on_async(&br->async); /* replies still owed (to closing sessions) */
   uv_close((uv_handle_t *) &br->async, on_async_closed);
}
