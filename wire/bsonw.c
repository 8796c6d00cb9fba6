/*
 * bsonw.c - the BSON writer's buffer and the values it encodes itself (see
 * bsonw.h). The common scalar types, strings and sub-documents are written
 * here in libbson's layout; the rare ones (binary, regex, code, symbol,
 * DBPointer, timestamp) go through libbson's own appender into a small
 * scratch document whose element bytes are then copied, so every type
 * comes out exactly as bson_append_value writes it.
 */
#include "bsonw.h"
#include "bytes.h"
#include "wire.h"

#include <stdlib.h>

void
aspen_bsonw_init(aspen_bsonw_t *w)
{
   w->data = NULL;
   w->len = 0;
   w->cap = 0;
   w->borrowed = false;
}

void
aspen_bsonw_init_static(aspen_bsonw_t *w, uint8_t *buf, size_t cap)
{
   w->data = buf;
   w->len = 0;
   w->cap = cap;
   w->borrowed = true;
}

void
aspen_bsonw_cleanup(aspen_bsonw_t *w)
{
   if (!w->borrowed) {
      free(w->data);
   }
   aspen_bsonw_init(w);
}

void
aspen__bsonw_grow(aspen_bsonw_t *w, size_t n)
{
   size_t cap = w->cap ? w->cap : 256;
   while (cap - w->len < n) {
      cap *= 2;
   }
   if (!w->borrowed) {
      w->data = aspen_xrealloc(w->data, cap);
   } else {
      uint8_t *data = aspen_xmalloc(cap);
      memcpy(data, w->data, w->len);
      w->data = data;
      w->borrowed = false;
   }
   w->cap = cap;
}

bool
aspen__bsonw_finish_slow(aspen_bsonw_t *w, bson_t *out)
{
   *aspen_bsonw_reserve(w, 1) = 0;
   w->len++;
   if (w->len > (size_t) INT32_MAX) {
      bson_init(out);
      return false;
   }
   aspen_bytes_put_le32(w->data, (uint32_t) w->len);
   return bson_init_static(out, w->data, w->len);
}

static inline void
put_raw(aspen_bsonw_t *w, const void *p, size_t n)
{
   memcpy(aspen_bsonw_reserve(w, n), p, n);
   w->len += n;
}

static inline void
put_le32(aspen_bsonw_t *w, uint32_t v)
{
   aspen_bytes_put_le32(aspen_bsonw_reserve(w, 4), v);
   w->len += 4;
}

static inline void
put_le64(aspen_bsonw_t *w, uint64_t v)
{
   uint8_t *p = aspen_bsonw_reserve(w, 8);
   aspen_bytes_put_le32(p, (uint32_t) v);
   aspen_bytes_put_le32(p + 4, (uint32_t) (v >> 32));
   w->len += 8;
}

/* A sub-document's bytes, if they are a well-formed frame (what
 * bson_init_static accepts; libbson appends nothing otherwise). */
static bool
doc_frame_ok(const uint8_t *data, uint32_t len)
{
   return data && len >= 5 && aspen_bytes_get_le32(data) == len &&
          data[len - 1] == 0;
}

void
aspen__bsonw_value_any(aspen_bsonw_t *w, const char *key, size_t key_len,
                  const bson_value_t *val)
{
   const bson_value_t *v = val;
   switch (v->value_type) {
   case BSON_TYPE_EOD:
      return;
   case BSON_TYPE_DOUBLE: {
      uint64_t bits;
      memcpy(&bits, &v->value.v_double, 8);
      aspen_bsonw_key(w, v->value_type, key, key_len);
      put_le64(w, bits);
      return;
   }
   case BSON_TYPE_UTF8:
      if (v->value.v_utf8.len >= (uint32_t) INT32_MAX) {
         break; /* libbson's own refusal */
      }
      aspen_bsonw_key(w, v->value_type, key, key_len);
      put_le32(w, v->value.v_utf8.len + 1);
      put_raw(w, v->value.v_utf8.str, v->value.v_utf8.len);
      *aspen_bsonw_reserve(w, 1) = 0;
      w->len++;
      return;
   case BSON_TYPE_DOCUMENT:
   case BSON_TYPE_ARRAY:
      if (!doc_frame_ok(v->value.v_doc.data, v->value.v_doc.data_len)) {
         return;
      }
      aspen_bsonw_key(w, v->value_type, key, key_len);
      put_raw(w, v->value.v_doc.data, v->value.v_doc.data_len);
      return;
   case BSON_TYPE_UNDEFINED:
   case BSON_TYPE_NULL:
   case BSON_TYPE_MAXKEY:
   case BSON_TYPE_MINKEY:
      aspen_bsonw_key(w, v->value_type, key, key_len);
      return;
   case BSON_TYPE_OID:
      aspen_bsonw_key(w, v->value_type, key, key_len);
      put_raw(w, v->value.v_oid.bytes, 12);
      return;
   case BSON_TYPE_BOOL:
      aspen_bsonw_key(w, v->value_type, key, key_len);
      *aspen_bsonw_reserve(w, 1) = v->value.v_bool ? 1 : 0;
      w->len++;
      return;
   case BSON_TYPE_DATE_TIME:
      aspen_bsonw_key(w, v->value_type, key, key_len);
      put_le64(w, (uint64_t) v->value.v_datetime);
      return;
   case BSON_TYPE_INT32:
      aspen_bsonw_key(w, v->value_type, key, key_len);
      put_le32(w, (uint32_t) v->value.v_int32);
      return;
   case BSON_TYPE_INT64:
      aspen_bsonw_key(w, v->value_type, key, key_len);
      put_le64(w, (uint64_t) v->value.v_int64);
      return;
   case BSON_TYPE_DECIMAL128:
      aspen_bsonw_key(w, v->value_type, key, key_len);
      put_le64(w, v->value.v_decimal128.low);
      put_le64(w, v->value.v_decimal128.high);
      return;
   default:
      break;
   }
   /* The rare types: libbson encodes, its element is copied. */
   bson_t tmp = BSON_INITIALIZER;
   if (bson_append_value(&tmp, key, (int) key_len, v) && tmp.len > 5) {
      put_raw(w, bson_get_data(&tmp) + 4, tmp.len - 5);
   }
   bson_destroy(&tmp);
}

/* Whether the well-formed document data[0 .. len) has no top-level key
 * key[0 .. key_len): false too for anything this walk does not know for
 * sure (types other than the common ones, bounds or framing that libbson's
 * iterator could refuse). */
static bool
lacks_key(const uint8_t *data, uint32_t len, const char *key, size_t key_len)
{
   if (len < 5 || aspen_bytes_get_le32(data) != len || data[len - 1] != 0) {
      return false;
   }
   const uint8_t *p = data + 4;
   const uint8_t *end = data + len - 1; /* the final NUL */
   while (p < end) {
      uint8_t type = *p++;
      const uint8_t *k = p;
      while (*p) { /* stops at the final NUL at the latest */
         p++;
      }
      if (p == end ||
          ((size_t) (p - k) == key_len && memcmp(k, key, key_len) == 0)) {
         return false;
      }
      p++;
      size_t left = (size_t) (end - p), n;
      uint32_t l;
      switch (type) {
      case BSON_TYPE_DOUBLE:
      case BSON_TYPE_DATE_TIME:
      case BSON_TYPE_INT64:
      case BSON_TYPE_TIMESTAMP:
         n = 8;
         break;
      case BSON_TYPE_INT32:
         n = 4;
         break;
      case BSON_TYPE_OID:
         n = 12;
         break;
      case BSON_TYPE_NULL:
         n = 0;
         break;
      case BSON_TYPE_BOOL:
         if (left < 1 || *p > 1) {
            return false;
         }
         n = 1;
         break;
      case BSON_TYPE_UTF8:
         if (left < 4) {
            return false;
         }
         l = aspen_bytes_get_le32(p);
         if (l == 0 || l > left - 4 || p[4 + l - 1] != 0) {
            return false;
         }
         n = 4 + (size_t) l;
         break;
      case BSON_TYPE_DOCUMENT:
      case BSON_TYPE_ARRAY:
         if (left < 5) {
            return false;
         }
         l = aspen_bytes_get_le32(p);
         if (l < 5 || l > left || p[l - 1] != 0) {
            return false;
         }
         n = l;
         break;
      default:
         return false;
      }
      if (n > left) {
         return false;
      }
      p += n;
   }
   return true;
}

void
aspen_bsonw_copy_without(aspen_bsonw_t *w, const bson_t *doc,
                         const char *key, size_t key_len)
{
   const uint8_t *data = bson_get_data(doc);
   if (lacks_key(data, doc->len, key, key_len)) {
      put_raw(w, data + 4, doc->len - 5);
      return;
   }
   bson_iter_t it;
   if (bson_iter_init(&it, doc)) {
      while (aspen_bsonw_iter_next(&it)) {
         if (aspen_bsonw_key_len(&it) != key_len ||
             memcmp(it.raw + it.key, key, key_len) != 0) {
            aspen_bsonw_element(w, &it);
         }
      }
   }
}
