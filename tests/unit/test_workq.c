/*
 * test_workq.c - proxy/workq.c: the queue hands jobs out in order, reports
 * a wake before any job and the stop at once or after the queued jobs (as
 * set up), take_all returns what a stopped queue kept; worker threads'
 * jobs come back to the loop through the hand-back, every one, in order per
 * worker, and the loop closes clean (uv_loop_close returns 0). Every wait
 * is bounded: a watchdog timer fails the test instead of hanging.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "workq.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
   aspen_workq_item_t link;
   int n;
   int worker;
} job_t;

#define JOB(item) ASPEN_WORKQ_ENTRY(item, job_t, link)

static job_t *
job_new(int n)
{
   job_t *job = calloc(1, sizeof *job);
   job->n = n;
   return job;
}

static int
pop_n(aspen_workq_t *q, bool *woken)
{
   aspen_workq_item_t *item = aspen_workq_pop(q, woken);
   if (!item) {
      return -1;
   }
   int n = JOB(item)->n;
   free(JOB(item));
   return n;
}

/* FIFO order; a wake comes first, once however often it was asked for. */
static void
test_order_and_wake(void **state)
{
   (void) state;
   aspen_workq_t q;
   aspen_workq_init(&q, false);
   for (int i = 0; i < 3; i++) {
      aspen_workq_push(&q, &job_new(i)->link);
   }
   aspen_workq_wake(&q);
   aspen_workq_wake(&q);
   bool woken = false;
   assert_int_equal(pop_n(&q, &woken), -1);
   assert_true(woken);
   for (int i = 0; i < 3; i++) {
      assert_int_equal(pop_n(&q, &woken), i);
      assert_false(woken);
   }
   aspen_workq_stop(&q);
   assert_int_equal(pop_n(&q, &woken), -1);
   assert_false(woken);
   assert_null(aspen_workq_take_all(&q));
   aspen_workq_cleanup(&q);
}

/* Stopped without draining: the pop reports the stop at once and the jobs
 * stay for take_all, oldest first. */
static void
test_stop_keeps_jobs(void **state)
{
   (void) state;
   aspen_workq_t q;
   aspen_workq_init(&q, false);
   for (int i = 0; i < 3; i++) {
      aspen_workq_push(&q, &job_new(i)->link);
   }
   aspen_workq_stop(&q);
   assert_int_equal(pop_n(&q, NULL), -1);
   aspen_workq_item_t *item = aspen_workq_take_all(&q);
   for (int i = 0; i < 3; i++) {
      assert_non_null(item);
      aspen_workq_item_t *next = item->next;
      assert_int_equal(JOB(item)->n, i);
      free(JOB(item));
      item = next;
   }
   assert_null(item);
   assert_null(aspen_workq_take_all(&q));
   aspen_workq_cleanup(&q);
}

/* Stopped with draining: the queued jobs come out first, then the stop. */
static void
test_stop_drains(void **state)
{
   (void) state;
   aspen_workq_t q;
   aspen_workq_init(&q, true);
   for (int i = 0; i < 3; i++) {
      aspen_workq_push(&q, &job_new(i)->link);
   }
   aspen_workq_stop(&q);
   for (int i = 0; i < 3; i++) {
      assert_int_equal(pop_n(&q, NULL), i);
   }
   assert_int_equal(pop_n(&q, NULL), -1);
   aspen_workq_cleanup(&q);
}

/* ---- threads and the loop ------------------------------------------------- */

#define WORKERS 3
#define JOBS 2000

typedef struct {
   aspen_workq_t queue;
   aspen_workq_handback_t back;
   int received;
   int last[WORKERS]; /* the last job number seen from each worker */
   bool closed;
   uv_timer_t watchdog;
} world_t;

typedef struct {
   world_t *w;
   int id;
   pthread_t thread;
} worker_t;

static void *
worker_main(void *arg)
{
   worker_t *wk = arg;
   aspen_workq_item_t *item;
   while ((item = aspen_workq_pop(&wk->w->queue, NULL))) {
      JOB(item)->worker = wk->id;
      aspen_workq_handback_push(&wk->w->back, item);
   }
   return NULL;
}

static void
on_back(void *arg, aspen_workq_item_t *item)
{
   world_t *w = arg;
   job_t *job = JOB(item);
   /* One worker hands its jobs back in the order it took them, and the
    * queue hands them out in order: increasing per worker. */
   assert_true(job->n > w->last[job->worker]);
   w->last[job->worker] = job->n;
   w->received++;
   free(job);
   if (w->received == JOBS) {
      uv_stop(w->watchdog.loop);
   }
}

static void
on_watchdog(uv_timer_t *t)
{
   world_t *w = t->data;
   fail_msg("only %d of %d jobs came back", w->received, JOBS);
}

static void
on_closed(void *arg)
{
   world_t *w = arg;
   w->closed = true;
}

static void
test_threads_hand_back(void **state)
{
   (void) state;
   uv_loop_t loop;
   assert_int_equal(uv_loop_init(&loop), 0);
   world_t w;
   memset(&w, 0, sizeof w);
   for (int i = 0; i < WORKERS; i++) {
      w.last[i] = -1;
   }
   aspen_workq_init(&w.queue, false);
   aspen_workq_handback_init(&w.back, &loop, on_back, &w);
   uv_timer_init(&loop, &w.watchdog);
   w.watchdog.data = &w;
   uv_timer_start(&w.watchdog, on_watchdog, 30000, 0);
   worker_t workers[WORKERS];
   for (int i = 0; i < WORKERS; i++) {
      workers[i].w = &w;
      workers[i].id = i;
      assert_int_equal(
         pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]),
         0);
   }
   for (int i = 0; i < JOBS; i++) {
      aspen_workq_push(&w.queue, &job_new(i)->link);
   }
   uv_run(&loop, UV_RUN_DEFAULT);
   assert_int_equal(w.received, JOBS);
   aspen_workq_stop(&w.queue);
   for (int i = 0; i < WORKERS; i++) {
      pthread_join(workers[i].thread, NULL);
   }
   aspen_workq_handback_run(&w.back); /* nothing left: a no-op */
   assert_int_equal(w.received, JOBS);
   aspen_workq_handback_close(&w.back, on_closed);
   uv_close((uv_handle_t *) &w.watchdog, NULL);
   uv_run(&loop, UV_RUN_DEFAULT);
   assert_true(w.closed);
   assert_int_equal(uv_loop_close(&loop), 0);
   aspen_workq_cleanup(&w.queue);
}

int
main(void)
{
   const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_order_and_wake),
      cmocka_unit_test(test_stop_keeps_jobs),
      cmocka_unit_test(test_stop_drains),
      cmocka_unit_test(test_threads_hand_back),
   };
   return cmocka_run_group_tests_name("workq", tests, NULL, NULL);
}
