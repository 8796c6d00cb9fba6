/*
 * fields.c - a document's top-level field table (fields.h).
 */
#include "lang/fields.h"
#include "bsonw.h"

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

/* Keeps the keys of the table `t` (just scanned) in `lay` under a new id,
 * and tags the table with it; id 0 for both if they do not fit. */
static void
keep_layout(aspen_fields_t *t, aspen_fields_layout_t *lay)
{
   uint32_t used = 0;
   lay->id = 0;
   for (uint32_t i = 0; i < t->n; i++) {
      uint32_t klen = t->f[i].klen;
      if (klen >= sizeof lay->keys - used) {
         return;
      }
      memcpy(lay->keys + used, t->data + t->f[i].off + 1, klen);
      lay->keys[used + klen] = '\0';
      lay->klen[i] = klen;
      lay->koff[i] = used;
      lay->words[i] = 0;
      uint8_t type = t->data[t->f[i].off];
      if (klen + 2 <= 16) {
         uint8_t w[16] = {0};
         w[0] = type;
         memcpy(w + 1, lay->keys + used, klen);
         uint32_t words = (klen + 2 + 7) / 8;
         uint32_t last = klen + 2 - 8 * (words - 1); /* bytes that count */
         lay->kw[i][0] = aspen_bytes_get_le64(w);
         lay->kw[i][1] = aspen_bytes_get_le64(w + 8);
         lay->kmask[i] = last == 8 ? ~0ull : (1ull << (8 * last)) - 1;
         lay->words[i] = (uint8_t) words;
      }
      int32_t vsize = fixed_value_size(type);
      lay->esize[i] = vsize < 0 ? 0 : 1 + klen + 1 + (uint32_t) vsize;
      used += klen + 1;
   }
   lay->n = t->n;
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

/* True if the `avail` bytes at `e` (an element, up to its document's end)
 * start with the head kept for element n - the same type, key and NUL -
 * read as one or two words; false when that cannot be told so (a long
 * key, too few bytes left), for kept_key_at to decide. */
static inline bool
kept_head_at(const aspen_fields_layout_t *lay, uint32_t n, const uint8_t *e,
             size_t avail)
{
   uint32_t words = lay->words[n];
   if (words == 0 || avail < 8 * (size_t) words) {
      return false;
   }
   uint64_t a = aspen_bytes_get_le64(e);
   if (words == 1) {
      return ((a ^ lay->kw[n][0]) & lay->kmask[n]) == 0;
   }
   return a == lay->kw[n][0] &&
          ((aspen_bytes_get_le64(e + 8) ^ lay->kw[n][1]) & lay->kmask[n]) ==
             0;
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

bool
aspen_fields_scan_layout(aspen_fields_t *t, const bson_t *doc,
                         aspen_fields_layout_t *lay)
{
   /* A raw walk of the elements, with bson_iter_init's checks of the frame
    * and aspen_bsonw_iter_next's of each element; the iterator takes any
    * element type it does not read. Each key's end is found eight bytes
    * at a time, or, while the keys are the kept layout's, by comparing
    * the element's head (type, key, NUL) with the kept one as words, the
    * end of a fixed-size element following from it. The entries are
    * written through a local count (no per-field overflow flag): a
    * document with more fields than the table holds stops the walk
    * there. */
   aspen_fields_reset(t);
   const uint8_t *data = bson_get_data(doc);
   uint32_t len = doc->len;
   if (len < 5 || aspen_bytes_get_le32(data) != len || data[len - 1] != 0) {
      return scan_iter(t, doc);
   }
   aspen_field_t *f = t->f;
   uint32_t o = 4, n = 0;
   bool same = lay && lay->id != 0;
   uint32_t kept = same ? lay->n : 0;
   /* While the elements' heads are the kept ones (kept <= the table's
    * size): no key to look for, a fixed-size element's end known. */
   while (n < kept && kept_head_at(lay, n, data + o, len - o)) {
      uint32_t es = lay->esize[n];
      uint32_t next = es == 0 ? scan_next(data, len, o, lay->klen[n])
                      : es < len - o ? o + es
                                     : 0;
      if (next == 0) {
         return scan_fallback(t, doc, lay);
      }
      f[n].off = o;
      f[n].klen = lay->klen[n];
      n++;
      o = next;
   }
   /* Then the rest (all of it without a kept layout), each key's end
    * found, or compared with the kept key while they still match. */
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
aspen_fields_scan(aspen_fields_t *t, const bson_t *doc)
{
   return aspen_fields_scan_layout(t, doc, NULL);
}
