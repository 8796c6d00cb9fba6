/*
 * window.c - $tumblingWindow, $hoppingWindow and $sessionWindow; the
 * window-only stages $group, $sort, $limit and $count they run are in
 * window_block.c.
 *
 * Event time and watermarks (../shared/spec/asp-semantics.md §4.5): each
 * document carries its event time; the watermark of a source partition is
 * the largest event time it has sent minus 1 ms and never moves back; the
 * processor's watermark is the minimum over partitions that are not idle.
 * A window [start, end) closes when watermark - allowedLateness >= end, in
 * start order, and its results then flow on down the pipeline with
 * _stream_meta.window.{start,end}. A document whose windows have all closed
 * is late: it goes to the DLQ ("Input document arrived late.") with the
 * start times it missed.
 *
 * Inside a window the inner pipeline is cut at its blocking stages. Stages
 * before the first blocking stage run as each document arrives (with that
 * window's metadata, so {$meta: "stream.window.start"} works); the first
 * blocking stage keeps per-window state ($group keeps one accumulator state
 * per key, not the documents; $sort and $limit keep documents); at close the
 * rest of the inner pipeline runs over that stage's output.
 */
#include "hash.h"
#include "stages/window.h"
#include "stages/window_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- window instances ------------------------------------------------------------ */

static aspen_block_spec_t *
first_block_spec(const aspen_window_t *w)
{
   return w->first_block < w->n_inner ? w->inner[w->first_block].state : NULL;
}

static void
win_block_destroy(aspen_window_t *w, aspen_win_t *win)
{
   aspen_block_spec_t *b = first_block_spec(w);
   if (b && b->kind == B_GROUP) {
      aspen__window_block_groups_clear(&win->block.groups, b);
   }
   aspen__window_block_list_clear(&win->block.docs);
}

static void
win_free(aspen_window_t *w, aspen_win_t *win)
{
   if (w->last_fed == win) {
      w->last_fed = NULL;
   }
   win_block_destroy(w, win);
   bson_destroy(&win->part_key);
   if (win->has_meta) {
      bson_destroy(&win->meta);
   }
   free(win);
}

/* ---- window metadata ---------------------------------------------------------- */

static void
window_meta(const aspen_window_t *w, const aspen_win_t *win, bson_t *meta)
{
   bson_t src, wd;
   bson_init(meta);
   BSON_APPEND_DOCUMENT_BEGIN(meta, "source", &src);
   BSON_APPEND_UTF8(&src, "type", w->source_type[0] ? w->source_type
                                                     : "generated");
   bson_append_document_end(meta, &src);
   BSON_APPEND_DOCUMENT_BEGIN(meta, "window", &wd);
   BSON_APPEND_DATE_TIME(&wd, "start", win->start);
   BSON_APPEND_DATE_TIME(&wd, "end", win->end);
   if (w->kind == W_SESSION) {
      bson_iter_t it;
      if (bson_iter_init(&it, &win->part_key) && bson_iter_next(&it)) {
         bson_append_iter(&wd, "partition", -1, &it);
      }
   }
   bson_append_document_end(meta, &wd);
}

/* ---- feeding open windows ----------------------------------------------------- */

static void
prefix_terminal(void *arg, const aspen_sdoc_t *doc)
{
   aspen_window_t *w = arg;
   aspen_win_t *win = w->feeding;
   aspen_block_spec_t *b = first_block_spec(w);
   aspen_pipeline_t *pl = w->self->pl;
   size_t before = win->bytes;
   if (!b || w->kind == W_SESSION) {
      /* Sessions keep their documents: an out-of-order document can join
       * two sessions into one, and lists merge where aggregates cannot. The
       * first blocking stage then runs over them at close. */
      aspen__window_block_list_add(&win->block.docs, doc->doc);
      win->bytes += doc->doc->len;
   } else {
      switch (b->kind) {
      case B_GROUP: {
         aspen_error_t err;
         size_t added = 0;
         if (!aspen__window_block_group_add(&win->block.groups, b, doc,
                                            pl->now_ms, &added, &err)) {
            char reason[ASPEN_ERROR_MSG_MAX + 64];
            snprintf(reason, sizeof reason,
                     "Failed to process input document in GroupOperator "
                     "with error: %s",
                     err.message);
            pl->dlq(pl->hook_arg, doc, "GroupOperator", reason);
         }
         win->bytes += added;
         break;
      }
      case B_SORT:
         aspen__window_block_list_add(&win->block.docs, doc->doc);
         win->bytes += doc->doc->len;
         break;
      case B_LIMIT:
         if ((int64_t) win->block.docs.n < b->limit) {
            aspen__window_block_list_add(&win->block.docs, doc->doc);
            win->bytes += doc->doc->len;
         }
         break;
      case B_COUNT:
         win->block.count++;
         break;
      }
   }
   w->state_bytes += win->bytes - before;
}

static void
collect_terminal(void *arg, const aspen_sdoc_t *doc)
{
   aspen_window_t *w = arg;
   aspen__window_block_list_add(w->collect, doc->doc);
}

/* The metadata documents see inside a window: built once per window and
 * kept while what it says holds (a session's bounds move, the source type
 * is learnt from the first document that has one). */
static const bson_t *
win_meta(const aspen_window_t *w, aspen_win_t *win)
{
   bool typed = w->source_type[0] != 0; /* set once (remember_source_type) */
   if (win->has_meta && win->meta_start == win->start &&
       win->meta_end == win->end && win->meta_typed == typed) {
      return &win->meta;
   }
   if (win->has_meta) {
      bson_destroy(&win->meta);
   }
   window_meta(w, win, &win->meta);
   win->has_meta = true;
   win->meta_start = win->start;
   win->meta_end = win->end;
   win->meta_typed = typed;
   return &win->meta;
}

static void
feed(aspen_window_t *w, aspen_win_t *win, const aspen_sdoc_t *in)
{
   aspen_sdoc_t d = *in;
   d.meta = win_meta(w, win);
   w->feeding = win;
   if (w->prefix.n == 0) {
      prefix_terminal(w, &d); /* what the empty chain would call */
   } else {
      aspen_chain_push(&w->prefix, 0, &d);
   }
   w->feeding = NULL;
}

/* ---- closing ------------------------------------------------------------------ */

/* Applies blocking stage `b` to a list in batch (after the first one). */
static void
batch_block(aspen_window_t *w, const aspen_block_spec_t *b, const bson_t *meta,
            aspen_doclist_t *l)
{
   aspen_pipeline_t *pl = w->self->pl;
   switch (b->kind) {
   case B_GROUP: {
      aspen_group_map_t m;
      aspen_doclist_t out;
      size_t added = 0;
      memset(&m, 0, sizeof m);
      memset(&out, 0, sizeof out);
      for (size_t i = 0; i < l->n; i++) {
         aspen_error_t err;
         aspen_sdoc_t d = {.doc = l->docs[i], .meta = meta};
         if (!aspen__window_block_group_add(&m, b, &d, pl->now_ms, &added,
                                            &err)) {
            char reason[ASPEN_ERROR_MSG_MAX + 64];
            snprintf(reason, sizeof reason,
                     "Failed to process input document in GroupOperator "
                     "with error: %s",
                     err.message);
            pl->dlq(pl->hook_arg, &d, "GroupOperator", reason);
         }
      }
      aspen__window_block_group_results(&m, b, &out);
      aspen__window_block_groups_clear(&m, b);
      aspen__window_block_list_clear(l);
      *l = out;
      break;
   }
   case B_SORT:
      aspen__window_block_sort(&b->sort, l);
      break;
   case B_LIMIT:
      while ((int64_t) l->n > b->limit) {
         bson_destroy(l->docs[--l->n]);
      }
      break;
   case B_COUNT: {
      int64_t n = (int64_t) l->n;
      aspen__window_block_list_clear(l);
      if (n > 0) {
         bson_t doc = BSON_INITIALIZER;
         if (n <= INT32_MAX) {
            BSON_APPEND_INT32(&doc, b->count_field, (int32_t) n);
         } else {
            BSON_APPEND_INT64(&doc, b->count_field, n);
         }
         aspen__window_block_list_add(l, &doc);
         bson_destroy(&doc);
      }
      break;
   }
   }
}

static void
close_window(aspen_window_t *w, aspen_win_t *win)
{
   bson_t meta;
   window_meta(w, win, &meta);
   aspen_doclist_t l;
   memset(&l, 0, sizeof l);
   aspen_block_spec_t *b = first_block_spec(w);
   if (!b || w->kind == W_SESSION) {
      l = win->block.docs;
      memset(&win->block.docs, 0, sizeof win->block.docs);
   }
   if (b && w->kind == W_SESSION) {
      batch_block(w, b, &meta, &l);
   }
   if (b) {
      switch (w->kind == W_SESSION ? (aspen_block_kind_t) -1 : b->kind) {
      case B_GROUP:
         aspen__window_block_group_results(&win->block.groups, b, &l);
         break;
      case B_SORT:
         l = win->block.docs;
         memset(&win->block.docs, 0, sizeof win->block.docs);
         aspen__window_block_sort(&b->sort, &l);
         break;
      case B_LIMIT:
         l = win->block.docs;
         memset(&win->block.docs, 0, sizeof win->block.docs);
         break;
      case B_COUNT:
         if (win->block.count > 0) {
            bson_t doc = BSON_INITIALIZER;
            BSON_APPEND_INT32(&doc, b->count_field, (int32_t) win->block.count);
            aspen__window_block_list_add(&l, &doc);
            bson_destroy(&doc);
         }
         break;
      default:
         break; /* sessions: done above */
      }
      /* The rest of the inner pipeline, segment by segment. */
      int seg = 0;
      for (int i = w->first_block; i < w->n_inner; seg++) {
         aspen_chain_t *chain = &w->segments[seg];
         if (chain->n > 0) {
            aspen_doclist_t next;
            memset(&next, 0, sizeof next);
            w->collect = &next;
            for (size_t j = 0; j < l.n; j++) {
               aspen_sdoc_t d = {.doc = l.docs[j], .meta = &meta,
                                 .ts_ms = win->end - 1};
               aspen_chain_push(chain, 0, &d);
            }
            w->collect = NULL;
            aspen__window_block_list_clear(&l);
            l = next;
         }
         i += 1 + chain->n;
         if (i < w->n_inner) {
            batch_block(w, w->inner[i].state, &meta, &l);
         }
      }
   }
   /* Its results' latency counts from the window's first input. */
   aspen_pipeline_t *pl = w->self->pl;
   uint64_t origin = pl->origin_ns;
   pl->origin_ns = win->first_ns;
   for (size_t j = 0; j < l.n; j++) {
      aspen_sdoc_t d = {.doc = l.docs[j], .meta = &meta,
                        .ts_ms = win->end - 1};
      aspen_stage_emit(w->self, &d);
   }
   pl->origin_ns = origin;
   aspen__window_block_list_clear(&l);
   bson_destroy(&meta);
   w->state_bytes -= win->bytes < w->state_bytes ? win->bytes : w->state_bytes;
}

/* Publishes the open windows' smallest and largest start (stats'
 * min/maxOpenWindowStartTime): called when a window opens or closes, and
 * after each session input (sessions merge and start earlier in place).
 * Fixed windows are kept in start order; sessions' starts are looked
 * through. */
static void
publish_open(aspen_window_t *w)
{
   aspen_pipeline_t *pl = w->self->pl;
   int64_t lo = INT64_MIN, hi = INT64_MIN;
   if (w->n_wins > 0 && w->kind != W_SESSION) {
      lo = w->wins[0]->start;
      hi = w->wins[w->n_wins - 1]->start;
   }
   for (size_t i = 0; w->kind == W_SESSION && i < w->n_wins; i++) {
      int64_t s = w->wins[i]->start;
      lo = lo == INT64_MIN || s < lo ? s : lo;
      hi = hi == INT64_MIN || s > hi ? s : hi;
   }
   atomic_store_explicit(&pl->open_min_ms, lo, memory_order_relaxed);
   atomic_store_explicit(&pl->open_max_ms, hi, memory_order_relaxed);
}

/* Closes, in start order, every window for which `ready` holds. */
static void
close_where(aspen_window_t *w,
            bool (*ready)(const aspen_window_t *, const aspen_win_t *, int64_t),
            int64_t arg)
{
   size_t kept = 0;
   /* Close first (in order), then compact: closing emits downstream, which
    * never re-enters this window stage. */
   for (size_t i = 0; i < w->n_wins; i++) {
      aspen_win_t *win = w->wins[i];
      if (ready(w, win, arg)) {
         close_window(w, win);
         win_free(w, win);
      } else {
         w->wins[kept++] = win;
      }
   }
   if (kept != w->n_wins) {
      w->n_wins = kept;
      publish_open(w);
   }
   w->self->pl->window_bytes = w->state_bytes;
   aspen__pipeline_state_update(w->self->pl);
}

static bool
ready_by_watermark(const aspen_window_t *w, const aspen_win_t *win, int64_t wm)
{
   return wm != INT64_MIN && wm - w->lateness_ms >= win->end;
}

static bool
ready_by_clock(const aspen_window_t *w, const aspen_win_t *win, int64_t now)
{
   (void) w;
   return now >= win->end;
}

static bool
ready_by_idle(const aspen_window_t *w, const aspen_win_t *win, int64_t idle)
{
   return w->watermark == INT64_MIN || win->end - w->watermark <= idle;
}

/* ---- assignment ------------------------------------------------------------------ */

static int64_t
floor_div(int64_t a, int64_t b)
{
   int64_t q = a / b;
   return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

static aspen_win_t *
find_or_open(aspen_window_t *w, int64_t start, int64_t end)
{
   /* Binary search: with a hop much smaller than the interval an event
    * belongs to thousands of open windows (a linear scan made that
    * quadratic per event; found by fuzzing). */
   size_t lo = 0, hi = w->n_wins;
   while (lo < hi) {
      size_t mid = lo + (hi - lo) / 2;
      if (w->wins[mid]->start < start) {
         lo = mid + 1;
      } else {
         hi = mid;
      }
   }
   size_t i = lo;
   if (i < w->n_wins && w->wins[i]->start == start) {
      return w->wins[i];
   }
   if (w->n_wins == w->cap_wins) {
      w->cap_wins = w->cap_wins ? w->cap_wins * 2 : 8;
      w->wins = aspen_xrealloc(w->wins, w->cap_wins * sizeof *w->wins);
   }
   memmove(&w->wins[i + 1], &w->wins[i], (w->n_wins - i) * sizeof *w->wins);
   aspen_win_t *win = aspen_xcalloc(1, sizeof *win);
   win->start = start;
   win->end = end;
   win->first_seq = w->self->pl->cur_seq;
   win->first_ns = w->self->pl->origin_ns;
   bson_init(&win->part_key);
   w->wins[i] = win;
   w->n_wins++;
   publish_open(w);
   return win;
}

/* A new session window (sessions of different partitions may share a
 * start, so no lookup by start). */
static aspen_win_t *
open_session(aspen_window_t *w, int64_t start, int64_t end)
{
   if (w->n_wins == w->cap_wins) {
      w->cap_wins = w->cap_wins ? w->cap_wins * 2 : 8;
      w->wins = aspen_xrealloc(w->wins, w->cap_wins * sizeof *w->wins);
   }
   size_t i = w->n_wins;
   while (i > 0 && w->wins[i - 1]->start > start) {
      w->wins[i] = w->wins[i - 1];
      i--;
   }
   aspen_win_t *win = aspen_xcalloc(1, sizeof *win);
   win->start = start;
   win->end = end;
   win->first_seq = w->self->pl->cur_seq;
   win->first_ns = w->self->pl->origin_ns;
   bson_init(&win->part_key);
   w->wins[i] = win;
   w->n_wins++;
   publish_open(w);
   return win;
}

static void
dlq_late(aspen_window_t *w, const aspen_sdoc_t *in, const int64_t *missed,
         size_t n_missed)
{
   aspen_pipeline_t *pl = w->self->pl;
   bson_t extra = BSON_INITIALIZER, arr;
   BSON_APPEND_ARRAY_BEGIN(&extra, "missedWindowStartTimes", &arr);
   for (size_t i = 0; i < n_missed; i++) {
      char buf[16];
      const char *key;
      bson_uint32_to_string((uint32_t) i, &key, buf, sizeof buf);
      BSON_APPEND_DATE_TIME(&arr, key, missed[i]);
   }
   bson_append_array_end(&extra, &arr);
   pl->dlq_extra = &extra;
   pl->dlq(pl->hook_arg, in, w->self->ops->operator_name,
           "Input document arrived late.");
   pl->dlq_extra = NULL;
   bson_destroy(&extra);
}

static void
remember_source_type(aspen_window_t *w, const aspen_sdoc_t *in)
{
   if (w->source_type[0] || !in->meta) {
      return;
   }
   bson_iter_t it, found;
   if (bson_iter_init(&it, in->meta) &&
       bson_iter_find_descendant(&it, "source.type", &found) &&
       BSON_ITER_HOLDS_UTF8(&found)) {
      snprintf(w->source_type, sizeof w->source_type, "%s",
               bson_iter_utf8(&found, NULL));
   }
}

/* Per-partition watermarks: each partition's is its largest event time
 * minus 1 ms; the window's moves to the minimum over partitions that are
 * not idle (partitionIdleTimeout), and never back. A partition is the
 * source's key for it (pl->cur_part, aspen_rt_mark's), the same key that
 * assignments, replays and checkpoint positions use: a multi-topic Kafka
 * source's partition 0 of each topic is a partition of its own. */
static void
observe_partition(aspen_window_t *w, int64_t part, int64_t t, int64_t wall_ms)
{
   size_t i = 0;
   while (i < w->n_parts && w->parts[i].id != part) {
      i++;
   }
   if (i == w->n_parts) {
      w->parts = aspen_xrealloc(w->parts, (w->n_parts + 1) * sizeof *w->parts);
      w->parts[i].id = part;
      w->parts[i].wm = INT64_MIN;
      w->n_parts++;
   }
   if (w->parts[i].wm == INT64_MIN || t - 1 > w->parts[i].wm) {
      w->parts[i].wm = t - 1;
   }
   w->parts[i].last_seen_ms = wall_ms;
}

static int64_t
partitions_watermark(const aspen_window_t *w, int64_t wall_ms)
{
   int64_t idle_ms = w->self->pl->source.partition_idle_timeout_ms;
   int64_t min = INT64_MIN;
   bool any = false;
   for (size_t i = 0; i < w->n_parts; i++) {
      if (idle_ms > 0 && w->n_parts > 1 &&
          wall_ms - w->parts[i].last_seen_ms > idle_ms) {
         continue; /* idle: does not hold the watermark back */
      }
      if (!any || w->parts[i].wm < min) {
         min = w->parts[i].wm; /* INT64_MIN (nothing yet) holds it back */
         any = true;
      }
   }
   return min;
}

static void
advance_watermark(aspen_window_t *w, int64_t t)
{
   if (w->watermark == INT64_MIN || t - 1 > w->watermark) {
      w->watermark = t - 1;
      atomic_store(&w->self->pl->watermark_ms, w->watermark);
   }
}

static bool
push_fixed(aspen_window_t *w, const aspen_sdoc_t *in, int64_t t)
{
   int64_t threshold = w->processing_time || w->watermark == INT64_MIN
                          ? INT64_MIN
                          : w->watermark - w->lateness_ms;
   /* A tumbling window's next event is most often in the window the last
    * one went to: the one window holding t, found without the search. */
   aspen_win_t *last_fed = w->last_fed;
   if (last_fed && t >= last_fed->start && t < last_fed->end &&
       (threshold == INT64_MIN || last_fed->end > threshold)) {
      feed(w, last_fed, in);
      return true;
   }
   int64_t step = w->kind == W_HOPPING ? w->hop_ms : w->size_ms;
   /* Starts k*step + offset with start <= t < start + size. */
   int64_t last = floor_div(t - w->offset_ms, step) * step + w->offset_ms;
   int64_t first = last;
   while (first - step + w->size_ms > t) {
      first -= step;
   }
   size_t max = (size_t) ((last - first) / step) + 1;
   int64_t missed_local[64];
   aspen_win_t *targets_local[64];
   int64_t *missed = max <= 64 ? missed_local
                               : aspen_xmalloc(max * sizeof *missed);
   aspen_win_t **targets = max <= 64 ? targets_local
                               : aspen_xmalloc(max * sizeof *targets);
   size_t n_missed = 0;
   size_t n_targets = 0;
   for (int64_t s = first; s <= last; s += step) {
      int64_t end = s + w->size_ms;
      if (end <= t) {
         continue; /* hop larger than the interval: a gap */
      }
      if (threshold != INT64_MIN && end <= threshold) {
         missed[n_missed++] = s;
      } else {
         targets[n_targets++] = find_or_open(w, s, end);
      }
   }
   if (n_missed > 0) {
      dlq_late(w, in, missed, n_missed);
   }
   for (size_t i = 0; i < n_targets; i++) {
      feed(w, targets[i], in);
   }
   if (w->kind == W_TUMBLING && n_targets == 1) {
      w->last_fed = targets[0];
   }
   if (missed != missed_local) {
      free(missed);
      free(targets);
   }
   return true;
}

static bool
push_session(aspen_window_t *w, const aspen_sdoc_t *in, int64_t t,
             aspen_error_t *err)
{
   aspen_pipeline_t *pl = w->self->pl;
   aspen_expr_ctx_t ctx = {.root = in->doc, .meta = in->meta,
                           .now_ms = pl->now_ms};
   aspen_value_t pv;
   if (!aspen_expr_eval(w->partition_by, &ctx, &pv, err)) {
      return false;
   }
   bson_t key = BSON_INITIALIZER, norm = BSON_INITIALIZER;
   aspen_value_t p = aspen_value_is_missing(&pv) ? aspen_value_null() : pv;
   aspen_value_append(&key, "", 0, &p);
   aspen_value_destroy(&pv);
   bson_iter_t it;
   bson_iter_init(&it, &key);
   bson_iter_next(&it);
   aspen__window_block_append_normalized(&norm, "", &it);
   /* Sessions of this partition that the event touches: [start - gap,
    * last + gap). Merge them all into one. */
   aspen_win_t *target = NULL;
   for (size_t i = 0; i < w->n_wins; i++) {
      aspen_win_t *win = w->wins[i];
      bson_t wn = BSON_INITIALIZER;
      bson_iter_t wi;
      bson_iter_init(&wi, &win->part_key);
      bson_iter_next(&wi);
      aspen__window_block_append_normalized(&wn, "", &wi);
      bool same = wn.len == norm.len &&
                  memcmp(bson_get_data(&wn), bson_get_data(&norm), wn.len) == 0;
      bson_destroy(&wn);
      if (!same || t < win->start - w->gap_ms || t >= win->last_ts + w->gap_ms) {
         continue;
      }
      if (!target) {
         target = win;
         continue;
      }
      /* An out-of-order event bridging two sessions joins them: the later
       * one's documents move into the earlier one. */
      aspen_doclist_t *from = &win->block.docs, *into = &target->block.docs;
      for (size_t j = 0; j < from->n; j++) {
         if (into->n == into->cap) {
            into->cap = into->cap ? into->cap * 2 : 8;
            into->docs = aspen_xrealloc(into->docs,
                                       into->cap * sizeof *into->docs);
         }
         into->docs[into->n++] = from->docs[j];
      }
      from->n = 0;
      target->bytes += win->bytes;
      if (win->start < target->start) {
         target->start = win->start;
      }
      if (win->last_ts > target->last_ts) {
         target->last_ts = win->last_ts;
      }
      target->end = target->last_ts + w->gap_ms;
      win_free(w, win);
      memmove(&w->wins[i], &w->wins[i + 1],
              (w->n_wins - i - 1) * sizeof *w->wins);
      w->n_wins--;
      i--;
   }
   int64_t threshold = w->watermark == INT64_MIN ? INT64_MIN
                                                : w->watermark - w->lateness_ms;
   if (!target) {
      if (threshold != INT64_MIN && t + w->gap_ms <= threshold) {
         int64_t missed = t;
         dlq_late(w, in, &missed, 1);
         bson_destroy(&key);
         bson_destroy(&norm);
         return true;
      }
      target = open_session(w, t, t + w->gap_ms);
      bson_destroy(&target->part_key);
      bson_copy_to(&key, &target->part_key);
      target->last_ts = t;
   }
   if (t < target->start) {
      target->start = t;
   }
   if (t > target->last_ts) {
      target->last_ts = t;
   }
   target->end = target->last_ts + w->gap_ms;
   feed(w, target, in);
   bson_destroy(&key);
   bson_destroy(&norm);
   publish_open(w); /* sessions merge and start earlier in place */
   return true;
}

/* ---- the stage ------------------------------------------------------------------ */

static bool
window_push(aspen_stage_t *st, const aspen_sdoc_t *in, aspen_error_t *err)
{
   aspen_window_t *w = st->state;
   aspen_pipeline_t *pl = st->pl;
   remember_source_type(w, in);
   int64_t t = w->processing_time ? pl->now_ms : in->ts_ms;
   bool ok = w->kind == W_SESSION ? push_session(w, in, t, err)
                                  : push_fixed(w, in, t);

   if (!ok) {
      return false;
   }
   /* The watermark moved when the source handed the document over
    * (window_observe), and ready windows closed there. */
   if (w->processing_time) {
      close_where(w, ready_by_clock, pl->now_ms);
   }
   if (pl->window_bytes != w->state_bytes) {
      pl->window_bytes = w->state_bytes;
      aspen__pipeline_state_update(pl);
   }
   return true;
}

/* Every source document moves the watermark, whether or not it reaches the
 * window (a $match before the window may drop it). Windows the new
 * watermark closes are closed before the document is assigned. */
static void
window_observe(aspen_stage_t *st, const aspen_sdoc_t *in)
{
   aspen_window_t *w = st->state;
   aspen_pipeline_t *pl = st->pl;
   if (w->processing_time) {
      advance_watermark(w, pl->now_ms);
      close_where(w, ready_by_clock, pl->now_ms);
      return;
   }
   observe_partition(w, pl->cur_part, in->ts_ms, pl->now_ms);
   int64_t pwm = partitions_watermark(w, pl->now_ms);
   if (pwm == INT64_MIN) {
      return;
   }
   /* Closing now cannot close this document's own windows: they end after
    * its event time, and the new watermark is at most that time - 1. */
   advance_watermark(w, pwm + 1);
   /* Fixed windows share their size and are kept in start order: when the
    * first is not ready, none is (and nothing changes). */
   if (w->kind != W_SESSION &&
       (w->n_wins == 0 ||
        !ready_by_watermark(w, w->wins[0], w->watermark))) {
      return;
   }
   close_where(w, ready_by_watermark, w->watermark);
}

static void
window_tick(aspen_stage_t *st, int64_t now_ms, int64_t idle_ms)
{
   aspen_window_t *w = st->state;
   if (w->n_wins == 0) {
      return;
   }
   if (w->processing_time) {
      close_where(w, ready_by_clock, now_ms);
      return;
   }
   if (w->n_parts > 1 && w->self->pl->source.partition_idle_timeout_ms > 0) {
      /* An idle partition stops holding the watermark back. */
      int64_t pwm = partitions_watermark(w, now_ms);
      if (pwm != INT64_MIN) {
         advance_watermark(w, pwm + 1);
         close_where(w, ready_by_watermark, w->watermark);
      }
   }
   if (w->idle_timeout_ms > 0 && idle_ms >= w->idle_timeout_ms) {
      int64_t max_end = INT64_MIN;
      for (size_t i = 0; i < w->n_wins; i++) {
         if (ready_by_idle(w, w->wins[i], idle_ms) &&
             w->wins[i]->end > max_end) {
            max_end = w->wins[i]->end;
         }
      }
      close_where(w, ready_by_idle, idle_ms);
      /* The watermark moves past what idleness closed, so documents for
       * those windows that turn up later are late. */
      if (max_end != INT64_MIN) {
         advance_watermark(w, max_end + w->lateness_ms + 1);
      }
   }
}

void
aspen__window_drop_state(aspen_stage_t *st)
{
   aspen_window_t *w = st->state;
   for (size_t i = 0; i < w->n_wins; i++) {
      win_free(w, w->wins[i]);
   }
   w->n_wins = 0;
   w->state_bytes = 0;
   publish_open(w);
   st->pl->window_bytes = 0;
   aspen__pipeline_state_update(st->pl);
}

void
aspen__window_destroy(aspen_stage_t *st)
{
   aspen_window_t *w = st->state;
   if (!w) {
      return;
   }
   for (size_t i = 0; i < w->n_wins; i++) {
      win_free(w, w->wins[i]);
   }
   free(w->wins);
   free(w->parts);
   for (int i = 0; i < w->n_inner; i++) {
      if (w->inner[i].ops && w->inner[i].ops->destroy) {
         w->inner[i].ops->destroy(&w->inner[i]);
      }
   }
   free(w->inner);
   free(w->segments);
   aspen_expr_destroy(w->partition_by);
   bson_destroy(&w->spec);
   free(w);
   st->state = NULL;
}

/* Parses the stage's argument (window_parse.c), then chains its inner
 * stages: the prefix, then one stateless run after each blocking stage. */
static bool
window_parse(aspen_stage_t *st, const bson_iter_t *arg, aspen_parse_ctx_t *pc,
             aspen_error_t *err)
{
   if (!aspen__window_parse_args(st, arg, pc, err)) {
      aspen__window_destroy(st);
      return false;
   }
   aspen_window_t *w = st->state;
   int n_blocks = 0;
   for (int i = 0; i < w->n_inner; i++) {
      n_blocks += aspen__window_block_is(&w->inner[i]);
   }
   w->prefix = (aspen_chain_t){.stages = w->inner, .n = w->first_block,
                               .terminal = prefix_terminal, .arg = w};
   w->segments = aspen_xcalloc((size_t) (n_blocks ? n_blocks : 1),
                               sizeof *w->segments);
   for (int i = 0; i < w->first_block; i++) {
      w->inner[i].chain = &w->prefix;
      w->inner[i].index = i;
   }
   int seg = 0;
   for (int i = w->first_block; i < w->n_inner;) {
      int j = i + 1;
      while (j < w->n_inner && !aspen__window_block_is(&w->inner[j])) {
         j++;
      }
      aspen_chain_t *c = &w->segments[seg++];
      *c = (aspen_chain_t){.stages = &w->inner[i + 1], .n = j - i - 1,
                           .terminal = collect_terminal, .arg = w};
      for (int k = i + 1; k < j; k++) {
         w->inner[k].chain = c;
         w->inner[k].index = k - i - 1;
      }
      i = j;
   }
   st->pl->observe = window_observe;
   return true;
}

/* ---- checkpoints ------------------------------------------------------------------ */

/* Open windows are not serialised: a checkpoint stores the position of the
 * earliest input that still feeds one (this sequence number, mapped to a
 * source position by the processor's checkpointing), and a restore replays
 * the source from there, rebuilding every open window from the same
 * inputs. */
static uint64_t
window_replay_seq(const aspen_stage_t *st)
{
   const aspen_window_t *w = st->state;
   uint64_t min = UINT64_MAX;
   for (size_t i = 0; w && i < w->n_wins; i++) {
      if (w->wins[i]->first_seq < min) {
         min = w->wins[i]->first_seq;
      }
   }
   return min;
}

/* Declares partition `id` with watermark `wm`, or (INT64_MIN) before its
 * first input, so a partition read first cannot move the watermark past
 * one not read yet; a known partition's watermark only moves forward. */
static void
restore_partition(aspen_window_t *w, int64_t id, int64_t wm)
{
   /* Partition clocks are on the pipeline's clock (epoch ms). */
   int64_t wall = aspen_clock_now_ms();
   size_t i = 0;
   while (i < w->n_parts && w->parts[i].id != id) {
      i++;
   }
   if (i == w->n_parts) {
      /* A partition known before its first input holds the watermark back
       * (at INT64_MIN) until it sends one or goes idle. */
      w->parts = aspen_xrealloc(w->parts, (w->n_parts + 1) * sizeof *w->parts);
      w->parts[i].id = id;
      w->parts[i].wm = INT64_MIN;
      w->parts[i].last_seen_ms = wall;
      w->n_parts++;
   }
   if (wm != INT64_MIN && (w->parts[i].wm == INT64_MIN || wm > w->parts[i].wm)) {
      w->parts[i].wm = wm;
   }
}

static void
window_partition_assigned(aspen_stage_t *st, int64_t part)
{
   restore_partition(st->state, part, INT64_MIN);
}

/* The per-partition watermarks, {partitionWatermarks: [{p, wm}]} (at most
 * 256, as ever), p the source's partition key. For a one-topic Kafka
 * source that is the partition number, as it always was; checkpoints
 * written before multi-topic sources had keys of their own hold the bare
 * partition number of every topic, which restores as the first topic's
 * partition, while the other topics' partitions start out unknown and hold
 * the watermark back until they send (nothing is made late by them). The
 * stage's own watermark is the checkpoint's "watermark", which the
 * processor writes for every pipeline. */
static void
window_checkpoint_save(const aspen_stage_t *st, bson_t *body)
{
   const aspen_window_t *w = st->state;
   bson_t pw;
   BSON_APPEND_ARRAY_BEGIN(body, "partitionWatermarks", &pw);
   for (size_t i = 0; w && i < w->n_parts && i < 256; i++) {
      char buf[16];
      const char *key;
      bson_t e;
      bson_uint32_to_string((uint32_t) i, &key, buf, sizeof buf);
      BSON_APPEND_DOCUMENT_BEGIN(&pw, key, &e);
      BSON_APPEND_INT64(&e, "p", w->parts[i].id);
      BSON_APPEND_INT64(&e, "wm", w->parts[i].wm);
      bson_append_document_end(&pw, &e);
   }
   bson_append_array_end(body, &pw);
}

/* The watermark never moves back, so replayed inputs of windows that had
 * closed before the checkpoint count as late again instead of reopening
 * those windows with partial contents (which would overwrite a complete
 * $merge result). A partition that is replayed sends older inputs again:
 * its watermark starts over (holding the window's back until the replay
 * passes it), else windows would close before its replayed inputs
 * arrive. */
static void
window_checkpoint_restore(aspen_stage_t *st, const bson_t *body,
                          const aspen_replay_t *replay)
{
   aspen_window_t *w = st->state;
   int64_t wm = aspen_bson_int64(body, "watermark", INT64_MIN);
   if (wm != INT64_MIN && (w->watermark == INT64_MIN || wm > w->watermark)) {
      w->watermark = wm;
      atomic_store(&st->pl->watermark_ms, wm);
   }
   bson_iter_t it, ai;
   if (!bson_iter_init_find(&it, body, "partitionWatermarks") ||
       !BSON_ITER_HOLDS_ARRAY(&it) || !bson_iter_recurse(&it, &ai)) {
      return;
   }
   while (bson_iter_next(&ai)) {
      uint32_t len;
      const uint8_t *data;
      bson_t e;
      if (!BSON_ITER_HOLDS_DOCUMENT(&ai)) {
         continue;
      }
      bson_iter_document(&ai, &len, &data);
      if (!bson_init_static(&e, data, len)) {
         continue;
      }
      int64_t id = aspen_bson_int64(&e, "p", 0);
      bool replayed = replay->all;
      for (size_t i = 0; i < replay->n; i++) {
         replayed = replayed || replay->parts[i] == id;
      }
      restore_partition(w, id,
                        replayed ? INT64_MIN
                                 : aspen_bson_int64(&e, "wm", INT64_MIN));
   }
}

#define WINDOW_OPS(stage)                                                      \
   .name = stage, .operator_name = "WindowOperator", .parse = window_parse,    \
   .push = window_push, .destroy = aspen__window_destroy,                      \
   .tick = window_tick,                                                        \
   .replay_seq = window_replay_seq,                                            \
   .checkpoint_save = window_checkpoint_save,                                  \
   .checkpoint_restore = window_checkpoint_restore,                            \
   .partition_assigned = window_partition_assigned,                            \
   .drop_state = aspen__window_drop_state

const aspen_stage_ops_t aspen_stage_tumbling_ops = {
   WINDOW_OPS("$tumblingWindow")};
const aspen_stage_ops_t aspen_stage_hopping_ops = {
   WINDOW_OPS("$hoppingWindow")};
const aspen_stage_ops_t aspen_stage_session_ops = {
   WINDOW_OPS("$sessionWindow")};
