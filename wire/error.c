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

size_t
aspen_utf8_char_len(const uint8_t *s, size_t len)
{
   if (len == 0) {
      return 0;
   }
   uint8_t c = s[0];
   size_t n;
   uint8_t lo = 0x80, hi = 0xBF; /* the allowed range of the 2nd byte */
   if (c < 0x80) {
      return 1;
   } else if (c >= 0xC2 && c <= 0xDF) {
      n = 2;
   } else if (c >= 0xE0 && c <= 0xEF) {
      n = 3;
      if (c == 0xE0) {
         lo = 0xA0; /* overlong below U+0800 */
      } else if (c == 0xED) {
         hi = 0x9F; /* surrogates U+D800..U+DFFF */
      }
   } else if (c >= 0xF0 && c <= 0xF4) {
      n = 4;
      if (c == 0xF0) {
         lo = 0x90; /* overlong below U+10000 */
      } else if (c == 0xF4) {
         hi = 0x8F; /* above U+10FFFF */
      }
   } else {
      return 0; /* a continuation byte, C0/C1 (overlong) or F5..FF */
   }
   if (len < n || s[1] < lo || s[1] > hi) {
      return 0;
   }
   for (size_t i = 2; i < n; i++) {
      if (s[i] < 0x80 || s[i] > 0xBF) {
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
   size_t left = strlen(s);
   while (*p) {
      /* The NUL ends a sequence too: it is no continuation byte. */
      size_t n = aspen_utf8_char_len(p, left);
      left -= n ? n : 1;
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
