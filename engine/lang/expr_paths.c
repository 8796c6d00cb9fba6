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
 * remembered: where the top-level slots are in an input table of one
 * layout id (table_lookup), and each sibling group's last walk of its
 * sub-document (nest_replay: the heads it met, checked in place; a walk
 * of fixed-size elements as flat checks at known offsets, nest_fixed).
 * A table of the remembered layout takes a fast path without calls
 * (aspen_expr_paths_resolve): each top-level slot read from its field,
 * then each group under one by its fixed walk; whatever it does not cover
 * (a type it leaves to aspen__raw_value, a walk that is not fixed or does
 * not fit) goes on in resolve_rest, with the same results.
 */
#include "lang/expr_int.h"

#include "bsonw.h"

#include <stdlib.h>

_Static_assert(ASPEN_FIELDS_MAX <= 255, "aspen__ptop_t.fi holds an index");

bool aspen__expr_paths_on = true;

void
aspen_expr_paths_set_enabled(bool on)
{
   aspen__expr_paths_on = on;
}

aspen_expr_paths_t *
aspen_expr_paths_new(void)
{
   aspen_expr_paths_t *p = aspen_xcalloc(1, sizeof(aspen_expr_paths_t));
   p->memo_layout = ASPEN__PMEMO_NONE;
   return p;
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
   free(p->tops);
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
      p->tops = aspen_xrealloc(p->tops, p->cap * sizeof *p->tops);
   }
   p->slots[p->n] = (aspen__pslot_t){.parent = parent,
                                     .key = parts[n - 1],
                                     .klen = (uint32_t) strlen(parts[n - 1]),
                                     .parts = parts,
                                     .n_parts = n};
   p->order_ok = false;
   p->memo_layout = ASPEN__PMEMO_NONE;
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
 * the groups of siblings. Every slot starts as an owned-nothing MISSING
 * holding its value (the per-document fills write only a value's type
 * and contents, and the state only of slots under a prefix: a top-level
 * slot always holds its value). */
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
   for (uint32_t i = 0; i < p->n; i++) {
      p->vals[i] = ASPEN_VALUE_MISSING;
      p->state[i] = ASPEN__PSLOT_VALUE;
   }
   for (uint32_t g = 0; g < p->n_groups; g++) {
      p->nest[g].all_value = true;
      if (p->groups[g].parent >= 0) {
         p->nest[g].pv = &p->vals[p->groups[g].parent];
         p->nest[g].pstate = &p->state[p->groups[g].parent];
         p->nest[g].ptop = p->slots[p->groups[g].parent].parent < 0;
      }
   }
   p->order_ok = true;
}

static inline void
set_missing(aspen_expr_paths_t *p, uint32_t s)
{
   p->vals[s] = ASPEN_VALUE_MISSING;
}

/* aspen__raw_value, out of line: the types slot_value leaves to it are
 * rare on paths, and its iterator would weigh on its callers' frames. */
static __attribute__((noinline)) bool
raw_value_general(const uint8_t *data, uint32_t len, uint32_t off,
                  uint32_t kl, aspen_value_t *out)
{
   return aspen__raw_value(data, len, off, kl, out);
}

/* aspen__raw_value for a slot, for the types paths mostly read: the same
 * value from the same checks, writing only the value's type and contents
 * (a slot's owned and scratch flags stay false: build_order). 1: read, 0:
 * malformed, -1: a type left to aspen__raw_value. The element's head
 * (type, `kl` key bytes, NUL) is within data/len. */
static inline int
slot_read(const uint8_t *data, uint32_t len, uint32_t off, uint32_t kl,
          aspen_value_t *out)
{
   uint8_t type = data[off];
   uint32_t voff = off + kl + 2;
   const uint8_t *v = data + voff;
   uint32_t avail = len - voff;
   uint32_t l;
   /* The types most read first, as tests rather than a jump table. */
   if (type == BSON_TYPE_INT32) {
      if (avail < 4) {
         return 0;
      }
      out->v.value.v_int32 = (int32_t) aspen_bytes_get_le32(v);
   } else if (type == BSON_TYPE_UTF8) {
      /* aspen_bsonw_value_size's checks: a length of 1 or more, within
       * (a document's length is below 2^31, so is `l` when it fits), and
       * the string's last byte a NUL */
      if (avail < 4 || (l = aspen_bytes_get_le32(v)) < 1 || l > avail - 4 ||
          v[3 + l] != 0) {
         return 0;
      }
      out->v.value.v_utf8.str = (char *) v + 4;
      out->v.value.v_utf8.len = l - 1;
   } else if (type == BSON_TYPE_DOCUMENT || type == BSON_TYPE_ARRAY) {
      if (avail < 4 || (l = aspen_bytes_get_le32(v)) < 5 || l > avail) {
         return 0;
      }
      out->v.value.v_doc.data = (uint8_t *) v;
      out->v.value.v_doc.data_len = l;
   } else if (type == BSON_TYPE_DOUBLE || type == BSON_TYPE_INT64 ||
              type == BSON_TYPE_DATE_TIME) {
      if (avail < 8) { /* a double's bits, as aspen__raw_value copies them */
         return 0;
      }
      out->v.value.v_int64 = (int64_t) aspen_bytes_get_le64(v);
   } else if (type == BSON_TYPE_BOOL) {
      if (avail < 1) {
         return 0;
      }
      out->v.value.v_bool = *v != 0;
   } else if (type != BSON_TYPE_NULL) {
      return -1;
   }
   out->v.value_type = (bson_type_t) type;
   return 1;
}

/* aspen__raw_value for a slot (slot_read, the rest through
 * aspen__raw_value). */
static inline bool
slot_value(const uint8_t *data, uint32_t len, uint32_t off, uint32_t kl,
           aspen_value_t *out)
{
   int r = slot_read(data, len, off, kl, out);
   return r < 0 ? raw_value_general(data, len, off, kl, out) : r;
}

/* The size of a value of `type` when it has a fixed one, else -1. */
static int32_t
fixed_size(uint8_t type)
{
   switch ((bson_type_t) type) {
   case BSON_TYPE_INT32:
      return 4;
   case BSON_TYPE_DOUBLE:
   case BSON_TYPE_INT64:
   case BSON_TYPE_DATE_TIME:
   case BSON_TYPE_TIMESTAMP:
      return 8;
   case BSON_TYPE_BOOL:
      return 1;
   case BSON_TYPE_OID:
      return 12;
   case BSON_TYPE_DECIMAL128:
      return 16;
   case BSON_TYPE_NULL:
   case BSON_TYPE_UNDEFINED:
   case BSON_TYPE_MINKEY:
   case BSON_TYPE_MAXKEY:
      return 0;
   default:
      return -1;
   }
}

/* Keeps the element at e (its head `hl` bytes, at most
 * ASPEN__PNEST_HEAD) as the memo's next step, filling slot `s` (-1:
 * none). */
static void
keep_step(aspen__pnest_t *m, const uint8_t *e, uint32_t hl, int32_t s)
{
   aspen__pstep_t *st = &m->steps[m->n_steps++];
   uint8_t w[ASPEN__PNEST_HEAD] = {0};
   memcpy(w, e, hl);
   uint32_t words = (hl + 7) / 8;
   uint32_t last = hl - 8 * (words - 1); /* bytes of the last word */
   st->kw[0] = aspen_bytes_get_le64(w);
   st->kw[1] = aspen_bytes_get_le64(w + 8);
   st->kmask = last == 8 ? ~0ull : (1ull << (8 * last)) - 1;
   st->words = (uint8_t) words;
   st->hlen = (uint8_t) hl;
   st->type = e[0];
   st->slot = s;
   int32_t vs = fixed_size(e[0]);
   st->esize = vs < 0 ? 0 : hl + (uint32_t) vs;
}

/* Whether a value of `type` in a slot is one fixed_value reads. */
static bool
fixed_readable(uint8_t type)
{
   return type == BSON_TYPE_INT32 || type == BSON_TYPE_DOUBLE ||
          type == BSON_TYPE_INT64 || type == BSON_TYPE_DATE_TIME ||
          type == BSON_TYPE_BOOL || type == BSON_TYPE_NULL;
}

/* Makes the kept walk `m` a fixed one (aspen__pnest_t.fixed) if it can
 * be, its slots' values written to `vals`. */
static void
plan_fixed(aspen__pnest_t *m, aspen_value_t *vals)
{
   uint32_t off = 4, need = 4;
   m->n_words = m->n_fills = 0;
   for (uint32_t i = 0; i < m->n_steps; i++) {
      aspen__pstep_t *st = &m->steps[i];
      if (st->esize == 0 || (st->slot >= 0 && !fixed_readable(st->type))) {
         return;
      }
      st->off = off;
      uint32_t words_end = off + 8u * st->words;
      need = words_end > need ? words_end : need;
      for (uint32_t w = 0; w < st->words; w++) {
         m->word[m->n_words].kw = st->kw[w];
         m->word[m->n_words].kmask = w + 1 == st->words ? st->kmask : ~0ull;
         m->word[m->n_words++].off = off + 8 * w;
      }
      off += st->esize;
   }
   /* The slots' values by width: int32s, then 8 bytes, then bools and
    * nulls. */
   for (int pass = 0; pass < 3; pass++) {
      for (uint32_t i = 0; i < m->n_steps; i++) {
         aspen__pstep_t *st = &m->steps[i];
         int w = st->type == BSON_TYPE_INT32                             ? 0
                 : st->type == BSON_TYPE_BOOL || st->type == BSON_TYPE_NULL ? 2
                                                                         : 1;
         if (st->slot < 0 || w != pass) {
            continue;
         }
         m->fill[m->n_fills].out = &vals[st->slot];
         m->fill[m->n_fills].voff = st->off + st->hlen;
         m->fill[m->n_fills++].type = st->type;
      }
      if (pass == 0) {
         m->n_fill4 = m->n_fills;
      } else if (pass == 1) {
         m->n_fill8 = m->n_fills;
      }
   }
   m->end = off;
   m->need = off > need ? off : need;
   m->lmax = m->to_end ? off + 1 : UINT32_MAX;
   /* else no length passes (nest_fixed's one compare needs need <= lmax) */
   m->fixed = m->need <= m->lmax;
   m->quick = m->fixed && m->all_value && m->ptop;
}

/* Fills the `n` sibling slots order[0..n-1] from the document at
 * data/len: one walk of its elements, as raw_find (expr.c) walks them for
 * each name: the first element with a name decides (a malformed one
 * leaves MISSING), and the walk stops at a malformed element. */
static __attribute__((noinline)) void
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
      memo->fixed = memo->quick = false;
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
      int32_t claimed = -1;
      for (uint64_t m = todo; m; m &= m - 1) {
         uint32_t j = (uint32_t) __builtin_ctzll(m);
         const aspen__pslot_t *sl = &p->slots[order[j]];
         if (sl->klen == kl && aspen_fields_key_eq(k, sl->key, kl)) {
            claimed = (int32_t) order[j];
            if (!slot_value(data, len, off, (uint32_t) kl,
                            &p->vals[claimed])) {
               set_missing(p, (uint32_t) claimed);
            }
            todo &= ~(1ull << j);
            break;
         }
      }
      if (keep && memo->n_steps < ASPEN__PNEST_STEPS &&
          kl + 2 <= ASPEN__PNEST_HEAD) {
         keep_step(memo, data + off, (uint32_t) kl + 2, claimed);
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
      plan_fixed(memo, p->vals);
   }
   for (; todo; todo &= todo - 1) {
      set_missing(p, order[__builtin_ctzll(todo)]);
   }
   /* Past 64 siblings (never in practice), one walk per name. */
   for (uint32_t j = 64; j < n; j++) {
      scan_siblings(p, order + j, 1, data, len, NULL);
   }
}

/* True if the word(s) at `e` (as many as the head takes, all within the
 * document) start with step `st`'s head. */
static inline bool
head_words_at(const aspen__pstep_t *st, const uint8_t *e)
{
   uint64_t a = aspen_bytes_get_le64(e);
   if (st->words == 1) {
      return ((a ^ st->kw[0]) & st->kmask) == 0;
   }
   return a == st->kw[0] &&
          ((aspen_bytes_get_le64(e + 8) ^ st->kw[1]) & st->kmask) == 0;
}

/* head_at for the few bytes before a document's end: byte by byte. */
static __attribute__((noinline)) bool
head_bytes_at(const aspen__pstep_t *st, const uint8_t *e, uint32_t avail)
{
   uint8_t w[ASPEN__PNEST_HEAD];
   aspen_bytes_put_le64(w, st->kw[0]);
   aspen_bytes_put_le64(w + 8, st->kw[1]);
   return st->hlen <= avail && aspen_fields_key_eq(e, w, st->hlen);
}

/* True if the `avail` bytes at `e` start with step `st`'s head: compared
 * as words, or byte by byte when fewer bytes than the words are left. */
static inline bool
head_at(const aspen__pstep_t *st, const uint8_t *e, uint32_t avail)
{
   return avail >= 8u * st->words ? head_words_at(st, e)
                                  : head_bytes_at(st, e, avail);
}

/* nest_replay for a fixed walk (`m->fixed`): one check of the document's
 * length covers every head's words and every element (slot_value's and
 * aspen_bsonw_value_size's checks of each), so each head's words are
 * compared and each value read at its known offset. False if the
 * document's length or a head differs: the caller replays or scans it. */
static inline bool
nest_fixed(const uint8_t *data, uint32_t len, const aspen__pnest_t *m)
{
   /* len < need, or more elements after a walk to the end's */
   if (len - m->need > m->lmax - m->need) {
      return false;
   }
   for (uint32_t i = 0; i < m->n_words; i++) {
      if ((aspen_bytes_get_le64(data + m->word[i].off) ^ m->word[i].kw) &
          m->word[i].kmask) {
         return false;
      }
   }
   /* by width (plan_fixed) */
   uint32_t i = 0;
   for (; i < m->n_fill4; i++) {
      aspen_value_t *out = m->fill[i].out;
      out->v.value.v_int32 =
         (int32_t) aspen_bytes_get_le32(data + m->fill[i].voff);
      out->v.value_type = BSON_TYPE_INT32;
   }
   if (i == m->n_fills) {
      return true;
   }
   for (; i < m->n_fill8; i++) {
      aspen_value_t *out = m->fill[i].out;
      out->v.value.v_int64 =
         (int64_t) aspen_bytes_get_le64(data + m->fill[i].voff);
      out->v.value_type = (bson_type_t) m->fill[i].type;
   }
   for (; i < m->n_fills; i++) {
      aspen_value_t *out = m->fill[i].out;
      if (m->fill[i].type == BSON_TYPE_BOOL) {
         out->v.value.v_bool = data[m->fill[i].voff] != 0;
      }
      out->v.value_type = (bson_type_t) m->fill[i].type;
   }
   return true; /* the names absent: MISSING already (nest_replay) */
}

/* scan_siblings for a sub-document whose elements start with the heads of
 * the last one scanned (`m`, valid): the same elements fill the same
 * slots, each head compared in place instead of searched, a fixed-size
 * element's end known from its head. False (some slots maybe filled) if
 * the document differs from the kept walk: the caller scans it. */
static bool
nest_replay(aspen_expr_paths_t *p, const uint8_t *data, uint32_t len,
            const aspen__pnest_t *m)
{
   uint32_t off = 4;
   uint32_t last = m->to_end ? ASPEN__PNEST_STEPS : m->n_steps - 1u;
   for (uint32_t i = 0; i < m->n_steps; i++) {
      const aspen__pstep_t *st = &m->steps[i];
      uint32_t avail = len - off;
      if (!head_at(st, data + off, avail)) {
         return false;
      }
      if (st->slot >= 0 &&
          !slot_value(data, len, off, st->hlen - 2u, &p->vals[st->slot])) {
         set_missing(p, (uint32_t) st->slot);
      }
      if (i == last) {
         return true; /* the walk stopped there: every name found */
      }
      if (st->esize != 0) {
         if (st->esize > avail) {
            return false;
         }
         off += st->esize;
      } else {
         uint32_t voff = off + st->hlen;
         int64_t sz = aspen_bsonw_value_size(st->type, data + voff,
                                             len - voff);
         if (sz < 0) {
            return false;
         }
         off = voff + (uint32_t) sz;
      }
   }
   /* The names absent hold MISSING already: the scan that kept this walk
    * left them so, and only a new scan (a new walk) or a replay of this
    * one writes this group's slots. */
   return off + 1 >= len; /* else more elements than the kept walk's */
}

/* Finds the top-level slots order[0..n-1] in `t` and remembers where
 * they are for its layout (aspen__ptop_t); those not there get MISSING,
 * which they keep while the memo stands. */
static __attribute__((noinline)) void
table_lookup(aspen_expr_paths_t *p, const uint32_t *order, uint32_t n,
             const aspen_fields_t *t)
{
   p->n_tops = 0;
   for (uint32_t j = 0; j < n; j++) {
      uint32_t s = order[j];
      int i = aspen_fields_find(t, p->slots[s].key, p->slots[s].klen);
      if (i < 0) {
         set_missing(p, s);
         continue;
      }
      p->tops[p->n_tops++] = (aspen__ptop_t){.out = &p->vals[s],
                                             .klen = p->slots[s].klen,
                                             .fi = (uint8_t) i};
   }
   /* a table nobody checked (id 0): found again for the next one */
   p->memo_layout = t->layout != 0 ? t->layout : ASPEN__PMEMO_NONE;
}

/* The top-level slots found by the last table_lookup, from `t` (of its
 * layout). */
static inline void
table_fill(aspen_expr_paths_t *p, const aspen_fields_t *t)
{
   /* Locals: the stores to the slots may alias nothing of `p` or `t`. */
   const aspen_field_t *f = t->f;
   const uint8_t *data = t->data;
   uint32_t len = t->len;
   for (const aspen__ptop_t *e = p->tops, *end = e + p->n_tops; e < end;
        e++) {
      if (!slot_value(data, len, f[e->fi].off, e->klen, e->out)) {
         *e->out = ASPEN_VALUE_MISSING;
      }
   }
}

/* The top-level slots order[0..n-1] through `t`, which covers the
 * document (doc_path_get's lookup): each field's index found by a lookup,
 * or, for a table of the layout the last lookups were for, remembered
 * (the same keys, so the same first field of each name). */
static inline void
table_siblings(aspen_expr_paths_t *p, const uint32_t *order, uint32_t n,
               const aspen_fields_t *t)
{
   if (t->layout != p->memo_layout) {
      table_lookup(p, order, n, t);
   }
   table_fill(p, t);
}

/* The slots of group `gr`, under a prefix (its slot resolved before). */
static __attribute__((noinline)) void
nest_siblings(aspen_expr_paths_t *p, const aspen__pgroup_t *gr,
              aspen__pnest_t *m)
{
   const uint32_t *sib = p->order + gr->start;
   const aspen_value_t *pv = m->pv;
   bson_type_t type = pv->v.value_type;
   bool resolved = *m->pstate == ASPEN__PSLOT_VALUE;
   if (resolved && type == BSON_TYPE_DOCUMENT) {
      const uint8_t *sd = pv->v.value.v_doc.data;
      uint32_t sl = pv->v.value.v_doc.data_len;
      if (!m->all_value) {
         for (uint32_t j = 0; j < gr->n; j++) {
            p->state[sib[j]] = ASPEN__PSLOT_VALUE;
         }
         m->all_value = true;
         m->quick = m->fixed && m->ptop;
      }
      if (!(m->fixed && nest_fixed(sd, sl, m)) &&
          !(m->valid && nest_replay(p, sd, sl, m))) {
         scan_siblings(p, sib, gr->n, sd, sl, m);
      }
      return;
   }
   /* Under an array (or a prefix that takes the general lookup): the
    * general lookup; under anything else: MISSING. */
   uint8_t state = !resolved || type == BSON_TYPE_ARRAY ? ASPEN__PSLOT_GENERAL
                                                        : ASPEN__PSLOT_VALUE;
   for (uint32_t j = 0; j < gr->n; j++) {
      set_missing(p, sib[j]);
      p->state[sib[j]] = state;
   }
   m->all_value = state == ASPEN__PSLOT_VALUE;
   m->quick = m->fixed && m->all_value && m->ptop;
}

/* The groups under a prefix, from the `g`th: each by its fixed walk when
 * its prefix holds a sub-document that walk fits (nest_fixed), else by
 * nest_siblings. */
static inline void
nest_groups(aspen_expr_paths_t *p, uint32_t g)
{
   for (; g < p->n_groups; g++) {
      aspen__pnest_t *m = &p->nest[g];
      const aspen_value_t *pv = m->pv;
      if (!(pv->v.value_type == BSON_TYPE_DOCUMENT &&
            *m->pstate == ASPEN__PSLOT_VALUE && m->fixed && m->all_value &&
            nest_fixed(pv->v.value.v_doc.data, pv->v.value.v_doc.data_len,
                       m))) {
         nest_siblings(p, &p->groups[g], m);
      }
   }
}

/* The rest of aspen_expr_paths_resolve after its fast path stopped at
 * group `g` (0: all of it). */
static __attribute__((noinline)) void
resolve_rest(aspen_expr_paths_t *p, const bson_t *doc,
             const aspen_fields_t *fields, uint32_t g)
{
   if (g == 0) {
      p->doc = NULL;
      if (!aspen__expr_paths_on || !doc || p->n == 0) {
         return;
      }
      if (!p->order_ok) {
         build_order(p);
      }
      /* The top level's group first (parents before children; every
       * path has a top-level slot), through a table that covers the
       * document (its bytes: no call into libbson for them) or by a
       * scan. */
      const aspen__pgroup_t *gr = p->groups;
      if (fields) {
         table_siblings(p, p->order + gr->start, gr->n, fields);
      } else {
         /* the slots it left MISSING are written */
         p->memo_layout = ASPEN__PMEMO_NONE;
         scan_siblings(p, p->order + gr->start, gr->n, bson_get_data(doc),
                       doc->len, NULL);
      }
      g = 1;
   }
   nest_groups(p, g);
   p->doc = doc;
}

void
aspen_expr_paths_resolve(aspen_expr_paths_t *p, const bson_t *doc,
                         const aspen_fields_t *fields)
{
   /* A table of the layout remembered: the top-level slots are where they
    * were (the memo stands only while the slots and their order do:
    * slot_of clears it). */
   if (!fields || fields->layout != p->memo_layout || !doc ||
       !aspen__expr_paths_on) {
      resolve_rest(p, doc, fields, 0);
      return;
   }
   const aspen_field_t *f = fields->f;
   const uint8_t *data = fields->data;
   uint32_t len = fields->len;
   for (const aspen__ptop_t *e = p->tops, *end = e + p->n_tops; e < end;
        e++) {
      int r = slot_read(data, len, f[e->fi].off, e->klen, e->out);
      if (r <= 0) {
         if (r < 0) { /* a type left to aspen__raw_value: all again */
            resolve_rest(p, doc, fields, 0);
            return;
         }
         *e->out = ASPEN_VALUE_MISSING;
      }
   }
   /* The groups under a prefix by their fixed walks, as far as they go. */
   for (uint32_t g = 1, n = p->n_groups; g < n; g++) {
      const aspen__pnest_t *m = &p->nest[g];
      const aspen_value_t *pv = m->pv;
      /* quick: the prefix is a top-level slot, so holds its value */
      if (!(pv->v.value_type == BSON_TYPE_DOCUMENT && m->quick &&
            nest_fixed(pv->v.value.v_doc.data, pv->v.value.v_doc.data_len,
                       m))) {
         resolve_rest(p, doc, fields, g);
         return;
      }
   }
   p->doc = doc;
}
