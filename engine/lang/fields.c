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

bool
aspen_fields_scan(aspen_fields_t *t, const bson_t *doc)
{
   /* A raw walk of the elements, each key's end found byte by byte (keys
    * are short), with bson_iter_init's checks of the frame and
    * aspen_bsonw_iter_next's of each element; the iterator takes any
    * element type it does not read. */
   aspen_fields_reset(t);
   const uint8_t *data = bson_get_data(doc);
   uint32_t len = doc->len;
   if (len < 5 || aspen_bytes_get_le32(data) != len || data[len - 1] != 0) {
      return scan_iter(t, doc);
   }
   uint32_t o = 4;
   while (o + 1 < len) {
      const uint8_t *k = data + o + 1;
      size_t room = len - (o + 1);
      size_t kl = aspen_bsonw_raw_key_len(k, room);
      uint32_t next = kl == room ? 0 : scan_next(data, len, o, kl);
      if (next == 0) {
         return scan_iter(t, doc);
      }
      aspen_fields_add(t, o, kl);
      o = next;
   }
   if (t->overflow || o + 1 != len) {
      t->overflow = true;
      return false;
   }
   aspen_fields_bind(t, doc);
   return true;
}
