/*
 * window_block.c - the blocking stages of a window's inner pipeline:
 * $group, $sort, $limit and $count (window_int.h). Each parses as a stage
 * of the inner pipeline; the window (window.c) runs it over every open
 * window's documents and, at close, hands its output to the rest of the
 * inner pipeline. $group keeps one accumulator state per key (not the
 * documents), in insertion order behind a hash index; $sort sorts the
 * window's documents as MongoDB orders values.
 */
#include "bsonw.h"
#include "hash.h"
#include "stages/window_int.h"

#include <stdlib.h>
#include <string.h>

/* ---- window-only stages (parsed here, run by the window) ----------------- */






static void
block_spec_destroy(aspen_block_spec_t *b)
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

/* The argument of an accumulator {$op: "$a.b"} when it is a plain field
 * path (deterministic, read as a view into the document), else NULL. */
static const char *
field_path_arg(const bson_iter_t *it, uint32_t *len)
{
   bson_iter_t si;
   *len = 0;
   if (!BSON_ITER_HOLDS_DOCUMENT(it) || !bson_iter_recurse(it, &si) ||
       !bson_iter_next(&si) || !BSON_ITER_HOLDS_UTF8(&si)) {
      return NULL;
   }
   const char *path = bson_iter_utf8(&si, len);
   if (*len < 2 || path[0] != '$' || path[1] == '$' || bson_iter_next(&si)) {
      return NULL;
   }
   return path;
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
   aspen_block_spec_t *b = aspen_xcalloc(1, sizeof *b);
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
      aspen_group_field_t *f = &b->group.fields[b->group.n_fields];
      if (!aspen_accum_parse(&it, &f->acc, err)) {
         blocking_destroy(st);
         return false;
      }
      f->name = aspen_xstrdup(k);
      /* Accumulators over the same field path ({$avg: "$v"}, {$max:
       * "$v"}) share one evaluation per document. */
      f->same_as = -1;
      f->path = field_path_arg(&it, &f->path_len);
      for (size_t j = 0; j < b->group.n_fields && f->path; j++) {
         const aspen_group_field_t *o = &b->group.fields[j];
         if (o->path && o->path_len == f->path_len &&
             memcmp(o->path, f->path, f->path_len) == 0) {
            f->same_as = (int) j;
            break;
         }
      }
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
sort_parse_spec(const bson_iter_t *arg, aspen_sort_spec_t *s,
                aspen_error_t *err)
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
   aspen_block_spec_t *b = aspen_xcalloc(1, sizeof *b);
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
   aspen_block_spec_t *b = aspen_xcalloc(1, sizeof *b);
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
   aspen_block_spec_t *b = aspen_xcalloc(1, sizeof *b);
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

bool
aspen__window_block_is(const aspen_stage_t *st)
{
   return st->ops == &aspen_stage_group_ops ||
          st->ops == &aspen_stage_sort_ops ||
          st->ops == &aspen_stage_limit_ops ||
          st->ops == &aspen_stage_count_ops;
}

/* ---- documents lists -------------------------------------------------------- */


void
aspen__window_block_list_add(aspen_doclist_t *l, const bson_t *doc)
{
   if (l->n == l->cap) {
      l->cap = l->cap ? l->cap * 2 : 8;
      l->docs = aspen_xrealloc(l->docs, l->cap * sizeof *l->docs);
   }
   l->docs[l->n++] = bson_copy(doc);
}

void
aspen__window_block_list_clear(aspen_doclist_t *l)
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
void
aspen__window_block_append_normalized(bson_t *out, const char *key,
                                      const bson_iter_t *it)
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
         aspen__window_block_append_normalized(&sub, bson_iter_key(&si), &si);
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



void
aspen__window_block_groups_clear(aspen_group_map_t *m,
                                 const aspen_block_spec_t *b)
{
   for (size_t i = 0; i < m->n; i++) {
      aspen_group_t *g = m->items[i];
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
   aspen_bsonw_cleanup(&m->scratch);
   memset(m, 0, sizeof *m);
}

/* ---- groups ------------------------------------------------------------------- */

/* The group for `idv`; when it does not exist yet, NULL if `added_bytes` is
 * NULL, else a new one (its bytes added there). */
/* Writes the normalized group key {"": id} into `kw`: the bytes
 * aspen__window_block_append_normalized writes, with numbers, strings and
 * the other scalars encoded directly, without temporary documents. */
static void
group_key(aspen_bsonw_t *kw, const aspen_value_t *id)
{
   const bson_value_t *v = &id->v;
   bson_value_t nv;
   aspen_bsonw_reset(kw);
   switch (v->value_type) {
   case BSON_TYPE_INT32:
      nv.value_type = BSON_TYPE_INT64;
      nv.value.v_int64 = v->value.v_int32;
      aspen_bsonw_value(kw, "", 0, &nv);
      return;
   case BSON_TYPE_INT64:
      aspen_bsonw_value(kw, "", 0, v);
      return;
   case BSON_TYPE_DOUBLE: {
      double d = v->value.v_double;
      if (d >= -9.2e18 && d <= 9.2e18 && d == (double) (int64_t) d) {
         nv.value_type = BSON_TYPE_INT64;
         nv.value.v_int64 = (int64_t) d;
         aspen_bsonw_value(kw, "", 0, &nv);
      } else {
         aspen_bsonw_value(kw, "", 0, v);
      }
      return;
   }
   case BSON_TYPE_EOD: /* a missing _id groups as null */
   case BSON_TYPE_UNDEFINED:
   case BSON_TYPE_NULL:
      nv.value_type = BSON_TYPE_NULL;
      aspen_bsonw_value(kw, "", 0, &nv);
      return;
   case BSON_TYPE_DOCUMENT:
   case BSON_TYPE_ARRAY: {
      bson_t tmp = BSON_INITIALIZER, key = BSON_INITIALIZER;
      bson_iter_t it;
      aspen_value_append(&tmp, "", 0, id);
      if (bson_iter_init(&it, &tmp) && bson_iter_next(&it)) {
         aspen__window_block_append_normalized(&key, "", &it);
         bson_iter_init(&it, &key);
         if (bson_iter_next(&it)) {
            aspen_bsonw_element(kw, &it);
         }
      }
      bson_destroy(&tmp);
      bson_destroy(&key);
      return;
   }
   default:
      aspen_bsonw_value(kw, "", 0, v);
      return;
   }
}

/* The group for `idv`; when it does not exist yet, NULL if `added_bytes` is
 * NULL, else a new one (its bytes added there). */
aspen_group_t *
aspen__window_block_group_get(aspen_group_map_t *m,
                              const aspen_block_spec_t *b,
                              const aspen_value_t *idv, size_t *added_bytes)
{
   bson_t key;
   group_key(&m->scratch, idv);
   (void) aspen_bsonw_finish(&m->scratch, &key);
   const uint8_t *kd = bson_get_data(&key);
   uint64_t h = aspen_hash_fnv1a(kd, key.len);
   if (m->index_size) {
      size_t mask = m->index_size - 1;
      for (size_t i = h & mask; m->index[i]; i = (i + 1) & mask) {
         aspen_group_t *g = m->items[m->index[i] - 1];
         if (g->hash == h && g->key.len == key.len &&
             memcmp(bson_get_data(&g->key), kd, key.len) == 0) {
            return g;
         }
      }
   }
   /* A new group. */
   if (!added_bytes) {
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
   aspen_group_t *g = aspen_xcalloc(1, sizeof *g);
   g->hash = h;
   bson_copy_to(&key, &g->key);
   bson_init(&g->id);
   aspen_value_t id = *idv;
   if (aspen_value_is_missing(&id)) {
      id = aspen_value_null(); /* a missing _id groups as null */
   }
   aspen_value_append(&g->id, "", 0, &id);
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
bool
aspen__window_block_group_add(aspen_group_map_t *m,
                              const aspen_block_spec_t *b,
                              const aspen_sdoc_t *in, int64_t now_ms,
                              size_t *added_bytes, aspen_error_t *err)
{
   aspen_expr_ctx_t ctx = {.root = in->doc, .meta = in->meta, .now_ms = now_ms};
   aspen_value_t idv;
   if (!aspen_expr_eval(b->group.id, &ctx, &idv, err)) {
      return false;
   }
   /* Every accumulator's input first, so a document refused by one of them
    * leaves no trace (not in the others, no empty new group). */
   aspen_group_t *g = aspen__window_block_group_get(m, b, &idv, NULL);
   size_t n = b->group.n_fields;
   aspen_accum_input_t stack_ins[16];
   aspen_accum_input_t *ins =
      n <= 16 ? stack_ins : aspen_xmalloc(n * sizeof *ins);
   bool ok = true;
   size_t f = 0;
   for (; f < n && ok; f++) {
      const aspen_group_field_t *gf = &b->group.fields[f];
      aspen_accum_state_t *gs = g ? g->states[f] : NULL;
      int j = gf->same_as;
      if (j >= 0 && !ins[j].skip && !ins[j].val.owned) {
         /* The same field path, already read: its view is shared. */
         ok = aspen_accum_prepare_given(gf->acc, gs, &ins[j].val, &ins[f],
                                        err);
      } else {
         ok = aspen_accum_prepare(gf->acc, gs, &ctx, &ins[f], err);
      }
   }
   if (ok) {
      if (!g) {
         g = aspen__window_block_group_get(m, b, &idv, added_bytes);
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

void
aspen__window_block_group_results(const aspen_group_map_t *m,
                                  const aspen_block_spec_t *b,
                                  aspen_doclist_t *out)
{
   for (size_t i = 0; i < m->n; i++) {
      const aspen_group_t *g = m->items[i];
      bson_t doc = BSON_INITIALIZER;
      bson_iter_t it;
      bson_iter_init(&it, &g->id);
      bson_iter_next(&it);
      bson_append_iter(&doc, "_id", 3, &it);
      for (size_t f = 0; f < b->group.n_fields; f++) {
         aspen_accum_result(b->group.fields[f].acc, g->states[f], &doc,
                            b->group.fields[f].name);
      }
      aspen__window_block_list_add(out, &doc);
      bson_destroy(&doc);
   }
}

/* ---- sorting ------------------------------------------------------------------ */

static __thread const aspen_sort_spec_t *sort_current;

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

void
aspen__window_block_sort(const aspen_sort_spec_t *s, aspen_doclist_t *l)
{
   /* qsort is not stable; ties keep no particular order, as in MongoDB. */
   sort_current = s;
   if (l->n > 1) {
      qsort(l->docs, l->n, sizeof *l->docs, sort_cmp);
   }
   sort_current = NULL;
}

