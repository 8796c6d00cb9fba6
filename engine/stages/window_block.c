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
#include "lang/decimal.h"
#include "stages/window_int.h"

#include <math.h>
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
   aspen_expr_paths_destroy(b->group.paths);
   free(b->group.state_off);
   free(b->group.field_top);
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

/* The slot of top-level name `name` (a "$name" path: `len` bytes with
 * the '$'), added if new; -1 if it has a dot or a NUL (the general path
 * then reads it as expressions do) or the slots are full. */
static int
top_slot(aspen_group_spec_t *gs, const char *path, uint32_t len)
{
   if (len < 2 || path[0] != '$' || path[1] == '$' ||
       memchr(path, '.', len) || memchr(path, '\0', len)) {
      return -1;
   }
   for (uint32_t i = 0; i < gs->n_top; i++) {
      if (gs->top_len[i] == len - 1 &&
          memcmp(gs->top_name[i], path + 1, len - 1) == 0) {
         return (int) i;
      }
   }
   if (gs->n_top == ASPEN_GROUP_TOP_MAX) {
      return -1;
   }
   gs->top_name[gs->n_top] = path + 1;
   gs->top_len[gs->n_top] = len - 1;
   return (int) gs->n_top++;
}

/* Decides whether the group's inputs take the top-level scan
 * (aspen_group_spec_t's top_only): _id a "$name" string (`id_it`), each
 * accumulator's argument one too or none. */
static void
top_names(aspen_group_spec_t *gs, const bson_iter_t *id_it)
{
   gs->field_top = aspen_xcalloc(gs->n_fields ? gs->n_fields : 1,
                                 sizeof *gs->field_top);
   gs->top_only = false;
   if (!BSON_ITER_HOLDS_UTF8(id_it)) {
      return;
   }
   uint32_t len;
   const char *id = bson_iter_utf8(id_it, &len);
   gs->id_top = top_slot(gs, id, len);
   if (gs->id_top < 0) {
      return;
   }
   for (size_t f = 0; f < gs->n_fields; f++) {
      const aspen_group_field_t *gf = &gs->fields[f];
      if (!aspen_accum_arg(gf->acc)) {
         gs->field_top[f] = -1; /* $count: no input to read */
         continue;
      }
      gs->field_top[f] = gf->path ? top_slot(gs, gf->path, gf->path_len) : -1;
      if (gs->field_top[f] < 0) {
         return;
      }
   }
   gs->top_only = true;
}

/* What parsing leaves ready for the documents: the field paths that _id
 * and the accumulators read, given slots in one table; and a group's block
 * (window_int.h): its header, the state pointers, then each state at a
 * 16-byte boundary. */
static void
group_layout(aspen_group_spec_t *gs, const bson_iter_t *id_it)
{
   gs->paths = aspen_expr_paths_new();
   aspen_expr_paths_add(gs->paths, gs->id);
   for (size_t f = 0; f < gs->n_fields; f++) {
      aspen_expr_t *arg = aspen_accum_arg(gs->fields[f].acc);
      if (arg) {
         aspen_expr_paths_add(gs->paths, arg);
      }
      gs->fields[f].grows = aspen_accum_state_grows(gs->fields[f].acc);
   }
   if (aspen_expr_paths_count(gs->paths) == 0) {
      aspen_expr_paths_destroy(gs->paths);
      gs->paths = NULL;
   }
   top_names(gs, id_it);
   gs->state_off = aspen_xcalloc(gs->n_fields ? gs->n_fields : 1,
                                 sizeof *gs->state_off);
   size_t off = sizeof(aspen_group_t) +
                gs->n_fields * sizeof(aspen_accum_state_t *);
   for (size_t f = 0; f < gs->n_fields; f++) {
      off = (off + 15) & ~(size_t) 15;
      gs->state_off[f] = off;
      off += aspen_accum_state_bytes(gs->fields[f].acc);
   }
   gs->states_end = off;
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
   bson_iter_t id_it;
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
         id_it = it;
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
   group_layout(&b->group, &id_it);
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

/* Every NaN (any payload, either sign, a decimal's) groups as this one, as
 * MongoDB's comparison takes all NaNs as equal. */
static const uint64_t group_nan_bits = 0x7ff8000000000000ull;

/* A double's key value: an integral one within int64 as that integer,
 * every NaN as one. */
static void
append_double_normalized(bson_t *out, const char *key, double d)
{
   if (d >= -9.2e18 && d <= 9.2e18 && d == (double) (int64_t) d) {
      bson_append_int64(out, key, -1, (int64_t) d);
   } else if (d != d) {
      double nan;
      memcpy(&nan, &group_nan_bits, 8);
      bson_append_double(out, key, -1, nan);
   } else {
      bson_append_double(out, key, -1, d);
   }
}

/* A decimal's key value: the double or integer of the same numeric value
 * when one exists (NumberDecimal("1") groups with 1, "0.5" with 0.5, NaN
 * and the infinities with the doubles'), else the decimal itself (0.1 as
 * a decimal is not the double 0.1, so it groups apart, as in MongoDB). A
 * double is taken only when it has at most 16 binary digits after the
 * point and a 53-bit scaled value, or is an integer up to 2^100: its exact
 * decimal expansion then has at most 31 significant digits, so the
 * 34-digit conversion back is exact and the comparison proves equality. */
static void
append_decimal_normalized(bson_t *out, const char *key, const bson_iter_t *it)
{
   bson_decimal128_t raw;
   bson_iter_decimal128(it, &raw);
   aspen_dec_t d = aspen__decimal_from_bson(&raw);
   int64_t i;
   if (aspen__decimal_is_nan(d) || aspen__decimal_is_inf(d)) {
      append_double_normalized(out, key, aspen__decimal_to_double(d));
      return;
   }
   if (aspen__decimal_to_int64(d, &i) &&
       aspen__decimal_cmp(aspen__decimal_from_int64(i), d) == 0) {
      bson_append_int64(out, key, -1, i);
      return;
   }
   double x = aspen__decimal_to_double(d);
   double scaled = ldexp(x, 16);
   bool short_expansion =
      (fabs(scaled) <= 0x1p53 && scaled == trunc(scaled)) ||
      (fabs(x) <= 0x1p100 && x == trunc(x));
   if (short_expansion &&
       aspen__decimal_cmp(aspen__decimal_from_double(x, 34), d) == 0) {
      append_double_normalized(out, key, x);
      return;
   }
   bson_append_iter(out, key, -1, it);
}

/* Appends `v` with numbers made canonical, so that numerically equal
 * values of any numeric type (1, 1.0, NumberLong(1), NumberDecimal("1"))
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
   case BSON_TYPE_DOUBLE:
      append_double_normalized(out, key, bson_iter_double(it));
      return;
   case BSON_TYPE_DECIMAL128:
      append_decimal_normalized(out, key, it);
      return;
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



/* ---- the groups' arena ---------------------------------------------------------- */

/* A group's bytes come from chunks that double from 1 KiB up to 64 KiB (a
 * window with few groups keeps little), one chunk of its own for a group
 * bigger than that; they are freed together when the window closes. */
#define GROUP_CHUNK_MIN 1024u
#define GROUP_CHUNK_MAX (64u * 1024)

static void *
arena_alloc(aspen_group_map_t *m, size_t n)
{
   n = (n + 15) & ~(size_t) 15;
   aspen_group_chunk_t *c = m->chunks;
   if (!c || c->size - m->chunk_used < n) {
      size_t size = c ? c->size * 2 : GROUP_CHUNK_MIN;
      if (size > GROUP_CHUNK_MAX) {
         size = GROUP_CHUNK_MAX;
      }
      if (size < n) {
         size = n;
      }
      aspen_group_chunk_t *nc = aspen_xmalloc(sizeof *nc + size);
      nc->size = size;
      if (c && n == size) {
         /* A big group's own chunk goes under the current one, which
          * keeps its free space. */
         nc->next = c->next;
         c->next = nc;
         memset(nc->data, 0, n);
         return nc->data;
      }
      nc->next = c;
      m->chunks = nc;
      m->chunk_used = 0;
      c = nc;
   }
   void *p = c->data + m->chunk_used;
   m->chunk_used += n;
   memset(p, 0, n);
   return p;
}

void
aspen__window_block_groups_clear(aspen_group_map_t *m,
                                 const aspen_block_spec_t *b)
{
   for (size_t i = 0; i < m->n; i++) {
      aspen_group_t *g = m->items[i];
      for (size_t f = 0; f < b->group.n_fields; f++) {
         aspen_accum_state_cleanup(b->group.fields[f].acc, g->states[f]);
      }
   }
   for (aspen_group_chunk_t *c = m->chunks, *next; c; c = next) {
      next = c->next;
      free(c);
   }
   free(m->items);
   free(m->index);
   aspen_bsonw_cleanup(&m->scratch);
   memset(m, 0, sizeof *m);
}

/* ---- groups ------------------------------------------------------------------- */

uint64_t aspen__window_group_hash_mask = ~(uint64_t) 0;
bool aspen__window_group_key_general = false;

/* A hash of a key's bytes, eight at a time (a 64-bit multiply-xorshift
 * mix per word): an integer key (10 bytes) takes two rounds. */
static inline uint64_t
key_hash(const uint8_t *p, size_t n)
{
   uint64_t h = 0x9e3779b97f4a7c15ull ^ (uint64_t) n;
   while (n >= 8) {
      uint64_t w;
      memcpy(&w, p, 8);
      h = (h ^ w) * 0xbf58476d1ce4e5b9ull;
      h ^= h >> 31;
      p += 8;
      n -= 8;
   }
   uint64_t w = 0;
   for (size_t i = 0; i < n; i++) {
      w |= (uint64_t) p[i] << (8 * i);
   }
   h = (h ^ w) * 0x94d049bb133111ebull;
   h ^= h >> 29;
   return h & aspen__window_group_hash_mask;
}

/* The general path: writes the normalized key element {"": id} into `kw`
 * (aspen__window_block_append_normalized's bytes) and returns it. */
static const uint8_t *
group_key_general(aspen_bsonw_t *kw, const aspen_value_t *id, uint32_t *len)
{
   bson_t tmp = BSON_INITIALIZER, key = BSON_INITIALIZER;
   bson_iter_t it;
   aspen_value_t v = *id;
   if (aspen_value_is_missing(&v)) {
      v = aspen_value_null(); /* a missing _id groups as null */
   }
   aspen_bsonw_reset(kw);
   aspen_value_append(&tmp, "", 0, &v);
   if (bson_iter_init(&it, &tmp) && bson_iter_next(&it)) {
      aspen__window_block_append_normalized(&key, "", &it);
      /* The element: the document less its length and terminator. */
      uint8_t *dst = aspen_bsonw_reserve(kw, key.len - 5);
      memcpy(dst, bson_get_data(&key) + 4, key.len - 5);
      kw->len += key.len - 5;
   }
   bson_destroy(&tmp);
   bson_destroy(&key);
   *len = (uint32_t) (kw->len - 4);
   return kw->data + 4;
}

static inline uint32_t
put_int64_key(uint8_t *buf, int64_t v)
{
   buf[0] = BSON_TYPE_INT64;
   buf[1] = 0;
   uint64_t u = BSON_UINT64_TO_LE((uint64_t) v);
   memcpy(buf + 2, &u, 8);
   return 10;
}

/* Writes the normalized key element of `id` ({"": id}, numbers made
 * canonical) and returns it with its length: the common scalars (numbers,
 * null and missing, short strings, booleans) straight into `buf`, the
 * rest through the general path into `kw`. Both give the bytes
 * aspen__window_block_append_normalized writes. */
const uint8_t *
aspen__window_block_group_key(aspen_bsonw_t *kw,
                              uint8_t buf[ASPEN_GROUP_KEY_BUF],
                              const aspen_value_t *id, uint32_t *len)
{
   const bson_value_t *v = &id->v;
   if (aspen__window_group_key_general) {
      return group_key_general(kw, id, len);
   }
   switch (v->value_type) {
   case BSON_TYPE_INT32:
      *len = put_int64_key(buf, v->value.v_int32);
      return buf;
   case BSON_TYPE_INT64:
      *len = put_int64_key(buf, v->value.v_int64);
      return buf;
   case BSON_TYPE_DOUBLE: {
      double d = v->value.v_double;
      if (d >= -9.2e18 && d <= 9.2e18 && d == (double) (int64_t) d) {
         *len = put_int64_key(buf, (int64_t) d);
         return buf;
      }
      uint64_t bits;
      memcpy(&bits, &d, 8);
      if (d != d) {
         bits = group_nan_bits; /* every NaN groups as one */
      }
      bits = BSON_UINT64_TO_LE(bits);
      buf[0] = BSON_TYPE_DOUBLE;
      buf[1] = 0;
      memcpy(buf + 2, &bits, 8);
      *len = 10;
      return buf;
   }
   case BSON_TYPE_EOD: /* a missing _id groups as null */
   case BSON_TYPE_UNDEFINED:
   case BSON_TYPE_NULL:
      buf[0] = BSON_TYPE_NULL;
      buf[1] = 0;
      *len = 2;
      return buf;
   case BSON_TYPE_BOOL:
      buf[0] = BSON_TYPE_BOOL;
      buf[1] = 0;
      buf[2] = v->value.v_bool ? 1 : 0;
      *len = 3;
      return buf;
   case BSON_TYPE_UTF8: {
      uint32_t n = v->value.v_utf8.len;
      if (n > ASPEN_GROUP_KEY_BUF - 7) {
         break;
      }
      uint32_t le = BSON_UINT32_TO_LE(n + 1);
      buf[0] = BSON_TYPE_UTF8;
      buf[1] = 0;
      memcpy(buf + 2, &le, 4);
      memcpy(buf + 6, v->value.v_utf8.str, n);
      buf[6 + n] = 0;
      *len = n + 7;
      return buf;
   }
   default:
      break;
   }
   return group_key_general(kw, id, len);
}

/* A new group for the key `kd` (`h` the hash of its bytes), its _id as
 * `idv` has it, appended to the map and indexed. */
static aspen_group_t *
group_new(aspen_group_map_t *m, const aspen_block_spec_t *b,
          const aspen_value_t *idv, const uint8_t *kd, uint32_t klen,
          uint64_t h)
{
   if ((m->n + 1) * 2 > m->index_size) {
      size_t size = m->index_size ? m->index_size * 2 : 16;
      uint64_t *index = aspen_xcalloc(size, sizeof *index);
      for (size_t j = 0; j < m->n; j++) {
         uint64_t gh = m->items[j]->hash;
         size_t i = gh & (size - 1);
         while (index[i]) {
            i = (i + 1) & (size - 1);
         }
         index[i] = (gh & ~(uint64_t) UINT32_MAX) | (uint64_t) (j + 1);
      }
      free(m->index);
      m->index = index;
      m->index_size = size;
   }
   if (m->n == m->cap) {
      m->cap = m->cap ? m->cap * 2 : 8;
      m->items = aspen_xrealloc(m->items, m->cap * sizeof *m->items);
   }
   /* The _id as first seen: {"": value}. */
   bson_t id = BSON_INITIALIZER;
   aspen_value_t v = *idv;
   if (aspen_value_is_missing(&v)) {
      v = aspen_value_null(); /* a missing _id groups as null */
   }
   aspen_value_append(&id, "", 0, &v);
   uint8_t *block = arena_alloc(m, b->group.states_end + klen + id.len);
   aspen_group_t *g = (aspen_group_t *) block;
   g->hash = h;
   g->states = (aspen_accum_state_t **) (block + sizeof *g);
   for (size_t f = 0; f < b->group.n_fields; f++) {
      g->states[f] = aspen_accum_state_init(b->group.fields[f].acc,
                                            block + b->group.state_off[f]);
   }
   uint8_t *kp = block + b->group.states_end;
   memcpy(kp, kd, klen);
   g->key = kp;
   g->key_len = klen;
   memcpy(kp + klen, bson_get_data(&id), id.len);
   g->id = kp + klen;
   g->id_len = id.len;
   bson_destroy(&id);
   m->items[m->n] = g;
   size_t i = h & (m->index_size - 1);
   while (m->index[i]) {
      i = (i + 1) & (m->index_size - 1);
   }
   m->index[i] = (h & ~(uint64_t) UINT32_MAX) | (uint64_t) (m->n + 1);
   m->n++;
   return g;
}

/* The group for `idv`; when it does not exist yet, NULL if `added_bytes` is
 * NULL, else a new one (its bytes added there). */
aspen_group_t *
aspen__window_block_group_get(aspen_group_map_t *m,
                              const aspen_block_spec_t *b,
                              const aspen_value_t *idv, size_t *added_bytes)
{
   uint8_t buf[ASPEN_GROUP_KEY_BUF];
   uint32_t klen;
   const uint8_t *kd =
      aspen__window_block_group_key(&m->scratch, buf, idv, &klen);
   uint64_t h = key_hash(kd, klen);
   if (m->index_size) {
      size_t mask = m->index_size - 1;
      uint64_t tag = h & ~(uint64_t) UINT32_MAX;
      for (size_t i = h & mask; m->index[i]; i = (i + 1) & mask) {
         uint64_t e = m->index[i];
         if ((e & ~(uint64_t) UINT32_MAX) != tag) {
            continue;
         }
         aspen_group_t *g = m->items[(uint32_t) e - 1];
         if (g->key_len == klen && memcmp(g->key, kd, klen) == 0) {
            return g;
         }
      }
   }
   if (!added_bytes) {
      return NULL;
   }
   aspen_group_t *g = group_new(m, b, idv, kd, klen, h);
   *added_bytes += b->group.states_end + g->key_len + g->id_len;
   return g;
}

bool aspen__window_group_inputs_general = false;

/* Absorbs one document into a group map; false with err to DLQ it. */
bool
aspen__window_block_group_add(aspen_group_map_t *m,
                              const aspen_block_spec_t *b,
                              const aspen_sdoc_t *in, int64_t now_ms,
                              size_t *added_bytes, aspen_error_t *err)
{
   const aspen_group_spec_t *gsp = &b->group;
   aspen_expr_ctx_t ctx = {.root = in->doc, .meta = in->meta, .now_ms = now_ms};
   aspen_value_t top[ASPEN_GROUP_TOP_MAX];
   bool use_top = gsp->top_only && !aspen__window_group_inputs_general;
   aspen_value_t idv;
   if (use_top) {
      aspen_accum_top_fields(in->doc, gsp->top_name, gsp->top_len,
                             gsp->n_top, top);
      idv = top[gsp->id_top];
   } else {
      if (gsp->paths) {
         /* Every path _id and the accumulators read, found in one pass. */
         const aspen_fields_t *t =
            aspen_fields_covers(in->fields, in->doc) ? in->fields : NULL;
         aspen_expr_paths_resolve(gsp->paths, in->doc, t);
         ctx.paths = gsp->paths;
         ctx.fields = t;
      }
      if (!aspen_expr_eval(gsp->id, &ctx, &idv, err)) {
         return false;
      }
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
      if (use_top && gsp->field_top[f] >= 0) {
         /* Its argument is a top-level name, already read. */
         ok = aspen_accum_prepare_given(gf->acc, gs,
                                        &top[gsp->field_top[f]], &ins[f], err);
      } else if (j >= 0 && !ins[j].skip && !ins[j].val.owned) {
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
       * the document); their size estimates are O(1), and asked only of
       * states whose size can change. */
      for (f = 0; f < n; f++) {
         const aspen_accum_t *acc = b->group.fields[f].acc;
         if (!b->group.fields[f].grows) {
            aspen_accum_commit(acc, g->states[f], &ctx, &ins[f]);
            continue;
         }
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
   if (out->cap < out->n + m->n) {
      out->cap = out->n + m->n;
      out->docs = aspen_xrealloc(out->docs, out->cap * sizeof *out->docs);
   }
   for (size_t i = 0; i < m->n; i++) {
      const aspen_group_t *g = m->items[i];
      /* Written where the list keeps it (no copy). */
      bson_t *doc = bson_new();
      bson_iter_t it;
      bson_iter_init_from_data(&it, g->id, g->id_len);
      bson_iter_next(&it);
      bson_append_iter(doc, "_id", 3, &it);
      for (size_t f = 0; f < b->group.n_fields; f++) {
         aspen_accum_result(b->group.fields[f].acc, g->states[f], doc,
                            b->group.fields[f].name);
      }
      out->docs[out->n++] = doc;
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

