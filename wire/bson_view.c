/*
 * bson_view.c - reading nested BSON without copying it: a static bson_t
 * over the sub-document or array an iterator is on, a field's string or
 * number.
 */
#include "wire_int.h"

bool
aspen_bson_view(const bson_iter_t *it, bson_t *out)
{
   uint32_t len;
   const uint8_t *data;
   if (BSON_ITER_HOLDS_DOCUMENT(it)) {
      bson_iter_document(it, &len, &data);
   } else if (BSON_ITER_HOLDS_ARRAY(it)) {
      bson_iter_array(it, &len, &data);
   } else {
      return false;
   }
   return bson_init_static(out, data, len);
}

const char *
aspen_bson_utf8(const bson_t *doc, const char *key)
{
   bson_iter_t it;
   if (bson_iter_init_find(&it, doc, key) && BSON_ITER_HOLDS_UTF8(&it)) {
      return bson_iter_utf8(&it, NULL);
   }
   return NULL;
}

int64_t
aspen_bson_int64(const bson_t *doc, const char *key, int64_t dflt)
{
   bson_iter_t it;
   if (bson_iter_init_find(&it, doc, key) && BSON_ITER_HOLDS_NUMBER(&it)) {
      return bson_iter_as_int64(&it);
   }
   return dflt;
}
