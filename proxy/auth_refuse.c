/*
 * auth_refuse.c - mongod's refusal of a command a user may not run: "not
 * authorized on <db> to execute command { ... }", the command written as
 * mongod's BSONObj::toString writes it, cut to fit the message (see
 * aspen__auth_refuse_command in auth.h). The privilege checks
 * (principal.c) and the cursor checks (cmd_auth.c) refuse with it.
 */
#include "auth.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* A bounded text buffer: what does not fit is cut, and ends in "...". It
 * stays valid UTF-8: a cut never splits a character. */
typedef struct {
   char *s;
   size_t size, len;
   bool cut;
} text_t;

static void text_put(text_t *t, const char *fmt, ...)
   __attribute__((format(printf, 2, 3)));

static void
text_put(text_t *t, const char *fmt, ...)
{
   if (t->cut) {
      return;
   }
   va_list ap;
   va_start(ap, fmt);
   int n = vsnprintf(t->s + t->len, t->size - t->len, fmt, ap);
   va_end(ap);
   if (n >= 0 && (size_t) n < t->size - t->len) {
      t->len += (size_t) n;
      return;
   }
   /* Full: end with "..." at a character boundary. */
   t->cut = true;
   size_t end = t->size > 4 ? t->size - 4 : 0;
   while (end > 0 && ((unsigned char) t->s[end] & 0xC0) == 0x80) {
      end--;
   }
   snprintf(t->s + end, t->size - end, "...");
   t->len = strlen(t->s);
}

/* Text from the client: UTF-8 as it is when it is valid UTF-8, escaped
 * otherwise, control characters (and, `quoted`, '"' and '\\') escaped. */
static void
text_bytes(text_t *t, const char *v, size_t len, bool quoted)
{
   bool utf8 = bson_utf8_validate(v, len, false);
   for (size_t i = 0; i < len && !t->cut; i++) {
      unsigned char c = (unsigned char) v[i];
      if (quoted && (c == '"' || c == '\\')) {
         text_put(t, "\\%c", c);
      } else if (c < 0x20 || c == 0x7f || (c >= 0x80 && !utf8)) {
         text_put(t, "\\x%02x", c);
      } else {
         text_put(t, "%c", c);
      }
   }
}

static void
text_string(text_t *t, const char *v, uint32_t len)
{
   text_put(t, "\"");
   text_bytes(t, v, len, true);
   text_put(t, "\"");
}

static void text_doc(text_t *t, bson_iter_t *it, bool array, int depth);

/* One value as mongod's BSONObj::toString writes it. */
static void
text_value(text_t *t, bson_iter_t *it, int depth)
{
   bson_iter_t sub;
   uint32_t len;
   switch (bson_iter_type(it)) {
   case BSON_TYPE_DOUBLE: {
      double d = bson_iter_double(it);
      char num[64];
      snprintf(num, sizeof num, "%.16g", d);
      text_put(t, "%s%s", num, strpbrk(num, ".eEn") ? "" : ".0");
      break;
   }
   case BSON_TYPE_UTF8: {
      const char *v = bson_iter_utf8(it, &len);
      text_string(t, v, len);
      break;
   }
   case BSON_TYPE_DOCUMENT:
   case BSON_TYPE_ARRAY:
      if (bson_iter_recurse(it, &sub)) {
         text_doc(t, &sub, BSON_ITER_HOLDS_ARRAY(it), depth + 1);
      }
      break;
   case BSON_TYPE_BINARY: {
      bson_subtype_t st;
      const uint8_t *b;
      bson_iter_binary(it, &st, &len, &b);
      if ((st == BSON_SUBTYPE_UUID || st == BSON_SUBTYPE_UUID_DEPRECATED) &&
          len == 16) {
         text_put(t,
                  "UUID(\"%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
                  "%02x%02x%02x%02x%02x%02x\")",
                  b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9],
                  b[10], b[11], b[12], b[13], b[14], b[15]);
      } else {
         text_put(t, "BinData(%d, ", (int) st);
         for (uint32_t i = 0; i < len && !t->cut; i++) {
            text_put(t, "%02X", b[i]);
         }
         text_put(t, ")");
      }
      break;
   }
   case BSON_TYPE_OID: {
      char hex[25];
      bson_oid_to_string(bson_iter_oid(it), hex);
      text_put(t, "ObjectId('%s')", hex);
      break;
   }
   case BSON_TYPE_BOOL:
      text_put(t, "%s", bson_iter_bool(it) ? "true" : "false");
      break;
   case BSON_TYPE_DATE_TIME:
      text_put(t, "new Date(%" PRId64 ")", bson_iter_date_time(it));
      break;
   case BSON_TYPE_NULL:
      text_put(t, "null");
      break;
   case BSON_TYPE_UNDEFINED:
      text_put(t, "undefined");
      break;
   case BSON_TYPE_INT32:
      text_put(t, "%" PRId32, bson_iter_int32(it));
      break;
   case BSON_TYPE_INT64:
      text_put(t, "%" PRId64, bson_iter_int64(it));
      break;
   case BSON_TYPE_TIMESTAMP: {
      uint32_t ts, inc;
      bson_iter_timestamp(it, &ts, &inc);
      text_put(t, "Timestamp(%" PRIu32 ", %" PRIu32 ")", ts, inc);
      break;
   }
   case BSON_TYPE_REGEX: {
      const char *opts;
      const char *re = bson_iter_regex(it, &opts);
      text_put(t, "/");
      text_bytes(t, re, strlen(re), false);
      text_put(t, "/");
      text_bytes(t, opts, strlen(opts), false);
      break;
   }
   case BSON_TYPE_DECIMAL128: {
      bson_decimal128_t dec;
      char str[BSON_DECIMAL128_STRING];
      bson_iter_decimal128(it, &dec);
      bson_decimal128_to_string(&dec, str);
      text_put(t, "%s", str);
      break;
   }
   case BSON_TYPE_MINKEY:
      text_put(t, "MinKey");
      break;
   case BSON_TYPE_MAXKEY:
      text_put(t, "MaxKey");
      break;
   default:
      text_put(t, "?");
      break;
   }
}

static void
text_doc(text_t *t, bson_iter_t *it, bool array, int depth)
{
   bool any = false;
   text_put(t, "%s", array ? "[" : "{");
   while (!t->cut && bson_iter_next(it)) {
      text_put(t, "%s", any ? ", " : " ");
      any = true;
      if (!array) {
         text_bytes(t, bson_iter_key(it), bson_iter_key_len(it), false);
         text_put(t, ": ");
      }
      if (depth > 100) {
         text_put(t, "...");
      } else if (depth == 0 && strcmp(bson_iter_key(it), "pwd") == 0) {
         text_put(t, "\"xxx\""); /* mongod's snip of passwords */
      } else {
         text_value(t, it, depth);
      }
   }
   text_put(t, "%s", any ? (array ? " ]" : " }") : (array ? "]" : "}"));
}

/* mongod's refusal of a command: "not authorized on <db> to execute
 * command { ... }" (the command as BSONObj::toString writes it, cut to
 * fit the message). */
void
aspen__auth_refuse_command(const bson_t *cmd, const char *db,
                           aspen_error_t *err)
{
   char msg[ASPEN_ERROR_MSG_MAX];
   text_t t = {msg, sizeof msg, 0, false};
   bson_iter_t it;
   text_put(&t, "not authorized on ");
   text_bytes(&t, db, strlen(db), false);
   text_put(&t, " to execute command ");
   if (bson_iter_init(&it, cmd)) {
      text_doc(&t, &it, false, 0);
   }
   aspen_error_set(err, ASPEN_ERR_Unauthorized, "%s", msg);
}
