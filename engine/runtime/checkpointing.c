/*
 * checkpointing.c - a running processor's positions and checkpoints: the
 * rt API's position calls (aspen_rt_mark ..., source.h), the checkpoint
 * body, and taking and restoring it (checkpoint.c frames and writes the
 * file). Processor thread.
 *
 * Sources say where each input comes from (aspen_rt_mark: a partition and
 * offset, or the resume token before it). A checkpoint stores, per
 * partition, the *replay position* -- the offset of the earliest input
 * that still feeds an open window (the next unread one when no window is
 * open; the stages' replay_seq hook) -- plus the watermark, what the
 * stages save (a window: its per-partition watermarks), the counters and
 * the source's last published figures (aspen_rt_source_figures). Window
 * state itself is not serialised: a restore re-reads
 * the source from the replay positions and so rebuilds the open windows
 * from the same inputs, which then close with the same results as an
 * uninterrupted run. During that replay the DLQ is not written again (those
 * entries were written before the checkpoint), and the restored watermark
 * makes replayed inputs of windows that had already closed late instead of
 * reopening them. A checkpoint taken before that replay is over keeps the
 * restored checkpoint's high marks (Kafka) or the count of inputs still to
 * replay (tokens), so that a crash then does not turn the rest of the
 * replay into new inputs. A checkpoint is written only after the sink and
 * the DLQ flushed successfully (aspen_rt_wait, aspen_rt_flush), at start when
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
#include "runtime/runtime_int.h"
#include "runtime/checkpoint.h"

#include <stdlib.h>
#include <string.h>

void
aspen__checkpointing_init(aspen_runtime_t *rt)
{
   rt->ckpt_run_id = aspen_rt_random(rt);
   bson_init(&rt->token_high);
   bson_init(&rt->restored_pos);
   rt->ckpt_min_seq = UINT64_MAX;
}

static aspen_rt_pos_t *
part_get(aspen_runtime_t *rt, int64_t part, int64_t start)
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
log_pop(aspen_runtime_t *rt)
{
   struct pos_entry *e = &rt->log[rt->log_head];
   if (e->token_before) {
      bson_destroy(e->token_before);
   }
   rt->log_head = (rt->log_head + 1) % rt->log_cap;
   rt->log_len--;
}

static void
log_push(aspen_runtime_t *rt, const struct pos_entry *e)
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

/* The restored checkpoint's high mark of partition `part`: the inputs
 * below it were read before that checkpoint, so reading them again is a
 * replay. -1 when the partition had nothing to replay. */
static int64_t
restored_high(const aspen_runtime_t *rt, int64_t part)
{
   for (size_t i = 0; i < rt->n_restored_high; i++) {
      if (rt->restored_high[i].part == part) {
         return rt->restored_high[i].high;
      }
   }
   return -1;
}

void
aspen_rt_mark(aspen_runtime_t *rt, int64_t part, int64_t offset,
              const bson_t *token_before)
{
   if (rt->main) {
      /* A worker's (workers.c): the processor thread marked the position
       * when it handed the input over. Only whether it is a replay
       * matters here; the restored high marks do not change while the
       * source runs. */
      rt->replaying = offset >= 0 && offset < restored_high(rt->main, part);
      return;
   }
   aspen_pipeline_t *pl = rt->proc->pl;
   rt->seq++;
   pl->cur_seq = rt->seq;
   pl->cur_part = part;
   /* A replay: offsets below the checkpoint's high mark of the partition
    * (partitions interleave differently the second time); for token
    * sources, the first replayCount inputs. */
   rt->replaying = offset >= 0 ? offset < restored_high(rt, part)
                               : rt->seq <= rt->replay_count;
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
aspen_rt_partition_assigned(aspen_runtime_t *rt, int64_t part)
{
   aspen_pipeline_partition_assigned(rt->proc->pl, part);
}

void
aspen_rt_mark_token(aspen_runtime_t *rt, const bson_t *token)
{
   bson_reinit(&rt->token_high);
   bson_concat(&rt->token_high, token);
   rt->has_token = true;
   rt->ckpt_token_moved = true;
}

/* The source's epoch now (aspen_source_ops_t.epoch), NULL if it has none. */
static const char *
source_epoch(const aspen_runtime_t *rt)
{
   const aspen_source_spec_t *spec = &rt->proc->pl->source;
   return spec->ops->epoch ? spec->ops->epoch(spec) : NULL;
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
   if (rt->restored && rt->epoch_changed) {
      *offset = 0;
      return true;
   }
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
checkpoint_body(aspen_runtime_t *rt, uint64_t min_seq, const char *id, bson_t *body)
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
      /* Taken while a restore's replay has not yet read a partition back
       * up to where the restored checkpoint had read it, the high mark
       * stays that one: the inputs below it were all read (and their DLQ
       * entries written) before, so a restore from this checkpoint must
       * count them as replays too; else those inputs, of windows that
       * closed long ago, would reach the DLQ as late. */
      int64_t high = restored_high(rt, rt->parts[i].part);
      BSON_APPEND_INT64(&p, "high",
                        high > rt->parts[i].high ? high : rt->parts[i].high);
      bson_append_document_end(&arr, &p);
   }
   bson_append_array_end(&pos, &arr);
   const char *epoch = source_epoch(rt);
   if (epoch) {
      BSON_APPEND_UTF8(&pos, "epoch", epoch);
   }
   const bson_t *token = NULL;
   if (rt->log_len > 0) {
      token = rt->log[rt->log_head].token_before;
   } else if (rt->has_token) {
      token = &rt->token_high;
   }
   if (token) {
      BSON_APPEND_DOCUMENT(&pos, "token", token);
   }
   /* What the source last published for stats (a change stream's
    * per-collection initial-sync figures), for the source to take back
    * through aspen_rt_restored_position. */
   bson_t fig;
   if (aspen_proc_source_figures(proc, &fig)) {
      BSON_APPEND_DOCUMENT(&pos, "sourceFigures", &fig);
   }
   bson_destroy(&fig);
   bson_append_document_end(body, &pos);
   /* A token source checkpointed before the restore's replay ended: a
    * restore from here reads those of the restored checkpoint's inputs it
    * has not read again yet after the log's, and they are replays too
    * (their DLQ entries were written before). They were counted in the
    * restored counters, not yet again in this run's. */
   uint64_t pending = rt->n_parts == 0 && rt->replay_count > rt->seq
                         ? rt->replay_count - rt->seq
                         : 0;
   BSON_APPEND_INT64(body, "replayCount", (int64_t) (rt->log_len + pending));
   int64_t wm = aspen__processor_watermark(proc);
   if (wm != INT64_MIN) {
      BSON_APPEND_INT64(body, "watermark", wm);
   }
   /* What the stages need back (a window: per-partition watermarks). */
   aspen_pipeline_checkpoint_save(pl, body);
   bson_t c;
   BSON_APPEND_DOCUMENT_BEGIN(body, "counters", &c);
   BSON_APPEND_INT64(&c, "inputMessageCount",
                     (int64_t) (atomic_load(&proc->stats.input_count) +
                                pending));
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

/* A write error is logged and the previous checkpoint stays the one to
 * resume from; the processor carries on. */
bool
aspen_rt_checkpoint_due(const aspen_runtime_t *rt)
{
   if (rt->flush_all) {
      return true;
   }
   if (rt->main) {
      return aspen_rt_checkpoint_due(rt->main); /* a worker's */
   }
   /* What aspen__checkpointing_take(rt, false) needs besides a moved
    * position: a superset of the checkpoints it takes. */
   return rt->ckpt_dir[0] &&
          aspen_clock_mono_ms() - rt->ckpt_mono_ms >=
             rt->proc->env->checkpoint_interval_ms;
}

void
aspen__checkpointing_take(aspen_runtime_t *rt, bool force)
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
       now - rt->ckpt_mono_ms < proc->env->checkpoint_interval_ms) {
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
load_committed(aspen_runtime_t *rt, bson_t *body, bool *used_previous,
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

/* Restores the positions, the replay count, what the stages saved (a
 * window's watermarks) and the counters. */
bool
aspen__checkpointing_restore(aspen_runtime_t *rt, aspen_error_t *err)
{
   aspen_proc_t *proc = rt->proc;
   if (proc->ephemeral) {
      return true;
   }
   aspen__checkpoint_dir(proc->env->state_dir, proc->id,
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
   const char *epoch = source_epoch(rt);
   const char *saved = NULL;
   if (bson_iter_init_find(&it, &rt->restored_pos, "epoch") &&
       BSON_ITER_HOLDS_UTF8(&it)) {
      saved = bson_iter_utf8(&it, NULL);
   }
   rt->epoch_changed = epoch && (!saved || strcmp(saved, epoch) != 0);
   if (rt->epoch_changed) {
      aspen_logf(ASPEN_LOG_INFO, "STREAMS", proc->name,
                 "the checkpoint's positions were saved against an earlier "
                 "copy of what %s reads (the broker aspen hosts for a local "
                 "connection starts empty in each aspen process): every "
                 "partition is read from its start",
                 rt->source->what);
   }
   if (!rt->epoch_changed &&
       bson_iter_init_find(&it, &rt->restored_pos, "parts") &&
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
      replayed[i] = rt->restored_high[i].part;
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

void
aspen__checkpointing_cleanup(aspen_runtime_t *rt)
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
