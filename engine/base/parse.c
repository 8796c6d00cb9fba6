/*
 * parse.c - pipeline errors in ASP's wording, with the position they refer
 * to (base/parse.h).
 */
#include "base/parse.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void
aspen_parse_error(aspen_error_t *err, const aspen_parse_ctx_t *pc,
                  const char *option, const char *fmt, ...)
{
   char reason[ASPEN_ERROR_MSG_MAX];
   va_list ap;
   va_start(ap, fmt);
   vsnprintf(reason, sizeof reason, fmt, ap);
   va_end(ap);
   if (option && *option) {
      aspen_error_set(err, ASPEN_ERR_StreamProcessorInvalidOptions,
                      ASPEN_PARSE_PREFIX "%s (at %s.%s)", reason, pc->path,
                      option);
   } else {
      aspen_error_set(err, ASPEN_ERR_StreamProcessorInvalidOptions,
                      ASPEN_PARSE_PREFIX "%s (at %s)", reason, pc->path);
   }
}

/* "BSON field '<path>.<field>' <what>" at pc's position + `option`. */
static void
field_error(aspen_error_t *err, const aspen_parse_ctx_t *pc,
            const char *option, const char *path, const char *field,
            const char *what)
{
   aspen_parse_error(err, pc, option, "BSON field '%s%s%s' %s",
                     path ? path : "", path ? "." : "", field, what);
}

void
aspen_parse_unknown_field(aspen_error_t *err, const aspen_parse_ctx_t *pc,
                          const char *option, const char *path,
                          const char *field)
{
   field_error(err, pc, option, path, field, "is an unknown field.");
}

void
aspen_parse_missing_field(aspen_error_t *err, const aspen_parse_ctx_t *pc,
                          const char *option, const char *path,
                          const char *field)
{
   field_error(err, pc, option, path, field,
               "is missing but a required field");
}

bool
aspen_parse_no_duplicates(const bson_iter_t *doc, const aspen_parse_ctx_t *pc,
                          const char *path, aspen_error_t *err)
{
   if (!BSON_ITER_HOLDS_DOCUMENT(doc)) {
      return true;
   }
   bson_iter_t a;
   if (!bson_iter_recurse(doc, &a)) {
      return true;
   }
   /* Options objects are small: a quadratic scan beats building a set. */
   while (bson_iter_next(&a)) {
      bson_iter_t b = a;
      while (bson_iter_next(&b)) {
         if (strcmp(bson_iter_key(&a), bson_iter_key(&b)) == 0) {
            aspen_parse_error(err, pc, NULL,
                              "BSON field '%s.%s' is a duplicate field", path,
                              bson_iter_key(&a));
            return false;
         }
      }
   }
   return true;
}

void
aspen_parse_wrap_error(aspen_error_t *err, const aspen_parse_ctx_t *pc)
{
   if (strncmp(err->message, ASPEN_PARSE_PREFIX,
               strlen(ASPEN_PARSE_PREFIX)) == 0) {
      return;
   }
   char reason[ASPEN_ERROR_MSG_MAX];
   snprintf(reason, sizeof reason, "%s", err->message);
   aspen_parse_error(err, pc, NULL, "%s", reason);
}
