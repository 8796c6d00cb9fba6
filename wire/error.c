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

/* The length of the well-formed UTF-8 sequence at `p` (RFC 3629's table),
 * or 0 when there is none. */
static size_t
utf8_seq_len(const unsigned char *p)
{
   unsigned char c = p[0];
   if (c < 0x80) {
      return 1;
   }
   size_t n;
   unsigned char lo = 0x80, hi = 0xBF; /* the second byte's range */
   if (c >= 0xC2 && c <= 0xDF) {
      n = 2;
   } else if (c >= 0xE0 && c <= 0xEF) {
      n = 3;
      lo = c == 0xE0 ? 0xA0 : 0x80; /* no overlong forms */
      hi = c == 0xED ? 0x9F : 0xBF; /* no surrogates */
   } else if (c >= 0xF0 && c <= 0xF4) {
      n = 4;
      lo = c == 0xF0 ? 0x90 : 0x80;
      hi = c == 0xF4 ? 0x8F : 0xBF; /* nothing past U+10FFFF */
   } else {
      return 0;
   }
   if (p[1] < lo || p[1] > hi) {
      return 0;
   }
   for (size_t i = 2; i < n; i++) {
      if (p[i] < 0x80 || p[i] > 0xBF) { /* the NUL ends it too */
         return 0;
      }
   }
   return n;
}

bool
aspen_utf8_scrub(char *s)
{
   bool changed = false;
   unsigned char *p = (unsigned char *) s;
   while (*p) {
      size_t n = utf8_seq_len(p);
      if (n == 0) {
         *p++ = '?';
         changed = true;
      } else {
         p += n;
      }
   }
   return changed;
}

void
aspen_error_append_reply(bson_t *doc, const aspen_error_t *err)
{
   char msg[ASPEN_ERROR_MSG_MAX];
   snprintf(msg, sizeof msg, "%s", err->message);
   aspen_utf8_scrub(msg);
   BSON_APPEND_DOUBLE(doc, "ok", 0.0);
   BSON_APPEND_UTF8(doc, "errmsg", msg);
   BSON_APPEND_INT32(doc, "code", err->code);
   BSON_APPEND_UTF8(doc, "codeName", aspen_error_code_name(err->code));
}
