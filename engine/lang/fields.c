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

bool
aspen_fields_scan(aspen_fields_t *t, const bson_t *doc)
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
