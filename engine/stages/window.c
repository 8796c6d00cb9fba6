/*
 * window.c - $tumblingWindow, $hoppingWindow and $sessionWindow, and the
 * window-only stages $group, $sort, $limit and $count.
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
#include "lang/accum.h"
#include "runtime/pipeline.h"
#include "stages/window.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MS_PER_SECOND 1000LL
#define MAX_LATENESS_MS (30LL * 60 * 1000)

/* ---- durations ------------------------------------------------------------ */

static bool
unit_ms(const char *unit, int64_t *ms)
{
   static const struct {
      const char *name;
      int64_t ms;
   } units[] = {{"ms", 1},
                {"second", 1000},
                {"minute", 60 * 1000},
                {"hour", 60 * 60 * 1000},
                {"day", 24 * 60 * 60 * 1000}};
   for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
      if (strcmp(units[i].name, unit) == 0) {
         *ms = units[i].ms;
         return true;
      }
   }
   return false;
}

/* Parses {size, unit} (or, when zero_ok, the integer 0) into ms. `what` is
 * the option's name for messages ("interval", "allowedLateness"). */
static bool
parse_duration(const bson_iter_t *it, const char *what, bool zero_ok,
               const char *nonzero_msg, int64_t *out, aspen_error_t *err)
{
   if (zero_ok && (BSON_ITER_HOLDS_INT32(it) || BSON_ITER_HOLDS_INT64(it) ||
                   BSON_ITER_HOLDS_DOUBLE(it))) {
      if (bson_iter_as_int64(it) != 0) {
         aspen_error_set(err, ASPEN_ERR_StreamProcessorInvalidOptions, "%s",
                         nonzero_msg);
         return false;
      }
      *out = 0;
      return true;
   }
   if (!BSON_ITER_HOLDS_DOCUMENT(it)) {
      aspen_error_set(err, ASPEN_ERR_StreamProcessorInvalidOptions,
                      "%s must be an object {size, unit}", what);
      return false;
   }
   bson_iter_t di;
   bson_iter_recurse(it, &di);
   bool has_size = false;
   int64_t size = 0, ms = 0;
   const char *unit = NULL;
   while (bson_iter_next(&di)) {
      const char *k = bson_iter_key(&di);
      if (strcmp(k, "size") == 0) {
         /* The range check before the cast: converting 1e40 to int64_t
          * is undefined (found by tests/fuzz/fuzz_pipeline). */
         if (!BSON_ITER_HOLDS_INT32(&di) && !BSON_ITER_HOLDS_INT64(&di) &&
             !(BSON_ITER_HOLDS_DOUBLE(&di) &&
               bson_iter_double(&di) >= -9.2e18 &&
               bson_iter_double(&di) <= 9.2e18 &&
               bson_iter_double(&di) == (double) (int64_t) bson_iter_double(&di))) {
            aspen_error_set(err, ASPEN_ERR_StreamProcessorInvalidOptions,
                            "%s.size must be an integer", what);
            return false;
         }
         size = bson_iter_as_int64(&di);
         has_size = true;
      } else if (strcmp(k, "unit") == 0) {
         if (!BSON_ITER_HOLDS_UTF8(&di)) {
            aspen_error_set(err, ASPEN_ERR_StreamProcessorInvalidOptions,
                            "%s.unit must be a string", what);
            return false;
         }
         unit = bson_iter_utf8(&di, NULL);
      } else {
         aspen_error_set(err, ASPEN_ERR_StreamProcessorInvalidOptions,
                         "BSON field '%s.%s' is an unknown field.", what, k);
         return false;
      }
   }
   if (!has_size || !unit) {
      aspen_error_set(err, ASPEN_ERR_StreamProcessorInvalidOptions,
                      "%s requires both size and unit", what);
      return false;
   }
   if (!unit_ms(unit, &ms)) {
      aspen_error_set(err, ASPEN_ERR_StreamProcessorInvalidOptions,
                      "Enumeration value '%s' for field '%s.unit' is not a "
                      "valid value.",
                      unit, what);
      return false;
   }
   /* Durations are milliseconds in an int64_t: refuse what overflows it. */
   if (size > INT64_MAX / ms || size < INT64_MIN / ms) {
      aspen_error_set(err, ASPEN_ERR_StreamProcessorInvalidOptions,
                      "%s.size %lld %s is too large", what, (long long) size,
                      unit);
      return false;
   }
   *out = size * ms;
   return true;
}

/* ---- window-only stages (parsed here, run by the window) ----------------- */

typedef enum { B_GROUP, B_SORT, B_LIMIT, B_COUNT } block_kind_t;

typedef struct {
   char *name;
   aspen_accum_t *acc;
} group_field_t;

typedef struct {
   bson_t spec;          /* owned copy: expressions keep views into it */
   aspen_expr_t *id;
   group_field_t *fields;
   size_t n_fields;
} group_spec_t;

typedef struct {
   char **paths;
   int *dirs;
   size_t n;
} sort_spec_t;

typedef struct {
   block_kind_t kind;
   group_spec_t group;
   sort_spec_t sort;
   int64_t limit;
   char *count_field;
} block_spec_t;

static void
block_spec_destroy(block_spec_t *b)
{
   if (!b) {
      return;
   }
   aspen_expr_destroy(b->group.id);
   for (size_t i = 0; i < b->group.n_fields; i++) {
      free(b->group.fields[i].name);
      aspen_accum_destroy(b->group.fields[i].acc);
   }
   free(b->group.fields);
   if (b->kind == B_GROUP) {
      bson_destroy(&b->group.spec);
   }
   for (size_t i = 0; i < b->sort.n; i++) {
      free(b->sort.paths[i]);
   }
   free(b->sort.paths);
   free(b->sort.dirs);
   free(b->count_field);
   free(b);
}

static void
blocking_destroy(aspen_stage_t *st)
{
   block_spec_destroy(st->state);
   st->state = NULL;
}

static bool
group_parse(aspen_stage_t *st, const bson_iter_t *arg, aspen_parse_ctx_t *pc,
            aspen_error_t *err)
{
   (void) pc;
   if (!BSON_ITER_HOLDS_DOCUMENT(arg)) {
      aspen_error_set(err, ASPEN_ERR_FailedToParse,
                      "a group's fields must be specified in an object");
      return false;
   }
   block_spec_t *b = aspen_xcalloc(1, sizeof *b);
   b->kind = B_GROUP;
   st->state = b;
   uint32_t len;
   const uint8_t *data;
   bson_t tmp;
   bson_iter_document(arg, &len, &data);
   (void) bson_init_static(&tmp, data, len);
   bson_copy_to(&tmp, &b->group.spec);
   bson_iter_t it;
   bson_iter_init(&it, &b->group.spec);
   size_t n = bson_count_keys(&b->group.spec);
   b->group.fields = aspen_xcalloc(n ? n : 1, sizeof *b->group.fields);
   bool has_id = false;
   while (bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      if (strcmp(k, "_id") == 0) {
         if (has_id) {
            aspen_error_set(err, ASPEN_ERR_Location15948,
                            "a group's _id may only be specified once");
            blocking_destroy(st);
            return false;
         }
         if (!aspen_expr_parse(&it, NULL, &b->group.id, err)) {
            blocking_destroy(st);
            return false;
         }
         has_id = true;
         continue;
      }
      if (strchr(k, '.')) {
         aspen_error_set(err, ASPEN_ERR_FailedToParse,
                         "the group aggregate field name '%s' cannot be used "
                         "because $group's field names cannot contain '.'",
                         k);
         blocking_destroy(st);
         return false;
      }
      group_field_t *f = &b->group.fields[b->group.n_fields];
      if (!aspen_accum_parse(&it, &f->acc, err)) {
         blocking_destroy(st);
         return false;
      }
      f->name = aspen_xstrdup(k);
      b->group.n_fields++;
   }
   if (!has_id) {
      aspen_error_set(err, ASPEN_ERR_FailedToParse,
                      "a group specification must include an _id");
      blocking_destroy(st);
      return false;
   }
   return true;
}

static bool
sort_parse_spec(const bson_iter_t *arg, sort_spec_t *s, aspen_error_t *err)
{
   if (!BSON_ITER_HOLDS_DOCUMENT(arg)) {
      aspen_error_set(err, ASPEN_ERR_FailedToParse,
                      "the $sort key specification must be an object");
      return false;
   }
   bson_iter_t it;
   bson_iter_recurse(arg, &it);
   while (bson_iter_next(&it)) {
      int dir;
      if ((BSON_ITER_HOLDS_INT32(&it) || BSON_ITER_HOLDS_INT64(&it) ||
           BSON_ITER_HOLDS_DOUBLE(&it)) &&
          (bson_iter_as_int64(&it) == 1 || bson_iter_as_int64(&it) == -1)) {
         dir = (int) bson_iter_as_int64(&it);
      } else {
         aspen_error_set(err, ASPEN_ERR_FailedToParse,
                         "$sort key ordering must be 1 (for ascending) or -1 "
                         "(for descending)");
         return false;
      }
      s->paths = aspen_xrealloc(s->paths, (s->n + 1) * sizeof *s->paths);
      s->dirs = aspen_xrealloc(s->dirs, (s->n + 1) * sizeof *s->dirs);
      s->paths[s->n] = aspen_xstrdup(bson_iter_key(&it));
      s->dirs[s->n] = dir;
      s->n++;
   }
   if (s->n == 0) {
      aspen_error_set(err, ASPEN_ERR_FailedToParse,
                      "$sort stage must have at least one sort key");
      return false;
   }
   return true;
}

static bool
sort_parse(aspen_stage_t *st, const bson_iter_t *arg, aspen_parse_ctx_t *pc,
           aspen_error_t *err)
{
   (void) pc;
   block_spec_t *b = aspen_xcalloc(1, sizeof *b);
   b->kind = B_SORT;
   st->state = b;
   if (!sort_parse_spec(arg, &b->sort, err)) {
      blocking_destroy(st);
      return false;
   }
   return true;
}

static bool
limit_parse(aspen_stage_t *st, const bson_iter_t *arg, aspen_parse_ctx_t *pc,
            aspen_error_t *err)
{
   (void) pc;
   if (!BSON_ITER_HOLDS_NUMBER(arg) ||
       (BSON_ITER_HOLDS_DOUBLE(arg) &&
        bson_iter_double(arg) != (double) bson_iter_as_int64(arg))) {
      aspen_error_set(err, ASPEN_ERR_FailedToParse,
                      "invalid argument to $limit stage: Expected an integer");
      return false;
   }
   if (bson_iter_as_int64(arg) <= 0) {
      aspen_error_set(err, ASPEN_ERR_FailedToParse,
                      "invalid argument to $limit stage: Expected a positive "
                      "number");
      return false;
   }
   block_spec_t *b = aspen_xcalloc(1, sizeof *b);
   b->kind = B_LIMIT;
   b->limit = bson_iter_as_int64(arg);
   st->state = b;
   return true;
}

static bool
count_parse(aspen_stage_t *st, const bson_iter_t *arg, aspen_parse_ctx_t *pc,
            aspen_error_t *err)
{
   (void) pc;
   const char *f = BSON_ITER_HOLDS_UTF8(arg) ? bson_iter_utf8(arg, NULL) : NULL;
   if (!f) {
      aspen_error_set(err, ASPEN_ERR_FailedToParse,
                      "the count field must be a non-empty string");
      return false;
   }
   if (!*f) {
      aspen_error_set(err, ASPEN_ERR_FailedToParse,
                      "the count field must be a non-empty string");
      return false;
   }
   if (*f == '$') {
      aspen_error_set(err, ASPEN_ERR_FailedToParse,
                      "the count field cannot be a $-prefixed path");
      return false;
   }
   if (strchr(f, '.')) {
      aspen_error_set(err, ASPEN_ERR_FailedToParse,
                      "the count field cannot contain '.'");
      return false;
   }
   block_spec_t *b = aspen_xcalloc(1, sizeof *b);
   b->kind = B_COUNT;
   b->count_field = aspen_xstrdup(f);
   st->state = b;
   return true;
}

const aspen_stage_ops_t aspen_stage_group_ops = {
   .name = "$group",
   .operator_name = "GroupOperator",
   .parse = group_parse,
   .destroy = blocking_destroy,
};
const aspen_stage_ops_t aspen_stage_sort_ops = {
   .name = "$sort",
   .operator_name = "SortOperator",
   .parse = sort_parse,
   .destroy = blocking_destroy,
};
const aspen_stage_ops_t aspen_stage_limit_ops = {
   .name = "$limit",
   .operator_name = "LimitOperator",
   .parse = limit_parse,
   .destroy = blocking_destroy,
};
const aspen_stage_ops_t aspen_stage_count_ops = {
   .name = "$count",
   .operator_name = "GroupOperator",
   .parse = count_parse,
   .destroy = blocking_destroy,
};

static bool
is_blocking(const aspen_stage_t *st)
{
   return st->ops == &aspen_stage_group_ops || st->ops == &aspen_stage_sort_ops ||
          st->ops == &aspen_stage_limit_ops || st->ops == &aspen_stage_count_ops;
}

/* ---- documents lists -------------------------------------------------------- */

typedef struct {
   bson_t **docs;
   size_t n, cap;
} doclist_t;

static void
doclist_add(doclist_t *l, const bson_t *doc)
{
   if (l->n == l->cap) {
      l->cap = l->cap ? l->cap * 2 : 8;
      l->docs = aspen_xrealloc(l->docs, l->cap * sizeof *l->docs);
   }
   l->docs[l->n++] = bson_copy(doc);
}

static void
doclist_clear(doclist_t *l)
{
   for (size_t i = 0; i < l->n; i++) {
      bson_destroy(l->docs[i]);
   }
   free(l->docs);
   memset(l, 0, sizeof *l);
}

/* ---- group keys ----------------------------------------------------------------- */

/* Appends `v` with numbers made canonical, so that 1, 1.0 and NumberLong(1)
 * fall in the same group, as in MongoDB. */
static void
append_normalized(bson_t *out, const char *key, const bson_iter_t *it)
{
   switch (bson_iter_type(it)) {
   case BSON_TYPE_INT32:
   case BSON_TYPE_INT64:
      bson_append_int64(out, key, -1, bson_iter_as_int64(it));
      return;
   case BSON_TYPE_DOUBLE: {
      double d = bson_iter_double(it);
      if (d >= -9.2e18 && d <= 9.2e18 && d == (double) (int64_t) d) {
         bson_append_int64(out, key, -1, (int64_t) d);
      } else {
         bson_append_double(out, key, -1, d);
      }
      return;
   }
   case BSON_TYPE_UNDEFINED:
      bson_append_null(out, key, -1);
      return;
   case BSON_TYPE_DOCUMENT:
   case BSON_TYPE_ARRAY: {
      bson_t sub;
      bson_iter_t si;
      bool arr = BSON_ITER_HOLDS_ARRAY(it);
      if (arr) {
         bson_append_array_begin(out, key, -1, &sub);
      } else {
         bson_append_document_begin(out, key, -1, &sub);
      }
      bson_iter_recurse(it, &si);
      while (bson_iter_next(&si)) {
         append_normalized(&sub, bson_iter_key(&si), &si);
      }
      if (arr) {
         bson_append_array_end(out, &sub);
      } else {
         bson_append_document_end(out, &sub);
      }
      return;
   }
   default:
      bson_append_iter(out, key, -1, it);
   }
}

typedef struct {
   uint64_t hash;
   bson_t key;   /* {"": normalized _id} */
   bson_t id;    /* {"": _id as first seen} */
   aspen_accum_state_t **states;
} group_t;

/* Groups in insertion order, indexed by an open-addressing table of
 * positions + 1 (0 = empty). */
typedef struct {
   group_t **items;
   size_t n, cap;
   uint32_t *index;
   size_t index_size; /* a power of two */
} group_map_t;

/* ---- window instances ------------------------------------------------------------ */

/* The state of one open window's first blocking stage. */
typedef struct {
   group_map_t groups; /* B_GROUP */
   doclist_t docs;     /* B_SORT, B_LIMIT, and no blocking stage at all */
   int64_t count;      /* B_COUNT */
} block_state_t;

typedef struct {
   int64_t start, end;
   bson_t part_key;     /* session windows: {"": partition value} */
   int64_t last_ts;     /* session windows: latest event time */
   uint64_t first_seq;  /* pl->cur_seq of its first input (checkpoints) */
   block_state_t block;
   size_t bytes;        /* estimate for stateSize */
} win_t;

typedef enum { W_TUMBLING, W_HOPPING, W_SESSION } win_kind_t;

typedef struct {
   win_kind_t kind;
   int64_t size_ms, hop_ms, offset_ms, gap_ms;
   int64_t lateness_ms, idle_timeout_ms;
   bool processing_time;
   aspen_expr_t *partition_by;
   bson_t spec;              /* owned copy of the stage argument */

   aspen_stage_t *inner;     /* parsed inner stages */
   int n_inner;
   int first_block;          /* index of the first blocking stage or n */
   aspen_chain_t prefix;     /* inner[0 .. first_block) */
   aspen_chain_t *segments;  /* one per blocking stage: the stateless run after it */

   /* Run time. */
   win_t **wins;             /* open windows, sorted by (start, key) */
   size_t n_wins, cap_wins;
   int64_t watermark;        /* INT64_MIN until the first event */
   struct {
      int64_t id, wm, last_seen_ms;
   } *parts;                 /* per source partition (Kafka), else one */
   size_t n_parts;
   char source_type[32];
   win_t *feeding;           /* target of the prefix chain's terminal */
   aspen_stage_t *self;
   size_t state_bytes;
   bool collecting;          /* batch runs: terminal collects */
   doclist_t *collect;
} window_t;

static block_spec_t *
first_block_spec(const window_t *w)
{
   return w->first_block < w->n_inner ? w->inner[w->first_block].state : NULL;
}

static void
group_map_clear(group_map_t *m, const block_spec_t *b)
{
   for (size_t i = 0; i < m->n; i++) {
      group_t *g = m->items[i];
      for (size_t f = 0; f < b->group.n_fields; f++) {
         aspen_accum_state_destroy(b->group.fields[f].acc, g->states[f]);
      }
      free(g->states);
      bson_destroy(&g->key);
      bson_destroy(&g->id);
      free(g);
   }
   free(m->items);
   free(m->index);
   memset(m, 0, sizeof *m);
}

static void
win_block_destroy(window_t *w, win_t *win)
{
   block_spec_t *b = first_block_spec(w);
   if (b && b->kind == B_GROUP) {
      group_map_clear(&win->block.groups, b);
   }
   doclist_clear(&win->block.docs);
}

static void
win_free(window_t *w, win_t *win)
{
   win_block_destroy(w, win);
   bson_destroy(&win->part_key);
   free(win);
}

/* ---- groups ------------------------------------------------------------------- */

/* The group for `idv`; when it does not exist yet, NULL if `added_bytes` is
 * NULL, else a new one (its bytes added there). */
static group_t *
group_get(group_map_t *m, const block_spec_t *b, const aspen_value_t *idv,
          size_t *added_bytes)
{
   bson_t tmp = BSON_INITIALIZER, key = BSON_INITIALIZER;
   bson_iter_t it;
   aspen_value_t id = *idv;
   if (aspen_value_is_missing(&id)) {
      id = aspen_value_null(); /* a missing _id groups as null */
   }
   aspen_value_append(&tmp, "", 0, &id);
   bson_iter_init(&it, &tmp);
   bson_iter_next(&it);
   append_normalized(&key, "", &it);
   uint64_t h = aspen_hash_fnv1a(bson_get_data(&key), key.len);
   if (m->index_size) {
      size_t mask = m->index_size - 1;
      for (size_t i = h & mask; m->index[i]; i = (i + 1) & mask) {
         group_t *g = m->items[m->index[i] - 1];
         if (g->hash == h && g->key.len == key.len &&
             memcmp(bson_get_data(&g->key), bson_get_data(&key), key.len) ==
                0) {
            bson_destroy(&tmp);
            bson_destroy(&key);
            return g;
         }
      }
   }
   /* A new group. */
   if (!added_bytes) {
      bson_destroy(&tmp);
      bson_destroy(&key);
      return NULL;
   }
   if ((m->n + 1) * 2 > m->index_size) {
      size_t size = m->index_size ? m->index_size * 2 : 16;
      uint32_t *index = aspen_xcalloc(size, sizeof *index);
      for (size_t j = 0; j < m->n; j++) {
         size_t i = m->items[j]->hash & (size - 1);
         while (index[i]) {
            i = (i + 1) & (size - 1);
         }
         index[i] = (uint32_t) (j + 1);
      }
      free(m->index);
      m->index = index;
      m->index_size = size;
   }
   if (m->n == m->cap) {
      m->cap = m->cap ? m->cap * 2 : 8;
      m->items = aspen_xrealloc(m->items, m->cap * sizeof *m->items);
   }
   group_t *g = aspen_xcalloc(1, sizeof *g);
   g->hash = h;
   bson_steal(&g->key, &key);
   bson_steal(&g->id, &tmp);
   g->states = aspen_xcalloc(b->group.n_fields ? b->group.n_fields : 1,
                             sizeof *g->states);
   for (size_t f = 0; f < b->group.n_fields; f++) {
      g->states[f] = aspen_accum_state_new(b->group.fields[f].acc);
   }
   m->items[m->n] = g;
   size_t i = h & (m->index_size - 1);
   while (m->index[i]) {
      i = (i + 1) & (m->index_size - 1);
   }
   m->index[i] = (uint32_t) (m->n + 1);
   m->n++;
   *added_bytes += sizeof *g + g->key.len + g->id.len +
                   b->group.n_fields * sizeof *g->states;
   return g;
}

/* Absorbs one document into a group map; false with err to DLQ it. */
static bool
group_add(group_map_t *m, const block_spec_t *b, const aspen_sdoc_t *in,
          int64_t now_ms, size_t *added_bytes, aspen_error_t *err)
{
   aspen_expr_ctx_t ctx = {.root = in->doc, .meta = in->meta, .now_ms = now_ms};
   aspen_value_t idv;
   if (!aspen_expr_eval(b->group.id, &ctx, &idv, err)) {
      return false;
   }
   /* Every accumulator's input first, so a document refused by one of them
    * leaves no trace (not in the others, no empty new group). */
   group_t *g = group_get(m, b, &idv, NULL);
   size_t n = b->group.n_fields;
   aspen_accum_input_t stack_ins[16];
   aspen_accum_input_t *ins =
      n <= 16 ? stack_ins : aspen_xmalloc(n * sizeof *ins);
   bool ok = true;
   size_t f = 0;
   for (; f < n && ok; f++) {
      ok = aspen_accum_prepare(b->group.fields[f].acc, g ? g->states[f] : NULL,
                               &ctx, &ins[f], err);
   }
   if (ok) {
      if (!g) {
         g = group_get(m, b, &idv, added_bytes);
      }
      /* What the accumulators keep counts too ($push of $$ROOT grows by
       * the document); their size estimates are O(1). */
      for (f = 0; f < n; f++) {
         const aspen_accum_t *acc = b->group.fields[f].acc;
         size_t before = aspen_accum_state_size(acc, g->states[f]);
         aspen_accum_commit(acc, g->states[f], &ctx, &ins[f]);
         size_t after = aspen_accum_state_size(acc, g->states[f]);
         *added_bytes += after >= before ? after - before : 0;
      }
   } else {
      for (size_t j = 0; j + 1 < f; j++) {
         aspen_accum_input_discard(&ins[j]);
      }
   }
   aspen_value_destroy(&idv);
   if (ins != stack_ins) {
      free(ins);
   }
   return ok;
}

static void
group_results(const group_map_t *m, const block_spec_t *b, doclist_t *out)
{
   for (size_t i = 0; i < m->n; i++) {
      const group_t *g = m->items[i];
      bson_t doc = BSON_INITIALIZER;
      bson_iter_t it;
      bson_iter_init(&it, &g->id);
      bson_iter_next(&it);
      bson_append_iter(&doc, "_id", 3, &it);
      for (size_t f = 0; f < b->group.n_fields; f++) {
         aspen_accum_result(b->group.fields[f].acc, g->states[f], &doc,
                            b->group.fields[f].name);
      }
      doclist_add(out, &doc);
      bson_destroy(&doc);
   }
}

/* ---- sorting ------------------------------------------------------------------ */

static __thread const sort_spec_t *sort_current;

static int
sort_cmp(const void *pa, const void *pb)
{
   const bson_t *a = *(bson_t *const *) pa, *b = *(bson_t *const *) pb;
   for (size_t i = 0; i < sort_current->n; i++) {
      aspen_value_t va = aspen_expr_get_path(a, sort_current->paths[i]);
      aspen_value_t vb = aspen_expr_get_path(b, sort_current->paths[i]);
      int c = aspen_value_compare(&va, &vb);
      aspen_value_destroy(&va);
      aspen_value_destroy(&vb);
      if (c != 0) {
         return c * sort_current->dirs[i];
      }
   }
   return 0;
}

static void
sort_list(const sort_spec_t *s, doclist_t *l)
{
   /* qsort is not stable; ties keep no particular order, as in MongoDB. */
   sort_current = s;
   if (l->n > 1) {
      qsort(l->docs, l->n, sizeof *l->docs, sort_cmp);
   }
   sort_current = NULL;
}

/* ---- window metadata ---------------------------------------------------------- */

static void
window_meta(const window_t *w, const win_t *win, bson_t *meta)
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
   window_t *w = arg;
   win_t *win = w->feeding;
   block_spec_t *b = first_block_spec(w);
   aspen_pipeline_t *pl = w->self->pl;
   size_t before = win->bytes;
   if (!b || w->kind == W_SESSION) {
      /* Sessions keep their documents: an out-of-order document can join
       * two sessions into one, and lists merge where aggregates cannot. The
       * first blocking stage then runs over them at close. */
      doclist_add(&win->block.docs, doc->doc);
      win->bytes += doc->doc->len;
   } else {
      switch (b->kind) {
      case B_GROUP: {
         aspen_error_t err;
         size_t added = 0;
         if (!group_add(&win->block.groups, b, doc, pl->now_ms, &added,
                        &err)) {
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
         doclist_add(&win->block.docs, doc->doc);
         win->bytes += doc->doc->len;
         break;
      case B_LIMIT:
         if ((int64_t) win->block.docs.n < b->limit) {
            doclist_add(&win->block.docs, doc->doc);
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
   window_t *w = arg;
   doclist_add(w->collect, doc->doc);
}

static void
feed(window_t *w, win_t *win, const aspen_sdoc_t *in)
{
   bson_t meta;
   window_meta(w, win, &meta);
   aspen_sdoc_t d = *in;
   d.meta = &meta;
   w->feeding = win;
   aspen_chain_push(&w->prefix, 0, &d);
   w->feeding = NULL;
   bson_destroy(&meta);
}

/* ---- closing ------------------------------------------------------------------ */

/* Applies blocking stage `b` to a list in batch (after the first one). */
static void
batch_block(window_t *w, const block_spec_t *b, const bson_t *meta,
            doclist_t *l)
{
   aspen_pipeline_t *pl = w->self->pl;
   switch (b->kind) {
   case B_GROUP: {
      group_map_t m;
      doclist_t out;
      size_t added = 0;
      memset(&m, 0, sizeof m);
      memset(&out, 0, sizeof out);
      for (size_t i = 0; i < l->n; i++) {
         aspen_error_t err;
         aspen_sdoc_t d = {.doc = l->docs[i], .meta = meta};
         if (!group_add(&m, b, &d, pl->now_ms, &added, &err)) {
            char reason[ASPEN_ERROR_MSG_MAX + 64];
            snprintf(reason, sizeof reason,
                     "Failed to process input document in GroupOperator "
                     "with error: %s",
                     err.message);
            pl->dlq(pl->hook_arg, &d, "GroupOperator", reason);
         }
      }
      group_results(&m, b, &out);
      group_map_clear(&m, b);
      doclist_clear(l);
      *l = out;
      break;
   }
   case B_SORT:
      sort_list(&b->sort, l);
      break;
   case B_LIMIT:
      while ((int64_t) l->n > b->limit) {
         bson_destroy(l->docs[--l->n]);
      }
      break;
   case B_COUNT: {
      int64_t n = (int64_t) l->n;
      doclist_clear(l);
      if (n > 0) {
         bson_t doc = BSON_INITIALIZER;
         if (n <= INT32_MAX) {
            BSON_APPEND_INT32(&doc, b->count_field, (int32_t) n);
         } else {
            BSON_APPEND_INT64(&doc, b->count_field, n);
         }
         doclist_add(l, &doc);
         bson_destroy(&doc);
      }
      break;
   }
   }
}

static void
close_window(window_t *w, win_t *win)
{
   bson_t meta;
   window_meta(w, win, &meta);
   doclist_t l;
   memset(&l, 0, sizeof l);
   block_spec_t *b = first_block_spec(w);
   if (!b || w->kind == W_SESSION) {
      l = win->block.docs;
      memset(&win->block.docs, 0, sizeof win->block.docs);
   }
   if (b && w->kind == W_SESSION) {
      batch_block(w, b, &meta, &l);
   }
   if (b) {
      switch (w->kind == W_SESSION ? (block_kind_t) -1 : b->kind) {
      case B_GROUP:
         group_results(&win->block.groups, b, &l);
         break;
      case B_SORT:
         l = win->block.docs;
         memset(&win->block.docs, 0, sizeof win->block.docs);
         sort_list(&b->sort, &l);
         break;
      case B_LIMIT:
         l = win->block.docs;
         memset(&win->block.docs, 0, sizeof win->block.docs);
         break;
      case B_COUNT:
         if (win->block.count > 0) {
            bson_t doc = BSON_INITIALIZER;
            BSON_APPEND_INT32(&doc, b->count_field, (int32_t) win->block.count);
            doclist_add(&l, &doc);
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
            doclist_t next;
            memset(&next, 0, sizeof next);
            w->collect = &next;
            for (size_t j = 0; j < l.n; j++) {
               aspen_sdoc_t d = {.doc = l.docs[j], .meta = &meta,
                                 .ts_ms = win->end - 1};
               aspen_chain_push(chain, 0, &d);
            }
            w->collect = NULL;
            doclist_clear(&l);
            l = next;
         }
         i += 1 + chain->n;
         if (i < w->n_inner) {
            batch_block(w, w->inner[i].state, &meta, &l);
         }
      }
   }
   for (size_t j = 0; j < l.n; j++) {
      aspen_sdoc_t d = {.doc = l.docs[j], .meta = &meta,
                        .ts_ms = win->end - 1};
      aspen_stage_emit(w->self, &d);
   }
   doclist_clear(&l);
   bson_destroy(&meta);
   w->state_bytes -= win->bytes < w->state_bytes ? win->bytes : w->state_bytes;
}

/* Closes, in start order, every window for which `ready` holds. */
static void
close_where(window_t *w, bool (*ready)(const window_t *, const win_t *,
                                       int64_t),
            int64_t arg)
{
   size_t kept = 0;
   /* Close first (in order), then compact: closing emits downstream, which
    * never re-enters this window stage. */
   for (size_t i = 0; i < w->n_wins; i++) {
      win_t *win = w->wins[i];
      if (ready(w, win, arg)) {
         close_window(w, win);
         win_free(w, win);
      } else {
         w->wins[kept++] = win;
      }
   }
   w->n_wins = kept;
   w->self->pl->window_bytes = w->state_bytes;
   aspen__pipeline_state_update(w->self->pl);
}

static bool
ready_by_watermark(const window_t *w, const win_t *win, int64_t wm)
{
   return wm != INT64_MIN && wm - w->lateness_ms >= win->end;
}

static bool
ready_by_clock(const window_t *w, const win_t *win, int64_t now)
{
   (void) w;
   return now >= win->end;
}

static bool
ready_by_idle(const window_t *w, const win_t *win, int64_t idle)
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

static win_t *
find_or_open(window_t *w, int64_t start, int64_t end)
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
   win_t *win = aspen_xcalloc(1, sizeof *win);
   win->start = start;
   win->end = end;
   win->first_seq = w->self->pl->cur_seq;
   bson_init(&win->part_key);
   w->wins[i] = win;
   w->n_wins++;
   return win;
}

/* A new session window (sessions of different partitions may share a
 * start, so no lookup by start). */
static win_t *
open_session(window_t *w, int64_t start, int64_t end)
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
   win_t *win = aspen_xcalloc(1, sizeof *win);
   win->start = start;
   win->end = end;
   win->first_seq = w->self->pl->cur_seq;
   bson_init(&win->part_key);
   w->wins[i] = win;
   w->n_wins++;
   return win;
}

static void
dlq_late(window_t *w, const aspen_sdoc_t *in, const int64_t *missed,
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
remember_source_type(window_t *w, const aspen_sdoc_t *in)
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

/* The source partition of a document (Kafka), 0 for unpartitioned sources. */
static int64_t
partition_of(const aspen_sdoc_t *in)
{
   bson_iter_t it, found;
   if (in->meta && bson_iter_init(&it, in->meta) &&
       bson_iter_find_descendant(&it, "source.partition", &found) &&
       BSON_ITER_HOLDS_NUMBER(&found)) {
      return bson_iter_as_int64(&found);
   }
   return 0;
}

/* Per-partition watermarks: each partition's is its largest event time
 * minus 1 ms; the window's moves to the minimum over partitions that are
 * not idle (partitionIdleTimeout), and never back. */
static void
observe_partition(window_t *w, int64_t part, int64_t t, int64_t wall_ms)
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
partitions_watermark(const window_t *w, int64_t wall_ms)
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
advance_watermark(window_t *w, int64_t t)
{
   if (w->watermark == INT64_MIN || t - 1 > w->watermark) {
      w->watermark = t - 1;
      atomic_store(&w->self->pl->watermark_ms, w->watermark);
   }
}

static bool
push_fixed(window_t *w, const aspen_sdoc_t *in, int64_t t)
{
   int64_t threshold = w->processing_time || w->watermark == INT64_MIN
                          ? INT64_MIN
                          : w->watermark - w->lateness_ms;
   int64_t step = w->kind == W_HOPPING ? w->hop_ms : w->size_ms;
   /* Starts k*step + offset with start <= t < start + size. */
   int64_t last = floor_div(t - w->offset_ms, step) * step + w->offset_ms;
   int64_t first = last;
   while (first - step + w->size_ms > t) {
      first -= step;
   }
   size_t max = (size_t) ((last - first) / step) + 1;
   int64_t missed_local[64];
   win_t *targets_local[64];
   int64_t *missed = max <= 64 ? missed_local
                               : aspen_xmalloc(max * sizeof *missed);
   win_t **targets = max <= 64 ? targets_local
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
   if (missed != missed_local) {
      free(missed);
      free(targets);
   }
   return true;
}

static bool
push_session(window_t *w, const aspen_sdoc_t *in, int64_t t,
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
   append_normalized(&norm, "", &it);
   /* Sessions of this partition that the event touches: [start - gap,
    * last + gap). Merge them all into one. */
   win_t *target = NULL;
   for (size_t i = 0; i < w->n_wins; i++) {
      win_t *win = w->wins[i];
      bson_t wn = BSON_INITIALIZER;
      bson_iter_t wi;
      bson_iter_init(&wi, &win->part_key);
      bson_iter_next(&wi);
      append_normalized(&wn, "", &wi);
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
      doclist_t *from = &win->block.docs, *into = &target->block.docs;
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
   return true;
}

/* ---- the stage ------------------------------------------------------------------ */

static bool
window_push(aspen_stage_t *st, const aspen_sdoc_t *in, aspen_error_t *err)
{
   window_t *w = st->state;
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
   pl->window_bytes = w->state_bytes;
   aspen__pipeline_state_update(pl);
   return true;
}

/* Every source document moves the watermark, whether or not it reaches the
 * window (a $match before the window may drop it). Windows the new
 * watermark closes are closed before the document is assigned. */
static void
window_observe(aspen_stage_t *st, const aspen_sdoc_t *in)
{
   window_t *w = st->state;
   aspen_pipeline_t *pl = st->pl;
   if (w->processing_time) {
      advance_watermark(w, pl->now_ms);
      close_where(w, ready_by_clock, pl->now_ms);
      return;
   }
   observe_partition(w, partition_of(in), in->ts_ms, pl->now_ms);
   int64_t pwm = partitions_watermark(w, pl->now_ms);
   if (pwm == INT64_MIN) {
      return;
   }
   /* Closing now cannot close this document's own windows: they end after
    * its event time, and the new watermark is at most that time - 1. */
   advance_watermark(w, pwm + 1);
   close_where(w, ready_by_watermark, w->watermark);
}

static void
window_tick(aspen_stage_t *st, int64_t now_ms, int64_t idle_ms)
{
   window_t *w = st->state;
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
   window_t *w = st->state;
   for (size_t i = 0; i < w->n_wins; i++) {
      win_free(w, w->wins[i]);
   }
   w->n_wins = 0;
   w->state_bytes = 0;
   st->pl->window_bytes = 0;
   aspen__pipeline_state_update(st->pl);
}

static void
window_destroy(aspen_stage_t *st)
{
   window_t *w = st->state;
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

static bool
window_fail(aspen_stage_t *st, aspen_error_t *err, const char *fmt, ...)
   __attribute__((format(printf, 3, 4)));

static bool
window_fail(aspen_stage_t *st, aspen_error_t *err, const char *fmt, ...)
{
   char msg[ASPEN_ERROR_MSG_MAX];
   va_list ap;
   va_start(ap, fmt);
   vsnprintf(msg, sizeof msg, fmt, ap);
   va_end(ap);
   aspen_error_set(err, ASPEN_ERR_StreamProcessorInvalidOptions, "%s", msg);
   window_destroy(st);
   return false;
}

static bool
window_parse(aspen_stage_t *st, const bson_iter_t *arg, aspen_parse_ctx_t *pc,
             aspen_error_t *err)
{
   const char *name = st->ops->name;
   if (!BSON_ITER_HOLDS_DOCUMENT(arg)) {
      aspen_error_set(err, ASPEN_ERR_StreamProcessorInvalidOptions,
                      "%s must be an object", name);
      return false;
   }
   window_t *w = aspen_xcalloc(1, sizeof *w);
   st->state = w;
   w->self = st;
   w->watermark = INT64_MIN;
   w->kind = strcmp(name, "$hoppingWindow") == 0   ? W_HOPPING
             : strcmp(name, "$sessionWindow") == 0 ? W_SESSION
                                                    : W_TUMBLING;
   w->lateness_ms = 3 * MS_PER_SECOND; /* ASP's default */
   uint32_t len;
   const uint8_t *data;
   bson_t tmp;
   bson_iter_document(arg, &len, &data);
   (void) bson_init_static(&tmp, data, len);
   bson_copy_to(&tmp, &w->spec);

   bool has_interval = false, has_hop = false, has_gap = false;
   bool has_lateness = false, has_idle = false, has_pipeline = false;
   bson_iter_t it, pipeline_it;
   bson_iter_init(&it, &w->spec);
   while (bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      if (strcmp(k, "interval") == 0 && w->kind != W_SESSION) {
         if (!parse_duration(&it, "interval", false, NULL, &w->size_ms, err)) {
            window_destroy(st);
            return false;
         }
         if (w->size_ms <= 0) {
            return window_fail(st, err,
                               "Window interval size must be greater than 0.");
         }
         has_interval = true;
      } else if (strcmp(k, "hopSize") == 0 && w->kind == W_HOPPING) {
         if (!parse_duration(&it, "hopSize", false, NULL, &w->hop_ms, err)) {
            window_destroy(st);
            return false;
         }
         if (w->hop_ms <= 0) {
            return window_fail(st, err,
                               "Window hopSize size must be greater than 0.");
         }
         has_hop = true;
      } else if (strcmp(k, "gap") == 0 && w->kind == W_SESSION) {
         if (!parse_duration(&it, "gap", false, NULL, &w->gap_ms, err)) {
            window_destroy(st);
            return false;
         }
         if (w->gap_ms <= 0) {
            return window_fail(st, err,
                               "Window gap size must be greater than 0.");
         }
         has_gap = true;
      } else if (strcmp(k, "partitionBy") == 0 && w->kind == W_SESSION) {
         if (!aspen_expr_parse(&it, NULL, &w->partition_by, err)) {
            window_destroy(st);
            return false;
         }
      } else if (strcmp(k, "offset") == 0 && w->kind != W_SESSION) {
         if (!BSON_ITER_HOLDS_DOCUMENT(&it)) {
            return window_fail(st, err,
                               "offset must be an object {offsetFromUtc, "
                               "unit}");
         }
         bson_iter_t oi;
         int64_t amount = 0, ms = 0;
         const char *unit = NULL;
         bool has_amount = false;
         bson_iter_recurse(&it, &oi);
         while (bson_iter_next(&oi)) {
            const char *ok = bson_iter_key(&oi);
            if (strcmp(ok, "offsetFromUtc") == 0 && BSON_ITER_HOLDS_NUMBER(&oi)) {
               amount = bson_iter_as_int64(&oi);
               has_amount = true;
            } else if (strcmp(ok, "unit") == 0 && BSON_ITER_HOLDS_UTF8(&oi)) {
               unit = bson_iter_utf8(&oi, NULL);
            } else {
               return window_fail(st, err,
                                  "BSON field 'offset.%s' is an unknown "
                                  "field or has the wrong type.",
                                  ok);
            }
         }
         if (!has_amount || !unit || !unit_ms(unit, &ms) ||
             strcmp(unit, "day") == 0) {
            return window_fail(st, err,
                               "offset requires offsetFromUtc and a unit of "
                               "ms, second, minute or hour");
         }
         w->offset_ms = amount * ms;
      } else if (strcmp(k, "allowedLateness") == 0) {
         if (!parse_duration(&it, "allowedLateness", true,
                             "Must specify unit and size for non-zero allowed "
                             "lateness values",
                             &w->lateness_ms, err)) {
            window_destroy(st);
            return false;
         }
         if (w->lateness_ms > MAX_LATENESS_MS) {
            return window_fail(st, err, "Maximum allowedLateness is 30 minutes");
         }
         if (w->lateness_ms < 0) {
            return window_fail(st, err,
                               "allowedLateness must not be negative");
         }
         has_lateness = true;
      } else if (strcmp(k, "idleTimeout") == 0 && w->kind != W_SESSION) {
         if (!parse_duration(&it, "idleTimeout", true,
                             "Must specify unit and size for non-zero idle "
                             "timeout values",
                             &w->idle_timeout_ms, err)) {
            window_destroy(st);
            return false;
         }
         has_idle = true;
      } else if (strcmp(k, "boundary") == 0) {
         const char *b = BSON_ITER_HOLDS_UTF8(&it) ? bson_iter_utf8(&it, NULL)
                                                   : "";
         if (strcmp(b, "processingTime") == 0) {
            w->processing_time = true;
         } else if (strcmp(b, "eventTime") != 0) {
            return window_fail(st, err,
                               "Enumeration value '%s' for field 'boundary' "
                               "is not a valid value.",
                               b);
         }
      } else if (strcmp(k, "pipeline") == 0) {
         if (!BSON_ITER_HOLDS_ARRAY(&it)) {
            return window_fail(st, err, "%s.pipeline must be an array", name);
         }
         pipeline_it = it;
         has_pipeline = true;
      } else {
         return window_fail(st, err, "BSON field '%s.%s' is an unknown field.",
                            name, k);
      }
   }
   if (w->kind != W_SESSION && !has_interval) {
      return window_fail(st, err,
                         "BSON field '%s.interval' is missing but a required "
                         "field",
                         name);
   }
   if (w->kind == W_HOPPING && !has_hop) {
      return window_fail(st, err,
                         "BSON field '$hoppingWindow.hopSize' is missing but "
                         "a required field");
   }
   if (w->kind == W_SESSION && !w->partition_by) {
      return window_fail(st, err,
                         "BSON field '$sessionWindow.partitionBy' is missing "
                         "but a required field");
   }
   if (w->kind == W_SESSION && !has_gap) {
      return window_fail(st, err,
                         "BSON field '$sessionWindow.gap' is missing but a "
                         "required field");
   }
   if (!has_pipeline) {
      return window_fail(st, err,
                         "BSON field '%s.pipeline' is missing but a required "
                         "field",
                         name);
   }
   if (w->processing_time && (has_lateness || has_idle)) {
      return window_fail(st, err,
                         "idleTimeout and allowedLateness are not allowed "
                         "with boundary: processingTime");
   }
   if (w->processing_time) {
      w->lateness_ms = 0;
   }
   /* The inner pipeline. */
   bson_t inner;
   bson_iter_array(&pipeline_it, &len, &data);
   (void) bson_init_static(&inner, data, len);
   aspen_parse_ctx_t ipc = *pc;
   ipc.in_window = true;
   if (!aspen_pipeline_parse_stages(st->pl, &inner, &ipc, &w->inner,
                                    &w->n_inner, err)) {
      window_destroy(st);
      return false;
   }
   w->first_block = w->n_inner;
   int n_blocks = 0;
   for (int i = 0; i < w->n_inner; i++) {
      if (is_blocking(&w->inner[i])) {
         if (w->first_block == w->n_inner) {
            w->first_block = i;
         }
         n_blocks++;
      }
   }
   if (w->kind == W_SESSION) {
      bool has_group_or_sort = false;
      for (int i = 0; i < w->n_inner; i++) {
         if (w->inner[i].ops == &aspen_stage_group_ops ||
             w->inner[i].ops == &aspen_stage_sort_ops) {
            has_group_or_sort = true;
         } else if (w->inner[i].ops == &aspen_stage_limit_ops &&
                    !has_group_or_sort) {
            return window_fail(st, err,
                               "The $sessionWindow.pipeline isn't supported, "
                               "$limit may not come before $group or $sort");
         }
      }
      if (!has_group_or_sort) {
         return window_fail(st, err,
                            "The $sessionWindow.pipeline isn't supported, it "
                            "must contain a $group or $sort stage");
      }
   }
   /* Chains: the prefix, then one stateless run after each blocking stage. */
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
      while (j < w->n_inner && !is_blocking(&w->inner[j])) {
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

int64_t
aspen__window_fanout(const aspen_stage_t *st)
{
   const window_t *w = st->state;
   if (w->kind != W_HOPPING || w->hop_ms >= w->size_ms) {
      return 1;
   }
   return (w->size_ms + w->hop_ms - 1) / w->hop_ms;
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
   const window_t *w = st->state;
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
restore_partition(window_t *w, int64_t id, int64_t wm)
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
 * 256, as ever). The stage's own watermark is the checkpoint's
 * "watermark", which the processor writes for every pipeline. */
static void
window_checkpoint_save(const aspen_stage_t *st, bson_t *body)
{
   const window_t *w = st->state;
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
   window_t *w = st->state;
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
                        replayed ? INT64_MIN : aspen_bson_int64(&e, "wm", INT64_MIN));
   }
}

#define WINDOW_OPS(stage)                                                      \
   .name = stage, .operator_name = "WindowOperator", .parse = window_parse,    \
   .push = window_push, .destroy = window_destroy, .tick = window_tick,        \
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
