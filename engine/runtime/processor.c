/*
 * processor.c - a running stream processor: its thread, its sources
 * (`documents` and the built-in sample_stream_solar generator), the event
 * time it gives each document, and where the documents go when they leave
 * the pipeline (the $merge sink, the shell, sample cursors) or fail in it
 * (the dead-letter queue).
 *
 * The command thread launches a processor (aspen_proc_launch) and does not
 * wait: the processor's thread opens its sink, DLQ and source, which can
 * take seconds against an unreachable peer, then reports the result
 * (start_result) and tells the engine (aspen__engine_start_reported), which
 * has the command thread finish the start (aspen_proc_finish_start), so
 * `start` still reports connection problems directly, without holding up
 * other commands meanwhile. Stopping sets a flag the thread checks between
 * documents, while idle and while waiting for a Kafka cluster to answer,
 * then joins it; the thread flushes its sink before it exits.
 *
 * Checkpoints (checkpoint.h for the file): sources say where each input
 * comes from (aspen_rt_mark: a partition and offset, or the resume token
 * before it). A checkpoint stores, per partition, the *replay position* --
 * the offset of the earliest input that still feeds an open window (the
 * next unread one when no window is open) -- plus the window watermark and
 * the counters. Window state itself is not serialised: a restore re-reads
 * the source from the replay positions and so rebuilds the open windows
 * from the same inputs, which then close with the same results as an
 * uninterrupted run. During that replay the DLQ is not written again (those
 * entries were written before the checkpoint), and the restored watermark
 * makes replayed inputs of windows that had already closed late instead of
 * reopening them. A checkpoint is written only after the sink and the DLQ
 * flushed successfully (aspen_rt_wait, aspen_rt_flush), at start when
 * nothing was restored, every checkpoint interval when the position moved,
 * and on stop and graceful shutdown; a source commits positions to its
 * broker only after that (Kafka). The guarantee is at-least-once: output
 * produced after the last checkpoint is produced again after a crash, which
 * $merge on `on` makes idempotent.
 *
 * Exactly-once (option exactlyOnce, Kafka -> $emit; kafka_txn.c): the sink
 * is transactional and each checkpoint, once written, is committed by the
 * sink together with its positions (sink->commit); the source commits
 * nothing itself. Each checkpoint carries an id that the commit stores with
 * the offsets, and a restore takes the checkpoint whose id the broker holds
 * (sink->committed), which is the previous one when aspen died between
 * writing the checkpoint and committing its transaction. So the sink opens
 * before the checkpoint is restored, and the source after.
 */
#include "connectors/authz.h"
#include "connectors/coll_writer.h"
#include "connectors/connections.h"
#include "connectors/kafka_int.h"
#include "runtime/checkpoint.h"
#include "runtime/processor.h"
#include "runtime/sink.h"

#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SHELL_CURSOR_CAP 1024
#define SAMPLE_CURSOR_CAP 1000
#define EPHEMERAL_MAX_MS (10 * 60 * 1000)
#define IDLE_FLUSH_MS 100

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
   case ASPEN_PROC_PROVISIONING:
      return "PROVISIONING";
   }
   return "UNKNOWN";
}

void
aspen_proc_set_state(aspen_proc_t *proc, aspen_proc_state_t st,
                     const char *error)
{
   aspen_proc_state_t old = proc->state;
   proc->state = st;
   proc->state_changed_ms = aspen_clock_now_ms();
   if (error) {
      snprintf(proc->error_msg, sizeof proc->error_msg, "%s", error);
      aspen_utf8_scrub(proc->error_msg); /* it may have been cut mid-character */
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

   /* Positions (aspen_rt_mark) and checkpoints. */
   uint64_t seq;           /* inputs marked so far */
   aspen_rt_pos_t *parts;  /* per partition: replay (at last ckpt), high */
   size_t n_parts, cap_parts;
   struct pos_entry {
      uint64_t seq;
      int64_t part, offset;
      bson_t *token_before; /* NULL for offset sources */
   } *log;                 /* inputs that may still feed an open window */
   size_t log_head, log_len, log_cap;
   bson_t token_high;      /* resume token after the last input */
   bool has_token;
   bool restored;
   bson_t restored_pos;    /* position from the checkpoint restored */
   uint64_t replay_count;  /* inputs to replay after the restore */
   aspen_rt_pos_t *restored_high; /* per partition: replays end there */
   size_t n_restored_high;
   bool replaying;         /* the current input is one of them */
   char ckpt_dir[4096];
   uint64_t ckpt_seq;      /* seq at the last checkpoint */
   bool ckpt_token_moved;  /* token_high moved since the last checkpoint */
   uint64_t ckpt_min_seq;  /* the open windows' min seq then */
   int64_t ckpt_mono_ms;   /* when the last one was written */
   uint64_t ckpt_gen;      /* checkpoints written by this run */
   /* Exactly-once: output went to the sink since the last commit; the
    * run's random prefix of checkpoint ids. */
   bool exactly_once;
   bool out_since_ckpt;
   uint64_t ckpt_run_id;
};
typedef aspen_runtime_t runtime_t;

static void checkpoint_take(runtime_t *rt, bool force);

uint64_t
aspen_rt_random(aspen_runtime_t *rt)
{
   /* xorshift64*: plenty for sample data. */
   rt->rng ^= rt->rng >> 12;
   rt->rng ^= rt->rng << 25;
   rt->rng ^= rt->rng >> 27;
   return rt->rng * 2685821657736338717ull;
}

/* Marks the processor FAILED from its own thread and stops it. While the
 * command thread has not yet taken the start's result (PROVISIONING, which
 * only the command thread leaves), the failure is noted for it instead. */
void
aspen_rt_fail(aspen_runtime_t *rt, const char *msg)
{
   aspen_proc_t *proc = rt->proc;
   pthread_mutex_lock(&proc->mu);
   if (proc->state == ASPEN_PROC_STARTED) {
      aspen_proc_set_state(proc, ASPEN_PROC_FAILED, msg);
   } else if (proc->state == ASPEN_PROC_PROVISIONING && !proc->run_failed) {
      proc->run_failed = true;
      snprintf(proc->error_msg, sizeof proc->error_msg, "%s", msg);
      aspen_utf8_scrub(proc->error_msg);
   }
   atomic_store(&proc->stop, true);
   pthread_cond_broadcast(&proc->cv);
   pthread_mutex_unlock(&proc->mu);
   rt->failed = true;
}

/* Fails the processor when its pipeline noted a fatal error (its state
 * reached the limit: 418, "Worker out of memory"). True when it did. */
static bool
fail_if_fatal(aspen_runtime_t *rt)
{
   const aspen_pipeline_t *pl = rt->proc->pl;
   if (!pl->fatal_code) {
      return false;
   }
   if (!rt->failed) {
      aspen_logf(ASPEN_LOG_ERROR, "STREAMS", rt->proc->name, "%s (code %d)",
                 pl->fatal, (int) pl->fatal_code);
      aspen_rt_fail(rt, pl->fatal);
   }
   return true;
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
   if (proc->pl && proc->pl->dlq_extra) {
      bson_concat(&entry, proc->pl->dlq_extra);
   }
   BSON_APPEND_UTF8(&entry, "processorName", proc->name);
   BSON_APPEND_DATE_TIME(&entry, "dlqTime", aspen_clock_now_ms());
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

/* *c -= v, stopping at 0. */
static void
counter_sub(atomic_uint_fast64_t *c, uint_fast64_t v)
{
   uint_fast64_t n = atomic_load(c);
   while (n > 0 && !atomic_compare_exchange_weak(c, &n, n > v ? n - v : 0)) {
   }
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
   /* on_output counted it; ASP's output counters count only documents
    * that made it through the whole pipeline, the sink included. */
   counter_sub(&rt->proc->stats.output_count, 1);
   counter_sub(&rt->proc->stats.output_size, doc->len);
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
      rt->out_since_ckpt = true;
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
   int64_t now = aspen_clock_now_ms();
   if (pl->virtual_clock) {
      /* Time comes from the input: "now" is the latest event time seen. */
      now = source_ts_ms != INT64_MIN
               ? source_ts_ms
               : (rt->max_ts == INT64_MIN ? 0 : rt->max_ts);
   }
   rt->last_input_ms = aspen_clock_now_ms();
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
   if (pl->virtual_clock) {
      /* This document's own time counts: "now" is the latest event time. */
      pl->now_ms = rt->max_ts;
   }
   aspen_sdoc_t sdoc = {.doc = &doc, .meta = meta, .ts_ms = ts};
   aspen_pipeline_push(pl, &sdoc);
   bson_destroy(&doc);
   fail_if_fatal(rt);
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
   aspen_pipeline_flush(rt->proc->pl);
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
       aspen_clock_now_ms() - proc->started_ms > EPHEMERAL_MAX_MS) {
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
      int64_t wall = aspen_clock_now_ms();
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
   if (fail_if_fatal(rt)) {
      return true;
   }
   if (flush_sinks(rt)) {
      checkpoint_take(rt, false);
   }
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
aspen_rt_exactly_once(const aspen_runtime_t *rt)
{
   return rt->exactly_once;
}

int64_t
aspen_rt_checkpoint_interval_ms(const aspen_runtime_t *rt)
{
   return aspen__engine_checkpoint_interval_ms(rt->proc->eng);
}

bool
aspen_rt_flush(aspen_runtime_t *rt)
{
   if (rt->failed || !flush_sinks(rt)) {
      return false;
   }
   checkpoint_take(rt, true);
   return true;
}

/* ---- positions and checkpoints -------------------------------------------- */

static aspen_rt_pos_t *
part_get(runtime_t *rt, int64_t part, int64_t start)
{
   for (size_t i = 0; i < rt->n_parts; i++) {
      if (rt->parts[i].part == part) {
         return &rt->parts[i];
      }
   }
   if (rt->n_parts == rt->cap_parts) {
      rt->cap_parts = rt->cap_parts ? rt->cap_parts * 2 : 8;
      rt->parts = aspen_xrealloc(rt->parts, rt->cap_parts * sizeof *rt->parts);
   }
   aspen_rt_pos_t *p = &rt->parts[rt->n_parts++];
   *p = (aspen_rt_pos_t){.part = part, .replay = start, .high = start};
   return p;
}

static void
log_pop(runtime_t *rt)
{
   struct pos_entry *e = &rt->log[rt->log_head];
   if (e->token_before) {
      bson_destroy(e->token_before);
   }
   rt->log_head = (rt->log_head + 1) % rt->log_cap;
   rt->log_len--;
}

static void
log_push(runtime_t *rt, const struct pos_entry *e)
{
   if (rt->log_len == rt->log_cap) {
      size_t cap = rt->log_cap ? rt->log_cap * 2 : 1024;
      struct pos_entry *n = aspen_xmalloc(cap * sizeof *n);
      for (size_t i = 0; i < rt->log_len; i++) {
         n[i] = rt->log[(rt->log_head + i) % rt->log_cap];
      }
      free(rt->log);
      rt->log = n;
      rt->log_cap = cap;
      rt->log_head = 0;
   }
   rt->log[(rt->log_head + rt->log_len) % rt->log_cap] = *e;
   rt->log_len++;
}

void
aspen_rt_mark(aspen_runtime_t *rt, int64_t part, int64_t offset,
              const bson_t *token_before)
{
   aspen_pipeline_t *pl = rt->proc->pl;
   rt->seq++;
   pl->cur_seq = rt->seq;
   /* A replay: offsets below the checkpoint's high mark of the partition
    * (partitions interleave differently the second time); for token
    * sources, the first replayCount inputs. */
   rt->replaying = rt->seq <= rt->replay_count;
   if (offset >= 0) {
      rt->replaying = false;
      for (size_t i = 0; i < rt->n_restored_high; i++) {
         if (rt->restored_high[i].part == part) {
            rt->replaying = offset < rt->restored_high[i].high;
            break;
         }
      }
   }
   if (offset >= 0) {
      part_get(rt, part, offset)->high = offset + 1;
   }
   if (pl->window && !rt->proc->ephemeral) {
      /* Kept until no open window started at or before this input. */
      struct pos_entry e = {.seq = rt->seq, .part = part, .offset = offset,
                            .token_before = token_before
                                               ? bson_copy(token_before)
                                               : NULL};
      log_push(rt, &e);
   }
}

void
aspen_rt_partition_assigned(aspen_runtime_t *rt, int64_t partition)
{
   aspen_pipeline_partition_assigned(rt->proc->pl, partition);
}

void
aspen_rt_mark_token(aspen_runtime_t *rt, const bson_t *token)
{
   bson_reinit(&rt->token_high);
   bson_concat(&rt->token_high, token);
   rt->has_token = true;
   rt->ckpt_token_moved = true;
}

const bson_t *
aspen_rt_restored_position(const aspen_runtime_t *rt)
{
   return rt->restored ? &rt->restored_pos : NULL;
}

bool
aspen_rt_restored_offset(const aspen_runtime_t *rt, int64_t part,
                         int64_t *offset)
{
   bson_iter_t it, ai;
   *offset = -1;
   if (!rt->restored || !bson_iter_init_find(&it, &rt->restored_pos, "parts") ||
       !BSON_ITER_HOLDS_ARRAY(&it) || !bson_iter_recurse(&it, &ai)) {
      return false;
   }
   while (bson_iter_next(&ai)) {
      uint32_t len;
      const uint8_t *data;
      bson_t p;
      if (!BSON_ITER_HOLDS_DOCUMENT(&ai)) {
         continue;
      }
      bson_iter_document(&ai, &len, &data);
      if (bson_init_static(&p, data, len) &&
          aspen_bson_int64(&p, "p", -1) == part) {
         *offset = aspen_bson_int64(&p, "replay", -1);
         return *offset >= 0;
      }
   }
   return false;
}

const aspen_rt_pos_t *
aspen_rt_checkpointed(const aspen_runtime_t *rt, size_t *n, uint64_t *gen)
{
   *n = rt->n_parts;
   *gen = rt->ckpt_gen;
   return rt->parts;
}

/* Builds the checkpoint body for the current state; moves each partition's
 * replay position to the earliest input an open window still needs. */
static void
checkpoint_body(runtime_t *rt, uint64_t min_seq, const char *id, bson_t *body)
{
   aspen_proc_t *proc = rt->proc;
   aspen_pipeline_t *pl = proc->pl;
   while (rt->log_len > 0 && rt->log[rt->log_head].seq < min_seq) {
      log_pop(rt);
   }
   bool *found = aspen_xcalloc(rt->n_parts + 1, sizeof *found);
   for (size_t i = 0; i < rt->n_parts; i++) {
      rt->parts[i].replay = rt->parts[i].high;
   }
   for (size_t k = 0; k < rt->log_len; k++) {
      const struct pos_entry *e = &rt->log[(rt->log_head + k) % rt->log_cap];
      if (e->offset < 0) {
         continue;
      }
      for (size_t i = 0; i < rt->n_parts; i++) {
         if (rt->parts[i].part == e->part && !found[i]) {
            found[i] = true;
            rt->parts[i].replay = e->offset;
         }
      }
   }
   free(found);

   bson_init(body);
   BSON_APPEND_UTF8(body, "processorId", proc->id);
   BSON_APPEND_UTF8(body, "processorName", proc->name);
   BSON_APPEND_DATE_TIME(body, "takenAt", aspen_clock_now_ms());
   BSON_APPEND_UTF8(body, "checkpointId", id);
   BSON_APPEND_UTF8(body, "sourceOperator", rt->source->operator_name);
   bson_t pos, arr;
   BSON_APPEND_DOCUMENT_BEGIN(body, "position", &pos);
   BSON_APPEND_ARRAY_BEGIN(&pos, "parts", &arr);
   for (size_t i = 0; i < rt->n_parts; i++) {
      char buf[16];
      const char *key;
      bson_t p;
      bson_uint32_to_string((uint32_t) i, &key, buf, sizeof buf);
      BSON_APPEND_DOCUMENT_BEGIN(&arr, key, &p);
      BSON_APPEND_INT64(&p, "p", rt->parts[i].part);
      BSON_APPEND_INT64(&p, "replay", rt->parts[i].replay);
      BSON_APPEND_INT64(&p, "high", rt->parts[i].high);
      bson_append_document_end(&arr, &p);
   }
   bson_append_array_end(&pos, &arr);
   const bson_t *token = NULL;
   if (rt->log_len > 0) {
      token = rt->log[rt->log_head].token_before;
   } else if (rt->has_token) {
      token = &rt->token_high;
   }
   if (token) {
      BSON_APPEND_DOCUMENT(&pos, "token", token);
   }
   bson_append_document_end(body, &pos);
   BSON_APPEND_INT64(body, "replayCount", (int64_t) rt->log_len);
   int64_t wm = pl->window ? atomic_load(&pl->watermark_ms)
                           : atomic_load(&proc->stats.watermark_ms);
   if (wm != INT64_MIN) {
      BSON_APPEND_INT64(body, "watermark", wm);
   }
   /* What the stages need back (a window: per-partition watermarks). */
   aspen_pipeline_checkpoint_save(pl, body);
   bson_t c;
   BSON_APPEND_DOCUMENT_BEGIN(body, "counters", &c);
   BSON_APPEND_INT64(&c, "inputMessageCount",
                     (int64_t) atomic_load(&proc->stats.input_count));
   BSON_APPEND_INT64(&c, "inputMessageSize",
                     (int64_t) atomic_load(&proc->stats.input_size));
   BSON_APPEND_INT64(&c, "outputMessageCount",
                     (int64_t) atomic_load(&proc->stats.output_count));
   BSON_APPEND_INT64(&c, "outputMessageSize",
                     (int64_t) atomic_load(&proc->stats.output_size));
   BSON_APPEND_INT64(&c, "dlqMessageCount",
                     (int64_t) atomic_load(&proc->stats.dlq_count));
   BSON_APPEND_INT64(&c, "dlqMessageSize",
                     (int64_t) atomic_load(&proc->stats.dlq_size));
   bson_append_document_end(body, &c);
}

/* Writes a checkpoint: only call right after the sink and the DLQ flushed
 * successfully. Unless `force`, only once the interval has passed; either
 * way only when the position moved (or this run has none yet). A write
 * error is logged and the previous checkpoint stays the one to resume
 * from; the processor carries on. */
static void
checkpoint_take(runtime_t *rt, bool force)
{
   aspen_proc_t *proc = rt->proc;
   if (!rt->ckpt_dir[0] || rt->failed || aspen_expr_interrupted()) {
      /* After an interrupted evaluation (the processor is stopping) a
       * document did not finish: the last checkpoint stays the one to
       * resume from, so it is read again (at least once). */
      return;
   }
   aspen_pipeline_t *pl = proc->pl;
   uint64_t min_seq = aspen_pipeline_replay_seq(pl);
   bool moved = rt->seq != rt->ckpt_seq || rt->ckpt_token_moved ||
                min_seq != rt->ckpt_min_seq ||
                (rt->exactly_once && rt->out_since_ckpt);
   if (!moved && (rt->ckpt_gen > 0 || rt->restored)) {
      return;
   }
   int64_t now = aspen_clock_mono_ms();
   if (!force &&
       now - rt->ckpt_mono_ms < aspen__engine_checkpoint_interval_ms(proc->eng)) {
      return;
   }
   bson_t body;
   char id[48];
   snprintf(id, sizeof id, "%016llx-%llu", (unsigned long long) rt->ckpt_run_id,
            (unsigned long long) rt->ckpt_gen + 1);
   checkpoint_body(rt, min_seq, id, &body);
   aspen_error_t err;
   if (!aspen__checkpoint_write(rt->ckpt_dir, &body, &err)) {
      /* Exactly-once: the transaction stays open until a checkpoint for
       * it is on disk. */
      aspen_logf(ASPEN_LOG_ERROR, "STREAMS", proc->name,
                 "checkpoint not written (the previous one stays): %s",
                 err.message);
      rt->ckpt_mono_ms = now;
      bson_destroy(&body);
      return;
   }
   bson_destroy(&body);
   if (rt->exactly_once && rt->sink && rt->sink->commit) {
      if (!rt->sink->commit(rt, rt->sink_state, rt->parts, rt->n_parts, id,
                            &err)) {
         /* The checkpoint just written is not committed: a restart takes
          * the previous one (load_committed). */
         aspen_rt_fail(rt, err.message);
         return;
      }
      rt->out_since_ckpt = false;
   }
   rt->ckpt_seq = rt->seq;
   rt->ckpt_token_moved = false;
   rt->ckpt_min_seq = min_seq;
   rt->ckpt_mono_ms = now;
   rt->ckpt_gen++;
   atomic_store(&proc->last_checkpoint_ms, aspen_clock_now_ms());
}

/* Exactly-once: of "current" and "previous", loads the checkpoint whose
 * transaction committed (the sink knows which ids it committed). When that
 * is "previous", "current" is deleted, so that the next write keeps the
 * committed one as the fallback. True with `body` set when one was loaded;
 * false with `body` empty when there is none, or (err set) when the sink
 * could not say. */
static bool
load_committed(runtime_t *rt, bson_t *body, bool *used_previous,
               aspen_error_t *err)
{
   aspen_proc_t *proc = rt->proc;
   bson_t cur, prev, ids = BSON_INITIALIZER;
   bool has_cur = aspen__checkpoint_load_file(rt->ckpt_dir, "current",
                                              proc->id, proc->name, &cur);
   bool has_prev = aspen__checkpoint_load_file(rt->ckpt_dir, "previous",
                                               proc->id, proc->name, &prev);
   bool ok = true;
   int pick = -1;
   *used_previous = false;
   bson_init(body);
   if (has_cur || has_prev) {
      ok = rt->sink->committed(rt, rt->sink_state, &ids, err);
   }
   if (ok && (has_cur || has_prev)) {
      pick = aspen__checkpoint_pick_committed(has_cur ? &cur : NULL,
                                              has_prev ? &prev : NULL, &ids);
      if (pick < 0) {
         char *json = bson_as_relaxed_extended_json(&ids, NULL);
         aspen_logf(ASPEN_LOG_ERROR, "STREAMS", proc->name,
                    "exactly-once: no checkpoint on disk matches the one "
                    "committed with the Kafka offsets (%s); resuming from "
                    "the newest: results after it may repeat",
                    json ? json : "?");
         bson_free(json);
         pick = has_cur ? 0 : 1;
      } else if (pick == 1 && has_cur) {
         aspen_logf(ASPEN_LOG_INFO, "STREAMS", proc->name,
                    "exactly-once: the last checkpoint's transaction did "
                    "not commit; resuming from the previous checkpoint");
         aspen__checkpoint_discard_current(rt->ckpt_dir);
      }
      bson_destroy(body);
      bson_copy_to(pick == 0 ? &cur : &prev, body);
      *used_previous = pick == 1;
   }
   bson_destroy(&cur);
   bson_destroy(&prev);
   bson_destroy(&ids);
   return ok && pick >= 0;
}

/* Loads the processor's last good checkpoint, if any, after its sink and
 * before its source opens: positions, replay count, window watermark,
 * counters. False (err set) only when an exactly-once sink cannot say
 * which checkpoint it committed. */
static bool
checkpoint_restore(runtime_t *rt, aspen_error_t *err)
{
   aspen_proc_t *proc = rt->proc;
   if (proc->ephemeral) {
      return true;
   }
   aspen__checkpoint_dir(aspen__engine_state_dir(proc->eng), proc->id,
                         rt->ckpt_dir, sizeof rt->ckpt_dir);
   bson_t body;
   bool used_previous;
   err->code = 0;
   bool found = rt->exactly_once
                   ? load_committed(rt, &body, &used_previous, err)
                   : aspen__checkpoint_load(rt->ckpt_dir, proc->id,
                                            proc->name, &body, &used_previous);
   if (!found) {
      bson_destroy(&body);
      return err->code == 0;
   }
   bson_iter_t it, ai;
   if (bson_iter_init_find(&it, &body, "position") &&
       BSON_ITER_HOLDS_DOCUMENT(&it)) {
      uint32_t len;
      const uint8_t *data;
      bson_iter_document(&it, &len, &data);
      bson_destroy(&rt->restored_pos);
      bson_init_static(&rt->restored_pos, data, len);
      bson_t copy;
      bson_copy_to(&rt->restored_pos, &copy);
      bson_steal(&rt->restored_pos, &copy);
   }
   if (bson_iter_init_find(&it, &rt->restored_pos, "parts") &&
       BSON_ITER_HOLDS_ARRAY(&it) && bson_iter_recurse(&it, &ai)) {
      while (bson_iter_next(&ai)) {
         if (!BSON_ITER_HOLDS_DOCUMENT(&ai)) {
            continue;
         }
         uint32_t len;
         const uint8_t *data;
         bson_t p;
         bson_iter_document(&ai, &len, &data);
         if (bson_init_static(&p, data, len)) {
            /* Reading restarts at the replay position. */
            int64_t replay = aspen_bson_int64(&p, "replay", 0);
            int64_t high = aspen_bson_int64(&p, "high", replay);
            part_get(rt, aspen_bson_int64(&p, "p", 0), replay);
            if (high > replay) {
               rt->restored_high = aspen_xrealloc(
                  rt->restored_high,
                  (rt->n_restored_high + 1) * sizeof *rt->restored_high);
               rt->restored_high[rt->n_restored_high++] = (aspen_rt_pos_t){
                  .part = aspen_bson_int64(&p, "p", 0), .replay = replay, .high = high};
            }
         }
      }
   }
   if (bson_iter_init_find(&it, &rt->restored_pos, "token") &&
       BSON_ITER_HOLDS_DOCUMENT(&it)) {
      uint32_t len;
      const uint8_t *data;
      bson_t tok;
      bson_iter_document(&it, &len, &data);
      if (bson_init_static(&tok, data, len)) {
         bson_concat(&rt->token_high, &tok);
         rt->has_token = true;
      }
   }
   rt->replay_count = (uint64_t) aspen_bson_int64(&body, "replayCount", 0);
   /* The stages take back what they saved (a window: its watermarks). A
    * partition that is replayed sends older inputs again, so the stages
    * hear which: those read again from before their checkpointed high
    * mark, or, for a token source with inputs to replay, its only one. */
   int64_t *replayed = aspen_xcalloc(rt->n_restored_high + 1,
                                     sizeof *replayed);
   for (size_t i = 0; i < rt->n_restored_high; i++) {
      replayed[i] = rt->restored_high[i].part & 0xffffffff;
   }
   aspen_replay_t replay = {.all = rt->n_parts == 0 && rt->replay_count > 0,
                            .parts = replayed,
                            .n = rt->n_restored_high};
   aspen_pipeline_checkpoint_restore(proc->pl, &body, &replay);
   free(replayed);
   if (bson_iter_init_find(&it, &body, "counters") &&
       BSON_ITER_HOLDS_DOCUMENT(&it)) {
      uint32_t len;
      const uint8_t *data;
      bson_t c;
      bson_iter_document(&it, &len, &data);
      if (bson_init_static(&c, data, len)) {
         /* Replayed inputs are counted again as they arrive. */
         int64_t in = aspen_bson_int64(&c, "inputMessageCount", 0) -
                      (int64_t) rt->replay_count;
         atomic_store(&proc->stats.input_count,
                      (uint64_t) (in > 0 ? in : 0));
         atomic_store(&proc->stats.input_size,
                      (uint64_t) aspen_bson_int64(&c, "inputMessageSize", 0));
         atomic_store(&proc->stats.output_count,
                      (uint64_t) aspen_bson_int64(&c, "outputMessageCount", 0));
         atomic_store(&proc->stats.output_size,
                      (uint64_t) aspen_bson_int64(&c, "outputMessageSize", 0));
         atomic_store(&proc->stats.dlq_count,
                      (uint64_t) aspen_bson_int64(&c, "dlqMessageCount", 0));
         atomic_store(&proc->stats.dlq_size,
                      (uint64_t) aspen_bson_int64(&c, "dlqMessageSize", 0));
      }
   }
   int64_t taken = aspen_bson_int64(&body, "takenAt", 0);
   if (bson_iter_init_find(&it, &body, "takenAt") &&
       BSON_ITER_HOLDS_DATE_TIME(&it)) {
      taken = bson_iter_date_time(&it);
   }
   atomic_store(&proc->last_checkpoint_ms, taken);
   rt->restored = true;
   aspen_logf(ASPEN_LOG_INFO, "STREAMS", proc->name,
              "resuming from the %s checkpoint (%zu partition position(s)%s, "
              "replaying %llu input(s) for open windows)",
              used_previous ? "previous" : "last", rt->n_parts,
              rt->has_token ? ", a resume token" : "",
              (unsigned long long) rt->replay_count);
   bson_destroy(&body);
   return true;
}

static void
checkpoint_state_free(runtime_t *rt)
{
   while (rt->log_len > 0) {
      log_pop(rt);
   }
   free(rt->log);
   free(rt->parts);
   free(rt->restored_high);
   bson_destroy(&rt->token_high);
   bson_destroy(&rt->restored_pos);
}

/* Opens DLQ and sink; on failure reports the start as failed. */
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
   if (rt->exactly_once && (!rt->sink || !rt->sink->commit)) {
      aspen_error_set(err, ASPEN_ERR_InternalError,
                      "exactly-once without a transactional sink");
      return false;
   }
   return true;
}

static void *
proc_main(void *arg)
{
   aspen_proc_t *proc = arg;
   /* A stop (or drop, or shutdown) interrupts a long evaluation on this
    * thread, so the command thread joining it never waits for one. */
   aspen_expr_set_interrupt(&proc->stop);
   runtime_t rt;
   memset(&rt, 0, sizeof rt);
   rt.proc = proc;
   rt.max_ts = INT64_MIN;
   rt.last_input_ms = aspen_clock_now_ms();
   if (RAND_bytes((unsigned char *) &rt.rng, sizeof rt.rng) != 1 || !rt.rng) {
      rt.rng = (uint64_t) aspen_clock_now_ms() | 1;
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
   rt.exactly_once = proc->pl->exactly_once;
   rt.ckpt_run_id = aspen_rt_random(&rt);
   bson_init(&rt.token_high);
   bson_init(&rt.restored_pos);
   rt.ckpt_min_seq = UINT64_MAX;

   /* Sink first: an exactly-once sink says which checkpoint it committed,
    * and the source opens at the restored positions. */
   aspen_error_t err;
   bool opened = open_outputs(&rt, &err) && checkpoint_restore(&rt, &err) &&
                 rt.source->open(&rt, &rt.source_state, &err);
   pthread_mutex_lock(&proc->mu);
   if (!opened) {
      snprintf(proc->error_msg, sizeof proc->error_msg, "%s", err.message);
      aspen_utf8_scrub(proc->error_msg);
      proc->start_result = -1;
      proc->start_code = err.code;
   } else {
      proc->start_result = 1;
   }
   pthread_cond_broadcast(&proc->cv);
   pthread_mutex_unlock(&proc->mu);
   /* The command thread may not be waiting: tell the engine (which asks
    * its caller to finish the start on the command thread). */
   aspen__engine_start_reported(proc->eng);

   if (opened) {
      if (!rt.restored) {
         checkpoint_take(&rt, true); /* the first one, at start */
      }
      rt.source->run(&rt, rt.source_state);
      /* Stopping: the final checkpoint, after the final flush. */
      if (!rt.failed && flush_sinks(&rt)) {
         checkpoint_take(&rt, true);
      }
   }
   if (proc->pl->fatal_code) {
      /* Out of memory: let the stages' state go now, not when the
       * processor is next started or dropped. */
      aspen_pipeline_drop_state(proc->pl);
   }
   if (rt.source_state) {
      rt.source->close(rt.source_state);
   }
   if (rt.sink) {
      rt.sink->close(rt.sink_state);
   }
   if (aspen_expr_interrupted()) {
      aspen_logf(ASPEN_LOG_INFO, "STREAMS", proc->name,
                 "the stop interrupted an expression evaluation; the "
                 "document it was for is read again from the last "
                 "checkpoint");
   }
   aspen_coll_writer_destroy(rt.dlq);
   bson_destroy(&rt.source_meta);
   checkpoint_state_free(&rt);
   /* Wake a getMore or a shell push waiting on this processor. */
   pthread_mutex_lock(&proc->mu);
   proc->thread_done = true;
   pthread_cond_broadcast(&proc->cv);
   pthread_mutex_unlock(&proc->mu);
   aspen_expr_set_interrupt(NULL);
   return NULL;
}

/* The state limit of this run: aspen's override when configured, else
 * 80 % of the tier's RAM (the start's tier, options.tier, else SP10, the
 * workspace default). */
static void
set_state_limit(aspen_proc_t *proc)
{
   aspen_pipeline_t *pl = proc->pl;
   const char *tier = "SP10";
   bson_iter_t it;
   if (proc->start_tier[0]) {
      tier = proc->start_tier;
   } else if (bson_iter_init_find(&it, &proc->options, "tier") &&
              BSON_ITER_HOLDS_UTF8(&it)) {
      tier = bson_iter_utf8(&it, NULL);
   }
   uint64_t override = aspen__engine_memory_limit_bytes(proc->eng);
   pl->state_limit = aspen__tier_state_limit(tier, pl->state_limit_what,
                                             sizeof pl->state_limit_what);
   if (override > 0) {
      pl->state_limit = override;
      snprintf(pl->state_limit_what, sizeof pl->state_limit_what,
               "tier %s; aspen's streams.memoryLimitBytes", tier);
   }
}

bool
aspen_proc_launch(aspen_proc_t *proc, aspen_error_t *err)
{
   const aspen_conns_t *conns = aspen_engine_conns(proc->eng);
   bool has_dlq = bson_has_field(&proc->options, "dlq");
   proc->pl = aspen_pipeline_parse(&proc->pipeline, conns, proc->ephemeral,
                                   has_dlq, err);
   if (!proc->pl) {
      return false;
   }
   /* Checked again at every start: the connections' roles may have
    * changed since create. */
   if (!aspen__pipeline_authorize(proc->pl, &proc->options, conns, err)) {
      aspen_pipeline_destroy(proc->pl);
      proc->pl = NULL;
      return false;
   }
   set_state_limit(proc);
   bson_iter_t vit;
   proc->pl->virtual_clock = bson_iter_init_find(&vit, &proc->options,
                                                 "virtualClock") &&
                             bson_iter_as_bool(&vit);
   proc->pl->exactly_once = bson_iter_init_find(&vit, &proc->options,
                                                "exactlyOnce") &&
                            bson_iter_as_bool(&vit);
   /* Checked again here: the connections may have changed since create. */
   if (proc->pl->exactly_once &&
       !aspen__kafka_txn_check(proc->pl, conns, proc->ephemeral, err)) {
      aspen_pipeline_destroy(proc->pl);
      proc->pl = NULL;
      return false;
   }
   atomic_store(&proc->stop, false);
   proc->start_result = 0;
   proc->run_failed = false;
   proc->thread_done = false;
   proc->started_ms = aspen_clock_now_ms();
   atomic_store(&proc->stats.watermark_ms, INT64_MIN);
   /* Before the thread exists, so a failure it reports finds the state it
    * expects (aspen_rt_fail). */
   aspen_proc_set_state(proc, ASPEN_PROC_PROVISIONING, NULL);
   if (pthread_create(&proc->thread, NULL, proc_main, proc) != 0) {
      aspen_error_set(err, ASPEN_ERR_InternalError,
                      "cannot start a thread for the processor");
      aspen_pipeline_destroy(proc->pl);
      proc->pl = NULL;
      return false;
   }
   proc->thread_running = true;
   return true;
}

bool
aspen_proc_start_reported(aspen_proc_t *proc)
{
   pthread_mutex_lock(&proc->mu);
   bool reported = proc->start_result != 0;
   pthread_mutex_unlock(&proc->mu);
   return reported;
}

bool
aspen_proc_finish_start(aspen_proc_t *proc, aspen_error_t *err)
{
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
