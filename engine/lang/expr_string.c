/*
 * expr_string.c - string expression operators: $concat, $substr*, $toLower/
 * $toUpper (ASCII only, as MongoDB), $strLen*, $split, $trim family,
 * $indexOf*, $strcasecmp, $replaceOne/$replaceAll, $binarySize and the
 * regular-expression operators ($regexMatch, $regexFind, $regexFindAll),
 * which use PCRE2 in UTF mode like mongod. Constant patterns are compiled
 * once at parse time; a compiled pattern is read-only, so evaluations on
 * several threads may share it.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "lang/expr_int.h"

#include <inttypes.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>

/* ------------------------------------------------------------------------ */
/* Helpers                                                                   */
/* ------------------------------------------------------------------------ */

size_t
aspen__utf8_cp_len(unsigned char lead)
{
   if (lead < 0x80) {
      return 1;
   }
   if ((lead & 0xe0) == 0xc0) {
      return 2;
   }
   if ((lead & 0xf0) == 0xe0) {
      return 3;
   }
   if ((lead & 0xf8) == 0xf0) {
      return 4;
   }
   return 1; /* continuation or invalid byte: step over it */
}

static bool
is_cont(unsigned char c)
{
   return (c & 0xc0) == 0x80;
}

static size_t
cp_count(const char *s, size_t len)
{
   size_t n = 0;
   for (size_t i = 0; i < len; i++) {
      if (!is_cont((unsigned char) s[i])) {
         n++;
      }
   }
   return n;
}

/* A growable string that ends up as an owned value. */
typedef struct {
   char *p;
   size_t len, cap;
} sbuf_t;

static void
sb_add(sbuf_t *b, const char *s, size_t n)
{
   if (b->len + n + 1 > b->cap) {
      size_t cap = b->cap ? b->cap : 64;
      while (cap < b->len + n + 1) {
         cap *= 2;
      }
      b->p = bson_realloc(b->p, cap);
      b->cap = cap;
   }
   if (n) {
      memcpy(b->p + b->len, s, n);
   }
   b->len += n;
   b->p[b->len] = '\0';
}

static aspen_value_t
sb_finish(sbuf_t *b)
{
   if (!b->p) {
      sb_add(b, "", 0);
   }
   return aspen__value_utf8_take(b->p, (uint32_t) b->len);
}

/* Value::coerceToString: strings as they are, numbers printed, dates in ISO
 * format, nullish as "". Writes into `buf` (cap bytes) when the text must be
 * made; s and len receive the result. */
static bool
coerce_to_string(aspen__eval_t *st, const aspen_value_t *v, char *buf,
                 size_t cap, const char **s, size_t *len)
{
   switch (aspen__vt(v)) {
   case BSON_TYPE_UTF8:
      *s = v->v.value.v_utf8.str;
      *len = v->v.value.v_utf8.len;
      return true;
   case BSON_TYPE_SYMBOL:
      *s = v->v.value.v_symbol.symbol;
      *len = v->v.value.v_symbol.len;
      return true;
   case BSON_TYPE_CODE:
      *s = v->v.value.v_code.code;
      *len = v->v.value.v_code.code_len;
      return true;
   case BSON_TYPE_EOD:
   case BSON_TYPE_NULL:
   case BSON_TYPE_UNDEFINED:
      *s = "";
      *len = 0;
      return true;
   case BSON_TYPE_INT32:
      snprintf(buf, cap, "%" PRId32, v->v.value.v_int32);
      break;
   case BSON_TYPE_INT64:
      snprintf(buf, cap, "%" PRId64, v->v.value.v_int64);
      break;
   case BSON_TYPE_DOUBLE:
      snprintf(buf, cap, "%g", v->v.value.v_double);
      break;
   case BSON_TYPE_DECIMAL128:
      aspen__decimal_to_string(
         aspen__decimal_from_bson(&v->v.value.v_decimal128), buf, cap);
      break;
   case BSON_TYPE_TIMESTAMP:
      snprintf(buf, cap, "Timestamp(%" PRIu32 ", %" PRIu32 ")",
               v->v.value.v_timestamp.timestamp,
               v->v.value.v_timestamp.increment);
      break;
   case BSON_TYPE_DATE_TIME: {
      size_t n;
      if (!aspen__date_format(v->v.value.v_datetime, ASPEN__ISO_FORMAT,
                              strlen(ASPEN__ISO_FORMAT), aspen__tz_utc(), buf, cap, &n, st->err)) {
         return false;
      }
      break;
   }
   default:
      return aspen__fail(st, 16007, "can't convert from BSON type %s to String",
                         aspen_value_type_name(v));
   }
   *s = buf;
   *len = strlen(buf);
   return true;
}

/* ------------------------------------------------------------------------ */
/* $concat                                                                   */
/* ------------------------------------------------------------------------ */

ASPEN__DECL_EVAL(aspen__eval_concat)
{
   sbuf_t b = {0};
   for (uint32_t i = 0; i < e->n_args; i++) {
      aspen_value_t v;
      if (!aspen__eval_arg(e, i, st, &v)) {
         bson_free(b.p);
         *out = ASPEN_VALUE_MISSING;
         return false;
      }
      if (aspen__is_nullish(&v)) {
         bson_free(b.p);
         *out = aspen_value_null();
         return true;
      }
      if (!aspen__is_str(&v)) {
         bson_free(b.p);
         *out = ASPEN_VALUE_MISSING;
         bool failed = aspen__fail(st, 16702, "$concat only supports strings, not %s",
                            aspen_value_type_name(&v));
         aspen_value_destroy(&v);
         return failed;
      }
      sb_add(&b, v.v.value.v_utf8.str, v.v.value.v_utf8.len);
      aspen_value_destroy(&v);
      if (!aspen__eval_size_ok(st, b.len, true)) {
         bson_free(b.p);
         *out = ASPEN_VALUE_MISSING;
         return false;
      }
   }
   *out = sb_finish(&b);
   return true;
}

/* ------------------------------------------------------------------------ */
/* $substrBytes / $substr / $substrCP                                        */
/* ------------------------------------------------------------------------ */

static bool
eval3(const aspen_expr_t *e, aspen__eval_t *st, aspen_value_t v[3])
{
   for (uint32_t i = 0; i < 3; i++) {
      if (!aspen__eval_arg(e, i, st, &v[i])) {
         for (uint32_t k = 0; k < i; k++) {
            aspen_value_destroy(&v[k]);
         }
         return false;
      }
   }
   return true;
}

static void
destroy_n(aspen_value_t *v, uint32_t n)
{
   for (uint32_t i = 0; i < n; i++) {
      aspen_value_destroy(&v[i]);
   }
}

ASPEN__DECL_EVAL(aspen__eval_substr_bytes)
{
   aspen_value_t v[3];
   char buf[128];
   const char *s;
   size_t len;
   bool ok = false;
   *out = ASPEN_VALUE_MISSING;
   if (!eval3(e, st, v)) {
      return false;
   }
   const char *name = "$substrBytes";
   if (!coerce_to_string(st, &v[0], buf, sizeof buf, &s, &len)) {
      goto done;
   }
   if (!aspen__is_num(&v[1])) {
      aspen__fail(st, 16034,
                  "%s:  starting index must be a numeric type (is BSON type "
                  "%s)",
                  name, aspen_value_type_name(&v[1]));
      goto done;
   }
   if (!aspen__is_num(&v[2])) {
      aspen__fail(st, 16035,
                  "%s:  length must be a numeric type (is BSON type %s)", name,
                  aspen_value_type_name(&v[2]));
      goto done;
   }
   int64_t lower = aspen__num_to_int64(&v[1]);
   if (lower < 0) {
      aspen__fail(st, 50752,
                  "%s:  starting index must be non-negative (got: %" PRId64 ")",
                  name, lower);
      goto done;
   }
   int64_t slen = aspen__num_to_int64(&v[2]);
   size_t length = slen < 0 || (uint64_t) slen > len ? len : (size_t) slen;
   if ((size_t) lower < len && is_cont((unsigned char) s[lower])) {
      aspen__fail(st, 28656,
                  "%s:  Invalid range, starting index is a UTF-8 continuation "
                  "byte.",
                  name);
      goto done;
   }
   if ((size_t) lower + length < len &&
       is_cont((unsigned char) s[(size_t) lower + length])) {
      aspen__fail(st, 28657,
                  "%s:  Invalid range, ending index is in the middle of a "
                  "UTF-8 character.",
                  name);
      goto done;
   }
   if ((size_t) lower >= len) {
      *out = aspen_value_utf8("", 0);
   } else {
      size_t avail = len - (size_t) lower;
      *out = aspen_value_utf8(s + lower, length < avail ? length : avail);
   }
   ok = true;
done:
   destroy_n(v, 3);
   return ok;
}

ASPEN__DECL_EVAL(aspen__eval_substr_cp)
{
   aspen_value_t v[3];
   char buf[128];
   const char *s;
   size_t len;
   bool ok = false;
   int32_t start, count;
   char num[64];
   const char *name = "$substrCP";
   *out = ASPEN_VALUE_MISSING;
   if (!eval3(e, st, v)) {
      return false;
   }
   if (!coerce_to_string(st, &v[0], buf, sizeof buf, &s, &len)) {
      goto done;
   }
   if (!aspen__is_num(&v[1])) {
      aspen__fail(st, 34450,
                  "%s: starting index must be a numeric type (is BSON type %s)",
                  name, aspen_value_type_name(&v[1]));
      goto done;
   }
   if (!aspen__num_is_int32(&v[1], &start)) {
      aspen__num_to_text(&v[1], num, sizeof num);
      aspen__fail(st, 34451,
                  "%s: starting index cannot be represented as a 32-bit "
                  "integral value: %s",
                  name, num);
      goto done;
   }
   if (!aspen__is_num(&v[2])) {
      aspen__fail(st, 34452,
                  "%s: length must be a numeric type (is BSON type %s)", name,
                  aspen_value_type_name(&v[2]));
      goto done;
   }
   if (!aspen__num_is_int32(&v[2], &count)) {
      aspen__num_to_text(&v[2], num, sizeof num);
      aspen__fail(st, 34453,
                  "%s: length cannot be represented as a 32-bit integral "
                  "value: %s",
                  name, num);
      goto done;
   }
   if (count < 0) {
      aspen__fail(st, 34454, "%s: length must be a nonnegative integer.", name);
      goto done;
   }
   if (start < 0) {
      aspen__fail(st, 34455,
                  "%s: the starting index must be nonnegative integer.", name);
      goto done;
   }
   size_t b0 = 0;
   for (int32_t i = 0; i < start; i++) {
      if (b0 >= len) {
         *out = aspen_value_utf8("", 0);
         ok = true;
         goto done;
      }
      if (is_cont((unsigned char) s[b0])) {
         aspen__fail(st, 34456, "%s: invalid UTF-8 string", name);
         goto done;
      }
      b0 += aspen__utf8_cp_len((unsigned char) s[b0]);
   }
   size_t b1 = b0;
   for (int32_t i = 0; i < count && b1 < len; i++) {
      if (is_cont((unsigned char) s[b1])) {
         aspen__fail(st, 34458, "%s: invalid UTF-8 string", name);
         goto done;
      }
      b1 += aspen__utf8_cp_len((unsigned char) s[b1]);
   }
   if (b0 > len) {
      b0 = len;
   }
   if (b1 > len) {
      b1 = len;
   }
   *out = aspen_value_utf8(s + b0, b1 - b0);
   ok = true;
done:
   destroy_n(v, 3);
   return ok;
}

/* ------------------------------------------------------------------------ */
/* $toLower / $toUpper, $strLenBytes / $strLenCP, $strcasecmp               */
/* ------------------------------------------------------------------------ */

ASPEN__DECL_EVAL(aspen__eval_case)
{
   aspen_value_t v;
   char buf[128];
   const char *s;
   size_t len;
   *out = ASPEN_VALUE_MISSING;
   if (!aspen__eval_arg(e, 0, st, &v)) {
      return false;
   }
   if (!coerce_to_string(st, &v, buf, sizeof buf, &s, &len)) {
      aspen_value_destroy(&v);
      return false;
   }
   *out = aspen_value_utf8(s, len);
   char *p = out->v.value.v_utf8.str;
   bool upper = e->op->sub != 0;
   for (size_t i = 0; i < len; i++) {
      char c = p[i];
      if (upper && c >= 'a' && c <= 'z') {
         p[i] = (char) (c - 'a' + 'A');
      } else if (!upper && c >= 'A' && c <= 'Z') {
         p[i] = (char) (c - 'A' + 'a');
      }
   }
   aspen_value_destroy(&v);
   return true;
}

ASPEN__DECL_EVAL(aspen__eval_strlen_bytes)
{
   aspen_value_t v;
   *out = ASPEN_VALUE_MISSING;
   if (!aspen__eval_arg(e, 0, st, &v)) {
      return false;
   }
   if (!aspen__is_str(&v)) {
      bool failed = aspen__fail(st, 34473,
                         "$strLenBytes requires a string argument, found: %s",
                         aspen_value_type_name(&v));
      aspen_value_destroy(&v);
      return failed;
   }
   *out = aspen_value_int32((int32_t) v.v.value.v_utf8.len);
   aspen_value_destroy(&v);
   return true;
}

ASPEN__DECL_EVAL(aspen__eval_strlen_cp)
{
   aspen_value_t v;
   *out = ASPEN_VALUE_MISSING;
   if (!aspen__eval_arg(e, 0, st, &v)) {
      return false;
   }
   if (!aspen__is_str(&v)) {
      bool failed = aspen__fail(st, 34471,
                         "$strLenCP requires a string argument, found: %s",
                         aspen_value_type_name(&v));
      aspen_value_destroy(&v);
      return failed;
   }
   *out = aspen_value_int32(
      (int32_t) cp_count(v.v.value.v_utf8.str, v.v.value.v_utf8.len));
   aspen_value_destroy(&v);
   return true;
}

ASPEN__DECL_EVAL(aspen__eval_strcasecmp)
{
   aspen_value_t a, b;
   char ba[128], bb[128];
   const char *sa, *sb;
   size_t la, lb;
   *out = ASPEN_VALUE_MISSING;
   if (!aspen__eval_arg(e, 0, st, &a)) {
      return false;
   }
   if (!aspen__eval_arg(e, 1, st, &b)) {
      aspen_value_destroy(&a);
      return false;
   }
   bool ok = coerce_to_string(st, &a, ba, sizeof ba, &sa, &la) &&
             coerce_to_string(st, &b, bb, sizeof bb, &sb, &lb);
   if (ok) {
      int c = 0;
      size_t n = la < lb ? la : lb;
      for (size_t i = 0; i < n && c == 0; i++) {
         unsigned char x = (unsigned char) sa[i], y = (unsigned char) sb[i];
         if (x >= 'a' && x <= 'z') {
            x = (unsigned char) (x - 'a' + 'A');
         }
         if (y >= 'a' && y <= 'z') {
            y = (unsigned char) (y - 'a' + 'A');
         }
         c = x < y ? -1 : x > y ? 1 : 0;
      }
      if (c == 0) {
         c = la < lb ? -1 : la > lb ? 1 : 0;
      }
      *out = aspen_value_int32(c);
   }
   aspen_value_destroy(&a);
   aspen_value_destroy(&b);
   return ok;
}

/* ------------------------------------------------------------------------ */
/* $split                                                                    */
/* ------------------------------------------------------------------------ */

static const char *
find_bytes(const char *hay, size_t hlen, const char *needle, size_t nlen)
{
   if (nlen == 0) {
      return hay;
   }
   if (nlen > hlen) {
      return NULL;
   }
   const char *last = hay + (hlen - nlen);
   for (const char *p = hay; p <= last; p++) {
      p = memchr(p, needle[0], (size_t) (last - p) + 1);
      if (!p) {
         return NULL;
      }
      if (memcmp(p, needle, nlen) == 0) {
         return p;
      }
   }
   return NULL;
}

ASPEN__DECL_EVAL(aspen__eval_split)
{
   aspen_value_t a, b;
   *out = ASPEN_VALUE_MISSING;
   if (!aspen__eval_arg(e, 0, st, &a)) {
      return false;
   }
   if (!aspen__eval_arg(e, 1, st, &b)) {
      aspen_value_destroy(&a);
      return false;
   }
   bool ok = true;
   if (aspen__is_nullish(&a) || aspen__is_nullish(&b)) {
      *out = aspen_value_null();
   } else if (!aspen__is_str(&a)) {
      ok = aspen__fail(st, 40085,
                       "$split requires an expression that evaluates to a "
                       "string as a first argument, found: %s",
                       aspen_value_type_name(&a));
   } else if (!aspen__is_str(&b)) {
      ok = aspen__fail(st, 40086,
                       "$split requires an expression that evaluates to a "
                       "string as a second argument, found: %s",
                       aspen_value_type_name(&b));
   } else if (b.v.value.v_utf8.len == 0) {
      ok = aspen__fail(st, 40087, "$split requires a non-empty separator");
   } else {
      const char *s = a.v.value.v_utf8.str;
      size_t len = a.v.value.v_utf8.len;
      const char *sep = b.v.value.v_utf8.str;
      size_t slen = b.v.value.v_utf8.len;
      bson_t arr = BSON_INITIALIZER;
      uint32_t i = 0;
      const char *p = s, *end = s + len;
      for (;;) {
         const char *hit = find_bytes(p, (size_t) (end - p), sep, slen);
         const char *stop = hit ? hit : end;
         aspen_value_t piece =
            aspen__value_str_view(p, (uint32_t) (stop - p));
         aspen__array_append(&arr, i++, &piece);
         if (!aspen__eval_size_ok(st, arr.len, false)) {
            ok = false;
            break;
         }
         if (!hit) {
            break;
         }
         p = hit + slen;
      }
      if (ok) {
         *out = aspen__array_finish(&arr);
      } else {
         bson_destroy(&arr);
      }
   }
   aspen_value_destroy(&a);
   aspen_value_destroy(&b);
   return ok;
}

/* ------------------------------------------------------------------------ */
/* $trim / $ltrim / $rtrim (sub: 0 both, 1 left, 2 right)                    */
/* ------------------------------------------------------------------------ */

ASPEN__DECL_PARSE(aspen__parse_trim)
{
   static const char *const names[] = {"input", "chars", NULL};
   static const aspen__named_spec_t spec = {
      names, 50696, ASPEN__NOTOBJ_ONLY_OBJECT_FOUND, 50694,
      ASPEN__UNKNOWN_FOUND};
   if (!aspen__parse_named(ps, op, arg, e, &spec)) {
      return false;
   }
   if (!e->args[0]) {
      return aspen__pfail(ps, 50695, "%s requires an 'input' field", op->name);
   }
   return true;
}

/* Code points trimmed by default (mongod's list). */
static const char *const default_trim[] = {
   "\0",           " ",            "\t",           "\n",
   "\v",           "\f",           "\r",           "\xc2\xa0",
   "\xe1\x9a\x80", "\xe2\x80\x80", "\xe2\x80\x81", "\xe2\x80\x82",
   "\xe2\x80\x83", "\xe2\x80\x84", "\xe2\x80\x85", "\xe2\x80\x86",
   "\xe2\x80\x87", "\xe2\x80\x88", "\xe2\x80\x89", "\xe2\x80\x8a",
};

typedef struct {
   const char *p;
   size_t len;
} cp_t;

static size_t
match_any_left(const char *s, size_t len, const cp_t *cps, size_t n)
{
   for (size_t k = 0; k < n; k++) {
      if (cps[k].len <= len && memcmp(s, cps[k].p, cps[k].len) == 0) {
         return cps[k].len;
      }
   }
   return 0;
}

static size_t
match_any_right(const char *s, size_t len, const cp_t *cps, size_t n)
{
   for (size_t k = 0; k < n; k++) {
      if (cps[k].len <= len &&
          memcmp(s + len - cps[k].len, cps[k].p, cps[k].len) == 0) {
         return cps[k].len;
      }
   }
   return 0;
}

ASPEN__DECL_EVAL(aspen__eval_trim)
{
   aspen_value_t in, chars = ASPEN_VALUE_MISSING;
   cp_t stack_cps[32];
   cp_t *cps = stack_cps;
   size_t n_cps = 0;
   bool ok = true;
   *out = ASPEN_VALUE_MISSING;
   if (!aspen__eval_arg(e, 0, st, &in)) {
      return false;
   }
   if (aspen__is_nullish(&in)) {
      *out = aspen_value_null();
      aspen_value_destroy(&in);
      return true;
   }
   if (!aspen__is_str(&in)) {
      char *json = aspen_value_to_json(&in);
      aspen__fail(st, 50699,
                  "%s requires its input to be a string, got %s (of type %s) "
                  "instead.",
                  e->op->name, json, aspen_value_type_name(&in));
      bson_free(json);
      aspen_value_destroy(&in);
      return false;
   }
   if (e->args[1]) {
      if (!aspen__eval_arg(e, 1, st, &chars)) {
         aspen_value_destroy(&in);
         return false;
      }
      if (aspen__is_nullish(&chars)) {
         *out = aspen_value_null();
         goto done;
      }
      if (!aspen__is_str(&chars)) {
         char *json = aspen_value_to_json(&chars);
         ok = aspen__fail(st, 50700,
                          "%s requires 'chars' to be a string, got %s (of "
                          "type %s) instead.",
                          e->op->name, json, aspen_value_type_name(&chars));
         bson_free(json);
         goto done;
      }
      const char *c = chars.v.value.v_utf8.str;
      size_t clen = chars.v.value.v_utf8.len;
      size_t cap = 32;
      for (size_t i = 0; i < clen;) {
         if (is_cont((unsigned char) c[i])) {
            ok = aspen__fail(st, 50698,
                             "Failed to parse \"chars\" argument to %s: "
                             "Detected invalid UTF-8. Got continuation byte "
                             "when expecting the start of a new code point.",
                             e->op->name);
            goto done;
         }
         size_t l = aspen__utf8_cp_len((unsigned char) c[i]);
         if (i + l > clen) {
            ok = aspen__fail(st, 50697,
                             "Failed to parse \"chars\" argument to %s: "
                             "Detected invalid UTF-8. Missing expected "
                             "continuation byte at end of string.",
                             e->op->name);
            goto done;
         }
         if (n_cps == cap) {
            cap *= 2;
            if (cps == stack_cps) {
               cps = aspen_xmalloc(cap * sizeof *cps);
               memcpy(cps, stack_cps, sizeof stack_cps);
            } else {
               cps = aspen_xrealloc(cps, cap * sizeof *cps);
            }
         }
         cps[n_cps].p = c + i;
         cps[n_cps].len = l;
         n_cps++;
         i += l;
      }
   } else {
      for (size_t k = 0; k < sizeof default_trim / sizeof *default_trim;
           k++) {
         cps[n_cps].p = default_trim[k];
         cps[n_cps].len = k == 0 ? 1 : strlen(default_trim[k]);
         n_cps++;
      }
   }
   {
      const char *s = in.v.value.v_utf8.str;
      size_t len = in.v.value.v_utf8.len;
      int mode = e->op->sub;
      if (mode != 2) {
         size_t l;
         while (len > 0 && (l = match_any_left(s, len, cps, n_cps)) > 0) {
            s += l;
            len -= l;
         }
      }
      if (mode != 1) {
         size_t l;
         while (len > 0 && (l = match_any_right(s, len, cps, n_cps)) > 0) {
            len -= l;
         }
      }
      *out = aspen_value_utf8(s, len);
   }
done:
   if (cps != stack_cps) {
      free(cps);
   }
   aspen_value_destroy(&in);
   aspen_value_destroy(&chars);
   return ok;
}

/* ------------------------------------------------------------------------ */
/* $indexOfBytes / $indexOfCP                                                */
/* ------------------------------------------------------------------------ */

/* Optional index argument i: integral, non-negative. */
static bool
index_arg(const aspen_expr_t *e, uint32_t i, aspen__eval_t *st,
          const char *what, int32_t *out_idx)
{
   aspen_value_t v;
   if (!aspen__eval_arg(e, i, st, &v)) {
      return false;
   }
   int32_t idx;
   if (!aspen__is_num(&v) || !aspen__num_is_int32(&v, &idx)) {
      char *json = aspen_value_to_json(&v);
      aspen__fail(st, 40096,
                  "%srequires an integral %s, found a value of type: %s, with "
                  "value: %s",
                  e->op->name, what, aspen_value_type_name(&v), json);
      bson_free(json);
      aspen_value_destroy(&v);
      return false;
   }
   aspen_value_destroy(&v);
   if (idx < 0) {
      return aspen__fail(st, 40097, "%s requires a nonnegative %s, found: %d",
                         e->op->name, what, idx);
   }
   *out_idx = idx;
   return true;
}

static bool
index_of_common(const aspen_expr_t *e, aspen__eval_t *st, aspen_value_t *out,
                bool cp)
{
   aspen_value_t s, t;
   *out = ASPEN_VALUE_MISSING;
   if (!aspen__eval_arg(e, 0, st, &s)) {
      return false;
   }
   if (aspen__is_nullish(&s)) {
      aspen_value_destroy(&s);
      *out = aspen_value_null();
      return true;
   }
   if (!aspen__is_str(&s)) {
      bool failed = aspen__fail(st, cp ? 40093 : 40091,
                         "%s requires a string as the first argument, found: "
                         "%s",
                         e->op->name, aspen_value_type_name(&s));
      aspen_value_destroy(&s);
      return failed;
   }
   if (!aspen__eval_arg(e, 1, st, &t)) {
      aspen_value_destroy(&s);
      return false;
   }
   bool ok = false;
   if (!aspen__is_str(&t)) {
      aspen__fail(st, cp ? 40094 : 40092,
                  "%s requires a string as the second argument, found: %s",
                  e->op->name, aspen_value_type_name(&t));
      goto done;
   }
   const char *in = s.v.value.v_utf8.str;
   size_t len = s.v.value.v_utf8.len;
   const char *tok = t.v.value.v_utf8.str;
   size_t tlen = t.v.value.v_utf8.len;
   int32_t start = 0, endi = -1;
   if (e->n_args > 2 && !index_arg(e, 2, st, "starting index", &start)) {
      goto done;
   }
   if (e->n_args > 3 && !index_arg(e, 3, st, "ending index", &endi)) {
      goto done;
   }
   if (!cp) {
      size_t end = len;
      if (endi >= 0 && (size_t) endi < end) {
         end = (size_t) endi;
      }
      if ((size_t) start > len || end < (size_t) start) {
         *out = aspen_value_int32(-1);
      } else {
         const char *hit =
            find_bytes(in + start, end - (size_t) start, tok, tlen);
         *out = aspen_value_int32(hit ? (int32_t) (hit - in) : -1);
      }
      ok = true;
      goto done;
   }
   /* Code points: find the byte offset of `start`, count the length. */
   size_t ncp = 0, start_byte = 0;
   for (size_t b = 0; b < len; ncp++) {
      if (ncp == (size_t) start) {
         start_byte = b;
      }
      if (is_cont((unsigned char) in[b])) {
         aspen__fail(st, 40095, "$indexOfCP found bad UTF-8 in the input");
         goto done;
      }
      b += aspen__utf8_cp_len((unsigned char) in[b]);
   }
   size_t end_cp = ncp;
   if (endi >= 0 && (size_t) endi < end_cp) {
      end_cp = (size_t) endi;
   }
   if (end_cp < (size_t) start) {
      *out = aspen_value_int32(-1);
      ok = true;
      goto done;
   }
   if (start_byte == 0 && len == 0 && tlen == 0) {
      *out = aspen_value_int32(0);
      ok = true;
      goto done;
   }
   *out = aspen_value_int32(-1);
   size_t b = start_byte;
   for (size_t c = (size_t) start; c < end_cp; c++) {
      if (b + tlen <= len && memcmp(in + b, tok, tlen) == 0) {
         *out = aspen_value_int32((int32_t) c);
         break;
      }
      b += aspen__utf8_cp_len((unsigned char) in[b]);
   }
   ok = true;
done:
   aspen_value_destroy(&s);
   aspen_value_destroy(&t);
   return ok;
}

ASPEN__DECL_EVAL(aspen__eval_index_of_bytes)
{
   return index_of_common(e, st, out, false);
}

ASPEN__DECL_EVAL(aspen__eval_index_of_cp)
{
   return index_of_common(e, st, out, true);
}

/* ------------------------------------------------------------------------ */
/* $replaceOne / $replaceAll (sub: 0 one, 1 all)                             */
/* ------------------------------------------------------------------------ */

ASPEN__DECL_PARSE(aspen__parse_replace)
{
   static const char *const names[] = {"input", "find", "replacement", NULL};
   static const aspen__named_spec_t spec = {
      names, 51751, ASPEN__NOTOBJ_REQUIRES_OBJECT, 51750,
      ASPEN__UNKNOWN_FOUND};
   if (!aspen__parse_named(ps, op, arg, e, &spec)) {
      return false;
   }
   if (!e->args[0]) {
      return aspen__pfail(ps, 51749, "%s requires 'input' to be specified",
                          op->name);
   }
   if (!e->args[1]) {
      return aspen__pfail(ps, 51748, "%s requires 'find' to be specified",
                          op->name);
   }
   if (!e->args[2]) {
      return aspen__pfail(ps, 51747,
                          "%s requires 'replacement' to be specified",
                          op->name);
   }
   return true;
}

ASPEN__DECL_EVAL(aspen__eval_replace)
{
   aspen_value_t v[3];
   static const char *const what[] = {"input", "find", "replacement"};
   static const int32_t codes[] = {51746, 51745, 51744};
   bool ok = false;
   *out = ASPEN_VALUE_MISSING;
   if (!eval3(e, st, v)) {
      return false;
   }
   for (int i = 0; i < 3; i++) {
      if (!aspen__is_str(&v[i]) && !aspen__is_nullish(&v[i])) {
         char *json = aspen_value_to_json(&v[i]);
         aspen__fail(st, codes[i], "%s requires that '%s' be a string, found: %s",
                     e->op->name, what[i], json);
         bson_free(json);
         goto done;
      }
   }
   if (aspen__is_nullish(&v[0]) || aspen__is_nullish(&v[1]) ||
       aspen__is_nullish(&v[2])) {
      *out = aspen_value_null();
      ok = true;
      goto done;
   }
   {
      const char *in = v[0].v.value.v_utf8.str;
      size_t len = v[0].v.value.v_utf8.len;
      const char *find = v[1].v.value.v_utf8.str;
      size_t flen = v[1].v.value.v_utf8.len;
      const char *rep = v[2].v.value.v_utf8.str;
      size_t rlen = v[2].v.value.v_utf8.len;
      sbuf_t b = {0};
      if (e->op->sub == 0) {
         const char *hit = find_bytes(in, len, find, flen);
         if (!hit) {
            *out = aspen_value_utf8(in, len);
         } else {
            sb_add(&b, in, (size_t) (hit - in));
            sb_add(&b, rep, rlen);
            sb_add(&b, hit + flen, len - (size_t) (hit - in) - flen);
            *out = sb_finish(&b);
         }
      } else if (flen == 0) {
         for (size_t i = 0; i < len; i++) {
            sb_add(&b, rep, rlen);
            sb_add(&b, in + i, 1);
            if (!aspen__eval_size_ok(st, b.len, true)) {
               bson_free(b.p);
               goto done;
            }
         }
         sb_add(&b, rep, rlen);
         *out = sb_finish(&b);
      } else {
         const char *p = in, *end = in + len;
         for (;;) {
            const char *hit = find_bytes(p, (size_t) (end - p), find, flen);
            if (!hit) {
               sb_add(&b, p, (size_t) (end - p));
               break;
            }
            sb_add(&b, p, (size_t) (hit - p));
            sb_add(&b, rep, rlen);
            p = hit + flen;
            if (!aspen__eval_size_ok(st, b.len, true)) {
               bson_free(b.p);
               goto done;
            }
         }
         *out = sb_finish(&b);
      }
   }
   ok = true;
done:
   destroy_n(v, 3);
   return ok;
}

/* ------------------------------------------------------------------------ */
/* $binarySize                                                               */
/* ------------------------------------------------------------------------ */

ASPEN__DECL_EVAL(aspen__eval_binary_size)
{
   aspen_value_t v;
   *out = ASPEN_VALUE_MISSING;
   if (!aspen__eval_arg(e, 0, st, &v)) {
      return false;
   }
   bool ok = true;
   if (aspen__is_nullish(&v)) {
      *out = aspen_value_null();
   } else if (aspen__is_str(&v)) {
      *out = aspen_value_int32((int32_t) v.v.value.v_utf8.len);
   } else if (aspen__vt(&v) == BSON_TYPE_BINARY) {
      *out = aspen_value_int32((int32_t) v.v.value.v_binary.data_len);
   } else {
      ok = aspen__fail(st, 51276,
                       "$binarySize requires a string or BinData argument, "
                       "found: %s",
                       aspen_value_type_name(&v));
   }
   aspen_value_destroy(&v);
   return ok;
}

/* ------------------------------------------------------------------------ */
/* Regular expressions                                                       */
/* ------------------------------------------------------------------------ */

void *
aspen__regex_compile(const char *pattern, const char *options,
                     const char *opname, aspen_error_t *err)
{
   uint32_t flags = PCRE2_UTF;
   for (const char *o = options ? options : ""; *o; o++) {
      switch (*o) {
      case 'i':
         flags |= PCRE2_CASELESS;
         break;
      case 'm':
         flags |= PCRE2_MULTILINE;
         break;
      case 's':
         flags |= PCRE2_DOTALL;
         break;
      case 'x':
         flags |= PCRE2_EXTENDED;
         break;
      case 'u':
         break;
      default:
         aspen_error_set(err, 51108, "%s invalid flag in regex options: %c",
                         opname, *o);
         return NULL;
      }
   }
   int code;
   PCRE2_SIZE off;
   pcre2_code *re = pcre2_compile((PCRE2_SPTR) pattern, PCRE2_ZERO_TERMINATED,
                                  flags, &code, &off, NULL);
   if (!re) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(code, msg, sizeof msg);
      aspen_error_set(err, 51111, "Invalid Regex in %s: %s", opname,
                      (const char *) msg);
      return NULL;
   }
   return re;
}

void
aspen__regex_free(void *re)
{
   pcre2_code_free(re);
}

/* Pattern and options from the evaluated values. Returns 1 with *pattern set,
 * 0 when the regex is nullish, -1 on error. */
static int
regex_source(aspen__eval_t *st, const char *opname, const aspen_value_t *re,
             const aspen_value_t *opts, const char **pattern,
             const char **options)
{
   *pattern = NULL;
   *options = "";
   if (!aspen__is_nullish(re) && !aspen__is_str(re) &&
       aspen__vt(re) != BSON_TYPE_REGEX) {
      aspen__fail(st, 51105, "%s needs 'regex' to be of type string or regex",
                  opname);
      return -1;
   }
   if (!aspen__is_nullish(opts) && !aspen__is_str(opts)) {
      aspen__fail(st, 51106, "%s needs 'options' to be of type string",
                  opname);
      return -1;
   }
   if (aspen__vt(re) == BSON_TYPE_REGEX) {
      const char *flags = re->v.value.v_regex.options;
      *pattern = re->v.value.v_regex.regex;
      if (flags && *flags) {
         if (!aspen__is_nullish(opts)) {
            aspen__fail(st, 51107,
                        "%s: found regex option(s) specified in both 'regex' "
                        "and 'option' fields",
                        opname);
            return -1;
         }
         *options = flags;
      }
   } else if (aspen__is_str(re)) {
      *pattern = re->v.value.v_utf8.str;
      if (strlen(*pattern) != re->v.value.v_utf8.len) {
         aspen__fail(st, 51109,
                     "%s: regular expression cannot contain an embedded null "
                     "byte",
                     opname);
         return -1;
      }
   }
   if (aspen__is_str(opts)) {
      *options = opts->v.value.v_utf8.str;
      if (strlen(*options) != opts->v.value.v_utf8.len) {
         aspen__fail(st, 51110,
                     "%s: regular expression options cannot contain an "
                     "embedded null byte",
                     opname);
         return -1;
      }
   }
   return *pattern ? 1 : 0;
}

/* args: input, regex, options. aux: the compiled pattern when regex and
 * options are constants (compiled once; errors are parse errors then). */
ASPEN__DECL_PARSE(aspen__parse_regex)
{
   static const char *const names[] = {"input", "regex", "options", NULL};
   static const aspen__named_spec_t spec = {
      names, 51103, ASPEN__NOTOBJ_EXPECTS_NAMED, 31024,
      ASPEN__UNKNOWN_FOUND};
   if (!aspen__parse_named(ps, op, arg, e, &spec)) {
      return false;
   }
   if (!e->args[0]) {
      return aspen__pfail(ps, 31022, "%s requires 'input' parameter", op->name);
   }
   if (!e->args[1]) {
      return aspen__pfail(ps, 31023, "%s requires 'regex' parameter", op->name);
   }
   if (!(e->args[1]->flags & ASPEN__NODE_CONST) ||
       (e->args[2] && !(e->args[2]->flags & ASPEN__NODE_CONST))) {
      return true;
   }
   aspen__eval_t st = {.err = ps->err};
   aspen_value_t opts = e->args[2] ? e->args[2]->cval : ASPEN_VALUE_MISSING;
   const char *pattern, *options;
   int r = regex_source(&st, op->name, &e->args[1]->cval, &opts, &pattern,
                        &options);
   if (r < 0) {
      return false;
   }
   if (r > 0) {
      e->aux = aspen__regex_compile(pattern, options, op->name, ps->err);
      if (!e->aux) {
         return false;
      }
      e->aux_free = aspen__regex_free;
   }
   return true;
}

/* One match document {match, idx, captures}. */
static aspen_value_t
match_doc(pcre2_code *re, pcre2_match_data *md, const char *in, uint32_t cp_idx)
{
   PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
   uint32_t ncap = 0;
   pcre2_pattern_info(re, PCRE2_INFO_CAPTURECOUNT, &ncap);
   bson_t doc = BSON_INITIALIZER;
   bson_append_utf8(&doc, "match", 5, in + ov[0], (int) (ov[1] - ov[0]));
   bson_append_int32(&doc, "idx", 3, (int32_t) cp_idx);
   bson_t caps;
   bson_append_array_begin(&doc, "captures", 8, &caps);
   for (uint32_t i = 1; i <= ncap; i++) {
      char buf[16];
      const char *key;
      size_t klen = bson_uint32_to_string(i - 1, &key, buf, sizeof buf);
      if (ov[2 * i] == PCRE2_UNSET) {
         bson_append_null(&caps, key, (int) klen);
      } else {
         bson_append_utf8(&caps, key, (int) klen, in + ov[2 * i],
                          (int) (ov[2 * i + 1] - ov[2 * i]));
      }
   }
   bson_append_array_end(&doc, &caps);
   return aspen_value_take_doc(&doc, false);
}

ASPEN__DECL_EVAL(aspen__eval_regex)
{
   int mode = e->op->sub; /* 0 match, 1 find, 2 findAll */
   aspen_value_t v[3] = {ASPEN_VALUE_MISSING, ASPEN_VALUE_MISSING,
                         ASPEN_VALUE_MISSING};
   pcre2_code *re = NULL;
   pcre2_match_data *md = NULL;
   bool ok = false;
   *out = ASPEN_VALUE_MISSING;
   for (uint32_t i = 0; i < 3; i++) {
      if (!aspen__eval_arg(e, i, st, &v[i])) {
         destroy_n(v, i);
         return false;
      }
   }
   if (!aspen__is_nullish(&v[0]) && !aspen__is_str(&v[0])) {
      aspen__fail(st, 51104, "%s needs 'input' to be of type string",
                  e->op->name);
      goto done;
   }
   const char *pattern = NULL, *options = "";
   int r = 1;
   if (!e->aux) {
      r = regex_source(st, e->op->name, &v[1], &v[2], &pattern, &options);
      if (r < 0) {
         goto done;
      }
   }
   if (r == 0 || aspen__is_nullish(&v[0])) {
      if (mode == 0) {
         *out = aspen_value_bool(false);
      } else if (mode == 1) {
         *out = aspen_value_null();
      } else {
         bson_t arr = BSON_INITIALIZER;
         *out = aspen__array_finish(&arr);
      }
      ok = true;
      goto done;
   }
   re = e->aux ? e->aux
               : aspen__regex_compile(pattern, options, e->op->name, st->err);
   if (!re) {
      goto done;
   }
   md = pcre2_match_data_create_from_pattern(re, NULL);
   const char *in = v[0].v.value.v_utf8.str;
   size_t len = v[0].v.value.v_utf8.len;
   size_t pos = 0;
   uint32_t cp_pos = 0; /* code points before `pos` */
   bson_t arr = BSON_INITIALIZER;
   uint32_t n_found = 0;
   /* The subject's UTF-8 is checked by the first match only: checking it
    * again at every match made $regexFindAll quadratic (found by fuzzing). */
   uint32_t match_opts = 0;
   for (;;) {
      int rc = pcre2_match(re, (PCRE2_SPTR) in, len, pos, match_opts, md,
                           NULL);
      match_opts = PCRE2_NO_UTF_CHECK;
      if (rc == PCRE2_ERROR_NOMATCH) {
         break;
      }
      if (rc < 0) {
         PCRE2_UCHAR msg[256];
         pcre2_get_error_message(rc, msg, sizeof msg);
         aspen__fail(st, 51156,
                     "Error occurred while executing the regular expression in "
                     "%s. Result code: %s",
                     e->op->name, (const char *) msg);
         bson_destroy(&arr);
         goto done;
      }
      if (mode == 0) {
         *out = aspen_value_bool(true);
         bson_destroy(&arr);
         ok = true;
         goto done;
      }
      PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
      uint32_t idx = cp_pos + (uint32_t) cp_count(in + pos, ov[0] - pos);
      aspen_value_t m = match_doc(re, md, in, idx);
      if (mode == 1) {
         *out = m;
         bson_destroy(&arr);
         ok = true;
         goto done;
      }
      aspen__array_append(&arr, n_found++, &m);
      aspen_value_destroy(&m);
      if (!aspen__eval_size_ok(st, arr.len, false)) {
         bson_destroy(&arr);
         goto done;
      }
      if (ov[1] == ov[0]) {
         /* Empty match: move on by one code point. */
         cp_pos = idx + 1;
         pos = ov[0] + aspen__utf8_cp_len((unsigned char) in[ov[0]]);
      } else {
         cp_pos = idx + (uint32_t) cp_count(in + ov[0], ov[1] - ov[0]);
         pos = ov[1];
      }
      if (pos >= len) {
         break;
      }
   }
   if (mode == 0) {
      *out = aspen_value_bool(false);
      bson_destroy(&arr);
   } else if (mode == 1) {
      *out = aspen_value_null();
      bson_destroy(&arr);
   } else {
      *out = aspen__array_finish(&arr);
   }
   ok = true;
done:
   if (md) {
      pcre2_match_data_free(md);
   }
   if (re && re != e->aux) {
      pcre2_code_free(re);
   }
   destroy_n(v, 3);
   return ok;
}
