/*
 * match.c - the primitives of the query language (match_int.h) that the
 * filter compiler (matcher.c) and the $jsonSchema compiler
 * (match_schema.c) share: BSON type sets and their $type / bsonType
 * aliases, compiled regular expressions (PCRE2, one match block per
 * thread), comparisons with mongod's type bracketing, and integer
 * arguments read as mongod reads them.
 *
 * Thread-safety: pure functions and immutable compiled regexes; any
 * thread, concurrently.
 */
#include "lang/match_int.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

/* ------------------------------------------------------------------------ */
/* Types                                                                     */
/* ------------------------------------------------------------------------ */

/* $type aliases, indexed by type code 1..19. */
static const char *const type_names[] = {
   NULL,       "double",    "string",   "object", "array",
   "binData",  "undefined", "objectId", "bool",   "date",
   "null",     "regex",     "dbPointer", "javascript", "symbol",
   "javascriptWithScope", "int", "timestamp", "long", "decimal",
};

/* The type-set bit of `t`; 0 for EOD (a missing value has no type). */
aspen__match_types_t
aspen__match_type_bit(bson_type_t t)
{
   if (t == BSON_TYPE_MINKEY) {
      return 1u << ASPEN__MATCH_TYPE_BIT_MINKEY;
   }
   if (t == BSON_TYPE_MAXKEY) {
      return 1u << ASPEN__MATCH_TYPE_BIT_MAXKEY;
   }
   if ((int) t >= 1 && (int) t <= 19) {
      return 1u << (int) t;
   }
   return 0;
}

/* Resolves a $type alias into *bits (always set, 0 when unknown); returns
 * false for an unknown name. */
bool
aspen__match_type_alias(const char *name, aspen__match_types_t *bits)
{
   if (strcmp(name, "number") == 0) {
      *bits = ASPEN__MATCH_TYPES_NUMBER;
      return true;
   }
   if (strcmp(name, "minKey") == 0) {
      *bits = 1u << ASPEN__MATCH_TYPE_BIT_MINKEY;
      return true;
   }
   if (strcmp(name, "maxKey") == 0) {
      *bits = 1u << ASPEN__MATCH_TYPE_BIT_MAXKEY;
      return true;
   }
   for (int i = 1; i <= 19; i++) {
      if (strcmp(name, type_names[i]) == 0) {
         *bits = 1u << i;
         return true;
      }
   }
   *bits = 0;
   return false;
}

/* The alias naming `t`, static storage; "missing" for types without one. */
const char *
aspen__match_type_name(bson_type_t t)
{
   if (t == BSON_TYPE_MINKEY) {
      return "minKey";
   }
   if (t == BSON_TYPE_MAXKEY) {
      return "maxKey";
   }
   if ((int) t >= 1 && (int) t <= 19) {
      return type_names[(int) t];
   }
   return "missing";
}

/* ------------------------------------------------------------------------ */
/* Regular expressions (PCRE2)                                               */
/* ------------------------------------------------------------------------ */

struct aspen__match_regex {
   pcre2_code *code;
   const char *pattern; /* view into the filter */
   size_t len;
   const char *flags; /* view, NUL-terminated, as the filter spelled them */
};

/* One match block per thread, created on first use and freed when the
 * thread exits (the key's destructor), so a search never allocates. */
static __thread pcre2_match_data *tls_match_data;
static pthread_key_t match_data_key;
static pthread_once_t match_data_once = PTHREAD_ONCE_INIT;
static bool match_data_key_ok;

static void
match_data_free(void *p)
{
   /* Runs in the exiting thread: forget the block so that a late search
    * (another key's destructor) makes a new one instead of using this. */
   tls_match_data = NULL;
   pcre2_match_data_free(p);
}

static void
match_data_key_init(void)
{
   match_data_key_ok =
      pthread_key_create(&match_data_key, match_data_free) == 0;
}

static pcre2_match_data *
thread_match_data(void)
{
   if (!tls_match_data) {
      pthread_once(&match_data_once, match_data_key_init);
      tls_match_data = pcre2_match_data_create(1, NULL);
      ASPEN_ASSERT(tls_match_data);
      if (match_data_key_ok) {
         pthread_setspecific(match_data_key, tls_match_data);
      }
   }
   return tls_match_data;
}

/* Compiles a regex (see match_int.h): the pattern is borrowed and must
 * outlive the result, which the caller frees with aspen__match_regex_destroy.
 * Returns false with err set (BadValue) and *out NULL on a bad pattern or
 * flag. Any thread. */
bool
aspen__match_regex_new(const char *pattern, size_t len, const char *flags,
                       aspen__match_regex_t **out, aspen_error_t *err)
{
   *out = NULL;
   if (memchr(pattern, '\0', len)) {
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "Regular expression cannot contain an embedded null "
                      "byte");
      return false;
   }
   uint32_t opts = PCRE2_UTF | PCRE2_MATCH_INVALID_UTF;
   for (const char *f = flags ? flags : ""; *f; f++) {
      switch (*f) {
      case 'i':
         opts |= PCRE2_CASELESS;
         break;
      case 'm':
         opts |= PCRE2_MULTILINE;
         break;
      case 's':
         opts |= PCRE2_DOTALL;
         break;
      case 'x':
         opts |= PCRE2_EXTENDED;
         break;
      case 'u':
         break; /* always UTF-8 */
      default:
         aspen_error_set(err, ASPEN_ERR_BadValue,
                         "invalid flag in regex options: %c", *f);
         return false;
      }
   }
   int code = 0;
   PCRE2_SIZE offset = 0;
   pcre2_code *re =
      pcre2_compile((PCRE2_SPTR) pattern, len, opts, &code, &offset, NULL);
   if (!re) {
      PCRE2_UCHAR msg[256];
      if (pcre2_get_error_message(code, msg, sizeof msg) < 0) {
         snprintf((char *) msg, sizeof msg, "error %d", code);
      }
      aspen_error_set(err, ASPEN_ERR_BadValue,
                      "Regular expression is invalid: %s", (char *) msg);
      return false;
   }
   /* JIT is an optimisation only: without it pcre2_match interprets. */
   (void) pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
   aspen__match_regex_t *rx = aspen_xcalloc(1, sizeof *rx);
   rx->code = re;
   rx->pattern = pattern;
   rx->len = len;
   rx->flags = flags ? flags : "";
   *out = rx;
   return true;
}

/* Frees a compiled regex; NULL is a no-op. */
void
aspen__match_regex_destroy(aspen__match_regex_t *re)
{
   if (re) {
      pcre2_code_free(re->code);
      free(re);
   }
}

/* True if the regex matches somewhere in the `len` bytes at `s` (invalid
 * UTF-8 never matches across the bad bytes). Any thread, concurrently. */
bool
aspen__match_regex_search(const aspen__match_regex_t *re, const char *s,
                          size_t len)
{
   int rc = pcre2_match(re->code, (PCRE2_SPTR) s, len, 0, 0,
                        thread_match_data(), NULL);
   /* rc == 0 means "matched, ovector too small": still a match. */
   return rc >= 0;
}

/* mongod's RegexMatchExpression on one value: strings and symbols are
 * searched; a regex value matches only the identical regex. */
bool
aspen__match_regex_matches_value(const aspen__match_regex_t *re,
                                 const bson_value_t *v)
{
   switch (v->value_type) {
   case BSON_TYPE_UTF8:
      return aspen__match_regex_search(re, v->value.v_utf8.str,
                                       v->value.v_utf8.len);
   case BSON_TYPE_SYMBOL:
      return aspen__match_regex_search(re, v->value.v_symbol.symbol,
                                       v->value.v_symbol.len);
   case BSON_TYPE_REGEX:
      return strlen(v->value.v_regex.regex) == re->len &&
             memcmp(v->value.v_regex.regex, re->pattern, re->len) == 0 &&
             strcmp(v->value.v_regex.options, re->flags) == 0;
   default:
      return false;
   }
}

/* ------------------------------------------------------------------------ */
/* Comparison                                                                */
/* ------------------------------------------------------------------------ */

bool
aspen__match_value_is_nan(const bson_value_t *v)
{
   if (v->value_type == BSON_TYPE_DOUBLE) {
      return isnan(v->value.v_double);
   }
   if (v->value_type == BSON_TYPE_DECIMAL128) {
      /* BID encoding: combination field 11111 marks NaN. */
      return ((v->value.v_decimal128.high >> 58) & 0x1f) == 0x1f;
   }
   return false;
}

int
aspen__match_value_cmp(const bson_value_t *a, const bson_value_t *b)
{
   aspen_value_t va = {.v = *a, .owned = false};
   aspen_value_t vb = {.v = *b, .owned = false};
   return aspen_value_compare(&va, &vb);
}

/* One comparison with mongod's ComparisonMatchExpression rules: different
 * canonical types never match, except null against missing and MinKey/MaxKey
 * bounds; NaN equals only NaN and orders with nothing. Pure; any thread. */
bool
aspen__match_compare(aspen__match_op_t op, const bson_value_t *val,
                     const bson_value_t *rhs)
{
   int cv = aspen__value_type_rank(val->value_type, true);
   int cr = aspen__value_type_rank(rhs->value_type, true);
   if (cv != cr) {
      /* {a: null} also matches a missing field (but, since MongoDB 8.0, not
       * undefined). */
      if (rhs->value_type == BSON_TYPE_NULL &&
          val->value_type == BSON_TYPE_EOD) {
         return op == ASPEN__MATCH_EQ || op == ASPEN__MATCH_LTE ||
                op == ASPEN__MATCH_GTE;
      }
      if (rhs->value_type == BSON_TYPE_MAXKEY) {
         return op == ASPEN__MATCH_LT || op == ASPEN__MATCH_LTE;
      }
      if (rhs->value_type == BSON_TYPE_MINKEY) {
         return op == ASPEN__MATCH_GT || op == ASPEN__MATCH_GTE;
      }
      return false;
   }
   if (cv == 10 &&
       (aspen__match_value_is_nan(val) || aspen__match_value_is_nan(rhs))) {
      bool both =
         aspen__match_value_is_nan(val) && aspen__match_value_is_nan(rhs);
      return (op == ASPEN__MATCH_EQ || op == ASPEN__MATCH_LTE ||
              op == ASPEN__MATCH_GTE) &&
             both;
   }
   int c;
   bson_type_t vt = val->value_type;
   bson_type_t rt = rhs->value_type;
   if ((vt == BSON_TYPE_INT32 || vt == BSON_TYPE_INT64) &&
       (rt == BSON_TYPE_INT32 || rt == BSON_TYPE_INT64)) {
      /* Fast path: integers compare exactly without value.c. */
      int64_t x = vt == BSON_TYPE_INT32 ? val->value.v_int32
                                        : val->value.v_int64;
      int64_t y = rt == BSON_TYPE_INT32 ? rhs->value.v_int32
                                        : rhs->value.v_int64;
      c = x < y ? -1 : x > y;
   } else if (vt == BSON_TYPE_DOUBLE && rt == BSON_TYPE_DOUBLE) {
      c = val->value.v_double < rhs->value.v_double
             ? -1
             : val->value.v_double > rhs->value.v_double;
   } else if (vt == BSON_TYPE_UTF8 && rt == BSON_TYPE_UTF8) {
      /* Fast path: strings compare as bytes, shorter first on a tie. */
      uint32_t lx = val->value.v_utf8.len;
      uint32_t ly = rhs->value.v_utf8.len;
      c = memcmp(val->value.v_utf8.str, rhs->value.v_utf8.str,
                 lx < ly ? lx : ly);
      if (c == 0) {
         c = lx < ly ? -1 : lx > ly;
      }
   } else {
      c = aspen__match_value_cmp(val, rhs);
   }
   switch (op) {
   case ASPEN__MATCH_EQ:
      return c == 0;
   case ASPEN__MATCH_LT:
      return c < 0;
   case ASPEN__MATCH_LTE:
      return c <= 0;
   case ASPEN__MATCH_GT:
      return c > 0;
   case ASPEN__MATCH_GTE:
      return c >= 0;
   }
   return false;
}

/* Equality ignoring field order in documents (recursively), with numbers
 * compared by value across types. Pure; any thread. */
bool
aspen__match_unordered_equal(const bson_value_t *a, const bson_value_t *b)
{
   if (aspen__value_type_rank(a->value_type, true) !=
       aspen__value_type_rank(b->value_type, true)) {
      return false;
   }
   if (a->value_type == BSON_TYPE_DOCUMENT) {
      bson_iter_t ia, ib;
      uint32_t na = 0, nb = 0;
      if (!bson_iter_init_from_data(&ia, a->value.v_doc.data,
                                    a->value.v_doc.data_len) ||
          !bson_iter_init_from_data(&ib, b->value.v_doc.data,
                                    b->value.v_doc.data_len)) {
         return false;
      }
      while (bson_iter_next(&ib)) {
         nb++;
      }
      while (bson_iter_next(&ia)) {
         na++;
         bson_iter_t f;
         bson_iter_init_from_data(&f, b->value.v_doc.data,
                                  b->value.v_doc.data_len);
         if (!bson_iter_find_w_len(&f, bson_iter_key(&ia),
                                   (int) bson_iter_key_len(&ia)) ||
             !aspen__match_unordered_equal(bson_iter_value(&ia),
                                           bson_iter_value(&f))) {
            return false;
         }
      }
      return na == nb;
   }
   if (a->value_type == BSON_TYPE_ARRAY) {
      bson_iter_t ia, ib;
      if (!bson_iter_init_from_data(&ia, a->value.v_doc.data,
                                    a->value.v_doc.data_len) ||
          !bson_iter_init_from_data(&ib, b->value.v_doc.data,
                                    b->value.v_doc.data_len)) {
         return false;
      }
      for (;;) {
         bool more_a = bson_iter_next(&ia);
         bool more_b = bson_iter_next(&ib);
         if (!more_a || !more_b) {
            return more_a == more_b;
         }
         if (!aspen__match_unordered_equal(bson_iter_value(&ia),
                                           bson_iter_value(&ib))) {
            return false;
         }
      }
   }
   if (aspen__match_value_is_nan(a) || aspen__match_value_is_nan(b)) {
      return aspen__match_value_is_nan(a) && aspen__match_value_is_nan(b);
   }
   return aspen__match_value_cmp(a, b) == 0;
}

/* ------------------------------------------------------------------------ */
/* Integer arguments                                                         */
/* ------------------------------------------------------------------------ */

/* "<what>: <value as JSON>" for messages, as mongod prints an element. */
void
aspen__match_describe(const bson_iter_t *it, const char *what, char *buf,
                      size_t size)
{
   aspen_value_t v = {.v = *bson_iter_value((bson_iter_t *) it),
                      .owned = false};
   char *json = aspen_value_to_json(&v);
   snprintf(buf, size, "%s: %s", what, json ? json : "?");
   bson_free(json);
}

/* mongod's parseIntegerElementToLong. */
bool
aspen__match_parse_int64(const bson_iter_t *it, const char *what, int64_t *out,
                         aspen_error_t *err)
{
   char desc[256];
   *out = 0;
   switch (bson_iter_type(it)) {
   case BSON_TYPE_INT32:
      *out = bson_iter_int32(it);
      return true;
   case BSON_TYPE_INT64:
      *out = bson_iter_int64(it);
      return true;
   case BSON_TYPE_DOUBLE:
   case BSON_TYPE_DECIMAL128: {
      aspen_value_t v = {.v = *bson_iter_value((bson_iter_t *) it),
                         .owned = false};
      double d = 0;
      (void) aspen_value_as_double(&v, &d);
      aspen__match_describe(it, what, desc, sizeof desc);
      if (isnan(d)) {
         aspen_error_set(err, ASPEN_ERR_FailedToParse,
                         "Expected an integer, but found NaN in: %s", desc);
         return false;
      }
      if (d >= 9223372036854775808.0 || d < -9223372036854775808.0) {
         aspen_error_set(err, ASPEN_ERR_FailedToParse,
                         "Cannot represent as a 64-bit integer: %s", desc);
         return false;
      }
      if (d != (double) (int64_t) d) {
         aspen_error_set(err, ASPEN_ERR_FailedToParse,
                         "Expected an integer: %s", desc);
         return false;
      }
      *out = (int64_t) d;
      return true;
   }
   default:
      aspen__match_describe(it, what, desc, sizeof desc);
      aspen_error_set(err, ASPEN_ERR_FailedToParse, "Expected a number in: %s",
                      desc);
      return false;
   }
}

/* Reads a non-negative whole number (mongod's
 * parseIntegerElementToNonNegativeLong); false with a FailedToParse error
 * naming `what` otherwise. */
bool
aspen__match_parse_count(const bson_iter_t *it, const char *what,
                         int64_t *out, aspen_error_t *err)
{
   if (!aspen__match_parse_int64(it, what, out, err)) {
      return false;
   }
   if (*out < 0) {
      char desc[256];
      aspen__match_describe(it, what, desc, sizeof desc);
      aspen_error_set(err, ASPEN_ERR_FailedToParse,
                      "Expected a positive number in: %s", desc);
      *out = 0;
      return false;
   }
   return true;
}

bool
aspen__match_is_number_type(bson_type_t t)
{
   return t == BSON_TYPE_INT32 || t == BSON_TYPE_INT64 ||
          t == BSON_TYPE_DOUBLE || t == BSON_TYPE_DECIMAL128;
}

/* A number as a double (decimal128 through value.c). */
double
aspen__match_number_as_double(const bson_value_t *v)
{
   aspen_value_t val = {.v = *v, .owned = false};
   double d = 0;
   (void) aspen_value_as_double(&val, &d);
   return d;
}
