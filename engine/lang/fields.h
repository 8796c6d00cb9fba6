/*
 * fields.h - a document's top-level field table: where each top-level
 * element of one BSON document starts and how long its key is, in document
 * order (fields.c).
 *
 * The stateless stages' compiled path: a shaping stage that writes a
 * document records its top-level elements as it writes them (it knows each
 * offset and key length already) and hands the table on with the document
 * (aspen_sdoc_t.fields), and a stage that walks its input records the
 * input's. Then
 *  - expressions resolve "$a.b" paths through the table instead of
 *    scanning the document from its top (aspen_expr_ctx_t.fields);
 *  - an $addFields / $set whose every field is new to its input (a lookup
 *    in the table, no walk) copies the input's fields as one span and
 *    appends the computed ones: the stages after a $project are fused into
 *    one write.
 * A table is only trusted for the very bytes it describes
 * (aspen_fields_covers: the same data pointer and length, complete); any
 * other document - a copy, a rebuilt one, a table that overflowed - takes
 * the per-stage path, with the same results.
 *
 * Thread-safety: a table belongs to the thread that fills it.
 */
#ifndef ASPEN_ENGINE_LANG_FIELDS_H
#define ASPEN_ENGINE_LANG_FIELDS_H

#include "bsonw.h"

#include <bson/bson.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

/* Documents with more top-level fields than this get no table. */
#define ASPEN_FIELDS_MAX 32

typedef struct {
   uint32_t off;  /* the element's type byte, from the document's start */
   uint32_t klen; /* its key's length */
} aspen_field_t;

typedef struct {
   const uint8_t *data; /* the document described (aspen_fields_bind) */
   uint32_t len;
   uint32_t n;
   bool overflow; /* more than ASPEN_FIELDS_MAX: not usable */
   uint64_t layout; /* its keys' layout id (see below), 0 if unknown */
   aspen_field_t f[ASPEN_FIELDS_MAX];
} aspen_fields_t;

/* Starts an empty table (describing no document yet). */
static inline void
aspen_fields_reset(aspen_fields_t *t)
{
   t->data = NULL;
   t->len = 0;
   t->n = 0;
   t->overflow = false;
   t->layout = 0;
}

/* Records the next top-level element: it starts at `off` and its key is
 * `klen` bytes long. */
static inline void
aspen_fields_add(aspen_fields_t *t, size_t off, size_t klen)
{
   if (t->n == ASPEN_FIELDS_MAX) {
      t->overflow = true;
      return;
   }
   t->f[t->n].off = (uint32_t) off;
   t->f[t->n].klen = (uint32_t) klen;
   t->n++;
}

/* Says the table describes `doc`, whose top-level elements were all
 * added. */
static inline void
aspen_fields_bind(aspen_fields_t *t, const bson_t *doc)
{
   t->data = aspen_bsonw_data(doc);
   t->len = doc->len;
}

/* Whether tables are used at all (default true; fields.c). Tests turn
 * them off to compare against the per-stage path; any thread, before a
 * pipeline runs. */
extern bool aspen__fields_on;
void aspen_fields_set_enabled(bool on);

/* True if `t` (may be NULL) describes exactly the document at data/len,
 * every top-level field of it. */
static inline bool
aspen_fields_covers_data(const aspen_fields_t *t, const uint8_t *data,
                         uint32_t len)
{
   return aspen__fields_on && t && !t->overflow && t->data && data &&
          t->len == len && t->data == data;
}

/* The same for `doc` (may be NULL). */
static inline bool
aspen_fields_covers(const aspen_fields_t *t, const bson_t *doc)
{
   /* (t first: most inputs come without a table) */
   return doc && t &&
          aspen_fields_covers_data(t, aspen_bsonw_data(doc), doc->len);
}

/* Fills `t` from `doc`'s top-level elements (one pass) and binds it:
 * false, `t` unusable, if the document has more fields than a table holds
 * or is malformed. */
bool aspen_fields_scan(aspen_fields_t *t, const bson_t *doc);

/* True if the `n` bytes at `a` and `b` are the same: field names are a
 * few bytes long, so they are compared in place rather than through a
 * memcmp call, eight bytes at a time (unaligned loads through memcpy),
 * then the rest as four, two and one bytes (no loop). */
static inline bool
aspen_fields_key_eq(const void *a, const void *b, size_t n)
{
   const uint8_t *x = a, *y = b;
   for (; n >= 8; x += 8, y += 8, n -= 8) {
      uint64_t u, v;
      memcpy(&u, x, 8);
      memcpy(&v, y, 8);
      if (u != v) {
         return false;
      }
   }
   if (n & 4) {
      uint32_t u, v;
      memcpy(&u, x, 4);
      memcpy(&v, y, 4);
      if (u != v) {
         return false;
      }
      x += 4;
      y += 4;
   }
   if (n & 2) {
      uint16_t u, v;
      memcpy(&u, x, 2);
      memcpy(&v, y, 2);
      if (u != v) {
         return false;
      }
      x += 2;
      y += 2;
   }
   return !(n & 1) || *x == *y;
}

/* A raw walk of the document at data/len (its frame already checked, or
 * trusted) for the first element named `key` (`klen` bytes; the one a scan
 * from the top finds): 1 with its offset (its type byte) in *off, 0 if the
 * walk reaches the document's end without it, -1 if an element before it
 * is malformed or the elements do not end at the terminating NUL. */
static inline __attribute__((always_inline)) int
aspen_fields_raw_find(const uint8_t *data, uint32_t len, const char *key,
                      size_t klen, uint32_t *off)
{
   uint32_t o = 4;
   while (o + 1 < len) {
      const uint8_t *k = data + o + 1;
      size_t room = len - 1 - (o + 1);
      size_t kl = aspen_bsonw_raw_key_len(k, room);
      if (kl == room) {
         return -1;
      }
      if (kl == klen && aspen_fields_key_eq(k, key, kl)) {
         *off = o;
         return 1;
      }
      uint32_t vo = o + 1 + (uint32_t) kl + 1;
      int64_t sz = aspen_bsonw_value_size(data[o], data + vo, len - vo);
      if (sz < 0) {
         return -1;
      }
      o = vo + (uint32_t) sz;
   }
   return o + 1 == len ? 0 : -1;
}

/* The index in `t` of the first field named `key` (`klen` bytes), -1 if
 * the document has none (lengths first). The first match is the one a
 * scan from the top finds (duplicate keys). */
static inline int
aspen_fields_find(const aspen_fields_t *t, const char *key, size_t klen)
{
   for (uint32_t i = 0; i < t->n; i++) {
      if (t->f[i].klen == klen &&
          aspen_fields_key_eq(t->data + t->f[i].off + 1, key, klen)) {
         return (int) i;
      }
   }
   return -1;
}

/* ---- layouts ----------------------------------------------------------
 * Documents from one source almost always share their top-level keys, in
 * the same order. A scanner that keeps the last document's keys
 * (aspen_fields_layout_t) checks the next one's against them as it walks
 * it, and tags the table with the layout's id (aspen_fields_t.layout): the
 * same id for byte-equal keys (count, lengths, bytes, order), a new one,
 * unique in the process, for any other sequence. What a reader decided
 * from a table's keys alone (where a name is, what to copy) holds for
 * every table with the same id. A shaping stage tags its output's table
 * too, from its input's id and which computed fields it wrote
 * (stage_shape.c, tag_output). A table nobody checked has id 0. */

/* A layout id not handed out before (never 0), for a writer that knows
 * its table's keys are those of no other id's (any thread). */
uint64_t aspen_fields_new_layout_id(void);

/* The keys kept: a document whose keys take more gets id 0. */
#define ASPEN_FIELDS_LAYOUT_KEY_BYTES 512

/* What the scan checks a kept layout's element against, in one place
 * (fields.c, keep_head): its head - the type byte, a key of up to 14 bytes
 * and the key's NUL - as one masked word (up to 8 bytes) or two words, the
 * head's first and last eight bytes (they may overlap); its table entry
 * at offset 0 (aspen_field_t as a word); where its value starts (`step`)
 * or, for a type of fixed size, where the next element does, both from
 * its start; how many bytes from its start the document must hold for its
 * head, its fixed-size value and the byte after it or its length word to
 * be read (`need`); and, for a variable-size element, how many bytes must
 * follow it: the next run's need (see aspen_fields_layout_t), at least the
 * document's last byte (`rnext`). The same key with other types keeps the
 * layout's id, and the heads of the document that set it: an element
 * whose type changed leaves the rest of the walk to the key search. */
typedef struct {
   uint64_t kw[2];
   uint64_t kmask;
   uint64_t entry;
   uint32_t step;
   uint32_t need;
   uint32_t rnext;
   uint8_t words; /* 1 or 2 */
   uint8_t hlen;  /* the head's length */
   uint8_t kind;  /* fixed size, string, sub-document, bool (fields.c) */
   uint8_t op;    /* the loop's step for this kind and words (fields.c) */
} aspen_fields_head_t;

typedef struct {
   uint64_t id; /* 0: none kept */
   uint32_t n;
   uint32_t klen[ASPEN_FIELDS_MAX];
   uint32_t koff[ASPEN_FIELDS_MAX]; /* where each key is in keys */
   char keys[ASPEN_FIELDS_LAYOUT_KEY_BYTES]; /* each with its NUL */
   /* The heads of the first `fast` elements (those before any key of 15
    * bytes or more, or any type the scan leaves to the iterator), and the
    * bytes the first run needs from the first element's start: a run is
    * fixed-size elements up to and including the next variable-size one
    * (or the last), whose bounds are all checked at its start. */
   uint32_t fast;
   uint32_t need0;
   aspen_fields_head_t head[ASPEN_FIELDS_MAX];
} aspen_fields_layout_t;

/* aspen_fields_scan that also tags the table with its layout's id, checking
 * each key against `lay`'s (kept from the last document scanned with it,
 * zeroed before the first) as it goes, and keeping the document's keys in
 * `lay` when they differ. The same result and table as aspen_fields_scan
 * otherwise. */
bool aspen_fields_scan_layout(aspen_fields_t *t, const bson_t *doc,
                              aspen_fields_layout_t *lay);

/* The index in `t` of the first field named `key` (aspen_fields_find),
 * remembered in `*memo` for the table's layout: a table with the layout
 * the memo was taken for gets it without a lookup. `*memo` is read and
 * written with relaxed atomics, so callers that share one across threads
 * (a compiled matcher) at worst look up again. */
static inline int
aspen_fields_find_memo(const aspen_fields_t *t, const char *key, size_t klen,
                       uint64_t *memo)
{
   /* The layout's id above six bits of index + 1 (0: no such field). */
   uint64_t m = __atomic_load_n(memo, __ATOMIC_RELAXED);
   if (t->layout != 0 && (m >> 6) == t->layout) {
      return (int) (m & 63) - 1;
   }
   int k = aspen_fields_find(t, key, klen);
   if (t->layout != 0) {
      __atomic_store_n(memo, t->layout << 6 | (uint64_t) (k + 1),
                       __ATOMIC_RELAXED);
   }
   return k;
}

#endif /* ASPEN_ENGINE_LANG_FIELDS_H */
