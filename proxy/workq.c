/*
 * workq.c - work queues for worker threads and the uv_async hand-back of
 * finished work to the loop (workq.h).
 */
#include "workq.h"

/* Appends `item` to the list head..tail. */
static void
list_append(aspen_workq_item_t **head, aspen_workq_item_t **tail,
            aspen_workq_item_t *item)
{
   item->next = NULL;
   if (*tail) {
      (*tail)->next = item;
   } else {
      *head = item;
   }
   *tail = item;
}

void
aspen_workq_init(aspen_workq_t *q, bool drain_on_stop)
{
   pthread_mutex_init(&q->mu, NULL);
   pthread_cond_init(&q->cv, NULL);
   q->head = q->tail = NULL;
   q->woken = false;
   q->stopping = false;
   q->drain = drain_on_stop;
}

void
aspen_workq_cleanup(aspen_workq_t *q)
{
   pthread_mutex_destroy(&q->mu);
   pthread_cond_destroy(&q->cv);
}

void
aspen_workq_push(aspen_workq_t *q, aspen_workq_item_t *item)
{
   pthread_mutex_lock(&q->mu);
   list_append(&q->head, &q->tail, item);
   pthread_cond_signal(&q->cv);
   pthread_mutex_unlock(&q->mu);
}

void
aspen_workq_wake(aspen_workq_t *q)
{
   pthread_mutex_lock(&q->mu);
   q->woken = true;
   pthread_cond_signal(&q->cv);
   pthread_mutex_unlock(&q->mu);
}

void
aspen_workq_stop(aspen_workq_t *q)
{
   pthread_mutex_lock(&q->mu);
   q->stopping = true;
   pthread_cond_broadcast(&q->cv);
   pthread_mutex_unlock(&q->mu);
}

aspen_workq_item_t *
aspen_workq_pop(aspen_workq_t *q, bool *woken)
{
   aspen_workq_item_t *item = NULL;
   bool wake = false;
   pthread_mutex_lock(&q->mu);
   while (!q->head && !q->woken && !q->stopping) {
      pthread_cond_wait(&q->cv, &q->mu);
   }
   if (q->woken) {
      q->woken = false;
      wake = true;
   } else if (q->head && (!q->stopping || q->drain)) {
      item = q->head;
      q->head = item->next;
      if (!q->head) {
         q->tail = NULL;
      }
      item->next = NULL;
   }
   pthread_mutex_unlock(&q->mu);
   if (woken) {
      *woken = wake;
   }
   return item;
}

aspen_workq_item_t *
aspen_workq_take_all(aspen_workq_t *q)
{
   pthread_mutex_lock(&q->mu);
   aspen_workq_item_t *items = q->head;
   q->head = q->tail = NULL;
   pthread_mutex_unlock(&q->mu);
   return items;
}

/* ---- the hand-back --------------------------------------------------------- */

static void
on_async(uv_async_t *h)
{
   aspen_workq_handback_run(h->data);
}

void
aspen_workq_handback_init(aspen_workq_handback_t *hb, uv_loop_t *loop,
                          aspen_workq_handback_fn fn, void *arg)
{
   pthread_mutex_init(&hb->mu, NULL);
   hb->head = hb->tail = NULL;
   hb->fn = fn;
   hb->arg = arg;
   hb->closed = NULL;
   uv_async_init(loop, &hb->async, on_async);
   hb->async.data = hb;
}

void
aspen_workq_handback_push(aspen_workq_handback_t *hb,
                          aspen_workq_item_t *item)
{
   pthread_mutex_lock(&hb->mu);
   list_append(&hb->head, &hb->tail, item);
   pthread_mutex_unlock(&hb->mu);
   uv_async_send(&hb->async);
}

void
aspen_workq_handback_run(aspen_workq_handback_t *hb)
{
   pthread_mutex_lock(&hb->mu);
   aspen_workq_item_t *item = hb->head;
   hb->head = hb->tail = NULL;
   pthread_mutex_unlock(&hb->mu);
   while (item) {
      aspen_workq_item_t *next = item->next;
      item->next = NULL;
      hb->fn(hb->arg, item);
      item = next;
   }
}

static void
on_closed(uv_handle_t *h)
{
   aspen_workq_handback_t *hb = h->data;
   void (*closed)(void *) = hb->closed;
   void *arg = hb->arg;
   pthread_mutex_destroy(&hb->mu);
   if (closed) {
      closed(arg); /* may free hb */
   }
}

void
aspen_workq_handback_close(aspen_workq_handback_t *hb,
                           void (*closed)(void *arg))
{
   hb->closed = closed;
   uv_close((uv_handle_t *) &hb->async, on_closed);
}
