/*
 * rt.c - the runtime API a processor's source and sink call (source.h,
 * sink.h), on the processor's thread: documents come in
 * (aspen_rt_ingest: their event time, then the pipeline), leave the last
 * stage (to the sample cursors and the sink), or fail (the DLQ, dlq.c);
 * the source idles (aspen_rt_wait: time passes for the windows, the sinks
 * flush, a checkpoint may be taken) and stops when asked or failed.
 */
#include "runtime/runtime_int.h"
#include "base/tier.h"
#include "bsonw.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

/* An ephemeral (sp.process) processor stops after this long. */
#define EPHEMERAL_MAX_MS (10 * 60 * 1000)
/* The figures (pipeline.h) are published every this many inputs, and
 * whenever the source idles. */
#define PUBLISH_EVERY 64

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
   const aspen_pipeline_t *pl = rt->pl;
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

/* Whether the iterator's key is key[0 .. len). */
static inline bool
key_is(const bson_iter_t *it, const char *key, size_t len)
{
   return aspen_bsonw_key_len(it) == len &&
          memcmp(it->raw + it->key, key, len) == 0;
}

/* The document with its _stream_meta (the one it had replaced), written
 * into `w`, which `out` then views. */
static void
with_meta(const aspen_sdoc_t *d, aspen_bsonw_t *w, bson_t *out)
{
   aspen_bsonw_reset(w);
   aspen_bsonw_copy_without(w, d->doc, "_stream_meta", 12);
   if (d->meta && !bson_empty(d->meta)) {
      bson_value_t v = {.value_type = BSON_TYPE_DOCUMENT};
      v.value.v_doc.data = (uint8_t *) bson_get_data(d->meta);
      v.value.v_doc.data_len = d->meta->len;
      aspen_bsonw_value(w, "_stream_meta", 12, &v);
   }
   (void) aspen_bsonw_finish(w, out);
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
   aspen_op_counts_t *sc = &rt->pl->sink_counts;
   sc->out_count -= sc->out_count ? 1 : 0;
   sc->out_size -= sc->out_size >= doc->len ? doc->len : sc->out_size;
   sc->dlq_count++;
   sc->dlq_size += doc->len;
   aspen__dlq_send(rt, &d,
                   rt->sink ? rt->sink->operator_name : "SinkOperator",
                   reason);
}

void
aspen__rt_on_output(void *arg, const aspen_sdoc_t *out)
{
   aspen_runtime_t *rt = arg;
   aspen_proc_t *proc = rt->proc;
   uint8_t buf[1024];
   aspen_bsonw_t w;
   bson_t doc;
   aspen_bsonw_init_static(&w, buf, sizeof buf);
   with_meta(out, &w, &doc);
   atomic_fetch_add(&proc->stats.output_count, 1);
   atomic_fetch_add(&proc->stats.output_size, doc.len);
   pthread_mutex_lock(&proc->mu);
   aspen__cursor_push_all(proc, &doc);
   pthread_mutex_unlock(&proc->mu);
   aspen_pipeline_t *pl = rt->pl;
   uint64_t t0 = pl->timing ? aspen_pipeline_clock_ns() : 0;
   if (rt->sink) {
      aspen_error_t err;
      /* In: what the last stage handed over; out: what was written
       * (with its _stream_meta), as the processor's output counts it. */
      pl->sink_counts.in_count++;
      pl->sink_counts.in_size += out->doc->len;
      pl->sink_counts.out_count++;
      pl->sink_counts.out_size += doc.len;
      if (!rt->sink->write(rt, rt->sink_state, &doc, &err)) {
         aspen_rt_fail(rt, err.message);
      }
      rt->out_since_ckpt = true;
   }
   /* Latency: from when the input came in (or its window's first one) to
    * here, in microseconds. */
   uint64_t now = aspen_pipeline_clock_ns();
   if (pl->origin_ns && now >= pl->origin_ns) {
      aspen_hist_add(&pl->lat, (now - pl->origin_ns) / 1000u);
   }
   if (pl->timing) {
      uint64_t spent = now - t0;
      pl->sink_counts.exec_ns += spent * ASPEN_PIPELINE_TIMING_EVERY;
      pl->child_ns += spent; /* not the last stage's own time */
   }
   aspen_bsonw_cleanup(&w);
}

/* ---- ingestion -------------------------------------------------------------- */

/* out = `meta` with `source.ts` = `ingest_ms` after `source.type`: ASP's
 * {$meta: "stream.source.ts"}, "date and time of the record at the point
 * of ingestion" (sp-agg-meta), which every source has. */
static void
meta_with_ingest_ts(const bson_t *meta, int64_t ingest_ms, aspen_bsonw_t *w,
                    bson_t *out)
{
   bson_value_t ts = {.value_type = BSON_TYPE_DATE_TIME};
   ts.value.v_datetime = ingest_ms;
   bson_iter_t it;
   bool seen = false;
   aspen_bsonw_reset(w);
   if (bson_iter_init(&it, meta)) {
      while (aspen_bsonw_iter_next(&it)) {
         if (!key_is(&it, "source", 6) || !BSON_ITER_HOLDS_DOCUMENT(&it)) {
            aspen_bsonw_element(w, &it);
            continue;
         }
         bson_iter_t src;
         bool placed = false;
         seen = true;
         bson_iter_recurse(&it, &src);
         size_t child = aspen_bsonw_begin(w, BSON_TYPE_DOCUMENT, "source", 6);
         while (aspen_bsonw_iter_next(&src)) {
            if (key_is(&src, "ts", 2)) {
               continue;
            }
            aspen_bsonw_element(w, &src);
            if (!placed && key_is(&src, "type", 4)) {
               aspen_bsonw_value(w, "ts", 2, &ts);
               placed = true;
            }
         }
         if (!placed) {
            aspen_bsonw_value(w, "ts", 2, &ts);
         }
         aspen_bsonw_end(w, child);
      }
   }
   if (!seen) {
      size_t child = aspen_bsonw_begin(w, BSON_TYPE_DOCUMENT, "source", 6);
      aspen_bsonw_value(w, "ts", 2, &ts);
      aspen_bsonw_end(w, child);
   }
   (void) aspen_bsonw_finish(w, out);
}

/* A document the source itself fails (its event time). */
static void
source_dead_letter(aspen_runtime_t *rt, const aspen_sdoc_t *d,
                   const char *reason)
{
   rt->pl->src_counts.dlq_count++;
   rt->pl->src_counts.dlq_size += d->doc->len;
   aspen__dlq_send(rt, d, rt->source->operator_name, reason);
}

/* *wm = max(*wm, v): workers (workers.c) raise it each from its own
 * latest event time. */
static void
watermark_raise(atomic_int_fast64_t *wm, int64_t v)
{
   int_fast64_t cur = atomic_load(wm);
   while (cur < v && !atomic_compare_exchange_weak(wm, &cur, v)) {
   }
}

/* aspen_rt_ingest with `meta` stamped (source.ts = `wall`). */
static void
ingest(aspen_runtime_t *rt, const bson_t *raw, const bson_t *meta,
       int64_t wall, int64_t source_ts_ms)
{
   aspen_proc_t *proc = rt->proc;
   aspen_pipeline_t *pl = rt->pl;
   int64_t now = wall;
   if (pl->virtual_clock) {
      /* Time comes from the input: "now" is the latest event time seen. */
      now = source_ts_ms != INT64_MIN
               ? source_ts_ms
               : (rt->max_ts == INT64_MIN ? 0 : rt->max_ts);
   }
   rt->last_input_ms = wall;
   int64_t ts = source_ts_ms == INT64_MIN ? now : source_ts_ms;
   /* The document is written into a buffer on the stack (the heap only
    * past it), viewed by a static bson_t for this call. */
   uint8_t doc_buf[1024];
   aspen_bsonw_t dw;
   aspen_bsonw_init_static(&dw, doc_buf, sizeof doc_buf);
   atomic_fetch_add(&proc->stats.input_count, 1);
   atomic_fetch_add(&proc->stats.input_size, raw->len);
   pl->src_counts.in_count++;
   pl->src_counts.in_size += raw->len;
   pl->origin_ns = aspen_pipeline_clock_ns();
   pl->timing = rt->ingested++ % ASPEN_PIPELINE_TIMING_EVERY == 0;
   if (rt->ingested % PUBLISH_EVERY == 0 && !rt->main) {
      /* The previous batch's figures (a worker's are summed into the
       * processor's pipeline when it flushes, workers.c). */
      aspen__pipeline_publish(pl);
   }
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
         source_dead_letter(rt, &as_is, reason);
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
         source_dead_letter(rt, &as_is, reason);
         return;
      }
      ts = v.v.value.v_datetime;
      aspen_value_destroy(&v);
   }
   bson_t doc;
   size_t ts_len = strlen(pl->source.ts_field);
   bson_value_t tsv = {.value_type = BSON_TYPE_DATE_TIME};
   tsv.value.v_datetime = ts;
   aspen_bsonw_reset(&dw);
   aspen_bsonw_copy_without(&dw, raw, pl->source.ts_field, ts_len);
   aspen_bsonw_value(&dw, pl->source.ts_field, ts_len, &tsv);
   (void) aspen_bsonw_finish(&dw, &doc);
   if (ts > rt->max_ts) {
      rt->max_ts = ts;
      watermark_raise(&proc->stats.watermark_ms, ts - 1);
   }
   if (pl->virtual_clock) {
      /* This document's own time counts: "now" is the latest event time. */
      pl->now_ms = rt->max_ts;
   }
   aspen_sdoc_t sdoc = {.doc = &doc, .meta = meta, .ts_ms = ts};
   pl->src_counts.out_count++;
   pl->src_counts.out_size += doc.len;
   aspen_pipeline_push(pl, &sdoc);
   aspen_bsonw_cleanup(&dw);
   fail_if_fatal(rt);
}

void
aspen_rt_ingest(aspen_runtime_t *rt, const bson_t *raw, const bson_t *meta,
                int64_t source_ts_ms)
{
   int64_t wall = aspen_clock_now_ms(); /* read once per input */
   /* The metadata with its source.ts, in a buffer on the stack. */
   uint8_t meta_buf[512];
   aspen_bsonw_t mw;
   bson_t meta_ts;
   aspen_bsonw_init_static(&mw, meta_buf, sizeof meta_buf);
   meta_with_ingest_ts(meta ? meta : &rt->source_meta, wall, &mw, &meta_ts);
   ingest(rt, raw, &meta_ts, wall, source_ts_ms);
   aspen_bsonw_cleanup(&mw);
}

void
aspen_rt_ingest_stamped(aspen_runtime_t *rt, const bson_t *raw,
                        const bson_t *meta, int64_t ingest_ms,
                        int64_t source_ts_ms)
{
   ingest(rt, raw, meta, ingest_ms, source_ts_ms);
}

void
aspen_rt_source_lag(aspen_runtime_t *rt, int64_t lag_ms)
{
   rt->source_lag_ms = lag_ms < 0 ? 0 : lag_ms;
}

/* The highest tier the processor may run on (its autoscaling's), and its
 * name in *tier ("" when none). */
static const aspen_tier_t *
tier_max(const aspen_runtime_t *rt, const char **tier)
{
   const aspen_tier_t *t = aspen_tier_at(rt->pl->tier_max_rank);
   *tier = t ? t->name : "";
   return t;
}

int64_t
aspen_rt_tier_kafka_partitions(const aspen_runtime_t *rt, const char **tier)
{
   const aspen_tier_t *t = tier_max(rt, tier);
   return t ? t->kafka_partitions : 0;
}

int64_t
aspen_rt_tier_initial_sync_colls(const aspen_runtime_t *rt, const char **tier)
{
   const aspen_tier_t *t = tier_max(rt, tier);
   return t ? t->initial_sync_colls : 0;
}

void
aspen_rt_source_figures(aspen_runtime_t *rt, const bson_t *figures)
{
   aspen_proc_t *proc = rt->proc;
   pthread_mutex_lock(&proc->mu);
   bson_reinit(&proc->source_figures);
   bson_concat(&proc->source_figures, figures);
   pthread_mutex_unlock(&proc->mu);
}

void
aspen__rt_publish(aspen_runtime_t *rt)
{
   aspen_proc_t *proc = rt->proc;
   aspen__pipeline_publish(proc->pl);
   if (!rt->has_token && rt->source_lag_ms == INT64_MIN) {
      return;
   }
   pthread_mutex_lock(&proc->mu);
   bson_reinit(&proc->source_token);
   if (rt->has_token) {
      bson_concat(&proc->source_token, &rt->token_high);
   }
   proc->source_lag_ms = rt->source_lag_ms;
   proc->has_source_pos = true;
   pthread_mutex_unlock(&proc->mu);
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

bool
aspen__rt_flush_sinks(aspen_runtime_t *rt, bool all)
{
   aspen_error_t err;
   if (rt->workers) {
      /* The workers flush their own pipelines and sinks; the DLQ writer
       * they share is flushed here, after them. */
      return aspen__workers_flush(rt, all) && aspen__dlq_flush(rt);
   }
   aspen_pipeline_flush(rt->pl);
   /* A stage that held documents back may have failed the processor
    * while letting them go ($https with a fatal answer). */
   if (fail_if_fatal(rt)) {
      return false;
   }
   rt->flush_all = all;
   bool ok = !rt->sink || rt->sink->flush(rt, rt->sink_state, &err);
   rt->flush_all = false;
   if (!ok) {
      aspen_rt_fail(rt, err.message);
      return false;
   }
   return aspen__dlq_flush(rt);
}

static bool
expired(aspen_runtime_t *rt)
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
   aspen_pipeline_t *pl = rt->pl;
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
   aspen__rt_publish(rt);
   if (fail_if_fatal(rt)) {
      return true;
   }
   if (aspen__rt_flush_sinks(rt, false)) {
      aspen__checkpointing_take(rt, false);
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
   rt->pl->src_counts.dlq_count++;
   rt->pl->src_counts.dlq_size += doc->len;
   aspen__dlq_send(rt, &d, rt->source->operator_name, reason);
}

const aspen_source_spec_t *
aspen_rt_source_spec(const aspen_runtime_t *rt)
{
   return &rt->pl->source;
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
   return rt->proc->env->conns;
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
   return rt->proc->env->checkpoint_interval_ms;
}

bool
aspen_rt_flush(aspen_runtime_t *rt)
{
   if (rt->failed || !aspen__rt_flush_sinks(rt, true)) {
      return false;
   }
   aspen__checkpointing_take(rt, true);
   return true;
}

