/*
 * matcher.c - the query language of $match and $validate: a filter document is
 * compiled once into a tree of predicate nodes, then evaluated per document
 * straight from the BSON bytes (no copies, no allocation for the common
 * field comparisons).
 *
 * Semantics follow mongod's matcher:
 * - Every leaf predicate ({a: {$gt: 1}}) owns a dotted path. Evaluating it
 *   walks the path the way mongod's BSONElementIterator does and succeeds if
 *   any value produced satisfies the predicate: documents are descended,
 *   arrays met in the middle of a path are traversed into their document
 *   elements, a numeric component also selects that array index, a path that
 *   ends at an array yields each element and then the array itself (except
 *   for $size and $elemMatch, which see only the array), and a path that
 *   hits a scalar or nothing yields "missing".
 * - $ne, $nin, $not and $exists:false are negations of the whole walk.
 * - Comparisons bracket by canonical type (numbers with numbers, strings with
 *   strings, ...), null matches missing (not undefined, as in MongoDB 8.0),
 *   MinKey/MaxKey compare below/above everything, NaN only equals NaN.
 * - Inside $elemMatch {<operators>} the operators apply to each element
 *   itself ("value mode": leaves without a path).
 * $jsonSchema is compiled by match_schema.c; $expr by expr.c; the pieces
 * both compilers use (type sets, regexes, bracketed comparison, integer
 * arguments) are match.c's.
 *
 * Errors are mongod's messages. Codes are BadValue (2) unless mongod uses
 * FailedToParse or TypeMismatch; regex failures that mongod reports with
 * location codes (51091, 51108) are BadValue here. Features ASP refuses
 * ($text, $where, geo) get messages naming Atlas Stream Processing.
 *
 * Thread-safety: a compiled matcher is immutable; aspen_matcher_match may be
 * called from any thread, concurrently.
 */
#include "lang/match_int.h"
#include "lang/value_int.h"
#include "bsonw.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Paths                                                                     */
/* ------------------------------------------------------------------------ */

typedef struct {
   int refs;
   size_t n;
   char *dotted; /* the path as written, for messages */
   char *buf;    /* components, NUL-separated */
   const char **comp;
   int *len;
   bool *numeric; /* all digits: may also select an array index */
} mpath_t;

static mpath_t *
path_new(const char *dotted, size_t dotted_len)
{
   mpath_t *p = aspen_xcalloc(1, sizeof *p);
   p->refs = 1;
   p->dotted = aspen_xmalloc(dotted_len + 1);
   memcpy(p->dotted, dotted, dotted_len);
   p->dotted[dotted_len] = '\0';
   p->buf = aspen_xmalloc(dotted_len + 1);
   memcpy(p->buf, dotted, dotted_len + 1);
   p->n = 1;
   for (size_t i = 0; i < dotted_len; i++) {
      if (p->buf[i] == '.') {
         p->n++;
      }
   }
   p->comp = aspen_xcalloc(p->n, sizeof *p->comp);
   p->len = aspen_xcalloc(p->n, sizeof *p->len);
   p->numeric = aspen_xcalloc(p->n, sizeof *p->numeric);
   size_t k = 0;
   char *start = p->buf;
   for (size_t i = 0; i <= dotted_len; i++) {
      if (i == dotted_len || p->buf[i] == '.') {
         p->buf[i] = '\0';
         p->comp[k] = start;
         p->len[k] = (int) (p->buf + i - start);
         bool digits = p->len[k] > 0;
         for (const char *c = start; *c; c++) {
            if (*c < '0' || *c > '9') {
               digits = false;
            }
         }
         p->numeric[k] = digits;
         k++;
         start = p->buf + i + 1;
      }
   }
   return p;
}

static mpath_t *
path_ref(mpath_t *p)
{
   if (p) {
      p->refs++;
   }
   return p;
}

static void
path_unref(mpath_t *p)
{
   if (p && --p->refs == 0) {
      free(p->dotted);
      free(p->buf);
      free(p->comp);
      free(p->len);
      free(p->numeric);
      free(p);
   }
}

/* Called with each value a path produces (BSON_TYPE_EOD for missing);
 * returning true stops the walk (a match was found). */
typedef bool (*visit_fn)(const bson_value_t *v, const void *arg);

static const bson_value_t missing_value = {.value_type = BSON_TYPE_EOD};

static bool walk_array(const bson_value_t *arr, const mpath_t *p, size_t j,
                       bool leaf_traverse, visit_fn fn, const void *arg);

/* bson_iter_find_w_len without its strncmp per key: lengths first, with
 * the hot-path iterator (wire/bsonw.h). The first field of a name wins, as
 * in mongod. */
static bool
find_field(bson_iter_t *it, const char *key, int len)
{
   while (aspen_bsonw_iter_next(it)) {
      if ((int) aspen_bsonw_key_len(it) == len &&
          aspen_fields_key_eq(it->raw + it->key, key, (size_t) len)) {
         return true;
      }
   }
   return false;
}

static bool walk_doc(const uint8_t *data, uint32_t len, const mpath_t *p,
                     size_t i, bool leaf_traverse, visit_fn fn,
                     const void *arg);

/* The number of type `t` whose value starts at `v` (int32, int64, double
 * and date: what bson_iter_value gives for them), in `out`; false for any
 * other type. */
static inline bool
fixed_number(bson_type_t t, const uint8_t *v, bson_value_t *out)
{
   uint64_t x;
   switch (t) {
   case BSON_TYPE_INT32:
      out->value_type = t;
      out->value.v_int32 = (int32_t) aspen_bytes_get_le32(v);
      return true;
   case BSON_TYPE_INT64:
   case BSON_TYPE_DATE_TIME:
      out->value_type = t;
      out->value.v_int64 = (int64_t) aspen_bytes_get_le64(v);
      return true;
   case BSON_TYPE_DOUBLE:
      x = aspen_bytes_get_le64(v);
      out->value_type = t;
      memcpy(&out->value.v_double, &x, sizeof x);
      return true;
   default:
      return false;
   }
}

/* Walks on from component i, found: the iterator is on its element (the
 * type, a sub-document and a number read from the iterator's offsets as
 * bson_iter_type, bson_iter_document and bson_iter_value read them). */
static bool
walk_found(bson_iter_t *it, const mpath_t *p, size_t i, bool leaf_traverse,
           visit_fn fn, const void *arg)
{
   bson_type_t t = (bson_type_t) it->raw[it->type];
   if (t == BSON_TYPE_DOCUMENT && i + 1 < p->n) {
      return walk_doc(it->raw + it->d1, aspen_bytes_get_le32(it->raw + it->d1),
                      p, i + 1, leaf_traverse, fn, arg);
   }
   if (t == BSON_TYPE_ARRAY) {
      return walk_array(bson_iter_value(it), p, i + 1, leaf_traverse, fn,
                        arg);
   }
   if (i + 1 < p->n) {
      return fn(&missing_value, arg); /* a scalar in the middle */
   }
   bson_value_t v;
   if (fixed_number(t, it->raw + it->d1, &v)) {
      return fn(&v, arg);
   }
   return fn(bson_iter_value(it), arg);
}

/* Walks path components i.. from the document at data/len (mongod's
 * getFieldDottedOrArray followed by array handling). */
static bool
walk_doc(const uint8_t *data, uint32_t len, const mpath_t *p, size_t i,
         bool leaf_traverse, visit_fn fn, const void *arg)
{
   bson_iter_t it;
   if (!bson_iter_init_from_data(&it, data, len) ||
      !find_field(&it, p->comp[i], p->len[i])) {
      return fn(&missing_value, arg);
   }
   return walk_found(&it, p, i, leaf_traverse, fn, arg);
}

/* True if `t` (ev_fields: NULL or covering the top document) describes the
 * document at `data`: only the top document starts there. */
static inline bool
tab_covers(const aspen_fields_t *t, const uint8_t *data)
{
   return t && t->data == data;
}

/* walk_doc from the top of data/len, through the field table `t` when it
 * describes those bytes (lang/fields.h): no scan for the first component
 * (and no lookup either when `memo` has it for the table's layout). */
static bool
walk_top(const uint8_t *data, uint32_t len, const aspen_fields_t *t,
         const mpath_t *p, uint64_t *memo, bool leaf_traverse, visit_fn fn,
         const void *arg)
{
   if (!tab_covers(t, data)) {
      return walk_doc(data, len, p, 0, leaf_traverse, fn, arg);
   }
   int k = aspen_fields_find_memo(t, p->comp[0], (size_t) p->len[0], memo);
   if (k < 0) {
      return fn(&missing_value, arg);
   }
   /* A sub-document to descend into, or a number at the end of the path,
    * straight from the element's bytes, with the bounds libbson's iterator
    * checks (wire/bsonw.h, aspen_bsonw_iter_next: the value, then the
    * next element, inside the document); anything else through it. */
   uint32_t off = t->f[k].off;
   uint32_t o = off + t->f[k].klen + 2; /* the value */
   bson_type_t type = (bson_type_t) data[off];
   if (type == BSON_TYPE_DOCUMENT && p->n > 1 && o < len - 4) {
      uint32_t l = aspen_bytes_get_le32(data + o);
      if (l < len - o) {
         return walk_doc(data + o, l, p, 1, leaf_traverse, fn, arg);
      }
   } else if (p->n == 1 && o < len - 8) {
      bson_value_t v;
      if (fixed_number(type, data + o, &v)) {
         return fn(&v, arg);
      }
   }
   bson_iter_t it;
   if (!bson_iter_init_from_data_at_offset(&it, data, len, off,
                                           t->f[k].klen)) {
      return fn(&missing_value, arg);
   }
   return walk_found(&it, p, 0, leaf_traverse, fn, arg);
}

/* Walks components j.. from the array `arr` (j == n: the path ends here). */
static bool
walk_array(const bson_value_t *arr, const mpath_t *p, size_t j,
           bool leaf_traverse, visit_fn fn, const void *arg)
{
   bson_iter_t it;
   if (!bson_iter_init_from_data(&it, arr->value.v_doc.data,
                                 arr->value.v_doc.data_len)) {
      return false;
   }
   if (j == p->n) {
      if (leaf_traverse) {
         while (bson_iter_next(&it)) {
            if (fn(bson_iter_value(&it), arg)) {
               return true;
            }
         }
      }
      return fn(arr, arg);
   }
   while (bson_iter_next(&it)) {
      bson_type_t t = bson_iter_type(&it);
      /* A numeric component also selects the element with that index. */
      bool offset = p->numeric[j] &&
                    (int) bson_iter_key_len(&it) == p->len[j] &&
                    memcmp(bson_iter_key(&it), p->comp[j],
                           (size_t) p->len[j]) == 0;
      if (t == BSON_TYPE_DOCUMENT) {
         uint32_t sub_len;
         const uint8_t *sub;
         bson_iter_document(&it, &sub_len, &sub);
         if (walk_doc(sub, sub_len, p, j, leaf_traverse, fn, arg)) {
            return true;
         }
         if (offset) {
            if (j + 1 == p->n) {
               if (fn(bson_iter_value(&it), arg)) {
                  return true;
               }
            } else if (walk_doc(sub, sub_len, p, j + 1, leaf_traverse, fn,
                                arg)) {
               return true;
            }
         }
      } else if (offset) {
         if (j + 1 == p->n) {
            /* "a.0" selecting an element: the element itself, even if it is
             * an array (no implicit traversal of an explicit index). */
            if (fn(bson_iter_value(&it), arg)) {
               return true;
            }
         } else if (t == BSON_TYPE_ARRAY &&
                    walk_array(bson_iter_value(&it), p, j + 1, leaf_traverse,
                               fn, arg)) {
            return true;
         }
      }
   }
   return false;
}

/* ------------------------------------------------------------------------ */
/* Nodes                                                                     */
/* ------------------------------------------------------------------------ */

typedef enum {
   N_AND,
   N_OR,
   N_NOR,
   N_NOT,
   N_TRUE,
   N_FALSE,
   N_EXPR,
   N_SCHEMA,
   /* Leaves: a predicate on one value, applied along `path` (document
    * mode) or to the value at hand (value mode, path NULL). */
   N_CMP,
   N_IN,
   N_EXISTS,
   N_TYPE,
   N_SIZE,
   N_MOD,
   N_REGEX,
   N_BITS,
   N_ELEM_OBJ,
   N_ELEM_VAL,
} nkind_t;

typedef enum {
   BITS_ALL_SET,
   BITS_ALL_CLEAR,
   BITS_ANY_SET,
   BITS_ANY_CLEAR,
} bits_op_t;

typedef struct mnode mnode_t;

struct mnode {
   nkind_t kind;
   mpath_t *path;
   /* Where the path's first component was in the last field table of a
    * known layout (aspen_fields_find_memo): written while matching, with
    * relaxed atomics, the matcher being otherwise read-only. */
   uint64_t memo;
   union {
      struct {
         mnode_t **v;
         size_t n;
      } kids; /* AND OR NOR NOT ELEM_OBJ (1 kid) ELEM_VAL */
      struct {
         aspen__match_op_t op;
         bson_value_t rhs; /* view into the filter */
      } cmp;
      struct {
         bson_value_t *vals; /* views; sorted when `sorted` */
         size_t n;
         bool has_null;
         bool sorted;
         aspen__match_regex_t **res;
         size_t n_res;
      } in;
      aspen__match_types_t types;
      int64_t size;
      struct {
         int64_t div;
         int64_t rem;
      } mod;
      aspen__match_regex_t *re;
      struct {
         bits_op_t op;
         uint32_t *pos;
         size_t n;
      } bits;
      aspen_expr_t *expr;
      aspen__match_schema_t *schema;
   } u;
};

struct aspen_matcher {
   mnode_t *root;
   bool has_expr;
};

static void
node_destroy(mnode_t *n)
{
   if (!n) {
      return;
   }
   switch (n->kind) {
   case N_AND:
   case N_OR:
   case N_NOR:
   case N_NOT:
   case N_ELEM_OBJ:
   case N_ELEM_VAL:
      for (size_t i = 0; i < n->u.kids.n; i++) {
         node_destroy(n->u.kids.v[i]);
      }
      free(n->u.kids.v);
      break;
   case N_IN:
      free(n->u.in.vals);
      for (size_t i = 0; i < n->u.in.n_res; i++) {
         aspen__match_regex_destroy(n->u.in.res[i]);
      }
      free(n->u.in.res);
      break;
   case N_REGEX:
      aspen__match_regex_destroy(n->u.re);
      break;
   case N_BITS:
      free(n->u.bits.pos);
      break;
   case N_EXPR:
      aspen_expr_destroy(n->u.expr);
      break;
   case N_SCHEMA:
      aspen__match_schema_destroy(n->u.schema);
      break;
   case N_TRUE:
   case N_FALSE:
   case N_CMP:
   case N_EXISTS:
   case N_TYPE:
   case N_SIZE:
   case N_MOD:
      break;
   }
   path_unref(n->path);
   free(n);
}

static mnode_t *
node_new(nkind_t kind, mpath_t *path)
{
   mnode_t *n = aspen_xcalloc(1, sizeof *n);
   n->kind = kind;
   n->path = path_ref(path);
   return n;
}

/* A growable list of nodes being collected for an AND. */
typedef struct {
   mnode_t **v;
   size_t n;
   size_t cap;
} nlist_t;

static void
nlist_push(nlist_t *l, mnode_t *n)
{
   if (l->n == l->cap) {
      l->cap = l->cap ? l->cap * 2 : 4;
      l->v = aspen_xrealloc(l->v, l->cap * sizeof *l->v);
   }
   l->v[l->n++] = n;
}

static void
nlist_cleanup(nlist_t *l)
{
   for (size_t i = 0; i < l->n; i++) {
      node_destroy(l->v[i]);
   }
   free(l->v);
   memset(l, 0, sizeof *l);
}

/* Moves the list's nodes into a new node of `kind` (AND, OR, NOR, NOT,
 * ELEM_OBJ, ELEM_VAL); the list is left empty. */
static mnode_t *
node_from_list(nkind_t kind, mpath_t *path, nlist_t *l)
{
   mnode_t *n = node_new(kind, path);
   n->u.kids.v = l->v;
   n->u.kids.n = l->n;
   memset(l, 0, sizeof *l);
   return n;
}

/* An AND of the list, or its only member. */
static mnode_t *
node_and(nlist_t *l)
{
   if (l->n == 1) {
      mnode_t *only = l->v[0];
      free(l->v);
      memset(l, 0, sizeof *l);
      return only;
   }
   return node_from_list(N_AND, NULL, l);
}

static mnode_t *
node_not(mnode_t *kid)
{
   mnode_t *n = node_new(N_NOT, NULL);
   n->u.kids.v = aspen_xmalloc(sizeof *n->u.kids.v);
   n->u.kids.v[0] = kid;
   n->u.kids.n = 1;
   return n;
}

/* ------------------------------------------------------------------------ */
/* Evaluation                                                                */
/* ------------------------------------------------------------------------ */

typedef struct {
   const aspen_expr_ctx_t *ctx; /* NULL inside $elemMatch (no $expr there) */
   aspen_error_t *err;
   /* The context's field table when it covers the document matched
    * (checked once per match, aspen_fields_covers), else NULL. */
   const aspen_fields_t *tab;
} eval_t;

/* The field table of the document matched (ev is NULL inside $elemMatch
 * and for array elements). */
static inline const aspen_fields_t *
ev_fields(const eval_t *ev)
{
   return ev ? ev->tab : NULL;
}


static int eval_doc(const mnode_t *n, const uint8_t *data, uint32_t len,
                    const eval_t *ev);
static bool eval_value(const mnode_t *n, const bson_value_t *v);

static int
cmp_in_sorted(const void *a, const void *b)
{
   const bson_value_t *x = a;
   const bson_value_t *y = b;
   int cx = aspen__value_type_rank(x->value_type, true);
   int cy = aspen__value_type_rank(y->value_type, true);
   if (cx != cy) {
      return cx < cy ? -1 : 1;
   }
   return aspen__match_value_cmp(x, y);
}

static bool
in_matches_value(const mnode_t *n, const bson_value_t *v)
{
   if (v->value_type == BSON_TYPE_EOD) {
      return n->u.in.has_null;
   }
   if (n->u.in.sorted) {
      size_t lo = 0;
      size_t hi = n->u.in.n;
      while (lo < hi) {
         size_t mid = lo + (hi - lo) / 2;
         int c = cmp_in_sorted(&n->u.in.vals[mid], v);
         if (c == 0) {
            return true;
         }
         if (c < 0) {
            lo = mid + 1;
         } else {
            hi = mid;
         }
      }
   } else {
      for (size_t i = 0; i < n->u.in.n; i++) {
         if (aspen__match_compare(ASPEN__MATCH_EQ, v, &n->u.in.vals[i])) {
            return true;
         }
      }
   }
   for (size_t i = 0; i < n->u.in.n_res; i++) {
      if (aspen__match_regex_matches_value(n->u.in.res[i], v)) {
         return true;
      }
   }
   return false;
}

static bool
mod_matches_value(const mnode_t *n, const bson_value_t *v)
{
   int64_t x;
   switch (v->value_type) {
   case BSON_TYPE_INT32:
      x = v->value.v_int32;
      break;
   case BSON_TYPE_INT64:
      x = v->value.v_int64;
      break;
   case BSON_TYPE_DOUBLE:
   case BSON_TYPE_DECIMAL128: {
      /* NaN, infinities and values beyond int64 match nothing. */
      double d = trunc(aspen__match_number_as_double(v));
      if (!isfinite(d) || d >= 9223372036854775808.0 ||
          d < -9223372036854775808.0) {
         return false;
      }
      x = (int64_t) d;
      break;
   }
   default:
      return false;
   }
   int64_t r = n->u.mod.div == -1 ? 0 : x % n->u.mod.div;
   return r == n->u.mod.rem;
}

static bool
bits_matches_value(const mnode_t *n, const bson_value_t *v)
{
   int64_t x = 0;
   const uint8_t *bin = NULL;
   uint32_t bin_len = 0;
   switch (v->value_type) {
   case BSON_TYPE_INT32:
      x = v->value.v_int32;
      break;
   case BSON_TYPE_INT64:
      x = v->value.v_int64;
      break;
   case BSON_TYPE_DOUBLE:
   case BSON_TYPE_DECIMAL128: {
      double d = aspen__match_number_as_double(v);
      if (isnan(d) || d >= 9223372036854775808.0 ||
          d < -9223372036854775808.0 || d != (double) (int64_t) d) {
         return false;
      }
      x = (int64_t) d;
      break;
   }
   case BSON_TYPE_BINARY:
      bin = v->value.v_binary.data;
      bin_len = v->value.v_binary.data_len;
      break;
   default:
      return false;
   }
   bool is_bin = v->value_type == BSON_TYPE_BINARY;
   for (size_t i = 0; i < n->u.bits.n; i++) {
      uint32_t p = n->u.bits.pos[i];
      bool set;
      if (is_bin) {
         set = p / 8 < bin_len && (bin[p / 8] >> (p % 8)) & 1;
      } else if (p >= 64) {
         set = x < 0; /* sign extension */
      } else {
         set = ((uint64_t) x >> p) & 1;
      }
      switch (n->u.bits.op) {
      case BITS_ALL_SET:
         if (!set) {
            return false;
         }
         break;
      case BITS_ALL_CLEAR:
         if (set) {
            return false;
         }
         break;
      case BITS_ANY_SET:
         if (set) {
            return true;
         }
         break;
      case BITS_ANY_CLEAR:
         if (!set) {
            return true;
         }
         break;
      }
   }
   return n->u.bits.op == BITS_ALL_SET || n->u.bits.op == BITS_ALL_CLEAR;
}

/* mongod's matchesSingleElement: the predicate on one value. */
static bool
eval_value(const mnode_t *n, const bson_value_t *v)
{
   switch (n->kind) {
   case N_CMP:
      return aspen__match_compare(n->u.cmp.op, v, &n->u.cmp.rhs);
   case N_IN:
      return in_matches_value(n, v);
   case N_EXISTS:
      return v->value_type != BSON_TYPE_EOD;
   case N_TYPE:
      return (aspen__match_type_bit(v->value_type) & n->u.types) != 0;
   case N_SIZE: {
      if (v->value_type != BSON_TYPE_ARRAY) {
         return false;
      }
      bson_iter_t it;
      int64_t count = 0;
      if (bson_iter_init_from_data(&it, v->value.v_doc.data,
                                   v->value.v_doc.data_len)) {
         while (bson_iter_next(&it)) {
            count++;
         }
      }
      return count == n->u.size;
   }
   case N_MOD:
      return mod_matches_value(n, v);
   case N_REGEX:
      return aspen__match_regex_matches_value(n->u.re, v);
   case N_BITS:
      return bits_matches_value(n, v);
   case N_ELEM_OBJ:
   case N_ELEM_VAL: {
      if (v->value_type != BSON_TYPE_ARRAY) {
         return false;
      }
      bson_iter_t it;
      if (!bson_iter_init_from_data(&it, v->value.v_doc.data,
                                    v->value.v_doc.data_len)) {
         return false;
      }
      while (bson_iter_next(&it)) {
         const bson_value_t *e = bson_iter_value(&it);
         if (n->kind == N_ELEM_OBJ) {
            /* Documents and arrays (as documents keyed "0", "1", ...). */
            if ((e->value_type == BSON_TYPE_DOCUMENT ||
                 e->value_type == BSON_TYPE_ARRAY) &&
                eval_doc(n->u.kids.v[0], e->value.v_doc.data,
                         e->value.v_doc.data_len, NULL) == 1) {
               return true;
            }
         } else {
            bool all = true;
            for (size_t i = 0; i < n->u.kids.n && all; i++) {
               all = eval_value(n->u.kids.v[i], e);
            }
            if (all) {
               return true;
            }
         }
      }
      return false;
   }
   case N_AND:
      for (size_t i = 0; i < n->u.kids.n; i++) {
         if (!eval_value(n->u.kids.v[i], v)) {
            return false;
         }
      }
      return true;
   case N_NOT:
      return !eval_value(n->u.kids.v[0], v);
   case N_TRUE:
      return true;
   case N_FALSE:
      return false;
   case N_OR:
   case N_NOR:
   case N_EXPR:
   case N_SCHEMA:
      break;
   }
   ASPEN_ASSERT(!"node kind has no value-mode evaluation");
   return false;
}

static bool
visit_leaf(const bson_value_t *v, const void *arg)
{
   return eval_value(arg, v);
}

static int
eval_expr(const mnode_t *n, const uint8_t *data, uint32_t len,
          const eval_t *ev)
{
   ASPEN_ASSERT(ev && ev->ctx);
   (void) data;
   (void) len;
   aspen_value_t out = ASPEN_VALUE_MISSING;
   if (!aspen_expr_eval(n->u.expr, ev->ctx, &out, ev->err)) {
      return -1;
   }
   bool t = aspen_value_truthy(&out);
   aspen_value_destroy(&out);
   return t ? 1 : 0;
}

/* A raw scan of the document at data/len for the first element named `key`
 * (`klen` bytes; the one find_field finds): 1 with its offset (its type
 * byte) in *off, 0 if the document has none, -1 if it is malformed before
 * that (cmp_fast leaves it to the general walk). */
static inline __attribute__((always_inline)) int
raw_find_elem(const uint8_t *data, uint32_t len, const char *key, int klen,
              uint32_t *off)
{
   if (len < 5 || aspen_bytes_get_le32(data) != len || data[len - 1] != 0) {
      return -1; /* what bson_iter_init_from_data refuses */
   }
   return aspen_fields_raw_find(data, len, key, (size_t) klen, off);
}

/* Returns the comparison `op` of the numbers x and y (C's operators:
 * aspen__match_compare's for integers, and for doubles when neither is a
 * NaN or only x is). */
#define RETURN_OP(op, x, y)                                                    \
   switch (op) {                                                               \
   case ASPEN__MATCH_EQ:                                                       \
      return (x) == (y);                                                       \
   case ASPEN__MATCH_LT:                                                       \
      return (x) < (y);                                                        \
   case ASPEN__MATCH_LTE:                                                      \
      return (x) <= (y);                                                       \
   case ASPEN__MATCH_GT:                                                       \
      return (x) > (y);                                                        \
   case ASPEN__MATCH_GTE:                                                      \
      return (x) >= (y);                                                       \
   }

/* cmp_fast's comparison of a value it does not read in place: through an
 * iterator on its element (out of line: cmp_fast's frame stays small). */
static __attribute__((noinline)) int
cmp_at_iter(aspen__match_op_t op, const uint8_t *d, uint32_t dl, uint32_t off,
            uint32_t klen, const bson_value_t *rhs)
{
   bson_iter_t it;
   if (!bson_iter_init_from_data_at_offset(&it, d, dl, off, klen)) {
      return -2;
   }
   return aspen__match_compare(op, bson_iter_value(&it), rhs);
}

/* A comparison (N_CMP) against the document at data/len without the
 * general walk: the path's first element through the field table `t` when
 * it describes these bytes (else a raw scan), each next one by a raw scan
 * of its sub-document, and the value at its end compared as visit_leaf
 * compares it (integers read in place). Returns 1 or 0, or -2 when the path
 * meets an array (implicit traversal) or bytes it does not read, for
 * walk_top to decide. */
static int
cmp_fast(const mnode_t *n, const uint8_t *data, uint32_t len,
         const aspen_fields_t *t)
{
   const mpath_t *p = n->path;
   aspen__match_op_t op = n->u.cmp.op;
   const bson_value_t *rhs = &n->u.cmp.rhs;
   uint32_t off = 0;
   int r;
   if (tab_covers(t, data)) {
      int k = aspen_fields_find_memo(t, p->comp[0], (size_t) p->len[0],
                                     &((mnode_t *) n)->memo);
      r = k >= 0;
      off = r ? t->f[k].off : 0;
   } else {
      r = raw_find_elem(data, len, p->comp[0], p->len[0], &off);
   }
   const uint8_t *d = data;
   uint32_t dl = len;
   for (size_t i = 0;; i++) {
      if (r < 0) {
         return -2;
      }
      if (r == 0) {
         return aspen__match_compare(op, &missing_value, rhs);
      }
      bson_type_t type = (bson_type_t) d[off];
      uint32_t vo = off + (uint32_t) p->len[i] + 2; /* the value */
      if (type == BSON_TYPE_ARRAY) {
         return -2;
      }
      if (i + 1 == p->n) {
         bson_value_t v;
         uint32_t need = type == BSON_TYPE_INT32 ? 4 : 8;
         if (vo + need < dl && fixed_number(type, d + vo, &v)) {
            if ((v.value_type == BSON_TYPE_INT32 ||
                 v.value_type == BSON_TYPE_INT64) &&
                (rhs->value_type == BSON_TYPE_INT32 ||
                 rhs->value_type == BSON_TYPE_INT64)) {
               /* aspen__match_compare's integer case, in place. */
               int64_t x = v.value_type == BSON_TYPE_INT32
                              ? v.value.v_int32
                              : v.value.v_int64;
               int64_t y = rhs->value_type == BSON_TYPE_INT32
                              ? rhs->value.v_int32
                              : rhs->value.v_int64;
               RETURN_OP(op, x, y);
            }
            return aspen__match_compare(op, &v, rhs);
         }
         return cmp_at_iter(op, d, dl, off, (uint32_t) p->len[i], rhs);
      }
      if (type != BSON_TYPE_DOCUMENT) {
         /* A scalar in the middle of the path. */
         return aspen__match_compare(op, &missing_value, rhs);
      }
      if (vo + 4 >= dl) {
         return -2;
      }
      uint32_t sl = aspen_bytes_get_le32(d + vo);
      if (sl < 5 || sl >= dl - vo) {
         return -2;
      }
      d += vo;
      dl = sl;
      r = raw_find_elem(d, dl, p->comp[i + 1], p->len[i + 1], &off);
   }
}

/* A comparison (N_CMP) by the general walk (what cmp_fast leaves). */
static int
cmp_walk(const mnode_t *n, const uint8_t *data, uint32_t len, const eval_t *ev)
{
   return walk_top(data, len, ev_fields(ev), n->path, &((mnode_t *) n)->memo,
                   true, visit_leaf, n)
             ? 1
             : 0;
}

/* Evaluates a node against a document (or an array seen as a document).
 * Returns 1 (match), 0 (no match) or -1 ($expr failed, ev->err set). */
static int
eval_doc(const mnode_t *n, const uint8_t *data, uint32_t len,
         const eval_t *ev)
{
   switch (n->kind) {
   case N_AND:
      for (size_t i = 0; i < n->u.kids.n; i++) {
         const mnode_t *k = n->u.kids.v[i];
         /* A comparison straight to cmp_fast (the conjunctions of
          * path-vs-constant most filters are), without a call of this
          * function each; what it leaves (-2) to the general case. */
         int r;
         if (k->kind == N_CMP && aspen__fields_on) {
            r = cmp_fast(k, data, len, ev_fields(ev));
            if (r < 0) {
               r = cmp_walk(k, data, len, ev);
            }
         } else {
            r = eval_doc(k, data, len, ev);
         }
         if (r != 1) {
            return r;
         }
      }
      return 1;
   case N_OR:
      for (size_t i = 0; i < n->u.kids.n; i++) {
         int r = eval_doc(n->u.kids.v[i], data, len, ev);
         if (r != 0) {
            return r;
         }
      }
      return 0;
   case N_NOR:
      for (size_t i = 0; i < n->u.kids.n; i++) {
         int r = eval_doc(n->u.kids.v[i], data, len, ev);
         if (r != 0) {
            return r == 1 ? 0 : -1;
         }
      }
      return 1;
   case N_NOT: {
      int r = eval_doc(n->u.kids.v[0], data, len, ev);
      return r < 0 ? r : !r;
   }
   case N_TRUE:
      return 1;
   case N_FALSE:
      return 0;
   case N_EXPR:
      return eval_expr(n, data, len, ev);
   case N_SCHEMA:
      return aspen__match_schema_validate_doc(n->u.schema, data, len) ? 1 : 0;
   case N_SIZE:
   case N_ELEM_OBJ:
   case N_ELEM_VAL:
      /* Array operators see the array itself, not its elements. */
      return walk_top(data, len, ev_fields(ev), n->path, &((mnode_t *) n)->memo,
                      false, visit_leaf, n)
                ? 1
                : 0;
   case N_CMP:
      if (aspen__fields_on) {
         int r = cmp_fast(n, data, len, ev_fields(ev));
         if (r >= 0) {
            return r;
         }
      }
      return cmp_walk(n, data, len, ev);
   case N_IN:
   case N_EXISTS:
   case N_TYPE:
   case N_MOD:
   case N_REGEX:
   case N_BITS:
      return walk_top(data, len, ev_fields(ev), n->path, &((mnode_t *) n)->memo,
                      true, visit_leaf, n)
                ? 1
                : 0;
   }
   return 0;
}

/* aspen_matcher_match with the document's field table `fields` (may be
 * NULL) given apart from its context. */
static bool
match_with(const aspen_matcher_t *m, const bson_t *doc,
           const aspen_expr_ctx_t *ctx, const aspen_fields_t *fields,
           bool *matched, aspen_error_t *err)
{
   *matched = false;
   aspen_expr_ctx_t local = {
      .root = doc, .meta = NULL, .now_ms = 0, .fields = fields};
   if (m->has_expr) {
      if (ctx) {
         local = *ctx;
         local.root = doc;
         local.fields = fields;
      } else {
         local.now_ms = aspen_clock_now_ms();
      }
   }
   eval_t ev = {.ctx = &local,
                .err = err,
                .tab = aspen_fields_covers(fields, doc) ? fields : NULL};
   int r = eval_doc(m->root, bson_get_data(doc), doc->len, &ev);
   if (r < 0) {
      return false;
   }
   *matched = r == 1;
   return true;
}

/* ------------------------------------------------------------------------ */
/* Per-layout plans                                                          */
/* ------------------------------------------------------------------------ */

/* A plan (match.h) keeps, for the comparisons of a path of one or two
 * components with a constant at the root of a filter (the filter itself or
 * its top-level conjunction), what the last field table's layout says about
 * them: the first component's index in tables of that layout (no key
 * compare, no memo), and, for a path into a sub-document, where its second
 * component was in the last sub-document met, checked per document by the
 * heads (type byte, key, NUL) of the elements up to it at their offsets: all
 * of fixed size before it, so those offsets follow from the heads alone,
 * and none named as it is, so it is the first of its name. Integers and
 * doubles are compared with an integer or a (non-NaN) double constant in
 * place. Anything else - another type, an array, a sub-document whose heads
 * differ, bytes out of bounds - goes to cmp_fast (then the walk), which
 * decides as before; a sub-document whose heads differed is learned again
 * from the document at hand (after one that could not be learned from, a
 * few misses later). */

bool aspen__match_plan_on = true;

bool
aspen_matcher_has_expr(const aspen_matcher_t *m)
{
   return m->has_expr;
}

void
aspen_matcher_set_plan_enabled(bool on)
{
   aspen__match_plan_on = on;
}

/* The most comparisons a plan holds (a longer conjunction gets none), the
 * most elements up to a sub-document's element it checks, and how many
 * misses pass before it learns again after a sub-document it could not
 * learn from. */
#define PLAN_LEAVES 16
#define PLAN_HEADS 5
#define PLAN_RELEARN 8

/* The constant's kind for in-place comparisons. */
enum { RHS_OTHER, RHS_INT, RHS_DOUBLE };

/* An element's head: its type byte, key and the key's NUL (hl bytes, at
 * most 16) at `off` from its sub-document's start, as one masked word or
 * the head's first and last eight bytes. */
typedef struct {
   uint64_t w[2];
   uint64_t mask;
   uint32_t off;
   uint32_t hl;
} phead_t;

typedef struct {
   const mnode_t *n; /* the comparison; NULL: a kid eval_doc evaluates */
   int32_t k;        /* the first component's index for the layout, -1 none */
   uint8_t depth;    /* the path's components: 1 or 2 */
   uint8_t rkind;    /* RHS_* */
   uint8_t op;       /* aspen__match_op_t */
   int8_t miss;      /* the comparison's result for a missing value */
   /* A two-component path's second element, where the last sub-document
    * had it: `nh` heads checked (the element's last), the sub-document's
    * bytes needed for them and the value (UINT32_MAX: not known), the
    * value's offset and type; `wait`: the misses to let pass before
    * learning again after a sub-document that could not be learned. */
   uint8_t nh;
   uint8_t vtype;
   uint8_t wait;
   uint32_t sneed;
   uint32_t vo;
   /* RHS_INT: an integer x matches when x - lo <= span (unsigned); the
    * range of integers the comparison accepts. */
   uint64_t lo;
   uint64_t span;
   double rd; /* RHS_DOUBLE */
   phead_t h[PLAN_HEADS];
} pleaf_t;

struct aspen_matcher_plan {
   uint64_t layout; /* the layout the indexes are for (0: none yet) */
   size_t n;        /* kids of the root (1: the root is the leaf) */
   const mnode_t *const *kids;
   bool usable; /* false: the general path always */
   pleaf_t leaf[PLAN_LEAVES];
};

/* The root's kids (a conjunction's, or the root itself) and how many. */
static const mnode_t *const *
root_kids(const aspen_matcher_t *m, size_t *n)
{
   if (m->root->kind == N_AND) {
      *n = m->root->u.kids.n;
      return (const mnode_t *const *) m->root->u.kids.v;
   }
   *n = 1;
   return (const mnode_t *const *) &m->root;
}

/* The integers `op` against the integer y accepts, as pleaf_t's lo/span;
 * false if none (x < INT64_MIN, x > INT64_MAX). */
static bool
int_range(aspen__match_op_t op, int64_t y, uint64_t *lo, uint64_t *span)
{
   const uint64_t min = (uint64_t) INT64_MIN, max = (uint64_t) INT64_MAX;
   uint64_t uy = (uint64_t) y;
   switch (op) {
   case ASPEN__MATCH_EQ:
      *lo = uy;
      *span = 0;
      return true;
   case ASPEN__MATCH_LT:
      *lo = min;
      *span = uy - min - 1;
      return y != INT64_MIN;
   case ASPEN__MATCH_LTE:
      *lo = min;
      *span = uy - min;
      return true;
   case ASPEN__MATCH_GT:
      *lo = uy + 1;
      *span = max - uy - 1;
      return y != INT64_MAX;
   case ASPEN__MATCH_GTE:
      *lo = uy;
      *span = max - uy;
      return true;
   }
   return false;
}

/*
 * A new plan for `m` (its layout learned from the tables it is used with).
 * A plan is the caller's state, not the matcher's: one thread at a time
 * uses it. Always returns a plan; one for a filter it cannot help
 * (a $expr anywhere, a long conjunction) takes the general path.
 */
aspen_matcher_plan_t *
aspen_matcher_plan_new(const aspen_matcher_t *m)
{
   aspen_matcher_plan_t *plan = aspen_xcalloc(1, sizeof *plan);
   size_t n;
   const mnode_t *const *kids = root_kids(m, &n);
   plan->usable = !m->has_expr && n <= PLAN_LEAVES;
   plan->n = plan->usable ? n : 0;
   plan->kids = kids;
   for (size_t i = 0; i < plan->n; i++) {
      const mnode_t *k = kids[i];
      pleaf_t *L = &plan->leaf[i];
      if (k->kind != N_CMP || !k->path || k->path->n > 2) {
         continue;
      }
      const bson_value_t *rhs = &k->u.cmp.rhs;
      L->n = k;
      L->depth = (uint8_t) k->path->n;
      L->op = (uint8_t) k->u.cmp.op;
      L->miss = (int8_t) aspen__match_compare(k->u.cmp.op, &missing_value, rhs);
      if (rhs->value_type == BSON_TYPE_INT32 ||
          rhs->value_type == BSON_TYPE_INT64) {
         int64_t y = rhs->value_type == BSON_TYPE_INT32 ? rhs->value.v_int32
                                                         : rhs->value.v_int64;
         L->rkind = int_range(k->u.cmp.op, y, &L->lo, &L->span) ? RHS_INT
                                                                 : RHS_OTHER;
      } else if (rhs->value_type == BSON_TYPE_DOUBLE &&
                 !isnan(rhs->value.v_double)) {
         L->rkind = RHS_DOUBLE;
         L->rd = rhs->value.v_double;
      }
   }
   return plan;
}

/* Frees the plan; NULL is a no-op. */
void
aspen_matcher_plan_destroy(aspen_matcher_plan_t *plan)
{
   free(plan);
}

/* The root comparisons' first components in tables of `t`'s layout. */
static __attribute__((noinline)) void
plan_build(aspen_matcher_plan_t *plan, const aspen_fields_t *t)
{
   plan->layout = t->layout;
   for (size_t i = 0; i < plan->n; i++) {
      pleaf_t *L = &plan->leaf[i];
      if (L->n) {
         const mpath_t *p = L->n->path;
         L->k = aspen_fields_find(t, p->comp[0], (size_t) p->len[0]);
         L->sneed = UINT32_MAX;
         L->wait = 0;
      }
   }
}

/* The leaf's comparison of the value of `type` at `v` (its bytes there):
 * integers with an integer constant and doubles with a double one in
 * place (C's operators on doubles are aspen__match_compare's for a non-NaN
 * constant: a NaN value matches none), other fixed-size numbers through
 * aspen__match_compare, -2 for anything else. */
static inline int
plan_value(const pleaf_t *L, uint8_t type, const uint8_t *v)
{
   if (L->rkind == RHS_INT) {
      uint64_t x;
      if (type == BSON_TYPE_INT32) {
         x = (uint64_t) (int64_t) (int32_t) aspen_bytes_get_le32(v);
         return x - L->lo <= L->span;
      }
      if (type == BSON_TYPE_INT64) {
         x = aspen_bytes_get_le64(v);
         return x - L->lo <= L->span;
      }
   } else if (L->rkind == RHS_DOUBLE && type == BSON_TYPE_DOUBLE) {
      uint64_t u = aspen_bytes_get_le64(v);
      double x, y = L->rd;
      memcpy(&x, &u, sizeof x);
      RETURN_OP((aspen__match_op_t) L->op, x, y);
   }
   bson_value_t val;
   if (fixed_number((bson_type_t) type, v, &val)) {
      return aspen__match_compare((aspen__match_op_t) L->op, &val,
                                  &L->n->u.cmp.rhs);
   }
   return -2;
}

/* True if the element at `p` starts with the head `h`. */
static inline bool
phead_at(const phead_t *h, const uint8_t *p)
{
   if (h->hl <= 8) {
      return ((aspen_bytes_get_le64(p) ^ h->w[0]) & h->mask) == 0;
   }
   return aspen_bytes_get_le64(p) == h->w[0] &&
          aspen_bytes_get_le64(p + h->hl - 8) == h->w[1];
}

/* Learns where the leaf's second component is in the sub-document d/sl
 * (its length word sl, checked to lie inside its document, its last byte
 * a NUL): the heads of the elements up to the first of that name, each
 * before it of a fixed size (fields.h's raw walk's checks: keys and values
 * inside the sub-document), it an int32, int64, double or date; false,
 * and no learning for the next PLAN_RELEARN misses, when that is not so. */
static __attribute__((noinline)) bool
plan_learn(pleaf_t *L, const uint8_t *d, uint32_t sl)
{
   const mpath_t *p = L->n->path;
   L->sneed = UINT32_MAX;
   L->wait = PLAN_RELEARN;
   uint32_t o = 4, need = 0;
   for (uint8_t nh = 0; nh < PLAN_HEADS && o + 1 < sl; nh++) {
      const uint8_t *k = d + o + 1;
      size_t room = sl - 1 - (o + 1);
      size_t kl = aspen_bsonw_raw_key_len(k, room);
      uint32_t hl = (uint32_t) kl + 2;
      if (kl == room || hl > 16) {
         return false;
      }
      bool it = kl == (size_t) p->len[1] &&
                aspen_fields_key_eq(k, p->comp[1], kl);
      uint8_t type = d[o];
      int32_t vsize;
      switch ((bson_type_t) type) {
      case BSON_TYPE_INT32:
         vsize = 4;
         break;
      case BSON_TYPE_INT64:
      case BSON_TYPE_DOUBLE:
      case BSON_TYPE_DATE_TIME:
         vsize = 8;
         break;
      case BSON_TYPE_TIMESTAMP:
         vsize = it ? -1 : 8; /* not a number fixed_number reads */
         break;
      case BSON_TYPE_OID:
         vsize = it ? -1 : 12;
         break;
      case BSON_TYPE_DECIMAL128:
         vsize = it ? -1 : 16;
         break;
      case BSON_TYPE_NULL:
         vsize = it ? -1 : 0;
         break;
      default:
         vsize = -1;
         break;
      }
      if (vsize < 0) {
         return false;
      }
      phead_t *h = &L->h[nh];
      uint8_t w[16] = {0};
      memcpy(w, d + o, hl);
      h->off = o;
      h->hl = hl;
      h->w[0] = aspen_bytes_get_le64(w);
      h->w[1] = hl > 8 ? aspen_bytes_get_le64(w + hl - 8) : 0;
      h->mask = hl >= 8 ? ~0ull : (1ull << (8 * hl)) - 1;
      /* The words read (eight bytes from its start, or its head), then
       * its value and at least one byte after it. */
      uint32_t end = o + hl + (uint32_t) vsize;
      uint32_t read = o + (hl > 8 ? hl : 8);
      need = read > need ? read : need;
      need = end + 1 > need ? end + 1 : need;
      if (it) {
         if (need > sl) {
            return false;
         }
         L->nh = (uint8_t) (nh + 1);
         L->vo = o + hl;
         L->vtype = type;
         L->sneed = need;
         L->wait = 0;
         return true;
      }
      o = end;
   }
   return false;
}

/* True if the sub-document at `d` (at least L->sneed bytes) has the
 * leaf's heads at their offsets (the first without a loop: often the
 * only one). */
static inline bool
plan_heads_at(const pleaf_t *L, const uint8_t *d)
{
   if (!phead_at(&L->h[0], d + L->h[0].off)) {
      return false;
   }
   for (uint8_t i = 1; i < L->nh; i++) {
      if (!phead_at(&L->h[i], d + L->h[i].off)) {
         return false;
      }
   }
   return true;
}

/* The leaf's comparison against the document data/len that the table `t`
 * (of the plan's layout) describes: 1 or 0, -2 for cmp_fast to decide. The
 * bounds are cmp_fast's (the value, then at least a byte, inside its
 * document; a sub-document's length word and its length inside the
 * document, its last byte a NUL). A sub-document whose heads differ from
 * the last one's is learned again. */
static inline int
plan_leaf(pleaf_t *L, const aspen_fields_t *t, const uint8_t *data,
          uint32_t len)
{
   if (L->k < 0) {
      return L->miss;
   }
   uint32_t off = t->f[L->k].off;
   uint8_t type = data[off];
   uint32_t vo = off + t->f[L->k].klen + 2;
   if (L->depth == 1) {
      if (vo + (type == BSON_TYPE_INT32 ? 4 : 8) >= len) {
         return -2;
      }
      return plan_value(L, type, data + vo); /* an array: -2 */
   }
   if (type != BSON_TYPE_DOCUMENT) {
      return type == BSON_TYPE_ARRAY ? -2 : L->miss; /* a scalar: missing */
   }
   if (vo + 4 >= len) {
      return -2;
   }
   uint32_t sl = aspen_bytes_get_le32(data + vo);
   const uint8_t *d = data + vo;
   if (sl < 5 || sl >= len - vo || d[sl - 1] != 0) {
      return -2;
   }
   if (sl >= L->sneed && plan_heads_at(L, d)) {
      return plan_value(L, L->vtype, d + L->vo);
   }
   if (L->wait > 0) {
      L->wait--;
   } else if (plan_learn(L, d, sl)) {
      return plan_value(L, L->vtype, d + L->vo);
   }
   return -2;
}

/*
 * aspen_matcher_match for a document whose field table is `fields`, with
 * `plan` (aspen_matcher_plan_new for this matcher; may be NULL)
 * remembering what tables of one layout say about the filter's
 * comparisons (see above). `fields` is NULL or describes `doc` exactly (the
 * caller checked aspen_fields_covers: the plan reads the document through
 * it); `ctx` gives $expr its context and may be NULL (aspen_matcher_match's
 * default), its fields not read. The same results as aspen_matcher_match
 * with ctx->fields = fields. The thread using the plan, one at a time.
 */
bool
aspen_matcher_match_plan(const aspen_matcher_t *m, aspen_matcher_plan_t *plan,
                         const bson_t *doc, const aspen_fields_t *fields,
                         const aspen_expr_ctx_t *ctx, bool *matched,
                         aspen_error_t *err)
{
   if (!plan || !plan->usable || !aspen__match_plan_on || !fields ||
       fields->layout == 0 || fields->len != doc->len) {
      return match_with(m, doc, ctx, fields, matched, err);
   }
   if (fields->layout != plan->layout) {
      plan_build(plan, fields);
   }
   const uint8_t *data = fields->data;
   uint32_t len = fields->len;
   int r = 1;
   for (size_t i = 0; i < plan->n && r == 1; i++) {
      pleaf_t *L = &plan->leaf[i];
      if (L->n) {
         r = plan_leaf(L, fields, data, len);
         if (r < 0) {
            r = cmp_fast(L->n, data, len, fields);
            if (r < 0) {
               eval_t ev = {.ctx = NULL, .err = err, .tab = fields};
               r = cmp_walk(L->n, data, len, &ev);
            }
         }
      } else {
         eval_t ev = {.ctx = NULL, .err = err, .tab = fields}; /* no $expr */
         r = eval_doc(plan->kids[i], data, len, &ev);
      }
   }
   *matched = r == 1;
   return r >= 0;
}

/* ------------------------------------------------------------------------ */
/* Parsing                                                                   */
/* ------------------------------------------------------------------------ */

/* mongod's limit on nested $and/$or/$nor/$elemMatch/$not: it also bounds
 * the recursion of compiling and evaluating. */
#define MAX_TREE_DEPTH 100

typedef struct {
   aspen_matcher_t *m;
   aspen_error_t *err;
   int depth;
} parse_t;

static bool
enter(parse_t *ps)
{
   if (++ps->depth > MAX_TREE_DEPTH) {
      aspen_error_set(ps->err, ASPEN_ERR_BadValue,
                      "exceeded maximum query tree depth of %d",
                      MAX_TREE_DEPTH);
      return false;
   }
   return true;
}

static bool parse_doc(parse_t *ps, const uint8_t *data, uint32_t len,
                      bool sub, nlist_t *out);
static bool parse_doc_fields(parse_t *ps, bson_iter_t *it, bool sub,
                             nlist_t *out);
static bool parse_sub(parse_t *ps, mpath_t *path, const uint8_t *data,
                      uint32_t len, bool sub, nlist_t *out);

static bool
key_is(const bson_iter_t *it, const char *name)
{
   return strcmp(bson_iter_key(it), name) == 0;
}

/* mongod's isDBRefDocument. */
static bool
is_dbref_doc(const uint8_t *data, uint32_t len, bool allow_incomplete)
{
   bool has_ref = false;
   bool has_id = false;
   bool has_db = false;
   bson_iter_t it;
   if (!bson_iter_init_from_data(&it, data, len)) {
      return false;
   }
   while (!(has_ref && has_id) && bson_iter_next(&it)) {
      if (key_is(&it, "$ref")) {
         has_ref = true;
      } else if (key_is(&it, "$id")) {
         has_id = true;
      } else if (key_is(&it, "$db")) {
         has_db = true;
      }
   }
   return allow_incomplete ? (has_ref || has_id || has_db)
                           : (has_ref && has_id);
}

/* mongod's isExpressionDocument: a non-empty object whose first field starts
 * with '$' and that is not a DBRef. */
static bool
is_expression_doc(const bson_iter_t *it, bool allow_incomplete_dbref)
{
   if (!BSON_ITER_HOLDS_DOCUMENT(it)) {
      return false;
   }
   uint32_t len;
   const uint8_t *data;
   bson_iter_document(it, &len, &data);
   bson_iter_t first;
   if (!bson_iter_init_from_data(&first, data, len) ||
       !bson_iter_next(&first) || bson_iter_key(&first)[0] != '$') {
      return false;
   }
   return !is_dbref_doc(data, len, allow_incomplete_dbref);
}

/* Operators that take no path (top-level operators). */
static bool
is_pathless_op(const char *key)
{
   static const char *const ops[] = {
      "$and",  "$or",        "$nor",        "$expr",        "$where",
      "$text", "$comment",   "$jsonSchema", "$alwaysTrue",  "$alwaysFalse",
      "$ref",  "$id",        "$db",         "$sampleRate",  NULL,
   };
   for (size_t i = 0; ops[i]; i++) {
      if (strcmp(key, ops[i]) == 0) {
         return true;
      }
   }
   return false;
}

/* Field operators ASP does not offer (geospatial). */
static bool
is_geo_op(const char *key)
{
   static const char *const ops[] = {"$near",       "$nearSphere",
                                     "$geoWithin",  "$geoIntersects",
                                     "$within",     NULL};
   for (size_t i = 0; ops[i]; i++) {
      if (strcmp(key, ops[i]) == 0) {
         return true;
      }
   }
   return false;
}

/* mongod's path-accepting keywords (every field operator but $not): $all
 * refuses elements such as {$gt: 1} that start with one. */
static bool
is_field_op(const char *key)
{
   static const char *const ops[] = {
      "$eq",        "$ne",          "$gt",          "$gte",
      "$lt",        "$lte",         "$in",          "$nin",
      "$exists",    "$type",        "$size",        "$all",
      "$elemMatch", "$regex",       "$options",     "$mod",
      "$bitsAllSet", "$bitsAllClear", "$bitsAnySet", "$bitsAnyClear",
      NULL,
   };
   for (size_t i = 0; ops[i]; i++) {
      if (strcmp(key, ops[i]) == 0) {
         return true;
      }
   }
   return is_geo_op(key);
}

static const char *
path_name(const mpath_t *path)
{
   return path ? path->dotted : "";
}

static bool
parse_cmp(parse_t *ps, mpath_t *path, const bson_iter_t *it,
          aspen__match_op_t op, nlist_t *out)
{
   bson_type_t t = bson_iter_type(it);
   if (op != ASPEN__MATCH_EQ && t == BSON_TYPE_REGEX) {
      aspen_error_set(ps->err, ASPEN_ERR_BadValue,
                      "Can't have RegEx as arg to predicate over field '%s'.",
                      path_name(path));
      return false;
   }
   if (t == BSON_TYPE_UNDEFINED) {
      aspen_error_set(ps->err, ASPEN_ERR_BadValue,
                      "cannot compare to undefined");
      return false;
   }
   mnode_t *n = node_new(N_CMP, path);
   n->u.cmp.op = op;
   n->u.cmp.rhs = *bson_iter_value((bson_iter_t *) it);
   nlist_push(out, n);
   return true;
}

static bool
parse_regex_value(parse_t *ps, mpath_t *path, const bson_iter_t *it,
                  nlist_t *out)
{
   const char *flags = NULL;
   const char *pattern = bson_iter_regex(it, &flags);
   aspen__match_regex_t *re;
   if (!aspen__match_regex_new(pattern, strlen(pattern), flags, &re,
                               ps->err)) {
      return false;
   }
   mnode_t *n = node_new(N_REGEX, path);
   n->u.re = re;
   nlist_push(out, n);
   return true;
}

/* {$regex: ..., $options: ...}: both are read from the operator document. */
static bool
parse_regex_doc(parse_t *ps, mpath_t *path, const uint8_t *data,
                uint32_t len, nlist_t *out)
{
   const char *pattern = "";
   size_t pattern_len = 0;
   const char *opts = "";
   bson_iter_t it;
   bson_iter_init_from_data(&it, data, len);
   while (bson_iter_next(&it)) {
      if (key_is(&it, "$regex")) {
         if (BSON_ITER_HOLDS_UTF8(&it)) {
            uint32_t l;
            pattern = bson_iter_utf8(&it, &l);
            pattern_len = l;
         } else if (BSON_ITER_HOLDS_REGEX(&it)) {
            const char *flags = NULL;
            pattern = bson_iter_regex(&it, &flags);
            pattern_len = strlen(pattern);
            if (flags && *flags) {
               if (*opts) {
                  aspen_error_set(ps->err, ASPEN_ERR_BadValue,
                                  "options set in both $regex and $options");
                  return false;
               }
               opts = flags;
            }
         } else {
            aspen_error_set(ps->err, ASPEN_ERR_BadValue,
                            "$regex has to be a string");
            return false;
         }
      } else if (key_is(&it, "$options")) {
         if (!BSON_ITER_HOLDS_UTF8(&it)) {
            aspen_error_set(ps->err, ASPEN_ERR_BadValue,
                            "$options has to be a string");
            return false;
         }
         if (*opts) {
            aspen_error_set(ps->err, ASPEN_ERR_BadValue,
                            "options set in both $regex and $options");
            return false;
         }
         opts = bson_iter_utf8(&it, NULL);
      }
   }
   aspen__match_regex_t *re;
   if (!aspen__match_regex_new(pattern, pattern_len, opts, &re, ps->err)) {
      return false;
   }
   mnode_t *n = node_new(N_REGEX, path);
   n->u.re = re;
   nlist_push(out, n);
   return true;
}

static bool
parse_in(parse_t *ps, mpath_t *path, const bson_iter_t *it, bool negate,
         nlist_t *out)
{
   if (!BSON_ITER_HOLDS_ARRAY(it)) {
      aspen_error_set(ps->err, ASPEN_ERR_BadValue, "%s needs an array",
                      negate ? "$nin" : "$in");
      return false;
   }
   bson_iter_t el;
   size_t count = aspen__value_child_count(it);
   mnode_t *n = node_new(N_IN, path);
   n->u.in.vals = aspen_xcalloc(count ? count : 1, sizeof *n->u.in.vals);
   bson_iter_recurse(it, &el);
   while (bson_iter_next(&el)) {
      if (is_expression_doc(&el, false)) {
         aspen_error_set(ps->err, ASPEN_ERR_BadValue,
                         "cannot nest $ under $in");
         node_destroy(n);
         return false;
      }
      bson_type_t t = bson_iter_type(&el);
      if (t == BSON_TYPE_REGEX) {
         const char *flags = NULL;
         const char *pattern = bson_iter_regex(&el, &flags);
         aspen__match_regex_t *re;
         if (!aspen__match_regex_new(pattern, strlen(pattern), flags, &re,
                                     ps->err)) {
            node_destroy(n);
            return false;
         }
         n->u.in.res = aspen_xrealloc(
            n->u.in.res, (n->u.in.n_res + 1) * sizeof *n->u.in.res);
         n->u.in.res[n->u.in.n_res++] = re;
         continue;
      }
      if (t == BSON_TYPE_UNDEFINED) {
         aspen_error_set(ps->err, ASPEN_ERR_BadValue,
                         "InMatchExpression equality cannot be undefined");
         node_destroy(n);
         return false;
      }
      if (t == BSON_TYPE_NULL) {
         n->u.in.has_null = true;
      }
      n->u.in.vals[n->u.in.n++] = *bson_iter_value(&el);
   }
   /* Large lists are searched by bisection; NaN is excluded because it
    * breaks the ordering the search relies on. */
   bool has_nan = false;
   for (size_t i = 0; i < n->u.in.n; i++) {
      has_nan = has_nan || aspen__match_value_is_nan(&n->u.in.vals[i]);
   }
   if (n->u.in.n > 16 && !has_nan) {
      qsort(n->u.in.vals, n->u.in.n, sizeof *n->u.in.vals, cmp_in_sorted);
      n->u.in.sorted = true;
   }
   nlist_push(out, negate ? node_not(n) : n);
   return true;
}

/* One $type argument (a number or an alias). */
static bool
parse_one_type(parse_t *ps, const bson_iter_t *it, aspen__match_types_t *bits)
{
   if (BSON_ITER_HOLDS_UTF8(it)) {
      const char *name = bson_iter_utf8(it, NULL);
      if (!aspen__match_type_alias(name, bits)) {
         aspen_error_set(ps->err, ASPEN_ERR_BadValue,
                         "Unknown type name alias: %s", name);
         return false;
      }
      return true;
   }
   if (!aspen__match_is_number_type(bson_iter_type(it))) {
      aspen_error_set(ps->err, ASPEN_ERR_TypeMismatch,
                      "type must be represented as a number or a string");
      return false;
   }
   double d =
      aspen__match_number_as_double(bson_iter_value((bson_iter_t *) it));
   int code = (int) d;
   bool whole = !isnan(d) && d >= -2147483648.0 && d <= 2147483647.0 &&
                (double) code == d;
   if (whole && code == -1) {
      *bits = 1u << ASPEN__MATCH_TYPE_BIT_MINKEY;
      return true;
   }
   if (whole && code == 127) {
      *bits = 1u << ASPEN__MATCH_TYPE_BIT_MAXKEY;
      return true;
   }
   if (whole && code >= 1 && code <= 19) {
      *bits = 1u << code;
      return true;
   }
   aspen_error_set(ps->err, ASPEN_ERR_BadValue,
                   "Invalid numerical type code: %g", d);
   return false;
}

static bool
parse_type(parse_t *ps, mpath_t *path, const bson_iter_t *it, nlist_t *out)
{
   aspen__match_types_t set = 0;
   if (BSON_ITER_HOLDS_ARRAY(it)) {
      bson_iter_t el;
      bson_iter_recurse(it, &el);
      while (bson_iter_next(&el)) {
         aspen__match_types_t bits;
         if (!parse_one_type(ps, &el, &bits)) {
            return false;
         }
         set |= bits;
      }
      if (!set) {
         aspen_error_set(ps->err, ASPEN_ERR_FailedToParse,
                         "%s must match at least one type", path_name(path));
         return false;
      }
   } else if (!parse_one_type(ps, it, &set)) {
      return false;
   }
   mnode_t *n = node_new(N_TYPE, path);
   n->u.types = set;
   nlist_push(out, n);
   return true;
}

static bool
parse_size(parse_t *ps, mpath_t *path, const bson_iter_t *it, nlist_t *out)
{
   int64_t size;
   switch (bson_iter_type(it)) {
   case BSON_TYPE_INT32:
      size = bson_iter_int32(it);
      break;
   case BSON_TYPE_INT64:
      size = bson_iter_int64(it);
      if (size < INT32_MIN || size > INT32_MAX) {
         aspen_error_set(ps->err, ASPEN_ERR_BadValue,
                         "$size must be representable as a 32-bit integer");
         return false;
      }
      break;
   case BSON_TYPE_DOUBLE:
   case BSON_TYPE_DECIMAL128: {
      double d =
         aspen__match_number_as_double(bson_iter_value((bson_iter_t *) it));
      if (isnan(d) || d < -2147483648.0 || d > 2147483647.0 ||
          d != (double) (int32_t) d) {
         aspen_error_set(ps->err, ASPEN_ERR_BadValue,
                         "$size must be a whole number");
         return false;
      }
      size = (int32_t) d;
      break;
   }
   default:
      aspen_error_set(ps->err, ASPEN_ERR_BadValue, "$size needs a number");
      return false;
   }
   if (size < 0) {
      aspen_error_set(ps->err, ASPEN_ERR_BadValue,
                      "$size may not be negative");
      return false;
   }
   mnode_t *n = node_new(N_SIZE, path);
   n->u.size = size;
   nlist_push(out, n);
   return true;
}

static bool
parse_mod_number(parse_t *ps, const bson_iter_t *it, const char *what,
                 int64_t *out)
{
   double d = 0;
   switch (bson_iter_type(it)) {
   case BSON_TYPE_INT32:
      *out = bson_iter_int32(it);
      return true;
   case BSON_TYPE_INT64:
      *out = bson_iter_int64(it);
      return true;
   case BSON_TYPE_DOUBLE:
   case BSON_TYPE_DECIMAL128:
      d = trunc(
         aspen__match_number_as_double(bson_iter_value((bson_iter_t *) it)));
      if (!isfinite(d)) {
         aspen_error_set(ps->err, ASPEN_ERR_BadValue,
                         "malformed mod, %s value is invalid :: caused by :: "
                         "Unable to coerce NaN/Inf to integral type",
                         what);
         return false;
      }
      if (d >= 9223372036854775808.0 || d < -9223372036854775808.0) {
         aspen_error_set(ps->err, ASPEN_ERR_BadValue,
                         "malformed mod, %s value is invalid :: caused by :: "
                         "Out of bounds coercing to integral value",
                         what);
         return false;
      }
      *out = (int64_t) d;
      return true;
   default:
      aspen_error_set(ps->err, ASPEN_ERR_BadValue,
                      "malformed mod, %s not a number", what);
      return false;
   }
}

static bool
parse_mod(parse_t *ps, mpath_t *path, const bson_iter_t *it, nlist_t *out)
{
   if (!BSON_ITER_HOLDS_ARRAY(it)) {
      aspen_error_set(ps->err, ASPEN_ERR_BadValue,
                      "malformed mod, needs to be an array");
      return false;
   }
   bson_iter_t el;
   bson_iter_recurse(it, &el);
   int64_t div;
   int64_t rem;
   if (!bson_iter_next(&el)) {
      aspen_error_set(ps->err, ASPEN_ERR_BadValue,
                      "malformed mod, not enough elements");
      return false;
   }
   if (!parse_mod_number(ps, &el, "divisor", &div)) {
      return false;
   }
   if (!bson_iter_next(&el)) {
      aspen_error_set(ps->err, ASPEN_ERR_BadValue,
                      "malformed mod, not enough elements");
      return false;
   }
   if (!parse_mod_number(ps, &el, "remainder", &rem)) {
      return false;
   }
   if (bson_iter_next(&el)) {
      aspen_error_set(ps->err, ASPEN_ERR_BadValue,
                      "malformed mod, too many elements");
      return false;
   }
   if (div == 0) {
      aspen_error_set(ps->err, ASPEN_ERR_BadValue, "divisor cannot be 0");
      return false;
   }
   mnode_t *n = node_new(N_MOD, path);
   n->u.mod.div = div;
   n->u.mod.rem = rem;
   nlist_push(out, n);
   return true;
}

static void
bits_add(mnode_t *n, size_t *cap, uint32_t pos)
{
   if (n->u.bits.n == *cap) {
      *cap = *cap ? *cap * 2 : 8;
      n->u.bits.pos = aspen_xrealloc(n->u.bits.pos, *cap * sizeof(uint32_t));
   }
   n->u.bits.pos[n->u.bits.n++] = pos;
}

static bool
parse_bits(parse_t *ps, mpath_t *path, const bson_iter_t *it, bits_op_t op,
           nlist_t *out)
{
   const char *name = bson_iter_key(it);
   mnode_t *n = node_new(N_BITS, path);
   n->u.bits.op = op;
   size_t cap = 0;
   char desc[256];
   if (BSON_ITER_HOLDS_ARRAY(it)) {
      bson_iter_t el;
      bson_iter_recurse(it, &el);
      while (bson_iter_next(&el)) {
         aspen__match_describe(&el, bson_iter_key(&el), desc, sizeof desc);
         if (!aspen__match_is_number_type(bson_iter_type(&el))) {
            aspen_error_set(ps->err, ASPEN_ERR_BadValue,
                            "bit positions must be an integer but got: %s",
                            desc);
            node_destroy(n);
            return false;
         }
         double d = aspen__match_number_as_double(bson_iter_value(&el));
         if (isnan(d)) {
            aspen_error_set(ps->err, ASPEN_ERR_BadValue,
                            "bit positions cannot take a NaN: %s", desc);
            node_destroy(n);
            return false;
         }
         if (d > 2147483647.0 || d < -2147483648.0) {
            aspen_error_set(ps->err, ASPEN_ERR_BadValue,
                            "bit positions cannot be represented as a 32-bit "
                            "signed integer: %s",
                            desc);
            node_destroy(n);
            return false;
         }
         if (d != (double) (int64_t) d) {
            aspen_error_set(ps->err, ASPEN_ERR_BadValue,
                            "bit positions must be an integer but got: %s",
                            desc);
            node_destroy(n);
            return false;
         }
         if (d < 0) {
            aspen_error_set(ps->err, ASPEN_ERR_BadValue,
                            "bit positions must be >= 0 but got: %s", desc);
            node_destroy(n);
            return false;
         }
         bits_add(n, &cap, (uint32_t) d);
      }
   } else if (aspen__match_is_number_type(bson_iter_type(it))) {
      int64_t mask;
      if (!aspen__match_parse_count(it, name, &mask, ps->err)) {
         node_destroy(n);
         return false;
      }
      for (uint32_t b = 0; b < 64; b++) {
         if (((uint64_t) mask >> b) & 1) {
            bits_add(n, &cap, b);
         }
      }
   } else if (BSON_ITER_HOLDS_BINARY(it)) {
      const uint8_t *data;
      uint32_t len;
      bson_iter_binary(it, NULL, &len, &data);
      for (uint32_t i = 0; i < len; i++) {
         for (uint32_t b = 0; b < 8; b++) {
            if ((data[i] >> b) & 1) {
               bits_add(n, &cap, i * 8 + b);
            }
         }
      }
   } else {
      aspen__match_describe(it, name, desc, sizeof desc);
      aspen_error_set(ps->err, ASPEN_ERR_BadValue,
                      "%s takes an Array, a number, or a BinData but "
                      "received: %s",
                      name, desc);
      node_destroy(n);
      return false;
   }
   nlist_push(out, n);
   return true;
}

static bool
parse_elem_match(parse_t *ps, mpath_t *path, const bson_iter_t *it,
                 nlist_t *out)
{
   if (!BSON_ITER_HOLDS_DOCUMENT(it)) {
      aspen_error_set(ps->err, ASPEN_ERR_BadValue,
                      "$elemMatch needs an Object");
      return false;
   }
   uint32_t len;
   const uint8_t *data;
   bson_iter_document(it, &len, &data);
   bool value_form = false;
   if (is_expression_doc(it, true)) {
      bson_iter_t first;
      bson_iter_init_from_data(&first, data, len);
      bson_iter_next(&first);
      value_form = !is_pathless_op(bson_iter_key(&first));
   }
   nlist_t kids = {0};
   if (value_form) {
      /* {$elemMatch: {$gt: 1, $lt: 5}}: operators on each element. */
      if (!parse_sub(ps, NULL, data, len, true, &kids)) {
         nlist_cleanup(&kids);
         return false;
      }
      nlist_push(out, node_from_list(N_ELEM_VAL, path, &kids));
      return true;
   }
   /* {$elemMatch: {b: 1, c: {$gt: 2}}}: a filter on each element. */
   if (!parse_doc(ps, data, len, true, &kids)) {
      nlist_cleanup(&kids);
      return false;
   }
   nlist_t one = {0};
   nlist_push(&one, node_and(&kids));
   nlist_push(out, node_from_list(N_ELEM_OBJ, path, &one));
   return true;
}

static bool
parse_all(parse_t *ps, mpath_t *path, const bson_iter_t *it, nlist_t *out)
{
   if (!BSON_ITER_HOLDS_ARRAY(it)) {
      aspen_error_set(ps->err, ASPEN_ERR_BadValue, "$all needs an array");
      return false;
   }
   bson_iter_t el;
   bson_iter_recurse(it, &el);
   nlist_t kids = {0};
   bool elem_form = false;
   if (bson_iter_next(&el) && BSON_ITER_HOLDS_DOCUMENT(&el)) {
      bson_iter_t first;
      if (bson_iter_recurse(&el, &first) && bson_iter_next(&first) &&
          key_is(&first, "$elemMatch")) {
         elem_form = true;
      }
   }
   bson_iter_recurse(it, &el);
   while (bson_iter_next(&el)) {
      bool ok;
      if (elem_form) {
         bson_iter_t first;
         if (!BSON_ITER_HOLDS_DOCUMENT(&el) ||
             !bson_iter_recurse(&el, &first) || !bson_iter_next(&first) ||
             !key_is(&first, "$elemMatch")) {
            aspen_error_set(ps->err, ASPEN_ERR_BadValue,
                            "$all/$elemMatch has to be consistent");
            ok = false;
         } else {
            ok = parse_elem_match(ps, path, &first, &kids);
         }
      } else if (BSON_ITER_HOLDS_REGEX(&el)) {
         ok = parse_regex_value(ps, path, &el, &kids);
      } else {
         bson_iter_t first;
         if (BSON_ITER_HOLDS_DOCUMENT(&el) && bson_iter_recurse(&el, &first) &&
             bson_iter_next(&first) && is_field_op(bson_iter_key(&first))) {
            aspen_error_set(ps->err, ASPEN_ERR_BadValue,
                            "no $ expressions in $all");
            ok = false;
         } else {
            ok = parse_cmp(ps, path, &el, ASPEN__MATCH_EQ, &kids);
         }
      }
      if (!ok) {
         nlist_cleanup(&kids);
         return false;
      }
   }
   if (kids.n == 0) {
      nlist_push(out, node_new(N_FALSE, NULL));
      return true;
   }
   nlist_push(out, node_and(&kids));
   return true;
}

static bool
parse_not(parse_t *ps, mpath_t *path, const bson_iter_t *it, bool sub,
          nlist_t *out)
{
   nlist_t kids = {0};
   if (BSON_ITER_HOLDS_REGEX(it)) {
      if (!parse_regex_value(ps, path, it, &kids)) {
         return false;
      }
      nlist_push(out, node_not(node_and(&kids)));
      return true;
   }
   if (!BSON_ITER_HOLDS_DOCUMENT(it)) {
      aspen_error_set(ps->err, ASPEN_ERR_BadValue,
                      "$not needs a regex or a document");
      return false;
   }
   uint32_t len;
   const uint8_t *data;
   bson_iter_document(it, &len, &data);
   if (len <= 5) {
      aspen_error_set(ps->err, ASPEN_ERR_BadValue, "$not cannot be empty");
      return false;
   }
   if (!parse_sub(ps, path, data, len, sub, &kids)) {
      nlist_cleanup(&kids);
      return false;
   }
   /* Every member of a non-empty operator document either fails or adds a
    * node ($options is skipped only next to a $regex, which adds one). */
   ASPEN_ASSERT(kids.n > 0);
   nlist_push(out, node_not(node_and(&kids)));
   return true;
}

static bool
refuse_in_asp(parse_t *ps, const char *op)
{
   aspen_error_set(ps->err, ASPEN_ERR_BadValue,
                   "%s is not supported in Atlas Stream Processing", op);
   return false;
}

/* One member of an operator document: {<path>: {<this>, ...}}. `ctx` is the
 * whole operator document (for $regex/$options). */
static bool
parse_sub_field(parse_t *ps, mpath_t *path, const uint8_t *ctx_data,
                uint32_t ctx_len, const bson_iter_t *it, bool sub,
                nlist_t *out)
{
   const char *op = bson_iter_key(it);
   if (strcmp(op, "$eq") == 0) {
      return parse_cmp(ps, path, it, ASPEN__MATCH_EQ, out);
   }
   if (strcmp(op, "$not") == 0) {
      return parse_not(ps, path, it, sub, out);
   }
   if (strcmp(op, "$ne") == 0) {
      if (BSON_ITER_HOLDS_REGEX(it)) {
         aspen_error_set(ps->err, ASPEN_ERR_BadValue,
                         "Can't have regex as arg to $ne.");
         return false;
      }
      nlist_t one = {0};
      if (!parse_cmp(ps, path, it, ASPEN__MATCH_EQ, &one)) {
         return false;
      }
      nlist_push(out, node_not(node_and(&one)));
      return true;
   }
   if (strcmp(op, "$gt") == 0) {
      return parse_cmp(ps, path, it, ASPEN__MATCH_GT, out);
   }
   if (strcmp(op, "$gte") == 0) {
      return parse_cmp(ps, path, it, ASPEN__MATCH_GTE, out);
   }
   if (strcmp(op, "$lt") == 0) {
      return parse_cmp(ps, path, it, ASPEN__MATCH_LT, out);
   }
   if (strcmp(op, "$lte") == 0) {
      return parse_cmp(ps, path, it, ASPEN__MATCH_LTE, out);
   }
   if (strcmp(op, "$in") == 0) {
      return parse_in(ps, path, it, false, out);
   }
   if (strcmp(op, "$nin") == 0) {
      return parse_in(ps, path, it, true, out);
   }
   if (strcmp(op, "$exists") == 0) {
      aspen_value_t v = {.v = *bson_iter_value((bson_iter_t *) it),
                         .owned = false};
      mnode_t *n = node_new(N_EXISTS, path);
      nlist_push(out, aspen_value_truthy(&v) ? n : node_not(n));
      return true;
   }
   if (strcmp(op, "$type") == 0) {
      return parse_type(ps, path, it, out);
   }
   if (strcmp(op, "$size") == 0) {
      return parse_size(ps, path, it, out);
   }
   if (strcmp(op, "$mod") == 0) {
      return parse_mod(ps, path, it, out);
   }
   if (strcmp(op, "$regex") == 0) {
      return parse_regex_doc(ps, path, ctx_data, ctx_len, out);
   }
   if (strcmp(op, "$options") == 0) {
      bson_iter_t c;
      bson_iter_init_from_data(&c, ctx_data, ctx_len);
      if (bson_iter_find(&c, "$regex")) {
         return true; /* read together with $regex */
      }
      aspen_error_set(ps->err, ASPEN_ERR_BadValue, "$options needs a $regex");
      return false;
   }
   if (strcmp(op, "$elemMatch") == 0) {
      return parse_elem_match(ps, path, it, out);
   }
   if (strcmp(op, "$all") == 0) {
      return parse_all(ps, path, it, out);
   }
   if (strcmp(op, "$bitsAllSet") == 0) {
      return parse_bits(ps, path, it, BITS_ALL_SET, out);
   }
   if (strcmp(op, "$bitsAllClear") == 0) {
      return parse_bits(ps, path, it, BITS_ALL_CLEAR, out);
   }
   if (strcmp(op, "$bitsAnySet") == 0) {
      return parse_bits(ps, path, it, BITS_ANY_SET, out);
   }
   if (strcmp(op, "$bitsAnyClear") == 0) {
      return parse_bits(ps, path, it, BITS_ANY_CLEAR, out);
   }
   if (is_geo_op(op) || strcmp(op, "$where") == 0) {
      return refuse_in_asp(ps, op);
   }
   aspen_error_set(ps->err, ASPEN_ERR_BadValue, "unknown operator: %s", op);
   return false;
}

/* An operator document for `path` ({$gt: 1, $lt: 5}); appends one node per
 * operator to `out`. */
static bool
parse_sub(parse_t *ps, mpath_t *path, const uint8_t *data, uint32_t len,
          bool sub, nlist_t *out)
{
   bson_iter_t it;
   if (!bson_iter_init_from_data(&it, data, len)) {
      aspen_error_set(ps->err, ASPEN_ERR_BadValue, "invalid BSON in filter");
      return false;
   }
   bool ok = enter(ps);
   while (ok && bson_iter_next(&it)) {
      ok = parse_sub_field(ps, path, data, len, &it, sub, out);
   }
   ps->depth--;
   return ok;
}

/* $and / $or / $nor. */
static bool
parse_tree(parse_t *ps, const bson_iter_t *it, nkind_t kind, bool sub,
           nlist_t *out)
{
   const char *name = bson_iter_key(it);
   if (!BSON_ITER_HOLDS_ARRAY(it)) {
      aspen_error_set(ps->err, ASPEN_ERR_BadValue, "%s must be an array",
                      name);
      return false;
   }
   bson_iter_t el;
   bson_iter_recurse(it, &el);
   nlist_t kids = {0};
   while (bson_iter_next(&el)) {
      if (!BSON_ITER_HOLDS_DOCUMENT(&el)) {
         aspen_error_set(ps->err, ASPEN_ERR_BadValue,
                         "$or/$and/$nor entries need to be full objects");
         nlist_cleanup(&kids);
         return false;
      }
      uint32_t len;
      const uint8_t *data;
      bson_iter_document(&el, &len, &data);
      nlist_t one = {0};
      if (!parse_doc(ps, data, len, sub, &one)) {
         nlist_cleanup(&one);
         nlist_cleanup(&kids);
         return false;
      }
      nlist_push(&kids, node_and(&one));
   }
   if (kids.n == 0) {
      aspen_error_set(ps->err, ASPEN_ERR_BadValue,
                      "$and/$or/$nor must be a nonempty array");
      return false;
   }
   nlist_push(out, node_from_list(kind, NULL, &kids));
   return true;
}

/* A top-level (pathless) operator. */
static bool
parse_top_op(parse_t *ps, const bson_iter_t *it, bool sub, nlist_t *out)
{
   const char *op = bson_iter_key(it);
   if (strcmp(op, "$and") == 0) {
      return parse_tree(ps, it, N_AND, sub, out);
   }
   if (strcmp(op, "$or") == 0) {
      return parse_tree(ps, it, N_OR, sub, out);
   }
   if (strcmp(op, "$nor") == 0) {
      return parse_tree(ps, it, N_NOR, sub, out);
   }
   if (strcmp(op, "$comment") == 0) {
      return true;
   }
   if (strcmp(op, "$expr") == 0) {
      if (sub) {
         aspen_error_set(ps->err, ASPEN_ERR_BadValue,
                         "$expr can only be applied to the top-level "
                         "document");
         return false;
      }
      aspen_expr_t *e;
      if (!aspen_expr_parse(it, NULL, &e, ps->err)) {
         return false;
      }
      mnode_t *n = node_new(N_EXPR, NULL);
      n->u.expr = e;
      ps->m->has_expr = true;
      nlist_push(out, n);
      return true;
   }
   if (strcmp(op, "$jsonSchema") == 0) {
      if (!BSON_ITER_HOLDS_DOCUMENT(it)) {
         aspen_error_set(ps->err, ASPEN_ERR_TypeMismatch,
                         "$jsonSchema must be an object");
         return false;
      }
      aspen__match_schema_t *schema;
      if (!aspen__match_schema_new(it, &schema, ps->err)) {
         return false;
      }
      mnode_t *n = node_new(N_SCHEMA, NULL);
      n->u.schema = schema;
      nlist_push(out, n);
      return true;
   }
   if (strcmp(op, "$alwaysTrue") == 0 || strcmp(op, "$alwaysFalse") == 0) {
      int64_t v;
      if (!aspen__match_parse_int64(it, op, &v, ps->err)) {
         return false;
      }
      if (v != 1) {
         aspen_error_set(ps->err, ASPEN_ERR_FailedToParse,
                         "%s must be an integer value of 1", op);
         return false;
      }
      nlist_push(out, node_new(op[7] == 'T' ? N_TRUE : N_FALSE, NULL));
      return true;
   }
   if (strcmp(op, "$text") == 0) {
      aspen_error_set(ps->err, ASPEN_ERR_BadValue,
                      "Cannot use $text in $match stage in Atlas Stream "
                      "Processing.");
      return false;
   }
   if (strcmp(op, "$where") == 0 || strcmp(op, "$sampleRate") == 0) {
      return refuse_in_asp(ps, op);
   }
   if (strcmp(op, "$ref") == 0 || strcmp(op, "$id") == 0 ||
       strcmp(op, "$db") == 0) {
      /* DBRef members matched as plain fields (inside $elemMatch). */
      mpath_t *path = path_new(op, strlen(op));
      bool ok = parse_cmp(ps, path, it, ASPEN__MATCH_EQ, out);
      path_unref(path);
      return ok;
   }
   aspen_error_set(ps->err, ASPEN_ERR_BadValue,
                   "unknown top level operator: %s", op);
   return false;
}

/* A filter document; appends its conjuncts to `out`. `sub` is true inside
 * $elemMatch, where $expr is refused. */
static bool
parse_doc(parse_t *ps, const uint8_t *data, uint32_t len, bool sub,
          nlist_t *out)
{
   bson_iter_t it;
   if (!bson_iter_init_from_data(&it, data, len)) {
      aspen_error_set(ps->err, ASPEN_ERR_BadValue, "invalid BSON in filter");
      return false;
   }
   if (!enter(ps)) {
      return false;
   }
   bool ok = parse_doc_fields(ps, &it, sub, out);
   ps->depth--;
   return ok;
}

/* The fields of a filter document, from the iterator's position. */
static bool
parse_doc_fields(parse_t *ps, bson_iter_t *it, bool sub, nlist_t *out)
{
   while (bson_iter_next(it)) {
      const char *key = bson_iter_key(it);
      if (key[0] == '$') {
         if (!parse_top_op(ps, it, sub, out)) {
            return false;
         }
         continue;
      }
      mpath_t *path = path_new(key, bson_iter_key_len(it));
      bool ok;
      if (is_expression_doc(it, false)) {
         uint32_t sub_len;
         const uint8_t *sub_data;
         bson_iter_document(it, &sub_len, &sub_data);
         ok = parse_sub(ps, path, sub_data, sub_len, sub, out);
      } else if (BSON_ITER_HOLDS_REGEX(it)) {
         ok = parse_regex_value(ps, path, it, out);
      } else {
         ok = parse_cmp(ps, path, it, ASPEN__MATCH_EQ, out);
      }
      path_unref(path);
      if (!ok) {
         return false;
      }
   }
   return true;
}

/* ------------------------------------------------------------------------ */
/* Public API                                                                */
/* ------------------------------------------------------------------------ */

/*
 * Compiles `filter` into a matcher. The filter is borrowed and must outlive
 * the matcher, which keeps views into it (constants, regex patterns, $expr
 * constants). On success returns true and *out owns the new matcher; on an
 * invalid filter returns false, sets err (mongod's message; code BadValue
 * unless mongod uses FailedToParse/TypeMismatch, or the $expr parser's code)
 * and leaves *out NULL. Any thread.
 */
bool
aspen_matcher_new(const bson_t *filter, aspen_matcher_t **out,
                  aspen_error_t *err)
{
   *out = NULL;
   aspen_matcher_t *m = aspen_xcalloc(1, sizeof *m);
   parse_t ps = {.m = m, .err = err};
   nlist_t conj = {0};
   if (!parse_doc(&ps, bson_get_data(filter), filter->len, false, &conj)) {
      nlist_cleanup(&conj);
      free(m);
      return false;
   }
   m->root = node_and(&conj);
   *out = m;
   return true;
}

/* Frees the matcher; NULL is a no-op. Any thread, once no match call on it
 * is running. */
void
aspen_matcher_destroy(aspen_matcher_t *m)
{
   if (m) {
      node_destroy(m->root);
      free(m);
   }
}

/*
 * Evaluates the matcher on `doc` (borrowed). On success returns true and
 * sets *matched. Returns false with err set (and *matched false) only when
 * an $expr fails at run time (e.g. $divide by zero): the caller sends the
 * document to the DLQ. `ctx` supplies $expr's metadata and clock (its root
 * is taken to be `doc`); NULL uses no metadata and the wall clock. Does not
 * allocate unless $expr or the first regex search on a thread does. Any
 * thread, concurrently on one matcher.
 */
bool
aspen_matcher_match(const aspen_matcher_t *m, const bson_t *doc,
                    const aspen_expr_ctx_t *ctx, bool *matched,
                    aspen_error_t *err)
{
   return match_with(m, doc, ctx, ctx ? ctx->fields : NULL, matched, err);
}
