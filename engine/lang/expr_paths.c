/*
 * expr_paths.c - path slot tables (expr.h, aspen_expr_paths_t): the field
 * paths a stage's expressions read from the document, compiled into slots
 * and resolved once per document, so that path nodes read a slot instead
 * of looking their path up from the top (expr_int.h, aspen__slot_get).
 *
 * A path "a.b.c" takes three slots, "a", "a.b" and "a.b.c", each but the
 * first naming its prefix's slot; paths share their prefixes' slots. The
 * slots are resolved in an order where siblings (the same prefix) are
 * next to each other and every prefix comes before what is under it, so
 * that one scan of a document fills all its siblings. Each slot gets what
 * the general lookup (expr.c, doc_path_get / aspen__path_get) returns, by
 * the same raw element walk: the first element with the name, MISSING
 * past a malformed element, MISSING under a scalar, and ASPEN__PSLOT_GENERAL
 * under an array (the node then takes the general lookup, which traverses
 * it).
 *
 * Documents from one source share their layout, so the lookups are
 * remembered: the top-level slots' indexes per input table layout id
 * (table_siblings), and each sibling group's last walk of its
 * sub-document (nest_replay: the heads it met, checked in place).
 */
#include "lang/expr_int.h"

#include "bsonw.h"

#include <stdlib.h>

_Static_assert(ASPEN_FIELDS_MAX <= 127, "memo_idx holds a field's index");

bool aspen__expr_paths_on = true;

void
aspen_expr_paths_set_enabled(bool on)
{
   aspen__expr_paths_on = on;
}

aspen_expr_paths_t *
aspen_expr_paths_new(void)
{
   return aspen_xcalloc(1, sizeof(aspen_expr_paths_t));
}

void
aspen_expr_paths_destroy(aspen_expr_paths_t *p)
{
   if (!p) {
      return;
   }
   free(p->slots);
   free(p->order);
   free(p->groups);
   free(p->nest);
   free(p->vals);
   free(p->state);
   free(p->memo_idx);
   free(p);
}

uint32_t
aspen_expr_paths_count(const aspen_expr_paths_t *p)
{
   return p ? p->n : 0;
}

static bool
parts_eq(char *const *a, char *const *b, uint32_t n)
{
   for (uint32_t i = 0; i < n; i++) {
      if (strcmp(a[i], b[i]) != 0) {
         return false;
      }
   }
   return true;
}

/* The slot of the first `n` parts of `parts`, made (with its prefixes')
 * if new. */
static uint32_t
slot_of(aspen_expr_paths_t *p, char *const *parts, uint32_t n)
{
   int32_t parent = n > 1 ? (int32_t) slot_of(p, parts, n - 1) : -1;
   for (uint32_t i = 0; i < p->n; i++) {
      if (p->slots[i].n_parts == n && parts_eq(p->slots[i].parts, parts, n)) {
         return i;
      }
   }
   if (p->n == p->cap) {
      p->cap = p->cap ? 2 * p->cap : 8;
      p->slots = aspen_xrealloc(p->slots, p->cap * sizeof *p->slots);
      p->vals = aspen_xrealloc(p->vals, p->cap * sizeof *p->vals);
      p->state = aspen_xrealloc(p->state, p->cap * sizeof *p->state);
      p->order = aspen_xrealloc(p->order, p->cap * sizeof *p->order);
      p->groups = aspen_xrealloc(p->groups, p->cap * sizeof *p->groups);
      p->nest = aspen_xrealloc(p->nest, p->cap * sizeof *p->nest);
      p->memo_idx =
         aspen_xrealloc(p->memo_idx, p->cap * sizeof *p->memo_idx);
   }
   p->slots[p->n] = (aspen__pslot_t){.parent = parent,
                                     .key = parts[n - 1],
                                     .klen = (uint32_t) strlen(parts[n - 1]),
                                     .parts = parts,
                                     .n_parts = n};
   p->order_ok = false;
   p->memo_layout = 0;
   return p->n++;
}

void
aspen_expr_paths_add(aspen_expr_paths_t *p, aspen_expr_t *e)
{
   if (!e) {
      return;
   }
   bool current;
   if (aspen__node_is_doc_path(e, &current) && !e->ptab) {
      e->pslot = slot_of(p, e->parts, e->n_parts);
      e->ptab = p;
      e->pcurrent = current;
   }
   for (uint32_t i = 0; i < e->n_args; i++) {
      aspen_expr_paths_add(p, e->args[i]);
   }
}

/* Slots ordered by parent, stably: a parent's index is below its
 * children's, so every prefix is resolved before what is under it; then
 * the groups of siblings. */
static void
build_order(aspen_expr_paths_t *p)
{
   uint32_t k = 0;
   p->n_groups = 0;
   for (int64_t parent = -1; parent < (int64_t) p->n; parent++) {
      uint32_t start = k;
      for (uint32_t i = 0; i < p->n; i++) {
         if (p->slots[i].parent == parent) {
            p->order[k++] = i;
         }
      }
      if (k > start) {
         p->groups[p->n_groups++] =
            (aspen__pgroup_t){.parent = (int32_t) parent, .start = start,
                              .n = k - start};
      }
   }
   memset(p->nest, 0, p->n_groups * sizeof *p->nest);
   p->order_ok = true;
}

static inline void
set_missing(aspen_expr_paths_t *p, uint32_t s, uint8_t state)
{
   p->vals[s] = ASPEN_VALUE_MISSING;
   p->state[s] = state;
}

/* Fills the `n` sibling slots order[0..n-1] from the document at
 * data/len: one walk of its elements, as raw_find (expr.c) walks them for
 * each name: the first element with a name decides (a malformed one
 * leaves MISSING), and the walk stops at a malformed element. */
static void
scan_siblings(aspen_expr_paths_t *p, const uint32_t *order, uint32_t n,
              const uint8_t *data, uint32_t len, aspen__pnest_t *memo)
{
   uint64_t todo = n >= 64 ? ~0ull : (1ull << n) - 1;
   uint32_t off = 4;
   /* Kept for the next sub-document (nest_replay) when every head walked
    * fits and the walk ends without a malformed element. */
   bool keep = memo && n < 64;
   if (memo) {
      memo->valid = false;
      memo->n_steps = 0;
   }
   while (todo && off + 1 < len) {
      uint8_t type = data[off];
      const uint8_t *k = data + off + 1;
      size_t room = len - off - 1;
      size_t kl = aspen_bsonw_raw_key_len(k, room);
      if (kl == room) {
         keep = false;
         break;
      }
      int8_t claimed = -1;
      for (uint64_t m = todo; m; m &= m - 1) {
         uint32_t j = (uint32_t) __builtin_ctzll(m);
         const aspen__pslot_t *sl = &p->slots[order[j]];
         if (sl->klen == kl && aspen_fields_key_eq(k, sl->key, kl)) {
            uint32_t s = order[j];
            p->state[s] = ASPEN__PSLOT_VALUE;
            if (!aspen__raw_value(data, len, off, kl, &p->vals[s])) {
               p->vals[s] = ASPEN_VALUE_MISSING;
            }
            todo &= ~(1ull << j);
            claimed = (int8_t) j;
            break;
         }
      }
      if (keep && memo->n_steps < ASPEN__PNEST_STEPS &&
          kl + 2 <= ASPEN__PNEST_HEAD) {
         memcpy(memo->steps[memo->n_steps].head, data + off, kl + 2);
         memo->steps[memo->n_steps].hlen = (uint8_t) (kl + 2);
         memo->steps[memo->n_steps++].j = claimed;
      } else {
         keep = false;
      }
      uint32_t voff = off + 1 + (uint32_t) kl + 1;
      int64_t sz = aspen_bsonw_value_size(type, data + voff, len - voff);
      if (sz < 0) {
         keep = keep && !todo; /* malformed past what it needed */
         break;
      }
      off = voff + (uint32_t) sz;
   }
   if (keep) {
      memo->valid = true;
      memo->to_end = todo != 0;
   }
   for (; todo; todo &= todo - 1) {
      set_missing(p, order[__builtin_ctzll(todo)], ASPEN__PSLOT_VALUE);
   }
   /* Past 64 siblings (never in practice), one walk per name. */
   for (uint32_t j = 64; j < n; j++) {
      scan_siblings(p, order + j, 1, data, len, NULL);
   }
}

/* scan_siblings for a sub-document whose elements start with the heads of
 * the last one scanned (`m`, valid): the same elements fill the same
 * slots, each head compared in place instead of searched. False (some
 * slots maybe filled) if the document differs from the kept walk: the
 * caller scans it. */
static bool
nest_replay(aspen_expr_paths_t *p, const uint32_t *order, uint32_t n,
            const uint8_t *data, uint32_t len, const aspen__pnest_t *m)
{
   uint64_t todo = (1ull << n) - 1;
   uint32_t off = 4;
   for (uint32_t i = 0; i < m->n_steps; i++) {
      uint32_t hl = m->steps[i].hlen;
      /* The head, its NUL before the end: scan_siblings' key. */
      if (hl > len - off ||
          !aspen_fields_key_eq(data + off, m->steps[i].head, hl)) {
         return false;
      }
      int8_t j = m->steps[i].j;
      if (j >= 0) {
         uint32_t s = order[j];
         p->state[s] = ASPEN__PSLOT_VALUE;
         if (!aspen__raw_value(data, len, off, hl - 2, &p->vals[s])) {
            p->vals[s] = ASPEN_VALUE_MISSING;
         }
         todo &= ~(1ull << j);
         if (!todo) {
            return true; /* the walk stopped there */
         }
      }
      uint32_t voff = off + hl;
      int64_t sz = aspen_bsonw_value_size(m->steps[i].head[0], data + voff,
                                          len - voff);
      if (sz < 0) {
         return false;
      }
      off = voff + (uint32_t) sz;
   }
   if (!m->to_end || off + 1 < len) {
      return false; /* more elements than the kept walk's */
   }
   for (; todo; todo &= todo - 1) {
      set_missing(p, order[__builtin_ctzll(todo)], ASPEN__PSLOT_VALUE);
   }
   return true;
}

/* The top-level slots order[0..n-1] through `t`, which covers the
 * document (doc_path_get's lookup): each field's index found by a lookup,
 * or, for a table of the layout the last lookups were for, remembered
 * (the same keys, so the same first field of each name). */
static void
table_siblings(aspen_expr_paths_t *p, const uint32_t *order, uint32_t n,
               const aspen_fields_t *t)
{
   bool known = t->layout != 0 && t->layout == p->memo_layout;
   for (uint32_t j = 0; j < n; j++) {
      uint32_t s = order[j];
      int i;
      if (known) {
         i = p->memo_idx[s];
      } else {
         i = aspen_fields_find(t, p->slots[s].key, p->slots[s].klen);
         p->memo_idx[s] = (int8_t) i; /* i < ASPEN_FIELDS_MAX */
      }
      p->state[s] = ASPEN__PSLOT_VALUE;
      if (i < 0 || !aspen__raw_value(t->data, t->len, t->f[i].off,
                                     t->f[i].klen, &p->vals[s])) {
         p->vals[s] = ASPEN_VALUE_MISSING;
      }
   }
   p->memo_layout = t->layout;
}

void
aspen_expr_paths_resolve(aspen_expr_paths_t *p, const bson_t *doc,
                         const aspen_fields_t *fields)
{
   p->doc = NULL;
   if (!aspen__expr_paths_on || !doc || p->n == 0) {
      return;
   }
   if (!p->order_ok) {
      build_order(p);
   }
   /* A table that covers the document has its bytes (no call into
    * libbson for them). */
   bool covered = fields != NULL;
   const uint8_t *data = covered ? fields->data : bson_get_data(doc);
   uint32_t len = doc->len;
   for (uint32_t g = 0; g < p->n_groups; g++) {
      const aspen__pgroup_t *gr = &p->groups[g];
      const uint32_t *sib = p->order + gr->start;
      if (gr->parent < 0) {
         if (covered) {
            table_siblings(p, sib, gr->n, fields);
         } else {
            scan_siblings(p, sib, gr->n, data, len, NULL);
         }
         continue;
      }
      const aspen_value_t *pv = &p->vals[gr->parent];
      bson_type_t type = pv->v.value_type;
      bool resolved = p->state[gr->parent] == ASPEN__PSLOT_VALUE;
      if (resolved && type == BSON_TYPE_DOCUMENT) {
         const uint8_t *sd = pv->v.value.v_doc.data;
         uint32_t sl = pv->v.value.v_doc.data_len;
         aspen__pnest_t *m = &p->nest[g];
         if (!m->valid || !nest_replay(p, sib, gr->n, sd, sl, m)) {
            scan_siblings(p, sib, gr->n, sd, sl, m);
         }
         continue;
      }
      /* Under an array (or a prefix that takes the general lookup): the
       * general lookup; under anything else: MISSING. */
      uint8_t state = !resolved || type == BSON_TYPE_ARRAY
                         ? ASPEN__PSLOT_GENERAL
                         : ASPEN__PSLOT_VALUE;
      for (uint32_t j = 0; j < gr->n; j++) {
         set_missing(p, sib[j], state);
      }
   }
   p->doc = doc;
}
