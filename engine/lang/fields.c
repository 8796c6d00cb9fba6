/*
 * fields.c - a document's top-level field table (fields.h).
 */
#include "lang/fields.h"
#include "bsonw.h"

#include <stddef.h>
#include <string.h>

bool aspen__fields_on = true;

void
aspen_fields_set_enabled(bool on)
{
   aspen__fields_on = on;
}

/* The libbson iterator's walk (aspen_bsonw_iter_next), for documents with
 * element types scan_fast leaves to it. */
static bool
scan_iter(aspen_fields_t *t, const bson_t *doc)
{
   aspen_fields_reset(t);
   bson_iter_t it;
   uint32_t end = 4;
   if (!bson_iter_init(&it, doc)) {
      t->overflow = true;
      return false;
   }
   while (aspen_bsonw_iter_next(&it)) {
      aspen_fields_add(t, it.off, aspen_bsonw_key_len(&it));
      end = it.next_off;
   }
   /* Every element seen: the walk ended at the document's last byte. */
   if (t->overflow || end + 1 != doc->len) {
      t->overflow = true;
      return false;
   }
   aspen_fields_bind(t, doc);
   return true;
}

/* The element at `o` of data/len (whose key is `kl` bytes long): where the
 * next one starts, for the types aspen_bsonw_iter_next reads itself and
 * null, with the same checks; 0 for anything else (the iterator decides). */
static inline uint32_t
scan_next(const uint8_t *data, uint32_t len, uint32_t o, size_t kl)
{
   uint32_t v = o + 1 + (uint32_t) kl + 1, next, l;
   switch ((bson_type_t) data[o]) {
   case BSON_TYPE_DOUBLE:
   case BSON_TYPE_DATE_TIME:
   case BSON_TYPE_INT64:
   case BSON_TYPE_TIMESTAMP:
      next = v + 8;
      break;
   case BSON_TYPE_INT32:
      next = v + 4;
      break;
   case BSON_TYPE_OID:
      next = v + 12;
      break;
   case BSON_TYPE_DECIMAL128:
      next = v + 16;
      break;
   case BSON_TYPE_NULL:
      next = v;
      break;
   case BSON_TYPE_BOOL:
      if (v >= len || data[v] > 1) {
         return 0;
      }
      next = v + 1;
      break;
   case BSON_TYPE_UTF8:
      if (v + 4 >= len) {
         return 0;
      }
      l = aspen_bytes_get_le32(data + v);
      if (l > len - (v + 4)) {
         return 0;
      }
      next = v + 4 + l;
      if (l == 0 || next >= len || data[v + 4 + l - 1] != 0) {
         return 0;
      }
      break;
   case BSON_TYPE_DOCUMENT:
   case BSON_TYPE_ARRAY:
      if (v >= len - 4) {
         return 0;
      }
      l = aspen_bytes_get_le32(data + v);
      if (l > len || l > len - v) {
         return 0;
      }
      next = v + l;
      break;
   default:
      return 0;
   }
   return next < len ? next : 0;
}

/* The size of a value of `type` when all of them have that size (those
 * scan_next steps over without reading them), else -1. */
static int32_t
fixed_value_size(uint8_t type)
{
   switch ((bson_type_t) type) {
   case BSON_TYPE_DOUBLE:
   case BSON_TYPE_DATE_TIME:
   case BSON_TYPE_INT64:
   case BSON_TYPE_TIMESTAMP:
      return 8;
   case BSON_TYPE_INT32:
      return 4;
   case BSON_TYPE_OID:
      return 12;
   case BSON_TYPE_DECIMAL128:
      return 16;
   case BSON_TYPE_NULL:
      return 0;
   default:
      return -1;
   }
}

/* The id of a layout not seen before (never 0): unique in the process,
 * whichever thread asks. */
uint64_t
aspen_fields_new_layout_id(void)
{
   static uint64_t last;
   return __atomic_add_fetch(&last, 1, __ATOMIC_RELAXED);
}

/* How the kept-layout loop steps over an element (aspen_fields_head_t.kind):
 * a value of fixed size, a string, a sub-document or array (each with a
 * length word), a bool. */
enum { HEAD_FIXED, HEAD_UTF8, HEAD_DOC, HEAD_BOOL };

/* The loop's step for a kind and a head of `words` words. */
#define HEAD_OP(kind, words) ((kind) * 2 + (words) - 1)

/* The table entry for `off` and `klen` as one word (aspen_field_t's bytes):
 * entries differing only in their offset are one OR apart. */
static inline uint64_t
entry_word(uint32_t off, uint32_t klen)
{
   aspen_field_t f = {.off = off, .klen = klen};
   uint64_t w;
   _Static_assert(sizeof f == sizeof w, "aspen_field_t as one word");
   memcpy(&w, &f, sizeof w);
   return w;
}

/* Fills `h` for an element of `type` whose key is the `klen` bytes at
 * `key` - what aspen_fields_scan_layout's kept-layout loop compares and
 * checks, each bound folded into `need` - and false if that loop cannot
 * take it (a key of 15 bytes or more, a type left to the iterator). */
static bool
keep_head(aspen_fields_head_t *h, uint8_t type, const char *key,
          uint32_t klen)
{
   uint32_t hl = 1 + klen + 1; /* the value's offset */
   memset(h, 0, sizeof *h);
   h->entry = entry_word(0, klen);
   h->step = hl;
   h->hlen = (uint8_t) (hl > 16 ? 0 : hl);
   if (hl > 16) {
      return false; /* compared from the kept keys */
   }
   uint8_t w[16] = {0};
   w[0] = type;
   memcpy(w + 1, key, klen);
   if (hl <= 8) {
      h->words = 1;
      h->kw[0] = aspen_bytes_get_le64(w);
      h->kmask = hl == 8 ? ~0ull : (1ull << (8 * hl)) - 1;
   } else {
      h->words = 2;
      h->kw[0] = aspen_bytes_get_le64(w);
      h->kw[1] = aspen_bytes_get_le64(w + hl - 8);
   }
   /* The value's bytes read before any check of its own, and the byte
    * after it that a document's trailing NUL at least must be. */
   uint32_t value;
   int32_t vsize = fixed_value_size(type);
   if (vsize >= 0) {
      h->kind = HEAD_FIXED;
      h->step = hl + (uint32_t) vsize;
      value = (uint32_t) vsize + 1;
   } else if (type == BSON_TYPE_UTF8 || type == BSON_TYPE_DOCUMENT ||
              type == BSON_TYPE_ARRAY) {
      h->kind = type == BSON_TYPE_UTF8 ? HEAD_UTF8 : HEAD_DOC;
      value = 5; /* the length word, then at least one byte */
   } else if (type == BSON_TYPE_BOOL) {
      h->kind = HEAD_BOOL;
      value = 2;
   } else {
      return false; /* the iterator's */
   }
   h->need = hl + value > 8 ? hl + value : 8;
   h->op = (uint8_t) HEAD_OP(h->kind, h->words);
   return true;
}

/* Sets `lay`'s heads' run bounds (aspen_fields_layout_t): from the last
 * fast element back, a run's need is the most its elements need, each
 * from the run's start (a fixed-size element's successors at its size's
 * distance). */
static void
keep_runs(aspen_fields_layout_t *lay)
{
   uint32_t run = 0; /* the need of the run starting after element i */
   for (uint32_t i = lay->fast; i-- > 0;) {
      aspen_fields_head_t *h = &lay->head[i];
      h->rnext = run != 0 ? run : 1; /* at least the document's last byte */
      if (h->kind == HEAD_FIXED && run != 0 && h->step + run > h->need) {
         run = h->step + run;
      } else {
         run = h->need;
      }
   }
   lay->need0 = run;
}

/* Keeps the keys of the table `t` (just scanned) in `lay` under a new id,
 * and tags the table with it; id 0 for both if they do not fit. */
static void
keep_layout(aspen_fields_t *t, aspen_fields_layout_t *lay)
{
   uint32_t used = 0;
   lay->id = 0;
   lay->fast = t->n;
   for (uint32_t i = 0; i < t->n; i++) {
      uint32_t klen = t->f[i].klen;
      if (klen >= sizeof lay->keys - used) {
         return;
      }
      memcpy(lay->keys + used, t->data + t->f[i].off + 1, klen);
      lay->keys[used + klen] = '\0';
      lay->klen[i] = klen;
      lay->koff[i] = used;
      if (!keep_head(&lay->head[i], t->data[t->f[i].off], lay->keys + used,
                     klen) &&
          lay->fast > i) {
         lay->fast = i;
      }
      used += klen + 1;
   }
   lay->n = t->n;
   keep_runs(lay);
   lay->id = aspen_fields_new_layout_id();
   t->layout = lay->id;
}

/* True if the `room` bytes at `k` start with the layout's key n and its
 * NUL, compared byte by byte. */
static inline bool
kept_key_at(const aspen_fields_layout_t *lay, uint32_t n, const uint8_t *k,
            size_t room)
{
   return lay->klen[n] < room &&
          aspen_fields_key_eq(k, lay->keys + lay->koff[n], lay->klen[n] + 1);
}

/* Tags the table `t` (just filled) with `lay`'s id if its keys are the
 * kept ones, else keeps its keys under a new id. */
static void
tag_layout(aspen_fields_t *t, aspen_fields_layout_t *lay)
{
   bool same = lay->id != 0 && lay->n == t->n;
   for (uint32_t i = 0; same && i < t->n; i++) {
      same = t->f[i].klen == lay->klen[i] &&
             aspen_fields_key_eq(t->data + t->f[i].off + 1,
                                 lay->keys + lay->koff[i], lay->klen[i]);
   }
   if (same) {
      t->layout = lay->id;
   } else {
      keep_layout(t, lay);
   }
}

/* The iterator's walk for a document the raw scan leaves to it, its
 * table tagged with its layout when a layout is kept. */
static bool
scan_fallback(aspen_fields_t *t, const bson_t *doc, aspen_fields_layout_t *lay)
{
   bool ok = scan_iter(t, doc);
   if (ok && lay) {
      tag_layout(t, lay);
   }
   return ok;
}

_Static_assert(ASPEN_FIELDS_MAX + 1 < 64, "aspen_fields_find_memo's index");

/* True if the element at `p` starts with the one-word head `e` (enough
 * bytes there: need). */
static inline bool
head1_at(const aspen_fields_head_t *e, const uint8_t *p)
{
   return ((aspen_bytes_get_le64(p) ^ e->kw[0]) & e->kmask) == 0;
}

/* The same for a two-word head: its first and last eight bytes. */
static inline bool
head2_at(const aspen_fields_head_t *e, const uint8_t *p)
{
   return aspen_bytes_get_le64(p) == e->kw[0] &&
          aspen_bytes_get_le64(p + e->hlen - 8) == e->kw[1];
}

/* Where the element of head `e` at `o` ends when its value is a length
 * word and that many bytes counted from `bias` bytes after its start (a
 * string's after the word, a sub-document's from it), 0 to leave it to
 * scan_rest: 1 <= l, then `rnext` bytes (the next run's, or the document's
 * last byte) before the document's end (len - next >= 1 from need; 64
 * bits, no wrap), the value's last byte a NUL - the iterator's checks for
 * a string and more than it makes for a sub-document (scan_rest decides
 * as the iterator does). */
static inline uint32_t
len_value_end(const aspen_fields_head_t *e, const uint8_t *data, uint32_t len,
              uint32_t o, uint32_t bias)
{
   uint32_t next = o + e->step;
   uint32_t l = aspen_bytes_get_le32(data + next);
   next += bias;
   if ((uint64_t) (l - 1) + e->rnext >= len - next ||
       data[next + l - 1] != 0) {
      return 0;
   }
   return next + l;
}

/* Writes the table entry for the element of head `e` at `off`. */
static inline void
put_entry(aspen_field_t *f, const aspen_fields_head_t *e, uint32_t off)
{
   uint64_t w = e->entry | entry_word(off, 0);
   memcpy(f, &w, sizeof w);
}

/* The walk of aspen_fields_scan_layout's document data/len (its frame
 * checked) from the element at `o`, the n entries before it written: each
 * key's end found eight bytes at a time, or compared with the kept key
 * while the keys are still the kept layout's (`same`). The entries are
 * written through a local count (no per-field overflow flag): a document
 * with more fields than the table holds stops the walk there. */
static __attribute__((noinline)) bool
scan_rest(aspen_fields_t *t, const bson_t *doc, aspen_fields_layout_t *lay,
          const uint8_t *data, uint32_t len, uint32_t o, uint32_t n)
{
   aspen_fields_reset(t);
   aspen_field_t *f = t->f;
   bool same = lay && lay->id != 0;
   uint32_t kept = same ? lay->n : 0;
   while (o + 1 < len) {
      if (n == ASPEN_FIELDS_MAX) {
         t->n = n;
         t->overflow = true;
         return false;
      }
      size_t room = len - (o + 1), kl;
      const uint8_t *k = data + o + 1;
      if (same && n < kept && kept_key_at(lay, n, k, room)) {
         kl = lay->klen[n]; /* the kept key and its NUL */
      } else {
         same = false;
         kl = aspen_bsonw_raw_key_len(k, room);
      }
      uint32_t next = kl == room ? 0 : scan_next(data, len, o, kl);
      if (next == 0) {
         return scan_fallback(t, doc, lay);
      }
      f[n].off = o;
      f[n].klen = (uint32_t) kl;
      n++;
      o = next;
   }
   t->n = n;
   if (o + 1 != len) {
      t->overflow = true;
      return false;
   }
   t->data = data;
   t->len = len;
   if (same && n == lay->n) {
      t->layout = lay->id;
   } else if (lay) {
      keep_layout(t, lay);
   }
   return true;
}

bool
aspen_fields_scan_layout(aspen_fields_t *t, const bson_t *doc,
                         aspen_fields_layout_t *lay)
{
   /* A raw walk of the elements, with bson_iter_init's checks of the frame
    * and aspen_bsonw_iter_next's of each element; the iterator takes any
    * element type it does not read. */
   const uint8_t *data = aspen_bsonw_data(doc);
   uint32_t len = doc->len;
   if (len < 5 || aspen_bytes_get_le32(data) != len || data[len - 1] != 0) {
      return scan_iter(t, doc);
   }
   uint32_t o = 4, n = 0;
   if (lay == NULL || lay->id == 0) {
      return scan_rest(t, doc, lay, data, len, o, n);
   }
   /* While the elements' heads are the kept ones: no key to look for, a
    * fixed-size element's end known, a string's or sub-document's from its
    * length word, every bound checked once per run (`need0`, `rnext`: the
    * heads' words and each value's fixed size or length word lie before
    * the document's last byte). A head that differs, too few bytes for a
    * run or a value the iterator's checks would not pass at once (a
    * string's or sub-document's length, a bool's byte) leave the rest to
    * scan_rest, which decides as the iterator does. */
   aspen_field_t *f = t->f;
   const aspen_fields_head_t *e = lay->head, *end = e + lay->fast;
   uint32_t next;
   /* Threaded: each head names its step (HEAD_OP: the value's kind, one or
    * two head words), one indirect jump per element. */
   static const void *const step[] = {
      [HEAD_OP(HEAD_FIXED, 1)] = &&fixed1, [HEAD_OP(HEAD_FIXED, 2)] = &&fixed2,
      [HEAD_OP(HEAD_UTF8, 1)] = &&utf8_1,  [HEAD_OP(HEAD_UTF8, 2)] = &&utf8_2,
      [HEAD_OP(HEAD_DOC, 1)] = &&doc1,     [HEAD_OP(HEAD_DOC, 2)] = &&doc2,
      [HEAD_OP(HEAD_BOOL, 1)] = &&bool1,   [HEAD_OP(HEAD_BOOL, 2)] = &&bool2,
   };
   if (len - o < lay->need0 || e == end) {
      goto out;
   }
   goto *step[e->op];
fixed2:
   if (!head2_at(e, data + o)) {
      goto out;
   }
   goto fixed;
fixed1:
   if (!head1_at(e, data + o)) {
      goto out;
   }
fixed:
   put_entry(f, e, o);
   o += e->step;
   goto advance;
utf8_2:
   if (!head2_at(e, data + o)) {
      goto out;
   }
   goto utf8;
utf8_1:
   if (!head1_at(e, data + o)) {
      goto out;
   }
utf8:
   next = len_value_end(e, data, len, o, 4);
   if (next == 0) {
      goto out;
   }
   put_entry(f, e, o);
   o = next;
   goto advance;
doc2:
   if (!head2_at(e, data + o)) {
      goto out;
   }
   goto doc;
doc1:
   if (!head1_at(e, data + o)) {
      goto out;
   }
doc:
   next = len_value_end(e, data, len, o, 0);
   if (next == 0) {
      goto out;
   }
   put_entry(f, e, o);
   o = next;
   goto advance;
bool2:
   if (!head2_at(e, data + o)) {
      goto out;
   }
   goto boolean;
bool1:
   if (!head1_at(e, data + o)) {
      goto out;
   }
boolean:
   next = o + e->step;
   if (data[next] > 1 || e->rnext > len - next - 1) {
      goto out;
   }
   put_entry(f, e, o);
   o = next + 1;
advance:
   e++;
   f++;
   if (e != end) {
      goto *step[e->op];
   }
   if (lay->fast == lay->n && o + 1 == len) {
      t->data = data;
      t->len = len;
      t->n = lay->n;
      t->overflow = false;
      t->layout = lay->id;
      return true;
   }
out:
   n = (uint32_t) (e - lay->head);
   return scan_rest(t, doc, lay, data, len, o, n);
}

bool
aspen_fields_scan(aspen_fields_t *t, const bson_t *doc)
{
   return aspen_fields_scan_layout(t, doc, NULL);
}
