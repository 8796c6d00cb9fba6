/*
 * vars.c - variable substitution: the values of `let` variables written
 * into a pipeline as literals (lang/vars.h). $lookup's `let` and $merge's
 * whenMatched pipeline use it to send a pipeline to a server without the
 * aggregate command's own `let`.
 */
#include "lang/vars.h"

#include <string.h>

void
aspen_vars_substitute(const bson_t *in, bson_t *out, const char *const *names,
                      const aspen_value_t *values, size_t n)
{
   bson_iter_t it;
   bson_iter_init(&it, in);
   while (bson_iter_next(&it)) {
      const char *key = bson_iter_key(&it);
      if (strcmp(key, "$literal") == 0) { /* its argument is never read */
         bson_append_iter(out, key, -1, &it);
         continue;
      }
      if (BSON_ITER_HOLDS_UTF8(&it) &&
          strncmp(bson_iter_utf8(&it, NULL), "$$", 2) == 0) {
         const char *ref = bson_iter_utf8(&it, NULL) + 2;
         size_t nlen = strcspn(ref, ".");
         size_t i;
         for (i = 0; i < n; i++) {
            if (strlen(names[i]) == nlen && strncmp(names[i], ref, nlen) == 0) {
               break;
            }
         }
         if (i < n) {
            aspen_value_t v = ASPEN_VALUE_MISSING;
            bool owned = false;
            if (ref[nlen] != '.') {
               v = values[i];
            } else if (values[i].v.value_type == BSON_TYPE_DOCUMENT) {
               bson_t sub;
               (void) bson_init_static(&sub, values[i].v.value.v_doc.data,
                                       values[i].v.value.v_doc.data_len);
               v = aspen_expr_get_path(&sub, ref + nlen + 1);
               owned = true;
            }
            if (aspen_value_is_missing(&v)) {
               BSON_APPEND_UTF8(out, key, "$$REMOVE");
            } else {
               bson_t lit;
               bson_append_document_begin(out, key, -1, &lit);
               aspen_value_append(&lit, "$literal", 8, &v);
               bson_append_document_end(out, &lit);
            }
            if (owned) {
               aspen_value_destroy(&v);
            }
            continue;
         }
      }
      if (BSON_ITER_HOLDS_DOCUMENT(&it) || BSON_ITER_HOLDS_ARRAY(&it)) {
         uint32_t len;
         const uint8_t *data;
         bson_t sub, outsub;
         bool arr = BSON_ITER_HOLDS_ARRAY(&it);
         if (arr) {
            bson_iter_array(&it, &len, &data);
            bson_append_array_begin(out, key, -1, &outsub);
         } else {
            bson_iter_document(&it, &len, &data);
            bson_append_document_begin(out, key, -1, &outsub);
         }
         (void) bson_init_static(&sub, data, len);
         aspen_vars_substitute(&sub, &outsub, names, values, n);
         if (arr) {
            bson_append_array_end(out, &outsub);
         } else {
            bson_append_document_end(out, &outsub);
         }
         continue;
      }
      bson_append_iter(out, key, -1, &it);
   }
}
