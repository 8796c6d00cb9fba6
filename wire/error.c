/*
 * error.c - MongoDB-style errors: the code -> codeName table (from the
 * X-macro in wire.h), setters that never allocate, converters from the
 * dependencies' error shapes, and the {ok:0, errmsg, code, codeName} reply.
 */
#include "wire.h"

#include <stdio.h>
#include <string.h>

const char *
aspen_error_code_name(int32_t code)
{
   switch (code) {
#define ASPEN_ERROR_CASE(c, name)                                              \
   case c:                                                                     \
      return #name;
      ASPEN_ERROR_CODES(ASPEN_ERROR_CASE)
#undef ASPEN_ERROR_CASE
   default:
      break;
   }
   if (code < 10000) { /* a named error code aspen does not know */
      return "UnknownError";
   }
   static __thread char location[24];
   snprintf(location, sizeof location, "Location%d", (int) code);
   return location;
}

void
aspen_error_set(aspen_error_t *err, int32_t code, const char *fmt, ...)
{
   if (!err) {
      return;
   }
   va_list ap;
   err->code = code;
   va_start(ap, fmt);
   vsnprintf(err->message, sizeof err->message, fmt, ap);
   va_end(ap);
}

void
aspen_error_clear(aspen_error_t *err)
{
   if (err) {
      err->code = 0;
      err->message[0] = '\0';
   }
}

void
aspen_error_from_bson_error(aspen_error_t *err, const bson_error_t *berr)
{
   /* libbson/mongoc errors carry driver-side codes; server errors in the
    * MONGOC_ERROR_SERVER domain (11) carry the server's own code. */
   int32_t code = ASPEN_ERR_InternalError;
   if (berr->domain == 11 /* MONGOC_ERROR_SERVER */ ||
       berr->domain == 18 /* MONGOC_ERROR_WRITE_CONCERN */) {
      code = (int32_t) berr->code;
   }
   aspen_error_set(err, code, "%s", berr->message);
}

void
aspen_error_append_reply(bson_t *doc, const aspen_error_t *err)
{
   BSON_APPEND_DOUBLE(doc, "ok", 0.0);
   BSON_APPEND_UTF8(doc, "errmsg", err->message);
   BSON_APPEND_INT32(doc, "code", err->code);
   BSON_APPEND_UTF8(doc, "codeName", aspen_error_code_name(err->code));
}
