/*
 * cursor.c - the cursors on a processor's output: the shell cursor of
 * sp.process (the processor's only sink: lossless, the thread waits for
 * the shell to read) and the sample cursors of sample() (each keeps the
 * newest documents). The processor's thread pushes (rt.c, dlq.c), the
 * command thread fetches; both under proc->mu.
 */
#include "runtime/runtime_int.h"

#include <stdlib.h>

#define SHELL_CURSOR_CAP 1024
#define SAMPLE_CURSOR_CAP 1000
/* A getMore's default batch: the shell reads on, sample() shows a few. */
#define SHELL_BATCH 1000
#define SAMPLE_BATCH 5
/* A getMore's reply stays well under the 16 MB document limit. */
#define FETCH_MAX_BYTES (8u * 1024u * 1024u)

/* Appends a copy of `doc` to every cursor; proc->mu held. The shell cursor
 * of sp.process is the processor's sink and never drops: the thread waits
 * for the shell to read. Sample cursors drop the oldest when full. */
void
aspen__cursor_push_all(aspen_proc_t *proc, const bson_t *doc)
{
   for (aspen_cursor_t *c = proc->cursors; c; c = c->next) {
      if (c->limit > 0 && c->delivered + (int64_t) c->len >= c->limit) {
         continue;
      }
      while (c->is_shell && c->len == c->cap && !atomic_load(&proc->stop)) {
         pthread_cond_wait(&proc->cv, &proc->mu);
      }
      if (c->is_shell && atomic_load(&proc->stop)) {
         continue;
      }
      if (c->len == c->cap) {
         bson_destroy(c->docs[c->head]);
         c->head = (c->head + 1) % c->cap;
         c->len--;
      }
      c->docs[(c->head + c->len) % c->cap] = bson_copy(doc);
      c->len++;
   }
}

void
aspen_cursor_open(aspen_proc_t *proc, int64_t id, uint64_t conn_id,
                  bool is_shell, int64_t limit)
{
   aspen_cursor_t *c = aspen_xcalloc(1, sizeof *c);
   c->id = id;
   c->conn_id = conn_id;
   c->proc = proc;
   c->is_shell = is_shell;
   c->limit = limit;
   c->cap = is_shell ? SHELL_CURSOR_CAP : SAMPLE_CURSOR_CAP;
   c->docs = aspen_xcalloc(c->cap, sizeof *c->docs);
   pthread_mutex_lock(&proc->mu);
   c->next = proc->cursors;
   proc->cursors = c;
   pthread_mutex_unlock(&proc->mu);
}

static void
cursor_destroy(aspen_cursor_t *c)
{
   for (size_t i = 0; i < c->len; i++) {
      bson_destroy(c->docs[(c->head + i) % c->cap]);
   }
   free(c->docs);
   free(c);
}

bool
aspen_cursor_fetch(aspen_proc_t *proc, int64_t id, int64_t batch,
                   bson_t *messages, bool *exhausted)
{
   *exhausted = false;
   pthread_mutex_lock(&proc->mu);
   aspen_cursor_t *c = proc->cursors;
   while (c && c->id != id) {
      c = c->next;
   }
   if (!c) {
      pthread_mutex_unlock(&proc->mu);
      return false;
   }
   if (batch <= 0) {
      batch = c->is_shell ? SHELL_BATCH : SAMPLE_BATCH;
   }
   uint32_t n = 0;
   size_t bytes = 0;
   while (c->len > 0 && (int64_t) n < batch && bytes < FETCH_MAX_BYTES) {
      bson_t *d = c->docs[c->head];
      char buf[16];
      const char *key;
      bson_uint32_to_string(n++, &key, buf, sizeof buf);
      BSON_APPEND_DOCUMENT(messages, key, d);
      bytes += d->len;
      bson_destroy(d);
      c->head = (c->head + 1) % c->cap;
      c->len--;
      c->delivered++;
   }
   bool running = aspen_proc_is_running(proc) && !proc->thread_done;
   *exhausted = (c->limit > 0 && c->delivered >= c->limit) ||
                (!running && c->len == 0);
   pthread_cond_broadcast(&proc->cv); /* room for a waiting shell push */
   pthread_mutex_unlock(&proc->mu);
   return true;
}

void
aspen_cursor_close_conn(aspen_proc_t *proc, uint64_t conn_id)
{
   pthread_mutex_lock(&proc->mu);
   aspen_cursor_t **cp = &proc->cursors;
   while (*cp) {
      if ((*cp)->conn_id == conn_id && !(*cp)->is_shell) {
         aspen_cursor_t *c = *cp;
         *cp = c->next;
         cursor_destroy(c);
      } else {
         cp = &(*cp)->next;
      }
   }
   pthread_cond_broadcast(&proc->cv);
   pthread_mutex_unlock(&proc->mu);
}

void
aspen__cursor_free_all(aspen_proc_t *proc)
{
   aspen_cursor_t *c = proc->cursors;
   while (c) {
      aspen_cursor_t *next = c->next;
      cursor_destroy(c);
      c = next;
   }
   proc->cursors = NULL;
}
