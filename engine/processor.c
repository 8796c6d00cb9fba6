/*
 * processor.c - a running stream processor: its thread, its sources
 * (`documents` and the built-in sample_stream_solar generator), the event
 * time it gives each document, and where the documents go when they leave
 * the pipeline (the $merge sink, the shell, sample cursors) or fail in it
 * (the dead-letter queue).
 *
 * The command thread starts a processor and waits until its thread has
 * opened its sink and DLQ (or failed to), so `start` reports connection
 * problems directly. Stopping sets a flag the thread checks between
 * documents and while idle, then joins it; the thread flushes its sink
 * before it exits.
 */
#include "engine_int.h"
#include "processor.h"
#include "sink.h"
#include "source.h"

#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SHELL_CURSOR_CAP 1024
#define SAMPLE_CURSOR_CAP 1000
#define EPHEMERAL_MAX_MS (10 * 60 * 1000)
#define IDLE_FLUSH_MS 100

int64_t
aspen_proc_now_ms(void)
{
   struct timespec ts;
   clock_gettime(CLOCK_REALTIME, &ts);
   return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

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
   }
   return "UNKNOWN";
}

void
aspen_proc_set_state(aspen_proc_t *proc, aspen_proc_state_t st,
                     const char *error)
{
   aspen_proc_state_t old = proc->state;
   proc->state = st;
   proc->state_changed_ms = aspen_proc_now_ms();
   if (error) {
      snprintf(proc->error_msg, sizeof proc->error_msg, "%s", error);
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

/* ---- runtime state -------------------------------------------------------- */

struct aspen_runtime {
   aspen_proc_t *proc;
   const aspen_sink_ops_t *sink;
   void *sink_state;
   aspen_coll_writer_t *dlq;
   bson_t source_meta;  /* {source: {type: ...}}: the default metadata */
   const aspen_source_ops_t *source;
   void *source_state;
   uint64_t rng;
   bool failed;
   int64_t max_ts;
   int64_t last_input_ms; /* wall clock of the last ingested document */
};
typedef aspen_runtime_t runtime_t;

uint64_t
aspen_rt_random(aspen_runtime_t *rt)
{
   /* xorshift64*: plenty for sample data. */
   rt->rng ^= rt->rng >> 12;
   rt->rng ^= rt->rng << 25;
   rt->rng ^= rt->rng >> 27;
   return rt->rng * 2685821657736338717ull;
}

/* Marks the processor FAILED from its own thread and stops it. */
void
aspen_rt_fail(aspen_runtime_t *rt, const char *msg)
{
   aspen_proc_t *proc = rt->proc;
   pthread_mutex_lock(&proc->mu);
   if (proc->state == ASPEN_PROC_STARTED) {
      aspen_proc_set_state(proc, ASPEN_PROC_FAILED, msg);
   }
   atomic_store(&proc->stop, true);
   pthread_cond_broadcast(&proc->cv);
   pthread_mutex_unlock(&proc->mu);
   rt->failed = true;
}

/* ---- cursors ------------------------------------------------------------ */

/* Appends a copy of `doc` to every cursor; proc->mu held. The shell cursor
 * of sp.process is the processor's sink and never drops: the thread waits
 * for the shell to read. Sample cursors drop the oldest when full. */
static void
cursors_push(aspen_proc_t *proc, const bson_t *doc)
{
   for (aspen_cursor_t *c = proc->cursors; c; c = c->next) {
      if (c->closed) {
         continue;
      }
      if (c->limit > 0 && c->delivered + (int64_t) c->len >= c->limit) {
         continue;
      }
      while (c->is_shell && c->len == c->cap && !c->closed &&
             !atomic_load(&proc->stop)) {
         pthread_cond_wait(&proc->cv, &proc->mu);
      }
      if (c->closed || (c->is_shell && atomic_load(&proc->stop))) {
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

aspen_cursor_t *
aspen_cursor_new(aspen_proc_t *proc, int64_t id, uint64_t conn_id,
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
   return c;
}

void
aspen_cursor_destroy_locked(aspen_cursor_t *c)
{
   for (size_t i = 0; i < c->len; i++) {
      bson_destroy(c->docs[(c->head + i) % c->cap]);
   }
   free(c->docs);
   free(c);
}

/* ---- documents leaving the pipeline --------------------------------------- */

static void
with_meta(const aspen_sdoc_t *d, bson_t *out)
{
   bson_init(out);
   bson_copy_to_excluding_noinit(d->doc, out, "_stream_meta", NULL);
   if (d->meta && !bson_empty(d->meta)) {
      BSON_APPEND_DOCUMENT(out, "_stream_meta", d->meta);
   }
}

static void
dlq_write_failed(void *arg, const bson_t *doc, const char *reason)
{
   runtime_t *rt = arg;
   /* A DLQ entry the DLQ itself refused: say so loudly; never silent. */
   char *json = bson_as_relaxed_extended_json(doc, NULL);
   aspen_logf(ASPEN_LOG_ERROR, "STREAMS", rt->proc->name,
              "the DLQ refused an entry (%s): %.300s", reason,
              json ? json : "?");
   bson_free(json);
}

static void
on_dlq(void *arg, const aspen_sdoc_t *in, const char *operator_name,
       const char *reason)
{
   runtime_t *rt = arg;
   aspen_proc_t *proc = rt->proc;
   bson_t entry = BSON_INITIALIZER, info;
   if (in->meta) {
      BSON_APPEND_DOCUMENT(&entry, "_stream_meta", in->meta);
   }
   BSON_APPEND_DOCUMENT_BEGIN(&entry, "errInfo", &info);
   BSON_APPEND_UTF8(&info, "reason", reason);
   bson_append_document_end(&entry, &info);
   BSON_APPEND_UTF8(&entry, "operatorName", operator_name);
   if (in->doc) {
      if (in->doc->len > 8 * 1024 * 1024) {
         BSON_APPEND_UTF8(&entry, "doc", "full document too large to emit");
      } else {
         BSON_APPEND_DOCUMENT(&entry, "doc", in->doc);
      }
   }
   if (proc->pl && proc->pl->dlq_extra) {
      bson_concat(&entry, proc->pl->dlq_extra);
   }
   BSON_APPEND_UTF8(&entry, "processorName", proc->name);
   BSON_APPEND_DATE_TIME(&entry, "dlqTime", aspen_proc_now_ms());
   atomic_fetch_add(&proc->stats.dlq_count, 1);
   atomic_fetch_add(&proc->stats.dlq_size, entry.len);

   bson_t wrapped = BSON_INITIALIZER;
   BSON_APPEND_DOCUMENT(&wrapped, "_dlqMessage", &entry);
   pthread_mutex_lock(&proc->mu);
   cursors_push(proc, &wrapped);
   pthread_mutex_unlock(&proc->mu);
   bson_destroy(&wrapped);

   if (rt->dlq) {
      aspen_error_t err;
      if (!aspen_coll_writer_add(rt->dlq, &entry, dlq_write_failed, rt,
                                 &err)) {
         char msg[ASPEN_ERROR_MSG_MAX + 64];
         snprintf(msg, sizeof msg, "DLQ write failed: %s", err.message);
         aspen_rt_fail(rt, msg);
      }
   }
   bson_destroy(&entry);
}

void
aspen_rt_sink_failed(aspen_runtime_t *rt, const bson_t *doc,
                     const char *reason)
{
   bson_t meta;
   bson_iter_t it;
   aspen_sdoc_t d = {.doc = doc, .meta = NULL};
   if (bson_iter_init_find(&it, doc, "_stream_meta") &&
       BSON_ITER_HOLDS_DOCUMENT(&it)) {
      uint32_t len;
      const uint8_t *data;
      bson_iter_document(&it, &len, &data);
      if (bson_init_static(&meta, data, len)) {
         d.meta = &meta;
      }
   }
   on_dlq(rt, &d, rt->sink ? rt->sink->operator_name : "SinkOperator",
          reason);
}

static void
on_output(void *arg, const aspen_sdoc_t *out)
{
   runtime_t *rt = arg;
   aspen_proc_t *proc = rt->proc;
   bson_t doc;
   with_meta(out, &doc);
   atomic_fetch_add(&proc->stats.output_count, 1);
   atomic_fetch_add(&proc->stats.output_size, doc.len);
   pthread_mutex_lock(&proc->mu);
   cursors_push(proc, &doc);
   pthread_mutex_unlock(&proc->mu);
   if (rt->sink) {
      aspen_error_t err;
      if (!rt->sink->write(rt, rt->sink_state, &doc, &err)) {
         aspen_rt_fail(rt, err.message);
      }
   }
   bson_destroy(&doc);
}

/* ---- ingestion -------------------------------------------------------------- */

void
aspen_rt_ingest(aspen_runtime_t *rt, const bson_t *raw, const bson_t *meta,
                int64_t source_ts_ms)
{
   aspen_proc_t *proc = rt->proc;
   aspen_pipeline_t *pl = proc->pl;
   int64_t now = aspen_proc_now_ms();
   if (pl->virtual_clock) {
      /* Time comes from the input: "now" is the latest event time seen. */
      now = source_ts_ms != INT64_MIN
               ? source_ts_ms
               : (rt->max_ts == INT64_MIN ? 0 : rt->max_ts);
   }
   rt->last_input_ms = aspen_proc_now_ms();
   int64_t ts = source_ts_ms == INT64_MIN ? now : source_ts_ms;
   if (!meta) {
      meta = &rt->source_meta;
   }
   atomic_fetch_add(&proc->stats.input_count, 1);
   atomic_fetch_add(&proc->stats.input_size, raw->len);
   pl->now_ms = now;
   if (pl->source.time_field) {
      aspen_expr_ctx_t ctx = {.root = raw, .meta = meta, .now_ms = now};
      aspen_value_t v;
      aspen_error_t err;
      aspen_sdoc_t as_is = {.doc = raw, .meta = meta, .ts_ms = now};
      if (!aspen_expr_eval(pl->source.time_field, &ctx, &v, &err)) {
         char reason[ASPEN_ERROR_MSG_MAX + 64];
         snprintf(reason, sizeof reason,
                  "Failed to extract timestamp from document: %s",
                  err.message);
         on_dlq(rt, &as_is, rt->source->operator_name, reason);
         return;
      }
      if (v.v.value_type != BSON_TYPE_DATE_TIME) {
         char *json = aspen_value_to_json(&v);
         char reason[ASPEN_ERROR_MSG_MAX];
         snprintf(reason, sizeof reason,
                  "Failed to extract timestamp from document, extracted "
                  "timestampVal: %s",
                  json ? json : "missing");
         bson_free(json);
         aspen_value_destroy(&v);
         on_dlq(rt, &as_is, rt->source->operator_name, reason);
         return;
      }
      ts = v.v.value.v_datetime;
      aspen_value_destroy(&v);
   }
   bson_t doc = BSON_INITIALIZER;
   bson_copy_to_excluding_noinit(raw, &doc, pl->source.ts_field, NULL);
   BSON_APPEND_DATE_TIME(&doc, pl->source.ts_field, ts);
   if (ts > rt->max_ts) {
      rt->max_ts = ts;
      atomic_store(&proc->stats.watermark_ms, ts - 1);
   }
   aspen_sdoc_t sdoc = {.doc = &doc, .meta = meta, .ts_ms = ts};
   aspen_pipeline_push(pl, &sdoc);
   bson_destroy(&doc);
}

/* Waits up to `ms` or until stopped; true when stopped. */
static bool
wait_stop(aspen_proc_t *proc, int64_t ms)
{
   struct timespec ts;
   clock_gettime(CLOCK_REALTIME, &ts);
   ts.tv_sec += ms / 1000;
   ts.tv_nsec += (ms % 1000) * 1000000;
   if (ts.tv_nsec >= 1000000000) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000;
   }
   pthread_mutex_lock(&proc->mu);
   while (!atomic_load(&proc->stop)) {
      if (pthread_cond_timedwait(&proc->cv, &proc->mu, &ts) != 0) {
         break;
      }
   }
   bool stopped = atomic_load(&proc->stop);
   pthread_mutex_unlock(&proc->mu);
   return stopped;
}

static bool
flush_sinks(runtime_t *rt)
{
   aspen_error_t err;
   if (rt->sink && !rt->sink->flush(rt, rt->sink_state, &err)) {
      aspen_rt_fail(rt, err.message);
      return false;
   }
   if (rt->dlq && !aspen_coll_writer_flush(rt->dlq, dlq_write_failed, rt,
                                           &err)) {
      char msg[ASPEN_ERROR_MSG_MAX + 64];
      snprintf(msg, sizeof msg, "DLQ write failed: %s", err.message);
      aspen_rt_fail(rt, msg);
      return false;
   }
   return true;
}

static bool
expired(runtime_t *rt)
{
   aspen_proc_t *proc = rt->proc;
   if (proc->ephemeral &&
       aspen_proc_now_ms() - proc->started_ms > EPHEMERAL_MAX_MS) {
      aspen_logf(ASPEN_LOG_INFO, "STREAMS", proc->name,
                 "ephemeral processor reached its 10 minute limit");
      atomic_store(&proc->stop, true);
      return true;
   }
   return false;
}

bool
aspen_rt_stopping(aspen_runtime_t *rt)
{
   return atomic_load(&rt->proc->stop) || rt->failed;
}

bool
aspen_rt_wait(aspen_runtime_t *rt, int64_t ms)
{
   aspen_pipeline_t *pl = rt->proc->pl;
   if (pl->window) {
      int64_t wall = aspen_proc_now_ms();
      if (pl->virtual_clock) {
         /* The input is over for now: on the virtual clock, time jumps far
          * ahead, so idle timeouts and processing-time windows fire at once
          * and every run gives the same output. */
         int64_t far = INT64_MAX / 4;
         pl->now_ms = far;
         aspen_pipeline_tick(pl, far, far);
      } else {
         pl->now_ms = wall;
         aspen_pipeline_tick(pl, wall, wall - rt->last_input_ms);
      }
   }
   flush_sinks(rt);
   if (aspen_rt_stopping(rt) || expired(rt)) {
      return true;
   }
   return wait_stop(rt->proc, ms) || rt->failed;
}

void
aspen_rt_dead_letter(aspen_runtime_t *rt, const bson_t *doc,
                     const bson_t *meta, const char *reason)
{
   aspen_sdoc_t d = {.doc = doc, .meta = meta ? meta : &rt->source_meta};
   on_dlq(rt, &d, rt->source->operator_name, reason);
}

const aspen_source_spec_t *
aspen_rt_source_spec(const aspen_runtime_t *rt)
{
   return &rt->proc->pl->source;
}

bool
aspen_rt_is_ephemeral(const aspen_runtime_t *rt)
{
   return rt->proc->ephemeral;
}

const char *
aspen_rt_processor_name(const aspen_runtime_t *rt)
{
   return rt->proc->name;
}

const aspen_conns_t *
aspen_rt_conns(const aspen_runtime_t *rt)
{
   return aspen_engine_conns(rt->proc->eng);
}

const char *
aspen_rt_processor_id(const aspen_runtime_t *rt)
{
   return rt->proc->id;
}

bool
aspen_rt_flush(aspen_runtime_t *rt)
{
   return !rt->failed && flush_sinks(rt);
}

/* Opens sink and DLQ; on failure reports the start as failed. */
static bool
open_outputs(runtime_t *rt, aspen_error_t *err)
{
   aspen_proc_t *proc = rt->proc;
   const aspen_conns_t *conns = aspen_engine_conns(proc->eng);
   bson_iter_t it;
   if (bson_iter_init_find(&it, &proc->options, "dlq") &&
       BSON_ITER_HOLDS_DOCUMENT(&it)) {
      bson_iter_t di;
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
      if (cn && db && coll) {
         const aspen_conn_t *conn = aspen_conns_find(conns, cn);
         if (!conn) {
            aspen_error_set(err, ASPEN_ERR_StreamProcessorInvalidOptions,
                            "Unknown connection name %s (options.dlq)", cn);
            return false;
         }
         rt->dlq = aspen_coll_writer_new_insert(conn, db, coll, err);
         if (!rt->dlq) {
            char msg[ASPEN_ERROR_MSG_MAX];
            snprintf(msg, sizeof msg, "cannot open the DLQ: %s", err->message);
            aspen_error_set(err, err->code, "%s", msg);
            return false;
         }
      }
   }
   rt->sink = aspen_sink_ops_for(proc->pl->sink_kind);
   if (rt->sink &&
       !rt->sink->open(rt, &proc->pl->sink_spec, &rt->sink_state, err)) {
      rt->sink = NULL;
      return false;
   }
   if (!rt->source->open(rt, &rt->source_state, err)) {
      return false;
   }
   return true;
}

static void *
proc_main(void *arg)
{
   aspen_proc_t *proc = arg;
   runtime_t rt;
   memset(&rt, 0, sizeof rt);
   rt.proc = proc;
   rt.max_ts = INT64_MIN;
   rt.last_input_ms = aspen_proc_now_ms();
   if (RAND_bytes((unsigned char *) &rt.rng, sizeof rt.rng) != 1 || !rt.rng) {
      rt.rng = (uint64_t) aspen_proc_now_ms() | 1;
   }
   bson_init(&rt.source_meta);
   bson_t src;
   BSON_APPEND_DOCUMENT_BEGIN(&rt.source_meta, "source", &src);
   rt.source = aspen_source_ops_for(proc->pl->source.kind);
   BSON_APPEND_UTF8(&src, "type", rt.source->type);
   bson_append_document_end(&rt.source_meta, &src);
   proc->pl->dlq = on_dlq;
   proc->pl->output = on_output;
   proc->pl->hook_arg = &rt;

   aspen_error_t err;
   bool opened = open_outputs(&rt, &err);
   pthread_mutex_lock(&proc->mu);
   if (!opened) {
      snprintf(proc->error_msg, sizeof proc->error_msg, "%s", err.message);
      proc->start_result = -1;
      proc->start_code = err.code;
   } else {
      proc->start_result = 1;
   }
   pthread_cond_broadcast(&proc->cv);
   pthread_mutex_unlock(&proc->mu);

   if (opened) {
      rt.source->run(&rt, rt.source_state);
      if (!rt.failed) {
         flush_sinks(&rt);
      }
   }
   if (rt.source_state) {
      rt.source->close(rt.source_state);
   }
   if (rt.sink) {
      rt.sink->close(rt.sink_state);
   }
   aspen_coll_writer_destroy(rt.dlq);
   bson_destroy(&rt.source_meta);
   /* Wake a getMore or a shell push waiting on this processor. */
   pthread_mutex_lock(&proc->mu);
   proc->thread_done = true;
   pthread_cond_broadcast(&proc->cv);
   pthread_mutex_unlock(&proc->mu);
   return NULL;
}

bool
aspen_proc_run(aspen_proc_t *proc, aspen_error_t *err)
{
   const aspen_conns_t *conns = aspen_engine_conns(proc->eng);
   bool has_dlq = bson_has_field(&proc->options, "dlq");
   proc->pl = aspen_pipeline_parse(&proc->pipeline, conns, proc->ephemeral,
                                   has_dlq, err);
   if (!proc->pl) {
      return false;
   }
   bson_iter_t vit;
   proc->pl->virtual_clock = bson_iter_init_find(&vit, &proc->options,
                                                 "virtualClock") &&
                             bson_iter_as_bool(&vit);
   atomic_store(&proc->stop, false);
   proc->start_result = 0;
   proc->thread_done = false;
   proc->started_ms = aspen_proc_now_ms();
   atomic_store(&proc->stats.watermark_ms, INT64_MIN);
   if (pthread_create(&proc->thread, NULL, proc_main, proc) != 0) {
      aspen_error_set(err, ASPEN_ERR_InternalError,
                      "cannot start a thread for the processor");
      aspen_pipeline_destroy(proc->pl);
      proc->pl = NULL;
      return false;
   }
   proc->thread_running = true;
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
