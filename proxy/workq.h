/*
 * workq.h - handing work between the event loop and worker threads
 * (workq.c), for the engine bridge (bridge.c) and, later, the backend
 * lanes (backend.c):
 *
 *   - aspen_workq_t, a FIFO of jobs that any thread pushes and a worker
 *     thread pops, waiting while it is empty. It can be woken (the worker's
 *     pop returns with no job, to do something else: the bridge polls the
 *     engine) and stopped (the worker's pop returns no job, at once or once
 *     what was queued is done, as the queue was set up).
 *   - aspen_workq_handback_t, the way back: a worker hands a finished job
 *     back, a uv_async_t wakes the loop, and on the loop thread each job
 *     goes to a callback, in the order handed back.
 *
 * Jobs are intrusive: a job struct embeds an aspen_workq_item_t and
 * ASPEN_WORKQ_ENTRY gets the job back from it, so queueing never
 * allocates. A job is in one list at a time; who pushed it does not touch
 * it until it comes back.
 */
#ifndef ASPEN_PROXY_WORKQ_H
#define ASPEN_PROXY_WORKQ_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

typedef struct aspen_workq_item {
   struct aspen_workq_item *next;
} aspen_workq_item_t;

/* The job of type `type` whose member `member` is the item `item`. */
#define ASPEN_WORKQ_ENTRY(item, type, member)                                  \
   ((type *) (void *) ((char *) (item) - offsetof(type, member)))

typedef struct {
   pthread_mutex_t mu;
   pthread_cond_t cv;
   aspen_workq_item_t *head, *tail;
   bool woken;    /* aspen_workq_wake since a pop last reported one */
   bool stopping; /* aspen_workq_stop was called */
   bool drain;    /* once stopping, pop still hands out what is queued */
} aspen_workq_t;

/* An empty queue. With `drain_on_stop`, a stopped queue's pops still hand
 * out the jobs queued before they report the stop; without, they report it
 * at once and the jobs stay queued (aspen_workq_take_all). */
void aspen_workq_init(aspen_workq_t *q, bool drain_on_stop);
/* Frees the queue's lock; no thread may wait on it any more. Jobs still
 * queued are the caller's (take them first). */
void aspen_workq_cleanup(aspen_workq_t *q);
/* Appends a job; it belongs to the queue until popped. Any thread. */
void aspen_workq_push(aspen_workq_t *q, aspen_workq_item_t *item);
/* Makes a pop (the one waiting, or the next) return NULL with *woken true,
 * before any job. Wakes that pile up before the pop count once. Any
 * thread. */
void aspen_workq_wake(aspen_workq_t *q);
/* Stops the queue: waiting and later pops return NULL (after the queued
 * jobs, with drain_on_stop). Any thread. */
void aspen_workq_stop(aspen_workq_t *q);
/* Waits until there is a job, a wake or the stop. Returns the oldest job,
 * now the caller's; or NULL, with *woken (when `woken` is not NULL) true
 * for a wake and false for the stop. The worker thread(s). */
aspen_workq_item_t *aspen_workq_pop(aspen_workq_t *q, bool *woken);
/* Takes every queued job: the oldest, linked to the next by `next`, or
 * NULL. For answering the jobs a stopped queue never handed out. */
aspen_workq_item_t *aspen_workq_take_all(aspen_workq_t *q);

/* Called on the loop thread for each job handed back; it owns the job. */
typedef void (*aspen_workq_handback_fn)(void *arg, aspen_workq_item_t *item);

typedef struct {
   uv_async_t async; /* wakes the loop; freed by aspen_workq_handback_close */
   pthread_mutex_t mu;
   aspen_workq_item_t *head, *tail;
   aspen_workq_handback_fn fn;
   void *arg;
   void (*closed)(void *arg);
} aspen_workq_handback_t;

/* A hand-back to `loop` that gives each job to fn(arg, job). Loop thread. */
void aspen_workq_handback_init(aspen_workq_handback_t *hb, uv_loop_t *loop,
                               aspen_workq_handback_fn fn, void *arg);
/* Hands a finished job back; fn gets it on the loop thread. Any thread. */
void aspen_workq_handback_push(aspen_workq_handback_t *hb,
                               aspen_workq_item_t *item);
/* Gives every job handed back so far to fn, in order, now (what the async
 * callback does). Loop thread; for a shutdown that must not wait for the
 * loop. */
void aspen_workq_handback_run(aspen_workq_handback_t *hb);
/* Closes the async handle; once libuv is done with it, frees the lock and
 * calls closed(arg), where the owner may free the memory `hb` lives in.
 * Jobs handed back and not yet run are never given to fn: run them first.
 * Loop thread; no thread may push any more. */
void aspen_workq_handback_close(aspen_workq_handback_t *hb,
                                void (*closed)(void *arg));

#endif /* ASPEN_PROXY_WORKQ_H */
