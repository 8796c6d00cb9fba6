/*
 * dlq.c - a processor's dead-letter queue: the entry a failed document
 * becomes ({_stream_meta, errInfo: {reason}, operatorName, doc,
 * processorName, dlqTime}, ASP's shape), counted in the stats, shown to
 * sample cursors as {_dlqMessage: ...}, and written through the DLQ
 * writer the processor was handed (aspen_proc_env_t.dlq) to the
 * collection options.dlq names. Processor thread, and its workers
 * (workers.c), which share the writer behind rt->dlq_mu.
 */
#include "runtime/runtime_int.h"

#include <string.h>

static void
dlq_write_failed(void *arg, const bson_t *doc, const char *reason)
{
   aspen_runtime_t *rt = arg;
   /* A DLQ entry the DLQ itself refused: say so loudly; never silent. */
   char *json = bson_as_relaxed_extended_json(doc, NULL);
   aspen_logf(ASPEN_LOG_ERROR, "STREAMS", rt->proc->name,
              "the DLQ refused an entry (%s): %.300s", reason,
              json ? json : "?");
   bson_free(json);
}

void
aspen__dlq_send(void *arg, const aspen_sdoc_t *in, const char *operator_name,
                const char *reason)
{
   aspen_runtime_t *rt = arg;
   aspen_proc_t *proc = rt->proc;
   if (rt->replaying || aspen_expr_interrupted()) {
      /* Replaying inputs from before the checkpoint: their DLQ entries were
       * written (and flushed) before it was taken. Or the processor is
       * stopping and an evaluation was cut short: that document is not
       * bad, it is read again from the last checkpoint. */
      return;
   }
   bson_t entry = BSON_INITIALIZER, info;
   if (in->meta) {
      BSON_APPEND_DOCUMENT(&entry, "_stream_meta", in->meta);
   }
   /* A reason cut to its buffer may end inside a character. */
   char why[2048];
   snprintf(why, sizeof why, "%s", reason);
   aspen_utf8_scrub(why);
   BSON_APPEND_DOCUMENT_BEGIN(&entry, "errInfo", &info);
   BSON_APPEND_UTF8(&info, "reason", why);
   bson_append_document_end(&entry, &info);
   BSON_APPEND_UTF8(&entry, "operatorName", operator_name);
   if (in->doc) {
      if (in->doc->len > 8 * 1024 * 1024) {
         BSON_APPEND_UTF8(&entry, "doc", "full document too large to emit");
      } else {
         BSON_APPEND_DOCUMENT(&entry, "doc", in->doc);
      }
   }
   if (rt->pl && rt->pl->dlq_extra) {
      bson_concat(&entry, rt->pl->dlq_extra);
   }
   BSON_APPEND_UTF8(&entry, "processorName", proc->name);
   BSON_APPEND_DATE_TIME(&entry, "dlqTime", aspen_clock_now_ms());
   atomic_fetch_add(&proc->stats.dlq_count, 1);
   atomic_fetch_add(&proc->stats.dlq_size, entry.len);

   bson_t wrapped = BSON_INITIALIZER;
   BSON_APPEND_DOCUMENT(&wrapped, "_dlqMessage", &entry);
   pthread_mutex_lock(&proc->mu);
   aspen__cursor_push_all(proc, &wrapped);
   pthread_mutex_unlock(&proc->mu);
   bson_destroy(&wrapped);

   if (rt->dlq) {
      aspen_error_t err;
      if (rt->dlq_mu) {
         pthread_mutex_lock(rt->dlq_mu);
      }
      bool added = proc->env->dlq->add(rt->dlq, &entry, dlq_write_failed, rt,
                                       &err);
      if (rt->dlq_mu) {
         pthread_mutex_unlock(rt->dlq_mu);
      }
      if (!added) {
         char msg[ASPEN_ERROR_MSG_MAX + 64];
         snprintf(msg, sizeof msg, "DLQ write failed: %s", err.message);
         aspen_rt_fail(rt, msg);
      }
   }
   bson_destroy(&entry);
}


bool
aspen__dlq_open(aspen_runtime_t *rt, aspen_error_t *err)
{
   aspen_proc_t *proc = rt->proc;
   bson_iter_t it, di;
   if (!bson_iter_init_find(&it, &proc->options, "dlq") ||
       !BSON_ITER_HOLDS_DOCUMENT(&it)) {
      return true;
   }
   const char *cn = NULL, *db = NULL, *coll = NULL;
   bson_iter_recurse(&it, &di);
   while (bson_iter_next(&di)) {
      const char *k = bson_iter_key(&di);
      const char *v = BSON_ITER_HOLDS_UTF8(&di) ? bson_iter_utf8(&di, NULL)
                                                : NULL;
      if (strcmp(k, "connectionName") == 0) {
         cn = v;
      } else if (strcmp(k, "db") == 0) {
         db = v;
      } else if (strcmp(k, "coll") == 0) {
         coll = v;
      }
   }
   if (!cn || !db || !coll) {
      return true; /* {}: no DLQ */
   }
   rt->dlq = proc->env->dlq->open(proc->env->conns, cn, db, coll, err);
   return rt->dlq != NULL;
}

bool
aspen__dlq_flush(aspen_runtime_t *rt)
{
   aspen_error_t err;
   if (rt->main) {
      return true; /* a worker's: the processor thread flushes the DLQ */
   }
   if (rt->dlq_mu) {
      pthread_mutex_lock(rt->dlq_mu);
   }
   bool ok = !rt->dlq || rt->proc->env->dlq->flush(rt->dlq, dlq_write_failed,
                                                   rt, &err);
   if (rt->dlq_mu) {
      pthread_mutex_unlock(rt->dlq_mu);
   }
   if (!ok) {
      char msg[ASPEN_ERROR_MSG_MAX + 64];
      snprintf(msg, sizeof msg, "DLQ write failed: %s", err.message);
      aspen_rt_fail(rt, msg);
      return false;
   }
   return true;
}

void
aspen__dlq_close(aspen_runtime_t *rt)
{
   if (rt->dlq && !rt->main) {
      rt->proc->env->dlq->close(rt->dlq);
      rt->dlq = NULL;
   }
}
