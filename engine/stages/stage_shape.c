/*
 * stage_shape.c - the stages that reshape a document: $project (inclusion,
 * exclusion, computed fields), $addFields / $set, $unset, $replaceRoot /
 * $replaceWith, and $unwind. They share one field tree: a spec like
 * {"a.b": 1, c: {d: 0}} becomes nodes per path component, each a leaf
 * (include, exclude, expression) or a subtree. Documents are rebuilt in one
 * pass over the input fields, so unchanged values are copied byte for byte
 * and nothing is parsed twice.
 */
#include "bsonw.h"
#include "runtime/pipeline.h"
#include "stages/shape.h"

#include <stdlib.h>
#include <string.h>

/* ---- the field tree ----------------------------------------------------- */

typedef enum { N_INCLUDE, N_EXCLUDE, N_EXPR, N_SUB } node_kind_t;

typedef struct node {
   char *name;
   size_t name_len;
   node_kind_t kind;
   aspen_expr_t *expr;
   struct node *kids;
   size_t n_kids;
   bool has_expr; /* N_SUB: some descendant is an expression */
   /* N_EXPR given as a plain field path ("$a.b"): its components, written
    * by copying the value's bytes (copy_path) rather than evaluated; and
    * the first one's index per input table layout (fields.h's memo). */
   char **cp;
   uint32_t *cp_len;
   uint32_t cp_n;
   uint64_t cp_memo;
} node_t;

typedef struct {
   node_t root;   /* N_SUB */
   bool inclusion; /* $project: inclusion mode */
   bool id_excluded;
} tree_t;

static void
node_cleanup(node_t *n)
{
   for (size_t i = 0; i < n->n_kids; i++) {
      node_cleanup(&n->kids[i]);
   }
   free(n->kids);
   free(n->name);
   for (uint32_t i = 0; i < n->cp_n; i++) {
      free(n->cp[i]);
   }
   free(n->cp);
   free(n->cp_len);
   aspen_expr_destroy(n->expr);
   memset(n, 0, sizeof *n);
}

static node_t *
node_child(node_t *parent, const char *name, size_t len, bool create)
{
   for (size_t i = 0; i < parent->n_kids; i++) {
      if (parent->kids[i].name_len == len &&
          memcmp(parent->kids[i].name, name, len) == 0) {
         return &parent->kids[i];
      }
   }
   if (!create) {
      return NULL;
   }
   parent->kids =
      aspen_xrealloc(parent->kids, (parent->n_kids + 1) * sizeof *parent->kids);
   node_t *n = &parent->kids[parent->n_kids++];
   memset(n, 0, sizeof *n);
   n->name = aspen_xmalloc(len + 1);
   memcpy(n->name, name, len);
   n->name[len] = '\0';
   n->name_len = len;
   n->kind = N_SUB;
   return n;
}

typedef enum { MODE_PROJECT, MODE_ADD_FIELDS, MODE_UNSET } tree_mode_t;

static bool is_operator_object(const bson_iter_t *it);

/* Adds the leaf for `path` (dotted) under `root`. */
static bool
tree_add(node_t *root, const char *path, node_kind_t kind, aspen_expr_t *expr,
         aspen_error_t *err, const char *stage)
{
   node_t *cur = root;
   const char *p = path;
   const char *why = NULL;
   if (*path == '\0') {
      why = "FieldPath cannot be constructed with empty string";
   } else if (path[strlen(path) - 1] == '.') {
      why = "FieldPath must not end with a '.'.";
   } else if (*path == '$') {
      why = "FieldPath field names may not start with '$'. Consider using "
            "$getField or $setField.";
   }
   if (why) {
      aspen_error_set(err, ASPEN_ERR_FailedToParse,
                      "Invalid %s :: caused by :: %s", stage, why);
      aspen_expr_destroy(expr);
      return false;
   }
   for (;;) {
      const char *dot = strchr(p, '.');
      size_t len = dot ? (size_t) (dot - p) : strlen(p);
      if (len == 0) {
         aspen_error_set(err, ASPEN_ERR_FailedToParse,
                         "Invalid %s :: caused by :: FieldPath field names "
                         "may not be empty strings.",
                         stage);
         (void) path;
         aspen_expr_destroy(expr);
         return false;
      }
      node_t *n = node_child(cur, p, len, true);
      if (!dot) {
         if (n->kind != N_SUB || n->n_kids > 0) {
            aspen_error_set(err, ASPEN_ERR_FailedToParse,
                            "Invalid %s :: caused by :: Path collision at %s",
                            stage, path);
            aspen_expr_destroy(expr);
            return false;
         }
         n->kind = kind;
         n->expr = expr;
         return true; /* tree_mark sets has_expr on the way up */
      }
      if (n->kind != N_SUB) {
         aspen_error_set(err, ASPEN_ERR_FailedToParse,
                         "Invalid %s :: caused by :: Path collision at %s",
                         stage, path);
         aspen_expr_destroy(expr);
         return false;
      }
      cur = n;
      p = dot + 1;
   }
}

/* Recomputes has_expr bottom-up. */
static bool
tree_mark(node_t *n)
{
   bool any = n->kind == N_EXPR;
   for (size_t i = 0; i < n->n_kids; i++) {
      if (tree_mark(&n->kids[i])) {
         any = true;
      }
   }
   if (n->kind == N_SUB) {
      n->has_expr = any;
   }
   return any;
}

static bool
is_operator_object(const bson_iter_t *it)
{
   if (!BSON_ITER_HOLDS_DOCUMENT(it)) {
      return false;
   }
   uint32_t len;
   const uint8_t *data;
   bson_t sub;
   bson_iter_t si;
   bson_iter_document(it, &len, &data);
   (void) bson_init_static(&sub, data, len);
   return bson_iter_init(&si, &sub) && bson_iter_next(&si) &&
          bson_iter_key(&si)[0] == '$';
}

/* The node of the dotted `path` under `root` (tree_add made it). */
static node_t *
tree_leaf(node_t *root, const char *path)
{
   node_t *cur = root;
   for (const char *p = path; cur;) {
      const char *dot = strchr(p, '.');
      size_t len = dot ? (size_t) (dot - p) : strlen(p);
      cur = node_child(cur, p, len, false);
      if (!dot) {
         return cur;
      }
      p = dot + 1;
   }
   return NULL;
}

/* Marks the computed field `n`, whose expression the string `text`
 * compiled to, as a plain field path when it is one ("$a.b", parsed
 * already: no empty component, not a variable). */
static void
node_set_copy(node_t *n, const char *text)
{
   if (!n || n->kind != N_EXPR || text[0] != '$' || text[1] == '$' ||
       text[1] == '\0') {
      return;
   }
   const char *p = text + 1;
   for (;;) {
      const char *dot = strchr(p, '.');
      size_t len = dot ? (size_t) (dot - p) : strlen(p);
      n->cp = aspen_xrealloc(n->cp, (n->cp_n + 1) * sizeof *n->cp);
      n->cp_len = aspen_xrealloc(n->cp_len, (n->cp_n + 1) * sizeof *n->cp_len);
      n->cp[n->cp_n] = aspen_xmalloc(len + 1);
      memcpy(n->cp[n->cp_n], p, len);
      n->cp[n->cp_n][len] = '\0';
      n->cp_len[n->cp_n++] = (uint32_t) len;
      if (!dot) {
         return;
      }
      p = dot + 1;
   }
}

static bool
tree_parse_obj(tree_t *t, node_t *root, const bson_t *spec, const char *prefix,
               tree_mode_t mode, const char *stage, int *n_incl, int *n_excl,
               aspen_error_t *err)
{
   bson_iter_t it;
   bson_iter_init(&it, spec);
   while (bson_iter_next(&it)) {
      char path[512];
      snprintf(path, sizeof path, "%s%s%s", prefix, *prefix ? "." : "",
               bson_iter_key(&it));
      bool is_id = strcmp(path, "_id") == 0;
      if (*prefix && strchr(bson_iter_key(&it), '.')) {
         aspen_error_set(err, ASPEN_ERR_FailedToParse,
                         "Invalid %s :: caused by :: dotted field names are "
                         "only allowed at the top level: '%s'",
                         stage, bson_iter_key(&it));
         return false;
      }
      if (BSON_ITER_HOLDS_DOCUMENT(&it) && !is_operator_object(&it)) {
         uint32_t len;
         const uint8_t *data;
         bson_t sub;
         bson_iter_document(&it, &len, &data);
         (void) bson_init_static(&sub, data, len);
         if (bson_empty(&sub)) {
            if (mode == MODE_ADD_FIELDS) {
               aspen_expr_t *e;
               if (!aspen_expr_parse(&it, NULL, &e, err) ||
                   !tree_add(root, path, N_EXPR, e, err, stage)) {
                  return false;
               }
               continue;
            }
            aspen_error_set(err, ASPEN_ERR_FailedToParse,
                            "Invalid %s :: caused by :: An empty "
                            "sub-projection is not a valid value. Found empty "
                            "object at path",
                            stage);
            return false;
         }
         if (!tree_parse_obj(t, root, &sub, path, mode, stage, n_incl, n_excl,
                             err)) {
            return false;
         }
         continue;
      }
      if (mode == MODE_PROJECT &&
          (BSON_ITER_HOLDS_BOOL(&it) || BSON_ITER_HOLDS_INT32(&it) ||
           BSON_ITER_HOLDS_INT64(&it) || BSON_ITER_HOLDS_DOUBLE(&it) ||
           BSON_ITER_HOLDS_DECIMAL128(&it))) {
         bool incl = bson_iter_as_bool(&it);
         if (incl) {
            if (*n_excl > 0) {
               aspen_error_set(err, ASPEN_ERR_FailedToParse,
                               "Invalid $project :: caused by :: Cannot do "
                               "inclusion on field %s in exclusion projection",
                               path);
               return false;
            }
            (*n_incl)++;
         } else if (is_id) {
            t->id_excluded = true;
         } else {
            if (*n_incl > 0) {
               aspen_error_set(err, ASPEN_ERR_FailedToParse,
                               "Invalid $project :: caused by :: Cannot do "
                               "exclusion on field %s in inclusion projection",
                               path);
               return false;
            }
            (*n_excl)++;
         }
         if (!tree_add(root, path, incl ? N_INCLUDE : N_EXCLUDE, NULL, err,
                       stage)) {
            return false;
         }
         continue;
      }
      if (mode == MODE_PROJECT && *n_excl > 0) {
         aspen_error_set(err, ASPEN_ERR_FailedToParse,
                         "Invalid $project :: caused by :: Cannot use "
                         "expression other than $meta in exclusion "
                         "projection");
         return false;
      }
      aspen_expr_t *e;
      if (!aspen_expr_parse(&it, NULL, &e, err)) {
         return false;
      }
      if (mode == MODE_PROJECT) {
         (*n_incl)++;
      }
      if (!tree_add(root, path, N_EXPR, e, err, stage)) {
         return false;
      }
      if (BSON_ITER_HOLDS_UTF8(&it)) {
         node_set_copy(tree_leaf(root, path), bson_iter_utf8(&it, NULL));
      }
   }
   return true;
}

/* ---- applying the tree -------------------------------------------------- */

/* walk_table's layout cache: a plan per input layout. Documents from one
 * source almost always share their top-level keys, in the same order, and
 * what walk_table does with each element depends on its key alone (the
 * spec child of that name, the stage's mode): so it keeps the keys of the
 * last few layouts it walked and, for each, what it did as a plan - runs
 * of elements copied as one span each, the computed fields written in an
 * element's place or after the walk, in order, and for a computed field
 * that is a plain path (copy_path) the index of its first component's
 * element in such an input, found once. An input whose keys are
 * byte-equal to a kept layout's (same count, same order; known without
 * comparing when its table carries the layout's id) runs that plan
 * without looking any key up; any other is walked as before and its plan
 * replaces the oldest. */
#define LAYOUT_KEY_BYTES 512 /* the keys kept: more, no plan */
#define LAYOUT_KIDS 64       /* spec children: more, no plan */
#define LAYOUT_SLOTS 4       /* the layouts kept */

typedef enum {
   P_SPAN,  /* the input's elements [k0, k1) copied as they are */
   P_COPY1, /* the top-level field of plain path n copied from element src */
   P_COPY,  /* the plain path n copied from input element src (copy_path) */
   P_EXPR,  /* the computed field n (append_expr) */
} plan_kind_t;

typedef struct {
   uint8_t kind;   /* plan_kind_t */
   uint8_t k0, k1; /* P_SPAN */
   bool last;      /* P_SPAN: k1 is the input's last element + 1 */
   int8_t src;     /* P_COPY*: the path's first element, -1: missing */
   uint16_t skip;  /* P_COPY1: src's type byte, key and NUL */
   uint8_t hlen;   /* P_COPY1: the output's type byte, name and NUL */
   uint8_t head[16]; /* P_COPY1: those (the type byte written over) */
   const struct node *n; /* P_COPY*, P_EXPR */
} plan_step_t;

typedef struct {
   bool valid;
   uint64_t id; /* the kept keys' layout id (lang/fields.h), 0: unknown */
   uint32_t n; /* the input's top-level elements */
   uint32_t klen[ASPEN_FIELDS_MAX];
   char keys[LAYOUT_KEY_BYTES]; /* their keys, one after the other */
   uint32_t n_steps;
   plan_step_t steps[ASPEN_FIELDS_MAX + LAYOUT_KIDS];
   uint32_t n_out; /* the most out_tab entries its steps add */
} layout_plan_t;

typedef struct layout {
   uint32_t next; /* the slot the next walked layout takes */
   layout_plan_t plan[LAYOUT_SLOTS];
} layout_t;

/* Documents are written into the stage's reusable writer: fields kept as
 * they are copied as their element's bytes, computed ones encoded once. */
typedef struct {
   aspen_expr_ctx_t *ctx;
   aspen_error_t *err;
   aspen_bsonw_t *w;
   bool failed;
   /* The top level (the tree's root): its input elements go into in_tab
    * (NULL: not wanted), the elements written into out_tab, so that the
    * expressions evaluated after the walk and the next stage find fields
    * without scanning (lang/fields.h). */
   const node_t *root;
   aspen_fields_t *in_tab;
   aspen_fields_t *out_tab;
   /* The input's table when it came with one and the tree's top level has
    * no subtree: the top level is walked from the table (walk_table). */
   const aspen_fields_t *given;
   struct layout *layout; /* walk_table's cache (the stage's) */
   /* The top-level computed fields evaluated so far (append_expr), and
    * which of them wrote a field (bit i: the i-th, the first 64): with the
    * input's keys they decide the output's keys (shape_push's layout id). */
   uint32_t n_exprs;
   uint64_t written;
} apply_t;

static void apply_node_value(apply_t *a, const node_t *n, tree_mode_t mode,
                             bool inclusion, const bson_iter_t *it);

/* Whether plain field paths are copied (copy_path; tests switch it off
 * to compare with their evaluation). */
static bool path_copy_on = true;

void
aspen_shape_path_copy_set_enabled(bool on)
{
   path_copy_on = on;
}

/* The size of the value of type `type` at v (`avail` bytes before its
 * document ends) when its bytes are what the evaluation of a path to it
 * would write, byte for byte (aspen_bsonw_value of its view): the types
 * the writer encodes itself, well-formed and inside `avail` (the bounds
 * aspen_bsonw_value_size checks). -1 for any other: the evaluation
 * decides. */
static inline int64_t
copy_value_size(uint8_t type, const uint8_t *v, size_t avail)
{
   int64_t sz;
   switch (type) {
   case BSON_TYPE_NULL:
   case BSON_TYPE_MINKEY:
   case BSON_TYPE_MAXKEY:
      return 0;
   case BSON_TYPE_INT32:
      sz = 4;
      break;
   case BSON_TYPE_DOUBLE:
   case BSON_TYPE_INT64:
   case BSON_TYPE_DATE_TIME:
      sz = 8;
      break;
   case BSON_TYPE_OID:
      sz = 12;
      break;
   case BSON_TYPE_DECIMAL128:
      sz = 16;
      break;
   case BSON_TYPE_BOOL:
      return avail >= 1 && v[0] <= 1 ? 1 : -1;
   case BSON_TYPE_UTF8:
   case BSON_TYPE_DOCUMENT:
   case BSON_TYPE_ARRAY: {
      if (avail < 4) {
         return -1;
      }
      int32_t l = (int32_t) aspen_bytes_get_le32(v);
      if (type == BSON_TYPE_UTF8 ? l < 1 || (size_t) l + 4 > avail
                                 : l < 5 || (size_t) l > avail) {
         return -1;
      }
      sz = type == BSON_TYPE_UTF8 ? 4 + (int64_t) l : l;
      return v[sz - 1] == 0 ? sz : -1;
   }
   default:
      return -1;
   }
   return (size_t) sz <= avail ? sz : -1;
}

/* copy_path from the input's element i (its table `t`; -1: the path's
 * first component is missing). */
static bool
copy_from(apply_t *a, const node_t *n, const aspen_fields_t *t, int i)
{
   if (i < 0) {
      return true; /* missing: omitted */
   }
   const uint8_t *data = t->data;
   uint32_t len = t->len, off = t->f[i].off;
   size_t kl = t->f[i].klen;
   for (uint32_t p = 1;; p++) {
      uint8_t type = data[off];
      uint32_t voff = off + 1 + (uint32_t) kl + 1;
      int64_t sz = p == n->cp_n
                      ? copy_value_size(type, data + voff, len - voff)
                      : aspen_bsonw_value_size(type, data + voff, len - voff);
      if (sz < 0) {
         return false;
      }
      if (p == n->cp_n) {
         /* One reserve: the type byte, the name and its NUL (node_child
          * ends it with one), the value's bytes. */
         size_t kn = n->name_len + 1, total = 1 + kn + (size_t) sz;
         uint8_t *w = aspen_bsonw_reserve(a->w, total);
         w[0] = type;
         aspen_bsonw_copy_short(w + 1, n->name, kn);
         memcpy(w + 1 + kn, data + voff, (size_t) sz);
         a->w->len += total;
         return true;
      }
      if (type == BSON_TYPE_ARRAY) {
         return false;
      }
      if (type != BSON_TYPE_DOCUMENT) {
         return true; /* under a scalar: missing */
      }
      data += voff;
      len = (uint32_t) sz;
      int r = aspen_fields_raw_find(data, len, n->cp[p], n->cp_len[p], &off);
      if (r < 0) {
         return false;
      }
      if (r == 0) {
         return true;
      }
      kl = n->cp_len[p];
   }
}

/* Writes the computed field `n`, a plain field path, by copying its
 * value's bytes under the field's name (nothing when the path is missing):
 * the first component found through the input's table, the next ones by
 * raw walks of the sub-documents. False, nothing written, when the
 * evaluation must decide: no table, an array on the way (MongoDB's
 * traversal), malformed bytes, a type the writer re-encodes. */
static bool
copy_path(apply_t *a, const node_t *n)
{
   const bson_t *doc = a->ctx->current ? a->ctx->current : a->ctx->root;
   const aspen_fields_t *t = a->ctx->fields;
   if (!path_copy_on || !aspen_fields_covers(t, doc)) {
      return false;
   }
   return copy_from(a, n, t,
                    aspen_fields_find_memo(t, n->cp[0], n->cp_len[0],
                                           (uint64_t *) &n->cp_memo));
}

/* Writes the computed field `n`: its path copied (copy_path), else its
 * expression evaluated straight into the writer (aspen_expr_eval_write,
 * which leaves the scratch empty again); false, a->failed set, on an
 * error. */
static inline bool
write_expr(apply_t *a, const node_t *n)
{
   if ((!n->cp_n || !copy_path(a, n)) &&
       !aspen_expr_eval_write(n->expr, a->ctx, a->w, n->name, n->name_len,
                              a->err)) {
      a->failed = true;
      return false;
   }
   return true;
}

/* Counts the computed field just written from `before` on (apply_t's
 * written bits). */
static inline void
note_expr(apply_t *a, size_t before)
{
   if (a->w->len > before && a->n_exprs < 64) {
      a->written |= 1ull << a->n_exprs;
   }
   a->n_exprs++;
}

static void
append_expr(apply_t *a, const node_t *n)
{
   size_t before = a->w->len;
   if (write_expr(a, n)) {
      note_expr(a, before);
   }
}

/* Records in out_tab the top-level element written from `before` on, if
 * any (its key is `klen` bytes long). */
static inline void
note_written(apply_t *a, size_t before, size_t klen)
{
   if (a->w->len > before) {
      aspen_fields_add(a->out_tab, before, klen);
   }
}

/* The spec child named like the iterator's key: lengths first, so most
 * misses cost one comparison. */
static const node_t *
find_child_key(const node_t *parent, const char *key, size_t len, size_t *idx)
{
   for (size_t i = 0; i < parent->n_kids; i++) {
      const node_t *n = &parent->kids[i];
      if (n->name_len == len && aspen_fields_key_eq(n->name, key, len)) {
         *idx = i;
         return n;
      }
   }
   return NULL;
}

static const node_t *
find_child(const node_t *parent, const bson_iter_t *it, size_t *idx)
{
   return find_child_key(parent, (const char *) it->raw + it->key,
                         aspen_bsonw_key_len(it), idx);
}

/* Whether walk_table keeps plans and apply_doc runs them (default true;
 * tests switch it off to compare them with the walk). */
static bool plan_on = true;

void
aspen_shape_plan_set_enabled(bool on)
{
   plan_on = on;
}

/* True if the input `t` has the keys the plan `p` was made for: the same
 * number, each the same length and bytes, in the same order; known without
 * comparing when `t` is tagged with the kept keys' layout id. */
static bool
layout_same(layout_plan_t *p, const aspen_fields_t *t)
{
   if (!p->valid || p->n != t->n) {
      return false;
   }
   if (t->layout != 0 && t->layout == p->id) {
      return true; /* the scanner that tagged it compared the keys */
   }
   const char *k = p->keys;
   for (uint32_t i = 0; i < t->n; i++) {
      uint32_t klen = t->f[i].klen;
      if (klen != p->klen[i] ||
          !aspen_fields_key_eq(t->data + t->f[i].off + 1, k, klen)) {
         return false;
      }
      k += klen;
   }
   p->id = t->layout;
   return true;
}

/* The plan kept for the input `t`'s keys, NULL if none: a plan of its
 * layout id first (nothing compared), then one of the same keys. */
static layout_plan_t *
layout_find(layout_t *l, const aspen_fields_t *t)
{
   if (t->layout != 0) {
      for (uint32_t i = 0; i < LAYOUT_SLOTS; i++) {
         layout_plan_t *p = &l->plan[i];
         if (p->id == t->layout && p->valid && p->n == t->n) {
            return p;
         }
      }
   }
   for (uint32_t i = 0; i < LAYOUT_SLOTS; i++) {
      if (layout_same(&l->plan[i], t)) {
         return &l->plan[i];
      }
   }
   return NULL;
}

/* Starts recording the plan for the input `t` (its keys) in the slot kept
 * longest; NULL (nothing kept) if they do not fit in one. */
static layout_plan_t *
layout_start(layout_t *l, const aspen_fields_t *t, size_t n_kids)
{
   layout_plan_t *p = &l->plan[l->next];
   l->next = (l->next + 1) % LAYOUT_SLOTS;
   p->valid = false;
   p->n_steps = 0;
   if (n_kids > LAYOUT_KIDS) {
      return NULL;
   }
   size_t used = 0;
   for (uint32_t i = 0; i < t->n; i++) {
      uint32_t klen = t->f[i].klen;
      if (klen > sizeof p->keys - used) {
         return NULL;
      }
      memcpy(p->keys + used, t->data + t->f[i].off + 1, klen);
      p->klen[i] = klen;
      used += klen;
   }
   p->n = t->n;
   p->id = t->layout;
   return p;
}

/* Records that input element k is copied (appended to the last span when
 * it ends at k). */
static void
layout_note_copy(layout_plan_t *p, uint32_t k)
{
   plan_step_t *last = p->n_steps ? &p->steps[p->n_steps - 1] : NULL;
   if (last && last->kind == P_SPAN && last->k1 == k) {
      last->k1 = (uint8_t) (k + 1);
      return;
   }
   p->steps[p->n_steps++] = (plan_step_t){
      .kind = P_SPAN, .k0 = (uint8_t) k, .k1 = (uint8_t) (k + 1)};
}

/* Records that the computed field `n` is written next: a plain path is
 * copied from the element of its first component, found once here (the
 * first of that name, as copy_path's lookup finds it). */
static void
layout_note_expr(layout_plan_t *p, const aspen_fields_t *t, const node_t *n)
{
   plan_step_t st = {.kind = P_EXPR, .n = n};
   if (n->cp_n > 0 && path_copy_on) {
      st.kind = P_COPY;
      st.src = (int8_t) aspen_fields_find(t, n->cp[0], n->cp_len[0]);
      if (n->cp_n == 1 && st.src >= 0 && n->name_len + 2 <= sizeof st.head) {
         /* Its element's value is the field's: the output element's head
          * made once (node_child ends the name with a NUL). */
         st.kind = P_COPY1;
         st.skip = (uint16_t) (t->f[st.src].klen + 2); /* <= 514 */
         st.hlen = (uint8_t) (n->name_len + 2);
         memcpy(st.head + 1, n->name, n->name_len + 1);
      }
   }
   p->steps[p->n_steps++] = st;
}

/* Makes the recorded plan usable if the out_tab entries it adds fit in a
 * table (then it adds them unchecked). */
static void
layout_finish(layout_plan_t *p)
{
   p->n_out = 0;
   for (uint32_t s = 0; s < p->n_steps; s++) {
      plan_step_t *st = &p->steps[s];
      st->last = st->k1 == p->n;
      p->n_out += st->kind == P_SPAN ? (uint32_t) (st->k1 - st->k0) : 1;
   }
   p->valid = p->n_out <= ASPEN_FIELDS_MAX;
}

/* True if `p` can run for this input: its out_tab entries fit, and the
 * expressions read the table it was planned over (copy_from reads it
 * directly: the table covers the root, shape_push's `given`). */
static inline bool
plan_usable(const apply_t *a, const layout_plan_t *p)
{
   return a->out_tab->n + p->n_out <= ASPEN_FIELDS_MAX &&
          a->ctx->fields == a->given && !a->ctx->current;
}

/* Copies the n bytes at s to d: a kept run or a value is a few dozen
 * bytes, so up to 64 go with fixed-size (overlapping) moves in place
 * rather than through a memcpy call. */
static inline void
copy_run(uint8_t *d, const uint8_t *s, size_t n)
{
   if (n <= 16) {
      aspen_bsonw_copy_short(d, s, n);
   } else if (n <= 32) {
      memcpy(d, s, 16);
      memcpy(d + n - 16, s + n - 16, 16);
   } else if (n <= 64) {
      memcpy(d, s, 16);
      memcpy(d + 16, s + 16, 16);
      memcpy(d + n - 32, s + n - 32, 16);
      memcpy(d + n - 16, s + n - 16, 16);
   } else {
      memcpy(d, s, n);
   }
}

/* A P_COPY1 step: its value's bytes under the prepared head, in one
 * reserve; false, nothing written, when copy_from would say so (the
 * evaluation decides). The source element is inside the table's bounds
 * (the scan that made it checked them); its value is checked here. */
static inline bool
plan_copy1(aspen_bsonw_t *w, const aspen_fields_t *t, const plan_step_t *st)
{
   uint32_t off = t->f[st->src].off, voff = off + st->skip;
   uint8_t type = t->data[off];
   const uint8_t *v = t->data + voff;
   int64_t sz = copy_value_size(type, v, t->len - voff);
   if (sz < 0) {
      return false;
   }
   size_t hl = st->hlen;
   uint8_t *d = aspen_bsonw_reserve(w, sizeof st->head + (size_t) sz);
   memcpy(d, st->head, sizeof st->head); /* past hl: written over next */
   d[0] = type;
   copy_run(d + hl, v, (size_t) sz);
   w->len += hl + (size_t) sz;
   return true;
}

/* apply_doc of the top level for an input whose keys are those the plan
 * `p` was made for: each span one copy, its elements' out_tab entries
 * their input offsets moved by where it landed; each plain path copied
 * from the element the plan found; the other computed fields evaluated
 * (append_expr). The same bytes, out_tab and expression tally
 * (n_exprs, written) as walk_table and apply_doc's last loop. */
static void
plan_run(apply_t *a, const layout_plan_t *p)
{
   const aspen_fields_t *t = a->given;
   aspen_fields_t *out = a->out_tab;
   aspen_bsonw_t *w = a->w;
   uint32_t o = out->n;
   const plan_step_t *st = p->steps, *end_st = p->steps + p->n_steps;
   for (; st < end_st; st++) {
      size_t before = w->len;
      if (st->kind == P_SPAN) {
         uint32_t from = t->f[st->k0].off;
         uint32_t end = st->last ? t->len - 1 : t->f[st->k1].off;
         copy_run(aspen_bsonw_reserve(w, end - from), t->data + from,
                  end - from);
         w->len = before + (end - from);
         uint32_t delta = (uint32_t) before - from;
         for (uint32_t k = st->k0; k < st->k1; k++) {
            out->f[o].off = t->f[k].off + delta;
            out->f[o].klen = t->f[k].klen;
            o++;
            /* A run is a few elements: no vectorized loop, whose set-up
             * (overlap checks, lane shuffles) costs more than it saves. */
            __asm__("" : "+r"(delta));
         }
         continue;
      }
      if (st->kind == P_COPY1 && plan_copy1(w, t, st)) {
         /* written: append_expr's tally, the element's out_tab entry */
         if (a->n_exprs < 64) {
            a->written |= 1ull << a->n_exprs;
         }
         a->n_exprs++;
         out->f[o].off = (uint32_t) before;
         out->f[o].klen = (uint32_t) st->hlen - 2;
         o++;
         continue;
      }
      if (st->kind == P_COPY && copy_from(a, st->n, t, st->src)) {
         /* append_expr's tally of what its computed fields wrote */
         if (w->len > before && a->n_exprs < 64) {
            a->written |= 1ull << a->n_exprs;
         }
         a->n_exprs++;
      } else {
         append_expr(a, st->n); /* the evaluation decides */
         if (a->failed) {
            break;
         }
      }
      if (w->len > before) {
         out->f[o].off = (uint32_t) before;
         out->f[o].klen = (uint32_t) st->n->name_len;
         o++;
      }
   }
   out->n = o;
}

/* apply_doc's walk of the top level from the input's field table (a->given,
 * a tree without subtrees at the top): the same writes, with each
 * element's key and span known; with `keep`, what it decides is kept as
 * the plan for the next inputs with the same keys (a->layout). */
static void
walk_table(apply_t *a, const node_t *parent, tree_mode_t mode, bool inclusion,
           bool *done, bool keep)
{
   const aspen_fields_t *t = a->given;
   layout_plan_t *p =
      keep ? layout_start(a->layout, t, parent->n_kids) : NULL;
   for (uint32_t k = 0; k < t->n && !a->failed; k++) {
      uint32_t off = t->f[k].off, klen = t->f[k].klen;
      uint32_t end = k + 1 < t->n ? t->f[k + 1].off : t->len - 1;
      size_t before = a->w->len, idx = 0;
      const node_t *n =
         find_child_key(parent, (const char *) t->data + off + 1, klen, &idx);
      bool copy = !n && !inclusion;
      if (n && n->kind == N_INCLUDE) {
         copy = true;
         done[idx] = true;
      } else if (n && n->kind == N_EXCLUDE) {
         done[idx] = true;
      } else if (n && n->kind == N_EXPR && mode == MODE_ADD_FIELDS) {
         append_expr(a, n); /* replaced in place */
         done[idx] = true;
         if (p) {
            layout_note_expr(p, t, n);
         }
      }
      if (copy) {
         memcpy(aspen_bsonw_reserve(a->w, end - off), t->data + off,
                end - off);
         a->w->len += end - off;
         if (p) {
            layout_note_copy(p, k);
         }
      }
      note_written(a, before, klen);
   }
   if (p && !a->failed) {
      /* What apply_doc's last loop will write: the computed fields not
       * placed ($project: all of them); nothing else at a flat top. */
      for (size_t i = 0; i < parent->n_kids; i++) {
         const node_t *n = &parent->kids[i];
         if (n->kind == N_EXPR && (!done[i] || mode == MODE_PROJECT)) {
            layout_note_expr(p, t, n);
         }
      }
      layout_finish(p);
   }
}

static void apply_doc(apply_t *a, const node_t *parent, tree_mode_t mode,
                      bool inclusion, const bson_t *in);

/* apply_doc's walk: `keep` asks walk_table to keep its plan. */
static __attribute__((noinline)) void
apply_walk(apply_t *a, const node_t *parent, tree_mode_t mode, bool inclusion,
           const bson_t *in, bool keep)
{
   bool done_local[64];
   bool *done = parent->n_kids <= 64
                   ? done_local
                   : aspen_xcalloc(parent->n_kids, sizeof *done);
   memset(done, 0, parent->n_kids * sizeof *done);
   bool top = parent == a->root;
   size_t before = a->w->len, klen = 0;
   uint32_t end = 4;
   bson_iter_t it;
   if (top && a->given) {
      walk_table(a, parent, mode, inclusion, done, keep);
      before = a->w->len;
   } else if (in && bson_iter_init(&it, in)) {
      while (aspen_bsonw_iter_next(&it) && !a->failed) {
         if (top) {
            /* The previous element's output (written under its input key),
             * then this one's input. */
            note_written(a, before, klen);
            before = a->w->len;
            klen = aspen_bsonw_key_len(&it);
            end = it.next_off;
            if (a->in_tab) {
               aspen_fields_add(a->in_tab, it.off, klen);
            }
         }
         size_t idx = 0;
         const node_t *n = find_child(parent, &it, &idx);
         if (!n) {
            if (!inclusion) {
               aspen_bsonw_element(a->w, &it);
            }
            continue;
         }
         switch (n->kind) {
         case N_INCLUDE:
            aspen_bsonw_element(a->w, &it);
            done[idx] = true;
            break;
         case N_EXCLUDE:
            done[idx] = true;
            break;
         case N_EXPR:
            if (mode == MODE_ADD_FIELDS) {
               /* Replaced in place. */
               append_expr(a, n);
               done[idx] = true;
            }
            /* $project: computed fields come after the included ones. */
            break;
         case N_SUB:
            apply_node_value(a, n, mode, inclusion, &it);
            done[idx] = true;
            break;
         }
      }
   }
   if (top) {
      note_written(a, before, klen);
      if (a->in_tab && in && end + 1 == in->len) {
         /* Every input field seen: the expressions evaluated from here on
          * find their paths in the table. */
         aspen_fields_bind(a->in_tab, in);
         a->ctx->fields = a->in_tab;
      }
   }
   /* Computed fields not placed yet, in spec order. */
   for (size_t i = 0; i < parent->n_kids && !a->failed; i++) {
      const node_t *n = &parent->kids[i];
      if (done[i] && !(mode == MODE_PROJECT && n->kind == N_EXPR)) {
         continue;
      }
      before = a->w->len;
      if (n->kind == N_EXPR) {
         append_expr(a, n);
      } else if (n->kind == N_SUB && n->has_expr && !done[i]) {
         size_t sub = aspen_bsonw_begin(a->w, BSON_TYPE_DOCUMENT, n->name,
                                        n->name_len);
         apply_doc(a, n, mode, inclusion, NULL);
         aspen_bsonw_end(a->w, sub);
      }
      if (top) {
         note_written(a, before, n->name_len);
      }
   }
   if (done != done_local) {
      free(done);
   }
}

/* Builds the children of `parent` into the writer from `in` (may be NULL:
 * an absent subdocument): the top level by its layout's plan when one is
 * kept, else walked (apart, so that the plan's path sets up no frame for
 * the walk's iterator). */
static void
apply_doc(apply_t *a, const node_t *parent, tree_mode_t mode, bool inclusion,
          const bson_t *in)
{
   bool keep = false;
   if (parent == a->root && a->given && a->layout && plan_on) {
      const layout_plan_t *p = layout_find(a->layout, a->given);
      if (p && plan_usable(a, p)) {
         plan_run(a, p);
         return;
      }
      keep = !p;
   }
   apply_walk(a, parent, mode, inclusion, in, keep);
}

/* Copies the iterator's value under another key (an array's renumbered
 * index). */
static void
append_renamed(aspen_bsonw_t *w, const bson_iter_t *it, const char *key,
               size_t key_len)
{
   uint32_t from = aspen_bsonw_value_off(it);
   size_t n = it->next_off - from;
   aspen_bsonw_key(w, (bson_type_t) it->raw[it->type], key, key_len);
   memcpy(aspen_bsonw_reserve(w, n), it->raw + from, n);
   w->len += n;
}

static void apply_array(apply_t *a, const node_t *n, tree_mode_t mode,
                        bool inclusion, const bson_t *arr);

/* The document or array the iterator is on, rebuilt under `key`. */
static void
apply_nested(apply_t *a, const node_t *n, tree_mode_t mode, bool inclusion,
             const bson_iter_t *it, const char *key, size_t klen)
{
   bson_t sub;
   (void) aspen_bson_view(it, &sub);
   bool is_doc = BSON_ITER_HOLDS_DOCUMENT(it);
   size_t start = aspen_bsonw_begin(
      a->w, is_doc ? BSON_TYPE_DOCUMENT : BSON_TYPE_ARRAY, key, klen);
   if (is_doc) {
      apply_doc(a, n, mode, inclusion, &sub);
   } else {
      apply_array(a, n, mode, inclusion, &sub);
   }
   aspen_bsonw_end(a->w, start);
}

static void
apply_array(apply_t *a, const node_t *n, tree_mode_t mode, bool inclusion,
            const bson_t *arr)
{
   bson_iter_t it;
   uint32_t idx = 0;
   bson_iter_init(&it, arr);
   while (aspen_bsonw_iter_next(&it) && !a->failed) {
      char buf[16];
      const char *key;
      if (BSON_ITER_HOLDS_DOCUMENT(&it) || BSON_ITER_HOLDS_ARRAY(&it)) {
         size_t klen = bson_uint32_to_string(idx++, &key, buf, sizeof buf);
         apply_nested(a, n, mode, inclusion, &it, key, klen);
      } else if (!inclusion || mode == MODE_ADD_FIELDS) {
         size_t klen = bson_uint32_to_string(idx++, &key, buf, sizeof buf);
         if (mode == MODE_ADD_FIELDS && n->has_expr) {
            /* A scalar where fields are being added becomes a document. */
            size_t start =
               aspen_bsonw_begin(a->w, BSON_TYPE_DOCUMENT, key, klen);
            apply_doc(a, n, mode, inclusion, NULL);
            aspen_bsonw_end(a->w, start);
         } else {
            append_renamed(a->w, &it, key, klen);
         }
      }
      /* Inclusion projections drop scalars inside arrays, as MongoDB. */
   }
}

static void
apply_node_value(apply_t *a, const node_t *n, tree_mode_t mode,
                 bool inclusion, const bson_iter_t *it)
{
   const char *key = (const char *) it->raw + it->key;
   size_t klen = aspen_bsonw_key_len(it);
   if (BSON_ITER_HOLDS_DOCUMENT(it) || BSON_ITER_HOLDS_ARRAY(it)) {
      apply_nested(a, n, mode, inclusion, it, key, klen);
   } else if (!inclusion) {
      if (mode == MODE_ADD_FIELDS && n->has_expr) {
         size_t start = aspen_bsonw_begin(a->w, BSON_TYPE_DOCUMENT, key, klen);
         apply_doc(a, n, mode, inclusion, NULL);
         aspen_bsonw_end(a->w, start);
      } else {
         aspen_bsonw_element(a->w, it);
      }
   } else if (n->has_expr) {
      size_t start = aspen_bsonw_begin(a->w, BSON_TYPE_DOCUMENT, key, klen);
      apply_doc(a, n, mode, inclusion, NULL);
      aspen_bsonw_end(a->w, start);
   }
}

/* ---- stage plumbing ----------------------------------------------------- */

typedef struct {
   tree_t tree;
   tree_mode_t mode;
   aspen_bsonw_t w; /* the output, reused from document to document */
   /* $addFields / $set of top-level computed fields only: when none is in
    * the input (its field table says so), the output is the input's
    * fields as one span and the computed ones after them. */
   bool flat;
   bool flat_top; /* no subtree at the top level (apply_t.given) */
   aspen_fields_t in_tab, out_tab; /* (apply_t) */
   /* The paths its expressions read, resolved once per document (expr.h),
    * or NULL: none. */
   aspen_expr_paths_t *paths;
   layout_t layout;                /* (apply_t) */
   /* all_new's answer for inputs of layout new_layout (0: none kept). */
   uint64_t new_layout;
   bool new_all;
   /* The output's layout id (out_tab.layout) for an input of layout
    * out_from whose computed fields wrote out_written (out_exprs of them):
    * the output's top-level keys are the same for every such input. */
   uint64_t out_from, out_written, out_layout;
   uint32_t out_exprs;
} shape_t;

static void
shape_destroy(aspen_stage_t *st)
{
   shape_t *s = st->state;
   if (s) {
      aspen_expr_paths_destroy(s->paths);
      node_cleanup(&s->tree.root);
      aspen_bsonw_cleanup(&s->w);
      free(s);
      st->state = NULL;
   }
}

/* Whether a flat $addFields over an input without its fields takes
 * append_new (tests switch it off to compare with apply_doc's walk). */
static bool append_new_on = true;

void
aspen_shape_append_new_set_enabled(bool on)
{
   append_new_on = on;
}

/* True if no computed field of a flat $addFields is in the input that
 * `t` describes. */
static bool
all_new_find(const shape_t *s, const aspen_fields_t *t)
{
   for (size_t i = 0; i < s->tree.root.n_kids; i++) {
      const node_t *n = &s->tree.root.kids[i];
      if (aspen_fields_find(t, n->name, n->name_len) >= 0) {
         return false;
      }
   }
   return true;
}

/* The same, remembered for `t`'s layout: it depends on the keys alone. */
static bool
all_new(shape_t *s, const aspen_fields_t *t)
{
   if (t->layout != 0 && t->layout == s->new_layout) {
      return s->new_all;
   }
   s->new_all = all_new_find(s, t);
   s->new_layout = t->layout;
   return s->new_all;
}

/* Tags the output's table with a layout id when its top-level keys follow
 * from the input's layout (in->fields, tagged) and which computed fields
 * wrote something: the input's elements walked from its table (a->given)
 * or copied as one span (append_new), the top level only. The same id as
 * the last output's for the same input layout and the same fields written,
 * else a new one. */
static void
tag_output(shape_t *s, const apply_t *a, const aspen_sdoc_t *in,
           bool from_table)
{
   uint64_t from = from_table ? in->fields->layout : 0;
   if (from == 0 || a->n_exprs > 64) {
      return;
   }
   if (from != s->out_from || a->written != s->out_written ||
       a->n_exprs != s->out_exprs || s->out_layout == 0) {
      s->out_from = from;
      s->out_written = a->written;
      s->out_exprs = a->n_exprs;
      s->out_layout = aspen_fields_new_layout_id();
   }
   s->out_tab.layout = s->out_layout;
}

/* A flat $addFields over an input without any of its fields: what
 * apply_doc writes then (every input field copied, the computed ones
 * appended in spec order), without walking the input. */
static bool
append_new(apply_t *a, const shape_t *s, const aspen_sdoc_t *in)
{
   const aspen_fields_t *t = in->fields;
   size_t body = in->doc->len - 5;
   memcpy(aspen_bsonw_reserve(a->w, body), aspen_bsonw_data(in->doc) + 4, body);
   a->w->len += body;
   /* The input's fields are where they were: the writer starts with the
    * same 4-byte header. */
   aspen_fields_t *out = a->out_tab;
   /* (a table is a few entries: inline moves, not a memcpy call) */
   copy_run((uint8_t *) out->f, (const uint8_t *) t->f, t->n * sizeof t->f[0]);
   uint32_t o = t->n;
   a->ctx->fields = t;
   const node_t *kids = s->tree.root.kids;
   size_t n_kids = s->tree.root.n_kids;
   /* Room for an entry per computed field: each written one stored
    * straight (aspen_fields_add's check made once), else added one by
    * one (the table overflows as it would). */
   bool room = o + n_kids <= ASPEN_FIELDS_MAX;
   out->n = o;
   uint64_t written = 0;
   /* append_expr and note_written in one. */
   for (size_t i = 0; i < n_kids; i++) {
      const node_t *n = &kids[i];
      size_t before = a->w->len;
      if (!write_expr(a, n)) {
         return false;
      }
      if (a->w->len > before) {
         if (room) {
            out->f[o].off = (uint32_t) before;
            out->f[o].klen = (uint32_t) n->name_len;
            o++;
         } else {
            aspen_fields_add(out, before, n->name_len);
         }
         if (i < 64) {
            written |= 1ull << i;
         }
      }
   }
   if (room) {
      out->n = o;
   }
   a->written = written;
   a->n_exprs = (uint32_t) n_kids;
   return true;
}

static bool
shape_push(aspen_stage_t *st, const aspen_sdoc_t *in, aspen_error_t *err)
{
   shape_t *s = st->state;
   aspen_expr_ctx_t ctx;
   aspen_stage_expr_ctx(st, in, &ctx);
   /* Short computed strings are written here rather than on the heap
    * (append_expr writes each value at once, then empties it). */
   char scratch_buf[512];
   aspen_expr_scratch_t scratch = {.buf = scratch_buf,
                                   .cap = sizeof scratch_buf};
   ctx.scratch = &scratch;
   aspen_fields_reset(&s->out_tab);
   apply_t a = {.ctx = &ctx,
                .err = err,
                .w = &s->w,
                .root = &s->tree.root,
                .out_tab = &s->out_tab,
                .layout = &s->layout};
   aspen_bsonw_reset(&s->w);
   bool given = aspen_fields_covers(in->fields, in->doc);
   if (s->paths) {
      aspen_expr_paths_resolve(s->paths, in->doc, given ? in->fields : NULL);
      ctx.paths = s->paths;
   }
   bool from_table = given;
   if (given && s->flat && append_new_on && all_new(s, in->fields)) {
      if (!append_new(&a, s, in)) {
         return false;
      }
   } else {
      if (given) {
         ctx.fields = in->fields;
         a.given = s->flat_top ? in->fields : NULL;
      } else if (s->tree.root.has_expr) {
         aspen_fields_reset(&s->in_tab);
         a.in_tab = &s->in_tab;
      }
      bool inclusion = s->mode == MODE_PROJECT && s->tree.inclusion;
      apply_doc(&a, &s->tree.root, s->mode, inclusion, in->doc);
      if (a.failed) {
         return false;
      }
      from_table = a.given != NULL;
   }
   bson_t out;
   if (!aspen_bsonw_finish(&s->w, &out)) {
      aspen_error_set(err, ASPEN_ERR_BSONObjectTooLarge,
                      "BSONObj size: %zu is invalid. Size must be between 0 "
                      "and %u(16MB)",
                      s->w.len, (unsigned) ASPEN_MAX_OBJECT_LEN);
      return false;
   }
   /* aspen_fields_bind without asking libbson for the bytes: they are the
    * writer's. */
   s->out_tab.data = s->w.data;
   s->out_tab.len = out.len;
   tag_output(s, &a, in, from_table);
   aspen_sdoc_t next = *in;
   next.doc = &out;
   next.fields = &s->out_tab;
   aspen_stage_emit(st, &next);
   return true;
}

/* Adds the paths of the expressions under `n` to `p`. */
static void
collect_paths(aspen_expr_paths_t *p, const node_t *n)
{
   if (n->kind == N_EXPR && n->cp_n == 0) {
      /* (a plain path is copied: copy_path; its rare fallback to the
       * evaluation takes the general lookup) */
      aspen_expr_paths_add(p, n->expr);
   }
   for (size_t i = 0; i < n->n_kids; i++) {
      collect_paths(p, &n->kids[i]);
   }
}

/* True if no child of the root is a subtree. */
static bool
is_flat_top(const node_t *root)
{
   for (size_t i = 0; i < root->n_kids; i++) {
      if (root->kids[i].kind == N_SUB) {
         return false;
      }
   }
   return true;
}

static bool
shape_parse_common(aspen_stage_t *st, const bson_t *spec, tree_mode_t mode,
                   const char *stage, aspen_error_t *err)
{
   shape_t *s = aspen_xcalloc(1, sizeof *s);
   s->mode = mode;
   s->tree.root.kind = N_SUB;
   st->state = s;
   int n_incl = 0, n_excl = 0;
   if (!tree_parse_obj(&s->tree, &s->tree.root, spec, "", mode, stage, &n_incl,
                       &n_excl, err)) {
      shape_destroy(st);
      return false;
   }
   if (mode == MODE_PROJECT) {
      if (n_incl == 0 && n_excl == 0 && !s->tree.id_excluded) {
         aspen_error_set(err, ASPEN_ERR_FailedToParse,
                         "Invalid $project :: caused by :: projection "
                         "specification must have at least one field");
         shape_destroy(st);
         return false;
      }
      s->tree.inclusion = n_incl > 0;
      if (s->tree.inclusion && !s->tree.id_excluded &&
          !node_child(&s->tree.root, "_id", 3, false)) {
         /* _id is kept unless excluded; put it first like MongoDB. */
         node_t *n = node_child(&s->tree.root, "_id", 3, true);
         n->kind = N_INCLUDE;
      }
   }
   tree_mark(&s->tree.root);
   s->flat = mode == MODE_ADD_FIELDS;
   for (size_t i = 0; i < s->tree.root.n_kids; i++) {
      s->flat &= s->tree.root.kids[i].kind == N_EXPR;
   }
   s->flat_top = is_flat_top(&s->tree.root);
   s->paths = aspen_expr_paths_new();
   collect_paths(s->paths, &s->tree.root);
   if (aspen_expr_paths_count(s->paths) == 0) {
      aspen_expr_paths_destroy(s->paths);
      s->paths = NULL;
   }
   return true;
}

static bool
arg_doc(const bson_iter_t *arg, bson_t *out)
{
   if (!BSON_ITER_HOLDS_DOCUMENT(arg)) {
      return false;
   }
   uint32_t len;
   const uint8_t *data;
   bson_iter_document(arg, &len, &data);
   return bson_init_static(out, data, len);
}

static bool
project_parse(aspen_stage_t *st, const bson_iter_t *arg,
              aspen_parse_ctx_t *pc, aspen_error_t *err)
{
   (void) pc;
   bson_t spec;
   if (!arg_doc(arg, &spec)) {
      aspen_error_set(err, ASPEN_ERR_FailedToParse,
                      "$project specification must be an object");
      return false;
   }
   return shape_parse_common(st, &spec, MODE_PROJECT, "$project", err);
}

static bool
add_fields_parse(aspen_stage_t *st, const bson_iter_t *arg,
                 aspen_parse_ctx_t *pc, aspen_error_t *err)
{
   (void) pc;
   bson_t spec;
   const char *name = st->ops->name;
   if (!arg_doc(arg, &spec)) {
      aspen_error_set(err, ASPEN_ERR_FailedToParse,
                      "%s specification stage must be an object, got %s", name,
                      "a non-object");
      return false;
   }
   return shape_parse_common(st, &spec, MODE_ADD_FIELDS, name, err);
}

static bool
unset_parse(aspen_stage_t *st, const bson_iter_t *arg, aspen_parse_ctx_t *pc,
            aspen_error_t *err)
{
   (void) pc;
   shape_t *s = aspen_xcalloc(1, sizeof *s);
   s->mode = MODE_UNSET;
   s->tree.root.kind = N_SUB;
   st->state = s;
   if (BSON_ITER_HOLDS_UTF8(arg)) {
      if (!tree_add(&s->tree.root, bson_iter_utf8(arg, NULL), N_EXCLUDE, NULL,
                    err, "$unset")) {
         shape_destroy(st);
         return false;
      }
      s->flat_top = is_flat_top(&s->tree.root);
      return true;
   }
   if (!BSON_ITER_HOLDS_ARRAY(arg)) {
      aspen_error_set(err, ASPEN_ERR_FailedToParse,
                      "$unset specification must be a string or an array");
      shape_destroy(st);
      return false;
   }
   uint32_t len;
   const uint8_t *data;
   bson_t arr;
   bson_iter_t it;
   bson_iter_array(arg, &len, &data);
   (void) bson_init_static(&arr, data, len);
   bson_iter_init(&it, &arr);
   int n = 0;
   while (bson_iter_next(&it)) {
      if (!BSON_ITER_HOLDS_UTF8(&it)) {
         aspen_error_set(err, ASPEN_ERR_FailedToParse,
                         "$unset specification must be a string or an array "
                         "containing only string values");
         shape_destroy(st);
         return false;
      }
      if (!tree_add(&s->tree.root, bson_iter_utf8(&it, NULL), N_EXCLUDE, NULL,
                    err, "$unset")) {
         shape_destroy(st);
         return false;
      }
      n++;
   }
   if (n == 0) {
      aspen_error_set(err, ASPEN_ERR_FailedToParse,
                      "$unset specification must be a string or an array "
                      "with at least one field");
      shape_destroy(st);
      return false;
   }
   s->flat_top = is_flat_top(&s->tree.root);
   return true;
}

const aspen_stage_ops_t aspen_stage_project_ops = {
   .name = "$project",
   .operator_name = "ProjectOperator",
   .per_document = true,
   .parse = project_parse,
   .push = shape_push,
   .destroy = shape_destroy,
};
const aspen_stage_ops_t aspen_stage_add_fields_ops = {
   .name = "$addFields",
   .operator_name = "AddFieldsOperator",
   .per_document = true,
   .parse = add_fields_parse,
   .push = shape_push,
   .destroy = shape_destroy,
};
const aspen_stage_ops_t aspen_stage_set_ops = {
   .name = "$set",
   .operator_name = "SetOperator",
   .per_document = true,
   .parse = add_fields_parse,
   .push = shape_push,
   .destroy = shape_destroy,
};
const aspen_stage_ops_t aspen_stage_unset_ops = {
   .name = "$unset",
   .operator_name = "ProjectOperator",
   .per_document = true,
   .parse = unset_parse,
   .push = shape_push,
   .destroy = shape_destroy,
};

/* ---- $replaceRoot / $replaceWith --------------------------------------- */

typedef struct {
   aspen_expr_t *expr;
} replace_t;

static void
replace_destroy(aspen_stage_t *st)
{
   replace_t *r = st->state;
   if (r) {
      aspen_expr_destroy(r->expr);
      free(r);
      st->state = NULL;
   }
}

static bool
replace_root_parse(aspen_stage_t *st, const bson_iter_t *arg,
                   aspen_parse_ctx_t *pc, aspen_error_t *err)
{
   (void) pc;
   replace_t *r = aspen_xcalloc(1, sizeof *r);
   st->state = r;
   if (strcmp(st->ops->name, "$replaceWith") == 0) {
      if (!aspen_expr_parse(arg, NULL, &r->expr, err)) {
         replace_destroy(st);
         return false;
      }
      return true;
   }
   bson_t spec;
   if (!arg_doc(arg, &spec)) {
      aspen_error_set(err, ASPEN_ERR_FailedToParse,
                      "$replaceRoot specification must be an object");
      replace_destroy(st);
      return false;
   }
   bson_iter_t it;
   bson_iter_init(&it, &spec);
   while (bson_iter_next(&it)) {
      if (strcmp(bson_iter_key(&it), "newRoot") != 0) {
         aspen_error_set(err, ASPEN_ERR_FailedToParse,
                         "BSON field '$replaceRoot.%s' is an unknown field.",
                         bson_iter_key(&it));
         replace_destroy(st);
         return false;
      }
      if (!aspen_expr_parse(&it, NULL, &r->expr, err)) {
         replace_destroy(st);
         return false;
      }
   }
   if (!r->expr) {
      aspen_error_set(err, ASPEN_ERR_FailedToParse,
                      "BSON field '$replaceRoot.newRoot' is missing but a "
                      "required field");
      replace_destroy(st);
      return false;
   }
   return true;
}

static bool
replace_push(aspen_stage_t *st, const aspen_sdoc_t *in, aspen_error_t *err)
{
   replace_t *r = st->state;
   aspen_expr_ctx_t ctx;
   aspen_value_t v;
   aspen_stage_expr_ctx(st, in, &ctx);
   if (!aspen_expr_eval(r->expr, &ctx, &v, err)) {
      return false;
   }
   if (v.v.value_type != BSON_TYPE_DOCUMENT) {
      char *json = aspen_value_to_json(&v);
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "'newRoot' expression must evaluate to an object, but "
                      "resulting value was: %s. Type of resulting value: "
                      "'%s'.",
                      json ? json : "MISSING", aspen_value_type_name(&v));
      bson_free(json);
      aspen_value_destroy(&v);
      return false;
   }
   bson_t doc;
   (void) bson_init_static(&doc, v.v.value.v_doc.data,
                           v.v.value.v_doc.data_len);
   aspen_sdoc_t next = *in;
   next.doc = &doc;
   aspen_stage_emit(st, &next);
   aspen_value_destroy(&v);
   return true;
}

const aspen_stage_ops_t aspen_stage_replace_root_ops = {
   .name = "$replaceRoot",
   .operator_name = "ReplaceRootOperator",
   .per_document = true,
   .parse = replace_root_parse,
   .push = replace_push,
   .destroy = replace_destroy,
};
const aspen_stage_ops_t aspen_stage_replace_with_ops = {
   .name = "$replaceWith",
   .operator_name = "ReplaceRootOperator",
   .per_document = true,
   .parse = replace_root_parse,
   .push = replace_push,
   .destroy = replace_destroy,
};

/* ---- $unwind ------------------------------------------------------------ */

typedef struct {
   char *path;       /* without the '$' */
   char *index_field;
   bool preserve;
} unwind_t;

static void
unwind_destroy(aspen_stage_t *st)
{
   unwind_t *u = st->state;
   if (u) {
      free(u->path);
      free(u->index_field);
      free(u);
      st->state = NULL;
   }
}

static bool
unwind_parse(aspen_stage_t *st, const bson_iter_t *arg, aspen_parse_ctx_t *pc,
             aspen_error_t *err)
{
   (void) pc;
   unwind_t *u = aspen_xcalloc(1, sizeof *u);
   st->state = u;
   const char *path = NULL;
   if (BSON_ITER_HOLDS_UTF8(arg)) {
      path = bson_iter_utf8(arg, NULL);
   } else if (BSON_ITER_HOLDS_DOCUMENT(arg)) {
      bson_t spec;
      bson_iter_t it;
      arg_doc(arg, &spec);
      bson_iter_init(&it, &spec);
      while (bson_iter_next(&it)) {
         const char *k = bson_iter_key(&it);
         if (strcmp(k, "path") == 0) {
            if (!BSON_ITER_HOLDS_UTF8(&it)) {
               aspen_error_set(err, ASPEN_ERR_FailedToParse,
                               "expected a string as the path for $unwind "
                               "stage, got %s",
                               "a non-string");
               unwind_destroy(st);
               return false;
            }
            path = bson_iter_utf8(&it, NULL);
         } else if (strcmp(k, "includeArrayIndex") == 0) {
            if (!BSON_ITER_HOLDS_UTF8(&it)) {
               aspen_error_set(err, ASPEN_ERR_FailedToParse,
                               "expected a non-empty string for the "
                               "includeArrayIndex option to $unwind stage");
               unwind_destroy(st);
               return false;
            }
            const char *f = bson_iter_utf8(&it, NULL);
            if (!*f) {
               aspen_error_set(err, ASPEN_ERR_FailedToParse,
                               "expected a non-empty string for the "
                               "includeArrayIndex option to $unwind stage");
               unwind_destroy(st);
               return false;
            }
            if (*f == '$') {
               aspen_error_set(err, ASPEN_ERR_FailedToParse,
                               "includeArrayIndex option to $unwind stage "
                               "should not be prefixed with a '$': %s",
                               f);
               unwind_destroy(st);
               return false;
            }
            free(u->index_field); /* given twice: the last wins, as in mongod */
            u->index_field = aspen_xstrdup(f);
         } else if (strcmp(k, "preserveNullAndEmptyArrays") == 0) {
            if (!BSON_ITER_HOLDS_BOOL(&it)) {
               aspen_error_set(err, ASPEN_ERR_FailedToParse,
                               "expected a boolean for the "
                               "preserveNullAndEmptyArrays option to $unwind "
                               "stage");
               unwind_destroy(st);
               return false;
            }
            u->preserve = bson_iter_bool(&it);
         } else {
            aspen_error_set(err, ASPEN_ERR_FailedToParse,
                            "unrecognized option to $unwind stage: %s", k);
            unwind_destroy(st);
            return false;
         }
      }
      if (!path) {
         aspen_error_set(err, ASPEN_ERR_FailedToParse,
                         "no path specified to $unwind stage");
         unwind_destroy(st);
         return false;
      }
   } else {
      aspen_error_set(err, ASPEN_ERR_FailedToParse,
                      "expected either a string or an object as "
                      "specification for $unwind stage");
      unwind_destroy(st);
      return false;
   }
   if (path[0] != '$' || path[1] == '\0' || path[1] == '$') {
      aspen_error_set(err, ASPEN_ERR_FailedToParse,
                      "path option to $unwind stage should be prefixed with a "
                      "'$': %s",
                      path);
      unwind_destroy(st);
      return false;
   }
   u->path = aspen_xstrdup(path + 1);
   return true;
}

/* Copies `in` to `out`, replacing (or, with val MISSING, removing) the value
 * at dotted `path` through subdocuments; a field that is not there is
 * created, with the documents on its path. */
static void
set_path(const bson_t *in, const char *path, const aspen_value_t *val,
         bson_t *out)
{
   const char *dot = strchr(path, '.');
   size_t len = dot ? (size_t) (dot - path) : strlen(path);
   bson_iter_t it;
   bool found = false;
   bson_iter_init(&it, in);
   while (bson_iter_next(&it)) {
      const char *k = bson_iter_key(&it);
      if (strlen(k) != len || memcmp(k, path, len) != 0) {
         bson_append_iter(out, NULL, 0, &it);
         continue;
      }
      found = true;
      if (!dot) {
         aspen_value_append(out, k, -1, val);
      } else if (BSON_ITER_HOLDS_DOCUMENT(&it)) {
         uint32_t dlen;
         const uint8_t *data;
         bson_t sub, outsub;
         bson_iter_document(&it, &dlen, &data);
         (void) bson_init_static(&sub, data, dlen);
         bson_append_document_begin(out, k, -1, &outsub);
         set_path(&sub, dot + 1, val, &outsub);
         bson_append_document_end(out, &outsub);
      } else {
         bson_append_iter(out, NULL, 0, &it);
      }
   }
   if (!found && !aspen_value_is_missing(val)) {
      /* Create the field, and the documents on its path. */
      if (!dot) {
         aspen_value_append(out, path, (int) len, val);
      } else {
         bson_t empty = BSON_INITIALIZER, sub;
         bson_append_document_begin(out, path, (int) len, &sub);
         set_path(&empty, dot + 1, val, &sub);
         bson_append_document_end(out, &sub);
      }
   }
}

/* The value at a dotted path through subdocuments only (no arrays). */
static bool
get_path(const bson_t *doc, const char *path, bson_iter_t *found)
{
   bson_iter_t it;
   return bson_iter_init(&it, doc) && bson_iter_find_descendant(&it, path, found);
}

static void
unwind_emit(aspen_stage_t *st, const aspen_sdoc_t *in, const unwind_t *u,
            const aspen_value_t *val, const aspen_value_t *index)
{
   bson_t out = BSON_INITIALIZER;
   bson_t tmp = BSON_INITIALIZER;
   set_path(in->doc, u->path, val, &tmp);
   if (u->index_field) {
      set_path(&tmp, u->index_field, index, &out);
   } else {
      bson_steal(&out, &tmp);
      bson_init(&tmp);
   }
   aspen_sdoc_t next = *in;
   next.doc = &out;
   aspen_stage_emit(st, &next);
   bson_destroy(&out);
   bson_destroy(&tmp);
}

static bool
unwind_push(aspen_stage_t *st, const aspen_sdoc_t *in, aspen_error_t *err)
{
   (void) err;
   unwind_t *u = st->state;
   bson_iter_t found;
   if (!get_path(in->doc, u->path, &found)) {
      if (u->preserve) {
         aspen_value_t missing = ASPEN_VALUE_MISSING;
         aspen_value_t null_index = aspen_value_null();
         /* A missing field stays missing. */
         bson_t out = BSON_INITIALIZER;
         bson_copy_to_excluding_noinit(in->doc, &out, "", NULL);
         if (u->index_field) {
            aspen_value_append(&out, u->index_field, -1, &null_index);
         }
         aspen_sdoc_t next = *in;
         next.doc = &out;
         aspen_stage_emit(st, &next);
         bson_destroy(&out);
         (void) missing;
      }
      return true;
   }
   if (BSON_ITER_HOLDS_ARRAY(&found)) {
      uint32_t len;
      const uint8_t *data;
      bson_t arr;
      bson_iter_t ai;
      bson_iter_array(&found, &len, &data);
      (void) bson_init_static(&arr, data, len);
      int64_t i = 0;
      bson_iter_init(&ai, &arr);
      bool any = false;
      while (bson_iter_next(&ai)) {
         aspen_value_t v = aspen_value_borrow(&ai);
         aspen_value_t idx = aspen_value_int64(i++);
         unwind_emit(st, in, u, &v, &idx);
         any = true;
      }
      if (!any && u->preserve) {
         aspen_value_t missing = ASPEN_VALUE_MISSING;
         aspen_value_t null_index = aspen_value_null();
         unwind_emit(st, in, u, &missing, &null_index);
      }
      return true;
   }
   if (BSON_ITER_HOLDS_NULL(&found) || BSON_ITER_HOLDS_UNDEFINED(&found)) {
      if (u->preserve) {
         aspen_value_t v = aspen_value_borrow(&found);
         aspen_value_t null_index = aspen_value_null();
         unwind_emit(st, in, u, &v, &null_index);
      }
      return true;
   }
   /* A non-array value unwinds to itself. */
   aspen_value_t v = aspen_value_borrow(&found);
   aspen_value_t null_index = aspen_value_null();
   unwind_emit(st, in, u, &v, &null_index);
   return true;
}

const aspen_stage_ops_t aspen_stage_unwind_ops = {
   .name = "$unwind",
   .operator_name = "UnwindOperator",
   .per_document = true,
   .parse = unwind_parse,
   .push = unwind_push,
   .destroy = unwind_destroy,
};
