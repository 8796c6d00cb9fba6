/*
 * expr_convert.c - type operators: $type, $isNumber, $convert and its
 * shortcuts ($toBool $toDate $toDecimal $toDouble $toInt $toLong
 * $toObjectId $toString). The conversion matrix is mongod's; on top of it,
 * as Atlas Stream Processing documents for Kafka headers, $convert turns
 * binData into int/long/double (byteOrder "little" or "big") or string
 * (format base64, base64url, hex, uuid, utf8) and back. A failed conversion
 * is a ConversionFailure (241), which `onError` catches.
 */
#include "lang/expr_args.h"
#include "bytes.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

/* $type and $isNumber take any value. */
static const aspen__args_t any1_args = {.n = 1};

static ASPEN__DECL_COMPUTE(compute_type)
{
   (void) e;
   (void) st;
   const char *name = aspen_value_type_name(&v[0]);
   *out = aspen__value_str_view(name, (uint32_t) strlen(name));
   return true;
}

ASPEN__ARGS_EVAL(eval_type, any1_args, compute_type)

static ASPEN__DECL_COMPUTE(compute_is_number)
{
   (void) e;
   (void) st;
   *out = aspen_value_bool(aspen__is_num(&v[0]));
   return true;
}

ASPEN__ARGS_EVAL(eval_is_number, any1_args, compute_is_number)

/* ------------------------------------------------------------------------ */
/* Type names and conversion options                                         */
/* ------------------------------------------------------------------------ */

static const struct {
   const char *name;
   bson_type_t type;
} type_names[] = {
   {"double", BSON_TYPE_DOUBLE},
   {"string", BSON_TYPE_UTF8},
   {"object", BSON_TYPE_DOCUMENT},
   {"array", BSON_TYPE_ARRAY},
   {"binData", BSON_TYPE_BINARY},
   {"undefined", BSON_TYPE_UNDEFINED},
   {"objectId", BSON_TYPE_OID},
   {"bool", BSON_TYPE_BOOL},
   {"date", BSON_TYPE_DATE_TIME},
   {"null", BSON_TYPE_NULL},
   {"regex", BSON_TYPE_REGEX},
   {"dbPointer", BSON_TYPE_DBPOINTER},
   {"javascript", BSON_TYPE_CODE},
   {"symbol", BSON_TYPE_SYMBOL},
   {"javascriptWithScope", BSON_TYPE_CODEWSCOPE},
   {"int", BSON_TYPE_INT32},
   {"timestamp", BSON_TYPE_TIMESTAMP},
   {"long", BSON_TYPE_INT64},
   {"decimal", BSON_TYPE_DECIMAL128},
   {"minKey", BSON_TYPE_MINKEY},
   {"maxKey", BSON_TYPE_MAXKEY},
   {"missing", BSON_TYPE_EOD},
};

static const char *
name_of_type(bson_type_t t)
{
   for (size_t i = 0; i < sizeof type_names / sizeof *type_names; i++) {
      if (type_names[i].type == t) {
         return type_names[i].name;
      }
   }
   return "unknown";
}

enum {
   FMT_NONE = 0,
   FMT_BASE64,
   FMT_BASE64URL,
   FMT_HEX,
   FMT_UUID,
   FMT_UTF8,
   FMT_AUTO,
};

typedef struct {
   bson_type_t to;
   int subtype; /* for binData targets */
   int format;  /* FMT_* */
   bool big_endian;
} conv_opts_t;

/* Resolves `to` (a type name, a type number, or {type, subtype}). */
static bool
target_type(aspen__eval_t *st, const aspen_value_t *to, conv_opts_t *o)
{
   const aspen_value_t *t = to;
   aspen_value_t type_v = ASPEN_VALUE_MISSING, sub_v = ASPEN_VALUE_MISSING;
   o->subtype = 0;
   if (aspen__is_doc(to)) {
      bson_iter_t it;
      aspen__array_iter(to, &it);
      while (bson_iter_next(&it)) {
         const char *k = bson_iter_key(&it);
         if (strcmp(k, "type") == 0) {
            type_v = aspen_value_borrow(&it);
         } else if (strcmp(k, "subtype") == 0) {
            sub_v = aspen_value_borrow(&it);
         } else {
            return aspen__fail(st, ASPEN_ERR_FailedToParse,
                               "$convert's 'to' document found an unknown "
                               "field: %s",
                               k);
         }
      }
      if (aspen_value_is_missing(&type_v)) {
         return aspen__fail(st, ASPEN_ERR_FailedToParse,
                            "$convert's 'to' document requires a 'type' field");
      }
      if (!aspen_value_is_missing(&sub_v)) {
         int32_t sub;
         if (!aspen__is_num(&sub_v) || !aspen__num_is_int32(&sub_v, &sub) ||
             sub < 0 || sub > 255) {
            return aspen__fail(st, ASPEN_ERR_FailedToParse,
                               "In $convert, 'subtype' must be an integer "
                               "between 0 and 255");
         }
         o->subtype = sub;
      }
      t = &type_v;
   }
   if (aspen__is_str(t)) {
      for (size_t i = 0; i < sizeof type_names / sizeof *type_names; i++) {
         if (strcmp(type_names[i].name, t->v.value.v_utf8.str) == 0) {
            o->to = type_names[i].type;
            return true;
         }
      }
      return aspen__fail(st, ASPEN_ERR_BadValue, "Unknown type name: %s",
                         t->v.value.v_utf8.str);
   }
   if (aspen__is_num(t)) {
      int32_t code;
      if (!aspen__num_is_int32(t, &code)) {
         return aspen__fail(st, ASPEN_ERR_FailedToParse,
                            "In $convert, numeric 'to' argument is not an "
                            "integer");
      }
      bool valid = (code >= 1 && code <= 19) || code == -1 || code == 127;
      if (!valid) {
         return aspen__fail(st, ASPEN_ERR_FailedToParse,
                            "In $convert, numeric value for 'to' does not "
                            "correspond to a BSON type: %d",
                            code);
      }
      o->to = code == -1 ? BSON_TYPE_MINKEY : (bson_type_t) code;
      return true;
   }
   return aspen__fail(st, ASPEN_ERR_FailedToParse,
                      "$convert's 'to' argument must be a string or number, "
                      "but is %s",
                      aspen_value_type_name(t));
}

/* ------------------------------------------------------------------------ */
/* Conversions                                                               */
/* ------------------------------------------------------------------------ */

static bool
conv_fail_unsupported(aspen_error_t *err, bson_type_t from, bson_type_t to)
{
   aspen_error_set(err, ASPEN_ERR_ConversionFailure,
                   "Unsupported conversion from %s to %s in $convert with no "
                   "onError value",
                   name_of_type(from), name_of_type(to));
   return false;
}

static bool
double_finite(aspen_error_t *err, double d)
{
   if (isnan(d)) {
      aspen_error_set(err, ASPEN_ERR_ConversionFailure,
                      "Attempt to convert NaN value to integer type in "
                      "$convert with no onError value");
      return false;
   }
   if (isinf(d)) {
      aspen_error_set(err, ASPEN_ERR_ConversionFailure,
                      "Attempt to convert infinity value to integer type in "
                      "$convert with no onError value");
      return false;
   }
   return true;
}

static bool
overflow_fail(aspen_error_t *err, const aspen_value_t *in)
{
   char num[64] = "";
   if (aspen__vt(in) != BSON_TYPE_INT64) {
      aspen__num_to_text(in, num, sizeof num);
   }
   aspen_error_set(err, ASPEN_ERR_ConversionFailure,
                   "Conversion would overflow target type in $convert with no "
                   "onError value: %s",
                   num);
   return false;
}

/* double/decimal -> int64 (truncating), with mongod's checks. */
static bool
to_int64_checked(const aspen_value_t *in, int64_t *out, aspen_error_t *err)
{
   switch (aspen__vt(in)) {
   case BSON_TYPE_INT32:
      *out = in->v.value.v_int32;
      return true;
   case BSON_TYPE_INT64:
      *out = in->v.value.v_int64;
      return true;
   case BSON_TYPE_DOUBLE: {
      double d = in->v.value.v_double;
      if (!double_finite(err, d)) {
         return false;
      }
      if (!(d >= -9223372036854775808.0 && d < 9223372036854775808.0)) {
         return overflow_fail(err, in);
      }
      *out = (int64_t) d;
      return true;
   }
   default: {
      aspen_dec_t d = aspen__decimal_from_bson(&in->v.value.v_decimal128);
      if (aspen__decimal_is_nan(d)) {
         return double_finite(err, NAN);
      }
      if (aspen__decimal_is_inf(d)) {
         return double_finite(err, INFINITY);
      }
      if (!aspen__decimal_to_int64(d, out)) {
         return overflow_fail(err, in);
      }
      return true;
   }
   }
}

/* A double as mongod 8's $toString prints it (fmt::format("{}")): the
 * shortest digits that read back to the same double, in fixed notation when
 * the decimal exponent is in [-4, 16), else as d.ddde+XX. */
static void
format_double_shortest(double d, char *buf, size_t len)
{
   if (isinf(d)) {
      snprintf(buf, len, "%s", d < 0 ? "-Infinity" : "Infinity");
      return;
   }
   if (isnan(d)) {
      snprintf(buf, len, "NaN");
      return;
   }
   if (d == 0) {
      snprintf(buf, len, "%s", signbit(d) ? "-0" : "0");
      return;
   }
   char tmp[40];
   for (int prec = 1; prec <= 17; prec++) {
      snprintf(tmp, sizeof tmp, "%.*e", prec - 1, d);
      if (strtod(tmp, NULL) == d) {
         break;
      }
   }
   /* tmp: [-]d[.ddd]e[+-]XX */
   bool neg = tmp[0] == '-';
   const char *p = tmp + (neg ? 1 : 0);
   char digits[24];
   size_t nd = 0;
   while (*p && *p != 'e') {
      if (*p != '.' && nd < sizeof digits - 1) {
         digits[nd++] = *p;
      }
      p++;
   }
   digits[nd] = '\0';
   int exp10 = *p == 'e' ? (int) strtol(p + 1, NULL, 10) : 0;
   size_t n = 0;
   char out[64];
   if (neg) {
      out[n++] = '-';
   }
   if (exp10 < -4 || exp10 >= 16) {
      out[n++] = digits[0];
      if (nd > 1) {
         out[n++] = '.';
         memcpy(out + n, digits + 1, nd - 1);
         n += nd - 1;
      }
      snprintf(out + n, sizeof out - n, "e%c%02d", exp10 < 0 ? '-' : '+',
               exp10 < 0 ? -exp10 : exp10);
   } else if (exp10 >= 0) {
      for (int i = 0; i <= exp10; i++) {
         out[n++] = (size_t) i < nd ? digits[i] : '0';
      }
      if ((size_t) exp10 + 1 < nd) {
         out[n++] = '.';
         memcpy(out + n, digits + exp10 + 1, nd - (size_t) exp10 - 1);
         n += nd - (size_t) exp10 - 1;
      }
      out[n] = '\0';
   } else {
      out[n++] = '0';
      out[n++] = '.';
      for (int i = 0; i < -exp10 - 1; i++) {
         out[n++] = '0';
      }
      memcpy(out + n, digits, nd);
      n += nd;
      out[n] = '\0';
   }
   snprintf(buf, len, "%s", out);
}

static bool
parse_number_string(const aspen_value_t *in, bson_type_t to,
                    aspen_value_t *out, aspen_error_t *err)
{
   const char *s = in->v.value.v_utf8.str;
   size_t len = in->v.value.v_utf8.len;
   const char *reason = NULL;
   if (len >= 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
      aspen_error_set(err, ASPEN_ERR_ConversionFailure,
                      "Illegal hexadecimal input in $convert with no onError "
                      "value: %s",
                      s);
      return false;
   }
   if (len == 0) {
      reason = "No digits";
   } else if (strlen(s) != len || isspace((unsigned char) s[0])) {
      reason = "Did not consume whole string.";
   }
   if (!reason && to == BSON_TYPE_DECIMAL128) {
      bson_decimal128_t d;
      if (!bson_decimal128_from_string(s, &d)) {
         reason = "Failed to parse string to decimal";
      } else {
         *out = aspen__value_decimal(d);
         return true;
      }
   } else if (!reason && to == BSON_TYPE_DOUBLE) {
      char *end;
      errno = 0;
      double d = strtod(s, &end);
      if (end != s + len) {
         reason = "Did not consume whole string.";
      } else if (errno == ERANGE && isinf(d)) {
         reason = "Out of range";
      } else {
         *out = aspen_value_double(d);
         return true;
      }
   } else if (!reason) {
      char *end;
      errno = 0;
      long long v = strtoll(s, &end, 10);
      if (end == s) {
         reason = "No digits";
      } else if (end != s + len) {
         reason = "Did not consume whole string.";
      } else if (errno == ERANGE ||
                 (to == BSON_TYPE_INT32 && (v < INT32_MIN || v > INT32_MAX))) {
         reason = "Overflow";
      } else {
         *out = to == BSON_TYPE_INT32 ? aspen_value_int32((int32_t) v)
                                      : aspen_value_int64(v);
         return true;
      }
   }
   aspen_error_set(err, ASPEN_ERR_ConversionFailure,
                   "Failed to parse number '%s' in $convert with no onError "
                   "value: %s",
                   s, reason);
   return false;
}

static int
hexval(char c)
{
   if (c >= '0' && c <= '9') {
      return c - '0';
   }
   if (c >= 'a' && c <= 'f') {
      return c - 'a' + 10;
   }
   if (c >= 'A' && c <= 'F') {
      return c - 'A' + 10;
   }
   return -1;
}

static bool
string_to_oid(const aspen_value_t *in, aspen_value_t *out, aspen_error_t *err)
{
   const char *s = in->v.value.v_utf8.str;
   size_t len = in->v.value.v_utf8.len;
   if (len != 24) {
      aspen_error_set(err, ASPEN_ERR_ConversionFailure,
                      "Failed to parse objectId '%s' in $convert with no "
                      "onError value: Invalid string length for parsing to "
                      "OID, expected 24 but found %zu",
                      s, len);
      return false;
   }
   for (size_t i = 0; i < 24; i++) {
      if (hexval(s[i]) < 0) {
         aspen_error_set(err, ASPEN_ERR_ConversionFailure,
                         "Failed to parse objectId '%s' in $convert with no "
                         "onError value: Invalid character found in hex "
                         "string: %s",
                         s, s);
         return false;
      }
   }
   memset(out, 0, sizeof *out);
   out->v.value_type = BSON_TYPE_OID;
   bson_oid_init_from_string(&out->v.value.v_oid, s);
   return true;
}

static void
date_iso(int64_t ms, char *buf, size_t cap)
{
   size_t n;
   aspen_error_t err;
   if (!aspen__date_format(ms, ASPEN__ISO_FORMAT, strlen(ASPEN__ISO_FORMAT),
                           aspen__tz_utc(),
                           buf, cap, &n, &err)) {
      snprintf(buf, cap, "%s", err.message);
   }
}

/* --- binData <-> string / numbers (ASP) --------------------------------- */

static const char b64_std[] =
   "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char b64_url[] =
   "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static char *
b64_encode(const uint8_t *p, size_t n, bool url, size_t *out_len)
{
   const char *tbl = url ? b64_url : b64_std;
   char *s = bson_malloc(((n + 2) / 3) * 4 + 1);
   size_t k = 0;
   for (size_t i = 0; i < n; i += 3) {
      uint32_t v = (uint32_t) p[i] << 16;
      if (i + 1 < n) {
         v |= (uint32_t) p[i + 1] << 8;
      }
      if (i + 2 < n) {
         v |= p[i + 2];
      }
      s[k++] = tbl[(v >> 18) & 63];
      s[k++] = tbl[(v >> 12) & 63];
      if (i + 1 < n) {
         s[k++] = tbl[(v >> 6) & 63];
      } else if (!url) {
         s[k++] = '=';
      }
      if (i + 2 < n) {
         s[k++] = tbl[v & 63];
      } else if (!url) {
         s[k++] = '=';
      }
   }
   s[k] = '\0';
   *out_len = k;
   return s;
}

static int
b64_val(char c, bool url)
{
   if (c >= 'A' && c <= 'Z') {
      return c - 'A';
   }
   if (c >= 'a' && c <= 'z') {
      return c - 'a' + 26;
   }
   if (c >= '0' && c <= '9') {
      return c - '0' + 52;
   }
   if (c == (url ? '-' : '+')) {
      return 62;
   }
   if (c == (url ? '_' : '/')) {
      return 63;
   }
   return -1;
}

static uint8_t *
b64_decode(const char *s, size_t n, bool url, size_t *out_len)
{
   while (n > 0 && s[n - 1] == '=') {
      n--;
   }
   if (n % 4 == 1) {
      return NULL;
   }
   uint8_t *p = bson_malloc(n * 3 / 4 + 3);
   size_t k = 0;
   uint32_t acc = 0;
   int bits = 0;
   for (size_t i = 0; i < n; i++) {
      int v = b64_val(s[i], url);
      if (v < 0) {
         bson_free(p);
         return NULL;
      }
      acc = (acc << 6) | (uint32_t) v;
      bits += 6;
      if (bits >= 8) {
         bits -= 8;
         p[k++] = (uint8_t) (acc >> bits);
      }
   }
   *out_len = k;
   return p;
}

static bool
bin_to_string(const aspen_value_t *in, int format, aspen_value_t *out,
              aspen_error_t *err)
{
   const uint8_t *p = in->v.value.v_binary.data;
   size_t n = in->v.value.v_binary.data_len;
   if (format == FMT_AUTO || format == FMT_NONE) {
      format = in->v.value.v_binary.subtype == BSON_SUBTYPE_UUID && n == 16
                  ? FMT_UUID
                  : FMT_BASE64;
   }
   switch (format) {
   case FMT_BASE64:
   case FMT_BASE64URL: {
      size_t len;
      char *s = b64_encode(p, n, format == FMT_BASE64URL, &len);
      *out = aspen__value_utf8_take(s, (uint32_t) len);
      return true;
   }
   case FMT_HEX: {
      char *s = bson_malloc(n * 2 + 1);
      for (size_t i = 0; i < n; i++) {
         snprintf(s + 2 * i, 3, "%02X", p[i]);
      }
      s[n * 2] = '\0';
      *out = aspen__value_utf8_take(s, (uint32_t) (n * 2));
      return true;
   }
   case FMT_UUID: {
      if (n != 16) {
         aspen_error_set(err, ASPEN_ERR_ConversionFailure,
                         "Failed to convert binData to a UUID string in "
                         "$convert with no onError value: expected 16 bytes, "
                         "found %zu",
                         n);
         return false;
      }
      char s[37];
      size_t k = 0;
      for (size_t i = 0; i < 16; i++) {
         if (i == 4 || i == 6 || i == 8 || i == 10) {
            s[k++] = '-';
         }
         snprintf(s + k, 3, "%02x", p[i]);
         k += 2;
      }
      s[k] = '\0';
      *out = aspen_value_utf8(s, k);
      return true;
   }
   default: /* utf8 */
      if (!bson_utf8_validate((const char *) p, n, false)) {
         aspen_error_set(err, ASPEN_ERR_ConversionFailure,
                         "Failed to convert binData to a UTF-8 string in "
                         "$convert with no onError value: invalid UTF-8");
         return false;
      }
      *out = aspen_value_utf8((const char *) p, n);
      return true;
   }
}

static bool
string_to_bin(const aspen_value_t *in, int format, int subtype,
              aspen_value_t *out, aspen_error_t *err)
{
   const char *s = in->v.value.v_utf8.str;
   size_t n = in->v.value.v_utf8.len;
   uint8_t *p = NULL;
   size_t len = 0;
   bool ok = true;
   switch (format) {
   case FMT_NONE:
   case FMT_AUTO:
      aspen_error_set(err, ASPEN_ERR_ConversionFailure,
                      "Format must be specified when converting from "
                      "'string' to 'binData'");
      return false;
   case FMT_BASE64:
   case FMT_BASE64URL:
      p = b64_decode(s, n, format == FMT_BASE64URL, &len);
      ok = p != NULL;
      break;
   case FMT_HEX:
      if (n % 2) {
         ok = false;
         break;
      }
      p = bson_malloc(n / 2 + 1);
      len = n / 2;
      for (size_t i = 0; ok && i < len; i++) {
         int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
         ok = hi >= 0 && lo >= 0;
         p[i] = (uint8_t) (hi << 4 | lo);
      }
      break;
   case FMT_UUID: {
      p = bson_malloc(16);
      size_t k = 0;
      for (size_t i = 0; ok && i < n;) {
         if (s[i] == '-' && (k == 4 || k == 6 || k == 8 || k == 10)) {
            i++;
            continue;
         }
         if (i + 1 >= n || k >= 16) {
            ok = false;
            break;
         }
         int hi = hexval(s[i]), lo = hexval(s[i + 1]);
         ok = hi >= 0 && lo >= 0;
         p[k++] = (uint8_t) (hi << 4 | lo);
         i += 2;
      }
      ok = ok && k == 16 && n == 36;
      len = 16;
      if (subtype == 0) {
         subtype = BSON_SUBTYPE_UUID;
      }
      break;
   }
   default:
      p = bson_malloc(n ? n : 1);
      if (n) {
         memcpy(p, s, n);
      }
      len = n;
      break;
   }
   if (!ok) {
      bson_free(p);
      aspen_error_set(err, ASPEN_ERR_ConversionFailure,
                      "Failed to parse BinData '%s' in $convert with no "
                      "onError value",
                      s);
      return false;
   }
   *out = aspen__value_binary((bson_subtype_t) subtype, p, (uint32_t) len);
   bson_free(p);
   return true;
}

static void
put_bytes(uint8_t *dst, uint64_t v, size_t n, bool big)
{
   for (size_t i = 0; i < n; i++) {
      uint8_t b = (uint8_t) (v >> (8 * i));
      dst[big ? n - 1 - i : i] = b;
   }
}

static uint64_t
get_bytes(const uint8_t *src, size_t n, bool big)
{
   uint64_t v = 0;
   for (size_t i = 0; i < n; i++) {
      v |= (uint64_t) src[big ? n - 1 - i : i] << (8 * i);
   }
   return v;
}

static bool
num_to_bin(const aspen_value_t *in, const conv_opts_t *o, aspen_value_t *out,
           aspen_error_t *err)
{
   uint8_t buf[8];
   size_t n;
   switch (aspen__vt(in)) {
   case BSON_TYPE_INT32:
      n = 4;
      put_bytes(buf, (uint32_t) in->v.value.v_int32, n, o->big_endian);
      break;
   case BSON_TYPE_INT64:
      n = 8;
      put_bytes(buf, (uint64_t) in->v.value.v_int64, n, o->big_endian);
      break;
   case BSON_TYPE_DOUBLE: {
      uint64_t bits;
      memcpy(&bits, &in->v.value.v_double, 8);
      n = 8;
      put_bytes(buf, bits, n, o->big_endian);
      break;
   }
   default:
      return conv_fail_unsupported(err, aspen__vt(in), BSON_TYPE_BINARY);
   }
   *out = aspen__value_binary((bson_subtype_t) o->subtype, buf, (uint32_t) n);
   return true;
}

static bool
bin_to_num(const aspen_value_t *in, const conv_opts_t *o, aspen_value_t *out,
           aspen_error_t *err)
{
   const uint8_t *p = in->v.value.v_binary.data;
   size_t n = in->v.value.v_binary.data_len;
   bool big = o->big_endian;
   switch (o->to) {
   case BSON_TYPE_INT32:
      if (n != 1 && n != 2 && n != 4) {
         aspen_error_set(err, ASPEN_ERR_ConversionFailure,
                         "Failed to convert binData to int in $convert with "
                         "no onError value: binData must be 1, 2, or 4 bytes "
                         "long, found %zu",
                         n);
         return false;
      }
      {
         uint64_t v = get_bytes(p, n, big);
         int64_t sv = (int64_t) (v << (64 - 8 * n)) >> (64 - 8 * n);
         *out = aspen_value_int32((int32_t) sv);
      }
      return true;
   case BSON_TYPE_INT64:
      if (n != 1 && n != 2 && n != 4 && n != 8) {
         aspen_error_set(err, ASPEN_ERR_ConversionFailure,
                         "Failed to convert binData to long in $convert with "
                         "no onError value: binData must be 1, 2, 4, or 8 "
                         "bytes long, found %zu",
                         n);
         return false;
      }
      {
         uint64_t v = get_bytes(p, n, big);
         int64_t sv = n == 8 ? (int64_t) v
                             : (int64_t) (v << (64 - 8 * n)) >> (64 - 8 * n);
         *out = aspen_value_int64(sv);
      }
      return true;
   default: /* double */
      if (n == 8) {
         uint64_t v = get_bytes(p, 8, big);
         double d;
         memcpy(&d, &v, 8);
         *out = aspen_value_double(d);
         return true;
      }
      if (n == 4) {
         uint32_t v = (uint32_t) get_bytes(p, 4, big);
         float f;
         memcpy(&f, &v, 4);
         *out = aspen_value_double((double) f);
         return true;
      }
      aspen_error_set(err, ASPEN_ERR_ConversionFailure,
                      "Failed to convert binData to double in $convert with "
                      "no onError value: binData must be 4 or 8 bytes long, "
                      "found %zu",
                      n);
      return false;
   }
}

/* The conversion matrix. */
static bool
convert(const aspen_value_t *in, const conv_opts_t *o, aspen_value_t *out,
        aspen_error_t *err)
{
   bson_type_t from = aspen__vt(in);
   bson_type_t to = o->to;
   char buf[128];
   *out = ASPEN_VALUE_MISSING;
   if (to == BSON_TYPE_BOOL) {
      switch (from) {
      case BSON_TYPE_DOUBLE:
      case BSON_TYPE_INT32:
      case BSON_TYPE_INT64:
      case BSON_TYPE_DECIMAL128:
      case BSON_TYPE_BOOL:
         *out = aspen_value_bool(aspen_value_truthy(in));
         return true;
      case BSON_TYPE_UNDEFINED:
      case BSON_TYPE_NULL:
      case BSON_TYPE_EOD:
         return conv_fail_unsupported(err, from, to);
      default:
         *out = aspen_value_bool(true);
         return true;
      }
   }
   if (from == to && to != BSON_TYPE_BINARY) {
      *out = aspen__value_view(in);
      return true;
   }
   switch (from) {
   case BSON_TYPE_DOUBLE: {
      double d = in->v.value.v_double;
      switch (to) {
      case BSON_TYPE_UTF8:
         format_double_shortest(d, buf, sizeof buf);
         *out = aspen_value_utf8(buf, strlen(buf));
         return true;
      case BSON_TYPE_DATE_TIME: {
         int64_t ms;
         if (!to_int64_checked(in, &ms, err)) {
            return false;
         }
         *out = aspen_value_date(ms);
         return true;
      }
      case BSON_TYPE_INT32:
         if (!double_finite(err, d)) {
            return false;
         }
         if (!(d >= -2147483648.0 && d <= 2147483647.0)) {
            return overflow_fail(err, in);
         }
         *out = aspen_value_int32((int32_t) d);
         return true;
      case BSON_TYPE_INT64: {
         int64_t l;
         if (!to_int64_checked(in, &l, err)) {
            return false;
         }
         *out = aspen_value_int64(l);
         return true;
      }
      case BSON_TYPE_DECIMAL128:
         *out = aspen__value_decimal(
            aspen__decimal_to_bson(aspen__decimal_from_double(d, 15)));
         return true;
      case BSON_TYPE_BINARY:
         return num_to_bin(in, o, out, err);
      default:
         break;
      }
      break;
   }
   case BSON_TYPE_UTF8:
      switch (to) {
      case BSON_TYPE_DOUBLE:
      case BSON_TYPE_INT32:
      case BSON_TYPE_INT64:
      case BSON_TYPE_DECIMAL128:
         return parse_number_string(in, to, out, err);
      case BSON_TYPE_OID:
         return string_to_oid(in, out, err);
      case BSON_TYPE_DATE_TIME: {
         int64_t ms;
         if (!aspen__date_parse(in->v.value.v_utf8.str, in->v.value.v_utf8.len,
                                NULL, 0, aspen__tz_utc(), false, &ms, err)) {
            return false;
         }
         *out = aspen_value_date(ms);
         return true;
      }
      case BSON_TYPE_BINARY:
         return string_to_bin(in, o->format, o->subtype, out, err);
      default:
         break;
      }
      break;
   case BSON_TYPE_OID:
      switch (to) {
      case BSON_TYPE_UTF8:
         bson_oid_to_string(&in->v.value.v_oid, buf);
         *out = aspen_value_utf8(buf, 24);
         return true;
      case BSON_TYPE_DATE_TIME:
         *out = aspen_value_date(
            (int64_t) bson_oid_get_time_t(&in->v.value.v_oid) * 1000);
         return true;
      default:
         break;
      }
      break;
   case BSON_TYPE_BOOL: {
      bool b = in->v.value.v_bool;
      switch (to) {
      case BSON_TYPE_DOUBLE:
         *out = aspen_value_double(b ? 1.0 : 0.0);
         return true;
      case BSON_TYPE_UTF8:
         *out = aspen_value_utf8(b ? "true" : "false", b ? 4 : 5);
         return true;
      case BSON_TYPE_INT32:
         *out = aspen_value_int32(b);
         return true;
      case BSON_TYPE_INT64:
         *out = aspen_value_int64(b);
         return true;
      case BSON_TYPE_DECIMAL128:
         *out = aspen__value_decimal(aspen__decimal_from_int64(b));
         return true;
      default:
         break;
      }
      break;
   }
   case BSON_TYPE_DATE_TIME: {
      int64_t ms = in->v.value.v_datetime;
      switch (to) {
      case BSON_TYPE_DOUBLE:
         *out = aspen_value_double((double) ms);
         return true;
      case BSON_TYPE_UTF8:
         date_iso(ms, buf, sizeof buf);
         *out = aspen_value_utf8(buf, strlen(buf));
         return true;
      case BSON_TYPE_INT64:
         *out = aspen_value_int64(ms);
         return true;
      case BSON_TYPE_DECIMAL128:
         *out = aspen__value_decimal(aspen__decimal_from_int64(ms));
         return true;
      default:
         break;
      }
      break;
   }
   case BSON_TYPE_TIMESTAMP:
      if (to == BSON_TYPE_DATE_TIME) {
         *out = aspen_value_date((int64_t) in->v.value.v_timestamp.timestamp *
                                 1000);
         return true;
      }
      break;
   case BSON_TYPE_INT32:
   case BSON_TYPE_INT64: {
      int64_t l = aspen__num_to_int64(in);
      switch (to) {
      case BSON_TYPE_DOUBLE:
         *out = aspen_value_double((double) l);
         return true;
      case BSON_TYPE_UTF8:
         *out = aspen_value_utf8(buf, aspen_bytes_dec_int64(l, buf));
         return true;
      case BSON_TYPE_INT32:
         if (l < INT32_MIN || l > INT32_MAX) {
            return overflow_fail(err, in);
         }
         *out = aspen_value_int32((int32_t) l);
         return true;
      case BSON_TYPE_INT64:
         *out = aspen_value_int64(l);
         return true;
      case BSON_TYPE_DECIMAL128:
         *out = aspen__value_decimal(aspen__decimal_from_int64(l));
         return true;
      case BSON_TYPE_DATE_TIME:
         if (from == BSON_TYPE_INT64) {
            *out = aspen_value_date(l);
            return true;
         }
         break;
      case BSON_TYPE_BINARY:
         return num_to_bin(in, o, out, err);
      default:
         break;
      }
      break;
   }
   case BSON_TYPE_DECIMAL128: {
      aspen_dec_t d = aspen__decimal_from_bson(&in->v.value.v_decimal128);
      switch (to) {
      case BSON_TYPE_DOUBLE: {
         double x = aspen__decimal_to_double(d);
         if (isinf(x) && !aspen__decimal_is_inf(d)) {
            return overflow_fail(err, in);
         }
         *out = aspen_value_double(x);
         return true;
      }
      case BSON_TYPE_UTF8:
         aspen__decimal_to_string(d, buf, sizeof buf);
         *out = aspen_value_utf8(buf, strlen(buf));
         return true;
      case BSON_TYPE_DATE_TIME:
      case BSON_TYPE_INT64:
      case BSON_TYPE_INT32: {
         int64_t l;
         if (!to_int64_checked(in, &l, err)) {
            return false;
         }
         if (to == BSON_TYPE_INT32) {
            if (l < INT32_MIN || l > INT32_MAX) {
               return overflow_fail(err, in);
            }
            *out = aspen_value_int32((int32_t) l);
         } else if (to == BSON_TYPE_INT64) {
            *out = aspen_value_int64(l);
         } else {
            *out = aspen_value_date(l);
         }
         return true;
      }
      default:
         break;
      }
      break;
   }
   case BSON_TYPE_BINARY:
      switch (to) {
      case BSON_TYPE_UTF8:
         return bin_to_string(in, o->format, out, err);
      case BSON_TYPE_INT32:
      case BSON_TYPE_INT64:
      case BSON_TYPE_DOUBLE:
         return bin_to_num(in, o, out, err);
      case BSON_TYPE_BINARY:
         *out = aspen__value_view(in);
         return true;
      default:
         break;
      }
      break;
   default:
      break;
   }
   return conv_fail_unsupported(err, from, to);
}

/* ------------------------------------------------------------------------ */
/* $convert: args = input, to, onError, onNull, format, byteOrder            */
/* ------------------------------------------------------------------------ */

static const aspen__named_arg_t convert_names[] = {
   {"input", ASPEN_ERR_FailedToParse, "Missing 'input' parameter to $convert"},
   {"to", ASPEN_ERR_FailedToParse, "Missing 'to' parameter to $convert"},
   {"onError", 0, NULL},
   {"onNull", 0, NULL},
   {"format", 0, NULL},
   {"byteOrder", 0, NULL},
   {NULL, 0, NULL}};
static const aspen__named_spec_t convert_spec = {
   convert_names, ASPEN_ERR_FailedToParse,
   "$convert expects an object of named arguments but found: {type}",
   ASPEN_ERR_FailedToParse, "$convert found an unknown argument: {key}"};

static ASPEN__DECL_PARSE(parse_convert)
{
   return aspen__parse_named(ps, op, arg, e, &convert_spec);
}

static bool
parse_format(aspen__eval_t *st, const aspen_value_t *v, int *format)
{
   static const struct {
      const char *name;
      int fmt;
   } fmts[] = {{"base64", FMT_BASE64}, {"base64url", FMT_BASE64URL},
               {"hex", FMT_HEX},       {"uuid", FMT_UUID},
               {"utf8", FMT_UTF8},     {"auto", FMT_AUTO}};
   if (aspen__is_nullish(v)) {
      *format = FMT_NONE;
      return true;
   }
   if (aspen__is_str(v)) {
      for (size_t i = 0; i < sizeof fmts / sizeof *fmts; i++) {
         if (strcmp(fmts[i].name, v->v.value.v_utf8.str) == 0) {
            *format = fmts[i].fmt;
            return true;
         }
      }
   }
   char *json = aspen_value_to_json(v);
   aspen__fail(st, ASPEN_ERR_FailedToParse,
               "Invalid 'format' argument for $convert: %s (expected one of "
               "base64, base64url, hex, uuid, utf8, auto)",
               json);
   bson_free(json);
   return false;
}

static bool
parse_byte_order(aspen__eval_t *st, const aspen_value_t *v, bool *big)
{
   *big = false;
   if (aspen__is_nullish(v)) {
      return true;
   }
   if (aspen__is_str(v) && strcmp(v->v.value.v_utf8.str, "little") == 0) {
      return true;
   }
   if (aspen__is_str(v) && strcmp(v->v.value.v_utf8.str, "big") == 0) {
      *big = true;
      return true;
   }
   char *json = aspen_value_to_json(v);
   aspen__fail(st, ASPEN_ERR_FailedToParse,
               "Invalid 'byteOrder' argument for $convert: %s (expected "
               "\"little\" or \"big\")",
               json);
   bson_free(json);
   return false;
}

static ASPEN__DECL_EVAL(eval_convert)
{
   aspen_value_t v[6];
   uint32_t done;
   bool ok = false;
   *out = ASPEN_VALUE_MISSING;
   /* onError and onNull are evaluated only when needed. */
   static const uint32_t order[] = {1, 0, 4, 5};
   for (uint32_t i = 0; i < 6; i++) {
      v[i] = ASPEN_VALUE_MISSING;
   }
   for (done = 0; done < 4; done++) {
      if (!aspen__eval_arg(e, order[done], st, &v[order[done]])) {
         goto done;
      }
   }
   conv_opts_t o = {.to = BSON_TYPE_EOD};
   bool have_target = !aspen__is_nullish(&v[1]);
   if (have_target && !target_type(st, &v[1], &o)) {
      goto done;
   }
   if (!parse_format(st, &v[4], &o.format) ||
       !parse_byte_order(st, &v[5], &o.big_endian)) {
      goto done;
   }
   if (aspen__is_nullish(&v[0])) {
      if (e->args[3]) {
         ok = aspen__eval_node(e->args[3], st, out);
      } else {
         *out = aspen_value_null();
         ok = true;
      }
      goto done;
   }
   if (!have_target) {
      *out = aspen_value_null();
      ok = true;
      goto done;
   }
   aspen_error_t cerr;
   if (convert(&v[0], &o, out, &cerr)) {
      if (v[0].owned) {
         aspen__value_own(out);
      }
      ok = true;
   } else if (cerr.code == ASPEN_ERR_ConversionFailure && e->args[2]) {
      ok = aspen__eval_node(e->args[2], st, out);
   } else {
      if (st->err) {
         *st->err = cerr;
      }
   }
done:
   for (uint32_t i = 0; i < 6; i++) {
      aspen_value_destroy(&v[i]);
   }
   return ok;
}

/* {$toString: leaf} of an int or a long written straight into the
 * output: compute_to_type's digits, with the step of the argument and the
 * bytes of the result the general path counts. Anything else is eval's. */
static ASPEN__DECL_WRITE(write_to_string)
{
   int64_t x;
   if (aspen__to_string_int_leaf(e, st, &x)) {
      char digits[24];
      size_t len = aspen_bytes_dec_int64(x, digits);
      if (st->made + len <= ASPEN__EVAL_MAX_MADE && aspen__steps_skip(st, 1)) {
         st->made += len;
         memcpy(aspen_bsonw_utf8_room(w, key, key_len, len), digits, len);
         return true;
      }
   }
   return aspen__write_eval(e, st, w, key, key_len);
}

/* $toInt etc.: one argument (or an array of one). sub = target type. */
static ASPEN__DECL_PARSE(parse_to_type)
{
   aspen__op_t any = *op;
   any.min_args = -1;
   any.max_args = -1;
   if (!aspen__parse_nary(ps, &any, arg, e)) {
      return false;
   }
   if (e->n_args != 1) {
      return aspen__pfail(ps, 50723, "%s requires a single argument, got %u",
                          op->name, e->n_args);
   }
   if (op->sub == BSON_TYPE_UTF8) {
      e->flags |= ASPEN__NODE_TO_STRING; /* for $concat's fast path */
      e->write = write_to_string;
   }
   return true;
}

static const aspen__args_t to_type_args = {
   .n = 1, .arg = {{.flags = ASPEN__ARG_NULL}}};

static ASPEN__DECL_COMPUTE(compute_to_type)
{
   conv_opts_t o = {.to = (bson_type_t) e->op->sub, .subtype = 0,
                    .format = FMT_AUTO, .big_endian = false};
   bson_type_t from = v[0].v.value_type;
   if (o.to == BSON_TYPE_UTF8 && st->ctx->scratch &&
       (from == BSON_TYPE_INT32 || from == BSON_TYPE_INT64)) {
      /* convert()'s integer -> string, into the caller's scratch. */
      char buf[24];
      *out = aspen__value_str_make(
         st, buf, aspen_bytes_dec_int64(aspen__num_to_int64(&v[0]), buf));
      return true;
   }
   aspen_error_t cerr;
   if (!convert(&v[0], &o, out, &cerr)) {
      if (st->err) {
         *st->err = cerr;
      }
      return false;
   }
   if (v[0].owned) {
      aspen__value_own(out);
   }
   return true;
}

ASPEN__ARGS_EVAL(eval_to_type, to_type_args, compute_to_type)

/* ------------------------------------------------------------------------ */
/* The operator table (expr_int.h, aspen__op_t)                              */
/* ------------------------------------------------------------------------ */

#define P ASPEN__OP_PURE
#define NARY aspen__parse_nary
#define TO(name, type)                                                         \
   {name, parse_to_type, eval_to_type, 1, 1, type, P, &to_type_args}

static const aspen__op_t ops[] = {
   {"$convert", parse_convert, eval_convert, 0, 0, 0, P, NULL},
   {"$isNumber", NARY, eval_is_number, 1, 1, 0, P, &any1_args},
   TO("$toBool", BSON_TYPE_BOOL),
   TO("$toDate", BSON_TYPE_DATE_TIME),
   TO("$toDecimal", BSON_TYPE_DECIMAL128),
   TO("$toDouble", BSON_TYPE_DOUBLE),
   TO("$toInt", BSON_TYPE_INT32),
   TO("$toLong", BSON_TYPE_INT64),
   TO("$toObjectId", BSON_TYPE_OID),
   TO("$toString", BSON_TYPE_UTF8),
   {"$type", NARY, eval_type, 1, 1, 0, P, &any1_args},
};

#undef P
#undef NARY
#undef TO

const aspen__op_table_t aspen__expr_convert_ops = {
   ops, sizeof ops / sizeof ops[0]};
